# -*- test-case-name: tests.test_headend_responses -*-
"""
The OpenAI Responses API: C{POST /v1/responses} runs an agent on a list of
input items and answers with a C{response} object, or streams it as typed
Server-Sent Events; stored responses are read back, listed and deleted
under C{/v1/responses/{id}}.

The parser maps the body to the neutral L{RunRequest}; L{ResponsesEncoder}
maps the run's events to output items (a C{reasoning} item carrying the
model's reasoning and the agent's progress, a C{message}, the client's
C{function_call}s).  A stored response keeps only its own input and output
items and the id of the response it continued, so a long chain costs no
more than its items; C{previous_response_id} walks the chain back.  See
docs/responses.md.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
from typing import Annotated, Any, Callable, ClassVar, Iterable, Literal, Mapping, Sequence

import attrs
import msgspec
from klein import Klein
from msgspec import Meta, Struct
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from ai_agent.accounting import RunLabels
from ai_agent.agentfile import AgentSpec
from ai_agent.errors import AgentError, ErrorFormat, ErrorKind, invalidRequest, notFound
from ai_agent.events import (
    ClientToolCall,
    Finished,
    FinishReason,
    Progress,
    ReasoningText,
    Usage,
)
from ai_agent.flow import CLIENT_STALL_TIMEOUT
from ai_agent.headends._api import API, Exchange, Headend, installErrorHandlers, serve
from ai_agent.headends._bodies import BodyGate
from ai_agent.headends._http import principalOf
from ai_agent.headends._json import dumps as _dumps
from ai_agent.headends._json import dumpsAny as _dumpsAny
from ai_agent.headends._json import dumpsPlain as _dumpsPlain
from ai_agent.headends._openai_errors import OPENAI_ERRORS
from ai_agent.headends._request import (
    MAX_MESSAGES,
    MAX_OUTPUT_TOKENS,
    MAX_TOOLS,
    between,
    headerLookup,
    loadBody,
    outputTokens,
    showValue,
    typeName,
)
from ai_agent.headends._schema import TOOL_NAME_PATTERN, Override, locate, translate, valueAt
from ai_agent.headends._stream import RunEncoder
from ai_agent.limits import MAX_RUN_ANSWER
from ai_agent.observe import NULL_OBSERVER, Observer, observedRoute
from ai_agent.pool import RunPool
from ai_agent.principals import Principal
from ai_agent.providers import ChatMessage, ToolCall, ToolSpec
from ai_agent.reactors import IReactorTimeAndThreads
from ai_agent.redaction import Redactor, shorten
from ai_agent.registry import AgentRegistry
from ai_agent.request import ClientTool, OutputFormat, RunRequest, Sampling, ToolChoice
from ai_agent.sealing import SealedTurns, Sealer, SealError, openedTurns
from ai_agent.session import SessionRunner
from ai_agent.store import RESPONSES, TURNS, OwnedStore, RunStore
from ai_agent.tasks import forwardedHeaders, loggable

#: Output items of stored responses, by item id, for C{item_reference}.
ITEMS = "response_items"

#: The most responses C{previous_response_id} may chain back through.
MAX_CHAIN = 1000

#: Seconds a streamed response may stay silent before its head is sent.
STREAM_HEAD_GRACE = 10.0

_JSON = b"application/json"


#: Tools OpenAI runs on its own servers, which no client executes: this
#: server cannot run them either (C{web_search} and its dated variants are
#: matched by prefix).
HOSTED_TOOL_TYPES = frozenset(
    {"file_search", "code_interpreter", "image_generation", "mcp", "web_search_preview"}
)

#: The hosted tools' types (see L{isHostedTool}) as a JSON Schema pattern.
HOSTED_TOOL_PATTERN = (
    "^(web_search[a-z0-9_]{0,54}|file_search|code_interpreter|image_generation|mcp)$"
)

#: What C{--hosted-tools} may say about them: leave them out of the
#: model's tools (naming them in L{IGNORED_TOOLS_HEADER} and the log), or
#: refuse the request.
HOSTED_IGNORE = "ignore"
HOSTED_REFUSE = "refuse"
HOSTED_POLICIES = (HOSTED_IGNORE, HOSTED_REFUSE)

#: The response header naming the hosted tools left out of a run.
IGNORED_TOOLS_HEADER = b"x-ai-agent-ignored-tools"

#: What a hosted tool's type looks like (it goes into a header).
_TOOL_TYPE = re.compile(r"[a-z0-9_]{1,64}")

#: The longest tool name a model is shown (OpenAI's limit).
_MAX_TOOL_NAME = 64


def _newId(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


@attrs.frozen
class _Before:
    """
    What the Responses API's C{beforeRun} hook found for one request.

    @ivar turns: the sealed turns of a C{store: false} request, or L{None}.
    @ivar headers: the response headers (the id, the ignored hosted tools).
    @ivar history: the items of the C{previous_response_id} chain.
    @ivar items: the request's input, its item references resolved.
    @ivar owned: the run store as the principal sees it, when the response
        is to be stored.
    """

    turns: SealedTurns | None
    headers: dict[bytes, bytes]
    history: list[dict[str, Any]]
    items: list[dict[str, Any]]
    owned: OwnedStore | None


def _unknownModel(model: str, served: list[str]) -> AgentError:
    return notFound(
        f"The model {shorten(repr(model))} does not exist: no agent is served"
        f" under that name (served: {shorten(', '.join(served) or 'none')})",
        "model_not_found",
        "model",
    )


def _headers(exchange: Exchange[ResponsesRequest]) -> dict[bytes, bytes]:
    before = exchange.state
    assert isinstance(before, _Before)
    return before.headers


def _runRequest(exchange: Exchange[ResponsesRequest]) -> RunRequest:
    parsed, before = exchange.parsed, exchange.state
    assert isinstance(before, _Before)
    return RunRequest(
        conversation([*before.history, *before.items]),
        () if not parsed.instructions else (parsed.instructions,),
        parsed.sampling,
        stream=True,
        labels=exchange.labels,
        clientTools=parsed.tools,
        toolChoice=parsed.toolChoice,
        parallelToolCalls=parsed.parallelToolCalls,
        turns=before.turns,
    )


def isHostedTool(kind: str) -> bool:
    """
    Whether a tool C{type} is one OpenAI runs itself (web search, file
    search, code interpreter, image generation, remote MCP).
    """
    if _TOOL_TYPE.fullmatch(kind) is None:
        return False
    return kind in HOSTED_TOOL_TYPES or kind.startswith("web_search")


def namespacedName(namespace: str, name: str) -> str:
    """
    The name the model sees for the tool C{name} of the client's
    C{namespace}: both joined by C{__} (as C{mcp__calc__add}), shortened
    with a digest of the whole when longer than a model allows.  It
    depends on the two names alone, so a continuation's calls map to the
    same name as the run that made them.
    """
    joined = f"{namespace}__{name}"
    if len(joined) <= _MAX_TOOL_NAME:
        return joined
    digest = hashlib.sha256(joined.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{joined[: _MAX_TOOL_NAME - 9]}_{digest}"


# -- the request --------------------------------------------------------


@attrs.frozen
class ResponsesRequest:
    """
    A validated C{POST /v1/responses} body.

    @ivar items: the input as items (a string input is one user message),
        each with an C{id}; C{item_reference}s are resolved by the route.
    @ivar echo: the request's fields the response object repeats (tools,
        tool_choice, text, metadata, ...), as the client sent them.
    @ivar hostedTools: the hosted tools in C{tools} (see
        L{isHostedTool}), each as its C{type} and its place
        (C{tools[8]}): not in C{tools}; the route leaves them out or
        refuses the request, as the server is configured.
    """

    model: str
    items: tuple[dict[str, Any], ...]
    instructions: str | None = None
    previousResponseId: str | None = None
    store: bool = True
    stream: bool = False
    sampling: Sampling = Sampling()
    tools: tuple[ClientTool, ...] = ()
    toolChoice: ToolChoice = ToolChoice()
    parallelToolCalls: bool | None = None
    user: str | None = None
    echo: dict[str, Any] = attrs.field(factory=dict)
    include: frozenset[str] = frozenset()
    hostedTools: tuple[tuple[str, str], ...] = ()


# -- the Responses request as types (see ai_agent.headends._schema) ------

_ToolName = Annotated[str, Meta(pattern=TOOL_NAME_PATTERN)]


class ResponsesInputText(Struct, tag_field="type", tag="input_text"):
    """A text part of a message's content."""

    text: str


class ResponsesOutputText(Struct, tag_field="type", tag="output_text"):
    """An answer's text part (an assistant message's, sent back)."""

    text: str


class ResponsesText(Struct, tag_field="type", tag="text"):
    """A text part, as Chat Completions names it."""

    text: str


class ResponsesRefusal(Struct, tag_field="type", tag="refusal"):
    """A refusal part: its text if given, else its refusal (one is required)."""

    refusal: str | None = None
    text: str | None = None


_Part = ResponsesInputText | ResponsesOutputText | ResponsesText | ResponsesRefusal
_Content = Annotated[
    str | list[_Part],
    Meta(
        description="Text, or an array of text parts (joined with newlines). Parts of "
        "other types (images, files, audio) are refused with a 400 naming the part."
    ),
]


class ResponsesMessageItem(Struct, tag_field="type", tag="message"):
    """
    A message. An input item without a type is read as a message (as
    OpenAI reads {"role": "user", "content": "..."}): it then needs a role.
    """

    role: Literal["user", "assistant", "system", "developer"]
    content: _Content
    id: str | None = None


class ResponsesFunctionCallItem(Struct, tag_field="type", tag="function_call"):
    """A call of one of the client's tools, as a response handed it out."""

    call_id: str
    name: str
    arguments: str
    namespace: _ToolName | None = None
    id: str | None = None


class ResponsesFunctionCallOutputItem(Struct, tag_field="type", tag="function_call_output"):
    """A client tool's result, answering a function_call (text, or text parts)."""

    call_id: str
    output: _Content
    id: str | None = None


class ResponsesItemReference(Struct, tag_field="type", tag="item_reference"):
    """An output item of a stored response, by its id."""

    id: str


class ResponsesReasoningItem(Struct, tag_field="type", tag="reasoning"):
    """
    A reasoning item: kept in the history, never shown to the model; one
    this server sealed (encrypted_content) carries a hidden turn back.
    """

    encrypted_content: str | None = None
    id: str | None = None


_InputItem = (
    ResponsesMessageItem
    | ResponsesFunctionCallItem
    | ResponsesFunctionCallOutputItem
    | ResponsesItemReference
    | ResponsesReasoningItem
)


class ResponsesFunctionTool(Struct, tag_field="type", tag="function"):
    """A client's function tool."""

    name: _ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ResponsesNamespaceFunction(Struct, kw_only=True):
    """A function of a namespace tool (as Codex sends its MCP servers' tools)."""

    type: Literal["function"]
    name: _ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    defer_loading: bool | None = None


class ResponsesNamespaceTool(Struct, tag_field="type", tag="namespace"):
    """
    A named group of function tools: the model sees each as
    namespace__name, and a call of one is handed back under its own name
    with its namespace.
    """

    name: _ToolName
    tools: Annotated[list[ResponsesNamespaceFunction], Meta(min_length=1)]
    description: str | None = None


class ResponsesHostedTool(Struct, tag_field="type", tag="web_search"):
    """
    A tool OpenAI runs itself (web_search and its dated variants,
    file_search, code_interpreter, image_generation, mcp): left out of the
    model's tools and named in the x-ai-agent-ignored-tools header, or
    refused (--hosted-tools refuse).
    """


_Tool = ResponsesFunctionTool | ResponsesNamespaceTool | ResponsesHostedTool


class ResponsesFunctionChoice(Struct):
    """tool_choice naming one function of tools (of a namespace, if given)."""

    type: Literal["function"]
    name: str
    namespace: _ToolName | None = None


class ResponsesTextFormat(Struct, tag_field="type", tag="text"):
    """Plain text answers (the default)."""


class ResponsesJSONObjectFormat(Struct, tag_field="type", tag="json_object"):
    """Any JSON object as the answer."""


class ResponsesJSONSchemaFormat(Struct, tag_field="type", tag="json_schema"):
    """JSON conforming to a schema as the answer."""

    name: Annotated[str, Meta(min_length=1)] = "answer"
    schema: dict[str, Any] = {}
    description: str | None = None
    strict: bool | None = None


class ResponsesTextConfig(Struct):
    """The answer's text options: its format (others are ignored)."""

    format: ResponsesTextFormat | ResponsesJSONObjectFormat | ResponsesJSONSchemaFormat | None = (
        None
    )


class ResponsesReasoningConfig(Struct):
    """Reasoning options: repeated in the response object, not used."""

    effort: str | None = None
    summary: str | None = None


_MaxOutputTokens = Annotated[int, Meta(ge=1, le=MAX_OUTPUT_TOKENS)]
#: Metadata as OpenAI bounds it: 16 pairs, keys of 64 characters at most,
#: values of 512.
_Metadata = Annotated[
    dict[Annotated[str, Meta(max_length=64)], Annotated[str, Meta(max_length=512)]],
    Meta(max_length=16),
]


class ResponsesRequestBody(Struct):
    """
    A Responses request. Fields not listed (include values other than
    reasoning.encrypted_content, prompt_cache_key, service_tier, ...) are
    accepted and ignored.
    """

    model: Annotated[
        str,
        Meta(
            min_length=1,
            description="An agent's model id (see GET /v1/models), its file name "
            "or path, in any letter case.",
        ),
    ]
    input: Annotated[
        str | Annotated[list[_InputItem], Meta(max_length=MAX_MESSAGES)],
        Meta(
            description="A user message's text, or input items (an item without a type "
            "is a message)."
        ),
    ]
    instructions: str | None = None
    previous_response_id: str | None = None
    store: Annotated[bool, Meta(description="true when not given.")] | None = None
    stream: bool | None = None
    background: (
        Annotated[bool, Meta(description="Background responses are not supported.")] | None
    ) = None
    conversation: Annotated[
        None,
        Meta(
            description="Conversation objects are not supported: chain responses with "
            "previous_response_id."
        ),
    ] = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    max_output_tokens: _MaxOutputTokens | None = None
    tools: (
        Annotated[
            list[_Tool],
            Meta(
                description="The client's own tools: functions, and namespaces of functions "
                f"({MAX_TOOLS} functions in all, names unique as the model sees them); hosted "
                "tools (web_search, file_search, ...) are left out of the model's tools and "
                "named in the x-ai-agent-ignored-tools header, or refused "
                "(--hosted-tools refuse)."
            ),
        ]
        | None
    ) = None
    tool_choice: (
        Annotated[
            Literal["none", "auto", "required"] | ResponsesFunctionChoice,
            Meta(
                description="none hides the client's tools (the agent keeps its own); a "
                "named function (one of tools) is called on the first LLM call; required "
                "makes the model call some tool before it answers."
            ),
        ]
        | None
    ) = None
    parallel_tool_calls: bool | None = None
    text: ResponsesTextConfig | None = None
    reasoning: ResponsesReasoningConfig | None = None
    truncation: Literal["auto", "disabled"] | None = None
    metadata: _Metadata | None = None
    user: str | None = None
    include: list[str] | None = None


#: The C{include} value asking for reasoning items' C{encrypted_content}.
ENCRYPTED_REASONING = "reasoning.encrypted_content"

_TOOL_NAME = re.compile(TOOL_NAME_PATTERN)


def parseResponsesRequest(body: bytes) -> ResponsesRequest:
    """
    Parse and validate a request body: the hostile-input checks of
    L{loadBody}, then the L{ResponsesRequestBody} type, then the rules
    that span fields (tool names unique as the model sees them, at most
    L{MAX_TOOLS} functions, C{tool_choice} among C{tools}).

    An input item without a C{type} is given C{"type": "message"} before
    the conversion, and each hosted tool (see L{isHostedTool}) is set
    apart, its place holding a C{web_search} tool.

    @raise AgentError: a 400 naming the offending C{param}.
    """
    data = loadBody(body)
    if not isinstance(data, dict):
        raise invalidRequest(
            f"the request body must be a JSON object, not {typeName(data)}", code="invalid_json"
        )
    # The model, then the input, are named before any other mistake (msgspec
    # would name a missing field after the mistakes of the others).
    model = data.get("model")
    if model is None:
        raise invalidRequest(
            "you must provide a model parameter", "model", "missing_required_parameter"
        )
    if not isinstance(model, str) or not model:
        raise invalidRequest("'model' must be a non-empty string", "model", "invalid_type")
    if data.get("input") is None:
        raise invalidRequest(
            "you must provide an input parameter", "input", "missing_required_parameter"
        )
    typed, hosted = _typedBody(data)
    try:
        request = msgspec.convert(typed, ResponsesRequestBody, strict=True)
    except msgspec.ValidationError as error:
        raise translate(error, typed, _RESPONSES_WORDS, _responsesWords) from None
    if request.background:
        raise invalidRequest(
            "background responses are not supported here: leave 'background' false and"
            " stream the response instead",
            "background",
            "unsupported_value",
        )
    if isinstance(request.input, str):
        items: tuple[dict[str, Any], ...] = (
            _message("user", [{"type": "input_text", "text": request.input}]),
        )
    else:
        items = tuple(_item(item, f"input[{index}]") for index, item in enumerate(request.input))
    tools = _clientTools(request.tools or ())
    metadata = request.metadata or {}
    text = request.text
    return ResponsesRequest(
        model=model,
        items=items,
        instructions=request.instructions,
        previousResponseId=request.previous_response_id,
        store=request.store is not False,
        stream=bool(request.stream),
        sampling=Sampling(
            request.temperature,
            request.top_p,
            request.max_output_tokens,
            (),
            None,
            None if text is None else _outputFormat(text.format),
        ),
        tools=tools,
        toolChoice=_toolChoice(request.tool_choice, tools),
        parallelToolCalls=request.parallel_tool_calls,
        user=request.user,
        echo={
            "tools": data.get("tools") or [],
            "tool_choice": data.get("tool_choice") or "auto",
            "text": data.get("text") or {"format": {"type": "text"}},
            "metadata": metadata,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_output_tokens": request.max_output_tokens,
            "truncation": request.truncation or "disabled",
            "reasoning": data.get("reasoning") or {"effort": None, "summary": None},
        },
        include=frozenset(request.include or ()),
        hostedTools=hosted,
    )


def _typedBody(data: dict[str, Any]) -> tuple[dict[str, Any], tuple[tuple[str, str], ...]]:
    """
    The body as L{ResponsesRequestBody} reads it (the client's own is
    left as it was, for the response to repeat): input items without a
    C{type} are messages, and hosted tools are set apart, each replaced by
    a C{web_search} tool (one tagged type stands for them all, whatever
    their C{type}).

    @return: that body, and the hosted tools as C{(type, param)}.
    """
    typed = data
    items = data.get("input")
    if isinstance(items, list):
        given = [
            {"type": "message", **item} if type(item) is dict and "type" not in item else item
            for item in items
        ]
        typed = {**data, "input": given}
    tools = data.get("tools")
    hosted: list[tuple[str, str]] = []
    if isinstance(tools, list):
        kept = []
        for index, tool in enumerate(tools):
            kind = tool.get("type") if type(tool) is dict else None
            if isinstance(kind, str) and isHostedTool(kind):
                hosted.append((kind, f"tools[{index}]"))
                tool = _HOSTED_TOOL
            kept.append(tool)
        if hosted:
            typed = {**typed, "tools": kept}
    return typed, tuple(hosted)


_HOSTED_TOOL = {"type": "web_search"}


def _message(role: str, content: list[dict[str, Any]], itemId: str | None = None) -> dict[str, Any]:
    return {
        "type": "message",
        "id": itemId or _newId("msg"),
        "status": "completed",
        "role": role,
        "content": content,
    }


def _item(item: _InputItem, where: str) -> dict[str, Any]:
    """
    An input item as the item the history keeps (a C{message}'s parts as
    C{input_text}, or C{output_text} for the assistant's).
    """
    if isinstance(item, ResponsesMessageItem):
        partType = "output_text" if item.role == "assistant" else "input_text"
        return _message(item.role, _parts(item.content, f"{where}.content", partType), item.id)
    if isinstance(item, ResponsesFunctionCallItem):
        call = {
            "type": "function_call",
            "id": item.id or _newId("fc"),
            "call_id": item.call_id,
            "name": item.name,
            "arguments": item.arguments,
            "status": "completed",
        }
        if item.namespace is not None:
            call["namespace"] = item.namespace
        return call
    if isinstance(item, ResponsesFunctionCallOutputItem):
        output = item.output
        if not isinstance(output, str):
            output = "\n".join(
                part["text"] for part in _parts(output, f"{where}.output", "input_text")
            )
        return {
            "type": "function_call_output",
            "id": item.id or _newId("fco"),
            "call_id": item.call_id,
            "output": output,
            "status": "completed",
        }
    if isinstance(item, ResponsesItemReference):
        return {"type": "item_reference", "id": item.id, "where": where}
    # A reasoning item is kept in the history but never shown to the model;
    # one this server sealed carries a hidden turn back (ai_agent.sealing).
    reasoning: dict[str, Any] = {"type": "reasoning", "id": item.id or _newId("rs"), "summary": []}
    if item.encrypted_content is not None:
        reasoning["encrypted_content"] = item.encrypted_content
    return reasoning


def _parts(content: str | list[_Part], where: str, partType: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [_textPart(partType, content)]
    parts = []
    for index, part in enumerate(content):
        text = part.text
        if text is None:
            # A refusal part gave neither its text nor its refusal.
            text = part.refusal if isinstance(part, ResponsesRefusal) else None
            if text is None:
                raise invalidRequest(
                    f"'{where}[{index}].text' must be a string",
                    f"{where}[{index}].text",
                    "invalid_type",
                )
        parts.append(_textPart(partType, text))
    return parts


def _textPart(partType: str, text: str) -> dict[str, Any]:
    if partType == "output_text":
        return {"type": "output_text", "text": text, "annotations": []}
    return {"type": "input_text", "text": text}


def _clientTools(value: Sequence[_Tool]) -> tuple[ClientTool, ...]:
    """
    The client's tools: each function, and each member of a namespace
    (shown to the model as L{namespacedName}); hosted tools were set apart
    before.  Names are unique as the model sees them; at most L{MAX_TOOLS}
    functions in all.

    @raise AgentError: a 400 naming the offending C{param}.
    """
    tools: list[ClientTool] = []
    names: set[str] = set()

    def add(tool: ClientTool) -> None:
        if tool.spec.name in names:
            raise invalidRequest(
                f"'{tool.param}' repeats the tool name {tool.spec.name!r}",
                tool.param,
                "duplicate_tool_name",
            )
        names.add(tool.spec.name)
        tools.append(tool)

    for index, tool in enumerate(value):
        where = f"tools[{index}]"
        if isinstance(tool, ResponsesFunctionTool):
            add(ClientTool(_spec(tool.name, tool), f"{where}.name"))
        elif isinstance(tool, ResponsesNamespaceTool):
            for number, member in enumerate(tool.tools):
                add(
                    ClientTool(
                        _spec(namespacedName(tool.name, member.name), member),
                        f"{where}.tools[{number}].name",
                        tool.name,
                        member.name,
                    )
                )
    if len(tools) > MAX_TOOLS:
        raise invalidRequest(
            f"'tools' holds {len(tools)} functions (namespaces' members included);"
            f" at most {MAX_TOOLS} are allowed",
            "tools",
            "array_above_max_length",
        )
    return tuple(tools)


def _spec(name: str, tool: ResponsesFunctionTool | ResponsesNamespaceFunction) -> ToolSpec:
    parameters = tool.parameters
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    return ToolSpec(name, tool.description or "", parameters)


def _toolChoice(
    value: str | ResponsesFunctionChoice | None, tools: tuple[ClientTool, ...]
) -> ToolChoice:
    """
    C{tool_choice}: C{none}, C{auto}, C{required}, or a function among
    C{tools} by its name (and its namespace, if it has one: then by the
    name the model sees, L{namespacedName}).
    """
    if value is None:
        return ToolChoice()
    if isinstance(value, str):
        return ToolChoice(value)
    name = value.name
    if value.namespace is not None:
        if _TOOL_NAME.search(name) is None:
            raise _toolNameWords("tool_choice.name", name)
        name = namespacedName(value.namespace, name)
    if name not in {tool.spec.name for tool in tools}:
        raise invalidRequest(
            f"'tool_choice.name' names {showValue(name)}, which is not in 'tools'",
            "tool_choice.name",
            "invalid_value",
        )
    return ToolChoice(ToolChoice.TOOL, name)


def _outputFormat(
    spec: ResponsesTextFormat | ResponsesJSONObjectFormat | ResponsesJSONSchemaFormat | None,
) -> OutputFormat | None:
    """
    C{text.format}: C{text} (L{None}), C{json_object}, or C{json_schema}
    with C{name} and C{schema} beside the type.
    """
    if isinstance(spec, ResponsesJSONObjectFormat):
        return OutputFormat()
    if isinstance(spec, ResponsesJSONSchemaFormat):
        return OutputFormat(spec.schema, spec.name, spec.description, spec.strict)
    return None


# -- the words of the refusals: those clients and tests rely on, by param;
# the rest are msgspec's, in OpenAI's style (see ai_agent.headends._schema).


def _toolNameWords(param: str, value: Any) -> AgentError:
    return invalidRequest(
        f"'{param}' must be 1 to 64 letters, digits, '_' or '-', got {showValue(value)}",
        param,
        "invalid_value" if value is not None else "missing_required_parameter",
    )


def _functionNameWords(param: str, value: Any) -> AgentError:
    return invalidRequest(
        f"'{param}' must be 1 to 64 letters, digits, '_' or '-', got {showValue(value)}",
        param,
        "invalid_value",
    )


def _objectWords(param: str, value: Any) -> AgentError:
    return invalidRequest(
        f"'{param}' must be an object, not {typeName(value)}", param, "invalid_type"
    )


def _contentWords(param: str, value: Any) -> AgentError:
    return invalidRequest(
        f"'{param}' must be a string or an array of content parts, not {typeName(value)}",
        param,
        "invalid_type",
    )


def _partTypeWords(param: str, value: Any) -> AgentError:
    where = param.rsplit(".", 1)[0]
    return invalidRequest(
        f"'{where}' is a {showValue(value)} part; agents here take text parts only",
        where,
        "unsupported_content_type",
    )


def _partTextWords(param: str, value: Any) -> AgentError:
    where = param.rsplit(".", 1)[0]
    return invalidRequest(f"'{where}.text' must be a string", f"{where}.text", "invalid_type")


def _inputWords(param: str, value: Any) -> AgentError:
    if isinstance(value, list):
        return invalidRequest(
            f"'input' holds {len(value)} items; at most {MAX_MESSAGES} are allowed",
            "input",
            "array_above_max_length",
        )
    return invalidRequest(
        f"'input' must be a string or an array of items, not {typeName(value)}",
        "input",
        "invalid_type",
    )


def _toolChoiceWords(param: str, value: Any) -> AgentError:
    if isinstance(value, str):
        return invalidRequest(
            f"'tool_choice' must be none, auto, required or a function, got {showValue(value)}",
            "tool_choice",
            "invalid_value",
        )
    if not isinstance(value, dict):
        return invalidRequest(
            f"'tool_choice' must be a string or an object, not {typeName(value)}",
            "tool_choice",
            "invalid_type",
        )
    return invalidRequest(
        '\'tool_choice\' must be none, auto, required or {"type": "function", "name": ...}',
        "tool_choice",
        "invalid_value",
    )


def _metadataWords(data: Any) -> AgentError:
    value = data.get("metadata")
    if isinstance(value, dict) and len(value) <= 16:
        for key, entry in value.items():
            if len(key) > 64 or not isinstance(entry, str) or len(entry) > 512:
                return invalidRequest(
                    "'metadata' keys are at most 64 characters and values strings of at most 512",
                    f"metadata.{shorten(key, 64)}",
                    "invalid_value",
                )
    return invalidRequest(
        "'metadata' must be an object of at most 16 string values", "metadata", "invalid_type"
    )


def _fixed(message: str, param: str, code: str) -> Override:
    return lambda _param, _value: invalidRequest(message, param, code)


_ITEM_TYPES = "messages, function_call, function_call_output, item_reference and reasoning"
_PARTS: dict[str, Override] = {
    "": _contentWords,
    "[]": _objectWords,
    "[].type": _partTypeWords,
    "[].text": _partTextWords,
    "[].refusal": _partTextWords,
}

#: The words of refusals by C{param} (any C{[n]} written C{[]}).
_RESPONSES_WORDS: dict[str, Override] = {
    "input": _inputWords,
    "input[]": _objectWords,
    "input[].type": lambda param, value: invalidRequest(
        f"'{param}' is {showValue(value)}; input items here are {_ITEM_TYPES}",
        param,
        "unsupported_value",
    ),
    "input[].role": lambda param, value: invalidRequest(
        f"'{param}' must be one of assistant, developer, system, user, got {showValue(value)}",
        param,
        "invalid_value",
    ),
    **{f"input[].content{suffix}": words for suffix, words in _PARTS.items()},
    "input[].output": lambda param, value: invalidRequest(
        f"'{param}' must be a string, not {typeName(value)}", param, "invalid_type"
    ),
    **{f"input[].output{suffix}": words for suffix, words in _PARTS.items() if suffix},
    "input[].namespace": _toolNameWords,
    "conversation": _fixed(
        "conversation objects are not supported here: chain responses with"
        " 'previous_response_id' instead",
        "conversation",
        "unsupported_parameter",
    ),
    "temperature": between(0.0, 2.0),
    "top_p": between(0.0, 1.0),
    "max_output_tokens": outputTokens,
    "tools": lambda param, value: invalidRequest(
        f"'tools' must be an array, not {typeName(value)}", "tools", "invalid_type"
    ),
    "tools[]": _objectWords,
    "tools[].type": lambda param, value: invalidRequest(
        f"'{param}' is {showValue(value)}; the tools supported here are function and namespace"
        " tools (hosted tools such as web_search are left out or refused, as the server is"
        " configured)",
        param,
        "unsupported_tool_type",
    ),
    "tools[].parameters": lambda param, value: invalidRequest(
        f"'{param}' must be a JSON Schema object", param, "invalid_type"
    ),
    "tools[].tools": lambda param, value: invalidRequest(
        f"'{param}' must be a non-empty array of function tools, not {typeName(value)}",
        param,
        "invalid_type" if value is not None else "missing_required_parameter",
    ),
    "tools[].tools[]": _objectWords,
    "tools[].tools[].type": lambda param, value: invalidRequest(
        f"'{param}' is {showValue(value)}; a namespace's tools here are function tools",
        param,
        "unsupported_tool_type",
    ),
    "tools[].tools[].name": _functionNameWords,
    "tools[].tools[].parameters": lambda param, value: invalidRequest(
        f"'{param}' must be a JSON Schema object", param, "invalid_type"
    ),
    "tool_choice": _toolChoiceWords,
    "tool_choice.type": lambda param, value: _toolChoiceWords(param, {}),
    "tool_choice.namespace": _toolNameWords,
    "text": _fixed("'text' must be an object", "text", "invalid_type"),
    "text.format": _fixed("'text.format' must be an object", "text.format", "invalid_type"),
    "text.format.type": _fixed(
        "'text.format.type' must be one of text, json_object, json_schema",
        "text.format.type",
        "invalid_value",
    ),
    "text.format.name": _fixed(
        "'text.format.name' must be a non-empty string", "text.format.name", "invalid_type"
    ),
    "text.format.schema": _fixed(
        "'text.format.schema' must be an object", "text.format.schema", "invalid_type"
    ),
    "metadata": lambda param, value: _metadataWords({"metadata": value}),
    "include": _fixed("'include' must be an array of strings", "include", "invalid_type"),
    "include[]": _fixed("'include' must be an array of strings", "include", "invalid_type"),
}

#: Fields of input items that are strings, refused in words that say
#: whether the field was missing or of another type.
_ITEM_STRINGS = frozenset({"input[].call_id", "input[].name", "input[].arguments", "input[].id"})


def _responsesWords(error: msgspec.ValidationError, data: Any) -> AgentError:
    """
    The refusals whose words depend on more than the value at fault: a
    missing string of an item (or one of another type), a tool's name
    (a namespace's may be missing, a function's is invalid), the name of
    a namespace's function in C{tool_choice}, a metadata pair (named by
    its key); any other in OpenAI's style (L{translate}).
    """
    param, reason, missing = locate(error)
    field = re.sub(r"\[\d+\]", "[]", param)
    value = valueAt(data, param)
    if field in _ITEM_STRINGS:
        return invalidRequest(
            f"'{param}' must be a string, not {typeName(value)}",
            param,
            "missing_required_parameter" if missing else "invalid_type",
        )
    if field == "tools[].name":
        tool = valueAt(data, param.rsplit(".", 1)[0])
        if isinstance(tool, dict) and tool.get("type") == "namespace":
            return _toolNameWords(param, value)
        return _functionNameWords(param, value)
    if field == "tool_choice.name":
        choice = data.get("tool_choice")
        if isinstance(choice, dict) and choice.get("namespace") is not None:
            return _toolNameWords(param, value)
        return _toolChoiceWords(param, {})
    if field.startswith("metadata") or (not param and "`$.metadata`" in reason):
        return _metadataWords(data)
    return translate(error, data)


def checkCallOutputs(history: Iterable[dict[str, Any]], items: list[dict[str, Any]]) -> None:
    """
    Refuse a C{function_call_output} in C{items} (the request's input,
    resolved) whose C{call_id} no C{function_call} before it made, in the
    input or in the chain of previous responses (C{history}): the provider
    would refuse the conversation, and its 400 would reach the client as a
    502.
    """
    calls = {item["call_id"] for item in history if item.get("type") == "function_call"}
    for index, item in enumerate(items):
        kind = item.get("type")
        if kind == "function_call":
            calls.add(item["call_id"])
        elif kind == "function_call_output" and item["call_id"] not in calls:
            raise invalidRequest(
                f"No tool call found for function call output with call_id"
                f" {shorten(item['call_id'])}.",
                f"input[{index}].call_id",
                "invalid_value",
            )


def conversation(items: Iterable[dict[str, Any]]) -> tuple[ChatMessage, ...]:
    """
    Items (resolved: no C{item_reference}) as the conversation the agent
    sees: messages as they are, consecutive C{function_call}s as one
    assistant message's tool calls (joined to the assistant message just
    before them, a namespace's function under the name the model was
    shown, L{namespacedName}), C{function_call_output}s as tool messages;
    reasoning items are left out.
    """
    messages: list[ChatMessage] = []
    for item in items:
        kind = item.get("type")
        if kind == "message":
            text = "\n".join(part.get("text", "") for part in item.get("content", ()))
            messages.append(ChatMessage(item["role"], text))
        elif kind == "function_call":
            name = item["name"]
            if item.get("namespace") is not None:
                name = namespacedName(item["namespace"], name)
            call = ToolCall(item["call_id"], name, item["arguments"])
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":
                messages[-1] = attrs.evolve(last, toolCalls=(*last.toolCalls, call))
            else:
                messages.append(ChatMessage("assistant", "", toolCalls=(call,)))
        elif kind == "function_call_output":
            messages.append(ChatMessage("tool", item["output"], toolCallId=item["call_id"]))
    return tuple(messages)


# -- the response -------------------------------------------------------


#: Why a response is incomplete, by neutral finish reason.
INCOMPLETE = {
    FinishReason.MAX_TOKENS: "max_output_tokens",
    FinishReason.CONTENT_FILTER: "content_filter",
}


def usageObject(usage: Usage) -> dict[str, Any]:
    """
    The Responses API's C{usage}.
    """
    return {
        "input_tokens": usage.promptTokens,
        "input_tokens_details": {"cached_tokens": usage.cacheReadTokens},
        "output_tokens": usage.completionTokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoningTokens},
        "total_tokens": usage.totalTokens,
    }


#: The codes OpenAI's C{response.failed} uses for these kinds (clients such
#: as Codex retry on them).
_FAILED_CODES = {
    ErrorKind.RATE_LIMIT: "rate_limit_exceeded",
    ErrorKind.OVERLOADED: "server_is_overloaded",
}


def failedCode(error: AgentError) -> str:
    """
    The C{error.code} of a failed response: OpenAI's word for a rate limit
    or an overload, else the error's own code.
    """
    return _FAILED_CODES.get(error.kind) or error.code or "server_error"


@attrs.define
class ResponsesEncoder:
    """
    A run as a Responses API response (a
    L{ai_agent.headends._stream.RunEncoder}): typed events when streamed,
    the response object when not.  Reasoning and progress share a
    C{reasoning} item's summary, answer text a C{message} item, each
    client tool call a C{function_call} item; an item is closed when one
    of another kind starts.

    @ivar base: the response object's fields but C{status}, C{output},
        C{usage}, C{error} and C{incomplete_details}.
    @ivar frames: whether events are written; off for a whole answer, whose
        response object is all that is written.
    @ivar sealed: hidden turns sealed for the client (a C{store: false}
        run's L{SealedTurns.sealed<ai_agent.sealing.SealedTurns.sealed>}),
        each written as a C{reasoning} item with C{encrypted_content}
        before the client's calls.
    @ivar namespaced: the client's namespaced tools, by the name the model
        was shown: a call of one is handed back under the tool's own name
        with its C{namespace}, as the client knows it.
    """

    base: dict[str, Any]
    frames: bool = True
    sealed: list[str] = attrs.field(factory=list)
    _sealedSent: int = attrs.field(default=0, init=False)
    namespaced: Mapping[str, ClientTool] = attrs.field(factory=dict)
    output: list[dict[str, Any]] = attrs.field(factory=list, init=False)
    _sequence: int = attrs.field(default=0, init=False)
    _open: dict[str, Any] | None = attrs.field(default=None, init=False)
    _text: list[str] = attrs.field(factory=list, init=False)
    _reasoningText: ReasoningText = attrs.field(factory=ReasoningText, init=False)
    _final: dict[str, Any] | None = attrs.field(default=None, init=False)
    _opened: bool = attrs.field(default=False, init=False)
    # The events closing the last item, made with the final object and sent
    # before the terminal event.
    _closing: bytes = attrs.field(default=b"", init=False)

    def snapshot(self, status: str, **fields: Any) -> dict[str, Any]:
        """
        The response object as it stands.
        """
        return {
            **self.base,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "output": [dict(item) for item in self.output],
            "usage": None,
            **fields,
        }

    def _event(self, kind: str, **fields: Any) -> bytes:
        if not self.frames:
            return b""
        data = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return b"event: " + kind.encode("ascii") + b"\ndata: " + _dumpsAny(data) + b"\n\n"

    def _delta(self, kind: str, **fields: Any) -> bytes:
        """
        L{_event} for a delta, whose fields hold no float (text, integers,
        an empty list): written with orjson, the same bytes as L{_dumps}.
        """
        if not self.frames:
            return b""
        data = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return b"event: " + kind.encode("ascii") + b"\ndata: " + _dumpsPlain(data) + b"\n\n"

    def open(self) -> bytes:
        return self._opening()

    def _opening(self) -> bytes:
        """
        C{response.created} and C{response.in_progress}, the first time
        only: before the first item's events, or when the stream's head
        is sent before any (L{open}, then called after that item's frames
        were made, has nothing left to send).
        """
        if self._opened:
            return b""
        self._opened = True
        if not self.frames:
            return b""
        begun = self.snapshot("in_progress")
        return self._event("response.created", response=begun) + self._event(
            "response.in_progress", response=begun
        )

    def _start(self, item: dict[str, Any]) -> bytes:
        frames = self._opening() + self._close()
        self.output.append(item)
        self._open = item
        self._text = []
        return frames + self._event(
            "response.output_item.added", output_index=len(self.output) - 1, item=dict(item)
        )

    def _where(self) -> dict[str, Any]:
        assert self._open is not None
        return {"item_id": self._open["id"], "output_index": len(self.output) - 1}

    def _close(self) -> bytes:
        item = self._open
        if item is None:
            return b""
        where = self._where()
        self._open = None
        text = "".join(self._text)
        if item["type"] == "message":
            part = {"type": "output_text", "text": text, "annotations": []}
            item["content"] = [part]
            item["status"] = "completed"
            frames = self._event(
                "response.output_text.done", **where, content_index=0, text=text, logprobs=[]
            ) + self._event("response.content_part.done", **where, content_index=0, part=part)
        else:
            part = {"type": "summary_text", "text": text}
            item["summary"] = [part]
            frames = self._event(
                "response.reasoning_summary_text.done", **where, summary_index=0, text=text
            ) + self._event(
                "response.reasoning_summary_part.done", **where, summary_index=0, part=part
            )
        return frames + self._event(
            "response.output_item.done", output_index=where["output_index"], item=dict(item)
        )

    def content(self, text: str) -> bytes:
        frames = b""
        if self._open is None or self._open["type"] != "message":
            frames = self._start(
                {
                    "type": "message",
                    "id": _newId("msg"),
                    "status": "in_progress",
                    "role": "assistant",
                    "content": [],
                }
            )
            frames += self._event(
                "response.content_part.added",
                **self._where(),
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": []},
            )
        self._text.append(text)
        return frames + self._delta(
            "response.output_text.delta", **self._where(), content_index=0, delta=text, logprobs=[]
        )

    def _summary(self, text: str) -> bytes:
        frames = b""
        if self._open is None or self._open["type"] != "reasoning":
            frames = self._start({"type": "reasoning", "id": _newId("rs"), "summary": []})
            frames += self._event(
                "response.reasoning_summary_part.added",
                **self._where(),
                summary_index=0,
                part={"type": "summary_text", "text": ""},
            )
        self._text.append(text)
        return frames + self._delta(
            "response.reasoning_summary_text.delta", **self._where(), summary_index=0, delta=text
        )

    def reasoning(self, text: str) -> bytes:
        return self._summary(self._reasoningText.reasoning(text))

    def progress(self, event: Progress) -> bytes:
        return self._summary(self._reasoningText.progress(event))

    def _sealedItems(self) -> bytes:
        """
        The sealed turns not written yet, each a whole C{reasoning} item.
        """
        frames = b""
        while self._sealedSent < len(self.sealed):
            blob = self.sealed[self._sealedSent]
            self._sealedSent += 1
            frames += self._opening() + self._close()
            item = {
                "type": "reasoning",
                "id": _newId("rs"),
                "summary": [],
                "encrypted_content": blob,
            }
            self.output.append(item)
            index = len(self.output) - 1
            frames += self._event(
                "response.output_item.added", output_index=index, item=dict(item)
            ) + self._event("response.output_item.done", output_index=index, item=dict(item))
        return frames

    def toolCall(self, call: ClientToolCall) -> bytes:
        sealedFrames = self._sealedItems()
        item: dict[str, Any] = {
            "type": "function_call",
            "id": _newId("fc"),
            "call_id": call.id,
            "name": call.name,
            "arguments": "",
            "status": "in_progress",
        }
        tool = self.namespaced.get(call.name)
        if tool is not None and tool.clientName is not None:
            # Codex routes a call by this separate field (it reads the
            # item of response.output_item.done): a joined name is not a
            # tool it knows.
            item["name"] = tool.clientName
            item["namespace"] = tool.namespace
        frames = sealedFrames + self._start(item)
        self._open = None
        index = len(self.output) - 1
        where = {"item_id": item["id"], "output_index": index}
        if call.arguments:
            frames += self._delta(
                "response.function_call_arguments.delta", **where, delta=call.arguments
            )
        item["arguments"] = call.arguments
        item["status"] = "completed"
        return (
            frames
            + self._event(
                "response.function_call_arguments.done",
                **where,
                name=item["name"],
                arguments=call.arguments,
            )
            + self._event("response.output_item.done", output_index=index, item=dict(item))
        )

    def usage(self, usage: Usage) -> None:
        return None

    def final(self, finished: Finished) -> dict[str, Any]:
        """
        The finished response object (made once).
        """
        if self._final is None:
            self._closing = self._close()
            reason = INCOMPLETE.get(finished.reason)
            self._final = self.snapshot(
                "completed" if reason is None else "incomplete",
                incomplete_details=None if reason is None else {"reason": reason},
                usage=usageObject(finished.usage),
            )
        return self._final

    def finish(self, finished: Finished) -> bytes:
        response = self.final(finished)
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        closing, self._closing = self._closing, b""
        return self._opening() + closing + self._event(kind, response=response)

    def error(self, error: AgentError) -> bytes:
        frames = self._opening() + self._closing + self._close()
        self._closing = b""
        failed = self.snapshot(
            "failed", error={"code": failedCode(error), "message": error.message}
        )
        return frames + self._event("response.failed", response=failed)

    def body(self, finished: Finished) -> bytes:
        return _dumpsAny(self.final(finished))


# -- the headend --------------------------------------------------------


@attrs.define(slots=False)
class ResponsesHeadend(Headend):
    """
    Klein routes for the Responses API, beside the OpenAI headend on the
    same port and pool.

    @ivar store: the run store, or L{None} (C{--store none}): nothing is
        stored and C{previous_response_id} is refused.  Routes reach it only
        through L{_owned}: each principal (API key) sees its own objects.
    @ivar sealer: seals the hidden turns of C{store: false} runs into the
        response (L{ai_agent.sealing}).
        stored and C{previous_response_id} is refused.
    @ivar hostedTools: what a request's hosted tools get (C{--hosted-tools},
        one of L{HOSTED_POLICIES}): left out of the model's tools, named in
        the L{IGNORED_TOOLS_HEADER} header and one log line
        (L{HOSTED_IGNORE}, so that a client's defaults, such as Codex's
        C{web_search}, work), or a 400 (L{HOSTED_REFUSE}).
    """

    log: ClassVar[Logger] = Logger()
    app: ClassVar[Klein] = Klein()

    registry: AgentRegistry
    runner: SessionRunner
    pool: RunPool
    reactor: IReactorTimeAndThreads
    store: RunStore | None = None
    observer: Observer = NULL_OBSERVER
    streamHeadGrace: float = STREAM_HEAD_GRACE
    clientStallTimeout: float = CLIENT_STALL_TIMEOUT
    maxAnswer: int = MAX_RUN_ANSWER
    redactor: Redactor | None = None
    bodyGate: BodyGate | None = None
    sealer: Sealer = attrs.field(factory=lambda: Sealer.fromSecrets(()))
    hostedTools: str = attrs.field(
        default=HOSTED_IGNORE, validator=attrs.validators.in_(HOSTED_POLICIES)
    )
    threadPool: Any = None

    installErrorHandlers(app)

    def _errorFormat(self, request: IRequest) -> ErrorFormat:
        return OPENAI_ERRORS

    # -- the store ------------------------------------------------------

    def _owned(self, principal: Principal) -> OwnedStore | None:
        """
        The run store as C{principal} sees it (only what its key stored),
        or L{None} without a store.
        """
        return None if self.store is None else OwnedStore(self.store, principal)

    def _needStore(self, principal: Principal, what: str, param: str | None) -> OwnedStore:
        store = self._owned(principal)
        if store is None:
            raise invalidRequest(
                f"{what} needs the response store, which is off on this server (--store none)",
                param,
                "store_disabled",
            )
        return store

    async def _history(self, principal: Principal, responseId: str) -> list[dict[str, Any]]:
        """
        The items of a chain of stored responses, oldest first: each
        response's input, then its output.  The chain is read in one store
        call (one query on a database), in this principal's part of the
        store only.
        """
        store = self._needStore(principal, "'previous_response_id'", "previous_response_id")
        found = await store.getChain(RESPONSES, responseId, "previous_response_id", MAX_CHAIN)
        chain = [stored.document for stored in found]
        missing = chain[-1].get("previous_response_id") if chain else responseId
        if missing is not None:
            if len(chain) >= MAX_CHAIN:
                raise invalidRequest(
                    f"the chain of previous responses is longer than {MAX_CHAIN}",
                    "previous_response_id",
                    "chain_too_long",
                )
            raise notFound(
                f"Response with id {shorten(repr(missing))} not found.",
                "response_not_found",
                "previous_response_id",
            )
        items: list[dict[str, Any]] = []
        for document in reversed(chain):
            items.extend(document["input"])
            items.extend(document["response"]["output"])
        return items

    async def _resolve(
        self, principal: Principal, items: tuple[dict[str, Any], ...]
    ) -> list[dict[str, Any]]:
        """
        The input with every C{item_reference} replaced by the stored item.
        """
        references = [item for item in items if item["type"] == "item_reference"]
        if not references:
            return list(items)
        store = self._needStore(principal, "'item_reference'", references[0]["where"])
        found = await store.getMany(ITEMS, [item["id"] for item in references])
        resolved = []
        for item in items:
            if item["type"] == "item_reference":
                stored = found.get(item["id"])
                if stored is None:
                    raise notFound(
                        f"Item with id {shorten(repr(item['id']))} not found.",
                        "item_not_found",
                        f"{item['where']}.id",
                    )
                resolved.append(stored.document)
            else:
                resolved.append(item)
        return resolved

    def _keeper(
        self,
        store: OwnedStore,
        encoder: ResponsesEncoder,
        previous: str | None,
        items: list[dict[str, Any]],
    ) -> Any:
        def keep(finished: Finished) -> Deferred[None]:
            response = encoder.final(finished)
            document = {"input": items, "previous_response_id": previous, "response": response}
            outputs = {item["id"]: item for item in response["output"]}

            # One transaction (one trip to the store's thread) for both.
            return store.putEntries(
                [
                    (RESPONSES, response["id"], document),
                    *((ITEMS, key, item) for key, item in outputs.items()),
                ]
            )

        return keep

    def _hosted(self, hosted: tuple[tuple[str, str], ...], responseId: str, agent: str) -> bytes:
        """
        Apply the hosted-tools policy to a request's hosted tools: refuse
        the request, or log them once and give the header's value.

        @raise AgentError: a 400 naming the first, when they are refused.
        """
        kind, where = hosted[0]
        if self.hostedTools == HOSTED_REFUSE:
            raise invalidRequest(
                f"'{where}.type' is {showValue(kind)}, a hosted tool this server cannot run"
                " (it refuses them: --hosted-tools refuse); only function and namespace tools"
                " are supported",
                f"{where}.type",
                "unsupported_tool_type",
            )
        kinds = ", ".join(dict.fromkeys(kind for kind, _ in hosted))
        self.log.info(
            "{requestId}: agent {agent}: hosted tools left out of the model's tools (this"
            " server cannot run them): {tools}",
            requestId=responseId,
            agent=agent,
            tools=kinds,
        )
        return kinds.encode("ascii", "replace")

    # -- routes ---------------------------------------------------------

    @functools.cached_property
    def api(self) -> API[ResponsesRequest]:
        """
        The Responses API as an L{API} value, served by L{serve}: its
        C{beforeRun} hook reads the history (C{previous_response_id}, item
        references, sealed turns) and its C{beforeFinish} stores the
        response.
        """
        return API(
            name="responses",
            route="/v1/responses",
            parse=parseResponsesRequest,
            model=lambda parsed: parsed.model,
            stream=lambda parsed: parsed.stream,
            errors=OPENAI_ERRORS,
            unknownModel=_unknownModel,
            newId=lambda: _newId("resp"),
            labels=lambda request, parsed, requestId: RunLabels(
                requestId=requestId,
                stream=parsed.stream,
                user=None if parsed.user is None else loggable(parsed.user),
                forwarded=forwardedHeaders(headerLookup(request)),
            ),
            toRunRequest=_runRequest,
            encoder=self._encoder,
            headers=_headers,
            beforeRun=self._beforeRun,
            beforeFinish=self._beforeFinish,
        )

    @app.route("/v1/responses", methods=["POST"])
    async def create(self, request: IRequest) -> bytes | None:
        """
        Run an agent on the input items; answer with the response object
        or stream its events.
        """
        return await serve(self.api, self, request)

    async def _beforeRun(self, exchange: Exchange[ResponsesRequest]) -> _Before:
        """
        Before the run: the sealed turns of a C{store: false} request, the
        hosted-tools policy, the history of C{previous_response_id} and the
        input with its item references resolved; a store that is down fails
        the request now (503), before the run spends an upstream call on an
        answer it could not keep.
        """
        parsed, principal = exchange.parsed, exchange.principal
        turns = self._sealedTurns(parsed, exchange.agent.spec, principal)
        responseId = exchange.labels.requestId
        headers = {b"x-request-id": responseId.encode("ascii")}
        if parsed.hostedTools:
            headers[IGNORED_TOOLS_HEADER] = self._hosted(
                parsed.hostedTools, responseId, exchange.agent.id
            )
        history: list[dict[str, Any]] = []
        if parsed.previousResponseId is not None:
            history = await self._history(principal, parsed.previousResponseId)
        items = await self._resolve(principal, parsed.items)
        checkCallOutputs(history, items)
        owned = self._owned(principal) if parsed.store else None
        if owned is not None:
            await owned.store.checkAvailable()
        return _Before(turns, headers, history, items, owned)

    def _encoder(self, exchange: Exchange[ResponsesRequest]) -> ResponsesEncoder:
        parsed, before = exchange.parsed, exchange.state
        assert isinstance(before, _Before)
        return ResponsesEncoder(
            {
                "id": exchange.labels.requestId,
                "object": "response",
                "created_at": int(exchange.created),
                "model": exchange.agent.id,
                "instructions": parsed.instructions,
                "previous_response_id": parsed.previousResponseId,
                "parallel_tool_calls": parsed.parallelToolCalls is not False,
                "store": before.owned is not None,
                "background": False,
                "user": parsed.user,
                **parsed.echo,
            },
            frames=parsed.stream,
            sealed=[] if before.turns is None else before.turns.sealed,
            namespaced={tool.spec.name: tool for tool in parsed.tools if tool.namespace},
        )

    def _beforeFinish(
        self, exchange: Exchange[ResponsesRequest], encoder: RunEncoder
    ) -> Callable[[Finished], Deferred[None]] | None:
        before = exchange.state
        assert isinstance(before, _Before) and isinstance(encoder, ResponsesEncoder)
        if before.owned is None:
            return None
        return self._keeper(before.owned, encoder, exchange.parsed.previousResponseId, before.items)

    def _sealedTurns(
        self, parsed: ResponsesRequest, spec: AgentSpec, principal: Principal
    ) -> SealedTurns | None:
        """
        For a C{store: false} request, the turn store that keeps nothing:
        hidden turns sealed into the response, and found in the sealed
        items the client sent back.  L{None} for a stored request (hidden
        turns go to the run store, owned by the principal).

        @raise AgentError: a 400 for a sealed item no key opens for this
            principal, and for a run that may need to keep a hidden turn
            without C{include: ["reasoning.encrypted_content"]}.
        """
        if parsed.store:
            return None
        try:
            opened = openedTurns(self.sealer, parsed.items, principal.name)
        except SealError as error:
            where = error.args[1] if len(error.args) > 1 else None
            raise invalidRequest(
                f"the reasoning item at {where or 'input'} carries a hidden turn that cannot be"
                f" opened ({error.args[0]}): it was altered, made for another API key, or sealed"
                " with a key this server does not have (see sealingKeys in docs/responses.md)",
                f"{where}.encrypted_content" if where else "input",
                "invalid_encrypted_content",
            ) from None
        emit = ENCRYPTED_REASONING in parsed.include
        hybrid = (
            spec.clientTools
            and bool(parsed.tools)
            and parsed.toolChoice.mode != ToolChoice.NONE
            and bool(spec.tools or spec.agents)
        )
        if hybrid and not emit:
            raise invalidRequest(
                f"agent {spec.name!r} runs tools of its own beside yours, so handing your tool"
                " calls back keeps its own turn for your next request; with 'store': false"
                " nothing is kept here. Send 'include': [\"reasoning.encrypted_content\"] to"
                " carry that turn in the response (sealed), or set 'store': true",
                "include",
                "encrypted_content_required",
            )
        return SealedTurns(self.sealer, opened, self.runner.turns, emit)

    async def _stored(self, principal: Principal, responseId: str) -> dict[str, Any]:
        store = self._owned(principal)
        if store is None:
            raise notFound(
                f"Response with id {shorten(repr(responseId))} not found: the response store"
                " is off on this server (--store none)",
                "response_not_found",
            )
        found = await store.get(RESPONSES, responseId)
        if found is None:
            raise notFound(
                f"Response with id {shorten(repr(responseId))} not found.", "response_not_found"
            )
        document: dict[str, Any] = found.document
        return document

    @app.route("/v1/responses/<string:responseId>", methods=["GET"])
    @observedRoute("responses", "/v1/responses/{id}")
    async def retrieve(self, request: IRequest, responseId: str) -> bytes:
        """
        A stored response object.
        """
        document = await self._stored(principalOf(request), responseId)
        request.setHeader(b"content-type", _JSON)
        return _dumps(document["response"])

    @app.route("/v1/responses/<string:responseId>", methods=["DELETE"])
    @observedRoute("responses", "/v1/responses/{id}")
    async def delete(self, request: IRequest, responseId: str) -> bytes:
        """
        Forget a stored response and everything that belongs to it: its
        output items and the hidden turns of the calls it handed back, in
        one transaction.
        """
        principal = principalOf(request)
        document = await self._stored(principal, responseId)
        store = self._owned(principal)
        assert store is not None
        output = document["response"]["output"]
        await store.deleteEntries(
            [
                (RESPONSES, responseId),
                *((ITEMS, item["id"]) for item in output),
                *(
                    (TURNS, item["call_id"])
                    for item in output
                    if item.get("type") == "function_call"
                ),
            ]
        )
        request.setHeader(b"content-type", _JSON)
        return _dumps({"id": responseId, "object": "response", "deleted": True})

    @app.route("/v1/responses/<string:responseId>/input_items", methods=["GET"])
    @observedRoute("responses", "/v1/responses/{id}/input_items")
    async def inputItems(self, request: IRequest, responseId: str) -> bytes:
        """
        A stored response's own input items, a page at a time (C{limit},
        C{order}, C{after}).
        """
        args = request.args
        limitText = (args.get(b"limit") or [b"20"])[0].decode("ascii", "replace")
        if re.fullmatch("[0-9]{1,3}", limitText) is None or not 1 <= int(limitText) <= 100:
            raise invalidRequest("'limit' must be an integer from 1 to 100", "limit")
        order = (args.get(b"order") or [b"desc"])[0].decode("ascii", "replace")
        if order not in ("asc", "desc"):
            raise invalidRequest("'order' must be asc or desc", "order", "invalid_value")
        after = (args.get(b"after") or [None])[0]
        document = await self._stored(principalOf(request), responseId)
        items: list[dict[str, Any]] = list(document["input"])
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [item.get("id") for item in items]
            key = after.decode("utf-8", "replace")
            items = items[ids.index(key) + 1 :] if key in ids else []
        page = items[: int(limitText)]
        request.setHeader(b"content-type", _JSON)
        return _dumps(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(items) > len(page),
            }
        )


__all__ = [
    "HOSTED_IGNORE",
    "HOSTED_POLICIES",
    "HOSTED_REFUSE",
    "HOSTED_TOOL_PATTERN",
    "HOSTED_TOOL_TYPES",
    "IGNORED_TOOLS_HEADER",
    "ITEMS",
    "ResponsesEncoder",
    "ResponsesHeadend",
    "ResponsesRequest",
    "ResponsesRequestBody",
    "conversation",
    "isHostedTool",
    "namespacedName",
    "parseResponsesRequest",
]
