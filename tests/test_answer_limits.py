"""
The cap on a run's answer and the stall bound (L{ai_agent.limits},
L{ai_agent.flow}): an upstream answer is capped in size, and a streaming
client that stops reading makes the server stop reading the upstream;
memory measured on the server process.

From the second security and reliability round (issue 11): each hole the
hostile campaign found, pinned against a real server on 127.0.0.1 with an
upstream of the test's own where the upstream misbehaves.
"""

from __future__ import annotations

import json

import treq
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests._hostile import ScriptedUpstream, sseAnswer
from tests._misbehaving import (
    agentText,
    badServer,
    chat,
    client,
    floodConfig,
    sseEvents,
    textEvents,
)


class AnswerSizeTests(TestCase):
    """
    Item 5: an upstream answer is capped in size, and a streaming client
    that stops reading makes the server stop reading the upstream, within a
    bound after which the run is stopped; memory is measured as the server
    process's RSS.
    """

    timeout = 120

    async def test_hugeAnswerCapped(self) -> None:
        """
        A 100 MB answer of text stops at the run's 8 Mi-character cap: the
        non-streamed request gets a 502 C{answer_too_large}, the streamed
        one an in-band error with that code.  A 100 MB stream of chunks
        carrying nothing stops at the 64 MiB cap on an upstream body: a 502
        C{upstream_answer_too_large} (streamed too, since nothing had been
        sent).  The upstream connection is closed
        each time, and the server's RSS grows by less than 150 MB.
        """
        from tests._hostile import FloodAnswer, startServerProcess

        upstream = ScriptedUpstream().start(self)
        server = await startServerProcess(
            self, floodConfig(upstream), {"agent.ai": agentText()}, ("--verbose",)
        )
        from twisted.internet.task import LoopingCall

        before = server.rss()
        samples = [before]
        sampler = LoopingCall(lambda: samples.append(server.rss()))
        sampler.start(0.02)
        self.addCleanup(lambda: sampler.running and sampler.stop())
        cases = [
            (True, 20, "answer_too_large"),
            (False, 80, "upstream_answer_too_large"),
        ]
        for content, mostMB, code in cases:
            for stream in (False, True):
                flood = FloodAnswer(100 * 1024 * 1024, content=content)
                upstream.answers.append(flood)
                response = await client(self).post(
                    server.base + "/v1/chat/completions",
                    json={
                        "model": "agent",
                        "messages": [{"role": "user", "content": "hi"}],
                        "stream": stream,
                    },
                )
                body = await treq.content(response)
                await flood.closed
                self.assertLess(flood.sent, mostMB * 1024 * 1024)
                if stream and content:
                    # The text began the stream: the error is in-band.
                    self.assertEqual(response.code, 200)
                    errors = [
                        e["error"] for e in sseEvents(body) if isinstance(e, dict) and "error" in e
                    ]
                    self.assertEqual(errors[0]["code"], code)
                else:
                    # Nothing was sent yet: a real status.
                    self.assertEqual(response.code, 502, body[:300])
                    self.assertEqual(json.loads(body)["error"]["code"], code)
        sampler.stop()
        peak = max(samples)
        grown = (peak - before) / 2**20
        print(f"\nRSS before {before / 2**20:.0f} MB, peak {peak / 2**20:.0f} MB (+{grown:.0f})")
        self.assertLess(grown, 150)

    async def test_clientStopsReading(self) -> None:
        """
        A streaming client that reads nothing: the server stops reading the
        upstream (the bytes the upstream gets out stop growing, far below
        the 100 MB answer), its RSS stays within 60 MB of where it was, and
        after C{--client-stall-timeout} seconds it drops the client and
        closes the upstream connection.
        """
        import socket
        import time

        from tests._hostile import FloodAnswer, pause, startServerProcess

        upstream = ScriptedUpstream().start(self)
        server = await startServerProcess(
            self,
            floodConfig(upstream),
            {"agent.ai": agentText()},
            ("--verbose", "--client-stall-timeout", "4"),
        )
        before = server.rss()
        flood = FloodAnswer(100 * 1024 * 1024)
        upstream.answers.append(flood)
        body = json.dumps(
            {"model": "agent", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        ).encode()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        self.addCleanup(sock.close)
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        started = time.monotonic()
        await pause(2.0)
        plateau = flood.sent
        peak = server.rss()
        await pause(1.0)
        peak = max(peak, server.rss())
        self.assertLess(flood.sent - plateau, 2 * 1024 * 1024)
        self.assertLess(flood.sent, 30 * 1024 * 1024)
        await flood.closed.addTimeout(10, reactor)
        stoppedAfter = time.monotonic() - started
        self.assertGreater(stoppedAfter, 3.5)
        self.assertLess(stoppedAfter, 9)
        await pause(0.5)
        after = server.rss()
        grown = (max(peak, after) - before) / 2**20
        print(
            f"\nupstream sent {flood.sent / 2**20:.1f} MB before the pause; RSS +{grown:.0f} MB;"
            f" run stopped after {stoppedAfter:.1f} s"
        )
        self.assertLess(grown, 60)
        self.assertIn(b"read nothing for 4 s", server.output)

    async def test_runAnswerCapped(self) -> None:
        """
        A run whose answer text and progress pass the headend's cap (set to
        1,000 characters here; 8 Mi by default) is stopped: a 502
        C{answer_too_large} before the stream started, an in-band error
        after.
        """
        upstream = ScriptedUpstream().start(self)
        server = await badServer(self, upstream, streamHeadGrace=0.01)
        server.headend.maxAnswer = 1000
        for stream in (False, True):
            upstream.answers.append(sseAnswer(textEvents(["y" * 400] * 5)))
            status, headers, body = await chat(self, server, stream=stream)
            if stream:
                self.assertEqual(status, 200)
                errors = [
                    e["error"] for e in sseEvents(body) if isinstance(e, dict) and "error" in e
                ]
                self.assertEqual(errors[0]["code"], "answer_too_large")
                self.assertIn("past 1000 characters", errors[0]["message"])
            else:
                self.assertEqual(status, 502, body)
                self.assertEqual(json.loads(body)["error"]["code"], "answer_too_large")
