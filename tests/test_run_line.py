"""
The run's log line, made once as text by L{RunAccount.finish}: the same
text as the format string it replaced, in the text log and in the JSON
log's C{message}.
"""

from __future__ import annotations

import json

from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from ai_agent.accounting import RunAccount, RunLabels
from ai_agent.config import Pricing
from ai_agent.events import Usage
from ai_agent.observe._logs import eventAsJSON

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
