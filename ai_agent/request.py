# -*- test-case-name: tests.test_session,tests.test_headend_openai -*-
"""
The run request: what every API's parser produces and the agent loop
takes, in no API's words.

A headend parses its API's body into a L{RunRequest}: the conversation
(messages with tool calls and results, see L{ai_agent.providers.ChatMessage}),
the client's instructions, L{Sampling} with a neutral L{OutputFormat},
whether to stream, and the L{RunLabels} its log line carries.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Mapping

import attrs

if TYPE_CHECKING:
    from ai_agent.accounting import RunLabels
    from ai_agent.providers._base import ChatMessage


@attrs.frozen
class OutputFormat:
    """
    The shape an answer must have: any JSON object (C{schema} L{None}), or
    JSON conforming to C{schema}.

    @ivar name: a name for the schema (APIs that want one get it).
    @ivar strict: whether the provider should enforce the schema exactly,
        where it can.
    """

    schema: Mapping[str, Any] | None = None
    name: str = "answer"
    description: str | None = None
    strict: bool | None = None

    @classmethod
    def forAgent(cls, name: str, schema: Mapping[str, Any] | None) -> OutputFormat:
        """
        The format an agent file's C{output} declares, named after the
        agent (as far as schema names allow).
        """
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "answer"
        return cls(None if schema is None else dict(schema), safe, None, False)


@attrs.frozen
class Sampling:
    """
    Sampling settings a client asked for; each overrides the agent's own
    value when set.
    """

    temperature: float | None = None
    topP: float | None = None
    maxTokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    outputFormat: OutputFormat | None = None


@attrs.frozen
class RunRequest:
    """
    One run of an agent, as any API asked for it.

    @ivar conversation: the client's messages in order (system and
        developer messages included, where the API has them inline).
    @ivar instructions: the client's instructions given beside the
        conversation (a C{system} field, C{instructions}); they follow the
        agent's own prompt.
    @ivar stream: whether the LLM calls stream (headends always ask for
        it, and assemble a whole answer from the events when the client
        does not stream).
    @ivar labels: what the run's log line says about the request.
    """

    conversation: tuple[ChatMessage, ...]
    instructions: tuple[str, ...] = ()
    sampling: Sampling = Sampling()
    stream: bool = True
    labels: RunLabels | None = None


__all__ = ["OutputFormat", "RunRequest", "Sampling"]
