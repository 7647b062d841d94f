"""
The OpenAPI document: well-formed, in agreement with the request parser,
and describing what the real server answers.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from ai_agent.headends._request import AgentError, parseChatRequest
from ai_agent.headends.anthropic import (
    AnthropicHeadend,
    parseCountTokensRequest,
    parseMessagesRequest,
)
from ai_agent.headends.openai import OpenAIHeadend
from ai_agent.headends.openapi import OPENAPI, openapiDocument
from ai_agent.headends.responses import ResponsesHeadend
from tests._harness import startServer


def _validator(ref: str) -> jsonschema.Draft202012Validator:
    """
    A validator for the schema at C{ref} (C{#/components/...}), resolving
    references within the document.
    """
    return jsonschema.Draft202012Validator({"$ref": ref, "components": OPENAPI["components"]})


def _responseValidator(
    path: str, method: str, status: int, mediaType: str
) -> jsonschema.Draft202012Validator:
    """
    A validator for the schema documented for one response.
    """
    response = OPENAPI["paths"][path][method]["responses"][str(status)]
    if "$ref" in response:
        name = response["$ref"].rsplit("/", 1)[1]
        response = OPENAPI["components"]["responses"][name]
    schema = response["content"][mediaType]["schema"]
    return jsonschema.Draft202012Validator({**schema, "components": OPENAPI["components"]})


class DocumentTests(SynchronousTestCase):
    """
    The document's shape.
    """

    def test_schemasAreValid(self) -> None:
        """
        Every component schema is a valid JSON Schema 2020-12 schema, and
        every C{$ref} in the document points at something.
        """
        for schema in OPENAPI["components"]["schemas"].values():
            jsonschema.Draft202012Validator.check_schema(schema)
        text = json.dumps(OPENAPI)
        for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
            node: Any = OPENAPI
            for key in ref.removeprefix("#/").split("/"):
                node = node[key]
            self.assertIsInstance(node, dict, ref)

    def test_operations(self) -> None:
        """
        The document describes exactly the routes of the headends' Klein
        apps (the OpenAI one and every mounted API's), read from their
        routers (a route added without documentation, or a documented
        route that is gone, fails here), with a declared path parameter
        for each variable part; the C{/v1} ones take the bearer or
        C{x-api-key} security schemes, the others none.
        """
        routes = set()
        rules = [
            *OpenAIHeadend.app.url_map.iter_rules(),
            *ResponsesHeadend.app.url_map.iter_rules(),
            *AnthropicHeadend.app.url_map.iter_rules(),
        ]
        for rule in rules:
            methods = set(rule.methods or ())
            if "GET" in methods:
                # The router answers HEAD for every GET on its own.
                methods.discard("HEAD")
            path = re.sub(r"<(?:[^:<>]+:)?[^<>]+>", "{}", rule.rule)
            routes |= {(path, method.lower()) for method in methods}
        self.assertGreater(len(routes), 3)
        operations = {
            (path, method): operation
            for path, item in OPENAPI["paths"].items()
            for method, operation in item.items()
        }
        self.assertEqual(
            {(re.sub(r"\{[^}]+\}", "{}", path), method) for path, method in operations},
            routes,
        )
        for (path, _), operation in operations.items():
            declared = {
                parameter["name"]
                for parameter in operation.get("parameters", [])
                if parameter["in"] == "path" and parameter["required"]
            }
            self.assertEqual(declared, set(re.findall(r"\{([^}]+)\}", path)), path)
            if path.startswith("/v1/"):
                self.assertEqual(operation["security"], [{"bearerAuth": []}, {"apiKeyHeader": []}])
                self.assertIn("401", operation["responses"])
            else:
                self.assertEqual(operation["security"], [])
        self.assertEqual(OPENAPI["openapi"], "3.1.0")

    def test_documentCopies(self) -> None:
        """
        L{openapiDocument} returns a copy with the server URL and the model
        examples filled in, leaving L{OPENAPI} unchanged.
        """
        document = openapiDocument("http://127.0.0.1:1", models=["chat"])
        self.assertEqual(document["servers"], [{"url": "http://127.0.0.1:1"}])
        model = document["components"]["schemas"]["ChatCompletionRequest"]["properties"]["model"]
        self.assertEqual(model["examples"], ["chat"])
        self.assertNotIn("servers", OPENAPI)
        self.assertNotIn(
            "examples",
            OPENAPI["components"]["schemas"]["ChatCompletionRequest"]["properties"]["model"],
        )


class RequestSchemaTests(SynchronousTestCase):
    """
    The request schema and the parser agree on clear cases.
    """

    validator = _validator("#/components/schemas/ChatCompletionRequest")

    def _both(self, body: dict[str, Any]) -> tuple[bool, bool]:
        """
        Whether the schema accepts C{body}, and whether the parser does.
        """
        schemaOk = self.validator.is_valid(body)
        try:
            parseChatRequest(json.dumps(body).encode())
        except AgentError:
            return schemaOk, False
        return schemaOk, True

    def test_agree(self) -> None:
        """
        Bodies both accept, and bodies both refuse.
        """
        user = {"role": "user", "content": "hi"}
        good: list[dict[str, Any]] = [
            {"model": "a", "messages": [user]},
            {"model": "a", "messages": [user], "stream": True, "stream_options": None},
            {
                "model": "a",
                "messages": [
                    {"role": "system", "content": [{"type": "text", "text": "x"}, "y"]},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "{}"}}],
                    },
                    {"role": "tool", "tool_call_id": "1", "content": "ok"},
                    {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
                ],
                "temperature": 2,
                "top_p": 0,
                "n": 1,
                "max_tokens": 1,
                "stop": ["a", "b"],
                "seed": -3,
                "user": "u",
                "tools": [
                    {"type": "function", "function": {"name": "get_time"}},
                    {
                        "function": {
                            "name": "f-2",
                            "description": "d",
                            "parameters": {"type": "object"},
                            "strict": True,
                        }
                    },
                ],
                "tool_choice": {"type": "function", "function": {"name": "f-2"}},
                "parallel_tool_calls": False,
                "anything": {"else": [1]},
            },
        ]
        bad: list[dict[str, Any]] = [
            {"messages": [user]},
            {"model": "", "messages": [user]},
            {"model": "a", "messages": []},
            {"model": "a", "messages": [{"role": "robot", "content": "x"}]},
            {"model": "a", "messages": [{"role": "user"}]},
            {"model": "a", "messages": [{"role": "user", "content": None}]},
            {"model": "a", "messages": [{"role": "tool", "content": "x"}]},
            {"model": "a", "messages": [{"role": "assistant", "tool_calls": []}]},
            {"model": "a", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            {"model": "a", "messages": [user], "n": 2},
            {"model": "a", "messages": [user], "temperature": 3},
            {"model": "a", "messages": [user], "top_p": "1"},
            {"model": "a", "messages": [user], "max_completion_tokens": 0},
            {"model": "a", "messages": [user], "stop": ["a"] * 5},
            {"model": "a", "messages": [user], "stream": "yes"},
            {"model": "a", "messages": [user], "tools": [1]},
            {"model": "a", "messages": [user], "tools": [{}] * 129},
            {"model": "a", "messages": [user], "tools": [{"type": "function"}]},
            {"model": "a", "messages": [user], "tools": [{"function": {"name": "a b"}}]},
            {
                "model": "a",
                "messages": [user],
                "tools": [{"type": "web", "function": {"name": "x"}}],
            },
            {"model": "a", "messages": [user], "tool_choice": "always"},
            {"model": "a", "messages": [user], "tool_choice": {"type": "function"}},
            {"model": "a", "messages": [user], "parallel_tool_calls": "yes"},
        ]
        for body in good:
            self.assertEqual(self._both(body), (True, True), body)
        for body in bad:
            self.assertEqual(self._both(body), (False, False), body)


class ServedTests(TestCase):
    """
    What the real server answers matches the document.
    """

    async def test_responsesMatch(self) -> None:
        """
        Health, models, a completion and errors, as served, validate
        against the schemas documented for their status; C{GET
        /openapi.json} serves the document with the served models as
        examples.
        """
        server = await startServer(self)
        base = f"http://127.0.0.1:{server.port.getHost().port}"
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        client = HTTPClient(Agent(reactor, pool=pool))

        async def check(method: str, path: str, route: str, status: int, body: Any = None) -> Any:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": ["application/json"]} if data is not None else {}
            response = await client.request(method, base + path, data=data, headers=headers)
            answer = json.loads(await treq.content(response))
            self.assertEqual(response.code, status, answer)
            _responseValidator(route, method.lower(), status, "application/json").validate(answer)
            return answer

        user = [{"role": "user", "content": "hi"}]
        await check("GET", "/health", "/health", 200)
        await check("GET", "/v1/models", "/v1/models", 200)
        await check("GET", "/v1/models/agent", "/v1/models/{model}", 200)
        await check("GET", "/v1/models/nope", "/v1/models/{model}", 404)
        chat = "/v1/chat/completions"
        await check("POST", chat, chat, 200, {"model": "agent", "messages": user})
        await check("POST", chat, chat, 400, {"model": "agent"})
        await check("POST", chat, chat, 404, {"model": "nope", "messages": user})
        document = await check("GET", "/openapi.json", "/openapi.json", 200)
        self.assertEqual(document["paths"], OPENAPI["paths"])
        model = document["components"]["schemas"]["ChatCompletionRequest"]["properties"]["model"]
        self.assertEqual(model["examples"], ["agent"])


class AnthropicServedTests(TestCase):
    """
    What the Anthropic routes answer matches the document.
    """

    async def test_responsesMatch(self) -> None:
        """
        A message, a token count, Anthropic's model list and errors (in
        Anthropic's envelope), as served, validate against the schemas
        documented for their status.
        """
        server = await startServer(self)
        base = f"http://127.0.0.1:{server.port.getHost().port}"
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        client = HTTPClient(Agent(reactor, pool=pool))

        async def check(method: str, path: str, status: int, body: Any = None) -> Any:
            data = None if body is None else json.dumps(body).encode()
            headers = {"anthropic-version": ["2023-06-01"]}
            if data is not None:
                headers["Content-Type"] = ["application/json"]
            response = await client.request(method, base + path, data=data, headers=headers)
            answer = json.loads(await treq.content(response))
            self.assertEqual(response.code, status, answer)
            route = re.sub(r"/v1/models/.+", "/v1/models/{model}", path.split("?")[0])
            _responseValidator(route, method.lower(), status, "application/json").validate(answer)
            return answer

        user = [{"role": "user", "content": "hi"}]
        ask = {"model": "agent", "max_tokens": 5, "messages": user}
        await check("POST", "/v1/messages", 200, ask)
        await check("POST", "/v1/messages?beta=true", 400, {"model": "agent", "messages": user})
        await check("POST", "/v1/messages", 404, {**ask, "model": "nope"})
        await check("POST", "/v1/messages/count_tokens?beta=true", 200, ask)
        await check("POST", "/v1/messages/count_tokens", 400, {"model": "agent"})
        listed = await check("GET", "/v1/models", 200)
        self.assertEqual(listed["first_id"], "agent")
        await check("GET", "/v1/models/agent", 200)
        missing = await check("GET", "/v1/models/nope", 404)
        self.assertEqual(missing["error"]["type"], "not_found_error")


class AnthropicSchemaTests(SynchronousTestCase):
    """
    The Anthropic request schemas and the parser agree on clear cases.
    """

    def _both(self, ref: str, parse: Any, body: dict[str, Any]) -> tuple[bool, bool]:
        schemaOk = _validator(ref).is_valid(body)
        try:
            parse(json.dumps(body).encode())
        except AgentError:
            return schemaOk, False
        return schemaOk, True

    def test_agree(self) -> None:
        """
        Bodies both the C{MessagesRequest} schema and the parser accept,
        and bodies both refuse; C{count_tokens} needs no C{max_tokens}.
        """
        user = {"role": "user", "content": "hi"}
        ref = "#/components/schemas/MessagesRequest"
        good: list[dict[str, Any]] = [
            {"model": "a", "max_tokens": 1, "messages": [user]},
            {
                "model": "a",
                "max_tokens": 9,
                "system": [{"type": "text", "text": "s"}],
                "messages": [
                    user,
                    {
                        "role": "assistant",
                        "content": [
                            {"type": "thinking", "thinking": "t", "signature": "x"},
                            {"type": "tool_use", "id": "t1", "name": "f", "input": {}},
                        ],
                    },
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}],
                    },
                    {"role": "system", "content": "note"},
                ],
                "tools": [{"name": "f", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "tool", "name": "f"},
                "stop_sequences": ["x"],
                "temperature": 1,
                "top_k": 3,
                "anything": {"else": 1},
            },
            {
                "model": "a",
                "max_tokens": 9,
                "messages": [user],
                "thinking": {"type": "enabled", "budget_tokens": 1024},
                "output_config": {
                    "effort": "high",
                    "format": {"type": "json_schema", "schema": {"type": "object"}},
                },
            },
            {
                "model": "a",
                "max_tokens": 9,
                "messages": [user],
                "thinking": {"type": "adaptive"},
                "output_format": {"type": "json_schema", "schema": {"type": "object"}},
            },
        ]
        bad: list[dict[str, Any]] = [
            {"model": "a", "messages": [user]},
            {"model": "a", "max_tokens": 0, "messages": [user]},
            {"model": "a", "max_tokens": 1, "messages": []},
            {"model": "a", "max_tokens": 1, "messages": [{"role": "robot", "content": "x"}]},
            {"model": "a", "max_tokens": 1, "messages": [{"role": "user"}]},
            {
                "model": "a",
                "max_tokens": 1,
                "messages": [{"role": "user", "content": [{"type": "image"}]}],
            },
            {"model": "a", "max_tokens": 1, "messages": [user], "temperature": 1.5},
            {"model": "a", "max_tokens": 1, "messages": [user], "tools": [{"name": "a b"}]},
            {
                "model": "a",
                "max_tokens": 1,
                "messages": [user],
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            },
            {"model": "a", "max_tokens": 1, "messages": [user], "tool_choice": {"type": "x"}},
            {"model": "a", "max_tokens": 1, "messages": [user], "thinking": {"type": "on"}},
            {
                "model": "a",
                "max_tokens": 1,
                "messages": [user],
                "thinking": {"type": "enabled", "budget_tokens": 10},
            },
            {
                "model": "a",
                "max_tokens": 1,
                "messages": [user],
                "output_config": {"format": {"type": "json_schema"}},
            },
            {
                "model": "a",
                "max_tokens": 1,
                "messages": [user],
                "output_format": {"type": "text", "schema": {}},
            },
        ]
        for body in good:
            self.assertEqual(self._both(ref, parseMessagesRequest, body), (True, True), body)
        for body in bad:
            self.assertEqual(self._both(ref, parseMessagesRequest, body), (False, False), body)
        counted = {"model": "a", "messages": [user]}
        self.assertEqual(
            self._both("#/components/schemas/CountTokensRequest", parseCountTokensRequest, counted),
            (True, True),
        )
