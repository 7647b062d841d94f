"""
A live server for integration tests: the real fake upstream and the real
headend on 127.0.0.1, each on an ephemeral port.
"""

from __future__ import annotations

import json
import os
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.trial.unittest import TestCase

from ai_agent.connections import TrackingFactory
from ai_agent.headends._http import HTTPPolicy
from ai_agent.headends.openai import OpenAIHeadend
from ai_agent.pool import RunPool
from ai_agent.runtime import Runtime, buildRuntime
from ai_agent.speed import speedLayer, stockRequested
from ai_agent.tap import apiMounts, makeSite
from ai_agent.testing import FakeUpstream, startFakeUpstream

SENTINEL_KEY = "sk-sentinel-0123456789abcdef"

DEFAULT_AGENT = """\
---
description: Test agent
models: fake/test-model
---
You are the test agent.
"""


def writeAgent(directory: str, name: str, text: str = DEFAULT_AGENT) -> str:
    """
    Write an agent file and return its path.
    """
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


@attrs.define
class LiveServer:
    """
    A running headend in front of a running fake upstream.
    """

    upstream: FakeUpstream
    runtime: Runtime
    pool: RunPool
    headend: OpenAIHeadend
    port: IListeningPort
    directory: str
    mounts: tuple[Any, ...] = ()

    @property
    def baseUrl(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}/v1"

    def client(self, **kwargs: Any) -> Any:
        """
        An C{openai.OpenAI} client for this server, without retries.
        """
        import openai

        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 20)
        return openai.OpenAI(base_url=self.baseUrl, api_key="any-key", **kwargs)


async def startServer(
    testCase: TestCase,
    agents: dict[str, str] | None = None,
    concurrency: int = 4,
    maxQueue: int = 16,
    queueTimeout: float = 30.0,
    extraProviders: dict[str, Any] | None = None,
    streamHeadGrace: float = 10.0,
    mcpServers: dict[str, Any] | None = None,
    policy: Any = None,
    reasoningField: str | None = "reasoning_content",
    taskShortcut: bool = True,
    fakeProviders: dict[str, str] | None = None,
    extraConfig: dict[str, Any] | None = None,
    observer: Any = None,
    mounts: Any = None,
    store: Any = None,
    speed: Any = None,
) -> LiveServer:
    """
    Start a fake upstream and a headend serving C{agents} (file name →
    text); everything is stopped when C{testCase} ends.

    @param mcpServers: the configuration's C{mcpServers} section, if any.
    @param reasoningField: the headend's C{reasoningField} (L{None} for
        C{--reasoning-field none}).
    @param taskShortcut: L{False} as with C{--no-task-shortcut}.
    @param fakeProviders: more providers served by the same fake upstream,
        name → wire type (e.g. C{{"claude": "anthropic"}}), with the
        sentinel key.
    @param extraConfig: more top-level configuration sections (e.g.
        C{pricing}).
    @param observer: an L{ai_agent.observe.Observer} for the runner, the
        pool and the headend; with metrics, C{/metrics} is served too.
    @param mounts: builds the other APIs' L{ai_agent.headends._site.Mount}s
        from the runtime, the pool and the reactor (by default, as the
        server does: L{ai_agent.tap.apiMounts}).
    @param store: the run store (L{None}: as with C{--store none}); it is
        started here and closed when the test ends.
    @param speed: the L{ai_agent.speed.SpeedLayer} the server is built on;
        by default the speed layer, or stock Twisted when this test run
        sets C{AI_AGENT_STOCK_TWISTED} (C{tox -e stock}).
    """
    running = await startFakeUpstream(reactor)
    testCase.addCleanup(running.stop)
    directory = os.path.abspath(testCase.mktemp())
    os.makedirs(directory)
    providers: dict[str, Any] = {
        "fake": {"type": "openai", "baseUrl": running.baseUrl, "apiKey": SENTINEL_KEY}
    }
    for name, wire in (fakeProviders or {}).items():
        providers[name] = {"type": wire, "baseUrl": running.baseUrl, "apiKey": SENTINEL_KEY}
    providers.update(extraProviders or {})
    configPath = os.path.join(directory, "config.json")
    with open(configPath, "w", encoding="utf-8") as f:
        config: dict[str, Any] = {"providers": providers}
        if mcpServers is not None:
            config["mcpServers"] = mcpServers
        config.update(extraConfig or {})
        json.dump(config, f)
    paths = [
        writeAgent(directory, name, text)
        for name, text in (agents or {"agent.ai": DEFAULT_AGENT}).items()
    ]
    observed: dict[str, Any] = {} if observer is None else {"observer": observer}
    if store is not None:
        await store.start()
        testCase.addCleanup(store.close)
    runtime = buildRuntime(
        reactor,
        paths,
        configFile=configPath,
        cwd=directory,
        environ={"HOME": directory},
        store=store,
        speed=speedLayer(stockRequested(os.environ)) if speed is None else speed,
        **observed,
    )
    testCase.addCleanup(runtime.close)
    pool = RunPool(reactor, concurrency, maxQueue, queueTimeout, **observed)
    headend = OpenAIHeadend(
        runtime.registry,
        runtime.runner,
        pool,
        reactor,
        streamHeadGrace=streamHeadGrace,
        reasoningField=reasoningField,
        taskShortcut=taskShortcut,
        **observed,
    )
    metrics = None
    if observer is not None and observer.metrics is not None:
        from ai_agent.observe import MetricsResource

        metrics = MetricsResource(observer.metrics, reactor)
    extra = (apiMounts if mounts is None else mounts)(runtime, pool, reactor)
    site = makeSite(
        headend,
        HTTPPolicy() if policy is None else policy,
        mounts=extra,
        metrics=metrics,
        speed=runtime.speed,
    )
    factory = TrackingFactory(site)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    # Cleanups run last-added first: stop listening, then drop what is open.
    testCase.addCleanup(factory.dropConnections)
    testCase.addCleanup(port.stopListening)
    return LiveServer(running.upstream, runtime, pool, headend, port, directory, tuple(extra))


def inThread(f: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
    """
    Run a blocking client call in the reactor's thread pool.
    """
    from twisted.internet.threads import deferToThread

    return deferToThread(f, *args, **kwargs)
