"""
A minimal MCP client with no SDK: the MCP server's own time per call, the
baseline the agent-loop arms subtract (see C{measureAgentLoop} in
C{bench/_run.py}).

    python bench/_mcpraw.py stdio COMMAND [ARG...]
    python bench/_mcpraw.py http URL

Over stdio it writes each JSON-RPC request as one line to the server's
standard input and reads one line back; over Streamable HTTP it POSTs each
request on one keep-alive connection (C{http.client}) with the session's
C{mcp-session-id} and reads the answer (JSON, or the one SSE event).  It
initializes the session, prints C{READY}, then reads commands from its
standard input, one a line: a number N makes N calls of C{echo} one after
the other, each timed from its request's write to its answer's read, and
prints one JSON line, C{{"ms": [per-call milliseconds], "bad": <calls not
answered exactly>}}.  An empty line or the end of input ends it.  It
imports nothing of this project and nothing of the MCP SDK.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from typing import IO, Any
from urllib.parse import urlsplit

TEXT = "hello mcp"
VERSION = "2025-06-18"
INITIALIZE = {
    "protocolVersion": VERSION,
    "capabilities": {},
    "clientInfo": {"name": "bench-raw", "version": "0"},
}


def _call(number: int) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": number,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": TEXT}},
    }


class Stdio:
    """
    JSON-RPC lines over a child's standard input and output.
    """

    def __init__(self, argv: list[str]) -> None:
        self.child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.child.stdin is not None and self.child.stdout is not None
        self.stdin: IO[bytes] = self.child.stdin
        self.stdout: IO[bytes] = self.child.stdout

    def send(self, message: dict[str, Any], answered: bool = True) -> Any:
        self.stdin.write(json.dumps(message).encode() + b"\n")
        self.stdin.flush()
        if not answered:
            return None
        while True:
            answer = json.loads(self.stdout.readline())
            # Skip the server's own notifications (logging and the like).
            if "id" in answer:
                return answer

    def refresh(self) -> None:
        """
        Nothing to do: the pipe stays open.
        """

    def close(self) -> None:
        self.stdin.close()
        self.child.wait(10)


class Http:
    """
    JSON-RPC POSTs on one keep-alive connection.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.path = parts.path
        self.connection = http.client.HTTPConnection(parts.hostname or "", parts.port)
        self.headers = {
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
        }

    def send(self, message: dict[str, Any], answered: bool = True) -> Any:
        self.connection.request("POST", self.path, json.dumps(message), self.headers)
        response = self.connection.getresponse()
        body = response.read()
        session = response.getheader("mcp-session-id")
        if session:
            self.headers["mcp-session-id"] = session
            self.headers["mcp-protocol-version"] = VERSION
        if not answered:
            return None
        if body.startswith(b"{"):
            return json.loads(body)
        for line in body.splitlines():
            if line.startswith(b"data:"):
                return json.loads(line[5:])
        return None

    def refresh(self) -> None:
        """
        A new connection, opened by an untimed C{ping}: the server closes an
        idle one (uvicorn after 5 s), as it may have between two batches.
        """
        self.connection.close()
        self.send({"jsonrpc": "2.0", "id": 0, "method": "ping"})

    def close(self) -> None:
        self.connection.close()


def calls(transport: Stdio | Http, count: int, first: int) -> dict[str, Any]:
    """
    C{count} calls of C{echo}, timed one by one.
    """
    values: list[float] = []
    bad = 0
    transport.refresh()
    for number in range(first, first + count):
        started = time.perf_counter()
        answer = transport.send(_call(number))
        elapsed = time.perf_counter() - started
        content = (answer or {}).get("result", {}).get("content") or [{}]
        if content[0].get("text") != TEXT:
            bad += 1
            continue
        values.append(round(elapsed * 1000, 4))
    return {"ms": values, "bad": bad}


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] not in ("stdio", "http"):
        sys.exit(__doc__)
    transport = Stdio(sys.argv[2:]) if sys.argv[1] == "stdio" else Http(sys.argv[2])
    try:
        transport.send({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INITIALIZE})
        transport.send({"jsonrpc": "2.0", "method": "notifications/initialized"}, answered=False)
        print("READY", flush=True)
        number = 1
        for line in sys.stdin:
            if not line.strip():
                break
            count = int(line)
            print(json.dumps(calls(transport, count, number)), flush=True)
            number += count
    finally:
        transport.close()


if __name__ == "__main__":
    main()
