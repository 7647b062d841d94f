"""
L{ai_agent.headends._site}: several APIs on one site, each answering its
own paths, the guard's refusals in the error format of the API a request
is for; routes with a fixed path called without Klein's router, answering
as through it.
"""

from __future__ import annotations

import json
import re
from typing import Any

import attrs
from klein import Klein
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from werkzeug.exceptions import Conflict

from ai_agent.errors import AgentError, ErrorKind
from ai_agent.headends._http import APIKeys, GuardedSite, HTTPPolicy
from ai_agent.headends._site import DirectRouter, Mount
from tests._harness import LiveServer, startServer


@attrs.frozen
class _FlatErrors:
    """
    An error format unlike OpenAI's.
    """

    def status(self, error: AgentError) -> int:
        return 529 if error.status == 503 else error.status

    def body(self, error: AgentError) -> bytes:
        return json.dumps({"type": "error", "kind": error.kind, "text": error.message}).encode()


@attrs.define(slots=False)
class _Other:
    """
    A second API with absolute routes.
    """

    app = Klein()

    @app.route("/v1/other", methods=["POST"])
    def create(self, request: IRequest) -> bytes:
        return b"created"

    @app.route("/v1/other/<thing>", methods=["GET"])
    def get(self, request: IRequest, thing: str) -> bytes:
        return f"got {thing}".encode()


def _mounts(runtime: Any, pool: Any, reactor: Any) -> list[Mount]:
    return [
        Mount(
            b"/v1/other",
            _Other().app,
            _FlatErrors(),
            lambda path, headers: headers.hasHeader(b"other-version"),
        )
    ]


class SiteTests(TestCase):
    """
    The router and the error-format chooser.
    """

    async def server(self, **kwargs: Any) -> LiveServer:
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, pool=pool))
        return await startServer(self, mounts=_mounts, **kwargs)

    async def test_routing(self) -> None:
        """
        A mounted API answers its prefix and the paths below it, in any
        spelling of them; everything else reaches the OpenAI routes.
        """
        server = await self.server()
        root = server.baseUrl[: -len("/v1")]
        response = await self.http.post(root + "/v1/other", b"{}")
        self.assertEqual((response.code, await response.text()), (200, "created"))
        response = await self.http.get(root + "//v1/%6Fther/x")
        self.assertEqual((response.code, await response.text()), (200, "got x"))
        response = await self.http.get(root + "/v1/models")
        self.assertEqual((await response.json())["object"], "list")
        response = await self.http.get(root + "/v1/otherwise")
        self.assertEqual(response.code, 404)
        self.assertIn("error", await response.json())

    async def test_guardUsesTheAPIsFormat(self) -> None:
        """
        The guard's refusals (a missing key here) are written in the format
        of the API owning the path, or claiming the request by a header;
        OpenAI's envelope elsewhere.
        """
        server = await self.server(policy=HTTPPolicy(apiKeys=APIKeys.fromKeys(["k"])))
        root = server.baseUrl[: -len("/v1")]
        response = await self.http.post(root + "/v1/other", b"{}")
        self.assertEqual(response.code, 401)
        self.assertEqual((await response.json())["kind"], "authentication")
        claimed = Headers({"other-version": ["1"]})
        response = await self.http.get(root + "/v1/models", headers=claimed)
        self.assertEqual((await response.json())["type"], "error")
        response = await self.http.get(root + "/v1/models")
        self.assertEqual((await response.json())["error"]["code"], "invalid_api_key")


@attrs.define(slots=False)
class _Probe:
    """
    Routes with fixed paths answering in every way a Klein route can.
    """

    app = Klein()
    cancelled: list[str] = attrs.Factory(list)

    @app.handle_errors(AgentError)
    def _agentError(self, request: IRequest, failure: Failure) -> bytes:
        request.setResponseCode(failure.value.status)
        return b"handled: " + failure.value.message.encode()

    @app.route("/ok", methods=["POST"])
    def ok(self, request: IRequest) -> bytes:
        request.setHeader(b"x-probe", b"1")
        return b"ok"

    @app.route("/text", methods=["GET"])
    def text(self, request: IRequest) -> str:
        return "text \u00e9"

    @app.route("/later", methods=["POST"])
    async def later(self, request: IRequest) -> bytes:
        return await succeed(b"later")

    @app.route("/self", methods=["POST"])
    def writesItself(self, request: IRequest) -> None:
        request.write(b"written")
        return None

    @app.route("/refused", methods=["POST"])
    def refused(self, request: IRequest) -> bytes:
        raise AgentError("no", 409, ErrorKind.INVALID_REQUEST, "no")

    @app.route("/conflict", methods=["POST"])
    def conflict(self, request: IRequest) -> bytes:
        raise Conflict()

    @app.route("/bug", methods=["POST"])
    def bug(self, request: IRequest) -> bytes:
        raise ZeroDivisionError()

    @app.route("/forever", methods=["POST"])
    def forever(self, request: IRequest) -> Deferred[bytes]:
        return Deferred(lambda d: self.cancelled.append("forever"))

    @app.route("/v1/thing/<name>", methods=["GET"])
    def thing(self, request: IRequest, name: str) -> bytes:
        return name.encode()


def _exchange(resource: Any, raw: bytes) -> tuple[bytes, Any]:
    site = GuardedSite(resource, reactor=Clock())
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(raw)
    # The Date header is the only part that may differ between two answers.
    answer = re.sub(rb"\r\nDate: [^\r]*", b"", transport.value())
    return answer, protocol


class FixedRouteTests(SynchronousTestCase):
    """
    Routes with a fixed path are called without Klein's router, and answer
    exactly as through it.
    """

    def test_sameAnswersAsKlein(self) -> None:
        """
        Each kind of answer (bytes, text, a coroutine, a route writing its
        own body, an error handled by the app, a werkzeug HTTP exception, a
        bug, a method the route does not take, a path with a converter) is
        the same byte for byte through the direct look-up as through Klein.
        """
        requests = [
            b"POST /ok HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"GET /text HTTP/1.1\r\n\r\n",
            b"POST /later HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"POST /self HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"POST /refused HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"POST /conflict HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"POST /bug HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"GET /ok HTTP/1.1\r\n\r\n",
            b"POST //%6Fk HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"GET /v1/thing/x HTTP/1.1\r\n\r\n",
        ]
        for raw in requests:
            direct, _ = _exchange(DirectRouter(_Probe().app), raw)
            routed, _ = _exchange(_Probe().app.resource(), raw)
            self.assertEqual(direct, routed, raw)
            self.assertTrue(direct.startswith(b"HTTP/1.1 "), direct)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)

    def test_onlyFixedPaths(self) -> None:
        """
        Only routes whose path has no converter, for the methods they take
        (not HEAD or OPTIONS), are looked up directly; a mount's routes
        only under its prefix, the default app's only outside every mount.
        """
        probe = _Probe()
        other = _Other()
        router = DirectRouter(
            probe.app,
            [
                Mount(b"/v1/other", other.app, _FlatErrors()),
                Mount(b"/ok", other.app, _FlatErrors()),
            ],
        )
        self.assertEqual(
            sorted(router._routes),
            [
                (b"GET", b"/text"),
                (b"POST", b"/bug"),
                (b"POST", b"/conflict"),
                (b"POST", b"/forever"),
                (b"POST", b"/later"),
                (b"POST", b"/refused"),
                (b"POST", b"/self"),
                (b"POST", b"/v1/other"),
            ],
        )

    def test_cancelledWhenTheClientLeaves(self) -> None:
        """
        The route's Deferred is cancelled when the client goes away before
        the answer, as with Klein.
        """
        probe = _Probe()
        raw = b"POST /forever HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
        _, protocol = _exchange(DirectRouter(probe.app), raw)
        self.assertEqual(probe.cancelled, [])
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(probe.cancelled, ["forever"])
