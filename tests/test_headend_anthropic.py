"""
The Anthropic headend without a network: the request parser's mapping into
the neutral run request, the encoder's block and event rules, the error
format, and the token estimate.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ai_agent.errors import AgentError, ErrorKind, overloaded
from ai_agent.events import ClientToolCall, Finished, FinishReason, ToolFinished, ToolStarted, Usage
from ai_agent.headends.anthropic import (
    ANTHROPIC_ERRORS,
    MessagesEncoder,
    _dumps,
    _dumpsAny,
    estimateTokens,
    parseCountTokensRequest,
    parseMessagesRequest,
    signature,
)
from ai_agent.providers import ChatMessage, ToolCall, ToolSpec
from ai_agent.request import OutputFormat, ToolChoice


def _parse(**body: Any) -> Any:
    body.setdefault("model", "agent")
    body.setdefault("max_tokens", 10)
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return parseMessagesRequest(json.dumps(body).encode())


def _refused(**body: Any) -> AgentError:
    try:
        _parse(**body)
    except AgentError as error:
        return error
    raise AssertionError(f"accepted {body!r}")


def _events(frames: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for chunk in frames.decode("utf-8").split("\n\n"):
        if chunk:
            name, data = chunk.split("\n")
            events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events


class ParserTests(SynchronousTestCase):
    """
    Anthropic's request as the neutral run request.
    """

    def test_conversation(self) -> None:
        """
        Text blocks join; C{tool_use} blocks become the assistant's tool
        calls (input as JSON text); C{tool_result} blocks become tool
        messages before the user's text (C{is_error} marked); echoed
        thinking blocks are dropped; system messages stay system messages.
        """
        request = _parse(
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "redacted_thinking", "data": "x"},
                        {"type": "text", "text": "calling"},
                        {"type": "tool_use", "id": "t1", "name": "f", "input": {"x": 1}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": "boom",
                            "is_error": True,
                        },
                        {"type": "text", "text": "and?"},
                    ],
                },
                {"role": "system", "content": [{"type": "text", "text": "note"}]},
            ]
        )
        self.assertEqual(
            request.messages,
            (
                ChatMessage("user", "a\nb"),
                ChatMessage("assistant", "calling", toolCalls=(ToolCall("t1", "f", '{"x": 1}'),)),
                ChatMessage("tool", "Error: boom", toolCallId="t1"),
                ChatMessage("user", "and?"),
                ChatMessage("system", "note"),
            ),
        )

    def test_settings(self) -> None:
        """
        C{system} becomes the run's instructions; C{max_tokens},
        C{stop_sequences}, C{temperature}, C{top_p} its sampling; tools map
        C{input_schema} to parameters; C{tool_choice} C{any} is
        C{required} and C{disable_parallel_tool_use} turns parallel calls
        off.
        """
        schema = {"type": "object", "properties": {"q": {"type": "string"}}}
        request = _parse(
            system="Be kind.",
            max_tokens=99,
            stop_sequences=["END"],
            temperature=0.2,
            top_p=0.5,
            tools=[{"name": "search", "description": "Search", "input_schema": schema}],
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
            stream=True,
        )
        self.assertEqual(request.system, ("Be kind.",))
        self.assertEqual((request.sampling.maxTokens, request.sampling.stop), (99, ("END",)))
        self.assertEqual((request.sampling.temperature, request.sampling.topP), (0.2, 0.5))
        self.assertEqual(request.tools[0].spec, ToolSpec("search", "Search", schema))
        self.assertEqual(request.tools[0].param, "tools[0].name")
        self.assertEqual(request.toolChoice, ToolChoice(ToolChoice.REQUIRED))
        self.assertIs(request.parallelToolCalls, False)
        self.assertTrue(request.stream)

    def test_refusals(self) -> None:
        """
        Malformed requests are 400 C{invalid_request_error}s naming the
        field: no C{max_tokens}, a document block, a server tool, an
        unknown tool choice, a C{tool} choice not among the tools, an
        unknown role.
        """
        cases = [
            ({"max_tokens": None}, "max_tokens"),
            (
                {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
                "messages[0].content[0]",
            ),
            ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools[0].type"),
            ({"tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
            ({"tool_choice": {"type": "tool", "name": "x"}}, "tool_choice.name"),
            ({"tool_choice": {"type": "tool", "name": ["x"]}}, "tool_choice.name"),
            ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ]
        for body, param in cases:
            error = _refused(**body)
            self.assertEqual(
                (error.status, error.kind, error.param), (400, ErrorKind.INVALID_REQUEST, param)
            )
            self.assertIn(param.split("[")[0], error.message)

    def test_outputFormat(self) -> None:
        """
        C{output_config.format} and the older top-level C{output_format}
        (C{json_schema} with a C{schema}) both become the run's neutral
        output format with that schema, as the other APIs' formats do;
        C{output_config.effort} alone sets none, and neither field means a
        text answer.
        """
        schema = {
            "type": "object",
            "properties": {"title": {"type": "string"}},
            "required": ["title"],
            "additionalProperties": False,
        }
        spec = {"type": "json_schema", "schema": schema}
        current = _parse(output_config={"format": spec, "effort": "low"})
        self.assertEqual(current.sampling.outputFormat, OutputFormat(schema))
        older = _parse(output_format=spec)
        self.assertEqual(older.sampling.outputFormat, OutputFormat(schema))
        self.assertIsNone(_parse(output_config={"effort": "high"}).sampling.outputFormat)
        self.assertIsNone(_parse().sampling.outputFormat)
        counted = parseCountTokensRequest(
            json.dumps(
                {"model": "a", "messages": [{"role": "user", "content": "x"}]}
                | {"output_format": spec}
            ).encode()
        )
        self.assertEqual(counted.sampling.outputFormat, OutputFormat(schema))

    def test_outputFormatRefusals(self) -> None:
        """
        A malformed output format is a 400 C{invalid_request_error} naming
        the field at fault: not an object, a type other than
        C{json_schema}, no schema or a schema that is not an object, a
        non-string C{effort}, and both the current and the older field.
        """
        spec = {"type": "json_schema", "schema": {"type": "object"}}
        cases = [
            ({"output_config": "json"}, "output_config"),
            ({"output_config": {"format": ["json_schema"]}}, "output_config.format"),
            ({"output_config": {"format": {"type": "json_object"}}}, "output_config.format.type"),
            ({"output_config": {"format": {"type": "json_schema"}}}, "output_config.format.schema"),
            (
                {"output_config": {"format": {"type": "json_schema", "schema": "{}"}}},
                "output_config.format.schema",
            ),
            ({"output_config": {"effort": 3}}, "output_config.effort"),
            ({"output_format": {"type": "text"}}, "output_format.type"),
            ({"output_format": {"type": "json_schema", "schema": [1]}}, "output_format.schema"),
            ({"output_config": {"format": spec}, "output_format": spec}, "output_format"),
        ]
        for body, param in cases:
            error = _refused(**body)
            self.assertEqual(
                (error.status, error.kind, error.param),
                (400, ErrorKind.INVALID_REQUEST, param),
                body,
            )
            self.assertTrue(error.message.startswith(param + ":"), error.message)

    def test_thinking(self) -> None:
        """
        C{thinking} C{enabled} (with a budget of at least 1024 tokens, as
        Anthropic requires) and C{adaptive} ask for thinking blocks;
        C{disabled} and no C{thinking} do not; anything else is a 400
        naming the field.
        """
        self.assertFalse(_parse().thinking)
        self.assertFalse(_parse(thinking={"type": "disabled"}).thinking)
        self.assertTrue(_parse(thinking={"type": "adaptive"}).thinking)
        self.assertTrue(_parse(thinking={"type": "enabled", "budget_tokens": 1024}).thinking)
        cases = [
            ({"thinking": True}, "thinking"),
            ({"thinking": {"type": "on"}}, "thinking.type"),
            ({"thinking": {}}, "thinking.type"),
            ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
            ({"thinking": {"type": "enabled", "budget_tokens": 1023}}, "thinking.budget_tokens"),
            ({"thinking": {"type": "enabled", "budget_tokens": "2000"}}, "thinking.budget_tokens"),
        ]
        for body, param in cases:
            error = _refused(**body)
            self.assertEqual(
                (error.status, error.kind, error.param),
                (400, ErrorKind.INVALID_REQUEST, param),
                body,
            )

    def test_countTokensNeedsNoMaxTokens(self) -> None:
        """
        C{count_tokens} bodies have no C{max_tokens}.
        """
        request = parseCountTokensRequest(
            b'{"model": "a", "messages": [{"role": "user", "content": "x"}]}'
        )
        self.assertIsNone(request.sampling.maxTokens)


class EncoderTests(SynchronousTestCase):
    """
    The run's events as Anthropic's stream and message.
    """

    def test_blocks(self) -> None:
        """
        Reasoning and progress share a thinking block ended by its
        signature; text follows in its own block; a client tool call is a
        C{tool_use} block started with an empty input and filled by one
        C{input_json_delta}; indices are contiguous, each block stopped
        before the next; the finish is C{message_delta} with the stop
        reason and cumulative usage, then C{message_stop}.
        """
        encoder = MessagesEncoder("msg_1", "agent", inputEstimate=50)
        frames = encoder.open()
        frames += encoder.reasoning("Thinking") or b""
        frames += encoder.progress(ToolStarted("calc__add", '{"a":1}')) or b""
        frames += encoder.progress(ToolFinished("calc__add", "2")) or b""
        frames += encoder.content("Two.") or b""
        frames += encoder.toolCall(ClientToolCall(0, "call_1", "get_weather", '{"city":"X"}'))
        encoder.usage(Usage(100, 20, cacheReadTokens=30))
        frames += encoder.finish(
            Finished(FinishReason.TOOL_CALLS, Usage(100, 20, cacheReadTokens=30))
        )
        events = _events(frames)
        names = [name for name, _ in events]
        self.assertEqual(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ],
        )
        start = events[0][1]["message"]
        self.assertEqual(start["usage"]["input_tokens"], 50)
        thinking = "".join(d["delta"].get("thinking", "") for _, d in events[2:5])
        self.assertEqual(thinking, 'Thinking\ncalling calc__add {"a": 1}\ncalc__add → 2\n')
        self.assertEqual(
            events[5][1]["delta"], {"type": "signature_delta", "signature": signature(thinking)}
        )
        self.assertEqual(
            [d["index"] for n, d in events if n.startswith("content_block")],
            [0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2],
        )
        self.assertEqual(
            events[10][1]["content_block"],
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}},
        )
        self.assertEqual(
            events[11][1]["delta"], {"type": "input_json_delta", "partial_json": '{"city":"X"}'}
        )
        delta = events[13][1]
        self.assertEqual(delta["delta"], {"stop_reason": "tool_use", "stop_sequence": None})
        self.assertEqual(
            delta["usage"],
            {
                "input_tokens": 70,
                "cache_read_input_tokens": 30,
                "cache_creation_input_tokens": 0,
                "output_tokens": 20,
            },
        )

    def test_realInputAtStart(self) -> None:
        """
        When the run reported usage before the stream began (the agent ran
        tools first), C{message_start} has that count, not the estimate.
        """
        encoder = MessagesEncoder("msg_1", "agent", inputEstimate=5)
        encoder.usage(Usage(321, 4))
        self.assertEqual(_events(encoder.open())[0][1]["message"]["usage"]["input_tokens"], 321)

    def test_body(self) -> None:
        """
        The whole answer is a C{message} with the same blocks, the tool
        call's input as an object.
        """
        encoder = MessagesEncoder("msg_2", "agent")
        encoder.reasoning("hm")
        encoder.content("Hello")
        encoder.toolCall(ClientToolCall(0, "c1", "f", '{"a": [1]}'))
        body = json.loads(encoder.body(Finished(FinishReason.MAX_TOKENS, Usage(3, 4))))
        self.assertEqual(
            body["content"],
            [
                {"type": "thinking", "thinking": "hm", "signature": signature("hm")},
                {"type": "text", "text": "Hello"},
                {"type": "tool_use", "id": "c1", "name": "f", "input": {"a": [1]}},
            ],
        )
        self.assertEqual(
            (body["id"], body["type"], body["stop_reason"]), ("msg_2", "message", "max_tokens")
        )
        self.assertEqual((body["usage"]["input_tokens"], body["usage"]["output_tokens"]), (3, 4))

    def test_withoutThinking(self) -> None:
        """
        When the request did not enable thinking, reasoning and progress
        make no events and no blocks: the answer is block 0, streamed and
        whole, so C{content[0].text} is the answer; text on both sides of
        the agent's progress stays one block.
        """
        streamed = MessagesEncoder("msg_4", "agent", thinking=False)
        frames = streamed.open()
        self.assertIsNone(streamed.reasoning("Thinking"))
        self.assertIsNone(streamed.progress(ToolStarted("calc__add", "{}")))
        frames += streamed.content("Fo") or b""
        self.assertIsNone(streamed.progress(ToolFinished("calc__add", "2")))
        frames += streamed.content("ur.") or b""
        frames += streamed.finish(Finished(FinishReason.END, Usage(3, 4)))
        events = _events(frames)
        starts = [d["content_block"] for n, d in events if n == "content_block_start"]
        self.assertEqual(starts, [{"type": "text", "text": ""}])
        self.assertEqual({d["index"] for n, d in events if n.startswith("content_block")}, {0})
        whole = MessagesEncoder("msg_5", "agent", frames=False, thinking=False)
        whole.reasoning("hm")
        whole.progress(ToolStarted("calc__add", "{}"))
        whole.content("Hello")
        body = json.loads(whole.body(Finished(FinishReason.END, Usage(3, 4))))
        self.assertEqual(body["content"], [{"type": "text", "text": "Hello"}])

    def test_errorAndPing(self) -> None:
        """
        A failure after the start is an C{error} event in Anthropic's
        envelope; the keep-alive frame is a C{ping} event.
        """
        encoder = MessagesEncoder("msg_3", "agent")
        [(name, data)] = _events(encoder.error(AgentError("upstream broke", 502)))
        self.assertEqual(
            (name, data),
            (
                "error",
                {"type": "error", "error": {"type": "api_error", "message": "upstream broke"}},
            ),
        )
        self.assertEqual(_events(encoder.keepAlive()), [("ping", {"type": "ping"})])


class ErrorFormatTests(SynchronousTestCase):
    """
    Neutral errors in Anthropic's envelope and statuses.
    """

    def test_kinds(self) -> None:
        """
        Each neutral kind has Anthropic's type; an overloaded server is a
        529.
        """
        cases = [
            (AgentError("x", 400, ErrorKind.INVALID_REQUEST), 400, "invalid_request_error"),
            (AgentError("x", 401, ErrorKind.AUTHENTICATION), 401, "authentication_error"),
            (AgentError("x", 403, ErrorKind.PERMISSION), 403, "permission_error"),
            (AgentError("x", 404, ErrorKind.NOT_FOUND), 404, "not_found_error"),
            (AgentError("x", 413, ErrorKind.REQUEST_TOO_LARGE), 413, "request_too_large"),
            (AgentError("x", 429, ErrorKind.RATE_LIMIT), 429, "rate_limit_error"),
            (AgentError("x", 504, ErrorKind.TIMEOUT), 504, "timeout_error"),
            (overloaded("full", 1), 529, "overloaded_error"),
            (AgentError("x", 502, ErrorKind.SERVER), 502, "api_error"),
        ]
        for error, status, kind in cases:
            self.assertEqual(ANTHROPIC_ERRORS.status(error), status)
            self.assertEqual(
                json.loads(ANTHROPIC_ERRORS.body(error)),
                {"type": "error", "error": {"type": kind, "message": error.message}},
            )


class EstimateTests(SynchronousTestCase):
    """
    The C{count_tokens} estimate.
    """

    def test_formula(self) -> None:
        """
        One token per four characters of the prompt, system text, messages
        and tools, plus four per message (the prompt counting as one).
        """
        request = parseCountTokensRequest(
            json.dumps(
                {
                    "model": "a",
                    "system": "12345678",
                    "messages": [{"role": "user", "content": "abcd"}],
                }
            ).encode()
        )
        self.assertEqual(estimateTokens("p" * 8, request), (8 + 8 + 4) // 4 + 2 * 4)
        tool = ToolSpec("t", "", {})
        self.assertEqual(estimateTokens("p" * 8, request, [tool]), -(-(20 + 1 + 2) // 4) + 2 * 4)


_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
_blockTypes = st.sampled_from(["text", "tool_use", "tool_result", "thinking", "image", None, 3])
_block = st.fixed_dictionaries(
    {"type": _blockTypes},
    optional={
        "text": _json,
        "id": _json,
        "name": _json,
        "input": _json,
        "tool_use_id": _json,
        "content": _json,
        "is_error": _json,
    },
)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", 1])},
    optional={"content": st.text(max_size=5) | st.lists(_block, max_size=3) | _json},
)
_body = st.fixed_dictionaries(
    {"model": st.just("a") | _json, "messages": st.lists(_message, max_size=3) | _json},
    optional={
        "max_tokens": st.integers(-2, 5) | _json,
        "system": _json | st.lists(_block, max_size=2),
        "tools": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["f", "g", "a b"]) | _json},
                optional={"type": _json, "input_schema": _json, "description": _json},
            ),
            max_size=3,
        )
        | _json,
        "tool_choice": st.fixed_dictionaries(
            {"type": st.sampled_from(["auto", "any", "tool", "none", "x"]) | _json},
            optional={"name": _json, "disable_parallel_tool_use": _json},
        )
        | _json,
        "temperature": _json,
        "top_p": _json,
        "top_k": _json,
        "stop_sequences": _json,
        "stream": _json,
        "metadata": _json,
        "thinking": st.fixed_dictionaries(
            {"type": st.sampled_from(["enabled", "adaptive", "disabled", "x"]) | _json},
            optional={"budget_tokens": st.integers(1000, 1100) | _json},
        )
        | _json,
        "output_config": st.fixed_dictionaries(
            {},
            optional={
                "format": st.fixed_dictionaries(
                    {"type": st.sampled_from(["json_schema", "text"]) | _json},
                    optional={"schema": _json},
                )
                | _json,
                "effort": _json,
            },
        )
        | _json,
        "output_format": st.fixed_dictionaries(
            {"type": st.just("json_schema") | _json}, optional={"schema": _json}
        )
        | _json,
    },
)


class ParserPropertyTests(SynchronousTestCase):
    """
    The parser on generated bodies.
    """

    @settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_body)
    def test_nearlyRightRequests(self, body: dict[str, Any]) -> None:
        """
        Bodies with the right fields holding anything parse or are a 400
        naming a field; nothing else is raised.
        """
        data = json.dumps(body).encode()
        for parse in (parseMessagesRequest, parseCountTokensRequest):
            try:
                parse(data)
            except AgentError as error:
                self.assertEqual((error.status, error.kind), (400, ErrorKind.INVALID_REQUEST))
                self.assertIsNotNone(error.param, error.message)


class EncoderFastPathTests(SynchronousTestCase):
    """
    L{MessagesEncoder}'s fast paths write what its plain ones do.
    """

    def test_deltaSameBytes(self) -> None:
        """
        A delta event written with orjson has the bytes of the same event
        written with C{json}, for any text (a lone surrogate included).
        """
        for text in ("pong", 'é "q" \\ \n\t\x00\x7f\u2028😀', "\ud800"):
            delta = {"type": "text_delta", "text": text}
            fast = MessagesEncoder("msg_1", "agent")._delta(delta)
            plain = b"event: content_block_delta\ndata: " + _dumps(
                {"type": "content_block_delta", "index": -1, "delta": delta}
            )
            self.assertEqual(fast, plain + b"\n\n")

    @given(
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(min_value=-(2**70), max_value=2**70)
            | st.floats()
            | st.text(st.characters() | st.just("\ud800")),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=3), inner, max_size=4)
            ),
            max_leaves=12,
        )
    )
    def test_anyValueSameBytes(self, value: Any) -> None:
        """
        Events and bodies (orjson unless the value holds a float) are
        written with the bytes C{json} gives them, for any value.
        """
        self.assertEqual(_dumpsAny(value), _dumps(value))

    def test_wholeAnswerMakesNoEvents(self) -> None:
        """
        An encoder for a whole answer makes no event, and writes the body of
        one that does, with and without a tool call (whose input may hold
        floats, and is written with C{json}).
        """
        for call in (None, ClientToolCall(0, "toolu_1", "f", '{"a":1e-7}')):
            bodies = []
            for frames in (True, False):
                encoder = MessagesEncoder("msg_1", "agent", frames=frames)
                made = [encoder.reasoning("thinking"), encoder.content("pong\ud800")]
                if call is not None:
                    made.append(encoder.toolCall(call))
                self.assertEqual([bool(m) for m in made], [frames] * len(made))
                bodies.append(encoder.body(Finished(FinishReason.END, Usage(3, 2))))
            self.assertEqual(bodies[0], bodies[1])
            if call is not None:
                self.assertIn(b'"input":{"a":1e-07}', bodies[0])
