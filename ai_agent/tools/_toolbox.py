# -*- test-case-name: tests.test_tools -*-
"""
The tools one agent may call: the tools of the MCP servers named in its
C{tools:} list, as C{<server>__<tool>}, the REST tools it names (a
C{restTools} name, or C{openapi:<document>} for all of a document's
operations), as C{rest__<name>}, and its sub-agents, as C{agent__<name>}.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Mapping, cast

import attrs
from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from ai_agent.agentfile import AgentSpec
from ai_agent.errors import AgentError
from ai_agent.events import EventSink
from ai_agent.limits import SubAgentLimiter
from ai_agent.providers import ToolSpec
from ai_agent.tools._jsonrpc import McpError
from ai_agent.tools._naming import toolName
from ai_agent.tools.mcp import McpManager, McpServer
from ai_agent.tools.rest import RestCatalog, RestTool
from ai_agent.tools.subagent import AgentRunner, SubAgentTool

log = Logger()

_Route = Callable[[Mapping[str, Any], EventSink], Deferred[str]]


def functionParameters(schema: Mapping[str, Any]) -> dict[str, Any]:
    """
    A tool's input schema as function parameters: an object schema, with
    C{type} and C{properties} present (some APIs insist on both).
    """
    parameters = dict(schema)
    parameters.setdefault("type", "object")
    if parameters["type"] == "object":
        parameters.setdefault("properties", {})
    return parameters


@attrs.define(eq=False)
class AgentToolBox:
    """
    The L{ai_agent.session.ToolBox} of one agent run.

    @ivar startTimeout: how long L{specs} waits for a server that is
        starting for the first time.
    """

    agent: AgentSpec
    mcp: McpManager | None
    subAgents: tuple[SubAgentTool, ...] = ()
    startTimeout: float = 60.0
    #: The agent's REST tools, and the C{tools} entries that chose them
    #: (every other entry names an MCP server).
    restTools: tuple[RestTool, ...] = ()
    restEntries: frozenset[str] = frozenset()
    instructions: list[str] = attrs.field(factory=list, init=False)
    unavailable: dict[str, str] = attrs.field(factory=dict, init=False)
    _routes: dict[str, _Route] = attrs.field(factory=dict, init=False)
    #: The principal the run is for; its sub-agents run for it too.
    owner: str = attrs.field(default="", init=False)
    _cached: dict[str, float | None] = attrs.field(factory=dict, init=False)

    def specs(self) -> Deferred[list[ToolSpec]]:
        """
        The tools, once every MCP server the agent uses has listed its
        tools; a server that cannot start is left out (and logged).
        """
        if not self.agent.tools and not self.subAgents:
            # Nothing to list (the common agent of a plain chat): no
            # coroutine, no DeferredList.
            self._routes = {}
            return succeed([])
        return Deferred.fromCoroutine(self._specs())

    async def _specs(self) -> list[ToolSpec]:
        specs: list[ToolSpec] = []
        routes: dict[str, _Route] = {}
        servers: list[McpServer] = []
        for name in self.agent.tools:
            if name in self.restEntries:
                continue
            try:
                assert self.mcp is not None, "an agent with tools needs an McpManager"
                servers.append(self.mcp.server(name))
            except McpError as error:
                self._leftOut(name, error.message)
        listings = await DeferredList(
            [server.toolsForSession(self.startTimeout) for server in servers],
            consumeErrors=True,
        )
        for server, (ok, value) in zip(servers, listings, strict=True):
            if not ok:
                failure = cast(Failure, value)
                if failure.check(CancelledError):
                    failure.raiseException()
                self._leftOut(server.name, failure.getErrorMessage())
                continue
            if server.instructions and server.instructions.strip():
                # What the server says about using its tools goes to the
                # model with the agent's prompt.
                self.instructions.append(
                    f"Instructions of the {server.name} tools ({server.name}__*):\n"
                    + server.instructions.strip()
                )
            for tool in value:
                exposed = toolName(server.name, tool.name)
                if exposed in routes:
                    log.warn(
                        "agent {agent}: MCP server {server} offers two tools named {tool}"
                        " for the model; only the first is kept",
                        agent=self.agent.name,
                        server=server.name,
                        tool=exposed,
                    )
                    continue
                routes[exposed] = partial(self._callMcp, server, tool.name)
                ttl = server.config.cacheTTL(tool.name)
                if ttl is not None:
                    self._cached[exposed] = ttl
                specs.append(
                    ToolSpec(exposed, tool.description, functionParameters(tool.inputSchema))
                )
        for rest in self.restTools:
            if rest.name in routes:
                log.warn(
                    "agent {agent}: the REST tool {tool} is already an MCP tool; left out",
                    agent=self.agent.name,
                    tool=rest.name,
                )
                continue
            routes[rest.name] = rest.call
            if rest.config.cache is not None:
                self._cached[rest.name] = rest.config.cache
            specs.append(rest.toolSpec())
        for sub in self.subAgents:
            if sub.name in routes:
                log.warn(
                    "agent {agent}: the sub-agent tool {tool} is already an MCP tool; left out",
                    agent=self.agent.name,
                    tool=sub.name,
                )
                continue
            routes[sub.name] = partial(self._callSubAgent, sub)
            specs.append(sub.toolSpec())
        self._routes = routes
        return specs

    def cacheTTL(self, name: str) -> float | None:
        """
        How long results of the tool the model calls C{name} are cached
        (its MCP server's C{cache} or C{toolsCache}), or L{None}.
        """
        return self._cached.get(name)

    def _leftOut(self, server: str, reason: str) -> None:
        self.unavailable[server] = reason
        log.warn(
            "agent {agent}: the tools of MCP server {server} are left out: {reason}",
            agent=self.agent.name,
            server=server,
            reason=reason,
        )

    def call(self, name: str, arguments: Mapping[str, Any], sink: EventSink) -> Deferred[str]:
        """
        Run the tool the model called C{name}.
        """
        route = self._routes.get(name)
        if route is None:
            server = name.partition("__")[0]
            if server in self.unavailable:
                return fail(
                    AgentError(
                        f"the tool {name!r} is unavailable right now:"
                        f" {self.unavailable[server]}; answer without it"
                    )
                )
            return fail(AgentError(f"there is no tool named {name!r}"))
        return route(arguments, sink)

    def _callSubAgent(
        self, sub: SubAgentTool, arguments: Mapping[str, Any], sink: EventSink
    ) -> Deferred[str]:
        return sub.call(arguments, sink, self.owner)

    def _callMcp(
        self, server: McpServer, tool: str, arguments: Mapping[str, Any], sink: EventSink
    ) -> Deferred[str]:
        # The session times the call out at toolTimeout and says so; the
        # request's own timeout is only a backstop.  Waiting for a server
        # that is restarting ends at toolTimeout with an error saying why.
        timeout = self.agent.toolTimeout
        return server.callTool(tool, arguments, timeout + 1.0, readyTimeout=timeout)


@attrs.define(eq=False)
class ToolBoxFactory:
    """
    Builds the tool box of each run (the C{tools} of
    L{ai_agent.session.SessionRunner}).

    @ivar agents: every loaded agent by absolute path (sub-agents included).
    @ivar runner: runs sub-agents; set once the runner exists.
    """

    agents: Mapping[str, AgentSpec]
    mcp: McpManager | None = None
    runner: AgentRunner | None = None
    startTimeout: float = 60.0
    subAgentLimiter: SubAgentLimiter | None = None
    rest: RestCatalog = attrs.field(factory=RestCatalog)

    def __call__(self, agent: AgentSpec) -> AgentToolBox:
        subAgents: list[SubAgentTool] = []
        if agent.agents:
            assert self.runner is not None, "ToolBoxFactory.runner is not set"
            for path in agent.agents:
                subAgents.append(SubAgentTool(self.agents[path], self.runner, self.subAgentLimiter))
        restTools, restEntries = self.rest.select(agent.tools)
        return AgentToolBox(
            agent, self.mcp, tuple(subAgents), self.startTimeout, restTools, restEntries
        )


__all__ = ["AgentToolBox", "ToolBoxFactory", "functionParameters"]
