"""
The MCP headend (C{/mcp} and C{--mcp stdio}): served agents as MCP tools,
proven with the official MCP Python SDK client, unmodified, over real
sockets against the fake upstream, in both the handshake mode
(C{initialize}, sessions) and the 2026-07-28 mode (C{server/discover}, no
session); plus the protocol's refusals seen on the wire.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool

from ai_agent.headends._http import APIKeys, HTTPPolicy
from ai_agent.headends._mcpcore import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    PARSE_ERROR,
    ProtocolError,
    _CallProgress,
    parseMessage,
    toolName,
)
from ai_agent.headends.mcp import McpHeadend
from ai_agent.testing import Reply
from tests._harness import SENTINEL_KEY, LiveServer, inThread, startServer
from tests._process import exitStatus

CHAT_AGENT = """\
---
description: Answers questions
usage: Ask it anything.
models: fake/test-model
---
You are the chat agent.
"""

JSON_AGENT = """\
---
description: Adds numbers
models: fake/test-model
input:
  format: json
  schema:
    type: object
    properties:
      a: {type: integer}
      b: {type: integer}
    required: [a, b]
output:
  format: json
  schema:
    type: object
    properties:
      sum: {type: integer}
    required: [sum]
---
You add numbers.
"""

AGENTS = {"chat.ai": CHAT_AGENT, "adder.ai": JSON_AGENT}


async def _server(testCase: TestCase, **kwargs: Any) -> LiveServer:
    return await startServer(testCase, AGENTS, **kwargs)


def _url(server: LiveServer) -> str:
    return f"http://127.0.0.1:{server.port.getHost().port}/mcp"


def _sdk(url: str, mode: str, work: Any, **clientKwargs: Any) -> Deferred[Any]:
    """
    Run C{work(client)} with an MCP SDK client connected to C{url} in
    C{mode}, on its own event loop in a thread.
    """
    from mcp import Client

    async def main() -> Any:
        async with Client(url, mode=mode, **clientKwargs) as client:  # type: ignore[arg-type]
            return await work(client)

    return inThread(asyncio.run, main())


class SDKClientTests(TestCase):
    """
    The MCP Python SDK client lists the agents as tools and calls them, with
    progress, in each mode it speaks.
    """

    async def _listAndCall(self, mode: str) -> None:
        server = await _server(self)
        server.upstream.script(Reply(content="Paris."))

        async def work(client: Any) -> Any:
            tools = await client.list_tools()
            notes: list[tuple[float, str | None]] = []

            async def progress(value: float, total: float | None, message: str | None) -> None:
                notes.append((value, message))

            result = await client.call_tool(
                "chat", {"prompt": "Capital?"}, progress_callback=progress
            )
            return client.protocol_version, tools, result, notes

        version, tools, result, notes = await _sdk(_url(server), mode, work)
        byName = {tool.name: tool for tool in tools.tools}
        self.assertEqual(sorted(byName), ["adder", "chat"])
        self.assertEqual(byName["chat"].description, "Answers questions\n\nUsage: Ask it anything.")
        self.assertEqual(byName["chat"].input_schema["required"], ["prompt"])
        self.assertIs(byName["chat"].annotations.read_only_hint, True)
        self.assertIsNone(byName["chat"].output_schema)
        self.assertEqual(byName["adder"].output_schema["required"], ["sum"])
        self.assertFalse(result.is_error)
        self.assertEqual(result.content[0].text, "Paris.")
        self.assertTrue(notes, "no progress notification arrived")
        values = [value for value, _ in notes]
        self.assertEqual(values, sorted(set(values)))
        self.assertIn("turn 1: fake/test-model answering", [message for _, message in notes])
        # The agent saw the prompt as its user message.
        sent = server.upstream.requests[-1].body["messages"]
        self.assertEqual(sent[-1]["content"], "Capital?")
        return version

    async def test_handshakeMode(self) -> None:
        """
        In the handshake mode (C{mode="legacy"}: C{initialize}, a session)
        the SDK negotiates 2025-11-25, lists both agents as tools with their
        descriptions and schemas, and a call answers the agent's text with
        increasing progress notifications.
        """
        version = await self._listAndCall("legacy")
        self.assertEqual(version, "2025-11-25")

    async def test_modernMode(self) -> None:
        """
        By default (C{mode="auto"}) the SDK's C{server/discover} probe is
        answered, so it stays in the 2026-07-28 mode (no fallback to
        C{initialize}), and lists and calls the same way.
        """
        version = await self._listAndCall("auto")
        self.assertEqual(version, "2026-07-28")

    async def test_structuredOutput(self) -> None:
        """
        An agent with JSON input and output schemas takes the schema's
        arguments (its user message is them as compact JSON) and answers
        C{structuredContent}, which the SDK validates against the listed
        C{outputSchema}.
        """
        server = await _server(self)
        server.upstream.script(Reply(content='{"sum": 5}'))

        async def work(client: Any) -> Any:
            return await client.call_tool("adder", {"a": 2, "b": 3})

        result = await _sdk(_url(server), "legacy", work)
        self.assertFalse(result.is_error)
        self.assertEqual(result.structured_content, {"sum": 5})
        sent = server.upstream.requests[-1].body["messages"]
        self.assertEqual(json.loads(sent[-1]["content"]), {"a": 2, "b": 3})

    async def test_badArgumentsAreToolErrors(self) -> None:
        """
        Arguments that do not fit the agent's input are a result with
        C{isError} naming the fault, and no run starts.
        """
        server = await _server(self)

        async def work(client: Any) -> Any:
            return await client.call_tool("adder", {"a": "two"})

        result = await _sdk(_url(server), "legacy", work)
        self.assertTrue(result.is_error)
        self.assertIn("adder", result.content[0].text)
        self.assertEqual(server.upstream.requests, [])

    async def test_failedRunIsToolError(self) -> None:
        """
        A run that fails (the upstream answers 400) is a result with
        C{isError} and the reason, without the provider's key.
        """
        server = await _server(self)
        server.upstream.script(
            Reply(status=400, errorBody={"error": {"message": f"bad key {SENTINEL_KEY}"}})
        )

        async def work(client: Any) -> Any:
            return await client.call_tool("chat", {"prompt": "hi"})

        result = await _sdk(_url(server), "legacy", work)
        self.assertTrue(result.is_error)
        self.assertTrue(result.content[0].text)
        self.assertNotIn(SENTINEL_KEY, result.content[0].text)

    async def test_noKeyInProgress(self) -> None:
        """
        A provider key that a tool call's arguments quote never reaches the
        caller: the progress messages are redacted as every API's stream.
        """
        from tests.mcp_servers import calcEntry

        agent = CHAT_AGENT.replace(
            "models: fake/test-model", "models: fake/test-model\ntools: [calc]"
        )
        server = await startServer(self, {"chat.ai": agent}, mcpServers={"calc": calcEntry()})
        server.upstream.script(
            Reply(toolCalls=[("calc__add", {"a": 1, "b": 2, "note": SENTINEL_KEY})]),
            Reply(content="Done."),
        )

        async def work(client: Any) -> Any:
            notes: list[str | None] = []

            async def progress(value: float, total: float | None, message: str | None) -> None:
                notes.append(message)

            await client.call_tool("chat", {"prompt": "add"}, progress_callback=progress)
            return notes

        notes = await _sdk(_url(server), "legacy", work)
        text = "\n".join(note or "" for note in notes)
        self.assertIn("calling calc__add", text)
        self.assertNotIn(SENTINEL_KEY, text)

    async def test_answerCap(self) -> None:
        """
        A run whose answer grows past the server's bound is stopped, and the
        call is a result with C{isError} saying so (not the cut answer).
        """
        server = await _server(self)
        for mount in server.mounts:
            if isinstance(mount.headend, McpHeadend):
                mount.headend.maxAnswer = 20
        server.upstream.script(Reply(content="word " * 40))

        async def work(client: Any) -> Any:
            return await client.call_tool("chat", {"prompt": "talk"})

        result = await _sdk(_url(server), "legacy", work)
        self.assertTrue(result.is_error)
        self.assertIn("20", result.content[0].text)
        self.assertNotIn("word word", result.content[0].text)

    async def test_progressKeepsShortTimeoutAlive(self) -> None:
        """
        A run longer than the client's timeout survives when that timeout
        restarts on each progress notification (as Claude Code's idle
        watchdog and the TypeScript SDK's C{resetTimeoutOnProgress} do; the
        Python SDK has no such option, so the test's client keeps the
        deadline): the heartbeat (0.5 s here) keeps a 2 s timeout from
        firing during a 3 s run.
        """
        server = await _server(self)
        for mount in server.mounts:
            if isinstance(mount.headend, McpHeadend):
                mount.headend.heartbeat = 0.5
        server.upstream.script(Reply(content="late answer", delay=3.0))

        async def work(client: Any) -> Any:
            loop = asyncio.get_running_loop()
            deadline = [loop.time() + 2.0]
            notes: list[str | None] = []

            async def progress(value: float, total: float | None, message: str | None) -> None:
                deadline[0] = loop.time() + 2.0
                notes.append(message)

            call = asyncio.ensure_future(
                client.call_tool("chat", {"prompt": "slow"}, progress_callback=progress)
            )
            while not call.done():
                if loop.time() > deadline[0]:
                    call.cancel()
                    raise AssertionError(f"no progress for 2 s; got {notes}")
                await asyncio.wait([call], timeout=0.1)
            return call.result(), notes

        result, notes = await _sdk(_url(server), "legacy", work)
        self.assertEqual(result.content[0].text, "late answer")
        self.assertIn("still working", notes)

    async def _cancelled(self, mode: str) -> None:
        server = await _server(self)
        server.upstream.script(Reply(content="never", hold=True))

        async def work(client: Any) -> Any:
            try:
                await client.call_tool("chat", {"prompt": "hold"}, read_timeout_seconds=1.0)
            except Exception as error:
                return type(error).__name__
            return "answered"

        outcome = await _sdk(_url(server), mode, work)
        self.assertNotEqual(outcome, "answered")
        await server.upstream.waitForDisconnects(1)
        [headend] = [m.headend for m in server.mounts if isinstance(m.headend, McpHeadend)]
        self.assertEqual([s.calls for s in headend.sessions.values()], [])
        self.assertEqual(server.pool.activeRuns, 0)

    async def test_cancelHandshakeMode(self) -> None:
        """
        In the handshake mode, a call the client gives up on (its timeout
        fires: it sends C{notifications/cancelled} and closes the session)
        stops the run: the upstream call is dropped and the slot is free.
        """
        await self._cancelled("legacy")

    async def test_cancelModernMode(self) -> None:
        """
        In the 2026-07-28 mode (cancel = closing the call's stream) the
        same give-up stops the run.
        """
        await self._cancelled("auto")

    async def test_agentWithMcpToolShowsProgress(self) -> None:
        """
        An agent that itself calls an MCP tool (the SDK-built calc server),
        served over MCP, shows its tool call to the caller as progress
        messages, and answers with the text that used the tool's result.
        """
        from tests.mcp_servers import calcEntry

        agent = CHAT_AGENT.replace(
            "models: fake/test-model", "models: fake/test-model\ntools: [calc]"
        )
        server = await startServer(self, {"chat.ai": agent}, mcpServers={"calc": calcEntry()})
        server.upstream.script(
            Reply(toolCalls=[("calc__add", {"a": 20, "b": 22})]), Reply(content="It is 42.")
        )

        async def work(client: Any) -> Any:
            notes: list[str | None] = []

            async def progress(value: float, total: float | None, message: str | None) -> None:
                notes.append(message)

            tools = await client.list_tools()
            result = await client.call_tool("chat", {"prompt": "add"}, progress_callback=progress)
            return tools, result, notes

        tools, result, notes = await _sdk(_url(server), "auto", work)
        [tool] = tools.tools
        self.assertIs(tool.annotations.read_only_hint, False)
        self.assertIs(tool.annotations.open_world_hint, True)
        self.assertEqual(result.content[0].text, "It is 42.")
        text = "\n".join(note or "" for note in notes)
        self.assertIn("calling calc__add", text)
        self.assertIn("calc__add → 42", text)


class WireTests(TestCase):
    """
    C{/mcp}'s answers to protocol mistakes and to requests it must refuse,
    on the wire.
    """

    async def _post(
        self, server: LiveServer, body: bytes, headers: dict[bytes, list[bytes]] | None = None
    ) -> tuple[int, Any, Any]:
        sent = {b"content-type": [b"application/json"], b"accept": [b"application/json"]}
        sent.update(headers or {})
        response = await treq.post(
            _url(server), data=body, headers=sent, pool=HTTPConnectionPool(reactor, False)
        )
        text = await response.content()
        return response.code, response.headers, json.loads(text) if text else None

    async def _initialize(self, server: LiveServer) -> bytes:
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {}},
            }
        ).encode()
        code, headers, answer = await self._post(server, body)
        self.assertEqual(code, 200)
        self.assertEqual(answer["result"]["protocolVersion"], "2025-06-18")
        return headers.getRawHeaders(b"mcp-session-id")[0]

    async def test_parseError(self) -> None:
        """
        A body that is not JSON is a 400 with JSON-RPC error -32700.
        """
        server = await _server(self)
        code, _, answer = await self._post(server, b"{not json")
        self.assertEqual((code, answer["error"]["code"], answer["id"]), (400, PARSE_ERROR, None))

    async def test_batchRefused(self) -> None:
        """
        A JSON-RPC batch is a 400 with -32600 saying batches are not taken.
        """
        server = await _server(self)
        code, _, answer = await self._post(server, b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]')
        self.assertEqual((code, answer["error"]["code"]), (400, INVALID_REQUEST))
        self.assertIn("batch", answer["error"]["message"])

    async def test_sessionRequired(self) -> None:
        """
        After the handshake, a request without C{Mcp-Session-Id} is a 400,
        one with an unknown id a 404; C{notifications/initialized} is a 202
        without a body; an unknown method is -32601; an unknown tool -32602;
        DELETE ends the session (then 404).
        """
        server = await _server(self)
        session = await self._initialize(server)
        listing = b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}'
        code, _, _ = await self._post(server, listing)
        self.assertEqual(code, 400)
        code, _, _ = await self._post(server, listing, {b"mcp-session-id": [b"nope"]})
        self.assertEqual(code, 404)
        withSession = {b"mcp-session-id": [session]}
        code, _, answer = await self._post(
            server, b'{"jsonrpc":"2.0","method":"notifications/initialized"}', withSession
        )
        self.assertEqual((code, answer), (202, None))
        code, _, answer = await self._post(
            server, b'{"jsonrpc":"2.0","id":3,"method":"resources/list"}', withSession
        )
        self.assertEqual((code, answer["error"]["code"]), (200, -32601))
        code, _, answer = await self._post(
            server,
            b'{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"nope"}}',
            withSession,
        )
        self.assertEqual(answer["error"]["code"], INVALID_PARAMS)
        self.assertIn("chat", answer["error"]["message"])
        response = await treq.delete(
            _url(server), headers=withSession, pool=HTTPConnectionPool(reactor, False)
        )
        await response.content()
        self.assertEqual(response.code, 204)
        code, _, _ = await self._post(server, listing, withSession)
        self.assertEqual(code, 404)

    async def test_sessionsBounded(self) -> None:
        """
        At the bound on sessions, a new C{initialize} makes room by
        forgetting the least recently used idle session (its id is then a
        404); the new one is served.
        """
        server = await _server(self)
        [headend] = [m.headend for m in server.mounts if isinstance(m.headend, McpHeadend)]
        headend.maxSessions = 1
        first = await self._initialize(server)
        second = await self._initialize(server)
        listing = b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}'
        code, _, _ = await self._post(server, listing, {b"mcp-session-id": [first]})
        self.assertEqual(code, 404)
        code, _, answer = await self._post(server, listing, {b"mcp-session-id": [second]})
        self.assertEqual(code, 200)
        self.assertEqual(list(headend.sessions), [second.decode()])

    async def test_cancelledNotification(self) -> None:
        """
        C{notifications/cancelled} naming a running call's request id stops
        its run (the upstream call is dropped) while the call's connection
        stays open; the call is then answered without a result (202), as
        the spec says no response is due.
        """
        server = await _server(self)
        server.upstream.script(Reply(content="never", hold=True))
        session = await self._initialize(server)
        withSession = {b"mcp-session-id": [session]}
        call = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": "call-1",
                "method": "tools/call",
                "params": {"name": "chat", "arguments": {"prompt": "hold"}},
            }
        ).encode()
        calling = ensureDeferred(self._post(server, call, withSession))
        await server.upstream.waitForRequests(1)
        cancel = json.dumps(
            {
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": "call-1", "reason": "enough"},
            }
        ).encode()
        code, _, _ = await self._post(server, cancel, withSession)
        self.assertEqual(code, 202)
        await server.upstream.waitForDisconnects(1)
        code, _, answer = await calling
        self.assertEqual((code, answer), (202, None))
        self.assertEqual(server.pool.activeRuns, 0)

    async def test_reloadTellsListeners(self) -> None:
        """
        After a reload (what SIGHUP runs) that adds an agent, a session's
        GET stream gets C{notifications/tools/list_changed}, and
        C{tools/list} then lists the new agent.
        """
        from ai_agent.reload import Reloader

        server = await _server(self)
        [headend] = [m.headend for m in server.mounts if isinstance(m.headend, McpHeadend)]
        session = await self._initialize(server)
        withSession = {b"mcp-session-id": [session], b"accept": [b"text/event-stream"]}
        pool = HTTPConnectionPool(reactor, False)
        stream = await treq.get(_url(server), headers=withSession, unbuffered=True, pool=pool)
        self.assertEqual(stream.code, 200)
        received: list[bytes] = []
        told: Deferred[None] = Deferred()

        def collect(data: bytes) -> None:
            received.append(data)
            if b"notifications/tools/list_changed" in b"".join(received) and not told.called:
                told.callback(None)

        reading = treq.collect(stream, collect)
        reading.addErrback(lambda _: None)
        paths = [os.path.join(server.directory, name) for name in AGENTS]
        extra = os.path.join(server.directory, "extra.ai")
        with open(extra, "w", encoding="utf-8") as f:
            f.write(CHAT_AGENT)
        reloader = Reloader(
            reactor,
            server.runtime,
            [*paths, extra],
            os.path.join(server.directory, "config.json"),
            headends=[headend],
            cwd=server.directory,
            environ={"HOME": server.directory},
        )
        self.assertTrue(reloader.reload())
        await told.addTimeout(10, reactor)
        code, _, answer = await self._post(
            server,
            b'{"jsonrpc":"2.0","id":5,"method":"tools/list"}',
            {b"mcp-session-id": [session]},
        )
        self.assertIn("extra", [tool["name"] for tool in answer["result"]["tools"]])
        response = await treq.delete(
            _url(server), headers={b"mcp-session-id": [session]}, pool=pool
        )
        await response.content()
        await reading

    async def test_modernHeaderMismatch(self) -> None:
        """
        In the 2026-07-28 mode a C{tools/call} whose C{Mcp-Name} differs
        from the body's tool is a 400 with -32020, and an unknown version is
        -32022 naming the supported ones.
        """
        server = await _server(self)
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "chat", "arguments": {"prompt": "x"}},
            }
        ).encode()
        code, _, answer = await self._post(
            server,
            body,
            {
                b"mcp-protocol-version": [b"2026-07-28"],
                b"mcp-method": [b"tools/call"],
                b"mcp-name": [b"adder"],
            },
        )
        self.assertEqual((code, answer["error"]["code"]), (400, -32020))
        code, _, answer = await self._post(
            server,
            b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
            {b"mcp-protocol-version": [b"2099-01-01"]},
        )
        self.assertEqual((code, answer["error"]["code"]), (400, -32022))
        self.assertIn("2025-11-25", answer["error"]["data"]["supported"])
        self.assertEqual(server.upstream.requests, [])

    async def test_foreignOriginForbidden(self) -> None:
        """
        A request with an C{Origin} the server does not allow is a 403 (a
        browser page must not reach a local server); without C{Origin} it
        is served.
        """
        server = await _server(self)
        code, _, answer = await self._post(
            server,
            b'{"jsonrpc":"2.0","id":1,"method":"server/discover"}',
            {b"origin": [b"http://evil.example"]},
        )
        self.assertEqual(code, 403)
        self.assertEqual(answer["jsonrpc"], "2.0")
        code, _, answer = await self._post(
            server, b'{"jsonrpc":"2.0","id":1,"method":"server/discover"}'
        )
        self.assertEqual(code, 200)
        self.assertIn("2026-07-28", answer["result"]["supportedVersions"])

    async def test_reboundHostForbidden(self) -> None:
        """
        On a loopback bind, a C{Host} naming another host (DNS rebinding)
        is a 403; C{localhost} is served.
        """
        server = await _server(self)
        body = b'{"jsonrpc":"2.0","id":1,"method":"server/discover"}'
        code, _, _ = await self._post(server, body, {b"host": [b"attacker.example:80"]})
        self.assertEqual(code, 403)
        code, _, _ = await self._post(server, body, {b"host": [b"localhost:1234"]})
        self.assertEqual(code, 200)

    async def test_keyRequired(self) -> None:
        """
        With keys set, C{/mcp} without one is a 401 with
        C{WWW-Authenticate} and a JSON-RPC-shaped body; with one, served.
        """
        server = await _server(self, policy=HTTPPolicy(apiKeys=APIKeys.fromKeys(["sk-mcp-key"])))
        body = b'{"jsonrpc":"2.0","id":1,"method":"server/discover"}'
        code, headers, answer = await self._post(server, body)
        self.assertEqual(code, 401)
        self.assertTrue(headers.hasHeader(b"www-authenticate"))
        self.assertEqual(answer["error"]["code"], INVALID_REQUEST)
        self.assertNotIn("sk-mcp-key", json.dumps(answer))
        code, _, _ = await self._post(server, body, {b"authorization": [b"Bearer sk-mcp-key"]})
        self.assertEqual(code, 200)


class StdioTests(TestCase):
    """
    C{ai-agent --agent ... --mcp stdio} with the SDK's stdio client: the
    process speaks MCP on stdout and nothing else.
    """

    async def test_sdkStdioClient(self) -> None:
        """
        The SDK starts the command, lists the agent as a tool and calls it;
        the answer comes from the fake upstream.
        """
        from mcp import StdioServerParameters

        server = await _server(self)
        server.upstream.script(Reply(content="stdio answer"))
        config = os.path.join(server.directory, "config.json")
        agent = os.path.join(server.directory, "chat.ai")
        params = StdioServerParameters(
            command=sys.executable,
            args=["-m", "ai_agent", "--agent", agent, "--config", config, "--mcp", "stdio"],
            env={**os.environ, "HOME": server.directory},
            cwd=server.directory,
        )

        async def work(client: Any) -> Any:
            tools = await client.list_tools()
            result = await client.call_tool("chat", {"prompt": "over stdio"})
            return [tool.name for tool in tools.tools], result

        for mode in ("legacy", "auto"):
            server.upstream.script(Reply(content="stdio answer"))
            names, result = await _sdk(params, mode, work)  # type: ignore[arg-type]
            self.assertEqual(names, ["chat"])
            self.assertEqual(result.content[0].text, "stdio answer")


class _StdioChild(ProcessProtocol):
    """
    A C{--mcp stdio} child: its stdout lines, its stderr, its end.
    """

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(exitStatus(reason))


class StdioEndTests(TestCase):
    """
    The end of a C{--mcp stdio} process.
    """

    async def test_endOfInputCancelsCalls(self) -> None:
        """
        When standard input closes while a call runs, the run is cancelled
        (its upstream call is dropped) and the process exits 0; everything
        it wrote on standard output is JSON-RPC messages, one per line.
        """
        server = await _server(self)
        server.upstream.script(Reply(content="never", hold=True))
        child = _StdioChild()
        args = [
            sys.executable,
            "-m",
            "ai_agent",
            "--agent",
            os.path.join(server.directory, "chat.ai"),
            "--config",
            os.path.join(server.directory, "config.json"),
            "--mcp",
            "stdio",
        ]
        env = {**os.environ, "HOME": server.directory}
        transport = reactor.spawnProcess(child, sys.executable, args, env, server.directory)
        messages = [
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {}},
            },
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "chat", "arguments": {"prompt": "hold"}},
            },
        ]
        transport.write(b"".join(json.dumps(m).encode() + b"\n" for m in messages))
        await server.upstream.waitForRequests(1)
        transport.closeStdin()
        await server.upstream.waitForDisconnects(1)
        code = await child.ended.addTimeout(30, reactor)
        self.assertEqual(code, 0, child.err.decode())
        lines = child.out.decode().splitlines()
        answers = [json.loads(line) for line in lines]
        self.assertEqual([a.get("id") for a in answers], [1])
        self.assertEqual(answers[0]["result"]["serverInfo"]["name"], "ai-agent")


class UnitTests(SynchronousTestCase):
    """
    The protocol's pieces without sockets.
    """

    def test_toolNames(self) -> None:
        """
        Ids MCP allows are kept; others have each foreign character made
        C{_} and are cut to 128 characters.
        """
        self.assertEqual(toolName("team/chat v2"), "team_chat_v2")
        self.assertEqual(toolName("ok.name-1_x"), "ok.name-1_x")
        self.assertEqual(len(toolName("a" * 200)), 128)

    def test_parseMessage(self) -> None:
        """
        A request, a notification and a response are told apart; a message
        without C{jsonrpc: "2.0"} or with params that are not an object is
        refused with its code.
        """
        self.assertTrue(parseMessage(b'{"jsonrpc":"2.0","id":1,"method":"ping"}').isRequest)
        note = parseMessage(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
        self.assertTrue(note.isNotification)
        reply = parseMessage(b'{"jsonrpc":"2.0","id":1,"result":{}}')
        self.assertIsNone(reply.method)
        with self.assertRaises(ProtocolError) as raised:
            parseMessage(b'{"id":1,"method":"ping"}')
        self.assertEqual(raised.exception.code, INVALID_REQUEST)
        with self.assertRaises(ProtocolError) as raised:
            parseMessage(b'{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}')
        self.assertEqual(raised.exception.code, INVALID_PARAMS)

    def test_idleSessions(self) -> None:
        """
        Sessions unused for longer than the idle time and not busy (no
        call, no open stream) are the ones to forget, least recently used
        first.
        """
        from ai_agent.headends.mcp import _Session, idleSessions

        old = _Session("old", "k", "2025-11-25", lastUsed=10.0)
        older = _Session("older", "k", "2025-11-25", lastUsed=5.0)
        busy = _Session("busy", "k", "2025-11-25", lastUsed=0.0)
        busy.calls[1] = Deferred()
        fresh = _Session("fresh", "k", "2025-11-25", lastUsed=1790.0)
        sessions = {s.id: s for s in (old, older, busy, fresh)}
        self.assertEqual(idleSessions(sessions, 1800.0, 60.0), ["older", "old"])
        self.assertEqual(idleSessions(sessions, 1800.0, 1791.0), ["older"])

    def test_heartbeat(self) -> None:
        """
        A call's progress sends a heartbeat after each silence of the
        interval, with the progress value still increasing, and none after
        it stops.
        """
        clock = Clock()
        sent: list[dict[str, Any]] = []
        progress = _CallProgress("tok", sent.append, clock, 5.0)
        progress.start()
        clock.advance(4.9)
        self.assertEqual(len(sent), 1)
        progress.emit("calling a tool")
        clock.advance(4.9)
        self.assertEqual(len(sent), 2)
        clock.advance(0.2)
        self.assertEqual(len(sent), 3)
        self.assertEqual(sent[-1]["params"]["message"], "still working")
        self.assertEqual([s["params"]["progress"] for s in sent], [1, 2, 3])
        progress.stop()
        clock.advance(60)
        self.assertEqual(len(sent), 3)


class MetricsTests(TestCase):
    """
    MCP requests in the server's metrics, under C{headend="mcp"}.
    """

    async def test_counted(self) -> None:
        """
        A C{tools/call} is counted under C{headend="mcp"} with the agent it
        ran and status 200; the OpenAI headend's count is untouched.
        """
        from ai_agent.observe import Metrics, Observability
        from tests.test_observe import metricSeries, metricValue, scrape

        observer = Observability(Metrics(), None, clock=reactor.seconds)
        server = await _server(self, observer=observer)
        server.upstream.script(Reply(content="one"))

        async def work(client: Any) -> Any:
            return await client.call_tool("chat", {"prompt": "hi"})

        await _sdk(_url(server), "auto", work)
        status, text = await scrape(self, server.baseUrl[: -len("/v1")] + "/metrics")
        self.assertEqual(status, 200)
        requests = "ai_agent_requests_total"
        self.assertEqual(metricValue(text, requests, agent="chat", headend="mcp", status="200"), 1)
        self.assertEqual(metricSeries(text, requests, headend="openai"), [])
