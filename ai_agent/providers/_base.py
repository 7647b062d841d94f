# -*- test-case-name: tests.test_provider_openai -*-
"""
The provider interface: what the agent session asks of an LLM wire protocol.

Messages travel as role, content, tool calls and tool results (the
conversation's shape in every API); each wire protocol translates them at
its edge.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import attrs
from twisted.internet.defer import Deferred

from ai_agent.events import FinishReason, Usage
from ai_agent.request import OutputFormat, ToolChoice


@attrs.frozen
class ToolCall:
    """
    One function call requested by the model.

    @ivar arguments: the arguments as the model wrote them (a JSON text).
    """

    id: str
    name: str
    arguments: str


@attrs.frozen
class ChatMessage:
    """
    One message of a conversation.

    @ivar role: C{system}, C{developer}, C{user}, C{assistant} or C{tool}.
    @ivar toolCalls: calls made by an assistant message.
    @ivar toolCallId: for C{tool} messages, the call this answers.
    """

    role: str
    content: str
    name: str | None = None
    toolCalls: tuple[ToolCall, ...] = ()
    toolCallId: str | None = None

    def asOpenAI(self) -> dict[str, Any]:
        """
        This message as a Chat Completions request message.
        """
        message: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.name is not None:
            message["name"] = self.name
        if self.toolCalls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in self.toolCalls
            ]
            if not self.content:
                message["content"] = None
        if self.toolCallId is not None:
            message["tool_call_id"] = self.toolCallId
        return message


@attrs.frozen
class ToolSpec:
    """
    A function the model may call.

    @ivar parameters: the JSON Schema of its arguments.
    """

    name: str
    description: str
    parameters: Mapping[str, Any]

    def asOpenAI(self) -> dict[str, Any]:
        """
        This tool as a Chat Completions C{tools} entry.
        """
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": dict(self.parameters),
            },
        }


@attrs.frozen
class LLMRequest:
    """
    One call to a model.

    @ivar model: the upstream model name (the part after C{provider/}).
    @ivar reasoning: a reasoning effort (C{low}, C{medium}, C{high}, ...) or
        L{None} to leave the provider's default.
    @ivar topK: C{top_k}, for providers that take it, or L{None}.
    @ivar repeatPenalty: C{repeat_penalty} (llama.cpp, vLLM), or L{None}.
    @ivar reasoningTokens: the thinking budget for providers that take one
        (Anthropic), or L{None} for the budget of C{reasoning}.
    @ivar timeout: the longest silence allowed from the upstream, in seconds
        (before the response headers and between body chunks).
    @ivar totalTimeout: the longest the whole call may take, in seconds.
    @ivar outputFormat: the shape the answer must have, or L{None} for
        text.
    @ivar toolChoice: which tools the model must or may call (L{None}: the
        provider's default, which is C{auto}); sent only with tools.
    @ivar parallelToolCalls: whether the model may call several tools at
        once (L{None}: the provider's default); sent only with tools.
    @ivar cache: ask the provider to cache the request's prefix (tools,
        system text, conversation so far) for the next call, where the wire
        protocol has such a switch (Anthropic's prompt caching).
    """

    model: str
    messages: tuple[ChatMessage, ...]
    tools: tuple[ToolSpec, ...] = ()
    temperature: float | None = None
    topP: float | None = None
    maxTokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    reasoning: str | None = None
    stream: bool = True
    timeout: float | None = None
    outputFormat: OutputFormat | None = None
    cache: bool = False
    totalTimeout: float | None = None
    toolChoice: ToolChoice | None = None
    parallelToolCalls: bool | None = None
    topK: int | None = None
    repeatPenalty: float | None = None
    reasoningTokens: int | None = None


@attrs.frozen
class LLMResponse:
    """
    The assembled result of one model call.

    @ivar finishReason: a L{ai_agent.events.FinishReason} value (each
        provider translates its wire's words), or the upstream's own word
        where it has no neutral one.
    """

    content: str
    reasoning: str = ""
    toolCalls: tuple[ToolCall, ...] = ()
    finishReason: str = FinishReason.END
    usage: Usage = Usage()


class DeltaSink(Protocol):
    """
    Receives a streaming call's pieces as they arrive.
    """

    def content(self, text: str) -> None:
        """
        A piece of the answer text.
        """

    def reasoning(self, text: str) -> None:
        """
        A piece of model reasoning.
        """


@attrs.define
class CallbackSink:
    """
    A L{DeltaSink} made of two callables.
    """

    onContent: Callable[[str], None] = lambda text: None
    onReasoning: Callable[[str], None] = lambda text: None

    def content(self, text: str) -> None:
        self.onContent(text)

    def reasoning(self, text: str) -> None:
        self.onReasoning(text)


class Provider(Protocol):
    """
    An LLM wire protocol bound to one configured endpoint.

    C{complete} streams content and reasoning into C{sink} as they arrive
    (when C{request.stream}) and fires with the assembled L{LLMResponse}, or
    fails with L{ai_agent.errors.ProviderError}.  Cancelling the returned
    Deferred closes the upstream HTTP connection.
    """

    name: str

    def complete(self, request: LLMRequest, sink: DeltaSink) -> Deferred[LLMResponse]:
        """
        Make one model call.
        """
        ...


@runtime_checkable
class TokenCounter(Protocol):
    """
    A provider whose API counts a request's input tokens itself (Anthropic's
    C{count_tokens}), for the Messages API's C{count_tokens} route.
    """

    def countTokens(self, request: LLMRequest) -> Deferred[int]:
        """
        The input tokens of C{request}'s system text, messages and tools.

        @return: fires with the count, or fails with
            L{ai_agent.errors.ProviderError} (under C{request}'s timeouts;
            an answer past the provider's bound for a count is an
            C{upstream_answer_too_large}); cancelling it closes the
            upstream connection.
        """
        ...


__all__ = [
    "CallbackSink",
    "ChatMessage",
    "DeltaSink",
    "LLMRequest",
    "LLMResponse",
    "Provider",
    "ToolCall",
    "TokenCounter",
    "ToolSpec",
]
