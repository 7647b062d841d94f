# -*- test-case-name: tests.test_provider_openai -*-
"""
The C{openai} wire type: OpenAI Chat Completions (also spoken by Ollama,
vLLM, llama.cpp, OpenRouter and most other OpenAI-compatible servers).

One call is one C{POST {baseUrl}/chat/completions}, streamed (SSE) or not.
The response body is always read unbuffered through our own body protocol,
so that a silence timeout and cancellation can close the upstream connection
at any moment (C{treq.collect}'s Deferred has no canceller and its collector
only runs when data arrives).
"""

from __future__ import annotations

import json
import re
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Mapping, cast
from typing import Protocol as TypingProtocol

import attrs
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectError, ConnectionClosed, DNSLookupError
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.error import SchemeNotSupported
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from ai_agent import __version__
from ai_agent.errors import ProviderError
from ai_agent.events import Usage
from ai_agent.providers._base import DeltaSink, LLMRequest, LLMResponse, ToolCall
from ai_agent.sse import DEFAULT_MAX_BUFFER, SSEError, SSEEvent, SSEParser

_MAX_ERROR_BODY = 64 * 1024
_MAX_ERROR_MESSAGE = 300
_MAX_RETRY_AFTER = 60.0
_DONE_GRACE = 5.0

log = Logger()


class _Timer(TypingProtocol):
    """
    The part of L{twisted.internet.interfaces.IDelayedCall} used here (typed
    for mypy without the zope plugin).
    """

    def active(self) -> bool: ...

    def cancel(self) -> None: ...

    def reset(self, secondsFromNow: float) -> None: ...


class _Clock(TypingProtocol):
    """
    The part of L{IReactorTime} used here.
    """

    def seconds(self) -> float: ...

    def callLater(self, delay: float, f: Callable[..., Any], /, *args: Any) -> _Timer: ...


class _Response(TypingProtocol):
    """
    The part of L{twisted.web.iweb.IResponse} used here.
    """

    code: int
    phrase: bytes
    headers: Headers

    def deliverBody(self, protocol: Protocol) -> None: ...


@attrs.define(eq=False)
class OpenAIProvider:
    """
    A Chat Completions endpoint.

    @ivar name: the provider's configuration name (used in error messages).
    @ivar baseUrl: the API root, e.g. C{https://api.openai.com/v1}.
    @ivar apiKey: sent as C{Authorization: Bearer}; never logged or shown.
    @ivar headers: extra request headers from the configuration (they may
        replace C{Authorization}).
    @ivar http: the injected client, with its own connection pool.
    @ivar reactor: schedules the silence timeout.
    @ivar missingVariables: configuration variables that were not set; any
        call fails at once naming them.
    @ivar maxBuffer: the most characters of one SSE event, or bytes of a JSON
        body, accepted from the upstream.
    """

    name: str
    baseUrl: str
    http: HTTPClient = attrs.field(repr=False)
    reactor: IReactorTime = attrs.field(repr=False)
    apiKey: str | None = attrs.field(default=None, repr=False)
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    missingVariables: tuple[str, ...] = ()
    maxBuffer: int = DEFAULT_MAX_BUFFER

    def complete(self, request: LLMRequest, sink: DeltaSink) -> Deferred[LLMResponse]:
        """
        Make one model call.  See L{ai_agent.providers.Provider}.

        @return: fires with the assembled L{LLMResponse}, or fails with
            L{ProviderError}; cancelling it closes the upstream connection
            and fails it with L{CancelledError}.
        """
        if self.missingVariables:
            return fail(self._notConfigured())
        return _Completion(self, request, sink).start()

    @property
    def url(self) -> str:
        """
        The Chat Completions URL.
        """
        return self.baseUrl.rstrip("/") + "/chat/completions"

    def payload(self, request: LLMRequest) -> dict[str, Any]:
        """
        The JSON body for C{request}.
        """
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [message.asOpenAI() for message in request.messages],
        }
        if request.tools:
            body["tools"] = [tool.asOpenAI() for tool in request.tools]
        optional: dict[str, Any] = {
            "temperature": request.temperature,
            "top_p": request.topP,
            "max_tokens": request.maxTokens,
            "seed": request.seed,
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        if request.stop:
            body["stop"] = list(request.stop)
        if request.reasoning is not None and request.reasoning != "none":
            body["reasoning_effort"] = request.reasoning
        body["stream"] = request.stream
        if request.stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def requestHeaders(self, request: LLMRequest) -> dict[str, str]:
        """
        The HTTP headers for C{request}: accept, user agent, bearer token
        (when a key is set) and the configured headers.
        """
        headers = {
            "Accept": "text/event-stream" if request.stream else "application/json",
            "User-Agent": f"ai-agent/{__version__}",
        }
        if self.apiKey:
            headers["Authorization"] = f"Bearer {self.apiKey}"
        headers.update(self.headers)
        return headers

    def scrub(self, text: str) -> str:
        """
        Remove anything that looks like the configured API key from
        C{text}: the key itself, a long fragment of it, or a masked form such
        as C{sk-ab***yz}.
        """
        key = self.apiKey
        if not key or len(key) < 4:
            return text
        text = text.replace(key, "[redacted]")

        def redact(match: re.Match[str]) -> str:
            token = match.group(0)
            if len(token) >= 8 and token in key:
                return "[redacted]"
            if "*" in token:
                head, _, tail = token.partition("*")
                tail = tail.rstrip("*").rpartition("*")[2]
                if len(head) >= 3 and key.startswith(head) and key.endswith(tail):
                    return "[redacted]"
            return token

        return _TOKEN.sub(redact, text)

    def error(self, request: LLMRequest, what: str, cause: str, **kwargs: Any) -> ProviderError:
        """
        A L{ProviderError} whose message names this provider and the model,
        with the key scrubbed from C{cause}.

        @param what: the failure, e.g. C{"rejected the request"}.
        @param kwargs: passed to L{ProviderError}.
        """
        message = f"provider {self.name!r} {what} for model {request.model!r}"
        if cause:
            message += f": {cause}"
        return ProviderError(self.scrub(message), **kwargs)

    def _notConfigured(self) -> ProviderError:
        names = ", ".join(self.missingVariables)
        if len(self.missingVariables) == 1:
            needs = f"the environment variable {names}, which is not set"
        else:
            needs = f"the environment variables {names}, which are not set"
        return ProviderError(
            f"provider {self.name!r} needs {needs}",
            status=500,
            code="provider_not_configured",
            retryable=False,
        )


_TOKEN = re.compile(r"[A-Za-z0-9_\-\.\*]+")


@attrs.define
class _ToolCallParts:
    id: str = ""
    name: str = ""
    arguments: list[str] = attrs.field(factory=list)


class _BodyReader(Protocol):
    """
    Hands an upstream response body to its L{_Completion}.
    """

    def __init__(self, completion: _Completion) -> None:
        self._completion = completion

    def connectionMade(self) -> None:
        self._completion._bodyStarted(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self._completion._bodyData(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._completion._bodyEnded(reason)


def _responseTransport(response: _Response) -> Any:
    """
    Find the connection under a (possibly wrapped) response, for bodies
    whose protocol never receives a transport (C{ContentDecoderAgent}'s gzip
    wrapper does not pass one on).
    """
    current: Any = response
    for _ in range(8):
        transport = getattr(current, "_transport", None)
        if transport is not None:
            return transport
        current = getattr(current, "original", None)
        if current is None:
            return None
    return None


_SSE, _JSON, _ERROR = "sse", "json", "error"


@attrs.define(eq=False)
class _Completion:
    """
    One in-flight call: the request, the body, the silence timer, the
    assembled answer, and the one result Deferred.
    """

    provider: OpenAIProvider
    request: LLMRequest
    sink: DeltaSink
    result: Deferred[LLMResponse] = attrs.field(init=False)
    _requestDeferred: Deferred[Any] | None = attrs.field(default=None, init=False)
    _response: _Response | None = attrs.field(default=None, init=False)
    _transport: Any = attrs.field(default=None, init=False)
    _timer: _Timer | None = attrs.field(default=None, init=False)
    _done: bool = attrs.field(default=False, init=False)
    _mode: str = attrs.field(default=_SSE, init=False)
    _parser: SSEParser = attrs.field(init=False)
    _body: list[bytes] = attrs.field(factory=list, init=False)
    _bodyLength: int = attrs.field(default=0, init=False)
    _content: list[str] = attrs.field(factory=list, init=False)
    _reasoning: list[str] = attrs.field(factory=list, init=False)
    _toolCalls: dict[int, _ToolCallParts] = attrs.field(factory=dict, init=False)
    _finishReason: str | None = attrs.field(default=None, init=False)
    _usage: Usage | None = attrs.field(default=None, init=False)
    _sawDone: bool = attrs.field(default=False, init=False)
    _clock: _Clock = attrs.field(init=False)
    _stopping: Failure | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self._clock = cast(_Clock, self.provider.reactor)
        self.result = Deferred(canceller=self._cancel)
        self._parser = SSEParser(maxBuffer=self.provider.maxBuffer)

    # The request.

    def start(self) -> Deferred[LLMResponse]:
        provider, request = self.provider, self.request
        log.debug(
            "provider {provider} calling model {model} (stream={stream})",
            provider=provider.name,
            model=request.model,
            stream=request.stream,
        )
        self._armTimer()
        try:
            requestDeferred = provider.http.post(
                provider.url,
                json=provider.payload(request),
                headers=Headers(
                    {key: [value] for key, value in provider.requestHeaders(request).items()}
                ),
                unbuffered=True,
            )
        except Exception as e:
            self._fail(self._error("could not send a request", _describe(e), retryable=False))
            return self.result
        self._requestDeferred = requestDeferred
        requestDeferred.addCallbacks(self._gotResponse, self._requestFailed)
        requestDeferred.addErrback(self._bug)
        return self.result

    def _gotResponse(self, response: _Response) -> None:
        self._requestDeferred = None
        self._response = response
        if self._done:
            # Cannot happen through our canceller; be safe anyway.
            response.deliverBody(_BodyReader(self))
            self._abort()
            return
        self._armTimer()
        contentType = (response.headers.getRawHeaders(b"content-type") or [b""])[0].lower()
        if not 200 <= response.code < 300:
            self._mode = _ERROR
        elif self.request.stream and not contentType.startswith(b"application/json"):
            self._mode = _SSE
        else:
            self._mode = _JSON
        response.deliverBody(_BodyReader(self))

    def _requestFailed(self, reason: Failure) -> None:
        self._requestDeferred = None
        if self._done:
            # Our own cancellation (timeout or caller) of the request.
            return
        cause = reason.value
        while getattr(cause, "reasons", None):
            inner = cause.reasons[0]
            cause = inner.value if isinstance(inner, Failure) else inner
        if isinstance(cause, SchemeNotSupported):
            error = self._error(
                "has an unsupported base URL",
                _describe(cause),
                status=500,
                code="provider_not_configured",
                retryable=False,
            )
        elif isinstance(cause, (ConnectError, DNSLookupError, ConnectTimeoutError, TimeoutError)):
            error = self._error("could not connect", _describe(cause), code="upstream_unreachable")
        elif isinstance(cause, ConnectionClosed):
            error = self._error(
                "closed the connection before responding",
                _describe(cause),
                code="upstream_unreachable",
            )
        else:
            error = self._error("request failed", _describe(cause), code="upstream_unreachable")
        self._fail(error)

    def _bug(self, reason: Failure) -> None:
        self._logBug(reason)
        if not self._done:
            self._abort()
            self._finish(reason)

    def _logBug(self, reason: Failure) -> None:
        log.failure(
            "provider {provider} call for model {model} crashed",
            reason,
            provider=self.provider.name,
            model=self.request.model,
        )

    # The body.

    def _bodyStarted(self, transport: Any) -> None:
        self._transport = transport

    def _bodyData(self, data: bytes) -> None:
        if self._done or self._stopping is not None:
            return
        self._armTimer()
        try:
            if self._mode == _SSE:
                self._sseData(data)
            else:
                self._collect(data)
        except ProviderError as e:
            self._stop(Failure(e))
        except Exception:
            self._logBug(Failure())
            self._stop(Failure())

    def _stop(self, reason: Failure) -> None:
        """
        Close the connection because of C{reason}, from inside the body's
        C{dataReceived}; C{reason} is delivered when the body ends.

        Failing later rather than now lets the HTTP client finish with the
        data it is parsing (a response that ends in it goes back to the pool
        before our caller hears of the failure).
        """
        self._stopping = reason
        self._abort()
        if self._timer is None or not self._timer.active():
            self._timer = self._clock.callLater(_DONE_GRACE, self._timedOut)

    def _bodyEnded(self, reason: Failure) -> None:
        if self._done:
            return
        if self._stopping is not None:
            self._finishStopping()
            return
        clean = reason.check(ResponseDone, PotentialDataLoss) is not None
        try:
            if self._mode == _ERROR:
                self._fail(self._statusError())
            elif self._mode == _JSON:
                if not clean:
                    raise self._cut(reason)
                self._succeed(self._parseJSON())
            elif self._sawDone:
                self._succeed(self._assembled())
            else:
                if clean:
                    self._parser.close()
                if self._finishReason is None:
                    raise self._cut(reason)
                # No [DONE], but the answer was complete.
                self._succeed(self._assembled())
        except ProviderError as e:
            self._fail(e)
        except SSEError as e:
            self._fail(self._invalid(str(e)))
        except Exception:
            self._bug(Failure())

    def _collect(self, data: bytes) -> None:
        self._bodyLength += len(data)
        limit = _MAX_ERROR_BODY if self._mode == _ERROR else self.provider.maxBuffer
        if self._bodyLength > limit:
            if self._mode == _ERROR:
                self._body.append(data[: max(0, limit - (self._bodyLength - len(data)))])
                self._stop(Failure(self._statusError()))
                return
            raise self._invalid(f"the response body is larger than {limit} bytes")
        self._body.append(data)

    # Streaming.

    def _sseData(self, data: bytes) -> None:
        if self._sawDone:
            return
        try:
            events = self._parser.feed(data)
        except SSEError as e:
            raise self._invalid(str(e)) from e
        for event in events:
            self._sseEvent(event)
            if self._sawDone:
                # The answer is complete: wait briefly for the end of the body
                # (so the connection can be reused), then give up on it.
                self._cancelTimer()
                grace = _DONE_GRACE
                if self.request.timeout is not None:
                    grace = min(grace, self.request.timeout)
                self._timer = self._clock.callLater(grace, self._timedOut)
                return

    def _sseEvent(self, event: SSEEvent) -> None:
        data = event.data.strip()
        if data == "[DONE]":
            self._sawDone = True
            return
        if not data:
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            raise self._invalid(f"a stream chunk is not JSON: {_truncate(data)}") from None
        if not isinstance(chunk, dict):
            raise self._invalid(f"a stream chunk is not a JSON object: {_truncate(data)}")
        if chunk.get("error") or event.event == "error":
            raise self._upstreamError(chunk)
        self._takeUsage(chunk)
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise self._invalid("a stream chunk has invalid choices")
        for choice in choices:
            if isinstance(choice, dict) and choice.get("index", 0) in (0, None):
                self._choiceDelta(choice)

    def _choiceDelta(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise self._invalid("a stream chunk has an invalid delta")
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            self._reasoning.append(reasoning)
            self.sink.reasoning(reasoning)
        content = delta.get("content")
        if isinstance(content, str) and content:
            self._content.append(content)
            self.sink.content(content)
        toolCalls = delta.get("tool_calls")
        if isinstance(toolCalls, list):
            for position, call in enumerate(toolCalls):
                if isinstance(call, dict):
                    self._toolCallDelta(position, call)
        finishReason = choice.get("finish_reason")
        if isinstance(finishReason, str) and finishReason:
            self._finishReason = finishReason

    def _toolCallDelta(self, position: int, call: dict[str, Any]) -> None:
        index = call.get("index")
        if not isinstance(index, int):
            index = position
        parts = self._toolCalls.setdefault(index, _ToolCallParts())
        if isinstance(call.get("id"), str) and call["id"] and not parts.id:
            parts.id = call["id"]
        function = call.get("function") or {}
        if not isinstance(function, dict):
            return
        if isinstance(function.get("name"), str) and function["name"] and not parts.name:
            parts.name = function["name"]
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            parts.arguments.append(arguments)
        elif arguments is not None:
            parts.arguments.append(json.dumps(arguments))

    def _assembled(self) -> LLMResponse:
        toolCalls = tuple(
            ToolCall(
                id=parts.id or f"call_{index}",
                name=parts.name,
                arguments="".join(parts.arguments),
            )
            for index, parts in sorted(self._toolCalls.items())
        )
        return LLMResponse(
            content="".join(self._content),
            reasoning="".join(self._reasoning),
            toolCalls=toolCalls,
            finishReason=self._finishReason or ("tool_calls" if toolCalls else "stop"),
            usage=self._usage or Usage(),
        )

    def _takeUsage(self, body: Mapping[str, Any]) -> None:
        usage = body.get("usage")
        if isinstance(usage, dict):
            prompt = usage.get("prompt_tokens")
            completion = usage.get("completion_tokens")
            self._usage = Usage(
                prompt if isinstance(prompt, int) else 0,
                completion if isinstance(completion, int) else 0,
            )

    # Not streaming.

    def _parseJSON(self) -> LLMResponse:
        text = b"".join(self._body)
        try:
            body = json.loads(text)
        except ValueError:
            raise self._invalid(
                f"the response is not JSON: {_truncate(text.decode('utf-8', 'replace'))}"
            ) from None
        if not isinstance(body, dict):
            raise self._invalid("the response is not a JSON object")
        if body.get("error"):
            raise self._upstreamError(body)
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise self._invalid("the response has no choices")
        message = choices[0].get("message")
        if not isinstance(message, dict):
            raise self._invalid("the response has no message")
        content = _text(message.get("content"))
        reasoning = _text(message.get("reasoning_content")) or _text(message.get("reasoning"))
        toolCalls: list[ToolCall] = []
        for index, call in enumerate(message.get("tool_calls") or []):
            if not isinstance(call, dict):
                continue
            function = call.get("function") or {}
            arguments = function.get("arguments", "")
            toolCalls.append(
                ToolCall(
                    id=str(call.get("id") or f"call_{index}"),
                    name=str(function.get("name") or ""),
                    arguments=arguments if isinstance(arguments, str) else json.dumps(arguments),
                )
            )
        self._takeUsage(body)
        finishReason = choices[0].get("finish_reason")
        if not isinstance(finishReason, str) or not finishReason:
            finishReason = "tool_calls" if toolCalls else "stop"
        if self.request.stream:
            # Asked to stream but answered in one piece: still feed the sink.
            if reasoning:
                self.sink.reasoning(reasoning)
            if content:
                self.sink.content(content)
        return LLMResponse(
            content=content,
            reasoning=reasoning,
            toolCalls=tuple(toolCalls),
            finishReason=finishReason,
            usage=self._usage or Usage(),
        )

    # Errors.

    def _error(self, what: str, cause: str, **kwargs: Any) -> ProviderError:
        return self.provider.error(self.request, what, cause, **kwargs)

    def _invalid(self, cause: str) -> ProviderError:
        return self._error(
            "sent an invalid response", cause, code="upstream_invalid_response", retryable=True
        )

    def _cut(self, reason: Failure) -> ProviderError:
        cause = reason.value
        while getattr(cause, "reasons", None):
            inner = cause.reasons[0]
            cause = inner.value if isinstance(inner, Failure) else inner
        what = "the stream ended before [DONE]" if self._mode == _SSE else "the body was cut"
        return self._error(
            "ended the response early",
            f"{what} ({_describe(cause)})",
            code="upstream_stream_cut",
        )

    def _upstreamError(self, body: Mapping[str, Any]) -> ProviderError:
        error = body.get("error")
        errorType = error.get("type") if isinstance(error, dict) else None
        retryable = errorType not in (
            "invalid_request_error",
            "authentication_error",
            "permission_error",
            "not_found_error",
        )
        return self._error(
            "reported an error",
            _truncate(_errorMessage(body, json.dumps(body))),
            code="upstream_error",
            retryable=retryable,
        )

    def _statusError(self) -> ProviderError:
        response = self._response
        assert response is not None
        code = response.code
        body = b"".join(self._body)
        detail = _errorMessage(_jsonOrNone(body), body.decode("utf-8", "replace"))
        if not detail.strip():
            detail = response.phrase.decode("latin-1", "replace")
        detail = _truncate(" ".join(self.provider.scrub(detail).split()))
        cause = f"HTTP {code}: {detail}" if detail else f"HTTP {code}"
        if code == 429:
            return self._error(
                "rate-limited the request",
                cause,
                status=429,
                code="upstream_rate_limited",
                retryable=True,
                upstreamStatus=code,
                retryAfter=self._retryAfter(response),
            )
        if code >= 500 or code == 408:
            return self._error(
                "failed", cause, code="upstream_error", retryable=True, upstreamStatus=code
            )
        return self._error(
            "rejected the request",
            cause,
            code="upstream_rejected",
            retryable=False,
            upstreamStatus=code,
        )

    def _retryAfter(self, response: _Response) -> float | None:
        values = response.headers.getRawHeaders(b"retry-after")
        if not values:
            return None
        value = values[0].decode("latin-1").strip()
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                return None
            seconds = when.timestamp() - self._clock.seconds()
        if seconds != seconds:  # NaN
            return None
        return min(max(seconds, 0.0), _MAX_RETRY_AFTER)

    # The lifecycle.

    def _armTimer(self) -> None:
        timeout = self.request.timeout
        if timeout is None or self._done or self._sawDone:
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(timeout)
        else:
            self._timer = self._clock.callLater(timeout, self._timedOut)

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timedOut(self) -> None:
        self._timer = None
        if self._done:
            return
        if self._stopping is not None:
            # The connection would not close: give up waiting for it.
            self._finishStopping()
            return
        self._abort()
        if self._sawDone:
            # The answer is complete; only the end of the body went missing.
            self._succeed(self._assembled())
            return
        waited = "response headers" if self._response is None else "data"
        self._fail(
            self._error(
                "timed out",
                f"no {waited} for {self.request.timeout:g} s",
                status=504,
                code="upstream_timeout",
                retryable=True,
            )
        )

    def _abort(self) -> None:
        """
        Close the upstream connection, whatever state the call is in.
        """
        if self._requestDeferred is not None:
            requestDeferred, self._requestDeferred = self._requestDeferred, None
            # Marks us done first so that _requestFailed ignores the failure.
            self._done = True
            requestDeferred.cancel()
            return
        transport = self._transport
        if transport is None and self._response is not None:
            transport = _responseTransport(self._response)
        if transport is not None:
            transport.stopProducing()

    def _cancel(self, result: Deferred[LLMResponse]) -> None:
        if self._done:
            return
        log.info(
            "provider {provider} call for model {model} cancelled",
            provider=self.provider.name,
            model=self.request.model,
        )
        self._cancelTimer()
        self._abort()
        self._done = True
        # The Deferred now fails with CancelledError on its own.

    def _finishStopping(self) -> None:
        reason = self._stopping
        assert reason is not None
        if isinstance(reason.value, ProviderError):
            self._fail(reason.value)
        else:
            self._finish(reason)

    def _succeed(self, response: LLMResponse) -> None:
        self._finish(response)

    def _fail(self, error: ProviderError) -> None:
        if not self.result.called:
            log.info(
                "provider {provider} call for model {model} failed ({code}): {message}",
                provider=self.provider.name,
                model=self.request.model,
                code=error.code,
                message=error.message,
            )
        self._finish(Failure(error))

    def _finish(self, result: LLMResponse | Failure) -> None:
        if self.result.called:
            return
        self._done = True
        self._cancelTimer()
        if isinstance(result, Failure):
            self.result.errback(result)
        else:
            self.result.callback(result)


def _describe(error: BaseException) -> str:
    text = str(error).strip()
    name = type(error).__name__
    if not text or text == name:
        return name
    return f"{name}: {text}"


def _truncate(text: str, limit: int = _MAX_ERROR_MESSAGE) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def _jsonOrNone(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _errorMessage(body: Any, fallback: str) -> str:
    """
    The message of an OpenAI-style error envelope (or of the usual
    variations), else C{fallback}.
    """
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        for key in ("message", "detail"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return fallback


def _text(value: Any) -> str:
    """
    A message C{content}: a string, L{None}, or a list of text parts.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(
            part.get("text", "")
            for part in value
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


__all__ = ["OpenAIProvider"]
