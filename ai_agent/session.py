# -*- test-case-name: tests.test_session -*-
"""
The agent loop: the agent's prompt and the client's conversation go to the
agent's models turn by turn; tool calls run and their results go back; the
run ends when a model answers without calling a tool.

Content and reasoning stream out through an L{EventSink} as they arrive.
Cancelling the Deferred returned by L{SessionRunner.run} cancels the LLM call
(closing its upstream connection) or the tool calls in flight.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Protocol, Sequence

import attrs
from twisted.internet import defer
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    ensureDeferred,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ai_agent.agentfile import AgentSpec
from ai_agent.errors import AgentError, ProviderError
from ai_agent.events import ContentDelta, EventSink, Finished, ReasoningDelta, Usage
from ai_agent.providers import (
    ChatMessage,
    LLMRequest,
    LLMResponse,
    Provider,
    ToolCall,
    ToolSpec,
)

log = Logger()


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


class ProviderLookup(Protocol):
    """
    Finds the provider named by the first part of C{provider/model}.
    """

    def __call__(self, name: str) -> Provider:
        """
        The provider called C{name}.

        @raise AgentError: if there is none.
        """
        ...


class ToolBox(Protocol):
    """
    The tools one agent may call.
    """

    def specs(self) -> Sequence[ToolSpec]:
        """
        The tools, as the model sees them.
        """
        ...

    def call(self, name: str, arguments: Mapping[str, Any], sink: EventSink) -> Deferred[str]:
        """
        Run one tool; fire with its textual result or fail.
        """
        ...


@attrs.define
class _NoTools:
    def specs(self) -> Sequence[ToolSpec]:
        return ()

    def call(self, name: str, arguments: Mapping[str, Any], sink: EventSink) -> Deferred[str]:
        raise AgentError(f"unknown tool {name!r}", 500)


def splitModel(model: str) -> tuple[str, str]:
    """
    Split C{provider/model} at its first C{/}.
    """
    provider, _, upstream = model.partition("/")
    return provider, upstream


def buildMessages(agent: AgentSpec, conversation: Sequence[ChatMessage]) -> list[ChatMessage]:
    """
    The messages of a run's first LLM call: the agent's prompt as the first
    system message, then the client's system and developer messages (as
    system messages, which every OpenAI-compatible server accepts), then the
    rest of the conversation in order.
    """
    messages: list[ChatMessage] = []
    if agent.prompt:
        messages.append(ChatMessage("system", agent.prompt))
    instructions = [m for m in conversation if m.role in ("system", "developer")]
    messages.extend(attrs.evolve(m, role="system") for m in instructions)
    messages.extend(m for m in conversation if m.role not in ("system", "developer"))
    return messages


@attrs.define
class _TrackingSink:
    """
    Passes deltas on and remembers whether any answer text went out.
    """

    events: EventSink
    contentSent: bool = False

    def content(self, text: str) -> None:
        if text:
            self.contentSent = True
            self.events(ContentDelta(text))

    def reasoning(self, text: str) -> None:
        if text:
            self.events(ReasoningDelta(text))


@attrs.define
class SessionRunner:
    """
    Runs agents.

    @ivar providers: finds a provider by name.
    @ivar tools: builds the L{ToolBox} of an agent, or L{None} for none.
    """

    providers: ProviderLookup
    reactor: IReactorTime
    tools: Any = None

    def run(
        self,
        agent: AgentSpec,
        conversation: Sequence[ChatMessage],
        events: EventSink,
        sampling: Sampling = Sampling(),
        stream: bool = True,
    ) -> Deferred[Finished]:
        """
        Run C{agent} on C{conversation}.

        @return: a Deferred firing with L{Finished} when the agent answered,
            or failing with L{AgentError}.  Content and reasoning go to
            C{events} as they arrive.
        """
        return ensureDeferred(self._run(agent, conversation, events, sampling, stream))

    async def _run(
        self,
        agent: AgentSpec,
        conversation: Sequence[ChatMessage],
        events: EventSink,
        sampling: Sampling,
        stream: bool,
    ) -> Finished:
        toolbox = self.tools(agent) if self.tools is not None else _NoTools()
        specs = tuple(toolbox.specs())
        messages = buildMessages(agent, conversation)
        usage = Usage()
        for turn in range(1, agent.maxTurns + 1):
            lastTurn = turn == agent.maxTurns
            response, callUsage = await self._callWithFallback(
                agent, messages, () if lastTurn else specs, events, sampling, stream
            )
            usage = usage + callUsage
            if not response.toolCalls or not specs or lastTurn:
                reason = "length" if response.finishReason == "length" else "stop"
                return Finished(reason, usage)
            messages.append(ChatMessage("assistant", response.content, toolCalls=response.toolCalls))
            results = await self._runTools(agent, toolbox, response.toolCalls, events)
            messages.extend(results)
        raise AssertionError("unreachable: the last turn always returns")

    async def _callWithFallback(
        self,
        agent: AgentSpec,
        messages: list[ChatMessage],
        specs: tuple[ToolSpec, ...],
        events: EventSink,
        sampling: Sampling,
        stream: bool,
    ) -> tuple[LLMResponse, Usage]:
        """
        One turn's LLM call: the agent's models in order, up to
        C{maxRetries} attempts, retrying only while no answer text of this
        turn reached the client.
        """
        sink = _TrackingSink(events)
        lastError: ProviderError | None = None
        attempts = max(agent.maxRetries, 1)
        for attempt in range(attempts):
            model = agent.models[attempt % len(agent.models)]
            providerName, upstreamModel = splitModel(model)
            provider = self.providers(providerName)
            request = LLMRequest(
                model=upstreamModel,
                messages=tuple(messages),
                tools=specs,
                temperature=_first(sampling.temperature, agent.temperature),
                topP=_first(sampling.topP, agent.topP),
                maxTokens=_first(sampling.maxTokens, agent.maxOutputTokens),
                stop=sampling.stop,
                seed=sampling.seed,
                reasoning=agent.reasoning,
                stream=stream,
                timeout=agent.llmTimeout,
            )
            try:
                response = await provider.complete(request, sink)
            except CancelledError:
                raise
            except ProviderError as error:
                lastError = error
                log.warn(
                    "agent {agent}: {model} failed (attempt {attempt} of {attempts}): {error}",
                    agent=agent.name,
                    model=model,
                    attempt=attempt + 1,
                    attempts=attempts,
                    error=error.message,
                )
                if not error.retryable or sink.contentSent:
                    raise
                if attempt + 1 < attempts:
                    sink.reasoning(f"{model} failed ({error.message}); retrying\n")
                continue
            return response, response.usage
        assert lastError is not None
        raise lastError

    async def _runTools(
        self,
        agent: AgentSpec,
        toolbox: ToolBox,
        calls: tuple[ToolCall, ...],
        events: EventSink,
    ) -> list[ChatMessage]:
        """
        Run a turn's tool calls concurrently; every outcome, failures and
        timeouts included, becomes a C{tool} message the model can read.
        """
        pending = [self._runTool(agent, toolbox, call, events) for call in calls]
        # Cancelling a DeferredList cancels every call in it.
        outcomes = await DeferredList(pending, consumeErrors=True)
        results: list[ChatMessage] = []
        for call, (ok, value) in zip(calls, outcomes):
            if not ok:
                value.raiseException()
            results.append(ChatMessage("tool", value, toolCallId=call.id))
        return results

    def _runTool(
        self, agent: AgentSpec, toolbox: ToolBox, call: ToolCall, events: EventSink
    ) -> Deferred[str]:
        return ensureDeferred(self._toolText(agent, toolbox, call, events))

    async def _toolText(
        self, agent: AgentSpec, toolbox: ToolBox, call: ToolCall, events: EventSink
    ) -> str:
        events(ReasoningDelta(f"calling {call.name} {_compact(call.arguments)}\n"))
        try:
            arguments = json.loads(call.arguments) if call.arguments.strip() else {}
            if not isinstance(arguments, dict):
                raise ValueError("arguments must be a JSON object")
        except ValueError as error:
            text = f"error: the arguments of {call.name} are not a JSON object: {error}"
            events(ReasoningDelta(f"{call.name} → {text}\n"))
            return text
        attempt = toolbox.call(call.name, arguments, events)
        attempt.addTimeout(agent.toolTimeout, self.reactor)
        try:
            text = await attempt
        except CancelledError:
            raise
        except defer.TimeoutError:
            text = f"error: {call.name} did not answer within {agent.toolTimeout:g} s"
        except AgentError as error:
            text = f"error: {error.message}"
        except Exception as error:  # noqa: BLE001 - the model reads any tool failure
            text = f"error: {type(error).__name__}: {error}"
        limit = agent.toolResponseMaxBytes
        encoded = text.encode("utf-8")
        if len(encoded) > limit:
            kept = encoded[:limit].decode("utf-8", "ignore")
            text = f"{kept}\n[truncated: the result was {len(encoded)} bytes; only the first {limit} are shown]"
        events(ReasoningDelta(f"{call.name} → {_summary(text)}\n"))
        return text


def _first(*values: Any) -> Any:
    for value in values:
        if value is not None:
            return value
    return None


def _compact(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), ensure_ascii=False)[:200]
    except ValueError:
        return arguments[:200]


def _summary(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 200 else line[:199] + "…"


__all__ = ["Sampling", "SessionRunner", "ToolBox", "buildMessages", "splitModel"]
