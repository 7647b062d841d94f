"""
The benchmark's MCP server, written with the official MCP Python SDK
(C{mcp.server.mcpserver.MCPServer}, FastMCP in the SDK's first version):
one tool, C{echo(text) -> text}.

    python bench/_mcpserver.py            # over stdio
    python bench/_mcpserver.py --http     # Streamable HTTP at /mcp

With C{--http} it serves on 127.0.0.1 (uvicorn, one process), on a port the
system picks, and prints C{PORT <n>} once it listens.  It imports nothing
of this project, so it runs from its path with any Python that has C{mcp}.
"""

from __future__ import annotations

import argparse
import socket
import sys

from mcp.server.mcpserver import MCPServer


def build() -> MCPServer:
    """
    The server and its one tool.
    """
    server = MCPServer("bench", instructions="An echo for the benchmark.")

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    return server


async def serveHttp(server: MCPServer) -> None:
    """
    Serve Streamable HTTP on a port the system picks; print it.
    """
    import uvicorn

    # IPPROTO_TCP named, as uvicorn's own bind does through getaddrinfo:
    # asyncio sets TCP_NODELAY only on sockets whose protocol says TCP, and
    # without it the answer's event, written after its headers, waits for
    # the client's delayed ACK (about 40 ms per call).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    app = server.streamable_http_app()
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    sys.stdout.write(f"PORT {sock.getsockname()[1]}\n")
    sys.stdout.flush()
    await uvicorn.Server(config).serve(sockets=[sock])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python bench/_mcpserver.py")
    parser.add_argument("--http", action="store_true", help="serve Streamable HTTP at /mcp")
    options = parser.parse_args()
    server = build()
    if options.http:
        import anyio

        anyio.run(serveHttp, server)
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()
