# -*- test-case-name: tests.test_config -*-
"""
Layered configuration: C{.ai-agent.json} files with sibling C{.ai-agent.env}
files, C{${VAR}} expansion, provider and MCP server definitions.

Layers, nearest first: an explicit C{--config} file, the working directory,
each agent directory, then C{~/.ai-agent/ai-agent.json}.  Nearer layers win
key by key.  A placeholder whose variable is not set never stops loading: the
provider or MCP server that uses it records the variable's name in
C{missingVariables}, and L{describeMissing} explains it when the entry is
used.

No exception message or C{repr} produced here contains a configured value
that may be a secret: errors name files, key paths and expected types only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from twisted.logger import Logger

from ai_agent.advice import didYouMean
from ai_agent.agentfile import parseCacheTTL
from ai_agent.errors import ConfigurationError
from ai_agent.quotaconfig import Limits, LimitsConfig

log = Logger()


@attrs.frozen
class ProviderConfig:
    """
    One configured LLM endpoint.

    @ivar type: the wire protocol: C{openai}, C{anthropic} or C{ollama}.
    @ivar baseUrl: the API root, without a trailing C{/}.
    @ivar apiKey: the key, or L{None} for none (also when its variable is
        not set).
    @ivar missingVariables: C{${VAR}} names used by this entry that were not
        set; using the provider fails with a message naming them.
    @ivar local: for the C{local} type (an embedded llama.cpp, see
        L{ai_agent.providers.local}): C{models} (name to GGUF path),
        C{threads}, C{contextSize} and C{parallel}, as configured.
    """

    name: str
    type: str
    baseUrl: str
    apiKey: str | None = attrs.field(default=None, repr=False)
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    missingVariables: tuple[str, ...] = ()
    local: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class McpServerConfig:
    """
    One configured MCP server (C{stdio} or C{http}).
    """

    name: str
    type: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    url: str | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    missingVariables: tuple[str, ...] = ()
    #: How long its tools' results are cached (seconds; L{None}: not).
    cache: float | None = None
    #: Per tool (its name on the server): how long its results are cached.
    toolsCache: Mapping[str, float | None] = attrs.field(factory=dict)

    def cacheTTL(self, tool: str) -> float | None:
        """
        How long the results of C{tool} (its name on the server) are cached.
        """
        return self.toolsCache[tool] if tool in self.toolsCache else self.cache


#: The most bytes of a REST answer read, unless a tool sets its own.
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024

#: The HTTP methods an OpenAPI document's operations are imported for.
OPENAPI_METHODS = ("get", "post", "put", "patch", "delete")


@attrs.frozen
class RestStreaming:
    """
    How a REST tool reads a JSON-lines answer (C{streaming.mode}
    C{json-stream}): each line, after C{linePrefix}, is a JSON object whose
    C{discriminatorField} says what it is: C{tokenValue} lines add their
    C{tokenField} to the answer, the C{doneValue} line ends it (its
    C{answerField}, when a string, is the whole answer).
    """

    linePrefix: str = ""
    discriminatorField: str = "type"
    doneValue: str = "done"
    answerField: str = "answer"
    tokenValue: str = "token"
    tokenField: str = "content"


@attrs.frozen
class RestToolConfig:
    """
    One REST tool (C{restTools.<name>}, or an operation of an OpenAPI
    document): an HTTP request templated from the model's arguments.

    @ivar url: the URL template; C{${parameters.<name>}} placeholders are
        percent-encoded as one URL component.
    @ivar headers: header templates (their values may be secrets).
    @ivar parametersSchema: the JSON Schema the arguments are validated
        against before any request.
    @ivar bodyTemplate: the JSON body template, when C{hasBody}.
    @ivar queryParams: arguments sent as query parameters when given.
    @ivar complexQuery: whether object and array query parameters are
        written with brackets (C{f[0][k]=v}) rather than repeated (C{f=v}).
    @ivar timeout: seconds a call may take (the agent's C{toolTimeout}
        bounds it too), or L{None}.
    @ivar maxResponseBytes: the most bytes of an answer read; the rest is
        left unread and the result says it was cut.
    @ivar source: where it was configured (a file, or C{openapiSpecs.<name>}).
    """

    name: str
    description: str
    method: str
    url: str = attrs.field(repr=False)
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    parametersSchema: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    hasBody: bool = False
    bodyTemplate: Any = attrs.field(default=None, repr=False)
    queryParams: tuple[str, ...] = ()
    complexQuery: bool = False
    streaming: RestStreaming | None = None
    timeout: float | None = None
    maxResponseBytes: int = DEFAULT_MAX_RESPONSE_BYTES
    missingVariables: tuple[str, ...] = ()
    source: str = ""
    #: How long its results are cached (seconds; L{None}: not).
    cache: float | None = None


@attrs.frozen
class OpenApiSpecConfig:
    """
    An OpenAPI document (C{openapiSpecs.<name>}) whose operations become
    REST tools named C{<name>_<operationId>}, chosen in an agent file as
    C{openapi:<name>}.

    @ivar spec: the document's absolute path (JSON or YAML).
    @ivar baseUrl: overrides the document's first C{servers} URL.
    @ivar headers: sent with every call (their values may be secrets).
    @ivar includeMethods: the HTTP methods imported (lower case).
    @ivar tagFilter: when not empty, only operations with one of these tags.
    """

    name: str
    spec: str
    baseUrl: str | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    includeMethods: tuple[str, ...] = OPENAPI_METHODS
    tagFilter: tuple[str, ...] = ()
    timeout: float | None = None
    maxResponseBytes: int = DEFAULT_MAX_RESPONSE_BYTES
    missingVariables: tuple[str, ...] = ()
    source: str = ""


@attrs.frozen
class Pricing:
    """
    Prices in USD per million tokens.
    """

    prompt: float
    completion: float


@attrs.frozen
class Config:
    """
    The merged configuration.

    @ivar providers: by name, including the built-in C{openai},
        C{anthropic} and C{ollama}.
    @ivar pricing: by C{provider/model}.
    @ivar sources: the configuration files that were read, nearest first.
    @ivar extra: top-level sections this module does not interpret, merged
        and expanded like the rest.
    @ivar restTools: REST tools by name (C{restTools}).
    @ivar openapiSpecs: OpenAPI documents whose operations become REST
        tools (C{openapiSpecs}), by name.
    @ivar restSecrets: the values of the C{${VAR}} variables the REST
        sections use (they may sit in a URL's query), kept out of results,
        errors and answers.
    """

    providers: Mapping[str, ProviderConfig]
    mcpServers: Mapping[str, McpServerConfig] = attrs.field(factory=dict)
    pricing: Mapping[str, Pricing] = attrs.field(factory=dict)
    sources: tuple[str, ...] = ()
    extra: Mapping[str, Any] = attrs.field(factory=dict)
    keys: Mapping[str, ClientKey] = attrs.field(factory=dict)
    sealingKeys: tuple[str, ...] = attrs.field(default=(), repr=False)
    restTools: Mapping[str, RestToolConfig] = attrs.field(factory=dict)
    openapiSpecs: Mapping[str, OpenApiSpecConfig] = attrs.field(factory=dict)
    restSecrets: tuple[str, ...] = attrs.field(default=(), repr=False)
    limits: LimitsConfig = attrs.field(factory=LimitsConfig)


@attrs.frozen
class ClientKey:
    """
    A named client API key (C{"keys"}): one tenant of the server.

    @ivar name: the entry's name, which logs and the run store know the
        tenant by.
    @ivar digest: the SHA-256 of the key (from C{key}, or C{keyHash}
        written as C{sha256:<hex>}); the key itself is not kept.
    @ivar agents: the model ids the key may use, or L{None} for all.
    @ivar limits: the key's own limits (C{"limits"}), over the defaults.
    """

    name: str
    digest: bytes = attrs.field(repr=False)
    agents: tuple[str, ...] | None = None
    limits: Limits = Limits()


PROVIDER_TYPES = ("anthropic", "local", "ollama", "openai")

MCP_TYPES = ("http", "stdio")

BUILTIN_PROVIDERS: Mapping[str, Mapping[str, str]] = {
    "openai": {
        "type": "openai",
        "baseUrl": "https://api.openai.com/v1",
        "apiKey": "${OPENAI_API_KEY}",
    },
    "anthropic": {
        "type": "anthropic",
        "baseUrl": "https://api.anthropic.com",
        "apiKey": "${ANTHROPIC_API_KEY}",
    },
    "ollama": {"type": "ollama", "baseUrl": "http://localhost:11434/v1"},
    "local": {"type": "local"},
}
"""
Providers that exist without any configuration; a configured entry of the
same name is merged over them.
"""

_TYPE_ALIASES = {"openai-compatible": "openai"}
_DEFAULT_BASE_URLS = {name: entry.get("baseUrl", "") for name, entry in BUILTIN_PROVIDERS.items()}
_PROVIDER_KEYS = (
    "apiKey",
    "baseUrl",
    "contextSize",
    "headers",
    "models",
    "parallel",
    "threads",
    "type",
)
#: The keys only the C{local} type takes (its GGUF files and llama.cpp's settings).
_LOCAL_KEYS = ("contextSize", "models", "parallel", "threads")
_MCP_KEYS = ("args", "cache", "command", "env", "headers", "toolsCache", "type", "url")
_PRICING_KEYS = ("completion", "prompt")
#: What a named client key's entry takes.
_CLIENT_KEY_KEYS = ("agents", "key", "keyHash", "limits")
#: What the top-level C{"limits"} takes.
_LIMITS_KEYS = ("agents", "default")
_SECTIONS = (
    "providers",
    "mcpServers",
    "pricing",
    "keys",
    "sealingKeys",
    "restTools",
    "openapiSpecs",
    "limits",
)

#: A named key's name: what the run store and logs know the tenant by.
_CLIENT_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_KEY_HASH = re.compile(r"sha256:([0-9a-fA-F]{64})")
#: The shortest sealing key accepted, in characters.
MIN_SEALING_KEY = 32

_PROVIDER_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_MCP_NAME = re.compile(r"[A-Za-z0-9_-]+")
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_ENV_LINE = re.compile(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=[ \t]*(.*)", re.DOTALL)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


# --- .env files -------------------------------------------------------------


def _doubleQuoted(rest: str, where: str) -> tuple[str, str]:
    """
    Read a double-quoted value at the start of C{rest}.

    @return: the unescaped value and the text after the closing quote.
    """
    chars: list[str] = []
    index = 1
    while index < len(rest):
        char = rest[index]
        if char == "\\" and index + 1 < len(rest):
            following = rest[index + 1]
            chars.append(_ESCAPES.get(following, "\\" + following))
            index += 2
        elif char == '"':
            return "".join(chars), rest[index + 1 :]
        else:
            chars.append(char)
            index += 1
    raise ConfigurationError(f"{where}: unterminated double-quoted value")


def parseEnvFile(text: str, path: str) -> dict[str, str]:
    """
    Parse a C{.env} file: C{KEY=value} or C{export KEY=value} lines; blank
    lines and C{#} comments are skipped.  A value may be in single quotes
    (taken literally) or double quotes (with C{\\n}, C{\\t}, C{\\"} and
    C{\\\\} escapes); an unquoted value ends at C{" #"}.

    @param path: names the file in errors.

    @raise ConfigurationError: naming the file and line of a malformed line
        (never quoting its text, which may hold a secret).
    """
    result: dict[str, str] = {}
    for number, line in enumerate(text.removeprefix("\ufeff").splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{path}: line {number}"
        match = _ENV_LINE.fullmatch(stripped)
        if match is None:
            raise ConfigurationError(f"{where}: expected KEY=value")
        key, rest = match.groups()
        if rest.startswith('"'):
            value, rest = _doubleQuoted(rest, where)
        elif rest.startswith("'"):
            end = rest.find("'", 1)
            if end < 0:
                raise ConfigurationError(f"{where}: unterminated single-quoted value")
            value, rest = rest[1:end], rest[end + 1 :]
        else:
            value, rest = re.split(r"\s#", rest, maxsplit=1)[0].strip(), ""
        rest = rest.strip()
        if rest and not rest.startswith("#"):
            raise ConfigurationError(f"{where}: unexpected text after the quoted value of {key}")
        result[key] = value
    return result


# --- ${VAR} expansion ---------------------------------------------------------


@attrs.frozen
class _Unresolved:
    """
    A configured string that uses variables which are not set.

    @ivar text: the string as written.
    @ivar value: the string with the unset variables replaced by nothing.
    @ivar missing: the unset variables' names.
    """

    text: str = attrs.field(repr=False)
    value: str = attrs.field(repr=False)
    missing: tuple[str, ...]


def _expandString(text: str, lookups: Sequence[Mapping[str, str]]) -> str | _Unresolved:
    """
    Replace C{${VAR}} and C{${VAR:-default}} from the first of C{lookups}
    where C{VAR} is set and not empty.
    """
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        for lookup in lookups:
            found = lookup.get(name)
            if found:
                return found
        if default is not None:
            return default
        if name not in missing:
            missing.append(name)
        return ""

    value = _PLACEHOLDER.sub(replace, text)
    if missing:
        return _Unresolved(text, value, tuple(missing))
    return value


def _expandTree(node: object, lookups: Sequence[Mapping[str, str]]) -> Any:
    """
    Expand every string inside parsed JSON (keys are left alone).
    """
    if isinstance(node, str):
        return _expandString(node, lookups)
    if isinstance(node, dict):
        return {key: _expandTree(value, lookups) for key, value in node.items()}
    if isinstance(node, list):
        return [_expandTree(value, lookups) for value in node]
    return node


def _missingIn(node: object) -> tuple[str, ...]:
    """
    The unset variables used anywhere inside C{node}, in order of appearance.
    """
    found: dict[str, None] = {}
    if isinstance(node, _Unresolved):
        found.update(dict.fromkeys(node.missing))
    elif isinstance(node, dict):
        for value in node.values():
            found.update(dict.fromkeys(_missingIn(value)))
    elif isinstance(node, list):
        for value in node:
            found.update(dict.fromkeys(_missingIn(value)))
    return tuple(found)


def _asWritten(node: object) -> Any:
    """
    Replace unresolved strings by their text as written (for sections this
    module does not interpret).
    """
    if isinstance(node, _Unresolved):
        return node.text
    if isinstance(node, dict):
        return {key: _asWritten(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_asWritten(value) for value in node]
    return node


def _text(node: object) -> str | None:
    """
    A string field's value; unresolved variables read as empty.
    """
    if isinstance(node, _Unresolved):
        return node.value
    if isinstance(node, str):
        return node
    return None


# --- validating one file ------------------------------------------------------


def _keyPath(*parts: str) -> str:
    """
    A readable key path: C{providers.local.baseUrl}, C{pricing["a/b"].prompt}.
    """
    path = parts[0]
    for part in parts[1:]:
        if _MCP_NAME.fullmatch(part):
            path += f".{part}"
        else:
            path += f"[{json.dumps(part)}]"
    return path


def _jsonType(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _wrongType(path: str, keyPath: str, expected: str, value: object) -> ConfigurationError:
    return ConfigurationError(f"{path}: {keyPath} must be {expected}, got {_jsonType(value)}")


def _checkObject(path: str, keyPath: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _wrongType(path, keyPath, "an object", value)
    return value


def _checkKeys(path: str, keyPath: str, entry: Mapping[str, Any], allowed: Sequence[str]) -> None:
    for key in entry:
        if key not in allowed:
            raise ConfigurationError(
                f"{path}: {keyPath}: unknown key {key!r} (allowed: {', '.join(allowed)})"
                + didYouMean(key, allowed)
            )


def _checkOptionalString(path: str, keyPath: str, value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise _wrongType(path, keyPath, "a string", value)


def _checkStringMap(path: str, keyPath: str, value: object) -> None:
    if value is None:
        return
    for key, item in _checkObject(path, keyPath, value).items():
        if not isinstance(item, str):
            raise _wrongType(path, _keyPath(keyPath, key), "a string", item)


def _checkType(path: str, keyPath: str, value: object, allowed: Sequence[str]) -> None:
    _checkOptionalString(path, keyPath, value)
    literal = isinstance(value, str) and "${" not in value
    if literal and _TYPE_ALIASES.get(str(value), value) not in allowed:
        raise ConfigurationError(
            f"{path}: {keyPath} must be one of {', '.join(allowed)}, got {value!r}"
        )


def _checkProviders(path: str, section: object) -> None:
    for name, entry in _checkObject(path, "providers", section).items():
        keyPath = _keyPath("providers", name)
        if not _PROVIDER_NAME.fullmatch(name):
            raise ConfigurationError(
                f"{path}: provider name {name!r} must be letters, digits, '.', '_' or '-'"
            )
        entry = _checkObject(path, keyPath, entry)
        _checkKeys(path, keyPath, entry, _PROVIDER_KEYS)
        _checkType(path, _keyPath(keyPath, "type"), entry.get("type"), PROVIDER_TYPES)
        for key in ("baseUrl", "apiKey"):
            _checkOptionalString(path, _keyPath(keyPath, key), entry.get(key))
        _checkStringMap(path, _keyPath(keyPath, "headers"), entry.get("headers"))
        _checkStringMap(path, _keyPath(keyPath, "models"), entry.get("models"))
        for key in ("contextSize", "parallel", "threads"):
            value = entry.get(key)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                raise _wrongType(path, _keyPath(keyPath, key), "a positive integer", value)


def _checkMcpServers(path: str, section: object) -> None:
    for name, entry in _checkObject(path, "mcpServers", section).items():
        keyPath = _keyPath("mcpServers", name)
        if not _MCP_NAME.fullmatch(name):
            raise ConfigurationError(
                f"{path}: MCP server name {name!r} must be letters, digits, '_' or '-'"
            )
        entry = _checkObject(path, keyPath, entry)
        _checkKeys(path, keyPath, entry, _MCP_KEYS)
        _checkType(path, _keyPath(keyPath, "type"), entry.get("type"), MCP_TYPES)
        for key in ("command", "url"):
            _checkOptionalString(path, _keyPath(keyPath, key), entry.get(key))
        args = entry.get("args")
        if args is not None:
            if not isinstance(args, list):
                raise _wrongType(path, _keyPath(keyPath, "args"), "an array of strings", args)
            for arg in args:
                if not isinstance(arg, str):
                    raise _wrongType(path, _keyPath(keyPath, "args"), "an array of strings", arg)
        for key in ("env", "headers"):
            _checkStringMap(path, _keyPath(keyPath, key), entry.get(key))
        _checkCacheTTL(path, _keyPath(keyPath, "cache"), entry.get("cache"))
        toolsCache = entry.get("toolsCache")
        if toolsCache is not None:
            for tool, ttl in _checkObject(
                path, _keyPath(keyPath, "toolsCache"), toolsCache
            ).items():
                _checkCacheTTL(path, _keyPath(keyPath, "toolsCache", tool), ttl)


def _checkCacheTTL(path: str, keyPath: str, value: object) -> None:
    try:
        parseCacheTTL(value)
    except ValueError:
        raise _wrongType(
            path, keyPath, "off, milliseconds, or a duration like '30s', '1h', '7d'", value
        ) from None


def _checkPricing(path: str, section: object) -> None:
    for model, entry in _checkObject(path, "pricing", section).items():
        keyPath = _keyPath("pricing", model)
        provider, _, name = model.partition("/")
        if not provider or not name:
            raise ConfigurationError(f"{path}: pricing key {model!r} must be 'provider/model'")
        entry = _checkObject(path, keyPath, entry)
        _checkKeys(path, keyPath, entry, _PRICING_KEYS)
        for key, price in entry.items():
            isNumber = isinstance(price, (int, float)) and not isinstance(price, bool)
            if not isNumber or not math.isfinite(price) or price < 0:
                raise ConfigurationError(
                    f"{path}: {_keyPath(keyPath, key)} must be a non-negative number "
                    "(USD per million tokens)"
                )


def _checkClientKeys(path: str, section: object) -> None:
    for name, entry in _checkObject(path, "keys", section).items():
        keyPath = _keyPath("keys", name)
        if not _CLIENT_KEY_NAME.fullmatch(name):
            raise ConfigurationError(
                f"{path}: key name {name!r} must be 1 to 64 letters, digits, '.', '_' or '-'"
                " (starting with a letter or digit)"
            )
        entry = _checkObject(path, keyPath, entry)
        _checkKeys(path, keyPath, entry, _CLIENT_KEY_KEYS)
        for key in ("key", "keyHash"):
            _checkOptionalString(path, _keyPath(keyPath, key), entry.get(key))
        agents = entry.get("agents")
        if agents is not None and (
            not isinstance(agents, list) or not all(isinstance(a, str) for a in agents)
        ):
            raise _wrongType(path, _keyPath(keyPath, "agents"), "an array of model ids", agents)
        if "limits" in entry:
            _parseLimits(path, _keyPath(keyPath, "limits"), entry["limits"])


def _parseLimits(path: str, keyPath: str, value: object) -> Limits:
    try:
        return Limits.parse(value)
    except ValueError as error:
        raise ConfigurationError(f"{path}: {keyPath}: {error}") from None


def _checkLimitsSection(path: str, section: object) -> None:
    section = _checkObject(path, "limits", section)
    _checkKeys(path, "limits", section, _LIMITS_KEYS)
    if "default" in section:
        _parseLimits(path, "limits.default", section["default"])
    for agent, entry in _checkObject(path, "limits.agents", section.get("agents", {})).items():
        _parseLimits(path, _keyPath("limits", "agents", agent), entry)


def _limitsConfig(section: object, keys: Mapping[str, ClientKey]) -> LimitsConfig:
    """
    The limits of the merged configuration (each layer was checked).
    """
    section = section if isinstance(section, dict) else {}
    default = section.get("default")
    return LimitsConfig(
        default=Limits() if default is None else _parseLimits("", "limits.default", default),
        agents={
            str(agent): _parseLimits("", _keyPath("limits", "agents", agent), entry)
            for agent, entry in (section.get("agents") or {}).items()
        },
        keys={name: key.limits for name, key in keys.items() if not key.limits.empty},
    )


def _checkSealingKeys(path: str, section: object) -> None:
    if not isinstance(section, list) or not all(isinstance(k, str) for k in section):
        raise _wrongType(path, "sealingKeys", "an array of strings", section)


def _checkLayer(path: str, data: object) -> dict[str, Any]:
    """
    Check the shape and types of one configuration file.
    """
    if not isinstance(data, dict):
        raise ConfigurationError(
            f"{path}: the configuration must be a JSON object, got {_jsonType(data)}"
        )
    checks: dict[str, Callable[[str, object], None]] = {
        "providers": _checkProviders,
        "mcpServers": _checkMcpServers,
        "pricing": _checkPricing,
        "keys": _checkClientKeys,
        "sealingKeys": _checkSealingKeys,
        "restTools": _checkRestTools,
        "openapiSpecs": _checkOpenApiSpecs,
        "limits": _checkLimitsSection,
    }
    for section, check in checks.items():
        if section in data:
            check(path, data[section])
    for key in data:
        if key not in checks:
            log.warn(
                "{path}: unknown top-level key {key!r} is ignored (known: {known}){hint}",
                path=path,
                key=key,
                known=", ".join(checks),
                hint=didYouMean(key, checks),
            )
    return data


# --- reading the layers -------------------------------------------------------


@attrs.frozen
class _Layer:
    """
    One configuration file, expanded with its own environment.
    """

    path: str
    data: Mapping[str, Any]


def _read(path: str) -> str | None:
    """
    The text of a UTF-8 file, or L{None} if it does not exist.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise ConfigurationError(f"{path}: not valid UTF-8") from None
    except OSError as e:
        raise ConfigurationError(
            f"{path}: cannot read: {e.strerror or e.__class__.__name__}"
        ) from None


def _parseJson(text: str, path: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigurationError(
            f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from None


def _candidates(
    configFile: str | None, cwd: str, agentDirs: Sequence[str], home: str | None
) -> list[tuple[str, str, bool]]:
    """
    The configuration files to try, nearest first, as (JSON path, env path,
    required), without duplicates.
    """
    candidates: list[tuple[str, str, bool]] = []
    if configFile is not None:
        path = os.path.abspath(os.path.join(cwd, configFile))
        candidates.append((path, os.path.join(os.path.dirname(path), ".ai-agent.env"), True))
    for directory in [cwd, *agentDirs]:
        directory = os.path.abspath(os.path.join(cwd, directory))
        candidates.append(
            (
                os.path.join(directory, ".ai-agent.json"),
                os.path.join(directory, ".ai-agent.env"),
                False,
            )
        )
    if home is not None:
        base = os.path.join(home, ".ai-agent")
        candidates.append(
            (os.path.join(base, "ai-agent.json"), os.path.join(base, "ai-agent.env"), False)
        )
    seen: set[str] = set()
    unique = []
    for candidate in candidates:
        key = os.path.realpath(candidate[0])
        if key not in seen:
            seen.add(key)
            unique.append(candidate)
    return unique


def _merge(far: Mapping[str, Any], near: Mapping[str, Any]) -> dict[str, Any]:
    """
    Merge two parsed files: objects merge key by key, anything else in
    C{near} replaces C{far}.
    """
    merged = dict(far)
    for key, value in near.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# --- building the values ------------------------------------------------------


def _nearestSource(layers: Sequence[_Layer], section: str, name: str) -> str:
    """
    The nearest file that configures C{section.name} (for error messages).
    """
    for layer in layers:
        entries = layer.data.get(section)
        if isinstance(entries, dict) and name in entries:
            return layer.path
    return "built-in configuration"


def _stringMap(node: object) -> dict[str, str]:
    if not isinstance(node, dict):
        return {}
    return {key: _text(value) or "" for key, value in node.items()}


def _provider(name: str, entry: Mapping[str, Any], source: str) -> ProviderConfig:
    keyPath = _keyPath("providers", name)
    missing = _missingIn(entry)
    providerType = _text(entry.get("type"))
    if providerType is None:
        if name not in PROVIDER_TYPES:
            raise ConfigurationError(
                f"{source}: {keyPath}.type is required (one of {', '.join(PROVIDER_TYPES)})"
            )
        providerType = name
    providerType = _TYPE_ALIASES.get(providerType, providerType)
    if providerType not in PROVIDER_TYPES:
        raise ConfigurationError(
            f"{source}: {keyPath}.type must be one of {', '.join(PROVIDER_TYPES)}"
        )
    local = {key: entry[key] for key in _LOCAL_KEYS if entry.get(key) is not None}
    if providerType == "local":
        local["models"] = _stringMap(entry.get("models"))
        for key in ("baseUrl", "apiKey", "headers"):
            if entry.get(key) is not None:
                raise ConfigurationError(
                    f"{source}: {keyPath}.{key} does not apply to a local provider (its models"
                    " run in this process); for an OpenAI-compatible server set type to openai"
                )
    elif local:
        raise ConfigurationError(
            f"{source}: {keyPath}.{sorted(local)[0]} applies to local providers only"
        )
    baseUrl = _text(entry.get("baseUrl"))
    if baseUrl is None:
        baseUrl = _DEFAULT_BASE_URLS[providerType]
    elif not isinstance(entry.get("baseUrl"), _Unresolved) and not baseUrl.startswith(
        ("http://", "https://")
    ):
        raise ConfigurationError(f"{source}: {keyPath}.baseUrl must be an http:// or https:// URL")
    if _hasUserinfo(baseUrl):
        # The URL is not quoted: what precedes the '@' is a secret.
        raise ConfigurationError(
            f"{source}: {keyPath}.baseUrl holds a user name or password before '@';"
            " put the credentials in apiKey or headers instead"
        )
    apiKey = entry.get("apiKey")
    return ProviderConfig(
        name=name,
        type=providerType,
        baseUrl=baseUrl.rstrip("/"),
        apiKey=apiKey if isinstance(apiKey, str) and apiKey else None,
        headers=_stringMap(entry.get("headers")),
        missingVariables=missing,
        local=local,
    )


def _hasUserinfo(url: str) -> bool:
    """
    Whether C{url}'s authority holds userinfo (C{user:pass@host}), which
    would put a secret in every message that names the URL.
    """
    rest = url.partition("://")[2]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    return "@" in authority


def _mcpServer(name: str, entry: Mapping[str, Any], source: str) -> McpServerConfig:
    keyPath = _keyPath("mcpServers", name)
    serverType = _text(entry.get("type"))
    command = _text(entry.get("command"))
    url = _text(entry.get("url"))
    if serverType is None:
        if command is not None and url is not None:
            raise ConfigurationError(
                f"{source}: {keyPath} has both 'command' and 'url'; set 'type' to stdio or http"
            )
        if command is None and url is None:
            raise ConfigurationError(
                f"{source}: {keyPath} needs 'command' (a stdio server) or 'url' (an http server)"
            )
        serverType = "stdio" if command is not None else "http"
    if serverType not in MCP_TYPES:
        raise ConfigurationError(f"{source}: {keyPath}.type must be one of {', '.join(MCP_TYPES)}")
    forbidden: tuple[str, ...]
    if serverType == "stdio":
        required, forbidden = "command", ("url", "headers")
    else:
        required, forbidden = "url", ("command", "args", "env")
    if entry.get(required) is None:
        raise ConfigurationError(
            f"{source}: {keyPath}.{required} is required for a {serverType} server"
        )
    for key in forbidden:
        if entry.get(key):
            raise ConfigurationError(
                f"{source}: {keyPath}.{key} does not apply to a {serverType} server"
            )
    if url is not None and _hasUserinfo(url):
        raise ConfigurationError(
            f"{source}: {keyPath}.url holds a user name or password before '@';"
            " put the credentials in headers instead"
        )
    return McpServerConfig(
        name=name,
        type=serverType,
        command=command,
        args=tuple(_text(arg) or "" for arg in entry.get("args") or ()),
        env=_stringMap(entry.get("env")),
        url=url,
        headers=_stringMap(entry.get("headers")),
        missingVariables=_missingIn(entry),
        cache=parseCacheTTL(entry.get("cache")),
        toolsCache={
            str(tool): parseCacheTTL(ttl) for tool, ttl in (entry.get("toolsCache") or {}).items()
        },
    )


def _pricing(model: str, entry: Mapping[str, Any], source: str) -> Pricing:
    for key in _PRICING_KEYS:
        if key not in entry:
            raise ConfigurationError(f"{source}: {_keyPath('pricing', model, key)} is required")
    return Pricing(prompt=float(entry["prompt"]), completion=float(entry["completion"]))


def _clientKey(name: str, entry: Mapping[str, Any], source: str) -> ClientKey:
    keyPath = _keyPath("keys", name)
    key, keyHash = entry.get("key"), entry.get("keyHash")
    if (key is None) == (keyHash is None):
        raise ConfigurationError(
            f"{source}: {keyPath} needs exactly one of 'key' (the key, e.g. \"${{TEAM_KEY}}\")"
            " and 'keyHash' (\"sha256:<hex>\")"
        )
    for field, value in (("key", key), ("keyHash", keyHash)):
        if isinstance(value, _Unresolved):
            raise ConfigurationError(
                f"{source}: {_keyPath(keyPath, field)} uses the environment variable"
                f" {', '.join(value.missing)}, which is not set"
            )
    if key is not None:
        text = str(key).strip()
        if not text:
            raise ConfigurationError(f"{source}: {_keyPath(keyPath, 'key')} is empty")
        digest = hashlib.sha256(text.encode("utf-8")).digest()
    else:
        match = _KEY_HASH.fullmatch(str(keyHash).strip())
        if match is None:
            raise ConfigurationError(
                f"{source}: {_keyPath(keyPath, 'keyHash')} must be 'sha256:' and 64 hex"
                ' digits (printf %s "$KEY" | sha256sum)'
            )
        digest = bytes.fromhex(match.group(1))
    agents = entry.get("agents")
    limits = entry.get("limits")
    return ClientKey(
        name,
        digest,
        None if agents is None else tuple(_text(a) or "" for a in agents),
        Limits() if limits is None else _parseLimits(source, _keyPath(keyPath, "limits"), limits),
    )


def _clientKeys(layers: Sequence[_Layer], section: object) -> dict[str, ClientKey]:
    if not isinstance(section, dict):
        return {}
    keys = {
        name: _clientKey(name, entry, _nearestSource(layers, "keys", name))
        for name, entry in section.items()
    }
    seen: dict[bytes, str] = {}
    for name, key in keys.items():
        other = seen.setdefault(key.digest, name)
        if other != name:
            raise ConfigurationError(f"keys: {other!r} and {name!r} have the same key")
    return keys


def _sealingKeys(section: object) -> tuple[str, ...]:
    if not isinstance(section, list):
        return ()
    found: list[str] = []
    for index, value in enumerate(section):
        if isinstance(value, _Unresolved):
            raise ConfigurationError(
                f"sealingKeys[{index}] uses the environment variable"
                f" {', '.join(value.missing)}, which is not set"
            )
        text = str(value).strip()
        if len(text) < MIN_SEALING_KEY:
            raise ConfigurationError(
                f"sealingKeys[{index}] is {len(text)} characters; a sealing key has at least"
                f" {MIN_SEALING_KEY} (e.g. openssl rand -base64 32)"
            )
        found.append(text)
    return tuple(found)


def loadConfig(
    *,
    configFile: str | None,
    cwd: str,
    agentDirs: Sequence[str],
    home: str | None,
    environ: Mapping[str, str],
) -> Config:
    """
    Read and merge the configuration layers.

    @param configFile: an explicit configuration file (C{--config}); it must
        exist.  Relative to C{cwd}.
    @param cwd: the working directory; its C{.ai-agent.json} is read.
    @param agentDirs: directories holding agent files, nearest first; each
        one's C{.ai-agent.json} is read.  Relative to C{cwd}.
    @param home: the user's home directory, for
        C{~/.ai-agent/ai-agent.json}; L{None} to skip that layer.
    @param environ: the process environment, consulted after each layer's
        own env file.

    @raise ConfigurationError: naming the file and key path of an invalid
        value, or a missing C{configFile}.
    """
    layers: list[_Layer] = []
    envs: list[dict[str, str]] = []
    restSecrets: dict[str, None] = {}
    for path, envPath, required in _candidates(configFile, cwd, agentDirs, home):
        envText = _read(envPath)
        env = parseEnvFile(envText, envPath) if envText is not None else {}
        envs.append(env)
        text = _read(path)
        if text is None:
            if required:
                raise ConfigurationError(f"{path}: configuration file not found")
            continue
        data = _checkLayer(path, _parseJson(text, path))
        layers.append(_Layer(path, _expandTree(data, (env, environ))))
        restSecrets.update(dict.fromkeys(_restVariables(data, (env, environ))))

    merged: dict[str, Any] = {
        "providers": _expandTree(dict(BUILTIN_PROVIDERS), (*envs, environ)),
    }
    for layer in reversed(layers):
        merged = _merge(merged, layer.data)

    providers = {
        name: _provider(name, entry, _nearestSource(layers, "providers", name))
        for name, entry in merged["providers"].items()
    }
    mcpServers = {
        name: _mcpServer(name, entry, _nearestSource(layers, "mcpServers", name))
        for name, entry in merged.get("mcpServers", {}).items()
    }
    pricing = {
        model: _pricing(model, entry, _nearestSource(layers, "pricing", model))
        for model, entry in merged.get("pricing", {}).items()
    }
    extra = {key: _asWritten(value) for key, value in merged.items() if key not in _SECTIONS}
    restTools, openapiSpecs = _restSections(merged, layers, mcpServers)
    keys = _clientKeys(layers, merged.get("keys"))
    return Config(
        providers=providers,
        mcpServers=mcpServers,
        pricing=pricing,
        sources=tuple(layer.path for layer in layers),
        extra=extra,
        keys=keys,
        limits=_limitsConfig(merged.get("limits"), keys),
        sealingKeys=_sealingKeys(merged.get("sealingKeys")),
        restTools=restTools,
        openapiSpecs=openapiSpecs,
        restSecrets=tuple(restSecrets),
    )


# --- REST tools and OpenAPI documents -------------------------------------------

REST_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_REST_KEYS = (
    "bodyTemplate",
    "cache",
    "description",
    "hasComplexQueryParams",
    "headers",
    "maxResponseBytes",
    "method",
    "parametersSchema",
    "queryParamNames",
    "queue",
    "streaming",
    "timeoutMs",
    "url",
)
_STREAMING_KEYS = (
    "answerField",
    "discriminatorField",
    "doneValue",
    "linePrefix",
    "mode",
    "timeoutMs",
    "tokenField",
    "tokenValue",
)
_OPENAPI_KEYS = (
    "baseUrl",
    "headers",
    "includeMethods",
    "maxResponseBytes",
    "queue",
    "spec",
    "tagFilter",
    "timeoutMs",
)
#: Keys of the TypeScript ai-agent's REST tools that are accepted and
#: ignored here, with why.
_IGNORED_REST_KEYS = {
    "queue": "calls are bounded by the agent's maxConcurrentTools",
}
#: The placeholder of a model's argument in a REST template.
REST_PARAMETER = re.compile(r"\$\{parameters\.([^}]+)\}")
#: Header names whose values are not secrets (every other configured REST
#: header value is kept out of results, errors and answers).
_PLAIN_HEADERS = frozenset({"accept", "accept-language", "content-type", "user-agent"})


def _checkRestTools(path: str, section: object) -> None:
    for name, entry in _checkObject(path, "restTools", section).items():
        keyPath = _keyPath("restTools", name)
        if not _MCP_NAME.fullmatch(name):
            raise ConfigurationError(
                f"{path}: REST tool name {name!r} must be letters, digits, '_' or '-'"
            )
        entry = _checkObject(path, keyPath, entry)
        _checkKeys(path, keyPath, entry, _REST_KEYS)
        for key in ("description", "method", "url"):
            _checkOptionalString(path, _keyPath(keyPath, key), entry.get(key))
        _checkStringMap(path, _keyPath(keyPath, "headers"), entry.get("headers"))
        if "parametersSchema" in entry:
            _checkObject(path, _keyPath(keyPath, "parametersSchema"), entry["parametersSchema"])
        names = entry.get("queryParamNames")
        if names is not None and (
            not isinstance(names, list) or not all(isinstance(n, str) for n in names)
        ):
            raise _wrongType(
                path, _keyPath(keyPath, "queryParamNames"), "an array of strings", names
            )
        flag = entry.get("hasComplexQueryParams")
        if flag is not None and not isinstance(flag, bool):
            raise _wrongType(path, _keyPath(keyPath, "hasComplexQueryParams"), "a boolean", flag)
        streaming = entry.get("streaming")
        if streaming is not None:
            streaming = _checkObject(path, _keyPath(keyPath, "streaming"), streaming)
            _checkKeys(path, _keyPath(keyPath, "streaming"), streaming, _STREAMING_KEYS)
        _checkLimits(path, keyPath, entry)


def _checkOpenApiSpecs(path: str, section: object) -> None:
    for name, entry in _checkObject(path, "openapiSpecs", section).items():
        keyPath = _keyPath("openapiSpecs", name)
        if not _MCP_NAME.fullmatch(name):
            raise ConfigurationError(
                f"{path}: OpenAPI document name {name!r} must be letters, digits, '_' or '-'"
            )
        entry = _checkObject(path, keyPath, entry)
        _checkKeys(path, keyPath, entry, _OPENAPI_KEYS)
        for key in ("spec", "baseUrl"):
            _checkOptionalString(path, _keyPath(keyPath, key), entry.get(key))
        _checkStringMap(path, _keyPath(keyPath, "headers"), entry.get("headers"))
        for key in ("includeMethods", "tagFilter"):
            value = entry.get(key)
            if value is not None and (
                not isinstance(value, list) or not all(isinstance(v, str) for v in value)
            ):
                raise _wrongType(path, _keyPath(keyPath, key), "an array of strings", value)
        _checkLimits(path, keyPath, entry)


def _checkLimits(path: str, keyPath: str, entry: Mapping[str, Any]) -> None:
    for key in ("timeoutMs", "maxResponseBytes"):
        value = entry.get(key)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise _wrongType(path, _keyPath(keyPath, key), "a positive integer", value)


def _restVariables(data: Any, lookups: Sequence[Mapping[str, str]]) -> list[str]:
    """
    The values of the C{${VAR}} variables used in one file's C{restTools}
    and C{openapiSpecs} (secrets wherever they end up, a URL's query
    included).
    """
    found: list[str] = []

    def visit(node: object) -> None:
        if isinstance(node, str):
            for match in _PLACEHOLDER.finditer(node):
                for lookup in lookups:
                    value = lookup.get(match.group(1))
                    if value:
                        found.append(value)
                        break
        elif isinstance(node, dict):
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    if isinstance(data, dict):
        visit(data.get("restTools"))
        visit(data.get("openapiSpecs"))
    return found


def headerSecrets(headers: Mapping[str, str]) -> list[str]:
    """
    The secrets of configured REST headers: each value (but those of
    L{_PLAIN_HEADERS} and templates of the model's arguments) and, for a
    value such as C{Bearer <token>}, the credential after the scheme.
    """
    secrets: list[str] = []
    for name, value in headers.items():
        if name.lower() in _PLAIN_HEADERS or not value or REST_PARAMETER.search(value):
            # A templated value is filled from the model's arguments at
            # call time; the variables in it are secrets already.
            continue
        secrets.append(value)
        scheme, _, credential = value.strip().partition(" ")
        if credential.strip():
            secrets.append(credential.strip())
    return secrets


def checkRestUrl(url: str, where: str) -> None:
    """
    Refuse a REST URL template that is not C{http://} or C{https://}, that
    holds userinfo, or that lets an argument choose the scheme or the host.

    @param where: names the configuration entry in the message.
    """
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"{where}.url must be an http:// or https:// URL")
    rest = url.partition("://")[2]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if REST_PARAMETER.search(authority) or "${" in authority:
        raise ConfigurationError(
            f"{where}.url takes ${{parameters.*}} in its path and query only, never in its host"
        )
    if "@" in authority:
        raise ConfigurationError(
            f"{where}.url holds a user name or password before '@';"
            " put the credentials in headers instead"
        )


def _seconds(entry: Mapping[str, Any]) -> float | None:
    value = entry.get("timeoutMs")
    return value / 1000 if isinstance(value, int) else None


def _restTool(name: str, entry: Mapping[str, Any], source: str) -> RestToolConfig:
    keyPath = _keyPath("restTools", name)
    where = f"{source}: {keyPath}"
    for key in ("description", "method", "url"):
        if entry.get(key) is None:
            raise ConfigurationError(f"{where}.{key} is required")
    method = (_text(entry["method"]) or "").upper()
    if method not in REST_METHODS:
        raise ConfigurationError(f"{where}.method must be one of {', '.join(REST_METHODS)}")
    missing = _missingIn(entry)
    url = _text(entry["url"]) or ""
    if not isinstance(entry["url"], _Unresolved):
        checkRestUrl(url, where)
    for key, why in _IGNORED_REST_KEYS.items():
        if key in entry:
            log.info("{where}.{key} is ignored here: {why}", where=where, key=key, why=why)
    try:
        cache = parseCacheTTL(entry.get("cache"))
    except ValueError:
        raise ConfigurationError(
            f"{where}.cache must be off, milliseconds, or a duration like '30s', '1h', '7d'"
        ) from None
    streamingEntry = entry.get("streaming")
    streaming = None
    if isinstance(streamingEntry, dict):
        if _text(streamingEntry.get("mode")) != "json-stream":
            raise ConfigurationError(f"{where}.streaming.mode must be json-stream")
        fields = {
            key: _text(streamingEntry[key]) or ""
            for key in attrs.fields_dict(RestStreaming)
            if key in streamingEntry
        }
        streaming = RestStreaming(**fields)
    schema = _asWritten(entry.get("parametersSchema", {"type": "object", "properties": {}}))
    complexQuery = entry.get("hasComplexQueryParams") is True
    queryParams = tuple(entry.get("queryParamNames") or ()) if complexQuery else ()
    timeout = _seconds(entry)
    if isinstance(streamingEntry, dict) and isinstance(streamingEntry.get("timeoutMs"), int):
        timeout = streamingEntry["timeoutMs"] / 1000
    return RestToolConfig(
        name=name,
        description=_text(entry["description"]) or "",
        method=method,
        url=url,
        headers=_stringMap(entry.get("headers")),
        parametersSchema=schema,
        hasBody="bodyTemplate" in entry,
        bodyTemplate=_asWritten(entry.get("bodyTemplate")),
        queryParams=queryParams,
        complexQuery=complexQuery,
        streaming=streaming,
        timeout=timeout,
        maxResponseBytes=entry.get("maxResponseBytes") or DEFAULT_MAX_RESPONSE_BYTES,
        missingVariables=missing,
        source=source,
        cache=cache,
    )


def _openApiSpec(name: str, entry: Mapping[str, Any], source: str) -> OpenApiSpecConfig:
    where = f"{source}: {_keyPath('openapiSpecs', name)}"
    spec = _text(entry.get("spec"))
    if not spec:
        raise ConfigurationError(f"{where}.spec is required (the document's file)")
    if spec.startswith(("http://", "https://")):
        raise ConfigurationError(
            f"{where}.spec must be a local file: documents are not fetched from the network"
            " (save it next to the configuration)"
        )
    base = os.path.dirname(source) if os.path.isabs(source) else os.getcwd()
    baseUrl = _text(entry.get("baseUrl"))
    if baseUrl is not None and not isinstance(entry.get("baseUrl"), _Unresolved):
        checkRestUrl(baseUrl, where)
    methods = tuple(m.lower() for m in entry.get("includeMethods") or ())
    for method in methods:
        if method.upper() not in REST_METHODS:
            raise ConfigurationError(
                f"{where}.includeMethods entries must be among"
                f" {', '.join(m.lower() for m in REST_METHODS)}"
            )
    for key, why in _IGNORED_REST_KEYS.items():
        if key in entry:
            log.info("{where}.{key} is ignored here: {why}", where=where, key=key, why=why)
    return OpenApiSpecConfig(
        name=name,
        spec=os.path.normpath(os.path.join(base, spec)),
        baseUrl=baseUrl.rstrip("/") if baseUrl else None,
        headers=_stringMap(entry.get("headers")),
        includeMethods=methods or OPENAPI_METHODS,
        tagFilter=tuple(entry.get("tagFilter") or ()),
        timeout=_seconds(entry),
        maxResponseBytes=entry.get("maxResponseBytes") or DEFAULT_MAX_RESPONSE_BYTES,
        missingVariables=_missingIn(entry),
        source=source,
    )


def _restSections(
    merged: Mapping[str, Any], layers: Sequence[_Layer], mcpServers: Mapping[str, Any]
) -> tuple[dict[str, RestToolConfig], dict[str, OpenApiSpecConfig]]:
    """
    The merged C{restTools} and C{openapiSpecs}; a REST tool may not share
    its name with an MCP server (an agent's C{tools} entry names either).
    """
    restTools = {
        name: _restTool(name, entry, _nearestSource(layers, "restTools", name))
        for name, entry in merged.get("restTools", {}).items()
    }
    for name, tool in restTools.items():
        if name in mcpServers:
            raise ConfigurationError(
                f"{tool.source}: restTools.{name} has the name of an MCP server;"
                " an agent's 'tools' entry could mean either, rename one"
            )
    openapiSpecs = {
        name: _openApiSpec(name, entry, _nearestSource(layers, "openapiSpecs", name))
        for name, entry in merged.get("openapiSpecs", {}).items()
    }
    return restTools, openapiSpecs


def describeMissing(
    entry: ProviderConfig | McpServerConfig | RestToolConfig | OpenApiSpecConfig,
) -> str | None:
    """
    Explain why a provider or MCP server cannot be used because variables it
    needs are not set, or L{None} if it has none missing.  The text names
    variables, never values.
    """
    names = entry.missingVariables
    if not names:
        return None
    kinds = {
        ProviderConfig: "provider",
        McpServerConfig: "MCP server",
        RestToolConfig: "REST tool",
        OpenApiSpecConfig: "OpenAPI document",
    }
    kind = kinds[type(entry)]
    if len(names) == 1:
        needs = f"the environment variable {names[0]}, which is not set"
    else:
        listed = ", ".join(names[:-1]) + f" and {names[-1]}"
        needs = f"the environment variables {listed}, which are not set"
    return f"{kind} {entry.name!r} needs {needs}"


__all__ = [
    "BUILTIN_PROVIDERS",
    "ClientKey",
    "REST_METHODS",
    "REST_PARAMETER",
    "Config",
    "McpServerConfig",
    "OpenApiSpecConfig",
    "Pricing",
    "ProviderConfig",
    "RestStreaming",
    "RestToolConfig",
    "checkRestUrl",
    "headerSecrets",
    "describeMissing",
    "loadConfig",
    "parseEnvFile",
]
