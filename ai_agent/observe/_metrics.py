# -*- test-case-name: tests.test_observe -*-
"""
The Prometheus metric families, with C{prometheus_client}.

Label values stay bounded: agents and models come from the agent files,
providers from the configuration, tools from the configured MCP servers and
the sub-agents (a client's own tools all count as C{tool="client"}), statuses
and outcomes from fixed sets of codes.  Nothing a client sends becomes a
label value.

With several processes (C{--workers N}) every process writes its values into
files under C{PROMETHEUS_MULTIPROC_DIR} (prometheus_client's multiprocess
mode, chosen when the variable is set before C{prometheus_client} is first
imported) and a scrape, by any process, adds up the files of all of them.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

#: The environment variable naming prometheus_client's multiprocess directory.
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

#: The C{type} label values of C{ai_agent_llm_tokens_total}.
TOKEN_TYPES = ("input", "output", "cache_read", "cache_write", "reasoning")

_LATENCY = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_FIRST = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_WAIT = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TOOL = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


def multiprocessMode(environ: Mapping[str, str] | None = None) -> bool:
    """
    Whether metrics are shared between processes through files.
    """
    return bool((os.environ if environ is None else environ).get(MULTIPROC_DIR))


class Metrics:
    """
    The metric families of one process, and the text of a scrape.

    @ivar multiprocess: whether values live in C{PROMETHEUS_MULTIPROC_DIR}
        (and a scrape reads every process's files).
    """

    def __init__(self, multiprocess: bool | None = None) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            disable_created_metrics,
        )

        # No *_created series: they double the size of a scrape for nothing
        # a dashboard uses.
        disable_created_metrics()
        self.multiprocess = multiprocessMode() if multiprocess is None else multiprocess
        # In multiprocess mode the families are not registered anywhere: a
        # scrape collects them from the files.
        registry: Any = None if self.multiprocess else CollectorRegistry()
        self._registry = registry
        self._scrape: Any = None
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
            return Counter(name, doc, labels, registry=registry)

        def histogram(
            name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]
        ) -> Any:
            return Histogram(name, doc, labels, registry=registry, buckets=buckets)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
            return Gauge(name, doc, labels, registry=registry, multiprocess_mode="livesum")

        self.requests = counter(
            "ai_agent_requests",
            "Requests answered, by agent, headend and HTTP status (499: the client went away).",
            ("agent", "headend", "status"),
        )
        self.requestDuration = histogram(
            "ai_agent_request_duration_seconds",
            "Seconds from a request's arrival to the end of its answer.",
            ("agent", "headend"),
            _LATENCY,
        )
        self.timeToFirstToken = histogram(
            "ai_agent_time_to_first_token_seconds",
            "Seconds from a request's arrival to the first piece of its answer.",
            ("agent", "headend"),
            _FIRST,
        )
        self.queueWait = histogram(
            "ai_agent_queue_wait_seconds",
            "Seconds a request waited for a run slot (0 when one was free).",
            (),
            _WAIT,
        )
        self.queueDepth = gauge("ai_agent_queue_depth", "Requests waiting for a run slot now.")
        self.queueRejections = counter(
            "ai_agent_queue_rejections",
            "Requests refused with 503: queue full, waited too long, or shutting down.",
        )
        self.runsInProgress = gauge(
            "ai_agent_runs_in_progress",
            "Agent runs going on now (sub-agent runs included).",
            ("agent",),
        )
        self.llmCalls = counter(
            "ai_agent_llm_calls",
            "LLM calls, by outcome: ok, an error code, or cancelled.",
            ("provider", "model", "outcome"),
        )
        self.llmCallDuration = histogram(
            "ai_agent_llm_call_duration_seconds",
            "Seconds one LLM call took.",
            ("provider", "model"),
            _LATENCY,
        )
        self.llmTokens = counter(
            "ai_agent_llm_tokens",
            "Tokens of LLM calls by type: input and output; cache_read, cache_write"
            " (parts of input) and reasoning (part of output).",
            ("provider", "model", "type"),
        )
        self.llmRetries = counter(
            "ai_agent_llm_retries",
            "LLM calls that failed and were followed by another attempt of the same turn.",
            ("provider", "model"),
        )
        self.limitRefusals = counter(
            "ai_agent_limit_refusals",
            "Requests refused (429), or runs ended, by a limit: requestsPerMinute,"
            " concurrentRuns, tokensPerDay or costPerDay; by key name (never the key)"
            " and agent.",
            ("key", "agent", "limit"),
        )
        self.keyTokens = counter(
            "ai_agent_key_tokens",
            "Tokens (input plus output) runs spent, by key name (never the key) and agent.",
            ("key", "agent"),
        )
        self.keyCost = counter(
            "ai_agent_key_cost_usd",
            "USD runs spent (from the configured pricing), by key name and agent.",
            ("key", "agent"),
        )
        self.toolCalls = counter(
            "ai_agent_tool_calls",
            "Tool calls, by outcome: ok, error, timeout or cancelled (handed_back: a client's"
            " tool call, counted as tool=client).",
            ("tool", "outcome"),
        )
        self.toolDuration = histogram(
            "ai_agent_tool_duration_seconds", "Seconds one tool call took.", ("tool",), _TOOL
        )
        self.cost = counter(
            "ai_agent_cost_usd",
            "Cost of LLM calls in USD, for models with a price.",
            ("agent", "provider", "model"),
        )
        if registry is not None:
            _addProcessCollectors(registry)

    def child(self, family: Any, *labels: str) -> Any:
        """
        C{family.labels(*labels)}, kept: label values are bounded (see the
        module's docstring), and C{labels} checks and locks on every call.
        """
        key = (family, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return child

    def render(self) -> tuple[bytes, str]:
        """
        A scrape: the exposition text and its content type.
        """
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self._scrapeRegistry()), CONTENT_TYPE_LATEST

    def _scrapeRegistry(self) -> Any:
        if self._registry is not None:
            return self._registry
        if self._scrape is None:
            from prometheus_client import CollectorRegistry
            from prometheus_client.multiprocess import MultiProcessCollector

            scrape = CollectorRegistry()
            MultiProcessCollector(scrape)
            # The process metrics are those of the process answering.
            _addProcessCollectors(scrape)
            self._scrape = scrape
        return self._scrape


def _addProcessCollectors(registry: Any) -> None:
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


def markProcessDead(pid: int) -> None:
    """
    Forget the live gauges of a process that ended (in multiprocess mode;
    otherwise nothing).
    """
    if not multiprocessMode():
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


__all__ = ["MULTIPROC_DIR", "Metrics", "TOKEN_TYPES", "markProcessDead", "multiprocessMode"]
