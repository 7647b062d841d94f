"""
The C{ai-agent} command in direct mode, run as a subprocess against the
real fake upstream.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

from twisted.internet import reactor
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ai_agent import cli
from ai_agent.observe import DebugLogger
from ai_agent.testing import Reply, startFakeUpstream
from tests._harness import SENTINEL_KEY, writeAgent
from tests._process import childEnvironment, command, run

AGENT = """\
#!/usr/bin/env ai-agent
---
description: CLI test agent
models: local/small-model
---
You are the CLI test agent.
"""


class DirectModeTests(TestCase):
    """
    C{ai-agent --agent FILE PROMPT} streams the answer to stdout, logs to
    stderr, and exits non-zero with a clear message on any problem.
    """

    async def setUpProject(self, agentText: str = AGENT) -> tuple[str, str]:
        running = await startFakeUpstream(reactor)
        self.addCleanup(running.stop)
        self.upstream = running.upstream
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        with open(os.path.join(folder, ".ai-agent.json"), "w") as f:
            json.dump(
                {
                    "providers": {
                        "local": {
                            "type": "openai",
                            "baseUrl": running.baseUrl,
                            "apiKey": "${LOCAL_KEY}",
                        }
                    }
                },
                f,
            )
        with open(os.path.join(folder, ".ai-agent.env"), "w") as f:
            f.write(f"LOCAL_KEY={SENTINEL_KEY}\n")
        return folder, writeAgent(folder, "chat.ai", agentText)

    async def test_answers(self) -> None:
        """
        The answer from the configured provider is printed on stdout, the
        upstream got the agent prompt as its first system message, the key
        from the env file as a bearer token, and the exit code is 0.
        """
        folder, _ = await self.setUpProject()
        out, err, code = await run(
            [*command("ai-agent"), "--agent", "chat.ai", "hello there"],
            folder,
            childEnvironment(HOME=folder),
        )
        self.assertEqual((out.decode(), code), ("echo: hello there\n", 0), err)
        request = self.upstream.requests[0]
        self.assertEqual(
            request.body["messages"][0],
            {"role": "system", "content": "You are the CLI test agent."},
        )
        self.assertEqual(request.headers["authorization"], f"Bearer {SENTINEL_KEY}")
        self.assertNotIn(SENTINEL_KEY.encode(), err)

    async def test_stdinPrompt(self) -> None:
        """
        C{-} reads the prompt from standard input.
        """
        folder, _ = await self.setUpProject()
        out, err, code = await run(
            [*command("ai-agent"), "--agent", "chat.ai", "-"],
            folder,
            childEnvironment(HOME=folder),
            stdin=b"from stdin",
        )
        self.assertEqual((out.decode(), code), ("echo: from stdin\n", 0), err)

    async def test_filePrompt(self) -> None:
        """
        C{@path} reads the prompt from a file.
        """
        folder, _ = await self.setUpProject()
        with open(os.path.join(folder, "q.txt"), "w") as f:
            f.write("from a file")
        out, err, code = await run(
            [*command("ai-agent"), "--agent", "chat.ai", "@q.txt"],
            folder,
            childEnvironment(HOME=folder),
        )
        self.assertEqual((out.decode(), code), ("echo: from a file\n", 0), err)

    async def test_shebang(self) -> None:
        """
        The agent file may come first without C{--agent}, as its shebang
        line passes it.
        """
        folder, path = await self.setUpProject()
        out, err, code = await run(
            [*command("ai-agent"), path, "hi"], folder, childEnvironment(HOME=folder)
        )
        self.assertEqual((out.decode(), code), ("echo: hi\n", 0), err)

    async def test_bogusKey(self) -> None:
        """
        A bogus frontmatter key is refused by name, with exit code 2 and no
        upstream call.
        """
        folder, _ = await self.setUpProject(AGENT.replace("models:", "modle: x\nmodels:"))
        out, err, code = await run(
            [*command("ai-agent"), "--agent", "chat.ai", "hi"],
            folder,
            childEnvironment(HOME=folder),
        )
        self.assertEqual(code, 2)
        self.assertIn(b"modle", err)
        self.assertIn(b"chat.ai", err)
        self.assertEqual(out, b"")
        self.assertEqual(self.upstream.requests, [])

    async def test_missingFile(self) -> None:
        """
        A missing agent file is named, with exit code 2.
        """
        folder, _ = await self.setUpProject()
        out, err, code = await run(
            [*command("ai-agent"), "--agent", "nope.ai", "hi"],
            folder,
            childEnvironment(HOME=folder),
        )
        self.assertEqual(code, 2)
        self.assertIn(b"nope.ai", err)

    async def test_missingPrompt(self) -> None:
        """
        Direct mode without a prompt is a usage error.
        """
        folder, _ = await self.setUpProject()
        out, err, code = await run(
            [*command("ai-agent"), "--agent", "chat.ai"], folder, childEnvironment(HOME=folder)
        )
        self.assertEqual(code, 2)
        self.assertIn(b"PROMPT", err)

    async def test_providerFailure(self) -> None:
        """
        A provider that keeps failing gives exit code 1 and a message
        naming the provider, never the key.
        """
        folder, _ = await self.setUpProject()
        self.upstream.script(*[Reply(status=500) for _ in range(3)])
        out, err, code = await run(
            [*command("ai-agent"), "--agent", "chat.ai", "hi"],
            folder,
            childEnvironment(HOME=folder),
        )
        self.assertEqual(code, 1)
        self.assertIn(b"'local'", err)
        self.assertNotIn(SENTINEL_KEY.encode(), err + out)

    async def test_missingVariable(self) -> None:
        """
        An unset key variable does not stop loading; the run fails with a
        message naming the variable.
        """
        folder, _ = await self.setUpProject()
        os.remove(os.path.join(folder, ".ai-agent.env"))
        out, err, code = await run(
            [*command("ai-agent"), "--agent", "chat.ai", "hi"],
            folder,
            childEnvironment(HOME=folder),
        )
        self.assertEqual(code, 1)
        self.assertIn(b"LOCAL_KEY", err)
        self.assertEqual(self.upstream.requests, [])


class _Beginner:
    """
    Stands for twisted.logger's global beginner: keeps the observers it is
    given instead of starting the process's logging.
    """

    def __init__(self) -> None:
        self.observers: list[Any] = []

    def beginLoggingTo(self, observers: list[Any], **kwargs: Any) -> None:
        self.observers.extend(observers)


class LogLevelTests(SynchronousTestCase):
    """
    The level the CLI logs at decides whether debug events are made at all
    (L{ai_agent.observe.DebugLogger}).
    """

    def _start(self, *arguments: str) -> LogLevel:
        self.addCleanup(setattr, DebugLogger, "written", DebugLogger.written)
        self.patch(cli, "globalLogBeginner", _Beginner())
        directory = self.mktemp()
        os.makedirs(directory)
        agent = writeAgent(directory, "a.ai")
        options = cli.Options()
        options.parseOptions(["--agent", agent, *arguments])
        predicate = cli._startLogging(options, io.StringIO())
        return predicate.defaultLogLevel

    def test_serverMakesNoDebugEvents(self) -> None:
        """
        A server logs at info: its debug events are not made.
        """
        DebugLogger.written = True
        self.assertEqual(self._start("--openai-completions", "0"), LogLevel.info)
        self.assertFalse(DebugLogger.written)

    def test_quietMakesNoDebugEvents(self) -> None:
        """
        C{--quiet} logs errors only: no debug events either.
        """
        DebugLogger.written = True
        self.assertEqual(self._start("--openai-completions", "0", "--quiet"), LogLevel.error)
        self.assertFalse(DebugLogger.written)


class VersionTests(SynchronousTestCase):
    """
    C{--version} and C{-V} print this project's version, not Twisted's.
    """

    def test_version(self) -> None:
        """
        Both spellings print C{ai-agent <version>} and exit 0.
        """
        import io

        from ai_agent import __version__, cli

        for flag in ("--version", "-V"):
            out, err = io.StringIO(), io.StringIO()
            self.assertEqual(cli.run([flag], out, err), 0)
            self.assertEqual(out.getvalue(), f"ai-agent {__version__}\n")


class OptionNameTests(SynchronousTestCase):
    """
    A mistyped option's error names the options that were meant.
    """

    def _error(self, *argv: str) -> str:
        import io

        from ai_agent import cli

        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(cli.run(list(argv), out, err), cli.EXIT_USAGE)
        self.assertEqual(out.getvalue(), "")
        return err.getvalue()

    def test_ambiguousPrefix(self) -> None:
        """
        A prefix of several options (C{--openai-completion}) is one line
        naming each of them, not getopt's bare "not a unique prefix".
        """
        first = self._error("--agent", "a.ai", "--openai-completion", "8082").splitlines()[0]
        self.assertEqual(
            first,
            "ai-agent: --openai-completion is ambiguous: it could be --openai-completions,"
            " --openai-completions-concurrency, --openai-completions-queue,"
            " --openai-completions-queue-timeout; give the whole name",
        )

    def test_unknownOption(self) -> None:
        """
        An unknown option names the closest one, when one is close.
        """
        first = self._error("--agnt", "a.ai").splitlines()[0]
        self.assertEqual(first, "ai-agent: unknown option --agnt; did you mean '--agent'?")
        self.assertEqual(
            self._error("--zzzzzz").splitlines()[0], "ai-agent: unknown option --zzzzzz"
        )

    def test_explainOption(self) -> None:
        """
        L{explainOption} rewrites only getopt's two option errors, and cuts
        a long list of candidates.
        """
        from ai_agent.tap import explainOption

        many = [f"opt-{i}=" for i in range(12)]
        self.assertEqual(
            explainOption("option --opt not a unique prefix", many),
            "--opt is ambiguous: it could be --opt-0, --opt-1, --opt-10, --opt-11, --opt-2,"
            " --opt-3, --opt-4, --opt-5, … (12 in all); give the whole name",
        )
        self.assertEqual(explainOption("--port must be positive", many), "--port must be positive")
