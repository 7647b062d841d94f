# -*- test-case-name: tests.test_firstrun -*-
"""
Live changes: SIGHUP re-reads the agent files (and directories) and the
configuration, and swaps the served set as one unit.

New requests get the new set; requests already running keep the agent, the
runner and the providers they started with.  An invalid file keeps the old
set and logs why.  Providers whose configuration did not change are kept
(so an embedded model stays loaded), and so are the MCP servers when their
configuration did not change; what was replaced is stopped after the
shutdown timeout, by which time the runs using it have ended.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Callable, Sequence

import attrs
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger

from ai_agent.config import loadConfig
from ai_agent.errors import ConfigurationError
from ai_agent.redaction import Redactor
from ai_agent.registry import agentFiles, loadRegistry
from ai_agent.runtime import (
    ProviderSet,
    Runtime,
    checkToolServers,
    usedOpenApiDocuments,
    usedToolServers,
    warnMissingKeys,
)
from ai_agent.tools import McpManager
from ai_agent.tools.rest import RestCatalog

log = Logger()


@attrs.define(eq=False)
class Reloader:
    """
    Rebuilds a L{Runtime}'s agents and configuration in place and points
    the headends at the new set.

    @ivar headends: objects with C{registry} and C{runner} attributes (the
        headends serving this runtime).
    @ivar parent: the service that owns the MCP manager (stops it at
        shutdown).
    @ivar grace: seconds before replaced providers and MCP servers are
        stopped.
    @ivar onReload: called after each successful reload (to tell worker
        processes).
    """

    reactor: Any
    runtime: Runtime
    agentPaths: Sequence[str]
    configFile: str | None
    headends: list[Any] = attrs.field(factory=list)
    parent: MultiService | None = None
    grace: float = 30.0
    cwd: str | None = None
    environ: dict[str, str] | None = None
    onReload: list[Callable[[], None]] = attrs.field(factory=list)

    def reload(self) -> bool:
        """
        Re-read everything; on success swap, else keep the old set.

        @return: whether the new set is served.
        """
        runtime = self.runtime
        environ = dict(os.environ if self.environ is None else self.environ)
        cwd = os.getcwd() if self.cwd is None else self.cwd
        try:
            paths = agentFiles(self.agentPaths)
            config = loadConfig(
                configFile=self.configFile,
                cwd=cwd,
                agentDirs=[os.path.dirname(os.path.abspath(path)) for path in paths],
                home=environ.get("HOME"),
                environ=environ,
            )
            registry = loadRegistry(paths, config)
            checkToolServers(registry, config)
            rest = RestCatalog.build(
                config, runtime.http, self.reactor, usedOpenApiDocuments(registry)
            )
        except ConfigurationError as error:
            log.error(
                "reload failed, still serving {models}: {error}",
                models=", ".join(runtime.registry.ids()),
                error=str(error),
            )
            return False
        warnMissingKeys(registry, config)
        retired: list[Any] = []
        providers = ProviderSet(config, runtime.http, self.reactor)
        for name, provider in runtime.providers._built.items():
            if config.providers.get(name) == runtime.config.providers.get(name):
                providers._built[name] = provider
            else:
                retired.append(provider)
        mcp = runtime.mcp
        if config.mcpServers != runtime.config.mcpServers:
            mcp = McpManager(
                config.mcpServers,
                self.reactor,
                runtime.http,
                environ,
                used=usedToolServers(registry, config),
                scrub=runtime.scrub,
            )
            if self.parent is not None:
                mcp.setServiceParent(self.parent)
            retired.append(runtime.mcp)
        # Everything else (the sub-agent limiter, the turn store, the retry
        # policy) carries over unchanged.
        tools = attrs.evolve(runtime.tools, agents=registry.byPath, mcp=mcp, runner=None, rest=rest)
        runner = attrs.evolve(
            runtime.runner,
            providers=providers,
            tools=tools,
            pricing=config.pricing,
            agents=registry.byPath,
        )
        tools.runner = runner
        runtime.config, runtime.registry, runtime.providers = config, registry, providers
        runtime.sealer.reconfigure(config.sealingKeys)
        # Spans and MCP log lines (old servers and new) scrub the new secrets.
        runtime.scrub.redactor = Redactor.fromConfig(config)
        runtime.runner, runtime.mcp, runtime.tools = runner, mcp, tools
        for headend in self.headends:
            headend.registry = registry
            headend.runner = runner
        if retired:
            self.reactor.callLater(self.grace, self._retire, retired)
        log.info("reloaded: serving {models}", models=", ".join(registry.ids()) or "none")
        for hook in self.onReload:
            hook()
        return True

    def _retire(self, retired: list[Any]) -> Deferred[None]:
        async def retire() -> None:
            for item in retired:
                if isinstance(item, McpManager):
                    if item.parent is not None:
                        await maybeDeferred(item.disownServiceParent)
                    else:
                        await item.stopAll()
                elif hasattr(item, "stop"):
                    await item.stop()

        return Deferred.fromCoroutine(retire())


def onHangup(reactor: Any, reload: Callable[[], object]) -> None:
    """
    Call C{reload} in the reactor thread on each SIGHUP (instead of dying,
    SIGHUP's default).  Does nothing outside the main thread.
    """

    def handler(signum: int, frame: Any) -> None:
        reactor.callFromThread(reload)

    try:
        signal.signal(signal.SIGHUP, handler)
    except (ValueError, AttributeError):
        pass  # not the main thread, or no SIGHUP on this platform


__all__ = ["Reloader", "onHangup"]
