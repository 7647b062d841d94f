# -*- test-case-name: tests.test_templating -*-
"""
The prompt body's templating, as the TypeScript ai-agent's: includes
resolved when the agent file is loaded, variables substituted per run.

Includes: C{${include:path}} and C{{{include:path}}} (and the newer
original's Liquid C{{% include "path" %}} / C{{% render "path" %}} with a
quoted, static path) are replaced by the file's text, the path relative to
the including file, nested up to L{MAX_INCLUDE_DEPTH} levels; a missing file,
a cycle, a C{.env} file or any other Liquid tag refuses the agent file at
load with a one-line error naming the file.

Variables: C{${NAME}} and C{{{NAME}}} for the built-in names of
L{promptVariables} are substituted in the system prompt of every run with
that run's values (the time ones from the session's reactor); any other name
(an environment variable's too) is left as written.
"""

from __future__ import annotations

import getpass
import os
import platform
import re
import socket
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs

from ai_agent.errors import ConfigurationError

#: Includes nested deeper than this refuse the agent file (the newer
#: original's Liquid bound).
MAX_INCLUDE_DEPTH = 8

_INCLUDE = re.compile(
    r"\$\{include:(?P<dollar>[^}]*)\}"
    r"|\{\{include:(?P<braces>[^}]*)\}\}"
    r"|\{%-?\s*(?:include|render)\s+(?P<quote>[\"'])(?P<liquid>[^\"']*)(?P=quote)\s*-?%\}"
)
_LIQUID_TAG = re.compile(r"\{%-?\s*(?P<tag>[^\s%-]*)[^%]*-?%\}|\{%")
_VARIABLE = re.compile(r"\$\{(?P<dollar>[A-Z][A-Z0-9_]*)\}|\{\{(?P<braces>[A-Z][A-Z0-9_]*)\}\}")

#: What C{${FORMAT}} says for each output format, in the original's words.
FORMAT_DESCRIPTIONS: Mapping[str, str] = {
    "markdown": "GitHub Markdown",
    "text": "Plain text without any formatting or markdown. Do not wrap long lines.",
    "json": "json",
}

#: What C{${FORMAT}} says to an agent called by another one (its answer is a
#: tool result, not shown to a user), unless it answers JSON.
SUBAGENT_FORMAT = "Internal agent-to-agent exchange format (not user-facing)."

_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _refuseLiquid(text: str, path: str) -> None:
    match = _LIQUID_TAG.search(text)
    if match is not None:
        tag = match.group("tag") or ""
        raise ConfigurationError(
            f"{path}: line {_line(text, match.start())}: Liquid tag"
            f" {'{% ' + tag + ' %}' if tag else '{%'} is not supported (only"
            ' {% include "file" %} and {% render "file" %} with a quoted path are;'
            " use ${include:file} for includes and ${NAME} for variables)"
        )


def _readInclude(path: str, written: str, target: str, line: int) -> str:
    name = os.path.basename(target)
    if name == ".env" or name.startswith(".env."):
        raise ConfigurationError(
            f"{path}: line {line}: include {written!r}: {name} files may not be included"
            " (they hold secrets)"
        )
    try:
        with open(target, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        raise ConfigurationError(
            f"{path}: line {line}: include {written!r}: {target} is not valid UTF-8"
        ) from None
    except OSError as e:
        raise ConfigurationError(
            f"{path}: line {line}: include {written!r}: cannot read {target}:"
            f" {e.strerror or e.__class__.__name__}"
        ) from None


def _resolve(text: str, path: str, chain: tuple[str, ...]) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    parts: list[str] = []
    last = 0
    for match in _INCLUDE.finditer(text):
        written = match.group("dollar") or match.group("braces") or match.group("liquid") or ""
        line = _line(text, match.start())
        relative = written.strip()
        if not relative:
            raise ConfigurationError(f"{path}: line {line}: include with no file name")
        target = os.path.normpath(os.path.join(directory, relative))
        real = os.path.realpath(target)
        if real in chain:
            cycle = " -> ".join(os.path.basename(p) for p in (*chain, real))
            raise ConfigurationError(f"{path}: line {line}: include cycle: {cycle}")
        if len(chain) > MAX_INCLUDE_DEPTH:
            raise ConfigurationError(
                f"{path}: line {line}: include {written!r}: includes nested deeper than"
                f" {MAX_INCLUDE_DEPTH} levels"
            )
        included = _readInclude(path, written, target, line)
        _refuseLiquid(_INCLUDE.sub("", included), target)
        parts.append(text[last : match.start()])
        parts.append(_resolve(included.removesuffix("\n"), target, (*chain, real)))
        last = match.end()
    parts.append(text[last:])
    return "".join(parts)


def resolveIncludes(body: str, path: str) -> str:
    """
    The prompt body of the agent file at C{path} with its includes replaced
    by the included files' text (each without its final newline), nested.

    @raise ConfigurationError: naming the file and line of an include that
        is missing, unreadable, a C{.env} file, part of a cycle or nested
        deeper than L{MAX_INCLUDE_DEPTH}; or of a Liquid tag other than a
        static include.
    """
    _refuseLiquid(_INCLUDE.sub("", body), path)
    return _resolve(body, path, (os.path.realpath(path),))


def _osName(release: str = "/etc/os-release") -> str:
    try:
        with open(release, encoding="utf-8") as f:
            fields = dict(line.split("=", 1) for line in f.read().splitlines() if "=" in line)
    except (OSError, UnicodeDecodeError, ValueError):
        fields = {}
    name = fields.get("PRETTY_NAME", "").strip().strip("\"'")
    if not name:
        name = f"{platform.system()} {platform.release()}".strip()
    return f"{name} (kernel {platform.release()})" if platform.release() else name


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError, ImportError):
        return os.environ.get("USER") or os.environ.get("USERNAME") or ""


def _timezone() -> tuple[str, tzinfo]:
    """
    The IANA name and zone of C{TZ}, else of C{/etc/localtime}, else the
    local zone by its abbreviation.
    """
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        link = os.readlink("/etc/localtime")
        candidates.append(link.split("zoneinfo/", 1)[1] if "zoneinfo/" in link else "")
    except OSError:
        pass
    for name in candidates:
        if name:
            try:
                return name, ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    local = datetime.now(UTC).astimezone().tzinfo or UTC
    return datetime.now(local).tzname() or "UTC", local


@attrs.frozen
class HostFacts:
    """
    What the host-dependent prompt variables say, read once when the server
    starts (L{current}); tests give fixed ones.
    """

    os: str
    arch: str
    kernel: str
    hostname: str
    user: str
    cd: str
    timezone: str
    zone: tzinfo = attrs.field(repr=False)

    @classmethod
    def current(cls) -> HostFacts:
        """
        This host's facts, its time zone, and the process's user and
        working directory.
        """
        name, zone = _timezone()
        return cls(
            os=_osName(),
            arch=platform.machine(),
            kernel=f"{platform.system()} {platform.release()}".strip(),
            hostname=socket.gethostname(),
            user=_user(),
            cd=os.getcwd(),
            timezone=name,
            zone=zone,
        )


def formatDescription(outputFormat: str, subAgent: bool = False) -> str:
    """
    What C{${FORMAT}} says for an agent's C{output.format}: the original's
    description of that format (a JSON answer is C{json}; a sub-agent's
    other answers are an internal exchange).
    """
    if subAgent and outputFormat != "json":
        return SUBAGENT_FORMAT
    return FORMAT_DESCRIPTIONS.get(outputFormat, FORMAT_DESCRIPTIONS["markdown"])


class PromptVariables(Mapping[str, str]):
    """
    The built-in variables of a run started at C{now} (seconds since the
    epoch, from the session's reactor), made on the first look-up: a
    prompt without a variable reference never asks, so its runs do not
    format the date.
    """

    def __init__(
        self,
        now: float,
        host: HostFacts,
        maxTurns: int,
        maxTools: int,
        outputFormat: str,
        subAgent: bool = False,
    ) -> None:
        self._arguments = (now, host, maxTurns, maxTools, outputFormat, subAgent)
        self._values: dict[str, str] | None = None

    def _made(self) -> dict[str, str]:
        if self._values is None:
            self._values = _variables(*self._arguments)
        return self._values

    def __getitem__(self, name: str) -> str:
        return self._made()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._made())

    def __len__(self) -> int:
        return len(self._made())


def _variables(
    now: float,
    host: HostFacts,
    maxTurns: int,
    maxTools: int,
    outputFormat: str,
    subAgent: bool,
) -> dict[str, str]:
    moment = datetime.fromtimestamp(now, host.zone)
    return {
        "DATETIME": moment.isoformat(timespec="seconds"),
        "TIMESTAMP": str(int(now)),
        "DAY": _DAYS[moment.weekday()],
        "TIMEZONE": host.timezone,
        "OS": host.os,
        "ARCH": host.arch,
        "KERNEL": host.kernel,
        "HOSTNAME": host.hostname,
        "USER": host.user,
        "CD": host.cd,
        "MAX_TURNS": str(maxTurns),
        "MAX_TOOLS": str(maxTools),
        "FORMAT": formatDescription(outputFormat, subAgent),
    }


#: The built-in variables of a run (L{PromptVariables}).
promptVariables = PromptVariables


def substituteVariables(text: str, variables: Mapping[str, str]) -> str:
    """
    C{text} with each C{${NAME}} and C{{{NAME}}} of a name in C{variables}
    replaced by its value; other names stay as written.
    """
    if "${" not in text and "{{" not in text:
        return text

    def value(match: re.Match[str]) -> str:
        name = match.group("dollar") or match.group("braces")
        return variables.get(name, match.group(0))

    return _VARIABLE.sub(value, text)


__all__ = [
    "FORMAT_DESCRIPTIONS",
    "MAX_INCLUDE_DEPTH",
    "SUBAGENT_FORMAT",
    "HostFacts",
    "PromptVariables",
    "formatDescription",
    "promptVariables",
    "resolveIncludes",
    "substituteVariables",
]
