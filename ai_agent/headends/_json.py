# -*- test-case-name: tests.test_headend_responses,tests.test_headend_anthropic -*-
"""
What the headends need to know to write JSON with orjson: it writes text,
integers, booleans, null, lists and objects with string keys exactly as
C{json.dumps(ensure_ascii=False, separators=(",", ":"))} does, but not
every float (C{1e-7}, not C{1e-07}; C{null} for C{NaN}).
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def holdsFloat(value: Any) -> bool:
    """
    Whether C{value} may hold something orjson writes otherwise than json:
    a float anywhere, or a type other than text, integers, booleans, null,
    lists, tuples and objects (walked without recursion).
    """
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is float:
            return True
        if kind is dict:
            stack.extend(item.values())
        elif kind is list or kind is tuple:
            stack.extend(item)
        elif kind not in _PLAIN_TYPES:
            # Something else (a subclass, say): json says how it is written.
            return True
    return False


_PLAIN_TYPES = frozenset({str, int, bool, type(None)})


def dumps(value: Any) -> bytes:
    """
    C{value} as compact JSON in UTF-8, with json (a lone surrogate, which
    has no UTF-8 form, written as C{?}).
    """
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")


def dumpsPlain(value: Any) -> bytes:
    """
    L{dumps} for a value holding no float, with orjson (the same bytes; a
    lone surrogate makes orjson refuse, and L{dumps} write it).
    """
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return dumps(value)


def dumpsAny(value: Any) -> bytes:
    """
    L{dumps}, with orjson when C{value} holds no float (orjson writes some
    floats differently).
    """
    return dumps(value) if holdsFloat(value) else dumpsPlain(value)


__all__ = ["dumps", "dumpsAny", "dumpsPlain", "holdsFloat"]
