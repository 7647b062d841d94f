"""
The JavaScript half of the client matrix: real npm packages, unmodified,
against a live server in front of the real fake upstream.

Each test starts a server, then runs one file of C{tests/js} under C{node
--test} with the server's base URL in C{AI_AGENT_BASE_URL}; the test passes
when node exits 0, and shows node's output when it does not.  The clients:
the C{openai} npm SDK, the Vercel AI SDK (C{ai} with
C{@ai-sdk/openai-compatible}, which validates every chunk), LangChain.js
(C{@langchain/openai}), Continue's own configuration parser and OpenAI
adapter, and LibreChat's configuration schema with the requests LibreChat
makes.

The tests are skipped, with the reason, when C{node} (20 or newer) is
missing or C{npm ci --prefix tests/js} was not run; C{.ci/run} runs it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Any

from twisted.trial.unittest import TestCase

from ai_agent.testing import Reply
from tests._harness import LiveServer, startServer
from tests._process import run
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


def _node() -> str | None:
    return shutil.which("node")


def _skipReason() -> str | None:
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
    if not os.path.isdir(os.path.join(JS, "node_modules")):
        return "tests/js/node_modules is missing: run `npm ci --prefix tests/js` first"
    return None


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
        unless it exits 0.
        """
        node = _node()
        assert node is not None
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
        out, err, code = await run(
            [
                node,
                "--test",
                "--test-reporter=spec",
                f"--test-timeout={NODE_TEST_TIMEOUT * 1000}",
                script,
            ],
            cwd=JS,
            env=env,
        )
        output = (out + err).decode("utf-8", "replace")
        if code != 0:
            self.fail(f"node --test {script} exited with {code}:\n{output}")
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
