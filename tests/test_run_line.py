"""
The run's log line, made once as text by L{RunAccount.finish}: the same
text as the format string it replaced, in the text log and in the JSON
log's C{message}.
"""

from __future__ import annotations

import json

from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from ai_agent.accounting import (
    CANCELLED,
    CHARS_PER_TOKEN,
    RunAccount,
    RunLabels,
    StreamMeter,
    estimateUsage,
)
from ai_agent.config import Pricing
from ai_agent.events import Usage
from ai_agent.observe._logs import eventAsJSON
from ai_agent.providers import ChatMessage, ToolCall, ToolSpec
from ai_agent.providers._base import CallbackSink

#: The format string the run line was logged with before it was made as
#: text: the line must read the same.
_OLD_FORMAT = (
    " {outcome} in {duration:.3f}s: models {_modelList},"
    " {calls} calls ({failures} failed), tokens {promptTokens}+{completionTokens}"
    "{_withSubAgents}, cost {_costText}{_detailText}{_traceText}"
)


class RunLineTests(SynchronousTestCase):
    """
    L{RunAccount.finish}'s one line.
    """

    def setUp(self) -> None:
        self.events: list[LogEvent] = []

        def observe(event: LogEvent) -> None:
            if event.get("log_namespace") == "ai_agent.accounting":
                self.events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def finish(self, account: RunAccount, *args: object) -> LogEvent:
        account.finish(*args)  # type: ignore[arg-type]
        [line] = [e for e in self.events if e["log_level"].name == "info"]
        return line

    def oldText(self, line: LogEvent, head: str) -> str:
        return formatEvent({**line, "log_format": head + _OLD_FORMAT})

    def test_labelledLine(self) -> None:
        """
        A request's run line (labels, a trace, a failed call, sub-agents'
        tokens, a price) reads as the old format string made it, in the
        text log and as the JSON log's message, whose fields are the
        documented ones without the text-only C{_} ones.
        """
        account = RunAccount(
            "a",
            10.0,
            {"p/m": Pricing(1.0, 2.0)},
            labels=RunLabels("chatcmpl-1", True, "title", "ann", {"x-openwebui-chat-id": "c{1}"}),
        )
        account.traceId = "abc"
        account.record("q/n", Usage(), 0.5, "upstream_unreachable")
        account.record("p/m", Usage(1000, 200), 1.0)
        line = self.finish(account, "end", 11.25, Usage(1500, 300))
        text = formatEvent(line)
        self.assertEqual(text, self.oldText(line, "{requestId} for agent {agent}"))
        self.assertEqual(
            text,
            "chatcmpl-1 for agent a end in 1.250s: models p/m, 2 calls (1 failed),"
            " tokens 1000+200 (1500+300 with sub-agents), cost $0.001400; task title;"
            " user 'ann'; x-openwebui-chat-id 'c{1}'; trace abc",
        )
        record = json.loads(eventAsJSON(line))
        self.assertEqual(record["message"], text)
        self.assertFalse([key for key in record if key.startswith("_")])
        self.assertEqual(
            (record["requestId"], record["models"], record["calls"], record["totalTokens"]),
            ("chatcmpl-1", ["p/m"], 2, 1800),
        )

    def test_unlabelledLine(self) -> None:
        """
        A run without labels (a sub-agent's) reads C{agent NAME run ...},
        with an unknown cost when a call that spent tokens has no price.
        """
        account = RunAccount("sub", 0.0)
        account.record("p/m", Usage(3, 4), 0.25)
        line = self.finish(account, "failed: 502 upstream_error", 0.5)
        text = formatEvent(line)
        self.assertEqual(text, self.oldText(line, "agent {agent} run"))
        self.assertEqual(
            text,
            "agent sub run failed: 502 upstream_error in 0.500s: models p/m,"
            " 1 calls (0 failed), tokens 3+4, cost unknown",
        )

    def test_estimatedLine(self) -> None:
        """
        A call cancelled mid-answer, recorded with estimated tokens, names
        its model, counts its tokens and prices them, all said to be
        estimates (C{~} before the cost); the JSON log has C{estimated}.
        """
        account = RunAccount("a", 0.0, {"p/m": Pricing(1.0, 2.0)})
        account.record("p/m", Usage(12, 9), 2.0, CANCELLED, estimated=True)
        line = self.finish(account, "cancelled", 2.5)
        text = formatEvent(line)
        self.assertEqual(
            text,
            "agent a run cancelled in 2.500s: models p/m, 1 calls (1 failed),"
            " tokens 12+9 (estimated: cancelled mid-answer), cost ~$0.000030",
        )
        self.assertTrue(json.loads(eventAsJSON(line))["estimated"])

    def test_cancelledBeforeAnything(self) -> None:
        """
        A call cancelled before its model streamed anything names no model
        and has an unknown cost, and nothing is said to be estimated.
        """
        account = RunAccount("a", 0.0, {"p/m": Pricing(1.0, 2.0)})
        account.record("p/m", Usage(), 2.0, CANCELLED)
        line = self.finish(account, "cancelled", 2.5)
        self.assertEqual(
            formatEvent(line),
            "agent a run cancelled in 2.500s: models none, 1 calls (1 failed),"
            " tokens 0+0, cost unknown",
        )
        self.assertFalse(line["estimated"])


class EstimateTests(SynchronousTestCase):
    """
    L{estimateUsage} and L{StreamMeter}: the tokens of a cancelled call.
    """

    def test_estimate(self) -> None:
        """
        Four characters a token, rounded up: the messages' text and tool
        call arguments and the tools' specs sent, the characters streamed.
        """
        messages = [
            ChatMessage("system", "a" * 10),
            ChatMessage("assistant", "", toolCalls=(ToolCall("c1", "f", "{}"),)),
        ]
        tool = ToolSpec("f", "does f", {"type": "object"})
        sent = 10 + 2 + len(json.dumps(tool.asOpenAI()))
        self.assertEqual(estimateUsage(messages, [tool], 9), Usage(-(-sent // CHARS_PER_TOKEN), 3))
        self.assertEqual(estimateUsage([], [], 0), Usage())

    def test_meter(self) -> None:
        """
        The meter passes content and reasoning on and counts both.
        """
        seen: list[tuple[str, str]] = []
        meter = StreamMeter(
            CallbackSink(
                onContent=lambda t: seen.append(("c", t)),
                onReasoning=lambda t: seen.append(("r", t)),
            )
        )
        meter.reasoning("hmm")
        meter.content("hello")
        self.assertEqual(seen, [("r", "hmm"), ("c", "hello")])
        self.assertEqual(meter.characters, 8)
