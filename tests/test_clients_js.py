"""
The JavaScript half of the client matrix: real npm packages, unmodified,
against a live server in front of the real fake upstream.

Each test starts a server, then runs one file of C{tests/js} under C{node
--test} with the server's base URL in C{AI_AGENT_BASE_URL}; the test passes
when node exits 0, and shows node's output when it does not.  The clients:
the C{openai} npm SDK, the Vercel AI SDK (C{ai} with
C{@ai-sdk/openai-compatible}, which validates every chunk), LangChain.js
(C{@langchain/openai}), Continue's own configuration parser and OpenAI
adapter, LibreChat's configuration schema with the requests LibreChat
makes, and the C{@anthropic-ai/sdk} npm SDK on the Anthropic Messages API.

The tests are skipped, with the reason, when C{node} (20 or newer) is
missing or C{npm ci --prefix tests/js} was not run; C{.ci/run} runs it.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
from typing import Any

from twisted.trial.unittest import SynchronousTestCase, TestCase

from ai_agent.testing import Reply
from tests._harness import LiveServer, startServer
from tests._process import run
from tests.mcp_servers import calcEntry
from tests.test_tasks import captureRunLogs

JS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "js")

MODEL = "chat"

CHAT_AGENT = """\
---
description: The agent the JavaScript clients talk to
models: fake/test-model
---
You are the chat agent.
"""

#: Seconds one node test may take before node fails it.
NODE_TEST_TIMEOUT = 30

#: The reporter that names each file's tests by outcome.
REPORTER = os.path.join(JS, "_count-reporter.mjs")


def _node() -> str | None:
    return shutil.which("node")


def _skipReason() -> str | None:
    reason = _nodeProblem()
    if reason is None and not os.path.isdir(os.path.join(JS, "node_modules")):
        return "tests/js/node_modules is missing: run `npm ci --prefix tests/js` first"
    return reason


def _nodeProblem() -> str | None:
    node = _node()
    if node is None:
        return "node is not installed: the JavaScript client matrix needs Node.js 20 or newer"
    try:
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        return f"node does not run ({error})"
    match = re.match(r"v(\d+)\.", version)
    if match is None or int(match.group(1)) < 20:
        return f"node {version} is too old: the JavaScript client matrix needs Node.js 20 or newer"
    return None


async def runNodeTests(
    script: str, cwd: str, env: dict[str, str], counts: str
) -> tuple[str, str | None]:
    """
    Run the test file C{script} under C{node --test}, its spec report on
    stdout and the names of its tests by outcome (C{_count-reporter.mjs})
    in the file C{counts}.

    @return: node's output, and why the run is not a pass (L{None} when
        node exited 0 having passed at least one test and skipped none).
    """
    node = _node()
    assert node is not None
    out, err, code = await run(
        [
            node,
            "--test",
            f"--test-timeout={NODE_TEST_TIMEOUT * 1000}",
            "--test-reporter=spec",
            "--test-reporter-destination=stdout",
            f"--test-reporter={REPORTER}",
            f"--test-reporter-destination={counts}",
            script,
        ],
        cwd=cwd,
        env=env,
    )
    output = (out + err).decode("utf-8", "replace")
    if code != 0:
        return output, f"exited with {code}"
    try:
        with open(counts, encoding="utf-8") as f:
            seen = json.load(f)
    except (OSError, ValueError) as error:
        return output, f"left no readable test counts ({error})"
    if seen["skipped"] or seen["todo"]:
        return output, f"skipped {seen['skipped']} and left as todo {seen['todo']}"
    if not seen["passed"]:
        return output, "registered no test"
    return output, None


class JavaScriptClientTests(TestCase):
    """
    Each JavaScript client passes its file of C{tests/js} against a live
    server: models, a plain completion, a stream with usage, an error.
    """

    skip = _skipReason()

    async def _server(self, **kwargs: Any) -> LiveServer:
        return await startServer(self, agents={f"{MODEL}.ai": CHAT_AGENT}, **kwargs)

    async def _node(self, script: str, server: LiveServer) -> str:
        """
        Run one test file under C{node --test}; fail with node's output
        unless it exits 0 having passed at least one test and skipped none.
        """
        env = {
            key: value
            for key, value in os.environ.items()
            if key in ("PATH", "HOME", "LANG", "TMPDIR", "SYSTEMROOT")
        }
        env.update(
            AI_AGENT_BASE_URL=server.baseUrl,
            AI_AGENT_MODEL=MODEL,
            NO_COLOR="1",
            NODE_NO_WARNINGS="1",
        )
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        counts = os.path.join(folder, "counts.json")
        output, problem = await runNodeTests(script, JS, env, counts)
        if problem is not None:
            self.fail(f"node --test {script} {problem}:\n{output}")
        return output

    async def test_openaiSdk(self) -> None:
        """
        The C{openai} npm SDK lists and retrieves models, completes, streams
        with a usage chunk, accumulates with its stream helper, and raises
        C{NotFoundError} and C{BadRequestError} with the error fields.
        """
        server = await self._server()
        await self._node("openai.test.mjs", server)

    async def test_openaiSdkScripted(self) -> None:
        """
        The C{openai} npm SDK sees reasoning as C{reasoning_content} deltas
        and raises a failure that happens after streaming began.
        """
        server = await self._server()
        server.upstream.script(
            Reply(content="42", reasoning=["Let me ", "think"]),
            Reply(content=["a", "b", "c"], cutAfter=2),
        )
        await self._node("openai-scripted.test.mjs", server)

    async def test_vercelAiSdk(self) -> None:
        """
        The Vercel AI SDK accepts every response and stream chunk (no
        validation error part), reports usage with C{includeUsage}, and
        raises C{APICallError} 404 for an unknown model.
        """
        server = await self._server()
        output = await self._node("ai-sdk.test.mjs", server)
        self.assertNotIn("AI_TypeValidationError", output)

    async def test_vercelAiSdkScripted(self) -> None:
        """
        The Vercel AI SDK reads C{reasoning_content} as reasoning, streamed
        and not, and turns a mid-stream failure into one error part.
        """
        server = await self._server()
        server.upstream.script(
            Reply(content=["4", "2"], reasoning=["Let me ", "think"], usage=(9, 2)),
            Reply(content="42", reasoning="Let me think"),
            Reply(content=["a", "b", "c"], cutAfter=2),
        )
        await self._node("ai-sdk-scripted.test.mjs", server)

    async def test_mcpSdk(self) -> None:
        """
        The TypeScript MCP SDK's client (C{StreamableHTTPClientTransport})
        against C{/mcp}: it lists both agents with their descriptions, a
        call answers the helper's text after increasing progress
        notifications, a 1 s timeout that restarts on progress survives a
        2 s run (the heartbeat is 0.5 s here), and an aborted call (the SDK
        sends C{notifications/cancelled}) stops the helper's run upstream.
        """
        from ai_agent.headends.mcp import McpHeadend
        from tests.test_mcp_clients import AGENTS, SECRET, _isHelperRun

        server = await startServer(self, agents=AGENTS)
        for mount in server.mounts:
            if isinstance(mount.headend, McpHeadend):
                mount.headend.heartbeat = 0.5
        server.upstream.scriptFor(
            _isHelperRun,
            Reply(content=SECRET),
            Reply(content="slow answer", delay=2.0),
            Reply(content="held", hold=True),
        )
        await self._node("mcp.test.mjs", server)
        await server.upstream.waitForDisconnects(1)
        self.assertEqual(len([r for r in server.upstream.requests if _isHelperRun(r.body)]), 3)

    async def test_vercelResponses(self) -> None:
        """
        The Vercel AI SDK's C{openai.responses()} model: C{generateText}
        over two turns, the second referring to the stored answer by
        C{item_reference} (resolved from the store: the model sees the
        first answer and its reasoning, which the model does not see
        again), and C{streamText} with an executing tool (the call,
        its result sent back, the answer).
        """
        from twisted.internet import reactor

        from ai_agent.store import makeStore

        server = await self._server(store=makeStore("memory", reactor))
        server.upstream.script(
            Reply(content="Paris.", reasoning="Thinking of France."),
            Reply(content="Yes, Paris."),
            Reply(toolCalls=[("get_weather", {"city": "Oslo"})]),
            Reply(content="Cold in Oslo."),
        )
        await self._node("ai-sdk-responses.test.mjs", server)
        requests = server.upstream.requests
        second = [(m["role"], m["content"]) for m in requests[1].body["messages"][1:]]
        self.assertEqual(
            second,
            [("user", "Capital of France?"), ("assistant", "Paris."), ("user", "Sure?")],
        )
        results = [m["content"] for m in requests[3].body["messages"] if m["role"] == "tool"]
        self.assertEqual(len(results), 1)
        self.assertIn("cold", results[0])

    async def test_clientTools(self) -> None:
        """
        Client tools through the C{openai} npm SDK (a call and its
        continuation; C{runTools} streamed), the Vercel AI SDK
        (C{generateText} through a hybrid turn, the agent's MCP tool then
        the client's; C{streamText}; both with executing tools and
        C{stopWhen}) and LangChain.js (C{bindTools}, C{ToolMessage}); each
        continuation's model sees the client's result as a tool message.
        """
        server = await startServer(
            self,
            agents={f"{MODEL}.ai": CHAT_AGENT.replace("models:", "tools: [calc]\nmodels:")},
            mcpServers={"calc": calcEntry()},
        )
        server.upstream.script(
            Reply(toolCalls=[("get_weather", {"city": "Paris"})]),
            Reply(content="Sunny in Paris."),
            Reply(toolCalls=[("get_weather", {"city": "Oslo"})]),
            Reply(content="Cold in Oslo."),
            Reply(toolCalls=[("calc__add", {"a": 2, "b": 3})]),
            Reply(toolCalls=[("get_weather", {"city": "Rome"})]),
            Reply(content="5, and warm in Rome."),
            Reply(toolCalls=[("get_weather", {"city": "Lima"})]),
            Reply(content="Mild in Lima."),
            Reply(toolCalls=[("get_weather", {"city": "Kyiv"})]),
            Reply(content="Snow in Kyiv."),
        )
        await self._node("client-tools.test.mjs", server)
        requests = server.upstream.requests
        self.assertEqual(len(requests), 11)
        results = [
            [m["content"] for m in r.body["messages"] if m["role"] == "tool"] for r in requests
        ]
        self.assertEqual(results[1], ["sunny"])
        self.assertEqual(results[3], ["cold"])
        self.assertEqual(results[5], ["5"])
        self.assertEqual(len(results[6]), 2)
        self.assertEqual(results[6][0], "5")
        self.assertIn("warm", results[6][1])
        self.assertIn("mild", results[8][0])
        self.assertEqual(results[10], ["-3 C"])

    async def test_anthropicSdk(self) -> None:
        """
        The C{@anthropic-ai/sdk} npm SDK, on the Anthropic Messages API:
        a client tool round trip, the model list, a plain message, a stream
        assembled by its helper (the answer as C{content[0]}),
        C{messages.parse} with a JSON schema (which reaches the upstream as
        C{response_format}), C{countTokens}, and C{NotFoundError} and
        C{BadRequestError} with Anthropic's error types.
        """
        server = await self._server()
        server.upstream.script(
            Reply(toolCalls=[("get_weather", {"city": "Paris"})]), Reply(content="Sunny.")
        )
        server.upstream.scriptFor(
            lambda body: "response_format" in body, Reply(content='{"title": "A parsed title"}')
        )
        await self._node("anthropic.test.mjs", server)
        [formatted] = [
            r.body for r in server.upstream.requests if "response_format" in (r.body or {})
        ]
        schema = formatted["response_format"]["json_schema"]["schema"]
        self.assertEqual(schema["properties"], {"title": {"type": "string"}})

    async def test_a2aSdk(self) -> None:
        """
        The C{@a2a-js/sdk} client on the A2A 1.0 headend: the card resolved
        from C{/a2a/<agent>}, a blocking send (the completed task with the
        echoed answer), get with a history length, list by context,
        C{TaskNotCancelableError} and C{TaskNotFoundError}, and a stream on
        each binding (the task, the answer's chunks, the completed status).
        """
        server = await self._server()
        await self._node("a2a.test.mjs", server)
        self.assertEqual(len(server.upstream.requests), 3)

    async def test_langchainJs(self) -> None:
        """
        LangChain.js C{ChatOpenAI} with C{streamUsage} invokes, streams
        with C{usage_metadata}, and raises a 404 for an unknown model.
        """
        server = await self._server()
        await self._node("langchain.test.mjs", server)
        streamed = [r.body for r in server.upstream.requests if r.body and r.body.get("stream")]
        self.assertTrue(streamed)

    async def test_continue(self) -> None:
        """
        The Continue configuration in C{docs/integrations} parses with
        Continue's own parser, and Continue's OpenAI adapter lists models,
        streams with usage, completes, and fails with 404 on an unknown
        model.
        """
        server = await self._server()
        await self._node("continue.test.mjs", server)

    async def test_librechat(self) -> None:
        """
        The LibreChat configuration in C{docs/integrations} passes
        LibreChat's schema; fetching models, a chat turn and the title
        request work, the title going to the agent's model in one direct
        call with LibreChat's prompt alone, and the run's log line records
        the headers the configuration sends.
        """
        server = await self._server()
        logs = captureRunLogs(self)
        server.upstream.script(Reply(content="Friendly Greeting"))
        await self._node("librechat.test.mjs", server)
        chats = [r for r in server.upstream.requests if r.path.endswith("/chat/completions")]
        self.assertEqual(len(chats), 2)
        title, turn = chats[0].body["messages"], chats[1].body["messages"]
        self.assertEqual(turn[0], {"role": "system", "content": "You are the chat agent."})
        self.assertEqual([m["role"] for m in title], ["user"])
        self.assertTrue(title[0]["content"].startswith("Provide a concise, 5-word-or-less title"))
        tasks = [event["task"] for event in logs]
        self.assertEqual(tasks, ["title", None])
        for event in logs:
            self.assertEqual(
                event["forwarded"],
                {
                    "X-User-Id": "librechat-user-1",
                    "X-Chat-Id": "librechat-convo-1",
                    "X-Message-Id": "librechat-message-1",
                },
            )


class NodeRunnerTests(TestCase):
    """
    L{runNodeTests} passes a file only when node ran at least one of its
    tests, and every one passed.
    """

    skip = _nodeProblem()

    async def _problem(self, source: str) -> str | None:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        with open(os.path.join(folder, "probe.test.mjs"), "w", encoding="utf-8") as f:
            f.write(source)
        env = {"PATH": os.environ.get("PATH", ""), "NO_COLOR": "1", "NODE_NO_WARNINGS": "1"}
        counts = os.path.join(folder, "counts.json")
        _, problem = await runNodeTests("probe.test.mjs", folder, env, counts)
        return problem

    async def test_passing(self) -> None:
        """
        A file whose tests all pass is a pass.
        """
        problem = await self._problem(
            'import test from "node:test";\ntest("a", () => {});\ntest("b", () => {});\n'
        )
        self.assertIsNone(problem)

    async def test_noTestRegistered(self) -> None:
        """
        A file that registers no test, which node counts as one passing
        test, is refused.
        """
        problem = await self._problem('import assert from "node:assert";\nassert.ok(true);\n')
        self.assertEqual(problem, "registered no test")

    async def test_skipped(self) -> None:
        """
        A file with a skipped or todo test is refused, even when others
        pass.
        """
        problem = await self._problem(
            'import test from "node:test";\ntest("a", () => {});\n'
            'test("b", { skip: "not yet" }, () => {});\n'
        )
        self.assertEqual(problem, "skipped ['b'] and left as todo []")

    async def test_failing(self) -> None:
        """
        A failing test is reported with node's exit code.
        """
        problem = await self._problem(
            'import test from "node:test";\ntest("a", () => { throw new Error("no"); });\n'
        )
        self.assertEqual(problem, "exited with 1")


class MatrixFilesTests(SynchronousTestCase):
    """
    The matrix runs every test file of C{tests/js}.
    """

    def test_everyFileRun(self) -> None:
        """
        Each C{*.test.mjs} of C{tests/js} is named by a test of
        L{JavaScriptClientTests}, and each name is a file: a file left out
        would never run.
        """
        named = set(re.findall(r'"([\w.-]+\.test\.mjs)"', inspect.getsource(JavaScriptClientTests)))
        files = {name for name in os.listdir(JS) if name.endswith(".test.mjs")}
        self.assertGreater(len(files), 5)
        self.assertEqual(named, files)
