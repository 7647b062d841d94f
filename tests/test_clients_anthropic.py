"""
The Anthropic Messages API headend through a live server, driven by the
C{anthropic} Python SDK unmodified: whole and streamed messages, a client
tool round trip, a hybrid run beside the agent's own MCP tools (the calc
server of C{tests/mcp_servers}), C{count_tokens}, the model list, and
errors as the SDK's exception classes; agents behind an OpenAI-wire and an
Anthropic-wire provider.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
from twisted.trial.unittest import TestCase

from ai_agent.headends._http import APIKeys, HTTPPolicy
from ai_agent.headends._site import Mount
from ai_agent.headends.anthropic import (
    ANTHROPIC_ERRORS,
    AnthropicHeadend,
    estimateTokens,
    isAnthropicClient,
    parseCountTokensRequest,
    signature,
)
from ai_agent.testing import Reply
from tests._harness import DEFAULT_AGENT, LiveServer, inThread, startServer
from tests.mcp_servers import calcEntry

HYBRID = """\
---
description: An agent with its own calculator
models: fake/test-model
tools: [calc]
---
You are the hybrid agent.
"""

CLAUDE = """\
---
description: An agent behind an Anthropic-wire provider
models: claude/claude-test
---
You are the claude agent.
"""

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}

FALLBACK = """\
---
description: An agent whose first model has no key
models: [nokey/model, fake/test-model]
---
You are the fallback agent.
"""

QUESTION = [{"role": "user", "content": "What is 2+3, and the weather in Paris?"}]


def _client(server: LiveServer, **kwargs: Any) -> anthropic.Anthropic:
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("timeout", 20)
    kwargs.setdefault("api_key", "any-key")
    return anthropic.Anthropic(base_url=server.baseUrl[: -len("/v1")], **kwargs)


def _create(server: LiveServer, model: str = "agent", **kwargs: Any) -> Any:
    kwargs.setdefault("messages", [{"role": "user", "content": "Hello there"}])
    kwargs.setdefault("max_tokens", 1024)
    return inThread(_client(server).messages.create, model=model, **kwargs)


def _events(server: LiveServer, body: dict[str, Any], **extraHeaders: str) -> Any:
    """
    The raw SSE events (name, data) of a streamed request, as the wire has
    them.
    """

    def run() -> list[tuple[str, dict[str, Any]]]:
        url = server.baseUrl + "/messages?beta=true"
        headers = {"anthropic-version": "2023-06-01", "x-api-key": "k", **extraHeaders}
        with httpx.stream("POST", url, json=body, headers=headers, timeout=20) as response:
            text = response.read().decode("utf-8")
        events = []
        for chunk in text.split("\n\n"):
            if not chunk.strip():
                continue
            lines = dict(line.split(": ", 1) for line in chunk.split("\n"))
            events.append((lines["event"], json.loads(lines["data"])))
        return events

    return inThread(run)


def _assertWellFormed(testCase: TestCase, events: list[tuple[str, dict[str, Any]]]) -> None:
    """
    The stream rules Claude Code relies on: C{message_start} first,
    C{message_stop} last; each event's C{type} is its name; blocks with
    contiguous indices, each started, delta'd and stopped before the next,
    deltas of its own type only.
    """
    names = [name for name, _ in events if name != "ping"]
    testCase.assertEqual(names[0], "message_start")
    testCase.assertEqual(names[-2:], ["message_delta", "message_stop"])
    for name, data in events:
        testCase.assertEqual(data["type"], name)
    allowed = {
        "text": {"text_delta"},
        "thinking": {"thinking_delta", "signature_delta"},
        "tool_use": {"input_json_delta"},
    }
    current: tuple[int, str] | None = None
    expected = 0
    for name, data in events:
        if name == "content_block_start":
            testCase.assertIsNone(current)
            testCase.assertEqual(data["index"], expected)
            current = (data["index"], data["content_block"]["type"])
        elif name == "content_block_delta":
            assert current is not None
            testCase.assertEqual(data["index"], current[0])
            testCase.assertIn(data["delta"]["type"], allowed[current[1]])
        elif name == "content_block_stop":
            assert current is not None
            testCase.assertEqual(data["index"], current[0])
            current = None
            expected += 1
    testCase.assertIsNone(current)


class MessagesTests(TestCase):
    """
    Plain messages, whole and streamed.
    """

    async def test_create(self) -> None:
        """
        A whole answer is a C{message}: an id starting C{msg_}, the agent
        as the model, one text block, C{end_turn}, the upstream's token
        counts; the response carries a C{request-id}.
        """
        server = await startServer(self)
        server.upstream.script(Reply(content="Hi there, friend.", usage=(21, 5)))
        raw = await inThread(
            _client(server).messages.with_raw_response.create,
            model="agent",
            max_tokens=100,
            messages=[{"role": "user", "content": "Hello"}],
        )
        message = raw.parse()
        self.assertTrue(message.id.startswith("msg_"))
        self.assertEqual(raw.headers["request-id"], message.id)
        self.assertEqual(message.model, "agent")
        self.assertEqual(message.role, "assistant")
        self.assertEqual([block.type for block in message.content], ["text"])
        self.assertEqual(message.content[0].text, "Hi there, friend.")
        self.assertEqual(message.stop_reason, "end_turn")
        self.assertEqual((message.usage.input_tokens, message.usage.output_tokens), (21, 5))

    async def test_stream(self) -> None:
        """
        C{.stream()} with thinking enabled: C{text_stream} yields the
        answer's pieces and C{get_final_message} assembles the same
        message, with the model's reasoning as a signed C{thinking} block
        before the text.
        """
        server = await startServer(self, streamHeadGrace=0.0)
        server.upstream.script(
            Reply(content=["Sunny ", "and ", "warm."], reasoning="Let me think.", usage=(30, 7))
        )

        def run() -> tuple[list[str], Any]:
            with _client(server).messages.stream(
                model="agent",
                max_tokens=2000,
                thinking={"type": "enabled", "budget_tokens": 1024},
                messages=[{"role": "user", "content": "Weather?"}],
            ) as stream:
                pieces = list(stream.text_stream)
                return pieces, stream.get_final_message()

        pieces, message = await inThread(run)
        self.assertEqual(pieces, ["Sunny ", "and ", "warm."])
        self.assertEqual([block.type for block in message.content], ["thinking", "text"])
        self.assertEqual(message.content[0].thinking, "Let me think.")
        self.assertEqual(message.content[0].signature, signature("Let me think."))
        self.assertEqual(message.content[1].text, "Sunny and warm.")
        self.assertEqual(message.stop_reason, "end_turn")
        self.assertEqual((message.usage.input_tokens, message.usage.output_tokens), (30, 7))

    async def test_answerFirstWithoutThinking(self) -> None:
        """
        Without C{thinking} in the request, Anthropic's own idiom
        C{message.content[0].text} is the answer, whole and streamed
        (C{get_final_message}), even when the run skipped a model with no
        key and the model reasoned: neither the fallback note nor the
        reasoning is a block (the note the server logs).
        """
        server = await startServer(
            self,
            agents={"fallback.ai": FALLBACK},
            extraProviders={
                "nokey": {"type": "openai", "baseUrl": "http://127.0.0.1:9", "apiKey": "${NO_KEY}"}
            },
        )
        server.upstream.script(
            Reply(content="Answer one.", reasoning="Hmm."),
            Reply(content=["Answer ", "two."], reasoning="Hmm."),
        )
        whole = await _create(server, "fallback")
        self.assertEqual([block.type for block in whole.content], ["text"])
        self.assertEqual(whole.content[0].text, "Answer one.")

        def run() -> Any:
            with _client(server).messages.stream(
                model="fallback", max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
            ) as stream:
                return stream.get_final_message()

        streamed = await inThread(run)
        self.assertEqual([block.type for block in streamed.content], ["text"])
        self.assertEqual(streamed.content[0].text, "Answer two.")
        # Both runs went past the model with no key to the fake upstream.
        self.assertEqual(len(server.upstream.requests), 2)

    async def test_fallbackNotesWhenThinking(self) -> None:
        """
        With thinking enabled (C{adaptive}, as Claude Code sends it), the
        same run's note about the skipped model and the model's reasoning
        come first, as a signed C{thinking} block, and the answer after.
        """
        server = await startServer(
            self,
            agents={"fallback.ai": FALLBACK},
            extraProviders={
                "nokey": {"type": "openai", "baseUrl": "http://127.0.0.1:9", "apiKey": "${NO_KEY}"}
            },
        )
        server.upstream.script(Reply(content="Answer.", reasoning="Hmm."))
        message = await _create(server, "fallback", thinking={"type": "adaptive"})
        self.assertEqual([block.type for block in message.content], ["thinking", "text"])
        self.assertIn("skipping nokey/model", message.content[0].thinking)
        self.assertIn("Hmm.", message.content[0].thinking)
        self.assertEqual(message.content[0].signature, signature(message.content[0].thinking))
        self.assertEqual(message.content[1].text, "Answer.")

    async def test_structuredOutput(self) -> None:
        """
        C{output_config.format} (the SDK's current parameter) and the
        older C{output_format} (sent as the structured-outputs beta did)
        reach the OpenAI-wire upstream as C{response_format} with the
        client's schema; the JSON answer is C{content[0].text}, one block,
        which the SDK's C{messages.parse} reads into the schema's type.
        """
        server = await startServer(self)
        schema = {
            "type": "object",
            "properties": {"title": {"type": "string"}, "branch": {"type": "string"}},
            "required": ["title", "branch"],
            "additionalProperties": False,
        }
        answer = '{"title": "Fix login", "branch": "claude/fix-login"}'
        server.upstream.script(Reply(content=answer), Reply(content=answer))
        current = await _create(
            server, output_config={"format": {"type": "json_schema", "schema": schema}}
        )
        self.assertEqual([block.type for block in current.content], ["text"])
        self.assertEqual(json.loads(current.content[0].text)["branch"], "claude/fix-login")
        older = await inThread(
            _client(
                server, default_headers={"anthropic-beta": "structured-outputs-2025-11-13"}
            ).messages.create,
            model="agent",
            max_tokens=100,
            messages=[{"role": "user", "content": "Title this"}],
            extra_body={"output_format": {"type": "json_schema", "schema": schema}},
        )
        self.assertEqual(older.content[0].text, answer)
        for recorded in server.upstream.requests:
            format = recorded.body["response_format"]
            self.assertEqual(format["type"], "json_schema")
            self.assertEqual(format["json_schema"]["schema"], schema)

    async def test_claudeCodeTitleCall(self) -> None:
        """
        Claude Code's session-title call, as Claude Code 2.1.197 sent it
        (captured; its long system text shortened): streamed, no tools, no
        thinking, C{output_config} with C{effort} and a C{json_schema}
        format, the structured-outputs beta header.  The upstream gets the
        schema as C{response_format}; the stream has one block, the JSON
        as text, and no thinking events.
        """
        server = await startServer(self, streamHeadGrace=0.0)
        schema = {
            "type": "object",
            "properties": {"title": {"type": "string"}},
            "required": ["title"],
            "additionalProperties": False,
        }
        body = {
            "model": "agent",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "<session>\nSay hello please\n</session>\n\nWrite the"
                            " title in the language the user wrote in, regardless of the"
                            " language of the examples above.",
                        }
                    ],
                }
            ],
            "system": [
                {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197;"},
                {
                    "type": "text",
                    "text": "You are Claude Code, Anthropic's official CLI for Claude.",
                },
                {
                    "type": "text",
                    "text": "Generate a concise, sentence-case title (3-7 words) that captures"
                    " the main topic or goal of this coding session. Return JSON with a single"
                    ' "title" field.',
                },
            ],
            "tools": [],
            "metadata": {"user_id": '{"device_id":"d","account_uuid":"","session_id":"s"}'},
            "max_tokens": 32000,
            "output_config": {
                "effort": "high",
                "format": {"type": "json_schema", "schema": schema},
            },
            "stream": True,
        }
        server.upstream.script(Reply(content='{"title": "Say hello"}', reasoning="Short."))
        events = await _events(
            server, body, **{"anthropic-beta": "claude-code-20250219,structured-outputs-2025-12-15"}
        )
        _assertWellFormed(self, events)
        starts = [d["content_block"]["type"] for n, d in events if n == "content_block_start"]
        self.assertEqual(starts, ["text"])
        text = "".join(d["delta"].get("text", "") for n, d in events if n == "content_block_delta")
        self.assertEqual(json.loads(text), {"title": "Say hello"})
        sent = server.upstream.requests[0].body
        self.assertEqual(sent["response_format"]["json_schema"]["schema"], schema)
        self.assertEqual(sent["max_tokens"], 32000)

    async def test_structuredOutputParse(self) -> None:
        """
        The SDK's C{messages.parse(output_format=Model)} sends its
        schema as C{output_config.format}; the upstream gets it as
        C{response_format} and the SDK parses the answer into the model.
        """
        import pydantic

        class Title(pydantic.BaseModel):
            title: str
            branch: str

        server = await startServer(self)
        server.upstream.script(Reply(content='{"title": "Fix login", "branch": "fix-login"}'))
        parsed = await inThread(
            _client(server).messages.parse,
            model="agent",
            max_tokens=100,
            messages=[{"role": "user", "content": "Title this"}],
            output_format=Title,
        )
        self.assertEqual(parsed.parsed_output, Title(title="Fix login", branch="fix-login"))
        sent = server.upstream.requests[0].body["response_format"]["json_schema"]["schema"]
        self.assertEqual(set(sent["properties"]), {"title", "branch"})

    async def test_structuredOutputAnthropicWire(self) -> None:
        """
        Behind an Anthropic-wire provider, the client's schema reaches the
        provider's request (asked for in its system text, as for the
        other APIs' formats).
        """
        server = await startServer(
            self, agents={"claude.ai": CLAUDE}, fakeProviders={"claude": "anthropic"}
        )
        schema = {"type": "object", "properties": {"title": {"type": "string"}}}
        server.upstream.script(Reply(content='{"title": "x"}'))
        message = await _create(
            server, "claude", output_config={"format": {"type": "json_schema", "schema": schema}}
        )
        self.assertEqual(message.content[0].text, '{"title": "x"}')
        system = server.upstream.requests[0].body["system"]
        self.assertIn(json.dumps(schema), system if isinstance(system, str) else json.dumps(system))

    async def test_structuredOutputRefused(self) -> None:
        """
        A malformed C{output_config.format} is the SDK's
        C{BadRequestError}: a 400 C{invalid_request_error} naming the
        field; the upstream is never called.
        """
        server = await startServer(self)
        with self.assertRaises(anthropic.BadRequestError) as caught:
            await _create(server, output_config={"format": {"type": "json_schema"}})
        error = cast_body(caught.exception)["error"]
        self.assertEqual(error["type"], "invalid_request_error")
        self.assertTrue(error["message"].startswith("output_config.format.schema:"))
        self.assertEqual(server.upstream.requests, [])

    async def test_wireEvents(self) -> None:
        """
        The raw stream at C{/v1/messages?beta=true}: C{message_start} with
        the message object (no content, no stop reason, a non-zero input
        token count), blocks by the rules, C{message_delta} with the stop
        reason and cumulative usage.
        """
        server = await startServer(self, streamHeadGrace=0.0)
        server.upstream.script(Reply(content="One two three.", reasoning="Hmm.", usage=(40, 9)))
        events = await _events(
            server,
            {
                "model": "agent",
                "max_tokens": 50,
                "stream": True,
                "messages": [{"role": "user", "content": "Count"}],
            },
        )
        _assertWellFormed(self, events)
        start = events[0][1]["message"]
        self.assertEqual(
            (start["type"], start["role"], start["content"], start["stop_reason"]),
            ("message", "assistant", [], None),
        )
        self.assertGreater(start["usage"]["input_tokens"], 0)
        delta = [data for name, data in events if name == "message_delta"][0]
        self.assertEqual(delta["delta"]["stop_reason"], "end_turn")
        self.assertEqual(delta["usage"]["output_tokens"], 9)
        self.assertEqual(delta["usage"]["input_tokens"], 40)
        text = "".join(
            data["delta"].get("text", "") for name, data in events if name == "content_block_delta"
        )
        self.assertEqual(text, "One two three.")

    async def test_requestMapping(self) -> None:
        """
        C{system} blocks and system messages inside C{messages} reach the
        model as system text after the agent's prompt, echoed thinking
        blocks are not sent to the model, and C{max_tokens},
        C{stop_sequences}, C{temperature} and C{top_p} reach it; C{top_k},
        C{thinking}, C{metadata}, unknown fields and any beta header are
        accepted.
        """
        server = await startServer(self)
        server.upstream.script(Reply(content="ok"))
        await inThread(
            _client(
                server, default_headers={"anthropic-beta": "made-up-2099-01-01"}
            ).messages.create,
            model="agent",
            max_tokens=77,
            system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            stop_sequences=["STOP"],
            thinking={"type": "enabled", "budget_tokens": 2000},
            metadata={"user_id": "u-1"},
            # This SDK version no longer has parameters for these.
            extra_body={
                "temperature": 0.5,
                "top_p": 0.9,
                "top_k": 5,
                "context_management": {"edits": []},
                "output_config": {},
            },
            messages=[
                {"role": "user", "content": "First"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "secret plan", "signature": "x"},
                        {"type": "text", "text": "Answer one"},
                    ],
                },
                {"role": "system", "content": "Mid-conversation note"},  # type: ignore[misc]
                {"role": "user", "content": [{"type": "text", "text": "Second"}]},
            ],
        )
        body = server.upstream.requests[0].body
        system = [m["content"] for m in body["messages"] if m["role"] == "system"]
        self.assertIn("You are the test agent.", system[0])
        # The session gathers system texts after the agent's prompt.
        self.assertIn("Be brief.", "\n".join(system))
        self.assertIn("Mid-conversation note", "\n".join(system))
        self.assertEqual(
            [(m["role"], m["content"]) for m in body["messages"] if m["role"] != "system"],
            [("user", "First"), ("assistant", "Answer one"), ("user", "Second")],
        )
        self.assertNotIn("secret plan", json.dumps(body))
        self.assertEqual(body.get("max_tokens", body.get("max_completion_tokens")), 77)
        self.assertEqual(body["stop"], ["STOP"])
        self.assertEqual((body["temperature"], body["top_p"]), (0.5, 0.9))

    async def test_largeBody(self) -> None:
        """
        A body past the off-reactor threshold is parsed in a thread and
        runs like any other; a malformed one is still a 400 in
        Anthropic's envelope.
        """
        server = await startServer(self)
        server.upstream.script(Reply(content="read it"))
        big = "word " * 60_000
        message = await _create(server, messages=[{"role": "user", "content": big}])
        self.assertEqual(message.content[0].text, "read it")
        self.assertEqual(server.upstream.requests[0].body["messages"][-1]["content"], big)
        with self.assertRaises(anthropic.BadRequestError) as caught:
            await _create(
                server,
                messages=[
                    {"role": "user", "content": [{"type": "image"}]},
                    {"role": "user", "content": big},
                ],
            )
        self.assertEqual(cast_body(caught.exception)["error"]["type"], "invalid_request_error")

    async def test_headRoot(self) -> None:
        """
        C{HEAD /} (Claude Code's probe) is answered 200.
        """
        server = await startServer(self)
        response = await inThread(httpx.head, server.baseUrl[: -len("/v1")] + "/")
        self.assertEqual(response.status_code, 200)


class AnthropicWireTests(TestCase):
    """
    An agent whose provider speaks Anthropic's wire: translated both ways,
    never passed through.
    """

    async def test_streamedThroughAnthropicProvider(self) -> None:
        """
        With thinking enabled, the model's signed thinking comes back as
        this server's thinking block (with this server's signature), the
        text after it; the
        provider got an Anthropic request built from the run.
        """
        server = await startServer(
            self, agents={"claude.ai": CLAUDE}, fakeProviders={"claude": "anthropic"}
        )
        server.upstream.script(Reply(content="Bonjour.", reasoning="French.", usage=(12, 3)))

        def run() -> Any:
            with _client(server).messages.stream(
                model="claude",
                max_tokens=2048,
                thinking={"type": "enabled", "budget_tokens": 1024},
                messages=[{"role": "user", "content": "Hi"}],
            ) as stream:
                return stream.get_final_message()

        message = await inThread(run)
        self.assertEqual([b.type for b in message.content], ["thinking", "text"])
        self.assertEqual(message.content[0].signature, signature("French."))
        self.assertEqual(message.content[1].text, "Bonjour.")
        self.assertEqual(message.usage.input_tokens, 12)
        upstream = server.upstream.requests[0]
        self.assertEqual(upstream.body["model"], "claude-test")
        self.assertIn("You are the claude agent.", json.dumps(upstream.body["system"]))


class ToolTests(TestCase):
    """
    Client tools through the SDK, alone and beside the agent's own.
    """

    async def _server(self) -> LiveServer:
        return await startServer(
            self,
            agents={"hybrid.ai": HYBRID},
            mcpServers={"calc": calcEntry()},
            streamHeadGrace=0.0,
        )

    async def test_roundTrip(self) -> None:
        """
        A client tool call comes back as a C{tool_use} block (C{stop_reason}
        C{tool_use}, the input as an object); the client's C{tool_result},
        sent back, reaches the model as a tool message and the answer
        follows.  The model was offered the agent's tools and the client's
        (its C{input_schema} as the parameters).
        """
        server = await self._server()
        server.upstream.script(
            Reply(toolCalls=[("get_weather", {"city": "Paris"})]),
            Reply(content="Sunny in Paris."),
        )
        first = await _create(server, "hybrid", messages=QUESTION, tools=[WEATHER])
        self.assertEqual(first.stop_reason, "tool_use")
        [call] = [block for block in first.content if block.type == "tool_use"]
        self.assertEqual((call.name, call.input), ("get_weather", {"city": "Paris"}))
        offered = {t["function"]["name"]: t for t in server.upstream.requests[0].body["tools"]}
        self.assertIn("calc__add", offered)
        self.assertEqual(offered["get_weather"]["function"]["parameters"], WEATHER["input_schema"])
        history = [
            *QUESTION,
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}],
            },
        ]
        second = await _create(server, "hybrid", messages=history, tools=[WEATHER])
        self.assertEqual(second.content[-1].text, "Sunny in Paris.")
        self.assertEqual(second.stop_reason, "end_turn")
        seen = [
            (m["role"], m.get("tool_call_id"), m.get("content"))
            for m in server.upstream.requests[1].body["messages"]
            if m["role"] != "system"
        ]
        self.assertEqual(seen[-1], ("tool", call.id, "sunny"))

    async def test_hybridStreamed(self) -> None:
        """
        An MCP tool, then a client tool, streamed with thinking enabled:
        the agent's own call is progress in a signed thinking block, the
        client's call a
        C{tool_use} block whose input streams as C{input_json_delta}; the
        continuation's model sees both results in order.
        """
        server = await self._server()
        server.upstream.script(
            Reply(toolCalls=[("calc__add", {"a": 2, "b": 3})]),
            Reply(toolCalls=[("get_weather", {"city": "Paris"})]),
            Reply(content="5, and sunny."),
        )
        body = {
            "model": "hybrid",
            "max_tokens": 100,
            "stream": True,
            "thinking": {"type": "adaptive"},
            "messages": QUESTION,
            "tools": [WEATHER],
        }
        events = await _events(server, body)
        _assertWellFormed(self, events)
        starts = [d["content_block"] for n, d in events if n == "content_block_start"]
        self.assertEqual([s["type"] for s in starts], ["thinking", "tool_use"])
        self.assertEqual(starts[1]["input"], {})
        deltas = [d["delta"] for n, d in events if n == "content_block_delta"]
        thinking = "".join(d.get("thinking", "") for d in deltas)
        self.assertIn("calling calc__add", thinking)
        self.assertIn("calc__add → 5", thinking)
        arguments = "".join(d.get("partial_json", "") for d in deltas)
        self.assertEqual(json.loads(arguments), {"city": "Paris"})
        stop = [d for n, d in events if n == "message_delta"][0]["delta"]["stop_reason"]
        self.assertEqual(stop, "tool_use")
        history = [
            *QUESTION,
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": thinking, "signature": "sig"},
                    {
                        "type": "tool_use",
                        "id": starts[1]["id"],
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": starts[1]["id"],
                        "content": [{"type": "text", "text": "sunny"}],
                    }
                ],
            },
        ]

        def final() -> Any:
            with _client(server).messages.stream(
                model="hybrid", max_tokens=100, messages=history, tools=[WEATHER]
            ) as stream:
                return stream.get_final_message()

        answer = await inThread(final)
        self.assertEqual(answer.content[-1].text, "5, and sunny.")
        seen = [
            (m["role"], m.get("content"))
            for m in server.upstream.requests[2].body["messages"]
            if m["role"] in ("tool", "user")
        ]
        self.assertEqual(seen, [("user", QUESTION[0]["content"]), ("tool", "5"), ("tool", "sunny")])

    async def test_toolChoice(self) -> None:
        """
        C{tool_choice} C{none} hides the client's tools, C{tool} forces the
        named one, C{any} requires a call, C{disable_parallel_tool_use}
        turns parallel calls off.
        """
        server = await self._server()
        server.upstream.script(Reply(content="a"), Reply(content="b"), Reply(content="c"))
        await _create(
            server, "hybrid", messages=QUESTION, tools=[WEATHER], tool_choice={"type": "none"}
        )
        await _create(
            server,
            "hybrid",
            messages=QUESTION,
            tools=[WEATHER],
            tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        )
        await _create(
            server, "hybrid", messages=QUESTION, tools=[WEATHER], tool_choice={"type": "any"}
        )
        bodies = [r.body for r in server.upstream.requests]
        self.assertNotIn("get_weather", [t["function"]["name"] for t in bodies[0]["tools"]])
        self.assertEqual(
            bodies[1]["tool_choice"], {"type": "function", "function": {"name": "get_weather"}}
        )
        self.assertIs(bodies[1]["parallel_tool_calls"], False)
        self.assertEqual(bodies[2]["tool_choice"], "required")

    async def test_countTokens(self) -> None:
        """
        C{count_tokens} (at C{?beta=true} too) answers an estimate that
        grows with the messages and counts the agent's own tools and the
        client's.
        """
        server = await self._server()
        client = _client(server)
        short = await inThread(client.messages.count_tokens, model="hybrid", messages=[QUESTION[0]])
        withTools = await inThread(
            client.beta.messages.count_tokens, model="hybrid", messages=QUESTION, tools=[WEATHER]
        )
        longer = await inThread(
            client.messages.count_tokens,
            model="hybrid",
            messages=[{"role": "user", "content": "word " * 400}],
        )
        self.assertGreater(short.input_tokens, len("You are the hybrid agent.") // 4)
        self.assertGreater(withTools.input_tokens, short.input_tokens)
        self.assertGreater(longer.input_tokens, short.input_tokens + 400)
        self.assertEqual(server.upstream.requests, [])


class ProviderCountTests(TestCase):
    """
    C{count_tokens} for an agent whose first model is on an Anthropic-wire
    provider: that provider counts.
    """

    async def test_providerCounts(self) -> None:
        """
        The provider's C{count_tokens} gets the first call as the session
        would make it (the agent's prompt and the client's system text as
        C{system}, the messages, the client's tools), and its count is the
        answer.
        """
        server = await startServer(
            self, agents={"claude.ai": CLAUDE}, fakeProviders={"claude": "anthropic"}
        )
        counted = await inThread(
            _client(server).messages.count_tokens,
            model="claude",
            system="Be brief.",
            messages=[{"role": "user", "content": "one two three"}],
            tools=[WEATHER],
        )
        [upstream] = server.upstream.requests
        self.assertEqual(upstream.path, "/v1/messages/count_tokens")
        self.assertEqual(upstream.body["model"], "claude-test")
        self.assertNotIn("max_tokens", upstream.body)
        system = json.dumps(upstream.body["system"])
        self.assertIn("You are the claude agent.", system)
        self.assertIn("Be brief.", system)
        self.assertEqual([t["name"] for t in upstream.body["tools"]], ["get_weather"])
        # The fake counts the words of the system text and messages, 10 per tool.
        words = len("You are the claude agent.".split()) + 2 + 3
        self.assertEqual(counted.input_tokens, words + 10)

    async def test_failedCountIsEstimated(self) -> None:
        """
        When the provider cannot count (here: nothing listens), the answer
        is the estimate.
        """
        dead = {"type": "anthropic", "baseUrl": "http://127.0.0.1:1", "apiKey": "sk-dead-key"}
        server = await startServer(
            self, agents={"claude.ai": CLAUDE}, extraProviders={"claude": dead}
        )
        body = {"model": "claude", "messages": [{"role": "user", "content": "one two three"}]}
        counted = await inThread(_client(server).messages.count_tokens, **body)
        prompt = server.runtime.registry.resolve("claude").spec.prompt
        expected = estimateTokens(prompt, parseCountTokensRequest(json.dumps(body).encode()))
        self.assertEqual(counted.input_tokens, expected)


class ModelsTests(TestCase):
    """
    The model routes answer each API's shape.
    """

    async def test_anthropicShape(self) -> None:
        """
        C{models.list} and C{models.retrieve} through the SDK: Anthropic's
        shape; an OpenAI client on the same routes still gets OpenAI's.
        """
        server = await startServer(
            self, agents={"alpha.ai": DEFAULT_AGENT, "beta.ai": DEFAULT_AGENT}
        )
        client = _client(server)
        page = await inThread(client.models.list)
        self.assertEqual([m.id for m in page.data], ["alpha", "beta"])
        self.assertEqual((page.first_id, page.last_id, page.has_more), ("alpha", "beta", False))
        self.assertEqual(page.data[0].type, "model")
        one = await inThread(client.models.retrieve, "beta")
        self.assertEqual((one.id, one.display_name), ("beta", "beta"))
        self.assertIsNotNone(one.created_at.tzinfo)
        with self.assertRaises(anthropic.NotFoundError):
            await inThread(client.models.retrieve, "nope")
        openaiModels = await inThread(server.client().models.list)
        self.assertEqual([m.object for m in openaiModels.data], ["model", "model"])


class ErrorTests(TestCase):
    """
    Failures in Anthropic's envelope, as the SDK's exception classes.
    """

    async def test_badRequests(self) -> None:
        """
        A missing C{max_tokens}, an image block and a server tool are 400
        C{invalid_request_error}s naming what is wrong; no model is called.
        """
        server = await startServer(self)
        client = _client(server)
        cases: list[tuple[dict[str, Any], str]] = [
            ({"messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
            (
                {
                    "max_tokens": 5,
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {
                                    "type": "image",
                                    "source": {
                                        "type": "base64",
                                        "media_type": "image/png",
                                        "data": "aGk=",
                                    },
                                }
                            ],
                        }
                    ],
                },
                '"image"',
            ),
            (
                {
                    "max_tokens": 5,
                    "messages": [{"role": "user", "content": "x"}],
                    "tools": [{"type": "web_search_20250305", "name": "web_search"}],
                },
                "web_search_20250305",
            ),
        ]
        for body, named in cases:
            with self.assertRaises(anthropic.BadRequestError) as caught:
                await inThread(
                    client.post, "/v1/messages", body={"model": "agent", **body}, cast_to=object
                )
            error: Any = caught.exception.body
            self.assertEqual(error["type"], "error")
            self.assertEqual(error["error"]["type"], "invalid_request_error")
            self.assertIn(named, error["error"]["message"])
        self.assertEqual(server.upstream.requests, [])

    async def test_notFoundAndAuth(self) -> None:
        """
        An unknown model is a C{NotFoundError}; without a valid key (sent
        as C{x-api-key}) an C{AuthenticationError} in Anthropic's
        envelope (on C{/v1/models} too), and with one the request runs.
        """
        server = await startServer(self, policy=HTTPPolicy(apiKeys=APIKeys.fromKeys(["k-1"])))
        server.upstream.script(Reply(content="in"))
        with self.assertRaises(anthropic.AuthenticationError) as caught:
            await _create(server)
        body: Any = caught.exception.body
        self.assertEqual(body["error"]["type"], "authentication_error")
        good = _client(server, api_key="k-1")
        with self.assertRaises(anthropic.NotFoundError) as missing:
            await inThread(
                good.messages.create,
                model="nope",
                max_tokens=5,
                messages=[{"role": "user", "content": "x"}],
            )
        self.assertEqual(cast_body(missing.exception)["error"]["type"], "not_found_error")
        with self.assertRaises(anthropic.AuthenticationError) as unlisted:
            await inThread(_client(server).models.list)
        # Off the /v1/messages paths, the anthropic-version header picks the envelope.
        self.assertEqual(cast_body(unlisted.exception)["error"]["type"], "authentication_error")
        message = await inThread(
            good.messages.create,
            model="agent",
            max_tokens=5,
            messages=[{"role": "user", "content": "x"}],
        )
        self.assertEqual(message.content[0].text, "in")

    async def test_overloaded(self) -> None:
        """
        A full queue is a 529 C{overloaded_error} (the SDK's
        C{OverloadedError}) with C{retry-after}.
        """
        server = await startServer(self, concurrency=1, maxQueue=0)
        server.upstream.script(Reply(content="slow", hold=True))
        first = _create(server)
        await server.upstream.waitForRequests(1)
        with self.assertRaises(anthropic.InternalServerError) as caught:
            await _create(server)
        self.assertIsInstance(caught.exception, anthropic.OverloadedError)
        self.assertEqual(caught.exception.status_code, 529)
        self.assertEqual(cast_body(caught.exception)["error"]["type"], "overloaded_error")
        self.assertGreaterEqual(int(caught.exception.response.headers["retry-after"]), 1)
        server.upstream.release()
        await first

    async def test_upstreamFailures(self) -> None:
        """
        The model's rate limit reaches the client as a C{RateLimitError};
        an upstream failure as an C{InternalServerError} (C{api_error}).
        """
        server = await startServer(self)
        server.upstream.script(*[Reply(status=429)] * 4)
        with self.assertRaises(anthropic.RateLimitError) as limited:
            await _create(server)
        self.assertEqual(cast_body(limited.exception)["error"]["type"], "rate_limit_error")
        server.upstream.script(*[Reply(status=500)] * 4)
        with self.assertRaises(anthropic.InternalServerError) as failed:
            await _create(server)
        self.assertEqual(cast_body(failed.exception)["error"]["type"], "api_error")

    async def test_errorMidStream(self) -> None:
        """
        A failure after the stream began ends it with an C{error} event in
        Anthropic's envelope, which the SDK raises.
        """
        server = await startServer(self, streamHeadGrace=0.0)
        server.upstream.script(Reply(content=["a", "b", "c"], cutAfter=2), *[Reply(status=500)] * 4)

        def run() -> None:
            with _client(server).messages.stream(
                model="agent", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            ) as stream:
                stream.get_final_message()

        with self.assertRaises(anthropic.APIStatusError) as caught:
            await inThread(run)
        self.assertIn(
            cast_body(caught.exception)["error"]["type"], {"api_error", "overloaded_error"}
        )


class PingTests(TestCase):
    """
    C{ping} while the stream is otherwise silent.
    """

    async def test_pingWhileSilent(self) -> None:
        """
        With a short ping interval, a slow model's stream carries C{ping}
        events between its blocks' deltas, and is still well formed.
        """

        def mounts(runtime: Any, pool: Any, reactor: Any) -> list[Mount]:
            headend = AnthropicHeadend(
                runtime.registry, runtime.runner, pool, reactor, pingInterval=0.05
            )
            return [Mount(b"/v1/messages", headend.app, ANTHROPIC_ERRORS, isAnthropicClient)]

        server = await startServer(self, streamHeadGrace=0.0, mounts=mounts)
        server.upstream.script(Reply(content=["a ", "b ", "c"], interval=0.3))
        events = await _events(
            server,
            {
                "model": "agent",
                "max_tokens": 5,
                "stream": True,
                "messages": [{"role": "user", "content": "x"}],
            },
        )
        _assertWellFormed(self, events)
        self.assertIn("ping", [name for name, _ in events])


def cast_body(error: anthropic.APIStatusError) -> Any:
    """
    The parsed error body of an SDK exception.
    """
    return error.body
