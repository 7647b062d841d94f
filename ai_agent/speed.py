# -*- test-case-name: tests.test_speed -*-
"""
The speed layer, as one switchable value: how the server writes its
answers, routes its requests and calls its upstreams.

Twisted's own behaviour is the reference (L{StockTwisted}): C{request.write}
and L{twisted.web.server.Request.process}, Klein's own rendering, and
L{twisted.web.client.Agent} on an L{HTTPConnectionPool} through treq for
upstream calls.  The speed layer (L{EagerTwisted}, the default) replaces
each of those with a leaner equivalent that writes the same bytes:

  - answers sent at once, not on the reactor's next turn
    (L{ai_agent._eager.EagerWrites}, through L{EagerChannel} and
    L{EagerRequest});
  - routes with a fixed path called by one dictionary look-up
    (L{DirectRouter}) instead of binding werkzeug's map;
  - upstream calls on L{WireAgent}, a lean HTTP/1.1 client, posting
    straight through it rather than through treq's per-request layers.

Each of these reaches private names of Twisted or Klein (all pinned by
C{tests/test_private_api.py}).  C{--stock-twisted} (C{ai-agent} and
C{twistd ai-agent}) or C{AI_AGENT_STOCK_TWISTED=1} in the environment
turns the whole layer off; the choice is made once, where the server is
assembled (L{ai_agent.tap.makeService}, L{ai_agent.runtime.buildRuntime}),
and the chosen layer is handed to what it builds.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

import attrs
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgent, IAgentEndpointFactory
from twisted.web.resource import IResource

from ai_agent._eager import EagerWrites
from ai_agent.headends._http import (
    EagerChannel,
    EagerRequest,
    ErrorFormatChooser,
    GuardedChannel,
    GuardedRequest,
    GuardedSite,
    HTTPPolicy,
)
from ai_agent.headends._site import APIRouter, DirectRouter, Mount
from ai_agent.providers._wire import WireAgent

#: The environment variable that turns the speed layer off (C{1}, C{true},
#: C{yes} or C{on}), as C{--stock-twisted} does.
STOCK_VARIABLE = "AI_AGENT_STOCK_TWISTED"

_TRUE = frozenset({"1", "true", "yes", "on"})


def stockRequested(environ: Mapping[str, str]) -> bool:
    """
    Whether C{environ} asks for stock Twisted (L{STOCK_VARIABLE}).
    """
    return environ.get(STOCK_VARIABLE, "").strip().lower() in _TRUE


class UpstreamPool(Protocol):
    """
    The connection pool under the upstream client: closed when the
    server stops.
    """

    def closeCachedConnections(self) -> Deferred[None]: ...


class UpstreamHTTPClient(HTTPClient):
    """
    treq's client, keeping its C{Agent} in view: the provider's hot path
    posts through the agent directly (see L{ai_agent.providers._http}).
    """

    def __init__(self, agent: IAgent, **kwargs: Any) -> None:
        super().__init__(agent, **kwargs)
        self.agent = agent


@attrs.frozen
class Upstream:
    """
    The HTTP client of upstream calls (providers, MCP servers over HTTP)
    and the pool of connections it keeps.
    """

    pool: UpstreamPool
    http: HTTPClient


class SpeedLayer(Protocol):
    """
    What the server is built on: its site, its router and its upstream
    client.
    """

    @property
    def name(self) -> str:
        """
        The layer's name, for the log line at start.
        """

    def site(
        self,
        resource: IResource,
        policy: HTTPPolicy,
        errorFormats: ErrorFormatChooser,
        logPath: str | None = None,
        reactor: Any = None,
    ) -> GuardedSite:
        """
        The site serving C{resource} under C{policy}, its channels' timers
        on C{reactor} (the global one by default).
        """

    def router(self, default: Any, mounts: Sequence[Mount] = ()) -> APIRouter:
        """
        The root resource sending each request to the API owning its path.
        """

    def upstream(
        self,
        reactor: Any,
        endpoints: IAgentEndpointFactory,
        maxIdlePerHost: int,
        idleTimeout: float,
    ) -> Upstream:
        """
        The upstream client, on pooled keep-alive connections made by
        C{endpoints}: at most C{maxIdlePerHost} kept idle per host, each for
        C{idleTimeout} seconds.
        """


@attrs.frozen
class StockTwisted:
    """
    Twisted as it ships: the reference the speed layer must match on the
    wire.
    """

    name: str = "stock Twisted"

    def site(
        self,
        resource: IResource,
        policy: HTTPPolicy,
        errorFormats: ErrorFormatChooser,
        logPath: str | None = None,
        reactor: Any = None,
    ) -> GuardedSite:
        return GuardedSite(
            resource,
            policy,
            errorFormats=errorFormats,
            logPath=logPath,
            reactor=reactor,
            requestFactory=GuardedRequest,
            newChannel=GuardedChannel,
        )

    def router(self, default: Any, mounts: Sequence[Mount] = ()) -> APIRouter:
        return APIRouter(default, mounts)

    def upstream(
        self,
        reactor: Any,
        endpoints: IAgentEndpointFactory,
        maxIdlePerHost: int,
        idleTimeout: float,
    ) -> Upstream:
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = maxIdlePerHost
        pool.cachedConnectionTimeout = round(idleTimeout)
        agent = Agent.usingEndpointFactory(reactor, endpoints, pool=pool)
        # treq's own client: every call goes through treq and Agent.
        return Upstream(pool, HTTPClient(agent))


@attrs.frozen
class EagerTwisted:
    """
    The speed layer (see the module's docstring).

    @ivar writes: the transports written in the current turn of the
        reactor, shared by the site (which marks them) and the upstream
        client (which sends them after each upstream read).
    """

    name: str = "speed layer"
    writes: EagerWrites = attrs.field(factory=EagerWrites, eq=False, repr=False)

    def site(
        self,
        resource: IResource,
        policy: HTTPPolicy,
        errorFormats: ErrorFormatChooser,
        logPath: str | None = None,
        reactor: Any = None,
    ) -> GuardedSite:
        return GuardedSite(
            resource,
            policy,
            errorFormats=errorFormats,
            logPath=logPath,
            reactor=reactor,
            requestFactory=EagerRequest,
            newChannel=self._channel,
        )

    def _channel(self) -> GuardedChannel:
        return EagerChannel(self.writes)

    def router(self, default: Any, mounts: Sequence[Mount] = ()) -> APIRouter:
        return DirectRouter(default, mounts)

    def upstream(
        self,
        reactor: Any,
        endpoints: IAgentEndpointFactory,
        maxIdlePerHost: int,
        idleTimeout: float,
    ) -> Upstream:
        pool = WireAgent(
            reactor,
            endpoints,
            maxIdlePerHost=maxIdlePerHost,
            idleTimeout=idleTimeout,
            writes=self.writes,
        )
        return Upstream(pool, UpstreamHTTPClient(pool))


def speedLayer(stock: bool) -> SpeedLayer:
    """
    A new speed layer for one server (one reactor): Twisted as it ships
    when C{stock}, else the speed layer.
    """
    return StockTwisted() if stock else EagerTwisted()


__all__ = [
    "STOCK_VARIABLE",
    "EagerTwisted",
    "SpeedLayer",
    "StockTwisted",
    "Upstream",
    "UpstreamHTTPClient",
    "UpstreamPool",
    "speedLayer",
    "stockRequested",
]
