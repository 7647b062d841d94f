# -*- test-case-name: tests.test_mcp -*-
"""
The MCP Streamable HTTP transport: every message is a C{POST} to the
server's URL; the answer comes back in that response, as one JSON body or as
a stream of server-sent events.  The server names the session in an
C{Mcp-Session-Id} header of its C{initialize} response, and every later
request carries it; a C{404} for a known session means the server forgot
it, and the client must start over.

Cancelling an exchange closes its HTTP connection, whether the response
headers have arrived or not.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Mapping, cast

import attrs
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from ai_agent.observe import injectTraceContext
from ai_agent.providers._wire import WireAgent
from ai_agent.sse import SSEError, SSEParser
from ai_agent.tools._jsonrpc import McpError

log = Logger()

MAX_JSON_BYTES = 32 * 1024 * 1024
"""
The largest JSON response body accepted.
"""


class _TooLargeError(Exception):
    pass


class _SessionLostError(McpError):
    """
    The server answered 404 to our session.
    """


class _BodyReader(Protocol):
    """
    Feeds a response body to C{onData}; L{done} fires at its end.
    Cancelling L{done} closes the connection.
    """

    def __init__(self, onData: Callable[[bytes], None]) -> None:
        self.onData = onData
        self.done: Deferred[None] = Deferred(canceller=self._cancel)

    def _cancel(self, d: Deferred[None]) -> None:
        if self.transport is not None:
            cast(Any, self.transport).stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        try:
            self.onData(data)
        except Exception:
            failure = Failure()
            cast(Any, self.transport).stopProducing()
            self.done.errback(failure)

    def connectionLost(self, reason: Failure = ResponseDone()) -> None:  # type: ignore[assignment]
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)


def _read(response: Any, onData: Callable[[bytes], None]) -> Deferred[None]:
    reader = _BodyReader(onData)
    response.deliverBody(reader)
    return reader.done


def _discard(response: Any) -> Deferred[None]:
    return _read(response, lambda data: None)


async def _readAll(response: Any, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = [0]

    def collect(data: bytes) -> None:
        size[0] += len(data)
        if size[0] > limit:
            raise _TooLargeError()
        chunks.append(data)

    await _read(response, collect)
    return b"".join(chunks)


def describeHttpFailure(error: BaseException) -> str:
    """
    A few words on why an HTTP exchange failed, without the URL or headers.
    """
    reasons = getattr(error, "reasons", None)
    if reasons:
        first = reasons[0]
        error = first.value if isinstance(first, Failure) else first
    name = type(error).__name__
    if "ConnectionRefused" in name:
        return "connection refused"
    if "DNSLookup" in name:
        return "the host name could not be resolved"
    if "Timeout" in name or "TimedOut" in name:
        return "timed out"
    if isinstance(error, CancelledError):
        return "cancelled"
    if "ConnectionLost" in name or "ConnectionDone" in name or "ResponseFailed" in name:
        return "the connection was closed"
    return name


def _isCancellation(error: BaseException) -> bool:
    reasons = getattr(error, "reasons", None) or ()
    return isinstance(error, CancelledError) or any(
        isinstance(reason, Failure) and reason.check(CancelledError) for reason in reasons
    )


_PLAIN_URL = re.compile(r"[\x21-\x7e]+")


def _postJson(
    http: HTTPClient, url: str, body: bytes, headers: Mapping[bytes | str, bytes | str]
) -> Deferred[Any]:
    """
    POST C{body}, the response unbuffered.  With the speed layer's client
    (whose agent is a L{WireAgent}) and a plain ASCII URL, straight through
    that agent, headers as bytes, as the providers post: treq's per-request
    layers (URL parsing with hyperlink, a C{Headers} object, the cookie jar,
    the redirect agent, which never followed a redirected POST here anyway)
    were about a third of a call's CPU (758 -> 480 us per call measured
    against the bench's MCP server) and a JSON-RPC exchange needs none of
    them.  Otherwise (stock Twisted, an unusual URL) through treq.
    """
    agent = getattr(http, "agent", None)
    if isinstance(agent, WireAgent) and _PLAIN_URL.fullmatch(url) is not None:
        pairs = [
            (
                name if isinstance(name, bytes) else name.encode("iso-8859-1"),
                value if isinstance(value, bytes) else value.encode("utf-8"),
            )
            for name, value in headers.items()
        ]
        return agent.post(url.encode("ascii"), pairs, body)
    return cast(
        Deferred[Any],
        http.request("POST", url, data=body, headers=dict(headers), unbuffered=True),
    )


def _header(response: Any, name: bytes) -> str | None:
    values = response.headers.getRawHeaders(name)
    if not values:
        return None
    value = values[0]
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


@attrs.define(eq=False)
class HttpTransport:
    """
    One Streamable HTTP session with an MCP server.

    @ivar onMessage: receives every decoded message (or batch).
    @ivar onSessionLost: called when the server no longer knows the session.
    @ivar headers: configured headers (may hold secrets: never logged).
    @ivar sessionId: the server's C{Mcp-Session-Id}, once it gave one.
    @ivar protocolVersion: the negotiated version, sent as
        C{MCP-Protocol-Version} once known.
    """

    server: str
    url: str
    http: HTTPClient
    reactor: IReactorTime
    onMessage: Callable[[Any], None]
    onSessionLost: Callable[[str], None] = lambda reason: None
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    sessionId: str | None = attrs.field(default=None, repr=False)
    protocolVersion: str | None = None

    def sendMessage(self, message: Mapping[str, Any]) -> Deferred[bool]:
        """
        C{POST} one message and deliver what the response carries.

        @return: fires with C{True} for a request (its answer, if any, has
            been delivered), C{False} otherwise.
        """
        exchange = Deferred.fromCoroutine(self._post(message))
        # Reported once the exchange is over, not from inside it: the owner
        # then drops this connection, cancelling its exchanges.
        exchange.addErrback(self._sessionLost)
        return exchange

    def _sessionLost(self, failure: Failure) -> Failure:
        if failure.check(_SessionLostError):
            self.onSessionLost(f"MCP server {self.server!r} forgot our session (HTTP 404)")
        return failure

    def close(self) -> Deferred[None]:
        """
        End the session with a C{DELETE} (best effort, two seconds at most).
        """
        if self.sessionId is None:
            return succeed(None)
        headers = self._headers()
        self.sessionId = None

        async def delete() -> None:
            response = await self.http.request("DELETE", self.url, headers=headers, unbuffered=True)
            await _discard(response)

        d = Deferred.fromCoroutine(delete())
        d.addTimeout(2.0, self.reactor)
        d.addErrback(lambda failure: None)
        return d

    def _headers(self) -> dict[bytes | str, bytes | str]:
        headers: dict[bytes | str, bytes | str] = {}
        headers.update(self.headers)
        headers["Content-Type"] = "application/json"
        headers["Accept"] = "application/json, text/event-stream"
        if self.sessionId is not None:
            headers["Mcp-Session-Id"] = self.sessionId
        if self.protocolVersion is not None:
            headers["MCP-Protocol-Version"] = self.protocolVersion
        traceContext: dict[str, str] = {}
        injectTraceContext(traceContext)
        headers.update(traceContext)
        return headers

    async def _post(self, message: Mapping[str, Any]) -> bool:
        isRequest = "method" in message and "id" in message
        method = message.get("method")
        body = json.dumps(message, ensure_ascii=False).encode("utf-8")
        try:
            response = await _postJson(self.http, self.url, body, self._headers())
        except CancelledError:
            raise
        except Exception as error:
            if _isCancellation(error):
                # treq reports a request cancelled before its response
                # headers as ResponseNeverReceived([CancelledError]).
                raise CancelledError() from None
            raise McpError(f"MCP server {self.server!r}: {describeHttpFailure(error)}") from None
        sessionId = _header(response, b"mcp-session-id")
        if sessionId and method == "initialize":
            self.sessionId = sessionId
        code = response.code
        contentType = (_header(response, b"content-type") or "").split(";")[0].strip().lower()
        if code == 404 and self.sessionId is not None and method != "initialize":
            await _discard(response)
            self.sessionId = None
            raise _SessionLostError(f"MCP server {self.server!r} forgot the session; reconnecting")
        if not 200 <= code < 300:
            raise McpError(await self._statusError(response, code, contentType))
        if code == 202 or not isRequest and contentType not in ("application/json",):
            await _discard(response)
        elif contentType == "text/event-stream":
            await self._readEvents(response)
        elif contentType == "application/json":
            await self._readJson(response)
        else:
            await _discard(response)
            if isRequest:
                raise McpError(
                    f"MCP server {self.server!r} answered with an unexpected content type"
                    f" {contentType or '(none)'}"
                )
        return isRequest

    async def _statusError(self, response: Any, code: int, contentType: str) -> str:
        text = f"MCP server {self.server!r} answered HTTP {code}"
        try:
            raw = await _readAll(response, 64 * 1024)
        except _TooLargeError:
            return text
        if contentType == "application/json":
            try:
                parsed = json.loads(raw)
            except ValueError:
                return text
            error = parsed.get("error") if isinstance(parsed, dict) else None
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                return f"{text}: {error['message'][:300]}"
        return text

    async def _readJson(self, response: Any) -> None:
        try:
            raw = await _readAll(response, MAX_JSON_BYTES)
        except _TooLargeError:
            raise McpError(
                f"MCP server {self.server!r} sent a response larger than {MAX_JSON_BYTES} bytes"
            ) from None
        if not raw.strip():
            return
        try:
            message = json.loads(raw)
        except ValueError:
            raise McpError(f"MCP server {self.server!r} sent a body that is not JSON") from None
        self.onMessage(message)

    async def _readEvents(self, response: Any) -> None:
        parser = SSEParser(maxBuffer=MAX_JSON_BYTES)

        def feed(data: bytes) -> None:
            for event in parser.feed(data):
                if event.event != "message" or not event.data.strip():
                    continue
                try:
                    message = json.loads(event.data)
                except ValueError:
                    log.warn(
                        "MCP server {server} sent an event that is not JSON", server=self.server
                    )
                    continue
                self.onMessage(message)

        try:
            await _read(response, feed)
            parser.close()
        except SSEError as error:
            raise McpError(
                f"MCP server {self.server!r} sent a broken event stream: {error}"
            ) from None


__all__ = ["HttpTransport", "describeHttpFailure"]
