"""
L{ai_agent.headends._site}: several APIs on one site, each answering its
own paths, the guard's refusals in the error format of the API a request
is for.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from klein import Klein
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest

from ai_agent.errors import AgentError
from ai_agent.headends._http import APIKeys, HTTPPolicy
from ai_agent.headends._site import Mount
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
