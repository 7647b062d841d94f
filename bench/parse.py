"""
How long a request body holds the reactor, for every API and the worst
shapes within the body limit (issue 29: no parse holds it more than 20 ms).

Starts the benchmark's fake upstream and this server with a reactor probe
(C{bench/_probed.py}: a C{LoopingCall} every millisecond recording each
longer gap between its calls), then, for each API (Chat Completions,
Responses, Messages, count_tokens, MCP C{tools/call}, A2A JSON-RPC) and each
shape, sends one body of about the body limit on its own connection and
reports the longest gap of the reactor while it was sent, parsed, answered
(and, for the valid prompt, run), the best and the worst of C{--rounds}
rounds, beside the idle machine's worst gap over a window as long.  Then,
in this process, the CPU time of the API's parser on the same body (to
its answer or its refusal): a figure that does not depend on the load.

    python -m bench.parse [--rounds 3] [--limit BYTES] [--api chat ...]
        [--shape numbers ...] [--extra ARG ...]

The shapes: C{numbers} (C{[0,0,...]}), C{strings} (C{["","",...]}),
C{nested} (arrays 60 deep, side by side), C{keys} (one object of many
members), C{items} (the API's own list: content parts, input items,
content blocks, A2A parts; MCP: the arguments' members), C{string} (one
string as long as the body), C{escapes} (one string of C{\\u00e9} escapes),
C{integers} (integers of 4,000 digits) and C{prompt} (a valid request whose
first message is as long as the body, then run: the upstream request, the
run store, the answer).

A development tool: wall-clock gaps on a shared machine are noisy; read
them beside the idle figure and the load printed with the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from typing import Any, Callable

import attrs

import bench._upstream
from bench._run import KEY, Proc, Setup, freePort, spawn, waitReady

API_NAMES = ("chat", "responses", "messages", "count_tokens", "mcp", "a2a")
SHAPES = (
    "numbers",
    "strings",
    "nested",
    "keys",
    "items",
    "string",
    "escapes",
    "integers",
    "prompt",
)
ANTHROPIC_VERSION = "2023-06-01"
#: Where the shape goes in an envelope.
_HOLE = '"@@HOLE@@"'


def _repeat(unit: bytes, size: int, open_: bytes = b"[", close: bytes = b"]") -> bytes:
    """
    C{open_ unit,unit,... close}, about C{size} bytes.
    """
    count = max(1, (size - 2) // (len(unit) + 1))
    return open_ + b",".join([unit] * count) + close


def _nested(size: int) -> bytes:
    deep = b"[" * 60 + b"0" + b"]" * 60
    return _repeat(deep, size)


def _keys(size: int) -> bytes:
    members, used, index = [], 2, 0
    while True:
        member = b'"k%d":0' % index
        if used + len(member) + 1 > size:
            break
        members.append(member)
        used += len(member) + 1
        index += 1
    return b"{" + b",".join(members) + b"}"


def _string(size: int) -> bytes:
    return b'"' + b"a" * (size - 2) + b'"'


def _escapes(size: int) -> bytes:
    return b'"' + b"\\u00e9" * ((size - 2) // 6) + b'"'


def _integers(size: int) -> bytes:
    return _repeat(b"7" * 4000, size)


FILLERS: dict[str, Callable[[int], bytes]] = {
    "numbers": lambda size: _repeat(b"0", size),
    "strings": lambda size: _repeat(b'""', size),
    "nested": _nested,
    "keys": _keys,
    "string": _string,
    "escapes": _escapes,
    "integers": _integers,
}


def _words(size: int) -> str:
    word = "lorem "
    return (word * (size // len(word) + 1))[:size]


def _envelope(api: str, model: str, prompt: str = "hi") -> tuple[str, dict[str, Any]]:
    """
    The path and a valid body of C{api} whose only user text is
    C{prompt}, with an ignored member C{"x"} holding the hole.
    """
    hole: Any = "@@HOLE@@"
    if api == "chat":
        return "/v1/chat/completions", {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "x": hole,
        }
    if api == "responses":
        return "/v1/responses", {"model": model, "input": prompt, "x": hole}
    if api in ("messages", "count_tokens"):
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "x": hole,
        }
        if api == "messages":
            body["max_tokens"] = 64
            return "/v1/messages", body
        return "/v1/messages/count_tokens", body
    if api == "mcp":
        return "/mcp", {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": model, "arguments": {"prompt": prompt}},
            "x": hole,
        }
    if api == "a2a":
        return f"/a2a/{model}", {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "SendMessage",
            "params": {
                "message": {"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": prompt}]}
            },
            "x": hole,
        }
    raise ValueError(api)


def _items(api: str, model: str, size: int) -> tuple[str, bytes]:
    """
    A body of C{api} with many of its own list's entries.
    """
    if api == "chat":
        path, body = _envelope(api, model)
        body["messages"][0]["content"] = "@@ITEMS@@"
        unit = b'{"type":"text","text":"a"}'
    elif api == "responses":
        path, body = _envelope(api, model)
        body["input"] = "@@ITEMS@@"
        unit = b'{"role":"user","content":"a"}'
    elif api in ("messages", "count_tokens"):
        path, body = _envelope(api, model)
        body["messages"][0]["content"] = "@@ITEMS@@"
        unit = b'{"type":"text","text":"a"}'
    elif api == "mcp":
        path, body = _envelope(api, model)
        body["params"]["arguments"] = "@@ITEMS@@"
        text = json.dumps(body).replace('"x": "@@HOLE@@"', '"y": 0')
        head, tail = text.encode().split(b'"@@ITEMS@@"')
        filler = _keys(size - len(head) - len(tail) - 64)
        return path, head + filler[:-1] + b',"prompt":"hi"}' + tail
    else:
        path, body = _envelope(api, model)
        body["params"]["message"]["parts"] = "@@ITEMS@@"
        unit = b'{"text":"a"}'
    text = json.dumps(body).replace('"x": "@@HOLE@@"', '"y": 0')
    head, tail = text.encode().split(b'"@@ITEMS@@"')
    return path, head + _repeat(unit, size - len(head) - len(tail) - 64) + tail


def build(api: str, shape: str, model: str, limit: int) -> tuple[str, bytes]:
    """
    The path and body of C{api} in C{shape}, at most C{limit} bytes.
    """
    if shape == "items":
        return _items(api, model, limit)
    if shape == "prompt":
        # The answer echoes the last user message: keep it short where the
        # API lets the long text be an earlier message.
        size = limit - 4096
        if api in ("chat", "messages", "count_tokens"):
            path, body = _envelope(api, model)
            body["messages"] = [
                {"role": "user", "content": _words(size)},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "hi"},
            ]
        elif api == "responses":
            path, body = _envelope(api, model)
            body["input"] = [
                {"role": "user", "content": _words(size)},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "hi"},
            ]
        else:
            # MCP's prompt and A2A's message are the one user text, echoed
            # by the upstream word by word: half the limit each way, in
            # words of 64 KiB (64 frames, not 700,000).
            word = "x" * 65535 + " "
            path, body = _envelope(api, model, word * (size // 2 // len(word)))
        del body["x"]
        return path, json.dumps(body).encode()
    path, body = _envelope(api, model)
    head, tail = json.dumps(body).encode().split(_HOLE.encode())
    filler = FILLERS[shape](limit - len(head) - len(tail) - 64)
    return path, head + filler + tail


def _headers(api: str, port: int, path: str, size: int) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        f"Content-Length: {size}",
        "Connection: close",
    ]
    if api in ("messages", "count_tokens"):
        lines += [f"x-api-key: {KEY}", f"anthropic-version: {ANTHROPIC_VERSION}"]
    else:
        lines.append(f"Authorization: Bearer {KEY}")
    if api == "mcp":
        lines += [
            "Accept: application/json",
            "MCP-Protocol-Version: 2026-07-28",
            "Mcp-Method: tools/call",
            "Mcp-Name: bench",
        ]
    if api == "a2a":
        lines.append("A2A-Version: 1.0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def send(port: int, api: str, path: str, body: bytes) -> tuple[int, bytes]:
    """
    Send one request on its own connection; its status and body.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(_headers(api, port, path, len(body)) + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(-1), 120)
    finally:
        writer.close()
    head, _, rest = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    if b"transfer-encoding: chunked" in head.lower():
        rest = _dechunk(rest)
    return status, rest


def _dechunk(data: bytes) -> bytes:
    out = []
    while data:
        size, _, data = data.partition(b"\r\n")
        length = int(size.split(b";")[0] or b"0", 16)
        if not length:
            break
        out.append(data[:length])
        data = data[length + 2 :]
    return b"".join(out)


def gaps(path: str, start: float, end: float) -> tuple[float, float, float]:
    """
    The longest gap (ms) recorded in C{path} that overlaps C{[start, end]},
    the most CPU time (ms) the server used during one gap, and the most the
    reactor's thread used during one.
    """
    worst = worstCPU = worstOwn = 0.0
    with open(path) as f:
        for line in f:
            at, gap, cpu, own = line.split()
            stop, length = float(at), float(gap)
            if stop >= start and stop - length / 1000 <= end:
                worst = max(worst, length)
                worstCPU = max(worstCPU, float(cpu))
                worstOwn = max(worstOwn, float(own))
    return worst, worstCPU, worstOwn


def parserCPU(api: str, body: bytes) -> tuple[float, str]:
    """
    The CPU time (ms) of C{api}'s parser on C{body} in this process, and
    what it ended with (C{ok} or the refusal's code).
    """
    from ai_agent.errors import AgentError
    from ai_agent.headends._mcpcore import ProtocolError, parseMessage
    from ai_agent.headends._request import loadBody, parseChatRequest
    from ai_agent.headends.anthropic import parseCountTokensRequest, parseMessagesRequest
    from ai_agent.headends.responses import parseResponsesRequest

    parsers: dict[str, Callable[[bytes], Any]] = {
        "chat": parseChatRequest,
        "responses": parseResponsesRequest,
        "messages": parseMessagesRequest,
        "count_tokens": parseCountTokensRequest,
        "mcp": parseMessage,
        "a2a": loadBody,
    }
    started = time.thread_time()
    try:
        parsers[api](body)
        outcome = "ok"
    except AgentError as error:
        outcome = error.code or "400"
    except ProtocolError as error:
        outcome = f"JSON-RPC {error.code}"
    return (time.thread_time() - started) * 1000, outcome


def _code(status: int, answer: bytes) -> str:
    try:
        data = json.loads(answer)
    except ValueError:
        return str(status)
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return f"{status} {error.get('code') or error.get('type') or ''}".strip()
    result = data.get("result") if isinstance(data, dict) else None
    if isinstance(result, dict) and result.get("isError"):
        return f"{status} tool error"
    return str(status)


async def measure(options: argparse.Namespace) -> None:
    upstreamPort = freePort()
    upstream = spawn(
        "upstream",
        [sys.executable, bench._upstream.__file__, "--port", str(upstreamPort)],
        "0-1",
        "/tmp",
        dict(os.environ),
        upstreamPort,
    )
    setup = Setup.create(upstreamPort)
    probe = os.path.join(tempfile.mkdtemp(prefix="ai-agent-probe-"), "gaps")
    port = freePort()
    argv = [
        sys.executable,
        "-m",
        "bench._probed",
        "--agent",
        "bench.ai",
        "--openai-completions",
        str(port),
        "--max-body-size",
        str(options.limit),
        *options.extra,
    ]
    ours: Proc = spawn(
        "ours", argv, "0-1", setup.directory, {**setup.env, "AI_AGENT_PROBE": probe}, port
    )
    rows: list[Row] = []
    try:
        await waitReady(upstream, "/v1/models", 20)
        await waitReady(ours, "/v1/models", 20)
        idle: list[tuple[float, float, float]] = []
        for _ in range(options.rounds):
            start = time.monotonic()
            await asyncio.sleep(1.0)
            idle.append(gaps(probe, start, time.monotonic()))
        print(
            f"load {os.getloadavg()[0]:.1f}; idle, worst gap over 1 s:"
            f" {min(g[0] for g in idle):.1f}-{max(g[0] for g in idle):.1f} ms wall,"
            f" {max(g[1] for g in idle):.1f} ms CPU",
            flush=True,
        )
        for api in options.api:
            for shape in options.shape:
                path, body = build(api, shape, "bench", options.limit)
                held: list[tuple[float, float, float]] = []
                answer = ""
                for _ in range(options.rounds):
                    start = time.monotonic()
                    status, rest = await send(port, api, path, body)
                    # The probe's next tick closes the last gap.
                    await asyncio.sleep(0.05)
                    held.append(gaps(probe, start, time.monotonic()))
                    answer = _code(status, rest)
                    if options.verbose:
                        print(status, rest[:300])
                cpu, outcome = parserCPU(api, body)
                row = Row(api, shape, len(body), answer, held, cpu, outcome)
                rows.append(row)
                print(row.line(), flush=True)
    finally:
        ours.stop()
        upstream.stop()
    print()
    print(f"load {os.getloadavg()[0]:.1f} at the end")
    print(table(rows))


@attrs.frozen
class Row:
    """
    One API and shape: the body's size, the answer, the longest gap of each
    round (wall ms, the server's CPU ms within it, the reactor thread's),
    the parser's CPU time in this process and what it ended with.
    """

    api: str
    shape: str
    size: int
    answer: str
    held: list[tuple[float, float, float]]
    cpu: float
    outcome: str

    def line(self) -> str:
        wall = [g[0] for g in self.held]
        used = [g[1] for g in self.held]
        own = [g[2] for g in self.held]
        return (
            f"{self.api:13} {self.shape:9} {self.size / 2**20:5.2f} MiB  {self.answer:26.26}"
            f" gap {min(wall):6.1f}-{max(wall):6.1f} ms,"
            f" CPU in it {min(used):6.1f}-{max(used):6.1f}"
            f" (reactor {min(own):5.1f}-{max(own):5.1f})"
            f"  parser CPU {self.cpu:7.1f} ms ({self.outcome})"
        )


def table(rows: list[Row]) -> str:
    """
    The rows as a Markdown table.
    """
    lines = [
        "| API | shape | body | answer | longest gap, ms wall (best–worst)"
        " | server CPU in one gap, ms | reactor thread's | parser CPU, ms |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        wall = [g[0] for g in row.held]
        used = [g[1] for g in row.held]
        own = [g[2] for g in row.held]
        lines.append(
            f"| {row.api} | {row.shape} | {row.size / 2**20:.2f} MiB | {row.answer} |"
            f" {min(wall):.0f}–{max(wall):.0f} | {min(used):.0f}–{max(used):.0f} |"
            f" {min(own):.0f}–{max(own):.0f} | {row.cpu:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=8 * 1024 * 1024, help="the body limit")
    parser.add_argument("--api", nargs="*", default=list(API_NAMES), choices=API_NAMES)
    parser.add_argument("--shape", nargs="*", default=list(SHAPES), choices=SHAPES)
    parser.add_argument("--extra", nargs="*", default=[], help="more server arguments")
    parser.add_argument("--verbose", action="store_true", help="print each answer's start")
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
