# -*- test-case-name: tests.test_headend_openai -*-
"""
The OpenAI-compatible headend: agents served as models over
C{/v1/models} and C{/v1/chat/completions}, streamed as Server-Sent Events.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any, ClassVar, cast

import attrs
from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Request
from werkzeug.exceptions import MethodNotAllowed, NotFound

from ai_agent.accounting import RunLabels
from ai_agent.errors import AgentError, notFound
from ai_agent.events import (
    ContentDelta,
    Event,
    EventSink,
    Finished,
    ModelAnswering,
    ReasoningDelta,
)
from ai_agent.headends._request import (
    OFF_REACTOR_THRESHOLD,
    ChatRequest,
    parseChatRequest,
    parseChatRequestOffReactor,
)
from ai_agent.headends._sse import SSEStream
from ai_agent.pool import RunPool, Slot
from ai_agent.registry import AgentRegistry, ServedAgent
from ai_agent.session import SessionRunner
from ai_agent.tasks import detectTask, forwardedHeaders, loggable

#: Seconds a streaming request may go without any event before the SSE
#: headers are sent anyway; until then, a failure can still be a real status.
STREAM_HEAD_GRACE = 10.0

_JSON = b"application/json"

#: The response header naming the model (C{provider/model}) that answered.
MODEL_HEADER = b"x-ai-agent-model"

#: The C{reasoningField} that puts reasoning inside C{content}, between
#: C{<think>} and C{</think>}, for UIs that render only that.
THINK = "think"
THINK_OPEN = "<think>\n"
THINK_CLOSE = "\n</think>\n\n"


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _dumps(value: Any) -> bytes:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (from a model's answer, say) has no UTF-8 form;
        # send the replacement character rather than failing the response.
        return _LONE_SURROGATE.sub("\ufffd", text).encode("utf-8")


@attrs.define
class ChunkEncoder:
    """
    Pre-encodes the envelope shared by every chunk of one stream, so each
    delta costs one small C{json.dumps}.

    @ivar reasoningField: the delta key for reasoning and progress, or
        L{None} to drop them, or L{THINK} to send them as content inside
        C{<think>}…C{</think>}: the tag opens with the first reasoning
        delta and closes before the next content delta or at the finish.
    """

    completionId: str
    created: int
    model: str
    includeUsage: bool
    reasoningField: str | None = "reasoning_content"
    _prefix: bytes = attrs.field(init=False)
    _suffix: bytes = attrs.field(init=False)
    _thinking: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        head = _dumps(
            {
                "id": self.completionId,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
            }
        )[:-1]
        self._prefix = b"data: " + head + b',"choices":[{"index":0,"delta":'
        usage = b',"usage":null' if self.includeUsage else b""
        self._suffix = b',"logprobs":null,"finish_reason":null}]' + usage + b"}\n\n"

    def role(self) -> bytes:
        """
        The first chunk: the assistant role and empty content.
        """
        return self._prefix + b'{"role":"assistant","content":""}' + self._suffix

    def content(self, text: str) -> bytes:
        """
        A chunk carrying answer text.
        """
        if self._thinking:
            self._thinking = False
            text = THINK_CLOSE + text
        return self._prefix + _dumps({"content": text}) + self._suffix

    def reasoning(self, text: str) -> bytes | None:
        """
        A chunk carrying reasoning or progress, or L{None} when disabled.
        """
        if self.reasoningField is None:
            return None
        if self.reasoningField == THINK:
            if not self._thinking:
                self._thinking = True
                text = THINK_OPEN + text
            return self._prefix + _dumps({"content": text}) + self._suffix
        return self._prefix + _dumps({self.reasoningField: text}) + self._suffix

    def finish(self, reason: str) -> bytes:
        """
        The chunk with an empty delta and the finish reason (after a
        chunk closing C{<think>}, if still open).
        """
        usage = b',"usage":null' if self.includeUsage else b""
        closing = self.content("") if self._thinking else b""
        return (
            closing
            + self._prefix
            + b'{},"logprobs":null,"finish_reason":'
            + _dumps(reason)
            + b"}]"
            + usage
            + b"}\n\n"
        )

    def usage(self, usage: dict[str, int]) -> bytes:
        """
        The usage chunk (empty C{choices}), sent only when asked for.
        """
        head = self._prefix[: -len(b'[{"index":0,"delta":')]
        return head + b'[],"usage":' + _dumps(usage) + b"}\n\n"

    @staticmethod
    def error(error: AgentError) -> bytes:
        """
        An in-band error frame.
        """
        return b"data: " + _dumps(error.envelope()) + b"\n\n"

    DONE: ClassVar[bytes] = b"data: [DONE]\n\n"


@attrs.define(slots=False)
class OpenAIHeadend:
    """
    Klein routes for one OpenAI-compatible port.
    """

    log: ClassVar[Logger] = Logger()
    app: ClassVar[Klein] = Klein()

    registry: AgentRegistry
    runner: SessionRunner
    pool: RunPool
    reactor: IReactorTime
    reasoningField: str | None = "reasoning_content"
    streamHeadGrace: float = STREAM_HEAD_GRACE
    taskShortcut: bool = True

    threadPool: Any = None

    def _threadPool(self) -> Any:
        """
        The pool that parses large bodies off the reactor thread.
        """
        if self.threadPool is None:
            self.threadPool = cast(Any, self.reactor).getThreadPool()
        return self.threadPool

    # -- errors ---------------------------------------------------------

    @app.handle_errors(AgentError)
    def _agentError(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, AgentError)
        return self._errorBody(request, error)

    @app.handle_errors(NotFound)
    def _notFound(self, request: IRequest, failure: Failure) -> bytes:
        path = request.path.decode("utf-8", "replace")
        return self._errorBody(request, notFound(f"no such endpoint: {path}", "not_found"))

    @app.handle_errors(MethodNotAllowed)
    def _badMethod(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, MethodNotAllowed)
        method = request.method.decode("ascii", "replace")
        allowed = ", ".join(error.valid_methods or ())
        request.setHeader(b"allow", allowed.encode("ascii"))
        return self._errorBody(
            request,
            AgentError(
                f"{method} is not allowed here; use {allowed}",
                405,
                "invalid_request_error",
                "method_not_allowed",
            ),
        )

    def _errorBody(self, request: IRequest, error: AgentError) -> bytes:
        request.setResponseCode(error.status)
        request.setHeader(b"content-type", _JSON)
        if error.retryAfter is not None:
            request.setHeader(b"retry-after", str(max(1, round(error.retryAfter))).encode())
        if error.sideEffects:
            # A tool already ran: running the agent again could repeat it.
            request.setHeader(b"x-should-retry", b"false")
        return _dumps(error.envelope())

    # -- routes ---------------------------------------------------------

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        """
        Liveness and the agents served.
        """
        request.setHeader(b"content-type", _JSON)
        if self.pool.draining:
            request.setResponseCode(503)
        return _dumps(
            {
                "status": "stopping" if self.pool.draining else "ok",
                "agents": self.registry.ids(),
                "running": self.pool.activeRuns,
                "queued": self.pool.queuedRuns,
            }
        )

    @app.route("/openapi.json", methods=["GET"])
    def openapi(self, request: IRequest) -> bytes:
        """
        The OpenAPI 3.1 description of these routes, with the served
        models as examples.
        """
        from ai_agent.headends.openapi import openapiDocument

        request.setHeader(b"content-type", _JSON)
        return _dumps(openapiDocument(models=self.registry.ids()))

    @app.route("/v1/models", methods=["GET"])
    def models(self, request: IRequest) -> bytes:
        """
        Every served agent as an OpenAI model.
        """
        request.setHeader(b"content-type", _JSON)
        return _dumps(
            {"object": "list", "data": [_modelEntry(agent) for agent in self.registry.served]}
        )

    @app.route("/v1/models/<path:modelId>", methods=["GET"])
    def model(self, request: IRequest, modelId: str) -> bytes:
        """
        One served agent, or 404.
        """
        agent = self.registry.resolve(modelId)
        if agent is None:
            raise _unknownModel(modelId)
        request.setHeader(b"content-type", _JSON)
        return _dumps(_modelEntry(agent))

    @app.route("/v1/chat/completions", methods=["POST"])
    async def chatCompletions(self, request: IRequest) -> bytes | None:
        """
        Run an agent on a conversation; answer in one JSON body or stream.
        """
        body = request.content.read()
        if len(body) < OFF_REACTOR_THRESHOLD:
            chat = parseChatRequest(body)
        else:
            # A large body would hold up every other stream while parsed.
            chat = await parseChatRequestOffReactor(
                body, cast(Any, self.reactor), self._threadPool()
            )
        agent = self.registry.resolve(chat.model)
        if agent is None:
            raise _unknownModel(chat.model)
        record = self._labels(request, chat)
        slot = await self.pool.acquire()
        try:
            if chat.stream:
                await self._stream(request, chat, agent, slot, record)
                return None
            return await self._complete(request, chat, agent, slot, record)
        finally:
            slot.release()

    def _taskOf(self, request: IRequest, chat: ChatRequest) -> str | None:
        """
        The chat UI background task this request is (see
        L{ai_agent.tasks}), or L{None}; always L{None} with the shortcut off.
        """
        if not self.taskShortcut:
            return None
        header = request.getHeader(b"x-openwebui-task")
        return detectTask(
            chat.messages, None if header is None else header.decode("utf-8", "replace")
        )

    def _start(
        self, agent: ServedAgent, chat: ChatRequest, labels: RunLabels, onEvent: EventSink
    ) -> Deferred[Finished]:
        """
        The agent loop, or one direct call for a background task.
        """
        start = self.runner.run if labels.task is None else self.runner.runDirect
        return start(agent.spec, chat.messages, onEvent, chat.sampling, stream=True, labels=labels)

    def _labels(self, request: IRequest, chat: ChatRequest) -> RunLabels:
        """
        What the run's log line says about the request: its id, the task
        (if a chat UI's background task), the C{user} field and the user
        and chat headers chat UIs forward (never a key or the
        C{Authorization} header).
        """
        return RunLabels(
            completionId=_completionId(),
            stream=chat.stream,
            task=self._taskOf(request, chat),
            user=None if chat.user is None else loggable(chat.user),
            forwarded=forwardedHeaders(request.getHeader),
        )

    # -- completions ----------------------------------------------------

    async def _complete(
        self,
        request: IRequest,
        chat: ChatRequest,
        agent: ServedAgent,
        slot: Slot,
        record: RunLabels,
    ) -> bytes:
        content: list[str] = []
        reasoning: list[str] = []
        answering: list[str] = []

        def onEvent(event: Event) -> None:
            if isinstance(event, ContentDelta):
                content.append(event.text)
            elif isinstance(event, ReasoningDelta):
                reasoning.append(event.text)
            elif isinstance(event, ModelAnswering):
                answering.append(event.model)

        completionId = record.completionId
        created = int(self.reactor.seconds())
        run = self._start(agent, chat, record, onEvent)
        stopped = _stopOnAbort(slot, run)
        try:
            finished = await run
        except CancelledError:
            if stopped:
                raise stopped[0] from None
            raise
        text = "".join(content)
        if reasoning and self.reasoningField == THINK:
            text = THINK_OPEN + "".join(reasoning) + THINK_CLOSE + text
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if reasoning and self.reasoningField not in (None, THINK):
            message[self.reasoningField] = "".join(reasoning)
        request.setHeader(b"content-type", _JSON)
        request.setHeader(b"x-request-id", completionId.encode("ascii"))
        if answering:
            request.setHeader(MODEL_HEADER, answering[-1].encode("utf-8"))
        return _dumps(
            {
                "id": completionId,
                "object": "chat.completion",
                "created": created,
                "model": agent.id,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": finished.finishReason,
                    }
                ],
                "usage": finished.usage.asOpenAI(),
            }
        )

    async def _stream(
        self,
        request: IRequest,
        chat: ChatRequest,
        agent: ServedAgent,
        slot: Slot,
        record: RunLabels,
    ) -> None:
        completionId = record.completionId
        encoder = ChunkEncoder(
            completionId,
            int(self.reactor.seconds()),
            agent.id,
            chat.includeUsage,
            self.reasoningField,
        )
        # A client that goes away is handled by Klein, which cancels this
        # coroutine (and so the run) once the request has lost its
        # connection; the producer only stops writing.
        stream = SSEStream(cast(Request, request))
        timer: list[IDelayedCall] = []
        answering: list[str] = []

        def begin() -> None:
            if not stream.started:
                if timer and timer[0].active():
                    timer[0].cancel()
                headers = {b"x-request-id": completionId.encode("ascii")}
                if answering:
                    headers[MODEL_HEADER] = answering[-1].encode("utf-8")
                stream.start(headers)
                stream.send(encoder.role())

        def onEvent(event: Event) -> None:
            if isinstance(event, ModelAnswering):
                answering.append(event.model)
            elif isinstance(event, ContentDelta):
                begin()
                stream.send(encoder.content(event.text))
            elif isinstance(event, ReasoningDelta):
                frame = encoder.reasoning(event.text)
                if frame is not None:
                    begin()
                    stream.send(frame)

        timer.append(self.reactor.callLater(self.streamHeadGrace, begin))
        run = self._start(agent, chat, record, onEvent)
        stopped = _stopOnAbort(slot, run)
        try:
            finished = await run
        except CancelledError:
            if not stopped:
                stream.end()
                raise
            error = stopped[0]
            if not stream.started:
                raise error from None
            _endInBand(stream, error)
            return
        except AgentError as error:
            if not stream.started:
                # Nothing was sent yet: answer with a real status.
                raise
            self.log.warn(
                "{completionId}: agent {agent} failed mid-stream: {error}",
                completionId=record.completionId,
                agent=agent.id,
                error=error.message,
            )
            _endInBand(stream, error)
            return
        except Exception:
            if not stream.started:
                # Nothing was sent yet: the web layer answers 500.
                raise
            # A bug: log it, and end the stream in-band without its text.
            self.log.failure(
                "{completionId}: agent {agent} crashed mid-stream",
                completionId=record.completionId,
                agent=agent.id,
            )
            _endInBand(stream, _internalError())
            return
        finally:
            if timer[0].active():
                timer[0].cancel()
        begin()
        frames = [encoder.finish(finished.finishReason)]
        if chat.includeUsage:
            frames.append(encoder.usage(finished.usage.asOpenAI()))
        frames.append(encoder.DONE)
        stream.send(b"".join(frames))
        stream.end()


def _endInBand(stream: SSEStream, error: AgentError) -> None:
    """
    End a stream that already began with an error frame and C{[DONE]}.
    """
    stream.send(ChunkEncoder.error(error) + ChunkEncoder.DONE)
    stream.end()


def _stopOnAbort(slot: Slot, run: Deferred[Finished]) -> list[AgentError]:
    """
    Let the pool stop C{run} at shutdown; the returned list receives the
    error it was stopped with.
    """
    stopped: list[AgentError] = []

    def abort(error: AgentError) -> None:
        stopped.append(error)
        run.cancel()

    slot.onAbort = abort
    return stopped


def _modelEntry(agent: ServedAgent) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": agent.id,
        "object": "model",
        "created": agent.created,
        "owned_by": "ai-agent",
    }
    if agent.spec.description:
        entry["description"] = agent.spec.description
    return entry


def _unknownModel(model: str) -> AgentError:
    return notFound(
        f"The model {model!r} does not exist: no agent is served under that name",
        "model_not_found",
        "model",
    )


def _internalError() -> AgentError:
    # The same envelope the web layer answers a bug with (a 500).
    return AgentError("internal server error", 500, "server_error", "internal_error")


def _completionId() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


__all__ = ["ChunkEncoder", "OpenAIHeadend", "STREAM_HEAD_GRACE", "THINK"]
