# -*- test-case-name: tests.test_headend_request -*-
"""
Parsing and validating a Chat Completions request body at the edge.

Every mistake becomes a 400 C{invalid_request_error} whose C{param} names
the field; fields this server does not use are ignored, never rejected,
because clients send many.
"""

from __future__ import annotations

import json
import math
from typing import Any

import attrs

from ai_agent.errors import AgentError, invalidRequest
from ai_agent.providers import ChatMessage, ToolCall
from ai_agent.session import Sampling

MAX_MESSAGES = 2048
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


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


def parseChatRequest(body: bytes) -> ChatRequest:
    """
    Parse and validate a request body.

    @raise AgentError: a 400 naming the offending C{param}.
    """
    try:
        data = json.loads(body, parse_constant=_rejectConstant)
    except RecursionError:
        raise invalidRequest(
            "the request body is nested too deeply", code="invalid_json"
        ) from None
    except (ValueError, UnicodeDecodeError) as error:
        raise invalidRequest(
            f"the request body is not valid JSON: {error}", code="invalid_json"
        ) from None
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
    if maxTokens is not None and maxTokens < 1:
        raise invalidRequest(f"'{maxParam}' must be at least 1", maxParam, "invalid_value")
    seed = _optional(data, "seed", int, None)
    stop = _parseStop(data.get("stop"))
    user = _optional(data, "user", str, None)
    return ChatRequest(
        model=model,
        messages=messages,
        stream=stream,
        includeUsage=includeUsage,
        sampling=Sampling(temperature, topP, maxTokens, stop, seed),
        user=user,
    )


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
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        if len(value) > 4:
            raise invalidRequest("'stop' may hold at most 4 sequences", "stop", "invalid_value")
        return tuple(value)
    raise invalidRequest("'stop' must be a string or an array of strings", "stop", "invalid_type")


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
    return tuple(_parseMessage(item, f"messages[{index}]") for index, item in enumerate(value))


def _parseMessage(item: Any, where: str) -> ChatMessage:
    if not isinstance(item, dict):
        raise invalidRequest(
            f"'{where}' must be an object, not {_typeName(item)}", where, "invalid_type"
        )
    role = item.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        raise invalidRequest(
            f"'{where}.role' must be one of {', '.join(sorted(_ROLES))}, got {json.dumps(role)}",
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
                    f"'{partWhere}' is a {json.dumps(kind)} part; agents here take text parts only",
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


__all__ = ["AgentError", "ChatRequest", "MAX_MESSAGES", "parseChatRequest"]
