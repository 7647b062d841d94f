# -*- test-case-name: tests.test_headend_openai -*-
"""
The OpenAI-compatible headend: agents served as models over
C{/v1/models} and C{/v1/chat/completions}, streamed as Server-Sent Events.
"""

from __future__ import annotations

import json
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

from ai_agent.errors import AgentError, notFound
from ai_agent.events import ContentDelta, Event, Finished, ReasoningDelta
from ai_agent.headends._request import ChatRequest, parseChatRequest
from ai_agent.headends._sse import SSEStream
from ai_agent.pool import RunPool, Slot
from ai_agent.registry import AgentRegistry, ServedAgent
from ai_agent.session import SessionRunner

#: Seconds a streaming request may go without any event before the SSE
#: headers are sent anyway; until then, a failure can still be a real status.
STREAM_HEAD_GRACE = 10.0

_JSON = b"application/json"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@attrs.define
class ChunkEncoder:
    """
    Pre-encodes the envelope shared by every chunk of one stream, so each
    delta costs one small C{json.dumps}.

    @ivar reasoningField: the delta key for reasoning and progress, or
        L{None} to drop them.
    """

    completionId: str
    created: int
    model: str
    includeUsage: bool
    reasoningField: str | None = "reasoning_content"
    _prefix: bytes = attrs.field(init=False)
    _suffix: bytes = attrs.field(init=False)

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
        return self._prefix + _dumps({"content": text}) + self._suffix

    def reasoning(self, text: str) -> bytes | None:
        """
        A chunk carrying reasoning or progress, or L{None} when disabled.
        """
        if self.reasoningField is None:
            return None
        return self._prefix + _dumps({self.reasoningField: text}) + self._suffix

    def finish(self, reason: str) -> bytes:
        """
        The chunk with an empty delta and the finish reason.
        """
        usage = b',"usage":null' if self.includeUsage else b""
        return (
            self._prefix
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
        chat = parseChatRequest(request.content.read())
        agent = self.registry.resolve(chat.model)
        if agent is None:
            raise _unknownModel(chat.model)
        slot = await self.pool.acquire()
        try:
            if chat.stream:
                await self._stream(request, chat, agent, slot)
                return None
            return await self._complete(request, chat, agent, slot)
        finally:
            slot.release()

    # -- completions ----------------------------------------------------

    async def _complete(
        self, request: IRequest, chat: ChatRequest, agent: ServedAgent, slot: Slot
    ) -> bytes:
        content: list[str] = []
        reasoning: list[str] = []

        def onEvent(event: Event) -> None:
            if isinstance(event, ContentDelta):
                content.append(event.text)
            elif isinstance(event, ReasoningDelta):
                reasoning.append(event.text)

        completionId = _completionId()
        created = int(self.reactor.seconds())
        run = self.runner.run(agent.spec, chat.messages, onEvent, chat.sampling, stream=True)
        stopped = _stopOnAbort(slot, run)
        try:
            finished = await run
        except CancelledError:
            if stopped:
                raise stopped[0] from None
            raise
        message: dict[str, Any] = {"role": "assistant", "content": "".join(content)}
        if reasoning and self.reasoningField is not None:
            message[self.reasoningField] = "".join(reasoning)
        request.setHeader(b"content-type", _JSON)
        request.setHeader(b"x-request-id", completionId.encode("ascii"))
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
        self, request: IRequest, chat: ChatRequest, agent: ServedAgent, slot: Slot
    ) -> None:
        completionId = _completionId()
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

        def begin() -> None:
            if not stream.started:
                if timer and timer[0].active():
                    timer[0].cancel()
                stream.start({b"x-request-id": completionId.encode("ascii")})
                stream.send(encoder.role())

        def onEvent(event: Event) -> None:
            if isinstance(event, ContentDelta):
                begin()
                stream.send(encoder.content(event.text))
            elif isinstance(event, ReasoningDelta):
                frame = encoder.reasoning(event.text)
                if frame is not None:
                    begin()
                    stream.send(frame)

        timer.append(self.reactor.callLater(self.streamHeadGrace, begin))
        run: Deferred[Finished] = self.runner.run(
            agent.spec, chat.messages, onEvent, chat.sampling, stream=True
        )
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
            stream.send(encoder.error(error))
            stream.send(encoder.DONE)
            stream.end()
            return
        except AgentError as error:
            if not stream.started:
                # Nothing was sent yet: answer with a real status.
                raise
            self.log.warn(
                "agent {agent} failed mid-stream: {error}", agent=agent.id, error=error.message
            )
            stream.send(encoder.error(error))
            stream.send(encoder.DONE)
            stream.end()
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


def _completionId() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


__all__ = ["ChunkEncoder", "OpenAIHeadend", "STREAM_HEAD_GRACE"]
