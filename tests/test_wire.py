"""
Tests for L{ai_agent.providers._wire}: the lean HTTP/1.1 upstream client.

Parsing is pinned reactor-free, on a L{StringTransport}, with responses
fed a byte at a time as well as whole; the pool (reuse, the idle limit and
timeout, a stale connection replaced, cancellation, closing) against real
servers on 127.0.0.1: a raw socket server that answers with canned bytes
and counts connections, and a C{twisted.web} site for chunked request
bodies.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import attrs
from treq.client import HTTPClient
from twisted.internet import reactor as _reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import FileBodyProducer, ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from ai_agent._eager import EagerWrites
from ai_agent.providers._wire import (
    MAX_HEAD,
    BytesProducer,
    WireAgent,
    WireProtocolError,
    WireResponse,
    _WireProtocol,
)
from ai_agent.runtime import CachingEndpointFactory

reactor: Any = _reactor


class BodyCollector(Protocol):
    """
    Keeps a response body and how it ended.
    """

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.ended: Deferred[tuple[Failure]] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.ended.callback((reason,))

    @property
    def body(self) -> bytes:
        return b"".join(self.data)


def feed(raw: bytes, oneByteAtATime: bool) -> tuple[_WireProtocol, StringTransport, list[Any]]:
    """
    Send a request on a protocol over a L{StringTransport} and feed it
    C{raw} as the response; return the protocol, the transport and the
    request Deferred's outcome (a list, filled when it fires).
    """
    agent = WireAgent(Clock(), CachingEndpointFactory(Clock(), 1.0))
    protocol = _WireProtocol(agent, (b"http", b"h", 80))
    transport = StringTransport()
    protocol.makeConnection(transport)
    outcome: list[Any] = []
    protocol.send(b"POST", b"POST / HTTP/1.1\r\nHost: h\r\n\r\n", b"", None, False, None).addBoth(
        outcome.append
    )
    if oneByteAtATime:
        for i in range(len(raw)):
            protocol.dataReceived(raw[i : i + 1])
    else:
        protocol.dataReceived(raw)
    return protocol, transport, outcome


class ParsingTests(SynchronousTestCase):
    """
    The response parser, on a memory transport.
    """

    def deliver(self, raw: bytes, oneByteAtATime: bool) -> tuple[WireResponse, BodyCollector]:
        protocol, transport, outcome = feed(raw, oneByteAtATime)
        self.assertEqual(len(outcome), 1, "the response Deferred did not fire")
        response = outcome[0]
        self.assertIsInstance(response, WireResponse)
        collector = BodyCollector()
        response.deliverBody(collector)
        return response, collector

    def test_chunkedBody(self) -> None:
        """
        A chunked body (with a chunk extension and a trailer) arrives
        intact and ends with C{ResponseDone}, whether the bytes come whole
        or one at a time; the status, phrase and headers are parsed.
        """
        raw = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        for oneByteAtATime in (False, True):
            response, collector = self.deliver(raw, oneByteAtATime)
            self.assertEqual((response.code, response.phrase), (200, b"OK"))
            self.assertEqual(
                response.headers.getRawHeaders(b"content-type"), [b"text/event-stream"]
            )
            self.assertEqual(collector.body, b"hello 0123456789")
            self.successResultOf(collector.ended)[0].trap(ResponseDone)

    def test_contentLength(self) -> None:
        """
        A body with a C{Content-Length} ends after that many bytes, and its
        length is on the response.
        """
        raw = b"HTTP/1.1 404 Not Found\r\nContent-Length: 7\r\n\r\nmissing"
        for oneByteAtATime in (False, True):
            response, collector = self.deliver(raw, oneByteAtATime)
            self.assertEqual((response.code, response.length), (404, 7))
            self.assertEqual(collector.body, b"missing")
            self.successResultOf(collector.ended)[0].trap(ResponseDone)

    def test_interimResponseSkipped(self) -> None:
        """
        A C{100 Continue} before the response is skipped.
        """
        raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
        response, collector = self.deliver(raw, True)
        self.assertEqual(response.code, 201)
        self.assertEqual(collector.body, b"ok")

    def test_noBodyStatus(self) -> None:
        """
        A 204 has no body even with a C{Content-Length}: it ends at once
        and the connection goes back to the pool.
        """
        protocol, transport, outcome = feed(
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", False
        )
        collector = BodyCollector()
        outcome[0].deliverBody(collector)
        self.assertEqual(collector.body, b"")
        self.successResultOf(collector.ended)[0].trap(ResponseDone)
        self.assertEqual(protocol._agent.idleConnections, 1)

    def test_untilClose(self) -> None:
        """
        A body without a length runs until the connection closes and ends
        with C{PotentialDataLoss}; the connection is not pooled.
        """
        protocol, transport, outcome = feed(b"HTTP/1.1 200 OK\r\n\r\nsome bytes", False)
        collector = BodyCollector()
        outcome[0].deliverBody(collector)
        protocol.connectionLost(Failure(ResponseDone()))
        self.assertEqual(collector.body, b"some bytes")
        self.assertEqual(protocol._agent.idleConnections, 0)
        ended = self.successResultOf(collector.ended)[0]
        self.assertTrue(ended.check(PotentialDataLoss, ResponseFailed))

    def test_cutBody(self) -> None:
        """
        A chunked body cut by the connection closing ends with
        C{ResponseFailed}, not C{ResponseDone}.
        """
        protocol, transport, outcome = feed(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", False
        )
        collector = BodyCollector()
        outcome[0].deliverBody(collector)
        from twisted.internet.error import ConnectionDone

        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(collector.body, b"hel")
        self.successResultOf(collector.ended)[0].trap(ResponseFailed)

    def test_connectionClose(self) -> None:
        """
        A response saying C{Connection: close}, or an HTTP/1.0 one without
        keep-alive, is not pooled: the connection is closed after it.
        """
        for raw in (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ):
            protocol, transport, outcome = feed(raw, False)
            outcome[0].deliverBody(BodyCollector())
            self.assertTrue(transport.disconnecting)
            self.assertEqual(protocol._agent.idleConnections, 0)

    def test_keepAlivePooled(self) -> None:
        """
        A complete HTTP/1.1 response leaves the connection open and idle
        in the pool.
        """
        protocol, transport, outcome = feed(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False
        )
        outcome[0].deliverBody(BodyCollector())
        self.assertFalse(transport.disconnecting)
        self.assertEqual(protocol._agent.idleConnections, 1)

    def test_invalidResponses(self) -> None:
        """
        A response that is not HTTP/1.1 fails the request with
        C{ResponseFailed} around a L{WireProtocolError} naming the problem,
        and the connection is aborted.
        """
        cases = {
            b"SMTP ready\r\n\r\n": "status line",
            b"HTTP/1.1 2000 OK\r\n\r\n": "status code",
            b"HTTP/1.1 200 OK\r\n bad: fold\r\n\r\n": "whitespace",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n": "header line",
            b"HTTP/1.1 200 OK\r\nbad\x00name: x\r\n\r\n": "header name",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n": "conflicting",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n": "Content-Length",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n": "chunked",
            b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD + b"\r\n\r\n": "longer than",
        }
        for raw, words in cases.items():
            protocol, transport, outcome = feed(raw, False)
            self.assertEqual(len(outcome), 1, raw[:40])
            failure = outcome[0]
            self.assertIsInstance(failure, Failure)
            failure.trap(ResponseFailed)
            inner = failure.value.reasons[0].value
            self.assertIsInstance(inner, WireProtocolError)
            self.assertIn(words, str(inner))
            self.assertTrue(transport.disconnecting or transport.disconnected)

    def test_invalidChunk(self) -> None:
        """
        A bad chunk size in the body ends the body with C{ResponseFailed}.
        """
        protocol, transport, outcome = feed(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", False
        )
        collector = BodyCollector()
        outcome[0].deliverBody(collector)
        protocol.dataReceived(b"-5\r\nhello\r\n")
        self.successResultOf(collector.ended)[0].trap(ResponseFailed)
        self.assertEqual(protocol._agent.idleConnections, 0)

    def test_bytesAfterResponse(self) -> None:
        """
        Bytes after the end of a response (nothing was asked) mean the
        connection is not reused.
        """
        protocol, transport, outcome = feed(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n", False
        )
        outcome[0].deliverBody(BodyCollector())
        self.assertEqual(protocol._agent.idleConnections, 0)
        self.assertTrue(transport.disconnecting)

    def test_pauseAndLateStop(self) -> None:
        """
        The body's transport pauses and resumes the connection; once the
        response has ended, stopping it does nothing to the (pooled)
        connection.
        """
        protocol, transport, outcome = feed(
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab", False
        )
        collector = BodyCollector()
        outcome[0].deliverBody(collector)
        bodyTransport: Any = collector.transport
        bodyTransport.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        bodyTransport.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        protocol.dataReceived(b"cd")
        self.assertEqual(collector.body, b"abcd")
        bodyTransport.stopProducing()
        self.assertFalse(transport.disconnecting)
        self.assertEqual(protocol._agent.idleConnections, 1)

    def test_stopAborts(self) -> None:
        """
        Stopping a body while it runs aborts the connection.
        """
        protocol, transport, outcome = feed(
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab", False
        )
        collector = BodyCollector()
        outcome[0].deliverBody(collector)
        collector.transport.stopProducing()  # type: ignore[union-attr]
        self.assertTrue(transport.disconnecting or transport.disconnected)
        self.assertEqual(protocol._agent.idleConnections, 0)

    def test_headerInjectionRefused(self) -> None:
        """
        A request header holding a line break is refused before anything
        is sent.
        """
        agent = WireAgent(Clock(), CachingEndpointFactory(Clock(), 1.0))
        headers = Headers()
        headers._rawHeaders[b"x-evil"] = [b"a\r\nInjected: yes"]  # type: ignore[attr-defined]
        failure = self.failureResultOf(
            agent.request(b"POST", b"http://127.0.0.1:9/v1", headers, BytesProducer(b"{}"))
        )
        failure.trap(ValueError)


@attrs.define
class CannedServer:
    """
    A raw TCP server on 127.0.0.1 answering each request (anything ending
    in a blank line, plus its C{Content-Length} body) with the next canned
    response, or closing the connection at the C{None} entries.

    @ivar connections: how many connections were accepted.
    @ivar closed: how many of them closed.
    """

    answers: list[bytes | None]
    connections: int = 0
    closed: int = 0
    requests: list[bytes] = attrs.field(factory=list)
    port: Any = None

    async def start(self) -> int:
        server = self

        class Answer(Protocol):
            buffer = b""

            def connectionMade(self) -> None:
                server.connections += 1

            def dataReceived(self, data: bytes) -> None:
                self.buffer += data
                while b"\r\n\r\n" in self.buffer:
                    head, _, rest = self.buffer.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    if len(rest) < length:
                        return
                    server.requests.append(head + b"\r\n\r\n" + rest[:length])
                    self.buffer = rest[length:]
                    answer = server.answers.pop(0) if server.answers else None
                    if answer is None:
                        self.transport.loseConnection()  # type: ignore[union-attr]
                        return
                    self.transport.write(answer)  # type: ignore[union-attr]

            def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
                server.closed += 1

        self.port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(Answer)
        )
        return int(self.port.getHost().port)


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


async def waitFor(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """
    Wait until C{condition()} holds; fail after C{timeout} seconds.
    """
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await deferLater(reactor, 0.01)
    raise AssertionError("the condition did not hold in time")


class PoolTests(TestCase):
    """
    The agent against real servers on 127.0.0.1.
    """

    async def serve(self, answers: list[bytes | None]) -> tuple[CannedServer, str]:
        server = CannedServer(answers)
        port = await server.start()
        self.addCleanup(server.port.stopListening)
        return server, f"http://127.0.0.1:{port}/v1/chat"

    def agent(self, **kwargs: Any) -> WireAgent:
        agent = WireAgent(reactor, CachingEndpointFactory(reactor, 5.0), **kwargs)
        self.addCleanup(agent.closeCachedConnections)
        return agent

    async def post(self, agent: WireAgent, url: str, body: bytes = b"{}") -> tuple[int, bytes]:
        response = await agent.request(
            b"POST", url.encode(), Headers({b"x-one": [b"1"]}), BytesProducer(body)
        )
        collector = BodyCollector()
        response.deliverBody(collector)
        (await collector.ended)[0].trap(ResponseDone)
        return response.code, collector.body

    async def test_reuse(self) -> None:
        """
        Requests one after the other share one connection; the request on
        the wire has the method, the origin-form path, C{Host}, the
        caller's headers, C{Content-Length} and the body.
        """
        server, url = await self.serve([OK, OK, OK])
        agent = self.agent()
        for _ in range(3):
            self.assertEqual(await self.post(agent, url, b'{"a":1}'), (200, b"{}"))
        self.assertEqual(server.connections, 1)
        (idle,) = [c for pool in agent._idle.values() for c in pool]
        self.assertTrue(idle.transport.getTcpNoDelay(), "Nagle is on for the upstream")
        first = server.requests[0]
        self.assertTrue(first.startswith(b"POST /v1/chat HTTP/1.1\r\nHost: 127.0.0.1:"))
        self.assertIn(b"\r\nx-one: 1\r\n", first.replace(b"X-One", b"x-one"))
        self.assertIn(b"\r\nContent-Length: 7\r\n", first)
        self.assertTrue(first.endswith(b'\r\n\r\n{"a":1}'))

    async def test_staleConnectionReplaced(self) -> None:
        """
        A pooled connection the server closes as the next request arrives
        (without answering) is replaced by a new one and the request is
        sent again, once.
        """
        server, url = await self.serve([OK, None, OK])
        agent = self.agent()
        self.assertEqual(await self.post(agent, url), (200, b"{}"))
        self.assertEqual(await self.post(agent, url), (200, b"{}"))
        self.assertEqual(server.connections, 2)
        self.assertEqual(len(server.requests), 3)

    async def test_cancelWhileResent(self) -> None:
        """
        Cancelling a request that was sent again on a new connection (its
        pooled one was stale) cancels the new attempt and closes that
        connection.
        """
        server, url = await self.serve([OK, None, b"HTTP/1.1 200 OK\r\n"])
        agent = self.agent()
        self.assertEqual(await self.post(agent, url), (200, b"{}"))
        waiting = agent.request(b"POST", url.encode(), None, BytesProducer(b"{}"))
        await waitFor(lambda: len(server.requests) == 3)
        self.assertEqual(server.connections, 2)
        waiting.cancel()
        with self.assertRaises(CancelledError):
            await waiting
        await waitFor(lambda: server.closed == 2)

    async def test_freshConnectionNotRetried(self) -> None:
        """
        A new connection closed before any response is not retried: the
        request fails with C{ResponseNeverReceived}.
        """
        server, url = await self.serve([None, OK])
        agent = self.agent()
        with self.assertRaises(ResponseNeverReceived):
            await self.post(agent, url)
        self.assertEqual(len(server.requests), 1)

    async def test_idleLimitAndTimeout(self) -> None:
        """
        Three requests at once open three connections; with at most two
        idle per host, one is closed when they end; the idle ones close
        after the idle timeout.
        """
        server, url = await self.serve([OK, OK, OK])
        agent = self.agent(maxIdlePerHost=2, idleTimeout=0.2)
        from twisted.internet.defer import gatherResults

        results = await gatherResults(
            [Deferred.fromCoroutine(self.post(agent, url)) for _ in range(3)]
        )
        self.assertEqual(results, [(200, b"{}")] * 3)
        self.assertEqual(server.connections, 3)
        self.assertEqual(agent.idleConnections, 2)
        await waitFor(lambda: server.closed == 1)
        await waitFor(lambda: server.closed == 3)
        self.assertEqual(agent.idleConnections, 0)

    async def test_cancel(self) -> None:
        """
        Cancelling a request waiting for its response fails it with
        C{CancelledError} and closes the connection.
        """
        server, url = await self.serve([b"HTTP/1.1 200 OK\r\n"])
        agent = self.agent()
        waiting = agent.request(b"POST", url.encode(), None, BytesProducer(b"{}"))
        await waitFor(lambda: len(server.requests) == 1)
        waiting.cancel()
        with self.assertRaises(CancelledError):
            await waiting
        await waitFor(lambda: server.closed == 1)
        self.assertEqual(agent.idleConnections, 0)

    async def test_closeCachedConnections(self) -> None:
        """
        Closing the pool closes its idle connections and fires when they
        are closed.
        """
        server, url = await self.serve([OK])
        agent = WireAgent(reactor, CachingEndpointFactory(reactor, 5.0))
        await self.post(agent, url)
        self.assertEqual(agent.idleConnections, 1)
        await agent.closeCachedConnections()
        self.assertEqual(agent.idleConnections, 0)
        await waitFor(lambda: server.closed == 1)

    async def test_connectFailure(self) -> None:
        """
        A refused connection fails the request with the endpoint's error.
        """
        from twisted.internet.error import ConnectError

        server, url = await self.serve([])
        await server.port.stopListening()
        agent = self.agent()
        with self.assertRaises(ConnectError):
            await agent.request(b"POST", url.encode(), None, BytesProducer(b"{}"))

    async def test_chunkedRequestBodyAndTreq(self) -> None:
        """
        Through treq (as MCP over HTTP uses it), a body of unknown length
        goes out chunked and a real C{twisted.web} server reads it whole;
        the JSON answer comes back through treq's collectors.
        """

        class Echo(Resource):
            isLeaf = True

            def render_POST(self, request: Request) -> bytes:
                assert request.content is not None
                body = request.content.read()
                request.setHeader(b"content-type", b"application/json")
                chunked = request.requestHeaders.getRawHeaders("transfer-encoding")
                return json.dumps({"got": body.decode(), "chunked": chunked}).encode()

        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(Echo()))
        self.addCleanup(port.stopListening)
        agent = self.agent()
        from io import BytesIO

        producer = FileBodyProducer(BytesIO(b"x" * 100_000))
        producer.length = UNKNOWN_LENGTH
        url = f"http://127.0.0.1:{port.getHost().port}/echo"
        response = await agent.request(b"POST", url.encode(), None, producer)
        collector = BodyCollector()
        response.deliverBody(collector)
        await collector.ended
        answer = json.loads(collector.body)
        self.assertEqual((len(answer["got"]), answer["chunked"]), (100_000, ["chunked"]))
        treq = HTTPClient(agent)
        response = await treq.post(url, json={"k": "v"})
        answer = await response.json()
        self.assertEqual(json.loads(answer["got"]), {"k": "v"})


class IdleTimerTests(SynchronousTestCase):
    """
    A pooled connection's idle timer, on a L{Clock}: one per connection,
    pushed back at each release.
    """

    def test_pushedBackNotRemade(self) -> None:
        """
        Reusing a pooled connection neither cancels its idle timer nor makes
        a new one at the next release: the same call is pushed back, so
        the connection closes C{idleTimeout} seconds after its last release.
        """
        clock = Clock()
        agent = WireAgent(clock, CachingEndpointFactory(clock, 1.0), idleTimeout=10.0)
        protocol = _WireProtocol(agent, (b"http", b"h", 80))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.send(b"POST", b"POST / HTTP/1.1\r\nHost: h\r\n\r\n", b"", None, False, None)
        protocol.dataReceived(OK)
        timer = protocol.idleTimer
        self.assertEqual((agent.idleConnections, clock.getDelayedCalls()), (1, [timer]))
        clock.advance(6)
        transport.clear()
        agent.request(b"POST", b"http://h/v1", Headers(), BytesProducer(b"{}"))
        self.assertTrue(transport.value().startswith(b"POST /v1 HTTP/1.1\r\n"))
        self.assertEqual(agent.idleConnections, 0)
        self.assertTrue(timer.active())
        protocol.dataReceived(OK)
        self.assertIs(protocol.idleTimer, timer)
        self.assertEqual((agent.idleConnections, clock.getDelayedCalls()), (1, [timer]))
        clock.advance(9.5)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.5)
        self.assertTrue(transport.disconnecting)
        self.assertEqual((agent.idleConnections, clock.getDelayedCalls()), (0, []))

    def test_firedWhileInUse(self) -> None:
        """
        The idle timer firing while its connection answers a request leaves
        the connection alone; its next release arms a new one.
        """
        clock = Clock()
        agent = WireAgent(clock, CachingEndpointFactory(clock, 1.0), idleTimeout=10.0)
        protocol = _WireProtocol(agent, (b"http", b"h", 80))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.send(b"POST", b"POST / HTTP/1.1\r\nHost: h\r\n\r\n", b"", None, False, None)
        protocol.dataReceived(OK)
        agent.request(b"POST", b"http://h/v1", Headers(), BytesProducer(b"{}"))
        clock.advance(30)
        self.assertFalse(transport.disconnecting)
        self.assertIsNone(protocol.idleTimer)
        protocol.dataReceived(OK)
        self.assertEqual(agent.idleConnections, 1)
        self.assertEqual([call.getTime() for call in clock.getDelayedCalls()], [40.0])
        clock.advance(10)
        self.assertTrue(transport.disconnecting)


class SendNowTests(TestCase):
    """
    L{EagerWrites} on real TCP connections on 127.0.0.1.
    """

    async def pair(self) -> tuple[Any, BodyCollector]:
        """
        A connected (client transport, server-side collector) pair.
        """
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        received = BodyCollector()
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: received)
        )
        self.addCleanup(port.stopListening)
        client = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), Protocol()
        )
        self.addCleanup(client.transport.abortConnection)
        return client.transport, received

    async def test_sentAtOnce(self) -> None:
        """
        With nothing queued, the bytes leave in the call: the transport
        keeps nothing and does not wait to be writable; through a plain
        C{ProtocolWrapper} as well.
        """
        from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

        transport, received = await self.pair()
        sendNow = EagerWrites().sendNow
        sendNow(transport, b"now")
        self.assertEqual((transport.dataBuffer, transport._tempDataLen), (b"", 0))
        self.assertNotIn(transport, reactor.getWriters())
        wrapper = ProtocolWrapper(WrappingFactory(Factory()), Protocol())
        wrapper.makeConnection(transport)
        sendNow(wrapper, b" and again")
        self.assertNotIn(transport, reactor.getWriters())
        await waitFor(lambda: received.body == b"now and again")

    async def test_orderKept(self) -> None:
        """
        Behind bytes already queued, the bytes are queued too, in order.
        """
        transport, received = await self.pair()
        transport.write(b"first ")
        EagerWrites().sendNow(transport, b"second")
        self.assertIn(transport, reactor.getWriters())
        await waitFor(lambda: received.body == b"first second")

    async def test_flushPending(self) -> None:
        """
        What was queued on a transport noted as written to in this turn
        leaves at L{EagerWrites.flushPending} of the same L{EagerWrites} (not
        another's), not on the reactor's next turn (through a plain
        C{ProtocolWrapper} as well); a transport that is closing is left to
        the reactor.
        """
        from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

        transport, received = await self.pair()
        wrapper = ProtocolWrapper(WrappingFactory(Factory()), Protocol())
        wrapper.makeConnection(transport)
        wrapper.write(b"queued")
        self.assertIn(transport, reactor.getWriters())
        writes = EagerWrites()
        writes.markPending(wrapper)
        writes.markPending(wrapper)
        EagerWrites().flushPending()
        # Another server's writes are its own: nothing of these was sent.
        self.assertIn(transport, reactor.getWriters())
        writes.flushPending()
        self.assertNotIn(transport, reactor.getWriters())
        self.assertEqual((transport.dataBuffer, transport._tempDataLen), (b"", 0))
        await waitFor(lambda: received.body == b"queued")
        closing, _ = await self.pair()
        closing.write(b"last words")
        closing.loseConnection()
        writes.markPending(closing)
        writes.flushPending()
        self.assertIn(closing, reactor.getWriters())

    def test_otherTransports(self) -> None:
        """
        A transport that is not plain TCP gets an ordinary write.
        """
        transport = StringTransport()
        EagerWrites().sendNow(transport, b"data")
        self.assertEqual(transport.value(), b"data")


def _selfSignedLocalhost() -> tuple[bytes, bytes]:
    """
    A self-signed certificate for C{localhost} (subjectAltName) and its
    key, in PEM.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    keyPEM = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), keyPEM


class TLSTests(TestCase):
    """
    The agent over TLS (an https upstream), the certificate checked.
    """

    async def test_httpsReuse(self) -> None:
        """
        Two requests to an https server verified against its certificate
        (as a trust root) get their answers on one TLS connection; a server
        whose certificate is not trusted is refused.
        """
        from twisted.internet import ssl
        from twisted.internet.endpoints import SSL4ServerEndpoint
        from twisted.web.client import BrowserLikePolicyForHTTPS

        certPEM, keyPEM = _selfSignedLocalhost()
        server = ssl.PrivateCertificate.loadPEM(certPEM + keyPEM)
        connections: list[int] = []

        class Answer(Resource):
            isLeaf = True

            def render_POST(self, request: Request) -> bytes:
                assert request.content is not None
                connections.append(id(request.channel))
                return b"tls:" + request.content.read()

        port = await SSL4ServerEndpoint(reactor, 0, server.options(), interface="127.0.0.1").listen(
            Site(Answer())
        )
        self.addCleanup(port.stopListening)
        url = f"https://localhost:{port.getHost().port}/v1".encode()
        trusted = CachingEndpointFactory(
            reactor, 5.0, BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate.loadPEM(certPEM))
        )
        agent = WireAgent(reactor, trusted)
        self.addCleanup(agent.closeCachedConnections)
        for text in (b"one", b"two"):
            response = await agent.request(b"POST", url, None, BytesProducer(text))
            collector = BodyCollector()
            response.deliverBody(collector)
            (await collector.ended)[0].trap(ResponseDone)
            self.assertEqual((response.code, collector.body), (200, b"tls:" + text))
        self.assertEqual(len(set(connections)), 1)
        (idle,) = [c for pool in agent._idle.values() for c in pool]
        self.assertTrue(idle.transport.transport.getTcpNoDelay(), "Nagle is on under TLS")
        untrusting = WireAgent(reactor, CachingEndpointFactory(reactor, 5.0))
        self.addCleanup(untrusting.closeCachedConnections)
        with self.assertRaises(ResponseNeverReceived):
            await untrusting.request(b"POST", url, None, BytesProducer(b"x"))


class CycleTests(TestCase):
    """
    An upstream call leaves no reference cycle behind.
    """

    async def test_callFreedByReferenceCounting(self) -> None:
        """
        Once a provider call's answer is in, the call, its response and
        the response's body objects are freed by reference counting: none
        of them is left for the cyclic garbage collector.
        """
        import gc
        import weakref

        from ai_agent.providers import ChatMessage, LLMRequest, OpenAIProvider
        from ai_agent.testing import startFakeUpstream

        upstream = await startFakeUpstream(reactor)
        self.addCleanup(upstream.stop)
        agent = WireAgent(reactor, CachingEndpointFactory(reactor, 5.0))
        self.addCleanup(agent.closeCachedConnections)
        from ai_agent.speed import UpstreamHTTPClient

        provider = OpenAIProvider("up", upstream.baseUrl, UpstreamHTTPClient(agent), reactor)

        class Sink:
            def content(self, text: str) -> None:
                pass

            def reasoning(self, text: str) -> None:
                pass

        for stream in (True, False):
            request = LLMRequest(model="m", messages=(ChatMessage("user", "hello"),), stream=stream)
            call = provider.newCall(request, Sink())
            answer = await call.start()
            self.assertEqual(answer.content, "echo: hello")
            watched = [weakref.ref(call), weakref.ref(call.result)]
            # Resumed from inside the call's own stack: let it unwind.
            await deferLater(reactor, 0)
            gc.disable()
            try:
                del call
                self.assertEqual([ref() for ref in watched], [None, None])
            finally:
                gc.enable()

    async def test_requestsLeaveNoCycles(self) -> None:
        """
        A request through the server (non-streamed and streamed, on Chat
        Completions) leaves none of its objects in reference cycles: they
        are freed as the request ends, and the cyclic garbage collector
        finds nothing of this package to collect.
        """
        import gc

        from twisted.web.client import Agent, HTTPConnectionPool

        from tests._harness import startServer

        server = await startServer(self)
        treq = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        body = {"model": "agent", "messages": [{"role": "user", "content": "hello"}]}
        url = server.baseUrl + "/chat/completions"
        for stream in (False, True, False, True):
            response = await treq.post(url, json={**body, "stream": stream})
            self.assertEqual(response.code, 200)
            self.assertIn(b"hello", await response.content())
        await deferLater(reactor, 0.05)
        gc.collect()
        gc.disable()
        try:
            for stream in (False, True):
                response = await treq.post(url, json={**body, "stream": stream})
                self.assertIn(b"hello", await response.content())
            await deferLater(reactor, 0.05)
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            ours = sorted(
                {
                    type(o).__qualname__
                    for o in gc.garbage
                    if type(o).__module__.startswith("ai_agent")
                }
            )
            self.assertEqual(ours, [])
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
