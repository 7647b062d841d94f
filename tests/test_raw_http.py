"""
What the server writes for hostile HTTP, byte by byte on raw sockets.

From the second security and reliability round (issue 11): each hole the
hostile campaign found, pinned against a real server on 127.0.0.1 with an
upstream of the test's own where the upstream misbehaves.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import TestCase

from tests._harness import LiveServer
from tests._hostile import ScriptedUpstream
from tests._misbehaving import (
    badServer,
    responseBody,
    statusAndBody,
)


class RawHTTPTests(TestCase):
    """
    Items 13 and 14: what the server writes for hostile HTTP, byte by byte
    on raw sockets.
    """

    timeout = 60

    async def startGuarded(self, **policy: Any) -> LiveServer:
        from ai_agent.headends._http import APIKeys, HTTPPolicy

        upstream = ScriptedUpstream().start(self)
        keys = policy.pop("keys", ())
        return await badServer(
            self, upstream, policy=HTTPPolicy(apiKeys=APIKeys.fromKeys(keys), **policy)
        )

    def port(self, server: LiveServer) -> int:
        return int(server.port.getHost().port)

    async def test_noContinueAfterFinalAnswer(self) -> None:
        """
        With C{Expect: 100-continue}, a request refused on its head (401
        without a key, 413 for a declared length past the cap) gets its
        final JSON answer at once and no C{100 Continue} before or after
        it; an accepted request still gets its C{100 Continue}.
        """
        from tests._hostile import rawExchange

        server = await self.startGuarded(keys=["right-key-123456"], maxBodySize=1000)
        port = self.port(server)
        cases = [
            (b"", b"Content-Length: 10\r\n", 401),
            (b"Authorization: Bearer right-key-123456\r\n", b"Content-Length: 5000\r\n", 413),
        ]
        for auth, length, expected in cases:
            raw = await rawExchange(
                port,
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\n"
                + auth
                + length
                + b"Expect: 100-continue\r\n\r\n",
                readFor=1.0,
            )
            status, headers, body = statusAndBody(raw)
            self.assertEqual(status, expected, raw)
            self.assertNotIn(b"100 Continue", raw)
            self.assertEqual(headers["content-type"], "application/json")
            json.loads(body)
        raw = await rawExchange(
            port,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer right-key-123456\r\nContent-Length: 2\r\n"
            b"Expect: 100-continue\r\n\r\n",
            readFor=0.5,
            timeout=1.0,
        )
        self.assertTrue(raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), raw)

    async def test_everyRefusalIsJSON(self) -> None:
        """
        Duplicate C{Content-Length}, a bad request line, too many headers,
        a header or a request line past 16 kB, a hostile C{Host} with a
        doubled slash, C{/%ff}: each is answered with a JSON envelope and
        the right 4xx, never an empty body, a redirect or a bare close;
        nothing is logged as a crash.
        """
        from twisted.logger import globalLogPublisher

        from tests._hostile import rawExchange

        crashes: list[Any] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_failure") is not None:
                crashes.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        server = await self.startGuarded()
        port = self.port(server)
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(600))
        cases = [
            (
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                b"Content-Length: 3\r\n\r\n{}",
                400,
                "invalid_http",
            ),
            (b"GARBAGE\r\n\r\n", 400, "invalid_http"),
            (
                b"GET /health HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n",
                431,
                "request_header_fields_too_large",
            ),
            (
                b"GET /health HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n",
                431,
                "request_header_fields_too_large",
            ),
            (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
            (b"GET /v1/models//x HTTP/1.1\r\nHost: evil.example\r\n\r\n", 404, "model_not_found"),
            (b"GET /v1/models/ HTTP/1.1\r\nHost: evil.example\r\n\r\n", None, None),
            (b"GET /v1/ HTTP/1.1\r\nHost: evil.example\r\n\r\n", 404, "not_found"),
            (b"GET /health/ HTTP/1.1\r\nHost: evil.example\r\n\r\n", None, None),
            (b"GET /v1/models/x/ HTTP/1.1\r\nHost: evil.example\r\n\r\n", None, None),
            (
                b"POST /v1/chat/completions/ HTTP/1.1\r\nHost: evil.example\r\n"
                b"Content-Length: 2\r\n\r\n{}",
                None,
                None,
            ),
            (b"GET /%ff HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid_path"),
        ]
        for request, expected, code in cases:
            raw = await rawExchange(port, request, readFor=0.5, timeout=3.0)
            self.assertTrue(raw, f"no answer to {request[:60]!r}")
            status, headers, body = statusAndBody(raw)
            self.assertLess(status, 500, raw[:300])
            self.assertNotIn(status, (301, 302, 307, 308), raw[:300])
            self.assertNotIn("location", headers)
            self.assertEqual(headers.get("content-type"), "application/json", raw[:300])
            if expected is not None:
                self.assertEqual(status, expected, raw[:300])
            envelope = json.loads(responseBody(headers, body))
            if code is not None:
                self.assertEqual(envelope["error"]["code"], code)
            self.assertNotIn(b"Traceback", raw)
        self.assertEqual(crashes, [])
