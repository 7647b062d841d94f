# -*- test-case-name: tests.test_answer_limits,tests.test_tool_limits -*-
"""
Bounds on what one model turn can make the server do: how many of its tool
calls run, and how many sub-agent runs the whole server has in flight.

A model may ask for thousands of calls in one turn (a prompt injection
will); each is a real MCP call or a whole child run with its own upstream
calls.  The agent file bounds the calls per turn (C{maxToolCallsPerTurn})
and how many run at once (C{maxConcurrentTools}); a L{SubAgentLimiter}
shared by the server bounds sub-agent runs across every request, so one
request cannot multiply itself past the port's concurrency.
"""

from __future__ import annotations

from contextvars import copy_context
from typing import Any, Callable, Sequence, TypeVar

import attrs
from twisted.internet.defer import Deferred, DeferredSemaphore, maybeDeferred
from twisted.internet.interfaces import IReactorTime

from ai_agent.agentfile import AgentSpec
from ai_agent.errors import AgentError, ErrorKind
from ai_agent.events import (
    AdvisorProgress,
    ContentDelta,
    Event,
    EventSink,
    ExtractionProgress,
    HandoffProgress,
    ReasoningDelta,
    Retrying,
    SubAgentProgress,
    ToolFinished,
    ToolStarted,
)
from ai_agent.providers import ChatMessage, ToolCall

T = TypeVar("T")

#: The most sub-agent runs in flight in one server process, by default.
MAX_SUBAGENT_RUNS = 16

#: The most characters of answer text, reasoning and progress one run may
#: send its client.
MAX_RUN_ANSWER = 8 * 1024 * 1024


def boundedCalls(
    agent: AgentSpec, calls: Sequence[ToolCall], events: EventSink
) -> tuple[list[ToolCall], list[ChatMessage]]:
    """
    Split a turn's tool calls into those that run (the first
    C{agent.maxToolCallsPerTurn}) and the C{tool} messages answering the
    rest, which tell the model they were not run and why.
    """
    limit = agent.maxToolCallsPerTurn
    if len(calls) <= limit:
        return list(calls), []
    text = (
        f"error: not run: this turn asked for {len(calls)} tool calls and at most {limit}"
        " run per turn; ask again for the ones still needed"
    )
    refused = calls[limit:]
    _tellOnce(refused, text, events)
    return list(calls[:limit]), [ChatMessage("tool", text, toolCallId=call.id) for call in refused]


def _tellOnce(calls: Sequence[ToolCall], text: str, events: EventSink) -> None:
    """
    Progress for calls that were not run: one L{ToolFinished} per tool name
    (a model may ask for thousands of calls), carrying why.
    """
    seen: set[str] = set()
    for call in calls:
        if call.name not in seen:
            seen.add(call.name)
            events(ToolFinished(call.name, text, call.id))


def noToolsExchange(response: Any, toolbox: Any, events: EventSink) -> list[ChatMessage]:
    """
    The messages that tell a model which was offered no tools (the agent has
    none, or their servers are down) that the tools it called are not
    available, as plain text: a conversation holding tool calls must offer
    tools on some APIs.
    """
    names = ", ".join(sorted({call.name for call in response.toolCalls}))
    unavailable = getattr(toolbox, "unavailable", None) or {}
    if unavailable:
        why = "; ".join(f"{server}: {reason}" for server, reason in sorted(unavailable.items()))
        reason = f"its tools are unavailable right now ({why})"
    else:
        reason = "this agent has no tools"
    _tellOnce(response.toolCalls, f"error: not run: {reason}", events)
    note = (
        f"[The tool calls you made ({names}) were not run: {reason}."
        " Answer with what you know, without calling tools.]"
    )
    said = response.content or f"(calling {names})"
    return [ChatMessage("assistant", said), ChatMessage("user", note)]


@attrs.define(eq=False)
class SubAgentLimiter:
    """
    A server-wide bound on sub-agent runs in flight; a run waits a bounded
    time for a place, then its tool call fails with a message the model
    reads.

    @ivar limit: the most sub-agent runs at once.
    """

    reactor: IReactorTime
    limit: int = MAX_SUBAGENT_RUNS
    _semaphore: DeferredSemaphore = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._semaphore = DeferredSemaphore(self.limit)

    @property
    def running(self) -> int:
        """
        Sub-agent runs holding a place now.
        """
        return self.limit - self._semaphore.tokens

    def run(self, wait: float, f: Callable[..., Deferred[T]], *args: Any) -> Deferred[T]:
        """
        Call C{f(*args)} once a place is free, holding it until the result
        fires; fail with L{AgentError} when none frees within C{wait}
        seconds.  Cancelling the result while it waits leaves the queue;
        while it runs, cancels C{f}'s Deferred.
        """
        state: dict[str, Any] = {}

        def cancel(_: Deferred[T]) -> None:
            state["cancelled"] = True
            if timer.active():
                timer.cancel()
            running = state.get("running")
            if running is not None:
                running.cancel()
            else:
                acquiring.cancel()

        result: Deferred[T] = Deferred(canceller=cancel)
        # The run starts from whatever frees a place: in this caller's
        # context, not that one (see ai_agent.flow).
        context = copy_context()
        acquiring = self._semaphore.acquire()
        timer = self.reactor.callLater(wait, acquiring.cancel)

        def release(outcome: Any) -> Any:
            self._semaphore.release()
            return outcome

        def acquired(_: Any) -> None:
            if timer.active():
                timer.cancel()
            running = context.run(maybeDeferred, f, *args)
            state["running"] = running
            running.addBoth(release).chainDeferred(result)

        def notAcquired(failure: Any) -> None:
            if state.get("cancelled"):
                # The caller cancelled: Deferred.cancel fails the result.
                return
            result.errback(
                AgentError(
                    f"the server is running its most sub-agents ({self.limit}); none"
                    f" finished within {wait:g} s: try again later or without a sub-agent"
                )
            )

        acquiring.addCallbacks(acquired, notAcquired)
        return result


@attrs.define(eq=False)
class AnswerCap:
    """
    An event sink passing a run's events on until its answer text,
    reasoning and progress together pass L{limit} characters; then it calls
    L{onOver} once and drops the rest.  The headend stops the run there
    with L{error}.
    """

    sink: EventSink
    limit: int = MAX_RUN_ANSWER
    onOver: Callable[[], None] = lambda: None
    size: int = attrs.field(default=0, init=False)
    over: bool = attrs.field(default=False, init=False)

    def __call__(self, event: Event) -> None:
        if self.over:
            return
        size = _size(event)
        if size:
            self.size += size
            if self.size > self.limit:
                self.over = True
                self.onOver()
                return
        self.sink(event)

    def error(self) -> AgentError:
        """
        The error the run ends with.
        """
        return AgentError(
            f"the answer grew past {self.limit} characters; the run was stopped",
            502,
            ErrorKind.SERVER,
            "answer_too_large",
        )


def _size(event: Event) -> int:
    """
    About how many characters C{event} makes a client receive.
    """
    if isinstance(event, (ContentDelta, ReasoningDelta)):
        return len(event.text)
    if isinstance(event, ToolStarted):
        return len(event.name) + len(event.arguments)
    if isinstance(event, ToolFinished):
        return len(event.name) + len(event.result)
    if isinstance(event, Retrying):
        return len(event.model) + len(event.reason)
    if isinstance(event, SubAgentProgress):
        return len(event.agent) + _size(event.event)
    if isinstance(event, AdvisorProgress):
        return len(event.agent) + len(event.error or "")
    if isinstance(event, HandoffProgress):
        return len(event.source) + len(event.target) + len(event.message)
    if isinstance(event, ExtractionProgress):
        return len(event.tool) + 16
    return 0


__all__ = [
    "MAX_RUN_ANSWER",
    "MAX_SUBAGENT_RUNS",
    "AnswerCap",
    "SubAgentLimiter",
    "boundedCalls",
    "noToolsExchange",
]
