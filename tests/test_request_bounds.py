"""
Bounds on what a request may ask of a model, and conversations no provider
would take, refused by the server itself with a 400 in each API's envelope
naming the field, before any upstream call: output token limits
(C{max_tokens}, C{max_completion_tokens}, C{max_output_tokens}), stop
sequences, and tool results that answer no tool call.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from ai_agent.errors import AgentError
from ai_agent.headends._request import (
    MAX_OUTPUT_TOKENS,
    MAX_STOP_LENGTH,
    MAX_STOP_SEQUENCES,
    parseChatRequest,
)
from ai_agent.headends.anthropic import parseMessagesRequest
from ai_agent.headends.responses import checkCallOutputs, parseResponsesRequest
from tests._harness import LiveServer, startServer

USER = {"role": "user", "content": "hi"}


def _refusal(parse: Any, body: dict[str, Any]) -> AgentError:
    try:
        parse(json.dumps(body).encode())
    except AgentError as error:
        return error
    raise AssertionError(f"accepted {body!r}")


class ParserBoundsTests(SynchronousTestCase):
    """
    The parsers' bounds, at and past each limit.
    """

    def test_outputTokens(self) -> None:
        """
        Each API's output token limit is a whole number from 1 to
        L{MAX_OUTPUT_TOKENS}; 2**70 (and one past the bound) is a 400
        naming the field, the bound accepted.
        """
        cases = [
            (parseChatRequest, {"model": "a", "messages": [USER]}, "max_tokens"),
            (parseChatRequest, {"model": "a", "messages": [USER]}, "max_completion_tokens"),
            (
                parseMessagesRequest,
                {"model": "a", "messages": [USER], "max_tokens": 1},
                "max_tokens",
            ),
            (parseResponsesRequest, {"model": "a", "input": "hi"}, "max_output_tokens"),
        ]
        for parse, body, field in cases:
            parse(json.dumps({**body, field: MAX_OUTPUT_TOKENS}).encode())
            for value in (2**70, MAX_OUTPUT_TOKENS + 1, 0):
                error = _refusal(parse, {**body, field: value})
                self.assertEqual((error.status, error.param), (400, field), (field, value))
                self.assertIn(str(MAX_OUTPUT_TOKENS), error.message)

    def test_stopSequences(self) -> None:
        """
        Messages takes at most L{MAX_STOP_SEQUENCES} stop sequences (10,000
        refused), each at most L{MAX_STOP_LENGTH} characters; Chat
        Completions' C{stop} keeps its 4 and gets the same length bound.
        """
        messages = {"model": "a", "messages": [USER], "max_tokens": 5}
        parseMessagesRequest(
            json.dumps({**messages, "stop_sequences": ["x"] * MAX_STOP_SEQUENCES}).encode()
        )
        error = _refusal(parseMessagesRequest, {**messages, "stop_sequences": ["x"] * 10_000})
        self.assertEqual((error.status, error.param), (400, "stop_sequences"))
        self.assertIn(f"at most {MAX_STOP_SEQUENCES}", error.message)
        long = "y" * (MAX_STOP_LENGTH + 1)
        error = _refusal(parseMessagesRequest, {**messages, "stop_sequences": ["a", long]})
        self.assertEqual(error.param, "stop_sequences[1]")
        chat = {"model": "a", "messages": [USER]}
        parseChatRequest(json.dumps({**chat, "stop": "y" * MAX_STOP_LENGTH}).encode())
        for stop in (long, ["a", long]):
            error = _refusal(parseChatRequest, {**chat, "stop": stop})
            self.assertEqual((error.status, error.param), (400, "stop"))
            self.assertIn(str(MAX_STOP_LENGTH), error.message)


def _assistantCall(callId: str) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": callId, "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }


class OrphanResultTests(SynchronousTestCase):
    """
    A tool result must answer a tool call of the assistant turn before it.
    """

    def test_chatCompletions(self) -> None:
        """
        A C{tool} message with no assistant tool calls before it, or whose
        C{tool_call_id} is not one of them, is a 400 naming the message; a
        result answering the last assistant turn's call passes.
        """
        tool = {"role": "tool", "tool_call_id": "c1", "content": "r"}
        parseChatRequest(
            json.dumps({"model": "a", "messages": [USER, _assistantCall("c1"), tool]}).encode()
        )
        error = _refusal(parseChatRequest, {"model": "a", "messages": [USER, tool]})
        self.assertEqual((error.status, error.param), (400, "messages[1].role"))
        self.assertIn("must be a response to a preceding message with 'tool_calls'", error.message)
        error = _refusal(
            parseChatRequest, {"model": "a", "messages": [USER, _assistantCall("c2"), tool]}
        )
        self.assertEqual(error.param, "messages[2].tool_call_id")
        # An older turn's call is not answered in a later turn.
        error = _refusal(
            parseChatRequest,
            {
                "model": "a",
                "messages": [
                    USER,
                    _assistantCall("c1"),
                    tool,
                    _assistantCall("c2"),
                    {"role": "tool", "tool_call_id": "c1", "content": "again"},
                ],
            },
        )
        self.assertEqual(error.param, "messages[4].tool_call_id")

    def test_messages(self) -> None:
        """
        A C{tool_result} block whose C{tool_use_id} matches no C{tool_use}
        of the previous assistant message is refused in Anthropic's words,
        naming the block.
        """
        use = {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}],
        }

        def result(callId: str) -> dict[str, Any]:
            return {
                "role": "user",
                "content": [
                    {"type": "text", "text": "here"},
                    {"type": "tool_result", "tool_use_id": callId, "content": "r"},
                ],
            }

        body = {"model": "a", "max_tokens": 5}
        parseMessagesRequest(
            json.dumps({**body, "messages": [USER, use, result("toolu_1")]}).encode()
        )
        for messages in ([result("toolu_1")], [USER, use, result("toolu_9")]):
            error = _refusal(parseMessagesRequest, {**body, "messages": messages})
            index = len(messages) - 1
            self.assertEqual(error.param, f"messages[{index}].content[1].tool_use_id")
            self.assertIn(
                "unexpected `tool_use_id` found in `tool_result` blocks: toolu_", error.message
            )
            self.assertIn(
                "Each `tool_result` block must have a corresponding `tool_use` block in the"
                " previous message.",
                error.message,
            )

    def test_responses(self) -> None:
        """
        A C{function_call_output} is refused unless a C{function_call} with
        its C{call_id} came before it, in the input or in the chain of
        previous responses.
        """
        call = {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"}
        output = {"type": "function_call_output", "call_id": "call_1", "output": "r"}
        checkCallOutputs([], [call, output])
        checkCallOutputs([call], [output])
        with self.assertRaises(AgentError) as caught:
            checkCallOutputs([], [{"type": "message"}, output])
        self.assertEqual(
            (caught.exception.status, caught.exception.param), (400, "input[1].call_id")
        )
        self.assertIn(
            "No tool call found for function call output with call_id call_1", str(caught.exception)
        )


class ThroughTheServerTests(TestCase):
    """
    The refusals on a live server: 400 in the API's envelope, no upstream
    call.
    """

    async def _post(
        self, server: LiveServer, path: str, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        http = treq.client.HTTPClient(Agent(reactor, pool=pool))
        headers = {"anthropic-version": "2023-06-01"} if path == "/messages" else {}
        response = await http.post(server.baseUrl + path, json=body, headers=headers)
        return response.code, json.loads(await treq.content(response))

    async def test_refusedBeforeUpstream(self) -> None:
        """
        Messages C{max_tokens} 2**70, 10,000 C{stop_sequences} and an
        orphan C{tool_result}; Responses C{max_output_tokens} 2**80 and an
        orphan C{function_call_output}; Chat Completions C{max_tokens}
        2**70 and an orphan C{tool} message: each a 400 in its API's
        envelope naming the field, and the fake upstream saw nothing.
        """
        server = await startServer(self)
        messages = {"model": "agent", "messages": [USER], "max_tokens": 5}
        orphan = {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "r"}],
        }
        for body, param in [
            ({**messages, "max_tokens": 2**70}, "max_tokens"),
            ({**messages, "stop_sequences": ["s"] * 10_000}, "stop_sequences"),
            ({**messages, "messages": [orphan]}, "messages[0].content[0].tool_use_id"),
        ]:
            status, answer = await self._post(server, "/messages", body)
            self.assertEqual(status, 400, answer)
            self.assertEqual(answer["type"], "error")
            self.assertEqual(answer["error"]["type"], "invalid_request_error")
            self.assertIn(param.split("[")[0], answer["error"]["message"])
        for path, body, param in [
            ("/responses", {"model": "agent", "input": "hi", "max_output_tokens": 2**80}, None),
            (
                "/responses",
                {
                    "model": "agent",
                    "input": [{"type": "function_call_output", "call_id": "c", "output": "r"}],
                },
                "input[0].call_id",
            ),
            (
                "/chat/completions",
                {"model": "agent", "messages": [USER], "max_tokens": 2**70},
                None,
            ),
            (
                "/chat/completions",
                {
                    "model": "agent",
                    "messages": [USER, {"role": "tool", "tool_call_id": "c", "content": "r"}],
                },
                "messages[1].role",
            ),
        ]:
            status, answer = await self._post(server, path, body)
            self.assertEqual(status, 400, answer)
            self.assertEqual(answer["error"]["type"], "invalid_request_error")
            if param is not None:
                self.assertEqual(answer["error"]["param"], param)
            else:
                self.assertIn(str(MAX_OUTPUT_TOKENS), answer["error"]["message"])
        self.assertEqual(server.upstream.requests, [])
