"""
The Responses API (C{/v1/responses}) through a live server, driven by real
clients unmodified: the C{openai} SDK (create, stream, retrieve, delete,
input items, C{previous_response_id} chains, function tools, a hybrid run
with the calc MCP server) and the OpenAI Agents SDK; the store on SQLite
across a restart and on PostgreSQL shared by two servers.
"""

from __future__ import annotations

import json
import os
from typing import Any

import openai
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from ai_agent.events import ClientToolCall, Finished, FinishReason, Usage
from ai_agent.headends.responses import ResponsesEncoder, _dumps, _dumpsAny
from ai_agent.store import StoreStats, makeStore
from ai_agent.testing import Reply
from tests._harness import LiveServer, inThread, startServer
from tests.mcp_servers import calcEntry

MODEL = "agent"

HYBRID = """\
---
description: An agent with its own calculator
models: fake/test-model
tools: [calc]
---
You are the hybrid agent.
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

POSTGRES_URL = os.environ.get("AI_AGENT_TEST_POSTGRES_URL", "")


def _memoryStore() -> Any:
    return makeStore("memory", reactor)


class _CountingStore:
    """
    A run store that records the name of each operation called on it.
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.store, name)
        if not callable(value):
            return value

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return value(*args, **kwargs)

        return counted


async def _server(testCase: TestCase, store: Any = "memory", **kwargs: Any) -> LiveServer:
    return await startServer(
        testCase,
        streamHeadGrace=0.0,
        store=_memoryStore() if store == "memory" else store,
        **kwargs,
    )


def _http(testCase: TestCase) -> HTTPClient:
    """
    A raw HTTP client whose connections close after each response.
    """
    pool = HTTPConnectionPool(reactor, persistent=False)
    testCase.addCleanup(pool.closeCachedConnections)
    return HTTPClient(Agent(reactor, pool=pool))


def _eventTypes(text: str) -> list[str]:
    """
    The C{event:} names of an SSE body, in order.
    """
    return [line.removeprefix("event: ") for line in text.split("\n") if line.startswith("event: ")]


def _seen(server: LiveServer, index: int) -> list[tuple[str, Any]]:
    """
    What the model got in its C{index}th call: (role, content or tool
    call names) of each message.
    """
    return [
        (
            m["role"],
            [c["function"]["name"] for c in m["tool_calls"]]
            if m.get("tool_calls")
            else m.get("content"),
        )
        for m in server.upstream.requests[index].body["messages"]
    ]


class CreateTests(TestCase):
    """
    C{responses.create}, whole and streamed, with the C{openai} SDK.
    """

    async def test_whole(self) -> None:
        """
        A whole response is OpenAI's object: a C{resp_} id, the agent as
        model, one completed C{message} item with the answer as
        C{output_text}, usage with details; the instructions reach the
        model after the agent's prompt.
        """
        server = await _server(self)
        server.upstream.script(Reply(content="Hello there.", usage=(11, 3)))
        response = await inThread(
            server.client().responses.create,
            model=MODEL,
            input="Hi!",
            instructions="Be brief.",
            metadata={"ticket": "42"},
        )
        self.assertTrue(response.id.startswith("resp_"))
        self.assertEqual(response.object, "response")
        self.assertEqual(response.model, MODEL)
        self.assertEqual(response.status, "completed")
        self.assertEqual(response.output_text, "Hello there.")
        [item] = response.output
        self.assertEqual((item.type, item.role, item.status), ("message", "assistant", "completed"))
        self.assertEqual(item.content[0].type, "output_text")
        self.assertEqual(
            (
                response.usage.input_tokens,
                response.usage.output_tokens,
                response.usage.total_tokens,
            ),
            (11, 3, 14),
        )
        self.assertEqual(response.usage.input_tokens_details.cached_tokens, 0)
        self.assertEqual(response.usage.output_tokens_details.reasoning_tokens, 0)
        self.assertEqual(response.instructions, "Be brief.")
        self.assertEqual(response.metadata, {"ticket": "42"})
        seen = _seen(server, 0)
        self.assertEqual(seen[1:], [("system", "Be brief."), ("user", "Hi!")])
        self.assertIn("test agent", seen[0][1])

    async def test_streamed(self) -> None:
        """
        A streamed response: C{response.created} first, then
        C{response.in_progress}, a reasoning item and a message item each
        added, filled and done, then C{response.completed}; sequence
        numbers count from 0 by one; the SDK's final response carries the
        text and the reasoning summary.
        """
        server = await _server(self)
        server.upstream.script(Reply(reasoning="Let me think.", content="Four."))

        def run() -> tuple[list[Any], Any]:
            with server.client().responses.stream(model=MODEL, input="2+2?") as stream:
                events = list(stream)
                return events, stream.get_final_response()

        events, final = await inThread(run)
        types = [e.type for e in events]
        self.assertEqual(
            types[:3], ["response.created", "response.in_progress", "response.output_item.added"]
        )
        self.assertEqual(types[-1], "response.completed")
        self.assertEqual([e.sequence_number for e in events], list(range(len(events))))
        self.assertIn("response.reasoning_summary_text.delta", types)
        self.assertIn("response.content_part.added", types)
        self.assertLess(
            types.index("response.content_part.added"), types.index("response.output_text.delta")
        )
        self.assertEqual(types.count("response.output_item.done"), 2)
        self.assertEqual(final.output_text, "Four.")
        self.assertEqual([item.type for item in final.output], ["reasoning", "message"])
        self.assertEqual(final.output[0].summary[0].text, "Let me think.")
        deltas = [e for e in events if e.type == "response.output_text.delta"]
        self.assertEqual({(e.output_index, e.item_id) for e in deltas}, {(1, final.output[1].id)})

    async def test_rawEvents(self) -> None:
        """
        On the wire, each event is an SSE C{event:} line naming its type,
        then its C{data:}, and the type inside matches.
        """
        server = await _server(self)
        server.upstream.script(Reply(content="Hi."))
        response = await _http(self).post(
            server.baseUrl + "/responses",
            json={"model": MODEL, "input": "hello", "stream": True},
        )
        self.assertEqual(response.code, 200)
        text = (await response.content()).decode()
        blocks = [b for b in text.split("\n\n") if b.strip()]
        for block in blocks:
            eventLine, dataLine = block.split("\n")
            kind = eventLine.removeprefix("event: ")
            self.assertEqual(json.loads(dataLine.removeprefix("data: "))["type"], kind)
        self.assertTrue(blocks[-1].startswith("event: response.completed"))

    async def test_maxTokens(self) -> None:
        """
        An answer cut by the token limit is C{incomplete}, with reason
        C{max_output_tokens}; the limit reaches the model.
        """
        server = await _server(self)
        server.upstream.script(Reply(content="A long", finishReason="length"))
        response = await inThread(
            server.client().responses.create, model=MODEL, input="Tell me", max_output_tokens=5
        )
        self.assertEqual(response.status, "incomplete")
        self.assertEqual(response.incomplete_details.reason, "max_output_tokens")
        body = server.upstream.requests[0].body
        self.assertEqual(body.get("max_completion_tokens", body.get("max_tokens")), 5)

    async def test_structuredOutput(self) -> None:
        """
        C{text.format} of type C{json_schema} reaches the model as its
        response format, with the schema.
        """
        server = await _server(self)
        server.upstream.script(Reply(content='{"n": 4}'))
        schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
        await inThread(
            server.client().responses.create,
            model=MODEL,
            input="2+2 as JSON",
            text={"format": {"type": "json_schema", "name": "sum", "schema": schema}},
        )
        sent = server.upstream.requests[0].body["response_format"]
        self.assertEqual(sent["type"], "json_schema")
        self.assertEqual(sent["json_schema"]["schema"], schema)


class ParseTests(TestCase):
    """
    The SDK's structured output helper.
    """

    async def test_parse(self) -> None:
        """
        C{responses.parse} with a pydantic model: its JSON schema reaches
        the model as a strict C{json_schema} response format, and the SDK
        parses the answer into the model.
        """
        import pydantic

        class Sum(pydantic.BaseModel):
            n: int

        server = await _server(self)
        server.upstream.script(Reply(content='{"n": 4}'))
        parsed = await inThread(
            server.client().responses.parse, model=MODEL, input="2+2", text_format=Sum
        )
        self.assertEqual(parsed.output_parsed, Sum(n=4))
        sent = server.upstream.requests[0].body["response_format"]["json_schema"]
        self.assertEqual((sent["name"], sent["strict"]), ("Sum", True))
        self.assertEqual(sent["schema"]["properties"], {"n": {"title": "N", "type": "integer"}})


class StoreTests(TestCase):
    """
    Stored responses: chains, retrieval, input items, deletion.
    """

    async def test_chain(self) -> None:
        """
        C{previous_response_id} puts the earlier turns (input and output)
        before the new input, over a chain of three; instructions are not
        carried over.
        """
        server = await _server(self)
        server.upstream.script(
            Reply(content="One."), Reply(content="Two."), Reply(content="Three.")
        )
        client = server.client()
        first = await inThread(
            client.responses.create, model=MODEL, input="first", instructions="Old rule."
        )
        second = await inThread(
            client.responses.create, model=MODEL, input="second", previous_response_id=first.id
        )
        third = await inThread(
            client.responses.create, model=MODEL, input="third", previous_response_id=second.id
        )
        self.assertEqual(third.output_text, "Three.")
        self.assertEqual(third.previous_response_id, second.id)
        self.assertEqual(
            _seen(server, 2)[1:],
            [
                ("user", "first"),
                ("assistant", "One."),
                ("user", "second"),
                ("assistant", "Two."),
                ("user", "third"),
            ],
        )

    async def test_longChainInOneStoreCall(self) -> None:
        """
        A chain of 1,000 stored responses is read in one store call (no
        C{get} per link) and reaches the model whole, oldest first; one
        more response makes it a 400 C{chain_too_long}; a link to a response
        that is gone is a 404 naming that response, not the one asked for.
        """
        store = _CountingStore(_memoryStore())
        server = await _server(self, store=store)
        server.upstream.script(*[Reply(content="Fine.") for _ in range(3)])
        client = server.client()
        first = await inThread(client.responses.create, model=MODEL, input="turn 0")
        stored = (await store.get("responses", first.id)).document
        documents = {first.id: stored}
        for n in range(1, 1001):
            document = json.loads(json.dumps(stored))
            document["input"][0]["content"][0]["text"] = f"turn {n}"
            document["previous_response_id"] = f"resp_chain{n - 1}" if n > 1 else first.id
            documents[f"resp_chain{n}"] = document
        await store.putMany("responses", documents)
        store.calls.clear()
        await inThread(
            client.responses.create, model=MODEL, input="next", previous_response_id="resp_chain999"
        )
        self.assertEqual(store.calls.count("getChain"), 1)
        self.assertNotIn("get", store.calls)
        users = [content for role, content in _seen(server, 1) if role == "user"]
        self.assertEqual(users, [f"turn {n}" for n in range(1000)] + ["next"])
        with self.assertRaises(openai.BadRequestError) as tooLong:
            await inThread(
                client.responses.create,
                model=MODEL,
                input="more",
                previous_response_id="resp_chain1000",
            )
        self.assertEqual(tooLong.exception.code, "chain_too_long")
        self.assertEqual(tooLong.exception.body["param"], "previous_response_id")
        await store.delete("responses", "resp_chain500")
        with self.assertRaises(openai.NotFoundError) as broken:
            await inThread(
                client.responses.create,
                model=MODEL,
                input="more",
                previous_response_id="resp_chain999",
            )
        self.assertIn("resp_chain500", broken.exception.message)
        self.assertNotIn("resp_chain999", broken.exception.message)
        self.assertEqual(broken.exception.body["param"], "previous_response_id")

    async def test_retrieveInputItemsDelete(self) -> None:
        """
        A stored response is retrieved as it was answered; its input items
        are listed newest first by default and paged; once deleted, it is
        a 404 and cannot be continued, and the store holds nothing of it
        (nor of its output items).
        """
        store = _memoryStore()
        server = await _server(self, store=store)
        server.upstream.script(Reply(content="Noted."))
        client = server.client()
        created = await inThread(
            client.responses.create,
            model=MODEL,
            input=[
                {"role": "developer", "content": "Be kind."},
                {"role": "user", "content": "a"},
                {"role": "user", "content": [{"type": "input_text", "text": "b"}]},
            ],
        )
        again = await inThread(client.responses.retrieve, created.id)
        self.assertEqual(again.model_dump(), created.model_dump())
        page = await inThread(client.responses.input_items.list, created.id, limit=2)
        self.assertEqual([i.content[0].text for i in page.data], ["b", "a"])
        self.assertTrue(page.has_more)
        everything = await inThread(
            lambda: list(client.responses.input_items.list(created.id, order="asc", limit=1))
        )
        self.assertEqual([i.role for i in everything], ["developer", "user", "user"])
        self.assertEqual((await store.stats("response_items")).entries, 1)
        deleted = await inThread(client.responses.with_raw_response.delete, created.id)
        self.assertEqual(deleted.status_code, 200)
        self.assertEqual(
            json.loads(deleted.text), {"id": created.id, "object": "response", "deleted": True}
        )
        # Gone from the store, output items too, not only hidden from GET.
        self.assertEqual(await store.stats(), StoreStats(0, 0))
        with self.assertRaises(openai.NotFoundError):
            await inThread(client.responses.retrieve, created.id)
        with self.assertRaises(openai.NotFoundError):
            await inThread(client.responses.delete, created.id)
        with self.assertRaises(openai.NotFoundError) as caught:
            await inThread(
                client.responses.create, model=MODEL, input="x", previous_response_id=created.id
            )
        self.assertIn(created.id, caught.exception.message)

    async def test_storeFalse(self) -> None:
        """
        C{store: false} stores nothing: the response cannot be retrieved.
        """
        server = await _server(self)
        server.upstream.script(Reply(content="Gone."))
        client = server.client()
        created = await inThread(client.responses.create, model=MODEL, input="x", store=False)
        self.assertEqual(created.output_text, "Gone.")
        with self.assertRaises(openai.NotFoundError):
            await inThread(client.responses.retrieve, created.id)

    async def test_itemReference(self) -> None:
        """
        An C{item_reference} is resolved to the stored output item it
        names; an unknown one is a 404 naming it.
        """
        server = await _server(self)
        server.upstream.script(Reply(content="Paris."), Reply(content="Yes."))
        client = server.client()
        first = await inThread(client.responses.create, model=MODEL, input="Capital of France?")
        await inThread(
            client.responses.create,
            model=MODEL,
            input=[
                {"role": "user", "content": "Capital of France?"},
                {"type": "item_reference", "id": first.output[0].id},
                {"role": "user", "content": "Sure?"},
            ],
        )
        self.assertEqual(
            _seen(server, 1)[1:],
            [("user", "Capital of France?"), ("assistant", "Paris."), ("user", "Sure?")],
        )
        with self.assertRaises(openai.NotFoundError) as caught:
            await inThread(
                client.responses.create,
                model=MODEL,
                input=[{"type": "item_reference", "id": "msg_nope"}],
            )
        self.assertIn("msg_nope", caught.exception.message)
        self.assertEqual(caught.exception.body["param"], "input[0].id")

    async def test_noStore(self) -> None:
        """
        Without a store (C{--store none}) a response is still answered, but
        C{previous_response_id} is a 400 saying the store is off.
        """
        server = await _server(self, store=None)
        server.upstream.script(Reply(content="Fine."))
        client = server.client()
        created = await inThread(client.responses.create, model=MODEL, input="x")
        self.assertEqual(created.output_text, "Fine.")
        with self.assertRaises(openai.BadRequestError) as caught:
            await inThread(
                client.responses.create, model=MODEL, input="y", previous_response_id=created.id
            )
        self.assertIn("--store none", caught.exception.message)

    async def test_sqliteSurvivesRestart(self) -> None:
        """
        On SQLite, a response stored by one server is retrieved and
        continued by the next one started on the same file.
        """
        path = os.path.abspath(self.mktemp())
        store = makeStore(path, reactor)
        server = await _server(self, store=store)
        server.upstream.script(Reply(content="Remembered."))
        created = await inThread(server.client().responses.create, model=MODEL, input="keep me")
        await server.port.stopListening()
        await store.close()
        later = await _server(self, store=makeStore(path, reactor))
        later.upstream.script(Reply(content="Still here."))
        again = await inThread(later.client().responses.retrieve, created.id)
        self.assertEqual(again.output_text, "Remembered.")
        await inThread(
            later.client().responses.create,
            model=MODEL,
            input="and now?",
            previous_response_id=created.id,
        )
        self.assertEqual(
            _seen(later, 0)[1:],
            [("user", "keep me"), ("assistant", "Remembered."), ("user", "and now?")],
        )

    async def test_postgresSharedByTwoServers(self) -> None:
        """
        Two servers on one PostgreSQL database: a response made on one is
        continued on the other.
        """
        if not POSTGRES_URL:
            self.skipTest("AI_AGENT_TEST_POSTGRES_URL is not set: no PostgreSQL server to test")
        one = await _server(self, store=makeStore(POSTGRES_URL, reactor))
        two = await _server(self, store=makeStore(POSTGRES_URL, reactor))
        one.upstream.script(Reply(content="From one."))
        two.upstream.script(Reply(content="From two."))
        created = await inThread(one.client().responses.create, model=MODEL, input="hello")
        answer = await inThread(
            two.client().responses.create,
            model=MODEL,
            input="continue",
            previous_response_id=created.id,
        )
        self.assertEqual(answer.output_text, "From two.")
        self.assertEqual(
            _seen(two, 0)[1:],
            [("user", "hello"), ("assistant", "From one."), ("user", "continue")],
        )

    async def readsItsOwnWritesAcross(self, location: str) -> None:
        """
        Two servers, each with its own handle on the run store at
        C{location} (two instances): requests made on the first at once
        (their writes queue up and are committed together), streamed and
        not, are each read back on the second (a GET, then a continuation
        with C{previous_response_id}) as soon as its client has the answer.
        """
        count = 8
        one = await _server(self, store=makeStore(location, reactor))
        two = await _server(self, store=makeStore(location, reactor))
        one.upstream.script(*(Reply(content=f"Answer {n}.") for n in range(count)))
        two.upstream.script(*(Reply(content="Next.") for _ in range(count)))
        first, second = one.client(), two.client()

        def ask(n: int) -> tuple[str, str]:
            if n % 2:
                created = first.responses.create(model=MODEL, input=f"question {n}")
                return created.id, created.output_text
            with first.responses.create(model=MODEL, input=f"question {n}", stream=True) as events:
                for event in events:
                    if event.type == "response.completed":
                        return event.response.id, event.response.output_text
            raise AssertionError("no response.completed event")

        def trip(n: int) -> tuple[str, str, str]:
            responseId, text = ask(n)
            fetched = second.responses.retrieve(responseId)
            continued = second.responses.create(
                model=MODEL, input="and?", previous_response_id=responseId
            )
            return text, fetched.output_text, continued.output_text

        trips = await gatherResults([inThread(trip, n) for n in range(count)])
        self.assertEqual(
            sorted(text for text, _, _ in trips), [f"Answer {n}." for n in range(count)]
        )
        for text, fetched, continued in trips:
            self.assertEqual(fetched, text)
            self.assertEqual(continued, "Next.")

    async def test_readYourOwnWriteAcrossSQLite(self) -> None:
        """
        Read-your-own-write across two servers sharing one SQLite file
        (see L{readsItsOwnWritesAcross}).
        """
        await self.readsItsOwnWritesAcross(os.path.abspath(self.mktemp()))

    async def test_readYourOwnWriteAcrossPostgres(self) -> None:
        """
        Read-your-own-write across two servers sharing one PostgreSQL
        database (see L{readsItsOwnWritesAcross}).
        """
        if not POSTGRES_URL:
            self.skipTest("AI_AGENT_TEST_POSTGRES_URL is not set: no PostgreSQL server to test")
        await self.readsItsOwnWritesAcross(POSTGRES_URL)


class ToolTests(TestCase):
    """
    Function tools as client tools, alone and beside the agent's own.
    """

    async def test_functionCallAndOutput(self) -> None:
        """
        A client tool call comes back as a C{function_call} item whose
        C{fc_} id differs from its C{call_id}; the client's
        C{function_call_output}, sent with C{previous_response_id}, reaches
        the model as the tool's result, and the answer follows.
        """
        server = await _server(self)
        server.upstream.script(
            Reply(toolCalls=[("get_weather", {"city": "Paris"})]),
            Reply(content="Sunny in Paris."),
        )
        client = server.client()
        first = await inThread(
            client.responses.create, model=MODEL, input="Weather in Paris?", tools=[WEATHER]
        )
        [call] = first.output
        self.assertEqual(call.type, "function_call")
        self.assertTrue(call.id.startswith("fc_"))
        self.assertNotEqual(call.id, call.call_id)
        self.assertEqual(
            (call.name, json.loads(call.arguments)), ("get_weather", {"city": "Paris"})
        )
        offered = server.upstream.requests[0].body["tools"]
        self.assertEqual(offered[0]["function"]["name"], "get_weather")
        second = await inThread(
            client.responses.create,
            model=MODEL,
            previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
            tools=[WEATHER],
        )
        self.assertEqual(second.output_text, "Sunny in Paris.")
        self.assertEqual(
            _seen(server, 1)[1:],
            [("user", "Weather in Paris?"), ("assistant", ["get_weather"]), ("tool", "sunny")],
        )

    async def test_hybridStreamed(self) -> None:
        """
        The agent's own MCP call shows as reasoning summary progress; the
        client's call streams as a C{function_call} item (arguments delta,
        done with the name); the continuation's model sees both results.
        """
        server = await startServer(
            self,
            agents={f"{MODEL}.ai": HYBRID},
            mcpServers={"calc": calcEntry()},
            streamHeadGrace=0.0,
            store=_memoryStore(),
        )
        server.upstream.script(
            Reply(toolCalls=[("calc__add", {"a": 2, "b": 3})]),
            Reply(toolCalls=[("get_weather", {"city": "Paris"})]),
            Reply(content="5, and sunny."),
        )
        client = server.client()

        def run() -> tuple[list[Any], Any]:
            with client.responses.stream(
                model=MODEL, input="2+3, and the weather in Paris?", tools=[WEATHER]
            ) as stream:
                return list(stream), stream.get_final_response()

        events, final = await inThread(run)
        self.assertEqual([item.type for item in final.output], ["reasoning", "function_call"])
        self.assertIn("calling calc__add", final.output[0].summary[0].text)
        done = [e for e in events if e.type == "response.function_call_arguments.done"]
        self.assertEqual([(e.name, e.output_index) for e in done], [("get_weather", 1)])
        call = final.output[1]
        answer = await inThread(
            client.responses.create,
            model=MODEL,
            previous_response_id=final.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
            tools=[WEATHER],
        )
        self.assertEqual(answer.output_text, "5, and sunny.")
        self.assertEqual(
            _seen(server, 2)[1:],
            [
                ("user", "2+3, and the weather in Paris?"),
                ("assistant", ["calc__add"]),
                ("tool", "5"),
                ("assistant", ["get_weather"]),
                ("tool", "sunny"),
            ],
        )


#: A group of function tools as Codex sends its MCP servers' tools: the
#: members' own names, the group's name beside them.
CALC_NAMESPACE = {
    "type": "namespace",
    "name": "mcp__calc",
    "description": "Tools of the calc MCP server.",
    "tools": [
        {
            "type": "function",
            "name": "add",
            "description": "Add two numbers",
            "strict": False,
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            },
        },
        {"type": "function", "name": "get_weather", "parameters": WEATHER["parameters"]},
    ],
}


class NamespaceToolTests(TestCase):
    """
    C{namespace} tools (Codex's groups of tools: its MCP servers', its
    sub-agents'): each member is a client tool, handed back by its own name
    with its namespace beside it.
    """

    async def test_handedBackWithNamespace(self) -> None:
        """
        The model is offered each member under its namespace's name joined
        to its own (C{mcp__calc__add}), beside a plain function of the
        same bare name; its call comes back as a C{function_call} whose
        C{name} is the member's own and whose C{namespace} is the group's,
        as Codex routes it.  Codex's continuation (the whole history in
        C{input}, with C{store} off: the call item with its C{namespace},
        then its output) reaches the model as that call and its result
        under the joined name.
        """
        server = await _server(self)
        server.upstream.script(
            Reply(toolCalls=[("mcp__calc__add", {"a": 2, "b": 3})]),
            Reply(content="It is 5."),
        )
        client = server.client()
        first = await inThread(
            client.responses.create,
            model=MODEL,
            input="2+3?",
            tools=[WEATHER, CALC_NAMESPACE],
            store=False,
        )
        [call] = first.output
        self.assertEqual(
            (call.type, call.name, call.namespace, json.loads(call.arguments)),
            ("function_call", "add", "mcp__calc", {"a": 2, "b": 3}),
        )
        offered = [t["function"]["name"] for t in server.upstream.requests[0].body["tools"]]
        self.assertEqual(offered, ["get_weather", "mcp__calc__add", "mcp__calc__get_weather"])
        second = await inThread(
            client.responses.create,
            model=MODEL,
            input=[
                {"role": "user", "content": "2+3?"},
                {
                    "type": "function_call",
                    "call_id": call.call_id,
                    "name": "add",
                    "namespace": "mcp__calc",
                    "arguments": call.arguments,
                },
                {"type": "function_call_output", "call_id": call.call_id, "output": "5"},
            ],
            tools=[WEATHER, CALC_NAMESPACE],
            store=False,
        )
        self.assertEqual(second.output_text, "It is 5.")
        self.assertEqual(
            _seen(server, 1)[1:],
            [("user", "2+3?"), ("assistant", ["mcp__calc__add"]), ("tool", "5")],
        )
        [assistant] = [
            m for m in server.upstream.requests[1].body["messages"] if m.get("tool_calls")
        ]
        self.assertEqual(assistant["tool_calls"][0]["id"], call.call_id)

    async def test_streamedItemDone(self) -> None:
        """
        Streamed, the call's C{response.output_item.added} and
        C{response.output_item.done} items (Codex reads the latter), the
        arguments' done event and C{response.completed}'s output all carry
        the member's own name and its C{namespace}; a plain function's
        call carries no C{namespace}.
        """
        server = await _server(self)
        server.upstream.script(
            Reply(
                toolCalls=[
                    ("mcp__calc__add", {"a": 1, "b": 1}),
                    ("get_weather", {"city": "Oslo"}),
                ]
            )
        )
        response = await _http(self).post(
            server.baseUrl + "/responses",
            json={
                "model": MODEL,
                "input": "go",
                "stream": True,
                "tools": [WEATHER, CALC_NAMESPACE],
            },
        )
        text = (await response.content()).decode()
        events = [
            json.loads(line.removeprefix("data: "))
            for line in text.split("\n")
            if line.startswith("data: ")
        ]

        def shape(item: dict[str, Any]) -> tuple[Any, ...]:
            return (item["type"], item["name"], item.get("namespace", "-"))

        expected = [("function_call", "add", "mcp__calc"), ("function_call", "get_weather", "-")]
        for kind in ("response.output_item.added", "response.output_item.done"):
            items = [e["item"] for e in events if e["type"] == kind]
            self.assertEqual([shape(item) for item in items], expected, kind)
        done = [e["name"] for e in events if e["type"] == "response.function_call_arguments.done"]
        self.assertEqual(done, ["add", "get_weather"])
        [completed] = [e for e in events if e["type"] == "response.completed"]
        self.assertEqual([shape(i) for i in completed["response"]["output"]], expected)

    async def test_chainedByPreviousResponse(self) -> None:
        """
        A namespaced call continued with C{previous_response_id} (the
        stored output item keeps its C{namespace}) reaches the model under
        the joined name, paired with its result.
        """
        server = await _server(self)
        server.upstream.script(
            Reply(toolCalls=[("mcp__calc__add", {"a": 2, "b": 2})]), Reply(content="4.")
        )
        client = server.client()
        first = await inThread(
            client.responses.create, model=MODEL, input="2+2?", tools=[CALC_NAMESPACE]
        )
        second = await inThread(
            client.responses.create,
            model=MODEL,
            previous_response_id=first.id,
            input=[
                {"type": "function_call_output", "call_id": first.output[0].call_id, "output": "4"}
            ],
            tools=[CALC_NAMESPACE],
        )
        self.assertEqual(second.output_text, "4.")
        self.assertEqual(
            _seen(server, 1)[1:],
            [("user", "2+2?"), ("assistant", ["mcp__calc__add"]), ("tool", "4")],
        )

    async def test_hybrid(self) -> None:
        """
        In one turn the agent's own MCP tool runs on the server and a
        namespace's function is handed back; the continuation's model sees
        the agent's hidden call and result, then the client's call under
        its joined name with the client's output.
        """
        server = await startServer(
            self,
            agents={f"{MODEL}.ai": HYBRID},
            mcpServers={"calc": calcEntry()},
            streamHeadGrace=0.0,
            store=_memoryStore(),
        )
        server.upstream.script(
            Reply(
                toolCalls=[
                    ("calc__add", {"a": 2, "b": 3}),
                    ("mcp__calc__get_weather", {"city": "Paris"}),
                ]
            ),
            Reply(content="5, and sunny."),
        )
        client = server.client()
        first = await inThread(
            client.responses.create, model=MODEL, input="2+3, weather?", tools=[CALC_NAMESPACE]
        )
        [call] = [item for item in first.output if item.type == "function_call"]
        self.assertEqual((call.name, call.namespace), ("get_weather", "mcp__calc"))
        answer = await inThread(
            client.responses.create,
            model=MODEL,
            previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
            tools=[CALC_NAMESPACE],
        )
        self.assertEqual(answer.output_text, "5, and sunny.")
        self.assertEqual(
            _seen(server, 1)[1:],
            [
                ("user", "2+3, weather?"),
                ("assistant", ["calc__add", "mcp__calc__get_weather"]),
                ("tool", "5"),
                ("tool", "sunny"),
            ],
        )

    async def test_toolChoice(self) -> None:
        """
        A C{tool_choice} naming a namespace's function forces that
        function, under the name the model was shown.
        """
        server = await _server(self)
        server.upstream.script(Reply(content="ok"))
        await inThread(
            server.client().responses.create,
            model=MODEL,
            input="x",
            tools=[CALC_NAMESPACE],
            tool_choice={"type": "function", "namespace": "mcp__calc", "name": "add"},
        )
        self.assertEqual(
            server.upstream.requests[0].body["tool_choice"],
            {"type": "function", "function": {"name": "mcp__calc__add"}},
        )

    async def test_clashWithAgentTool(self) -> None:
        """
        A namespace member whose joined name is one of the agent's own
        tools (its calc MCP server's C{calc__add}) is refused as a plain
        client tool of that name is: a 400 C{tool_name_conflict} naming
        the member.
        """
        server = await startServer(
            self,
            agents={f"{MODEL}.ai": HYBRID},
            mcpServers={"calc": calcEntry()},
            streamHeadGrace=0.0,
            store=_memoryStore(),
        )
        response = await _http(self).post(
            server.baseUrl + "/responses",
            json={"model": MODEL, "input": "x", "tools": [{**CALC_NAMESPACE, "name": "calc"}]},
        )
        envelope = json.loads(await response.content())
        self.assertEqual(
            (response.code, envelope["error"]["code"], envelope["error"]["param"]),
            (400, "tool_name_conflict", "tools[0].tools[0].name"),
        )
        self.assertEqual(server.upstream.requests, [])


class HostedToolTests(TestCase):
    """
    Hosted tools (OpenAI runs them; this server cannot): left out by
    default, refused with C{--hosted-tools refuse}.
    """

    async def test_ignoredByDefault(self) -> None:
        """
        A request with Codex's C{web_search} beside a function tool runs:
        the model is offered the function only, the response names the
        hosted tools left out in C{x-ai-agent-ignored-tools}, and the log
        says so in one line naming the request.
        """
        from tests.test_retry import LogCapture

        logs = LogCapture(self, "ai_agent.headends.responses.ResponsesHeadend")
        server = await _server(self)
        server.upstream.script(Reply(content="No search here."))
        response = await _http(self).post(
            server.baseUrl + "/responses",
            json={
                "model": MODEL,
                "input": "x",
                "tools": [
                    {"type": "web_search", "external_web_access": False},
                    WEATHER,
                    {"type": "file_search", "vector_store_ids": ["vs_1"]},
                ],
            },
        )
        body = json.loads(await response.content())
        self.assertEqual(response.code, 200, body)
        self.assertEqual(
            response.headers.getRawHeaders(b"x-ai-agent-ignored-tools"),
            [b"web_search, file_search"],
        )
        [upstream] = server.upstream.requests
        self.assertEqual([t["function"]["name"] for t in upstream.body["tools"]], ["get_weather"])
        lines = [e for e in logs.events if "hosted tools" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1)
        self.assertEqual(
            (lines[0]["requestId"], lines[0]["tools"]), (body["id"], "web_search, file_search")
        )
        self.assertEqual(lines[0]["log_level"].name, "info")

    async def test_noHeaderWithout(self) -> None:
        """
        A request without hosted tools has no C{x-ai-agent-ignored-tools}.
        """
        server = await _server(self)
        server.upstream.script(Reply(content="ok"))
        response = await _http(self).post(
            server.baseUrl + "/responses",
            json={"model": MODEL, "input": "x", "tools": [WEATHER]},
        )
        await response.content()
        self.assertEqual(response.code, 200)
        self.assertFalse(response.headers.hasHeader(b"x-ai-agent-ignored-tools"))

    async def test_refused(self) -> None:
        """
        With C{--hosted-tools refuse}, a hosted tool is a 400 naming its
        place and its type, before any upstream call.
        """
        from ai_agent.tap import apiMounts

        server = await _server(
            self, mounts=lambda runtime, pool, r: apiMounts(runtime, pool, r, "refuse")
        )
        with self.assertRaises(openai.BadRequestError) as caught:
            await inThread(
                server.client().responses.create,
                model=MODEL,
                input="x",
                tools=[WEATHER, {"type": "web_search_preview"}],
            )
        error = caught.exception
        self.assertEqual((error.param, error.code), ("tools[1].type", "unsupported_tool_type"))
        self.assertIn("web_search_preview", error.message)
        self.assertEqual(server.upstream.requests, [])

    def test_option(self) -> None:
        """
        C{--hosted-tools} takes C{ignore} (the default) or C{refuse};
        anything else is a usage error naming both.
        """
        from twisted.python import usage

        from ai_agent.tap import Options

        def parse(*extra: str) -> Any:
            options = Options()
            agent = os.path.join(os.path.dirname(__file__), "..", "agents")
            options.parseOptions(["--agent", agent, "--openai-completions", "0", *extra])
            return options["hosted-tools"]

        self.assertEqual(parse(), "ignore")
        self.assertEqual(parse("--hosted-tools", "refuse"), "refuse")
        with self.assertRaises(usage.UsageError) as caught:
            parse("--hosted-tools", "drop")
        self.assertIn("ignore, refuse", str(caught.exception))


class ErrorTests(TestCase):
    """
    Bad requests get OpenAI's envelope and the right status.
    """

    async def _post(self, server: LiveServer, body: Any) -> tuple[int, Any]:
        response = await _http(self).post(server.baseUrl + "/responses", json=body)
        return response.code, json.loads(await response.content())

    async def test_badRequests(self) -> None:
        """
        A tool the client runs in another shape than a function call
        (C{custom}), background runs, a missing input, a wrong type and
        an unknown model are refused with a 4xx naming the field; an
        unknown previous response is a 404 naming it.
        """
        server = await _server(self)
        cases = [
            (
                {
                    "model": MODEL,
                    "input": "x",
                    "tools": [{"type": "custom", "name": "apply_patch"}],
                },
                400,
                "tools[0].type",
            ),
            ({"model": MODEL, "input": "x", "background": True}, 400, "background"),
            ({"model": MODEL}, 400, "input"),
            ({"model": MODEL, "input": 3}, 400, "input"),
            ({"model": MODEL, "input": [{"type": "input_image"}]}, 400, "input[0].type"),
            ({"model": MODEL, "input": "x", "temperature": "hot"}, 400, "temperature"),
            ({"model": "nobody", "input": "x"}, 404, "model"),
            (
                {"model": MODEL, "input": "x", "previous_response_id": "resp_missing"},
                404,
                "previous_response_id",
            ),
        ]
        for body, status, param in cases:
            code, envelope = await self._post(server, body)
            self.assertEqual((code, envelope["error"]["param"]), (status, param), body)
            self.assertIn(envelope["error"]["type"], ("invalid_request_error",), body)
        _, envelope = await self._post(server, cases[0][0])
        self.assertIn('"custom"', envelope["error"]["message"])
        _, envelope = await self._post(server, cases[-1][0])
        self.assertIn("resp_missing", envelope["error"]["message"])

    async def test_failedMidStream(self) -> None:
        """
        An upstream failure after the stream began ends it with
        C{response.failed}, carrying the error; the SDK sees no
        C{response.completed}.
        """
        server = await _server(self)
        server.upstream.script(
            Reply(content=["Hel", "lo"], cutAfter=2), Reply(content=["Hel", "lo"], cutAfter=2)
        )
        response = await _http(self).post(
            server.baseUrl + "/responses",
            json={"model": MODEL, "input": "hello", "stream": True},
        )
        text = (await response.content()).decode()
        kinds = _eventTypes(text)
        self.assertEqual(kinds[-1], "response.failed")
        self.assertNotIn("response.completed", kinds)
        last = json.loads(text.strip().split("\n")[-1].removeprefix("data: "))
        self.assertEqual(last["response"]["status"], "failed")
        self.assertTrue(last["response"]["error"]["message"])


class AgentsSDKTests(TestCase):
    """
    The OpenAI Agents SDK's default (Responses) model against the server.
    """

    def setUp(self) -> None:
        try:
            import agents  # noqa: F401
        except ImportError:
            raise self.skipTest("openai-agents is not installed") from None

    def _agent(self, server: LiveServer, tools: list[Any]) -> Any:
        import agents

        agents.set_tracing_disabled(True)
        client = openai.AsyncOpenAI(base_url=server.baseUrl, api_key="any-key", max_retries=0)
        model = agents.OpenAIResponsesModel(model=MODEL, openai_client=client)
        return agents.Agent(name="helper", instructions="Help.", model=model, tools=tools)

    async def test_runWithTool(self) -> None:
        """
        C{Runner.run} with a function tool: the model's call runs the
        tool in the SDK, its result goes back, the final output is the
        model's answer.
        """
        import agents

        calls: list[str] = []

        @agents.function_tool
        def get_weather(city: str) -> str:
            """The weather in a city."""
            calls.append(city)
            return "sunny"

        server = await _server(self)
        server.upstream.script(
            Reply(toolCalls=[("get_weather", {"city": "Paris"})]),
            Reply(content="It is sunny in Paris."),
        )
        agent = self._agent(server, [get_weather])

        def run() -> Any:
            import asyncio

            return asyncio.run(agents.Runner.run(agent, "Weather in Paris?"))

        result = await inThread(run)
        self.assertEqual(result.final_output, "It is sunny in Paris.")
        self.assertEqual(calls, ["Paris"])
        self.assertEqual(_seen(server, 1)[-1], ("tool", "sunny"))

    async def test_streamed(self) -> None:
        """
        C{Runner.run_streamed}: the text deltas arrive as raw response
        events and add up to the final output.
        """
        import agents

        server = await _server(self)
        server.upstream.script(Reply(content="Streaming works."))
        agent = self._agent(server, [])

        def run() -> tuple[str, Any]:
            import asyncio

            async def go() -> tuple[str, Any]:
                result = agents.Runner.run_streamed(agent, "Say it.")
                text = []
                async for event in result.stream_events():
                    if event.type == "raw_response_event" and (
                        event.data.type == "response.output_text.delta"
                    ):
                        text.append(event.data.delta)
                return "".join(text), result.final_output

            return asyncio.run(go())

        text, final = await inThread(run)
        self.assertEqual((text, final), ("Streaming works.", "Streaming works."))


class StoreLimitTests(TestCase):
    """
    A response larger than the store accepts fails cleanly.
    """

    async def test_tooLarge(self) -> None:
        """
        Whole: a 413 with code C{store_document_too_large}; streamed: the
        stream ends with C{response.failed} carrying that code, after the
        open message item was closed, and no C{response.completed}.
        """
        server = await _server(self, store=makeStore("memory", reactor, maxDocumentSize=300))
        server.upstream.script(Reply(content="x " * 200), Reply(content="x " * 200))
        with self.assertRaises(openai.APIStatusError) as caught:
            await inThread(server.client().responses.create, model=MODEL, input="big")
        self.assertEqual(caught.exception.status_code, 413)
        self.assertEqual(caught.exception.code, "store_document_too_large")
        response = await _http(self).post(
            server.baseUrl + "/responses",
            json={"model": MODEL, "input": "big", "stream": True},
        )
        text = (await response.content()).decode()
        kinds = _eventTypes(text)
        self.assertEqual(kinds[-2:], ["response.output_item.done", "response.failed"])
        self.assertNotIn("response.completed", kinds)
        last = json.loads(text.strip().split("\n")[-1].removeprefix("data: "))
        self.assertEqual(last["response"]["error"]["code"], "store_document_too_large")


class ParserTests(TestCase):
    """
    The request parser on its own: what it accepts and how it maps items.
    """

    def test_items(self) -> None:
        """
        Messages, function calls and their outputs become the conversation
        the agent sees: consecutive calls join the assistant message before
        them, outputs are tool messages, reasoning items are left out.
        """
        from ai_agent.headends.responses import conversation, parseResponsesRequest

        parsed = parseResponsesRequest(
            json.dumps(
                {
                    "model": "m",
                    "input": [
                        {"role": "user", "content": "hi"},
                        {"type": "reasoning", "summary": []},
                        {"role": "assistant", "content": [{"type": "output_text", "text": "a"}]},
                        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
                        {"type": "function_call_output", "call_id": "c1", "output": "r1"},
                        {"type": "function_call_output", "call_id": "c2", "output": "r2"},
                    ],
                }
            ).encode()
        )
        messages = conversation(parsed.items)
        self.assertEqual(
            [(m.role, m.content, [c.id for c in m.toolCalls], m.toolCallId) for m in messages],
            [
                ("user", "hi", [], None),
                ("assistant", "a", ["c1", "c2"], None),
                ("tool", "r1", [], "c1"),
                ("tool", "r2", [], "c2"),
            ],
        )
        self.assertTrue(all(item["id"] for item in parsed.items))

    def test_refusals(self) -> None:
        """
        Each malformed field is a 400 naming it.
        """
        from ai_agent.errors import AgentError
        from ai_agent.headends.responses import parseResponsesRequest

        cases = {
            "tool_choice.name": {
                "input": "x",
                "tool_choice": {"type": "function", "name": "nope"},
            },
            "tools[0].name": {"input": "x", "tools": [{"type": "function", "name": "bad name"}]},
            "input[0].call_id": {"input": [{"type": "function_call_output", "output": "r"}]},
            "input[0].role": {"input": [{"role": "tool", "content": "x"}]},
            "text.format.type": {"input": "x", "text": {"format": {"type": "xml"}}},
            "max_output_tokens": {"input": "x", "max_output_tokens": 0},
            "metadata": {"input": "x", "metadata": [1]},
            "conversation": {"input": "x", "conversation": "conv_1"},
        }
        for param, body in cases.items():
            with self.assertRaises(AgentError) as caught:
                parseResponsesRequest(json.dumps({"model": "m", **body}).encode())
            self.assertEqual((caught.exception.status, caught.exception.param), (400, param))

    def test_namespaceRefusals(self) -> None:
        """
        A malformed C{namespace} tool (no name, no member, a member not a
        function or badly named, a joined name taken by a plain function),
        a tool the client runs in another shape (C{local_shell}), a
        malformed C{namespace} on an input call and a C{tool_choice} naming
        a namespace's function wrongly are each a 400 naming the field.
        """
        from ai_agent.errors import AgentError
        from ai_agent.headends.responses import parseResponsesRequest

        cases = {
            "tools[0].name": {"input": "x", "tools": [{"type": "namespace", "tools": [WEATHER]}]},
            "tools[0].tools": {"input": "x", "tools": [{"type": "namespace", "name": "ns"}]},
            "tools[1].tools[0].type": {
                "input": "x",
                "tools": [WEATHER, {"type": "namespace", "name": "ns", "tools": [{"type": "x"}]}],
            },
            "tools[0].tools[1].name": {
                "input": "x",
                "tools": [{**CALC_NAMESPACE, "tools": [WEATHER, {**WEATHER, "name": "a b"}]}],
            },
            "tools[0].description": {"input": "x", "tools": [{**CALC_NAMESPACE, "description": 1}]},
            "tools[1].tools[0].name": {
                "input": "x",
                "tools": [
                    {**WEATHER, "name": "ns__get_weather"},
                    {"type": "namespace", "name": "ns", "tools": [WEATHER]},
                ],
            },
            "tools[0].type": {"input": "x", "tools": [{"type": "local_shell"}]},
            "input[0].namespace": {
                "input": [
                    {
                        "type": "function_call",
                        "call_id": "c",
                        "name": "f",
                        "arguments": "{}",
                        "namespace": "a.b",
                    }
                ]
            },
            "tool_choice.namespace": {
                "input": "x",
                "tools": [CALC_NAMESPACE],
                "tool_choice": {"type": "function", "namespace": 3, "name": "add"},
            },
            "tool_choice.name": {
                "input": "x",
                "tools": [CALC_NAMESPACE],
                "tool_choice": {"type": "function", "namespace": "mcp__calc", "name": "sub"},
            },
        }
        for param, body in cases.items():
            with self.assertRaises(AgentError) as caught:
                parseResponsesRequest(json.dumps({"model": "m", **body}).encode())
            self.assertEqual((caught.exception.status, caught.exception.param), (400, param))

    def test_longNamespacedNames(self) -> None:
        """
        A namespace and member name too long to join within 64 characters
        are shown to the model under a 64-character name that still tells
        two such members apart, and the same pair always maps to the same
        name (a continuation finds its call).
        """
        from ai_agent.headends.responses import namespacedName

        first = namespacedName("n" * 40, "a" * 40)
        second = namespacedName("n" * 40, "a" * 39 + "b")
        self.assertEqual((len(first), len(second)), (64, 64))
        self.assertNotEqual(first, second)
        self.assertEqual(first, namespacedName("n" * 40, "a" * 40))
        self.assertEqual(namespacedName("mcp__calc", "add"), "mcp__calc__add")


#: The Codex CLI installed by C{npm ci --prefix tests/js}.
CODEX = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "js", "node_modules", ".bin", "codex"
)

#: A Codex home pointing Codex at the server on the Responses API: the
#: provider and nothing else, so Codex sends its default tools (its
#: multi-agent tools as a C{namespace} tool, the hosted C{web_search}).
CODEX_CONFIG = """\
model = "{model}"
model_provider = "aiagent"

[model_providers.aiagent]
name = "ai-agent"
base_url = "{baseUrl}"
wire_api = "responses"
env_key = "AI_AGENT_KEY"
"""


class CodexTests(TestCase):
    """
    The Codex CLI (C{codex exec}) on a custom provider pointed at the
    server.
    """

    def setUp(self) -> None:
        import shutil

        if shutil.which("node") is None:
            raise self.skipTest("node is not installed: the Codex CLI needs Node.js")
        if not os.path.exists(CODEX):
            raise self.skipTest("the Codex CLI is missing: run `npm ci --prefix tests/js` first")

    async def test_exec(self) -> None:
        """
        C{codex exec} with its defaults (only the provider configured)
        sends its prompt through C{/v1/responses} (its instructions and
        the prompt reach the model, its own tools are offered as client
        tools, the members of its multi-agent namespace among them, its
        hosted web search left out) and prints the agent's answer.
        """

        server = await _server(self)
        server.upstream.script(Reply(content="Hello from the agent."))
        out, err, code = await self.codexExec(server.baseUrl, "Say hi")
        output = (out + err).decode("utf-8", "replace")
        self.assertEqual(code, 0, output)
        self.assertIn("Hello from the agent.", out.decode())
        [request] = server.upstream.requests
        messages = request.body["messages"]
        self.assertEqual(messages[-1], {"role": "user", "content": "Say hi"})
        self.assertIn("Codex", json.dumps(messages))
        offered = {tool["function"]["name"] for tool in request.body.get("tools", ())}
        self.assertIn("exec_command", offered)
        # Its multi-agent namespace's members, by their joined names; not
        # its hosted web search.
        self.assertIn("multi_agent_v1__spawn_agent", offered)
        self.assertNotIn("web_search", json.dumps(request.body.get("tools")))

    # Codex starts in a second or so; a hung one fails the test instead of the run.
    test_exec.timeout = 120  # type: ignore[attr-defined]

    async def codexExec(self, baseUrl: str, prompt: str) -> tuple[bytes, bytes, int]:
        """
        Run C{codex exec PROMPT} against C{baseUrl} with a configuration of
        its own (in a fresh home); its stdout, stderr and exit code.
        """
        from tests._process import run

        home = os.path.abspath(self.mktemp())
        os.makedirs(home)
        with open(os.path.join(home, "config.toml"), "w", encoding="utf-8") as f:
            f.write(CODEX_CONFIG.format(model=MODEL, baseUrl=baseUrl))
        env = {"PATH": os.environ["PATH"], "HOME": home, "CODEX_HOME": home, "AI_AGENT_KEY": "k"}
        return await run([CODEX, "exec", "--skip-git-repo-check", prompt], cwd=home, env=env)

    async def test_toolCall(self) -> None:
        """
        A call of one of Codex's own tools (C{exec_command}) is handed
        back to Codex, which runs the command and sends its output as a
        C{function_call_output}: the model's next call sees it as the
        result of that call id, and Codex prints the answer that follows.
        """

        server = await _server(self)
        server.upstream.script(
            Reply(toolCalls=[("exec_command", {"cmd": "echo probe-ok"})]),
            Reply(content="Done."),
        )
        out, err, code = await self.codexExec(server.baseUrl, "Run echo")
        output = (out + err).decode("utf-8", "replace")
        self.assertEqual(code, 0, output)
        self.assertIn("Done.", out.decode())
        first, second = server.upstream.requests
        [call] = [m for m in second.body["messages"] if m.get("tool_calls")][0]["tool_calls"]
        self.assertEqual(call["function"]["name"], "exec_command")
        [result] = [m for m in second.body["messages"] if m["role"] == "tool"]
        self.assertEqual(result["tool_call_id"], call["id"])
        self.assertIn("probe-ok", result["content"])

    test_toolCall.timeout = 120  # type: ignore[attr-defined]

    async def test_namespacedCall(self) -> None:
        """
        A call of a member of Codex's C{multi_agent_v1} namespace is handed
        back so that Codex runs that tool (its output is the tool's own
        answer about the unknown agent, not Codex's C{unsupported call}),
        and the output reaches the model as that call's result.
        """
        server = await _server(self)
        server.upstream.script(
            Reply(toolCalls=[("multi_agent_v1__close_agent", {"target": "no-such-agent"})]),
            Reply(content="Closed."),
        )
        out, err, code = await self.codexExec(server.baseUrl, "Close it")
        output = (out + err).decode("utf-8", "replace")
        self.assertEqual(code, 0, output)
        self.assertIn("Closed.", out.decode())
        first, second = server.upstream.requests
        [call] = [m for m in second.body["messages"] if m.get("tool_calls")][0]["tool_calls"]
        self.assertEqual(call["function"]["name"], "multi_agent_v1__close_agent")
        [result] = [m for m in second.body["messages"] if m["role"] == "tool"]
        self.assertEqual(result["tool_call_id"], call["id"])
        self.assertNotIn("unsupported call", result["content"])
        self.assertIn("no-such-agent", result["content"])

    test_namespacedCall.timeout = 120  # type: ignore[attr-defined]


class EncoderTests(TestCase):
    """
    L{ResponsesEncoder} on its own.
    """

    def _events(self, frames: bytes) -> list[dict[str, Any]]:
        return [
            json.loads(block.split("\ndata: ", 1)[1])
            for block in frames.decode().split("\n\n")
            if block.strip()
        ]

    def test_openAfterFirstFrame(self) -> None:
        """
        When the stream's head is sent only with the first item's frames
        (made before L{open} is called), C{response.created} still comes
        first and sequence numbers still count up from 0 in the order sent.
        """
        from ai_agent.headends.responses import ResponsesEncoder

        encoder = ResponsesEncoder({"id": "resp_1"})
        first = encoder.content("Hi")
        frames = encoder.open() + first + encoder.content(" there")
        events = self._events(frames)
        self.assertEqual(events[0]["type"], "response.created")
        self.assertEqual(events[0]["response"]["output"], [])
        self.assertEqual([e["sequence_number"] for e in events], list(range(len(events))))

    def test_failedCodes(self) -> None:
        """
        A rate limit or an overload fails the response with OpenAI's codes
        for them; another error keeps its own code.
        """
        from ai_agent.errors import AgentError, ErrorKind
        from ai_agent.headends.responses import ResponsesEncoder

        for kind, code, expected in [
            (ErrorKind.RATE_LIMIT, "rate_limited", "rate_limit_exceeded"),
            (ErrorKind.OVERLOADED, "queue_full", "server_is_overloaded"),
            (ErrorKind.SERVER, "upstream_unreachable", "upstream_unreachable"),
        ]:
            encoder = ResponsesEncoder({"id": "resp_1"})
            events = self._events(encoder.error(AgentError("no", 502, kind, code)))
            self.assertEqual(events[-1]["type"], "response.failed")
            self.assertEqual(events[-1]["response"]["error"]["code"], expected)


class DisconnectTests(TestCase):
    """
    The same cancellation as Chat Completions.
    """

    async def test_streamDisconnectClosesUpstream(self) -> None:
        """
        A streaming client that goes away mid-run gets its upstream call
        closed and its pool slot freed; nothing is stored for the run.
        """
        from tests._hostile import waitUntil
        from tests.test_headend_openai import _post, _raw

        store = _memoryStore()
        server = await _server(self, store=store, concurrency=1)
        server.upstream.script(Reply(content=["a", "b"], hold=True))
        client = await _raw(
            server.port.getHost().port,
            _post({"model": MODEL, "input": "hello", "stream": True}, "/v1/responses"),
        )
        # The run holds its slot and its upstream call (silent: the head
        # waits for the first event or the grace).
        await server.upstream.waitForRequests(1)
        self.assertEqual(server.pool.activeRuns, 1)
        client.transport.loseConnection()
        await server.upstream.waitForDisconnects(1)
        await waitUntil(lambda: server.pool.activeRuns == 0)
        self.assertEqual((await store.stats("responses")).entries, 0)


class ParserPropertyTests(TestCase):
    """
    L{parseResponsesRequest} on generated, nearly right bodies.
    """

    def test_nearlyRightRequests(self) -> None:
        """
        Requests with the known fields (namespace tools and namespaced
        calls included), any of them of the wrong type or
        holding odd text (lone surrogates included), parse into items the
        conversation is made of, or are a 400 in OpenAI's envelope;
        nothing else is raised.
        """
        from hypothesis import HealthCheck, given, settings
        from hypothesis import strategies as st

        from ai_agent.errors import AgentError
        from ai_agent.headends._openai_errors import OPENAI_ERRORS
        from ai_agent.headends.responses import conversation, parseResponsesRequest
        from tests.test_hostile_input import _encodings, _json, _text

        part = st.fixed_dictionaries(
            {"type": st.sampled_from(["input_text", "output_text", "input_image"]) | _json},
            optional={"text": _text | _json},
        )
        item = st.fixed_dictionaries(
            {},
            optional={
                "type": st.sampled_from(
                    ["message", "function_call", "function_call_output", "reasoning", "x"]
                )
                | _json,
                "role": st.sampled_from(["user", "assistant", "developer", "tool"]) | _json,
                "content": _text | st.lists(part, max_size=2) | _json,
                "call_id": _text | _json,
                "name": _text | _json,
                "arguments": _text | _json,
                "output": _text | st.lists(part, max_size=2) | _json,
                "id": _text | _json,
                "namespace": _text | st.just("mcp__calc") | _json,
            },
        )
        request = st.fixed_dictionaries(
            {"model": st.just("agent") | _json, "input": _text | st.lists(item, max_size=3)},
            optional={
                "instructions": _text | _json,
                "tools": st.lists(
                    st.fixed_dictionaries(
                        {
                            "type": st.sampled_from(["function", "namespace", "web_search"])
                            | _json,
                            "name": _text | _json,
                        },
                        optional={"parameters": _json, "tools": st.just([WEATHER]) | _json},
                    ),
                    max_size=2,
                )
                | _json,
                "tool_choice": _json,
                "text": st.fixed_dictionaries({"format": _json}) | _json,
                "metadata": _json,
                "max_output_tokens": _json,
                "store": _json,
                "background": _json,
            },
        )

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(request)
        def check(value: dict[str, Any]) -> None:
            for body in _encodings(value):
                try:
                    parsed = parseResponsesRequest(body)
                except AgentError as error:
                    self.assertEqual(error.status, 400, error.message)
                    self.assertIn("error", json.loads(OPENAI_ERRORS.body(error)))
                    continue
                for message in conversation(parsed.items):
                    message.content.encode("utf-8")

        check()


class MountTests(TestCase):
    """
    How the server serves the Responses API.
    """

    async def test_mountedForReload(self) -> None:
        """
        C{apiMounts} mounts the Responses API at C{/v1/responses} with
        OpenAI's error envelope, naming its headend (over the runtime's
        registry, runner and store) so that a reload gives it new agents.
        """
        from ai_agent.headends._openai_errors import OPENAI_ERRORS
        from ai_agent.headends.responses import ResponsesHeadend
        from ai_agent.tap import apiMounts

        server = await _server(self)
        mounts = apiMounts(server.runtime, server.pool, reactor)
        [mount] = [m for m in mounts if m.prefix == b"/v1/responses"]
        self.assertIs(mount.errors, OPENAI_ERRORS)
        self.assertIsInstance(mount.headend, ResponsesHeadend)
        self.assertIs(mount.headend.registry, server.runtime.registry)
        self.assertIs(mount.headend.runner, server.runtime.runner)
        self.assertIs(mount.headend.store, server.runtime.store)


class MetricsTests(TestCase):
    """
    Responses API requests in the server's metrics.
    """

    async def test_counted(self) -> None:
        """
        A Responses request, whole or streamed, is counted under
        C{headend="responses"} with its agent and status; a refused one
        with its 4xx status; chat completions' count is untouched.
        """
        from ai_agent.observe import Metrics, Observability
        from tests.test_observe import metricSeries, metricValue, scrape

        observer = Observability(Metrics(), None, clock=reactor.seconds)
        server = await _server(self, observer=observer)
        server.upstream.script(Reply(content="one"), Reply(content="two"))
        client = server.client()
        await inThread(client.responses.create, model=MODEL, input="hi")

        def streamed() -> list[Any]:
            return list(client.responses.create(model=MODEL, input="hi", stream=True))

        await inThread(streamed)
        with self.assertRaises(openai.BadRequestError):
            await inThread(client.responses.create, model=MODEL, input="hi", background=True)
        status, text = await scrape(self, server.baseUrl[: -len("/v1")] + "/metrics")
        self.assertEqual(status, 200)
        requests = "ai_agent_requests_total"
        self.assertEqual(
            metricValue(text, requests, agent=MODEL, headend="responses", status="200"), 2
        )
        self.assertEqual(metricValue(text, requests, headend="responses", status="400"), 1)
        self.assertEqual(metricSeries(text, requests, headend="openai"), [])


#: Any JSON-ish value: floats (tiny, huge, not finite), integers past 64
#: bits, lone surrogates, tuples.
_ANY_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(st.characters() | st.sampled_from("\ud800\x00\u2028")),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=12,
)


class EncoderFastPathTests(SynchronousTestCase):
    """
    L{ResponsesEncoder}'s fast paths write what its plain ones do.
    """

    @settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_ANY_JSON)
    def test_anyValueSameBytes(self, value: Any) -> None:
        """
        Events and bodies (orjson unless the value holds a float) are
        written with the bytes C{json} gives them, for any value.
        """
        self.assertEqual(_dumpsAny(value), _dumps(value))

    def test_deltaSameBytes(self) -> None:
        """
        A delta event written with orjson has the bytes of the same event
        written with C{json}, for any text (a lone surrogate included).
        """
        for text in ("", "pong", 'é "q" \\ \n\t\x00\x7f\u2028😀', "\ud800"):
            fast = ResponsesEncoder({})._delta("d", item_id="i", delta=text, logprobs=[])
            plain = ResponsesEncoder({})._event("d", item_id="i", delta=text, logprobs=[])
            self.assertEqual(fast, plain)

    def test_wholeAnswerMakesNoEvents(self) -> None:
        """
        An encoder for a whole answer makes no event, and its response
        object is that of one that does (but for the items' random ids).
        """
        finals = []
        for frames in (True, False):
            encoder = ResponsesEncoder({"id": "resp_1"}, frames=frames)
            made = [
                encoder.open(),
                encoder.reasoning("thinking"),
                encoder.content("pong"),
                encoder.toolCall(ClientToolCall(0, "call_1", "f", '{"a":1}')),
            ]
            self.assertEqual([bool(m) for m in made], [frames] * 4)
            final = json.loads(encoder.body(Finished(FinishReason.TOOL_CALLS, Usage(1, 2))))
            for item in final["output"]:
                item["id"] = "-"
            finals.append(final)
        self.assertEqual(finals[0], finals[1])
