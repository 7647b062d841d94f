# -*- test-case-name: tests.test_cache -*-
"""
The response cache, off unless asked: an agent's C{cache} (frontmatter)
keeps its runs' answers, and an MCP server's C{cache} / C{toolsCache}
(configuration) keeps its tools' results, in the run store, so every
instance sharing the store shares them.

  - A run's key is a SHA-256 of the agent (its path and a hash of its
    file's text), the principal the request is for, and everything of the
    request that can change the answer: the conversation, the client's
    instructions, sampling and output format, the client's tools, tool
    choice and parallel tool calls.  A hit replays the answer as one
    content delta and ends with the stored finish reason and zero usage
    (nothing was spent); no upstream call is made.  Failed and cancelled
    runs, and runs that handed client tool calls back, are never kept.
  - A tool call's key is a SHA-256 of the principal, the tool's name as
    the model sees it (C{server__tool}) and its arguments as canonical JSON
    (sorted keys).  Only results of calls that succeeded are kept.

A store that fails is logged and the run goes on uncached.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Mapping

import attrs
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.logger import Logger

from ai_agent.agentfile import AgentSpec
from ai_agent.events import (
    ClientToolCall,
    ContentDelta,
    Event,
    EventSink,
    Finished,
    FinishReason,
    Usage,
)
from ai_agent.request import RunRequest
from ai_agent.store import RunStore, StoreError

log = Logger()

#: The run store namespace of cached agent answers.
RUN_CACHE = "cache.runs"

#: The run store namespace of cached tool results.
TOOL_CACHE = "cache.tools"


def _digest(document: Any) -> str:
    text = json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def runKey(agent: AgentSpec, request: RunRequest) -> str:
    """
    The cache key of running C{agent} on C{request}.
    """
    return _digest(
        {
            "agent": agent.path,
            "file": agent.digest,
            "owner": request.owner,
            "conversation": [message.asOpenAI() for message in request.conversation],
            "instructions": list(request.instructions),
            "sampling": attrs.asdict(request.sampling),
            "clientTools": [attrs.asdict(tool.spec) for tool in request.clientTools],
            "toolChoice": attrs.asdict(request.toolChoice),
            "parallelToolCalls": request.parallelToolCalls,
        }
    )


def toolKey(owner: str, tool: str, arguments: Mapping[str, Any]) -> str:
    """
    The cache key of calling C{tool} with C{arguments} for C{owner}.
    """
    return _digest({"owner": owner, "tool": tool, "arguments": arguments})


@attrs.define(eq=False)
class _Recording:
    """
    Passes events on, keeping the answer and noting client tool calls.
    """

    events: EventSink
    parts: list[str] = attrs.field(factory=list)
    handedBack: bool = False

    def __call__(self, event: Event) -> None:
        if isinstance(event, ContentDelta):
            self.parts.append(event.text)
        elif isinstance(event, ClientToolCall):
            self.handedBack = True
        self.events(event)


@attrs.define(eq=False)
class ResponseCache:
    """
    Cached agent answers and tool results in a run store.
    """

    store: RunStore

    def run(
        self,
        agent: AgentSpec,
        request: RunRequest,
        events: EventSink,
        start: Callable[[EventSink], Deferred[Finished]],
    ) -> Deferred[Finished]:
        """
        The cached answer of C{agent} on C{request} when there is one, else
        what C{start} runs (kept for C{agent.cache} seconds if it ended
        well).
        """
        return ensureDeferred(self._run(agent, request, events, start))

    async def _run(
        self,
        agent: AgentSpec,
        request: RunRequest,
        events: EventSink,
        start: Callable[[EventSink], Deferred[Finished]],
    ) -> Finished:
        assert agent.cache is not None
        key = runKey(agent, request)
        found = await self._get(RUN_CACHE, key)
        if isinstance(found, dict) and isinstance(found.get("answer"), str):
            log.info("agent {agent}: answered from the cache", agent=agent.name)
            if found["answer"]:
                events(ContentDelta(found["answer"]))
            return Finished(str(found.get("reason", FinishReason.END)), Usage())
        recording = _Recording(events)
        finished = await start(recording)
        if finished.reason != FinishReason.TOOL_CALLS and not recording.handedBack:
            document = {"answer": "".join(recording.parts), "reason": finished.reason}
            await self._put(RUN_CACHE, key, document, agent.cache)
        return finished

    def tool(
        self,
        owner: str,
        name: str,
        arguments: Mapping[str, Any],
        ttl: float,
        call: Callable[[], Deferred[str]],
    ) -> Deferred[str]:
        """
        The cached result of a tool call, or C{call}'s (kept C{ttl}
        seconds when it succeeds).
        """
        return ensureDeferred(self._tool(owner, name, arguments, ttl, call))

    async def _tool(
        self,
        owner: str,
        name: str,
        arguments: Mapping[str, Any],
        ttl: float,
        call: Callable[[], Deferred[str]],
    ) -> str:
        key = toolKey(owner, name, arguments)
        found = await self._get(TOOL_CACHE, key)
        if isinstance(found, dict) and isinstance(found.get("result"), str):
            return str(found["result"])
        result = await call()
        await self._put(TOOL_CACHE, key, {"tool": name, "result": result}, ttl)
        return result

    async def _get(self, namespace: str, key: str) -> Any:
        try:
            stored = await self.store.get(namespace, key)
        except CancelledError:
            raise
        except StoreError as error:
            log.warn(
                "cache: cannot read {namespace}: {error}", namespace=namespace, error=error.message
            )
            return None
        return None if stored is None else stored.document

    async def _put(self, namespace: str, key: str, document: Any, ttl: float) -> None:
        try:
            await self.store.put(namespace, key, document, ttl)
        except CancelledError:
            raise
        except StoreError as error:
            log.warn(
                "cache: cannot keep in {namespace}: {error}",
                namespace=namespace,
                error=error.message,
            )


__all__ = ["RUN_CACHE", "TOOL_CACHE", "ResponseCache", "runKey", "toolKey"]
