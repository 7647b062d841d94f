"""
Tests for L{tests._terminal}: a program in a pseudo-terminal, read
through a screen emulator, typed to, and ended with its process group.
"""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, TestCase

from tests._terminal import Terminal

#: Seconds a step of these tests may take.
WAIT = 30.0


def _shell(script: str, clock: Clock | None = None) -> Terminal:
    return Terminal(
        ["/bin/sh", "-c", script],
        {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TERM": "xterm"},
        "/",
        columns=40,
        lines=5,
        clock=clock,
    )


def _state(pid: int) -> str | None:
    """
    A process's state letter from C{/proc} (C{Z} for a zombie), or
    L{None} once it is gone.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


class TerminalTests(TestCase):
    """
    L{Terminal} with C{/bin/sh} scripts.
    """

    async def test_screenAndKeys(self) -> None:
        """
        The screen shows what the program drew (a carriage return
        overwrites, as on a terminal), in a terminal of the size asked
        for; keys typed reach the program's input.
        """
        terminal = _shell('printf "abc\\rX\\n"; stty size; read line; echo "got [$line]"')
        self.addCleanup(terminal.stop)
        screen = await terminal.waitFor("Xbc", "5 40", timeout=WAIT)
        self.assertNotIn("abc", screen)
        terminal.send(b"hello\r")
        await terminal.waitFor("got [hello]", timeout=WAIT)

    async def test_stopEndsTheGroup(self) -> None:
        """
        C{stop} ends the program and what it started in the background;
        it fires with how the program ended (a signal, as a negative
        number).
        """
        if not os.path.isdir("/proc/self"):
            raise SkipTest("reads process states from /proc")
        terminal = _shell('sleep 600 & echo "child $!"; wait')
        self.addCleanup(terminal.stop)
        screen = await terminal.waitFor("child ", timeout=WAIT)
        child = int(screen.split("child ", 1)[1].split()[0])
        self.assertIsNotNone(_state(child))
        code = await terminal.stop()
        self.assertLess(code, 0)
        self.assertIn(_state(child), (None, "Z"))

    async def test_waitTimesOutWithTheScreen(self) -> None:
        """
        A wait that its clock runs out fails with what the screen shows.
        """
        clock = Clock()
        terminal = _shell("echo ready; sleep 600", clock)
        self.addCleanup(terminal.stop)
        await terminal.waitFor("ready", timeout=WAIT)
        waiting = terminal.waitFor("never shown", timeout=5)
        clock.advance(5)
        failure = self.failureResultOf(waiting, AssertionError)
        self.assertIn("ready", str(failure.value))
        self.assertIn("in 5s", str(failure.value))
