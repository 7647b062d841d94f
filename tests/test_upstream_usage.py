"""
Usage counts an upstream reports, believed only when they are possible:
a negative, fractional, boolean, textual or huge token count is a 502
naming the field, on Chat Completions and on Messages, streamed or not,
from an OpenAI-wire and from an Anthropic-wire upstream; never a 500, and
no traceback in the log (trial fails a test that logs one).
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from ai_agent.observe import Observability
from ai_agent.observe._metrics import Metrics
from ai_agent.sse import SSEParser
from ai_agent.testing import Reply
from tests._harness import LiveServer, startServer

AGENTS = {
    "openai.ai": "---\ndescription: t\nmodels: fake/m\nmaxRetries: 1\n---\nYou test.\n",
    "claude.ai": "---\ndescription: t\nmodels: claude/m\nmaxRetries: 1\n---\nYou test.\n",
}

#: Impossible counts: the field, its value as sent, and the words the 502
#: must carry.
OPENAI_CASES: list[tuple[dict[str, Any], str]] = [
    ({"prompt_tokens": -5}, "a negative usage.prompt_tokens (-5)"),
    ({"completion_tokens": -1}, "a negative usage.completion_tokens (-1)"),
    ({"prompt_tokens": 2**70}, "an impossible usage.prompt_tokens"),
    ({"prompt_tokens": True}, "usage.prompt_tokens as a boolean"),
    ({"completion_tokens": "12"}, "usage.completion_tokens as a string"),
    ({"prompt_tokens": 1.5}, "usage.prompt_tokens as 1.5, not a whole number"),
    (
        {"prompt_tokens_details": {"cached_tokens": -3}},
        "a negative usage.prompt_tokens_details.cached_tokens (-3)",
    ),
    (
        {"completion_tokens_details": {"reasoning_tokens": -2}},
        "a negative usage.completion_tokens_details.reasoning_tokens (-2)",
    ),
]
ANTHROPIC_CASES: list[tuple[dict[str, Any], str]] = [
    ({"output_tokens": -5}, "a negative usage.output_tokens (-5)"),
    ({"input_tokens": -7}, "a negative usage.input_tokens (-7)"),
    ({"cache_read_input_tokens": -1}, "a negative usage.cache_read_input_tokens (-1)"),
    ({"cache_creation_input_tokens": 10**12}, "an impossible usage.cache_creation_input_tokens"),
    ({"output_tokens": False}, "usage.output_tokens as a boolean"),
]


def _client(testCase: TestCase) -> treq.client.HTTPClient:
    pool = HTTPConnectionPool(reactor, persistent=False)
    testCase.addCleanup(pool.closeCachedConnections)
    return treq.client.HTTPClient(Agent(reactor, pool=pool))


async def _post(
    testCase: TestCase, server: LiveServer, path: str, body: dict[str, Any]
) -> tuple[int, bytes]:
    response = await _client(testCase).post(
        server.baseUrl + path, json=body, headers={"anthropic-version": "2023-06-01"}
    )
    return response.code, await treq.content(response)


def _errorMessage(status: int, body: bytes, stream: bool) -> str:
    """
    The error's message, from a whole answer's envelope or a stream's
    in-band error event.
    """
    if not stream or status != 200:
        return str(json.loads(body)["error"]["message"])
    for event in SSEParser().feed(body):
        if event.data == "[DONE]":
            continue
        payload = json.loads(event.data)
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            return str(payload["error"]["message"])
    raise AssertionError(f"no error in the stream: {body[-500:]!r}")


class ImpossibleUsageTests(TestCase):
    """
    Through the server, with the fake upstream scripted to report usage no
    model could have spent.
    """

    async def _server(self) -> LiveServer:
        return await startServer(self, agents=AGENTS, fakeProviders={"claude": "anthropic"})

    async def _check(
        self, server: LiveServer, api: str, model: str, fields: dict[str, Any], words: str
    ) -> None:
        for stream in (False, True):
            server.upstream.script(Reply(content="hello there", usageFields=fields))
            if api == "chat":
                body: dict[str, Any] = {
                    "model": model,
                    "messages": [{"role": "user", "content": "hi"}],
                    "stream": stream,
                }
                if stream:
                    body["stream_options"] = {"include_usage": True}
                status, raw = await _post(self, server, "/chat/completions", body)
            else:
                status, raw = await _post(
                    self,
                    server,
                    "/messages",
                    {
                        "model": model,
                        "max_tokens": 50,
                        "messages": [{"role": "user", "content": "hi"}],
                        "stream": stream,
                    },
                )
            where = f"{api} {model} stream={stream} {fields}"
            # A whole answer is a 502; a stream may have started (200) and
            # carries the error in band.
            self.assertIn(status, (502, 200) if stream else (502,), where)
            message = _errorMessage(status, raw, stream)
            self.assertIn(words, message, where)
            self.assertNotIn("internal", message.lower(), where)

    async def test_openaiWire(self) -> None:
        """
        An OpenAI-wire upstream's impossible usage (negative, fractional,
        boolean, textual, past 2**64; in the details too) is a 502 naming
        the field and what was wrong, on both APIs, streamed or not.
        """
        server = await self._server()
        for fields, words in OPENAI_CASES:
            for api in ("chat", "messages"):
                await self._check(server, api, "openai", fields, words)

    async def test_anthropicWire(self) -> None:
        """
        An Anthropic-wire upstream's impossible usage (cache counts
        included) is a 502 naming the field, on both APIs, streamed or not.
        """
        server = await self._server()
        for fields, words in ANTHROPIC_CASES:
            for api in ("chat", "messages"):
                await self._check(server, api, "claude", fields, words)

    async def test_possibleUsageCounted(self) -> None:
        """
        Ordinary counts (integral floats as JSON numbers too) still pass:
        the client sees them as sent.
        """
        server = await self._server()
        server.upstream.script(Reply(content="ok", usageFields={"prompt_tokens": 7.0}))
        status, raw = await _post(
            self,
            server,
            "/chat/completions",
            {"model": "openai", "messages": [{"role": "user", "content": "hi"}]},
        )
        self.assertEqual(status, 200, raw)
        self.assertEqual(json.loads(raw)["usage"]["prompt_tokens"], 7)

    async def test_metricsWithImpossibleUsage(self) -> None:
        """
        With metrics on, a negative count is still a 502 (the token counter,
        which only goes up, is never given it), and the failed call is
        counted.
        """
        observer = Observability(Metrics(multiprocess=False))
        server = await startServer(
            self, agents=AGENTS, fakeProviders={"claude": "anthropic"}, observer=observer
        )
        server.upstream.script(Reply(content="x", usageFields={"prompt_tokens": -5}))
        status, raw = await _post(
            self,
            server,
            "/chat/completions",
            {"model": "openai", "messages": [{"role": "user", "content": "hi"}]},
        )
        self.assertEqual(status, 502, raw)
        self.assertIn("negative usage.prompt_tokens", json.loads(raw)["error"]["message"])


class TokenCounterTests(SynchronousTestCase):
    """
    The observer's token counter, below the providers' checks.
    """

    def test_negativeCountIgnored(self) -> None:
        """
        A call answered with a negative count (from a provider that did not
        check) adds nothing to the token counter instead of raising.
        """
        from ai_agent.events import Usage
        from ai_agent.providers import LLMRequest, LLMResponse

        metrics = Metrics(multiprocess=False)
        observer = Observability(metrics, clock=lambda: 0.0)
        run = observer.run("agent", "")
        call = run.llmCall("p", "m", LLMRequest("m", ()), None)
        call.answered(LLMResponse("x", usage=Usage(-5, 3)), None)
        text = metrics.render()[0].decode()
        self.assertIn('ai_agent_llm_tokens_total{model="m",provider="p",type="output"} 3.0', text)
        self.assertNotIn('type="input"', text)
