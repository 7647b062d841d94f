# -*- test-case-name: tests.test_provider_anthropic -*-
"""
The C{anthropic} wire type: Anthropic's Messages API.

One call is one C{POST {baseUrl}/v1/messages}, streamed (SSE) or not, with
the key in C{x-api-key} and C{anthropic-version: 2023-06-01}.  Messages are
translated from the internal (Chat Completions) shape at this edge:

  - every system and developer message joins the top-level C{system} text;
  - an assistant message's tool calls become C{tool_use} blocks, and C{tool}
    messages become C{tool_result} blocks of a user message (results first);
  - consecutive messages of the same role are merged into one;
  - C{reasoning} becomes an extended-thinking budget, and C{max_tokens}
    (required by Anthropic) is raised above it when needed.

With thinking on, Anthropic wants the thinking blocks (and their signatures)
of the assistant message that made the tool calls sent back with the tool
results.  The internal messages do not carry them, so the provider keeps the
signed blocks of its recent tool-calling answers, keyed by tool call id, and
puts them back; when they are not known (say the calls came from another
provider after a fallback), that request is sent without thinking, which
Anthropic accepts.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, ClassVar, Mapping, Sequence

import attrs
from twisted.internet.defer import Deferred, fail

from ai_agent import __version__
from ai_agent.events import FinishReason, Usage
from ai_agent.providers._base import (
    CallbackSink,
    ChatMessage,
    DeltaSink,
    LLMRequest,
    LLMResponse,
    ToolCall,
)
from ai_agent.providers._http import HTTPCall, HTTPProvider, loadsJSON, truncate
from ai_agent.request import OutputFormat, ToolChoice
from ai_agent.sse import SSEEvent

ANTHROPIC_VERSION = "2023-06-01"
"""
The C{anthropic-version} header sent with every call.
"""

DEFAULT_MAX_TOKENS = 4096
"""
C{max_tokens} when the agent sets no C{maxOutputTokens} (Anthropic requires
one).
"""

THINKING_BUDGETS: Mapping[str, int] = {
    "minimal": 1024,
    "low": 2048,
    "medium": 8192,
    "high": 16384,
}
"""
The extended-thinking C{budget_tokens} of each reasoning effort; C{none}
(or no effort) turns thinking off.
"""

STOP_REASONS: Mapping[str, str] = {
    "end_turn": FinishReason.END,
    "stop_sequence": FinishReason.STOP_SEQUENCE,
    "pause_turn": FinishReason.END,
    "max_tokens": FinishReason.MAX_TOKENS,
    "model_context_window_exceeded": FinishReason.MAX_TOKENS,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.CONTENT_FILTER,
}
"""
Anthropic's C{stop_reason} values in neutral words (L{FinishReason}); others
pass through unchanged.
"""

_REMEMBERED_ANSWERS = 1024

MAX_COUNT_ANSWER = 1024 * 1024
"""
The most bytes of a C{count_tokens} answer read (a count is a few dozen
bytes); past it the count fails with C{upstream_answer_too_large} and its
connection is closed.
"""


def messagesURL(baseUrl: str) -> str:
    """
    The Messages URL of an API root given with or without its C{/v1}.
    """
    root = baseUrl.rstrip("/")
    if root.endswith("/v1"):
        return root + "/messages"
    return root + "/v1/messages"


def jsonInstruction(output: OutputFormat | None) -> str | None:
    """
    The system-prompt sentence asking for a JSON answer of the shape
    C{output}, or L{None} for a text answer.
    """
    if output is None:
        return None
    if output.schema is None:
        return "Answer with one JSON object and nothing else: no prose, no code fence."
    return (
        "Answer with one JSON value that conforms to this JSON Schema, and nothing else"
        " (no prose, no code fence):\n" + json.dumps(dict(output.schema), ensure_ascii=False)
    )


_TOOL_CHOICE_TYPES = {
    ToolChoice.AUTO: "auto",
    ToolChoice.NONE: "none",
    ToolChoice.REQUIRED: "any",
    ToolChoice.TOOL: "tool",
}


def toolChoice(choice: ToolChoice | None, parallel: bool | None) -> dict[str, Any] | None:
    """
    The Messages API's C{tool_choice} for C{choice} and whether calls may
    run in parallel, or L{None} for the default (C{auto}, in parallel).
    """
    if choice is None and parallel is not False:
        return None
    mode = ToolChoice.AUTO if choice is None else choice.mode
    value: dict[str, Any] = {"type": _TOOL_CHOICE_TYPES[mode]}
    if choice is not None and mode == ToolChoice.TOOL:
        value["name"] = choice.name
    if parallel is False and mode != ToolChoice.NONE:
        value["disable_parallel_tool_use"] = True
    return value


def translateMessages(
    messages: Sequence[ChatMessage],
    thinkingFor: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    """
    Chat Completions messages as Anthropic's C{system} text and
    C{messages} list.

    @param thinkingFor: signed thinking blocks by tool call id, put at the
        start of the assistant message that made that call.
    """
    system: list[str] = []
    translated: list[dict[str, Any]] = []
    for message in messages:
        if message.role in ("system", "developer"):
            if message.content:
                system.append(message.content)
            continue
        role, blocks = _blocks(message, thinkingFor or {})
        if not blocks:
            continue
        if translated and translated[-1]["role"] == role:
            merged = translated[-1]["content"] + blocks
            if role == "user":
                # Tool results must open the user message that answers the calls.
                merged.sort(key=lambda block: block["type"] != "tool_result")
            translated[-1]["content"] = merged
        else:
            translated.append({"role": role, "content": blocks})
    return "\n\n".join(system), translated


def _blocks(
    message: ChatMessage, thinkingFor: Mapping[str, Sequence[Mapping[str, Any]]]
) -> tuple[str, list[dict[str, Any]]]:
    if message.role == "tool":
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.toolCallId or ""}
        if message.content:
            result["content"] = message.content
        return "user", [result]
    blocks: list[dict[str, Any]] = []
    if message.role == "assistant":
        if message.toolCalls:
            blocks.extend(dict(block) for block in thinkingFor.get(message.toolCalls[0].id, ()))
        if message.content:
            blocks.append({"type": "text", "text": message.content})
        blocks.extend(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": _input(call)}
            for call in message.toolCalls
        )
        return "assistant", blocks
    if message.content:
        blocks.append({"type": "text", "text": message.content})
    return "user", blocks


#: Blocks that may carry a prompt-cache breakpoint.
_CACHEABLE = frozenset({"text", "tool_result", "tool_use", "image", "document"})


def _markCacheBreakpoint(messages: list[dict[str, Any]]) -> None:
    """
    Mark the end of the conversation as a prompt-cache breakpoint, so the
    next call of the run (after its tool results) reads tools, system text
    and history from Anthropic's cache instead of paying for them again.
    A prefix shorter than the model's minimum is simply not cached.
    """
    if not messages:
        return
    blocks = messages[-1]["content"]
    if blocks and blocks[-1].get("type") in _CACHEABLE:
        blocks[-1] = {**blocks[-1], "cache_control": {"type": "ephemeral"}}


def _input(call: ToolCall) -> dict[str, Any]:
    try:
        value = json.loads(call.arguments) if call.arguments.strip() else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@attrs.define(eq=False)
class AnthropicProvider(HTTPProvider):
    """
    An Anthropic Messages endpoint.

    @ivar baseUrl: the API root, e.g. C{https://api.anthropic.com} (a
        trailing C{/v1} is accepted too).
    @ivar apiKey: sent as C{x-api-key}; never logged or shown.
    @ivar headers: extra request headers from the configuration (e.g.
        C{anthropic-beta}); they may replace the ones set here.
    """

    _thinking: OrderedDict[str, tuple[dict[str, Any], ...]] = attrs.field(
        factory=OrderedDict, init=False, repr=False
    )

    def newCall(self, request: LLMRequest, sink: DeltaSink) -> HTTPCall:
        """
        A Messages call.
        """
        return _MessageCall(self, request, sink)

    def countTokens(self, request: LLMRequest) -> Deferred[int]:
        """
        The input tokens of C{request} (its system text, messages and
        tools) as Anthropic counts them: one C{POST
        {baseUrl}/v1/messages/count_tokens}, under C{request}'s timeouts,
        its answer read up to L{MAX_COUNT_ANSWER} bytes.  See
        L{ai_agent.providers.TokenCounter}.
        """
        if self.missingVariables:
            return fail(self._notConfigured())
        call = _CountCall(self, attrs.evolve(request, stream=False), CallbackSink())
        return call.start().addCallback(lambda response: response.usage.promptTokens)

    @property
    def url(self) -> str:
        """
        The Messages URL.
        """
        return messagesURL(self.baseUrl)

    def payload(self, request: LLMRequest) -> dict[str, Any]:
        """
        The JSON body for C{request}.
        """
        budget = THINKING_BUDGETS.get(request.reasoning or "none")
        if request.reasoningTokens and request.reasoning != "none":
            # The agent's own budget (reasoningTokens) over the effort's.
            budget = request.reasoningTokens
        if budget is not None and not self._canThink(request.messages):
            budget = None
        choice = request.toolChoice
        if (
            request.tools
            and choice is not None
            and choice.mode in (ToolChoice.REQUIRED, ToolChoice.TOOL)
        ):
            # Anthropic refuses extended thinking with a forced tool call.
            budget = None
        system, messages = translateMessages(
            request.messages, self._thinking if budget is not None else None
        )
        maxTokens = request.maxTokens if request.maxTokens is not None else DEFAULT_MAX_TOKENS
        body: dict[str, Any] = {"model": request.model, "max_tokens": maxTokens}
        instruction = jsonInstruction(request.outputFormat)
        if instruction:
            # The Messages API has no response format: ask for it in words.
            system = f"{system}\n\n{instruction}" if system else instruction
        if system:
            body["system"] = system
        body["messages"] = messages
        if request.tools:
            body["tools"] = [
                {
                    "name": tool.name,
                    "description": tool.description,
                    "input_schema": dict(tool.parameters),
                }
                for tool in request.tools
            ]
            wireChoice = toolChoice(request.toolChoice, request.parallelToolCalls)
            if wireChoice is not None:
                body["tool_choice"] = wireChoice
        if budget is not None:
            body["thinking"] = {"type": "enabled", "budget_tokens": budget}
            if maxTokens <= budget:
                # max_tokens counts the thinking too: leave room for the answer.
                body["max_tokens"] = budget + maxTokens
            # Anthropic refuses temperature, top_p and top_k changes while
            # thinking.
        else:
            if request.temperature is not None:
                body["temperature"] = request.temperature
            if request.topP is not None:
                body["top_p"] = request.topP
            if request.topK is not None:
                body["top_k"] = request.topK
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        body["stream"] = request.stream
        if request.cache:
            _markCacheBreakpoint(messages)
        return body

    def requestHeaders(self, request: LLMRequest) -> dict[str, str]:
        """
        The HTTP headers for C{request}: accept, user agent, the key, the API
        version and the configured headers.
        """
        headers = {
            "Accept": "text/event-stream" if request.stream else "application/json",
            "User-Agent": f"ai-agent/{__version__}",
            "anthropic-version": ANTHROPIC_VERSION,
        }
        if self.apiKey:
            headers["x-api-key"] = self.apiKey
        headers.update(self.headers)
        return headers

    def _canThink(self, messages: Sequence[ChatMessage]) -> bool:
        """
        Whether thinking may be on: not when the last assistant message made
        tool calls whose thinking blocks are unknown.
        """
        for message in reversed(messages):
            if message.role == "assistant":
                return not message.toolCalls or message.toolCalls[0].id in self._thinking
        return True

    def rememberThinking(self, calls: Sequence[ToolCall], blocks: Sequence[dict[str, Any]]) -> None:
        """
        Keep the signed thinking C{blocks} of an answer that made C{calls},
        for the request that sends their results.
        """
        if not calls or not blocks:
            return
        self._thinking[calls[0].id] = tuple(blocks)
        self._thinking.move_to_end(calls[0].id)
        while len(self._thinking) > _REMEMBERED_ANSWERS:
            self._thinking.popitem(last=False)


@attrs.define
class _Block:
    """
    One content block being streamed.
    """

    type: str
    id: str = ""
    name: str = ""
    input: Any = None
    parts: list[str] = attrs.field(factory=list)
    signature: str = ""
    data: str = ""


@attrs.define(eq=False)
class _MessageCall(HTTPCall):
    """
    One Messages call: the assembled answer.
    """

    _contentBlocks: dict[int, _Block] = attrs.field(factory=dict, init=False)
    _stopReason: str | None = attrs.field(default=None, init=False)
    _usage: dict[str, int] = attrs.field(factory=dict, init=False)

    endMarker: ClassVar[str] = "message_stop"

    # Streaming.

    def streamEvent(self, event: SSEEvent) -> None:
        data = event.data.strip()
        if not data:
            return
        try:
            payload = loadsJSON(data)
        except ValueError:
            raise self.invalid(f"a stream event is not JSON: {truncate(data)}") from None
        if not isinstance(payload, dict):
            raise self.invalid(f"a stream event is not a JSON object: {truncate(data)}")
        kind = payload.get("type") or event.event
        if kind == "error" or payload.get("error"):
            raise self.upstreamError(payload)
        if kind == "message_start":
            message = payload.get("message")
            if isinstance(message, dict):
                self._takeUsage(message.get("usage"))
        elif kind == "content_block_start":
            block = payload.get("content_block")
            if not isinstance(block, dict):
                raise self.invalid("a content_block_start event has no content_block")
            self._blockStart(self._index(payload), block)
        elif kind == "content_block_delta":
            delta = payload.get("delta")
            if not isinstance(delta, dict):
                raise self.invalid("a content_block_delta event has no delta")
            self._blockDelta(self._index(payload), delta)
        elif kind == "message_delta":
            delta = payload.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                self._stopReason = delta["stop_reason"]
            self._takeUsage(payload.get("usage"))
        elif kind == "message_stop":
            self.markEnd()
        # ping, content_block_stop and event types added later need nothing.

    def streamFinished(self) -> bool:
        return self._stopReason is not None

    def _index(self, payload: Mapping[str, Any]) -> int:
        index = payload.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            raise self.invalid(f"a {payload.get('type')} event has no index")
        return index

    def _blockStart(self, index: int, block: Mapping[str, Any]) -> None:
        kind = str(block.get("type") or "")
        current = _Block(kind)
        self._contentBlocks[index] = current
        if kind == "text":
            self._addText(current, block.get("text"))
        elif kind == "thinking":
            self._addThinking(current, block.get("thinking"))
            if isinstance(block.get("signature"), str):
                current.signature = block["signature"]
        elif kind == "redacted_thinking":
            current.data = str(block.get("data") or "")
        elif kind == "tool_use":
            self._toolUse(current, block, f"content block {index}")

    def _blockDelta(self, index: int, delta: Mapping[str, Any]) -> None:
        current = self._contentBlocks.get(index)
        if current is None:
            raise self.invalid(f"a delta for content block {index}, which never started")
        kind = delta.get("type")
        if kind == "text_delta":
            self._addText(current, delta.get("text"))
        elif kind == "thinking_delta":
            self._addThinking(current, delta.get("thinking"))
        elif kind == "signature_delta":
            if isinstance(delta.get("signature"), str):
                current.signature += delta["signature"]
        elif kind == "input_json_delta":
            if isinstance(delta.get("partial_json"), str):
                current.parts.append(delta["partial_json"])

    def _toolUse(self, block: _Block, item: Mapping[str, Any], where: str) -> None:
        """
        Take a C{tool_use} block's id, name and input, each checked: a shape
        the server cannot use is a 502 naming the part.
        """
        name, callId, given = item.get("name"), item.get("id"), item.get("input")
        if not isinstance(name, str) or not name:
            raise self.invalid(f"{where} is a tool_use block without a name")
        if callId is not None and not isinstance(callId, str):
            raise self.invalid(f"{where} is a tool_use block whose id is not a string")
        if given is not None and not isinstance(given, dict):
            raise self.invalid(f"{where} is a tool_use block whose input is not an object")
        block.id, block.name, block.input = callId or "", name, given

    def _addText(self, block: _Block, text: Any) -> None:
        if isinstance(text, str) and text:
            block.parts.append(text)
            self.sink.content(text)

    def _addThinking(self, block: _Block, text: Any) -> None:
        if isinstance(text, str) and text:
            block.parts.append(text)
            self.sink.reasoning(text)

    def _takeUsage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        for key in (
            "input_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "output_tokens",
        ):
            if usage.get(key) is not None:
                self._usage[key] = self.tokenCount(usage, key, "usage")

    def assembled(self) -> LLMResponse:
        return self._answer([block for _, block in sorted(self._contentBlocks.items())])

    # Not streaming.

    def parseBody(self, body: dict[str, Any]) -> LLMResponse:
        content = body.get("content")
        if not isinstance(content, list):
            raise self.invalid("the response has no content")
        blocks: list[_Block] = []
        for position, item in enumerate(content):
            if not isinstance(item, dict):
                continue
            kind = str(item.get("type") or "")
            block = _Block(kind)
            if kind == "text" and isinstance(item.get("text"), str):
                block.parts.append(item["text"])
            elif kind == "thinking" and isinstance(item.get("thinking"), str):
                block.parts.append(item["thinking"])
                block.signature = str(item.get("signature") or "")
            elif kind == "redacted_thinking":
                block.data = str(item.get("data") or "")
            elif kind == "tool_use":
                self._toolUse(block, item, f"content[{position}]")
            blocks.append(block)
        if isinstance(body.get("stop_reason"), str):
            self._stopReason = body["stop_reason"]
        self._takeUsage(body.get("usage"))
        response = self._answer(blocks)
        if self.request.stream:
            # Asked to stream but answered in one piece: still feed the sink.
            if response.reasoning:
                self.sink.reasoning(response.reasoning)
            if response.content:
                self.sink.content(response.content)
        return response

    # Both.

    def _answer(self, blocks: Sequence[_Block]) -> LLMResponse:
        toolCalls = tuple(
            ToolCall(
                id=block.id or f"toolu_{position}",
                name=block.name,
                arguments=_arguments(block),
            )
            for position, block in enumerate(blocks)
            if block.type == "tool_use"
        )
        signed = [_signed(block) for block in blocks]
        provider = self.provider
        assert isinstance(provider, AnthropicProvider)
        provider.rememberThinking(toolCalls, [block for block in signed if block is not None])
        usage = self._usage
        prompt = (
            usage.get("input_tokens", 0)
            + usage.get("cache_creation_input_tokens", 0)
            + usage.get("cache_read_input_tokens", 0)
        )
        stopReason = self._stopReason
        if stopReason is None:
            finishReason = FinishReason.TOOL_CALLS if toolCalls else FinishReason.END
        else:
            finishReason = STOP_REASONS.get(stopReason, stopReason)
        return LLMResponse(
            content="".join("".join(b.parts) for b in blocks if b.type == "text"),
            reasoning="".join("".join(b.parts) for b in blocks if b.type == "thinking"),
            toolCalls=toolCalls,
            finishReason=finishReason,
            usage=Usage(
                prompt,
                usage.get("output_tokens", 0),
                cacheReadTokens=usage.get("cache_read_input_tokens", 0),
                cacheWriteTokens=usage.get("cache_creation_input_tokens", 0),
            ),
        )


@attrs.define(eq=False)
class _CountCall(HTTPCall):
    """
    One C{count_tokens} call: its answer is C{{"input_tokens": N}}, kept
    as an L{LLMResponse}'s prompt tokens.
    """

    def callURL(self) -> str:
        return messagesURL(self.provider.baseUrl) + "/count_tokens"

    def callPayload(self) -> dict[str, Any]:
        payload = self.provider.payload(self.request)
        return {key: payload[key] for key in _COUNTED if key in payload}

    def answerLimit(self) -> int:
        return min(self.provider.maxAnswerBytes, MAX_COUNT_ANSWER)

    def parseBody(self, body: dict[str, Any]) -> LLMResponse:
        if body.get("input_tokens") is None:
            raise self.invalid("the count has no input_tokens")
        return LLMResponse("", usage=Usage(self.tokenCount(body, "input_tokens", "the count")))


#: The fields of a Messages call that a token count takes.
_COUNTED = ("model", "system", "messages", "tools")


def _arguments(block: _Block) -> str:
    text = "".join(block.parts)
    if text.strip():
        return text
    if isinstance(block.input, dict) and block.input:
        return json.dumps(block.input)
    return "{}"


def _signed(block: _Block) -> dict[str, Any] | None:
    """
    A thinking block as it must be sent back, or L{None} when it cannot be
    (no signature) or is not thinking.
    """
    if block.type == "thinking" and block.signature:
        return {"type": "thinking", "thinking": "".join(block.parts), "signature": block.signature}
    if block.type == "redacted_thinking" and block.data:
        return {"type": "redacted_thinking", "data": block.data}
    return None


__all__ = [
    "ANTHROPIC_VERSION",
    "AnthropicProvider",
    "DEFAULT_MAX_TOKENS",
    "MAX_COUNT_ANSWER",
    "STOP_REASONS",
    "THINKING_BUDGETS",
    "messagesURL",
    "translateMessages",
]
