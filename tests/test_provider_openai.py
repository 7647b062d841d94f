"""
Tests for L{ai_agent.providers.openai}: the Chat Completions provider.

Unit tests drive the provider through C{treq}'s in-memory
L{RequestTraversalAgent} and a L{Clock}; integration tests run it against the
real L{ai_agent.testing.FakeUpstream} on a loopback socket.
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
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ai_agent.config import ProviderConfig, loadConfig
from ai_agent.errors import ConfigurationError, ErrorKind, ProviderError
from ai_agent.events import FinishReason, Usage
from ai_agent.providers import (
    AnthropicProvider,
    ChatMessage,
    LLMRequest,
    LLMResponse,
    OpenAIProvider,
    ToolCall,
    ToolSpec,
    makeProvider,
)
from ai_agent.testing import Reply, RunningFakeUpstream, startFakeUpstream

SENTINEL_KEY = "sk-sentinel-KEY-0123456789abcdefXYZ"


def request(**kwargs: Any) -> LLMRequest:
    """
    A one-message request for model C{gpt-x}.
    """
    kwargs.setdefault("model", "gpt-x")
    kwargs.setdefault("messages", (ChatMessage("user", "hello there"),))
    return LLMRequest(**kwargs)


class RecordingSink:
    """
    A L{ai_agent.providers.DeltaSink} that keeps every piece.
    """

    def __init__(self) -> None:
        self.contents: list[str] = []
        self.reasonings: list[str] = []

    def content(self, text: str) -> None:
        self.contents.append(text)

    def reasoning(self, text: str) -> None:
        self.reasonings.append(text)


class PendingResource(Resource):
    """
    Answers nothing by itself: the test writes to the kept requests.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Request] = []
        self.lost: list[Request] = []

    def render_POST(self, request: Request) -> object:
        self.requests.append(request)
        request.notifyFinish().addErrback(lambda _: self.lost.append(request))
        return NOT_DONE_YET


def chunk(delta: dict[str, Any], finishReason: str | None = None) -> bytes:
    """
    One SSE Chat Completions chunk.
    """
    payload = {"choices": [{"index": 0, "delta": delta, "finish_reason": finishReason}]}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


class InMemoryTests(SynchronousTestCase):
    """
    The provider over an in-memory HTTP connection and a fake clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.resource = PendingResource()
        self.agent = StubTreq(self.resource)
        self.provider = OpenAIProvider(
            name="openai",
            baseUrl="http://upstream.invalid/v1/",
            http=self.agent,
            reactor=self.clock,
            apiKey=SENTINEL_KEY,
            headers={"X-Team": "blue"},
        )
        self.sink = RecordingSink()

    def call(self, **kwargs: Any) -> Deferred[LLMResponse]:
        """
        Start a call and deliver the request to the resource.
        """
        d = self.provider.complete(request(**kwargs), self.sink)
        self.agent.flush()
        return d

    def respond(
        self, status: int = 200, contentType: bytes = b"text/event-stream", *chunks: bytes
    ) -> Request:
        """
        Send the headers (and C{chunks}) of the response to the last request.
        """
        upstream = self.resource.requests[-1]
        upstream.setResponseCode(status)
        upstream.setHeader(b"content-type", contentType)
        upstream.write(b"")
        for data in chunks:
            upstream.write(data)
        self.agent.flush()
        return upstream

    def test_payload(self) -> None:
        """
        The body carries the model, the messages, the tools and every set
        sampling option; streaming adds C{stream_options.include_usage}.
        """
        tool = ToolSpec("calc__add", "Add", {"type": "object"})
        self.call(
            tools=(tool,),
            temperature=0.5,
            topP=0.9,
            maxTokens=100,
            stop=("END",),
            seed=7,
            reasoning="high",
        )
        body = json.loads(self.resource.requests[0].content.read())
        self.assertEqual(
            body,
            {
                "model": "gpt-x",
                "messages": [{"role": "user", "content": "hello there"}],
                "tools": [tool.asOpenAI()],
                "temperature": 0.5,
                "top_p": 0.9,
                "max_tokens": 100,
                "stop": ["END"],
                "seed": 7,
                "reasoning_effort": "high",
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
        self.assertEqual(self.resource.requests[0].path, b"/v1/chat/completions")

    def test_payloadMinimal(self) -> None:
        """
        Unset options, a C{"none"} reasoning effort and, when not streaming,
        C{stream_options} are left out.
        """
        self.call(stream=False, reasoning="none")
        body = json.loads(self.resource.requests[0].content.read())
        self.assertEqual(
            body,
            {
                "model": "gpt-x",
                "messages": [{"role": "user", "content": "hello there"}],
                "stream": False,
            },
        )

    def test_headers(self) -> None:
        """
        The key goes in a bearer C{Authorization} header, next to the
        configured headers.
        """
        self.call()
        headers = self.resource.requests[0].requestHeaders
        self.assertEqual(headers.getRawHeaders("authorization"), [f"Bearer {SENTINEL_KEY}"])
        self.assertEqual(headers.getRawHeaders("x-team"), ["blue"])
        self.assertEqual(headers.getRawHeaders("accept"), ["text/event-stream"])

    def test_noKeyNoAuthorization(self) -> None:
        """
        Without a key no C{Authorization} header is sent.
        """
        self.provider = OpenAIProvider(
            name="local", baseUrl="http://h/v1", http=self.agent, reactor=self.clock
        )
        self.call()
        self.assertIsNone(self.resource.requests[0].requestHeaders.getRawHeaders("authorization"))

    def test_missingVariable(self) -> None:
        """
        A provider with unset variables fails at once, not retryably, naming
        the variable, without any HTTP request.
        """
        self.provider = OpenAIProvider(
            name="openai",
            baseUrl="http://h/v1",
            http=self.agent,
            reactor=self.clock,
            missingVariables=("OPENAI_API_KEY",),
        )
        error = self.failureResultOf(self.call(), ProviderError).value
        self.assertEqual(
            error.message,
            "provider 'openai' needs the environment variable OPENAI_API_KEY, which is not set",
        )
        self.assertEqual(
            (error.status, error.code, error.retryable), (500, "provider_not_configured", False)
        )
        self.assertEqual(self.resource.requests, [])

    def test_streamAssembled(self) -> None:
        """
        Content and reasoning pieces reach the sink as they arrive; the
        response assembles them with the finish reason and the usage.
        """
        d = self.call()
        upstream = self.respond(200, b"text/event-stream", chunk({"role": "assistant"}))
        upstream.write(chunk({"reasoning_content": "hmm"}) + chunk({"content": "Hel"}))
        self.agent.flush()
        self.assertEqual((self.sink.reasonings, self.sink.contents), (["hmm"], ["Hel"]))
        self.assertNoResult(d)
        upstream.write(chunk({"reasoning": " ok", "content": "lo"}, "stop"))
        upstream.write(
            b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}\n\n'
        )
        upstream.write(b"data: [DONE]\n\n")
        upstream.finish()
        self.agent.flush()
        self.assertEqual(
            self.successResultOf(d),
            LLMResponse(
                content="Hello",
                reasoning="hmm ok",
                finishReason=FinishReason.END,
                usage=Usage(3, 2),
            ),
        )

    def test_toolCallsByIndex(self) -> None:
        """
        Tool-call deltas are assembled by C{index}: the id and name from the
        first delta, the arguments concatenated.
        """
        d = self.call()
        upstream = self.respond()
        for delta in [
            {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": ""}}]},
            {"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": "{"}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": '{"x":'}}]},
            {"tool_calls": [{"index": 1, "function": {"arguments": "}"}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]},
        ]:
            upstream.write(chunk(delta))
        upstream.write(chunk({}, "tool_calls") + b"data: [DONE]\n\n")
        upstream.finish()
        self.agent.flush()
        response = self.successResultOf(d)
        self.assertEqual(
            response.toolCalls, (ToolCall("a", "f", '{"x": 1}'), ToolCall("b", "g", "{}"))
        )
        self.assertEqual(response.finishReason, "tool_calls")

    def test_usageDetailsAndFinishWords(self) -> None:
        """
        Cached prompt tokens and reasoning tokens are read from the usage
        details; C{content_filter} becomes the neutral C{content_filter}.
        """
        d = self.call()
        upstream = self.respond()
        upstream.write(chunk({"content": "x"}, "content_filter"))
        upstream.write(
            b'data: {"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 9,'
            b' "prompt_tokens_details": {"cached_tokens": 20},'
            b' "completion_tokens_details": {"reasoning_tokens": 4}}}\n\n'
        )
        upstream.write(b"data: [DONE]\n\n")
        upstream.finish()
        self.agent.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.usage, Usage(30, 9, cacheReadTokens=20, reasoningTokens=4))
        self.assertEqual(response.finishReason, FinishReason.CONTENT_FILTER)

    def test_finishWithoutDone(self) -> None:
        """
        A stream that ends cleanly after a finish reason but without
        C{[DONE]} is a complete answer.
        """
        d = self.call()
        upstream = self.respond(200, b"text/event-stream", chunk({"content": "x"}, "length"))
        upstream.finish()
        self.agent.flush()
        self.assertEqual(self.successResultOf(d).finishReason, FinishReason.MAX_TOKENS)

    def test_jsonWhenStreamAsked(self) -> None:
        """
        An upstream that answers a streaming request with one JSON body still
        works, and the sink gets the content.
        """
        d = self.call()
        body = {"choices": [{"message": {"content": "whole"}, "finish_reason": "stop"}]}
        upstream = self.respond(200, b"application/json", json.dumps(body).encode())
        upstream.finish()
        self.agent.flush()
        self.assertEqual(self.successResultOf(d).content, "whole")
        self.assertEqual(self.sink.contents, ["whole"])

    def test_errorChunk(self) -> None:
        """
        A C{data: {"error": ...}} chunk mid-stream fails the call with the
        upstream's message, closing the connection on the next turn of the
        reactor.
        """
        d = self.call()
        upstream = self.respond(
            200,
            b"text/event-stream",
            chunk({"content": "par"}),
            b'data: {"error": {"message": "overloaded, try later", "type": "server_error"}}\n\n',
        )
        self.assertNoResult(d)
        self.clock.advance(0)
        self.agent.flush()
        error = self.failureResultOf(d, ProviderError).value
        self.assertIn("overloaded, try later", error.message)
        self.assertIn("'openai'", error.message)
        self.assertIn("'gpt-x'", error.message)
        self.assertTrue(error.retryable)
        self.assertEqual(self.resource.lost, [upstream])

    def test_invalidEndKeepsConnection(self) -> None:
        """
        When the body ends in the same data as an invalid chunk, the call
        fails without closing the connection, whose HTTP framing is intact.
        """
        d = self.call()
        upstream = self.resource.requests[-1]
        upstream.setHeader(b"content-type", b"text/event-stream")
        upstream.write(chunk({"content": "a"}) + b"data: {nope\n\n")
        upstream.finish()
        self.agent.flush()
        self.assertEqual(
            self.failureResultOf(d, ProviderError).value.code, "upstream_invalid_response"
        )
        self.clock.advance(0)
        self.assertEqual(self.resource.lost, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timeoutBeforeHeaders(self) -> None:
        """
        With no response headers within C{timeout} seconds the call fails
        with a retryable 504 C{upstream_timeout} and the connection is closed.
        """
        d = self.call(timeout=30)
        self.clock.advance(29.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.agent.flush()
        error = self.failureResultOf(d, ProviderError).value
        self.assertEqual(
            (error.status, error.code, error.retryable), (504, "upstream_timeout", True)
        )
        self.assertIn("no response headers for 30 s", error.message)
        self.assertEqual(self.resource.lost, self.resource.requests)

    def test_timeoutBetweenChunks(self) -> None:
        """
        Each body chunk restarts the silence timer; a silence of C{timeout}
        seconds fails the call and closes the connection.
        """
        d = self.call(timeout=10)
        upstream = self.respond(200, b"text/event-stream", chunk({"content": "a"}))
        for _ in range(5):
            self.clock.advance(9)
            upstream.write(chunk({"content": "b"}))
            self.agent.flush()
        self.assertNoResult(d)
        self.clock.advance(10)
        self.agent.flush()
        error = self.failureResultOf(d, ProviderError).value
        self.assertEqual((error.status, error.code), (504, "upstream_timeout"))
        self.assertIn("no data for 10 s", error.message)
        self.assertEqual(self.resource.lost, [upstream])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_totalTimeout(self) -> None:
        """
        A call that keeps trickling data within the silence timeout still
        ends at C{totalTimeout}: a retryable 504 that closes the connection.
        """
        d = self.call(timeout=10, totalTimeout=30)
        upstream = self.respond(200, b"text/event-stream", chunk({"content": "a"}))
        for _ in range(3):
            self.clock.advance(9)
            upstream.write(chunk({"content": "b"}))
            self.agent.flush()
        self.assertNoResult(d)
        self.clock.advance(3)
        self.agent.flush()
        error = self.failureResultOf(d, ProviderError).value
        self.assertEqual(
            (error.status, error.code, error.retryable), (504, "upstream_timeout", True)
        )
        self.assertIn("did not finish within 30 s", error.message)
        self.assertEqual(self.resource.lost, [upstream])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_totalTimeoutCancelledOnSuccess(self) -> None:
        """
        A call that ends in time leaves no timer behind.
        """
        d = self.call(timeout=10, totalTimeout=30)
        upstream = self.respond(
            200, b"text/event-stream", chunk({"content": "ok"}, "stop"), b"data: [DONE]\n\n"
        )
        upstream.finish()
        self.agent.flush()
        self.assertEqual(self.successResultOf(d).content, "ok")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_doneWithoutEndOfBody(self) -> None:
        """
        After C{[DONE]} the call succeeds even if the upstream never ends the
        body: the connection is closed after a short grace.
        """
        d = self.call()
        upstream = self.respond(
            200, b"text/event-stream", chunk({"content": "ok"}, "stop"), b"data: [DONE]\n\n"
        )
        self.assertNoResult(d)
        self.clock.advance(5)
        self.agent.flush()
        self.assertEqual(self.successResultOf(d).content, "ok")
        self.assertEqual(self.resource.lost, [upstream])

    def test_cancelBeforeHeaders(self) -> None:
        """
        Cancelling before the response headers fails the call with
        L{CancelledError} and closes the connection.
        """
        d = self.call(timeout=30)
        d.cancel()
        self.agent.flush()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.resource.lost, self.resource.requests)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelWhileStreaming(self) -> None:
        """
        Cancelling while the body streams fails the call with
        L{CancelledError} and closes the connection.
        """
        d = self.call()
        upstream = self.respond(200, b"text/event-stream", chunk({"content": "a"}))
        d.cancel()
        self.agent.flush()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.resource.lost, [upstream])

    def test_retryAfterDate(self) -> None:
        """
        A C{Retry-After} HTTP date is turned into seconds from now.
        """
        self.clock.advance(1_700_000_000)
        d = self.call()
        upstream = self.resource.requests[-1]
        upstream.setResponseCode(429)
        upstream.setHeader(b"retry-after", b"Tue, 14 Nov 2023 22:13:40 GMT")
        upstream.write(b"slow down")
        upstream.finish()
        self.agent.flush()
        error = self.failureResultOf(d, ProviderError).value
        self.assertEqual(error.retryAfter, 20.0)
        self.assertEqual(error.status, 429)

    def test_longErrorTruncated(self) -> None:
        """
        A long upstream error text is cut to about 300 characters.
        """
        d = self.call()
        upstream = self.resource.requests[-1]
        upstream.setResponseCode(503)
        upstream.write(b"x" * 5000)
        upstream.finish()
        self.agent.flush()
        error = self.failureResultOf(d, ProviderError).value
        self.assertIn("HTTP 503: xxx", error.message)
        self.assertLess(len(error.message), 400)
        self.assertEqual(error.upstreamStatus, 503)


class ScrubTests(SynchronousTestCase):
    """
    The key never appears in error text.
    """

    def setUp(self) -> None:
        self.provider = OpenAIProvider(
            name="openai",
            baseUrl="http://h/v1",
            http=StubTreq(Resource()),
            reactor=Clock(),
            apiKey=SENTINEL_KEY,
        )

    def test_wholeKey(self) -> None:
        """
        The key itself is replaced.
        """
        self.assertEqual(self.provider.scrub(f"bad key {SENTINEL_KEY}."), "bad key [redacted].")

    def test_fragmentAndMasked(self) -> None:
        """
        A long fragment of the key and a masked form of it are replaced.
        """
        self.assertEqual(
            self.provider.scrub(f"got {SENTINEL_KEY[:12]} and sk-sen****XYZ ok"),
            "got [redacted] and [redacted] ok",
        )

    def test_unrelatedTextKept(self) -> None:
        """
        Other words stay.
        """
        self.assertEqual(
            self.provider.scrub("Incorrect API key provided"), "Incorrect API key provided"
        )

    def test_headerValues(self) -> None:
        """
        Configured header values of 8 characters or more (which may be keys)
        are scrubbed like the key, whole or in part; shorter ones are not.
        """
        provider = OpenAIProvider(
            name="azure",
            baseUrl="http://h/v1",
            http=StubTreq(Resource()),
            reactor=Clock(),
            headers={"api-key": "azk-0123456789abcdef", "X-Tier": "gold"},
        )
        self.assertEqual(
            provider.scrub("bad azk-0123456789abcdef, azk-01234567 and gold"),
            "bad [redacted], [redacted] and gold",
        )


class MakeProviderTests(SynchronousTestCase):
    """
    L{makeProvider} picks the wire protocol of a configured provider.
    """

    http = StubTreq(Resource())

    def test_openaiAndOllama(self) -> None:
        """
        C{openai} and C{ollama} entries become L{OpenAIProvider}s carrying
        the configuration.
        """
        for kind in ("openai", "ollama"):
            config = ProviderConfig(
                name="p",
                type=kind,
                baseUrl="http://h/v1",
                apiKey="k",
                headers={"A": "b"},
                missingVariables=("X",),
            )
            provider = makeProvider(config, self.http, Clock())
            assert isinstance(provider, OpenAIProvider)
            self.assertEqual(
                (provider.name, provider.baseUrl, provider.apiKey, dict(provider.headers)),
                ("p", "http://h/v1", "k", {"A": "b"}),
            )
            self.assertEqual(provider.missingVariables, ("X",))

    def test_anthropic(self) -> None:
        """
        An C{anthropic} entry becomes an L{AnthropicProvider} carrying the
        configuration.
        """
        config = ProviderConfig(
            name="claude",
            type="anthropic",
            baseUrl="https://h",
            apiKey="k",
            headers={"anthropic-beta": "x"},
            missingVariables=("Y",),
        )
        provider = makeProvider(config, self.http, Clock())
        assert isinstance(provider, AnthropicProvider)
        self.assertEqual(
            (provider.name, provider.url, provider.apiKey, dict(provider.headers)),
            ("claude", "https://h/v1/messages", "k", {"anthropic-beta": "x"}),
        )
        self.assertEqual(provider.missingVariables, ("Y",))

    def test_ollamaBuiltIn(self) -> None:
        """
        The built-in C{ollama} provider speaks the OpenAI wire type to
        Ollama's default local URL, without a key.
        """
        config = loadConfig(configFile=None, cwd=self.mktemp(), agentDirs=[], home=None, environ={})
        provider = makeProvider(config.providers["ollama"], self.http, Clock())
        assert isinstance(provider, OpenAIProvider)
        self.assertEqual(provider.url, "http://localhost:11434/v1/chat/completions")
        self.assertIsNone(provider.apiKey)
        self.assertNotIn("Authorization", provider.requestHeaders(request()))

    def test_unknownType(self) -> None:
        """
        An unknown type is a configuration error.
        """
        config = ProviderConfig(name="x", type="carrier-pigeon", baseUrl="http://h")
        self.assertRaises(ConfigurationError, makeProvider, config, self.http, Clock())

    def test_keyNotInRepr(self) -> None:
        """
        The key is not part of the provider's repr.
        """
        config = ProviderConfig(name="p", type="openai", baseUrl="http://h", apiKey=SENTINEL_KEY)
        self.assertNotIn(SENTINEL_KEY, repr(makeProvider(config, self.http, Clock())))


class UpstreamTests(TestCase):
    """
    The provider against the real fake upstream on a loopback socket.
    """

    async def startUpstream(self) -> RunningFakeUpstream:
        from twisted.internet import reactor

        running = await startFakeUpstream(reactor)
        self.addCleanup(running.stop)
        return running

    async def setUp(self) -> None:  # type: ignore[override]
        from twisted.internet import reactor

        self.reactor = reactor
        self.running = await self.startUpstream()
        self.upstream = self.running.upstream
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 8
        self.addCleanup(pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, pool=pool))
        self.provider = self.makeProvider(self.running.baseUrl)
        self.sink = RecordingSink()

    def makeProvider(self, baseUrl: str) -> OpenAIProvider:
        return OpenAIProvider(
            name="openai",
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
            self.assertNotIn(SENTINEL_KEY[:12], e.message)
            self.assertIn("'openai'", e.message)
            self.assertIn("'gpt-x'", e.message)
            return e
        self.fail("the call did not fail")

    async def test_streaming(self) -> None:
        """
        A streamed call sends the key and C{stream_options}, feeds the sink
        piece by piece, and returns the content, finish reason and usage.
        """
        self.upstream.script(Reply(content=["Hello", " world"], usage=(9, 2)))
        response = await self.call()
        self.assertEqual(self.sink.contents, ["Hello", " world"])
        self.assertEqual(
            response,
            LLMResponse(content="Hello world", finishReason=FinishReason.END, usage=Usage(9, 2)),
        )
        recorded = self.upstream.requests[0]
        self.assertEqual(recorded.path, "/v1/chat/completions")
        self.assertEqual(recorded.headers["authorization"], f"Bearer {SENTINEL_KEY}")
        self.assertEqual(recorded.body["stream_options"], {"include_usage": True})

    async def test_samplingExtensions(self) -> None:
        """
        C{topK} and C{repeatPenalty} reach the upstream as C{top_k} and
        C{repeat_penalty} (llama.cpp's and vLLM's fields); unset, they are
        not sent at all.
        """
        await self.call(topK=40, repeatPenalty=1.15)
        await self.call()
        sent, plain = (recorded.body for recorded in self.upstream.requests)
        self.assertEqual((sent["top_k"], sent["repeat_penalty"]), (40, 1.15))
        self.assertNotIn("top_k", plain)
        self.assertNotIn("repeat_penalty", plain)

    async def test_defaultEcho(self) -> None:
        """
        The unscripted echo reply arrives word by word with computed usage.
        """
        response = await self.call()
        self.assertEqual(response.content, "echo: hello there")
        self.assertEqual(self.sink.contents, ["echo: ", "hello ", "there"])
        self.assertEqual(response.usage, Usage(2, 3))

    async def test_notStreaming(self) -> None:
        """
        A non-streamed call parses the JSON body (content, reasoning, tool
        calls, usage) and does not touch the sink.
        """
        self.upstream.script(
            Reply(content="The answer", reasoning="thinking", toolCalls=[("f", {"a": 1})])
        )
        response = await self.call(stream=False)
        self.assertEqual(response.content, "The answer")
        self.assertEqual(response.reasoning, "thinking")
        self.assertEqual(response.toolCalls, (ToolCall("call_1_0", "f", '{"a": 1}'),))
        self.assertEqual(response.finishReason, "tool_calls")
        self.assertEqual(response.usage, Usage(2, 2))
        self.assertEqual((self.sink.contents, self.sink.reasonings), ([], []))
        self.assertNotIn("stream_options", self.upstream.requests[0].body)

    async def test_splitUTF8(self) -> None:
        """
        A response written one byte at a time, splitting UTF-8 characters
        and SSE events, arrives intact.
        """
        text = "héllo wörld 你好 🎉"
        self.upstream.script(Reply(content=text, reasoning="ça va", splitBytes=1))
        response = await self.call()
        self.assertEqual(response.content, text)
        self.assertEqual(response.reasoning, "ça va")
        self.assertEqual("".join(self.sink.contents), text)

    async def test_splitEvents(self) -> None:
        """
        Events split in odd-sized pieces across reads are reassembled.
        """
        self.upstream.script(Reply(content=["a", "b", "c"], reasoning=["x", "y"], splitBytes=7))
        response = await self.call()
        self.assertEqual((response.content, response.reasoning), ("abc", "xy"))
        self.assertEqual((self.sink.contents, self.sink.reasonings), (["a", "b", "c"], ["x", "y"]))

    async def test_toolCalls(self) -> None:
        """
        Streamed tool calls (arguments in pieces) are assembled by index.
        """
        self.upstream.script(
            Reply(toolCalls=[("calc__add", {"a": 2, "b": 3}), ("web__get", '{"url": "x"}')])
        )
        response = await self.call()
        self.assertEqual(
            response.toolCalls,
            (
                ToolCall("call_1_0", "calc__add", '{"a": 2, "b": 3}'),
                ToolCall("call_1_1", "web__get", '{"url": "x"}'),
            ),
        )
        self.assertEqual(response.finishReason, "tool_calls")

    async def test_unauthorized(self) -> None:
        """
        HTTP 401 is a non-retryable 502 naming the status and the upstream
        message, with the key scrubbed from it.
        """
        self.upstream.script(
            Reply(
                status=401,
                errorBody={
                    "error": {
                        "message": f"Incorrect API key provided: {SENTINEL_KEY}",
                        "type": "invalid_request_error",
                    }
                },
            )
        )
        error = await self.failure(self.call())
        self.assertEqual(
            error.message,
            "provider 'openai' rejected the request for model 'gpt-x': "
            "HTTP 401: Incorrect API key provided: [redacted]",
        )
        self.assertEqual((error.status, error.retryable, error.upstreamStatus), (502, False, 401))

    async def test_rateLimited(self) -> None:
        """
        HTTP 429 is retryable with the upstream's C{Retry-After}, believed
        up to a day (how long to wait is the retry policy's decision).
        """
        self.upstream.script(
            Reply(status=429, headers={"Retry-After": "7"}),
            Reply(status=429, headers={"Retry-After": "3600"}),
            Reply(status=429, headers={"Retry-After": "99999999"}),
        )
        error = await self.failure(self.call())
        self.assertEqual((error.status, error.retryable, error.retryAfter), (429, True, 7.0))
        self.assertEqual(error.kind, ErrorKind.RATE_LIMIT)
        error = await self.failure(self.call())
        self.assertEqual(error.retryAfter, 3600.0)
        error = await self.failure(self.call())
        self.assertEqual(error.retryAfter, 86400.0)

    async def test_serverError(self) -> None:
        """
        HTTP 5xx is a retryable 502 naming the upstream status and message.
        """
        self.upstream.script(
            Reply(status=500, errorBody={"error": {"message": f"boom ({SENTINEL_KEY})"}})
        )
        error = await self.failure(self.call())
        self.assertIn("HTTP 500: boom", error.message)
        self.assertEqual((error.status, error.retryable, error.upstreamStatus), (502, True, 500))

    async def test_connectionRefused(self) -> None:
        """
        A refused connection is a retryable 502.
        """
        running = await self.startUpstream()
        await running.stop()
        self.provider = self.makeProvider(running.baseUrl)
        error = await self.failure(self.call())
        self.assertEqual(
            (error.status, error.retryable, error.code), (502, True, "upstream_unreachable")
        )
        self.assertIn("could not connect", error.message)

    async def test_invalidChunk(self) -> None:
        """
        A chunk that is not JSON fails with C{upstream_invalid_response}.
        """
        self.upstream.script(Reply(rawChunks=[chunk({"content": "a"}), b"data: {nope\n\n"]))
        error = await self.failure(self.call())
        self.assertEqual(error.code, "upstream_invalid_response")
        self.assertIn("{nope", error.message)

    async def test_connectionReusedAfterInvalidBody(self) -> None:
        """
        A call that fails on an invalid last chunk leaves a healthy
        connection: a call made at once after it succeeds.
        """
        self.upstream.script(Reply(rawChunks=[chunk({"content": "a"}), b"data: {nope\n\n"]))
        error = await self.failure(self.call())
        self.assertEqual(error.code, "upstream_invalid_response")
        response = await self.call()
        self.assertEqual(response.content, "echo: hello there")

    async def test_invalidUTF8(self) -> None:
        """
        A stream that is not UTF-8 fails with C{upstream_invalid_response}.
        """
        self.upstream.script(Reply(rawChunks=[b"data: \xff\xfe\n\n"]))
        error = await self.failure(self.call())
        self.assertEqual(error.code, "upstream_invalid_response")

    async def test_streamCut(self) -> None:
        """
        A stream closed before C{[DONE]} and any finish reason fails with a
        retryable C{upstream_stream_cut}.
        """
        self.upstream.script(Reply(content=["a", "b", "c"], cutAfter=2))
        error = await self.failure(self.call())
        self.assertEqual((error.code, error.retryable), ("upstream_stream_cut", True))
        self.assertEqual(self.sink.contents, ["a"])

    async def test_silenceTimeout(self) -> None:
        """
        A held stream times out after C{timeout} seconds of silence with a
        504, and the upstream sees the connection close.
        """
        self.upstream.script(Reply(content="x", hold=True))
        error = await self.failure(self.call(timeout=0.2))
        self.assertEqual((error.status, error.code), (504, "upstream_timeout"))
        await self.upstream.waitForDisconnects(1)

    async def test_cancelBeforeHeaders(self) -> None:
        """
        Cancelling before the response headers closes the upstream
        connection and fails with L{CancelledError}.
        """
        self.upstream.script(Reply(content="late", delay=30))
        d = self.call()
        await self.upstream.waitForRequests(1)
        d.cancel()
        with self.assertRaises(CancelledError):
            await d
        await self.upstream.waitForDisconnects(1)
        self.assertEqual(self.upstream.inFlight, 0)

    async def test_cancelWhileStreaming(self) -> None:
        """
        Cancelling while the body streams closes the upstream connection and
        fails with L{CancelledError}.
        """
        first: Deferred[None] = Deferred()
        self.sink = RecordingSink()
        self.sink.content = lambda text: first.callback(None)  # type: ignore[method-assign]
        self.upstream.script(
            Reply(rawChunks=[chunk({"content": "a"}), chunk({"content": "b"})], interval=30)
        )
        d = self.call()
        await first
        d.cancel()
        with self.assertRaises(CancelledError):
            await d
        await self.upstream.waitForDisconnects(1)


class JSONCodecTests(SynchronousTestCase):
    """
    The providers' JSON: orjson, with the json module for what it refuses.
    """

    def test_bodySameValues(self) -> None:
        """
        A request body reads back as the same value json writes, compact,
        non-ASCII text as UTF-8; an integer past 64 bits still goes out.
        """
        from ai_agent.providers._http import dumpsBody

        payload = {"model": "m", "messages": [{"role": "user", "content": "héllo ☃ \u2028"}]}
        payload["temperature"] = 0.7
        compact = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        self.assertEqual(dumpsBody(payload), compact)
        payload["seed"] = 2**70
        self.assertEqual(json.loads(dumpsBody(payload)), payload)

    def test_loadsFallsBack(self) -> None:
        """
        Upstream JSON that orjson refuses (NaN, a 70-bit integer) is read
        by the json module; invalid JSON is still a ValueError.
        """
        from ai_agent.providers._http import loadsJSON

        self.assertEqual(loadsJSON('{"a": [1, "x", null]}'), {"a": [1, "x", None]})
        self.assertEqual(loadsJSON(b'{"n": %d}' % 2**70), {"n": 2**70})
        value = loadsJSON('{"x": NaN}')["x"]
        self.assertNotEqual(value, value)
        self.assertRaises(ValueError, loadsJSON, "{not json")
