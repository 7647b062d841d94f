"""
Tests for L{ai_agent.retry} (the retry and fallback policy of a turn), its
use by L{ai_agent.session.SessionRunner}, and L{ai_agent.accounting}.

Everything runs on a L{Clock} with a fixed random source.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from ai_agent.accounting import RunAccount, callCost
from ai_agent.agentfile import AgentSpec
from ai_agent.config import Pricing
from ai_agent.errors import ErrorKind, ProviderError
from ai_agent.events import ContentDelta, Event, ModelAnswering, Retrying, Usage, progressText
from ai_agent.providers import ChatMessage, LLMResponse
from ai_agent.request import RunRequest
from ai_agent.retry import RetryLoop, RetryPolicy, exhausted, totalTimeout
from ai_agent.session import SessionRunner
from ai_agent.testing import ScriptedProvider


def down(message: str = "down", **kwargs: Any) -> ProviderError:
    """
    A retryable failure (a 502 unless told otherwise).
    """
    return ProviderError(message, **kwargs)


def rateLimited(retryAfter: float | None = None, message: str = "slow down") -> ProviderError:
    """
    A 429 with an optional C{Retry-After}.
    """
    return ProviderError(
        message, status=429, code="upstream_rate_limited", upstreamStatus=429, retryAfter=retryAfter
    )


def timedOut(message: str = "silent") -> ProviderError:
    """
    A silence timeout.
    """
    return ProviderError(message, status=504, code="upstream_timeout")


class BackoffTests(SynchronousTestCase):
    """
    L{RetryPolicy.backoff}: exponential, capped, jittered.
    """

    def test_exponentialAndJittered(self) -> None:
        """
        The ceiling doubles per rotation from C{baseDelay}; the jitter
        spreads the wait between half the ceiling and all of it.
        """
        policy = RetryPolicy(baseDelay=1.0, maxDelay=30.0)
        self.assertEqual([policy.backoff(n, lambda: 0.0) for n in (1, 2, 3, 4)], [0.5, 1, 2, 4])
        self.assertEqual([policy.backoff(n, lambda: 1.0) for n in (1, 2, 3)], [1, 2, 4])
        self.assertEqual(policy.backoff(2, lambda: 0.5), 1.5)

    def test_capped(self) -> None:
        """
        The ceiling never passes C{maxDelay}.
        """
        policy = RetryPolicy(baseDelay=1.0, maxDelay=8.0)
        self.assertEqual(policy.backoff(10, lambda: 1.0), 8.0)

    def test_totalTimeout(self) -> None:
        """
        A call's total deadline is ten times its silence timeout, at least
        ten minutes.
        """
        self.assertEqual((totalTimeout(120), totalTimeout(5)), (1200, 600))


class Targets:
    """
    A scripted call per target: each call pops the next outcome of its
    target and records the time.
    """

    def __init__(self, clock: Clock, **outcomes: list[Any]) -> None:
        self.clock = clock
        self.outcomes = outcomes
        self.calls: list[tuple[str, float]] = []

    def __call__(self, target: str) -> Deferred[str]:
        self.calls.append((target, self.clock.seconds()))
        outcome = self.outcomes[target].pop(0)
        if isinstance(outcome, BaseException):
            return fail(outcome)
        return succeed(outcome)


class RetryLoopTests(SynchronousTestCase):
    """
    L{RetryLoop}: which target each attempt goes to, and when.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.failures: list[tuple[str, int, str, bool]] = []
        self.waits: list[tuple[str, float]] = []
        self.loop = RetryLoop(
            self.clock,
            RetryPolicy(baseDelay=2.0, maxDelay=30.0, maxWait=60.0),
            lambda: 0.5,
            lambda target, n, error, retrying: self.failures.append(
                (target, n, error.message, retrying)
            ),
            lambda target, seconds: self.waits.append((target, seconds)),
        )

    def turn(self, targets: Targets, names: list[str], attempts: int, **kwargs: Any) -> Any:
        return ensureDeferred(self.loop.run(names, attempts, targets, **kwargs))

    def test_roundRobinWithBackoffPerRotation(self) -> None:
        """
        Attempts take the targets in order, wrapping; the first rotation
        has no waits, and a backoff comes only before each new rotation.
        """
        targets = Targets(
            self.clock,
            A=[down("a1"), down("a2")],
            B=[down("b1"), "B answers"],
            C=[down("c1")],
        )
        d = self.turn(targets, ["A", "B", "C"], 5)
        self.assertEqual([t for t, _ in targets.calls], ["A", "B", "C"])
        self.clock.advance(1.4)
        self.assertEqual(len(targets.calls), 3)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(d), "B answers")
        self.assertEqual(targets.calls, [("A", 0), ("B", 0), ("C", 0), ("A", 1.5), ("B", 1.5)])
        self.assertEqual(self.waits, [("A", 1.5)])
        self.assertEqual([f[3] for f in self.failures], [True, True, True, True])

    def test_sameModelBacksOffEachTime(self) -> None:
        """
        With one target, every retry waits, and the backoff grows.
        """
        targets = Targets(self.clock, A=[down(), down(), "ok"])
        d = self.turn(targets, ["A"], 3)
        self.clock.pump([1.5, 3.0])
        self.assertEqual(self.successResultOf(d), "ok")
        self.assertEqual([at for _, at in targets.calls], [0, 1.5, 4.5])

    def test_rateLimitWaitsRetryAfterWhenNoOtherModel(self) -> None:
        """
        A 429 with C{Retry-After} on the only target makes the next attempt
        wait the time given (when longer than the backoff).
        """
        targets = Targets(self.clock, A=[rateLimited(7), "ok"])
        d = self.turn(targets, ["A"], 2)
        self.clock.advance(6.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(d), "ok")
        self.assertEqual(self.waits, [("A", 7)])

    def test_rateLimitMovesOnToAnotherModel(self) -> None:
        """
        A rate-limited target does not delay the next target; coming back to
        it waits for what is left of its C{Retry-After}.
        """
        targets = Targets(self.clock, A=[rateLimited(20), "A again"], B=[down()])
        d = self.turn(targets, ["A", "B"], 3)
        self.assertEqual(targets.calls, [("A", 0), ("B", 0)])
        self.clock.advance(20)
        self.assertEqual(self.successResultOf(d), "A again")
        self.assertEqual(self.waits, [("A", 20)])

    def test_retryAfterBeyondBudget(self) -> None:
        """
        A C{Retry-After} longer than C{maxWait} ends the turn at once (no
        wait) with a 429 passing that wait on, when no other target is
        left; another target is still tried (after the usual backoff).
        """
        targets = Targets(self.clock, A=[rateLimited(3600), "unused"])
        failure = self.failureResultOf(self.turn(targets, ["A"], 3), ProviderError)
        self.assertEqual((failure.value.status, failure.value.retryAfter), (429, 3600))
        self.assertEqual(self.waits, [])
        self.assertEqual(len(targets.calls), 1)
        targets = Targets(self.clock, A=[rateLimited(3600)], B=["from B"])
        d = self.turn(targets, ["A", "B"], 3)
        self.clock.advance(30)
        self.assertEqual(self.successResultOf(d), "from B")
        self.assertEqual([target for target, _ in targets.calls], ["A", "B"])

    def test_notRetryable(self) -> None:
        """
        A failure that is not retryable ends the turn at once with itself.
        """
        rejected = down("HTTP 401", retryable=False)
        targets = Targets(self.clock, A=[rejected], B=["unused"])
        failure = self.failureResultOf(self.turn(targets, ["A", "B"], 3), ProviderError)
        self.assertIs(failure.value, rejected)
        self.assertEqual([t for t, _ in targets.calls], ["A"])
        self.assertEqual(self.failures, [("A", 1, "HTTP 401", False)])

    def test_unconfiguredSkipped(self) -> None:
        """
        A target whose provider is not configured is dropped from the
        rotation without using up an attempt; the next target answers.
        """
        missing = down(
            "provider 'openai' needs OPENAI_API_KEY",
            status=500,
            code="provider_not_configured",
            retryable=False,
        )
        targets = Targets(self.clock, A=[missing], B=[down("b1"), "B answers"])
        d = self.turn(targets, ["A", "B"], 2)
        self.clock.advance(30)
        self.assertEqual(self.successResultOf(d), "B answers")
        self.assertEqual([t for t, _ in targets.calls], ["A", "B", "B"])

    def test_allUnconfigured(self) -> None:
        """
        When no target is configured, the turn fails with the last one's
        error, which names its variable.
        """
        missingA = down(
            "A needs KEY_A", status=500, code="provider_not_configured", retryable=False
        )
        missingB = down(
            "B needs KEY_B", status=500, code="provider_not_configured", retryable=False
        )
        targets = Targets(self.clock, A=[missingA], B=[missingB])
        failure = self.failureResultOf(self.turn(targets, ["A", "B"], 3), ProviderError)
        self.assertIs(failure.value, missingB)

    def test_noRetryOnceSomethingWasSent(self) -> None:
        """
        When C{mayRetry} says something reached the client, the failure
        ends the turn as it is.
        """
        cut = down("cut mid-stream")
        targets = Targets(self.clock, A=[cut], B=["unused"])
        d = self.turn(targets, ["A", "B"], 3, mayRetry=lambda: False)
        self.assertIs(self.failureResultOf(d, ProviderError).value, cut)
        self.assertEqual(len(targets.calls), 1)

    def test_cancelWhileWaiting(self) -> None:
        """
        Cancelling during a wait cancels its timer and fails with
        L{CancelledError}.
        """
        targets = Targets(self.clock, A=[down(), "unused"])
        d = self.turn(targets, ["A"], 2)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(targets.calls), 1)

    def test_everyTargetRateLimited(self) -> None:
        """
        When every attempt was rate-limited the turn fails with a 429 whose
        C{Retry-After} is the soonest time a target may be called again.
        """
        targets = Targets(self.clock, A=[rateLimited(30)], B=[rateLimited(5, "B busy")])
        failure = self.failureResultOf(self.turn(targets, ["A", "B"], 2), ProviderError)
        self.assertEqual((failure.value.status, failure.value.retryAfter), (429, 5))
        self.assertEqual(failure.value.message, "B busy")
        self.assertEqual(failure.value.kind, ErrorKind.RATE_LIMIT)


class ExhaustedTests(SynchronousTestCase):
    """
    L{exhausted}: the status a turn answers with after every attempt failed.
    """

    def test_mixedIsBadGateway(self) -> None:
        """
        Mixed failures give a 502 with the last failure's message and
        upstream status.
        """
        error = exhausted([timedOut(), rateLimited(3, "provider 'p' said HTTP 429")])
        self.assertEqual((error.status, error.kind), (502, ErrorKind.SERVER))
        self.assertEqual(error.message, "provider 'p' said HTTP 429")
        self.assertEqual((error.upstreamStatus, error.retryAfter), (429, None))

    def test_allTimedOut(self) -> None:
        """
        When every attempt timed out the answer is a 504.
        """
        error = exhausted([timedOut("a"), timedOut("b")])
        self.assertEqual((error.status, error.code, error.message), (504, "upstream_timeout", "b"))

    def test_allRateLimited(self) -> None:
        """
        When every attempt was rate-limited the answer is a 429 with a
        C{Retry-After} of at least one second.
        """
        self.assertEqual(exhausted([rateLimited()]).retryAfter, 1.0)
        self.assertEqual(exhausted([rateLimited(9)]).retryAfter, 9.0)
        self.assertEqual(exhausted([rateLimited(9)], 0.2).retryAfter, 1.0)

    def test_lastKeptWhenItFits(self) -> None:
        """
        A last failure whose status already fits is the error itself.
        """
        last = down("HTTP 503")
        self.assertIs(exhausted([down("x"), last]), last)


def agent(**kwargs: Any) -> AgentSpec:
    values: dict[str, Any] = {
        "path": "/agents/a.ai",
        "name": "a",
        "prompt": "You are A.",
        "models": ("first/m1",),
    }
    values.update(kwargs)
    return AgentSpec(**values)


class LogCapture:
    """
    Collects the log events of one namespace.
    """

    def __init__(self, testCase: SynchronousTestCase, namespace: str) -> None:
        self.namespace = namespace
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self)
        testCase.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") == self.namespace:
            self.events.append(event)


class SessionRetryTests(SynchronousTestCase):
    """
    The session's turns under the retry policy, on a clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[Event] = []
        self.providers: dict[str, Any] = {}
        self.runner = SessionRunner(
            self.providers.__getitem__,
            self.clock,
            retryPolicy=RetryPolicy(baseDelay=1.0),
            random=lambda: 0.0,
            pricing={"first/m1": Pricing(prompt=2.0, completion=10.0)},
        )

    def start(self, spec: AgentSpec) -> Deferred[Any]:
        return self.runner.run(spec, RunRequest((ChatMessage("user", "x"),)), self.events.append)

    def test_failedTurnSendsNothing(self) -> None:
        """
        A turn whose every attempt failed sent no event at all (so the
        headend can still answer with a real status); the retry notes are
        dropped.
        """
        self.providers["first"] = ScriptedProvider(name="first", replies=[down(), down()])
        d = self.start(agent(maxRetries=2))
        self.clock.advance(1)
        self.failureResultOf(d, ProviderError)
        self.assertEqual(self.events, [])

    def test_noteBeforeRetriedAnswer(self) -> None:
        """
        After a retry that answers, the note about the failure comes before
        the answer, as reasoning.
        """
        self.providers["first"] = ScriptedProvider(
            name="first", replies=[down("boom"), LLMResponse(content="ok")]
        )
        d = self.start(agent(maxRetries=2))
        self.clock.advance(0.5)
        self.successResultOf(d)
        # The model that answers is announced first, then the note, then
        # the answer.
        self.assertEqual(self.events[0], ModelAnswering("first/m1"))
        self.assertEqual(self.events[1], Retrying("first/m1", "upstream error", detail="boom"))
        self.assertEqual(
            progressText(self.events[1]), "first/m1 failed (upstream error); retrying\n"
        )
        self.assertEqual(
            progressText(self.events[1], detailed=True), "first/m1 failed (boom); retrying\n"
        )
        self.assertEqual(self.events[2], ContentDelta("ok"))

    def test_rateLimitWaitsOnClock(self) -> None:
        """
        A 429 with C{Retry-After} on the only model waits that long on the
        runner's reactor before calling again.
        """
        provider = ScriptedProvider(name="first", replies=[rateLimited(4), LLMResponse("ok")])
        self.providers["first"] = provider
        d = self.start(agent(maxRetries=2))
        self.clock.advance(3.9)
        self.assertEqual(len(provider.requests), 1)
        self.clock.advance(0.1)
        self.successResultOf(d)
        self.assertEqual(len(provider.requests), 2)

    def test_noRetryAfterReasoning(self) -> None:
        """
        Once reasoning of the turn reached the client, a failure is not
        retried either.
        """

        class ThinksThenFails:
            name = "first"
            calls = 0

            def complete(self, request: Any, sink: Any) -> Deferred[LLMResponse]:
                self.calls += 1
                sink.reasoning("thinking...")
                return fail(down("cut"))

        provider = ThinksThenFails()
        self.providers["first"] = provider
        self.failureResultOf(self.start(agent(maxRetries=3)), ProviderError)
        self.assertEqual(provider.calls, 1)

    def test_requestTimeouts(self) -> None:
        """
        Each call carries the agent's C{llmTimeout} as its silence timeout
        and the derived total deadline.
        """
        provider = ScriptedProvider(name="first")
        self.providers["first"] = provider
        self.successResultOf(self.start(agent(llmTimeout=90.0)))
        request = provider.requests[0]
        self.assertEqual((request.timeout, request.totalTimeout), (90.0, 900.0))

    def test_runLogLine(self) -> None:
        """
        A finished run logs one line with the agent, the outcome, the models
        that answered, the tokens, the cost from the pricing table and the
        duration; failed attempts count as calls.
        """
        logs = LogCapture(self, "ai_agent.accounting")
        self.providers["first"] = ScriptedProvider(
            name="first", replies=[down(), LLMResponse("ok", usage=Usage(1000, 200))]
        )
        d = self.start(agent(maxRetries=2))
        self.clock.advance(0.5)
        self.successResultOf(d)
        [line] = [e for e in logs.events if e["log_level"].name == "info"]
        self.assertEqual(
            (line["agent"], line["outcome"], line["models"], line["calls"], line["failures"]),
            ("a", "end", ("first/m1",), 2, 1),
        )
        self.assertEqual((line["promptTokens"], line["completionTokens"]), (1000, 200))
        self.assertAlmostEqual(line["cost"], 0.004)
        self.assertEqual(line["duration"], 0.5)
        self.assertEqual(line["_costText"], "$0.004000")

    def test_failedRunLogLine(self) -> None:
        """
        A failed run logs its outcome with the error code, and an unknown
        cost when a model that spent tokens has no price.
        """
        logs = LogCapture(self, "ai_agent.accounting")
        self.providers["first"] = ScriptedProvider(
            name="first", replies=[down("HTTP 401", retryable=False, code="upstream_rejected")]
        )
        self.failureResultOf(self.start(agent()), ProviderError)
        [line] = [e for e in logs.events if e["log_level"].name == "info"]
        self.assertEqual(line["outcome"], "failed: 502 upstream_rejected")
        self.assertEqual(line["_modelList"], "none")


class AccountTests(SynchronousTestCase):
    """
    L{RunAccount} and L{callCost}.
    """

    def test_cost(self) -> None:
        """
        Cost is prompt and completion tokens times their price per million;
        L{None} without a price.
        """
        pricing = {"p/m": Pricing(prompt=3.0, completion=15.0)}
        self.assertAlmostEqual(callCost("p/m", Usage(2_000_000, 100_000), pricing) or 0, 7.5)
        self.assertIsNone(callCost("p/other", Usage(1, 1), pricing))

    def test_unknownCostWhenAnyCallUnpriced(self) -> None:
        """
        A run's cost is unknown when any call that spent tokens has no
        price; calls without tokens cost nothing.
        """
        account = RunAccount("a", 0.0, {"p/m": Pricing(1.0, 1.0)})
        account.record("p/m", Usage(10, 10), 1.0)
        account.record("q/n", Usage(), 1.0, "upstream_unreachable")
        self.assertAlmostEqual(account.cost or 0, 20 / 1_000_000)
        account.record("q/n", Usage(5, 5), 1.0)
        self.assertIsNone(account.cost)
        self.assertEqual(account.usage, Usage(15, 15))
        self.assertEqual(account.models, ("p/m", "q/n"))
