"""
A pid file path that exists and is not a regular file (a FIFO, a directory, a
socket, a device node) is refused with one line, and left exactly as it was: the
pid file is replaced by renaming over it and removed at exit, which would destroy
a device node (C{--pidfile /dev/null} as root destroyed the machine's).

Device nodes are made in the test's own directory, never a real one.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import oneLineError, runTwistd
from tests.supervised import txflip
from txflip._errors import PidFileError
from txflip.generation._pidfile import PidFile


def makeFifo(path: Path) -> None:
    os.mkfifo(path)


def makeDirectory(path: Path) -> None:
    path.mkdir()


def makeSocket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))


def makeDevice(path: Path) -> None:
    """
    A character device with /dev/null's numbers, in the test's directory (root
    only): what C{--pidfile /dev/null} would point at, without touching it.
    """
    if os.geteuid() != 0:
        pytest.skip(
            "making a device node needs root: run the suite as root, as CI does"
        )
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("this file system or container refuses device nodes")


KINDS: dict[str, tuple[Callable[[Path], None], str]] = {
    "fifo": (makeFifo, "a FIFO"),
    "directory": (makeDirectory, "a directory"),
    "socket": (makeSocket, "a socket"),
    "device": (makeDevice, "a character device"),
}


@pytest.fixture(params=sorted(KINDS))
def notAFile(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Path, str]]:
    """
    A path in an empty directory of its own naming a non-regular file, and how
    the refusal names its kind; the test ends by checking it is untouched and
    alone.
    """
    make, kind = KINDS[request.param]
    directory = tmp_path / "run"
    directory.mkdir()
    path = directory / "app.pid"
    make(path)
    before = os.lstat(path)
    yield path, kind
    after = os.lstat(path)
    assert (after.st_mode, after.st_ino, after.st_rdev, after.st_mtime_ns) == (
        before.st_mode,
        before.st_ino,
        before.st_rdev,
        before.st_mtime_ns,
    )
    assert list(directory.iterdir()) == [path]


def refusal(path: Path, kind: str) -> str:
    return (
        f"cannot write pid file {path}: it exists and is {kind}, not a regular"
        " file; use another pid file"
    )


def unblocked(path: Path, call: Callable[[], object]) -> object:
    """
    C{call()}'s result (or exception), failing if it blocks: opening a FIFO with
    no writer blocks, and is then unblocked by opening it for writing.
    """
    done: list[object] = []

    def run() -> None:
        try:
            done.append(call())
        except Exception as e:  # noqa: BLE001 - handed to the test
            done.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail(f"blocked on {path}")
    return done[0]


def test_pidFileCheckRefuses(notAFile: tuple[Path, str]) -> None:
    """
    L{PidFile.check} refuses the path with one line; L{PidFile.read} does not
    block on a FIFO, and reads no pid from anything but a regular file.
    """
    path, kind = notAFile
    pidFile = PidFile(str(path))
    assert unblocked(path, pidFile.read) is None
    error = unblocked(path, pidFile.check)
    assert isinstance(error, PidFileError), error
    assert str(error) == refusal(path, kind)


def test_twistdRefuses(notAFile: tuple[Path, str], tmp_path: Path) -> None:
    path, kind = notAFile
    try:
        result = runTwistd(
            [
                "-n",
                f"--pidfile={path}",
                "flipecho",
                "--listen",
                "tcp:0:interface=127.0.0.1",
            ],
            tmp_path,
            timeout=20,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"twistd --pidfile={kind} neither refused nor exited")
    assert oneLineError(result) == f"txflip: {refusal(path, kind)}"


def test_txflipRunRefuses(notAFile: tuple[Path, str]) -> None:
    """
    C{txflip run --pidfile} refuses it before starting anything (the worker
    command, C{true}, could never become ready: nothing is left running if the
    path were accepted).
    """
    path, kind = notAFile
    try:
        result = txflip("run", "--pidfile", str(path), "--", "true", timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"txflip run --pidfile {kind} neither refused nor exited")
    assert result.returncode == 1
    assert result.stderr == f"txflip run: {refusal(path, kind)}\n"
