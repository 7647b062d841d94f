# -*- test-case-name: tests.test_workers -*-
"""
Several processes serving the same ports: C{ai-agent --workers N}.

The first process listens as usual, then starts N-1 workers running the same
command with C{--worker-fds}, which names the listening sockets they
inherit; a worker adopts them instead of listening.  The kernel gives each
new connection to whichever process accepts it first, so every CPU serves.
Each process has its own reactor, pools and upstream connections (requests
are stateless); the concurrency options apply per process.

The parent supervises: it restarts a worker that died, and on shutdown
sends its workers SIGTERM (each drains like a single server) and waits for
them; the parent's exit status is 1 when a worker did not stop cleanly
(exit status 0).  A worker often gets the stop signal twice, from the
terminal or systemd and from the parent: L{ai_agent.stopsignals} takes the
second as a copy of the first.  A worker's standard input is a pipe from
the parent; when it closes (the parent is gone, however it died) the
worker shuts down too.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, Sequence, cast

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from ai_agent.observe import markProcessDead

log = Logger()

#: Endpoint types whose sockets a worker can adopt as they are.
ADOPTABLE = ("tcp:", "tcp6:", "unix:")

#: Seconds before a worker that died is started again.
RESTART_DELAY = 1.0

#: Seconds a worker may take to exit after SIGTERM beyond the drain window.
EXIT_GRACE = 5.0


def encodeInherited(ports: Sequence[tuple[int, int]]) -> str:
    """
    The C{--worker-fds} value for C{(descriptor, address family)} pairs.
    """
    return ",".join(f"{fileno}:{int(family)}" for fileno, family in ports)


def parseInherited(text: str) -> list[tuple[int, int]]:
    """
    Parse a C{--worker-fds} value.

    @raise usage.UsageError: when it is malformed.
    """
    pairs: list[tuple[int, int]] = []
    for item in text.split(","):
        fileno, _, family = item.partition(":")
        if not fileno.isdigit() or not family.isdigit():
            raise usage.UsageError(f"--worker-fds: not DESCRIPTOR:FAMILY: {item!r}")
        pairs.append((int(fileno), int(family)))
    return pairs


class AdoptedPortService(Service):
    """
    Listens on an inherited listening socket (a worker's side).
    """

    def __init__(self, reactor: Any, fileno: int, family: int, factory: IProtocolFactory) -> None:
        self.reactor = reactor
        self.fileno = fileno
        self.family = family
        self.factory = factory
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        self.port = self.reactor.adoptStreamPort(
            self.fileno, socket.AddressFamily(self.family), self.factory
        )
        # adoptStreamPort listens on a duplicate; ours is no longer needed.
        os.close(self.fileno)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        stopped = port.stopListening()
        return stopped if isinstance(stopped, Deferred) else succeed(None)


def listeningSockets(listeners: Sequence[Any]) -> list[tuple[int, int]]:
    """
    The C{(descriptor, address family)} of each started listener (a
    L{twisted.application.internet.StreamServerEndpointService} that
    listened synchronously, as TCP and UNIX endpoints do).

    @raise RuntimeError: when a listener has no port yet.
    """
    found: list[tuple[int, int]] = []
    for listener in listeners:
        ports: list[Any] = []

        def keep(port: Any, ports: list[Any] = ports) -> Any:
            ports.append(port)
            return port

        waiting = getattr(listener, "_waitingForPort", None)
        if waiting is not None:
            waiting.addCallback(keep)
        if not ports:
            raise RuntimeError(f"{listener!r} is not listening")
        port = ports[0]
        found.append((port.fileno(), int(port.addressFamily)))
    return found


def workerCommand(argv: Sequence[str], inherited: Sequence[tuple[int, int]]) -> list[str]:
    """
    The command line of a worker: this command, inheriting C{inherited}.
    Options given later in C{argv} do not undo C{--worker-fds}: a process
    with it never starts workers of its own.
    """
    return [
        sys.executable,
        "-m",
        "ai_agent",
        "--worker-fds",
        encodeInherited(inherited),
        *argv,
    ]


class _Worker(ProcessProtocol):
    def __init__(self, supervisor: WorkerSupervisor, number: int) -> None:
        self.supervisor = supervisor
        self.number = number
        self.ended: Deferred[None] = Deferred()
        self.startedPid: int | None = None

    @property
    def pid(self) -> int | None:
        """
        The process id, while it runs.
        """
        return cast(Any, self.transport).pid if self.transport is not None else None

    def processEnded(self, reason: Failure) -> None:
        self.supervisor._ended(self, reason)
        self.ended.callback(None)


@attrs.define(eq=False)
class WorkerSupervisor:
    """
    Starts, restarts and stops the worker processes (the parent's side).

    @ivar command: a worker's argv (see L{workerCommand}).
    @ivar inherited: the descriptors a worker inherits.
    @ivar count: how many workers.
    @ivar stopTimeout: seconds to wait after SIGTERM before SIGKILL.
    """

    reactor: Any
    command: list[str]
    inherited: Sequence[tuple[int, int]]
    count: int
    stopTimeout: float = 30.0 + EXIT_GRACE
    workers: dict[int, _Worker] = attrs.field(factory=dict, init=False)
    uncleanStops: list[int] = attrs.field(factory=list, init=False)
    _stopping: bool = attrs.field(default=False, init=False)

    def start(self) -> None:
        """
        Start every worker.
        """
        for number in range(1, self.count + 1):
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        if self._stopping:
            return
        worker = _Worker(self, number)
        childFDs: dict[int, int | str] = {0: "w", 1: 1, 2: 2}
        for fileno, _ in self.inherited:
            childFDs[fileno] = fileno
        self.reactor.spawnProcess(
            worker,
            self.command[0],
            self.command,
            env={**os.environ, "AI_AGENT_WORKER": str(number)},
            childFDs=childFDs,
        )
        worker.startedPid = worker.pid
        self.workers[number] = worker
        log.info("worker {number} started (pid {pid})", number=number, pid=worker.pid)

    def _ended(self, worker: _Worker, reason: Failure) -> None:
        if self.workers.get(worker.number) is worker:
            del self.workers[worker.number]
        if worker.startedPid is not None:
            # Its gauges (runs in progress, queue depth) no longer count.
            markProcessDead(worker.startedPid)
        if self._stopping:
            if reason.check(ProcessDone):
                log.info("worker {number} stopped (exit status 0)", number=worker.number)
            else:
                # Killed by a signal, or exited at once: its runs were cut.
                self.uncleanStops.append(worker.number)
                log.warn(
                    "worker {number} did not stop cleanly ({reason})",
                    number=worker.number,
                    reason=reason.getErrorMessage(),
                )
            return
        log.warn(
            "worker {number} exited ({reason}); starting it again",
            number=worker.number,
            reason=reason.getErrorMessage(),
        )
        self.reactor.callLater(RESTART_DELAY, self._spawn, worker.number)

    @property
    def pids(self) -> list[int]:
        """
        The process ids of the running workers.
        """
        return [w.pid for w in self.workers.values() if w.pid]

    def hangup(self) -> None:
        """
        Send every worker SIGHUP (each reloads its agents and configuration).
        """
        for worker in list(self.workers.values()):
            _signal(worker, "HUP")

    def stop(self) -> Deferred[None]:
        """
        SIGTERM every worker; SIGKILL those still running after
        C{stopTimeout}; fire when all have exited.
        """
        self._stopping = True
        running = list(self.workers.values())
        if not running:
            return succeed(None)
        for worker in running:
            _signal(worker, "TERM")
        log.info("stopping: sent SIGTERM to {count} worker(s)", count=len(running))

        def kill() -> None:
            for worker in running:
                if not worker.ended.called:
                    log.warn("worker {number} did not stop; killing it", number=worker.number)
                    _signal(worker, "KILL")

        timer = self.reactor.callLater(self.stopTimeout, kill)
        done: Deferred[None] = Deferred()
        remaining = [len(running)]

        def one(_: None) -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                if timer.active():
                    timer.cancel()
                done.callback(None)

        for worker in running:
            worker.ended.addCallback(one)
        return done


def _signal(worker: _Worker, name: str) -> None:
    try:
        cast(Any, worker.transport).signalProcess(name)
    except Exception:  # noqa: BLE001 - already gone
        pass


class _ParentWatch(Protocol):
    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.reactor.running:
            log.info("the parent process is gone; stopping")
            self.reactor.stop()


def watchParent(reactor: Any) -> None:
    """
    In a worker: stop when standard input (the pipe from the parent)
    closes.
    """
    from twisted.internet.stdio import StandardIO

    devnull = os.open(os.devnull, os.O_WRONLY)
    cast(Any, StandardIO)(_ParentWatch(reactor), stdin=0, stdout=devnull, reactor=reactor)


def startWorkers(
    reactor: Any, listeners: Sequence[Any], argv: Sequence[str], count: int, stopTimeout: float
) -> WorkerSupervisor:
    """
    In the parent, once C{listeners} listen: start C{count} workers sharing
    their sockets; they are stopped when the reactor shuts down.
    """
    inherited = listeningSockets(listeners)
    supervisor = WorkerSupervisor(
        reactor, workerCommand(argv, inherited), inherited, count, stopTimeout + EXIT_GRACE
    )
    supervisor.start()
    reactor.addSystemEventTrigger("before", "shutdown", supervisor.stop)
    return supervisor


__all__ = [
    "ADOPTABLE",
    "AdoptedPortService",
    "WorkerSupervisor",
    "encodeInherited",
    "listeningSockets",
    "parseInherited",
    "startWorkers",
    "watchParent",
    "workerCommand",
]
