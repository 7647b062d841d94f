"""
Statistics and response parsing for the benchmark: pure functions, so the
suite can check them (tests/test_bench.py) without running a benchmark.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs


def percentile(values: Sequence[float], q: float) -> float:
    """
    The C{q}-th percentile (0-100) of C{values}, interpolated linearly
    between the closest ranks (numpy's default method).

    @raise ValueError: when C{values} is empty or C{q} is out of range.
    """
    if not values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile out of range: {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = math.ceil(position)
    if low == high:
        return float(ordered[low])
    fraction = position - low
    return float(ordered[low] + (ordered[high] - ordered[low]) * fraction)


def median(values: Sequence[float]) -> float:
    """
    The median of C{values}.
    """
    return percentile(values, 50)


def iqr(values: Sequence[float]) -> tuple[float, float]:
    """
    The first and third quartiles of C{values}.
    """
    return percentile(values, 25), percentile(values, 75)


@attrs.frozen
class Summary:
    """
    The median of per-round values and their spread.

    @ivar value: the median over rounds.
    @ivar low: the first quartile over rounds.
    @ivar high: the third quartile over rounds.
    @ivar rounds: how many rounds contributed.
    """

    value: float
    low: float
    high: float
    rounds: int

    def asDict(self) -> dict[str, float | int]:
        """
        A JSON-ready form.
        """
        return {"value": self.value, "q1": self.low, "q3": self.high, "rounds": self.rounds}


def summarize(perRound: Sequence[float]) -> Summary:
    """
    Median of round values with the interquartile range: the method of
    interleaved rounds, robust to one noisy round.
    """
    low, high = iqr(perRound)
    return Summary(median(perRound), low, high, len(perRound))


def addedPerRound(
    arm: Mapping[int, Sequence[float]], baseline: Mapping[int, Sequence[float]], q: float
) -> list[float]:
    """
    Per round, the C{q}-th percentile of C{arm} minus that of C{baseline}
    in the same round; rounds missing on either side are skipped.

    @param arm: round number to samples.
    @param baseline: round number to samples of the direct arm.
    """
    return [
        percentile(arm[r], q) - percentile(baseline[r], q)
        for r in sorted(arm)
        if r in baseline and arm[r] and baseline[r]
    ]


def ratio(ours: float, theirs: float) -> float | None:
    """
    C{ours / theirs}, or L{None} when C{theirs} is not positive.
    """
    if theirs <= 0:
        return None
    return ours / theirs


# HTTP and SSE parsing.


class ParseError(Exception):
    """
    A response the benchmark client cannot read.
    """


@attrs.define
class ResponseParser:
    """
    An incremental HTTP/1.1 response parser (Content-Length or chunked
    bodies), enough for the servers under test.

    Feed it bytes; once L{done}, C{status}, C{headers} and C{body} hold the
    response, and unconsumed bytes (a pipelined next response) stay in
    C{rest}.
    """

    status: int = 0
    headers: dict[str, str] = attrs.field(factory=dict)
    body: bytearray = attrs.field(factory=bytearray)
    done: bool = False
    rest: bytearray = attrs.field(factory=bytearray)
    _inHead: bool = True
    _length: int | None = None
    _chunked: bool = False
    _chunkLeft: int = -1
    _trailer: bool = False

    def feed(self, data: bytes) -> int:
        """
        Take C{data}; return how many body bytes it added.
        """
        buffer = self.rest
        buffer += data
        before = len(self.body)
        if self._inHead:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return 0
            self._head(bytes(buffer[:end]))
            del buffer[: end + 4]
        if self._chunked:
            self._chunks(buffer)
        elif self._length is not None:
            take = min(self._length - len(self.body), len(buffer))
            self.body += buffer[:take]
            del buffer[:take]
            if len(self.body) >= self._length:
                self.done = True
        return len(self.body) - before

    def close(self) -> None:
        """
        The connection closed: a body without a length ends here.
        """
        if not self._inHead and self._length is None and not self._chunked:
            self.done = True

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise ParseError(f"not an HTTP response: {lines[0]!r}")
        self.status = int(parts[1])
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            self.headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        self._inHead = False
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            self._chunked = True
        elif "content-length" in self.headers:
            self._length = int(self.headers["content-length"])
            if self._length == 0:
                self.done = True

    def _chunks(self, buffer: bytearray) -> None:
        while not self.done:
            if self._trailer:
                end = buffer.find(b"\r\n")
                if end < 0:
                    return
                line = buffer[:end]
                del buffer[: end + 2]
                if not line:
                    self.done = True
                continue
            if self._chunkLeft < 0:
                end = buffer.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(buffer[:end]).split(b";")[0], 16)
                del buffer[: end + 2]
                if size == 0:
                    self._trailer = True
                    continue
                self._chunkLeft = size
            if self._chunkLeft > 0:
                take = min(self._chunkLeft, len(buffer))
                if take == 0:
                    return
                self.body += buffer[:take]
                del buffer[:take]
                self._chunkLeft -= take
            if self._chunkLeft == 0:
                if len(buffer) < 2:
                    return
                del buffer[:2]
                self._chunkLeft = -1


@attrs.frozen
class StreamCheck:
    """
    What an SSE chat-completion body carried.

    @ivar pieces: the non-empty C{delta.content} strings, in order.
    @ivar done: whether C{data: [DONE]} ended it.
    @ivar errors: in-band error frames.
    @ivar badFrames: frames that were not JSON.
    """

    pieces: tuple[str, ...]
    done: bool
    errors: int
    badFrames: int

    def intact(self, expected: Sequence[str]) -> bool:
        """
        Whether every expected piece arrived once, in order, unmerged, and
        the stream ended cleanly.
        """
        return (
            self.done
            and not self.errors
            and not self.badFrames
            and list(self.pieces) == list(expected)
        )


def checkStream(body: bytes) -> StreamCheck:
    """
    Read an SSE chat-completion body.
    """
    pieces: list[str] = []
    done = False
    errors = 0
    bad = 0
    for event in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = b"\n".join(
            line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
        )
        if not data:
            continue
        if data == b"[DONE]":
            done = True
            continue
        try:
            chunk = json.loads(data)
        except ValueError:
            bad += 1
            continue
        if not isinstance(chunk, dict):
            bad += 1
            continue
        if chunk.get("error"):
            errors += 1
            continue
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if isinstance(content, str) and content:
                pieces.append(content)
    return StreamCheck(tuple(pieces), done, errors, bad)


def checkResponsesStream(body: bytes) -> StreamCheck:
    """
    Read an SSE Responses API body: the pieces are its
    C{response.output_text.delta} deltas, C{done} whether
    C{response.completed} ended it, errors its C{response.failed} and
    C{error} events.
    """
    pieces: list[str] = []
    done = False
    errors = 0
    bad = 0
    for event in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = b"\n".join(
            line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
        )
        if not data:
            continue
        try:
            value = json.loads(data)
        except ValueError:
            bad += 1
            continue
        kind = value.get("type") if isinstance(value, dict) else None
        if kind is None:
            bad += 1
        elif kind == "response.output_text.delta" and value.get("delta"):
            pieces.append(value["delta"])
        elif kind == "response.completed":
            done = True
        elif kind in ("response.failed", "error"):
            errors += 1
    return StreamCheck(tuple(pieces), done, errors, bad)


def checkMessagesStream(body: bytes) -> StreamCheck:
    """
    Read an SSE Anthropic Messages body: the pieces are its C{text_delta}
    texts, C{done} whether C{message_stop} ended it, errors its C{error}
    events.
    """
    pieces: list[str] = []
    done = False
    errors = 0
    bad = 0
    for _, data in sseEvents(body):
        try:
            value = json.loads(data)
        except ValueError:
            bad += 1
            continue
        kind = value.get("type") if isinstance(value, dict) else None
        if kind is None:
            bad += 1
        elif kind == "content_block_delta":
            delta = value.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta" and delta.get("text"):
                pieces.append(delta["text"])
        elif kind == "message_stop":
            done = True
        elif kind == "error":
            errors += 1
    return StreamCheck(tuple(pieces), done, errors, bad)


def checkA2AStream(body: bytes) -> StreamCheck:
    """
    Read an SSE A2A stream (HTTP+JSON binding: bare StreamResponses): the
    pieces are its C{artifactUpdate}s' non-empty texts, C{done} whether a
    C{TASK_STATE_COMPLETED} status came, errors the statuses of a task
    that failed or was canceled.
    """
    pieces: list[str] = []
    done = False
    errors = 0
    bad = 0
    for _, data in sseEvents(body):
        try:
            value = json.loads(data)
        except ValueError:
            bad += 1
            continue
        if not isinstance(value, dict):
            bad += 1
        elif "artifactUpdate" in value:
            for part in value["artifactUpdate"].get("artifact", {}).get("parts", ()):
                if part.get("text"):
                    pieces.append(part["text"])
        elif "statusUpdate" in value:
            state = value["statusUpdate"].get("status", {}).get("state")
            if state == "TASK_STATE_COMPLETED":
                done = True
            elif state in ("TASK_STATE_FAILED", "TASK_STATE_CANCELED", "TASK_STATE_REJECTED"):
                errors += 1
    return StreamCheck(tuple(pieces), done, errors, bad)


def sseEvents(body: bytes) -> list[tuple[int, bytes]]:
    """
    The data of each SSE event of C{body} (events without data left out),
    with the offset just past the event's end.
    """
    found: list[tuple[int, bytes]] = []
    body = body.replace(b"\r\n", b"\n")
    position = 0
    while True:
        end = body.find(b"\n\n", position)
        if end < 0:
            return found
        data = b"\n".join(
            line[5:].lstrip(b" ")
            for line in body[position:end].split(b"\n")
            if line.startswith(b"data:")
        )
        if data:
            found.append((end + 2, data))
        position = end + 2


@attrs.frozen
class AgentStream:
    """
    What a streamed chat completion of an agent run carried.

    @ivar content: the answer, its C{delta.content} pieces joined.
    @ivar progress: each C{delta.reasoning_content} (progress lines: the
        agent's tool calls starting and finishing) with the offset just
        past its frame.
    @ivar done: whether C{data: [DONE]} ended it.
    @ivar errors: in-band error frames and frames that were not JSON.
    """

    content: str
    progress: tuple[tuple[str, int], ...]
    done: bool
    errors: int

    def span(self, marks: Sequence[tuple[int, float]], tool: str) -> float | None:
        """
        Seconds from the arrival of the frame saying C{calling <tool>} to
        that of the frame saying C{<tool> → ...}, given the L{Result.marks}
        of the body; L{None} unless the stream has exactly one of each, in
        that order.
        """
        starts = [end for text, end in self.progress if text.startswith(f"calling {tool} ")]
        ends = [end for text, end in self.progress if text.startswith(f"{tool} → ")]
        if len(starts) != 1 or len(ends) != 1 or ends[0] <= starts[0]:
            return None
        began, finished = arrivedAt(marks, starts[0]), arrivedAt(marks, ends[0])
        if began is None or finished is None:
            return None
        return finished - began


def readAgentStream(body: bytes) -> AgentStream:
    """
    Read an SSE chat-completion body with its progress frames.
    """
    content: list[str] = []
    progress: list[tuple[str, int]] = []
    done = False
    errors = 0
    for end, data in sseEvents(body):
        if data == b"[DONE]":
            done = True
            continue
        try:
            chunk = json.loads(data)
        except ValueError:
            errors += 1
            continue
        if not isinstance(chunk, dict) or chunk.get("error"):
            errors += 1
            continue
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                content.append(delta["content"])
            if isinstance(delta.get("reasoning_content"), str) and delta["reasoning_content"]:
                progress.append((delta["reasoning_content"], end))
    return AgentStream("".join(content), tuple(progress), done, errors)


def arrivedAt(marks: Sequence[tuple[int, float]], offset: int) -> float | None:
    """
    The time of the first mark whose body had reached C{offset} bytes.
    """
    for length, seconds in marks:
        if length >= offset:
            return seconds
    return None


def responsesText(body: bytes) -> str | None:
    """
    The text of a non-streamed Responses API response (its C{output_text}
    parts joined), or L{None} unless it is C{completed}.
    """
    try:
        value: Any = json.loads(body)
        if value["status"] != "completed":
            return None
        parts = [
            part["text"]
            for item in value["output"]
            if item.get("type") == "message"
            for part in item["content"]
            if part.get("type") == "output_text"
        ]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return "".join(parts) if parts and all(isinstance(p, str) for p in parts) else None


def mcpText(body: bytes) -> str | None:
    """
    The text of an MCP C{tools/call} answer (its C{text} content joined),
    or L{None} unless it is a result without C{isError}.
    """
    try:
        value: Any = json.loads(body)["result"]
        if value.get("isError"):
            return None
        parts = [block["text"] for block in value["content"] if block.get("type") == "text"]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return "".join(parts) if parts and all(isinstance(p, str) for p in parts) else None


def messagesText(body: bytes) -> str | None:
    """
    The text of a non-streamed Anthropic message (its C{text} blocks
    joined), or L{None} unless it is a message that ended its turn.
    """
    try:
        value: Any = json.loads(body)
        if value["type"] != "message" or value["stop_reason"] != "end_turn":
            return None
        parts = [block["text"] for block in value["content"] if block.get("type") == "text"]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return "".join(parts) if parts and all(isinstance(p, str) for p in parts) else None


def a2aText(body: bytes) -> str | None:
    """
    The answer of a blocking A2A C{message:send} (its artifacts' texts
    joined), or L{None} unless the task completed.
    """
    try:
        task: Any = json.loads(body)["task"]
        if task["status"]["state"] != "TASK_STATE_COMPLETED":
            return None
        parts = [part["text"] for artifact in task["artifacts"] for part in artifact["parts"]]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return "".join(parts) if parts and all(isinstance(p, str) for p in parts) else None


def completionText(body: bytes) -> str | None:
    """
    The C{message.content} of a non-streamed chat completion, or L{None}.
    """
    try:
        value: Any = json.loads(body)
        content = value["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


def handedBackCall(body: bytes) -> dict[str, Any] | None:
    """
    The one tool call of a non-streamed chat completion that ended with
    C{finish_reason: "tool_calls"} (its C{id}, C{type} and C{function}),
    or L{None} for anything else: no call, several, or the wrong shape.
    """
    try:
        value: Any = json.loads(body)
        choice = value["choices"][0]
        calls = choice["message"]["tool_calls"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if choice.get("finish_reason") != "tool_calls" or not isinstance(calls, list):
        return None
    if len(calls) != 1 or not isinstance(calls[0], dict):
        return None
    call = calls[0]
    function = call.get("function")
    if (
        not isinstance(call.get("id"), str)
        or not call["id"]
        or call.get("type") != "function"
        or not isinstance(function, dict)
        or not isinstance(function.get("name"), str)
        or not isinstance(function.get("arguments"), str)
    ):
        return None
    return {"id": call["id"], "type": "function", "function": function}


def cpuSeconds(stat: str) -> float:
    """
    User plus system CPU seconds from the text of C{/proc/PID/stat}.
    """
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rssKiB(status: str) -> int:
    """
    C{VmRSS} in KiB from the text of C{/proc/PID/status} (0 if missing).
    """
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def flatten(groups: Iterable[Sequence[float]]) -> list[float]:
    """
    All values of C{groups} in one list.
    """
    return [value for group in groups for value in group]
