"""
Failure paths of a request: a run that crashes (a bug, not an
L{AgentError}) after its stream has started, on a real socket.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from ai_agent.providers import DeltaSink, LLMRequest, LLMResponse
from ai_agent.session import SessionRunner
from tests._harness import LiveServer, startServer


class _ProviderBugError(Exception):
    """
    What the crashing provider fails with: a bug, not an L{AgentError}.
    """


@attrs.define
class _CrashingProvider:
    """
    A provider whose calls stream some content, then fail with a
    L{_ProviderBugError}.
    """

    name: str = "fake"

    def complete(self, request: LLMRequest, sink: DeltaSink) -> Deferred[LLMResponse]:
        sink.content("partial ")
        return fail(_ProviderBugError("provider bug"))


def _frames(body: bytes) -> list[str]:
    return [
        line[len("data: ") :] for line in body.decode().split("\n") if line.startswith("data: ")
    ]


class CrashMidStreamTests(TestCase):
    """
    A run that crashes once its stream has started ends the stream properly.
    """

    async def _server(self) -> tuple[LiveServer, HTTPClient]:
        server = await startServer(self, streamHeadGrace=10.0)
        provider = _CrashingProvider()
        server.headend.runner = SessionRunner(lambda name: provider, reactor)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        return server, HTTPClient(Agent(reactor, pool=pool))

    async def _stream(self, server: LiveServer, http: HTTPClient) -> tuple[int, bytes]:
        response = await http.post(
            server.baseUrl + "/chat/completions",
            data=json.dumps(
                {"model": "agent", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            ).encode(),
            headers=Headers({b"content-type": [b"application/json"]}),
        )
        body = await treq.content(response)
        return response.code, body

    async def test_crashEndsStreamInBand(self) -> None:
        """
        A run that fails with an unexpected exception after content went
        out ends its stream with an in-band C{server_error} frame and
        C{[DONE]}, without the exception's text.
        """
        server, http = await self._server()
        code, body = await self._stream(server, http)
        self.assertEqual(len(self.flushLoggedErrors(_ProviderBugError)), 1)
        # The stream's producer was unregistered before the request finished.
        self.assertEqual(self.flushLoggedErrors(RuntimeError), [])
        self.assertEqual(code, 200)
        frames = _frames(body)
        self.assertEqual(frames[-1], "[DONE]")
        error: Any = json.loads(frames[-2])
        self.assertEqual(error["error"]["type"], "server_error")
        self.assertNotIn(b"provider bug", body)
        self.assertEqual(server.pool.activeRuns, 0)
