"""
The MCP SDK's own client calling the benchmark's MCP server directly: the
baseline of the MCP tool-call arm.

    python bench/_mcpclient.py stdio COMMAND [ARG...]
    python bench/_mcpclient.py http URL

Opens one session (C{mcp.ClientSession} over C{stdio_client} or
C{streamable_http_client}), initializes it, prints C{READY}, then reads
commands from its standard input, one a line: a number N makes N calls of
C{echo} one after the other on that session and prints one JSON line,
C{{"ms": [per-call milliseconds], "bad": <calls not answered exactly>}}.
An empty line or the end of input ends the session.  It imports nothing
of this project.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

TEXT = "hello mcp"


@asynccontextmanager
async def _transport(kind: str, args: list[str]) -> AsyncIterator[Any]:
    if kind == "stdio":
        params = StdioServerParameters(command=args[0], args=args[1:])
        async with stdio_client(params) as streams:
            yield streams
    else:
        async with streamable_http_client(args[0]) as streams:
            yield streams


def _text(result: Any) -> str | None:
    if getattr(result, "is_error", False) or getattr(result, "isError", False):
        return None
    parts = [getattr(item, "text", None) for item in result.content]
    texts = [part for part in parts if isinstance(part, str)]
    if not texts or len(texts) != len(parts):
        return None
    return "".join(texts)


async def calls(session: ClientSession, count: int) -> dict[str, Any]:
    """
    C{count} calls of C{echo}, timed one by one.
    """
    values: list[float] = []
    bad = 0
    for _ in range(count):
        started = time.perf_counter()
        result = await session.call_tool("echo", {"text": TEXT})
        elapsed = time.perf_counter() - started
        if _text(result) != TEXT:
            bad += 1
            continue
        values.append(round(elapsed * 1000, 4))
    return {"ms": values, "bad": bad}


async def serve(kind: str, args: list[str]) -> None:
    async with _transport(kind, args) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        await session.list_tools()
        print("READY", flush=True)
        while True:
            line = await anyio.to_thread.run_sync(sys.stdin.readline)
            if not line.strip():
                return
            print(json.dumps(await calls(session, int(line))), flush=True)


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] not in ("stdio", "http"):
        sys.exit(__doc__)
    anyio.run(serve, sys.argv[1], sys.argv[2:])


if __name__ == "__main__":
    main()
