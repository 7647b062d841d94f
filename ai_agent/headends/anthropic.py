# -*- test-case-name: tests.test_headend_anthropic,tests.test_clients_anthropic -*-
"""
The Anthropic Messages API headend: agents served as models over
C{POST /v1/messages} and C{POST /v1/messages/count_tokens}, for the
Anthropic SDKs and Claude Code.

A request is translated into the neutral L{RunRequest} (never passed
through: the agent's providers may speak either wire), and the run's events
are encoded as Anthropic's stream (L{MessagesEncoder}): C{message_start},
content blocks with contiguous indices, each started, delta'd and stopped
before the next (the model's reasoning and the agent's progress as a
C{thinking} block when the request enables thinking, then text, then the
client's C{tool_use} blocks),
C{message_delta} with the stop reason and usage, C{message_stop}; C{ping}
while the stream is otherwise silent.  Errors use Anthropic's envelope
(L{ANTHROPIC_ERRORS}).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import secrets
import time
from typing import Annotated, Any, Callable, ClassVar, Iterable, Literal, cast

import attrs
from klein import Klein
from msgspec import Meta, Struct, field
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest

from ai_agent.accounting import RunLabels
from ai_agent.agentfile import AgentSpec
from ai_agent.errors import (
    AgentError,
    ErrorFormat,
    ErrorKind,
    ProviderError,
    invalidRequest,
    notFound,
)
from ai_agent.events import (
    ClientToolCall,
    Finished,
    FinishReason,
    Progress,
    ReasoningText,
    Usage,
)
from ai_agent.flow import CLIENT_STALL_TIMEOUT
from ai_agent.headends._api import (
    API,
    Exchange,
    Headend,
    installErrorHandlers,
    observed,
    parseBody,
    resolveAgent,
    serve,
)
from ai_agent.headends._bodies import BodyGate
from ai_agent.headends._http import principalOf
from ai_agent.headends._json import dumps as _dumps
from ai_agent.headends._json import dumpsAny as _dumpsAny
from ai_agent.headends._json import dumpsPlain as _dumpsPlain
from ai_agent.headends._quota import admitted
from ai_agent.headends._request import (
    MAX_MESSAGES,
    MAX_OUTPUT_TOKENS,
    MAX_STOP_LENGTH,
    MAX_STOP_SEQUENCES,
    MAX_TOOLS,
    between,
    headerLookup,
    loadBody,
    showValue,
    typeName,
)
from ai_agent.headends._schema import TOOL_NAME_PATTERN, Override, anthropicWords, convertBody
from ai_agent.limits import MAX_RUN_ANSWER
from ai_agent.observe import NULL_OBSERVER, Observer, requestScope
from ai_agent.pool import RunPool
from ai_agent.providers import ChatMessage, LLMRequest, TokenCounter, ToolCall, ToolSpec
from ai_agent.reactors import IReactorTimeAndThreads
from ai_agent.redaction import Redactor, shorten
from ai_agent.registry import AgentRegistry, ServedAgent
from ai_agent.request import ClientTool, OutputFormat, RunRequest, Sampling, ToolChoice
from ai_agent.session import SessionRunner, buildMessages
from ai_agent.tasks import forwardedHeaders, loggable

#: The header every Anthropic client sends; requests carrying it get
#: Anthropic's error envelope and model list wherever they go.
VERSION_HEADER = b"anthropic-version"

#: Seconds a streaming request may go without any event before
#: C{message_start} is sent anyway.
STREAM_HEAD_GRACE = 10.0

#: Seconds a started stream may stay silent (tools running, a slow model)
#: before a C{ping} event is sent.
PING_INTERVAL = 5.0

#: Seconds an Anthropic-wire provider's own token count may take before
#: C{count_tokens} answers the estimate instead.
PROVIDER_COUNT_TIMEOUT = 10.0

#: Characters per token of the C{count_tokens} estimate.
CHARS_PER_TOKEN = 4
#: Tokens the estimate adds for each message (its role and framing).
TOKENS_PER_MESSAGE = 4

_JSON = b"application/json"


# -- errors -------------------------------------------------------------


#: Neutral error kinds as Anthropic's error types.
_ERROR_TYPES = {
    ErrorKind.INVALID_REQUEST: "invalid_request_error",
    ErrorKind.AUTHENTICATION: "authentication_error",
    ErrorKind.PERMISSION: "permission_error",
    ErrorKind.NOT_FOUND: "not_found_error",
    ErrorKind.REQUEST_TOO_LARGE: "request_too_large",
    ErrorKind.RATE_LIMIT: "rate_limit_error",
    ErrorKind.TIMEOUT: "timeout_error",
    ErrorKind.OVERLOADED: "overloaded_error",
    ErrorKind.SERVER: "api_error",
}

#: Anthropic's status for an overloaded server.
OVERLOADED_STATUS = 529


@attrs.frozen
class AnthropicErrors:
    """
    Anthropic's envelope: C{{"type": "error", "error": {"type", "message"}}}
    (an L{ai_agent.errors.ErrorFormat}).  A full queue or a shutdown (the
    neutral C{overloaded} kind) is a 529 C{overloaded_error}.
    """

    def type(self, error: AgentError) -> str:
        """
        Anthropic's error C{type} for C{error}'s kind.
        """
        return _ERROR_TYPES.get(error.kind, "api_error")

    def envelope(self, error: AgentError) -> dict[str, Any]:
        """
        The envelope as a JSON-ready value.
        """
        return {"type": "error", "error": {"type": self.type(error), "message": error.message}}

    def status(self, error: AgentError) -> int:
        if error.kind == ErrorKind.OVERLOADED:
            return OVERLOADED_STATUS
        return error.status

    def body(self, error: AgentError) -> bytes:
        return _dumps(self.envelope(error))


#: The error format of the Anthropic routes.
ANTHROPIC_ERRORS = AnthropicErrors()


def isAnthropicClient(path: bytes, headers: Headers) -> bool:
    """
    Whether a request comes from an Anthropic client (it carries
    C{anthropic-version}): its errors use L{ANTHROPIC_ERRORS} whatever the
    path (a L{ai_agent.headends._site.Mount}'s C{claimsErrors}).
    """
    return headers.hasHeader(VERSION_HEADER)


# -- the request --------------------------------------------------------


# -- the Messages request as types (see ai_agent.headends._schema) ------------

_NonEmpty = Annotated[str, Meta(min_length=1)]


class AnthropicTextBlock(Struct, tag_field="type", tag="text"):
    """A text block."""

    text: str


class AnthropicTextOnlyBlock(Struct):
    """A text block where only text blocks may be (system, a tool result)."""

    type: Literal["text"]
    text: str


class AnthropicToolUseBlock(Struct, tag_field="type", tag="tool_use"):
    """An assistant's tool call."""

    id: _NonEmpty
    name: str
    input: dict[str, Any] = {}


class AnthropicToolResultBlock(Struct, tag_field="type", tag="tool_result"):
    """A tool's result, answering a tool_use block of the assistant message before."""

    tool_use_id: _NonEmpty
    content: str | list[AnthropicTextOnlyBlock] | None = None
    is_error: bool | None = None


class AnthropicThinkingBlock(Struct, tag_field="type", tag="thinking"):
    """An echoed thinking block (not replayed to the model)."""


class AnthropicRedactedThinkingBlock(Struct, tag_field="type", tag="redacted_thinking"):
    """An echoed redacted thinking block (not replayed to the model)."""


_UserBlock = (
    AnthropicTextBlock
    | AnthropicToolResultBlock
    | AnthropicThinkingBlock
    | AnthropicRedactedThinkingBlock
)
_AssistantBlock = (
    AnthropicTextBlock
    | AnthropicToolUseBlock
    | AnthropicThinkingBlock
    | AnthropicRedactedThinkingBlock
)


class AnthropicUserMessage(Struct, tag_field="role", tag="user"):
    """A user turn: text and tool_result blocks."""

    content: str | list[_UserBlock]


class AnthropicAssistantMessage(Struct, tag_field="role", tag="assistant"):
    """An assistant turn: text and tool_use blocks."""

    content: str | list[_AssistantBlock]


class AnthropicSystemMessage(Struct, tag_field="role", tag="system"):
    """A system message inside the conversation (as Claude Code sends)."""

    content: str | list[AnthropicTextOnlyBlock]


_AnthropicMessage = AnthropicUserMessage | AnthropicAssistantMessage | AnthropicSystemMessage


class AnthropicTool(Struct):
    """A custom tool (Anthropic's server tools are refused)."""

    name: Annotated[str, Meta(pattern=TOOL_NAME_PATTERN)]
    type: Literal["custom"] | None = None
    description: str | None = None
    input_schema: dict[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )


class AnthropicToolChoiceAuto(Struct, tag_field="type", tag="auto"):
    """The model decides."""

    disable_parallel_tool_use: bool | None = None


class AnthropicToolChoiceAny(Struct, tag_field="type", tag="any"):
    """The model calls some tool."""

    disable_parallel_tool_use: bool | None = None


class AnthropicToolChoiceNone(Struct, tag_field="type", tag="none"):
    """The client's tools are hidden."""

    disable_parallel_tool_use: bool | None = None


class AnthropicToolChoiceTool(Struct, tag_field="type", tag="tool"):
    """The named tool (one of tools) is called."""

    name: str
    disable_parallel_tool_use: bool | None = None


_ToolChoice = (
    AnthropicToolChoiceAuto
    | AnthropicToolChoiceAny
    | AnthropicToolChoiceNone
    | AnthropicToolChoiceTool
)


class AnthropicThinkingEnabled(Struct, tag_field="type", tag="enabled"):
    """Thinking blocks, with a budget (checked, not used)."""

    budget_tokens: Annotated[int, Meta(ge=1024)]


class AnthropicThinkingAdaptive(Struct, tag_field="type", tag="adaptive"):
    """Thinking blocks, the budget left to the model."""


class AnthropicThinkingDisabled(Struct, tag_field="type", tag="disabled"):
    """No thinking blocks."""


class AnthropicOutputFormat(Struct):
    """
    The answer's format: JSON conforming to the schema, as one text block;
    overrides the agent's `output`.
    """

    type: Literal["json_schema"]
    schema: dict[str, Any]


class AnthropicOutputConfig(Struct):
    """output_config: the answer's format; effort is checked and not used."""

    effort: str | None = None
    format: AnthropicOutputFormat | None = None


class CountTokensRequest(Struct, kw_only=True):
    """
    A count_tokens request: a Messages request without max_tokens. Fields
    not listed here are accepted and ignored.
    """

    model: _NonEmpty
    messages: Annotated[list[_AnthropicMessage], Meta(min_length=1, max_length=MAX_MESSAGES)]
    system: str | list[AnthropicTextOnlyBlock] | None = None
    stream: bool | None = None
    temperature: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, Meta(description="Accepted; not used.")] | None = None
    stop_sequences: (
        Annotated[
            list[Annotated[str, Meta(max_length=MAX_STOP_LENGTH)]],
            Meta(max_length=MAX_STOP_SEQUENCES),
        ]
        | None
    ) = None
    tools: Annotated[list[AnthropicTool], Meta(max_length=MAX_TOOLS)] | None = None
    tool_choice: _ToolChoice | None = None
    metadata: Annotated[Any, Meta(description="metadata.user_id is logged with the run.")] = None
    thinking: (
        AnthropicThinkingEnabled | AnthropicThinkingAdaptive | AnthropicThinkingDisabled | None
    ) = None
    output_config: AnthropicOutputConfig | None = None
    output_format: AnthropicOutputFormat | None = None
    max_tokens: Annotated[int, Meta(ge=1, le=MAX_OUTPUT_TOKENS)] | None = None


class MessagesRequestBody(CountTokensRequest, kw_only=True):
    """
    Anthropic's Messages request (max_tokens required). Fields not listed
    are accepted and ignored; so are any anthropic-version and
    anthropic-beta headers.
    """

    max_tokens: Annotated[int, Meta(ge=1, le=MAX_OUTPUT_TOKENS)]


@attrs.frozen
class MessagesRequest:
    """
    A validated C{POST /v1/messages} (or C{count_tokens}) body.

    @ivar system: the C{system} field's texts, which follow the agent's
        own prompt.
    @ivar thinking: whether the client enabled thinking, and so gets the
        model's reasoning and the agent's progress as C{thinking} blocks.
    """

    model: str
    messages: tuple[ChatMessage, ...]
    system: tuple[str, ...] = ()
    stream: bool = False
    sampling: Sampling = Sampling()
    tools: tuple[ClientTool, ...] = ()
    toolChoice: ToolChoice = ToolChoice()
    parallelToolCalls: bool | None = None
    user: str | None = None
    thinking: bool = False

    def runRequest(self, labels: RunLabels) -> RunRequest:
        """
        The neutral run request (whose LLM calls always stream).
        """
        return RunRequest(
            self.messages,
            self.system,
            self.sampling,
            True,
            labels,
            self.tools,
            self.toolChoice,
            self.parallelToolCalls,
        )


def parseMessagesRequest(body: bytes) -> MessagesRequest:
    """
    Parse and validate a C{POST /v1/messages} body (C{max_tokens}
    required, as Anthropic's).

    @raise AgentError: a 400 naming the offending field.
    """
    return _parse(body, requireMaxTokens=True)


def parseCountTokensRequest(body: bytes) -> MessagesRequest:
    """
    Parse and validate a C{POST /v1/messages/count_tokens} body (no
    C{max_tokens}).
    """
    return _parse(body, requireMaxTokens=False)


def _parse(body: bytes, requireMaxTokens: bool) -> MessagesRequest:
    data = loadBody(body)
    if not isinstance(data, dict):
        raise invalidRequest(f"the request body must be a JSON object, not {typeName(data)}")
    # The model, then a missing max_tokens, are named before any other
    # mistake (msgspec would name a missing field after the others').
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise _MESSAGES_WORDS["model"]("model", model)
    if requireMaxTokens and data.get("max_tokens") is None:
        raise invalidRequest("max_tokens: Field required", "max_tokens")
    kind = MessagesRequestBody if requireMaxTokens else CountTokensRequest
    request = convertBody(data, kind, _MESSAGES_WORDS, anthropicWords)
    if request.output_format is not None and (
        request.output_config is not None and request.output_config.format is not None
    ):
        raise invalidRequest(
            "output_format: both output_format and output_config.format were given;"
            " send only output_config.format (output_format is its older name)",
            "output_format",
        )
    outputFormat = request.output_format or (
        request.output_config.format if request.output_config is not None else None
    )
    tools = _tools(request.tools or ())
    choice, parallel = _toolChoice(request.tool_choice, tools)
    metadata = request.metadata
    user = None
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        user = loggable(metadata["user_id"])
    system = request.system
    systemText = _blockTexts(system) if system else ""
    return MessagesRequest(
        model=request.model,
        messages=_messages(request.messages),
        system=(systemText,) if systemText else (),
        stream=bool(request.stream),
        sampling=Sampling(
            request.temperature,
            request.top_p,
            request.max_tokens,
            tuple(request.stop_sequences or ()),
            None,
            None if outputFormat is None else OutputFormat(outputFormat.schema),
        ),
        tools=tools,
        toolChoice=choice,
        parallelToolCalls=parallel,
        user=user,
        thinking=isinstance(
            request.thinking, (AnthropicThinkingEnabled, AnthropicThinkingAdaptive)
        ),
    )


#: Anthropic's smallest C{thinking.budget_tokens}.
MIN_THINKING_BUDGET = 1024


def _blockTexts(content: str | list[AnthropicTextOnlyBlock]) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(block.text for block in content)


def _messages(items: list[_AnthropicMessage]) -> tuple[ChatMessage, ...]:
    conversation: list[ChatMessage] = []
    # The tool_use ids of the last assistant message: the tool_result
    # blocks that may follow.
    calls: frozenset[str] = frozenset()
    for index, item in enumerate(items):
        where = f"messages[{index}].content"
        if isinstance(item, AnthropicAssistantMessage):
            message = _assistantMessage(item.content)
            calls = frozenset(call.id for call in message.toolCalls)
            conversation.append(message)
        elif isinstance(item, AnthropicUserMessage):
            conversation.extend(_userMessages(item.content, where, calls))
        else:
            # Claude Code sends system messages inside the conversation.
            conversation.append(ChatMessage("system", _blockTexts(item.content)))
    return tuple(conversation)


def _assistantMessage(content: str | list[_AssistantBlock]) -> ChatMessage:
    if isinstance(content, str):
        return ChatMessage("assistant", content)
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in content:
        if isinstance(block, AnthropicTextBlock):
            texts.append(block.text)
        elif isinstance(block, AnthropicToolUseBlock):
            arguments = json.dumps(block.input, ensure_ascii=False)
            calls.append(ToolCall(block.id, block.name, arguments))
        # Echoed thinking blocks: the agent's reasoning is not replayed.
    return ChatMessage("assistant", "".join(texts), toolCalls=tuple(calls))


def _userMessages(
    content: str | list[_UserBlock], where: str, calls: frozenset[str]
) -> list[ChatMessage]:
    """
    A user turn: each C{tool_result} block as a tool message (first, so
    they follow the assistant's calls), then the text as a user message.

    @param calls: the C{tool_use} ids of the assistant message before; a
        C{tool_result} answering another id is refused, in the words of
        Anthropic's API.
    """
    if isinstance(content, str):
        return [ChatMessage("user", content)]
    results: list[ChatMessage] = []
    texts: list[str] = []
    for index, block in enumerate(content):
        if isinstance(block, AnthropicTextBlock):
            texts.append(block.text)
        elif isinstance(block, AnthropicToolResultBlock):
            callId = block.tool_use_id
            if callId not in calls:
                path = f"{where}[{index}]"
                raise invalidRequest(
                    f"{path}: unexpected `tool_use_id` found in `tool_result` blocks:"
                    f" {shorten(callId)}. Each `tool_result` block must have a corresponding"
                    " `tool_use` block in the previous message.",
                    f"{path}.tool_use_id",
                )
            text = _blockTexts(block.content) if block.content else ""
            if block.is_error:
                text = "Error: " + text
            results.append(ChatMessage("tool", text, toolCallId=callId))
    if texts or not results:
        results.append(ChatMessage("user", "\n".join(texts)))
    return results


def _tools(items: list[AnthropicTool] | tuple[()]) -> tuple[ClientTool, ...]:
    """
    C{tools}: custom tools (a name, a description, an C{input_schema}),
    names unique.
    """
    tools: list[ClientTool] = []
    names: set[str] = set()
    for index, tool in enumerate(items):
        where = f"tools[{index}]"
        if tool.name in names:
            raise invalidRequest(
                f"{where}.name: the tool name {tool.name!r} repeats", f"{where}.name"
            )
        names.add(tool.name)
        spec = ToolSpec(tool.name, tool.description or "", tool.input_schema)
        tools.append(ClientTool(spec, f"{where}.name"))
    return tuple(tools)


def _toolChoice(
    value: _ToolChoice | None, tools: tuple[ClientTool, ...]
) -> tuple[ToolChoice, bool | None]:
    """
    C{tool_choice} (C{auto}, C{any}, C{tool} with a C{name}, C{none}) and
    its C{disable_parallel_tool_use}.
    """
    if value is None:
        return ToolChoice(), None
    disable = value.disable_parallel_tool_use
    parallel = None if disable is None else not disable
    if isinstance(value, AnthropicToolChoiceAny):
        return ToolChoice(ToolChoice.REQUIRED), parallel
    if isinstance(value, AnthropicToolChoiceNone):
        return ToolChoice(ToolChoice.NONE), parallel
    if isinstance(value, AnthropicToolChoiceTool):
        if value.name not in {tool.spec.name for tool in tools}:
            raise invalidRequest(
                f"tool_choice.name: {showValue(value.name)} is not one of the tools",
                "tool_choice.name",
            )
        return ToolChoice(ToolChoice.TOOL, value.name), parallel
    return ToolChoice(), parallel


def _unsupportedBlock(kind: Any, path: str) -> AgentError:
    return invalidRequest(
        f"{path}: {showValue(kind)} blocks are not supported; agents here take text"
        " (text, tool_use, tool_result and echoed thinking blocks)",
        path,
        "unsupported_content_type",
    )


def _blockType(param: str, value: Any) -> AgentError:
    path = param.rsplit(".", 1)[0]
    if not isinstance(value, str):
        return invalidRequest(f"{param}: a string is required", param)
    return _unsupportedBlock(value, path)


def _typed(what: str) -> Override:
    """C{'param' must be a boolean, not ...}: the words of OpenAI's style."""

    def words(param: str, value: Any) -> AgentError:
        return invalidRequest(
            f"'{param}' must be {what}, not {typeName(value)}", param, "invalid_type"
        )

    return words


def _maxTokens(param: str, value: Any) -> AgentError:
    if isinstance(value, bool) or not isinstance(value, int):
        return _typed("an integer")(param, value)
    return invalidRequest(
        f"max_tokens: must be between 1 and {MAX_OUTPUT_TOKENS}, got {showValue(value)}",
        "max_tokens",
    )


def _content(param: str, value: Any) -> AgentError:
    if value is None:
        return invalidRequest(f"{param}: Field required", param)
    return invalidRequest(
        f"{param}: must be a string or an array of content blocks, not {typeName(value)}", param
    )


def _stopSequences(param: str, value: Any) -> AgentError:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return invalidRequest(
            f"stop_sequences: {len(value)} sequences; at most {MAX_STOP_SEQUENCES} are allowed",
            "stop_sequences",
        )
    return invalidRequest("stop_sequences: must be an array of strings", "stop_sequences")


def _stopSequence(param: str, value: Any) -> AgentError:
    if not isinstance(value, str):
        return invalidRequest("stop_sequences: must be an array of strings", "stop_sequences")
    return invalidRequest(
        f"{param}: {len(value)} characters; at most {MAX_STOP_LENGTH} are allowed", param
    )


def _toolType(param: str, value: Any) -> AgentError:
    where = param.rsplit(".", 1)[0]
    return invalidRequest(
        f"{where}: {showValue(value)} is one of Anthropic's server tools, which this"
        " server does not run; send custom tools (a name and an input_schema)",
        param,
        "unsupported_tool_type",
    )


def _toolUse(param: str, value: Any) -> AgentError:
    path = param.rsplit(".", 1)[0]
    return invalidRequest(f"{path}: a tool_use block needs a string id and name", path)


def _thinkingType(param: str, value: Any) -> AgentError:
    return invalidRequest(
        f"thinking.type: must be enabled, adaptive or disabled, got {showValue(value)}",
        "thinking.type",
    )


def _budget(param: str, value: Any) -> AgentError:
    if isinstance(value, bool) or not isinstance(value, int):
        return invalidRequest(
            "thinking.budget_tokens: an integer is required when thinking is enabled",
            "thinking.budget_tokens",
        )
    return invalidRequest(
        f"thinking.budget_tokens: must be at least {MIN_THINKING_BUDGET}",
        "thinking.budget_tokens",
    )


def _formatType(param: str, value: Any) -> AgentError:
    return invalidRequest(f"{param}: must be json_schema, got {showValue(value)}", param)


def _formatSchema(param: str, value: Any) -> AgentError:
    return invalidRequest(
        f"{param}: a JSON Schema object is required, not {typeName(value)}", param
    )


def _object(param: str, value: Any) -> AgentError:
    return invalidRequest(f"{param}: must be an object, not {typeName(value)}", param)


#: The words of the refusals clients and tests rely on, by C{param}; the
#: rest are in Anthropic's style (L{anthropicWords}).
_MESSAGES_WORDS: dict[str, Override] = {
    "model": lambda param, value: invalidRequest("model: a non-empty string is required", "model"),
    "max_tokens": _maxTokens,
    "temperature": between(0.0, 1.0),
    "top_p": between(0.0, 1.0),
    "top_k": _typed("an integer"),
    "stream": _typed("a boolean"),
    "messages": lambda param, value: (
        invalidRequest("messages: Field required", "messages")
        if value is None
        else invalidRequest("messages: at least one message is required", "messages")
        if value == []
        else invalidRequest(
            f"messages: {len(value)} messages; at most {MAX_MESSAGES} are allowed", "messages"
        )
        if isinstance(value, list)
        else invalidRequest(f"messages: must be an array, not {typeName(value)}", "messages")
    ),
    "messages[]": _object,
    "messages[].role": lambda param, value: invalidRequest(
        f"{param}: must be user or assistant, got {showValue(value)}", param
    ),
    "messages[].content": _content,
    "messages[].content[]": _object,
    "messages[].content[].type": _blockType,
    "messages[].content[].text": lambda param, value: invalidRequest(
        f"{param}: a string is required", param
    ),
    "messages[].content[].id": _toolUse,
    "messages[].content[].name": _toolUse,
    "messages[].content[].input": lambda param, value: invalidRequest(
        f"{param}: must be an object", param
    ),
    "messages[].content[].tool_use_id": lambda param, value: invalidRequest(
        f"{param}: a non-empty string is required", param
    ),
    "messages[].content[].is_error": _typed("a boolean"),
    "messages[].content[].content": _content,
    "messages[].content[].content[]": _object,
    "messages[].content[].content[].type": _blockType,
    "messages[].content[].content[].text": lambda param, value: invalidRequest(
        f"{param}: a string is required", param
    ),
    "system": _content,
    "system[]": _object,
    "system[].type": _blockType,
    "system[].text": lambda param, value: invalidRequest(f"{param}: a string is required", param),
    "stop_sequences": _stopSequences,
    "stop_sequences[]": _stopSequence,
    "tools": lambda param, value: (
        invalidRequest(f"tools: {len(value)} tools; at most {MAX_TOOLS} are allowed", "tools")
        if isinstance(value, list)
        else invalidRequest(f"tools: must be an array, not {typeName(value)}", "tools")
    ),
    "tools[]": _object,
    "tools[].type": _toolType,
    "tools[].name": lambda param, value: invalidRequest(
        f"{param}: must be 1 to 64 letters, digits, '_' or '-', got {showValue(value)}", param
    ),
    "tools[].description": _typed("a string"),
    "tools[].input_schema": lambda param, value: invalidRequest(
        f"{param}: must be a JSON Schema object", param
    ),
    "tool_choice": _object,
    "tool_choice.type": lambda param, value: invalidRequest(
        f"tool_choice.type: must be auto, any, tool or none, got {showValue(value)}",
        "tool_choice.type",
    ),
    "tool_choice.name": lambda param, value: invalidRequest(
        f"tool_choice.name: {showValue(value)} is not one of the tools", "tool_choice.name"
    ),
    "tool_choice.disable_parallel_tool_use": _typed("a boolean"),
    "thinking": _object,
    "thinking.type": _thinkingType,
    "thinking.budget_tokens": _budget,
    "output_config": _object,
    "output_config.effort": lambda param, value: invalidRequest(
        f"{param}: must be a string, not {typeName(value)}", param
    ),
    "output_config.format": _object,
    "output_config.format.type": _formatType,
    "output_config.format.schema": _formatSchema,
    "output_format": _object,
    "output_format.type": _formatType,
    "output_format.schema": _formatSchema,
}


# -- token estimate -----------------------------------------------------


def estimateTokens(
    prompt: str, request: MessagesRequest, agentTools: Iterable[ToolSpec] = ()
) -> int:
    """
    An estimate of a run's first input: one token per L{CHARS_PER_TOKEN}
    characters (rounded up) of the agent's prompt, the C{system} texts, the
    messages (text, tool calls and results) and the JSON of every tool
    offered (the agent's own and the client's), plus L{TOKENS_PER_MESSAGE}
    for each message.
    """
    chars = len(prompt) + sum(len(text) for text in request.system)
    for message in request.messages:
        chars += len(message.content)
        for call in message.toolCalls:
            chars += len(call.name) + len(call.arguments)
    specs = [*agentTools, *(tool.spec for tool in request.tools)]
    for spec in specs:
        chars += len(spec.name) + len(spec.description) + len(_dumps(spec.parameters))
    messages = len(request.messages) + 1
    return math.ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * messages


# -- the response -------------------------------------------------------


#: Neutral finish reasons as Anthropic's C{stop_reason}.
STOP_REASONS: dict[str, str] = {
    FinishReason.END: "end_turn",
    FinishReason.STOP_SEQUENCE: "stop_sequence",
    FinishReason.MAX_TOKENS: "max_tokens",
    FinishReason.TOOL_CALLS: "tool_use",
    FinishReason.CONTENT_FILTER: "refusal",
}


def stopReason(reason: str) -> str:
    """
    Anthropic's C{stop_reason} for a neutral finish reason.
    """
    return STOP_REASONS.get(reason, "end_turn")


def signature(thinking: str) -> str:
    """
    The C{signature} of a thinking block this server wrote: a digest of its
    text, so a client can send the block back.  It is not Anthropic's
    signature and Anthropic would not accept it.
    """
    digest = hashlib.sha256(thinking.encode("utf-8", "replace")).digest()
    return "ai-agent." + base64.b64encode(digest).decode("ascii")


def _event(kind: str, payload: dict[str, Any], dumps: Callable[[Any], bytes] = _dumpsAny) -> bytes:
    data = dumps({"type": kind, **payload})
    return b"event: " + kind.encode("ascii") + b"\ndata: " + data + b"\n\n"


@attrs.define
class MessagesEncoder:
    """
    A run as Anthropic's Messages API (a L{ai_agent.headends._stream.RunEncoder}
    with C{ping}s): events when streamed, one C{message} object when not.

    Blocks get contiguous indices and one type each; a block is stopped
    before the next starts.  The model's reasoning and the agent's progress
    share C{thinking} blocks (ended with a L{signature}) when the client
    enabled thinking, and are left out otherwise; answer text goes in
    C{text} blocks, the client's tool calls in C{tool_use} blocks whose
    arguments stream as one C{input_json_delta}.

    @ivar inputEstimate: the input tokens to report before the run has
        reported any (see L{estimateTokens}).
    @ivar frames: whether events are written; off for a whole answer, whose
        message object is all that is written.
    @ivar thinking: whether reasoning and progress are written as
        C{thinking} blocks (the request enabled thinking); without it a
        client that reads C{content[0].text} gets the answer.
    """

    messageId: str
    model: str
    inputEstimate: int = 0
    frames: bool = attrs.field(default=True, kw_only=True)
    thinking: bool = attrs.field(default=True, kw_only=True)
    _text: ReasoningText = attrs.field(factory=ReasoningText, init=False)
    _blocks: list[dict[str, Any]] = attrs.field(factory=list, init=False)
    _usage: Usage = attrs.field(factory=Usage, init=False)

    def _usageObject(self) -> dict[str, int]:
        usage = self._usage
        prompt = usage.promptTokens or self.inputEstimate
        cached = usage.cacheReadTokens + usage.cacheWriteTokens
        return {
            "input_tokens": max(0, prompt - cached),
            "cache_creation_input_tokens": usage.cacheWriteTokens,
            "cache_read_input_tokens": usage.cacheReadTokens,
            "output_tokens": usage.completionTokens,
        }

    def _message(self, content: list[dict[str, Any]], stop: str | None) -> dict[str, Any]:
        return {
            "id": self.messageId,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": self._usageObject(),
        }

    @property
    def _open(self) -> str | None:
        if self._blocks and not self._blocks[-1].get("_stopped"):
            return cast(str, self._blocks[-1]["type"])
        return None

    def _stop(self) -> bytes:
        """
        Stop the open block, if any (a thinking block gets its signature
        first).
        """
        if self._open is None:
            return b""
        block = self._blocks[-1]
        block["_stopped"] = True
        index = len(self._blocks) - 1
        frames = b""
        if block["type"] == "thinking":
            block["signature"] = signature("".join(block["_parts"]))
            frames += self._emit(
                "content_block_delta",
                {
                    "index": index,
                    "delta": {"type": "signature_delta", "signature": block["signature"]},
                },
            )
        return frames + self._emit("content_block_stop", {"index": index})

    def _begin(self, block: dict[str, Any], start: dict[str, Any]) -> bytes:
        frames = self._stop()
        self._blocks.append(block)
        return frames + self._emit(
            "content_block_start", {"index": len(self._blocks) - 1, "content_block": start}
        )

    def _emit(
        self, kind: str, payload: dict[str, Any], dumps: Callable[[Any], bytes] = _dumpsAny
    ) -> bytes:
        return _event(kind, payload, dumps) if self.frames else b""

    def _delta(self, delta: dict[str, Any]) -> bytes:
        # Deltas hold text and an index, no float.
        return self._emit(
            "content_block_delta", {"index": len(self._blocks) - 1, "delta": delta}, _dumpsPlain
        )

    def open(self) -> bytes:
        return self._emit("message_start", {"message": self._message([], None)})

    def content(self, text: str) -> bytes | None:
        if not text:
            return None
        frames = b""
        if self._open != "text":
            frames = self._begin({"type": "text", "_parts": []}, {"type": "text", "text": ""})
        # Pieces are joined once, at the end: a long answer is not copied
        # again with each piece.
        self._blocks[-1]["_parts"].append(text)
        return frames + self._delta({"type": "text_delta", "text": text})

    def _thinking(self, text: str) -> bytes | None:
        if not text:
            return None
        frames = b""
        if self._open != "thinking":
            frames = self._begin(
                {"type": "thinking", "_parts": []},
                {"type": "thinking", "thinking": "", "signature": ""},
            )
        self._blocks[-1]["_parts"].append(text)
        return frames + self._delta({"type": "thinking_delta", "thinking": text})

    def reasoning(self, text: str) -> bytes | None:
        if not self.thinking:
            return None
        return self._thinking(self._text.reasoning(text))

    def progress(self, event: Progress) -> bytes | None:
        if not self.thinking:
            return None
        return self._thinking(self._text.progress(event))

    def toolCall(self, call: ClientToolCall) -> bytes:
        frames = self._begin(
            {"type": "tool_use", "id": call.id, "name": call.name, "arguments": call.arguments},
            {"type": "tool_use", "id": call.id, "name": call.name, "input": {}},
        )
        if call.arguments:
            frames += self._delta({"type": "input_json_delta", "partial_json": call.arguments})
        return frames + self._stop()

    def usage(self, usage: Usage) -> None:
        self._usage = self._usage + usage
        return None

    def keepAlive(self) -> bytes:
        return self._emit("ping", {})

    def finish(self, finished: Finished) -> bytes:
        self._usage = finished.usage
        return (
            self._stop()
            + self._emit(
                "message_delta",
                {
                    "delta": {"stop_reason": stopReason(finished.reason), "stop_sequence": None},
                    "usage": self._usageObject(),
                },
            )
            + self._emit("message_stop", {})
        )

    def error(self, error: AgentError) -> bytes:
        return b"event: error\ndata: " + ANTHROPIC_ERRORS.body(error) + b"\n\n"

    def body(self, finished: Finished) -> bytes:
        self._usage = finished.usage
        self._stop()
        return _dumpsAny(
            self._message(
                [_finalBlock(block) for block in self._blocks], stopReason(finished.reason)
            )
        )


def _finalBlock(block: dict[str, Any]) -> dict[str, Any]:
    """
    A kept block as the whole answer shows it.
    """
    if block["type"] == "tool_use":
        try:
            arguments = json.loads(block["arguments"] or "{}")
        except ValueError:
            arguments = None
        return {
            "type": "tool_use",
            "id": block["id"],
            "name": block["name"],
            "input": arguments if isinstance(arguments, dict) else {},
        }
    text = "".join(block["_parts"])
    if block["type"] == "thinking":
        return {"type": "thinking", "thinking": text, "signature": block["signature"]}
    return {"type": "text", "text": text}


# -- models -------------------------------------------------------------


def modelObject(agent: ServedAgent) -> dict[str, Any]:
    """
    A served agent as Anthropic's model object.
    """
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(agent.created))
    return {"type": "model", "id": agent.id, "display_name": agent.id, "created_at": created}


def modelList(agents: Iterable[ServedAgent]) -> dict[str, Any]:
    """
    The served agents as Anthropic's model list (one page holds them all).
    """
    data = [modelObject(agent) for agent in agents]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def unknownModel(model: str, served: list[str]) -> AgentError:
    """
    The 404 for a model no agent is served under.
    """
    return notFound(
        f"model: {shorten(repr(model))} is not served here"
        f" (served: {shorten(', '.join(served) or 'none', 300)})",
        "model_not_found",
        "model",
    )


@attrs.frozen
class AnthropicModels:
    """
    Anthropic's model list and model object, and its 404 for an unknown
    model (a L{ai_agent.headends._site.ModelCatalog}): what C{GET
    /v1/models} answers an Anthropic client.
    """

    def listing(self, agents: Iterable[ServedAgent]) -> dict[str, Any]:
        return modelList(agents)

    def entry(self, agent: ServedAgent) -> dict[str, Any]:
        return modelObject(agent)

    def unknown(self, model: str, served: list[str]) -> AgentError:
        return unknownModel(model, served)


#: The Messages API's model list (see L{AnthropicModels}).
ANTHROPIC_MODELS = AnthropicModels()


def _messageId() -> str:
    return "msg_" + secrets.token_hex(12)


def _messagesHeaders(exchange: Exchange[MessagesRequest]) -> dict[bytes, bytes]:
    requestId = exchange.labels.requestId.encode("ascii")
    return {b"request-id": requestId, b"x-request-id": requestId}


# -- the routes ---------------------------------------------------------


@attrs.define(slots=False)
class AnthropicHeadend(Headend):
    """
    Klein routes for the Anthropic Messages API on one port (mounted at
    C{/v1/messages}); reloadable like the OpenAI headend (C{registry} and
    C{runner} are swapped on SIGHUP).
    """

    log: ClassVar[Logger] = Logger()
    app: ClassVar[Klein] = Klein()

    registry: AgentRegistry
    runner: SessionRunner
    pool: RunPool
    reactor: IReactorTimeAndThreads
    streamHeadGrace: float = STREAM_HEAD_GRACE
    pingInterval: float = PING_INTERVAL
    observer: Observer = NULL_OBSERVER
    threadPool: Any = None
    bodyGate: BodyGate | None = None
    redactor: Redactor | None = None
    clientStallTimeout: float = CLIENT_STALL_TIMEOUT
    maxAnswer: int = MAX_RUN_ANSWER

    installErrorHandlers(app)

    def _errorFormat(self, request: IRequest) -> ErrorFormat:
        return ANTHROPIC_ERRORS

    def _errorBody(self, request: IRequest, error: AgentError) -> bytes:
        # Anthropic's API gives every answer a request id, errors included.
        if request.responseHeaders.getRawHeaders(b"request-id") is None:
            request.setHeader(b"request-id", _messageId().replace("msg_", "req_").encode())
        return super()._errorBody(request, error)

    # -- routes ---------------------------------------------------------

    @functools.cached_property
    def countApi(self) -> API[MessagesRequest]:
        """
        C{count_tokens}: the Messages API's request and errors, parsed with
        L{parseCountTokensRequest} (it runs nothing: only its parse and
        agent resolution are used).
        """
        return attrs.evolve(
            self.api, route="/v1/messages/count_tokens", parse=parseCountTokensRequest
        )

    @functools.cached_property
    def api(self) -> API[MessagesRequest]:
        """
        The Messages API as an L{API} value, served by L{serve}.
        """
        return API(
            name="anthropic",
            route="/v1/messages",
            parse=parseMessagesRequest,
            model=lambda parsed: parsed.model,
            stream=lambda parsed: parsed.stream,
            errors=ANTHROPIC_ERRORS,
            unknownModel=unknownModel,
            newId=_messageId,
            labels=lambda request, parsed, requestId: RunLabels(
                requestId=requestId,
                stream=parsed.stream,
                user=parsed.user,
                forwarded=forwardedHeaders(headerLookup(request)),
            ),
            toRunRequest=lambda exchange: exchange.parsed.runRequest(exchange.labels),
            encoder=lambda exchange: MessagesEncoder(
                exchange.labels.requestId,
                exchange.agent.id,
                estimateTokens(exchange.agent.spec.prompt, exchange.parsed),
                frames=exchange.parsed.stream,
                thinking=exchange.parsed.thinking,
            ),
            headers=_messagesHeaders,
            keepAlive=self.pingInterval,
        )

    @app.route("/v1/messages", methods=["POST"])
    async def messages(self, request: IRequest) -> bytes | None:
        """
        Run an agent on a conversation; answer with a message or stream it.
        """
        return await serve(self.api, self, request)

    @app.route("/v1/messages/count_tokens", methods=["POST"])
    async def countTokens(self, request: IRequest) -> bytes:
        """
        The input tokens a request would start with: the count of the
        agent's first model when its provider counts tokens itself (see
        L{_providerCount}), else an estimate (see L{estimateTokens}); both
        over the agent's prompt and tools and the request.  A count takes a
        slot of the same pool as runs (a full queue is the same 529).
        """
        return await observed(
            self,
            request,
            "anthropic",
            "/v1/messages/count_tokens",
            ANTHROPIC_ERRORS,
            lambda: self._countTokens(request),
        )

    async def _countTokens(self, request: IRequest) -> bytes:
        parsed = await parseBody(self.countApi, self, request)
        agent = resolveAgent(self.countApi, self, principalOf(request), parsed.model)
        requestScope(request).setAgent(agent.id)
        # Counted as a request (requests per minute, concurrent runs); it
        # spends no tokens.
        admission, slot = await admitted(
            request, self.pool, principalOf(request), agent.id, anthropic=True
        )
        try:
            specs: list[ToolSpec] = []
            instructions: list[str] = []
            if self.runner.tools is not None and (agent.spec.tools or agent.spec.agents):
                toolbox = self.runner.tools(agent.spec)
                specs = list(await toolbox.specs())
                instructions = list(getattr(toolbox, "instructions", ()))
            if not agent.spec.clientTools or parsed.toolChoice.mode == ToolChoice.NONE:
                parsed = attrs.evolve(parsed, tools=())
            counted = await self._providerCount(agent.spec, parsed, specs, instructions)
        finally:
            slot.release()
            admission.release()
        if counted is None:
            counted = estimateTokens(agent.spec.prompt, parsed, specs)
        request.setHeader(b"content-type", _JSON)
        return _dumps({"input_tokens": counted})

    async def _providerCount(
        self,
        agent: AgentSpec,
        parsed: MessagesRequest,
        specs: list[ToolSpec],
        instructions: list[str],
    ) -> int | None:
        """
        The input tokens of the run's first LLM call as the agent's first
        model counts them, when its provider can (a L{TokenCounter}: the
        Anthropic wire): the call's system text, messages and tools, as the
        session would send them.

        @return: the count, or L{None} for a provider that cannot count, or
            when the count failed or took more than
            L{PROVIDER_COUNT_TIMEOUT} seconds (logged; the estimate is used
            instead).
        @raise AgentError: the provider's answer was larger than a count
            can be (a 502 naming the bound).
        """
        name, _, model = agent.models[0].partition("/")
        try:
            provider = self.runner.providers(name)
        except AgentError:
            return None
        if not isinstance(provider, TokenCounter):
            return None
        call = LLMRequest(
            model,
            tuple(
                buildMessages(
                    agent,
                    parsed.messages,
                    instructions,
                    parsed.system,
                    self.runner.promptVariables(agent),
                )
            ),
            (*specs, *(tool.spec for tool in parsed.tools)),
            stream=False,
            timeout=PROVIDER_COUNT_TIMEOUT,
            totalTimeout=PROVIDER_COUNT_TIMEOUT,
        )
        try:
            return await provider.countTokens(call)
        except CancelledError:
            raise
        except ProviderError as error:
            if error.code == "upstream_answer_too_large":
                raise
            self.log.warn(
                "count_tokens for agent {agent}: provider {provider} did not count"
                " ({error}); answering the estimate",
                agent=agent.name,
                provider=name,
                error=shorten(error.message, 300),
            )
            return None


__all__ = [
    "ANTHROPIC_ERRORS",
    "ANTHROPIC_MODELS",
    "AnthropicModels",
    "AnthropicErrors",
    "AnthropicHeadend",
    "MessagesEncoder",
    "MessagesRequest",
    "PING_INTERVAL",
    "PROVIDER_COUNT_TIMEOUT",
    "VERSION_HEADER",
    "estimateTokens",
    "isAnthropicClient",
    "modelList",
    "modelObject",
    "parseCountTokensRequest",
    "parseMessagesRequest",
    "signature",
    "stopReason",
]
