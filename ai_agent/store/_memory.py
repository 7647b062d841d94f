# -*- test-case-name: tests.test_store -*-
"""
A run store in this process's memory: for tests, and for C{--store memory}
(one process, nothing kept across a restart, nothing shared between
workers).  Same behaviour as the SQL store: JSON copies, expiry, the size
limit and eviction of the oldest documents past its bounds; every
operation's Deferred has already fired when it is returned.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ai_agent.store._base import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_DOCUMENT_SIZE,
    DEFAULT_MAX_ENTRIES,
    DEFAULT_PURGE_INTERVAL,
    DEFAULT_TTL,
    DocumentTooLargeError,
    StoredDocument,
    StoreError,
    StoreStats,
    checkKey,
    checkNamespace,
    usableKeys,
)
from ai_agent.store._sql import _EVICT_TO, _encode


@attrs.frozen
class _Entry:
    text: str
    size: int
    createdAt: float
    expiresAt: float
    order: int


@attrs.define(eq=False)
class MemoryStore:
    """
    The run store in a dictionary (see L{ai_agent.store.RunStore}).
    """

    log = Logger()

    clock: IReactorTime
    ttl: float = DEFAULT_TTL
    maxDocumentSize: int = DEFAULT_MAX_DOCUMENT_SIZE
    maxBytes: int = DEFAULT_MAX_BYTES
    maxEntries: int = DEFAULT_MAX_ENTRIES
    purgeInterval: float = DEFAULT_PURGE_INTERVAL
    _entries: dict[tuple[str, str], _Entry] = attrs.field(factory=dict, init=False)
    _bytes: int = attrs.field(default=0, init=False)
    _counter: int = attrs.field(default=0, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _purger: LoopingCall | None = attrs.field(default=None, init=False)

    @property
    def description(self) -> str:
        """
        Where the store lives.
        """
        return "memory (this process only)"

    def put(
        self, namespace: str, key: str, document: Any, ttl: float | None = None
    ) -> Deferred[None]:
        return self.putMany(namespace, {key: document}, ttl)

    def putMany(
        self, namespace: str, documents: Mapping[str, Any], ttl: float | None = None
    ) -> Deferred[None]:
        return self.putEntries(
            [(namespace, key, document) for key, document in documents.items()], ttl
        )

    def putEntries(
        self, entries: Iterable[tuple[str, str, Any]], ttl: float | None = None
    ) -> Deferred[None]:
        if self._closed:
            return fail(StoreError("the run store is closed"))
        now = self.clock.seconds()
        expires = now + (self.ttl if ttl is None else ttl)
        encoded = []
        try:
            for namespace, key, document in entries:
                checkNamespace(namespace)
                checkKey(key)
                text, size = _encode(document)
                if size > self.maxDocumentSize:
                    raise DocumentTooLargeError(size, self.maxDocumentSize)
                encoded.append((namespace, key, text, size))
        except StoreError as error:
            return fail(error)
        for namespace, key, text, size in encoded:
            self._remove((namespace, key))
            self._counter += 1
            self._entries[(namespace, key)] = _Entry(text, size, now, expires, self._counter)
            self._bytes += size
        if len(self._entries) > self.maxEntries or self._bytes > self.maxBytes:
            self._evict()
        return succeed(None)

    def get(self, namespace: str, key: str) -> Deferred[StoredDocument | None]:
        return self.getMany(namespace, [key]).addCallback(lambda found: found.get(key))

    def getMany(self, namespace: str, keys: Iterable[str]) -> Deferred[dict[str, StoredDocument]]:
        checkNamespace(namespace)
        if self._closed:
            return fail(StoreError("the run store is closed"))
        now = self.clock.seconds()
        found = {}
        for key in usableKeys(keys):
            entry = self._entries.get((namespace, key))
            if entry is not None and entry.expiresAt > now:
                found[key] = StoredDocument(
                    namespace, key, json.loads(entry.text), entry.createdAt, entry.expiresAt
                )
        return succeed(found)

    def delete(self, namespace: str, key: str) -> Deferred[bool]:
        checkNamespace(namespace)
        if self._closed:
            return fail(StoreError("the run store is closed"))
        entry = self._remove((namespace, key))
        return succeed(entry is not None and entry.expiresAt > self.clock.seconds())

    def deleteEntries(self, entries: Iterable[tuple[str, str]]) -> Deferred[int]:
        names = list(entries)
        for namespace, _ in names:
            checkNamespace(namespace)
        if self._closed:
            return fail(StoreError("the run store is closed"))
        return succeed(sum(self._remove(name) is not None for name in names))

    def purge(self) -> Deferred[int]:
        if self._closed:
            return fail(StoreError("the run store is closed"))
        return succeed(self._purgeNow())

    def _purgeNow(self) -> int:
        now = self.clock.seconds()
        expired = [name for name, entry in self._entries.items() if entry.expiresAt <= now]
        for name in expired:
            self._remove(name)
        removed = len(expired)
        if len(self._entries) > self.maxEntries or self._bytes > self.maxBytes:
            removed += self._evict()
        return removed

    def stats(self, namespace: str | None = None) -> Deferred[StoreStats]:
        if self._closed:
            return fail(StoreError("the run store is closed"))
        now = self.clock.seconds()
        live = [
            entry
            for (ns, _), entry in self._entries.items()
            if entry.expiresAt > now and (namespace is None or ns == namespace)
        ]
        return succeed(StoreStats(len(live), sum(entry.size for entry in live)))

    def checkAvailable(self) -> Deferred[None]:
        # Memory is always there; only a closed store refuses.
        if self._closed:
            return fail(StoreError("the run store is closed"))
        return succeed(None)

    def start(self) -> Deferred[None]:
        if self._closed:
            return fail(StoreError("the run store is closed"))
        if self._purger is None:
            self._purger = LoopingCall(self._purgeQuietly)
            self._purger.clock = self.clock
            self._purger.start(self.purgeInterval, now=False)
        return succeed(None)

    def close(self) -> Deferred[None]:
        self._closed = True
        if self._purger is not None and self._purger.running:
            self._purger.stop()
        self._entries.clear()
        self._bytes = 0
        return succeed(None)

    def _purgeQuietly(self) -> None:
        removed = self._purgeNow()
        if removed:
            self.log.info("run store purge removed {removed} documents", removed=removed)

    def _remove(self, name: tuple[str, str]) -> _Entry | None:
        entry = self._entries.pop(name, None)
        if entry is not None:
            self._bytes -= entry.size
        return entry

    def _evict(self) -> int:
        """
        Remove the oldest documents until the store is within its bounds,
        with room to spare.
        """
        newestFirst = sorted(
            self._entries.items(), key=lambda item: (item[1].createdAt, item[1].order), reverse=True
        )
        keepBytes, keepEntries = int(self.maxBytes * _EVICT_TO), int(self.maxEntries * _EVICT_TO)
        total = 0
        removed = 0
        for position, (name, entry) in enumerate(newestFirst, 1):
            total += entry.size
            if total > keepBytes or position > keepEntries:
                self._remove(name)
                removed += 1
        if removed:
            self.log.warn(
                "run store over its bounds: evicted the {removed} oldest", removed=removed
            )
        return removed


__all__ = ["MemoryStore"]
