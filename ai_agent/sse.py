# -*- test-case-name: tests.test_sse -*-
"""
An incremental parser for C{text/event-stream} (server-sent events), as the
WHATWG HTML standard defines it.

Bytes go in as they arrive from the network, split anywhere (inside a UTF-8
character, inside a C{\\r\\n}, between the lines of one event); complete
events come out.  The parser knows nothing about HTTP, so the LLM providers
and the MCP HTTP transport share it.

    parser = SSEParser()
    for event in parser.feed(data):
        ...
    parser.close()          # at the end of the body: rejects a cut UTF-8 character
"""

from __future__ import annotations

import codecs
import re

import attrs

DEFAULT_MAX_BUFFER = 16 * 1024 * 1024
"""
The default limit, in characters, of a pending line plus the data of the
event being assembled.
"""

_LINE_END = re.compile(r"\r\n|\r|\n")
_BOM = "\ufeff"


class SSEError(ValueError):
    """
    The byte stream is not a valid event stream.
    """


class SSEDecodeError(SSEError):
    """
    The byte stream is not valid UTF-8.
    """


class SSEOverflowError(SSEError):
    """
    An event (or a single line) grew beyond the parser's C{maxBuffer}.
    """


@attrs.frozen
class SSEEvent:
    """
    One dispatched event.

    @ivar event: the C{event:} field, or C{"message"} when the event had none.
    @ivar data: the C{data:} lines of the event joined with C{"\\n"}.
    @ivar id: the last event ID seen on the stream so far (it persists across
        events, as the standard says), or L{None} when no C{id:} field came.
    """

    data: str
    event: str = "message"
    id: str | None = None


def _newDecoder() -> codecs.IncrementalDecoder:
    return codecs.getincrementaldecoder("utf-8")(errors="strict")


@attrs.define(on_setattr=attrs.setters.NO_OP)
class SSEParser:
    """
    Turns the bytes of an event stream into L{SSEEvent}s, incrementally.

    L{feed} returns the events completed by the bytes given to it (possibly
    none); a partial line or a partial event waits for more bytes.  An event
    still incomplete when the stream ends is discarded, as the standard says.

    @ivar maxBuffer: the most characters the parser holds for one pending
        line plus the data of the event being assembled; beyond it L{feed}
        raises L{SSEOverflowError}.
    @ivar lastEventId: the last C{id:} value seen, or L{None}.
    @ivar reconnectionTime: the last valid C{retry:} value in milliseconds,
        or L{None}.
    """

    maxBuffer: int = attrs.field(default=DEFAULT_MAX_BUFFER)
    lastEventId: str | None = attrs.field(default=None, init=False)
    reconnectionTime: int | None = attrs.field(default=None, init=False)
    _decoder: codecs.IncrementalDecoder = attrs.field(factory=_newDecoder, init=False)
    _started: bool = attrs.field(default=False, init=False)
    _skipLineFeed: bool = attrs.field(default=False, init=False)
    _partialLine: list[str] = attrs.field(factory=list, init=False)
    _partialLength: int = attrs.field(default=0, init=False)
    _eventType: str = attrs.field(default="", init=False)
    _dataLines: list[str] = attrs.field(factory=list, init=False)
    _dataLength: int = attrs.field(default=0, init=False)

    @maxBuffer.validator
    def _checkMaxBuffer(self, attribute: attrs.Attribute[int], value: int) -> None:
        if value < 1:
            raise ValueError(f"maxBuffer must be positive, not {value!r}")

    def feed(self, data: bytes) -> list[SSEEvent]:
        """
        Parse more bytes of the stream.

        @return: the events these bytes completed, in order.
        @raise SSEDecodeError: the bytes are not valid UTF-8.
        @raise SSEOverflowError: a line or an event exceeds C{maxBuffer}.
        """
        try:
            text = self._decoder.decode(data)
        except UnicodeDecodeError as e:
            raise SSEDecodeError(f"the event stream is not valid UTF-8: {e}") from e
        return self._feedText(text)

    def close(self) -> None:
        """
        Signal the end of the stream.  A trailing incomplete event is
        discarded.

        @raise SSEDecodeError: the stream ended inside a UTF-8 character.
        """
        try:
            self._decoder.decode(b"", True)
        except UnicodeDecodeError as e:
            raise SSEDecodeError(f"the event stream ended inside a UTF-8 character: {e}") from e

    def _feedText(self, text: str) -> list[SSEEvent]:
        if not text:
            return []
        if not self._started:
            self._started = True
            if text.startswith(_BOM):
                text = text[1:]
        if self._skipLineFeed:
            self._skipLineFeed = False
            if text.startswith("\n"):
                text = text[1:]
        if "\r" not in text:
            return self._feedLines(text)
        events: list[SSEEvent] = []
        start = 0
        for match in _LINE_END.finditer(text):
            piece = text[start : match.start()]
            if self._partialLine:
                self._partialLine.append(piece)
                line = "".join(self._partialLine)
                self._partialLine = []
                self._partialLength = 0
            else:
                line = piece
            start = match.end()
            event = self._processLine(line)
            if event is not None:
                events.append(event)
        if start < len(text):
            rest = text[start:]
            self._partialLine.append(rest)
            self._partialLength += len(rest)
            self._checkBuffer()
        elif text.endswith("\r"):
            # The "\n" of a "\r\n" may come with the next bytes.
            self._skipLineFeed = True
        return events

    def _feedLines(self, text: str) -> list[SSEEvent]:
        """
        L{_feedText} for text whose lines all end in C{"\\n"} (what every
        LLM API sends): split in one call, C{data:} lines taken at once.
        """
        lines = text.split("\n")
        rest = lines.pop()
        events: list[SSEEvent] = []
        if lines and self._partialLine:
            self._partialLine.append(lines[0])
            lines[0] = "".join(self._partialLine)
            self._partialLine = []
            self._partialLength = 0
        dataLines = self._dataLines
        for line in lines:
            if not line:
                event = self._dispatch()
                if event is not None:
                    events.append(event)
                dataLines = self._dataLines
            elif line.startswith("data: "):
                dataLines.append(line[6:])
                self._dataLength += len(line) - 5
                if self._dataLength > self.maxBuffer:
                    self._checkBuffer()
            else:
                self._processLine(line)
        if rest:
            self._partialLine.append(rest)
            self._partialLength += len(rest)
            self._checkBuffer()
        return events

    def _checkBuffer(self) -> None:
        if self._partialLength + self._dataLength > self.maxBuffer:
            raise SSEOverflowError(
                f"an event of the stream exceeds the limit of {self.maxBuffer} characters"
            )

    def _processLine(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._dataLines.append(value)
            self._dataLength += len(value) + 1
            self._checkBuffer()
        elif field == "event":
            self._eventType = value
        elif field == "id":
            if "\0" not in value:
                self.lastEventId = value
        elif field == "retry":
            if value.isascii() and value.isdigit():
                self.reconnectionTime = int(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        eventType = self._eventType or "message"
        self._eventType = ""
        if not self._dataLines:
            return None
        data = "\n".join(self._dataLines)
        self._dataLines = []
        self._dataLength = 0
        return SSEEvent(data=data, event=eventType, id=self.lastEventId)


__all__ = [
    "DEFAULT_MAX_BUFFER",
    "SSEOverflowError",
    "SSEDecodeError",
    "SSEError",
    "SSEEvent",
    "SSEParser",
]
