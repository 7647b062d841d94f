# -*- test-case-name: tests.test_store -*-
"""
The run store: JSON documents kept under a namespace and a key until they
expire, shared by the hybrid-run continuation (hidden agent turns, keyed by
tool-call id) and the Responses API (stored responses).  SQLite by default,
PostgreSQL for several server instances; see docs/store.md.
"""

from ai_agent.store._base import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_DOCUMENT_SIZE,
    DEFAULT_MAX_ENTRIES,
    DEFAULT_PURGE_INTERVAL,
    DEFAULT_TTL,
    MAX_KEY_LENGTH,
    RESPONSES,
    TURNS,
    DocumentTooLargeError,
    RunStore,
    StoredDocument,
    StoreError,
    StoreStats,
    StoreUnavailableError,
    defaultStorePath,
    parseDuration,
    redactURL,
)
from ai_agent.store._memory import MemoryStore
from ai_agent.store._open import StoreService, checkLocation, describeLocation, makeStore
from ai_agent.store._owned import OwnedStore
from ai_agent.store._sql import SCHEMA_VERSION, SQLStore, postgresDialect, sqliteDialect
from ai_agent.store._turns import StoreTurnStore

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DOCUMENT_SIZE",
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_PURGE_INTERVAL",
    "DEFAULT_TTL",
    "MAX_KEY_LENGTH",
    "RESPONSES",
    "SCHEMA_VERSION",
    "TURNS",
    "DocumentTooLargeError",
    "MemoryStore",
    "OwnedStore",
    "RunStore",
    "SQLStore",
    "StoreError",
    "StoreService",
    "StoreStats",
    "StoreTurnStore",
    "StoreUnavailableError",
    "StoredDocument",
    "checkLocation",
    "defaultStorePath",
    "describeLocation",
    "makeStore",
    "parseDuration",
    "postgresDialect",
    "redactURL",
    "sqliteDialect",
]
