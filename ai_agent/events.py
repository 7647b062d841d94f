# -*- test-case-name: tests.test_session -*-
"""
The values a running agent session emits.  Every headend encodes these; the
session knows nothing about HTTP.
"""

from __future__ import annotations

from typing import Callable

import attrs

from ai_agent.errors import AgentError


@attrs.frozen
class ContentDelta:
    """
    A piece of the answer.
    """

    text: str


@attrs.frozen
class ReasoningDelta:
    """
    A piece of model reasoning or of the agent's progress (tool calls,
    sub-agents, retries); never part of the answer.
    """

    text: str


@attrs.frozen
class Usage:
    """
    Token counts of one or more LLM calls.
    """

    promptTokens: int = 0
    completionTokens: int = 0

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
        )

    def asOpenAI(self) -> dict[str, int]:
        """
        The OpenAI C{usage} object.
        """
        return {
            "prompt_tokens": self.promptTokens,
            "completion_tokens": self.completionTokens,
            "total_tokens": self.totalTokens,
        }


@attrs.frozen
class Finished:
    """
    The run ended with an answer.

    @ivar finishReason: C{"stop"} or C{"length"}.
    @ivar usage: the tokens of every LLM call of the run.
    """

    finishReason: str
    usage: Usage


@attrs.frozen
class Failed:
    """
    The run ended without an answer.
    """

    error: AgentError
    usage: Usage = Usage()


@attrs.frozen
class ModelAnswering:
    """
    The model (C{provider/model}) whose output the deltas that follow are:
    sent before a call's first delta, or when a call that produced none
    answered.  Headends may show it (the C{x-ai-agent-model} header); it
    writes nothing by itself.
    """

    model: str


Event = ContentDelta | ReasoningDelta | Usage | Finished | Failed | ModelAnswering
EventSink = Callable[[Event], None]

__all__ = [
    "ContentDelta",
    "Event",
    "EventSink",
    "Failed",
    "Finished",
    "ModelAnswering",
    "ReasoningDelta",
    "Usage",
]
