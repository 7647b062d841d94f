"""
The subprocess helpers of the test suite report what really happened to a
child: a death by signal is not an exit 0, and a server that never listens
is a failure showing its output.
"""

from __future__ import annotations

import os
import signal
import sys

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests._process import ServerProcess, childEnvironment, freePort, run, waitUntilListening
from tests.mcp_servers import waitFor

#: A child that kills itself with SIGKILL.
SELF_KILL = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"


class RunTests(TestCase):
    """
    L{run} fires with the exit status of its child.
    """

    timeout = 60

    async def test_exitCode(self) -> None:
        """
        An exit code, zero or not, is reported as it is, with the output.
        """
        for code in (0, 3):
            out, err, status = await run(
                [sys.executable, "-c", f"print('out'); import sys; sys.exit({code})"],
                os.getcwd(),
                childEnvironment(),
            )
            self.assertEqual((out, status), (b"out\n", code), err)

    async def test_killedBySignal(self) -> None:
        """
        A child killed by a signal reports minus the signal's number, never
        0.
        """
        out, err, status = await run([sys.executable, "-c", SELF_KILL], os.getcwd(), {})
        self.assertEqual(status, -signal.SIGKILL, err)

    async def test_stdin(self) -> None:
        """
        The bytes given as C{stdin} reach the child, then end of file.
        """
        out, err, status = await run(
            [sys.executable, "-c", "import sys; print(sys.stdin.read().upper())"],
            os.getcwd(),
            childEnvironment(),
            stdin=b"hello",
        )
        self.assertEqual((out, status), (b"HELLO\n", 0), err)


class ServerProcessTests(TestCase):
    """
    L{ServerProcess} and L{waitUntilListening}.
    """

    timeout = 60

    def _spawn(self, code: str, *args: str) -> ServerProcess:
        server = ServerProcess()
        argv = [sys.executable, "-c", code, *args]
        reactor.spawnProcess(server, argv[0], argv, env=childEnvironment(), path=os.getcwd())

        def stop() -> object:
            if server.status is None:
                server.transport.signalProcess("KILL")
                return server.ended
            return None

        self.addCleanup(stop)
        return server

    async def test_killedBySignal(self) -> None:
        """
        A server killed by a signal ends with minus the signal's number.
        """
        server = self._spawn("import time; time.sleep(60)")
        server.transport.signalProcess("KILL")
        status = await server.ended
        self.assertEqual((status, server.status), (-signal.SIGKILL, -signal.SIGKILL))

    async def test_listening(self) -> None:
        """
        A child listening on the port is waited for, and the wait ends.
        """
        port = freePort()
        server = self._spawn(
            "import socket, sys, time\n"
            "time.sleep(0.3)\n"
            "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
            "print('listening', flush=True)\n"
            "time.sleep(60)\n",
            str(port),
        )
        await waitUntilListening(server, port, timeout=20)
        self.assertIn(b"listening", server.output)
        self.assertIsNone(server.status)

    async def test_endedBeforeListening(self) -> None:
        """
        A child that exits before listening fails the wait with its status
        and its output.
        """
        server = self._spawn("import sys; sys.exit('no such agent file')")
        with self.assertRaises(AssertionError) as raised:
            await waitUntilListening(server, freePort(), timeout=20)
        self.assertIn("ended (1)", str(raised.exception))
        self.assertIn("no such agent file", str(raised.exception))

    async def test_neverListening(self) -> None:
        """
        A child that runs but never listens fails the wait after the
        timeout, with its output.
        """
        server = self._spawn("import time; print('stuck', flush=True); time.sleep(60)")
        await waitFor(lambda: b"stuck" in server.output)
        with self.assertRaises(AssertionError) as raised:
            await waitUntilListening(server, freePort(), timeout=0.5)
        self.assertIn("nothing listened", str(raised.exception))
        self.assertIn("stuck", str(raised.exception))

    async def test_waitForEnd(self) -> None:
        """
        C{waitForEnd} fires with the status of a child that ends in time,
        and fails with the output of one still running after the timeout,
        which is left running.
        """
        quick = self._spawn("import sys; sys.exit(4)")
        self.assertEqual(await quick.waitForEnd(timeout=20), 4)
        slow = self._spawn("import time; print('busy', flush=True); time.sleep(60)")
        await waitFor(lambda: b"busy" in slow.output)
        with self.assertRaises(AssertionError) as raised:
            await slow.waitForEnd(timeout=0.3)
        self.assertIn("busy", str(raised.exception))
        self.assertIsNone(slow.status)
        self.assertFalse(slow.ended.called)
