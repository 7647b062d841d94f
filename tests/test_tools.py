"""
Tools in the agent loop: sub-agents and the tool box with in-memory
providers, sub-agent loading rules, the startup checks, C{--list-tools},
and MCP tools end to end: the real headend, the fake upstream scripting
tool calls, and the calc MCP server of C{tests/mcp_servers}.
"""

from __future__ import annotations

import io
import json
import os
import sys
from typing import Any, Mapping, Sequence

import attrs
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ai_agent.agentfile import AgentSpec, InputSpec
from ai_agent.cli import Options, runListTools
from ai_agent.config import Config, ProviderConfig
from ai_agent.errors import ConfigurationError, ProviderError
from ai_agent.events import (
    PROGRESS_TYPES,
    ContentDelta,
    Event,
    EventSink,
    ReasoningDelta,
    SubAgentProgress,
    ToolStarted,
    Usage,
    progressText,
)
from ai_agent.providers import ChatMessage, LLMResponse, ToolCall, ToolSpec
from ai_agent.registry import loadRegistry
from ai_agent.request import RunRequest
from ai_agent.runtime import buildRuntime
from ai_agent.session import SessionRunner
from ai_agent.testing import Reply, ScriptedProvider
from ai_agent.tools import NestedSink, ToolBoxFactory
from ai_agent.tools.subagent import PROMPT_SCHEMA
from tests import _process
from tests._harness import LiveServer, inThread, startServer, writeAgent
from tests.mcp_servers import ROOT, calcEntry, sleep, waitFor


def _spec(name: str, **values: Any) -> AgentSpec:
    return AgentSpec(
        path=f"/agents/{name}.ai",
        name=name,
        prompt=f"You are {name}.",
        models=(f"{name}/m",),
        **values,
    )


def _call(name: str, arguments: Mapping[str, Any], callId: str = "c1") -> LLMResponse:
    return LLMResponse(
        content="", toolCalls=(ToolCall(callId, name, json.dumps(arguments)),), usage=Usage(10, 2)
    )


def _reasoning(events: Sequence[Event]) -> str:
    """
    Reasoning and progress as a client reads them.
    """
    return "".join(
        progressText(e) if isinstance(e, PROGRESS_TYPES) else e.text
        for e in events
        if isinstance(e, (ReasoningDelta, *PROGRESS_TYPES))
    )


# --- sub-agents and the tool box, in memory ------------------------------------


class SubAgentTests(SynchronousTestCase):
    """
    A sub-agent is a tool C{agent__<name>} running a child session through
    the same runner.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.inner = _spec("inner", description="Knows everything.")
        self.helper = _spec(
            "helper",
            description="Adds numbers.",
            usage="Give it two numbers.",
            agents=(self.inner.path,),
        )
        self.main = _spec("main", agents=(self.helper.path,))
        self.providers = {name: ScriptedProvider(name=name) for name in ("main", "helper", "inner")}
        self.factory = ToolBoxFactory(
            {spec.path: spec for spec in (self.main, self.helper, self.inner)}
        )
        self.runner = SessionRunner(self.providers.__getitem__, self.clock, self.factory)
        self.factory.runner = self.runner
        self.events: list[Event] = []

    def runMain(self) -> Deferred[Any]:
        return self.runner.run(
            self.main, RunRequest((ChatMessage("user", "2+3?"),)), self.events.append
        )

    def test_spec(self) -> None:
        """
        The tool is C{agent__<name>}, described by the sub-agent's
        description and usage, taking C{{prompt: string}}.
        """
        specs = self.successResultOf(self.factory(self.main).specs())
        self.assertEqual(
            specs,
            [
                ToolSpec(
                    "agent__helper", "Adds numbers.\n\nUsage: Give it two numbers.", PROMPT_SCHEMA
                )
            ],
        )
        self.assertEqual(PROMPT_SCHEMA["required"], ["prompt"])
        self.assertEqual(PROMPT_SCHEMA["properties"]["prompt"]["type"], "string")

    def test_answerIsTheResult(self) -> None:
        """
        The child's answer is the tool result, never the parent's content;
        its progress is nested behind C{[agent__helper]}; the usage of every
        LLM call, the child's included, adds up in the run and in the
        L{Usage} events.
        """
        self.providers["main"].replies = [
            _call("agent__helper", {"prompt": "add 2 and 3"}),
            LLMResponse(content="It is 5.", usage=Usage(20, 3)),
        ]
        self.providers["helper"].replies = [
            LLMResponse(content="5", reasoning="adding up", usage=Usage(4, 1))
        ]
        finished = self.successResultOf(self.runMain())
        self.assertEqual(finished.usage, Usage(34, 6))
        usageEvents = [e for e in self.events if isinstance(e, Usage)]
        self.assertEqual(sum(usageEvents, Usage()), Usage(34, 6))
        content = "".join(e.text for e in self.events if isinstance(e, ContentDelta))
        self.assertEqual(content, "It is 5.")
        childRequest = self.providers["helper"].requests[0]
        self.assertEqual(
            [(m.role, m.content) for m in childRequest.messages],
            [("system", "You are helper."), ("user", "add 2 and 3")],
        )
        toolMessage = self.providers["main"].requests[1].messages[-1]
        self.assertEqual((toolMessage.role, toolMessage.content), ("tool", "5"))
        self.assertEqual(
            _reasoning(self.events),
            'calling agent__helper {"prompt": "add 2 and 3"}\n'
            "[agent__helper] adding up\n"
            "agent__helper → 5\n",
        )

    def test_nested(self) -> None:
        """
        A sub-agent's own sub-agent runs too: progress nests two levels
        deep and its usage reaches the top run.
        """
        self.providers["main"].replies = [
            _call("agent__helper", {"prompt": "ask inner"}),
            LLMResponse(content="done", usage=Usage(1, 1)),
        ]
        self.providers["helper"].replies = [
            _call("agent__inner", {"prompt": "what?"}),
            LLMResponse(content="inner said 42", usage=Usage(1, 1)),
        ]
        self.providers["inner"].replies = [LLMResponse(content="42", usage=Usage(100, 10))]
        finished = self.successResultOf(self.runMain())
        self.assertEqual(finished.usage, Usage(122, 16))
        self.assertIn(
            '[agent__helper] calling agent__inner {"prompt": "what?"}\n'
            "[agent__helper] agent__inner → 42\n",
            _reasoning(self.events),
        )
        self.assertEqual(self.providers["main"].requests[1].messages[-1].content, "inner said 42")

    def test_cancelParentCancelsChild(self) -> None:
        """
        Cancelling the parent run cancels the child's LLM call.
        """
        self.providers["main"].replies = [_call("agent__helper", {"prompt": "x"})]
        self.providers["helper"].hold = True
        run = self.runMain()
        self.assertEqual(len(self.providers["helper"].held), 1)
        run.cancel()
        self.failureResultOf(run, CancelledError)
        self.assertEqual(self.providers["helper"].cancelled, 1)

    def test_childFailure(self) -> None:
        """
        A failing child run becomes an error text the parent model reads.
        """
        self.providers["main"].replies = [
            _call("agent__helper", {"prompt": "x"}),
            LLMResponse(content="sorry"),
        ]
        self.providers["helper"].replies = [ProviderError("upstream down", retryable=False)]
        self.successResultOf(self.runMain())
        self.assertEqual(
            self.providers["main"].requests[1].messages[-1].content,
            "error: agent__helper failed: upstream down",
        )

    def test_badArguments(self) -> None:
        """
        A call without a prompt, or to a tool that does not exist, gets an
        error text, and the run goes on.
        """
        self.providers["main"].replies = [
            _call("agent__helper", {}),
            _call("nope__x", {}),
            LLMResponse(content="ok"),
        ]
        self.successResultOf(self.runMain())
        requests = self.providers["main"].requests
        self.assertEqual(
            requests[1].messages[-1].content,
            "error: agent__helper needs a 'prompt' string that is not empty",
        )
        self.assertEqual(
            requests[2].messages[-1].content, "error: there is no tool named 'nope__x'"
        )

    def test_structuredInput(self) -> None:
        """
        A sub-agent declaring a structured C{input} is offered with its
        schema as the tool's parameters; valid arguments become the child's
        user message as compact JSON, in the order the model wrote them.
        """
        schema = {
            "type": "object",
            "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
            "required": ["query"],
        }
        searcher = _spec("searcher", description="Searches.", input=InputSpec("json", schema))
        main = _spec("main", agents=(searcher.path,))
        factory = ToolBoxFactory({spec.path: spec for spec in (main, searcher)})
        providers = {name: ScriptedProvider(name=name) for name in ("main", "searcher")}
        runner = SessionRunner(providers.__getitem__, self.clock, factory)
        factory.runner = runner
        specs = self.successResultOf(factory(main).specs())
        self.assertEqual(specs, [ToolSpec("agent__searcher", "Searches.", schema)])
        providers["main"].replies = [
            _call("agent__searcher", {"limit": 3, "query": "café"}),
            LLMResponse(content="found"),
        ]
        providers["searcher"].replies = [LLMResponse(content="two hits")]
        self.successResultOf(
            runner.run(main, RunRequest((ChatMessage("user", "find"),)), self.events.append)
        )
        child = providers["searcher"].requests[0].messages[-1]
        self.assertEqual((child.role, child.content), ("user", '{"limit":3,"query":"café"}'))
        self.assertEqual(providers["main"].requests[1].messages[-1].content, "two hits")

    def test_structuredInputRefused(self) -> None:
        """
        Arguments that do not fit the sub-agent's C{input} schema are a tool
        error naming each field at fault, and the child never runs.
        """
        schema = {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "limit": {"type": "integer", "maximum": 10},
            },
            "required": ["query"],
            "additionalProperties": False,
        }
        searcher = _spec("searcher", description="Searches.", input=InputSpec("json", schema))
        main = _spec("main", agents=(searcher.path,))
        factory = ToolBoxFactory({spec.path: spec for spec in (main, searcher)})
        providers = {name: ScriptedProvider(name=name) for name in ("main", "searcher")}
        runner = SessionRunner(providers.__getitem__, self.clock, factory)
        factory.runner = runner
        providers["main"].replies = [
            _call("agent__searcher", {"limit": 50, "prompt": "x"}),
            LLMResponse(content="sorry"),
        ]
        self.successResultOf(
            runner.run(main, RunRequest((ChatMessage("user", "find"),)), self.events.append)
        )
        self.assertEqual(providers["searcher"].requests, [])
        self.assertEqual(
            providers["main"].requests[1].messages[-1].content,
            "error: agent__searcher was called with invalid arguments:"
            " 'query' is a required property;"
            " Additional properties are not allowed ('prompt' was unexpected);"
            " limit: 50 is greater than the maximum of 10",
        )

    def test_nestedSink(self) -> None:
        """
        L{NestedSink} passes the child's reasoning on in whole lines and its
        progress as it comes (after the partial line before it), each inside
        a L{SubAgentProgress} naming the sub-agent, passes usage on as it
        is, and keeps the content as the answer.
        """
        received: list[Event] = []
        sink = NestedSink("agent__x", received.append)
        started = ToolStarted("t__a", "{}", "c1")
        for event in (
            ReasoningDelta("one\ntw"),
            ReasoningDelta("o\n"),
            ContentDelta("the "),
            Usage(3, 4),
            ReasoningDelta("half"),
            started,
            ContentDelta("answer"),
            ReasoningDelta("\nlast"),
        ):
            sink(event)
        sink.flush()
        self.assertEqual(
            received,
            [
                SubAgentProgress("agent__x", ReasoningDelta("one\n")),
                SubAgentProgress("agent__x", ReasoningDelta("two\n")),
                Usage(3, 4),
                SubAgentProgress("agent__x", ReasoningDelta("half\n")),
                SubAgentProgress("agent__x", started),
                SubAgentProgress("agent__x", ReasoningDelta("last\n")),
            ],
        )
        self.assertEqual(
            [progressText(e) for e in received if isinstance(e, SubAgentProgress)][3],
            "[agent__x] calling t__a {}\n",
        )
        self.assertEqual(sink.answer, "the answer")


@attrs.define
class _RaisingTools:
    def specs(self) -> Sequence[ToolSpec]:
        return [ToolSpec("t__x", "x", {"type": "object"})]

    def call(self, name: str, arguments: Mapping[str, Any], sink: EventSink) -> Deferred[str]:
        raise ValueError("broken tool box")


class SessionToolTests(SynchronousTestCase):
    """
    What the session adds for tool boxes.
    """

    def test_synchronousRaise(self) -> None:
        """
        A tool box that raises instead of returning a failed Deferred still
        gives the model an error text.
        """
        provider = ScriptedProvider(
            name="main", replies=[_call("t__x", {}), LLMResponse(content="ok")]
        )
        runner = SessionRunner(
            {"main": provider}.__getitem__, Clock(), lambda agent: _RaisingTools()
        )
        self.successResultOf(
            runner.run(_spec("main"), RunRequest((ChatMessage("user", "x"),)), lambda e: None)
        )
        self.assertEqual(
            provider.requests[1].messages[-1].content, "error: ValueError: broken tool box"
        )


# --- loading ------------------------------------------------------------------

SUB = """\
---
description: {description}
models: fake/m
agents: {agents}
---
Sub.
"""


class LoadingTests(TestCase):
    """
    Sub-agents are loaded with their parent, and checked at startup.
    """

    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.folder, "sub"))
        self.config = Config(providers={"fake": ProviderConfig("fake", "openai", "http://x")})

    def write(self, name: str, description: str = "A helper.", agents: str = "[]") -> str:
        path = os.path.join(self.folder, name)
        with open(path, "w") as f:
            f.write(SUB.format(description=description, agents=agents))
        return path

    def test_relativePaths(self) -> None:
        """
        C{agents:} paths are relative to the agent file, not the working
        directory.
        """
        main = self.write("main.ai", agents="[sub/helper.ai]")
        helper = self.write("sub/helper.ai")
        registry = loadRegistry([main], self.config)
        self.assertEqual(registry.byPath[main].agents, (helper,))
        self.assertIn(helper, registry.byPath)
        self.assertEqual(registry.ids(), ["main"])

    def test_suffixOptional(self) -> None:
        """
        C{agents: [helper]} loads C{helper.ai} (the suffix is optional, as
        docs/agent-files.md says), and so does C{sub/helper}; a file named
        exactly as written is preferred to one with the suffix added.
        """
        main = self.write("main.ai", agents="[helper, sub/helper, exact]")
        helper = self.write("helper.ai")
        subHelper = self.write("sub/helper.ai", description="Another helper.")
        exact = self.write("exact", description="Named without a suffix.")
        self.write("exact.ai", description="Not this one.")
        registry = loadRegistry([main], self.config)
        self.assertEqual(registry.byPath[main].agents, (helper, subHelper, exact))
        self.assertEqual(registry.byPath[exact].description, "Named without a suffix.")
        self.assertEqual(registry.byPath[helper].name, "helper")

    def test_subAgentMissing(self) -> None:
        """
        A sub-agent that exists neither as written nor with C{.ai} is an
        error naming the path as written.
        """
        main = self.write("main.ai", agents="[nobody]")
        with self.assertRaises(ConfigurationError) as caught:
            loadRegistry([main], self.config)
        self.assertIn(
            f"{os.path.join(self.folder, 'nobody')}: cannot read agent file", str(caught.exception)
        )

    def test_subAgentNeedsDescription(self) -> None:
        """
        A sub-agent without a description is refused at load.
        """
        main = self.write("main.ai", agents="[helper.ai]")
        helper = os.path.join(self.folder, "helper.ai")
        with open(helper, "w") as f:
            f.write("---\nmodels: fake/m\n---\nNo description.\n")
        with self.assertRaises(ConfigurationError) as caught:
            loadRegistry([main], self.config)
        self.assertEqual(
            str(caught.exception),
            f"{helper}: a sub-agent needs a 'description' (used by {main})",
        )

    def test_cycleRefused(self) -> None:
        """
        Sub-agents that call each other in a cycle are refused at load.
        """
        a = self.write("a.ai", agents="[b.ai]")
        self.write("b.ai", agents="[a.ai]")
        with self.assertRaises(ConfigurationError) as caught:
            loadRegistry([a], self.config)
        self.assertIn("sub-agents form a cycle: a.ai -> b.ai -> a.ai", str(caught.exception))

    def test_unknownServer(self) -> None:
        """
        An agent naming an MCP server the configuration lacks stops the
        startup with an error naming the agent and the server.
        """
        path = writeAgent(
            self.folder, "calc.ai", "---\nmodels: fake/m\ntools: [calc, nope]\n---\nHi.\n"
        )
        config = os.path.join(self.folder, "config.json")
        with open(config, "w") as f:
            json.dump(
                {
                    "providers": {"fake": {"type": "openai", "baseUrl": "http://x"}},
                    "mcpServers": {"calc": calcEntry()},
                },
                f,
            )
        with self.assertRaises(ConfigurationError) as caught:
            buildRuntime(reactor, [path], configFile=config, cwd=self.folder, environ={})
        self.assertEqual(
            str(caught.exception),
            f"{path}: 'tools' names 'nope', which is neither an MCP server (configured: calc)"
            " nor a REST tool (configured: none)",
        )

    def test_sameSubAgentNames(self) -> None:
        """
        Two sub-agents that would be the same tool are refused at startup.
        """
        main = self.write("main.ai", agents="[helper.ai, sub/helper.ai]")
        self.write("helper.ai")
        self.write("sub/helper.ai")
        config = os.path.join(self.folder, "config.json")
        with open(config, "w") as f:
            json.dump({"providers": {"fake": {"type": "openai", "baseUrl": "http://x"}}}, f)
        with self.assertRaises(ConfigurationError) as caught:
            buildRuntime(reactor, [main], configFile=config, cwd=self.folder, environ={})
        self.assertIn("would both be the tool agent__helper", str(caught.exception))


# --- end to end through the headend --------------------------------------------

CALC_AGENT = """\
---
description: Calculator
models: fake/test-model
tools: [calc]
{extra}
---
You add numbers.
"""


def _agent(**extra: Any) -> str:
    return CALC_AGENT.format(extra="\n".join(f"{key}: {value}" for key, value in extra.items()))


def _user(text: str = "2+3?") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _toolMessages(server: LiveServer, request: int) -> list[dict[str, Any]]:
    messages = server.upstream.requests[request].body["messages"]
    return [m for m in messages if m["role"] == "tool"]


class EndToEndTests(TestCase):
    """
    Tool calls scripted by the fake upstream run against the real calc MCP
    server behind the real headend.
    """

    async def start(self, *calcArgs: str, **agents: str) -> LiveServer:
        files = {f"{name}.ai": text for name, text in agents.items()} or {"agent.ai": _agent()}
        return await startServer(
            self, agents=files, mcpServers={"calc": calcEntry(*calcArgs)}, streamHeadGrace=0.0
        )

    async def complete(self, server: LiveServer, model: str = "agent") -> Any:
        return await inThread(
            server.client().chat.completions.create, model=model, messages=_user()
        )

    async def test_toolCallReachesModel(self) -> None:
        """
        The model is offered C{calc__add} with the tool's schema, and the
        server's instructions after the agent's prompt; its call runs on
        the MCP server and the result goes back as a C{tool} message; while
        streaming, the call and its outcome are announced as reasoning
        deltas.
        """
        server = await self.start()
        server.upstream.script(
            Reply(toolCalls=[("calc__add", {"a": 2, "b": 3})]), Reply(content="It is 5.")
        )

        def consume() -> list[Any]:
            stream = server.client().chat.completions.create(
                model="agent", messages=_user(), stream=True
            )
            return list(stream)

        chunks = await inThread(consume)
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reasoning = "".join(
            (c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
            for c in chunks
            if c.choices
        )
        self.assertEqual(content, "It is 5.")
        self.assertEqual(reasoning, 'calling calc__add {"a": 2, "b": 3}\ncalc__add → 5\n')
        first = server.upstream.requests[0].body
        functions = {tool["function"]["name"]: tool["function"] for tool in first["tools"]}
        self.assertEqual(functions["calc__add"]["description"], "Add two integers.")
        self.assertEqual(functions["calc__add"]["parameters"]["required"], ["a", "b"])
        self.assertEqual(functions["calc__add"]["parameters"]["type"], "object")
        self.assertEqual(
            first["messages"][0]["content"],
            "You add numbers.\n\nInstructions of the calc tools (calc__*):\nArithmetic for tests.",
        )
        messages = server.upstream.requests[1].body["messages"]
        call = messages[-2]["tool_calls"][0]
        self.assertEqual(call["function"]["name"], "calc__add")
        self.assertEqual(messages[-1], {"role": "tool", "content": "5", "tool_call_id": call["id"]})

    async def test_twoToolsInOneTurn(self) -> None:
        """
        Two calls in one turn both run, and each result answers its own
        call, in order.
        """
        server = await self.start()
        server.upstream.script(
            Reply(toolCalls=[("calc__add", {"a": 1, "b": 1}), ("calc__weather", {"city": "Oslo"})]),
            Reply(content="done"),
        )
        result = await self.complete(server)
        self.assertEqual(result.choices[0].message.content, "done")
        messages = server.upstream.requests[1].body["messages"]
        calls = messages[-3]["tool_calls"]
        tools = _toolMessages(server, 1)
        self.assertEqual([t["tool_call_id"] for t in tools], [c["id"] for c in calls])
        self.assertEqual(tools[0]["content"], "2")
        self.assertEqual(json.loads(tools[1]["content"]), {"city": "Oslo", "celsius": 21})

    async def test_toolError(self) -> None:
        """
        A tool's error result reaches the model as an error text, and the
        run goes on.
        """
        server = await self.start()
        server.upstream.script(
            Reply(toolCalls=[("calc__fail", {"message": "boom"})]), Reply(content="it failed")
        )
        result = await self.complete(server)
        self.assertEqual(result.choices[0].message.content, "it failed")
        self.assertEqual(
            _toolMessages(server, 1)[0]["content"], "error: Error executing tool fail: boom"
        )
        self.assertIn(
            "calc__fail → error: Error executing tool fail: boom",
            result.choices[0].message.model_extra["reasoning_content"],
        )

    async def test_toolTimeout(self) -> None:
        """
        A call slower than the agent's C{toolTimeout} becomes an error text;
        the server is told to cancel it.
        """
        marker = os.path.abspath(self.mktemp())
        os.makedirs(marker)
        server = await self.start("--marker", marker, agent=_agent(toolTimeout="300ms"))
        server.upstream.script(
            Reply(toolCalls=[("calc__sleep", {"seconds": 30})]), Reply(content="too slow")
        )
        result = await self.complete(server)
        self.assertEqual(result.choices[0].message.content, "too slow")
        self.assertEqual(
            _toolMessages(server, 1)[0]["content"],
            "error: calc__sleep did not answer within 0.3 s",
        )
        await waitFor(lambda: os.path.exists(os.path.join(marker, "cancelled")))

    async def test_maxTurns(self) -> None:
        """
        With C{maxTurns: 2}, the second LLM call is made without tools and
        its answer ends the run.
        """
        server = await self.start(agent=_agent(maxTurns=2))
        server.upstream.script(
            Reply(toolCalls=[("calc__add", {"a": 1, "b": 2})]),
            Reply(content="final answer"),
        )
        result = await self.complete(server)
        self.assertEqual(result.choices[0].message.content, "final answer")
        requests = server.upstream.requests
        self.assertEqual(len(requests), 2)
        self.assertTrue(requests[0].body.get("tools"))
        self.assertFalse(requests[1].body.get("tools"))
        self.assertEqual(_toolMessages(server, 1)[0]["content"], "3")

    async def test_subAgent(self) -> None:
        """
        A sub-agent runs as C{agent__helper}: its own tool calls are
        announced nested behind C{[agent__helper]}, its answer is the tool
        result, and its usage is added to the response's.
        """
        server = await self.start(
            agent="---\nmodels: fake/test-model\nagents: [helper.ai]\n---\nBoss.\n",
            helper=_agent().replace("Calculator", "Adds two numbers"),
        )
        server.upstream.script(
            Reply(toolCalls=[("agent__helper", {"prompt": "add 2 and 3"})], usage=(10, 1)),
            Reply(toolCalls=[("calc__add", {"a": 2, "b": 3})], usage=(20, 2)),
            Reply(content="five", usage=(30, 3)),
            Reply(content="The helper says five.", usage=(40, 4)),
        )
        result = await self.complete(server)
        self.assertEqual(result.choices[0].message.content, "The helper says five.")
        self.assertEqual((result.usage.prompt_tokens, result.usage.completion_tokens), (100, 10))
        first = server.upstream.requests[0].body
        helperTool = first["tools"][0]["function"]
        self.assertEqual(helperTool["name"], "agent__helper")
        self.assertEqual(helperTool["description"], "Adds two numbers")
        self.assertEqual(_toolMessages(server, 3)[0]["content"], "five")
        self.assertEqual(
            result.choices[0].message.model_extra["reasoning_content"],
            'calling agent__helper {"prompt": "add 2 and 3"}\n'
            '[agent__helper] calling calc__add {"a": 2, "b": 3}\n'
            "[agent__helper] calc__add → 5\n"
            "agent__helper → five\n",
        )

    async def test_subAgentStructuredInput(self) -> None:
        """
        A sub-agent declaring C{input} is offered to the upstream model with
        its schema; valid arguments reach the child's model as its user
        message (compact JSON), invalid ones come back as a tool error
        naming the field, without a child call.
        """
        server = await self.start(
            agent="---\nmodels: fake/test-model\nagents: [weather.ai]\n---\nBoss.\n",
            weather="---\ndescription: Weather by city\nmodels: fake/test-model\ninput:\n"
            "  format: json\n  schema:\n    type: object\n    properties:\n"
            "      city: {type: string}\n    required: [city]\n---\nWeather.\n",
        )
        server.upstream.script(
            Reply(toolCalls=[("agent__weather", {"town": "Oslo"})]),
            Reply(toolCalls=[("agent__weather", {"city": "Oslo"})]),
            Reply(content="sunny"),
            Reply(content="Oslo is sunny."),
        )
        result = await self.complete(server)
        self.assertEqual(result.choices[0].message.content, "Oslo is sunny.")
        requests = server.upstream.requests
        self.assertEqual(len(requests), 4)
        offered = requests[0].body["tools"][0]["function"]
        self.assertEqual(offered["name"], "agent__weather")
        self.assertEqual(offered["parameters"]["required"], ["city"])
        self.assertEqual(
            _toolMessages(server, 1)[0]["content"],
            "error: agent__weather was called with invalid arguments:"
            " 'city' is a required property",
        )
        child = requests[2].body["messages"]
        self.assertEqual(child[-1], {"role": "user", "content": '{"city":"Oslo"}'})
        self.assertEqual(_toolMessages(server, 3)[-1]["content"], "sunny")

    async def test_crashedServerRestarted(self) -> None:
        """
        A call that crashes the MCP server gets an error text; the server is
        started again and the next call works.
        """
        server = await self.start()
        server.upstream.script(
            Reply(toolCalls=[("calc__crash", {})]),
            Reply(toolCalls=[("calc__add", {"a": 2, "b": 2})]),
            Reply(content="recovered"),
        )
        result = await self.complete(server)
        self.assertEqual(result.choices[0].message.content, "recovered")
        self.assertEqual(
            _toolMessages(server, 1)[0]["content"],
            "error: MCP server 'calc' exited with code 3 before answering",
        )
        self.assertEqual(_toolMessages(server, 2)[1]["content"], "4")
        self.assertEqual(server.runtime.mcp.server("calc").starts, 2)

    async def test_disconnectCancelsToolCall(self) -> None:
        """
        A client that disconnects while a tool runs cancels the run: the
        MCP server is told to cancel the call, and no further LLM call is
        made.
        """
        marker = os.path.abspath(self.mktemp())
        os.makedirs(marker)
        server = await self.start("--marker", marker)
        server.upstream.script(Reply(toolCalls=[("calc__sleep", {"seconds": 30})]))
        client = await _rawPost(server, stream=True)
        await server.upstream.waitForRequests(1)
        calc = server.runtime.mcp.server("calc")
        await waitFor(lambda: calc._connection is not None and calc._connection.pending == 1)
        client.transport.loseConnection()
        await waitFor(lambda: os.path.exists(os.path.join(marker, "cancelled")))
        await waitFor(lambda: server.pool.activeRuns == 0)
        self.assertEqual(len(server.upstream.requests), 1)

    async def test_disconnectCancelsSubAgent(self) -> None:
        """
        A client that disconnects while a sub-agent runs cancels the child
        session: its upstream LLM call is closed, the run ends, and the
        parent makes no further LLM call.
        """
        server = await self.start(
            agent="---\nmodels: fake/test-model\nagents: [helper.ai]\n---\nBoss.\n",
            helper=_agent(),
        )
        server.upstream.script(
            Reply(toolCalls=[("agent__helper", {"prompt": "x"})]),
            Reply(content=["slow"], hold=True),
        )
        client = await _rawPost(server, stream=True)
        await server.upstream.waitForRequests(2)
        await sleep(0.05)
        client.transport.loseConnection()
        gone = await server.upstream.waitForDisconnects(1)
        await waitFor(lambda: server.pool.activeRuns == 0)
        self.assertEqual((gone, server.upstream.held), (1, 0))
        # The closed call was the sub-agent's, and nothing came after it.
        self.assertEqual(len(server.upstream.requests), 2)
        child = server.upstream.requests[1].body["messages"]
        self.assertEqual(child[-1], {"role": "user", "content": "x"})
        self.assertEqual(server.upstream.disconnects, 1)

    async def test_unavailableServerLeftOut(self) -> None:
        """
        The tools of a server that cannot start are left out; the agent
        still answers.
        """
        server = await startServer(
            self,
            agents={"agent.ai": _agent().replace("[calc]", "[ghost]")},
            mcpServers={"ghost": {"command": "no-such-mcp-server-here"}},
        )
        server.upstream.script(Reply(content="no tools"))
        result = await self.complete(server)
        self.assertEqual(result.choices[0].message.content, "no tools")
        self.assertFalse(server.upstream.requests[0].body.get("tools"))


async def _rawPost(server: LiveServer, stream: bool) -> Any:
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol

    body = json.dumps({"model": "agent", "messages": _user(), "stream": stream}).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body

    class Client(Protocol):
        def connectionMade(self) -> None:
            self.transport.write(request)

    client = Client()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.port.getHost().port)
    await connectProtocol(endpoint, client)
    return client


# --- --list-tools -------------------------------------------------------------


class ListToolsTests(TestCase):
    """
    C{ai-agent --list-tools SERVER|all} prints what configured servers
    offer.
    """

    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        self.config = os.path.join(self.folder, "config.json")
        with open(self.config, "w") as f:
            json.dump(
                {
                    "mcpServers": {
                        "calc": calcEntry("--page-size", "4"),
                        "ghost": {"command": "no-such-mcp-server-here"},
                    }
                },
                f,
            )

    async def listTools(self, server: str) -> tuple[int, str, str]:
        options = Options()
        options.parseOptions(["--list-tools", server, "--config", self.config])
        out, err = io.StringIO(), io.StringIO()
        code = await runListTools(
            reactor, options, out, err, environ={"PATH": os.environ["PATH"]}, cwd=self.folder
        )
        return code, out.getvalue(), err.getvalue()

    async def test_oneServer(self) -> None:
        """
        The tools of one server are printed under their model names with
        their descriptions (every page of the listing); the exit code is 0.
        """
        code, out, err = await self.listTools("calc")
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[0], "calc: 10 tools")
        self.assertEqual(lines[1], "  calc__add      Add two integers.")
        self.assertEqual(len(lines), 11)

    async def test_unknownServer(self) -> None:
        """
        An unknown server name is refused with exit code 2, naming it.
        """
        code, out, err = await self.listTools("nope")
        self.assertEqual((code, out), (2, ""))
        self.assertEqual(
            err, "ai-agent: no MCP server named 'nope' is configured (configured: calc, ghost)\n"
        )

    async def test_failingServer(self) -> None:
        """
        A server that fails to start is reported, with exit code 1.
        """
        code, out, err = await self.listTools("ghost")
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(
            err,
            "ai-agent: MCP server 'ghost' is not available: the command"
            " 'no-such-mcp-server-here' was not found on PATH\n",
        )

    async def test_command(self) -> None:
        """
        The real command with C{all} lists every server that starts, reports
        the one that does not, and exits 1.
        """
        out, err, code = await _process.run(
            [
                sys.executable,
                "-c",
                "import sys; from ai_agent.cli import main; main(sys.argv[1:])",
                "--list-tools",
                "all",
                "--config",
                self.config,
            ],
            cwd=self.folder,
            env=_process.childEnvironment(PYTHONPATH=ROOT),
        )
        self.assertEqual(code, 1)
        self.assertTrue(out.decode().startswith("calc: 10 tools\n  calc__add "))
        self.assertIn(b"MCP server 'ghost' is not available", err)
