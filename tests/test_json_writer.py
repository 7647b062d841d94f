"""
The one JSON writer: every API writes the same text the same way.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ai_agent.errors import invalidRequest
from ai_agent.headends._json import dumps, dumpsAny, dumpsPlain
from ai_agent.headends._openai_errors import OPENAI_ERRORS
from ai_agent.headends.anthropic import ANTHROPIC_ERRORS
from ai_agent.testing import Reply
from tests._harness import startServer
from tests.mcp_servers import httpClient

#: Text with a lone surrogate (it has no UTF-8 form) between two letters.
_LONE = "a\ud800b"

#: What every API writes for it: the replacement character.
_REPLACED = "a\ufffdb".encode()

_USER = [{"role": "user", "content": "hi"}]

#: Each API's path, body and headers.
_APIS: dict[str, tuple[str, dict[str, Any], dict[str, list[str]]]] = {
    "chat": ("/v1/chat/completions", {"model": "agent", "messages": _USER}, {}),
    "responses": ("/v1/responses", {"model": "agent", "input": "hi"}, {}),
    "messages": (
        "/v1/messages",
        {"model": "agent", "max_tokens": 16, "messages": _USER},
        {"anthropic-version": ["2023-06-01"]},
    ),
}


class WriterTests(SynchronousTestCase):
    """
    L{dumps} and its fast paths, and the error formats written with them.
    """

    def test_loneSurrogateReplaced(self) -> None:
        """
        A lone surrogate is written as U+FFFD by every path of the writer
        (json, orjson's refusal falling back, the float check), never as
        C{?} and never as an exception.
        """
        for write in (dumps, dumpsPlain, dumpsAny):
            self.assertEqual(write({"t": _LONE}), b'{"t":"' + _REPLACED + b'"}')
        self.assertEqual(dumpsAny({"t": _LONE, "f": 0.5}), b'{"t":"' + _REPLACED + b'","f":0.5}')

    def test_everydayFloatsByOrjson(self) -> None:
        """
        Floats of everyday magnitude (a response object's C{temperature}
        and C{top_p}) are written by orjson, not json's encoder, with json's
        bytes; those orjson spells otherwise (below 1e-4, from 1e16 on, not
        finite) still go to json.
        """
        import ai_agent.headends._json as writer

        written: list[Any] = []

        class _Recording:
            @staticmethod
            def dumps(value: Any, **options: Any) -> str:
                written.append(value)
                return json.dumps(value, **options)

        self.patch(writer, "json", _Recording)
        everyday = [0.0, -0.0, 1.0, 0.7, 1e-4, 123.456, 9999999999999998.0, -2.5]
        for value in everyday:
            self.assertEqual(
                dumpsAny({"t": value}), json.dumps({"t": value}, separators=(",", ":")).encode()
            )
        self.assertEqual(written, [])
        odd = [1e-5, 1e16, 1e-7, 1.5e300, float("inf"), float("nan")]
        for value in odd:
            self.assertEqual(dumpsAny([value]), json.dumps([value]).encode())
        self.assertEqual(len(written), len(odd))

    def test_errorEnvelopes(self) -> None:
        """
        Both error formats write an error whose message holds a lone
        surrogate with U+FFFD (the OpenAI format used to raise).
        """
        error = invalidRequest(_LONE)
        for errors in (OPENAI_ERRORS, ANTHROPIC_ERRORS):
            self.assertIn(_REPLACED, errors.body(error))
            json.loads(errors.body(error))


class EveryAPITests(TestCase):
    """
    A model's answer holding a lone surrogate, through the real server.
    """

    async def test_loneSurrogateEveryAPI(self) -> None:
        """
        Chat Completions, Responses and Messages, streamed and whole, write
        the answer's lone surrogate as U+FFFD (Responses and Messages wrote
        C{?}): the same text, one answer.
        """
        server = await startServer(self)
        client = httpClient(self)
        base = server.baseUrl[: -len("/v1")]
        for name, (path, body, headers) in _APIS.items():
            for stream in (False, True):
                server.upstream.script(Reply(content=_LONE))
                response = await client.post(
                    base + path,
                    json.dumps({**body, "stream": stream}).encode(),
                    headers={"content-type": ["application/json"], **headers},
                ).addTimeout(10, reactor)
                written = await treq.content(response)
                self.assertEqual(response.code, 200, (name, stream, written))
                self.assertIn(_REPLACED, written, (name, stream))
                self.assertNotIn(b"a?b", written, (name, stream))
