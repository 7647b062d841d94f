"""
Real MCP clients, unmodified, using served agents as MCP tools: Claude
Code (C{claude -p} with C{--mcp-config}, over Streamable HTTP and over
stdio), Codex (C{codex exec} with C{mcp_servers}) and the MCP Inspector's
CLI, all offline against the fake upstream.  (The TypeScript SDK client's
file, C{tests/js/mcp.test.mjs}, runs in the JavaScript matrix:
C{tests.test_clients_js.JavaScriptClientTests.test_mcpSdk}.)

Claude Code's own model is an agent of the same server (its Anthropic
Messages API), scripted to call C{mcp__agents__helper}; the helper agent
then runs against the fake upstream when Claude Code calls the tool, and
the model's next turn gets the helper's answer as the tool's result.

Skipped, with the reason, without Node.js 20 or the installed packages
(C{npm ci --prefix tests/js}).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping

from twisted.trial.unittest import TestCase

from ai_agent.testing import Reply
from tests import test_claude_code
from tests._harness import LiveServer, startServer
from tests._process import run
from tests.test_claude_code import CLAUDE, CLAUDE_TIMEOUT, _environment
from tests.test_clients_js import JS, _skipReason
from tests.test_headend_responses import CODEX

CODER = """\
---
description: The agent behind Claude Code
models: fake/test-model
---
You are the coder agent.
"""

HELPER = """\
---
description: Knows the secret
usage: Ask it for the secret.
models: fake/test-model
---
You are the helper agent.
"""

AGENTS = {"coder.ai": CODER, "helper.ai": HELPER}

SECRET = "The secret is 7f3a."


def _isHelperRun(body: Mapping[str, Any]) -> bool:
    # The helper agent's runs start with its own prompt.
    messages = body.get("messages") or [{}]
    return "You are the helper agent." in json.dumps(messages[0])


def _toolResults(body: Mapping[str, Any]) -> str:
    return json.dumps([m for m in body["messages"] if m.get("role") == "tool"])


class ClaudeCodeMcpTests(TestCase):
    """
    Claude Code calls a served agent as an MCP tool and answers with what
    the tool returned.
    """

    skip = test_claude_code._skip()

    async def _useHelper(self, server: LiveServer, entry: dict[str, Any]) -> None:
        server.upstream.scriptFor(_isHelperRun, Reply(content=SECRET))
        server.upstream.script(
            Reply(toolCalls=[("mcp__agents__helper", {"prompt": "What is the secret?"})]),
            Reply(content="The helper says 7f3a."),
        )
        home = os.path.abspath(self.mktemp())
        os.makedirs(home)
        env = _environment(server, "coder", home, ANTHROPIC_API_KEY="any-key")
        # Wait for the MCP server before the first turn (by default Claude
        # Code starts without a server that is slow to connect, as a
        # stdio child on a loaded machine can be); its connect timeout 60 s.
        env.update(MCP_CONNECTION_NONBLOCKING="false", MCP_TIMEOUT="60000")
        config = json.dumps({"mcpServers": {"agents": entry}})
        out, err, code = await run(
            [
                "timeout",
                str(CLAUDE_TIMEOUT),
                CLAUDE,
                "-p",
                "Ask the helper for the secret",
                "--mcp-config",
                config,
                "--strict-mcp-config",
                "--allowedTools",
                "mcp__agents__helper",
                "--output-format",
                "json",
            ],
            home,
            env,
        )
        if code != 0:
            self.fail(f"claude exited with {code}:\n{out.decode()}\n{err.decode()}")
        result = json.loads(out)
        self.assertEqual(result["result"], "The helper says 7f3a.")
        # The coder's first turn offered the tool to its model.
        coderCalls = [r for r in server.upstream.requests if not _isHelperRun(r.body)]
        offered = [tool["function"]["name"] for tool in coderCalls[0].body["tools"]]
        self.assertIn("mcp__agents__helper", offered)
        # The helper ran on the prompt Claude Code's model wrote.
        [helperRun] = [r for r in server.upstream.requests if _isHelperRun(r.body)]
        self.assertEqual(helperRun.body["messages"][-1]["content"], "What is the secret?")
        # The coder's last turn got the helper's answer as the tool result.
        self.assertIn(SECRET, _toolResults(coderCalls[-1].body))

    async def test_overHttp(self) -> None:
        """
        With the server's C{/mcp} in C{--mcp-config} (C{type: http}), Claude
        Code lists the agents, its model calls C{mcp__agents__helper}, the
        helper agent runs, and the answer that used its result is printed.
        """
        server = await startServer(self, agents=AGENTS)
        url = f"http://127.0.0.1:{server.port.getHost().port}/mcp"
        await self._useHelper(server, {"type": "http", "url": url})

    async def test_overStdio(self) -> None:
        """
        With C{ai-agent --agent helper.ai --mcp stdio} as the MCP server
        (Claude Code starts it), the same call works end to end.
        """
        server = await startServer(self, agents=AGENTS)
        entry = {
            "command": sys.executable,
            "args": [
                "-m",
                "ai_agent",
                "--agent",
                os.path.join(server.directory, "helper.ai"),
                "--config",
                os.path.join(server.directory, "config.json"),
                "--mcp",
                "stdio",
            ],
            "env": {"HOME": server.directory, "PATH": os.environ.get("PATH", "")},
        }
        await self._useHelper(server, entry)


#: A Codex home: the server's Responses API as its model provider, the
#: server's C{/mcp} as its MCP server C{agents}, the helper tool approved.
CODEX_MCP_CONFIG = """\
model = "coder"
model_provider = "aiagent"

[model_providers.aiagent]
name = "ai-agent"
base_url = "{baseUrl}"
wire_api = "responses"
env_key = "AI_AGENT_KEY"

[mcp_servers.agents]
url = "{mcpUrl}"

[mcp_servers.agents.tools.helper]
approval_mode = "approve"
"""


class CodexMcpTests(TestCase):
    """
    C{codex exec} with the server's C{/mcp} in its C{mcp_servers}.
    """

    def setUp(self) -> None:
        import shutil

        if shutil.which("node") is None:
            raise self.skipTest("node is not installed: the Codex CLI needs Node.js")
        if not os.path.exists(CODEX):
            raise self.skipTest("the Codex CLI is missing: run `npm ci --prefix tests/js` first")

    async def test_helperAsMcpTool(self) -> None:
        """
        Codex lists the agents from C{/mcp} (its model is offered the
        helper in the C{mcp__agents} namespace), its model calls the
        helper, Codex calls C{tools/call} (the helper agent runs against
        the fake upstream), and the model's next turn gets the helper's
        answer as the call's output; Codex prints the final answer.
        """
        server = await startServer(self, agents=AGENTS)
        server.upstream.scriptFor(_isHelperRun, Reply(content=SECRET))
        server.upstream.script(
            Reply(toolCalls=[("mcp__agents__helper", {"prompt": "What is the secret?"})]),
            Reply(content="The helper says 7f3a."),
        )
        home = os.path.abspath(self.mktemp())
        os.makedirs(home)
        port = server.port.getHost().port
        with open(os.path.join(home, "config.toml"), "w", encoding="utf-8") as f:
            f.write(
                CODEX_MCP_CONFIG.format(
                    baseUrl=server.baseUrl, mcpUrl=f"http://127.0.0.1:{port}/mcp"
                )
            )
        env = {"PATH": os.environ["PATH"], "HOME": home, "CODEX_HOME": home, "AI_AGENT_KEY": "k"}
        out, err, code = await run(
            [CODEX, "exec", "--skip-git-repo-check", "Ask the helper"], cwd=home, env=env
        )
        output = (out + err).decode("utf-8", "replace")
        self.assertEqual(code, 0, output)
        self.assertIn("The helper says 7f3a.", out.decode())
        coderCalls = [r for r in server.upstream.requests if not _isHelperRun(r.body)]
        offered = {tool["function"]["name"] for tool in coderCalls[0].body.get("tools", ())}
        self.assertIn("mcp__agents__helper", offered)
        [helperRun] = [r for r in server.upstream.requests if _isHelperRun(r.body)]
        self.assertEqual(helperRun.body["messages"][-1]["content"], "What is the secret?")
        self.assertIn(SECRET, _toolResults(coderCalls[-1].body))

    test_helperAsMcpTool.timeout = 120  # type: ignore[attr-defined]


#: Where the MCP Inspector's CLI may be installed: tests/js (if added there)
#: or the repository root (C{npm install --no-save @modelcontextprotocol/inspector@0.15}).
_INSPECTORS = [
    os.path.join(JS, "node_modules", ".bin", "mcp-inspector"),
    os.path.join(os.path.dirname(JS), "..", "node_modules", ".bin", "mcp-inspector"),
]


def _inspector() -> str | None:
    for path in _INSPECTORS:
        if os.path.exists(path):
            return os.path.abspath(path)
    return None


class InspectorTests(TestCase):
    """
    The MCP Inspector's CLI mode (C{mcp-inspector --cli}), unmodified.
    """

    def setUp(self) -> None:
        reason = _skipReason()
        if reason is not None:
            raise self.skipTest(reason)
        if _inspector() is None:
            raise self.skipTest(
                "the MCP Inspector is not installed (not a tests/js dependency: its lock would"
                " re-resolve the matrix's packages); run `npm install --no-save"
                " @modelcontextprotocol/inspector@0.15` at the repository root"
            )

    async def test_listAndCall(self) -> None:
        """
        C{--method tools/list} prints both agents with their input schemas;
        C{--method tools/call --tool-name helper --tool-arg prompt=...}
        runs the helper against the fake upstream and prints its answer.
        """
        inspector = _inspector()
        assert inspector is not None
        server = await startServer(self, agents=AGENTS)
        server.upstream.scriptFor(_isHelperRun, Reply(content=SECRET))
        url = f"http://127.0.0.1:{server.port.getHost().port}/mcp"
        env = {"PATH": os.environ.get("PATH", ""), "HOME": os.path.abspath(self.mktemp())}
        os.makedirs(env["HOME"])
        common = [inspector, "--cli", url, "--transport", "http"]
        out, err, code = await run([*common, "--method", "tools/list"], env["HOME"], env)
        self.assertEqual(code, 0, (out + err).decode())
        listed = json.loads(out)
        self.assertEqual(sorted(tool["name"] for tool in listed["tools"]), ["coder", "helper"])
        out, err, code = await run(
            [
                *common,
                "--method",
                "tools/call",
                "--tool-name",
                "helper",
                "--tool-arg",
                "prompt=What is the secret?",
            ],
            env["HOME"],
            env,
        )
        self.assertEqual(code, 0, (out + err).decode())
        called = json.loads(out)
        self.assertEqual(called["content"][0]["text"], SECRET)
        self.assertIs(called["isError"], False)
        [helperRun] = [r for r in server.upstream.requests if _isHelperRun(r.body)]
        self.assertEqual(helperRun.body["messages"][-1]["content"], "What is the secret?")

    test_listAndCall.timeout = 120  # type: ignore[attr-defined]
