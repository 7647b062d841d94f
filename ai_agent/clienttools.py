# -*- test-case-name: tests.test_clienttools -*-
"""
Client tools in hybrid runs: what the client does not see, kept until it
comes back.

When a turn's calls include the client's own tools, the agent's calls of
that turn run first, then the run ends and the client gets only its own
calls.  The agent's work of that run (its tool-call messages and their
results, and the whole assistant message of the last turn, whose own calls
the client never saw) is a L{HiddenTurn}, saved under each handed-back call
id.  When the client sends its results, L{restoreConversation} finds the
hidden turn by those ids and puts it back in place of the client's
assistant message, so the model sees the whole history, in its original
order and pairing, not a gap.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ai_agent.providers._base import ChatMessage, ToolCall

log = Logger()

#: How long a hidden turn is kept by default (seconds): a client runs its
#: tools and comes back well within a day.
DEFAULT_TURN_TTL = 24 * 3600.0


@attrs.frozen
class HiddenTurn:
    """
    The agent's own work of a run that handed tool calls back.

    @ivar before: the run's earlier turns (assistant tool-call messages and
        tool results), in order.
    @ivar assistant: the last turn's assistant message, with every call the
        model made (the agent's and the client's).
    @ivar after: the results of the agent's own calls of the last turn.
    @ivar clientCallIds: the ids of the calls handed back.
    """

    before: tuple[ChatMessage, ...]
    assistant: ChatMessage
    after: tuple[ChatMessage, ...]
    clientCallIds: tuple[str, ...]

    def asJSON(self) -> dict[str, Any]:
        """
        A JSON-ready form of this turn, for a store.
        """
        return {
            "before": [_messageJSON(m) for m in self.before],
            "assistant": _messageJSON(self.assistant),
            "after": [_messageJSON(m) for m in self.after],
            "clientCallIds": list(self.clientCallIds),
        }

    @classmethod
    def fromJSON(cls, value: Mapping[str, Any]) -> HiddenTurn:
        """
        The turn L{asJSON} wrote.

        @raise ValueError: for anything else.
        """
        try:
            return cls(
                tuple(_message(m) for m in value["before"]),
                _message(value["assistant"]),
                tuple(_message(m) for m in value["after"]),
                tuple(str(i) for i in value["clientCallIds"]),
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"not a hidden turn: {error}") from None


def _messageJSON(message: ChatMessage) -> dict[str, Any]:
    value: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.name is not None:
        value["name"] = message.name
    if message.toolCalls:
        value["toolCalls"] = [[c.id, c.name, c.arguments] for c in message.toolCalls]
    if message.toolCallId is not None:
        value["toolCallId"] = message.toolCallId
    return value


def _message(value: Mapping[str, Any]) -> ChatMessage:
    return ChatMessage(
        str(value["role"]),
        str(value["content"]),
        value.get("name"),
        tuple(ToolCall(str(i), str(n), str(a)) for i, n, a in value.get("toolCalls", ())),
        value.get("toolCallId"),
    )


class TurnStore(Protocol):
    """
    Where hidden turns wait for the client to come back: the run store
    (L{StoreTurnStore<ai_agent.store.StoreTurnStore>}), or without one (C{--store none},
    direct mode) the same on a L{MemoryStore<ai_agent.store.MemoryStore>}
    of the process's own.
    """

    def saveTurn(self, turn: HiddenTurn, owner: str = "") -> Deferred[None]:
        """
        Keep C{turn} under each of its client call ids, for the principal
        named C{owner} only.
        """
        ...

    def findTurn(self, callIds: Sequence[str], owner: str = "") -> Deferred[HiddenTurn | None]:
        """
        The turn C{owner}'s runs saved under any of C{callIds}, or L{None}
        (also when another principal saved one there).
        """
        ...

    def findTurns(
        self, callIdGroups: Sequence[Sequence[str]], owner: str = ""
    ) -> Deferred[list[HiddenTurn | None]]:
        """
        L{findTurn} for each group of call ids (the calls of one assistant
        message), in one read of the store: a conversation with many
        handed-back turns costs one trip to the database, not one each.
        """
        ...


async def restoreConversation(
    conversation: Sequence[ChatMessage], store: TurnStore, owner: str = ""
) -> tuple[list[ChatMessage], list[str]]:
    """
    The conversation with each hidden turn put back in place of the
    client's assistant message that carried its handed-back calls (only the
    turns C{owner}'s runs kept).

    @return: the conversation, and the ids of tool calls whose hidden turn
        was not found (expired, or saved by another instance without a
        shared store): the run goes on from what the client sent.
    """
    restored: list[ChatMessage] = []
    missing: list[str] = []
    groups = [
        [call.id for call in message.toolCalls]
        for message in conversation
        if message.role == "assistant" and message.toolCalls
    ]
    turns = iter(await store.findTurns(groups, owner) if groups else ())
    for message in conversation:
        if message.role != "assistant" or not message.toolCalls:
            restored.append(message)
            continue
        turn = next(turns)
        if turn is None:
            missing.extend(call.id for call in message.toolCalls)
            restored.append(message)
            continue
        restored.extend(turn.before)
        restored.append(turn.assistant)
        restored.extend(turn.after)
    return restored, missing


__all__ = [
    "DEFAULT_TURN_TTL",
    "HiddenTurn",
    "TurnStore",
    "restoreConversation",
]
