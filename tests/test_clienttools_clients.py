"""
Client tools through a live server, driven by real Python clients
unmodified (the C{openai} SDK, LangChain's C{ChatOpenAI}): the client's
tools beside the agent's own MCP tools (the calc server of
C{tests/mcp_servers}), calls handed back as C{tool_calls}, and the run
picked up where it left off.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pydantic
from twisted.trial.unittest import TestCase

from ai_agent.store import MemoryStore, StoreTurnStore
from ai_agent.testing import Reply
from tests._harness import LiveServer, inThread, startServer
from tests.mcp_servers import calcEntry

try:
    import langchain_openai
    from langchain_core.messages import HumanMessage, ToolMessage
except ImportError:
    langchain_openai = None  # type: ignore[assignment]

MODEL = "hybrid"

HYBRID = """\
---
description: An agent with its own calculator, serving clients with their own tools
models: fake/test-model
tools: [calc]
---
You are the hybrid agent.
"""

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}

QUESTION = [{"role": "user", "content": "What is 2+3, and the weather in Paris?"}]


async def _server(testCase: TestCase, **kwargs: Any) -> LiveServer:
    return await startServer(
        testCase,
        agents={f"{MODEL}.ai": HYBRID},
        mcpServers={"calc": calcEntry()},
        streamHeadGrace=0.0,
        **kwargs,
    )


def _create(server: LiveServer, messages: list[Any], **kwargs: Any) -> Any:
    return inThread(
        server.client().chat.completions.create, model=MODEL, messages=messages, **kwargs
    )


def _upstreamMessages(server: LiveServer, index: int) -> list[tuple[Any, ...]]:
    """
    What the model got in its C{index}th call, without the agent's prompt:
    (role, tool call names, tool call id, content).
    """
    messages = server.upstream.requests[index].body["messages"]
    return [
        (
            m["role"],
            [c["function"]["name"] for c in m.get("tool_calls") or ()],
            m.get("tool_call_id"),
            m.get("content"),
        )
        for m in messages
        if m["role"] != "system"
    ]


class OpenAISDKTests(TestCase):
    """
    The C{openai} SDK's tool loop against an agent with its own tools.
    """

    async def test_clientOnlyAndContinued(self) -> None:
        """
        A client-only call comes back as C{message.tool_calls} with
        C{finish_reason} C{tool_calls}; the model saw the agent's tools and
        the client's; the client's result, sent back, reaches the model as
        a real tool message, and the answer follows.
        """
        server = await _server(self)
        server.upstream.script(
            Reply(toolCalls=[("get_weather", {"city": "Paris"})]),
            Reply(content="Sunny in Paris."),
        )
        first = await _create(server, QUESTION, tools=[WEATHER_TOOL])
        choice = first.choices[0]
        self.assertEqual(choice.finish_reason, "tool_calls")
        [call] = choice.message.tool_calls
        self.assertEqual(call.function.name, "get_weather")
        self.assertEqual(json.loads(call.function.arguments), {"city": "Paris"})
        offered = [t["function"]["name"] for t in server.upstream.requests[0].body["tools"]]
        self.assertIn("calc__add", offered)
        self.assertIn("get_weather", offered)
        self.assertEqual(
            server.upstream.requests[0].body["tools"][offered.index("get_weather")]["function"],
            WEATHER_TOOL["function"],
        )
        history = [
            *QUESTION,
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24 C"},
        ]
        second = await _create(server, history, tools=[WEATHER_TOOL])
        self.assertEqual(second.choices[0].message.content, "Sunny in Paris.")
        self.assertEqual(second.choices[0].finish_reason, "stop")
        self.assertEqual(
            _upstreamMessages(server, 1),
            [
                ("user", [], None, QUESTION[0]["content"]),
                ("assistant", ["get_weather"], None, None),
                ("tool", [], call.id, "sunny, 24 C"),
            ],
        )

    async def test_hybridStreamed(self) -> None:
        """
        An MCP tool, then a client tool, streamed: the agent's own call
        shows as progress; the client's call streams as OpenAI streams tool
        calls (first delta with index, id, type and name, then the
        arguments; never content and tool_calls in one delta; exactly one
        finish_reason, C{tool_calls}); the continuation's model sees both
        results in order.
        """
        server = await _server(self)
        server.upstream.script(
            Reply(toolCalls=[("calc__add", {"a": 2, "b": 3})]),
            Reply(toolCalls=[("get_weather", {"city": "Paris"})]),
            Reply(content="5, and sunny."),
        )
        stream = await _create(server, QUESTION, tools=[WEATHER_TOOL], stream=True)
        chunks = await inThread(list, stream)
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
        self.assertEqual([r for r in reasons if r is not None], ["tool_calls"])
        self.assertEqual(reasons[-1], "tool_calls")
        progress = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
        self.assertIn("calling calc__add", progress)
        self.assertIn("calc__add → 5", progress)
        calls = [d.tool_calls for d in deltas if d.tool_calls]
        for d in deltas:
            self.assertFalse(d.tool_calls and d.content, d)
        first, *rest = [call for parts in calls for call in parts]
        self.assertEqual(
            (first.index, first.type, first.function.name), (0, "function", "get_weather")
        )
        self.assertTrue(first.id)
        for later in rest:
            self.assertEqual((later.index, later.id, later.type), (0, None, None))
            self.assertIsNone(later.function.name)
        arguments = "".join(c.function.arguments or "" for c in [first, *rest])
        self.assertEqual(json.loads(arguments), {"city": "Paris"})
        history = [
            *QUESTION,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": first.id,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": first.id, "content": "sunny"},
        ]
        answer = await _create(server, history, tools=[WEATHER_TOOL])
        self.assertEqual(answer.choices[0].message.content, "5, and sunny.")
        seen = _upstreamMessages(server, 2)
        self.assertEqual(
            [(role, names, content) for role, names, _, content in seen],
            [
                ("user", [], QUESTION[0]["content"]),
                ("assistant", ["calc__add"], None),
                ("tool", [], "5"),
                ("assistant", ["get_weather"], None),
                ("tool", [], "sunny"),
            ],
        )

    async def test_sameTurnHybrid(self) -> None:
        """
        An MCP call and a client call in one turn: the MCP call runs, the
        client gets only its own call, and the continuation's model sees
        the assistant message with both calls, then both results.
        """
        server = await _server(self)
        server.upstream.script(
            Reply(toolCalls=[("calc__add", {"a": 2, "b": 3}), ("get_weather", {"city": "X"})]),
            Reply(content="done"),
        )
        first = await _create(server, QUESTION, tools=[WEATHER_TOOL])
        message = first.choices[0].message
        self.assertEqual([c.function.name for c in message.tool_calls], ["get_weather"])
        call = message.tool_calls[0]
        history = [
            *QUESTION,
            message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "rain"},
        ]
        await _create(server, history, tools=[WEATHER_TOOL])
        seen = _upstreamMessages(server, 1)
        self.assertEqual(seen[1][:2], ("assistant", ["calc__add", "get_weather"]))
        self.assertEqual(
            [(role, content) for role, _, _, content in seen[2:]], [("tool", "5"), ("tool", "rain")]
        )

    async def test_streamHelper(self) -> None:
        """
        The SDK's C{.stream()} helper with a C{pydantic_function_tool}
        assembles the call and parses its arguments into the model class.
        """

        class GetWeather(pydantic.BaseModel):
            city: str

        server = await _server(self)
        server.upstream.script(Reply(toolCalls=[("GetWeather", {"city": "Oslo"})]))

        def run() -> Any:
            with server.client().chat.completions.stream(
                model=MODEL,
                messages=QUESTION,
                tools=[openai.pydantic_function_tool(GetWeather)],
            ) as stream:
                return stream.get_final_completion()

        completion = await inThread(run)
        [call] = completion.choices[0].message.tool_calls
        self.assertEqual(call.function.parsed_arguments, GetWeather(city="Oslo"))
        self.assertEqual(completion.choices[0].finish_reason, "tool_calls")

    async def test_toolChoice(self) -> None:
        """
        C{tool_choice} C{none} hides the client's tools (the agent keeps
        its own); a named function is forced on the model's first call;
        C{required} is passed on; C{parallel_tool_calls} too.
        """
        server = await _server(self)
        server.upstream.script(Reply(content="a"), Reply(content="b"), Reply(content="c"))
        await _create(server, QUESTION, tools=[WEATHER_TOOL], tool_choice="none")
        named = {"type": "function", "function": {"name": "get_weather"}}
        await _create(
            server, QUESTION, tools=[WEATHER_TOOL], tool_choice=named, parallel_tool_calls=False
        )
        await _create(server, QUESTION, tools=[WEATHER_TOOL], tool_choice="required")
        bodies = [r.body for r in server.upstream.requests]
        offered = [t["function"]["name"] for t in bodies[0]["tools"]]
        self.assertIn("calc__add", offered)
        self.assertNotIn("get_weather", offered)
        self.assertIn("get_weather", [t["function"]["name"] for t in bodies[1]["tools"]])
        self.assertNotIn("tool_choice", bodies[0])
        self.assertEqual(bodies[1]["tool_choice"], named)
        self.assertIs(bodies[1]["parallel_tool_calls"], False)
        self.assertEqual(bodies[2]["tool_choice"], "required")

    async def test_nameClash(self) -> None:
        """
        A client tool named like one of the agent's own tools is a 400
        naming it, and no model is called.
        """
        server = await _server(self)
        clash = {"type": "function", "function": {"name": "calc__add"}}
        with self.assertRaises(openai.BadRequestError) as caught:
            await _create(server, QUESTION, tools=[WEATHER_TOOL, clash])
        self.assertEqual(caught.exception.status_code, 400)
        body: Any = caught.exception.body
        self.assertEqual(body["param"], "tools[1].function.name")
        self.assertEqual(body["code"], "tool_name_conflict")
        self.assertIn("calc__add", body["message"])
        self.assertEqual(server.upstream.requests, [])

    async def test_malformedTools(self) -> None:
        """
        Malformed tools are a 400 whose C{param} names the field.
        """
        server = await _server(self)
        bad = [WEATHER_TOOL, {"type": "function", "function": {"name": "has space"}}]
        with self.assertRaises(openai.BadRequestError) as caught:
            await _create(server, QUESTION, tools=bad)
        body: Any = caught.exception.body
        self.assertEqual(body["param"], "tools[1].function.name")

    async def test_expiredContinuation(self) -> None:
        """
        A continuation whose hidden turn has expired goes on from what the
        client sent: the model gets the client's history as it is.
        """
        server = await _server(self)
        runner = server.runtime.runner
        runner.turns = StoreTurnStore(MemoryStore(runner.reactor, ttl=0.0))
        server.upstream.script(
            Reply(toolCalls=[("calc__add", {"a": 1, "b": 1}), ("get_weather", {"city": "X"})]),
            Reply(content="ok"),
        )
        first = await _create(server, QUESTION, tools=[WEATHER_TOOL])
        message = first.choices[0].message
        history = [
            *QUESTION,
            message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "rain"},
        ]
        answer = await _create(server, history, tools=[WEATHER_TOOL])
        self.assertEqual(answer.choices[0].message.content, "ok")
        seen = _upstreamMessages(server, 1)
        self.assertEqual(
            [(r, n) for r, n, _, _ in seen],
            [("user", []), ("assistant", ["get_weather"]), ("tool", [])],
        )


class LangChainToolTests(TestCase):
    """
    LangChain's C{bind_tools} agents: the tool call comes back as
    C{AIMessage.tool_calls}, and a C{ToolMessage} continues the run.
    """

    if langchain_openai is None:
        skip = "langchain-openai is not installed (it needs openai 2.45 or newer)"

    async def test_bindTools(self) -> None:
        """
        C{bind_tools} with a function tool gets the call, parsed; the
        C{ToolMessage} with its result reaches the model and the answer
        comes back.
        """
        assert langchain_openai is not None
        server = await _server(self)
        server.upstream.script(
            Reply(toolCalls=[("get_weather", {"city": "Rome"})]), Reply(content="Warm in Rome.")
        )
        chat = langchain_openai.ChatOpenAI(
            base_url=server.baseUrl, api_key="k", model=MODEL, max_retries=0, timeout=20
        ).bind_tools([WEATHER_TOOL])
        question = HumanMessage("Weather in Rome?")
        reply = await inThread(chat.invoke, [question])
        self.assertEqual(
            [(c["name"], c["args"]) for c in reply.tool_calls], [("get_weather", {"city": "Rome"})]
        )
        result = ToolMessage("28 C", tool_call_id=reply.tool_calls[0]["id"])
        answer = await inThread(chat.invoke, [question, reply, result])
        self.assertEqual(answer.content, "Warm in Rome.")
        self.assertEqual(_upstreamMessages(server, 1)[-1][2:], (reply.tool_calls[0]["id"], "28 C"))


ANTHROPIC_AGENT = """\
---
description: An agent whose model speaks Anthropic's Messages API
models: claude/test-model
---
You are the Claude-backed agent.
"""


class AnthropicWireTests(TestCase):
    """
    Client tools through an agent whose provider speaks Anthropic's wire:
    the tools go up as Anthropic tools, the call comes back from a
    C{tool_use} block, and the client's result goes up as a
    C{tool_result} block.
    """

    async def test_roundTrip(self) -> None:
        """
        The openai SDK's tool round trip, with the model behind Anthropic's
        Messages API: C{input_schema}, C{tool_choice} C{any} for
        C{required}, the call handed back, the result as C{tool_result}.
        """
        server = await startServer(
            self, agents={"claude-agent.ai": ANTHROPIC_AGENT}, fakeProviders={"claude": "anthropic"}
        )
        server.upstream.script(
            Reply(toolCalls=[("get_weather", {"city": "Bern"})]), Reply(content="Cool in Bern.")
        )
        create = server.client().chat.completions.create
        first = await inThread(
            create,
            model="claude-agent",
            messages=QUESTION,
            tools=[WEATHER_TOOL],
            tool_choice="required",
        )
        message = first.choices[0].message
        [call] = message.tool_calls
        self.assertEqual(json.loads(call.function.arguments), {"city": "Bern"})
        sent = server.upstream.requests[0].body
        self.assertEqual(
            sent["tools"][0],
            {
                "name": "get_weather",
                "description": "The weather in a city",
                "input_schema": WEATHER_TOOL["function"]["parameters"],
            },
        )
        self.assertEqual(sent["tool_choice"], {"type": "any"})
        history = [
            *QUESTION,
            message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "12 C"},
        ]
        answer = await inThread(
            create, model="claude-agent", messages=history, tools=[WEATHER_TOOL]
        )
        self.assertEqual(answer.choices[0].message.content, "Cool in Bern.")
        messages = server.upstream.requests[1].body["messages"]
        uses = [
            b
            for m in messages
            if m["role"] == "assistant"
            for b in m["content"]
            if b["type"] == "tool_use"
        ]
        results = [
            b
            for m in messages
            if m["role"] == "user"
            for b in m["content"]
            if isinstance(b, dict) and b["type"] == "tool_result"
        ]
        self.assertEqual(
            [(u["id"], u["name"], u["input"]) for u in uses],
            [(call.id, "get_weather", {"city": "Bern"})],
        )
        self.assertEqual([(r["tool_use_id"], r["content"]) for r in results], [(call.id, "12 C")])
