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
L{OFF_REACTOR_THRESHOLD} bytes or more are parsed in a thread pool by
L{parseChatRequestOffReactor}.
"""

from __future__ import annotations

import json
import math
import re
from array import array
from itertools import accumulate
from typing import Any, Callable, Iterator, TypeVar

import attrs
import orjson
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from ai_agent.accounting import RunLabels
from ai_agent.errors import AgentError, invalidRequest
from ai_agent.providers import ChatMessage, ToolCall, ToolSpec
from ai_agent.redaction import shorten
from ai_agent.request import ClientTool, OutputFormat, RunRequest, Sampling, ToolChoice

_T = TypeVar("_T")

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


def parseChatRequest(body: bytes) -> ChatRequest:
    """
    Parse and validate a request body.

    @raise AgentError: a 400 naming the offending C{param}.
    """
    data = _loads(body)
    if not isinstance(data, dict):
        raise invalidRequest(
            f"the request body must be a JSON object, not {_typeName(data)}", code="invalid_json"
        )
    model = data.get("model")
    if model is None:
        raise invalidRequest(
            "you must provide a model parameter", "model", "missing_required_parameter"
        )
    if not isinstance(model, str) or not model:
        raise invalidRequest("'model' must be a non-empty string", "model", "invalid_type")
    messages = _parseMessages(data.get("messages"))
    stream = _optional(data, "stream", bool, False)
    includeUsage = False
    options = data.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise invalidRequest(
                "'stream_options' must be an object", "stream_options", "invalid_type"
            )
        includeUsage = _optional(
            options, "include_usage", bool, False, "stream_options.include_usage"
        )
    n = _optional(data, "n", int, 1)
    if n != 1:
        raise invalidRequest(
            "only n=1 is supported: an agent gives one answer", "n", "unsupported_value"
        )
    temperature = _number(data, "temperature", 0.0, 2.0)
    topP = _number(data, "top_p", 0.0, 1.0)
    maxTokens = _optional(data, "max_completion_tokens", int, None)
    if maxTokens is None:
        maxTokens = _optional(data, "max_tokens", int, None)
        maxParam = "max_tokens"
    else:
        maxParam = "max_completion_tokens"
    if maxTokens is not None and not 1 <= maxTokens <= MAX_OUTPUT_TOKENS:
        raise invalidRequest(
            f"'{maxParam}' must be between 1 and {MAX_OUTPUT_TOKENS}, got {_show(maxTokens)}",
            maxParam,
            "invalid_value",
        )
    seed = _optional(data, "seed", int, None)
    stop = _parseStop(data.get("stop"))
    user = _optional(data, "user", str, None)
    tools = parseFunctionTools(data.get("tools"))
    toolChoice = parseToolChoice(data.get("tool_choice"), tools)
    parallel = _optional(data, "parallel_tool_calls", bool, None)
    responseFormat = _parseResponseFormat(data.get("response_format"))
    return ChatRequest(
        model=model,
        messages=messages,
        stream=stream,
        includeUsage=includeUsage,
        sampling=Sampling(temperature, topP, maxTokens, stop, seed, responseFormat),
        user=user,
        tools=tools,
        toolChoice=toolChoice,
        parallelToolCalls=parallel,
    )


def _parseResponseFormat(value: Any) -> OutputFormat | None:
    """
    A client's C{response_format}: C{text} (the default: L{None}),
    C{json_object}, or C{json_schema} with a C{name} and an object
    C{schema}.
    """
    param = "response_format"
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalidRequest(f"'{param}' must be an object", param, "invalid_type")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return OutputFormat()
    if kind != "json_schema":
        raise invalidRequest(
            f"'{param}.type' must be one of text, json_object, json_schema",
            f"{param}.type",
            "invalid_value",
        )
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise invalidRequest(
            f"'{param}.json_schema' must be an object", f"{param}.json_schema", "invalid_type"
        )
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise invalidRequest(
            f"'{param}.json_schema.name' must be a non-empty string",
            f"{param}.json_schema.name",
            "invalid_type",
        )
    schema = spec.get("schema", {})
    if not isinstance(schema, dict):
        raise invalidRequest(
            f"'{param}.json_schema.schema' must be an object",
            f"{param}.json_schema.schema",
            "invalid_type",
        )
    description = _optional(spec, "description", str, None, f"{param}.json_schema.description")
    strict = _optional(spec, "strict", bool, None, f"{param}.json_schema.strict")
    return OutputFormat(schema, name, description, strict)


def parseOffReactor(
    parse: Callable[[bytes], _T],
    body: bytes,
    reactor: IReactorFromThreads,
    threadpool: ThreadPool,
    threshold: int = OFF_REACTOR_THRESHOLD,
) -> Deferred[_T]:
    """
    C{parse(body)}, run in C{threadpool} when C{body} is at least
    C{threshold} bytes long so that a large body does not hold up the
    reactor; a smaller one is parsed at once.  Every API's parser goes
    through here.

    Cancelling the result stops waiting for the thread (which finishes its
    parse and is ignored).

    @return: fires with what C{parse} returns, or fails with the 400
        L{AgentError} it raises.
    """
    if len(body) < threshold:
        try:
            return succeed(parse(body))
        except AgentError:
            return fail()
    result: Deferred[_T] = Deferred(canceller=_abandon)

    def done(outcome: _T | Failure) -> None:
        if not result.called:
            result.callback(outcome)

    deferToThreadPool(reactor, threadpool, parse, body).addBoth(done)
    return result


def parseChatRequestOffReactor(
    body: bytes,
    reactor: IReactorFromThreads,
    threadpool: ThreadPool,
    threshold: int = OFF_REACTOR_THRESHOLD,
) -> Deferred[ChatRequest]:
    """
    L{parseChatRequest} through L{parseOffReactor}.
    """
    return parseOffReactor(parseChatRequest, body, reactor, threadpool, threshold)


def _abandon(result: Deferred[Any]) -> None:
    """
    A thread cannot be stopped: a cancelled parse is left to finish, and
    L{Deferred.cancel} fails C{result} with L{CancelledError} at once.
    """


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


#: What a tool's name may be (OpenAI's rule).
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def parseFunctionTools(value: Any, nested: bool = True) -> tuple[ClientTool, ...]:
    """
    C{tools}: at most L{MAX_TOOLS} function tools, each with a name of
    letters, digits, C{_} and C{-} (at most 64), names unique, an optional
    description and JSON-schema C{parameters} object; any other tool type
    is refused, naming it.

    @param nested: the function is under C{function} (Chat Completions,
        where C{type} may be left out), or flat in the tool (the Responses
        API, where C{type} is required).
    """
    if value is None:
        return ()
    if not isinstance(value, list):
        raise invalidRequest(
            f"'tools' must be an array, not {_typeName(value)}", "tools", "invalid_type"
        )
    if len(value) > MAX_TOOLS:
        raise invalidRequest(
            f"'tools' holds {len(value)} items; at most {MAX_TOOLS} are allowed",
            "tools",
            "array_above_max_length",
        )
    tools: list[ClientTool] = []
    names: set[str] = set()
    for index, tool in enumerate(value):
        where = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise invalidRequest(
                f"'{where}' must be an object, not {_typeName(tool)}", where, "invalid_type"
            )
        kind = tool.get("type", "function" if nested else None)
        if kind != "function":
            raise invalidRequest(
                f"'{where}.type' is {_show(kind)}; only function tools are supported"
                " (hosted tools are not available here)",
                f"{where}.type",
                "unsupported_tool_type",
            )
        function: Any = tool
        functionWhere = where
        if nested:
            function, functionWhere = tool.get("function"), f"{where}.function"
            if not isinstance(function, dict):
                raise invalidRequest(
                    f"'{functionWhere}' must be an object", functionWhere, "invalid_type"
                )
        spec = functionSpec(function, functionWhere)
        if spec.name in names:
            raise invalidRequest(
                f"'{functionWhere}.name' repeats the tool name {spec.name!r}",
                f"{functionWhere}.name",
                "duplicate_tool_name",
            )
        names.add(spec.name)
        tools.append(ClientTool(spec, f"{functionWhere}.name"))
    return tuple(tools)


def functionSpec(function: dict[str, Any], where: str) -> ToolSpec:
    """
    A client's function definition (C{name}, C{description},
    C{parameters}) as a L{ToolSpec}; C{where} is its path, for errors.
    """
    name = function.get("name")
    if not isinstance(name, str) or TOOL_NAME.fullmatch(name) is None:
        raise invalidRequest(
            f"'{where}.name' must be 1 to 64 letters, digits, '_' or '-', got {_show(name)}",
            f"{where}.name",
            "invalid_value",
        )
    description = _optional(function, "description", str, None, f"{where}.description")
    # Accepted and not used: the agent's providers get the schema as given.
    _optional(function, "strict", bool, None, f"{where}.strict")
    parameters = function.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise invalidRequest(
            f"'{where}.parameters' must be a JSON Schema object",
            f"{where}.parameters",
            "invalid_type",
        )
    return ToolSpec(name, description or "", parameters)


def parseToolChoice(value: Any, tools: tuple[ClientTool, ...], nested: bool = True) -> ToolChoice:
    """
    C{tool_choice}: C{none}, C{auto}, C{required}, or a function by a name
    among C{tools}: C{{"type": "function", "function": {"name": …}}} when
    C{nested} (Chat Completions), C{{"type": "function", "name": …}} when
    not (the Responses API).
    """
    if value is None:
        return ToolChoice()
    if isinstance(value, str):
        if value in (ToolChoice.NONE, ToolChoice.AUTO, ToolChoice.REQUIRED):
            return ToolChoice(value)
        raise invalidRequest(
            f"'tool_choice' must be none, auto, required or a function, got {_show(value)}",
            "tool_choice",
            "invalid_value",
        )
    if not isinstance(value, dict):
        raise invalidRequest(
            f"'tool_choice' must be a string or an object, not {_typeName(value)}",
            "tool_choice",
            "invalid_type",
        )
    holder = value.get("function") if nested else value
    name = holder.get("name") if isinstance(holder, dict) else None
    example = (
        '{"type": "function", "function": {"name": ...}}'
        if nested
        else '{"type": "function", "name": ...}'
    )
    if value.get("type") != "function" or not isinstance(name, str):
        raise invalidRequest(
            f"'tool_choice' must be none, auto, required or {example}",
            "tool_choice",
            "invalid_value",
        )
    param = "tool_choice.function.name" if nested else "tool_choice.name"
    if name not in {tool.spec.name for tool in tools}:
        raise invalidRequest(
            f"'{param}' names {_show(name)}, which is not in 'tools'", param, "invalid_value"
        )
    return ToolChoice(ToolChoice.TOOL, name)


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


def _optional(
    data: dict[str, Any], key: str, kind: type, default: Any, param: str | None = None
) -> Any:
    value = data.get(key)
    if value is None:
        return default
    # bool is an int in Python; JSON keeps them apart.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = {bool: "a boolean", int: "an integer", str: "a string"}[kind]
        raise invalidRequest(
            f"'{param or key}' must be {expected}, not {_typeName(value)}",
            param or key,
            "invalid_type",
        )
    return value


def _number(data: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise invalidRequest(
            f"'{key}' must be a number, not {_typeName(value)}", key, "invalid_type"
        )
    if not low <= value <= high:
        raise invalidRequest(
            f"'{key}' must be between {low:g} and {high:g}, got {value}", key, "invalid_value"
        )
    return float(value)


def _parseStop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    elif not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalidRequest(
            "'stop' must be a string or an array of strings", "stop", "invalid_type"
        )
    elif len(value) > 4:
        raise invalidRequest("'stop' may hold at most 4 sequences", "stop", "invalid_value")
    for sequence in value:
        if len(sequence) > MAX_STOP_LENGTH:
            raise invalidRequest(
                f"'stop' sequences may be at most {MAX_STOP_LENGTH} characters long,"
                f" got {len(sequence)}",
                "stop",
                "invalid_value",
            )
    return tuple(value)


def _parseMessages(value: Any) -> tuple[ChatMessage, ...]:
    if value is None:
        raise invalidRequest(
            "you must provide a messages parameter", "messages", "missing_required_parameter"
        )
    if not isinstance(value, list):
        raise invalidRequest(
            f"'messages' must be an array, not {_typeName(value)}", "messages", "invalid_type"
        )
    if not value:
        raise invalidRequest("'messages' must not be empty", "messages", "empty_array")
    if len(value) > MAX_MESSAGES:
        raise invalidRequest(
            f"'messages' holds {len(value)} items; at most {MAX_MESSAGES} are allowed",
            "messages",
            "array_above_max_length",
        )
    messages = tuple(_parseMessage(item, f"messages[{index}]") for index, item in enumerate(value))
    _checkToolResults(messages)
    return messages


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


def _parseMessage(item: Any, where: str) -> ChatMessage:
    if not isinstance(item, dict):
        raise invalidRequest(
            f"'{where}' must be an object, not {_typeName(item)}", where, "invalid_type"
        )
    role = item.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        raise invalidRequest(
            f"'{where}.role' must be one of {', '.join(sorted(_ROLES))}, got {_show(role)}",
            f"{where}.role",
            "invalid_value",
        )
    name = _optional(item, "name", str, None, f"{where}.name")
    toolCalls = _parseToolCalls(item.get("tool_calls"), where) if role == "assistant" else ()
    content = _parseContent(item.get("content"), f"{where}.content", required=not toolCalls)
    toolCallId = None
    if role == "tool":
        toolCallId = item.get("tool_call_id")
        if not isinstance(toolCallId, str) or not toolCallId:
            raise invalidRequest(
                f"'{where}.tool_call_id' must be a non-empty string for a tool message",
                f"{where}.tool_call_id",
                "invalid_type",
            )
    return ChatMessage(role, content, name, toolCalls, toolCallId)


def _parseContent(value: Any, where: str, required: bool) -> str:
    if value is None:
        if required:
            raise invalidRequest(f"'{where}' is required", where, "missing_required_parameter")
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for index, part in enumerate(value):
            partWhere = f"{where}[{index}]"
            if isinstance(part, str):
                texts.append(part)
                continue
            if not isinstance(part, dict):
                raise invalidRequest(
                    f"'{partWhere}' must be an object, not {_typeName(part)}",
                    partWhere,
                    "invalid_type",
                )
            kind = part.get("type")
            if kind in ("text", "input_text", "output_text", "refusal"):
                text = part.get("text", part.get("refusal"))
                if not isinstance(text, str):
                    raise invalidRequest(
                        f"'{partWhere}.text' must be a string", f"{partWhere}.text", "invalid_type"
                    )
                texts.append(text)
            else:
                raise invalidRequest(
                    f"'{partWhere}' is a {_show(kind)} part; agents here take text parts only",
                    partWhere,
                    "unsupported_content_type",
                )
        return "\n".join(texts)
    raise invalidRequest(
        f"'{where}' must be a string or an array of content parts, not {_typeName(value)}",
        where,
        "invalid_type",
    )


def _parseToolCalls(value: Any, where: str) -> tuple[ToolCall, ...]:
    if value is None:
        return ()
    param = f"{where}.tool_calls"
    if not isinstance(value, list):
        raise invalidRequest(f"'{param}' must be an array", param, "invalid_type")
    calls = []
    for index, call in enumerate(value):
        callWhere = f"{param}[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise invalidRequest(
                f"'{callWhere}.function' must be an object", f"{callWhere}.function", "invalid_type"
            )
        callId = call.get("id")
        fname = function.get("name")
        arguments = function.get("arguments", "")
        if (
            not isinstance(callId, str)
            or not isinstance(fname, str)
            or not isinstance(arguments, str)
        ):
            raise invalidRequest(
                f"'{callWhere}' needs a string id, function.name and function.arguments",
                callWhere,
                "invalid_type",
            )
        calls.append(ToolCall(callId, fname, arguments))
    return tuple(calls)


def headerLookup(request: Any) -> Callable[[bytes], bytes | None]:
    """
    What C{request.getHeader} answers (a header's last value, or L{None}),
    for a lowercase name, from one pass over the request's headers: for
    asking about many headers a request mostly does not carry.
    """
    last = {name.lower(): values[-1] for name, values in request.requestHeaders.getAllRawHeaders()}
    return last.get


#: The body checks every API's parser shares (see L{_loads}, L{_optional},
#: L{_number}, L{_typeName}, L{_show}).
loadBody = _loads
optionalField = _optional
numberField = _number
typeName = _typeName
showValue = _show


__all__ = [
    "AgentError",
    "ChatRequest",
    "TOOL_NAME",
    "functionSpec",
    "headerLookup",
    "parseFunctionTools",
    "parseToolChoice",
    "loadBody",
    "numberField",
    "optionalField",
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
    "parseChatRequestOffReactor",
    "parseOffReactor",
]
