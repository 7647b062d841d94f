# -*- test-case-name: tests.test_rest -*-
"""
REST tools: an HTTP API called with configuration alone (C{restTools} and
the operations of C{openapiSpecs}), offered to the model as
C{rest__<name>}, as in the TypeScript ai-agent.

A call validates the model's arguments against the tool's
C{parametersSchema}, then fills the templates: C{${parameters.<name>}} in
the URL is percent-encoded as one URL component (a C{/}, C{?}, C{#} or a
bare C{..} in a value never changes the path), in headers it is the value
as is (a line break is refused), and in the body template a string that is
exactly one placeholder becomes the argument's JSON value.  Query
parameters (C{queryParamNames}, or an OpenAPI operation's) are added when
given.

The request goes through the server's upstream HTTP client (the pool the
providers use).  The answer is read up to C{maxResponseBytes}, then the
connection is closed and the result says it was cut; a C{json-stream}
answer is read line by line and ends at its C{done} line.  An HTTP error
status is a tool error carrying the status and the start of the body.
Configured header values and the variables the REST configuration uses are
replaced by C{[redacted]} in every result and error, and no URL (which may
hold a key) is ever part of one.
"""

from __future__ import annotations

import json
from typing import Any, Iterator, Mapping
from urllib.parse import quote

import attrs
from jsonschema.exceptions import SchemaError
from jsonschema.validators import Draft202012Validator, validator_for
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.http_headers import Headers

from ai_agent.config import (
    REST_PARAMETER,
    Config,
    RestToolConfig,
    describeMissing,
    headerSecrets,
)
from ai_agent.errors import AgentError, ConfigurationError
from ai_agent.events import EventSink
from ai_agent.providers import ToolSpec
from ai_agent.redaction import Redactor
from ai_agent.tools._http import _read, describeHttpFailure
from ai_agent.tools._naming import toolName
from ai_agent.tools.openapi import importOpenApi

log = Logger()

REST_NAMESPACE = "rest"

#: The prefix of an agent's C{tools} entry choosing a whole OpenAPI document.
OPENAPI_PREFIX = "openapi:"

#: The most characters of an error answer's body quoted in the tool error.
MAX_ERROR_BODY = 1000

#: The most validation problems named in one error.
_MAX_PROBLEMS = 5


class _EnoughError(Exception):
    """
    Raised from the body collector to stop reading (the size cap, or the
    C{done} line of a JSON-lines answer).
    """


def _text(value: Any) -> str:
    """
    An argument as template text: strings as they are, C{true}/C{false},
    numbers as JSON writes them, objects and arrays as compact JSON.
    """
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def encodeComponent(value: Any) -> str:
    """
    C{value} percent-encoded as one URL component (as C{encodeURIComponent}
    does), with a bare C{.} or C{..} encoded too, so that it never walks
    the path.
    """
    text = _text(value)
    if text in (".", ".."):
        return text.replace(".", "%2E")
    return quote(text, safe="!*'()")


def _placeholders(template: str) -> list[str]:
    return REST_PARAMETER.findall(template)


def _fill(template: str, arguments: Mapping[str, Any], encode: bool) -> str:
    def replace(match: Any) -> str:
        name = match.group(1)
        if name not in arguments or arguments[name] is None:
            return ""
        return encodeComponent(arguments[name]) if encode else _text(arguments[name])

    return REST_PARAMETER.sub(replace, template)


def _body(template: Any, arguments: Mapping[str, Any]) -> Any:
    """
    The body template filled: a string that is exactly one placeholder is
    the argument's value (a key whose argument is absent is left out), any
    other string is filled as text.
    """
    if isinstance(template, str):
        whole = REST_PARAMETER.fullmatch(template)
        if whole is not None:
            return arguments.get(whole.group(1), _ABSENT)
        return _fill(template, arguments, encode=False)
    if isinstance(template, list):
        return [item for item in (_body(v, arguments) for v in template) if item is not _ABSENT]
    if isinstance(template, dict):
        filled = {key: _body(value, arguments) for key, value in template.items()}
        return {key: value for key, value in filled.items() if value is not _ABSENT}
    return template


_ABSENT = object()


def _queryPairs(name: str, value: Any, brackets: bool) -> Iterator[tuple[str, str]]:
    """
    Query pairs for one argument: objects as C{name[key]=v}; arrays as
    C{name[0]=v} with C{brackets} (C{hasComplexQueryParams}), else as
    repeated C{name=v} (OpenAPI's form style).
    """
    if value is None:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _queryPairs(f"{name}[{key}]", item, brackets)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _queryPairs(f"{name}[{index}]" if brackets else name, item, brackets)
    else:
        yield name, _text(value)


@attrs.define(eq=False)
class RestTool:
    """
    One REST tool, callable by the model.

    @ivar http: the upstream HTTP client (with its connection pool).
    @ivar clock: times the tool's own C{timeout}.
    @ivar redactor: the configured secrets, kept out of results and errors.
    """

    config: RestToolConfig
    http: HTTPClient = attrs.field(repr=False)
    clock: IReactorTime = attrs.field(repr=False)
    redactor: Redactor = attrs.field(factory=Redactor, repr=False)
    _validator: Any = attrs.field(init=False, default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        schema = self.config.parametersSchema
        cls = validator_for(schema, default=Draft202012Validator)
        try:
            cls.check_schema(schema)
        except SchemaError as error:
            raise ConfigurationError(
                f"{self.config.source}: the parametersSchema of REST tool"
                f" {self.config.name!r} is not a valid JSON Schema: {error.message}"
            ) from None
        self._validator = cls(schema)

    @property
    def name(self) -> str:
        """
        C{rest__<name>}.
        """
        return toolName(REST_NAMESPACE, self.config.name)

    def toolSpec(self) -> ToolSpec:
        """
        The tool as the model sees it.
        """
        parameters = dict(self.config.parametersSchema)
        parameters.setdefault("type", "object")
        if parameters["type"] == "object":
            parameters.setdefault("properties", {})
        return ToolSpec(self.name, self.config.description, parameters)

    def call(self, arguments: Mapping[str, Any], sink: EventSink) -> Deferred[str]:
        """
        Validate C{arguments}, make the request and fire with the answer's
        text; fail with L{AgentError} (the model reads it) for arguments that
        do not fit, an HTTP error status, a failed connection or the tool's
        own timeout.  Cancelling closes the connection.
        """
        missing = describeMissing(self.config)
        if missing is not None:
            return fail(AgentError(f"{self.name} is unavailable: {missing}"))
        problems = sorted(
            self._validator.iter_errors(dict(arguments)), key=lambda e: list(e.absolute_path)
        )
        if problems:
            named = [_problem(problem) for problem in problems[:_MAX_PROBLEMS]]
            return fail(
                AgentError(f"{self.name} was called with invalid arguments: " + "; ".join(named))
            )
        try:
            method, url, headers, body = self._request(arguments)
        except AgentError as error:
            return fail(error)
        call = Deferred.fromCoroutine(self._exchange(method, url, headers, body))
        timeout = self.config.timeout
        if timeout is not None:
            call.addTimeout(timeout, self.clock, onTimeoutCancel=self._timedOut)
        return call

    def _timedOut(self, result: Any, timeout: float) -> Any:
        if isinstance(getattr(result, "value", None), CancelledError):
            raise AgentError(f"{self.name} did not answer within {timeout:g} s")
        return result

    def _request(self, arguments: Mapping[str, Any]) -> tuple[str, str, Headers, bytes | None]:
        config = self.config
        path, mark, rest = config.url.partition("?")
        for name in _placeholders(path):
            if arguments.get(name) is None:
                raise AgentError(f"{self.name} needs the argument {name!r} for its URL")
        url = _fill(path, arguments, encode=True)
        query = _fill(rest, arguments, encode=True) if mark else ""
        pairs = [
            f"{quote(key, safe='[]')}={quote(value, safe='')}"
            for name in config.queryParams
            if name in arguments
            for key, value in _queryPairs(name, arguments[name], config.complexQuery)
        ]
        query = "&".join(part for part in (query, *pairs) if part)
        if query:
            url = f"{url}?{query}"
        headers = Headers()
        for name, template in config.headers.items():
            used = _placeholders(template)
            if used and all(arguments.get(n) is None for n in used):
                # An optional header the model did not fill.
                continue
            value = _fill(template, arguments, encode=False)
            if any(c in value for c in "\r\n\0"):
                raise AgentError(f"{self.name}: the header {name!r} would hold a line break")
            headers.addRawHeader(name, value)
        body: bytes | None = None
        if config.hasBody:
            template = config.bodyTemplate
            filled = _body(template, arguments)
            if filled is not _ABSENT:
                if isinstance(template, str) and not REST_PARAMETER.fullmatch(template):
                    # A text template is sent as the text it makes.
                    body = str(filled).encode("utf-8")
                else:
                    body = json.dumps(filled, ensure_ascii=False).encode("utf-8")
                if not headers.hasHeader("content-type"):
                    headers.addRawHeader("Content-Type", "application/json")
        return config.method, url, headers, body

    async def _exchange(self, method: str, url: str, headers: Headers, body: bytes | None) -> str:
        config = self.config
        started = self.clock.seconds()
        try:
            # Redirects are not followed: the next host would get the
            # configured headers, and could be one the tool was not meant
            # to reach.
            response = await self.http.request(
                method, url, headers=headers, data=body, unbuffered=True, allow_redirects=False
            )
        except CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - the model reads why
            raise AgentError(
                f"{self.name} could not reach its API: {describeHttpFailure(error)}"
            ) from None
        collector = _Collector(config, failed=response.code >= 400)
        try:
            await _read(response, collector.feed)
        except _EnoughError:
            pass
        except CancelledError:
            raise
        except Exception as error:  # noqa: BLE001
            raise AgentError(
                f"{self.name}: the answer was cut: {describeHttpFailure(error)}"
            ) from None
        log.info(
            "REST tool {tool} answered HTTP {status} with {size} bytes in {elapsed:.3f}s",
            tool=self.name,
            status=response.code,
            size=collector.size,
            elapsed=self.clock.seconds() - started,
        )
        text = self.redactor.scrub(collector.text())
        if 300 <= response.code < 400:
            raise AgentError(
                f"{self.name} got HTTP {response.code}: a redirect, which REST tools do not"
                " follow (point the tool's URL at the final address)"
            )
        if response.code >= 400:
            if len(text) > MAX_ERROR_BODY:
                text = text[: MAX_ERROR_BODY - 3] + "..."
            raise AgentError(f"{self.name} got HTTP {response.code}: {text}".rstrip(": "))
        if not text:
            return f"(HTTP {response.code}, no content)"
        return text


@attrs.define
class _Collector:
    """
    Collects an answer's bytes up to the cap, or follows a JSON-lines
    answer to its C{done} line.
    """

    config: RestToolConfig
    failed: bool = False
    size: int = 0
    cut: bool = False
    _chunks: list[bytes] = attrs.field(factory=list)
    _pending: bytes = b""
    _tokens: list[str] = attrs.field(factory=list)
    _answer: str | None = None

    def feed(self, data: bytes) -> None:
        limit = self.config.maxResponseBytes
        if self.size + len(data) > limit:
            data = data[: limit - self.size]
            self.cut = True
        self.size += len(data)
        if self.config.streaming is None or self.failed:
            self._chunks.append(data)
        else:
            self._lines(data)
        if self.cut:
            raise _EnoughError()

    def _lines(self, data: bytes) -> None:
        streaming = self.config.streaming
        assert streaming is not None
        *lines, self._pending = (self._pending + data).split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace").strip()
            if streaming.linePrefix and line.startswith(streaming.linePrefix):
                line = line[len(streaming.linePrefix) :].strip()
            if not line or line == "[DONE]":
                continue
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if not isinstance(item, dict):
                continue
            kind = item.get(streaming.discriminatorField)
            if kind == streaming.doneValue:
                answer = item.get(streaming.answerField)
                self._answer = answer if isinstance(answer, str) else "".join(self._tokens)
                raise _EnoughError()
            if kind == streaming.tokenValue and isinstance(item.get(streaming.tokenField), str):
                self._tokens.append(item[streaming.tokenField])

    def text(self) -> str:
        if self.config.streaming is not None and not self.failed:
            text = self._answer if self._answer is not None else "".join(self._tokens)
        else:
            text = b"".join(self._chunks).decode("utf-8", "replace")
        if self.cut:
            text += (
                f"\n[the answer was cut: only its first {self.config.maxResponseBytes} bytes"
                " were read]"
            )
        return text


def _problem(error: Any) -> str:
    message = str(error.message)
    if len(message) > 200:
        message = message[:197] + "..."
    path = ".".join(str(part) for part in error.absolute_path)
    return f"{path}: {message}" if path else message


@attrs.define(eq=False)
class RestCatalog:
    """
    Every REST tool the configuration offers: C{restTools}, and the
    operations of the C{openapiSpecs} documents that agents choose (an
    agent's C{tools} entry C{openapi:<name>}), imported at load.
    """

    tools: dict[str, RestTool] = attrs.field(factory=dict)
    documents: dict[str, tuple[RestTool, ...]] = attrs.field(factory=dict)

    @classmethod
    def build(
        cls,
        config: Config,
        http: HTTPClient,
        clock: IReactorTime,
        documents: Any = (),
    ) -> RestCatalog:
        """
        The catalogue of C{config}'s REST tools and of the OpenAPI
        C{documents} named.

        @raise ConfigurationError: a document cannot be imported, or a
            tool's schema is not valid JSON Schema.
        """
        redactor = restRedactor(config)
        catalog = cls()
        for name, entry in config.restTools.items():
            catalog.tools[name] = RestTool(entry, http, clock, redactor)
        for name in documents:
            spec = config.openapiSpecs[name]
            imported = importOpenApi(spec)
            catalog.documents[name] = tuple(
                RestTool(entry, http, clock, redactor) for entry in imported.values()
            )
        return catalog

    def select(self, entries: Any) -> tuple[tuple[RestTool, ...], frozenset[str]]:
        """
        The REST tools an agent's C{tools} entries choose, and which
        entries were REST ones (the rest name MCP servers).
        """
        chosen: list[RestTool] = []
        claimed: set[str] = set()
        for entry in entries:
            if entry in self.tools:
                chosen.append(self.tools[entry])
                claimed.add(entry)
            elif (
                entry.startswith(OPENAPI_PREFIX) and entry[len(OPENAPI_PREFIX) :] in self.documents
            ):
                chosen.extend(self.documents[entry[len(OPENAPI_PREFIX) :]])
                claimed.add(entry)
        return tuple(chosen), frozenset(claimed)


def restRedactor(config: Config) -> Redactor:
    """
    The secrets of the REST configuration: header values (the credential
    after C{Bearer} too) and the variables its sections use.
    """
    values: list[str] = list(config.restSecrets)
    for tool in config.restTools.values():
        values.extend(headerSecrets(tool.headers))
    for spec in config.openapiSpecs.values():
        values.extend(headerSecrets(spec.headers))
    return Redactor.of(values)


__all__ = [
    "OPENAPI_PREFIX",
    "REST_NAMESPACE",
    "RestCatalog",
    "RestTool",
    "encodeComponent",
    "restRedactor",
]
