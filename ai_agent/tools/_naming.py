# -*- test-case-name: tests.test_tools -*-
"""
How tools are named for the model: C{<namespace>__<tool>}.
"""

from __future__ import annotations

import hashlib
import re

MAX_TOOL_NAME = 64
"""
The longest function name OpenAI-compatible APIs accept.
"""

_INVALID = re.compile(r"[^A-Za-z0-9_-]")


def toolName(namespace: str, name: str) -> str:
    """
    The name a tool is offered to the model under: C{namespace__name}, with
    every character other than letters, digits, C{_} and C{-} replaced by
    C{_}, and clamped to L{MAX_TOOL_NAME} characters (a long name keeps its
    start and gets a short hash of the whole name, so that it stays unique).
    """
    full = _INVALID.sub("_", f"{namespace}__{name}")
    if len(full) <= MAX_TOOL_NAME:
        return full
    digest = hashlib.sha1(full.encode("utf-8")).hexdigest()[:8]
    return f"{full[: MAX_TOOL_NAME - 9]}_{digest}"


__all__ = ["MAX_TOOL_NAME", "toolName"]
