# -*- test-case-name: tests.test_http_guard -*-
"""
Refusals in the server's log: every 4xx a client is answered with — by the
HTTP guard (a missing key, a body too large, malformed HTTP) or by an API's
routes (a bad field, an unknown model) — becomes one line at the default
level, with the route, the status, the error code and the reason, so an
operator sees why a client is failing without reading the access log.

A client sending the same bad request in a loop must not flood the log:
each reason (status and code) has a token bucket on the injected clock;
past its burst, lines of that reason are dropped and counted, and the next
line written for it says how many were left out.
"""

from __future__ import annotations

from typing import Sequence

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ai_agent.errors import AgentError
from ai_agent.tasks import loggable

log = Logger()

#: The longest route and reason kept in a refusal's line.
MAX_ROUTE = 120
MAX_REASON = 300

#: Presented keys shorter than this are not taken out of a reason.
MIN_SECRET = 8

#: Distinct reasons tracked at once; past that the oldest is forgotten (a
#: forgotten reason starts again with a full bucket).
MAX_REASONS = 256


@attrs.define
class _Bucket:
    tokens: float
    updated: float
    dropped: int = 0


@attrs.define
class RefusalLog:
    """
    Writes one line per refused request, rate-limited per reason.

    @ivar clock: the time source of the buckets.
    @ivar burst: lines of one reason written back to back before limiting.
    @ivar perSecond: lines of one reason allowed per second after the burst.
    """

    clock: IReactorTime
    burst: int = 5
    perSecond: float = 0.2
    _buckets: dict[tuple[int, str], _Bucket] = attrs.field(factory=dict, init=False)

    def refused(
        self,
        method: bytes | str,
        route: bytes | str,
        error: AgentError,
        secrets: Sequence[str] = (),
    ) -> bool:
        """
        Log that a request for C{route} (a path without its query, or a
        path template) with C{method} was answered with C{error}, unless
        its reason is over its rate.  Only 4xx errors are logged here: a
        5xx is the server's failure and logged where it happens.

        @param secrets: strings taken out of the reason (the key the
            request presented), should the message echo one; those shorter
            than L{MIN_SECRET} characters are left.

        @return: whether a line was written.
        """
        if not 400 <= error.status < 500:
            return False
        code = error.code or error.kind
        bucket = self._take((error.status, code))
        if bucket is None:
            return False
        dropped, bucket.dropped = bucket.dropped, 0
        reason = error.message
        for secret in secrets:
            # Shorter strings are no secret, and would garble the reason.
            if len(secret) >= MIN_SECRET:
                reason = reason.replace(secret, "***")
        log.info(
            "refused {method} {route}: {status} {code}: {reason}{dropped_note}",
            method=loggable(_text(method), 16),
            route=loggable(_text(route), MAX_ROUTE),
            status=error.status,
            code=loggable(code, 64),
            reason=loggable(reason, MAX_REASON),
            dropped=dropped,
            dropped_note=f" ({dropped} more like it not logged)" if dropped else "",
        )
        return True

    def _take(self, reason: tuple[int, str]) -> _Bucket | None:
        """
        The bucket of C{reason} with one token taken, or L{None} (and the
        refusal counted as dropped) when it has none left.
        """
        now = self.clock.seconds()
        bucket = self._buckets.get(reason)
        if bucket is None:
            if len(self._buckets) >= MAX_REASONS:
                del self._buckets[next(iter(self._buckets))]
            bucket = self._buckets[reason] = _Bucket(float(self.burst), now)
        else:
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.perSecond)
            bucket.updated = now
        if bucket.tokens < 1.0:
            bucket.dropped += 1
            return None
        bucket.tokens -= 1.0
        return bucket


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


__all__ = ["RefusalLog"]
