"""
The agent loop run by a third-party framework in its own process: the
baselines of the agent-loop arms (see C{measureAgentLoop} in
C{bench/_run.py}).

    python bench/_agentloop.py agents|langgraph BASE_URL stdio COMMAND [ARG...]
    python bench/_agentloop.py agents|langgraph BASE_URL http URL

C{agents}: the OpenAI Agents SDK (C{Agent} + C{Runner.run}, its Chat
Completions model, tracing off) with C{MCPServerStdio} or
C{MCPServerStreamableHttp}, the tool list cached.  C{langgraph}: LangGraph's
prebuilt ReAct agent (C{create_react_agent}) on C{langchain_openai.ChatOpenAI}
with the tools of one MCP session held open (C{langchain_mcp_adapters}'
C{load_mcp_tools} on C{MultiServerMCPClient.session}).  Each is used the way
its documentation shows, with its defaults (non-streamed model calls), no
retries.

The model is C{m} at C{BASE_URL} (the bench upstream's C{/loop/v1}, which
calls the offered tool five times, then answers C{"result: "} and the last
result).  After one warm-up run it prints C{READY}, then reads commands from
its standard input, one a line: a number N makes N runs one after the other
and prints one JSON line, C{{"ms": [per-run milliseconds], "bad": <runs not
answered exactly>}}.  An empty line or the end of input ends it; a framework
that cannot be imported prints C{UNAVAILABLE <reason>} instead of C{READY}.
It imports nothing of this project.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

TEXT = "hello mcp"
EXPECTED = "result: " + TEXT
#: Room for the five tool turns and the answer, whatever each framework
#: counts as a turn.
MAX_TURNS = 20

RunOnce = Callable[[], Awaitable[str]]


@asynccontextmanager
async def agentsSdk(baseUrl: str, transport: str, target: list[str]) -> AsyncIterator[RunOnce]:
    """
    The OpenAI Agents SDK's loop.
    """
    from agents.mcp import MCPServerStdio, MCPServerStreamableHttp
    from openai import AsyncOpenAI

    from agents import Agent, OpenAIChatCompletionsModel, Runner, set_tracing_disabled

    set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=baseUrl, api_key="dummy", max_retries=0)
    server: Any
    if transport == "stdio":
        server = MCPServerStdio(
            params={"command": target[0], "args": target[1:]},
            cache_tools_list=True,
            client_session_timeout_seconds=30,
        )
    else:
        server = MCPServerStreamableHttp(
            params={"url": target[0]}, cache_tools_list=True, client_session_timeout_seconds=30
        )
    async with server:
        agent = Agent(
            name="bench",
            instructions="Use the tool.",
            model=OpenAIChatCompletionsModel(model="m", openai_client=client),
            mcp_servers=[server],
        )

        async def once() -> str:
            result = await Runner.run(agent, TEXT, max_turns=MAX_TURNS)
            return str(result.final_output)

        yield once


@asynccontextmanager
async def langGraph(baseUrl: str, transport: str, target: list[str]) -> AsyncIterator[RunOnce]:
    """
    LangGraph's prebuilt ReAct agent.
    """
    from langchain_mcp_adapters.client import MultiServerMCPClient
    from langchain_mcp_adapters.tools import load_mcp_tools
    from langchain_openai import ChatOpenAI
    from langgraph.prebuilt import create_react_agent
    from pydantic import SecretStr

    connection: dict[str, Any]
    if transport == "stdio":
        connection = {"transport": "stdio", "command": target[0], "args": target[1:]}
    else:
        connection = {"transport": "streamable_http", "url": target[0]}
    client = MultiServerMCPClient({"echo": connection})
    async with client.session("echo") as session:
        tools = await load_mcp_tools(session)
        model = ChatOpenAI(model="m", base_url=baseUrl, api_key=SecretStr("dummy"), max_retries=0)
        agent = create_react_agent(model, tools)

        async def once() -> str:
            state = await agent.ainvoke(
                {"messages": [{"role": "user", "content": TEXT}]},
                {"recursion_limit": 2 * MAX_TURNS},
            )
            content = state["messages"][-1].content
            if isinstance(content, list):
                content = "".join(
                    part.get("text", "") if isinstance(part, dict) else str(part)
                    for part in content
                )
            return str(content)

        yield once


FRAMEWORKS = {"agents": agentsSdk, "langgraph": langGraph}


async def runs(once: RunOnce, count: int) -> dict[str, Any]:
    """
    C{count} runs, timed one by one.
    """
    values: list[float] = []
    bad = 0
    for _ in range(count):
        started = time.perf_counter()
        try:
            answer = await once()
        except Exception as e:
            print(f"run failed: {e!r}", file=sys.stderr, flush=True)
            answer = None
        elapsed = time.perf_counter() - started
        if answer != EXPECTED:
            bad += 1
            continue
        values.append(round(elapsed * 1000, 4))
    return {"ms": values, "bad": bad}


async def serve(framework: str, baseUrl: str, transport: str, target: list[str]) -> None:
    loop = asyncio.get_running_loop()
    async with AsyncExitStack() as stack:
        try:
            once = await stack.enter_async_context(
                FRAMEWORKS[framework](baseUrl, transport, target)
            )
        except ImportError as e:
            print(f"UNAVAILABLE {e}", flush=True)
            return
        warm = await runs(once, 1)
        if warm["bad"]:
            print("UNAVAILABLE the warm-up run did not answer exactly", flush=True)
            return
        print("READY", flush=True)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line.strip():
                return
            print(json.dumps(await runs(once, int(line))), flush=True)


def main() -> None:
    if len(sys.argv) < 5 or sys.argv[1] not in FRAMEWORKS or sys.argv[3] not in ("stdio", "http"):
        sys.exit(__doc__)
    asyncio.run(serve(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]))


if __name__ == "__main__":
    main()
