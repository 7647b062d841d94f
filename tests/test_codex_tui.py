"""
The Codex TUI (the interactive C{codex}, 0.171) in a pseudo-terminal,
against a live server whose upstream is the fake: a fresh C{CODEX_HOME}
with only the provider configured, one turn with a shell call Codex asks
approval for, the approval given by keys written to the terminal, and the
answer read off the screen with a terminal emulator (C{pyte}).
"""

from __future__ import annotations

import fcntl
import os
import pty
import shutil
import signal
import struct
import subprocess
import tempfile
import termios
from typing import Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from ai_agent.testing import Reply
from tests._harness import startServer
from tests.test_headend_responses import CODEX, CODEX_CONFIG, MODEL

#: The terminal's size: wide enough that Codex's lines are not wrapped.
ROWS, COLUMNS = 40, 140

#: How long one step may take (Codex starts in a second or two).
STEP_TIMEOUT = 30.0

#: How long a key's effect is waited for before the key is written again.
RETRY_KEY = 3.0


class Terminal(ProcessProtocol):
    """
    A child on a pseudo-terminal whose output feeds a C{pyte} screen; tests
    wait for the screen to show something, with a deadline.
    """

    def __init__(self) -> None:
        import pyte

        self.screen = pyte.Screen(COLUMNS, ROWS)
        self.stream = pyte.ByteStream(self.screen)
        self.ended: Deferred[int] = Deferred()
        self._waiting: list[tuple[Callable[[str], bool], Deferred[str]]] = []

    def text(self) -> str:
        """
        The screen's lines, trailing blanks dropped.
        """
        return "\n".join(line.rstrip() for line in self.screen.display)

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.stream.feed(data)
        self._check()

    def _check(self) -> None:
        shown = self.text()
        for entry in list(self._waiting):
            predicate, waiter = entry
            if predicate(shown):
                self._waiting.remove(entry)
                waiter.callback(shown)

    def processEnded(self, reason: Failure) -> None:
        from tests._process import exitStatus

        self.ended.callback(exitStatus(reason))
        for _, waiter in list(self._waiting):
            waiter.errback(AssertionError(f"Codex ended; its screen:\n{self.text()}"))
        self._waiting.clear()

    def waitFor(
        self, predicate: Callable[[str], bool], what: str, timeout: float = STEP_TIMEOUT
    ) -> Deferred[str]:
        """
        Fires with the screen once C{predicate} holds of it (at once if it
        does now); fails, showing the screen, after C{timeout} seconds or
        when Codex has ended.
        """
        waiter: Deferred[str] = Deferred()
        if self.ended.called and not predicate(self.text()):
            waiter.errback(AssertionError(f"Codex ended; its screen:\n{self.text()}"))
            return waiter
        entry = (predicate, waiter)
        self._waiting.append(entry)

        def expire() -> None:
            if entry in self._waiting:
                self._waiting.remove(entry)
                waiter.errback(
                    AssertionError(f"no {what} within {timeout}s; the screen:\n{self.text()}")
                )

        call = reactor.callLater(timeout, expire)
        waiter.addBoth(lambda result: (call.active() and call.cancel(), result)[1])
        self._check()
        return waiter

    def waitForText(self, text: str, timeout: float = STEP_TIMEOUT) -> Deferred[str]:
        return self.waitFor(lambda shown: text in shown, repr(text), timeout)

    async def press(
        self, keys: bytes, until: Callable[[str], bool], what: str, timeout: float = STEP_TIMEOUT
    ) -> str:
        """
        Write C{keys} until the screen shows C{until}: a key written while
        Codex is still drawing a view can be dropped, so it is written
        again each time a short wait for the change runs out, up to
        C{timeout} seconds in all.
        """
        deadline = reactor.seconds() + timeout
        while True:
            self.transport.write(keys)
            left = deadline - reactor.seconds()
            try:
                return await self.waitFor(until, what, min(RETRY_KEY, max(left, 0.1)))
            except AssertionError:
                if reactor.seconds() >= deadline or self.ended.called:
                    raise


class CodexTUITests(TestCase):
    """
    The interactive Codex against the server.
    """

    def setUp(self) -> None:
        if shutil.which("node") is None:
            raise self.skipTest("node is not installed: the Codex CLI needs Node.js")
        if not os.path.exists(CODEX):
            raise self.skipTest("the Codex CLI is missing: run `npm ci --prefix tests/js` first")
        if not os.path.isdir("/proc"):
            raise self.skipTest("finding Codex's daemon needs /proc (Linux)")
        try:
            import pyte  # noqa: F401
        except ImportError:
            raise self.skipTest("pyte is not installed (the test extra has it)") from None

    def spawn(self, home: str, workdir: str) -> Terminal:
        """
        Start C{codex} in a pseudo-terminal of L{ROWS} x L{COLUMNS}, in its
        own session; stopped (its whole process group) when the test ends.
        """
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        terminal = Terminal()
        env = {
            "PATH": os.environ["PATH"],
            "HOME": home,
            "CODEX_HOME": home,
            "AI_AGENT_KEY": "k",
            "TERM": "xterm-256color",
            "LANG": "C.UTF-8",
        }
        process = reactor.spawnProcess(
            terminal,
            CODEX,
            [CODEX],
            env=env,
            path=workdir,
            usePTY=(master, slave, os.ttyname(slave)),
        )
        self.addCleanup(self.stop, process.pid, terminal)
        return terminal

    async def stop(self, pid: int, terminal: Terminal) -> None:
        """
        End Codex's process group (the child is a session leader).
        """
        if terminal.ended.called:
            return
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        timer = reactor.callLater(10, lambda: _killGroup(pid))
        await terminal.ended
        if timer.active():
            timer.cancel()

    async def stopDaemon(self, home: str) -> None:
        """
        Stop the background C{codex app-server} the TUI started for this
        Codex home (it runs in a session of its own, out of the TUI's
        process group), and kill whatever of that home is still running.
        """
        from tests._process import run

        if not _processesOf(home):
            return
        env = {"PATH": os.environ["PATH"], "HOME": home, "CODEX_HOME": home}
        await run([CODEX, "app-server", "daemon", "stop"], cwd=home, env=env)
        for pid in await _exited(home, STEP_TIMEOUT):
            _kill(pid)

    async def test_turnWithApprovedCommand(self) -> None:
        """
        With only the provider configured, the TUI's turn reaches the
        agent (its default tools, its MCP namespace among them, accepted);
        the model's C{exec_command} call asking to run outside the
        sandbox is handed back, Codex asks for approval, the keys written
        to the terminal approve it, the command's output reaches the model
        as that call's result, and the model's answer shows on the screen.
        """
        token = "tui-probe-4711"
        server = await startServer(self, streamHeadGrace=0.0)
        # Codex also asks for a title, without tools, whenever it likes:
        # the turn's replies go to the calls with tools.
        server.upstream.scriptFor(
            lambda body: bool(body.get("tools")),
            Reply(
                toolCalls=[
                    (
                        "exec_command",
                        {
                            "cmd": f"echo {token}",
                            "sandbox_permissions": "require_escalated",
                            "justification": "Print the probe token?",
                        },
                    )
                ]
            ),
            Reply(content="The probe said hello."),
        )
        home = os.path.abspath(self.mktemp())
        # A project of its own, as a user starts Codex in (Codex asks to
        # trust a Git repository's root): not a folder of this checkout,
        # whose root Codex would offer to trust and walk whole (its tox
        # and npm trees included) before the prompt shows, long enough
        # for the retried key to pile up and Codex to give up.
        workdir = tempfile.mkdtemp(prefix="codex-work-")
        self.addCleanup(shutil.rmtree, workdir, True)
        subprocess.run(["git", "init", "-q", workdir], check=True, timeout=30)
        os.makedirs(home)
        with open(os.path.join(home, "config.toml"), "w", encoding="utf-8") as f:
            f.write(CODEX_CONFIG.format(model=MODEL, baseUrl=server.baseUrl))
        self.addCleanup(self.stopDaemon, home)
        terminal = self.spawn(home, workdir)

        # A new user's first start: Codex asks whether to trust the folder.
        await terminal.waitForText("Trust this folder?")
        await terminal.press(
            b"\r", lambda s: "Ask Codex to do anything" in s, "the prompt after trusting"
        )
        terminal.transport.write(b"Run the probe")
        await terminal.waitForText("› Run the probe")
        await terminal.press(
            b"\r", lambda s: "Would you like to run the following command?" in s, "the approval"
        )
        screen = await terminal.waitForText(f"$ echo {token}")
        self.assertIn("Print the probe token?", screen)
        await terminal.press(
            b"y", lambda s: "Would you like to run" not in s, "the approval answered"
        )
        screen = await terminal.waitForText("The probe said hello.")
        self.assertIn(f"Ran echo {token}", screen)

        turns = [r.body for r in server.upstream.requests if r.body.get("tools")]
        self.assertEqual(len(turns), 2, [m["role"] for t in turns for m in t["messages"]])
        offered = {tool["function"]["name"] for tool in turns[0]["tools"]}
        self.assertIn("exec_command", offered)
        self.assertTrue(any(name.startswith("mcp__codex_tui__") for name in offered), offered)
        [call] = [m for m in turns[1]["messages"] if m.get("tool_calls")][-1]["tool_calls"]
        self.assertEqual(call["function"]["name"], "exec_command")
        [result] = [m for m in turns[1]["messages"] if m.get("tool_call_id") == call["id"]]
        self.assertIn(token, result["content"])

        # Quit, then stop the background app-server the TUI started: no
        # process of this Codex home is left.
        terminal.transport.write(b"/quit")
        await terminal.waitForText("› /quit")
        terminal.transport.write(b"\r")
        self.assertEqual(await terminal.ended.addTimeout(STEP_TIMEOUT, reactor), 0)
        # The TUI's app-server daemon outlives it.
        self.assertNotEqual(_processesOf(home), [])
        await self.stopDaemon(home)
        self.assertEqual(await _exited(home, STEP_TIMEOUT), [])

    test_turnWithApprovedCommand.timeout = 120  # type: ignore[attr-defined]


def _processesOf(home: str) -> list[int]:
    """
    The processes whose command line or executable is under C{home} (the
    daemon runs a copy of Codex installed there).
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state != b"Z" and home.encode() in cmdline:
            found.append(int(entry))
    return found


async def _exited(home: str, timeout: float) -> list[int]:
    """
    Wait until no process of C{home} is left (C{daemon stop} returns
    before its processes have exited), checking every tenth of a second
    up to C{timeout} seconds; those still there then.
    """
    deadline = reactor.seconds() + timeout
    while (left := _processesOf(home)) and reactor.seconds() < deadline:
        await deferLater(reactor, 0.1, lambda: None)
    return left


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _killGroup(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
