"""
The sentinel-key search: the real C{ai-agent} server, run as a subprocess
with secret-looking sentinels as its provider keys and headers (from an env
file), as its client API keys (from the command line, a key file and the
environment) and as the keys clients present, is driven through successes
and every failure we can provoke; no sentinel may appear in its output or in
anything a client receives.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from ai_agent.testing import FakeUpstream, Reply, startFakeUpstream
from tests._process import childEnvironment, command

#: The banner's address line (ai-agent logs no "starting on" line of Twisted's).
_LISTENING = re.compile(rb"API: http://127\.0\.0\.1:(\d+)/v1")

_AGENT = """\
---
description: {description}
models: {models}
maxRetries: 1
---
You are a test agent.
"""


def _sentinel(kind: str) -> str:
    """
    A secret-looking value whose random part is searched for too.  (No
    dictionary words: the key scrubber also removes long fragments of a
    key, which would hide words in error messages.)
    """
    return f"sk-sntl-{kind}-{secrets.token_hex(10)}"


def _closedPort() -> int:
    """
    A loopback port nothing listens on (bound, then released).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _ServerProcess(ProcessProtocol):
    """
    The server subprocess: collects its output and reports its port.
    """

    def __init__(self) -> None:
        self.output = bytearray()
        self.listening: Deferred[int] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self._got(data)

    def errReceived(self, data: bytes) -> None:
        self._got(data)

    def _got(self, data: bytes) -> None:
        self.output += data
        match = _LISTENING.search(self.output)
        if match is not None and not self.listening.called:
            self.listening.callback(int(match.group(1)))

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        if not self.listening.called:
            self.listening.errback(
                RuntimeError("the server exited:\n" + self.output.decode("utf-8", "replace"))
            )
        self.ended.callback(None)


class _Session:
    """
    One server subprocess in front of an in-process fake upstream, and a
    client that records everything it receives.
    """

    def __init__(self, testCase: TestCase) -> None:
        self.testCase = testCase
        self.providerKey = _sentinel("prov")
        self.headerValue = _sentinel("hdr")
        self.deadKey = _sentinel("dead")
        self.argvKey = _sentinel("argv")
        self.fileKey = _sentinel("file")
        self.clientKey = _sentinel("client")
        self.wrongKey = _sentinel("wrong")
        self.sentinels = [
            self.providerKey,
            self.headerValue,
            self.deadKey,
            self.argvKey,
            self.fileKey,
            self.clientKey,
            self.wrongKey,
        ]
        self.received: list[tuple[str, int, bytes]] = []
        self.upstream: FakeUpstream
        self.base = ""
        self._process = _ServerProcess()
        self._transport: IProcessTransport | None = None

    async def start(self) -> None:
        """
        Start the fake upstream, write the configuration, start the server.
        """
        testCase = self.testCase
        running = await startFakeUpstream(reactor)
        testCase.addCleanup(running.stop)
        self.upstream = running.upstream
        directory = os.path.abspath(testCase.mktemp())
        os.makedirs(os.path.join(directory, "home"))
        with open(os.path.join(directory, ".ai-agent.env"), "w", encoding="utf-8") as f:
            f.write(
                f"FAKE_KEY={self.providerKey}\nFAKE_HEADER={self.headerValue}\n"
                f"DEAD_KEY={self.deadKey}\n"
            )
        config = {
            "providers": {
                "fake": {
                    "type": "openai",
                    "baseUrl": running.baseUrl,
                    "apiKey": "${FAKE_KEY}",
                    "headers": {"X-Team-Secret": "${FAKE_HEADER}"},
                },
                "dead": {
                    "type": "openai",
                    "baseUrl": f"http://127.0.0.1:{_closedPort()}/v1",
                    "apiKey": "${DEAD_KEY}",
                },
                "unset": {
                    "type": "openai",
                    "baseUrl": running.baseUrl,
                    "apiKey": "${SENTINEL_TEST_UNSET_KEY}",
                },
            }
        }
        with open(os.path.join(directory, ".ai-agent.json"), "w", encoding="utf-8") as f:
            json.dump(config, f)
        with open(os.path.join(directory, "keys.txt"), "w", encoding="utf-8") as f:
            f.write(f"# client keys\n{self.fileKey}\n")
        agents = {"agent": "fake/model-a", "dead": "dead/model-b", "unset": "unset/model-c"}
        argv = [
            *command("ai-agent"),
            "--verbose",
            "--openai-completions",
            "tcp:0:interface=127.0.0.1",
            "--api-key",
            self.argvKey,
            "--api-key-file",
            "keys.txt",
        ]
        for name, models in agents.items():
            with open(os.path.join(directory, f"{name}.ai"), "w", encoding="utf-8") as f:
                f.write(_AGENT.format(description=name, models=models))
            argv += ["--agent", f"{name}.ai"]
        env = childEnvironment(
            HOME=os.path.join(directory, "home"), AI_AGENT_API_KEYS=self.clientKey
        )
        self._transport = reactor.spawnProcess(
            self._process, argv[0], argv, env=env, path=directory
        )
        testCase.addCleanup(self._kill)
        port = await self._process.listening
        self.base = f"http://127.0.0.1:{port}"
        pool = HTTPConnectionPool(reactor, persistent=False)
        testCase.addCleanup(pool.closeCachedConnections)
        self._client = HTTPClient(Agent(reactor, pool=pool))

    def _kill(self) -> Deferred[None] | None:
        if self._process.running and self._transport is not None:
            self._transport.signalProcess("KILL")
            return self._process.ended
        return None

    async def stop(self) -> bytes:
        """
        Stop the server with SIGTERM; return all it wrote.
        """
        assert self._transport is not None
        self._transport.signalProcess("TERM")
        await self._process.ended
        return bytes(self._process.output)

    async def call(
        self, method: str, path: str, body: bytes | None = None, key: str | None = None
    ) -> int:
        """
        Make a request with C{key} (the client key by default) as both
        C{Authorization: Bearer} and C{x-api-key}; record the answer.
        """
        key = self.clientKey if key is None else key
        headers = {"Authorization": [f"Bearer {key}"], "x-api-key": [key]}
        if body is not None:
            headers["Content-Type"] = ["application/json"]
        response = await self._client.request(method, self.base + path, data=body, headers=headers)
        data = await treq.content(response)
        rawHeaders = b"\n".join(
            name + b": " + b", ".join(values)
            for name, values in response.headers.getAllRawHeaders()
        )
        self.received.append((f"{method} {path}", response.code, rawHeaders + b"\n\n" + data))
        return int(response.code)

    async def chat(self, model: str = "agent", stream: bool = False, **fields: Any) -> int:
        """
        A chat completion with one user message.
        """
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        return await self.completions(json.dumps({**body, **fields}).encode())

    async def completions(self, body: bytes, key: str | None = None) -> int:
        """
        Post C{body} to the chat completions route.
        """
        return await self.call("POST", "/v1/chat/completions", body, key)

    def assertNoLeak(self, output: bytes) -> None:
        """
        No sentinel, nor its random part, is in C{output} or in anything
        received.
        """
        for sentinel in self.sentinels:
            for needle in (sentinel, sentinel.rsplit("-", 1)[1]):
                self.testCase.assertNotIn(needle.encode(), output, f"{needle} in the output")
                for what, status, data in self.received:
                    self.testCase.assertNotIn(needle.encode(), data, f"{needle} in {what} {status}")


class SentinelTests(TestCase):
    """
    Secrets never leak into logs or responses.
    """

    timeout = 120

    async def test_noSentinelAnywhere(self) -> None:
        """
        Provider keys and header values (read from C{.ai-agent.env}) and
        client keys (from C{--api-key}, C{--api-key-file} and
        C{AI_AGENT_API_KEYS}, and a wrong one) appear in none of the
        server's output and none of the responses (bodies and headers),
        across successes, upstream failures that echo the key, garbage from
        the upstream, a refused connection, an unset key variable, bad
        requests and unknown models, streamed and not; the client's key is
        never forwarded upstream.
        """
        session = _Session(self)
        await session.start()
        fake = session.upstream
        call, chat = session.call, session.chat

        # Successes, with each configured client key.
        self.assertEqual(await call("GET", "/health"), 200)
        self.assertEqual(await call("GET", "/v1/models"), 200)
        self.assertEqual(await call("GET", "/v1/models/agent", key=session.argvKey), 200)
        self.assertEqual(await call("GET", "/v1/models/agent", key=session.fileKey), 200)
        self.assertEqual(await chat(), 200)
        self.assertEqual(await chat(stream=True), 200)

        # The upstream refuses, echoing the key in its error text.
        echoed = f"bad key {session.providerKey}; masked {session.providerKey[:6]}***"
        for stream in (False, True):
            fake.script(Reply(status=401, errorBody={"error": {"message": echoed}}))
            self.assertGreaterEqual(await chat(stream=stream), 400)
            fake.script(Reply(status=500, errorBody=f"internal error; key={session.providerKey}"))
            self.assertGreaterEqual(await chat(stream=stream), 400)
            fake.script(
                Reply(
                    status=429,
                    errorBody={"error": {"message": echoed}},
                    headers={"Retry-After": "1"},
                )
            )
            self.assertGreaterEqual(await chat(stream=stream), 400)
        # The upstream answers garbage holding the key, or cuts a stream.
        fake.script(Reply(rawChunks=[f"not json {session.providerKey}".encode()]))
        await chat()
        fake.script(Reply(rawChunks=[f"data: {{{session.providerKey}\n\n".encode()]))
        await chat(stream=True)
        fake.script(Reply(content=["a", "b", "c"], cutAfter=2))
        await chat(stream=True)
        self.assertEqual(fake.scripted, 0)

        # A provider that refuses connections, and one whose key is unset.
        for model in ("dead", "unset"):
            for stream in (False, True):
                self.assertGreaterEqual(await chat(model, stream), 500)

        # Client mistakes, and a wrong key.
        self.assertEqual(await call("GET", "/v1/models/missing"), 404)
        self.assertEqual(await chat("missing"), 404)
        self.assertEqual(await session.completions(b"{nope"), 400)
        self.assertEqual(await chat(temperature="hot"), 400)
        self.assertEqual(await session.completions(b"[" * 10_000), 400)
        self.assertEqual(await call("GET", "/v1/chat/completions"), 405)
        self.assertEqual(await call("GET", "/nowhere"), 404)
        self.assertEqual(await call("GET", "/v1/models", key=session.wrongKey), 401)
        self.assertEqual(await session.completions(b"{}", key=session.wrongKey), 401)

        output = await session.stop()

        # The sentinels were really in use ...
        chats = [r for r in fake.requests if r.path.endswith("/chat/completions")]
        self.assertTrue(chats)
        for recorded in chats:
            self.assertEqual(recorded.headers["authorization"], f"Bearer {session.providerKey}")
            self.assertEqual(recorded.headers["x-team-secret"], session.headerValue)
            # ... and no client key was passed on.
            for key in (session.clientKey, session.argvKey, session.fileKey):
                self.assertNotIn(key, json.dumps(dict(recorded.headers)))
        self.assertIn(b"API: http://127.0.0.1:", output)
        session.assertNoLeak(output)

    async def test_headerValueEchoedByUpstream(self) -> None:
        """
        A configured provider header's value (which may be a key, such as
        C{api-key} or C{x-api-key}) echoed in an upstream's error text is
        scrubbed like the API key, from the output and from responses.
        """
        session = _Session(self)
        await session.start()
        echoed = f"bad credentials: {session.headerValue}"
        for stream in (False, True):
            session.upstream.script(Reply(status=401, errorBody={"error": {"message": echoed}}))
            self.assertEqual(await session.chat(stream=stream), 502)
        session.assertNoLeak(await session.stop())
