# -*- test-case-name: tests.test_observe -*-
"""
OpenTelemetry tracing, configured only by the standard C{OTEL_*} variables.

Tracing is on when C{OTEL_TRACES_EXPORTER} names an exporter (C{otlp} or
C{console}), or, with that variable unset, when an OTLP endpoint is set
(C{OTEL_EXPORTER_OTLP_ENDPOINT} or C{OTEL_EXPORTER_OTLP_TRACES_ENDPOINT});
C{OTEL_SDK_DISABLED=true} or C{OTEL_TRACES_EXPORTER=none} keep it off.  Off,
nothing of OpenTelemetry is imported and the hooks do nothing.  The SDK
itself reads the rest: the sampler (C{OTEL_TRACES_SAMPLER}), the batch
processor's settings (C{OTEL_BSP_*}), the exporter's headers, timeout and
compression, the resource (C{OTEL_SERVICE_NAME}, C{OTEL_RESOURCE_ATTRIBUTES};
the service name defaults to C{ai-agent}) and the propagators
(C{OTEL_PROPAGATORS}, W3C trace context by default).

Twisted has no OpenTelemetry instrumentation, and a Deferred's callbacks run
in whatever context the reactor has, so the span of a run, a call or a tool
is carried by hand: the hooks keep their spans and make one current only
around the synchronous calls that start work (an LLM call, a tool call, a
sub-agent's run), which is where the outgoing C{traceparent} is written and
where a sub-agent finds its parent.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from twisted.logger import Logger

log = Logger()

#: The GenAI conventions' opt-in for recording message content.
CAPTURE_VARIABLE = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"

_CAPTURE_ON = frozenset({"true", "1", "yes", "span_only", "span_and_event"})

#: Whether any tracer was configured in this process; until then, injecting
#: trace context costs one global read.
_enabled = False


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1", "yes")


def tracingWanted(environ: Mapping[str, str]) -> bool:
    """
    Whether the C{OTEL_*} variables in C{environ} ask for traces.
    """
    if _truthy(environ.get("OTEL_SDK_DISABLED")):
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER")
    if exporters is not None and exporters.strip():
        names = {name.strip().lower() for name in exporters.split(",")}
        return bool(names - {"none", ""})
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


class Tracing:
    """
    A tracer provider with its exporters, and this program's tracer.

    @ivar tracer: creates the spans.
    @ivar captureContent: whether message content and tool arguments and
        results go on spans.
    """

    def __init__(self, provider: Any, captureContent: bool = False) -> None:
        global _enabled
        from ai_agent import __version__

        self.provider = provider
        self.tracer = provider.get_tracer("ai_agent", __version__)
        self.captureContent = captureContent
        _enabled = True

    @classmethod
    def fromEnvironment(cls, environ: Mapping[str, str]) -> Tracing | None:
        """
        The tracing C{environ} asks for, or L{None} when it asks for none
        (or the OpenTelemetry SDK is not installed, which is logged).
        """
        if not tracingWanted(environ):
            return None
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            log.warn(
                "OTEL_* variables ask for traces, but the OpenTelemetry SDK is not installed"
                " (pip install 'ai-agent[tracing]'); tracing is off"
            )
            return None
        from ai_agent import __version__

        attributes: dict[str, str] = {"service.version": __version__}
        if not environ.get("OTEL_SERVICE_NAME") and "service.name=" not in environ.get(
            "OTEL_RESOURCE_ATTRIBUTES", ""
        ):
            attributes["service.name"] = "ai-agent"
        provider = TracerProvider(resource=Resource.create(attributes))
        exporters = environ.get("OTEL_TRACES_EXPORTER") or "otlp"
        for name in {name.strip().lower() for name in exporters.split(",")} - {"none", ""}:
            exporter = _exporter(name, environ)
            if exporter is not None:
                provider.add_span_processor(BatchSpanProcessor(exporter))
        capture = (environ.get(CAPTURE_VARIABLE) or "").strip().lower() in _CAPTURE_ON
        log.info("tracing on (OpenTelemetry; content capture {capture})", capture=capture)
        return cls(provider, capture)

    def shutdown(self) -> None:
        """
        Export what is pending and stop the exporters (blocking: call it
        off the reactor thread).
        """
        self.provider.shutdown()

    def forceFlush(self) -> bool:
        """
        Export what is pending now (blocking: call it off the reactor
        thread).
        """
        return bool(self.provider.force_flush())


def _exporter(name: str, environ: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        log.warn("OTEL_TRACES_EXPORTER: unknown exporter {name!r} left out", name=name)
        return None
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError:
            log.warn(
                "OTLP over gRPC needs opentelemetry-exporter-otlp-proto-grpc; using http/protobuf"
            )
        else:
            return GrpcExporter()
    elif protocol != "http/protobuf":
        log.warn(
            "OTLP protocol {protocol!r} is not supported; using http/protobuf", protocol=protocol
        )
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        log.warn(
            "OTLP export needs opentelemetry-exporter-otlp-proto-http"
            " (pip install 'ai-agent[tracing]'); no traces are exported"
        )
        return None
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not endpoint and environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        endpoint = environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"
    return OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()


def injectTraceContext(headers: dict[str, str]) -> None:
    """
    Add the current span's C{traceparent} (and C{tracestate}) to the
    headers of an outgoing request; nothing when tracing is off or no span
    is current.
    """
    if not _enabled:
        return
    from opentelemetry import propagate

    propagate.inject(headers)


def extractTraceContext(getHeader: Callable[[bytes], bytes | None]) -> Any:
    """
    The context an incoming request continues (its C{traceparent}), or
    L{None} when it carries none.
    """
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    for name in (b"traceparent", b"tracestate", b"baggage"):
        value = getHeader(name)
        if value is not None:
            carrier[name.decode("ascii")] = value.decode("latin-1")
    if not carrier:
        return None
    return propagate.extract(carrier)


__all__ = [
    "CAPTURE_VARIABLE",
    "Tracing",
    "extractTraceContext",
    "injectTraceContext",
    "tracingWanted",
]
