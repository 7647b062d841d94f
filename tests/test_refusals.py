"""
Refusals in the server's log (L{ai_agent.headends._refusals}): every 4xx
answer, from the HTTP guard or from any API's routes, is one log line with
its route, status, code and reason, rate-limited per reason on the injected
clock, and never with the client's key.
"""

from __future__ import annotations

import anthropic
import openai
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import provider

from ai_agent.errors import AgentError, ErrorKind, ProviderError, invalidRequest
from ai_agent.headends._http import APIKeys, HTTPPolicy
from ai_agent.headends._refusals import MAX_ROUTE, RefusalLog
from tests._harness import LiveServer, inThread, startServer
from tests.test_http_guard import _Raw, _request

NAMESPACE = "ai_agent.headends._refusals"


def captureRefusals(testCase: SynchronousTestCase) -> list[LogEvent]:
    """
    The refusal log lines written until C{testCase} ends.
    """
    events: list[LogEvent] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        if event.get("log_namespace") == NAMESPACE:
            events.append(event)

    globalLogPublisher.addObserver(observe)
    testCase.addCleanup(globalLogPublisher.removeObserver, observe)
    return events


class RefusalLogTests(SynchronousTestCase):
    """
    L{RefusalLog} writes one line per 4xx, with a token bucket per reason.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.refusals = RefusalLog(self.clock, burst=3, perSecond=0.5)
        self.events = captureRefusals(self)

    def test_oneLine(self) -> None:
        """
        A refusal is one line at the info level naming the method, the
        route, the status, the code and the reason.
        """
        error = invalidRequest("'messages' is required", "messages", "missing_field")
        self.assertTrue(self.refusals.refused(b"POST", b"/v1/chat/completions", error))
        [event] = self.events
        self.assertEqual(event["log_level"].name, "info")
        self.assertEqual(
            formatEvent(event),
            "refused POST /v1/chat/completions: 400 missing_field: 'messages' is required",
        )
        self.assertEqual((event["status"], event["code"]), (400, "missing_field"))

    def test_onlyClientErrors(self) -> None:
        """
        A 5xx is not a refusal (it is logged where it happens); a 4xx
        without a code is named by its kind.
        """
        self.assertFalse(self.refusals.refused("POST", "/v1/messages", ProviderError("upstream")))
        self.assertFalse(
            self.refusals.refused("GET", "/", AgentError("down", 503, ErrorKind.OVERLOADED))
        )
        self.refusals.refused("GET", "/x", AgentError("no", 403, ErrorKind.PERMISSION))
        [event] = self.events
        self.assertEqual(event["code"], "permission")

    def test_rateLimitedPerReason(self) -> None:
        """
        Past its burst, a reason's lines are dropped until its bucket
        refills on the clock; the next line says how many were left out.
        Another reason has its own bucket.
        """
        error = invalidRequest("bad tool", "tools[0].type", "unsupported_tool")
        written = [self.refusals.refused("POST", "/v1/responses", error) for _ in range(10)]
        self.assertEqual(written, [True] * 3 + [False] * 7)
        # Another reason is not held back by the flood.
        self.assertTrue(
            self.refusals.refused("POST", "/v1/messages", AgentError("k", 401, "authentication"))
        )
        # One token comes back every two seconds.
        self.clock.advance(1.9)
        self.assertFalse(self.refusals.refused("POST", "/v1/responses", error))
        self.clock.advance(0.1)
        self.assertTrue(self.refusals.refused("POST", "/v1/responses", error))
        self.assertEqual(self.events[-1]["dropped"], 8)
        self.assertIn("(8 more like it not logged)", formatEvent(self.events[-1]))
        self.assertEqual(len(self.events), 5)
        # The count starts again after it was reported.
        self.clock.advance(2)
        self.refusals.refused("POST", "/v1/responses", error)
        self.assertEqual(self.events[-1]["dropped"], 0)
        self.assertTrue(formatEvent(self.events[-1]).endswith("bad tool"))

    def test_boundedAndEscaped(self) -> None:
        """
        A route or reason with line breaks or control characters cannot
        forge log lines, a long route is cut, and a secret given (the key
        the request presented) is taken out of the reason.
        """
        route = "/v1/\r\nFAKE 200 OK\x1b[31m" + "a" * 500
        error = invalidRequest("model 'sk-live-123\nFAKE' not found")
        self.refusals.refused(b"POST", route.encode(), error, ("sk-live-123",))
        line = formatEvent(self.events[0])
        self.assertNotIn("\n", line)
        self.assertNotIn("\r", line)
        self.assertNotIn("\x1b", line)
        self.assertNotIn("sk-live-123", line)
        self.assertIn("model '*** FAKE' not found", line)
        self.assertEqual(len(self.events[0]["route"]), MAX_ROUTE)

    def test_reasonsBounded(self) -> None:
        """
        However many distinct reasons arrive, the buckets kept are bounded.
        """
        for index in range(1000):
            self.refusals.refused("GET", "/", AgentError("x", 400, "invalid_request", f"c{index}"))
        self.assertLessEqual(len(self.refusals._buckets), 256)


class LiveRefusalTests(TestCase):
    """
    A real server logs the refusals of the guard and of each API's routes,
    one line each.
    """

    async def setUp(self) -> None:
        self.events = captureRefusals(self)

    async def _raw(self, server: LiveServer, request: bytes) -> bytes:
        raw = _Raw()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.port.getHost().port)
        await connectProtocol(endpoint, raw)
        raw.transport.write(request)
        await raw.waitFor(b"}")
        raw.transport.loseConnection()
        await raw.lost
        return raw.received

    def _lines(self) -> list[str]:
        return [formatEvent(event) for event in self.events]

    async def test_guardRefusals(self) -> None:
        """
        A wrong key (refused before the body) and malformed HTTP are each
        logged once with their route and code; the key presented is in no
        line.
        """
        server = await startServer(self, policy=HTTPPolicy(apiKeys=APIKeys.fromKeys(["k-good"])))
        answer = await self._raw(
            server, _request(headers={b"Authorization": b"Bearer sk-wrong-key-42"})
        )
        self.assertIn(b" 401 ", answer.split(b"\r\n")[0])
        await self._raw(server, b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        lines = self._lines()
        self.assertEqual(len(lines), 2, lines)
        self.assertTrue(
            lines[0].startswith("refused POST /v1/chat/completions: 401 invalid_api_key: "),
            lines[0],
        )
        self.assertTrue(lines[1].startswith("refused GET /health: 400 invalid_http: "), lines[1])
        self.assertNotIn("sk-wrong-key-42", "".join(lines) + repr(self.events))

    async def test_routing(self) -> None:
        """
        An unknown path and a wrong method are refusals too, logged with
        their path.
        """
        server = await startServer(self)
        await self._raw(server, _request(b"", b"/v1/nope", method=b"GET"))
        await self._raw(server, _request(b"", b"/v1/chat/completions", method=b"GET"))
        lines = self._lines()
        self.assertEqual(len(lines), 2, lines)
        self.assertTrue(lines[0].startswith("refused GET /v1/nope: 404 not_found: "), lines[0])
        self.assertTrue(
            lines[1].startswith("refused GET /v1/chat/completions: 405 method_not_allowed: "),
            lines[1],
        )

    async def test_everyAPI(self) -> None:
        """
        A client mistake on Chat Completions, the Responses API and the
        Messages API is one line each, with the API's route and the code
        its envelope carries.
        """
        server = await startServer(self)
        base = f"http://127.0.0.1:{server.port.getHost().port}"
        with self.assertRaises(openai.NotFoundError):
            await inThread(
                server.client().chat.completions.create,
                model="no-such-agent",
                messages=[{"role": "user", "content": "hi"}],
            )
        with self.assertRaises(openai.BadRequestError) as caught:
            await inThread(
                server.client().responses.create,
                model="agent",
                input="hi",
                max_output_tokens=-5,
            )
        responsesCode = caught.exception.code
        messages = anthropic.Anthropic(base_url=base, api_key="k", max_retries=0)
        with self.assertRaises(anthropic.BadRequestError):
            await inThread(
                messages.messages.create,
                model="agent",
                max_tokens=-1,
                messages=[{"role": "user", "content": "hi"}],
            )
        lines = self._lines()
        self.assertEqual(len(lines), 3, lines)
        self.assertTrue(
            lines[0].startswith("refused POST /v1/chat/completions: 404 model_not_found: "),
            lines[0],
        )
        self.assertIn("no-such-agent", lines[0])
        self.assertTrue(
            lines[1].startswith(f"refused POST /v1/responses: 400 {responsesCode}: "), lines[1]
        )
        self.assertTrue(lines[2].startswith("refused POST /v1/messages: 400 "), lines[2])
        self.assertIn("max_tokens", lines[2])
        self.assertEqual(server.upstream.requests, [])
