"""
(p) ``txflip run`` beside gunicorn and uWSGI: one tiny HTTP service under load,
reloaded 8 times in 20 s, one contender at a time.

    python -m bench.peers [--runs 1] [--contenders "gunicorn-sync-HUP txflip-run-p0 txflip-direct"]

The harness is the shared one (C{../shared/peers-http/run.sh} beside the checkout):
it keeps its own venv with gunicorn, uWSGI and a snapshot of this checkout's
committed C{HEAD} (not the working tree), runs each contender under a lock so that no
two load tests overlap, and prints one table: client errors, signal -> every new
worker serving, signal -> old gone, wrk's max latency, RSS and PSS idle.  This module
names the defaults we compare against, says clearly when the harness is not there,
and throws the harness's venv and results away when its snapshot is of another
commit (the harness itself only builds a venv when there is none, and skips every
contender it has results for).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench._common import ROOT

HARNESS = ROOT.parent / "shared" / "peers-http" / "run.sh"
CONTENDERS = "gunicorn-sync-HUP txflip-run-p0 txflip-direct"


def staleVenv(work: Path, head: str) -> bool:
    """
    Whether the harness's venv holds a snapshot of another commit than C{head}.
    """
    try:
        versions = (work / "results" / "versions.txt").read_text()
    except OSError:
        return (work / "venv").exists()
    return f"txflip commit: {head}" not in versions


def main() -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").strip().splitlines()[0]
    )
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--contenders", default=CONTENDERS)
    args = parser.parse_args()
    if not HARNESS.is_file():
        sys.exit(f"bench.peers: no harness at {HARNESS} (it lives beside the checkout)")
    work = Path(os.environ.get("WORK", "/tmp/txflip-peers"))
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if staleVenv(work, head):
        print(f"bench.peers: {work}/venv is of another commit; rebuilt for {head}")
        # The harness skips a contender whose results it has: they are of the
        # other commit too, and would be printed as this one's.
        for stale in ("venv", "results"):
            shutil.rmtree(work / stale, ignore_errors=True)
    environ = {
        **os.environ,
        "RUNS": str(args.runs),
        "CONTENDERS": args.contenders,
        "NO_WAIT": "1",
        "WORK": str(work),
    }
    os.chdir(ROOT)
    os.execvpe("bash", ["bash", str(HARNESS)], environ)


if __name__ == "__main__":
    main()
