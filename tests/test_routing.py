"""
Tests for L{ai_agent.routing}: C{advisors}, C{router} and C{handoff} agents,
against the fake upstream behind the real headend.
"""

from __future__ import annotations

import os
import re
from typing import Any

import attrs
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ai_agent.agentfile import AgentSpec, RouteTarget
from ai_agent.config import Config
from ai_agent.errors import ConfigurationError, ProviderError
from ai_agent.events import (
    AdvisorProgress,
    ContentDelta,
    Event,
    HandoffProgress,
    Usage,
    progressText,
)
from ai_agent.providers import ChatMessage, LLMResponse, ToolCall
from ai_agent.registry import loadRegistry
from ai_agent.request import RunRequest
from ai_agent.routing import ROUTER_TOOL
from ai_agent.session import SessionRunner
from ai_agent.testing import Reply, ScriptedProvider
from tests._harness import LiveServer, inThread, startServer, writeAgent


def _file(name: str, extra: str = "", description: str = "") -> str:
    return (
        f"---\ndescription: {description or name}\nmodels: fake/test-model\n{extra}---\n"
        f"You are {name}.\n"
    )


ROUTER = _file(
    "router",
    "router:\n  destinations:\n    - ./billing.ai\n    - ./tech.ai\n",
)

AGENTS = {
    "router.ai": ROUTER,
    "billing.ai": _file("billing", description="Payments and invoices"),
    "tech.ai": _file("tech", description="Bugs and outages"),
    "main.ai": _file("main", "handoff: ./fmt.ai\n"),
    "fmt.ai": _file("fmt"),
    "advised.ai": _file("advised", "advisors:\n  - ./a1.ai\n  - ./a2.ai\n"),
    "a1.ai": _file("a1"),
    "a2.ai": _file("a2"),
}


def _system(body: dict[str, Any]) -> str:
    return str(body["messages"][0]["content"])


async def _stream(server: LiveServer, model: str, text: str) -> tuple[str, str]:
    """
    Stream a chat completion; its content and its reasoning.
    """

    def consume() -> tuple[str, str]:
        chunks = list(
            server.client().chat.completions.create(
                model=model, messages=[{"role": "user", "content": text}], stream=True
            )
        )
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reasoning = "".join(
            (c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
            for c in chunks
            if c.choices
        )
        return content, reasoning

    result: tuple[str, str] = await inThread(consume)
    return result


class LiveRoutingTests(TestCase):
    """
    Routing, handoff and advisors over HTTP, checked on what the fake
    upstream received.
    """

    async def test_routerChoosesDestination(self) -> None:
        """
        The router's model is offered C{router__handoff-to} with its
        destinations as the file wrote them; the destination it names
        answers (with its own prompt, and the router's message among its
        instructions); the router's own text is not part of the answer; the
        choice is streamed as progress.  Another choice reaches the other
        destination.
        """
        server = await startServer(self, agents=AGENTS, streamHeadGrace=0.0)
        server.upstream.script(
            Reply(
                content="Let me route this.",
                toolCalls=[(ROUTER_TOOL, {"agent": "./tech.ai", "message": "printer on fire"})],
            ),
            Reply(content="Tech here: unplug it."),
            Reply(toolCalls=[(ROUTER_TOOL, {"agent": "./billing.ai"})]),
            Reply(content="Billing here."),
        )
        content, reasoning = await _stream(server, "router", "my printer burns")
        self.assertEqual(content, "Tech here: unplug it.")
        self.assertIn("router routed the conversation to tech: printer on fire\n", reasoning)
        first, second = (r.body for r in server.upstream.requests[:2])
        tool = {t["function"]["name"]: t["function"] for t in first["tools"]}[ROUTER_TOOL]
        self.assertEqual(
            tool["parameters"]["properties"]["agent"]["enum"], ["./billing.ai", "./tech.ai"]
        )
        self.assertIn("./tech.ai (Bugs and outages)", tool["description"])
        self.assertIn(ROUTER_TOOL, _system(first))
        self.assertEqual(_system(second), "You are tech.")
        self.assertIn(
            {"role": "system", "content": "Message from the router agent router: printer on fire"},
            second["messages"],
        )
        self.assertEqual(second["messages"][-1], {"role": "user", "content": "my printer burns"})
        self.assertNotIn("tools", second)
        content, _ = await _stream(server, "router", "refund please")
        self.assertEqual(content, "Billing here.")
        self.assertEqual(_system(server.upstream.requests[3].body), "You are billing.")
        self.assertEqual(len(server.upstream.requests), 4)

    async def test_noRouteChosen(self) -> None:
        """
        A router whose model answers without routing gives its own answer.
        """
        server = await startServer(self, agents=AGENTS, streamHeadGrace=0.0)
        server.upstream.script(Reply(content="I can answer that myself."))
        content, _ = await _stream(server, "router", "hello")
        self.assertEqual(content, "I can answer that myself.")
        self.assertEqual(len(server.upstream.requests), 1)

    async def test_handoff(self) -> None:
        """
        The main agent's answer goes, with the original request, to the
        handoff agent, whose answer is the only content the client gets.
        """
        server = await startServer(self, agents=AGENTS, streamHeadGrace=0.0)
        server.upstream.script(Reply(content="raw findings"), Reply(content="Formatted."))
        content, reasoning = await _stream(server, "main", "research X")
        self.assertEqual(content, "Formatted.")
        self.assertIn("main handed its answer to fmt\n", reasoning)
        handoff = server.upstream.requests[1].body
        self.assertEqual(_system(handoff), "You are fmt.")
        prompt = handoff["messages"][-1]["content"]
        self.assertRegex(
            prompt,
            r"\A<original_user_request__([0-9a-f]{12})>\nresearch X\n"
            r"</original_user_request__\1>\n"
            r'<response__([0-9a-f]{12}) agent="main">\nraw findings\n</response__\2>\Z',
        )

    async def test_advisorsAdviceReachesModel(self) -> None:
        """
        Both advisors run on the user's request before the agent; their
        answers reach the agent's model as tagged blocks at the start of
        the user's message; each advisor's start and answer are progress.
        """
        server = await startServer(self, agents=AGENTS, streamHeadGrace=0.0)
        # Unscripted, the fake echoes the last user message.
        content, reasoning = await _stream(server, "advised", "is it safe?")
        bodies = [r.body for r in server.upstream.requests]
        self.assertEqual(sorted(_system(b) for b in bodies[:2]), ["You are a1.", "You are a2."])
        for body in bodies[:2]:
            self.assertEqual(body["messages"][-1], {"role": "user", "content": "is it safe?"})
        main = bodies[2]
        self.assertEqual(_system(main), "You are advised.")
        text = main["messages"][-1]["content"]
        blocks = re.findall(
            r'<advisory__([0-9a-f]{12}) agent="(a[12])">\n(.*?)\n</advisory__\1>', text
        )
        self.assertEqual(
            sorted((agent, advice) for _, agent, advice in blocks),
            [("a1", "echo: is it safe?"), ("a2", "echo: is it safe?")],
        )
        self.assertTrue(text.endswith("</advisory__" + blocks[-1][0] + ">\n\nis it safe?"))
        self.assertTrue(content.startswith("echo: <advisory__"))
        for line in ("asking advisor a1\n", "advisor a1 answered\n", "advisor a2 answered\n"):
            self.assertIn(line, reasoning)


class OtherAPIsTests(TestCase):
    """
    Routing progress reaches the Responses and Messages APIs as their other
    progress does.
    """

    async def test_responsesAndMessages(self) -> None:
        """
        The handoff line is a reasoning summary delta on the Responses API
        and a thinking delta on the Messages API (thinking enabled); the
        answer is the handoff agent's on both.
        """
        import anthropic

        server = await startServer(self, agents=AGENTS, streamHeadGrace=0.0)
        server.upstream.script(
            Reply(content="raw"),
            Reply(content="Formatted."),
            Reply(content="raw"),
            Reply(content="Formatted."),
        )

        def responses() -> list[Any]:
            return list(server.client().responses.create(model="main", input="go", stream=True))

        events = await inThread(responses)
        summary = "".join(
            e.delta for e in events if e.type == "response.reasoning_summary_text.delta"
        )
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        self.assertIn("main handed its answer to fmt\n", summary)
        self.assertEqual(text, "Formatted.")
        client = anthropic.Anthropic(
            base_url=server.baseUrl[: -len("/v1")], api_key="k", max_retries=0
        )

        def messages() -> list[Any]:
            with client.messages.stream(
                model="main",
                max_tokens=2000,
                thinking={"type": "enabled", "budget_tokens": 1024},
                messages=[{"role": "user", "content": "go"}],
            ) as stream:
                return list(stream)

        frames = await inThread(messages)
        thinking = "".join(
            f.delta.thinking
            for f in frames
            if f.type == "content_block_delta" and f.delta.type == "thinking_delta"
        )
        answer = "".join(
            f.delta.text
            for f in frames
            if f.type == "content_block_delta" and f.delta.type == "text_delta"
        )
        self.assertIn("main handed its answer to fmt\n", thinking)
        self.assertEqual(answer, "Formatted.")


class RunnerTests(SynchronousTestCase):
    """
    Orchestration through L{SessionRunner} with scripted providers.
    """

    def agents(self) -> dict[str, AgentSpec]:
        def spec(name: str, **kwargs: Any) -> AgentSpec:
            return AgentSpec(
                path=f"/a/{name}.ai",
                name=name,
                prompt=f"You are {name}.",
                models=(f"{name}/m",),
                **kwargs,
            )

        return {
            s.path: s
            for s in (
                spec(
                    "main",
                    advisors=(
                        RouteTarget("./bad.ai", "/a/bad.ai"),
                        RouteTarget("./good.ai", "/a/good.ai"),
                    ),
                ),
                spec("bad", maxRetries=1),
                spec("good"),
            )
        }

    def test_failedAdvisor(self) -> None:
        """
        An advisor that fails becomes a block saying so, the progress says
        why, and the agent still answers; the run's usage adds up every
        agent's.
        """
        providers = {
            "bad": ScriptedProvider("bad", [ProviderError("upstream down", code="x")]),
            "good": ScriptedProvider(
                "good", [LLMResponse(content="be careful", usage=Usage(2, 1))]
            ),
            "main": ScriptedProvider("main", [LLMResponse(content="ok", usage=Usage(5, 1))]),
        }
        agents = self.agents()
        runner = SessionRunner(providers.__getitem__, Clock(), agents=agents)
        events: list[Event] = []
        finished = self.successResultOf(
            runner.run(agents["/a/main.ai"], RunRequest((ChatMessage("user", "q"),)), events.append)
        )
        prompt = providers["main"].requests[0].messages[-1].content
        self.assertIn('agent="good">\nbe careful\n', prompt)
        self.assertIn('agent="bad">\nThe advisor failed and gave no advice:', prompt)
        failed = [e for e in events if isinstance(e, AdvisorProgress) and e.error]
        self.assertEqual([e.agent for e in failed], ["bad"])
        self.assertIn("upstream down", progressText(failed[0]))
        self.assertEqual("".join(e.text for e in events if isinstance(e, ContentDelta)), "ok")
        self.assertEqual(finished.usage, Usage(7, 2))

    def test_unknownDestination(self) -> None:
        """
        A router call naming no destination is an error the model reads;
        the run goes on with the router.
        """
        router = AgentSpec(
            path="/a/r.ai",
            name="r",
            prompt="",
            models=("r/m",),
            router=(RouteTarget("./x.ai", "/a/x.ai"),),
        )
        provider = ScriptedProvider(
            "r",
            [
                LLMResponse(content="", toolCalls=(ToolCall("c", ROUTER_TOOL, '{"agent": "y"}'),)),
                LLMResponse(content="myself"),
            ],
        )
        runner = SessionRunner(lambda name: provider, Clock(), agents={router.path: router})
        events: list[Event] = []
        self.successResultOf(
            runner.run(router, RunRequest((ChatMessage("user", "q"),)), events.append)
        )
        tool = [m for m in provider.requests[1].messages if m.role == "tool"][0]
        self.assertEqual(tool.content, "error: unknown destination 'y'; choose one of: ./x.ai")
        self.assertFalse([e for e in events if isinstance(e, HandoffProgress)])


class ExampleTests(SynchronousTestCase):
    """
    The example set in C{agents/support/} (written like the TypeScript
    ai-agent's orchestration examples) loads and runs.
    """

    def test_supportPipeline(self) -> None:
        """
        The front desk is advised, routes to a handler, and its handoff
        agent's rewrite is the answer; asked again, the answer comes from
        its cache without a model call.
        """
        from ai_agent.cache import ResponseCache
        from ai_agent.store import MemoryStore
        from ai_agent.tools import ToolBoxFactory

        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        config = Config(providers={"openai": {}, "anthropic": {}})  # type: ignore[arg-type]
        registry = loadRegistry([os.path.join(here, "agents", "support", "support.ai")], config)
        self.assertEqual(
            sorted(spec.name for spec in registry.byPath.values()),
            ["billing", "compliance", "polish", "support", "technical"],
        )
        calls: list[tuple[str, Any]] = []

        def reply(request: Any) -> LLMResponse:
            system = request.messages[0].content
            calls.append((system[:30].strip(), request))
            if system.startswith("Review the user's request"):
                return LLMResponse(content="No compliance issues identified.")
            if system.startswith("You are the front desk"):
                arguments = '{"agent": "./handlers/technical.ai"}'
                return LLMResponse(content="", toolCalls=(ToolCall("r", ROUTER_TOOL, arguments),))
            if system.startswith("You solve technical problems"):
                return LLMResponse(content="Restart the router.")
            return LLMResponse(content="Hi! Please restart the router. Anything else?")

        @attrs.define
        class ByPrompt:
            """
            Answers each call as the agent whose prompt it carries would.
            """

            name: str = "openai"

            def complete(self, request: Any, sink: Any) -> Any:
                response = reply(request)
                sink.content(response.content)
                return succeed(response)

        provider = ByPrompt()
        clock = Clock()
        factory = ToolBoxFactory(registry.byPath)
        runner = SessionRunner(
            lambda name: provider,
            clock,
            factory,
            agents=registry.byPath,
            cache=ResponseCache(MemoryStore(clock)),
        )
        factory.runner = runner
        support = registry.resolve("support").spec
        answers = []
        for _ in range(2):
            events: list[Event] = []
            self.successResultOf(
                runner.run(
                    support, RunRequest((ChatMessage("user", "wifi is down"),)), events.append
                )
            )
            answers.append("".join(e.text for e in events if isinstance(e, ContentDelta)))
        self.assertEqual(answers, ["Hi! Please restart the router. Anything else?"] * 2)
        self.assertEqual(
            [first for first, _ in calls],
            [
                "Review the user's request for",
                "You are the front desk of cust",
                "You solve technical problems.",
                "You receive the customer's ori",
            ],
        )
        handoffPrompt = calls[3][1].messages[-1].content
        self.assertIn('agent="technical">\nRestart the router.\n', handoffPrompt)


class RegistryTests(SynchronousTestCase):
    """
    The registry loads routing targets, refusing missing ones and cycles.
    """

    def load(self, files: dict[str, str], top: str) -> Any:
        directory = self.mktemp()
        os.makedirs(directory)
        for name, text in files.items():
            writeAgent(directory, name, text)
        config = Config(providers={"fake": {}})  # type: ignore[arg-type]
        return loadRegistry([os.path.join(directory, top)], config)

    def test_loadsTargets(self) -> None:
        """
        Advisors, destinations and the handoff agent are loaded with the
        agent.
        """
        registry = self.load(AGENTS, "router.ai")
        names = sorted(spec.name for spec in registry.byPath.values())
        self.assertEqual(names, ["billing", "router", "tech"])

    def test_missingTarget(self) -> None:
        """
        A target that is no file is refused, naming the key and the target.
        """
        error = self.assertRaises(
            ConfigurationError,
            self.load,
            {"main.ai": _file("main", "handoff: ./nope.ai\n")},
            "main.ai",
        )
        self.assertIn("'handoff' names './nope.ai', which is not an agent file", str(error))

    def test_cycle(self) -> None:
        """
        Agents handing off to each other form a cycle, refused at load.
        """
        error = self.assertRaises(
            ConfigurationError,
            self.load,
            {"a.ai": _file("a", "handoff: ./b.ai\n"), "b.ai": _file("b", "handoff: ./a.ai\n")},
            "a.ai",
        )
        self.assertIn("form a cycle: a.ai -> b.ai -> a.ai", str(error))
