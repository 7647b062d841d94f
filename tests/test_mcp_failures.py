"""
MCP servers that misbehave: one that never answers C{initialize} costs a
short bounded wait once, and one flooding its standard error cannot
flood the log.

From the second security and reliability round (issue 11): each hole the
hostile campaign found, pinned against a real server on 127.0.0.1 with an
upstream of the test's own where the upstream misbehaves.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests._hostile import ScriptedUpstream, sseAnswer
from tests._misbehaving import (
    agentText,
    badServer,
    chat,
    textEvents,
    toolCallEvents,
)


class SilentMcpTests(TestCase):
    """
    Item 7: an MCP server that never answers C{initialize} costs a request
    a short bounded wait once, then nothing while it is known to be down,
    and the model is told its tools are unavailable instead of having its
    call dropped; so is a model calling a tool on an agent that has none.
    """

    timeout = 60

    async def test_silentServers(self) -> None:
        """
        With a stdio server and an HTTP server that both never answer
        C{initialize} (start timeout 1 s here, 10 s by default): the first
        request waits about that long, the next ones do not wait at all;
        the model's call to one of their tools is answered with a note
        naming the tools as unavailable, and its next answer reaches the
        client.
        """
        import os
        import sys
        import time

        from tests._hostile import pause

        script = os.path.abspath(self.mktemp())
        with open(script, "w") as f:
            f.write("import sys\nfor line in sys.stdin:\n    pass\n")
        silentHttp = ScriptedUpstream(default=lambda request, connection: None).start(self)
        upstream = ScriptedUpstream().start(self)
        server = await badServer(
            self,
            upstream,
            agents={"agent.ai": agentText(tools="[quiet, mute]")},
            mcpServers={
                "quiet": {"command": sys.executable, "args": [script]},
                "mute": {"url": silentHttp.baseUrl.removesuffix("/v1") + "/mcp"},
            },
        )
        server.runtime.mcp.serverOptions["initializeTimeout"] = 1.0
        waits = []
        for attempt in range(3):
            upstream.answers.extend(
                [
                    sseAnswer(toolCallEvents([("quiet__lookup", "{}")])),
                    sseAnswer(textEvents([f"answer {attempt}"])),
                ]
            )
            started = time.monotonic()
            status, headers, body = await chat(self, server)
            waits.append(time.monotonic() - started)
            self.assertEqual(status, 200, body)
            self.assertEqual(
                json.loads(body)["choices"][0]["message"]["content"], f"answer {attempt}"
            )
            told = upstream.requests[-1].decode()
            self.assertIn("quiet__lookup", told)
            self.assertIn("were not run", told)
            self.assertIn("unavailable", told)
            # Past the first backoff: the server is starting again.
            await pause(0.6)
        print(f"\nwaits: {', '.join(f'{w:.2f}' for w in waits)} s")
        self.assertGreater(waits[0], 0.9)
        self.assertLess(waits[0], 3.0)
        for wait in waits[1:]:
            self.assertLess(wait, 0.5)

    async def test_noToolsAgent(self) -> None:
        """
        A model calling a tool on an agent with no tools gets a note saying
        the agent has none and answers again; the client gets that answer,
        not an empty 200.
        """
        upstream = ScriptedUpstream().start(self)
        server = await badServer(self, upstream)
        upstream.answers.extend(
            [
                sseAnswer(toolCallEvents([("web_search", '{"q": "x"}')])),
                sseAnswer(textEvents(["no tools, so: 42"])),
            ]
        )
        status, headers, body = await chat(self, server)
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["choices"][0]["message"]["content"], "no tools, so: 42")
        told = upstream.requests[-1].decode()
        self.assertIn("web_search", told)
        self.assertIn("this agent has no tools", told)


class StderrFloodTests(TestCase):
    """
    Item 14: a stdio MCP server flooding its standard error cannot flood
    the log.
    """

    timeout = 60

    async def test_floodBounded(self) -> None:
        """
        A real stdio MCP server that writes 32 MB to standard error (long
        lines and short ones) before serving: at most the 64 KiB budget
        (plus cut marks) of it is logged, a warning says how much was not,
        and the server's tools still work.
        """
        import os
        import sys

        from twisted.logger import globalLogPublisher

        from ai_agent.config import McpServerConfig
        from ai_agent.tools.mcp import McpServer
        from tests.test_mcp import CALC

        script = os.path.abspath(self.mktemp())
        with open(script, "w") as f:
            f.write(
                "import os, sys\n"
                "line = b'y' * 65535 + b'\\n'\n"
                "for i in range(256):\n"
                "    sys.stderr.buffer.write(line)\n"
                "    sys.stderr.buffer.write(b'short line\\n' * 5957)\n"
                "sys.stderr.flush()\n"
                f"os.execv(sys.executable, [sys.executable, {CALC!r}])\n"
            )
        logged: list[str] = []
        warnings: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("server") == "noisy" and "line" in event:
                logged.append(event["line"])
            if event.get("server") == "noisy" and "dropped" in event:
                warnings.append(str(event["dropped"]))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        server = McpServer(
            McpServerConfig(name="noisy", type="stdio", command=sys.executable, args=(script,)),
            reactor,
            environ=dict(os.environ),
        )
        self.addCleanup(server.stop)
        tools = await server.listTools(30)
        self.assertIn("add", [tool.name for tool in tools])
        result = await server.callTool("add", {"a": 2, "b": 3}, 10)
        self.assertIn("5", result)
        await server.stop()
        total = sum(len(line) for line in logged)
        print(f"\nlogged {total} bytes of stderr in {len(logged)} lines; dropped {warnings}")
        self.assertLess(total, 70 * 1024)
        self.assertTrue(warnings)
        self.assertGreater(int(warnings[0]), 30 * 1024 * 1024)
