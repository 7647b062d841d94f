# -*- test-case-name: tests.test_session,tests.test_events -*-
"""
The values a running agent emits, in no API's words.  Every headend encodes
these; the session knows nothing about HTTP.

A run emits answer text (L{ContentDelta}), the model's own reasoning
(L{ReasoningDelta}), the agent's progress as data (L{ToolStarted},
L{ToolFinished}, L{Retrying}, advisors (L{AdvisorProgress}), routing and
handoff (L{HandoffProgress}), the C{tool_output} extraction pass
(L{ExtractionProgress}), and a sub-agent's progress inside
L{SubAgentProgress}), the calls of the client's own tools it hands back
(L{ClientToolCall}), token L{Usage} increments, and ends with L{Finished}.
Encoders that show progress as text share L{progressText} and
L{ReasoningText}, so every API words it the same way.
"""

from __future__ import annotations

import json
from typing import Callable

import attrs


@attrs.frozen
class ContentDelta:
    """
    A piece of the answer.
    """

    text: str


@attrs.frozen
class ReasoningDelta:
    """
    A piece of the model's own reasoning; never part of the answer.
    """

    text: str


@attrs.frozen
class ToolStarted:
    """
    The agent called one of its own tools (an MCP tool or a sub-agent).

    @ivar arguments: the arguments as the model wrote them (JSON text).
    """

    name: str
    arguments: str
    callId: str = ""


@attrs.frozen
class ToolFinished:
    """
    One of the agent's own tools answered (or failed: C{result} is then the
    error text the model reads).
    """

    name: str
    result: str
    callId: str = ""


@attrs.frozen
class Retrying:
    """
    An LLM call failed and the turn is tried again (the same or the next
    model), or a model was passed over without a call (C{skipped}: its
    provider is not configured).

    @ivar reason: why, in words a client may read (C{not configured},
        C{unreachable}, C{refused: 401}; see
        L{ai_agent.advice.clientReason}): no environment variable, host,
        port, path or address.
    @ivar detail: the whole error for the operator (naming the variable to
        set or the address that refused), shown by direct mode on its
        terminal; the server's log has it too, and no headend sends it.
    """

    model: str
    reason: str
    skipped: bool = False
    detail: str = ""


@attrs.frozen
class AdvisorProgress:
    """
    An advisor of the agent (its C{advisors}) started, answered, or failed
    (C{error}: why; the agent goes on with a note saying so).

    @ivar agent: the advisor's name.
    """

    agent: str
    finished: bool = False
    error: str | None = None


@attrs.frozen
class HandoffProgress:
    """
    The conversation went from one agent to another: C{kind} C{router}
    when a router chose C{target} (with the router's C{message} for it, if
    any), C{handoff} when C{source}'s answer went to its C{handoff} agent.
    """

    source: str
    target: str
    kind: str
    message: str = ""


@attrs.frozen
class ExtractionProgress:
    """
    The C{tool_output} tool asked a model to extract what the agent wants
    from one chunk of a kept tool result.

    @ivar tool: the tool whose result is read.
    @ivar chunk: which chunk (1, 2, ...) of C{chunks}.
    """

    tool: str
    chunk: int
    chunks: int


@attrs.frozen
class SubAgentProgress:
    """
    Something a sub-agent's run did, seen from its parent.

    @ivar agent: the sub-agent's tool name (C{agent__name}).
    @ivar event: the child's progress, or one whole line of its model's
        reasoning (a L{ReasoningDelta} ending with a newline).
    """

    agent: str
    event: Progress | ReasoningDelta


@attrs.frozen
class ClientToolCall:
    """
    The model called one of the client's own tools: the run ends handing
    the call back to the client (with L{FinishReason.TOOL_CALLS}).

    @ivar index: the call's position among those handed back (0, 1, ...).
    @ivar arguments: the arguments as the model wrote them (JSON text).
    """

    index: int
    id: str
    name: str
    arguments: str


Progress = (
    ToolStarted
    | ToolFinished
    | Retrying
    | SubAgentProgress
    | AdvisorProgress
    | HandoffProgress
    | ExtractionProgress
)
PROGRESS_TYPES = (
    ToolStarted,
    ToolFinished,
    Retrying,
    SubAgentProgress,
    AdvisorProgress,
    HandoffProgress,
    ExtractionProgress,
)


@attrs.frozen
class Usage:
    """
    Token counts of one or more LLM calls.

    @ivar promptTokens: every input token, cached ones included.
    @ivar completionTokens: every output token, reasoning included.
    @ivar cacheReadTokens: input tokens read from the provider's cache.
    @ivar cacheWriteTokens: input tokens written to the provider's cache.
    @ivar reasoningTokens: output tokens spent on reasoning.
    """

    promptTokens: int = 0
    completionTokens: int = 0
    cacheReadTokens: int = 0
    cacheWriteTokens: int = 0
    reasoningTokens: int = 0

    @property
    def totalTokens(self) -> int:
        """
        Prompt plus completion tokens.
        """
        return self.promptTokens + self.completionTokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.promptTokens + other.promptTokens,
            self.completionTokens + other.completionTokens,
            self.cacheReadTokens + other.cacheReadTokens,
            self.cacheWriteTokens + other.cacheWriteTokens,
            self.reasoningTokens + other.reasoningTokens,
        )


class FinishReason:
    """
    Why a run or an LLM call ended, in words no API owns.
    """

    #: The model finished its answer.
    END = "end"
    #: The output token limit cut the answer.
    MAX_TOKENS = "max_tokens"
    #: A client's stop sequence ended the answer.
    STOP_SEQUENCE = "stop_sequence"
    #: The model called tools (for a run: the client's, handed back).
    TOOL_CALLS = "tool_calls"
    #: The provider withheld or cut the answer.
    CONTENT_FILTER = "content_filter"


@attrs.frozen
class Finished:
    """
    The run ended with an answer.

    @ivar reason: a L{FinishReason} value.
    @ivar usage: the tokens of every LLM call of the run.
    """

    reason: str
    usage: Usage


@attrs.frozen
class ModelAnswering:
    """
    The model (C{provider/model}) whose output the deltas that follow are:
    sent before a call's first delta, or when a call that produced none
    answered.  Headends may show it (the C{x-ai-agent-model} header); it
    writes nothing by itself.
    """

    model: str


Event = ContentDelta | ReasoningDelta | Progress | ClientToolCall | Usage | ModelAnswering
EventSink = Callable[[Event], None]


def progressText(event: Progress, detailed: bool = False) -> str:
    """
    One line (with its newline) telling a person what C{event} was.

    @param detailed: tell the operator (direct mode's terminal): a
        L{Retrying} shows its C{detail} rather than its client-safe
        C{reason}.
    """
    if isinstance(event, ToolStarted):
        return f"calling {event.name} {_compact(event.arguments)}\n"
    if isinstance(event, ToolFinished):
        return f"{event.name} → {_summary(event.result)}\n"
    if isinstance(event, Retrying):
        reason = event.detail if detailed and event.detail else event.reason
        if event.skipped:
            return f"skipping {event.model}: {reason}\n"
        return f"{event.model} failed ({reason}); retrying\n"
    if isinstance(event, AdvisorProgress):
        if event.error is not None:
            return f"advisor {event.agent} failed: {_summary(event.error)}\n"
        if event.finished:
            return f"advisor {event.agent} answered\n"
        return f"asking advisor {event.agent}\n"
    if isinstance(event, HandoffProgress):
        if event.kind == "router":
            note = f": {_summary(event.message)}" if event.message.strip() else ""
            return f"{event.source} routed the conversation to {event.target}{note}\n"
        return f"{event.source} handed its answer to {event.target}\n"
    if isinstance(event, ExtractionProgress):
        return (
            f"extracting from the output of {event.tool} (chunk {event.chunk} of {event.chunks})\n"
        )
    inner = event.event
    text = inner.text if isinstance(inner, ReasoningDelta) else progressText(inner, detailed)
    return f"[{event.agent}] {text}"


@attrs.define
class ReasoningText:
    """
    Reasoning and progress as one text: progress lines always start on a
    line of their own, even after reasoning that did not end with one.

    @ivar detailed: for the operator (direct mode), as L{progressText}'s.
    """

    detailed: bool = False
    _atLineStart: bool = True

    def reasoning(self, text: str) -> str:
        """
        The text to send for a piece of reasoning.
        """
        if text:
            self._atLineStart = text.endswith("\n")
        return text

    def progress(self, event: Progress) -> str:
        """
        The text to send for C{event}.
        """
        line = progressText(event, self.detailed)
        if not self._atLineStart:
            line = "\n" + line
        self._atLineStart = True
        return line


def _compact(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), ensure_ascii=False)[:200]
    except ValueError:
        return arguments[:200]


def _summary(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 200 else line[:199] + "…"


__all__ = [
    "AdvisorProgress",
    "ClientToolCall",
    "ContentDelta",
    "Event",
    "EventSink",
    "ExtractionProgress",
    "FinishReason",
    "Finished",
    "HandoffProgress",
    "ModelAnswering",
    "PROGRESS_TYPES",
    "Progress",
    "ReasoningDelta",
    "ReasoningText",
    "Retrying",
    "SubAgentProgress",
    "ToolFinished",
    "ToolStarted",
    "Usage",
    "progressText",
]
