# -*- test-case-name: tests.test_headend_openai,tests.test_headend_anthropic -*-
"""
An API is a value; one pipeline serves every API.

Each API (Chat Completions, Messages, Responses; next MCP and A2A) is
described once, as an L{API}: its name (the C{headend} label of the
metrics), how a body becomes its parsed request, how a parsed request
becomes the neutral L{RunRequest}, its encoder (a
L{ai_agent.headends._stream.RunEncoder}), its error format and the 404 for
an unknown model, its id prefix and response headers, and optional hooks
(before the run: the Responses history; before finishing: the Responses
store).  The pipeline is in two layers, so that a JSON-RPC method handler
(MCP's C{tools/call}, A2A's C{SendMessage}) can use the second alone:

  - L{parseBody}, the HTTP part: a small body is parsed on the reactor, a
    large one through the L{BodyGate} (read and parsed in a thread, one at
    a time); the hostile-input pre-scan is the parser's first step;
  - L{runOn}, the run part: the agent resolved for the principal (an agent
    the key may not use is a 404 as unknown), labels, the run request, the
    encoder, a slot of the pool, L{RunResponse} (streamed or whole), the
    slot released;

and L{serve} is both, observed (counted and timed under the status the
client was actually answered with: the API's L{ErrorFormat} decides it, so
a full queue an Anthropic client sees as a 529 is counted as a 529).

The run part has a request-less form, L{runDetached}, for a run that no
HTTP response carries: MCP's C{tools/call} (over Streamable HTTP, and
over stdio, where there is no request at all) and A2A's tasks (which
outlive the request that started them).  It owns what L{runOn} and
L{RunResponse} own for an HTTP answer: the key's and agent's limits, a
slot of the pool (released whatever happens), the configured secrets
taken out of every event, the bound on the answer, the pool's stop at
shutdown and cancellation; the caller gives an event sink and reads the
run's end or its error.  No headend drives the runner or the pool itself.

A new API adds three things: its request types (with the parser), its
encoder, its error format; it builds an L{API} from them and routes its
path to C{serve(api, host, request)} (or, for a run apart from any
response, calls L{runDetached} with its own sink).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Generic, Protocol, TypeVar

import attrs
from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from ai_agent.accounting import RunLabels
from ai_agent.errors import AgentError, ErrorFormat
from ai_agent.events import Event, EventSink, Finished
from ai_agent.headends._answers import (
    configuredRedactor,
    unknownEndpoint,
    writeError,
    wrongMethod,
)
from ai_agent.headends._bodies import BodyGate
from ai_agent.headends._http import principalOf
from ai_agent.headends._quota import admitted
from ai_agent.headends._request import OFF_REACTOR_THRESHOLD
from ai_agent.headends._stream import RunEncoder, RunResponse
from ai_agent.limits import AnswerCap
from ai_agent.observe import Observer, requestScope
from ai_agent.pool import RunPool
from ai_agent.principals import Principal, resolveFor, visibleIds
from ai_agent.reactors import IReactorTimeAndThreads
from ai_agent.redaction import RedactingSink, Redactor
from ai_agent.registry import AgentRegistry, ServedAgent
from ai_agent.request import RunRequest
from ai_agent.session import SessionRunner

P = TypeVar("P")


class Host(Protocol):
    """
    What the pipeline needs of the headend serving an API: its (reloadable)
    registry and runner, the pool, the reactor, the configured bounds, the
    observer, the redactor and the body gate.
    """

    registry: AgentRegistry
    runner: SessionRunner
    pool: RunPool
    reactor: IReactorTimeAndThreads
    streamHeadGrace: float
    clientStallTimeout: float
    maxAnswer: int
    observer: Observer

    def _redactor(self) -> Redactor: ...

    def _bodyGate(self) -> BodyGate: ...


@attrs.frozen
class Exchange(Generic[P]):
    """
    One request on its way to a run: what the API's functions are given.

    @ivar parsed: the API's parsed request.
    @ivar agent: the agent it names, visible to C{principal}.
    @ivar labels: the run's labels (its C{requestId} is the API's id).
    @ivar created: the reactor's time when the run was prepared, in seconds.
    @ivar state: what the API's C{beforeRun} hook found (the Responses
        history, its store), or L{None}.
    """

    request: IRequest
    parsed: P
    agent: ServedAgent
    principal: Principal
    labels: RunLabels
    created: float
    state: Any = None


#: Given an exchange and its encoder, what to call with the run's end
#: (L{None}: nothing for this exchange).
_Keeper = Callable[[Exchange[P], RunEncoder], Callable[[Finished], Deferred[None]] | None]


@attrs.frozen
class API(Generic[P]):
    """
    One API served by the pipeline, as data.

    @ivar name: the C{headend} label of its metrics.
    @ivar route: the route label of its metrics (its path).
    @ivar parse: a body (bytes) as the API's parsed request; raises an
        L{AgentError} (400) in the API's terms.
    @ivar parseLarge: the same for a body parsed in a thread (it may do
        more work there), or L{None} for C{parse}.
    @ivar model: the model (agent) a parsed request names.
    @ivar stream: whether a parsed request asks for a stream.
    @ivar errors: the API's error envelope and status mapping.
    @ivar unknownModel: the 404 for a model no agent visible to the key is
        served under, given the name and the ids served.
    @ivar newId: a new response id (with the API's prefix).
    @ivar labels: the run's labels for a request, given its new id.
    @ivar toRunRequest: the neutral run request of an exchange.
    @ivar encoder: the encoder of an exchange.
    @ivar headers: the response headers of an exchange (the request id).
    @ivar beforeRun: an asynchronous hook given the exchange before the
        run request is made; returns the exchange's C{state}.
    @ivar beforeFinish: given the exchange and its encoder, the function
        L{RunResponse} calls with the run's end before the last frames (the
        Responses store), or L{None}.
    @ivar keepAlive: seconds a started stream may stay silent before the
        encoder's keep-alive frame, or L{None}.
    """

    name: str
    route: str
    parse: Callable[[bytes], P]
    model: Callable[[P], str]
    stream: Callable[[P], bool]
    errors: ErrorFormat
    unknownModel: Callable[[str, list[str]], AgentError]
    newId: Callable[[], str]
    labels: Callable[[IRequest, P, str], RunLabels]
    toRunRequest: Callable[[Exchange[P]], RunRequest]
    encoder: Callable[[Exchange[P]], RunEncoder]
    headers: Callable[[Exchange[P]], dict[bytes, bytes]]
    parseLarge: Callable[[bytes], P] | None = None
    beforeRun: Callable[[Exchange[P]], Awaitable[Any]] | None = None
    beforeFinish: _Keeper[P] | None = None
    keepAlive: float | None = None


class Headend:
    """
    What every headend (an attrs class with C{slots=False}) shares: the
    redactor of the configured secrets and the body gate, each made once
    when first needed, and the writing of an error in the API's format
    (C{_errorFormat}, which each headend gives).  Its Klein error handlers
    come from L{installErrorHandlers}.
    """

    runner: SessionRunner
    reactor: IReactorTimeAndThreads
    redactor: Redactor | None
    bodyGate: BodyGate | None
    threadPool: Any

    def _redactor(self) -> Redactor:
        """
        The configured secrets to keep out of every response (by default
        those of the runner's configuration).
        """
        if self.redactor is None:
            self.redactor = configuredRedactor(self.runner)
        return self.redactor

    def _bodyGate(self) -> BodyGate:
        """
        The gate large bodies are read and parsed through, in a thread of
        C{threadPool} (by default the reactor's).
        """
        if self.bodyGate is None:
            if self.threadPool is None:
                self.threadPool = self.reactor.getThreadPool()
            self.bodyGate = BodyGate(self.reactor, self.threadPool)
        return self.bodyGate

    def _errorFormat(self, request: IRequest) -> ErrorFormat:
        """
        The error format of C{request}'s answer (the API's).
        """
        raise NotImplementedError

    def _errorBody(self, request: IRequest, error: AgentError) -> bytes:
        """
        Answer C{request} with C{error} in its error format (L{writeError}:
        status, headers, body, secrets redacted).
        """
        return writeError(request, error, self._errorFormat(request), self._redactor())


def installErrorHandlers(app: Klein, hint: Callable[[IRequest], str] | None = None) -> None:
    """
    Give a headend's Klein C{app} its error handlers, the same for every
    API: an L{AgentError} raised by a route, a path no route serves (404,
    with C{hint}'s advice appended) and a route asked with another method
    (405), each written by L{Headend._errorBody}.
    """

    @app.handle_errors(AgentError)
    def agentError(self: Headend, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, AgentError)
        return self._errorBody(request, error)

    @app.handle_errors(NotFound)
    def notFound(self: Headend, request: IRequest, failure: Failure) -> bytes:
        advice = "" if hint is None else hint(request)
        return self._errorBody(request, unknownEndpoint(request, advice))

    @app.handle_errors(MethodNotAllowed)
    def badMethod(self: Headend, request: IRequest, failure: Failure) -> bytes:
        return self._errorBody(request, wrongMethod(request, failure))


async def parseBody(api: API[P], host: Host, request: IRequest) -> P:
    """
    The HTTP part of the pipeline: C{request}'s body as C{api}'s parsed
    request.  A small body is parsed here, on the reactor; a large one
    would hold up every other stream while parsed, so it is read and
    parsed in a thread, one at a time (the L{BodyGate}).

    @raise AgentError: the body is not a valid request (in the API's terms).
    """
    content = request.content
    content.seek(0, 2)
    size = content.tell()
    content.seek(0)
    if size < OFF_REACTOR_THRESHOLD:
        return api.parse(content.read())
    return await host._bodyGate().parse(content, api.parseLarge or api.parse)


def resolveAgent(api: API[P], host: Host, principal: Principal, model: str) -> ServedAgent:
    """
    The agent C{model} names, as C{principal} may see it.

    @raise AgentError: the API's 404 for an unknown model (an agent the
        key may not use is unknown to it).
    """
    agent = resolveFor(host.registry, principal, model)
    if agent is None:
        raise api.unknownModel(model, visibleIds(host.registry, principal))
    return agent


async def runOn(
    api: API[P], host: Host, request: IRequest, parsed: P, principal: Principal
) -> bytes | None:
    """
    The run part of the pipeline: run the agent C{parsed} names for
    C{principal} and answer C{request} with it through the API's encoder,
    streamed (returns L{None} once the stream ended) or whole (returns the
    body).  The run holds a slot of the pool while it goes.

    The body returned is the whole answer (L{RunResponse} has set its
    headers): a JSON-RPC handler gives C{api} an encoder that writes its
    whole response, envelope included (C{attrs.evolve(api, encoder=...)}
    with the request's id), rather than wrapping what comes back.

    @raise AgentError: an unknown model, a full queue, a run that failed
        before anything was sent.
    """
    agent = resolveAgent(api, host, principal, api.model(parsed))
    requestScope(request).setAgent(agent.id)
    labels = api.labels(request, parsed, api.newId())
    exchange = Exchange(request, parsed, agent, principal, labels, host.reactor.seconds())
    if api.beforeRun is not None:
        exchange = attrs.evolve(exchange, state=await api.beforeRun(exchange))
    run = attrs.evolve(api.toRunRequest(exchange), owner=principal.name)
    encoder = api.encoder(exchange)
    headers = api.headers(exchange)
    beforeFinish = None if api.beforeFinish is None else api.beforeFinish(exchange, encoder)
    # The key's and agent's limits, then a slot in the key's turn.
    admission, slot = await admitted(
        request, host.pool, principal, agent.id, anthropic=api.name == "anthropic"
    )
    try:
        response = RunResponse(
            request,
            host.reactor,
            encoder,
            slot,
            host.streamHeadGrace,
            headers,
            f"{labels.requestId}: agent {agent.id}",
            redactor=host._redactor(),
            maxAnswer=host.maxAnswer,
            stallTimeout=host.clientStallTimeout,
            beforeFinish=beforeFinish,
            keepAlive=api.keepAlive,
        )
        runner = host.runner
        # A chat UI's background task is one direct call, not the loop.
        start = runner.run if labels.task is None else runner.runDirect

        def begin(events: EventSink) -> Deferred[Finished]:
            return start(agent.spec, run, admission.meter(events))

        if api.stream(parsed):
            await response.stream(begin)
            return None
        return await response.complete(begin)
    finally:
        slot.release()
        admission.release()


class RunHost(Protocol):
    """
    What a run apart from any HTTP request needs of its headend: the
    runner, the pool, the reactor, the bound on an answer and the
    redactor.
    """

    @property
    def runner(self) -> SessionRunner: ...

    @property
    def pool(self) -> RunPool: ...

    @property
    def reactor(self) -> IReactorTime: ...

    @property
    def maxAnswer(self) -> int: ...

    def _redactor(self) -> Redactor: ...


def _nothing() -> None:
    pass


async def runDetached(
    host: RunHost,
    agent: ServedAgent,
    run: RunRequest,
    principal: Principal,
    sink: Callable[[Event], None],
    started: Callable[[], None] | None = None,
) -> Finished:
    """
    The run part of the pipeline without an HTTP request: run C{agent} on
    C{run} (its labels included) for C{principal}, its events to C{sink}
    with the configured secrets taken out (the answer's text is flushed to
    C{sink} before this returns), within the key's and agent's limits and
    in a slot of the pool held until the run ends.  C{started} is called
    once the run has its slot, as it starts.

    Cancelling the Deferred of this coroutine stops the run (in the queue
    or upstream) with L{CancelledError}.

    @return: the run's end.
    @raise AgentError: a limit reached or the queue full (before the run
        starts; C{retryAfter} set), the run's failure, the answer grown past
        C{host.maxAnswer} (C{answer_too_large}), the pool's error when it
        stopped the run at shutdown.
    """
    admission, slot = await admitted(None, host.pool, principal, agent.id)
    redacting = RedactingSink(host._redactor(), sink)
    cap = AnswerCap(redacting, host.maxAnswer)
    stopped: list[AgentError] = []
    try:
        if started is not None:
            started()
        running = host.runner.run(agent.spec, run, admission.meter(cap))

        def abort(error: AgentError) -> None:
            # The pool stops the run at shutdown.
            if not stopped:
                stopped.append(error)
            running.cancel()

        def over() -> None:
            # Called from inside an upstream read: stop on the next turn.
            if not stopped:
                stopped.append(cap.error())
                host.reactor.callLater(0, running.cancel)

        slot.onAbort = abort
        cap.onOver = over
        try:
            finished = await running
        except CancelledError:
            if stopped:
                raise stopped[0] from None
            raise
        if stopped:
            # Over the cap: the run ended before the cancel reached it.
            raise stopped[0]
        redacting.flush()
        return finished
    finally:
        # Nothing that points back at this run is left behind.
        slot.onAbort = None
        cap.onOver = _nothing
        slot.release()
        admission.release()


async def observed(
    host: Host,
    request: IRequest,
    name: str,
    route: str,
    errors: ErrorFormat,
    work: Callable[[], Awaitable[P]],
) -> P:
    """
    C{work}'s result, with the request counted and timed under the status
    it was answered with: 200, 499 when the client went away, an error's
    status as C{errors} writes it (a 529 to an Anthropic client for a full
    queue), 500 for a bug.  The request's span is current while it runs
    (the agent runs it starts are its children).
    """
    scope = host.observer.request(name, route, request)
    # Every step of a coroutine driven by Twisted runs in the one copy of
    # the context it started with: the span made current here stays
    # current for the route, and only for it.
    activation = scope.activate()
    activation.__enter__()
    try:
        result = await work()
    except CancelledError:
        scope.end(499)
        raise
    except AgentError as error:
        scope.end(errors.status(error))
        raise
    except BaseException:
        scope.end(500)
        raise
    finally:
        activation.__exit__(None, None, None)
    scope.end(200)
    return result


async def serve(api: API[P], host: Host, request: IRequest) -> bytes | None:
    """
    The route of every API's run endpoint: parse the body (L{parseBody}),
    run it for the request's principal (L{runOn}), observed under the
    status written (L{observed}).  Errors are raised for the headend's
    Klein error handler, which writes them in C{api.errors}.
    """

    async def work() -> bytes | None:
        parsed = await parseBody(api, host, request)
        return await runOn(api, host, request, parsed, principalOf(request))

    return await observed(host, request, api.name, api.route, api.errors, work)


__all__ = [
    "API",
    "Exchange",
    "Headend",
    "Host",
    "installErrorHandlers",
    "observed",
    "parseBody",
    "RunHost",
    "resolveAgent",
    "runDetached",
    "runOn",
    "serve",
]
