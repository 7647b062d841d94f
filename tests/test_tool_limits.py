"""
Bounds on a turn's tool calls (L{ai_agent.limits}): how many, how many
at once, and sub-agent runs server-wide.

From the second security and reliability round (issue 11): each hole the
hostile campaign found, pinned against a real server on 127.0.0.1 with an
upstream of the test's own where the upstream misbehaves.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests._hostile import ScriptedUpstream, sseAnswer
from tests._misbehaving import (
    agentText,
    badServer,
    client,
    floodConfig,
    textEvents,
    toolCallEvents,
)


class FanOutTests(TestCase):
    """
    Item 4: one turn's tool calls are bounded in number and in concurrency,
    and sub-agent runs count against a server-wide limit.
    """

    timeout = 60

    async def fanOut(
        self,
        calls: int,
        parentKeys: dict[str, Any],
        serverLimit: int | None,
        process: bool = False,
    ) -> tuple[int, list[Any], int, bytes]:
        """
        A parent whose first turn asks for C{calls} sub-agent calls; every
        child's upstream call is held until the test has seen how many are
        in flight at once.

        @param process: run the server as a subprocess (with its defaults)
            rather than in the test's process.

        @return: the most child calls in flight, the parent's second-turn
            request, the number of child calls made, and the answer body.
        """
        from tests._hostile import pause, waitUntil

        upstream = ScriptedUpstream().start(self)
        agents = {
            "agent.ai": agentText(agents="[child.ai]", **parentKeys),
            "child.ai": agentText(),
        }
        if process:
            from tests._hostile import startServerProcess

            child = await startServerProcess(
                self,
                floodConfig(upstream),
                agents,
                ("--verbose", "--openai-completions-concurrency", "4"),
            )
            url = child.base + "/v1/chat/completions"
        else:
            server = await badServer(self, upstream, agents=agents)
            url = server.baseUrl + "/chat/completions"
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

        async def post() -> tuple[int, bytes]:
            response = await client(self).post(
                url, json={"model": "agent", "messages": [{"role": "user", "content": "go"}]}
            )
            return response.code, await treq.content(response)

        answer = ensureDeferred(post())
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
        status, body = await answer
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

    async def test_twoThousandChildren(self) -> None:
        """
        The campaign's case, on the real server process with its defaults
        (C{--openai-completions-concurrency 4}, no limits in the agent
        file): one turn asking for 2,000 C{agent__child} calls makes 32
        child runs, never more than 4 at once, and the model is told the
        other 1,968 were not run.
        """
        most, messages, made, body = await self.fanOut(2000, {}, None, process=True)
        self.assertEqual((made, most), (32, 4))
        tools = [m for m in messages if m["role"] == "tool"]
        self.assertEqual(len(tools), 2000)
        self.assertEqual(len([m for m in tools if m["content"].startswith("error: not run")]), 1968)

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
