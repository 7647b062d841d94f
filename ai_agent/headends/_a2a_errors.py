# -*- test-case-name: tests.test_headend_a2a -*-
"""
A2A's error formats, beside the A2A headend as L{OPENAI_ERRORS} is beside
the OpenAI ones: A2A's own errors (L{A2A_ERROR_KINDS}: a JSON-RPC code, an
HTTP status, an C{ErrorInfo} reason), the HTTP+JSON binding's
C{google.rpc.Status} envelope (L{A2AErrors}, an
L{ai_agent.errors.ErrorFormat}, which the headend's Klein error handlers
write) and the JSON-RPC binding's error response (L{rpcError}: HTTP 200,
C{{"jsonrpc", "id", "error": {"code", "message", "data": [ErrorInfo]}}}).
"""

from __future__ import annotations

from typing import Any

import attrs

from ai_agent.errors import AgentError, ErrorKind
from ai_agent.headends._json import dumpsAny as _dumpsAny
from ai_agent.redaction import shorten


@attrs.frozen
class _A2AErrorKind:
    """
    One of A2A's errors: its JSON-RPC code, HTTP status, C{ErrorInfo}
    reason.
    """

    rpcCode: int
    status: int
    reason: str


#: A2A's errors by the C{code} of the L{AgentError} carrying them.
A2A_ERROR_KINDS = {
    "TASK_NOT_FOUND": _A2AErrorKind(-32001, 404, "TASK_NOT_FOUND"),
    "TASK_NOT_CANCELABLE": _A2AErrorKind(-32002, 400, "TASK_NOT_CANCELABLE"),
    "PUSH_NOTIFICATION_NOT_SUPPORTED": _A2AErrorKind(
        -32003, 400, "PUSH_NOTIFICATION_NOT_SUPPORTED"
    ),
    "UNSUPPORTED_OPERATION": _A2AErrorKind(-32004, 400, "UNSUPPORTED_OPERATION"),
    "CONTENT_TYPE_NOT_SUPPORTED": _A2AErrorKind(-32005, 400, "CONTENT_TYPE_NOT_SUPPORTED"),
    "EXTENDED_AGENT_CARD_NOT_CONFIGURED": _A2AErrorKind(
        -32007, 400, "EXTENDED_AGENT_CARD_NOT_CONFIGURED"
    ),
    "VERSION_NOT_SUPPORTED": _A2AErrorKind(-32009, 400, "VERSION_NOT_SUPPORTED"),
}

#: JSON-RPC's own errors.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

#: google.rpc.Code names of HTTP statuses.
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    431: "INVALID_ARGUMENT",
    499: "CANCELLED",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_DOMAIN = "a2a-protocol.org"


def a2aError(code: str, message: str) -> AgentError:
    """
    One of A2A's errors (C{code} a key of L{A2A_ERROR_KINDS}).
    """
    kind = A2A_ERROR_KINDS[code]
    errorKind = ErrorKind.NOT_FOUND if kind.status == 404 else ErrorKind.INVALID_REQUEST
    return AgentError(message, kind.status, errorKind, code)


def taskNotFound(taskId: str) -> AgentError:
    return a2aError("TASK_NOT_FOUND", f"task {shorten(repr(taskId))} was not found")


def _invalidParams(message: str, param: str | None = None) -> AgentError:
    return AgentError(message, 400, ErrorKind.INVALID_REQUEST, "invalid_params", param)


def rpcCode(error: AgentError) -> int:
    """
    The JSON-RPC error code of C{error}.
    """
    kind = A2A_ERROR_KINDS.get(error.code or "")
    if kind is not None:
        return kind.rpcCode
    if error.code == "invalid_json":
        return PARSE_ERROR
    if error.code == "invalid_jsonrpc":
        return INVALID_REQUEST
    if error.code == "method_not_found":
        return METHOD_NOT_FOUND
    if error.status < 500 and error.kind == ErrorKind.INVALID_REQUEST:
        return INVALID_PARAMS
    return INTERNAL_ERROR


def _errorInfo(error: AgentError) -> dict[str, Any]:
    kind = A2A_ERROR_KINDS.get(error.code or "")
    reason = kind.reason if kind is not None else (error.code or "ERROR").upper()
    metadata = {} if error.param is None else {"param": error.param}
    return {"@type": _ERROR_INFO, "reason": reason, "domain": _DOMAIN, "metadata": metadata}


@attrs.frozen
class A2AErrors:
    """
    The HTTP+JSON binding's envelope (an L{ai_agent.errors.ErrorFormat}):
    C{google.rpc.Status} C{{"error": {"code", "status", "message",
    "details": [ErrorInfo]}}}.  Also what the guard's refusals (a missing
    key, a body too large) on C{/a2a/...} paths are written in, for both
    bindings: those are HTTP errors before any JSON-RPC request is read.
    """

    def status(self, error: AgentError) -> int:
        return error.status

    def envelope(self, error: AgentError) -> dict[str, Any]:
        return {
            "error": {
                "code": error.status,
                "status": _STATUS_NAMES.get(error.status, "INTERNAL"),
                "message": error.message,
                "details": [_errorInfo(error)],
            }
        }

    def body(self, error: AgentError) -> bytes:
        return _dumpsAny(self.envelope(error))


#: The error format of the A2A paths.
A2A_ERRORS = A2AErrors()


def rpcError(requestId: Any, error: AgentError) -> dict[str, Any]:
    """
    C{error} as a JSON-RPC 2.0 error response.
    """
    return {
        "jsonrpc": "2.0",
        "id": requestId,
        "error": {"code": rpcCode(error), "message": error.message, "data": [_errorInfo(error)]},
    }


__all__ = [
    "A2AErrors",
    "A2A_ERRORS",
    "A2A_ERROR_KINDS",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "a2aError",
    "rpcCode",
    "rpcError",
    "taskNotFound",
]
