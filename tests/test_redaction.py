"""
Configured secrets kept out of every answer (L{ai_agent.redaction}):
whole or split across stream deltas, through a real server, and the
piecewise redactor over arbitrary text cut at arbitrary places.

From the second security and reliability round (issue 11): each hole the
hostile campaign found, pinned against a real server on 127.0.0.1 with an
upstream of the test's own where the upstream misbehaves.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import TestCase

from tests._hostile import ScriptedUpstream, sseAnswer
from tests._misbehaving import (
    BAD_KEY,
    agentText,
    badServer,
    chat,
    sseEvents,
    textEvents,
    toolCallEvents,
)


class RedactionTests(TestCase):
    """
    Item 3: a configured secret never reaches a client, whatever part of a
    successful answer carries it, whole or split across stream deltas.
    """

    timeout = 60

    async def test_keyInEveryPartOfAnAnswer(self) -> None:
        """
        The provider key in a tool call's name and arguments (quoted in the
        progress lines), in reasoning and in content, split over several
        deltas at every position, is replaced with C{[redacted]} in the
        streamed and the non-streamed answer; text around it and a lone
        prefix of the key at the end of the answer arrive unchanged.
        """
        upstream = ScriptedUpstream().start(self)
        agents = {
            "agent.ai": agentText(agents="[child.ai]"),
            "child.ai": agentText(),
        }
        server = await badServer(self, upstream, agents=agents)
        cut = [BAD_KEY[:5], BAD_KEY[5:9], BAD_KEY[9:]]
        for stream in (False, True):
            upstream.answers.extend(
                [
                    sseAnswer(
                        toolCallEvents(
                            [
                                ("agent__child", json.dumps({"prompt": f"use {BAD_KEY}"})),
                                (f"tool_{BAD_KEY}", "{}"),
                            ]
                        )
                    ),
                    # The child's answer is the tool's result, shown in progress.
                    sseAnswer(textEvents(["child says ", *cut])),
                    sseAnswer(
                        textEvents(["thinking ", *cut, " done"], "reasoning_content")[:-1]
                        + textEvents(["the key is ", *cut, "! and ", BAD_KEY[:6]])
                    ),
                ]
            )
            status, headers, body = await chat(self, server, stream=stream)
            self.assertEqual(status, 200, body)
            self.assertNotIn(BAD_KEY.encode(), body)
            for fragment in (BAD_KEY[3:], BAD_KEY[5:]):
                self.assertNotIn(fragment.encode(), body)
            if stream:
                frames = [e for e in sseEvents(body) if isinstance(e, dict) and e.get("choices")]
                content = "".join(f["choices"][0]["delta"].get("content") or "" for f in frames)
                reasoning = "".join(
                    f["choices"][0]["delta"].get("reasoning_content") or "" for f in frames
                )
            else:
                message = json.loads(body)["choices"][0]["message"]
                content, reasoning = message["content"], message["reasoning_content"]
            self.assertEqual(content, f"the key is [redacted]! and {BAD_KEY[:6]}")
            self.assertIn("thinking [redacted] done", reasoning)
            self.assertIn("calling tool_[redacted] {}", reasoning)
            self.assertIn('"prompt": "use [redacted]"', reasoning)
            self.assertIn("child says [redacted]", reasoning)


class StreamRedactorTests(TestCase):
    """
    The piecewise redaction behind item 3, over arbitrary text cut at
    arbitrary places.
    """

    def test_anyCuts(self) -> None:
        """
        Whatever the text (secrets, their prefixes and overlaps included)
        and wherever it is cut into pieces, no secret is in what goes out,
        joined; text holding no secret goes out unchanged; with one secret,
        the output is exactly the text with each occurrence replaced.
        """
        from hypothesis import given, settings
        from hypothesis import strategies as st

        from ai_agent.redaction import REDACTED, Redactor

        secrets = ("sk-abcdef123456", "hdr-value-99", "abcdef12", "12345678")
        several = Redactor.of(secrets)
        one = Redactor.of(secrets[:1])
        alphabet = st.sampled_from(
            ["sk-", "abc", "def", "123456", "78", "hdr-", "value-99", "x", " "]
        )

        def run(redactor: Redactor, pieces: list[str]) -> str:
            stream = redactor.stream()
            return "".join(stream.feed(piece) for piece in pieces) + stream.flush()

        @settings(max_examples=400, deadline=None)
        @given(st.lists(alphabet, max_size=30), st.lists(st.integers(0, 200), max_size=8))
        def check(parts: list[str], cuts: list[int]) -> None:
            text = "".join(parts)
            points = sorted({min(c, len(text)) for c in cuts})
            pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
            out = run(several, pieces)
            for secret in secrets:
                self.assertNotIn(secret, out)
            if not any(secret in text for secret in secrets):
                self.assertEqual(out, text)
            self.assertEqual(run(one, pieces), text.replace(secrets[0], REDACTED))

        check()
