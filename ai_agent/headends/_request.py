# -*- test-case-name: tests.test_hostile_input,tests.test_headend_openai -*-
"""
Parsing and validating a Chat Completions request body at the edge.

Every mistake becomes a 400 C{invalid_request_error} whose C{param} names
the field where one can be named; fields this server does not use are
ignored, never rejected, because clients send many.

Hostile bodies are refused before they can cost much: nesting deeper than
L{MAX_DEPTH} is found by a scan of the raw bytes before the JSON parser
recurses; the body must be UTF-8 (a leading byte order mark is tolerated);
a string holding a lone UTF-16 surrogate (C{"\\ud800"}), which could not be
encoded again on the way out, is refused naming where it was.  Bodies of
L{OFF_REACTOR_THRESHOLD} bytes or more are parsed in a thread pool, one at
a time, by the headends' L{BodyGate<ai_agent.headends._bodies.BodyGate>}.
"""

from __future__ import annotations

import json
import math
import re
from array import array
from itertools import accumulate
from typing import Annotated, Any, Callable, Iterator, Literal, Sequence

import attrs
import orjson
from msgspec import Meta, Struct

from ai_agent.accounting import RunLabels
from ai_agent.errors import AgentError, invalidRequest
from ai_agent.headends._schema import TOOL_NAME_PATTERN, Override, convertBody
from ai_agent.providers import ChatMessage, ToolCall, ToolSpec
from ai_agent.redaction import shorten
from ai_agent.request import ClientTool, OutputFormat, RunRequest, Sampling, ToolChoice

#: The most messages one request may carry.
MAX_MESSAGES = 2048
#: The most entries C{tools} may hold.
MAX_TOOLS = 128
#: The deepest nesting of arrays and objects a body may have.
MAX_DEPTH = 64
#: The most arrays and objects a body may hold (a chat request with every
#: other limit reached holds a few tens of thousands).
MAX_CONTAINERS = 100_000
#: The most output tokens a request may ask for (C{max_tokens},
#: C{max_completion_tokens}, C{max_output_tokens}): above any model's
#: output limit, so a request past it is a mistake, not a model's limit.
MAX_OUTPUT_TOKENS = 1_000_000
#: The most stop sequences a Messages request may carry (Chat Completions
#: allows 4, as OpenAI's).
MAX_STOP_SEQUENCES = 16
#: The most characters of one stop sequence.
MAX_STOP_LENGTH = 1000
#: The most JSON values a body may hold, object keys included: counted
#: before parsing as the commas, colons and opening brackets outside
#: strings.  The JSON parser is one call of C code that keeps every other
#: thread (the reactor's) waiting however it is run, and its time grows
#: with the values: an object of 50,000 members, at this bound, parses in
#: about 10 ms, where 4 million numbers in an 8 MiB body took 200.
MAX_VALUES = 100_000
#: Bodies at least this long are parsed off the reactor thread.
OFF_REACTOR_THRESHOLD = 256 * 1024

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_BOM = b"\xef\xbb\xbf"
# The depth scan: drop escapes, then strings, then everything but brackets.
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_STRING = re.compile(rb'"[^"]*"')
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
# A \\u escape that may start half of a surrogate pair, and the lone half itself.
#: Bodies up to this size are parsed with orjson first (see L{_loads}).
_ORJSON_LIMIT = 4096
#: The pre-scan of a large body works through it in pieces of about this
#: many bytes, each a few C calls short enough (a few ms) that another
#: thread, the reactor's, gets the interpreter between two of them.
_PIECE = 64 * 1024
#: Every digit as C{0}, everything else as C{.}: a run of digits enough
#: for an integer orjson would not keep exact is then L{_LONG_DIGITS}.
_DIGITS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x2E for b in range(256))
_LONG_DIGITS = b"0" * 19
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


@attrs.frozen
class ChatRequest:
    """
    A validated C{POST /v1/chat/completions} body.
    """

    model: str
    messages: tuple[ChatMessage, ...]
    stream: bool = False
    includeUsage: bool = False
    sampling: Sampling = Sampling()
    user: str | None = None
    tools: tuple[ClientTool, ...] = ()
    toolChoice: ToolChoice = ToolChoice()
    parallelToolCalls: bool | None = None

    def runRequest(self, labels: RunLabels) -> RunRequest:
        """
        The neutral run request: system and developer messages stay in the
        conversation, where the session puts them after the agent's prompt.
        LLM calls stream whether or not the client does: a whole answer is
        made of the same events.
        """
        return RunRequest(
            self.messages,
            (),
            self.sampling,
            True,
            labels,
            self.tools,
            self.toolChoice,
            self.parallelToolCalls,
        )


# -- the Chat Completions request as types (see ai_agent.headends._schema) ----

_NonEmpty = Annotated[str, Meta(min_length=1)]
_Stop = Annotated[str, Meta(max_length=MAX_STOP_LENGTH)]
_MaxTokens = Annotated[int, Meta(ge=1, le=MAX_OUTPUT_TOKENS)]


class ChatTextPart(Struct, tag_field="type", tag="text"):
    """A text part of a message's content."""

    text: str


class ChatInputTextPart(Struct, tag_field="type", tag="input_text"):
    """A text part, as the Responses API names it."""

    text: str


class ChatOutputTextPart(Struct, tag_field="type", tag="output_text"):
    """An answer's text part, as the Responses API names it."""

    text: str


class ChatRefusalPart(Struct, tag_field="type", tag="refusal"):
    """A refusal part: its text if given, else its refusal."""

    refusal: str
    text: str | None = None


_Part = str | ChatTextPart | ChatInputTextPart | ChatOutputTextPart | ChatRefusalPart
_Content = Annotated[
    str | list[_Part],
    Meta(
        description="Text, or an array of text parts (joined with newlines). Parts of "
        "other types (images, audio) are refused with a 400 naming the part."
    ),
]


class ChatFunctionCall(Struct):
    """The function of an assistant's tool call."""

    name: str
    arguments: str = ""


class ChatToolCall(Struct):
    """A tool call of an assistant message."""

    function: ChatFunctionCall
    id: str
    type: str | None = None


class ChatSystemMessage(Struct, tag_field="role", tag="system"):
    """A system message."""

    content: _Content
    name: str | None = None


class ChatDeveloperMessage(Struct, tag_field="role", tag="developer"):
    """A developer message (a system message, as newer models name it)."""

    content: _Content
    name: str | None = None


class ChatUserMessage(Struct, tag_field="role", tag="user"):
    """A user message."""

    content: _Content
    name: str | None = None


class ChatAssistantMessage(Struct, tag_field="role", tag="assistant"):
    """
    An assistant message: content is required unless it carries
    tool_calls.
    """

    content: _Content | None = None
    name: str | None = None
    tool_calls: list[ChatToolCall] | None = None


class ChatToolMessage(Struct, tag_field="role", tag="tool"):
    """A tool's result, answering one of the assistant's tool_calls."""

    content: _Content
    tool_call_id: _NonEmpty
    name: str | None = None


_Message = (
    ChatSystemMessage
    | ChatDeveloperMessage
    | ChatUserMessage
    | ChatAssistantMessage
    | ChatToolMessage
)


class ChatStreamOptions(Struct):
    """Options of a streamed answer."""

    include_usage: bool | None = None


class ChatTextFormat(Struct, tag_field="type", tag="text"):
    """Plain text answers (the default)."""


class ChatJSONObjectFormat(Struct, tag_field="type", tag="json_object"):
    """Any JSON object as the answer."""


class ChatJSONSchemaSpec(Struct):
    """The named schema of a json_schema answer format."""

    name: _NonEmpty
    description: str | None = None
    schema: dict[str, Any] = {}
    strict: bool | None = None


class ChatJSONSchemaFormat(Struct, tag_field="type", tag="json_schema"):
    """JSON conforming to a schema as the answer."""

    json_schema: ChatJSONSchemaSpec


class ChatFunction(Struct):
    """A client's function tool."""

    name: Annotated[str, Meta(pattern=TOOL_NAME_PATTERN)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatFunctionTool(Struct):
    """A client tool: only functions (type may be left out)."""

    function: ChatFunction
    type: Literal["function"] = "function"


class ChatNamedFunction(Struct):
    """The function tool_choice names."""

    name: str


class ChatNamedToolChoice(Struct):
    """tool_choice naming one function of tools."""

    type: Literal["function"]
    function: ChatNamedFunction


class ChatCompletionRequest(Struct):
    """
    A Chat Completions request. Fields not listed here are accepted and
    ignored. The body must be UTF-8 JSON nested at most 64 levels deep and
    its strings must not hold lone UTF-16 surrogates; otherwise the answer
    is a 400.
    """

    model: Annotated[
        str,
        Meta(
            min_length=1,
            description="An agent's model id (see GET /v1/models), its file name "
            "or path, in any letter case.",
        ),
    ]
    messages: Annotated[list[_Message], Meta(min_length=1, max_length=MAX_MESSAGES)]
    stream: bool | None = None
    stream_options: ChatStreamOptions | None = None
    n: Annotated[int, Meta(ge=1, le=1, description="Only 1: an agent gives one answer.")] | None = (
        None
    )
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    max_completion_tokens: _MaxTokens | None = None
    max_tokens: (
        Annotated[
            int,
            Meta(
                ge=1,
                le=MAX_OUTPUT_TOKENS,
                description="Used when max_completion_tokens is not given.",
            ),
        ]
        | None
    ) = None
    stop: _Stop | Annotated[list[_Stop], Meta(max_length=4)] | None = None
    seed: int | None = None
    response_format: (
        Annotated[
            ChatTextFormat | ChatJSONObjectFormat | ChatJSONSchemaFormat,
            Meta(description="The answer's format; overrides the agent's `output`."),
        ]
        | None
    ) = None
    user: str | None = None
    tools: (
        Annotated[
            list[ChatFunctionTool],
            Meta(
                max_length=MAX_TOOLS,
                description="The client's own function tools (names unique): shown "
                "to the model beside the agent's own tools; a call of one ends the run "
                "with tool_calls for the client to run (ignored for agents with "
                "clientTools: false).",
            ),
        ]
        | None
    ) = None
    tool_choice: (
        Annotated[
            Literal["none", "auto", "required"] | ChatNamedToolChoice,
            Meta(
                description="none hides the client's tools (the agent keeps its "
                "own); a named function (one of tools) is called on the first LLM call; "
                "required makes the model call some tool before it answers."
            ),
        ]
        | None
    ) = None
    parallel_tool_calls: bool | None = None


_ROLE_OF: dict[type, str] = {
    ChatSystemMessage: "system",
    ChatDeveloperMessage: "developer",
    ChatUserMessage: "user",
    ChatAssistantMessage: "assistant",
    ChatToolMessage: "tool",
}


def parseChatRequest(body: bytes) -> ChatRequest:
    """
    Parse and validate a request body: the hostile-input checks of
    L{loadBody}, then the L{ChatCompletionRequest} type, then the rules
    that span fields (tool names unique, C{tool_choice} among C{tools},
    tool results answering a call).

    @raise AgentError: a 400 naming the offending C{param}.
    """
    data = _loads(body)
    if not isinstance(data, dict):
        raise invalidRequest(
            f"the request body must be a JSON object, not {_typeName(data)}", code="invalid_json"
        )
    # The model, then the messages, are named before any other mistake
    # (msgspec would name a missing field after the mistakes of the others).
    model = data.get("model")
    if model is None or not isinstance(model, str) or not model:
        raise _CHAT_WORDS["model"]("model", model)
    if data.get("messages") is None:
        raise invalidRequest(
            "you must provide a messages parameter", "messages", "missing_required_parameter"
        )
    request = convertBody(data, ChatCompletionRequest, _CHAT_WORDS)
    messages = tuple(
        _chatMessage(message, f"messages[{index}]")
        for index, message in enumerate(request.messages)
    )
    _checkToolResults(messages)
    maxTokens = request.max_completion_tokens
    if maxTokens is None:
        maxTokens = request.max_tokens
    stop = request.stop
    tools = _chatTools(request.tools or ())
    return ChatRequest(
        model=request.model,
        messages=messages,
        stream=bool(request.stream),
        includeUsage=bool(request.stream_options and request.stream_options.include_usage),
        sampling=Sampling(
            request.temperature,
            request.top_p,
            maxTokens,
            (stop,) if isinstance(stop, str) else tuple(stop or ()),
            request.seed,
            _responseFormat(request.response_format),
        ),
        user=request.user,
        tools=tools,
        toolChoice=_chatToolChoice(request.tool_choice, tools),
        parallelToolCalls=request.parallel_tool_calls,
    )


def _chatMessage(message: _Message, where: str) -> ChatMessage:
    toolCalls: tuple[ToolCall, ...] = ()
    toolCallId = None
    if isinstance(message, ChatAssistantMessage):
        toolCalls = tuple(
            ToolCall(call.id, call.function.name, call.function.arguments)
            for call in message.tool_calls or ()
        )
        if message.content is None and not toolCalls:
            raise invalidRequest(
                f"'{where}.content' is required",
                f"{where}.content",
                "missing_required_parameter",
            )
    elif isinstance(message, ChatToolMessage):
        toolCallId = message.tool_call_id
    role = _ROLE_OF[type(message)]
    return ChatMessage(role, _text(message.content), message.name, toolCalls, toolCallId)


def _text(content: str | list[_Part] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, ChatRefusalPart):
            texts.append(part.refusal if part.text is None else part.text)
        else:
            texts.append(part.text)
    return "\n".join(texts)


def _chatTools(tools: Sequence[ChatFunctionTool]) -> tuple[ClientTool, ...]:
    result: list[ClientTool] = []
    names: set[str] = set()
    for index, tool in enumerate(tools):
        where = f"tools[{index}].function"
        function = tool.function
        if function.name in names:
            raise invalidRequest(
                f"'{where}.name' repeats the tool name {function.name!r}",
                f"{where}.name",
                "duplicate_tool_name",
            )
        names.add(function.name)
        parameters = function.parameters
        if parameters is None:
            parameters = {"type": "object", "properties": {}}
        spec = ToolSpec(function.name, function.description or "", parameters)
        result.append(ClientTool(spec, f"{where}.name"))
    return tuple(result)


def _chatToolChoice(
    choice: str | ChatNamedToolChoice | None, tools: tuple[ClientTool, ...]
) -> ToolChoice:
    if choice is None:
        return ToolChoice()
    if isinstance(choice, str):
        return ToolChoice(choice)
    name = choice.function.name
    if name not in {tool.spec.name for tool in tools}:
        param = "tool_choice.function.name"
        raise invalidRequest(
            f"'{param}' names {_show(name)}, which is not in 'tools'", param, "invalid_value"
        )
    return ToolChoice(ToolChoice.TOOL, name)


def _responseFormat(
    value: ChatTextFormat | ChatJSONObjectFormat | ChatJSONSchemaFormat | None,
) -> OutputFormat | None:
    if value is None or isinstance(value, ChatTextFormat):
        return None
    if isinstance(value, ChatJSONObjectFormat):
        return OutputFormat()
    spec = value.json_schema
    return OutputFormat(spec.schema, spec.name, spec.description, spec.strict)


def between(low: float, high: float) -> Override:
    """
    C{'param' must be between low and high} (a number not in its bounds), or
    C{must be a number}: the words of OpenAI's style, for every API.
    """

    def words(param: str, value: Any) -> AgentError:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return invalidRequest(
                f"'{param}' must be a number, not {_typeName(value)}", param, "invalid_type"
            )
        return invalidRequest(
            f"'{param}' must be between {low:g} and {high:g}, got {value}", param, "invalid_value"
        )

    return words


def outputTokens(param: str, value: Any) -> AgentError:
    """
    The words for a bound on output tokens (C{max_tokens},
    C{max_completion_tokens}, C{max_output_tokens}) out of its range.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        return invalidRequest(
            f"'{param}' must be an integer, not {_typeName(value)}", param, "invalid_type"
        )
    return invalidRequest(
        f"'{param}' must be between 1 and {MAX_OUTPUT_TOKENS}, got {_show(value)}",
        param,
        "invalid_value",
    )


def _onlyOne(param: str, value: Any) -> AgentError:
    if isinstance(value, bool) or not isinstance(value, int):
        return invalidRequest(
            f"'{param}' must be an integer, not {_typeName(value)}", param, "invalid_type"
        )
    return invalidRequest(
        "only n=1 is supported: an agent gives one answer", param, "unsupported_value"
    )


def _role(param: str, value: Any) -> AgentError:
    return invalidRequest(
        f"'{param}' must be one of {', '.join(sorted(_ROLES))}, got {_show(value)}",
        param,
        "invalid_value",
    )


def _toolCallId(param: str, value: Any) -> AgentError:
    return invalidRequest(
        f"'{param}' must be a non-empty string for a tool message", param, "invalid_type"
    )


def _mustBe(what: str) -> Override:
    def words(param: str, value: Any) -> AgentError:
        return invalidRequest(f"'{param}' must be {what}", param, "invalid_type")

    return words


def _content(param: str, value: Any) -> AgentError:
    if value is None:
        return invalidRequest(f"'{param}' is required", param, "missing_required_parameter")
    return invalidRequest(
        f"'{param}' must be a string or an array of content parts, not {_typeName(value)}",
        param,
        "invalid_type",
    )


def _part(param: str, value: Any) -> AgentError:
    where = param.rsplit(".", 1)[0] if param.endswith(".type") else param
    if isinstance(value, str) or param.endswith(".type"):
        return invalidRequest(
            f"'{where}' is a {_show(value)} part; agents here take text parts only",
            where,
            "unsupported_content_type",
        )
    return invalidRequest(
        f"'{param}' must be an object, not {_typeName(value)}", param, "invalid_type"
    )


def _stop(param: str, value: Any) -> AgentError:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        if len(value) > 4:
            return invalidRequest("'stop' may hold at most 4 sequences", "stop", "invalid_value")
        return _stopSequence(param, max(value, key=len, default=""))
    return _stopSequence(param, value)


def _stopSequence(param: str, value: Any) -> AgentError:
    if not isinstance(value, str):
        return invalidRequest(
            "'stop' must be a string or an array of strings", "stop", "invalid_type"
        )
    return invalidRequest(
        f"'stop' sequences may be at most {MAX_STOP_LENGTH} characters long, got {len(value)}",
        "stop",
        "invalid_value",
    )


def _toolCall(param: str, value: Any) -> AgentError:
    where = param[: param.index("]", param.index(".tool_calls[")) + 1]
    return invalidRequest(
        f"'{where}' needs a string id, function.name and function.arguments",
        where,
        "invalid_type",
    )


def _toolName(param: str, value: Any) -> AgentError:
    return invalidRequest(
        f"'{param}' must be 1 to 64 letters, digits, '_' or '-', got {_show(value)}",
        param,
        "invalid_value",
    )


def _toolType(param: str, value: Any) -> AgentError:
    return invalidRequest(
        f"'{param}' is {_show(value)}; only function tools are supported"
        " (hosted tools are not available here)",
        param,
        "unsupported_tool_type",
    )


def _toolChoiceWords(param: str, value: Any) -> AgentError:
    if not isinstance(value, (str, dict)):
        return invalidRequest(
            f"'tool_choice' must be a string or an object, not {_typeName(value)}",
            "tool_choice",
            "invalid_type",
        )
    if isinstance(value, str):
        return invalidRequest(
            f"'tool_choice' must be none, auto, required or a function, got {_show(value)}",
            "tool_choice",
            "invalid_value",
        )
    return invalidRequest(
        "'tool_choice' must be none, auto, required or"
        ' {"type": "function", "function": {"name": ...}}',
        "tool_choice",
        "invalid_value",
    )


def _formatType(param: str, value: Any) -> AgentError:
    return invalidRequest(
        f"'{param}' must be one of text, json_object, json_schema", param, "invalid_value"
    )


#: The words of the refusals clients and tests rely on, by C{param}.
_CHAT_WORDS: dict[str, Override] = {
    "model": lambda param, value: (
        invalidRequest("you must provide a model parameter", param, "missing_required_parameter")
        if value is None
        else invalidRequest("'model' must be a non-empty string", param, "invalid_type")
    ),
    "tools[].function": lambda param, value: invalidRequest(
        f"'{param}' must be an object", param, "invalid_type"
    ),
    "n": _onlyOne,
    "temperature": between(0.0, 2.0),
    "top_p": between(0.0, 1.0),
    "max_tokens": outputTokens,
    "max_completion_tokens": outputTokens,
    "messages[].role": _role,
    "messages[].tool_call_id": _toolCallId,
    "messages[].content[]": _part,
    "messages[].content[].type": _part,
    "messages[].content[].text": lambda param, value: invalidRequest(
        f"'{param}' must be a string", param, "invalid_type"
    ),
    "stop": _stop,
    "stop[]": _stopSequence,
    "messages[].tool_calls[].function": lambda param, value: invalidRequest(
        f"'{param}' must be an object", param, "invalid_type"
    ),
    "messages[].tool_calls[].id": _toolCall,
    "messages[].tool_calls[].function.name": _toolCall,
    "messages[].tool_calls[].function.arguments": _toolCall,
    "tools[].function.name": _toolName,
    "tools[].type": _toolType,
    "tool_choice": _toolChoiceWords,
    "tool_choice.type": lambda param, value: _toolChoiceWords("tool_choice", {}),
    "tool_choice.function": lambda param, value: _toolChoiceWords("tool_choice", {}),
    "tool_choice.function.name": lambda param, value: _toolChoiceWords("tool_choice", {}),
    "messages[].content": _content,
    "stream_options": _mustBe("an object"),
    "response_format": _mustBe("an object"),
    "response_format.json_schema": _mustBe("an object"),
    "response_format.json_schema.name": lambda param, value: invalidRequest(
        f"'{param}' must be a non-empty string", param, "invalid_type"
    ),
    "messages[].tool_calls": _mustBe("an array"),
    "response_format.json_schema.schema": _mustBe("an object"),
    "response_format.type": _formatType,
}


def _loads(body: bytes) -> Any:
    """
    The JSON value of a body: UTF-8 (a leading byte order mark is dropped),
    at most L{MAX_DEPTH} deep, no C{NaN} or C{Infinity}, no lone surrogate.
    """
    if body.startswith(_BOM):
        body = body[len(_BOM) :]
    depth, containers, values = _shape(body)
    if depth > MAX_DEPTH:
        atLeast = "at least " if containers > MAX_CONTAINERS else ""
        raise invalidRequest(
            f"the request body nests arrays and objects {atLeast}{depth} levels deep;"
            f" at most {MAX_DEPTH} are allowed",
            code="invalid_json",
        )
    if containers > MAX_CONTAINERS:
        raise invalidRequest(
            f"the request body holds {containers} arrays and objects;"
            f" at most {MAX_CONTAINERS} are allowed",
            code="request_too_complex",
        )
    if values > MAX_VALUES:
        raise invalidRequest(
            f"the request body holds {values} JSON values (array elements, object keys and"
            f" their values); at most {MAX_VALUES} are allowed",
            code="request_too_complex",
        )
    if len(body) <= _ORJSON_LIMIT and _LONG_DIGITS not in body.translate(_DIGITS):
        # orjson parses what json does to the same values, and refuses
        # everything refused below (bytes that are not UTF-8, NaN, numbers
        # too large for a float, lone surrogates) but integers past 64 bits,
        # which it turns into floats: a body with a run of 19 digits is left
        # to json.  A refused body goes on, to be refused in json's words.
        # Past a few KiB, looking for such a run costs what orjson saves.
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    return _parseWithJSON(body)


def _parseWithJSON(body: bytes) -> Any:
    """
    L{_loads} after its checks of size and shape, with C{json}: the values
    and the words of every refusal.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise invalidRequest(
            f"the request body is not valid UTF-8 (at byte {error.start})", code="invalid_json"
        ) from None
    infinite: list[bool] = []

    def parseFloat(literal: str) -> float:
        value = float(literal)
        if math.isinf(value):
            infinite.append(True)
        return value

    # Converting a long integer is slow (thousands of digits: about 80 µs
    # each) and, in C, keeps the interpreter: past a few, each is converted
    # by a Python function, between which other threads get their turn.
    parseInt = _parseInt if len(body) > _PIECE and _hasLongNumbers(body) else None
    try:
        data = json.loads(
            text, parse_constant=_rejectConstant, parse_float=parseFloat, parse_int=parseInt
        )
    except RecursionError:
        # Not reached after the depth scan; kept so that it can never be a 500.
        raise invalidRequest("the request body is nested too deeply", code="invalid_json") from None
    except ValueError as error:
        raise invalidRequest(
            f"the request body is not valid JSON: {error}", code="invalid_json"
        ) from None
    if infinite:
        where = _findNonFinite(data)
        if where is not None:
            raise invalidRequest(
                f"{f'{shorten(repr(where))}' if where else 'the request body'} holds a number"
                " too large"
                " to represent (it would be Infinity, which is not JSON)",
                where or None,
                "invalid_number",
            )
    if _hasSurrogateEscape(text):
        found = _findSurrogate(data)
        if found is not None:
            where, inKey = found
            what = shorten(repr(where)) if where else "the request body"
            if inKey:
                what = f"a key of {what}"
            raise invalidRequest(
                f"{what} holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff"
                " escape), which is not text",
                where or None,
                "invalid_unicode",
            )
    return data


def _shape(body: bytes) -> tuple[int, int, int]:
    """
    How deeply arrays and objects nest in C{body} (the top level counts as
    one), how many there are, and how many values it holds (see
    L{MAX_VALUES}), ignoring what is inside strings.  Found without
    recursion: for a body with few brackets and separators, from counts of
    its bytes; otherwise in L{_PIECE}-sized pieces (see L{_outsideStrings}),
    each a few passes of C code, so that a large body keeps no other thread
    waiting for long.  The depth is the running sum of +1 (open) and -1
    (close), computed over at most the first L{MAX_CONTAINERS} pairs.  For
    malformed JSON the answer is approximate, and the parser rejects the
    body anyway.

    @return: C{(depth, containers, values)}; the depth is C{0} when there
        are too few brackets to pass L{MAX_DEPTH}, and that of the first
        L{MAX_CONTAINERS} or so when there are more.
    """
    opening = body.count(b"[") + body.count(b"{")
    values = opening + body.count(b",") + body.count(b":")
    if opening <= MAX_DEPTH and values <= MAX_VALUES:
        return 0, opening, values
    containers = values = depth = deepest = 0
    # Past the cap on containers, the depth of a bounded prefix is enough
    # to tell a deep body from a wide one.
    budget = 2 * MAX_CONTAINERS + 2
    for piece in _outsideStrings(body):
        brackets = piece.translate(None, _NOT_BRACKETS)
        opened = brackets.count(b"[") + brackets.count(b"{")
        containers += opened
        values += opened + piece.count(b",") + piece.count(b":")
        if budget > 0 and brackets:
            brackets = brackets[:budget]
            budget -= len(brackets)
            levels = list(accumulate(array("b", brackets.translate(_STEPS)), initial=depth))
            deepest = max(deepest, max(levels))
            depth = levels[-1]
    if containers <= MAX_DEPTH:
        deepest = 0
    return deepest, containers, values


def _outsideStrings(body: bytes, pieceSize: int = _PIECE) -> Iterator[bytes]:
    """
    The bytes of C{body} outside its strings (escapes dropped first), in
    pieces of about C{pieceSize} bytes.  A piece never ends between a
    backslash and the byte it escapes, so every escape lies within one
    piece; a string left open at the end of a piece is carried over to the
    next.
    """
    start, size, inString = 0, len(body), False
    while start < size:
        end = min(start + pieceSize, size)
        if end < size:
            # A piece starts outside any escape; it ends outside one too if
            # the backslashes it ends with pair up.
            chunk = body[start:end]
            if (len(chunk) - len(chunk.rstrip(b"\\"))) % 2:
                end = end - 1 if end - 1 > start else end + 1
        piece = _ESCAPE.sub(b"", body[start:end])
        start = end
        if inString:
            closing = piece.find(b'"')
            if closing < 0:
                continue
            piece, inString = piece[closing + 1 :], False
        piece = _STRING.sub(b"", piece)
        opening = piece.find(b'"')
        if opening >= 0:
            piece, inString = piece[:opening], True
        yield piece


def _hasLongNumbers(body: bytes) -> bool:
    """
    Whether C{body} has a run of L{_LONG_DIGITS} digits or more (in a
    string or not), looked for piece by piece.
    """
    overlap = len(_LONG_DIGITS) - 1
    for start in range(0, len(body), _PIECE):
        piece = body[max(start - overlap, 0) : start + _PIECE]
        if _LONG_DIGITS in piece.translate(_DIGITS):
            return True
    return False


def _hasSurrogateEscape(text: str) -> bool:
    """
    Whether C{text} may hold an escaped lone surrogate, searched piece by
    piece.
    """
    for start in range(0, max(len(text), 1), _PIECE):
        # Pieces overlap by the length of a match, less one.
        if _SURROGATE_ESCAPE.search(text, start, start + _PIECE + 3) is not None:
            return True
    return False


def _parseInt(literal: str) -> int:
    return int(literal)


def _findSurrogate(value: Any) -> tuple[str, bool] | None:
    """
    Find the first string holding a lone surrogate, in document order.

    @return: its path (C{messages[0].content}; C{""} for the body itself)
        and whether it is a key of the object at that path, or L{None}
        when there is none.
    """
    # The value is at most MAX_DEPTH deep; it is walked without recursion all
    # the same.
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item) is not None:
                return where, False
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                if _SURROGATE.search(key) is not None:
                    return where, True
                children.append((child, _join(where, key)))
            stack.extend(reversed(children))
        elif isinstance(item, list):
            stack.extend(reversed([(child, f"{where}[{i}]") for i, child in enumerate(item)]))
    return None


def _findNonFinite(value: Any) -> str | None:
    """
    The path of the first number that parsed as infinite (C{1e400}), in
    document order, or L{None}.
    """
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return where
        elif isinstance(item, dict):
            stack.extend(reversed([(child, _join(where, key)) for key, child in item.items()]))
        elif isinstance(item, list):
            stack.extend(reversed([(child, f"{where}[{i}]") for i, child in enumerate(item)]))
    return None


def _join(where: str, key: str) -> str:
    if len(key) > 64:
        key = key[:61] + "..."
    return f"{where}.{key}" if where else key


def _show(value: Any) -> str:
    """
    A client's value quoted in an error message, cut short.
    """
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _rejectConstant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _typeName(value: object) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _checkToolResults(messages: tuple[ChatMessage, ...]) -> None:
    """
    Refuse a C{tool} message that answers no tool call of the assistant
    message before it (as OpenAI does): the provider would refuse the
    conversation, and its 400 would reach the client as a 502.
    """
    calls: set[str] = set()
    for index, message in enumerate(messages):
        if message.role == "assistant":
            calls = {call.id for call in message.toolCalls}
        elif message.role == "tool" and message.toolCallId not in calls:
            where = f"messages[{index}]"
            if not calls:
                raise invalidRequest(
                    f"'{where}': messages with role 'tool' must be a response to a preceding"
                    " message with 'tool_calls'",
                    f"{where}.role",
                    "invalid_value",
                )
            raise invalidRequest(
                f"'{where}.tool_call_id' {_show(message.toolCallId)} is not one of the"
                " 'tool_calls' of the assistant message before it",
                f"{where}.tool_call_id",
                "invalid_value",
            )


def headerLookup(request: Any) -> Callable[[bytes], bytes | None]:
    """
    What C{request.getHeader} answers (a header's last value, or L{None}),
    for a lowercase name, from one pass over the request's headers: for
    asking about many headers a request mostly does not carry.
    """
    last = {name.lower(): values[-1] for name, values in request.requestHeaders.getAllRawHeaders()}
    return last.get


#: The body checks every API's parser shares (see L{_loads}, L{_typeName},
#: L{_show}).
loadBody = _loads
typeName = _typeName
showValue = _show


__all__ = [
    "between",
    "outputTokens",
    "AgentError",
    "ChatRequest",
    "headerLookup",
    "loadBody",
    "showValue",
    "typeName",
    "MAX_CONTAINERS",
    "MAX_DEPTH",
    "MAX_MESSAGES",
    "MAX_OUTPUT_TOKENS",
    "MAX_STOP_LENGTH",
    "MAX_STOP_SEQUENCES",
    "MAX_TOOLS",
    "OFF_REACTOR_THRESHOLD",
    "parseChatRequest",
]
