"""
The fake upstream of L{ai_agent.testing} held to the real APIs: the official
C{openai} and C{anthropic} SDKs, unmodified, are pointed at a running
L{FakeUpstream} and must parse what it sends.

The providers are tested against the fake, so a fake that drifts from the
real APIs would let a provider drift with it.  Each kind of answer is
checked twice:

  - through the SDK's client: its own types, its stream accumulators (tool
    call arguments, C{input_json_delta}, thinking signatures) and its
    exception classes;
  - by validating the raw JSON of the body or of each SSE event against
    the SDK's types with pydantic, where a missing or mistyped field fails
    and a field the SDK does not know is reported (the SDKs' own parsing
    accepts both silently).  The only unknown field allowed is the
    C{reasoning_content} the fake sends on purpose in Chat Completions, as
    DeepSeek, vLLM and others do.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Iterator, get_args

import anthropic
import httpx
import openai
import pydantic
from anthropic.types import (
    Message,
    RawMessageStreamEvent,
    TextBlock,
    ThinkingBlock,
    ToolUseBlock,
)
from anthropic.types.shared import ErrorResponse
from openai.types import CompletionUsage, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.shared import ErrorObject
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from ai_agent.testing import Reply, RunningFakeUpstream, startFakeUpstream
from tests._harness import inThread

#: The SDK's stream event union, told to pick its member by C{type} (so a
#: validation error names the one member that should have matched).
STREAM_EVENT = Annotated[get_args(RawMessageStreamEvent)[0], pydantic.Field(discriminator="type")]

#: The unknown field the fake adds to Chat Completions on purpose.
REASONING_CONTENT = "reasoning_content"

WEATHER = ("get_weather", {"city": "Paris", "unit": "celsius"})
TIME = ("get_time", {"zone": "Europe/Paris"})


def _validate(kind: Any, data: Any) -> tuple[Any, list[str]]:
    """
    Validate C{data} as the SDK type C{kind}; return the value and the
    dotted paths of the fields the type does not declare.
    """
    value = pydantic.TypeAdapter(kind).validate_python(data)
    return value, sorted(_unknownFields(value))


def _unknownFields(value: Any, path: str = "") -> Iterator[str]:
    if isinstance(value, pydantic.BaseModel):
        for name in value.model_extra or {}:
            yield path + name
        for name in type(value).model_fields:
            yield from _unknownFields(getattr(value, name), f"{path}{name}.")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _unknownFields(item, f"{path}{index}.")


def _events(body: str) -> list[tuple[str | None, str]]:
    """
    The (event name, data) pairs of an SSE body.
    """
    events = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        name = None
        data = []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[len("event:") :].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:") :].removeprefix(" "))
        if data:
            events.append((name, "\n".join(data)))
    return events


class _FakeTestCase(TestCase):
    """
    A running fake upstream and clients for it.
    """

    async def setUp(self) -> None:
        self.running: RunningFakeUpstream = await startFakeUpstream(reactor)
        self.addCleanup(self.running.stop)
        self.origin = f"http://127.0.0.1:{self.running.port}"

    def script(self, *replies: Reply) -> None:
        self.running.upstream.script(*replies)

    def raw(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
        """
        POST C{body} to the fake, blocking (call in a thread).
        """
        return httpx.post(self.origin + path, json=body, headers=headers, timeout=20)


class OpenAISDKTests(_FakeTestCase):
    """
    The C{openai} SDK parses the fake's Chat Completions answers.
    """

    async def setUp(self) -> None:
        await super().setUp()
        self.client = openai.OpenAI(
            base_url=self.running.baseUrl, api_key="fake-key", max_retries=0, timeout=20
        )
        self.addCleanup(self.client.close)

    def create(self, **extra: Any) -> Any:
        return self.client.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "hello there"}], **extra
        )

    def rawChunks(self, **extra: Any) -> list[dict[str, Any]]:
        """
        The data of each event of a raw streamed answer, checking it ends
        with C{[DONE]}.
        """
        response = self.raw(
            "/v1/chat/completions",
            {
                "model": "fake-model",
                "messages": [{"role": "user", "content": "hello there"}],
                "stream": True,
                **extra,
            },
            {"Authorization": "Bearer fake-key"},
        )
        assert response.status_code == 200, response.text
        events = _events(response.text)
        assert events[-1] == (None, "[DONE]"), events[-1]
        return [json.loads(data) for _, data in events[:-1]]

    async def test_models(self) -> None:
        """
        The model list parses into the SDK's C{Model}s, raw entries with no
        unknown field.
        """
        models = await inThread(lambda: list(self.client.models.list()))
        self.assertEqual([(m.id, m.object) for m in models], [("fake-model", "model")])
        self.assertIsInstance(models[0], Model)
        listing = await inThread(httpx.get, self.running.baseUrl + "/models", timeout=20)
        self.assertEqual(listing.json()["object"], "list")
        for entry in listing.json()["data"]:
            self.assertEqual(_validate(Model, entry)[1], [])

    async def test_completion(self) -> None:
        """
        A plain answer parses into C{ChatCompletion} with its content,
        reasoning, finish reason and usage; the raw body validates with no
        unknown field but C{reasoning_content}.
        """
        reply = Reply(content="Paris is big.", reasoning="Think.", usage=(12, 3))
        self.script(reply)
        response = await inThread(
            self.client.chat.completions.with_raw_response.create,
            model="fake-model",
            messages=[{"role": "user", "content": "hello there"}],
        )
        result = response.parse()
        self.assertIsInstance(result, ChatCompletion)
        choice = result.choices[0]
        self.assertEqual(
            (choice.message.role, choice.message.content, choice.finish_reason),
            ("assistant", "Paris is big.", "stop"),
        )
        self.assertEqual(choice.message.model_extra, {REASONING_CONTENT: "Think."})
        self.assertEqual(
            result.usage, CompletionUsage(prompt_tokens=12, completion_tokens=3, total_tokens=15)
        )
        _, unknown = _validate(ChatCompletion, response.http_response.json())
        self.assertEqual(unknown, [f"choices.0.message.{REASONING_CONTENT}"])

    async def test_stream(self) -> None:
        """
        A streamed answer arrives as C{ChatCompletionChunk}s: a role chunk,
        reasoning then content deltas, a finish reason, and with
        C{include_usage} a last chunk with no choices and the usage; every
        raw event validates.
        """
        reply = Reply(content=["Hel", "lo"], reasoning=["Hm", "m."], usage=(5, 2))
        self.script(reply, reply)
        chunks = await inThread(
            lambda: list(self.create(stream=True, stream_options={"include_usage": True}))
        )
        for chunk in chunks:
            self.assertIsInstance(chunk, ChatCompletionChunk)
        deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
        self.assertEqual(deltas[0].role, "assistant")
        self.assertEqual("".join(d.content or "" for d in deltas), "Hello")
        self.assertEqual(
            "".join((d.model_extra or {}).get(REASONING_CONTENT, "") for d in deltas), "Hmm."
        )
        reasoningAt = [
            i for i, d in enumerate(deltas) if (d.model_extra or {}).get(REASONING_CONTENT)
        ]
        contentAt = [i for i, d in enumerate(deltas) if d.content]
        self.assertLess(max(reasoningAt), min(contentAt))
        self.assertEqual(
            [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1], "stop"
        )
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(
            chunks[-1].usage,
            CompletionUsage(prompt_tokens=5, completion_tokens=2, total_tokens=7),
        )
        raw = await inThread(self.rawChunks, stream_options={"include_usage": True})
        unknown = set()
        for data in raw:
            _, fields = _validate(ChatCompletionChunk, data)
            unknown.update(fields)
        self.assertEqual(unknown, {f"choices.0.delta.{REASONING_CONTENT}"})

    async def test_toolCalls(self) -> None:
        """
        Tool calls parse as C{tool_calls} with ids and JSON arguments,
        finish reason C{tool_calls}, whether streamed (accumulated by the
        SDK's stream helper from the argument pieces) or not; every raw
        chunk validates.
        """
        reply = Reply(toolCalls=[WEATHER, TIME])
        self.script(reply, reply, reply)
        expected = [(name, arguments) for name, arguments in (WEATHER, TIME)]

        result = await inThread(self.create)
        message = result.choices[0].message
        self.assertEqual(result.choices[0].finish_reason, "tool_calls")
        self.assertIsNone(message.content)
        self.assertEqual(
            [
                (c.type, c.function.name, json.loads(c.function.arguments))
                for c in message.tool_calls
            ],
            [("function", name, arguments) for name, arguments in expected],
        )
        self.assertEqual(len({c.id for c in message.tool_calls}), 2)

        def streamed() -> ChatCompletion:
            with self.client.chat.completions.stream(
                model="fake-model", messages=[{"role": "user", "content": "hi"}]
            ) as stream:
                return stream.get_final_completion()

        final = await inThread(streamed)
        calls = final.choices[0].message.tool_calls
        self.assertEqual(final.choices[0].finish_reason, "tool_calls")
        self.assertEqual(
            [(c.function.name, json.loads(c.function.arguments)) for c in calls], expected
        )
        self.assertTrue(all(c.id for c in calls))

        raw = await inThread(self.rawChunks)
        pieces = [
            call["function"].get("arguments", "")
            for data in raw
            for call in data["choices"][0]["delta"].get("tool_calls", [])
        ]
        self.assertGreater(len(pieces), 2)
        for data in raw:
            self.assertEqual(_validate(ChatCompletionChunk, data)[1], [])

    async def test_errors(self) -> None:
        """
        Error statuses raise the SDK's exception class for the status,
        carrying the envelope's message, type, code and param as the SDK
        reads them; the raw envelope validates as the SDK's C{ErrorObject}.
        """
        cases = [
            (400, openai.BadRequestError),
            (401, openai.AuthenticationError),
            (403, openai.PermissionDeniedError),
            (404, openai.NotFoundError),
            (429, openai.RateLimitError),
            (500, openai.InternalServerError),
            (503, openai.InternalServerError),
        ]
        for status, kind in cases:
            self.script(Reply(status=status), Reply(status=status))
            with self.assertRaises(kind) as raised:
                await inThread(self.create)
            error = raised.exception
            raw = await inThread(
                self.raw,
                "/v1/chat/completions",
                {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]},
                {},
            )
            self.assertEqual(raw.status_code, status)
            envelope, unknown = _validate(ErrorObject, raw.json()["error"])
            self.assertEqual(unknown, [])
            self.assertEqual(
                (error.status_code, error.type, error.code, error.param),
                (status, envelope.type, envelope.code, envelope.param),
            )
            self.assertTrue(envelope.type)
            self.assertIn(f"fake upstream error {status}", error.message)
        self.assertEqual(error.type, "server_error")


class AnthropicSDKTests(_FakeTestCase):
    """
    The C{anthropic} SDK parses the fake's Messages answers.
    """

    async def setUp(self) -> None:
        await super().setUp()
        self.client = anthropic.Anthropic(
            base_url=self.origin, api_key="fake-key", max_retries=0, timeout=20
        )
        self.addCleanup(self.client.close)

    def arguments(self, **extra: Any) -> dict[str, Any]:
        return {
            "model": "claude-fake",
            "max_tokens": 2048,
            "messages": [{"role": "user", "content": "hello there"}],
            **extra,
        }

    def rawEvents(self, **extra: Any) -> list[tuple[str | None, dict[str, Any]]]:
        response = self.raw(
            "/v1/messages",
            {**self.arguments(**extra), "stream": True},
            {"x-api-key": "fake-key", "anthropic-version": "2023-06-01"},
        )
        assert response.status_code == 200, response.text
        return [(name, json.loads(data)) for name, data in _events(response.text)]

    def checkRawStream(self, events: list[tuple[str | None, dict[str, Any]]]) -> list[str]:
        """
        Each raw event is named after its type and validates as the SDK's
        C{RawMessageStreamEvent} (C{ping}, which the SDK skips, aside);
        return the types in order.
        """
        types = []
        for name, data in events:
            self.assertEqual(name, data["type"])
            types.append(data["type"])
            if data["type"] == "ping":
                self.assertEqual(data, {"type": "ping"})
                continue
            _, unknown = _validate(STREAM_EVENT, data)
            self.assertEqual(unknown, [], data)
        return types

    async def test_message(self) -> None:
        """
        A plain answer parses into C{Message}: a signed thinking block, a
        text block, stop reason C{end_turn} and the usage; the raw body
        validates with no unknown field.
        """
        self.script(Reply(content="Bonjour.", reasoning="Let me think.", usage=(10, 4)))
        response = await inThread(
            self.client.messages.with_raw_response.create,
            **self.arguments(thinking={"type": "enabled", "budget_tokens": 1024}),
        )
        message = response.parse()
        self.assertIsInstance(message, Message)
        thinking, text = message.content
        self.assertIsInstance(thinking, ThinkingBlock)
        self.assertEqual(thinking.thinking, "Let me think.")
        self.assertTrue(thinking.signature)
        self.assertIsInstance(text, TextBlock)
        self.assertEqual(text.text, "Bonjour.")
        self.assertEqual((message.role, message.stop_reason), ("assistant", "end_turn"))
        self.assertEqual((message.usage.input_tokens, message.usage.output_tokens), (10, 4))
        self.assertEqual(_validate(Message, response.http_response.json())[1], [])

    async def test_stream(self) -> None:
        """
        A streamed answer goes through the SDK's C{MessageStream}: thinking
        deltas then a signature, text deltas, and a final message with both
        blocks, stop reason and usage; every raw event validates, in the
        order the API sends them.
        """
        reply = Reply(content=["Bon", "jour."], reasoning=["Let me ", "think."], usage=(10, 4))
        self.script(reply, reply)

        def streamed() -> tuple[list[str], Any]:
            with self.client.messages.stream(
                **self.arguments(thinking={"type": "enabled", "budget_tokens": 1024})
            ) as stream:
                kinds = [event.type for event in stream]
                return kinds, stream.get_final_message()

        kinds, final = await inThread(streamed)
        for kind in ("thinking", "signature", "text", "message_stop"):
            self.assertIn(kind, kinds)
        self.assertLess(kinds.index("signature"), kinds.index("text"))
        thinking, text = final.content
        self.assertEqual((thinking.type, thinking.thinking), ("thinking", "Let me think."))
        self.assertTrue(thinking.signature)
        self.assertEqual((text.type, text.text), ("text", "Bonjour."))
        self.assertEqual(final.stop_reason, "end_turn")
        self.assertEqual((final.usage.input_tokens, final.usage.output_tokens), (10, 4))

        events = await inThread(self.rawEvents, thinking={"type": "enabled", "budget_tokens": 1024})
        types = self.checkRawStream(events)
        self.assertEqual(types[0], "message_start")
        self.assertEqual(types[-2:], ["message_delta", "message_stop"])

    async def test_toolUse(self) -> None:
        """
        Tool calls parse as C{tool_use} blocks with their input, stop reason
        C{tool_use}, whether streamed (the SDK assembling the input from the
        C{input_json_delta} pieces) or not; every raw event validates.
        """
        reply = Reply(toolCalls=[WEATHER, TIME])
        self.script(reply, reply, reply)
        expected = [(name, arguments) for name, arguments in (WEATHER, TIME)]

        message = await inThread(self.client.messages.create, **self.arguments())
        self.assertEqual(message.stop_reason, "tool_use")
        for block in message.content:
            self.assertIsInstance(block, ToolUseBlock)
        self.assertEqual([(b.name, b.input) for b in message.content], expected)
        self.assertTrue(all(b.id.startswith("toolu_") for b in message.content))

        def streamed() -> tuple[list[str], Any]:
            with self.client.messages.stream(**self.arguments()) as stream:
                partial = [event.partial_json for event in stream if event.type == "input_json"]
                return partial, stream.get_final_message()

        partial, final = await inThread(streamed)
        self.assertGreater(len(partial), 2)
        self.assertEqual(final.stop_reason, "tool_use")
        self.assertEqual(
            [(b.type, b.name, b.input) for b in final.content],
            [("tool_use", name, arguments) for name, arguments in expected],
        )

        self.checkRawStream(await inThread(self.rawEvents))

    async def test_errors(self) -> None:
        """
        Error statuses raise the SDK's exception class for the status, with
        the error's type and message in its body; the raw body validates as
        the SDK's C{ErrorResponse} (C{request_too_large}, a documented type
        the SDK's union lacks, aside).
        """
        cases = [
            (400, anthropic.BadRequestError, "invalid_request_error"),
            (401, anthropic.AuthenticationError, "authentication_error"),
            (402, anthropic.PaymentRequiredError, "billing_error"),
            (403, anthropic.PermissionDeniedError, "permission_error"),
            (404, anthropic.NotFoundError, "not_found_error"),
            (413, anthropic.ContentTooLargeError, "request_too_large"),
            (429, anthropic.RateLimitError, "rate_limit_error"),
            (500, anthropic.InternalServerError, "api_error"),
            (504, anthropic.GatewayTimeoutError, "timeout_error"),
            (529, anthropic.OverloadedError, "overloaded_error"),
        ]
        for status, kind, errorType in cases:
            self.script(Reply(status=status), Reply(status=status))
            with self.assertRaises(kind) as raised:
                await inThread(self.client.messages.create, **self.arguments())
            error = raised.exception
            self.assertEqual(error.status_code, status)
            self.assertEqual(error.body["type"], "error")
            self.assertEqual(error.body["error"]["type"], errorType)
            self.assertIn(f"fake upstream error {status}", error.message)
            raw = await inThread(
                self.raw,
                "/v1/messages",
                self.arguments(),
                {"x-api-key": "fake-key", "anthropic-version": "2023-06-01"},
            )
            self.assertEqual(raw.status_code, status)
            if errorType != "request_too_large":
                self.assertEqual(_validate(ErrorResponse, raw.json())[1], [])
