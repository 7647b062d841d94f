# -*- test-case-name: tests.test_retry -*-
"""
The retry and fallback policy of one LLM turn.

A turn makes up to C{attempts} calls; call I{i} goes to C{targets[i % n]}
(the agent's C{models}, in order, wrapping).  After a failure:

  - a model whose provider is not configured (its key variable is unset)
    is dropped from the rotation without using up an attempt, as long as
    another model is left; the last one left fails the turn with that error;
  - a failure that is not retryable (the request or the key was rejected)
    ends the turn at once with that error;
  - so does any failure once something of the turn reached the client
    (C{mayRetry} says so): the headend then reports it in-band;
  - otherwise the next target is tried.  Before a new rotation through the
    targets begins (with one target, before every retry) the turn waits a
    jittered exponential backoff; before calling a target that answered 429
    with C{Retry-After}, it waits until that time has passed.  Every wait is
    capped at L{RetryPolicy.maxWait} and is cancellable.  A target whose
    C{Retry-After} is longer than C{maxWait} is not called again in the
    turn; when no other target is left, the turn gives up at once with a
    429 passing the upstream's wait on, rather than waiting in vain.

When every attempt failed, the turn fails with L{exhausted}: a 429 with
C{Retry-After} when every attempt was rate-limited, a 504 when every attempt
timed out, else a 502; the message is the last failure's (it names the
provider, the model and the upstream status, never the key).
"""

from __future__ import annotations

import random as _random
from typing import Awaitable, Callable, Sequence, TypeVar, cast
from typing import Protocol as TypingProtocol

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from ai_agent.errors import ProviderError

log = Logger()

T = TypeVar("T")

#: The code of a failure meaning the provider cannot be used at all (a key
#: variable is unset): its models are skipped in favour of the next ones.
NOT_CONFIGURED = "provider_not_configured"

TOTAL_TIMEOUT_FACTOR = 10
"""
A call's total deadline is this many times its silence timeout...
"""

MIN_TOTAL_TIMEOUT = 600.0
"""
... and never less than this many seconds.
"""


def totalTimeout(llmTimeout: float) -> float:
    """
    The total deadline of one LLM call whose silence timeout is
    C{llmTimeout}: C{max(10 × llmTimeout, 600 s)}.
    """
    return max(TOTAL_TIMEOUT_FACTOR * llmTimeout, MIN_TOTAL_TIMEOUT)


class _Clock(TypingProtocol):
    def seconds(self) -> float: ...


@attrs.frozen
class RetryPolicy:
    """
    How long a turn waits between attempts.

    @ivar baseDelay: the backoff before the second rotation, in seconds;
        it doubles with each rotation after that.
    @ivar maxDelay: the most backoff, in seconds.
    @ivar maxWait: the most any single wait lasts, in seconds, C{Retry-After}
        included.
    """

    baseDelay: float = 1.0
    maxDelay: float = 30.0
    maxWait: float = 60.0

    def backoff(self, rotation: int, random: Callable[[], float]) -> float:
        """
        The wait before rotation number C{rotation} (1 for the first
        rotation after the one that failed): a ceiling of C{baseDelay ×
        2^(rotation-1)}, capped at C{maxDelay}, jittered to between half of
        it and all of it.

        @param random: returns a float in M{[0, 1)}.
        """
        ceiling = min(self.maxDelay, self.baseDelay * 2 ** max(rotation - 1, 0))
        return ceiling / 2 + random() * ceiling / 2


def exhausted(errors: Sequence[ProviderError], retryAfter: float | None = None) -> ProviderError:
    """
    The error of a turn whose every attempt failed retryably.

    @param errors: the failures, in order (at least one).
    @param retryAfter: seconds until a rate-limited target may be called
        again, for the 429 answer.
    @return: the last error when its status already fits, else a copy of it
        with the status (and C{Retry-After}) the turn answers with.
    """
    last = errors[-1]
    if all(error.status == 429 for error in errors):
        status, code = 429, "upstream_rate_limited"
        retryAfter = max(1.0, retryAfter if retryAfter is not None else last.retryAfter or 1.0)
    elif all(error.status == 504 for error in errors):
        status, code, retryAfter = 504, "upstream_timeout", None
    else:
        status, code, retryAfter = 502, last.code or "upstream_error", None
    if last.status == status and last.retryAfter == retryAfter:
        return last
    return ProviderError(
        last.message,
        status=status,
        code=code,
        retryable=False,
        upstreamStatus=last.upstreamStatus,
        retryAfter=retryAfter,
    )


@attrs.define(eq=False)
class RetryLoop:
    """
    Runs one turn's attempts under a L{RetryPolicy}.

    @ivar reactor: schedules the waits.
    @ivar random: the jitter's random source (returns a float in M{[0, 1)}).
    @ivar onFailure: told of each failed attempt: the target, the attempt
        number (from 1), the error, and whether another attempt follows.
    @ivar onWait: told of each wait: the target about to be called and the
        seconds.
    """

    reactor: IReactorTime
    policy: RetryPolicy = RetryPolicy()
    random: Callable[[], float] = _random.random
    onFailure: Callable[[str, int, ProviderError, bool], None] = lambda *args: None
    onWait: Callable[[str, float], None] = lambda target, seconds: None

    async def run(
        self,
        targets: Sequence[str],
        attempts: int,
        call: Callable[[str], Awaitable[T]],
        mayRetry: Callable[[], bool] = lambda: True,
    ) -> T:
        """
        Call C{call(target)} until one succeeds, following the policy.

        @param targets: the targets in order (at least one).
        @param attempts: the most calls (at least one is made).
        @param mayRetry: whether a failure may still be retried; checked
            after each failure.
        @raise ProviderError: the failure that ended the turn, or
            L{exhausted}'s.
        """
        clock = cast(_Clock, self.reactor)
        attempts = max(attempts, 1)
        # Made only once an attempt failed: most turns succeed at once.
        notBefore: dict[str, float] | None = None
        errors: list[ProviderError] | None = None
        usable: Sequence[str] | list[str] = targets
        index = 0
        while index < attempts:
            target = usable[index % len(usable)]
            wait = 0.0
            if index and index % len(usable) == 0:
                wait = self.policy.backoff(index // len(usable), self.random)
            if notBefore is not None and target in notBefore:
                wait = max(wait, notBefore[target] - clock.seconds())
            wait = min(wait, self.policy.maxWait)
            if wait > 0:
                self.onWait(target, wait)
                await _sleep(self.reactor, wait)
            try:
                return await call(target)
            except CancelledError:
                raise
            except ProviderError as error:
                if error.code == NOT_CONFIGURED and len(usable) > 1:
                    # A model whose provider has no key is skipped, not
                    # retried: the next model is the fallback.
                    usable = list(usable)
                    usable.remove(target)
                    self.onFailure(target, index + 1, error, True)
                    continue
                if errors is None:
                    errors = []
                errors.append(error)
                index += 1
                final = index == attempts or not error.retryable or not mayRetry()
                self.onFailure(target, index, error, not final)
                if not error.retryable or not mayRetry():
                    raise
                if error.retryAfter is not None:
                    if notBefore is None:
                        notBefore = {}
                    notBefore[target] = clock.seconds() + error.retryAfter
                    if error.retryAfter > self.policy.maxWait:
                        # Longer than this turn may wait: never call it again
                        # in this turn, and give up at once if it was the last.
                        usable = list(usable)
                        usable.remove(target)
                        if not usable:
                            break
        assert errors is not None
        now = clock.seconds()
        remaining = [when - now for when in (notBefore or {}).values()]
        raise exhausted(errors, min(remaining) if remaining else None)


def _sleep(reactor: IReactorTime, seconds: float) -> Deferred[None]:
    """
    Fire after C{seconds}; cancelling it cancels the timer.
    """
    return deferLater(reactor, seconds, lambda: None)


__all__ = [
    "MIN_TOTAL_TIMEOUT",
    "RetryLoop",
    "RetryPolicy",
    "TOTAL_TIMEOUT_FACTOR",
    "exhausted",
    "totalTimeout",
]
