"""
Big request bodies (L{ai_agent.headends._bodies}): they do not stall
other clients, concurrent ones have bounded memory (measured on the
server process), and they are parsed one at a time with a bounded queue.

From the second security and reliability round (issue 11): each hole the
hostile campaign found, pinned against a real server on 127.0.0.1 with an
upstream of the test's own where the upstream misbehaves.
"""

from __future__ import annotations

import json
import re
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests._hostile import ScriptedUpstream
from tests._misbehaving import (
    agentText,
    floodConfig,
    responseBody,
    statusAndBody,
)


def responseComplete(raw: bytes) -> bool:
    """
    Whether C{raw} holds a whole response (by its C{Content-Length}, or the
    last chunk).
    """
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    headers = head.lower()
    if b"transfer-encoding: chunked" in headers:
        return body.endswith(b"0\r\n\r\n")
    match = re.search(rb"content-length: *(\d+)", headers)
    return match is not None and len(body) >= int(match.group(1))


class BigBodyTests(TestCase):
    """
    Item 6: big JSON bodies do not stall other clients, and concurrent big
    bodies have bounded memory; measured on the server process.
    """

    timeout = 180

    async def measure(
        self, server: Any, bodies: list[bytes]
    ) -> tuple[list[float], list[int], int, list[bytes]]:
        """
        Post C{bodies} at once (each on its own connection) while polling
        C{/health} every 10 ms on a kept-alive connection; return the
        health latencies (s), the statuses of the posts, the peak RSS
        growth (bytes) and the answers.
        """
        import socket
        import time

        from twisted.internet.task import LoopingCall

        latencies: list[float] = []
        before = server.rss()
        samples = [before]
        sampler = LoopingCall(lambda: samples.append(server.rss()))
        sampler.start(0.01)

        def poll(stop: list[bool]) -> None:
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
                while not stop:
                    started = time.monotonic()
                    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                    got = b""
                    while not responseComplete(got):
                        got += s.recv(65536)
                    latencies.append(time.monotonic() - started)
                    time.sleep(0.01)

        def post(body: bytes) -> tuple[int, bytes]:
            with socket.create_connection(("127.0.0.1", server.port), timeout=60) as s:
                s.sendall(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/json\r\nConnection: close\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body) + body
                )
                got = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
            status, headers, rest = statusAndBody(got)
            return status, responseBody(headers, rest)

        from twisted.internet.defer import gatherResults

        from tests._hostile import pause

        stop: list[bool] = []
        poller = deferToThreadWithPool(poll, stop)
        try:
            await pause(0.3)
            results = await gatherResults([deferToThreadWithPool(post, body) for body in bodies])
            await pause(0.2)
        finally:
            stop.append(True)
            sampler.stop()
        await poller
        return (
            latencies,
            [status for status, _ in results],
            max(samples) - before,
            [rest for _, rest in results],
        )

    async def test_bracketFlood(self) -> None:
        """
        Ten 8 MiB bodies of C{{}} objects sent at once are each refused with
        a 400 naming the limit on arrays and objects; meanwhile C{/health}
        answers within 150 ms every time, and the server's RSS grows by less
        than 120 MB.  Ten 8 MiB bodies of ordinary text (one long message
        each) are parsed with C{/health} as responsive, and answered (404
        for their unknown model).
        """
        from tests._hostile import startServerProcess

        upstream = ScriptedUpstream().start(self)
        server = await startServerProcess(
            self, floodConfig(upstream), {"agent.ai": agentText()}, ("--verbose",)
        )
        head = b'{"model":"agent","messages":[{"role":"user","content":"x"}],"x":['
        count = (8 * 1024 * 1024 - 1024 - len(head)) // 3
        flood = head + b",".join([b"{}"] * count) + b"]}"
        text = json.dumps(
            {"model": "nobody", "messages": [{"role": "user", "content": "y " * 4_000_000}]}
        ).encode()
        report = []
        for label, body, expected in (("{} flood", flood, 400), ("long text", text, 404)):
            latencies, statuses, grown, answers = await self.measure(server, [body] * 10)
            worst = max(latencies)
            report.append(
                f"{label}: {len(latencies)} health checks, worst {worst * 1000:.0f} ms,"
                f" RSS +{grown / 2**20:.0f} MB"
            )
            print(report[-1])
            self.assertEqual(statuses, [expected] * 10, answers[0][:300])
            if expected == 400:
                self.assertEqual(json.loads(answers[0])["error"]["code"], "request_too_complex")
            self.assertLess(worst, 0.150, report[-1])
            self.assertLess(grown, 120 * 2**20, report[-1])
        print("\n" + "\n".join(report))


def deferToThreadWithPool(f: Any, *args: Any) -> Any:
    """
    Run a blocking client function in a thread pool of its own (the
    reactor's default pool is small and shared with the code under test).
    """
    from twisted.internet.threads import deferToThreadPool
    from twisted.python.threadpool import ThreadPool

    global _clientPool
    if _clientPool is None:
        _clientPool = ThreadPool(minthreads=0, maxthreads=16, name="test-clients")
        _clientPool.start()
        reactor.addSystemEventTrigger("during", "shutdown", _clientPool.stop)
    return deferToThreadPool(reactor, _clientPool, f, *args)


_clientPool: Any = None


class BodyGateTests(TestCase):
    """
    Item 6: large bodies are parsed one at a time, and only so many may
    wait.
    """

    def test_queueBounded(self) -> None:
        """
        With one slot and room for two waiting bodies, a fourth large body
        is refused with a 503 and C{Retry-After}; a waiting body that is
        cancelled leaves the queue, and the next body parses once the
        running one is done.
        """
        import io

        from ai_agent.errors import AgentError
        from ai_agent.headends._bodies import BodyGate

        class HeldPool:
            def __init__(self) -> None:
                self.work: list[Any] = []

            def callInThreadWithCallback(self, onResult: Any, f: Any, *a: Any, **k: Any) -> None:
                self.work.append((onResult, f))

            def finishOne(self) -> None:
                onResult, f = self.work.pop(0)
                onResult(True, f())

        class Now:
            def callFromThread(self, f: Any, *args: Any) -> None:
                f(*args)

        pool = HeldPool()
        gate = BodyGate(Now(), pool, slots=1, maxWaiting=2)
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}).encode()
        first = gate.parse(io.BytesIO(body))
        second = gate.parse(io.BytesIO(body))
        third = gate.parse(io.BytesIO(body))
        fourth = gate.parse(io.BytesIO(body))
        refused = self.failureResultOf(fourth, AgentError).value
        self.assertEqual(
            (refused.status, refused.code, refused.retryAfter), (503, "overloaded", 1.0)
        )
        self.assertEqual(len(pool.work), 1)
        second.cancel()
        self.failureResultOf(second)
        self.assertEqual(gate.waiting, 1)
        pool.finishOne()
        self.assertEqual(self.successResultOf(first).model, "m")
        self.assertEqual(len(pool.work), 1)
        pool.finishOne()
        self.assertEqual(self.successResultOf(third).model, "m")
        self.assertEqual(gate.waiting, 0)
