"""
A real systemd 257 for the tests: a Debian trixie tree (built by C{.ci/real-env})
booted under C{systemd-nspawn}, with this checkout bound read-only at C{/srv/app}.

The container has a private network (its own loopback, so its port 8080 is nobody
else's) and a volatile root (an overlay on tmpfs: units and files a test writes
vanish at power-off, the cached tree never changes).  It runs in a private cgroup
of its own in both hierarchies; L{Container.close} powers it off, and removes
every process (by pid), cgroup and nspawn folder it left.

Clients reach the container's loopback from threads that joined its network
namespace (L{Container.inNetns}): threads they start inherit it, so the load
clients of L{txflip.check._cli} work there unchanged.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from tests.harness import waitFor

T = TypeVar("T")

REAL = Path(os.environ.get("TXFLIP_REAL", "/var/cache/txflip-real"))
TOOLS = REAL / "tools"
TREE = REAL / "trixie"
CLONE_NEWNET = 0x40000000
_CGROUP_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/systemd"))


def missing(*tools: str) -> str | None:
    """
    Why the real environment is not usable here, or None if it is.
    """
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, namespaces, cgroups)"
    for tool in tools:
        if not (TOOLS / tool).exists():
            return f"{TOOLS / tool} is missing: run .ci/real-env as root"
    if not (TREE / ".txflip-tree").exists():
        return f"no tree at {TREE}: run .ci/real-env as root"
    return None


def require(*tools: str) -> None:
    """
    Skip (with the reason) outside CI when the real environment is missing; in CI,
    where C{.ci/run} prepares it, fail instead: a CI run must run these tests.
    """
    reason = missing(*tools)
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the real-supervisor tests: {reason}")
    pytest.skip(f"{reason} (prepare it as root with: bash .ci/real-env)")


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def runInNetns(pid: int, function: Callable[[], T]) -> T:
    """
    Call C{function} in a new thread that joined C{pid}'s network namespace, and
    return its result; threads it starts stay in that namespace.
    """
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    outcome: list[tuple[bool, object]] = []

    def target() -> None:
        try:
            if _libc().setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns(CLONE_NEWNET)")
            outcome.append((True, function()))
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            outcome.append((False, e))

    try:
        thread = threading.Thread(target=target, name=f"netns-{pid}")
        thread.start()
        thread.join()
    finally:
        os.close(fd)
    ok, value = outcome[0]
    if not ok:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]


def _cgroupPids(folder: Path) -> list[int]:
    pids = []
    for procs in folder.rglob("cgroup.procs"):
        try:
            pids += [int(line) for line in procs.read_text().split()]
        except OSError:
            pass
    return pids


def removeCgroup(folder: Path) -> None:
    """
    Kill (by pid) whatever is still in C{folder}, then remove it depth first.
    """
    if not folder.exists():
        return
    for pid in _cgroupPids(folder):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    waitFor(lambda: not _cgroupPids(folder), 10, what=f"{folder} to empty")
    for path in [*sorted(folder.rglob("*"), key=lambda p: -len(p.parts)), folder]:
        if path.is_dir():
            path.rmdir()


class Container:
    """
    One booted systemd 257.  C{run(...)} runs a command inside (all namespaces).
    """

    def __init__(self, project: Path, log: Path) -> None:
        self.name = f"txflip-real-{os.getpid()}"
        self.log = log
        self.cgroups = [root / self.name for root in _CGROUP_ROOTS]
        for folder in self.cgroups:
            folder.mkdir()
        nspawn = TOOLS / "usr/bin/systemd-nspawn"
        # The shell moves itself into the private cgroups, then becomes nspawn.
        script = (
            'for c in "$@"; do echo $$ > "$c/cgroup.procs"; done; shift $#; exec '
            + " ".join(
                [
                    "setsid",
                    str(nspawn),
                    f"--directory={TREE}",
                    f"--machine={self.name}",
                    "--register=no",
                    "--keep-unit",
                    "--console=passive",
                    "--volatile=overlay",
                    "--private-network",
                    f"--bind-ro={project}:/srv/app",
                    "--boot",
                ]
            )
        )
        started = time.monotonic()
        with open(log, "wb") as out:
            self.nspawn = subprocess.Popen(
                ["sh", "-c", script, "sh", *map(str, self.cgroups)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"},
            )
        try:
            self.leader = waitFor(self._leader, 30, what=f"nspawn's child ({log})")
            waitFor(
                lambda: (
                    self.run(
                        "systemctl", "is-system-running", check=False
                    ).stdout.strip()
                    in ("running", "degraded")
                ),
                60,
                interval=0.1,
                what="systemd in the container to finish booting",
            )
        except BaseException:
            self.close()
            raise
        #: Seconds from starting nspawn to a running system.
        self.bootTime = time.monotonic() - started

    def _leader(self) -> int | None:
        if self.nspawn.poll() is not None:
            raise AssertionError(
                f"systemd-nspawn exited with {self.nspawn.returncode}:"
                f" {self.log.read_text(errors='replace')[-2000:]}"
            )
        try:
            children = Path(
                f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children"
            ).read_text()
        except OSError:
            return None
        for pid in children.split():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
            except OSError:
                pass
        return None

    def run(
        self,
        *argv: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """
        Run C{argv} inside the container; raise with its output if it fails and
        C{check}.
        """
        result = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "--", *argv],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {result.returncode}:"
                f" {result.stdout}{result.stderr}"
            )
        return result

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """
        Create C{path} (and its folders) inside the container.
        """
        self.run(
            "sh",
            "-c",
            f'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod {mode:o} "$1"',
            "sh",
            path,
            input=text,
        )

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """
        C{systemctl show -p ...} as a dict.
        """
        out = self.run(
            "systemctl", "show", unit, *(f"--property={p}" for p in properties)
        ).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def inNetns(self, function: Callable[[], T]) -> T:
        """
        Call C{function} in a thread on the container's network (its loopback).
        """
        return runInNetns(self.leader, function)

    def close(self) -> None:
        """
        Power off; then make sure nothing is left: nspawn, its processes, the
        cgroups, nspawn's folders under /run.
        """
        if self.nspawn.poll() is None and getattr(self, "leader", None):
            self.run("systemctl", "poweroff", check=False, timeout=10)
            try:
                self.nspawn.wait(20)
            except subprocess.TimeoutExpired:
                pass
        if self.nspawn.poll() is None:
            self.nspawn.send_signal(signal.SIGTERM)  # nspawn halts the container
            try:
                self.nspawn.wait(10)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait(10)
        for folder in self.cgroups:
            removeCgroup(folder)
        for sub in ("propagate", "unix-export"):
            shutil.rmtree(f"/run/systemd/nspawn/{sub}/{self.name}", ignore_errors=True)
        for sub in ("propagate", "unix-export", "locks", ""):
            try:
                os.rmdir(f"/run/systemd/nspawn/{sub}")
            except OSError:
                pass  # not empty (someone else's), or not there
