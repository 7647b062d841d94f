"""
The HTTP layer (L{ai_agent.headends._http}) over raw sockets: body caps,
content types, deadlines, keep-alive, pipelining, API keys and CORS.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Callable

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ai_agent._eager import EagerWrites
from ai_agent.headends._http import (
    APIKeys,
    EagerChannel,
    EagerRequest,
    GuardedSite,
    HTTPPolicy,
    UnusablePathError,
    _canonicalPath,
    canonicalPath,
)
from ai_agent.testing import Reply
from tests._harness import LiveServer, startServer

BODY = json.dumps({"model": "agent", "messages": [{"role": "user", "content": "hi"}]}).encode()


class _Raw(Protocol):
    """
    A raw client connection recording what it receives.
    """

    def __init__(self) -> None:
        self.received = b""
        self.lost: Deferred[None] = Deferred()
        self.closed = False
        self._waiters: list[tuple[bytes, int, Deferred[None]]] = []
        self._complete: list[tuple[Callable[[], bool], Deferred[None]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self._check()
        for waiter in list(self._complete):
            if waiter[0]():
                self._complete.remove(waiter)
                waiter[1].callback(None)

    def connectionLost(self, reason: Any) -> None:
        self.closed = True
        self.lost.callback(None)
        for _, _, d in self._waiters:
            d.callback(None)
        self._waiters = []
        complete, self._complete = self._complete, []
        for _, waiting in complete:
            waiting.callback(None)

    def waitFor(self, marker: bytes, count: int = 1, timeout: float = 15.0) -> Deferred[None]:
        """
        Fire once C{marker} was received C{count} times (or the connection
        closed); fail after C{timeout} seconds, showing what was received.
        """

        def forget(d: Deferred[None]) -> None:
            self._waiters = [waiter for waiter in self._waiters if waiter[2] is not d]

        def timedOut(result: object, seconds: float) -> None:
            raise AssertionError(
                f"{marker!r} not received {count} time(s) in {seconds:g} s; "
                f"received: {self.received[-1000:]!r}"
            )

        d: Deferred[None] = Deferred(canceller=forget)
        self._waiters.append((marker, count, d))
        self._check()
        return d.addTimeout(timeout, reactor, onTimeoutCancel=timedOut)

    def _check(self) -> None:
        for waiter in list(self._waiters):
            marker, count, d = waiter
            if self.received.count(marker) >= count:
                self._waiters.remove(waiter)
                d.callback(None)

    def waitForResponse(self, timeout: float = 15.0) -> Deferred[None]:
        """
        Fire once one whole response was received: its head and then its
        C{Content-Length} bytes of body, or the last chunk of a chunked
        body, or no body without either (or the connection closed); fail
        after C{timeout} seconds.
        """

        def complete() -> bool:
            head, sep, body = self.received.partition(b"\r\n\r\n")
            if not sep:
                return False
            length = re.search(rb"(?im)^content-length:[ \t]*([0-9]+)[ \t]*\r?$", head)
            if length is not None:
                return len(body) >= int(length.group(1))
            if re.search(rb"(?im)^transfer-encoding:[ \t]*chunked", head):
                return b"0\r\n\r\n" in body
            return True

        if self.closed or complete():
            return Deferred.fromCoroutine(_nothing())

        def forget(d: Deferred[None]) -> None:
            self._complete = [waiter for waiter in self._complete if waiter[1] is not d]

        def timedOut(result: object, seconds: float) -> None:
            raise AssertionError(
                f"no whole response in {seconds:g} s; received: {self.received[-1000:]!r}"
            )

        d: Deferred[None] = Deferred(canceller=forget)
        self._complete.append((complete, d))
        return d.addTimeout(timeout, reactor, onTimeoutCancel=timedOut)


async def _nothing() -> None:
    pass


async def _connect(server: LiveServer) -> _Raw:
    raw = _Raw()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port.getHost().port), raw)
    return raw


def _request(
    body: bytes = BODY,
    path: bytes = b"/v1/chat/completions",
    headers: dict[bytes, bytes] | None = None,
    method: bytes = b"POST",
) -> bytes:
    allHeaders = {b"Host": b"x", b"Content-Type": b"application/json"}
    if body or method == b"POST":
        allHeaders[b"Content-Length"] = str(len(body)).encode()
    allHeaders.update(headers or {})
    head = b"".join(name + b": " + value + b"\r\n" for name, value in allHeaders.items())
    return method + b" " + path + b" HTTP/1.1\r\n" + head + b"\r\n" + body


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def _envelope(response: bytes) -> Any:
    """
    The JSON body of a response, whether sized or chunked.
    """
    body = response.split(b"\r\n\r\n", 1)[1]
    return json.loads(body[body.index(b"{") : body.rindex(b"}") + 1])


def _withTimeout(d: Deferred[None], seconds: float) -> Deferred[None]:
    """
    C{d}, failing with a timeout after C{seconds}.
    """
    return d.addTimeout(seconds, reactor)


def _sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


class BodyLimitTests(TestCase):
    """
    Bodies over the cap are refused with 413, before they are read.
    """

    async def test_declaredTooLarge(self) -> None:
        """
        A Content-Length over the cap is answered with 413 from the head
        alone; the connection then closes.
        """
        server = await startServer(self, policy=HTTPPolicy(maxBodySize=1000))
        raw = await _connect(server)
        raw.transport.write(_request(b"", headers={b"Content-Length": b"5000000"}))
        await raw.waitFor(b"}}")
        self.assertEqual(_status(raw.received), 413)
        body = raw.received.split(b"\r\n\r\n", 1)[1]
        self.assertEqual(json.loads(body)["error"]["code"], "request_too_large")
        raw.transport.loseConnection()
        self.assertEqual(server.upstream.requests, [])

    async def test_chunkedTooLarge(self) -> None:
        """
        A chunked body is refused with 413 as soon as it crosses the cap.
        """
        server = await startServer(self, policy=HTTPPolicy(maxBodySize=1000))
        raw = await _connect(server)
        head = _request(b"", headers={b"Transfer-Encoding": b"chunked"}).replace(
            b"Content-Length: 0\r\n", b""
        )
        raw.transport.write(head)
        for _ in range(3):
            raw.transport.write(b"200\r\n" + b"x" * 512 + b"\r\n")
        await raw.waitFor(b"}}")
        self.assertEqual(_status(raw.received), 413)
        raw.transport.loseConnection()

    async def test_underCapAccepted(self) -> None:
        """
        A chunked body under the cap is read and served.
        """
        server = await startServer(self, policy=HTTPPolicy(maxBodySize=len(BODY) + 10))
        raw = await _connect(server)
        head = _request(b"", headers={b"Transfer-Encoding": b"chunked"}).replace(
            b"Content-Length: 0\r\n", b""
        )
        raw.transport.write(head + b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n")
        await raw.waitFor(b"chat.completion")
        self.assertEqual(_status(raw.received), 200)
        raw.transport.loseConnection()


class ContentTypeTests(TestCase):
    """
    Only JSON bodies are taken.
    """

    async def test_formRefused(self) -> None:
        """
        A form-encoded body is a 415, and the connection stays usable: the
        next request on it is served.
        """
        server = await startServer(self)
        raw = await _connect(server)
        raw.transport.write(
            _request(headers={b"Content-Type": b"application/x-www-form-urlencoded"})
            + _request(path=b"/health", method=b"GET", body=b"")
        )
        await raw.waitFor(b"HTTP/1.1", 2)
        await raw.waitFor(b'"status"')
        first, second = raw.received.split(b"HTTP/1.1 ")[1:3]
        self.assertTrue(first.startswith(b"415"))
        self.assertIn(b"unsupported_media_type", first)
        self.assertTrue(second.startswith(b"200"))
        raw.transport.loseConnection()

    async def test_jsonWithCharset(self) -> None:
        """
        C{application/json; charset=utf-8} is accepted.
        """
        server = await startServer(self)
        raw = await _connect(server)
        raw.transport.write(_request(headers={b"Content-Type": b"application/json; charset=utf-8"}))
        await raw.waitFor(b"chat.completion")
        self.assertEqual(_status(raw.received), 200)
        raw.transport.loseConnection()


class NoDelayTests(TestCase):
    """
    Nagle's algorithm is off on the server's connections.
    """

    async def test_noDelay(self) -> None:
        """
        A client's connection to the server has TCP_NODELAY set on the
        server's side, so a stream's frames are never held back waiting
        for the client's delayed acknowledgement.
        """
        server = await startServer(self)
        raw = await _connect(server)
        raw.transport.write(b"GET /health HTTP/1.1\r\nHost: h\r\n\r\n")  # type: ignore[union-attr]
        await raw.waitFor(b"\r\n\r\n")
        wrappers = list(server.port.factory.protocols)  # type: ignore[attr-defined]
        self.assertEqual(len(wrappers), 1)
        self.assertTrue(wrappers[0].transport.getTcpNoDelay())
        raw.transport.loseConnection()  # type: ignore[union-attr]


class DeadlineTests(TestCase):
    """
    Slow and idle clients are cut; streams are not.
    """

    async def test_drip(self) -> None:
        """
        A client dripping its request a byte at a time past the deadline
        gets a 408 and a closed connection.
        """
        server = await startServer(self, policy=HTTPPolicy(requestDeadline=0.3))
        raw = await _connect(server)
        for byte in _request()[:40]:
            if raw.closed:
                break
            raw.transport.write(bytes([byte]))
            await _sleep(0.02)
        await _withTimeout(raw.lost, 10)
        self.assertEqual(_status(raw.received), 408)
        self.assertEqual(server.upstream.requests, [])

    async def test_idleKeepAliveClosed(self) -> None:
        """
        A keep-alive connection stays open and usable while it is idle for
        less than the idle timeout, and is closed by the server once it
        has been idle for the whole timeout.
        """
        server = await startServer(self, policy=HTTPPolicy(idleTimeout=0.6))
        raw = await _connect(server)
        health = _request(path=b"/health", method=b"GET", body=b"")
        raw.transport.write(health)
        await raw.waitFor(b'"status"')
        await _sleep(0.3)
        self.assertFalse(raw.closed, "closed before the idle timeout")
        raw.transport.write(health)
        await raw.waitFor(b'"status"', 2)
        self.assertEqual(raw.received.count(b"HTTP/1.1 200"), 2, raw.received)
        answered = time.monotonic()
        await _withTimeout(raw.lost, 10)
        # The timer restarts when the second answer is sent, a moment
        # before it arrives here.
        self.assertGreater(time.monotonic() - answered, 0.45)

    async def test_longStreamNotCut(self) -> None:
        """
        A stream lasting longer than the request deadline and the idle
        timeout completes.
        """
        server = await startServer(
            self,
            policy=HTTPPolicy(requestDeadline=0.2, idleTimeout=0.2),
            streamHeadGrace=0.0,
        )
        server.upstream.script(Reply(content=["a", "b", "c", "d"], interval=0.2))
        raw = await _connect(server)
        raw.transport.write(
            _request(
                json.dumps(
                    {
                        "model": "agent",
                        "messages": [{"role": "user", "content": "x"}],
                        "stream": True,
                    }
                ).encode()
            )
        )
        await raw.waitFor(b"[DONE]")
        self.assertIn(b'"content":"d"', raw.received)
        raw.transport.loseConnection()

    async def test_pipelining(self) -> None:
        """
        Pipelined requests are answered in order.
        """
        server = await startServer(self)
        raw = await _connect(server)
        raw.transport.write(
            _request(path=b"/v1/models", method=b"GET", body=b"")
            + _request()
            + _request(path=b"/health", method=b"GET", body=b"")
        )
        await raw.waitFor(b"HTTP/1.1 ", 3)
        await raw.waitFor(b'"status"')
        received = raw.received
        self.assertLess(received.index(b'"object":"list"'), received.index(b"chat.completion"))
        self.assertLess(received.index(b"chat.completion"), received.index(b'"status"'))
        raw.transport.loseConnection()


class APIKeyTests(TestCase):
    """
    With keys configured, /v1/ routes need one; /health stays open.
    """

    async def _answer(self, request: bytes) -> bytes:
        raw = await _connect(self.server)
        raw.transport.write(request)
        await raw.waitForResponse()
        raw.transport.loseConnection()
        return raw.received

    async def setUp(self) -> None:
        self.server = await startServer(
            self, policy=HTTPPolicy(apiKeys=APIKeys.fromKeys(["k-one", "k-two"]))
        )

    async def test_missingKey(self) -> None:
        """
        No key is a 401 with C{WWW-Authenticate: Bearer} and the envelope.
        """
        answer = await self._answer(_request())
        self.assertEqual(_status(answer), 401)
        self.assertIn(b"www-authenticate: bearer", answer.lower())
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        self.assertEqual(body["error"]["code"], "invalid_api_key")

    async def test_wrongKey(self) -> None:
        """
        A wrong key is a 401 and never reaches the upstream.
        """
        answer = await self._answer(_request(headers={b"Authorization": b"Bearer k-three"}))
        self.assertEqual(_status(answer), 401)
        self.assertEqual(self.server.upstream.requests, [])

    async def test_bearerAndHeader(self) -> None:
        """
        A key is accepted as a bearer token or as C{x-api-key}.
        """
        answer = await self._answer(_request(headers={b"Authorization": b"Bearer k-two"}))
        self.assertEqual(_status(answer), 200)
        answer = await self._answer(
            _request(path=b"/v1/models", method=b"GET", body=b"", headers={b"X-Api-Key": b"k-one"})
        )
        self.assertEqual(_status(answer), 200)

    async def test_checkedBeforeBody(self) -> None:
        """
        The key is checked from the head: a 401 arrives although the
        announced body was never sent.
        """
        answer = await self._answer(_request(b"", headers={b"Content-Length": b"100000000"}))
        self.assertEqual(_status(answer), 401)

    async def test_healthOpen(self) -> None:
        """
        C{/health} needs no key.
        """
        answer = await self._answer(_request(path=b"/health", method=b"GET", body=b""))
        self.assertEqual(_status(answer), 200)


#: Spellings of one path that a router may fold into it: doubled slashes,
#: percent-escaped letters and slashes, dot segments, absolute form.
def _spellings(path: bytes) -> list[bytes]:
    if path == b"/":
        return [path, b"//", b"http://elsewhere.example/", b"/?x=1"]
    escapedFirst = b"/%" + b"%02x" % path[1] + path[2:]
    return [
        path,
        b"/" + path,
        path.replace(b"/", b"//"),
        escapedFirst,
        b"/%" + b"%02X" % path[1] + path[2:],
        path.replace(b"/", b"%2f").replace(b"%2f", b"/", 1),
        path.replace(b"/", b"%2F").replace(b"%2F", b"/", 1),
        b"http://elsewhere.example" + path,
        path + b"?x=1",
    ]


class PathSpellingTests(TestCase):
    """
    The key check and the router see one canonical path, so no spelling of
    a protected route escapes the check, and a target with no single
    meaning is refused with a JSON 400.
    """

    async def setUp(self) -> None:
        self.server = await startServer(self, policy=HTTPPolicy(apiKeys=APIKeys.fromKeys(["k"])))

    async def _answer(self, request: bytes, marker: bytes = b"}") -> bytes:
        raw = await _connect(self.server)
        raw.transport.write(request)
        await _withTimeout(raw.waitFor(marker), 10)
        raw.transport.loseConnection()
        return raw.received

    async def test_everyRouteEverySpellingNeedsKey(self) -> None:
        """
        Every route of every API served (taken from their routers, not a
        list kept here), in every spelling, is a 401 without a key, except
        the open ones; C{OPTIONS} included, on every route (a 405 there
        would list the routes); the upstream is never called.
        """
        apps = [self.server.headend.app, *(mount.app for mount in self.server.mounts)]
        rules = [rule for app in apps for rule in app.url_map.iter_rules()]
        self.assertGreater(len(rules), 3)
        # The A2A routes (cards, JSON-RPC, HTTP+JSON) are among them.
        self.assertTrue(
            {"/.well-known/agent-card.json", "/a2a/<agent>", "/a2a/<agent>/message:send"}
            <= {rule.rule for rule in rules}
        )
        self.assertIn("/mcp", {rule.rule for rule in rules})
        checked = 0
        for rule in rules:
            rule_ = rule.rule.replace("<path:modelId>", "agent").replace("<name>", "docs.js")
            path = re.sub(r"<[^>]+>", "x", rule_).encode()
            for method in sorted((rule.methods | {"OPTIONS"}) - {"HEAD"}):
                for spelling in _spellings(path):
                    body = BODY if method == "POST" else b""
                    # (The status line is enough; the pages are not JSON.)
                    answer = await self._answer(
                        _request(body, path=spelling, method=method.encode()), b"\r\n\r\n"
                    )
                    status = _status(answer)
                    if path in HTTPPolicy().openPaths:
                        self.assertNotEqual(status, 401, spelling)
                    else:
                        self.assertEqual(status, 401, (method, spelling, answer[:200]))
                    checked += 1
        self.assertGreater(checked, 20)
        self.assertEqual(self.server.upstream.requests, [])

    async def test_unknownPathNeedsKey(self) -> None:
        """
        A path no route serves is a 401 without a key too (nothing is said
        about which routes exist), and a JSON 404 with one.
        """
        answer = await self._answer(_request(b"", path=b"/v2/secret", method=b"GET"))
        self.assertEqual(_status(answer), 401)
        answer = await self._answer(
            _request(b"", path=b"/v2/secret", method=b"GET", headers={b"X-Api-Key": b"k"})
        )
        self.assertEqual(_status(answer), 404)
        self.assertEqual(_envelope(answer)["error"]["type"], "invalid_request_error")

    async def test_optionsNeedsKey(self) -> None:
        """
        C{OPTIONS} without a key is the same 401 envelope on a served path
        and on an unknown one, preflight headers or not (no origin is
        allowed here); with the key it reaches the router (405 on a served
        path, 404 elsewhere).
        """
        preflight = {b"Origin": b"https://a.example", b"Access-Control-Request-Method": b"POST"}
        answers = []
        for path in (b"/v1/chat/completions", b"/v2/secret"):
            for headers in ({}, preflight):
                answer = await self._answer(
                    _request(b"", path=path, method=b"OPTIONS", headers=headers)
                )
                self.assertEqual(_status(answer), 401, answer)
                answers.append(_envelope(answer))
        self.assertEqual(answers[0]["error"]["code"], "invalid_api_key")
        self.assertEqual(len({json.dumps(a) for a in answers}), 1, answers)
        key = {b"X-Api-Key": b"k"}
        served = await self._answer(
            _request(b"", path=b"/v1/chat/completions", method=b"OPTIONS", headers=key)
        )
        unknown = await self._answer(
            _request(b"", path=b"/v2/secret", method=b"OPTIONS", headers=key)
        )
        self.assertEqual((_status(served), _status(unknown)), (405, 404))

    async def test_spellingsRouteLikeCanonical(self) -> None:
        """
        With the key, each spelling reaches the same route as the canonical
        path: the model list, and a chat completion through the upstream.
        """
        for spelling in _spellings(b"/v1/models"):
            answer = await self._answer(
                _request(b"", path=spelling, method=b"GET", headers={b"X-Api-Key": b"k"})
            )
            self.assertEqual(_status(answer), 200, spelling)
            self.assertIn(b'"object":"list"', answer.replace(b" ", b""))
        answer = await self._answer(
            _request(path=b"http://h//v1/chat/completions", headers={b"X-Api-Key": b"k"})
        )
        self.assertEqual(_status(answer), 200)
        self.assertEqual(len(self.server.upstream.requests), 1)

    async def test_unusableTargetsRefused(self) -> None:
        """
        Targets with no single meaning get a JSON 400 naming the problem,
        before the key check, and nothing is routed.
        """
        for target in (
            b"/%ff",
            b"/v1/%zzmodels",
            b"/v1/%2576%2531",
            b"/v1/../v1/models",
            b"/v1/%00",
        ):
            answer = await self._answer(_request(b"", path=target, method=b"GET"))
            self.assertEqual(_status(answer), 400, target)
            error = _envelope(answer)["error"]
            self.assertEqual(error["code"], "invalid_path", target)
        self.assertEqual(self.server.upstream.requests, [])

    async def test_noRedirectFromHost(self) -> None:
        """
        Doubled slashes are folded, not redirected: no C{Location} built
        from a client's C{Host} header is ever sent.
        """
        answer = await self._answer(
            _request(
                b"",
                path=b"/v1/models//agent",
                method=b"GET",
                headers={b"Host": b"evil.example", b"X-Api-Key": b"k"},
            )
        )
        self.assertNotIn(b"location:", answer.lower())
        self.assertNotIn(b"evil.example", answer)
        self.assertEqual(_status(answer), 200)


class CanonicalPathTests(SynchronousTestCase):
    """
    L{canonicalPath} gives one spelling per path.
    """

    def test_folds(self) -> None:
        """
        Escapes are decoded once, slashes folded, the absolute form's
        authority dropped, the query and a trailing slash kept, and
        characters outside the safe set escaped again.
        """
        self.assertEqual(canonicalPath(b"//v1///models"), (b"/v1/models", b""))
        self.assertEqual(canonicalPath(b"/%76%31/models?a=%2f"), (b"/v1/models", b"?a=%2f"))
        self.assertEqual(canonicalPath(b"/v1%2Fmodels/"), (b"/v1/models/", b""))
        self.assertEqual(canonicalPath(b"HTTP://h:80"), (b"/", b""))
        self.assertEqual(canonicalPath(b"https://h/v1/models/a%20b"), (b"/v1/models/a%20b", b""))
        self.assertEqual(canonicalPath(b"/v1/models/caf%C3%A9"), (b"/v1/models/caf%C3%A9", b""))

    def test_refuses(self) -> None:
        """
        Targets without a single meaning raise L{UnusablePathError}.
        """
        for target in (
            b"*",
            b"v1/models",
            b"/%",
            b"/%e9",
            b"/%252f",
            b"/a/./b",
            b"/a/%2e%2e/b",
            b"/\x01",
            b"/a#b",
        ):
            self.assertRaises(UnusablePathError, canonicalPath, target)

    @given(st.text(alphabet="/.a%2Fe:@!$&'()*+,;=~_-? #\x01\u00e9", max_size=16))
    def test_shortcutAgrees(self, text: str) -> None:
        """
        The shortcut for paths that are already canonical gives what the
        full decoding and escaping does, or refuses the same targets.
        """
        target = ("/" + text).encode("utf-8")
        try:
            expected: Any = _canonicalPath(target)
        except UnusablePathError:
            expected = UnusablePathError
        try:
            actual: Any = canonicalPath(target)
        except UnusablePathError:
            actual = UnusablePathError
        self.assertEqual(actual, expected)


class CORSTests(TestCase):
    """
    CORS is off by default and answers only the configured origins.
    """

    async def _answer(self, server: LiveServer, request: bytes) -> bytes:
        raw = await _connect(server)
        raw.transport.write(request)
        await raw.waitForResponse()
        raw.transport.loseConnection()
        return raw.received

    def _preflight(self, origin: bytes) -> bytes:
        return _request(
            b"",
            method=b"OPTIONS",
            headers={
                b"Origin": origin,
                b"Access-Control-Request-Method": b"POST",
                b"Access-Control-Request-Headers": b"authorization, content-type",
            },
        )

    async def test_offByDefault(self) -> None:
        """
        Without configured origins, no response carries CORS headers.
        """
        server = await startServer(self)
        answer = await self._answer(
            server,
            _request(
                path=b"/v1/models",
                method=b"GET",
                body=b"",
                headers={b"Origin": b"https://a.example"},
            ),
        )
        self.assertNotIn(b"access-control-allow-origin", answer.lower())

    async def test_preflightAllowed(self) -> None:
        """
        A preflight from an allowed origin gets 204 with that origin, the
        methods and the requested headers; never C{*} with credentials.
        """
        server = await startServer(
            self, policy=HTTPPolicy(corsOrigins=frozenset({"https://a.example"}))
        )
        answer = (await self._answer(server, self._preflight(b"https://a.example"))).lower()
        self.assertEqual(_status(answer), 204)
        self.assertIn(b"access-control-allow-origin: https://a.example", answer)
        self.assertIn(b"access-control-allow-methods: get, post, options", answer)
        self.assertIn(b"access-control-allow-headers: authorization, content-type", answer)
        self.assertNotIn(b"access-control-allow-credentials", answer)

    async def test_otherOriginRefused(self) -> None:
        """
        A preflight from another origin gets 403 and no allow header; a
        request from it gets no allow header either.
        """
        server = await startServer(
            self, policy=HTTPPolicy(corsOrigins=frozenset({"https://a.example"}))
        )
        answer = (await self._answer(server, self._preflight(b"https://b.example"))).lower()
        self.assertEqual(_status(answer), 403)
        self.assertNotIn(b"access-control-allow-origin", answer)
        answer = await self._answer(
            server,
            _request(
                path=b"/v1/models",
                method=b"GET",
                body=b"",
                headers={b"Origin": b"https://b.example"},
            ),
        )
        self.assertEqual(_status(answer), 200)
        self.assertNotIn(b"access-control-allow-", answer.lower())

    async def test_preflightWithoutKey(self) -> None:
        """
        With API keys set, a preflight from an allowed origin still gets its
        204 without a key (browsers send none), on a served path and an
        unknown one alike; from another origin it is the key check's 401,
        the same on both paths.
        """
        server = await startServer(
            self,
            policy=HTTPPolicy(
                apiKeys=APIKeys.fromKeys(["k"]), corsOrigins=frozenset({"https://a.example"})
            ),
        )
        for path in (b"/v1/chat/completions", b"/v2/secret"):
            allowed = self._preflight(b"https://a.example").replace(
                b"/v1/chat/completions", path, 1
            )
            answer = (await self._answer(server, allowed)).lower()
            self.assertEqual(_status(answer), 204, answer)
            self.assertIn(b"access-control-allow-origin: https://a.example", answer)
        refused = []
        for path in (b"/v1/chat/completions", b"/v2/secret"):
            other = self._preflight(b"https://b.example").replace(b"/v1/chat/completions", path, 1)
            answer = await self._answer(server, other)
            self.assertEqual(_status(answer), 401, answer)
            self.assertNotIn(b"access-control-allow-origin", answer.lower())
            refused.append(answer.split(b"\r\n\r\n", 1)[1])
        self.assertEqual(refused[0], refused[1])
        self.assertEqual(server.upstream.requests, [])

    async def test_otherOriginSameOnEveryPath(self) -> None:
        """
        Without API keys, a preflight from an origin that is not allowed is
        the same 403 on a served path and on an unknown one.
        """
        server = await startServer(
            self, policy=HTTPPolicy(corsOrigins=frozenset({"https://a.example"}))
        )
        answers = []
        for path in (b"/v1/chat/completions", b"/v2/secret"):
            other = self._preflight(b"https://b.example").replace(b"/v1/chat/completions", path, 1)
            answer = await self._answer(server, other)
            self.assertEqual(_status(answer), 403, answer)
            answers.append(answer.split(b"\r\n\r\n", 1)[1])
        self.assertEqual(answers[0], answers[1])

    async def test_allowedOriginOnResponses(self) -> None:
        """
        Responses to an allowed origin carry its allow header and
        C{Vary: Origin}.
        """
        server = await startServer(
            self, policy=HTTPPolicy(corsOrigins=frozenset({"https://a.example"}))
        )
        answer = await self._answer(
            server,
            _request(
                path=b"/v1/models",
                method=b"GET",
                body=b"",
                headers={b"Origin": b"https://a.example"},
            ),
        )
        self.assertIn(b"access-control-allow-origin: https://a.example", answer.lower())
        self.assertIn(b"vary: origin", answer.lower())


class APIKeysTests(SynchronousTestCase):
    """
    L{APIKeys} keeps digests only.
    """

    def test_digestsOnly(self) -> None:
        """
        Keys are matched by digest, blank keys are ignored, and the repr
        shows no key.
        """
        keys = APIKeys.fromKeys(["secret-one", " ", ""])
        self.assertTrue(keys.enabled)
        self.assertTrue(keys.accepts(b"secret-one"))
        self.assertFalse(keys.accepts(b"secret-two"))
        self.assertFalse(keys.accepts(None))
        self.assertNotIn("secret", repr(keys))
        self.assertFalse(APIKeys.fromKeys(["", " "]).enabled)


class AccessLogTests(TestCase):
    """
    The access log is off by default and written to a file when asked for.
    """

    async def test_accessLogFile(self) -> None:
        """
        With an access log path, each HTTP request adds a combined-format
        line naming its method, path and status.
        """
        import os

        from ai_agent.headends._http import GuardedSite

        server = await startServer(self)
        path = os.path.join(server.directory, "access.log")
        site = GuardedSite(server.headend.app.resource(), logPath=path)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        raw = _Raw()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), raw)
        raw.transport.write(
            _request(path=b"/health", method=b"GET", body=b"", headers={b"Connection": b"close"})
        )
        await _withTimeout(raw.lost, 10)
        site.stopFactory()
        with open(path) as f:
            line = f.read()
        self.assertIn('"GET /health HTTP/1.1" 200', line)

    def test_offByDefault(self) -> None:
        """
        Without a path, the site writes no access log.
        """
        from ai_agent.headends._http import GuardedSite

        site = GuardedSite(None)
        self.assertIsNone(site.logPath)
        site.log(None)  # must not touch the request at all


class _CountingTransport(StringTransport):
    """
    A transport counting how often it is asked for its addresses.
    """

    asked = 0

    def getHost(self) -> Any:
        self.asked += 1
        return super().getHost()

    def getPeer(self) -> Any:
        self.asked += 1
        return super().getPeer()


class ChannelAddressTests(SynchronousTestCase):
    """
    The speed layer's L{EagerChannel} asks its transport for its addresses
    once.
    """

    def test_addressesOncePerConnection(self) -> None:
        """
        Requests on one connection see the connection's addresses, asked of
        the transport once (the local one is a system call on TCP), not
        once per request.
        """
        seen: list[tuple[Any, Any]] = []

        class _Addresses(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> bytes:
                seen.append((request.getHost(), request.getClientAddress()))
                return b"ok"

        site = GuardedSite(
            _Addresses(),
            reactor=Clock(),
            requestFactory=EagerRequest,
            newChannel=lambda: EagerChannel(EagerWrites()),
        )
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = _CountingTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 80),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 5555),
        )
        protocol.makeConnection(transport)
        asked = transport.asked
        for _ in range(3):
            protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 "), 3)
        self.assertEqual(
            seen,
            [(IPv4Address("TCP", "127.0.0.1", 80), IPv4Address("TCP", "127.0.0.1", 5555))] * 3,
        )
        self.assertLessEqual(transport.asked - asked, 2)


class OneSendTests(SynchronousTestCase):
    """
    With the speed layer, a response with a length leaves with its head in
    one write; the head is never held back.
    """

    def respond(self, code: int, body: bytes, method: bytes = b"GET") -> StringTransport:
        from twisted.internet.task import Clock
        from twisted.web.resource import Resource

        from ai_agent.headends._http import EagerChannel, EagerRequest, GuardedSite

        class Answer(Resource):
            isLeaf = True

            def render(self, request: Any) -> bytes:
                request.setResponseCode(code)
                request.setHeader(b"content-length", b"%d" % len(body))
                return body

        protocol = GuardedSite(
            Answer(),
            requestFactory=EagerRequest,
            newChannel=lambda: EagerChannel(EagerWrites()),
        ).buildProtocol(None)
        channel = protocol._channel
        self.assertIsInstance(channel, EagerChannel)
        channel.callLater = Clock().callLater
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(method + b" /health HTTP/1.1\r\nHost: h\r\n\r\n")
        return transport

    def test_headAndBody(self) -> None:
        """
        The status line, headers and body arrive complete and in order.
        """
        data = self.respond(200, b'{"ok":true}').value()
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK\r\n"), data)
        self.assertIn(
            b"\r\nContent-Length: 11\r\n", data.replace(b"content-length", b"Content-Length")
        )
        self.assertTrue(data.endswith(b'\r\n\r\n{"ok":true}'), data)

    def test_noBody(self) -> None:
        """
        A response without body bytes (a 204, a HEAD) still gets its head
        written when the request is done.
        """
        for code, body, method in ((204, b"", b"GET"), (200, b"abc", b"HEAD")):
            data = self.respond(code, body, method).value()
            self.assertTrue(data.startswith(b"HTTP/1.1 %d " % code), data)
            self.assertTrue(data.endswith(b"\r\n\r\n"), data)


class _RecordingClock(Clock):
    """
    A clock keeping the function of every call it was asked to make,
    cancelled or not.
    """

    def __init__(self) -> None:
        super().__init__()
        self.made: list[Callable[..., Any]] = []

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        self.made.append(callable)
        return super().callLater(delay, callable, *args, **kw)


class DeadlineTimerTests(SynchronousTestCase):
    """
    The request deadline's timer exists only while a request is incomplete
    at the end of a read: a request that arrives in one read makes none.
    """

    def connect(self, eager: bool) -> tuple[_RecordingClock, Any, StringTransport, list[Any]]:
        """
        A site on a L{Clock} (with the speed layer's channel when C{eager})
        whose resource answers C{GET} at once and holds every C{POST} open;
        return the clock, the channel, its transport and the held requests.
        """
        held: list[Any] = []

        class _Answer(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> bytes:
                return b"ok"

            def render_POST(self, request: Any) -> Any:
                held.append(request)
                return NOT_DONE_YET

        clock = _RecordingClock()
        site = GuardedSite(
            _Answer(),
            HTTPPolicy(requestDeadline=10.0),
            reactor=clock,
            **(
                {"requestFactory": EagerRequest, "newChannel": lambda: EagerChannel(EagerWrites())}
                if eager
                else {}
            ),
        )
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return clock, protocol._channel, transport, held

    def deadlines(self, clock: _RecordingClock, channel: Any) -> list[Any]:
        """
        The channel's pending deadline timers.
        """
        return [call for call in clock.getDelayedCalls() if call.func == channel._deadlinePassed]

    def test_wholeRequestsMakeNoTimer(self) -> None:
        """
        A request answered at once and a request held open (a stream), each
        arriving in one read, leave no deadline timer behind, with and
        without the speed layer.
        """
        for eager in (False, True):
            clock, channel, transport, held = self.connect(eager)
            channel.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            self.assertIn(b"HTTP/1.1 200 ", transport.value())
            channel.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}")
            self.assertEqual(len(held), 1)
            made = [f for f in clock.made if f == channel._deadlinePassed]
            self.assertEqual(made, [], f"eager={eager}")

    def test_partialRequestHasDeadline(self) -> None:
        """
        A request whose body is still missing at the end of a read has the
        deadline counted from that read: a 408 and a closed connection when
        it passes; a request completed in time stops it.
        """
        for eager in (False, True):
            clock, channel, transport, held = self.connect(eager)
            clock.advance(5)
            channel.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n")
            (deadline,) = self.deadlines(clock, channel)
            self.assertEqual(deadline.getTime(), 15.0)
            channel.dataReceived(b"{")
            self.assertEqual(self.deadlines(clock, channel), [deadline])
            clock.advance(10)
            self.assertEqual(held, [])
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "), transport.value())
            self.assertTrue(transport.disconnecting)

            clock, channel, transport, held = self.connect(eager)
            channel.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{")
            self.assertEqual(len(self.deadlines(clock, channel)), 1)
            channel.dataReceived(b"}")
            self.assertEqual(len(held), 1)
            self.assertEqual(self.deadlines(clock, channel), [])
            clock.advance(60)
            self.assertFalse(transport.disconnecting)
