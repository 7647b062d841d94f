"""
Client tools in the agent loop (L{ai_agent.session} with
L{ai_agent.clienttools}): the client's tools shown beside the agent's own,
their calls handed back after the agent's own calls ran, and the hidden
work put back when the client continues; on a scripted provider and a fake
clock.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from ai_agent.clienttools import HiddenTurn, restoreConversation
from ai_agent.errors import AgentError
from ai_agent.events import (
    ClientToolCall,
    Event,
    FinishReason,
    ModelAnswering,
    ToolFinished,
    ToolStarted,
    Usage,
)
from ai_agent.providers import ChatMessage, LLMResponse, ToolCall, ToolSpec
from ai_agent.request import ClientTool, RunRequest, ToolChoice
from ai_agent.sealing import SealedTurns, Sealer
from ai_agent.session import SessionRunner
from ai_agent.store import MemoryStore, StoreTurnStore
from ai_agent.testing import ScriptedProvider
from tests.test_session import _agent, _Tools

WEATHER = ClientTool(
    ToolSpec("get_weather", "The weather in a city", {"type": "object"}),
    "tools[0].function.name",
)
TIME = ClientTool(ToolSpec("get_time", "The time", {"type": "object"}), "tools[1].function.name")


def _calls(*calls: tuple[str, str, dict[str, Any]]) -> LLMResponse:
    return LLMResponse(
        content="",
        toolCalls=tuple(ToolCall(i, n, json.dumps(a)) for i, n, a in calls),
        finishReason=FinishReason.TOOL_CALLS,
        usage=Usage(10, 2),
    )


def _answer(text: str) -> LLMResponse:
    return LLMResponse(content=text, usage=Usage(20, 3))


class HandBackTests(SynchronousTestCase):
    """
    A run whose model calls a client tool ends with the call, after the
    agent's own calls of that turn ran.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[Event] = []
        self.store = StoreTurnStore(MemoryStore(self.clock))
        self.tools = _Tools({"calc__add": lambda args: succeed(str(args["a"] + args["b"]))})

    def runner(self, *replies: Any, tools: Any = None) -> tuple[SessionRunner, ScriptedProvider]:
        provider = ScriptedProvider(name="first", replies=list(replies))
        toolbox = self.tools if tools is None else tools
        runner = SessionRunner(
            {"first": provider}.__getitem__, self.clock, lambda agent: toolbox, turns=self.store
        )
        return runner, provider

    def run_(self, runner: SessionRunner, request: RunRequest, **agent: Any) -> Any:
        return self.successResultOf(runner.run(_agent(**agent), request, self.events.append))

    def handedBack(self) -> list[ClientToolCall]:
        return [e for e in self.events if isinstance(e, ClientToolCall)]

    def test_clientOnly(self) -> None:
        """
        The model sees the agent's tools and the client's; a client call
        ends the run with C{tool_calls} and the call (its name and
        arguments as the model wrote them, a generated id: the model's own
        can repeat across conversations); nothing ran on the agent's side.
        """
        runner, provider = self.runner(_calls(("c1", "get_weather", {"city": "Paris"})))
        request = RunRequest((ChatMessage("user", "weather?"),), clientTools=(WEATHER,))
        finished = self.run_(runner, request)
        self.assertEqual(finished.reason, FinishReason.TOOL_CALLS)
        self.assertEqual(finished.usage, Usage(10, 2))
        self.assertEqual(
            [spec.name for spec in provider.requests[0].tools], ["calc__add", "get_weather"]
        )
        [call] = self.handedBack()
        self.assertEqual(call, ClientToolCall(0, call.id, "get_weather", '{"city": "Paris"}'))
        self.assertRegex(call.id, "^call_[0-9a-f]{24}$")
        self.assertEqual(self.tools.calls, [])

    def test_hybridSameTurn(self) -> None:
        """
        With an own call and a client call in one turn, the own call runs
        first (with progress) and only the client's is handed back; the
        hidden turn keeps the whole assistant message and the own result.
        """
        runner, _ = self.runner(
            _calls(("o1", "calc__add", {"a": 2, "b": 3}), ("c1", "get_weather", {"city": "X"}))
        )
        request = RunRequest((ChatMessage("user", "go"),), clientTools=(WEATHER,))
        self.run_(runner, request)
        self.assertEqual(self.tools.calls, [("calc__add", {"a": 2, "b": 3})])
        kinds = [type(e) for e in self.events if not isinstance(e, (Usage, ModelAnswering))]
        self.assertEqual(kinds, [ToolStarted, ToolFinished, ClientToolCall])
        [handed] = self.handedBack()
        self.assertIsNone(self.successResultOf(self.store.findTurn(["c1"])))
        turn = self.successResultOf(self.store.findTurn([handed.id]))
        assert turn is not None
        self.assertEqual([c.id for c in turn.assistant.toolCalls], ["o1", handed.id])
        self.assertEqual(
            [(m.role, m.content, m.toolCallId) for m in turn.after], [("tool", "5", "o1")]
        )
        self.assertEqual(turn.before, ())

    def test_hybridContinued(self) -> None:
        """
        An own call, then a client call in the next turn, then, when the
        client sends its result, an answer: the continued run's model sees
        the whole history in order (the hidden own call and its result, the
        assistant message with the client call, the client's result).
        """
        runner, provider = self.runner(
            _calls(("o1", "calc__add", {"a": 2, "b": 3})),
            _calls(("c1", "get_weather", {"city": "X"})),
            _answer("5 and sunny"),
        )
        question = ChatMessage("user", "sum, then weather")
        first = self.run_(runner, RunRequest((question,), clientTools=(WEATHER,)))
        self.assertEqual(first.reason, FinishReason.TOOL_CALLS)
        call = self.handedBack()[0]
        # What the client sends back: its history as it saw it.
        clientSaw = ChatMessage(
            "assistant", "", toolCalls=(ToolCall(call.id, call.name, call.arguments),)
        )
        result = ChatMessage("tool", "sunny", toolCallId=call.id)
        second = self.run_(
            runner, RunRequest((question, clientSaw, result), clientTools=(WEATHER,))
        )
        self.assertEqual(second.reason, FinishReason.END)
        seen = provider.requests[2].messages
        self.assertEqual(
            [(m.role, [c.id for c in m.toolCalls], m.toolCallId, m.content) for m in seen[1:]],
            [
                ("user", [], None, "sum, then weather"),
                ("assistant", ["o1"], None, ""),
                ("tool", [], "o1", "5"),
                ("assistant", [call.id], None, ""),
                ("tool", [], call.id, "sunny"),
            ],
        )

    def test_continuationNotFound(self) -> None:
        """
        When the hidden turn is gone (expired), the run goes on from what
        the client sent, and one warning says so.
        """
        runner, provider = self.runner(
            _calls(("o1", "calc__add", {"a": 1, "b": 1}), ("c1", "get_weather", {})),
            _answer("ok"),
        )
        question = ChatMessage("user", "q")
        self.run_(runner, RunRequest((question,), clientTools=(WEATHER,)))
        self.clock.advance(self.store.ttl + 1)
        warnings: list[LogEvent] = []
        globalLogPublisher.addObserver(warnings.append)
        self.addCleanup(globalLogPublisher.removeObserver, warnings.append)
        clientSaw = ChatMessage("assistant", "", toolCalls=(ToolCall("c1", "get_weather", "{}"),))
        result = ChatMessage("tool", "rain", toolCallId="c1")
        self.run_(runner, RunRequest((question, clientSaw, result), clientTools=(WEATHER,)))
        seen = provider.requests[1].messages
        self.assertEqual([m.role for m in seen], ["system", "user", "assistant", "tool"])
        self.assertEqual([c.id for c in seen[2].toolCalls], ["c1"])
        missing = [e for e in warnings if "no hidden turn" in e.get("log_format", "")]
        self.assertEqual(len(missing), 1)

    def test_toolChoiceNone(self) -> None:
        """
        C{none} hides the client's tools; the agent keeps its own.
        """
        runner, provider = self.runner(_answer("fine"))
        self.run_(
            runner,
            RunRequest(
                (ChatMessage("user", "q"),),
                clientTools=(WEATHER,),
                toolChoice=ToolChoice(ToolChoice.NONE),
            ),
        )
        self.assertEqual([s.name for s in provider.requests[0].tools], ["calc__add"])
        self.assertIsNone(provider.requests[0].toolChoice)

    def test_toolChoiceNamed(self) -> None:
        """
        A named tool is forced on the first LLM call only.
        """
        runner, provider = self.runner(
            _calls(("o1", "calc__add", {"a": 1, "b": 2})), _calls(("c1", "get_time", {}))
        )
        forced = ToolChoice(ToolChoice.TOOL, "calc__add")
        self.run_(
            runner,
            RunRequest((ChatMessage("user", "q"),), clientTools=(WEATHER, TIME), toolChoice=forced),
        )
        self.assertEqual(provider.requests[0].toolChoice, forced)
        self.assertIsNone(provider.requests[1].toolChoice)

    def test_toolChoiceRequired(self) -> None:
        """
        C{required} holds until some tool was called, then the model may
        answer.
        """
        runner, provider = self.runner(_calls(("o1", "calc__add", {"a": 1, "b": 2})), _answer("3"))
        required = ToolChoice(ToolChoice.REQUIRED)
        self.run_(
            runner,
            RunRequest((ChatMessage("user", "q"),), clientTools=(WEATHER,), toolChoice=required),
        )
        self.assertEqual(provider.requests[0].toolChoice, required)
        self.assertIsNone(provider.requests[1].toolChoice)

    def test_parallelPassedOn(self) -> None:
        """
        C{parallel_tool_calls} reaches the LLM request.
        """
        runner, provider = self.runner(_answer("x"))
        self.run_(
            runner,
            RunRequest(
                (ChatMessage("user", "q"),), clientTools=(WEATHER,), parallelToolCalls=False
            ),
        )
        self.assertIs(provider.requests[0].parallelToolCalls, False)

    def test_nameClash(self) -> None:
        """
        A client tool named like one of the agent's own tools, or in the
        sub-agents' namespace, is a 400 naming it and its place in the
        request, before any LLM call.
        """
        for name in ("calc__add", "agent__helper"):
            runner, provider = self.runner(_answer("x"))
            clash = ClientTool(ToolSpec(name, "", {}), "tools[3].function.name")
            failure = self.failureResultOf(
                runner.run(
                    _agent(), RunRequest((ChatMessage("user", "q"),), clientTools=(clash,)), print
                ),
                AgentError,
            )
            self.assertEqual(
                (failure.value.status, failure.value.param, failure.value.code),
                (400, "tools[3].function.name", "tool_name_conflict"),
            )
            self.assertIn(name, failure.value.message)
            self.assertEqual(provider.requests, [])

    def test_clientToolsOff(self) -> None:
        """
        An agent with C{clientTools: false} shows the model its own tools
        only, and runs as before.
        """
        runner, provider = self.runner(_answer("x"))
        request = RunRequest((ChatMessage("user", "q"),), clientTools=(WEATHER,))
        self.run_(runner, request, clientTools=False)
        self.assertEqual([s.name for s in provider.requests[0].tools], ["calc__add"])

    def test_sameModelIdsOtherConversation(self) -> None:
        """
        Two conversations whose model used the same call id never see each
        other's hidden turns: the ids handed back differ, and a client
        presenting the model's id finds nothing.
        """
        runner, _ = self.runner(
            _calls(("o1", "calc__add", {"a": 1, "b": 1}), ("call_0", "get_weather", {})),
            _calls(("o1", "calc__add", {"a": 9, "b": 9}), ("call_0", "get_weather", {})),
        )
        for question in ("alice's question", "bob's question"):
            self.run_(runner, RunRequest((ChatMessage("user", question),), clientTools=(WEATHER,)))
        first, second = self.handedBack()
        self.assertNotEqual(first.id, second.id)
        self.assertIsNone(self.successResultOf(self.store.findTurn(["call_0"])))
        turn = self.successResultOf(self.store.findTurn([second.id]))
        assert turn is not None
        self.assertEqual(turn.after[0].content, "18")

    def test_repeatedIdsReplaced(self) -> None:
        """
        A call whose id repeats one of the run (or is empty) gets a
        generated one, so results and hidden turns are found by id.
        """
        runner, _ = self.runner(
            _calls(("x", "calc__add", {"a": 1, "b": 1})),
            _calls(("x", "get_weather", {}), ("", "get_time", {})),
        )
        self.run_(runner, RunRequest((ChatMessage("user", "q"),), clientTools=(WEATHER, TIME)))
        ids = [c.id for c in self.handedBack()]
        self.assertEqual(len(set(ids + ["x"])), 3)
        self.assertTrue(all(i.startswith("call_") for i in ids))

    def test_subAgentsNeverSeeClientTools(self) -> None:
        """
        A sub-agent's run (a request built by the sub-agent tool) carries
        no client tools: only the parent's model sees them.
        """
        from ai_agent.tools.subagent import SubAgentTool

        seen: list[RunRequest] = []

        class _Runner:
            def run(self, agent: Any, request: RunRequest, events: Any) -> Deferred[Any]:
                seen.append(request)
                return Deferred()

        SubAgentTool(_agent(name="child"), _Runner()).call({"prompt": "x"}, print)
        self.assertEqual(seen[0].clientTools, ())


class _ReadsCounted:
    """
    A store whose C{getMany} calls are recorded (their keys), the rest
    passed through.
    """

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.reads: list[list[str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def getMany(self, namespace: str, keys: Any) -> Deferred[Any]:
        self.reads.append(list(keys))
        return self.store.getMany(namespace, keys)


class HiddenTurnTests(SynchronousTestCase):
    """
    L{HiddenTurn} survives a store as JSON; L{restoreConversation} splices.
    """

    def test_jsonRoundTrip(self) -> None:
        """
        A turn written as JSON (through C{json.dumps}) reads back equal.
        """
        turn = HiddenTurn(
            (
                ChatMessage("assistant", "", toolCalls=(ToolCall("o1", "t", "{}"),)),
                ChatMessage("tool", "r", toolCallId="o1"),
            ),
            ChatMessage("assistant", "hm", "n", (ToolCall("c1", "w", '{"a": 1}'),)),
            (),
            ("c1",),
        )
        self.assertEqual(HiddenTurn.fromJSON(json.loads(json.dumps(turn.asJSON()))), turn)
        self.assertRaises(ValueError, HiddenTurn.fromJSON, {"before": []})

    def test_splice(self) -> None:
        """
        Each client assistant message with tool calls is replaced by its
        hidden turn; other messages stay in place.
        """
        store = StoreTurnStore(MemoryStore(Clock()))
        full = ChatMessage(
            "assistant", "", toolCalls=(ToolCall("o1", "t", "{}"), ToolCall("c1", "w", "{}"))
        )
        own = ChatMessage("tool", "r", toolCallId="o1")
        store.saveTurn(HiddenTurn((), full, (own,), ("c1",)))
        seen = ChatMessage("assistant", "", toolCalls=(ToolCall("c1", "w", "{}"),))
        user = ChatMessage("user", "q")
        result = ChatMessage("tool", "x", toolCallId="c1")
        restored, missing = self.successResultOf(
            Deferred.fromCoroutine(restoreConversation([user, seen, result], store))
        )
        self.assertEqual(restored, [user, full, own, result])
        self.assertEqual(missing, [])

    def threeRounds(
        self, store: Any
    ) -> tuple[list[ChatMessage], list[ChatMessage], list[HiddenTurn]]:
        """
        A client's conversation of three handed-back rounds (the second
        one's turn kept nowhere), the conversation with the kept turns put
        back, and the three turns.
        """
        conversation: list[ChatMessage] = [ChatMessage("user", "q")]
        expected: list[ChatMessage] = [ChatMessage("user", "q")]
        turns = []
        for n in range(3):
            full = ChatMessage(
                "assistant",
                "",
                toolCalls=(ToolCall(f"o{n}", "t", "{}"), ToolCall(f"c{n}", "w", "{}")),
            )
            own = ChatMessage("tool", f"r{n}", toolCallId=f"o{n}")
            turn = HiddenTurn((), full, (own,), (f"c{n}",))
            turns.append(turn)
            if n != 1 and store is not None:
                store.saveTurn(turn)
            seen = ChatMessage("assistant", "", toolCalls=(ToolCall(f"c{n}", "w", "{}"),))
            result = ChatMessage("tool", f"x{n}", toolCallId=f"c{n}")
            conversation += [seen, result]
            expected += [seen, result] if n == 1 else [full, own, result]
        return conversation, expected, turns

    def test_oneReadForManyTurns(self) -> None:
        """
        The hidden turns of a conversation of several handed-back rounds
        are read from the store in one C{getMany}, each put back in its
        place; a round whose turn was not kept is left as the client sent
        it and its call ids reported missing.
        """
        memory = _ReadsCounted(MemoryStore(Clock()))
        store = StoreTurnStore(memory)  # type: ignore[arg-type]
        conversation, expected, _ = self.threeRounds(store)
        restored, missing = self.successResultOf(
            Deferred.fromCoroutine(restoreConversation(conversation, store))
        )
        self.assertEqual(restored, expected)
        self.assertEqual(missing, ["c1"])
        self.assertEqual(len(memory.reads), 1)

    def test_sealedAndStoredTurns(self) -> None:
        """
        A C{store: false} run finds turns among those the client sent back
        sealed first, and reads only the others from the store, in one
        read.
        """
        memory = _ReadsCounted(MemoryStore(Clock()))
        stored = StoreTurnStore(memory)  # type: ignore[arg-type]
        conversation, expected, turns = self.threeRounds(None)
        stored.saveTurn(turns[2])
        sealed = SealedTurns(Sealer.fromSecrets(["k" * 32]), {"c0": turns[0]}, stored)
        restored, missing = self.successResultOf(
            Deferred.fromCoroutine(restoreConversation(conversation, sealed))
        )
        self.assertEqual(restored, expected)
        self.assertEqual(missing, ["c1"])
        self.assertEqual(memory.reads, [["c1", "c2"]])

    def test_bounded(self) -> None:
        """
        Hidden turns kept in memory are bounded as the run store is: past
        C{maxEntries} call ids, the oldest are dropped first.
        """
        store = StoreTurnStore(MemoryStore(Clock(), maxEntries=2))
        for n in range(3):
            store.saveTurn(HiddenTurn((), ChatMessage("assistant", ""), (), (f"c{n}",)))
        self.assertIsNone(self.successResultOf(store.findTurn(["c0"])))
        self.assertIsNotNone(self.successResultOf(store.findTurn(["c2"])))
