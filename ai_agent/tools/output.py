# -*- test-case-name: tests.test_tool_output -*-
"""
Tool-output handles: a tool result larger than the agent's
C{toolResponseMaxBytes} is kept aside for the run's life, and the model gets
a handle with the head of the text instead of a cut result.  The
C{tool_output} tool (named as in the TypeScript ai-agent) reads it back:

  - C{read}: a range, by characters (C{offset}, C{length}) or by lines
    (C{startLine}, C{lineCount});
  - C{grep}: the lines matching a regular expression (C{pattern}), bounded
    in matches, in the text scanned per call and in pattern cost;
  - C{truncate}: the top and the bottom of the text;
  - C{auto} / C{full-chunked} (with C{extract}): an extraction pass, in
    which the agent's own models (or C{toolOutput.models}) read the text
    chunk by chunk and return only what C{extract} asks for.

Results are kept in this process's memory, in a L{RunOutputs} made for one
run and dropped with it: a handle is 122 random bits, and one run's handle
is unknown to any other run ("not found").  A run lives in one process, so
the run store (shared across processes) is not needed for what lives no
longer than the run.

Bounds: one kept result at most L{MAX_KEPT_RESULT} bytes, a run's kept
results at most L{MAX_KEPT_RUN}; past either, the result is cut as without
handles, with a note saying why.  Every C{tool_output} answer is cut at the
agent's C{toolResponseMaxBytes} too, saying where to continue.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Awaitable, Callable, Mapping

import attrs
import regex

from ai_agent.agentfile import ToolOutputSpec
from ai_agent.events import EventSink, ExtractionProgress
from ai_agent.providers import ChatMessage, ToolSpec

TOOL_OUTPUT = "tool_output"
"""
The tool's name, as the TypeScript ai-agent names it.
"""

MAX_KEPT_RESULT = 16 * 1024 * 1024
"""
The largest tool result kept behind a handle, in bytes (UTF-8).
"""

MAX_KEPT_RUN = 64 * 1024 * 1024
"""
The most bytes of tool results one run keeps.
"""

HEAD_BYTES = 2048
"""
How much of a kept result the model sees with its handle (at most half the
agent's C{toolResponseMaxBytes}).
"""

MAX_PATTERN = 500
"""
The longest C{grep} pattern accepted, in characters.
"""

MAX_GREP_SCAN = 4 * 1024 * 1024
"""
The most characters one C{grep} call scans; it says where to continue.
"""

MAX_GREP_LINE = 10000
"""
Characters of each line a C{grep} pattern is matched against (the rest of
a longer line is not searched).
"""

MAX_GREP_SECONDS = 1.0
"""
The longest one C{grep} call matches: the C{regex} module's timeout bounds
each match (Python's own C{re} has none), so a pattern that backtracks
without end is stopped there, and the call says where it stopped.
"""

DEFAULT_MATCHES = 50
MAX_MATCHES = 200

EXTRACTION_CHUNK = 48 * 1024
"""
Characters of the kept text one extraction call reads.
"""

EXTRACTION_MAX_TOKENS = 1024
"""
The output token limit of each extraction call.
"""

MODES = ("auto", "full-chunked", "read-grep", "truncate", "read", "grep")

EXTRACTION_PROMPT = (
    "You extract information from the output of a tool for another agent."
    " Return only what the request asks for, quoting exact values (names,"
    " numbers, lines) from the output; say 'nothing relevant' when this part"
    " of the output holds nothing that was asked.  Do not add commentary."
)

TOOL_OUTPUT_SPEC = ToolSpec(
    TOOL_OUTPUT,
    "Read a tool result that was too large to show, by the handle given with it:"
    " 'read' a range (offset/length in characters, or startLine/lineCount),"
    " 'grep' the lines matching a regular expression, 'truncate' (top and bottom),"
    " or 'auto' to have a model extract what 'extract' asks for.",
    {
        "type": "object",
        "properties": {
            "handle": {
                "type": "string",
                "description": "The handle given with the result (tool_output(handle = ...)).",
            },
            "extract": {
                "type": "string",
                "description": "What you need from the output, precisely (modes auto and"
                " full-chunked).",
            },
            "mode": {"type": "string", "enum": list(MODES)},
            "offset": {"type": "integer", "minimum": 0},
            "length": {"type": "integer", "minimum": 1},
            "startLine": {"type": "integer", "minimum": 1},
            "lineCount": {"type": "integer", "minimum": 1},
            "pattern": {"type": "string", "description": "A regular expression (mode grep)."},
            "maxMatches": {"type": "integer", "minimum": 1, "maximum": MAX_MATCHES},
        },
        "required": ["handle"],
        "additionalProperties": False,
    },
)


Extractor = Callable[[list[ChatMessage]], Awaitable[str]]
"""
One extraction call: the messages in, the model's answer out.
"""


class ToolOutputError(Exception):
    """
    A C{tool_output} call the model got wrong; the message says how.
    """


@attrs.frozen
class _Kept:
    tool: str
    text: str
    size: int

    @property
    def lines(self) -> list[str]:
        return self.text.split("\n")


@attrs.define(eq=False)
class RunOutputs:
    """
    The tool results one run keeps behind handles.

    @ivar spec: the agent's C{toolOutput}.
    @ivar limit: the agent's C{toolResponseMaxBytes}.
    """

    spec: ToolOutputSpec
    limit: int
    _kept: dict[str, _Kept] = attrs.field(factory=dict)
    _bytes: int = 0

    def __bool__(self) -> bool:
        """
        Whether any result is kept (the tool is offered only then).
        """
        return bool(self._kept)

    def result(self, tool: str, text: str) -> str:
        """
        What the model reads for a tool's result C{text}: the text itself
        when it fits C{limit}, else a handle and its head, else (over the
        bounds, or handles off) the text cut at C{limit} with a note.
        """
        encoded = text.encode("utf-8")
        size = len(encoded)
        if size <= self.limit:
            return text
        if not self.spec.enabled:
            return _cut(encoded, self.limit, "")
        if size > MAX_KEPT_RESULT:
            return _cut(
                encoded,
                self.limit,
                f"; results over {MAX_KEPT_RESULT} bytes are not kept for tool_output",
            )
        if self._bytes + size > MAX_KEPT_RUN:
            return _cut(
                encoded,
                self.limit,
                f"; this run already keeps {self._bytes} bytes of tool results"
                f" (at most {MAX_KEPT_RUN})",
            )
        handle = newHandle()
        self._kept[handle] = _Kept(tool, text, size)
        self._bytes += size
        lines = text.count("\n") + 1
        head = encoded[: min(HEAD_BYTES, self.limit // 2)].decode("utf-8", "ignore")
        return (
            f"Tool output is too large ({size} bytes, {lines} lines); it is kept as"
            f' handle "{handle}".\n'
            f'Call tool_output(handle = "{handle}", extract = "what to extract") to have'
            " it read for you, or read it yourself with mode 'read' (offset/length or"
            " startLine/lineCount) or 'grep' (pattern).\n"
            f"The first {len(head)} characters:\n{head}"
        )

    async def call(
        self, arguments: Mapping[str, Any], extractor: Extractor, events: EventSink
    ) -> str:
        """
        Run one C{tool_output} call.

        @raise ToolOutputError: for arguments the model got wrong (the
            session shows the message to the model).
        """
        handle = arguments.get("handle")
        if not isinstance(handle, str) or not handle.strip():
            raise ToolOutputError("tool_output needs the 'handle' given with the result")
        kept = self._kept.get(handle.strip())
        if kept is None:
            raise ToolOutputError(
                f"no kept tool output has the handle {handle.strip()!r} in this run"
            )
        mode = arguments.get("mode")
        if mode is not None and mode not in MODES:
            raise ToolOutputError(f"'mode' must be one of {', '.join(MODES)}")
        if mode is None or mode == "read-grep":
            if arguments.get("pattern") is not None:
                mode = "grep"
            elif _given(arguments, "offset", "length", "startLine", "lineCount"):
                mode = "read"
            elif mode is None and arguments.get("extract") is not None:
                mode = "auto"
            else:
                mode = "read"
        header = f"tool_output of {kept.tool} (handle {handle.strip()}, mode {mode}):\n"
        if mode == "read":
            body = self._read(kept, arguments)
        elif mode == "grep":
            body = _grep(kept, arguments)
        elif mode == "truncate":
            body = self._truncate(kept)
        else:
            body = await self._extract(kept, arguments, extractor, events)
        return self._capped(header, body)

    def _capped(self, header: str, body: str) -> str:
        text = header + body
        encoded = text.encode("utf-8")
        if len(encoded) <= self.limit:
            return text
        return _cut(encoded, self.limit, "; ask for a smaller range")

    def _read(self, kept: _Kept, arguments: Mapping[str, Any]) -> str:
        budget = max(self.limit - 256, 256)
        if _given(arguments, "startLine", "lineCount"):
            start = _integer(arguments, "startLine", 1, 1)
            count = _integer(arguments, "lineCount", 200, 1)
            lines = kept.lines
            if start > len(lines):
                return f"(the output has {len(lines)} lines)"
            chosen = lines[start - 1 : start - 1 + count]
            shown: list[str] = []
            used = 0
            for line in chosen:
                used += len(line.encode("utf-8")) + 1
                if used > budget and shown:
                    break
                shown.append(line)
            end = start + len(shown) - 1
            more = (
                f"\n[lines {start}-{end} of {len(lines)}; continue with startLine {end + 1}]"
                if end < len(lines)
                else f"\n[lines {start}-{end} of {len(lines)}: the end]"
            )
            return "\n".join(shown) + more
        offset = _integer(arguments, "offset", 0, 0)
        length = _integer(arguments, "length", budget, 1)
        total = len(kept.text)
        if offset >= total:
            return f"(the output has {total} characters)"
        piece = kept.text[offset : offset + length]
        while len(piece.encode("utf-8")) > budget:
            piece = piece[: len(piece) * 3 // 4]
        end = offset + len(piece)
        more = (
            f"\n[characters {offset}-{end} of {total}; continue with offset {end}]"
            if end < total
            else f"\n[characters {offset}-{end} of {total}: the end]"
        )
        return piece + more

    def _truncate(self, kept: _Kept) -> str:
        half = max((self.limit - 512) // 2, 128)
        encoded = kept.text.encode("utf-8")
        head = encoded[:half].decode("utf-8", "ignore")
        tail = encoded[-half:].decode("utf-8", "ignore")
        return f"{head}\n[... {len(encoded) - 2 * half} bytes left out ...]\n{tail}"

    async def _extract(
        self,
        kept: _Kept,
        arguments: Mapping[str, Any],
        extractor: Extractor,
        events: EventSink,
    ) -> str:
        request = arguments.get("extract")
        if not isinstance(request, str) or not request.strip():
            raise ToolOutputError(
                "modes auto and full-chunked need 'extract': what you need from the output"
            )
        offset = _integer(arguments, "offset", 0, 0)
        text = kept.text
        total = len(text)
        if offset >= total:
            return f"(the output has {total} characters)"
        step = max(EXTRACTION_CHUNK * (100 - self.spec.overlapPercent) // 100, 1)
        chunks: list[tuple[int, int]] = []
        start = offset
        while start < total and len(chunks) < self.spec.maxChunks:
            chunks.append((start, min(start + EXTRACTION_CHUNK, total)))
            if start + EXTRACTION_CHUNK >= total:
                break
            start += step
        answers: list[str] = []
        for number, (begin, end) in enumerate(chunks, 1):
            events(ExtractionProgress(kept.tool, number, len(chunks)))
            messages = [
                ChatMessage("system", EXTRACTION_PROMPT),
                ChatMessage(
                    "user",
                    f"What to extract:\n{request.strip()}\n\n"
                    f"Output of the tool {kept.tool}, characters {begin}-{end} of {total}:\n"
                    f"<tool_output>\n{text[begin:end]}\n</tool_output>",
                ),
            ]
            answer = (await extractor(messages)).strip() or "(no answer)"
            answers.append(answer if len(chunks) == 1 else f"[characters {begin}-{end}]\n{answer}")
        covered = chunks[-1][1]
        if covered < total:
            answers.append(
                f"[read characters {offset}-{covered} of {total}; call again with"
                f" offset {covered} for the rest]"
            )
        return "\n\n".join(answers)


def newHandle() -> str:
    """
    A new handle: a random UUID (122 random bits).
    """
    return str(uuid.uuid4())


def checkPattern(pattern: object) -> regex.Pattern[str]:
    """
    Compile a C{grep} pattern (the C{regex} module's syntax, a superset of
    Python's C{re}), refusing patterns over L{MAX_PATTERN} characters.
    What a pattern costs is bounded when it runs (L{MAX_GREP_SECONDS}).

    @raise ToolOutputError: saying why a pattern is refused.
    """
    if not isinstance(pattern, str) or not pattern:
        raise ToolOutputError("mode grep needs a 'pattern' (a regular expression)")
    if len(pattern) > MAX_PATTERN:
        raise ToolOutputError(f"the pattern is longer than {MAX_PATTERN} characters")
    try:
        return regex.compile(pattern)
    except regex.error as error:
        raise ToolOutputError(f"the pattern is not a valid regular expression: {error}") from None


def _grep(kept: _Kept, arguments: Mapping[str, Any]) -> str:
    compiled = checkPattern(arguments.get("pattern"))
    start = _integer(arguments, "startLine", 1, 1)
    limit = min(_integer(arguments, "maxMatches", DEFAULT_MATCHES, 1), MAX_MATCHES)
    lines = kept.lines
    found: list[str] = []
    scanned = 0
    number = start
    deadline = time.monotonic() + MAX_GREP_SECONDS
    stopped = ""
    while number <= len(lines):
        line = lines[number - 1]
        try:
            matched = compiled.search(
                line[:MAX_GREP_LINE], timeout=max(deadline - time.monotonic(), 0.001)
            )
        except TimeoutError:
            stopped = f"the pattern took more than {MAX_GREP_SECONDS:g} s; write a simpler one"
            break
        if matched:
            shown = line if len(line) <= 300 else line[:300] + "…"
            found.append(f"{number}: {shown}")
            if len(found) >= limit:
                stopped = f"stopped at {limit} matches"
                number += 1
                break
        scanned += len(line) + 1
        number += 1
        if scanned >= MAX_GREP_SCAN:
            stopped = f"scanned {scanned} characters, the most one call scans"
            break
        if time.monotonic() > deadline:
            stopped = f"stopped after {MAX_GREP_SECONDS:g} s"
            break
    summary = f"{len(found)} matching lines in lines {start}-{number - 1} of {len(lines)}"
    if stopped and number <= len(lines):
        summary += f" ({stopped}; continue with startLine {number})"
    return "\n".join([*found, f"[{summary}]"])


def _given(arguments: Mapping[str, Any], *names: str) -> bool:
    return any(arguments.get(name) is not None for name in names)


def _integer(arguments: Mapping[str, Any], name: str, default: int, low: int) -> int:
    value = arguments.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ToolOutputError(f"'{name}' must be an integer >= {low}")
    return value


def _cut(encoded: bytes, limit: int, why: str) -> str:
    kept = encoded[:limit].decode("utf-8", "ignore")
    return (
        f"{kept}\n[truncated: the result was {len(encoded)} bytes;"
        f" only the first {limit} are shown{why}]"
    )


__all__ = [
    "MAX_KEPT_RESULT",
    "MAX_KEPT_RUN",
    "TOOL_OUTPUT",
    "TOOL_OUTPUT_SPEC",
    "RunOutputs",
    "ToolOutputError",
    "checkPattern",
]
