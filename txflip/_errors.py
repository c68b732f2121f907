"""
The exceptions txflip raises.

Each carries a message meant to be shown to an operator as it is: one line, saying what
went wrong and, where it helps, what to do.  Callers print C{str(error)}, never a
traceback.
"""

from __future__ import annotations


class TxflipError(Exception):
    """
    Base class of every error txflip raises on purpose.
    """


class ListenError(TxflipError, ValueError):
    """
    A listener could not be created: bad description, address in use, a path that is
    not a socket, and so on.
    """


class HandoffError(TxflipError):
    """
    The state handed over by the previous generation is unusable: a malformed fd table,
    an fd that is closed, not a socket, or not the kind of socket it claims to be.
    """


class PidFileError(TxflipError):
    """
    The pid file cannot be written, or names another live server.
    """


class UpgradeError(TxflipError):
    """
    An upgrade was refused or failed; the current generation keeps serving.
    """


class Refused(UpgradeError):
    """
    An upgrade was refused at once, without starting anything: not now.
    """


class NotReady(Refused):
    def __init__(self) -> None:
        super().__init__("process is not ready yet")


class ParentAlive(Refused):
    def __init__(self) -> None:
        super().__init__("previous generation hasn't exited yet")


class UpgradeInProgress(Refused):
    def __init__(self) -> None:
        super().__init__("upgrade in progress")


class Stopping(Refused):
    def __init__(self) -> None:
        super().__init__("terminating")


class WorkerOfSupervisor(Refused):
    def __init__(self, supervisorPID: int) -> None:
        super().__init__(
            f"this is a worker of the supervisor pid {supervisorPID}: upgrade that"
            f" (kill -HUP {supervisorPID}, or txflip upgrade)"
        )


class RunningAsInit(Refused):
    def __init__(self) -> None:
        super().__init__(
            "running as PID 1: when this process exits the kernel kills every"
            " process of its namespace, the new generation too (an init such as"
            " tini exits with its child as well): in a container, run under"
            " `txflip run`"
        )


class ChildFailed(UpgradeError):
    """
    The next generation exited, or was killed, before it became ready.
    """


class SpawnFailed(ChildFailed):
    """
    The next generation could not be started at all (no process: out of fds, a
    working directory that is gone, ...).  Unlike a child that fails, nothing in
    the generation machine logs it: L{txflip.control._reports.Reports} does.
    """


class UpgradeTimeout(UpgradeError):
    """
    The next generation did not become ready within the upgrade timeout.
    """


class CheckError(TxflipError):
    """
    C{txflip check} cannot run as asked (bad input, an unusable target): reported
    as one line, exit status 2.
    """
