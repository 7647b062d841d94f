"""
Issue 11, second security and reliability round: each hole the hostile
campaign found, pinned against a real server on 127.0.0.1 with an upstream
of the test's own where the upstream misbehaves.
"""

from __future__ import annotations

import json
import re
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
    testCase: TestCase,
    server: LiveServer,
    stream: bool = False,
    model: str = "agent",
    **fields: Any,
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


def toolCallEvents(calls: list[tuple[str, str]]) -> list[Any]:
    """
    Stream chunks of tool calls (name, arguments), then their finish.
    """
    events: list[Any] = []
    for index, (name, arguments) in enumerate(calls):
        events.append(
            {
                "choices": [
                    {
                        "delta": {
                            "tool_calls": [
                                {
                                    "index": index,
                                    "id": f"call_{index}",
                                    "function": {"name": name, "arguments": arguments},
                                }
                            ]
                        }
                    }
                ]
            }
        )
    events.append({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]})
    return events


def textEvents(pieces: list[str], field: str = "content") -> list[Any]:
    """
    Stream chunks carrying C{pieces} in C{field}, then a stop.
    """
    return [{"choices": [{"delta": {field: piece}}]} for piece in pieces] + [
        {"choices": [{"delta": {}, "finish_reason": "stop"}]}
    ]


class RedactionTests(TestCase):
    """
    Item 3: a configured secret never reaches a client, whatever part of a
    successful answer carries it, whole or split across stream deltas.
    """

    timeout = 60

    async def test_keyInEveryPartOfAnAnswer(self) -> None:
        """
        The provider key in a tool call's name and arguments (quoted in the
        progress lines), in reasoning and in content, split over several
        deltas at every position, is replaced with C{[redacted]} in the
        streamed and the non-streamed answer; text around it and a lone
        prefix of the key at the end of the answer arrive unchanged.
        """
        upstream = ScriptedUpstream().start(self)
        agents = {
            "agent.ai": agentText(agents="[child.ai]"),
            "child.ai": agentText(),
        }
        server = await badServer(self, upstream, agents=agents)
        cut = [BAD_KEY[:5], BAD_KEY[5:9], BAD_KEY[9:]]
        for stream in (False, True):
            upstream.answers.extend(
                [
                    sseAnswer(
                        toolCallEvents(
                            [
                                ("agent__child", json.dumps({"prompt": f"use {BAD_KEY}"})),
                                (f"tool_{BAD_KEY}", "{}"),
                            ]
                        )
                    ),
                    # The child's answer is the tool's result, shown in progress.
                    sseAnswer(textEvents(["child says ", *cut])),
                    sseAnswer(
                        textEvents(["thinking ", *cut, " done"], "reasoning_content")[:-1]
                        + textEvents(["the key is ", *cut, "! and ", BAD_KEY[:6]])
                    ),
                ]
            )
            status, headers, body = await chat(self, server, stream=stream)
            self.assertEqual(status, 200, body)
            self.assertNotIn(BAD_KEY.encode(), body)
            for fragment in (BAD_KEY[3:], BAD_KEY[5:]):
                self.assertNotIn(fragment.encode(), body)
            if stream:
                frames = [e for e in sseEvents(body) if isinstance(e, dict) and e.get("choices")]
                content = "".join(f["choices"][0]["delta"].get("content") or "" for f in frames)
                reasoning = "".join(
                    f["choices"][0]["delta"].get("reasoning_content") or "" for f in frames
                )
            else:
                message = json.loads(body)["choices"][0]["message"]
                content, reasoning = message["content"], message["reasoning_content"]
            self.assertEqual(content, f"the key is [redacted]! and {BAD_KEY[:6]}")
            self.assertIn("thinking [redacted] done", reasoning)
            self.assertIn("calling tool_[redacted] {}", reasoning)
            self.assertIn('"prompt": "use [redacted]"', reasoning)
            self.assertIn("child says [redacted]", reasoning)


class FanOutTests(TestCase):
    """
    Item 4: one turn's tool calls are bounded in number and in concurrency,
    and sub-agent runs count against a server-wide limit.
    """

    timeout = 60

    async def fanOut(
        self, calls: int, parentKeys: dict[str, Any], serverLimit: int | None
    ) -> tuple[int, list[Any], int, bytes]:
        """
        A parent whose first turn asks for C{calls} sub-agent calls; every
        child's upstream call is held until the test has seen how many are
        in flight at once.

        @return: the most child calls in flight, the parent's second-turn
            request, the number of child calls made, and the answer body.
        """
        from tests._hostile import pause, waitUntil

        upstream = ScriptedUpstream().start(self)
        agents = {
            "agent.ai": agentText(agents="[child.ai]", **parentKeys),
            "child.ai": agentText(),
        }
        server = await badServer(self, upstream, agents=agents)
        if serverLimit is not None:
            from ai_agent.limits import SubAgentLimiter

            server.runtime.tools.subAgentLimiter = SubAgentLimiter(reactor, serverLimit)
        held: list[Any] = []
        children: list[bytes] = []
        final: list[bytes] = []

        def route(request: bytes, connection: Any) -> None:
            if b'"role":"tool"' in request:
                final.append(request)
                sseAnswer(textEvents(["all done"]))(request, connection)
            else:
                children.append(request)
                held.append(connection)

        upstream.default = route
        upstream.answers.append(
            sseAnswer(
                toolCallEvents(
                    [("agent__child", json.dumps({"prompt": f"job {i}"})) for i in range(calls)]
                )
            )
        )
        from twisted.internet.defer import ensureDeferred

        answer = ensureDeferred(chat(self, server))
        most = 0
        while not final:
            await waitUntil(lambda: bool(held) or bool(final))
            if final:
                break
            await pause(0.2)
            most = max(most, len(held))
            connection = held.pop(0)
            sseAnswer(textEvents(["ok"]))(b"", connection)
            await waitUntil(lambda: bool(held) or bool(final))
        status, headers, body = await answer
        self.assertEqual(status, 200, body)
        return most, json.loads(final[0].split(b"\r\n\r\n", 1)[1])["messages"], len(children), body

    async def test_perTurnAndPerRun(self) -> None:
        """
        A turn asking for 40 sub-agent calls under C{maxToolCallsPerTurn: 5}
        and C{maxConcurrentTools: 2} runs 5 of them, never more than 2 at a
        time; the other 35 are answered to the model as not run, and the
        run still answers.
        """
        most, messages, made, body = await self.fanOut(
            40, {"maxToolCallsPerTurn": 5, "maxConcurrentTools": 2}, None
        )
        self.assertEqual(made, 5)
        self.assertEqual(most, 2)
        tools = [m for m in messages if m["role"] == "tool"]
        self.assertEqual(len(tools), 40)
        notRun = [m for m in tools if m["content"].startswith("error: not run")]
        self.assertEqual(len(notRun), 35)
        self.assertIn("at most 5 run per turn", notRun[0]["content"])
        self.assertIn(b"all done", body)

    async def test_serverWideSubAgentLimit(self) -> None:
        """
        With the server's sub-agent limit at 3, a run allowed 10 concurrent
        tool calls has at most 3 sub-agent runs (so 3 child upstream calls)
        in flight.
        """
        most, messages, made, body = await self.fanOut(
            8, {"maxToolCallsPerTurn": 8, "maxConcurrentTools": 10}, 3
        )
        self.assertEqual(made, 8)
        self.assertEqual(most, 3)


def floodConfig(upstream: ScriptedUpstream) -> dict[str, Any]:
    return {
        "providers": {"bad": {"type": "openai", "baseUrl": upstream.baseUrl, "apiKey": BAD_KEY}}
    }


class AnswerSizeTests(TestCase):
    """
    Item 5: an upstream answer is capped in size, and a streaming client
    that stops reading makes the server stop reading the upstream, within a
    bound after which the run is stopped; memory is measured as the server
    process's RSS.
    """

    timeout = 120

    async def test_hugeAnswerCapped(self) -> None:
        """
        A 100 MB answer of text stops at the run's 8 Mi-character cap: the
        non-streamed request gets a 502 C{answer_too_large}, the streamed
        one an in-band error with that code.  A 100 MB stream of chunks
        carrying nothing stops at the 64 MiB cap on an upstream body: a 502
        C{upstream_answer_too_large} (streamed too, since nothing had been
        sent).  The upstream connection is closed
        each time, and the server's RSS grows by less than 150 MB.
        """
        from tests._hostile import FloodAnswer, startServerProcess

        upstream = ScriptedUpstream().start(self)
        server = await startServerProcess(
            self, floodConfig(upstream), {"agent.ai": agentText()}, ("--verbose",)
        )
        from twisted.internet.task import LoopingCall

        before = server.rss()
        samples = [before]
        sampler = LoopingCall(lambda: samples.append(server.rss()))
        sampler.start(0.02)
        self.addCleanup(lambda: sampler.running and sampler.stop())
        cases = [
            (True, 20, "answer_too_large"),
            (False, 80, "upstream_answer_too_large"),
        ]
        for content, mostMB, code in cases:
            for stream in (False, True):
                flood = FloodAnswer(100 * 1024 * 1024, content=content)
                upstream.answers.append(flood)
                response = await client(self).post(
                    server.base + "/v1/chat/completions",
                    json={
                        "model": "agent",
                        "messages": [{"role": "user", "content": "hi"}],
                        "stream": stream,
                    },
                )
                body = await treq.content(response)
                await flood.closed
                self.assertLess(flood.sent, mostMB * 1024 * 1024)
                if stream and content:
                    # The text began the stream: the error is in-band.
                    self.assertEqual(response.code, 200)
                    errors = [
                        e["error"] for e in sseEvents(body) if isinstance(e, dict) and "error" in e
                    ]
                    self.assertEqual(errors[0]["code"], code)
                else:
                    # Nothing was sent yet: a real status.
                    self.assertEqual(response.code, 502, body[:300])
                    self.assertEqual(json.loads(body)["error"]["code"], code)
        sampler.stop()
        peak = max(samples)
        grown = (peak - before) / 2**20
        print(f"\nRSS before {before / 2**20:.0f} MB, peak {peak / 2**20:.0f} MB (+{grown:.0f})")
        self.assertLess(grown, 150)

    async def test_clientStopsReading(self) -> None:
        """
        A streaming client that reads nothing: the server stops reading the
        upstream (the bytes the upstream gets out stop growing, far below
        the 100 MB answer), its RSS stays within 60 MB of where it was, and
        after C{--client-stall-timeout} seconds it drops the client and
        closes the upstream connection.
        """
        import socket
        import time

        from tests._hostile import FloodAnswer, pause, startServerProcess

        upstream = ScriptedUpstream().start(self)
        server = await startServerProcess(
            self,
            floodConfig(upstream),
            {"agent.ai": agentText()},
            ("--verbose", "--client-stall-timeout", "4"),
        )
        before = server.rss()
        flood = FloodAnswer(100 * 1024 * 1024)
        upstream.answers.append(flood)
        body = json.dumps(
            {"model": "agent", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        ).encode()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        self.addCleanup(sock.close)
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        started = time.monotonic()
        await pause(2.0)
        plateau = flood.sent
        peak = server.rss()
        await pause(1.0)
        peak = max(peak, server.rss())
        self.assertLess(flood.sent - plateau, 2 * 1024 * 1024)
        self.assertLess(flood.sent, 30 * 1024 * 1024)
        await flood.closed.addTimeout(10, reactor)
        stoppedAfter = time.monotonic() - started
        self.assertGreater(stoppedAfter, 3.5)
        self.assertLess(stoppedAfter, 9)
        await pause(0.5)
        after = server.rss()
        grown = (max(peak, after) - before) / 2**20
        print(
            f"\nupstream sent {flood.sent / 2**20:.1f} MB before the pause; RSS +{grown:.0f} MB;"
            f" run stopped after {stoppedAfter:.1f} s"
        )
        self.assertLess(grown, 60)
        self.assertIn(b"read nothing for 4 s", server.output)

    async def test_runAnswerCapped(self) -> None:
        """
        A run whose answer text and progress pass the headend's cap (set to
        1,000 characters here; 8 Mi by default) is stopped: a 502
        C{answer_too_large} before the stream started, an in-band error
        after.
        """
        upstream = ScriptedUpstream().start(self)
        server = await badServer(self, upstream, streamHeadGrace=0.01)
        server.headend.maxAnswer = 1000
        for stream in (False, True):
            upstream.answers.append(sseAnswer(textEvents(["y" * 400] * 5)))
            status, headers, body = await chat(self, server, stream=stream)
            if stream:
                self.assertEqual(status, 200)
                errors = [
                    e["error"] for e in sseEvents(body) if isinstance(e, dict) and "error" in e
                ]
                self.assertEqual(errors[0]["code"], "answer_too_large")
                self.assertIn("past 1000 characters", errors[0]["message"])
            else:
                self.assertEqual(status, 502, body)
                self.assertEqual(json.loads(body)["error"]["code"], "answer_too_large")


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


class RetryAfterTests(TestCase):
    """
    Item 8: an upstream's C{Retry-After} longer than a turn may wait ends
    the run at once and is passed on.
    """

    timeout = 60

    async def test_longRetryAfter(self) -> None:
        """
        With C{Retry-After: 99999} (and three attempts allowed), the answer
        comes at once: a 429 with C{Retry-After} (believed up to a day:
        86400) when nothing was streamed yet, and an in-band error saying
        when to retry when the stream had begun; the upstream is called
        once per request.
        """
        import time

        upstream = ScriptedUpstream(
            default=jsonAnswer(
                {"error": {"message": "slow down", "type": "rate_limit"}},
                429,
                {"Retry-After": "99999"},
            )
        ).start(self)
        server = await badServer(
            self,
            upstream,
            agents={"agent.ai": agentText().replace("maxRetries: 1", "maxRetries: 3")},
        )
        started = time.monotonic()
        status, headers, body = await chat(self, server)
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertEqual(status, 429, body)
        self.assertEqual(headers["retry-after"], ["86400"])
        self.assertEqual(len(upstream.requests), 1)
        server.headend.streamHeadGrace = 0.0
        started = time.monotonic()
        status, headers, body = await chat(self, server, stream=True)
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertEqual(status, 200)
        errors = [e["error"] for e in sseEvents(body) if isinstance(e, dict) and "error" in e]
        self.assertEqual(errors[0]["code"], "upstream_rate_limited")
        self.assertIn("retry after 86400 s", errors[0]["message"])
        self.assertEqual(len(upstream.requests), 2)


async def postRaw(
    testCase: TestCase, server: LiveServer, body: bytes, headers: dict[str, list[str]] | None = None
) -> tuple[int, bytes]:
    """
    POST C{body} as it is to the chat completions route.
    """
    response = await client(testCase).post(
        server.baseUrl + "/chat/completions",
        data=body,
        headers=headers or {"Content-Type": ["application/json"]},
    )
    return response.code, await treq.content(response)


class ClientValueTests(TestCase):
    """
    Items 11 and 12: numbers that are not finite are refused naming where
    they were; a client's values are quoted back shortened.
    """

    timeout = 60

    async def test_nonFiniteNumbers(self) -> None:
        """
        C{1e400} (which Python would read as infinity) anywhere in a request
        is a 400 C{invalid_number} whose C{param} is its path, and the
        upstream is never called; C{1e300} passes.
        """
        upstream = ScriptedUpstream().start(self)
        server = await badServer(self, upstream)
        base = {
            "model": "agent",
            "messages": [{"role": "user", "content": "1e400 in text is fine"}],
        }
        schema = {"type": "json_schema", "json_schema": {"name": "n", "schema": {"maximum": 0}}}
        cases = [
            (
                json.dumps({**base, "response_format": schema}).replace(
                    '"maximum": 0', '"maximum": 1e400'
                ),
                "response_format.json_schema.schema.maximum",
            ),
            (
                json.dumps({**base, "temperature": 0}).replace(
                    '"temperature": 0', '"temperature": -1E+400'
                ),
                "temperature",
            ),
            (
                json.dumps({**base, "metadata": {"x": [1, 2]}}).replace(
                    "2]", "1" + "0" * 400 + ".5]"
                ),
                "metadata.x[1]",
            ),
        ]
        for body, param in cases:
            status, answer = await postRaw(self, server, body.encode())
            self.assertEqual(status, 400, answer)
            error = json.loads(answer)["error"]
            self.assertEqual((error["code"], error["param"]), ("invalid_number", param))
        self.assertEqual(upstream.requests, [])
        upstream.answers.append(sseAnswer(textEvents(["fine"])))
        status, answer = await postRaw(
            self,
            server,
            json.dumps({**base, "response_format": schema})
            .replace('"maximum": 0', '"maximum": 1e300')
            .encode(),
        )
        self.assertEqual(status, 200, answer)
        self.assertIn(b"1e+300", upstream.requests[0])

    async def test_echoesShortened(self) -> None:
        """
        A 1 MB model name, a 10 kB unknown path, a 10 kB content type and a
        deeply nested key path are quoted back in at most about 80
        characters each; no error body is longer than 1,000 bytes.
        """
        upstream = ScriptedUpstream().start(self)
        server = await badServer(self, upstream)
        bodies = []
        status, answer = await postRaw(
            self,
            server,
            json.dumps(
                {"model": "m" * 1_000_000, "messages": [{"role": "user", "content": "x"}]}
            ).encode(),
        )
        self.assertEqual(status, 404)
        bodies.append(answer)
        self.assertIn("mmm...", json.loads(answer)["error"]["message"])
        response = await client(self).get(server.baseUrl + "/" + "p" * 10_000)
        self.assertEqual(response.code, 404)
        bodies.append(await treq.content(response))
        status, answer = await postRaw(
            self, server, b"{}", {"Content-Type": ["application/" + "x" * 10_000]}
        )
        self.assertEqual(status, 415)
        bodies.append(answer)
        nested: Any = "\\ud800"
        for _level in range(60):
            nested = {"k" * 64: nested}
        status, answer = await postRaw(
            self,
            server,
            json.dumps(
                {"model": "agent", "messages": [{"role": "user", "content": "x"}], "z": nested}
            )
            .replace("\\\\ud800", "\\ud800")
            .encode(),
        )
        self.assertEqual(status, 400, answer[:300])
        bodies.append(answer)
        for body in bodies:
            self.assertLess(len(body), 1000, body[:200])


def statusAndBody(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """
    The status, lower-case headers and body of the first response in
    C{raw} (a C{100 Continue} is not skipped).
    """
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode()] = value.strip().decode("latin-1")
    return status, headers, body


def responseBody(headers: dict[str, str], body: bytes) -> bytes:
    """
    The body of a raw response: cut at its C{Content-Length}, or
    de-chunked.
    """
    if "content-length" in headers:
        return body[: int(headers["content-length"])]
    assert headers.get("transfer-encoding") == "chunked", headers
    data = b""
    while True:
        size, _, rest = body.partition(b"\r\n")
        length = int(size, 16)
        if length == 0:
            return data
        data += rest[:length]
        body = rest[length + 2 :]


def responseComplete(raw: bytes) -> bool:
    """
    Whether C{raw} holds a whole response (by its C{Content-Length}, or the
    last chunk).
    """
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    headers = head.lower()
    if b"transfer-encoding: chunked" in headers:
        return body.endswith(b"0\r\n\r\n")
    match = re.search(rb"content-length: *(\d+)", headers)
    return match is not None and len(body) >= int(match.group(1))


class RawHTTPTests(TestCase):
    """
    Items 13 and 14: what the server writes for hostile HTTP, byte by byte
    on raw sockets.
    """

    timeout = 60

    async def startGuarded(self, **policy: Any) -> LiveServer:
        from ai_agent.headends._http import APIKeys, HTTPPolicy

        upstream = ScriptedUpstream().start(self)
        keys = policy.pop("keys", ())
        return await badServer(
            self, upstream, policy=HTTPPolicy(apiKeys=APIKeys.fromKeys(keys), **policy)
        )

    def port(self, server: LiveServer) -> int:
        return int(server.port.getHost().port)

    async def test_noContinueAfterFinalAnswer(self) -> None:
        """
        With C{Expect: 100-continue}, a request refused on its head (401
        without a key, 413 for a declared length past the cap) gets its
        final JSON answer at once and no C{100 Continue} before or after
        it; an accepted request still gets its C{100 Continue}.
        """
        from tests._hostile import rawExchange

        server = await self.startGuarded(keys=["right-key-123456"], maxBodySize=1000)
        port = self.port(server)
        cases = [
            (b"", b"Content-Length: 10\r\n", 401),
            (b"Authorization: Bearer right-key-123456\r\n", b"Content-Length: 5000\r\n", 413),
        ]
        for auth, length, expected in cases:
            raw = await rawExchange(
                port,
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\n"
                + auth
                + length
                + b"Expect: 100-continue\r\n\r\n",
                readFor=1.0,
            )
            status, headers, body = statusAndBody(raw)
            self.assertEqual(status, expected, raw)
            self.assertNotIn(b"100 Continue", raw)
            self.assertEqual(headers["content-type"], "application/json")
            json.loads(body)
        raw = await rawExchange(
            port,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer right-key-123456\r\nContent-Length: 2\r\n"
            b"Expect: 100-continue\r\n\r\n",
            readFor=0.5,
            timeout=1.0,
        )
        self.assertTrue(raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), raw)

    async def test_everyRefusalIsJSON(self) -> None:
        """
        Duplicate C{Content-Length}, a bad request line, too many headers,
        a header or a request line past 16 kB, a hostile C{Host} with a
        doubled slash, C{/%ff}: each is answered with a JSON envelope and
        the right 4xx, never an empty body, a redirect or a bare close;
        nothing is logged as a crash.
        """
        from twisted.logger import globalLogPublisher

        from tests._hostile import rawExchange

        crashes: list[Any] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_failure") is not None:
                crashes.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        server = await self.startGuarded()
        port = self.port(server)
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(600))
        cases = [
            (
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                b"Content-Length: 3\r\n\r\n{}",
                400,
                "invalid_http",
            ),
            (b"GARBAGE\r\n\r\n", 400, "invalid_http"),
            (
                b"GET /health HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n",
                431,
                "request_header_fields_too_large",
            ),
            (
                b"GET /health HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n",
                431,
                "request_header_fields_too_large",
            ),
            (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
            (b"GET /v1/models//x HTTP/1.1\r\nHost: evil.example\r\n\r\n", 404, "model_not_found"),
            (b"GET /v1/models/ HTTP/1.1\r\nHost: evil.example\r\n\r\n", None, None),
            (b"GET /v1/ HTTP/1.1\r\nHost: evil.example\r\n\r\n", 404, "not_found"),
            (b"GET /%ff HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid_path"),
        ]
        for request, expected, code in cases:
            raw = await rawExchange(port, request, readFor=0.5, timeout=3.0)
            self.assertTrue(raw, f"no answer to {request[:60]!r}")
            status, headers, body = statusAndBody(raw)
            self.assertLess(status, 500, raw[:300])
            self.assertNotIn(status, (301, 302, 307, 308), raw[:300])
            self.assertNotIn("location", headers)
            self.assertEqual(headers.get("content-type"), "application/json", raw[:300])
            if expected is not None:
                self.assertEqual(status, expected, raw[:300])
            envelope = json.loads(responseBody(headers, body))
            if code is not None:
                self.assertEqual(envelope["error"]["code"], code)
            self.assertNotIn(b"Traceback", raw)
        self.assertEqual(crashes, [])


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


class BigBodyTests(TestCase):
    """
    Item 6: big JSON bodies do not stall other clients, and concurrent big
    bodies have bounded memory; measured on the server process.
    """

    timeout = 180

    async def measure(
        self, server: Any, bodies: list[bytes]
    ) -> tuple[list[float], list[int], int, list[bytes]]:
        """
        Post C{bodies} at once (each on its own connection) while polling
        C{/health} every 10 ms on a kept-alive connection; return the
        health latencies (s), the statuses of the posts, the peak RSS
        growth (bytes) and the answers.
        """
        import socket
        import time

        from twisted.internet.task import LoopingCall

        latencies: list[float] = []
        before = server.rss()
        samples = [before]
        sampler = LoopingCall(lambda: samples.append(server.rss()))
        sampler.start(0.01)

        def poll(stop: list[bool]) -> None:
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
                while not stop:
                    started = time.monotonic()
                    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                    got = b""
                    while not responseComplete(got):
                        got += s.recv(65536)
                    latencies.append(time.monotonic() - started)
                    time.sleep(0.01)

        def post(body: bytes) -> tuple[int, bytes]:
            with socket.create_connection(("127.0.0.1", server.port), timeout=60) as s:
                s.sendall(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/json\r\nConnection: close\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body) + body
                )
                got = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
            status, headers, rest = statusAndBody(got)
            return status, responseBody(headers, rest)

        from twisted.internet.defer import gatherResults

        from tests._hostile import pause

        stop: list[bool] = []
        poller = deferToThreadWithPool(poll, stop)
        try:
            await pause(0.3)
            results = await gatherResults([deferToThreadWithPool(post, body) for body in bodies])
            await pause(0.2)
        finally:
            stop.append(True)
            sampler.stop()
        await poller
        return (
            latencies,
            [status for status, _ in results],
            max(samples) - before,
            [rest for _, rest in results],
        )

    async def test_bracketFlood(self) -> None:
        """
        Ten 8 MiB bodies of C{{}} objects sent at once are each refused with
        a 400 naming the limit on arrays and objects; meanwhile C{/health}
        answers within 150 ms every time, and the server's RSS grows by less
        than 120 MB.  Ten 8 MiB bodies of ordinary text (one long message
        each) are parsed with C{/health} as responsive, and answered (404
        for their unknown model).
        """
        from tests._hostile import startServerProcess

        upstream = ScriptedUpstream().start(self)
        server = await startServerProcess(
            self, floodConfig(upstream), {"agent.ai": agentText()}, ("--verbose",)
        )
        head = b'{"model":"agent","messages":[{"role":"user","content":"x"}],"x":['
        count = (8 * 1024 * 1024 - 1024 - len(head)) // 3
        flood = head + b",".join([b"{}"] * count) + b"]}"
        text = json.dumps(
            {"model": "nobody", "messages": [{"role": "user", "content": "y " * 4_000_000}]}
        ).encode()
        report = []
        for label, body, expected in (("{} flood", flood, 400), ("long text", text, 404)):
            latencies, statuses, grown, answers = await self.measure(server, [body] * 10)
            worst = max(latencies)
            report.append(
                f"{label}: {len(latencies)} health checks, worst {worst * 1000:.0f} ms,"
                f" RSS +{grown / 2**20:.0f} MB"
            )
            print(report[-1])
            self.assertEqual(statuses, [expected] * 10, answers[0][:300])
            if expected == 400:
                self.assertEqual(json.loads(answers[0])["error"]["code"], "request_too_complex")
            self.assertLess(worst, 0.150, report[-1])
            self.assertLess(grown, 120 * 2**20, report[-1])
        print("\n" + "\n".join(report))


def deferToThreadWithPool(f: Any, *args: Any) -> Any:
    """
    Run a blocking client function in a thread pool of its own (the
    reactor's default pool is small and shared with the code under test).
    """
    from twisted.internet.threads import deferToThreadPool
    from twisted.python.threadpool import ThreadPool

    global _clientPool
    if _clientPool is None:
        _clientPool = ThreadPool(minthreads=0, maxthreads=16, name="test-clients")
        _clientPool.start()
        reactor.addSystemEventTrigger("during", "shutdown", _clientPool.stop)
    return deferToThreadPool(reactor, _clientPool, f, *args)


_clientPool: Any = None


class ContextTests(TestCase):
    """
    The back-pressure of item 5 reaches calls that waited for a place: they
    run in the context of the run that asked for them.
    """

    def test_limiterKeepsCallersContext(self) -> None:
        """
        A sub-agent run that waited for a place in L{SubAgentLimiter} starts
        in its caller's context, not in that of the run whose end freed the
        place.
        """
        from contextvars import ContextVar, copy_context

        from twisted.internet.defer import Deferred
        from twisted.internet.task import Clock

        from ai_agent.limits import SubAgentLimiter

        var: ContextVar[str] = ContextVar("var", default="none")
        limiter = SubAgentLimiter(Clock(), 1)
        seen: list[str] = []
        first: Deferred[None] = Deferred()

        def run(result: Deferred[None]) -> Deferred[None]:
            seen.append(var.get())
            return result

        def call(name: str, result: Deferred[None]) -> Deferred[None]:
            var.set(name)
            return limiter.run(10, run, result)

        copy_context().run(call, "first", first)
        second = copy_context().run(call, "second", Deferred())
        self.assertEqual(seen, ["first"])
        copy_context().run(lambda: (var.set("releaser"), first.callback(None)))
        self.assertEqual(seen, ["first", "second"])
        second.cancel()
        self.failureResultOf(second)


class StreamRedactorTests(TestCase):
    """
    The piecewise redaction behind item 3, over arbitrary text cut at
    arbitrary places.
    """

    def test_anyCuts(self) -> None:
        """
        Whatever the text (secrets, their prefixes and overlaps included)
        and wherever it is cut into pieces, no secret is in what goes out,
        joined; text holding no secret goes out unchanged; with one secret,
        the output is exactly the text with each occurrence replaced.
        """
        from hypothesis import given, settings
        from hypothesis import strategies as st

        from ai_agent.redaction import REDACTED, Redactor

        secrets = ("sk-abcdef123456", "hdr-value-99", "abcdef12", "12345678")
        several = Redactor.of(secrets)
        one = Redactor.of(secrets[:1])
        alphabet = st.sampled_from(
            ["sk-", "abc", "def", "123456", "78", "hdr-", "value-99", "x", " "]
        )

        def run(redactor: Redactor, pieces: list[str]) -> str:
            stream = redactor.stream()
            return "".join(stream.feed(piece) for piece in pieces) + stream.flush()

        @settings(max_examples=400, deadline=None)
        @given(st.lists(alphabet, max_size=30), st.lists(st.integers(0, 200), max_size=8))
        def check(parts: list[str], cuts: list[int]) -> None:
            text = "".join(parts)
            points = sorted({min(c, len(text)) for c in cuts})
            pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
            out = run(several, pieces)
            for secret in secrets:
                self.assertNotIn(secret, out)
            if not any(secret in text for secret in secrets):
                self.assertEqual(out, text)
            self.assertEqual(run(one, pieces), text.replace(secrets[0], REDACTED))

        check()
