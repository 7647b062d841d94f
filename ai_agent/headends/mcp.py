# -*- test-case-name: tests.test_mcp_headend -*-
"""
The MCP headend: every served agent as an MCP tool, over Streamable HTTP at
C{/mcp} (L{McpHeadend}, mounted on every port) and over stdio
(L{McpStdioProtocol}, C{ai-agent --agent ... --mcp stdio}).

What the messages mean is L{ai_agent.headends._mcpcore}'s; this module
carries them.  On HTTP:

  - The handshake versions (2025-06-18, 2025-11-25): C{initialize} makes a
    session (C{Mcp-Session-Id}, kept in this process's memory: behind a load
    balancer a session's requests must reach the same process), required on
    every later request (missing: 400; unknown or another key's: 404);
    notifications and responses are answered 202; C{GET} opens the
    session's stream of server messages (C{notifications/tools/list_changed}
    after a reload); C{DELETE} ends the session and its calls.
  - The 2026-07-28 mode (a request whose C{MCP-Protocol-Version} is
    2026-07-28): no session; C{Mcp-Method} and C{Mcp-Name} must match the
    body (-32020); C{server/discover} answers.
  - A C{tools/call} from a client that accepts C{text/event-stream} is
    answered as SSE at once (its progress, then its result), so that the
    response's head never waits for the run; else as JSON when it ends.
    A closed connection, C{notifications/cancelled} or C{DELETE} cancel the
    run.
  - An C{Origin} the server does not allow (C{--cors-origin}) is a 403; on
    a loopback bind, a C{Host} other than a loopback name is a 403 (DNS
    rebinding).  Keys, body sizes and content types are the guard's, as on
    every route.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, ClassVar

import attrs
from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from ai_agent.errors import AgentError, ErrorKind
from ai_agent.headends._answers import (
    configuredRedactor,
    unknownEndpoint,
    writeError,
    wrongMethod,
)
from ai_agent.headends._bodies import BodyGate
from ai_agent.headends._http import GuardedRequest, principalOf
from ai_agent.headends._mcpcore import (
    HANDSHAKE_VERSIONS,
    HEADER_MISMATCH,
    HEARTBEAT_INTERVAL,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    META_VERSION,
    METHOD_NOT_FOUND,
    MODERN_VERSION,
    SUPPORTED_VERSIONS,
    UNSUPPORTED_VERSION,
    McpCore,
    Message,
    ProtocolError,
    errorMessage,
    notification,
    parseMessage,
    resultMessage,
)
from ai_agent.headends._request import OFF_REACTOR_THRESHOLD
from ai_agent.headends._sse import SSEStream
from ai_agent.limits import MAX_RUN_ANSWER
from ai_agent.observe import NULL_OBSERVER, Observer, observedRoute, requestScope
from ai_agent.pool import RunPool
from ai_agent.principals import IMPLICIT, Principal
from ai_agent.reactors import IReactorTimeAndThreads
from ai_agent.redaction import Redactor
from ai_agent.registry import AgentRegistry

SESSION_HEADER = b"mcp-session-id"
VERSION_HEADER = b"mcp-protocol-version"
METHOD_HEADER = b"mcp-method"
NAME_HEADER = b"mcp-name"

_JSON = b"application/json"

#: Seconds a handshake-era session may go unused (no request, no open
#: stream, no running call) before it is forgotten (as the MCP SDK's server).
SESSION_IDLE = 30 * 60.0

#: The most sessions kept at once; past it the least recently used idle one
#: is forgotten, and with none idle C{initialize} is refused (503).
MAX_SESSIONS = 10_000

#: Host names a loopback-bound server answers to.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})

#: The MCP error code of each HTTP status the guard refuses with.
_ERROR_CODES = {ErrorKind.SERVER: INTERNAL_ERROR}


@attrs.frozen
class McpErrors:
    """
    The errors of C{/mcp} that are not JSON-RPC answers (a missing key, a
    body too large, an unknown path): the HTTP status, and a JSON-RPC error
    without an id as the body (an L{ai_agent.errors.ErrorFormat}).
    """

    def envelope(self, error: AgentError) -> dict[str, Any]:
        code = _ERROR_CODES.get(error.kind, INVALID_REQUEST)
        return {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": error.message}}

    def status(self, error: AgentError) -> int:
        return error.status

    def body(self, error: AgentError) -> bytes:
        return _dumps(self.envelope(error))


#: The error format of C{/mcp}.
MCP_ERRORS = McpErrors()


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sseFrame(message: dict[str, Any]) -> bytes:
    """
    One JSON-RPC message as an SSE C{message} event.
    """
    return b"event: message\ndata: " + _dumps(message) + b"\n\n"


def _forbidden(message: str) -> AgentError:
    return AgentError(message, 403, ErrorKind.PERMISSION, "forbidden")


@attrs.define(eq=False)
class _Session:
    """
    One handshake-era session: whose it is, its version, its open GET
    streams and its running calls (by request id).
    """

    id: str
    owner: str
    version: str
    streams: list[SSEStream] = attrs.field(factory=list)
    waiters: list[Deferred[None]] = attrs.field(factory=list)
    calls: dict[Any, Deferred[Any]] = attrs.field(factory=dict)
    cancelled: set[Any] = attrs.field(factory=set)
    lastUsed: float = 0.0

    @property
    def busy(self) -> bool:
        """
        Whether a call runs or a stream is open on this session.
        """
        return bool(self.calls or self.streams)

    def notify(self, message: dict[str, Any]) -> None:
        for stream in list(self.streams):
            stream.send(sseFrame(message))

    def cancel(self, requestId: Any) -> None:
        call = self.calls.get(requestId)
        if call is not None:
            self.cancelled.add(requestId)
            call.cancel()

    def close(self) -> None:
        for requestId in list(self.calls):
            self.cancel(requestId)
        for stream in list(self.streams):
            stream.end()
        self.streams.clear()
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)


def idleSessions(sessions: dict[str, _Session], now: float, idle: float) -> list[str]:
    """
    The ids of the sessions not busy and unused for more than C{idle}
    seconds at C{now}, least recently used first.
    """
    quiet = [s for s in sessions.values() if not s.busy and now - s.lastUsed > idle]
    return [s.id for s in sorted(quiet, key=lambda s: s.lastUsed)]


def _reloaded(headend: McpHeadend, attribute: Any, registry: AgentRegistry) -> AgentRegistry:
    # A reload swaps the registry: the listening sessions are told.
    sessions = getattr(headend, "sessions", None)
    if sessions:
        message = notification("notifications/tools/list_changed", {})
        for session in sessions.values():
            session.notify(message)
    return registry


@attrs.define(slots=False)
class McpHeadend:
    """
    Klein routes for MCP's Streamable HTTP at C{/mcp}; reloadable like the
    other headends (C{registry} and C{runner} are swapped on SIGHUP, and
    sessions listening on a GET stream get
    C{notifications/tools/list_changed}).

    @ivar heartbeat: seconds between progress notifications while a run
        says nothing (L{HEARTBEAT_INTERVAL}).
    """

    log: ClassVar[Logger] = Logger()
    app: ClassVar[Klein] = Klein()

    registry: AgentRegistry = attrs.field(on_setattr=_reloaded)
    runner: Any
    pool: RunPool
    reactor: IReactorTimeAndThreads
    observer: Observer = NULL_OBSERVER
    heartbeat: float = HEARTBEAT_INTERVAL
    redactor: Redactor | None = None
    maxAnswer: int = MAX_RUN_ANSWER
    sessions: dict[str, _Session] = attrs.field(factory=dict)
    sessionIdle: float = SESSION_IDLE
    maxSessions: int = MAX_SESSIONS
    bodyGate: BodyGate | None = None

    def _redactor(self) -> Redactor:
        if self.redactor is None:
            self.redactor = configuredRedactor(self.runner)
        return self.redactor

    def core(self) -> McpCore:
        """
        The protocol over the current agents.
        """
        return McpCore(
            self.registry,
            self.runner,
            self.pool,
            self.reactor,
            self.heartbeat,
            self.maxAnswer,
            redactor=self._redactor(),
        )

    # -- errors ---------------------------------------------------------

    @app.handle_errors(AgentError)
    def _agentError(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, AgentError)
        return writeError(request, error, MCP_ERRORS, self._redactor())

    @app.handle_errors(NotFound)
    def _notFound(self, request: IRequest, failure: Failure) -> bytes:
        return writeError(request, unknownEndpoint(request), MCP_ERRORS, self._redactor())

    @app.handle_errors(MethodNotAllowed)
    def _badMethod(self, request: IRequest, failure: Failure) -> bytes:
        return writeError(request, wrongMethod(request, failure), MCP_ERRORS, self._redactor())

    def _answer(
        self, request: IRequest, message: dict[str, Any] | None, status: int = 200
    ) -> bytes:
        request.setResponseCode(status)
        if message is None:
            return b""
        body = _dumps(message)
        request.setHeader(b"content-type", _JSON)
        request.setHeader(b"content-length", b"%d" % len(body))
        return body

    def _protocolError(self, request: IRequest, requestId: Any, error: ProtocolError) -> bytes:
        return self._answer(request, errorMessage(requestId, error), error.status)

    # -- security -------------------------------------------------------

    def _screen(self, request: IRequest) -> None:
        """
        Refuse a browser page's request from an origin not allowed, and a
        request to a loopback-bound server naming another host.

        @raise AgentError: a 403.
        """
        origin = request.getHeader(b"origin")
        if origin is not None and isinstance(request, GuardedRequest):
            if request.policy.allowsOrigin(origin) is None:
                raise _forbidden(
                    "Forbidden: requests from this Origin are not allowed"
                    " (allow it with --cors-origin)"
                )
        host = request.getHost()
        bound = getattr(host, "host", None)
        if isinstance(bound, str) and _isLoopback(bound):
            name = _hostName(request.getHeader(b"host") or b"")
            if name not in LOOPBACK_NAMES and name != bound:
                raise _forbidden(
                    "Forbidden: this server listens on a loopback address and answers"
                    " only to localhost, 127.0.0.1 or [::1] in the Host header"
                )

    # -- routes ---------------------------------------------------------

    @app.route("/mcp", methods=["POST"])
    @observedRoute("mcp", "/mcp")
    async def post(self, request: IRequest) -> bytes | None:
        """
        One JSON-RPC message: a request answered as JSON or SSE, a
        notification or response answered 202.
        """
        self._screen(request)
        try:
            message = await self._parseMessage(request)
        except ProtocolError as error:
            return self._protocolError(request, None, error)
        version = _header(request, VERSION_HEADER)
        if version == MODERN_VERSION:
            return await self._modern(request, message)
        if version is not None and version not in HANDSHAKE_VERSIONS:
            return self._protocolError(request, message.id, _unsupported(version))
        return await self._handshake(request, message)

    async def _parseMessage(self, request: IRequest) -> Message:
        """
        The request's JSON-RPC message (L{parseMessage}): a small body
        parsed here, a large one read and parsed in a thread, one at a
        time (the L{BodyGate}), as the other APIs' bodies.
        """
        content = request.content
        content.seek(0, 2)
        size = content.tell()
        content.seek(0)
        if size < OFF_REACTOR_THRESHOLD:
            return parseMessage(content.read())
        if self.bodyGate is None:
            self.bodyGate = BodyGate(self.reactor, self.reactor.getThreadPool())
        return await self.bodyGate.parse(content, parseMessage)

    async def _handshake(self, request: IRequest, message: Message) -> bytes | None:
        principal = principalOf(request)
        if message.method == "initialize" and message.isRequest:
            version, result = self.core().initialize(message.params)
            self._makeRoom()
            session = _Session(secrets.token_urlsafe(24), principal.name, version)
            session.lastUsed = self.reactor.seconds()
            self.sessions[session.id] = session
            request.setHeader(SESSION_HEADER, session.id.encode("ascii"))
            return self._answer(request, resultMessage(message.id, result))
        if message.method == "server/discover" and message.isRequest:
            return self._answer(request, resultMessage(message.id, self.core().discover()))
        session = self._session(request, principal)
        if not message.isRequest:
            if message.method == "notifications/cancelled":
                session.cancel(message.params.get("requestId"))
            return self._answer(request, None, 202)
        if message.method == "ping":
            return self._answer(request, resultMessage(message.id, {}))
        return await self._request(request, message, principal, session)

    async def _modern(self, request: IRequest, message: Message) -> bytes | None:
        principal = principalOf(request)
        if not message.isRequest:
            # Cancellation is closing the request's stream in this mode.
            return self._answer(request, None, 202)
        method = _header(request, METHOD_HEADER)
        if method != message.method:
            return self._protocolError(
                request,
                message.id,
                ProtocolError(
                    HEADER_MISMATCH,
                    f"Header mismatch: Mcp-Method is {method!r}, the body's method"
                    f" {message.method!r}",
                ),
            )
        if message.method == "tools/call":
            name = _header(request, NAME_HEADER)
            if name != message.params.get("name"):
                return self._protocolError(
                    request,
                    message.id,
                    ProtocolError(
                        HEADER_MISMATCH,
                        "Header mismatch: Mcp-Name must equal params.name",
                    ),
                )
        meta = message.params.get("_meta")
        metaVersion = meta.get(META_VERSION) if isinstance(meta, dict) else None
        if metaVersion is not None and metaVersion != MODERN_VERSION:
            return self._protocolError(
                request,
                message.id,
                ProtocolError(
                    HEADER_MISMATCH,
                    "Header mismatch: MCP-Protocol-Version differs from _meta's protocolVersion",
                ),
            )
        if message.method in ("initialize", "ping"):
            return self._protocolError(
                request,
                message.id,
                ProtocolError(
                    METHOD_NOT_FOUND,
                    f"Method not found: {message.method} is not part of {MODERN_VERSION}",
                    404,
                ),
            )
        if message.method == "server/discover":
            return self._answer(request, resultMessage(message.id, self.core().discover()))
        return await self._request(request, message, principal, None)

    async def _request(
        self,
        request: IRequest,
        message: Message,
        principal: Principal,
        session: _Session | None,
    ) -> bytes | None:
        modern = session is None
        core = self.core()
        try:
            if message.method == "tools/list":
                return self._answer(
                    request, resultMessage(message.id, core.listTools(principal, modern))
                )
            if message.method == "tools/call":
                return await self._call(request, core, message, principal, session)
            raise ProtocolError(
                METHOD_NOT_FOUND,
                f"Method not found: {message.method}",
                404 if modern else 200,
            )
        except ProtocolError as error:
            if not modern and error.code in (METHOD_NOT_FOUND, INVALID_PARAMS):
                # A handshake-era client reads a 404 as a lost session.
                error.status = 200
            return self._protocolError(request, message.id, error)

    async def _call(
        self,
        request: IRequest,
        core: McpCore,
        message: Message,
        principal: Principal,
        session: _Session | None,
    ) -> bytes | None:
        """
        A C{tools/call}: SSE from the start when the client takes it (its
        progress notifications, then its result), else JSON at the end.
        """
        agent = core.findTool(principal, message.params)
        requestScope(request).setAgent(agent.id)
        stream: SSEStream | None = None
        if b"text/event-stream" in (request.getHeader(b"accept") or b""):
            assert isinstance(request, GuardedRequest)
            stream = SSEStream(request)
            stream.start()

        def send(note: dict[str, Any]) -> None:
            if stream is not None:
                stream.send(sseFrame(note))

        requestId = "mcp_" + secrets.token_hex(12)
        call = ensureDeferred(core.callTool(principal, message.params, send, requestId))
        if session is not None:
            session.calls[message.id] = call
        try:
            result = await call
        except CancelledError:
            if session is None or message.id not in session.cancelled:
                if stream is not None:
                    stream.end()
                raise
            # Cancelled by the client's notification: no response is due.
            session.cancelled.discard(message.id)
            if stream is not None:
                stream.end()
                return None
            return self._answer(request, None, 202)
        finally:
            if session is not None:
                session.calls.pop(message.id, None)
                session.lastUsed = self.reactor.seconds()
        if session is None:
            result["resultType"] = "complete"
        answer = resultMessage(message.id, result)
        if stream is None:
            return self._answer(request, answer)
        stream.send(sseFrame(answer))
        stream.end()
        return None

    @app.route("/mcp", methods=["GET"])
    @observedRoute("mcp", "/mcp")
    async def listen(self, request: IRequest) -> bytes | None:
        """
        A session's stream of server messages (handshake versions only).
        """
        self._screen(request)
        if _header(request, VERSION_HEADER) == MODERN_VERSION:
            return self._methodNotAllowed(request)
        if b"text/event-stream" not in (request.getHeader(b"accept") or b""):
            return self._protocolError(
                request,
                None,
                ProtocolError(INVALID_REQUEST, "Bad Request: GET needs Accept: text/event-stream"),
            )
        session = self._session(request, principalOf(request))
        assert isinstance(request, GuardedRequest)
        stream = SSEStream(request)
        stream.start()
        session.streams.append(stream)
        done: Deferred[None] = Deferred(lambda d: None)
        session.waiters.append(done)
        try:
            await done
        finally:
            if stream in session.streams:
                session.streams.remove(stream)
            if done in session.waiters:
                session.waiters.remove(done)
            stream.end()
        return None

    @app.route("/mcp", methods=["DELETE"])
    @observedRoute("mcp", "/mcp")
    async def delete(self, request: IRequest) -> bytes | None:
        """
        End a session: its calls are cancelled and its streams closed.
        """
        self._screen(request)
        if _header(request, VERSION_HEADER) == MODERN_VERSION:
            return self._methodNotAllowed(request)
        session = self._session(request, principalOf(request))
        del self.sessions[session.id]
        session.close()
        return self._answer(request, None, 204)

    def _methodNotAllowed(self, request: IRequest) -> bytes:
        request.setHeader(b"allow", b"POST")
        return self._protocolError(
            request,
            None,
            ProtocolError(
                INVALID_REQUEST, f"Method not allowed: {MODERN_VERSION} has no sessions", 405
            ),
        )

    def _makeRoom(self) -> None:
        """
        Forget the sessions idle too long, and, at L{maxSessions}, the
        least recently used idle one.

        @raise AgentError: a 503 when every kept session is busy.
        """
        now = self.reactor.seconds()
        for sessionId in idleSessions(self.sessions, now, self.sessionIdle):
            del self.sessions[sessionId]
        if len(self.sessions) < self.maxSessions:
            return
        quiet = idleSessions(self.sessions, now, -1.0)
        if not quiet:
            raise AgentError(
                "too many MCP sessions are in use; retry later",
                503,
                ErrorKind.OVERLOADED,
                "too_many_sessions",
                retryAfter=5.0,
            )
        del self.sessions[quiet[0]]

    def _session(self, request: IRequest, principal: Principal) -> _Session:
        """
        The request's session.

        @raise AgentError: 400 without C{Mcp-Session-Id}; 404 for an
            unknown one, or one another key made.
        """
        sessionId = _header(request, SESSION_HEADER)
        if sessionId is None:
            raise AgentError(
                "Bad Request: Mcp-Session-Id is required (send initialize first)",
                400,
                ErrorKind.INVALID_REQUEST,
                "missing_session",
            )
        session = self.sessions.get(sessionId)
        if session is None or session.owner != principal.name:
            raise AgentError(
                "Session not found: initialize again", 404, ErrorKind.NOT_FOUND, "unknown_session"
            )
        session.lastUsed = self.reactor.seconds()
        return session


def _header(request: IRequest, name: bytes) -> str | None:
    value = request.getHeader(name)
    return None if value is None else value.decode("latin-1").strip()


def _unsupported(version: str) -> ProtocolError:
    return ProtocolError(
        UNSUPPORTED_VERSION,
        f"Unsupported protocol version: {version!r}",
        data={"supported": list(SUPPORTED_VERSIONS), "requested": version},
    )


def _isLoopback(address: str) -> bool:
    return address.startswith("127.") or address in ("::1", "localhost")


def _hostName(host: bytes) -> str:
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text.split("]", 1)[0] + "]"
    return text.rsplit(":", 1)[0] if ":" in text else text


# -- stdio ----------------------------------------------------------------


class McpStdioProtocol(LineOnlyReceiver):
    """
    MCP over stdio: one JSON-RPC message per line in, one per line out
    (nothing else is written).  C{tools/call}s run concurrently; a
    C{notifications/cancelled} cancels one, and the end of the input
    cancels them all and fires L{done}.
    """

    delimiter = b"\n"
    log = Logger()

    def __init__(
        self,
        core: McpCore,
        principal: Principal = IMPLICIT,
        maxLength: int = 8 * 1024 * 1024,
    ) -> None:
        self.core = core
        self.principal = principal
        self.MAX_LENGTH = maxLength
        self.calls: dict[Any, Deferred[Any]] = {}
        self.done: Deferred[None] = Deferred()
        self.modern = False

    def lineReceived(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            message = parseMessage(line)
        except ProtocolError as error:
            self.write(errorMessage(None, error))
            return
        if not message.isRequest:
            if message.method == "notifications/cancelled":
                call = self.calls.get(message.params.get("requestId"))
                if call is not None:
                    call.cancel()
            return
        if message.method == "initialize":
            _, result = self.core.initialize(message.params)
            self.write(resultMessage(message.id, result))
            return
        if message.method == "ping":
            self.write(resultMessage(message.id, {}))
            return
        meta = message.params.get("_meta")
        modern = isinstance(meta, dict) and meta.get(META_VERSION) == MODERN_VERSION
        if message.method == "server/discover":
            self.write(resultMessage(message.id, self.core.discover()))
            return
        self._handle(message, modern)

    def _handle(self, message: Message, modern: bool) -> None:
        async def answer() -> dict[str, Any]:
            if message.method == "tools/list":
                return self.core.listTools(self.principal, modern)
            if message.method == "tools/call":
                result = await self.core.callTool(self.principal, message.params, self.write)
                if modern:
                    result["resultType"] = "complete"
                return result
            raise ProtocolError(METHOD_NOT_FOUND, f"Method not found: {message.method}")

        call = ensureDeferred(answer())
        self.calls[message.id] = call

        def answered(result: dict[str, Any]) -> None:
            self.write(resultMessage(message.id, result))

        def failed(failure: Failure) -> None:
            if failure.check(CancelledError):
                return
            if failure.check(ProtocolError):
                error = failure.value
                assert isinstance(error, ProtocolError)
                self.write(errorMessage(message.id, error))
                return
            self.log.failure("MCP call {id!r} failed", failure, id=message.id)
            self.write(errorMessage(message.id, ProtocolError(INTERNAL_ERROR, "Internal error")))

        call.addCallbacks(answered, failed)
        call.addBoth(lambda _: self.calls.pop(message.id, None))

    def write(self, message: dict[str, Any]) -> None:
        if self.transport is not None and not self.done.called:
            self.transport.write(_dumps(message) + b"\n")

    def lineLengthExceeded(self, line: bytes) -> None:
        self.write(
            errorMessage(
                None,
                ProtocolError(
                    INVALID_REQUEST, f"Invalid Request: a message over {self.MAX_LENGTH} bytes"
                ),
            )
        )

    def connectionLost(self, reason: Failure | None = None) -> None:
        for call in list(self.calls.values()):
            call.cancel()
        if not self.done.called:
            self.done.callback(None)


__all__ = [
    "MCP_ERRORS",
    "McpErrors",
    "McpHeadend",
    "McpStdioProtocol",
    "sseFrame",
]
