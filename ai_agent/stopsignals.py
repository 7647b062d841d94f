# -*- test-case-name: tests.test_shutdown -*-
"""
SIGINT and SIGTERM for a server: the first one drains it, a deliberate
second one ends it at once.

One stop often arrives as several signals a few milliseconds apart: the
terminal's Ctrl-C goes to the whole foreground process group and systemd's
C{KillMode=control-group} sends SIGTERM to every process, so with
C{--workers} each worker gets the signal itself and then again from the
first process, which passes it on.  So a signal within L{GRACE} seconds of
the first (or of the start of a stop that no signal began, such as the
parent going away) is taken as a copy of it and ignored; only one that
comes later exits at once.
"""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import Any, Callable

import attrs
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

log = Logger()

#: Seconds after the first stop signal during which another one is a copy of
#: it rather than a request to exit at once.
GRACE = 2.0

#: The signals that stop a server.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _exitNow() -> None:
    os.write(2, b"ai-agent: second stop signal while draining, exiting at once\n")
    os._exit(1)


@attrs.define(eq=False)
class StopSignals:
    """
    Takes over SIGINT and SIGTERM once the reactor runs.  The first signal
    goes to the handler it replaced (the reactor's, which stops it and
    records the signal, for twistd's exit status); copies arriving within
    C{grace} seconds of the stop are ignored; one after that calls
    C{exitNow}.

    @ivar reactor: the clock the window is measured on, and the reactor a
        stop that no handler took is asked of.
    @ivar grace: the window, in seconds.
    @ivar exitNow: ends the process at once (by default: a line on standard
        error, then exit status 1 without any cleanup).
    @ivar stoppingSince: when the stop began, or L{None} while serving.
    """

    reactor: Any
    grace: float = GRACE
    exitNow: Callable[[], None] = _exitNow
    stoppingSince: float | None = attrs.field(default=None, init=False)
    _previous: dict[int, Any] = attrs.field(factory=dict, init=False)

    def install(self) -> None:
        """
        Handle the stop signals from now on (in the main thread only; a
        no-op elsewhere).
        """
        try:
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self.received)
        except ValueError:
            pass  # not the main thread: leave signals alone

    def stopping(self) -> None:
        """
        The server began to stop (whether or not a signal made it): the
        window opens now, unless a signal opened it already.
        """
        if self.stoppingSince is None:
            self.stoppingSince = self.reactor.seconds()

    def received(self, signum: int, frame: FrameType | None) -> None:
        """
        The signal handler (it runs between two bytecodes of the main
        thread: it logs through the reactor, never directly).
        """
        now = self.reactor.seconds()
        if self.stoppingSince is None:
            self.stoppingSince = now
            previous = self._previous.get(signum)
            if callable(previous):
                previous(signum, frame)
            else:
                self.reactor.callFromThread(self._stopReactor)
            return
        if now - self.stoppingSince < self.grace:
            self.reactor.callFromThread(
                log.info,
                "{signal} again {elapsed:.3f}s after the stop began: taken as a copy of it"
                " (the drain goes on; one sent more than {grace:g}s after it exits at once)",
                signal=signal.Signals(signum).name,
                elapsed=now - self.stoppingSince,
                grace=self.grace,
            )
            return
        self.exitNow()

    def _stopReactor(self) -> None:
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass  # stopping already


__all__ = ["GRACE", "STOP_SIGNALS", "StopSignals"]
