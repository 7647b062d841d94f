"""
Keys that are tenants, and C{store: false} that stores nothing (issue 22,
items 1 and 2).

Each API key is a principal: it reaches only the agents it may use and the
objects it stored; anything else is answered as if it did not exist.  A
hybrid Responses run with C{store: false} keeps its hidden turn sealed in
the response, not on the server.  Driven with the real C{openai} SDK over
127.0.0.1 against the fake upstream and the calc MCP server, on a real
SQLite store (and in real server processes where the point is that two
processes share a key).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from typing import Any

import openai
import treq
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from ai_agent.clienttools import HiddenTurn, MemoryTurnStore
from ai_agent.config import loadConfig
from ai_agent.errors import ConfigurationError
from ai_agent.headends._http import APIKeys, HTTPPolicy
from ai_agent.principals import IMPLICIT, Principal, anonymousPrincipal
from ai_agent.providers import ChatMessage, ToolCall
from ai_agent.sealing import SEALED_PREFIX, Sealer, SealError
from ai_agent.store import RESPONSES, TURNS, MemoryStore, OwnedStore, makeStore
from ai_agent.testing import Reply
from tests._harness import LiveServer, inThread, startServer
from tests._process import command, freePort
from tests.mcp_servers import calcEntry
from tests.test_firstrun import Child, ended, spawn

HYBRID = """\
---
description: An agent with its own calculator
models: fake/test-model
tools: [calc]
---
You are the hybrid agent.
"""

PLAIN = """\
---
description: A plain agent
models: fake/test-model
---
You are the plain agent.
"""

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}

KA, KB = "ka-0123456789abcdef", "kb-fedcba9876543210"
SEALING_KEY = "sealing-key-for-tests-0123456789abcdef"
INCLUDE = ["reasoning.encrypted_content"]


def _sdk(server: LiveServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.baseUrl, api_key=key, max_retries=0, timeout=20)


def _http(testCase: TestCase) -> Any:
    pool = HTTPConnectionPool(reactor, persistent=False)
    testCase.addCleanup(pool.closeCachedConnections)
    return treq.client.HTTPClient(Agent(reactor, pool=pool))


async def _raw(
    testCase: TestCase, server: LiveServer, method: str, path: str, key: str, body: Any = None
) -> tuple[int, bytes]:
    """
    One request with C{key}: its status and body as sent.
    """
    url = server.baseUrl.removesuffix("/v1") + path
    headers = {"Authorization": f"Bearer {key}"}
    if body is None:
        response = await _http(testCase).request(method, url, headers=headers)
    else:
        response = await _http(testCase).request(method, url, headers=headers, json=body)
    return response.code, await response.content()


def _hybridScript(upstream: Any, answer: str = "5, and sunny.") -> None:
    upstream.script(
        Reply(toolCalls=[("calc__add", {"a": 2, "b": 3})]),
        Reply(toolCalls=[("get_weather", {"city": "Paris"})]),
        Reply(content=answer),
    )


def _roles(server: LiveServer, index: int) -> list[tuple[str, Any]]:
    """
    What the model got in its C{index}th call, without the agent's prompt:
    (role, tool call names or content).
    """
    return [
        (
            m["role"],
            [c["function"]["name"] for c in m["tool_calls"]]
            if m.get("tool_calls")
            else m.get("content"),
        )
        for m in server.upstream.requests[index].body["messages"]
        if m["role"] != "system"
    ]


def _sqliteRows(path: str) -> list[tuple[str, str]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute("SELECT ns, doc_key FROM ai_agent_store").fetchall()
    finally:
        connection.close()


async def _tenants(
    testCase: TestCase, keys: APIKeys | None = None, **kwargs: Any
) -> tuple[LiveServer, str]:
    """
    A server with keys (C{KA} and C{KB} bare, unless C{keys}), the hybrid
    agent, and a SQLite store in a file of the test's own.
    """
    path = os.path.join(os.path.abspath(testCase.mktemp()), "store.sqlite3")
    server = await startServer(
        testCase,
        agents={"hybrid.ai": HYBRID, "plain.ai": PLAIN},
        mcpServers={"calc": calcEntry()},
        streamHeadGrace=0.0,
        policy=HTTPPolicy(apiKeys=keys or APIKeys.fromKeys([KA, KB])),
        store=makeStore(path, reactor),
        **kwargs,
    )
    return server, path


class PrincipalTests(SynchronousTestCase):
    """
    Keys resolved to principals, and the configuration of named keys.
    """

    def test_resolve(self) -> None:
        """
        Each bare key is a principal of its own, named by a hash prefix
        that is not the key; a named key (by key or by hash) is its named
        principal with its agents; an unknown or missing key is none.
        """
        named = loadConfig(
            configFile=None,
            cwd=self._config(
                {
                    "keys": {
                        "team-a": {"key": "${TEAM_A}", "agents": ["chat"]},
                        "team-b": {"keyHash": "sha256:" + hashlib.sha256(b"kb2").hexdigest()},
                    }
                }
            ),
            agentDirs=[],
            home=None,
            environ={"TEAM_A": "ka2"},
        ).keys
        keys = APIKeys.fromKeys([KA, KB], named.values())
        a, b = keys.resolve(KA.encode()), keys.resolve(KB.encode())
        assert a is not None and b is not None
        self.assertNotEqual(a, b)
        self.assertEqual(a, anonymousPrincipal(KA))
        self.assertTrue(a.name.startswith("key:"))
        self.assertNotIn(KA, a.name)
        self.assertEqual(keys.resolve(b"ka2"), Principal("team-a", frozenset({"chat"})))
        self.assertEqual(keys.resolve(b"kb2"), Principal("team-b", None))
        self.assertIsNone(keys.resolve(b"nope"))
        self.assertIsNone(keys.resolve(None))
        self.assertNotIn(KA, repr(keys))

    def _config(self, data: dict[str, Any]) -> str:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        with open(os.path.join(folder, ".ai-agent.json"), "w") as f:
            json.dump(data, f)
        return folder

    def _refused(self, data: dict[str, Any], environ: dict[str, str] | None = None) -> str:
        with self.assertRaises(ConfigurationError) as caught:
            loadConfig(
                configFile=None,
                cwd=self._config(data),
                agentDirs=[],
                home=None,
                environ=environ or {},
            )
        return str(caught.exception)

    def test_badEntries(self) -> None:
        """
        A named key's entry is refused, naming what is wrong: an unknown
        field (by name, as elsewhere in the configuration), both or none
        of C{key} and C{keyHash}, an unset variable, a malformed hash, a
        name that could pass for another principal's, two names for one
        key; a short sealing key too.
        """
        self.assertIn(
            "keys.a: unknown key 'limit'", self._refused({"keys": {"a": {"key": "k", "limit": 1}}})
        )
        self.assertIn(
            "exactly one of 'key'", self._refused({"keys": {"a": {"key": "k", "keyHash": "x"}}})
        )
        self.assertIn("exactly one of 'key'", self._refused({"keys": {"a": {"agents": []}}}))
        self.assertIn(
            "TEAM_A, which is not set", self._refused({"keys": {"a": {"key": "${TEAM_A}"}}})
        )
        self.assertIn(
            "'sha256:' and 64 hex", self._refused({"keys": {"a": {"keyHash": "sha256:abc"}}})
        )
        self.assertIn("key name 'key:x'", self._refused({"keys": {"key:x": {"key": "k"}}}))
        self.assertIn("key name 'a/b'", self._refused({"keys": {"a/b": {"key": "k"}}}))
        self.assertIn(
            "have the same key", self._refused({"keys": {"a": {"key": "k"}, "b": {"key": "k"}}})
        )
        self.assertIn("at least 32", self._refused({"sealingKeys": ["short"]}))


class OwnedStoreTests(SynchronousTestCase):
    """
    The store as one principal sees it.
    """

    def test_apart(self) -> None:
        """
        A document one principal stored is absent for another, under the
        same key, for get, getMany and deleteEntries; the owner finds it
        under the key it used; the implicit principal (no keys) uses keys
        as they are.
        """
        store = MemoryStore(Clock())
        a = OwnedStore(store, Principal("team-a"))
        b = OwnedStore(store, Principal("team-b"))
        self.successResultOf(a.putEntries([(RESPONSES, "resp_1", {"x": 1})]))
        self.assertIsNone(self.successResultOf(b.get(RESPONSES, "resp_1")))
        self.assertEqual(self.successResultOf(b.getMany(RESPONSES, ["resp_1"])), {})
        self.assertEqual(self.successResultOf(b.deleteEntries([(RESPONSES, "resp_1")])), 0)
        found = self.successResultOf(a.get(RESPONSES, "resp_1"))
        assert found is not None
        self.assertEqual((found.key, found.document), ("resp_1", {"x": 1}))
        self.successResultOf(OwnedStore(store, IMPLICIT).putEntries([(TURNS, "c1", 1)]))
        self.assertIsNotNone(self.successResultOf(store.get(TURNS, "c1")))
        self.assertEqual(self.successResultOf(a.deleteEntries([(RESPONSES, "resp_1")])), 1)

    def test_memoryTurns(self) -> None:
        """
        Hidden turns kept in memory (C{--store none}) are found only by the
        principal whose run kept them.
        """
        turns = MemoryTurnStore(Clock())
        turn = HiddenTurn((), ChatMessage("assistant", ""), (), ("c1",))
        self.successResultOf(turns.saveTurn(turn, "team-a"))
        self.assertIsNone(self.successResultOf(turns.findTurn(["c1"], "team-b")))
        self.assertEqual(self.successResultOf(turns.findTurn(["c1"], "team-a")), turn)


class SealerTests(SynchronousTestCase):
    """
    Hidden turns sealed with AES-GCM, bound to their principal.
    """

    turn = HiddenTurn(
        (ChatMessage("assistant", "", toolCalls=(ToolCall("c0", "calc__add", '{"a":2}'),)),),
        ChatMessage("assistant", "", toolCalls=(ToolCall("c1", "get_weather", "{}"),)),
        (),
        ("c1",),
    )

    def test_roundTrip(self) -> None:
        """
        A sealed turn opens for its principal, on another sealer with the
        same key, and after rotation (the old key second); its text shows
        nothing of the turn.
        """
        sealed = Sealer.fromSecrets([SEALING_KEY]).seal(self.turn, "team-a")
        self.assertTrue(sealed.startswith(SEALED_PREFIX))
        self.assertNotIn("calc__add", sealed)
        self.assertEqual(Sealer.fromSecrets([SEALING_KEY]).open(sealed, "team-a"), self.turn)
        rotated = Sealer.fromSecrets(["a-brand-new-sealing-key-0123456789abcdef", SEALING_KEY])
        self.assertEqual(rotated.open(sealed, "team-a"), self.turn)

    def test_refused(self) -> None:
        """
        A sealed turn does not open for another principal, with another
        key, or with any byte changed.
        """
        sealer = Sealer.fromSecrets([SEALING_KEY])
        sealed = sealer.seal(self.turn, "team-a")
        self.assertRaises(SealError, sealer.open, sealed, "team-b")
        self.assertRaises(SealError, Sealer.fromSecrets(["x" * 40]).open, sealed, "team-a")
        self.assertRaises(SealError, Sealer.fromSecrets([]).open, sealed, "team-a")
        middle = len(sealed) // 2
        flipped = "A" if sealed[middle] != "A" else "B"
        tampered = sealed[:middle] + flipped + sealed[middle + 1 :]
        self.assertRaises(SealError, sealer.open, tampered, "team-a")
        self.assertRaises(SealError, sealer.open, SEALED_PREFIX + "!!", "team-a")


class CrossKeyTests(TestCase):
    """
    With C{--api-key KA --api-key KB}, B reaches nothing A stored: every
    way in is the 404 of an unknown id, and A still can.
    """

    async def test_storedResponse(self) -> None:
        """
        B cannot read A's response, list its input items, continue it,
        reference its items or delete it (the SDK's 404s); the raw 404
        bodies are those of an unknown id, byte for byte but for the id;
        A can do all of it afterwards.
        """
        server, _ = await _tenants(self)
        server.upstream.script(Reply(content="For A only."))
        a, b = _sdk(server, KA), _sdk(server, KB)
        created = await inThread(a.responses.create, model="plain", input="secret question")
        itemId = created.output[0].id
        with self.assertRaises(openai.NotFoundError):
            await inThread(b.responses.retrieve, created.id)
        with self.assertRaises(openai.NotFoundError):
            await inThread(b.responses.input_items.list, created.id)
        with self.assertRaises(openai.NotFoundError):
            await inThread(
                b.responses.create, model="plain", input="go on", previous_response_id=created.id
            )
        with self.assertRaises(openai.NotFoundError):
            await inThread(
                b.responses.create,
                model="plain",
                input=[{"type": "item_reference", "id": itemId}],
            )
        with self.assertRaises(openai.NotFoundError):
            await inThread(b.responses.delete, created.id)
        unknown = "resp_" + "0" * 32
        for suffix in ("", "/input_items"):
            for method in ("GET", "DELETE") if not suffix else ("GET",):
                theirs = await _raw(self, server, method, f"/v1/responses/{created.id}{suffix}", KB)
                none = await _raw(self, server, method, f"/v1/responses/{unknown}{suffix}", KB)
                self.assertEqual(theirs[0], 404)
                self.assertEqual(
                    theirs[1].replace(created.id.encode(), b"ID"),
                    none[1].replace(unknown.encode(), b"ID"),
                )
        # A still has everything, and only then deletes it.
        self.assertEqual((await inThread(a.responses.retrieve, created.id)).id, created.id)
        items = await inThread(a.responses.input_items.list, created.id)
        self.assertEqual(items.data[0].content[0].text, "secret question")
        server.upstream.script(Reply(content="Continued."), Reply(content="Referenced."))
        later = await inThread(
            a.responses.create, model="plain", input="go on", previous_response_id=created.id
        )
        self.assertEqual(later.output_text, "Continued.")
        referenced = await inThread(
            a.responses.create, model="plain", input=[{"type": "item_reference", "id": itemId}]
        )
        self.assertEqual(referenced.output_text, "Referenced.")
        self.assertEqual(_roles(server, 2), [("assistant", "For A only.")])
        await inThread(a.responses.delete, created.id)

    async def test_hiddenTurn(self) -> None:
        """
        B, sending A's handed-back call id with a result, does not get A's
        hidden turn (the agent's calculator call) restored into its run; A,
        sending the same, does.
        """
        server, _ = await _tenants(self)
        _hybridScript(server.upstream)
        a, b = _sdk(server, KA), _sdk(server, KB)
        first = await inThread(
            a.responses.create, model="hybrid", input="2+3 and Paris?", tools=[WEATHER]
        )
        [call] = [item for item in first.output if item.type == "function_call"]
        replay = [
            {"role": "user", "content": "2+3 and Paris?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": "get_weather",
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ]
        server.upstream.script(Reply(content="B's answer."), Reply(content="A's answer."))
        await inThread(b.responses.create, model="hybrid", input=replay, tools=[WEATHER])
        self.assertEqual(
            _roles(server, 2),
            [("user", "2+3 and Paris?"), ("assistant", ["get_weather"]), ("tool", "sunny")],
        )
        await inThread(a.responses.create, model="hybrid", input=replay, tools=[WEATHER])
        self.assertEqual(
            _roles(server, 3),
            [
                ("user", "2+3 and Paris?"),
                ("assistant", ["calc__add"]),
                ("tool", "5"),
                ("assistant", ["get_weather"]),
                ("tool", "sunny"),
            ],
        )

    async def test_chatCompletionsHiddenTurn(self) -> None:
        """
        On Chat Completions too (no C{store} flag: hidden turns are kept in
        the store, owned by the key), B replaying A's call id does not get
        A's calculator turn; A does.
        """
        server, _ = await _tenants(self)
        _hybridScript(server.upstream)
        tool = {
            "type": "function",
            "function": {k: v for k, v in WEATHER.items() if k != "type"},
        }
        question = {"role": "user", "content": "2+3 and Paris?"}
        first = await inThread(
            _sdk(server, KA).chat.completions.create,
            model="hybrid",
            messages=[question],
            tools=[tool],
        )
        message = first.choices[0].message
        [call] = message.tool_calls
        replay = [
            question,
            message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ]
        server.upstream.script(Reply(content="B."), Reply(content="A."))
        for key in (KB, KA):
            await inThread(
                _sdk(server, key).chat.completions.create,
                model="hybrid",
                messages=replay,
                tools=[tool],
            )
        self.assertEqual([role for role, _ in _roles(server, 2)], ["user", "assistant", "tool"])
        self.assertEqual(_roles(server, 3)[1:3], [("assistant", ["calc__add"]), ("tool", "5")])

    async def test_messagesHiddenTurn(self) -> None:
        """
        On the Messages API (the C{anthropic} SDK), B replaying A's
        C{tool_use} id does not get A's calculator turn; A does.
        """
        import anthropic

        server, _ = await _tenants(self)
        _hybridScript(server.upstream)
        tool = {
            "name": "get_weather",
            "description": "The weather in a city",
            "input_schema": WEATHER["parameters"],
        }
        question = {"role": "user", "content": "2+3 and Paris?"}

        def client(key: str) -> anthropic.Anthropic:
            base = server.baseUrl.removesuffix("/v1")
            return anthropic.Anthropic(base_url=base, api_key=key, max_retries=0, timeout=20)

        first = await inThread(
            client(KA).messages.create,
            model="hybrid",
            max_tokens=100,
            messages=[question],
            tools=[tool],
        )
        [use] = [block for block in first.content if block.type == "tool_use"]
        replay = [
            question,
            {"role": "assistant", "content": [use.model_dump(exclude_none=True)]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}],
            },
        ]
        server.upstream.script(Reply(content="B."), Reply(content="A."))
        for key in (KB, KA):
            await inThread(
                client(key).messages.create,
                model="hybrid",
                max_tokens=100,
                messages=replay,
                tools=[tool],
            )
        self.assertNotIn(("assistant", ["calc__add"]), _roles(server, 2))
        self.assertEqual(_roles(server, 3)[1:3], [("assistant", ["calc__add"]), ("tool", "5")])

    async def test_deleteRemovesEverything(self) -> None:
        """
        DELETE of a stored hybrid response leaves no row of it in the
        SQLite file: not the response, not its items, not the hidden turn
        of the call it handed back.
        """
        server, path = await _tenants(self)
        _hybridScript(server.upstream)
        a = _sdk(server, KA)
        first = await inThread(
            a.responses.create, model="hybrid", input="2+3 and Paris?", tools=[WEATHER]
        )
        [call] = [item for item in first.output if item.type == "function_call"]
        namespaces = {ns for ns, _ in _sqliteRows(path)}
        self.assertEqual(namespaces, {"responses", "response_items", "turns"})
        self.assertTrue(any(key.endswith("/" + call.call_id) for _, key in _sqliteRows(path)))
        await inThread(a.responses.delete, first.id)
        self.assertEqual(_sqliteRows(path), [])


class NamedKeyTests(TestCase):
    """
    Named keys from the configuration: agents per key, hashed keys.
    """

    async def _server(self) -> LiveServer:
        keys = APIKeys()
        server, _ = await _tenants(
            self,
            keys,
            extraConfig={
                "keys": {
                    "team-a": {"key": KA},
                    "team-b": {
                        "keyHash": "sha256:" + hashlib.sha256(KB.encode()).hexdigest(),
                        "agents": ["plain"],
                    },
                }
            },
        )
        keys.replace(APIKeys.fromKeys([], server.runtime.config.keys.values()))
        return server

    async def test_agentsPerKey(self) -> None:
        """
        A key allowed only C{plain} (given by its hash) gets for C{hybrid}
        the 404 of a model that does not exist, on every API, and does not
        see it in C{/v1/models} (OpenAI's and Anthropic's lists); the key
        allowed everything sees and runs both.
        """
        server = await self._server()
        a, b = _sdk(server, KA), _sdk(server, KB)
        self.assertEqual(
            [m.id for m in await inThread(lambda: list(a.models.list()))], ["hybrid", "plain"]
        )
        self.assertEqual([m.id for m in await inThread(lambda: list(b.models.list()))], ["plain"])
        status, body = await _raw(self, server, "GET", "/v1/models", KB)
        self.assertNotIn(b"hybrid", body)
        anthropicList = await _http(self).get(
            server.baseUrl + "/models",
            headers={"x-api-key": KB, "anthropic-version": "2023-06-01"},
        )
        self.assertEqual([m["id"] for m in (await anthropicList.json())["data"]], ["plain"])
        for path, body_ in (
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
            ("/v1/responses", {"input": "x"}),
            ("/v1/messages", {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
        ):
            hidden = await _raw(self, server, "POST", path, KB, {"model": "hybrid", **body_})
            missing = await _raw(self, server, "POST", path, KB, {"model": "nosuch", **body_})
            self.assertEqual(hidden[0], 404, path)
            self.assertEqual(
                hidden[1].replace(b"hybrid", b"M"), missing[1].replace(b"nosuch", b"M")
            )
        for path in ("/v1/models/hybrid",):
            self.assertEqual((await _raw(self, server, "GET", path, KB))[0], 404)
        self.assertEqual(server.upstream.requests, [])
        server.upstream.script(Reply(content="ok"))
        answer = await inThread(b.responses.create, model="plain", input="x")
        self.assertEqual(answer.output_text, "ok")


class SealedTurnTests(TestCase):
    """
    C{store: false} hybrid runs: the hidden turn travels sealed in the
    response, nothing is kept on the server.
    """

    async def _first(self, server: LiveServer, key: str = KA) -> tuple[list[Any], Any]:
        _hybridScript(server.upstream)
        first = await inThread(
            _sdk(server, key).responses.create,
            model="hybrid",
            input="2+3 and Paris?",
            tools=[WEATHER],
            store=False,
            include=INCLUDE,
        )
        [call] = [item for item in first.output if item.type == "function_call"]
        history = [
            {"role": "user", "content": "2+3 and Paris?"},
            *(item.model_dump(exclude_none=True) for item in first.output),
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ]
        return history, first

    async def test_continued(self) -> None:
        """
        The response carries a reasoning item with C{encrypted_content}
        before the call; sent back, it restores the agent's calculator turn
        for the model; and the SQLite store has no row at any point.
        """
        server, path = await _tenants(self, extraConfig={"sealingKeys": [SEALING_KEY]})
        history, first = await self._first(server)
        sealed = [i for i in first.output if i.type == "reasoning" and i.encrypted_content]
        self.assertEqual(len(sealed), 1)
        self.assertNotIn("calc__add", sealed[0].encrypted_content)
        self.assertEqual(_sqliteRows(path), [])
        answer = await inThread(
            _sdk(server, KA).responses.create,
            model="hybrid",
            input=history,
            tools=[WEATHER],
            store=False,
            include=INCLUDE,
        )
        self.assertEqual(answer.output_text, "5, and sunny.")
        self.assertEqual(
            _roles(server, 2),
            [
                ("user", "2+3 and Paris?"),
                ("assistant", ["calc__add"]),
                ("tool", "5"),
                ("assistant", ["get_weather"]),
                ("tool", "sunny"),
            ],
        )
        self.assertEqual(_sqliteRows(path), [])

    async def test_tamperedOrForeign(self) -> None:
        """
        A sealed item with one character changed, or sent with another
        key, is a 400 naming the item (no silent loss of the turn, and no
        upstream call).
        """
        server, _ = await _tenants(self, extraConfig={"sealingKeys": [SEALING_KEY]})
        history, _ = await self._first(server)
        index = next(
            i for i, item in enumerate(history) if item.get("encrypted_content") is not None
        )
        text = history[index]["encrypted_content"]
        middle = len(text) // 2
        tampered = [dict(item) for item in history]
        tampered[index]["encrypted_content"] = (
            text[:middle] + ("A" if text[middle] != "A" else "B") + text[middle + 1 :]
        )
        for key, items in ((KA, tampered), (KB, history)):
            with self.assertRaises(openai.BadRequestError) as caught:
                await inThread(
                    _sdk(server, key).responses.create,
                    model="hybrid",
                    input=items,
                    tools=[WEATHER],
                    store=False,
                    include=INCLUDE,
                )
            error = caught.exception.body
            assert isinstance(error, dict)
            self.assertEqual(error["code"], "invalid_encrypted_content")
            self.assertEqual(error["param"], f"input[{index}].encrypted_content")
        self.assertEqual(len(server.upstream.requests), 2)

    async def test_includeRequired(self) -> None:
        """
        A C{store: false} request that could hand calls back from an agent
        with tools of its own, without C{include:
        ["reasoning.encrypted_content"]}, is refused before the run with a
        400 naming both fixes; with C{store: true} it runs.
        """
        server, path = await _tenants(self)
        with self.assertRaises(openai.BadRequestError) as caught:
            await inThread(
                _sdk(server, KA).responses.create,
                model="hybrid",
                input="2+3 and Paris?",
                tools=[WEATHER],
                store=False,
            )
        error = caught.exception.body
        assert isinstance(error, dict)
        self.assertEqual((error["code"], error["param"]), ("encrypted_content_required", "include"))
        self.assertIn("reasoning.encrypted_content", error["message"])
        self.assertIn("'store': true", error["message"])
        self.assertEqual(server.upstream.requests, [])
        self.assertEqual(_sqliteRows(path), [])


class ProcessTests(TestCase):
    """
    Real server processes: keys reloaded on SIGHUP; a sealed turn opened
    by another process with the same sealing key.
    """

    async def _project(self, config: dict[str, Any]) -> str:
        from ai_agent.testing import startFakeUpstream

        running = await startFakeUpstream(reactor)
        self.addCleanup(running.stop)
        self.upstream = running.upstream
        folder = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(folder, "agents"))
        providers = {"fake": {"type": "openai", "baseUrl": running.baseUrl}}
        self._write(folder, {"providers": providers, "mcpServers": {"calc": calcEntry()}, **config})
        with open(os.path.join(folder, "agents", "hybrid.ai"), "w") as f:
            f.write(HYBRID)
        return folder

    def _write(self, folder: str, config: dict[str, Any]) -> None:
        with open(os.path.join(folder, ".ai-agent.json"), "w") as f:
            json.dump(config, f)

    async def _serve(self, folder: str, *extra: str) -> tuple[Child, str]:
        port = freePort()
        child = spawn(
            self,
            [*command("ai-agent"), "--agent", "agents", "--openai-completions", str(port), *extra],
            folder,
        )
        await child.waitFor(b"  models: ")
        return child, f"http://127.0.0.1:{port}"

    async def test_keysReloaded(self) -> None:
        """
        SIGHUP serves the configuration's new keys: a key added works, a
        key removed is refused with a 401, and no key reaches the log.
        """
        folder = await self._project({"keys": {"team-a": {"key": KA}}})
        child, base = await self._serve(folder, "--store", "none")
        http = _http(self)

        async def status(key: str) -> int:
            response = await http.get(
                base + "/v1/models", headers={"Authorization": f"Bearer {key}"}
            )
            await response.content()
            return int(response.code)

        self.assertEqual((await status(KA), await status(KB)), (200, 401))
        config = json.load(open(os.path.join(folder, ".ai-agent.json")))
        config["keys"] = {"team-b": {"key": KB}}
        self._write(folder, config)
        child.send("HUP")
        await child.waitFor(b"reload: 1 client API keys")
        self.assertEqual((await status(KA), await status(KB)), (401, 200))
        child.send("TERM")
        await ended(child)
        self.assertNotIn(KA.encode(), child.output)
        self.assertNotIn(KB.encode(), child.output)

    async def test_sealedAcrossProcesses(self) -> None:
        """
        A C{store: false} hybrid run on one process, continued on another
        with the same sealing key, gets its hidden turn back; neither
        process's SQLite store holds a row; a third process with its own
        random key refuses the item with a 400 instead of losing the turn.
        """
        folder = await self._project({"sealingKeys": [SEALING_KEY]})
        stores = [os.path.join(folder, f"store{n}.sqlite3") for n in (1, 2)]
        one, baseOne = await self._serve(folder, "--store", stores[0])
        two, baseTwo = await self._serve(folder, "--store", stores[1])
        _hybridScript(self.upstream)
        first = await inThread(
            openai.OpenAI(base_url=baseOne + "/v1", api_key="x", max_retries=0).responses.create,
            model="hybrid",
            input="2+3 and Paris?",
            tools=[WEATHER],
            store=False,
            include=INCLUDE,
        )
        [call] = [item for item in first.output if item.type == "function_call"]
        history = [
            {"role": "user", "content": "2+3 and Paris?"},
            *(item.model_dump(exclude_none=True) for item in first.output),
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ]
        answer = await inThread(
            openai.OpenAI(base_url=baseTwo + "/v1", api_key="x", max_retries=0).responses.create,
            model="hybrid",
            input=history,
            tools=[WEATHER],
            store=False,
            include=INCLUDE,
        )
        self.assertEqual(answer.output_text, "5, and sunny.")
        seen = [m["role"] for m in self.upstream.requests[2].body["messages"]]
        self.assertEqual(seen[1:], ["user", "assistant", "tool", "assistant", "tool"])
        self.assertEqual(
            self.upstream.requests[2].body["messages"][2]["tool_calls"][0]["function"]["name"],
            "calc__add",
        )
        for path in stores:
            self.assertEqual(_sqliteRows(path), [])
        config = json.load(open(os.path.join(folder, ".ai-agent.json")))
        del config["sealingKeys"]
        self._write(folder, config)
        three, baseThree = await self._serve(folder, "--store", "none")
        with self.assertRaises(openai.BadRequestError) as caught:
            await inThread(
                openai.OpenAI(
                    base_url=baseThree + "/v1", api_key="x", max_retries=0
                ).responses.create,
                model="hybrid",
                input=history,
                tools=[WEATHER],
                store=False,
                include=INCLUDE,
            )
        error = caught.exception.body
        assert isinstance(error, dict)
        self.assertEqual(error["code"], "invalid_encrypted_content")
        for child in (one, two, three):
            child.send("TERM")
            await ended(child)


class CodexSealedTurnTests(TestCase):
    """
    The Codex CLI, which sends C{store: false} with C{include:
    ["reasoning.encrypted_content"]}, against an agent with tools of its
    own: the sealed turn makes the round trip through Codex unmodified.
    """

    def setUp(self) -> None:
        import shutil

        from tests.test_headend_responses import CODEX

        if shutil.which("node") is None:
            raise self.skipTest("node is not installed: the Codex CLI needs Node.js")
        if not os.path.exists(CODEX):
            raise self.skipTest("the Codex CLI is missing: run `npm ci --prefix tests/js` first")

    async def test_hybridToolCall(self) -> None:
        """
        The agent adds with its calculator, then calls Codex's
        C{exec_command}, which Codex runs; Codex's next request carries
        the sealed turn back, so the model sees the calculator's call and
        result before the command's output; the store holds no row.
        """
        from tests._process import run
        from tests.test_headend_responses import CODEX, CODEX_CONFIG

        server, path = await _tenants(
            self, keys=APIKeys(), extraConfig={"sealingKeys": [SEALING_KEY]}
        )
        server.upstream.script(
            Reply(toolCalls=[("calc__add", {"a": 2, "b": 3})]),
            Reply(toolCalls=[("exec_command", {"cmd": "echo probe-ok"})]),
            Reply(content="Done."),
        )
        home = os.path.abspath(self.mktemp())
        os.makedirs(home)
        with open(os.path.join(home, "config.toml"), "w", encoding="utf-8") as f:
            f.write(CODEX_CONFIG.format(model="hybrid", baseUrl=server.baseUrl))
        env = {"PATH": os.environ["PATH"], "HOME": home, "CODEX_HOME": home, "AI_AGENT_KEY": "k"}
        out, err, code = await run(
            [CODEX, "exec", "--skip-git-repo-check", "Add, then run echo"], cwd=home, env=env
        )
        self.assertEqual(code, 0, (out + err).decode("utf-8", "replace"))
        self.assertIn("Done.", out.decode())
        third = server.upstream.requests[2].body["messages"]
        names = [c["function"]["name"] for m in third for c in m.get("tool_calls") or ()]
        self.assertEqual(names, ["calc__add", "exec_command"])
        results = [m["content"] for m in third if m["role"] == "tool"]
        self.assertEqual(results[0], "5")
        self.assertIn("probe-ok", results[1])
        self.assertEqual(_sqliteRows(path), [])

    test_hybridToolCall.timeout = 120  # type: ignore[attr-defined]
