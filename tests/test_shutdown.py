"""
Graceful shutdown of the real server process: SIGTERM stops accepting,
C{/health} turns 503, running streams finish (or get an in-band error past
C{--shutdown-timeout}), and the process exits 0; a second signal exits at
once.
"""

from __future__ import annotations

import json
import os
import signal

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from ai_agent.testing import Reply, startFakeUpstream
from tests._harness import writeAgent
from tests._process import (
    ServerProcess,
    childEnvironment,
    command,
    waitUntilListening,
)
from tests.test_http_guard import _Raw, _request

#: What the server logs once a signal started its drain.
DRAINING = b"stopping: no new connections; draining running agents"


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
        server = ServerProcess()
        argv = [
            *command("ai-agent"),
            "--agent",
            "chat.ai",
            "--openai-completions",
            "0",
            *extra,
        ]
        reactor.spawnProcess(server, argv[0], argv, env=childEnvironment(HOME=folder), path=folder)

        def kill() -> Deferred[int] | None:
            if not server.ended.called:
                server.transport.signalProcess("KILL")
                return server.ended
            return None

        self.addCleanup(kill)
        port = await server.waitForPort()
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
        await server.waitForOutput(DRAINING)
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
        os.kill(server.transport.pid, signal.SIGTERM)
        # The next chunk is 3 s away: the error and [DONE] come from the
        # shutdown timeout, and the text says so.
        await streamer.waitFor(b"[DONE]")
        self.assertIn(b'data: {"error":', streamer.received)
        self.assertIn(b"shut down", streamer.received)
        self.assertNotIn(b'"content":"two"', streamer.received)
        code = await server.waitForEnd()
        self.assertEqual(code, 0, server.output.decode())

    async def test_secondSignal(self) -> None:
        """
        A second signal while draining exits at once, non-zero.
        """
        server, port = await self.startServer("--shutdown-timeout", "30")
        self.upstream.script(Reply(content=["one"], hold=True))
        streamer = await self.connect(port)
        streamer.transport.write(_request(STREAM))
        await self.upstream.waitForRequests(1)
        os.kill(server.transport.pid, signal.SIGTERM)
        await server.waitForOutput(DRAINING)
        os.kill(server.transport.pid, signal.SIGTERM)
        # Well before the 30 s shutdown timeout, and non-zero.
        code = await server.waitForEnd(timeout=10)
        self.assertEqual(code, 1)
        self.upstream.release()
