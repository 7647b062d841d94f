# -*- test-case-name: tests.test_headend_openai,tests.test_headend_anthropic -*-
"""
What every API's routes share when they answer with an error: the errors
routing itself raises (no such endpoint, wrong method), and writing an
L{AgentError} in the API's L{ErrorFormat} with the headers every API sends
(C{Retry-After}, C{x-should-retry}), secrets redacted.  Each headend's
Klein error handlers are thin calls into these.
"""

from __future__ import annotations

from typing import Any

from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed

from ai_agent.errors import AgentError, ErrorFormat, ErrorKind, notFound
from ai_agent.headends._http import GuardedRequest
from ai_agent.redaction import Redactor, safeError, shorten

_JSON = b"application/json"


def configuredRedactor(runner: Any) -> Redactor:
    """
    The redactor of the secrets in C{runner}'s configuration (its
    providers' keys), for everything a headend writes.
    """
    providers = getattr(runner, "providers", None)
    return Redactor.fromConfig(getattr(providers, "config", None))


def unknownEndpoint(request: IRequest, hint: str = "") -> AgentError:
    """
    The 404 for a path no route of the API serves (C{hint} is appended).
    """
    path = request.path.decode("utf-8", "replace")
    return notFound(f"no such endpoint: {shorten(path)}{hint}", "not_found")


def wrongMethod(request: IRequest, failure: Failure) -> AgentError:
    """
    The 405 for a route asked with another method; sets C{Allow}.
    """
    error = failure.value
    assert isinstance(error, MethodNotAllowed)
    method = request.method.decode("ascii", "replace")
    allowed = ", ".join(error.valid_methods or ())
    request.setHeader(b"allow", allowed.encode("ascii"))
    return AgentError(
        f"{shorten(method)} is not allowed here; use {allowed}",
        405,
        ErrorKind.INVALID_REQUEST,
        "method_not_allowed",
    )


def writeError(
    request: IRequest, error: AgentError, errors: ErrorFormat, redactor: Redactor
) -> bytes:
    """
    Set the status and headers for C{error} and return its body in
    C{errors}' envelope, with configured secrets redacted.  C{Retry-After}
    when the error has a wait; C{x-should-retry: false} when a tool already
    ran (running the agent again could repeat its effects).  A 4xx is
    logged once, rate-limited (L{GuardedRequest.noteRefusal}).
    """
    error = safeError(error, redactor)
    if isinstance(request, GuardedRequest):
        request.noteRefusal(error)
    request.setResponseCode(errors.status(error))
    request.setHeader(b"content-type", _JSON)
    if error.retryAfter is not None:
        request.setHeader(b"retry-after", str(max(1, round(error.retryAfter))).encode())
    if error.sideEffects:
        request.setHeader(b"x-should-retry", b"false")
    return errors.body(error)


__all__ = ["configuredRedactor", "unknownEndpoint", "writeError", "wrongMethod"]
