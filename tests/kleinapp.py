"""
A Klein application, run the way Klein's documentation shows (C{app.run}), behind
a C{flip:} endpoint: the only change a user makes for graceful upgrades.

Usage: kleinapp.py DESCRIPTION
"""

import sys

from klein import Klein

app = Klein()


@app.route("/", methods=["GET", "POST"])
def hello(request):
    if request.method == b"POST":
        return f"{len(request.content.read())} bytes\n"
    return "hello from klein\n"


app.run(endpoint_description=sys.argv[1])
