"""
Malformed upstream answers: every shape an upstream can answer in is a
502 naming what was wrong, never a 500 or a traceback.

From the second security and reliability round (issue 11): each hole the
hostile campaign found, pinned against a real server on 127.0.0.1 with an
upstream of the test's own where the upstream misbehaves.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import TestCase

from tests._hostile import ScriptedUpstream, jsonAnswer, sseAnswer
from tests._misbehaving import (
    BAD_KEY,
    agentText,
    badServer,
    chat,
)


class MalformedUpstreamTests(TestCase):
    """
    Item 10: every shape of upstream answer is a 502 naming what was wrong,
    never a 500 or a traceback.
    """

    timeout = 60

    async def test_everyShapeIsA502(self) -> None:
        """
        Answers of the wrong shape (a tool call whose C{function} is a
        string, C{tool_calls} that is not an array, a tool call without a
        name, a message that is a number, streamed deltas of the wrong
        type) each give a 502 C{upstream_invalid_response} whose message
        names the part at fault; nothing is logged as a crash.
        """
        cases: list[tuple[Any, str]] = [
            (
                jsonAnswer({"choices": [{"message": {"tool_calls": [{"function": "f"}]}}]}),
                "choices[0].message.tool_calls[0].function is a string",
            ),
            (
                jsonAnswer({"choices": [{"message": {"tool_calls": {"a": 1}}}]}),
                "choices[0].message.tool_calls is an object",
            ),
            (
                jsonAnswer({"choices": [{"message": {"tool_calls": [{"function": {}}]}}]}),
                "tool_calls[0].function.name is missing",
            ),
            (jsonAnswer({"choices": [{"message": 3}]}), "choices[0].message is a number"),
            (
                sseAnswer([{"choices": [{"delta": {"tool_calls": [{"function": "f"}]}}]}]),
                "delta.tool_calls[0].function is a string",
            ),
            (
                sseAnswer([{"choices": [{"delta": {"tool_calls": "x"}}]}]),
                "delta.tool_calls is a string",
            ),
            (
                sseAnswer(
                    [
                        {"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c"}]}}]},
                        {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
                    ]
                ),
                "the streamed tool call 0 has no function name",
            ),
        ]
        upstream = ScriptedUpstream().start(self)
        server = await badServer(self, upstream)
        from twisted.logger import globalLogPublisher

        crashes: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_failure") is not None:
                crashes.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        for answer, named in cases:
            for stream in (False, True):
                upstream.answers.append(answer)
                status, headers, body = await chat(self, server, stream=stream)
                self.assertEqual(status, 502, (named, body))
                error = json.loads(body)["error"]
                self.assertEqual(error["code"], "upstream_invalid_response")
                self.assertIn(named, error["message"])
                self.assertNotIn(BAD_KEY, error["message"])
        self.assertEqual(crashes, [])

    async def test_anthropicShapes(self) -> None:
        """
        The same for the Anthropic wire: a C{tool_use} block whose name is
        an object, whose input is a string, or content that is not an
        array, each give a 502 C{upstream_invalid_response} naming it.
        """
        cases: list[tuple[Any, str]] = [
            (
                jsonAnswer({"content": [{"type": "tool_use", "id": "t", "name": {"x": 1}}]}),
                "content[0] is a tool_use block without a name",
            ),
            (
                jsonAnswer(
                    {"content": [{"type": "tool_use", "id": "t", "name": "f", "input": "x"}]}
                ),
                "content[0] is a tool_use block whose input is not an object",
            ),
            (jsonAnswer({"content": "text"}), "the response has no content"),
        ]
        upstream = ScriptedUpstream().start(self)
        server = await badServer(
            self,
            upstream,
            agents={"agent.ai": agentText("claude/model")},
            extraProviders={
                "claude": {"type": "anthropic", "baseUrl": upstream.baseUrl, "apiKey": BAD_KEY}
            },
        )
        for answer, named in cases:
            upstream.answers.append(answer)
            status, headers, body = await chat(self, server)
            self.assertEqual(status, 502, (named, body))
            error = json.loads(body)["error"]
            self.assertEqual(error["code"], "upstream_invalid_response")
            self.assertIn(named, error["message"])
