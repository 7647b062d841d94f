"""
L{ai_agent.errors}: errors carry a neutral kind, and each API renders them
in its own envelope.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from ai_agent.errors import (
    AgentError,
    ErrorKind,
    ProviderError,
    invalidRequest,
    notFound,
    overloaded,
)
from ai_agent.headends._openai_errors import OPENAI_ERRORS


class ErrorKindTests(SynchronousTestCase):
    """
    Kinds are neutral; OpenAI's type names are accepted and translated.
    """

    def test_openAINamesTranslated(self) -> None:
        """
        An OpenAI error type given where a kind is expected becomes the
        neutral kind; an unknown kind is refused.
        """
        self.assertEqual(
            AgentError("x", 400, "invalid_request_error").kind, ErrorKind.INVALID_REQUEST
        )
        self.assertEqual(AgentError("x", 429, "rate_limit_error").kind, ErrorKind.RATE_LIMIT)
        self.assertEqual(AgentError("x", 500, "server_error").kind, ErrorKind.SERVER)
        self.assertRaises(ValueError, AgentError, "x", 400, "no_such_kind")

    def test_helpers(self) -> None:
        """
        The helpers make the kinds and statuses they name.
        """
        self.assertEqual(
            (invalidRequest("m", "p").kind, invalidRequest("m", "p").param),
            (ErrorKind.INVALID_REQUEST, "p"),
        )
        self.assertEqual((notFound("m").status, notFound("m").kind), (404, ErrorKind.NOT_FOUND))
        busy = overloaded("m", 3.0)
        self.assertEqual(
            (busy.status, busy.kind, busy.retryAfter), (503, ErrorKind.OVERLOADED, 3.0)
        )
        self.assertEqual(ProviderError("m", status=429).kind, ErrorKind.RATE_LIMIT)
        self.assertEqual(ProviderError("m", status=504).kind, ErrorKind.TIMEOUT)
        self.assertEqual(ProviderError("m").kind, ErrorKind.SERVER)


class OpenAIErrorsTests(SynchronousTestCase):
    """
    OpenAI's envelope, with OpenAI's types for each kind.
    """

    def test_envelope(self) -> None:
        """
        The body is C{{"error": {message, type, param, code}}} and the
        status is the error's own.
        """
        error = invalidRequest("bad", "messages[0].content", "invalid_type")
        self.assertEqual(
            json.loads(OPENAI_ERRORS.body(error)),
            {
                "error": {
                    "message": "bad",
                    "type": "invalid_request_error",
                    "param": "messages[0].content",
                    "code": "invalid_type",
                }
            },
        )
        self.assertEqual(OPENAI_ERRORS.status(error), 400)

    def test_types(self) -> None:
        """
        Each kind gets the type OpenAI uses for it: client mistakes (401,
        403, 404, 408, 413 included) are C{invalid_request_error}; 429 is
        C{rate_limit_error}; an upstream timeout C{timeout_error}; the rest
        C{server_error}.
        """
        cases = [
            (AgentError("m", 401, ErrorKind.AUTHENTICATION), "invalid_request_error"),
            (AgentError("m", 403, ErrorKind.PERMISSION), "invalid_request_error"),
            (notFound("m"), "invalid_request_error"),
            (AgentError("m", 408, ErrorKind.INVALID_REQUEST), "invalid_request_error"),
            (AgentError("m", 413, ErrorKind.REQUEST_TOO_LARGE), "invalid_request_error"),
            (ProviderError("m", status=429), "rate_limit_error"),
            (ProviderError("m", status=504), "timeout_error"),
            (ProviderError("m"), "server_error"),
            (overloaded("m", 1.0), "server_error"),
            (AgentError("m"), "server_error"),
        ]
        for error, expected in cases:
            self.assertEqual(OPENAI_ERRORS.type(error), expected, error)

    def test_text(self) -> None:
        """
        The body is UTF-8 JSON with the message's characters as they are.
        """
        body = OPENAI_ERRORS.body(invalidRequest("naïve — ok"))
        self.assertIn("naïve — ok".encode(), body)
