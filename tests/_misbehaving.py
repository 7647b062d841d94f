"""
Helpers for tests against a real server whose upstream (or MCP server)
misbehaves: an agent on a scripted upstream, a chat completion posted
with treq, raw HTTP answers taken apart.
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
from tests._hostile import ScriptedUpstream

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


def floodConfig(upstream: ScriptedUpstream) -> dict[str, Any]:
    return {
        "providers": {"bad": {"type": "openai", "baseUrl": upstream.baseUrl, "apiKey": BAD_KEY}}
    }


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
