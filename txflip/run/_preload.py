"""
Preloading, the supervisor's side: a L{WorkerSpawner} whose workers are forked by
one template per generation (L{txflip.run._template}), which imported the
application once: an upgrade costs one template whatever the number of workers,
and the workers share the template's pages copy-on-write.

Every template is forked by a zygote (L{txflip.run._zygote}), an interpreter that
imported what every template imports before the application.  With
C{--no-warm} each upgrade starts a new zygote, used for its one template and
retired: every upgrade loads everything anew.  With C{--warm} (the default) the
zygote stays, and forks each upgrade's template while none of the files it
imported has changed (then a new zygote replaces it): an upgrade costs a fork and
the application's imports.

A crashed worker is replaced by its generation's template if it is still there
(a fork), by a new one otherwise.  A template is retired (its socket closed: it
exits) once it has no worker left and nothing to fork.  We are the parent of
neither templates nor workers: their forkers report their exit statuses
(L{txflip.run._forker}), and a child whose forker dies first is ours to reap.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from txflip._jsonlog import UPGRADE_ID
from txflip.generation._signals import signalsHeld
from txflip.generation._spawn import Spawn
from txflip.run._forked import ForkedChild, PreloadedWorker
from txflip.run._forker import Forker
from txflip.run._limits import describe
from txflip.run._runners import Runner
from txflip.run._template import SOCKET_FD
from txflip.run._zygote import SINCE

_log = Logger()
#: Seconds a retired zygote has to exit as the supervisor stops.
CLOSE_TIMEOUT = 5.0


class Template(Forker):
    """
    One template, forked by a zygote, and the workers it forks.
    """

    role = "the preloading template"

    def __init__(
        self,
        reactor: Any,
        spawn: Spawn,
        idle: Callable[[Template], None],
        forkedBy: Callable[[_TemplateProcess], None],
        parse: bool = True,
    ) -> None:
        super().__init__(reactor, idle)
        self.generation = spawn.generation
        self.upgradeId = spawn.environ.get(UPGRADE_ID)
        self.process = _TemplateProcess(self, reactor, spawn)
        self.process.parse = parse
        try:
            self.process.give(
                {2: self.stderr.childEnd, SOCKET_FD: self.theirs.fileno()}
            )
        except OSError:
            self.abandon()
            raise
        self.started()
        forkedBy(self.process)

    def kill(self) -> None:
        self.process.kill()


class _TemplateProcess(ForkedChild):
    """
    A template's process, as its zygote forks it and we follow it.
    """

    def __init__(self, template: Template, reactor: Any, spawn: Spawn) -> None:
        super().__init__(reactor, {**spawn.environ, **dict(spawn.command.extraEnv)})
        self.reactor = reactor
        self.template = template
        self.cwd = spawn.command.cwd
        #: Whether it is to try parsing twistd's options.
        self.parse = True

    def forked(self, pid: int) -> None:
        self.template.pid = pid
        super().forked(pid)
        if self.gone:  # killed while it was being forked
            self.signal("KILL")

    def kill(self) -> None:
        if self.pid:
            self.signal("KILL")
        else:  # not forked yet: never will be (or is killed once it is)
            self._end(None)

    def notForked(self, message: str) -> None:
        self.template._error = message
        self._end(None)

    def _ending(self, reason: Failure | None) -> None:
        self.template.ended(reason)


class Zygote(Forker, ProcessProtocol):
    """
    The zygote: a fresh interpreter that forks templates.
    """

    role = "the preloading zygote"

    def __init__(
        self,
        reactor: Any,
        runner: Runner,
        child: _TemplateProcess,
        warm: bool,
        idle: Callable[[Zygote], None],
        stale: Callable[[Zygote, str, list[ForkedChild]], None],
    ) -> None:
        super().__init__(reactor, idle)
        self._idleNow = idle
        self._stale = stale
        self.isStale = False
        self._checks = False
        self.whenGone: Deferred[None] = Deferred()
        try:
            with signalsHeld():  # its templates' workers are born with them blocked
                process = reactor.spawnProcess(
                    self,
                    runner.interpreter,
                    runner.zygoteArgs(warm),
                    env={**child.environ, SINCE: str(time.time_ns())},
                    path=child.cwd,
                    childFDs={
                        0: 0,
                        1: 1,
                        2: self.stderr.childEnd,
                        SOCKET_FD: self.theirs.fileno(),
                    },
                )
        except BaseException:
            self.abandon()
            raise
        self.started()
        self._process = process
        self.pid = process.pid or 0

    @property
    def settled(self) -> bool:
        """
        Whether nothing it imported changed while it imported it (else it is
        used once, and not kept).
        """
        return bool(self.said.get("settled", True))

    def _isReady(self) -> None:
        if not self.settled:
            self._idleNow(self)

    def _extra(self, child: ForkedChild) -> dict[str, Any]:
        # Its first request follows its imports by milliseconds: no check, or a
        # file written as often (a log in a directory on sys.path) would have
        # every new zygote replaced in turn.
        assert isinstance(child, _TemplateProcess)
        extra: dict[str, Any] = {"check": self._checks, "parse": child.parse}
        self._checks = True
        if child.cwd is not None:
            extra["cwd"] = child.cwd
        return extra

    def _answered(self, child: ForkedChild, answer: dict[str, Any]) -> None:
        if "stale" not in answer:
            super()._answered(child, answer)
            return
        self.isStale = True  # no more asking: a fresh zygote takes its requests
        waiting, self._queue = [child, *self._queue], []
        self._stale(self, str(answer["stale"]), waiting)

    def _next(self) -> None:
        if not self.isStale:
            super()._next()

    def busy(self) -> bool:
        # Its templates outlive it: only what it is still asked for keeps it.
        return bool(self._queue or self._asked)

    def kill(self) -> None:
        self._process.signalProcess("KILL")

    def stop(self) -> Deferred[None]:
        """
        Retire it; fires once it is gone, killed if it has not exited within
        L{CLOSE_TIMEOUT} seconds of end of file.
        """
        self.retire()
        late = self._reactor.callLater(CLOSE_TIMEOUT, self.kill)
        return self.whenGone.addBoth(lambda _: late.active() and late.cancel())

    def processEnded(self, reason: Failure) -> None:
        self.ended(reason)
        self.whenGone.callback(None)


class Preloader:
    """
    The preloading L{txflip.run._workers.WorkerSpawner}: one template per
    generation, a new one for each upgrade (the workers it starts carry its id).
    """

    def __init__(self, runner: Runner, warm: bool = False) -> None:
        self._runner = runner
        self._warm = warm
        self._zygote: Zygote | None = None
        self._templates: dict[int, Template] = {}
        self._last: Template | None = None
        #: Every forker not yet gone, for the reaper and for L{close}.
        self._alive: set[Forker] = set()

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
            template = Template(
                reactor, spawn, self._retire, self._zygoteFor, self._parse
            )
            self._templates[spawn.generation] = template
            self._last = template
            self._alive.add(template)
        worker = PreloadedWorker(reactor, spawn, afterReady)
        template.fork(worker)
        return worker

    @property
    def _parse(self) -> bool:
        """
        Whether a new template is to try parsing twistd's options: not if the
        last one found that its plugin imports the reactor.
        """
        last = self._last
        return last is None or not last.said.get("parsesInWorker", False)

    def _zygoteFor(self, template: ForkedChild) -> None:
        """
        Have C{template} forked by the zygote, a new one if it is gone, stale,
        or (without C{--warm}) used once already.
        """
        assert isinstance(template, _TemplateProcess)
        zygote = self._zygote
        if zygote is None or zygote.gone or zygote.isStale:
            try:
                zygote = Zygote(
                    template.reactor,
                    self._runner,
                    template,
                    self._warm,
                    self._idle,
                    self._replace,
                )
            except OSError as e:
                template.notForked(f"cannot start the preloading zygote: {describe(e)}")
                return
            self._alive.add(zygote)
        self._zygote = zygote if self._warm else None
        zygote.fork(template)

    def _idle(self, zygote: Zygote) -> None:
        """
        Keep the current zygote while it is ready, settled and has nothing to
        fork; retire any other once it has nothing to fork (one that is not
        ready then is stuck importing: its template was given up on).
        """
        if zygote is self._zygote and zygote.ready and zygote.settled:
            return
        if zygote is self._zygote:
            self._zygote = None
            if zygote.ready:
                _log.info(
                    "txflip run: the preloading zygote pid {pid} is not kept: a"
                    " file it imported changed as it imported it",
                    pid=zygote.pid,
                )
        if not zygote.busy():
            zygote.retire()

    def _replace(self, stale: Zygote, why: str, waiting: list[ForkedChild]) -> None:
        _log.info(
            "txflip run: a new preloading zygote replaces pid {pid}: {why}",
            pid=stale.pid,
            why=why,
        )
        if self._zygote is stale:
            self._zygote = None
        stale.retire()
        for template in waiting:
            self._zygoteFor(template)

    def _retire(self, template: Template) -> None:
        if self._templates.get(template.generation) is template:
            del self._templates[template.generation]
        template.retire()

    def pids(self) -> set[int]:
        self._alive = {f for f in self._alive if not f.gone}
        return {f.pid for f in self._alive}

    def close(self) -> Deferred[None]:
        """
        Retire every zygote (the supervisor stops); fires once all are gone.
        """
        self._zygote = None
        zygotes = [z for z in self._alive if isinstance(z, Zygote) and not z.gone]
        return gatherResults([z.stop() for z in zygotes]).addCallback(lambda _: None)
