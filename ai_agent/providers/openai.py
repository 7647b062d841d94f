# -*- test-case-name: tests.test_provider_openai -*-
"""
The C{openai} wire type: OpenAI Chat Completions (also spoken by Ollama,
vLLM, llama.cpp, OpenRouter and most other OpenAI-compatible servers).

One call is one C{POST {baseUrl}/chat/completions}, streamed (SSE) or not.
The HTTP lifecycle, timeouts and error mapping live in
L{ai_agent.providers._http}; this module only knows the wire format.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Mapping

import attrs

from ai_agent import __version__
from ai_agent.events import FinishReason, Usage
from ai_agent.providers._base import DeltaSink, LLMRequest, LLMResponse, ToolCall
from ai_agent.providers._http import HTTPCall, HTTPProvider, jsonKind, loadsJSON, truncate
from ai_agent.request import OutputFormat, ToolChoice
from ai_agent.sse import SSEEvent


@attrs.define(eq=False)
class OpenAIProvider(HTTPProvider):
    """
    A Chat Completions endpoint.

    @ivar baseUrl: the API root, e.g. C{https://api.openai.com/v1}.
    @ivar apiKey: sent as C{Authorization: Bearer}; never logged or shown.
    @ivar headers: extra request headers from the configuration (they may
        replace C{Authorization}).
    """

    def newCall(self, request: LLMRequest, sink: DeltaSink) -> HTTPCall:
        """
        A Chat Completions call.
        """
        return _Completion(self, request, sink)

    @property
    def url(self) -> str:
        """
        The Chat Completions URL.
        """
        return self.baseUrl.rstrip("/") + "/chat/completions"

    def payload(self, request: LLMRequest) -> dict[str, Any]:
        """
        The JSON body for C{request}.
        """
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [message.asOpenAI() for message in request.messages],
        }
        if request.tools:
            body["tools"] = [tool.asOpenAI() for tool in request.tools]
            if request.toolChoice is not None:
                body["tool_choice"] = toolChoice(request.toolChoice)
            if request.parallelToolCalls is not None:
                body["parallel_tool_calls"] = request.parallelToolCalls
        optional: dict[str, Any] = {
            "temperature": request.temperature,
            "top_p": request.topP,
            # Extensions of llama.cpp's and vLLM's servers (refused at load
            # for endpoints without them, see ai_agent.providers.sampling).
            "top_k": request.topK,
            "repeat_penalty": request.repeatPenalty,
            "max_tokens": request.maxTokens,
            "seed": request.seed,
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        if request.stop:
            body["stop"] = list(request.stop)
        if request.reasoning is not None and request.reasoning != "none":
            body["reasoning_effort"] = request.reasoning
        if request.outputFormat is not None:
            body["response_format"] = responseFormat(request.outputFormat)
        body["stream"] = request.stream
        if request.stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def requestHeaders(self, request: LLMRequest) -> dict[str, str]:
        """
        The HTTP headers for C{request}: accept, user agent, bearer token
        (when a key is set) and the configured headers.
        """
        headers = {
            "Accept": "text/event-stream" if request.stream else "application/json",
            "User-Agent": f"ai-agent/{__version__}",
        }
        if self.apiKey:
            headers["Authorization"] = f"Bearer {self.apiKey}"
        headers.update(self.headers)
        return headers


@attrs.define
class _ToolCallParts:
    id: str = ""
    name: str = ""
    arguments: list[str] = attrs.field(factory=list)


@attrs.define(eq=False)
class _Completion(HTTPCall):
    """
    One Chat Completions call: the assembled answer.
    """

    _content: list[str] = attrs.field(factory=list, init=False)
    _reasoning: list[str] = attrs.field(factory=list, init=False)
    _toolCalls: dict[int, _ToolCallParts] = attrs.field(factory=dict, init=False)
    _finishReason: str | None = attrs.field(default=None, init=False)
    _usage: Usage | None = attrs.field(default=None, init=False)

    endMarker: ClassVar[str] = "[DONE]"

    # Streaming.

    def streamEvent(self, event: SSEEvent) -> None:
        data = event.data.strip()
        if data == "[DONE]":
            self.markEnd()
            return
        if not data:
            return
        try:
            chunk = loadsJSON(data)
        except ValueError:
            raise self.invalid(f"a stream chunk is not JSON: {truncate(data)}") from None
        if not isinstance(chunk, dict):
            raise self.invalid(f"a stream chunk is not a JSON object: {truncate(data)}")
        if chunk.get("error") or event.event == "error":
            raise self.upstreamError(chunk)
        self._takeUsage(chunk)
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise self.invalid("a stream chunk has invalid choices")
        for choice in choices:
            if isinstance(choice, dict) and choice.get("index", 0) in (0, None):
                self._choiceDelta(choice)

    def streamFinished(self) -> bool:
        return self._finishReason is not None

    def _choiceDelta(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise self.invalid("a stream chunk has an invalid delta")
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            self._reasoning.append(reasoning)
            self.sink.reasoning(reasoning)
        content = delta.get("content")
        if isinstance(content, str) and content:
            self._content.append(content)
            self.sink.content(content)
        toolCalls = delta.get("tool_calls")
        if toolCalls is not None and not isinstance(toolCalls, list):
            raise self.invalid(f"a stream chunk's delta.tool_calls is {jsonKind(toolCalls)}")
        for position, call in enumerate(toolCalls or ()):
            if not isinstance(call, dict):
                raise self.invalid(
                    f"a stream chunk's delta.tool_calls[{position}] is {jsonKind(call)},"
                    " not an object"
                )
            self._toolCallDelta(position, call)
        finishReason = choice.get("finish_reason")
        if isinstance(finishReason, str) and finishReason:
            self._finishReason = finishReason

    def _toolCallDelta(self, position: int, call: dict[str, Any]) -> None:
        index = call.get("index")
        if not isinstance(index, int):
            index = position
        parts = self._toolCalls.setdefault(index, _ToolCallParts())
        if isinstance(call.get("id"), str) and call["id"] and not parts.id:
            parts.id = call["id"]
        function = call.get("function") or {}
        if not isinstance(function, dict):
            raise self.invalid(
                f"a stream chunk's delta.tool_calls[{position}].function is {jsonKind(function)},"
                " not an object"
            )
        if isinstance(function.get("name"), str) and function["name"] and not parts.name:
            parts.name = function["name"]
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            parts.arguments.append(arguments)
        elif arguments is not None:
            parts.arguments.append(json.dumps(arguments))

    def assembled(self) -> LLMResponse:
        for index, parts in sorted(self._toolCalls.items()):
            if not parts.name:
                raise self.invalid(f"the streamed tool call {index} has no function name")
        toolCalls = tuple(
            ToolCall(
                id=parts.id or f"call_{index}",
                name=parts.name,
                arguments="".join(parts.arguments),
            )
            for index, parts in sorted(self._toolCalls.items())
        )
        return LLMResponse(
            content="".join(self._content),
            reasoning="".join(self._reasoning),
            toolCalls=toolCalls,
            finishReason=_finishReason(self._finishReason, bool(toolCalls)),
            usage=self._usage or Usage(),
        )

    def _takeUsage(self, body: Mapping[str, Any]) -> None:
        usage = body.get("usage")
        if isinstance(usage, dict):
            count = self.tokenCount
            self._usage = Usage(
                count(usage, "prompt_tokens", "usage"),
                count(usage, "completion_tokens", "usage"),
                cacheReadTokens=count(
                    usage.get("prompt_tokens_details"),
                    "cached_tokens",
                    "usage.prompt_tokens_details",
                ),
                reasoningTokens=count(
                    usage.get("completion_tokens_details"),
                    "reasoning_tokens",
                    "usage.completion_tokens_details",
                ),
            )

    # Not streaming.

    def _toolCallsOf(self, value: Any) -> list[ToolCall]:
        """
        The tool calls of a whole message, each part checked: a shape the
        server cannot use names the part at fault.
        """
        where = "choices[0].message.tool_calls"
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.invalid(f"{where} is {jsonKind(value)}, not an array")
        toolCalls: list[ToolCall] = []
        for index, call in enumerate(value):
            if not isinstance(call, dict):
                raise self.invalid(f"{where}[{index}] is {jsonKind(call)}, not an object")
            function = call.get("function")
            if not isinstance(function, dict):
                raise self.invalid(
                    f"{where}[{index}].function is {jsonKind(function)}, not an object"
                )
            name = function.get("name")
            if not isinstance(name, str) or not name:
                raise self.invalid(
                    f"{where}[{index}].function.name is {jsonKind(name)}, not a tool name"
                )
            callId = call.get("id")
            if callId is not None and not isinstance(callId, str):
                raise self.invalid(f"{where}[{index}].id is {jsonKind(callId)}, not a string")
            arguments = function.get("arguments", "")
            toolCalls.append(
                ToolCall(
                    id=callId or f"call_{index}",
                    name=name,
                    arguments=arguments if isinstance(arguments, str) else json.dumps(arguments),
                )
            )
        return toolCalls

    def parseBody(self, body: dict[str, Any]) -> LLMResponse:
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise self.invalid("the response has no choices")
        message = choices[0].get("message")
        if not isinstance(message, dict):
            raise self.invalid(f"choices[0].message is {jsonKind(message)}, not an object")
        content = _text(message.get("content"))
        reasoning = _text(message.get("reasoning_content")) or _text(message.get("reasoning"))
        toolCalls = self._toolCallsOf(message.get("tool_calls"))
        self._takeUsage(body)
        finishReason = _finishReason(choices[0].get("finish_reason"), bool(toolCalls))
        if self.request.stream:
            # Asked to stream but answered in one piece: still feed the sink.
            if reasoning:
                self.sink.reasoning(reasoning)
            if content:
                self.sink.content(content)
        return LLMResponse(
            content=content,
            reasoning=reasoning,
            toolCalls=tuple(toolCalls),
            finishReason=finishReason,
            usage=self._usage or Usage(),
        )


#: Chat Completions' C{finish_reason} values in neutral words.
FINISH_REASONS: Mapping[str, str] = {
    "stop": FinishReason.END,
    "length": FinishReason.MAX_TOKENS,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
    "content_filter": FinishReason.CONTENT_FILTER,
}


def _finishReason(value: Any, calledTools: bool) -> str:
    """
    The neutral finish reason for an upstream's C{finish_reason} (which
    some servers leave out).
    """
    if not isinstance(value, str) or not value:
        return FinishReason.TOOL_CALLS if calledTools else FinishReason.END
    return FINISH_REASONS.get(value, value)


def toolChoice(choice: ToolChoice) -> str | dict[str, Any]:
    """
    Chat Completions' C{tool_choice} for C{choice}.
    """
    if choice.mode == ToolChoice.TOOL:
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode


def responseFormat(output: OutputFormat) -> dict[str, Any]:
    """
    Chat Completions' C{response_format} for C{output}.
    """
    if output.schema is None:
        return {"type": "json_object"}
    spec: dict[str, Any] = {"name": output.name, "schema": dict(output.schema)}
    if output.description is not None:
        spec["description"] = output.description
    if output.strict is not None:
        spec["strict"] = output.strict
    return {"type": "json_schema", "json_schema": spec}


def _text(value: Any) -> str:
    """
    A message C{content}: a string, L{None}, or a list of text parts.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(
            part.get("text", "")
            for part in value
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


__all__ = ["OpenAIProvider"]
