# -*- test-case-name: tests.test_firstrun -*-
"""
Direct mode on a terminal with no question: an interactive chat with one
agent.  Each line is a user message; the answer streams back; the history
is kept for the next turn.  C{/exit} or Ctrl-D leaves; Ctrl-C interrupts
(exit status 130, as for a one-shot question).

Standard input is read by the reactor (L{StandardIO}), so nothing blocks
while an answer streams.
"""

from __future__ import annotations

from typing import Any, Callable, TextIO

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from ai_agent.errors import AgentError
from ai_agent.events import ContentDelta, Event, ReasoningDelta
from ai_agent.providers import ChatMessage

#: Lines that end the chat.
EXIT_COMMANDS = ("/exit", "/quit")

PROMPT = "> "


@attrs.define(eq=False)
class ChatSession:
    """
    One interactive chat: the history, the run under way, the output.

    @ivar run: starts a run of the agent on a conversation with an event
        sink (the runner's C{run}, bound to the agent).
    @ivar done: fires with the exit status when the chat ends.
    """

    run: Callable[[list[ChatMessage], Callable[[Event], None]], Deferred[Any]]
    stdout: TextIO
    stderr: TextIO
    verbose: bool = False
    history: list[ChatMessage] = attrs.field(factory=list)
    done: Deferred[int] = attrs.field(factory=Deferred)
    _running: Deferred[Any] | None = None

    def start(self, greeting: str) -> None:
        """
        Greet (on standard error) and show the prompt.
        """
        self.stderr.write(greeting + "\n")
        self.stderr.flush()
        self._prompt()

    def _prompt(self) -> None:
        self.stdout.write(PROMPT)
        self.stdout.flush()

    def line(self, text: str) -> None:
        """
        One line typed by the user.
        """
        if self.done.called or self._running is not None:
            return
        text = text.strip()
        if text in EXIT_COMMANDS:
            self.finish(0)
            return
        if not text:
            self._prompt()
            return
        self.history.append(ChatMessage("user", text))
        answer: list[str] = []

        def onEvent(event: Event) -> None:
            if isinstance(event, ContentDelta):
                answer.append(event.text)
                self.stdout.write(event.text)
                self.stdout.flush()
            elif isinstance(event, ReasoningDelta) and self.verbose:
                self.stderr.write(event.text)
                self.stderr.flush()

        def answered(result: object) -> None:
            self.history.append(ChatMessage("assistant", "".join(answer)))

        def failed(reason: Failure) -> Failure | None:
            if reason.check(CancelledError):
                return reason
            self.history.pop()
            error = reason.value
            message = error.message if isinstance(error, AgentError) else str(error)
            self.stderr.write(f"ai-agent: {message}\n")
            return None

        def ended(result: object) -> object:
            self._running = None
            if answer and not answer[-1].endswith("\n"):
                self.stdout.write("\n")
            if not isinstance(result, Failure) and not self.done.called:
                self._prompt()
            return result

        running = self.run(list(self.history), onEvent)
        self._running = running
        running.addCallbacks(answered, failed).addBoth(ended)
        running.addErrback(lambda reason: reason.trap(CancelledError))

    def finish(self, status: int) -> None:
        """
        End the chat with C{status}.
        """
        if not self.done.called:
            self.done.callback(status)

    def interrupt(self) -> Deferred[Any] | None:
        """
        Stop the answer under way, if any; fire when it stopped.
        """
        running = self._running
        if running is None:
            return None
        running.cancel()
        return running


class ChatProtocol(LineReceiver):
    """
    Standard input, line by line, for a L{ChatSession}.
    """

    delimiter = b"\n"

    def __init__(self, session: ChatSession) -> None:
        self.session = session

    def lineReceived(self, line: bytes) -> None:
        self.session.line(line.decode("utf-8", "replace"))

    def connectionLost(self, reason: Failure | None = None) -> None:
        # Ctrl-D (end of input) leaves the chat.
        self.session.finish(0)


__all__ = ["ChatProtocol", "ChatSession", "EXIT_COMMANDS"]
