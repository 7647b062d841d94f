# -*- test-case-name: tests.test_agentfile -*-
"""
C{.ai} agent files: an optional shebang line, YAML frontmatter between
C{---} lines, and a Markdown body that is the agent's system prompt.

The format and the frontmatter keys follow the TypeScript ai-agent, so one
file runs under either implementation.  Parsing is strict: an unknown key, a
value of the wrong type or out of range raises L{ConfigurationError} naming
the file, the key and the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import yaml
from jsonschema.exceptions import SchemaError
from jsonschema.validators import Draft202012Validator, validator_for

from ai_agent.advice import didYouMean
from ai_agent.errors import ConfigurationError
from ai_agent.templating import resolveIncludes


@attrs.frozen
class OutputSpec:
    """
    The agent's declared output: C{format} (C{markdown}, C{text}, C{json})
    and, for JSON, an optional JSON Schema.
    """

    format: str = "markdown"
    schema: Mapping[str, Any] | None = None


PROMPT_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "prompt": {
            "type": "string",
            "description": "The complete request for the sub-agent: it sees nothing else.",
        }
    },
    "required": ["prompt"],
    "additionalProperties": False,
}
"""
What callers send an agent that declares no structured C{input}: one
C{prompt} string.
"""

INPUT_FORMATS = ("text", "json")

#: The most validation problems named in one error.
_MAX_INPUT_PROBLEMS = 5


class InvalidInputError(ValueError):
    """
    Arguments that do not satisfy an agent's C{input}; the message names
    each field at fault.
    """


@attrs.frozen
class InputSpec:
    """
    The agent's declared input, as a caller (a parent agent, an MCP or A2A
    client) must send it: C{format} C{text} (one C{prompt} string) or
    C{json} with a JSON Schema of an object, whose arguments, validated,
    become the run's user message as compact JSON.

    @ivar schema: the JSON Schema (C{json} only; L{None} means the
        C{prompt} schema).
    """

    format: str = "text"
    schema: Mapping[str, Any] | None = None
    _validator: Any = attrs.field(init=False, default=None, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if self.schema is not None:
            cls = validator_for(self.schema, default=Draft202012Validator)
            object.__setattr__(self, "_validator", cls(self.schema))

    @property
    def structured(self) -> bool:
        """
        Whether callers send the schema's fields rather than a C{prompt}.
        """
        return self.format == "json" and self.schema is not None

    def callerSchema(self) -> Mapping[str, Any]:
        """
        The JSON Schema of what callers send.
        """
        if self.structured:
            assert self.schema is not None
            return self.schema
        return PROMPT_SCHEMA

    def userMessage(self, arguments: Mapping[str, Any]) -> str:
        """
        The run's user message for a caller's C{arguments}: the C{prompt}
        string, or for structured input the arguments as compact JSON
        (as the TypeScript ai-agent sends them).

        @raise InvalidInputError: naming the fields at fault.
        """
        if not self.structured:
            prompt = arguments.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise InvalidInputError("needs a 'prompt' string that is not empty")
            return prompt
        problems = sorted(
            self._validator.iter_errors(dict(arguments)), key=lambda e: list(e.absolute_path)
        )
        if problems:
            named = [_inputProblem(problem) for problem in problems[:_MAX_INPUT_PROBLEMS]]
            if len(problems) > _MAX_INPUT_PROBLEMS:
                named.append(f"and {len(problems) - _MAX_INPUT_PROBLEMS} more")
            raise InvalidInputError("was called with invalid arguments: " + "; ".join(named))
        return json.dumps(dict(arguments), ensure_ascii=False, separators=(",", ":"))


def _inputProblem(error: Any) -> str:
    """
    One validation error: the field's path, then jsonschema's words (cut,
    since they quote the value the caller sent).
    """
    message = str(error.message)
    if len(message) > 200:
        message = message[:197] + "..."
    path = ".".join(str(part) for part in error.absolute_path)
    return f"{path}: {message}" if path else message


@attrs.frozen
class ToolOutputSpec:
    """
    The agent's C{toolOutput}: whether a tool result over
    C{toolResponseMaxBytes} is kept aside behind a handle the model reads
    with the C{tool_output} tool (L{False}: cut as it is), and how that
    tool's extraction pass works (see L{ai_agent.tools.output}).

    @ivar maxChunks: the most chunks one extraction reads (one LLM call
        each).
    @ivar overlapPercent: how much of a chunk the next one repeats (0-50).
    @ivar avgLineBytesThreshold: above this average line length (bytes), a
        result is read by bytes rather than by lines.
    @ivar models: C{provider/model} strings the extraction pass uses
        (empty: the agent's own models).
    """

    enabled: bool = True
    maxChunks: int = 4
    overlapPercent: int = 10
    avgLineBytesThreshold: int = 1000
    models: tuple[str, ...] = ()


@attrs.frozen
class RouteTarget:
    """
    An agent named by C{advisors}, C{router.destinations} or C{handoff}.

    @ivar label: the target as the file wrote it (the router tool's enum
        values are these, as in the TypeScript ai-agent).
    @ivar path: the absolute path of its file.
    """

    label: str
    path: str


@attrs.frozen
class AgentSpec:
    """
    A parsed agent file.

    @ivar path: the absolute path of the file.
    @ivar name: C{toolName} if set, else the file name without C{.ai}.
    @ivar models: C{provider/model} strings in fallback order.
    @ivar tools: names from the config's C{mcpServers} and C{restTools},
        and C{openapi:<name>} for every operation of an C{openapiSpecs}
        document.
    @ivar agents: absolute paths of sub-agent files.
    @ivar reasoning: C{none}, C{minimal}, C{low}, C{medium} or C{high};
        L{None} leaves the provider's default.
    @ivar topK: sample from the C{topK} most likely tokens (providers that
        take C{top_k}); L{None} sends nothing.
    @ivar repeatPenalty: llama.cpp's and vLLM's C{repeat_penalty}; L{None}
        sends nothing.
    @ivar reasoningTokens: the thinking budget in tokens where a provider
        takes one (Anthropic's C{budget_tokens}); C{0} turns reasoning off
        (and L{reasoning} is then C{none}); L{None} leaves the budget to
        L{reasoning}.
    @ivar llmTimeout: longest upstream silence allowed, in seconds.
    @ivar toolTimeout: longest tool call allowed, in seconds.
    @ivar maxToolCallsPerTurn: the most tool calls of one model turn that
        run; the model is told the rest were not run.
    @ivar maxConcurrentTools: the most tool and sub-agent calls of one run
        in flight at once.
    @ivar prompt: the system prompt: the body with its includes resolved
        (its variables are substituted per run, L{ai_agent.templating}).
    @ivar input: what callers send when running the agent as a tool.
    @ivar clientTools: whether the tools a client sends with its request are
        shown to the model and handed back when called (L{False}: ignored,
        for agents behind chat UIs that always send tools).
    @ivar toolOutput: how oversized tool results are kept (L{ToolOutputSpec}).
    @ivar advisors: agents run in parallel before this one; their answers
        go to its model with the user's request.
    @ivar router: destinations this agent may hand the conversation to
        with the C{router__handoff-to} tool.
    @ivar handoff: the agent that receives this one's answer and whose
        answer is the run's.
    @ivar cache: how long (seconds) a run's answer and its tool calls'
        results are kept and replayed for the same input; L{None}: off.
    @ivar digest: a SHA-256 of the file's text and of its prompt with the
        includes resolved (part of the cache key).
    """

    path: str
    name: str
    prompt: str
    models: tuple[str, ...]
    description: str | None = None
    usage: str | None = None
    toolName: str | None = None
    tools: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()
    maxTurns: int = 10
    maxRetries: int = 3
    temperature: float | None = None
    topP: float | None = None
    topK: int | None = None
    repeatPenalty: float | None = None
    maxOutputTokens: int | None = None
    reasoning: str | None = None
    reasoningTokens: int | None = None
    llmTimeout: float = 120.0
    toolTimeout: float = 60.0
    toolResponseMaxBytes: int = 12288
    maxToolCallsPerTurn: int = 32
    maxConcurrentTools: int = 4
    caching: bool = True
    output: OutputSpec = OutputSpec()
    clientTools: bool = True
    toolOutput: ToolOutputSpec = ToolOutputSpec()
    advisors: tuple[RouteTarget, ...] = ()
    router: tuple[RouteTarget, ...] = ()
    handoff: RouteTarget | None = None
    cache: float | None = None
    digest: str = ""
    input: InputSpec = InputSpec()

    def inputSchema(self) -> Mapping[str, Any]:
        """
        The JSON Schema of what a caller sends to run this agent as a tool
        (a sub-agent, the MCP and A2A faces): its C{input} schema, or
        C{{"prompt": string}}.
        """
        return self.input.callerSchema()


RESERVED_TOOL_NAMES = frozenset({"final_report", "task_status", "batch", "tool_output"})
"""
Names of the session's internal tools, which an agent's C{toolName} may not take.
"""

RUNTIME_ONLY_KEYS: Mapping[str, str] = {
    "traceLLM": "ai-agent --verbose logs every LLM call",
    "traceMCP": "ai-agent --verbose logs every tool call",
    "verbose": "ai-agent --verbose",
    "accounting": "every run's tokens and cost are logged; prices go under 'pricing'"
    " in .ai-agent.json",
    "save": "requests are stateless; the client keeps the conversation",
    "load": "requests are stateless; the client sends the conversation",
    "stream": "the client chooses with its request's 'stream' field",
    "targets": "list the models under 'models'",
}
"""
Keys the TypeScript ai-agent rejects in frontmatter because they are
command-line options; rejected here, each with what to use here instead.
"""

UNSUPPORTED_KEYS: Mapping[str, str] = {
    "plugins": "the TypeScript ai-agent loads these JavaScript modules into its own"
    " Node.js process, and this server runs no JavaScript; give the agent an MCP server"
    " or a REST tool for work its model calls, a 'handoff' agent to rework its final"
    " answer, or 'output.schema' for fields the answer must have",
}
"""
Frontmatter keys of the TypeScript ai-agent that are deliberately not
supported here, each with the reason and what to use instead
(docs/agent-files.md, "Not supported, on purpose").
"""

OUTPUT_FORMATS = ("markdown", "text", "json")

REASONING_LEVELS = ("none", "minimal", "low", "medium", "high", "default")

_NAME = re.compile(r"[A-Za-z0-9_-]+")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)?")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_AI_SUFFIX = re.compile(r"\.ai$", re.IGNORECASE)


class _StrictLoader(yaml.SafeLoader):
    """
    A safe YAML loader that rejects a key repeated in one mapping instead of
    silently keeping the last value.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for keyNode, _ in node.value:
            if isinstance(keyNode, yaml.ScalarNode) and keyNode.tag != "tag:yaml.org,2002:merge":
                if keyNode.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {keyNode.value!r}", keyNode.start_mark
                    )
                seen.add(keyNode.value)
        return super().construct_mapping(node, deep=deep)


def _describe(value: object) -> str:
    """
    A short description of a frontmatter value for an error message.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


@attrs.frozen
class _Context:
    """
    What a key parser needs to know about the file being parsed.
    """

    path: str
    directory: str

    def fail(self, key: str, problem: str, value: object) -> ConfigurationError:
        """
        An error naming the file, the key, the requirement and the value found.
        """
        return ConfigurationError(f"{self.path}: {key!r} {problem}, got {_describe(value)}")


def _string(ctx: _Context, key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ctx.fail(key, "must be a string", value)
    return value


def _toolName(ctx: _Context, key: str, value: object) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ctx.fail(key, "must be letters, digits, '_' or '-' only", value)
    if value in RESERVED_TOOL_NAMES:
        reserved = ", ".join(sorted(RESERVED_TOOL_NAMES))
        raise ctx.fail(key, f"must not be a reserved name ({reserved})", value)
    return value


def _names(ctx: _Context, key: str, value: object) -> tuple[str, ...]:
    """
    A list of strings, or one string of comma-separated items; blanks dropped.
    """
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list):
        items = []
        for item in value:
            if not isinstance(item, str):
                raise ctx.fail(key, "must be a list of strings", item)
            items.append(item)
    else:
        raise ctx.fail(key, "must be a string or a list of strings", value)
    return tuple(item.strip() for item in items if item.strip())


def _models(ctx: _Context, key: str, value: object) -> tuple[str, ...]:
    models = _names(ctx, key, value)
    if not models:
        raise ctx.fail(key, "must name at least one 'provider/model'", value)
    for model in models:
        provider, _, name = model.partition("/")
        if not provider.strip() or not name.strip():
            raise ctx.fail(key, "entries must look like 'provider/model'", model)
    return models


def _tools(ctx: _Context, key: str, value: object) -> tuple[str, ...]:
    tools = _names(ctx, key, value)
    for tool in tools:
        if not _NAME.fullmatch(tool.removeprefix("openapi:")):
            raise ctx.fail(
                key,
                "entries must be MCP server or REST tool names (letters, digits, '_', '-'),"
                " or openapi:<document>",
                tool,
            )
    return tools


def _agents(ctx: _Context, key: str, value: object) -> tuple[str, ...]:
    return tuple(
        _agentFile(os.path.normpath(os.path.join(ctx.directory, agent)))
        for agent in _names(ctx, key, value)
    )


def _agentFile(path: str) -> str:
    """
    The sub-agent file C{path} names: C{path} itself when it is a file,
    else C{path.ai} when that is (the suffix is optional in C{agents:}),
    else C{path} as written (its loading then says it cannot be read).
    """
    if os.path.isfile(path) or _AI_SUFFIX.search(path):
        return path
    withSuffix = path + ".ai"
    return withSuffix if os.path.isfile(withSuffix) else path


def _positiveInt(ctx: _Context, key: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ctx.fail(key, "must be an integer >= 1", value)
    return value


def _rangeNumber(low: float, high: float) -> Callable[[_Context, str, object], float]:
    def parse(ctx: _Context, key: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ctx.fail(key, f"must be a number from {low:g} to {high:g}", value)
        if not low <= value <= high:
            raise ctx.fail(key, f"must be a number from {low:g} to {high:g}", value)
        return float(value)

    return parse


#: Values of a sampling key that mean "send nothing", as the TypeScript
#: ai-agent reads them.
_UNSET = ("none", "off", "unset", "default", "null")


def _unsetOr(
    parse: Callable[[_Context, str, object], Any],
) -> Callable[[_Context, str, object], Any]:
    """
    C{parse}, except that YAML C{null} and the words of L{_UNSET} give
    L{None} (the key is then not sent).
    """

    def parseOrUnset(ctx: _Context, key: str, value: object) -> Any:
        # YAML reads an unquoted off (or no) as false.
        if value is None or value is False:
            return None
        if isinstance(value, str) and value.strip().lower() in _UNSET:
            return None
        return parse(ctx, key, value)

    return parseOrUnset


def _reasoningTokens(ctx: _Context, key: str, value: object) -> int:
    """
    A thinking budget: a whole number of tokens (a number or a string of
    digits), or C{0}, C{disabled}, C{off} or C{none} for no reasoning.
    """
    if value is False:
        # YAML reads an unquoted off (or no) as false.
        return 0
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("disabled", "off", "none"):
            return 0
        if word.isdigit():
            return int(word)
    elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ctx.fail(key, "must be a whole number of tokens, or 0, disabled, off or none", value)


def _boolean(ctx: _Context, key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise ctx.fail(key, "must be true or false", value)


def _caching(ctx: _Context, key: str, value: object) -> bool:
    if isinstance(value, str) and value.strip().lower() in ("full", "none"):
        return value.strip().lower() == "full"
    raise ctx.fail(key, "must be full or none", value)


def _reasoning(ctx: _Context, key: str, value: object) -> str | None:
    if value is None:
        return "none"
    if isinstance(value, str):
        level = value.strip().lower()
        if level in ("default", "inherit", ""):
            return None
        if level == "unset":
            return "none"
        if level in REASONING_LEVELS:
            return level
    raise ctx.fail(key, f"must be one of {', '.join(REASONING_LEVELS)}", value)


def parseDuration(value: object) -> float | None:
    """
    Parse a duration as the agent files write it: a number of milliseconds,
    or a string of digits with an optional unit C{ms}, C{s}, C{m} or C{h}
    (no unit means milliseconds).

    @return: the duration in seconds, or L{None} if C{value} is not a
        positive duration.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value) / 1000
    elif isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match is None:
            return None
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "ms"]
    else:
        return None
    if not seconds > 0 or seconds == float("inf"):
        return None
    return seconds


def _duration(ctx: _Context, key: str, value: object) -> float:
    seconds = parseDuration(value)
    if seconds is None:
        raise ctx.fail(
            key, "must be a positive duration (milliseconds, or a string like '5s', '2m')", value
        )
    return seconds


def _schema(ctx: _Context, key: str, value: object) -> Mapping[str, Any]:
    """
    A JSON Schema given as a mapping, or as a string holding JSON or YAML.
    """
    schema = value
    if isinstance(value, str):
        try:
            schema = json.loads(value)
        except ValueError:
            try:
                schema = yaml.load(value, Loader=_StrictLoader)
            except yaml.YAMLError:
                raise ctx.fail(
                    key, "must be a mapping, or a string of JSON or YAML", value
                ) from None
    if not isinstance(schema, dict):
        raise ctx.fail(key, "must be a JSON Schema object (a mapping)", value)
    return schema


def _output(ctx: _Context, key: str, value: object) -> OutputSpec:
    """
    C{output}: C{format} (C{markdown}, C{text} or C{json}) and, for
    C{json}, C{schema} or C{schemaRef} (see L{_sectionSchema}).
    """
    if not isinstance(value, dict):
        raise ctx.fail(
            key, "must be a mapping with 'format' and optional 'schema' or 'schemaRef'", value
        )
    schemaKey, schema = _sectionSchema(ctx, "output", value)
    outputFormat = value.get("format", "json" if schema is not None else "markdown")
    if not isinstance(outputFormat, str) or outputFormat.lower() not in OUTPUT_FORMATS:
        raise ctx.fail("output.format", f"must be one of {', '.join(OUTPUT_FORMATS)}", outputFormat)
    outputFormat = outputFormat.lower()
    if schema is not None and outputFormat != "json":
        raise ConfigurationError(f"{ctx.path}: {schemaKey!r} needs 'output.format' json")
    return OutputSpec(format=outputFormat, schema=schema)


_TOOL_OUTPUT_KEYS = ("enabled", "maxChunks", "overlapPercent", "avgLineBytesThreshold", "models")


def _toolOutput(ctx: _Context, key: str, value: object) -> ToolOutputSpec:
    """
    C{toolOutput}: a mapping of C{enabled}, C{maxChunks},
    C{overlapPercent}, C{avgLineBytesThreshold} and C{models} (the
    TypeScript ai-agent's keys), or C{true}/C{false} alone.
    """
    if isinstance(value, bool):
        return ToolOutputSpec(enabled=value)
    if not isinstance(value, dict):
        raise ctx.fail(
            key, f"must be true, false or a mapping of {', '.join(_TOOL_OUTPUT_KEYS)}", value
        )
    for inner in value:
        if inner not in _TOOL_OUTPUT_KEYS:
            raise ConfigurationError(
                f"{ctx.path}: unknown key {inner!r} in 'toolOutput'"
                f" (allowed: {', '.join(_TOOL_OUTPUT_KEYS)})"
            )
    values: dict[str, Any] = {}
    if "enabled" in value:
        values["enabled"] = _boolean(ctx, "toolOutput.enabled", value["enabled"])
    for inner in ("maxChunks", "avgLineBytesThreshold"):
        if inner in value:
            values[inner] = _positiveInt(ctx, f"toolOutput.{inner}", value[inner])
    if "overlapPercent" in value:
        percent = value["overlapPercent"]
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 50:
            raise ctx.fail("toolOutput.overlapPercent", "must be an integer from 0 to 50", percent)
        values["overlapPercent"] = percent
    if "models" in value:
        values["models"] = _models(ctx, "toolOutput.models", value["models"])
    return ToolOutputSpec(**values)


def _target(ctx: _Context, written: str) -> RouteTarget:
    return RouteTarget(written, _agentFile(os.path.normpath(os.path.join(ctx.directory, written))))


def _advisors(ctx: _Context, key: str, value: object) -> tuple[RouteTarget, ...]:
    """
    C{advisors}: agent files (a list, or one comma-separated string).
    """
    return tuple(_target(ctx, name) for name in _names(ctx, key, value))


def _router(ctx: _Context, key: str, value: object) -> tuple[RouteTarget, ...]:
    """
    C{router}: a mapping whose C{destinations} lists at least one agent file.
    """
    if not isinstance(value, dict) or "destinations" not in value:
        raise ctx.fail(key, "must be a mapping with 'destinations' (a list of agent files)", value)
    for inner in value:
        if inner != "destinations":
            raise ConfigurationError(
                f"{ctx.path}: unknown key {inner!r} in 'router' (allowed: destinations)"
            )
    destinations = _names(ctx, "router.destinations", value["destinations"])
    if not destinations:
        raise ctx.fail("router.destinations", "must name at least one agent file", value)
    if len(set(destinations)) != len(destinations):
        raise ctx.fail("router.destinations", "must not name an agent twice", value)
    return tuple(_target(ctx, name) for name in destinations)


def _handoff(ctx: _Context, key: str, value: object) -> RouteTarget:
    """
    C{handoff}: one agent file (a list is refused, as the TypeScript
    ai-agent refuses it).
    """
    if not isinstance(value, str) or not value.strip():
        raise ctx.fail(key, "must be one agent file (a string; lists are not supported)", value)
    return _target(ctx, value.strip())


_CACHE_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
    "mo": 30 * 86400.0,
    "y": 365 * 86400.0,
}
_CACHE_TTL = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|mo|m|h|d|w|y)?")


def parseCacheTTL(value: object) -> float | None:
    """
    The C{cache} key as the TypeScript ai-agent writes it: C{off} (or
    C{false}, C{none}, C{0}), a number of milliseconds, or a string of
    digits with a unit C{ms}, C{s}, C{m}, C{h}, C{d}, C{w}, C{mo} or C{y}.

    @return: the time to live in seconds, or L{None} for off.
    @raise ValueError: for anything else.
    """
    if value is False or value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("negative")
        return float(value) / 1000 or None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("off", "none", "false", "0", ""):
            return None
        match = _CACHE_TTL.fullmatch(text)
        if match is not None:
            return float(match.group(1)) * _CACHE_UNITS[match.group(2) or "ms"] or None
    raise ValueError("not a duration")


def _cache(ctx: _Context, key: str, value: object) -> float | None:
    try:
        return parseCacheTTL(value)
    except ValueError:
        raise ctx.fail(
            key,
            "must be off, a number of milliseconds, or a duration like '30s', '1h', '7d'",
            value,
        ) from None


def _schemaFile(ctx: _Context, key: str, value: object) -> object:
    """
    The contents of a schema file (JSON or YAML) named relative to the
    agent file.
    """
    reference = _string(ctx, key, value)
    path = os.path.normpath(os.path.join(ctx.directory, reference))
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or "not readable UTF-8 text"
        raise ConfigurationError(f"{ctx.path}: {key!r} names {path}: {why}") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError:
        raise ConfigurationError(
            f"{ctx.path}: {key!r} names {path}, which is not JSON or YAML"
        ) from None


_SCHEMA_SECTION_KEYS = ("format", "schema", "schemaRef")


def _sectionSchema(
    ctx: _Context, section: str, value: Mapping[str, object]
) -> tuple[str, Mapping[str, Any] | None]:
    """
    The JSON Schema of the C{input} or C{output} mapping C{value}: its
    C{schema} (a mapping, or a string of JSON or YAML) or its C{schemaRef}
    (a JSON or YAML file relative to the agent file), never both, checked
    against the JSON Schema metaschema (its own C{$schema}, draft 2020-12
    by default).  Other keys than C{format}, C{schema} and C{schemaRef}
    are refused.

    @return: the key the schema came from (C{"output.schemaRef"}, for the
        section's further messages) and the schema, or L{None} for none.
    """
    for inner in value:
        if inner not in _SCHEMA_SECTION_KEYS:
            raise ConfigurationError(
                f"{ctx.path}: unknown key {inner!r} in {section!r}"
                f" (allowed: {', '.join(_SCHEMA_SECTION_KEYS)})"
                + didYouMean(str(inner), _SCHEMA_SECTION_KEYS)
            )
    if "schema" in value and "schemaRef" in value:
        raise ConfigurationError(f"{ctx.path}: {section!r} takes 'schema' or 'schemaRef', not both")
    if "schema" in value:
        key = f"{section}.schema"
        schema = _schema(ctx, key, value["schema"])
    elif "schemaRef" in value:
        key = f"{section}.schemaRef"
        loaded = _schemaFile(ctx, key, value["schemaRef"])
        if not isinstance(loaded, dict):
            raise ctx.fail(key, "must name a JSON Schema object (a mapping)", loaded)
        schema = loaded
    else:
        return f"{section}.schema", None
    try:
        validator_for(schema, default=Draft202012Validator).check_schema(schema)
    except SchemaError as error:
        where = "/".join(str(part) for part in error.absolute_path) or "the top level"
        raise ConfigurationError(
            f"{ctx.path}: {key!r} is not a valid JSON Schema (at {where}: {error.message})"
        ) from None
    return key, schema


def _input(ctx: _Context, key: str, value: object) -> InputSpec:
    """
    C{input}: C{format} (C{text} or C{json}) and, for C{json}, C{schema}
    or C{schemaRef} (see L{_sectionSchema}), which must describe an object.
    """
    if not isinstance(value, dict):
        raise ctx.fail(key, "must be a mapping with 'format' and 'schema' or 'schemaRef'", value)
    schemaKey, schema = _sectionSchema(ctx, "input", value)
    inputFormat = value.get("format", "json" if schema is not None else "text")
    if not isinstance(inputFormat, str) or inputFormat.lower() not in INPUT_FORMATS:
        raise ctx.fail("input.format", f"must be one of {', '.join(INPUT_FORMATS)}", inputFormat)
    inputFormat = inputFormat.lower()
    if inputFormat == "text":
        if schema is not None:
            raise ConfigurationError(
                f"{ctx.path}: {schemaKey!r} needs 'input.format' json"
                " (a text input is one 'prompt' string)"
            )
        return InputSpec()
    if schema is None:
        return InputSpec(format="json")
    schemaType = schema.get("type", "object" if "properties" in schema else None)
    if schemaType != "object":
        raise ConfigurationError(
            f"{ctx.path}: {schemaKey!r} must describe an object (type: object): callers send"
            " a tool call's arguments, which are a JSON object"
        )
    return InputSpec(format="json", schema=schema)


_KEYS: Mapping[str, Callable[[_Context, str, Any], object]] = {
    "description": _string,
    "usage": _string,
    "toolName": _toolName,
    "models": _models,
    "tools": _tools,
    "agents": _agents,
    "maxTurns": _positiveInt,
    "maxRetries": _positiveInt,
    "temperature": _rangeNumber(0, 2),
    "topP": _rangeNumber(0, 1),
    "topK": _unsetOr(_positiveInt),
    "repeatPenalty": _unsetOr(_rangeNumber(0, 2)),
    "maxOutputTokens": _positiveInt,
    "reasoning": _reasoning,
    "reasoningTokens": _reasoningTokens,
    "llmTimeout": _duration,
    "toolTimeout": _duration,
    "toolResponseMaxBytes": _positiveInt,
    "maxToolCallsPerTurn": _positiveInt,
    "maxConcurrentTools": _positiveInt,
    "output": _output,
    "input": _input,
    "caching": _caching,
    "clientTools": _boolean,
    "toolOutput": _toolOutput,
    "advisors": _advisors,
    "router": _router,
    "handoff": _handoff,
    "cache": _cache,
}


def _splitFile(text: str, path: str) -> tuple[str, int, str]:
    """
    Split an agent file into its frontmatter text, the line number (1-based)
    of the frontmatter's first line, and the body.
    """
    lines = text.removeprefix("\ufeff").replace("\r\n", "\n").split("\n")
    start = 1 if lines and lines[0].startswith("#!") else 0
    if len(lines) <= start or lines[start].rstrip() != "---":
        raise ConfigurationError(
            f"{path}: no YAML frontmatter (the file must begin with a '---' line, "
            "after an optional '#!' line)"
        )
    for end in range(start + 1, len(lines)):
        if lines[end].rstrip() == "---":
            break
    else:
        raise ConfigurationError(f"{path}: the frontmatter has no closing '---' line")
    body = lines[end + 1 :]
    while body and not body[0].strip():
        body.pop(0)
    while body and not body[-1].strip():
        body.pop()
    return "\n".join(lines[start + 1 : end]), start + 2, "\n".join(body)


def _loadFrontmatter(frontmatter: str, firstLine: int, path: str) -> dict[str, Any]:
    try:
        data = yaml.load(frontmatter, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = (
            f" at line {firstLine + mark.line}, column {mark.column + 1}"
            if mark is not None
            else ""
        )
        problem = _plainYAML(e.problem or e.context or "unreadable")
        raise ConfigurationError(f"{path}: invalid YAML frontmatter{where}: {problem}") from None
    except yaml.YAMLError as e:
        raise ConfigurationError(f"{path}: invalid YAML frontmatter: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigurationError(
            f"{path}: the frontmatter must be a mapping of keys, got {_describe(data)}"
        )
    for key in data:
        if not isinstance(key, str):
            raise ConfigurationError(
                f"{path}: frontmatter keys must be strings, got {_describe(key)}"
            )
    return data


_YAML_PROBLEMS = (
    (
        "mapping values are not allowed",
        "a ':' where a value was expected (quote a value that contains ': ')",
    ),
    ("found character '\\t'", "a tab character (indent with spaces)"),
    ("could not find expected ':'", "a line that is not 'key: value'"),
    ("did not find expected key", "the indentation does not line up with the keys above"),
    ("found undefined alias", "an '*' that names no '&' anchor (quote a value starting with '*')"),
    ("duplicate key", "a key that appears twice"),
)


def _plainYAML(problem: str) -> str:
    """
    PyYAML's wording of a problem, with a plain explanation where one is
    known.
    """
    for start, plain in _YAML_PROBLEMS:
        if problem.startswith(start):
            return f"{plain} ({problem})"
    return problem


def _reasoningProblems(values: dict[str, Any]) -> list[str]:
    """
    Reconcile C{reasoning} and C{reasoningTokens}: a budget of C{0} turns
    reasoning off; a budget with C{reasoning: none} contradicts itself.
    """
    budget = values.get("reasoningTokens")
    if budget == 0:
        values["reasoning"] = "none"
    elif budget is not None and values.get("reasoning") == "none":
        return [f"'reasoningTokens' {budget} contradicts 'reasoning' none (remove one of them)"]
    return []


def parseAgent(text: str, path: str) -> AgentSpec:
    """
    Parse the text of an agent file.

    @param text: the whole file.
    @param path: where it was read from; names the file in errors, gives
        the agent's default name, and is the base for relative sub-agent
        and include paths.

    @raise ConfigurationError: if the file is not a valid agent.
    """
    frontmatter, firstLine, body = _splitFile(text, path)
    prompt = body
    data = _loadFrontmatter(frontmatter, firstLine, path)
    absolute = os.path.abspath(path)
    ctx = _Context(path=path, directory=os.path.dirname(absolute))
    values: dict[str, Any] = {}
    # Every problem of the file is reported at once.
    problems: list[str] = []
    unknown: list[str] = []
    invalid: list[str] = []
    for key, value in data.items():
        if key in RUNTIME_ONLY_KEYS:
            problems.append(
                f"frontmatter key {key!r} is a runtime option, "
                f"use command-line flags instead: {RUNTIME_ONLY_KEYS[key]}"
            )
            continue
        if key in UNSUPPORTED_KEYS:
            problems.append(f"frontmatter key {key!r} is not supported: {UNSUPPORTED_KEYS[key]}")
            continue
        parse = _KEYS.get(key)
        if parse is None:
            problem = f"unknown frontmatter key {key!r}"
            if not unknown:
                # The allowed keys once, not after every misspelling.
                problem += f" (allowed: {', '.join(sorted(_KEYS))})"
            unknown.append(key)
            problems.append(problem + didYouMean(key, _KEYS))
            continue
        try:
            values[key] = parse(ctx, key, value)
        except ConfigurationError as error:
            invalid.append(key)
            problems.append(str(error).removeprefix(f"{path}: "))
    if "models" not in values and "models" not in invalid:
        problems.append("'models' is required (one 'provider/model' or a list of them)")
    problems.extend(_reasoningProblems(values))
    try:
        prompt = resolveIncludes(body, path)
    except ConfigurationError as error:
        problems.append(str(error).removeprefix(f"{path}: "))
    if problems:
        raise ConfigurationError(f"{path}: " + "; ".join(problems))
    name = values.get("toolName") or _AI_SUFFIX.sub("", os.path.basename(path)) or "agent"
    # The included files' text is part of the agent (and of its cache key).
    digest = hashlib.sha256(f"{text}\0{prompt}".encode()).hexdigest()
    return AgentSpec(path=absolute, name=name, prompt=prompt, digest=digest, **values)


def loadAgent(path: str) -> AgentSpec:
    """
    Read and parse an agent file (UTF-8).

    @raise ConfigurationError: if the file cannot be read or is not a valid
        agent.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise ConfigurationError(f"{path}: agent file is not valid UTF-8") from None
    except OSError as e:
        raise ConfigurationError(
            f"{path}: cannot read agent file: {e.strerror or e.__class__.__name__}"
        ) from None
    return parseAgent(text, path)


__all__ = [
    "PROMPT_SCHEMA",
    "AgentSpec",
    "InputSpec",
    "InvalidInputError",
    "OutputSpec",
    "RUNTIME_ONLY_KEYS",
    "UNSUPPORTED_KEYS",
    "RouteTarget",
    "ToolOutputSpec",
    "parseCacheTTL",
    "loadAgent",
    "parseAgent",
    "parseDuration",
]
