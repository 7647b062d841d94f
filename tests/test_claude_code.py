"""
Claude Code (npm C{@anthropic-ai/claude-code}, installed into C{tests/js}),
unmodified, as C{claude -p} against a live server's Anthropic Messages API:
C{ANTHROPIC_BASE_URL} is the server, C{ANTHROPIC_MODEL} the agent, the key
anything, C{HOME} a temporary folder, no network beyond 127.0.0.1.

Skipped, with the reason, without Node.js 20 or the installed package
(C{npm ci --prefix tests/js}).
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any, Mapping

from twisted.trial.unittest import TestCase

from ai_agent.testing import Reply
from tests._harness import LiveServer, startServer
from tests._process import run
from tests._terminal import Terminal
from tests.mcp_servers import calcEntry
from tests.test_clients_js import JS, _skipReason

CLAUDE = os.path.join(JS, "node_modules", ".bin", "claude")

#: Seconds one C{claude -p} may take before it is killed.
CLAUDE_TIMEOUT = 120

CODER = """\
---
description: The agent behind Claude Code
models: fake/test-model
tools: [calc]
---
You are the coder agent.
"""

CODER_ON_ANTHROPIC = """\
---
description: The agent behind Claude Code, on an Anthropic-wire provider
models: claude/claude-test
---
You are the coder agent.
"""


def _skip() -> str | None:
    reason = _skipReason()
    if reason is None and not os.path.exists(CLAUDE):
        return "Claude Code is not installed: run `npm ci --prefix tests/js` first"
    return reason


def _environment(server: LiveServer, model: str, home: str, **keys: str) -> dict[str, str]:
    """
    Claude Code's environment: the server, the agent as its models, the
    key C{keys} give (C{ANTHROPIC_API_KEY} or C{ANTHROPIC_AUTH_TOKEN}),
    C{HOME}, and no traffic beyond 127.0.0.1.
    """
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home,
        "ANTHROPIC_BASE_URL": server.baseUrl.removesuffix("/v1"),
        **keys,
        "ANTHROPIC_MODEL": model,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": model,
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }


class ClaudeCodeTests(TestCase):
    """
    C{claude -p} through the Anthropic headend.
    """

    skip = _skip()

    async def _print(self, server: LiveServer, model: str, *args: str) -> bytes:
        """
        Run C{claude -p ARGS} against C{server} from a fresh home, and
        return what it printed; fail with it unless it exits 0.
        """
        home = os.path.abspath(self.mktemp())
        os.makedirs(home)
        env = _environment(server, model, home, ANTHROPIC_API_KEY="any-key")
        out, err, code = await run(["timeout", str(CLAUDE_TIMEOUT), CLAUDE, "-p", *args], home, env)
        if code != 0:
            self.fail(f"claude exited with {code}:\n{out.decode()}\n{err.decode()}")
        return out

    async def _claude(self, server: LiveServer, model: str, *args: str) -> dict[str, Any]:
        """
        Run C{claude -p} with its JSON output against C{server}, and return
        that output.
        """
        result: dict[str, Any] = json.loads(
            await self._print(server, model, *args, "--output-format", "json")
        )
        return result

    async def test_plainAnswer(self) -> None:
        """
        A plain answer reaches Claude Code as its result; the model got
        the agent's prompt first, Claude Code's system prompt after it,
        and its tools as the client's tools.
        """
        server = await startServer(
            self, agents={"coder.ai": CODER}, mcpServers={"calc": calcEntry()}
        )
        server.upstream.script(Reply(content="Hello from the coder agent."))
        result = await self._claude(server, "coder", "Say hello")
        self.assertEqual(result["result"], "Hello from the coder agent.")
        self.assertFalse(result["is_error"])
        body = server.upstream.requests[0].body
        self.assertTrue(body["messages"][0]["content"].startswith("You are the coder agent."))
        offered = [tool["function"]["name"] for tool in body["tools"]]
        self.assertIn("calc__add", offered)
        self.assertIn("Bash", offered)

    async def test_progressAsThinking(self) -> None:
        """
        Claude Code's turns enable thinking, so the agent's own MCP tool
        call reaches it as a thinking block (its C{stream-json} output
        has the progress lines) before the answer, which is its result.
        """
        server = await startServer(
            self, agents={"coder.ai": CODER}, mcpServers={"calc": calcEntry()}
        )
        server.upstream.script(
            Reply(toolCalls=[("calc__add", {"a": 20, "b": 22})]), Reply(content="It is 42.")
        )
        out = await self._print(
            server, "coder", "Add 20 and 22", "--output-format", "stream-json", "--verbose"
        )
        lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
        blocks = [
            block
            for line in lines
            if line.get("type") == "assistant"
            for block in line["message"]["content"]
        ]
        thinking = "".join(b.get("thinking", "") for b in blocks if b["type"] == "thinking")
        self.assertIn("calling calc__add", thinking)
        self.assertIn("calc__add → 42", thinking)
        self.assertEqual(lines[-1]["result"], "It is 42.")

    async def test_bashTool(self) -> None:
        """
        The agent's model calls Claude Code's own C{Bash} tool: Claude
        Code runs it and sends the output back, which the model gets as
        the tool's result (a value only the shell computed), and the
        model's answer is Claude Code's result.
        """
        server = await startServer(
            self, agents={"coder.ai": CODER}, mcpServers={"calc": calcEntry()}
        )
        command = {"command": "echo $((6*7))-marker", "description": "Print a marker"}
        server.upstream.script(
            Reply(toolCalls=[("Bash", command)]), Reply(content="The marker is printed.")
        )
        result = await self._claude(server, "coder", "Print the marker", "--allowedTools", "Bash")
        self.assertEqual(result["result"], "The marker is printed.")
        last = server.upstream.requests[-1].body["messages"]
        [toolResult] = [m for m in last if m["role"] == "tool"]
        self.assertEqual(toolResult["content"].strip(), "42-marker")

    async def test_anthropicWireProvider(self) -> None:
        """
        Behind an Anthropic-wire provider, Claude Code's Bash tool works
        the same: the provider got an Anthropic request built from the
        run, with the shell's output as a C{tool_result}.
        """
        server = await startServer(
            self,
            agents={"coder.ai": CODER_ON_ANTHROPIC},
            fakeProviders={"claude": "anthropic"},
        )
        command = {"command": "echo $((6*7))-marker", "description": "Print a marker"}
        server.upstream.script(
            Reply(toolCalls=[("Bash", command)]), Reply(content="Done with the marker.")
        )
        result = await self._claude(server, "coder", "Print the marker", "--allowedTools", "Bash")
        self.assertEqual(result["result"], "Done with the marker.")
        last = server.upstream.requests[-1]
        self.assertEqual(last.path, "/v1/messages")
        self.assertIn("42-marker", json.dumps(last.body["messages"][-1]))


#: Seconds each step of an interactive session may take on the screen.
SCREEN_WAIT = 60.0


def _titleCall(body: Mapping[str, Any]) -> bool:
    """
    Whether an upstream call is Claude Code's session-title request (the
    only one of its calls with an output format).
    """
    return "response_format" in body


class InteractiveTests(TestCase):
    """
    C{claude} as a person starts it for the first time, in a terminal,
    set up only as docs/integrations.md says: a fresh home with
    C{~/.claude.json} holding C{"hasCompletedOnboarding": true},
    C{ANTHROPIC_BASE_URL}, C{ANTHROPIC_AUTH_TOKEN}, C{ANTHROPIC_MODEL} and
    C{ANTHROPIC_DEFAULT_HAIKU_MODEL}, the folder-trust question answered
    with Enter.
    """

    skip = _skip()

    async def test_firstRunWithBashApproval(self) -> None:
        """
        A first interactive run: after the folder-trust question, one turn
        in which the agent's model calls Claude Code's C{Bash} tool to
        write a file; Claude Code asks for approval, Enter approves, the
        file is written and the command's output (a value only the shell
        computed, with a token made for this test) reaches the model as
        the tool's result, and the model's
        answer shows on the screen.  Claude Code's title call, sent at the
        same time, reaches the upstream with its JSON schema as the
        response format, and the title it was answered shows as the
        terminal's title.
        """
        server = await startServer(
            self, agents={"coder.ai": CODER}, mcpServers={"calc": calcEntry()}
        )
        token = secrets.token_hex(4)
        # Writing a file needs approval (an echo alone Claude Code runs unasked).
        command = {
            "command": f"echo tok-$((6*7))-{token} > token.txt && cat token.txt",
            "description": "Write and print the token",
        }
        answer = f"The shell printed the token {token}."
        server.upstream.scriptFor(_titleCall, Reply(content='{"title": "Print the test token"}'))
        server.upstream.script(Reply(toolCalls=[("Bash", command)]), Reply(content=answer))

        home = os.path.abspath(self.mktemp())
        os.makedirs(home)
        with open(os.path.join(home, ".claude.json"), "w", encoding="utf-8") as f:
            json.dump({"hasCompletedOnboarding": True}, f)
        project = os.path.abspath(self.mktemp())
        os.makedirs(project)
        env = _environment(server, "coder", home, ANTHROPIC_AUTH_TOKEN="any-token")
        env["TERM"] = "xterm-256color"
        terminal = Terminal([CLAUDE], env, project)
        self.addCleanup(terminal.stop)

        await terminal.waitFor("Yes, I trust this folder", timeout=SCREEN_WAIT)
        terminal.send(b"\r")
        await terminal.waitFor("? for shortcuts", timeout=SCREEN_WAIT)
        terminal.send(b"Print the test token with the shell")
        await terminal.waitFor("Print the test token with the shell", timeout=SCREEN_WAIT)
        terminal.send(b"\r")
        await terminal.waitFor("Do you want to proceed?", timeout=SCREEN_WAIT)
        terminal.send(b"\r")
        await terminal.waitFor(answer, timeout=SCREEN_WAIT)

        calls = [request.body for request in server.upstream.requests]
        results = [
            message for body in calls for message in body["messages"] if message["role"] == "tool"
        ]
        self.assertEqual([r["content"].strip() for r in results], [f"tok-42-{token}"])
        with open(os.path.join(project, "token.txt"), encoding="utf-8") as f:
            self.assertEqual(f.read().strip(), f"tok-42-{token}")
        [title] = [body for body in calls if _titleCall(body)]
        schema = title["response_format"]["json_schema"]["schema"]
        self.assertEqual(schema["required"], ["title"])
        self.assertEqual(schema["properties"], {"title": {"type": "string"}})
        await terminal.waitUntil(
            lambda _: "Print the test token" in terminal.title, timeout=SCREEN_WAIT
        )
