# -*- test-case-name: tests.test_store -*-
"""
Hybrid runs' hidden turns (L{ai_agent.clienttools}) kept in the run store,
so that a continuation finds them after a restart or on another instance.
"""

from __future__ import annotations

from typing import Sequence

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ai_agent.clienttools import DEFAULT_TURN_TTL, HiddenTurn
from ai_agent.principals import Principal
from ai_agent.store._base import TURNS, RunStore, StoredDocument
from ai_agent.store._owned import OwnedStore


@attrs.define
class StoreTurnStore:
    """
    A L{TurnStore<ai_agent.clienttools.TurnStore>} on a run store: each
    hidden turn is one document in the C{turns} namespace under each of its
    handed-back call ids, in its owner's part of the store (L{OwnedStore}),
    kept for the store's TTL but at most
    L{DEFAULT_TURN_TTL<ai_agent.clienttools.DEFAULT_TURN_TTL>}.

    A store that fails fails the run with its
    L{StoreError<ai_agent.store.StoreError>} (a 503 when
    the database is unavailable), whether saving a turn or looking one up:
    a continuation without the agent's earlier work would have the model
    redo it (repeat its tool calls), and a run whose turn was not kept
    would hand back calls whose continuation cannot find it.  A turn that
    is simply not found (expired, or never kept) is L{None}.
    """

    log = Logger()

    store: RunStore

    @property
    def ttl(self) -> float:
        """
        How long a hidden turn is kept.
        """
        return min(self.store.ttl, DEFAULT_TURN_TTL)

    def _owned(self, owner: str) -> OwnedStore:
        return OwnedStore(self.store, Principal(owner))

    def saveTurn(self, turn: HiddenTurn, owner: str = "") -> Deferred[None]:
        document = turn.asJSON()
        return self._owned(owner).putMany(
            TURNS, {callId: document for callId in turn.clientCallIds}, self.ttl
        )

    def findTurn(self, callIds: Sequence[str], owner: str = "") -> Deferred[HiddenTurn | None]:
        return self.findTurns([callIds], owner).addCallback(lambda turns: turns[0])

    def findTurns(
        self, callIdGroups: Sequence[Sequence[str]], owner: str = ""
    ) -> Deferred[list[HiddenTurn | None]]:
        def found(documents: dict[str, StoredDocument]) -> list[HiddenTurn | None]:
            return [self._first(callIds, documents) for callIds in callIdGroups]

        everyId = [callId for callIds in callIdGroups for callId in callIds]
        return self._owned(owner).getMany(TURNS, everyId).addCallback(found)

    def _first(
        self, callIds: Sequence[str], documents: dict[str, StoredDocument]
    ) -> HiddenTurn | None:
        """
        The turn of the first of C{callIds} that has a readable one in
        C{documents}.
        """
        for callId in callIds:
            stored = documents.get(callId)
            if stored is None:
                continue
            try:
                return HiddenTurn.fromJSON(stored.document)
            except ValueError as error:
                self.log.warn(
                    "run store: the hidden turn under {callId} is unreadable: {error}",
                    callId=callId,
                    error=str(error),
                )
        return None


__all__ = ["StoreTurnStore"]
