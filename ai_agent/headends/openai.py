# -*- test-case-name: tests.test_headend_openai -*-
"""
The OpenAI-compatible headend: agents served as models over
C{/v1/models} and C{/v1/chat/completions}, streamed as Server-Sent Events.
"""

from __future__ import annotations

import functools
import secrets
from typing import Any, Callable, ClassVar, Iterable

import attrs
from klein import Klein
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest

from ai_agent.accounting import RunLabels
from ai_agent.advice import endpointHint
from ai_agent.errors import AgentError, ErrorFormat, notFound
from ai_agent.events import (
    ClientToolCall,
    Finished,
    FinishReason,
    Progress,
    ReasoningText,
    Usage,
)
from ai_agent.flow import CLIENT_STALL_TIMEOUT
from ai_agent.headends import pages
from ai_agent.headends._api import API, Exchange, Headend, installErrorHandlers, serve
from ai_agent.headends._bodies import BodyGate
from ai_agent.headends._http import principalOf
from ai_agent.headends._json import dumps as _dumps
from ai_agent.headends._json import dumpsPlain as _dumpsPlain
from ai_agent.headends._openai_errors import OPENAI_ERRORS
from ai_agent.headends._request import (
    ChatRequest,
    headerLookup,
    parseChatRequest,
)
from ai_agent.headends._site import ModelCatalog
from ai_agent.limits import MAX_RUN_ANSWER
from ai_agent.observe import NULL_OBSERVER, Observer
from ai_agent.pool import RunPool
from ai_agent.principals import resolveFor, visibleAgents, visibleIds
from ai_agent.reactors import IReactorTimeAndThreads
from ai_agent.redaction import Redactor, shorten
from ai_agent.registry import AgentRegistry, ServedAgent
from ai_agent.session import SessionRunner
from ai_agent.tasks import forwardedHeaders, headerTask, loggable, messageTask

#: Seconds a streaming request may go without any event before the SSE
#: headers are sent anyway; until then, a failure can still be a real status.
STREAM_HEAD_GRACE = 10.0

_JSON = b"application/json"

#: The C{reasoningField} that puts reasoning inside C{content}, between
#: C{<think>} and C{</think>}, for UIs that render only that.
THINK = "think"
THINK_OPEN = "<think>\n"
THINK_CLOSE = "\n</think>\n\n"


class _NotYet:
    """
    The type of L{_NOT_YET}: a request's task not yet looked for in its
    messages.
    """


_NOT_YET = _NotYet()


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
    _envelope: tuple[bytes, bytes] | None = attrs.field(default=None, init=False)
    _thinking: bool = attrs.field(default=False, init=False)

    @property
    def _prefix(self) -> bytes:
        return (self._envelope or self._makeEnvelope())[0]

    @property
    def _suffix(self) -> bytes:
        return (self._envelope or self._makeEnvelope())[1]

    def _makeEnvelope(self) -> tuple[bytes, bytes]:
        # Made with the first chunk: a whole answer never needs it.
        head = _dumpsPlain(
            {
                "id": self.completionId,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
            }
        )[:-1]
        usage = b',"usage":null' if self.includeUsage else b""
        self._envelope = (
            b"data: " + head + b',"choices":[{"index":0,"delta":',
            b',"logprobs":null,"finish_reason":null}]' + usage + b"}\n\n",
        )
        return self._envelope

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
        return self._prefix + _dumpsPlain({"content": text}) + self._suffix

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
            return self._prefix + _dumpsPlain({"content": text}) + self._suffix
        return self._prefix + _dumpsPlain({self.reasoningField: text}) + self._suffix

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
            + _dumpsPlain(reason)
            + b"}]"
            + usage
            + b"}\n\n"
        )

    def toolCall(self, call: ClientToolCall) -> bytes:
        """
        The chunks of one handed-back tool call: the first names it (index,
        id, type, function name, no arguments yet), the second carries its
        arguments; indices count from 0 in the order of the calls.
        """
        head = {
            "index": call.index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        frames = self._prefix + _dumpsPlain({"tool_calls": [head]}) + self._suffix
        if call.arguments:
            rest = {"index": call.index, "function": {"arguments": call.arguments}}
            frames += self._prefix + _dumpsPlain({"tool_calls": [rest]}) + self._suffix
        return frames

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
        return b"data: " + OPENAI_ERRORS.body(error) + b"\n\n"

    DONE: ClassVar[bytes] = b"data: [DONE]\n\n"


#: Neutral finish reasons as Chat Completions' C{finish_reason}.
FINISH_REASONS: dict[str, str] = {
    FinishReason.END: "stop",
    FinishReason.STOP_SEQUENCE: "stop",
    FinishReason.MAX_TOKENS: "length",
    FinishReason.TOOL_CALLS: "tool_calls",
    FinishReason.CONTENT_FILTER: "content_filter",
}


def finishReason(reason: str) -> str:
    """
    Chat Completions' C{finish_reason} for a neutral one.
    """
    return FINISH_REASONS.get(reason, "stop")


def usageObject(usage: Usage) -> dict[str, int]:
    """
    Chat Completions' C{usage} object.
    """
    return {
        "prompt_tokens": usage.promptTokens,
        "completion_tokens": usage.completionTokens,
        "total_tokens": usage.totalTokens,
    }


@attrs.define
class ChatEncoder:
    """
    A run as Chat Completions (a L{ai_agent.headends._stream.RunEncoder}):
    chunks when streamed, one C{chat.completion} object when not.  The
    model's reasoning and the agent's progress share the reasoning field,
    progress always on lines of its own.

    @ivar frames: whether events make chunks; off for a whole answer, whose
        body is all that is written.
    """

    chunks: ChunkEncoder
    frames: bool = True
    _text: ReasoningText = attrs.field(factory=ReasoningText, init=False)
    _content: list[str] = attrs.field(factory=list, init=False)
    _reasoning: list[str] = attrs.field(factory=list, init=False)
    _toolCalls: list[ClientToolCall] = attrs.field(factory=list, init=False)

    def open(self) -> bytes:
        return self.chunks.role()

    def toolCall(self, call: ClientToolCall) -> bytes | None:
        self._toolCalls.append(call)
        return self.chunks.toolCall(call) if self.frames else None

    def content(self, text: str) -> bytes | None:
        self._content.append(text)
        return self.chunks.content(text) if self.frames else None

    def reasoning(self, text: str) -> bytes | None:
        text = self._text.reasoning(text)
        self._reasoning.append(text)
        return self.chunks.reasoning(text) if self.frames else None

    def progress(self, event: Progress) -> bytes | None:
        text = self._text.progress(event)
        self._reasoning.append(text)
        return self.chunks.reasoning(text) if self.frames else None

    def usage(self, usage: Usage) -> None:
        return None

    def finish(self, finished: Finished) -> bytes:
        frames = [self.chunks.finish(finishReason(finished.reason))]
        if self.chunks.includeUsage:
            frames.append(self.chunks.usage(usageObject(finished.usage)))
        frames.append(ChunkEncoder.DONE)
        return b"".join(frames)

    def error(self, error: AgentError) -> bytes:
        return ChunkEncoder.error(error) + ChunkEncoder.DONE

    def body(self, finished: Finished) -> bytes:
        field = self.chunks.reasoningField
        text = "".join(self._content)
        if self._reasoning and field == THINK:
            text = THINK_OPEN + "".join(self._reasoning) + THINK_CLOSE + text
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if self._reasoning and field not in (None, THINK):
            message[field] = "".join(self._reasoning)
        if self._toolCalls:
            message["content"] = text or None
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in self._toolCalls
            ]
        usage = usageObject(finished.usage)
        # Token counts are integers; anything else goes through json.
        dumps = _dumpsPlain if all(type(n) is int for n in usage.values()) else _dumps
        return dumps(
            {
                "id": self.chunks.completionId,
                "object": "chat.completion",
                "created": self.chunks.created,
                "model": self.chunks.model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": finishReason(finished.reason),
                    }
                ],
                "usage": usage,
            }
        )


@attrs.define(slots=False)
class OpenAIHeadend(Headend):
    """
    Klein routes for one OpenAI-compatible port.
    """

    log: ClassVar[Logger] = Logger()
    app: ClassVar[Klein] = Klein()

    registry: AgentRegistry
    runner: SessionRunner
    pool: RunPool
    reactor: IReactorTimeAndThreads
    reasoningField: str | None = "reasoning_content"
    streamHeadGrace: float = STREAM_HEAD_GRACE
    taskShortcut: bool = True
    observer: Observer = NULL_OBSERVER

    threadPool: Any = None
    bodyGate: BodyGate | None = None
    redactor: Redactor | None = None
    clientStallTimeout: float = CLIENT_STALL_TIMEOUT
    maxAnswer: int = MAX_RUN_ANSWER

    #: The site's chooser of the error format for a request (that of the
    #: API it comes from; see L{ai_agent.headends._site.APIRouter}); OpenAI's
    #: when L{None}.
    errorFormats: Callable[[bytes, Headers], ErrorFormat] | None = None
    #: The site's chooser of the model-list shape for a request; OpenAI's
    #: when it is L{None} or answers L{None}.
    modelCatalogs: Callable[[bytes, Headers], ModelCatalog | None] | None = None

    def _errorFormat(self, request: IRequest) -> ErrorFormat:
        if self.errorFormats is None:
            return OPENAI_ERRORS
        return self.errorFormats(request.path, request.requestHeaders)

    def _models(self, request: IRequest) -> ModelCatalog:
        catalog = None
        if self.modelCatalogs is not None:
            catalog = self.modelCatalogs(request.path, request.requestHeaders)
        return OPENAI_MODELS if catalog is None else catalog

    installErrorHandlers(
        app, hint=lambda request: endpointHint(request.path.decode("utf-8", "replace"))
    )

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

    @app.route("/", methods=["GET"])
    def home(self, request: IRequest) -> bytes:
        """
        A short page naming the server, its models and links.
        """
        address = request.getHost()
        if isinstance(address, (IPv4Address, IPv6Address)):
            host = f"[{address.host}]" if ":" in address.host else address.host
            fallback = f"{host}:{address.port}"
        else:
            fallback = "HOST:PORT"
        base = pages.origin(request.getHeader(b"host"), request.isSecure(), fallback)
        return _page(request, pages.HTML, pages.homePage(self.registry.ids(), base))

    @app.route("/favicon.ico", methods=["GET"])
    def favicon(self, request: IRequest) -> bytes:
        """
        The icon browsers ask for, so their consoles show no 404.
        """
        request.setHeader(b"cache-control", b"public, max-age=86400")
        return _page(request, pages.ICON, pages.asset(pages.FAVICON))

    @app.route("/docs", methods=["GET"])
    def docs(self, request: IRequest) -> bytes:
        """
        The interactive page for C{/openapi.json}.
        """
        return _page(request, pages.HTML, pages.asset("docs.html"))

    @app.route("/assets/<name>", methods=["GET"])
    def assets(self, request: IRequest, name: str) -> bytes:
        """
        The pages' script and style sheet, installed with the package.
        """
        contentType = pages.ASSETS.get(name)
        if contentType is None:
            raise notFound(f"no such asset: {name[:80]}", "not_found")
        return _page(request, contentType, pages.asset(name))

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
        Every served agent as a model, in the shape of the API the request
        comes from (OpenAI's, or Anthropic's to Anthropic clients).
        """
        request.setHeader(b"content-type", _JSON)
        served = visibleAgents(self.registry, principalOf(request))
        return _dumps(self._models(request).listing(served))

    @app.route("/v1/limits", methods=["GET"])
    async def limits(self, request: IRequest) -> bytes:
        """
        The requesting key's own limits and usage (read-only; another
        key's are never shown).  See docs/security.md ("Limits").
        """
        principal = principalOf(request)
        quotas = self.pool.quotas
        if quotas is None:
            raise notFound("this server enforces no limits", "limits_not_enabled")
        answer = await quotas.usage(principal)
        request.setHeader(b"content-type", _JSON)
        request.setHeader(b"cache-control", b"no-store")
        return _dumps(answer)

    @app.route("/v1/models/<path:modelId>", methods=["GET"])
    def model(self, request: IRequest, modelId: str) -> bytes:
        """
        One served agent, or 404.
        """
        principal = principalOf(request)
        agent = resolveFor(self.registry, principal, modelId)
        catalog = self._models(request)
        if agent is None:
            raise catalog.unknown(modelId, visibleIds(self.registry, principal))
        request.setHeader(b"content-type", _JSON)
        return _dumps(catalog.entry(agent))

    @functools.cached_property
    def api(self) -> API[_ParsedChat]:
        """
        Chat Completions as an L{API} value, served by L{serve}.
        """
        return API(
            name="openai",
            route="/v1/chat/completions",
            parse=_parseSmall,
            parseLarge=_parseWithTask if self.taskShortcut else _parseWithoutTask,
            model=lambda parsed: parsed.chat.model,
            stream=lambda parsed: parsed.chat.stream,
            errors=OPENAI_ERRORS,
            unknownModel=_unknownModel,
            newId=_completionId,
            labels=lambda request, parsed, requestId: self._labels(
                request, parsed.chat, parsed.fromMessages, requestId
            ),
            toRunRequest=lambda exchange: exchange.parsed.chat.runRequest(exchange.labels),
            encoder=self._encoder,
            headers=lambda exchange: {b"x-request-id": exchange.labels.requestId.encode("ascii")},
        )

    def _encoder(self, exchange: Exchange[_ParsedChat]) -> ChatEncoder:
        chat = exchange.parsed.chat
        return ChatEncoder(
            ChunkEncoder(
                exchange.labels.requestId,
                int(exchange.created),
                exchange.agent.id,
                chat.includeUsage,
                self.reasoningField,
            ),
            frames=chat.stream,
        )

    @app.route("/v1/chat/completions", methods=["POST"])
    async def chatCompletions(self, request: IRequest) -> bytes | None:
        """
        Run an agent on a conversation; answer in one JSON body or stream.
        """
        return await serve(self.api, self, request)

    def _taskOf(
        self, request: IRequest, chat: ChatRequest, fromMessages: str | None | _NotYet = _NOT_YET
    ) -> str | None:
        """
        The chat UI background task this request is (see
        L{ai_agent.tasks}), or L{None}; always L{None} with the shortcut off.

        @param fromMessages: what L{messageTask} found in C{chat}, when it
            was looked for already (in the thread that parsed the body).
        """
        if not self.taskShortcut:
            return None
        header = request.getHeader(b"x-openwebui-task")
        decided, task = headerTask(None if header is None else header.decode("utf-8", "replace"))
        if decided:
            return task
        if isinstance(fromMessages, _NotYet):
            return messageTask(chat.messages)
        return fromMessages

    def _labels(
        self,
        request: IRequest,
        chat: ChatRequest,
        fromMessages: str | None | _NotYet = _NOT_YET,
        requestId: str | None = None,
    ) -> RunLabels:
        """
        What the run's log line says about the request: its id, the task
        (if a chat UI's background task), the C{user} field and the user
        and chat headers chat UIs forward (never a key or the
        C{Authorization} header).
        """
        return RunLabels(
            requestId=_completionId() if requestId is None else requestId,
            stream=chat.stream,
            task=self._taskOf(request, chat, fromMessages),
            user=None if chat.user is None else loggable(chat.user),
            forwarded=forwardedHeaders(headerLookup(request)),
        )


@attrs.frozen
class _ParsedChat:
    """
    A parsed Chat Completions request, and the task its messages show when
    that was looked for already (in the thread that parsed a large body).
    """

    chat: ChatRequest
    fromMessages: str | None | _NotYet = _NOT_YET


def _parseSmall(body: bytes) -> _ParsedChat:
    """
    On the reactor: the request (its task looked for later, if needed).
    """
    return _ParsedChat(parseChatRequest(body))


def _parseWithTask(body: bytes) -> _ParsedChat:
    """
    In a thread: the request, and the task its messages show.
    """
    chat = parseChatRequest(body)
    return _ParsedChat(chat, messageTask(chat.messages))


def _parseWithoutTask(body: bytes) -> _ParsedChat:
    """
    In a thread: the request alone (the task shortcut is off).
    """
    return _ParsedChat(parseChatRequest(body), None)


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


@attrs.frozen
class OpenAIModels:
    """
    OpenAI's model list and model object, and its 404 for an unknown model
    (a L{ModelCatalog}).
    """

    def listing(self, agents: Iterable[ServedAgent]) -> dict[str, Any]:
        return {"object": "list", "data": [_modelEntry(agent) for agent in agents]}

    def entry(self, agent: ServedAgent) -> dict[str, Any]:
        return _modelEntry(agent)

    def unknown(self, model: str, served: list[str]) -> AgentError:
        return _unknownModel(model, served)


#: OpenAI's model list (see L{OpenAIModels}).
OPENAI_MODELS = OpenAIModels()


def _page(request: IRequest, contentType: bytes, body: bytes) -> bytes:
    request.setHeader(b"content-type", contentType)
    request.setHeader(b"content-security-policy", pages.CONTENT_SECURITY_POLICY)
    request.setHeader(b"x-content-type-options", b"nosniff")
    return body


def _unknownModel(model: str, served: list[str]) -> AgentError:
    return notFound(
        f"The model {shorten(repr(model))} does not exist: no agent is served under that name"
        f" (served: {shorten(', '.join(served) or 'none', 300)})",
        "model_not_found",
        "model",
    )


def _completionId() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


__all__ = ["ChatEncoder", "ChunkEncoder", "OpenAIHeadend", "STREAM_HEAD_GRACE", "THINK"]
