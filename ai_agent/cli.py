# -*- test-case-name: tests.test_cli -*-
"""
The C{ai-agent} command.

Headend mode (any C{--openai-completions}) runs the same service as
C{twistd ai-agent}.  Direct mode runs one agent on one prompt and streams
the answer to standard output; logs go to standard error.
C{--list-tools SERVER|all} prints the tools of configured MCP servers.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping, Sequence, TextIO, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
)
from twisted.python import usage
from twisted.python.failure import Failure

from ai_agent import __version__
from ai_agent.errors import AgentError, ConfigurationError
from ai_agent.events import (
    PROGRESS_TYPES,
    ContentDelta,
    Event,
    ModelAnswering,
    ReasoningDelta,
    ReasoningText,
)
from ai_agent.observe import MULTIPROC_DIR, jsonFileLogObserver, writeDebug
from ai_agent.providers import ChatMessage
from ai_agent.request import RunRequest
from ai_agent.startup import WORKER_VARIABLE, StartupError, embeddedModels, textObserver
from ai_agent.tap import ServerOptions, makeQuotas, makeService, speedLayerFor
from ai_agent.workers import ADOPTABLE, parseInherited, startWorkers, watchParent

#: The values of C{--log-format}.
LOG_FORMATS = ("text", "json")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: Stopped by Ctrl-C (or SIGTERM), as shells report it (128 + SIGINT).
EXIT_INTERRUPTED = 130


class Options(ServerOptions):
    """
    C{ai-agent} options: the server's, plus direct mode's prompt.
    """

    synopsis = (
        "Usage: ai-agent --agent FILE [options] PROMPT\n"
        "       ai-agent --agent FILE [--agent FILE ...] --openai-completions PORT [options]"
    )
    longdesc = (
        'Direct mode: PROMPT is the text, "-" reads it from standard input and '
        '"@path" from a file. The answer streams to standard output.'
    )
    optParameters: list[list[Any]] = [
        [
            "mcp",
            None,
            None,
            "Serve the agents as MCP tools on standard input and output ('stdio');"
            " logs go to standard error.",
        ],
        [
            "list-tools",
            None,
            None,
            "Print the tools a configured MCP server offers (or 'all' servers) and exit.",
        ],
        [
            "workers",
            None,
            1,
            "Processes serving the same ports, sharing their sockets (0: one per CPU).",
            int,
        ],
        ["worker-fds", None, None, "Internal: the listening sockets a worker inherits."],
        [
            "log-format",
            None,
            "text",
            "Log lines as text, or json (one JSON object per line).",
        ],
    ]
    optFlags = [
        ["verbose", "v", "Log more, and show the agent's reasoning and progress on stderr."],
        ["quiet", "q", "Log errors only."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["prompt"] = None
        self["version"] = False
        self["interactive"] = False
        self["mcp"] = None

    def opt_version(self) -> None:
        """
        Print the version and exit.
        """
        self["version"] = True

    opt_V = opt_version

    def parseArgs(self, *prompt: str) -> None:
        if prompt and not self["agents"] and _isAgentFile(prompt[0]):
            # "./chat.ai question" through the shebang line: the kernel
            # passes the agent file as the first argument.
            self["agents"].append(prompt[0])
            prompt = prompt[1:]
        if len(prompt) > 1:
            raise usage.UsageError(
                "give the prompt as one argument (quote it), or '-' to read standard input"
            )
        self["prompt"] = prompt[0] if prompt else None

    def postOptions(self) -> None:
        if self["version"]:
            return
        if self["log-format"] not in LOG_FORMATS:
            raise usage.UsageError(
                f"--log-format must be one of {', '.join(LOG_FORMATS)}, not {self['log-format']!r}"
            )
        if self["list-tools"] is not None:
            self._checkListTools()
            return
        super().postOptions()
        self._checkWorkers()
        if self["mcp"] is not None:
            self._checkMcp()
            return
        if self["endpoints"]:
            if self["prompt"] is not None:
                raise usage.UsageError(
                    "a prompt is only taken in direct mode (no --openai-completions)"
                )
            return
        if len(self["agents"]) != 1 or os.path.isdir(self["agents"][0]):
            raise usage.UsageError("direct mode runs exactly one --agent FILE")
        if self["prompt"] is None:
            if not sys.stdin.isatty():
                raise usage.UsageError("direct mode needs a PROMPT (or '-' to read standard input)")
            # On a terminal with no question: an interactive chat.
            self["interactive"] = True

    def _checkWorkers(self) -> None:
        if self["workers"] < 0:
            raise usage.UsageError("--workers must not be negative")
        if self["workers"] == 0:
            self["workers"] = os.cpu_count() or 1
        if self["worker-fds"] is not None:
            self["worker-fds"] = parseInherited(self["worker-fds"])
            if len(self["worker-fds"]) != len(self["endpoints"]):
                raise usage.UsageError("--worker-fds must name one socket per endpoint")
        elif self["workers"] > 1:
            if not self["endpoints"]:
                raise usage.UsageError("--workers needs --openai-completions")
            for endpoint in self["endpoints"]:
                if not endpoint.startswith(ADOPTABLE):
                    raise usage.UsageError(
                        f"--workers serves TCP or UNIX endpoints only, not {endpoint!r}"
                    )

    def _checkMcp(self) -> None:
        if self["mcp"] != "stdio":
            raise usage.UsageError(f"--mcp takes 'stdio', not {self['mcp']!r}")
        if self["prompt"] is not None or self["endpoints"]:
            raise usage.UsageError(
                "--mcp stdio takes no prompt and no --openai-completions (serve /mcp on a"
                " port with --openai-completions alone)"
            )
        if self["workers"] > 1:
            raise usage.UsageError("--mcp stdio runs in one process (no --workers)")

    def _checkListTools(self) -> None:
        if self["prompt"] is not None or self["openai-completions"]:
            raise usage.UsageError("--list-tools takes no prompt and no --openai-completions")
        for path in self["agents"]:
            if not os.path.isfile(path):
                raise usage.UsageError(f"agent file not found: {path}")
        if self["config"] is not None and not os.path.isfile(self["config"]):
            raise usage.UsageError(f"configuration file not found: {self['config']}")
        self["endpoints"] = []


def _isAgentFile(argument: str) -> bool:
    if not os.path.isfile(argument):
        return False
    try:
        with open(argument, "rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False


def readPrompt(argument: str, stdin: TextIO) -> str:
    """
    The prompt text: C{-} reads standard input, C{@path} a file.

    @raise usage.UsageError: when the file cannot be read or the prompt is empty.
    """
    if argument == "-":
        text = stdin.read()
    elif argument.startswith("@"):
        try:
            with open(argument[1:], encoding="utf-8") as f:
                text = f.read()
        except OSError as error:
            raise usage.UsageError(
                f"cannot read the prompt file {argument[1:]}: {error.strerror}"
            ) from None
    else:
        text = argument
    if not text.strip():
        raise usage.UsageError("the prompt is empty")
    return text


def _startLogging(options: Options, stderr: TextIO) -> LogLevelFilterPredicate:
    level = LogLevel.info
    if options["quiet"]:
        level = LogLevel.error
    elif options["list-tools"] is not None and not options["verbose"]:
        # It reports what went wrong itself.
        level = LogLevel.critical
    elif options["endpoints"] or options["verbose"]:
        level = LogLevel.info
    else:
        level = LogLevel.warn
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    writeDebug(level)
    worker = None
    if options["worker-fds"] is not None:
        worker = os.environ.get(WORKER_VARIABLE, "?")
    elif options["endpoints"] and options["workers"] > 1:
        worker = "0"
    if options["log-format"] == "json":
        observer = jsonFileLogObserver(stderr)
    else:
        observer = textObserver(stderr, worker)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(observer, [predicate])],
        redirectStandardIO=False,
    )
    return predicate


def _shareMetrics(environ: Any) -> str | None:
    """
    Before any metric exists: have this process and its workers keep their
    metrics in files of one directory (prometheus_client's multiprocess
    mode), a new one unless C{PROMETHEUS_MULTIPROC_DIR} names one.

    @return: the directory made here (removed at exit), or L{None}.
    """
    if environ.get(MULTIPROC_DIR):
        return None
    import tempfile

    directory = tempfile.mkdtemp(prefix="ai-agent-metrics-")
    environ[MULTIPROC_DIR] = directory
    return directory


def _removeMetricsDir(directory: str | None) -> None:
    if directory is not None:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)


def runDirect(reactor: Any, options: Options, stdout: TextIO, stderr: TextIO) -> Any:
    """
    Run one agent on one prompt; fire with the exit code.
    """
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.threads import deferToThread

    from ai_agent.observe import NULL_OBSERVER, Observability, Tracing
    from ai_agent.runtime import buildRuntime

    async def main() -> int:
        if options["interactive"]:
            return await _chat(reactor, options, stdout, stderr)
        prompt = readPrompt(options["prompt"], sys.stdin)
        tracing = Tracing.fromEnvironment(os.environ)
        observer = NULL_OBSERVER if tracing is None else Observability(None, tracing)
        runtime = buildRuntime(
            reactor,
            options["agents"],
            configFile=options["config"],
            observer=observer,
            speed=speedLayerFor(options, os.environ),
        )
        spec = runtime.registry.served[0].spec
        ended: list[str] = [""]
        # The user of direct mode is the operator: the details that tell
        # what to fix (a variable to set, a server to start) are for them.
        reasoning = ReasoningText(detailed=True)

        answered: list[str] = []

        def onEvent(event: Event) -> None:
            if isinstance(event, ContentDelta):
                stdout.write(event.text)
                stdout.flush()
                ended[0] = event.text
            elif isinstance(event, ModelAnswering):
                answered.append(event.model)
            elif options["verbose"]:
                if isinstance(event, ReasoningDelta):
                    stderr.write(reasoning.reasoning(event.text))
                elif isinstance(event, PROGRESS_TYPES):
                    stderr.write(reasoning.progress(event))
                stderr.flush()

        try:
            await runtime.runner.run(spec, RunRequest((ChatMessage("user", prompt),)), onEvent)
        except (AgentError, CancelledError) as error:
            if ended[0] and not ended[0].endswith("\n"):
                stdout.write("\n")
                stdout.flush()
            if isinstance(error, CancelledError):
                raise
            stderr.write(f"ai-agent: {error.message}\n")
            return EXIT_FAILED
        finally:
            await runtime.close()
            if tracing is not None:
                await deferToThread(tracing.shutdown)
        # The output ends with a newline, on a terminal or in a pipe.
        if ended[0] and not ended[0].endswith("\n"):
            stdout.write("\n")
        stdout.flush()
        embedded = embeddedModels(answered, runtime.config)
        if embedded and not options["quiet"]:
            # Nobody should take the small local model's answer for another's.
            stderr.write(
                f"ai-agent: answered by the embedded model {', '.join(embedded)};"
                " set a provider's key for a bigger model\n"
            )
        return EXIT_OK

    return ensureDeferred(main())


def runMcpStdio(reactor: Any, options: Options) -> Any:
    """
    Serve the agents as MCP tools on standard input and output until the
    input ends (its running calls are then cancelled); fire with the exit
    code.  Nothing but MCP messages is written to standard output.
    """
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.stdio import StandardIO

    from ai_agent.headends._answers import configuredRedactor
    from ai_agent.headends._mcpcore import McpCore
    from ai_agent.headends.mcp import McpStdioProtocol
    from ai_agent.pool import RunPool
    from ai_agent.runtime import buildRuntime

    async def main() -> int:
        runtime = buildRuntime(
            reactor,
            options["agents"],
            configFile=options["config"],
            speed=speedLayerFor(options, os.environ),
        )
        pool = RunPool(
            reactor,
            options["openai-completions-concurrency"],
            options["openai-completions-queue"],
            options["openai-completions-queue-timeout"],
            # The configured limits (no keys: the defaults, and the
            # agents'), counted in this process.
            quotas=makeQuotas(reactor, runtime),
        )
        core = McpCore(
            runtime.registry,
            runtime.runner,
            pool,
            reactor,
            redactor=configuredRedactor(runtime.runner),
        )
        protocol = McpStdioProtocol(core)
        StandardIO(protocol, reactor=reactor)
        try:
            await protocol.done
        finally:
            await runtime.close()
        return EXIT_OK

    return ensureDeferred(main())


async def _chat(reactor: Any, options: Options, stdout: TextIO, stderr: TextIO) -> int:
    """
    The interactive chat of direct mode (see L{ai_agent.chat}).
    """
    from twisted.internet.stdio import StandardIO

    from ai_agent.chat import ChatProtocol, ChatSession
    from ai_agent.runtime import buildRuntime

    runtime = buildRuntime(
        reactor,
        options["agents"],
        configFile=options["config"],
        speed=speedLayerFor(options, os.environ),
    )
    served = runtime.registry.served[0]
    session = ChatSession(
        lambda history, onEvent: runtime.runner.run(
            served.spec, RunRequest(tuple(history)), onEvent
        ),
        stdout,
        stderr,
        verbose=options["verbose"],
    )
    # Standard output stays ours (written as the answer streams); the
    # transport's own output side goes nowhere.
    devnull = os.open(os.devnull, os.O_WRONLY)
    io = cast(Any, StandardIO)(ChatProtocol(session), stdin=0, stdout=devnull, reactor=reactor)
    session.start(
        f"Chatting with agent {served.id!r} ({', '.join(served.spec.models)})."
        " Type /exit or press Ctrl-D to leave."
    )
    try:
        return await session.done
    except CancelledError:
        stopping = session.interrupt()
        if stopping is not None:
            try:
                await stopping
            except CancelledError:
                pass  # the answer we stopped; the chat's own cancellation follows
        raise
    finally:
        io.loseConnection()
        await runtime.close()


def runListTools(
    reactor: Any,
    options: Options,
    stdout: TextIO,
    stderr: TextIO,
    environ: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Any:
    """
    Start the MCP servers C{options["list-tools"]} names (one, or C{all}),
    print their tools as the model would see them, and stop them; fire with
    the exit code: 0, 1 when a server failed to start, 2 for an unknown
    server.
    """
    from twisted.internet.defer import DeferredList, ensureDeferred

    from ai_agent.config import loadConfig
    from ai_agent.providers import CONNECT_TIMEOUT
    from ai_agent.runtime import CachingEndpointFactory
    from ai_agent.tools import McpManager, toolName

    async def main() -> int:
        env = dict(os.environ if environ is None else environ)
        here = os.getcwd() if cwd is None else cwd
        config = loadConfig(
            configFile=options["config"],
            cwd=here,
            agentDirs=[os.path.dirname(os.path.abspath(path)) for path in options["agents"]],
            home=env.get("HOME"),
            environ=env,
        )
        wanted = options["list-tools"]
        if wanted != "all" and wanted not in config.mcpServers:
            known = ", ".join(sorted(config.mcpServers)) or "none"
            stderr.write(
                f"ai-agent: no MCP server named {wanted!r} is configured (configured: {known})\n"
            )
            return EXIT_USAGE
        names = sorted(config.mcpServers) if wanted == "all" else [wanted]
        if not names:
            stderr.write("ai-agent: no MCP servers are configured\n")
            return EXIT_OK
        upstream = speedLayerFor(options, env).upstream(
            reactor,
            CachingEndpointFactory(reactor, CONNECT_TIMEOUT),
            maxIdlePerHost=16,
            idleTimeout=120.0,
        )
        pool = upstream.pool
        manager = McpManager(config.mcpServers, reactor, upstream.http, env)
        try:
            listings = await DeferredList(
                [manager.server(name).listTools() for name in names], consumeErrors=True
            )
        finally:
            await manager.stopAll()
            await pool.closeCachedConnections()
        code = EXIT_OK
        blocks = []
        for name, (ok, value) in zip(names, listings, strict=True):
            if not ok:
                error = cast(Failure, value).value
                stderr.write(f"ai-agent: {getattr(error, 'message', None) or error}\n")
                code = EXIT_FAILED
                continue
            rows = [(toolName(name, tool.name), _firstLine(tool.description)) for tool in value]
            width = max((len(row[0]) for row in rows), default=0)
            lines = [f"{name}: {len(rows)} tool{'' if len(rows) == 1 else 's'}"]
            lines.extend(f"  {exposed.ljust(width)}  {text}".rstrip() for exposed, text in rows)
            blocks.append("\n".join(lines) + "\n")
        stdout.write("\n".join(blocks))
        stdout.flush()
        return code

    return ensureDeferred(main())


def _firstLine(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def main(argv: Sequence[str] | None = None) -> None:
    """
    Entry point of the C{ai-agent} console script.
    """
    sys.exit(run(sys.argv[1:] if argv is None else argv, sys.stdout, sys.stderr))


def run(argv: Sequence[str], stdout: TextIO, stderr: TextIO) -> int:
    """
    Parse C{argv} and run; return the exit code.
    """
    options = Options()
    try:
        options.parseOptions(list(argv))
    except usage.UsageError as error:
        stderr.write(f"ai-agent: {error}\n")
        stderr.write("Run 'ai-agent --help' for the options.\n")
        return EXIT_USAGE
    if options["version"]:
        stdout.write(f"ai-agent {__version__}\n")
        return EXIT_OK
    logFilter = _startLogging(options, stderr)
    from twisted.internet import reactor

    code = [EXIT_OK]
    if options["endpoints"]:
        inherited = options["worker-fds"]
        metricsDir = None
        if inherited is None and options["workers"] > 1 and options["metrics"]:
            metricsDir = _shareMetrics(os.environ)
        try:
            service = makeService(options, reactor, inherited)
        except ConfigurationError as error:
            stderr.write(f"ai-agent: {error}\n")
            _removeMetricsDir(metricsDir)
            return EXIT_USAGE
        try:
            service.startService()
        except StartupError as error:
            stderr.write(f"ai-agent: {error}\n")
            # Stop what did start (MCP servers) without a word.
            logFilter.defaultLogLevel = LogLevel.critical
            logFilter.clearLogLevels()
            stopping = service.stopService()
            if not stopping.called:
                stopping.addBoth(lambda _: reactor.stop())
                reactor.run()
            _removeMetricsDir(metricsDir)
            return EXIT_FAILED
        reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
        supervisor = None
        if inherited is not None:
            watchParent(reactor)
        elif options["workers"] > 1:
            listeners = [endpoint.listener for endpoint in cast(Any, service).endpoints]
            supervisor = startWorkers(
                reactor, listeners, argv, options["workers"] - 1, options["shutdown-timeout"]
            )
            reloader = cast(Any, service).reloader
            if reloader is not None:
                # Each worker reloads its own copy.
                reloader.onReload.append(supervisor.hangup)
        reactor.run()
        _removeMetricsDir(metricsDir)
        if supervisor is not None and supervisor.uncleanStops:
            # A worker's runs were cut: not a clean stop.
            return EXIT_FAILED
        return code[0]

    running: list[Any] = []
    interrupted: list[bool] = []

    def done(result: Any) -> None:
        if isinstance(result, int):
            code[0] = result
        elif result.check(ConfigurationError, usage.UsageError):
            stderr.write(f"ai-agent: {result.value}\n")
            code[0] = EXIT_USAGE
        elif result.check(CancelledError) and interrupted:
            stderr.write("ai-agent: interrupted\n")
            code[0] = EXIT_INTERRUPTED
        elif result.check(CancelledError):
            code[0] = EXIT_FAILED
        else:
            stderr.write(f"ai-agent: unexpected failure: {result.getErrorMessage()}\n")
            code[0] = EXIT_FAILED
        if reactor.running and not interrupted:
            reactor.stop()

    def start() -> None:
        if options["list-tools"] is not None:
            work = runListTools(reactor, options, stdout, stderr)
        elif options["mcp"] is not None:
            work = runMcpStdio(reactor, options)
        else:
            work = runDirect(reactor, options, stdout, stderr)
        running.append(work)
        work.addBoth(done)

    def interrupt() -> Any:
        """
        The reactor is stopping (Ctrl-C, SIGTERM) while the work runs:
        cancel it and wait until it has cleaned up.
        """
        if not running or running[0].called:
            return None
        interrupted.append(True)
        stopped: Deferred[None] = Deferred()
        running[0].addBoth(lambda _: stopped.callback(None))
        running[0].cancel()
        return stopped

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", interrupt)
    reactor.run()
    return code[0]


__all__ = ["Options", "main", "readPrompt", "run", "runListTools"]
