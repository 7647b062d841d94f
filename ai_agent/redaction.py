# -*- test-case-name: tests.test_redaction -*-
"""
Configured secrets kept out of everything a headend writes.

A model can repeat a provider's key (a prompt injection may ask it to, a
misconfigured gateway may echo it), and the text reaches the client in
pieces: a key split over two stream deltas is in neither.  A L{Redactor}
knows the secrets; its L{Redactor.stream} follows one stream of text and
holds back only a tail that could still be the start of a secret, so text
without one passes at once and a secret never goes out, whole or split.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import attrs

from ai_agent.config import headerSecrets
from ai_agent.errors import AgentError
from ai_agent.events import (
    PROGRESS_TYPES,
    AdvisorProgress,
    ContentDelta,
    Event,
    EventSink,
    ExtractionProgress,
    HandoffProgress,
    Progress,
    ReasoningDelta,
    Retrying,
    SubAgentProgress,
    ToolFinished,
    ToolStarted,
)

#: Secrets shorter than this are not searched for: a short value (a
#: header such as C{1} or C{true}) would redact ordinary text.
MIN_SECRET_LENGTH = 8

#: What a secret is replaced with.
REDACTED = "[redacted]"

#: The most characters of an error message a client is shown.
MAX_ERROR_MESSAGE = 500

#: The most characters of an error's C{param} (a path into the request).
MAX_PARAM = 200

#: The most characters of a client's own value quoted back to it.
MAX_ECHO = 80


def shorten(text: str, limit: int = MAX_ECHO) -> str:
    """
    C{text} cut to at most C{limit} characters, with C{...} when cut.
    """
    if len(text) <= limit:
        return text
    return text[: limit - 3] + "..."


@attrs.frozen
class Redactor:
    """
    The secrets a server's configuration holds.

    @ivar secrets: longest first, so that a secret containing another is
        replaced whole.
    """

    secrets: tuple[str, ...] = ()
    _any: re.Pattern[str] | None = attrs.field(init=False, default=None, eq=False, repr=False)
    _tail: re.Pattern[str] | None = attrs.field(init=False, default=None, eq=False, repr=False)
    _window: int = attrs.field(init=False, default=0, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not self.secrets:
            return
        # One pass of C finds any secret; another finds a tail of the text
        # that is the start of one (each proper prefix, longest first, at
        # the end of the text: the leftmost match is the longest tail).
        prefixes = sorted(
            {secret[:n] for secret in self.secrets for n in range(1, len(secret))},
            key=lambda prefix: (-len(prefix), prefix),
        )
        object.__setattr__(self, "_any", re.compile("|".join(map(re.escape, self.secrets))))
        object.__setattr__(
            self, "_tail", re.compile("(?:" + "|".join(map(re.escape, prefixes)) + r")\Z")
        )
        object.__setattr__(self, "_window", max(map(len, self.secrets)) - 1)

    @classmethod
    def of(cls, values: Iterable[str | None]) -> Redactor:
        """
        A redactor of C{values}, dropping empty and short ones.
        """
        found = {value for value in values if value and len(value) >= MIN_SECRET_LENGTH}
        return cls(tuple(sorted(found, key=lambda s: (-len(s), s))))

    @classmethod
    def fromConfig(cls, config: Any) -> Redactor:
        """
        The provider keys and header values, the MCP servers' header
        values, and the REST tools' secrets (see L{ai_agent.config.Config.restSecrets})
        of a L{ai_agent.config.Config} (or nothing for L{None}).
        """
        if config is None:
            return cls()
        values: list[str | None] = []
        for provider in getattr(config, "providers", {}).values():
            values.append(provider.apiKey)
            values.extend(provider.headers.values())
        for server in getattr(config, "mcpServers", {}).values():
            values.extend(getattr(server, "headers", {}).values())
        # REST tools: their header values (a bearer token alone too) and
        # the variables their sections use (a key may sit in a URL).
        values.extend(getattr(config, "restSecrets", ()))
        for entry in (
            *getattr(config, "restTools", {}).values(),
            *getattr(config, "openapiSpecs", {}).values(),
        ):
            values.extend(headerSecrets(entry.headers))
        return cls.of(values)

    def scrub(self, text: str) -> str:
        """
        C{text} with every secret replaced.
        """
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def stream(self) -> StreamRedactor:
        """
        A redactor for one stream of text pieces.
        """
        return StreamRedactor(self)


@attrs.define
class SecretScrub:
    """
    The configured secrets' L{Redactor}, swapped in place when the
    configuration is reloaded, for the text that is logged or traced
    rather than answered: spans' messages and tool text
    (L{ai_agent.observe.Observer.redactWith}), MCP servers' log lines.
    Called with a text, it returns it scrubbed.
    """

    redactor: Redactor = attrs.field(factory=Redactor)

    def __call__(self, text: str) -> str:
        return self.redactor.scrub(text)


@attrs.define
class StreamRedactor:
    """
    Redacts one stream of text that arrives in pieces.
    """

    redactor: Redactor
    _held: str = ""

    def feed(self, text: str) -> str:
        """
        The part of C{text} (after what was held) that can go out now: every
        whole secret replaced, and any tail that is the beginning of a
        secret held back for the next piece.
        """
        redactor = self.redactor
        if redactor._tail is None or redactor._any is None:
            return text
        if self._held:
            text = self._held + text
            self._held = ""
        if redactor._any.search(text) is not None:
            text = redactor.scrub(text)
        tail = redactor._tail.search(text, max(0, len(text) - redactor._window))
        if tail is None:
            return text
        self._held = text[tail.start() :]
        return text[: tail.start()]

    def flush(self) -> str:
        """
        Whatever was held back, at the end of the stream (it is not a secret:
        the stream ended before one was complete).
        """
        held, self._held = self._held, ""
        return held


def safeError(error: AgentError, redactor: Redactor, inBand: bool = False) -> AgentError:
    """
    C{error} as it may be shown to a client: configured secrets taken out of
    its message, the message and C{param} cut to bounded lengths, and, for
    an error sent in-band (where no C{Retry-After} header can go any more),
    its retry delay said in the message.
    """
    message = redactor.scrub(shorten(error.message, MAX_ERROR_MESSAGE))
    if inBand and error.retryAfter is not None:
        message = f"{message} (retry after {max(1, round(error.retryAfter))} s)"
    param = None if error.param is None else shorten(error.param, MAX_PARAM)
    if message == error.message and param == error.param:
        return error
    return AgentError(
        message,
        error.status,
        error.kind,
        error.code,
        param,
        error.retryAfter,
        sideEffects=error.sideEffects,
    )


@attrs.define
class RedactingSink:
    """
    An event sink that passes a run's events on with the secrets taken out
    of its answer text and its reasoning and progress (which quote tool
    calls' names and arguments); call L{flush} when the run ends.
    """

    redactor: Redactor
    sink: EventSink
    _content: StreamRedactor = attrs.field(init=False)
    _reasoning: StreamRedactor = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._content = self.redactor.stream()
        self._reasoning = self.redactor.stream()

    def __call__(self, event: Event) -> None:
        if not self.redactor.secrets:
            if isinstance(event, (Retrying, SubAgentProgress)):
                event = _withoutDetail(event)
            self.sink(event)
        elif isinstance(event, ContentDelta):
            # A change of channel lets out what the other one held, so the
            # two stay in order.
            if self._reasoning._held:
                self._flushReasoning()
            text = self._content.feed(event.text)
            if text == event.text:
                self.sink(event)
            elif text:
                self.sink(ContentDelta(text))
        elif isinstance(event, ReasoningDelta):
            if self._content._held:
                self._flushContent()
            text = self._reasoning.feed(event.text)
            if text == event.text:
                self.sink(event)
            elif text:
                self.sink(ReasoningDelta(text))
        elif isinstance(event, PROGRESS_TYPES):
            # Progress comes whole: each of its texts is scrubbed as it is.
            self.sink(self._progress(event))
        else:
            self.sink(event)

    def _progress(self, event: Progress) -> Progress:
        scrub = self.redactor.scrub
        if isinstance(event, ToolStarted):
            return attrs.evolve(
                event,
                name=scrub(event.name),
                arguments=scrub(event.arguments),
                callId=scrub(event.callId),
            )
        if isinstance(event, ToolFinished):
            return attrs.evolve(
                event,
                name=scrub(event.name),
                result=scrub(event.result),
                callId=scrub(event.callId),
            )
        if isinstance(event, Retrying):
            # The operator's detail never leaves the server.
            return attrs.evolve(
                event, model=scrub(event.model), reason=scrub(event.reason), detail=""
            )
        if isinstance(event, AdvisorProgress):
            error = None if event.error is None else scrub(event.error)
            return attrs.evolve(event, agent=scrub(event.agent), error=error)
        if isinstance(event, HandoffProgress):
            return attrs.evolve(
                event,
                source=scrub(event.source),
                target=scrub(event.target),
                message=scrub(event.message),
            )
        if isinstance(event, ExtractionProgress):
            return attrs.evolve(event, tool=scrub(event.tool))
        inner = event.event
        if isinstance(inner, ReasoningDelta):
            return attrs.evolve(event, event=ReasoningDelta(scrub(inner.text)))
        return attrs.evolve(event, event=self._progress(inner))

    def flush(self) -> None:
        """
        Pass on the text held back at the end of each stream.
        """
        self._flushReasoning()
        self._flushContent()

    def _flushReasoning(self) -> None:
        reasoning = self._reasoning.flush()
        if reasoning:
            self.sink(ReasoningDelta(reasoning))

    def _flushContent(self) -> None:
        content = self._content.flush()
        if content:
            self.sink(ContentDelta(content))


def _withoutDetail(event: Progress) -> Progress:
    """
    C{event} without a L{Retrying}'s operator detail (in a sub-agent's
    progress too), which never leaves the server.
    """
    if isinstance(event, Retrying):
        return attrs.evolve(event, detail="") if event.detail else event
    if isinstance(event, SubAgentProgress) and not isinstance(event.event, ReasoningDelta):
        inner = _withoutDetail(event.event)
        return event if inner is event.event else attrs.evolve(event, event=inner)
    return event


__all__ = [
    "MAX_ECHO",
    "MAX_ERROR_MESSAGE",
    "MAX_PARAM",
    "safeError",
    "shorten",
    "MIN_SECRET_LENGTH",
    "REDACTED",
    "RedactingSink",
    "Redactor",
    "SecretScrub",
    "StreamRedactor",
]
