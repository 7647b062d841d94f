# -*- test-case-name: tests.test_quotas -*-
"""
The configuration of limits per client key and per agent (C{"limits"} in
C{.ai-agent.json}, and each named key's own); L{ai_agent.quotas} enforces
them.  A module of its own so that L{ai_agent.config} can parse it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import attrs

#: The names a C{"limits"} object takes, in order.
LIMIT_NAMES = ("requestsPerMinute", "concurrentRuns", "tokensPerDay", "costPerDay")


def _positiveInt(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
    return value


def _positiveNumber(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a number above 0 (USD), got {value!r}")
    return float(value)


@attrs.frozen
class Limits:
    """
    The limits of one key or agent; L{None} for no limit.

    @ivar requestsPerMinute: requests admitted per clock minute (UTC); a
        refused request counts too.
    @ivar concurrentRuns: runs at once.
    @ivar tokensPerDay: input plus output tokens per UTC day.
    @ivar costPerDay: USD per UTC day, from the configured pricing.
    """

    requestsPerMinute: int | None = None
    concurrentRuns: int | None = None
    tokensPerDay: int | None = None
    costPerDay: float | None = None

    @property
    def empty(self) -> bool:
        """
        Whether no limit is set.
        """
        return all(getattr(self, name) is None for name in LIMIT_NAMES)

    def over(self, base: Limits) -> Limits:
        """
        These limits, with C{base}'s where these set none.
        """
        return Limits(
            *(
                getattr(base, name) if getattr(self, name) is None else getattr(self, name)
                for name in LIMIT_NAMES
            )
        )

    @classmethod
    def parse(cls, value: object) -> Limits:
        """
        Limits from their JSON object.

        @raise ValueError: naming an unknown limit or an invalid value.
        """
        if not isinstance(value, dict):
            raise ValueError("must be an object")
        unknown = [name for name in value if name not in LIMIT_NAMES]
        if unknown:
            raise ValueError(f"unknown limit {unknown[0]!r} (known: {', '.join(LIMIT_NAMES)})")
        return cls(
            requestsPerMinute=_optional(value, "requestsPerMinute", _positiveInt),
            concurrentRuns=_optional(value, "concurrentRuns", _positiveInt),
            tokensPerDay=_optional(value, "tokensPerDay", _positiveInt),
            costPerDay=_optional(value, "costPerDay", _positiveNumber),
        )


def _optional(value: Mapping[str, Any], name: str, check: Callable[[str, object], Any]) -> Any:
    found = value.get(name)
    return None if found is None else check(name, found)


NO_LIMITS = Limits()


@attrs.frozen
class LimitsConfig:
    """
    Every configured limit.

    @ivar default: what every key gets for the limits its entry does not set.
    @ivar agents: by model id: limits on all keys together.
    @ivar keys: by key name: the key's own limits.
    """

    default: Limits = NO_LIMITS
    agents: Mapping[str, Limits] = attrs.field(factory=dict)
    keys: Mapping[str, Limits] = attrs.field(factory=dict)

    @property
    def empty(self) -> bool:
        """
        Whether no limit is configured at all.
        """
        return (
            self.default.empty
            and all(limits.empty for limits in self.agents.values())
            and all(limits.empty for limits in self.keys.values())
        )

    def forKey(self, name: str) -> Limits:
        """
        The limits of the key named C{name} (its own over the defaults).
        """
        return self.keys.get(name, NO_LIMITS).over(self.default)

    def forAgent(self, agent: str) -> Limits:
        """
        The limits shared by every key on the agent C{agent}.
        """
        return self.agents.get(agent, NO_LIMITS)


__all__ = ["LIMIT_NAMES", "NO_LIMITS", "Limits", "LimitsConfig"]
