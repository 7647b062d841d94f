"""
MCP servers for the tests, and helpers to run them.

  - C{calc.py}: a small server written with the official MCP Python SDK,
    over stdio or Streamable HTTP.
  - C{@modelcontextprotocol/server-everything}: the reference server from
    npm, used when it is installed, either with the JavaScript client
    matrix (C{tests/js/node_modules}, installed by C{.ci/run}) or in
    C{node_modules} at the repository root (C{npm install --no-save
    @modelcontextprotocol/server-everything}).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CALC = os.path.join(HERE, "calc.py")
EVERYTHING_PLACES = (
    os.path.join(ROOT, "tests", "js", "node_modules", ".bin", "mcp-server-everything"),
    os.path.join(ROOT, "node_modules", ".bin", "mcp-server-everything"),
)


def calcEntry(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """
    A configuration entry (as in C{mcpServers}) for the calc server over
    stdio.
    """
    entry: dict[str, Any] = {"type": "stdio", "command": sys.executable, "args": [CALC, *args]}
    if env is not None:
        entry["env"] = env
    return entry


def everythingCommand() -> str | None:
    """
    The installed C{mcp-server-everything} script, or L{None} if it (or
    Node) is not there.
    """
    if shutil.which("node") is None:
        return None
    for place in EVERYTHING_PLACES:
        if os.access(place, os.X_OK):
            return place
    return None


EVERYTHING_MISSING = (
    "the npm package @modelcontextprotocol/server-everything is not installed (in"
    " tests/js/node_modules or node_modules at the repository root: npm install"
    " --no-save @modelcontextprotocol/server-everything), or Node is not on PATH"
)


class _ServerProcess(ProcessProtocol):
    def __init__(self) -> None:
        self.port: Deferred[int] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.out = b""
        self.err = b""

    def outReceived(self, data: bytes) -> None:
        self.out += data
        match = re.search(rb"PORT (\d+)\n", self.out)
        if match and not self.port.called:
            self.port.callback(int(match.group(1)))

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        if not self.port.called:
            tail = self.err[-2000:].decode("utf-8", "replace")
            self.port.errback(RuntimeError(f"the MCP test server exited:\n{tail}"))
        self.ended.callback(None)


async def startHttpCalc(testCase: TestCase, *args: str) -> str:
    """
    Run the calc server over Streamable HTTP on 127.0.0.1 (a free port) for
    the rest of the test; return its URL.
    """
    protocol = _ServerProcess()
    process: Any = reactor.spawnProcess(  # type: ignore[attr-defined]
        protocol,
        sys.executable,
        [sys.executable, CALC, "--http", *args],
        env=dict(os.environ),
    )

    async def stop() -> None:
        if not protocol.ended.called:
            process.signalProcess("KILL")
        await protocol.ended

    testCase.addCleanup(stop)
    port = await protocol.port.addTimeout(20, reactor)
    return f"http://127.0.0.1:{port}/mcp"


def httpClient(testCase: TestCase) -> HTTPClient:
    """
    An HTTP client with its own pool, closed when the test ends.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    testCase.addCleanup(pool.closeCachedConnections)
    return HTTPClient(Agent(reactor, pool=pool))


def captureLogs(testCase: TestCase) -> list[str]:
    """
    The text of every log event from now to the end of the test.
    """
    lines: list[str] = []

    def observe(event: Any) -> None:
        lines.append(formatEvent(event) or "")

    globalLogPublisher.addObserver(observe)
    testCase.addCleanup(globalLogPublisher.removeObserver, observe)
    return lines


def sleep(seconds: float) -> Deferred[None]:
    """
    Wait on the real reactor.
    """
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)  # type: ignore[arg-type]


async def waitFor(predicate: Any, timeout: float = 10.0, step: float = 0.02) -> None:
    """
    Poll C{predicate} until it is true; fail after C{timeout} seconds.
    """
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError(f"gave up after {timeout:g} s")
        await sleep(step)
        waited += step
