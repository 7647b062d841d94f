# -*- test-case-name: tests.test_testing -*-
"""
Test doubles shipped with the package, for our tests and anyone else's.

  - L{FakeUpstream}: a real HTTP server (Klein) speaking both OpenAI Chat
    Completions (C{POST /v1/chat/completions}) and Anthropic Messages
    (C{POST /v1/messages}), whose answers are scripted with L{Reply} values,
    and which records what it received, how many calls ran at once and when
    clients went away; L{startFakeUpstream} listens on a loopback port.
    C{python -m ai_agent.testing --port N} runs one standalone.
  - L{ScriptedProvider}: an in-memory L{ai_agent.providers.Provider}.

The faults an upstream can show, and how to script each:

  - connection refused: L{unusedBaseUrl} (a port nobody listens on);
  - accepted, then silent: C{Reply(delay=...)} longer than the client waits;
  - rate-limited: C{Reply(status=429, headers={"Retry-After": "2"})};
  - failing: C{Reply(status=500)}, C{Reply(status=503)};
  - a stream cut without its end: C{Reply(cutAfter=N)};
  - an invalid chunk: C{Reply(rawChunks=[...])};
  - a stall mid-stream: C{Reply(stallAfter=N)} (released by
    L{FakeUpstream.release} or by the client going away).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import deque
from typing import Any, Callable, ClassVar, Mapping, Sequence, cast
from typing import Protocol as TypingProtocol

import attrs
from klein import Klein
from twisted.internet import defer
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IReactorTCP, IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.server import Request, Site

from ai_agent.connections import TrackingFactory
from ai_agent.providers._base import DeltaSink, LLMRequest, LLMResponse


class _Clock(TypingProtocol):
    """
    The part of L{IReactorTime} used here (typed for mypy without the zope
    plugin).
    """

    def seconds(self) -> float: ...


_WORD = re.compile(r"\S+\s*|\s+")

#: Seconds L{FakeUpstream.waitForRequests} and
#: L{FakeUpstream.waitForDisconnects} wait by default before failing.
WAIT_TIMEOUT = 30.0


def wordPieces(text: str) -> list[str]:
    """
    Split C{text} into word-sized pieces (each word with the whitespace after
    it) whose concatenation is C{text}.
    """
    return _WORD.findall(text)


@attrs.frozen
class RecordedRequest:
    """
    One request the fake upstream received.

    @ivar headers: lower-case header names to values (repeated headers are
        joined with C{", "}).
    @ivar body: the parsed JSON body, or L{None} when there was none or it
        was not JSON.
    """

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any


@attrs.frozen
class Reply:
    """
    How the fake upstream answers one chat completion.

    @ivar content: the answer; a string is streamed word by word, a sequence
        is streamed as the given pieces.
    @ivar reasoning: like C{content}, sent as C{delta.reasoning_content}
        (C{message.reasoning_content} when not streaming), before the content.
    @ivar toolCalls: C{(name, arguments)} pairs; arguments as a JSON text or
        a mapping.  Streamed with C{index} and C{id}, the arguments split into
        two or more pieces.
    @ivar finishReason: L{None} for C{tool_calls} when there are tool calls,
        else C{stop}.
    @ivar usage: C{(prompt, completion)} tokens; L{None} for the number of
        words across the request's messages and the number of content pieces.
    @ivar usageFields: fields of the usage object as sent, replacing the
        counts of the same name or added beside them (e.g.
        C{{"prompt_tokens": -5}}, or C{{"cache_read_input_tokens": 1.5}} in
        Anthropic mode): an upstream reporting impossible usage.
    @ivar status: the HTTP status; anything but 200 answers with C{errorBody}.
    @ivar errorBody: bytes, text, or a JSON value; L{None} for an OpenAI error
        envelope.
    @ivar headers: extra response headers (e.g. C{Retry-After}).
    @ivar delay: seconds before the first byte (the response headers).
    @ivar interval: seconds between writes.
    @ivar splitBytes: write the response body in pieces of this many bytes,
        splitting SSE events and UTF-8 characters.
    @ivar hold: after the headers and the first event (the role chunk, or
        C{message_start}; not streaming, after the headers), wait for
        L{FakeUpstream.release}.
    @ivar stallAfter: after this many SSE events of a streamed reply, go
        silent (keeping the connection open) until L{FakeUpstream.release}.
    @ivar cutAfter: close the connection after this many SSE events (the role
        chunk or C{message_start} counts), without the stream's end
        (C{[DONE]}, or C{message_stop}).
    @ivar rawChunks: send these bytes verbatim as the body instead.

    In Anthropic mode, C{reasoning} becomes a signed thinking block, tool
    calls become C{tool_use} blocks, and C{finishReason} is translated
    (C{stop} → C{end_turn}, C{length} → C{max_tokens}, C{tool_calls} →
    C{tool_use}; other values are sent as written).
    """

    content: str | Sequence[str] = ""
    reasoning: str | Sequence[str] = ""
    toolCalls: Sequence[tuple[str, Mapping[str, Any] | str]] = ()
    finishReason: str | None = None
    usage: tuple[int, int] | None = None
    usageFields: Mapping[str, Any] = attrs.field(factory=dict)
    status: int = 200
    errorBody: Any = None
    headers: Mapping[str, str] = attrs.field(factory=dict)
    delay: float = 0
    interval: float = 0
    splitBytes: int | None = None
    hold: bool = False
    cutAfter: int | None = None
    rawChunks: Sequence[bytes] | None = None
    stallAfter: int | None = None

    def contentPieces(self) -> list[str]:
        """
        The streamed pieces of the content.
        """
        return _asPieces(self.content)

    def reasoningPieces(self) -> list[str]:
        """
        The streamed pieces of the reasoning.
        """
        return _asPieces(self.reasoning)


def _asPieces(value: str | Sequence[str]) -> list[str]:
    if isinstance(value, str):
        return wordPieces(value)
    return list(value)


def _messageText(message: Any) -> str:
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _lastUserText(messages: Sequence[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _messageText(message)
    return ""


def _waiter(waiters: list[Deferred[Any]]) -> Deferred[Any]:
    """
    A new Deferred in C{waiters} that leaves it when cancelled.
    """

    def cancel(d: Deferred[Any]) -> None:
        if d in waiters:
            waiters.remove(d)

    d: Deferred[Any] = Deferred(canceller=cancel)
    waiters.append(d)
    return d


@attrs.define(slots=False, eq=False)
class FakeUpstream:
    """
    An OpenAI-compatible and Anthropic-compatible upstream: C{GET
    /v1/models}, C{POST /v1/chat/completions} and C{POST /v1/messages},
    streamed or not, and C{POST /v1/messages/count_tokens}.  Both kinds of
    call take their replies from the same script.

    Replies queued with L{script} are used in order (those queued with
    L{scriptFor} first, for the calls they match); with none left the
    answer is C{"echo: "} and the text of the last user message, streamed
    word by word.

    @ivar reactor: schedules delays and intervals.
    @ivar models: the model ids C{/v1/models} lists.
    @ivar requests: every request received, in order.
    @ivar inFlight: chat completions being answered now.
    @ivar maxInFlight: the most chat completions answered at once.
    @ivar disconnects: chat completions (and padded token counts) whose
        client went away before the response finished.
    @ivar disconnectTimes: when each of those happened (C{reactor.seconds()}).
    @ivar lastDisconnectAt: the last of C{disconnectTimes}, or L{None}.
    @ivar holdCounts: hold each token count after its request arrived
        until L{release} (counted by L{held}).
    @ivar countPadding: make each token count's answer this many bytes
        longer (a JSON string field, written 64 KiB per turn of the reactor
        until it is whole or the client went away): an upstream answering
        too much.
    @ivar countsInFlight: token counts being answered now.
    @ivar maxCountsInFlight: the most token counts answered at once.
    @ivar countBytesSent: the bytes of count answers written so far.
    """

    reactor: IReactorTime
    models: Sequence[str] = ("fake-model",)
    requests: list[RecordedRequest] = attrs.field(factory=list, init=False)
    inFlight: int = attrs.field(default=0, init=False)
    maxInFlight: int = attrs.field(default=0, init=False)
    disconnects: int = attrs.field(default=0, init=False)
    disconnectTimes: list[float] = attrs.field(factory=list, init=False)
    lastDisconnectAt: float | None = attrs.field(default=None, init=False)
    holdCounts: bool = attrs.field(default=False, init=False)
    countPadding: int = attrs.field(default=0, init=False)
    countsInFlight: int = attrs.field(default=0, init=False)
    maxCountsInFlight: int = attrs.field(default=0, init=False)
    countBytesSent: int = attrs.field(default=0, init=False)
    _script: deque[Reply] = attrs.field(factory=deque, init=False)
    _matched: list[tuple[Callable[[Mapping[str, Any]], bool], deque[Reply]]] = attrs.field(
        factory=list, init=False
    )
    _held: list[Deferred[None]] = attrs.field(factory=list, init=False)
    _requestWaiters: list[tuple[int, Deferred[Any]]] = attrs.field(factory=list, init=False)
    _disconnectWaiters: list[tuple[int, Deferred[Any]]] = attrs.field(factory=list, init=False)
    _counter: int = attrs.field(default=0, init=False)

    app: ClassVar[Klein] = Klein()

    # Controls.

    def script(self, *replies: Reply) -> None:
        """
        Queue replies for the next chat completions, in order.
        """
        self._script.extend(replies)

    def scriptFor(self, match: Callable[[Mapping[str, Any]], bool], *replies: Reply) -> None:
        """
        Queue replies for the next calls whose JSON body C{match} accepts,
        in order, ahead of the general script (whose order is then kept
        for the other calls): for a client that sends background calls
        (titles) at the same time as its turn.
        """
        self._matched.append((match, deque(replies)))

    @property
    def scripted(self) -> int:
        """
        How many queued replies are left (L{scriptFor}'s included).
        """
        return len(self._script) + sum(len(replies) for _, replies in self._matched)

    @property
    def held(self) -> int:
        """
        How many replies are waiting for L{release}.
        """
        return len(self._held)

    def release(self) -> None:
        """
        Let every held reply continue.
        """
        held, self._held = self._held, []
        for d in held:
            d.callback(None)

    def waitForRequests(
        self, n: int, timeout: float = WAIT_TIMEOUT
    ) -> Deferred[list[RecordedRequest]]:
        """
        Fire with L{requests} once at least C{n} requests were received;
        fail with L{defer.TimeoutError} after C{timeout} seconds.
        """
        if len(self.requests) >= n:
            return succeed(self.requests)
        return self._wait(
            self._requestWaiters, n, timeout, lambda: f"{len(self.requests)} request(s)"
        )

    def waitForDisconnects(self, n: int, timeout: float = WAIT_TIMEOUT) -> Deferred[int]:
        """
        Fire with L{disconnects} once at least C{n} clients went away early;
        fail with L{defer.TimeoutError} after C{timeout} seconds.
        """
        if self.disconnects >= n:
            return succeed(self.disconnects)
        return self._wait(
            self._disconnectWaiters, n, timeout, lambda: f"{self.disconnects} disconnect(s)"
        )

    def _wait(
        self,
        waiters: list[tuple[int, Deferred[Any]]],
        n: int,
        timeout: float,
        seen: Callable[[], str],
    ) -> Deferred[Any]:
        def cancel(d: Deferred[Any]) -> None:
            waiters[:] = [(count, other) for count, other in waiters if other is not d]

        def timedOut(result: object, seconds: float) -> Any:
            raise defer.TimeoutError(f"waited {seconds:g} s for {n}, saw {seen()}")

        d: Deferred[Any] = Deferred(canceller=cancel)
        waiters.append((n, d))
        return d.addTimeout(timeout, self.reactor, onTimeoutCancel=timedOut)

    @staticmethod
    def _notify(waiters: list[tuple[int, Deferred[Any]]], count: int, value: Any) -> None:
        ready = [d for n, d in waiters if count >= n]
        waiters[:] = [(n, d) for n, d in waiters if count < n]
        for d in ready:
            d.callback(value)

    # Routes.

    @app.route("/v1/models", methods=["GET"])
    def listModels(self, request: Request) -> bytes:
        """
        The configured models as an OpenAI model list.
        """
        self._record(request, None)
        request.setHeader(b"content-type", b"application/json")
        created = int(self.now())
        return json.dumps(
            {
                "object": "list",
                "data": [
                    {"id": model, "object": "model", "created": created, "owned_by": "fake"}
                    for model in self.models
                ],
            }
        ).encode()

    @app.route("/v1/chat/completions", methods=["POST"])
    async def chatCompletions(self, request: Request) -> bytes | None:
        """
        Answer one chat completion with the next scripted L{Reply}.
        """
        raw = request.content.read() if request.content is not None else b""
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self._record(request, body)
        if not isinstance(body, dict):
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(_envelope("the body is not a JSON object", 400)).encode()

        await self._answer(request, body, _OPENAI)
        return None

    @app.route("/v1/messages", methods=["POST"])
    async def messages(self, request: Request) -> bytes | None:
        """
        Answer one Anthropic Messages call with the next scripted L{Reply},
        after the checks the real API makes of a request's shape.
        """
        raw = request.content.read() if request.content is not None else b""
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self._record(request, body)
        problem = _anthropicProblem(request, body)
        if problem is not None:
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(_anthropicEnvelope(problem, 400)).encode()
        await self._answer(request, body, _ANTHROPIC)
        return None

    @app.route("/v1/messages/count_tokens", methods=["POST"])
    async def countTokens(self, request: Request) -> bytes | None:
        """
        Answer an Anthropic token count: the words of the C{system} text
        and the messages, plus 10 for each tool (after the checks the real
        API makes, but for C{max_tokens}, which a count has not); held
        while L{holdCounts}, padded by L{countPadding}.
        """
        raw = request.content.read() if request.content is not None else b""
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        # Held before it is recorded: a test that waits for the request can
        # release it at once.
        hold = self._hold() if self.holdCounts else None
        self.countsInFlight += 1
        self.maxCountsInFlight = max(self.maxCountsInFlight, self.countsInFlight)
        self._record(request, body)
        try:
            if hold is not None:
                await hold
            answer = self._count(request, body)
            if self.countPadding and answer.startswith(b'{"input_tokens"'):
                await self._padded(request, answer)
                return None
            self.countBytesSent += len(answer)
            return answer
        finally:
            self.countsInFlight -= 1

    async def _padded(self, request: Request, answer: bytes) -> None:
        gone: list[Failure] = []

        def lost(reason: Failure) -> None:
            gone.append(reason)
            self._clientGone(self.now())

        request.notifyFinish().addErrback(lost)
        opening = answer[:-1] + b', "padding": "'
        request.write(opening)
        self.countBytesSent += len(opening)
        left = self.countPadding
        while left > 0 and not gone:
            piece = b"x" * min(left, 65536)
            request.write(piece)
            self.countBytesSent += len(piece)
            left -= len(piece)
            await self._sleep(0)
        if not gone:
            request.write(b'"}')
            self.countBytesSent += 2

    def _count(self, request: Request, body: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        problem = _anthropicProblem(
            request, {"max_tokens": 1, **body} if isinstance(body, dict) else body
        )
        if problem is not None:
            request.setResponseCode(400)
            return json.dumps(_anthropicEnvelope(problem, 400)).encode()
        assert isinstance(body, dict)
        system = body.get("system")
        words = len(system.split()) if isinstance(system, str) else 0
        words += sum(len(_messageText(message).split()) for message in body["messages"])
        tools = body.get("tools")
        words += 10 * len(tools) if isinstance(tools, list) else 0
        return json.dumps({"input_tokens": words}).encode()

    async def _answer(self, request: Request, body: dict[str, Any], wire: str) -> None:
        reply = self._nextReply(body)
        self._counter += 1
        exchange = _Exchange(self, request, body, reply, self._counter, wire)
        self.inFlight += 1
        self.maxInFlight = max(self.maxInFlight, self.inFlight)
        try:
            await exchange.run()
        finally:
            self.inFlight -= 1
            exchange.ended()

    # Helpers.

    def _nextReply(self, body: dict[str, Any]) -> Reply:
        for match, replies in self._matched:
            if replies and match(body):
                return replies.popleft()
        return self._script.popleft() if self._script else self._echo(body)

    def _record(self, request: Request, body: Any) -> None:
        headers = {
            name.decode("latin-1").lower(): ", ".join(v.decode("latin-1") for v in values)
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        self.requests.append(
            RecordedRequest(
                method=request.method.decode("ascii"),
                path=request.path.decode("utf-8", "replace"),
                headers=headers,
                body=body,
            )
        )
        self._notify(self._requestWaiters, len(self.requests), self.requests)

    def _echo(self, body: Mapping[str, Any]) -> Reply:
        messages = body.get("messages")
        text = _lastUserText(messages if isinstance(messages, list) else [])
        return Reply(content="echo: " + text)

    def _sleep(self, seconds: float) -> Deferred[None]:
        return deferLater(self.reactor, seconds, lambda: None)

    def _hold(self) -> Deferred[None]:
        return _waiter(cast(list[Deferred[Any]], self._held))

    def now(self) -> float:
        """
        The time on the injected reactor.
        """
        return cast(_Clock, self.reactor).seconds()

    def _clientGone(self, now: float) -> None:
        self.disconnects += 1
        self.disconnectTimes.append(now)
        self.lastDisconnectAt = now
        self._notify(self._disconnectWaiters, self.disconnects, self.disconnects)


def _envelope(message: str, status: int) -> dict[str, Any]:
    errorType = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
    }.get(status, "server_error")
    return {"error": {"message": message, "type": errorType, "param": None, "code": None}}


def _anthropicEnvelope(message: str, status: int) -> dict[str, Any]:
    errorType = {
        400: "invalid_request_error",
        401: "authentication_error",
        402: "billing_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        504: "timeout_error",
        529: "overloaded_error",
    }.get(status, "api_error")
    return {"type": "error", "error": {"type": errorType, "message": message}}


def _anthropicProblem(request: Request, body: Any) -> str | None:
    """
    Why the real Messages API would refuse this request with a 400, or
    L{None}.
    """
    if not isinstance(body, dict):
        return "the body is not a JSON object"
    if not any(v.strip() for v in request.requestHeaders.getRawHeaders(b"anthropic-version", [])):
        return "the anthropic-version header is required"
    maxTokens = body.get("max_tokens")
    if not isinstance(maxTokens, int) or maxTokens < 1:
        return "max_tokens: field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for position, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"messages.{position}.role: must be user or assistant"
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            return "thinking.budget_tokens: must be at least 1024"
        if budget >= maxTokens:
            return "max_tokens must be greater than thinking.budget_tokens"
    return None


def _sse(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload).encode("utf-8") + b"\n\n"


def _namedSSE(payload: Mapping[str, Any]) -> bytes:
    """
    An Anthropic stream event: its C{type} as the SSE event name.
    """
    return (
        b"event: "
        + str(payload["type"]).encode("ascii")
        + b"\ndata: "
        + json.dumps(payload).encode("utf-8")
        + b"\n\n"
    )


_OPENAI, _ANTHROPIC = "openai", "anthropic"

_ANTHROPIC_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


@attrs.define(eq=False)
class _Exchange:
    """
    One chat completion being answered.
    """

    upstream: FakeUpstream
    request: Request
    body: Mapping[str, Any]
    reply: Reply
    number: int
    wire: str = _OPENAI
    _cutting: bool = attrs.field(default=False, init=False)
    _running: bool = attrs.field(default=True, init=False)
    _lostAt: float | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self.request.notifyFinish().addErrback(self._lost)

    def _lost(self, reason: Failure) -> None:
        if self._cutting:
            return
        self._lostAt = self.upstream.now()
        if not self._running:
            self.upstream._clientGone(self._lostAt)

    def ended(self) -> None:
        """
        The handler is done (or was cancelled, when the client went away):
        a client gone early is counted now, after L{FakeUpstream.inFlight}
        went down.
        """
        self._running = False
        if self._lostAt is not None:
            self.upstream._clientGone(self._lostAt)

    async def run(self) -> None:
        reply = self.reply
        if reply.delay > 0:
            await self.upstream._sleep(reply.delay)
        for name, value in reply.headers.items():
            self.request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
        if reply.status != 200:
            await self._error()
        elif reply.rawChunks is not None:
            await self._raw(reply.rawChunks)
        elif self.body.get("stream"):
            await self._stream()
        else:
            await self._complete()

    # The shapes of a response.

    async def _error(self) -> None:
        reply = self.reply
        self.request.setResponseCode(reply.status)
        errorBody = reply.errorBody
        if errorBody is None:
            message = f"fake upstream error {reply.status}"
            if self.wire == _ANTHROPIC:
                errorBody = _anthropicEnvelope(message, reply.status)
            else:
                errorBody = _envelope(message, reply.status)
        if isinstance(errorBody, bytes):
            data = errorBody
        elif isinstance(errorBody, str):
            data = errorBody.encode("utf-8")
        else:
            data = json.dumps(errorBody).encode("utf-8")
            self.request.setHeader(b"content-type", b"application/json")
        self.request.setHeader(b"content-length", b"%d" % (len(data),))
        await self._write([data])

    async def _raw(self, chunks: Sequence[bytes]) -> None:
        streaming = bool(self.body.get("stream"))
        self._streamHeaders() if streaming else self._jsonHeaders()
        self.request.write(b"")
        if self.reply.hold:
            await self.upstream._hold()
        await self._write(list(chunks))
        if self.reply.cutAfter is not None:
            await self._cut()

    async def _complete(self) -> None:
        reply = self.reply
        if self.wire == _ANTHROPIC:
            data = json.dumps(self._anthropicMessage()).encode("utf-8")
        else:
            data = self._chatCompletion()
        self._jsonHeaders()
        self.request.setHeader(b"content-length", b"%d" % (len(data),))
        if reply.hold:
            self.request.write(b"")
            await self.upstream._hold()
        await self._write([data])

    def _chatCompletion(self) -> bytes:
        reply = self.reply
        message: dict[str, Any] = {"role": "assistant", "content": "".join(reply.contentPieces())}
        reasoning = "".join(reply.reasoningPieces())
        if reasoning:
            message["reasoning_content"] = reasoning
        calls = self._toolCalls()
        if calls:
            message["tool_calls"] = [
                {
                    "id": callId,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
                for callId, name, arguments in calls
            ]
            if not message["content"]:
                message["content"] = None
        return json.dumps(
            {
                **self._envelopeFields("chat.completion"),
                "choices": [
                    {"index": 0, "message": message, "finish_reason": self._finishReason()}
                ],
                "usage": self._usage(),
            }
        ).encode("utf-8")

    async def _stream(self) -> None:
        reply = self.reply
        self._streamHeaders()
        if self.wire == _ANTHROPIC:
            events = self._anthropicEvents()
        else:
            events = self._events()
            events.append(b"data: [DONE]\n\n")
        limit = reply.cutAfter
        if limit is not None:
            events = events[:limit]
        stall = 1 if reply.hold else reply.stallAfter
        if stall is not None:
            self.request.write(b"")
            await self._write(events[:stall])
            await self.upstream._hold()
            events = events[stall:]
        await self._write(events)
        if limit is not None:
            await self._cut()

    # Pieces.

    def _events(self) -> list[bytes]:
        reply = self.reply
        events = [self._chunk({"role": "assistant", "content": ""})]
        for piece in reply.reasoningPieces():
            events.append(self._chunk({"reasoning_content": piece}))
        for piece in reply.contentPieces():
            events.append(self._chunk({"content": piece}))
        for index, (callId, name, arguments) in enumerate(self._toolCalls()):
            events.append(
                self._chunk(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "id": callId,
                                "type": "function",
                                "function": {"name": name, "arguments": ""},
                            }
                        ]
                    }
                )
            )
            middle = max(1, len(arguments) // 2)
            for piece in (arguments[:middle], arguments[middle:]):
                events.append(
                    self._chunk(
                        {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                    )
                )
        events.append(self._chunk({}, self._finishReason()))
        options = self.body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            events.append(
                _sse(
                    {
                        **self._envelopeFields("chat.completion.chunk"),
                        "choices": [],
                        "usage": self._usage(),
                    }
                )
            )
        return events

    def _anthropicEvents(self) -> list[bytes]:
        reply = self.reply
        prompt, completion = self._tokens()
        events = [
            _namedSSE(
                {
                    "type": "message_start",
                    "message": {
                        "id": f"msg_fake_{self.number}",
                        "type": "message",
                        "role": "assistant",
                        "model": str(self.body.get("model", "")),
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {"input_tokens": prompt, "output_tokens": 1},
                    },
                }
            ),
            _namedSSE({"type": "ping"}),
        ]
        index = 0

        def block(start: Mapping[str, Any], deltas: Sequence[Mapping[str, Any]]) -> None:
            nonlocal index
            events.append(
                _namedSSE({"type": "content_block_start", "index": index, "content_block": start})
            )
            for delta in deltas:
                events.append(
                    _namedSSE({"type": "content_block_delta", "index": index, "delta": delta})
                )
            events.append(_namedSSE({"type": "content_block_stop", "index": index}))
            index += 1

        thinking = reply.reasoningPieces()
        if thinking:
            block(
                # The API opens a thinking block with an empty signature,
                # which a signature_delta fills in before the block stops.
                {"type": "thinking", "thinking": "", "signature": ""},
                [{"type": "thinking_delta", "thinking": piece} for piece in thinking]
                + [{"type": "signature_delta", "signature": self._signature()}],
            )
        content = reply.contentPieces()
        if content:
            block(
                {"type": "text", "text": ""},
                [{"type": "text_delta", "text": piece} for piece in content],
            )
        for callId, name, arguments in self._toolCalls():
            middle = max(1, len(arguments) // 2)
            block(
                {"type": "tool_use", "id": callId, "name": name, "input": {}},
                [
                    {"type": "input_json_delta", "partial_json": piece}
                    for piece in (arguments[:middle], arguments[middle:])
                ],
            )
        events.append(
            _namedSSE(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": self._anthropicStop(), "stop_sequence": None},
                    "usage": {"output_tokens": completion, **reply.usageFields},
                }
            )
        )
        events.append(_namedSSE({"type": "message_stop"}))
        return events

    def _anthropicMessage(self) -> dict[str, Any]:
        reply = self.reply
        content: list[dict[str, Any]] = []
        thinking = "".join(reply.reasoningPieces())
        if thinking:
            content.append(
                {"type": "thinking", "thinking": thinking, "signature": self._signature()}
            )
        text = "".join(reply.contentPieces())
        if text:
            content.append({"type": "text", "text": text})
        for callId, name, arguments in self._toolCalls():
            content.append(
                {"type": "tool_use", "id": callId, "name": name, "input": json.loads(arguments)}
            )
        prompt, completion = self._tokens()
        return {
            "id": f"msg_fake_{self.number}",
            "type": "message",
            "role": "assistant",
            "model": str(self.body.get("model", "")),
            "content": content,
            "stop_reason": self._anthropicStop(),
            "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": completion, **reply.usageFields},
        }

    def _anthropicStop(self) -> str:
        reason = self._finishReason()
        return _ANTHROPIC_STOP.get(reason, reason)

    def _signature(self) -> str:
        return f"fake-signature-{self.number}"

    def _chunk(self, delta: Mapping[str, Any], finishReason: str | None = None) -> bytes:
        return _sse(
            {
                **self._envelopeFields("chat.completion.chunk"),
                "choices": [{"index": 0, "delta": dict(delta), "finish_reason": finishReason}],
            }
        )

    def _envelopeFields(self, kind: str) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-fake-{self.number}",
            "object": kind,
            "created": int(self.upstream.now()),
            "model": str(self.body.get("model", "")),
        }

    def _toolCalls(self) -> list[tuple[str, str, str]]:
        prefix = "toolu" if self.wire == _ANTHROPIC else "call"
        return [
            (
                f"{prefix}_{self.number}_{index}",
                name,
                arguments if isinstance(arguments, str) else json.dumps(dict(arguments)),
            )
            for index, (name, arguments) in enumerate(self.reply.toolCalls)
        ]

    def _finishReason(self) -> str:
        if self.reply.finishReason is not None:
            return self.reply.finishReason
        return "tool_calls" if self.reply.toolCalls else "stop"

    def _tokens(self) -> tuple[int, int]:
        if self.reply.usage is not None:
            return self.reply.usage
        messages = self.body.get("messages")
        prompt = sum(
            len(_messageText(message).split())
            for message in (messages if isinstance(messages, list) else [])
        )
        system = self.body.get("system")
        if isinstance(system, str):
            prompt += len(system.split())
        return prompt, len(self.reply.contentPieces())

    def _usage(self) -> dict[str, Any]:
        prompt, completion = self._tokens()
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            **self.reply.usageFields,
        }

    # Writing.

    def _streamHeaders(self) -> None:
        self.request.setHeader(b"content-type", b"text/event-stream")
        self.request.setHeader(b"cache-control", b"no-cache")

    def _jsonHeaders(self) -> None:
        self.request.setHeader(b"content-type", b"application/json")

    async def _write(self, pieces: Sequence[bytes]) -> None:
        """
        Write C{pieces} (re-split by C{splitBytes}), C{interval} apart.
        """
        size = self.reply.splitBytes
        if size is not None:
            data = b"".join(pieces)
            pieces = [data[i : i + size] for i in range(0, len(data), size)]
        for position, piece in enumerate(pieces):
            if position and self.reply.interval > 0:
                await self.upstream._sleep(self.reply.interval)
            self.request.write(piece)

    async def _cut(self) -> None:
        """
        Close the connection after what was written, without finishing the
        response, and wait for it to be gone.
        """
        self._cutting = True
        cast(Any, self.request.channel).transport.loseConnection()
        gone = self.request.notifyFinish()
        gone.addErrback(lambda reason: None)
        await gone


class _QuietSite(Site):
    """
    A L{Site} without the access log.
    """

    def log(self, request: Any) -> None:
        pass


@attrs.define(eq=False)
class RunningFakeUpstream:
    """
    A L{FakeUpstream} listening on a port.

    @ivar baseUrl: the C{/v1} root to configure a provider with.
    """

    upstream: FakeUpstream
    port: int
    baseUrl: str
    _listening: IListeningPort = attrs.field(repr=False)
    _factory: TrackingFactory = attrs.field(repr=False)

    def stop(self) -> Deferred[None]:
        """
        Stop listening and drop the open connections (held replies included).
        """
        stopped = Deferred.fromCoroutine(self._stop())
        return stopped

    async def _stop(self) -> None:
        stopped = cast(Any, self._listening).stopListening()
        if stopped is not None:
            await stopped
        await self._factory.dropConnections()


def startFakeUpstream(
    reactor: IReactorTCP,
    port: int = 0,
    interface: str = "127.0.0.1",
    upstream: FakeUpstream | None = None,
) -> Deferred[RunningFakeUpstream]:
    """
    Serve a L{FakeUpstream} over HTTP.

    @param reactor: provides L{IReactorTCP} and L{IReactorTime}.
    @param port: C{0} for any free port.
    @param upstream: the upstream to serve; a new one by default.
    """
    if upstream is None:
        upstream = FakeUpstream(cast(IReactorTime, reactor))
    site = _QuietSite(upstream.app.resource(), parsePOSTFormSubmission=False, reactor=reactor)
    factory = TrackingFactory(site)
    endpoint = TCP4ServerEndpoint(reactor, port, interface=interface)

    def listening(listening: IListeningPort) -> RunningFakeUpstream:
        actualPort = cast(int, cast(Any, listening).getHost().port)
        host = interface if ":" not in interface else f"[{interface}]"
        return RunningFakeUpstream(
            upstream=upstream,
            port=actualPort,
            baseUrl=f"http://{host}:{actualPort}/v1",
            listening=listening,
            factory=factory,
        )

    return endpoint.listen(factory).addCallback(listening)


def unusedBaseUrl(reactor: IReactorTCP, interface: str = "127.0.0.1") -> Deferred[str]:
    """
    The C{/v1} root of a loopback port that was free a moment ago and that
    nobody listens on now: connecting to it is refused.
    """

    def stop(running: RunningFakeUpstream) -> Deferred[str]:
        return running.stop().addCallback(lambda _: running.baseUrl)

    return startFakeUpstream(reactor, 0, interface).addCallback(stop)


# The in-memory provider.

ScriptedReply = LLMResponse | BaseException | Deferred[LLMResponse]


@attrs.define(eq=False)
class ScriptedProvider:
    """
    An in-memory L{ai_agent.providers.Provider} for fast unit tests.

    Each call takes the next of C{replies}: an L{LLMResponse} (its reasoning
    then its content are streamed into the sink word by word when the request
    streams), an exception (the call fails with it) or a L{Deferred} the test
    fires (its response is streamed the same way).  With no replies left the
    answer is C{"echo: "} and the last user message.

    @ivar hold: leave every call pending (see L{held}); cancelling one counts
        in L{cancelled}.
    @ivar requests: every request received, in order.
    @ivar held: the pending Deferreds of held calls.
    @ivar cancelled: how many held calls were cancelled.
    """

    name: str = "scripted"
    replies: list[ScriptedReply] = attrs.field(factory=list, converter=list)
    hold: bool = False
    requests: list[LLMRequest] = attrs.field(factory=list, init=False)
    held: list[Deferred[LLMResponse]] = attrs.field(factory=list, init=False)
    cancelled: int = attrs.field(default=0, init=False)

    def complete(self, request: LLMRequest, sink: DeltaSink) -> Deferred[LLMResponse]:
        """
        Answer with the next scripted reply.
        """
        self.requests.append(request)
        if self.hold:
            d: Deferred[LLMResponse] = Deferred(canceller=self._cancelHeld)
            self.held.append(d)
            return d
        if self.replies:
            reply = self.replies.pop(0)
        else:
            text = next(
                (m.content for m in reversed(request.messages) if m.role == "user"),
                "",
            )
            reply = LLMResponse(content="echo: " + text)
        if isinstance(reply, BaseException):
            return fail(reply)
        if isinstance(reply, Deferred):
            return reply.addCallback(self._deliver, request, sink)
        return succeed(self._deliver(reply, request, sink))

    def _cancelHeld(self, d: Deferred[LLMResponse]) -> None:
        self.cancelled += 1
        if d in self.held:
            self.held.remove(d)

    @staticmethod
    def _deliver(response: LLMResponse, request: LLMRequest, sink: DeltaSink) -> LLMResponse:
        if request.stream:
            for piece in wordPieces(response.reasoning):
                sink.reasoning(piece)
            for piece in wordPieces(response.content):
                sink.content(piece)
        return response


# Standalone.


def main(argv: Sequence[str] | None = None) -> None:
    """
    Run a L{FakeUpstream} until interrupted: C{python -m ai_agent.testing
    --port N [--interface 127.0.0.1]}.
    """
    parser = argparse.ArgumentParser(
        prog="python -m ai_agent.testing",
        description="Run a fake OpenAI-compatible and Anthropic-compatible upstream.",
    )
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    parser.add_argument("--interface", default="127.0.0.1", help="address to listen on")
    options = parser.parse_args(argv)

    from twisted.internet import reactor as _reactor

    reactor = cast(IReactorTCP, _reactor)

    def listening(running: RunningFakeUpstream) -> None:
        sys.stdout.write(f"fake upstream listening on {running.baseUrl}\n")
        sys.stdout.flush()

    def failed(reason: Failure) -> None:
        sys.stderr.write(f"fake upstream could not listen: {reason.getErrorMessage()}\n")
        sys.stderr.flush()
        cast(Any, _reactor).stop()

    startFakeUpstream(reactor, options.port, options.interface).addCallbacks(listening, failed)
    cast(Any, _reactor).run()


__all__ = [
    "WAIT_TIMEOUT",
    "FakeUpstream",
    "RecordedRequest",
    "Reply",
    "RunningFakeUpstream",
    "ScriptedProvider",
    "main",
    "startFakeUpstream",
    "unusedBaseUrl",
    "wordPieces",
]

if __name__ == "__main__":
    main()
