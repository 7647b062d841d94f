# -*- test-case-name: tests.test_mcp -*-
"""
The MCP client: configured servers, started once and shared by every
session.

An L{McpServer} owns one configured server: it starts it (a child process
for C{stdio}, a Streamable HTTP session for C{http}), runs the
C{initialize} handshake, lists its tools (following C{nextCursor}), and calls
them.  When a stdio server dies, or an HTTP server forgets the session, it
starts it again after a growing delay (L{DEFAULT_BACKOFF}), reset once the
server has stayed up for a while; a call made in the meantime waits for it.

An L{McpManager} holds the L{McpServer}s of a configuration, and is the
service that starts the ones agents use and stops them all.

Tool results become text for the model with L{formatToolResult}.
"""

from __future__ import annotations

import contextvars
import json
from functools import partial
from typing import Any, Callable, Iterable, Mapping, Sequence

import attrs
from treq.client import HTTPClient
from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    fail,
    succeed,
)
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ai_agent import __version__
from ai_agent.config import McpServerConfig, describeMissing
from ai_agent.tools._http import HttpTransport
from ai_agent.tools._jsonrpc import JsonRpcConnection, McpError
from ai_agent.tools._stdio import StdioProcess, childEnvironment

log = Logger()

PROTOCOL_VERSION = "2025-11-25"
"""
The MCP protocol version offered in C{initialize} (the newest handshake
version; servers built on the MCP SDKs 2.x serve it beside the 2026-07-28
per-request mode, and answer an older one they prefer, such as 2025-06-18,
which is accepted: the server's answer is taken whatever it is and sent as
C{MCP-Protocol-Version} on HTTP).
"""

CLIENT_INFO = {"name": "ai-agent", "version": __version__}

DEFAULT_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
"""
Seconds to wait before each restart of a server that died or failed to
start; the last value repeats.
"""

INITIALIZE_TIMEOUT = 10.0
"""
Seconds a server has to answer each request of its start (C{initialize} and
the first C{tools/list}); one that does not is treated as failing to start.
"""

MAX_TOOL_PAGES = 100
"""
The most C{tools/list} pages read from one server.
"""


@attrs.frozen
class McpTool:
    """
    One tool an MCP server offers.

    @ivar inputSchema: the JSON Schema of its arguments.
    """

    name: str
    description: str
    inputSchema: Mapping[str, Any]
    title: str | None = None


def _parseTools(server: str, result: Any) -> tuple[list[McpTool], str | None]:
    if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
        raise McpError(f"MCP server {server!r} answered tools/list without a list of tools")
    tools = []
    for entry in result["tools"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            log.warn("MCP server {server} listed a tool without a name", server=server)
            continue
        schema = entry.get("inputSchema")
        description = entry.get("description")
        title = entry.get("title")
        tools.append(
            McpTool(
                name=entry["name"],
                description=description if isinstance(description, str) else "",
                inputSchema=schema if isinstance(schema, dict) else {"type": "object"},
                title=title if isinstance(title, str) else None,
            )
        )
    cursor = result.get("nextCursor")
    return tools, cursor if isinstance(cursor, str) and cursor else None


def _describeContent(item: Any) -> str | None:
    """
    One content item of a tool result as text; L{None} for a text item with
    no text.
    """
    if not isinstance(item, dict):
        return "[unreadable content]"
    kind = item.get("type")
    if kind == "text":
        text = item.get("text")
        return text if isinstance(text, str) else None
    if kind in ("image", "audio"):
        return f"[{kind}: {item.get('mimeType') or 'unknown type'}]"
    if kind == "resource":
        resource = item.get("resource")
        resource = resource if isinstance(resource, dict) else {}
        uri = resource.get("uri") or "unnamed"
        if isinstance(resource.get("text"), str):
            return f"[resource: {uri}]\n{resource['text']}"
        return f"[resource: {uri} ({resource.get('mimeType') or 'binary'})]"
    if kind == "resource_link":
        return f"[resource link: {item.get('name') or ''} {item.get('uri') or ''}]".replace(
            "  ", " "
        )
    return f"[{kind} content]"


def formatToolResult(server: str, tool: str, result: Any) -> str:
    """
    The text the model reads for a C{tools/call} result: the C{content}
    items joined with newlines (text as is, other items described in
    brackets, such as C{[image: image/png]}), or C{structuredContent} as
    JSON when there is no text item.

    @raise McpError: with that text, when the result has C{isError}; the
        session shows it to the model as an error.
    """
    if not isinstance(result, dict):
        raise McpError(f"MCP server {server!r} answered tools/call with something not an object")
    content = result.get("content")
    items = content if isinstance(content, list) else []
    parts = [text for text in (_describeContent(item) for item in items) if text is not None]
    hasText = any(isinstance(item, dict) and item.get("type") == "text" for item in items)
    structured = result.get("structuredContent")
    if not hasText and structured is not None:
        parts.append(json.dumps(structured, ensure_ascii=False))
    text = "\n".join(parts)
    if result.get("isError") is True:
        raise McpError(text or f"{tool} failed without saying why")
    return text


@attrs.define(eq=False)
class McpServer:
    """
    One configured MCP server, shared by every session.

    @ivar environ: the environment stdio servers inherit a few variables
        from (see L{ai_agent.tools._stdio.INHERITED_VARIABLES}).
    @ivar requestTimeout: seconds allowed for each request other than
        C{tools/call} (whose timeout the caller gives).
    @ivar initializeTimeout: seconds allowed for each request of a start
        (C{initialize}, then C{tools/list}).
    @ivar backoff: seconds to wait before each restart; the last repeats.
    @ivar stableAfter: seconds a server must stay up for the backoff to
        start over.
    @ivar stopGrace: seconds between closing a stdio server's input and
        C{SIGTERM}, and again before C{SIGKILL}.
    @ivar state: C{idle} (never started), C{starting}, C{ready},
        C{backoff} (waiting to restart), C{failed} (cannot start: a
        variable is missing), C{stopped}.
    @ivar tools: the tools of the last successful listing.
    @ivar listed: whether the tools were ever listed.
    @ivar lastError: why the server last stopped or failed to start.
    @ivar starts: how many times it was started.
    """

    config: McpServerConfig
    reactor: Any
    http: HTTPClient | None = None
    environ: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    requestTimeout: float = 60.0
    initializeTimeout: float = INITIALIZE_TIMEOUT
    backoff: Sequence[float] = DEFAULT_BACKOFF
    stableAfter: float = 30.0
    stopGrace: float = 2.0
    #: Applied to the server's own text before it is logged (its errors,
    #: log notifications, standard error): the configured secrets' redactor.
    scrub: Callable[[str], str] = attrs.field(default=str, repr=False)
    state: str = attrs.field(default="idle", init=False)
    tools: tuple[McpTool, ...] = attrs.field(default=(), init=False)
    listed: bool = attrs.field(default=False, init=False)
    serverInfo: Mapping[str, Any] = attrs.field(factory=dict, init=False)
    protocolVersion: str | None = attrs.field(default=None, init=False)
    instructions: str | None = attrs.field(default=None, init=False)
    lastError: str | None = attrs.field(default=None, init=False)
    starts: int = attrs.field(default=0, init=False)
    _attempt: int = attrs.field(default=0, init=False)
    _generation: int = attrs.field(default=0, init=False)
    _connection: JsonRpcConnection | None = attrs.field(default=None, init=False)
    _process: StdioProcess | None = attrs.field(default=None, init=False)
    _transport: HttpTransport | None = attrs.field(default=None, init=False)
    _startup: Deferred[None] | None = attrs.field(default=None, init=False)
    _refresh: Deferred[None] | None = attrs.field(default=None, init=False)
    _relist: bool = attrs.field(default=False, init=False)
    _restartCall: IDelayedCall | None = attrs.field(default=None, init=False)
    _stableCall: IDelayedCall | None = attrs.field(default=None, init=False)
    _waiters: list[tuple[Deferred[None], bool]] = attrs.field(factory=list, init=False)
    _dying: set[StdioProcess] = attrs.field(factory=set, init=False)
    _closing: list[Deferred[None]] = attrs.field(factory=list, init=False)

    @property
    def name(self) -> str:
        """
        The configured name.
        """
        return self.config.name

    # Public API.

    def start(self) -> None:
        """
        Start the server unless it was started before (stopping it is
        final).
        """
        if self.state == "idle":
            # In a context of its own: the server outlives the run that
            # happened to start it, and its traffic is no part of that
            # run's trace.
            contextvars.Context().run(self._launch)

    def whenReady(self, timeout: float, failFast: bool = False) -> Deferred[None]:
        """
        Start the server if needed and wait until it is ready.

        @param failFast: fail at the first failed start instead of waiting
            for the restarts.
        @return: a Deferred that fails with L{McpError} if the server cannot
            start (a variable is missing), is stopped, fails to start while
            C{failFast}, or is not ready within C{timeout} seconds.
        """
        self.start()
        if self.state == "ready":
            return succeed(None)
        if self.state in ("failed", "stopped") or (failFast and self.state == "backoff"):
            return fail(McpError(self._unavailable()))

        def cancel(d: Deferred[None]) -> None:
            self._waiters = [(w, f) for w, f in self._waiters if w is not d]

        d: Deferred[None] = Deferred(canceller=cancel)
        self._waiters.append((d, failFast))
        d.addTimeout(
            timeout,
            self.reactor,
            onTimeoutCancel=lambda result, seconds: self._waitTimedOut(result, seconds),
        )
        return d

    def listTools(self, timeout: float | None = None) -> Deferred[tuple[McpTool, ...]]:
        """
        Start the server if needed and fire with its tools; fail with
        L{McpError} if it does not start (at the first failure).
        """
        ready = self.whenReady(self.requestTimeout if timeout is None else timeout, failFast=True)
        return ready.addCallback(lambda _: self.tools)

    def toolsForSession(self, timeout: float) -> Deferred[tuple[McpTool, ...]]:
        """
        The tools to offer a session now: the last listing if there was one
        (even while the server restarts), else wait for a first start in
        progress.
        """
        self.start()
        if self.listed and self.state in ("ready", "backoff", "starting"):
            return succeed(self.tools)
        if self.state == "starting" and self.lastError is not None:
            # Known to be down (it failed before and is trying again): a
            # request does not wait for the retry.
            return fail(McpError(self._unavailable()))
        return self.listTools(timeout)

    def callTool(
        self,
        tool: str,
        arguments: Mapping[str, Any],
        timeout: float,
        readyTimeout: float | None = None,
    ) -> Deferred[str]:
        """
        Call a tool, waiting up to C{readyTimeout} seconds (default
        C{timeout}) for the server to be ready first (it may be
        restarting), then up to C{timeout} seconds for the answer.

        @return: a Deferred firing with the result as text (see
            L{formatToolResult}), or failing with L{McpError}.  Cancelling
            it cancels the request (the server is told).
        """
        wait = timeout if readyTimeout is None else readyTimeout
        return Deferred.fromCoroutine(self._callTool(tool, arguments, timeout, wait))

    def ping(self, timeout: float | None = None) -> Deferred[None]:
        """
        Send C{ping}; fire when the server answers.
        """

        async def ping() -> None:
            seconds = self.requestTimeout if timeout is None else timeout
            await self.whenReady(seconds)
            assert self._connection is not None
            await self._connection.request("ping", None, seconds)

        return Deferred.fromCoroutine(ping())

    def stop(self) -> Deferred[None]:
        """
        Stop the server: pending requests and waiters fail, a stdio process
        is asked to exit (then terminated, then killed), an HTTP session is
        ended.  Fire when it is all done.
        """
        self.state = "stopped"
        for call in (self._restartCall, self._stableCall):
            if call is not None and call.active():
                call.cancel()
        self._restartCall = self._stableCall = None
        for pending in (self._startup, self._refresh):
            if pending is not None and not pending.called:
                pending.cancel()
        self._startup = self._refresh = None
        self._failWaiters(f"MCP server {self.name!r} is stopped", failFastOnly=False)
        self._teardown(f"MCP server {self.name!r} is stopping")
        waits = [process.stop(self.stopGrace) for process in list(self._dying)]
        for closing in self._closing:
            waits.append(_observe(closing))
        return DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)

    # Starting.

    def _launch(self) -> None:
        self._restartCall = None
        missing = describeMissing(self.config)
        if missing is not None:
            self.state = "failed"
            self.lastError = missing
            log.error(
                "cannot start MCP server {server}: {problem}", server=self.name, problem=missing
            )
            self._failWaiters(self._unavailable(), failFastOnly=False)
            return
        self.state = "starting"
        self._generation += 1
        self.starts += 1
        generation = self._generation
        connection = JsonRpcConnection(
            self.name, self.reactor, onNotification=partial(self._notified, generation)
        )
        try:
            self._openTransport(connection, generation)
        except McpError as error:
            self._startFailed(Failure(error), generation)
            return
        self._connection = connection
        startup = Deferred.fromCoroutine(self._handshake(connection))
        self._startup = startup
        startup.addCallbacks(
            self._ready,
            self._startFailed,
            callbackArgs=(generation,),
            errbackArgs=(generation,),
        )

    def _openTransport(self, connection: JsonRpcConnection, generation: int) -> None:
        config = self.config
        if config.type == "stdio":
            assert config.command is not None
            process = StdioProcess.spawn(
                self.name,
                self.reactor,
                config.command,
                config.args,
                childEnvironment(self.environ, config.env),
                connection.messageReceived,
                partial(self._ended, generation),
                self.scrub,
            )
            self._process = process
            connection.transport = process
        else:
            if self.http is None:
                raise McpError(f"MCP server {self.name!r}: no HTTP client to reach it with")
            assert config.url is not None
            transport = HttpTransport(
                self.name,
                config.url,
                self.http,
                self.reactor,
                connection.messageReceived,
                partial(self._sessionLost, generation),
                headers=config.headers,
            )
            self._transport = transport
            connection.transport = transport

    async def _handshake(self, connection: JsonRpcConnection) -> None:
        result = await connection.request(
            "initialize",
            {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO},
            min(self.requestTimeout, self.initializeTimeout),
        )
        if not isinstance(result, dict):
            raise McpError(f"MCP server {self.name!r} answered initialize without an object")
        version = result.get("protocolVersion")
        self.protocolVersion = version if isinstance(version, str) else None
        info = result.get("serverInfo")
        self.serverInfo = info if isinstance(info, dict) else {}
        instructions = result.get("instructions")
        self.instructions = instructions if isinstance(instructions, str) else None
        if self._transport is not None:
            self._transport.protocolVersion = self.protocolVersion
        connection.notify("notifications/initialized")
        self.tools = await self._listAll(
            connection, min(self.requestTimeout, self.initializeTimeout)
        )
        self.listed = True

    async def _listAll(
        self, connection: JsonRpcConnection, timeout: float | None = None
    ) -> tuple[McpTool, ...]:
        tools: list[McpTool] = []
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_TOOL_PAGES):
            params = {"cursor": cursor} if cursor is not None else None
            result = await connection.request(
                "tools/list", params, self.requestTimeout if timeout is None else timeout
            )
            page, cursor = _parseTools(self.name, result)
            tools.extend(page)
            if cursor is None or cursor in seen:
                break
            seen.add(cursor)
        return tuple(tools)

    def _ready(self, _: None, generation: int) -> None:
        if generation != self._generation or self.state != "starting":
            return
        self._startup = None
        self.state = "ready"
        self.lastError = None
        self._stableCall = self.reactor.callLater(self.stableAfter, self._stable)
        log.info(
            "MCP server {server} is ready: {count} tools ({software}, protocol {protocol})",
            server=self.name,
            count=len(self.tools),
            software=" ".join(
                str(self.serverInfo[key]) for key in ("name", "version") if self.serverInfo.get(key)
            )
            or "unnamed",
            protocol=self.protocolVersion,
        )
        waiters, self._waiters = self._waiters, []
        for d, _failFast in waiters:
            d.callback(None)
        if self._relist:
            self._relist = False
            self._refreshTools()

    def _stable(self) -> None:
        self._stableCall = None
        self._attempt = 0

    def _startFailed(self, failure: Failure, generation: int) -> None:
        if generation != self._generation or self.state != "starting":
            return
        if failure.check(CancelledError):
            return
        self._startup = None
        error = failure.value.message if isinstance(failure.value, McpError) else None
        self.lastError = self.scrub(
            error or f"{type(failure.value).__name__}: {failure.getErrorMessage()}"
        )
        delay = self._nextDelay()
        log.warn(
            "MCP server {server} failed to start: {error}; trying again in {delay:g} s",
            server=self.name,
            error=self.lastError,
            delay=delay,
        )
        self._teardown(self.lastError)
        self._scheduleRestart(delay)
        self._failWaiters(self._unavailable(), failFastOnly=True)

    # Running.

    def _ended(self, generation: int, description: str) -> None:
        self._dying = {process for process in self._dying if process.running}
        if generation != self._generation or self.state not in ("starting", "ready"):
            return
        reason = f"MCP server {self.name!r} {description}"
        if self.state == "starting":
            # The handshake fails with this, and _startFailed restarts it.
            self._process = None
            if self._connection is not None:
                self._connection.connectionLost(reason)
            return
        self._lost(reason)

    def _sessionLost(self, generation: int, reason: str) -> None:
        if generation == self._generation and self.state == "ready":
            self._lost(reason)

    def _lost(self, reason: str) -> None:
        self.lastError = reason
        delay = self._nextDelay()
        log.warn(
            "{reason}; restarting it in {delay:g} s",
            reason=reason,
            delay=delay,
        )
        self._scheduleRestart(delay)
        self._teardown(f"{reason} before answering")

    def _nextDelay(self) -> float:
        return self.backoff[min(self._attempt, len(self.backoff) - 1)]

    def _scheduleRestart(self, delay: float) -> None:
        if self.state == "stopped":
            return
        if self._stableCall is not None and self._stableCall.active():
            self._stableCall.cancel()
        self._stableCall = None
        self._attempt += 1
        self.state = "backoff"
        self._restartCall = self.reactor.callLater(delay, self._launch)

    def _teardown(self, reason: str) -> None:
        """
        Drop the current connection: its requests fail with C{reason}; its
        process is stopped, its HTTP session ended.
        """
        connection, self._connection = self._connection, None
        process, self._process = self._process, None
        transport, self._transport = self._transport, None
        if connection is not None:
            connection.connectionLost(reason)
        if process is not None and process.running:
            self._dying.add(process)
            process.stop(self.stopGrace).addBoth(lambda _: self._dying.discard(process))
        if transport is not None:
            closing = transport.close()
            if not closing.called:
                self._closing.append(closing)
                closing.addBoth(lambda _: self._closing.remove(closing))

    def _failWaiters(self, message: str, failFastOnly: bool) -> None:
        failing = [d for d, failFast in self._waiters if failFast or not failFastOnly]
        self._waiters = [(d, failFast) for d, failFast in self._waiters if d not in failing]
        for d in failing:
            d.errback(McpError(message))

    def _unavailable(self) -> str:
        if self.state == "stopped":
            return f"MCP server {self.name!r} is stopped"
        if self.lastError is None:
            return f"MCP server {self.name!r} is not available"
        detail = self.lastError.removeprefix(f"MCP server {self.name!r}").lstrip(": ")
        return f"MCP server {self.name!r} is not available: {detail}"

    def _waitTimedOut(self, result: Any, seconds: float) -> Any:
        if isinstance(result, Failure) and result.check(CancelledError):
            raise McpError(f"{self._unavailable()} (waited {seconds:g} s for it to start)")
        return result

    def _notified(self, generation: int, method: str, params: Mapping[str, Any]) -> None:
        if generation != self._generation:
            return
        if method == "notifications/tools/list_changed":
            if self.state == "ready":
                self._refreshTools()
            elif self.state == "starting":
                self._relist = True
        elif method == "notifications/message":
            log.debug(
                "MCP server {server} logged ({level}): {data}",
                server=self.name,
                level=params.get("level"),
                data=self.scrub(json.dumps(params.get("data"), ensure_ascii=False)[:500]),
            )

    def _refreshTools(self) -> None:
        connection = self._connection
        if connection is None or (self._refresh is not None and not self._refresh.called):
            return

        async def refresh() -> None:
            tools = await self._listAll(connection)
            if connection is self._connection:
                self.tools = tools
                log.info(
                    "MCP server {server} changed its tools: now {count}",
                    server=self.name,
                    count=len(tools),
                )

        def failed(failure: Failure) -> None:
            if not failure.check(CancelledError):
                log.warn(
                    "MCP server {server}: listing its changed tools failed: {error}",
                    server=self.name,
                    error=failure.getErrorMessage(),
                )

        self._refresh = Deferred.fromCoroutine(refresh())
        self._refresh.addErrback(failed)

    async def _callTool(
        self, tool: str, arguments: Mapping[str, Any], timeout: float, readyTimeout: float
    ) -> str:
        await self.whenReady(readyTimeout)
        connection = self._connection
        if connection is None:
            raise McpError(self._unavailable())
        result = await connection.request(
            "tools/call", {"name": tool, "arguments": dict(arguments)}, timeout
        )
        return formatToolResult(self.name, tool, result)


def _observe(d: Deferred[Any]) -> Deferred[None]:
    """
    A new Deferred that fires when C{d} does (its cancellation leaves C{d}
    alone).
    """
    observer: Deferred[None] = Deferred(canceller=lambda _: None)

    def done(result: Any) -> Any:
        if not observer.called:
            observer.callback(None)
        return result

    d.addBoth(done)
    return observer


class McpManager(Service):
    """
    The configured MCP servers, each started at most once and shared.

    As a service it starts the servers agents use when it starts, and stops
    every server when it stops; used without starting it, a server starts on
    first use, and L{stopAll} stops them.
    """

    def __init__(
        self,
        configs: Mapping[str, McpServerConfig],
        reactor: Any,
        http: HTTPClient | None = None,
        environ: Mapping[str, str] | None = None,
        used: Iterable[str] = (),
        **serverOptions: Any,
    ) -> None:
        """
        @param configs: the configuration's C{mcpServers}.
        @param http: the client HTTP servers are reached with.
        @param environ: the environment stdio servers inherit from.
        @param used: the servers to start with the service.
        @param serverOptions: passed to every L{McpServer} (timeouts,
            backoff).
        """
        self.configs = dict(configs)
        self.reactor = reactor
        self.http = http
        self.environ = dict(environ or {})
        self.used = tuple(used)
        self.serverOptions = serverOptions
        self.servers: dict[str, McpServer] = {}

    def server(self, name: str) -> McpServer:
        """
        The server called C{name}.

        @raise McpError: no such server is configured.
        """
        server = self.servers.get(name)
        if server is None:
            config = self.configs.get(name)
            if config is None:
                known = ", ".join(sorted(self.configs)) or "none"
                raise McpError(f"no MCP server named {name!r} is configured (configured: {known})")
            server = McpServer(config, self.reactor, self.http, self.environ, **self.serverOptions)
            self.servers[name] = server
        return server

    def startService(self) -> None:
        """
        Start the servers agents use.
        """
        Service.startService(self)
        for name in self.used:
            if name in self.configs:
                self.server(name).start()

    def stopService(self) -> Deferred[None]:
        """
        Stop every server.
        """
        Service.stopService(self)
        return self.stopAll()

    def stopAll(self) -> Deferred[None]:
        """
        Stop every server that was created; fire when all are stopped.
        """
        stops = [server.stop() for server in self.servers.values()]
        return DeferredList(stops, consumeErrors=True).addCallback(lambda _: None)


__all__ = [
    "CLIENT_INFO",
    "DEFAULT_BACKOFF",
    "McpManager",
    "McpServer",
    "McpTool",
    "PROTOCOL_VERSION",
    "formatToolResult",
]
