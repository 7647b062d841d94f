"""
The benchmark's load client: HTTP/1.1 keep-alive connections on raw asyncio
transports, timing each response to the byte (latency, time to the first
content token) and keeping the body so that every streamed frame can be
checked afterwards.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import attrs

from bench._stats import ResponseParser

# The first text: a chat chunk's delta.content, a Responses output_text
# delta, or an Anthropic text_delta (never sent empty).
_CONTENT = re.compile(rb'"(?:content|delta)":\s*"(?!")|"text_delta"|"artifactUpdate"')

#: The Anthropic API version the Messages requests name.
ANTHROPIC_VERSION = "2023-06-01"


@attrs.define
class Target:
    """
    Where an arm sends its requests.

    @ivar port: the TCP port on 127.0.0.1.
    @ivar prefix: the API root path, e.g. C{/v1} or C{/slow/v1}.
    @ivar model: the model name to ask for.
    @ivar key: the bearer token.
    """

    port: int
    prefix: str
    model: str
    key: str = "sk-bench-0000"

    def chat(self, text: str, stream: bool) -> bytes:
        """
        The raw bytes of one chat-completion request.
        """
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": text}],
            "stream": stream,
        }
        return self.post(f"{self.prefix}/chat/completions", json.dumps(body).encode())

    def responses(self, text: str, stream: bool) -> bytes:
        """
        The raw bytes of one Responses API request (stored, the default).
        """
        body: dict[str, Any] = {"model": self.model, "input": text, "stream": stream}
        return self.post(f"{self.prefix}/responses", json.dumps(body).encode())

    def messages(self, text: str, stream: bool) -> bytes:
        """
        The raw bytes of one Anthropic Messages API request, sent as
        Anthropic's clients send it (C{x-api-key}, C{anthropic-version}).
        """
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": 1024,
            "messages": [{"role": "user", "content": text}],
            "stream": stream,
        }
        headers = {"x-api-key": self.key, "anthropic-version": ANTHROPIC_VERSION}
        return self.post(f"{self.prefix}/messages", json.dumps(body).encode(), headers)

    def mcpCall(self, text: str) -> bytes:
        """
        The raw bytes of one MCP C{tools/call} of the agent (C{/mcp}, the
        2026-07-28 per-request mode: no session, its headers, a JSON
        answer).
        """
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": self.model, "arguments": {"prompt": text}},
        }
        headers = {
            "Authorization": f"Bearer {self.key}",
            "Accept": "application/json",
            "MCP-Protocol-Version": "2026-07-28",
            "Mcp-Method": "tools/call",
            "Mcp-Name": self.model,
        }
        root = self.prefix.removesuffix("/v1")
        return self.post(f"{root}/mcp", json.dumps(body).encode(), headers)

    def toolChat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], stream: bool = False
    ) -> bytes:
        """
        The raw bytes of a chat-completion request carrying the client's
        C{tools} (none when empty).
        """
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": stream}
        if tools:
            body["tools"] = tools
        return self.post(f"{self.prefix}/chat/completions", json.dumps(body).encode())

    def a2a(self, text: str, stream: bool) -> bytes:
        """
        The raw bytes of one A2A 1.0 message to the agent (HTTP+JSON
        binding): C{message:stream} or C{message:send}.
        """
        body = {"message": {"messageId": "bench", "role": "ROLE_USER", "parts": [{"text": text}]}}
        verb = "stream" if stream else "send"
        return self.post(
            f"/a2a/{self.model}/message:{verb}", json.dumps(body).encode(), {"A2A-Version": "1.0"}
        )

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
        """
        A POST of a JSON body, with the bearer token unless C{headers}
        are given (they then carry the credentials).
        """
        if headers is None:
            headers = {"Authorization": f"Bearer {self.key}"}
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Content-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    def get(self, path: str) -> bytes:
        """
        A GET.
        """
        return (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Authorization: Bearer {self.key}\r\n\r\n"
        ).encode()


@attrs.define
class Result:
    """
    One response.

    @ivar started: C{time.perf_counter()} when the request was written.
    @ivar latency: seconds to the last byte.
    @ivar ttft: seconds to the first non-empty content token, if any.
    @ivar firstByte: seconds to the first response byte.
    @ivar marks: when asked for, C{(body bytes so far, seconds)} at each
        read that added to the body: when each part of a stream arrived.
    """

    status: int
    started: float
    latency: float
    ttft: float | None
    firstByte: float | None
    headers: dict[str, str]
    body: bytes
    marks: list[tuple[int, float]] | None = None


class ConnectionLostError(Exception):
    """
    The server closed the connection before the response ended.
    """


class Connection(asyncio.Protocol):
    """
    One keep-alive connection, one request at a time.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser: ResponseParser | None = None
        self._waiter: asyncio.Future[Result] | None = None
        self._started = 0.0
        self._ttft: float | None = None
        self._firstByte: float | None = None
        self._watch = False
        self._searched = 0
        self._gotToken: asyncio.Future[float] | None = None
        self._marks: list[tuple[int, float]] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(cls, port: int) -> Connection:
        """
        Connect to 127.0.0.1:C{port}.
        """
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(cls, "127.0.0.1", port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            return
        now = time.perf_counter()
        if self._firstByte is None:
            self._firstByte = now - self._started
        added = parser.feed(data)
        if self._marks is not None and added:
            self._marks.append((len(parser.body), now - self._started))
        if self._watch and added and self._ttft is None:
            match = _CONTENT.search(parser.body, max(0, self._searched - 16))
            self._searched = len(parser.body)
            if match is not None:
                self._ttft = now - self._started
                if self._gotToken is not None and not self._gotToken.done():
                    self._gotToken.set_result(now)
        if parser.done:
            self._complete(now)

    def _complete(self, now: float) -> None:
        parser, waiter = self._parser, self._waiter
        assert parser is not None
        self._parser = None
        self._waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(
                Result(
                    parser.status,
                    self._started,
                    now - self._started,
                    self._ttft,
                    self._firstByte,
                    parser.headers,
                    bytes(parser.body),
                    self._marks,
                )
            )
        if parser.headers.get("connection", "").lower() == "close" and self.transport:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        parser, waiter = self._parser, self._waiter
        if parser is not None and waiter is not None and not waiter.done():
            parser.close()
            if parser.done:
                self._complete(time.perf_counter())
            else:
                waiter.set_exception(ConnectionLostError(str(exc)))

    def send(
        self,
        raw: bytes,
        watchContent: bool = False,
        firstToken: asyncio.Future[float] | None = None,
        marks: bool = False,
    ) -> asyncio.Future[Result]:
        """
        Write one request; the Future fires with its L{Result}.

        @param watchContent: time the first content token.
        @param firstToken: set (to the C{perf_counter} time) when it arrives.
        @param marks: keep the L{Result.marks} of the body.
        """
        assert self.transport is not None and self._parser is None
        self._parser = ResponseParser()
        self._waiter = asyncio.get_running_loop().create_future()
        self._ttft = None
        self._firstByte = None
        self._searched = 0
        self._watch = watchContent
        self._gotToken = firstToken
        self._marks = [] if marks else None
        self._started = time.perf_counter()
        self.transport.write(raw)
        return self._waiter

    @property
    def usable(self) -> bool:
        """
        Whether another request may go on this connection.
        """
        return self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        """
        Close the connection (a FIN, as a client that leaves).
        """
        if self.transport is not None:
            self.transport.close()


async def request(
    port: int, raw: bytes, watchContent: bool = False, timeout: float = 30.0
) -> Result:
    """
    One request on a new connection, closed afterwards.
    """
    connection = await Connection.open(port)
    try:
        return await asyncio.wait_for(connection.send(raw, watchContent), timeout)
    finally:
        connection.close()


@attrs.define
class Sampler:
    """
    Runs requests on a few keep-alive connections and keeps the results.
    """

    port: int
    results: list[Result] = attrs.field(factory=list)
    errors: int = 0

    async def _worker(
        self, raw: bytes, watch: bool, stopAt: float | None, remaining: list[int]
    ) -> None:
        connection: Connection | None = None
        try:
            while True:
                if stopAt is not None and time.perf_counter() >= stopAt:
                    return
                if stopAt is None:
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                if connection is None or not connection.usable:
                    connection = await Connection.open(self.port)
                try:
                    result = await asyncio.wait_for(connection.send(raw, watch), 30.0)
                except (ConnectionLostError, TimeoutError, OSError):
                    self.errors += 1
                    connection.close()
                    connection = None
                    continue
                self.results.append(result)
        finally:
            if connection is not None:
                connection.close()

    async def run(
        self,
        raw: bytes,
        concurrency: int,
        count: int | None = None,
        duration: float | None = None,
        watch: bool = False,
    ) -> float:
        """
        Send C{raw} from C{concurrency} closed-loop connections, C{count}
        times in all or for C{duration} seconds; return the elapsed time.
        """
        stopAt = None if duration is None else time.perf_counter() + duration
        remaining = [count or 0]
        started = time.perf_counter()
        await asyncio.gather(
            *(self._worker(raw, watch, stopAt, remaining) for _ in range(concurrency))
        )
        return time.perf_counter() - started
