"""
An upstream's C{Retry-After} longer than a turn may wait: the run ends at
once and the delay is passed on.

From the second security and reliability round (issue 11): each hole the
hostile campaign found, pinned against a real server on 127.0.0.1 with an
upstream of the test's own where the upstream misbehaves.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests._hostile import ScriptedUpstream, jsonAnswer
from tests._misbehaving import (
    agentText,
    badServer,
    chat,
    sseEvents,
)


class RetryAfterTests(TestCase):
    """
    Item 8: an upstream's C{Retry-After} longer than a turn may wait ends
    the run at once and is passed on.
    """

    timeout = 60

    async def test_longRetryAfter(self) -> None:
        """
        With C{Retry-After: 99999} (and three attempts allowed), the answer
        comes at once: a 429 with C{Retry-After} (believed up to a day:
        86400) when nothing was streamed yet, and an in-band error saying
        when to retry when the stream had begun; the upstream is called
        once per request.
        """
        import time

        upstream = ScriptedUpstream(
            default=jsonAnswer(
                {"error": {"message": "slow down", "type": "rate_limit"}},
                429,
                {"Retry-After": "99999"},
            )
        ).start(self)
        server = await badServer(
            self,
            upstream,
            agents={"agent.ai": agentText().replace("maxRetries: 1", "maxRetries: 3")},
        )
        started = time.monotonic()
        status, headers, body = await chat(self, server)
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertEqual(status, 429, body)
        self.assertEqual(headers["retry-after"], ["86400"])
        self.assertEqual(len(upstream.requests), 1)
        server.headend.streamHeadGrace = 0.0
        started = time.monotonic()
        status, headers, body = await chat(self, server, stream=True)
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertEqual(status, 200)
        errors = [e["error"] for e in sseEvents(body) if isinstance(e, dict) and "error" in e]
        self.assertEqual(errors[0]["code"], "upstream_rate_limited")
        self.assertIn("retry after 86400 s", errors[0]["message"])
        self.assertEqual(len(upstream.requests), 2)
