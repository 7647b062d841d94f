"""
The benchmark's parsing and statistics (bench/_stats.py), its fake
upstream's answers (bench/_upstream.py), the client-tool round trip and its
place in the report; the benchmark itself is a tool, run with C{bench/run},
never by the suite (one test starts the bench upstream, a small process).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
from typing import Any
from unittest import mock

import attrs
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from ai_agent.store import defaultStorePath
from ai_agent.testing import wordPieces
from bench import _client, _report, _run
from bench._client import Target
from bench._report import (
    allFiguresTable,
    figures,
    headendLines,
    latencyCurves,
    observeFigures,
    observeLines,
    targetsTable,
    toolFigures,
    toolLines,
)
from bench._stats import (
    ResponseParser,
    a2aText,
    addedPerRound,
    checkA2AStream,
    checkMessagesStream,
    checkResponsesStream,
    checkStream,
    completionText,
    cpuSeconds,
    handedBackCall,
    median,
    messagesText,
    percentile,
    ratio,
    readAgentStream,
    responsesText,
    rssKiB,
    summarize,
)
from bench._upstream import BenchUpstream, argumentName


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


# The client-tool round trip.

WEATHER = _run.WEATHER_TOOL
ASK = {"role": "user", "content": "weather in Paris"}


def _post(
    upstream: BenchUpstream, body: dict[str, Any], path: bytes = b"/v1/chat/completions"
) -> tuple[DummyRequest, bytes]:
    """
    POST C{body} to the bench upstream; the request and what it wrote.
    """
    request = DummyRequest([])
    request.method = b"POST"
    request.path = path
    request.content = io.BytesIO(json.dumps(body).encode())
    request._disconnected = False
    result = upstream.render_POST(request)
    if result is NOT_DONE_YET:
        return request, b"".join(request.written)
    assert isinstance(result, bytes)
    return request, result


def _events(body: bytes) -> list[Any]:
    """
    The data of every SSE event of C{body}, C{[DONE]} as the string.
    """
    events: list[Any] = []
    for block in body.split(b"\n\n"):
        if block:
            assert block.startswith(b"data: "), block
            data = block[len(b"data: ") :]
            events.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return events


def _continuation(callId: str, result: str = "sunny 21 C") -> list[dict[str, Any]]:
    call = {
        "id": callId,
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"text":"weather in Paris"}'},
    }
    return [
        ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": callId, "content": result},
    ]


class UpstreamToolTests(SynchronousTestCase):
    """
    The bench upstream calls the client's tool, then answers its result.
    """

    def test_toolCallNotStreamed(self) -> None:
        """
        A request with tools whose last message is a user message is
        answered with one call of the first function tool (tools of
        another type are passed over), its arguments the user message as
        C{text}, C{content} null and finish reason C{tool_calls}.
        """
        upstream = BenchUpstream(Clock())
        tools = [{"type": "web_search"}, WEATHER, {**WEATHER, "function": {"name": "other"}}]
        _, raw = _post(upstream, {"model": "m", "messages": [ASK], "tools": tools})
        body = json.loads(raw)
        choice = body["choices"][0]
        self.assertEqual(choice["finish_reason"], "tool_calls")
        self.assertEqual(
            choice["message"],
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_bench_1",
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "arguments": '{"text":"weather in Paris"}',
                        },
                    }
                ],
            },
        )
        self.assertEqual(handedBackCall(raw), choice["message"]["tool_calls"][0])

    def test_toolCallStreamed(self) -> None:
        """
        Streamed, the call goes out as OpenAI streams one: after the role
        chunk, a delta with index 0, the id, the type, the name and empty
        arguments, then deltas with only the index and pieces of the
        arguments, which join to the whole; no content on the way; one
        finish chunk (C{tool_calls}), the usage chunk when asked, C{[DONE]}.
        """
        upstream = BenchUpstream(Clock())
        body = {
            "model": "m",
            "messages": [ASK],
            "tools": [WEATHER],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        request, raw = _post(upstream, body)
        self.assertEqual(request.finished, 1)
        events = _events(raw)
        self.assertEqual(events[-1], "[DONE]")
        self.assertEqual(events[-2]["choices"], [])
        self.assertIn("usage", events[-2])
        chunks = [event["choices"][0] for event in events[:-2]]
        self.assertEqual(chunks[0]["delta"], {"role": "assistant", "content": ""})
        self.assertEqual(
            [c["finish_reason"] for c in chunks], [None] * (len(chunks) - 1) + ["tool_calls"]
        )
        self.assertEqual(chunks[-1]["delta"], {})
        deltas = [c["delta"]["tool_calls"] for c in chunks[1:-1]]
        self.assertTrue(all("content" not in c["delta"] for c in chunks[1:-1]))
        self.assertEqual(
            deltas[0],
            [
                {
                    "index": 0,
                    "id": "call_bench_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ],
        )
        self.assertGreaterEqual(len(deltas), 3)
        for delta in deltas[1:]:
            self.assertEqual(len(delta), 1)
            self.assertEqual(set(delta[0]), {"index", "function"})
            self.assertEqual(delta[0]["index"], 0)
            self.assertEqual(set(delta[0]["function"]), {"arguments"})
        arguments = "".join(d[0]["function"]["arguments"] for d in deltas)
        self.assertEqual(json.loads(arguments), {"text": "weather in Paris"})

    def test_slowStreamSameFrames(self) -> None:
        """
        The slow mode drips the same frames, tool call or text, one per
        interval, and ends the stream after the last.
        """
        for messages in ([ASK], _continuation("call_x")):
            body = {"model": "m", "messages": messages, "tools": [WEATHER], "stream": True}
            fast, raw = _post(BenchUpstream(Clock()), body)
            clock = Clock()
            slow, _ = _post(BenchUpstream(clock), body, b"/slow/v1/chat/completions")
            # The role chunk and the first frame at once, then one per interval.
            self.assertEqual(len(slow.written), 2)
            clock.advance(0.02)
            self.assertEqual(len(slow.written), 3)
            self.assertFalse(slow.finished)
            clock.pump([0.02] * 20)
            self.assertEqual(slow.finished, 1)
            self.assertEqual(b"".join(slow.written), raw)

    def test_toolResultAnswersText(self) -> None:
        """
        A request whose last message is a tool result is answered with
        C{"result: "} and that result (not the user message), finish reason
        C{stop}; streamed, word by word, every frame intact.
        """
        body = {"model": "m", "messages": _continuation("call_1"), "tools": [WEATHER]}
        _, raw = _post(BenchUpstream(Clock()), body)
        self.assertEqual(completionText(raw), "result: sunny 21 C")
        self.assertEqual(json.loads(raw)["choices"][0]["finish_reason"], "stop")
        self.assertIsNone(handedBackCall(raw))
        _, streamed = _post(BenchUpstream(Clock()), {**body, "stream": True})
        self.assertTrue(checkStream(streamed).intact(wordPieces("result: sunny 21 C")))
        self.assertEqual(_events(streamed)[-2]["choices"][0]["finish_reason"], "stop")

    def test_withoutToolsEchoAsBefore(self) -> None:
        """
        Without tools, or with tools none of which is a function, a user
        message is echoed as before.
        """
        for tools in (None, [], [{"type": "web_search"}]):
            body: dict[str, Any] = {"model": "m", "messages": [ASK]}
            if tools is not None:
                body["tools"] = tools
            _, raw = _post(BenchUpstream(Clock()), body)
            self.assertEqual(completionText(raw), "echo: weather in Paris", tools)
            _, streamed = _post(BenchUpstream(Clock()), {**body, "stream": True})
            self.assertTrue(checkStream(streamed).intact(wordPieces("echo: weather in Paris")))

    def test_handedBackCall(self) -> None:
        """
        A completion counts as a handed-back call only with finish reason
        C{tool_calls} and exactly one well-formed call.
        """
        call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}

        def body(calls: Any, reason: str = "tool_calls") -> bytes:
            message = {"role": "assistant", "content": None, "tool_calls": calls}
            return json.dumps({"choices": [{"message": message, "finish_reason": reason}]}).encode()

        self.assertEqual(handedBackCall(body([call])), call)
        self.assertIsNone(handedBackCall(body([call], "stop")))
        self.assertIsNone(handedBackCall(body([call, {**call, "id": "c2"}])))
        self.assertIsNone(handedBackCall(body([])))
        self.assertIsNone(handedBackCall(body([{**call, "id": ""}])))
        self.assertIsNone(handedBackCall(body([{**call, "function": {"name": "f"}}])))
        self.assertIsNone(
            handedBackCall(body([{**call, "function": {"name": "f", "arguments": {}}}]))
        )
        self.assertIsNone(handedBackCall(b"nope"))


class ToolTripMeasureTests(SynchronousTestCase):
    """
    C{measureToolTrip} against a real bench upstream process, and against
    one that never calls the tool.
    """

    def test_directArm(self) -> None:
        """
        Against the bench upstream every trip is right: each is timed as the
        sum of its two requests, none is bad.
        """
        process = subprocess.Popen(
            [sys.executable, "-m", "bench._upstream", "--port", "0"],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": _run.ROOT},
        )
        self.addCleanup(process.wait, 10)
        self.addCleanup(process.kill)
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        result = asyncio.run(_run.measureToolTrip(Target(port, "/v1", "m"), 5))
        self.assertEqual(result["bad"], 0)
        self.assertEqual(len(result["ms"]), 5)
        self.assertEqual(len(result["legsMs"]), 5)
        for total, (one, two) in zip(result["ms"], result["legsMs"], strict=True):
            self.assertGreater(one, 0)
            self.assertGreater(two, 0)
            self.assertAlmostEqual(total, one + two, places=3)

    def test_wrongAnswersAreBad(self) -> None:
        """
        A server that answers text instead of calling the tool makes every
        trip bad, and none is timed.
        """
        text = json.dumps(
            {"choices": [{"message": {"role": "assistant", "content": "hi"}, "index": 0}]}
        ).encode()
        answer = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(text)).encode() + b"\r\n\r\n" + text
        )

        async def main() -> dict[str, Any]:
            async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = next(
                        int(h.split(b":")[1])
                        for h in head.split(b"\r\n")
                        if h.lower().startswith(b"content-length:")
                    )
                    await reader.readexactly(length)
                    writer.write(answer)

            server = await asyncio.start_server(serve, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            try:
                return await _run.measureToolTrip(Target(port, "/v1", "m"), 4)
            finally:
                server.close()

        result = asyncio.run(main())
        self.assertEqual((result["bad"], result["ms"]), (4, []))


class ToolTripReportTests(SynchronousTestCase):
    """
    The client-tool round trip in the report.
    """

    def samples(self) -> dict[str, Any]:
        def arm(scale: float) -> dict[str, Any]:
            return {
                "0": {"ms": [1.0 * scale] * 3, "bad": 0},
                "1": {"ms": [2.0 * scale] * 3, "bad": 0},
            }

        trips = {
            "direct": {
                "0": {"ms": [0.5, 0.5], "legsMs": [[0.2, 0.3], [0.2, 0.3]], "bad": 0},
                "1": {"ms": [0.7], "legsMs": [[0.3, 0.4]], "bad": 1},
            },
            "ai-agent": {
                "0": {"ms": [4.5, 4.5], "legsMs": [[2.0, 2.5], [2.0, 2.5]], "bad": 0},
                "1": {"ms": [3.7], "legsMs": [[1.5, 2.2]], "bad": 0},
            },
        }
        return {
            "latency_c1": {"direct": arm(0.1), "ai-agent": arm(1)},
            "tools_c1": trips,
        }

    def test_addedOverDirect(self) -> None:
        """
        The round trip's added latency is ours minus direct in the same
        round (4.0 and 3.0 here: median 3.5); failures are summed over
        rounds; each request's p50 is a median over rounds.
        """
        f = figures(self.samples())
        self.assertEqual(f["tools_c1.added_p50.ai-agent"]["value"], 3.5)
        self.assertEqual(f["tools_c1.added_p99.ai-agent"]["value"], 3.5)
        self.assertEqual(f["tools_c1.p50.direct"], 0.6)
        self.assertEqual(f["tools_c1.p50.ai-agent"], 4.1)
        self.assertEqual((f["tools_c1.bad.direct"], f["tools_c1.bad.ai-agent"]), (1, 0))
        self.assertEqual(f["tools_c1.legs_p50.ai-agent"], [1.75, 2.35])
        self.assertNotIn("tools_c1.added_p50.direct", f)

    def test_tableRows(self) -> None:
        """
        The All figures table has the round trip's rows, with the added
        latency in the ai-agent column and n/a for direct.
        """
        rows = {
            line.split(" | ")[0][2:]: line.split(" | ")[1:]
            for line in allFiguresTable(figures(self.samples()))
        }
        label = "client-tool round trip (2 requests), c=1"
        self.assertEqual(rows[f"{label}: p50"], ["0.600", "4.100 |"])
        self.assertEqual(rows[f"{label}: added p50"], ["n/a", "3.500 (IQR 3.250–3.750) |"])
        self.assertEqual(rows[f"{label}: failed or wrong answers"], ["1", "0 |"])
        self.assertEqual(
            rows["client-tool round trip: p50 of request 1 (tool call) / request 2 (answer)"],
            ["0.250 / 0.350", "1.750 / 2.350 |"],
        )

    def test_oldSamplesWithout(self) -> None:
        """
        Samples of a run from before the round trip was measured give no
        such rows and no such plot, rather than rows of n/a.
        """
        samples = self.samples()
        del samples["tools_c1"]
        table = "\n".join(allFiguresTable(figures(samples)))
        self.assertNotIn("client-tool", table)
        self.assertIn("latency, non-streamed, c=1: p50", table)
        self.assertEqual([c[0] for c in latencyCurves(samples)], ["latency_c1"])
        self.assertEqual([c[0] for c in latencyCurves(self.samples())], ["latency_c1", "tools_c1"])


class SetupTests(SynchronousTestCase):
    """
    Where the servers under test keep their state.
    """

    def test_stateInsideTheBenchDirectory(self) -> None:
        """
        The servers get the bench's temporary directory as C{HOME} and
        C{XDG_STATE_HOME} under it, whatever the caller's environment says,
        so the run store's default SQLite file is never in the user's home.
        """
        with mock.patch.dict(os.environ, {"XDG_STATE_HOME": "/nowhere/state", "HOME": "/home/u"}):
            setup = _run.Setup.create(1)
        self.addCleanup(shutil.rmtree, setup.directory, True)
        self.assertEqual(setup.env["HOME"], setup.directory)
        self.assertTrue(defaultStorePath(setup.env).startswith(setup.directory + os.sep))
        self.assertEqual(
            defaultStorePath(setup.env),
            os.path.join(setup.directory, "state", "ai-agent", "store.sqlite3"),
        )


# The other headends.


def _sse(kind: str, **fields: Any) -> bytes:
    data = json.dumps({"type": kind, **fields}).encode()
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


class HeadendParsingTests(SynchronousTestCase):
    """
    Reading the Responses API's and Anthropic's answers.
    """

    def test_messagesStream(self) -> None:
        """
        An Anthropic stream's pieces are its C{text_delta} texts (not its
        C{thinking_delta}s); it is intact when C{message_stop} ended it and
        no C{error} event came.
        """
        text = [
            _sse("content_block_delta", index=1, delta={"type": "text_delta", "text": t})
            for t in ("a", "b")
        ]
        thinking = _sse(
            "content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "x"}
        )
        body = _sse("message_start", message={}) + thinking + b"".join(text)
        check = checkMessagesStream(body + _sse("message_stop"))
        self.assertEqual(check.pieces, ("a", "b"))
        self.assertTrue(check.intact(["a", "b"]))
        self.assertFalse(checkMessagesStream(body).intact(["a", "b"]))
        broken = body + _sse("error", error={"type": "overloaded_error"}) + _sse("message_stop")
        self.assertFalse(checkMessagesStream(broken).intact(["a", "b"]))

    def test_a2aStream(self) -> None:
        """
        An A2A stream's pieces are its C{artifactUpdate}s' non-empty texts
        (not the task nor the status messages); it is intact when a
        completed status came, not when the task failed.
        """

        def data(value: object) -> bytes:
            return b"data: " + json.dumps(value).encode() + b"\n\n"

        def chunk(text: str) -> bytes:
            return data({"artifactUpdate": {"artifact": {"parts": [{"text": text}]}}})

        def status(state: str) -> bytes:
            return data({"statusUpdate": {"status": {"state": state}}})

        body = data({"task": {"id": "t"}}) + status("TASK_STATE_WORKING")
        body += chunk("a") + chunk("b") + chunk("")
        check = checkA2AStream(body + status("TASK_STATE_COMPLETED"))
        self.assertEqual(check.pieces, ("a", "b"))
        self.assertTrue(check.intact(["a", "b"]))
        self.assertFalse(checkA2AStream(body).intact(["a", "b"]))
        self.assertFalse(checkA2AStream(body + status("TASK_STATE_FAILED")).intact(["a", "b"]))
        self.assertIsNone(_client._CONTENT.search(data({"task": {"id": "t"}})))
        self.assertIsNotNone(_client._CONTENT.search(chunk("a")))

    def test_a2aText(self) -> None:
        """
        A blocking A2A send's answer is its completed task's artifact text;
        a task in any other state is None.
        """
        task = {
            "status": {"state": "TASK_STATE_COMPLETED"},
            "artifacts": [{"parts": [{"text": "echo: "}, {"text": "ping"}]}],
        }
        self.assertEqual(a2aText(json.dumps({"task": task}).encode()), "echo: ping")
        failed = {**task, "status": {"state": "TASK_STATE_FAILED"}}
        self.assertIsNone(a2aText(json.dumps({"task": failed}).encode()))
        self.assertIsNone(a2aText(b"{}"))

    def test_firstTokenPattern(self) -> None:
        """
        The client's first-token pattern finds an Anthropic C{text_delta},
        and none of the frames before it (the message, the empty text
        block).
        """
        before = _sse("message_start", message={"content": []}) + _sse(
            "content_block_start", index=0, content_block={"type": "text", "text": ""}
        )
        delta = _sse("content_block_delta", index=0, delta={"type": "text_delta", "text": "e"})
        self.assertIsNone(_client._CONTENT.search(before))
        self.assertIsNotNone(_client._CONTENT.search(before + delta))

    def test_wholeAnswers(self) -> None:
        """
        A non-streamed answer's text: the Responses API's C{output_text}
        parts of a completed response, Anthropic's C{text} blocks of a
        message that ended its turn; anything else is None.
        """
        response = {
            "status": "completed",
            "output": [
                {"type": "reasoning", "summary": []},
                {"type": "message", "content": [{"type": "output_text", "text": "echo: ping"}]},
            ],
        }
        self.assertEqual(responsesText(json.dumps(response).encode()), "echo: ping")
        failed = {**response, "status": "failed"}
        self.assertIsNone(responsesText(json.dumps(failed).encode()))
        message = {
            "type": "message",
            "stop_reason": "end_turn",
            "content": [{"type": "thinking", "thinking": "x"}, {"type": "text", "text": "hi"}],
        }
        self.assertEqual(messagesText(json.dumps(message).encode()), "hi")
        cut = {**message, "stop_reason": "max_tokens"}
        self.assertIsNone(messagesText(json.dumps(cut).encode()))
        self.assertIsNone(messagesText(b'{"type": "error"}'))

    def test_messagesRequest(self) -> None:
        """
        A Messages request carries C{max_tokens} and Anthropic's headers
        (C{x-api-key}, C{anthropic-version}), not a bearer token.
        """
        raw = Target(8000, "/v1", "bench", "sk-x").messages("hi", True)
        head, _, body = raw.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"POST /v1/messages HTTP/1.1\r\n"))
        self.assertIn(b"\r\nx-api-key: sk-x", head)
        self.assertIn(b"\r\nanthropic-version: 2023-06-01", head)
        self.assertNotIn(b"Authorization", head)
        self.assertEqual(
            json.loads(body),
            {
                "model": "bench",
                "max_tokens": 1024,
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
            },
        )


class HeadendReportTests(SynchronousTestCase):
    """
    The other headends in the report: added over the upstream's Chat
    Completions figure, as a ratio to Chat Completions' added figure, and
    the target row.
    """

    def samples(self, responses: float, messages: float, mcp: float = 1.02) -> dict[str, Any]:
        def rounds(*values: float) -> dict[str, Any]:
            return {str(r): {"ms": [v, v], "bad": 0} for r, v in enumerate(values)}

        trips = {
            "direct": {"0": {"ms": [0.5], "legsMs": [[0.2, 0.3]], "bad": 0}},
            "ai-agent": {"0": {"ms": [2.5], "legsMs": [[1.2, 1.3]], "bad": 0}},
        }
        return {
            "latency_c1": {"direct": rounds(0.2, 0.3), "ai-agent": rounds(1.2, 1.3)},
            "latency_responses_c1": {"ai-agent": rounds(0.2 + responses, 0.3 + responses)},
            "latency_messages_c1": {"ai-agent": rounds(0.2 + messages, 0.3 + messages)},
            "latency_mcp_c1": {"ai-agent": rounds(0.2 + mcp, 0.3 + mcp)},
            "ttft_c1": {"direct": rounds(0.1), "ai-agent": rounds(1.1)},
            "ttft_messages_c1": {"ai-agent": rounds(1.6)},
            "tools_c1": trips,
        }

    def test_ratios(self) -> None:
        """
        Each headend's added p50 is taken against the upstream's chat
        latency of the same round, and divided by Chat Completions' added
        p50; the client-tool round trip's per-request figure is the mean of
        its two requests' added p50.
        """
        f = figures(self.samples(1.05, 1.2))
        self.assertAlmostEqual(f["latency_responses_c1.added_p50.ai-agent"]["value"], 1.05)
        self.assertAlmostEqual(f["latency_responses_c1.vsChat.ai-agent"], 1.05)
        self.assertAlmostEqual(f["latency_messages_c1.vsChat.ai-agent"], 1.2)
        self.assertAlmostEqual(f["latency_mcp_c1.vsChat.ai-agent"], 1.02)
        self.assertAlmostEqual(f["ttft_messages_c1.added_p50.ai-agent"]["value"], 1.5)
        self.assertAlmostEqual(f["ttft_messages_c1.vsChat.ai-agent"], 1.5)
        self.assertAlmostEqual(f["tools_c1.perRequestAdded.ai-agent"]["value"], 1.0)
        self.assertAlmostEqual(f["tools_c1.vsChat.ai-agent"], 1.0)
        lines = headendLines(f)
        anthropic = next(line for line in lines if line.startswith("| Anthropic"))
        self.assertIn("| 1.20× |", anthropic)
        self.assertIn("| 1.50× |", anthropic)

    def test_targetRow(self) -> None:
        """
        The target is met when every ratio is within 10 %, not met when one
        is above, and not measured while one is missing and none is above.
        """
        name = "Responses / Anthropic / MCP tools/call / client-tool round trip within 10 %"

        def verdict(samples: dict[str, Any]) -> tuple[str, str]:
            rows = targetsTable(samples, figures(samples))
            row = next(r for r in rows if r[0].startswith(name))
            return row[2], row[3]

        measured, ok = verdict(self.samples(1.05, 1.08))
        self.assertEqual(ok, "met")
        self.assertIn("Responses 1.05×, Anthropic 1.08×, MCP tools/call 1.02×", measured)
        self.assertEqual(verdict(self.samples(1.05, 1.2))[1], "**not met**")
        self.assertEqual(verdict(self.samples(1.05, 1.05, 1.3))[1], "**not met**")
        partial = self.samples(1.0, 1.0)
        del partial["latency_messages_c1"]
        measured, ok = verdict(partial)
        self.assertEqual(ok, "not measured")
        self.assertIn("Anthropic n/a", measured)
        partial["latency_responses_c1"] = {"ai-agent": {"0": {"ms": [9.0], "bad": 0}}}
        self.assertEqual(verdict(partial)[1], "**not met**")
        old = self.samples(1.0, 1.0)
        for figure in ("latency_responses_c1", "latency_messages_c1", "latency_mcp_c1", "tools_c1"):
            del old[figure]
        rows = targetsTable(old, figures(old))
        self.assertFalse([r for r in rows if r[0].startswith(name)])
        self.assertEqual(headendLines(figures(old)), [])

    def test_a2aTargetRow(self) -> None:
        """
        The A2A arm has its own target row (its streamed message's added
        time to the first piece against Chat Completions'), absent from a
        run that did not measure it.
        """
        name = "A2A streamed message within 10 %"
        samples = self.samples(1.0, 1.0)
        self.assertFalse(
            [r for r in targetsTable(samples, figures(samples)) if r[0].startswith(name)]
        )
        chat = samples["ttft_c1"]
        samples["ttft_a2a_c1"] = {"ai-agent": chat["ai-agent"]}
        [row] = [r for r in targetsTable(samples, figures(samples)) if r[0].startswith(name)]
        self.assertEqual((row[2], row[3]), ("1.00×", "met"))

    def test_anthropicTargetRow(self) -> None:
        """
        Anthropic Messages has issue 29's own bound, 5 % over Chat
        Completions' added latency: 1.04× is met, 1.08× (within the other
        headends' 10 %) is not.
        """
        name = "Anthropic Messages within 5 %"

        def verdict(samples: dict[str, Any]) -> tuple[str, str]:
            [row] = [r for r in targetsTable(samples, figures(samples)) if r[0].startswith(name)]
            return row[2], row[3]

        self.assertEqual(verdict(self.samples(1.0, 1.04)), ("1.04×", "met"))
        self.assertEqual(verdict(self.samples(1.0, 1.08)), ("1.08×", "**not met**"))

    def test_a2aSendTargetRow(self) -> None:
        """
        The blocking A2A send has a row of its own beside the streamed one,
        its added latency against Chat Completions', absent when unmeasured.
        """
        name = "A2A blocking message:send within 10 %"
        samples = self.samples(1.0, 1.0)
        self.assertFalse(
            [r for r in targetsTable(samples, figures(samples)) if r[0].startswith(name)]
        )
        samples["latency_a2a_c1"] = {"ai-agent": samples["latency_c1"]["ai-agent"]}
        [row] = [r for r in targetsTable(samples, figures(samples)) if r[0].startswith(name)]
        self.assertEqual((row[2], row[3]), ("1.00×", "met"))


# Tools inside a run: the MCP server and a sub-agent.

SUBAGENT_TOOL = {
    "type": "function",
    "function": {
        "name": "agent__child",
        "description": "benchmark agent (child)",
        "parameters": {
            "type": "object",
            "properties": {"prompt": {"type": "string"}},
            "required": ["prompt"],
        },
    },
}


class UpstreamArgumentsTests(SynchronousTestCase):
    """
    The bench upstream fills the tool's first required string parameter.
    """

    def test_subAgentPrompt(self) -> None:
        """
        A sub-agent tool (C{{"prompt": string}}, required) is called with
        the user's message as C{prompt}.
        """
        body = {"model": "m", "messages": [ASK], "tools": [SUBAGENT_TOOL]}
        _, raw = _post(BenchUpstream(Clock()), body)
        call = handedBackCall(raw)
        assert call is not None
        self.assertEqual(call["function"]["name"], "agent__child")
        self.assertEqual(json.loads(call["function"]["arguments"]), {"prompt": "weather in Paris"})

    def test_argumentName(self) -> None:
        """
        The first required property of type string names the argument; a
        schema without one (none required, only other types, not a schema)
        gets C{text}.
        """
        schema = {
            "type": "object",
            "properties": {"n": {"type": "integer"}, "q": {"type": "string"}},
            "required": ["n", "q"],
        }
        self.assertEqual(argumentName(schema), "q")
        self.assertEqual(argumentName(WEATHER["function"]["parameters"]), "text")
        self.assertEqual(argumentName({**schema, "required": ["n"]}), "text")
        self.assertEqual(argumentName({"type": "object"}), "text")
        self.assertEqual(argumentName(None), "text")


def _chunk(delta: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps({"choices": [{"index": 0, "delta": delta}]}).encode() + b"\n\n"


class AgentStreamTests(SynchronousTestCase):
    """
    Timing a tool call inside a run from the frames the client reads.
    """

    def body(self) -> tuple[bytes, bytes, bytes]:
        start = _chunk({"reasoning_content": 'calling s__echo {"text": "hi"}\n'})
        end = _chunk({"reasoning_content": "s__echo → hi\n"})
        answer = _chunk({"content": "result: "}) + _chunk({"content": "hi"})
        return start, end, answer + b"data: [DONE]\n\n"

    def test_span(self) -> None:
        """
        The call's time is from the read that completed the frame saying
        C{calling <tool>} to the one that completed C{<tool> → ...}.
        """
        start, end, rest = self.body()
        body = _chunk({"role": "assistant", "content": ""}) + start + end + rest
        stream = readAgentStream(body)
        self.assertEqual(stream.content, "result: hi")
        self.assertTrue(stream.done)
        self.assertEqual(len(stream.progress), 2)
        first = len(_chunk({"role": "assistant", "content": ""}))
        # Reads: the role chunk with half the first frame, the rest of it,
        # then the second frame, then the answer.
        marks = [
            (first + 5, 0.001),
            (first + len(start), 0.002),
            (first + len(start) + len(end), 0.0075),
            (len(body), 0.009),
        ]
        span = stream.span(marks, "s__echo")
        assert span is not None
        self.assertAlmostEqual(span, 0.0055)
        self.assertIsNone(stream.span(marks, "other__echo"))

    def test_spanNeedsBothOnce(self) -> None:
        """
        Without the result's frame, or with the call announced twice, there
        is no span.
        """
        start, end, rest = self.body()
        marks = [(10**6, 0.001)]
        self.assertIsNone(readAgentStream(start + rest).span(marks, "s__echo"))
        self.assertIsNone(readAgentStream(start + start + end + rest).span(marks, "s__echo"))
        self.assertIsNotNone(readAgentStream(start + end + rest).span(marks, "s__echo"))


class ToolReportTests(SynchronousTestCase):
    """
    The tool arms in the report: the decomposition and the target rows.
    """

    def samples(self, sdk: float) -> dict[str, Any]:
        def rounds(key: str = "ms", **values: float) -> dict[str, Any]:
            return {
                r: {key: [v, v], "bad": 0, "spanMs": [values.get("span", 0.0)] * 2}
                for r, v in (("0", values["ms"]),)
            }

        return {
            "agent_plain": {"direct": rounds(ms=0.2), "ai-agent": rounds(ms=1.2)},
            "mcp_direct": {"direct": rounds(ms=0.5)},
            "mcp_sdk": {"stdio": rounds(ms=sdk), "http": rounds(ms=sdk * 2)},
            "mcp_run": {"stdio": rounds(ms=4.0, span=0.8), "http": rounds(ms=5.0, span=1.5)},
            "subagent_direct": {
                "direct": {"0": {"ms": [0.7], "legsMs": [[0.2, 0.25, 0.25]], "bad": 0}}
            },
            "subagent_run": {"ai-agent": rounds(ms=6.0, span=2.25)},
        }

    def test_decomposition(self) -> None:
        """
        A run's added latency is over its upstream calls made directly; the
        MCP call end to end is that minus a plain run's added latency; the
        sub-agent call between its frames is also given minus the child's
        own upstream call.
        """
        f = toolFigures(self.samples(1.0))
        self.assertAlmostEqual(f["plain.added"]["value"], 1.0)
        self.assertAlmostEqual(f["mcp.runAdded.stdio"]["value"], 3.5)
        self.assertAlmostEqual(f["mcp.cost.stdio"]["value"], 2.5)
        self.assertAlmostEqual(f["mcp.cost.http"]["value"], 3.5)
        self.assertAlmostEqual(f["mcp.vsSdk.stdio"], 0.8)
        self.assertAlmostEqual(f["mcp.vsSdk.http"], 0.75)
        self.assertAlmostEqual(f["subagent.runAdded"]["value"], 5.3)
        self.assertAlmostEqual(f["subagent.spanAdded"]["value"], 2.0)
        self.assertAlmostEqual(f["subagent.cost"]["value"], 4.3)
        rows = [line for line in toolLines(self.samples(1.0)) if line.startswith("| stdio")]
        self.assertEqual(len(rows), 1)
        self.assertIn("| 0.80× |", rows[0])
        self.assertEqual(toolLines({}), [])

    def test_targetRows(self) -> None:
        """
        The MCP target is met when the call inside a run is no slower than
        the SDK's on both transports; the sub-agent's cost is reported.
        """

        def rows(samples: dict[str, Any]) -> dict[str, tuple[str, str]]:
            return {r[0]: (r[2], r[3]) for r in targetsTable(samples, figures(samples))}

        mcp = "MCP tool call inside a run no slower than the MCP SDK client calling directly"
        met = rows(self.samples(1.0))
        row = next(value for name, value in met.items() if name.startswith(mcp))
        self.assertEqual(row, ("stdio 0.800 vs 1.000 ms; Streamable HTTP 1.500 vs 2.000 ms", "met"))
        slow = rows(self.samples(0.7))
        self.assertEqual(
            next(value for name, value in slow.items() if name.startswith(mcp))[1], "**not met**"
        )
        self.assertEqual(
            met["cost of a sub-agent call (p50)"],
            ("2.000 ms over the child's upstream call; 4.300 ms end to end", "met"),
        )


def _benchUpstream(testCase: SynchronousTestCase) -> int:
    """
    Start a bench upstream process; its port.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "bench._upstream", "--port", "0"],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": _run.ROOT},
    )
    testCase.addCleanup(process.wait, 10)
    testCase.addCleanup(process.kill)
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    return int(line.rsplit(":", 1)[1].split("/")[0])


class ToolMeasureTests(SynchronousTestCase):
    """
    The tool arms' measures against real processes.
    """

    def test_sdkClientOverStdio(self) -> None:
        """
        The MCP SDK's client (bench/_mcpclient.py) starts the bench's MCP
        server over stdio, and answers each command with that many timed
        calls, all right.
        """
        done = subprocess.run(
            [sys.executable, _run.MCP_CLIENT, "stdio", sys.executable, _run.MCP_SERVER],
            input=b"3\n2\n\n",
            capture_output=True,
            timeout=60,
        )
        lines = done.stdout.decode().splitlines()
        self.assertEqual(lines[0], "READY", done.stderr[-2000:])
        answers = [json.loads(line) for line in lines[1:]]
        self.assertEqual([(len(a["ms"]), a["bad"]) for a in answers], [(3, 0), (2, 0)])
        self.assertTrue(all(ms > 0 for a in answers for ms in a["ms"]))

    def test_directArms(self) -> None:
        """
        Against the bench upstream, the direct sequences of an MCP run (2
        requests) and of a sub-agent run (3) are all right, each timed as
        the sum of its requests, and a plain streamed run is the echo.
        """
        direct = Target(_benchUpstream(self), "/v1", "m")

        async def main() -> list[dict[str, Any]]:
            return [
                await _run.measureDirectCalls(direct, _run.directSteps(direct, "mcp"), 3),
                await _run.measureDirectCalls(direct, _run.directSteps(direct, "subagent"), 3),
                await _run.measureAgentRun(direct, 3, "echo: " + _run.TOOL_TEXT, None),
                await _run.measureAgentRun(direct, 2, "something else", None),
            ]

        mcp, subagent, plain, wrong = asyncio.run(main())
        for result, steps in ((mcp, 2), (subagent, 3)):
            self.assertEqual(result["bad"], 0)
            self.assertEqual([len(legs) for legs in result["legsMs"]], [steps] * 3)
            for total, legs in zip(result["ms"], result["legsMs"], strict=True):
                self.assertAlmostEqual(total, sum(legs), places=3)
        self.assertEqual((plain["bad"], len(plain["ms"])), (0, 3))
        self.assertEqual((wrong["bad"], wrong["ms"]), (2, []))

    def test_toolArmsThroughTheServer(self) -> None:
        """
        One short round of every tool arm, this server included (an agent
        calling the MCP server over stdio, one calling it over Streamable
        HTTP, a parent calling its sub-agent): every arm is recorded, no
        answer is wrong, and each run's tool call is timed from its frames.
        """
        setup = _run.Setup.create(_benchUpstream(self))
        self.addCleanup(shutil.rmtree, setup.directory, True)
        plan = attrs.evolve(_run.QUICK, toolRuns=3)
        rec = _run.Recorder()
        asyncio.run(_run.measureToolArms(setup, plan, rec, 1))
        recorded = {
            (figure, arm)
            for figure, arms in rec.samples.items()
            if figure not in ("toolOrder", "toolClientNice")
            for arm in arms
        }
        self.assertEqual(
            recorded,
            {
                ("mcp_sdk", "stdio"),
                ("mcp_sdk", "http"),
                ("mcp_run", "stdio"),
                ("mcp_run", "http"),
                ("subagent_run", "ai-agent"),
                ("agent_plain", "ai-agent"),
                ("agent_plain", "direct"),
                ("mcp_direct", "direct"),
                ("subagent_direct", "direct"),
            },
        )
        for figure, arm in recorded:
            value = rec.samples[figure][arm]["0"]
            self.assertEqual((value["bad"], len(value["ms"])), (0, 3), (figure, arm))
        for figure, arm in (
            ("mcp_run", "stdio"),
            ("mcp_run", "http"),
            ("subagent_run", "ai-agent"),
        ):
            value = rec.samples[figure][arm]["0"]
            # A call whose two frames came in one read is not timed (this
            # process is not pinned here, and may read late).
            self.assertEqual(len(value["spanMs"]) + value["unresolved"], 3)
            self.assertTrue(all(0 < span < max(value["ms"]) for span in value["spanMs"]))


class WholeReportTests(SynchronousTestCase):
    """
    The report written from samples with the new arms.
    """

    def test_sectionsAndPlot(self) -> None:
        """
        The document gets the headends section, the tools section, their
        target rows and their plot, and the measurement notes describe them.
        """
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SkipTest("matplotlib (bench/run installs it in bench/.venv) is missing") from None
        samples = {
            **HeadendReportTests().samples(1.05, 1.08),
            **ToolReportTests().samples(1.0),
        }
        out = self.mktemp()
        _report.write(samples, out)
        with open(os.path.join(out, "performance.md"), encoding="utf-8") as f:
            text = f.read()
        for heading in ("## Headends", "## Tools inside a run"):
            self.assertEqual(text.count("\n" + heading + "\n"), 1, heading)
        self.assertIn(
            "| Responses / Anthropic / MCP tools/call / client-tool round trip within 10 %", text
        )
        self.assertIn("| MCP tool call inside a run no slower than the MCP SDK client", text)
        self.assertIn("| cost of a sub-agent call (p50) |", text)
        self.assertIn("![Headends and MCP tool calls", text)
        self.assertIn("- Tools inside a run", text)
        self.assertTrue(os.path.exists(os.path.join(out, "img", "perf-headends-tools.png")))


def _requestBody(raw: bytes) -> dict[str, Any]:
    """
    The JSON body of a raw HTTP request built by L{Target}.
    """
    body: dict[str, Any] = json.loads(raw.partition(b"\r\n\r\n")[2])
    return body


class AgentLoopUpstreamTests(SynchronousTestCase):
    """
    The bench upstream's C{/loop/v1}: five calls of the offered tool, then
    the answer, so that every orchestrator runs the same five-turn loop.
    """

    def test_directStepsFollowTheScript(self) -> None:
        """
        The agent loop's upstream calls made directly (L{_run.loopSteps})
        are answered, streamed, with a call of the tool (its arguments the
        user's message as C{text}) while fewer than five tool results are
        in the history, and the sixth with C{"result: "} and the last
        result; through C{/v1}, the first request with a tool result would
        already get the answer.
        """
        upstream = BenchUpstream(Clock())
        steps = _run.loopSteps(Target(1, "/loop/v1", "m"))
        self.assertEqual([expected for _, expected in steps], [None] * 5 + ["result: hello mcp"])
        for turn, (raw, expected) in enumerate(steps):
            body = _requestBody(raw)
            self.assertEqual(sum(m["role"] == "tool" for m in body["messages"]), turn)
            _, written = _post(upstream, body, b"/loop/v1/chat/completions")
            stream = readAgentStream(written)
            self.assertTrue(stream.done)
            if expected is None:
                self.assertIn(b'"finish_reason":"tool_calls"', written)
                arguments = "".join(
                    call["function"]["arguments"]
                    for event in _events(written)
                    if isinstance(event, dict) and event["choices"]
                    for call in event["choices"][0]["delta"].get("tool_calls", [])
                )
                self.assertEqual(json.loads(arguments), {"text": "hello mcp"})
            else:
                self.assertEqual(stream.content, expected)
                self.assertNotIn(b"tool_calls", written)
        _, written = _post(upstream, _requestBody(steps[1][0]))
        self.assertEqual(readAgentStream(written).content, "result: hello mcp")

    def test_withoutToolsEchoes(self) -> None:
        """
        Without tools, C{/loop/v1} echoes like C{/v1}.
        """
        upstream = BenchUpstream(Clock())
        _, raw = _post(
            upstream,
            {"model": "m", "messages": [{"role": "user", "content": "ping"}]},
            b"/loop/v1/chat/completions",
        )
        self.assertEqual(completionText(raw), "echo: ping")


class AgentLoopReportTests(SynchronousTestCase):
    """
    The agent loop in the report: added latency and CPU per turn by
    orchestrator, this server's ratios to the frameworks, the table, the
    target row.
    """

    def samples(self, ours: float = 12.0, cpuS: float = 0.3) -> dict[str, Any]:
        """
        One round: the direct upstream calls take 2 ms, an MCP call 1 ms
        (stdio) or 2 ms (HTTP); runs of 20 ms (our server, C{ours}), 30 ms
        (the Agents SDK) and 45 ms (LangGraph); 10 runs each, with C{cpuS}
        (ours), 0.6 s and 1.0 s of CPU.
        """

        def runs(ms: float, cpu: float | None = None) -> dict[str, Any]:
            value: dict[str, Any] = {"ms": [ms] * 10, "bad": 0}
            if cpu is not None:
                value["cpuS"] = cpu
            return {"0": value}

        arms = {
            transport: {
                "ai-agent": runs(ours + extra, cpuS),
                "openai-agents": runs(30.0 + extra, 0.6),
                "langgraph": runs(45.0 + extra, 1.0),
            }
            for transport, extra in (("stdio", 0.0), ("http", 5.0))
        }
        return {
            "loopTurns": 5,
            "loop_direct": {"direct": runs(2.0)},
            "loop_mcp": {"stdio": runs(1.0), "http": runs(2.0)},
            "loop_stdio": arms["stdio"],
            "loop_http": arms["http"],
            "loopVersions": {"openai-agents": "openai-agents 0.25.0"},
        }

    def test_perTurn(self) -> None:
        """
        Added per turn = (run − direct upstream calls − 5 × MCP call) / 5;
        CPU per turn = CPU / (runs × 5); the ratios are ours over theirs.
        """
        f = _report.agentLoopFigures(self.samples())
        self.assertAlmostEqual(f["loop.addedPerTurn.stdio.ai-agent"]["value"], (12 - 2 - 5) / 5)
        self.assertAlmostEqual(f["loop.addedPerTurn.stdio.openai-agents"]["value"], 4.6)
        self.assertAlmostEqual(f["loop.addedPerTurn.http.langgraph"]["value"], (50 - 2 - 10) / 5)
        self.assertAlmostEqual(f["loop.cpuPerTurn.stdio.ai-agent"]["value"], 6.0)
        self.assertAlmostEqual(f["loop.cpuPerTurn.http.langgraph"]["value"], 20.0)
        self.assertAlmostEqual(f["loop.vs.addedPerTurn.stdio.openai-agents"], 1.0 / 4.6)
        self.assertAlmostEqual(f["loop.vs.cpuPerTurn.http.openai-agents"], 0.5)
        self.assertEqual(_report.agentLoopFigures({}), {})

    def test_tableAndTarget(self) -> None:
        """
        The section has one row per transport and orchestrator with the
        ratios on the frameworks' rows; the target row is met at ≤ 0.5×
        on both measures against every framework, not met otherwise.
        """
        lines = _report.agentLoopLines(self.samples())
        self.assertEqual(lines[0], "## The agent loop against the SDKs")
        rows = [line for line in lines if line.startswith(("| stdio |", "| Streamable HTTP |"))]
        self.assertEqual(len(rows), 6)
        agentsStdio = next(r for r in rows if r.startswith("| stdio | OpenAI Agents SDK |"))
        self.assertIn("| 0.22× / 0.50× |", agentsStdio)
        self.assertEqual(_report.agentLoopLines({}), [])

        def verdict(samples: dict[str, Any]) -> str:
            table = targetsTable(samples, figures(samples))
            return next(r[3] for r in table if r[0].startswith("agent loop"))

        self.assertEqual(verdict(self.samples()), "met")
        self.assertEqual(verdict(self.samples(cpuS=0.5)), "**not met**")
        self.assertEqual(verdict(self.samples(ours=27.0)), "**not met**")


class StockTwistedReportTests(SynchronousTestCase):
    """
    The stock-Twisted table: the core figures of the server with and
    without the speed layer, from the same rounds.
    """

    def samples(self) -> dict[str, Any]:
        def rounds(*values: float) -> dict[str, Any]:
            return {str(r): {"ms": [v, v], "bad": 0} for r, v in enumerate(values)}

        def rps(value: float, server: str, share: float) -> dict[str, Any]:
            return {"0": {"rps": value, "bad": 0, "cpu": {f"server-{server}": share}}}

        return {
            "latency_c1": {
                "direct": rounds(0.2, 0.3),
                "ai-agent": rounds(0.5, 0.6),
                "ai-agent-stock": rounds(0.8, 0.9),
            },
            "ttft_c1": {
                "direct": rounds(0.1),
                "ai-agent": rounds(0.35),
                "ai-agent-stock": rounds(0.7),
            },
            "latency_responses_c1": {"ai-agent": rounds(0.6), "ai-agent-stock": rounds(1.1)},
            "rps": {
                "direct": {"0": {"rps": 9000.0, "bad": 0, "cpu": {}}},
                "ai-agent": rps(3000.0, "ai-agent", 0.9),
                "ai-agent-stock": rps(2000.0, "ai-agent-stock", 0.9),
            },
        }

    def test_table(self) -> None:
        """
        The table gives each figure for both servers and stock over speed
        layer: added latency 0.3 vs 0.6 ms (2.00×), CPU per request 300 vs
        450 µs (1.50×), the headends from their own rounds; and the stock
        server's column joins the all-figures table.
        """
        f = figures(self.samples())
        self.assertAlmostEqual(f["latency_c1.added_p50.ai-agent-stock"]["value"], 0.6)
        self.assertAlmostEqual(f["latency_responses_c1.added_p50.ai-agent-stock"]["value"], 0.9)
        lines = _report.stockLines(f)
        self.assertEqual(lines[0], "## On stock Twisted")

        def row(label: str) -> str:
            return next(line for line in lines if line.startswith(f"| {label} |"))

        self.assertIn("| 2.00× |", row("added latency p50, non-streamed, c=1"))
        self.assertIn("| 300 | 450 | 1.50× |", row("server CPU per request, µs"))
        self.assertIn("| 2.40× |", row("time to first token, added p50, c=1"))
        self.assertIn("| 2.25× |", row(_report.HEADEND_FIGURES[0][2] + ": added p50"))
        self.assertIn("ai-agent-stock", allFiguresTable(f)[0])
        self.assertEqual(_report.stockLines(figures({})), [])


class AgentLoopWholeReportTests(SynchronousTestCase):
    """
    The report written from samples with the agent loop and the stock arm.
    """

    def test_sections(self) -> None:
        """
        The document gets the agent-loop section and its plot, the
        stock-Twisted section, and the method in How it was measured.
        """
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SkipTest("matplotlib (bench/run installs it in bench/.venv) is missing") from None
        samples = {**StockTwistedReportTests().samples(), **AgentLoopReportTests().samples()}
        out = self.mktemp()
        _report.write(samples, out)
        with open(os.path.join(out, "performance.md"), encoding="utf-8") as f:
            text = f.read()
        for heading in ("## The agent loop against the SDKs", "## On stock Twisted"):
            self.assertEqual(text.count("\n" + heading + "\n"), 1, heading)
        self.assertIn("![The agent loop", text)
        self.assertIn("- The agent loop", text)
        self.assertTrue(os.path.exists(os.path.join(out, "img", "perf-agentloop.png")))


class AgentLoopMeasureTests(SynchronousTestCase):
    """
    The agent-loop arms against real processes: the bench upstream, the
    bench MCP server, this server, the OpenAI Agents SDK.
    """

    def test_minimalClientOverStdio(self) -> None:
        """
        The minimal MCP client (bench/_mcpraw.py, no SDK) starts the bench's
        MCP server over stdio and answers each command with that many timed
        calls, all answered with the echo.
        """
        done = subprocess.run(
            [sys.executable, _run.MCP_RAW, "stdio", sys.executable, _run.MCP_SERVER],
            input=b"3\n2\n\n",
            capture_output=True,
            timeout=60,
        )
        lines = done.stdout.decode().splitlines()
        self.assertEqual(lines[0], "READY", done.stderr[-2000:])
        answers = [json.loads(line) for line in lines[1:]]
        self.assertEqual([(len(a["ms"]), a["bad"]) for a in answers], [(3, 0), (2, 0)])
        self.assertTrue(all(ms > 0 for a in answers for ms in a["ms"]))

    def test_agentsSdkRunsTheLoop(self) -> None:
        """
        The Agents SDK's driver runs the whole loop against /loop/v1: each
        run (the warm-up and the two asked for) is answered exactly and
        makes six upstream calls, five of them answered with the tool's
        call.
        """
        try:
            import agents  # noqa: F401
        except ImportError:
            raise SkipTest("openai-agents (a test dependency) is missing") from None
        port = _benchUpstream(self)
        done = subprocess.run(
            [
                sys.executable,
                _run.AGENT_LOOP,
                "agents",
                f"http://127.0.0.1:{port}/loop/v1",
                "stdio",
                sys.executable,
                _run.MCP_SERVER,
            ],
            input=b"2\n\n",
            capture_output=True,
            timeout=120,
        )
        lines = done.stdout.decode().splitlines()
        self.assertEqual(lines[0], "READY", done.stderr[-2000:])
        answer = json.loads(lines[1])
        self.assertEqual((len(answer["ms"]), answer["bad"]), (2, 0))

        async def stats() -> Any:
            result = await _client.request(port, Target(port, "", "").get("/bench/stats"))
            return json.loads(result.body)

        self.assertEqual(asyncio.run(stats())["requests"], 6 * 3)

    def test_loopArmsThroughTheServer(self) -> None:
        """
        One short round of the agent-loop arms (LangGraph left out: it has
        a venv of its own): this server and the Agents SDK over both MCP
        transports, the minimal MCP client, the direct upstream calls; every
        arm is recorded with no wrong answer, and the orchestrators with the
        CPU their own process used.
        """
        try:
            import agents  # noqa: F401
        except ImportError:
            raise SkipTest("openai-agents (a test dependency) is missing") from None
        setup = _run.Setup.create(_benchUpstream(self))
        self.addCleanup(shutil.rmtree, setup.directory, True)
        plan = attrs.evolve(_run.QUICK, loopRuns=2)
        rec = _run.Recorder()
        frameworks = {"openai-agents": ("agents", sys.executable)}
        with mock.patch.object(_run, "LOOP_FRAMEWORKS", frameworks):
            asyncio.run(_run.measureAgentLoop(setup, plan, rec, 1))
        recorded = {
            (figure, arm): value["0"]
            for figure, arms in rec.samples.items()
            if figure.startswith("loop_")
            for arm, value in arms.items()
        }
        orchestrators = {
            (f"loop_{t}", arm) for t in ("stdio", "http") for arm in ("ai-agent", "openai-agents")
        }
        self.assertEqual(
            set(recorded),
            orchestrators
            | {("loop_mcp", "stdio"), ("loop_mcp", "http"), ("loop_direct", "direct")},
        )
        for key, value in recorded.items():
            self.assertEqual((value["bad"], len(value["ms"])), (0, 2), key)
        for key in orchestrators:
            self.assertGreater(recorded[key]["cpuS"], 0, key)
        self.assertEqual(rec.samples["loopTurns"], 5)

    def test_mcpHttpServersApart(self) -> None:
        """
        Two MCP servers over Streamable HTTP started one after the other in
        one working directory (the tool arms', then the agent loop's) each
        answer with their own port, read from what each wrote to the log
        (the second one once read the first one's port there).
        """
        setup = _run.Setup.create(0)
        self.addCleanup(shutil.rmtree, setup.directory, True)

        async def main() -> list[str]:
            urls = []
            for _ in range(2):
                proc, url = await _run.startMcpHttp(setup)
                self.addCleanup(proc.stop)
                urls.append(url)
            return urls

        first, second = asyncio.run(main())
        self.assertNotEqual(first, second)
