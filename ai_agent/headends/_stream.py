# -*- test-case-name: tests.test_stream -*-
"""
A run's life as an HTTP response, once for every API: each headend brings a
L{RunEncoder} that turns the neutral run events into its wire format, and
L{RunResponse} does the rest.

For a streamed answer: nothing is sent while the run is queued or silent,
so that a failure before the first event can still be a real HTTP status;
the response starts with the first frame the encoder makes (or when the
head grace runs out, so that a slow agent does not look dead); a failure
after that ends the stream in-band; a shutdown stops the run with the
pool's error, as a status or in-band; a client that goes away cancels the
run (Klein cancels the route's Deferred) and later frames are dropped.
For a whole answer: the encoder's body once the run finished.
"""

from __future__ import annotations

from typing import Callable, Protocol, cast

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.server import Request

from ai_agent.errors import AgentError, ErrorKind
from ai_agent.events import (
    PROGRESS_TYPES,
    ClientToolCall,
    ContentDelta,
    Event,
    EventSink,
    Finished,
    ModelAnswering,
    Progress,
    ReasoningDelta,
    Usage,
)
from ai_agent.flow import CLIENT_STALL_TIMEOUT, Flow, currentFlow
from ai_agent.headends._http import GuardedChannel
from ai_agent.headends._sse import SSEStream
from ai_agent.limits import MAX_RUN_ANSWER, AnswerCap
from ai_agent.observe import RequestScope, requestScope
from ai_agent.pool import Slot
from ai_agent.redaction import RedactingSink, Redactor, safeError

log = Logger()

#: The response header naming the model (C{provider/model}) that answered.
MODEL_HEADER = b"x-ai-agent-model"

#: Starts a run whose events go to the given sink.
StartRun = Callable[[EventSink], "Deferred[Finished]"]


class RunEncoder(Protocol):
    """
    One API's encoding of one run.  Each method returns the bytes to send
    for what happened (L{None} or C{b""} for nothing); an encoder also
    keeps what it needs to write the whole answer for L{body}.
    """

    def open(self) -> bytes:
        """
        The first frames of a stream, sent when it begins.
        """
        ...

    def content(self, text: str) -> bytes | None:
        """
        A piece of the answer.
        """
        ...

    def reasoning(self, text: str) -> bytes | None:
        """
        A piece of the model's reasoning.
        """
        ...

    def progress(self, event: Progress) -> bytes | None:
        """
        Something the agent did (a tool call, a retry, a sub-agent's
        progress).
        """
        ...

    def toolCall(self, call: ClientToolCall) -> bytes | None:
        """
        A call of one of the client's tools, handed back.
        """
        ...

    def usage(self, usage: Usage) -> bytes | None:
        """
        Tokens spent since the last L{Usage} event.
        """
        ...

    def finish(self, finished: Finished) -> bytes:
        """
        The last frames of a stream whose run finished.
        """
        ...

    def error(self, error: AgentError) -> bytes:
        """
        The last frames of a stream whose run failed after it began.
        """
        ...

    def body(self, finished: Finished) -> bytes:
        """
        The whole answer, for a client that did not stream.
        """
        ...


class KeepAliveEncoder(RunEncoder, Protocol):
    """
    An encoder whose API has a frame that says nothing but "still here"
    (Anthropic's C{ping}), sent when a started stream has been silent for
    L{RunResponse.keepAlive} seconds (while tools run, say).
    """

    def keepAlive(self) -> bytes:
        """
        The frame to send after a silence.
        """
        ...


def internalError() -> AgentError:
    """
    What a client is told of a bug: the same as the web layer's 500.
    """
    return AgentError("internal server error", 500, ErrorKind.SERVER, "internal_error")


def _nothing() -> None:
    pass


@attrs.define(eq=False)
class RunResponse:
    """
    Answers one request with one run, through C{encoder}.

    @ivar headGrace: seconds a stream may stay silent before its head is
        sent anyway.
    @ivar headers: extra response headers (the request id, ...).
    @ivar describe: names the run in log lines.
    @ivar redactor: the configured secrets, kept out of everything written.
    @ivar maxAnswer: the most characters of text, reasoning and progress
        the run may send before it is stopped with C{answer_too_large}.
    @ivar stallTimeout: seconds a streaming client may read nothing before
        it is dropped and the run stopped (see L{ai_agent.flow}).
    @ivar beforeFinish: called with the run's end once every event reached
        the encoder and before the last frames or the body are made (the
        Responses API stores the response here); a failure it raises is
        the run's failure.
    @ivar keepAlive: seconds a started stream may stay silent before the
        encoder's C{keepAlive} frame is sent (L{None}: never; the encoder
        must then be a L{KeepAliveEncoder}).
    """

    request: IRequest
    reactor: IReactorTime
    encoder: RunEncoder
    slot: Slot
    headGrace: float = 10.0
    headers: dict[bytes, bytes] = attrs.field(factory=dict)
    describe: str = "run"
    redactor: Redactor = attrs.field(factory=Redactor, kw_only=True)
    maxAnswer: int = attrs.field(default=MAX_RUN_ANSWER, kw_only=True)
    stallTimeout: float = attrs.field(default=CLIENT_STALL_TIMEOUT, kw_only=True)
    beforeFinish: Callable[[Finished], Deferred[None]] | None = attrs.field(
        default=None, kw_only=True
    )
    keepAlive: float | None = attrs.field(default=None, kw_only=True)
    _scope: RequestScope = attrs.field(init=False)
    # The run's state while it goes, on this object rather than in closures
    # (an idle stream keeps every one of them alive for as long as it is
    # held): the run, the error it was stopped with, the SSE stream, the
    # head-grace timer and the keep-alive timer.
    _run: Deferred[Finished] | None = attrs.field(init=False, default=None)
    _stopped: AgentError | None = attrs.field(init=False, default=None)
    _cap: AnswerCap | None = attrs.field(init=False, default=None)
    _stream: SSEStream | None = attrs.field(init=False, default=None)
    _grace: IDelayedCall | None = attrs.field(init=False, default=None)
    _quiet: IDelayedCall | None = attrs.field(init=False, default=None)
    _firstTokenOut: bool = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        # Told of the first piece of the answer and of an in-band failure.
        self._scope = requestScope(self.request)

    def _frame(self, event: Event) -> bytes | None:
        encoder = self.encoder
        if isinstance(event, ModelAnswering):
            # Sent with the head (a stream's first frame, a body's end).
            self.headers[MODEL_HEADER] = event.model.encode("utf-8")
            return None
        if isinstance(event, ContentDelta):
            self._scope.firstToken()
            return encoder.content(event.text)
        if isinstance(event, ReasoningDelta):
            return encoder.reasoning(event.text)
        if isinstance(event, PROGRESS_TYPES):
            return encoder.progress(event)
        if isinstance(event, Usage):
            return encoder.usage(event)
        if isinstance(event, ClientToolCall):
            return encoder.toolCall(event)
        return None

    def _keep(self, event: Event) -> None:
        # Whole answers: the encoder keeps what it needs; no frame is sent.
        self._frame(event)

    def _start(self, start: StartRun, sink: EventSink) -> Deferred[Finished]:
        """
        Start the run, stoppable by the pool at shutdown and by the answer
        cap.
        """
        cap = self._cap = AnswerCap(RedactingSink(self.redactor, sink), self.maxAnswer)
        run = self._run = start(cap)
        self.slot.onAbort = self._abort
        cap.onOver = self._over
        return run

    def _abort(self, error: AgentError) -> None:
        # The pool stops the run at shutdown.
        if self._stopped is None:
            self._stopped = error
        assert self._run is not None
        self._run.cancel()

    def _over(self) -> None:
        # The answer grew too large: stop the run on the next turn of the
        # reactor (this is called from inside an upstream call's data
        # handling).
        if self._stopped is None:
            assert self._cap is not None and self._run is not None
            self._stopped = self._cap.error()
            self.reactor.callLater(0, self._run.cancel)

    async def complete(self, start: StartRun) -> bytes:
        """
        Run to the end and return the whole answer's body; a failure is
        raised for the route's error handler to answer with its status.
        """
        try:
            return await self._complete(start)
        finally:
            self._letGo()

    def _letGo(self) -> None:
        """
        The run is over: drop the callbacks that point back at this
        response (from the pool's slot, the answer cap, the stream's flow
        control), so that it is freed by reference counting, not left in
        reference cycles for the garbage collector.
        """
        self.slot.onAbort = None
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.onOver = _nothing
        if self._stream is not None:
            self._stream.onPause = self._stream.onResume = None

    async def _complete(self, start: StartRun) -> bytes:
        run = self._start(start, self._keep)
        try:
            finished = await run
        except CancelledError:
            if self._stopped is not None:
                raise self._stopped from None
            raise
        assert self._cap is not None
        cast(RedactingSink, self._cap.sink).flush()
        if self.beforeFinish is not None:
            await self.beforeFinish(finished)
        self.request.setHeader(b"content-type", b"application/json")
        for name, value in self.headers.items():
            self.request.setHeader(name, value)
        body = self.encoder.body(finished)
        # With its length the answer is not chunked, and leaves with its
        # head in one send (GuardedChannel).
        self.request.setHeader(b"content-length", b"%d" % len(body))
        return body

    async def stream(self, start: StartRun) -> None:
        """
        Run, streaming the encoder's frames as Server-Sent Events.  A
        failure before anything was sent is raised (a real status); after,
        it ends the stream in-band.
        """
        try:
            await self._streamRun(start)
        finally:
            self._letGo()

    async def _streamRun(self, start: StartRun) -> None:
        flow = Flow(self.reactor, self.stallTimeout, self._drop)
        stream = self._stream = SSEStream(
            _asRequest(self.request), onPause=flow.pause, onResume=flow.resume
        )
        self._grace = self.reactor.callLater(self.headGrace, self._begin)
        # The run's upstream calls find the flow as they start.
        token = currentFlow.set(flow)
        try:
            run = self._start(start, self._onEvent)
        finally:
            currentFlow.reset(token)
        try:
            finished = await run
        except CancelledError:
            error = self._stopped
            if error is None:
                # The client went away (or the route was cancelled).
                stream.end()
                raise
            if not stream.started:
                raise error from None
            self._endInBand(stream, error)
            return
        except AgentError as error:
            if not stream.started:
                raise
            log.warn(
                "{run} failed mid-stream: {error}",
                run=self.describe,
                error=error.message,
            )
            self._endInBand(stream, error)
            return
        except Exception:
            if not stream.started:
                # The web layer answers 500.
                raise
            # A bug: log it, and end the stream in-band without its text.
            log.failure("{run} crashed mid-stream", run=self.describe)
            self._endInBand(stream, internalError())
            return
        finally:
            flow.close()
            grace, self._grace = self._grace, None
            if grace is not None and grace.active():
                grace.cancel()
            self._silence()
        assert self._cap is not None
        cast(RedactingSink, self._cap.sink).flush()
        if self.beforeFinish is not None:
            try:
                await self.beforeFinish(finished)
            except CancelledError:
                stream.end()
                raise
            except AgentError as error:
                if not stream.started:
                    raise
                self._endInBand(stream, error)
                return
        self._begin()
        self._silence()
        stream.send(self.encoder.finish(finished))
        stream.end()

    def _drop(self) -> None:
        """
        Close the connection of a client that stopped reading; Klein then
        cancels the route, and with it the run.
        """
        transport = getattr(getattr(self.request, "channel", None), "transport", None)
        if transport is not None:
            transport.abortConnection()

    def _onEvent(self, event: Event) -> None:
        frame = self._frame(event)
        if frame:
            self._begin()
            assert self._stream is not None
            self._stream.send(frame)
            self._sent()
            if not self._firstTokenOut and type(event) is ContentDelta:
                # The first token leaves now, not when the rest of the
                # upstream read it came in has been handled.
                self._firstTokenOut = True
                channel = getattr(self.request, "channel", None)
                if isinstance(channel, GuardedChannel):
                    channel.sendQueuedNow()

    def _begin(self) -> None:
        # The stream's head and first frames: with the first frame the
        # encoder makes, when the head grace runs out, or at the end.
        stream = self._stream
        assert stream is not None
        if not stream.started:
            grace, self._grace = self._grace, None
            if grace is not None and grace.active():
                grace.cancel()
            stream.start(self.headers)
            stream.send(self.encoder.open())
            self._sent()

    def _sent(self) -> None:
        # Something went out: the keep-alive silence starts again.
        if self.keepAlive is None:
            return
        quiet = self._quiet
        if quiet is not None and quiet.active():
            quiet.reset(self.keepAlive)
        else:
            self._quiet = self.reactor.callLater(self.keepAlive, self._stayAlive)

    def _stayAlive(self) -> None:
        # Called after a silence: say so, and wait for the next one.
        self._quiet = None
        stream = self._stream
        if self.keepAlive is not None and stream is not None and stream.started:
            stream.send(cast(KeepAliveEncoder, self.encoder).keepAlive())
            self._quiet = self.reactor.callLater(self.keepAlive, self._stayAlive)

    def _silence(self) -> None:
        quiet, self._quiet = self._quiet, None
        if quiet is not None and quiet.active():
            quiet.cancel()

    def _endInBand(self, stream: SSEStream, error: AgentError) -> None:
        self._scope.failedInBand(error.status)
        stream.send(self.encoder.error(safeError(error, self.redactor, inBand=True)))
        stream.end()


def _asRequest(request: IRequest) -> Request:
    assert isinstance(request, Request)
    return request


__all__ = ["KeepAliveEncoder", "RunEncoder", "RunResponse", "StartRun", "internalError"]
