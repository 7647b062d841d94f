# -*- test-case-name: tests.test_tap -*-
"""
The server's one assembly point: command-line options and C{makeService},
used by C{twistd ai-agent} and by the C{ai-agent} command's headend mode.
"""

from __future__ import annotations

import gc
import os
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import attrs
from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.server import Site

from ai_agent.advice import didYouMean
from ai_agent.config import ClientKey
from ai_agent.connections import TrackingFactory
from ai_agent.errors import ConfigurationError
from ai_agent.headends._http import APIKeys, HTTPPolicy
from ai_agent.headends._openai_errors import OPENAI_ERRORS
from ai_agent.headends._site import Mount
from ai_agent.headends.openai import OpenAIHeadend
from ai_agent.headends.responses import HOSTED_IGNORE, HOSTED_POLICIES, ResponsesHeadend
from ai_agent.observe import (
    NULL_OBSERVER,
    Metrics,
    MetricsResource,
    Observability,
    Observer,
    Tracing,
    WithMetrics,
    metricsSite,
)
from ai_agent.pool import RunPool
from ai_agent.principals import unknownAgents
from ai_agent.quotas import Counters, MemoryCounters, Quotas
from ai_agent.reload import Reloader, onHangup
from ai_agent.runtime import Runtime, buildRuntime
from ai_agent.speed import SpeedLayer, StockTwisted, speedLayer, stockRequested
from ai_agent.startup import address, bannerLines, listenError
from ai_agent.stopsignals import StopSignals
from ai_agent.store import StoreService, checkLocation, makeStore, parseDuration
from ai_agent.store._sql import SQLStore
from ai_agent.workers import AdoptedPortService

log = Logger()

#: The values of C{--reasoning-field}.
REASONING_FIELDS = ("reasoning_content", "reasoning", "think", "none")


def reasoningField(value: str) -> str:
    """
    Check a C{--reasoning-field} value.

    @raise ValueError: for anything but L{REASONING_FIELDS}.
    """
    if value not in REASONING_FIELDS:
        raise ValueError(f"must be one of {', '.join(REASONING_FIELDS)}, not {value!r}")
    return value


reasoningField.coerceDoc = "One of " + ", ".join(REASONING_FIELDS) + "."  # type: ignore[attr-defined]


def hostedToolsPolicy(value: str) -> str:
    """
    Check a C{--hosted-tools} value.

    @raise ValueError: for anything but L{HOSTED_POLICIES}.
    """
    if value not in HOSTED_POLICIES:
        raise ValueError(f"must be one of {', '.join(HOSTED_POLICIES)}, not {value!r}")
    return value


hostedToolsPolicy.coerceDoc = "One of " + ", ".join(HOSTED_POLICIES) + "."  # type: ignore[attr-defined]


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
        [
            "max-body-size",
            None,
            8 * 1024 * 1024,
            "Largest request body accepted, in bytes (larger: 413).",
            int,
        ],
        [
            "request-timeout",
            None,
            10.0,
            "Seconds allowed to receive a request's head and body (slower: 408).",
            float,
        ],
        ["idle-timeout", None, 60.0, "Seconds an idle keep-alive connection stays open.", float],
        [
            "access-log",
            None,
            None,
            "Write an access log (combined format, one line per HTTP request) to this file.",
        ],
        [
            "shutdown-timeout",
            None,
            30.0,
            "Seconds running agents may finish after SIGTERM before they are stopped.",
            float,
        ],
        [
            "client-stall-timeout",
            None,
            60.0,
            "Seconds a streaming client may stop reading before its run is stopped.",
            float,
        ],
        [
            "api-key-file",
            None,
            None,
            "File of client API keys, one per line; every path but /health then needs one.",
        ],
        [
            "metrics-port",
            None,
            None,
            "Also serve /metrics, without API keys, on this port of 127.0.0.1 (or endpoint).",
        ],
        [
            "reasoning-field",
            None,
            "reasoning_content",
            "Where reasoning and progress go: the reasoning_content or reasoning"
            " field, think (inside content, between <think> and </think>), or none.",
            reasoningField,
        ],
        [
            "hosted-tools",
            None,
            HOSTED_IGNORE,
            "Hosted tools in a Responses request (web_search, file_search, ...), which the"
            " server cannot run: ignore (left out of the model's tools, named in the"
            " x-ai-agent-ignored-tools header and the log) or refuse (400).",
            hostedToolsPolicy,
        ],
        [
            "store",
            None,
            None,
            "Where hybrid runs and stored responses are kept: a SQLite file, a"
            " postgresql:// URL (several instances sharing it), memory, or none"
            " (default: $XDG_STATE_HOME/ai-agent/store.sqlite3).",
        ],
        [
            "store-ttl",
            None,
            "30d",
            "How long the store keeps what it is given (e.g. 30d, 12h, 90m, 3600).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["agents"] = []
        self["openai-completions"] = []
        self["api-keys"] = []
        self["cors-origins"] = []
        self["task-shortcut"] = True
        self["metrics"] = True
        self["stock-twisted"] = False

    def opt_stock_twisted(self) -> None:
        """
        Run on Twisted as it ships, without the speed layer (as
        AI_AGENT_STOCK_TWISTED=1 does): slower, for comparison and
        diagnosis.
        """
        self["stock-twisted"] = True

    def opt_no_metrics(self) -> None:
        """
        Do not keep Prometheus metrics (no /metrics).
        """
        self["metrics"] = False

    def opt_agent(self, path: str) -> None:
        """
        An agent file (.ai), or a directory of them, to serve; repeat for
        more. SIGHUP reloads them.
        """
        self["agents"].append(path)

    def opt_openai_completions(self, port: str) -> None:
        """
        Serve the OpenAI-compatible API on this port or endpoint, e.g. 8082 or
        tcp:8082:interface=0.0.0.0; repeat for more.
        """
        self["openai-completions"].append(port)

    def opt_api_key(self, key: str) -> None:
        """
        A client API key; when any is set, every path but /health needs
        'Authorization: Bearer KEY'. Repeat for more (AI_AGENT_API_KEYS too).
        """
        self["api-keys"].append(key)

    def opt_no_task_shortcut(self) -> None:
        """
        Run Open WebUI's and LibreChat's background tasks (titles, tags,
        follow-ups, search queries) through the whole agent, instead of one
        direct call to its first model.
        """
        self["task-shortcut"] = False

    def opt_cors_origin(self, origin: str) -> None:
        """
        A browser origin allowed to call the API (e.g. https://chat.example);
        repeat for more. Off by default.
        """
        self["cors-origins"].append(origin.rstrip("/"))

    def parseOptions(self, options: Any = None) -> None:
        """
        Parse; an unknown or ambiguous option is a usage error that names
        the options meant (see L{explainOption}).
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            raise usage.UsageError(explainOption(str(error), self.longOpt)) from None

    def postOptions(self) -> None:
        for name in ("max-body-size",):
            if self[name] < 1:
                raise usage.UsageError(f"--{name} must be positive")
        for name in ("request-timeout", "idle-timeout", "client-stall-timeout"):
            if self[name] <= 0:
                raise usage.UsageError(f"--{name} must be positive")
        if self["shutdown-timeout"] < 0:
            raise usage.UsageError("--shutdown-timeout must not be negative")
        if self["api-key-file"] is not None and not os.path.isfile(self["api-key-file"]):
            raise usage.UsageError(f"API key file not found: {self['api-key-file']}")
        if not self["agents"]:
            raise usage.UsageError("at least one --agent FILE is required")
        for path in self["agents"]:
            if not os.path.isfile(path) and not os.path.isdir(path):
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
        if self["metrics-port"] is not None:
            if not self["metrics"]:
                raise usage.UsageError("--metrics-port and --no-metrics do not go together")
            self["metrics-endpoint"] = endpointFor(self["metrics-port"], "127.0.0.1")
        else:
            self["metrics-endpoint"] = None
        try:
            if isinstance(self["store-ttl"], str):
                self["store-ttl"] = parseDuration(self["store-ttl"])
            checkLocation(self["store"])
        except ValueError as error:
            raise usage.UsageError(f"--store-ttl or --store: {error}") from None


_OPTION_ERROR = re.compile(r"^option --(?P<name>\S+) (?P<what>not a unique prefix|not recognized)$")

#: The most candidates an ambiguous option's error names.
_MAX_CANDIDATES = 8


def explainOption(message: str, longOptions: Sequence[str]) -> str:
    """
    getopt's error C{message}, made to say what was meant: for a prefix of
    several options (C{--openai-completion}), the options it could be; for
    an unknown one, the closest option, if any is close.  Other messages
    are returned unchanged.

    @param longOptions: the parser's long options (C{name=} when it takes
        a value).
    """
    match = _OPTION_ERROR.match(message)
    if match is None:
        return message
    name = match.group("name").split("=", 1)[0]
    known = sorted({option.rstrip("=") for option in longOptions})
    if match.group("what") == "not recognized":
        return f"unknown option --{name}" + didYouMean(f"--{name}", [f"--{o}" for o in known])
    candidates = [option for option in known if option.startswith(name)]
    shown = ", ".join(f"--{option}" for option in candidates[:_MAX_CANDIDATES])
    if len(candidates) > _MAX_CANDIDATES:
        shown += f", … ({len(candidates)} in all)"
    return f"--{name} is ambiguous: it could be {shown}; give the whole name"


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

    def parseOptions(self, options: Any = None) -> None:
        """
        Parse; under twistd (as its subcommand), a usage error ends twistd
        with one line instead of twistd's whole help text.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            if getattr(self, "parent", None) is None:
                raise
            raise SystemExit(
                f"twistd ai-agent: {error} (twistd ai-agent --help lists the options)"
            ) from None


#: The listen backlog of a bare port.
LISTEN_BACKLOG = 1024


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
    # A deeper accept queue than Twisted's 50 absorbs bursts of new
    # connections (many clients opening streams at once).
    return f"tcp:{int(port)}:interface={interface}:backlog={LISTEN_BACKLOG}"


class _RuntimeService(Service):
    """
    Closes the upstream connection pool when the server stops.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return self.runtime.close()


def makeSite(
    headend: OpenAIHeadend,
    policy: HTTPPolicy = HTTPPolicy(),
    accessLog: str | None = None,
    mounts: Sequence[Mount] = (),
    metrics: MetricsResource | None = None,
    reactor: Any = None,
    speed: SpeedLayer | None = None,
) -> Site:
    """
    A web site for the OpenAI headend and the other APIs (C{mounts}) under
    the HTTP layer's C{policy}, writing an access log in the combined format
    to C{accessLog} if given, with C{/metrics} beside them when C{metrics}
    is given, built on C{speed} (the runtime's; the speed layer by default).
    C{reactor} (the global one if L{None}) times the site's connections and
    the rate of its refusal log lines.
    """
    if speed is None:
        speed = speedLayer(stock=False)
    router = speed.router(headend.app, mounts)
    # The OpenAI routes answer errors and model lists in the shape of the
    # API a request comes from, as the site's guard does.
    headend.errorFormats = router.errorFormat
    headend.modelCatalogs = router.modelCatalog
    resource: Any = router if metrics is None else WithMetrics(router, metrics)
    return speed.site(resource, policy, router.errorFormat, logPath=accessLog, reactor=reactor)


def speedLayerFor(options: ServerOptions, environ: Mapping[str, str]) -> SpeedLayer:
    """
    The speed layer, or stock Twisted with C{--stock-twisted} or
    C{AI_AGENT_STOCK_TWISTED=1}.
    """
    return speedLayer(bool(options["stock-twisted"]) or stockRequested(environ))


def apiMounts(
    runtime: Runtime, pool: RunPool, reactor: Any, hostedTools: str = HOSTED_IGNORE
) -> list[Mount]:
    """
    The APIs served beside the OpenAI routes on every port, each with its
    own headend over the same runtime and pool.

    @param hostedTools: what the Responses API does with hosted tools
        (C{--hosted-tools}).
    """
    from ai_agent.headends.anthropic import (
        ANTHROPIC_ERRORS,
        ANTHROPIC_MODELS,
        AnthropicHeadend,
        isAnthropicClient,
    )

    responses = ResponsesHeadend(
        runtime.registry,
        runtime.runner,
        pool,
        reactor,
        store=runtime.store,
        observer=runtime.runner.observer,
        sealer=runtime.sealer,
        hostedTools=hostedTools,
    )
    anthropic = AnthropicHeadend(
        runtime.registry,
        runtime.runner,
        pool,
        reactor,
        observer=runtime.runner.observer,
    )
    from ai_agent.headends.a2a import A2A_ERRORS, A2AHeadend

    a2a = A2AHeadend(
        runtime.registry,
        runtime.runner,
        pool,
        reactor,
        store=runtime.store,
        observer=runtime.runner.observer,
    )
    from ai_agent.headends.mcp import MCP_ERRORS, McpHeadend

    mcp = McpHeadend(
        runtime.registry,
        runtime.runner,
        pool,
        reactor,
        observer=runtime.runner.observer,
    )
    return [
        Mount(b"/v1/responses", responses.app, OPENAI_ERRORS, headend=responses),
        Mount(b"/a2a", a2a.app, A2A_ERRORS, headend=a2a),
        Mount(b"/.well-known/agent-card.json", a2a.app, A2A_ERRORS, headend=a2a),
        Mount(b"/mcp", mcp.app, MCP_ERRORS, headend=mcp),
        Mount(
            b"/v1/messages",
            anthropic.app,
            ANTHROPIC_ERRORS,
            isAnthropicClient,
            headend=anthropic,
            models=ANTHROPIC_MODELS,
        ),
    ]


def makeObserver(options: ServerOptions, environ: Mapping[str, str], reactor: Any) -> Observer:
    """
    Metrics (unless C{--no-metrics}) and tracing (when the C{OTEL_*}
    variables ask for it), or the observer that does nothing.
    """
    metrics = Metrics() if options["metrics"] else None
    tracing = Tracing.fromEnvironment(environ)
    if metrics is None and tracing is None:
        return NULL_OBSERVER
    return Observability(metrics, tracing, clock=reactor.seconds)


class _TracingService(Service):
    """
    Exports the last spans when the server stops.
    """

    def __init__(self, reactor: Any, tracing: Tracing) -> None:
        self.reactor = reactor
        self.tracing = tracing

    def stopService(self) -> Deferred[None]:
        from twisted.internet.threads import deferToThreadPool

        Service.stopService(self)
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self.tracing.shutdown)


def policyFrom(
    options: ServerOptions, environ: Mapping[str, str], named: Iterable[ClientKey] = ()
) -> HTTPPolicy:
    """
    The HTTP policy the options ask for.  Client keys come from C{--api-key},
    C{--api-key-file} and the C{AI_AGENT_API_KEYS} variable (each an
    anonymous principal), and from the configuration's named C{keys}
    (C{named}).

    @raise usage.UsageError: when the key file cannot be read.
    """
    keys = list(options["api-keys"])
    keys.extend(environ.get("AI_AGENT_API_KEYS", "").replace(",", " ").split())
    if options["api-key-file"] is not None:
        try:
            with open(options["api-key-file"], encoding="utf-8") as f:
                for line in f:
                    line = line.strip()
                    if line and not line.startswith("#"):
                        keys.append(line)
        except OSError as error:
            raise usage.UsageError(
                f"cannot read the API key file {options['api-key-file']}: {error.strerror}"
            ) from None
    return HTTPPolicy(
        maxBodySize=options["max-body-size"],
        requestDeadline=options["request-timeout"],
        idleTimeout=options["idle-timeout"],
        apiKeys=APIKeys.fromKeys(keys, named),
        corsOrigins=frozenset(options["cors-origins"]),
    )


def _reloadKeys(options: ServerOptions, runtime: Runtime, keys: APIKeys) -> None:
    """
    After a reload: serve the keys the new configuration names, with the
    bare keys read again (the key file too).  An unreadable key file keeps
    the keys served so far.
    """
    try:
        fresh = policyFrom(options, os.environ, runtime.config.keys.values()).apiKeys
    except usage.UsageError as error:
        log.error("reload: API keys unchanged: {error}", error=str(error))
        return
    keys.replace(fresh)
    log.info("reload: {count} client API keys", count=len(fresh.principals))
    _warnUnknownAgents(fresh, runtime.registry)


def _warnUnknownAgents(keys: APIKeys, registry: Any) -> None:
    missing = unknownAgents(keys.principals, registry)
    if missing:
        log.warn(
            "client keys name agents that are not served (model ids): {missing}",
            missing="; ".join(missing),
        )


@attrs.define(eq=False)
class _Endpoint:
    pool: RunPool
    listener: StreamServerEndpointService
    connections: TrackingFactory


class ServerService(MultiService):
    """
    The server: headend endpoints with their pools, plus the shared
    services (MCP servers, the upstream connection pool) as children.

    Stopping is ordered: stop accepting connections at once (C{/health}
    answers 503 from then on), let running agents finish for up to
    C{shutdownTimeout} seconds, stop those still running with an error,
    close the remaining connections, then stop the shared services.

    @ivar exitOnSecondSignal: once stopping, a second SIGINT or SIGTERM
        exits the process at once, if it comes more than
        L{ai_agent.stopsignals.GRACE} seconds after the first (set by the
        command-line entry points; see L{StopSignals}).
    """

    def __init__(self, reactor: Any, shutdownTimeout: float = 30.0) -> None:
        super().__init__()
        self.reactor = reactor
        self.shutdownTimeout = shutdownTimeout
        self.exitOnSecondSignal = False
        self.stopSignals = StopSignals(reactor)
        self.exitOnStartupError = False
        self.endpoints: list[_Endpoint] = []
        self.onReady: Callable[[list[str]], None] | None = None
        self.reloader: Reloader | None = None

    def addEndpoint(self, pool: RunPool, listener: Any, connections: TrackingFactory) -> None:
        """
        Serve C{listener}, whose runs go through C{pool}.
        """
        self.endpoints.append(_Endpoint(pool, listener, connections))

    def startService(self) -> None:
        """
        Start the shared services, then listen; once every port is bound,
        call L{onReady} with their addresses (the banner).

        @raise StartupError: a port cannot be bound (with
            C{exitOnStartupError}, as twistd runs it: L{StartupExitError} with the
            same one line).
        """
        try:
            # (Children first: the metrics port may be busy too.)
            super().startService()
            for endpoint in self.endpoints:
                endpoint.pool.startService()
                endpoint.listener.startService()
        except CannotListenError as error:
            failure = listenError(error)
            if self.exitOnStartupError:
                raise StartupExitError(f"twistd ai-agent: {failure}") from None
            raise failure from None
        if self.reloader is not None:
            onHangup(self.reactor, self.reloader.reload)
        if self.exitOnSecondSignal:
            # Once the reactor runs, its own handlers are in place to take
            # the first signal.
            self.reactor.callWhenRunning(self.stopSignals.install)
        if self.onReady is not None:
            # Once the reactor runs: only then are its signal handlers in
            # place, so a process that says it is ready also stops cleanly.
            self.reactor.callWhenRunning(self._announce, self.onReady)

    def _announce(self, onReady: Callable[[list[str]], None]) -> None:
        ports: list[Any] = []

        def keep(port: Any) -> Any:
            ports.append(port)
            return port

        for endpoint in self.endpoints:
            listener: Any = endpoint.listener
            # A listening service keeps its port's Deferred in the private
            # _waitingForPort (pinned in tests/test_private_api.py).
            waiting = (
                listener._waitingForPort
                if isinstance(listener, StreamServerEndpointService)
                else None
            )
            if waiting is not None and waiting.called:
                waiting.addCallback(keep)
            elif getattr(listener, "port", None) is not None:
                ports.append(listener.port)
        onReady([address(port) for port in ports])

    def stopService(self) -> Deferred[None]:
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self.stopSignals.stopping()
        log.info("stopping: no new connections; draining running agents")
        for endpoint in self.endpoints:
            # Refuse at once, so /health turns 503 while we drain.
            endpoint.pool.stopAccepting()
        await gatherResults(
            [maybeDeferred(endpoint.listener.stopService) for endpoint in self.endpoints]
        )
        await gatherResults(
            [endpoint.pool.drain(self.shutdownTimeout) for endpoint in self.endpoints]
        )
        # Give the last answers a moment to be written, then close what is
        # left open (idle keep-alive connections).
        await deferLater(self.reactor, 0.05, lambda: None)
        await gatherResults([endpoint.connections.dropConnections() for endpoint in self.endpoints])
        for endpoint in self.endpoints:
            endpoint.pool.stopService()
        await MultiService.stopService(self)
        log.info("stopped")


class StartupExitError(SystemExit, Exception):
    """
    Ends twistd with one line when the server cannot start.  It is an
    C{Exception} as well as a C{SystemExit}: twistd removes its pid file
    (and, daemonized, reports the line to the parent process) only for an
    C{Exception} raised while the application starts, and a plain
    C{SystemExit} left a stale C{twistd.pid} behind; and it is a
    C{SystemExit}, so the process still ends with the line and status 1
    rather than a traceback.
    """


def makeQuotas(reactor: Any, runtime: Runtime, observer: Observer = NULL_OBSERVER) -> Quotas:
    """
    The limits per key and agent of C{runtime}'s configuration (read at
    each request, so a reload changes them), counted in its run store's
    database when it is a SQL one (every process on it shares the counts),
    else in this process.
    """
    store = runtime.store
    counters: Counters = store if isinstance(store, SQLStore) else MemoryCounters(reactor)
    return Quotas(
        reactor,
        counters,
        lambda: runtime.config.limits,
        lambda: runtime.config.pricing,
        observer=observer,
    )


def makeService(
    options: ServerOptions,
    reactor: Any = None,
    inherited: Sequence[tuple[int, int]] | None = None,
) -> IService:
    """
    Build the server: one headend per endpoint, each with its own pool.

    @param inherited: in a worker process (see L{ai_agent.workers}), the
        C{(descriptor, address family)} of each endpoint's listening socket,
        adopted instead of listening.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
        if isinstance(options, Options):
            return _underTwistd(options, reactor)
    concurrency = options["openai-completions-concurrency"]
    endpoints = options["endpoints"]
    observer = makeObserver(options, os.environ, reactor)
    store = makeStore(options["store"], reactor, ttl=options["store-ttl"])
    speed = speedLayerFor(options, os.environ)
    runtime = buildRuntime(
        reactor,
        options["agents"],
        configFile=options["config"],
        connections=max(concurrency * max(len(endpoints), 1) * 2, 8),
        observer=observer,
        store=store,
        speed=speed,
    )
    if isinstance(speed, StockTwisted):
        log.info("running on stock Twisted, without the speed layer")
    policy = policyFrom(options, os.environ, runtime.config.keys.values())
    if policy.apiKeys.enabled:
        log.info(
            "client API keys required on every path but /health and /openapi.json ({count} keys)",
            count=len(policy.apiKeys.principals),
        )
        _warnUnknownAgents(policy.apiKeys, runtime.registry)
    top = ServerService(reactor, options["shutdown-timeout"])
    top.exitOnSecondSignal = True
    _RuntimeService(runtime).setServiceParent(top)
    if store is not None:
        # Opened at start (operations wait for it); closed once the headends
        # have drained.
        StoreService(store).setServiceParent(top)
        log.info("run store: {store}", store=store.description)
    # Starts the MCP servers agents use; stops them all (before the runtime
    # closes the connection pool, which waits for them).
    runtime.mcp.setServiceParent(top)
    top.reloader = Reloader(
        reactor,
        runtime,
        options["agents"],
        options["config"],
        parent=top,
        grace=options["shutdown-timeout"],
    )
    top.reloader.onReload.append(lambda: _reloadKeys(options, runtime, policy.apiKeys))
    tracing = getattr(observer, "tracing", None)
    if tracing is not None:
        _TracingService(reactor, tracing).setServiceParent(top)
    metricsResource = None
    if observer.metrics is not None:
        metricsResource = MetricsResource(observer.metrics, reactor)
        metricsEndpoint = options.get("metrics-endpoint")
        if metricsEndpoint is not None and inherited is None:
            # Only the first process listens here; a scrape still sees every
            # worker's counts.
            metricsListener = strports.service(metricsEndpoint, metricsSite(metricsResource))
            metricsListener._raiseSynchronously = True
            metricsListener.setServiceParent(top)
            log.info("serving /metrics on {endpoint}", endpoint=metricsEndpoint)
    quotas = makeQuotas(reactor, runtime, observer)
    for index, endpoint in enumerate(endpoints):
        pool = RunPool(
            reactor,
            concurrency,
            options["openai-completions-queue"],
            options["openai-completions-queue-timeout"],
            observer=observer,
            quotas=quotas,
        )
        headend = OpenAIHeadend(
            runtime.registry,
            runtime.runner,
            pool,
            reactor,
            reasoningField=None
            if options["reasoning-field"] == "none"
            else options["reasoning-field"],
            taskShortcut=options["task-shortcut"],
            clientStallTimeout=options["client-stall-timeout"],
            observer=observer,
        )
        mounts = apiMounts(runtime, pool, reactor, options["hosted-tools"])
        # Every API's headend gets the new agents on SIGHUP.
        top.reloader.headends.append(headend)
        for mount in mounts:
            if mount.headend is not None:
                top.reloader.headends.append(mount.headend)
        site = makeSite(
            headend,
            policy,
            options["access-log"],
            mounts,
            metrics=metricsResource,
            reactor=reactor,
            speed=speed,
        )
        connections = TrackingFactory(site)
        listener: Any
        if inherited is not None:
            fileno, family = inherited[index]
            listener = AdoptedPortService(reactor, fileno, family, connections)
        else:
            listener = strports.service(endpoint, connections)
            # A port that cannot be bound fails startup instead of being logged.
            listener._raiseSynchronously = True
        top.addEndpoint(pool, listener, connections)
        log.debug(
            "serving {agents} on {endpoint} (concurrency {concurrency})",
            agents=", ".join(runtime.registry.ids()),
            endpoint=endpoint,
            concurrency=concurrency,
        )

    def banner(addresses: list[str]) -> None:
        freezeHeap()
        if inherited is not None:
            # The first process's banner speaks for its workers.
            log.info("ready, serving {models}", models=", ".join(runtime.registry.ids()))
            return
        for line in bannerLines(
            runtime.registry, runtime.config, addresses, policy.apiKeys.enabled
        ):
            log.info("{line}", line=line)

    top.onReady = banner
    return top


def freezeHeap() -> None:
    """
    Once the server is up: move every object alive (modules, agents,
    configuration) out of the garbage collector's view.  A full collection
    otherwise walks that whole startup heap every few thousand requests;
    measured at c=32, the collector's share of a proxied request's CPU fell
    from about 125 to 49 µs.  No collection first: it would cost the first
    request some 20-40 ms, and the garbage it would find after starting is
    a few hundred objects (frozen with the rest, never freed).
    """
    gc.freeze()


def _underTwistd(options: Options, reactor: Any) -> IService:
    """
    The server as C{twistd ai-agent} runs it: the errors a user can fix (an
    invalid agent file or configuration, a port that cannot be bound) end
    twistd with one line and a non-zero exit, as C{ai-agent} does, instead
    of a traceback.
    """
    try:
        service = makeService(options, reactor)
    except ConfigurationError as error:
        raise SystemExit(f"twistd ai-agent: {error}") from None
    if isinstance(service, ServerService):
        service.exitOnStartupError = True
    return service


__all__ = [
    "Options",
    "ServerOptions",
    "apiMounts",
    "endpointFor",
    "makeObserver",
    "makeService",
    "makeSite",
]
