"""
The request parsers and the published C{/openapi.json} agree: one corpus
of bodies (valid and invalid, every API), each sent through the parser and
through a JSON Schema (Draft 2020-12) validator reading the document the
real server serves; they must agree on accepting or refusing every body.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import jsonschema
import treq
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ai_agent.errors import AgentError
from ai_agent.headends._request import MAX_MESSAGES, ChatCompletionRequest, parseChatRequest
from ai_agent.headends._schema import schemaComponents
from ai_agent.headends.anthropic import (
    CountTokensRequest,
    MessagesRequestBody,
    parseCountTokensRequest,
    parseMessagesRequest,
)
from ai_agent.headends.openapi import OPENAPI
from ai_agent.headends.responses import (
    ResponsesRequestBody,
    parseResponsesRequest,
)
from tests._harness import startServer
from tests.mcp_servers import httpClient

_USER = {"role": "user", "content": "hi"}
_FN = {"type": "function", "function": {"name": "f"}}

#: Chat Completions bodies: (body, accepted).
CHAT: list[tuple[Any, bool]] = [
    ({"model": "a", "messages": [_USER]}, True),
    ({"model": "a", "messages": [_USER], "stream": True}, True),
    ({"model": "a", "messages": [_USER], "stream": True, "stream_options": None}, True),
    ({"model": "a", "messages": [_USER], "stream_options": {"include_usage": True}}, True),
    ({"model": "a", "messages": [{"role": "system", "content": "s"}, _USER]}, True),
    ({"model": "a", "messages": [{"role": "developer", "content": "s"}, _USER]}, True),
    (
        {"model": "a", "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]},
        True,
    ),
    (
        {
            "model": "a",
            "messages": [
                _USER,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "{}"}}],
                },
                {"role": "tool", "tool_call_id": "1", "content": "ok"},
            ],
        },
        True,
    ),
    ({"model": "a", "messages": [_USER], "temperature": 2, "top_p": 0}, True),
    ({"model": "a", "messages": [_USER], "max_tokens": 1, "seed": -3, "user": "u"}, True),
    ({"model": "a", "messages": [_USER], "stop": ["a", "b"]}, True),
    ({"model": "a", "messages": [_USER], "stop": "a"}, True),
    ({"model": "a", "messages": [_USER], "n": 1}, True),
    ({"model": "a", "messages": [_USER], "tools": [_FN], "tool_choice": "auto"}, True),
    ({"model": "a", "messages": [_USER], "tools": [_FN], "tool_choice": "none"}, True),
    (
        {
            "model": "a",
            "messages": [_USER],
            "tools": [_FN],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
        },
        True,
    ),
    ({"model": "a", "messages": [_USER], "parallel_tool_calls": False}, True),
    ({"model": "a", "messages": [_USER], "anything": {"else": [1]}}, True),
    ({"messages": [_USER]}, False),
    ({"model": "", "messages": [_USER]}, False),
    ({"model": 3, "messages": [_USER]}, False),
    ({"model": "a"}, False),
    ({"model": "a", "messages": []}, False),
    ({"model": "a", "messages": [{"role": "robot", "content": "x"}]}, False),
    ({"model": "a", "messages": [{"role": "user"}]}, False),
    ({"model": "a", "messages": [{"role": "user", "content": None}]}, False),
    ({"model": "a", "messages": [{"role": "tool", "content": "x"}]}, False),
    ({"model": "a", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, False),
    ({"model": "a", "messages": [_USER], "n": 2}, False),
    ({"model": "a", "messages": [_USER], "temperature": 3}, False),
    ({"model": "a", "messages": [_USER], "top_p": "1"}, False),
    ({"model": "a", "messages": [_USER], "max_completion_tokens": 0}, False),
    ({"model": "a", "messages": [_USER], "stop": ["a"] * 5}, False),
    ({"model": "a", "messages": [_USER], "stream": "yes"}, False),
    ({"model": "a", "messages": [_USER], "tools": [1]}, False),
    ({"model": "a", "messages": [_USER], "tools": [{"type": "function"}]}, False),
    ({"model": "a", "messages": [_USER], "tools": [{"function": {"name": "a b"}}]}, False),
    ({"model": "a", "messages": [_USER], "tool_choice": "always"}, False),
    ({"model": "a", "messages": [_USER], "parallel_tool_calls": "yes"}, False),
    ([1], False),
]

_IN = {"type": "input_text", "text": "x"}
_OUT = {"type": "output_text", "text": "x", "annotations": []}
_CALL = {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}
_CALL_OUTPUT = {"type": "function_call_output", "call_id": "c", "output": "ok"}
_FUNCTION = {"type": "function", "name": "f", "parameters": {"type": "object"}}
_NAMESPACE = {
    "type": "namespace",
    "name": "mcp__calc",
    "description": "The calc server's tools.",
    "tools": [{**_FUNCTION, "name": "add", "defer_loading": True}, {**_FUNCTION, "name": "sub"}],
}

#: Responses bodies: (body, accepted).
RESPONSES: list[tuple[Any, bool]] = [
    ({"model": "a", "input": "hi"}, True),
    # The shape OpenAI accepts without a type (it was refused by the schema).
    ({"model": "a", "input": [{"role": "user", "content": "x"}]}, True),
    ({"model": "a", "input": [{"type": "message", "role": "user", "content": "x"}]}, True),
    (
        {
            "model": "a",
            "input": [
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "x"}],
                }
            ],
        },
        True,
    ),
    ({"model": "a", "input": [{"role": "developer", "content": "x"}, _USER]}, True),
    ({"model": "a", "input": "hi", "instructions": "be brief"}, True),
    ({"model": "a", "input": "hi", "instructions": None}, True),
    ({"model": "a", "input": "hi", "stream": True}, True),
    ({"model": "a", "input": "hi", "store": False}, True),
    ({"model": "a", "input": "hi", "background": False}, True),
    ({"model": "a", "input": "hi", "temperature": 2, "top_p": 1}, True),
    ({"model": "a", "input": "hi", "max_output_tokens": 1}, True),
    ({"model": "a", "input": "hi", "metadata": {"k": "v"}}, True),
    ({"model": "a", "input": "hi", "user": "u"}, True),
    ({"model": "a", "input": "hi", "tools": [{"type": "function", "name": "f"}]}, True),
    ({"model": "a", "input": "hi", "tools": [{"type": "web_search"}]}, True),
    ({"model": "a", "input": "hi", "parallel_tool_calls": True}, True),
    ({"model": "a", "input": "hi", "conversation": None}, True),
    ({"model": "a", "input": "hi", "reasoning": {"effort": "low"}, "truncation": "auto"}, True),
    ({"input": "hi"}, False),
    ({"model": "", "input": "hi"}, False),
    ({"model": 1, "input": "hi"}, False),
    ({"model": "a"}, False),
    ({"model": "a", "input": 3}, False),
    ({"model": "a", "input": "hi", "background": True}, False),
    # Conversation objects are refused (the schema accepted them).
    ({"model": "a", "input": "hi", "conversation": "c"}, False),
    ({"model": "a", "input": "hi", "conversation": {"id": "c"}}, False),
    ({"model": "a", "input": "hi", "temperature": 2.5}, False),
    ({"model": "a", "input": "hi", "top_p": 1.5}, False),
    ({"model": "a", "input": "hi", "max_output_tokens": 0}, False),
    ({"model": "a", "input": "hi", "stream": "yes"}, False),
    ({"model": "a", "input": "hi", "store": "no"}, False),
    ({"model": "a", "input": "hi", "instructions": 3}, False),
    ({"model": "a", "input": "hi", "previous_response_id": 3}, False),
    ({"model": "a", "input": "hi", "tools": {}}, False),
    ({"model": "a", "input": "hi", "tools": [{"type": "function"}]}, False),
    ({"model": "a", "input": "hi", "tools": [{"type": "function", "name": "a b"}]}, False),
    ({"model": "a", "input": "hi", "metadata": {"k": 1}}, False),
    ({"model": "a", "input": "hi", "user": 3}, False),
    ({"model": "a", "input": [{"role": "robot", "content": "x"}]}, False),
    ({"model": "a", "input": [3]}, False),
    ("hi", False),
    # Items without a type: a message when it has a role, else refused.
    ({"model": "a", "input": [{"role": "assistant", "content": [_OUT]}]}, True),
    ({"model": "a", "input": [{"content": "x"}]}, False),
    ({"model": "a", "input": [{"type": None, "role": "user", "content": "x"}]}, False),
    # Every item type, and unknown ones.
    ({"model": "a", "input": [_CALL, _CALL_OUTPUT]}, True),
    ({"model": "a", "input": [_CALL, {**_CALL_OUTPUT, "output": [_IN]}]}, True),
    ({"model": "a", "input": [{**_CALL, "namespace": "mcp__calc"}, _CALL_OUTPUT]}, True),
    ({"model": "a", "input": [{**_CALL, "namespace": "a.b"}]}, False),
    ({"model": "a", "input": [{"type": "item_reference", "id": "msg_1"}]}, True),
    ({"model": "a", "input": [{"type": "item_reference"}]}, False),
    (
        {"model": "a", "input": [{"type": "reasoning", "summary": [], "encrypted_content": "e"}]},
        True,
    ),
    ({"model": "a", "input": [{"type": "reasoning", "encrypted_content": 3}]}, False),
    ({"model": "a", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, False),
    ({"model": "a", "input": [{"type": "function_call_output", "call_id": "c"}]}, False),
    ({"model": "a", "input": [{"type": "computer_call", "call_id": "c"}]}, False),
    ({"model": "a", "input": [{"type": "x", "role": "user", "content": "x"}]}, False),
    # Content parts: text parts only, each with its text (a refusal's may be
    # its refusal).
    (
        {
            "model": "a",
            "input": [{"role": "user", "content": [_IN, {"type": "text", "text": "y"}]}],
        },
        True,
    ),
    (
        {
            "model": "a",
            "input": [{"role": "assistant", "content": [{"type": "refusal", "refusal": "n"}]}],
        },
        True,
    ),
    (
        {
            "model": "a",
            "input": [{"role": "assistant", "content": [{"type": "refusal", "text": "n"}]}],
        },
        True,
    ),
    ({"model": "a", "input": [{"role": "assistant", "content": [{"type": "refusal"}]}]}, False),
    (
        {
            "model": "a",
            "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}],
        },
        False,
    ),
    ({"model": "a", "input": [{"role": "user", "content": [{"text": "x"}]}]}, False),
    ({"model": "a", "input": [{"role": "user", "content": [{"type": "input_text"}]}]}, False),
    ({"model": "a", "input": [{"role": "user", "content": ["x"]}]}, False),
    ({"model": "a", "input": [{"role": "user", "content": 3}]}, False),
    # Namespace tools as Codex sends them, hosted tools, other tools.
    ({"model": "a", "input": "hi", "tools": [_NAMESPACE]}, True),
    ({"model": "a", "input": "hi", "tools": [{**_NAMESPACE, "tools": []}]}, False),
    ({"model": "a", "input": "hi", "tools": [{**_NAMESPACE, "name": "a b"}]}, False),
    ({"model": "a", "input": "hi", "tools": [{**_NAMESPACE, "tools": [{"name": "f"}]}]}, False),
    (
        {
            "model": "a",
            "input": "hi",
            "tools": [{**_NAMESPACE, "tools": [{"type": "custom", "name": "f"}]}],
        },
        False,
    ),
    ({"model": "a", "input": "hi", "tools": [{"type": "namespace", "tools": [_FUNCTION]}]}, False),
    (
        {
            "model": "a",
            "input": "hi",
            "tools": [
                {"type": "web_search_2025_08_26"},
                {"type": "file_search", "vector_store_ids": []},
            ],
        },
        True,
    ),
    (
        {
            "model": "a",
            "input": "hi",
            "tools": [{"type": "mcp", "server_label": "s"}, {"type": "image_generation"}],
        },
        True,
    ),
    ({"model": "a", "input": "hi", "tools": [{"type": "custom", "name": "f"}]}, False),
    ({"model": "a", "input": "hi", "tools": [{"type": "local_shell"}]}, False),
    ({"model": "a", "input": "hi", "tools": [{"name": "f"}]}, False),
    ({"model": "a", "input": "hi", "tools": [{**_FUNCTION, "parameters": []}]}, False),
    # tool_choice, text.format, reasoning, truncation, include.
    (
        {
            "model": "a",
            "input": "hi",
            "tools": [_FUNCTION],
            "tool_choice": {"type": "function", "name": "f"},
        },
        True,
    ),
    ({"model": "a", "input": "hi", "tool_choice": "required"}, True),
    ({"model": "a", "input": "hi", "tool_choice": "always"}, False),
    ({"model": "a", "input": "hi", "tool_choice": {"type": "web_search"}}, False),
    ({"model": "a", "input": "hi", "tool_choice": 3}, False),
    (
        {
            "model": "a",
            "input": "hi",
            "text": {"format": {"type": "json_object"}, "verbosity": "low"},
        },
        True,
    ),
    (
        {
            "model": "a",
            "input": "hi",
            "text": {"format": {"type": "json_schema", "name": "o", "schema": {}}},
        },
        True,
    ),
    ({"model": "a", "input": "hi", "text": {"format": {"type": "json_schema", "name": ""}}}, False),
    ({"model": "a", "input": "hi", "text": {"format": {"type": "yaml"}}}, False),
    ({"model": "a", "input": "hi", "text": "json"}, False),
    ({"model": "a", "input": "hi", "reasoning": {"effort": "high", "summary": "auto"}}, True),
    ({"model": "a", "input": "hi", "reasoning": "high"}, False),
    ({"model": "a", "input": "hi", "truncation": "sometimes"}, False),
    ({"model": "a", "input": "hi", "include": ["reasoning.encrypted_content"]}, True),
    ({"model": "a", "input": "hi", "include": [1]}, False),
    # metadata: 16 pairs, keys of 64 characters at most, values of 512.
    ({"model": "a", "input": "hi", "metadata": {f"k{i}": "v" for i in range(16)}}, True),
    ({"model": "a", "input": "hi", "metadata": {f"k{i}": "v" for i in range(17)}}, False),
    ({"model": "a", "input": "hi", "metadata": {"k" * 64: "v" * 512}}, True),
    ({"model": "a", "input": "hi", "metadata": {"k" * 65: "v"}}, False),
    ({"model": "a", "input": "hi", "metadata": {"k": "v" * 513}}, False),
    ({"model": "a", "input": "hi", "metadata": "k"}, False),
    # conversation: only null; background: only false or null.
    ({"model": "a", "input": "hi", "conversation": {"id": "conv_1", "x": 1}}, False),
    ({"model": "a", "input": "hi", "background": None}, True),
    ({"model": "a", "input": "hi", "background": "no"}, False),
]

_M = {"model": "a", "max_tokens": 8, "messages": [_USER]}

#: Messages bodies: (body, accepted).
MESSAGES: list[tuple[Any, bool]] = [
    (_M, True),
    ({**_M, "stream": True}, True),
    ({**_M, "system": "s"}, True),
    ({**_M, "system": [{"type": "text", "text": "s"}]}, True),
    ({**_M, "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}, True),
    (
        {
            **_M,
            "messages": [
                _USER,
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}],
                },
            ],
        },
        True,
    ),
    ({**_M, "temperature": 1, "top_p": 0.5, "top_k": 3}, True),
    ({**_M, "stop_sequences": ["x"]}, True),
    ({**_M, "tools": [{"name": "f", "input_schema": {"type": "object"}}]}, True),
    (
        {
            **_M,
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "f"},
        },
        True,
    ),
    ({**_M, "tool_choice": {"type": "auto"}}, True),
    ({**_M, "thinking": {"type": "enabled", "budget_tokens": 1024}}, True),
    ({**_M, "thinking": {"type": "adaptive"}}, True),
    ({**_M, "metadata": {"user_id": "u"}}, True),
    ({**_M, "anything": {"else": 1}}, True),
    ({"model": "a", "messages": [_USER]}, False),
    ({"max_tokens": 8, "messages": [_USER]}, False),
    ({**_M, "model": ""}, False),
    ({**_M, "max_tokens": 0}, False),
    ({**_M, "max_tokens": "8"}, False),
    ({**_M, "messages": []}, False),
    ({**_M, "messages": [{"role": "robot", "content": "x"}]}, False),
    ({**_M, "messages": [{"role": "user"}]}, False),
    ({**_M, "messages": [{"role": "user", "content": [{"type": "image"}]}]}, False),
    ({**_M, "temperature": 1.5}, False),
    ({**_M, "stream": "yes"}, False),
    ({**_M, "tools": [{"name": "a b"}]}, False),
    ({**_M, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, False),
    ({**_M, "tool_choice": {"type": "x"}}, False),
    ({**_M, "stop_sequences": "x"}, False),
    ({**_M, "system": 3}, False),
    ({**_M, "top_k": "3"}, False),
    ([_M], False),
]

#: count_tokens bodies: (body, accepted); it needs no max_tokens.
COUNT_TOKENS: list[tuple[Any, bool]] = [
    ({"model": "a", "messages": [_USER]}, True),
    (_M, True),
    ({"model": "a", "messages": [_USER], "system": "s"}, True),
    ({"model": "a", "messages": []}, False),
    ({"messages": [_USER]}, False),
    ({"model": "a", "messages": [{"role": "user"}]}, False),
]

#: Each corpus with its schema component and parser.
_CORPORA: dict[str, tuple[str, Callable[[bytes], Any], list[tuple[Any, bool]]]] = {
    "chat": ("ChatCompletionRequest", parseChatRequest, CHAT),
    "responses": ("ResponseRequest", parseResponsesRequest, RESPONSES),
    "messages": ("MessagesRequest", parseMessagesRequest, MESSAGES),
    "count_tokens": ("CountTokensRequest", parseCountTokensRequest, COUNT_TOKENS),
}


def _parses(parse: Callable[[bytes], Any], body: Any) -> bool:
    try:
        parse(json.dumps(body).encode())
    except AgentError:
        return False
    return True


class AgreementTests(TestCase):
    """
    The parsers and the served document, on one corpus.
    """

    async def test_agreeOnEveryBody(self) -> None:
        """
        For every body of every API, the parser and a Draft 2020-12
        validator of the served C{/openapi.json} both accept it or both
        refuse it, and that is what the corpus says (so that neither can
        drift alone: Responses' C{input} items without a C{type} are
        accepted, C{conversation: "c"} is refused).
        """
        server = await startServer(self)
        response = (
            await httpClient(self)
            .get(server.baseUrl[: -len("/v1")] + "/openapi.json")
            .addTimeout(10, reactor)
        )
        self.assertEqual(response.code, 200)
        document = json.loads(await treq.content(response))
        disagreements = []
        for api, (component, parse, corpus) in _CORPORA.items():
            if api != "count_tokens":
                self.assertGreaterEqual(len(corpus), 30, api)
            validator = jsonschema.Draft202012Validator(
                {
                    "$ref": f"#/components/schemas/{component}",
                    "components": document["components"],
                }
            )
            for body, accepted in corpus:
                got = (validator.is_valid(body), _parses(parse, body))
                if got != (accepted, accepted):
                    disagreements.append((api, body, "schema, parser:", got))
        self.maxDiff = None
        self.assertEqual(disagreements, [])


class ChatTypesTests(SynchronousTestCase):
    """
    The Chat Completions request types: msgspec's refusals as the project's
    400s, and the published components generated from the same types.
    """

    def test_paramFromPath(self) -> None:
        """
        A refusal deep in the body names the field by msgspec's path without
        its C{$.} (C{messages[1].content[0].text}), in the words the
        hand-written parser used.
        """
        body = {"model": "a", "messages": [_USER, {"role": "user", "content": [{"type": "text"}]}]}
        with self.assertRaises(AgentError) as caught:
            parseChatRequest(json.dumps(body).encode())
        error = caught.exception
        self.assertEqual(
            (error.status, error.param, error.code, error.message),
            (
                400,
                "messages[1].content[0].text",
                "invalid_type",
                "'messages[1].content[0].text' must be a string",
            ),
        )

    def test_nullIsAbsent(self) -> None:
        """
        A wrong type is refused naming what the field takes, without
        C{null} (which the parser reads as "not given", and accepts).
        """
        base = {"model": "a", "messages": [_USER]}
        parseChatRequest(json.dumps({**base, "seed": None}).encode())
        with self.assertRaises(AgentError) as caught:
            parseChatRequest(json.dumps({**base, "seed": "3"}).encode())
        self.assertEqual(
            (caught.exception.param, caught.exception.message),
            ("seed", "'seed' must be an integer, not a string"),
        )

    def test_componentsFromTypes(self) -> None:
        """
        The served request component is the one generated from the types:
        its bounds are the types' (C{messages} at most L{MAX_MESSAGES}), and
        each role's message is its own component, told apart by C{role}.
        """
        schemas = OPENAPI["components"]["schemas"]
        generated = schemaComponents([ChatCompletionRequest])
        self.assertEqual(
            schemas["ChatCompletionRequest"]["properties"],
            generated["ChatCompletionRequest"]["properties"],
        )
        messages = schemas["ChatCompletionRequest"]["properties"]["messages"]
        self.assertEqual(messages["maxItems"], MAX_MESSAGES)
        self.assertEqual(
            set(messages["items"]["discriminator"]["mapping"]),
            {"system", "developer", "user", "assistant", "tool"},
        )

    def test_toolNameTrailingNewline(self) -> None:
        """
        A tool name with a newline at its end is refused, naming the name
        (msgspec matches patterns with C{re.search}, where C{$} alone would
        also match before a final newline), and a plain name is accepted.
        """
        for name, refused in (("a\n", True), ("get_weather-2", False)):
            tool = {"type": "function", "function": {"name": name, "parameters": {}}}
            body = json.dumps({"model": "a", "messages": [_USER], "tools": [tool]}).encode()
            if not refused:
                parseChatRequest(body)
                continue
            with self.assertRaises(AgentError) as caught:
                parseChatRequest(body)
            self.assertEqual(caught.exception.status, 400)
            self.assertEqual(caught.exception.param, "tools[0].function.name")

    def test_stopOfNonStrings(self) -> None:
        """
        C{stop} holding an empty array (or any non-string) is a 400 naming
        C{stop}, not a failure of the words for it (it was a 500 once).
        """
        for stop in ([[]], [1], [None, "a"]):
            body = {"model": "a", "messages": [_USER], "stop": stop}
            with self.assertRaises(AgentError) as caught:
                parseChatRequest(json.dumps(body).encode())
            self.assertEqual(
                (caught.exception.status, caught.exception.param, caught.exception.message),
                (400, "stop", "'stop' must be a string or an array of strings"),
                stop,
            )

    def test_modelNamedFirst(self) -> None:
        """
        A missing or empty C{model} is named before any other mistake, and
        a missing C{messages} before the mistakes of the other fields (as
        the hand-written parser did, and OpenAI does).
        """
        for body, param in [
            ({"messages": None, "n": 2}, "model"),
            ({"model": ["x"]}, "model"),
            ({"model": "a", "temperature": 9}, "messages"),
        ]:
            with self.assertRaises(AgentError) as caught:
                parseChatRequest(json.dumps(body).encode())
            self.assertEqual(caught.exception.param, param, body)


class MessagesTypesTests(SynchronousTestCase):
    """
    The Messages request types: refusals in Anthropic's words with the
    C{param} from msgspec's path, components generated from the types.
    """

    def test_toolNameTrailingNewline(self) -> None:
        """
        A Messages tool whose name ends in a newline is refused, naming it.
        """
        tool = {"name": "a\n", "input_schema": {"type": "object"}}
        body = {"model": "a", "max_tokens": 5, "messages": [_USER], "tools": [tool]}
        with self.assertRaises(AgentError) as caught:
            parseMessagesRequest(json.dumps(body).encode())
        self.assertEqual(caught.exception.status, 400)
        self.assertEqual(caught.exception.param, "tools[0].name")

    def test_blockTypeByRole(self) -> None:
        """
        Content blocks are a tagged union on C{type}, by role: a
        C{tool_use} block in a user message is refused as unsupported there,
        naming the block; a block without a C{type} names its C{type}.
        """
        for content, param, message in [
            (
                [{"type": "tool_use", "id": "t", "name": "f"}],
                "messages[0].content[0]",
                'messages[0].content[0]: "tool_use" blocks are not supported; agents here'
                " take text (text, tool_use, tool_result and echoed thinking blocks)",
            ),
            (
                [{"text": "x"}],
                "messages[0].content[0].type",
                "messages[0].content[0].type: a string is required",
            ),
        ]:
            body = {**_M, "messages": [{"role": "user", "content": content}]}
            with self.assertRaises(AgentError) as caught:
                parseMessagesRequest(json.dumps(body).encode())
            self.assertEqual((caught.exception.param, caught.exception.message), (param, message))

    def test_systemTextBlocksNeedType(self) -> None:
        """
        A C{system} block without C{type} is refused (a tagged type alone,
        outside a union, would let it through).
        """
        with self.assertRaises(AgentError) as caught:
            parseMessagesRequest(json.dumps({**_M, "system": [{"text": "s"}]}).encode())
        self.assertEqual(caught.exception.param, "system[0].type")

    def test_componentsFromTypes(self) -> None:
        """
        The served Messages and count_tokens components are generated from
        the types: C{max_tokens} is required by one and not the other.
        """
        schemas = OPENAPI["components"]["schemas"]
        generated = schemaComponents([MessagesRequestBody, CountTokensRequest])
        self.assertEqual(schemas["MessagesRequest"], generated["MessagesRequestBody"])
        self.assertEqual(schemas["CountTokensRequest"], generated["CountTokensRequest"])
        self.assertIn("max_tokens", schemas["MessagesRequest"]["required"])
        self.assertNotIn("max_tokens", schemas["CountTokensRequest"]["required"])


class ResponsesTypesTests(SynchronousTestCase):
    """
    The Responses request types: refusals in the hand-written parser's
    words with the C{param} from msgspec's path, the published components
    generated from the same types.
    """

    def _refusal(self, body: dict[str, Any]) -> tuple[int, str | None, str | None, str]:
        """
        The Responses parser's refusal of C{body} (a model and input
        added): its status, C{param}, C{code} and message.
        """
        with self.assertRaises(AgentError) as caught:
            parseResponsesRequest(json.dumps({"model": "a", "input": "hi", **body}).encode())
        error = caught.exception
        return error.status, error.param, error.code, error.message

    def test_itemWithoutType(self) -> None:
        """
        An input item without a C{type} is a message (its parts as the
        role's), and one without a role is refused naming its C{role}.
        """
        body = {"model": "a", "input": [{"role": "assistant", "content": "x"}]}
        (item,) = parseResponsesRequest(json.dumps(body).encode()).items
        self.assertEqual(
            (item["type"], item["role"], item["content"]),
            ("message", "assistant", [{"type": "output_text", "text": "x", "annotations": []}]),
        )
        self.assertEqual(
            self._refusal({"input": [{"content": "x"}]}),
            (
                400,
                "input[0].role",
                "invalid_value",
                "'input[0].role' must be one of assistant, developer, system, user, got null",
            ),
        )

    def test_unknownItemAndPartTypes(self) -> None:
        """
        An unknown item type names the item's C{type}; a part that is not
        text names the part, as the hand-written parser did.
        """
        self.assertEqual(
            self._refusal({"input": [_USER, {"type": "computer_call"}]}),
            (
                400,
                "input[1].type",
                "unsupported_value",
                "'input[1].type' is \"computer_call\"; input items here are messages,"
                " function_call, function_call_output, item_reference and reasoning",
            ),
        )
        part = {"type": "input_image", "image_url": "u"}
        self.assertEqual(
            self._refusal({"input": [{"role": "user", "content": [_IN, part]}]}),
            (
                400,
                "input[0].content[1]",
                "unsupported_content_type",
                "'input[0].content[1]' is a \"input_image\" part; agents here take text parts only",
            ),
        )

    def test_missingOrNullString(self) -> None:
        """
        A call's missing C{call_id} is a missing parameter; a null one is
        of the wrong type; both name the field in the same words.
        """
        call = {"type": "function_call", "name": "f", "arguments": "{}"}
        for given, code in [
            ({}, "missing_required_parameter"),
            ({"call_id": None}, "invalid_type"),
        ]:
            self.assertEqual(
                self._refusal({"input": [{**call, **given}]}),
                (400, "input[0].call_id", code, "'input[0].call_id' must be a string, not null"),
            )

    def test_metadataBounds(self) -> None:
        """
        Metadata holds at most 16 pairs, keys of at most 64 characters and
        string values of at most 512; a pair past a bound is named by its
        key, too many pairs by C{metadata}.
        """
        pairs = {"k" * 64: "v" * 512, **{f"k{i}": "v" for i in range(15)}}
        parsed = parseResponsesRequest(
            json.dumps({"model": "a", "input": "hi", "metadata": pairs}).encode()
        )
        self.assertEqual(parsed.echo["metadata"], pairs)
        words = "'metadata' keys are at most 64 characters and values strings of at most 512"
        for metadata, param in [
            ({"ok": "v", "k" * 65: "v"}, "metadata." + "k" * 61 + "..."),
            ({"ok": "v", "long": "v" * 513}, "metadata.long"),
            ({"ok": "v", "number": 1}, "metadata.number"),
        ]:
            self.assertEqual(
                self._refusal({"metadata": metadata}), (400, param, "invalid_value", words)
            )
        self.assertEqual(
            self._refusal({"metadata": {f"k{i}": "v" for i in range(17)}})[1:3],
            ("metadata", "invalid_type"),
        )

    def test_hostedToolsSetApart(self) -> None:
        """
        Hosted tools of any of their types (dated web_search variants
        too) are set apart with their places, the function tools beside
        them keep theirs; a tool the client would run in another shape is
        refused naming its C{type}.
        """
        tools = [{"type": "web_search_2025_08_26"}, _FUNCTION, {"type": "file_search"}]
        parsed = parseResponsesRequest(
            json.dumps({"model": "a", "input": "hi", "tools": tools}).encode()
        )
        self.assertEqual(
            parsed.hostedTools,
            (("web_search_2025_08_26", "tools[0]"), ("file_search", "tools[2]")),
        )
        self.assertEqual([(t.spec.name, t.param) for t in parsed.tools], [("f", "tools[1].name")])
        self.assertEqual(parsed.echo["tools"], tools)
        self.assertEqual(
            self._refusal({"tools": [_FUNCTION, {"type": "custom", "name": "c"}]})[1:3],
            ("tools[1].type", "unsupported_tool_type"),
        )

    def test_namespaceMembers(self) -> None:
        """
        A namespace's functions are client tools under the joined name,
        keeping their namespace and own name; a member without a C{type}
        names its C{type}.
        """
        parsed = parseResponsesRequest(
            json.dumps({"model": "a", "input": "hi", "tools": [_NAMESPACE]}).encode()
        )
        self.assertEqual(
            [(t.spec.name, t.param, t.namespace, t.clientName) for t in parsed.tools],
            [
                ("mcp__calc__add", "tools[0].tools[0].name", "mcp__calc", "add"),
                ("mcp__calc__sub", "tools[0].tools[1].name", "mcp__calc", "sub"),
            ],
        )
        self.assertEqual(
            self._refusal({"tools": [{**_NAMESPACE, "tools": [{"name": "f"}]}]})[1:3],
            ("tools[0].tools[0].type", "unsupported_tool_type"),
        )

    def test_toolNameTrailingNewline(self) -> None:
        """
        A function's or a namespace's name ending in a newline is refused,
        naming it.
        """
        for tool, param in [
            ({**_FUNCTION, "name": "f\n"}, "tools[0].name"),
            ({**_NAMESPACE, "name": "ns\n"}, "tools[0].name"),
            ({**_NAMESPACE, "tools": [{**_FUNCTION, "name": "g\n"}]}, "tools[0].tools[0].name"),
        ]:
            self.assertEqual(self._refusal({"tools": [tool]})[:3], (400, param, "invalid_value"))

    def test_componentsFromTypes(self) -> None:
        """
        The served request component is the one generated from the types,
        with what a type cannot state: a message's C{type} may be left out,
        a hosted tool's C{type} is a pattern, C{background} only false.
        """
        schemas = OPENAPI["components"]["schemas"]
        generated = schemaComponents([ResponsesRequestBody])
        served = schemas["ResponseRequest"]["properties"]
        for name, field in generated["ResponsesRequestBody"]["properties"].items():
            if name not in ("input", "tools", "background"):
                self.assertEqual(served[name], field, name)
        self.assertEqual(served["input"]["anyOf"][1]["maxItems"], MAX_MESSAGES)
        self.assertEqual(
            served["metadata"]["anyOf"][0],
            {
                "type": "object",
                "propertyNames": {"maxLength": 64},
                "additionalProperties": {"type": "string", "maxLength": 512},
                "maxProperties": 16,
            },
        )
        self.assertNotIn("type", schemas["ResponsesMessageItem"]["required"])
        self.assertIn("type", generated["ResponsesMessageItem"]["required"])
        self.assertEqual(served["background"]["enum"], [False, None])
