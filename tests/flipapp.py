"""
twistd, run in-process, with faults for tests to inject into *later* generations.

The fault is read from the file named by C{FLIPAPP_FAULT} when this process is a
txflip child (the handoff marker is set), so the first generation starts normally
and the test decides, just before sending SIGHUP, how the next one misbehaves:

  - C{exit}: exit with status 3 before doing anything;
  - C{hang}: never become ready;
  - C{exit-after-ready}: not used by the core tests (reserved).
"""

import os
import sys
import time

fault_path = os.environ.get("FLIPAPP_FAULT")
if fault_path and "TXFLIP_HANDOFF" in os.environ and os.path.exists(fault_path):
    with open(fault_path) as f:
        fault = f.read().strip()
    if fault == "exit":
        sys.stderr.write(f"flipapp pid {os.getpid()}: failing on purpose\n")
        sys.exit(3)
    if fault == "hang":
        while True:
            time.sleep(60)

from twisted.scripts.twistd import run  # noqa: E402

sys.argv = ["twistd", *sys.argv[1:]]
run()
