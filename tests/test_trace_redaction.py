"""
Configured secrets kept out of exported traces: with message content
capture on, the text spans carry (input and output messages, tool call
arguments and results) goes through the redactor that scrubs every
response, so a provider key a model echoes is C{[redacted]} in the spans an
OTLP collector receives, as it is for the client; ordinary text is kept.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ai_agent.observe import Observability, Tracing
from ai_agent.providers import ChatMessage, LLMRequest, LLMResponse, ToolCall
from ai_agent.redaction import Redactor
from ai_agent.testing import Reply
from tests._harness import SENTINEL_KEY, inThread, startServer
from tests.test_observe import BOSS, HELPER, attributes, startReceiver


class ExportedSpansTests(TestCase):
    """
    Real runs, spans exported over OTLP/HTTP to a receiver on 127.0.0.1.
    """

    timeout = 60

    async def test_echoedKeyRedacted(self) -> None:
        """
        The key the fake provider is configured with, sent by the client,
        put by the model in a sub-agent call's arguments, in the sub-agent's
        answer (the tool's result) and in the final answer, is in no
        attribute of any exported span; C{[redacted]} stands in its place,
        and the words around it are kept.
        """
        receiver, url = startReceiver(self)
        tracing = Tracing.fromEnvironment(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": url,
                "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true",
            }
        )
        assert tracing is not None
        self.addCleanup(deferToThread, tracing.shutdown)
        server = await startServer(
            self,
            agents={"boss.ai": BOSS, "helper.ai": HELPER},
            observer=Observability(None, tracing),
        )
        server.upstream.script(
            Reply(toolCalls=[("agent__helper", {"prompt": f"check {SENTINEL_KEY} please"})]),
            Reply(content=f"helper saw {SENTINEL_KEY} indeed"),
            Reply(content=f"Done: {SENTINEL_KEY} is the key."),
        )
        completion = await inThread(
            server.client().chat.completions.create,
            model="boss",
            messages=[{"role": "user", "content": f"is {SENTINEL_KEY} yours?"}],
        )
        self.assertEqual(completion.choices[0].message.content, "Done: [redacted] is the key.")
        await deferToThread(tracing.forceFlush)
        exported = [
            (span.name, key, value)
            for span in receiver.spans
            for key, value in attributes(span).items()
        ]
        self.assertTrue(exported)
        for name, key, value in exported:
            self.assertNotIn(SENTINEL_KEY, json.dumps(value), f"{name}: {key}")
        texts = {key: [] for key in _CONTENT}  # type: dict[str, list[str]]
        for _, key, value in exported:
            if key in texts:
                texts[key].append(str(value))
        joined = {key: "\n".join(values) for key, values in texts.items()}
        self.assertIn("is [redacted] yours?", joined["gen_ai.input.messages"])
        self.assertIn("Done: [redacted] is the key.", joined["gen_ai.output.messages"])
        self.assertIn("check [redacted] please", joined["gen_ai.tool.call.arguments"])
        self.assertIn("helper saw [redacted] indeed", joined["gen_ai.tool.call.result"])


#: The attributes that carry model or tool text.
_CONTENT = (
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.tool.call.arguments",
    "gen_ai.tool.call.result",
)


class HookRedactionTests(SynchronousTestCase):
    """
    The hooks with the SDK's in-memory exporter, and the redactor swapped
    as a reload swaps it.
    """

    def test_swappedOnReload(self) -> None:
        """
        Every content attribute goes through the scrub function last given
        to L{Observability.redactWith}: a secret added by a reload is
        redacted from the next spans; text without one is unchanged.
        """
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        observer = Observability(None, Tracing(provider, captureContent=True), clock=lambda: 0.0)
        secret = "sk-rotated-secret-0123456789"

        def oneRun() -> dict[str, Any]:
            run = observer.run("a")
            request = LLMRequest(
                "m",
                (
                    ChatMessage("user", f"use {secret}"),
                    ChatMessage("assistant", "", toolCalls=(ToolCall("c1", "t", secret),)),
                    ChatMessage("tool", f"got {secret}", toolCallId="c1"),
                ),
            )
            call = run.llmCall("p", "m", request, None)
            call.answered(LLMResponse(f"ok {secret}", reasoning=f"r {secret}"), None)
            tool = run.tool("t", "c2", json.dumps({"k": secret}))
            tool.end("ok", f"result {secret}")
            run.end("ok")
            found: dict[str, Any] = {}
            for span in exporter.get_finished_spans():
                found.update(
                    {key: span.attributes[key] for key in _CONTENT if key in span.attributes}
                )
            exporter.clear()
            return found

        before = oneRun()
        self.assertIn(secret, json.dumps(before))
        observer.redactWith(Redactor.of([secret]).scrub)
        after = oneRun()
        self.assertEqual(set(after), set(_CONTENT))
        self.assertNotIn(secret, json.dumps(after))
        self.assertEqual(
            json.loads(after["gen_ai.input.messages"])[2]["parts"][0]["response"], "got [redacted]"
        )
        self.assertEqual(after["gen_ai.tool.call.result"], "result [redacted]")
        self.assertEqual(json.loads(after["gen_ai.tool.call.arguments"]), {"k": "[redacted]"})


class McpLogTests(TestCase):
    """
    What a stdio MCP server writes outside its answers (standard error, a
    stray line on standard output) is logged with the configured secrets
    scrubbed, through the server's assembly (L{ai_agent.runtime}).
    """

    timeout = 60

    async def test_stderrScrubbed(self) -> None:
        """
        A tool server that prints the provider's key on its standard error
        and its standard output: the log lines show C{[redacted]} in its
        place, and never the key.
        """
        import os
        import sys

        from twisted.internet.defer import Deferred
        from twisted.logger import formatEvent, globalLogPublisher

        from tests.test_mcp import CALC

        script = os.path.abspath(self.mktemp())
        with open(script, "w") as f:
            f.write(
                "import os, sys\n"
                f"sys.stderr.write('token {SENTINEL_KEY} on stderr\\n')\n"
                "sys.stderr.flush()\n"
                f"sys.stdout.write('token {SENTINEL_KEY} on stdout\\n')\n"
                "sys.stdout.flush()\n"
                f"os.execv(sys.executable, [sys.executable, {CALC!r}])\n"
            )
        lines: list[str] = []
        both: Deferred[None] = Deferred()

        def observe(event: dict[str, Any]) -> None:
            if event.get("server") == "noisy" and "line" in event:
                lines.append(formatEvent(event))
                if len(lines) == 2 and not both.called:
                    both.callback(None)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        server = await startServer(
            self,
            agents={"agent.ai": "---\nmodels: fake/m\ntools: [noisy]\n---\nYou add.\n"},
            mcpServers={"noisy": {"type": "stdio", "command": sys.executable, "args": [script]}},
        )
        await inThread(
            server.client().chat.completions.create,
            model="agent",
            messages=[{"role": "user", "content": "hi"}],
        )
        from twisted.internet import reactor

        await both.addTimeout(30, reactor)
        self.assertEqual(len(lines), 2)
        for line in lines:
            self.assertNotIn(SENTINEL_KEY, line)
            self.assertIn("token [redacted] on std", line)


class ReloadTests(SynchronousTestCase):
    """
    SIGHUP's reload gives spans and MCP log lines the new secrets.
    """

    def test_newKeyScrubbed(self) -> None:
        """
        A key added to the configuration and reloaded is scrubbed by the
        runtime's L{SecretScrub}, which the observer and the MCP servers
        hold (the same object, before and after).
        """
        import os

        from twisted.internet import reactor

        from ai_agent.reload import Reloader
        from ai_agent.runtime import buildRuntime
        from tests._harness import writeAgent

        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        config = os.path.join(folder, ".ai-agent.json")
        newKey = "sk-added-on-reload-0123456789"

        def configure(key: str | None) -> None:
            with open(config, "w") as f:
                json.dump(
                    {
                        "providers": {
                            "fake": {"type": "openai", "baseUrl": "http://h/v1", "apiKey": key}
                        }
                    },
                    f,
                )

        configure(None)
        writeAgent(folder, "chat.ai", "---\nmodels: fake/m\n---\nhi\n")
        environ = {"HOME": folder}
        observer = Observability(None, None)
        runtime = buildRuntime(reactor, [folder], cwd=folder, environ=environ, observer=observer)
        self.addCleanup(runtime.close)
        scrub = runtime.scrub
        self.assertIs(observer.scrub, scrub)
        self.assertIs(runtime.mcp.serverOptions["scrub"], scrub)
        self.assertEqual(scrub(f"x {newKey}"), f"x {newKey}")
        configure(newKey)
        reloader = Reloader(reactor, runtime, [folder], None, cwd=folder, environ=environ)
        self.assertTrue(reloader.reload())
        self.assertIs(runtime.scrub, scrub)
        self.assertEqual(observer.scrub(f"x {newKey}"), "x [redacted]")
