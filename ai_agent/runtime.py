# -*- test-case-name: tests.test_cli -*-
"""
Assembly shared by the server and direct mode: configuration, agents,
the HTTP client with its own connection pool, providers, MCP servers, tools
and the runner.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import attrs
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.web.client import URI, BrowserLikePolicyForHTTPS
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from ai_agent.cache import ResponseCache
from ai_agent.clienttools import TurnStore
from ai_agent.config import Config, describeMissing, loadConfig
from ai_agent.errors import AgentError, ConfigurationError
from ai_agent.limits import SubAgentLimiter
from ai_agent.observe import NULL_OBSERVER, Observer
from ai_agent.providers import CONNECT_TIMEOUT, Provider, makeProvider
from ai_agent.redaction import Redactor, SecretScrub
from ai_agent.registry import AgentRegistry, agentFiles, loadRegistry
from ai_agent.sealing import Sealer
from ai_agent.session import SessionRunner, splitModel
from ai_agent.speed import (
    SpeedLayer,
    UpstreamPool,
    speedLayer,
    stockRequested,
)
from ai_agent.store import MemoryStore, RunStore, StoreTurnStore
from ai_agent.tools import McpManager, ToolBoxFactory
from ai_agent.tools.rest import OPENAPI_PREFIX, RestCatalog

log = Logger()


@attrs.define
class ProviderSet:
    """
    Providers by configured name, built on first use and shared by every
    session.
    """

    config: Config
    http: HTTPClient
    reactor: Any
    _built: dict[str, Provider] = attrs.field(factory=dict)

    def __call__(self, name: str) -> Provider:
        provider = self._built.get(name)
        if provider is None:
            entry = self.config.providers.get(name)
            if entry is None:
                raise AgentError(f"no provider named {name!r} is configured", 500)
            provider = makeProvider(entry, self.http, self.reactor)
            self._built[name] = provider
        return provider

    def stop(self) -> Deferred[None]:
        """
        Stop what the built providers run in this process (embedded models).
        """

        async def stop() -> None:
            for provider in list(self._built.values()):
                stopping = getattr(provider, "stop", None)
                if stopping is not None:
                    await stopping()

        return Deferred.fromCoroutine(stop())


@attrs.define
class Runtime:
    """
    Everything a run needs, built once per process.
    """

    config: Config
    registry: AgentRegistry
    #: The upstream client and its connection pool (shared by the providers
    #: and MCP servers over HTTP).
    pool: UpstreamPool
    http: HTTPClient
    providers: ProviderSet
    runner: SessionRunner
    mcp: McpManager
    tools: ToolBoxFactory
    #: The run store (hybrid runs' hidden turns, stored responses), or
    #: L{None} with C{--store none} and in direct mode.  The server opens it
    #: when it starts and closes it when it stops (L{ai_agent.store.StoreService}).
    store: RunStore | None = None
    #: Seals the hidden turns of C{store: false} Responses runs, under the
    #: configuration's C{sealingKeys} (L{ai_agent.sealing}); a reload
    #: changes its keys in place.
    sealer: Sealer = attrs.field(factory=lambda: Sealer.fromSecrets(()))
    #: Scrubs the configured secrets from what is traced and logged (not
    #: answered); its redactor is replaced on reload.
    scrub: SecretScrub = attrs.field(factory=SecretScrub)
    #: What the server is built on: the speed layer or stock Twisted
    #: (L{ai_agent.speed}); its site is made by the same layer.
    speed: SpeedLayer = attrs.field(factory=lambda: speedLayer(stock=False))

    def close(self) -> Deferred[None]:
        """
        Stop the MCP servers, then close the upstream connection pool.
        """

        async def close() -> None:
            await self.mcp.stopAll()
            await self.providers.stop()
            await self.pool.closeCachedConnections()

        return Deferred.fromCoroutine(close())


def buildRuntime(
    reactor: Any,
    agentPaths: Sequence[str],
    configFile: str | None = None,
    connections: int = 16,
    cwd: str | None = None,
    environ: dict[str, str] | None = None,
    observer: Observer = NULL_OBSERVER,
    store: RunStore | None = None,
    speed: SpeedLayer | None = None,
) -> Runtime:
    """
    Load configuration and agents and build the runner.

    @param speed: the speed layer or stock Twisted (L{ai_agent.speed}); by
        default, stock Twisted when C{environ} sets C{AI_AGENT_STOCK_TWISTED}.

    MCP servers are not started here: L{Runtime.mcp} is a service that
    starts the servers agents use, and a server also starts on first use.

    @raise ai_agent.errors.ConfigurationError: when a file is invalid, or an
        agent names an MCP server the configuration does not define.
    """
    environ = dict(os.environ if environ is None else environ)
    cwd = os.getcwd() if cwd is None else cwd
    agentPaths = agentFiles(agentPaths)
    agentDirs = [os.path.dirname(os.path.abspath(path)) for path in agentPaths]
    config = loadConfig(
        configFile=configFile,
        cwd=cwd,
        agentDirs=agentDirs,
        home=environ.get("HOME"),
        environ=environ,
    )
    registry = loadRegistry(agentPaths, config)
    checkToolServers(registry, config)
    warnMissingKeys(registry, config)
    if speed is None:
        speed = speedLayer(stockRequested(environ))
    endpoints = CachingEndpointFactory(reactor, CONNECT_TIMEOUT)
    upstream = speed.upstream(
        reactor, endpoints, maxIdlePerHost=max(connections, 2), idleTimeout=120
    )
    pool, http = upstream.pool, upstream.http
    providers = ProviderSet(config, http, reactor)
    scrub = SecretScrub(Redactor.fromConfig(config))
    mcp = McpManager(
        config.mcpServers,
        reactor,
        http,
        environ,
        used=usedToolServers(registry, config),
        scrub=scrub,
    )
    rest = RestCatalog.build(config, http, reactor, usedOpenApiDocuments(registry))
    tools = ToolBoxFactory(
        registry.byPath, mcp, subAgentLimiter=SubAgentLimiter(reactor), rest=rest
    )
    # Hidden turns of hybrid runs go to the run store when there is one (so
    # they outlive a restart and are shared by instances), else to an
    # in-memory store of this process's own: the same expiry (on the
    # reactor's clock) and bounds.
    # With --store none (and in direct mode) hidden turns and cached answers
    # are kept in one expiring in-memory store.
    kept: RunStore = MemoryStore(reactor) if store is None else store
    turns: TurnStore = StoreTurnStore(kept)
    runner = SessionRunner(
        providers,
        reactor,
        tools,
        pricing=config.pricing,
        turns=turns,
        observer=observer,
        agents=registry.byPath,
        limiter=tools.subAgentLimiter,
        # Agents' and tools' cache: the run store (shared by instances), or
        # this process's memory with --store none.
        cache=ResponseCache(kept),
    )
    tools.runner = runner
    # Spans carrying messages and tool text scrub the secrets responses do.
    observer.redactWith(scrub)
    return Runtime(
        config,
        registry,
        pool,
        http,
        providers,
        runner,
        mcp,
        tools,
        store,
        Sealer.fromSecrets(config.sealingKeys),
        scrub,
        speed,
    )


def usedToolServers(registry: AgentRegistry, config: Config | None = None) -> list[str]:
    """
    The MCP servers the loaded agents use, sorted (without their REST tool
    entries, when C{config} is given).
    """
    return sorted(
        {
            name
            for spec in registry.byPath.values()
            for name in spec.tools
            if config is None or name in config.mcpServers
        }
    )


def usedOpenApiDocuments(registry: AgentRegistry) -> list[str]:
    """
    The C{openapiSpecs} documents the loaded agents choose
    (C{openapi:<name>} entries), sorted.
    """
    return sorted(
        {
            name.removeprefix(OPENAPI_PREFIX)
            for spec in registry.byPath.values()
            for name in spec.tools
            if name.startswith(OPENAPI_PREFIX)
        }
    )


def checkToolServers(registry: AgentRegistry, config: Config) -> None:
    """
    Refuse agents that name an MCP server the configuration does not define,
    or that have two sub-agents offered under the same tool name.

    @raise ConfigurationError: naming the agent file and the server (or the
        sub-agents).
    """
    known = ", ".join(sorted(config.mcpServers)) or "none"
    for spec in registry.byPath.values():
        for server in spec.tools:
            if server.startswith(OPENAPI_PREFIX):
                document = server.removeprefix(OPENAPI_PREFIX)
                if document not in config.openapiSpecs:
                    documents = ", ".join(sorted(config.openapiSpecs)) or "none"
                    raise ConfigurationError(
                        f"{spec.path}: 'tools' names OpenAPI document {document!r}, which is"
                        f" not configured in openapiSpecs (configured: {documents})"
                    )
            elif server not in config.mcpServers and server not in config.restTools:
                rest = ", ".join(sorted(config.restTools)) or "none"
                raise ConfigurationError(
                    f"{spec.path}: 'tools' names {server!r}, which is neither an MCP server"
                    f" (configured: {known}) nor a REST tool (configured: {rest})"
                )
        names: dict[str, str] = {}
        for path in spec.agents:
            name = registry.byPath[path].name
            if name in names:
                raise ConfigurationError(
                    f"{spec.path}: the sub-agents {names[name]} and {path} would both be"
                    f" the tool agent__{name}; give one a different toolName"
                )
            names[name] = path


@implementer(IAgentEndpointFactory)
@attrs.define
class CachingEndpointFactory:
    """
    Client endpoints for upstream URLs, built once per scheme, host and
    port.  Twisted's own factory builds a new endpoint for every request,
    which spends noticeable time encoding the host name (IDNA) even when a
    pooled connection is then reused.
    """

    reactor: Any
    connectTimeout: float
    _tls: BrowserLikePolicyForHTTPS = attrs.field(factory=BrowserLikePolicyForHTTPS)
    _cache: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = attrs.field(factory=dict)

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        """
        The endpoint connecting to C{uri}'s host and port (over TLS for
        C{https}).
        """
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._cache.get(key)
        if endpoint is None:
            host = uri.host.decode("ascii")
            endpoint = HostnameEndpoint(self.reactor, host, uri.port, timeout=self.connectTimeout)
            if uri.scheme == b"https":
                endpoint = wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
            elif uri.scheme != b"http":
                raise SchemeNotSupported(f"unsupported scheme: {uri.scheme!r}")
            self._cache[key] = endpoint
        return endpoint


def warnMissingKeys(registry: AgentRegistry, config: Config) -> None:
    """
    Log one warning per provider an agent uses whose key variable is unset.
    """
    used = sorted(
        {splitModel(model)[0] for spec in registry.byPath.values() for model in spec.models}
    )
    for name in used:
        entry = config.providers.get(name)
        if entry is None:
            continue
        problem = describeMissing(entry)
        if problem is not None:
            log.warn(
                "{problem}; agents skip its models for their next ones, and fail without one",
                problem=problem,
            )


__all__ = [
    "CachingEndpointFactory",
    "ProviderSet",
    "Runtime",
    "buildRuntime",
    "checkToolServers",
    "usedOpenApiDocuments",
    "usedToolServers",
    "warnMissingKeys",
]
