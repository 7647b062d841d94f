# -*- test-case-name: tests.test_errors -*-
"""
Errors as data: every failure the server can report carries its HTTP status and
the OpenAI error envelope fields, so each headend translates it in one place.
"""

from __future__ import annotations

from typing import Any

import attrs


@attrs.define(eq=False, str=False)
class AgentError(Exception):
    """
    A failure that can be reported to a client.

    @ivar message: human-readable text; never contains a secret.
    @ivar status: the HTTP status to answer with when nothing was sent yet.
    @ivar type: the OpenAI error C{type}.
    @ivar code: the OpenAI error C{code}, or L{None}.
    @ivar param: the request parameter at fault, or L{None}.
    @ivar retryAfter: seconds for a C{Retry-After} header, or L{None}.
    @ivar sideEffects: whether the run had already called a tool when it
        failed, so repeating the request could repeat the tool's effects.
    """

    message: str
    status: int = 500
    type: str = "server_error"
    code: str | None = None
    param: str | None = None
    retryAfter: float | None = None
    sideEffects: bool = attrs.field(default=False, kw_only=True)

    def __str__(self) -> str:
        return self.message

    def envelope(self) -> dict[str, Any]:
        """
        The OpenAI error envelope for this error.
        """
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def invalidRequest(message: str, param: str | None = None, code: str | None = None) -> AgentError:
    """
    A 400 C{invalid_request_error}.
    """
    return AgentError(message, 400, "invalid_request_error", code, param)


def notFound(message: str, code: str = "not_found", param: str | None = None) -> AgentError:
    """
    A 404 C{invalid_request_error} (the type OpenAI uses for unknown models).
    """
    return AgentError(message, 404, "invalid_request_error", code, param)


def overloaded(message: str, retryAfter: float) -> AgentError:
    """
    A 503 answered with C{Retry-After}.
    """
    return AgentError(message, 503, "server_error", "overloaded", None, retryAfter)


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
        errorType = {429: "rate_limit_error", 504: "timeout_error"}.get(status, "server_error")
        super().__init__(message, status, errorType, code, None, retryAfter)
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
    "ProviderError",
    "invalidRequest",
    "notFound",
    "overloaded",
]
