"""
Tests for L{ai_agent.tools.output}: tool results over the agent's
C{toolResponseMaxBytes} kept behind handles and read back with the
C{tool_output} tool.
"""

from __future__ import annotations

import json
import re
from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ai_agent.agentfile import OutputSpec, ToolOutputSpec
from ai_agent.events import ContentDelta, Event, ExtractionProgress, Usage, progressText
from ai_agent.providers import ChatMessage, LLMResponse, ToolCall
from ai_agent.request import RunRequest
from ai_agent.session import SessionRunner
from ai_agent.testing import Reply, ScriptedProvider
from ai_agent.tools import output
from ai_agent.tools.output import (
    EXTRACTION_PROMPT,
    TOOL_OUTPUT,
    RunOutputs,
    ToolOutputError,
    checkPattern,
)
from tests._harness import inThread, startServer
from tests.mcp_servers import calcEntry
from tests.test_session import _agent, _Tools

_UUID = re.compile(r'handle "([0-9a-f-]{36})"')

LOG = "\n".join(f"{i:05d} level={'ERROR' if i % 100 == 0 else 'info'}" for i in range(1, 2001))


def _handle(text: str) -> str:
    match = _UUID.search(text)
    assert match is not None, text
    return match.group(1)


def _noExtraction(messages: list[ChatMessage]) -> Any:
    raise AssertionError("no extraction call expected")


class RunOutputsTests(SynchronousTestCase):
    """
    Keeping results, handles, and reading by range and grep.
    """

    def call(self, outputs: RunOutputs, **arguments: Any) -> str:
        return self.successResultOf(
            _deferred(outputs.call(arguments, _noExtraction, lambda event: None))
        )

    def test_smallResultUnchanged(self) -> None:
        """
        A result within the limit reaches the model as it is, and nothing
        is kept (so the tool is not offered).
        """
        outputs = RunOutputs(ToolOutputSpec(), 100)
        self.assertEqual(outputs.result("t__small", "x" * 100), "x" * 100)
        self.assertFalse(outputs)

    def test_handleAndHead(self) -> None:
        """
        A result over the limit becomes a message with its size, a random
        UUID handle, how to call C{tool_output}, and the head of the text;
        two results get different handles.
        """
        outputs = RunOutputs(ToolOutputSpec(), 1000)
        message = outputs.result("t__log", LOG)
        other = outputs.result("t__log", LOG)
        self.assertTrue(outputs)
        self.assertIn(f"({len(LOG)} bytes, 2000 lines)", message)
        self.assertIn(f'tool_output(handle = "{_handle(message)}"', message)
        self.assertIn("00001 level=info\n00002 level=info", message)
        self.assertNotIn(LOG[-30:], message)
        self.assertLessEqual(len(message.encode("utf-8")), 1000)
        self.assertNotEqual(_handle(message), _handle(other))

    def test_otherRunNotFound(self) -> None:
        """
        A handle is known only to the run that kept it.
        """
        handle = _handle(RunOutputs(ToolOutputSpec(), 100).result("t", LOG))
        other = RunOutputs(ToolOutputSpec(), 100)
        other.result("t", LOG)
        failure = self.failureResultOf(
            _deferred(other.call({"handle": handle}, _noExtraction, lambda event: None)),
            ToolOutputError,
        )
        self.assertIn(f"no kept tool output has the handle {handle!r}", str(failure.value))

    def test_readLines(self) -> None:
        """
        C{startLine}/C{lineCount} read whole lines and say where to go on.
        """
        outputs = RunOutputs(ToolOutputSpec(), 4000)
        handle = _handle(outputs.result("t__log", LOG))
        text = self.call(outputs, handle=handle, startLine=100, lineCount=2)
        self.assertEqual(
            text,
            f"tool_output of t__log (handle {handle}, mode read):\n"
            "00100 level=ERROR\n00101 level=info\n"
            "[lines 100-101 of 2000; continue with startLine 102]",
        )

    def test_readOffset(self) -> None:
        """
        C{offset}/C{length} read characters; the answer is cut at the limit
        and says where to go on.
        """
        outputs = RunOutputs(ToolOutputSpec(), 1000)
        handle = _handle(outputs.result("t__log", LOG))
        text = self.call(outputs, handle=handle, offset=17, length=16)
        self.assertTrue(
            text.endswith(
                f"00002 level=info\n[characters 17-33 of {len(LOG)}; continue with offset 33]"
            ),
            text,
        )
        whole = self.call(outputs, handle=handle, offset=0, length=100000)
        self.assertLessEqual(len(whole.encode("utf-8")), 1000)
        self.assertRegex(whole, r"continue with offset \d+\]$")

    def test_grep(self) -> None:
        """
        C{grep} returns matching lines with their numbers, stops at
        C{maxMatches} and says where to go on.
        """
        outputs = RunOutputs(ToolOutputSpec(), 4000)
        handle = _handle(outputs.result("t__log", LOG))
        text = self.call(outputs, handle=handle, pattern="ERROR", maxMatches=3)
        self.assertEqual(
            text.split("\n")[1:],
            [
                "100: 00100 level=ERROR",
                "200: 00200 level=ERROR",
                "300: 00300 level=ERROR",
                "[3 matching lines in lines 1-300 of 2000 (stopped at 3 matches;"
                " continue with startLine 301)]",
            ],
        )
        rest = self.call(outputs, handle=handle, pattern="ERROR", startLine=1901)
        self.assertEqual(
            rest.split("\n")[1:],
            ["2000: 02000 level=ERROR", "[1 matching lines in lines 1901-2000 of 2000]"],
        )

    def test_patterns(self) -> None:
        """
        Invalid and over-long patterns are refused with a reason; nested
        repetitions, which the C{regex} module runs without blowing up, are
        accepted.
        """
        self.assertIn("not a valid", str(self.assertRaises(ToolOutputError, checkPattern, "(")))
        self.assertIn(
            "longer than", str(self.assertRaises(ToolOutputError, checkPattern, "a" * 501))
        )
        self.assertEqual(checkPattern("level=(ERROR|WARN)").pattern, "level=(ERROR|WARN)")
        outputs = RunOutputs(ToolOutputSpec(), 4000)
        handle = _handle(outputs.result("t", LOG))
        text = self.call(outputs, handle=handle, pattern="(0+1)+00 level=ERROR", maxMatches=1)
        self.assertIn("100: 00100 level=ERROR", text)

    def test_runawayPattern(self) -> None:
        """
        A pattern that backtracks without end is stopped by the match
        timeout, and the model is told to write a simpler one and where the
        scan stopped.
        """
        self.patch(output, "MAX_GREP_SECONDS", 0.05)
        outputs = RunOutputs(ToolOutputSpec(), 4000)
        handle = _handle(outputs.result("t", "fine\n" + "ab " * 3000 + "!\nnever reached"))
        text = self.call(outputs, handle=handle, pattern=r"(\w+\s?)*$")
        self.assertEqual(
            text.split("\n")[-1],
            "[1 matching lines in lines 1-1 of 3 (the pattern took more than 0.05 s;"
            " write a simpler one; continue with startLine 2)]",
        )

    def test_badArguments(self) -> None:
        """
        Arguments the model got wrong are refused with a message saying
        what to send, never a crash: no handle, an unknown mode, a negative
        offset, an extraction without C{extract}.
        """
        outputs = RunOutputs(ToolOutputSpec(), 100)
        handle = _handle(outputs.result("t", LOG))
        for arguments, message in (
            ({}, "tool_output needs the 'handle' given with the result"),
            ({"handle": handle, "mode": "all"}, "'mode' must be one of auto, full-chunked"),
            ({"handle": handle, "offset": -1}, "'offset' must be an integer >= 0"),
            ({"handle": handle, "startLine": "3"}, "'startLine' must be an integer >= 1"),
            ({"handle": handle, "mode": "auto"}, "modes auto and full-chunked need 'extract'"),
            ({"handle": handle, "pattern": ""}, "mode grep needs a 'pattern'"),
        ):
            failure = self.failureResultOf(
                _deferred(outputs.call(arguments, _noExtraction, lambda event: None)),
                ToolOutputError,
            )
            self.assertIn(message, str(failure.value))

    def test_disabled(self) -> None:
        """
        With C{toolOutput: false}, a result over the limit is cut as before.
        """
        outputs = RunOutputs(ToolOutputSpec(enabled=False), 20)
        text = outputs.result("t", LOG)
        self.assertEqual(
            text,
            LOG[:20]
            + f"\n[truncated: the result was {len(LOG)} bytes; only the first 20 are shown]",
        )
        self.assertFalse(outputs)

    def test_runBound(self) -> None:
        """
        Past the bytes a run keeps, a result is cut with a note saying why.
        """
        self.patch(output, "MAX_KEPT_RUN", 50000)
        outputs = RunOutputs(ToolOutputSpec(), 100)
        self.assertIn("handle", outputs.result("t", LOG))
        cut = outputs.result("t", LOG)
        self.assertIn(
            f"only the first 100 are shown; this run already keeps {len(LOG)} bytes of tool"
            " results (at most 50000)]",
            cut,
        )

    def test_resultBound(self) -> None:
        """
        A result over the per-result bound is cut with a note.
        """
        self.patch(output, "MAX_KEPT_RESULT", 1000)
        cut = RunOutputs(ToolOutputSpec(), 100).result("t", LOG)
        self.assertIn("results over 1000 bytes are not kept for tool_output", cut)


def _deferred(coroutine: Any) -> Any:
    from twisted.internet.defer import ensureDeferred

    return ensureDeferred(coroutine)


class SessionExtractionTests(SynchronousTestCase):
    """
    The session offers C{tool_output} once a result is kept, and runs its
    extraction pass through the agent's own model.
    """

    def test_extractionPass(self) -> None:
        """
        The model gets a handle instead of the big result; C{tool_output}
        is offered from the next turn; its extraction call goes to the
        agent's model with the extraction prompt, the request and the
        chunk, without tools, and its answer is the tool's result (not the
        run's content); progress says which chunk is read, and the call's
        tokens count in the run's usage.
        """
        self.patch(output, "newHandle", lambda: "h-1")
        provider = ScriptedProvider(
            name="first",
            replies=[
                LLMResponse(content="", toolCalls=(ToolCall("c1", "t__log", "{}"),)),
                LLMResponse(
                    content="",
                    toolCalls=(
                        ToolCall(
                            "c2",
                            TOOL_OUTPUT,
                            json.dumps({"handle": "h-1", "extract": "the ERROR lines"}),
                        ),
                    ),
                ),
                LLMResponse(content="00100 and 00200", usage=Usage(7, 3)),
                LLMResponse(content="Two errors."),
            ],
        )
        events: list[Event] = []
        tools = _Tools({"t__log": lambda args: succeed(LOG[:3599])})
        runner = SessionRunner(lambda name: provider, Clock(), lambda agent: tools)
        finished = self.successResultOf(
            runner.run(
                _agent(toolResponseMaxBytes=1000),
                RunRequest((ChatMessage("user", "errors?"),)),
                events.append,
            )
        )
        first, second, extraction, last = provider.requests
        self.assertNotIn(TOOL_OUTPUT, [spec.name for spec in first.tools])
        self.assertIn(TOOL_OUTPUT, [spec.name for spec in second.tools])
        handleMessage = [m.content for m in second.messages if m.role == "tool"][0]
        self.assertIn('kept as handle "h-1"', handleMessage)
        self.assertEqual(extraction.tools, ())
        self.assertEqual(extraction.messages[0], ChatMessage("system", EXTRACTION_PROMPT))
        self.assertIn("What to extract:\nthe ERROR lines", extraction.messages[1].content)
        self.assertIn(LOG[:3599], extraction.messages[1].content)
        result = [m.content for m in last.messages if m.role == "tool"][-1]
        self.assertEqual(result, "tool_output of t__log (handle h-1, mode auto):\n00100 and 00200")
        self.assertEqual(
            "".join(e.text for e in events if isinstance(e, ContentDelta)), "Two errors."
        )
        progress = [e for e in events if isinstance(e, ExtractionProgress)]
        self.assertEqual(progress, [ExtractionProgress("t__log", 1, 1)])
        self.assertEqual(
            progressText(progress[0]), "extracting from the output of t__log (chunk 1 of 1)\n"
        )
        self.assertEqual(finished.usage.promptTokens, 7)

    def test_extractionModels(self) -> None:
        """
        With C{toolOutput.models}, the extraction call goes to those models,
        without the agent's own sampling keys (which their provider may
        not take) and without its JSON output format.
        """
        self.patch(output, "newHandle", lambda: "h-2")
        agentProvider = ScriptedProvider(
            name="first",
            replies=[
                LLMResponse(content="", toolCalls=(ToolCall("c1", "t__log", "{}"),)),
                LLMResponse(
                    content="",
                    toolCalls=(
                        ToolCall("c2", TOOL_OUTPUT, '{"handle": "h-2", "extract": "errors"}'),
                    ),
                ),
                LLMResponse(content="{}"),
            ],
        )
        reader = ScriptedProvider(name="cheap", replies=[LLMResponse(content="none")])
        providers = {"first": agentProvider, "cheap": reader}
        tools = _Tools({"t__log": lambda args: succeed(LOG)})
        runner = SessionRunner(providers.__getitem__, Clock(), lambda agent: tools)
        agent = _agent(
            toolResponseMaxBytes=1000,
            topK=40,
            reasoningTokens=2048,
            output=OutputSpec(format="json"),
            toolOutput=ToolOutputSpec(models=("cheap/small",)),
        )
        self.successResultOf(
            runner.run(agent, RunRequest((ChatMessage("user", "q"),)), lambda event: None)
        )
        (extraction,) = reader.requests
        self.assertEqual(extraction.model, "small")
        self.assertEqual(
            (extraction.topK, extraction.reasoningTokens, extraction.outputFormat),
            (None, None, None),
        )
        self.assertEqual(agentProvider.requests[0].topK, 40)

    def test_chunks(self) -> None:
        """
        A text longer than one chunk is read in chunks (at most
        C{maxChunks}), each call seeing its own range, and the answer says
        where to continue.
        """
        self.patch(output, "EXTRACTION_CHUNK", 1000)
        outputs = RunOutputs(ToolOutputSpec(maxChunks=2, overlapPercent=10), 1000)
        handle = _handle(outputs.result("t", LOG))
        seen: list[str] = []

        async def extractor(messages: list[ChatMessage]) -> str:
            seen.append(messages[1].content)
            return f"part {len(seen)}"

        events: list[Event] = []
        text = self.successResultOf(
            _deferred(outputs.call({"handle": handle, "extract": "x"}, extractor, events.append))
        )
        self.assertIn(f"characters 0-1000 of {len(LOG)}", seen[0])
        self.assertIn(f"characters 900-1900 of {len(LOG)}", seen[1])
        self.assertIn("[characters 0-1000]\npart 1", text)
        self.assertIn("call again with offset 1900 for the rest]", text)
        self.assertEqual(len(events), 2)


class EndToEndTests(TestCase):
    """
    A 2 MB result of a real MCP server read back by range and grep behind
    the real headend and the fake upstream.
    """

    async def test_bigResultByRangeAndGrep(self) -> None:
        """
        The model is shown a handle and the head of the 2.2 MB log, not the
        log; reading lines 30000-30001 and grepping for ERROR lines from
        line 49000 return exactly those lines of the real result.
        """
        self.patch(output, "newHandle", lambda: "big-1")
        agent = "---\ndescription: Logs\nmodels: fake/test-model\ntools: [calc]\n---\nRead logs.\n"
        server = await startServer(
            self, agents={"agent.ai": agent}, mcpServers={"calc": calcEntry("--logs")}
        )
        server.upstream.script(
            Reply(toolCalls=[("calc__lines", {"count": 55000})]),
            Reply(
                toolCalls=[
                    (TOOL_OUTPUT, {"handle": "big-1", "startLine": 30000, "lineCount": 2}),
                    (TOOL_OUTPUT, {"handle": "big-1", "pattern": "ERROR", "startLine": 49000}),
                ]
            ),
            Reply(content="Seven errors."),
        )
        answer = await inThread(
            server.client().chat.completions.create,
            model="agent",
            messages=[{"role": "user", "content": "errors?"}],
        )
        self.assertEqual(answer.choices[0].message.content, "Seven errors.")
        requests = server.upstream.requests
        handleMessage = requests[1].body["messages"][-1]["content"]
        self.assertIn('kept as handle "big-1"', handleMessage)
        self.assertIn("55000 lines", handleMessage)
        self.assertLess(len(handleMessage), 12288)
        self.assertIn(TOOL_OUTPUT, [t["function"]["name"] for t in requests[1].body["tools"]])
        ranged, grepped = [m["content"] for m in requests[2].body["messages"][-2:]]
        self.assertEqual(
            ranged.split("\n")[1:],
            [
                "0030000 level=ERROR request 30000 served",
                "0030001 level=info request 30001 served",
                "[lines 30000-30001 of 55000; continue with startLine 30002]",
            ],
        )
        self.assertEqual(
            grepped.split("\n")[1:],
            [f"{n}: {n:07d} level=ERROR request {n} served" for n in range(49000, 55001, 1000)]
            + ["[7 matching lines in lines 49000-55000 of 55000]"],
        )

    async def test_extractionOverHTTP(self) -> None:
        """
        The extraction pass is an upstream call of the agent's model without
        tools, with the extraction prompt, the request and the first chunk;
        its answer is the tool result (with where to continue), and the
        stream shows its progress.
        """
        self.patch(output, "newHandle", lambda: "big-2")
        agent = (
            "---\ndescription: Logs\nmodels: fake/test-model\ntools: [calc]\n"
            "toolOutput:\n  maxChunks: 1\n---\nRead logs.\n"
        )
        server = await startServer(
            self, agents={"agent.ai": agent}, mcpServers={"calc": calcEntry("--logs")}
        )
        server.upstream.script(
            Reply(toolCalls=[("calc__lines", {"count": 55000})]),
            Reply(toolCalls=[(TOOL_OUTPUT, {"handle": "big-2", "extract": "the ERROR lines"})]),
            Reply(content="0001000 and 0002000"),
            Reply(content="Errors at 1000 and 2000."),
        )

        def consume() -> tuple[str, str]:
            chunks = list(
                server.client().chat.completions.create(
                    model="agent", messages=[{"role": "user", "content": "errors?"}], stream=True
                )
            )
            content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            reasoning = "".join(
                (c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                for c in chunks
                if c.choices
            )
            return content, reasoning

        content, reasoning = await inThread(consume)
        self.assertEqual(content, "Errors at 1000 and 2000.")
        self.assertIn("extracting from the output of calc__lines (chunk 1 of 1)\n", reasoning)
        extraction = server.upstream.requests[2].body
        self.assertNotIn("tools", extraction)
        self.assertEqual(
            extraction["messages"][0], {"role": "system", "content": EXTRACTION_PROMPT}
        )
        prompt = extraction["messages"][1]["content"]
        self.assertTrue(prompt.startswith("What to extract:\nthe ERROR lines\n"), prompt[:200])
        self.assertIn("0001000 level=ERROR request 1000 served", prompt)
        result = server.upstream.requests[3].body["messages"][-1]["content"]
        self.assertTrue(
            result.startswith(
                "tool_output of calc__lines (handle big-2, mode auto):\n0001000 and 0002000\n\n"
                "[read characters 0-49152 of "
            ),
            result,
        )
