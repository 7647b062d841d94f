# -*- test-case-name: tests.test_mcp -*-
"""
JSON-RPC 2.0 as MCP uses it, independent of the transport.

A L{JsonRpcConnection} numbers its requests, matches responses to them,
times every request out, and forgets a request whose Deferred is cancelled
(telling the server with C{notifications/cancelled}).  Requests from the
server are answered: C{ping} with an empty result, anything else with a
C{-32601} error.  Notifications from the server are handed to a callback and
otherwise ignored.

A transport (L{MessageSender}) delivers outgoing messages and feeds
incoming ones to L{JsonRpcConnection.messageReceived}.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping, Protocol

import attrs
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ai_agent.errors import AgentError

log = Logger()

METHOD_NOT_FOUND = -32601

SEND_TIMEOUT = 30.0
"""
Seconds allowed to deliver a notification or a reply to the server.
"""


class McpError(AgentError):
    """
    An MCP server could not be used, or a request to it failed.  The message
    is written for the model (it becomes a tool result) and for logs: it
    names the server, never a configured value.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, 502, "server_error", "mcp_error")


class JsonRpcError(McpError):
    """
    The server answered a request with a JSON-RPC error.

    @ivar rpcCode: the JSON-RPC error code.
    @ivar rpcMessage: the error's message as the server wrote it.
    """

    rpcCode: int
    rpcMessage: str

    def __init__(self, server: str, method: str, code: int, message: str) -> None:
        super().__init__(f"MCP server {server!r} answered {method} with error {code}: {message}")
        self.rpcCode = code
        self.rpcMessage = message


class MessageSender(Protocol):
    """
    The sending half of a transport.
    """

    def sendMessage(self, message: Mapping[str, Any]) -> Deferred[bool]:
        """
        Send one JSON-RPC message.

        @return: a Deferred that fires when the exchange that carries the
            message is over, with C{True} if every message answering it has
            been delivered by then (an HTTP response), or C{False} if answers
            may come later (a pipe).  Cancelling it abandons the exchange.
            It fails with L{McpError} when the message could not be sent.
        """
        ...


def _describe(failure: Failure) -> str:
    if isinstance(failure.value, AgentError):
        return failure.value.message
    return failure.getErrorMessage() or type(failure.value).__name__


@attrs.define(eq=False)
class JsonRpcConnection:
    """
    One JSON-RPC conversation with an MCP server.

    @ivar server: the server's configured name (for messages).
    @ivar transport: where outgoing messages go; set before the first
        request.
    @ivar onNotification: called with the method and params of every
        notification the server sends.
    """

    server: str
    reactor: IReactorTime
    transport: MessageSender | None = None
    onNotification: Callable[[str, Mapping[str, Any]], None] = lambda method, params: None
    _nextId: int = attrs.field(default=1, init=False)
    _pending: dict[int, tuple[str, Deferred[Any]]] = attrs.field(factory=dict, init=False)
    _requestExchanges: dict[int, Deferred[bool]] = attrs.field(factory=dict, init=False)
    _exchanges: set[Deferred[bool]] = attrs.field(factory=set, init=False)
    _closed: str | None = attrs.field(default=None, init=False)

    @property
    def pending(self) -> int:
        """
        How many requests wait for their answer.
        """
        return len(self._pending)

    def request(
        self, method: str, params: Mapping[str, Any] | None = None, timeout: float = 60.0
    ) -> Deferred[Any]:
        """
        Send a request.

        @return: a Deferred firing with the C{result}, or failing with
            L{JsonRpcError} (the server's error), or L{McpError} (the
            connection closed, the transport failed, or no answer came within
            C{timeout} seconds).  Cancelling it forgets the request and tells
            the server so.
        """
        if self._closed is not None:
            return fail(McpError(self._closed))
        assert self.transport is not None, "JsonRpcConnection.transport is not set"
        requestId = self._nextId
        self._nextId += 1

        def cancel(d: Deferred[Any]) -> None:
            self._forget(requestId, cancelExchange=True)
            if method != "initialize" and self._closed is None:
                self.notify(
                    "notifications/cancelled",
                    {"requestId": requestId, "reason": "the client no longer needs the result"},
                )

        d: Deferred[Any] = Deferred(canceller=cancel)
        self._pending[requestId] = (method, d)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": requestId, "method": method}
        if params is not None:
            message["params"] = dict(params)
        exchange = self._send(message)
        if requestId in self._pending and not exchange.called:
            self._requestExchanges[requestId] = exchange
        exchange.addCallbacks(
            self._exchangeDone,
            self._exchangeFailed,
            callbackArgs=(requestId,),
            errbackArgs=(requestId,),
        )

        def timedOut(result: Any, seconds: float) -> Any:
            if isinstance(result, Failure) and result.check(CancelledError):
                raise McpError(
                    f"MCP server {self.server!r} did not answer {method} within {seconds:g} s"
                )
            return result

        d.addTimeout(timeout, self.reactor, onTimeoutCancel=timedOut)
        return d

    def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        """
        Send a notification; a failure to send it is logged, not raised.
        """
        if self._closed is not None:
            return
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = dict(params)
        self._sendQuietly(message, method)

    def messageReceived(self, message: Any) -> None:
        """
        Handle a decoded message (or batch) from the server.
        """
        if isinstance(message, list):
            for item in message:
                self._receiveOne(item)
        else:
            self._receiveOne(message)

    def connectionLost(self, reason: str) -> None:
        """
        The conversation is over: every waiting request fails with
        C{reason}, every exchange in flight is abandoned, and later requests
        fail at once.
        """
        if self._closed is not None:
            return
        self._closed = reason
        pending, self._pending = self._pending, {}
        self._requestExchanges.clear()
        for exchange in list(self._exchanges):
            exchange.cancel()
        for _, d in pending.values():
            d.errback(McpError(reason))

    # Internals.

    def _send(self, message: Mapping[str, Any]) -> Deferred[bool]:
        assert self.transport is not None
        try:
            exchange = self.transport.sendMessage(message)
        except Exception as error:  # noqa: BLE001 - a transport bug fails the request
            exchange = fail(error)
        if not exchange.called:
            self._exchanges.add(exchange)

            def finished(result: Any) -> Any:
                self._exchanges.discard(exchange)
                return result

            exchange.addBoth(finished)
        return exchange

    def _sendQuietly(self, message: Mapping[str, Any], what: str) -> None:
        """
        Send a message no answer is expected for, within L{SEND_TIMEOUT}
        seconds; a failure is logged.
        """
        exchange = self._send(message)
        if not exchange.called:
            exchange.addTimeout(SEND_TIMEOUT, self.reactor)
        exchange.addErrback(self._sendFailed, what)

    def _forget(self, requestId: int, cancelExchange: bool) -> None:
        self._pending.pop(requestId, None)
        exchange = self._requestExchanges.pop(requestId, None)
        if cancelExchange and exchange is not None:
            exchange.cancel()

    def _exchangeDone(self, final: bool, requestId: int) -> None:
        self._requestExchanges.pop(requestId, None)
        entry = self._pending.get(requestId)
        if final and entry is not None:
            method, d = entry
            self._forget(requestId, cancelExchange=False)
            d.errback(
                McpError(f"MCP server {self.server!r} ended its reply to {method} without a result")
            )

    def _exchangeFailed(self, failure: Failure, requestId: int) -> None:
        self._requestExchanges.pop(requestId, None)
        entry = self._pending.get(requestId)
        if entry is None or failure.check(CancelledError):
            return
        method, d = entry
        self._forget(requestId, cancelExchange=False)
        if failure.check(McpError):
            d.errback(failure)
        else:
            d.errback(
                McpError(f"MCP server {self.server!r}: {method} failed: {_describe(failure)}")
            )

    def _sendFailed(self, failure: Failure, method: str) -> None:
        if failure.check(CancelledError):
            return
        log.warn(
            "MCP server {server}: could not send {method}: {error}",
            server=self.server,
            method=method,
            error=_describe(failure),
        )

    def _receiveOne(self, message: Any) -> None:
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            log.warn(
                "MCP server {server} sent something that is not a JSON-RPC 2.0 message",
                server=self.server,
            )
            return
        method = message.get("method")
        if isinstance(method, str):
            params = message.get("params")
            params = params if isinstance(params, dict) else {}
            if "id" in message:
                self._answerRequest(message["id"], method)
            else:
                self._notified(method, params)
            return
        if "id" in message and ("result" in message or "error" in message):
            self._answered(message)
            return
        log.warn("MCP server {server} sent an unrecognised JSON-RPC message", server=self.server)

    def _answered(self, message: Mapping[str, Any]) -> None:
        requestId = message["id"]
        entry = self._pending.get(requestId) if isinstance(requestId, int) else None
        if entry is None:
            log.debug(
                "MCP server {server} answered request {id}, which is no longer waiting",
                server=self.server,
                id=requestId,
            )
            return
        method, d = entry
        self._forget(requestId, cancelExchange=False)
        if "error" in message:
            error = message["error"]
            code = error.get("code") if isinstance(error, dict) else None
            text = error.get("message") if isinstance(error, dict) else None
            d.errback(
                JsonRpcError(
                    self.server,
                    method,
                    code if isinstance(code, int) else 0,
                    text if isinstance(text, str) else json.dumps(error)[:200],
                )
            )
        else:
            d.callback(message["result"])

    def _answerRequest(self, requestId: Any, method: str) -> None:
        if self._closed is not None:
            return
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": requestId}
        if method == "ping":
            reply["result"] = {}
        else:
            log.info(
                "MCP server {server} asked for {method}, which this client does not offer",
                server=self.server,
                method=method,
            )
            reply["error"] = {
                "code": METHOD_NOT_FOUND,
                "message": f"Method not found: this client does not support {method}",
            }
        self._sendQuietly(reply, f"the reply to {method}")

    def _notified(self, method: str, params: Mapping[str, Any]) -> None:
        log.debug("MCP server {server} notified {method}", server=self.server, method=method)
        try:
            self.onNotification(method, params)
        except Exception:
            log.failure(
                "handling {method} from MCP server {server}", method=method, server=self.server
            )


__all__ = ["JsonRpcConnection", "JsonRpcError", "McpError", "MessageSender"]
