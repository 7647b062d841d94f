"""
Tests for L{ai_agent.providers.anthropic}: the Messages API provider.

Unit tests drive the provider through C{treq}'s in-memory agent and a
L{Clock}; integration tests run it against the real
L{ai_agent.testing.FakeUpstream} in its Anthropic mode on a loopback socket.
"""

from __future__ import annotations

import json
from typing import Any

from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Request

from ai_agent.errors import ProviderError
from ai_agent.events import FinishReason, Usage
from ai_agent.providers import (
    AnthropicProvider,
    ChatMessage,
    LLMRequest,
    LLMResponse,
    ToolCall,
    ToolSpec,
)
from ai_agent.providers.anthropic import messagesURL, translateMessages
from ai_agent.request import OutputFormat
from ai_agent.testing import Reply, RunningFakeUpstream, startFakeUpstream, unusedBaseUrl
from tests.test_provider_openai import PendingResource, RecordingSink

SENTINEL_KEY = "sk-ant-sentinel-0123456789abcdefXYZ"


def request(**kwargs: Any) -> LLMRequest:
    """
    A one-message request for model C{claude-x}.
    """
    kwargs.setdefault("model", "claude-x")
    kwargs.setdefault("messages", (ChatMessage("user", "hello there"),))
    return LLMRequest(**kwargs)


def event(payload: dict[str, Any]) -> bytes:
    """
    One Anthropic stream event.
    """
    return (
        b"event: " + payload["type"].encode() + b"\ndata: " + json.dumps(payload).encode() + b"\n\n"
    )


def start(index: int, block: dict[str, Any]) -> bytes:
    return event({"type": "content_block_start", "index": index, "content_block": block})


def delta(index: int, value: dict[str, Any]) -> bytes:
    return event({"type": "content_block_delta", "index": index, "delta": value})


MESSAGE_START = event(
    {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "role": "assistant",
            "content": [],
            "usage": {
                "input_tokens": 10,
                "cache_creation_input_tokens": 5,
                "cache_read_input_tokens": 20,
                "output_tokens": 1,
            },
        },
    }
)


def messageDelta(stopReason: str, outputTokens: int = 7) -> bytes:
    return event(
        {
            "type": "message_delta",
            "delta": {"stop_reason": stopReason, "stop_sequence": None},
            "usage": {"output_tokens": outputTokens},
        }
    )


MESSAGE_STOP = event({"type": "message_stop"})


class TranslationTests(SynchronousTestCase):
    """
    Internal (Chat Completions) messages become Anthropic's C{system} and
    C{messages}.
    """

    def test_systemJoined(self) -> None:
        """
        Every system and developer message joins the C{system} text, in
        order; none stays in C{messages}.
        """
        system, messages = translateMessages(
            [
                ChatMessage("system", "You are A."),
                ChatMessage("user", "hi"),
                ChatMessage("developer", "Be brief."),
            ]
        )
        self.assertEqual(system, "You are A.\n\nBe brief.")
        self.assertEqual(messages, [{"role": "user", "content": [{"type": "text", "text": "hi"}]}])

    def test_toolRoundTrip(self) -> None:
        """
        Assistant tool calls become C{tool_use} blocks (arguments parsed);
        consecutive C{tool} messages become one user message of
        C{tool_result} blocks, and a user text after them joins it, results
        first.
        """
        _, messages = translateMessages(
            [
                ChatMessage("user", "add"),
                ChatMessage(
                    "assistant",
                    "Let me add.",
                    toolCalls=(
                        ToolCall("t1", "calc__add", '{"a": 1}'),
                        ToolCall("t2", "calc__mul", "not json"),
                    ),
                ),
                ChatMessage("tool", "2", toolCallId="t1"),
                ChatMessage("tool", "", toolCallId="t2"),
                ChatMessage("user", "and?"),
            ]
        )
        self.assertEqual(
            messages,
            [
                {"role": "user", "content": [{"type": "text", "text": "add"}]},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Let me add."},
                        {"type": "tool_use", "id": "t1", "name": "calc__add", "input": {"a": 1}},
                        {"type": "tool_use", "id": "t2", "name": "calc__mul", "input": {}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": "2"},
                        {"type": "tool_result", "tool_use_id": "t2"},
                        {"type": "text", "text": "and?"},
                    ],
                },
            ],
        )

    def test_sameRoleMerged(self) -> None:
        """
        Consecutive messages of one role merge into one; empty messages are
        dropped.
        """
        _, messages = translateMessages(
            [
                ChatMessage("user", "one"),
                ChatMessage("user", "two"),
                ChatMessage("assistant", ""),
                ChatMessage("assistant", "three"),
                ChatMessage("assistant", "four"),
            ]
        )
        self.assertEqual(
            [(m["role"], [b["text"] for b in m["content"]]) for m in messages],
            [("user", ["one", "two"]), ("assistant", ["three", "four"])],
        )

    def test_messagesURL(self) -> None:
        """
        The Messages URL is right with or without C{/v1} in the base URL.
        """
        self.assertEqual(
            messagesURL("https://api.anthropic.com"), "https://api.anthropic.com/v1/messages"
        )
        self.assertEqual(messagesURL("http://h:1/v1/"), "http://h:1/v1/messages")


class InMemoryTests(SynchronousTestCase):
    """
    The provider over an in-memory HTTP connection and a fake clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.resource = PendingResource()
        self.agent = StubTreq(self.resource)
        self.provider = AnthropicProvider(
            name="claude",
            baseUrl="https://upstream.invalid",
            http=self.agent,
            reactor=self.clock,
            apiKey=SENTINEL_KEY,
            headers={"anthropic-beta": "feature-x"},
        )
        self.sink = RecordingSink()

    def call(self, **kwargs: Any) -> Deferred[LLMResponse]:
        d = self.provider.complete(request(**kwargs), self.sink)
        self.agent.flush()
        return d

    def body(self, position: int = -1) -> dict[str, Any]:
        return json.loads(self.resource.requests[position].content.read())

    def respond(self, status: int = 200, contentType: bytes = b"text/event-stream") -> Request:
        upstream = self.resource.requests[-1]
        upstream.setResponseCode(status)
        upstream.setHeader(b"content-type", contentType)
        upstream.write(b"")
        self.agent.flush()
        return upstream

    def write(self, upstream: Request, *chunks: bytes, finish: bool = False) -> None:
        for data in chunks:
            upstream.write(data)
        if finish:
            upstream.finish()
        self.agent.flush()

    def test_payload(self) -> None:
        """
        The body carries the model, C{max_tokens}, the system text, the
        messages, the tools (with C{input_schema}), sampling and stop
        sequences; the URL is C{/v1/messages}.
        """
        tool = ToolSpec("calc__add", "Add", {"type": "object"})
        self.call(
            messages=(ChatMessage("system", "Be A."), ChatMessage("user", "hi")),
            tools=(tool,),
            temperature=0.5,
            topP=0.9,
            maxTokens=100,
            stop=("END",),
        )
        self.assertEqual(
            self.body(),
            {
                "model": "claude-x",
                "max_tokens": 100,
                "system": "Be A.",
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                "tools": [
                    {"name": "calc__add", "description": "Add", "input_schema": {"type": "object"}}
                ],
                "temperature": 0.5,
                "top_p": 0.9,
                "stop_sequences": ["END"],
                "stream": True,
            },
        )
        self.assertEqual(self.resource.requests[0].path, b"/v1/messages")

    def test_defaultMaxTokens(self) -> None:
        """
        Without C{maxTokens}, C{max_tokens} is 4096 (Anthropic requires it);
        no C{system} is sent when there is none.
        """
        self.call(stream=False)
        body = self.body()
        self.assertEqual(body["max_tokens"], 4096)
        self.assertNotIn("system", body)
        self.assertEqual(body["stream"], False)

    def test_thinkingBudget(self) -> None:
        """
        A reasoning effort becomes a thinking budget; C{max_tokens} is
        raised above it when needed; temperature and top_p are left out, as
        Anthropic refuses them while thinking; C{none} turns thinking off.
        """
        for effort, budget in [("minimal", 1024), ("low", 2048), ("medium", 8192)]:
            self.call(reasoning=effort, maxTokens=50000, temperature=0.3, topP=0.5)
            body = self.body()
            self.assertEqual(body["thinking"], {"type": "enabled", "budget_tokens": budget})
            self.assertEqual(body["max_tokens"], 50000)
            self.assertNotIn("temperature", body)
            self.assertNotIn("top_p", body)
        self.call(reasoning="high")
        self.assertEqual(self.body()["max_tokens"], 16384 + 4096)
        self.call(reasoning="none", temperature=0.3)
        body = self.body()
        self.assertNotIn("thinking", body)
        self.assertEqual(body["temperature"], 0.3)

    def test_headers(self) -> None:
        """
        The key goes in C{x-api-key} (never as a bearer token), with
        C{anthropic-version} and the configured headers.
        """
        self.call()
        headers = self.resource.requests[0].requestHeaders
        self.assertEqual(headers.getRawHeaders("x-api-key"), [SENTINEL_KEY])
        self.assertEqual(headers.getRawHeaders("anthropic-version"), ["2023-06-01"])
        self.assertEqual(headers.getRawHeaders("anthropic-beta"), ["feature-x"])
        self.assertIsNone(headers.getRawHeaders("authorization"))

    def test_streamAssembled(self) -> None:
        """
        Thinking and text deltas reach the sink as they arrive; pings are
        ignored; the response has the text, the reasoning, the mapped stop
        reason, and usage with cache tokens counted as prompt tokens and
        reported apart as cache reads and writes.
        """
        d = self.call()
        upstream = self.respond()
        self.write(
            upstream,
            MESSAGE_START,
            event({"type": "ping"}),
            start(0, {"type": "thinking", "thinking": ""}),
            delta(0, {"type": "thinking_delta", "thinking": "hmm"}),
            delta(0, {"type": "signature_delta", "signature": "sig"}),
            event({"type": "content_block_stop", "index": 0}),
            start(1, {"type": "text", "text": ""}),
            delta(1, {"type": "text_delta", "text": "Hel"}),
        )
        self.assertEqual((self.sink.reasonings, self.sink.contents), (["hmm"], ["Hel"]))
        self.assertNoResult(d)
        self.write(
            upstream,
            delta(1, {"type": "text_delta", "text": "lo"}),
            event({"type": "content_block_stop", "index": 1}),
            messageDelta("end_turn"),
            MESSAGE_STOP,
            finish=True,
        )
        self.assertEqual(
            self.successResultOf(d),
            LLMResponse(
                content="Hello",
                reasoning="hmm",
                finishReason=FinishReason.END,
                usage=Usage(35, 7, cacheReadTokens=20, cacheWriteTokens=5),
            ),
        )

    def test_toolUseStreamed(self) -> None:
        """
        C{tool_use} blocks become tool calls, their arguments assembled from
        C{input_json_delta} pieces; C{tool_use} maps to C{tool_calls}.
        """
        d = self.call()
        upstream = self.respond()
        self.write(
            upstream,
            MESSAGE_START,
            start(0, {"type": "tool_use", "id": "toolu_a", "name": "f", "input": {}}),
            delta(0, {"type": "input_json_delta", "partial_json": '{"x":'}),
            delta(0, {"type": "input_json_delta", "partial_json": " 1}"}),
            start(1, {"type": "tool_use", "id": "toolu_b", "name": "g", "input": {}}),
            messageDelta("tool_use"),
            MESSAGE_STOP,
            finish=True,
        )
        response = self.successResultOf(d)
        self.assertEqual(
            response.toolCalls,
            (ToolCall("toolu_a", "f", '{"x": 1}'), ToolCall("toolu_b", "g", "{}")),
        )
        self.assertEqual(response.finishReason, "tool_calls")

    def test_stopReasons(self) -> None:
        """
        Anthropic's stop reasons map to neutral ones (C{end_turn} to
        C{end}, C{max_tokens} stays, C{stop_sequence} stays, C{tool_use} to
        C{tool_calls}, C{refusal} to C{content_filter}); an unknown reason
        passes through.
        """
        for reason, expected in [
            ("end_turn", FinishReason.END),
            ("max_tokens", FinishReason.MAX_TOKENS),
            ("stop_sequence", FinishReason.STOP_SEQUENCE),
            ("tool_use", FinishReason.TOOL_CALLS),
            ("refusal", FinishReason.CONTENT_FILTER),
            ("brand_new", "brand_new"),
        ]:
            d = self.call()
            upstream = self.respond()
            self.write(upstream, MESSAGE_START, messageDelta(reason), MESSAGE_STOP, finish=True)
            self.assertEqual(self.successResultOf(d).finishReason, expected)

    def test_thinkingBlocksSentBack(self) -> None:
        """
        With thinking on, the signed thinking blocks of an answer that called
        tools go back at the start of that assistant message on the next
        call; when they are unknown, the next call is made without thinking.
        """
        d = self.call(reasoning="low")
        upstream = self.respond()
        self.write(
            upstream,
            MESSAGE_START,
            start(0, {"type": "thinking", "thinking": ""}),
            delta(0, {"type": "thinking_delta", "thinking": "plan"}),
            delta(0, {"type": "signature_delta", "signature": "SIG"}),
            start(1, {"type": "redacted_thinking", "data": "opaque"}),
            start(2, {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}),
            messageDelta("tool_use"),
            MESSAGE_STOP,
            finish=True,
        )
        calls = self.successResultOf(d).toolCalls
        followUp = (
            ChatMessage("user", "go"),
            ChatMessage("assistant", "", toolCalls=calls),
            ChatMessage("tool", "done", toolCallId="toolu_1"),
        )
        self.call(reasoning="low", messages=followUp)
        body = self.body()
        self.assertEqual(body["thinking"]["type"], "enabled")
        self.assertEqual(
            body["messages"][1]["content"][:2],
            [
                {"type": "thinking", "thinking": "plan", "signature": "SIG"},
                {"type": "redacted_thinking", "data": "opaque"},
            ],
        )
        foreign = (
            ChatMessage("user", "go"),
            ChatMessage("assistant", "", toolCalls=(ToolCall("call_9", "f", "{}"),)),
            ChatMessage("tool", "done", toolCallId="call_9"),
        )
        self.call(reasoning="low", messages=foreign)
        body = self.body()
        self.assertNotIn("thinking", body)
        self.assertEqual(body["messages"][1]["content"][0]["type"], "tool_use")

    def test_notStreaming(self) -> None:
        """
        A JSON body is parsed: text, thinking, tool calls, stop reason and
        usage; the sink is not fed.
        """
        d = self.call(stream=False)
        upstream = self.respond(200, b"application/json")
        body = {
            "type": "message",
            "content": [
                {"type": "thinking", "thinking": "think", "signature": "s"},
                {"type": "text", "text": "The answer"},
                {"type": "tool_use", "id": "toolu_x", "name": "f", "input": {"a": 1}},
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 3, "output_tokens": 4},
        }
        self.write(upstream, json.dumps(body).encode(), finish=True)
        self.assertEqual(
            self.successResultOf(d),
            LLMResponse(
                content="The answer",
                reasoning="think",
                toolCalls=(ToolCall("toolu_x", "f", '{"a": 1}'),),
                finishReason="tool_calls",
                usage=Usage(3, 4),
            ),
        )
        self.assertEqual((self.sink.contents, self.sink.reasonings), ([], []))

    def test_errorEvent(self) -> None:
        """
        An C{error} event mid-stream (Anthropic's C{overloaded_error}) fails
        the call retryably with the upstream's message and closes the
        connection (on the next turn of the reactor).
        """
        d = self.call()
        upstream = self.respond()
        self.write(
            upstream,
            MESSAGE_START,
            event(
                {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            ),
        )
        self.clock.advance(0)
        self.agent.flush()
        error = self.failureResultOf(d, ProviderError).value
        self.assertIn("Overloaded", error.message)
        self.assertIn("'claude'", error.message)
        self.assertTrue(error.retryable)
        self.assertEqual(self.resource.lost, [upstream])

    def test_invalidEvent(self) -> None:
        """
        A delta for a block that never started is an invalid response.
        """
        d = self.call()
        upstream = self.respond()
        self.write(upstream, MESSAGE_START, delta(3, {"type": "text_delta", "text": "x"}))
        self.clock.advance(0)
        self.agent.flush()
        error = self.failureResultOf(d, ProviderError).value
        self.assertEqual(error.code, "upstream_invalid_response")

    def test_overloadedStatus(self) -> None:
        """
        HTTP 529 (Anthropic's overloaded) is a retryable 502 naming the
        upstream's message.
        """
        d = self.call()
        upstream = self.respond(529, b"application/json")
        self.write(
            upstream,
            b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}',
            finish=True,
        )
        error = self.failureResultOf(d, ProviderError).value
        self.assertEqual((error.status, error.retryable, error.upstreamStatus), (502, True, 529))
        self.assertIn("HTTP 529: Overloaded", error.message)

    def test_silenceTimeout(self) -> None:
        """
        The silence timeout covers the time before the headers and between
        events: a retryable 504 that closes the connection.
        """
        d = self.call(timeout=10)
        self.clock.advance(9)
        upstream = self.respond()
        self.write(upstream, MESSAGE_START)
        self.clock.advance(9)
        self.write(upstream, event({"type": "ping"}))
        self.assertNoResult(d)
        self.clock.advance(10)
        self.agent.flush()
        error = self.failureResultOf(d, ProviderError).value
        self.assertEqual((error.status, error.code), (504, "upstream_timeout"))
        self.assertEqual(self.resource.lost, [upstream])

    def test_cancel(self) -> None:
        """
        Cancelling while streaming fails with L{CancelledError} and closes
        the connection.
        """
        d = self.call()
        upstream = self.respond()
        self.write(upstream, MESSAGE_START)
        d.cancel()
        self.agent.flush()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.resource.lost, [upstream])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class UpstreamTests(TestCase):
    """
    The provider against the fake upstream's Anthropic mode on a loopback
    socket.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        from twisted.internet import reactor

        self.reactor = reactor
        self.running = await startFakeUpstream(reactor)
        self.addCleanup(self.running.stop)
        self.upstream = self.running.upstream
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 8
        self.addCleanup(pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, pool=pool))
        self.provider = self.makeProvider(self.running)
        self.sink = RecordingSink()

    def makeProvider(self, running: RunningFakeUpstream | str) -> AnthropicProvider:
        baseUrl = running if isinstance(running, str) else running.baseUrl
        return AnthropicProvider(
            name="claude",
            baseUrl=baseUrl,
            http=self.http,
            reactor=self.reactor,
            apiKey=SENTINEL_KEY,
        )

    def call(self, **kwargs: Any) -> Deferred[LLMResponse]:
        return self.provider.complete(request(**kwargs), self.sink)

    async def failure(self, d: Deferred[LLMResponse]) -> ProviderError:
        """
        The L{ProviderError} C{d} fails with; the key is not in its message.
        """
        try:
            await d
        except ProviderError as e:
            self.assertNotIn(SENTINEL_KEY, e.message)
            self.assertIn("'claude'", e.message)
            return e
        self.fail("the call did not fail")

    async def test_streaming(self) -> None:
        """
        A streamed call sends the key and version headers, feeds the sink
        piece by piece (thinking as reasoning), and returns the answer.
        """
        self.upstream.script(Reply(content=["Hello", " world"], reasoning="ok", usage=(9, 2)))
        response = await self.call(reasoning="low")
        self.assertEqual(self.sink.contents, ["Hello", " world"])
        self.assertEqual(self.sink.reasonings, ["ok"])
        self.assertEqual(
            response,
            LLMResponse(
                content="Hello world",
                reasoning="ok",
                finishReason=FinishReason.END,
                usage=Usage(9, 2),
            ),
        )
        recorded = self.upstream.requests[0]
        self.assertEqual(recorded.path, "/v1/messages")
        self.assertEqual(recorded.headers["x-api-key"], SENTINEL_KEY)
        self.assertEqual(recorded.headers["anthropic-version"], "2023-06-01")

    async def test_topKAndThinkingBudget(self) -> None:
        """
        C{topK} reaches Anthropic as C{top_k}; C{reasoningTokens} becomes
        the thinking C{budget_tokens} (over the effort's own budget), with
        C{max_tokens} raised above it, and C{top_k} is then left out
        (Anthropic refuses it while thinking).
        """
        await self.call(topK=12)
        await self.call(topK=12, reasoning="low", reasoningTokens=3000, maxTokens=1000)
        await self.call(topK=12, reasoning="none", reasoningTokens=3000)
        plain, thinking, off = (recorded.body for recorded in self.upstream.requests)
        self.assertEqual(plain["top_k"], 12)
        self.assertNotIn("thinking", plain)
        self.assertEqual(thinking["thinking"], {"type": "enabled", "budget_tokens": 3000})
        self.assertEqual(thinking["max_tokens"], 4000)
        self.assertNotIn("top_k", thinking)
        self.assertNotIn("thinking", off)
        self.assertEqual(off["top_k"], 12)

    async def test_echo(self) -> None:
        """
        The unscripted echo reply arrives word by word, with usage counting
        the system text too.
        """
        response = await self.call(
            messages=(ChatMessage("system", "be brief"), ChatMessage("user", "hello there"))
        )
        self.assertEqual(response.content, "echo: hello there")
        self.assertEqual(self.sink.contents, ["echo: ", "hello ", "there"])
        self.assertEqual(response.usage, Usage(4, 3))

    async def test_notStreaming(self) -> None:
        """
        A non-streamed call returns text, thinking, tool calls and usage.
        """
        self.upstream.script(
            Reply(content="The answer", reasoning="thinking", toolCalls=[("f", {"a": 1})])
        )
        response = await self.call(stream=False)
        self.assertEqual(response.content, "The answer")
        self.assertEqual(response.reasoning, "thinking")
        self.assertEqual(response.toolCalls, (ToolCall("toolu_1_0", "f", '{"a": 1}'),))
        self.assertEqual(response.finishReason, "tool_calls")
        self.assertEqual((self.sink.contents, self.sink.reasonings), ([], []))

    async def test_toolLoopWithThinking(self) -> None:
        """
        A tool call made while thinking, then its result: the second request
        passes the fake's checks and carries the signed thinking block back.
        """
        self.upstream.script(
            Reply(reasoning="need a tool", toolCalls=[("calc__add", {"a": 2, "b": 3})]),
            Reply(content="5"),
        )
        tool = ToolSpec("calc__add", "Add", {"type": "object"})
        first = await self.call(reasoning="medium", tools=(tool,))
        self.assertEqual(first.toolCalls, (ToolCall("toolu_1_0", "calc__add", '{"a": 2, "b": 3}'),))
        messages = (
            ChatMessage("user", "add"),
            ChatMessage("assistant", first.content, toolCalls=first.toolCalls),
            ChatMessage("tool", "5", toolCallId="toolu_1_0"),
        )
        second = await self.call(reasoning="medium", tools=(tool,), messages=messages)
        self.assertEqual(second.content, "5")
        sent = self.upstream.requests[1].body
        self.assertEqual(
            sent["messages"][1]["content"][0],
            {"type": "thinking", "thinking": "need a tool", "signature": "fake-signature-1"},
        )
        self.assertEqual(sent["messages"][2]["content"][0]["type"], "tool_result")

    async def test_rejectedKey(self) -> None:
        """
        HTTP 401 fails at once, not retryably, naming the provider, with the
        key scrubbed.
        """
        self.upstream.script(
            Reply(
                status=401,
                errorBody={
                    "type": "error",
                    "error": {"type": "authentication_error", "message": f"bad {SENTINEL_KEY}"},
                },
            )
        )
        error = await self.failure(self.call())
        self.assertEqual((error.status, error.retryable, error.upstreamStatus), (502, False, 401))
        self.assertIn("bad [redacted]", error.message)

    async def test_rateLimited(self) -> None:
        """
        HTTP 429 is retryable and carries C{Retry-After}.
        """
        self.upstream.script(Reply(status=429, headers={"Retry-After": "4"}))
        error = await self.failure(self.call())
        self.assertEqual((error.status, error.retryable, error.retryAfter), (429, True, 4.0))

    async def test_streamCut(self) -> None:
        """
        A stream closed before C{message_stop} and any stop reason fails
        with C{upstream_stream_cut}.
        """
        self.upstream.script(Reply(content=["a", "b", "c"], cutAfter=4))
        error = await self.failure(self.call())
        self.assertEqual((error.code, error.retryable), ("upstream_stream_cut", True))
        self.assertIn("message_stop", error.message)
        self.assertEqual(self.sink.contents, ["a"])

    async def test_stall(self) -> None:
        """
        A stream that stalls mid-way times out with a 504 and the upstream
        sees the connection close.
        """
        self.upstream.script(Reply(content=["a", "b"], stallAfter=4))
        error = await self.failure(self.call(timeout=0.2))
        self.assertEqual((error.status, error.code), (504, "upstream_timeout"))
        self.assertEqual(self.sink.contents, ["a"])
        await self.upstream.waitForDisconnects(1)

    async def test_invalidPayloadRefused(self) -> None:
        """
        The fake upstream refuses what the real API refuses (here a request
        without C{anthropic-version}), as a non-retryable rejection.
        """
        self.provider = AnthropicProvider(
            name="claude",
            baseUrl=self.running.baseUrl,
            http=self.http,
            reactor=self.reactor,
            headers={"anthropic-version": ""},
        )
        error = await self.failure(self.call())
        self.assertEqual((error.retryable, error.upstreamStatus), (False, 400))

    async def test_connectionRefused(self) -> None:
        """
        A refused connection is a retryable 502 C{upstream_unreachable}.
        """
        self.provider = self.makeProvider(await unusedBaseUrl(self.reactor))
        error = await self.failure(self.call())
        self.assertEqual(
            (error.status, error.retryable, error.code), (502, True, "upstream_unreachable")
        )


class JSONInstructionTests(SynchronousTestCase):
    """
    The Messages API has no response format, so a JSON answer is asked for
    in the system text.
    """

    def test_instruction(self) -> None:
        """
        A JSON schema is written into the instruction; any JSON object gets
        a shorter one; text gets none.
        """
        from ai_agent.providers.anthropic import jsonInstruction

        schemaText = jsonInstruction(OutputFormat({"type": "array"}, "n"))
        assert schemaText is not None
        self.assertIn('{"type": "array"}', schemaText)
        self.assertIn("JSON", jsonInstruction(OutputFormat()) or "")
        self.assertIsNone(jsonInstruction(None))

    def test_payloadCarriesInstruction(self) -> None:
        """
        A request with a response format has the instruction appended to
        its system text.
        """
        from ai_agent.providers import LLMRequest
        from ai_agent.providers._base import ChatMessage
        from ai_agent.providers.anthropic import AnthropicProvider

        provider = AnthropicProvider(
            name="claude", baseUrl="https://upstream.invalid", http=None, reactor=Clock()
        )
        body = provider.payload(
            LLMRequest(
                model="m",
                messages=(ChatMessage("system", "Be brief."), ChatMessage("user", "hi")),
                outputFormat=OutputFormat(),
            )
        )
        self.assertTrue(body["system"].startswith("Be brief.\n\nAnswer with one JSON object"))


class PromptCacheTests(SynchronousTestCase):
    """
    With C{cache}, the end of the conversation is a prompt-cache
    breakpoint; without it, nothing is marked.
    """

    def _body(self, **kwargs: Any) -> dict[str, Any]:
        from ai_agent.providers.anthropic import AnthropicProvider

        provider = AnthropicProvider(
            name="claude", baseUrl="https://upstream.invalid", http=None, reactor=Clock()
        )
        return provider.payload(request(**kwargs))

    def test_lastBlockMarked(self) -> None:
        """
        The last block of the last message carries C{cache_control}; the
        earlier ones do not.
        """
        body = self._body(
            cache=True,
            messages=(
                ChatMessage("user", "first"),
                ChatMessage("assistant", "", toolCalls=(ToolCall("c1", "t__x", "{}"),)),
                ChatMessage("tool", "result", toolCallId="c1"),
            ),
        )
        last = body["messages"][-1]["content"][-1]
        self.assertEqual(last["type"], "tool_result")
        self.assertEqual(last["cache_control"], {"type": "ephemeral"})
        self.assertNotIn("cache_control", body["messages"][0]["content"][-1])

    def test_off(self) -> None:
        """
        Without C{cache}, no block is marked.
        """
        body = self._body(cache=False)
        self.assertNotIn("cache_control", json.dumps(body))
