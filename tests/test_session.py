"""
Tests for L{ai_agent.session}: the agent loop over in-memory providers.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import attrs
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ai_agent.agentfile import AgentSpec, ToolOutputSpec
from ai_agent.errors import ProviderError
from ai_agent.events import ContentDelta, Event, EventSink, FinishReason, Usage
from ai_agent.providers import ChatMessage, DeltaSink, LLMRequest, LLMResponse, ToolCall, ToolSpec
from ai_agent.request import OutputFormat, RunRequest
from ai_agent.session import Sampling, SessionRunner, buildMessages
from ai_agent.testing import ScriptedProvider
from tests.test_tools import _reasoning


def _agent(**kwargs: Any) -> AgentSpec:
    values: dict[str, Any] = {
        "path": "/agents/a.ai",
        "name": "a",
        "prompt": "You are A.",
        "models": ("first/m1",),
    }
    values.update(kwargs)
    return AgentSpec(**values)


@attrs.define
class _Tools:
    """
    A tool box whose tools answer from a dict of Deferred factories.
    """

    answers: dict[str, Any]
    calls: list[tuple[str, Mapping[str, Any]]] = attrs.field(factory=list)

    def specs(self) -> Sequence[ToolSpec]:
        return [ToolSpec(name, f"the {name} tool", {"type": "object"}) for name in self.answers]

    def call(self, name: str, arguments: Mapping[str, Any], sink: EventSink) -> Deferred[str]:
        self.calls.append((name, arguments))
        return self.answers[name](arguments)


@attrs.define
class _FailAfterContent:
    """
    A provider that streams some content and then fails.
    """

    name: str = "broken"
    calls: int = 0

    def complete(self, request: LLMRequest, sink: DeltaSink) -> Deferred[LLMResponse]:
        self.calls += 1
        sink.content("partial")
        d: Deferred[LLMResponse] = Deferred()
        d.errback(ProviderError("stream cut", code="upstream_stream_cut"))
        return d


class SessionTests(SynchronousTestCase):
    """
    The loop builds the messages, streams events, falls back across models
    and runs tools.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[Event] = []
        self.providers: dict[str, Any] = {}

    def runner(self, tools: Any = None) -> SessionRunner:
        return SessionRunner(self.providers.__getitem__, self.clock, tools)

    def test_buildMessages(self) -> None:
        """
        The agent prompt comes first; the client's system and developer
        messages follow as system messages; the rest keeps its order.
        """
        conversation = [
            ChatMessage("user", "hi"),
            ChatMessage("system", "Be brief."),
            ChatMessage("assistant", "hello"),
            ChatMessage("developer", "No emoji."),
            ChatMessage("user", "2+2?"),
        ]
        messages = buildMessages(_agent(), conversation)
        self.assertEqual(
            [(m.role, m.content) for m in messages],
            [
                ("system", "You are A."),
                ("system", "Be brief."),
                ("system", "No emoji."),
                ("user", "hi"),
                ("assistant", "hello"),
                ("user", "2+2?"),
            ],
        )

    def test_answerStreamsAndFinishes(self) -> None:
        """
        The model's content reaches the sink as deltas and the run finishes
        with its usage; the request carries the upstream model name and the
        client's sampling over the agent's.
        """
        provider = ScriptedProvider(
            name="first", replies=[LLMResponse(content="four", usage=Usage(7, 1))]
        )
        self.providers["first"] = provider
        finished = self.successResultOf(
            self.runner().run(
                _agent(temperature=0.9, topP=0.3),
                RunRequest(
                    (ChatMessage("user", "2+2?"),), sampling=Sampling(temperature=0.1, seed=3)
                ),
                self.events.append,
            )
        )
        self.assertEqual(finished.reason, FinishReason.END)
        self.assertEqual(finished.usage, Usage(7, 1))
        self.assertEqual(
            "".join(e.text for e in self.events if isinstance(e, ContentDelta)), "four"
        )
        request = provider.requests[0]
        self.assertEqual(
            (request.model, request.temperature, request.topP, request.seed), ("m1", 0.1, 0.3, 3)
        )

    def test_lengthFinish(self) -> None:
        """
        An upstream C{length} finish is reported as C{length}.
        """
        self.providers["first"] = ScriptedProvider(
            name="first", replies=[LLMResponse(content="tru", finishReason=FinishReason.MAX_TOKENS)]
        )
        finished = self.successResultOf(
            self.runner().run(_agent(), RunRequest((ChatMessage("user", "x"),)), self.events.append)
        )
        self.assertEqual(finished.reason, FinishReason.MAX_TOKENS)

    def test_fallback(self) -> None:
        """
        A retryable failure of the first model moves to the next one in the
        agent's list, with a progress note as reasoning; each is sent the
        turn's request under its own upstream model name.
        """
        self.providers["first"] = ScriptedProvider(
            name="first", replies=[ProviderError("connection refused")]
        )
        self.providers["second"] = ScriptedProvider(
            name="second", replies=[LLMResponse(content="ok")]
        )
        agent = _agent(models=("first/m1", "second/m2"))
        self.successResultOf(
            self.runner().run(agent, RunRequest((ChatMessage("user", "x"),)), self.events.append)
        )
        (first,) = self.providers["first"].requests
        (second,) = self.providers["second"].requests
        self.assertEqual((first.model, second.model), ("m1", "m2"))
        self.assertEqual(attrs.evolve(first, model="m2"), second)
        notes = _reasoning(self.events)
        self.assertIn("first/m1 failed", notes)

    def test_attemptsBounded(self) -> None:
        """
        At most C{maxRetries} attempts are made per turn; the last error is
        the run's error.
        """
        provider = ScriptedProvider(
            name="first", replies=[ProviderError(f"down {n}") for n in range(5)]
        )
        self.providers["first"] = provider
        run = self.runner().run(
            _agent(maxRetries=3), RunRequest((ChatMessage("user", "x"),)), self.events.append
        )
        # Retrying the only model waits a backoff first (at most 60 s each).
        self.clock.pump([60, 60])
        failure = self.failureResultOf(run, ProviderError)
        self.assertEqual(len(provider.requests), 3)
        self.assertEqual(failure.value.message, "down 2")

    def test_nonRetryableFailsAtOnce(self) -> None:
        """
        A non-retryable failure (a rejected key) is not retried.
        """
        self.providers["first"] = ScriptedProvider(
            name="first", replies=[ProviderError("HTTP 401", retryable=False)]
        )
        self.providers["second"] = ScriptedProvider(name="second")
        agent = _agent(models=("first/m1", "second/m2"))
        self.failureResultOf(
            self.runner().run(agent, RunRequest((ChatMessage("user", "x"),)), self.events.append),
            ProviderError,
        )
        self.assertEqual(self.providers["second"].requests, [])

    def test_noRetryAfterContent(self) -> None:
        """
        Once answer text reached the client, a failure is not retried.
        """
        broken = _FailAfterContent()
        self.providers["broken"] = broken
        self.providers["second"] = ScriptedProvider(name="second")
        agent = _agent(models=("broken/m", "second/m"))
        self.failureResultOf(
            self.runner().run(agent, RunRequest((ChatMessage("user", "x"),)), self.events.append),
            ProviderError,
        )
        self.assertEqual(broken.calls, 1)
        self.assertEqual(self.providers["second"].requests, [])

    def test_cancelReachesProvider(self) -> None:
        """
        Cancelling the run cancels the LLM call in flight.
        """
        provider = ScriptedProvider(name="first", hold=True)
        self.providers["first"] = provider
        run = self.runner().run(
            _agent(), RunRequest((ChatMessage("user", "x"),)), self.events.append
        )
        run.cancel()
        self.failureResultOf(run, CancelledError)
        self.assertEqual(provider.cancelled, 1)

    def test_toolLoop(self) -> None:
        """
        Tool calls of a turn run, their results go back as tool messages,
        and the next turn's answer ends the run; usage adds up; progress is
        announced as reasoning.
        """
        provider = ScriptedProvider(
            name="first",
            replies=[
                LLMResponse(
                    content="",
                    toolCalls=(
                        ToolCall("c1", "calc__add", '{"a": 2, "b": 3}'),
                        ToolCall("c2", "calc__mul", '{"a": 2, "b": 3}'),
                    ),
                    finishReason=FinishReason.TOOL_CALLS,
                    usage=Usage(10, 5),
                ),
                LLMResponse(content="5 and 6", usage=Usage(20, 3)),
            ],
        )
        self.providers["first"] = provider
        tools = _Tools(
            {
                "calc__add": lambda args: succeed(str(args["a"] + args["b"])),
                "calc__mul": lambda args: succeed(str(args["a"] * args["b"])),
            }
        )
        finished = self.successResultOf(
            self.runner(lambda agent: tools).run(
                _agent(), RunRequest((ChatMessage("user", "x"),)), self.events.append
            )
        )
        self.assertEqual(finished.usage, Usage(30, 8))
        second = provider.requests[1].messages
        self.assertEqual(
            [(m.role, m.content, m.toolCallId) for m in second[-2:]],
            [("tool", "5", "c1"), ("tool", "6", "c2")],
        )
        self.assertEqual(second[-3].toolCalls[0].name, "calc__add")
        notes = _reasoning(self.events)
        self.assertIn('calling calc__add {"a": 2, "b": 3}', notes)
        self.assertIn("calc__add → 5", notes)

    def test_toolErrorsAreText(self) -> None:
        """
        A failing tool, a timed-out tool and bad arguments become error
        texts the model reads, not a failed run.
        """
        provider = ScriptedProvider(
            name="first",
            replies=[
                LLMResponse(
                    content="",
                    toolCalls=(
                        ToolCall("c1", "t__boom", "{}"),
                        ToolCall("c2", "t__slow", "{}"),
                        ToolCall("c3", "t__boom", "[1]"),
                    ),
                ),
                LLMResponse(content="done"),
            ],
        )
        self.providers["first"] = provider

        def boom(args: Any) -> Deferred[str]:
            d: Deferred[str] = Deferred()
            d.errback(RuntimeError("kaput"))
            return d

        tools = _Tools({"t__boom": boom, "t__slow": lambda args: Deferred()})
        run = self.runner(lambda agent: tools).run(
            _agent(toolTimeout=5.0), RunRequest((ChatMessage("user", "x"),)), self.events.append
        )
        self.clock.advance(5.1)
        self.successResultOf(run)
        results = [m.content for m in provider.requests[1].messages if m.role == "tool"]
        self.assertIn("kaput", results[0])
        self.assertIn("did not answer within 5 s", results[1])
        self.assertIn("not a JSON object", results[2])

    def test_maxTurns(self) -> None:
        """
        The last allowed turn is made without tools, so the model must
        answer.
        """
        call = LLMResponse(content="", toolCalls=(ToolCall("c", "t__x", "{}"),))
        provider = ScriptedProvider(
            name="first", replies=[call, call, LLMResponse(content="final")]
        )
        self.providers["first"] = provider
        tools = _Tools({"t__x": lambda args: succeed("r")})
        self.successResultOf(
            self.runner(lambda agent: tools).run(
                _agent(maxTurns=2), RunRequest((ChatMessage("user", "x"),)), self.events.append
            )
        )
        self.assertEqual(len(provider.requests), 2)
        self.assertTrue(provider.requests[0].tools)
        self.assertEqual(provider.requests[1].tools, ())

    def test_truncation(self) -> None:
        """
        A tool result over C{toolResponseMaxBytes} is cut with a note when
        the agent's C{toolOutput} is off (handles: L{tests.test_tool_output}).
        """
        provider = ScriptedProvider(
            name="first",
            replies=[
                LLMResponse(content="", toolCalls=(ToolCall("c", "t__big", "{}"),)),
                LLMResponse(content="ok"),
            ],
        )
        self.providers["first"] = provider
        tools = _Tools({"t__big": lambda args: succeed("é" * 100)})
        self.successResultOf(
            self.runner(lambda agent: tools).run(
                _agent(toolResponseMaxBytes=11, toolOutput=ToolOutputSpec(enabled=False)),
                RunRequest((ChatMessage("user", "x"),)),
                self.events.append,
            )
        )
        result = [m.content for m in provider.requests[1].messages if m.role == "tool"][0]
        self.assertTrue(result.startswith("ééééé\n[truncated"))
        self.assertIn("200 bytes", result)


class SubAgentTimeoutTests(SynchronousTestCase):
    """
    Sub-agent calls are bounded by the child's own limits, not by the
    parent's C{toolTimeout}.
    """

    def test_subAgentNotCutAtToolTimeout(self) -> None:
        """
        An C{agent__} tool answering after the parent's C{toolTimeout} still
        delivers its answer, while an ordinary tool that slow is cut.
        """
        clock = Clock()
        provider = ScriptedProvider(
            name="first",
            replies=[
                LLMResponse(
                    content="",
                    toolCalls=(
                        ToolCall("c1", "agent__helper", '{"prompt": "x"}'),
                        ToolCall("c2", "t__slow", "{}"),
                    ),
                ),
                LLMResponse(content="done"),
            ],
        )
        late: Deferred[str] = Deferred()
        tools = _Tools({"agent__helper": lambda args: late, "t__slow": lambda args: Deferred()})
        runner = SessionRunner({"first": provider}.__getitem__, clock, lambda agent: tools)
        run = runner.run(
            _agent(toolTimeout=5.0), RunRequest((ChatMessage("user", "x"),)), lambda e: None
        )
        clock.advance(30)
        self.assertNoResult(run)
        late.callback("the helper's answer")
        self.successResultOf(run)
        results = [m.content for m in provider.requests[1].messages if m.role == "tool"]
        self.assertEqual(results[0], "the helper's answer")
        self.assertIn("did not answer within 5 s", results[1])


class ResponseFormatTests(SynchronousTestCase):
    """
    The answer's format: the client's C{response_format} over the agent's
    declared C{output}.
    """

    def _format(self, agent: AgentSpec, sampling: Sampling = Sampling()) -> Any:
        provider = ScriptedProvider(name="first", replies=[LLMResponse(content="{}")])
        runner = SessionRunner({"first": provider}.__getitem__, Clock())
        self.successResultOf(
            runner.run(
                agent, RunRequest((ChatMessage("user", "x"),), sampling=sampling), lambda e: None
            )
        )
        return provider.requests[0].outputFormat

    def test_agentOutput(self) -> None:
        """
        An agent declaring JSON output with a schema asks for that schema;
        JSON without one asks for any JSON object; text asks for nothing.
        """
        from ai_agent.agentfile import OutputSpec

        schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
        self.assertEqual(
            self._format(_agent(output=OutputSpec("json", schema))),
            OutputFormat(schema, "a", None, False),
        )
        self.assertEqual(
            self._format(_agent(output=OutputSpec("json"))), OutputFormat(None, "a", None, False)
        )
        self.assertIsNone(self._format(_agent()))

    def test_clientWins(self) -> None:
        """
        The client's C{response_format} overrides the agent's output.
        """
        from ai_agent.agentfile import OutputSpec

        asked = OutputFormat()
        found = self._format(
            _agent(output=OutputSpec("json", {"type": "array"})), Sampling(outputFormat=asked)
        )
        self.assertEqual(found, asked)


class CachingFlagTests(SynchronousTestCase):
    """
    The agent's C{caching} reaches every LLM request.
    """

    def test_flag(self) -> None:
        """
        C{caching: full} (the default) asks for caching; C{none} does not.
        """
        for caching in (True, False):
            provider = ScriptedProvider(name="first", replies=[LLMResponse(content="ok")])
            runner = SessionRunner({"first": provider}.__getitem__, Clock())
            self.successResultOf(
                runner.run(
                    _agent(caching=caching), RunRequest((ChatMessage("user", "x"),)), lambda e: None
                )
            )
            self.assertEqual(provider.requests[0].cache, caching)


class SamplingKeyTests(SynchronousTestCase):
    """
    The agent's C{topK}, C{repeatPenalty} and C{reasoningTokens} reach
    every LLM request of its turns; a short direct answer (no reasoning)
    carries no thinking budget.
    """

    def test_keysReachRequest(self) -> None:
        """
        The values of the agent file are the request's.
        """
        provider = ScriptedProvider(name="first", replies=[LLMResponse(content="ok")])
        runner = SessionRunner({"first": provider}.__getitem__, Clock())
        agent = _agent(topK=30, repeatPenalty=1.3, reasoningTokens=2048)
        self.successResultOf(
            runner.run(agent, RunRequest((ChatMessage("user", "x"),)), lambda e: None)
        )
        sent = provider.requests[0]
        self.assertEqual((sent.topK, sent.repeatPenalty, sent.reasoningTokens), (30, 1.3, 2048))

    def test_directWithoutBudget(self) -> None:
        """
        L{SessionRunner.runDirect} keeps C{topK} but sends no thinking
        budget, as it sends no reasoning effort.
        """
        provider = ScriptedProvider(name="first", replies=[LLMResponse(content="ok")])
        runner = SessionRunner({"first": provider}.__getitem__, Clock())
        agent = _agent(topK=30, reasoningTokens=2048)
        self.successResultOf(
            runner.runDirect(agent, RunRequest((ChatMessage("user", "x"),)), lambda e: None)
        )
        sent = provider.requests[0]
        self.assertEqual((sent.topK, sent.reasoningTokens, sent.reasoning), (30, None, None))
