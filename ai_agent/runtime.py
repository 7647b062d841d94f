# -*- test-case-name: tests.test_cli -*-
"""
Assembly shared by the server and direct mode: configuration, agents,
the HTTP client with its own connection pool, providers and the runner.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import attrs
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool

from ai_agent.config import Config, describeMissing, loadConfig
from ai_agent.errors import AgentError
from ai_agent.providers import Provider, makeProvider
from ai_agent.registry import AgentRegistry, loadRegistry
from ai_agent.session import SessionRunner, splitModel

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


@attrs.define
class Runtime:
    """
    Everything a run needs, built once per process.
    """

    config: Config
    registry: AgentRegistry
    pool: HTTPConnectionPool
    http: HTTPClient
    providers: ProviderSet
    runner: SessionRunner

    def close(self) -> Deferred[None]:
        """
        Close the upstream connection pool.
        """
        return self.pool.closeCachedConnections()


def buildRuntime(
    reactor: Any,
    agentPaths: Sequence[str],
    configFile: str | None = None,
    connections: int = 16,
    cwd: str | None = None,
    environ: dict[str, str] | None = None,
) -> Runtime:
    """
    Load configuration and agents and build the runner.

    @raise ai_agent.errors.ConfigurationError: when a file is invalid.
    """
    environ = dict(os.environ if environ is None else environ)
    cwd = os.getcwd() if cwd is None else cwd
    agentDirs = [os.path.dirname(os.path.abspath(path)) for path in agentPaths]
    config = loadConfig(
        configFile=configFile,
        cwd=cwd,
        agentDirs=agentDirs,
        home=environ.get("HOME"),
        environ=environ,
    )
    registry = loadRegistry(agentPaths, config)
    warnMissingKeys(registry, config)
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = max(connections, 2)
    pool.cachedConnectionTimeout = 120
    http = HTTPClient(Agent(reactor, pool=pool))
    providers = ProviderSet(config, http, reactor)
    runner = SessionRunner(providers, reactor)
    return Runtime(config, registry, pool, http, providers, runner)


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
            log.warn("{problem}; requests to agents using it will fail", problem=problem)




__all__ = ["ProviderSet", "Runtime", "buildRuntime", "warnMissingKeys"]
