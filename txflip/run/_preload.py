"""
Preloading, the supervisor's side: a L{WorkerSpawner} whose workers are forked by
one template per generation (L{txflip.run._template}), which imported the
application once: an upgrade costs one interpreter start whatever the number of
workers, and the workers share the template's pages copy-on-write.

Every upgrade starts a new template (new code, new dependencies: nothing stale
survives); a crashed worker is replaced by its generation's template if it is
still there (a fork), by a new one otherwise.  A template is retired (its socket
closed: it exits) once it has no worker left and nothing to fork.

We are not the workers' parent: the template is, and reports their exit
statuses (L{txflip.run._forked} follows each worker, and outlives a template that
dies).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from txflip._jsonlog import UPGRADE_ID
from txflip.generation._exits import describeExit
from txflip.generation._signals import signalsHeld
from txflip.generation._spawn import Spawn
from txflip.run._forked import PreloadedWorker
from txflip.run._runners import Runner
from txflip.run._stderr import StderrTail, withTail
from txflip.run._template import MAX_MESSAGE, SOCKET_FD


@implementer(IReadDescriptor)
class Template(ProcessProtocol):
    """
    One template process and the workers it forks.
    """

    def __init__(
        self,
        reactor: Any,
        runner: Runner,
        spawn: Spawn,
        idle: Callable[[Template], None],
    ) -> None:
        self._reactor = reactor
        self._idle = idle
        self.generation = spawn.generation
        self.upgradeId = spawn.environ.get(UPGRADE_ID)
        self.ready = self.gone = False
        self._error: str | None = None
        self._queue: list[PreloadedWorker] = []
        self._asked: dict[int, PreloadedWorker] = {}
        self._workers: dict[int, PreloadedWorker] = {}
        self._ids = 0
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock.setblocking(False)
        self._stderr = StderrTail(reactor)
        environ = {**spawn.environ, **dict(spawn.command.extraEnv)}
        try:
            with signalsHeld():  # its workers are born with them blocked
                process = reactor.spawnProcess(
                    self,
                    runner.interpreter,
                    runner.templateArgs(),
                    env=environ,
                    path=spawn.command.cwd,
                    childFDs={
                        0: 0,
                        1: 1,
                        2: self._stderr.childEnd,
                        SOCKET_FD: theirs.fileno(),
                    },
                )
        except BaseException:
            self._sock.close()
            raise
        finally:
            theirs.close()
            self._stderr.started()
        self._process = process
        self.pid: int = process.pid or 0
        reactor.addReader(self)

    def __repr__(self) -> str:
        return f"<Template pid={self.pid}>"

    def fork(self, worker: PreloadedWorker) -> None:
        worker.onEnd = self._checkIdle
        if self.gone:
            worker.notForked(self._why())
            return
        self._queue.append(worker)
        self._next()

    def _next(self) -> None:
        """
        Ask for the next fork once the template is ready and has answered the
        last: one request at a time.  Each carries a worker's environment and
        fds; a burst of them (every worker of a generation at once) would fill
        the socket's buffer (C{EAGAIN}) or pass more fds than may be in flight.
        """
        while self.ready and not self.gone and not self._asked and self._queue:
            worker = self._queue.pop(0)
            if not worker.gone:
                self._ask(worker)

    def _ask(self, worker: PreloadedWorker) -> None:
        self._ids += 1
        request = {"id": self._ids, "env": worker.environ, "fds": worker.targets}
        try:
            socket.send_fds(self._sock, [json.dumps(request).encode()], worker.fds)
        except OSError as e:
            worker.notForked(f"cannot ask the preloading template to fork: {e}")
            return
        finally:
            worker.closeFDs()
        self._asked[self._ids] = worker

    # -- the socket ---------------------------------------------------------------

    def fileno(self) -> int:
        return self._sock.fileno()

    def logPrefix(self) -> str:
        return "txflip-template"

    def doRead(self) -> None:
        while True:
            try:
                data = self._sock.recv(MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._reactor.removeReader(self)
                return
            self._message(json.loads(data))

    def connectionLost(self, reason: Failure) -> None:
        self._reactor.removeReader(self)

    def _message(self, message: dict[str, Any]) -> None:
        if "ready" in message:
            self.ready = True
            self._next()
        elif "error" in message:
            self._error = str(message["error"])
        elif "forked" in message:
            worker = self._asked.pop(int(message["forked"]))
            if "pid" in message:
                self._workers[int(message["pid"])] = worker
                worker.forked(int(message["pid"]))
            else:
                worker.notForked(f"the preloading template: {message['error']}")
            self._next()
        elif "exited" in message:
            ended = self._workers.pop(int(message["exited"]), None)
            if ended is not None:
                ended.exited(int(message["status"]))
        # A worker cancelled while its request was out has ended already, and
        # will not say so again: look now.
        self._reactor.callLater(0, self._checkIdle)

    def _checkIdle(self) -> None:
        self._queue = [w for w in self._queue if not w.gone]
        if not (self.gone or self._queue or self._asked or self._workers):
            self._idle(self)

    def retire(self) -> None:
        """
        Close our end: the template exits (its workers, if any, are ours then).
        """
        if self._sock.fileno() >= 0:
            self._reactor.removeReader(self)
            self._sock.close()
        if not (self.ready or self.gone):  # stuck importing: nobody waits for it
            self._process.signalProcess("KILL")

    # -- the process --------------------------------------------------------------

    def processEnded(self, reason: Failure) -> None:
        self.doRead()  # what it said before it died
        self.gone = True
        self._reason = reason
        self.retire()
        why = self._why()
        for worker in [*self._queue, *self._asked.values()]:
            worker.notForked(why)
        self._queue, self._asked = [], {}
        for worker in self._workers.values():
            worker.templateGone()
        self._workers = {w.pid: w for w in self._workers.values() if not w.gone}
        self._stderr.close()

    def _why(self) -> str:
        reason = getattr(self, "_reason", None)
        message = describeExit(self.pid, reason).replace(
            f"pid={self.pid}", f"pid={self.pid} (the preloading template)"
        )
        if self._error:
            message = f"{message}: {self._error}"
        return withTail(message, self._stderr.tail())


class Preloader:
    """
    The preloading L{txflip.run._workers.WorkerSpawner}: one template per
    generation, a new one for each upgrade (the workers it starts carry its id).
    """

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._templates: dict[int, Template] = {}
        #: Every template not yet reaped, for the reaper (Twisted reaps them).
        self._alive: set[Template] = set()

    def __call__(
        self, reactor: Any, spawn: Spawn, afterReady: Callable[[Failure], None]
    ) -> PreloadedWorker:
        template = self._templates.get(spawn.generation)
        upgradeId = spawn.environ.get(UPGRADE_ID)
        if (
            template is None
            or template.gone
            or (upgradeId is not None and upgradeId != template.upgradeId)
        ):
            template = Template(reactor, self._runner, spawn, self._retire)
            self._templates[spawn.generation] = template
            self._alive.add(template)
        worker = PreloadedWorker(reactor, spawn, afterReady)
        template.fork(worker)
        return worker

    def _retire(self, template: Template) -> None:
        if self._templates.get(template.generation) is template:
            del self._templates[template.generation]
        template.retire()

    def pids(self) -> set[int]:
        self._alive = {t for t in self._alive if not t.gone}
        return {t.pid for t in self._alive}
