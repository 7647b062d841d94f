"""
The benchmark run: start the fake upstream, this server and (when
installed) a LiteLLM proxy with their CPUs pinned, measure every arm in
interleaved rounds, and write the samples, the summary and the plots.

The load client is this process, pinned with the upstream to the second
CPU; each server under test gets the first CPU to itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from functools import partial
from typing import Any, Awaitable, Callable

import attrs

from bench import _report
from bench._client import Connection, ConnectionLostError, Result, Sampler, Target, request
from bench._stats import (
    a2aText,
    checkA2AStream,
    checkMessagesStream,
    checkResponsesStream,
    checkStream,
    completionText,
    cpuSeconds,
    handedBackCall,
    mcpText,
    messagesText,
    percentile,
    readAgentStream,
    responsesText,
    rssKiB,
)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LITELLM = os.path.join(HERE, ".venv-litellm", "bin", "litellm")
KEY = "sk-bench-master-0000"

SERVER_CPU = "0"
LOAD_CPU = 1
#: Where the MCP server runs (the tool arms): the far end, like the
#: upstream.  On the server's CPU instead, it would take that CPU as soon as
#: it is woken, before the server flushed the progress frame it wrote just
#: before the call, and the frames that time the call would be late.
MCP_CPU = LOAD_CPU

DIRECT, OURS, LITE = "direct", "ai-agent", "litellm"
#: This server started with C{--stock-twisted}: the speed layer off.
STOCK = "ai-agent-stock"

# Messages: the upstream echoes them word by word.
PING = "ping"
SHORT = "ping pong"

# The client-tool round trip: the client's one tool, its question and the
# result it sends back; the upstream calls the tool, then answers
# "result: " and the result.
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    },
}
WEATHER_ASK = "weather in Paris"
WEATHER_RESULT = "sunny 21 C"

# The tools inside a run: the bench's MCP server (bench/_mcpserver.py, one
# tool, echo) over stdio and over Streamable HTTP, and a sub-agent; the
# upstream calls the agent's first tool with the user's message, then
# answers "result: " and the tool's result.
MCP_SERVER = os.path.join(HERE, "_mcpserver.py")
MCP_CLIENT = os.path.join(HERE, "_mcpclient.py")
#: The message of every tool-arm run (bench/_mcpclient.py sends the same text).
TOOL_TEXT = "hello mcp"
#: The MCP server's name in the configuration, by transport.
MCP_NAMES = {"stdio": "echostdio", "http": "echohttp"}
#: The tool arms' agents (in the "tools" directory), by arm.
TOOL_AGENTS = {"stdio": "mcpstdio", "http": "mcphttp", "subagent": "parent"}

# The agent loop: a run of LOOP_TURNS turns, each calling the bench's MCP
# tool, against the upstream's /loop/v1 (bench/_upstream.py), driven by
# this server and by third-party frameworks (bench/_agentloop.py).
AGENT_LOOP = os.path.join(HERE, "_agentloop.py")
#: The minimal MCP client (no SDK): the MCP server's own time per call.
MCP_RAW = os.path.join(HERE, "_mcpraw.py")
#: The tool calls of one loop run (the upstream's LOOP_TURNS).
LOOP_TURNS = 5
#: The loop arms' agents (in the "loop" directory), by MCP transport.
LOOP_AGENTS = {"stdio": "loopstdio", "http": "loophttp"}
#: The third-party frameworks, by arm name: the argument of
#: bench/_agentloop.py and the venv whose Python runs it (the OpenAI Agents
#: SDK in bench/.venv with the MCP SDK the rest of the bench uses;
#: LangGraph's MCP adapters want the MCP SDK's first version, so they have
#: a venv of their own).
LOOP_FRAMEWORKS = {
    "openai-agents": ("agents", os.path.join(HERE, ".venv", "bin", "python")),
    "langgraph": ("langgraph", os.path.join(HERE, ".venv-langgraph", "bin", "python")),
}


def mcpStdioCommand() -> list[str]:
    """
    The bench's MCP server over stdio, pinned to the upstream's CPU.
    """
    return ["taskset", "-c", str(MCP_CPU), sys.executable, MCP_SERVER]


@attrs.frozen
class Plan:
    """
    How much to measure.
    """

    rounds: int
    latency1: int
    latency16: int
    ttft: int
    seconds: float
    tokensWords: int
    cancels: int
    rejects: int
    idleLevels: tuple[int, ...]
    coldStarts: int
    toolTrips: int
    toolRuns: int = 0
    loopRuns: int = 0
    warmup: int = 50


QUICK = Plan(
    rounds=3,
    latency1=100,
    latency16=480,
    ttft=50,
    seconds=2.0,
    tokensWords=400,
    cancels=10,
    rejects=50,
    idleLevels=(1000, 9950),
    coldStarts=3,
    toolTrips=40,
    toolRuns=40,
    loopRuns=15,
)
FULL = Plan(
    rounds=7,
    latency1=300,
    latency16=2000,
    ttft=200,
    seconds=8.0,
    tokensWords=400,
    cancels=100,
    rejects=300,
    idleLevels=(1000, 9950),
    coldStarts=7,
    toolTrips=150,
    toolRuns=300,
    loopRuns=60,
)


def freePort() -> int:
    """
    A TCP port free on 127.0.0.1 now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found.extend(int(p) for p in f.read().split())
        except OSError:
            pass
    return found


def processTree(pid: int) -> list[int]:
    """
    C{pid} and all its descendants.
    """
    pids = [pid]
    for child in _children(pid):
        pids.extend(processTree(child))
    return pids


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


@attrs.define
class Proc:
    """
    A process under test (with its children, for workers and LiteLLM).
    """

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log: str

    @property
    def pids(self) -> list[int]:
        return processTree(self.popen.pid)

    def rssKiB(self) -> int:
        """
        Resident memory of the whole process tree.
        """
        return sum(rssKiB(_read(f"/proc/{pid}/status")) for pid in self.pids)

    def ownCpu(self) -> float:
        """
        CPU seconds used so far by the process itself (all its threads, none
        of its children: not a stdio MCP server it started).
        """
        return cpuSeconds(_read(f"/proc/{self.popen.pid}/stat"))

    def cpu(self) -> float:
        """
        CPU seconds used so far by the process tree.
        """
        total = 0.0
        for pid in self.pids:
            stat = _read(f"/proc/{pid}/stat")
            if stat:
                total += cpuSeconds(stat)
        return total

    def stop(self) -> None:
        """
        SIGTERM, then SIGKILL after 10 s.
        """
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            for pid in reversed(self.pids):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            self.popen.wait(5)


def spawn(name: str, argv: list[str], cpus: str, cwd: str, env: dict[str, str], port: int) -> Proc:
    """
    Start C{argv} pinned to C{cpus}, output to a log file in C{cwd}.
    """
    log = os.path.join(cwd, f"{name}.log")
    out = open(log, "ab")
    popen = subprocess.Popen(
        ["taskset", "-c", cpus, *argv],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    out.close()
    return Proc(name, popen, port, log)


async def waitReady(proc: Proc, path: str, timeout: float, key: str = KEY) -> float:
    """
    Poll C{GET path} until it answers 200; return the seconds from spawn
    (measured from now, so call this right after L{spawn}).
    """
    started = time.perf_counter()
    target = Target(proc.port, "", "")
    target.key = key
    raw = target.get(path)
    while time.perf_counter() - started < timeout:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited; see {proc.log}")
        try:
            result = await request(proc.port, raw, timeout=5)
            if result.status == 200:
                return time.perf_counter() - started
        except (OSError, TimeoutError, Exception):
            pass
        await asyncio.sleep(0.002)
    raise RuntimeError(f"{proc.name} did not answer within {timeout:g} s; see {proc.log}")


# The systems under test.


AGENT = """\
---
description: benchmark agent ({name})
models: {provider}/m
llmTimeout: 10m
maxRetries: 1
---
"""


@attrs.define
class Setup:
    """
    The working directory shared by every server: agent files, the
    configuration, logs.
    """

    directory: str
    upstreamPort: int
    env: dict[str, str]

    @classmethod
    def create(cls, upstreamPort: int) -> Setup:
        directory = tempfile.mkdtemp(prefix="ai-agent-bench-")
        base = f"http://127.0.0.1:{upstreamPort}"
        providers = {
            "up": {"type": "openai", "baseUrl": f"{base}/v1", "apiKey": "dummy"},
            "uphold": {"type": "openai", "baseUrl": f"{base}/hold/v1", "apiKey": "dummy"},
            "upslow": {"type": "openai", "baseUrl": f"{base}/slow/v1", "apiKey": "dummy"},
            "uploop": {"type": "openai", "baseUrl": f"{base}/loop/v1", "apiKey": "dummy"},
        }
        with open(os.path.join(directory, ".ai-agent.json"), "w") as f:
            json.dump({"providers": providers}, f)
        for name, provider in (("bench", "up"), ("hold", "uphold"), ("slow", "upslow")):
            with open(os.path.join(directory, f"{name}.ai"), "w") as f:
                f.write(AGENT.format(name=name, provider=provider))
        with open(os.path.join(directory, "litellm.yaml"), "w") as f:
            f.write("model_list:\n")
            for name, prefix in (("bench", "/v1"), ("hold", "/hold/v1"), ("slow", "/slow/v1")):
                f.write(
                    f"  - model_name: {name}\n    litellm_params:\n      model: openai/m\n"
                    f"      api_base: {base}{prefix}\n      api_key: dummy\n"
                )
            f.write(
                "litellm_settings:\n  num_retries: 0\n  request_timeout: 600\n"
                "  drop_params: true\n  telemetry: false\n"
                f"general_settings:\n  master_key: {KEY}\n"
            )
        env = {
            key: value
            for key, value in os.environ.items()
            if key in ("PATH", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")
        }
        # Every server's state (the run store's default SQLite file among
        # it) stays in this directory, never in the user's home.
        env["HOME"] = directory
        env["XDG_STATE_HOME"] = os.path.join(directory, "state")
        env["PYTHONPATH"] = ROOT
        return cls(directory, upstreamPort, env)

    def writeToolAgents(self, mcpUrl: str) -> list[str]:
        """
        The tool arms' agents, in C{tools/} with their own configuration
        (the MCP servers): one per MCP transport, and a parent whose one
        sub-agent is like C{bench} (no tools, one upstream call).  Return
        their paths relative to the working directory.

        The stdio server is pinned to the upstream's CPU, as the
        Streamable HTTP one is: the MCP server is the far end, like the
        upstream.
        """
        folder = os.path.join(self.directory, "tools")
        os.makedirs(folder, exist_ok=True)
        servers = {
            MCP_NAMES["stdio"]: {
                "command": "taskset",
                "args": ["-c", str(MCP_CPU), sys.executable, MCP_SERVER],
            },
            MCP_NAMES["http"]: {"type": "http", "url": mcpUrl},
        }
        with open(os.path.join(folder, ".ai-agent.json"), "w") as f:
            json.dump({"mcpServers": servers}, f)
        extra = {
            TOOL_AGENTS["stdio"]: f"tools: [{MCP_NAMES['stdio']}]\n",
            TOOL_AGENTS["http"]: f"tools: [{MCP_NAMES['http']}]\n",
            TOOL_AGENTS["subagent"]: "agents: [child.ai]\n",
            "child": "",
        }
        for name, line in extra.items():
            with open(os.path.join(folder, f"{name}.ai"), "w") as f:
                head = AGENT.format(name=name, provider="up")
                # The extra key goes before the closing "---".
                f.write(head[: -len("---\n")] + line + "---\n")
        return [os.path.join("tools", f"{name}.ai") for name in TOOL_AGENTS.values()]

    def writeLoopAgents(self, mcpUrl: str) -> dict[str, str]:
        """
        The agent-loop arms' agents, in C{loop/} with their own
        configuration (the bench's MCP server, pinned like the tool arms'):
        one per MCP transport, on the upstream's C{/loop/v1}.  Return their
        paths relative to the working directory, by transport.
        """
        folder = os.path.join(self.directory, "loop")
        os.makedirs(folder, exist_ok=True)
        servers = {
            MCP_NAMES["stdio"]: {"command": "taskset", "args": mcpStdioCommand()[1:]},
            MCP_NAMES["http"]: {"type": "http", "url": mcpUrl},
        }
        with open(os.path.join(folder, ".ai-agent.json"), "w") as f:
            json.dump({"mcpServers": servers}, f)
        paths = {}
        for transport, name in LOOP_AGENTS.items():
            head = AGENT.format(name=name, provider="uploop")
            with open(os.path.join(folder, f"{name}.ai"), "w") as f:
                f.write(head[: -len("---\n")] + f"tools: [{MCP_NAMES[transport]}]\n---\n")
            paths[transport] = os.path.join("loop", f"{name}.ai")
        return paths

    def startOurs(
        self,
        name: str = "ours",
        concurrency: int = 256,
        queue: int = 256,
        workers: int = 1,
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        agents: tuple[str, ...] = ("bench.ai", "hold.ai", "slow.ai"),
    ) -> Proc:
        port = freePort()
        argv = [
            sys.executable,
            "-m",
            "ai_agent",
            *(arg for agent in agents for arg in ("--agent", agent)),
            "--openai-completions",
            str(port),
            "--openai-completions-concurrency",
            str(concurrency),
            "--openai-completions-queue",
            str(queue),
            *extra,
        ]
        cpus = SERVER_CPU
        if workers > 1:
            argv += ["--workers", str(workers)]
            cpus = "0-1"
        return spawn(name, argv, cpus, self.directory, {**self.env, **(env or {})}, port)

    def startLiteLLM(self) -> Proc:
        port = freePort()
        env = dict(self.env)
        env.update(
            LITELLM_LOCAL_MODEL_COST_MAP="True",
            LITELLM_DONT_SHOW_FEEDBACK_BOX="1",
            LITELLM_LOG="ERROR",
            NO_DOCS="True",
        )
        env.pop("PYTHONPATH", None)
        argv = [
            LITELLM,
            "--config",
            "litellm.yaml",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--num_workers",
            "1",
            "--telemetry",
            "False",
        ]
        return spawn("litellm", argv, SERVER_CPU, self.directory, env, port)


def targets(
    upstreamPort: int, ours: Proc, lite: Proc | None, kind: str, stock: Proc | None = None
) -> dict[str, Target]:
    """
    The arms' targets for the agent C{kind} (C{bench}, C{hold}, C{slow}).
    """
    prefix = {"bench": "/v1", "hold": "/hold/v1", "slow": "/slow/v1"}[kind]
    found = {
        DIRECT: Target(upstreamPort, prefix, "m", KEY),
        OURS: Target(ours.port, "/v1", kind, KEY),
    }
    if stock is not None:
        found[STOCK] = Target(stock.port, "/v1", kind, KEY)
    if lite is not None:
        found[LITE] = Target(lite.port, "/v1", kind, KEY)
    return found


# Measurements.


@attrs.define
class Recorder:
    """
    Every sample of the run, by figure, arm and round.
    """

    samples: dict[str, Any] = attrs.field(factory=dict)

    def add(self, figure: str, arm: str, round: int, value: Any) -> None:
        self.samples.setdefault(figure, {}).setdefault(arm, {})[str(round)] = value

    def put(self, figure: str, value: Any) -> None:
        self.samples[figure] = value


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 4)


def _checkCompletion(results: list[Result], expected: str) -> int:
    return sum(1 for r in results if r.status != 200 or completionText(r.body) != expected)


async def measureLatency(target: Target, concurrency: int, count: int) -> dict[str, Any]:
    sampler = Sampler(target.port)
    await sampler.run(target.chat(PING, False), concurrency, count=count)
    bad = _checkCompletion(sampler.results, "echo: " + PING) + sampler.errors
    return {"ms": [_ms(r.latency) for r in sampler.results], "bad": bad}


async def _measureStreamTTFT(
    port: int, raw: bytes, check: Callable[[bytes], Any], count: int
) -> dict[str, Any]:
    """
    Time to the first text of C{count} streamed requests C{raw} at
    concurrency 1; a stream counts as bad unless C{check} finds its text
    whole and in order.
    """
    sampler = Sampler(port)
    await sampler.run(raw, 1, count=count, watch=True)
    expected = ["echo: ", "ping ", "pong"]
    values = [_ms(r.ttft) for r in sampler.results if r.ttft is not None]
    bad = sampler.errors + sum(
        1 for r in sampler.results if r.status != 200 or not check(r.body).intact(expected)
    )
    return {"ms": values, "bad": bad}


async def measureTTFT(target: Target, count: int) -> dict[str, Any]:
    """
    Time to the first content delta of a streamed chat completion.
    """
    return await _measureStreamTTFT(target.port, target.chat(SHORT, True), checkStream, count)


async def measureTTFTResponses(target: Target, count: int) -> dict[str, Any]:
    """
    Time to the first text delta of a streamed Responses API request (the
    response stored, as by default).
    """
    raw = target.responses(SHORT, True)
    return await _measureStreamTTFT(target.port, raw, checkResponsesStream, count)


async def measureLatencyHeadend(target: Target, api: str, count: int) -> dict[str, Any]:
    """
    Non-streamed requests at concurrency 1 on another headend of this
    server (C{api}: C{responses}, stored as by default, C{messages},
    Anthropic's, or C{mcp}, the agent called as an MCP tool); an answer
    counts only when its text is exactly the echo.
    """
    if api == "responses":
        raw, text = target.responses(PING, False), responsesText
    elif api == "a2a":
        raw, text = target.a2a(PING, False), a2aText
    elif api == "mcp":
        raw, text = target.mcpCall(PING), mcpText
    else:
        raw, text = target.messages(PING, False), messagesText
    sampler = Sampler(target.port)
    await sampler.run(raw, 1, count=count)
    expected = "echo: " + PING
    bad = sampler.errors + sum(
        1 for r in sampler.results if r.status != 200 or text(r.body) != expected
    )
    return {"ms": [_ms(r.latency) for r in sampler.results], "bad": bad}


async def measureTTFTMessages(target: Target, count: int) -> dict[str, Any]:
    """
    Time to the first C{text_delta} of a streamed Anthropic Messages API
    request.
    """
    raw = target.messages(SHORT, True)
    return await _measureStreamTTFT(target.port, raw, checkMessagesStream, count)


async def measureTTFTA2A(target: Target, count: int) -> dict[str, Any]:
    """
    Time to the first C{artifactUpdate} of a streamed A2A message
    (C{message:stream}; the task kept in the run store).
    """
    raw = target.a2a(SHORT, True)
    return await _measureStreamTTFT(target.port, raw, checkA2AStream, count)


async def measureToolTrip(target: Target, count: int) -> dict[str, Any]:
    """
    C{count} client-tool round trips, one after the other on one keep-alive
    connection: request 1 carries the tool and the question and must come
    back as that tool's call (C{finish_reason: "tool_calls"}); request 2
    carries the history, the call as it came back and the tool's result,
    and must come back as the upstream's answer to that result.

    A round trip's latency is the sum of its two requests' (the client's
    own work between them is left out); a trip with a wrong or failed
    answer counts as bad and is not timed.
    """
    ask = {"role": "user", "content": WEATHER_ASK}
    first = target.toolChat([ask], [WEATHER_TOOL])
    arguments = {"text": WEATHER_ASK}
    expected = "result: " + WEATHER_RESULT
    totals: list[float] = []
    legs: list[list[float]] = []
    bad = 0
    connection: Connection | None = None
    try:
        for _ in range(count):
            if connection is None or not connection.usable:
                connection = await Connection.open(target.port)
            try:
                one = await asyncio.wait_for(connection.send(first), 30.0)
                call = handedBackCall(one.body) if one.status == 200 else None
                if (
                    call is None
                    or call["function"]["name"] != "get_weather"
                    or _jsonOrNone(call["function"]["arguments"]) != arguments
                ):
                    bad += 1
                    continue
                history: list[dict[str, Any]] = [
                    ask,
                    {"role": "assistant", "content": None, "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": call["id"], "content": WEATHER_RESULT},
                ]
                two = await asyncio.wait_for(
                    connection.send(target.toolChat(history, [WEATHER_TOOL])), 30.0
                )
            except (ConnectionLostError, TimeoutError, OSError):
                bad += 1
                connection.close()
                connection = None
                continue
            if two.status != 200 or completionText(two.body) != expected:
                bad += 1
                continue
            totals.append(_ms(one.latency + two.latency))
            legs.append([_ms(one.latency), _ms(two.latency)])
    finally:
        if connection is not None:
            connection.close()
    return {"ms": totals, "legsMs": legs, "bad": bad}


async def measureAgentRun(
    target: Target, count: int, expected: str, tool: str | None
) -> dict[str, Any]:
    """
    C{count} streamed runs at concurrency 1 on one keep-alive connection,
    each timed to its last byte; with C{tool}, also the time between the
    arrival of the progress frame announcing the tool's call and that of
    the one announcing its result (the tool call as the client sees it).

    A run counts only when its answer is exactly C{expected}, the stream
    ended with C{[DONE]} and, with C{tool}, both progress frames came once.
    When both frames came in one read (the client read late), the call
    cannot be timed: it is counted in C{unresolved}, not in C{spanMs}.
    """
    raw = target.chat(TOOL_TEXT, True)
    totals: list[float] = []
    spans: list[float] = []
    bad = unresolved = 0
    connection: Connection | None = None
    try:
        for _ in range(count):
            if connection is None or not connection.usable:
                connection = await Connection.open(target.port)
            try:
                result = await asyncio.wait_for(connection.send(raw, marks=True), 30.0)
            except (ConnectionLostError, TimeoutError, OSError):
                bad += 1
                connection.close()
                connection = None
                continue
            stream = readAgentStream(result.body)
            span = None if tool is None else stream.span(result.marks or [], tool)
            if (
                result.status != 200
                or not stream.done
                or stream.errors
                or stream.content != expected
                or (tool is not None and span is None)
            ):
                bad += 1
                continue
            totals.append(_ms(result.latency))
            if span:
                spans.append(_ms(span))
            elif span is not None:
                unresolved += 1
    finally:
        if connection is not None:
            connection.close()
    out: dict[str, Any] = {"ms": totals, "bad": bad}
    if tool is not None:
        out["spanMs"] = spans
        out["unresolved"] = unresolved
    return out


def _toolSpec(name: str, parameter: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "parameters": {
                "type": "object",
                "properties": {parameter: {"type": "string"}},
                "required": [parameter],
            },
        },
    }


def directSteps(target: Target, kind: str) -> list[tuple[bytes, str | None]]:
    """
    The upstream calls of one tool-arm run, made directly: each request
    (streamed, as this server's upstream calls are) with the answer it must
    get (L{None}: a tool call).

    C{kind} C{mcp}: the call of the tool, then the answer to its result;
    C{subagent}: the parent's call of the sub-agent, the sub-agent's own
    call, then the parent's answer to the sub-agent's.
    """
    ask = {"role": "user", "content": TOOL_TEXT}
    if kind == "mcp":
        name, parameter, result = "echostdio__echo", "text", TOOL_TEXT
    else:
        name, parameter, result = "agent__child", "prompt", "echo: " + TOOL_TEXT
    tools = [_toolSpec(name, parameter)]
    call = {
        "id": "call_bench_0",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps({parameter: TOOL_TEXT})},
    }
    history: list[dict[str, Any]] = [
        ask,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": result},
    ]
    steps: list[tuple[bytes, str | None]] = [(target.toolChat([ask], tools, True), None)]
    if kind == "subagent":
        steps.append((target.toolChat([ask], [], True), "echo: " + TOOL_TEXT))
    steps.append((target.toolChat(history, tools, True), "result: " + result))
    return steps


async def measureDirectCalls(
    target: Target, steps: list[tuple[bytes, str | None]], count: int
) -> dict[str, Any]:
    """
    C{count} times, the C{steps} one after the other on one keep-alive
    connection: a sequence's latency is the sum of its requests' (and each
    request's is kept); a sequence with a wrong answer is bad, not timed.
    """
    totals: list[float] = []
    legs: list[list[float]] = []
    bad = 0
    connection: Connection | None = None
    try:
        for _ in range(count):
            times: list[float] = []
            for raw, expected in steps:
                if connection is None or not connection.usable:
                    connection = await Connection.open(target.port)
                try:
                    result = await asyncio.wait_for(connection.send(raw), 30.0)
                except (ConnectionLostError, TimeoutError, OSError):
                    connection.close()
                    connection = None
                    break
                stream = readAgentStream(result.body)
                right = (
                    b'"finish_reason":"tool_calls"' in result.body
                    if expected is None
                    else stream.content == expected
                )
                if result.status != 200 or not stream.done or not right:
                    break
                times.append(_ms(result.latency))
            if len(times) != len(steps):
                bad += 1
                continue
            totals.append(round(sum(times), 4))
            legs.append(times)
    finally:
        if connection is not None:
            connection.close()
    return {"ms": totals, "legsMs": legs, "bad": bad}


@attrs.define
class SdkClient:
    """
    The MCP SDK's client (bench/_mcpclient.py) in its own process, pinned
    like the server under test, one session open: asked for N calls, it
    answers their times.
    """

    process: asyncio.subprocess.Process

    @classmethod
    async def start(cls, setup: Setup, transport: str, target: list[str]) -> SdkClient:
        client = await cls.spawn(
            setup, f"sdk-{transport}", [sys.executable, MCP_CLIENT, transport, *target]
        )
        if client is None:
            raise RuntimeError(f"the MCP SDK client did not start; see sdk-{transport}.log")
        return client

    @classmethod
    async def spawn(
        cls, setup: Setup, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> SdkClient | None:
        """
        Start C{argv} pinned to the server's CPU, its errors to C{name}.log;
        L{None} when it did not print C{READY} (the reason, if it printed
        C{UNAVAILABLE ...}, goes to standard output).
        """
        log = open(os.path.join(setup.directory, f"{name}.log"), "ab")
        try:
            process = await asyncio.create_subprocess_exec(
                "taskset",
                "-c",
                SERVER_CPU,
                *argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=setup.directory,
                env=setup.env if env is None else env,
            )
        finally:
            log.close()
        client = cls(process)
        try:
            line = await client._line(120)
        except TimeoutError:
            line = "UNAVAILABLE no answer within 120 s"
        if line != "READY":
            print(f"bench: {name}: {line or 'exited'} (see {log.name})", flush=True)
            await client.stop()
            return None
        return client

    def cpu(self) -> float:
        """
        CPU seconds used so far by the process itself (not its children).
        """
        return cpuSeconds(_read(f"/proc/{self.process.pid}/stat"))

    async def _line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        return (await asyncio.wait_for(self.process.stdout.readline(), timeout)).decode().strip()

    async def calls(self, count: int) -> dict[str, Any]:
        """
        C{count} calls of the echo tool on the open session.
        """
        assert self.process.stdin is not None
        self.process.stdin.write(f"{count}\n".encode())
        await self.process.stdin.drain()
        line = await self._line(120)
        if not line:
            raise RuntimeError(f"{self.process.pid} exited during a measure; see its log")
        result: dict[str, Any] = json.loads(line)
        return result

    async def stop(self) -> None:
        """
        End the session (an empty line), then the process.
        """
        if self.process.returncode is not None:
            return
        try:
            assert self.process.stdin is not None
            self.process.stdin.write(b"\n")
            await self.process.stdin.drain()
            await asyncio.wait_for(self.process.wait(), 10)
        except (OSError, TimeoutError, ConnectionResetError):
            self.process.kill()
            await self.process.wait()


async def startMcpHttp(setup: Setup, name: str = "mcp-http") -> tuple[Proc, str]:
    """
    The bench's MCP server over Streamable HTTP (uvicorn, one process),
    pinned to the upstream's CPU, its output in C{name}.log; return it and
    its URL (its port read from what it writes to that log: a log reused by
    an earlier server names that server's port before).
    """
    try:
        before = os.path.getsize(os.path.join(setup.directory, f"{name}.log"))
    except OSError:
        before = 0
    proc = spawn(
        name,
        [sys.executable, MCP_SERVER, "--http"],
        str(MCP_CPU),
        setup.directory,
        setup.env,
        0,
    )
    for _ in range(3000):
        for line in _read(proc.log)[before:].splitlines():
            if line.startswith("PORT "):
                proc.port = int(line.split()[1])
                return proc, f"http://127.0.0.1:{proc.port}/mcp"
        if proc.popen.poll() is not None:
            break
        await asyncio.sleep(0.01)
    proc.stop()
    raise RuntimeError(f"the MCP server did not start; see {proc.log}")


#: The tool arms, each measured once per round in a random order: the MCP
#: SDK's client by transport, runs through this server (one MCP call by
#: transport, one sub-agent call, a plain run), and the direct upstream
#: calls the runs are made of.
TOOL_ARMS = (
    "sdk-stdio",
    "sdk-http",
    "run-stdio",
    "run-http",
    "run-subagent",
    "run-plain",
    "direct-plain",
    "direct-mcp",
    "direct-subagent",
)


async def measureToolArms(setup: Setup, plan: Plan, rec: Recorder, rounds: int) -> None:
    """
    The cost of a tool call inside a run: an MCP call (stdio, Streamable
    HTTP) against the MCP SDK's client calling the same server, and a
    sub-agent call; in interleaved rounds on a server of their own.
    """
    count = plan.toolRuns
    # The load client reads the progress frames that time a call while the
    # MCP server (or, for a sub-agent, the upstream) is woken on the same
    # CPU by that call: with a higher priority it reads them as they come,
    # not after the other process's turn.
    before = os.getpriority(os.PRIO_PROCESS, 0)
    nice = _raisePriority(CLIENT_NICE)
    rec.put("toolClientNice", nice)
    mcpHttp, url = await startMcpHttp(setup)
    procs: list[Proc] = [mcpHttp]
    sdks: dict[str, SdkClient] = {}
    try:
        agents = setup.writeToolAgents(url)
        ours = setup.startOurs("ours-tools", agents=("bench.ai", *agents))
        procs.append(ours)
        await waitReady(ours, "/v1/models", 60)
        stdioServer = mcpStdioCommand()
        sdks["stdio"] = await SdkClient.start(setup, "stdio", stdioServer)
        sdks["http"] = await SdkClient.start(setup, "http", [url])
        direct = Target(setup.upstreamPort, "/v1", "m", KEY)
        agent = {arm: Target(ours.port, "/v1", name, KEY) for arm, name in TOOL_AGENTS.items()}
        plain = Target(ours.port, "/v1", "bench", KEY)
        echo = "echo: " + TOOL_TEXT
        measures = {
            "sdk-stdio": ("mcp_sdk", "stdio", lambda: sdks["stdio"].calls(count)),
            "sdk-http": ("mcp_sdk", "http", lambda: sdks["http"].calls(count)),
            "run-stdio": (
                "mcp_run",
                "stdio",
                lambda: measureAgentRun(
                    agent["stdio"], count, "result: " + TOOL_TEXT, f"{MCP_NAMES['stdio']}__echo"
                ),
            ),
            "run-http": (
                "mcp_run",
                "http",
                lambda: measureAgentRun(
                    agent["http"], count, "result: " + TOOL_TEXT, f"{MCP_NAMES['http']}__echo"
                ),
            ),
            "run-subagent": (
                "subagent_run",
                OURS,
                lambda: measureAgentRun(
                    agent["subagent"], count, "result: " + echo, "agent__child"
                ),
            ),
            "run-plain": ("agent_plain", OURS, lambda: measureAgentRun(plain, count, echo, None)),
            "direct-plain": (
                "agent_plain",
                DIRECT,
                lambda: measureAgentRun(direct, count, echo, None),
            ),
            "direct-mcp": (
                "mcp_direct",
                DIRECT,
                lambda: measureDirectCalls(direct, directSteps(direct, "mcp"), count),
            ),
            "direct-subagent": (
                "subagent_direct",
                DIRECT,
                lambda: measureDirectCalls(direct, directSteps(direct, "subagent"), count),
            ),
        }
        # Warm-up: a round of the SDK clients and of the runs.
        for sdk in sdks.values():
            await sdk.calls(count)
        for arm in ("run-stdio", "run-http", "run-subagent", "run-plain"):
            await measures[arm][2]()
        order: list[list[str]] = []
        for r in range(rounds):
            shuffled = random.sample(list(TOOL_ARMS), len(TOOL_ARMS))
            order.append(shuffled)
            for arm in shuffled:
                figure, key, measure = measures[arm]
                rec.add(figure, key, r, await measure())
        rec.put("toolOrder", order)
    finally:
        for sdk in sdks.values():
            await sdk.stop()
        for proc in reversed(procs):
            proc.stop()
        if nice is not None:
            os.setpriority(os.PRIO_PROCESS, 0, before)


def loopSteps(target: Target) -> list[tuple[bytes, str | None]]:
    """
    The upstream calls of one agent-loop run, made directly: LOOP_TURNS
    requests answered with a call of the MCP tool (each carrying the history
    so far: the question, every call and its result), then the one answered
    with the last result.  Streamed, as this server's upstream calls are.
    """
    ask = {"role": "user", "content": TOOL_TEXT}
    tools = [_toolSpec("echo", "text")]
    history: list[dict[str, Any]] = [ask]
    steps: list[tuple[bytes, str | None]] = []
    for turn in range(LOOP_TURNS):
        steps.append((target.toolChat(list(history), tools, True), None))
        call = {
            "id": f"call_bench_{turn}",
            "type": "function",
            "function": {"name": "echo", "arguments": json.dumps({"text": TOOL_TEXT})},
        }
        history.append({"role": "assistant", "content": None, "tool_calls": [call]})
        history.append({"role": "tool", "tool_call_id": call["id"], "content": TOOL_TEXT})
    steps.append((target.toolChat(history, tools, True), "result: " + TOOL_TEXT))
    return steps


async def _withCpu(
    cpu: Callable[[], float], measure: Callable[[], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """
    C{measure}'s result, with the CPU seconds C{cpu} counted while it ran
    (C{cpuS}).
    """
    before = cpu()
    out = await measure()
    out["cpuS"] = round(cpu() - before, 4)
    return out


async def measureAgentLoop(setup: Setup, plan: Plan, rec: Recorder, rounds: int) -> None:
    """
    The agent loop: a run of LOOP_TURNS turns, each calling the bench's MCP
    tool (stdio, Streamable HTTP), then the answer; driven by this server
    (a streamed request from the load client, timed to its last byte) and
    by each third-party framework installed (bench/_agentloop.py, in its own
    process pinned to the server's CPU, timed around its run); with the
    orchestrating process's own CPU over each arm's runs.  The baselines:
    the run's upstream calls made directly, and a minimal client without
    SDK (bench/_mcpraw.py) calling the same MCP server.  In interleaved
    rounds, each arm once per round in a random order.
    """
    count = plan.loopRuns
    mcpHttp, url = await startMcpHttp(setup, "mcp-http-loop")
    procs: list[Proc] = [mcpHttp]
    drivers: list[SdkClient] = []
    try:
        paths = setup.writeLoopAgents(url)
        ours = setup.startOurs("ours-loop", agents=tuple(paths.values()))
        procs.append(ours)
        await waitReady(ours, "/v1/models", 60)
        loopBase = f"http://127.0.0.1:{setup.upstreamPort}/loop/v1"
        targets = {"stdio": mcpStdioCommand(), "http": [url]}
        measures: dict[str, tuple[str, str, Callable[[], Awaitable[dict[str, Any]]]]] = {}
        expected = "result: " + TOOL_TEXT
        for transport, target in targets.items():
            raw = await SdkClient.spawn(
                setup, f"mcpraw-{transport}", [sys.executable, MCP_RAW, transport, *target]
            )
            if raw is None:
                raise RuntimeError(f"the minimal MCP client did not start ({transport})")
            drivers.append(raw)
            measures[f"mcp-{transport}"] = ("loop_mcp", transport, partial(raw.calls, count))
            agent = Target(ours.port, "/v1", LOOP_AGENTS[transport], KEY)
            measures[f"{OURS}-{transport}"] = (
                f"loop_{transport}",
                OURS,
                partial(
                    _withCpu, ours.ownCpu, partial(measureAgentRun, agent, count, expected, None)
                ),
            )
            for arm, (framework, python) in LOOP_FRAMEWORKS.items():
                if not os.path.exists(python):
                    print(f"bench: {arm} is not installed ({python}); no such arm", flush=True)
                    continue
                argv = [python, AGENT_LOOP, framework, loopBase, transport, *target]
                # Without PYTHONPATH: nothing of this project on their path.
                env = {k: v for k, v in setup.env.items() if k != "PYTHONPATH"}
                driver = await SdkClient.spawn(setup, f"loop-{arm}-{transport}", argv, env)
                if driver is None:
                    continue
                drivers.append(driver)
                measures[f"{arm}-{transport}"] = (
                    f"loop_{transport}",
                    arm,
                    partial(_withCpu, driver.cpu, partial(driver.calls, count)),
                )
        direct = Target(setup.upstreamPort, "/loop/v1", "m", KEY)
        measures["direct"] = (
            "loop_direct",
            DIRECT,
            lambda: measureDirectCalls(direct, loopSteps(direct), count),
        )
        # Warm-up: a round of every arm.
        for _, _, measure in measures.values():
            await measure()
        order: list[list[str]] = []
        for r in range(rounds):
            shuffled = random.sample(list(measures), len(measures))
            order.append(shuffled)
            for arm in shuffled:
                figure, key, measure = measures[arm]
                rec.add(figure, key, r, await measure())
        rec.put("loopOrder", order)
        rec.put("loopTurns", LOOP_TURNS)
        rec.put("loopVersions", frameworkVersions())
    finally:
        for driver in drivers:
            await driver.stop()
        for proc in reversed(procs):
            proc.stop()


def frameworkVersions() -> dict[str, str]:
    """
    The versions of the third-party frameworks of the agent-loop arms, from
    their venvs.
    """
    found: dict[str, str] = {}
    packages = {
        "openai-agents": ("openai-agents", "mcp"),
        "langgraph": ("langgraph", "langchain-openai", "langchain-mcp-adapters", "mcp"),
    }
    for arm, (_, python) in LOOP_FRAMEWORKS.items():
        if not os.path.exists(python):
            continue
        script = (
            "import importlib.metadata as m, sys\n"
            "print(' '.join(p + ' ' + m.version(p) for p in sys.argv[1:]))"
        )
        out = subprocess.run(
            [python, "-c", script, *packages[arm]], capture_output=True, text=True
        ).stdout.strip()
        found[arm] = out or "?"
    return found


#: The load client's nice value during the tool arms (see measureToolArms;
#: allowed as root, skipped otherwise).
CLIENT_NICE = -10


def _raisePriority(value: int) -> int | None:
    """
    Give this thread the nice C{value}; return it, or L{None} when not
    allowed (it then keeps its own).
    """
    if value == 0:
        return None
    try:
        os.setpriority(os.PRIO_PROCESS, 0, value)
    except OSError:
        return None
    return value


def _jsonOrNone(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


@attrs.define
class Window:
    """
    CPU seconds of the processes under test across a measured window.
    """

    procs: dict[str, Proc]
    started: dict[str, float] = attrs.field(factory=dict)
    clientStarted: float = 0.0

    def __enter__(self) -> Window:
        self.started = {name: proc.cpu() for name, proc in self.procs.items()}
        self.clientStarted = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def used(self, elapsed: float) -> dict[str, float]:
        used = {
            name: round((proc.cpu() - self.started[name]) / elapsed, 3)
            for name, proc in self.procs.items()
        }
        used["client"] = round((time.process_time() - self.clientStarted) / elapsed, 3)
        return used


async def measureRPS(
    target: Target, seconds: float, procs: dict[str, Proc], concurrency: int = 32
) -> dict[str, Any]:
    sampler = Sampler(target.port)
    with Window(procs) as window:
        elapsed = await sampler.run(target.chat(PING, False), concurrency, duration=seconds)
        cpu = window.used(elapsed)
    ok = len(sampler.results) - _checkCompletion(sampler.results, "echo: " + PING)
    return {
        "rps": round(ok / elapsed, 1),
        "bad": len(sampler.results) - ok + sampler.errors,
        "cpu": cpu,
    }


def _words(count: int) -> str:
    return " ".join(f"w{i}" for i in range(count))


async def measureTokens(
    target: Target, seconds: float, words: int, procs: dict[str, Proc], concurrency: int = 8
) -> dict[str, Any]:
    from ai_agent.testing import wordPieces

    text = _words(words)
    expected = wordPieces("echo: " + text)
    sampler = Sampler(target.port)
    with Window(procs) as window:
        elapsed = await sampler.run(target.chat(text, True), concurrency, duration=seconds)
        cpu = window.used(elapsed)
    intact = 0
    tokens = 0
    for result in sampler.results:
        check = checkStream(result.body)
        if result.status == 200 and check.intact(expected):
            intact += 1
            tokens += len(check.pieces)
    total = len(sampler.results) + sampler.errors
    return {
        "tokensPerSecond": round(tokens / elapsed, 1),
        "streams": total,
        "intact": intact,
        "cpu": cpu,
    }


async def measureCancel(target: Target, upstreamPort: int, count: int) -> dict[str, Any]:
    values: list[float] = []
    never = 0
    text = _words(300)
    closed = Target(upstreamPort, "", "")
    for i in range(count):
        tag = f"tag-{os.getpid()}-{i}-{random.randrange(10**9)}"
        connection = await Connection.open(target.port)
        token: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        pending = connection.send(target.chat(f"{tag} {text}", True), True, token)
        pending.add_done_callback(lambda f: f.exception())
        await asyncio.wait_for(token, 30)
        left = time.monotonic()
        connection.close()
        result = await request(upstreamPort, closed.get(f"/bench/closed?tag={tag}"), timeout=10)
        closedAt = json.loads(result.body)["closedAt"]
        if closedAt is None:
            never += 1
        else:
            values.append(_ms(closedAt - left))
    return {"ms": values, "never": never}


async def measureReject(setup: Setup, count: int) -> dict[str, Any]:
    """
    A server with 4 slots and a queue of 4, all taken by held streams:
    time each further request until its refusal.
    """
    proc = setup.startOurs("ours-reject", concurrency=4, queue=4)
    try:
        await waitReady(proc, "/v1/models", 30)
        hold = Target(proc.port, "/v1", "hold", KEY)
        holders: list[Connection] = []
        tokens: list[asyncio.Future[float]] = []
        for _ in range(8):
            connection = await Connection.open(proc.port)
            token: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            pending = connection.send(hold.chat(PING, True), True, token)
            pending.add_done_callback(lambda f: f.exception())
            holders.append(connection)
            tokens.append(token)
        await asyncio.wait_for(asyncio.gather(*tokens[:4]), 30)
        health = hold.get("/health")
        for _ in range(500):
            state = json.loads((await request(proc.port, health)).body)
            if state.get("queued") == 4:
                break
            await asyncio.sleep(0.01)
        raw = hold.chat(PING, False)
        sequential: list[float] = []
        statuses: dict[str, int] = {}
        retryAfter = 0
        for _ in range(count):
            result = await request(proc.port, raw)
            sequential.append(_ms(result.latency))
            statuses[str(result.status)] = statuses.get(str(result.status), 0) + 1
            retryAfter += "retry-after" in result.headers
        burst = await asyncio.gather(*(request(proc.port, raw) for _ in range(64)))
        for result in burst:
            statuses[str(result.status)] = statuses.get(str(result.status), 0) + 1
        for connection in holders:
            connection.close()
        return {
            "ms": sequential,
            "burstMs": [_ms(r.latency) for r in burst],
            "statuses": statuses,
            "retryAfter": retryAfter,
        }
    finally:
        proc.stop()


async def measureIdle(setup: Setup, levels: tuple[int, ...]) -> dict[str, Any]:
    """
    Streams held open by the upstream after one token: RSS per stream.
    """
    top = max(levels)
    proc = setup.startOurs("ours-idle", concurrency=top + 100, queue=0)
    holders: list[Connection] = []
    try:
        await waitReady(proc, "/v1/models", 30)
        hold = Target(proc.port, "/v1", "hold", KEY)
        sampler = Sampler(proc.port)
        await sampler.run(Target(proc.port, "/v1", "bench", KEY).chat(PING, True), 4, count=40)
        await asyncio.sleep(2)
        base = proc.rssKiB()
        raw = hold.chat(PING, True)
        out: dict[str, Any] = {"baseKiB": base, "levels": []}
        started = time.perf_counter()

        async def openOne() -> None:
            connection = await Connection.open(proc.port)
            token: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            pending = connection.send(raw, True, token)
            pending.add_done_callback(lambda f: f.exception())
            holders.append(connection)
            await asyncio.wait_for(token, 60)

        for level in sorted(levels):
            while len(holders) < level:
                # Below the server's listen backlog (Twisted's default, 50),
                # so that no SYN is dropped and retried a second later.
                batch = min(40, level - len(holders))
                await asyncio.gather(*(openOne() for _ in range(batch)))
            await asyncio.sleep(2)
            rss = proc.rssKiB()
            healthMs = []
            for _ in range(20):
                result = await request(proc.port, hold.get("/health"))
                healthMs.append(_ms(result.latency))
            out["levels"].append(
                {
                    "streams": level,
                    "rssKiB": rss,
                    "perStreamKiB": round((rss - base) / level, 2),
                    "openSeconds": round(time.perf_counter() - started, 2),
                    "healthP99Ms": round(percentile(healthMs, 99), 3),
                }
            )
        for connection in holders:
            connection.close()
        holders.clear()
        await asyncio.sleep(3)
        out["afterKiB"] = proc.rssKiB()
        return out
    finally:
        for connection in holders:
            connection.close()
        proc.stop()


#: The observability arms: metrics off, metrics on (the default), metrics
#: and tracing on (every span exported over OTLP/HTTP to the upstream's sink).
OBSERVE_ARMS = ("off", "metrics", "tracing")


async def measureObserve(
    setup: Setup, plan: Plan, upstream: Proc, rec: Recorder, rounds: int
) -> None:
    """
    The cost of observability: the same server with metrics off, metrics
    on, and tracing on too, measured in interleaved rounds (latency at
    concurrency 1, requests/s with the CPU per request).
    """
    sink = f"http://127.0.0.1:{setup.upstreamPort}"
    procs = {
        "off": setup.startOurs("obs-off", extra=("--no-metrics",)),
        "metrics": setup.startOurs("obs-metrics"),
        "tracing": setup.startOurs(
            "obs-tracing",
            env={"OTEL_EXPORTER_OTLP_ENDPOINT": sink, "OTEL_SERVICE_NAME": "ai-agent-bench"},
        ),
    }
    try:
        for proc in procs.values():
            await waitReady(proc, "/v1/models", 30)
            t = Target(proc.port, "/v1", "bench", KEY)
            await Sampler(proc.port).run(t.chat(PING, False), 8, count=plan.warmup * 4)
        for r in range(rounds):
            for arm in random.sample(list(OBSERVE_ARMS), len(OBSERVE_ARMS)):
                proc = procs[arm]
                t = Target(proc.port, "/v1", "bench", KEY)
                rec.add("observe_latency_c1", arm, r, await measureLatency(t, 1, plan.latency1))
                watch = {"server": proc, "upstream": upstream}
                rec.add("observe_rps", arm, r, await measureRPS(t, plan.seconds, watch))
    finally:
        for proc in procs.values():
            proc.stop()


async def coldStart(setup: Setup, kind: str, times: int) -> dict[str, Any]:
    seconds: list[float] = []
    rss: list[int] = []
    for _ in range(times):
        proc = setup.startOurs("ours-cold") if kind == OURS else setup.startLiteLLM()
        try:
            seconds.append(round(await waitReady(proc, "/v1/models", 180), 4))
            await asyncio.sleep(1)
            rss.append(proc.rssKiB())
        finally:
            proc.stop()
    return {"seconds": seconds, "idleRssKiB": rss}


# The run.


def environment() -> dict[str, Any]:
    def version(module: str) -> str:
        try:
            from importlib.metadata import version as v

            return v(module)
        except Exception:
            return "?"

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    cpu = "?"
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    litellm = "not installed"
    if os.path.exists(LITELLM):
        out = subprocess.run(
            [os.path.join(os.path.dirname(LITELLM), "pip"), "show", "litellm"],
            capture_output=True,
            text=True,
        ).stdout
        litellm = next(
            (line.split()[1] for line in out.splitlines() if line.startswith("Version:")), "?"
        )
    return {
        "commit": commit + ("+local changes" if dirty else ""),
        "python": platform.python_version(),
        "twisted": version("twisted"),
        "klein": version("klein"),
        "treq": version("treq"),
        "litellm": litellm,
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "loadavg": _read("/proc/loadavg").split()[:3],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


async def run(plan: Plan, useLiteLLM: bool, outDir: str, quick: bool) -> None:
    os.sched_setaffinity(0, {LOAD_CPU})
    rec = Recorder()
    began = time.perf_counter()
    rec.put("environment", environment())
    rec.put("plan", attrs.asdict(plan) | {"quick": quick})

    upstreamPort = freePort()
    env = dict(os.environ, PYTHONPATH=ROOT)
    upstream = spawn(
        "upstream",
        [sys.executable, "-m", "bench._upstream", "--port", str(upstreamPort)],
        str(LOAD_CPU),
        tempfile.gettempdir(),
        env,
        upstreamPort,
    )
    setup = Setup.create(upstreamPort)
    procs: list[Proc] = [upstream]
    print(f"bench: working directory {setup.directory}", flush=True)
    try:
        await waitReady(upstream, "/v1/models", 30)

        print("bench: cold start", flush=True)
        rec.put("coldStart", {OURS: await coldStart(setup, OURS, plan.coldStarts)})
        lite: Proc | None = None
        if useLiteLLM:
            rec.samples["coldStart"][LITE] = await coldStart(
                setup, LITE, max(1, plan.coldStarts // 3)
            )

        ours = setup.startOurs()
        procs.append(ours)
        # The same server on stock Twisted (--stock-twisted), measured in
        # the same rounds: what the speed layer buys, so a user can choose.
        stock = setup.startOurs("ours-stock", extra=("--stock-twisted",))
        procs.append(stock)
        await waitReady(ours, "/v1/models", 30)
        await waitReady(stock, "/v1/models", 30)
        if useLiteLLM:
            lite = setup.startLiteLLM()
            procs.append(lite)
            await waitReady(lite, "/v1/models", 180)
        await asyncio.sleep(2)
        rec.put("idleRss", {OURS: ours.rssKiB()} | ({LITE: lite.rssKiB()} if lite else {}))

        fast = targets(upstreamPort, ours, lite, "bench", stock)
        arms = list(fast)
        watched = {"server-" + OURS: ours, "server-" + STOCK: stock, "upstream": upstream}
        if lite is not None:
            watched["server-" + LITE] = lite

        print("bench: warm-up", flush=True)
        for arm in arms:
            await Sampler(fast[arm].port).run(fast[arm].chat(PING, False), 4, count=plan.warmup)
            await Sampler(fast[arm].port).run(fast[arm].chat(SHORT, True), 4, count=plan.warmup)
            await measureToolTrip(fast[arm], max(5, plan.warmup // 5))
        for server in (OURS, STOCK):
            t = fast[server]
            await Sampler(t.port).run(t.responses(SHORT, True), 4, count=plan.warmup)
            for api in ("responses", "messages", "a2a", "mcp"):
                await measureLatencyHeadend(t, api, plan.warmup)
            await measureTTFTMessages(t, plan.warmup)
            await measureTTFTA2A(t, plan.warmup)

        order: list[list[str]] = []
        for r in range(plan.rounds):
            print(f"bench: round {r + 1} of {plan.rounds}", flush=True)
            for figure, measure in (
                ("latency_c1", lambda t: measureLatency(t, 1, plan.latency1)),
                ("latency_c16", lambda t: measureLatency(t, 16, plan.latency16)),
                ("ttft_c1", lambda t: measureTTFT(t, plan.ttft)),
                ("tools_c1", lambda t: measureToolTrip(t, plan.toolTrips)),
                ("rps", lambda t: measureRPS(t, plan.seconds, watched)),
                ("tokens", lambda t: measureTokens(t, plan.seconds, plan.tokensWords, watched)),
            ):
                shuffled = random.sample(arms, len(arms))
                order.append([figure, *shuffled])
                for arm in shuffled:
                    rec.add(figure, arm, r, await measure(fast[arm]))
            # The other headends, on this server only (on the speed layer
            # and on stock Twisted), in a random order (the upstream speaks
            # Chat Completions: its figures are the baseline).
            headends: dict[str, Callable[[Target], Awaitable[dict[str, Any]]]] = {
                "ttft_responses_c1": lambda t: measureTTFTResponses(t, plan.ttft),
                "latency_responses_c1": lambda t: measureLatencyHeadend(
                    t, "responses", plan.latency1
                ),
                "latency_messages_c1": lambda t: measureLatencyHeadend(
                    t, "messages", plan.latency1
                ),
                "latency_mcp_c1": lambda t: measureLatencyHeadend(t, "mcp", plan.latency1),
                "ttft_messages_c1": lambda t: measureTTFTMessages(t, plan.ttft),
                "latency_a2a_c1": lambda t: measureLatencyHeadend(t, "a2a", plan.latency1),
                "ttft_a2a_c1": lambda t: measureTTFTA2A(t, plan.ttft),
            }
            pairs = [(figure, server) for figure in headends for server in (OURS, STOCK)]
            shuffled2 = random.sample(pairs, len(pairs))
            order.append(["headends", *(f"{figure}/{server}" for figure, server in shuffled2)])
            for figure, server in shuffled2:
                rec.add(figure, server, r, await headends[figure](fast[server]))
        rec.put("order", order)

        print("bench: cancellation", flush=True)
        slow = targets(upstreamPort, ours, lite, "slow", stock)
        for arm in arms:
            rec.add("cancel", arm, 0, await measureCancel(slow[arm], upstreamPort, plan.cancels))

        rec.put("idleRssAfterLoad", {OURS: ours.rssKiB()} | ({LITE: lite.rssKiB()} if lite else {}))
        if lite is not None:
            lite.stop()
            procs.remove(lite)
        stock.stop()
        procs.remove(stock)

        print("bench: workers 1 and 2", flush=True)
        two = setup.startOurs("ours-2", workers=2)
        procs.append(two)
        await waitReady(two, "/v1/models", 30)
        scaled = {"1": ours, "2": two}
        for proc in scaled.values():
            t = Target(proc.port, "/v1", "bench", KEY)
            await Sampler(proc.port).run(t.chat(PING, False), 8, count=200)
        for r in range(plan.rounds):
            for workers in random.sample(list(scaled), 2):
                proc = scaled[workers]
                t = Target(proc.port, "/v1", "bench", KEY)
                cpuWatch = {"server": proc, "upstream": upstream}
                rec.add("workers_rps", workers, r, await measureRPS(t, plan.seconds, cpuWatch, 64))
        two.stop()
        procs.remove(two)
        ours.stop()
        procs.remove(ours)

        print("bench: observability (metrics off, on, tracing on)", flush=True)
        await measureObserve(setup, plan, upstream, rec, plan.rounds)

        print("bench: tools inside a run (MCP over stdio and HTTP, a sub-agent)", flush=True)
        await measureToolArms(setup, plan, rec, plan.rounds)

        print("bench: the agent loop (this server, the OpenAI Agents SDK, LangGraph)", flush=True)
        await measureAgentLoop(setup, plan, rec, plan.rounds)

        print("bench: queue full", flush=True)
        rec.put("reject", await measureReject(setup, plan.rejects))

        print("bench: idle streams", flush=True)
        rec.put("idleStreams", await measureIdle(setup, plan.idleLevels))
    finally:
        for proc in reversed(procs):
            proc.stop()
    rec.put("elapsedSeconds", round(time.perf_counter() - began, 1))
    _report.write(rec.samples, outDir)
    shutil.rmtree(setup.directory, ignore_errors=True)
    print(f"bench: done in {rec.samples['elapsedSeconds']:.0f} s; see {outDir}/performance.md")


async def runOnly(
    plan: Plan,
    measure: Callable[[Setup, Proc, Recorder], Awaitable[None]],
    lines: Callable[[dict[str, Any]], list[str]],
) -> None:
    """
    One group of arms alone (the observability arms, or the tool arms):
    start the upstream, measure, print the group's figures (no report
    written).
    """
    os.sched_setaffinity(0, {LOAD_CPU})
    rec = Recorder()
    upstreamPort = freePort()
    env = dict(os.environ, PYTHONPATH=ROOT)
    upstream = spawn(
        "upstream",
        [sys.executable, "-m", "bench._upstream", "--port", str(upstreamPort)],
        str(LOAD_CPU),
        tempfile.gettempdir(),
        env,
        upstreamPort,
    )
    setup = Setup.create(upstreamPort)
    try:
        await waitReady(upstream, "/v1/models", 30)
        await measure(setup, upstream, rec)
    except BaseException:
        print(f"bench: failed; the logs are in {setup.directory}", flush=True)
        raise
    else:
        shutil.rmtree(setup.directory, ignore_errors=True)
    finally:
        upstream.stop()
    print("\n".join(lines(rec.samples)))


async def runObserveOnly(plan: Plan) -> None:
    """
    Only the observability arms; print their figures.
    """

    async def measure(setup: Setup, upstream: Proc, rec: Recorder) -> None:
        await measureObserve(setup, plan, upstream, rec, plan.rounds)

    await runOnly(plan, measure, _report.observeLines)


async def runToolsOnly(plan: Plan) -> None:
    """
    Only the tool arms; print their figures.
    """

    async def measure(setup: Setup, upstream: Proc, rec: Recorder) -> None:
        await measureToolArms(setup, plan, rec, plan.rounds)

    await runOnly(plan, measure, _report.toolLines)


async def runAgentLoopOnly(plan: Plan) -> None:
    """
    Only the agent-loop arms; print their figures.
    """

    async def measure(setup: Setup, upstream: Proc, rec: Recorder) -> None:
        await measureAgentLoop(setup, plan, rec, plan.rounds)

    await runOnly(plan, measure, _report.agentLoopLines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short run (validation only)")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM arm")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument(
        "--observe-only",
        action="store_true",
        help="measure only the cost of metrics and tracing; print it, write nothing",
    )
    parser.add_argument(
        "--tools-only",
        action="store_true",
        help="measure only the MCP and sub-agent arms; print them, write nothing",
    )
    parser.add_argument(
        "--agentloop-only",
        action="store_true",
        help="measure only the agent loop (this server against the SDKs); print it, write nothing",
    )
    parser.add_argument("--out", default=os.path.join(ROOT, "docs"), help="output directory")
    parser.add_argument(
        "--report-only",
        metavar="SAMPLES",
        help="rewrite the summary and plots from a samples file",
    )
    options = parser.parse_args(argv)
    if options.report_only:
        with open(options.report_only) as f:
            _report.write(json.load(f), options.out)
        return
    plan = QUICK if options.quick else FULL
    if options.rounds:
        plan = attrs.evolve(plan, rounds=options.rounds)
    if options.observe_only:
        asyncio.run(runObserveOnly(plan))
        return
    if options.tools_only:
        asyncio.run(runToolsOnly(plan))
        return
    if options.agentloop_only:
        asyncio.run(runAgentLoopOnly(plan))
        return
    useLiteLLM = not options.no_litellm and os.path.exists(LITELLM)
    if not options.no_litellm and not useLiteLLM:
        print("bench: LiteLLM is not installed (bench/.venv-litellm); running without it")
    asyncio.run(run(plan, useLiteLLM, options.out, options.quick))
