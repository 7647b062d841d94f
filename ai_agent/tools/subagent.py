# -*- test-case-name: tests.test_tools -*-
"""
Sub-agents as tools: each agent file named in an agent's C{agents:} list is
offered to the model as C{agent__<name>} (its C{toolName}, else its file
name), described by its C{description}, taking C{{"prompt": string}} or, when
the agent declares a structured C{input}, the arguments of its schema.

Calling one runs a child session of that agent, through the same runner as
the parent, on the prompt as its only user message; the child's answer is
the tool result.  The child's progress and its model's reasoning (in whole
lines) reach the parent's stream inside L{SubAgentProgress} events, shown
as lines prefixed with C{[agent__<name>] }; its token usage is added to the
parent's, and cancelling the call cancels the child run.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from ai_agent.agentfile import PROMPT_SCHEMA, AgentSpec, InvalidInputError
from ai_agent.errors import AgentError
from ai_agent.events import (
    PROGRESS_TYPES,
    ContentDelta,
    Event,
    EventSink,
    Finished,
    FinishReason,
    ReasoningDelta,
    SubAgentProgress,
    Usage,
)
from ai_agent.limits import SubAgentLimiter
from ai_agent.providers import ChatMessage, ToolSpec
from ai_agent.request import RunRequest
from ai_agent.tools._naming import toolName

SUBAGENT_NAMESPACE = "agent"


class AgentRunner(Protocol):
    """
    What runs a child session (L{ai_agent.session.SessionRunner}).
    """

    def run(self, agent: AgentSpec, request: RunRequest, events: EventSink) -> Deferred[Finished]:
        """
        Run C{agent} on C{request}, streaming events to C{events}.
        """
        ...


@attrs.define(eq=False)
class NestedSink:
    """
    The event sink of a child run: its progress goes to the parent's sink
    inside L{SubAgentProgress} events naming C{agent}, and so does its
    model's reasoning, in whole lines; its token usage goes to the parent
    unchanged (to be added to the parent run's usage); its answer is kept
    in L{answer}, never streamed as the parent's content.
    """

    agent: str
    parent: EventSink
    _answer: list[str] = attrs.field(factory=list, init=False)
    _partial: str = attrs.field(default="", init=False)

    @property
    def answer(self) -> str:
        """
        The child's content so far.
        """
        return "".join(self._answer)

    def __call__(self, event: Event) -> None:
        if isinstance(event, ContentDelta):
            self._answer.append(event.text)
        elif isinstance(event, ReasoningDelta):
            *lines, self._partial = (self._partial + event.text).split("\n")
            for line in lines:
                self._emit(line)
        elif isinstance(event, PROGRESS_TYPES):
            # Progress starts a line of its own.
            self.flush()
            self.parent(SubAgentProgress(self.agent, event))
        elif isinstance(event, Usage):
            self.parent(event)

    def flush(self) -> None:
        """
        Pass on a last line that had no newline.
        """
        partial, self._partial = self._partial, ""
        self._emit(partial)

    def _emit(self, line: str) -> None:
        if line.strip():
            self.parent(SubAgentProgress(self.agent, ReasoningDelta(f"{line}\n")))


@attrs.define(eq=False)
class SubAgentTool:
    """
    One sub-agent offered as a tool.

    @ivar spec: the sub-agent.
    @ivar runner: runs the child session (the parent's runner).
    @ivar limiter: the server-wide bound on sub-agent runs, if any; a run
        waits at most the sub-agent's C{toolTimeout} for a place.
    """

    spec: AgentSpec
    runner: AgentRunner
    limiter: SubAgentLimiter | None = None

    @property
    def name(self) -> str:
        """
        C{agent__<name>}.
        """
        return toolName(SUBAGENT_NAMESPACE, self.spec.name)

    def toolSpec(self) -> ToolSpec:
        """
        The tool as the model sees it.
        """
        description = self.spec.description or f"The {self.spec.name} agent."
        if self.spec.usage:
            description = f"{description}\n\nUsage: {self.spec.usage}"
        return ToolSpec(self.name, description, self.spec.inputSchema())

    def call(self, arguments: Mapping[str, Any], sink: EventSink, owner: str = "") -> Deferred[str]:
        """
        Run the sub-agent on C{arguments["prompt"]}, or, for an agent with a
        structured C{input}, on the arguments validated against its schema
        (as compact JSON); arguments that do not fit fail before the run.
        The child runs for the principal named C{owner} (the parent run's:
        what the child keeps, its cached answers included, is that
        principal's).

        @return: a Deferred firing with the child's answer, or failing with
            L{AgentError} when the child run fails.  Cancelling it cancels
            the child run.
        """
        try:
            prompt = self.spec.input.userMessage(arguments)
        except InvalidInputError as error:
            return fail(AgentError(f"{self.name} {error}"))
        nested = NestedSink(self.name, sink)
        request = RunRequest((ChatMessage("user", prompt),), owner=owner, subAgent=True)
        if self.limiter is None:
            run = self.runner.run(self.spec, request, nested)
        else:
            run = self.limiter.run(
                self.spec.toolTimeout, self.runner.run, self.spec, request, nested
            )

        def finished(result: Finished) -> str:
            nested.flush()
            answer = nested.answer.strip() or "(the sub-agent gave no answer)"
            if result.reason == FinishReason.MAX_TOKENS:
                answer += "\n[the answer was cut at the sub-agent's output token limit]"
            return answer

        def failed(failure: Failure) -> Failure:
            nested.flush()
            if isinstance(failure.value, AgentError):
                return Failure(AgentError(f"{self.name} failed: {failure.value.message}"))
            return failure

        return run.addCallbacks(finished, failed)


__all__ = ["NestedSink", "PROMPT_SCHEMA", "SubAgentTool"]
