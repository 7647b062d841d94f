# -*- test-case-name: tests.test_security_round2 -*-
"""
Back-pressure from a streaming client to the upstream calls of its run.

A client that stops reading a stream makes its transport pause the SSE
producer; frames would then pile up in memory as fast as the model sends
them.  Instead the run's L{Flow} pauses every upstream call of the run (its
sub-agents' included): they stop reading their sockets, so the upstream's
own TCP window fills and it waits too.  A client that does not read again
within a bound is given up on: the flow reports a stall, the headend drops
the connection, and the run is cancelled like any other disconnect.

The flow reaches the calls without threading it through every layer: the
headend sets L{currentFlow} before starting the run; coroutines and
Deferreds started from there (the session, its sub-agents, the provider
calls) run in a copy of that context, and an upstream call registers with
the flow it finds when it starts.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Callable, Protocol

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger()

#: Seconds a streaming client may go without reading before its run is
#: stopped, by default.
CLIENT_STALL_TIMEOUT = 60.0


class Pausable(Protocol):
    """
    An upstream call whose reading can be paused.
    """

    def pauseBody(self) -> None:
        """
        Stop reading from the upstream (and stop its silence timer).
        """

    def resumeBody(self) -> None:
        """
        Read from the upstream again.
        """


@attrs.define(eq=False)
class Flow:
    """
    The flow control of one streamed run.

    @ivar stallTimeout: seconds the client may stay paused.
    @ivar onStall: called once when it has been paused that long.
    """

    reactor: IReactorTime
    stallTimeout: float = CLIENT_STALL_TIMEOUT
    onStall: Callable[[], None] = lambda: None
    paused: bool = attrs.field(default=False, init=False)
    closed: bool = attrs.field(default=False, init=False)
    # A list: a run has one upstream call at a time (a few with sub-agents),
    # and an empty set is four times the size of an empty list.
    _calls: list[Pausable] = attrs.field(factory=list, init=False)
    _timer: IDelayedCall | None = attrs.field(default=None, init=False)

    def register(self, call: Pausable) -> None:
        """
        An upstream call of the run started; pause it at once if the client
        is not reading.
        """
        if call not in self._calls:
            self._calls.append(call)
        if self.paused:
            call.pauseBody()

    def unregister(self, call: Pausable) -> None:
        """
        An upstream call of the run ended.
        """
        if call in self._calls:
            self._calls.remove(call)

    def pause(self) -> None:
        """
        The client stopped reading.
        """
        if self.paused or self.closed:
            # Closed: the run ended, and the stream's last frames filling
            # the socket's buffer must not arm a stall timer nobody stops.
            return
        self.paused = True
        for call in list(self._calls):
            call.pauseBody()
        self._timer = self.reactor.callLater(self.stallTimeout, self._stalled)

    def resume(self) -> None:
        """
        The client reads again.
        """
        if not self.paused:
            return
        self.paused = False
        self._cancelTimer()
        for call in list(self._calls):
            call.resumeBody()

    def close(self) -> None:
        """
        The run ended: forget the calls, stop the timer; a later pause is
        not timed.
        """
        self.closed = True
        self._cancelTimer()
        self._calls.clear()

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _stalled(self) -> None:
        self._timer = None
        log.warn(
            "a streaming client read nothing for {seconds:g} s; stopping its run",
            seconds=self.stallTimeout,
        )
        self.onStall()


#: The flow of the streamed run being started, if any.
currentFlow: ContextVar[Flow | None] = ContextVar("currentFlow", default=None)


__all__ = ["CLIENT_STALL_TIMEOUT", "Flow", "Pausable", "currentFlow"]
