"""
Limits per client key and per agent (issue 27): requests per minute,
concurrent runs, tokens and cost per day, the fair queue of the pool.

Unit tests on a L{Clock} with in-memory counters; then real servers on
127.0.0.1 driven by 50 concurrent clients on every API (Chat Completions,
Responses, Messages) against the fake upstream; then real server processes
sharing one SQLite file (and one PostgreSQL database when
C{AI_AGENT_TEST_POSTGRES_URL} is set), and a SIGHUP changing a limit.
"""

from __future__ import annotations

import json
import os
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock, LoopingCall
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from ai_agent.config import loadConfig
from ai_agent.errors import AgentError, ConfigurationError, ErrorKind
from ai_agent.events import ModelAnswering, Usage
from ai_agent.headends._http import APIKeys, HTTPPolicy
from ai_agent.observe import NULL_OBSERVER, Metrics, Observability
from ai_agent.pool import RunPool
from ai_agent.principals import Principal
from ai_agent.quotas import Limits, LimitsConfig, MemoryCounters, Quotas
from ai_agent.tap import makeQuotas
from ai_agent.testing import Reply
from tests._harness import LiveServer, startServer
from tests._process import announcedPort, command
from tests.mcp_servers import calcEntry
from tests.test_firstrun import Child, ended, spawn

PLAIN = """\
---
description: A plain agent
models: fake/test-model
---
You are the plain agent.
"""

TOOLED = """\
---
description: An agent with a calculator
models: fake/test-model
tools: [calc]
---
You add.
"""

KA, KB = "ka-0123456789abcdef", "kb-fedcba9876543210"
CLIENTS = 50
POSTGRES_URL = os.environ.get("AI_AGENT_TEST_POSTGRES_URL")


def _quotas(clock: Clock, config: LimitsConfig, counters: Any = None) -> Quotas:
    return Quotas(
        clock,
        MemoryCounters(clock) if counters is None else counters,
        lambda: config,
        lambda: {},
    )


class _NoCounters:
    """
    Counters that fail the test when asked anything.
    """

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"counters asked for {name} with no limit configured")


class ConfigTests(SynchronousTestCase):
    """
    The C{"limits"} configuration: parsed, merged, validated.
    """

    def _load(self, config: dict[str, Any], **environ: str) -> Any:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        with open(os.path.join(folder, ".ai-agent.json"), "w") as f:
            json.dump(config, f)
        return loadConfig(
            configFile=None, cwd=folder, agentDirs=[], home=None, environ=dict(environ)
        )

    def test_keyWinsOverDefault(self) -> None:
        """
        A key's own limits win over the defaults limit by limit; a key
        without limits, and a bare key, get the defaults; an agent's
        limits are its own.
        """
        config = self._load(
            {
                "keys": {
                    "team-a": {"key": KA, "limits": {"requestsPerMinute": 5, "costPerDay": 2.5}},
                    "team-b": {"key": KB},
                },
                "limits": {
                    "default": {"requestsPerMinute": 60, "concurrentRuns": 4},
                    "agents": {"chat": {"tokensPerDay": 1000}},
                },
            }
        ).limits
        self.assertEqual(
            config.forKey("team-a"),
            Limits(requestsPerMinute=5, concurrentRuns=4, costPerDay=2.5),
        )
        self.assertEqual(config.forKey("team-b"), Limits(requestsPerMinute=60, concurrentRuns=4))
        self.assertEqual(config.forKey("key:0123abcd"), config.forKey("team-b"))
        self.assertEqual(config.forAgent("chat"), Limits(tokensPerDay=1000))
        self.assertTrue(config.forAgent("other").empty)
        self.assertFalse(config.empty)
        self.assertTrue(self._load({}).limits.empty)

    def test_refused(self) -> None:
        """
        An unknown limit is refused by name (with the known ones), a value
        that is not a positive whole number (or a positive number of USD)
        is refused with its key path, and so is an unknown section.
        """
        cases = [
            ({"limits": {"default": {"requestsPerMinit": 5}}}, "requestsPerMinit"),
            ({"limits": {"default": {"concurrentRuns": 0}}}, "concurrentRuns must be"),
            ({"limits": {"default": {"tokensPerDay": 1.5}}}, "tokensPerDay must be"),
            ({"limits": {"default": {"tokensPerDay": True}}}, "tokensPerDay must be"),
            ({"limits": {"agents": {"chat": {"costPerDay": -1}}}}, "costPerDay must be"),
            ({"limits": {"agents": {"chat": {"costPerDay": "5"}}}}, "limits.agents.chat"),
            ({"limits": {"perKey": {}}}, "unknown key 'perKey'"),
            ({"keys": {"a": {"key": KA, "limits": {"rpm": 1}}}}, "keys.a.limits"),
        ]
        for config, expected in cases:
            error = self.assertRaises(ConfigurationError, self._load, config)
            self.assertIn(expected, str(error), config)
        error = self.assertRaises(
            ConfigurationError, self._load, {"limits": {"default": {"requestsPerMinit": 5}}}
        )
        self.assertIn("requestsPerMinute", str(error))


class QuotaTests(SynchronousTestCase):
    """
    Admission and charging on a clock, with counters in memory.
    """

    def test_noLimitsNoCounting(self) -> None:
        """
        With no limit configured for a key and agent, admission asks the
        counters nothing and the admission is unlimited (no headers, the
        events sink unwrapped).
        """
        clock = Clock()
        for config in (
            LimitsConfig(),
            LimitsConfig(agents={"other": Limits(requestsPerMinute=1)}),
        ):
            admission = self.successResultOf(
                _quotas(clock, config, _NoCounters()).admit(Principal("a"), "chat")
            )
            self.assertTrue(admission.unlimited)
            self.assertEqual(admission.headers(), [])
            sink = [].append
            self.assertIs(admission.meter(sink), sink)
            admission.release()

    def test_requestsPerMinute(self) -> None:
        """
        The request past a key's requests per minute is refused with a 429
        of kind rate_limit and the seconds until the next minute; the next
        minute admits again; another key has its own count.
        """
        clock = Clock()
        clock.advance(60 * 16667 + 20)  # 20 s into a minute
        quotas = _quotas(clock, LimitsConfig(default=Limits(requestsPerMinute=3)))
        for _ in range(3):
            self.successResultOf(quotas.admit(Principal("a"), "chat")).release()
        error = self.failureResultOf(quotas.admit(Principal("a"), "chat"), AgentError).value
        self.assertEqual((error.status, error.kind), (429, ErrorKind.RATE_LIMIT))
        self.assertEqual(error.code, "rate_limit_exceeded")
        self.assertEqual(error.retryAfter, 40)
        self.assertIn("3 requests per minute", error.message)
        self.successResultOf(quotas.admit(Principal("b"), "chat"))
        clock.advance(40)
        self.successResultOf(quotas.admit(Principal("a"), "chat"))

    def test_agentLimitSharedByKeys(self) -> None:
        """
        An agent's limit counts every key's requests together.
        """
        clock = Clock()
        quotas = _quotas(clock, LimitsConfig(agents={"chat": Limits(requestsPerMinute=2)}))
        self.successResultOf(quotas.admit(Principal("a"), "chat"))
        self.successResultOf(quotas.admit(Principal("b"), "chat"))
        error = self.failureResultOf(quotas.admit(Principal("c"), "chat"), AgentError).value
        self.assertIn("agent 'chat'", error.message)
        self.successResultOf(quotas.admit(Principal("c"), "other"))

    def test_concurrentRuns(self) -> None:
        """
        A key at its concurrent runs is refused at once; a run's release
        frees its place; the lease of a run whose process died (never
        released, never renewed) expires, while a live run's lease is
        renewed and holds.
        """
        clock = Clock()
        counters = MemoryCounters(clock)
        config = LimitsConfig(default=Limits(concurrentRuns=2))
        quotas = _quotas(clock, config, counters)
        first = self.successResultOf(quotas.admit(Principal("a"), "chat"))
        self.successResultOf(quotas.admit(Principal("a"), "chat"))
        error = self.failureResultOf(quotas.admit(Principal("a"), "chat"), AgentError).value
        self.assertIn("already has 2 runs going", error.message)
        first.release()
        third = self.successResultOf(quotas.admit(Principal("a"), "chat"))
        # Another process's leases on the same counters, never renewed.
        for holder in ("dead", "gone"):
            self.successResultOf(counters.hold("runs/key/b", holder, 2, clock.seconds() + 60))
        live = self.successResultOf(quotas.admit(Principal("c"), "chat"))
        self.failureResultOf(quotas.admit(Principal("b"), "chat"), AgentError)
        clock.advance(61)
        self.successResultOf(quotas.admit(Principal("b"), "chat"))
        for _ in range(10):
            clock.advance(20)
        # The live run's renewed lease still holds: one more run fits, not two.
        self.successResultOf(quotas.admit(Principal("c"), "chat"))
        self.failureResultOf(quotas.admit(Principal("c"), "chat"), AgentError)
        live.release()
        third.release()
        self.successResultOf(quotas.admit(Principal("c"), "chat"))

    def test_cancelledAdmissionGivesBack(self) -> None:
        """
        A client that goes away while its lease is being taken (the
        database's answer not yet back) gives the lease back: the counters
        are told to let it go, so it does not wait for its expiry.
        """
        clock = Clock()
        taken: list[Deferred[bool]] = []
        let: list[tuple[str, str]] = []

        class SlowCounters(MemoryCounters):
            def hold(self, key: str, holder: str, limit: int, expiresAt: float) -> Deferred[bool]:
                super().hold(key, holder, limit, expiresAt)
                d: Deferred[bool] = Deferred()
                taken.append(d)
                return d

            def letGo(self, key: str, holder: str) -> Deferred[None]:
                let.append((key, holder))
                return super().letGo(key, holder)

        counters = SlowCounters(clock)
        quotas = _quotas(clock, LimitsConfig(default=Limits(concurrentRuns=1)), counters)
        admitting = quotas.admit(Principal("a"), "chat")
        self.assertEqual(len(taken), 1)
        admitting.cancel()
        self.failureResultOf(admitting)
        self.assertEqual([key for key, _ in let], ["runs/key/a"])
        self.assertEqual(self.successResultOf(counters.held("runs/key/a")), 0)

    def test_tokensCharged(self) -> None:
        """
        Each L{Usage} event passes on, then is charged: the call that takes
        a key past its tokens per day raises a 429 rate_limit error (the
        run ends); the next request of the day is refused before it runs,
        and the next day admits again.
        """
        clock = Clock()
        quotas = _quotas(clock, LimitsConfig(default=Limits(tokensPerDay=250)))
        admission = self.successResultOf(quotas.admit(Principal("a"), "chat"))
        seen: list[object] = []
        sink = admission.meter(seen.append)
        sink(ModelAnswering("fake/m"))
        sink(Usage(100, 10))
        sink(Usage(100, 10))
        error = self.assertRaises(AgentError, sink, Usage(100, 10))
        self.assertEqual((error.status, error.kind), (429, ErrorKind.RATE_LIMIT))
        self.assertIn("250 tokens", error.message)
        self.assertEqual(len(seen), 4)
        admission.release()
        self.failureResultOf(quotas.admit(Principal("a"), "chat"), AgentError)
        clock.advance(86400)
        self.successResultOf(quotas.admit(Principal("a"), "chat"))

    def test_costCharged(self) -> None:
        """
        The cost of each call, from the configured pricing of its model,
        counts against the cost per day; a model without a price costs
        nothing.
        """
        from ai_agent.config import Pricing

        clock = Clock()
        quotas = Quotas(
            clock,
            MemoryCounters(clock),
            lambda: LimitsConfig(default=Limits(costPerDay=1.0)),
            lambda: {"fake/m": Pricing(prompt=1000.0, completion=1000.0)},
        )
        admission = self.successResultOf(quotas.admit(Principal("a"), "chat"))
        sink = admission.meter(lambda event: None)
        sink(ModelAnswering("fake/free"))
        sink(Usage(100_000, 100_000))
        sink(ModelAnswering("fake/m"))
        sink(Usage(500, 0))  # 0.5 USD
        error = self.assertRaises(AgentError, sink, Usage(600, 0))
        self.assertIn("1 USD", error.message)

    def test_headers(self) -> None:
        """
        The remaining budget in OpenAI's and in Anthropic's headers: the
        tightest of the key's and the agent's limits.
        """
        clock = Clock()
        clock.advance(86400 * 100 + 30)
        quotas = _quotas(
            clock,
            LimitsConfig(
                default=Limits(requestsPerMinute=10, tokensPerDay=1000),
                agents={"chat": Limits(requestsPerMinute=3)},
            ),
        )
        admission = self.successResultOf(quotas.admit(Principal("a"), "chat"))
        self.assertEqual(
            dict(admission.headers()),
            {
                b"x-ratelimit-limit-requests": b"3",
                b"x-ratelimit-remaining-requests": b"2",
                b"x-ratelimit-reset-requests": b"30s",
                b"x-ratelimit-limit-tokens": b"1000",
                b"x-ratelimit-remaining-tokens": b"1000",
                b"x-ratelimit-reset-tokens": b"86370s",
            },
        )
        anthropic = dict(admission.headers(anthropic=True))
        self.assertEqual(anthropic[b"anthropic-ratelimit-requests-remaining"], b"2")
        self.assertEqual(anthropic[b"anthropic-ratelimit-tokens-reset"], b"1970-04-12T00:00:00Z")


class FairQueueTests(SynchronousTestCase):
    """
    The pool's queue takes turns between keys.
    """

    def test_roundRobin(self) -> None:
        """
        With one slot busy, key A queues 20 requests, then key B one: the
        slot freed next goes to A's first, the one after to B's, before
        A's second.
        """
        clock = Clock()
        pool = RunPool(clock, concurrency=1, maxQueue=32)
        running = self.successResultOf(pool.acquire("a"))
        order: list[str] = []
        slots = []
        for n in range(20):
            pool.acquire("a").addCallback(
                lambda slot, n=n: (order.append(f"a{n}"), slots.append(slot))
            )
        pool.acquire("b").addCallback(lambda slot: (order.append("b0"), slots.append(slot)))
        self.assertEqual(pool.queuedRuns, 21)
        running.release()
        slots[-1].release()
        slots[-1].release()
        self.assertEqual(order, ["a0", "b0", "a1"])
        self.assertEqual(pool.queuedRuns, 18)

    def test_cancelledWaiterLeaves(self) -> None:
        """
        A waiter that gives up leaves its key's queue; the slot goes to the
        next waiter.
        """
        clock = Clock()
        pool = RunPool(clock, concurrency=1, maxQueue=4)
        running = self.successResultOf(pool.acquire("a"))
        gone = pool.acquire("b")
        waiting = pool.acquire("c")
        gone.cancel()
        self.failureResultOf(gone)
        self.assertEqual(pool.queuedRuns, 1)
        running.release()
        self.successResultOf(waiting)


def _http(testCase: TestCase) -> Any:
    pool = HTTPConnectionPool(reactor, persistent=False)
    pool.maxPersistentPerHost = CLIENTS
    testCase.addCleanup(pool.closeCachedConnections)
    return treq.client.HTTPClient(Agent(reactor, pool=pool))


#: Each API's run request, its path, and what its error envelope calls a
#: rate limit.
APIS = {
    "chat": (
        "/v1/chat/completions",
        lambda model: {"model": model, "messages": [{"role": "user", "content": "hi"}]},
        "rate_limit_error",
    ),
    "responses": (
        "/v1/responses",
        lambda model: {"model": model, "input": "hi", "store": False},
        "rate_limit_error",
    ),
    "messages": (
        "/v1/messages",
        lambda model: {
            "model": model,
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "hi"}],
        },
        "rate_limit_error",
    ),
}


async def _post(
    http: Any, base: str, api: str, model: str = "plain", key: str | None = None
) -> tuple[int, Any, Any]:
    path, body, _ = APIS[api]
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    response = await http.post(base + path, json.dumps(body(model)).encode(), headers=headers)
    text = await response.content()
    return int(response.code), response.headers, json.loads(text)


async def _limitedServer(
    testCase: TestCase, limits: dict[str, Any], keys: APIKeys | None = None, **kwargs: Any
) -> LiveServer:
    server = await startServer(
        testCase,
        agents={"plain.ai": PLAIN, **kwargs.pop("agents", {})},
        streamHeadGrace=0.0,
        extraConfig={"limits": limits, **kwargs.pop("extraConfig", {})},
        policy=None if keys is None else HTTPPolicy(apiKeys=keys),
        **kwargs,
    )
    server.pool.quotas = makeQuotas(
        reactor, server.runtime, kwargs.get("observer") or NULL_OBSERVER
    )
    return server


def _base(server: LiveServer) -> str:
    return server.baseUrl.removesuffix("/v1")


class LiveTests(TestCase):
    """
    Real servers on 127.0.0.1, 50 concurrent clients on each API.
    """

    async def test_requestsPerMinuteEveryAPI(self) -> None:
        """
        50 concurrent requests against a limit of 7 per minute: exactly 7
        run on each API; the other 43 get a 429 with C{Retry-After} in the
        API's own envelope (OpenAI: type rate_limit_error, code
        rate_limit_exceeded; Anthropic: rate_limit_error) and never reach
        the upstream; the admitted carry the remaining budget.
        """
        for api in APIS:
            server = await _limitedServer(
                self, {"default": {"requestsPerMinute": 7}}, concurrency=8, maxQueue=64
            )
            http = _http(self)
            answers = await gatherResults(
                [Deferred.fromCoroutine(_post(http, _base(server), api)) for _ in range(CLIENTS)]
            )
            codes = sorted(code for code, _, _ in answers)
            self.assertEqual(codes, [200] * 7 + [429] * 43, api)
            self.assertEqual(len(server.upstream.requests), 7, api)
            for code, headers, body in answers:
                if code == 429:
                    self.assertEqual(body["error"]["type"], APIS[api][2], api)
                    if api != "messages":
                        self.assertEqual(body["error"]["code"], "rate_limit_exceeded")
                    else:
                        self.assertEqual(body["type"], "error")
                    retry = int(headers.getRawHeaders(b"retry-after")[0])
                    self.assertTrue(1 <= retry <= 60, retry)
                    remainingName = (
                        b"anthropic-ratelimit-requests-remaining"
                        if api == "messages"
                        else b"x-ratelimit-remaining-requests"
                    )
                    self.assertEqual(headers.getRawHeaders(remainingName), [b"0"], api)
            remaining = sorted(
                int(
                    headers.getRawHeaders(
                        b"anthropic-ratelimit-requests-remaining"
                        if api == "messages"
                        else b"x-ratelimit-remaining-requests"
                    )[0]
                )
                for code, headers, _ in answers
                if code == 200
            )
            self.assertEqual(remaining, list(range(7)), api)

    async def test_requestsPerMinuteMCP(self) -> None:
        """
        On MCP, 50 concurrent C{tools/call}s in one session against 7
        requests per minute: exactly 7 runs reach the upstream; the other
        43 are tool errors naming the limit (MCP's way to fail a call),
        and the admitted answer.
        """
        server = await _limitedServer(
            self, {"default": {"requestsPerMinute": 7}}, concurrency=8, maxQueue=64
        )
        http = _http(self)
        url = _base(server) + "/mcp"
        sent = {b"content-type": [b"application/json"], b"accept": [b"application/json"]}

        async def rpc(body: dict[str, Any], session: bytes | None = None) -> tuple[Any, Any]:
            headers = dict(sent)
            if session is not None:
                headers[b"mcp-session-id"] = [session]
            response = await http.post(url, json.dumps(body).encode(), headers=headers)
            return response.headers, json.loads(await response.content())

        headers, _ = await rpc(
            {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {}},
            }
        )
        session = headers.getRawHeaders(b"mcp-session-id")[0]
        answers = await gatherResults(
            [
                Deferred.fromCoroutine(
                    rpc(
                        {
                            "jsonrpc": "2.0",
                            "id": n + 1,
                            "method": "tools/call",
                            "params": {"name": "plain", "arguments": {"prompt": "hi"}},
                        },
                        session,
                    )
                )
                for n in range(CLIENTS)
            ]
        )
        results = [answer["result"] for _, answer in answers]
        failed = [r for r in results if r.get("isError")]
        self.assertEqual(len(failed), CLIENTS - 7)
        self.assertEqual(len(server.upstream.requests), 7)
        for result in failed:
            self.assertIn("7 requests per minute", result["content"][0]["text"])

    async def test_concurrentRunsEveryAPI(self) -> None:
        """
        50 concurrent requests against 3 concurrent runs per key, the
        upstream holding each answer: 3 runs reach the upstream, the other
        47 are refused at once with a 429 (not queued: the pool has room),
        and once the held runs finish a new one is admitted.
        """
        for api in APIS:
            server = await _limitedServer(
                self, {"default": {"concurrentRuns": 3}}, concurrency=16, maxQueue=64
            )
            server.upstream.script(*[Reply("held", hold=True, usage=(1, 1))] * 3)
            http = _http(self)
            requests = [
                Deferred.fromCoroutine(_post(http, _base(server), api)) for _ in range(CLIENTS)
            ]
            await server.upstream.waitForRequests(3)
            await _allButHeld(requests, 3)
            # Every other request was answered while three runs held their
            # place; none of them reached the upstream.
            self.assertEqual(len(server.upstream.requests), 3, api)
            self.assertEqual(sum(1 for r in requests if r.called), CLIENTS - 3)
            # Let the held answers go (one may only now reach its hold).
            pump = LoopingCall(server.upstream.release)
            pump.start(0.02)
            try:
                answers = await gatherResults(requests)
            finally:
                pump.stop()
            self.assertEqual(sorted(code for code, _, _ in answers), [200] * 3 + [429] * 47)
            code, _, _ = await _post(http, _base(server), api)
            self.assertEqual(code, 200, api)

    async def test_budgetCrossedMidRun(self) -> None:
        """
        A run of several turns, each upstream call reporting 100 + 10
        tokens, against 250 tokens per day, on every API: the third call
        crosses the budget and the run ends there (no fourth call) with
        the API's rate-limit error, a 429 when nothing was sent yet,
        in-band when streamed; the next request of the day is refused
        before it runs.
        """
        inBand: list[str] = []
        for api in APIS:
            for stream in (False, True):
                server = await _limitedServer(
                    self,
                    {"default": {"tokensPerDay": 250}},
                    agents={"tooled.ai": TOOLED},
                    mcpServers={"calc": calcEntry()},
                )
                server.upstream.script(
                    *[Reply(toolCalls=[("calc__add", {"a": 1, "b": 2})], usage=(100, 10))] * 5,
                    Reply("done", usage=(100, 10)),
                )
                path, body, errorType = APIS[api]
                http = _http(self)
                response = await http.post(
                    _base(server) + path,
                    json.dumps({**body("tooled"), "stream": stream}).encode(),
                    headers={"Content-Type": "application/json"},
                )
                text = (await response.content()).decode()
                where = f"{api}, stream={stream}"
                self.assertEqual(len(server.upstream.requests), 3, where)
                self.assertIn("250 tokens", text, where)
                compact = text.replace(" ", "")
                if response.code == 200:
                    # Streamed, once the answer began: the error in-band.
                    self.assertTrue(stream, where)
                    inBand.append(where)
                    if api == "responses":
                        # Responses ends a stream with response.failed,
                        # whose error has a code and no type.
                        self.assertIn("response.failed", compact, where)
                        self.assertIn('"code":"rate_limit_exceeded"', compact, where)
                    else:
                        self.assertIn(f'"type":"{errorType}"', compact, where)
                else:
                    # Nothing sent yet (a stream whose head had not gone
                    # out either): the status, in the API's envelope.
                    self.assertEqual(response.code, 429, where)
                    self.assertEqual(json.loads(text)["error"]["type"], errorType, where)
                code, _, _ = await _post(http, _base(server), api, model="tooled")
                self.assertEqual(code, 429, where)
                self.assertEqual(len(server.upstream.requests), 3, where)
        # Chat Completions and Responses had begun their streams (their
        # progress went out): the error came in-band there.
        self.assertEqual(inBand, ["chat, stream=True", "responses, stream=True"])

    async def test_perKeyAndCountTokens(self) -> None:
        """
        A named key's own limit applies to it alone (the other key keeps
        the default); count_tokens counts as a request.
        """
        keys = APIKeys.fromKeys([KA])
        server = await _limitedServer(
            self,
            {"default": {"requestsPerMinute": 100}},
            keys=keys,
            extraConfig={
                "keys": {
                    "team-a": {"key": KA, "limits": {"requestsPerMinute": 2}},
                    "team-b": {"key": KB},
                }
            },
        )
        # The named keys of the configuration, as the server serves them.
        keys.replace(APIKeys.fromKeys([], server.runtime.config.keys.values()))
        http = _http(self)
        base = _base(server)
        response = await http.post(
            base + "/v1/messages/count_tokens",
            json.dumps(
                {"model": "plain", "messages": [{"role": "user", "content": "hi"}]}
            ).encode(),
            headers={"Content-Type": "application/json", "x-api-key": KA},
        )
        await response.content()
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders(b"anthropic-ratelimit-requests-remaining"), [b"1"]
        )
        self.assertEqual((await _post(http, base, "chat", key=KA))[0], 200)
        self.assertEqual((await _post(http, base, "chat", key=KA))[0], 429)
        self.assertEqual((await _post(http, base, "chat", key=KB))[0], 200)

    async def test_usageEndpointAndMetrics(self) -> None:
        """
        C{GET /v1/limits} shows a key its own limits and usage, never the
        other key's; the metrics count spent tokens and refusals by key
        name and agent, and hold no key.
        """
        observer = Observability(Metrics(multiprocess=False), None, clock=reactor.seconds)
        keys = APIKeys.fromKeys([KA])
        server = await _limitedServer(
            self,
            {"default": {"tokensPerDay": 1000, "costPerDay": 1.0}},
            keys=keys,
            observer=observer,
            extraConfig={
                "keys": {
                    "team-a": {"key": KA, "limits": {"requestsPerMinute": 2}},
                    "team-b": {"key": KB},
                },
                # 10 tokens of a run: 0.01 USD.
                "pricing": {"fake/test-model": {"prompt": 1000, "completion": 1000}},
            },
        )
        keys.replace(APIKeys.fromKeys([], server.runtime.config.keys.values()))
        server.upstream.script(*[Reply("ok", usage=(7, 3))] * 3)
        http = _http(self)
        base = _base(server)
        codes = [(await _post(http, base, "chat", key=key))[0] for key in (KA, KA, KA, KB)]
        self.assertEqual(codes, [200, 200, 429, 200])
        code, mine = await _get(http, base + "/v1/limits", KA)
        self.assertEqual(code, 200)
        self.assertEqual(mine["key"], "team-a")
        self.assertEqual(
            mine["limits"],
            {
                "requestsPerMinute": 2,
                "concurrentRuns": None,
                "tokensPerDay": 1000,
                "costPerDay": 1.0,
            },
        )
        self.assertEqual(mine["usage"]["requestsThisMinute"], 3)
        self.assertEqual(mine["usage"]["tokensToday"], 20)
        self.assertEqual(mine["usage"]["costToday"], 0.02)
        code, theirs = await _get(http, base + "/v1/limits", KB)
        self.assertEqual((theirs["key"], theirs["usage"]["tokensToday"]), ("team-b", 10))
        self.assertNotIn("team-a", json.dumps(theirs))
        self.assertEqual((await _get(http, base + "/v1/limits", "wrong"))[0], 401)
        metrics = observer.metrics
        assert metrics is not None
        scrape = metrics.render()[0].decode()
        self.assertIn(
            'ai_agent_limit_refusals_total{agent="plain",key="team-a",limit="requestsPerMinute"}'
            " 1.0",
            scrape,
        )
        self.assertIn('ai_agent_key_tokens_total{agent="plain",key="team-a"} 20.0', scrape)
        self.assertIn('ai_agent_key_tokens_total{agent="plain",key="team-b"} 10.0', scrape)
        self.assertIn('ai_agent_key_cost_usd_total{agent="plain",key="team-b"} 0.01', scrape)
        self.assertNotIn(KA, scrape)


async def _get(http: Any, url: str, key: str) -> tuple[int, Any]:
    response = await http.get(url, headers={"Authorization": f"Bearer {key}"})
    return int(response.code), json.loads(await response.content())


async def _eventually(ask: Any, done: Any, tries: int = 100) -> Any:
    """
    Ask C{ask()} again, 20 ms apart, until C{done} holds of its answer (at
    most C{tries} times); the last answer.
    """
    from twisted.internet.task import deferLater

    answer = await ask()
    for _ in range(tries):
        if done(answer):
            break
        await deferLater(reactor, 0.02, lambda: None)
        answer = await ask()
    return answer


async def _allButHeld(requests: list[Deferred[Any]], held: int) -> None:
    """
    Wait until every request but C{held} has its answer.
    """
    done: Deferred[None] = Deferred()
    count = [0]

    def one(result: object) -> object:
        count[0] += 1
        if count[0] == len(requests) - held and not done.called:
            done.callback(None)
        return result

    for request in requests:
        request.addBoth(one)
    await done.addTimeout(30, reactor)


class ProcessTests(TestCase):
    """
    Real server processes sharing their counters through one run store,
    and a limit changed by SIGHUP.
    """

    async def _project(self, config: dict[str, Any]) -> str:
        from ai_agent.testing import startFakeUpstream

        running = await startFakeUpstream(reactor)
        self.addCleanup(running.stop)
        self.upstream = running.upstream
        folder = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(folder, "agents"))
        providers = {"fake": {"type": "openai", "baseUrl": running.baseUrl}}
        self._write(folder, {"providers": providers, **config})
        with open(os.path.join(folder, "agents", "plain.ai"), "w") as f:
            f.write(PLAIN)
        return folder

    def _write(self, folder: str, config: dict[str, Any]) -> None:
        with open(os.path.join(folder, ".ai-agent.json"), "w") as f:
            json.dump(config, f)

    async def _serve(self, folder: str, *extra: str) -> tuple[Child, str]:
        child = spawn(
            self,
            [
                *command("ai-agent"),
                "--agent",
                "agents",
                "--openai-completions",
                "0",
                "--openai-completions-concurrency",
                "16",
                *extra,
            ],
            folder,
        )
        await child.waitFor(b"  models: ")
        return child, f"http://127.0.0.1:{announcedPort(child.output)}"

    async def _shared(self, store: str, limit: int, api: str) -> list[int]:
        folder = await self._project({"limits": {"default": {"requestsPerMinute": limit}}})
        location = os.path.join(folder, store) if store == "store.sqlite3" else store
        (_, one), (_, two) = [await self._serve(folder, "--store", location) for _ in range(2)]
        http = _http(self)
        answers = await gatherResults(
            [Deferred.fromCoroutine(_post(http, (one, two)[n % 2], api)) for n in range(CLIENTS)]
        )
        return sorted(code for code, _, _ in answers)

    async def test_twoProcessesShareSQLite(self) -> None:
        """
        Two server processes on one SQLite file share one count: 50
        concurrent clients split between them against 9 requests per
        minute get exactly 9 answers (no overshoot) and 41 429s.
        """
        codes = await self._shared("store.sqlite3", 9, "chat")
        self.assertEqual(codes, [200] * 9 + [429] * 41)
        self.assertEqual(len(self.upstream.requests), 9)

    async def test_twoProcessesSharePostgreSQL(self) -> None:
        """
        Two server processes on one PostgreSQL database share one count:
        exactly 9 of 50 concurrent requests run.
        """
        if POSTGRES_URL is None:
            raise SkipTest("AI_AGENT_TEST_POSTGRES_URL is not set")
        await _clearCounters(POSTGRES_URL)
        codes = await self._shared(POSTGRES_URL, 9, "responses")
        self.assertEqual(codes, [200] * 9 + [429] * 41)
        self.assertEqual(len(self.upstream.requests), 9)

    async def _sharedRuns(self, store: str, limit: int) -> None:
        folder = await self._project({"limits": {"default": {"concurrentRuns": limit}}})
        location = os.path.join(folder, store) if store == "store.sqlite3" else store
        (_, one), (_, two) = [await self._serve(folder, "--store", location) for _ in range(2)]
        self.upstream.script(*[Reply("held", hold=True, usage=(1, 1))] * limit)
        http = _http(self)
        requests = [
            Deferred.fromCoroutine(_post(http, (one, two)[n % 2], "messages"))
            for n in range(CLIENTS)
        ]
        await _allButHeld(requests, limit)
        await self.upstream.waitForRequests(limit)
        self.assertEqual(len(self.upstream.requests), limit)
        pump = LoopingCall(self.upstream.release)
        pump.start(0.02)
        try:
            answers = await gatherResults(requests)
        finally:
            pump.stop()
        self.assertEqual(
            sorted(code for code, _, _ in answers), [200] * limit + [429] * (CLIENTS - limit)
        )
        # The leases were given back: both processes admit runs again.
        self.assertEqual([(await _post(http, base, "chat"))[0] for base in (one, two)], [200] * 2)

    async def test_twoProcessesShareRunsSQLite(self) -> None:
        """
        Two server processes on one SQLite file share one concurrent-runs
        count: of 50 concurrent clients split between them against 3 runs,
        exactly 3 run and 47 are refused at once; the leases come back when
        the runs end.
        """
        await self._sharedRuns("store.sqlite3", 3)

    async def test_twoProcessesShareRunsPostgreSQL(self) -> None:
        """
        The same on one PostgreSQL database: exactly 3 of 50 run at once.
        """
        if POSTGRES_URL is None:
            raise SkipTest("AI_AGENT_TEST_POSTGRES_URL is not set")
        await _clearCounters(POSTGRES_URL)
        await self._sharedRuns(POSTGRES_URL, 3)

    async def _sharedTokens(self, store: str) -> None:
        limit, perCall = 100, 10
        folder = await self._project(
            {"keys": {"team-a": {"key": KA}}, "limits": {"default": {"tokensPerDay": limit}}}
        )
        location = os.path.join(folder, store) if store == "store.sqlite3" else store
        (_, one), (_, two) = [await self._serve(folder, "--store", location) for _ in range(2)]
        self.upstream.script(*[Reply("ok", usage=(5, 5))] * CLIENTS)
        http = _http(self)

        async def wave() -> list[int]:
            answers = await gatherResults(
                [
                    Deferred.fromCoroutine(_post(http, (one, two)[n % 2], "chat", key=KA))
                    for n in range(CLIENTS)
                ]
            )
            return [code for code, _, _ in answers]

        first = await wave()
        ran = len(self.upstream.requests)
        # Every admitted run made its one call and was charged for it, in
        # whichever process: the shared count lost no update.
        self.assertEqual(first.count(200), ran)
        # A charge is written as the run goes on, not waited for by its
        # answer: the shared count reaches the total a moment later.
        spent = await _eventually(
            lambda: _get(http, one + "/v1/limits", KA),
            lambda answer: answer[1]["usage"]["tokensToday"] == ran * perCall,
        )
        self.assertEqual(spent[1]["usage"]["tokensToday"], ran * perCall)
        # The documented bound: one call per run in flight past the budget.
        self.assertLessEqual(ran * perCall, limit + CLIENTS * perCall)
        # Once the budget is spent, both processes refuse every request.
        self.assertEqual(await wave(), [429] * CLIENTS)
        self.assertEqual(len(self.upstream.requests), ran)

    async def test_twoProcessesShareTokensSQLite(self) -> None:
        """
        Two server processes on one SQLite file charge one token budget: 50
        concurrent requests each spending 10 tokens against 100 per day
        are all counted (the spent total is exactly what the upstream
        reported), the overshoot stays within one call per run in flight,
        and then every request is refused.
        """
        await self._sharedTokens("store.sqlite3")

    async def test_twoProcessesShareTokensPostgreSQL(self) -> None:
        """
        The same on one PostgreSQL database.
        """
        if POSTGRES_URL is None:
            raise SkipTest("AI_AGENT_TEST_POSTGRES_URL is not set")
        await _clearCounters(POSTGRES_URL)
        await self._sharedTokens(POSTGRES_URL)

    async def test_sighupChangesLimit(self) -> None:
        """
        SIGHUP applies a new limit without a restart: a key over its 2
        requests per minute is admitted again once the limit is 10.
        """
        folder = await self._project({"limits": {"default": {"requestsPerMinute": 2}}})
        child, base = await self._serve(folder, "--store", "none")
        http = _http(self)
        codes = [(await _post(http, base, "chat"))[0] for _ in range(3)]
        self.assertEqual(codes, [200, 200, 429])
        config = json.load(open(os.path.join(folder, ".ai-agent.json")))
        config["limits"]["default"]["requestsPerMinute"] = 10
        self._write(folder, config)
        child.send("HUP")
        await child.waitFor(b"reload: ")
        self.assertEqual((await _post(http, base, "chat"))[0], 200)
        child.send("TERM")
        await ended(child)


async def _clearCounters(url: str) -> None:
    from twisted.internet.threads import deferToThread

    def clear() -> None:
        import psycopg

        with psycopg.connect(url) as connection:
            for table in ("ai_agent_counters", "ai_agent_leases"):
                if connection.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0]:
                    connection.execute(f"DELETE FROM {table}")

    await deferToThread(clear)
