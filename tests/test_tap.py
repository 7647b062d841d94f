"""
The twistd plugin and the server options, including C{twistd -n ai-agent}
and C{ai-agent --openai-completions} serving requests as subprocesses.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

import treq
from twisted.internet import reactor
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from ai_agent.tap import Options, endpointFor
from ai_agent.testing import startFakeUpstream
from tests._harness import writeAgent
from tests._process import (
    ServerProcess,
    childEnvironment,
    command,
    freePort,
    run,
    waitUntilListening,
)


class OptionsTests(SynchronousTestCase):
    """
    C{twistd ai-agent} options are validated up front.
    """

    def setUp(self) -> None:
        folder = self.mktemp()
        os.makedirs(folder)
        self.agent = writeAgent(folder, "a.ai")

    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_barePortBindsHost(self) -> None:
        """
        A bare port binds 127.0.0.1 unless C{--host} says otherwise.
        """
        options = self.parse("--agent", self.agent, "--openai-completions", "8082")
        self.assertEqual(options["endpoints"], ["tcp:8082:interface=127.0.0.1:backlog=1024"])
        options = self.parse(
            "--agent", self.agent, "--openai-completions", "8082", "--host", "0.0.0.0"
        )
        self.assertEqual(options["endpoints"], ["tcp:8082:interface=0.0.0.0:backlog=1024"])

    def test_repeatable(self) -> None:
        """
        C{--agent} and C{--openai-completions} may repeat; endpoint strings
        pass through.
        """
        options = self.parse(
            "--agent",
            self.agent,
            "--agent",
            self.agent,
            "--openai-completions",
            "8082",
            "--openai-completions",
            "tcp:9000:interface=::1",
        )
        self.assertEqual(len(options["agents"]), 2)
        self.assertEqual(options["endpoints"][1], "tcp:9000:interface=::1")

    def test_defaults(self) -> None:
        """
        Concurrency defaults to 4 and the queue to four times it.
        """
        options = self.parse("--agent", self.agent, "--openai-completions", "1")
        self.assertEqual(options["openai-completions-concurrency"], 4)
        self.assertEqual(options["openai-completions-queue"], 16)
        self.assertEqual(options["openai-completions-queue-timeout"], 30.0)

    def test_refused(self) -> None:
        """
        No agent, a missing agent file, no port, a bad port or a concurrency
        below 1 are usage errors.
        """
        cases = [
            ["--openai-completions", "8082"],
            ["--agent", "missing.ai", "--openai-completions", "8082"],
            ["--agent", self.agent],
            ["--agent", self.agent, "--openai-completions", "http"],
            ["--agent", self.agent, "--openai-completions", "70000"],
            [
                "--agent",
                self.agent,
                "--openai-completions",
                "1",
                "--openai-completions-concurrency",
                "0",
            ],
        ]
        for argv in cases:
            self.assertRaises(usage.UsageError, self.parse, *argv)

    def test_metricsOptions(self) -> None:
        """
        Metrics are on by default with no port of their own; a bare
        C{--metrics-port} binds 127.0.0.1 whatever C{--host} says; it does
        not go with C{--no-metrics}.
        """
        options = self.parse("--agent", self.agent, "--openai-completions", "1")
        self.assertEqual((options["metrics"], options["metrics-endpoint"]), (True, None))
        options = self.parse(
            *("--agent", self.agent, "--openai-completions", "1", "--host", "0.0.0.0"),
            *("--metrics-port", "9464"),
        )
        self.assertEqual(options["metrics-endpoint"], "tcp:9464:interface=127.0.0.1:backlog=1024")
        self.assertFalse(
            self.parse("--agent", self.agent, "--openai-completions", "1", "--no-metrics")[
                "metrics"
            ]
        )
        self.assertRaises(
            usage.UsageError,
            self.parse,
            *("--agent", self.agent, "--openai-completions", "1"),
            *("--metrics-port", "9464", "--no-metrics"),
        )

    def test_endpointFor(self) -> None:
        """
        An IPv6 host is escaped in the endpoint string.
        """
        self.assertEqual(endpointFor("80", "::1"), "tcp:80:interface=\\:\\:1:backlog=1024")


class ServerProcessTests(TestCase):
    """
    The installed plugin and both server commands work as processes.
    """

    async def test_pluginInstalled(self) -> None:
        """
        From outside the checkout, C{getPlugins} finds the C{ai-agent}
        twistd plugin in the installed package.
        """
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        code = (
            "from twisted.plugin import getPlugins\n"
            "from twisted.application.service import IServiceMaker\n"
            "print([m.tapname for m in getPlugins(IServiceMaker)])\n"
        )
        out, err, status = await run(
            [sys.executable, "-c", code], folder, childEnvironment(checkout=False, HOME=folder)
        )
        self.assertEqual(status, 0, err)
        self.assertIn("'ai-agent'", out.decode())

    async def _serve(self, argv: list[str], expectedStatus: int) -> None:
        """
        Run the server command C{argv} (C{PORT} replaced by a free port),
        ask it for a chat completion, stop it with SIGTERM, and check it
        ended with C{expectedStatus} after stopping its service.
        """
        running = await startFakeUpstream(reactor)
        self.addCleanup(running.stop)
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        with open(os.path.join(folder, ".ai-agent.json"), "w") as f:
            json.dump({"providers": {"fake": {"type": "openai", "baseUrl": running.baseUrl}}}, f)
        writeAgent(folder, "chat.ai")
        port = freePort()
        protocol = ServerProcess()
        full = [a.replace("PORT", str(port)) for a in argv]
        reactor.spawnProcess(
            protocol, full[0], full, env=childEnvironment(HOME=folder), path=folder
        )
        pool = HTTPConnectionPool(reactor, persistent=False)
        client = treq.client.HTTPClient(Agent(reactor, pool=pool))
        base = f"http://127.0.0.1:{port}"
        try:
            await waitUntilListening(protocol, port)
            response = await client.post(
                base + "/v1/chat/completions",
                json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
            )
            body = await response.json()
            self.assertEqual(response.code, 200)
            self.assertEqual(body["choices"][0]["message"]["content"], "echo: hi")
        finally:
            if protocol.status is None:
                os.kill(protocol.transport.pid, signal.SIGTERM)
            status = await protocol.waitForEnd()
        output = protocol.output.decode()
        self.assertEqual(status, expectedStatus, output)
        # The service stopped (not just the process): a crash by the same
        # signal would not log this.
        # (twistd's log names the namespace, ai-agent's does not.)
        self.assertRegex(output, r"(?m)^\S+ (\[ai_agent\.tap#info\] )?stopped$")

    async def test_twistd(self) -> None:
        """
        C{twistd -n ai-agent} serves a chat completion and stops cleanly on
        SIGTERM, then ends by re-raising it, as twistd does.
        """
        await self._serve(
            [
                *command("twistd"),
                "-n",
                "--pidfile=",
                "ai-agent",
                "--agent",
                "chat.ai",
                "--openai-completions",
                "PORT",
            ],
            # twistd re-raises the signal that stopped it, once stopped.
            expectedStatus=-signal.SIGTERM,
        )

    async def test_cliHeadend(self) -> None:
        """
        C{ai-agent --openai-completions} serves the same service and exits
        0 on SIGTERM.
        """
        await self._serve(
            [*command("ai-agent"), "--agent", "chat.ai", "--openai-completions", "PORT"],
            expectedStatus=0,
        )


class FailedStartTests(TestCase):
    """
    C{twistd -n ai-agent} that cannot start ends with one line and a
    non-zero status, and leaves no C{twistd.pid} behind (the next start
    would otherwise have to tell a stale pid file from a running server).
    """

    async def _twistd(self, folder: str, *args: str) -> tuple[str, int]:
        home = os.path.abspath(self.mktemp())
        os.makedirs(home)
        out, err, status = await run(
            [*command("twistd"), "-n", "ai-agent", *args], folder, childEnvironment(HOME=home)
        )
        return (out + err).decode(), status

    def _folder(self, agent: str = "---\nmodels: openai/gpt-x\n---\nHi.\n") -> str:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        with open(os.path.join(folder, "chat.ai"), "w") as f:
            f.write(agent)
        return folder

    async def test_busyPortLeavesNoPidFile(self) -> None:
        """
        A port in use is found once twistd has written its pid file: the
        file is removed again, and the one line says why.
        """
        folder = self._folder()
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            output, status = await self._twistd(
                folder, "--agent", "chat.ai", "--openai-completions", str(port)
            )
        self.assertNotEqual(status, 0, output)
        self.assertIn(f"cannot listen on 127.0.0.1:{port}", output)
        self.assertNotIn("Traceback", output)
        self.assertEqual(os.listdir(folder), ["chat.ai"], output)

    async def test_badAgentLeavesNoPidFile(self) -> None:
        """
        An invalid agent file and an unknown option end twistd before it
        writes a pid file.
        """
        folder = self._folder("---\nmodles: openai/gpt-x\n---\nHi.\n")
        for args in (
            ["--agent", "chat.ai", "--openai-completions", "0"],
            ["--agent", "chat.ai", "--no-such-option"],
        ):
            output, status = await self._twistd(folder, *args)
            self.assertNotEqual(status, 0, output)
            self.assertNotIn("Traceback", output)
            self.assertEqual(os.listdir(folder), ["chat.ai"], output)


class FreezeHeapTests(SynchronousTestCase):
    """
    L{ai_agent.tap.freezeHeap}, which the server calls once it is ready.
    """

    def test_startupHeapFrozen(self) -> None:
        """
        Every object alive when the server is ready leaves the collector's
        generations (it is counted as frozen).
        """
        import gc

        from ai_agent.tap import freezeHeap

        class Kept:
            pass

        kept = Kept()
        self.assertIn(kept, gc.get_objects())
        before = gc.get_freeze_count()
        try:
            freezeHeap()
            self.assertGreater(gc.get_freeze_count(), before)
            self.assertNotIn(kept, gc.get_objects())
        finally:
            gc.unfreeze()
