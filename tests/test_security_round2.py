"""
Issue 11, second security and reliability round: each hole the hostile
campaign found, pinned against a real server on 127.0.0.1 with an upstream
of the test's own where the upstream misbehaves.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from ai_agent.sse import SSEParser
from tests._harness import LiveServer, startServer
from tests._hostile import ScriptedUpstream, jsonAnswer, sseAnswer

BAD_KEY = "sk-bad-upstream-0123456789abcdef"


def agentText(models: str = "bad/model", **keys: Any) -> str:
    """
    An agent file using C{models}, with extra front-matter C{keys}.
    """
    extra = "".join(f"{key}: {value}\n" for key, value in keys.items())
    return f"---\ndescription: test\nmodels: {models}\nmaxRetries: 1\n{extra}---\nYou test.\n"


def client(testCase: TestCase) -> HTTPClient:
    pool = HTTPConnectionPool(reactor, persistent=False)
    testCase.addCleanup(pool.closeCachedConnections)
    return HTTPClient(Agent(reactor, pool=pool))


async def chat(
    testCase: TestCase, server: LiveServer, stream: bool = False, model: str = "agent", **fields: Any
) -> tuple[int, dict[str, list[str]], bytes]:
    """
    One chat completion: status, lower-case headers, body.
    """
    response = await client(testCase).post(
        server.baseUrl + "/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": stream,
            **fields,
        },
    )
    body = await treq.content(response)
    headers = {
        name.decode().lower(): [v.decode() for v in values]
        for name, values in response.headers.getAllRawHeaders()
    }
    return response.code, headers, body


def sseEvents(body: bytes) -> list[Any]:
    """
    The payloads of an SSE body (C{[DONE]} as a string).
    """
    return [
        event.data if event.data == "[DONE]" else json.loads(event.data)
        for event in SSEParser().feed(body)
    ]


async def badServer(testCase: TestCase, upstream: ScriptedUpstream, **kwargs: Any) -> LiveServer:
    """
    A live server whose only agent calls C{upstream} as provider C{bad}.
    """
    agents = kwargs.pop("agents", None) or {"agent.ai": agentText()}
    return await startServer(
        testCase,
        agents,
        extraProviders={
            "bad": {"type": "openai", "baseUrl": upstream.baseUrl, "apiKey": BAD_KEY},
            **kwargs.pop("extraProviders", {}),
        },
        **kwargs,
    )


class MalformedUpstreamTests(TestCase):
    """
    Item 10: every shape of upstream answer is a 502 naming what was wrong,
    never a 500 or a traceback.
    """

    timeout = 60

    async def test_everyShapeIsA502(self) -> None:
        """
        Answers of the wrong shape (a tool call whose C{function} is a
        string, C{tool_calls} that is not an array, a tool call without a
        name, a message that is a number, streamed deltas of the wrong
        type) each give a 502 C{upstream_invalid_response} whose message
        names the part at fault; nothing is logged as a crash.
        """
        cases: list[tuple[Any, str]] = [
            (
                jsonAnswer({"choices": [{"message": {"tool_calls": [{"function": "f"}]}}]}),
                "choices[0].message.tool_calls[0].function is a string",
            ),
            (
                jsonAnswer({"choices": [{"message": {"tool_calls": {"a": 1}}}]}),
                "choices[0].message.tool_calls is an object",
            ),
            (
                jsonAnswer({"choices": [{"message": {"tool_calls": [{"function": {}}]}}]}),
                "tool_calls[0].function.name is missing",
            ),
            (jsonAnswer({"choices": [{"message": 3}]}), "choices[0].message is a number"),
            (
                sseAnswer([{"choices": [{"delta": {"tool_calls": [{"function": "f"}]}}]}]),
                "delta.tool_calls[0].function is a string",
            ),
            (
                sseAnswer([{"choices": [{"delta": {"tool_calls": "x"}}]}]),
                "delta.tool_calls is a string",
            ),
            (
                sseAnswer(
                    [
                        {"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c"}]}}]},
                        {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
                    ]
                ),
                "the streamed tool call 0 has no function name",
            ),
        ]
        upstream = ScriptedUpstream().start(self)
        server = await badServer(self, upstream)
        from twisted.logger import globalLogPublisher

        crashes: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_failure") is not None:
                crashes.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        for answer, named in cases:
            for stream in (False, True):
                upstream.answers.append(answer)
                status, headers, body = await chat(self, server, stream=stream)
                self.assertEqual(status, 502, (named, body))
                error = json.loads(body)["error"]
                self.assertEqual(error["code"], "upstream_invalid_response")
                self.assertIn(named, error["message"])
                self.assertNotIn(BAD_KEY, error["message"])
        self.assertEqual(crashes, [])


class UserinfoTests(TestCase):
    """
    Item 2: credentials in a provider's or an MCP server's URL are refused
    when the configuration loads, by a message that does not show them.
    """

    timeout = 60

    async def test_refusedWithoutEcho(self) -> None:
        """
        The real command exits with an error naming the key path for a
        C{baseUrl} or an MCP C{url} of the form C{http://user:pass@host};
        neither the password nor the user name appears in its output.
        """
        import os

        from tests._process import childEnvironment, command, run

        for section in ("providers", "mcpServers"):
            directory = os.path.abspath(self.mktemp())
            os.makedirs(directory)
            if section == "providers":
                config: dict[str, Any] = {
                    "providers": {
                        "p": {
                            "type": "openai",
                            "baseUrl": "http://scott:tiger-pass-9F3@127.0.0.1:9/v1",
                        }
                    }
                }
                where = "providers.p.baseUrl"
            else:
                config = {
                    "providers": {"p": {"type": "openai", "baseUrl": "http://127.0.0.1:9/v1"}},
                    "mcpServers": {"m": {"url": "http://scott:tiger-pass-9F3@127.0.0.1:9/mcp"}},
                }
                where = "mcpServers.m.url"
            with open(os.path.join(directory, ".ai-agent.json"), "w") as f:
                json.dump(config, f)
            with open(os.path.join(directory, "a.ai"), "w") as f:
                f.write(agentText("p/model"))
            out, err, code = await run(
                [*command("ai-agent"), "--agent", "a.ai", "--openai-completions", "tcp:0"],
                directory,
                childEnvironment(HOME=directory),
            )
            output = out + err
            self.assertNotEqual(code, 0, output)
            self.assertIn(where.encode(), output)
            self.assertIn(b"user name or password", output)
            self.assertNotIn(b"tiger-pass-9F3", output)
            self.assertNotIn(b"scott", output)
