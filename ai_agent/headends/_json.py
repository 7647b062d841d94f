# -*- test-case-name: tests.test_headend_responses,tests.test_headend_anthropic -*-
"""
The one JSON writer of every API and every error envelope.

orjson writes text, integers, booleans, null, lists and objects with string
keys exactly as C{json.dumps(ensure_ascii=False, separators=(",", ":"))}
does, and the floats of everyday values too (zero, and those from 1e-4 up
to 1e16, where both write the shortest decimal that reads back as the same
number), but not the others (C{1e-7}, not C{1e-07}; C{0.00001}, not
C{1e-05}; C{null} for C{NaN}), and
it refuses a lone surrogate (text with no UTF-8 form, from a model's
answer, say): that is written as U+FFFD, the replacement character a client
can display, by every API, streamed or whole.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson


def holdsFloat(value: Any) -> bool:
    """
    Whether C{value} may hold something orjson writes otherwise than json:
    a float other than zero below 1e-4 or from 1e16 on (by magnitude), one
    that is not finite, or a type other than text, integers, floats,
    booleans, null, lists, tuples and objects (walked without recursion).

    (A response object's C{temperature} and C{top_p}, C{1.0}, are written
    by orjson: json's encoder costs ten times orjson's.)
    """
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is float:
            if not (item == 0.0 or 1e-4 <= abs(item) < 1e16):
                return True
        elif kind is dict:
            stack.extend(item.values())
        elif kind is list or kind is tuple:
            stack.extend(item)
        elif kind not in _PLAIN_TYPES:
            # Something else (a subclass, say): json says how it is written.
            return True
    return False


_PLAIN_TYPES = frozenset({str, int, bool, type(None)})


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def dumps(value: Any) -> bytes:
    """
    C{value} as compact JSON in UTF-8, with json (a lone surrogate, which
    has no UTF-8 form, written as U+FFFD).
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _LONE_SURROGATE.sub("\ufffd", text).encode("utf-8")


def dumpsPlain(value: Any) -> bytes:
    """
    L{dumps} for a value holding no float orjson writes otherwise (see
    L{holdsFloat}), with orjson (the same bytes; a
    lone surrogate or an integer past 64 bits makes orjson refuse, and
    L{dumps} write it).
    """
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return dumps(value)


def dumpsAny(value: Any) -> bytes:
    """
    L{dumps}, with orjson when C{value} holds no float orjson writes
    otherwise (L{holdsFloat}).
    """
    return dumps(value) if holdsFloat(value) else dumpsPlain(value)


__all__ = ["dumps", "dumpsAny", "dumpsPlain", "holdsFloat"]
