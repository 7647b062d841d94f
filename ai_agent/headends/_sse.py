# -*- test-case-name: tests.test_stream -*-
"""
The one Server-Sent Events producer every streaming headend uses.
"""

from __future__ import annotations

from typing import Callable

import attrs
from twisted.internet.interfaces import IPushProducer
from twisted.web.server import Request
from zope.interface import implementer


@implementer(IPushProducer)
@attrs.define(eq=False)
class SSEStream:
    """
    Writes SSE frames to one request, honouring the transport's flow control.

    While the transport is paused, frames wait in memory (in order) and go
    out on resume.  When the client goes away, later frames are dropped;
    stopping the run and finishing the request are left to Klein, which
    cancels the route's Deferred on disconnect.

    @ivar request: the request to write to.
    @ivar onPause: called when the transport pauses the producer (the
        client is not reading), to pause the work feeding the stream.
    @ivar onResume: called when it resumes.
    """

    request: Request
    onPause: Callable[[], None] | None = None
    onResume: Callable[[], None] | None = None
    started: bool = attrs.field(init=False, default=False)
    paused: bool = attrs.field(init=False, default=False)
    closed: bool = attrs.field(init=False, default=False)
    _pending: list[bytes] = attrs.field(init=False, factory=list)

    def start(self, extraHeaders: dict[bytes, bytes] | None = None) -> None:
        """
        Send the status line and SSE headers now, before any frame.
        """
        if self.started:
            return
        self.started = True
        request = self.request
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-accel-buffering", b"no")
        for name, value in (extraHeaders or {}).items():
            request.setHeader(name, value)
        request.registerProducer(self, True)
        # Nothing leaves twisted.web until something is written.
        request.write(b"")

    def send(self, frame: bytes) -> None:
        """
        Write one frame, or queue it while the transport is paused.
        """
        if self.closed:
            return
        if self.paused:
            self._pending.append(frame)
        else:
            self.request.write(frame)

    def end(self) -> None:
        """
        Flush what is queued and let go of the transport; the request is
        finished by whoever owns it (Klein, when the route's Deferred fires).
        """
        if not self.closed and self._pending:
            self.request.write(b"".join(self._pending))
        self._pending.clear()
        request = self.request
        if (
            self.started
            and getattr(request, "producer", None) is self
            and getattr(request, "channel", None) is not None
        ):
            # A request whose connection is gone has no channel left to
            # unregister from; it is never finished, so nothing checks.
            request.unregisterProducer()
        self.closed = True

    def pauseProducing(self) -> None:
        self.paused = True
        if self.onPause is not None and not self.closed:
            self.onPause()

    def resumeProducing(self) -> None:
        self.paused = False
        if self._pending and not self.closed:
            frames, self._pending = self._pending, []
            self.request.write(b"".join(frames))
        if self.onResume is not None and not self.closed:
            self.onResume()

    def stopProducing(self) -> None:
        # The transport calls this before Request.connectionLost; only stop
        # upstream work here, never finish or fail the request.
        if self.closed:
            return
        self.closed = True
        self._pending.clear()


__all__ = ["SSEStream"]
