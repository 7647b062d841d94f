# -*- test-case-name: tests.test_observe -*-
"""
Observability: Prometheus metrics, OpenTelemetry traces following the GenAI
conventions, and JSON log lines.

Everything reports through one small hook interface, L{Observer}: the
headends (one L{RequestScope} per request), the pool (queue depth, waits and
refusals), the session (a L{RunScope} per run, a L{CallScope} per LLM call, a
L{ToolScope} per tool call) and the HTTP clients (the outgoing
C{traceparent}).  With metrics and tracing off the hooks do nothing.
"""

from ai_agent.observe._hooks import (
    NULL_OBSERVER,
    CallScope,
    IRequestScope,
    Observability,
    Observer,
    RequestScope,
    RunScope,
    ToolScope,
    requestScope,
)
from ai_agent.observe._logs import DebugLogger, eventAsJSON, jsonFileLogObserver, writeDebug
from ai_agent.observe._metrics import (
    MULTIPROC_DIR,
    TOKEN_TYPES,
    Metrics,
    markProcessDead,
    multiprocessMode,
)
from ai_agent.observe._tracing import (
    CAPTURE_VARIABLE,
    Tracing,
    extractTraceContext,
    injectTraceContext,
    tracingWanted,
)
from ai_agent.observe._web import (
    METRICS_PATH,
    MetricsResource,
    WithMetrics,
    metricsSite,
    observedRoute,
)

__all__ = [
    "CAPTURE_VARIABLE",
    "CallScope",
    "DebugLogger",
    "IRequestScope",
    "METRICS_PATH",
    "MULTIPROC_DIR",
    "Metrics",
    "MetricsResource",
    "NULL_OBSERVER",
    "Observability",
    "Observer",
    "RequestScope",
    "RunScope",
    "TOKEN_TYPES",
    "ToolScope",
    "Tracing",
    "WithMetrics",
    "eventAsJSON",
    "extractTraceContext",
    "injectTraceContext",
    "jsonFileLogObserver",
    "markProcessDead",
    "metricsSite",
    "multiprocessMode",
    "observedRoute",
    "requestScope",
    "tracingWanted",
    "writeDebug",
]
