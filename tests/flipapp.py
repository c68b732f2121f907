"""
twistd, run in-process, with faults for tests to inject into *later* generations.

The fault is read from the file named by C{FLIPAPP_FAULT} when this process is a
txflip child (the handoff marker is set), so the first generation starts normally
and the test decides, just before sending SIGHUP, how the next one misbehaves.  The
file holds one word, some with an argument after a colon:

  - C{exit}: exit with status 3 before doing anything;
  - C{hang}: never become ready (twistd is never even started);
  - C{gate:PATH}: wait until PATH exists, then start normally: a slow start-up
    whose end the test decides (it gives up, with status 5, after 60 s);
  - C{fail-in-makeservice}: the plugin's C{makeService} raises (a bug in the
    application's start-up: traceback, twistd exits 1);
  - C{exit-before-ready}: sockets adopted and reactor running, then exit with
    status 4 where the generation would say it is ready;
  - C{block-at-ready}: sockets adopted, but the reactor thread blocks (60 s) where
    the generation would say it is ready (start-up code that never returns);
  - C{exit-after-ready}: tell the parent "ready", then exit with status 7 at once;
  - C{stop-after-ready}: tell the parent "ready", then stop (C{SIGSTOP} to itself:
    a long GC pause, a blocking warm-up) until the test sends C{SIGCONT};
  - C{refuse-moves}: this generation's Echo cannot read the state of moved
    connections (new code with a new state layout);
  - C{listen:DESCRIPTION}: this generation's configuration has one more
    C{--listen DESCRIPTION} (a configuration change that may fail).

With C{FLIPAPP_REPORT=DIR}, in every generation, C{SIGUSR2} makes the application
start an unrelated subprocess the careless way (C{close_fds=False}, the
application's environment) that writes what it inherited to
C{DIR/<server pid>-<n>.json}: its open fds with their targets, and whether the
handoff marker is in its environment.
"""

import os
import sys
import time

MARKER = "TXFLIP_HANDOFF"

fault = ""
faultPath = os.environ.get("FLIPAPP_FAULT")
if faultPath and MARKER in os.environ and os.path.exists(faultPath):
    with open(faultPath) as f:
        fault = f.read().strip()
fault, _, argument = fault.partition(":")

if fault == "exit":
    sys.stderr.write(f"flipapp pid {os.getpid()}: failing on purpose\n")
    sys.exit(3)
if fault == "hang":
    while True:
        time.sleep(60)
if fault == "gate":
    deadline = time.monotonic() + 60
    while not os.path.exists(argument):
        if time.monotonic() > deadline:
            sys.exit(5)
        time.sleep(0.01)

REPORTER = """
import json, os, sys
fds = {}
for name in os.listdir("/proc/self/fd"):
    try:
        fds[name] = os.readlink("/proc/self/fd/" + name)
    except OSError:
        pass  # the directory listdir had open
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump({"fds": fds, "marker": "TXFLIP_HANDOFF" in os.environ}, f)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
"""

reportDir = os.environ.get("FLIPAPP_REPORT")
if reportDir:
    import signal
    import subprocess
    import threading

    reports = iter(range(1, 1 << 30))

    def report() -> None:
        assert reportDir is not None
        target = os.path.join(reportDir, f"{os.getpid()}-{next(reports)}.json")
        # Deliberately careless: every inheritable fd of ours goes along.
        subprocess.run([sys.executable, "-c", REPORTER, target], close_fds=False)

    signal.signal(
        signal.SIGUSR2,
        lambda signum, frame: threading.Thread(target=report, daemon=True).start(),
    )

if fault == "fail-in-makeservice":
    import txflip.echo

    def makeService(options: object) -> object:
        raise RuntimeError("flipapp: makeService fails on purpose")

    txflip.echo.makeService = makeService  # type: ignore[assignment]
if fault in ("exit-before-ready", "block-at-ready"):
    from txflip import Upgrader

    def ready(self: object) -> None:
        if fault == "exit-before-ready":
            sys.stderr.write(f"flipapp pid {os.getpid()}: exiting before ready\n")
            sys.stderr.flush()
            os._exit(4)
        sys.stderr.write(f"flipapp pid {os.getpid()}: blocking at ready\n")
        sys.stderr.flush()
        time.sleep(60)
        os._exit(6)

    Upgrader.ready = ready  # type: ignore[method-assign]
if fault in ("exit-after-ready", "stop-after-ready"):
    import signal

    from txflip.generation import _handoff

    tellParentReady = _handoff.tellParentReady

    def tellAndExit(handoff: object) -> None:
        tellParentReady(handoff)  # type: ignore[arg-type]
        if fault == "stop-after-ready":
            os.kill(os.getpid(), signal.SIGSTOP)
            return
        sys.stderr.write(f"flipapp pid {os.getpid()}: exiting after ready\n")
        sys.stderr.flush()
        os._exit(7)

    _handoff.tellParentReady = tellAndExit

if fault == "refuse-moves":
    from txflip.echo import Echo
    from txflip.move._movable import StateRefused

    def importState(self: object, state: object) -> None:
        raise StateRefused("flipapp: this version reads no moved state")

    Echo.importState = importState  # type: ignore[method-assign]

extra = ["--listen", argument] if fault == "listen" else []

from twisted.scripts.twistd import run  # noqa: E402

sys.argv = ["twistd", *sys.argv[1:], *extra]
run()
