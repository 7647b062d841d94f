# -*- test-case-name: tests.test_wire -*-
"""
A lean HTTP/1.1 client for upstream calls, on pooled keep-alive
connections.

Twisted's C{Agent} with its C{HTTPConnectionPool} spends about 200 µs of CPU
and 0.4 ms of latency per proxied request here (its request and response
state machines, a producer and a consumer per body, a Deferred chain per
phase, the pool's bookkeeping).  An upstream call needs far less: write the
head and the body in one go, parse the response head in one pass, hand the
body on as it arrives (chunked frames joined per read), and put the
connection back when the body ends.  L{WireAgent} does that and nothing
more, behind the C{IAgent} interface, so that treq (MCP over HTTP) and the
providers' fast path (L{ai_agent.providers._http}) use the same pool.

What it does, in the terms of C{IAgent}:

  - C{request(method, uri, headers, bodyProducer)} fires with an
    C{IResponse} once the status line and headers are in (1xx interim
    responses skipped); the body goes to the protocol given to
    C{deliverBody}, whose transport pauses, resumes and stops (aborts) the
    connection; it ends with C{ResponseDone}, C{PotentialDataLoss} (a body
    delimited by the connection closing) or C{ResponseFailed};
  - bodies: a producer with a known length is sent with C{Content-Length},
    one with C{UNKNOWN_LENGTH} chunked; L{BytesProducer} is written at once
    with the head;
  - connections are reused per scheme, host and port, the most recently
    used first, at most C{maxIdlePerHost} kept idle, each closed after
    C{idleTimeout} seconds unused; a response that says C{Connection:
    close}, an HTTP/1.0 one without keep-alive, a body cut or stopped, or
    bytes after the end of the response close it instead;
  - a reused connection that the server closed before sending any byte of
    the response (it timed the idle connection out as the request went) is
    replaced by a new one and the request sent again, once, when its body
    can be sent again;
  - cancelling the Deferred before the response closes the connection
    (or stops connecting) and fails it with C{CancelledError};
  - limits: a response head of at most L{MAX_HEAD} bytes, a chunk-size or
    trailer line of at most L{MAX_LINE} bytes.

Not supported (not needed for API calls): pipelining, C{Expect:
100-continue}, upgrades, proxies.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, cast

from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail, succeed
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI, ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers, InvalidHeaderName, _nameEncoder
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from ai_agent._eager import EagerWrites, noDelay

MAX_HEAD = 64 * 1024
"""
The most bytes of a response's status line and headers (with any interim
1xx responses before it).
"""

MAX_LINE = 4096
"""
The most bytes of a chunk-size line or of one trailer line.
"""

log = Logger()


class WireProtocolError(Exception):
    """
    The upstream's response is not valid HTTP/1.1.
    """


@implementer(IBodyProducer)
class BytesProducer:
    """
    A request body already in memory: written with the head in one write.
    """

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


_HEAD_STATUS, _BODY, _IDLE, _CLOSED = "head", "body", "idle", "closed"
_BY_LENGTH, _CHUNKED, _UNTIL_CLOSE, _NONE = "length", "chunked", "close", "none"
_SIZE, _DATA, _DATA_END, _TRAILER = 0, 1, 2, 3
_NO_BODY_CODES = frozenset({204, 304})


class _BodyTransport:
    """
    The transport a response body's protocol sees: pause and resume the
    connection, or stop (abort) it; inert once that response has ended, so
    that a late call never touches a connection serving another request.
    """

    __slots__ = ("_response",)

    def __init__(self, response: WireResponse) -> None:
        self._response: WireResponse | None = response

    def pauseProducing(self) -> None:
        if self._response is not None:
            self._response._pause()

    def resumeProducing(self) -> None:
        if self._response is not None:
            self._response._resume()

    def stopProducing(self) -> None:
        if self._response is not None:
            self._response._stop()

    # What some body protocols look for on a transport.

    def loseConnection(self) -> None:
        self.stopProducing()

    def abortConnection(self) -> None:
        self.stopProducing()

    def getPeer(self) -> Any:
        connection = None if self._response is None else self._response._connection
        return None if connection is None else connection.transport.getPeer()

    def getHost(self) -> Any:
        connection = None if self._response is None else self._response._connection
        return None if connection is None else connection.transport.getHost()


class WireResponse:
    """
    An C{IResponse}: the status, the headers, and the body handed to the
    protocol given to L{deliverBody} as it arrives (buffered until then).
    """

    def __init__(
        self,
        connection: _WireProtocol,
        version: tuple[bytes, int, int],
        code: int,
        phrase: bytes,
        headers: Headers,
        length: int | object,
    ) -> None:
        self._connection: _WireProtocol | None = connection
        self.version = version
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.length = length
        self.request: Any = None
        self.previousResponse: Any = None
        self._transport = _BodyTransport(self)
        self._protocol: Protocol | None = None
        self._delivered = False
        self._pending: list[bytes] = []
        self._ended: Failure | None = None
        self._paused = False

    def deliverBody(self, protocol: Protocol) -> None:
        """
        Hand the body to C{protocol}: C{makeConnection}, then
        C{dataReceived} as it comes, then C{connectionLost} with the way
        it ended.
        """
        if self._delivered:
            raise RuntimeError("the body of this response was already delivered")
        self._delivered = True
        self._protocol = protocol
        protocol.makeConnection(self._transport)
        pending, self._pending = self._pending, []
        for data in pending:
            protocol.dataReceived(data)
        if self._ended is not None:
            ended, self._ended = self._ended, None
            self._transport._response = None
            self._protocol = None
            protocol.connectionLost(ended)

    def setPreviousResponse(self, response: Any) -> None:
        self.previousResponse = response

    # From the connection.

    def _data(self, data: bytes) -> None:
        protocol = self._protocol
        if protocol is None:
            self._pending.append(data)
        else:
            protocol.dataReceived(data)

    def _end(self, reason: Failure) -> None:
        self._connection = None
        protocol = self._protocol
        if protocol is None:
            self._ended = reason
        else:
            # The body is over: no cycle (response, its transport, the
            # body's protocol) is left for the garbage collector.
            self._transport._response = None
            self._protocol = None
            protocol.connectionLost(reason)

    # From the body's protocol.

    def _pause(self) -> None:
        connection = self._connection
        if connection is not None and not self._paused:
            self._paused = True
            connection.transport.pauseProducing()

    def _resume(self) -> None:
        connection = self._connection
        if connection is not None and self._paused:
            self._paused = False
            connection.transport.resumeProducing()

    def _stop(self) -> None:
        connection = self._connection
        if connection is not None:
            connection._abortBody()


class _WireProtocol(Protocol):
    """
    One connection to an upstream: one request at a time, then back to the
    pool.
    """

    transport: Any

    def __init__(self, agent: WireAgent, key: tuple[bytes, bytes, int]) -> None:
        self._agent = agent
        self.key = key
        self.state = _IDLE
        self.reused = False
        self.idleTimer: Any = None
        self._result: Deferred[WireResponse] | None = None
        self._method = b""
        self._buffer = b""
        self._received = False
        self._response: WireResponse | None = None
        self._framing = _NONE
        self._left = 0
        self._chunkState = _SIZE
        self._keepAlive = True
        self._retry: Callable[[], Deferred[WireResponse]] | None = None
        self._attempt: Deferred[WireResponse] | None = None
        self.lost: list[Deferred[None]] = []

    def connectionMade(self) -> None:
        # Requests go out whole (one write each), so Nagle's algorithm can
        # only delay them, behind the server's delayed acknowledgement.
        noDelay(self.transport)

    # Sending.

    def send(
        self,
        method: bytes,
        head: bytes,
        body: bytes | None,
        producer: IBodyProducer | None,
        chunked: bool,
        retry: Callable[[], Deferred[WireResponse]] | None,
    ) -> Deferred[WireResponse]:
        """
        Write a request (its head ready-made) and return the Deferred of
        its response.
        """
        self.state = _HEAD_STATUS
        self._method = method
        self._buffer = b""
        self._received = False
        self._response = None
        self._retry = retry if self.reused else None
        result: Deferred[WireResponse] = Deferred(self._cancel)
        self._result = result
        transport = self.transport
        assert transport is not None
        if body is not None:
            self._agent.writes.sendNow(transport, head + body if body else head)
        else:
            transport.write(head)
            if producer is not None:
                self._produce(producer, chunked)
        return result

    def _produce(self, producer: IBodyProducer, chunked: bool) -> None:
        transport = self.transport
        assert transport is not None
        if chunked:

            class _Chunks:
                def write(self, data: bytes) -> None:
                    if data:
                        transport.writeSequence([b"%x\r\n" % len(data), data, b"\r\n"])

            consumer: Any = _Chunks()
        else:
            consumer = transport

        def produced(_: object) -> None:
            if chunked and self.state in (_HEAD_STATUS, _BODY):
                transport.write(b"0\r\n\r\n")

        def failed(reason: Failure) -> None:
            log.failure("a request body could not be produced", reason)
            self._abortBody()

        started = producer.startProducing(consumer)
        started.addCallbacks(produced, failed)

    def _cancel(self, result: Deferred[WireResponse]) -> None:
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            # The request went again on a new connection: cancel that.
            attempt.cancel()
            return
        self._result = None
        self._retry = None
        self._keepAlive = False
        self.state = _CLOSED
        transport = self.transport
        if transport is not None:
            transport.abortConnection()
        # The Deferred now fails with CancelledError on its own.

    # Receiving.

    def dataReceived(self, data: bytes) -> None:
        self._received = True
        try:
            if self.state == _HEAD_STATUS:
                self._headData(data)
            elif self.state == _BODY:
                self._bodyData(data)
            elif self.state == _IDLE:
                raise WireProtocolError("the upstream sent bytes while no request was waiting")
        except WireProtocolError as e:
            self._protocolError(e)
        # What this read made the server write to its clients (stream
        # frames) leaves now rather than on the reactor's next turn.
        self._agent.writes.flushPending()

    def _headData(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    raise WireProtocolError(f"the response head is longer than {MAX_HEAD} bytes")
                self._buffer = buffer
                return
            if end > MAX_HEAD:
                raise WireProtocolError(f"the response head is longer than {MAX_HEAD} bytes")
            head, buffer = buffer[:end], buffer[end + 4 :]
            if self._parseHead(head):
                break
        self._buffer = b""
        if buffer:
            self._bodyData(buffer)
        elif self._framing == _NONE or (self._framing == _BY_LENGTH and self._left == 0):
            self._bodyDone()

    def _parseHead(self, head: bytes) -> bool:
        """
        Parse a status line and headers; return C{False} for an interim
        (1xx) response, which is skipped.
        """
        lines = head.split(b"\r\n")
        status = lines[0].split(b" ", 2)
        if len(status) < 2 or not status[0].startswith(b"HTTP/1."):
            raise WireProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        try:
            code = int(status[1])
        except ValueError:
            code = 0
        if not 100 <= code <= 999 or len(status[1]) != 3:
            raise WireProtocolError(f"not an HTTP status code: {status[1][:20]!r}")
        if 100 <= code < 200 and code != 101:
            return False
        minor = status[0][7:]
        version = (b"HTTP", 1, 1 if minor == b"1" else 0)
        headers = Headers()
        # Filled directly: the names canonicalised by Twisted's (cached)
        # encoder, the values as they came (a header line holds no line
        # break), without setRawHeaders' per-value checks.
        raw: dict[bytes, list[bytes]] = headers._rawHeaders
        previous: list[bytes] | None = None
        for line in lines[1:]:
            if line[:1] in (b" ", b"\t"):
                if previous is None:
                    raise WireProtocolError("a response header starts with whitespace")
                previous[-1] += b" " + line.strip()
                continue
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise WireProtocolError(f"not a header line: {line[:80]!r}")
            try:
                canonical = _nameEncoder.encode(name)
            except InvalidHeaderName:
                raise WireProtocolError(f"not a header name: {name[:80]!r}") from None
            previous = raw.get(canonical)
            if previous is None:
                previous = raw[canonical] = []
            previous.append(value.strip())
        connection = b",".join(raw.get(b"Connection", ())).lower()
        if version[2] == 1:
            self._keepAlive = b"close" not in connection
        else:
            self._keepAlive = b"keep-alive" in connection
        length: int | object = UNKNOWN_LENGTH
        codings = raw.get(b"Transfer-Encoding")
        if self._method == b"HEAD" or code in _NO_BODY_CODES:
            self._framing, length = _NONE, 0
        elif codings:
            if b",".join(codings).lower().rsplit(b",", 1)[-1].strip() != b"chunked":
                raise WireProtocolError("a transfer coding other than chunked comes last")
            self._framing, self._chunkState = _CHUNKED, _SIZE
        elif b"Content-Length" in raw:
            values = {v.strip() for value in raw[b"Content-Length"] for v in value.split(b",")}
            if len(values) != 1:
                raise WireProtocolError("conflicting Content-Length values")
            value = values.pop()
            if not value.isdigit():
                raise WireProtocolError(f"not a Content-Length: {value[:20]!r}")
            self._framing, self._left = _BY_LENGTH, int(value)
            length = self._left
        else:
            self._framing = _UNTIL_CLOSE
            self._keepAlive = False
        self.state = _BODY
        response = WireResponse(
            self, version, code, status[2] if len(status) > 2 else b"", headers, length
        )
        self._response = response
        result, self._result = self._result, None
        self._retry = None
        if result is not None:
            result.callback(response)
        return True

    def _bodyData(self, data: bytes) -> None:
        response = self._response
        if response is None:
            return
        framing = self._framing
        if framing == _CHUNKED:
            self._chunkedData(data)
        elif framing == _BY_LENGTH:
            left = self._left
            if len(data) < left:
                self._left = left - len(data)
                response._data(data)
            else:
                if left:
                    response._data(data[:left])
                self._left = 0
                if len(data) > left:
                    self._keepAlive = False
                self._bodyDone()
        elif framing == _UNTIL_CLOSE:
            response._data(data)
        else:
            self._keepAlive = False
            self._bodyDone()

    def _chunkedData(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        position, size = 0, len(buffer)
        pieces: list[bytes] = []
        state = self._chunkState
        done = False
        while position < size:
            if state == _DATA:
                take = min(self._left, size - position)
                pieces.append(buffer[position : position + take])
                position += take
                self._left -= take
                if self._left == 0:
                    state = _DATA_END
            elif state == _DATA_END:
                if size - position < 2:
                    break
                if buffer[position : position + 2] != b"\r\n":
                    raise WireProtocolError("a chunk is not followed by CRLF")
                position += 2
                state = _SIZE
            else:
                end = buffer.find(b"\r\n", position)
                if end < 0:
                    if size - position > MAX_LINE:
                        raise WireProtocolError("a chunk-size or trailer line is too long")
                    break
                if end - position > MAX_LINE:
                    raise WireProtocolError("a chunk-size or trailer line is too long")
                line = buffer[position:end]
                position = end + 2
                if state == _TRAILER:
                    if not line:
                        done = True
                        break
                    continue
                digits = line.split(b";", 1)[0].strip()
                try:
                    if not digits or digits[:1] in (b"+", b"-") or b"_" in digits:
                        raise ValueError(digits)
                    chunkSize = int(digits, 16)
                except ValueError:
                    raise WireProtocolError(f"not a chunk size: {line[:40]!r}") from None
                if chunkSize == 0:
                    state = _TRAILER
                else:
                    self._left = chunkSize
                    state = _DATA
        self._chunkState = state
        self._buffer = buffer[position:] if position < size else b""
        response = self._response
        if pieces and response is not None:
            response._data(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        if done:
            if self._buffer:
                self._keepAlive = False
            self._buffer = b""
            if self._response is response:
                self._bodyDone()

    def _bodyDone(self) -> None:
        """
        The response ended cleanly: put the connection back (or close it),
        then tell the body's protocol.
        """
        response = self._response
        self._response = None
        transport = self.transport
        if response is not None and response._paused and transport is not None:
            response._paused = False
            transport.resumeProducing()
        if self._keepAlive and transport is not None:
            self.state = _IDLE
            self._agent._release(self)
        else:
            self.state = _CLOSED
            if transport is not None:
                transport.loseConnection()
        if response is not None:
            response._end(Failure(ResponseDone()))

    def _abortBody(self) -> None:
        """
        Stop the response now: close the connection, which is not reused.
        """
        self._keepAlive = False
        if self.state != _CLOSED:
            self.state = _CLOSED
            transport = self.transport
            if transport is not None:
                transport.abortConnection()

    def _protocolError(self, error: WireProtocolError) -> None:
        log.info("upstream protocol error: {error}", error=str(error))
        self._keepAlive = False
        failure = Failure(error)
        result, self._result = self._result, None
        response, self._response = self._response, None
        self.state = _CLOSED
        transport = self.transport
        if transport is not None:
            transport.abortConnection()
        if result is not None:
            result.errback(ResponseFailed([failure]))
        elif response is not None:
            response._end(Failure(ResponseFailed([failure])))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        state, self.state = self.state, _CLOSED
        self._agent._forget(self)
        lost, self.lost = self.lost, []
        for waiter in lost:
            waiter.callback(None)
        result, self._result = self._result, None
        response, self._response = self._response, None
        retry, self._retry = self._retry, None
        if result is not None:
            if retry is not None and not self._received and state == _HEAD_STATUS:
                self._resend(retry, result)
                return
            result.errback(ResponseNeverReceived([reason]))
        elif response is not None:
            if self._framing == _UNTIL_CLOSE and reason.check(ConnectionDone):
                response._end(Failure(PotentialDataLoss()))
            else:
                if reason.check(ConnectionDone):
                    reason = Failure(ConnectionAborted("the connection closed mid-body"))
                response._end(Failure(ResponseFailed([reason])))

    def _resend(
        self, retry: Callable[[], Deferred[WireResponse]], result: Deferred[WireResponse]
    ) -> None:
        """
        Send the request again (on a new connection) and fire C{result}
        with its outcome; cancelling C{result} cancels the new attempt.
        """
        attempt = retry()
        self._attempt = attempt

        def done(outcome: Any) -> None:
            self._attempt = None
            if not result.called:
                if isinstance(outcome, Failure):
                    result.errback(outcome)
                else:
                    result.callback(outcome)
            elif isinstance(outcome, Failure):
                outcome.trap(CancelledError)

        attempt.addBoth(done)


class _WireFactory(Factory):
    noisy = False

    def __init__(self, agent: WireAgent, key: tuple[bytes, bytes, int]) -> None:
        self._agent = agent
        self._key = key

    def buildProtocol(self, addr: Any) -> _WireProtocol:
        return _WireProtocol(self._agent, self._key)


def _checkHeader(name: bytes, value: bytes) -> None:
    if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name or b":" in name:
        raise ValueError("a request header holds a line break or its name a colon")


_HOP_BY_HOP = frozenset(
    {b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive"}
)


@implementer(IAgent)
class WireAgent:
    """
    An C{IAgent} speaking HTTP/1.1 to upstreams over pooled keep-alive
    connections (see the module's docstring).

    @ivar endpoints: builds the connecting endpoint for a URI (TLS for
        C{https}, the connect timeout).
    @ivar maxIdlePerHost: the most idle connections kept per scheme, host
        and port.
    @ivar idleTimeout: seconds an idle connection is kept.
    @ivar writes: the eager sends it shares with the server's site (see
        L{ai_agent.speed}): requests are sent at once, and what the server
        wrote to its clients while handling an upstream read is flushed
        after it.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        endpoints: IAgentEndpointFactory,
        maxIdlePerHost: int = 16,
        idleTimeout: float = 120.0,
        writes: EagerWrites | None = None,
    ) -> None:
        self._reactor = reactor
        self.writes = EagerWrites() if writes is None else writes
        self._endpoints = endpoints
        self.maxIdlePerHost = maxIdlePerHost
        self.idleTimeout = idleTimeout
        self._idle: dict[tuple[bytes, bytes, int], list[_WireProtocol]] = {}
        self._targets: dict[bytes, tuple[tuple[bytes, bytes, int], bytes, URI]] = {}
        self._connections: set[_WireProtocol] = set()

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[Any]:
        """
        Send one request; see L{IAgent.request}: fires with a
        L{WireResponse}.
        """
        try:
            key, prefix, parsed = self._target(uri)
            head, body, chunked = self._head(method, prefix, parsed, headers, bodyProducer)
        except Exception as e:
            return fail(e)

        return self._send(key, parsed, method, head, body, bodyProducer, chunked)

    def post(
        self, uri: bytes, headers: Iterable[tuple[bytes, bytes]], body: bytes
    ) -> Deferred[WireResponse]:
        """
        C{POST} C{body} with C{headers} (name and value pairs, without
        C{Host} or C{Content-Length}): L{request} without the C{Headers}
        object and the producer.
        """
        try:
            key, prefix, parsed = self._target(uri)
            parts = [b"POST ", prefix]
            for name, value in headers:
                _checkHeader(name, value)
                parts += (name, b": ", value, b"\r\n")
            parts.append(b"Content-Length: %d\r\n\r\n" % len(body))
            head = b"".join(parts)
        except Exception as e:
            return fail(e)
        return self._send(key, parsed, b"POST", head, body, None, False)

    def _send(
        self,
        key: tuple[bytes, bytes, int],
        parsed: URI,
        method: bytes,
        head: bytes,
        body: bytes | None,
        producer: IBodyProducer | None,
        chunked: bool,
        reuse: bool = True,
    ) -> Deferred[WireResponse]:
        """
        Send on an idle connection of the pool, else on a new one.
        """
        if reuse:
            idle = self._idle.get(key)
            while idle:
                # Its idle timer stays armed (see _release).
                connection = idle.pop()
                if connection.state == _IDLE and connection.transport is not None:
                    connection.reused = True
                    retry = None
                    if body is not None:

                        def retry() -> Deferred[WireResponse]:
                            return self._send(
                                key, parsed, method, head, body, producer, chunked, False
                            )

                    return connection.send(method, head, body, producer, chunked, retry)
        return self._connect(key, parsed).addCallback(
            lambda connection: connection.send(method, head, body, producer, chunked, None)
        )

    def _target(self, uri: bytes) -> tuple[tuple[bytes, bytes, int], bytes, URI]:
        found = self._targets.get(uri)
        if found is None:
            parsed = URI.fromBytes(uri)
            if parsed.scheme not in (b"http", b"https"):
                # The endpoint factory raises SchemeNotSupported.
                self._endpoints.endpointForURI(parsed)
            default = 443 if parsed.scheme == b"https" else 80
            host = parsed.host
            if b":" in host and not host.startswith(b"["):
                host = b"[" + host + b"]"
            hostHeader = host if parsed.port == default else b"%s:%d" % (host, parsed.port)
            path = parsed.originForm
            if any(c in uri for c in (b"\r", b"\n", b" ")):
                raise ValueError("the URL holds whitespace or line breaks")
            found = (
                (parsed.scheme, parsed.host, parsed.port),
                b"%s HTTP/1.1\r\nHost: %s\r\n" % (path, hostHeader),
                parsed,
            )
            if len(self._targets) < 256:
                self._targets[uri] = found
        return found

    def _head(
        self,
        method: bytes,
        prefix: bytes,
        parsed: URI,
        headers: Headers | None,
        producer: IBodyProducer | None,
    ) -> tuple[bytes, bytes | None, bool]:
        if not method.isalpha() or not method.isupper():
            raise ValueError(f"not an HTTP method: {method[:20]!r}")
        parts = [method, b" ", prefix]
        if headers is not None:
            for name, values in headers.getAllRawHeaders():
                lowered = name.lower()
                if lowered in _HOP_BY_HOP:
                    continue
                for value in values:
                    _checkHeader(name, value)
                    parts += (name, b": ", value, b"\r\n")
        body: bytes | None = None
        chunked = False
        if producer is None:
            if method in (b"POST", b"PUT", b"PATCH"):
                parts.append(b"Content-Length: 0\r\n")
            body = b""
        elif isinstance(producer, BytesProducer):
            body = producer.body
            parts.append(b"Content-Length: %d\r\n" % len(body))
        elif producer.length is UNKNOWN_LENGTH:
            chunked = True
            parts.append(b"Transfer-Encoding: chunked\r\n")
        else:
            parts.append(b"Content-Length: %d\r\n" % producer.length)
        parts.append(b"\r\n")
        return b"".join(parts), body, chunked

    def _connect(self, key: tuple[bytes, bytes, int], parsed: URI) -> Deferred[_WireProtocol]:
        endpoint: IStreamClientEndpoint = self._endpoints.endpointForURI(parsed)
        connecting = cast(Deferred[_WireProtocol], endpoint.connect(_WireFactory(self, key)))

        def connected(connection: _WireProtocol) -> _WireProtocol:
            self._connections.add(connection)
            return connection

        return connecting.addCallback(connected)

    # The pool.

    def _release(self, connection: _WireProtocol) -> None:
        idle = self._idle.setdefault(connection.key, [])
        if len(idle) >= self.maxIdlePerHost:
            connection.state = _CLOSED
            transport = connection.transport
            if transport is not None:
                transport.loseConnection()
            return
        idle.append(connection)
        # One timer per connection, pushed back at each release rather than
        # made at each release and cancelled at each reuse (a cancelled call
        # stays in the reactor's heap until the reactor sweeps them out).
        # It stays armed while the connection is in use: if it fires then,
        # it only lets go of it (_expire), and the next release makes one.
        timer = connection.idleTimer
        if timer is not None and timer.active():
            timer.reset(self.idleTimeout)
        else:
            connection.idleTimer = self._reactor.callLater(
                self.idleTimeout, self._expire, connection
            )

    def _expire(self, connection: _WireProtocol) -> None:
        timer, connection.idleTimer = connection.idleTimer, None
        if timer is not None and timer.active():
            timer.cancel()
        idle = self._idle.get(connection.key)
        if not idle or connection not in idle:
            # In use since its last release.
            return
        idle.remove(connection)
        connection.state = _CLOSED
        transport = connection.transport
        if transport is not None:
            transport.loseConnection()

    def _forget(self, connection: _WireProtocol) -> None:
        self._connections.discard(connection)
        if connection.idleTimer is not None:
            connection.idleTimer.cancel()
            connection.idleTimer = None
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)

    def closeCachedConnections(self) -> Deferred[None]:
        """
        Close the idle connections; fires when they are closed.
        """
        waiters: list[Deferred[None]] = []
        for idle in list(self._idle.values()):
            for connection in list(idle):
                if connection.transport is not None and connection.transport.connected:
                    waiter: Deferred[None] = Deferred()
                    connection.lost.append(waiter)
                    waiters.append(waiter)
                self._expire(connection)
        self._idle.clear()
        return DeferredList(waiters).addCallback(lambda _: None)

    @property
    def idleConnections(self) -> int:
        """
        How many connections are idle in the pool now.
        """
        return sum(len(idle) for idle in self._idle.values())


__all__ = [
    "MAX_HEAD",
    "MAX_LINE",
    "BytesProducer",
    "WireAgent",
    "WireProtocolError",
    "WireResponse",
]
