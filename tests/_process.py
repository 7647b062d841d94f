"""
Running the installed commands as subprocesses in tests.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, Sequence

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.utils import getProcessOutputAndValue


def command(name: str) -> list[str]:
    """
    The argv prefix for an installed console script next to this Python
    (C{ai-agent}, C{twistd}), falling back to C{python -m}.
    """
    script = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(script):
        return [script]
    module = {"ai-agent": "ai_agent", "twistd": "twisted"}[name]
    return [sys.executable, "-m", module]


#: The checkout this test suite belongs to.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def childEnvironment(checkout: bool = True, **extra: str) -> dict[str, str]:
    """
    A minimal environment for a child: no provider keys from the caller.

    @param checkout: import C{ai_agent} from this checkout (so the code
        under test runs even where an older copy is installed); C{False}
        tests the installed package alone.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if key in ("PATH", "LANG", "LC_ALL", "SYSTEMROOT", "TMPDIR", "VIRTUAL_ENV")
    }
    if checkout:
        env["PYTHONPATH"] = CHECKOUT
    env.update(extra)
    return env


def run(
    argv: Sequence[str], cwd: str, env: dict[str, str], stdin: bytes | None = None
) -> Deferred[tuple[bytes, bytes, int]]:
    """
    Run a command; fire with (stdout, stderr, exit code).
    """
    if stdin is None:
        return getProcessOutputAndValue(argv[0], list(argv[1:]), env=env, path=cwd, reactor=reactor)
    from twisted.internet.protocol import ProcessProtocol

    done: Deferred[tuple[bytes, bytes, int]] = Deferred()

    class _Collect(ProcessProtocol):
        def __init__(self) -> None:
            self.out: list[bytes] = []
            self.err: list[bytes] = []

        def connectionMade(self) -> None:
            self.transport.write(stdin)
            self.transport.closeStdin()

        def outReceived(self, data: bytes) -> None:
            self.out.append(data)

        def errReceived(self, data: bytes) -> None:
            self.err.append(data)

        def processEnded(self, reason: object) -> None:
            code = getattr(getattr(reason, "value", None), "exitCode", 1)
            done.callback((b"".join(self.out), b"".join(self.err), code or 0))

    reactor.spawnProcess(_Collect(), argv[0], list(argv), env=env, path=cwd)
    return done


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess(ProcessProtocol):
    """
    A server child: collects its output, fires C{ended} with its exit code.
    """

    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        # twistd re-raises SIGTERM on itself after a clean shutdown, so an
        # end by a signal (no exit code) counts as 0; tests that need to
        # tell look at the output.
        self.ended.callback(getattr(reason.value, "exitCode", None) or 0)
