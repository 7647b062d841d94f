"""
The notes a run streams when it passes a model over (its provider has no
key, its server does not answer): the client reads which model was skipped
and a neutral reason, never the server's environment variables, hosts,
ports or addresses; the operator's log line keeps the details, and so does
direct mode's terminal, whose user is the operator.
"""

from __future__ import annotations

import json
import os
from typing import Any

import treq
from twisted.internet import reactor
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from ai_agent.advice import clientReason
from ai_agent.errors import ProviderError
from ai_agent.events import ReasoningText, Retrying, SubAgentProgress, progressText
from ai_agent.redaction import RedactingSink, Redactor
from ai_agent.sse import SSEParser
from ai_agent.testing import startFakeUpstream, unusedBaseUrl
from tests._harness import LiveServer, startServer, writeAgent
from tests._process import childEnvironment, command, run

#: The first model has no key (OPENAI_API_KEY is not set), the second's
#: server refuses connections, the third answers.
AGENT = (
    "---\ndescription: t\nmodels:\n  - openai/gpt-4o-mini\n  - ollama/llama3\n"
    "  - fake/m\nmaxRetries: 3\n---\nYou test.\n"
)


def _client(testCase: TestCase) -> treq.client.HTTPClient:
    pool = HTTPConnectionPool(reactor, persistent=False)
    testCase.addCleanup(pool.closeCachedConnections)
    return treq.client.HTTPClient(Agent(reactor, pool=pool))


class StreamedNotesTests(TestCase):
    """
    Through the server: what the client reads of a fallback, and what the
    log keeps.
    """

    async def _server(self) -> tuple[LiveServer, str, list[str]]:
        dead = await unusedBaseUrl(reactor)
        server = await startServer(
            self,
            agents={"agent.ai": AGENT},
            extraProviders={"ollama": {"type": "ollama", "baseUrl": dead}},
        )
        logged: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            from twisted.logger import formatEvent

            logged.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return server, dead.removeprefix("http://").removesuffix("/v1"), logged

    def _checkPrivate(self, text: str, hostPort: str) -> None:
        host, _, port = hostPort.partition(":")
        for private in ("OPENAI_API_KEY", "environment variable", host, "localhost", port):
            self.assertNotIn(private, text)
        self.assertNotIn("refused", text.lower().replace("refused:", ""))

    async def test_chatCompletionsReasoning(self) -> None:
        """
        A streamed chat completion's reasoning says which models were
        passed over and why in neutral words (C{not configured},
        C{unreachable}), without the variable, the host, the port or the
        connection error; the server's log has all of them.
        """
        server, hostPort, logged = await self._server()
        response = await _client(self).post(
            server.baseUrl + "/chat/completions",
            json={
                "model": "agent",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
            },
        )
        body = await treq.content(response)
        self.assertEqual(response.code, 200, body)
        reasoning = ""
        content = ""
        for event in SSEParser().feed(body):
            if event.data == "[DONE]":
                continue
            for choice in json.loads(event.data).get("choices", []):
                reasoning += choice["delta"].get("reasoning_content") or ""
                content += choice["delta"].get("content") or ""
        self.assertEqual(content, "echo: hi")
        self.assertIn("skipping openai/gpt-4o-mini: not configured", reasoning)
        self.assertIn("ollama/llama3 failed (unreachable); retrying", reasoning)
        self._checkPrivate(reasoning, hostPort)
        log = "\n".join(logged)
        self.assertIn("OPENAI_API_KEY", log)
        self.assertIn(hostPort, log)

    async def test_messagesThinking(self) -> None:
        """
        On the Messages API the notes (a thinking block, when the request
        enables thinking) are as neutral, streamed and whole.
        """
        server, hostPort, _ = await self._server()
        for stream in (True, False):
            response = await _client(self).post(
                server.baseUrl + "/messages",
                json={
                    "model": "agent",
                    "max_tokens": 2000,
                    "thinking": {"type": "enabled", "budget_tokens": 1024},
                    "messages": [{"role": "user", "content": "hi"}],
                    "stream": stream,
                },
                headers={"anthropic-version": "2023-06-01"},
            )
            raw = await treq.content(response)
            self.assertEqual(response.code, 200, raw)
            text = raw.decode("utf-8")
            self.assertIn("skipping openai/gpt-4o-mini: not configured", text)
            self.assertIn("ollama/llama3 failed (unreachable); retrying", text)
            self._checkPrivate(text, hostPort)


class ReasonTests(SynchronousTestCase):
    """
    L{clientReason} and the two ways a note is shown.
    """

    def test_reasons(self) -> None:
        """
        Each kind of failure has its neutral words; an upstream status is
        kept (it is the upstream's, not the server's), the message never.
        """
        secret = "provider 'x' could not connect to 10.1.2.3:8080 for model 'm'"
        cases = [
            (ProviderError(secret, status=500, code="provider_not_configured"), "not configured"),
            (ProviderError(secret, code="upstream_unreachable"), "unreachable"),
            (ProviderError(secret, code="upstream_rejected", upstreamStatus=401), "refused: 401"),
            (ProviderError(secret, code="upstream_error", upstreamStatus=503), "HTTP 503"),
            (ProviderError(secret, status=504, code="upstream_timeout"), "timed out"),
            (
                ProviderError(secret, status=429, code="upstream_rate_limited", upstreamStatus=429),
                "rate-limited: 429",
            ),
            (ProviderError(secret, code="upstream_invalid_response"), "invalid answer"),
            (ProviderError(secret, code="something_new"), "upstream error"),
        ]
        self.assertEqual([clientReason(error) for error, _ in cases], [w for _, w in cases])

    def test_detailForTheOperator(self) -> None:
        """
        Direct mode's text (C{detailed}) shows the operator's detail; the
        client's shows the reason, nested in a sub-agent's progress too.
        """
        note = Retrying("p/m", "not configured", skipped=True, detail="set OPENAI_API_KEY")
        self.assertEqual(progressText(note), "skipping p/m: not configured\n")
        self.assertEqual(progressText(note, detailed=True), "skipping p/m: set OPENAI_API_KEY\n")
        nested = SubAgentProgress("agent__sub", note)
        self.assertEqual(
            ReasoningText(detailed=True).progress(nested),
            "[agent__sub] skipping p/m: set OPENAI_API_KEY\n",
        )
        self.assertEqual(
            ReasoningText().progress(nested), "[agent__sub] skipping p/m: not configured\n"
        )

    def test_headendsDropTheDetail(self) -> None:
        """
        The sink every headend's run writes through drops the detail, so no
        encoder could show it.
        """
        note = Retrying("p/m", "unreachable", detail="could not connect to localhost:11434")
        for redactor in (Redactor(), Redactor.of(["sk-some-secret-key"])):
            events: list[Any] = []
            sink = RedactingSink(redactor, events.append)
            sink(note)
            sink(SubAgentProgress("agent__sub", note))
            sink.flush()
            self.assertEqual(
                events,
                [
                    Retrying("p/m", "unreachable"),
                    SubAgentProgress("agent__sub", Retrying("p/m", "unreachable")),
                ],
            )


class DirectModeTests(TestCase):
    """
    C{ai-agent -v --agent FILE PROMPT}: the operator reads what to fix.
    """

    async def test_verboseNamesTheVariable(self) -> None:
        """
        With C{-v}, the note on stderr still names the variable to set, as
        before notes were made neutral for clients.
        """
        running = await startFakeUpstream(reactor)
        self.addCleanup(running.stop)
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        with open(os.path.join(folder, ".ai-agent.json"), "w") as f:
            json.dump({"providers": {"local": {"type": "openai", "baseUrl": running.baseUrl}}}, f)
        writeAgent(
            folder,
            "chat.ai",
            "---\ndescription: t\nmodels:\n  - openai/gpt-4o-mini\n  - local/m\n---\nYou test.\n",
        )
        out, err, code = await run(
            [*command("ai-agent"), "-v", "--agent", "chat.ai", "hello"],
            folder,
            childEnvironment(HOME=folder),
        )
        self.assertEqual((out.decode(), code), ("echo: hello\n", 0), err)
        self.assertIn(
            b"skipping openai/gpt-4o-mini: provider 'openai' needs the environment variable"
            b" OPENAI_API_KEY",
            err,
        )
