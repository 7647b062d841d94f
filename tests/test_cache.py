"""
Tests for L{ai_agent.cache}: agents' C{cache} and MCP servers'
C{cache}/C{toolsCache}, kept in the run store.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any, Mapping, Sequence

import attrs
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ai_agent.agentfile import AgentSpec
from ai_agent.cache import RUN_CACHE, TOOL_CACHE, ResponseCache
from ai_agent.config import McpServerConfig
from ai_agent.errors import ProviderError
from ai_agent.events import ClientToolCall, ContentDelta, Event, EventSink, FinishReason, Usage
from ai_agent.providers import ChatMessage, LLMResponse, ToolCall, ToolSpec
from ai_agent.request import ClientTool, RunRequest
from ai_agent.session import SessionRunner
from ai_agent.store import MemoryStore
from ai_agent.testing import Reply, ScriptedProvider, startFakeUpstream
from tests._harness import SENTINEL_KEY, inThread
from tests._process import ServerProcess, childEnvironment, command, freePort, waitUntilListening


def _agent(**kwargs: Any) -> AgentSpec:
    values: dict[str, Any] = {
        "path": "/agents/c.ai",
        "name": "c",
        "prompt": "You are C.",
        "models": ("first/m1",),
        "cache": 3600.0,
        "digest": "d1",
    }
    values.update(kwargs)
    return AgentSpec(**values)


def _request(text: str = "hi", **kwargs: Any) -> RunRequest:
    return RunRequest((ChatMessage("user", text),), **kwargs)


@attrs.define
class _CountingTools:
    """
    One tool, C{s__t}, cached for C{ttl}, counting its calls.
    """

    ttl: float | None = 60.0
    calls: list[Mapping[str, Any]] = attrs.field(factory=list)

    def specs(self) -> Sequence[ToolSpec]:
        return [ToolSpec("s__t", "t", {"type": "object"})]

    def call(self, name: str, arguments: Mapping[str, Any], sink: EventSink) -> Deferred[str]:
        self.calls.append(arguments)
        return succeed(f"result {len(self.calls)}")

    def cacheTTL(self, name: str) -> float | None:
        return self.ttl


class RunCacheTests(SynchronousTestCase):
    """
    Agent runs answered from the cache.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryStore(self.clock)
        self.provider = ScriptedProvider("first")
        self.runner = SessionRunner(
            lambda name: self.provider, self.clock, cache=ResponseCache(self.store)
        )

    def runAgent(self, agent: AgentSpec, request: RunRequest) -> tuple[Any, list[Event]]:
        events: list[Event] = []
        finished = self.successResultOf(self.runner.run(agent, request, events.append))
        return finished, events

    def answer(self, events: list[Event]) -> str:
        return "".join(e.text for e in events if isinstance(e, ContentDelta))

    def test_hit(self) -> None:
        """
        The same request again is answered from the cache: no upstream
        call, the same answer and finish reason, zero usage.
        """
        self.provider.replies = [LLMResponse(content="cached answer", usage=Usage(10, 3))]
        first, _ = self.runAgent(_agent(), _request())
        again, events = self.runAgent(_agent(), _request())
        self.assertEqual(len(self.provider.requests), 1)
        self.assertEqual(self.answer(events), "cached answer")
        self.assertEqual((again.reason, again.usage), (first.reason, Usage()))
        self.assertEqual(first.usage, Usage(10, 3))

    def test_missOnChangedInput(self) -> None:
        """
        Another message, other instructions, other sampling, another
        principal, another version of the agent file, or caching off: each
        is a new run.
        """
        self.runAgent(_agent(), _request())
        variants = [
            (_agent(), _request("hello")),
            (_agent(), _request(instructions=("be brief",))),
            (
                _agent(),
                attrs.evolve(
                    _request(), sampling=attrs.evolve(_request().sampling, temperature=0.5)
                ),
            ),
            (_agent(), _request(owner="team-b")),
            (_agent(digest="d2"), _request()),
            (_agent(cache=None), _request()),
        ]
        for number, (agent, request) in enumerate(variants, 2):
            self.runAgent(agent, request)
            self.assertEqual(len(self.provider.requests), number)

    def test_ttlExpiry(self) -> None:
        """
        An answer is kept for the agent's C{cache} seconds, no longer.
        """
        agent = _agent(cache=60.0)
        self.runAgent(agent, _request())
        self.clock.advance(59)
        self.runAgent(agent, _request())
        self.assertEqual(len(self.provider.requests), 1)
        self.clock.advance(2)
        self.runAgent(agent, _request())
        self.assertEqual(len(self.provider.requests), 2)

    def test_failedNotKept(self) -> None:
        """
        A failed run is not kept: the next one calls the model.
        """
        self.provider.replies = [ProviderError("down", code="x")]
        self.failureResultOf(
            self.runner.run(_agent(maxRetries=1), _request(), lambda e: None), ProviderError
        )
        self.runAgent(_agent(maxRetries=1), _request())
        self.assertEqual(len(self.provider.requests), 2)
        self.assertEqual(self.successResultOf(self.store.stats(RUN_CACHE)).entries, 1)

    def test_cancelledNotKept(self) -> None:
        """
        A cancelled run is not kept.
        """
        held: Deferred[LLMResponse] = Deferred()
        self.provider.replies = [held]
        running = self.runner.run(_agent(), _request(), lambda e: None)
        running.cancel()
        self.failureResultOf(running, CancelledError)
        self.assertEqual(self.successResultOf(self.store.stats(RUN_CACHE)).entries, 0)

    def test_clientToolsNotKept(self) -> None:
        """
        A run that handed a client tool call back is not kept.
        """
        tool = ClientTool(ToolSpec("lookup", "l", {"type": "object"}), "tools[0]")
        self.provider.replies = [
            LLMResponse(content="", toolCalls=(ToolCall("c", "lookup", "{}"),)),
            LLMResponse(content="", toolCalls=(ToolCall("c", "lookup", "{}"),)),
        ]
        request = _request(clientTools=(tool,))
        finished, events = self.runAgent(_agent(), request)
        self.assertEqual(finished.reason, FinishReason.TOOL_CALLS)
        self.assertTrue([e for e in events if isinstance(e, ClientToolCall)])
        self.runAgent(_agent(), request)
        self.assertEqual(len(self.provider.requests), 2)
        self.assertEqual(self.successResultOf(self.store.stats(RUN_CACHE)).entries, 0)


class SubAgentCacheTests(SynchronousTestCase):
    """
    A cached sub-agent's answers belong to the principal of the parent run.
    """

    def test_perPrincipal(self) -> None:
        """
        The same sub-agent call is answered from the cache for the same
        principal, and runs again for another one.
        """
        from ai_agent.tools import ToolBoxFactory

        child = _agent(path="/agents/child.ai", name="child", models=("c/m",), description="C")
        parent = _agent(
            path="/agents/parent.ai",
            name="parent",
            models=("p/m",),
            cache=None,
            agents=(child.path,),
        )
        call = LLMResponse(
            content="", toolCalls=(ToolCall("a", "agent__child", '{"prompt": "x"}'),)
        )
        parentProvider = ScriptedProvider("p", [call, LLMResponse(content="done")] * 3)
        childProvider = ScriptedProvider("c", [LLMResponse(content="child says")] * 3)
        providers = {"p": parentProvider, "c": childProvider}
        clock = Clock()
        factory = ToolBoxFactory({child.path: child, parent.path: parent})
        runner = SessionRunner(
            providers.__getitem__, clock, factory, cache=ResponseCache(MemoryStore(clock))
        )
        factory.runner = runner
        for owner in ("team-a", "team-a", "team-b"):
            self.successResultOf(runner.run(parent, _request(owner=owner), lambda e: None))
        self.assertEqual(len(childProvider.requests), 2)
        results = [m.content for m in parentProvider.requests[3].messages if m.role == "tool"]
        self.assertEqual(results, ["child says"])


class ToolCacheTests(SynchronousTestCase):
    """
    Tool results kept for their server's C{cache}.
    """

    def test_toolHit(self) -> None:
        """
        The same tool with the same arguments (in any key order) is
        answered from the cache; other arguments call the tool; the model
        reads the cached result as the tool's.
        """
        clock = Clock()
        store = MemoryStore(clock)
        tools = _CountingTools()
        provider = ScriptedProvider(
            "first",
            [
                LLMResponse(
                    content="",
                    toolCalls=(
                        ToolCall("a", "s__t", '{"x": 1, "y": 2}'),
                        ToolCall("b", "s__t", '{"y": 2, "x": 1}'),
                    ),
                ),
                LLMResponse(content="", toolCalls=(ToolCall("c", "s__t", '{"x": 2}'),)),
                LLMResponse(content="done"),
            ],
        )
        runner = SessionRunner(
            lambda name: provider, clock, lambda agent: tools, cache=ResponseCache(store)
        )
        self.successResultOf(runner.run(_agent(cache=None), _request(), lambda e: None))
        self.assertEqual(tools.calls, [{"x": 1, "y": 2}, {"x": 2}])
        results = [m.content for m in provider.requests[1].messages if m.role == "tool"]
        self.assertEqual(results, ["result 1", "result 1"])
        self.assertEqual(self.successResultOf(store.stats(TOOL_CACHE)).entries, 2)

    def test_serverConfig(self) -> None:
        """
        A tool's own C{toolsCache} entry wins over its server's C{cache}.
        """
        config = McpServerConfig("s", "stdio", cache=60.0, toolsCache={"live": None, "slow": 5.0})
        self.assertEqual(
            [config.cacheTTL(tool) for tool in ("other", "live", "slow")], [60.0, None, 5.0]
        )


class SharedStoreTests(TestCase):
    """
    Two server processes sharing one SQLite store share the cache.
    """

    async def test_hitAcrossProcesses(self) -> None:
        """
        A run answered by one server process is answered from the cache by
        another one on the same store file, without an upstream call.
        """
        running = await startFakeUpstream(reactor)
        self.addCleanup(running.stop)
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(
                {
                    "providers": {
                        "fake": {
                            "type": "openai",
                            "baseUrl": running.baseUrl,
                            "apiKey": SENTINEL_KEY,
                        }
                    }
                },
                f,
            )
        with open(os.path.join(folder, "cached.ai"), "w") as f:
            f.write("---\nmodels: fake/test-model\ncache: 1h\n---\nYou are cached.\n")
        running.upstream.script(Reply(content="forty-two"))
        answers = []
        for _ in range(2):
            port = freePort()
            server = ServerProcess()
            argv = [
                *command("ai-agent"),
                "--agent",
                "cached.ai",
                "--config",
                "config.json",
                "--openai-completions",
                str(port),
                "--store",
                os.path.join(folder, "store.sqlite3"),
            ]
            reactor.spawnProcess(
                server, argv[0], argv, env=childEnvironment(HOME=folder), path=folder
            )
            try:
                await waitUntilListening(server, port)
                import openai

                client = openai.OpenAI(
                    base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0
                )
                answer = await inThread(
                    client.chat.completions.create,
                    model="cached",
                    messages=[{"role": "user", "content": "the answer?"}],
                )
                answers.append((answer.choices[0].message.content, answer.usage.total_tokens))
            finally:
                os.kill(server.transport.pid, signal.SIGTERM)
                await server.waitForEnd()
        self.assertEqual(answers[0][0], "forty-two")
        self.assertEqual(answers[1], ("forty-two", 0))
        self.assertGreater(answers[0][1], 0)
        self.assertEqual(len(running.upstream.requests), 1)


class ConfigTests(SynchronousTestCase):
    """
    C{cache} and C{toolsCache} in C{mcpServers} entries.
    """

    def load(self, entry: dict[str, Any]) -> Any:
        from ai_agent.config import loadConfig

        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "config.json")
        with open(path, "w") as f:
            json.dump({"mcpServers": {"s": {"command": "x", **entry}}}, f)
        return loadConfig(configFile=path, cwd=folder, agentDirs=[], home=folder, environ={})

    def test_parsed(self) -> None:
        """
        The original's shapes are read into seconds per server and per tool.
        """
        server = self.load({"cache": "5m", "toolsCache": {"live": "off", "slow": 2000}})
        config = server.mcpServers["s"]
        self.assertEqual(
            (config.cache, dict(config.toolsCache)), (300.0, {"live": None, "slow": 2.0})
        )

    def test_refused(self) -> None:
        """
        A value that is no duration is refused, naming where it is.
        """
        from ai_agent.errors import ConfigurationError

        error = self.assertRaises(ConfigurationError, self.load, {"toolsCache": {"t": "later"}})
        self.assertIn("mcpServers.s.toolsCache.t", str(error))


class RestCacheTests(TestCase):
    """
    A REST tool's C{cache} over HTTP: a real API, the headend, the fake
    upstream.
    """

    async def test_restResultCached(self) -> None:
        """
        The same REST call with the same arguments within the tool's
        C{cache} reaches the API once (the second result is the first
        one); other arguments reach it again; without C{cache} every call
        does.
        """
        from tests._harness import startServer
        from tests.test_rest import startApi

        api, base = await startApi(self)

        def tool(cache: str | None) -> dict[str, Any]:
            entry: dict[str, Any] = {
                "description": "Look a user up.",
                "method": "GET",
                "url": base + "/users/${parameters.id}",
            }
            if cache is not None:
                entry["cache"] = cache
            return entry

        server = await startServer(
            self,
            agents={"agent.ai": "---\nmodels: fake/test-model\ntools: [cached, plain]\n---\nHi.\n"},
            extraConfig={"restTools": {"cached": tool("5m"), "plain": tool(None)}},
        )
        server.upstream.script(
            Reply(
                toolCalls=[
                    ("rest__cached", {"id": "1"}),
                    ("rest__plain", {"id": "1"}),
                ]
            ),
            Reply(
                toolCalls=[
                    ("rest__cached", {"id": "1"}),
                    ("rest__cached", {"id": "2"}),
                    ("rest__plain", {"id": "1"}),
                ]
            ),
            Reply(content="Done."),
        )
        answer = await inThread(
            server.client().chat.completions.create,
            model="agent",
            messages=[{"role": "user", "content": "go"}],
        )
        self.assertEqual(answer.choices[0].message.content, "Done.")
        self.assertEqual(
            sorted(request.uri for request in api.requests),
            ["/users/1", "/users/1", "/users/1", "/users/2"],
        )
        first = [m for m in server.upstream.requests[1].body["messages"] if m["role"] == "tool"]
        second = [m for m in server.upstream.requests[2].body["messages"] if m["role"] == "tool"]
        self.assertEqual(second[0]["content"], first[0]["content"])
