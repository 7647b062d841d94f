# -*- test-case-name: tests.test_errors -*-
"""
The OpenAI APIs' error format (Chat Completions and Responses, and the
paths no API owns): an L{ai_agent.errors.ErrorFormat}, written with the one
JSON writer.
"""

from __future__ import annotations

from typing import Any

import attrs

from ai_agent.errors import AgentError, ErrorKind
from ai_agent.headends._json import dumps


@attrs.frozen
class OpenAIErrors:
    """
    OpenAI's envelope: C{{"error": {"message", "type", "param", "code"}}}.
    """

    def type(self, error: AgentError) -> str:
        """
        OpenAI's C{type} for C{error}'s kind.
        """
        if error.kind == ErrorKind.RATE_LIMIT:
            return "rate_limit_error"
        if error.kind == ErrorKind.TIMEOUT and error.status >= 500:
            return "timeout_error"
        if error.status >= 500 or error.kind in (ErrorKind.SERVER, ErrorKind.OVERLOADED):
            return "server_error"
        return "invalid_request_error"

    def envelope(self, error: AgentError) -> dict[str, Any]:
        """
        The envelope as a JSON-ready value.
        """
        return {
            "error": {
                "message": error.message,
                "type": self.type(error),
                "param": error.param,
                "code": error.code,
            }
        }

    def status(self, error: AgentError) -> int:
        return error.status

    def body(self, error: AgentError) -> bytes:
        return dumps(self.envelope(error))


#: The error format of the OpenAI routes (and of paths no API owns).
OPENAI_ERRORS = OpenAIErrors()


__all__ = ["OPENAI_ERRORS", "OpenAIErrors"]
