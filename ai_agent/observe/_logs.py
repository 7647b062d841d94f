# -*- test-case-name: tests.test_observe -*-
"""
C{--log-format json}: one JSON object per line.

Every line has C{time} (ISO 8601, UTC), C{level}, C{namespace} and
C{message} (the text line's message), then the event's own fields: a run's
line carries C{agent}, C{requestId}, C{outcome},
C{duration}, C{promptTokens}, C{completionTokens}, C{totalTokens}, C{cost},
C{user}, C{task}, C{models}, C{calls}, C{failures} and, when tracing,
C{traceId}.  Fields whose names start with C{_} only shape the text line and
are left out, as are Twisted's own C{log_*} keys.  A failure's traceback is
in C{traceback}.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import IO, Any, ClassVar

from twisted.logger import FileLogObserver, Logger, LogLevel, formatEvent

_PRIMITIVE = (str, int, float, bool, type(None))


def _formatted(event: dict[str, Any]) -> str | None:
    """
    The message of an event whose format is text naming the event's own
    fields, with C{str.format_map}: what Twisted's formatter (a
    L{string.Formatter} in Python, ~6x slower) gives it.  L{None} for any
    other event, and for one C{str.format_map} cannot format (a field
    that is called, C{{name()}}, or missing): Twisted's formatter says
    what it says of those.
    """
    format = event.get("log_format")
    if type(format) is not str or "log_flattened" in event:
        return None
    try:
        return format.format_map(event)
    except Exception:
        return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, _PRIMITIVE):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    return str(value)


def eventAsJSON(event: dict[str, Any]) -> str:
    """
    One log event as one line of JSON (ending in a newline).
    """
    when = event.get("log_time")
    record: dict[str, Any] = {
        "time": None
        if when is None
        else datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds"),
        "level": getattr(event.get("log_level"), "name", None),
        "namespace": event.get("log_namespace"),
        "message": _formatted(event) or formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith(("log_", "_")) or key in record or key == "format":
            continue
        record[key] = _jsonable(value)
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)
    return text + "\n"


def jsonFileLogObserver(stream: IO[str]) -> FileLogObserver:
    """
    A log observer writing L{eventAsJSON} lines to C{stream}.
    """
    return FileLogObserver(stream, eventAsJSON)


class DebugLogger(Logger):
    """
    A L{Logger} whose debug events are dropped before they are made when
    no observer of this process writes them.

    twisted.logger filters by level in its observers, after the event is
    made (a dictionary, the time, the observers' filters: ~4 µs an event
    here), and has no cheaper check; a debug line on the path of every
    request (an upstream call's, L{ai_agent.accounting}) would cost that
    for nothing.  The process's entry point, which chose the level,
    says once whether debug events are written (L{writeDebug}); until
    then, and under C{twistd} and the tests, they are.
    """

    written: ClassVar[bool] = True

    def debug(self, format: str | None = None, **kwargs: object) -> None:
        """
        Emit a debug event, unless the process writes none.
        """
        if DebugLogger.written:
            self.emit(LogLevel.debug, format, **kwargs)


def writeDebug(level: LogLevel) -> None:
    """
    Say which is the lowest level this process's log observers write: the
    debug events of every L{DebugLogger} are made only if C{level} is
    L{LogLevel.debug}.
    """
    DebugLogger.written = level <= LogLevel.debug


__all__ = ["DebugLogger", "eventAsJSON", "jsonFileLogObserver", "writeDebug"]
