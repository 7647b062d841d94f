"""
The run store when its database goes away: a connection the database
dropped is replaced and the operation run again once on a new one, idle
connections are replaced before use, a stored request checks the store
before it spends an upstream call, and a hybrid run whose hidden turn can be
neither kept nor read fails with the store's error (a 503 in each API's
envelope) instead of going on without it.

Two layers: a SQLite store whose connections the test can break (as a
PostgreSQL restart or outage breaks them) for fast tests of the logic,
through the real server where it matters; and a real PostgreSQL server
restarted and stopped under a running store (set
C{AI_AGENT_TEST_POSTGRES_URL} and C{AI_AGENT_TEST_POSTGRES_DIR}, the
cluster's directory for C{.ci/postgres restart|stop|resume}; C{.ci/run}
sets both).
"""

from __future__ import annotations

import io
import json
import logging
import os
import sqlite3
import subprocess
import sys
from typing import Any

import attrs
import openai
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from ai_agent.store import (
    TURNS,
    SQLStore,
    StoreUnavailableError,
    checkLocation,
    postgresDialect,
    sqliteDialect,
)
from ai_agent.store._base import splitStoreOptions
from ai_agent.testing import Reply
from tests._harness import LiveServer, inThread, startServer
from tests.mcp_servers import calcEntry
from tests.test_store import LogCapture, withTimeout

POSTGRES_URL = os.environ.get("AI_AGENT_TEST_POSTGRES_URL", "")
POSTGRES_DIR = os.environ.get("AI_AGENT_TEST_POSTGRES_DIR", "")
POSTGRES_SKIP = (
    None
    if POSTGRES_URL and POSTGRES_DIR
    else "AI_AGENT_TEST_POSTGRES_URL and AI_AGENT_TEST_POSTGRES_DIR are not both set: no"
    " PostgreSQL server to restart (.ci/run starts one with .ci/postgres)"
)
CI_POSTGRES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".ci", "postgres"
)

MODEL = "hybrid"

HYBRID = """\
---
description: An agent with its own calculator, serving clients with their own tools
models: fake/test-model
tools: [calc]
---
You are the hybrid agent.
"""

WEATHER_CHAT: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}

QUESTION = [{"role": "user", "content": "What is 2+3, and the weather in Paris?"}]

#: What the fake upstream answers a hybrid run: its own tool, then the
#: client's, then (in the continuation) the answer.
HYBRID_SCRIPT = (
    Reply(toolCalls=[("calc__add", {"a": 2, "b": 3})]),
    Reply(toolCalls=[("get_weather", {"city": "Paris"})]),
    Reply(content="5, and rain in Paris."),
)


# -- a SQLite store whose connections the test breaks ----------------------


@attrs.define(eq=False)
class _Connection:
    """
    A SQLite connection that fails like a PostgreSQL connection whose server
    restarted: it looks fine until it is used, then fails and is broken.
    """

    real: sqlite3.Connection
    dead: bool = False
    broken: bool = False

    def cursor(self) -> sqlite3.Cursor:
        if self.dead:
            self.broken = True
            raise sqlite3.OperationalError("terminating connection due to administrator command")
        return self.real.cursor()

    def commit(self) -> None:
        if self.broken:
            raise sqlite3.OperationalError("the connection is lost")
        self.real.commit()

    def rollback(self) -> None:
        if self.broken:
            raise sqlite3.OperationalError("the connection is lost")
        self.real.rollback()

    def close(self) -> None:
        self.broken = True
        self.real.close()


@attrs.define(eq=False)
class FaultyDatabase:
    """
    A SQLite file behind connections the test can break: C{restart} kills
    every open connection (each fails its next use), C{stop} also refuses
    new ones until C{resume}.

    @ivar opened: every connection opened, in order.
    @ivar attempts: how many connections were asked for.
    """

    path: str
    idleTimeout: float | None = None
    down: bool = False
    opened: list[_Connection] = attrs.field(factory=list)
    attempts: int = 0

    def dialect(self) -> Any:
        base = sqliteDialect(self.path)

        def connect() -> _Connection:
            self.attempts += 1
            if self.down:
                raise sqlite3.OperationalError(
                    'connection to server at "127.0.0.1" failed: Connection refused\n'
                    "\tIs the server running on that host?"
                )
            connection = _Connection(base.connect())
            self.opened.append(connection)
            return connection

        return attrs.evolve(
            base,
            connect=connect,
            isBroken=lambda connection: connection.broken,
            idleTimeout=self.idleTimeout,
        )

    def restart(self) -> None:
        for connection in self.opened:
            connection.dead = True

    def stop(self) -> None:
        self.restart()
        self.down = True

    def resume(self) -> None:
        self.down = False


def _faultyStore(
    testCase: TestCase, clock: Any = None, **kwargs: Any
) -> tuple[SQLStore, FaultyDatabase]:
    path = os.path.join(os.path.abspath(testCase.mktemp()), "store.sqlite3")
    database = FaultyDatabase(path, idleTimeout=kwargs.pop("idleTimeout", None))
    store = SQLStore(database.dialect(), reactor, reactor if clock is None else clock, **kwargs)
    return store, database


class RetryTests(TestCase):
    """
    An operation whose connection broke under it runs again, once, on a new
    connection; idle connections are replaced before use.
    """

    async def openStore(self, **kwargs: Any) -> tuple[SQLStore, FaultyDatabase]:
        self.clock = Clock()
        store, database = _faultyStore(self, self.clock, **kwargs)
        self.addCleanup(store.close)
        await withTimeout(store.start())
        return store, database

    async def test_readAndWriteAfterRestart(self) -> None:
        """
        After the database ended every connection, the next read and the
        next write succeed (no 503), each on a new connection, and a
        one-line warning says the operation was tried again.
        """
        store, database = await self.openStore()
        await withTimeout(store.put(TURNS, "a", {"n": 1}))
        database.restart()
        logs = LogCapture(self)
        found = await withTimeout(store.get(TURNS, "a"))
        assert found is not None
        self.assertEqual(found.document, {"n": 1})
        self.assertEqual(len(database.opened), 2)
        database.restart()
        await withTimeout(store.put(TURNS, "b", {"n": 2}))
        self.assertEqual(len(database.opened), 3)
        found = await withTimeout(store.get(TURNS, "b"))
        assert found is not None
        self.assertEqual(found.document, {"n": 2})
        text = logs.everything()
        self.assertIn(
            "the database dropped a connection (terminating connection due to administrator"
            " command); get tried again on a new one",
            text,
        )
        self.assertIn("; put tried again on a new one", text)

    async def test_deleteAfterRestart(self) -> None:
        """
        A delete on a dropped connection is run again on a new one, and
        removes the document.
        """
        store, database = await self.openStore()
        await withTimeout(store.put(TURNS, "a", 1))
        database.restart()
        self.assertTrue(await withTimeout(store.delete(TURNS, "a")))
        self.assertIsNone(await withTimeout(store.get(TURNS, "a")))

    async def test_onlyOnce(self) -> None:
        """
        When the new connection cannot be had either (the database is
        down), the operation fails with the 503 L{StoreUnavailableError}
        after exactly one more connection attempt: never a third.
        """
        store, database = await self.openStore()
        await withTimeout(store.put(TURNS, "a", 1))
        self.assertEqual(database.attempts, 1)
        database.stop()
        error = await withTimeout(self.assertFailure(store.get(TURNS, "a"), StoreUnavailableError))
        self.assertEqual(error.status, 503)
        self.assertEqual(database.attempts, 2)
        # The message is one line: libpq's run over two.
        self.assertNotIn("\n", error.message)
        self.assertIn("Connection refused Is the server running", error.message)
        database.resume()
        found = await withTimeout(store.get(TURNS, "a"))
        assert found is not None
        self.assertEqual(found.document, 1)

    async def test_statementErrorNotRetried(self) -> None:
        """
        A failure that leaves the connection usable (a statement error) is
        not tried again: one connection, one 503.
        """
        store, database = await self.openStore()
        await withTimeout(store.put(TURNS, "a", 1))
        other = sqlite3.connect(database.path)
        other.execute("DROP TABLE ai_agent_store")
        other.commit()
        other.close()
        logs = LogCapture(self)
        await withTimeout(self.assertFailure(store.get(TURNS, "a"), StoreUnavailableError))
        self.assertEqual((database.attempts, len(database.opened)), (1, 1))
        self.assertNotIn("tried again", logs.everything())

    async def test_idleConnectionReplaced(self) -> None:
        """
        A connection idle for longer than the dialect's C{idleTimeout} is
        closed and replaced before its next use; one used within it is
        kept.
        """
        store, database = await self.openStore(idleTimeout=300.0)
        await withTimeout(store.put(TURNS, "a", 1))
        self.clock.advance(299)
        await withTimeout(store.get(TURNS, "a"))
        self.assertEqual(len(database.opened), 1)
        self.clock.advance(301)
        found = await withTimeout(store.get(TURNS, "a"))
        assert found is not None
        self.assertEqual(found.document, 1)
        self.assertEqual(len(database.opened), 2)
        self.assertTrue(database.opened[0].broken)  # closed
        self.assertFalse(database.opened[1].broken)

    async def test_checkAvailable(self) -> None:
        """
        C{checkAvailable} answers at once (no database work) within
        C{livenessWindow} of a successful operation; later it asks the
        database; after a failure it asks again, and fails with a 503
        while the database is down.
        """
        store, database = await self.openStore(livenessWindow=2.0)
        await withTimeout(store.put(TURNS, "a", 1))
        self.assertTrue(store.checkAvailable().called)
        self.clock.advance(2.0)
        asking = store.checkAvailable()
        self.assertFalse(asking.called)  # sent to a store thread
        await withTimeout(asking)
        self.assertTrue(store.checkAvailable().called)
        database.stop()
        self.clock.advance(2.0)
        await withTimeout(self.assertFailure(store.checkAvailable(), StoreUnavailableError))
        # Failed: asked again, not trusted, even within the window.
        await withTimeout(self.assertFailure(store.checkAvailable(), StoreUnavailableError))
        database.resume()
        await withTimeout(store.checkAvailable())
        self.assertTrue(store.checkAvailable().called)


class SettingsTests(SynchronousTestCase):
    """
    The store's own URL parameters and one-line error messages.
    """

    def test_idleTimeoutFromURL(self) -> None:
        """
        C{idle_timeout} in a PostgreSQL URL is the store's (a duration),
        taken out of the URL libpq gets; other parameters stay as written.
        """
        self.assertEqual(
            splitStoreOptions("postgresql://u@h/db?sslmode=require&idle_timeout=5m&host=%2Ftmp"),
            ("postgresql://u@h/db?sslmode=require&host=%2Ftmp", {"idle_timeout": 300.0}),
        )
        self.assertEqual(
            splitStoreOptions("postgresql://u@h/db?idle_timeout=90"),
            ("postgresql://u@h/db", {"idle_timeout": 90.0}),
        )
        self.assertEqual(splitStoreOptions("postgresql://u@h/db"), ("postgresql://u@h/db", {}))
        with self.assertRaises(ValueError) as raised:
            checkLocation("postgresql://u:secret@h/db?idle_timeout=soon")
        self.assertIn("idle_timeout", str(raised.exception))
        self.assertNotIn("secret", str(raised.exception))

    def test_postgresDialectIdleTimeout(self) -> None:
        """
        A PostgreSQL store replaces connections idle for 300 s unless the
        URL says otherwise; SQLite never does.
        """
        self.assertEqual(postgresDialect("postgresql://u@h/db").idleTimeout, 300.0)
        self.assertEqual(postgresDialect("postgresql://u@h/db?idle_timeout=10m").idleTimeout, 600.0)
        self.assertIsNone(sqliteDialect("x.sqlite3").idleTimeout)

    def test_psycopgLogRouted(self) -> None:
        """
        What psycopg logs through the standard library reaches the server's
        log as one formatted line, and nothing reaches standard error bare.
        """
        postgresDialect("postgresql://u@h/db")
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        logging.getLogger("psycopg").warning(
            "error ignored in rollback on %s: %s", "<conn>", "server closed\n\tthe connection"
        )
        self.assertEqual(stderr.getvalue(), "")
        self.assertEqual(
            [formatEvent(e) for e in events if e.get("log_namespace") == "psycopg"],
            ["psycopg: error ignored in rollback on <conn>: server closed the connection"],
        )


# -- through the server -----------------------------------------------------


def _http(testCase: TestCase) -> HTTPClient:
    pool = HTTPConnectionPool(reactor, persistent=False)
    testCase.addCleanup(pool.closeCachedConnections)
    return HTTPClient(Agent(reactor, pool=pool))


async def _post(testCase: TestCase, url: str, body: Any) -> tuple[int, Any]:
    response = await _http(testCase).post(
        url, json.dumps(body).encode("utf-8"), headers={b"content-type": [b"application/json"]}
    )
    text = await response.text("utf-8")
    return response.code, json.loads(text)


async def _hybridServer(testCase: TestCase, store: Any) -> LiveServer:
    return await startServer(
        testCase,
        agents={f"{MODEL}.ai": HYBRID},
        mcpServers={"calc": calcEntry()},
        streamHeadGrace=0.0,
        store=store,
    )


def _origin(server: LiveServer) -> str:
    return server.baseUrl.removesuffix("/v1")


class HiddenTurnFailureTests(TestCase):
    """
    A hybrid run whose hidden turn cannot be read or kept fails with the
    store's error, in each API's envelope, instead of answering without it.
    """

    async def test_readFailsEachAPI(self) -> None:
        """
        With the database down, a client-tool continuation on Chat
        Completions, on Messages and on Responses (stored: the store's
        check before the run fails first; a C{store: false} run keeps its
        turn sealed in the client's input, not in the store) answers 503 in
        its own envelope,
        code C{store_unavailable} where the API has codes, and the model is
        never called (it would repeat its tool call).
        """
        store, database = _faultyStore(self)
        server = await _hybridServer(self, store)
        database.stop()
        origin = _origin(server)
        chat = await _post(
            self,
            origin + "/v1/chat/completions",
            {
                "model": MODEL,
                "tools": [WEATHER_CHAT],
                "messages": [
                    *QUESTION,
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": "{}"},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
                ],
            },
        )
        self.assertEqual(chat[0], 503)
        self.assertEqual(
            (chat[1]["error"]["type"], chat[1]["error"]["code"]),
            ("server_error", "store_unavailable"),
        )
        self.assertIn("the run store failed", chat[1]["error"]["message"])
        messages = await _post(
            self,
            origin + "/v1/messages",
            {
                "model": MODEL,
                "max_tokens": 100,
                "tools": [
                    {
                        "name": "get_weather",
                        "description": "The weather in a city",
                        "input_schema": WEATHER_CHAT["function"]["parameters"],
                    }
                ],
                "messages": [
                    *QUESTION,
                    {
                        "role": "assistant",
                        "content": [
                            {
                                "type": "tool_use",
                                "id": "toolu_1",
                                "name": "get_weather",
                                "input": {},
                            }
                        ],
                    },
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "rain"}
                        ],
                    },
                ],
            },
        )
        self.assertEqual(messages[0], 503)
        self.assertEqual(messages[1]["type"], "error")
        self.assertEqual(messages[1]["error"]["type"], "api_error")
        self.assertIn("the run store failed", messages[1]["error"]["message"])
        responses = await _post(
            self,
            origin + "/v1/responses",
            {
                "model": MODEL,
                "tools": [{"type": "function", **WEATHER_CHAT["function"]}],
                "input": [
                    {"role": "user", "content": QUESTION[0]["content"]},
                    {
                        "type": "function_call",
                        "call_id": "call_2",
                        "name": "get_weather",
                        "arguments": "{}",
                    },
                    {"type": "function_call_output", "call_id": "call_2", "output": "rain"},
                ],
            },
        )
        self.assertEqual(responses[0], 503)
        self.assertEqual(responses[1]["error"]["code"], "store_unavailable")
        self.assertEqual(server.upstream.requests, [])

    async def test_writeFails(self) -> None:
        """
        When the hidden turn cannot be kept at hand-back (the database went
        down during the run), the run fails with the store's 503 instead of
        handing back a call whose continuation would go on without the
        agent's own work.
        """
        store, database = _faultyStore(self)
        server = await _hybridServer(self, store)
        server.upstream.script(*HYBRID_SCRIPT[:2])
        database.stop()
        with self.assertRaises(openai.InternalServerError) as raised:
            await inThread(
                server.client().chat.completions.create,
                model=MODEL,
                messages=QUESTION,
                tools=[WEATHER_CHAT],
            )
        self.assertEqual(raised.exception.status_code, 503)
        self.assertEqual(raised.exception.code, "store_unavailable")
        # The run got as far as the hand-back: both upstream calls were made.
        self.assertEqual(len(server.upstream.requests), 2)

    async def test_writeFailsStreamed(self) -> None:
        """
        Streamed, the same failure ends the stream with the store's error
        (Chat Completions' error frame, code C{store_unavailable}) and the
        client's call is never sent: nothing to continue from.
        """
        store, database = _faultyStore(self)
        server = await _hybridServer(self, store)
        server.upstream.script(*HYBRID_SCRIPT[:2])
        database.stop()
        response = await _http(self).post(
            _origin(server) + "/v1/chat/completions",
            json.dumps(
                {"model": MODEL, "messages": QUESTION, "tools": [WEATHER_CHAT], "stream": True}
            ).encode("utf-8"),
            headers={b"content-type": [b"application/json"]},
        )
        text = await response.text("utf-8")
        frames = [
            json.loads(line.removeprefix("data: "))
            for line in text.splitlines()
            if line.startswith("data: {")
        ]
        errors = [frame["error"] for frame in frames if "error" in frame]
        self.assertEqual([error["code"] for error in errors], ["store_unavailable"])
        handedBack = [
            call["function"].get("name")
            for frame in frames
            for choice in frame.get("choices", ())
            for call in choice.get("delta", {}).get("tool_calls") or ()
        ]
        self.assertNotIn("get_weather", handedBack)
        self.assertEqual(len(server.upstream.requests), 2)

    async def test_storedRequestChecksFirst(self) -> None:
        """
        A stored Responses request while the database is down (and has not
        answered within the store's liveness window) answers 503 before any
        upstream call; the same request with C{store: false} is answered.
        """
        clock = Clock()
        store, database = _faultyStore(self, clock)
        server = await _hybridServer(self, store)
        database.stop()
        # The store answered when it opened; once that is older than its
        # liveness window, a stored request asks the database first.
        clock.advance(store.livenessWindow)
        origin = _origin(server)
        code, body = await _post(self, origin + "/v1/responses", {"model": MODEL, "input": "Hi"})
        self.assertEqual(code, 503)
        self.assertEqual(
            (body["error"]["type"], body["error"]["code"]), ("server_error", "store_unavailable")
        )
        self.assertEqual(server.upstream.requests, [])
        server.upstream.script(Reply(content="Hello."))
        code, body = await _post(
            self, origin + "/v1/responses", {"model": MODEL, "input": "Hi", "store": False}
        )
        self.assertEqual(code, 200)
        self.assertEqual(body["output"][0]["content"][0]["text"], "Hello.")
        self.assertEqual(len(server.upstream.requests), 1)


# -- a real PostgreSQL, restarted and stopped -------------------------------


def _postgres(action: str) -> Deferred[None]:
    """
    C{.ci/postgres ACTION} on the test cluster, in a thread.
    """

    def run() -> None:
        subprocess.run(
            [CI_POSTGRES, action, POSTGRES_DIR],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    return deferToThread(run)


class PostgresRestartTests(TestCase):
    """
    A real PostgreSQL restarted and stopped under a running store and
    server.
    """

    skip = POSTGRES_SKIP

    def postgresStore(self, connections: int = 4) -> SQLStore:
        return SQLStore(postgresDialect(POSTGRES_URL), reactor, reactor, connections=connections)

    async def stopDatabase(self) -> None:
        """
        Stop the database; it is started again when the test ends, if the
        test did not.
        """
        await _postgres("stop")
        self.stopped = True

        def resumeIfStopped() -> Deferred[None] | None:
            return self.resumeDatabase() if self.stopped else None

        self.addCleanup(resumeIfStopped)

    def resumeDatabase(self) -> Deferred[None]:
        self.stopped = False
        return _postgres("resume")

    async def test_readAndWriteAfterRestart(self) -> None:
        """
        After a restart of the database, with every one of the store's
        connections dead, concurrent reads and writes all succeed (no 503),
        the log has only the store's own one-line warnings, and nothing
        reaches standard error.
        """
        store = self.postgresStore()
        await withTimeout(store.start())
        self.addCleanup(store.close)
        # Every store thread opens its connection.
        for _ in range(3):
            await withTimeout(
                gatherResults([store.put(TURNS, f"k{i}", {"i": i}) for i in range(16)])
            )
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        logs = LogCapture(self)
        await _postgres("restart")
        found = await withTimeout(gatherResults([store.get(TURNS, f"k{i}") for i in range(16)]))
        self.assertEqual([f.document for f in found], [{"i": i} for i in range(16)])
        await withTimeout(gatherResults([store.put(TURNS, f"n{i}", {"i": -i}) for i in range(16)]))
        again = await withTimeout(store.get(TURNS, "n3"))
        assert again is not None
        self.assertEqual(again.document, {"i": -3})
        lines = [formatEvent(event) or "" for event in logs.events]
        self.assertTrue(any("the database dropped a connection" in line for line in lines))
        self.assertEqual([line for line in lines if "failed" in line], [])
        for line in lines:
            self.assertNotIn("\n", line)
        self.assertEqual(stderr.getvalue(), "")

    async def test_stoppedDatabaseOneLine(self) -> None:
        """
        With the database stopped, operations fail with a 503 whose message
        (and log line) is one line, and nothing reaches standard error; once
        it is back, the store works again.
        """
        store = self.postgresStore()
        await withTimeout(store.start())
        self.addCleanup(store.close)
        await withTimeout(store.put(TURNS, "a", 1))
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        logs = LogCapture(self)
        await self.stopDatabase()
        for _ in range(2):
            error = await withTimeout(
                self.assertFailure(store.get(TURNS, "a"), StoreUnavailableError)
            )
            # libpq's message runs over two lines; the store's is one.
            self.assertIn("Connection refused Is the server running", error.message)
        lines = [formatEvent(event) or "" for event in logs.events]
        self.assertTrue(any("run store get failed" in line for line in lines))
        for line in lines:
            self.assertNotIn("\n", line)
        self.assertEqual(stderr.getvalue(), "")
        await self.resumeDatabase()
        found = await withTimeout(store.get(TURNS, "a"))
        assert found is not None
        self.assertEqual(found.document, 1)

    async def test_continuationAfterRestart(self) -> None:
        """
        A hybrid run's hidden turn kept before a restart of the database is
        restored after it: the continuation's model sees its own calc call
        and result (it does not call it again), and answers.
        """
        server = await _hybridServer(self, self.postgresStore(connections=1))
        server.upstream.script(*HYBRID_SCRIPT)
        client = server.client()
        first = await inThread(
            client.chat.completions.create, model=MODEL, messages=QUESTION, tools=[WEATHER_CHAT]
        )
        message = first.choices[0].message
        [call] = message.tool_calls
        await _postgres("restart")
        answer = await inThread(
            client.chat.completions.create,
            model=MODEL,
            messages=[
                *QUESTION,
                message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "rain"},
            ],
            tools=[WEATHER_CHAT],
        )
        self.assertEqual(answer.choices[0].message.content, "5, and rain in Paris.")
        self.assertEqual(len(server.upstream.requests), 3)
        seen = [
            (
                m["role"],
                [c["function"]["name"] for c in m.get("tool_calls") or ()],
                m.get("content"),
            )
            for m in server.upstream.requests[2].body["messages"]
            if m["role"] != "system"
        ]
        self.assertEqual(
            seen,
            [
                ("user", [], QUESTION[0]["content"]),
                ("assistant", ["calc__add"], None),
                ("tool", [], "5"),
                ("assistant", ["get_weather"], None),
                ("tool", [], "rain"),
            ],
        )

    async def test_storedPostWhileStopped(self) -> None:
        """
        With the database stopped (and found so by a read), a stored
        Responses request answers 503 (C{store_unavailable}) and the fake
        upstream gets no call; once the database is back, the same request
        is answered and stored.
        """
        store = self.postgresStore()
        server = await _hybridServer(self, store)
        await self.stopDatabase()
        origin = _origin(server)
        # The first request to touch the store finds it down...
        missing = await _http(self).get(origin + "/v1/responses/resp_unknown")
        self.assertEqual(missing.code, 503)
        await missing.content()
        # ...and from then on a stored request asks before it runs.
        code, body = await _post(self, origin + "/v1/responses", {"model": MODEL, "input": "Hi"})
        self.assertEqual((code, body["error"]["code"]), (503, "store_unavailable"))
        self.assertEqual(server.upstream.requests, [])
        await self.resumeDatabase()
        server.upstream.script(Reply(content="Back."))
        code, body = await _post(self, origin + "/v1/responses", {"model": MODEL, "input": "Hi"})
        self.assertEqual(code, 200)
        self.assertEqual(len(server.upstream.requests), 1)
        kept = await withTimeout(store.get("responses", body["id"]))
        self.assertIsNotNone(kept)

    async def test_hiddenTurnWriteFails(self) -> None:
        """
        The database stopped while a hybrid run works: its hidden turn
        cannot be kept at hand-back, and the run fails with the store's
        503 rather than hand back the client's call.
        """
        server = await _hybridServer(self, self.postgresStore())
        server.upstream.script(*HYBRID_SCRIPT[:2])
        await self.stopDatabase()
        with self.assertRaises(openai.InternalServerError) as raised:
            await inThread(
                server.client().chat.completions.create,
                model=MODEL,
                messages=QUESTION,
                tools=[WEATHER_CHAT],
            )
        self.assertEqual(
            (raised.exception.status_code, raised.exception.code), (503, "store_unavailable")
        )
        self.assertEqual(len(server.upstream.requests), 2)
