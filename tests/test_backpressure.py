"""
Back-pressure (L{ai_agent.flow}) reaching calls that waited for a place:
they run in the context of the run that asked for them.

From the second security and reliability round (issue 11): each hole the
hostile campaign found, pinned against a real server on 127.0.0.1 with an
upstream of the test's own where the upstream misbehaves.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase


class ContextTests(TestCase):
    """
    The back-pressure of item 5 reaches calls that waited for a place: they
    run in the context of the run that asked for them.
    """

    def test_limiterKeepsCallersContext(self) -> None:
        """
        A sub-agent run that waited for a place in L{SubAgentLimiter} starts
        in its caller's context, not in that of the run whose end freed the
        place.
        """
        from contextvars import ContextVar, copy_context

        from twisted.internet.defer import Deferred
        from twisted.internet.task import Clock

        from ai_agent.limits import SubAgentLimiter

        var: ContextVar[str] = ContextVar("var", default="none")
        limiter = SubAgentLimiter(Clock(), 1)
        seen: list[str] = []
        first: Deferred[None] = Deferred()

        def run(result: Deferred[None]) -> Deferred[None]:
            seen.append(var.get())
            return result

        def call(name: str, result: Deferred[None]) -> Deferred[None]:
            var.set(name)
            return limiter.run(10, run, result)

        copy_context().run(call, "first", first)
        second = copy_context().run(call, "second", Deferred())
        self.assertEqual(seen, ["first"])
        copy_context().run(lambda: (var.set("releaser"), first.callback(None)))
        self.assertEqual(seen, ["first", "second"])
        second.cancel()
        self.failureResultOf(second)
