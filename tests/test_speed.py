"""
The speed layer behind one switch (L{ai_agent.speed}): C{--stock-twisted}
and C{AI_AGENT_STOCK_TWISTED=1} build the server on Twisted as it ships,
and both ways write the same bytes.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from ai_agent.headends._http import (
    EagerChannel,
    EagerRequest,
    GuardedChannel,
    GuardedRequest,
    HTTPPolicy,
    openaiErrors,
)
from ai_agent.headends._site import APIRouter, DirectRouter
from ai_agent.providers._wire import WireAgent
from ai_agent.runtime import CachingEndpointFactory
from ai_agent.speed import (
    STOCK_VARIABLE,
    EagerTwisted,
    SpeedLayer,
    StockTwisted,
    UpstreamHTTPClient,
    speedLayer,
    stockRequested,
)
from ai_agent.tap import ServerOptions, speedLayerFor
from ai_agent.testing import Reply
from tests._harness import DEFAULT_AGENT, LiveServer, startServer, writeAgent
from tests.test_site import _Probe


class SwitchTests(SynchronousTestCase):
    """
    One option and one variable choose the layer, once.
    """

    def options(self, *argv: str) -> ServerOptions:
        directory = self.mktemp()
        os.makedirs(directory)
        options = ServerOptions()
        options.parseOptions(["--agent", writeAgent(directory, "a.ai", DEFAULT_AGENT), *argv])
        return options

    def test_optionAndVariable(self) -> None:
        """
        C{--stock-twisted} or C{AI_AGENT_STOCK_TWISTED} set to a true word
        gives stock Twisted; neither (or the variable set to anything else)
        gives the speed layer.
        """
        plain, stock = self.options(), self.options("--stock-twisted")
        self.assertIsInstance(speedLayerFor(plain, {}), EagerTwisted)
        self.assertIsInstance(speedLayerFor(stock, {}), StockTwisted)
        for value in ("1", "true", "YES", " on "):
            self.assertIsInstance(speedLayerFor(plain, {STOCK_VARIABLE: value}), StockTwisted)
        for value in ("", "0", "no", "off"):
            self.assertIsInstance(speedLayerFor(plain, {STOCK_VARIABLE: value}), EagerTwisted)
            self.assertIsInstance(speedLayerFor(stock, {STOCK_VARIABLE: value}), StockTwisted)
        self.assertTrue(stockRequested({STOCK_VARIABLE: "1"}))
        self.assertFalse(stockRequested({}))

    def test_makeService(self) -> None:
        """
        The server's assembly builds its runtime's upstream client and
        every endpoint's site and router from the one layer the option (or
        the variable) chose.
        """
        from twisted.internet.testing import MemoryReactorClock

        from ai_agent import tap

        environ = {key: value for key, value in os.environ.items() if key != STOCK_VARIABLE}
        self.patch(os, "environ", environ)
        directory = self.mktemp()
        os.makedirs(directory)
        agent = writeAgent(
            directory, "a.ai", DEFAULT_AGENT.replace("fake/test-model", "openai/gpt-4o-mini")
        )

        def build(*argv: str) -> tuple[Any, list[Any]]:
            options = tap.Options()
            options.parseOptions(
                ["--agent", agent, "--openai-completions", "0", "--store", "none", "--no-metrics"]
                + list(argv)
            )
            top = tap.makeService(options, MemoryReactorClock())
            runtime = [child.runtime for child in top if hasattr(child, "runtime")][0]
            sites = [endpoint.connections.wrappedFactory for endpoint in top.endpoints]
            return runtime, sites

        for argv, variable, stock in [
            ((), None, False),
            (("--stock-twisted",), None, True),
            ((), "1", True),
        ]:
            if variable is None:
                environ.pop(STOCK_VARIABLE, None)
            else:
                environ[STOCK_VARIABLE] = variable
            runtime, sites = build(*argv)
            self.assertIsInstance(runtime.speed, StockTwisted if stock else EagerTwisted)
            self.assertIsInstance(runtime.pool, HTTPConnectionPool if stock else WireAgent)
            self.assertEqual(len(sites), 1)
            self.assertIs(sites[0].requestFactory, GuardedRequest if stock else EagerRequest)
            self.assertIs(type(sites[0].resource), APIRouter if stock else DirectRouter)
            if not stock:
                channel = sites[0].buildProtocol(None)._channel
                self.assertIs(channel.writes, runtime.pool.writes)

    def test_stockIsTwisted(self) -> None:
        """
        Stock Twisted builds its site on Twisted's own request and channel
        behaviour (the guard's classes, no eager subclass), Klein's own
        routing, and treq's C{HTTPClient} on C{Agent} with an
        C{HTTPConnectionPool} (no agent in view, so the providers post
        through treq).
        """
        layer = speedLayer(stock=True)
        site = layer.site(APIRouter(_Probe().app), HTTPPolicy(), openaiErrors, reactor=Clock())
        self.assertIs(site.requestFactory, GuardedRequest)
        self.assertIs(type(site.buildProtocol(None)._channel), GuardedChannel)
        self.assertIs(type(layer.router(_Probe().app)), APIRouter)
        upstream = layer.upstream(
            Clock(), CachingEndpointFactory(Clock(), 1.0), maxIdlePerHost=3, idleTimeout=7.0
        )
        self.assertIsInstance(upstream.pool, HTTPConnectionPool)
        self.assertEqual(
            (upstream.pool.maxPersistentPerHost, upstream.pool.cachedConnectionTimeout), (3, 7)
        )
        self.assertIs(type(upstream.http), HTTPClient)
        self.assertIsInstance(upstream.http._agent, Agent)
        self.assertFalse(hasattr(upstream.http, "agent"))

    def test_speedLayerSharesItsWrites(self) -> None:
        """
        The speed layer's site channels and its upstream client share the
        layer's own L{ai_agent._eager.EagerWrites} (no module-global
        state); two layers share nothing.
        """
        first, second = EagerTwisted(), EagerTwisted()
        self.assertIsNot(first.writes, second.writes)
        site = first.site(APIRouter(_Probe().app), HTTPPolicy(), openaiErrors, reactor=Clock())
        self.assertIs(site.requestFactory, EagerRequest)
        channel = site.buildProtocol(None)._channel
        self.assertIsInstance(channel, EagerChannel)
        self.assertIs(channel.writes, first.writes)
        self.assertIs(type(first.router(_Probe().app)), DirectRouter)
        upstream = first.upstream(
            Clock(), CachingEndpointFactory(Clock(), 1.0), maxIdlePerHost=3, idleTimeout=7.0
        )
        self.assertIsInstance(upstream.pool, WireAgent)
        self.assertIs(upstream.pool.writes, first.writes)
        self.assertIsInstance(upstream.http, UpstreamHTTPClient)


def _exchange(layer: SpeedLayer, raw: bytes) -> bytes:
    site = layer.site(layer.router(_Probe().app), HTTPPolicy(), openaiErrors, reactor=Clock())
    protocol = site.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(raw)
    return re.sub(rb"\r\nDate: [^\r]*", b"", transport.value())


class _Producer:
    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class RequestDictionaryTests(SynchronousTestCase):
    """
    A held stream's request keeps its attributes in the table of names its
    class's instances share, not in a dictionary of its own (see
    L{GuardedRequest}'s slots).
    """

    def _sizes(self, layer: SpeedLayer) -> tuple[int, int]:
        # A class of its own: a table of names no other test filled.
        site = layer.site(layer.router(_Probe().app), HTTPPolicy(), openaiErrors, reactor=Clock())
        fresh = type("Fresh", (site.requestFactory,), {})
        site.requestFactory = fresh
        for _ in range(60):
            channel = site.buildProtocol(None)
            channel.makeConnection(StringTransport())
            channel.dataReceived(b"POST /ok HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        # The HTTP/1.1 channel in Twisted's wrapper (tests/test_private_api.py).
        inner = channel._channel
        held, other = fresh(inner), fresh(inner)
        held.registerProducer(_Producer(), True)
        return sys.getsizeof(vars(held)), sys.getsizeof(vars(other))

    def _channelSizes(self, layer: SpeedLayer) -> tuple[int, int]:
        site = layer.site(layer.router(_Probe().app), HTTPPolicy(), openaiErrors, reactor=Clock())
        prototype = site.newChannel()
        fresh = type("Fresh", (type(prototype),), {})
        arguments = [prototype.writes] if isinstance(prototype, EagerChannel) else []
        site.newChannel = lambda: fresh(*arguments)
        channels = []
        for _ in range(60):
            channel = site.buildProtocol(None)
            channel.makeConnection(StringTransport())
            channel.dataReceived(b"POST /ok HTTP/1.1\r\nContent-Length: 1\r\n\r\nx")
            channels.append(channel._channel)
        held, other = channels[-2:]
        held.registerProducer(_Producer(), True)
        return sys.getsizeof(vars(held)), sys.getsizeof(vars(other))

    def test_streamAfterManyRequests(self) -> None:
        """
        After many whole answers, a request that starts streaming (registers
        its producer) has a dictionary no larger than one that does not: no
        name it sets is new to its class's shared table.  Both layers.
        """
        for layer in (StockTwisted(), EagerTwisted()):
            held, other = self._sizes(layer)
            self.assertEqual(held, other, layer)

    def test_channelAfterManyConnections(self) -> None:
        """
        After many connections, a channel whose request streams (its
        producer registered) has a dictionary no larger than one whose
        request did not.  Both layers.
        """
        for layer in (StockTwisted(), EagerTwisted()):
            held, other = self._channelSizes(layer)
            self.assertEqual(held, other, layer)


class SameBytesTests(SynchronousTestCase):
    """
    The speed layer writes what stock Twisted writes.
    """

    def test_sameAnswers(self) -> None:
        """
        Each kind of answer (bytes, text, a coroutine, a route writing its
        own body, an app's error handler, a werkzeug HTTP exception, a bug,
        a method not allowed, a path with a converter, an unknown path, a
        refusal before the body, several requests on one connection) is
        the same byte for byte through both layers.
        """
        requests = [
            b"POST /ok HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"GET /text HTTP/1.1\r\n\r\n",
            b"POST /later HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"POST /self HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"POST /refused HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"POST /conflict HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"POST /bug HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"GET /ok HTTP/1.1\r\n\r\n",
            b"GET /v1/thing/x HTTP/1.1\r\n\r\n",
            b"GET /nowhere HTTP/1.1\r\n\r\n",
            b"POST /ok HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx",
            b"GET /text HTTP/1.1\r\n\r\nPOST /ok HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        ]
        for raw in requests:
            stock = _exchange(StockTwisted(), raw)
            eager = _exchange(EagerTwisted(), raw)
            self.assertEqual(stock, eager, raw)
            self.assertTrue(stock.startswith(b"HTTP/1.1 "), stock)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)


class _Collect(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure) -> None:
        self.done.callback(self.data)


#: What differs between two runs of one request: the date, ids, times.
_VARYING = [
    (rb"\r\n(?i:date): [^\r]*", b""),
    (rb"\r\n(?i:x-request-id): [^\r]*", b"\r\nx-request-id: *"),
    (rb'"(id|created|created_at|system_fingerprint)":\s*("[^"]*"|\d+)', rb'"\1":*'),
    (rb"(chatcmpl|resp|msg|msg_|rs|fc|call)[-_][A-Za-z0-9_-]{6,}", rb"\1-*"),
]


def _normal(answer: bytes) -> bytes:
    for pattern, replacement in _VARYING:
        answer = re.sub(pattern, replacement, answer)
    return answer


class LiveBothWaysTests(TestCase):
    """
    A real server on each layer, in front of the fake upstream, over TCP.
    """

    async def answer(self, server: LiveServer, raw: bytes) -> bytes:
        protocol = _Collect()
        await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", server.port.getHost().port), protocol
        )
        assert protocol.transport is not None
        protocol.transport.write(raw)
        return await protocol.done.addTimeout(20, reactor)

    async def test_sameOnTheWire(self) -> None:
        """
        Chat Completions (whole and streamed), Responses, Messages, a model
        list, a client's mistake and an unknown path get the same status,
        headers and body from stock Twisted and from the speed layer (ids,
        times and the date aside), the upstream called through Twisted's
        C{Agent} on one and L{WireAgent} on the other.
        """
        stock = await startServer(self, speed=StockTwisted(), fakeProviders={"a": "anthropic"})
        eager = await startServer(self, speed=EagerTwisted(), fakeProviders={"a": "anthropic"})
        self.assertIs(type(stock.runtime.http), HTTPClient)
        self.assertIsInstance(eager.runtime.pool, WireAgent)
        chat = {"model": "agent", "messages": [{"role": "user", "content": "hi"}]}
        bodies = [
            ("/v1/chat/completions", chat),
            ("/v1/chat/completions", {**chat, "stream": True}),
            ("/v1/chat/completions", {"model": "agent"}),
            ("/v1/chat/completions", {**chat, "model": "nobody"}),
            ("/v1/responses", {"model": "agent", "input": "hi", "store": False}),
            ("/v1/responses", {"model": "agent", "input": "hi", "stream": True, "store": False}),
            ("/v1/messages", {**chat, "max_tokens": 10}),
            ("/v1/messages", {**chat, "max_tokens": 10, "stream": True}),
        ]
        requests = [
            b"POST %s HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Type: application/json"
            b"\r\nContent-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body)
            for path, body in ((path, json.dumps(value).encode()) for path, value in bodies)
        ]
        requests += [
            b"GET /v1/models HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            b"GET /v1/nowhere HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\nConnection: close\r\n"
            b"Content-Length: 3\r\n\r\n{x}",
        ]
        for raw in requests:
            answers = []
            for server in (stock, eager):
                server.upstream.script(Reply(content=["Hel", "lo", " there"]))
                answers.append(_normal(await self.answer(server, raw)))
            self.assertEqual(answers[0], answers[1], raw)
            self.assertTrue(answers[0].startswith(b"HTTP/1.1 "), answers[0][:200])
        self.assertEqual(stock.upstream.scripted, eager.upstream.scripted)
