"""
The A2A headend's wire, read raw (what the SDK tests cannot see): the
HTTP+JSON binding's error bodies and statuses, a failed task's reason, the
agent's progress as status updates, C{ListTasks} pages, data parts per the
agent's input schema, the body cap and the metrics, and cards following a
reload.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

import httpx
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ai_agent.errors import AgentError
from ai_agent.headends._http import HTTPPolicy
from ai_agent.headends.a2a import (
    A2A_ERRORS,
    INDEX_PAGE,
    MAX_INDEXED,
    A2AHeadend,
    a2aError,
    indexed,
    parseSendParams,
    rpcError,
    taskView,
)
from ai_agent.observe import Metrics, Observability
from ai_agent.registry import ServedAgent
from ai_agent.reload import Reloader
from ai_agent.store import MemoryStore
from ai_agent.testing import Reply
from tests._harness import SENTINEL_KEY, LiveServer, inThread, startServer, writeAgent
from tests.mcp_servers import calcEntry

V1 = {"A2A-Version": "1.0"}

HYBRID = """\
---
description: An agent with its own calculator
models: fake/test-model
tools: [calc]
---
You are the hybrid agent.
"""

STRUCTURED = """\
---
description: Takes a city
models: fake/test-model
input:
  format: json
  schema:
    type: object
    properties:
      city: {type: string}
    required: [city]
---
You are the weather agent.
"""


def _url(server: LiveServer, path: str) -> str:
    return server.baseUrl[: -len("/v1")] + path


def _message(text: str = "Hello", **extra: Any) -> dict[str, Any]:
    return {"message": {"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": text}], **extra}}


async def _post(
    server: LiveServer, path: str, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await inThread(
        httpx.post,
        _url(server, path),
        content=json.dumps(body).encode(),
        headers={"content-type": "application/json", **(V1 if headers is None else headers)},
        timeout=20,
    )


async def _get(server: LiveServer, path: str, **params: Any) -> httpx.Response:
    return await inThread(httpx.get, _url(server, path), params=params, headers=V1, timeout=20)


def _sse(response: httpx.Response) -> list[dict[str, Any]]:
    return [
        json.loads(line[len("data: ") :])
        for line in response.text.splitlines()
        if line.startswith("data: ")
    ]


class RESTErrorTests(TestCase):
    """
    The HTTP+JSON binding's errors: C{google.rpc.Status} bodies with A2A's
    C{ErrorInfo} reasons and the spec's statuses.
    """

    async def test_errors(self) -> None:
        """
        An unknown task is a 404 C{TASK_NOT_FOUND}; a request without
        C{A2A-Version} a 400 C{VERSION_NOT_SUPPORTED}; push notification
        configuration a 400 C{PUSH_NOTIFICATION_NOT_SUPPORTED}; a file part
        a 400 C{CONTENT_TYPE_NOT_SUPPORTED} naming the file; an agent not
        served a 404; no upstream call is made.
        """
        server = await startServer(self)
        file = {
            "message": {
                "messageId": "m1",
                "role": "ROLE_USER",
                "parts": [{"url": "http://x.example/a.png", "filename": "a.png"}],
            }
        }
        cases = [
            (await _get(server, "/a2a/agent/tasks/nope"), 404, "TASK_NOT_FOUND"),
            (
                await _post(server, "/a2a/agent/message:send", _message(), headers={}),
                400,
                "VERSION_NOT_SUPPORTED",
            ),
            (
                await _post(server, "/a2a/agent/tasks/t1/pushNotificationConfigs", {}),
                400,
                "PUSH_NOTIFICATION_NOT_SUPPORTED",
            ),
            (
                await _post(server, "/a2a/agent/message:send", file),
                400,
                "CONTENT_TYPE_NOT_SUPPORTED",
            ),
            (await _get(server, "/a2a/nobody/tasks"), 404, "AGENT_NOT_FOUND"),
        ]
        for response, status, reason in cases:
            error = response.json()["error"]
            self.assertEqual(
                (response.status_code, error["code"], error["details"][0]["reason"]),
                (status, status, reason),
                error,
            )
            self.assertEqual(error["details"][0]["domain"], "a2a-protocol.org")
        self.assertIn("a.png", cases[3][0].json()["error"]["message"])
        self.assertEqual(server.upstream.requests, [])

    async def test_bodyCap(self) -> None:
        """
        A body over the server's cap is refused by the guard with a 413 in
        A2A's envelope, before any run.
        """
        server = await startServer(self, policy=HTTPPolicy(maxBodySize=1000))
        response = await _post(server, "/a2a/agent/message:send", _message("x" * 5000))
        self.assertEqual(response.status_code, 413)
        self.assertEqual(response.json()["error"]["code"], 413)
        self.assertEqual(server.upstream.requests, [])


class TaskLifeTests(TestCase):
    """
    What a task goes through, as the wire shows it.
    """

    async def test_failedWithReason(self) -> None:
        """
        An upstream that refuses the call ends the task
        C{TASK_STATE_FAILED} with the reason as its status message (and the
        provider's key nowhere in it).
        """
        server = await startServer(self)
        server.upstream.script(
            Reply(status=400, errorBody={"error": {"message": "context too long"}})
        )
        response = await _post(server, "/a2a/agent/message:send", _message())
        task = response.json()["task"]
        self.assertEqual(task["status"]["state"], "TASK_STATE_FAILED")
        reason = task["status"]["message"]["parts"][0]["text"]
        self.assertIn("context too long", reason)
        self.assertNotIn("sk-sentinel", response.text)

    async def test_answerCap(self) -> None:
        """
        A task whose answer grows past the server's bound (as the other
        APIs bound a run's answer) is stopped and ends
        C{TASK_STATE_FAILED} saying so, and the cut answer is not what
        C{GetTask} returns as its artifact.
        """
        server = await startServer(self)
        for mount in server.mounts:
            if isinstance(mount.headend, A2AHeadend):
                mount.headend.maxAnswer = 20
        server.upstream.script(Reply(content="word " * 40))
        response = await _post(server, "/a2a/agent/message:send", _message())
        task = response.json()["task"]
        self.assertEqual(task["status"]["state"], "TASK_STATE_FAILED")
        reason = task["status"]["message"]["parts"][0]["text"]
        self.assertIn("20", reason)
        got = await _get(server, f"/a2a/agent/tasks/{task['id']}")
        self.assertEqual(got.json()["status"]["state"], "TASK_STATE_FAILED")
        answer = "".join(
            part["text"]
            for artifact in got.json().get("artifacts", ())
            for part in artifact["parts"]
        )
        self.assertLessEqual(len(answer), 20)

    async def test_manyPiecesOneAnswer(self) -> None:
        """
        An answer streamed in many pieces is the task's one answer
        artifact, whole, however the task is read: in the blocking send's
        answer, by C{GetTask}, and, appended piece by piece, on the
        stream (the artifact is joined when the task is read, not on each
        piece).
        """
        server = await startServer(self)
        pieces = [f"p{i} " for i in range(300)]
        server.upstream.script(Reply(content=pieces), Reply(content=pieces))
        response = await _post(server, "/a2a/agent/message:send", _message())
        task = response.json()["task"]
        self.assertEqual(task["status"]["state"], "TASK_STATE_COMPLETED")
        [artifact] = task["artifacts"]
        self.assertEqual(artifact["parts"], [{"text": "".join(pieces)}])
        got = await _get(server, f"/a2a/agent/tasks/{task['id']}")
        self.assertEqual(got.json()["artifacts"], task["artifacts"])
        streamed = await _post(server, "/a2a/agent/message:stream", _message())
        updates = [e["artifactUpdate"] for e in _sse(streamed) if "artifactUpdate" in e]
        self.assertEqual(
            "".join(u["artifact"]["parts"][0]["text"] for u in updates), "".join(pieces)
        )
        self.assertGreaterEqual(len(updates), len(pieces))
        self.assertEqual([u["append"] for u in updates[:2]], [False, True])

    async def test_noKeyInAnswer(self) -> None:
        """
        A provider key that the agent's answer quotes is taken out of the
        task's artifact, streamed and stored, as every other API redacts
        a run's answer.
        """
        server = await startServer(self)
        server.upstream.script(
            Reply(content=f"the key is {SENTINEL_KEY}."),
            Reply(content=f"the key is {SENTINEL_KEY}."),
        )
        response = await _post(server, "/a2a/agent/message:send", _message())
        task = response.json()["task"]
        self.assertEqual(task["status"]["state"], "TASK_STATE_COMPLETED")
        self.assertIn("the key is", response.text)
        self.assertNotIn(SENTINEL_KEY, response.text)
        got = await _get(server, f"/a2a/agent/tasks/{task['id']}")
        self.assertIn("the key is", got.text)
        self.assertNotIn(SENTINEL_KEY, got.text)
        streamed = await _post(server, "/a2a/agent/message:stream", _message())
        text = "".join(
            event["artifactUpdate"]["artifact"]["parts"][0]["text"]
            for event in _sse(streamed)
            if "artifactUpdate" in event
        )
        self.assertTrue(text.startswith("the key is "), text)
        self.assertNotIn(SENTINEL_KEY, streamed.text)

    async def test_progressAsStatusUpdates(self) -> None:
        """
        The agent's own tool call streams as C{TASK_STATE_WORKING} status
        updates whose message says what it called, before the answer.
        """
        server = await startServer(
            self, agents={"agent.ai": HYBRID}, mcpServers={"calc": calcEntry()}
        )
        server.upstream.script(
            Reply(toolCalls=[("calc__add", {"a": 2, "b": 3})]), Reply("It is 5.")
        )
        response = await _post(server, "/a2a/agent/message:stream", _message("2+3?"))
        events = _sse(response)
        working = [
            e["statusUpdate"]["status"]["message"]["parts"][0]["text"]
            for e in events
            if "statusUpdate" in e
            and "message" in e["statusUpdate"]["status"]
            and e["statusUpdate"]["status"]["state"] == "TASK_STATE_WORKING"
        ]
        self.assertTrue(any("calc__add" in text for text in working), working)
        firstAnswer = next(i for i, e in enumerate(events) if "artifactUpdate" in e)
        firstProgress = next(
            i
            for i, e in enumerate(events)
            if "statusUpdate" in e and "message" in e["statusUpdate"]["status"]
        )
        self.assertLess(firstProgress, firstAnswer)
        self.assertEqual(events[-1]["statusUpdate"]["status"]["state"], "TASK_STATE_COMPLETED")

    async def test_dataPartPerInputSchema(self) -> None:
        """
        A data part is the agent's input, checked against its schema: a
        valid one reaches the model as compact JSON; an invalid one is
        C{-32602} naming the field, with no upstream call.
        """
        server = await startServer(self, agents={"weather.ai": STRUCTURED})
        server.upstream.script(Reply("Sunny."))
        good = {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "SendMessage",
            "params": {
                "message": {
                    "messageId": "m",
                    "role": "ROLE_USER",
                    "parts": [{"data": {"city": "Paris"}}],
                }
            },
        }
        response = await _post(server, "/a2a/weather", good)
        self.assertEqual(
            response.json()["result"]["task"]["status"]["state"], "TASK_STATE_COMPLETED"
        )
        sent = server.upstream.requests[0].body["messages"][-1]
        self.assertEqual(sent, {"role": "user", "content": '{"city":"Paris"}'})
        bad = json.loads(json.dumps(good))
        bad["params"]["message"]["parts"] = [{"data": {"town": "Paris"}}]
        error = (await _post(server, "/a2a/weather", bad)).json()["error"]
        self.assertEqual(error["code"], -32602)
        self.assertIn("city", error["message"])
        self.assertEqual(len(server.upstream.requests), 1)

    async def test_listPages(self) -> None:
        """
        C{ListTasks} pages newest first: a page of C{pageSize}, a
        C{nextPageToken} for the rest, C{totalSize} of all; history and
        artifacts left out unless asked.
        """
        server = await startServer(self)
        ids = []
        for n in range(3):
            response = await _post(server, "/a2a/agent/message:send", _message(f"Task {n}"))
            ids.append(response.json()["task"]["id"])
        first = (await _get(server, "/a2a/agent/tasks", pageSize=2, historyLength=0)).json()
        self.assertEqual([t["id"] for t in first["tasks"]], ids[::-1][:2])
        self.assertEqual(first["totalSize"], 3)
        self.assertTrue(all("history" not in t and "artifacts" not in t for t in first["tasks"]))
        second = (
            await _get(server, "/a2a/agent/tasks", pageSize=2, pageToken=first["nextPageToken"])
        ).json()
        self.assertEqual([t["id"] for t in second["tasks"]], ids[:1])
        self.assertEqual(second["nextPageToken"], "")
        done = (await _get(server, "/a2a/agent/tasks", status="TASK_STATE_COMPLETED")).json()
        self.assertEqual(done["totalSize"], 3)
        none = (await _get(server, "/a2a/agent/tasks", status="TASK_STATE_WORKING")).json()
        self.assertEqual(none["tasks"], [])


def _a2a(server: LiveServer) -> Any:
    from ai_agent.headends.a2a import A2AHeadend

    return next(m.headend for m in server.mounts if isinstance(m.headend, A2AHeadend))


class StreamTests(TestCase):
    """
    A stream's life beside the task's.
    """

    async def test_keepAliveThenLeave(self) -> None:
        """
        A stream whose task is silent (its model call held) gets comment
        lines after the task; a client that leaves does not cancel the task,
        which still completes and is got with its answer.
        """
        server = await startServer(self)
        headend = _a2a(server)
        headend.keepAliveInterval = 0.05
        server.upstream.script(Reply("After the silence.", hold=True))

        def readUntilKeepAlive() -> list[str]:
            lines = []
            with httpx.stream(
                "POST",
                _url(server, "/a2a/agent/message:stream"),
                content=json.dumps(_message()).encode(),
                headers={"content-type": "application/json", **V1},
                timeout=20,
            ) as response:
                for line in response.iter_lines():
                    lines.append(line)
                    if line.startswith(": keep-alive"):
                        return lines
            return lines

        lines = await inThread(readUntilKeepAlive)
        self.assertEqual(lines[-1], ": keep-alive")
        taskId = json.loads(lines[0][len("data: ") :])["task"]["id"]
        await server.upstream.waitForRequests(1)
        [run] = headend._running.values()
        ended = run.whenEnded()
        server.upstream.release()
        await ended
        got = (await _get(server, f"/a2a/agent/tasks/{taskId}")).json()
        self.assertEqual(got["status"]["state"], "TASK_STATE_COMPLETED")
        self.assertEqual(got["artifacts"][0]["parts"][0]["text"], "After the silence.")


class QueueTests(TestCase):
    """
    Tasks and the run pool: waiting for a slot, shutdown.
    """

    async def test_cancelWhileQueued(self) -> None:
        """
        With one run slot taken, a second non-blocking task waits
        C{TASK_STATE_SUBMITTED}; cancelling it ends it C{TASK_STATE_CANCELED}
        without any upstream call of its own.
        """
        server = await startServer(self, concurrency=1)
        server.upstream.script(Reply("First.", hold=True))
        immediate = {"configuration": {"returnImmediately": True}}
        first = await _post(server, "/a2a/agent/message:send", {**_message("one"), **immediate})
        await server.upstream.waitForRequests(1)
        second = await _post(server, "/a2a/agent/message:send", {**_message("two"), **immediate})
        task = second.json()["task"]
        self.assertEqual(task["status"]["state"], "TASK_STATE_SUBMITTED")
        canceled = await _post(server, f"/a2a/agent/tasks/{task['id']}:cancel", {})
        self.assertEqual(canceled.json()["status"]["state"], "TASK_STATE_CANCELED")
        server.upstream.release()
        [run] = _a2a(server)._running.values()
        self.assertEqual(run.taskId, first.json()["task"]["id"])
        self.assertEqual((await run.whenEnded())["status"]["state"], "TASK_STATE_COMPLETED")
        self.assertEqual(len(server.upstream.requests), 1)

    async def test_drainTimeoutFailsTask(self) -> None:
        """
        A task still running when the server's drain time is over ends
        C{TASK_STATE_FAILED} with the shutdown's reason, and its upstream
        call goes away.
        """
        server = await startServer(self)
        server.upstream.script(Reply("Never.", hold=True))
        immediate = {"configuration": {"returnImmediately": True}}
        await _post(server, "/a2a/agent/message:send", {**_message(), **immediate})
        await server.upstream.waitForRequests(1)
        [run] = _a2a(server)._running.values()
        ended = run.whenEnded()
        drained = server.pool.drain(0)
        task = await ended
        await drained
        self.assertEqual(task["status"]["state"], "TASK_STATE_FAILED")
        self.assertIn("shut down", task["status"]["message"]["parts"][0]["text"])
        self.assertEqual(await server.upstream.waitForDisconnects(1), 1)


class ServerTests(TestCase):
    """
    The headend as part of the server: metrics, reloads.
    """

    async def test_metricsHeadend(self) -> None:
        """
        A2A requests are counted under C{headend="a2a"}, with their agent
        and status.
        """
        metrics = Metrics()
        server = await startServer(self, observer=Observability(metrics, None))
        await _post(server, "/a2a/agent/message:send", _message())
        text = metrics.render()[0].decode()
        self.assertIn('ai_agent_requests_total{agent="agent",headend="a2a",status="200"} 1.0', text)

    async def test_cardFollowsReload(self) -> None:
        """
        After a reload (SIGHUP) the card shows the agent file's new
        description and version, and a new agent has a card.
        """
        server = await startServer(self)
        before = (await _get(server, "/a2a/agent/.well-known/agent-card.json")).json()
        directory = server.directory
        path = writeAgent(directory, "agent.ai", HYBRID.replace("tools: [calc]\n", ""))
        other = writeAgent(directory, "other.ai")
        reloader = Reloader(
            reactor,
            server.runtime,
            [path, other],
            os.path.join(directory, "config.json"),
            headends=[m.headend for m in server.mounts if m.headend is not None],
            cwd=directory,
            environ={"HOME": directory},
        )
        self.assertTrue(reloader.reload())
        after = (await _get(server, "/a2a/agent/.well-known/agent-card.json")).json()
        self.assertEqual(before["description"], "Test agent")
        self.assertEqual(after["description"], "An agent with its own calculator")
        self.assertNotEqual(before["version"], after["version"])
        card = await _get(server, "/a2a/other/.well-known/agent-card.json")
        self.assertEqual(card.json()["name"], "other")


class _WriteCountingStore(MemoryStore):
    """
    The memory store, keeping each write (one transaction of a SQL store)
    as the list of its entries' namespaces and keys.
    """

    def __init__(self) -> None:
        super().__init__(reactor)
        self.writes: list[list[tuple[str, str, Any]]] = []

    def putEntries(
        self, entries: Iterable[tuple[str, str, Any]], ttl: float | None = None
    ) -> Deferred[None]:
        entries = list(entries)
        self.writes.append(
            [(n, k.rpartition(":")[2], json.loads(json.dumps(d))) for n, k, d in entries]
        )
        return super().putEntries(entries, ttl)


class StoreWriteTests(TestCase):
    """
    What a task costs the run store: a short task is written once, the
    key's index is appended to, not rewritten whole.
    """

    async def test_shortTaskWrittenOnce(self) -> None:
        """
        A blocking send whose run ends within its first tick is stored in
        one write, after the run: the finished task, its context and the
        key's index together; C{GetTask} and C{ListTasks} then find it.  A
        non-blocking send is stored before it is answered (its id can be
        read at once) and again at its end.
        """
        store = _WriteCountingStore()
        server = await startServer(self, store=store)
        headend = next(m.headend for m in server.mounts if isinstance(m.headend, A2AHeadend))
        # No tick (a snapshot write) within the test, however slow the machine.
        headend.tickInterval = 3600.0
        server.upstream.script(Reply("First answer."), Reply("Second answer."))
        response = await _post(server, "/a2a/agent/message:send", _message())
        task = response.json()["task"]
        self.assertEqual(task["status"]["state"], "TASK_STATE_COMPLETED")
        self.assertEqual(len(store.writes), 1, store.writes)
        [write] = store.writes
        self.assertEqual(
            [(namespace, key) for namespace, key, _ in write],
            [
                ("a2a.tasks", task["id"]),
                ("a2a.contexts", task["contextId"]),
                ("a2a.index", "tasks"),
            ],
        )
        self.assertEqual(write[0][2]["task"]["status"]["state"], "TASK_STATE_COMPLETED")
        got = await _get(server, f"/a2a/agent/tasks/{task['id']}")
        self.assertEqual(got.json()["artifacts"][0]["parts"][0]["text"], "First answer.")
        listed = await _get(server, "/a2a/agent/tasks")
        self.assertEqual([t["id"] for t in listed.json()["tasks"]], [task["id"]])

        store.writes.clear()
        immediate = {"configuration": {"returnImmediately": True}}
        response = await _post(server, "/a2a/agent/message:send", {**_message(), **immediate})
        early = response.json()["task"]
        # Written before the answer (the run may have ended since).
        self.assertEqual(store.writes[0][0][1], early["id"])
        self.assertEqual(store.writes[0][0][2]["task"]["status"]["state"], "TASK_STATE_SUBMITTED")
        # Its end is stored before its waiters hear of it.
        await gatherResults([run.whenEnded() for run in headend._running.values()])
        got = await _get(server, f"/a2a/agent/tasks/{early['id']}")
        self.assertEqual(got.json()["status"]["state"], "TASK_STATE_COMPLETED")
        self.assertEqual(len(store.writes), 2)

    async def test_indexAppendedInPages(self) -> None:
        """
        Past a page of the index (L{INDEX_PAGE} tasks) a send still writes
        at most a page of task ids (the full head kept as a page of its
        own, a new head), and C{ListTasks} lists every task, newest first,
        across the pages.
        """
        store = _WriteCountingStore()
        server = await startServer(self, store=store)
        count = INDEX_PAGE + 5
        server.upstream.script(*[Reply(f"answer {n}") for n in range(count)])
        ids = []
        for _ in range(count):
            response = await _post(server, "/a2a/agent/message:send", _message())
            ids.append(response.json()["task"]["id"])
        for write in store.writes:
            for namespace, _, document in write:
                if namespace == "a2a.index":
                    self.assertLessEqual(len(document["tasks"]), INDEX_PAGE)
        listed = []
        token = ""
        while True:
            page = (await _get(server, "/a2a/agent/tasks", pageSize=30, pageToken=token)).json()
            self.assertEqual(page["totalSize"], count)
            listed.extend(t["id"] for t in page["tasks"])
            token = page["nextPageToken"]
            if not token:
                break
        self.assertEqual(listed, ids[::-1])


class ConcurrentSendTests(TestCase):
    """
    Many tasks of one key created at once, on the SQLite store (whose
    reads and writes run in its threads, so that they interleave).
    """

    async def test_concurrentSendsAllListed(self) -> None:
        """
        Tasks sent at the same time by one key are each in its index:
        C{ListTasks} lists every one (no append lost to another's
        read-then-write of the index).
        """
        from ai_agent.store import makeStore

        store = makeStore(os.path.join(self.mktemp() + ".sqlite3"), reactor)
        await store.start()
        self.addCleanup(store.close)
        server = await startServer(self, store=store)
        count = 12
        server.upstream.script(*[Reply(f"answer {n}") for n in range(count)])
        immediate = {"configuration": {"returnImmediately": True}}
        responses = await gatherResults(
            [
                Deferred.fromCoroutine(
                    _post(server, "/a2a/agent/message:send", {**_message(), **immediate})
                )
                for _ in range(count)
            ]
        )
        ids = {response.json()["task"]["id"] for response in responses}
        self.assertEqual(len(ids), count)
        listed = (await _get(server, "/a2a/agent/tasks", pageSize=100)).json()
        self.assertEqual({task["id"] for task in listed["tasks"]}, ids)
        headend = next(m.headend for m in server.mounts if isinstance(m.headend, A2AHeadend))
        await gatherResults([run.whenEnded() for run in headend._running.values()])


class IndexTests(SynchronousTestCase):
    """
    The key's task index kept in pages (L{indexed}).
    """

    def test_pages(self) -> None:
        """
        A new task goes first in the head page; a full head is kept under a
        numbered key of its own and listed after the new head; the pages
        kept hold at most L{MAX_INDEXED} ids; an index written before pages
        (one list of up to L{MAX_INDEXED} ids) becomes the first page.
        """
        [(namespace, key, head)] = indexed(None, "t1")
        self.assertEqual(
            (namespace, key, head),
            ("a2a.index", "tasks", {"tasks": ["t1"], "pages": [], "sealed": 0}),
        )
        full = {"tasks": [f"t{n}" for n in range(INDEX_PAGE)], "pages": ["tasks.1"], "sealed": 1}
        entries = indexed(full, "new")
        self.assertEqual(
            entries,
            [
                ("a2a.index", "tasks.2", {"tasks": full["tasks"]}),
                (
                    "a2a.index",
                    "tasks",
                    {"tasks": ["new"], "pages": ["tasks.2", "tasks.1"], "sealed": 2},
                ),
            ],
        )
        many = {
            "tasks": ["x"] * INDEX_PAGE,
            "pages": [f"tasks.{n}" for n in range(30, 0, -1)],
            "sealed": 30,
        }
        head = indexed(many, "new")[-1][2]
        self.assertEqual(len(head["pages"]) * INDEX_PAGE + INDEX_PAGE, MAX_INDEXED)
        self.assertEqual(head["pages"][0], "tasks.31")
        legacy = {"tasks": [f"old{n}" for n in range(MAX_INDEXED)]}
        entries = indexed(legacy, "new")
        self.assertEqual(entries[0], ("a2a.index", "tasks.1", legacy))
        self.assertEqual(entries[1][2], {"tasks": ["new"], "pages": ["tasks.1"], "sealed": 1})


class ValueTests(SynchronousTestCase):
    """
    The headend's values, without a server.
    """

    def test_rpcErrorCodes(self) -> None:
        """
        A2A's errors keep their JSON-RPC codes and REST statuses.
        """
        pairs = [
            ("TASK_NOT_FOUND", -32001, 404),
            ("TASK_NOT_CANCELABLE", -32002, 400),
            ("PUSH_NOTIFICATION_NOT_SUPPORTED", -32003, 400),
            ("UNSUPPORTED_OPERATION", -32004, 400),
            ("CONTENT_TYPE_NOT_SUPPORTED", -32005, 400),
            ("VERSION_NOT_SUPPORTED", -32009, 400),
        ]
        for code, rpc, status in pairs:
            error = a2aError(code, "x")
            self.assertEqual(rpcError(1, error)["error"]["code"], rpc)
            self.assertEqual(A2A_ERRORS.status(error), status)
            self.assertEqual(A2A_ERRORS.envelope(error)["error"]["details"][0]["reason"], code)

    def test_historyLength(self) -> None:
        """
        C{historyLength} keeps the last messages: none for 0, all when
        unset.
        """
        task = {"id": "t", "history": [{"n": 1}, {"n": 2}, {"n": 3}]}
        self.assertEqual(taskView(task, 2)["history"], [{"n": 2}, {"n": 3}])
        self.assertNotIn("history", taskView(task, 0))
        self.assertEqual(len(taskView(task)["history"]), 3)

    def test_roleAndParts(self) -> None:
        """
        A message must be the user's, with parts of text or data.
        """
        from ai_agent.agentfile import parseAgent

        agent = ServedAgent("a", parseAgent(HYBRID, "/x/a.ai"), 0)
        for message, said in [
            ({"messageId": "m", "role": "ROLE_AGENT", "parts": [{"text": "x"}]}, "ROLE_USER"),
            ({"messageId": "m", "role": "ROLE_USER", "parts": []}, "parts"),
            ({"role": "ROLE_USER", "parts": [{"text": "x"}]}, "messageId"),
            ({"messageId": "m", "role": "ROLE_USER", "parts": [{"what": 1}]}, "none of"),
        ]:
            error = self.assertRaises(AgentError, parseSendParams, {"message": message}, agent)
            self.assertIn(said, str(error))
            self.assertEqual(rpcError(None, error)["error"]["code"], -32602)
