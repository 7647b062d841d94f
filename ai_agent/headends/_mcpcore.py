# -*- test-case-name: tests.test_mcp_headend -*-
"""
The MCP server's protocol, whatever carries it: served agents as MCP tools,
JSON-RPC requests answered, a C{tools/call} run on the same pool as the
other APIs with its progress sent as C{notifications/progress}.

The transports (L{ai_agent.headends.mcp}: Streamable HTTP; and the
C{--mcp stdio} mode of the command) bring the messages in and take the
answers and notifications out; this module owns what they mean.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Mapping

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ai_agent import __version__
from ai_agent.accounting import RunLabels
from ai_agent.agentfile import InvalidInputError
from ai_agent.errors import AgentError
from ai_agent.events import (
    PROGRESS_TYPES,
    ContentDelta,
    Event,
    Finished,
    FinishReason,
    ModelAnswering,
    progressText,
)
from ai_agent.headends._api import runDetached
from ai_agent.headends._request import loadBody
from ai_agent.limits import MAX_RUN_ANSWER
from ai_agent.pool import RunPool
from ai_agent.principals import Principal, visibleAgents
from ai_agent.providers import ChatMessage
from ai_agent.redaction import Redactor, safeError, shorten
from ai_agent.registry import AgentRegistry, ServedAgent
from ai_agent.request import RunRequest
from ai_agent.session import SessionRunner

log = Logger()

#: The handshake-era versions served, newest first (C{initialize}).
HANDSHAKE_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26")

#: The per-request (no handshake) version: C{server/discover}, C{_meta}
#: and the C{Mcp-Method} / C{Mcp-Name} headers on each request.
MODERN_VERSION = "2026-07-28"

#: Every version served.
SUPPORTED_VERSIONS = (*HANDSHAKE_VERSIONS, MODERN_VERSION)

#: Seconds a C{tools/call} with a C{progressToken} may go without a
#: C{notifications/progress} before one is sent anyway ("still working"),
#: for clients whose timeout restarts on progress.
HEARTBEAT_INTERVAL = 5.0

#: The C{_meta} keys of the 2026-07-28 per-request envelope.
META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"

# JSON-RPC error codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
HEADER_MISMATCH = -32020
UNSUPPORTED_VERSION = -32022

#: MCP's tool names (SEP-986): 1 to 128 of these characters.
TOOL_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")

SERVER_NAME = "ai-agent"


class ProtocolError(Exception):
    """
    A JSON-RPC error answer: a protocol mistake (not a failed run, which is
    a tool result with C{isError}).

    @ivar status: the HTTP status it is answered with on Streamable HTTP.
    """

    def __init__(self, code: int, message: str, status: int = 400, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.data = data

    def error(self) -> dict[str, Any]:
        """
        The JSON-RPC C{error} member.
        """
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


def errorMessage(requestId: Any, error: ProtocolError) -> dict[str, Any]:
    """
    A JSON-RPC error response.
    """
    return {"jsonrpc": "2.0", "id": requestId, "error": error.error()}


def resultMessage(requestId: Any, result: Mapping[str, Any]) -> dict[str, Any]:
    """
    A JSON-RPC result response.
    """
    return {"jsonrpc": "2.0", "id": requestId, "result": dict(result)}


def notification(method: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """
    A JSON-RPC notification.
    """
    return {"jsonrpc": "2.0", "method": method, "params": dict(params)}


@attrs.frozen
class Message:
    """
    One validated incoming JSON-RPC message.

    @ivar id: the request id (L{None} for a notification or a response).
    @ivar method: L{None} for a response to one of our requests.
    """

    id: Any
    method: str | None
    params: Mapping[str, Any]
    isRequest: bool

    @property
    def isNotification(self) -> bool:
        return self.method is not None and not self.isRequest


def parseMessage(body: bytes) -> Message:
    """
    Parse one JSON-RPC message, with the other APIs' checks of a body
    (L{loadBody}: UTF-8, nesting, the bound on JSON values that keeps a
    parse short, no C{NaN}, no lone surrogate).

    @raise ProtocolError: -32700 for bytes that are not JSON, -32600 for
        JSON that is not one JSON-RPC 2.0 message (a batch included) or
        holds more values than a body may.
    """
    try:
        data = loadBody(body)
    except AgentError as error:
        if error.code == "request_too_complex":
            raise ProtocolError(INVALID_REQUEST, f"Invalid Request: {error.message}") from None
        raise ProtocolError(PARSE_ERROR, f"Parse error: {shorten(error.message, 200)}") from None
    return validateMessage(data)


def validateMessage(data: Any) -> Message:
    """
    Check a decoded JSON value as one JSON-RPC message.
    """
    if isinstance(data, list):
        raise ProtocolError(
            INVALID_REQUEST,
            "Invalid Request: JSON-RPC batches are not supported (MCP 2025-06-18 removed"
            " them); send one message per request",
        )
    if not isinstance(data, dict) or data.get("jsonrpc") != "2.0":
        raise ProtocolError(INVALID_REQUEST, "Invalid Request: not a JSON-RPC 2.0 message")
    method = data.get("method")
    hasId = "id" in data
    requestId = data.get("id")
    if hasId and (isinstance(requestId, bool) or not isinstance(requestId, (str, int))):
        raise ProtocolError(INVALID_REQUEST, "Invalid Request: id must be a string or an integer")
    if method is None:
        if hasId and ("result" in data or "error" in data):
            return Message(requestId, None, {}, False)
        raise ProtocolError(INVALID_REQUEST, "Invalid Request: method is required")
    if not isinstance(method, str):
        raise ProtocolError(INVALID_REQUEST, "Invalid Request: method must be a string")
    params = data.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ProtocolError(INVALID_PARAMS, "Invalid params: params must be an object")
    return Message(requestId if hasId else None, method, params, hasId)


def toolName(agentId: str) -> str:
    """
    The MCP tool name of an agent served as C{agentId}: the id itself when
    MCP allows it (1 to 128 of C{[A-Za-z0-9_.-]}), else the id with every
    other character made C{_} and cut to 128.
    """
    if TOOL_NAME.fullmatch(agentId):
        return agentId
    return (re.sub(r"[^A-Za-z0-9_.\-]", "_", agentId) or "_")[:128]


def toolsOf(agents: list[ServedAgent]) -> dict[str, ServedAgent]:
    """
    The agents by tool name; of two agents whose ids map to the same name,
    the first keeps it and the second is left out (logged).
    """
    tools: dict[str, ServedAgent] = {}
    for agent in agents:
        name = toolName(agent.id)
        if name in tools:
            log.warn(
                "MCP: agent {agent} is not offered as a tool: its name {name} is taken",
                agent=agent.id,
                name=name,
            )
            continue
        tools[name] = agent
    return tools


def _hasOpenWorldTools(agent: ServedAgent) -> bool:
    # MCP servers and REST/OpenAPI tools reach outside the server.
    return bool(agent.spec.tools)


def toolObject(name: str, agent: ServedAgent) -> dict[str, Any]:
    """
    One agent as an MCP tool: name, title, description (its description and
    usage), C{inputSchema} (C{AgentSpec.inputSchema}), C{outputSchema} for
    an agent whose output is JSON with a schema, and the annotations that
    are true of it.
    """
    spec = agent.spec
    description = spec.description or f"The {agent.id} agent."
    if spec.usage:
        description = f"{description}\n\nUsage: {spec.usage}"
    hasTools = bool(spec.tools or spec.agents)
    tool: dict[str, Any] = {
        "name": name,
        "title": agent.id,
        "description": description,
        "inputSchema": dict(spec.inputSchema()),
        "annotations": {
            "title": agent.id,
            # Without tools the agent only answers; with them it may act.
            "readOnlyHint": not hasTools,
            "openWorldHint": _hasOpenWorldTools(agent),
        },
    }
    schema = structuredSchema(agent)
    if schema is not None:
        tool["outputSchema"] = dict(schema)
    return tool


def structuredSchema(agent: ServedAgent) -> Mapping[str, Any] | None:
    """
    The C{outputSchema} of an agent whose output is JSON with a schema of
    an object (MCP 2025's C{structuredContent} is an object), else L{None}.
    """
    output = agent.spec.output
    if output.format != "json" or output.schema is None:
        return None
    if output.schema.get("type") != "object":
        return None
    return output.schema


#: Sends one JSON-RPC message (a notification) to the client.
Send = Callable[[dict[str, Any]], None]


@attrs.define(eq=False)
class _CallProgress:
    """
    The C{notifications/progress} of one C{tools/call}: one per progress
    event, plus a heartbeat after L{HEARTBEAT_INTERVAL} seconds of silence.
    """

    token: str | int
    send: Send
    reactor: IReactorTime
    interval: float
    count: int = 0
    _timer: IDelayedCall | None = None

    def start(self) -> None:
        self.emit("started")

    def emit(self, message: str) -> None:
        self.count += 1
        self.send(
            notification(
                "notifications/progress",
                {"progressToken": self.token, "progress": self.count, "message": message},
            )
        )
        self._arm()

    def _arm(self) -> None:
        if self.interval <= 0:
            return
        timer = self._timer
        if timer is not None and timer.active():
            timer.reset(self.interval)
        else:
            self._timer = self.reactor.callLater(self.interval, self._beat)

    def _beat(self) -> None:
        self._timer = None
        self.emit("still working")

    def stop(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()


@attrs.define(eq=False)
class McpCore:
    """
    The MCP methods over one registry, runner and pool (swapped together
    on a reload, as the other headends' are).

    @ivar heartbeat: seconds between C{notifications/progress} while a run
        says nothing (L{HEARTBEAT_INTERVAL}; 0: none).
    """

    registry: AgentRegistry
    runner: SessionRunner
    pool: RunPool
    reactor: IReactorTime
    heartbeat: float = HEARTBEAT_INTERVAL
    maxAnswer: int = MAX_RUN_ANSWER
    redactor: Redactor = attrs.field(factory=Redactor)

    # -- methods ------------------------------------------------------

    def capabilities(self) -> dict[str, Any]:
        return {"tools": {"listChanged": True}}

    def initialize(self, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """
        The C{initialize} result: the client's version when served, else the
        newest handshake version.

        @return: the negotiated version and the result.
        """
        requested = params.get("protocolVersion")
        version = requested if requested in HANDSHAKE_VERSIONS else HANDSHAKE_VERSIONS[0]
        return version, {
            "protocolVersion": version,
            "capabilities": self.capabilities(),
            "serverInfo": {"name": SERVER_NAME, "version": __version__},
            "instructions": "Each tool is an agent: call it with its input and it answers.",
        }

    def discover(self) -> dict[str, Any]:
        """
        The C{server/discover} result (2026-07-28).
        """
        return {
            "supportedVersions": list(SUPPORTED_VERSIONS),
            "capabilities": self.capabilities(),
            "instructions": "Each tool is an agent: call it with its input and it answers.",
            "resultType": "complete",
            "ttlMs": 0,
            "cacheScope": "private",
            "_meta": {META_SERVER_INFO: {"name": SERVER_NAME, "version": __version__}},
        }

    def tools(self, principal: Principal) -> dict[str, ServedAgent]:
        """
        The tools C{principal} may call, by name.
        """
        return toolsOf(visibleAgents(self.registry, principal))

    def listTools(self, principal: Principal, modern: bool = False) -> dict[str, Any]:
        """
        The C{tools/list} result: every agent C{principal} may use, one page.
        """
        result: dict[str, Any] = {
            "tools": [toolObject(name, agent) for name, agent in self.tools(principal).items()]
        }
        if modern:
            result.update(resultType="complete", ttlMs=0, cacheScope="private")
        return result

    def findTool(self, principal: Principal, params: Mapping[str, Any]) -> ServedAgent:
        """
        The agent a C{tools/call} names.

        @raise ProtocolError: -32602 for a missing or unknown name, or
            arguments that are not an object.
        """
        name = params.get("name")
        if not isinstance(name, str) or not name:
            raise ProtocolError(INVALID_PARAMS, "Invalid params: name must be a non-empty string")
        tools = self.tools(principal)
        agent = tools.get(name)
        if agent is None:
            served = ", ".join(tools) or "none"
            raise ProtocolError(
                INVALID_PARAMS,
                f"Unknown tool: {shorten(repr(name), 200)} (tools: {shorten(served, 300)})",
            )
        arguments = params.get("arguments", {})
        if arguments is not None and not isinstance(arguments, dict):
            raise ProtocolError(INVALID_PARAMS, "Invalid params: arguments must be an object")
        return agent

    async def callTool(
        self,
        principal: Principal,
        params: Mapping[str, Any],
        send: Send,
        requestId: str = "mcp",
    ) -> dict[str, Any]:
        """
        Run the agent a C{tools/call} names on its arguments; its progress
        goes to C{send} as C{notifications/progress} when the call carries
        a C{progressToken}.

        @return: the C{tools/call} result; a failed run (bad arguments, a
            full queue, a provider's error) is a result with C{isError}.
        @raise ProtocolError: the call itself is malformed.
        @raise CancelledError: the call was cancelled (the run is stopped).
        """
        agent = self.findTool(principal, params)
        arguments = params.get("arguments") or {}
        try:
            prompt = agent.spec.input.userMessage(arguments)
        except InvalidInputError as error:
            return toolError(f"{toolName(agent.id)} {error}")
        meta = params.get("_meta")
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        progress = None
        if isinstance(token, (str, int)) and not isinstance(token, bool):
            progress = _CallProgress(token, send, self.reactor, self.heartbeat)
        answer: list[str] = []
        turns = [0]

        def onEvent(event: Event) -> None:
            if isinstance(event, ContentDelta):
                answer.append(event.text)
            elif progress is None:
                return
            elif isinstance(event, ModelAnswering):
                turns[0] += 1
                progress.emit(f"turn {turns[0]}: {event.model} answering")
            elif isinstance(event, PROGRESS_TYPES):
                progress.emit(progressText(event).strip())

        labels = RunLabels(requestId=requestId, stream=progress is not None)
        run = RunRequest((ChatMessage("user", prompt),), labels=labels, owner=principal.name)
        # The pipeline's run layer, apart from any HTTP request: limits, a
        # slot of the pool, redaction, the answer's bound (as the HTTP APIs
        # have it), the pool's stop at shutdown.
        try:
            finished = await runDetached(
                self, agent, run, principal, onEvent, None if progress is None else progress.start
            )
        except AgentError as error:
            return toolError(self._reason(error), retryAfter=error.retryAfter)
        finally:
            if progress is not None:
                progress.stop()
        return self._result(agent, "".join(answer), finished)

    def _redactor(self) -> Redactor:
        """
        The configured secrets kept out of a call's progress and result.
        """
        return self.redactor

    def _reason(self, error: AgentError) -> str:
        return safeError(error, self.redactor, inBand=True).message

    def _result(self, agent: ServedAgent, text: str, finished: Finished) -> dict[str, Any]:
        if finished.reason == FinishReason.MAX_TOKENS:
            text += "\n[the answer was cut at the agent's output token limit]"
        result: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": False}
        if structuredSchema(agent) is not None:
            try:
                value = json.loads(text)
            except ValueError:
                value = None
            if not isinstance(value, dict):
                return toolError(
                    f"{agent.id} did not answer the JSON object its output schema declares"
                )
            result["structuredContent"] = value
        return result


def toolError(reason: str, retryAfter: float | None = None) -> dict[str, Any]:
    """
    A C{tools/call} result saying the run failed: C{isError}, the reason as
    text, and for a full queue the seconds to wait in C{_meta.retryAfter}.
    """
    result: dict[str, Any] = {"content": [{"type": "text", "text": reason}], "isError": True}
    if retryAfter is not None:
        result["_meta"] = {"retryAfter": max(1, round(retryAfter))}
    return result


__all__ = [
    "HANDSHAKE_VERSIONS",
    "HEARTBEAT_INTERVAL",
    "MODERN_VERSION",
    "McpCore",
    "Message",
    "ProtocolError",
    "errorMessage",
    "notification",
    "parseMessage",
    "resultMessage",
    "toolName",
    "toolObject",
]
