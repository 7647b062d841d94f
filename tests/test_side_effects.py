"""
A run that fails after a tool ran is marked as having side effects, and the
headend tells clients not to retry it (C{x-should-retry: false}).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ai_agent.agentfile import AgentSpec
from ai_agent.errors import AgentError, ProviderError
from ai_agent.events import EventSink
from ai_agent.headends.openai import OpenAIHeadend
from ai_agent.pool import RunPool
from ai_agent.providers import LLMResponse, ToolCall, ToolSpec
from ai_agent.providers._base import ChatMessage
from ai_agent.registry import AgentRegistry
from ai_agent.request import RunRequest
from ai_agent.session import SessionRunner
from ai_agent.testing import ScriptedProvider


@attrs.define
class _OneTool:
    def specs(self) -> Sequence[ToolSpec]:
        return [ToolSpec("t__act", "acts", {"type": "object"})]

    def call(self, name: str, arguments: Mapping[str, Any], sink: EventSink) -> Deferred[str]:
        return succeed("done")


def _agent() -> AgentSpec:
    return AgentSpec(path="/a.ai", name="a", prompt="p", models=("p/m",), maxRetries=1)


class SideEffectTests(SynchronousTestCase):
    """
    L{AgentError.sideEffects} follows whether a tool ran.
    """

    def run_(self, replies: list[Any]) -> AgentError:
        provider = ScriptedProvider(name="p", replies=replies)
        runner = SessionRunner({"p": provider}.__getitem__, Clock(), lambda agent: _OneTool())
        d = runner.run(_agent(), RunRequest((ChatMessage("user", "x"),)), lambda event: None)
        return self.failureResultOf(d, AgentError).value

    def test_failureAfterTool(self) -> None:
        """
        A failure in the turn after a tool call is marked.
        """
        error = self.run_(
            [
                LLMResponse(content="", toolCalls=(ToolCall("c", "t__act", "{}"),)),
                ProviderError("down", retryable=False),
            ]
        )
        self.assertTrue(error.sideEffects)

    def test_failureBeforeTool(self) -> None:
        """
        A failure before any tool ran is not marked.
        """
        error = self.run_([ProviderError("down", retryable=False)])
        self.assertFalse(error.sideEffects)

    def test_header(self) -> None:
        """
        The headend's error answer carries C{x-should-retry: false} for a
        marked error, and not otherwise.
        """
        from twisted.web.test.requesthelper import DummyRequest

        headend = OpenAIHeadend(AgentRegistry(), None, RunPool(Clock()), Clock())  # type: ignore[arg-type]
        request = DummyRequest([b""])
        headend._errorBody(request, ProviderError("down", retryable=False))
        self.assertIsNone(request.responseHeaders.getRawHeaders(b"x-should-retry"))
        marked = ProviderError("down", retryable=False)
        marked.sideEffects = True
        request = DummyRequest([b""])
        headend._errorBody(request, marked)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"x-should-retry"), [b"false"])
        self.assertEqual(request.responseCode, 502)
