"""
A full-screen program (a TUI: Claude Code, Codex) driven by a test in a
pseudo-terminal: its output is read into a screen emulator (C{pyte}), the
test waits for text to show, and types keys.

The child runs in its own session and process group (the reactor's PTY
support calls C{setsid}), which L{Terminal.stop} ends whole: the program
and anything it started.
"""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import struct
import termios
from typing import Callable, Mapping, Sequence

import pyte
from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from tests._process import exitStatus

#: Seconds L{Terminal.waitFor} waits by default.
WAIT = 60.0

#: Seconds L{Terminal.stop} gives the process group to end after SIGTERM
#: before it sends SIGKILL.
STOP_GRACE = 5.0


class _Screen(pyte.Screen):  # type: ignore[misc]
    """
    A screen that answers the program's terminal queries (device
    attributes, cursor position) through C{answer}.
    """

    def __init__(self, columns: int, lines: int, answer: Callable[[bytes], None]) -> None:
        super().__init__(columns, lines)
        self._answer = answer

    def write_process_input(self, data: str) -> None:
        self._answer(data.encode("utf-8"))


class _Protocol(ProcessProtocol):
    def __init__(self, terminal: Terminal) -> None:
        self.terminal = terminal

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.terminal._received(data)

    def processEnded(self, reason: Failure) -> None:
        self.terminal._ended(exitStatus(reason))


class Terminal:
    """
    A program running in a pseudo-terminal of C{columns} x C{lines}.

    @ivar screen: what the terminal shows now (C{pyte}).
    @ivar exitCode: how the program ended (see L{exitStatus}), or L{None}
        while it runs.
    """

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
        columns: int = 120,
        lines: int = 40,
        clock: IReactorTime | None = None,
    ) -> None:
        self.clock: IReactorTime = clock or reactor  # type: ignore[assignment]
        self.screen = _Screen(columns, lines, self.send)
        self._stream = pyte.ByteStream(self.screen)
        self.exitCode: int | None = None
        self._waiters: list[tuple[Callable[[str], bool], Deferred[str]]] = []
        self._endWaiters: list[Deferred[int]] = []
        master, slave = pty.openpty()
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
        self.process = reactor.spawnProcess(  # type: ignore[attr-defined]
            _Protocol(self),
            argv[0],
            list(argv),
            env=dict(env),
            path=cwd,
            usePTY=(master, slave, os.ttyname(slave)),
        )
        self.pid: int = self.process.pid

    # -- what it shows --------------------------------------------------

    def text(self) -> str:
        """
        The screen's lines, trailing blanks removed.
        """
        return "\n".join(line.rstrip() for line in self.screen.display)

    @property
    def title(self) -> str:
        """
        The window title the program set.
        """
        return str(self.screen.title)

    def _received(self, data: bytes) -> None:
        self._stream.feed(data)
        self._check()

    def _check(self) -> None:
        text = self.text()
        for waiter in list(self._waiters):
            test, d = waiter
            if test(text):
                self._waiters.remove(waiter)
                d.callback(text)

    def _ended(self, code: int) -> None:
        self.exitCode = code
        waiters, self._endWaiters = self._endWaiters, []
        for d in waiters:
            d.callback(code)
        # Whatever still waits for text will not see it now.
        for test, d in list(self._waiters):
            self._waiters.remove((test, d))
            d.errback(
                AssertionError(
                    f"the program ended ({code}) before the screen showed what was awaited;"
                    f" it shows:\n{self.text()}"
                )
            )

    def waitFor(self, *texts: str, timeout: float = WAIT) -> Deferred[str]:
        """
        Wait until the screen shows all of C{texts} at once; fire with the
        screen's text, or fail after C{timeout} seconds (or when the
        program ends) with what the screen showed.
        """
        return self.waitUntil(lambda screen: all(text in screen for text in texts), timeout)

    def waitUntil(self, test: Callable[[str], bool], timeout: float = WAIT) -> Deferred[str]:
        """
        Wait until C{test} accepts the screen's text (see L{waitFor}).
        """
        if test(self.text()):
            return succeed(self.text())
        entry: tuple[Callable[[str], bool], Deferred[str]]

        def cancel(d: Deferred[str]) -> None:
            if entry in self._waiters:
                self._waiters.remove(entry)

        d: Deferred[str] = Deferred(cancel)
        entry = (test, d)
        if self.exitCode is not None:
            d.errback(AssertionError(f"the program has ended ({self.exitCode})"))
            return d
        self._waiters.append(entry)

        def timedOut(failure: Failure) -> Failure:
            if failure.check(TimeoutError):
                raise AssertionError(
                    f"the screen did not show what was awaited in {timeout:g}s; it shows:\n"
                    f"{self.text()}"
                )
            return failure

        return d.addTimeout(timeout, self.clock).addErrback(timedOut)

    # -- typing ---------------------------------------------------------

    def send(self, data: bytes) -> None:
        """
        Type C{data} (keys as the terminal sends them: C{b"\\r"} for Enter,
        C{b"\\x1b"} for Esc).
        """
        if self.exitCode is None:
            self.process.write(data)

    # -- the end --------------------------------------------------------

    def stop(self) -> Deferred[int]:
        """
        End the program's process group: SIGTERM, then SIGKILL after
        L{STOP_GRACE} seconds; fire with how the program ended.
        """
        d: Deferred[int] = Deferred()
        if self.exitCode is not None:
            d.callback(self.exitCode)
            return d
        self._endWaiters.append(d)
        self._signal(signal.SIGTERM)
        kill = self.clock.callLater(STOP_GRACE, self._signal, signal.SIGKILL)

        def ended(code: int) -> int:
            if kill.active():
                kill.cancel()
            # Children that outlived the leader are in its group still.
            self._signal(signal.SIGKILL)
            return code

        return d.addCallback(ended)

    def _signal(self, number: int) -> None:
        try:
            os.killpg(self.pid, number)
        except ProcessLookupError:
            pass
