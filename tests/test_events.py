"""
L{ai_agent.events}: progress as data, and the one way every encoder words
it.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ai_agent.events import (
    AdvisorProgress,
    ExtractionProgress,
    HandoffProgress,
    ReasoningDelta,
    ReasoningText,
    Retrying,
    SubAgentProgress,
    ToolFinished,
    ToolStarted,
    Usage,
    progressText,
)


class ProgressTextTests(SynchronousTestCase):
    """
    L{progressText} gives one line per event.
    """

    def test_lines(self) -> None:
        """
        Tool calls show their compacted arguments, results a one-line
        summary, retries the model and reason (a model passed over without a
        call says it is skipped); sub-agents' progress is
        prefixed with their name, nested ones once per level.
        """
        self.assertEqual(
            progressText(ToolStarted("calc__add", '{ "a":  1 }', "c1")),
            'calling calc__add {"a": 1}\n',
        )
        self.assertEqual(
            progressText(ToolFinished("calc__add", "two\n  lines", "c1")),
            "calc__add → two lines\n",
        )
        self.assertEqual(progressText(Retrying("p/m", "boom")), "p/m failed (boom); retrying\n")
        self.assertEqual(
            progressText(Retrying("p/m", "no key", skipped=True)), "skipping p/m: no key\n"
        )
        nested = SubAgentProgress(
            "agent__outer", SubAgentProgress("agent__inner", ToolStarted("t__x", "{}"))
        )
        self.assertEqual(progressText(nested), "[agent__outer] [agent__inner] calling t__x {}\n")
        self.assertEqual(
            progressText(SubAgentProgress("agent__a", ReasoningDelta("thinking\n"))),
            "[agent__a] thinking\n",
        )

    def test_orchestration(self) -> None:
        """
        Advisors (started, answered, failed), a router's choice (with and
        without its message), a handoff and an extraction chunk each get
        one line, nested under a sub-agent like any progress.
        """
        lines = [
            progressText(AdvisorProgress("legal")),
            progressText(AdvisorProgress("legal", finished=True)),
            progressText(AdvisorProgress("legal", finished=True, error="upstream\ndown")),
            progressText(HandoffProgress("desk", "billing", "router", "refund")),
            progressText(HandoffProgress("desk", "billing", "router")),
            progressText(HandoffProgress("research", "fmt", "handoff")),
            progressText(ExtractionProgress("logs__read", 2, 3)),
            progressText(SubAgentProgress("agent__x", HandoffProgress("x", "y", "handoff"))),
        ]
        self.assertEqual(
            lines,
            [
                "asking advisor legal\n",
                "advisor legal answered\n",
                "advisor legal failed: upstream down\n",
                "desk routed the conversation to billing: refund\n",
                "desk routed the conversation to billing\n",
                "research handed its answer to fmt\n",
                "extracting from the output of logs__read (chunk 2 of 3)\n",
                "[agent__x] x handed its answer to y\n",
            ],
        )

    def test_longCut(self) -> None:
        """
        Long arguments and results are cut to about 200 characters.
        """
        self.assertLess(len(progressText(ToolFinished("t", "x" * 5000))), 220)
        self.assertLess(len(progressText(ToolStarted("t", '"' + "y" * 5000 + '"'))), 230)


class ReasoningTextTests(SynchronousTestCase):
    """
    L{ReasoningText} keeps progress on lines of its own.
    """

    def test_newLineBeforeProgress(self) -> None:
        """
        Progress after reasoning that did not end its line starts a new
        line; after a finished line, or at the start, it does not.
        """
        text = ReasoningText()
        started = ToolStarted("clock__now", "{}")
        self.assertEqual(text.progress(started), "calling clock__now {}\n")
        self.assertEqual(
            text.reasoning("I will check the time first."), "I will check the time first."
        )
        self.assertEqual(text.progress(started), "\ncalling clock__now {}\n")
        self.assertEqual(text.reasoning("done\n"), "done\n")
        self.assertEqual(text.progress(started), "calling clock__now {}\n")


class UsageTests(SynchronousTestCase):
    """
    L{Usage} adds every count.
    """

    def test_add(self) -> None:
        """
        Sums add input, output, cache reads and writes and reasoning
        tokens; the total is input plus output.
        """
        total = Usage(10, 5, 4, 3, 2) + Usage(1, 1, 1, 1, 1)
        self.assertEqual(total, Usage(11, 6, 5, 4, 3))
        self.assertEqual(total.totalTokens, 17)
