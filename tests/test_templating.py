"""
Tests for L{ai_agent.templating}: the prompt body's includes (resolved when
an agent file loads) and variables (substituted per run), as the TypeScript
ai-agent's.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ai_agent.agentfile import AgentSpec, OutputSpec, loadAgent
from ai_agent.errors import ConfigurationError
from ai_agent.events import ContentDelta
from ai_agent.providers import ChatMessage, LLMResponse
from ai_agent.request import RunRequest
from ai_agent.session import SessionRunner
from ai_agent.templating import (
    MAX_INCLUDE_DEPTH,
    SUBAGENT_FORMAT,
    HostFacts,
    promptVariables,
    substituteVariables,
)
from ai_agent.testing import Reply, ScriptedProvider
from tests._harness import startServer
from tests._misbehaving import client

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "parity")

HOST = HostFacts(
    os="Debian GNU/Linux 12 (bookworm) (kernel 6.1.0)",
    arch="x86_64",
    kernel="Linux 6.1.0",
    hostname="box-7",
    user="agent-user",
    cd="/srv/agents",
    timezone="Europe/Athens",
    zone=ZoneInfo("Europe/Athens"),
)


def _write(directory: str, name: str, text: str) -> str:
    path = os.path.join(directory, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def _agentText(body: str, frontmatter: str = "models: a/b") -> str:
    return f"---\n{frontmatter}\n---\n{body}\n"


class IncludeTests(SynchronousTestCase):
    """
    C{${include:path}}, C{{{include:path}}} and Liquid's static include are
    resolved when the agent file loads.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def load(self, body: str, name: str = "agent.ai") -> AgentSpec:
        return loadAgent(_write(self.directory, name, _agentText(body)))

    def refusal(self, body: str, name: str = "agent.ai") -> str:
        path = _write(self.directory, name, _agentText(body))
        error = self.assertRaises(ConfigurationError, loadAgent, path)
        message = str(error)
        self.assertNotIn("\n", message)
        self.assertTrue(message.startswith(f"{path}: "), message)
        return message

    def test_relativeBothSyntaxes(self) -> None:
        """
        Both forms read the file relative to the agent file's folder (not
        the working directory) and put its text, without its final newline,
        where the directive was.
        """
        _write(self.directory, "parts/a.md", "Alpha rules.\n")
        _write(self.directory, "parts/b.md", "Beta rules.\n")
        spec = self.load("Start.\n${include:parts/a.md}\n{{include: parts/b.md }}\nEnd.")
        self.assertEqual(spec.prompt, "Start.\nAlpha rules.\nBeta rules.\nEnd.")

    def test_liquidStaticInclude(self) -> None:
        """
        The newer original's C{{% include "file" %}} and C{{% render 'file' %}}
        with a quoted path work as includes.
        """
        _write(self.directory, "a.md", "A")
        _write(self.directory, "b.md", "B")
        spec = self.load("{% include \"a.md\" %}+{%- render 'b.md' -%}")
        self.assertEqual(spec.prompt, "A+B")

    def test_nestedRelativeToIncludingFile(self) -> None:
        """
        An included file's own includes are relative to that file, and its
        variables stay for the run to substitute.
        """
        _write(self.directory, "shared/outer.md", "Outer ${include:inner/inner.md} ${FORMAT}")
        _write(self.directory, "shared/inner/inner.md", "Inner {{include:../leaf.md}}")
        _write(self.directory, "shared/leaf.md", "Leaf")
        self.assertEqual(
            self.load("${include:shared/outer.md}").prompt, "Outer Inner Leaf ${FORMAT}"
        )

    def test_absolutePathAllowed(self) -> None:
        """
        An absolute path outside the agent's folder is read (the original
        does not restrict include paths).
        """
        elsewhere = os.path.abspath(self.mktemp())
        target = _write(elsewhere, "common.md", "Common text")
        self.assertEqual(self.load(f"${{include:{target}}}").prompt, "Common text")

    def test_missing(self) -> None:
        """
        A missing file refuses the agent at load with one line naming the
        agent file, the line and the file it looked for.
        """
        message = self.refusal("Intro\n\n${include:nope/missing.md}")
        self.assertIn("line 3", message)
        self.assertIn("include 'nope/missing.md'", message)
        self.assertIn(os.path.join(self.directory, "nope", "missing.md"), message)
        self.assertIn("No such file or directory", message)

    def test_missingNested(self) -> None:
        """
        A missing file included by an included file is named with the
        included file that asked for it.
        """
        middle = _write(self.directory, "middle.md", "x\n${include:gone.md}")
        message = self.refusal("${include:middle.md}")
        self.assertIn(f"{middle}: line 2: include 'gone.md'", message)

    def test_cycle(self) -> None:
        """
        Files including each other (or the agent file itself) refuse the
        agent, naming the cycle.
        """
        _write(self.directory, "a.md", "${include:b.md}")
        _write(self.directory, "b.md", "{{include:a.md}}")
        self.assertIn(
            "include cycle: agent.ai -> a.md -> b.md -> a.md", self.refusal("${include:a.md}")
        )
        self.assertIn(
            "include cycle: self.ai -> self.ai", self.refusal("${include:self.ai}", "self.ai")
        )

    def test_sameFileTwiceIsNoCycle(self) -> None:
        """
        The same file included twice side by side is not a cycle.
        """
        _write(self.directory, "x.md", "X")
        self.assertEqual(self.load("${include:x.md}${include:x.md}").prompt, "XX")

    def test_depthBound(self) -> None:
        """
        A chain of L{MAX_INCLUDE_DEPTH} nested includes loads; one more
        level refuses the agent.
        """
        for level in range(1, MAX_INCLUDE_DEPTH + 2):
            _write(self.directory, f"l{level}.md", f"{level} ${{include:l{level + 1}.md}}")
        _write(self.directory, f"l{MAX_INCLUDE_DEPTH + 1}.md", "end")
        # l1 .. l8 are eight levels, l8 ends the chain.
        _write(self.directory, f"l{MAX_INCLUDE_DEPTH}.md", f"{MAX_INCLUDE_DEPTH} end")
        self.assertEqual(self.load("${include:l1.md}").prompt, "1 2 3 4 5 6 7 8 end")
        _write(self.directory, f"l{MAX_INCLUDE_DEPTH}.md", "8 ${include:l9.md}")
        self.assertIn(
            f"includes nested deeper than {MAX_INCLUDE_DEPTH} levels",
            self.refusal("${include:l1.md}"),
        )

    def test_envFileRefused(self) -> None:
        """
        C{.env} files hold secrets and are never included (as the original
        blocks them).
        """
        _write(self.directory, ".env", "OPENAI_API_KEY=sk-secret-value")
        message = self.refusal("${include:.env}")
        self.assertIn(".env files may not be included", message)
        self.assertNotIn("sk-secret-value", message)

    def test_liquidTagRefused(self) -> None:
        """
        Any other Liquid tag refuses the agent, naming the tag and its line
        (the newer original would render it; this server does not).
        """
        message = self.refusal("Hello\n{% if debug %}x{% endif %}")
        self.assertIn("line 2: Liquid tag {% if %} is not supported", message)
        _write(self.directory, "part.md", "{% for x in list %}")
        self.assertIn("Liquid tag {% for %}", self.refusal("${include:part.md}"))

    def test_reloadSeesChangedInclude(self) -> None:
        """
        Loading again (as a SIGHUP reload does) reads the included file
        again, and the agent's digest (its cache key) follows the change.
        """
        _write(self.directory, "rules.md", "Old rules")
        first = self.load("${include:rules.md}")
        _write(self.directory, "rules.md", "New rules")
        second = loadAgent(os.path.join(self.directory, "agent.ai"))
        self.assertEqual((first.prompt, second.prompt), ("Old rules", "New rules"))
        self.assertNotEqual(first.digest, second.digest)


class VariableTests(SynchronousTestCase):
    """
    The built-in variables and their substitution.
    """

    def test_everyVariable(self) -> None:
        """
        Each built-in has the run's value: the time ones from C{now} in the
        host's zone (RFC 3339 with the offset), the host's facts, the
        agent's limits and the format's description.
        """
        # 2025-08-31T11:30:00Z is a Sunday, 14:30 in Athens (summer time).
        values = promptVariables(1756639800.0, HOST, 12, 5, "markdown")
        self.assertEqual(
            dict(values),
            {
                "DATETIME": "2025-08-31T14:30:00+03:00",
                "TIMESTAMP": "1756639800",
                "DAY": "Sunday",
                "TIMEZONE": "Europe/Athens",
                "OS": HOST.os,
                "ARCH": "x86_64",
                "KERNEL": "Linux 6.1.0",
                "HOSTNAME": "box-7",
                "USER": "agent-user",
                "CD": "/srv/agents",
                "MAX_TURNS": "12",
                "MAX_TOOLS": "5",
                "FORMAT": "GitHub Markdown",
            },
        )

    def test_formatByOutput(self) -> None:
        """
        C{FORMAT} is the original's description of the agent's output
        format; a sub-agent's non-JSON answer is an internal exchange.
        """

        def form(fmt: str, sub: bool = False) -> str:
            return promptVariables(0.0, HOST, 1, 1, fmt, sub)["FORMAT"]

        self.assertEqual(form("json"), "json")
        self.assertEqual(form("json", True), "json")
        self.assertEqual(
            form("text"), "Plain text without any formatting or markdown. Do not wrap long lines."
        )
        self.assertEqual(form("markdown", True), SUBAGENT_FORMAT)

    def test_bothFormsUnknownAndEnvironment(self) -> None:
        """
        C{${NAME}} and C{{{NAME}}} are both substituted; an unknown name,
        an environment variable's name (C{HOME}, set in this process),
        a lower-case name and a spaced one stay as written.
        """
        os.environ.setdefault("HOME", "/root")
        text = "${DAY}/{{DAY}} ${NOPE} {{NOPE}} ${HOME} ${day} {{ DAY }} $DAY"
        self.assertEqual(
            substituteVariables(text, {"DAY": "Monday"}),
            "Monday/Monday ${NOPE} {{NOPE}} ${HOME} ${day} {{ DAY }} $DAY",
        )

    def test_currentHost(self) -> None:
        """
        L{HostFacts.current} reads this process's facts.
        """
        facts = HostFacts.current()
        self.assertEqual(facts.cd, os.getcwd())
        self.assertNotEqual(facts.hostname, "")
        self.assertNotEqual(facts.timezone, "")


class SessionVariableTests(SynchronousTestCase):
    """
    The session substitutes the variables in the system prompt of each
    run, at the run's time on the runner's reactor.
    """

    def test_runTime(self) -> None:
        """
        Two runs at different clock times send different C{DATETIME},
        C{TIMESTAMP} and C{DAY}; the agent's limits and format are filled
        in, unknown names and the client's messages are left alone.
        """
        clock = Clock()
        clock.advance(1756639800.0)
        provider = ScriptedProvider(
            name="first", replies=[LLMResponse(content="a"), LLMResponse(content="b")]
        )
        runner = SessionRunner({"first": provider}.__getitem__, clock, host=HOST)
        agent = AgentSpec(
            path="/agents/a.ai",
            name="a",
            prompt="At ${DATETIME} ({{TIMESTAMP}}, ${DAY}): ${MAX_TURNS}/${MAX_TOOLS}"
            " in ${FORMAT}; ${UNKNOWN} ${HOME}",
            models=("first/m",),
            maxTurns=7,
            maxToolCallsPerTurn=2,
            output=OutputSpec("text"),
        )
        request = RunRequest((ChatMessage("user", "${DATETIME}"),))
        self.successResultOf(runner.run(agent, request, lambda e: None))
        clock.advance(86400 + 3600)
        self.successResultOf(runner.run(agent, request, lambda e: None))
        text = "Plain text without any formatting or markdown. Do not wrap long lines."
        self.assertEqual(
            [r.messages[0].content for r in provider.requests],
            [
                f"At 2025-08-31T14:30:00+03:00 (1756639800, Sunday): 7/2 in {text};"
                " ${UNKNOWN} ${HOME}",
                f"At 2025-09-01T15:30:00+03:00 (1756729800, Monday): 7/2 in {text};"
                " ${UNKNOWN} ${HOME}",
            ],
        )
        self.assertEqual(provider.requests[0].messages[1].content, "${DATETIME}")

    def test_madeOnlyWhenReferenced(self) -> None:
        """
        A run of an agent whose prompt names no variable never makes them
        (its host's zone is not consulted, so the date is not formatted);
        one whose prompt does gets them made once, at the run's time.
        """
        zone = _CountingZone()
        host = HostFacts("o", "a", "k", "h", "u", "/", "UTC", zone)
        clock = Clock()
        clock.advance(86400.0)
        provider = ScriptedProvider(
            name="first", replies=[LLMResponse(content="a"), LLMResponse(content="b")]
        )
        runner = SessionRunner({"first": provider}.__getitem__, clock, host=host)
        request = RunRequest((ChatMessage("user", "${DATETIME} {{DAY}}"),))
        plain = AgentSpec(path="/a.ai", name="a", prompt="Be brief.", models=("first/m",))
        self.successResultOf(runner.run(plain, request, lambda e: None))
        self.assertEqual(zone.consulted, 0)
        dated = AgentSpec(path="/b.ai", name="b", prompt="${DAY} {{DATETIME}}", models=("first/m",))
        self.successResultOf(runner.run(dated, request, lambda e: None))
        self.assertEqual(zone.consulted, 1)
        self.assertEqual(
            [r.messages[0].content for r in provider.requests],
            ["Be brief.", "Friday 1970-01-02T00:00:00+00:00"],
        )

    def test_utcZone(self) -> None:
        """
        In UTC the offset is written C{+00:00}.
        """
        host = HostFacts("o", "a", "k", "h", "u", "/", "UTC", UTC)
        self.assertEqual(
            promptVariables(0.0, host, 1, 1, "json")["DATETIME"], "1970-01-01T00:00:00+00:00"
        )


class _CountingZone(tzinfo):
    """
    UTC, counting how often a time is converted into it.
    """

    consulted = 0

    def fromutc(self, moment: datetime) -> datetime:
        self.consulted += 1
        return moment

    def utcoffset(self, moment: datetime | None) -> timedelta:
        return timedelta(0)

    def dst(self, moment: datetime | None) -> timedelta:
        return timedelta(0)

    def tzname(self, moment: datetime | None) -> str:
        return "UTC"


_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d")


class EndToEndTests(TestCase):
    """
    Through the server and the parity fixture: the prompt the fake upstream
    receives has the includes resolved and the variables substituted.
    """

    async def test_chatCompletions(self) -> None:
        """
        A Chat Completions request over HTTP: the upstream's system message
        has the included file's text and the run's values, and the
        environment variable stays literal.
        """
        shared = os.path.abspath(self.mktemp())
        rules = _write(shared, "rules.md", "Turns: ${MAX_TURNS}. Now: ${DATETIME}. Home: ${HOME}")
        server = await startServer(
            self,
            {
                "agent.ai": _agentText(
                    f"You are the test agent.\n${{include:{rules}}}\nRespond in {{{{FORMAT}}}}.",
                    "models: fake/test-model\nmaxTurns: 5",
                )
            },
        )
        server.upstream.script(Reply(content="ok"))
        response = await client(self).post(
            server.baseUrl + "/chat/completions",
            json.dumps(
                {"model": "agent", "messages": [{"role": "user", "content": "hi"}]}
            ).encode(),
            headers={"content-type": ["application/json"]},
        )
        self.assertEqual(response.code, 200, await response.text())
        system = server.upstream.requests[0].body["messages"][0]
        self.assertEqual(system["role"], "system")
        match = re.fullmatch(
            r"You are the test agent\.\nTurns: 5\. Now: (\S+)\. Home: \$\{HOME\}\n"
            r"Respond in GitHub Markdown\.",
            system["content"],
        )
        self.assertIsNotNone(match, system["content"])
        assert match is not None
        self.assertRegex(match.group(1), _RFC3339)

    async def test_parityFixture(self) -> None:
        """
        C{tests/fixtures/parity/briefing.ai}, in the original's style,
        includes C{shared/briefing-rules.md} and uses C{${FORMAT}}, the
        limits and the time; its run sends them filled in.
        """
        from ai_agent.runtime import buildRuntime
        from ai_agent.testing import startFakeUpstream

        upstream = await startFakeUpstream(reactor)
        self.addCleanup(upstream.stop)
        environ = {
            "HOME": os.path.abspath(self.mktemp()),
            "FAKE_URL": upstream.baseUrl,
            "FAKE_KEY": "sk-fake-0123456789",
        }
        path = os.path.join(FIXTURES, "briefing.ai")
        runtime = buildRuntime(reactor, [path], cwd=FIXTURES, environ=environ)
        self.addCleanup(runtime.close)
        upstream.upstream.script(Reply(content="Briefing."))
        events: list[Any] = []
        spec = runtime.registry.byPath[path]
        await runtime.runner.run(spec, RunRequest((ChatMessage("user", "AI"),)), events.append)
        self.assertEqual(
            "".join(e.text for e in events if isinstance(e, ContentDelta)), "Briefing."
        )
        prompt = upstream.upstream.requests[0].body["messages"][0]["content"]
        self.assertIn("You write a short morning briefing", prompt)
        self.assertIn(
            "- You have 4 turns and at most 3 tool calls per turn; plan within them.", prompt
        )
        self.assertIn("- Respond in GitHub Markdown.", prompt)
        self.assertNotIn("${", prompt)
        self.assertNotIn("{{", prompt)


class ReloadTests(TestCase):
    """
    A reload (what C{SIGHUP} triggers) reads the included files again.
    """

    def test_reloadReadsIncludes(self) -> None:
        """
        After an included file changes, L{Reloader.reload} serves the agent
        with the new text; an include that went missing fails the reload
        and the previous prompt is still served.
        """
        from ai_agent.reload import Reloader
        from ai_agent.runtime import buildRuntime

        folder = os.path.abspath(self.mktemp())
        with open(_write(folder, ".ai-agent.json", ""), "w") as f:
            json.dump({"providers": {"fake": {"type": "openai", "baseUrl": "http://h/v1"}}}, f)
        agent = _write(
            folder, "agents/chat.ai", _agentText("${include:../shared/rules.md}", "models: fake/m")
        )
        rules = _write(folder, "shared/rules.md", "Rules v1")
        environ = {"HOME": folder}
        runtime = buildRuntime(reactor, [agent], cwd=folder, environ=environ)
        self.addCleanup(runtime.close)
        reloader = Reloader(reactor, runtime, [agent], None, cwd=folder, environ=environ)
        self.assertEqual(runtime.registry.byPath[agent].prompt, "Rules v1")
        _write(folder, "shared/rules.md", "Rules v2")
        self.assertTrue(reloader.reload())
        self.assertEqual(runtime.registry.byPath[agent].prompt, "Rules v2")
        os.remove(rules)
        self.assertFalse(reloader.reload())
        self.assertEqual(runtime.registry.byPath[agent].prompt, "Rules v2")
