# -*- test-case-name: tests.test_observe -*-
"""
The hooks the headends, the pool, the session and the tools report through.

L{Observer} is the interface, and does nothing: it is what runs when
metrics and tracing are both off.  L{Observability} implements it with
Prometheus metrics (L{Metrics}), OpenTelemetry spans (L{Tracing}), or both.

One request gives a L{RequestScope} (the HTTP server span, and the
request-level metrics); each agent run under it a L{RunScope}
(C{invoke_agent}); each LLM call of a run a L{CallScope} (C{chat}); each tool
call a L{ToolScope} (C{execute_tool}).  A sub-agent's run is a run whose
parent is the tool call that started it.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence
from urllib.parse import urlsplit

from zope.interface import Interface

from ai_agent.observe._metrics import Metrics
from ai_agent.observe._tracing import Tracing, extractTraceContext

if TYPE_CHECKING:
    from ai_agent.events import Usage
    from ai_agent.providers._base import DeltaSink, LLMRequest, LLMResponse


class _NoActivation:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NOTHING = _NoActivation()


class _Activation:
    """
    Makes a span current for the synchronous code inside a C{with}.
    """

    def __init__(self, span: Any) -> None:
        self.span = span
        self.token: Any = None

    def __enter__(self) -> None:
        from opentelemetry import context, trace

        self.token = context.attach(trace.set_span_in_context(self.span))

    def __exit__(self, *exc: object) -> None:
        from opentelemetry import context

        context.detach(self.token)


class IRequestScope(Interface):
    """
    The component of a web request holding its L{RequestScope}.
    """


class ToolScope:
    """
    One tool call.  This base does nothing.
    """

    def activate(self) -> Any:
        """
        A context manager making this call's span current.
        """
        return _NOTHING

    def end(self, outcome: str, result: str | None = None) -> None:
        """
        The call ended: C{ok}, C{error}, C{timeout} or C{cancelled}; a
        client's tool call, handed back to it: C{handed_back}.
        """


class CallScope:
    """
    One LLM call.  This base does nothing.
    """

    def activate(self) -> Any:
        """
        A context manager making this call's span current (its
        C{traceparent} then goes out with the HTTP request).
        """
        return _NOTHING

    def sink(self, sink: DeltaSink) -> DeltaSink:
        """
        C{sink}, or a sink noting when the first piece arrives.
        """
        return sink

    def answered(self, response: LLMResponse, cost: float | None) -> None:
        """
        The call answered.
        """

    def failed(self, code: str, cost: float | None = None) -> None:
        """
        The call failed with the error code C{code} (C{cancelled} when it
        was cancelled).
        """


class RunScope:
    """
    One agent run.  This base does nothing.
    """

    traceId: str | None = None

    def activate(self) -> Any:
        """
        A context manager making this run's span current.
        """
        return _NOTHING

    def llmCall(self, provider: str, model: str, request: LLMRequest, endpoint: Any) -> CallScope:
        """
        An LLM call of this run starts.

        @param endpoint: the provider (its C{baseUrl}, if any, names the
            server).
        """
        return _NULL_CALL

    def retrying(self, provider: str, model: str) -> None:
        """
        A failed call of C{provider}/C{model} is followed by another attempt.
        """

    def tool(self, name: str, callId: str, arguments: str, kind: str = "extension") -> ToolScope:
        """
        A tool call starts.

        @param kind: C{extension} for the agent's own tools (MCP tools and
            sub-agents), C{function} for a client's tools.
        """
        return _NULL_TOOL

    def end(self, outcome: str, usage: Usage | None = None, errorType: str | None = None) -> None:
        """
        The run ended: C{stop}, C{length}, C{cancelled} or C{failed}.
        """


class RequestScope:
    """
    One request to a headend.  This base does nothing.
    """

    def activate(self) -> Any:
        """
        A context manager making this request's span current (runs started
        inside it are its children).
        """
        return _NOTHING

    def setAgent(self, agent: str) -> None:
        """
        The request is for the served agent C{agent} (its label).
        """

    def firstToken(self) -> None:
        """
        The first piece of the answer was produced.
        """

    def failedInBand(self, status: int) -> None:
        """
        A stream that had begun ended with an error of this status.
        """

    def end(self, status: int) -> None:
        """
        The request was answered with C{status}.
        """


_NULL_TOOL = ToolScope()
_NULL_CALL = CallScope()
_NULL_RUN = RunScope()
_NULL_REQUEST = RequestScope()


class Observer:
    """
    The hook interface.  This base does nothing.
    """

    @property
    def enabled(self) -> bool:
        """
        Whether anything is observed.
        """
        return False

    @property
    def metrics(self) -> Metrics | None:
        """
        The metric families, when metrics are on.
        """
        return None

    def request(self, headend: str, route: str, request: Any) -> RequestScope:
        """
        A request to C{headend}'s C{route} arrived (its C{traceparent} is
        continued).
        """
        return _NULL_REQUEST

    def run(self, agent: str, description: str = "") -> RunScope:
        """
        An agent run starts; its parent is the span current now.
        """
        return _NULL_RUN

    def redactWith(self, scrub: Callable[[str], str]) -> None:
        """
        Scrub the text spans carry (messages, tool arguments and results,
        when content capture is on) with C{scrub}: the redactor of the
        configured secrets that also scrubs every response
        (L{ai_agent.redaction.Redactor.scrub}).  Set when the configuration
        is loaded, and again when it is reloaded.
        """

    def queueEntered(self) -> None:
        """
        A request began waiting for a run slot.
        """

    def queueLeft(self) -> None:
        """
        A request stopped waiting (it got a slot, was refused, or left).
        """

    def slotAcquired(self, waited: float) -> None:
        """
        A request got a run slot after C{waited} seconds.
        """

    def rejected(self) -> None:
        """
        A request was refused a run slot (503).
        """

    def limitRefused(self, key: str, agent: str, limit: str) -> None:
        """
        A request of the key named C{key} for C{agent} was refused, or its
        run ended, by C{limit} (see L{ai_agent.quotas}).
        """

    def limitCharged(self, key: str, agent: str, tokens: float, cost: float) -> None:
        """
        A run of the key named C{key} on C{agent} spent C{tokens} costing
        C{cost} USD.
        """

    def clock(self) -> float:
        """
        Seconds, for measuring waits.
        """
        return 0.0


#: The observer that observes nothing.
NULL_OBSERVER = Observer()


def requestScope(request: Any) -> RequestScope:
    """
    The L{RequestScope} of a web request (a no-op one when none was set).
    """
    getComponent = getattr(request, "getComponent", None)
    if getComponent is None:
        return _NULL_REQUEST
    scope = getComponent(IRequestScope)
    return scope if scope is not None else _NULL_REQUEST


class Observability(Observer):
    """
    Metrics, traces, or both.
    """

    def __init__(
        self,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self.tracing = tracing
        self.tracer = None if tracing is None else tracing.tracer
        self.captureContent = tracing is not None and tracing.captureContent
        self._clock = clock
        self.scrub: Callable[[str], str] = _unchanged

    @property
    def enabled(self) -> bool:
        return self._metrics is not None or self.tracer is not None

    @property
    def metrics(self) -> Metrics | None:
        return self._metrics

    def clock(self) -> float:
        return self._clock()

    def redactWith(self, scrub: Callable[[str], str]) -> None:
        self.scrub = scrub

    def request(self, headend: str, route: str, request: Any) -> RequestScope:
        scope = _Request(self, headend, route, request)
        setComponent = getattr(request, "setComponent", None)
        if setComponent is not None:
            setComponent(IRequestScope, scope)
        return scope

    def run(self, agent: str, description: str = "") -> RunScope:
        return _Run(self, agent, description)

    def queueEntered(self) -> None:
        if self._metrics is not None:
            self._metrics.queueDepth.inc()

    def queueLeft(self) -> None:
        if self._metrics is not None:
            self._metrics.queueDepth.dec()

    def slotAcquired(self, waited: float) -> None:
        if self._metrics is not None:
            self._metrics.queueWait.observe(waited)

    def rejected(self) -> None:
        if self._metrics is not None:
            self._metrics.queueRejections.inc()

    def limitRefused(self, key: str, agent: str, limit: str) -> None:
        if self._metrics is not None:
            self._metrics.limitRefusals.labels(key or "-", agent, limit).inc()

    def limitCharged(self, key: str, agent: str, tokens: float, cost: float) -> None:
        metrics = self._metrics
        if metrics is not None:
            if tokens:
                metrics.keyTokens.labels(key or "-", agent).inc(tokens)
            if cost:
                metrics.keyCost.labels(key or "-", agent).inc(cost)


def _errorStatus(span: Any, errorType: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", errorType)
    span.set_status(Status(StatusCode.ERROR, errorType))


class _Request(RequestScope):
    def __init__(self, observer: Observability, headend: str, route: str, request: Any) -> None:
        self.observer = observer
        self.headend = headend
        self.started = observer.clock()
        self.firstAt: float | None = None
        self.inBandStatus: int | None = None
        self.agent = ""
        self.span: Any = None
        tracer = observer.tracer
        if tracer is not None:
            from opentelemetry.trace import SpanKind

            method = request.method.decode("ascii", "replace")
            parent = extractTraceContext(request.getHeader)
            self.span = tracer.start_span(
                f"{method} {route}",
                context=parent,
                kind=SpanKind.SERVER,
                attributes={
                    "http.request.method": method,
                    "http.route": route,
                    "url.path": route,
                    "ai_agent.headend": headend,
                },
            )

    def activate(self) -> Any:
        return _NOTHING if self.span is None else _Activation(self.span)

    def setAgent(self, agent: str) -> None:
        self.agent = agent

    def firstToken(self) -> None:
        if self.firstAt is None:
            self.firstAt = self.observer.clock()

    def failedInBand(self, status: int) -> None:
        self.inBandStatus = status

    def end(self, status: int) -> None:
        if self.inBandStatus is not None and status == 200:
            status = self.inBandStatus
        metrics = self.observer.metrics
        agent = self.agent or "-"
        if metrics is not None:
            metrics.child(metrics.requests, agent, self.headend, str(status)).inc()
            metrics.child(metrics.requestDuration, agent, self.headend).observe(
                self.observer.clock() - self.started
            )
            if self.firstAt is not None:
                metrics.child(metrics.timeToFirstToken, agent, self.headend).observe(
                    self.firstAt - self.started
                )
        span = self.span
        if span is not None:
            span.set_attribute("http.response.status_code", status)
            if self.agent:
                span.set_attribute("gen_ai.agent.name", self.agent)
            if self.firstAt is not None:
                span.set_attribute("ai_agent.time_to_first_token", self.firstAt - self.started)
            if status >= 500 or status == 499:
                _errorStatus(span, str(status))
            span.end()


class _Run(RunScope):
    def __init__(self, observer: Observability, agent: str, description: str) -> None:
        self.observer = observer
        self.agent = agent
        self.span: Any = None
        metrics = observer.metrics
        if metrics is not None:
            metrics.child(metrics.runsInProgress, agent).inc()
        tracer = observer.tracer
        if tracer is not None:
            attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent}
            if description:
                attributes["gen_ai.agent.description"] = description
            # The parent is whatever is current: the request's span, or the
            # tool call that runs this sub-agent.
            self.span = tracer.start_span(f"invoke_agent {agent}", attributes=attributes)
            self.traceId = format(self.span.get_span_context().trace_id, "032x")

    def activate(self) -> Any:
        return _NOTHING if self.span is None else _Activation(self.span)

    def llmCall(self, provider: str, model: str, request: LLMRequest, endpoint: Any) -> CallScope:
        return _Call(self, provider, model, request, endpoint)

    def retrying(self, provider: str, model: str) -> None:
        metrics = self.observer.metrics
        if metrics is not None:
            metrics.child(metrics.llmRetries, provider, model).inc()

    def tool(self, name: str, callId: str, arguments: str, kind: str = "extension") -> ToolScope:
        return _Tool(self, name, callId, arguments, kind)

    def end(self, outcome: str, usage: Usage | None = None, errorType: str | None = None) -> None:
        metrics = self.observer.metrics
        if metrics is not None:
            metrics.child(metrics.runsInProgress, self.agent).dec()
        span = self.span
        if span is not None:
            if usage is not None:
                span.set_attribute("gen_ai.usage.input_tokens", usage.promptTokens)
                span.set_attribute("gen_ai.usage.output_tokens", usage.completionTokens)
            span.set_attribute("ai_agent.outcome", outcome)
            if errorType is not None:
                _errorStatus(span, errorType)
            span.end()


class _FirstChunkSink:
    def __init__(self, call: _Call, sink: DeltaSink) -> None:
        self.call = call
        self.inner = sink

    def content(self, text: str) -> None:
        self.call.chunk()
        self.inner.content(text)

    def reasoning(self, text: str) -> None:
        self.call.chunk()
        self.inner.reasoning(text)


class _Call(CallScope):
    def __init__(
        self, run: _Run, provider: str, model: str, request: LLMRequest, endpoint: Any
    ) -> None:
        self.run = run
        self.provider = provider
        self.model = model
        self.request = request
        observer = run.observer
        self.observer = observer
        self.started = observer.clock()
        self.firstChunk: float | None = None
        self.span: Any = None
        tracer = observer.tracer
        if tracer is not None and run.span is not None:
            from opentelemetry import trace
            from opentelemetry.trace import SpanKind

            attributes: dict[str, Any] = {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": provider,
                "gen_ai.request.model": model,
            }
            for key, value in (
                ("gen_ai.request.temperature", request.temperature),
                ("gen_ai.request.top_p", request.topP),
                ("gen_ai.request.max_tokens", request.maxTokens),
                ("gen_ai.request.seed", request.seed),
            ):
                if value is not None:
                    attributes[key] = value
            baseUrl = getattr(endpoint, "baseUrl", None)
            if isinstance(baseUrl, str):
                parts = urlsplit(baseUrl)
                if parts.hostname:
                    attributes["server.address"] = parts.hostname
                    attributes["server.port"] = parts.port or (
                        443 if parts.scheme == "https" else 80
                    )
            if observer.captureContent:
                attributes["gen_ai.input.messages"] = _messagesJSON(
                    request.messages, observer.scrub
                )
            self.span = tracer.start_span(
                f"chat {model}",
                context=trace.set_span_in_context(run.span),
                kind=SpanKind.CLIENT,
                attributes=attributes,
            )

    def activate(self) -> Any:
        return _NOTHING if self.span is None else _Activation(self.span)

    def sink(self, sink: DeltaSink) -> DeltaSink:
        return sink if self.span is None else _FirstChunkSink(self, sink)

    def chunk(self) -> None:
        if self.firstChunk is None:
            self.firstChunk = self.observer.clock()

    def answered(self, response: LLMResponse, cost: float | None) -> None:
        self._count("ok", cost, response)
        span = self.span
        if span is not None:
            usage = response.usage
            reason = response.finishReason
            span.set_attribute(
                "gen_ai.response.finish_reasons", [_CONVENTION_REASONS.get(reason, reason)]
            )
            span.set_attribute("gen_ai.usage.input_tokens", usage.promptTokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.completionTokens)
            if usage.cacheReadTokens:
                span.set_attribute("gen_ai.usage.cache_read.input_tokens", usage.cacheReadTokens)
            if usage.cacheWriteTokens:
                span.set_attribute(
                    "gen_ai.usage.cache_creation.input_tokens", usage.cacheWriteTokens
                )
            if usage.reasoningTokens:
                span.set_attribute("gen_ai.usage.reasoning.output_tokens", usage.reasoningTokens)
            if self.firstChunk is not None:
                span.set_attribute(
                    "gen_ai.response.time_to_first_chunk", self.firstChunk - self.started
                )
            if self.observer.captureContent:
                span.set_attribute(
                    "gen_ai.output.messages", _outputJSON(response, self.observer.scrub)
                )
            span.end()

    def failed(self, code: str, cost: float | None = None) -> None:
        self._count(code, cost, None)
        span = self.span
        if span is not None:
            _errorStatus(span, code)
            span.end()

    def _count(self, outcome: str, cost: float | None, response: LLMResponse | None) -> None:
        metrics = self.observer.metrics
        if metrics is None:
            return
        provider, model = self.provider, self.model
        metrics.child(metrics.llmCalls, provider, model, outcome).inc()
        metrics.child(metrics.llmCallDuration, provider, model).observe(
            self.observer.clock() - self.started
        )
        if response is not None:
            usage = response.usage
            tokens = metrics.llmTokens
            for kind, count in (
                ("input", usage.promptTokens),
                ("output", usage.completionTokens),
                ("cache_read", usage.cacheReadTokens),
                ("cache_write", usage.cacheWriteTokens),
                ("reasoning", usage.reasoningTokens),
            ):
                # A counter only goes up: a count below zero (which the
                # providers refuse anyway) would raise here.
                if count > 0:
                    metrics.child(tokens, provider, model, kind).inc(count)
        if cost:
            metrics.child(metrics.cost, self.run.agent, provider, model).inc(cost)


class _Tool(ToolScope):
    def __init__(self, run: _Run, name: str, callId: str, arguments: str, kind: str) -> None:
        self.run = run
        self.name = name
        self.label = "client" if kind == "function" else name
        observer = run.observer
        self.observer = observer
        self.started = observer.clock()
        self.span: Any = None
        if observer.tracer is not None and run.span is not None:
            from opentelemetry import trace

            attributes = {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": name,
                "gen_ai.tool.call.id": callId,
                "gen_ai.tool.type": kind,
            }
            if observer.captureContent:
                attributes["gen_ai.tool.call.arguments"] = observer.scrub(arguments)
            self.span = observer.tracer.start_span(
                f"execute_tool {name}",
                context=trace.set_span_in_context(run.span),
                attributes=attributes,
            )

    def activate(self) -> Any:
        return _NOTHING if self.span is None else _Activation(self.span)

    def end(self, outcome: str, result: str | None = None) -> None:
        metrics = self.observer.metrics
        if metrics is not None:
            metrics.child(metrics.toolCalls, self.label, outcome).inc()
            metrics.child(metrics.toolDuration, self.label).observe(
                self.observer.clock() - self.started
            )
        span = self.span
        if span is not None:
            if self.observer.captureContent and result is not None:
                span.set_attribute("gen_ai.tool.call.result", self.observer.scrub(result))
            if outcome != "ok":
                _errorStatus(span, outcome)
            span.end()


#: The neutral finish reasons in the words the GenAI conventions show
#: (Chat Completions'); others go as they are.
_CONVENTION_REASONS = {
    "end": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
}


def _unchanged(text: str) -> str:
    return text


def _messagesJSON(messages: Sequence[Any], scrub: Callable[[str], str] = _unchanged) -> str:
    """
    Messages in the GenAI conventions' shape (role and parts), as JSON,
    each text through C{scrub}.
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        parts: list[dict[str, Any]] = []
        if message.content:
            parts.append({"type": "text", "content": scrub(message.content)})
        for call in message.toolCalls:
            parts.append(
                {
                    "type": "tool_call",
                    "id": call.id,
                    "name": call.name,
                    "arguments": scrub(call.arguments),
                }
            )
        if message.toolCallId is not None:
            parts = [
                {
                    "type": "tool_call_response",
                    "id": message.toolCallId,
                    "response": scrub(message.content),
                }
            ]
        out.append({"role": message.role, "parts": parts})
    return json.dumps(out, ensure_ascii=False)


def _outputJSON(response: LLMResponse, scrub: Callable[[str], str] = _unchanged) -> str:
    parts: list[dict[str, Any]] = []
    if response.reasoning:
        parts.append({"type": "reasoning", "content": scrub(response.reasoning)})
    if response.content:
        parts.append({"type": "text", "content": scrub(response.content)})
    for call in response.toolCalls:
        parts.append(
            {
                "type": "tool_call",
                "id": call.id,
                "name": call.name,
                "arguments": scrub(call.arguments),
            }
        )
    reason = _CONVENTION_REASONS.get(response.finishReason, response.finishReason)
    return json.dumps(
        [{"role": "assistant", "parts": parts, "finish_reason": reason}],
        ensure_ascii=False,
    )


__all__ = [
    "CallScope",
    "IRequestScope",
    "NULL_OBSERVER",
    "Observability",
    "Observer",
    "RequestScope",
    "RunScope",
    "ToolScope",
    "requestScope",
]
