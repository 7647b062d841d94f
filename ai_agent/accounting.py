# -*- test-case-name: tests.test_retry -*-
"""
What a run spent: the tokens of each LLM call, their cost from the optional
C{pricing} table, and one log line when the run ends.

A sub-agent runs through the same runner as its parent, so it has its own
L{RunAccount} and its own log line; the parent's line shows its own calls
and, separately, the total that includes its sub-agents.
"""

from __future__ import annotations

from typing import Mapping

import attrs
from twisted.logger import Logger

from ai_agent.config import Pricing
from ai_agent.events import Usage

log = Logger()

_MILLION = 1_000_000

#: The error of a call stopped by cancellation (the client left, shutdown).
CANCELLED = "cancelled"


def callCost(model: str, usage: Usage, pricing: Mapping[str, Pricing]) -> float | None:
    """
    The cost in USD of C{usage} tokens of C{model} (C{provider/model}), or
    L{None} when the model has no price.
    """
    price = pricing.get(model)
    if price is None:
        return None
    return (usage.promptTokens * price.prompt + usage.completionTokens * price.completion) / (
        _MILLION
    )


@attrs.frozen
class CallRecord:
    """
    One LLM call of a run.

    @ivar model: C{provider/model} as the agent names it.
    @ivar usage: its tokens (zero for a failed call).
    @ivar seconds: how long it took.
    @ivar error: the error code of a failed call, or L{None}.
    @ivar cost: its cost in USD, or L{None} when the model has no price.
    """

    model: str
    usage: Usage
    seconds: float
    error: str | None = None
    cost: float | None = None

    @property
    def ok(self) -> bool:
        """
        Whether the call answered.
        """
        return self.error is None


@attrs.frozen
class RunLabels:
    """
    Who asked for a run, as its log line names it: the request it serves
    and what chat UIs forward about the user (never a key).

    @ivar requestId: the id of the request (C{chatcmpl-…}, C{resp_…},
        C{msg_…}: each API's own).
    @ivar forwarded: user and chat headers, already made safe to log.
    """

    requestId: str
    stream: bool = False
    task: str | None = None
    user: str | None = None
    forwarded: Mapping[str, str] = attrs.field(factory=dict)

    def details(self) -> str:
        """
        The labels as C{; name value} text for the log line.
        """
        parts = [f"task {self.task}"] if self.task else []
        if self.user is not None:
            parts.append(f"user {self.user!r}")
        parts.extend(f"{name} {value!r}" for name, value in self.forwarded.items())
        return "".join(f"; {part}" for part in parts)


@attrs.define
class RunAccount:
    """
    The LLM calls of one run, filled by the session as they end.

    @ivar agent: the agent's name.
    @ivar started: when the run started (the reactor's clock).
    @ivar pricing: prices by C{provider/model}.
    @ivar traceId: the run's trace id when tracing, for its log line.
    """

    agent: str
    started: float
    pricing: Mapping[str, Pricing] = attrs.field(factory=dict, repr=False)
    calls: list[CallRecord] = attrs.field(factory=list)
    labels: RunLabels | None = None
    traceId: str | None = None

    def record(
        self, model: str, usage: Usage, seconds: float, error: str | None = None
    ) -> CallRecord:
        """
        Add one call.
        """
        if usage.totalTokens:
            cost = callCost(model, usage, self.pricing)
        elif error == CANCELLED:
            # Stopped mid-call: it may have spent tokens no one reported.
            cost = None
        else:
            cost = 0.0
        call = CallRecord(model, usage, seconds, error, cost)
        self.calls.append(call)
        log.debug(
            "agent {agent}: {model} call {outcome} in {seconds:.3f}s,"
            " {promptTokens}+{completionTokens} tokens",
            agent=self.agent,
            model=model,
            outcome="failed" if error else "answered",
            seconds=seconds,
            promptTokens=usage.promptTokens,
            completionTokens=usage.completionTokens,
            cost=cost,
        )
        return call

    @property
    def usage(self) -> Usage:
        """
        The tokens of every call of this run (sub-agents not included).
        """
        total = Usage()
        for call in self.calls:
            total = total + call.usage
        return total

    @property
    def models(self) -> tuple[str, ...]:
        """
        The models that answered, in the order they first did.
        """
        return tuple(dict.fromkeys(call.model for call in self.calls if call.ok))

    @property
    def cost(self) -> float | None:
        """
        The cost of this run's calls in USD, or L{None} when a call that
        spent tokens has no price.
        """
        total = 0.0
        for call in self.calls:
            if call.cost is None:
                return None
            total += call.cost
        return total

    def finish(self, outcome: str, now: float, total: Usage | None = None) -> None:
        """
        Log the run's one summary line.

        @param outcome: C{stop}, C{length}, C{cancelled}, or C{failed: <status> <code>}.
        @param now: the reactor's clock.
        @param total: the run's usage including its sub-agents, when known.
        """
        usage = self.usage
        cost = self.cost
        failures = sum(1 for call in self.calls if not call.ok)
        withSubAgents = ""
        if total is not None and total != usage:
            withSubAgents = f" ({total.promptTokens}+{total.completionTokens} with sub-agents)"
        labels = self.labels
        duration = now - self.started
        models = self.models
        modelList = ", ".join(models) or "none"
        calls = len(self.calls)
        costText = "unknown" if cost is None else f"${cost:.6f}"
        detailText = "" if labels is None else labels.details()
        traceText = "" if self.traceId is None else f"; trace {self.traceId}"
        head = (
            f"agent {self.agent} run"
            if labels is None
            else f"{labels.requestId} for agent {self.agent}"
        )
        # The line is made here, once: Twisted's formatter takes about
        # 40 µs on a format string of this many fields, an f-string 1 µs.
        # The fields stay in the event for the JSON log (and those starting
        # with "_" for the tests that read them).
        line = (
            f"{head} {outcome} in {duration:.3f}s: models {modelList},"
            f" {calls} calls ({failures} failed), tokens"
            f" {usage.promptTokens}+{usage.completionTokens}{withSubAgents},"
            f" cost {costText}{detailText}{traceText}"
        )
        log.info(
            "{_line}",
            _line=line,
            requestId=None if labels is None else labels.requestId,
            stream=None if labels is None else labels.stream,
            task=None if labels is None else labels.task,
            user=None if labels is None else labels.user,
            forwarded={} if labels is None else dict(labels.forwarded),
            _detailText=detailText,
            _traceText=traceText,
            traceId=self.traceId,
            agent=self.agent,
            outcome=outcome,
            duration=duration,
            models=models,
            _modelList=modelList,
            calls=calls,
            failures=failures,
            promptTokens=usage.promptTokens,
            completionTokens=usage.completionTokens,
            _withSubAgents=withSubAgents,
            totalTokens=(total or usage).totalTokens,
            cost=cost,
            _costText=costText,
        )


__all__ = ["CANCELLED", "CallRecord", "RunAccount", "RunLabels", "callCost"]
