"""
Client values: numbers that are not finite are refused naming where they
were; a client's values are quoted back shortened.

From the second security and reliability round (issue 11): each hole the
hostile campaign found, pinned against a real server on 127.0.0.1 with an
upstream of the test's own where the upstream misbehaves.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.trial.unittest import TestCase

from tests._harness import LiveServer
from tests._hostile import ScriptedUpstream, sseAnswer
from tests._misbehaving import (
    badServer,
    client,
    textEvents,
)


async def postRaw(
    testCase: TestCase, server: LiveServer, body: bytes, headers: dict[str, list[str]] | None = None
) -> tuple[int, bytes]:
    """
    POST C{body} as it is to the chat completions route.
    """
    response = await client(testCase).post(
        server.baseUrl + "/chat/completions",
        data=body,
        headers=headers or {"Content-Type": ["application/json"]},
    )
    return response.code, await treq.content(response)


class ClientValueTests(TestCase):
    """
    Items 11 and 12: numbers that are not finite are refused naming where
    they were; a client's values are quoted back shortened.
    """

    timeout = 60

    async def test_nonFiniteNumbers(self) -> None:
        """
        C{1e400} (which Python would read as infinity) anywhere in a request
        is a 400 C{invalid_number} whose C{param} is its path, and the
        upstream is never called; C{1e300} passes.
        """
        upstream = ScriptedUpstream().start(self)
        server = await badServer(self, upstream)
        base = {
            "model": "agent",
            "messages": [{"role": "user", "content": "1e400 in text is fine"}],
        }
        schema = {"type": "json_schema", "json_schema": {"name": "n", "schema": {"maximum": 0}}}
        cases = [
            (
                json.dumps({**base, "response_format": schema}).replace(
                    '"maximum": 0', '"maximum": 1e400'
                ),
                "response_format.json_schema.schema.maximum",
            ),
            (
                json.dumps({**base, "temperature": 0}).replace(
                    '"temperature": 0', '"temperature": -1E+400'
                ),
                "temperature",
            ),
            (
                json.dumps({**base, "metadata": {"x": [1, 2]}}).replace(
                    "2]", "1" + "0" * 400 + ".5]"
                ),
                "metadata.x[1]",
            ),
        ]
        for body, param in cases:
            status, answer = await postRaw(self, server, body.encode())
            self.assertEqual(status, 400, answer)
            error = json.loads(answer)["error"]
            self.assertEqual((error["code"], error["param"]), ("invalid_number", param))
        self.assertEqual(upstream.requests, [])
        upstream.answers.append(sseAnswer(textEvents(["fine"])))
        status, answer = await postRaw(
            self,
            server,
            json.dumps({**base, "response_format": schema})
            .replace('"maximum": 0', '"maximum": 1e300')
            .encode(),
        )
        self.assertEqual(status, 200, answer)
        self.assertIn(b"1e+300", upstream.requests[0])

    async def test_echoesShortened(self) -> None:
        """
        A 1 MB model name, a 10 kB unknown path, a 10 kB content type and a
        deeply nested key path are quoted back in at most about 80
        characters each; no error body is longer than 1,000 bytes.
        """
        upstream = ScriptedUpstream().start(self)
        server = await badServer(self, upstream)
        bodies = []
        status, answer = await postRaw(
            self,
            server,
            json.dumps(
                {"model": "m" * 1_000_000, "messages": [{"role": "user", "content": "x"}]}
            ).encode(),
        )
        self.assertEqual(status, 404)
        bodies.append(answer)
        self.assertIn("mmm...", json.loads(answer)["error"]["message"])
        response = await client(self).get(server.baseUrl + "/" + "p" * 10_000)
        self.assertEqual(response.code, 404)
        bodies.append(await treq.content(response))
        status, answer = await postRaw(
            self, server, b"{}", {"Content-Type": ["application/" + "x" * 10_000]}
        )
        self.assertEqual(status, 415)
        bodies.append(answer)
        nested: Any = "\\ud800"
        for _level in range(60):
            nested = {"k" * 64: nested}
        status, answer = await postRaw(
            self,
            server,
            json.dumps(
                {"model": "agent", "messages": [{"role": "user", "content": "x"}], "z": nested}
            )
            .replace("\\\\ud800", "\\ud800")
            .encode(),
        )
        self.assertEqual(status, 400, answer[:300])
        bodies.append(answer)
        for body in bodies:
            self.assertLess(len(body), 1000, body[:200])
