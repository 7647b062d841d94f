# -*- test-case-name: tests.test_store -*-
"""
The run store on a SQL database: one set of queries, run on SQLite or on
PostgreSQL (psycopg 3), always on the store's own threads so the reactor
never waits for the database.

Each store thread holds its own connection, opened on first use, replaced
before use when it has been idle longer than the dialect's C{idleTimeout},
and dropped when the database reports it broken.  An operation that fails
because its connection broke (a restarted PostgreSQL server ends every
connection it had) is run again, once, on a new connection.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
import time
from typing import Any, Callable, Iterable, Mapping, TypeVar

import attrs
import orjson
from twisted.internet.defer import CancelledError, Deferred, DeferredList, TimeoutError
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

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
    StoreUnavailableError,
    checkField,
    checkKey,
    checkNamespace,
    redact,
    redactURL,
    splitStoreOptions,
    urlSecrets,
    usableKeys,
)
from ai_agent.store._reasons import neutralReason

T = TypeVar("T")

#: The schema version this code writes, and the statements that bring a
#: database from the version before to each version.  Written once, in
#: types and syntax both SQLite and PostgreSQL take.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            "CREATE TABLE IF NOT EXISTS ai_agent_store ("
            " ns TEXT NOT NULL,"
            " doc_key TEXT NOT NULL,"
            " body TEXT NOT NULL,"
            " size_bytes BIGINT NOT NULL,"
            " created_at DOUBLE PRECISION NOT NULL,"
            " expires_at DOUBLE PRECISION NOT NULL,"
            " PRIMARY KEY (ns, doc_key))",
            "CREATE INDEX IF NOT EXISTS ai_agent_store_expiry ON ai_agent_store (expires_at)",
            "CREATE INDEX IF NOT EXISTS ai_agent_store_age ON ai_agent_store (created_at)",
        ),
    ),
    (
        2,
        (
            # The counters of limits per key and agent (see ai_agent.quotas).
            "CREATE TABLE IF NOT EXISTS ai_agent_counters ("
            " counter_key TEXT PRIMARY KEY,"
            " value DOUBLE PRECISION NOT NULL,"
            " expires_at DOUBLE PRECISION NOT NULL)",
            "CREATE TABLE IF NOT EXISTS ai_agent_leases ("
            " lease_key TEXT NOT NULL,"
            " holder TEXT NOT NULL,"
            " expires_at DOUBLE PRECISION NOT NULL,"
            " PRIMARY KEY (lease_key, holder))",
        ),
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1][0]

#: The key of the PostgreSQL advisory lock held while migrating.
_MIGRATION_LOCK = 0x41494147  # "AIAG"

#: Keys looked up per query by C{getMany}, well under SQLite's limit on
#: parameters.
_KEYS_PER_QUERY = 200

#: When eviction runs, it brings the store down to this share of its bounds,
#: so that the next puts do not each evict again.
_EVICT_TO = 0.9

#: Seconds a PostgreSQL connection may stay idle before it is replaced at
#: its next use (firewalls and load balancers drop idle connections
#: silently; a server restart leaves them dead).
DEFAULT_IDLE_TIMEOUT = 300.0

#: Seconds after a successful operation during which L{SQLStore.checkAvailable}
#: trusts the store to be up without asking the database.
DEFAULT_LIVENESS_WINDOW = 2.0

_PING = "SELECT 1"

_CREATE_VERSIONS = "CREATE TABLE IF NOT EXISTS ai_agent_store_schema (version INTEGER NOT NULL)"
_READ_VERSION = "SELECT MAX(version) FROM ai_agent_store_schema"
_WRITE_VERSION = "INSERT INTO ai_agent_store_schema (version) VALUES (?)"
_UPSERT = (
    "INSERT INTO ai_agent_store (ns, doc_key, body, size_bytes, created_at, expires_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (ns, doc_key) DO UPDATE SET body = excluded.body,"
    " size_bytes = excluded.size_bytes, created_at = excluded.created_at,"
    " expires_at = excluded.expires_at"
)
_SELECT = (
    "SELECT doc_key, body, created_at, expires_at FROM ai_agent_store"
    " WHERE ns = ? AND expires_at > ? AND doc_key IN ({marks})"
)
# A chain of documents, each naming the next in a field of its JSON (the
# dialect's textField), read in one query: newest first, at most a given
# number, every key after the first being the scope followed by the link.
_CHAIN = (
    "WITH RECURSIVE chain (depth, doc_key, body, created_at, expires_at) AS ("
    " SELECT 1, doc_key, body, created_at, expires_at FROM ai_agent_store"
    "  WHERE ns = ? AND doc_key = ? AND expires_at > ?"
    " UNION ALL"
    " SELECT chain.depth + 1, s.doc_key, s.body, s.created_at, s.expires_at"
    "  FROM chain JOIN ai_agent_store s"
    "   ON s.ns = ? AND s.expires_at > ? AND s.doc_key = CAST(? AS TEXT) || ({link})"
    "  WHERE chain.depth < ?)"
    " SELECT doc_key, body, created_at, expires_at FROM chain ORDER BY depth"
)
_FIND = "SELECT expires_at FROM ai_agent_store WHERE ns = ? AND doc_key = ?"
_DELETE = "DELETE FROM ai_agent_store WHERE ns = ? AND doc_key = ?"
_PURGE = "DELETE FROM ai_agent_store WHERE expires_at <= ?"
_PURGE_COUNTERS = "DELETE FROM ai_agent_counters WHERE expires_at <= ?"
_PURGE_LEASES = "DELETE FROM ai_agent_leases WHERE expires_at <= ?"
# One statement: every process adding to one counter at once gets its own
# new value (the row is locked for the update).
_INCREMENT = (
    "INSERT INTO ai_agent_counters (counter_key, value, expires_at) VALUES (?, ?, ?)"
    " ON CONFLICT (counter_key) DO UPDATE SET"
    " value = CASE WHEN ai_agent_counters.expires_at <= ? THEN excluded.value"
    " ELSE ai_agent_counters.value + excluded.value END,"
    " expires_at = excluded.expires_at"
    " RETURNING value"
)
_EXPIRE_LEASES = "DELETE FROM ai_agent_leases WHERE lease_key = ? AND expires_at <= ?"
_HOLD = (
    "INSERT INTO ai_agent_leases (lease_key, holder, expires_at) SELECT ?, ?, ?"
    " WHERE (SELECT COUNT(*) FROM ai_agent_leases WHERE lease_key = ?) < ?"
)
_RENEW = "UPDATE ai_agent_leases SET expires_at = ? WHERE lease_key = ? AND holder = ?"
_LET_GO = "DELETE FROM ai_agent_leases WHERE lease_key = ? AND holder = ?"
_HELD = "SELECT COUNT(*) FROM ai_agent_leases WHERE lease_key = ? AND expires_at > ?"
_STATS = "SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM ai_agent_store WHERE expires_at > ?"
_STATS_NS = _STATS + " AND ns = ?"
# The newest documents that fit in the bounds are kept; the rest go.
_EVICT = (
    "DELETE FROM ai_agent_store WHERE (ns, doc_key) IN ("
    " SELECT ns, doc_key FROM ("
    "  SELECT ns, doc_key,"
    "   SUM(size_bytes) OVER (ORDER BY created_at DESC, ns, doc_key) AS running,"
    "   ROW_NUMBER() OVER (ORDER BY created_at DESC, ns, doc_key) AS position"
    "  FROM ai_agent_store) AS ranked"
    " WHERE running > ? OR position > ?)"
)


@attrs.frozen
class Dialect:
    """
    What differs between the databases: how to connect, the parameter
    marker, how to take the migration lock, what a broken connection looks
    like, how long a connection may stay idle, and how to describe an error
    without a secret.

    @ivar description: where the database is, fit for a log line.
    @ivar isBroken: whether a connection is unusable (closed, or lost by
        the server); an operation that failed on such a connection is run
        again once on a new one.
    @ivar idleTimeout: seconds after which an idle connection is replaced
        before its next use; L{None}: never.
    """

    name: str
    description: str
    connect: Callable[[], Any] = attrs.field(repr=False)
    marker: str = "?"
    tableExists: str = "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?"
    lockStatements: tuple[str, ...] = ()
    #: Run first in a transaction taking a concurrent-runs lease, with the
    #: lease's key: serialises them per key (PostgreSQL; SQLite has one
    #: writer at a time anyway).
    leaseLock: str | None = None
    errors: tuple[type[BaseException], ...] = ()
    secrets: tuple[str, ...] = attrs.field(default=(), repr=False)
    prepare: Callable[[], None] | None = None
    isBroken: Callable[[Any], bool] = lambda connection: False
    idleTimeout: float | None = None
    afterDelete: str | None = None
    #: The value of the top-level field C{{field}} of the JSON text in
    #: C{{column}} when it is a string, else NULL.
    textField: str = (
        "CASE WHEN json_type({column}, '$.{field}') = 'text'"
        " THEN json_extract({column}, '$.{field}') END"
    )

    def sql(self, query: str) -> str:
        """
        C{query}, written with C{?} markers, in this database's marker.
        """
        return query if self.marker == "?" else query.replace("?", self.marker)

    def explain(self, error: BaseException) -> str:
        """
        The database's message for C{error} on one line (libpq's run over
        several, which would break a log line in two), with secrets removed.
        """
        text = " ".join(str(error).split()) or type(error).__name__
        return redact(text, self.secrets)


def sqliteDialect(path: str, busyTimeout: float = 10.0) -> Dialect:
    """
    SQLite in the file C{path}, in WAL mode so readers never wait for the
    writer (and several processes on one machine can share the file); the
    file (mode 0600) and its directory (mode 0700) are created when missing.
    Deleted documents are overwritten (C{secure_delete}), and the log is
    checkpointed and truncated after a delete, so their text does not stay
    in the file.
    """

    def prepare() -> None:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # Conversations are private: a new file is readable by its owner only
        # (SQLite gives its -wal and -shm files the same mode).
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(path, timeout=busyTimeout, check_same_thread=False)
        try:
            mode = _retryLocked(
                lambda: connection.execute("PRAGMA journal_mode=WAL").fetchone()[0], busyTimeout
            )
            if mode.lower() != "wal":
                raise sqlite3.OperationalError(f"cannot use WAL mode (journal mode is {mode})")
            connection.execute("PRAGMA synchronous=NORMAL")
            # Deleted documents are overwritten, not left in free pages.
            connection.execute("PRAGMA secure_delete=ON")
            connection.execute(f"PRAGMA busy_timeout={int(busyTimeout * 1000)}")
        except BaseException:
            connection.close()
            raise
        return connection

    return Dialect(
        "sqlite",
        f"SQLite {path}",
        connect,
        errors=(sqlite3.Error, OSError),
        prepare=prepare,
        afterDelete="PRAGMA wal_checkpoint(TRUNCATE)",
    )


def _retryLocked(action: Callable[[], T], timeout: float) -> T:
    """
    In a store thread: C{action}, tried again for up to C{timeout} seconds
    while SQLite says the database is locked.  Switching a new file to WAL
    mode while another process does the same is refused at once, without
    SQLite's own busy wait.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
        time.sleep(0.01)


def postgresDialect(
    url: str,
    connectTimeout: float = 10.0,
    statementTimeout: float = 30.0,
    idleTimeout: float = DEFAULT_IDLE_TIMEOUT,
) -> Dialect:
    """
    PostgreSQL at C{url} (C{postgresql://…}), through psycopg 3.  A
    connection attempt gives up after C{connectTimeout} seconds, a
    statement after C{statementTimeout}; a connection idle for longer than
    C{idleTimeout} seconds (or the URL's own C{idle_timeout} parameter,
    which is not passed on to libpq) is replaced before its next use.

    @raise StoreError: when psycopg is not installed.
    @raise ValueError: for an C{idle_timeout} that is not a duration.
    """
    try:
        import psycopg
    except ImportError:
        raise StoreError(
            "a PostgreSQL store needs psycopg: pip install 'ai-agent[postgresql]'"
            " (or 'psycopg[binary]')"
        ) from None
    routePsycopgLogging()
    libpqURL, options = splitStoreOptions(url)
    idleTimeout = options.get("idle_timeout", idleTimeout)

    def connect() -> Any:
        connection = psycopg.connect(
            libpqURL, connect_timeout=max(int(connectTimeout), 1), application_name="ai-agent"
        )
        try:
            # No statement (nor wait for a lock) holds a store thread for ever.
            connection.execute(f"SET statement_timeout = {int(statementTimeout * 1000)}")
            connection.commit()
        except BaseException:
            connection.close()
            raise
        return connection

    def isBroken(connection: Any) -> bool:
        return bool(connection.closed or connection.broken)

    return Dialect(
        "postgresql",
        f"PostgreSQL {redactURL(url)}",
        connect,
        marker="%s",
        tableExists="SELECT to_regclass(%s) IS NOT NULL",
        # PostgreSQL refuses to turn \u0000 and lone surrogates (which the
        # store keeps escaped) into text even in fields not asked for: they
        # become U+FFFD first (escaped backslashes kept apart), which
        # leaves every other field as it was.
        textField=(
            "(SELECT CASE WHEN json_typeof(parsed.j -> '{field}') = 'string'"
            " THEN parsed.j ->> '{field}' END FROM (SELECT CAST(regexp_replace("
            "replace({column}, '\\\\', '\\u005c'),"
            " '\\\\u(0000|[dD][89a-fA-F][0-9a-fA-F]{{2}})', '\\ufffd', 'g') AS json) AS j)"
            " AS parsed)"
        ),
        lockStatements=(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})",),
        leaseLock="SELECT pg_advisory_xact_lock(hashtext(%s))",
        errors=(psycopg.Error,),
        secrets=tuple(urlSecrets(url)),
        isBroken=isBroken,
        idleTimeout=idleTimeout,
    )


#: The log events made of psycopg's own records.
_psycopgLog = Logger(namespace="psycopg")


class _PsycopgToTwisted(logging.Handler):
    """
    psycopg's own log records (it logs through the standard library's
    C{logging}, e.g. C{error ignored in rollback on …}) as one-line events
    of the server's log, instead of bare lines on standard error.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = " ".join(record.getMessage().split())
        except Exception:  # noqa: BLE001 - a record that cannot be formatted
            message = str(record.msg)
        if record.levelno >= logging.ERROR:
            emit = _psycopgLog.error
        elif record.levelno >= logging.WARNING:
            emit = _psycopgLog.warn
        elif record.levelno >= logging.INFO:
            emit = _psycopgLog.info
        else:
            emit = _psycopgLog.debug
        emit("psycopg: {record}", record=message)


def routePsycopgLogging() -> None:
    """
    Send the C{psycopg} logger's records to the server's log (once; the
    standard library's loggers are global).
    """
    logger = logging.getLogger("psycopg")
    if not any(isinstance(handler, _PsycopgToTwisted) for handler in logger.handlers):
        logger.addHandler(_PsycopgToTwisted())
        logger.propagate = False


@attrs.define(eq=False)
class _Operation:
    """
    One piece of database work: skipped if cancelled before it starts.

    @ivar name: what it is, for log lines.
    @ivar started: the store's clock when it was asked for.
    @ivar retry: whether it may run again on a new connection when its
        connection broke under it (see L{SQLStore._transaction}).
    @ivar groupable: whether it may be committed in one transaction with
        other such operations queued at the same time (writes, whose
        outcome does not depend on running alone).
    """

    name: str
    started: float
    retry: bool = True
    groupable: bool = False
    cancelled: bool = False


#: The most queued writes a store thread commits in one transaction.
GROUP_LIMIT = 64


@attrs.define(eq=False)
class _Job:
    """
    One operation handed to a store thread, with the Deferred its result
    is delivered to (on the reactor).
    """

    operation: _Operation
    work: Callable[[Any], Any]
    result: Deferred[Any]


#: Put in a store thread's queue to end that thread.
_STOP = object()


@attrs.define(eq=False)
class _StoreWorkers:
    """
    The store's own threads, fed by one queue: a job costs one C{put} on a
    L{queue.SimpleQueue} to hand over (no thread pool's bookkeeping), and
    one C{callFromThread} for all the jobs a thread ran together.

    A thread that takes a write (L{_Operation.groupable}) also takes the
    writes queued behind it, up to L{GROUP_LIMIT}, and hands them to
    C{run} together, to be committed in one transaction (group commit).
    They are daemon threads, so that a database that stopped answering
    cannot keep the process from exiting.

    @ivar run: called in a store thread with the jobs to run together.
    @ivar exited: called in a store thread as it ends (to close its
        connection).
    """

    count: int
    name: str
    reactor: IReactorFromThreads
    run: Callable[[list[_Job]], None]
    exited: Callable[[], None]
    _queue: queue.SimpleQueue[Any] = attrs.field(factory=queue.SimpleQueue, init=False)
    _threads: list[threading.Thread] = attrs.field(factory=list, init=False)
    _running: int = attrs.field(default=0, init=False)
    _stopped: Deferred[None] = attrs.field(factory=Deferred, init=False)

    def start(self) -> None:
        for number in range(self.count):
            thread = threading.Thread(target=self._serve, name=f"{self.name}-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)
            self._running += 1

    def submit(self, job: _Job) -> None:
        self._queue.put(job)

    def stop(self) -> Deferred[None]:
        """
        End the threads once the jobs queued before are done; the Deferred
        fires when every thread has ended (a hung one never does: leave it).
        """
        for _ in range(self._running):
            self._queue.put(_STOP)
        if not self._running and not self._stopped.called:
            self._stopped.callback(None)
        return _observe(self._stopped)

    def _ended(self) -> None:
        self._running -= 1
        if not self._running:
            self._stopped.callback(None)

    def _serve(self) -> None:
        taken = self._queue.get
        following: Any = None
        while True:
            job = taken() if following is None else following
            following = None
            if job is _STOP:
                break
            batch = [job]
            while job.operation.groupable and len(batch) < GROUP_LIMIT:
                try:
                    following = self._queue.get_nowait()
                except queue.Empty:
                    break
                if following is _STOP or not following.operation.groupable:
                    break
                batch.append(following)
                following = None
            self.run(batch)
        self.exited()
        self.reactor.callFromThread(self._ended)


@attrs.define(eq=False)
class SQLStore:
    """
    The run store on a SQL database (see L{ai_agent.store.RunStore}).

    @ivar dialect: the database.
    @ivar reactor: runs the store threads' results back on the reactor.
    @ivar clock: the time documents are created and expire at, and the
        periodic purge's timer.
    @ivar connections: the store's threads (each with one connection); 1 for
        SQLite, whose writes are serialised anyway.
    @ivar maxBytes: the bound on the documents' total size.
    @ivar maxEntries: the bound on the number of documents.
    @ivar livenessWindow: seconds after an operation succeeded during which
        L{checkAvailable} answers at once, without asking the database.
    """

    log = Logger()

    dialect: Dialect
    reactor: IReactorFromThreads
    clock: IReactorTime
    ttl: float = DEFAULT_TTL
    maxDocumentSize: int = DEFAULT_MAX_DOCUMENT_SIZE
    maxBytes: int = DEFAULT_MAX_BYTES
    maxEntries: int = DEFAULT_MAX_ENTRIES
    purgeInterval: float = DEFAULT_PURGE_INTERVAL
    connections: int = 1
    closeTimeout: float = 10.0
    livenessWindow: float = DEFAULT_LIVENESS_WINDOW
    _threads: _StoreWorkers | None = attrs.field(default=None, init=False)
    _local: threading.local = attrs.field(factory=threading.local, init=False)
    _pending: set[Deferred[Any]] = attrs.field(factory=set, init=False)
    _opening: Deferred[None] | None = attrs.field(default=None, init=False)
    _waiters: list[Deferred[None]] = attrs.field(factory=list, init=False)
    _ready: bool = attrs.field(default=False, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _purger: LoopingCall | None = attrs.field(default=None, init=False)
    _estimate: StoreStats = attrs.field(default=StoreStats(0, 0), init=False)
    _aliveUntil: float = attrs.field(default=float("-inf"), init=False)

    @property
    def description(self) -> str:
        """
        Where the store lives, without a password.
        """
        return self.dialect.description

    # -- the interface --------------------------------------------------

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
        items = list(entries)
        try:
            for namespace, key, _ in items:
                checkNamespace(namespace)
                checkKey(key)
        except StoreError as error:
            return _failed(error)
        now = self.clock.seconds()
        expires = now + (self.ttl if ttl is None else ttl)
        evict = self._overBounds(len(items))
        limit = self.maxDocumentSize

        if not items:
            return _succeeded(None)

        def work(cursor: Any) -> tuple[int, StoreStats | None]:
            rows = []
            for namespace, key, document in items:
                text, size = _encode(document)
                if size > limit:
                    raise DocumentTooLargeError(size, limit)
                rows.append((namespace, key, text, size, now, expires))
            cursor.executemany(self.dialect.sql(_UPSERT), rows)
            added = sum(row[3] for row in rows)
            if evict or self._estimate.bytes + added > self.maxBytes:
                self._evict(cursor)
                return added, self._count(cursor, now)
            return added, None

        def stored(result: tuple[int, StoreStats | None]) -> None:
            added, stats = result
            if stats is None:
                # An estimate (a replaced document counts twice) until the
                # next purge counts again; it only decides when to evict.
                before = self._estimate
                stats = StoreStats(before.entries + len(items), before.bytes + added)
            self._estimate = stats

        return self._call("put", work, groupable=True).addCallback(stored)

    def get(self, namespace: str, key: str) -> Deferred[StoredDocument | None]:
        return self.getMany(namespace, [key]).addCallback(lambda found: found.get(key))

    def getMany(self, namespace: str, keys: Iterable[str]) -> Deferred[dict[str, StoredDocument]]:
        checkNamespace(namespace)
        wanted = usableKeys(keys)
        now = self.clock.seconds()

        def work(cursor: Any) -> dict[str, StoredDocument]:
            found: dict[str, StoredDocument] = {}
            for start in range(0, len(wanted), _KEYS_PER_QUERY):
                chunk = wanted[start : start + _KEYS_PER_QUERY]
                query = _SELECT.format(marks=", ".join("?" * len(chunk)))
                cursor.execute(self.dialect.sql(query), (namespace, now, *chunk))
                for key, body, created, expires in cursor.fetchall():
                    found[key] = StoredDocument(
                        namespace, key, json.loads(body), float(created), float(expires)
                    )
            return found

        if not wanted:
            return _succeeded({})
        return self._call("get", work)

    def getChain(
        self, namespace: str, key: str, link: str, limit: int, scope: str = ""
    ) -> Deferred[list[StoredDocument]]:
        checkNamespace(namespace)
        checkField(link)
        if limit <= 0 or not usableKeys([key]):
            return _succeeded([])
        now = self.clock.seconds()
        query = self.dialect.sql(
            _CHAIN.format(link=self.dialect.textField.format(column="chain.body", field=link))
        )

        def work(cursor: Any) -> list[StoredDocument]:
            cursor.execute(query, (namespace, key, now, namespace, now, scope, limit))
            return [
                StoredDocument(namespace, found, json.loads(body), float(created), float(expires))
                for found, body, created, expires in cursor.fetchall()
            ]

        return self._call("get", work)

    def delete(self, namespace: str, key: str) -> Deferred[bool]:
        checkNamespace(namespace)
        if not usableKeys([key]):
            return _succeeded(False)
        now = self.clock.seconds()

        def work(cursor: Any) -> bool:
            cursor.execute(self.dialect.sql(_FIND), (namespace, key))
            row = cursor.fetchone()
            if row is None:
                return False
            cursor.execute(self.dialect.sql(_DELETE), (namespace, key))
            return bool(float(row[0]) > now)

        return self._call("delete", work)

    def deleteEntries(self, entries: Iterable[tuple[str, str]]) -> Deferred[int]:
        names = [(namespace, key) for namespace, key in entries if usableKeys([key])]
        for namespace, _ in names:
            checkNamespace(namespace)
        if not names:
            return _succeeded(0)

        def work(cursor: Any) -> int:
            removed = 0
            for namespace, key in names:
                cursor.execute(self.dialect.sql(_DELETE), (namespace, key))
                removed += max(cursor.rowcount, 0)
            return removed

        def deleted(removed: int) -> Deferred[int]:
            if self.dialect.afterDelete is None or not removed:
                return _succeeded(removed)
            # Best effort: the old pages left in SQLite's write-ahead log go
            # too (readers in other processes can keep some until later).
            statement = self.dialect.afterDelete
            return (
                self._call("checkpoint", lambda cursor: cursor.execute(statement))
                .addErrback(lambda failure: None)
                .addCallback(lambda _: removed)
            )

        return self._call("delete", work).addCallback(deleted)

    def purge(self) -> Deferred[int]:
        now = self.clock.seconds()

        def work(cursor: Any) -> tuple[int, StoreStats]:
            cursor.execute(self.dialect.sql(_PURGE), (now,))
            removed = max(cursor.rowcount, 0)
            cursor.execute(self.dialect.sql(_PURGE_COUNTERS), (now,))
            cursor.execute(self.dialect.sql(_PURGE_LEASES), (now,))
            stats = self._count(cursor, now)
            if stats.entries > self.maxEntries or stats.bytes > self.maxBytes:
                removed += self._evict(cursor)
                stats = self._count(cursor, now)
            return removed, stats

        def purged(result: tuple[int, StoreStats]) -> int:
            removed, self._estimate = result
            return removed

        return self._call("purge", work).addCallback(purged)

    # --- counters of limits (ai_agent.quotas.Counters) ---------------------------

    def increment(self, key: str, amount: float, expiresAt: float) -> Deferred[float]:
        """
        Add C{amount} to the counter C{key} (an expired one starts again
        from 0), in one statement; fire with its new value.  Not retried on
        a broken connection (the first attempt's commit may have landed).
        """
        now = self.clock.seconds()
        sql = self.dialect.sql(_INCREMENT)

        def work(cursor: Any) -> float:
            cursor.execute(sql, (key, amount, expiresAt, now))
            return float(cursor.fetchone()[0])

        return self._call("increment", work, retry=False)

    def hold(self, key: str, holder: str, limit: int, expiresAt: float) -> Deferred[bool]:
        """
        Take one of C{limit} leases on C{key} as C{holder} until
        C{expiresAt}, when fewer are held (expired ones are dropped first):
        fire with whether it was taken.
        """
        now = self.clock.seconds()
        dialect = self.dialect

        def work(cursor: Any) -> bool:
            if dialect.name == "sqlite":
                # The write lock first: the count and the insert see the
                # same leases as every other process.
                cursor.execute("BEGIN IMMEDIATE")
            if dialect.leaseLock is not None:
                cursor.execute(dialect.leaseLock, (key,))
            cursor.execute(dialect.sql(_EXPIRE_LEASES), (key, now))
            cursor.execute(dialect.sql(_HOLD), (key, holder, expiresAt, key, limit))
            return bool(cursor.rowcount == 1)

        return self._call("hold", work, retry=False)

    def renew(self, key: str, holder: str, expiresAt: float) -> Deferred[None]:
        """
        Move the expiry of C{holder}'s lease on C{key}.
        """

        def work(cursor: Any) -> None:
            cursor.execute(self.dialect.sql(_RENEW), (expiresAt, key, holder))

        return self._call("renew", work)

    def letGo(self, key: str, holder: str) -> Deferred[None]:
        """
        Give back C{holder}'s lease on C{key}.
        """

        def work(cursor: Any) -> None:
            cursor.execute(self.dialect.sql(_LET_GO), (key, holder))

        return self._call("letGo", work)

    def held(self, key: str) -> Deferred[int]:
        """
        How many unexpired leases on C{key} there are.
        """
        now = self.clock.seconds()

        def work(cursor: Any) -> int:
            cursor.execute(self.dialect.sql(_HELD), (key, now))
            return int(cursor.fetchone()[0])

        return self._call("held", work)

    def stats(self, namespace: str | None = None) -> Deferred[StoreStats]:
        if namespace is not None:
            checkNamespace(namespace)
        now = self.clock.seconds()
        return self._call("stats", lambda cursor: self._count(cursor, now, namespace))

    def checkAvailable(self) -> Deferred[None]:
        """
        Fail with L{StoreUnavailableError} when the database cannot be used
        now, before a request spends work that it could not keep.  While
        operations succeed this costs nothing (an operation succeeded in the
        last C{livenessWindow} seconds: no question is asked); otherwise, and
        after any failure, it is a C{SELECT 1} on a store thread (which also
        replaces connections the database dropped).
        """
        if self._ready and not self._closed and self.clock.seconds() < self._aliveUntil:
            return _succeeded(None)
        return self._call("check", _ping)

    def start(self) -> Deferred[None]:
        """
        Open the store and start the periodic purge.  Fails (after logging
        why) when the database cannot be opened; operations then try again.
        """
        if self._closed:
            return _failed(StoreError("the run store is closed"))
        if self._purger is None:
            self._purger = LoopingCall(lambda: Deferred.fromCoroutine(self._purgeQuietly()))
            self._purger.clock = self.clock
            self._purger.start(self.purgeInterval, now=False)
        return self._whenReady()

    def close(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._close())

    # -- lifecycle ------------------------------------------------------

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._purger is not None and self._purger.running:
            self._purger.stop()
        # Operations already handed to the database finish, and their callers
        # get their results, for up to closeTimeout seconds.
        deadline = self.clock.seconds() + self.closeTimeout
        while self._pending and self.clock.seconds() < deadline:
            waiting = DeferredList([_observe(d) for d in self._pending], consumeErrors=True)
            waiting.addTimeout(max(deadline - self.clock.seconds(), 0.0), self.clock)
            try:
                await waiting
            except TimeoutError:
                break
        threads, self._threads = self._threads, None
        if threads is None:
            return
        if self._pending:
            self.log.warn(
                "run store ({store}): {count} operations still running after"
                " {timeout}s; closing without them",
                store=self.description,
                count=len(self._pending),
                timeout=self.closeTimeout,
            )
            # Waiting would wait for them: their threads end when they do.
            threads.stop()
            return
        # Each thread closes its own connection as it ends.
        await threads.stop()
        self.log.info("run store closed ({store})", store=self.description)

    def _whenReady(self) -> Deferred[None]:
        """
        A Deferred of this caller's own that fires once the store is open.
        Cancelling it leaves the opening alone.
        """
        if self._ready:
            return _succeeded(None)
        if self._closed:
            return _failed(StoreError("the run store is closed"))

        def cancel(waiter: Deferred[None]) -> None:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

        waiter: Deferred[None] = Deferred(cancel)
        self._waiters.append(waiter)
        if self._opening is None:
            self._opening = Deferred.fromCoroutine(self._open())
            self._opening.addBoth(self._openFinished)
        return waiter

    def _openFinished(self, result: None | Failure) -> None:
        self._opening = None
        waiters, self._waiters = self._waiters, []
        if isinstance(result, Failure):
            error = result.value
            message = error.message if isinstance(error, StoreError) else str(error)
            self.log.error(
                "cannot open the run store ({store}): {problem}",
                store=self.description,
                problem=message,
            )
            for waiter in waiters:
                waiter.errback(Failure(error))
        else:
            for waiter in waiters:
                waiter.callback(None)

    async def _open(self) -> None:
        if self._threads is None:
            self._threads = _StoreWorkers(
                self.connections,
                "ai-agent-store",
                self.reactor,
                self._runJobs,
                self._closeConnection,
            )
            self._threads.start()
        now = self.clock.seconds()
        version, stats = await self._inThread("open", lambda cursor: self._migrate(cursor, now))
        if self._closed:
            raise StoreError("the run store is closed")
        self._estimate = stats
        self._ready = True
        self.log.info(
            "run store open ({store}, schema {version}): {entries} documents, {size} bytes",
            store=self.description,
            version=version,
            entries=stats.entries,
            size=stats.bytes,
        )

    def _migrate(self, cursor: Any, now: float) -> tuple[int, StoreStats]:
        if self.dialect.name == "sqlite":
            # Take the write lock first: two processes opening the same file
            # then migrate one after the other.
            cursor.execute("BEGIN IMMEDIATE")
        for statement in self.dialect.lockStatements:
            cursor.execute(statement)
        # Only what is missing is created, so a user without the right to
        # create tables can use tables created for it.
        cursor.execute(self.dialect.tableExists, ("ai_agent_store_schema",))
        if not cursor.fetchone()[0]:
            cursor.execute(_CREATE_VERSIONS)
        cursor.execute(_READ_VERSION)
        version = cursor.fetchone()[0] or 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the run store's schema is version {version}, newer than this"
                f" ai-agent knows ({SCHEMA_VERSION}); upgrade ai-agent"
            )
        for target, statements in MIGRATIONS:
            if target > version:
                for statement in statements:
                    cursor.execute(statement)
                cursor.execute(self.dialect.sql(_WRITE_VERSION), (target,))
                version = target
        return version, self._count(cursor, now)

    async def _purgeQuietly(self) -> None:
        try:
            removed = await self.purge()
        except StoreError as error:
            self.log.warn("run store purge failed: {problem}", problem=error.message)
            return
        if removed:
            self.log.info("run store purge removed {removed} documents", removed=removed)

    # -- database work --------------------------------------------------

    def _overBounds(self, adding: int) -> bool:
        estimate = self._estimate
        return estimate.entries + adding > self.maxEntries or estimate.bytes > self.maxBytes

    def _count(self, cursor: Any, now: float, namespace: str | None = None) -> StoreStats:
        if namespace is None:
            cursor.execute(self.dialect.sql(_STATS), (now,))
        else:
            cursor.execute(self.dialect.sql(_STATS_NS), (now, namespace))
        entries, size = cursor.fetchone()
        return StoreStats(int(entries), int(size))

    def _evict(self, cursor: Any) -> int:
        cursor.execute(
            self.dialect.sql(_EVICT),
            (int(self.maxBytes * _EVICT_TO), int(self.maxEntries * _EVICT_TO)),
        )
        removed = max(cursor.rowcount, 0)
        if removed:
            self.log.warn(
                "run store over its bounds ({maxEntries} documents, {maxBytes} bytes):"
                " evicted the {removed} oldest",
                maxEntries=self.maxEntries,
                maxBytes=self.maxBytes,
                removed=removed,
            )
        return removed

    def _call(
        self, name: str, work: Callable[[Any], T], retry: bool = True, groupable: bool = False
    ) -> Deferred[T]:
        """
        Run C{work} with a cursor once the store is open.

        @param retry: whether C{work} may run a second time on a new
            connection when its connection broke under it: only for work
            whose second run leaves the database as one run would (see
            L{_transaction}).
        @param groupable: whether C{work} may share its transaction with
            other such work queued at the same time (see L{_runJobs}).
        """

        if self._ready:
            return self._inThread(name, work, retry, groupable)

        async def call() -> T:
            await self._whenReady()
            return await self._inThread(name, work, retry, groupable)

        return Deferred.fromCoroutine(call())

    def _inThread(
        self, name: str, work: Callable[[Any], T], retry: bool = True, groupable: bool = False
    ) -> Deferred[T]:
        """
        Run C{work(cursor)} in one transaction on a store thread (with other
        writes queued at the same time when C{groupable}: see L{_runJobs}).
        The returned Deferred is the caller's own: cancelling it skips the
        work if it has not started, and fires it with L{CancelledError} at
        once.
        """
        if self._closed and name != "open":
            return _failed(StoreError("the run store is closed"))
        threads = self._threads
        if threads is None:
            return _failed(StoreError("the run store is not open"))
        operation = _Operation(name, self.clock.seconds(), retry, groupable)
        inner: Deferred[T] = Deferred()
        threads.submit(_Job(operation, work, inner))
        self._pending.add(inner)

        def cancel(outer: Deferred[T]) -> None:
            operation.cancelled = True

        outer: Deferred[T] = Deferred(cancel)

        def done(result: T | Failure) -> None:
            self._pending.discard(inner)
            if outer.called:
                return  # cancelled: nobody is waiting
            if isinstance(result, Failure):
                translated = self._translate(name, result)
                if isinstance(translated.value, StoreUnavailableError):
                    # The next checkAvailable asks the database again.
                    self._aliveUntil = float("-inf")
                outer.errback(translated)
            else:
                self._aliveUntil = self.clock.seconds() + self.livenessWindow
                outer.callback(result)

        inner.addBoth(done)
        return outer

    def _translate(self, name: str, failure: Failure) -> Failure:
        error = failure.value
        if isinstance(error, (StoreError, CancelledError)):
            return failure
        if isinstance(error, self.dialect.errors):
            problem = self.dialect.explain(error)
            self.log.error(
                "run store {operation} failed ({store}): {problem}",
                operation=name,
                store=self.description,
                problem=problem,
            )
            # The client is told why in words of its own: the database's
            # message names the file, host or user (the log has it).
            return Failure(
                StoreUnavailableError(f"the run store is unavailable: {neutralReason(error)}")
            )
        return failure

    def _runJobs(self, jobs: list[_Job]) -> None:
        """
        In a store thread: run C{jobs} and deliver each one's outcome on the
        reactor (one C{callFromThread} for all).  Several jobs (writes
        queued together) share one transaction, committed once: each
        caller's Deferred fires after that commit.  When the database
        fails the shared transaction, every job fails with its error (a
        503 for each caller, after the one retry on a new connection that
        any transaction gets); when one job's own work fails it (a document
        too large), each job runs again alone, so that only that caller
        fails.
        """
        live = [job for job in jobs if not job.operation.cancelled]
        outcomes: list[tuple[_Job, Any]] = [
            (job, Failure(CancelledError())) for job in jobs if job.operation.cancelled
        ]
        if len(live) > 1:
            group = _Operation(
                "put",
                min(job.operation.started for job in live),
                all(job.operation.retry for job in live),
            )
            try:
                results = self._transaction(group, lambda cursor: _together(live, cursor))
            except self.dialect.errors:
                failure = Failure()
                outcomes.extend((job, failure) for job in live)
                live = []
            except BaseException:
                pass  # one job's own failure: each alone, below
            else:
                outcomes.extend(zip(live, results, strict=True))
                live = []
        for job in live:
            try:
                outcomes.append((job, self._transaction(job.operation, job.work)))
            except BaseException:
                outcomes.append((job, Failure()))
        self.reactor.callFromThread(_deliver, outcomes)

    def _transaction(self, operation: _Operation, work: Callable[[Any], T]) -> T:
        """
        In a store thread: C{work} in one transaction on this thread's
        connection; when it fails because that connection broke (the
        database restarted, or dropped it), once more on a new connection.

        Running C{work} again is safe for every operation of this store:
        reads change nothing; a put is an upsert by key of values fixed
        before the first attempt (the same documents, creation and expiry
        times), so running it twice leaves what running it once does, even
        when the first attempt's commit reached the database before the
        connection broke; a delete or a purge of what is already gone
        removes nothing more (a delete whose first commit landed then
        reports that there was nothing to delete); eviction only brings the store down to its
        bounds; the migration checks the schema version first.  A second
        failure is the caller's (a 503): never a third attempt.
        """
        if operation.cancelled:
            raise CancelledError()
        connection = self._connection(operation.started)
        try:
            return self._attempt(connection, work)
        except self.dialect.errors as error:
            if not (operation.retry and self.dialect.isBroken(connection)):
                raise
            if operation.cancelled:
                raise CancelledError() from None
            self.log.warn(
                "run store ({store}): the database dropped a connection ({problem});"
                " {operation} tried again on a new one",
                store=self.description,
                problem=self.dialect.explain(error),
                operation=operation.name,
            )
        return self._attempt(self._connection(operation.started), work)

    def _connection(self, now: float) -> Any:
        """
        In a store thread: this thread's connection, opened when it has none,
        replaced when it is broken or has been idle longer than the
        dialect's C{idleTimeout}.
        """
        local = self._local
        connection = getattr(local, "connection", None)
        if connection is not None:
            idleTimeout = self.dialect.idleTimeout
            if self.dialect.isBroken(connection) or (
                idleTimeout is not None and now - local.lastUsed > idleTimeout
            ):
                self._dropConnection(connection)
                connection = None
        if connection is None:
            if self.dialect.prepare is not None:
                self.dialect.prepare()
            connection = self.dialect.connect()
            local.connection = connection
            local.lastUsed = now
        local.lastUsed = max(local.lastUsed, now)
        return connection

    def _attempt(self, connection: Any, work: Callable[[Any], T]) -> T:
        """
        In a store thread: C{work} in one transaction on C{connection},
        which is dropped if it turns out to be broken.
        """
        try:
            cursor = connection.cursor()
            try:
                result = work(cursor)
            finally:
                cursor.close()
            connection.commit()
            return result
        except BaseException:
            try:
                connection.rollback()
            except BaseException:
                pass  # the connection is dropped below if it is broken
            if self.dialect.isBroken(connection):
                self._dropConnection(connection)
            raise

    def _dropConnection(self, connection: Any) -> None:
        self._local.connection = None
        try:
            connection.close()
        except BaseException:
            pass  # already unusable

    def _closeConnection(self) -> None:
        """
        In a store thread, as it ends: close its connection, if it has one.
        """
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            self._dropConnection(connection)


def _together(jobs: list[_Job], cursor: Any) -> list[Any]:
    """
    In a store thread: the work of C{jobs} on one cursor, in order; a job
    cancelled while the ones before it ran is skipped (its outcome a
    L{CancelledError} L{Failure}).
    """
    return [
        Failure(CancelledError()) if job.operation.cancelled else job.work(cursor) for job in jobs
    ]


def _deliver(outcomes: list[tuple[_Job, Any]]) -> None:
    """
    On the reactor: each job's result (or L{Failure}) to its Deferred.
    """
    for job, outcome in outcomes:
        if isinstance(outcome, Failure):
            job.result.errback(outcome)
        else:
            job.result.callback(outcome)


def _ping(cursor: Any) -> None:
    """
    The cheapest question a database answers.
    """
    cursor.execute(_PING)
    cursor.fetchone()


def _encode(document: Any) -> tuple[str, int]:
    """
    The JSON text of C{document} and its size in bytes (UTF-8): written by
    orjson (a tenth of the json module's time); what orjson refuses (a lone
    surrogate, an integer past 64 bits, a key that is not a string) by the
    json module, as before.  Not a number (NaN, infinities) is written as
    C{null} by orjson; no API's parser lets one into a document.  The
    json module's encoder is one C call that keeps every other thread, the
    reactor's among them, waiting while it writes (an 8 MiB prompt: 30-40
    ms; orjson: 3-4 ms).
    """
    try:
        encoded = orjson.dumps(document)
        return encoded.decode("utf-8"), len(encoded)
    except orjson.JSONEncodeError:
        pass
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        # Lone surrogates cannot be stored as text; escape everything.
        text = json.dumps(document, separators=(",", ":"), allow_nan=False)
        size = len(text)
    return text, size


def _observe(d: Deferred[Any]) -> Deferred[None]:
    """
    A Deferred firing when C{d} does; cancelling it leaves C{d} alone.
    """
    observer: Deferred[None] = Deferred()

    def fired(result: Any) -> Any:
        if not observer.called:
            observer.callback(None)
        return result

    d.addBoth(fired)
    return observer


def _succeeded(value: T) -> Deferred[T]:
    d: Deferred[T] = Deferred()
    d.callback(value)
    return d


def _failed(error: BaseException) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(Failure(error))
    return d


__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_LIVENESS_WINDOW",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Dialect",
    "SQLStore",
    "postgresDialect",
    "sqliteDialect",
]
