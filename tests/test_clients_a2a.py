"""
The A2A 1.0 headend through a live server, driven by the official Python
SDK (C{a2a-sdk}) unmodified: card resolution, blocking and non-blocking
sends, streams on both bindings (JSON-RPC and HTTP+JSON), get with a
history length, list, cancel (of a running task: its upstream call goes
away), resubscribe, a context's follow-up message, A2A's errors as the
SDK's exception classes, and tasks owned by the key that made them.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any, Awaitable, Callable

import httpx
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.types import (
    CancelTaskRequest,
    ContentTypeNotSupportedError,
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    SubscribeToTaskRequest,
    TaskNotCancelableError,
    TaskNotFoundError,
    TaskState,
)
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from ai_agent.headends._http import APIKeys, HTTPPolicy
from ai_agent.testing import Reply
from tests._harness import LiveServer, inThread, startServer

KA = "sk-a2a-team-a-0123456789"
KB = "sk-a2a-team-b-0123456789"


def _root(server: LiveServer) -> str:
    return server.baseUrl[: -len("/v1")]


def _run(
    server: LiveServer,
    body: Callable[..., Awaitable[Any]],
    key: str | None = None,
    bindings: tuple[str, ...] = ("JSONRPC",),
    streaming: bool = True,
    polling: bool = False,
    agent: str = "agent",
) -> Any:
    """
    Run C{body(client, http)} on an asyncio loop of its own (in a thread):
    the client is made from the card the SDK resolves from
    C{/a2a/<agent>}.
    """

    async def main() -> Any:
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(headers=headers, timeout=20) as http:
            card = await A2ACardResolver(http, f"{_root(server)}/a2a/{agent}").get_agent_card()
            config = ClientConfig(
                httpx_client=http,
                streaming=streaming,
                polling=polling,
                supported_protocol_bindings=list(bindings),
            )
            client = ClientFactory(config).create(card)
            return await body(client, http)

    return inThread(asyncio.run, main())


def _message(text: str, contextId: str = "") -> SendMessageRequest:
    message = Message(message_id="m-" + text[:8], role=Role.ROLE_USER, parts=[Part(text=text)])
    if contextId:
        message.context_id = contextId
    return SendMessageRequest(message=message)


async def _events(client: Any, request: SendMessageRequest) -> list[Any]:
    return [event async for event in client.send_message(request)]


def _answer(events: list[Any]) -> str:
    return "".join(
        part.text
        for event in events
        if event.HasField("artifact_update")
        for part in event.artifact_update.artifact.parts
    )


def _taskAnswer(task: Any) -> str:
    return "".join(part.text for artifact in task.artifacts for part in artifact.parts)


class CardTests(TestCase):
    """
    The Agent Card as the SDK's resolver reads it.
    """

    async def test_cardFromAgentBase(self) -> None:
        """
        C{A2ACardResolver(base_url=.../a2a/<agent>)} resolves the agent's
        card: its name and description from the agent file, both
        bindings at 1.0 with the URL the client reached, streaming on and
        push notifications off; no security schemes on a server without
        keys.
        """
        server = await startServer(self)

        async def body(client: Any, http: httpx.AsyncClient) -> Any:
            return await A2ACardResolver(http, f"{_root(server)}/a2a/agent").get_agent_card()

        card = await _run(server, body)
        self.assertEqual(card.name, "agent")
        self.assertEqual(card.description, "Test agent")
        self.assertEqual(
            [(i.protocol_binding, i.url, i.protocol_version) for i in card.supported_interfaces],
            [
                ("JSONRPC", f"{_root(server)}/a2a/agent", "1.0"),
                ("HTTP+JSON", f"{_root(server)}/a2a/agent", "1.0"),
            ],
        )
        self.assertTrue(card.capabilities.streaming)
        self.assertFalse(card.capabilities.push_notifications)
        self.assertEqual(len(card.skills), 1)
        self.assertEqual(dict(card.security_schemes), {})

    async def test_cardBehindKey(self) -> None:
        """
        With keys, the card needs one (401 in A2A's REST envelope without),
        names the bearer and C{x-api-key} schemes, and an agent the key may
        not use is a 404 (its card is not shown).
        """
        keys = APIKeys()
        server = await startServer(
            self,
            {"agent.ai": _AGENT, "other.ai": _AGENT},
            policy=HTTPPolicy(apiKeys=keys),
            extraConfig={"keys": {"team-a": {"key": KA, "agents": ["agent"]}}},
        )
        keys.replace(APIKeys.fromKeys([], server.runtime.config.keys.values()))
        root = _root(server)
        bare = await inThread(httpx.get, f"{root}/a2a/agent/.well-known/agent-card.json")
        self.assertEqual(bare.status_code, 401)
        self.assertEqual(bare.json()["error"]["status"], "UNAUTHENTICATED")

        async def body(client: Any, http: httpx.AsyncClient) -> Any:
            return await A2ACardResolver(http, f"{root}/a2a/agent").get_agent_card()

        card = await _run(server, body, key=KA)
        self.assertEqual(sorted(card.security_schemes), ["apiKey", "bearer"])
        self.assertEqual(card.security_schemes["apiKey"].api_key_security_scheme.name, "x-api-key")
        wellKnown = await inThread(
            httpx.get, f"{root}/.well-known/agent-card.json", headers={"x-api-key": KA}
        )
        self.assertEqual(wellKnown.json()["name"], "agent")
        hidden = await inThread(
            httpx.get, f"{root}/a2a/other/.well-known/agent-card.json", headers={"x-api-key": KA}
        )
        self.assertEqual(hidden.status_code, 404)
        self.assertEqual(hidden.json()["error"]["status"], "NOT_FOUND")


_AGENT = """\
---
description: Test agent
usage: Ask it anything
models: fake/test-model
---
You are the test agent.
"""


class MessageTests(TestCase):
    """
    Sending messages with the SDK on both bindings.
    """

    async def _server(self, **kwargs: Any) -> LiveServer:
        return await startServer(self, **kwargs)

    async def test_sendBlocking(self) -> None:
        """
        A blocking C{SendMessage} (the client not streaming) answers the
        completed task: the upstream's answer as its artifact, the
        user's message and the agent's reply in its history; the agent's
        model received the message's text.
        """
        server = await self._server()
        server.upstream.script(Reply("The answer is 42."))

        async def body(client: Any, http: Any) -> Any:
            return await _events(client, _message("What is six times seven?"))

        events = await _run(server, body, streaming=False)
        self.assertEqual(len(events), 1)
        task = events[0].task
        self.assertEqual(task.status.state, TaskState.TASK_STATE_COMPLETED)
        self.assertEqual(_taskAnswer(task), "The answer is 42.")
        self.assertEqual(
            [(m.role, m.parts[0].text) for m in task.history],
            [
                (Role.ROLE_USER, "What is six times seven?"),
                (Role.ROLE_AGENT, "The answer is 42."),
            ],
        )
        sent = server.upstream.requests[0].body["messages"]
        self.assertEqual(sent[-1], {"role": "user", "content": "What is six times seven?"})

    async def _streamed(self, bindings: tuple[str, ...]) -> None:
        server = await self._server()
        server.upstream.script(Reply(["Forty", " two", " it is."]))

        async def body(client: Any, http: Any) -> Any:
            return await _events(client, _message("Stream me the answer"))

        events = await _run(server, body, bindings=bindings)
        kinds = [event.WhichOneof("payload") for event in events]
        self.assertEqual(kinds[0], "task")
        self.assertEqual(_answer(events), "Forty two it is.")
        chunks = [e.artifact_update for e in events if e.HasField("artifact_update")]
        self.assertGreaterEqual(len(chunks), 3)
        self.assertFalse(chunks[0].append)
        self.assertTrue(all(chunk.append for chunk in chunks[1:]))
        self.assertTrue(chunks[-1].last_chunk)
        self.assertEqual(kinds[-1], "status_update")
        self.assertEqual(events[-1].status_update.status.state, TaskState.TASK_STATE_COMPLETED)

    async def test_streamJSONRPC(self) -> None:
        """
        C{SendStreamingMessage} on the JSON-RPC binding: the task first,
        the answer as artifact chunks (the first not appended, the others
        appended, the last marked), the completed status last.
        """
        await self._streamed(("JSONRPC",))

    async def test_streamREST(self) -> None:
        """
        The same stream on the HTTP+JSON binding (C{message:stream}).
        """
        await self._streamed(("HTTP+JSON",))

    async def test_getListAndCancelFinished(self) -> None:
        """
        After a task completed (over REST): C{GetTask} with
        C{historyLength} 1 gives its last message only; C{ListTasks} lists
        it; cancelling it is C{TaskNotCancelableError}; an unknown id is
        C{TaskNotFoundError}.
        """
        server = await self._server()
        server.upstream.script(Reply("Done."))

        async def body(client: Any, http: Any) -> Any:
            events = await _events(client, _message("Do it"))
            taskId = events[0].task.id
            got = await client.get_task(GetTaskRequest(id=taskId, history_length=1))
            listed = await client.list_tasks(ListTasksRequest())
            errors = []
            for call in (
                lambda: client.cancel_task(CancelTaskRequest(id=taskId)),
                lambda: client.get_task(GetTaskRequest(id="no-such-task")),
            ):
                try:
                    await call()
                except Exception as error:
                    errors.append(type(error))
            return taskId, got, listed, errors

        taskId, got, listed, errors = await _run(
            server, body, bindings=("HTTP+JSON",), streaming=False
        )
        self.assertEqual([m.parts[0].text for m in got.history], ["Done."])
        self.assertEqual([t.id for t in listed.tasks], [taskId])
        self.assertEqual(errors, [TaskNotCancelableError, TaskNotFoundError])

    async def test_cancelRunning(self) -> None:
        """
        A non-blocking send returns the task at once (not terminal); a
        C{CancelTask} while its model is answering ends it
        C{TASK_STATE_CANCELED} and the upstream call goes away.
        """
        server = await self._server()
        server.upstream.script(Reply("Never finished", hold=True))

        async def start(client: Any, http: Any) -> Any:
            return await _events(client, _message("Take your time"))

        events = await _run(server, start, streaming=False, polling=True)
        task = events[0].task
        self.assertIn(
            task.status.state, (TaskState.TASK_STATE_SUBMITTED, TaskState.TASK_STATE_WORKING)
        )
        await server.upstream.waitForRequests(1)

        async def cancel(client: Any, http: Any) -> Any:
            return await client.cancel_task(CancelTaskRequest(id=task.id))

        canceled = await _run(server, cancel, streaming=False)
        self.assertEqual(canceled.status.state, TaskState.TASK_STATE_CANCELED)
        self.assertEqual(await server.upstream.waitForDisconnects(1), 1)

    async def test_resubscribe(self) -> None:
        """
        C{SubscribeToTask} to a running task: the task first, then the
        answer and the completed status once its model answers.
        """
        server = await self._server()
        server.upstream.script(Reply("Late answer.", hold=True))

        async def start(client: Any, http: Any) -> Any:
            return await _events(client, _message("Answer later"))

        task = (await _run(server, start, streaming=False, polling=True))[0].task
        await server.upstream.waitForRequests(1)

        async def follow(client: Any, http: Any) -> Any:
            return [e async for e in client.subscribe(SubscribeToTaskRequest(id=task.id))]

        following = _run(server, follow)
        # The subscription is in place once the task has a listener.
        await _until(lambda: any(run.listeners for run in _a2a(server)._running.values()))
        server.upstream.release()
        events = await following
        self.assertEqual(events[0].task.id, task.id)
        self.assertEqual(_answer(events), "Late answer.")
        self.assertEqual(events[-1].status_update.status.state, TaskState.TASK_STATE_COMPLETED)

    async def test_contextFollowUp(self) -> None:
        """
        A second message in the same C{contextId} continues the
        conversation: the model receives the first question and answer
        before the new question.
        """
        server = await self._server()
        server.upstream.script(Reply("Paris."), Reply("About two million."))

        async def body(client: Any, http: Any) -> Any:
            first = (await _events(client, _message("Capital of France?")))[0].task
            second = (await _events(client, _message("Its population?", first.context_id)))[0]
            return first, second.task

        first, second = await _run(server, body, streaming=False)
        self.assertEqual(second.context_id, first.context_id)
        self.assertNotEqual(second.id, first.id)
        sent = server.upstream.requests[1].body["messages"]
        self.assertEqual(
            [(m["role"], m["content"]) for m in sent if m["role"] != "system"],
            [
                ("user", "Capital of France?"),
                ("assistant", "Paris."),
                ("user", "Its population?"),
            ],
        )

    async def test_filePartRefused(self) -> None:
        """
        A file part is A2A's content type not supported, naming the file;
        no upstream call is made.
        """
        server = await self._server()

        async def body(client: Any, http: Any) -> Any:
            request = _message("Read this")
            request.message.parts.append(Part(raw=b"%PDF", filename="report.pdf"))
            try:
                await _events(client, request)
            except ContentTypeNotSupportedError as error:
                return str(error)
            return None

        said = await _run(server, body, streaming=False)
        self.assertIn("report.pdf", said)
        self.assertEqual(server.upstream.requests, [])


class TenancyTests(TestCase):
    """
    Tasks belong to the key that made them.
    """

    async def test_otherKeyGetsTaskNotFound(self) -> None:
        """
        A task made with one key is C{TaskNotFoundError} for another (get
        and cancel), and not in its list.
        """
        keys = APIKeys.fromKeys([KA, KB])
        server = await startServer(self, policy=HTTPPolicy(apiKeys=keys))
        server.upstream.script(Reply("Mine."))

        async def make(client: Any, http: Any) -> Any:
            return (await _events(client, _message("Hello")))[0].task

        task = await _run(server, make, key=KA, streaming=False)

        async def other(client: Any, http: Any) -> Any:
            errors = []
            for call in (
                lambda: client.get_task(GetTaskRequest(id=task.id)),
                lambda: client.cancel_task(CancelTaskRequest(id=task.id)),
            ):
                try:
                    await call()
                except Exception as error:
                    errors.append(type(error))
            listed = await client.list_tasks(ListTasksRequest())
            return errors, list(listed.tasks)

        errors, listed = await _run(server, other, key=KB, streaming=False)
        self.assertEqual(errors, [TaskNotFoundError, TaskNotFoundError])
        self.assertEqual(listed, [])


class WireTests(TestCase):
    """
    What the SDKs do not send: a request without the version header,
    malformed JSON-RPC.
    """

    async def _post(self, server: LiveServer, body: Any, **headers: str) -> httpx.Response:
        return await inThread(
            httpx.post,
            f"{_root(server)}/a2a/agent",
            content=json.dumps(body) if not isinstance(body, bytes) else body,
            headers={"content-type": "application/json", **headers},
        )

    async def test_noVersionIsA03Client(self) -> None:
        """
        A request without C{A2A-Version} is a 0.3 client: A2A's version
        not supported error (-32009), which says to send 1.0.
        """
        server = await startServer(self)
        response = await self._post(
            server, {"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": {}}
        )
        self.assertEqual(response.status_code, 200)
        error = response.json()["error"]
        self.assertEqual(error["code"], -32009)
        self.assertIn("A2A-Version: 1.0", error["message"])
        self.assertEqual(response.json()["id"], 1)

    async def test_jsonRpcErrors(self) -> None:
        """
        Bad JSON is -32700; a non-request is -32600; an unknown method is
        -32601; bad params are -32602; a push notification method is
        -32003; each keeps the request's id where there is one.
        """
        server = await startServer(self)
        v = {"A2A-Version": "1.0"}
        cases = [
            (b"{nope", -32700),
            ([1, 2], -32600),
            ({"jsonrpc": "2.0", "id": "a", "method": "Nope"}, -32601),
            ({"jsonrpc": "2.0", "id": "b", "method": "SendMessage", "params": {}}, -32602),
            (
                {
                    "jsonrpc": "2.0",
                    "id": "c",
                    "method": "CreateTaskPushNotificationConfig",
                    "params": {},
                },
                -32003,
            ),
        ]
        for body, code in cases:
            response = await self._post(server, body, **v)
            self.assertEqual((response.status_code, response.json()["error"]["code"]), (200, code))
        self.assertEqual(server.upstream.requests, [])


def _a2a(server: LiveServer) -> Any:
    from ai_agent.headends.a2a import A2AHeadend

    return next(m.headend for m in server.mounts if isinstance(m.headend, A2AHeadend))


async def _until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """
    Wait (checking every reactor turn) until C{condition} holds; fail
    after C{timeout} seconds.
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    waited = 0.0
    while not condition():
        if waited > timeout:
            raise AssertionError(f"not true after {timeout} s: {condition}")
        await deferLater(reactor, 0.01, lambda: None)
        waited += 0.01


POSTGRES_URL = os.environ.get("AI_AGENT_TEST_POSTGRES_URL", "")


class SharedStoreTests(TestCase):
    """
    Two server instances on one PostgreSQL store: a task created on one is
    read, followed and cancelled from the other.
    """

    async def _pair(self) -> tuple[LiveServer, LiveServer]:
        if not POSTGRES_URL:
            self.skipTest("AI_AGENT_TEST_POSTGRES_URL is not set: no PostgreSQL server to test")
        from twisted.internet import reactor

        from ai_agent.store import makeStore

        keys = APIKeys.fromKeys([KA])
        servers = []
        for _ in range(2):
            server = await startServer(
                self, store=makeStore(POSTGRES_URL, reactor), policy=HTTPPolicy(apiKeys=keys)
            )
            # Shorter ticks than the default second, for a quick test.
            _a2a(server).tickInterval = _a2a(server).followInterval = 0.1
            self.addCleanup(lambda h=_a2a(server): Deferred.fromCoroutine(h.stopRunning()))
            servers.append(server)
        return servers[0], servers[1]

    async def test_getFollowAndCancelFromAnother(self) -> None:
        """
        A completed task made on one instance is got on the other with its
        answer; a running one is followed there (its stored answer and
        final status arrive) and a second running one is cancelled there:
        the instance running it stops its upstream call and the task ends
        C{TASK_STATE_CANCELED} on both.
        """
        one, two = await self._pair()
        one.upstream.script(Reply("Stored answer."), Reply("Followed answer.", hold=True))

        async def make(client: Any, http: Any) -> Any:
            return (await _events(client, _message("First")))[0].task

        done = await _run(one, make, key=KA, streaming=False)

        async def get(client: Any, http: Any) -> Any:
            return await client.get_task(GetTaskRequest(id=done.id))

        got = await _run(two, get, key=KA, streaming=False)
        self.assertEqual(got.status.state, TaskState.TASK_STATE_COMPLETED)
        self.assertEqual(_taskAnswer(got), "Stored answer.")

        running = await _run(one, make, key=KA, streaming=False, polling=True)
        await one.upstream.waitForRequests(2)

        async def follow(client: Any, http: Any) -> Any:
            return [e async for e in client.subscribe(SubscribeToTaskRequest(id=running.id))]

        following = _run(two, follow, key=KA)
        await _until(lambda: running.id in _a2a(two).following)
        one.upstream.release()
        events = await following
        self.assertEqual(events[0].task.id, running.id)
        self.assertEqual(_answer(events), "Followed answer.")
        self.assertEqual(events[-1].status_update.status.state, TaskState.TASK_STATE_COMPLETED)

        one.upstream.script(Reply("Never finished", hold=True))
        held = await _run(one, make, key=KA, streaming=False, polling=True)
        await one.upstream.waitForRequests(3)

        async def cancel(client: Any, http: Any) -> Any:
            return await client.cancel_task(CancelTaskRequest(id=held.id))

        canceled = await _run(two, cancel, key=KA, streaming=False)
        self.assertEqual(canceled.status.state, TaskState.TASK_STATE_CANCELED)
        self.assertEqual(await one.upstream.waitForDisconnects(1), 1)

        async def getHeld(client: Any, http: Any) -> Any:
            return await client.get_task(GetTaskRequest(id=held.id))

        self.assertEqual(
            (await _run(one, getHeld, key=KA, streaming=False)).status.state,
            TaskState.TASK_STATE_CANCELED,
        )


class EmbeddedModelTests(TestCase):
    """
    An agent on the bundled SmolLM2 model, streamed to the Python SDK.
    """

    timeout = 120

    def setUp(self) -> None:
        from tests.test_provider_local import _embeddedProblem

        problem = _embeddedProblem()
        if problem is not None:
            raise self.skipTest(f"the embedded model cannot run here: {problem}")

    async def test_streamFromEmbeddedModel(self) -> None:
        """
        The embedded model's answer streams as artifact chunks that add up
        to the completed task's answer (got afterwards), which is not
        empty.
        """
        from tests.test_provider_local import EMBEDDED_AGENT

        server = await startServer(
            self,
            agents={"agent.ai": EMBEDDED_AGENT},
            extraProviders={"local": {"type": "local", "threads": 1, "parallel": 1}},
        )

        async def body(client: Any, http: Any) -> Any:
            events = await _events(client, _message("What is 2+2?"))
            got = await client.get_task(GetTaskRequest(id=events[0].task.id))
            return events, got

        events, got = await _run(server, body)
        self.assertEqual(events[-1].status_update.status.state, TaskState.TASK_STATE_COMPLETED)
        self.assertTrue(_answer(events).strip())
        self.assertEqual(_answer(events), _taskAnswer(got))
