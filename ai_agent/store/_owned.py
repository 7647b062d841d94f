# -*- test-case-name: tests.test_tenancy -*-
"""
The run store as one principal sees it: every key is scoped to the
principal (L{Principal.scoped<ai_agent.principals.Principal.scoped>}), so a
document another key stored is never even read, and its absence looks
exactly like an id that was never stored.

Every headend reads and writes stored objects through an L{OwnedStore} (and
hidden turns through L{StoreTurnStore<ai_agent.store.StoreTurnStore>}, which
uses one), never through the raw store, so no read path can forget the
owner.  The APIs to come (tasks, sessions) use the same wrapper.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import attrs
from twisted.internet.defer import Deferred

from ai_agent.principals import Principal
from ai_agent.store._base import RunStore, StoredDocument


@attrs.frozen
class OwnedStore:
    """
    C{store}, seen by C{principal}: the same operations, on keys in the
    principal's own part of the store; documents come back under the keys
    the caller used.
    """

    store: RunStore
    principal: Principal

    @property
    def ttl(self) -> float:
        """
        The store's default time to keep a document.
        """
        return self.store.ttl

    def _key(self, key: str) -> str:
        return self.principal.scoped(key)

    def get(self, namespace: str, key: str) -> Deferred[StoredDocument | None]:
        """
        This principal's document under C{(namespace, key)}, or L{None}.
        """
        return self.getMany(namespace, [key]).addCallback(lambda found: found.get(key))

    def getMany(self, namespace: str, keys: Iterable[str]) -> Deferred[dict[str, StoredDocument]]:
        """
        This principal's documents under any of C{keys}, by key.
        """
        byScoped = {self._key(key): key for key in keys}

        def unscoped(found: dict[str, StoredDocument]) -> dict[str, StoredDocument]:
            return {
                byScoped[scoped]: attrs.evolve(document, key=byScoped[scoped])
                for scoped, document in found.items()
                if scoped in byScoped
            }

        return self.store.getMany(namespace, list(byScoped)).addCallback(unscoped)

    def putEntries(
        self, entries: Iterable[tuple[str, str, Any]], ttl: float | None = None
    ) -> Deferred[None]:
        """
        Store C{(namespace, key, document)} entries for this principal, all
        or none.
        """
        return self.store.putEntries(
            [(namespace, self._key(key), document) for namespace, key, document in entries], ttl
        )

    def putMany(
        self, namespace: str, documents: Mapping[str, Any], ttl: float | None = None
    ) -> Deferred[None]:
        """
        Store several documents of one namespace for this principal.
        """
        return self.putEntries([(namespace, key, doc) for key, doc in documents.items()], ttl)

    def deleteEntries(self, entries: Iterable[tuple[str, str]]) -> Deferred[int]:
        """
        Remove this principal's documents under C{(namespace, key)} entries
        in one transaction; how many there were.
        """
        return self.store.deleteEntries([(namespace, self._key(key)) for namespace, key in entries])


__all__ = ["OwnedStore"]
