"""
The run store (L{ai_agent.store}): the same behaviour checked on SQLite, on
PostgreSQL (a real server; set C{AI_AGENT_TEST_POSTGRES_URL}, which
C{.ci/run} does) and in memory, plus what only a database shows: a restart,
the reactor staying free during big writes, several instances sharing one
PostgreSQL, migrations racing, and passwords kept out of errors and logs.

The PostgreSQL tests drop and create the store's tables: give them a
database of their own, and do not run two of these test runs against it at
once.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import threading
from typing import Any, Callable

import attrs
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, gatherResults, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from ai_agent.clienttools import HiddenTurn
from ai_agent.headends._openai_errors import OPENAI_ERRORS
from ai_agent.principals import IMPLICIT, Principal
from ai_agent.providers import ChatMessage, ToolCall
from ai_agent.store import (
    RESPONSES,
    SCHEMA_VERSION,
    TURNS,
    DocumentTooLargeError,
    MemoryStore,
    OwnedStore,
    SQLStore,
    StoreError,
    StoreService,
    StoreStats,
    StoreTurnStore,
    StoreUnavailableError,
    checkLocation,
    defaultStorePath,
    makeStore,
    parseDuration,
    postgresDialect,
    redactURL,
    sqliteDialect,
)
from ai_agent.store._base import urlSecrets
from ai_agent.store._reasons import neutralReason
from ai_agent.store._sql import MIGRATIONS
from ai_agent.tap import ServerOptions
from tests._harness import writeAgent

POSTGRES_URL = os.environ.get("AI_AGENT_TEST_POSTGRES_URL", "")
POSTGRES_SKIP = (
    None
    if POSTGRES_URL
    else "AI_AGENT_TEST_POSTGRES_URL is not set: no PostgreSQL server to test against"
    " (.ci/run starts one with .ci/postgres)"
)

#: How long a test waits for something the store does in its threads.
TIMEOUT = 20.0


def withTimeout(d: Deferred[Any], seconds: float = TIMEOUT) -> Deferred[Any]:
    """
    C{d}, failing with a timeout after C{seconds}.
    """
    return d.addTimeout(seconds, reactor)


def assertNoPathIn(testCase: Any, path: str, text: str) -> None:
    """
    Fail C{testCase} when C{text} holds any segment of C{path} (bar the
    names anyone could guess: C{tmp}, C{store.sqlite3}, ..., and the
    one-character directories C{trial -j} runs each worker in, such as
    C{0}, found in any chunked body).
    """
    common = {"tmp", "sub", "state", "store.sqlite3", "s.sqlite3", "_trial_temp"}
    for segment in path.split(os.sep):
        if len(segment) > 1 and segment not in common:
            testCase.assertNotIn(segment, text)


class LogCapture:
    """
    The text of every log event published while a test runs.
    """

    def __init__(self, testCase: SynchronousTestCase) -> None:
        self.events: list[LogEvent] = []
        self._waiters: list[tuple[Callable[[str], bool], Deferred[str]]] = []
        globalLogPublisher.addObserver(self)
        testCase.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)
        text = self.text(event)
        for waiter in list(self._waiters):
            if waiter[0](text) and not waiter[1].called:
                self._waiters.remove(waiter)
                waiter[1].callback(text)

    def text(self, event: LogEvent) -> str:
        """
        An event as text, its fields included.
        """
        return (formatEvent(event) or "") + " " + repr(sorted(event.items(), key=str))

    def everything(self) -> str:
        """
        All events as one text.
        """
        return "\n".join(self.text(event) for event in self.events)

    def waitFor(self, predicate: Callable[[str], bool]) -> Deferred[str]:
        """
        A Deferred firing with the first event text (from now) for which
        C{predicate} holds, failing after L{TIMEOUT}.
        """
        d: Deferred[str] = Deferred()
        self._waiters.append((predicate, d))
        return withTimeout(d)


class StoreBehaviourMixin:
    """
    The behaviour every run store has.  Subclasses build the store in
    L{makeStore}; C{self.clock} drives time.
    """

    clock: Clock
    realThreads = True

    def makeStore(self, **limits: Any) -> Any:
        raise NotImplementedError

    async def openStore(self, **limits: Any) -> Any:
        store = self.makeStore(**limits)
        self.addCleanup(store.close)  # type: ignore[attr-defined]
        await withTimeout(store.start())
        return store

    async def test_putThenGet(self) -> None:
        """
        A document put is read back equal (a copy), with its creation time
        and expiry from the store's clock and TTL.
        """
        store = await self.openStore()
        self.clock.advance(1000)
        document = {"turns": [{"role": "assistant", "content": "é ✓", "n": 1.5}], "ok": True}
        await store.put(TURNS, "call_1", document)
        found = await store.get(TURNS, "call_1")
        self.assertEqual(found.document, document)  # type: ignore[attr-defined]
        self.assertEqual((found.namespace, found.key), (TURNS, "call_1"))  # type: ignore[attr-defined]
        self.assertEqual(found.createdAt, 1000)  # type: ignore[attr-defined]
        self.assertEqual(found.expiresAt, 1000 + store.ttl)  # type: ignore[attr-defined]
        found.document["ok"] = False
        again = await store.get(TURNS, "call_1")
        self.assertIs(again.document["ok"], True)  # type: ignore[attr-defined]

    async def test_missing(self) -> None:
        """
        A key never put reads as L{None}, and so does an overlong one.
        """
        store = await self.openStore()
        self.assertIsNone(await store.get(TURNS, "nothing"))  # type: ignore[attr-defined]
        self.assertIsNone(await store.get(TURNS, "x" * 5000))  # type: ignore[attr-defined]

    async def test_replace(self) -> None:
        """
        A second put under the same key replaces the document and its times.
        """
        store = await self.openStore()
        await store.put(RESPONSES, "resp_1", {"v": 1})
        self.clock.advance(10)
        await store.put(RESPONSES, "resp_1", {"v": 2}, ttl=60)
        found = await store.get(RESPONSES, "resp_1")
        self.assertEqual(found.document, {"v": 2})  # type: ignore[attr-defined]
        self.assertEqual(found.expiresAt, 70)  # type: ignore[attr-defined]
        self.assertEqual(await store.stats(RESPONSES), StoreStats(1, 7))  # type: ignore[attr-defined]

    async def test_namespacesApart(self) -> None:
        """
        The same key in two namespaces names two documents.
        """
        store = await self.openStore()
        await store.put(TURNS, "k", "turn")
        await store.put(RESPONSES, "k", "response")
        self.assertEqual((await store.get(TURNS, "k")).document, "turn")  # type: ignore[attr-defined]
        self.assertEqual((await store.get(RESPONSES, "k")).document, "response")  # type: ignore[attr-defined]

    async def test_getMany(self) -> None:
        """
        C{getMany} answers the keys found, by key, whatever else was asked:
        unknown, repeated, overlong keys, and more keys than one query takes.
        """
        store = await self.openStore()
        await store.putMany(TURNS, {f"call_{n}": {"n": n} for n in range(0, 500, 7)})
        asked = [f"call_{n}" for n in range(500)] + ["call_7", "y" * 1000]
        found = await store.getMany(TURNS, asked)
        self.assertEqual(sorted(found), sorted(f"call_{n}" for n in range(0, 500, 7)))
        self.assertEqual(found["call_21"].document, {"n": 21})
        self.assertEqual(await store.getMany(TURNS, []), {})  # type: ignore[attr-defined]

    async def test_putManyAllOrNothing(self) -> None:
        """
        When one document of a C{putMany} is too large, none is stored.
        """
        store = await self.openStore(maxDocumentSize=100)
        with self.assertRaises(DocumentTooLargeError):  # type: ignore[attr-defined]
            await store.putMany(TURNS, {"a": "small", "b": "x" * 200})
        self.assertEqual(await store.getMany(TURNS, ["a", "b"]), {})  # type: ignore[attr-defined]

    async def test_putEntriesAcrossNamespaces(self) -> None:
        """
        C{putEntries} stores documents of several namespaces at once; when
        one is too large or one key is unusable, none is stored.
        """
        store = await self.openStore(maxDocumentSize=100)
        await store.putEntries([(RESPONSES, "r", {"v": 1}), (TURNS, "t1", 1), (TURNS, "t2", 2)])
        self.assertEqual((await store.get(RESPONSES, "r")).document, {"v": 1})  # type: ignore[attr-defined]
        found = await store.getMany(TURNS, ["t1", "t2"])
        self.assertEqual({key: doc.document for key, doc in found.items()}, {"t1": 1, "t2": 2})  # type: ignore[attr-defined]
        with self.assertRaises(DocumentTooLargeError):  # type: ignore[attr-defined]
            await store.putEntries([(RESPONSES, "r2", "small"), (TURNS, "t3", "x" * 200)])
        with self.assertRaises(StoreError):  # type: ignore[attr-defined]
            await store.putEntries([(RESPONSES, "r3", "small"), (TURNS, "", "empty key")])
        self.assertIsNone(await store.get(RESPONSES, "r2"))  # type: ignore[attr-defined]
        self.assertIsNone(await store.get(RESPONSES, "r3"))  # type: ignore[attr-defined]

    async def test_sizeLimit(self) -> None:
        """
        A document over C{maxDocumentSize} (counted in UTF-8 bytes of its
        JSON) is refused with a 413 naming both sizes; one at the limit is
        stored.
        """
        store = await self.openStore(maxDocumentSize=20)
        await store.put(TURNS, "fits", "é" * 9)  # 18 bytes + 2 quotes
        with self.assertRaises(DocumentTooLargeError) as caught:  # type: ignore[attr-defined]
            await store.put(TURNS, "big", "é" * 10)
        error = caught.exception
        envelope = OPENAI_ERRORS.envelope(error)["error"]
        self.assertEqual((error.status, envelope["type"]), (413, "invalid_request_error"))  # type: ignore[attr-defined]
        self.assertEqual(envelope["code"], "store_document_too_large")  # type: ignore[attr-defined]
        self.assertEqual((error.size, error.limit), (22, 20))  # type: ignore[attr-defined]
        self.assertIn("22 bytes", envelope["message"])  # type: ignore[attr-defined]
        self.assertIsNone(await store.get(TURNS, "big"))  # type: ignore[attr-defined]
        self.assertIsNotNone(await store.get(TURNS, "fits"))  # type: ignore[attr-defined]

    async def test_badKey(self) -> None:
        """
        Putting under an empty or overlong key is a 400.
        """
        store = await self.openStore()
        for key in ("", "k" * 513):
            with self.assertRaises(StoreError) as caught:  # type: ignore[attr-defined]
                await store.put(TURNS, key, 1)
            self.assertEqual(caught.exception.status, 400)  # type: ignore[attr-defined]

    async def test_delete(self) -> None:
        """
        C{delete} removes a document and says whether there was one; an
        expired document counts as none.
        """
        store = await self.openStore()
        await store.put(RESPONSES, "resp_1", 1)
        await store.put(RESPONSES, "resp_2", 2, ttl=5)
        self.assertIs(await store.delete(RESPONSES, "resp_1"), True)  # type: ignore[attr-defined]
        self.assertIs(await store.delete(RESPONSES, "resp_1"), False)  # type: ignore[attr-defined]
        self.assertIsNone(await store.get(RESPONSES, "resp_1"))  # type: ignore[attr-defined]
        self.clock.advance(5)
        self.assertIs(await store.delete(RESPONSES, "resp_2"), False)  # type: ignore[attr-defined]

    async def test_deleteEntries(self) -> None:
        """
        C{deleteEntries} removes documents of several namespaces at once and
        counts those it found; documents it was not asked about stay, and
        an entry of an unknown or unusable key is no error.
        """
        store = await self.openStore()
        await store.putEntries(
            [(RESPONSES, "resp_1", 1), (TURNS, "call_1", 2), (TURNS, "call_2", 3)]
        )
        removed = await store.deleteEntries(  # type: ignore[attr-defined]
            [(RESPONSES, "resp_1"), (TURNS, "call_1"), (TURNS, "nothing"), (TURNS, "x" * 600)]
        )
        self.assertEqual(removed, 2)
        self.assertIsNone(await store.get(RESPONSES, "resp_1"))  # type: ignore[attr-defined]
        self.assertEqual(list(await store.getMany(TURNS, ["call_1", "call_2"])), ["call_2"])  # type: ignore[attr-defined]
        self.assertEqual(await store.deleteEntries([]), 0)  # type: ignore[attr-defined]

    async def test_expiry(self) -> None:
        """
        A document is invisible from its expiry on, before any purge; the
        store's TTL applies unless a put gives its own.
        """
        store = await self.openStore()
        await store.put(TURNS, "short", 1, ttl=10)
        await store.put(TURNS, "long", 2)
        self.clock.advance(9.5)
        self.assertEqual(sorted(await store.getMany(TURNS, ["short", "long"])), ["long", "short"])  # type: ignore[attr-defined]
        self.clock.advance(0.5)
        self.assertEqual(list(await store.getMany(TURNS, ["short", "long"])), ["long"])  # type: ignore[attr-defined]
        self.assertEqual((await store.stats()).entries, 1)  # type: ignore[attr-defined]
        self.clock.advance(store.ttl)
        self.assertIsNone(await store.get(TURNS, "long"))  # type: ignore[attr-defined]

    async def test_purge(self) -> None:
        """
        C{purge} removes the expired documents and answers how many.
        """
        store = await self.openStore()
        await store.putMany(TURNS, {"a": 1, "b": 2}, ttl=10)
        await store.put(TURNS, "c", 3, ttl=100)
        self.assertEqual(await store.purge(), 0)  # type: ignore[attr-defined]
        self.clock.advance(10)
        self.assertEqual(await store.purge(), 2)  # type: ignore[attr-defined]
        self.assertEqual(await store.purge(), 0)  # type: ignore[attr-defined]
        self.assertEqual(list(await store.getMany(TURNS, "abc")), ["c"])  # type: ignore[attr-defined]

    async def test_periodicPurge(self) -> None:
        """
        Once started, the store purges expired documents every
        C{purgeInterval} seconds of its clock, and stops doing so when
        closed.
        """
        logs = LogCapture(self)  # type: ignore[arg-type]
        store = await self.openStore(purgeInterval=60)
        await store.putMany(TURNS, {"a": 1, "b": 2}, ttl=30)
        purged = logs.waitFor(lambda text: "purge removed 2 documents" in text)
        self.clock.advance(60)
        await purged
        self.assertEqual(await store.purge(), 0)  # type: ignore[attr-defined]
        await store.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])  # type: ignore[attr-defined]

    async def test_boundOnEntries(self) -> None:
        """
        Past C{maxEntries}, a put evicts the oldest documents, down to 90%
        of the bound; the newest stay.
        """
        store = await self.openStore(maxEntries=10)
        for n in range(11):
            self.clock.advance(1)
            await store.put(TURNS, f"k{n:02}", n)
        stats = await store.stats()
        self.assertEqual(stats.entries, 9)
        found = await store.getMany(TURNS, [f"k{n:02}" for n in range(11)])
        self.assertEqual(sorted(found), [f"k{n:02}" for n in range(2, 11)])

    async def test_boundOnBytes(self) -> None:
        """
        Past C{maxBytes}, a put evicts the oldest documents until the rest
        take at most 90% of it.
        """
        store = await self.openStore(maxBytes=1000)
        for n in range(12):
            self.clock.advance(1)
            await store.put(RESPONSES, f"r{n:02}", "x" * 98)  # 100 bytes each
        stats = await store.stats()
        self.assertLessEqual(stats.bytes, 1000)
        found = await store.getMany(RESPONSES, [f"r{n:02}" for n in range(12)])
        self.assertIn("r11", found)
        self.assertNotIn("r00", found)
        self.assertEqual(stats.entries, len(found))

    async def test_stats(self) -> None:
        """
        C{stats} counts documents and the bytes of their JSON, for the whole
        store or one namespace.
        """
        store = await self.openStore()
        self.assertEqual(await store.stats(), StoreStats(0, 0))  # type: ignore[attr-defined]
        await store.put(TURNS, "a", [1, 2])  # [1,2]
        await store.put(RESPONSES, "b", "é")  # "é": 4 bytes
        self.assertEqual(await store.stats(), StoreStats(2, 9))  # type: ignore[attr-defined]
        self.assertEqual(await store.stats(RESPONSES), StoreStats(1, 4))  # type: ignore[attr-defined]

    async def test_awkwardText(self) -> None:
        """
        Text the database could not hold as is (NUL, lone surrogates,
        quotes, markers of SQL parameters) round-trips unchanged.
        """
        store = await self.openStore()
        document = {"nul": "a\x00b", "surrogate": "\ud800", "sql": "?, %s, %(x)s, '; --"}
        await store.put(TURNS, "odd ? %s key", document)
        found = await store.get(TURNS, "odd ? %s key")
        self.assertEqual(found.document, document)  # type: ignore[attr-defined]

    async def putChain(self, store: Any, length: int, prefix: str = "") -> None:
        """
        Put responses C{resp_0} (first, no link) to C{resp_<length - 1>},
        each naming the one before in C{previous}, under C{prefix}.
        """
        await store.putMany(
            RESPONSES,
            {
                f"{prefix}resp_{n}": {"n": n, "previous": f"resp_{n - 1}" if n else None}
                for n in range(length)
            },
        )

    async def test_chain(self) -> None:
        """
        C{getChain} follows the C{link} field from the first key, newest
        first, with each document's key, times and JSON (awkward text
        included); it stops at a document without a link, and after
        C{limit} documents.
        """
        store = await self.openStore()
        self.clock.advance(100)
        await self.putChain(store, 5)
        odd = {"n": 2, "previous": "resp_1", "odd": "a\x00b\ud800 \\u0000 \\\x00 ? %s 😀"}
        await store.put(RESPONSES, "resp_2", odd)
        chain = await store.getChain(RESPONSES, "resp_3", "previous", 10)
        self.assertEqual([d.key for d in chain], ["resp_3", "resp_2", "resp_1", "resp_0"])  # type: ignore[attr-defined]
        self.assertEqual([d.document["n"] for d in chain], [3, 2, 1, 0])  # type: ignore[attr-defined]
        self.assertEqual(chain[1].document, odd)  # type: ignore[attr-defined]
        self.assertEqual(  # type: ignore[attr-defined]
            (chain[0].namespace, chain[0].createdAt, chain[0].expiresAt),
            (RESPONSES, 100, 100 + store.ttl),
        )
        limited = await store.getChain(RESPONSES, "resp_4", "previous", 2)
        self.assertEqual([d.key for d in limited], ["resp_4", "resp_3"])  # type: ignore[attr-defined]
        self.assertEqual(await store.getChain(RESPONSES, "resp_4", "previous", 0), [])  # type: ignore[attr-defined]
        self.assertEqual(await store.getChain(RESPONSES, "nothing", "previous", 10), [])  # type: ignore[attr-defined]
        self.assertEqual(await store.getChain(TURNS, "resp_4", "previous", 10), [])  # type: ignore[attr-defined]
        with self.assertRaises(ValueError):  # type: ignore[attr-defined]
            store.getChain(RESPONSES, "resp_4", "previous') OR 1=1 --", 10)

    async def test_chainOfAThousand(self) -> None:
        """
        A chain of 1,000 documents is read whole in one call, and a limit
        of 1,000 on a longer chain stops at the 1,000th (whose link tells
        the caller the chain goes on).
        """
        store = await self.openStore()
        await self.putChain(store, 1001)
        whole = await store.getChain(RESPONSES, "resp_999", "previous", 1000)
        self.assertEqual([d.document["n"] for d in whole], list(range(999, -1, -1)))  # type: ignore[attr-defined]
        cut = await store.getChain(RESPONSES, "resp_1000", "previous", 1000)
        self.assertEqual(len(cut), 1000)  # type: ignore[attr-defined]
        self.assertEqual(cut[-1].document["previous"], "resp_0")  # type: ignore[attr-defined]

    async def test_chainBrokenLink(self) -> None:
        """
        The chain ends before a link to a key with no document, or to an
        expired one, and at a link that is not a string; the last document
        read still names the missing key.
        """
        store = await self.openStore()
        await self.putChain(store, 4)
        await store.delete(RESPONSES, "resp_1")
        chain = await store.getChain(RESPONSES, "resp_3", "previous", 10)
        self.assertEqual([d.key for d in chain], ["resp_3", "resp_2"])  # type: ignore[attr-defined]
        self.assertEqual(chain[-1].document["previous"], "resp_1")  # type: ignore[attr-defined]
        await store.put(RESPONSES, "short", {"previous": None}, ttl=10)
        await store.put(RESPONSES, "long", {"previous": "short"})
        await store.put(RESPONSES, "number", {"previous": 7})
        await store.put(RESPONSES, "7", {"previous": None})
        await store.put(RESPONSES, "list", ["previous", "short"])
        self.assertEqual(len(await store.getChain(RESPONSES, "long", "previous", 10)), 2)  # type: ignore[attr-defined]
        self.clock.advance(10)
        chain = await store.getChain(RESPONSES, "long", "previous", 10)
        self.assertEqual([d.key for d in chain], ["long"])  # type: ignore[attr-defined]
        self.assertEqual(await store.getChain(RESPONSES, "short", "previous", 10), [])  # type: ignore[attr-defined]
        for key in ("number", "list"):
            chain = await store.getChain(RESPONSES, key, "previous", 10)
            self.assertEqual([d.key for d in chain], [key])  # type: ignore[attr-defined]

    async def test_chainScope(self) -> None:
        """
        Every key after the first is the scope followed by the link: a
        chain under one prefix never reads a document under another, or
        one without a prefix, even where the unprefixed id exists.
        """
        store = await self.openStore()
        await self.putChain(store, 3, "alice/")
        await self.putChain(store, 5, "bob/")
        await self.putChain(store, 5)
        await store.delete(RESPONSES, "alice/resp_0")
        chain = await store.getChain(RESPONSES, "alice/resp_2", "previous", 10, "alice/")
        self.assertEqual([d.key for d in chain], ["alice/resp_2", "alice/resp_1"])  # type: ignore[attr-defined]
        chain = await store.getChain(RESPONSES, "bob/resp_4", "previous", 10, "bob/")
        self.assertEqual(len(chain), 5)  # type: ignore[attr-defined]
        self.assertTrue(all(d.key.startswith("bob/") for d in chain))  # type: ignore[attr-defined]

    async def test_chainOwned(self) -> None:
        """
        Through L{OwnedStore}, a principal's chain follows links in its own
        part of the store only, and comes back under the ids it used: with
        two principals holding the same ids, one's broken chain stops where
        its own document is missing instead of going on in the other's.
        """
        store = await self.openStore()
        alice = OwnedStore(store, Principal("alice"))
        bob = OwnedStore(store, Principal("bob"))
        await self.putChain(alice, 3)
        await self.putChain(bob, 3)
        await store.delete(RESPONSES, "alice/resp_1")
        chain = await alice.getChain(RESPONSES, "resp_2", "previous", 10)
        self.assertEqual([(d.key, d.document["n"]) for d in chain], [("resp_2", 2)])  # type: ignore[attr-defined]
        chain = await bob.getChain(RESPONSES, "resp_2", "previous", 10)
        self.assertEqual([d.key for d in chain], ["resp_2", "resp_1", "resp_0"])  # type: ignore[attr-defined]
        implicit = OwnedStore(store, IMPLICIT)
        self.assertEqual(await implicit.getChain(RESPONSES, "resp_2", "previous", 10), [])  # type: ignore[attr-defined]

    async def test_closed(self) -> None:
        """
        After C{close}, operations fail with a L{StoreError}.
        """
        store = await self.openStore()
        await store.close()
        with self.assertRaises(StoreError):  # type: ignore[attr-defined]
            await store.get(TURNS, "a")
        with self.assertRaises(StoreError):  # type: ignore[attr-defined]
            await store.put(TURNS, "a", 1)


class _WatchedConnection:
    """
    A real database connection whose commits are recorded in C{events} (as
    C{"commit"}); a commit for which C{plan} holds an error raises it
    instead (the transaction is then rolled back by the store).
    """

    def __init__(
        self, connection: Any, events: list[str], plan: list[BaseException | None]
    ) -> None:
        self._connection = connection
        self._events = events
        self._plan = plan

    def commit(self) -> None:
        error = self._plan.pop(0) if self._plan else None
        if error is not None:
            raise error
        self._connection.commit()
        self._events.append("commit")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


class SQLStoreBehaviourMixin(StoreBehaviourMixin):
    """
    What only a store on a database in threads shows.
    """

    async def openWatchedStore(
        self, events: list[str], plan: list[BaseException | None], **limits: Any
    ) -> SQLStore:
        """
        An open store with one thread (one connection) whose commits are
        recorded in C{events} from now on, and fail as C{plan} says.
        """
        store = self.makeStore(connections=1, **limits)
        connect = store.dialect.connect
        store.dialect = attrs.evolve(
            store.dialect, connect=lambda: _WatchedConnection(connect(), events, plan)
        )
        self.addCleanup(store.close)  # type: ignore[attr-defined]
        await withTimeout(store.start())
        del events[:]
        return store

    def holdThread(self, store: SQLStore) -> tuple[threading.Event, Deferred[Any]]:
        """
        Keep C{store}'s one thread busy until the returned event is set (so
        that operations queue up behind it).
        """
        release = threading.Event()
        self.addCleanup(release.set)  # type: ignore[attr-defined]
        return release, store._inThread("hold", lambda cursor: release.wait(TIMEOUT))

    async def test_queuedWritesCommittedTogether(self) -> None:
        """
        Writes queued while the store's thread is busy are committed
        together, in one transaction (group commit); each caller's Deferred
        fires only after that commit, and another store on the same
        database (another instance) then reads every one of them.
        """
        events: list[str] = []
        store = await self.openWatchedStore(events, [])
        other = await self.openStore()
        release, held = self.holdThread(store)
        puts = [
            store.put(RESPONSES, f"resp_{n}", {"n": n}).addCallback(
                lambda _, n=n: events.append(f"fired {n}")
            )
            for n in range(5)
        ]
        release.set()
        await withTimeout(gatherResults([held, *puts]))
        # The hold's own transaction, then one for the five writes.
        self.assertEqual(events, ["commit", "commit", *(f"fired {n}" for n in range(5))])
        found = await other.getMany(RESPONSES, [f"resp_{n}" for n in range(5)])
        self.assertEqual(
            {k: v.document for k, v in found.items()}, {f"resp_{n}": {"n": n} for n in range(5)}
        )

    async def test_failedGroupCommitFailsEach(self) -> None:
        """
        When the database fails a group's commit, every write of the group
        fails with the store's own 503 error, none of them is stored, and
        the next write works.
        """
        events: list[str] = []
        plan: list[BaseException | None] = []
        logs = LogCapture(self)  # type: ignore[arg-type]
        store = await self.openWatchedStore(events, plan)
        release, held = self.holdThread(store)
        puts = [store.put(RESPONSES, f"resp_{n}", {"n": n}) for n in range(3)]
        # The hold's commit goes through; the group's fails.
        plan.extend([None, store.dialect.errors[0]("disk I/O error")])
        release.set()
        await withTimeout(held)
        for put in puts:
            with self.assertRaises(StoreUnavailableError) as caught:  # type: ignore[attr-defined]
                await withTimeout(put)
            self.assertEqual(caught.exception.status, 503)
        self.assertIn("disk I/O error", logs.everything())
        other = await self.openStore()
        self.assertEqual(await other.getMany(RESPONSES, ["resp_0", "resp_1", "resp_2"]), {})
        await store.put(RESPONSES, "resp_3", {"n": 3})
        self.assertEqual((await other.get(RESPONSES, "resp_3")).document, {"n": 3})  # type: ignore[union-attr]

    async def test_oneBadWriteInAGroup(self) -> None:
        """
        A document too large, queued with other writes, fails only its own
        caller (a 413); the writes queued with it are stored.
        """
        events: list[str] = []
        store = await self.openWatchedStore(events, [], maxDocumentSize=100)
        release, held = self.holdThread(store)
        small = store.put(RESPONSES, "resp_small", {"n": 1})
        large = store.put(RESPONSES, "resp_large", {"text": "x" * 200})
        after = store.put(RESPONSES, "resp_after", {"n": 2})
        release.set()
        await withTimeout(gatherResults([held, small, after]))
        with self.assertRaises(DocumentTooLargeError):  # type: ignore[attr-defined]
            await withTimeout(large)
        found = await store.getMany(RESPONSES, ["resp_small", "resp_large", "resp_after"])
        self.assertEqual(sorted(found), ["resp_after", "resp_small"])

    async def test_restart(self) -> None:
        """
        Documents survive closing the store and opening it again (a server
        restart), with their times.
        """
        store = await self.openStore()
        await store.put(RESPONSES, "resp_1", {"output": ["hi"]})
        await store.close()
        again = await self.openStore()
        found = await again.get(RESPONSES, "resp_1")
        self.assertEqual(found.document, {"output": ["hi"]})  # type: ignore[attr-defined]
        self.assertEqual(found.createdAt, 0)  # type: ignore[attr-defined]

    async def test_operationsBeforeStart(self) -> None:
        """
        Operations called before C{start} open the store themselves.
        """
        store = self.makeStore()
        self.addCleanup(store.close)  # type: ignore[attr-defined]
        puts = [store.put(TURNS, f"k{n}", n) for n in range(5)]
        await withTimeout(gatherResults(puts))
        self.assertEqual((await store.stats()).entries, 5)  # type: ignore[attr-defined]

    async def test_cancelGet(self) -> None:
        """
        Cancelling an operation fires it with L{CancelledError} at once and
        leaves the store working.
        """
        store = await self.openStore()
        d = store.get(TURNS, "a")
        d.cancel()
        with self.assertRaises(CancelledError):  # type: ignore[attr-defined]
            await d
        await store.put(TURNS, "a", 1)
        self.assertEqual((await store.get(TURNS, "a")).document, 1)  # type: ignore[attr-defined]

    async def test_cancelQueuedPut(self) -> None:
        """
        A put cancelled while it waits behind other work is not done.
        """
        store = await self.openStore()
        big = store.putMany(TURNS, {f"b{n}": "x" * 2000 for n in range(3000)})
        waiting = [store.put(TURNS, f"w{n}", n) for n in range(store.connections + 1)]
        for d in waiting:
            d.cancel()
        for d in waiting:
            with self.assertRaises(CancelledError):  # type: ignore[attr-defined]
                await d
        await withTimeout(big)
        found = await store.getMany(TURNS, [f"w{n}" for n in range(store.connections + 1)])
        # Each thread may have started one before the cancel; the rest waited.
        self.assertLess(len(found), store.connections + 1)
        await withTimeout(store.close())

    async def test_reactorFreeDuringBigWrite(self) -> None:
        """
        While a large write runs, the reactor keeps running: a timer due
        10ms later fires before the write completes.
        """
        store = await self.openStore()
        events: list[str] = []
        write = store.putMany(TURNS, {f"k{n}": {"text": "y" * 4000} for n in range(4000)})
        write.addCallback(lambda _: events.append("written"))
        timer = deferLater(reactor, 0.01, events.append, "timer")
        await withTimeout(gatherResults([write, timer]))
        self.assertEqual(events, ["timer", "written"])

    async def test_manyPutsAtOnce(self) -> None:
        """
        Hundreds of puts issued at once all complete and are all readable.
        """
        store = await self.openStore()
        await withTimeout(gatherResults([store.put(TURNS, f"c{n}", {"n": n}) for n in range(300)]))
        found = await store.getMany(TURNS, [f"c{n}" for n in range(300)])
        self.assertEqual(len(found), 300)
        self.assertEqual(found["c299"].document, {"n": 299})

    async def test_closeWaitsForWork(self) -> None:
        """
        C{close} lets operations already under way finish and deliver their
        results.
        """
        store = await self.openStore()
        puts = [store.put(TURNS, f"k{n}", n) for n in range(50)]
        await withTimeout(store.close())
        results = await gatherResults(puts)
        self.assertEqual(results, [None] * 50)

    async def test_closeGivesUpOnHungWork(self) -> None:
        """
        An operation that does not finish (a database that stopped
        answering) holds C{close} up for C{closeTimeout} seconds at most;
        the store then closes with a warning, without waiting for its
        threads.
        """
        logs = LogCapture(self)  # type: ignore[arg-type]
        store = await self.openStore(closeTimeout=5)
        release = threading.Event()
        self.addCleanup(release.set)  # type: ignore[attr-defined]
        hung = store._inThread("hang", lambda cursor: release.wait(TIMEOUT))
        closing = store.close()
        self.clock.advance(4)
        self.assertFalse(closing.called)  # type: ignore[attr-defined]
        self.clock.advance(1)
        await withTimeout(closing)
        self.assertIn("1 operations still running after 5s", logs.everything())
        self.assertFalse(hung.called)  # type: ignore[attr-defined]
        release.set()
        await withTimeout(hung)


class MemoryStoreTests(StoreBehaviourMixin, TestCase):
    """
    L{MemoryStore} behaves as the database stores do.
    """

    def setUp(self) -> None:
        self.clock = Clock()

    def makeStore(self, **limits: Any) -> MemoryStore:
        return MemoryStore(self.clock, **limits)

    def test_purgedWithoutStart(self) -> None:
        """
        A memory store nobody started (hidden turns without a run store)
        still lets go of expired documents: a put once C{purgeInterval}
        has passed purges them, so a later purge finds nothing left.
        """
        store = self.makeStore(purgeInterval=60)
        self.successResultOf(store.putMany(TURNS, {"a": 1, "b": 2}, ttl=30))
        self.clock.advance(59)
        self.successResultOf(store.put(TURNS, "c", 3, ttl=30))
        self.clock.advance(1)
        self.successResultOf(store.put(TURNS, "d", 4))
        self.assertEqual(self.successResultOf(store.purge()), 0)
        self.assertEqual(sorted(self.successResultOf(store.getMany(TURNS, "abcd"))), ["c", "d"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_synchronous(self) -> None:
        """
        Every operation's Deferred has fired when it is returned, so unit
        tests need no reactor.
        """
        store = self.makeStore()
        self.successResultOf(store.start())
        self.successResultOf(store.put(TURNS, "a", 1))
        self.assertEqual(self.successResultOf(store.get(TURNS, "a")).document, 1)
        self.failureResultOf(store.put(TURNS, "", 1), StoreError)
        self.successResultOf(store.close())


class SQLiteStoreTests(SQLStoreBehaviourMixin, TestCase):
    """
    The store on SQLite, in a file of the test's temporary directory.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.path = os.path.join(os.path.abspath(self.mktemp()), "state", "store.sqlite3")

    def makeStore(self, **limits: Any) -> SQLStore:
        return SQLStore(sqliteDialect(self.path), reactor, self.clock, **limits)

    async def test_fileAndWAL(self) -> None:
        """
        Opening creates the file's directory (mode 0700) and the file (mode
        0600), in WAL mode, with the current schema version recorded.
        """
        await self.openStore()
        self.assertEqual(os.stat(os.path.dirname(self.path)).st_mode & 0o777, 0o700)
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        connection = sqlite3.connect(self.path)
        self.addCleanup(connection.close)
        self.assertEqual(connection.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        rows = connection.execute("SELECT version FROM ai_agent_store_schema").fetchall()
        # Each migration applied is recorded, the last one the current version.
        self.assertEqual(rows, [(version,) for version, _ in MIGRATIONS])
        self.assertEqual(rows[-1], (SCHEMA_VERSION,))

    async def test_secureDelete(self) -> None:
        """
        The store's connections overwrite what is deleted (C{secure_delete}
        read back on a connection as the store opens them), and a deleted
        document's text is in neither the database file nor its
        write-ahead log afterwards.
        """
        store = await self.openStore()
        connection = sqliteDialect(self.path).connect()
        self.addCleanup(connection.close)
        self.assertEqual(connection.execute("PRAGMA secure_delete").fetchone()[0], 1)
        marker = "very-private-text-" + "q" * 64
        await store.putEntries(
            [(RESPONSES, "resp_1", {"text": marker}), (TURNS, "call_1", {"args": marker})]
        )
        self.assertEqual(await store.deleteEntries([(RESPONSES, "resp_1"), (TURNS, "call_1")]), 2)
        for suffix in ("", "-wal"):
            if os.path.exists(self.path + suffix):
                with open(self.path + suffix, "rb") as f:
                    self.assertNotIn(marker.encode(), f.read(), suffix)

    async def test_twoProcessesShareTheFile(self) -> None:
        """
        Two stores on one new file (as two worker processes starting
        together would be) both open it, whoever switches it to WAL mode
        first, and see each other's documents; tried on 30 new files, since
        the race is a narrow one.
        """
        for attempt in range(30):
            self.path = os.path.join(os.path.abspath(self.mktemp()), f"s{attempt}.sqlite3")
            first, second = self.makeStore(), self.makeStore()
            self.addCleanup(first.close)
            self.addCleanup(second.close)
            await withTimeout(gatherResults([first.start(), second.start()]))
            await first.put(TURNS, "a", attempt)
            self.assertEqual((await second.get(TURNS, "a")).document, attempt)  # type: ignore[union-attr]
            await gatherResults([first.close(), second.close()])

    async def test_newerSchema(self) -> None:
        """
        A file written by a newer ai-agent (a higher schema version) is
        refused with a message saying so, and nothing is changed.
        """
        await (await self.openStore()).close()
        connection = sqlite3.connect(self.path)
        connection.execute("INSERT INTO ai_agent_store_schema VALUES (99)")
        connection.commit()
        connection.close()
        store = self.makeStore()
        self.addCleanup(store.close)
        with self.assertRaises(StoreError) as caught:
            await withTimeout(store.start())
        self.assertIn("version 99, newer", caught.exception.message)

    async def test_cannotOpen(self) -> None:
        """
        A file that cannot be created fails the opening (and each
        operation) with a 503 C{store_unavailable}, logged once per
        attempt.
        """
        blocker = self.mktemp()
        with open(blocker, "w") as f:
            f.write("a file, not a directory")
        self.path = os.path.join(blocker, "sub", "store.sqlite3")
        logs = LogCapture(self)
        store = self.makeStore()
        self.addCleanup(store.close)
        with self.assertRaises(StoreUnavailableError) as caught:
            await withTimeout(store.start())
        self.assertEqual(caught.exception.status, 503)
        self.assertEqual(caught.exception.code, "store_unavailable")
        with self.assertRaises(StoreUnavailableError):
            await withTimeout(store.get(TURNS, "a"))
        opened = [e for e in logs.events if "cannot open the run store" in formatEvent(e)]
        self.assertEqual(len(opened), 2)
        # The client is told why without the path; the operator's log has it.
        self.assertEqual(
            caught.exception.message,
            "the run store is unavailable: a file system error (not a directory)",
        )
        assertNoPathIn(self, self.path, repr(OPENAI_ERRORS.envelope(caught.exception)))
        self.assertIn(blocker, logs.everything())

    async def test_lockedDatabase(self) -> None:
        """
        A database another process holds locked past the busy timeout fails
        an operation with a 503 that says so, without the file's path.
        """
        store = SQLStore(sqliteDialect(self.path, busyTimeout=0.05), reactor, self.clock)
        self.addCleanup(store.close)
        await withTimeout(store.start())
        holder = sqlite3.connect(self.path, isolation_level=None)
        self.addCleanup(holder.close)
        holder.execute("BEGIN EXCLUSIVE")
        self.addCleanup(holder.execute, "ROLLBACK")
        logs = LogCapture(self)
        with self.assertRaises(StoreUnavailableError) as caught:
            await withTimeout(store.put(TURNS, "a", 1))
        self.assertEqual(
            caught.exception.message,
            "the run store is unavailable: the database is locked by another writer",
        )
        assertNoPathIn(self, self.path, caught.exception.message)
        self.assertIn("database is locked", logs.everything())


class PostgresTestMixin:
    """
    Each test starts from an empty database: the store's tables dropped.
    """

    skip = POSTGRES_SKIP

    def dropTables(self) -> Deferred[None]:
        def drop() -> None:
            import psycopg

            with psycopg.connect(POSTGRES_URL) as connection:
                connection.execute("DROP TABLE IF EXISTS ai_agent_store, ai_agent_store_schema")

        return deferToThread(drop)

    def makePostgresStore(self, url: str = "", **limits: Any) -> SQLStore:
        limits.setdefault("connections", 4)
        return SQLStore(
            postgresDialect(url or POSTGRES_URL),
            reactor,
            self.clock,  # type: ignore[attr-defined]
            **limits,
        )


class PostgresStoreTests(PostgresTestMixin, SQLStoreBehaviourMixin, TestCase):
    """
    The store on a real PostgreSQL server.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        self.clock = Clock()
        await withTimeout(self.dropTables())

    def makeStore(self, **limits: Any) -> SQLStore:
        return self.makePostgresStore(**limits)

    async def test_twoInstancesShareOneDatabase(self) -> None:
        """
        Two stores with their own connection pools (two server instances)
        share one database: what one puts the other reads, and deletes.
        """
        first, second = self.makeStore(), self.makeStore()
        for store in (first, second):
            self.addCleanup(store.close)
        await withTimeout(gatherResults([first.start(), second.start()]))
        await first.put(RESPONSES, "resp_1", {"made": "on one"})
        found = await second.get(RESPONSES, "resp_1")
        self.assertEqual(found.document, {"made": "on one"})  # type: ignore[union-attr]
        self.assertIs(await second.delete(RESPONSES, "resp_1"), True)
        self.assertIsNone(await first.get(RESPONSES, "resp_1"))

    async def test_migrationRace(self) -> None:
        """
        Several instances starting at once on an empty database all open it;
        the schema is created once and its version recorded once.
        """
        stores = [self.makeStore() for _ in range(4)]
        for store in stores:
            self.addCleanup(store.close)
        await withTimeout(gatherResults([store.start() for store in stores]))

        def versions() -> list[tuple[int]]:
            import psycopg

            with psycopg.connect(POSTGRES_URL) as connection:
                return connection.execute("SELECT version FROM ai_agent_store_schema").fetchall()

        self.assertEqual(await deferToThread(versions), [(version,) for version, _ in MIGRATIONS])
        await stores[3].put(TURNS, "a", 1)
        self.assertEqual((await stores[0].get(TURNS, "a")).document, 1)  # type: ignore[union-attr]

    async def test_tablesMadeForIt(self) -> None:
        """
        A user that may not create tables uses the tables another user
        created: opening creates nothing that exists.
        """
        await (await self.openStore()).close()
        password = "limited-pw"

        def limitedRole(create: bool) -> None:
            import psycopg

            with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
                if create:
                    connection.execute("DROP ROLE IF EXISTS ai_agent_limited")
                    connection.execute(f"CREATE ROLE ai_agent_limited LOGIN PASSWORD '{password}'")
                    connection.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
                    connection.execute(
                        "GRANT SELECT, INSERT, UPDATE, DELETE"
                        " ON ai_agent_store, ai_agent_store_schema TO ai_agent_limited"
                    )
                else:
                    connection.execute("DROP OWNED BY ai_agent_limited")
                    connection.execute("DROP ROLE ai_agent_limited")

        await deferToThread(limitedRole, True)
        self.addCleanup(deferToThread, limitedRole, False)
        scheme, rest = POSTGRES_URL.split("://", 1)
        url = f"{scheme}://ai_agent_limited:{password}@{rest.split('@', 1)[1]}"
        store = self.makePostgresStore(url)
        self.addCleanup(store.close)
        await withTimeout(store.start())
        await store.put(TURNS, "a", {"by": "limited"})
        self.assertEqual((await store.get(TURNS, "a")).document, {"by": "limited"})  # type: ignore[union-attr]

    async def test_reconnects(self) -> None:
        """
        When the server drops every one of the store's connections (as a
        restart does), the next operations all succeed: each one whose
        connection was dropped runs again on a new one.
        """
        store = await self.openStore()
        # Every store thread opens its connection.
        await gatherResults([store.put(TURNS, f"k{i}", i) for i in range(16)])

        def terminate() -> int:
            import psycopg

            with psycopg.connect(POSTGRES_URL) as connection:
                return len(
                    connection.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE application_name = 'ai-agent'"
                    ).fetchall()
                )

        self.assertGreater(await deferToThread(terminate), 0)
        found = await withTimeout(gatherResults([store.get(TURNS, f"k{i}") for i in range(16)]))
        self.assertEqual([f.document for f in found], list(range(16)))


class PostgresSecretTests(PostgresTestMixin, TestCase):
    """
    A PostgreSQL password never appears in an error or a log line.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.password = urlSecrets(POSTGRES_URL)[0] if POSTGRES_URL else "unused"

    async def test_wrongPassword(self) -> None:
        """
        A wrong password fails the opening with a 503 whose message, like
        every log line, has neither the wrong password nor the right one.
        """
        wrong = "not-" + self.password
        url = POSTGRES_URL.replace(self.password, wrong)
        logs = LogCapture(self)
        store = self.makePostgresStore(url)
        self.addCleanup(store.close)
        with self.assertRaises(StoreUnavailableError) as caught:
            await withTimeout(store.start())
        message = caught.exception.message
        self.assertEqual(message, "the run store is unavailable: the database refused the login")
        self.assertIn("password authentication failed", logs.everything())
        for secret in (wrong, self.password):
            self.assertNotIn(secret, message)
            self.assertNotIn(secret, repr(OPENAI_ERRORS.envelope(caught.exception)))
            self.assertNotIn(secret, logs.everything())
            self.assertNotIn(secret, store.description)
        self.assertIn("***", store.description)

    async def test_noPasswordInLogs(self) -> None:
        """
        Opening, using and closing a store logs where it is, without the
        password.
        """
        logs = LogCapture(self)
        store = self.makePostgresStore()
        await withTimeout(store.start())
        await store.put(TURNS, "a", 1)
        await store.close()
        text = logs.everything()
        self.assertIn("run store open (PostgreSQL postgresql://", text)
        self.assertNotIn(self.password, text)

    async def test_unreachable(self) -> None:
        """
        A server that is not there fails the opening with a 503 that names
        neither password.
        """
        url = POSTGRES_URL.rsplit("@", 1)[0] + "@127.0.0.1:1/nowhere"
        store = self.makePostgresStore(url)
        self.addCleanup(store.close)
        with self.assertRaises(StoreUnavailableError) as caught:
            await withTimeout(store.start())
        self.assertNotIn(self.password, caught.exception.message)
        self.assertEqual(
            caught.exception.message,
            "the run store is unavailable: the database cannot be reached",
        )


class NeutralReasonTests(SynchronousTestCase):
    """
    L{neutralReason}: what a client is told when the database fails, from
    real errors of SQLite, the system and psycopg.
    """

    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)

    def sqliteError(self, action: Callable[[], Any]) -> sqlite3.Error:
        with self.assertRaises(sqlite3.Error) as caught:
            action()
        return caught.exception

    def test_sqlite(self) -> None:
        """
        SQLite's errors are told by their result code: a file that cannot
        be opened, a read-only database, a lock.
        """
        missing = os.path.join(self.folder, "gone", "x.sqlite3")
        cannotOpen = self.sqliteError(lambda: sqlite3.connect(missing))
        self.assertEqual(neutralReason(cannotOpen), "the database file cannot be opened")
        path = os.path.join(self.folder, "ro.sqlite3")
        sqlite3.connect(path).close()
        readOnly = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        self.addCleanup(readOnly.close)
        error = self.sqliteError(lambda: readOnly.execute("CREATE TABLE t (x)"))
        self.assertEqual(neutralReason(error), "the database is read-only")
        holder = sqlite3.connect(path, isolation_level=None)
        self.addCleanup(holder.close)
        holder.execute("BEGIN EXCLUSIVE")
        self.addCleanup(holder.execute, "ROLLBACK")
        other = sqlite3.connect(path, timeout=0)
        self.addCleanup(other.close)
        locked = self.sqliteError(lambda: other.execute("CREATE TABLE u (x)"))
        self.assertEqual(neutralReason(locked), "the database is locked by another writer")

    def test_system(self) -> None:
        """
        An error from the system is told by its number, without the file
        name it carries.
        """
        blocker = os.path.join(self.folder, "file")
        with open(blocker, "w") as f:
            f.write("x")
        with self.assertRaises(OSError) as caught:
            os.makedirs(os.path.join(blocker, "sub"))
        self.assertIn(blocker, str(caught.exception))
        self.assertEqual(neutralReason(caught.exception), "a file system error (not a directory)")
        full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/srv/secret/store.sqlite3")
        self.assertEqual(neutralReason(full), "the disk is full")

    def test_postgres(self) -> None:
        """
        psycopg's errors are told by their SQLSTATE (class or code); the
        connection failures, which have none, by libpq's phrase for a
        refused login, or else as unreachable.
        """
        import psycopg
        from psycopg import errors

        self.assertEqual(
            neutralReason(errors.InsufficientPrivilege("permission denied for table t")),
            "permission denied",
        )
        self.assertEqual(
            neutralReason(errors.DiskFull("could not extend file base/1/2")),
            "the database is out of resources (disk, memory or connections)",
        )
        self.assertEqual(
            neutralReason(errors.AdminShutdown("terminating connection")),
            "the database is shutting down or restarting",
        )
        self.assertEqual(
            neutralReason(errors.UndefinedTable('relation "secret_table" does not exist')),
            "a database error (SQLSTATE 42P01)",
        )
        refused = psycopg.OperationalError(
            'connection failed: connection to server at "db.internal" (10.0.0.5), port 5432'
            ' failed: FATAL:  password authentication failed for user "bob"'
        )
        self.assertEqual(neutralReason(refused), "the database refused the login")
        unreachable = psycopg.OperationalError(
            'connection failed: connection to server at "db.internal", port 5432 failed'
        )
        self.assertEqual(neutralReason(unreachable), "the database cannot be reached")


class SettingsTests(SynchronousTestCase):
    """
    Parsing the store's settings, choosing a store, and the server options.
    """

    def test_durations(self) -> None:
        """
        Durations take s, m, h, d, w or bare seconds; others are refused.
        """
        self.assertEqual(parseDuration("30d"), 30 * 86400)
        self.assertEqual(parseDuration("12h"), 43200)
        self.assertEqual(parseDuration("1.5m"), 90)
        self.assertEqual(parseDuration("3600"), 3600)
        self.assertEqual(parseDuration("2w"), 14 * 86400)
        for bad in ("", "0", "-1d", "3 days", "1y", "d"):
            self.assertRaises(ValueError, parseDuration, bad)

    def test_defaultPath(self) -> None:
        """
        The default file is under C{$XDG_STATE_HOME}, else
        C{~/.local/state}; a relative XDG_STATE_HOME is ignored.
        """
        self.assertEqual(
            defaultStorePath({"XDG_STATE_HOME": "/s", "HOME": "/h"}), "/s/ai-agent/store.sqlite3"
        )
        self.assertEqual(defaultStorePath({"HOME": "/h"}), "/h/.local/state/ai-agent/store.sqlite3")
        self.assertEqual(
            defaultStorePath({"XDG_STATE_HOME": "rel", "HOME": "/h"}),
            "/h/.local/state/ai-agent/store.sqlite3",
        )

    def test_redactURL(self) -> None:
        """
        Passwords in the user information or the query become C{***}; the
        rest of the URL stays readable.
        """
        self.assertEqual(
            redactURL("postgresql://u:p%40ss@db:5432/x?sslmode=require&password=q"),
            "postgresql://u:***@db:5432/x?sslmode=require&password=***",
        )
        self.assertEqual(redactURL("postgresql://u@db/x"), "postgresql://u@db/x")
        secrets = urlSecrets("postgresql://u:p%40ss@db/x")
        self.assertLessEqual({"p%40ss", "p@ss"}, set(secrets))
        self.assertNotIn("u", secrets)

    def test_makeStore(self) -> None:
        """
        C{--store} picks the store: none, memory, a PostgreSQL URL, a file,
        or the default file; nothing is opened yet.
        """
        clock = Clock()
        self.assertIsNone(makeStore("none", reactor, clock))
        self.assertIsInstance(makeStore("memory", reactor, clock), MemoryStore)
        postgres = makeStore("postgres://u:secret@db/x", reactor, clock, ttl=60)
        assert isinstance(postgres, SQLStore)
        self.assertEqual(postgres.dialect.name, "postgresql")
        self.assertEqual(postgres.ttl, 60)
        self.assertNotIn("secret", postgres.description)
        sqlite = makeStore("~/x.sqlite3", reactor, clock)
        assert isinstance(sqlite, SQLStore)
        self.assertEqual(sqlite.description, "SQLite " + os.path.expanduser("~/x.sqlite3"))
        default = makeStore(None, reactor, clock, environ={"XDG_STATE_HOME": "/state"})
        assert isinstance(default, SQLStore)
        self.assertEqual(default.description, "SQLite /state/ai-agent/store.sqlite3")
        self.assertFalse(os.path.exists("/state"))

    def test_checkLocation(self) -> None:
        """
        A PostgreSQL URL that cannot be parsed is refused, without its
        password; local-socket URLs and files are accepted.
        """
        checkLocation("postgresql://u:pw@db/x")
        checkLocation("/var/lib/store.sqlite3")
        checkLocation("postgresql:///x?host=/run/postgresql")
        with self.assertRaises(ValueError) as caught:
            checkLocation("postgresql://u:secret@db:port/x")
        self.assertIn("postgresql://u:***@db:port/x is not a PostgreSQL URL", str(caught.exception))
        self.assertNotIn("secret", str(caught.exception))

    def test_serverOptions(self) -> None:
        """
        C{--store} and C{--store-ttl} reach the options (the TTL in
        seconds); a bad TTL or URL is a usage error without the password.
        """
        folder = self.mktemp()
        os.makedirs(folder)
        agent = writeAgent(folder, "a.ai")
        options = ServerOptions()
        options.parseOptions(["--agent", agent])
        self.assertEqual((options["store"], options["store-ttl"]), (None, 30 * 86400))
        options = ServerOptions()
        options.parseOptions(["--agent", agent, "--store", "none", "--store-ttl", "2h"])
        self.assertEqual((options["store"], options["store-ttl"]), ("none", 7200))
        with self.assertRaises(usage.UsageError):
            ServerOptions().parseOptions(["--agent", agent, "--store-ttl", "soon"])
        with self.assertRaises(usage.UsageError) as caught:
            ServerOptions().parseOptions(["--agent", agent, "--store", "postgresql://u:pw@h:x/"])
        self.assertNotIn("pw", str(caught.exception))

    def test_service(self) -> None:
        """
        L{StoreService} opens its store when started and closes it when
        stopped, stopping the periodic purge.
        """
        clock = Clock()
        store = MemoryStore(clock, purgeInterval=10)
        service = StoreService(store)
        service.startService()
        self.successResultOf(store.put(TURNS, "a", 1))
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.successResultOf(service.stopService())
        self.assertEqual(clock.getDelayedCalls(), [])
        self.failureResultOf(store.get(TURNS, "a"), StoreError)


class ServerWiringTests(TestCase):
    """
    The server opens the store C{--store} names when it starts and closes
    it when it stops; L{Runtime.store<ai_agent.runtime.Runtime>} is it.
    """

    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        writeAgent(self.folder, "chat.ai")
        # The agent's provider; nothing here calls it.
        with open(os.path.join(self.folder, ".ai-agent.json"), "w") as f:
            json.dump(
                {"providers": {"fake": {"type": "openai", "baseUrl": "http://127.0.0.1:9"}}}, f
            )

    def build(self, *argv: str) -> Any:
        from twisted.internet.testing import MemoryReactorClock

        from ai_agent import tap

        options = tap.Options()
        options.parseOptions(
            [
                "--agent",
                os.path.join(self.folder, "chat.ai"),
                "--config",
                os.path.join(self.folder, ".ai-agent.json"),
                "--openai-completions",
                "0",
                *argv,
            ]
        )
        return tap.makeService(options, MemoryReactorClock())

    def test_runtimeStore(self) -> None:
        """
        C{--store FILE} gives the runtime a SQLite store on that file, with
        C{--store-ttl}, and a service that opens and closes it; C{--store
        none} gives it none.
        """
        path = os.path.join(self.folder, "s.sqlite3")
        top = self.build("--store", path, "--store-ttl", "1h")
        runtimes = [child.runtime for child in top if hasattr(child, "runtime")]
        stores = [child.store for child in top if isinstance(child, StoreService)]
        self.assertEqual(len(stores), 1)
        self.assertIs(runtimes[0].store, stores[0])
        self.assertEqual(stores[0].description, "SQLite " + path)
        self.assertEqual(stores[0].ttl, 3600)
        top = self.build("--store", "none")
        self.assertIsNone([c.runtime for c in top if hasattr(c, "runtime")][0].store)
        self.assertEqual([c for c in top if isinstance(c, StoreService)], [])

    def test_noStoreTurnsInMemory(self) -> None:
        """
        With C{--store none}, hidden turns go to an in-memory run store of
        the runtime's own, on the server's reactor as its clock: a turn is
        found until a day of that clock has passed, then not.
        """
        from twisted.internet.testing import MemoryReactorClock

        from ai_agent import tap

        clock = MemoryReactorClock()
        options = ServerOptions()
        options.parseOptions(
            [
                "--agent",
                os.path.join(self.folder, "chat.ai"),
                "--config",
                os.path.join(self.folder, ".ai-agent.json"),
                "--openai-completions",
                "0",
                "--store",
                "none",
            ]
        )
        top = tap.makeService(options, clock)
        [runtime] = [c.runtime for c in top if hasattr(c, "runtime")]
        turns = runtime.runner.turns
        self.assertIsInstance(turns, StoreTurnStore)
        self.assertIsInstance(turns.store, MemoryStore)
        self.assertIs(turns.store.clock, clock)
        turn = HiddenTurn((), ChatMessage("assistant", ""), (), ("call_1",))
        self.successResultOf(turns.saveTurn(turn, "team-a"))
        clock.advance(24 * 3600 - 1)
        self.assertEqual(self.successResultOf(turns.findTurn(["call_1"], "team-a")), turn)
        self.assertIsNone(self.successResultOf(turns.findTurn(["call_1"], "team-b")))
        clock.advance(1)
        self.assertIsNone(self.successResultOf(turns.findTurn(["call_1"], "team-a")))

    async def serve(self, *argv: str) -> str:
        """
        Run C{ai-agent} on this folder until its store is open, stop it with
        SIGTERM, and return its output.
        """
        import signal

        from tests._process import ServerProcess, childEnvironment, command

        protocol = ServerProcess()
        full = [
            *command("ai-agent"),
            "--agent",
            "chat.ai",
            "--openai-completions",
            "0",
            *argv,
        ]
        reactor.spawnProcess(
            protocol, full[0], full, env=childEnvironment(HOME=self.folder), path=self.folder
        )
        try:
            await protocol.waitForOutput(b"run store open", TIMEOUT)
        finally:
            if not protocol.ended.called:
                os.kill(protocol.transport.pid, signal.SIGTERM)
            status = await withTimeout(protocol.ended)
        output = protocol.output.decode()
        self.assertEqual(status, 0, output)
        return output

    async def test_defaultFile(self) -> None:
        """
        Without C{--store}, a server keeps its store in
        C{~/.local/state/ai-agent/store.sqlite3}, opened at start and closed
        at a SIGTERM.
        """
        output = await self.serve()
        path = os.path.join(self.folder, ".local", "state", "ai-agent", "store.sqlite3")
        self.assertIn(f"run store open (SQLite {path}, schema {SCHEMA_VERSION})", output)
        self.assertIn(f"run store closed (SQLite {path})", output)
        self.assertTrue(os.path.isfile(path))

    async def test_unusableStoreNotShown(self) -> None:
        """
        A server whose store file cannot be made (a file stands where its
        directory should be) answers a stored Responses request with a 503
        C{store_unavailable} whose body names no segment of the store's
        path; the server's log names the path.
        """
        from ai_agent.testing import startFakeUpstream
        from tests._process import (
            ServerProcess,
            childEnvironment,
            command,
            freePort,
            waitUntilListening,
        )
        from tests.test_http_guard import _envelope, _Raw, _request, _status

        running = await startFakeUpstream(reactor)
        self.addCleanup(running.stop)
        with open(os.path.join(self.folder, ".ai-agent.json"), "w") as f:
            json.dump({"providers": {"fake": {"type": "openai", "baseUrl": running.baseUrl}}}, f)
        blocker = os.path.join(self.folder, "private-state-dir")
        with open(blocker, "w") as f:
            f.write("a file, not a directory")
        location = os.path.join(blocker, "store.sqlite3")
        port = freePort()
        server = ServerProcess()
        argv = [
            *command("ai-agent"),
            "--agent",
            "chat.ai",
            "--openai-completions",
            str(port),
            "--store",
            location,
        ]
        reactor.spawnProcess(
            server, argv[0], argv, env=childEnvironment(HOME=self.folder), path=self.folder
        )

        def stop() -> Deferred[int]:
            if server.status is None:
                server.transport.signalProcess("KILL")
            return server.ended

        self.addCleanup(stop)
        await waitUntilListening(server, port)
        raw = _Raw()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), raw)
        self.addCleanup(raw.transport.loseConnection)
        body = json.dumps({"model": "chat", "input": "hi", "store": True}).encode()
        raw.transport.write(_request(body, path=b"/v1/responses"))
        await withTimeout(raw.waitFor(b"}}"))
        self.assertEqual(_status(raw.received), 503, raw.received)
        error = _envelope(raw.received)["error"]
        self.assertEqual(error["code"], "store_unavailable")
        self.assertIn("the run store is unavailable", error["message"])
        assertNoPathIn(self, location, raw.received.decode("utf-8"))
        self.assertIn(blocker, server.output.decode())

    async def test_postgresPasswordNotLogged(self) -> None:
        """
        A server on a PostgreSQL store logs where it is, never its password.
        """
        if not POSTGRES_URL:
            raise SkipTest(POSTGRES_SKIP)
        output = await self.serve("--store", POSTGRES_URL)
        self.assertIn(f"run store open (PostgreSQL {redactURL(POSTGRES_URL)}", output)
        for secret in urlSecrets(POSTGRES_URL):
            self.assertNotIn(secret, output)


class StoreTurnStoreTests(TestCase):
    """
    Hybrid runs' hidden turns kept in the run store (L{StoreTurnStore}), on
    SQLite.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.path = os.path.join(os.path.abspath(self.mktemp()), "store.sqlite3")

    async def openTurns(self, path: str | None = None, **limits: Any) -> StoreTurnStore:
        store = SQLStore(sqliteDialect(path or self.path), reactor, self.clock, **limits)
        self.addCleanup(store.close)
        await withTimeout(store.start())
        return StoreTurnStore(store)

    def turn(self, *callIds: str) -> HiddenTurn:
        return HiddenTurn(
            (ChatMessage("assistant", "", toolCalls=(ToolCall("o1", "calc__add", "{}"),)),),
            ChatMessage(
                "assistant", "", toolCalls=tuple(ToolCall(i, "get_weather", "{}") for i in callIds)
            ),
            (ChatMessage("tool", "2", toolCallId="o1"),),
            callIds,
        )

    async def test_foundByAnyCallId(self) -> None:
        """
        A hidden turn is found by any of its handed-back call ids, equal to
        what was saved; unknown ids find nothing.
        """
        turns = await self.openTurns()
        turn = self.turn("c1", "c2")
        await turns.saveTurn(turn)
        self.assertEqual(await turns.findTurn(["zz", "c2"]), turn)
        self.assertIsNone(await turns.findTurn(["zz"]))

    async def test_keptAtMostADay(self) -> None:
        """
        Hidden turns are kept for the store's TTL, but at most a day.
        """
        turns = await self.openTurns(ttl=30 * 86400)
        self.assertEqual(turns.ttl, 86400)
        self.assertEqual((await self.openTurns(ttl=600)).ttl, 600)
        await turns.saveTurn(self.turn("c1"))
        self.clock.advance(86400)
        self.assertIsNone(await turns.findTurn(["c1"]))

    async def test_unavailable(self) -> None:
        """
        A store that cannot be read fails the look-up with its 503
        L{StoreUnavailableError}, rather than find nothing: the run must not
        go on without the agent's earlier work.
        """
        blocker = self.mktemp()
        with open(blocker, "w") as f:
            f.write("not a directory")
        store = SQLStore(sqliteDialect(os.path.join(blocker, "s.sqlite3")), reactor, self.clock)
        self.addCleanup(store.close)
        error = await withTimeout(
            self.assertFailure(StoreTurnStore(store).findTurn(["c1"]), StoreUnavailableError)
        )
        self.assertEqual((error.status, error.code), (503, "store_unavailable"))

    async def test_saveUnavailable(self) -> None:
        """
        A store that cannot be written fails the save with its 503
        L{StoreUnavailableError}.
        """
        blocker = self.mktemp()
        with open(blocker, "w") as f:
            f.write("not a directory")
        store = SQLStore(sqliteDialect(os.path.join(blocker, "s.sqlite3")), reactor, self.clock)
        self.addCleanup(store.close)
        error = await withTimeout(
            self.assertFailure(
                StoreTurnStore(store).saveTurn(self.turn("c1")), StoreUnavailableError
            )
        )
        self.assertEqual(error.status, 503)

    async def test_unreadable(self) -> None:
        """
        A document that is not a hidden turn is skipped with a warning.
        """
        turns = await self.openTurns()
        await turns.store.put(TURNS, "c1", {"not": "a turn"})
        logs = LogCapture(self)
        self.assertIsNone(await turns.findTurn(["c1"]))
        self.assertIn("the hidden turn under c1 is unreadable", logs.everything())

    async def test_continuationAfterRestart(self) -> None:
        """
        A hybrid run's first half on one store, its continuation on a store
        opened afresh on the same file (a server restart): the continued
        run's model sees the whole history, hidden turns included.
        """
        from ai_agent.request import RunRequest
        from ai_agent.session import SessionRunner
        from ai_agent.testing import ScriptedProvider
        from tests.test_clienttools import WEATHER, _answer, _calls
        from tests.test_session import _agent, _Tools

        tools = _Tools({"calc__add": lambda args: succeed(str(args["a"] + args["b"]))})
        provider = ScriptedProvider(
            name="first",
            replies=[
                _calls(("o1", "calc__add", {"a": 2, "b": 3})),
                _calls(("c1", "get_weather", {"city": "X"})),
                _answer("5 and sunny"),
            ],
        )

        def runner(turns: StoreTurnStore) -> SessionRunner:
            return SessionRunner(
                {"first": provider}.__getitem__, self.clock, lambda agent: tools, turns=turns
            )

        from ai_agent.events import ClientToolCall

        question = ChatMessage("user", "sum, then weather")
        before = await self.openTurns()
        handed: list[ClientToolCall] = []
        await runner(before).run(
            _agent(),
            RunRequest((question,), clientTools=(WEATHER,)),
            lambda event: handed.append(event) if isinstance(event, ClientToolCall) else None,
        )
        await before.store.close()
        after = await self.openTurns()
        callId = handed[0].id
        clientSaw = ChatMessage("assistant", "", toolCalls=(ToolCall(callId, "get_weather", "{}"),))
        result = ChatMessage("tool", "sunny", toolCallId=callId)
        await runner(after).run(
            _agent(),
            RunRequest((question, clientSaw, result), clientTools=(WEATHER,)),
            lambda event: None,
        )
        seen = provider.requests[2].messages
        self.assertEqual(
            [(m.role, [c.id for c in m.toolCalls], m.toolCallId) for m in seen[1:]],
            [
                ("user", [], None),
                ("assistant", ["o1"], None),
                ("tool", [], "o1"),
                ("assistant", [callId], None),
                ("tool", [], callId),
            ],
        )
