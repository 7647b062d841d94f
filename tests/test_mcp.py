"""
The MCP client (L{ai_agent.tools}) against real MCP servers: the calc
server of C{tests/mcp_servers} (the official MCP Python SDK) over stdio and
Streamable HTTP, and the npm reference server C{server-everything} when it
is installed.  The JSON-RPC layer and result formatting also have
reactor-free unit tests.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping

import attrs
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ai_agent.config import McpServerConfig, loadConfig
from ai_agent.providers._wire import WireAgent
from ai_agent.runtime import CachingEndpointFactory
from ai_agent.speed import UpstreamHTTPClient, speedLayer
from ai_agent.tools import (
    JsonRpcConnection,
    JsonRpcError,
    McpError,
    McpManager,
    McpServer,
    formatToolResult,
    toolName,
)
from tests.mcp_servers import (
    CALC,
    EVERYTHING_MISSING,
    captureLogs,
    everythingCommand,
    httpClient,
    startHttpCalc,
    waitFor,
)


def _stdio(name: str = "calc", *args: str, env: Mapping[str, str] | None = None) -> McpServerConfig:
    return McpServerConfig(
        name=name, type="stdio", command=sys.executable, args=(CALC, *args), env=dict(env or {})
    )


def _server(
    testCase: TestCase, config: McpServerConfig, reactor: Any = reactor, **options: Any
) -> McpServer:
    options.setdefault("environ", dict(os.environ))
    server = McpServer(config, reactor, **options)
    testCase.addCleanup(_stop, server)
    return server


def _stop(server: McpServer) -> Deferred[None]:
    """
    Stop C{server}; on a L{_ClockedReactor}, its clock is moved past the
    stop's grace periods so that a process that does not exit is killed.
    """
    stopping = server.stop()
    if isinstance(server.reactor, _ClockedReactor):
        server.reactor.clock.advance(server.stopGrace * 2)
    return stopping


class _ClockedReactor:
    """
    The real reactor for processes and I/O, a L{Clock} for time: an MCP
    server's backoff, restarts and timeouts run on the test's clock while
    its process really runs.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def callLater(self, delay: float, f: Any, *args: Any, **kwargs: Any) -> Any:
        return self.clock.callLater(delay, f, *args, **kwargs)

    def seconds(self) -> float:
        return self.clock.seconds()

    def getDelayedCalls(self) -> Any:
        return self.clock.getDelayedCalls()

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)


def _real(d: Deferred[Any], seconds: float = 20.0) -> Deferred[Any]:
    """
    C{d}, failing after C{seconds} of the real reactor: a bounded wait for
    what a real process does, when the server's own timeouts are on a
    clock nobody moves.
    """
    return d.addTimeout(seconds, reactor)


# --- the JSON-RPC layer, reactor-free ------------------------------------------


@attrs.define
class _Transport:
    """
    Records sent messages; exchanges end at once (a pipe) unless C{hold}.
    """

    hold: bool = False
    sent: list[dict[str, Any]] = attrs.field(factory=list)
    exchanges: list[Deferred[bool]] = attrs.field(factory=list)
    cancelled: int = 0

    def sendMessage(self, message: Mapping[str, Any]) -> Deferred[bool]:
        self.sent.append(dict(message))
        if not self.hold:
            return succeed(False)

        def cancel(d: Deferred[bool]) -> None:
            self.cancelled += 1

        d: Deferred[bool] = Deferred(canceller=cancel)
        self.exchanges.append(d)
        return d


class JsonRpcTests(SynchronousTestCase):
    """
    L{JsonRpcConnection} numbers, matches, times out and cancels requests,
    and answers the server's requests.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.transport = _Transport()
        self.notified: list[tuple[str, Mapping[str, Any]]] = []
        self.connection = JsonRpcConnection(
            "demo",
            self.clock,
            self.transport,
            onNotification=lambda method, params: self.notified.append((method, params)),
        )

    def test_idsIncreaseAndAnswersMatch(self) -> None:
        """
        Request ids count up from 1; each answer fires the request with its
        id, whatever the order.
        """
        first = self.connection.request("tools/list")
        second = self.connection.request("ping", {"x": 1})
        self.assertEqual([m["id"] for m in self.transport.sent], [1, 2])
        self.assertEqual(self.transport.sent[1]["params"], {"x": 1})
        self.assertNotIn("params", self.transport.sent[0])
        self.connection.messageReceived({"jsonrpc": "2.0", "id": 2, "result": {"b": 2}})
        self.connection.messageReceived([{"jsonrpc": "2.0", "id": 1, "result": {"a": 1}}])
        self.assertEqual(self.successResultOf(first), {"a": 1})
        self.assertEqual(self.successResultOf(second), {"b": 2})
        self.assertEqual(self.connection.pending, 0)

    def test_errorAnswer(self) -> None:
        """
        A JSON-RPC error fails the request with L{JsonRpcError} carrying the
        code and naming the server and method.
        """
        d = self.connection.request("tools/call")
        self.connection.messageReceived(
            {"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "bad params"}}
        )
        error = self.failureResultOf(d, JsonRpcError).value
        self.assertEqual(error.rpcCode, -32602)
        self.assertEqual(
            error.message, "MCP server 'demo' answered tools/call with error -32602: bad params"
        )

    def test_timeout(self) -> None:
        """
        A request not answered in time fails with a readable L{McpError},
        is forgotten, and the server is told it was cancelled.
        """
        d = self.connection.request("tools/call", {}, timeout=5)
        self.clock.advance(5)
        error = self.failureResultOf(d, McpError).value
        self.assertEqual(error.message, "MCP server 'demo' did not answer tools/call within 5 s")
        self.assertEqual(self.connection.pending, 0)
        self.assertEqual(
            self.transport.sent[-1],
            {
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": 1, "reason": "the client no longer needs the result"},
            },
        )
        # A late answer is ignored.
        self.connection.messageReceived({"jsonrpc": "2.0", "id": 1, "result": {}})

    def test_cancel(self) -> None:
        """
        Cancelling a request forgets it, cancels its exchange (closing an
        HTTP call) and sends C{notifications/cancelled}; C{CancelledError}
        reaches the caller.
        """
        self.transport.hold = True
        d = self.connection.request("tools/call")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.connection.pending, 0)
        self.assertEqual(self.transport.cancelled, 1)
        self.assertEqual(self.transport.sent[-1]["method"], "notifications/cancelled")
        self.assertEqual(self.transport.sent[-1]["params"]["requestId"], 1)

    def test_initializeNotCancelledOnTheWire(self) -> None:
        """
        C{initialize} is never followed by C{notifications/cancelled} (the
        specification forbids it).
        """
        d = self.connection.request("initialize", {}, timeout=1)
        self.clock.advance(1)
        self.failureResultOf(d, McpError)
        self.assertEqual([m.get("method") for m in self.transport.sent], ["initialize"])

    def test_exchangeEndedWithoutAnswer(self) -> None:
        """
        An HTTP exchange that ends without the answer fails the request.
        """
        self.transport.hold = True
        d = self.connection.request("tools/list")
        self.transport.exchanges[0].callback(True)
        error = self.failureResultOf(d, McpError).value
        self.assertIn("ended its reply to tools/list without a result", error.message)

    def test_exchangeFailed(self) -> None:
        """
        A transport failure fails the request with its message.
        """
        self.transport.hold = True
        d = self.connection.request("tools/list")
        self.transport.exchanges[0].errback(McpError("cannot reach MCP server 'demo'"))
        self.assertEqual(
            self.failureResultOf(d, McpError).value.message, "cannot reach MCP server 'demo'"
        )

    def test_serverRequests(self) -> None:
        """
        The server's C{ping} is answered with an empty result; any other
        request with a C{-32601} error; notifications reach the callback;
        malformed messages are ignored.
        """
        self.connection.messageReceived({"jsonrpc": "2.0", "id": "a", "method": "ping"})
        self.connection.messageReceived(
            {"jsonrpc": "2.0", "id": 7, "method": "sampling/createMessage", "params": {}}
        )
        self.connection.messageReceived(
            {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
        )
        self.connection.messageReceived({"not": "json-rpc"})
        self.connection.messageReceived("junk")
        self.assertEqual(self.transport.sent[0], {"jsonrpc": "2.0", "id": "a", "result": {}})
        self.assertEqual(self.transport.sent[1]["id"], 7)
        self.assertEqual(self.transport.sent[1]["error"]["code"], -32601)
        self.assertEqual(self.notified, [("notifications/tools/list_changed", {})])

    def test_connectionLost(self) -> None:
        """
        When the connection is lost, waiting requests fail with the reason,
        exchanges are abandoned, and new requests fail at once.
        """
        self.transport.hold = True
        d = self.connection.request("tools/call")
        self.connection.connectionLost("MCP server 'demo' exited with code 1")
        self.assertEqual(
            self.failureResultOf(d, McpError).value.message, "MCP server 'demo' exited with code 1"
        )
        self.assertEqual(self.transport.cancelled, 1)
        later = self.connection.request("ping")
        self.failureResultOf(later, McpError)


class FormattingTests(SynchronousTestCase):
    """
    Tool results become text the model can read.
    """

    def test_textJoined(self) -> None:
        """
        Text items are joined with newlines; other items are described in
        brackets; C{structuredContent} is left out when there is text.
        """
        result = {
            "content": [
                {"type": "text", "text": "one"},
                {"type": "image", "data": "AAAA", "mimeType": "image/png"},
                {"type": "audio", "data": "AAAA", "mimeType": "audio/wav"},
                {"type": "resource", "resource": {"uri": "file:///a.txt", "text": "inside"}},
                {"type": "resource", "resource": {"uri": "file:///b", "blob": "AA"}},
                {"type": "resource_link", "uri": "file:///c", "name": "c"},
                {"type": "text", "text": "two"},
            ],
            "structuredContent": {"ignored": True},
        }
        self.assertEqual(
            formatToolResult("s", "t", result),
            "one\n[image: image/png]\n[audio: audio/wav]\n[resource: file:///a.txt]\ninside\n"
            "[resource: file:///b (binary)]\n[resource link: c file:///c]\ntwo",
        )

    def test_structuredOnly(self) -> None:
        """
        Without a text item, C{structuredContent} is given as JSON.
        """
        result = {"content": [], "structuredContent": {"city": "Oslo", "celsius": 21}}
        self.assertEqual(
            json.loads(formatToolResult("s", "t", result)), {"city": "Oslo", "celsius": 21}
        )

    def test_isError(self) -> None:
        """
        C{isError} raises L{McpError} with the text, so the model reads it
        as an error.
        """
        result = {"content": [{"type": "text", "text": "no such city"}], "isError": True}
        with self.assertRaises(McpError) as caught:
            formatToolResult("s", "t", result)
        self.assertEqual(caught.exception.message, "no such city")


class NamingTests(SynchronousTestCase):
    """
    Tools reach the model as C{<namespace>__<tool>}.
    """

    def test_names(self) -> None:
        """
        Letters, digits, C{_} and C{-} are kept; anything else becomes
        C{_}; long names are clamped to 64 characters and stay distinct.
        """
        self.assertEqual(toolName("calc", "add"), "calc__add")
        self.assertEqual(toolName("everything", "get-sum"), "everything__get-sum")
        self.assertEqual(toolName("fs", "read.file/v2"), "fs__read_file_v2")
        long1 = toolName("server", "x" * 80 + "1")
        long2 = toolName("server", "x" * 80 + "2")
        self.assertEqual(len(long1), 64)
        self.assertNotEqual(long1, long2)
        self.assertTrue(long1.startswith("server__xxx"))


# --- real servers -----------------------------------------------------------


class StdioTests(TestCase):
    """
    A stdio server started as a child process.
    """

    async def test_handshakeAndPagedTools(self) -> None:
        """
        The client offers protocol 2025-11-25 (the newest handshake
        version, which the SDK's server accepts as offered) and accepts the
        server's answer, then lists the tools with their descriptions and input
        schemas, following C{nextCursor} to the last page.
        """
        server = _server(self, _stdio("calc", "--page-size", "2", "--many", "3"))
        tools = await server.listTools()
        self.assertEqual(server.state, "ready")
        self.assertEqual(server.protocolVersion, "2025-11-25")
        self.assertEqual(server.serverInfo["name"], "calc")
        self.assertEqual(server.instructions, "Arithmetic for tests.")
        self.assertEqual(
            [tool.name for tool in tools],
            [
                "add",
                "fail",
                "sleep",
                "crash",
                "env",
                "big",
                "picture",
                "weather",
                "header",
                "log",
                "noop_0",
                "noop_1",
                "noop_2",
            ],
        )
        add = tools[0]
        self.assertEqual(add.description, "Add two integers.")
        self.assertEqual(add.inputSchema["required"], ["a", "b"])
        self.assertEqual(add.inputSchema["properties"]["a"]["type"], "integer")

    async def test_calls(self) -> None:
        """
        Tool results come back as text: text content as is, images
        described, structured content as JSON, concurrent calls each with
        its own answer; an error result and an unknown tool fail the call
        with L{McpError} carrying the server's text; C{ping} is answered.
        """
        server = _server(self, _stdio())
        self.assertEqual(await server.callTool("add", {"a": 2, "b": 3}, 10), "5")
        self.assertEqual(await server.callTool("picture", {}, 10), "a red dot\n[image: image/png]")
        self.assertEqual(
            json.loads(await server.callTool("weather", {"city": "Oslo"}, 10)),
            {"city": "Oslo", "celsius": 21},
        )
        slow = server.callTool("sleep", {"seconds": 0.3}, 10)
        fast = server.callTool("add", {"a": 1, "b": 1}, 10)
        self.assertEqual(await fast, "2")
        self.assertFalse(slow.called)
        self.assertEqual(await slow, "slept 0.3 s")
        with self.assertRaises(McpError) as caught:
            await server.callTool("fail", {"message": "boom"}, 10)
        self.assertEqual(caught.exception.message, "Error executing tool fail: boom")
        with self.assertRaises(McpError) as caught:
            await server.callTool("nope", {}, 10)
        self.assertEqual(caught.exception.message, "Unknown tool: nope")
        await server.ping()

    async def test_timeoutCancelsOnServer(self) -> None:
        """
        A call that outlives its timeout fails with a readable error, and
        the server receives C{notifications/cancelled} (its handler is
        cancelled).
        """
        marker = os.path.abspath(self.mktemp())
        os.makedirs(marker)
        server = _server(self, _stdio("calc", "--marker", marker))
        await server.listTools()
        with self.assertRaises(McpError) as caught:
            await server.callTool("sleep", {"seconds": 30}, 0.3)
        self.assertEqual(
            caught.exception.message, "MCP server 'calc' did not answer tools/call within 0.3 s"
        )
        await waitFor(lambda: os.path.exists(os.path.join(marker, "cancelled")))

    async def test_cancelCancelsOnServer(self) -> None:
        """
        Cancelling a call's Deferred cancels it on the server too.
        """
        marker = os.path.abspath(self.mktemp())
        os.makedirs(marker)
        server = _server(self, _stdio("calc", "--marker", marker))
        await server.listTools()
        call = server.callTool("sleep", {"seconds": 30}, 60)
        await waitFor(lambda: os.path.exists(os.path.join(marker, "sleeping")))
        call.cancel()
        self.failureResultOf(call, CancelledError)
        await waitFor(lambda: os.path.exists(os.path.join(marker, "cancelled")))
        self.assertEqual(await server.callTool("add", {"a": 1, "b": 2}, 10), "3")

    async def test_environment(self) -> None:
        """
        The server gets the configured C{env} over a minimal inherited
        environment: C{PATH} and C{HOME} come through, other variables of
        ours do not; no value of C{env} reaches the log.
        """
        logs = captureLogs(self)
        environ = {"PATH": os.environ["PATH"], "HOME": "/nowhere", "PROVIDER_KEY": "sk-parent"}
        server = _server(self, _stdio(env={"CALC_SECRET": "s3cret-value"}), environ=environ)
        self.assertEqual(await server.callTool("env", {"name": "CALC_SECRET"}, 10), "s3cret-value")
        self.assertEqual(await server.callTool("env", {"name": "HOME"}, 10), "/nowhere")
        self.assertEqual(await server.callTool("env", {"name": "PATH"}, 10), os.environ["PATH"])
        self.assertEqual(await server.callTool("env", {"name": "PROVIDER_KEY"}, 10), "(unset)")
        self.assertNotIn("s3cret-value", repr(server))
        self.assertFalse([line for line in logs if "s3cret-value" in line])

    async def test_stderrLogged(self) -> None:
        """
        Each line the server writes to standard error becomes a log event
        naming the server.
        """
        logs = captureLogs(self)
        server = _server(self, _stdio())
        await server.callTool("log", {"text": "hello from stderr"}, 10)
        await waitFor(lambda: any("hello from stderr" in line for line in logs))
        self.assertIn("MCP server calc: hello from stderr", logs)

    async def test_downTooLong(self) -> None:
        """
        A call made while the server is down fails, when it does not come
        back within the call's timeout (of the server's clock), with an
        error saying why; not a moment before.
        """
        clock = Clock()
        server = _server(self, _stdio(), reactor=_ClockedReactor(clock), backoff=(30,))
        await _real(server.listTools())
        with self.assertRaises(McpError):
            await _real(server.callTool("crash", {}, 10))
        call = server.callTool("add", {"a": 1, "b": 1}, 0.3)
        clock.advance(0.29)
        self.assertNoResult(call)
        clock.advance(0.01)
        self.assertEqual(
            self.failureResultOf(call, McpError).value.message,
            "MCP server 'calc' is not available: exited with code 3 (waited 0.3 s for it to start)",
        )
        self.assertEqual((server.state, server.starts), ("backoff", 1))

    async def test_crashRestartsWithBackoff(self) -> None:
        """
        A crashed server fails the call in flight with a clear error and is
        started again after the backoff (of the server's clock); a call
        made meanwhile waits for it.  The backoff grows with each crash,
        and starts over once the server has stayed up for C{stableAfter}
        seconds.
        """
        clock = Clock()
        server = _server(
            self, _stdio(), reactor=_ClockedReactor(clock), backoff=(5, 30), stableAfter=60
        )
        await _real(server.listTools())
        with self.assertRaises(McpError) as caught:
            await _real(server.callTool("crash", {}, 10))
        self.assertEqual(
            caught.exception.message, "MCP server 'calc' exited with code 3 before answering"
        )
        self.assertEqual(server.state, "backoff")
        waiting = server.callTool("add", {"a": 2, "b": 2}, 10)
        clock.advance(4.9)
        self.assertEqual((server.state, server.starts), ("backoff", 1))
        self.assertNoResult(waiting)
        clock.advance(0.1)
        self.assertEqual(await _real(waiting), "4")
        self.assertEqual(server.starts, 2)
        # A second crash before it was stable: the next backoff is 30 s.
        with self.assertRaises(McpError):
            await _real(server.callTool("crash", {}, 10))
        clock.advance(29.9)
        self.assertEqual((server.state, server.starts), ("backoff", 2))
        clock.advance(0.1)
        await _real(server.whenReady(10))
        self.assertEqual(server.starts, 3)
        # Up for stableAfter: the backoff starts over at 5 s.
        clock.advance(60)
        with self.assertRaises(McpError):
            await _real(server.callTool("crash", {}, 10))
        clock.advance(5)
        await _real(server.whenReady(10))
        self.assertEqual(server.starts, 4)

    async def test_stop(self) -> None:
        """
        Stopping fails the pending calls and ends the process; later calls
        fail at once.
        """
        marker = os.path.abspath(self.mktemp())
        os.makedirs(marker)
        server = _server(self, _stdio("calc", "--marker", marker))
        await server.listTools()
        call = server.callTool("sleep", {"seconds": 30}, 60)
        await waitFor(lambda: os.path.exists(os.path.join(marker, "sleeping")))
        await server.stop()
        self.assertEqual(
            self.failureResultOf(call, McpError).value.message, "MCP server 'calc' is stopping"
        )
        self.assertEqual(server.state, "stopped")
        with self.assertRaises(McpError) as caught:
            await server.callTool("add", {"a": 1, "b": 1}, 1)
        self.assertEqual(caught.exception.message, "MCP server 'calc' is stopped")

    async def test_commandNotFound(self) -> None:
        """
        A command that does not exist fails the start with a message naming
        it.
        """
        config = McpServerConfig(name="ghost", type="stdio", command="no-such-mcp-server-here")
        server = _server(self, config)
        with self.assertRaises(McpError) as caught:
            await server.listTools()
        self.assertEqual(
            caught.exception.message,
            "MCP server 'ghost' is not available: the command 'no-such-mcp-server-here'"
            " was not found on PATH",
        )

    async def test_missingVariable(self) -> None:
        """
        An entry using an unset C{${VAR}} never starts; using it fails with
        a message naming the variable.
        """
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        with open(os.path.join(folder, ".ai-agent.json"), "w") as f:
            json.dump(
                {
                    "mcpServers": {
                        "calc": {"command": sys.executable, "env": {"T": "${CALC_TOKEN}"}}
                    }
                },
                f,
            )
        config = loadConfig(configFile=None, cwd=folder, agentDirs=[], home=None, environ={})
        server = _server(self, config.mcpServers["calc"])
        with self.assertRaises(McpError) as caught:
            await server.listTools()
        self.assertIn("CALC_TOKEN", caught.exception.message)
        self.assertEqual(server.state, "failed")
        self.assertEqual(server.starts, 0)

    async def test_managerSharesServers(self) -> None:
        """
        The manager starts the servers in use with the service, gives every
        caller the same server, and stops them all.
        """
        manager = McpManager({"calc": _stdio()}, reactor, environ=dict(os.environ), used=["calc"])
        manager.startService()
        self.addCleanup(manager.stopAll)
        server = manager.server("calc")
        self.assertIs(manager.server("calc"), server)
        self.assertEqual(server.state, "starting")
        await server.whenReady(20)
        with self.assertRaises(McpError) as caught:
            manager.server("other")
        self.assertEqual(
            caught.exception.message, "no MCP server named 'other' is configured (configured: calc)"
        )
        await manager.stopService()
        self.assertEqual(server.state, "stopped")


class HttpTests(TestCase):
    """
    A Streamable HTTP server, run as a subprocess on 127.0.0.1.
    """

    def _http(self, url: str, **headers: str) -> McpServerConfig:
        return McpServerConfig(name="web", type="http", url=url, headers=headers)

    def client(self) -> HTTPClient:
        """
        The HTTP client the server is given: treq on Twisted's C{Agent}.
        """
        return httpClient(self)

    async def test_eventStreamAnswers(self) -> None:
        """
        Over SSE answers: the handshake gets a session id, which later
        requests carry; tools are listed (across pages) and called;
        configured headers go out but never reach the log.
        """
        logs = captureLogs(self)
        url = await startHttpCalc(self, "--page-size", "4")
        server = _server(
            self, self._http(url, Authorization="Bearer s3cret-header"), http=self.client()
        )
        tools = await server.listTools()
        self.assertEqual(len(tools), 10)
        self.assertEqual(server.protocolVersion, "2025-11-25")
        self.assertEqual(await server.callTool("add", {"a": 20, "b": 22}, 10), "42")
        with self.assertRaises(McpError):
            await server.callTool("fail", {"message": "nope"}, 10)
        await server.ping()
        self.assertFalse([line for line in logs if "s3cret-header" in line])
        self.assertNotIn("s3cret-header", repr(server))

    async def test_jsonAnswers(self) -> None:
        """
        Over plain JSON answers, the same.
        """
        url = await startHttpCalc(self, "--json")
        server = _server(self, self._http(url), http=self.client())
        self.assertEqual(await server.callTool("add", {"a": 1, "b": 2}, 10), "3")

    async def test_cancelClosesHttpCall(self) -> None:
        """
        A timed-out call closes its HTTP request; the server cancels the
        handler.
        """
        marker = os.path.abspath(self.mktemp())
        os.makedirs(marker)
        url = await startHttpCalc(self, "--marker", marker)
        server = _server(self, self._http(url), http=self.client())
        await server.listTools()
        with self.assertRaises(McpError) as caught:
            await server.callTool("sleep", {"seconds": 30}, 0.3)
        self.assertIn("did not answer tools/call within 0.3 s", caught.exception.message)
        await waitFor(lambda: os.path.exists(os.path.join(marker, "cancelled")))
        self.assertEqual(await server.callTool("add", {"a": 1, "b": 2}, 10), "3")

    async def test_forgottenSession(self) -> None:
        """
        When the server answers 404 to our session (it forgot it), the call
        fails and the client starts a new session.
        """
        url = await startHttpCalc(self)
        server = _server(self, self._http(url), http=self.client(), backoff=(0.05,))
        await server.listTools()
        # Simulate the server forgetting the session.
        transport = server._transport
        assert transport is not None
        transport.sessionId = "forgotten"
        with self.assertRaises(McpError) as caught:
            await server.callTool("add", {"a": 1, "b": 2}, 10)
        self.assertEqual(
            caught.exception.message,
            "MCP server 'web' forgot our session (HTTP 404) before answering",
        )
        self.assertEqual(await server.callTool("add", {"a": 1, "b": 2}, 10), "3")
        self.assertEqual(server.starts, 2)

    async def test_unreachable(self) -> None:
        """
        A server nobody listens for fails to start with a clear message.
        """
        server = _server(self, self._http("http://127.0.0.1:9/mcp"), http=self.client())
        with self.assertRaises(McpError) as caught:
            await server.listTools(5)
        self.assertEqual(
            caught.exception.message,
            "MCP server 'web' is not available: connection refused",
        )


class _CountingClient(UpstreamHTTPClient):
    """
    The speed layer's upstream client, counting what goes through treq.
    """

    def __init__(self, agent: WireAgent) -> None:
        super().__init__(agent)
        self.throughTreq: list[str] = []

    def request(self, method: str, url: Any, **kwargs: Any) -> Any:
        self.throughTreq.append(method)
        return super().request(method, url, **kwargs)


class WireHttpTests(HttpTests):
    """
    The same, on the speed layer's upstream client (as the server runs by
    default): every JSON-RPC POST goes straight through its L{WireAgent}.
    """

    def client(self) -> HTTPClient:
        """
        The speed layer's upstream client, its pool closed when the test
        ends; checked at the end to have sent no POST through treq.
        """
        upstream = speedLayer(stock=False).upstream(
            reactor, CachingEndpointFactory(reactor, 10.0), maxIdlePerHost=4, idleTimeout=60.0
        )
        assert isinstance(upstream.pool, WireAgent)
        client = _CountingClient(upstream.pool)
        self.addCleanup(upstream.pool.closeCachedConnections)
        self.addCleanup(lambda: self.assertNotIn("POST", client.throughTreq))
        return client


class EverythingTests(TestCase):
    """
    The reference server from npm, C{@modelcontextprotocol/server-everything},
    over stdio.
    """

    def setUp(self) -> None:
        command = everythingCommand()
        if command is None:
            raise self.skipTest(EVERYTHING_MISSING)
        self.config = McpServerConfig(
            name="everything", type="stdio", command=command, args=("stdio",)
        )

    async def test_toolsAndCalls(self) -> None:
        """
        Its tools are listed (its C{list_changed} notification and log
        messages are tolerated), and calls return their text and images.
        """
        server = _server(self, self.config)
        tools = {tool.name: tool for tool in await server.listTools(30)}
        self.assertIn("echo", tools)
        self.assertIn("get-sum", tools)
        self.assertEqual(tools["echo"].inputSchema["required"], ["message"])
        self.assertEqual(await server.callTool("echo", {"message": "hi"}, 10), "Echo: hi")
        self.assertIn("3", await server.callTool("get-sum", {"a": 1, "b": 2}, 10))
        self.assertIn("[image: image/png]", await server.callTool("get-tiny-image", {}, 10))
