"""
Helpers for the hostile-input tests of issue 11: an upstream of the test's
own that answers whatever bytes a test scripts, a raw-socket exchange, the
server as a subprocess, and a process's resident memory.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections import deque
from typing import Any, Callable

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IProcessTransport
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests._process import childEnvironment, command

#: What a scripted upstream does with one request: given the request's raw
#: bytes and the connection, write an answer (or not).
Answer = Callable[[bytes, "_UpstreamConnection"], None]


def jsonAnswer(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Answer:
    """
    Answer one request with C{body} as JSON and close the connection.
    """
    data = body if isinstance(body, bytes) else json.dumps(body).encode()

    def answer(request: bytes, connection: _UpstreamConnection) -> None:
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        connection.transport.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + data
        )
        connection.transport.loseConnection()

    return answer


def sseAnswer(events: list[Any]) -> Answer:
    """
    Answer one request with C{events} as a Server-Sent Events stream, then
    C{[DONE]}, and close.
    """

    def answer(request: bytes, connection: _UpstreamConnection) -> None:
        body = b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in events)
        connection.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
            + body
            + b"data: [DONE]\n\n"
        )
        connection.transport.loseConnection()

    return answer


class _UpstreamConnection(Protocol):
    def __init__(self, upstream: ScriptedUpstream) -> None:
        self.upstream = upstream
        self.buffer = b""
        self.answered = False
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if self.answered:
            return
        head, sep, rest = self.buffer.partition(b"\r\n\r\n")
        if not sep:
            return
        match = re.search(rb"(?i)content-length:\s*(\d+)", head)
        if match is not None and len(rest) < int(match.group(1)):
            return
        self.answered = True
        self.upstream.requests.append(self.buffer)
        answer = self.upstream.answers.popleft() if self.upstream.answers else self.upstream.default
        answer(self.buffer, self)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.upstream.open.discard(self)
        self.lost.callback(None)


@attrs.define
class ScriptedUpstream:
    """
    An HTTP server on 127.0.0.1 answering each request with the next
    scripted L{Answer} (then C{default}), one request per connection.
    """

    answers: deque[Answer] = attrs.field(factory=deque)
    default: Answer = attrs.field(default=jsonAnswer({"error": "no answer scripted"}, 500))
    requests: list[bytes] = attrs.field(factory=list)
    open: set[_UpstreamConnection] = attrs.field(factory=set)
    port: IListeningPort | None = None

    @property
    def baseUrl(self) -> str:
        assert self.port is not None
        return f"http://127.0.0.1:{self.port.getHost().port}/v1"

    def start(self, testCase: TestCase) -> ScriptedUpstream:
        upstream = self

        class _Factory(Factory):
            def buildProtocol(self, addr: Any) -> _UpstreamConnection:
                connection = _UpstreamConnection(upstream)
                upstream.open.add(connection)
                return connection

        self.port = reactor.listenTCP(0, _Factory(), interface="127.0.0.1")
        testCase.addCleanup(self._stop)
        return self

    def _stop(self) -> Deferred[None] | None:
        for connection in list(self.open):
            if connection.transport is not None:
                connection.transport.abortConnection()
        assert self.port is not None
        return self.port.stopListening()


def rawExchange(
    port: int, data: bytes, timeout: float = 5.0, readFor: float | None = None
) -> Deferred[bytes]:
    """
    Send C{data} on a fresh connection and read until the server closes it
    (or C{timeout} passes, or C{readFor} seconds after the first bytes);
    runs in a thread.
    """

    def exchange() -> bytes:
        deadline = time.monotonic() + timeout
        received = b""
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            try:
                s.sendall(data)
            except OSError:
                pass
            firstAt: float | None = None
            while time.monotonic() < deadline:
                if readFor is not None and firstAt is not None:
                    if time.monotonic() > firstAt + readFor:
                        break
                s.settimeout(max(0.05, min(0.5, deadline - time.monotonic())))
                try:
                    chunk = s.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                received += chunk
                if firstAt is None:
                    firstAt = time.monotonic()
        return received

    return deferToThread(exchange)


def residentBytes(pid: int) -> int:
    """
    The resident set size of process C{pid}, from C{/proc}.
    """
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


#: The banner's address line (ai-agent logs no "starting on" line of Twisted's).
_LISTENING = re.compile(rb"API: http://127\.0\.0\.1:(\d+)/v1")


class _Child(ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.listening: Deferred[int] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self.output += data
        match = _LISTENING.search(self.output)
        if match is not None and not self.listening.called:
            self.listening.callback(int(match.group(1)))

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        if not self.listening.called:
            self.listening.errback(
                RuntimeError("the server exited:\n" + self.output.decode("utf-8", "replace"))
            )
        self.ended.callback(None)


@attrs.define
class ServerChild:
    """
    C{ai-agent} running as a subprocess on 127.0.0.1.
    """

    port: int
    pid: int
    directory: str
    _child: _Child
    _transport: IProcessTransport

    @property
    def output(self) -> bytes:
        return bytes(self._child.output)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss(self) -> int:
        return residentBytes(self.pid)

    def kill(self) -> Deferred[None] | None:
        if self._child.running:
            self._transport.signalProcess("KILL")
            return self._child.ended
        return None


async def startServerProcess(
    testCase: TestCase,
    config: dict[str, Any],
    agents: dict[str, str],
    args: tuple[str, ...] = (),
    files: dict[str, str] | None = None,
) -> ServerChild:
    """
    Write C{config} and C{agents} (name → text) to a fresh directory and run
    the server there; it is killed when the test ends.
    """
    directory = os.path.abspath(testCase.mktemp())
    os.makedirs(os.path.join(directory, "home"))
    with open(os.path.join(directory, ".ai-agent.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    for name, text in (files or {}).items():
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            f.write(text)
    argv = [*command("ai-agent"), "--openai-completions", "tcp:0:interface=127.0.0.1", *args]
    for name, text in agents.items():
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            f.write(text)
        argv += ["--agent", name]
    child = _Child()
    transport = reactor.spawnProcess(
        child,
        argv[0],
        argv,
        env=childEnvironment(HOME=os.path.join(directory, "home")),
        path=directory,
    )
    server = ServerChild(0, transport.pid or 0, directory, child, transport)
    testCase.addCleanup(server.kill)
    server.port = await child.listening
    return server


__all__ = [
    "ScriptedUpstream",
    "ServerChild",
    "jsonAnswer",
    "rawExchange",
    "residentBytes",
    "sseAnswer",
    "startServerProcess",
]


async def waitUntil(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """
    Poll C{condition} every 20 ms until it holds; fail after C{timeout}
    seconds.
    """
    from twisted.internet.task import deferLater

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await deferLater(reactor, 0.02, lambda: None)


async def pause(seconds: float) -> None:
    """
    Let the reactor run for C{seconds}.
    """
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)


@attrs.define
class FloodAnswer:
    """
    An answer streaming C{total} bytes of content chunks (or, without
    C{content}, chunks that carry nothing) as fast as the
    connection takes them (a pull producer: it writes only when the socket
    wants more), then C{[DONE]}.  L{sent} counts what the socket accepted;
    L{closed} fires when the server closes the connection.
    """

    total: int
    chunk: int = 64 * 1024
    content: bool = True
    sent: int = 0
    closed: Deferred[None] = attrs.field(factory=Deferred)

    def __call__(self, request: bytes, connection: _UpstreamConnection) -> None:
        from twisted.internet.interfaces import IPullProducer
        from zope.interface import implementer

        flood = self
        transport = connection.transport
        if self.content:
            delta = {"content": "x" * self.chunk}
        else:
            # Chunks of the right size with nothing in them.
            delta = {"padding": "x" * self.chunk}
        piece = b"data: " + json.dumps({"choices": [{"delta": delta}]}).encode() + b"\n\n"
        transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
        )

        @implementer(IPullProducer)
        class _Producer:
            def resumeProducing(self) -> None:
                if flood.sent >= flood.total:
                    transport.unregisterProducer()
                    transport.write(
                        b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n'
                        b"data: [DONE]\n\n"
                    )
                    transport.loseConnection()
                    return
                flood.sent += len(piece)
                transport.write(piece)

            def stopProducing(self) -> None:
                pass

        transport.registerProducer(_Producer(), False)
        connection.lost.addCallback(lambda _: self.closed.callback(None))
