"""
Running the installed commands as subprocesses in tests.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from typing import Sequence

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectError
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from ai_agent.speed import STOCK_VARIABLE


def command(name: str) -> list[str]:
    """
    The argv prefix for an installed console script next to this Python
    (C{ai-agent}, C{twistd}), falling back to C{python -m}.
    """
    script = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(script):
        return [script]
    module = {"ai-agent": "ai_agent", "twistd": "twisted"}[name]
    return [sys.executable, "-m", module]


#: The checkout this test suite belongs to.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def childEnvironment(checkout: bool = True, **extra: str) -> dict[str, str]:
    """
    A minimal environment for a child: no provider keys from the caller.

    @param checkout: import C{ai_agent} from this checkout (so the code
        under test runs even where an older copy is installed); C{False}
        tests the installed package alone.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if key in ("PATH", "LANG", "LC_ALL", "SYSTEMROOT", "TMPDIR", "VIRTUAL_ENV")
        # A test run on stock Twisted (tox -e stock) runs its servers so.
        or key == STOCK_VARIABLE
    }
    if checkout:
        env["PYTHONPATH"] = CHECKOUT
    env.update(extra)
    return env


def exitStatus(reason: Failure) -> int:
    """
    How a child ended, from the reason C{processEnded} was given: its exit
    code, or minus the number of the signal that killed it (as
    L{subprocess.Popen.returncode} reports it), so that a death by signal
    never reads as a success.
    """
    ended = reason.value
    number = getattr(ended, "signal", None)
    if number is not None:
        return -int(number)
    code = getattr(ended, "exitCode", None)
    if code is None:
        raise ValueError(f"a process ended with neither an exit code nor a signal: {ended!r}")
    return int(code)


class _Collect(ProcessProtocol):
    """
    A short-lived child: feeds it C{stdin}, collects its output, fires
    C{done} with (stdout, stderr, L{exitStatus}).
    """

    def __init__(self, stdin: bytes | None) -> None:
        self.stdin = stdin
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.done: Deferred[tuple[bytes, bytes, int]] = Deferred()

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        if self.stdin is not None:
            transport.write(self.stdin)
        transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        self.done.callback((b"".join(self.out), b"".join(self.err), exitStatus(reason)))


def run(
    argv: Sequence[str], cwd: str, env: dict[str, str], stdin: bytes | None = None
) -> Deferred[tuple[bytes, bytes, int]]:
    """
    Run a command; fire with (stdout, stderr, L{exitStatus}).
    """
    collect = _Collect(stdin)
    reactor.spawnProcess(collect, argv[0], list(argv), env=env, path=cwd)
    return collect.done


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago (another process may
    take it before it is used).  Only for what must be given a port number
    before it starts and cannot say which port it bound: a child that
    binds a port C{--openai-completions 0} would not reuse (C{--metrics-port},
    a script that binds a given port); an C{ai-agent} server is started on
    port 0 instead and its port read from its banner (L{ServerProcess.waitForPort}).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_ANNOUNCED = re.compile(rb"  API: http://127\.0\.0\.1:([0-9]+)/v1 ")


def announcedPort(output: bytes) -> int | None:
    """
    The port an C{ai-agent} server's banner says its API listens on (its
    first C{API:} line), or L{None} before it said so.
    """
    match = _ANNOUNCED.search(output)
    return None if match is None else int(match.group(1))


class ServerProcess(ProcessProtocol):
    """
    A server child: collects its output, fires C{ended} with its
    L{exitStatus}.

    twistd re-raises the signal that stopped it once it has shut down
    cleanly, so C{twistd -n} ends with C{-SIGTERM} where C{ai-agent} exits
    0; a test telling that apart from a crash by the same signal also looks
    at the output.

    @ivar status: the L{exitStatus}, or L{None} while it runs.
    """

    def __init__(self) -> None:
        self.output = b""
        self.status: int | None = None
        self.ended: Deferred[int] = Deferred()
        self._endWaiters: list[Deferred[int]] = []
        self._portWaiters: list[Deferred[int]] = []
        self._textWaiters: list[tuple[bytes, Deferred[None]]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data
        for waiter in list(self._textWaiters):
            if waiter[0] in self.output:
                self._textWaiters.remove(waiter)
                waiter[1].callback(None)
        port = announcedPort(self.output)
        if port is not None:
            waiters, self._portWaiters = self._portWaiters, []
            for waiter in waiters:
                waiter.callback(port)

    def waitForOutput(self, text: bytes, timeout: float = 30.0) -> Deferred[None]:
        """
        Fire once the child wrote C{text} (on either stream); fail with its
        output after C{timeout} seconds.
        """
        if text in self.output:
            return succeed(None)

        def forget(d: Deferred[None]) -> None:
            self._textWaiters = [w for w in self._textWaiters if w[1] is not d]

        def timedOut(result: object, seconds: float) -> None:
            raise AssertionError(
                f"the server did not say {text!r} within {seconds:g} s; it said:\n"
                + self.output.decode("utf-8", "replace")
            )

        waiter: Deferred[None] = Deferred(canceller=forget)
        self._textWaiters.append((text, waiter))
        return waiter.addTimeout(timeout, reactor, onTimeoutCancel=timedOut)

    def waitForPort(self, timeout: float = 30.0) -> Deferred[int]:
        """
        Fire with the port an C{ai-agent} child announced it listens on
        (started with port 0, it binds one the system picks: no race with
        another process); fail with its output after C{timeout} seconds or
        when it ends first.
        """
        port = announcedPort(self.output)
        if port is not None:
            return succeed(port)

        def forget(d: Deferred[int]) -> None:
            if d in self._portWaiters:
                self._portWaiters.remove(d)

        def timedOut(result: object, seconds: float) -> int:
            raise AssertionError(
                f"the server announced no port within {seconds:g} s; it said:\n"
                + self.output.decode("utf-8", "replace")
            )

        waiter: Deferred[int] = Deferred(canceller=forget)
        self._portWaiters.append(waiter)
        return waiter.addTimeout(timeout, reactor, onTimeoutCancel=timedOut)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.status = exitStatus(reason)
        waiters, self._endWaiters = self._endWaiters, []
        self.ended.callback(self.status)
        for waiter in waiters:
            waiter.callback(self.status)
        portWaiters, self._portWaiters = self._portWaiters, []
        for portWaiter in portWaiters:
            portWaiter.errback(
                AssertionError(
                    f"the server ended ({self.status}) before announcing a port:\n"
                    + self.output.decode("utf-8", "replace")
                )
            )

    def waitForEnd(self, timeout: float = 30.0) -> Deferred[int]:
        """
        Fire with the L{exitStatus} once the child ended; fail with its
        output after C{timeout} seconds (the child is left running and
        C{ended} untouched, for the test's cleanup to kill it).
        """
        if self.status is not None:
            return succeed(self.status)

        def forget(d: Deferred[int]) -> None:
            self._endWaiters.remove(d)

        def timedOut(result: object, seconds: float) -> int:
            raise AssertionError(
                f"the server still runs after {seconds:g} s; it said:\n"
                + self.output.decode("utf-8", "replace")
            )

        waiter: Deferred[int] = Deferred(canceller=forget)
        self._endWaiters.append(waiter)
        return waiter.addTimeout(timeout, reactor, onTimeoutCancel=timedOut)


async def waitUntilListening(server: ServerProcess, port: int, timeout: float = 30.0) -> None:
    """
    Wait until the child C{server} accepts connections on 127.0.0.1:C{port}.

    @raise AssertionError: naming the exit status and showing the output,
        when the child ends first or nothing listens within C{timeout}
        seconds.
    """
    deadline = reactor.seconds() + timeout
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    while True:
        if server.status is not None:
            raise AssertionError(
                f"the server ended ({server.status}) before listening on port {port}:\n"
                + server.output.decode("utf-8", "replace")
            )
        try:
            probe = await connectProtocol(endpoint, Protocol())
        except ConnectError:
            if reactor.seconds() >= deadline:
                raise AssertionError(
                    f"nothing listened on port {port} after {timeout:g} s; the server said:\n"
                    + server.output.decode("utf-8", "replace")
                ) from None
            await deferLater(reactor, 0.05, lambda: None)
        else:
            probe.transport.loseConnection()
            return
