"""
Graceful shutdown of the real server process: SIGTERM stops accepting,
C{/health} turns 503, running streams finish (or get an in-band error past
C{--shutdown-timeout}), and the process exits 0; a second signal exits at
once if it comes after a grace window (one within it is a copy of the
first).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ai_agent.stopsignals import GRACE, STOP_SIGNALS, StopSignals
from ai_agent.testing import Reply, startFakeUpstream
from tests._harness import writeAgent
from tests._process import (
    ServerProcess,
    childEnvironment,
    command,
    freePort,
    waitUntilListening,
)
from tests.test_http_guard import _Raw, _request


def _sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


STREAM = json.dumps(
    {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}
).encode()


class ShutdownTests(TestCase):
    """
    SIGTERM drains the server.
    """

    async def startServer(self, *extra: str) -> tuple[ServerProcess, int]:
        running = await startFakeUpstream(reactor)
        self.addCleanup(running.stop)
        self.upstream = running.upstream
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        with open(os.path.join(folder, ".ai-agent.json"), "w") as f:
            json.dump({"providers": {"fake": {"type": "openai", "baseUrl": running.baseUrl}}}, f)
        writeAgent(folder, "chat.ai")
        port = freePort()
        server = ServerProcess()
        argv = [
            *command("ai-agent"),
            "--agent",
            "chat.ai",
            "--openai-completions",
            str(port),
            *extra,
        ]
        reactor.spawnProcess(server, argv[0], argv, env=childEnvironment(HOME=folder), path=folder)

        def kill() -> Deferred[int] | None:
            if not server.ended.called:
                server.transport.signalProcess("KILL")
                return server.ended
            return None

        self.addCleanup(kill)
        await waitUntilListening(server, port)
        return server, port

    async def connect(self, port: int) -> _Raw:
        raw = _Raw()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), raw)
        self.addCleanup(lambda: raw.transport.loseConnection() if not raw.closed else None)
        return raw

    async def test_drainsRunningStream(self) -> None:
        """
        After SIGTERM, a kept-alive connection sees C{/health} 503, a
        running stream still completes normally, and the process exits 0.
        """
        server, port = await self.startServer()
        self.upstream.script(Reply(content=["one", "two"], hold=True))
        watcher = await self.connect(port)
        watcher.transport.write(_request(path=b"/health", method=b"GET", body=b""))
        await watcher.waitFor(b'"status":"ok"')
        streamer = await self.connect(port)
        streamer.transport.write(_request(STREAM))
        await self.upstream.waitForRequests(1)
        os.kill(server.transport.pid, signal.SIGTERM)
        await _sleep(0.3)
        watcher.transport.write(_request(path=b"/health", method=b"GET", body=b""))
        await watcher.waitFor(b'"status":"stopping"')
        self.assertIn(b"HTTP/1.1 503", watcher.received)
        self.upstream.release()
        await streamer.waitFor(b"[DONE]")
        self.assertIn(b'"content":"two"', streamer.received)
        self.assertNotIn(b'"error"', streamer.received)
        code = await server.waitForEnd()
        self.assertEqual(code, 0, server.output.decode())

    async def test_timeoutBeforeAnythingSent(self) -> None:
        """
        A streaming run that had sent nothing yet when the shutdown timeout
        passes is answered with a real 503 status.
        """
        server, port = await self.startServer("--shutdown-timeout", "0.3")
        self.upstream.script(Reply(content=["one", "two"], hold=True))
        streamer = await self.connect(port)
        streamer.transport.write(_request(STREAM))
        await self.upstream.waitForRequests(1)
        os.kill(server.transport.pid, signal.SIGTERM)
        await streamer.waitFor(b"}}")
        self.assertTrue(streamer.received.startswith(b"HTTP/1.1 503"))
        self.assertIn(b"shut down", streamer.received)
        code = await server.waitForEnd()
        self.assertEqual(code, 0, server.output.decode())

    async def test_timeoutErrorsInBand(self) -> None:
        """
        A stream still running when the shutdown timeout passes gets an
        in-band error and C{[DONE]}; the process still exits 0.
        """
        server, port = await self.startServer("--shutdown-timeout", "0.3")
        self.upstream.script(Reply(content=["one", "two", "three"], interval=3.0))
        streamer = await self.connect(port)
        streamer.transport.write(_request(STREAM))
        await streamer.waitFor(b'"content":"one"')
        started = time.monotonic()
        os.kill(server.transport.pid, signal.SIGTERM)
        await streamer.waitFor(b"[DONE]")
        self.assertIn(b'data: {"error":', streamer.received)
        self.assertIn(b"shut down", streamer.received)
        code = await server.waitForEnd()
        self.assertEqual(code, 0, server.output.decode())
        self.assertLess(time.monotonic() - started, 5)

    async def test_secondSignal(self) -> None:
        """
        A second signal soon after the first is taken as a copy of it (as
        when a terminal and a parent process both send one): the drain goes
        on and says so.  A signal sent more than L{GRACE} seconds after the
        first exits at once, non-zero, though a stream still runs.
        """
        server, port = await self.startServer("--shutdown-timeout", "30")
        self.upstream.script(Reply(content=["one"], hold=True))
        streamer = await self.connect(port)
        streamer.transport.write(_request(STREAM))
        await self.upstream.waitForRequests(1)
        started = time.monotonic()
        os.kill(server.transport.pid, signal.SIGTERM)
        await _waitForOutput(server, b"draining running agents")
        os.kill(server.transport.pid, signal.SIGTERM)
        await _waitForOutput(server, b"taken as a copy")
        self.assertIsNone(server.status)
        # Keep sending: the first one past the window ends the process.
        while server.status is None:
            os.kill(server.transport.pid, signal.SIGINT)
            await _sleep(0.2)
        code = await server.waitForEnd()
        self.assertEqual(code, 1)
        self.assertGreaterEqual(time.monotonic() - started, GRACE)
        self.assertIn(b"exiting at once", server.output)
        self.assertNotIn(b"[DONE]", streamer.received)
        self.upstream.release()


async def _waitForOutput(server: ServerProcess, marker: bytes, timeout: float = 20.0) -> None:
    """
    Wait until C{server} has written C{marker}; fail with its output after
    C{timeout} seconds.
    """
    for _ in range(int(timeout / 0.02)):
        if marker in server.output:
            return
        await _sleep(0.02)
    raise AssertionError(f"{marker!r} not written; the server said:\n{server.output.decode()}")


class _ThreadedClock(MemoryReactorClock):
    """
    A memory reactor whose L{callFromThread} records the call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fromThread: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        self.fromThread.append((f, args, kwargs))


class StopSignalsTests(SynchronousTestCase):
    """
    L{StopSignals}, on a clock, with real signals sent to this process.
    """

    def setUp(self) -> None:
        self.reactor = _ThreadedClock()
        self.exits: list[None] = []
        self.previous: list[int] = []
        for signum in STOP_SIGNALS:
            self.addCleanup(signal.signal, signum, signal.getsignal(signum))
            signal.signal(signum, lambda number, frame: self.previous.append(number))
        self.signals = StopSignals(self.reactor, exitNow=lambda: self.exits.append(None))
        self.signals.install()

    def send(self, signum: int) -> None:
        # To this (the main) thread, which runs the handler before
        # pthread_kill returns.
        signal.pthread_kill(threading.main_thread().ident or 0, signum)

    def test_firstGoesToTheReactor(self) -> None:
        """
        The first signal goes to the handler that was in place (the
        reactor's, which stops it) and opens the window.
        """
        self.reactor.advance(5)
        self.send(signal.SIGTERM)
        self.assertEqual(self.previous, [signal.SIGTERM])
        self.assertEqual(self.signals.stoppingSince, 5)
        self.assertEqual(self.exits, [])

    def test_copiesWithinTheWindow(self) -> None:
        """
        Signals of either kind within L{GRACE} seconds of the first are
        copies: not passed on, not an exit, only logged; the first after
        the window exits.
        """
        self.send(signal.SIGINT)
        self.send(signal.SIGTERM)
        self.reactor.advance(GRACE - 0.01)
        self.send(signal.SIGINT)
        self.assertEqual(self.previous, [signal.SIGINT])
        self.assertEqual(self.exits, [])
        logged = [args for f, args, kwargs in self.reactor.fromThread]
        self.assertEqual(len(logged), 2)
        self.assertIn("taken as a copy", logged[0][0])
        self.reactor.advance(0.01)
        self.send(signal.SIGTERM)
        self.assertEqual(self.exits, [None])
        self.assertEqual(self.previous, [signal.SIGINT])

    def test_stopWithoutSignal(self) -> None:
        """
        A stop that no signal began (the parent process went away) opens
        the window too: a signal within it is a copy, one after it exits.
        """
        self.reactor.advance(10)
        self.signals.stopping()
        self.reactor.advance(1)
        self.send(signal.SIGTERM)
        self.assertEqual((self.previous, self.exits), ([], []))
        self.reactor.advance(GRACE)
        self.send(signal.SIGTERM)
        self.assertEqual(self.exits, [None])

    def test_noPreviousHandler(self) -> None:
        """
        Without a handler before it, the first signal stops the reactor
        itself (from the reactor's thread).
        """
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signals = StopSignals(self.reactor, exitNow=lambda: self.exits.append(None))
        signals.install()
        self.reactor.running = True
        self.send(signal.SIGTERM)
        [(f, args, kwargs)] = self.reactor.fromThread
        f(*args, **kwargs)
        self.assertTrue(self.reactor.hasStopped)
        # A stop already under way is not an error.
        f(*args, **kwargs)
