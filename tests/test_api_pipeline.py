"""
A new API plugs into the pipeline as a value: a fourth API, defined here
(its request type, encoder and error format), served by L{serve} and by a
JSON-RPC-style handler calling L{runOn}, on the real site; and the run
layer's request-less form (L{runDetached}) with a held runner and a real
pool.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import attrs
import treq
from klein import Klein
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.iweb import IRequest

from ai_agent.accounting import RunLabels
from ai_agent.agentfile import parseAgent
from ai_agent.errors import AgentError, ErrorFormat, ErrorKind, invalidRequest, notFound
from ai_agent.events import ClientToolCall, ContentDelta, Finished, Progress, Usage
from ai_agent.headends._api import (
    API,
    Exchange,
    Headend,
    installErrorHandlers,
    runDetached,
    runOn,
    serve,
)
from ai_agent.headends._http import principalOf
from ai_agent.headends._json import dumps
from ai_agent.headends._site import Mount
from ai_agent.observe import NULL_OBSERVER, Observer
from ai_agent.pool import RunPool
from ai_agent.principals import IMPLICIT
from ai_agent.providers import ChatMessage
from ai_agent.redaction import Redactor
from ai_agent.registry import ServedAgent
from ai_agent.request import RunRequest
from ai_agent.tap import apiMounts
from ai_agent.testing import Reply
from tests._harness import DEFAULT_AGENT, startServer
from tests.mcp_servers import httpClient


@attrs.frozen
class _EchoRequest:
    model: str
    text: str


def _parse(body: bytes) -> _EchoRequest:
    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        raise invalidRequest("'text' must be a string", "text", "invalid_type")
    return _EchoRequest(str(data.get("model", "")), data["text"])


@attrs.frozen
class _EchoErrors:
    """
    The fourth API's envelope: C{{"fault": message}}, a 418 for a full
    queue (so that the status written differs from the neutral one).
    """

    def status(self, error: AgentError) -> int:
        return 418 if error.kind == ErrorKind.OVERLOADED else error.status

    def body(self, error: AgentError) -> bytes:
        return dumps({"fault": error.message})


@attrs.define
class _EchoEncoder:
    """
    The answer's text as C{{"answer": text}} (whole answers only), inside
    a JSON-RPC response when it answers the request with C{rpcId}.
    """

    rpcId: Any = None
    _text: list[str] = attrs.field(factory=list)

    def open(self) -> bytes:
        return b""

    def content(self, text: str) -> bytes | None:
        self._text.append(text)
        return None

    def reasoning(self, text: str) -> bytes | None:
        return None

    def progress(self, event: Progress) -> bytes | None:
        return None

    def toolCall(self, call: ClientToolCall) -> bytes | None:
        return None

    def usage(self, usage: Usage) -> bytes | None:
        return None

    def finish(self, finished: Finished) -> bytes:
        return b""

    def error(self, error: AgentError) -> bytes:
        return _EchoErrors().body(error)

    def body(self, finished: Finished) -> bytes:
        answer = {"answer": "".join(self._text)}
        if self.rpcId is None:
            return dumps(answer)
        return dumps({"jsonrpc": "2.0", "id": self.rpcId, "result": answer})


def _runRequest(exchange: Exchange[_EchoRequest]) -> RunRequest:
    return RunRequest((ChatMessage("user", exchange.parsed.text),), labels=exchange.labels)


ECHO = API(
    name="echo",
    route="/v1/echo",
    parse=_parse,
    model=lambda parsed: parsed.model,
    stream=lambda parsed: False,
    errors=_EchoErrors(),
    unknownModel=lambda model, served: notFound(f"no agent {model!r}", "model_not_found"),
    newId=lambda: "echo_1",
    labels=lambda request, parsed, requestId: RunLabels(requestId=requestId, stream=False),
    toRunRequest=_runRequest,
    encoder=lambda exchange: _EchoEncoder(),
    headers=lambda exchange: {b"x-echo-id": exchange.labels.requestId.encode()},
)


@attrs.define(slots=False)
class _EchoHeadend(Headend):
    app: ClassVar[Klein] = Klein()

    registry: Any
    runner: Any
    pool: RunPool
    reactor: Any
    observer: Observer = NULL_OBSERVER
    streamHeadGrace: float = 10.0
    clientStallTimeout: float = 30.0
    maxAnswer: int = 1_000_000
    redactor: Redactor | None = None
    bodyGate: Any = None
    threadPool: Any = None

    installErrorHandlers(app)

    def _errorFormat(self, request: IRequest) -> ErrorFormat:
        return ECHO.errors

    @app.route("/v1/echo", methods=["POST"])
    async def echo(self, request: IRequest) -> bytes | None:
        return await serve(ECHO, self, request)

    @app.route("/v1/echo/rpc", methods=["POST"])
    async def rpc(self, request: IRequest) -> bytes | None:
        # A JSON-RPC method: the handler reads the envelope, runOn runs it
        # with an encoder that writes the JSON-RPC response.
        envelope = json.loads(request.content.read())
        params = envelope["params"]
        api = attrs.evolve(ECHO, encoder=lambda exchange: _EchoEncoder(envelope["id"]))
        parsed = _EchoRequest(params["model"], params["text"])
        return await runOn(api, self, request, parsed, principalOf(request))


def _mounts(runtime: Any, pool: RunPool, reactor: Any) -> list[Mount]:
    headend = _EchoHeadend(runtime.registry, runtime.runner, pool, reactor)
    return [*apiMounts(runtime, pool, reactor), Mount(b"/v1/echo", headend.app, ECHO.errors)]


class FourthAPITests(TestCase):
    """
    An API defined as a value, on the real site with the fake upstream.
    """

    async def test_servedAndRunOn(self) -> None:
        """
        The fourth API answers through L{serve} with its encoder and
        headers, through a JSON-RPC handler calling L{runOn} with the same
        run, and its errors (bad body, unknown model) in its own envelope
        with their statuses; the upstream saw the text of each run.
        """
        server = await startServer(self, mounts=_mounts)
        client = httpClient(self)
        base = server.baseUrl[: -len("/v1")]

        async def post(path: str, body: Any) -> tuple[int, Any, Any]:
            response = await client.post(
                base + path,
                json.dumps(body).encode(),
                headers={"content-type": ["application/json"]},
            ).addTimeout(10, reactor)
            return response.code, response.headers, json.loads(await treq.content(response))

        server.upstream.script(Reply(content="one two"))
        status, headers, body = await post("/v1/echo", {"model": "agent", "text": "first"})
        self.assertEqual((status, body), (200, {"answer": "one two"}))
        self.assertEqual(headers.getRawHeaders(b"x-echo-id"), [b"echo_1"])

        server.upstream.script(Reply(content="three"))
        rpc = {"jsonrpc": "2.0", "id": 7, "params": {"model": "agent", "text": "second"}}
        status, _, body = await post("/v1/echo/rpc", rpc)
        self.assertEqual(
            (status, body), (200, {"jsonrpc": "2.0", "id": 7, "result": {"answer": "three"}})
        )

        status, _, body = await post("/v1/echo", {"model": "agent", "text": 3})
        self.assertEqual((status, body), (400, {"fault": "'text' must be a string"}))
        status, _, body = await post("/v1/echo", {"model": "nope", "text": "x"})
        self.assertEqual((status, body), (404, {"fault": "no agent 'nope'"}))

        sent = [json.dumps(request.body) for request in server.upstream.requests]
        self.assertEqual(len(sent), 2)
        self.assertIn("first", sent[0])
        self.assertIn("second", sent[1])


@attrs.define
class _HeldRunner:
    """
    A runner whose runs end when the test says: each run's sink and
    Deferred are kept; a cancelled run's Deferred fails with
    L{CancelledError}.
    """

    runs: list[tuple[RunRequest, Any, Deferred[Finished]]] = attrs.Factory(list)
    cancelled: list[RunRequest] = attrs.Factory(list)

    def run(self, spec: Any, run: RunRequest, sink: Any) -> Deferred[Finished]:
        started: Deferred[Finished] = Deferred(lambda _: self.cancelled.append(run))
        self.runs.append((run, sink, started))
        return started


@attrs.define
class _DetachedHost:
    """
    What L{runDetached} needs of a headend: a held runner, a real pool of
    one slot on a L{MemoryReactorClock}, a small answer bound, one secret.
    """

    runner: _HeldRunner
    pool: RunPool
    reactor: MemoryReactorClock
    maxAnswer: int = 100
    redactor: Redactor = Redactor(("sk-detached-secret",))

    def _redactor(self) -> Redactor:
        return self.redactor


def _detachedHost() -> _DetachedHost:
    clock = MemoryReactorClock()
    return _DetachedHost(_HeldRunner(), RunPool(clock, concurrency=1, maxQueue=4), clock)


_AGENT = ServedAgent("agent", parseAgent(DEFAULT_AGENT, "/x/agent.ai"), 0)
_RUN = RunRequest((ChatMessage("user", "hi"),), labels=RunLabels(requestId="mcp"))
_DONE = Finished("stop", Usage(0, 0))


class RunDetachedTests(SynchronousTestCase):
    """
    The run layer without an HTTP request (L{runDetached}), with a held
    runner and a real pool: what MCP's C{tools/call} and A2A's tasks get.
    """

    def test_runAndRelease(self) -> None:
        """
        A run starts once it has the pool's slot (C{started} is called
        then), its events reach the sink with the configured secret taken
        out (the text held back for a split secret flushed at the end), and
        the slot is given back when it ends.
        """
        host = _detachedHost()
        seen: list[Any] = []
        started: list[bool] = []
        d = Deferred.fromCoroutine(
            runDetached(host, _AGENT, _RUN, IMPLICIT, seen.append, lambda: started.append(True))
        )
        self.assertEqual((started, host.pool.activeRuns), ([True], 1))
        [(run, sink, running)] = host.runner.runs
        self.assertIs(run, _RUN)
        sink(ContentDelta("key sk-detached-"))
        sink(ContentDelta("secret ok sk-det"))
        running.callback(_DONE)
        self.assertIs(self.successResultOf(d), _DONE)
        text = "".join(event.text for event in seen if isinstance(event, ContentDelta))
        self.assertEqual(text, "key [redacted] ok sk-det")
        self.assertEqual(host.pool.activeRuns, 0)

    def test_cancelStopsRun(self) -> None:
        """
        Cancelling the run's Deferred cancels the runner's run and gives
        the slot back; cancelled while queued, the run never starts.
        """
        host = _detachedHost()
        first = Deferred.fromCoroutine(runDetached(host, _AGENT, _RUN, IMPLICIT, lambda e: None))
        queued = Deferred.fromCoroutine(runDetached(host, _AGENT, _RUN, IMPLICIT, lambda e: None))
        self.assertEqual((len(host.runner.runs), host.pool.queuedRuns), (1, 1))
        queued.cancel()
        self.failureResultOf(queued, CancelledError)
        self.assertEqual((len(host.runner.runs), host.pool.queuedRuns), (1, 0))
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertEqual(host.runner.cancelled, [_RUN])
        self.assertEqual(host.pool.activeRuns, 0)

    def test_answerBound(self) -> None:
        """
        An answer past the host's bound stops the run on the next turn of
        the reactor, and the run fails with C{answer_too_large} (not the
        cancellation); the slot is given back.
        """
        host = _detachedHost()
        d = Deferred.fromCoroutine(runDetached(host, _AGENT, _RUN, IMPLICIT, lambda e: None))
        [(_, sink, running)] = host.runner.runs
        sink(ContentDelta("x" * 101))
        self.assertNoResult(d)
        host.reactor.advance(0)
        self.assertTrue(running.called)
        error = self.failureResultOf(d, AgentError).value
        self.assertEqual(error.code, "answer_too_large")
        self.assertEqual(host.pool.activeRuns, 0)

    def test_poolStopsRunAtShutdown(self) -> None:
        """
        A run still going when the drain time is over is stopped with the
        pool's error, which the caller gets (an MCP result, an A2A task's
        failure), not a bare cancellation.
        """
        host = _detachedHost()
        d = Deferred.fromCoroutine(runDetached(host, _AGENT, _RUN, IMPLICIT, lambda e: None))
        drained = host.pool.drain(5)
        host.reactor.advance(5)
        error = self.failureResultOf(d, AgentError).value
        self.assertIn("shut down", error.message)
        self.successResultOf(drained)
        self.assertEqual(host.pool.activeRuns, 0)
