"""
Tests for L{ai_agent.testing}: the shipped fake upstream and scripted
provider.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import treq
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed

from ai_agent.errors import ProviderError
from ai_agent.providers import ChatMessage, LLMRequest, LLMResponse
from ai_agent.sse import SSEParser
from ai_agent.testing import (
    WAIT_TIMEOUT,
    FakeUpstream,
    RecordedRequest,
    Reply,
    ScriptedProvider,
    startFakeUpstream,
    unusedBaseUrl,
    wordPieces,
)


def chatBody(stream: bool = True, includeUsage: bool = False, text: str = "hi there") -> dict:
    """
    A chat completion request body.
    """
    body: dict[str, Any] = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": text},
        ],
        "stream": stream,
    }
    if includeUsage:
        body["stream_options"] = {"include_usage": True}
    return body


def messagesBody(stream: bool = True) -> dict[str, Any]:
    """
    An Anthropic Messages request body.
    """
    return {
        "model": "claude-x",
        "max_tokens": 100,
        "system": "be brief",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi there"}]}],
        "stream": stream,
    }


class Collected:
    """
    A streamed response: the raw reads and the parsed SSE payloads.
    """

    def __init__(self) -> None:
        self.reads: list[bytes] = []
        self.parser = SSEParser()
        self.data: list[str] = []

    def __call__(self, data: bytes) -> None:
        self.reads.append(data)
        self.data.extend(event.data for event in self.parser.feed(data))

    def chunks(self) -> list[dict[str, Any]]:
        """
        The JSON payloads (everything before C{[DONE]}).
        """
        return [json.loads(d) for d in self.data if d != "[DONE]"]

    def deltas(self, key: str) -> list[Any]:
        """
        The values of C{delta[key]} across the chunks, where present.
        """
        return [
            c["choices"][0]["delta"][key]
            for c in self.chunks()
            if c["choices"] and key in c["choices"][0]["delta"]
        ]


class FakeUpstreamTests(TestCase):
    """
    L{FakeUpstream} over a loopback socket.
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

    def post(self, body: Any, **kwargs: Any) -> Deferred[Any]:
        return self.http.post(
            self.running.baseUrl + "/chat/completions", json=body, unbuffered=True, **kwargs
        )

    async def stream(self, body: Any) -> Collected:
        response = await self.post(body)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/event-stream"])
        collected = Collected()
        await treq.collect(response, collected)
        return collected

    async def test_baseUrl(self) -> None:
        """
        The base URL is the C{/v1} root on the loopback port.
        """
        self.assertEqual(self.running.baseUrl, f"http://127.0.0.1:{self.running.port}/v1")

    async def test_models(self) -> None:
        """
        C{GET /v1/models} lists the configured models.
        """
        response = await self.http.get(self.running.baseUrl + "/models")
        body = await response.json()
        self.assertEqual([m["id"] for m in body["data"]], ["fake-model"])
        self.assertEqual(body["object"], "list")

    async def test_defaultEcho(self) -> None:
        """
        Unscripted, the answer echoes the last user message word by word,
        after a role chunk, and ends with a finish chunk and C{[DONE]}; no
        usage chunk unless asked for.
        """
        collected = await self.stream(chatBody(text="hello big world"))
        chunks = collected.chunks()
        self.assertEqual(chunks[0]["choices"][0]["delta"], {"role": "assistant", "content": ""})
        self.assertEqual(collected.deltas("content"), ["", "echo: ", "hello ", "big ", "world"])
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "stop")
        self.assertEqual(collected.data[-1], "[DONE]")
        self.assertFalse(any("usage" in c for c in chunks))
        self.assertEqual(chunks[0]["object"], "chat.completion.chunk")
        self.assertEqual(chunks[0]["model"], "m")

    async def test_includeUsage(self) -> None:
        """
        With C{stream_options.include_usage} a last chunk with no choices
        carries the usage: prompt words across all messages and the number
        of content pieces, unless scripted.
        """
        collected = await self.stream(chatBody(includeUsage=True))
        last = collected.chunks()[-1]
        self.assertEqual(last["choices"], [])
        self.assertEqual(
            last["usage"], {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
        )
        self.upstream.script(Reply(content="x", usage=(10, 20)))
        collected = await self.stream(chatBody(includeUsage=True))
        self.assertEqual(collected.chunks()[-1]["usage"]["total_tokens"], 30)

    async def test_scriptOrder(self) -> None:
        """
        Scripted replies are used in order, then the echo comes back.
        """
        self.upstream.script(Reply(content=["one"]), Reply(content=["two", "!"]))
        first = await self.stream(chatBody())
        second = await self.stream(chatBody())
        third = await self.stream(chatBody(text="x"))
        self.assertEqual(first.deltas("content")[1:], ["one"])
        self.assertEqual(second.deltas("content")[1:], ["two", "!"])
        self.assertEqual("".join(third.deltas("content")), "echo: x")
        self.assertEqual(self.upstream.scripted, 0)

    async def test_scriptFor(self) -> None:
        """
        Replies queued with C{scriptFor} answer only the calls their
        predicate accepts, whenever those arrive; the general script keeps
        its order for the others, and the echo comes back when both are
        used up.
        """
        self.upstream.script(Reply(content=["main"]))
        self.upstream.scriptFor(
            lambda body: body["messages"][-1]["content"] == "title?", Reply(content=["T"])
        )
        self.assertEqual(self.upstream.scripted, 2)
        title = await self.stream(chatBody(text="title?"))
        main = await self.stream(chatBody(text="work"))
        again = await self.stream(chatBody(text="title?"))
        self.assertEqual(title.deltas("content")[1:], ["T"])
        self.assertEqual(main.deltas("content")[1:], ["main"])
        self.assertEqual("".join(again.deltas("content")), "echo: title?")
        self.assertEqual(self.upstream.scripted, 0)

    async def test_reasoningAndToolCalls(self) -> None:
        """
        Reasoning streams as C{reasoning_content}; tool calls stream with
        index and id, their arguments in two or more pieces, and the finish
        reason becomes C{tool_calls}.
        """
        self.upstream.script(Reply(reasoning="let me see", toolCalls=[("f", {"a": 1})]))
        collected = await self.stream(chatBody())
        self.assertEqual(collected.deltas("reasoning_content"), ["let ", "me ", "see"])
        calls = [c for d in collected.deltas("tool_calls") for c in d]
        self.assertEqual(calls[0]["id"], "call_1_0")
        self.assertEqual(calls[0]["function"]["name"], "f")
        self.assertEqual({c["index"] for c in calls}, {0})
        pieces = [c["function"]["arguments"] for c in calls[1:]]
        self.assertGreaterEqual(len(pieces), 2)
        self.assertEqual(json.loads("".join(pieces)), {"a": 1})
        self.assertEqual(collected.chunks()[-1]["choices"][0]["finish_reason"], "tool_calls")

    async def test_notStreaming(self) -> None:
        """
        Without C{stream} the answer is one chat completion object.
        """
        self.upstream.script(Reply(content="whole answer", reasoning="r", toolCalls=[("f", "{}")]))
        response = await self.post(chatBody(stream=False))
        body = await response.json()
        message = body["choices"][0]["message"]
        self.assertEqual(message["content"], "whole answer")
        self.assertEqual(message["reasoning_content"], "r")
        self.assertEqual(message["tool_calls"][0]["function"], {"name": "f", "arguments": "{}"})
        self.assertEqual(body["choices"][0]["finish_reason"], "tool_calls")
        self.assertEqual(body["usage"]["completion_tokens"], 2)

    async def test_usageFields(self) -> None:
        """
        C{usageFields} replaces (or adds) fields of the usage object as
        sent, whole and streamed, so that a test can send usage no model
        could have spent.
        """
        fields = {"prompt_tokens": -5, "prompt_tokens_details": {"cached_tokens": 1.5}}
        self.upstream.script(Reply(content="x", usage=(3, 1), usageFields=fields))
        body = await (await self.post(chatBody(stream=False))).json()
        self.assertEqual(
            body["usage"],
            {
                "prompt_tokens": -5,
                "completion_tokens": 1,
                "total_tokens": 4,
                "prompt_tokens_details": {"cached_tokens": 1.5},
            },
        )
        self.upstream.script(Reply(content="x", usageFields={"completion_tokens": True}))
        collected = await self.stream(chatBody(includeUsage=True))
        self.assertIs(collected.chunks()[-1]["usage"]["completion_tokens"], True)

    async def test_errorReply(self) -> None:
        """
        An error reply has its status, extra headers and an OpenAI error
        envelope by default.
        """
        self.upstream.script(Reply(status=429, headers={"Retry-After": "3"}))
        response = await self.post(chatBody())
        self.assertEqual(response.code, 429)
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["3"])
        body = await response.json()
        self.assertEqual(body["error"]["type"], "rate_limit_error")

    async def test_recordedRequests(self) -> None:
        """
        Every request is recorded with its method, path, lower-case headers
        and parsed JSON body.
        """
        waiting = self.upstream.waitForRequests(1)
        response = await self.post(chatBody(), headers={"X-Trace-ID": "abc"})
        await response.content()
        await waiting
        recorded = self.upstream.requests[0]
        self.assertIsInstance(recorded, RecordedRequest)
        self.assertEqual((recorded.method, recorded.path), ("POST", "/v1/chat/completions"))
        self.assertEqual(recorded.headers["x-trace-id"], "abc")
        self.assertEqual(recorded.body, chatBody())

    async def test_holdAndRelease(self) -> None:
        """
        Held replies wait after the role chunk until C{release}; the
        upstream counts calls in flight and the most at once.
        """
        self.upstream.script(Reply(content="a", hold=True), Reply(content="b", hold=True))
        first = self.post(chatBody())
        # Two connections race: let the first take the first reply.
        await self.upstream.waitForRequests(1)
        second = self.post(chatBody())
        responses = [await first, await second]
        self.assertEqual((self.upstream.inFlight, self.upstream.held), (2, 2))
        collected = [Collected(), Collected()]
        done = [treq.collect(r, c) for r, c in zip(responses, collected, strict=True)]
        self.upstream.release()
        for d in done:
            await d
        self.assertEqual(["".join(c.deltas("content")) for c in collected], ["a", "b"])
        self.assertEqual((self.upstream.inFlight, self.upstream.maxInFlight), (0, 2))
        self.assertEqual(self.upstream.disconnects, 0)

    async def test_disconnects(self) -> None:
        """
        A client that goes away before the response finished is counted,
        with the time.
        """
        self.upstream.script(Reply(content="a", hold=True))
        response = await self.post(chatBody())

        def hangUp(data: bytes) -> None:
            raise RuntimeError("hang up")

        with self.assertRaises(RuntimeError):
            await treq.collect(response, hangUp)
        self.assertEqual(await self.upstream.waitForDisconnects(1), 1)
        self.assertEqual(len(self.upstream.disconnectTimes), 1)
        self.assertEqual(self.upstream.lastDisconnectAt, self.upstream.disconnectTimes[0])
        self.assertEqual((self.upstream.inFlight, self.upstream.held), (0, 0))

    async def test_cutAfter(self) -> None:
        """
        C{cutAfter} closes the connection after that many events without
        C{[DONE]}; that is not counted as a client disconnect.
        """
        self.upstream.script(Reply(content=["a", "b", "c"], cutAfter=2))
        response = await self.post(chatBody())
        collected = Collected()
        with self.assertRaises(ResponseFailed):
            await treq.collect(response, collected)
        self.assertEqual(collected.deltas("content"), ["", "a"])
        self.assertEqual(self.upstream.disconnects, 0)

    async def test_rawChunks(self) -> None:
        """
        C{rawChunks} are the body, verbatim.
        """
        self.upstream.script(Reply(rawChunks=[b"data: {bad\n\n", b": x\n\n"]))
        response = await self.post(chatBody())
        self.assertEqual(await response.content(), b"data: {bad\n\n: x\n\n")

    async def test_splitBytes(self) -> None:
        """
        C{splitBytes} writes the body in pieces of that size, splitting
        UTF-8 characters, which still decode.
        """
        self.upstream.script(Reply(content="héllo 🎉", splitBytes=1))
        collected = await self.stream(chatBody())
        self.assertEqual({len(read) for read in collected.reads}, {1})
        self.assertEqual("".join(collected.deltas("content")), "héllo 🎉")

    async def test_stopDropsConnections(self) -> None:
        """
        C{stop} closes held connections too, so the reactor is left clean.
        """
        self.upstream.script(Reply(content="a", hold=True))
        response = await self.post(chatBody())
        collecting = treq.collect(response, Collected())
        await self.running.stop()
        with self.assertRaises(ResponseFailed):
            await collecting
        self.assertEqual(self.upstream.held, 0)


class AnthropicModeTests(TestCase):
    """
    L{FakeUpstream}'s Anthropic Messages mode and its fault modes, over a
    loopback socket.
    """

    setUp = FakeUpstreamTests.setUp
    post = FakeUpstreamTests.post

    def postMessages(self, body: Any, headers: Any = None) -> Deferred[Any]:
        return self.http.post(
            self.running.baseUrl + "/messages",
            json=body,
            headers=headers if headers is not None else {"anthropic-version": "2023-06-01"},
            unbuffered=True,
        )

    async def events(self, body: Any) -> list[tuple[str, dict[str, Any]]]:
        """
        The (event name, payload) pairs of a streamed Messages answer.
        """
        response = await self.postMessages(body)
        self.assertEqual(response.code, 200)
        parser = SSEParser()
        events: list[Any] = []
        await treq.collect(response, lambda data: events.extend(parser.feed(data)))
        return [(e.event, json.loads(e.data)) for e in events]

    async def test_streamedEvents(self) -> None:
        """
        A streamed reply is C{message_start}, a ping, a signed thinking
        block, a text block, a C{tool_use} block with its input in two
        pieces, C{message_delta} with the translated stop reason and usage,
        and C{message_stop}; each event is named after its C{type}.
        """
        self.upstream.script(
            Reply(content=["Hi", "!"], reasoning="hm", toolCalls=[("f", {"a": 1})], usage=(5, 2))
        )
        events = await self.events(messagesBody())
        self.assertTrue(all(name == payload["type"] for name, payload in events))
        kinds = [payload["type"] for _, payload in events]
        self.assertEqual(kinds[:2], ["message_start", "ping"])
        self.assertEqual(kinds[-2:], ["message_delta", "message_stop"])
        deltas = [p["delta"] for _, p in events if p["type"] == "content_block_delta"]
        self.assertEqual(
            [d.get("thinking") or d.get("text") for d in deltas[:4]], ["hm", None, "Hi", "!"]
        )
        self.assertEqual(deltas[1], {"type": "signature_delta", "signature": "fake-signature-1"})
        pieces = [d["partial_json"] for d in deltas if d["type"] == "input_json_delta"]
        self.assertEqual((len(pieces), json.loads("".join(pieces))), (2, {"a": 1}))
        starts = [p["content_block"] for _, p in events if p["type"] == "content_block_start"]
        self.assertEqual(starts[2]["id"], "toolu_1_0")
        self.assertEqual(events[0][1]["message"]["usage"]["input_tokens"], 5)
        self.assertEqual(
            events[-2][1],
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 2},
            },
        )

    async def test_notStreamed(self) -> None:
        """
        Without C{stream} the answer is one Messages object whose content
        blocks carry the thinking (signed), the text and the tool calls.
        """
        self.upstream.script(Reply(content="whole", reasoning="r", finishReason="length"))
        response = await self.postMessages(messagesBody(stream=False))
        body = await response.json()
        self.assertEqual(
            body["content"],
            [
                {"type": "thinking", "thinking": "r", "signature": "fake-signature-1"},
                {"type": "text", "text": "whole"},
            ],
        )
        self.assertEqual(body["stop_reason"], "max_tokens")
        self.assertEqual(body["usage"], {"input_tokens": 4, "output_tokens": 1})

    async def test_usageFields(self) -> None:
        """
        In Anthropic mode C{usageFields} goes into the whole message's usage
        and the streamed C{message_delta}'s.
        """
        fields = {"cache_read_input_tokens": -1}
        self.upstream.script(Reply(content="x", usage=(4, 1), usageFields=fields))
        body = await (await self.postMessages(messagesBody(stream=False))).json()
        self.assertEqual(
            body["usage"], {"input_tokens": 4, "output_tokens": 1, "cache_read_input_tokens": -1}
        )
        self.upstream.script(Reply(content="x", usage=(4, 1), usageFields={"output_tokens": -2}))
        events = await self.events(messagesBody())
        delta = [p for name, p in events if name == "message_delta"][0]
        self.assertEqual(delta["usage"], {"output_tokens": -2})

    async def test_echo(self) -> None:
        """
        Unscripted, the answer echoes the last user text.
        """
        events = await self.events(messagesBody())
        text = "".join(p["delta"]["text"] for _, p in events if p["type"] == "content_block_delta")
        self.assertEqual(text, "echo: hi there")
        self.assertEqual(self.upstream.requests[0].path, "/v1/messages")

    async def test_errorEnvelope(self) -> None:
        """
        An error reply has Anthropic's envelope by default.
        """
        self.upstream.script(Reply(status=529))
        response = await self.postMessages(messagesBody())
        self.assertEqual(response.code, 529)
        self.assertEqual(
            await response.json(),
            {
                "type": "error",
                "error": {"type": "overloaded_error", "message": "fake upstream error 529"},
            },
        )

    async def test_refusesWhatTheRealAPIRefuses(self) -> None:
        """
        A missing C{anthropic-version}, a missing C{max_tokens}, a system
        role in C{messages} and a thinking budget not below C{max_tokens}
        are 400 C{invalid_request_error}s, and use no scripted reply.
        """
        self.upstream.script(Reply(content="kept"))
        thinking = {"type": "enabled", "budget_tokens": 2048}
        cases = [
            (messagesBody(), {}),
            ({k: v for k, v in messagesBody().items() if k != "max_tokens"}, None),
            ({**messagesBody(), "messages": [{"role": "system", "content": "x"}]}, None),
            ({**messagesBody(), "max_tokens": 2048, "thinking": thinking}, None),
        ]
        for body, headers in cases:
            response = await self.postMessages(body, headers)
            self.assertEqual(response.code, 400)
            self.assertEqual((await response.json())["error"]["type"], "invalid_request_error")
        self.assertEqual(self.upstream.scripted, 1)

    async def test_countTokens(self) -> None:
        """
        C{count_tokens} answers the words of the system text and messages
        plus 10 per tool, without C{max_tokens} and without a scripted
        reply; without C{anthropic-version} it is a 400.
        """
        self.upstream.script(Reply(content="kept"))
        url = self.running.baseUrl + "/messages/count_tokens"
        body = {
            "model": "m",
            "system": "be brief",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a b c"}]}],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        }
        response = await self.http.post(url, json=body, headers={"anthropic-version": "2023-06-01"})
        self.assertEqual(await response.json(), {"input_tokens": 2 + 3 + 10})
        refused = await self.http.post(url, json=body)
        self.assertEqual(refused.code, 400)
        self.assertEqual((await refused.json())["error"]["type"], "invalid_request_error")
        self.assertEqual(self.upstream.scripted, 1)
        self.assertEqual(self.upstream.requests[0].path, "/v1/messages/count_tokens")

    async def test_countHoldAndPadding(self) -> None:
        """
        With C{holdCounts} a count waits for L{FakeUpstream.release} (seen
        in C{countsInFlight} meanwhile); with C{countPadding} its answer is
        still JSON with the count, that many bytes longer, all counted in
        C{countBytesSent}.
        """
        url = self.running.baseUrl + "/messages/count_tokens"
        body = {"model": "m", "messages": [{"role": "user", "content": "a b"}]}
        headers = {"anthropic-version": "2023-06-01"}
        self.upstream.holdCounts = True
        answer = self.http.post(url, json=body, headers=headers)
        await self.upstream.waitForRequests(1)
        self.assertEqual((self.upstream.held, self.upstream.countsInFlight), (1, 1))
        self.upstream.release()
        self.assertEqual(await (await answer).json(), {"input_tokens": 2})
        self.assertEqual(self.upstream.countsInFlight, 0)
        self.upstream.holdCounts = False
        self.upstream.countPadding = 200_000
        sent = self.upstream.countBytesSent
        response = await self.http.post(url, json=body, headers=headers)
        raw = await response.content()
        self.assertEqual(json.loads(raw)["input_tokens"], 2)
        self.assertEqual(len(raw), 200_000 + len(b'{"input_tokens": 2, "padding": ""}'))
        self.assertEqual(self.upstream.countBytesSent - sent, len(raw))
        self.assertEqual(self.upstream.maxCountsInFlight, 1)

    async def test_stallAfter(self) -> None:
        """
        C{stallAfter} sends that many events, then nothing (the connection
        open) until C{release}.
        """
        self.upstream.script(Reply(content=["a", "b"], stallAfter=2))
        response = await self.post(chatBody())
        collected = Collected()
        twoEvents: Deferred[None] = Deferred()

        def collect(data: bytes) -> None:
            collected(data)
            if len(collected.data) >= 2 and not twoEvents.called:
                twoEvents.callback(None)

        done = treq.collect(response, collect)
        await twoEvents
        self.assertEqual(collected.deltas("content"), ["", "a"])
        self.assertEqual(self.upstream.held, 1)
        self.upstream.release()
        await done
        self.assertEqual(collected.deltas("content"), ["", "a", "b"])

    async def test_unusedBaseUrl(self) -> None:
        """
        L{unusedBaseUrl} is a loopback URL whose connections are refused.
        """
        baseUrl = await unusedBaseUrl(self.reactor)
        self.assertTrue(baseUrl.startswith("http://127.0.0.1:"))
        with self.assertRaises(ConnectionRefusedError):
            await self.http.get(baseUrl + "/models")


class FakeUpstreamClockTests(SynchronousTestCase):
    """
    L{FakeUpstream} timing on an injected clock, in memory.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.upstream = FakeUpstream(self.clock)
        self.stub = StubTreq(self.upstream.app.resource())

    def test_delayAndInterval(self) -> None:
        """
        C{delay} holds the headers and C{interval} spaces the writes, on the
        injected reactor.
        """
        self.upstream.script(Reply(content=["a", "b"], delay=5, interval=1))
        d = self.stub.post("http://fake/v1/chat/completions", json=chatBody(), unbuffered=True)
        self.stub.flush()
        self.assertNoResult(d)
        self.clock.advance(5)
        self.stub.flush()
        response = self.successResultOf(d)
        collected = Collected()
        done = self.stub.collect(response, collected)
        self.stub.flush()
        self.assertEqual(len(collected.data), 1)
        self.clock.advance(1)
        self.stub.flush()
        self.assertEqual(collected.deltas("content"), ["", "a"])
        self.clock.pump([1] * 5)
        self.stub.flush()
        self.successResultOf(done)
        self.assertEqual(collected.data[-1], "[DONE]")

    def test_waitForRequestsCancel(self) -> None:
        """
        A cancelled waiter is forgotten; others still fire.
        """
        first = self.upstream.waitForRequests(1)
        second = self.upstream.waitForRequests(1)
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.stub.get("http://fake/v1/models")
        self.stub.flush()
        self.assertEqual(len(self.successResultOf(second)), 1)

    def test_waitersTimeOut(self) -> None:
        """
        Waiting for requests or disconnects that do not come fails with a
        L{TimeoutError} saying what was seen, after the timeout on the
        injected clock, and the waiter is forgotten.
        """
        self.stub.get("http://fake/v1/models")
        self.stub.flush()
        requests = self.upstream.waitForRequests(2, timeout=5)
        disconnects = self.upstream.waitForDisconnects(1)
        self.clock.advance(4.9)
        self.assertNoResult(requests)
        self.clock.advance(0.1)
        failure = self.failureResultOf(requests, TimeoutError)
        self.assertEqual(failure.getErrorMessage(), "waited 5 s for 2, saw 1 request(s)")
        self.assertNoResult(disconnects)
        self.clock.advance(WAIT_TIMEOUT - 5)
        failure = self.failureResultOf(disconnects, TimeoutError)
        self.assertEqual(
            failure.getErrorMessage(), f"waited {WAIT_TIMEOUT:g} s for 1, saw 0 disconnect(s)"
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.stub.get("http://fake/v1/models")
        self.stub.flush()
        self.assertEqual(len(self.upstream.requests), 2)

    def test_waiterFiredInTime(self) -> None:
        """
        A waiter that fires in time leaves no timer behind.
        """
        waiting = self.upstream.waitForRequests(1, timeout=5)
        self.stub.get("http://fake/v1/models")
        self.stub.flush()
        self.assertEqual(len(self.successResultOf(waiting)), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_invalidBody(self) -> None:
        """
        A body that is not a JSON object is a 400 error envelope, recorded.
        """
        d = self.stub.post("http://fake/v1/chat/completions", data=b"nope")
        self.stub.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 400)
        self.assertIsNone(self.upstream.requests[0].body)


def llmRequest(text: str = "hello world", stream: bool = True) -> LLMRequest:
    """
    A one-message request.
    """
    return LLMRequest(model="m", messages=(ChatMessage("user", text),), stream=stream)


class Sink:
    """
    Records sink calls in order.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def content(self, text: str) -> None:
        self.calls.append(("content", text))

    def reasoning(self, text: str) -> None:
        self.calls.append(("reasoning", text))


class ScriptedProviderTests(SynchronousTestCase):
    """
    L{ScriptedProvider}.
    """

    def test_repliesInOrderThenEcho(self) -> None:
        """
        Replies are used in order; then the last user message is echoed.
        The requests are recorded.
        """
        provider = ScriptedProvider(replies=[LLMResponse("one"), LLMResponse("two")])
        results = [
            self.successResultOf(provider.complete(llmRequest(), Sink())).content for _ in range(3)
        ]
        self.assertEqual(results, ["one", "two", "echo: hello world"])
        self.assertEqual(len(provider.requests), 3)
        self.assertEqual(provider.name, "scripted")

    def test_streamsWordPieces(self) -> None:
        """
        When the request streams, reasoning then content reach the sink in
        word pieces; otherwise the sink is untouched.
        """
        provider = ScriptedProvider(
            replies=[LLMResponse("a b", reasoning="hm ok"), LLMResponse("c d")]
        )
        sink = Sink()
        provider.complete(llmRequest(), sink)
        self.assertEqual(
            sink.calls,
            [("reasoning", "hm "), ("reasoning", "ok"), ("content", "a "), ("content", "b")],
        )
        quiet = Sink()
        provider.complete(llmRequest(stream=False), quiet)
        self.assertEqual(quiet.calls, [])

    def test_exception(self) -> None:
        """
        An exception reply fails the call with it.
        """
        error = ProviderError("down")
        provider = ScriptedProvider(replies=[error])
        self.assertIs(self.failureResultOf(provider.complete(llmRequest(), Sink())).value, error)

    def test_deferredReply(self) -> None:
        """
        A Deferred reply is returned as is; its response streams when it
        fires.
        """
        later: Deferred[LLMResponse] = Deferred()
        provider = ScriptedProvider(replies=[later])
        sink = Sink()
        d = provider.complete(llmRequest(), sink)
        self.assertNoResult(d)
        later.callback(LLMResponse("done"))
        self.assertEqual(self.successResultOf(d).content, "done")
        self.assertEqual(sink.calls, [("content", "done")])

    def test_holdAndCancel(self) -> None:
        """
        In hold mode calls stay pending; cancelling one fails it with
        L{CancelledError} and counts it.
        """
        provider = ScriptedProvider(hold=True)
        d = provider.complete(llmRequest(), Sink())
        self.assertNoResult(d)
        self.assertEqual(provider.held, [d])
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual((provider.cancelled, provider.held), (1, []))

    def test_wordPieces(self) -> None:
        """
        L{wordPieces} keeps every character.
        """
        self.assertEqual(wordPieces("  a b  c "), ["  ", "a ", "b  ", "c "])
        self.assertEqual(wordPieces(""), [])


class _LineProtocol(ProcessProtocol):
    def __init__(self) -> None:
        self.firstLine: Deferred[str] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.buffer = b""

    def outReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\n" in self.buffer and not self.firstLine.called:
            self.firstLine.callback(self.buffer.split(b"\n")[0].decode())

    def processEnded(self, reason: Failure) -> None:
        if not self.firstLine.called:
            self.firstLine.errback(reason)
        self.ended.callback(None)


class StandaloneTests(TestCase):
    """
    C{python -m ai_agent.testing}.
    """

    async def test_runsStandalone(self) -> None:
        """
        The module runs a fake upstream on the given port and says where.
        """
        from twisted.internet import reactor

        protocol = _LineProtocol()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        process = reactor.spawnProcess(
            protocol,
            sys.executable,
            [sys.executable, "-m", "ai_agent.testing", "--port", "0"],
            env=env,
        )

        async def stop() -> None:
            try:
                process.signalProcess("TERM")
            except Exception:
                pass
            await protocol.ended

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        line = await protocol.firstLine
        self.assertRegex(line, r"^fake upstream listening on http://127\.0\.0\.1:\d+/v1$")
        baseUrl = line.rsplit(" ", 1)[1]
        pool = HTTPConnectionPool(reactor, persistent=False)
        http = HTTPClient(Agent(reactor, pool=pool))
        response = await http.get(baseUrl + "/models")
        self.assertEqual(response.code, 200)
        await response.content()
        await pool.closeCachedConnections()
