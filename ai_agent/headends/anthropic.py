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
from typing import Any, Callable, ClassVar, Iterable, cast

import attrs
from klein import Klein
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
    TOOL_NAME,
    headerLookup,
    loadBody,
    numberField,
    optionalField,
    showValue,
    typeName,
)
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
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise invalidRequest("model: a non-empty string is required", "model")
    maxTokens = optionalField(data, "max_tokens", int, None)
    if maxTokens is None and requireMaxTokens:
        raise invalidRequest("max_tokens: Field required", "max_tokens")
    if maxTokens is not None and not 1 <= maxTokens <= MAX_OUTPUT_TOKENS:
        raise invalidRequest(
            f"max_tokens: must be between 1 and {MAX_OUTPUT_TOKENS}, got {showValue(maxTokens)}",
            "max_tokens",
        )
    temperature = numberField(data, "temperature", 0.0, 1.0)
    topP = numberField(data, "top_p", 0.0, 1.0)
    # Accepted for the SDKs' sake; no provider here is asked for it.
    optionalField(data, "top_k", int, None)
    stop = _stopSequences(data.get("stop_sequences"))
    tools = _parseTools(data.get("tools"))
    choice, parallel = _parseToolChoice(data.get("tool_choice"), tools)
    metadata = data.get("metadata")
    user = None
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        user = loggable(metadata["user_id"])
    return MessagesRequest(
        model=model,
        messages=_parseMessages(data.get("messages")),
        system=_parseSystem(data.get("system")),
        stream=optionalField(data, "stream", bool, False),
        sampling=Sampling(temperature, topP, maxTokens, stop, None, _parseOutputFormat(data)),
        tools=tools,
        toolChoice=choice,
        parallelToolCalls=parallel,
        user=user,
        thinking=_parseThinking(data.get("thinking")),
    )


#: The C{thinking.type}s that ask for thinking blocks.
_THINKING_ON = ("enabled", "adaptive")

#: Anthropic's smallest C{thinking.budget_tokens}.
MIN_THINKING_BUDGET = 1024


def _parseThinking(value: Any) -> bool:
    """
    C{thinking}: whether the client asked for thinking blocks
    (C{{"type": "enabled", "budget_tokens": n}} or C{{"type": "adaptive"}};
    C{{"type": "disabled"}} or no C{thinking} does not).  The budget is
    checked as Anthropic checks it and not used: the agent's file decides
    its models' reasoning.
    """
    if value is None:
        return False
    if not isinstance(value, dict):
        raise invalidRequest(f"thinking: must be an object, not {typeName(value)}", "thinking")
    kind = value.get("type")
    if kind not in (*_THINKING_ON, "disabled"):
        raise invalidRequest(
            f"thinking.type: must be enabled, adaptive or disabled, got {showValue(kind)}",
            "thinking.type",
        )
    if kind == "enabled":
        budget = value.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool):
            raise invalidRequest(
                "thinking.budget_tokens: an integer is required when thinking is enabled",
                "thinking.budget_tokens",
            )
        if budget < MIN_THINKING_BUDGET:
            raise invalidRequest(
                f"thinking.budget_tokens: must be at least {MIN_THINKING_BUDGET}",
                "thinking.budget_tokens",
            )
    return kind in _THINKING_ON


def _parseOutputFormat(data: dict[str, Any]) -> OutputFormat | None:
    """
    The answer's format: C{output_config.format}, or the older top-level
    C{output_format} (Anthropic's structured-outputs beta), each
    C{{"type": "json_schema", "schema": {...}}}; not both.
    C{output_config.effort} is checked and not used (the agent's file
    decides its models' reasoning).
    """
    config = data.get("output_config")
    spec, param = None, "output_config.format"
    if config is not None:
        if not isinstance(config, dict):
            raise invalidRequest(
                f"output_config: must be an object, not {typeName(config)}", "output_config"
            )
        effort = config.get("effort")
        if effort is not None and not isinstance(effort, str):
            raise invalidRequest(
                f"output_config.effort: must be a string, not {typeName(effort)}",
                "output_config.effort",
            )
        spec = config.get("format")
    legacy = data.get("output_format")
    if legacy is not None:
        if spec is not None:
            raise invalidRequest(
                "output_format: both output_format and output_config.format were given;"
                " send only output_config.format (output_format is its older name)",
                "output_format",
            )
        spec, param = legacy, "output_format"
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise invalidRequest(f"{param}: must be an object, not {typeName(spec)}", param)
    kind = spec.get("type")
    if kind != "json_schema":
        raise invalidRequest(
            f"{param}.type: must be json_schema, got {showValue(kind)}", f"{param}.type"
        )
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise invalidRequest(
            f"{param}.schema: a JSON Schema object is required, not {typeName(schema)}",
            f"{param}.schema",
        )
    return OutputFormat(schema)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise invalidRequest(f"{where}: must be an array of strings", where)
    return tuple(value)


def _stopSequences(value: Any) -> tuple[str, ...]:
    """
    C{stop_sequences}: at most L{MAX_STOP_SEQUENCES} strings of at most
    L{MAX_STOP_LENGTH} characters.
    """
    stop = _strings(value, "stop_sequences")
    if len(stop) > MAX_STOP_SEQUENCES:
        raise invalidRequest(
            f"stop_sequences: {len(stop)} sequences; at most {MAX_STOP_SEQUENCES} are allowed",
            "stop_sequences",
        )
    for index, sequence in enumerate(stop):
        if len(sequence) > MAX_STOP_LENGTH:
            where = f"stop_sequences[{index}]"
            raise invalidRequest(
                f"{where}: {len(sequence)} characters; at most {MAX_STOP_LENGTH} are allowed",
                where,
            )
    return stop


def _parseSystem(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    text = _text(value, "system")
    return (text,) if text else ()


def _blocks(value: Any, where: str) -> list[tuple[str, dict[str, Any], str]]:
    """
    A C{content} value as C{(type, block, path)} triples; a string is one
    text block.
    """
    if isinstance(value, str):
        return [("text", {"type": "text", "text": value}, where)]
    if not isinstance(value, list):
        raise invalidRequest(
            f"{where}: must be a string or an array of content blocks, not {typeName(value)}",
            where,
        )
    blocks = []
    for index, block in enumerate(value):
        path = f"{where}[{index}]"
        if not isinstance(block, dict):
            raise invalidRequest(f"{path}: must be an object, not {typeName(block)}", path)
        kind = block.get("type")
        if not isinstance(kind, str):
            raise invalidRequest(f"{path}.type: a string is required", f"{path}.type")
        blocks.append((kind, block, path))
    return blocks


def _unsupportedBlock(kind: str, path: str) -> AgentError:
    return invalidRequest(
        f"{path}: {showValue(kind)} blocks are not supported; agents here take text"
        " (text, tool_use, tool_result and echoed thinking blocks)",
        path,
        "unsupported_content_type",
    )


def _blockText(block: dict[str, Any], path: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise invalidRequest(f"{path}.text: a string is required", f"{path}.text")
    return text


def _text(value: Any, where: str) -> str:
    """
    The text of a content value holding only text blocks.
    """
    texts = []
    for kind, block, path in _blocks(value, where):
        if kind != "text":
            raise _unsupportedBlock(kind, path)
        texts.append(_blockText(block, path))
    return "\n".join(texts)


def _parseMessages(value: Any) -> tuple[ChatMessage, ...]:
    if value is None:
        raise invalidRequest("messages: Field required", "messages")
    if not isinstance(value, list):
        raise invalidRequest(f"messages: must be an array, not {typeName(value)}", "messages")
    if not value:
        raise invalidRequest("messages: at least one message is required", "messages")
    if len(value) > MAX_MESSAGES:
        raise invalidRequest(
            f"messages: {len(value)} messages; at most {MAX_MESSAGES} are allowed", "messages"
        )
    conversation: list[ChatMessage] = []
    # The tool_use ids of the last assistant message: the tool_result
    # blocks that may follow.
    calls: frozenset[str] = frozenset()
    for index, item in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            raise invalidRequest(f"{where}: must be an object, not {typeName(item)}", where)
        role = item.get("role")
        content = item.get("content")
        if content is None:
            raise invalidRequest(f"{where}.content: Field required", f"{where}.content")
        if role == "assistant":
            message = _assistantMessage(content, f"{where}.content")
            calls = frozenset(call.id for call in message.toolCalls)
            conversation.append(message)
        elif role == "user":
            conversation.extend(_userMessages(content, f"{where}.content", calls))
        elif role == "system":
            # Claude Code sends system messages inside the conversation.
            conversation.append(ChatMessage("system", _text(content, f"{where}.content")))
        else:
            raise invalidRequest(
                f"{where}.role: must be user or assistant, got {showValue(role)}",
                f"{where}.role",
            )
    return tuple(conversation)


def _assistantMessage(content: Any, where: str) -> ChatMessage:
    texts: list[str] = []
    calls: list[ToolCall] = []
    for kind, block, path in _blocks(content, where):
        if kind == "text":
            texts.append(_blockText(block, path))
        elif kind == "tool_use":
            callId, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
            if not isinstance(callId, str) or not callId or not isinstance(name, str):
                raise invalidRequest(f"{path}: a tool_use block needs a string id and name", path)
            if not isinstance(arguments, dict):
                raise invalidRequest(f"{path}.input: must be an object", f"{path}.input")
            calls.append(ToolCall(callId, name, json.dumps(arguments, ensure_ascii=False)))
        elif kind in ("thinking", "redacted_thinking"):
            # Echoed back by clients; the agent's reasoning is not replayed.
            continue
        else:
            raise _unsupportedBlock(kind, path)
    return ChatMessage("assistant", "".join(texts), toolCalls=tuple(calls))


def _userMessages(content: Any, where: str, calls: frozenset[str]) -> list[ChatMessage]:
    """
    A user turn: each C{tool_result} block as a tool message (first, so
    they follow the assistant's calls), then the text as a user message.

    @param calls: the C{tool_use} ids of the assistant message before; a
        C{tool_result} answering another id is refused, in the words of
        Anthropic's API.
    """
    results: list[ChatMessage] = []
    texts: list[str] = []
    for kind, block, path in _blocks(content, where):
        if kind == "text":
            texts.append(_blockText(block, path))
        elif kind == "tool_result":
            callId = block.get("tool_use_id")
            if not isinstance(callId, str) or not callId:
                raise invalidRequest(
                    f"{path}.tool_use_id: a non-empty string is required", f"{path}.tool_use_id"
                )
            if callId not in calls:
                raise invalidRequest(
                    f"{path}: unexpected `tool_use_id` found in `tool_result` blocks:"
                    f" {shorten(callId)}. Each `tool_result` block must have a corresponding"
                    " `tool_use` block in the previous message.",
                    f"{path}.tool_use_id",
                )
            result = block.get("content", "")
            text = _text(result, f"{path}.content") if result else ""
            isError = optionalField(block, "is_error", bool, False, f"{path}.is_error")
            if isError:
                text = "Error: " + text
            results.append(ChatMessage("tool", text, toolCallId=callId))
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise _unsupportedBlock(kind, path)
    if texts or not results:
        results.append(ChatMessage("user", "\n".join(texts)))
    return results


def _parseTools(value: Any) -> tuple[ClientTool, ...]:
    """
    C{tools}: custom tools (a name, a description, an C{input_schema});
    Anthropic's server tools (C{web_search_…}, C{bash_…}, …) are refused
    by name, since only the client could run them and the model here
    would not know them.
    """
    if value is None:
        return ()
    if not isinstance(value, list):
        raise invalidRequest(f"tools: must be an array, not {typeName(value)}", "tools")
    if len(value) > MAX_TOOLS:
        raise invalidRequest(f"tools: {len(value)} tools; at most {MAX_TOOLS} are allowed", "tools")
    tools: list[ClientTool] = []
    names: set[str] = set()
    for index, tool in enumerate(value):
        where = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise invalidRequest(f"{where}: must be an object, not {typeName(tool)}", where)
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise invalidRequest(
                f"{where}: {showValue(kind)} is one of Anthropic's server tools, which this"
                " server does not run; send custom tools (a name and an input_schema)",
                f"{where}.type",
                "unsupported_tool_type",
            )
        name = tool.get("name")
        if not isinstance(name, str) or TOOL_NAME.fullmatch(name) is None:
            raise invalidRequest(
                f"{where}.name: must be 1 to 64 letters, digits, '_' or '-', got {showValue(name)}",
                f"{where}.name",
            )
        if name in names:
            raise invalidRequest(f"{where}.name: the tool name {name!r} repeats", f"{where}.name")
        names.add(name)
        description = optionalField(tool, "description", str, "", f"{where}.description")
        schema = tool.get("input_schema", {"type": "object", "properties": {}})
        if not isinstance(schema, dict):
            raise invalidRequest(
                f"{where}.input_schema: must be a JSON Schema object", f"{where}.input_schema"
            )
        tools.append(ClientTool(ToolSpec(name, description, schema), f"{where}.name"))
    return tuple(tools)


def _parseToolChoice(value: Any, tools: tuple[ClientTool, ...]) -> tuple[ToolChoice, bool | None]:
    """
    C{tool_choice} (C{auto}, C{any}, C{tool} with a C{name}, C{none}) and
    its C{disable_parallel_tool_use}.
    """
    if value is None:
        return ToolChoice(), None
    if not isinstance(value, dict):
        raise invalidRequest(
            f"tool_choice: must be an object, not {typeName(value)}", "tool_choice"
        )
    disable = optionalField(
        value, "disable_parallel_tool_use", bool, None, "tool_choice.disable_parallel_tool_use"
    )
    parallel = None if disable is None else not disable
    kind = value.get("type")
    if kind == "auto":
        return ToolChoice(), parallel
    if kind == "any":
        return ToolChoice(ToolChoice.REQUIRED), parallel
    if kind == "none":
        return ToolChoice(ToolChoice.NONE), parallel
    if kind == "tool":
        name = value.get("name")
        if not isinstance(name, str) or name not in {tool.spec.name for tool in tools}:
            raise invalidRequest(
                f"tool_choice.name: {showValue(name)} is not one of the tools",
                "tool_choice.name",
            )
        return ToolChoice(ToolChoice.TOOL, name), parallel
    raise invalidRequest(
        f"tool_choice.type: must be auto, any, tool or none, got {showValue(kind)}",
        "tool_choice.type",
    )


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
