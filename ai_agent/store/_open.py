# -*- test-case-name: tests.test_store -*-
"""
Choosing a run store from the C{--store} setting, and the service that opens
it when the server starts and closes it when the server stops.
"""

from __future__ import annotations

import os
from typing import Any, Mapping
from urllib.parse import urlsplit

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ai_agent.store._base import (
    DEFAULT_TTL,
    RunStore,
    StoreError,
    defaultStorePath,
    isPostgresURL,
    redactURL,
    splitStoreOptions,
)
from ai_agent.store._memory import MemoryStore
from ai_agent.store._sql import SQLStore, postgresDialect, sqliteDialect

log = Logger()

#: Threads (each with one connection) of a PostgreSQL store in one process.
POSTGRES_CONNECTIONS = 4


def describeLocation(location: str | None) -> str:
    """
    A C{--store} value fit for a log line or an error (no password).
    """
    if location is None:
        return "the default SQLite file"
    return redactURL(location) if isPostgresURL(location) else location


def checkLocation(location: str | None) -> None:
    """
    Check a C{--store} value without touching the database.

    @raise ValueError: for an empty value or a PostgreSQL URL that cannot be
        parsed (a bad port, or an C{idle_timeout} that is not a duration);
        the message has no password.
    """
    if location is None or location in ("none", "memory"):
        return
    if not location.strip():
        raise ValueError("--store needs a file, a postgresql:// URL, memory or none")
    if isPostgresURL(location):
        try:
            _ = urlsplit(location).port  # raises for a bad port
        except ValueError:
            raise ValueError(
                f"{describeLocation(location)} is not a PostgreSQL URL"
                " (postgresql://user@host:5432/database)"
            ) from None
        try:
            splitStoreOptions(location)
        except ValueError as error:
            raise ValueError(f"{describeLocation(location)}: {error}") from None


def makeStore(
    location: str | None,
    reactor: Any,
    clock: Any = None,
    ttl: float = DEFAULT_TTL,
    environ: Mapping[str, str] | None = None,
    **limits: Any,
) -> RunStore | None:
    """
    The run store C{--store} asks for, not yet opened:

      - nothing: SQLite in L{defaultStorePath};
      - C{none}: no store (L{None});
      - C{memory}: L{MemoryStore}, in this process only;
      - C{postgresql://…} or C{postgres://…}: PostgreSQL;
      - anything else: a SQLite file (C{~} is expanded).

    @param clock: the time source for expiry and the purge timer; the
        reactor when not given.
    @param limits: C{maxDocumentSize}, C{maxBytes}, C{maxEntries},
        C{purgeInterval}.
    """
    clock = reactor if clock is None else clock
    if location == "none":
        return None
    if location == "memory":
        return MemoryStore(clock, ttl, **limits)
    if location is not None and isPostgresURL(location):
        return SQLStore(
            postgresDialect(location),
            reactor,
            clock,
            ttl,
            connections=POSTGRES_CONNECTIONS,
            **limits,
        )
    path = defaultStorePath(environ) if location is None else os.path.expanduser(location)
    return SQLStore(sqliteDialect(path), reactor, clock, ttl, connections=1, **limits)


class StoreService(Service):
    """
    Opens a run store when started (without holding up the server's start:
    operations wait for it, and retry when it failed) and closes it when
    stopped.
    """

    def __init__(self, store: RunStore) -> None:
        self.store = store

    def startService(self) -> None:
        Service.startService(self)
        # Failures are logged by the store; operations try to open it again.
        self.store.start().addErrback(_ignoreOpenFailure)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return self.store.close()


def _ignoreOpenFailure(failure: Failure) -> None:
    failure.trap(StoreError)


__all__ = ["POSTGRES_CONNECTIONS", "StoreService", "checkLocation", "describeLocation", "makeStore"]
