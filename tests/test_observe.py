"""
Observability: C{/metrics} read back with prometheus_client's own parser
after scripted runs, GenAI spans exported over OTLP/HTTP to a receiver in
the test (decoded with opentelemetry-proto), and JSON log lines.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from ai_agent.accounting import RunAccount, RunLabels
from ai_agent.connections import TrackingFactory
from ai_agent.events import Usage
from ai_agent.headends._http import APIKeys, HTTPPolicy
from ai_agent.observe import (
    NULL_OBSERVER,
    DebugLogger,
    Metrics,
    Observability,
    Tracing,
    eventAsJSON,
    tracingWanted,
    writeDebug,
)
from ai_agent.tap import ServerOptions, makeObserver
from ai_agent.testing import Reply, startFakeUpstream
from tests._harness import LiveServer, inThread, startServer, writeAgent
from tests.mcp_servers import httpClient, startHttpCalc, waitFor

AGENT = """\
---
description: The plain agent
models: fake/test-model
maxRetries: 2
---
You answer.
"""

BOSS = """\
---
description: The boss
models: fake/test-model
agents: [helper.ai]
---
You delegate.
"""

HELPER = """\
---
description: A helper
models: fake/test-model
---
You help.
"""

TOOL_HELPER = """\
---
description: Reads headers
models: fake/test-model
tools: [calc]
---
You read headers.
"""

#: One USD per input token, two per output token.
PRICING = {"pricing": {"fake/test-model": {"prompt": 1_000_000, "completion": 2_000_000}}}


def metricValue(text: str, name: str, **labels: str) -> float:
    """
    The sum of the samples called C{name} whose labels include C{labels},
    parsed with prometheus_client's parser.
    """
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def metricSeries(text: str, name: str, **labels: str) -> list[float]:
    """
    The values of the samples called C{name} whose labels include
    C{labels}: empty when there is no such series (which a C{== 0} on
    L{metricValue} could not tell from a series at zero).
    """
    from prometheus_client.parser import text_string_to_metric_families

    return [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    ]


def metricNames(text: str) -> set[str]:
    """
    The family names in a scrape.
    """
    from prometheus_client.parser import text_string_to_metric_families

    return {family.name for family in text_string_to_metric_families(text)}


async def scrape(testCase: TestCase, url: str, **headers: str) -> tuple[int, str]:
    """
    GET C{url}; the status and the body.
    """
    import treq

    client = httpClient(testCase)
    response = await client.get(url, headers={k: [v] for k, v in headers.items()})
    body = await treq.content(response)
    return response.code, body.decode("utf-8")


class _HeldStream:
    """
    A streaming chat completion sent on a raw socket and left open.
    """

    def __init__(self, port: int, model: str = "agent") -> None:
        body = json.dumps(
            {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        ).encode()
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )

    def close(self) -> None:
        self.sock.close()


class MetricsTests(TestCase):
    """
    C{/metrics} after runs against the real headend and fake upstream.
    """

    async def test_countsEqualWhatWasSent(self) -> None:
        """
        After two answers, an upstream failure (two attempts), a run with a
        sub-agent tool call and a request refused by the full pool, the
        scrape counts exactly those: requests by agent and status, LLM calls
        by outcome, the retry, tokens by type, the tool call, the refusal,
        the queue waits and the cost; no run or queued request is left in
        the gauges; the process metrics are there.
        """
        observer = Observability(Metrics(), None, clock=reactor.seconds)
        server = await startServer(
            self,
            agents={"agent.ai": AGENT, "boss.ai": BOSS, "helper.ai": HELPER},
            concurrency=1,
            maxQueue=0,
            observer=observer,
            extraConfig=PRICING,
        )
        upstream = server.upstream
        client = server.client()
        user = [{"role": "user", "content": "hi"}]
        upstream.script(Reply(content="one", usage=(5, 2)))
        await inThread(client.chat.completions.create, model="agent", messages=user)
        upstream.script(Reply(content="two", usage=(6, 3)))

        def streamed() -> list[Any]:
            return list(client.chat.completions.create(model="agent", messages=user, stream=True))

        await inThread(streamed)
        upstream.script(Reply(status=500), Reply(status=500))
        failure = await _failureOf(client.chat.completions.create, model="agent", messages=user)
        self.assertEqual(failure.status_code, 502)
        upstream.script(
            Reply(toolCalls=[("agent__helper", {"prompt": "help"})], usage=(10, 1)),
            Reply(content="helped", usage=(20, 2)),
            Reply(content="done", usage=(30, 3)),
        )
        await inThread(client.chat.completions.create, model="boss", messages=user)

        upstream.script(Reply(content="held", hold=True, usage=(1, 1)))
        held = _HeldStream(server.port.getHost().port)
        self.addCleanup(held.close)
        await upstream.waitForRequests(len(upstream.requests) + 1).addTimeout(10, reactor)
        refused = await _failureOf(client.chat.completions.create, model="agent", messages=user)
        self.assertEqual(refused.status_code, 503)
        upstream.release()
        await waitFor(lambda: server.pool.activeRuns == 0)

        status, text = await scrape(self, server.baseUrl[: -len("/v1")] + "/metrics")
        self.assertEqual(status, 200)

        def value(name: str, **labels: str) -> float:
            return metricValue(text, name, **labels)

        requests = "ai_agent_requests_total"
        self.assertEqual(value(requests, agent="agent", headend="openai", status="200"), 3)
        self.assertEqual(value(requests, agent="agent", status="502"), 1)
        self.assertEqual(value(requests, agent="agent", status="503"), 1)
        self.assertEqual(value(requests, agent="boss", status="200"), 1)
        self.assertEqual(value(requests), 6)
        self.assertEqual(value("ai_agent_request_duration_seconds_count", agent="agent"), 5)
        self.assertEqual(value("ai_agent_time_to_first_token_seconds_count", agent="agent"), 3)
        calls = "ai_agent_llm_calls_total"
        model = {"provider": "fake", "model": "test-model"}
        self.assertEqual(value(calls, outcome="ok", **model), 6)
        self.assertEqual(value(calls, outcome="upstream_error", **model), 2)
        self.assertEqual(value("ai_agent_llm_call_duration_seconds_count", **model), 8)
        self.assertEqual(value("ai_agent_llm_retries_total", **model), 1)
        tokens = "ai_agent_llm_tokens_total"
        self.assertEqual(value(tokens, type="input", **model), 5 + 6 + 10 + 20 + 30 + 1)
        self.assertEqual(value(tokens, type="output", **model), 2 + 3 + 1 + 2 + 3 + 1)
        self.assertEqual(value("ai_agent_tool_calls_total", tool="agent__helper", outcome="ok"), 1)
        self.assertEqual(value("ai_agent_tool_calls_total"), 1)
        self.assertEqual(value("ai_agent_tool_duration_seconds_count", tool="agent__helper"), 1)
        self.assertEqual(value("ai_agent_queue_rejections_total"), 1)
        self.assertEqual(value("ai_agent_queue_wait_seconds_count"), 5)
        # Gauges back at zero: the series must be there, not merely absent.
        self.assertEqual(metricSeries(text, "ai_agent_queue_depth"), [0])
        for agent in ("agent", "boss", "helper"):
            self.assertEqual(metricSeries(text, "ai_agent_runs_in_progress", agent=agent), [0])
        cost = "ai_agent_cost_usd_total"
        self.assertEqual(value(cost, agent="agent", **model), (5 + 6 + 1) + 2 * (2 + 3 + 1))
        self.assertEqual(value(cost, agent="boss", **model), (10 + 30) + 2 * (1 + 3))
        self.assertEqual(value(cost, agent="helper", **model), 20 + 2 * 2)
        self.assertIn("process_cpu_seconds", metricNames(text))

    async def test_statusWrittenIsCounted(self) -> None:
        """
        A request refused by the full pool is counted under the status the
        client was answered with: an Anthropic client gets C{529
        overloaded_error} and the metric says C{status="529"} (not the
        neutral error's 503); a Chat Completions client gets a 503, counted
        as 503.
        """
        import treq

        observer = Observability(Metrics(), None, clock=reactor.seconds)
        server = await startServer(
            self, concurrency=1, maxQueue=0, observer=observer, agents={"agent.ai": AGENT}
        )
        upstream = server.upstream
        upstream.script(Reply(content="held", hold=True))
        held = _HeldStream(server.port.getHost().port)
        self.addCleanup(held.close)
        await upstream.waitForRequests(1).addTimeout(10, reactor)
        base = server.baseUrl[: -len("/v1")]
        body = {"model": "agent", "max_tokens": 16, "messages": [{"role": "user", "content": "x"}]}
        client = httpClient(self)
        response = await client.post(
            base + "/v1/messages",
            json.dumps(body).encode(),
            headers={"content-type": "application/json", "anthropic-version": "2023-06-01"},
        ).addTimeout(10, reactor)
        answer = json.loads(await treq.content(response))
        self.assertEqual(response.code, 529)
        self.assertEqual(answer["error"]["type"], "overloaded_error")
        chat = await client.post(
            base + "/v1/chat/completions",
            json.dumps({"model": "agent", "messages": body["messages"]}).encode(),
            headers={"content-type": "application/json"},
        ).addTimeout(10, reactor)
        await treq.content(chat)
        self.assertEqual(chat.code, 503)
        upstream.release()
        await waitFor(lambda: server.pool.activeRuns == 0)

        status, text = await scrape(self, base + "/metrics")
        self.assertEqual(status, 200)
        requests = "ai_agent_requests_total"
        self.assertEqual(metricSeries(text, requests, headend="anthropic", status="529"), [1])
        self.assertEqual(metricSeries(text, requests, headend="anthropic", status="503"), [])
        self.assertEqual(metricSeries(text, requests, headend="openai", status="503"), [1])

    async def test_clientToolHandedBack(self) -> None:
        """
        A client's own tool, called by the model and handed back to the
        client, counts once as C{tool="client"}, never under its name.
        """
        metrics = Metrics()
        server = await startServer(self, observer=Observability(metrics, None))
        server.upstream.script(Reply(toolCalls=[("get_weather", {"city": "Paris"})]))
        weather = {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
        result = await inThread(
            server.client().chat.completions.create,
            model="agent",
            messages=[{"role": "user", "content": "weather?"}],
            tools=[weather],
        )
        self.assertEqual(result.choices[0].message.tool_calls[0].function.name, "get_weather")
        text = metrics.render()[0].decode()
        self.assertEqual(
            metricValue(text, "ai_agent_tool_calls_total", tool="client", outcome="handed_back"), 1
        )
        self.assertEqual(metricValue(text, "ai_agent_tool_calls_total"), 1)
        self.assertNotIn("get_weather", text)

    async def test_apiKeyRule(self) -> None:
        """
        With client keys set, C{/metrics} needs one like the API does.
        """
        observer = Observability(Metrics(), None)
        server = await startServer(
            self, observer=observer, policy=HTTPPolicy(apiKeys=APIKeys.fromKeys(["k-1"]))
        )
        url = server.baseUrl[: -len("/v1")] + "/metrics"
        status, body = await scrape(self, url)
        self.assertEqual(status, 401)
        self.assertEqual(json.loads(body)["error"]["code"], "invalid_api_key")
        status, body = await scrape(self, url, Authorization="Bearer k-1")
        self.assertEqual(status, 200)
        self.assertIn("ai_agent_requests", metricNames(body))

    async def test_otherPathsUntouched(self) -> None:
        """
        Serving C{/metrics} leaves the headend's own routes and its 404s as
        they were.
        """
        server = await startServer(self, observer=Observability(Metrics(), None))
        root = server.baseUrl[: -len("/v1")]
        status, body = await scrape(self, root + "/health")
        self.assertEqual((status, json.loads(body)["status"]), (200, "ok"))
        status, body = await scrape(self, root + "/metrics/more")
        self.assertEqual((status, json.loads(body)["error"]["code"]), (404, "not_found"))


async def _failureOf(f: Any, *args: Any, **kwargs: Any) -> Any:
    """
    The exception C{f} raised in a thread.
    """
    try:
        await inThread(f, *args, **kwargs)
    except Exception as error:  # noqa: BLE001 - returned to be checked
        return error
    raise AssertionError("no error")


class HookTests(SynchronousTestCase):
    """
    The hooks on their own.
    """

    def test_clientToolsCountAsClient(self) -> None:
        """
        A client's own tool (a C{function} tool) counts as C{tool="client"},
        never under its own name.
        """
        metrics = Metrics()
        run = Observability(metrics).run("agent")
        run.tool("get_weather", "call_1", "{}", kind="function").end("ok")
        run.end("stop")
        text = metrics.render()[0].decode()
        self.assertEqual(metricValue(text, "ai_agent_tool_calls_total", tool="client"), 1)
        self.assertNotIn("get_weather", text)

    def test_offMeansNothing(self) -> None:
        """
        Without C{OTEL_*} variables asking for traces and with
        C{--no-metrics}, the server gets the observer that does nothing.
        """
        options = ServerOptions()
        options["metrics"] = False
        self.assertIs(makeObserver(options, {}, reactor), NULL_OBSERVER)
        self.assertIsNone(Tracing.fromEnvironment({}))

    def test_tracingWanted(self) -> None:
        """
        Traces are on for an OTLP endpoint or a named exporter, off when
        disabled or unset.
        """
        self.assertFalse(tracingWanted({}))
        self.assertTrue(tracingWanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}))
        self.assertTrue(tracingWanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c/v1"}))
        self.assertTrue(tracingWanted({"OTEL_TRACES_EXPORTER": "console"}))
        self.assertFalse(
            tracingWanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"})
        )
        self.assertFalse(
            tracingWanted({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"})
        )


class DocumentedMetricsTests(SynchronousTestCase):
    """
    The documentation and the Grafana dashboard name the families there are.
    """

    def test_sameFamilies(self) -> None:
        """
        The families in docs/observability.md's table are exactly those a
        scrape has, and every family the dashboard queries is one of them.
        """
        import re

        from tests._process import CHECKOUT

        families = {name for name in metricNames(Metrics().render()[0].decode())}
        ours = {name for name in families if name.startswith("ai_agent_")}
        with open(os.path.join(CHECKOUT, "docs", "observability.md"), encoding="utf-8") as f:
            documented = set(re.findall(r"^\| `(ai_agent_\w+)`", f.read(), re.MULTILINE))
        self.assertEqual({_family(name) for name in documented}, ours)
        with open(os.path.join(CHECKOUT, "docs", "grafana-dashboard.json"), encoding="utf-8") as f:
            queried = set(re.findall(r"\b(ai_agent_\w+)", f.read()))
        self.assertTrue(queried)
        self.assertEqual({_family(name) for name in queried} - ours, set())


def _family(sample: str) -> str:
    """
    The family of a sample name (the name without its counter or histogram
    suffix).
    """
    for suffix in ("_bucket", "_count", "_sum", "_total"):
        if sample.endswith(suffix):
            return sample[: -len(suffix)]
    return sample


class JSONLogTests(SynchronousTestCase):
    """
    C{--log-format json}.
    """

    def test_runLine(self) -> None:
        """
        A run's line is one JSON object with the run's fields as keys (the
        trace id among them); the text-only helper fields are left out.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        account = RunAccount(
            "agent",
            10.0,
            labels=RunLabels("chatcmpl-1", stream=True, user="ann"),
            traceId="ab" * 16,
        )
        account.record("fake/test-model", Usage(3, 4), 0.5)
        account.finish("stop", 11.25)
        [event] = [
            e
            for e in events
            if e.get("log_namespace") == "ai_agent.accounting" and e["log_level"].name == "info"
        ]
        line = eventAsJSON(event)
        self.assertTrue(line.endswith("\n"))
        self.assertEqual(line.count("\n"), 1)
        record = json.loads(line)
        self.assertEqual(
            {key: record[key] for key in ("agent", "requestId", "outcome", "user", "traceId")},
            {
                "agent": "agent",
                "requestId": "chatcmpl-1",
                "outcome": "stop",
                "user": "ann",
                "traceId": "ab" * 16,
            },
        )
        self.assertEqual((record["promptTokens"], record["completionTokens"]), (3, 4))
        self.assertEqual(record["duration"], 1.25)
        self.assertEqual(record["level"], "info")
        self.assertIn("chatcmpl-1 for agent agent stop", record["message"])
        self.assertIn("trace " + "ab" * 16, record["message"])
        self.assertFalse([key for key in record if key.startswith(("_", "log_"))])


class DebugLoggerTests(SynchronousTestCase):
    """
    L{DebugLogger}: a debug event is made only when the process writes
    debug events (L{writeDebug}, called by the CLI with the level it chose).
    """

    def setUp(self) -> None:
        self.addCleanup(setattr, DebugLogger, "written", DebugLogger.written)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def _accountingEvents(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("log_namespace") == "ai_agent.accounting"]

    def test_debugOffMakesNoEvent(self) -> None:
        """
        Logging at info: an upstream call's debug line reaches no observer at
        all (not even one that sees every level, so it was never made), while
        the run's info line still does.
        """
        writeDebug(LogLevel.info)
        account = RunAccount("agent", 10.0, labels=RunLabels("chatcmpl-1"))
        account.record("fake/test-model", Usage(3, 4), 0.5)
        account.finish("stop", 11.25)
        self.assertEqual([e["log_level"] for e in self._accountingEvents()], [LogLevel.info])

    def test_debugOnWritesIt(self) -> None:
        """
        Logging at debug: the call's debug line is made and written, with its
        fields, by a text observer filtering at debug.
        """
        writeDebug(LogLevel.debug)
        lines: list[str] = []
        observer = FilteringLogObserver(
            lambda event: lines.append(formatEvent(event)),
            [LogLevelFilterPredicate(defaultLogLevel=LogLevel.debug)],
        )
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        RunAccount("agent", 10.0).record("fake/test-model", Usage(3, 4), 0.5)
        [event] = self._accountingEvents()
        self.assertEqual(event["log_level"], LogLevel.debug)
        self.assertEqual(
            lines, ["agent agent: fake/test-model call answered in 0.500s, 3+4 tokens"]
        )

    def test_otherLevelsUntouched(self) -> None:
        """
        With debug off, a L{DebugLogger}'s other levels are emitted as a
        L{Logger}'s are; and it keeps the namespace of the module that made it.
        """
        writeDebug(LogLevel.warn)
        log = DebugLogger()
        log.debug("dropped")
        log.info("kept {n}", n=1)
        log.warn("kept {n}", n=2)
        mine = [e for e in self.events if e.get("log_namespace") == __name__]
        self.assertEqual([formatEvent(e) for e in mine], ["kept 1", "kept 2"])


class JSONLogMessageTests(SynchronousTestCase):
    """
    The JSON log's fast formatting of messages.
    """

    def test_sameTextAsTwisted(self) -> None:
        """
        A JSON log line's C{message} is what Twisted's C{formatEvent} gives:
        for a run's line, fields formatted, indexed, converted and called,
        missing fields, positional fields, bytes and absent formats, with a
        failure.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        account = RunAccount("agent", 10.0, labels=RunLabels("chatcmpl-1", stream=False))
        account.record("fake/test-model", Usage(3, 4), 0.5)
        account.finish("stop", 11.25)
        failure = Failure(ZeroDivisionError("boom"))
        cases: list[dict[str, Any]] = [
            *[e for e in events if e.get("log_namespace") == "ai_agent.accounting"],
            {"log_format": "{f()} {x!r:>10} {y[0]} {z.real} {{x}}", "f": lambda: "called"}
            | {"x": "s", "y": [1], "z": 3},
            {"log_format": "{missing}"},
            {"log_format": "{} {0}"},
            {"log_format": b"bytes {x}", "x": 1},
            {"log_format": None},
            {},
            {"log_format": "{x:.2f}", "x": "not a number"},
            {"log_format": "failed: {x}", "x": 1, "log_failure": failure},
        ]
        self.assertEqual(len(cases), 10)
        for event in cases:
            self.assertEqual(json.loads(eventAsJSON(event))["message"], formatEvent(event))


class _Receiver(Resource):
    """
    An OTLP/HTTP trace receiver: decodes each export with opentelemetry-proto.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[Any] = []
        self.resources: list[Any] = []

    def render_POST(self, request: Any) -> bytes:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        message = ExportTraceServiceRequest()
        message.ParseFromString(request.content.read())
        for resourceSpans in message.resource_spans:
            self.resources.append(resourceSpans.resource)
            for scopeSpans in resourceSpans.scope_spans:
                self.spans.extend(scopeSpans.spans)
        request.setHeader(b"content-type", b"application/x-protobuf")
        return ExportTraceServiceResponse().SerializeToString()


def startReceiver(testCase: TestCase) -> tuple[_Receiver, str]:
    """
    Listen on 127.0.0.1 for OTLP/HTTP exports until the test ends; the
    receiver and its base URL.
    """
    receiver = _Receiver()
    factory = TrackingFactory(Site(receiver))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    testCase.addCleanup(port.stopListening)
    testCase.addCleanup(factory.dropConnections)
    return receiver, f"http://127.0.0.1:{port.getHost().port}"


def attributes(span: Any) -> dict[str, Any]:
    """
    A decoded span's attributes as plain values.
    """
    found: dict[str, Any] = {}
    for item in span.attributes:
        value = item.value
        kind = value.WhichOneof("value")
        if kind == "array_value":
            found[item.key] = [getattr(v, v.WhichOneof("value")) for v in value.array_value.values]
        else:
            found[item.key] = getattr(value, kind)
    return found


class TracingTests(TestCase):
    """
    Spans of real runs, exported over OTLP/HTTP.
    """

    timeout = 60

    async def startTraced(
        self, extraEnviron: dict[str, str] | None = None
    ) -> tuple[_Receiver, Tracing, LiveServer]:
        receiver, url = startReceiver(self)
        environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": url, **(extraEnviron or {})}
        tracing = Tracing.fromEnvironment(environ)
        assert tracing is not None
        self.addCleanup(deferToThread, tracing.shutdown)
        calc = await startHttpCalc(self)
        server = await startServer(
            self,
            agents={"boss.ai": BOSS.replace("helper.ai", "reader.ai"), "reader.ai": TOOL_HELPER},
            mcpServers={"calc": {"type": "http", "url": calc}},
            observer=Observability(None, tracing),
        )
        return receiver, tracing, server

    async def test_spanTree(self) -> None:
        """
        A request carrying a W3C C{traceparent} is continued: its server
        span, the boss's C{invoke_agent} with its two C{chat} calls and its
        C{execute_tool} of the sub-agent, under which the sub-agent's own
        C{invoke_agent}, C{chat} calls and MCP C{execute_tool}; every span
        has the GenAI attributes; every upstream LLM call and the MCP
        server's HTTP request carried the C{traceparent} of their span; no
        message content is recorded without the opt-in.
        """
        receiver, tracing, server = await self.startTraced()
        server.upstream.script(
            Reply(toolCalls=[("agent__reader", {"prompt": "which header?"})], usage=(10, 1)),
            Reply(toolCalls=[("calc__header", {"name": "traceparent"})], usage=(20, 2)),
            Reply(content="it is known", usage=(30, 3)),
            Reply(content="The reader knows.", usage=(40, 4)),
        )
        traceId, parentId = secrets.token_hex(16), secrets.token_hex(8)

        def consume() -> list[Any]:
            return list(
                server.client().chat.completions.create(
                    model="boss",
                    messages=[{"role": "user", "content": "secret question"}],
                    stream=True,
                    extra_headers={"traceparent": f"00-{traceId}-{parentId}-01"},
                )
            )

        await inThread(consume)
        await waitFor(lambda: server.pool.activeRuns == 0)
        await deferToThread(tracing.forceFlush)
        spans = receiver.spans
        self.assertEqual({span.trace_id.hex() for span in spans}, {traceId})

        def named(name: str) -> list[Any]:
            return [span for span in spans if span.name == name]

        def children(parent: Any) -> list[Any]:
            found = [span for span in spans if span.parent_span_id == parent.span_id]
            return sorted(found, key=lambda span: span.start_time_unix_nano)

        [http] = named("POST /v1/chat/completions")
        self.assertEqual(http.parent_span_id.hex(), parentId)
        self.assertEqual(http.kind, http.SPAN_KIND_SERVER)
        self.assertEqual(attributes(http)["http.response.status_code"], 200)
        [boss] = children(http)
        self.assertEqual(boss.name, "invoke_agent boss")
        self.assertEqual(
            {k: attributes(boss)[k] for k in ("gen_ai.operation.name", "gen_ai.agent.name")},
            {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "boss"},
        )
        bossChat1, tool, bossChat2 = children(boss)
        self.assertEqual(
            [bossChat1.name, tool.name, bossChat2.name],
            ["chat test-model", "execute_tool agent__reader", "chat test-model"],
        )
        [reader] = children(tool)
        self.assertEqual(reader.name, "invoke_agent reader")
        readerChat1, calcTool, readerChat2 = children(reader)
        self.assertEqual(
            [readerChat1.name, calcTool.name, readerChat2.name],
            ["chat test-model", "execute_tool calc__header", "chat test-model"],
        )
        self.assertEqual(children(calcTool), [])
        self.assertEqual(len(spans), 9)

        chat = attributes(bossChat1)
        self.assertEqual(bossChat1.kind, bossChat1.SPAN_KIND_CLIENT)
        self.assertEqual(
            {
                k: chat[k]
                for k in (
                    "gen_ai.operation.name",
                    "gen_ai.provider.name",
                    "gen_ai.request.model",
                    "gen_ai.response.finish_reasons",
                    "gen_ai.usage.input_tokens",
                    "gen_ai.usage.output_tokens",
                    "server.address",
                )
            },
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "fake",
                "gen_ai.request.model": "test-model",
                "gen_ai.response.finish_reasons": ["tool_calls"],
                "gen_ai.usage.input_tokens": 10,
                "gen_ai.usage.output_tokens": 1,
                "server.address": "127.0.0.1",
            },
        )
        answer = attributes(bossChat2)
        self.assertEqual(answer["gen_ai.response.finish_reasons"], ["stop"])
        self.assertGreaterEqual(answer["gen_ai.response.time_to_first_chunk"], 0)
        upstreamCall = server.upstream.requests[3].body["messages"][-2]["tool_calls"][0]
        self.assertEqual(
            attributes(tool),
            {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "agent__reader",
                "gen_ai.tool.call.id": upstreamCall["id"],
                "gen_ai.tool.type": "extension",
            },
        )
        self.assertEqual(attributes(calcTool)["gen_ai.tool.name"], "calc__header")

        # The traceparent each upstream call and the MCP server saw.
        for request, span in zip(
            server.upstream.requests,
            [bossChat1, readerChat1, readerChat2, bossChat2],
            strict=True,
        ):
            self.assertEqual(
                request.headers["traceparent"], f"00-{traceId}-{span.span_id.hex()}-01"
            )
        toolResult = server.upstream.requests[2].body["messages"][-1]["content"]
        self.assertEqual(toolResult, f"00-{traceId}-{calcTool.span_id.hex()}-01")

        for span in spans:
            self.assertFalse([key for key in attributes(span) if "messages" in key], span.name)
        [resource] = {
            tuple((a.key, a.value.string_value) for a in r.attributes if a.key == "service.name")
            for r in receiver.resources
        }
        self.assertEqual(resource, (("service.name", "ai-agent"),))

    async def test_contentCaptureOptIn(self) -> None:
        """
        With the GenAI conventions' capture variable set, the C{chat} spans
        carry the input and output messages and the tool span its arguments
        and result.
        """
        receiver, tracing, server = await self.startTraced(
            {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"}
        )
        server.upstream.script(
            Reply(toolCalls=[("agent__reader", {"prompt": "which header?"})]),
            Reply(content="none needed"),
            Reply(content="Done."),
        )
        await inThread(
            server.client().chat.completions.create,
            model="boss",
            messages=[{"role": "user", "content": "secret question"}],
        )
        await deferToThread(tracing.forceFlush)
        chats = [span for span in receiver.spans if span.name == "chat test-model"]
        first = min(chats, key=lambda span: span.start_time_unix_nano)
        inputs = json.loads(attributes(first)["gen_ai.input.messages"])
        self.assertEqual(
            inputs[-1], {"role": "user", "parts": [{"type": "text", "content": "secret question"}]}
        )
        outputs = json.loads(attributes(first)["gen_ai.output.messages"])
        self.assertEqual(outputs[0]["parts"][0]["name"], "agent__reader")
        [tool] = [span for span in receiver.spans if span.name.startswith("execute_tool")]
        self.assertEqual(
            json.loads(attributes(tool)["gen_ai.tool.call.arguments"]), {"prompt": "which header?"}
        )
        self.assertEqual(attributes(tool)["gen_ai.tool.call.result"], "none needed")


class _RawClient:
    """
    One HTTP request on a new connection (so the kernel picks the accepting
    process afresh), its answer collected as it comes.
    """

    def __init__(self) -> None:
        self.data = b""
        self.closed: Deferred[None] = Deferred()
        self.transport: Any = None

    @classmethod
    async def send(cls, port: int, method: str, path: str, body: Any = None) -> _RawClient:
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        from twisted.internet.protocol import Protocol

        client = cls()

        class Collect(Protocol):
            def dataReceived(self, data: bytes) -> None:
                client.data += data

            def connectionLost(self, reason: Any = None) -> None:
                client.closed.callback(None)

        protocol = Collect()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol)
        client.transport = protocol.transport
        payload = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Length: {len(payload)}\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        protocol.transport.write(head.encode() + b"\r\n" + payload)
        return client

    @property
    def status(self) -> int | None:
        if not self.data.startswith(b"HTTP/"):
            return None
        return int(self.data.split(b" ", 2)[1])

    def close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()


async def _answer(port: int, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    client = await _RawClient.send(port, method, path, body)
    await client.closed.addTimeout(20, reactor)
    assert client.status is not None, client.data
    return client.status, client.data.partition(b"\r\n\r\n")[2]


def _perProcess(directory: str) -> dict[int, float]:
    """
    The requests each process counted, read from its own files in the
    multiprocess directory.
    """
    import shutil
    import tempfile

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    files: dict[int, list[str]] = {}
    for name in os.listdir(directory):
        stem = name.rsplit(".", 1)[0]
        pid = stem.rsplit("_", 1)[-1]
        if pid.isdigit():
            files.setdefault(int(pid), []).append(name)
    counts: dict[int, float] = {}
    for pid, names in files.items():
        alone = tempfile.mkdtemp()
        try:
            for name in names:
                shutil.copy(os.path.join(directory, name), alone)
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=alone)
            text = generate_latest(registry).decode()
        finally:
            shutil.rmtree(alone)
        counts[pid] = metricValue(text, "ai_agent_requests_total")
    return {pid: count for pid, count in counts.items() if count}


class WorkersTests(TestCase):
    """
    C{ai-agent --workers 2 --metrics-port N --log-format json}, real processes,
    with tracing asked for by C{OTEL_*} variables.
    """

    timeout = 120

    async def test_oneScrapeSeesEveryWorker(self) -> None:
        """
        With two processes sharing the port, answers, an upstream failure, a
        tool call and pool refusals spread over both; one scrape of the
        unauthenticated metrics port counts all of them, as does C{/metrics}
        on the API port (either process answers), while each process's own
        files hold only its part.  Every log line is one JSON object; the
        run lines carry the run's fields.  The metrics directory the server
        made is gone after it exits.  Tracing, configured by C{OTEL_*}
        variables alone, exported every run's spans by then, under the
        service name given, and each run line names its run's trace.
        """
        from tests._process import ServerProcess, childEnvironment, command, freePort
        from tests.test_workers import _children, _killed

        running = await startFakeUpstream(reactor)
        self.addCleanup(running.stop)
        upstream = running.upstream
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        temp = os.path.join(directory, "tmp")
        os.makedirs(temp)
        with open(os.path.join(directory, ".ai-agent.json"), "w") as f:
            json.dump({"providers": {"fake": {"type": "openai", "baseUrl": running.baseUrl}}}, f)
        for name, text in (("agent.ai", AGENT), ("boss.ai", BOSS), ("helper.ai", HELPER)):
            writeAgent(directory, name, text)
        port, metricsPort = freePort(), freePort()
        argv = [
            *command("ai-agent"),
            *("--agent", "agent.ai", "--agent", "boss.ai"),
            *("--openai-completions", str(port), "--workers", "2"),
            *("--metrics-port", str(metricsPort), "--log-format", "json"),
            *("--openai-completions-concurrency", "1", "--openai-completions-queue", "0"),
        ]
        server = ServerProcess()
        receiver, receiverUrl = startReceiver(self)
        env = childEnvironment(
            HOME=directory,
            TMPDIR=temp,
            OTEL_EXPORTER_OTLP_ENDPOINT=receiverUrl,
            OTEL_SERVICE_NAME="observed",
            OTEL_BSP_SCHEDULE_DELAY="100",
        )
        transport = reactor.spawnProcess(server, argv[0], argv, env=env, path=directory)
        pid = transport.pid
        assert pid is not None

        def killAll() -> None:
            for child in _children(pid):
                try:
                    os.kill(child, 9)
                except OSError:
                    pass
            if not server.ended.called:
                transport.signalProcess("KILL")

        self.addCleanup(lambda: server.ended if server.ended.called else _killed(killAll, server))

        async def ready() -> bool:
            try:
                status, _ = await _answer(port, "GET", "/health")
                scraped, _ = await _answer(metricsPort, "GET", "/metrics")
            except Exception:
                return False
            return status == scraped == 200 and len(_children(pid)) == 1

        for _ in range(400):
            if await ready():
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(_children(pid)), 1, server.output.decode())
        [metricsDir] = [os.path.join(temp, name) for name in os.listdir(temp)]

        user = {"model": "agent", "messages": [{"role": "user", "content": "hi"}]}
        sent = 0
        for _ in range(200):
            upstream.script(Reply(content="ok", usage=(2, 1)))
            status, body = await _answer(port, "POST", "/v1/chat/completions", user)
            self.assertEqual(status, 200, body)
            sent += 1
            if sent >= 2 and len(_perProcess(metricsDir)) == 2:
                break
        self.assertEqual(len(_perProcess(metricsDir)), 2, "one process took every request")

        upstream.script(Reply(status=500), Reply(status=500))
        status, _ = await _answer(port, "POST", "/v1/chat/completions", user)
        self.assertEqual(status, 502)
        upstream.script(
            Reply(toolCalls=[("agent__helper", {"prompt": "help"})], usage=(10, 1)),
            Reply(content="helped", usage=(20, 2)),
            Reply(content="done", usage=(30, 3)),
        )
        status, _ = await _answer(port, "POST", "/v1/chat/completions", {**user, "model": "boss"})
        self.assertEqual(status, 200)

        # Occupy both processes' only slot; every refusal on the way counts.
        holders: list[_RawClient] = []
        refused = 0
        stream = {**user, "stream": True}
        for _ in range(100):
            if len(holders) == 2:
                break
            if not upstream.scripted:
                upstream.script(Reply(content="held", hold=True, usage=(1, 1)))
            before = upstream.held
            client = await _RawClient.send(port, "POST", "/v1/chat/completions", stream)
            for _ in range(500):
                if upstream.held > before or client.status is not None:
                    break
                await deferLater(reactor, 0.02, lambda: None)
            if upstream.held > before:
                holders.append(client)
            else:
                self.assertEqual(client.status, 503, client.data)
                refused += 1
                client.close()
        self.assertEqual(len(holders), 2)
        for _ in range(3):
            status, _ = await _answer(port, "POST", "/v1/chat/completions", user)
            self.assertEqual(status, 503)
            refused += 1
        upstream.release()
        for client in holders:
            await client.closed.addTimeout(20, reactor)
            self.assertIn(b"data: [DONE]", client.data)

        url = f"http://127.0.0.1:{metricsPort}/metrics"
        expected = sent + 2 + 1 + refused + 1
        for _ in range(200):
            _, text = await scrape(self, url)
            if metricValue(text, "ai_agent_requests_total") == expected:
                break
            await deferLater(reactor, 0.05, lambda: None)

        def value(name: str, **labels: str) -> float:
            return metricValue(text, name, **labels)

        model = {"provider": "fake", "model": "test-model"}
        requests = "ai_agent_requests_total"
        self.assertEqual(value(requests, agent="agent", status="200"), sent + 2)
        self.assertEqual(value(requests, agent="agent", status="502"), 1)
        self.assertEqual(value(requests, agent="agent", status="503"), refused)
        self.assertEqual(value(requests, agent="boss", status="200"), 1)
        self.assertEqual(value("ai_agent_llm_calls_total", outcome="ok", **model), sent + 2 + 3)
        self.assertEqual(value("ai_agent_llm_calls_total", outcome="upstream_error", **model), 2)
        self.assertEqual(value("ai_agent_tool_calls_total", tool="agent__helper", outcome="ok"), 1)
        self.assertEqual(value("ai_agent_queue_rejections_total"), refused)
        self.assertEqual(
            value("ai_agent_llm_tokens_total", type="input", **model), 2 * sent + 2 + 60
        )
        # Gauges back at zero in every process: the series must be there.
        for gauge in ("ai_agent_runs_in_progress", "ai_agent_queue_depth"):
            values = metricSeries(text, gauge)
            self.assertTrue(values, gauge)
            self.assertEqual(set(values), {0}, gauge)
        self.assertEqual(sum(_perProcess(metricsDir).values()), expected)
        status, apiText = await scrape(self, f"http://127.0.0.1:{port}/metrics")
        self.assertEqual(status, 200)
        self.assertEqual(metricValue(apiText, requests), expected)

        transport.signalProcess("TERM")
        code = await server.ended
        self.assertEqual(code, 0, server.output.decode())
        self.assertFalse(os.path.exists(metricsDir))

        lines = [line for line in server.output.decode().splitlines() if line.strip()]
        records = [json.loads(line) for line in lines]
        runs = [
            r for r in records if r.get("requestId") and r["namespace"] == "ai_agent.accounting"
        ]
        for record in runs:
            for key in ("agent", "outcome", "duration", "promptTokens", "cost", "user", "time"):
                self.assertIn(key, record)
        answered = [r for r in runs if r["agent"] == "agent" and r["outcome"] == "end"]
        self.assertEqual(len(answered), sent + 2)

        agentRuns = [span for span in receiver.spans if span.name == "invoke_agent agent"]
        self.assertEqual(len(agentRuns), sent + 2 + 1)
        traces = {span.trace_id.hex() for span in receiver.spans}
        self.assertEqual({r["traceId"] for r in runs} - traces, set())
        self.assertEqual(len({r["traceId"] for r in answered}), sent + 2)
        names = {
            a.value.string_value
            for resource in receiver.resources
            for a in resource.attributes
            if a.key == "service.name"
        }
        self.assertEqual(names, {"observed"})


class DirectModeTests(TestCase):
    """
    C{ai-agent --agent FILE PROMPT} as a subprocess.
    """

    timeout = 60

    async def test_tracesExportedBeforeExit(self) -> None:
        """
        Direct mode traces too when C{OTEL_*} asks: the run's spans reach the
        collector before the command exits, and the upstream call carried
        the C{chat} span's C{traceparent}.
        """
        from tests._process import childEnvironment, command, run

        running = await startFakeUpstream(reactor)
        self.addCleanup(running.stop)
        running.upstream.script(Reply(content="answer"))
        receiver, url = startReceiver(self)
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        with open(os.path.join(folder, ".ai-agent.json"), "w") as f:
            json.dump({"providers": {"fake": {"type": "openai", "baseUrl": running.baseUrl}}}, f)
        writeAgent(folder, "agent.ai", AGENT)
        out, err, code = await run(
            [*command("ai-agent"), "--agent", "agent.ai", "hi"],
            folder,
            childEnvironment(HOME=folder, OTEL_EXPORTER_OTLP_ENDPOINT=url),
        )
        self.assertEqual((code, out), (0, b"answer\n"), err)
        [agentRun] = [span for span in receiver.spans if span.name == "invoke_agent agent"]
        [chat] = [span for span in receiver.spans if span.name == "chat test-model"]
        self.assertEqual(chat.parent_span_id, agentRun.span_id)
        # The flags: sampled, and (a new trace's) random trace id.
        self.assertEqual(
            running.upstream.requests[0].headers["traceparent"].rsplit("-", 1)[0],
            f"00-{chat.trace_id.hex()}-{chat.span_id.hex()}",
        )

    async def test_badLogFormat(self) -> None:
        """
        A C{--log-format} other than text or json is a usage error.
        """
        from tests._process import childEnvironment, command, run

        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        writeAgent(folder, "agent.ai", AGENT)
        out, err, code = await run(
            [*command("ai-agent"), "--agent", "agent.ai", "--log-format", "xml", "hi"],
            folder,
            childEnvironment(HOME=folder),
        )
        self.assertEqual(code, 2)
        self.assertIn(b"--log-format must be one of text, json", err)
