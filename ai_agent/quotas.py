# -*- test-case-name: tests.test_quotas -*-
"""
Limits per client key and per agent: requests per minute, concurrent runs,
tokens per day and cost per day, counted where every instance sees them.

The configuration (L{LimitsConfig}) comes from C{.ai-agent.json}: a named
key's own C{"limits"} win over C{"limits": {"default": …}}, and an agent's
C{"limits": {"agents": {"chat": …}}} apply to every key together.  Before a
run takes a slot of the pool, L{Quotas.admit} counts the request and
refuses it (429, C{Retry-After}, the API's own error type) when a limit is
reached; the L{Admission} it returns charges the run's tokens and cost as
its LLM calls report them (L{Admission.meter}), ending the run with a
rate-limit L{AgentError} once a budget is crossed, and gives back the run's
concurrent-runs lease when the run ends (L{Admission.release}).

The counters (L{Counters}) live in the run store's database when it is a
SQL one (so that every process on that database shares them), else in this
process (L{MemoryCounters}).  With no limit configured for a key and agent,
admission asks nothing of them.  See docs/security.md ("Limits").
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import Any, Callable, Mapping, Protocol

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ai_agent.accounting import Pricing, callCost
from ai_agent.errors import AgentError, ErrorKind
from ai_agent.events import Event, EventSink, ModelAnswering, Usage
from ai_agent.observe import NULL_OBSERVER, Observer
from ai_agent.principals import Principal
from ai_agent.quotaconfig import LIMIT_NAMES, NO_LIMITS, Limits, LimitsConfig

log = Logger()

MINUTE = 60.0
DAY = 86400.0

#: Seconds a running run's concurrent-runs lease lasts unless renewed; it is
#: renewed every third of that while the run goes on, so the lease of a
#: process that died is gone within this time.
LEASE_TIME = 60.0

#: The error code of a refusal or of a run ended by a budget.
RATE_LIMIT_CODE = "rate_limit_exceeded"


class Counters(Protocol):
    """
    Where limits are counted: shared by every process that uses the same
    counters (a SQL run store), or this process only (L{MemoryCounters}).
    """

    def increment(self, key: str, amount: float, expiresAt: float) -> Deferred[float]:
        """
        Add C{amount} to the counter C{key} (created at 0, kept until
        C{expiresAt}) in one atomic step; fire with its new value.
        """
        ...

    def hold(self, key: str, holder: str, limit: int, expiresAt: float) -> Deferred[bool]:
        """
        Take one of the C{limit} leases C{key} has, as C{holder}, until
        C{expiresAt}, atomically: fire with whether one was free (expired
        leases are free).
        """
        ...

    def renew(self, key: str, holder: str, expiresAt: float) -> Deferred[None]:
        """
        Move the expiry of C{holder}'s lease on C{key}.
        """
        ...

    def held(self, key: str) -> Deferred[int]:
        """
        How many leases on C{key} are held (unexpired) now.
        """
        ...

    def letGo(self, key: str, holder: str) -> Deferred[None]:
        """
        Give back C{holder}'s lease on C{key}.
        """
        ...


@attrs.define
class MemoryCounters:
    """
    L{Counters} in this process (C{--store none} or C{memory}).
    """

    clock: IReactorTime
    _values: dict[str, tuple[float, float]] = attrs.field(factory=dict)
    _leases: dict[str, dict[str, float]] = attrs.field(factory=dict)

    def _sweep(self, now: float) -> None:
        if len(self._values) > 1024:
            self._values = {k: v for k, v in self._values.items() if v[1] > now}

    def increment(self, key: str, amount: float, expiresAt: float) -> Deferred[float]:
        now = self.clock.seconds()
        self._sweep(now)
        value, expiry = self._values.get(key, (0.0, expiresAt))
        if expiry <= now:
            value = 0.0
        value += amount
        self._values[key] = (value, max(expiry, expiresAt))
        return succeed(value)

    def hold(self, key: str, holder: str, limit: int, expiresAt: float) -> Deferred[bool]:
        now = self.clock.seconds()
        leases = {h: e for h, e in self._leases.get(key, {}).items() if e > now}
        if len(leases) >= limit:
            self._leases[key] = leases
            return succeed(False)
        leases[holder] = expiresAt
        self._leases[key] = leases
        return succeed(True)

    def renew(self, key: str, holder: str, expiresAt: float) -> Deferred[None]:
        leases = self._leases.get(key, {})
        if holder in leases:
            leases[holder] = expiresAt
        return succeed(None)

    def letGo(self, key: str, holder: str) -> Deferred[None]:
        self._leases.get(key, {}).pop(holder, None)
        return succeed(None)

    def held(self, key: str) -> Deferred[int]:
        now = self.clock.seconds()
        return succeed(sum(1 for e in self._leases.get(key, {}).values() if e > now))


def _resetIn(seconds: float) -> bytes:
    return f"{max(0, math.ceil(seconds))}s".encode("ascii")


def _rfc3339(when: float) -> bytes:
    return (
        datetime.fromtimestamp(math.ceil(when), UTC).strftime("%Y-%m-%dT%H:%M:%SZ").encode("ascii")
    )


@attrs.define(eq=False)
class _Scope:
    """
    One thing whose limits a run counts against: a key or an agent.
    """

    kind: str  # "key" or "agent"
    name: str
    limits: Limits
    requests: float = 0.0
    tokens: float = 0.0
    cost: float = 0.0

    @property
    def counterName(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def who(self) -> str:
        """
        The scope in a client's message: the key or agent by name (a
        server without keys: "this server").
        """
        if self.kind == "key" and self.name == "-":
            return "this server"
        return f"the {self.kind} {self.name!r}"


def refusal(limit: str, message: str, retryAfter: float) -> AgentError:
    """
    A 429 for C{limit}: its message says which limit and when to retry.
    """
    return AgentError(
        message,
        429,
        ErrorKind.RATE_LIMIT,
        RATE_LIMIT_CODE,
        None,
        float(max(1, math.ceil(retryAfter))),
    )


@attrs.define(eq=False)
class Admission:
    """
    A run admitted by L{Quotas.admit}: what it spends is charged to the
    limits it counts against until L{release}.
    """

    quotas: Quotas | None
    scopes: list[_Scope] = attrs.field(factory=list)
    now: float = 0.0
    holder: str = ""
    key: str = ""
    agent: str = ""
    leases: list[str] = attrs.field(factory=list)
    _renewer: LoopingCall | None = None
    _released: bool = False

    @property
    def unlimited(self) -> bool:
        """
        Whether no limit applies (nothing is counted).
        """
        return not self.scopes

    def meter(self, events: EventSink) -> EventSink:
        """
        C{events}, with each L{Usage} event passed on and then charged
        (see L{charge}); the model of the call comes from the
        L{ModelAnswering} event before it.  C{events} itself when nothing
        is charged nor measured.
        """
        quotas = self.quotas
        if quotas is None or not (
            quotas.observer.metrics is not None
            or any(
                s.limits.tokensPerDay is not None or s.limits.costPerDay is not None
                for s in self.scopes
            )
        ):
            return events
        model: list[str | None] = [None]

        def metered(event: Event) -> None:
            if isinstance(event, ModelAnswering):
                model[0] = event.model
            elif isinstance(event, Usage):
                events(event)
                self.charge(event, model[0])
                return
            events(event)

        return metered

    def charge(self, usage: Usage, model: str | None) -> None:
        """
        Count C{usage} (of one LLM call of C{model}) and its cost against
        the run's daily budgets.

        @raise AgentError: a 429 (kind C{rate_limit}) once a budget is
            crossed, which ends the run in the API's own envelope.
        """
        quotas = self.quotas
        if quotas is None or self._released:
            return
        tokens = float(usage.totalTokens)
        price = callCost(model, usage, quotas.pricing()) if model is not None else None
        cost = price or 0.0
        now = quotas.reactor.seconds()
        dayEnd = _windowEnd(now, DAY)
        crossed: AgentError | None = None
        for scope in self.scopes:
            limits = scope.limits
            if limits.tokensPerDay is not None and tokens:
                scope.tokens += tokens
                quotas._add(f"tokens/{scope.counterName}", now, DAY, tokens).addCallback(
                    _raise, scope, "tokens"
                )
                if scope.tokens > limits.tokensPerDay and crossed is None:
                    crossed = quotas._refused(
                        self,
                        scope,
                        "tokensPerDay",
                        f"{scope.who} has used its {limits.tokensPerDay}"
                        " tokens for today; the run was stopped",
                        dayEnd - now,
                    )
            if limits.costPerDay is not None and cost:
                scope.cost += cost
                quotas._add(f"cost/{scope.counterName}", now, DAY, cost).addCallback(
                    _raise, scope, "cost"
                )
                if scope.cost > limits.costPerDay and crossed is None:
                    crossed = quotas._refused(
                        self,
                        scope,
                        "costPerDay",
                        f"{scope.who} has spent its"
                        f" {limits.costPerDay:g} USD for today; the run was stopped",
                        dayEnd - now,
                    )
        quotas.observer.limitCharged(self.key, self.agent, tokens, cost)
        if crossed is not None:
            raise crossed

    def release(self) -> None:
        """
        The run ended: give back its concurrent-runs leases.  Further calls
        do nothing.
        """
        if self._released:
            return
        self._released = True
        if self._renewer is not None and self._renewer.running:
            self._renewer.stop()
        if self.quotas is not None:
            for key in self.leases:
                self.quotas.counters.letGo(key, self.holder).addErrback(_logged, "release")

    def _renew(self) -> None:
        quotas = self.quotas
        assert quotas is not None
        expiresAt = quotas.reactor.seconds() + quotas.leaseTime
        for key in self.leases:
            quotas.counters.renew(key, self.holder, expiresAt).addErrback(_logged, "renew")

    def _scopeFor(self, kind: str) -> _Scope | None:
        # The key's scope first: its limits are what the client reads.
        for scope in self.scopes:
            if scope.kind == kind:
                return scope
        return None

    def headers(self, anthropic: bool = False) -> list[tuple[bytes, bytes]]:
        """
        The remaining budget, in OpenAI's C{x-ratelimit-*} headers, or
        Anthropic's C{anthropic-ratelimit-*} on the Messages API: of the
        tightest limit on requests and on tokens among the key's and the
        agent's.
        """
        if not self.scopes:
            return []
        requests = [s for s in self.scopes if s.limits.requestsPerMinute is not None]
        tokens = [s for s in self.scopes if s.limits.tokensPerDay is not None]
        found: list[tuple[bytes, bytes]] = []
        minuteEnd, dayEnd = _windowEnd(self.now, MINUTE), _windowEnd(self.now, DAY)
        for what, scopes, used, limitOf, end in (
            (b"requests", requests, "requests", "requestsPerMinute", minuteEnd),
            (b"tokens", tokens, "tokens", "tokensPerDay", dayEnd),
        ):
            if not scopes:
                continue
            tightest = min(scopes, key=lambda s: getattr(s.limits, limitOf) - getattr(s, used))
            limit = int(getattr(tightest.limits, limitOf))
            remaining = max(0, int(limit - getattr(tightest, used)))
            if anthropic:
                prefix = b"anthropic-ratelimit-" + what
                found += [
                    (prefix + b"-limit", str(limit).encode("ascii")),
                    (prefix + b"-remaining", str(remaining).encode("ascii")),
                    (prefix + b"-reset", _rfc3339(end)),
                ]
            else:
                found += [
                    (b"x-ratelimit-limit-" + what, str(limit).encode("ascii")),
                    (b"x-ratelimit-remaining-" + what, str(remaining).encode("ascii")),
                    (b"x-ratelimit-reset-" + what, _resetIn(end - self.now)),
                ]
        return found


def _raise(total: float, scope: _Scope, field: str) -> None:
    # What every instance spent, as the shared counter says: never below
    # what this process counted itself.
    setattr(scope, field, max(getattr(scope, field), total))


def _logged(failure: Any, what: str) -> None:
    log.warn(
        "limits: could not {what} a concurrent-runs lease: {error}",
        what=what,
        error=failure.getErrorMessage(),
    )


def _windowEnd(now: float, window: float) -> float:
    return (math.floor(now / window) + 1) * window


@attrs.define(eq=False)
class Quotas:
    """
    Admits runs within their key's and agent's limits.

    @ivar reactor: the clock of the minute and day windows and the leases.
    @ivar counters: where counts are kept.
    @ivar config: the limits now (read at each admission, so a reload
        applies to the next request).
    @ivar pricing: the prices now, for the cost of each call.
    @ivar leaseTime: seconds a concurrent-runs lease lasts unless renewed.
    """

    reactor: IReactorTime
    counters: Counters
    config: Callable[[], LimitsConfig]
    pricing: Callable[[], Mapping[str, Pricing]] = lambda: {}
    observer: Observer = NULL_OBSERVER
    leaseTime: float = LEASE_TIME

    def _add(self, name: str, now: float, window: float, amount: float) -> Deferred[float]:
        index = int(math.floor(now / window))
        end = _windowEnd(now, window)
        # Kept a window longer than it counts, so a late reader still finds it.
        return self.counters.increment(f"{name}/{index}", amount, end + window)

    def _refused(
        self, admission: Admission, scope: _Scope, limit: str, message: str, retryAfter: float
    ) -> AgentError:
        self.observer.limitRefused(admission.key, admission.agent, limit)
        log.info(
            "limits: {kind} {name} over {limit}",
            kind=scope.kind,
            name=scope.name,
            limit=limit,
        )
        return refusal(limit, message, retryAfter)

    def scopes(self, principal: Principal, agent: str) -> list[_Scope]:
        """
        The key's and the agent's limits that apply to a run (none: empty).
        """
        config = self.config()
        if config.empty:
            return []
        found = []
        forKey = config.forKey(principal.name)
        if not forKey.empty:
            found.append(_Scope("key", principal.name or "-", forKey))
        forAgent = config.forAgent(agent)
        if not forAgent.empty:
            found.append(_Scope("agent", agent, forAgent))
        return found

    def usage(self, principal: Principal) -> Deferred[dict[str, Any]]:
        """
        What C{principal} may see of its own limits: its limits, and its
        requests this minute, runs now, tokens and cost today (never
        another key's, nor the agents' shared counts).
        """
        return Deferred.fromCoroutine(self._usage(principal))

    async def _usage(self, principal: Principal) -> dict[str, Any]:
        limits = self.config().forKey(principal.name)
        name = f"key/{principal.name or '-'}"
        now = self.reactor.seconds()
        used: dict[str, Any] = {
            "requestsThisMinute": None,
            "concurrentRuns": None,
            "tokensToday": None,
            "costToday": None,
        }
        if limits.requestsPerMinute is not None:
            used["requestsThisMinute"] = int(await self._add(f"requests/{name}", now, MINUTE, 0))
        if limits.concurrentRuns is not None:
            used["concurrentRuns"] = await self.counters.held(f"runs/{name}")
        if limits.tokensPerDay is not None:
            used["tokensToday"] = int(await self._add(f"tokens/{name}", now, DAY, 0))
        if limits.costPerDay is not None:
            used["costToday"] = round(await self._add(f"cost/{name}", now, DAY, 0), 6)
        return {
            "object": "limits",
            "key": principal.name or None,
            "limits": {limit: getattr(limits, limit) for limit in LIMIT_NAMES},
            "usage": used,
            "resets": {
                "minute": int(_windowEnd(now, MINUTE)),
                "day": int(_windowEnd(now, DAY)),
            },
        }

    def admit(
        self,
        principal: Principal,
        agent: str,
        onRefusal: Callable[[Admission], object] | None = None,
    ) -> Deferred[Admission]:
        """
        Count a request of C{principal} for C{agent}.

        @param onRefusal: told of the refused admission before the refusal
            (for its L{Admission.headers}: what is left, which is nothing).
        @return: a Deferred firing with the run's L{Admission} (release it
            when the run ends), or failing with a 429 L{AgentError} naming
            the limit reached.  Cancelling it gives back what it took.
        """
        scopes = self.scopes(principal, agent)
        if not scopes:
            # Nothing to count; with metrics on, what the run spends is
            # still told (no store is asked).
            if self.observer.metrics is None:
                return succeed(Admission(None))
            return succeed(Admission(self, [], key=principal.name, agent=agent))
        now = self.reactor.seconds()
        admission = Admission(self, scopes, now, uuid.uuid4().hex, principal.name, agent)

        async def admitting() -> Admission:
            try:
                return await self._admit(admission)
            except AgentError as error:
                if error.kind == ErrorKind.RATE_LIMIT and onRefusal is not None:
                    onRefusal(admission)
                raise

        return Deferred.fromCoroutine(admitting())

    async def _admit(self, admission: Admission) -> Admission:
        now, scopes = admission.now, admission.scopes
        minuteEnd, dayEnd = _windowEnd(now, MINUTE), _windowEnd(now, DAY)
        for scope in scopes:
            limits, who = scope.limits, scope.who
            if limits.requestsPerMinute is not None:
                scope.requests = await self._add(f"requests/{scope.counterName}", now, MINUTE, 1)
                if scope.requests > limits.requestsPerMinute:
                    raise self._refused(
                        admission,
                        scope,
                        "requestsPerMinute",
                        f"{who} is over its {limits.requestsPerMinute} requests per minute",
                        minuteEnd - now,
                    )
            if limits.tokensPerDay is not None:
                scope.tokens = await self._add(f"tokens/{scope.counterName}", now, DAY, 0)
                if scope.tokens >= limits.tokensPerDay:
                    raise self._refused(
                        admission,
                        scope,
                        "tokensPerDay",
                        f"{who} has used its {limits.tokensPerDay} tokens for today",
                        dayEnd - now,
                    )
            if limits.costPerDay is not None:
                scope.cost = await self._add(f"cost/{scope.counterName}", now, DAY, 0)
                if scope.cost >= limits.costPerDay:
                    raise self._refused(
                        admission,
                        scope,
                        "costPerDay",
                        f"{who} has spent its {limits.costPerDay:g} USD for today",
                        dayEnd - now,
                    )
        for scope in scopes:
            limit = scope.limits.concurrentRuns
            if limit is None:
                continue
            key = f"runs/{scope.counterName}"
            try:
                held = await self.counters.hold(key, admission.holder, limit, now + self.leaseTime)
            except BaseException:
                # Cancelled (the client went away) or failed: the lease may
                # have been taken all the same; give back every one.
                admission.leases.append(key)
                admission.release()
                raise
            if not held:
                admission.release()
                raise self._refused(
                    admission,
                    scope,
                    "concurrentRuns",
                    f"{scope.who} already has {limit} runs going",
                    1,
                )
            admission.leases.append(key)
        if admission.leases:
            renewer = LoopingCall(admission._renew)
            renewer.clock = self.reactor
            renewer.start(self.leaseTime / 3, now=False)
            admission._renewer = renewer
        return admission


__all__ = [
    "LIMIT_NAMES",
    "NO_LIMITS",
    "Admission",
    "Counters",
    "Limits",
    "LimitsConfig",
    "MemoryCounters",
    "Quotas",
    "refusal",
]
