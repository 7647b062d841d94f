# -*- test-case-name: tests.test_provider_openai,tests.test_provider_anthropic -*-
"""
What every HTTP wire type shares: one call is one C{POST} whose body is read
unbuffered through our own protocol, so that the silence timeout, the total
deadline and cancellation can close the upstream connection at any moment
(C{treq.collect}'s Deferred has no canceller, and its collector only runs
when data arrives).

L{HTTPProvider} holds a configured endpoint (name, URL, key, headers) and
scrubs its key from every error text; L{HTTPCall} runs one call: the
request, the response status, the body (an event stream or one JSON
document), the timers, and the mapping of every failure to a
L{ProviderError}.  A wire type subclasses both and supplies the payload, the
headers, and the parsing of its events and bodies.

Timeouts of a call:

  - connecting: the HTTP client's own connect timeout (L{CONNECT_TIMEOUT},
    set on the C{Agent} by L{ai_agent.runtime.buildRuntime});
  - silence: C{LLMRequest.timeout} seconds without anything from the
    upstream, both before the response headers and between body chunks;
  - total: C{LLMRequest.totalTimeout} seconds for the whole call, however
    steadily the upstream trickles.
"""

from __future__ import annotations

import json
import re
from email.utils import parsedate_to_datetime
from typing import Any, Callable, ClassVar, Mapping, cast
from typing import Protocol as TypingProtocol
from urllib.parse import urlsplit

import attrs
import orjson
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

from ai_agent.errors import ProviderError
from ai_agent.flow import Flow, currentFlow
from ai_agent.observe import injectTraceContext
from ai_agent.providers._base import DeltaSink, LLMRequest, LLMResponse
from ai_agent.providers._wire import BytesProducer, WireAgent
from ai_agent.sse import DEFAULT_MAX_BUFFER, SSEError, SSEEvent, SSEParser

CONNECT_TIMEOUT = 10.0
"""
Seconds allowed to open a TCP (and TLS) connection to an upstream.
"""

MAX_RETRY_AFTER = 86400.0
"""
The most seconds of an upstream's C{Retry-After} that are believed (and
passed on to a client); how long a turn actually waits is the retry
policy's business (L{ai_agent.retry}).
"""

DONE_GRACE = 5.0
"""
Seconds to wait for the end of a body after the answer is complete.
"""

MAX_ANSWER_BYTES = 64 * 1024 * 1024
"""
The most bytes of one upstream answer's body (an event stream or one JSON
document) read before the call fails with C{upstream_answer_too_large}.
"""

MAX_TOKEN_COUNT = 1_000_000_000
"""
The largest token count of one call an upstream's usage may report; a
larger one (like a negative one, or one that is not a whole number) is not
believed and the call fails with C{upstream_invalid_response}.
"""

MAX_ERROR_BODY = 64 * 1024
MAX_ERROR_MESSAGE = 300

log = Logger()


_PLAIN_URL = re.compile(r"[\x21-\x7e]+")


def _post(http: HTTPClient, url: str, payload: Any, headers: Mapping[str, str]) -> Deferred[Any]:
    """
    POST C{payload} as JSON, the response unbuffered.

    A plain ASCII URL goes straight to the client's agent: treq's
    per-request layers (URL normalisation, cookie jar, redirects, gzip) cost
    about a fifth of a proxied request's CPU and an API call needs none of
    them; with L{WireAgent} (the runtime's), the headers go to it as bytes,
    without a C{Headers} object.  Anything else (and clients that do not
    show their agent, as L{ai_agent.runtime.UpstreamHTTPClient} does) goes
    through treq.
    """
    agent = getattr(http, "agent", None)
    if agent is None or _PLAIN_URL.fullmatch(url) is None:
        return http.post(
            url,
            json=payload,
            headers=Headers({key: [value] for key, value in headers.items()}),
            unbuffered=True,
        )
    body = dumpsBody(payload)
    if isinstance(agent, WireAgent):
        pairs = [(b"Content-Type", b"application/json; charset=UTF-8")]
        for key, value in headers.items():
            if key.lower() != "content-type":
                pairs.append((key.encode("iso-8859-1"), value.encode("utf-8")))
        return agent.post(url.encode("ascii"), pairs, body)
    raw = Headers({key: [value] for key, value in headers.items()})
    raw.setRawHeaders(b"content-type", [b"application/json; charset=UTF-8"])
    return cast(
        Deferred[Any], agent.request(b"POST", url.encode("ascii"), raw, BytesProducer(body))
    )


class Timer(TypingProtocol):
    """
    The part of L{twisted.internet.interfaces.IDelayedCall} used here (typed
    for mypy without the zope plugin).
    """

    def active(self) -> bool: ...

    def cancel(self) -> None: ...

    def reset(self, secondsFromNow: float) -> None: ...


class Clock(TypingProtocol):
    """
    The part of L{IReactorTime} used here.
    """

    def seconds(self) -> float: ...

    def callLater(self, delay: float, f: Callable[..., Any], /, *args: Any) -> Timer: ...


class UpstreamResponse(TypingProtocol):
    """
    The part of L{twisted.web.iweb.IResponse} used here.
    """

    code: int
    phrase: bytes
    headers: Headers

    def deliverBody(self, protocol: Protocol) -> None: ...


@attrs.define(eq=False)
class HTTPProvider:
    """
    A configured HTTP endpoint of some wire type.

    @ivar name: the provider's configuration name (used in error messages).
    @ivar baseUrl: the API root.
    @ivar apiKey: the key; never logged or shown.
    @ivar headers: extra request headers from the configuration (they may
        replace the ones the wire type sets).
    @ivar http: the injected client, with its own connection pool.
    @ivar reactor: schedules the timeouts.
    @ivar missingVariables: configuration variables that were not set; any
        call fails at once naming them.
    @ivar maxBuffer: the most characters of one SSE event, or bytes of a JSON
        body, accepted from the upstream.
    @ivar maxAnswerBytes: the most bytes of one answer's body.
    """

    name: str
    baseUrl: str
    http: HTTPClient = attrs.field(repr=False)
    reactor: IReactorTime = attrs.field(repr=False)
    apiKey: str | None = attrs.field(default=None, repr=False)
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    missingVariables: tuple[str, ...] = ()
    maxBuffer: int = DEFAULT_MAX_BUFFER
    maxAnswerBytes: int = MAX_ANSWER_BYTES

    def complete(self, request: LLMRequest, sink: DeltaSink) -> Deferred[LLMResponse]:
        """
        Make one model call.  See L{ai_agent.providers.Provider}.

        @return: fires with the assembled L{LLMResponse}, or fails with
            L{ProviderError}; cancelling it closes the upstream connection
            and fails it with L{CancelledError}.
        """
        if self.missingVariables:
            return fail(self._notConfigured())
        return self.newCall(request, sink).start()

    def newCall(self, request: LLMRequest, sink: DeltaSink) -> HTTPCall:
        """
        The wire type's L{HTTPCall} for C{request}.
        """
        raise NotImplementedError

    @property
    def url(self) -> str:
        """
        The URL every call is posted to.
        """
        raise NotImplementedError

    def payload(self, request: LLMRequest) -> dict[str, Any]:
        """
        The JSON body for C{request}.
        """
        raise NotImplementedError

    def requestHeaders(self, request: LLMRequest) -> dict[str, str]:
        """
        The HTTP headers for C{request}.
        """
        raise NotImplementedError

    def scrub(self, text: str) -> str:
        """
        Remove anything that looks like a configured secret from C{text}:
        the API key or the value of a configured header (which may be a key,
        as with C{api-key}) of at least 8 characters; the secret itself, a
        long fragment of it, or a masked form such as C{sk-ab***yz}.
        """
        secrets = [self.apiKey] if self.apiKey and len(self.apiKey) >= 4 else []
        secrets.extend(value for value in self.headers.values() if len(value) >= 8)
        if not secrets:
            return text
        for secret in sorted(secrets, key=len, reverse=True):
            text = text.replace(secret, "[redacted]")

        def redact(match: re.Match[str]) -> str:
            token = match.group(0)
            for secret in secrets:
                if len(token) >= 8 and token in secret:
                    return "[redacted]"
                if "*" in token:
                    head, _, tail = token.partition("*")
                    tail = tail.rstrip("*").rpartition("*")[2]
                    if len(head) >= 3 and secret.startswith(head) and secret.endswith(tail):
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


class _Canceller:
    """
    An L{HTTPCall}'s result's canceller, holding the call only until it
    ends (a bound method would keep the call and its Deferred in a cycle).
    """

    __slots__ = ("call",)

    def __init__(self, call: HTTPCall) -> None:
        self.call: HTTPCall | None = call

    def __call__(self, result: Deferred[LLMResponse]) -> None:
        call = self.call
        if call is not None:
            call._cancel(result)


class _BodyReader(Protocol):
    """
    Hands an upstream response body to its L{HTTPCall}.
    """

    def __init__(self, call: HTTPCall) -> None:
        self._call = call

    def connectionMade(self) -> None:
        self._call._bodyStarted(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self._call._bodyData(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._call._bodyEnded(reason)


def _responseTransport(response: UpstreamResponse) -> Any:
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


SSE, JSON, ERROR = "sse", "json", "error"

_NOT_RETRYABLE_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
    }
)


@attrs.define(eq=False)
class HTTPCall:
    """
    One in-flight call: the request, the body, the timers and the one result
    Deferred.

    A wire type implements L{streamEvent}, L{streamFinished}, L{assembled}
    and L{parseBody}; L{streamEvent} calls L{markEnd} at the stream's end
    marker.

    @cvar endMarker: how the wire type's stream ends, for error messages.
    """

    provider: HTTPProvider
    request: LLMRequest
    sink: DeltaSink
    result: Deferred[LLMResponse] = attrs.field(init=False)
    _requestDeferred: Deferred[Any] | None = attrs.field(default=None, init=False)
    _response: UpstreamResponse | None = attrs.field(default=None, init=False)
    _transport: Any = attrs.field(default=None, init=False)
    _timer: Timer | None = attrs.field(default=None, init=False)
    _deadline: Timer | None = attrs.field(default=None, init=False)
    _aborter: Timer | None = attrs.field(default=None, init=False)
    _done: bool = attrs.field(default=False, init=False)
    _mode: str = attrs.field(default=SSE, init=False)
    _parser: SSEParser = attrs.field(init=False)
    _body: list[bytes] = attrs.field(factory=list, init=False)
    _bodyLength: int = attrs.field(default=0, init=False)
    _sawEnd: bool = attrs.field(default=False, init=False)
    _clock: Clock = attrs.field(init=False)
    _stopping: Failure | None = attrs.field(default=None, init=False)
    _flow: Flow | None = attrs.field(default=None, init=False)
    _paused: bool = attrs.field(default=False, init=False)
    _answerBytes: int = attrs.field(default=0, init=False)
    _canceller: _Canceller = attrs.field(init=False)

    endMarker: ClassVar[str] = "its end"

    def __attrs_post_init__(self) -> None:
        self._clock = cast(Clock, self.provider.reactor)
        self._canceller = _Canceller(self)
        self.result = Deferred(canceller=self._canceller)
        self._parser = SSEParser(maxBuffer=self.provider.maxBuffer)

    # The wire type's part.

    def streamEvent(self, event: SSEEvent) -> None:
        """
        Handle one event of a streamed body: feed the sink, remember the
        pieces; call L{markEnd} at the end marker.

        @raise ProviderError: the event is invalid or reports an error.
        """
        raise NotImplementedError

    def streamFinished(self) -> bool:
        """
        Whether the stream so far holds a complete answer (a finish reason
        came), so that a body ending without the end marker is still a
        success.
        """
        raise NotImplementedError

    def assembled(self) -> LLMResponse:
        """
        The response assembled from the stream.
        """
        raise NotImplementedError

    def parseBody(self, body: dict[str, Any]) -> LLMResponse:
        """
        The response of a JSON body (already known to be an object that
        carries no C{error}).  When the request asked to stream, feed the
        sink as well.

        @raise ProviderError: the body is invalid.
        """
        raise NotImplementedError

    def callURL(self) -> str:
        """
        The URL this call is posted to: the provider's, unless the call is
        of another kind (a token count).
        """
        return self.provider.url

    def callPayload(self) -> dict[str, Any]:
        """
        The JSON body of this call.
        """
        return self.provider.payload(self.request)

    def answerLimit(self) -> int:
        """
        The most bytes of this call's answer body read before it fails
        with C{upstream_answer_too_large} (and its connection is closed).
        """
        return self.provider.maxAnswerBytes

    def markEnd(self) -> None:
        """
        The stream's end marker arrived: the answer is complete.
        """
        self._sawEnd = True

    # The request.

    def start(self) -> Deferred[LLMResponse]:
        """
        Send the request.

        @return: L{result}.
        """
        provider, request = self.provider, self.request
        self._flow = currentFlow.get()
        if self._flow is not None:
            self._flow.register(self)
        self._armTimer()
        if request.totalTimeout is not None:
            self._deadline = self._clock.callLater(request.totalTimeout, self._deadlinePassed)
        try:
            headers = provider.requestHeaders(request)
            injectTraceContext(headers)
            requestDeferred = _post(provider.http, self.callURL(), self.callPayload(), headers)
        except Exception as e:
            self._fail(self.error("could not send a request", describe(e), retryable=False))
            return self.result
        self._requestDeferred = requestDeferred
        requestDeferred.addCallbacks(self._gotResponse, self._requestFailed)
        requestDeferred.addErrback(self._bug)
        return self.result

    def _gotResponse(self, response: UpstreamResponse) -> None:
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
            self._mode = ERROR
        elif self.request.stream and not contentType.startswith(b"application/json"):
            self._mode = SSE
        else:
            self._mode = JSON
        response.deliverBody(_BodyReader(self))

    def _requestFailed(self, reason: Failure) -> None:
        self._requestDeferred = None
        if self._done:
            # Our own cancellation (timeout or caller) of the request.
            return
        cause = _innermost(reason.value)
        if isinstance(cause, SchemeNotSupported):
            error = self.error(
                "has an unsupported base URL",
                describe(cause),
                status=500,
                code="provider_not_configured",
                retryable=False,
            )
        elif isinstance(cause, (ConnectError, DNSLookupError, ConnectTimeoutError, TimeoutError)):
            error = self.error(
                f"could not connect to {_hostAndPort(self.provider.url)}",
                describe(cause),
                code="upstream_unreachable",
            )
        elif isinstance(cause, ConnectionClosed):
            error = self.error(
                "closed the connection before responding",
                describe(cause),
                code="upstream_unreachable",
            )
        else:
            error = self.error("request failed", describe(cause), code="upstream_unreachable")
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
        if self._paused and transport is not None:
            transport.pauseProducing()

    # Back-pressure (see ai_agent.flow).

    def pauseBody(self) -> None:
        """
        The client stopped reading: stop reading the upstream, and stop the
        silence timer (the upstream is not the one being slow).
        """
        if self._paused or self._done:
            return
        self._paused = True
        transport = self._bodyTransport()
        if transport is not None:
            transport.pauseProducing()
        if self._stopping is None and not self._sawEnd:
            self._cancelTimer()

    def resumeBody(self) -> None:
        """
        The client reads again: so does this call.
        """
        if not self._paused:
            return
        self._paused = False
        if self._done:
            return
        transport = self._bodyTransport()
        if transport is not None:
            transport.resumeProducing()
        self._armTimer()

    def _bodyTransport(self) -> Any:
        transport = self._transport
        if transport is None and self._response is not None:
            transport = _responseTransport(self._response)
        return transport

    def _bodyData(self, data: bytes) -> None:
        if self._done or self._stopping is not None:
            return
        self._armTimer()
        try:
            self._answerBytes += len(data)
            limit = self.answerLimit()
            if self._answerBytes > limit and self._mode != ERROR:
                raise self.error(
                    "sent too long an answer",
                    f"more than {limit} bytes",
                    code="upstream_answer_too_large",
                    retryable=False,
                )
            if self._mode == SSE:
                self._sseData(data)
            else:
                self._collect(data)
        except ProviderError as e:
            self._stop(Failure(e))
        except Exception as e:
            self._stop(Failure(self._unreadable(e)))

    def _stop(self, reason: Failure) -> None:
        """
        Give up on the body because of C{reason}, from inside the body's
        C{dataReceived}; C{reason} is delivered when the body ends.

        The connection is closed on the next turn of the reactor, not now:
        when the response ends in the data being parsed, the body ends first
        and the connection, whose HTTP framing is intact, goes back to the
        pool open.  Closing it now would put a closing connection in the
        pool, and a retry made at once would fail on it.
        """
        self._stopping = reason
        self._aborter = self._clock.callLater(0, self._abortStopped)
        if self._timer is None or not self._timer.active():
            self._timer = self._clock.callLater(DONE_GRACE, self._timedOut)

    def _abortStopped(self) -> None:
        self._aborter = None
        if not self._done:
            self._abort()

    def _bodyEnded(self, reason: Failure) -> None:
        if self._done:
            return
        if self._stopping is not None:
            self._finishStopping()
            return
        clean = reason.check(ResponseDone, PotentialDataLoss) is not None
        try:
            if self._mode == ERROR:
                self._fail(self._statusError())
            elif self._mode == JSON:
                if not clean:
                    raise self._cut(reason)
                self._succeed(self._parseJSON())
            elif self._sawEnd:
                self._succeed(self.assembled())
            else:
                if clean:
                    self._parser.close()
                if not self.streamFinished():
                    raise self._cut(reason)
                # No end marker, but the answer was complete.
                self._succeed(self.assembled())
        except ProviderError as e:
            self._fail(e)
        except SSEError as e:
            self._fail(self.invalid(str(e)))
        except Exception as e:
            self._fail(self._unreadable(e))

    def _collect(self, data: bytes) -> None:
        self._bodyLength += len(data)
        limit = MAX_ERROR_BODY if self._mode == ERROR else self.provider.maxBuffer
        if self._bodyLength > limit:
            if self._mode == ERROR:
                self._body.append(data[: max(0, limit - (self._bodyLength - len(data)))])
                self._stop(Failure(self._statusError()))
                return
            raise self.invalid(f"the response body is larger than {limit} bytes")
        self._body.append(data)

    def _sseData(self, data: bytes) -> None:
        if self._sawEnd:
            return
        try:
            events = self._parser.feed(data)
        except SSEError as e:
            raise self.invalid(str(e)) from e
        for event in events:
            self.streamEvent(event)
            if self._sawEnd:
                # The answer is complete: wait briefly for the end of the body
                # (so the connection can be reused), then give up on it.
                self._cancelTimer()
                grace = DONE_GRACE
                if self.request.timeout is not None:
                    grace = min(grace, self.request.timeout)
                self._timer = self._clock.callLater(grace, self._timedOut)
                return

    def _parseJSON(self) -> LLMResponse:
        text = b"".join(self._body)
        try:
            body = loadsJSON(text)
        except ValueError:
            raise self.invalid(
                f"the response is not JSON: {truncate(text.decode('utf-8', 'replace'))}"
            ) from None
        if not isinstance(body, dict):
            raise self.invalid("the response is not a JSON object")
        if body.get("error"):
            raise self.upstreamError(body)
        return self.parseBody(body)

    # Errors.

    def error(self, what: str, cause: str, **kwargs: Any) -> ProviderError:
        """
        A L{ProviderError} naming the provider and the model.
        """
        return self.provider.error(self.request, what, cause, **kwargs)

    def invalid(self, cause: str) -> ProviderError:
        """
        A retryable C{upstream_invalid_response} error.
        """
        return self.error(
            "sent an invalid response", cause, code="upstream_invalid_response", retryable=True
        )

    def tokenCount(self, usage: Any, key: str, where: str) -> int:
        """
        One token count of an upstream's usage object: 0 when it (or the
        object) is absent or null, else a whole number from 0 to
        L{MAX_TOKEN_COUNT}.

        @param where: the usage object's path in the answer, for the error.
        @raise ProviderError: the count is negative, too large, or not a
            whole number (a 502 naming the field, as other malformed
            answers are).
        """
        value = usage.get(key) if isinstance(usage, dict) else None
        if value is None:
            return 0
        field = f"{where}.{key}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.invalid(f"the upstream reported {field} as {jsonKind(value)}, not a count")
        if isinstance(value, float):
            if not value.is_integer():
                raise self.invalid(
                    f"the upstream reported {field} as {value!r}, not a whole number"
                )
            value = int(value)
        if value < 0:
            raise self.invalid(f"the upstream reported a negative {field} ({value})")
        if value > MAX_TOKEN_COUNT:
            raise self.invalid(
                f"the upstream reported an impossible {field} ({truncate(str(value), 40)};"
                f" at most {MAX_TOKEN_COUNT} is believed)"
            )
        return int(value)

    def _unreadable(self, error: Exception) -> ProviderError:
        """
        The 502 for an answer whose shape the wire type's parser did not
        expect (it raised something other than L{ProviderError}): the
        client learns what broke, the log gets a warning, not a traceback.
        """
        log.warn(
            "provider {provider} sent model {model}'s answer in a shape that could not be"
            " read: {error}",
            provider=self.provider.name,
            model=self.request.model,
            error=describe(error),
        )
        return self.invalid(f"the answer could not be read ({truncate(describe(error), 120)})")

    def _cut(self, reason: Failure) -> ProviderError:
        cause = _innermost(reason.value)
        if self._mode == SSE:
            what = f"the stream ended before {self.endMarker}"
        else:
            what = "the body was cut"
        return self.error(
            "ended the response early",
            f"{what} ({describe(cause)})",
            code="upstream_stream_cut",
        )

    def upstreamError(self, body: Mapping[str, Any]) -> ProviderError:
        """
        The error of an error object sent with a success status (in a JSON
        body or as a stream event): retryable unless its C{type} says the
        request itself is at fault.
        """
        error = body.get("error")
        errorType = error.get("type") if isinstance(error, dict) else None
        return self.error(
            "reported an error",
            truncate(errorMessage(body, json.dumps(body))),
            code="upstream_error",
            retryable=errorType not in _NOT_RETRYABLE_TYPES,
        )

    def _statusError(self) -> ProviderError:
        response = self._response
        assert response is not None
        code = response.code
        body = b"".join(self._body)
        detail = errorMessage(_jsonOrNone(body), body.decode("utf-8", "replace"))
        if not detail.strip():
            detail = response.phrase.decode("latin-1", "replace")
        detail = truncate(" ".join(self.provider.scrub(detail).split()))
        cause = f"HTTP {code}: {detail}" if detail else f"HTTP {code}"
        if code == 429:
            return self.error(
                "rate-limited the request",
                cause,
                status=429,
                code="upstream_rate_limited",
                retryable=True,
                upstreamStatus=code,
                retryAfter=self._retryAfter(response),
            )
        if code == 404:
            cause += _notFoundHint(self.provider.baseUrl)
        if code >= 500 or code == 408:
            return self.error(
                "failed", cause, code="upstream_error", retryable=True, upstreamStatus=code
            )
        return self.error(
            "rejected the request",
            cause,
            code="upstream_rejected",
            retryable=False,
            upstreamStatus=code,
        )

    def _retryAfter(self, response: UpstreamResponse) -> float | None:
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
        return min(max(seconds, 0.0), MAX_RETRY_AFTER)

    # The lifecycle.

    def _armTimer(self) -> None:
        timeout = self.request.timeout
        if timeout is None or self._done or self._sawEnd or self._paused:
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(timeout)
        else:
            self._timer = self._clock.callLater(timeout, self._timedOut)

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _cancelTimers(self) -> None:
        self._cancelTimer()
        for timer in (self._deadline, self._aborter):
            if timer is not None and timer.active():
                timer.cancel()
        self._deadline = self._aborter = None

    def _timedOut(self) -> None:
        self._timer = None
        if self._done:
            return
        if self._stopping is not None:
            # The connection would not close: give up waiting for it.
            self._finishStopping()
            return
        self._abort()
        if self._sawEnd:
            # The answer is complete; only the end of the body went missing.
            try:
                self._succeed(self.assembled())
            except ProviderError as e:
                self._fail(e)
            except Exception as e:
                self._fail(self._unreadable(e))
            return
        waited = "response headers" if self._response is None else "data"
        self._fail(
            self.error(
                "timed out",
                f"no {waited} for {self.request.timeout:g} s",
                status=504,
                code="upstream_timeout",
                retryable=True,
            )
        )

    def _deadlinePassed(self) -> None:
        self._deadline = None
        if self._done or self._stopping is not None or self._sawEnd:
            # Already ending; the silence timer finishes it.
            return
        self._abort()
        self._fail(
            self.error(
                "timed out",
                f"the call did not finish within {self.request.totalTimeout:g} s",
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
        self._cancelTimers()
        self._abort()
        self._done = True
        if self._flow is not None:
            self._flow.unregister(self)
        self._letGo()
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
        self._cancelTimers()
        if self._flow is not None:
            self._flow.unregister(self)
        self._letGo()
        if isinstance(result, Failure):
            self.result.errback(result)
        else:
            self.result.callback(result)

    def _letGo(self) -> None:
        """
        Drop the references that make this call a reference cycle (its
        result's canceller, the response whose body protocol points back
        here), so that it is freed by reference counting when its caller
        lets go, not by the cyclic garbage collector.
        """
        self._canceller.call = None
        self._response = None
        self._transport = None


def _hostAndPort(url: str) -> str:
    """
    C{host:port} of C{url} (never its user information).
    """
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return "the configured URL"
    return f"{parts.hostname or '?'}:{port}"


def _notFoundHint(baseUrl: str) -> str:
    """
    For a 404: a base URL of an OpenAI-compatible server usually ends in
    C{/v1}; say so when it does not.
    """
    try:
        path = urlsplit(baseUrl).path.rstrip("/")
    except ValueError:
        return ""
    if re.search(r"/v\d+\w*$", path):
        return ""
    return f" (is /v1 missing at the end of the base URL of {_hostAndPort(baseUrl)}{path}?)"


def _innermost(cause: Any) -> Any:
    """
    The first underlying reason of a C{ResponseFailed}-like error.
    """
    while getattr(cause, "reasons", None):
        inner = cause.reasons[0]
        cause = inner.value if isinstance(inner, Failure) else inner
    return cause


def describe(error: BaseException) -> str:
    """
    C{"TypeName: message"}, or the type name alone.
    """
    text = str(error).strip()
    name = type(error).__name__
    if not text or text == name:
        return name
    return f"{name}: {text}"


def jsonKind(value: Any) -> str:
    """
    What a JSON value is, for a message about an answer of the wrong shape.
    """
    if value is None:
        return "missing or null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def truncate(text: str, limit: int = MAX_ERROR_MESSAGE) -> str:
    """
    C{text} cut to C{limit} characters, with an ellipsis when cut.
    """
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def dumpsBody(payload: Any) -> bytes:
    """
    A request body as compact JSON, UTF-8 (orjson; the json module for the
    values orjson refuses, such as integers past 64 bits).
    """
    try:
        return orjson.dumps(payload)
    except TypeError:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def loadsJSON(text: str | bytes) -> Any:
    """
    Parse an upstream's JSON with orjson; what it refuses (NaN, integers
    past 64 bits, invalid UTF-8) goes to the json module, which decides
    (and words the error).
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _jsonOrNone(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def errorMessage(body: Any, fallback: str) -> str:
    """
    The message of an error envelope (OpenAI's, Anthropic's, or one of the
    usual variations), else C{fallback}.
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


__all__ = [
    "CONNECT_TIMEOUT",
    "DONE_GRACE",
    "HTTPCall",
    "HTTPProvider",
    "MAX_ANSWER_BYTES",
    "MAX_RETRY_AFTER",
    "MAX_TOKEN_COUNT",
    "describe",
    "jsonKind",
    "errorMessage",
    "truncate",
]
