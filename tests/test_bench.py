"""
The benchmark's parsing and statistics (bench/_stats.py); the benchmark
itself is a tool, run with C{bench/run}, never by the suite.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from bench._report import figures, observeFigures, observeLines
from bench._stats import (
    ResponseParser,
    addedPerRound,
    checkResponsesStream,
    checkStream,
    completionText,
    cpuSeconds,
    median,
    percentile,
    ratio,
    rssKiB,
    summarize,
)


def _frame(content: str) -> bytes:
    chunk = {"choices": [{"index": 0, "delta": {"content": content}}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


class StatisticsTests(SynchronousTestCase):
    """
    Percentiles and round summaries.
    """

    def test_percentileInterpolates(self) -> None:
        """
        Percentiles interpolate linearly between ranks, as numpy's default.
        """
        values = [4.0, 1.0, 3.0, 2.0]
        self.assertEqual(percentile(values, 0), 1.0)
        self.assertEqual(percentile(values, 100), 4.0)
        self.assertEqual(percentile(values, 50), 2.5)
        self.assertAlmostEqual(percentile(values, 99), 3.97)
        self.assertEqual(median([5.0]), 5.0)

    def test_percentileRejectsNothing(self) -> None:
        """
        An empty sample or a percentile outside 0-100 is an error.
        """
        self.assertRaises(ValueError, percentile, [], 50)
        self.assertRaises(ValueError, percentile, [1.0], 101)

    def test_addedPerRound(self) -> None:
        """
        Added latency is computed round by round against the direct arm of
        the same round; a round missing on either side is skipped.
        """
        arm = {0: [2.0, 4.0, 6.0], 1: [3.0], 2: [9.0]}
        direct = {0: [1.0, 1.0, 1.0], 1: [1.0]}
        self.assertEqual(addedPerRound(arm, direct, 50), [3.0, 2.0])

    def test_summarize(self) -> None:
        """
        A summary is the median over rounds with the quartiles.
        """
        summary = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
        self.assertEqual((summary.value, summary.low, summary.high), (3.0, 2.0, 4.0))
        self.assertEqual(summary.rounds, 5)

    def test_ratio(self) -> None:
        """
        A ratio to nothing is undefined.
        """
        self.assertEqual(ratio(1.0, 4.0), 0.25)
        self.assertIsNone(ratio(1.0, 0.0))

    def test_proc(self) -> None:
        """
        CPU seconds and RSS are read from the C{/proc} formats, a command
        name with spaces and parentheses included.
        """
        stat = "42 (a (b) c) S " + " ".join(["0"] * 10) + " 300 200 0 0"
        import os

        ticks = os.sysconf("SC_CLK_TCK")
        self.assertAlmostEqual(cpuSeconds(stat), 500 / ticks)
        self.assertEqual(rssKiB("Name:\tx\nVmRSS:\t  1234 kB\n"), 1234)
        self.assertEqual(rssKiB("Name:\tx\n"), 0)


class ParsingTests(SynchronousTestCase):
    """
    Reading responses.
    """

    def test_chunkedAnySplit(self) -> None:
        """
        A chunked response fed in pieces of every size gives the same body,
        and bytes after it stay for the next response.
        """
        raw = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: text/event-stream\r\n\r\n"
            b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\nHTTP/1.1"
        )
        for size in range(1, len(raw) + 1):
            parser = ResponseParser()
            for i in range(0, len(raw), size):
                parser.feed(raw[i : i + size])
            self.assertTrue(parser.done, size)
            self.assertEqual(bytes(parser.body), b"hello, world")
            self.assertEqual(parser.status, 200)
            self.assertEqual(parser.headers["content-type"], "text/event-stream")
            self.assertEqual(bytes(parser.rest), b"HTTP/1.1")

    def test_contentLength(self) -> None:
        """
        A body with a length ends after that many bytes.
        """
        parser = ResponseParser()
        parser.feed(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nab")
        self.assertFalse(parser.done)
        parser.feed(b"cd")
        self.assertTrue(parser.done)
        self.assertEqual((parser.status, bytes(parser.body)), (503, b"abcd"))

    def test_untilClose(self) -> None:
        """
        A body without a length or chunking ends when the connection does.
        """
        parser = ResponseParser()
        parser.feed(b"HTTP/1.0 200 OK\r\n\r\nabc")
        self.assertFalse(parser.done)
        parser.close()
        self.assertTrue(parser.done)

    def test_streamIntact(self) -> None:
        """
        A stream is intact when every piece arrived once, in order, and
        C{[DONE]} ended it; the role chunk (empty content) is not a piece.
        """
        body = _frame("") + _frame("echo: ") + _frame("hi") + b"data: [DONE]\n\n"
        check = checkStream(body)
        self.assertEqual(check.pieces, ("echo: ", "hi"))
        self.assertTrue(check.intact(["echo: ", "hi"]))
        self.assertFalse(check.intact(["echo: hi"]))

    def test_streamDamaged(self) -> None:
        """
        A missing C{[DONE]}, an error frame, a frame that is not JSON, or a
        lost, repeated or merged piece makes a stream not intact.
        """
        expected = ["a", "b"]
        self.assertFalse(checkStream(_frame("a") + _frame("b")).intact(expected))
        error = b'data: {"error": {"message": "x"}}\n\n'
        done = b"data: [DONE]\n\n"
        self.assertFalse(checkStream(_frame("a") + _frame("b") + error + done).intact(expected))
        self.assertFalse(
            checkStream(_frame("a") + b"data: {nope\n\n" + _frame("b") + done).intact(expected)
        )
        self.assertFalse(
            checkStream(_frame("a") + _frame("a") + _frame("b") + done).intact(expected)
        )
        self.assertFalse(checkStream(_frame("ab") + done).intact(expected))

    def test_responsesStream(self) -> None:
        """
        A Responses API stream is intact when its text deltas arrived in
        order and C{response.completed} ended it; a C{response.failed} or
        a missing end makes it not intact.
        """

        def event(kind: str, **fields: str) -> bytes:
            data = json.dumps({"type": kind, **fields}).encode()
            return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"

        deltas = event("response.output_text.delta", delta="a") + event(
            "response.output_text.delta", delta="b"
        )
        body = event("response.created") + deltas + event("response.completed")
        self.assertEqual(checkResponsesStream(body).pieces, ("a", "b"))
        self.assertTrue(checkResponsesStream(body).intact(["a", "b"]))
        self.assertFalse(checkResponsesStream(deltas).intact(["a", "b"]))
        failed = deltas + event("response.failed") + event("response.completed")
        self.assertFalse(checkResponsesStream(failed).intact(["a", "b"]))

    def test_responsesFigures(self) -> None:
        """
        The Responses stream's added time to first token is taken against
        the upstream's own TTFT of the same round.
        """
        samples = {
            "ttft_c1": {"direct": {"0": {"ms": [1.0, 1.0]}}},
            "ttft_responses_c1": {"ai-agent": {"0": {"ms": [3.0, 3.0], "bad": 1}}},
        }
        f = figures(samples)
        self.assertEqual(f["ttft_responses_c1.p50.ai-agent"], 3.0)
        self.assertEqual(f["ttft_responses_c1.added_p50.ai-agent"]["value"], 2.0)
        self.assertEqual(f["ttft_responses_c1.bad.ai-agent"], 1)

    def test_completionText(self) -> None:
        """
        The answer of a non-streamed completion, or None for anything else.
        """
        body = json.dumps({"choices": [{"message": {"content": "hi"}}]}).encode()
        self.assertEqual(completionText(body), "hi")
        self.assertIsNone(completionText(b'{"error": {}}'))
        self.assertIsNone(completionText(b"nope"))


class ObserveReportTests(SynchronousTestCase):
    """
    The observability arms in the report.
    """

    def test_addedOverMetricsOff(self) -> None:
        """
        Each arm's added latency is taken against the metrics-off arm of the
        same round; CPU per request is the server's CPU share over the rate;
        the section has one row per arm measured.
        """
        samples = {
            "observe_latency_c1": {
                "off": {"0": {"ms": [1.0, 1.0, 1.0]}, "1": {"ms": [2.0]}},
                "metrics": {"0": {"ms": [1.5, 1.5, 1.5]}, "1": {"ms": [2.5]}},
                "tracing": {"0": {"ms": [3.0, 3.0, 3.0]}, "1": {"ms": [4.0]}},
            },
            "observe_rps": {
                arm: {"0": {"rps": rps, "cpu": {"server": 1.0, "upstream": 0.2}}}
                for arm, rps in (("off", 1000.0), ("metrics", 800.0), ("tracing", 500.0))
            },
        }
        f = observeFigures(samples)
        self.assertEqual(f["added_p50.metrics"]["value"], 0.5)
        self.assertEqual(f["added_p50.tracing"]["value"], 2.0)
        self.assertNotIn("added_p50.off", f)
        self.assertEqual(
            (f["cpuUs.off"], f["cpuUs.metrics"], f["cpuUs.tracing"]), (1000.0, 1250.0, 2000.0)
        )
        rows = [
            line for line in observeLines(samples) if line.startswith("| ") and "---" not in line
        ]
        self.assertEqual(
            [row.split(" | ")[0] for row in rows[1:]], ["| off", "| metrics", "| tracing"]
        )
        self.assertEqual(observeLines({}), [])
