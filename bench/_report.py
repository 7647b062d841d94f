"""
From the samples of a run to C{docs/performance.md}, C{docs/img/perf-*.png}
and C{docs/performance-samples.json}.

Text between C{<!-- notes:begin -->} and C{<!-- notes:end -->} in an existing
C{performance.md} (the analysis written by a person) is kept.
"""

from __future__ import annotations

import json
import os
from typing import Any

from bench._stats import addedPerRound, median, percentile, ratio, summarize

DIRECT, OURS, LITE = "direct", "ai-agent", "litellm"
#: This server on stock Twisted (C{--stock-twisted}), in the same rounds.
STOCK = "ai-agent-stock"
NOTES_BEGIN, NOTES_END = "<!-- notes:begin -->", "<!-- notes:end -->"

#: The latency figures (per-request samples in milliseconds, per round and
#: arm), with their labels in the tables and the titles of their plots.
LATENCY_FIGURES = (
    ("latency_c1", "latency, non-streamed, c=1", "Non-streamed latency, concurrency 1"),
    ("latency_c16", "latency, non-streamed, c=16", "Non-streamed latency, concurrency 16"),
    ("ttft_c1", "time to first token, c=1", "Time to first content token, concurrency 1"),
    (
        "tools_c1",
        "client-tool round trip (2 requests), c=1",
        "Client-tool round trip (tool call, then the result; two requests), concurrency 1",
    ),
)


#: The other headends' figures, measured on this server only: (figure,
#: the upstream's figure it is taken against, Chat Completions' own figure
#: through this server, label).
HEADEND_FIGURES = (
    (
        "latency_responses_c1",
        "latency_c1",
        "latency, non-streamed, Responses API (stored), c=1",
    ),
    (
        "latency_messages_c1",
        "latency_c1",
        "latency, non-streamed, Anthropic Messages API, c=1",
    ),
    (
        "latency_mcp_c1",
        "latency_c1",
        "latency, the agent called as an MCP tool (tools/call, JSON answer), c=1",
    ),
    (
        "ttft_responses_c1",
        "ttft_c1",
        "time to first token, Responses API stream (stored), c=1",
    ),
    (
        "ttft_messages_c1",
        "ttft_c1",
        "time to first token, Anthropic Messages API stream, c=1",
    ),
    ("latency_a2a_c1", "latency_c1", "latency, blocking A2A message:send (task stored), c=1"),
    ("ttft_a2a_c1", "ttft_c1", "time to first answer chunk, A2A message:stream, c=1"),
)

#: How close the other headends must come to Chat Completions' added latency.
HEADEND_TOLERANCE = 1.10
#: Issue 29's bound for the Anthropic Messages API against Chat Completions.
ANTHROPIC_TOLERANCE = 1.05


def _rounds(
    samples: dict[str, Any], figure: str, arm: str, key: str = "ms"
) -> dict[int, list[float]]:
    perRound = samples.get(figure, {}).get(arm, {})
    return {int(r): value[key] for r, value in perRound.items() if value.get(key)}


def _scalar(samples: dict[str, Any], figure: str, arm: str, key: str) -> list[float]:
    perRound = samples.get(figure, {}).get(arm, {})
    return [value[key] for _, value in sorted(perRound.items(), key=lambda kv: int(kv[0]))]


def figures(samples: dict[str, Any]) -> dict[str, Any]:
    """
    The headline figures of a run: medians over rounds, ratios, checks.
    """
    out: dict[str, Any] = {}
    arms = [arm for arm in (OURS, STOCK, LITE) if arm in samples.get("latency_c1", {})]
    for figure, _, _ in LATENCY_FIGURES:
        if figure not in samples:
            continue
        direct = _rounds(samples, figure, DIRECT)
        for arm in arms:
            values = _rounds(samples, figure, arm)
            for q in (50, 99):
                added = addedPerRound(values, direct, q)
                if added:
                    out[f"{figure}.added_p{q}.{arm}"] = summarize(added).asDict()
        for arm in [DIRECT, *arms]:
            values = _rounds(samples, figure, arm)
            if values:
                out[f"{figure}.p50.{arm}"] = median([percentile(v, 50) for v in values.values()])
                out[f"{figure}.p99.{arm}"] = median([percentile(v, 99) for v in values.values()])
            bad = sum(
                value.get("bad", 0) for value in samples.get(figure, {}).get(arm, {}).values()
            )
            out[f"{figure}.bad.{arm}"] = bad
    # The other headends, against the upstream's own (chat) figure of the
    # same round, and as a ratio to Chat Completions' added figure.
    for figure, baseline, _ in HEADEND_FIGURES:
        for server in (OURS, STOCK):
            values = _rounds(samples, figure, server)
            if not values:
                continue
            direct = _rounds(samples, baseline, DIRECT)
            for q in (50, 99):
                added = addedPerRound(values, direct, q)
                if added:
                    out[f"{figure}.added_p{q}.{server}"] = summarize(added).asDict()
            out[f"{figure}.p50.{server}"] = median([percentile(v, 50) for v in values.values()])
            out[f"{figure}.p99.{server}"] = median([percentile(v, 99) for v in values.values()])
            out[f"{figure}.bad.{server}"] = sum(
                value.get("bad", 0) for value in samples[figure][server].values()
            )
            ours = _value(out, f"{figure}.added_p50.{server}")
            chat = _value(out, f"{baseline}.added_p50.{server}")
            if ours is not None and chat is not None:
                out[f"{figure}.vsChat.{server}"] = ratio(ours, chat)
    # The client-tool round trip per request: each request's added p50
    # (against the same request sent directly, in the same round), the two
    # requests' mean.
    legs = samples.get("tools_c1", {})
    perRequest = []
    for r, value in legs.get(OURS, {}).items():
        base = legs.get(DIRECT, {}).get(r, {})
        if value.get("legsMs") and base.get("legsMs"):
            perRequest.append(
                sum(
                    percentile([trip[leg] for trip in value["legsMs"]], 50)
                    - percentile([trip[leg] for trip in base["legsMs"]], 50)
                    for leg in (0, 1)
                )
                / 2
            )
    if perRequest:
        out[f"tools_c1.perRequestAdded.{OURS}"] = summarize(perRequest).asDict()
        chat = _value(out, f"latency_c1.added_p50.{OURS}")
        if chat is not None:
            out[f"tools_c1.vsChat.{OURS}"] = ratio(median(perRequest), chat)
    for arm in [DIRECT, *arms]:
        legs = [
            value["legsMs"]
            for value in samples.get("tools_c1", {}).get(arm, {}).values()
            if value.get("legsMs")
        ]
        if legs:
            out[f"tools_c1.legs_p50.{arm}"] = [
                median([percentile([trip[leg] for trip in trips], 50) for trips in legs])
                for leg in (0, 1)
            ]
    for arm in [DIRECT, *arms]:
        rps = _scalar(samples, "rps", arm, "rps")
        if rps:
            out[f"rps.{arm}"] = summarize(rps).asDict()
            out[f"rps.cpu.{arm}"] = [v["cpu"] for v in samples["rps"][arm].values()]
        if rps and arm != DIRECT:
            # CPU per request of the server under test: robust to a busy
            # machine that gave it less than its core.
            perRequest = [
                v["cpu"][f"server-{arm}"] / v["rps"]
                for v in samples["rps"][arm].values()
                if v["rps"] > 0
            ]
            if perRequest:
                cost = median(perRequest)
                out[f"rps.cpuPerRequestUs.{arm}"] = round(cost * 1e6, 1)
                out[f"rps.perCore.{arm}"] = round(1 / cost, 0)
                out[f"rps.serverShare.{arm}"] = median(
                    [v["cpu"][f"server-{arm}"] for v in samples["rps"][arm].values()]
                )
        tokens = _scalar(samples, "tokens", arm, "tokensPerSecond")
        if tokens:
            out[f"tokens.{arm}"] = summarize(tokens).asDict()
            streams = sum(_scalar(samples, "tokens", arm, "streams"))
            intact = sum(_scalar(samples, "tokens", arm, "intact"))
            out[f"tokens.fidelity.{arm}"] = [intact, streams]
            out[f"tokens.cpu.{arm}"] = [v["cpu"] for v in samples["tokens"][arm].values()]
        cancel = samples.get("cancel", {}).get(arm, {}).get("0")
        if cancel:
            out[f"cancel.{arm}"] = {
                "p50": percentile(cancel["ms"], 50) if cancel["ms"] else None,
                "p99": percentile(cancel["ms"], 99) if cancel["ms"] else None,
                "never": cancel["never"],
                "n": len(cancel["ms"]) + cancel["never"],
            }
    for workers in ("1", "2"):
        rps = _scalar(samples, "workers_rps", workers, "rps")
        if rps:
            out[f"workers.{workers}"] = summarize(rps).asDict()
    return out


#: The observability arms, in the order they are reported.
OBSERVE_ARMS = ("off", "metrics", "tracing")


def observeFigures(samples: dict[str, Any]) -> dict[str, Any]:
    """
    The cost of observability: per arm, latency at concurrency 1 (p50 and
    p99, and added over the metrics-off arm of the same round), requests/s
    and the server's CPU per request.
    """
    out: dict[str, Any] = {}
    off = _rounds(samples, "observe_latency_c1", "off")
    for arm in OBSERVE_ARMS:
        values = _rounds(samples, "observe_latency_c1", arm)
        if not values:
            continue
        for q in (50, 99):
            out[f"p{q}.{arm}"] = median([percentile(v, q) for v in values.values()])
            if arm != "off":
                added = addedPerRound(values, off, q)
                if added:
                    out[f"added_p{q}.{arm}"] = summarize(added).asDict()
        rounds = samples.get("observe_rps", {}).get(arm, {}).values()
        rps = [r["rps"] for r in rounds]
        if rps:
            out[f"rps.{arm}"] = summarize(rps).asDict()
            perRequest = [r["cpu"]["server"] / r["rps"] for r in rounds if r["rps"] > 0]
            if perRequest:
                out[f"cpuUs.{arm}"] = round(median(perRequest) * 1e6, 1)
    return out


def observeLines(samples: dict[str, Any]) -> list[str]:
    """
    The observability section of the report (nothing when not measured).
    """
    f = observeFigures(samples)
    if "p50.off" not in f:
        return []
    lines = [
        "## Observability cost",
        "",
        "The same server with metrics off (`--no-metrics`), with metrics on (the default), and",
        "with tracing on too (`OTEL_EXPORTER_OTLP_ENDPOINT`: every request's spans exported over",
        "OTLP/HTTP to a sink on the upstream's CPU), in interleaved rounds. Latency: non-streamed,",
        "concurrency 1, ms; added: the arm's percentile minus the metrics-off arm's in the same",
        "round (median over rounds, IQR); requests/s: 32 connections; CPU: the server's",
        "microseconds per request.",
        "",
        "| arm | p50 | p99 | added p50 | added p99 | requests/s | CPU µs/request |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arm in OBSERVE_ARMS:
        if f"p50.{arm}" not in f:
            continue
        cells = [
            _fmt(f.get(f"p50.{arm}"), 3),
            _fmt(f.get(f"p99.{arm}"), 3),
            "—" if arm == "off" else _fmt(f.get(f"added_p50.{arm}"), 3),
            "—" if arm == "off" else _fmt(f.get(f"added_p99.{arm}"), 3),
            _fmt(f.get(f"rps.{arm}"), 0),
            _fmt(f.get(f"cpuUs.{arm}"), 1),
        ]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def headendLines(f: dict[str, Any]) -> list[str]:
    """
    The headends section: each API's added latency and TTFT through this
    server, and their ratios to Chat Completions' (nothing when the other
    headends were not measured).
    """
    if f"latency_responses_c1.added_p50.{OURS}" not in f:
        return []
    lines = [
        "## Headends",
        "",
        "The same agent (no tools: one upstream call) through each API of this server, in the",
        "same interleaved rounds; the upstream speaks only Chat Completions, so every added",
        "figure is taken against its Chat Completions figure of the same round. Milliseconds;",
        "ratio: to Chat Completions' added figure of this run.",
        "",
        "| API | added p50, non-streamed | added p99 | ratio | TTFT added p50 | ratio |"
        " failed or wrong |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]

    def ratioText(key: str) -> str:
        value = f.get(key)
        return "n/a" if value is None else f"{value:.2f}×"

    rows = (
        ("Chat Completions", "latency_c1", "ttft_c1"),
        ("Responses (stored)", "latency_responses_c1", "ttft_responses_c1"),
        ("Anthropic Messages", "latency_messages_c1", "ttft_messages_c1"),
        ("A2A (task stored)", "latency_a2a_c1", "ttft_a2a_c1"),
        # No stream to time a first token in: a tool's result comes whole.
        ("MCP tools/call", "latency_mcp_c1", "ttft_mcp_c1"),
    )
    for name, latency, ttft in rows:
        chat = latency == "latency_c1"
        bad = sum(f.get(f"{figure}.bad.{OURS}", 0) for figure in (latency, ttft))
        cells = [
            _fmt(f.get(f"{latency}.added_p50.{OURS}"), 3),
            _fmt(f.get(f"{latency}.added_p99.{OURS}"), 3),
            "1" if chat else ratioText(f"{latency}.vsChat.{OURS}"),
            _fmt(f.get(f"{ttft}.added_p50.{OURS}"), 3),
            "1" if chat else ratioText(f"{ttft}.vsChat.{OURS}"),
            str(bad),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if f"tools_c1.perRequestAdded.{OURS}" in f:
        lines.append(
            "| client-tool round trip, per request (Chat Completions) | "
            + _fmt(f.get(f"tools_c1.perRequestAdded.{OURS}"), 3)
            + " | — | "
            + ratioText(f"tools_c1.vsChat.{OURS}")
            + f" | — | — | {f.get(f'tools_c1.bad.{OURS}', 0)} |"
        )
    lines.append("")
    return lines


#: The MCP transports, in the order they are reported.
MCP_TRANSPORTS = (("stdio", "stdio"), ("http", "Streamable HTTP"))


def _p(rounds: dict[int, list[float]], q: float) -> float | None:
    return median([percentile(v, q) for v in rounds.values()]) if rounds else None


def _perRound(minuend: dict[int, list[float]], *subtrahends: dict[int, list[float]]) -> list[float]:
    """
    Per round present in all: the p50 of C{minuend} minus the p50s of the
    C{subtrahends}.
    """
    return [
        percentile(minuend[r], 50) - sum(percentile(s[r], 50) for s in subtrahends)
        for r in sorted(minuend)
        if all(s.get(r) for s in subtrahends)
    ]


def toolFigures(samples: dict[str, Any]) -> dict[str, Any]:
    """
    The tool arms: per MCP transport, the SDK client's time per call, the
    call inside a run (between its progress frames), the run and its
    decomposition; the same for the sub-agent call.
    """
    out: dict[str, Any] = {}

    def bad(figure: str, arm: str) -> int:
        return sum(v.get("bad", 0) for v in samples.get(figure, {}).get(arm, {}).values())

    def unresolved(figure: str, arm: str) -> int:
        return sum(v.get("unresolved", 0) for v in samples.get(figure, {}).get(arm, {}).values())

    plain = _rounds(samples, "agent_plain", OURS)
    plainDirect = _rounds(samples, "agent_plain", DIRECT)
    plainAdded = _perRound(plain, plainDirect)
    if plainAdded:
        out["plain.added"] = summarize(plainAdded).asDict()
        out["plain.p50"] = _p(plain, 50)
    # The plain run's added latency, by round, as a "sample" to subtract.
    plainAddedRounds = {
        r: [percentile(plain[r], 50) - percentile(plainDirect[r], 50)]
        for r in plain
        if plainDirect.get(r)
    }
    direct = _rounds(samples, "mcp_direct", DIRECT)
    if direct:
        out["mcp.direct.p50"] = _p(direct, 50)
        out["mcp.direct.bad"] = bad("mcp_direct", DIRECT)
    for transport, _ in MCP_TRANSPORTS:
        sdk = _rounds(samples, "mcp_sdk", transport)
        span = _rounds(samples, "mcp_run", transport, "spanMs")
        run = _rounds(samples, "mcp_run", transport)
        for name, values in (("sdk", sdk), ("span", span), ("run", run)):
            if values:
                out[f"mcp.{name}.p50.{transport}"] = _p(values, 50)
                out[f"mcp.{name}.p99.{transport}"] = _p(values, 99)
        if sdk:
            out[f"mcp.sdk.bad.{transport}"] = bad("mcp_sdk", transport)
        if run:
            out[f"mcp.run.bad.{transport}"] = bad("mcp_run", transport)
            out[f"mcp.unresolved.{transport}"] = unresolved("mcp_run", transport)
        sdk50, span50 = out.get(f"mcp.sdk.p50.{transport}"), out.get(f"mcp.span.p50.{transport}")
        if sdk50 is not None and span50 is not None:
            out[f"mcp.vsSdk.{transport}"] = ratio(span50, sdk50)
        added = _perRound(run, direct)
        if added:
            out[f"mcp.runAdded.{transport}"] = summarize(added).asDict()
        cost = _perRound(run, direct, plainAddedRounds)
        if cost:
            out[f"mcp.cost.{transport}"] = summarize(cost).asDict()
    run = _rounds(samples, "subagent_run", OURS)
    if run:
        span = _rounds(samples, "subagent_run", OURS, "spanMs")
        direct = _rounds(samples, "subagent_direct", DIRECT)
        # The sub-agent's own upstream call, made directly: the direct
        # sequence's second request.
        child = {
            int(r): [trip[1] for trip in v["legsMs"]]
            for r, v in samples.get("subagent_direct", {}).get(DIRECT, {}).items()
            if v.get("legsMs")
        }
        out["subagent.run.p50"] = _p(run, 50)
        out["subagent.run.p99"] = _p(run, 99)
        out["subagent.span.p50"] = _p(span, 50)
        out["subagent.span.p99"] = _p(span, 99)
        out["subagent.direct.p50"] = _p(direct, 50)
        out["subagent.child.p50"] = _p(child, 50)
        out["subagent.bad"] = bad("subagent_run", OURS) + bad("subagent_direct", DIRECT)
        out["subagent.unresolved"] = unresolved("subagent_run", OURS)
        for key, perRound in (
            ("runAdded", _perRound(run, direct)),
            ("spanAdded", _perRound(span, child)),
            ("cost", _perRound(run, direct, plainAddedRounds)),
        ):
            if perRound:
                out[f"subagent.{key}"] = summarize(perRound).asDict()
    return out


def toolLines(samples: dict[str, Any]) -> list[str]:
    """
    The section on tools inside a run (nothing when not measured).
    """
    f = toolFigures(samples)
    if not any(key.startswith(("mcp.", "subagent.")) for key in f):
        return []
    lines = [
        "## Tools inside a run",
        "",
        "An MCP server built with the official MCP Python SDK (`bench/_mcpserver.py`, one tool,",
        "`echo`), over stdio and over Streamable HTTP, called by the SDK's own client and by an",
        "agent of this server; and a sub-agent call. Milliseconds, medians over rounds (see How",
        f"it was measured). A plain run of this server adds {_fmt(f.get('plain.added'), 3)} ms"
        " over its one upstream call here.",
        "",
        "| MCP transport | SDK client, per call p50 / p99 | inside a run, per call p50 / p99"
        " | ratio | run p50 | run added over its 2 upstream calls | MCP call, end to end"
        " | failed or wrong | not timed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for transport, name in MCP_TRANSPORTS:
        if f"mcp.run.p50.{transport}" not in f and f"mcp.sdk.p50.{transport}" not in f:
            continue
        vs = f.get(f"mcp.vsSdk.{transport}")

        def pair(name: str, transport: str = transport) -> str:
            p50, p99 = f.get(f"mcp.{name}.p50.{transport}"), f.get(f"mcp.{name}.p99.{transport}")
            return f"{_fmt(p50, 3)} / {_fmt(p99, 3)}"

        cells = [
            pair("sdk"),
            pair("span"),
            "n/a" if vs is None else f"{vs:.2f}×",
            _fmt(f.get(f"mcp.run.p50.{transport}"), 3),
            _fmt(f.get(f"mcp.runAdded.{transport}"), 3),
            _fmt(f.get(f"mcp.cost.{transport}"), 3),
            str(f.get(f"mcp.sdk.bad.{transport}", 0) + f.get(f"mcp.run.bad.{transport}", 0)),
            str(f.get(f"mcp.unresolved.{transport}", 0)),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    if "subagent.run.p50" in f:
        lines += [
            "A sub-agent call (the parent calls `agent__child`, a child without tools: one"
            " upstream call):",
            "",
            f"- the run: p50 {_fmt(f.get('subagent.run.p50'), 3)}, p99"
            f" {_fmt(f.get('subagent.run.p99'), 3)}; added over its three upstream calls made"
            f" directly ({_fmt(f.get('subagent.direct.p50'), 3)} p50):"
            f" {_fmt(f.get('subagent.runAdded'), 3)};",
            f"- the sub-agent call as the client sees it (between its progress frames): p50"
            f" {_fmt(f.get('subagent.span.p50'), 3)}, p99 {_fmt(f.get('subagent.span.p99'), 3)};"
            f" minus the child's upstream call made directly"
            f" ({_fmt(f.get('subagent.child.p50'), 3)} p50):"
            f" {_fmt(f.get('subagent.spanAdded'), 3)};",
            f"- end to end (the run's added latency minus a plain run's):"
            f" {_fmt(f.get('subagent.cost'), 3)};",
            f"- failed or wrong: {f.get('subagent.bad', 0)}; not timed (both frames in one"
            f" read): {f.get('subagent.unresolved', 0)}.",
            "",
        ]
    return lines


def stockLines(f: dict[str, Any]) -> list[str]:
    """
    The stock-Twisted table: the core figures of this server with the speed
    layer (the default) and with C{--stock-twisted}, measured in the same
    interleaved rounds (nothing when the stock server was not measured).
    """
    if f"latency_c1.p50.{STOCK}" not in f:
        return []
    lines = [
        "## On stock Twisted",
        "",
        "The same server started with `--stock-twisted` (the speed layer off: Twisted's own",
        "`Request.write` and request processing, Klein's routing, treq on Twisted's `Agent`),",
        "measured in the same rounds as the default, in a random order with the other arms.",
        "Milliseconds unless marked; medians over rounds with the interquartile range.",
        "",
        "| figure | speed layer (default) | stock Twisted | stock / speed layer |",
        "| --- | --- | --- | --- |",
    ]

    def row(label: str, key: str, digits: int = 3) -> None:
        fast, stock = f.get(f"{key}.{OURS}"), f.get(f"{key}.{STOCK}")
        a, b = _value(f, f"{key}.{OURS}"), _value(f, f"{key}.{STOCK}")
        share = "n/a" if a is None or b is None or a <= 0 else f"{b / a:.2f}×"
        lines.append(f"| {label} | {_fmt(fast, digits)} | {_fmt(stock, digits)} | {share} |")

    row("added latency p50, non-streamed, c=1", "latency_c1.added_p50")
    row("added latency p99, non-streamed, c=1", "latency_c1.added_p99")
    row("added latency p50, non-streamed, c=16", "latency_c16.added_p50")
    row("time to first token, added p50, c=1", "ttft_c1.added_p50")
    row("client-tool round trip, added p50", "tools_c1.added_p50")
    row("requests/s (c=32, one core)", "rps", 0)
    row("server CPU per request, µs", "rps.cpuPerRequestUs", 0)
    row("requests/s per core (1 / CPU per request)", "rps.perCore", 0)
    row("relayed tokens/s", "tokens", 0)
    for figure, _, label in HEADEND_FIGURES:
        if f"{figure}.added_p50.{STOCK}" in f:
            row(f"{label}: added p50", f"{figure}.added_p50")
    bad = sum(
        value
        for key, value in f.items()
        if key.endswith(f".bad.{STOCK}") and isinstance(value, int)
    )
    lines += ["", f"Failed or wrong answers on stock Twisted: {bad}.", ""]
    return lines


#: The agent loop's orchestrators, in the order they are reported.
LOOP_ARMS = ((OURS, "ai-agent"), ("openai-agents", "OpenAI Agents SDK"), ("langgraph", "LangGraph"))


def agentLoopFigures(samples: dict[str, Any]) -> dict[str, Any]:
    """
    The agent loop: per MCP transport and orchestrator, the run's p50 and
    p99, the latency it adds per turn and the CPU its process uses per turn,
    and this server's ratios to each framework.

    Added per turn, per round: (the run's p50 − the p50 of the run's
    upstream calls made directly one after the other − turns × the p50 per
    call of a minimal MCP client without SDK) / turns.  CPU per turn, per round: the
    orchestrating process's CPU over the round's runs / (runs answered
    right × turns).  Each reported as the median over rounds.
    """
    out: dict[str, Any] = {}
    turns = int(samples.get("loopTurns", 5))
    direct = _rounds(samples, "loop_direct", DIRECT)
    if direct:
        out["loop.direct.p50"] = _p(direct, 50)
    for transport, _ in MCP_TRANSPORTS:
        mcp = _rounds(samples, "loop_mcp", transport)
        if mcp:
            out[f"loop.mcp.p50.{transport}"] = _p(mcp, 50)
        perArm = samples.get(f"loop_{transport}", {})
        for arm, _ in LOOP_ARMS:
            run = _rounds(samples, f"loop_{transport}", arm)
            if not run:
                continue
            key = f"{transport}.{arm}"
            out[f"loop.run.p50.{key}"] = _p(run, 50)
            out[f"loop.run.p99.{key}"] = _p(run, 99)
            out[f"loop.bad.{key}"] = sum(v.get("bad", 0) for v in perArm[arm].values())
            added = [
                (
                    percentile(run[r], 50)
                    - percentile(direct[r], 50)
                    - turns * percentile(mcp[r], 50)
                )
                / turns
                for r in sorted(run)
                if direct.get(r) and mcp.get(r)
            ]
            if added:
                out[f"loop.addedPerTurn.{key}"] = summarize(added).asDict()
            cpu = [
                v["cpuS"] * 1000 / (len(v["ms"]) * turns)
                for v in perArm[arm].values()
                if v.get("ms") and "cpuS" in v
            ]
            if cpu:
                out[f"loop.cpuPerTurn.{key}"] = summarize(cpu).asDict()
        for arm, _ in LOOP_ARMS[1:]:
            for measure in ("addedPerTurn", "cpuPerTurn"):
                ours = _value(out, f"loop.{measure}.{transport}.{OURS}")
                theirs = _value(out, f"loop.{measure}.{transport}.{arm}")
                if ours is not None and theirs is not None:
                    out[f"loop.vs.{measure}.{transport}.{arm}"] = ratio(ours, theirs)
    return out


def agentLoopLines(samples: dict[str, Any]) -> list[str]:
    """
    The agent-loop section (nothing when not measured).
    """
    f = agentLoopFigures(samples)
    if not any(key.startswith("loop.run.") for key in f):
        return []
    turns = int(samples.get("loopTurns", 5))
    versions = samples.get("loopVersions", {})
    lines = [
        "## The agent loop against the SDKs",
        "",
        f"One run of {turns} turns, each calling the bench's MCP tool (`echo`, over stdio or",
        "Streamable HTTP), then the answer: driven by this server (a streamed request from the",
        "load client), by the OpenAI Agents SDK and by LangGraph's prebuilt ReAct agent (each in",
        "its own process pinned to the server's CPU), against the same upstream and the same MCP",
        "server. Milliseconds, medians over rounds with the interquartile range. *Added per",
        f"turn*: (run p50 − its {turns + 1} upstream calls made directly"
        f" ({_fmt(f.get('loop.direct.p50'), 3)} p50) − {turns} × the MCP server's p50 per"
        f" call, from a minimal client) / {turns}; *CPU per turn*: the orchestrating"
        f" process's CPU over the runs / (runs × {turns}). Ratio: ai-agent's figure over"
        " the framework's (goal ≤ 0.5).",
        "",
        "| MCP transport | orchestrator | run p50 / p99 | added per turn | CPU per turn"
        " | ai-agent's ratio, added / CPU | failed or wrong |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for transport, name in MCP_TRANSPORTS:
        for arm, label in LOOP_ARMS:
            key = f"{transport}.{arm}"
            if f"loop.run.p50.{key}" not in f:
                continue
            ratios = "—"
            if arm != OURS:
                ratios = " / ".join(
                    "n/a" if (v := f.get(f"loop.vs.{m}.{key}")) is None else f"{v:.2f}×"
                    for m in ("addedPerTurn", "cpuPerTurn")
                )
            cells = [
                name,
                label,
                _fmt(f.get(f"loop.run.p50.{key}"), 2)
                + " / "
                + _fmt(f.get(f"loop.run.p99.{key}"), 2),
                _fmt(f.get(f"loop.addedPerTurn.{key}"), 3),
                _fmt(f.get(f"loop.cpuPerTurn.{key}"), 3),
                ratios,
                str(f.get(f"loop.bad.{key}", 0)),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    mcp = ", ".join(
        f"{name} {_fmt(f.get(f'loop.mcp.p50.{t}'), 3)}"
        for t, name in MCP_TRANSPORTS
        if f"loop.mcp.p50.{t}" in f
    )
    if mcp:
        lines += [
            f"The MCP server's p50 per call from a minimal client without SDK (the baseline"
            f" subtracted): {mcp}.",
            "",
        ]
    if versions:
        lines += [
            "Versions: " + "; ".join(f"{arm}: {text}" for arm, text in versions.items()) + ".",
            "",
        ]
    return lines


def agentLoopPlot(samples: dict[str, Any], imgDir: str) -> list[tuple[str, str]]:
    """
    One PNG for the agent loop: added latency and CPU per turn, by MCP
    transport and orchestrator (nothing when not measured).
    """
    f = agentLoopFigures(samples)
    arms = [
        (arm, label)
        for arm, label in LOOP_ARMS
        if any(f"loop.run.p50.{t}.{arm}" in f for t, _ in MCP_TRANSPORTS)
    ]
    if not arms:
        return []
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    width = 0.8 / len(arms)
    positions = range(len(MCP_TRANSPORTS))
    for ax, (measure, title) in zip(
        axes,
        (("addedPerTurn", "latency added per turn"), ("cpuPerTurn", "orchestrator CPU per turn")),
        strict=True,
    ):
        for i, (arm, label) in enumerate(arms):
            values = [_value(f, f"loop.{measure}.{t}.{arm}") or 0 for t, _ in MCP_TRANSPORTS]
            offset = (i - (len(arms) - 1) / 2) * width
            bars = ax.bar([p + offset for p in positions], values, width=width, label=label)
            ax.bar_label(bars, fmt="%.2f")
        ax.set_xticks(list(positions), [name for _, name in MCP_TRANSPORTS])
        ax.set_ylabel("ms per turn (median of rounds)")
        ax.set_title(f"Agent loop: {title}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(imgDir, "perf-agentloop.png"), dpi=100)
    plt.close(fig)
    return [("perf-agentloop.png", "The agent loop: this server against the SDKs, per turn")]


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, dict):
        return (
            f"{value['value']:.{digits}f} (IQR {value['q1']:.{digits}f}–{value['q3']:.{digits}f})"
        )
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _verdict(ok: bool | None) -> str:
    if ok is None:
        return "not measured"
    return "met" if ok else "**not met**"


def _value(f: dict[str, Any], key: str) -> float | None:
    value = f.get(key)
    if isinstance(value, dict):
        return float(value["value"])
    return value


def targetsTable(samples: dict[str, Any], f: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """
    Rows of (target, goal, measured, verdict).
    """
    rows: list[tuple[str, str, str, str]] = []

    def row(name: str, goal: str, measured: str, ok: bool | None) -> None:
        rows.append((name, goal, measured, _verdict(ok)))

    p50 = _value(f, f"latency_c1.added_p50.{OURS}")
    p99 = _value(f, f"latency_c1.added_p99.{OURS}")
    row(
        "added latency p50, c=1",
        "≤ 0.30 ms",
        _fmt(p50, 3) + " ms",
        None if p50 is None else p50 <= 0.30,
    )
    row(
        "added latency p99, c=1",
        "≤ 1.5 ms",
        _fmt(p99, 3) + " ms",
        None if p99 is None else p99 <= 1.5,
    )
    lite50 = _value(f, f"latency_c1.added_p50.{LITE}")
    r = ratio(p50, lite50) if p50 is not None and lite50 is not None else None
    row(
        "added latency vs LiteLLM (p50, c=1)",
        "≤ 0.03×",
        "n/a" if r is None else f"{r:.3f}× ({_fmt(p50, 3)} vs {_fmt(lite50, 3)} ms)",
        None if r is None else r <= 0.03,
    )
    t50 = _value(f, f"ttft_c1.added_p50.{OURS}")
    row(
        "time to first token added, p50",
        "≤ 0.25 ms",
        _fmt(t50, 3) + " ms",
        None if t50 is None else t50 <= 0.25,
    )
    tokens = _value(f, f"tokens.{OURS}")
    fidelity = f.get(f"tokens.fidelity.{OURS}")
    intact = fidelity is not None and fidelity[0] == fidelity[1]
    row(
        "relayed tokens/s, one core, every frame intact",
        "≥ 20,000",
        f"{_fmt(tokens, 0)} ({fidelity[0]}/{fidelity[1]} streams intact)" if fidelity else "n/a",
        None if tokens is None else tokens >= 20000 and intact,
    )
    rps = _value(f, f"rps.{OURS}")
    row("requests/s, one core", "≥ 4,000", _fmt(rps, 0), None if rps is None else rps >= 4000)
    perCore = f.get(f"rps.perCore.{OURS}")
    if perCore is not None:
        row(
            "requests/s per fully used core (1 / server CPU per request)",
            "≥ 4,000",
            f"{perCore:.0f} ({f[f'rps.cpuPerRequestUs.{OURS}']:.0f} µs of CPU per request)",
            perCore >= 4000,
        )
    literps = _value(f, f"rps.{LITE}")
    r = ratio(rps, literps) if rps is not None and literps is not None else None
    row(
        "requests/s vs LiteLLM",
        "≥ 8×",
        "n/a" if r is None else f"{r:.1f}× ({_fmt(rps, 0)} vs {_fmt(literps, 0)})",
        None if r is None else r >= 8,
    )
    idle = samples.get("idleStreams", {}).get("levels", [])
    for level in idle:
        per = level["perStreamKiB"]
        row(
            f"memory per idle stream at {level['streams']:,} streams",
            "≤ 20 KiB",
            f"{per:.1f} KiB",
            per <= 20,
        )
    rss = samples.get("idleRss", {}).get(OURS)
    row(
        "idle RSS",
        "≤ 80 MB",
        "n/a" if rss is None else f"{rss / 1024:.1f} MiB",
        None if rss is None else rss * 1024 <= 80e6,
    )
    cold = samples.get("coldStart", {}).get(OURS, {}).get("seconds")
    c = median(cold) if cold else None
    row(
        "cold start to first 200",
        "≤ 1.5 s",
        "n/a" if c is None else f"{c:.2f} s (median)",
        None if c is None else c <= 1.5,
    )
    cancel = f.get(f"cancel.{OURS}")
    if cancel and cancel["p99"] is not None:
        row(
            "upstream closed after the client leaves, p99",
            "≤ 50 ms",
            f"{cancel['p99']:.2f} ms ({cancel['never']} never closed of {cancel['n']})",
            cancel["p99"] <= 50 and not cancel["never"],
        )
    reject = samples.get("reject")
    if reject:
        p = percentile(reject["ms"], 99)
        row("full-queue rejection, p99", "≤ 5 ms", f"{p:.2f} ms", p <= 5)
    ratios = {
        name: f.get(key)
        for name, key in (
            ("Responses", f"latency_responses_c1.vsChat.{OURS}"),
            ("Anthropic", f"latency_messages_c1.vsChat.{OURS}"),
            ("MCP tools/call", f"latency_mcp_c1.vsChat.{OURS}"),
            ("client-tool round trip, per request", f"tools_c1.vsChat.{OURS}"),
        )
    }
    measured = [value for value in ratios.values() if value is not None]
    if measured:
        # Not met as soon as one is over; not measured while one is missing.
        over = any(value > HEADEND_TOLERANCE for value in measured)
        row(
            "Responses / Anthropic / MCP tools/call / client-tool round trip within 10 % of"
            " Chat Completions'"
            " added latency (p50, c=1)",
            f"≤ {HEADEND_TOLERANCE:.2f}×",
            ", ".join(
                f"{name} {'n/a' if value is None else f'{value:.2f}×'}"
                for name, value in ratios.items()
            )
            + f" (Chat Completions: {_fmt(p50, 3)} ms)",
            False if over else (True if len(measured) == len(ratios) else None),
        )
    anthropic = f.get(f"latency_messages_c1.vsChat.{OURS}")
    if anthropic is not None:
        row(
            "Anthropic Messages within 5 % of Chat Completions' added latency (p50, c=1)",
            f"≤ {ANTHROPIC_TOLERANCE:.2f}×",
            f"{anthropic:.2f}×",
            anthropic <= ANTHROPIC_TOLERANCE,
        )
    a2aSend = f.get(f"latency_a2a_c1.vsChat.{OURS}")
    if a2aSend is not None:
        row(
            "A2A blocking message:send within 10 % of Chat Completions' added latency (p50, c=1)",
            f"≤ {HEADEND_TOLERANCE:.2f}×",
            f"{a2aSend:.2f}×",
            a2aSend <= HEADEND_TOLERANCE,
        )
    a2a = f.get(f"ttft_a2a_c1.vsChat.{OURS}")
    if a2a is not None:
        row(
            "A2A streamed message within 10 % of Chat Completions' added time to the first"
            " answer piece (p50, c=1)",
            f"≤ {HEADEND_TOLERANCE:.2f}×",
            f"{a2a:.2f}×",
            a2a <= HEADEND_TOLERANCE,
        )
    tools = toolFigures(samples)
    mcp = [
        (name, tools[f"mcp.span.p50.{t}"], tools[f"mcp.sdk.p50.{t}"])
        for t, name in MCP_TRANSPORTS
        if f"mcp.span.p50.{t}" in tools and f"mcp.sdk.p50.{t}" in tools
    ]
    if mcp:
        row(
            "MCP tool call inside a run no slower than the MCP SDK client calling directly"
            " (p50 per call)",
            "≤ 1×",
            "; ".join(f"{name} {ours:.3f} vs {sdk:.3f} ms" for name, ours, sdk in mcp),
            len(mcp) == len(MCP_TRANSPORTS) and all(ours <= sdk for _, ours, sdk in mcp),
        )
    if "subagent.spanAdded" in tools:
        row(
            "cost of a sub-agent call (p50)",
            "reported",
            f"{_fmt(_value(tools, 'subagent.spanAdded'), 3)} ms over the child's upstream call;"
            f" {_fmt(_value(tools, 'subagent.cost'), 3)} ms end to end",
            True,
        )
    loop = agentLoopFigures(samples)
    loopRatios = [
        (
            f"{name} vs {label}",
            loop.get(f"loop.vs.addedPerTurn.{t}.{arm}"),
            loop.get(f"loop.vs.cpuPerTurn.{t}.{arm}"),
        )
        for t, name in MCP_TRANSPORTS
        for arm, label in LOOP_ARMS[1:]
        if f"loop.run.p50.{t}.{arm}" in loop
    ]
    if loopRatios:
        row(
            "agent loop (5 MCP tool turns): ai-agent's added latency / CPU per turn over the SDKs'",
            "≤ 0.5×",
            "; ".join(f"{what} {_fmt(added)}× / {_fmt(cpu)}×" for what, added, cpu in loopRatios),
            all(
                added is not None and cpu is not None and added <= 0.5 and cpu <= 0.5
                for _, added, cpu in loopRatios
            ),
        )
    return rows


# Plots.


def _cdf(ax: Any, values: list[float], label: str) -> None:
    ordered = sorted(values)
    n = len(ordered)
    ax.plot(ordered, [(i + 1) / n for i in range(n)], label=label)


def latencyCurves(samples: dict[str, Any]) -> list[tuple[str, str, dict[str, list[float]]]]:
    """
    The latency CDFs to draw: (figure, title, every sample of every round
    by arm) for each latency figure measured.
    """
    arms = [arm for arm in (DIRECT, OURS, STOCK, LITE) if arm in samples.get("latency_c1", {})]
    curves = []
    for figure, _, title in LATENCY_FIGURES:
        perArm = {
            arm: values
            for arm in arms
            if (values := [v for vs in _rounds(samples, figure, arm).values() for v in vs])
        }
        if perArm:
            curves.append((figure, title, perArm))
    return curves


def plots(samples: dict[str, Any], f: dict[str, Any], imgDir: str) -> list[tuple[str, str]]:
    """
    Draw the PNGs; return (file name, caption) pairs.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(imgDir, exist_ok=True)
    made: list[tuple[str, str]] = []
    arms = [arm for arm in (DIRECT, OURS, STOCK, LITE) if arm in samples.get("latency_c1", {})]
    for figure, title, perArm in latencyCurves(samples):
        fig, ax = plt.subplots(figsize=(7, 4))
        for arm, values in perArm.items():
            _cdf(ax, values, arm)
        ax.set_xscale("log")
        ax.set_xlabel("milliseconds (log scale)")
        ax.set_ylabel("fraction of round trips" if figure == "tools_c1" else "fraction of requests")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        name = f"perf-{figure.replace('_', '-')}.png"
        fig.tight_layout()
        fig.savefig(os.path.join(imgDir, name), dpi=100)
        plt.close(fig)
        made.append((name, title + " (CDF, all rounds)"))

    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    panels = [
        ("rps", "requests/s (one core)", arms),
        ("tokens", "relayed tokens/s (one core)", arms),
    ]
    for ax, (key, label, names) in zip(axes[:2], panels, strict=True):
        values = [_value(f, f"{key}.{arm}") or 0 for arm in names]
        colors = {DIRECT: "#888", OURS: "#2a7", STOCK: "#7b5", LITE: "#c63"}
        bars = ax.bar(names, values, color=[colors[name] for name in names])
        ax.bar_label(bars, fmt="%.0f")
        ax.set_title(label)
    workers = [w for w in ("1", "2") if f"workers.{w}" in f]
    if workers:
        values = [_value(f, f"workers.{w}") or 0 for w in workers]
        bars = axes[2].bar(
            [f"{w} worker{'s' if w != '1' else ''}" for w in workers], values, color="#2a7"
        )
        axes[2].bar_label(bars, fmt="%.0f")
    axes[2].set_title("ai-agent requests/s by --workers")
    fig.tight_layout()
    fig.savefig(os.path.join(imgDir, "perf-throughput.png"), dpi=100)
    plt.close(fig)
    made.append(("perf-throughput.png", "Throughput (median of rounds)"))
    made += headendToolPlot(samples, f, imgDir)
    made += agentLoopPlot(samples, imgDir)
    return made


def headendToolPlot(
    samples: dict[str, Any], f: dict[str, Any], imgDir: str
) -> list[tuple[str, str]]:
    """
    One PNG for the headends and the tool calls: each API's added p50
    (non-streamed and TTFT), and each MCP transport's time per call, the
    SDK's client against a call inside a run (nothing when not measured).
    """
    tools = toolFigures(samples)
    if f"latency_responses_c1.added_p50.{OURS}" not in f and not any(
        f"mcp.span.p50.{t}" in tools for t, _ in MCP_TRANSPORTS
    ):
        return []
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    apis = (
        ("Chat\nCompletions", "latency_c1", "ttft_c1"),
        ("Responses", "latency_responses_c1", "ttft_responses_c1"),
        ("Anthropic\nMessages", "latency_messages_c1", "ttft_messages_c1"),
        ("A2A", "latency_a2a_c1", "ttft_a2a_c1"),
    )
    positions = range(len(apis))
    for offset, (label, index) in ((-0.2, ("non-streamed", 1)), (0.2, ("TTFT", 2))):
        values = [_value(f, f"{api[index]}.added_p50.{OURS}") or 0 for api in apis]
        bars = axes[0].bar([p + offset for p in positions], values, width=0.4, label=label)
        axes[0].bar_label(bars, fmt="%.2f")
    axes[0].set_xticks(list(positions), [api[0] for api in apis])
    axes[0].set_ylabel("ms added (p50, c=1)")
    axes[0].set_title("ai-agent's added latency by API")
    axes[0].legend()
    names = [name for t, name in MCP_TRANSPORTS]
    for offset, (label, key) in (
        (-0.2, ("MCP SDK client", "sdk")),
        (0.2, ("inside a run", "span")),
    ):
        values = [tools.get(f"mcp.{key}.p50.{t}") or 0 for t, _ in MCP_TRANSPORTS]
        bars = axes[1].bar([p + offset for p in range(len(names))], values, width=0.4, label=label)
        axes[1].bar_label(bars, fmt="%.2f")
    axes[1].set_xticks(list(range(len(names))), names)
    axes[1].set_ylabel("ms per call (p50)")
    axes[1].set_title("One MCP tool call")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(imgDir, "perf-headends-tools.png"), dpi=100)
    plt.close(fig)
    return [("perf-headends-tools.png", "Headends and MCP tool calls (median of rounds)")]


def allFiguresTable(f: dict[str, Any]) -> list[str]:
    """
    The "All figures" table: one column per arm measured, one row per
    figure (a latency figure's rows only when it was measured).
    """
    armsPresent = [a for a in (DIRECT, OURS, STOCK, LITE) if f"latency_c1.p50.{a}" in f]
    lines = ["| figure | " + " | ".join(armsPresent) + " |"]
    lines += ["| --- |" + " --- |" * len(armsPresent)]

    def line(label: str, key: str, digits: int = 3) -> None:
        cells = [_fmt(f.get(key.format(arm=a)), digits) for a in armsPresent]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    measured = [
        (figure, label) for figure, label, _ in LATENCY_FIGURES if f"{figure}.p50.{DIRECT}" in f
    ] + [(figure, label) for figure, _, label in HEADEND_FIGURES if f"{figure}.p50.{OURS}" in f]
    for figure, label in measured:
        line(f"{label}: p50", figure + ".p50.{arm}")
        line(f"{label}: p99", figure + ".p99.{arm}")
        line(f"{label}: added p50", figure + ".added_p50.{arm}")
        line(f"{label}: added p99", figure + ".added_p99.{arm}")
        line(f"{label}: failed or wrong answers", figure + ".bad.{arm}")
    if f"tools_c1.legs_p50.{DIRECT}" in f:
        lines.append(
            "| client-tool round trip: p50 of request 1 (tool call) / request 2 (answer) | "
            + " | ".join(
                f"{legs[0]:.3f} / {legs[1]:.3f}"
                if (legs := f.get(f"tools_c1.legs_p50.{a}"))
                else "n/a"
                for a in armsPresent
            )
            + " |"
        )
    line("requests/s (c=32, closed loop)", "rps.{arm}", 0)
    line("server CPU per request, µs", "rps.cpuPerRequestUs.{arm}", 0)
    line("relayed tokens/s (8 streams of 401 tokens)", "tokens.{arm}", 0)
    line("streams intact / streams", "tokens.fidelity.{arm}")
    lines.append(
        "| cancellation: upstream closed after client, p50 / p99 (never) | "
        + " | ".join(
            (
                f"{c['p50']:.2f} / {c['p99']:.2f} ({c['never']})"
                if (c := f.get(f"cancel.{a}")) and c["p50"] is not None
                else ("never closed" if (c := f.get(f"cancel.{a}")) else "n/a")
            )
            for a in armsPresent
        )
        + " |"
    )
    return lines


# The document.


def _keptNotes(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return ""
    begin = text.find(NOTES_BEGIN)
    end = text.find(NOTES_END)
    if begin < 0 or end < begin:
        return ""
    return text[begin + len(NOTES_BEGIN) : end].strip("\n")


def write(samples: dict[str, Any], outDir: str) -> None:
    """
    Write C{performance.md}, the plots and the samples into C{outDir}.
    """
    os.makedirs(outDir, exist_ok=True)
    with open(os.path.join(outDir, "performance-samples.json"), "w") as fp:
        json.dump(samples, fp, separators=(",", ":"))
    f = figures(samples)
    images = plots(samples, f, os.path.join(outDir, "img"))
    path = os.path.join(outDir, "performance.md")
    notes = _keptNotes(path)
    env = samples.get("environment", {})
    plan = samples.get("plan", {})
    lines: list[str] = ["# Performance", ""]
    lines += [
        "What this server adds on top of the LLM, measured the way gateway vendors do: in one run,",
        "beside a direct call to the same upstream and beside a LiteLLM proxy. Regenerate with",
        "`bench/run` (see the README); everything below the notes is written by it.",
        "",
    ]
    if plan.get("quick"):
        lines += [
            "> **Short run** (`bench/run --quick`): few rounds and short windows, on a machine",
            "> shared with other work while it ran. The numbers show orders of magnitude; run",
            "> `bench/run` on a quiet machine for the figures of record.",
            "",
        ]
    share = f.get(f"rps.serverShare.{OURS}")
    if share is not None and share < 0.9:
        lines += [
            f"> **Busy machine**: while saturated, the server under test got only {share:.2f} of",
            "> its CPU (it should be close to 1.00): other processes ran on CPU 0. Latencies and",
            "> rates below are pessimistic; the CPU cost per request is the steadier figure.",
            "",
        ]
    lines += [NOTES_BEGIN, notes or "_No notes yet._", NOTES_END, ""]
    lines += ["## Targets", "", "| figure | target | measured | |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in targetsTable(samples, f)]
    lines += [
        "",
        "## All figures",
        "",
        "Milliseconds unless marked; medians over rounds with the interquartile range of the",
        "round values.",
        "",
    ]
    armsPresent = [a for a in (DIRECT, OURS, STOCK, LITE) if f"latency_c1.p50.{a}" in f]
    lines += allFiguresTable(f)
    lines.append("")
    lines += ["CPU use during the throughput windows (fraction of one core, per round):", ""]
    for key in ("rps", "tokens"):
        for arm in armsPresent:
            cpu = f.get(f"{key}.cpu.{arm}")
            if cpu:
                lines.append(
                    f"- {key}, {arm}: "
                    + "; ".join(
                        ", ".join(f"{name} {value:.2f}" for name, value in c.items()) for c in cpu
                    )
                )
    lines.append("")
    lines += ["### Memory, start-up, overload", ""]
    idleRss = samples.get("idleRss", {})
    after = samples.get("idleRssAfterLoad", {})
    for arm in (OURS, LITE):
        if arm in idleRss:
            lines.append(
                f"- {arm}: idle RSS {idleRss[arm] / 1024:.1f} MiB after start,"
                f" {after.get(arm, 0) / 1024:.1f} MiB after the load rounds."
            )
    for arm, cold in samples.get("coldStart", {}).items():
        lines.append(
            f"- {arm}: cold start to the first 200 on `/v1/models`: "
            + ", ".join(f"{s:.2f}" for s in cold["seconds"])
            + " s."
        )
    idle = samples.get("idleStreams")
    if idle:
        lines.append(
            f"- Idle streams (ai-agent, each held open by the upstream after one token; base RSS"
            f" {idle['baseKiB'] / 1024:.1f} MiB):"
        )
        for level in idle["levels"]:
            lines.append(
                f"  - {level['streams']:,} streams: RSS {level['rssKiB'] / 1024:.1f} MiB,"
                f" {level['perStreamKiB']:.2f} KiB per stream,"
                f" opened in {level['openSeconds']:.1f} s"
                f" (cumulative), `/health` p99 {level['healthP99Ms']:.2f} ms while held"
            )
        lines.append(f"  - after closing them all: RSS {idle['afterKiB'] / 1024:.1f} MiB")
    reject = samples.get("reject")
    if reject:
        seq, burst = reject["ms"], reject["burstMs"]
        lines.append(
            "- Queue full (4 slots, queue of 4, all taken): time to the refusal,"
            f" sequential p50 {percentile(seq, 50):.2f} ms, p99 {percentile(seq, 99):.2f} ms;"
            f" burst of 64 p50 {percentile(burst, 50):.2f} ms,"
            f" p99 {percentile(burst, 99):.2f} ms; statuses {reject['statuses']};"
            f" `Retry-After` on {reject['retryAfter']} of {len(seq)}."
        )
    w1, w2 = f.get("workers.1"), f.get("workers.2")
    if w1 and w2:

        def cpu(workers: str) -> str:
            rounds = samples["workers_rps"][workers].values()
            server = median([r["cpu"]["server"] for r in rounds])
            other = median([r["cpu"]["upstream"] + r["cpu"]["client"] for r in rounds])
            return f"server {server:.2f} CPU, upstream + client {other:.2f} CPU"

        lines.append(
            f"- `--workers` (64 connections): {w1['value']:.0f} requests/s with 1 process on CPU 0"
            f" ({cpu('1')}); {w2['value']:.0f} with 2 processes on CPUs 0–1 ({cpu('2')}):"
            f" {w2['value'] / w1['value']:.2f}×. The second CPU also runs the load client and"
            " the upstream, so on this 2-CPU machine the second worker competes with them."
        )
    lines.append("")
    lines += stockLines(f)
    lines += headendLines(f)
    lines += toolLines(samples)
    lines += agentLoopLines(samples)
    lines += observeLines(samples)
    lines += ["## Plots", ""]
    for name, caption in images:
        lines += [f"![{caption}](img/{name})", ""]
    lines += ["## How it was measured", ""]
    lines += [
        "- One command, `bench/run`, starts the fake upstream (`bench/_upstream.py`: the answers",
        '  of `ai_agent.testing.FakeUpstream`, "echo: " and the last user message word by word,',
        "  from pre-encoded frames), this server, and a LiteLLM proxy in its own venv when",
        "  installed.",
        "  Each server under test is pinned to CPU 0 (`taskset`); the upstream and the load client",
        "  (this process, raw asyncio sockets, keep-alive) share CPU 1. Loopback only.",
        "- Arms: *direct* (client → upstream), *ai-agent* (client → server → upstream; an agent",
        "  without tools is exactly one upstream call, streamed), *litellm* (client → LiteLLM →",
        "  upstream, master key set, retries off). Same request bodies and bearer token",
        "  everywhere.",
        "- Interleaved rounds: every figure is measured in each round for every arm, in a random",
        "  arm order per round (the order is in the samples file). Added latency = the arm's",
        "  percentile minus the direct arm's percentile in the same round; reported as the median",
        "  over rounds with the interquartile range.",
        "- Client-tool round trip: request 1 carries one function tool (`get_weather`) and a user",
        "  message, and the upstream answers with a call of that tool (`finish_reason:",
        '  "tool_calls"`; through ai-agent, the agent has no tools of its own and hands the call',
        "  back under an id of its own); request 2 carries the question, the call as it came back",
        '  and a `role: "tool"` result, and the upstream answers "result: " and the result. One',
        "  after the other on one keep-alive connection, non-streamed; a trip's latency is the sum",
        "  of its two requests' (the client's own work between them left out), and it counts only",
        "  when the call (name, arguments) and the final answer are exactly right. ai-agent keeps",
        "  the handed-back turn in its default run store (SQLite, in the benchmark's temporary",
        "  `XDG_STATE_HOME`).",
        "- Headends: the non-streamed request and the streamed one of the latency and TTFT arms,",
        "  sent to this server's Responses API (`/v1/responses`, stored, as by default) and its",
        "  Anthropic Messages API (`/v1/messages`, with `x-api-key` and `anthropic-version` as",
        "  Anthropic's clients send them), in the same rounds, in a random order; a Messages",
        "  stream's first token is its first `text_delta`. The upstream has only Chat",
        "  Completions, so each is taken against the direct arm's Chat Completions figure of the",
        "  same round; every answer must be exactly the echo (the text assembled from the",
        "  response object or from the stream's deltas). The client-tool round trip's figure per",
        "  request is the mean of its two requests' added p50 (each against the same request",
        "  sent directly in the same round), compared with a plain request's added p50.",
        "- Tools inside a run (a server of their own, `ours-tools`, on CPU 0; in interleaved",
        "  rounds, each of its arms in a random order): the MCP server (`bench/_mcpserver.py`,",
        "  the SDK's `MCPServer` with one tool, `echo`) runs on CPU 1 like the upstream, over",
        "  stdio (a child process, started through `taskset`) and over Streamable HTTP (uvicorn,",
        "  one process). *SDK client*: `bench/_mcpclient.py`, pinned to CPU 0 like the server",
        "  under test, one `mcp.ClientSession` (`stdio_client` / `streamable_http_client`) calling",
        "  `echo` one call after the other; each call timed around `call_tool`. *Inside a run*:",
        "  a streamed request to an agent whose `tools:` names the server; the upstream calls the",
        "  tool it is offered with the user's message, then answers \"result: \" and the tool's",
        "  result. The run shows the call as progress (`reasoning_content` frames: `calling",
        "  <tool> ...` as the call starts, `<tool> → ...` when its result is in); the client",
        "  stamps the arrival of every read, and the call's time is the gap between the reads",
        "  that completed those two frames: the whole call as this server makes it (arguments",
        "  parsed, the JSON-RPC request written, the answer read and turned into text) plus two",
        "  progress frames' encoding. *End to end*: the run's p50 minus the p50 of its two",
        "  upstream calls made directly (the same streamed requests with the tool and with its",
        "  result, one after the other), minus a plain run's added p50 (a run without tools on",
        "  the same server, minus the same request made directly), per round; this is the MCP",
        "  call plus this server's cost of a second upstream call and a second turn. A run",
        "  counts only when its answer is exact and both progress frames came once; a call",
        "  whose two frames came in one read cannot be timed and is counted as *not timed*.",
        "  The MCP server is kept off CPU 0: there, woken by the call, it would run before this",
        "  server flushed the progress frame written just before the call, and the frames",
        "  would no longer mark the call's start (tried: several calls a round went untimed).",
        "  For the same reason the load client runs these arms at nice -10 when allowed (the",
        "  samples' `toolClientNice`): woken by a frame while the MCP server (or the upstream,",
        "  for a sub-agent) is woken by the call on the same CPU, it reads the frame first, which",
        "  if anything adds its read to the call's time.",
        "- Sub-agent: a parent agent whose `agents:` lists `child.ai` (like `bench`: no tools,",
        '  one upstream call); the upstream calls `agent__child` with `{"prompt": <the user\'s',
        "  message>}` (the bench upstream fills the first required string parameter of the",
        "  tool's schema), the child echoes, the parent answers \"result: \" and the child's",
        "  answer. The sub-agent call is timed between its progress frames as above, and minus",
        "  the child's upstream call made directly; end to end, the run's p50 minus its three",
        "  upstream calls made directly, minus a plain run's added p50.",
        "- The agent loop (a server of its own, `ours-loop`, on CPU 0; the MCP server on CPU 1",
        "  as for the tool arms; in interleaved rounds, each arm once per round in a random",
        "  order, after a warm-up round): the upstream's `/loop/v1` answers a request that offers",
        "  tools with a call of the first one (the user's message as `text`) while its history",
        '  holds fewer than five tool results, then with "result: " and the last result, so',
        "  every orchestrator runs the same loop: five turns, each one MCP `echo` call, and a",
        "  sixth upstream call for the answer. *ai-agent*: a streamed request from the load",
        "  client to an agent whose `tools:` names the MCP server, timed to its last byte,",
        "  counted only when the answer is exact. *OpenAI Agents SDK* and *LangGraph*:",
        "  `bench/_agentloop.py`, in a process of its own pinned to CPU 0 like the server (the",
        "  SDKs run in-process, so that process is the orchestrator): `Runner.run` on an `Agent`",
        "  with `OpenAIChatCompletionsModel` and `MCPServerStdio` / `MCPServerStreamableHttp`",
        "  (tool list cached, tracing off), or `create_react_agent` on `ChatOpenAI` with the",
        "  tools of one MCP session held open (`load_mcp_tools`); each run timed around that",
        "  call, counted only when the final answer is exact; retries off everywhere; the SDKs'",
        "  model calls non-streamed (their default), ours streamed (this server always streams",
        "  from its upstream). Baselines in the same rounds: the run's six upstream calls made",
        "  directly, streamed, one after the other on one keep-alive connection (*direct*), and",
        "  the MCP server's own time per call: `bench/_mcpraw.py`, a minimal client without SDK",
        "  pinned to CPU 0 (one JSON-RPC line written and one read over stdio; one POST on a",
        "  keep-alive `http.client` connection over Streamable HTTP), calling `echo` one call",
        "  after the other on one session. *Added per turn* = (the arm's run p50 − the direct",
        "  sequence's p50 − 5 × the minimal client's p50 per call) / 5, per round, median over",
        "  rounds: what the orchestrator adds to each turn beyond the model's and the tool's own",
        "  time, its MCP client included. *CPU per turn* = the orchestrating",
        "  process's user + system CPU (`/proc/PID/stat`, that process alone: not the stdio MCP",
        "  server it starts) over the round's runs / (runs × 5). This server's figure includes",
        "  parsing the client's request and streaming the answer back, which the in-process",
        "  SDKs do not pay.",
        "- Stock Twisted: a second server, `ours-stock`, started with `--stock-twisted`, runs",
        "  beside the default one through the core rounds (latency, TTFT, the client-tool round",
        "  trip, requests/s, tokens/s, the headends, cancellation), each its own arm in the same",
        "  random order per round, on the same CPU 0 (one measured at a time).",
        "- Requests/s: 32 closed-loop keep-alive connections, non-streamed, for the window; only",
        "  correct answers count. Tokens/s: 8 streams at a time, each the 401 word-tokens of the",
        "  echo; a stream counts only when every content frame arrived once, in order, unmerged,",
        "  and `[DONE]` closed it. CPU shares come from `/proc/PID/stat`.",
        "- Cancellation: a stream from the slow upstream (a word per 20 ms); after the first",
        "  token the client closes its socket; the upstream records (`time.monotonic`, one clock",
        "  for all processes) when its own connection closed.",
        "- Memory per idle stream: (RSS with N streams − RSS before) / N, for streams the upstream",
        "  holds open after one token. Each proxied stream costs two file descriptors (client and",
        "  upstream) and the hard limit here is 20,000, so the top level is 9,950 streams.",
        "- Raw samples: [performance-samples.json](performance-samples.json).",
        "",
        "## Environment",
        "",
    ]
    for key in (
        "commit",
        "date",
        "cpu",
        "nproc",
        "loadavg",
        "python",
        "twisted",
        "klein",
        "treq",
        "litellm",
    ):
        lines.append(f"- {key}: {env.get(key)}")
    lines.append(f"- plan: {json.dumps(plan)}")
    lines.append(f"- run time: {samples.get('elapsedSeconds', '?')} s")
    lines.append("")
    with open(path, "w", encoding="utf-8") as fp:
        fp.write("\n".join(lines))
