"""
C{POST /v1/messages/count_tokens} under the server's bounds, through a live
server whose agent's first model is on the fake upstream's Anthropic wire:
a count takes a slot of the pool runs take (so parallel counts put no more
calls on the provider than the pool allows, and a full queue is the same
529), and the provider's answer is read up to a bound (past it, a 502
naming the bound, the connection dropped).
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from ai_agent.observe import Observer
from ai_agent.providers.anthropic import MAX_COUNT_ANSWER
from tests._harness import LiveServer, startServer

AGENT = "---\ndescription: t\nmodels: claude/m\n---\nYou count.\n"
HEADERS = {"anthropic-version": "2023-06-01"}
BODY = {"model": "agent", "messages": [{"role": "user", "content": "one two three"}]}


class QueueWatch(Observer):
    """
    An observer (otherwise doing nothing) that tells when the pool's queue
    holds some number of requests.
    """

    def __init__(self) -> None:
        self.queued = 0
        self._waiters: list[tuple[int, Deferred[None]]] = []

    def queueEntered(self) -> None:
        self.queued += 1
        ready = [d for n, d in self._waiters if self.queued >= n]
        self._waiters = [(n, d) for n, d in self._waiters if self.queued < n]
        for d in ready:
            d.callback(None)

    def queueLeft(self) -> None:
        self.queued -= 1

    def waitQueued(self, n: int, timeout: float = 30.0) -> Deferred[None]:
        """
        Fire once C{n} requests wait in the queue at once; fail after
        C{timeout} seconds.
        """
        d: Deferred[None] = Deferred()
        self._waiters.append((n, d))
        return d.addTimeout(timeout, reactor)


async def _server(testCase: TestCase, **kwargs: Any) -> LiveServer:
    return await startServer(
        testCase, agents={"agent.ai": AGENT}, fakeProviders={"claude": "anthropic"}, **kwargs
    )


def _count(testCase: TestCase, server: LiveServer) -> Deferred[tuple[int, Any]]:
    pool = HTTPConnectionPool(reactor, persistent=False)
    testCase.addCleanup(pool.closeCachedConnections)
    http = treq.client.HTTPClient(Agent(reactor, pool=pool))

    async def post() -> tuple[int, Any]:
        response = await http.post(
            server.baseUrl + "/messages/count_tokens", json=BODY, headers=HEADERS
        )
        return response.code, json.loads(await treq.content(response))

    return Deferred.fromCoroutine(post())


class CountSlotTests(TestCase):
    """
    Counts share the run pool.
    """

    async def test_parallelCountsBounded(self) -> None:
        """
        50 counts at once against a pool of 4 put at most 4 calls at once on
        the provider (counted at the fake upstream while it holds them): once
        the other 46 wait in the pool's queue, the upstream has seen 4; as
        calls end, the queued ones follow, and every one is answered with
        the provider's count.
        """
        watch = QueueWatch()
        server = await _server(self, concurrency=4, maxQueue=64, observer=watch)
        upstream = server.upstream
        upstream.holdCounts = True
        answers = gatherResults([_count(self, server) for _ in range(50)])
        await watch.waitQueued(46)
        await upstream.waitForRequests(4)
        self.assertEqual((upstream.countsInFlight, len(upstream.requests)), (4, 4))
        for seen in [*range(8, 50, 4), 50]:
            upstream.release()
            await upstream.waitForRequests(seen)
            self.assertLessEqual(upstream.countsInFlight, 4)
        upstream.release()
        results = await answers
        self.assertEqual(results, [(200, {"input_tokens": 3 + 2})] * 50)
        self.assertEqual(len(upstream.requests), 50)
        self.assertEqual(upstream.maxCountsInFlight, 4)

    async def test_fullQueueOverloaded(self) -> None:
        """
        With every slot busy and the queue full, a count is refused as a run
        would be: 529 C{overloaded_error}, and no call reaches the provider.
        """
        server = await _server(self, concurrency=1, maxQueue=0)
        upstream = server.upstream
        upstream.holdCounts = True
        first = _count(self, server)
        await upstream.waitForRequests(1)
        status, body = await _count(self, server)
        self.assertEqual(status, 529)
        self.assertEqual(body["type"], "error")
        self.assertEqual(body["error"]["type"], "overloaded_error")
        self.assertEqual(len(upstream.requests), 1)
        upstream.release()
        self.assertEqual((await first)[0], 200)


class CountAnswerBoundTests(TestCase):
    """
    A count's answer is read up to L{MAX_COUNT_ANSWER} bytes.
    """

    async def test_hugeAnswerRefused(self) -> None:
        """
        A provider answering a count with 64 MiB is a 502 naming the bound;
        the server dropped the connection instead of reading on (the fake
        upstream wrote far less than its 64 MiB before it saw the client
        go).
        """
        server = await _server(self)
        upstream = server.upstream
        padding = 64 * 1024 * 1024
        upstream.countPadding = padding
        status, body = await _count(self, server)
        self.assertEqual(status, 502, body)
        self.assertEqual(body["error"]["type"], "api_error")
        self.assertIn(f"more than {MAX_COUNT_ANSWER} bytes", body["error"]["message"])
        await upstream.waitForDisconnects(1)
        self.assertLess(upstream.countBytesSent, padding // 4)

    async def test_ordinaryAnswerCounted(self) -> None:
        """
        An answer under the bound (padding included) is still the
        provider's count.
        """
        server = await _server(self)
        server.upstream.countPadding = 1000
        status, body = await _count(self, server)
        self.assertEqual((status, body), (200, {"input_tokens": 5}))
