"""
The Python half of the client matrix: the C{openai} SDK (3.x here, 1.x in
tox's C{openai1} environment) and C{langchain-openai}, unmodified, against a
live server in front of the real fake upstream; and what each sees of the
agent's reasoning under every C{--reasoning-field}.

C{langchain-openai} needs C{openai} 2.45 or newer, so its tests are skipped
(with the reason) where it is not installed, as in the C{openai1}
environment.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ai_agent.headends.openai import THINK, ChunkEncoder
from ai_agent.testing import Reply
from tests._harness import LiveServer, inThread, startServer

try:
    import langchain_openai
except ImportError:
    langchain_openai = None  # type: ignore[assignment]

OPENAI_MAJOR = int(openai.__version__.split(".")[0])

MODEL = "chat"

CHAT_AGENT = """\
---
description: The agent the Python clients talk to
models: fake/test-model
---
You are the chat agent.
"""


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def _server(testCase: TestCase, **kwargs: Any) -> LiveServer:
    return await startServer(testCase, {f"{MODEL}.ai": CHAT_AGENT}, **kwargs)


class OpenAISDKTests(TestCase):
    """
    The C{openai} SDK, sync and async, covers models, a plain completion, a
    stream with usage and typed errors, in whichever major version is
    installed.
    """

    async def test_models(self) -> None:
        """
        C{models.list} yields the agent as a model and C{retrieve} finds
        it.
        """
        server = await _server(self)
        client = server.client()
        models = await inThread(lambda: list(client.models.list()))
        self.assertEqual(
            [(m.id, m.object, m.owned_by) for m in models], [(MODEL, "model", "ai-agent")]
        )
        self.assertEqual((await inThread(client.models.retrieve, MODEL)).id, MODEL)

    async def test_completion(self) -> None:
        """
        A plain completion parses into the SDK's types with the answer,
        finish reason and usage.
        """
        server = await _server(self)
        server.upstream.script(Reply(content="Paris.", usage=(20, 2)))
        result = await inThread(
            server.client().chat.completions.create, model=MODEL, messages=_user("Capital?")
        )
        self.assertEqual(result.choices[0].message.content, "Paris.")
        self.assertEqual(result.choices[0].finish_reason, "stop")
        self.assertEqual((result.usage.prompt_tokens, result.usage.total_tokens), (20, 22))

    async def test_streamWithUsage(self) -> None:
        """
        A stream with C{include_usage} yields the text in pieces and a last
        chunk with empty C{choices} and the usage.
        """
        server = await _server(self)
        server.upstream.script(Reply(content=["Pa", "ris", "."], usage=(20, 3)))

        def consume() -> list[Any]:
            stream = server.client().chat.completions.create(
                model=MODEL,
                messages=_user("Capital?"),
                stream=True,
                stream_options={"include_usage": True},
            )
            return list(stream)

        chunks = await inThread(consume)
        self.assertEqual(
            "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), "Paris."
        )
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, 3)

    async def test_async(self) -> None:
        """
        C{AsyncOpenAI} (on its own event loop) completes and streams.
        """
        server = await _server(self)

        async def use() -> tuple[str, str]:
            async with openai.AsyncOpenAI(
                base_url=server.baseUrl, api_key="any-key", max_retries=0, timeout=20
            ) as client:
                done = await client.chat.completions.create(model=MODEL, messages=_user("one"))
                stream = await client.chat.completions.create(
                    model=MODEL, messages=_user("two"), stream=True
                )
                pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
                return done.choices[0].message.content or "", "".join(pieces)

        self.assertEqual(await inThread(asyncio.run, use()), ("echo: one", "echo: two"))

    async def test_errors(self) -> None:
        """
        An unknown model is C{NotFoundError} with the OpenAI error fields; a
        bad request is C{BadRequestError} naming the parameter.
        """
        server = await _server(self)
        client = server.client()
        with self.assertRaises(openai.NotFoundError) as missing:
            await inThread(client.chat.completions.create, model="nope", messages=_user("x"))
        self.assertEqual(
            (missing.exception.code, missing.exception.param), ("model_not_found", "model")
        )
        with self.assertRaises(openai.BadRequestError) as bad:
            await inThread(client.chat.completions.create, model=MODEL, messages=[])
        self.assertEqual(bad.exception.param, "messages")

    async def test_midStreamError(self) -> None:
        """
        A failure after streaming began is raised by the SDK while
        iterating, after the text that came before it.
        """
        server = await _server(self)
        server.upstream.script(Reply(content=["a", "b", "c"], cutAfter=2))
        received: list[str] = []

        def consume() -> None:
            stream = server.client().chat.completions.create(
                model=MODEL, messages=_user("x"), stream=True
            )
            for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")

        with self.assertRaises(openai.APIError):
            await inThread(consume)
        self.assertEqual("".join(received), "a")


class LangChainTests(TestCase):
    """
    C{langchain-openai}'s C{ChatOpenAI} invokes, streams with usage
    metadata (with C{stream_usage=True}, which a custom C{base_url} needs)
    and raises on errors.
    """

    if langchain_openai is None:
        skip = "langchain-openai is not installed (it needs openai 2.45 or newer)"

    def _chat(self, server: LiveServer, model: str = MODEL) -> Any:
        assert langchain_openai is not None
        return langchain_openai.ChatOpenAI(
            base_url=server.baseUrl,
            api_key="any-key",
            model=model,
            stream_usage=True,
            max_retries=0,
            timeout=20,
        )

    async def test_invoke(self) -> None:
        """
        C{invoke} returns the answer, its usage metadata and the model name.
        """
        server = await _server(self)
        server.upstream.script(Reply(content="Paris.", usage=(20, 2)))
        message = await inThread(self._chat(server).invoke, "Capital of France?")
        self.assertEqual(message.content, "Paris.")
        self.assertEqual(
            message.usage_metadata,
            {**message.usage_metadata, "input_tokens": 20, "output_tokens": 2, "total_tokens": 22},
        )
        self.assertEqual(message.response_metadata["model_name"], MODEL)

    async def test_structuredOutput(self) -> None:
        """
        C{with_structured_output(method="json_schema")} sends its schema as
        C{response_format}, which reaches the agent's model, and parses the
        JSON answer.
        """
        server = await _server(self)
        server.upstream.script(Reply(content='{"city": "Paris", "population": 2100000}'))
        schema = {
            "title": "City",
            "description": "A city and its population.",
            "type": "object",
            "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
            "required": ["city", "population"],
        }
        structured = self._chat(server).with_structured_output(schema, method="json_schema")
        answer = await inThread(structured.invoke, "Capital of France?")
        self.assertEqual(answer, {"city": "Paris", "population": 2100000})
        sent = server.upstream.requests[0].body["response_format"]
        self.assertEqual(sent["type"], "json_schema")
        self.assertEqual(sent["json_schema"]["schema"]["properties"], schema["properties"])

    async def test_streamUsage(self) -> None:
        """
        C{stream} yields the text in pieces, and the last chunk carries the
        usage metadata because C{stream_usage=True} asks for
        C{include_usage}.
        """
        server = await _server(self)
        server.upstream.script(Reply(content=["Pa", "ris", "."], usage=(20, 3)))

        def consume() -> list[Any]:
            return list(self._chat(server).stream("Capital of France?"))

        chunks = await inThread(consume)
        full = chunks[0]
        for chunk in chunks[1:]:
            full = full + chunk
        self.assertEqual(full.content, "Paris.")
        self.assertEqual(
            (full.usage_metadata["input_tokens"], full.usage_metadata["output_tokens"]), (20, 3)
        )
        sent = [r.body for r in server.upstream.requests]
        self.assertEqual(len(sent), 1)

    async def test_astream(self) -> None:
        """
        C{astream} (on its own event loop) yields the same text.
        """
        server = await _server(self)

        async def consume() -> str:
            return "".join([str(c.content) async for c in self._chat(server).astream("hi")])

        self.assertEqual(await inThread(asyncio.run, consume()), "echo: hi")

    async def test_error(self) -> None:
        """
        An unknown model raises the SDK's C{NotFoundError} through
        LangChain.
        """
        server = await _server(self)
        with self.assertRaises(openai.NotFoundError) as caught:
            await inThread(self._chat(server, "nope").invoke, "x")
        self.assertEqual(caught.exception.status_code, 404)

    async def test_reasoningNotExtracted(self) -> None:
        """
        LangChain's C{ChatOpenAI} reads no C{reasoning_content}, so by
        default the agent's progress never reaches its content; with
        C{--reasoning-field think} it arrives in the content, inside
        C{<think>} tags.
        """
        for field, expected in (
            ("reasoning_content", "42"),
            (THINK, "<think>\nLet me think\n</think>\n\n42"),
        ):
            server = await _server(self, reasoningField=field)
            server.upstream.script(Reply(content="42", reasoning=["Let me ", "think"]))
            message = await inThread(self._chat(server).invoke, "6 x 7?")
            self.assertEqual(message.content, expected, field)


REASONING = Reply(content=["4", "2"], reasoning=["Let me ", "think"])


class ReasoningFieldTests(TestCase):
    """
    C{--reasoning-field} decides where reasoning and progress go, streamed
    and not, as the C{openai} SDK sees it.
    """

    async def _both(self, field: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """
        The streamed deltas and the non-streamed message for one reasoning
        reply each, with C{field} as the headend's reasoning field.
        """
        server = await _server(self, reasoningField=field)
        server.upstream.script(REASONING, REASONING)
        client = server.client()

        def consume() -> list[dict[str, Any]]:
            stream = client.chat.completions.create(model=MODEL, messages=_user("x"), stream=True)
            return [c.choices[0].delta.model_dump(exclude_none=True) for c in stream if c.choices]

        deltas = await inThread(consume)
        done = await inThread(client.chat.completions.create, model=MODEL, messages=_user("x"))
        return deltas, done.choices[0].message.model_dump(exclude_none=True)

    async def test_reasoningContent(self) -> None:
        """
        The default, C{reasoning_content}: reasoning deltas apart from
        content, and a message field.
        """
        deltas, message = await self._both("reasoning_content")
        self.assertEqual("".join(d.get("reasoning_content", "") for d in deltas), "Let me think")
        self.assertEqual("".join(d.get("content") or "" for d in deltas), "42")
        self.assertEqual((message["content"], message["reasoning_content"]), ("42", "Let me think"))

    async def test_reasoning(self) -> None:
        """
        C{reasoning}: the same under the name vLLM, Ollama and OpenRouter
        use.
        """
        deltas, message = await self._both("reasoning")
        self.assertEqual("".join(d.get("reasoning", "") for d in deltas), "Let me think")
        self.assertNotIn("reasoning_content", json.dumps(deltas))
        self.assertEqual((message["content"], message["reasoning"]), ("42", "Let me think"))

    async def test_think(self) -> None:
        """
        C{think}: reasoning inside the content between C{<think>} and
        C{</think>}, streamed and not, and no reasoning field.
        """
        deltas, message = await self._both(THINK)
        expected = "<think>\nLet me think\n</think>\n\n42"
        self.assertEqual("".join(d.get("content") or "" for d in deltas), expected)
        self.assertEqual(message["content"], expected)
        self.assertNotIn("reasoning", json.dumps([deltas, message]))

    async def test_none(self) -> None:
        """
        C{none}: reasoning is dropped.
        """
        deltas, message = await self._both(None)
        self.assertEqual("".join(d.get("content") or "" for d in deltas), "42")
        self.assertEqual(message, {"role": "assistant", "content": "42"})
        self.assertNotIn("think", json.dumps([deltas, message]))


class ThinkEncoderTests(SynchronousTestCase):
    """
    L{ChunkEncoder} in C{think} mode opens C{<think>} at the first
    reasoning delta and closes it before the next content or at the finish.
    """

    def _texts(self, frames: list[bytes]) -> list[Any]:
        decoded = [
            json.loads(f.removeprefix(b"data: ")) for b in frames for f in b.split(b"\n\n") if f
        ]
        return [c["choices"][0]["delta"].get("content") for c in decoded]

    def test_interleaved(self) -> None:
        """
        Reasoning, content, then reasoning again opens a second block.
        """
        encoder = ChunkEncoder("chatcmpl-1", 1, MODEL, False, THINK)
        frames = [
            encoder.reasoning("a"),
            encoder.reasoning("b"),
            encoder.content("x"),
            encoder.reasoning("c"),
            encoder.content("y"),
            encoder.finish("stop"),
        ]
        self.assertEqual(
            self._texts([f for f in frames if f is not None]),
            ["<think>\na", "b", "\n</think>\n\nx", "<think>\nc", "\n</think>\n\ny", None],
        )

    def test_closedAtFinish(self) -> None:
        """
        A stream that ends while thinking gets a closing chunk before the
        finish chunk.
        """
        encoder = ChunkEncoder("chatcmpl-1", 1, MODEL, True, THINK)
        frames = [encoder.reasoning("a"), encoder.finish("stop")]
        self.assertEqual(
            self._texts([f for f in frames if f is not None]),
            ["<think>\na", "\n</think>\n\n", None],
        )
        self.assertIsNone(ChunkEncoder("chatcmpl-1", 1, MODEL, False, None).reasoning("a"))
