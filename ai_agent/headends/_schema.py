# -*- test-case-name: tests.test_schema_agreement,tests.test_headend_openai -*-
"""
Request bodies as typed schemas: one definition (C{msgspec} types) gives the
validation, the C{param} of each refusal and the C{/openapi.json} component.

A body first passes the hostile-input pre-scan and parse of
L{loadBody<ai_agent.headends._request.loadBody>}; its value is then
converted to the API's request type by L{convertBody}, whose refusals are
400 C{invalid_request_error}s in the project's words, naming the field at
fault as C{param} (C{messages[0].content}, msgspec's C{$.messages[0].content}).
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Mapping, Sequence, TypeVar

import msgspec

from ai_agent.errors import AgentError, invalidRequest

T = TypeVar("T")

#: A message about one field, given its C{param} and the client's value
#: there: the words a test or client relies on, for refusals msgspec words
#: otherwise.
Override = Callable[[str, Any], AgentError]

_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")
_EXPECTED = re.compile(r"^Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`$")
_BOUND = re.compile(r"^Expected `(?P<want>[^`]+)` (?P<rule>.+)$")
_INVALID = re.compile(r"^Invalid (?:enum )?value (?P<value>.+)$")
_NAMES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "array": "an array",
    "object": "an object",
    "null": "null",
}
_NOUNS = {"str": "a string", "int": "a number", "float": "a number", "bool": "a boolean"}
_NOUNS.update({"array": "an array", "object": "an object", "null": "null"})

#: A tool's name (OpenAI's and Anthropic's rule).  msgspec matches a
#: pattern with Python's C{re.search}, whose C{$} also matches before a final
#: newline: the lookahead refuses C{"a\\n"} there, and is a no-op for the
#: JSON Schema validators reading C{/openapi.json} (ECMA-262's C{$} is the end).
TOOL_NAME_PATTERN = "^[A-Za-z0-9_-]{1,64}(?!\\n)$"


def _param(path: str) -> str:
    return path[1:] if path.startswith(".") else path


def valueAt(data: Any, param: str) -> Any:
    """
    The client's value at C{param} (C{messages[0].content}), or L{None}.
    """
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", param):
        try:
            data = data[int(index)] if index else data[name]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _describe(want: str) -> str:
    # A null is the same as leaving the field out: not an alternative to name.
    alternatives = [
        _NAMES.get(part.strip(), part.strip()) for part in want.split("|") if part.strip() != "null"
    ]
    return " or ".join(alternatives)


def anthropicWords(error: msgspec.ValidationError, data: Any) -> AgentError:
    """
    msgspec's refusal in the words of Anthropic's API: C{param: reason},
    no C{code}.
    """
    param, reason, missing = locate(error)
    value = valueAt(data, param)
    if missing or (reason.endswith("got `null`") and not param.endswith("]")):
        return invalidRequest(f"{param}: Field required", param)
    expected = _EXPECTED.match(reason)
    if expected is not None:
        got = _NOUNS.get(expected.group("got"), expected.group("got"))
        return invalidRequest(
            f"{param}: must be {_describe(expected.group('want'))}, not {got}", param or None
        )
    if _INVALID.match(reason) is not None:
        return invalidRequest(f"{param}: invalid value {_show(value)}", param)
    bound = _BOUND.match(reason)
    if bound is not None:
        want, rule = bound.group("want"), bound.group("rule")
        if want == "array" and "<=" in rule:
            count = len(value) if isinstance(value, list) else "too many"
            return invalidRequest(
                f"{param}: {count} items; at most {rule.rsplit(' ', 1)[-1]} are allowed", param
            )
        return invalidRequest(
            f"{param}: must be {_NAMES.get(want, want)} {rule}, got {_show(value)}", param
        )
    return invalidRequest(f"{param}: {reason}", param or None)


def locate(error: msgspec.ValidationError) -> tuple[str, str, bool]:
    """
    The C{param} of msgspec's refusal, its reason, and whether the reason
    is a missing field (whose name the C{param} then ends with).
    """
    text = str(error)
    at = _AT.search(text)
    path = at.group("path") if at else ""
    reason = text[: at.start()] if at else text
    missing = _MISSING.match(reason)
    if missing is not None:
        field = missing.group("field")
        return (f"{_param(path)}.{field}" if path else field), reason, True
    return _param(path), reason, False


def translate(
    error: msgspec.ValidationError,
    data: Any,
    overrides: Mapping[str, Override] = {},
    words: Callable[[msgspec.ValidationError, Any], AgentError] | None = None,
) -> AgentError:
    """
    msgspec's refusal as the project's 400: C{param} from its path, the
    words from its rule (or from C{overrides}, by C{param}, with any
    C{[n]} index written C{[]}).
    """
    text = str(error)
    at = _AT.search(text)
    path = at.group("path") if at else ""
    reason = text[: at.start()] if at else text
    missing = _MISSING.match(reason)
    if missing is not None:
        field = missing.group("field")
        param = f"{_param(path)}.{field}" if path else field
    else:
        param = _param(path)
    override = overrides.get(re.sub(r"\[\d+\]", "[]", param))
    value = valueAt(data, param)
    if override is not None:
        return override(param, value)
    if words is not None:
        return words(error, data)
    if missing is not None:
        if not path:
            return invalidRequest(
                f"you must provide a {param} parameter", param, "missing_required_parameter"
            )
        return invalidRequest(f"'{param}' is required", param, "missing_required_parameter")
    expected = _EXPECTED.match(reason)
    if expected is not None and expected.group("got") == "null" and not param.endswith("]"):
        # A null field is a field not given (an array's null item is not).
        if "." not in param and "[" not in param:
            return invalidRequest(
                f"you must provide a {param} parameter", param, "missing_required_parameter"
            )
        return invalidRequest(f"'{param}' is required", param, "missing_required_parameter")
    if expected is not None:
        got = _NOUNS.get(expected.group("got"), expected.group("got"))
        return invalidRequest(
            f"'{param}' must be {_describe(expected.group('want'))}, not {got}",
            param or None,
            "invalid_type",
        )
    invalid = _INVALID.match(reason)
    if invalid is not None:
        return invalidRequest(
            f"'{param}' has an unsupported value, got {_show(value)}", param, "invalid_value"
        )
    bound = _BOUND.match(reason)
    if bound is not None:
        want, rule = bound.group("want"), bound.group("rule")
        if want == "array" and "<=" in rule:
            limit = rule.rsplit(" ", 1)[-1]
            return invalidRequest(
                f"'{param}' holds {len(value) if isinstance(value, list) else 'too many'}"
                f" items; at most {limit} are allowed",
                param,
                "array_above_max_length",
            )
        if want == "array" and ">= 1" in rule:
            return invalidRequest(f"'{param}' must not be empty", param, "empty_array")
        if want == "str" and rule == "of length >= 1":
            return invalidRequest(f"'{param}' must be a non-empty string", param, "invalid_type")
        return invalidRequest(
            f"'{param}' must be {_NAMES.get(want, want)} {rule}, got {_show(value)}",
            param,
            "invalid_value",
        )
    return invalidRequest(f"'{param}': {reason}", param or None, "invalid_value")


def convertBody(
    data: Any,
    kind: type[T],
    overrides: Mapping[str, Override] = {},
    words: Callable[[msgspec.ValidationError, Any], AgentError] | None = None,
) -> T:
    """
    C{data} (a parsed body) as a C{kind}, or the 400 that says why not:
    in the words of C{overrides} for its C{param}, else of C{words} (by
    default, OpenAI's style: C{'param' must be ...}).
    """
    try:
        return msgspec.convert(data, kind, strict=True)
    except msgspec.ValidationError as error:
        raise translate(error, data, overrides, words) from None


def schemaComponents(kinds: Sequence[type]) -> dict[str, Any]:
    """
    The JSON Schema components of C{kinds} and every type they name, each
    referenced as C{#/components/schemas/<name>}.
    """
    _, components = msgspec.json.schema_components(
        kinds, ref_template="#/components/schemas/{name}"
    )
    return components


__all__ = [
    "TOOL_NAME_PATTERN",
    "Override",
    "anthropicWords",
    "convertBody",
    "locate",
    "schemaComponents",
    "translate",
    "valueAt",
]
