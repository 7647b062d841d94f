# -*- test-case-name: tests.test_errors -*-
"""
Errors as data, in no API's shape: every failure the server can report
carries its HTTP status, a neutral kind, a machine-readable code and the
request field at fault.  Each API renders them in its own envelope, once,
at its edge (an L{ErrorFormat} beside each API's description:
L{ai_agent.headends._openai_errors}, L{ai_agent.headends.anthropic}).
"""

from __future__ import annotations

from typing import Protocol

import attrs


class ErrorKind:
    """
    What went wrong, in words no API owns.  Each API maps a kind to its own
    error type.
    """

    INVALID_REQUEST = "invalid_request"
    AUTHENTICATION = "authentication"
    PERMISSION = "permission"
    NOT_FOUND = "not_found"
    REQUEST_TOO_LARGE = "request_too_large"
    RATE_LIMIT = "rate_limit"
    TIMEOUT = "timeout"
    OVERLOADED = "overloaded"
    SERVER = "server"

    ALL = frozenset(
        {
            INVALID_REQUEST,
            AUTHENTICATION,
            PERMISSION,
            NOT_FOUND,
            REQUEST_TOO_LARGE,
            RATE_LIMIT,
            TIMEOUT,
            OVERLOADED,
            SERVER,
        }
    )


#: OpenAI's error types, accepted where a kind is expected (the three it
#: uses map one to one).
_OPENAI_TYPES = {
    "invalid_request_error": ErrorKind.INVALID_REQUEST,
    "rate_limit_error": ErrorKind.RATE_LIMIT,
    "timeout_error": ErrorKind.TIMEOUT,
    "server_error": ErrorKind.SERVER,
}


def _kind(value: str) -> str:
    kind = _OPENAI_TYPES.get(value, value)
    if kind not in ErrorKind.ALL:
        raise ValueError(f"unknown error kind {value!r}")
    return kind


@attrs.define(eq=False, str=False)
class AgentError(Exception):
    """
    A failure that can be reported to a client.

    @ivar message: human-readable text; never contains a secret.
    @ivar status: the HTTP status to answer with when nothing was sent yet.
    @ivar kind: an L{ErrorKind} value (OpenAI's type names are accepted and
        translated).
    @ivar code: a machine-readable code (C{model_not_found}, ...), or
        L{None}.
    @ivar param: the path of the request field at fault
        (C{messages[2].content}), or L{None}.
    @ivar retryAfter: seconds for a C{Retry-After} header, or L{None}.
    @ivar sideEffects: whether the run had already called a tool when it
        failed, so repeating the request could repeat the tool's effects.
    """

    message: str
    status: int = 500
    kind: str = attrs.field(default=ErrorKind.SERVER, converter=_kind)
    code: str | None = None
    param: str | None = None
    retryAfter: float | None = None
    sideEffects: bool = attrs.field(default=False, kw_only=True)

    def __str__(self) -> str:
        return self.message


class ErrorFormat(Protocol):
    """
    One API's way of writing an L{AgentError}.
    """

    def status(self, error: AgentError) -> int:
        """
        The HTTP status to answer C{error} with.
        """
        ...

    def body(self, error: AgentError) -> bytes:
        """
        The JSON body (the API's error envelope) for C{error}.
        """
        ...


def invalidRequest(message: str, param: str | None = None, code: str | None = None) -> AgentError:
    """
    A 400: the request is malformed.
    """
    return AgentError(message, 400, ErrorKind.INVALID_REQUEST, code, param)


def notFound(message: str, code: str = "not_found", param: str | None = None) -> AgentError:
    """
    A 404: no such model, endpoint or object.
    """
    return AgentError(message, 404, ErrorKind.NOT_FOUND, code, param)


def overloaded(message: str, retryAfter: float) -> AgentError:
    """
    A 503 answered with C{Retry-After}: the server is full.
    """
    return AgentError(message, 503, ErrorKind.OVERLOADED, "overloaded", None, retryAfter)


class ProviderError(AgentError):
    """
    An upstream LLM call failed.

    @ivar retryable: whether trying again (or the next model) may help.
    @ivar upstreamStatus: the HTTP status the provider answered, if any.
    """

    retryable: bool
    upstreamStatus: int | None

    def __init__(
        self,
        message: str,
        *,
        status: int = 502,
        code: str | None = "upstream_error",
        retryable: bool = True,
        upstreamStatus: int | None = None,
        retryAfter: float | None = None,
    ) -> None:
        kind = {429: ErrorKind.RATE_LIMIT, 504: ErrorKind.TIMEOUT}.get(status, ErrorKind.SERVER)
        super().__init__(message, status, kind, code, None, retryAfter)
        self.retryable = retryable
        self.upstreamStatus = upstreamStatus


class ConfigurationError(Exception):
    """
    An agent file or configuration file is invalid.  The message names the
    file, the key and the problem.
    """


__all__ = [
    "AgentError",
    "ConfigurationError",
    "ErrorFormat",
    "ErrorKind",
    "ProviderError",
    "invalidRequest",
    "notFound",
    "overloaded",
]
