"""
L{ai_agent.headends._stream.RunResponse}: a run's life as an HTTP response,
the same for every API, driven by an encoder; tested on a memory clock and
a string transport (no sockets, no real time).
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from ai_agent.errors import AgentError, ErrorKind
from ai_agent.events import (
    ClientToolCall,
    ContentDelta,
    EventSink,
    Finished,
    FinishReason,
    Progress,
    ReasoningDelta,
    ToolStarted,
    Usage,
    progressText,
)
from ai_agent.headends._stream import RunResponse
from ai_agent.pool import Slot


@attrs.define
class _Encoder:
    """
    An encoder whose frames name what they encode.
    """

    kept: list[str] = attrs.field(factory=list)

    def open(self) -> bytes:
        return b"open;"

    def content(self, text: str) -> bytes:
        self.kept.append(text)
        return b"content:" + text.encode() + b";"

    def reasoning(self, text: str) -> bytes | None:
        return None if text == "hidden" else b"reasoning:" + text.encode() + b";"

    def progress(self, event: Progress) -> bytes:
        return b"progress:" + progressText(event).strip().encode() + b";"

    def usage(self, usage: Usage) -> None:
        return None

    def toolCall(self, call: ClientToolCall) -> bytes:
        return b"call:" + call.name.encode() + b";"

    def finish(self, finished: Finished) -> bytes:
        return b"finish:" + finished.reason.encode() + b";"

    def error(self, error: AgentError) -> bytes:
        return b"error:" + error.message.encode() + b";"

    def body(self, finished: Finished) -> bytes:
        return ("".join(self.kept) + "|" + finished.reason).encode()


@attrs.define
class _Run:
    """
    A run the test drives: it keeps the sink it was given and a Deferred
    the test fires.
    """

    sink: EventSink | None = None
    cancelled: bool = False
    result: Deferred[Finished] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        def cancel(d: Deferred[Finished]) -> None:
            self.cancelled = True

        self.result = Deferred(cancel)

    def __call__(self, sink: EventSink) -> Deferred[Finished]:
        self.sink = sink
        return self.result

    def emit(self, *events: Any) -> None:
        assert self.sink is not None
        for event in events:
            self.sink(event)


FINISHED = Finished(FinishReason.END, Usage(1, 2))


class RunResponseTests(SynchronousTestCase):
    """
    The lifecycle of a streamed and of a whole answer.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.transport = StringTransport()
        self.channel = HTTPChannel()
        self.channel.site = Site(Resource())  # type: ignore[attr-defined]
        self.channel.makeConnection(self.transport)
        self.request = Request(self.channel, False)
        self.request.method = b"POST"
        self.request.uri = self.request.path = b"/x"
        self.request.clientproto = b"HTTP/1.1"
        self.slot = Slot(lambda slot: None)
        self.run = _Run()
        self.response = RunResponse(
            self.request,
            self.clock,
            _Encoder(),
            self.slot,
            headGrace=10.0,
            headers={b"x-request-id": b"req-1"},
        )

    def stream(self) -> Deferred[None]:
        return ensureDeferred(self.response.stream(self.run))

    def body(self) -> bytes:
        """
        What went out after the response head.
        """
        sent = self.transport.value()
        return sent.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in sent else b""

    def test_silentUntilFirstFrame(self) -> None:
        """
        Nothing is written while the run is silent (a usage event or hidden
        reasoning is no frame); the first frame sends the head, the
        encoder's opening and the frame, with the extra headers.
        """
        done = self.stream()
        self.run.emit(Usage(1, 1), ReasoningDelta("hidden"))
        self.assertEqual(self.transport.value(), b"")
        self.run.emit(ContentDelta("hi"))
        sent = self.transport.value()
        self.assertIn(b"200 OK", sent)
        self.assertIn(b"x-request-id: req-1", sent.lower())
        self.assertIn(b"text/event-stream", sent)
        self.assertIn(b"open;", self.body())
        self.assertTrue(self.body().replace(b"\r\n", b"").endswith(b"content:hi;"))
        self.run.result.callback(FINISHED)
        self.successResultOf(done)
        self.assertIn(b"finish:end;", self.body())

    def test_firstTokenFlushed(self) -> None:
        """
        The first content frame is pushed to the socket at once (not left
        for the end of the upstream read it came in); later frames are
        not, and neither are frames before the first token.
        """
        from ai_agent.headends import _stream

        flushed: list[tuple[Any, bytes]] = []
        self.patch(_stream, "flushNow", lambda transport: flushed.append((transport, self.body())))
        done = self.stream()
        self.run.emit(ReasoningDelta("thinking"), ContentDelta("one"))
        self.assertEqual(len(flushed), 1)
        transport, sentByThen = flushed[0]
        self.assertIs(transport, self.transport)
        self.assertTrue(sentByThen.replace(b"\r\n", b"").endswith(b"content:one;"))
        self.run.emit(ContentDelta("two"), ContentDelta("three"))
        self.run.result.callback(FINISHED)
        self.successResultOf(done)
        self.assertEqual(len(flushed), 1)

    def test_headGrace(self) -> None:
        """
        A run silent for the head grace gets its head and opening anyway,
        so a slow agent does not look dead; not a moment before.
        """
        self.stream()
        self.clock.advance(9.9)
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(0.2)
        self.assertIn(b"200 OK", self.transport.value())
        self.assertIn(b"open;", self.body())

    def test_graceTimerCancelled(self) -> None:
        """
        A run that ends before the grace leaves no timer behind.
        """
        done = self.stream()
        self.run.result.callback(FINISHED)
        self.successResultOf(done)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failureBeforeFirstByte(self) -> None:
        """
        A failure before anything was sent is raised for a real status, and
        nothing is written.
        """
        done = self.stream()
        self.run.result.errback(AgentError("no upstream", 502, ErrorKind.SERVER))
        failure = self.failureResultOf(done, AgentError)
        self.assertEqual(failure.value.status, 502)
        self.assertEqual(self.transport.value(), b"")

    def test_failureAfterFirstByte(self) -> None:
        """
        A failure after the stream began ends it in-band with the
        encoder's error frames, and the route succeeds.
        """
        done = self.stream()
        self.run.emit(ContentDelta("part"))
        self.run.result.errback(AgentError("cut", 502, ErrorKind.SERVER))
        self.successResultOf(done)
        body = self.body()
        self.assertLess(body.index(b"content:part;"), body.index(b"error:cut;"))

    def test_bugAfterFirstByte(self) -> None:
        """
        A bug after the stream began is logged and told in-band as an
        internal error, without its text.
        """
        done = self.stream()
        self.run.emit(ToolStarted("t__x", "{}"))
        self.run.result.errback(RuntimeError("secret detail"))
        self.successResultOf(done)
        self.assertIn(b"error:internal server error;", self.body())
        self.assertNotIn(b"secret detail", self.body())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_shutdownBeforeFirstByte(self) -> None:
        """
        The pool aborting the slot cancels the run; with nothing sent, the
        abort's error is raised for its status.
        """
        done = self.stream()
        self.slot.abort(AgentError("shutting down", 503, ErrorKind.OVERLOADED))
        self.assertTrue(self.run.cancelled)
        self.assertEqual(self.failureResultOf(done, AgentError).value.status, 503)
        self.assertEqual(self.transport.value(), b"")

    def test_shutdownAfterFirstByte(self) -> None:
        """
        Aborted after the stream began, the run is cancelled and the stream
        ends in-band with the abort's error.
        """
        done = self.stream()
        self.run.emit(ContentDelta("a"))
        self.slot.abort(AgentError("shutting down", 503, ErrorKind.OVERLOADED))
        self.assertTrue(self.run.cancelled)
        self.successResultOf(done)
        self.assertIn(b"error:shutting down;", self.body())

    def test_disconnect(self) -> None:
        """
        Cancelling the route (what Klein does when the client goes away)
        cancels the run, and later frames are dropped.
        """
        done = self.stream()
        self.run.emit(ContentDelta("a"))
        done.cancel()
        self.assertTrue(self.run.cancelled)
        self.failureResultOf(done, CancelledError)
        before = self.transport.value()
        self.run.emit(ContentDelta("late"))
        self.assertEqual(self.transport.value(), before)

    def test_pauseResume(self) -> None:
        """
        While the transport pauses the producer, frames wait in order; on
        resume they go out, before anything sent later.
        """
        self.stream()
        self.run.emit(ContentDelta("1"))
        self.channel.pauseProducing()
        self.run.emit(ContentDelta("2"), ContentDelta("3"))
        self.assertNotIn(b"content:2;", self.body())
        self.channel.resumeProducing()
        self.run.emit(ContentDelta("4"))
        body = self.body()
        positions = [body.index(b"content:%d;" % n) for n in (1, 2, 3, 4)]
        self.assertEqual(positions, sorted(positions))

    def test_complete(self) -> None:
        """
        A whole answer is the encoder's body, with JSON and the extra
        headers, and no frame is written before it.
        """
        done = ensureDeferred(self.response.complete(self.run))
        self.run.emit(ContentDelta("whole"), ReasoningDelta("r"))
        self.assertEqual(self.transport.value(), b"")
        self.run.result.callback(FINISHED)
        self.assertEqual(self.successResultOf(done), b"whole|end")
        self.assertEqual(self.request.responseHeaders.getRawHeaders(b"x-request-id"), [b"req-1"])
        self.assertEqual(
            self.request.responseHeaders.getRawHeaders(b"content-type"), [b"application/json"]
        )

    def test_completeShutdown(self) -> None:
        """
        A whole answer stopped by the pool fails with the abort's error.
        """
        done = ensureDeferred(self.response.complete(self.run))
        self.slot.abort(AgentError("shutting down", 503, ErrorKind.OVERLOADED))
        self.assertTrue(self.run.cancelled)
        self.assertEqual(self.failureResultOf(done, AgentError).value.status, 503)


@attrs.define
class _KeepAliveEncoder(_Encoder):
    """
    An encoder with a keep-alive frame.
    """

    def keepAlive(self) -> bytes:
        return b"ping;"


class KeepAliveTests(RunResponseTests):
    """
    C{RunResponse(keepAlive=…)}: every lifecycle test above holds with it
    on, and the encoder's keep-alive frame follows each silence of a
    started stream, never before it starts nor after it ends.
    """

    def setUp(self) -> None:
        super().setUp()
        self.response = attrs.evolve(self.response, encoder=_KeepAliveEncoder(), keepAlive=5.0)

    def test_pingsAfterSilence(self) -> None:
        """
        No ping before the first frame; after it, one per silence of
        C{keepAlive} seconds, each frame restarting the count; no timer
        is left once the run finished.
        """
        done = self.stream()
        self.clock.advance(4.0)
        self.assertEqual(self.transport.value(), b"")
        self.run.emit(ContentDelta("a"))
        self.clock.advance(4.9)
        self.assertNotIn(b"ping;", self.body())
        self.run.emit(ContentDelta("b"))
        self.clock.advance(4.9)
        self.assertNotIn(b"ping;", self.body())
        self.clock.advance(0.2)
        self.assertEqual(self.body().count(b"ping;"), 1)
        self.clock.advance(5.0)
        self.assertEqual(self.body().count(b"ping;"), 2)
        self.run.result.callback(FINISHED)
        self.successResultOf(done)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(self.body().replace(b"\r\n", b"").endswith(b"finish:end;"))

    def test_noTimerAfterFailure(self) -> None:
        """
        A run failing mid-stream leaves no keep-alive timer behind.
        """
        done = self.stream()
        self.run.emit(ContentDelta("a"))
        self.run.result.errback(AgentError("cut", 502, ErrorKind.SERVER))
        self.successResultOf(done)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class FlowTests(SynchronousTestCase):
    """
    L{ai_agent.flow.Flow}, the back-pressure of a streamed run, on a clock.
    """

    def test_pauseAfterCloseArmsNoTimer(self) -> None:
        """
        A pause that comes after the run ended (the stream's last frames
        filling the socket's buffer) schedules no stall timer, which
        nothing would cancel and which would drop the connection a minute
        later; before the end, a pause is timed and reports the stall.
        """
        from ai_agent.flow import Flow

        clock = MemoryReactorClock()
        stalls: list[None] = []
        flow = Flow(clock, 5.0, lambda: stalls.append(None))
        flow.pause()
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        flow.resume()
        self.assertEqual(clock.getDelayedCalls(), [])
        flow.close()
        flow.pause()
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(10)
        self.assertEqual(stalls, [])
        opened = Flow(clock, 5.0, lambda: stalls.append(None))
        opened.pause()
        clock.advance(5)
        self.assertEqual(stalls, [None])
