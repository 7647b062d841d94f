# -*- test-case-name: tests.test_store -*-
"""
The run store's interface and values: JSON documents kept under a namespace
and a key until they expire, the errors it raises, and the parsing of its
command-line settings.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable, Mapping, Protocol
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import attrs
from twisted.internet.defer import Deferred

from ai_agent.errors import AgentError, ErrorKind

#: Hidden agent turns of hybrid runs (client tools), keyed by tool-call id.
TURNS = "turns"

#: Stored Responses API objects, keyed by response id.
RESPONSES = "responses"

#: How long documents are kept unless a C{put} says otherwise: 30 days.
DEFAULT_TTL = 30 * 24 * 3600.0

#: The largest document accepted, in bytes of its JSON text (UTF-8).
DEFAULT_MAX_DOCUMENT_SIZE = 16 * 1024 * 1024

#: The most bytes of documents a store holds before it evicts the oldest.
DEFAULT_MAX_BYTES = 1024 * 1024 * 1024

#: The most documents a store holds before it evicts the oldest.
DEFAULT_MAX_ENTRIES = 1_000_000

#: Seconds between two purges of expired documents.
DEFAULT_PURGE_INTERVAL = 600.0

#: The longest key accepted.
MAX_KEY_LENGTH = 512

_NAMESPACE = re.compile(r"[a-z][a-z0-9_.-]{0,63}\Z")


class StoreError(AgentError):
    """
    The store could not do what was asked.  The message is fit for a client
    (it names no file, host or password); C{status}, C{kind} and C{code}
    are what each API's envelope is written from.
    """

    def __init__(
        self,
        message: str,
        status: int = 500,
        kind: str = ErrorKind.SERVER,
        code: str | None = "store_error",
        retryAfter: float | None = None,
    ) -> None:
        super().__init__(message, status, kind, code, None, retryAfter)


class DocumentTooLargeError(StoreError):
    """
    A document's JSON text is larger than the store's C{maxDocumentSize}
    (a 413 C{request_too_large}, code C{store_document_too_large}).

    @ivar size: the document's size in bytes.
    @ivar limit: the largest size accepted.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the document to store is {size} bytes; the store accepts at most {limit}",
            413,
            ErrorKind.REQUEST_TOO_LARGE,
            "store_document_too_large",
        )
        self.size = size
        self.limit = limit


class StoreUnavailableError(StoreError):
    """
    The database could not be reached or failed (a 503 C{server} error,
    code C{store_unavailable}, with C{Retry-After}).  The message says why
    in neutral words (L{ai_agent.store._reasons.neutralReason}); the
    database's own explanation, which names files, hosts and users, goes to
    the operator's log only.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, 503, ErrorKind.SERVER, "store_unavailable", retryAfter=5.0)


@attrs.frozen
class StoredDocument:
    """
    One document read back from the store.

    @ivar document: the JSON value that was put (a fresh copy).
    @ivar createdAt: when it was put, in seconds since the epoch.
    @ivar expiresAt: when it expires, in seconds since the epoch.
    """

    namespace: str
    key: str
    document: Any
    createdAt: float
    expiresAt: float


@attrs.frozen
class StoreStats:
    """
    How much a store (or one namespace of it) holds, expired documents not
    counted.

    @ivar entries: the number of documents.
    @ivar bytes: the total size of their JSON texts.
    """

    entries: int
    bytes: int


class RunStore(Protocol):
    """
    JSON documents under C{(namespace, key)}, each with a creation time and
    an expiry.  Every operation returns a L{Deferred} and never blocks the
    reactor.  Cancelling an operation's Deferred fires it with
    L{CancelledError<twisted.internet.defer.CancelledError>} at once; an
    operation still waiting for the database is then skipped, one already
    running completes unseen (a write may still be stored).

    Expired documents are invisible to every read before they are purged.
    Failures are L{StoreError}s.

    @ivar ttl: seconds a document is kept when C{put} is not told otherwise.
    @ivar maxDocumentSize: the largest JSON text accepted, in bytes.
    @ivar description: where the store lives, fit for a log line (no
        password).
    """

    ttl: float
    maxDocumentSize: int

    @property
    def description(self) -> str:
        """
        Where the store lives, fit for a log line (no password).
        """

    def put(
        self, namespace: str, key: str, document: Any, ttl: float | None = None
    ) -> Deferred[None]:
        """
        Store C{document} (any JSON value) under C{(namespace, key)},
        replacing what was there, to expire C{ttl} seconds from now.  Do not
        change C{document} until the Deferred fires.

        @raise DocumentTooLargeError: (through the Deferred) for a document larger
            than C{maxDocumentSize}.
        """

    def putMany(
        self, namespace: str, documents: Mapping[str, Any], ttl: float | None = None
    ) -> Deferred[None]:
        """
        Store several documents of one namespace at once, all or none.
        """

    def putEntries(
        self, entries: Iterable[tuple[str, str, Any]], ttl: float | None = None
    ) -> Deferred[None]:
        """
        Store C{(namespace, key, document)} entries of any namespaces at
        once, all or none (one transaction: one trip to the database).
        """

    def get(self, namespace: str, key: str) -> Deferred[StoredDocument | None]:
        """
        The document under C{(namespace, key)}, or L{None} when there is
        none or it expired.
        """

    def getMany(self, namespace: str, keys: Iterable[str]) -> Deferred[dict[str, StoredDocument]]:
        """
        The documents found under any of C{keys}, by key; keys with no
        document (or an expired one) are absent.
        """

    def delete(self, namespace: str, key: str) -> Deferred[bool]:
        """
        Remove the document under C{(namespace, key)}; whether there was one
        that had not expired.
        """

    def deleteEntries(self, entries: Iterable[tuple[str, str]]) -> Deferred[int]:
        """
        Remove the documents under C{(namespace, key)} entries of any
        namespaces, all in one transaction; how many there were (expired
        ones included).
        """

    def purge(self) -> Deferred[int]:
        """
        Remove expired documents now (the store also does this periodically),
        then the oldest ones while the store is over its bounds; how many
        were removed.
        """

    def stats(self, namespace: str | None = None) -> Deferred[StoreStats]:
        """
        How many documents, and how many bytes, the store (or C{namespace})
        holds.
        """

    def checkAvailable(self) -> Deferred[None]:
        """
        Fail with L{StoreUnavailableError} when the store cannot be used now
        (cheaply: a store that just answered is not asked again), so that a
        request that will need it fails before it spends anything.
        """

    def start(self) -> Deferred[None]:
        """
        Open the store: create or migrate its schema, start the periodic
        purge.  Operations called earlier wait for it; when opening fails,
        the next operation tries again.
        """

    def close(self) -> Deferred[None]:
        """
        Stop the purge, wait for operations under way, close the database.
        Later operations fail with L{StoreError}.
        """


def checkNamespace(namespace: str) -> None:
    """
    @raise ValueError: unless C{namespace} is a short lowercase identifier
        (a programming error, not a client's).
    """
    if not _NAMESPACE.match(namespace):
        raise ValueError(f"not a store namespace: {namespace!r}")


def checkKey(key: str) -> None:
    """
    @raise StoreError: (400) for an empty key or one longer than
        L{MAX_KEY_LENGTH} characters.
    """
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH:
        raise StoreError(
            f"a store key must be 1 to {MAX_KEY_LENGTH} characters",
            400,
            ErrorKind.INVALID_REQUEST,
            "store_invalid_key",
        )


def usableKeys(keys: Iterable[str]) -> list[str]:
    """
    The distinct keys of C{keys} that could be stored, in their first order;
    longer ones (which no document can have) are left out.
    """
    return list(
        dict.fromkeys(k for k in keys if isinstance(k, str) and 0 < len(k) <= MAX_KEY_LENGTH)
    )


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)\Z")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parseDuration(text: str) -> float:
    """
    Seconds in a duration such as C{30d}, C{12h}, C{90m}, C{45s} or C{3600}
    (seconds); C{w} is weeks.

    @raise ValueError: for anything else, or a duration that is not
        positive.
    """
    match = _DURATION.match(text.strip().lower())
    if match is None:
        raise ValueError(f"not a duration (e.g. 30d, 12h, 90m, 3600): {text!r}")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"a duration must be positive: {text!r}")
    return seconds


def defaultStorePath(environ: Mapping[str, str] | None = None) -> str:
    """
    The SQLite file used when C{--store} is not given:
    C{$XDG_STATE_HOME/ai-agent/store.sqlite3}, where C{XDG_STATE_HOME}
    defaults to C{~/.local/state}.
    """
    environ = os.environ if environ is None else environ
    state = environ.get("XDG_STATE_HOME") or ""
    if not os.path.isabs(state):
        home = environ.get("HOME") or os.path.expanduser("~")
        state = os.path.join(home, ".local", "state")
    return os.path.join(state, "ai-agent", "store.sqlite3")


def isPostgresURL(location: str) -> bool:
    """
    Whether C{location} names a PostgreSQL database rather than a file.
    """
    return location.startswith(("postgresql://", "postgres://"))


#: The query parameters of a PostgreSQL C{--store} URL that are the store's
#: own settings (durations), taken out before the URL reaches libpq.
STORE_URL_OPTIONS = ("idle_timeout",)


def splitStoreOptions(url: str) -> tuple[str, dict[str, float]]:
    """
    C{url} without the store's own query parameters (L{STORE_URL_OPTIONS},
    which libpq would refuse), and their values in seconds; every other
    parameter is kept as written.

    @raise ValueError: for a value that is not a duration (L{parseDuration}).
    """
    base, mark, rest = url.partition("?")
    if not mark:
        return url, {}
    query, sharp, fragment = rest.partition("#")
    kept: list[str] = []
    options: dict[str, float] = {}
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if unquote(name) in STORE_URL_OPTIONS:
            try:
                options[unquote(name)] = parseDuration(unquote(value))
            except ValueError as error:
                raise ValueError(f"{unquote(name)}: {error}") from None
        else:
            kept.append(pair)
    cleaned = base + ("?" + "&".join(kept) if kept else "") + sharp + fragment
    return cleaned, options


def urlSecrets(url: str) -> list[str]:
    """
    The passwords in a PostgreSQL URL (its user information and a
    C{password} query parameter), as written and decoded.
    """
    secrets: list[str] = []
    try:
        parts = urlsplit(url)
        if parts.password:
            secrets.append(parts.password)
        secrets.extend(value for name, value in parse_qsl(parts.query) if name == "password")
    except ValueError:
        # Unparseable: treat everything after the scheme as secret.
        secrets.append(url.split("://", 1)[-1])
    found: list[str] = []
    for secret in secrets:
        for form in (secret, unquote(secret), quote(secret, safe="")):
            if form and form not in found:
                found.append(form)
    # Longest first, so that a secret containing another is removed whole.
    return sorted(found, key=len, reverse=True)


def redactURL(url: str) -> str:
    """
    C{url} with its password (in the user information or a C{password}
    query parameter) replaced by C{***}, fit for a log line or an error.
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _, hostport = netloc.rpartition("@")
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{hostport}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(n, "***" if n == "password" else v) for n, v in pairs], safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return url.split("://", 1)[0] + "://***"


def redact(text: str, secrets: Iterable[str]) -> str:
    """
    C{text} with every one of C{secrets} replaced by C{***}.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DOCUMENT_SIZE",
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_PURGE_INTERVAL",
    "DEFAULT_TTL",
    "MAX_KEY_LENGTH",
    "RESPONSES",
    "TURNS",
    "DocumentTooLargeError",
    "RunStore",
    "StoreError",
    "StoreStats",
    "StoreUnavailableError",
    "StoredDocument",
    "defaultStorePath",
    "STORE_URL_OPTIONS",
    "isPostgresURL",
    "parseDuration",
    "redact",
    "redactURL",
    "splitStoreOptions",
    "urlSecrets",
]
