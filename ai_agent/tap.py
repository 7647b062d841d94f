# -*- test-case-name: tests.test_tap -*-
"""
The server's one assembly point: command-line options and C{makeService},
used by C{twistd ai-agent} and by the C{ai-agent} command's headend mode.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.server import Site

from ai_agent.headends.openai import OpenAIHeadend
from ai_agent.pool import RunPool
from ai_agent.runtime import Runtime, buildRuntime

log = Logger()


class ServerOptions(usage.Options):
    """
    Options shared by C{twistd ai-agent} and the C{ai-agent} command.
    """

    optParameters: list[list[Any]] = [
        ["config", "c", None, "Configuration file (.ai-agent.json); nearer layers are found too."],
        ["host", None, "127.0.0.1", "Interface a bare port binds to (0.0.0.0 exposes the server)."],
        [
            "openai-completions-concurrency",
            None,
            4,
            "Agent runs allowed at once, per port.",
            int,
        ],
        [
            "openai-completions-queue",
            None,
            None,
            "Requests allowed to wait for a run slot (default 4 x concurrency).",
            int,
        ],
        [
            "openai-completions-queue-timeout",
            None,
            30.0,
            "Seconds a request may wait for a slot before a 503.",
            float,
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["agents"] = []
        self["openai-completions"] = []

    def opt_agent(self, path: str) -> None:
        """
        An agent file (.ai) to serve; repeat for more.
        """
        self["agents"].append(path)

    def opt_openai_completions(self, port: str) -> None:
        """
        Serve the OpenAI-compatible API on this port or endpoint
        (e.g. 8082 or tcp:8082:interface=0.0.0.0); repeat for more.
        """
        self["openai-completions"].append(port)

    def postOptions(self) -> None:
        if not self["agents"]:
            raise usage.UsageError("at least one --agent FILE is required")
        for path in self["agents"]:
            if not os.path.isfile(path):
                raise usage.UsageError(f"agent file not found: {path}")
        if self["config"] is not None and not os.path.isfile(self["config"]):
            raise usage.UsageError(f"configuration file not found: {self['config']}")
        concurrency = self["openai-completions-concurrency"]
        if concurrency < 1:
            raise usage.UsageError("--openai-completions-concurrency must be at least 1")
        if self["openai-completions-queue"] is None:
            self["openai-completions-queue"] = 4 * concurrency
        if self["openai-completions-queue"] < 0:
            raise usage.UsageError("--openai-completions-queue must not be negative")
        if self["openai-completions-queue-timeout"] <= 0:
            raise usage.UsageError("--openai-completions-queue-timeout must be positive")
        self["endpoints"] = [endpointFor(port, self["host"]) for port in self["openai-completions"]]


class Options(ServerOptions):
    """
    C{twistd ai-agent} options: at least one port is required.
    """

    synopsis = "[options]"
    longdesc = (
        "Serve LLM agents defined in .ai files as OpenAI-compatible models, e.g.\n"
        "twistd -n ai-agent --agent agents/chat.ai --openai-completions 8082"
    )

    def postOptions(self) -> None:
        super().postOptions()
        if not self["endpoints"]:
            raise usage.UsageError("at least one --openai-completions PORT is required")


def endpointFor(port: str, host: str) -> str:
    """
    Turn a bare port into a TCP endpoint bound to C{host}; pass endpoint
    strings through unchanged.

    @raise usage.UsageError: for a bad port.
    """
    if ":" in port:
        return port
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise usage.UsageError(f"not a port number or endpoint: {port!r}")
    interface = host.replace(":", "\\:")
    return f"tcp:{int(port)}:interface={interface}"


class _RuntimeService(Service):
    """
    Closes the upstream connection pool when the server stops.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return self.runtime.close()


def makeSite(headend: OpenAIHeadend) -> Site:
    """
    A web site for one headend; form parsing off (we take JSON only).
    """
    site = Site(headend.app.resource(), parsePOSTFormSubmission=False)
    site.displayTracebacks = False
    return site


def makeService(options: ServerOptions, reactor: Any = None) -> IService:
    """
    Build the server: one headend per endpoint, each with its own pool.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    concurrency = options["openai-completions-concurrency"]
    endpoints = options["endpoints"]
    runtime = buildRuntime(
        reactor,
        options["agents"],
        configFile=options["config"],
        connections=max(concurrency * max(len(endpoints), 1) * 2, 8),
    )
    top = MultiService()
    _RuntimeService(runtime).setServiceParent(top)
    for endpoint in endpoints:
        pool = RunPool(
            reactor,
            concurrency,
            options["openai-completions-queue"],
            options["openai-completions-queue-timeout"],
        )
        pool.setServiceParent(top)
        headend = OpenAIHeadend(runtime.registry, runtime.runner, pool, reactor)
        listener = strports.service(endpoint, makeSite(headend))
        # A port that cannot be bound fails startup instead of being logged.
        listener._raiseSynchronously = True
        listener.setServiceParent(top)
        log.info(
            "serving {agents} on {endpoint} (concurrency {concurrency})",
            agents=", ".join(runtime.registry.ids()),
            endpoint=endpoint,
            concurrency=concurrency,
        )
    return top


__all__ = ["Options", "ServerOptions", "endpointFor", "makeService", "makeSite"]
