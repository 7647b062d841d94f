"""
The OpenAI headend on a real socket, driven by the real C{openai} SDK, in
front of the real fake upstream.
"""

from __future__ import annotations

import json
import os
from typing import Any

import openai
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http import Request
from twisted.web.test.requesthelper import DummyChannel

from ai_agent.events import ClientToolCall, Finished, FinishReason, ToolStarted, Usage
from ai_agent.headends._request import headerLookup
from ai_agent.headends.openai import ChatEncoder, ChunkEncoder, _dumps, _dumpsPlain
from ai_agent.testing import Reply
from tests._harness import SENTINEL_KEY, inThread, startServer
from tests._hostile import waitUntil

CHAT = "chat.completions"


class _RawClient(Protocol):
    """
    Sends one raw HTTP request and collects what comes back.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = b""
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(None)


def _post(body: dict[str, Any] | bytes, path: str = "/v1/chat/completions") -> bytes:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode() + payload


async def _raw(port: int, request: bytes) -> _RawClient:
    client = _RawClient(request)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    return client


def _user(text: str = "hello") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


class ModelsTests(TestCase):
    """
    C{/v1/models} lists every agent file as a model.
    """

    async def test_list(self) -> None:
        """
        The list has one entry per agent with the four OpenAI fields; the id
        is C{toolName} or the file name without C{.ai}; C{created} is the
        file's modification time, the same on every call.
        """
        server = await startServer(
            self,
            {
                "alpha.ai": "---\ndescription: A\nmodels: fake/m\n---\nA",
                "beta.ai": "---\ntoolName: named\nmodels: fake/m\n---\nB",
            },
        )
        client = server.client()
        first = await inThread(client.models.list)
        second = await inThread(client.models.list)
        self.assertEqual([m.id for m in first.data], ["alpha", "named"])
        self.assertEqual([m.object for m in first.data], ["model", "model"])
        self.assertEqual([m.owned_by for m in first.data], ["ai-agent", "ai-agent"])
        self.assertEqual([m.created for m in first.data], [m.created for m in second.data])
        mtime = int(os.stat(os.path.join(server.directory, "alpha.ai")).st_mtime)
        self.assertEqual(first.data[0].created, mtime)

    async def test_retrieve(self) -> None:
        """
        C{GET /v1/models/{id}} returns one entry; an unknown id is a 404
        that the SDK raises as C{NotFoundError}.
        """
        server = await startServer(self)
        client = server.client()
        model = await inThread(client.models.retrieve, "agent")
        self.assertEqual((model.id, model.object), ("agent", "model"))
        with self.assertRaises(openai.NotFoundError):
            await inThread(client.models.retrieve, "nope")

    async def test_duplicateIds(self) -> None:
        """
        Two agents that would get the same id are told apart with C{-2}.
        """
        server = await startServer(
            self,
            {
                "one.ai": "---\ntoolName: same\nmodels: fake/m\n---\n1",
                "two.ai": "---\ntoolName: same\nmodels: fake/m\n---\n2",
            },
        )
        models = await inThread(server.client().models.list)
        self.assertEqual([m.id for m in models.data], ["same", "same-2"])


class CompletionTests(TestCase):
    """
    Non-streaming and streaming completions have OpenAI's exact shapes.
    """

    async def test_create(self) -> None:
        """
        A plain completion answers with the upstream's text, a
        C{chatcmpl-} id, finish reason C{stop} and the upstream's usage.
        """
        server = await startServer(self)
        server.upstream.script(Reply(content=["Hello", " there"], usage=(11, 2)))
        result = await inThread(
            server.client().chat.completions.create, model="agent", messages=_user()
        )
        self.assertTrue(result.id.startswith("chatcmpl-"))
        self.assertEqual(result.object, "chat.completion")
        self.assertEqual(result.model, "agent")
        self.assertEqual(result.choices[0].message.role, "assistant")
        self.assertEqual(result.choices[0].message.content, "Hello there")
        self.assertEqual(result.choices[0].finish_reason, "stop")
        self.assertEqual(
            (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens),
            (11, 2, 13),
        )

    async def test_agentPromptFirst(self) -> None:
        """
        The upstream sees the agent's prompt as the first system message,
        then the client's system message, then the conversation as real
        messages in order; developer messages become system messages.
        """
        server = await startServer(self)
        messages = [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Use British spelling."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": [{"type": "text", "text": "2+2?"}]},
        ]
        await inThread(server.client().chat.completions.create, model="agent", messages=messages)
        sent = server.upstream.requests[0].body["messages"]
        self.assertEqual(
            [(m["role"], m["content"]) for m in sent],
            [
                ("system", "You are the test agent."),
                ("system", "Be brief."),
                ("system", "Use British spelling."),
                ("user", "hi"),
                ("assistant", "hello"),
                ("user", "2+2?"),
            ],
        )
        self.assertEqual(server.upstream.requests[0].body["model"], "test-model")

    async def test_samplingPassedOn(self) -> None:
        """
        The client's temperature, top_p, max_completion_tokens, stop and
        seed reach the upstream call.
        """
        server = await startServer(self)
        await inThread(
            server.client().chat.completions.create,
            model="agent",
            messages=_user(),
            temperature=0.25,
            top_p=0.5,
            max_completion_tokens=33,
            stop=["END"],
            seed=7,
        )
        body = server.upstream.requests[0].body
        self.assertEqual(
            (body["temperature"], body["top_p"], body["max_tokens"], body["stop"], body["seed"]),
            (0.25, 0.5, 33, ["END"], 7),
        )

    async def test_stream(self) -> None:
        """
        A stream starts with the role chunk, relays each content delta,
        ends with an empty-delta chunk carrying C{finish_reason}, and every
        chunk has the same id and created time; without C{include_usage}
        no chunk carries usage.
        """
        server = await startServer(self)
        server.upstream.script(Reply(content=["a", "b", "c"]))

        def consume() -> list[Any]:
            stream = server.client().chat.completions.create(
                model="agent", messages=_user(), stream=True
            )
            return list(stream)

        chunks = await inThread(consume)
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        self.assertEqual(chunks[0].choices[0].delta.content, "")
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        self.assertEqual(text, "abc")
        self.assertEqual([c.choices[0].delta.content for c in chunks[1:4]], ["a", "b", "c"])
        self.assertEqual(chunks[-1].choices[0].finish_reason, "stop")
        self.assertIsNone(chunks[-1].choices[0].delta.content)
        self.assertEqual(len({c.id for c in chunks}), 1)
        self.assertEqual(len({c.created for c in chunks}), 1)
        self.assertTrue(all(c.usage is None for c in chunks))
        self.assertTrue(all(c.object == "chat.completion.chunk" for c in chunks))

    async def test_streamIncludeUsage(self) -> None:
        """
        With C{stream_options.include_usage}, one last chunk has empty
        C{choices} and the usage; the others carry C{usage: null}.
        """
        server = await startServer(self)
        server.upstream.script(Reply(content=["x", "y"], usage=(5, 2)))

        def consume() -> list[Any]:
            return list(
                server.client().chat.completions.create(
                    model="agent",
                    messages=_user(),
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )

        chunks = await inThread(consume)
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(
            (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens), (5, 2)
        )
        self.assertTrue(all(c.usage is None for c in chunks[:-1]))

    async def test_streamHelper(self) -> None:
        """
        The SDK's C{chat.completions.stream()} helper accumulates the
        stream into a final completion.
        """
        server = await startServer(self)
        server.upstream.script(Reply(content=["Hel", "lo"]))

        def consume() -> Any:
            with server.client().chat.completions.stream(model="agent", messages=_user()) as stream:
                for _ in stream:
                    pass
                return stream.get_final_completion()

        final = await inThread(consume)
        self.assertEqual(final.choices[0].message.content, "Hello")
        self.assertEqual(final.choices[0].finish_reason, "stop")

    async def test_reasoning(self) -> None:
        """
        Upstream reasoning is relayed as C{reasoning_content}: as deltas
        when streaming and as a message field otherwise, never in content.
        """
        server = await startServer(self)
        server.upstream.script(
            Reply(content="42", reasoning=["think", "ing"]),
            Reply(content="42", reasoning="thinking"),
        )

        def consume() -> list[Any]:
            return list(
                server.client().chat.completions.create(
                    model="agent", messages=_user(), stream=True
                )
            )

        chunks = await inThread(consume)
        reasoning = "".join(
            (c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
            for c in chunks
            if c.choices
        )
        self.assertEqual(reasoning, "thinking")
        self.assertEqual("".join(c.choices[0].delta.content or "" for c in chunks), "42")
        result = await inThread(
            server.client().chat.completions.create, model="agent", messages=_user()
        )
        self.assertEqual(result.choices[0].message.content, "42")
        self.assertEqual(result.choices[0].message.model_extra["reasoning_content"], "thinking")

    async def test_unknownModel(self) -> None:
        """
        A chat request for a model that is not served is a 404
        C{model_not_found}, raised by the SDK as C{NotFoundError}.
        """
        server = await startServer(self)
        with self.assertRaises(openai.NotFoundError) as caught:
            await inThread(
                server.client().chat.completions.create, model="missing", messages=_user()
            )
        self.assertEqual(caught.exception.code, "model_not_found")
        self.assertEqual(server.upstream.requests, [])

    async def test_upstreamRejected(self) -> None:
        """
        An upstream that refuses the call before anything streamed gives a
        502 naming the provider, never the key, for both modes.
        """
        server = await startServer(self)
        server.upstream.script(
            Reply(status=401, errorBody={"error": {"message": f"bad key {SENTINEL_KEY}"}}),
            Reply(status=401, errorBody={"error": {"message": f"bad key {SENTINEL_KEY}"}}),
        )
        for stream in (False, True):
            with self.assertRaises(openai.APIStatusError) as caught:
                await inThread(
                    lambda stream=stream: (
                        list(
                            server.client().chat.completions.create(
                                model="agent", messages=_user(), stream=True
                            )
                        )
                        if stream
                        else server.client().chat.completions.create(
                            model="agent", messages=_user()
                        )
                    )
                )
            self.assertEqual(caught.exception.status_code, 502)
            self.assertIn("fake", caught.exception.message)
            self.assertNotIn(SENTINEL_KEY, caught.exception.response.text)

    async def test_midStreamError(self) -> None:
        """
        A failure after content was streamed arrives in-band as
        C{data: {"error": ...}} followed by C{[DONE]}; the SDK raises it.
        """
        server = await startServer(self)
        server.upstream.script(Reply(content=["a", "b", "c"], cutAfter=2))
        port = server.port.getHost().port
        client = await _raw(port, _post({"model": "agent", "messages": _user(), "stream": True}))
        await client.lost.addTimeout(15, reactor)
        body = client.received.split(b"\r\n\r\n", 1)[1]
        self.assertIn(b'data: {"error":', body)
        self.assertIn(b"data: [DONE]", body)
        self.assertLess(body.index(b'{"error":'), body.index(b"[DONE]"))


class ErrorTests(TestCase):
    """
    Client mistakes get OpenAI's error envelope and a 4xx status.
    """

    async def _status(self, request: bytes) -> tuple[int, dict[str, Any], bytes]:
        server = await startServer(self)
        client = await _raw(server.port.getHost().port, request)
        await client.lost.addTimeout(15, reactor)
        head, _, body = client.received.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1])
        if b"chunked" in head.lower():
            body = _dechunk(body)
        return status, json.loads(body), head

    async def test_badJson(self) -> None:
        """
        A body that is not JSON is a 400 C{invalid_request_error}.
        """
        status, body, _ = await self._status(_post(b"{nope"))
        self.assertEqual(status, 400)
        self.assertEqual(body["error"]["type"], "invalid_request_error")
        self.assertEqual(set(body["error"]), {"message", "type", "param", "code"})

    async def test_missingMessages(self) -> None:
        """
        A request without C{messages} is a 400 whose C{param} names it.
        """
        status, body, _ = await self._status(_post({"model": "agent"}))
        self.assertEqual(status, 400)
        self.assertEqual(body["error"]["param"], "messages")

    async def test_wrongType(self) -> None:
        """
        A field of the wrong type is a 400 naming the field.
        """
        status, body, _ = await self._status(
            _post({"model": "agent", "messages": _user(), "temperature": "hot"})
        )
        self.assertEqual((status, body["error"]["param"]), (400, "temperature"))

    async def test_unknownFieldsIgnored(self) -> None:
        """
        Fields this server does not use are ignored, not rejected.
        """
        status, body, _ = await self._status(
            _post(
                {
                    "model": "agent",
                    "messages": _user(),
                    "frequency_penalty": 0.1,
                    "logit_bias": {},
                    "user": "u1",
                    "metadata": {"a": "b"},
                    "parallel_tool_calls": True,
                }
            )
        )
        self.assertEqual(status, 200)
        self.assertEqual(body["object"], "chat.completion")

    async def test_wrongMethod(self) -> None:
        """
        C{GET /v1/chat/completions} is a 405 with an C{Allow} header.
        """
        status, body, head = await self._status(
            b"GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        self.assertEqual(status, 405)
        self.assertIn(b"allow: post", head.lower())
        self.assertEqual(body["error"]["code"], "method_not_allowed")

    async def test_unknownPath(self) -> None:
        """
        An unknown path is a 404 in the OpenAI envelope.
        """
        status, body, _ = await self._status(
            b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        self.assertEqual(status, 404)
        self.assertEqual(body["error"]["type"], "invalid_request_error")

    async def test_health(self) -> None:
        """
        C{GET /health} is a 200 naming the agents served.
        """
        status, body, _ = await self._status(
            b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        self.assertEqual(status, 200)
        self.assertEqual((body["status"], body["agents"]), ("ok", ["agent"]))


class PoolTests(TestCase):
    """
    The pool bounds concurrent runs, refuses past its queue, and a client
    that leaves cancels its run.
    """

    async def test_concurrencyBound(self) -> None:
        """
        With concurrency N, N+k concurrent requests against a slow upstream
        never have more than N upstream calls in flight, and all complete.
        """
        server = await startServer(self, concurrency=2)
        server.upstream.script(*[Reply(content="ok", hold=True) for _ in range(5)])
        client = server.client()
        calls = [
            inThread(client.chat.completions.create, model="agent", messages=_user())
            for _ in range(5)
        ]
        await server.upstream.waitForRequests(2)
        await waitUntil(lambda: server.pool.queuedRuns == 3 and server.upstream.inFlight == 2)

        def drained() -> bool:
            # A reply is held only once its first event is out: release
            # whatever is held now, until every request was answered.
            server.upstream.release()
            return len(server.upstream.requests) == 5 and not server.upstream.inFlight

        await waitUntil(drained)
        results = await gatherResults(calls)
        self.assertEqual([r.choices[0].message.content for r in results], ["ok"] * 5)
        self.assertEqual(server.upstream.maxInFlight, 2)

    async def test_fullQueue(self) -> None:
        """
        With every slot busy and the queue full, a request is answered at
        once with 503 and C{Retry-After}, before anything else is sent.
        """
        server = await startServer(self, concurrency=1, maxQueue=0)
        server.upstream.script(Reply(content="slow", hold=True))
        client = server.client()
        first = inThread(client.chat.completions.create, model="agent", messages=_user())
        await server.upstream.waitForRequests(1)
        with self.assertRaises(openai.APIStatusError) as caught:
            await inThread(client.chat.completions.create, model="agent", messages=_user())
        self.assertEqual(caught.exception.status_code, 503)
        self.assertGreaterEqual(int(caught.exception.response.headers["retry-after"]), 1)
        server.upstream.release()
        await first

    async def test_streamDisconnectClosesUpstream(self) -> None:
        """
        A streaming client that disconnects mid-run gets its upstream call
        closed and its slot freed (how fast is measured by bench/run, not
        here; the lifecycle is pinned on a memory clock in test_stream).
        """
        server = await startServer(self, concurrency=1, streamHeadGrace=0.0)
        server.upstream.script(Reply(content=["a", "b"], hold=True))
        client = await _raw(
            server.port.getHost().port,
            _post({"model": "agent", "messages": _user(), "stream": True}),
        )
        await server.upstream.waitForRequests(1)
        await waitUntil(lambda: b"text/event-stream" in client.received)
        self.assertEqual(server.pool.activeRuns, 1)
        client.transport.loseConnection()
        await server.upstream.waitForDisconnects(1)
        await waitUntil(lambda: server.pool.activeRuns == 0)

    async def test_nonStreamDisconnectClosesUpstream(self) -> None:
        """
        A non-streaming client that disconnects while its run is going
        cancels it: the upstream call is closed and the slot freed.
        """
        server = await startServer(self, concurrency=1)
        server.upstream.script(Reply(content="x", hold=True))
        client = await _raw(
            server.port.getHost().port, _post({"model": "agent", "messages": _user()})
        )
        await server.upstream.waitForRequests(1)
        self.assertEqual(server.pool.activeRuns, 1)
        client.transport.loseConnection()
        await server.upstream.waitForDisconnects(1)
        await waitUntil(lambda: server.pool.activeRuns == 0)

    async def test_queuedDisconnectLeavesQueue(self) -> None:
        """
        A client that disconnects while queued leaves the queue and never
        reaches the upstream.
        """
        server = await startServer(self, concurrency=1)
        server.upstream.script(Reply(content="x", hold=True))
        first = await _raw(
            server.port.getHost().port, _post({"model": "agent", "messages": _user()})
        )
        await server.upstream.waitForRequests(1)
        queued = await _raw(
            server.port.getHost().port, _post({"model": "agent", "messages": _user()})
        )
        await waitUntil(lambda: server.pool.queuedRuns == 1)
        queued.transport.loseConnection()
        await waitUntil(lambda: server.pool.queuedRuns == 0)
        server.upstream.release()
        await first.lost.addTimeout(15, reactor)
        self.assertEqual(len(server.upstream.requests), 1)


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out += rest[:n]
        body = rest[n + 2 :]
    return out


class ResponseFormatTests(TestCase):
    """
    A client's C{response_format} reaches the agent's model; a bad one is a
    400 naming the field.
    """

    async def test_passedOn(self) -> None:
        """
        A JSON schema asked by the SDK reaches the upstream call.
        """
        server = await startServer(self)
        schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
        await inThread(
            server.client().chat.completions.create,
            model="agent",
            messages=_user(),
            response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
        )
        self.assertEqual(
            server.upstream.requests[0].body["response_format"],
            {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
        )

    async def test_invalid(self) -> None:
        """
        An unknown format type is a 400 whose C{param} names it.
        """
        server = await startServer(self)
        with self.assertRaises(openai.BadRequestError) as caught:
            await inThread(
                server.client().chat.completions.create,
                model="agent",
                messages=_user(),
                response_format={"type": "yaml"},
            )
        self.assertEqual(caught.exception.body["param"], "response_format.type")
        self.assertEqual(server.upstream.requests, [])


class ChatEncoderTests(SynchronousTestCase):
    """
    L{ChatEncoder}: the neutral run events as Chat Completions.
    """

    def encoder(self, field: str | None = "reasoning_content") -> ChatEncoder:
        return ChatEncoder(ChunkEncoder("chatcmpl-1", 7, "agent", True, field))

    def test_progressOnItsOwnLine(self) -> None:
        """
        Progress after reasoning that did not end its line starts on a new
        line in the reasoning field, streamed and whole.
        """
        encoder = self.encoder()
        encoder.reasoning("the time first.")
        frame = encoder.progress(ToolStarted("clock__now", "{}"))
        assert frame is not None
        delta = json.loads(frame[len(b"data: ") :])["choices"][0]["delta"]
        self.assertEqual(delta, {"reasoning_content": "\ncalling clock__now {}\n"})
        body = json.loads(encoder.body(Finished(FinishReason.END, Usage(1, 1))))
        self.assertEqual(
            body["choices"][0]["message"]["reasoning_content"],
            "the time first.\ncalling clock__now {}\n",
        )

    def test_finishWords(self) -> None:
        """
        Neutral finish reasons become Chat Completions' words.
        """
        cases = {
            FinishReason.END: "stop",
            FinishReason.STOP_SEQUENCE: "stop",
            FinishReason.MAX_TOKENS: "length",
            FinishReason.TOOL_CALLS: "tool_calls",
            FinishReason.CONTENT_FILTER: "content_filter",
        }
        for neutral, word in cases.items():
            body = json.loads(self.encoder().body(Finished(neutral, Usage())))
            self.assertEqual(body["choices"][0]["finish_reason"], word)
            frames = self.encoder().finish(Finished(neutral, Usage(2, 3)))
            first = json.loads(frames.split(b"\n\n")[0][len(b"data: ") :])
            self.assertEqual(first["choices"][0]["finish_reason"], word)
            usage = json.loads(frames.split(b"\n\n")[1][len(b"data: ") :])["usage"]
            self.assertEqual(usage, {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5})
            self.assertTrue(frames.endswith(b"data: [DONE]\n\n"))

    def test_hiddenReasoning(self) -> None:
        """
        With the reasoning field off, reasoning and progress make no frame
        and stay out of the whole answer.
        """
        encoder = self.encoder(None)
        self.assertIsNone(encoder.reasoning("r"))
        self.assertIsNone(encoder.progress(ToolStarted("t", "{}")))
        body = json.loads(encoder.body(Finished(FinishReason.END, Usage())))
        self.assertEqual(body["choices"][0]["message"], {"role": "assistant", "content": ""})


#: JSON values without floats: what the Chat Completions encoder writes.
_PLAIN_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.text(st.characters() | st.sampled_from('\ud800\udfff\x00\x1f\x7f\u2028"\\/')),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


class EncodingTests(SynchronousTestCase):
    """
    The encoder's fast paths write what the plain ones do.
    """

    @given(_PLAIN_JSON)
    def test_orjsonSameBytes(self, value: Any) -> None:
        """
        A value without floats (any text, lone surrogates and control
        characters included; integers past 64 bits) is written with the
        same bytes by the orjson path as by C{json.dumps}.
        """
        self.assertEqual(_dumpsPlain(value), _dumps(value))

    def test_wholeAnswerMakesNoChunks(self) -> None:
        """
        An encoder for a whole answer makes no chunk for any event, and
        writes the same body as one that does.
        """
        bodies = []
        for frames in (True, False):
            encoder = ChatEncoder(ChunkEncoder("chatcmpl-1", 7, "agent", False), frames=frames)
            made = [
                encoder.reasoning("thinking"),
                encoder.progress(ToolStarted("t", "{}")),
                encoder.content("é\ud800"),
                encoder.toolCall(ClientToolCall(0, "call_1", "f", '{"a":1}')),
            ]
            self.assertEqual([m is None for m in made], [not frames] * 4)
            bodies.append(encoder.body(Finished(FinishReason.TOOL_CALLS, Usage(1, 2))))
        self.assertEqual(bodies[0], bodies[1])
        self.assertIn("\ufffd".encode(), bodies[0])

    def test_headerLookup(self) -> None:
        """
        L{headerLookup} answers as the request's C{getHeader}: the last
        value of a header, whatever the case it was sent in, or L{None}.
        """
        request = Request(DummyChannel())
        request.requestHeaders.addRawHeader(b"X-OpenWebUI-Chat-Id", b"1")
        request.requestHeaders.addRawHeader(b"x-openwebui-chat-id", b"2")
        request.requestHeaders.addRawHeader(b"user-agent", b"ua")
        lookup = headerLookup(request)
        for name in (b"x-openwebui-chat-id", b"user-agent", b"x-missing"):
            self.assertEqual(lookup(name), request.getHeader(name))
        self.assertEqual(lookup(b"x-openwebui-chat-id"), b"2")
