# -*- test-case-name: tests.test_mcp -*-
"""
The MCP stdio transport: the server is a child process; JSON-RPC messages
travel one per line (UTF-8 JSON, C{\\n}-terminated) on its standard input and
output; what it writes to standard error goes to the log, line by line.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable, Mapping, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ai_agent.tools._jsonrpc import McpError

log = Logger()

INHERITED_VARIABLES = (
    "HOME",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LOGNAME",
    "PATH",
    "SHELL",
    "SYSTEMROOT",
    "TEMP",
    "TERM",
    "TMP",
    "TMPDIR",
    "TZ",
    "USER",
)
"""
The variables a stdio server inherits from our environment; the server's
configured C{env} is merged over them.  Nothing else leaks through (provider
keys in particular).
"""

MAX_LINE_BYTES = 32 * 1024 * 1024
"""
The longest message line accepted from a server; a longer one means the
server is broken, and it is stopped (and restarted).
"""


def childEnvironment(environ: Mapping[str, str], configured: Mapping[str, str]) -> dict[str, str]:
    """
    The environment of a stdio server: the L{INHERITED_VARIABLES} found in
    C{environ}, then the server's configured variables over them.
    """
    env = {name: environ[name] for name in INHERITED_VARIABLES if name in environ}
    env.update(configured)
    return env


def findExecutable(server: str, command: str, env: Mapping[str, str]) -> str:
    """
    Resolve C{command} the way a shell would: a name without C{/} is looked
    up on the child's C{PATH}.

    @raise McpError: naming the server and command when it cannot be found.
    """
    if os.sep in command or (os.altsep and os.altsep in command):
        if os.path.isfile(command) and os.access(command, os.X_OK):
            return command
        raise McpError(f"MCP server {server!r}: the command {command!r} is not an executable file")
    found = shutil.which(command, path=env.get("PATH", os.defpath))
    if found is None:
        raise McpError(f"MCP server {server!r}: the command {command!r} was not found on PATH")
    return found


def describeExit(reason: Failure) -> str:
    """
    How a process ended, in a few words.
    """
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exited with code 0"
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            return f"was killed by signal {value.signal}"
        return f"exited with code {value.exitCode}"
    return reason.getErrorMessage()


#: The longest line of a server's standard error logged whole; longer ones
#: are cut.
STDERR_LINE_LIMIT = 1000

#: At most this many bytes of a server's standard error are logged per
#: L{STDERR_WINDOW} seconds; the rest is counted and reported once.
STDERR_BUDGET = 64 * 1024
STDERR_WINDOW = 10.0


class StdioProcess(ProcessProtocol):
    """
    One running stdio server: messages from its standard output go to
    C{onMessage}; C{onEnded} is called with a few words on how it ended
    once the process has exited and its pipes are closed.

    @ivar exitDescription: those words, or L{None} while it runs.
    """

    def __init__(
        self,
        server: str,
        reactor: Any,
        onMessage: Callable[[Any], None],
        onEnded: Callable[[str], None],
        scrub: Callable[[str], str] = str,
    ) -> None:
        """
        @param scrub: applied to the server's text before it is logged (its
            standard error, stray output): the configured secrets'
            redactor.
        """
        self.server = server
        self.scrub = scrub
        self.reactor = reactor
        self.onMessage = onMessage
        self.onEnded = onEnded
        self.exitDescription: str | None = None
        self._out: list[bytes] = []
        self._outLength = 0
        self._err = b""
        self._errWindow = float("-inf")
        self._errLogged = 0
        self._errDropped = 0
        self._stopWaiters: list[Deferred[None]] = []
        self._kills: list[IDelayedCall] = []

    @classmethod
    def spawn(
        cls,
        server: str,
        reactor: Any,
        command: str,
        args: Sequence[str],
        env: Mapping[str, str],
        onMessage: Callable[[Any], None],
        onEnded: Callable[[str], None],
        scrub: Callable[[str], str] = str,
    ) -> StdioProcess:
        """
        Start a server process.

        @raise McpError: the command cannot be found or started.
        """
        executable = findExecutable(server, command, env)
        protocol = cls(server, reactor, onMessage, onEnded, scrub)
        try:
            reactor.spawnProcess(protocol, executable, [command, *args], env=dict(env))
        except OSError as error:
            raise McpError(
                f"MCP server {server!r}: cannot start {command!r}: {error.strerror or error}"
            ) from None
        return protocol

    @property
    def _pipes(self) -> Any:
        return self.transport

    @property
    def running(self) -> bool:
        """
        Whether the process has not ended yet.
        """
        return self.exitDescription is None

    def sendMessage(self, message: Mapping[str, Any]) -> Deferred[bool]:
        """
        Write one message as a line on the server's standard input.
        """
        if not self.running:
            raise McpError(f"MCP server {self.server!r} is not running")
        line = json.dumps(message, ensure_ascii=False, separators=(",", ":")) + "\n"
        self._pipes.write(line.encode("utf-8"))
        return succeed(False)

    def stop(self, grace: float) -> Deferred[None]:
        """
        Close the server's standard input, as the MCP specification asks;
        send C{SIGTERM} after C{grace} seconds and C{SIGKILL} after twice
        that.  Fire once the process has ended.
        """
        if not self.running:
            return succeed(None)

        def cancel(d: Deferred[None]) -> None:
            if d in self._stopWaiters:
                self._stopWaiters.remove(d)

        d: Deferred[None] = Deferred(canceller=cancel)
        self._stopWaiters.append(d)
        if not self._kills:
            try:
                self._pipes.closeStdin()
            except Exception:  # noqa: BLE001 - the pipe may already be gone
                pass
            self._kills = [
                self.reactor.callLater(grace, self._signal, "TERM"),
                self.reactor.callLater(grace * 2, self._signal, "KILL"),
            ]
        return d

    def _signal(self, name: str) -> None:
        if self.running:
            log.info(
                "MCP server {server} did not exit; sending SIG{signal}",
                server=self.server,
                signal=name,
            )
            try:
                self._pipes.signalProcess(name)
            except Exception:  # noqa: BLE001 - it may have just exited
                pass

    # ProcessProtocol.

    def outReceived(self, data: bytes) -> None:
        while data:
            newline = data.find(b"\n")
            if newline < 0:
                self._out.append(data)
                self._outLength += len(data)
                if self._outLength > MAX_LINE_BYTES:
                    log.error(
                        "MCP server {server} wrote a line longer than {limit} bytes; stopping it",
                        server=self.server,
                        limit=MAX_LINE_BYTES,
                    )
                    self._out, self._outLength = [], 0
                    self._pipes.signalProcess("KILL")
                return
            self._out.append(data[:newline])
            line = b"".join(self._out)
            self._out, self._outLength = [], 0
            data = data[newline + 1 :]
            self._lineReceived(line)

    def _lineReceived(self, line: bytes) -> None:
        text = line.strip()
        if not text:
            return
        try:
            message = json.loads(text)
        except ValueError:
            log.warn(
                "MCP server {server} wrote a line that is not JSON on its standard output: {line}",
                server=self.server,
                line=self.scrub(text[:200].decode("utf-8", "replace")),
            )
            return
        self.onMessage(message)

    def errReceived(self, data: bytes) -> None:
        now = self.reactor.seconds()
        if now - self._errWindow >= STDERR_WINDOW:
            self._reportDropped()
            self._errWindow = now
            self._errLogged = 0
        if self._errLogged >= STDERR_BUDGET:
            # Over this window's budget: not even split into lines.
            self._errDropped += len(data)
            return
        self._err += data
        *lines, self._err = self._err.split(b"\n")
        for line in lines:
            self._logStderr(line)
        if len(self._err) > STDERR_LINE_LIMIT:
            self._logStderr(self._err)
            self._err = b""

    def _logStderr(self, line: bytes) -> None:
        if self._errLogged >= STDERR_BUDGET:
            self._errDropped += len(line) + 1
            return
        if len(line) > STDERR_LINE_LIMIT:
            self._errDropped += len(line) - STDERR_LINE_LIMIT
            line = line[:STDERR_LINE_LIMIT] + b"..."
        self._errLogged += len(line) + 1
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        if text.strip():
            log.info("MCP server {server}: {line}", server=self.server, line=self.scrub(text))

    def _reportDropped(self) -> None:
        if self._errDropped:
            log.warn(
                "MCP server {server}: {dropped} bytes of its standard error were not logged"
                " (lines are cut at {limit} bytes, and at most {budget} bytes are logged"
                " every {window:g} s)",
                server=self.server,
                dropped=self._errDropped,
                limit=STDERR_LINE_LIMIT,
                budget=STDERR_BUDGET,
                window=STDERR_WINDOW,
            )
            self._errDropped = 0

    def processEnded(self, reason: Failure) -> None:
        if self._err:
            self._logStderr(self._err)
            self._err = b""
        self._reportDropped()
        self.exitDescription = describeExit(reason)
        for call in self._kills:
            if call.active():
                call.cancel()
        self._kills = []
        waiters, self._stopWaiters = self._stopWaiters, []
        try:
            self.onEnded(self.exitDescription)
        finally:
            for d in waiters:
                d.callback(None)


__all__ = ["INHERITED_VARIABLES", "StdioProcess", "childEnvironment", "describeExit"]
