"""
Upstream faults and what they become.

Each fault the fake upstream can show (refused connection, silence before
the headers, 429 with C{Retry-After}, 500/503, a stream cut short, a broken
chunk, a stall mid-stream) is checked twice: through each provider wire type
(the L{ProviderError} it becomes), and through the full headend (the status
or in-band error a client sees, and whether the turn was retried).
"""

from __future__ import annotations

import json
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from ai_agent.errors import ProviderError
from ai_agent.providers import AnthropicProvider, ChatMessage, LLMRequest, OpenAIProvider
from ai_agent.providers._http import HTTPProvider
from ai_agent.sse import SSEParser
from ai_agent.testing import Reply, RunningFakeUpstream, startFakeUpstream, unusedBaseUrl
from tests._harness import SENTINEL_KEY, LiveServer, startServer
from tests.test_provider_openai import RecordingSink

WIRES = ("openai", "anthropic")


def _client(testCase: TestCase) -> HTTPClient:
    """
    A client whose connections close after each response.
    """
    pool = HTTPConnectionPool(reactor, persistent=False)
    testCase.addCleanup(pool.closeCachedConnections)
    return HTTPClient(Agent(reactor, pool=pool))


def _chunk(text: str) -> bytes:
    payload = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _textEvent(text: str) -> bytes:
    """
    The Anthropic events that start a text block with C{text}.
    """
    events = [
        {"type": "message_start", "message": {"usage": {"input_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
    ]
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)


class ProviderFaultTests(TestCase):
    """
    Each fault through both wire types, on a loopback socket.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        self.running: RunningFakeUpstream = await startFakeUpstream(reactor)
        self.addCleanup(self.running.stop)
        self.upstream = self.running.upstream
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, pool=pool))

    def provider(self, wire: str, baseUrl: str | None = None) -> HTTPProvider:
        kind = OpenAIProvider if wire == "openai" else AnthropicProvider
        return kind(
            name=f"up-{wire}",
            baseUrl=baseUrl or self.running.baseUrl,
            http=self.http,
            reactor=reactor,
            apiKey=SENTINEL_KEY,
        )

    async def fails(
        self, wire: str, reply: Reply | None = None, baseUrl: str | None = None, **kwargs: Any
    ) -> tuple[ProviderError, RecordingSink]:
        """
        Call through C{wire} with C{reply} scripted; return the error (whose
        message names the provider and never holds the key) and the sink.
        """
        if reply is not None:
            self.upstream.script(reply)
        sink = RecordingSink()
        request = LLMRequest(model="m", messages=(ChatMessage("user", "hi"),), **kwargs)
        try:
            await self.provider(wire, baseUrl).complete(request, sink)
        except ProviderError as error:
            self.assertIn(f"'up-{wire}'", error.message)
            self.assertNotIn(SENTINEL_KEY, error.message)
            return error, sink
        self.fail(f"{wire}: the call did not fail")

    async def test_refused(self) -> None:
        """
        A refused connection is a retryable 502 C{upstream_unreachable}.
        """
        baseUrl = await unusedBaseUrl(reactor)
        for wire in WIRES:
            error, _ = await self.fails(wire, baseUrl=baseUrl)
            self.assertEqual(
                (error.status, error.code, error.retryable), (502, "upstream_unreachable", True)
            )

    async def test_silentAfterAccepting(self) -> None:
        """
        An upstream that accepts and then says nothing times out after the
        silence timeout: a retryable 504 C{upstream_timeout}.
        """
        for wire in WIRES:
            error, _ = await self.fails(wire, Reply(delay=30), timeout=0.2)
            self.assertEqual(
                (error.status, error.code, error.retryable), (504, "upstream_timeout", True)
            )
            self.assertIn("no response headers", error.message)
        await self.upstream.waitForDisconnects(2)

    async def test_rateLimited(self) -> None:
        """
        A 429 is a retryable 429 carrying the C{Retry-After} seconds.
        """
        for wire in WIRES:
            error, _ = await self.fails(wire, Reply(status=429, headers={"Retry-After": "2"}))
            self.assertEqual((error.status, error.retryable, error.retryAfter), (429, True, 2.0))

    async def test_serverErrors(self) -> None:
        """
        A 500 or 503 is a retryable 502 naming the upstream status.
        """
        for wire in WIRES:
            for status in (500, 503):
                error, _ = await self.fails(wire, Reply(status=status))
                self.assertEqual((error.status, error.retryable), (502, True))
                self.assertEqual(error.upstreamStatus, status)
                self.assertIn(f"HTTP {status}", error.message)

    async def test_streamCut(self) -> None:
        """
        A stream closed before its end is a retryable C{upstream_stream_cut},
        after the content already received went to the sink.
        """
        for wire, cutAfter in (("openai", 2), ("anthropic", 4)):
            error, sink = await self.fails(wire, Reply(content=["a", "b"], cutAfter=cutAfter))
            self.assertEqual((error.code, error.retryable), ("upstream_stream_cut", True))
            self.assertEqual(sink.contents, ["a"])

    async def test_invalidChunk(self) -> None:
        """
        A chunk that is not JSON is a retryable C{upstream_invalid_response}.
        """
        for wire, first in (("openai", _chunk("a")), ("anthropic", _textEvent("a"))):
            error, sink = await self.fails(wire, Reply(rawChunks=[first, b"data: {nope\n\n"]))
            self.assertEqual((error.code, error.retryable), ("upstream_invalid_response", True))
            self.assertIn("{nope", error.message)
            self.assertEqual(sink.contents, ["a"])

    async def test_stallMidStream(self) -> None:
        """
        A stream that stalls mid-way times out after the silence timeout: a
        504 naming the missing data.
        """
        for wire, stallAfter in (("openai", 2), ("anthropic", 4)):
            reply = Reply(content=["a", "b"], stallAfter=stallAfter)
            error, sink = await self.fails(wire, reply, timeout=0.2)
            self.assertEqual((error.status, error.code), (504, "upstream_timeout"))
            self.assertIn("no data for 0.2 s", error.message)
            self.assertEqual(sink.contents, ["a"])
        await self.upstream.waitForDisconnects(2)


def _agent(models: str, **keys: Any) -> str:
    lines = [f"models: {models}"] + [f"{key}: {value}" for key, value in keys.items()]
    return "---\n" + "\n".join(lines) + "\n---\nYou are the test agent.\n"


class ClientMappingTests(TestCase):
    """
    What a client of the headend sees for each fault.
    """

    async def start(self, models: str, **kwargs: Any) -> LiveServer:
        keys = kwargs.pop("keys", {})
        return await startServer(
            self,
            {"agent.ai": _agent(models, **keys)},
            fakeProviders={"claude": "anthropic"},
            **kwargs,
        )

    async def post(
        self, server: LiveServer, stream: bool
    ) -> tuple[int, dict[str, list[str]], bytes]:
        """
        One chat completion: status, lower-case headers, body.
        """
        http = _client(self)
        response = await http.post(
            server.baseUrl + "/chat/completions",
            json={
                "model": "agent",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": stream,
            },
        )
        body = await response.content()
        self.assertNotIn(SENTINEL_KEY.encode(), body)
        headers = {
            name.decode().lower(): [v.decode() for v in values]
            for name, values in response.headers.getAllRawHeaders()
        }
        return response.code, headers, body

    def events(self, body: bytes) -> list[Any]:
        """
        The SSE payloads of a streamed body (C{[DONE]} as a string).
        """
        return [
            event.data if event.data == "[DONE]" else json.loads(event.data)
            for event in SSEParser().feed(body)
        ]

    async def test_fallbackSkipsDeadProvider(self) -> None:
        """
        A provider that refuses connections is skipped for the next model,
        without waiting; the answer streams with a note about the fallback,
        whose reason is neutral (the refused address is the operator's).
        """
        dead = {"type": "openai", "baseUrl": await unusedBaseUrl(reactor)}
        server = await self.start("[dead/m, fake/m]", extraProviders={"dead": dead})
        status, _, body = await self.post(server, stream=True)
        self.assertEqual(status, 200)
        events = self.events(body)
        deltas = [e["choices"][0]["delta"] for e in events if isinstance(e, dict) and e["choices"]]
        notes = "".join(d.get("reasoning_content", "") for d in deltas)
        self.assertEqual(notes, "dead/m failed (unreachable); retrying\n")
        self.assertEqual("".join(d.get("content", "") for d in deltas), "echo: hi")
        self.assertEqual([r.body["model"] for r in server.upstream.requests], ["m"])

    async def test_allAttemptsFailed(self) -> None:
        """
        When every attempt fails the client gets a 502 naming the last
        provider, model and upstream status, streaming or not.
        """
        server = await self.start("[fake/a, claude/b]", keys={"maxRetries": 2})
        for stream in (False, True):
            server.upstream.script(Reply(status=500), Reply(status=503))
            status, headers, body = await self.post(server, stream)
            self.assertEqual(status, 502)
            error = json.loads(body)["error"]
            self.assertIn("provider 'claude'", error["message"])
            self.assertIn("'b'", error["message"])
            self.assertIn("HTTP 503", error["message"])
            self.assertNotIn("retry-after", headers)
        self.assertEqual(len(server.upstream.requests), 4)

    async def test_everyProviderRateLimited(self) -> None:
        """
        When every attempt was rate-limited the client gets a 429 with the
        soonest C{Retry-After}.
        """
        server = await self.start("[fake/a, claude/b]", keys={"maxRetries": 2})
        for stream in (False, True):
            server.upstream.script(
                Reply(status=429, headers={"Retry-After": "30"}),
                Reply(status=429, headers={"Retry-After": "3"}),
            )
            status, headers, body = await self.post(server, stream)
            self.assertEqual(status, 429)
            self.assertEqual(headers["retry-after"], ["3"])
            self.assertEqual(json.loads(body)["error"]["type"], "rate_limit_error")

    async def test_rejectedKeyNotRetried(self) -> None:
        """
        A rejected key fails at once with a 502 naming the provider; the
        next model is not tried.
        """
        server = await self.start("[claude/a, fake/b]", keys={"maxRetries": 3})
        server.upstream.script(
            Reply(
                status=401,
                errorBody={"type": "error", "error": {"type": "authentication_error"}},
            )
        )
        status, _, body = await self.post(server, stream=False)
        self.assertEqual(status, 502)
        self.assertIn(
            "provider 'claude' rejected the request", json.loads(body)["error"]["message"]
        )
        self.assertEqual(len(server.upstream.requests), 1)

    async def test_stalledUpstream(self) -> None:
        """
        An upstream silent past C{llmTimeout} gives the client a 504,
        streaming or not.
        """
        server = await self.start("fake/a", keys={"maxRetries": 1, "llmTimeout": 200})
        for stream in (False, True):
            server.upstream.script(Reply(delay=30))
            status, _, body = await self.post(server, stream)
            self.assertEqual(status, 504)
            self.assertEqual(json.loads(body)["error"]["type"], "timeout_error")
        await server.upstream.waitForDisconnects(2)

    async def assertInBand(self, server: LiveServer, code: str) -> None:
        """
        A streamed request gets C{a}, then an in-band error with C{code} and
        C{[DONE]}; the second scripted reply is never used.
        """
        status, _, body = await self.post(server, stream=True)
        self.assertEqual(status, 200)
        events = self.events(body)
        self.assertEqual(events[-1], "[DONE]")
        self.assertEqual(events[-2]["error"]["code"], code)
        contents = [
            e["choices"][0]["delta"].get("content")
            for e in events[:-2]
            if isinstance(e, dict) and e.get("choices")
        ]
        self.assertEqual("".join(c for c in contents if c), "a")
        self.assertEqual(len(server.upstream.requests), 1)
        self.assertEqual(server.upstream.scripted, 1)

    async def test_streamCutInBand(self) -> None:
        """
        A stream cut after content reached the client is an in-band error,
        and the turn is not retried.
        """
        server = await self.start("[claude/a, fake/b]", keys={"maxRetries": 2})
        server.upstream.script(Reply(content=["a", "b"], cutAfter=4), Reply(content="never"))
        await self.assertInBand(server, "upstream_stream_cut")

    async def test_brokenChunkInBand(self) -> None:
        """
        A broken chunk after content reached the client is an in-band error,
        and the turn is not retried.
        """
        server = await self.start("[fake/a, fake/b]", keys={"maxRetries": 2})
        server.upstream.script(
            Reply(rawChunks=[_chunk("a"), b"data: {nope\n\n"]), Reply(content="never")
        )
        await self.assertInBand(server, "upstream_invalid_response")

    async def test_stallMidStreamInBand(self) -> None:
        """
        A stall after content reached the client is an in-band timeout
        error, and the turn is not retried.
        """
        server = await self.start("[fake/a, fake/b]", keys={"maxRetries": 2, "llmTimeout": 200})
        server.upstream.script(Reply(content=["a", "b"], stallAfter=2), Reply(content="never"))
        await self.assertInBand(server, "upstream_timeout")

    async def test_anthropicAnswer(self) -> None:
        """
        An agent on an Anthropic provider answers through the headend: the
        thinking as reasoning, the text as content, usage counted.
        """
        server = await self.start("claude/claude-x", keys={"reasoning": "low"})
        server.upstream.script(Reply(content="Hello there", reasoning="hm", usage=(7, 2)))
        status, _, body = await self.post(server, stream=False)
        self.assertEqual(status, 200)
        answer = json.loads(body)
        message = answer["choices"][0]["message"]
        self.assertEqual((message["content"], message["reasoning_content"]), ("Hello there", "hm"))
        self.assertEqual(answer["usage"]["total_tokens"], 9)
        sent = server.upstream.requests[0]
        self.assertEqual(sent.path, "/v1/messages")
        self.assertEqual(sent.body["system"], "You are the test agent.")
        self.assertEqual(sent.body["thinking"], {"type": "enabled", "budget_tokens": 2048})

    async def test_pricingReachesRunner(self) -> None:
        """
        The configuration's C{pricing} table reaches the runner, for the
        cost in each run's log line.
        """
        pricing = {"fake/m": {"prompt": 1, "completion": 2}}
        server = await self.start("fake/m", extraConfig={"pricing": pricing})
        self.assertEqual(server.runtime.runner.pricing["fake/m"].completion, 2.0)
