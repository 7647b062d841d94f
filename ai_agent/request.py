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
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import attrs

if TYPE_CHECKING:
    from ai_agent.accounting import RunLabels
    from ai_agent.clienttools import TurnStore
    from ai_agent.providers._base import ChatMessage, ToolSpec


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
class ToolChoice:
    """
    Which tools the model must or may call.

    @ivar mode: C{auto} (the model decides), C{none} (the client's tools
        are hidden; the agent keeps its own), C{required} (some tool must be
        called before the model answers), or C{tool} (the tool C{name} is
        called on the run's first LLM call).
    """

    mode: str = "auto"
    name: str | None = None

    AUTO: ClassVar[str] = "auto"
    NONE: ClassVar[str] = "none"
    REQUIRED: ClassVar[str] = "required"
    TOOL: ClassVar[str] = "tool"


@attrs.frozen
class ClientTool:
    """
    A function tool the client brought: shown to the model beside the
    agent's own, and handed back to the client when called.

    @ivar spec: the tool as the model sees it.
    @ivar param: where its name is in the client's request
        (C{tools[2].function.name}), for errors about it.
    @ivar namespace: the client's group of tools it belongs to (a Responses
        API C{namespace} tool), or L{None}.  A member of a namespace is
        shown to the model under a name joining both (C{spec.name}) and
        handed back under C{clientName} with its C{namespace}.
    @ivar clientName: the tool's own name in its namespace.
    """

    spec: ToolSpec
    param: str
    namespace: str | None = None
    clientName: str | None = None


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
    @ivar clientTools: the client's own tools (see L{ClientTool}).
    @ivar toolChoice: the client's constraint on tool calls.
    @ivar parallelToolCalls: whether the model may call several tools in
        one turn (L{None}: the provider's default).
    @ivar owner: the name of the principal (API key) the run is for: the
        hidden turns of a hybrid run are kept for it, and only its runs
        find them (see L{ai_agent.principals}).
    @ivar turns: where this run keeps and finds its hidden turns instead
        of the runner's store (the Responses API's sealed turns of a
        C{store: false} request), or L{None}.
    @ivar subAgent: whether another agent's run called this one as a tool
        (its prompt's C{${FORMAT}} then says so).
    """

    conversation: tuple[ChatMessage, ...]
    instructions: tuple[str, ...] = ()
    sampling: Sampling = Sampling()
    stream: bool = True
    labels: RunLabels | None = None
    clientTools: tuple[ClientTool, ...] = ()
    toolChoice: ToolChoice = ToolChoice()
    parallelToolCalls: bool | None = None
    owner: str = ""
    turns: TurnStore | None = None
    subAgent: bool = False


__all__ = ["ClientTool", "OutputFormat", "RunRequest", "Sampling", "ToolChoice"]
