# -*- test-case-name: tests.test_retry -*-
"""
What a run spent: the tokens of each LLM call, their cost from the optional
C{pricing} table, and one log line when the run ends.

A sub-agent runs through the same runner as its parent, so it has its own
L{RunAccount} and its own log line; the parent's line shows its own calls
and, separately, the total that includes its sub-agents.

A call cancelled while its model was streaming (the client left) never gets
the upstream's token counts, which come at the end; its tokens are estimated
from the characters it was sent and had streamed (L{StreamMeter},
L{estimateUsage}), and the log line says they are.
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence

import attrs

from ai_agent.config import Pricing
from ai_agent.events import Usage
from ai_agent.observe import DebugLogger
from ai_agent.providers._base import ChatMessage, DeltaSink, ToolSpec

#: Its debug line (one per LLM call) costs nothing when debug is not written.
log = DebugLogger()

_MILLION = 1_000_000

#: The error of a call stopped by cancellation (the client left, shutdown).
CANCELLED = "cancelled"

#: Characters per token, for estimating what a cancelled call spent (the
#: usual rule of thumb for English text with OpenAI's and similar
#: tokenizers).
CHARS_PER_TOKEN = 4


@attrs.define
class StreamMeter:
    """
    A L{DeltaSink} in front of C{sink} that counts the characters of answer
    text and reasoning a call streamed.
    """

    sink: DeltaSink
    characters: int = 0

    def content(self, text: str) -> None:
        self.characters += len(text)
        self.sink.content(text)

    def reasoning(self, text: str) -> None:
        self.characters += len(text)
        self.sink.reasoning(text)


def _tokens(characters: int) -> int:
    return -(-characters // CHARS_PER_TOKEN)


def estimateUsage(
    messages: Sequence[ChatMessage], tools: Sequence[ToolSpec], streamed: int
) -> Usage:
    """
    An estimate of the tokens of a call that was sent C{messages} and
    C{tools} and streamed C{streamed} characters before it was cancelled:
    L{CHARS_PER_TOKEN} characters a token.
    """
    sent = sum(len(m.content) + sum(len(c.arguments) for c in m.toolCalls) for m in messages)
    sent += sum(len(json.dumps(tool.asOpenAI())) for tool in tools)
    return Usage(promptTokens=_tokens(sent), completionTokens=_tokens(streamed))


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
    @ivar estimated: whether C{usage} (and so C{cost}) is an estimate: a
        call cancelled after its model had streamed part of an answer.
    """

    model: str
    usage: Usage
    seconds: float
    error: str | None = None
    cost: float | None = None
    estimated: bool = False

    @property
    def ok(self) -> bool:
        """
        Whether the call answered.
        """
        return self.error is None

    @property
    def answering(self) -> bool:
        """
        Whether the model answered, wholly or (cancelled mid-answer) in part.
        """
        return self.ok or self.estimated


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
        self,
        model: str,
        usage: Usage,
        seconds: float,
        error: str | None = None,
        estimated: bool = False,
    ) -> CallRecord:
        """
        Add one call (C{estimated} when C{usage} is an estimate, see
        L{estimateUsage}).
        """
        if usage.totalTokens:
            cost = callCost(model, usage, self.pricing)
        elif error == CANCELLED:
            # Stopped mid-call: it may have spent tokens no one reported.
            cost = None
        else:
            cost = 0.0
        call = CallRecord(model, usage, seconds, error, cost, estimated)
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
        The models that answered (a cancelled call that had streamed part of
        an answer included), in the order they first did.
        """
        return tuple(dict.fromkeys(call.model for call in self.calls if call.answering))

    @property
    def estimated(self) -> bool:
        """
        Whether some of the tokens (and the cost) are estimates.
        """
        return any(call.estimated for call in self.calls)

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
        estimated = self.estimated
        costText = "unknown" if cost is None else f"{'~' if estimated else ''}${cost:.6f}"
        estimateText = " (estimated: cancelled mid-answer)" if estimated else ""
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
            f" {usage.promptTokens}+{usage.completionTokens}{withSubAgents}{estimateText},"
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
            estimated=estimated,
            _estimateText=estimateText,
            cost=cost,
            _costText=costText,
        )


__all__ = [
    "CANCELLED",
    "CHARS_PER_TOKEN",
    "CallRecord",
    "RunAccount",
    "RunLabels",
    "StreamMeter",
    "callCost",
    "estimateUsage",
]
