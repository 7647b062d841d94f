"""
The few private attributes of Twisted this project still reaches, each
because no public API gives the same: these tests fail the day one of them
disappears, before the server misbehaves (setup.py pins the Twisted range
they were checked on).
"""

from __future__ import annotations

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import http
from twisted.web._newclient import Response
from twisted.web.resource import Resource

from ai_agent.headends._http import GuardedChannel, GuardedSite


class _Recording(GuardedChannel):
    seen: list[tuple[bytes, bytes, bool]]

    def allHeadersReceived(self) -> None:
        # What GuardedRequest reads when the head is complete.
        self.seen.append((self._path, self._command, self._handlingRequest))
        super().allHeadersReceived()


class TwistedPrivateAPITests(SynchronousTestCase):
    """
    What the HTTP guard and the service assembly rely on.
    """

    def test_requestLineBeforeBody(self) -> None:
        """
        When a request's head is complete (before its body is read), the
        channel holds the raw request target in C{_path} and the method in
        C{_command}; C{_handlingRequest} is false until the body is in.
        The guard checks keys, sizes and paths from these.
        """
        channel = _Recording()
        channel.callLater = Clock().callLater  # type: ignore[method-assign]
        channel.seen = []
        channel.site = GuardedSite(Resource())  # type: ignore[attr-defined]
        channel.makeConnection(StringTransport())
        channel.dataReceived(b"POST //v1/x?y=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n")
        self.assertEqual(channel.seen, [(b"//v1/x?y=1", b"POST", False)])
        # Deleted once the request is in: GuardedChannel's class default
        # (None) shows between requests, for a refusal outside any request.
        channel.dataReceived(b"12345")
        self.assertNotIn("_path", vars(channel))
        self.assertNotIn("_command", vars(channel))
        self.assertIsNone(channel._path)

    def test_channelWrapper(self) -> None:
        """
        C{http._GenericHTTPChannelProtocol} still wraps an HTTP/1.1
        channel, as the guarded site's protocol factory needs.
        """
        wrapper = http._GenericHTTPChannelProtocol(GuardedChannel())
        self.assertIsInstance(wrapper._channel, GuardedChannel)

    def test_raiseSynchronously(self) -> None:
        """
        A listening service can be told to raise a bind failure at start
        (C{_raiseSynchronously}) instead of logging it.
        """
        service = StreamServerEndpointService(None, None)
        self.assertFalse(service._raiseSynchronously)

    def test_responseTransport(self) -> None:
        """
        An upstream response keeps its connection in C{_transport}, which
        the provider pauses and aborts.
        """
        response = Response._construct(
            (b"HTTP", 1, 1), 200, b"OK", http.Headers(), StringTransport(), None
        )
        self.assertIsInstance(response._transport, StringTransport)

    def test_badRequestHooks(self) -> None:
        """
        twisted.web refuses malformed HTTP through
        C{_respondToBadRequestAndDisconnect} (counting headers in
        C{_receivedHeaderCount} and C{_receivedHeaderSize}), a line past
        C{MAX_LENGTH} through C{lineLengthExceeded} (before the request line
        C{_HTTPChannel__first_line} is true), and writes C{100 Continue}
        through C{_send100Continue}: the guard overrides these to answer
        with JSON, and never after a final answer.
        """
        channel = GuardedChannel()
        for name in ("_respondToBadRequestAndDisconnect", "_send100Continue"):
            self.assertTrue(callable(getattr(http.HTTPChannel, name)))
        self.assertTrue(channel._HTTPChannel__first_line)  # type: ignore[attr-defined]
        self.assertEqual(
            (channel._receivedHeaderCount, channel._receivedHeaderSize),  # type: ignore[attr-defined]
            (0, 0),
        )
        transport = StringTransport()
        channel.callLater = Clock().callLater  # type: ignore[method-assign]
        channel.site = GuardedSite(None)  # type: ignore[attr-defined]
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /" + b"a" * (channel.MAX_LENGTH + 10))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 414 "), transport.value()[:80])

    def test_waitingForPort(self) -> None:
        """
        A started listening service keeps the Deferred of its port in
        C{_waitingForPort}; the banner reads the bound address from it.
        """
        from twisted.internet.endpoints import TCP4ServerEndpoint
        from twisted.internet.protocol import Factory
        from twisted.internet.testing import MemoryReactor

        reactor = MemoryReactor()
        service = StreamServerEndpointService(TCP4ServerEndpoint(reactor, 0), Factory())
        service.startService()
        self.assertTrue(service._waitingForPort.called)

    def test_headerNameCache(self) -> None:
        """
        Twisted's header-name encoder caches in C{_canonicalHeaderCache}
        (given typed keys by C{tests/__init__.py} to keep C{python -b}
        quiet); header names still encode as before.
        """
        from twisted.web.http_headers import Headers, _nameEncoder

        self.assertIsInstance(_nameEncoder._canonicalHeaderCache, dict)
        headers = Headers({"x-a": ["1"]})
        headers.addRawHeader(b"x-a", b"2")
        self.assertEqual(headers.getRawHeaders(b"X-A"), [b"1", b"2"])

    def test_kleinErrorHandlers(self) -> None:
        """
        A Klein app keeps its error handlers, in the order they were
        declared, in C{_error_handlers} as pairs of exception types and
        handler: the site's direct look-up of fixed routes runs them as
        Klein's resource does.
        """
        from klein import Klein

        app = Klein()

        @app.handle_errors(KeyError, ValueError)
        def first(request: object, failure: object) -> bytes:
            return b""

        @app.handle_errors(ZeroDivisionError)
        def second(request: object, failure: object) -> bytes:
            return b""

        self.assertEqual(
            [tuple(kinds) for kinds, _ in app._error_handlers],
            [(KeyError, ValueError), (ZeroDivisionError,)],
        )

    def test_writeBuffers(self) -> None:
        """
        L{ai_agent._eager.EagerWrites} reads a TCP transport's queue
        through C{dataBuffer}, C{_tempDataLen} and C{_writeDisconnected},
        sends on its C{socket}, flushes the queue with C{doWrite}, and sees
        through C{ProtocolWrapper}, whose C{write} passes straight to its
        transport.
        """
        import inspect

        from twisted.internet import abstract, tcp
        from twisted.protocols.policies import ProtocolWrapper

        source = inspect.getsource(abstract.FileDescriptor)
        for name in ("self.dataBuffer", "self._tempDataLen", "self._writeDisconnected"):
            self.assertIn(name, source)
        self.assertIn("self.socket.send", inspect.getsource(tcp.Connection.writeSomeData))
        self.assertRegex(inspect.getsource(tcp.Connection.__init__), r"self\.socket\b.*= skt")
        # EagerWrites.flushNow sends a transport's queue as the reactor's
        # writability callback does.
        self.assertIs(tcp.Server.doWrite, abstract.FileDescriptor.doWrite)
        self.assertIn("self.writeSomeData(", inspect.getsource(abstract.FileDescriptor.doWrite))
        self.assertIn("self.transport.write(data)", inspect.getsource(ProtocolWrapper.write))

    def test_headersStorage(self) -> None:
        """
        The lean upstream client fills a response's C{Headers} through
        C{_rawHeaders} (canonical name to values) with names from
        C{_nameEncoder.encode}, which raises C{InvalidHeaderName} for a
        name that is not a token.
        """
        from twisted.web.http_headers import Headers, InvalidHeaderName, _nameEncoder

        headers = Headers()
        headers._rawHeaders[_nameEncoder.encode(b"content-type")] = [b"text/plain"]
        self.assertEqual(headers.getRawHeaders(b"Content-Type"), [b"text/plain"])
        self.assertEqual(headers.getRawHeaders("content-type"), ["text/plain"])
        self.assertRaises(InvalidHeaderName, _nameEncoder.encode, b"bad name")

    def test_requestDisconnected(self) -> None:
        """
        A request says its connection was lost in C{_disconnected} (the
        guard's C{processingFailed} and C{/metrics} read it): false while
        connected, true once lost.
        """
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure
        from twisted.web.test.requesthelper import DummyChannel

        request = http.Request(DummyChannel(), False)
        self.assertIs(request._disconnected, False)
        request.connectionLost(Failure(ConnectionDone()))
        self.assertIs(request._disconnected, True)

    def test_requestEncoder(self) -> None:
        """
        The speed layer's L{ai_agent.headends._http.EagerRequest} sets a
        resource's encoder on the request as C{_encoder}, which
        C{Request.write} and C{finish} pass the body through.
        """
        from twisted.web.server import Request
        from twisted.web.test.requesthelper import DummyChannel

        class Upper:
            def encode(self, data: bytes) -> bytes:
                return data.upper()

            def finish(self) -> bytes:
                return b"!"

        channel = DummyChannel()
        request = Request(channel, False)
        request.method, request.uri, request.path = b"GET", b"/", b"/"
        request.clientproto = b"HTTP/1.1"
        request.setHeader(b"content-length", b"3")
        self.assertIsNone(request._encoder)
        request._encoder = Upper()
        request.write(b"abc")
        request.finish()
        self.assertTrue(channel.transport.written.getvalue().endswith(b"ABC!"))

    def test_channelLateNames(self) -> None:
        """
        The names L{GuardedChannel} sets when it is made, so that they are in
        its class's shared table of names before a stream sets them (see its
        slots): L{http.HTTPChannel}'s class defaults C{_savedTimeOut},
        C{_requestProducer} and C{_requestProducerStreaming}, L{None} each,
        and the C{line_mode} of its line receiver, 1; and the request's
        producer pair, C{producer} and C{streamingProducer}, which
        C{Request.registerProducer} sets.
        """
        from twisted.web.test.requesthelper import DummyChannel

        self.assertEqual(
            [
                http.HTTPChannel._savedTimeOut,
                http.HTTPChannel._requestProducer,
                http.HTTPChannel._requestProducerStreaming,
            ],
            [None, None, None],
        )
        self.assertEqual(http.HTTPChannel.line_mode, 1)

        class Producer:
            def pauseProducing(self) -> None:
                pass

            def resumeProducing(self) -> None:
                pass

            def stopProducing(self) -> None:
                pass

        request = http.Request(DummyChannel(), False)
        producer = Producer()
        request.registerProducer(producer, True)
        self.assertEqual(
            (vars(request)["producer"], vars(request)["streamingProducer"]), (producer, True)
        )
