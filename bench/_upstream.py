"""
The benchmark's fake upstream: the answers of L{ai_agent.testing.FakeUpstream}
(C{"echo: "} and the last user message, streamed word by word), served by a
bare C{twisted.web} resource with pre-encoded frames so that the upstream,
which shares a core with the load client, stays far from saturation.

The path prefix picks the behaviour, so every arm (direct, this server,
LiteLLM) reaches each one by its base URL alone:

  - C{/v1}: answer at once (a stream goes out in one write);
  - C{/hold/v1}: stream the role chunk and the first word, then hold the
    stream open until the client leaves;
  - C{/slow/v1}: stream one word every C{--interval} seconds;
  - C{/loop/v1}: the agent loop (L{LOOP_TURNS} tool calls, then the
    answer; see below), answered at once like C{/v1}.

Client tools: when the request has C{tools} and its last message is a user
message, the answer is a call of the first function tool, with the
arguments C{{<name>: <the last user message>}} (the name: the tool's first
required string parameter, e.g. C{prompt} for a sub-agent, else C{text})
and the id
C{call_bench_<n>} (finish reason C{tool_calls}); when its last message is a
tool result, the answer is C{"result: "} and that result, word by word.
Under C{/loop/v1} a request with tools is answered with a call of its first
tool (the last user message as the argument) as long as its history has
fewer than L{LOOP_TURNS} tool results, and then with C{"result: "} and the
last result: an agent loop of L{LOOP_TURNS} turns, each calling the tool.
Streamed, the call goes out as OpenAI streams one: a delta with its index,
id, type, name and empty arguments, then the arguments in two deltas.

A word C{tag-...} in the last user message names the exchange; the time
(C{time.monotonic}, shared by every process of the machine) at which its
client went away is kept and served at C{GET /bench/closed?tag=...}, which
is how cancellation latency is measured.

Run: C{python -m bench._upstream --port 0}; it prints the C{/v1} base URL.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from ai_agent.testing import wordPieces

_MODES = {b"": "fast", b"/hold": "hold", b"/slow": "slow", b"/loop": "loop"}

#: Under C{/loop/v1}: the tool calls of one run before the answer.
LOOP_TURNS = 5


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def lastUserText(body: Any) -> str:
    """
    The text of the last user message of a chat-completion body.
    """
    messages = body.get("messages") if isinstance(body, dict) else None
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(
                    part.get("text", "")
                    for part in content
                    if isinstance(part, dict) and isinstance(part.get("text"), str)
                )
    return ""


def _lastMessage(body: Any) -> dict[str, Any] | None:
    messages = body.get("messages") if isinstance(body, dict) else None
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return messages[-1]
    return None


def toolCallOf(body: Any) -> tuple[str, str] | None:
    """
    The C{(name, arguments)} of the call the upstream answers with: the
    first function tool of C{tools}, called with the last user message as
    its L{argumentName}, when the request has tools and its last message is
    a user message; otherwise L{None}.
    """
    last = _lastMessage(body)
    if last is None or last.get("role") != "user":
        return None
    return _firstToolCall(body)


def _firstToolCall(body: Any) -> tuple[str, str] | None:
    """
    A call of the first function tool of C{tools} with the last user
    message as its L{argumentName}, or L{None} without such a tool.
    """
    tools = body.get("tools") if isinstance(body, dict) else None
    if not isinstance(tools, list):
        return None
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            isinstance(tool, dict)
            and tool.get("type") == "function"
            and isinstance(function, dict)
            and isinstance(function.get("name"), str)
        ):
            arguments = {argumentName(function.get("parameters")): lastUserText(body)}
            return function["name"], _dumps(arguments).decode("utf-8")
    return None


def toolResults(body: Any) -> int:
    """
    The number of tool results (C{role: "tool"} messages) in the history.
    """
    messages = body.get("messages") if isinstance(body, dict) else None
    return sum(
        1
        for message in (messages if isinstance(messages, list) else [])
        if isinstance(message, dict) and message.get("role") == "tool"
    )


def loopCallOf(body: Any, turns: int = LOOP_TURNS) -> tuple[str, str] | None:
    """
    The agent loop's answer: like L{toolCallOf} (the first function tool,
    the last user message as its argument) while the history has fewer than
    C{turns} tool results, then L{None} (the answer to the last result).
    """
    if toolResults(body) >= turns:
        return None
    return _firstToolCall(body)


def argumentName(schema: Any) -> str:
    """
    The parameter a call of a tool with the parameters C{schema} puts the
    user's message in: the first required property of type string (a
    sub-agent's C{prompt}, an MCP tool's C{text}), else C{text}.
    """
    if isinstance(schema, dict):
        required = schema.get("required")
        properties = schema.get("properties")
        if isinstance(required, list) and isinstance(properties, dict):
            for name in required:
                spec = properties.get(name) if isinstance(name, str) else None
                if isinstance(spec, dict) and spec.get("type") == "string":
                    return str(name)
    return "text"


def toolResultOf(body: Any) -> str | None:
    """
    The content of the last message when it is a tool result, else L{None}.
    """
    last = _lastMessage(body)
    if last is None or last.get("role") != "tool":
        return None
    content = last.get("content")
    if isinstance(content, list):
        return " ".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return content if isinstance(content, str) else ""


def tagOf(text: str) -> str | None:
    """
    The first C{tag-...} word of C{text}, if any.
    """
    for word in text.split():
        if word.startswith("tag-"):
            return word
    return None


class _Frames:
    """
    The SSE frames of one streamed answer, sharing one encoded envelope.
    """

    def __init__(self, number: int, model: str) -> None:
        head = _dumps(
            {
                "id": f"chatcmpl-bench-{number}",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
            }
        )[:-1]
        self.head = head
        self.prefix = b"data: " + head + b',"choices":[{"index":0,"delta":'
        self.suffix = b',"finish_reason":null}]}\n\n'

    def delta(self, delta: bytes) -> bytes:
        return self.prefix + delta + self.suffix

    def content(self, text: str) -> bytes:
        return self.delta(b'{"content":' + _dumps(text) + b"}")

    def toolCall(self, callId: str, name: str, arguments: str) -> list[bytes]:
        """
        One tool call as OpenAI streams it: index, id, type, name and empty
        arguments first, then the arguments in two pieces.
        """
        middle = max(1, len(arguments) // 2)
        start = {
            "tool_calls": [
                {
                    "index": 0,
                    "id": callId,
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                }
            ]
        }
        return [self.delta(_dumps(start))] + [
            self.delta(
                b'{"tool_calls":[{"index":0,"function":{"arguments":' + _dumps(piece) + b"}}]}"
            )
            for piece in (arguments[:middle], arguments[middle:])
        ]

    def finish(self, reason: bytes = b"stop") -> bytes:
        return self.prefix + b'{},"finish_reason":"' + reason + b'"}]}\n\n'

    def usage(self, prompt: int, completion: int) -> bytes:
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        return b"data: " + self.head + b',"choices":[],"usage":' + _dumps(usage) + b"}\n\n"


class BenchUpstream(Resource):
    """
    The resource answering every path (see the module docstring).

    @ivar interval: seconds between words in C{/slow} mode.
    @ivar closed: tag to the monotonic time its client went away.
    @ivar requests: chat completions received.
    """

    isLeaf = True

    def __init__(self, reactor: Any, interval: float = 0.02) -> None:
        super().__init__()
        self.reactor = reactor
        self.interval = interval
        self.closed: dict[str, float] = {}
        self.requests = 0
        self.traceExports = 0
        self.open = 0
        self._closeWaiters: dict[str, list[Deferred[None]]] = {}

    # Routing.

    def render_GET(self, request: Request) -> bytes | int:
        path = request.path
        if path == b"/bench/closed":
            return self._closedAt(request)
        if path == b"/bench/stats":
            return self._json(request, {"requests": self.requests, "open": self.open})
        if path.endswith(b"/v1/models"):
            return self._json(
                request,
                {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "bench"}]},
            )
        request.setResponseCode(404)
        return self._json(request, {"error": {"message": "not found", "type": "not_found"}})

    def render_POST(self, request: Request) -> bytes | int:
        if request.path == b"/v1/traces":
            # An OTLP/HTTP sink for the tracing arm: accepted, dropped.
            self.traceExports += 1
            request.setHeader(b"content-type", b"application/x-protobuf")
            return b""
        prefix, _, rest = request.path.partition(b"/v1/")
        mode = _MODES.get(prefix)
        if mode is None or rest != b"chat/completions":
            request.setResponseCode(404)
            return self._json(request, {"error": {"message": "not found", "type": "not_found"}})
        try:
            body = json.loads(request.content.read() if request.content else b"")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            request.setResponseCode(400)
            return self._json(request, {"error": {"message": "not JSON", "type": "bad"}})
        self.requests += 1
        text = lastUserText(body)
        tag = tagOf(text)
        self.open += 1
        request.notifyFinish().addBoth(self._ended, tag)
        call = loopCallOf(body) if mode == "loop" else toolCallOf(body)
        callId = f"call_bench_{self.requests}"
        result = None if call is not None else toolResultOf(body)
        pieces = (
            [] if call else wordPieces("echo: " + text if result is None else "result: " + result)
        )
        model = str(body.get("model", ""))
        if not body.get("stream"):
            if mode == "hold":
                return NOT_DONE_YET
            handed = None if call is None else (callId, *call)
            return self._complete(request, model, text, pieces, handed)
        frames = _Frames(self.requests, model)
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        first = frames.delta(b'{"role":"assistant","content":""}')
        if call is None:
            answer = [frames.content(piece) for piece in pieces]
            tail = [frames.finish()]
        else:
            answer = frames.toolCall(callId, *call)
            tail = [frames.finish(b"tool_calls")]
        options = body.get("stream_options")
        if isinstance(options, dict) and bool(options.get("include_usage")):
            tail.append(frames.usage(len(text.split()), max(1, len(pieces))))
        tail.append(b"data: [DONE]\n\n")
        if mode in ("fast", "loop"):
            request.write(first + b"".join(answer) + b"".join(tail))
            request.finish()
        elif mode == "hold":
            request.write(first + answer[0])
        else:
            request.write(first)
            self._drip(request, answer, 0, b"".join(tail))
        return NOT_DONE_YET

    # Answers.

    def _complete(
        self,
        request: Request,
        model: str,
        text: str,
        pieces: list[str],
        call: tuple[str, str, str] | None = None,
    ) -> bytes:
        prompt, completion = len(text.split()), max(1, len(pieces))
        message: dict[str, Any] = {"role": "assistant", "content": "".join(pieces)}
        if call is not None:
            callId, name, arguments = call
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": callId,
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    }
                ],
            }
        data = _dumps(
            {
                "id": f"chatcmpl-bench-{self.requests}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": "stop" if call is None else "tool_calls",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            }
        )
        request.setHeader(b"content-type", b"application/json")
        return data

    def _drip(self, request: Request, answer: list[bytes], position: int, tail: bytes) -> None:
        if request.finished or request._disconnected:
            return
        if position == len(answer):
            request.write(tail)
            request.finish()
            return
        request.write(answer[position])
        self.reactor.callLater(self.interval, self._drip, request, answer, position + 1, tail)

    # Bookkeeping.

    def _ended(self, result: None | Failure, tag: str | None) -> None:
        self.open -= 1
        if isinstance(result, Failure) and tag is not None:
            self.closed[tag] = time.monotonic()
            for waiter in self._closeWaiters.pop(tag, []):
                waiter.callback(None)

    def _closedAt(self, request: Request) -> bytes | int:
        args: dict[bytes, list[bytes]] = request.args or {}
        tag = (args.get(b"tag") or [b""])[0].decode()
        if tag in self.closed or not tag:
            return self._json(request, {"closedAt": self.closed.pop(tag, None)})
        waiter: Deferred[None] = Deferred()
        self._closeWaiters.setdefault(tag, []).append(waiter)
        timer = self.reactor.callLater(3.0, waiter.callback, None)

        def answer(_: None) -> None:
            if timer.active():
                timer.cancel()
            if waiter in self._closeWaiters.get(tag, []):
                self._closeWaiters[tag].remove(waiter)
            request.write(self._json(request, {"closedAt": self.closed.pop(tag, None)}))
            request.finish()

        waiter.addCallback(answer)
        return NOT_DONE_YET

    @staticmethod
    def _json(request: Request, value: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return _dumps(value)


class _QuietSite(Site):
    def log(self, request: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    """
    Serve until interrupted.
    """
    parser = argparse.ArgumentParser(prog="python -m bench._upstream")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--interval", type=float, default=0.02)
    options = parser.parse_args(argv)
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    site = _QuietSite(BenchUpstream(reactor, options.interval), parsePOSTFormSubmission=False)
    port = reactor.listenTCP(options.port, site, backlog=4096, interface="127.0.0.1")
    sys.stdout.write(f"fake upstream listening on http://127.0.0.1:{port.getHost().port}/v1\n")
    sys.stdout.flush()
    reactor.run()


if __name__ == "__main__":
    main()
