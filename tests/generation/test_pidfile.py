"""
Unit tests for txflip.generation._pidfile: atomic writes, the liveness check, removal.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from txflip._errors import PidFileError
from txflip.generation._pidfile import PidFile, pidAlive


def deadPID() -> int:
    """
    A pid no process has: the kernel allocates pids below pid_max.
    """
    with open("/proc/sys/kernel/pid_max") as f:
        pid = int(f.read())
    assert not pidAlive(pid)
    return pid


def livePID() -> int:
    """
    A live process that is not us: our parent.
    """
    pid = os.getppid()
    assert pid != os.getpid() and pidAlive(pid)
    return pid


def oneLine(error: BaseException) -> str:
    message = str(error)
    assert message and len(message.splitlines()) == 1, message
    return message


def test_pathIsAbsolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    pidFile = PidFile("app.pid")
    assert pidFile.path == str(tmp_path / "app.pid")
    assert "app.pid" in repr(pidFile)


def test_pidAlive() -> None:
    assert pidAlive(os.getpid())
    assert pidAlive(livePID())
    assert not pidAlive(deadPID())


# --- write --------------------------------------------------------------------


def test_writeCreates(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    PidFile(str(path)).write(1234)
    assert path.read_bytes() == b"1234\n"
    assert PidFile(str(path)).read() == 1234


def test_writeMode0644(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    old = os.umask(0o077)
    try:
        PidFile(str(path)).write(1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_writeReplaces(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    path.write_text("999999 and some more text that is longer\n")
    PidFile(str(path)).write(42)
    assert path.read_bytes() == b"42\n"


def test_writeIsAtomicRename(tmp_path: Path) -> None:
    """
    The file is renamed into place: the old inode is never truncated, and no
    temporary file is left in the directory.
    """
    path = tmp_path / "app.pid"
    PidFile(str(path)).write(1)
    before = path.stat().st_ino
    with open(path, "rb") as held:
        PidFile(str(path)).write(2)
        # The reader that opened the old file still sees a complete old file.
        assert held.read() == b"1\n"
    assert path.stat().st_ino != before
    assert path.read_bytes() == b"2\n"
    assert sorted(os.listdir(tmp_path)) == ["app.pid"]


def test_writeFailureKeepsOldFile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    If the final rename fails, the old file is intact, the temporary file is
    gone, and the error is a one-line L{PidFileError}.
    """
    path = tmp_path / "app.pid"
    path.write_text("77\n")

    def failingReplace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failingReplace)
    with pytest.raises(PidFileError) as info:
        PidFile(str(path)).write(88)
    monkeypatch.undo()
    message = oneLine(info.value)
    assert str(path) in message and "No space left on device" in message
    assert path.read_text() == "77\n"
    assert sorted(os.listdir(tmp_path)) == ["app.pid"]


def test_writeReplacesSymlinkWithoutFollowing(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("do not touch\n")
    os.chmod(target, 0o600)
    path = tmp_path / "app.pid"
    path.symlink_to(target)
    PidFile(str(path)).write(4321)
    assert not path.is_symlink()
    assert path.read_bytes() == b"4321\n"
    assert target.read_text() == "do not touch\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_writeReplacesDanglingSymlink(tmp_path: Path) -> None:
    target = tmp_path / "nowhere"
    path = tmp_path / "app.pid"
    path.symlink_to(target)
    PidFile(str(path)).write(5)
    assert not path.is_symlink()
    assert not target.exists()
    assert path.read_bytes() == b"5\n"


def test_writeIntoMissingDirectory(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "app.pid"
    with pytest.raises(PidFileError) as info:
        PidFile(str(path)).write(1)
    assert str(path) in oneLine(info.value)


def test_writeIntoUnwritableDirectory() -> None:
    """
    /proc/sys refuses file creation even to root.
    """
    with pytest.raises(PidFileError) as info:
        PidFile("/proc/sys/txflip-test.pid").write(1)
    assert "/proc/sys/txflip-test.pid" in oneLine(info.value)


# --- read ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"123\n", 123),
        (b"  123  \n", 123),
        (b"", None),
        (b"abc\n", None),
        (b"0\n", None),
        (b"-5\n", None),
        (b"\xff\xfe", None),
    ],
)
def test_read(tmp_path: Path, content: bytes, expected: int | None) -> None:
    path = tmp_path / "app.pid"
    path.write_bytes(content)
    assert PidFile(str(path)).read() == expected


def test_readMissing(tmp_path: Path) -> None:
    assert PidFile(str(tmp_path / "app.pid")).read() is None


# --- check --------------------------------------------------------------------


def test_checkNoFile(tmp_path: Path) -> None:
    PidFile(str(tmp_path / "app.pid")).check()


def test_checkRefusesLiveOtherPID(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    other = livePID()
    path.write_text(f"{other}\n")
    with pytest.raises(PidFileError) as info:
        PidFile(str(path)).check()
    message = oneLine(info.value)
    assert f"another server is running, PID {other}" in message
    assert str(path) in message
    # Refusing does not touch the file.
    assert path.read_text() == f"{other}\n"


def test_checkAllowsListedPID(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    other = livePID()
    path.write_text(f"{other}\n")
    PidFile(str(path)).check(allowed=(other,))


def test_checkAllowsOwnPID(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    path.write_text(f"{os.getpid()}\n")
    PidFile(str(path)).check()


def test_checkIgnoresStalePID(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    path.write_text(f"{deadPID()}\n")
    PidFile(str(path)).check()


def test_checkIgnoresGarbage(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    path.write_text("not a pid\n")
    PidFile(str(path)).check()


def test_checkMissingDirectory(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "app.pid"
    with pytest.raises(PidFileError) as info:
        PidFile(str(path)).check()
    message = oneLine(info.value)
    assert "does not exist" in message and str(tmp_path / "missing") in message


def test_checkDirectoryIsARegularFile(tmp_path: Path) -> None:
    """
    A pid file path whose directory component is a regular file is refused
    (works as root too, unlike permission bits).
    """
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "app.pid"
    with pytest.raises(PidFileError) as info:
        PidFile(str(path)).check()
    assert str(tmp_path / "file") in oneLine(info.value)


def test_checkDirectoryNotWritable() -> None:
    """
    /proc/sys is not writable, even by root (procfs refuses MAY_WRITE there), so
    this case is testable as root.
    """
    if os.access("/proc/sys", os.W_OK | os.X_OK):
        pytest.skip("/proc/sys is writable here; no unwritable directory to test")
    with pytest.raises(PidFileError) as info:
        PidFile("/proc/sys/txflip-test.pid").check()
    assert "directory /proc/sys is not writable" in oneLine(info.value)


def test_checkDirectoryNotWritableByPermissions(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip(
            "root bypasses directory permission bits (W_OK always true):"
            " run the suite as a user other than root to check this"
        )
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        with pytest.raises(PidFileError) as info:
            PidFile(str(directory / "app.pid")).check()
        assert "is not writable" in oneLine(info.value)
    finally:
        directory.chmod(0o700)


# --- removeIfOurs -------------------------------------------------------------


def test_removeIfOurs(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    pidFile = PidFile(str(path))
    pidFile.write(1234)
    assert pidFile.removeIfOurs(1234)
    assert not path.exists()


def test_removeIfOursLeavesOthers(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    pidFile = PidFile(str(path))
    pidFile.write(1234)
    assert not pidFile.removeIfOurs(1235)
    assert path.read_bytes() == b"1234\n"


def test_removeIfOursLeavesGarbage(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    path.write_text("garbage")
    assert not PidFile(str(path)).removeIfOurs(1234)
    assert path.exists()


def test_removeIfOursMissing(tmp_path: Path) -> None:
    assert not PidFile(str(tmp_path / "app.pid")).removeIfOurs(1234)
