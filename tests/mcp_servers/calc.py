"""
A small MCP server for the tests, written with the official MCP Python SDK
(C{mcp.server.mcpserver.MCPServer}).

    python tests/mcp_servers/calc.py [--http [--json]] [--marker DIR]
                                     [--page-size N] [--many N] [--logs]

Over stdio by default.  With C{--http} it serves Streamable HTTP at C{/mcp}
on 127.0.0.1, on a port the system picks, and prints C{PORT <n>} on its
standard output once it listens; its answers are event streams, or JSON
bodies with C{--json}.

Tools: C{add}, C{fail} (always an error result), C{sleep} (writes
C{sleeping} into the marker directory when it starts, and
C{cancelled} into the marker directory when its call is cancelled),
C{crash} (the process exits), C{env} (reads an environment variable),
C{header} (a header of the call's HTTP request),
C{big} (a long text), C{picture} (an image and a text), C{weather}
(structured content only), C{log} (writes to stderr), and with
C{--many N} that many C{noop_<i>} tools, with C{--logs} C{lines} (a log of
numbered lines).  With C{--page-size N}, C{tools/list}
answers in pages of N tools.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any

import anyio
import mcp_types as types
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.utilities.types import Image

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


class PagedServer(MCPServer):
    """
    An L{MCPServer} whose C{tools/list} answers in pages.
    """

    pageSize: int | None = None

    async def _handle_list_tools(self, ctx: Any, params: Any) -> types.ListToolsResult:
        tools = await self.list_tools()
        if not self.pageSize:
            return types.ListToolsResult(tools=tools)
        cursor = getattr(params, "cursor", None) if params is not None else None
        start = int(cursor) if cursor else 0
        end = start + self.pageSize
        nextCursor = str(end) if end < len(tools) else None
        return types.ListToolsResult(tools=tools[start:end], next_cursor=nextCursor)


def build(marker: str | None, many: int, logs: bool = False) -> PagedServer:
    """
    The server and its tools.
    """
    server = PagedServer("calc", instructions="Arithmetic for tests.")

    @server.tool()
    def add(a: int, b: int) -> str:
        """Add two integers."""
        return str(a + b)

    @server.tool()
    def fail(message: str) -> str:
        """Always fails with the given message."""
        raise ToolError(message)

    @server.tool()
    async def sleep(seconds: float) -> str:
        """Sleep, then say so."""
        if marker is not None:
            with open(os.path.join(marker, "sleeping"), "w") as f:
                f.write("sleeping")
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            if marker is not None:
                with open(os.path.join(marker, "cancelled"), "w") as f:
                    f.write("cancelled")
            raise
        return f"slept {seconds:g} s"

    @server.tool()
    def crash() -> str:
        """Exit the server process at once."""
        sys.stderr.write("calc: crashing on request\n")
        sys.stderr.flush()
        os._exit(3)

    @server.tool()
    def env(name: str) -> str:
        """The value of an environment variable, or (unset)."""
        return os.environ.get(name, "(unset)")

    @server.tool()
    def big(size: int) -> str:
        """A text of `size` characters."""
        return "x" * size

    @server.tool(structured_output=False)
    def picture() -> list[Any]:
        """A tiny image with a caption."""
        return ["a red dot", Image(data=PNG, format="png")]

    @server.tool(structured_output=False)
    def weather(city: str) -> types.CallToolResult:
        """Structured weather, without text content."""
        return types.CallToolResult(content=[], structured_content={"city": city, "celsius": 21})

    @server.tool()
    def header(name: str, ctx: Context) -> str:
        """The value of a header of this call's HTTP request, or (none)."""
        request = ctx.request_context.request
        headers = getattr(request, "headers", None)
        return "(none)" if headers is None else headers.get(name, "(none)")

    @server.tool()
    def log(text: str) -> str:
        """Write a line to stderr."""
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
        return "logged"

    if logs:

        @server.tool()
        def lines(count: int) -> str:
            """A log of `count` numbered lines; every 1000th is an ERROR line."""
            return "\n".join(
                f"{i:07d} level={'ERROR' if i % 1000 == 0 else 'info'} request {i} served"
                for i in range(1, count + 1)
            )

    for index in range(many):

        def noop(index: int = index) -> str:
            return str(index)

        server.add_tool(noop, name=f"noop_{index}", description=f"No-op number {index}.")

    return server


async def serveHttp(server: MCPServer, jsonResponse: bool) -> None:
    """
    Serve Streamable HTTP on a port the system picks; print it.
    """
    import uvicorn

    # IPPROTO_TCP named, so that asyncio turns Nagle off on its connections.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    app = server.streamable_http_app(json_response=jsonResponse)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    uvicornServer = uvicorn.Server(config)
    sys.stdout.write(f"PORT {sock.getsockname()[1]}\n")
    sys.stdout.flush()
    await uvicornServer.serve(sockets=[sock])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", action="store_true")
    parser.add_argument("--json", action="store_true", help="HTTP: answer with JSON, not SSE")
    parser.add_argument("--marker")
    parser.add_argument("--page-size", type=int)
    parser.add_argument("--many", type=int, default=0)
    parser.add_argument("--logs", action="store_true", help="offer the 'lines' tool")
    options = parser.parse_args()
    server = build(options.marker, options.many, options.logs)
    server.pageSize = options.page_size
    if options.http:
        anyio.run(serveHttp, server, options.json)
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()
