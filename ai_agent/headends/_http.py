# -*- test-case-name: tests.test_http_guard -*-
"""
The HTTP layer in front of every headend: request size caps, a deadline for
receiving a request, API keys checked before the body is read, CORS, and
JSON errors for everything the web layer itself refuses.

twisted.web has no body limit and only an idle timer that every byte resets;
L{GuardedSite} adds what a server facing a network needs.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
import time
from typing import Any, Callable, Iterable, cast
from urllib.parse import quote, unquote_to_bytes

import attrs
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.http_headers import Headers
from twisted.web.server import Request, Site

from ai_agent._eager import EagerWrites, noDelay
from ai_agent.config import ClientKey
from ai_agent.errors import AgentError, ErrorFormat, ErrorKind
from ai_agent.headends._openai_errors import OPENAI_ERRORS
from ai_agent.headends._refusals import RefusalLog
from ai_agent.principals import IMPLICIT, NOBODY, Principal, anonymousPrincipal
from ai_agent.redaction import shorten

#: Picks the error format of the API a request is for, from its canonical
#: path and its headers.
ErrorFormatChooser = Callable[[bytes, Headers], ErrorFormat]


def openaiErrors(path: bytes, headers: Headers) -> ErrorFormat:
    """
    The default chooser: OpenAI's envelope for every path.
    """
    return OPENAI_ERRORS


log = Logger()

#: Bodies up to this size are read (and dropped) after an early refusal, so
#: the answer goes out on a connection that stays usable.  Larger ones get
#: the answer at once and the connection closed.
_DRAIN_LIMIT = 64 * 1024

#: Seconds to keep reading (and dropping) a refused upload before closing,
#: so the client sees the answer instead of a reset.
_LINGER = 2.0

_JSON_TYPES = (b"application/json", b"text/json")


#: A C{%} not followed by two hex digits.
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")

#: Characters left unescaped when a canonical path is written back: RFC
#: 3986's unreserved and sub-delimiters, C{:} and C{@}.
_SEGMENT_SAFE = "!$&'()*+,;=:@-._~"

#: An absolute-form request target's scheme and authority.
_ABSOLUTE_FORM = re.compile(rb"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")

#: A path that is its own canonical spelling: non-empty segments of
#: characters written back unescaped, no escape (segments that are C{.} or
#: C{..} are ruled out apart).
_CANONICAL_ALREADY = re.compile(rb"(?:/[A-Za-z0-9!$&'()*+,;=:@._~-]+)+/?|/")


class UnusablePathError(ValueError):
    """
    A request target that has no single meaning as a path.
    """


def canonicalPath(target: bytes) -> tuple[bytes, bytes]:
    """
    The one spelling of a request target's path that both the API-key check
    and the router use, and its query string (with its C{?}, or empty).

    An absolute-form target (C{http://host/v1/models}) loses its scheme and
    authority; percent-escapes are decoded once; runs of C{/} fold into one;
    each segment is written back escaped, so the router's own decoding gives
    the same segments.  A trailing C{/} is kept.

    @raise UnusablePathError: for a target that cannot be given one meaning: a
        malformed or double escape, bytes that are not UTF-8, control
        characters, C{.} or C{..} segments, a fragment, or a target that is
        not a path.
    """
    path, question, query = target.partition(b"?")
    if _CANONICAL_ALREADY.fullmatch(path) and b"/." not in path:
        # The common case: what _canonicalPath would give, without decoding
        # and escaping each segment again.
        return path, question + query
    return _canonicalPath(target)


def _canonicalPath(target: bytes) -> tuple[bytes, bytes]:
    """
    L{canonicalPath} for any target.
    """
    target = _ABSOLUTE_FORM.sub(b"", target, count=1) or b"/"
    path, question, query = target.partition(b"?")
    if not path.startswith(b"/"):
        raise UnusablePathError("the request target must be a path starting with '/'")
    if b"#" in path or _BAD_ESCAPE.search(path):
        raise UnusablePathError("the request path has a malformed percent-escape")
    try:
        decoded = unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise UnusablePathError("the request path is not UTF-8 once percent-decoded") from None
    if "%" in decoded:
        raise UnusablePathError("the request path is percent-escaped twice")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
        raise UnusablePathError("the request path has control characters")
    segments = [segment for segment in decoded.split("/") if segment]
    if any(segment in (".", "..") for segment in segments):
        raise UnusablePathError("the request path has '.' or '..' segments")
    canonical = "/" + "/".join(quote(segment, safe=_SEGMENT_SAFE) for segment in segments)
    if segments and decoded.endswith("/"):
        canonical += "/"
    return canonical.encode("ascii"), question + query


@attrs.define(eq=False)
class APIKeys:
    """
    Client API keys, kept only as SHA-256 digests, each with the
    L{Principal} it stands for.  Reloading the configuration swaps the table
    in place (L{replace}), so the site's policy follows SIGHUP.
    """

    _entries: tuple[tuple[bytes, Principal], ...] = ()

    @classmethod
    def fromKeys(cls, keys: Iterable[str], named: Iterable[ClientKey] = ()) -> APIKeys:
        """
        The table of C{keys} given bare (each an anonymous principal of its
        own; blank ones are ignored) and of the C{named} keys of the
        configuration.  A key both named and given bare is the named
        principal.
        """
        table: dict[bytes, Principal] = {}
        for key in keys:
            text = key.strip()
            if text:
                table[hashlib.sha256(text.encode("utf-8")).digest()] = anonymousPrincipal(text)
        for entry in named:
            agents = None if entry.agents is None else frozenset(entry.agents)
            table[entry.digest] = Principal(entry.name, agents)
        return cls(tuple(sorted(table.items(), key=lambda item: item[0])))

    @property
    def enabled(self) -> bool:
        """
        Whether any key is configured.
        """
        return bool(self._entries)

    @property
    def principals(self) -> list[Principal]:
        """
        The principals of the configured keys.
        """
        return [principal for _, principal in self._entries]

    def resolve(self, presented: bytes | None) -> Principal | None:
        """
        The principal whose key is C{presented}, or L{None}: compared in
        constant time against every key (no early exit).
        """
        if presented is None:
            return None
        digest = hashlib.sha256(presented).digest()
        found: Principal | None = None
        for known, principal in self._entries:
            if hmac.compare_digest(digest, known):
                found = principal
        return found

    def accepts(self, presented: bytes | None) -> bool:
        """
        Whether C{presented} is one of the keys.
        """
        return self.resolve(presented) is not None

    def replace(self, other: APIKeys) -> None:
        """
        Serve C{other}'s keys from now on (a reload).
        """
        self._entries = other._entries

    def __repr__(self) -> str:
        return f"<APIKeys: {len(self._entries)} key(s)>"


@attrs.frozen
class HTTPPolicy:
    """
    What the HTTP layer enforces.

    @ivar maxBodySize: the largest request body accepted, in bytes.
    @ivar requestDeadline: seconds allowed to receive a request's head and
        body, from its first byte.
    @ivar idleTimeout: seconds an idle keep-alive connection stays open.
    @ivar corsOrigins: origins allowed to call from a browser (C{*} for any).
    @ivar openPaths: the canonical paths answered without an API key when
        keys are set; every other path, whether or not a route serves it,
        needs one.
    """

    maxBodySize: int = 8 * 1024 * 1024
    requestDeadline: float = 10.0
    idleTimeout: float = 60.0
    apiKeys: APIKeys = APIKeys()
    corsOrigins: frozenset[str] = frozenset()
    openPaths: frozenset[bytes] = frozenset(
        {
            b"/health",
            b"/openapi.json",
            b"/",
            b"/docs",
            b"/assets/docs.js",
            b"/assets/page.css",
            b"/favicon.ico",
        }
    )

    def allowsOrigin(self, origin: bytes | None) -> bytes | None:
        """
        The C{Access-Control-Allow-Origin} value for C{origin}, or L{None}.
        """
        if origin is None or not self.corsOrigins:
            return None
        if "*" in self.corsOrigins:
            return b"*"
        return origin if origin.decode("latin-1") in self.corsOrigins else None


_DEFAULT_POLICY = HTTPPolicy()


def _httpDate(now: float) -> bytes:
    """
    The C{Date} header's value for C{now}: made once per second.
    """
    second = int(now)
    if second != _lastDate[0]:
        _lastDate[:] = [second, http.datetimeToString(second)]
    return cast(bytes, _lastDate[1])


_lastDate: list[Any] = [None, b""]


class GuardedRequest(Request):
    """
    A request checked as its head arrives: key, content type and declared
    size are refused before the body is read; a body that grows past the
    cap while streaming in is refused when it crosses it.
    """

    # A request's attributes fit the table of names its class's instances
    # share (a held stream's request keeps 0.3 KiB of values instead of a
    # 1.5 KiB dictionary of its own) only if every name is in that table.
    # CPython 3.11 adds a name to it only while there is room, and takes
    # one place from the room at each instance made: after the first few
    # requests a name no request has set yet gets an instance its own
    # dictionary.  So this class's own attributes, and three of Request's,
    # are slots (out of the table); the others number 27, under the 29 a
    # class's table holds; and a stream's two names (Request's
    # registerProducer) are set on every request, so that they are in the
    # table before the first stream.  The census is in docs/performance.md.
    __slots__ = (
        "principal",
        "_refusal",
        "_received",
        "_answered",
        "_canonical",
        "code",
        "code_message",
        "finished",
    )

    #: Whose key this request carries (L{IMPLICIT} on a server without
    #: keys), set as its head arrives; L{None} without a valid key on a path
    #: that needs none.  Read it with L{principalOf}.
    principal: Principal | None
    _refusal: AgentError | None
    _received: int
    _answered: bool
    _canonical: tuple[bytes, bytes] | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.principal = None
        self._refusal = None
        self._received = 0
        self._answered = False
        self._canonical = None
        # Request's class defaults.
        self.code = Request.code
        self.code_message = Request.code_message
        self.finished = Request.finished
        super().__init__(*args, **kwargs)
        self.streamingProducer = False
        self.producer = None

    @property
    def policy(self) -> HTTPPolicy:
        site = cast(Any, self.channel).site
        return getattr(site, "policy", _DEFAULT_POLICY)

    def gotLength(self, length: int | None) -> None:
        refusal = self._screen(length)
        if refusal is None:
            super().gotLength(length)
            return
        self._refusal = refusal
        if self._expectsContinue():
            # The client waits for a 100 before sending the body: answer
            # now, and never send the 100 (see GuardedChannel).
            self._answerNow(refusal)
            return
        if length is not None and length <= _DRAIN_LIMIT:
            # Small body: read and drop it, then answer normally on a
            # connection that stays usable.
            self.content = io.BytesIO()  # type: ignore[assignment]
            return
        self._answerNow(refusal)

    def _expectsContinue(self) -> bool:
        expect = self.requestHeaders.getRawHeaders(b"expect", [b""])[0]
        return expect.strip().lower() == b"100-continue"

    @property
    def refused(self) -> bool:
        """
        Whether this request was refused as its head arrived.
        """
        return self._refusal is not None

    def handleContentChunk(self, data: bytes) -> None:
        if self._refusal is not None:
            return
        self._received += len(data)
        if self._received > self.policy.maxBodySize:
            self._refusal = _tooLarge(self.policy.maxBodySize)
            self.content = io.BytesIO()  # type: ignore[assignment]
            self._answerNow(self._refusal)
            return
        super().handleContentChunk(data)

    def _screen(self, length: int | None) -> AgentError | None:
        policy = self.policy
        # The request line as received; twisted.web gives no public access
        # to it before the body is read (tests.test_private_api pins this).
        channel = cast(GuardedChannel, self.channel)
        target = channel._path or b""
        method = channel._command or b""
        try:
            self._canonical = canonicalPath(target)
        except UnusablePathError as e:
            return AgentError(str(e), 400, ErrorKind.INVALID_REQUEST, "invalid_path")
        path = self._canonical[0]
        if method == b"OPTIONS" and self._isAllowedPreflight():
            # Browsers send preflights without credentials.
            return None
        if not policy.apiKeys.enabled:
            self.principal = IMPLICIT
        else:
            principal = policy.apiKeys.resolve(self._presentedKey())
            self.principal = principal
            if principal is None and path not in policy.openPaths:
                return AgentError(
                    "a valid API key is required: send it as 'Authorization: Bearer KEY'",
                    401,
                    ErrorKind.AUTHENTICATION,
                    "invalid_api_key",
                )
        if length is not None and length > policy.maxBodySize:
            return _tooLarge(policy.maxBodySize)
        if method in (b"POST", b"PUT", b"PATCH") and (length is None or length > 0):
            contentType = self.requestHeaders.getRawHeaders(b"content-type", [None])[0]
            if contentType is not None:
                mediaType = contentType.split(b";", 1)[0].strip().lower()
                if mediaType not in _JSON_TYPES and not mediaType.endswith(b"+json"):
                    return AgentError(
                        "the request body must be JSON (Content-Type: application/json),"
                        f" not {shorten(repr(mediaType.decode('latin-1')))}",
                        415,
                        ErrorKind.INVALID_REQUEST,
                        "unsupported_media_type",
                    )
        return None

    def _isAllowedPreflight(self) -> bool:
        """
        Whether this is a CORS preflight (C{Access-Control-Request-Method})
        from an allowed origin: answered without an API key.  Any other
        C{OPTIONS} needs a key like every other method, so that it tells a
        caller without one nothing about which routes exist.
        """
        headers = self.requestHeaders
        if not headers.hasHeader(b"access-control-request-method"):
            return False
        origin = headers.getRawHeaders(b"origin", [None])[0]
        return self.policy.allowsOrigin(origin) is not None

    def _presentedKey(self) -> bytes | None:
        authorization = self.requestHeaders.getRawHeaders(b"authorization", [None])[0]
        if authorization is not None:
            scheme, _, credentials = authorization.strip().partition(b" ")
            if scheme.lower() == b"bearer":
                return credentials.strip()
        return self.requestHeaders.getRawHeaders(b"x-api-key", [None])[0]

    def _answerNow(self, error: AgentError) -> None:
        """
        Answer before the body was read, then close the connection once the
        client stops sending (or after a short linger).
        """
        if self._answered:
            return
        self._answered = True
        channel: Any = self.channel
        transport: Any = channel.transport
        headers = self._errorHeaders(error)
        errors = self.errorFormat()
        body = errors.body(error)
        status = errors.status(error)
        reason = http.RESPONSES.get(status, b"Error")
        lines = [b"HTTP/1.1 %d %s" % (status, reason)]
        lines += [name + b": " + value for name, value in headers]
        lines += [b"Content-Length: %d" % len(body), b"Connection: close", b"", b""]
        self.noteRefusal(error)
        transport.write(b"\r\n".join(lines) + body)
        # Drop whatever else arrives; close when the client is done.
        channel.dropInput()
        channel.setTimeout(None)
        try:
            transport.loseWriteConnection()
        except AttributeError:
            transport.loseConnection()
        channel._lingerCall = channel.callLater(_LINGER, transport.abortConnection)

    def _errorHeaders(self, error: AgentError) -> list[tuple[bytes, bytes]]:
        headers = [(b"Content-Type", b"application/json")]
        if error.status == 401:
            headers.append((b"WWW-Authenticate", b'Bearer realm="ai-agent"'))
        if error.retryAfter is not None:
            headers.append((b"Retry-After", str(max(1, round(error.retryAfter))).encode()))
        origin = self.policy.allowsOrigin(self.requestHeaders.getRawHeaders(b"origin", [None])[0])
        if origin is not None:
            headers.append((b"Access-Control-Allow-Origin", origin))
            headers.append((b"Vary", b"Origin"))
        return headers

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        # Route by the same canonical path the key check used.  A target
        # that could not be made canonical was refused already; route it
        # nowhere.
        if self._canonical is not None:
            path = b"".join(self._canonical)
        elif self._refusal is not None:
            path = b"/"
        super().requestReceived(command, path, version)

    def process(self) -> None:
        self.site = cast(Any, self.channel).site
        origin = self.policy.allowsOrigin(self.getHeader(b"origin"))
        if origin is not None:
            self.setHeader(b"access-control-allow-origin", origin)
            self.setHeader(b"vary", b"Origin")
            self.setHeader(
                b"access-control-expose-headers", b"Retry-After, X-Request-Id, X-Should-Retry"
            )
        if self._answered:
            # Already answered on the wire; the connection is closing.
            return
        if self._refusal is not None:
            self._respond(self._refusal)
            return
        if self.method == b"OPTIONS" and self.getHeader(b"access-control-request-method"):
            self._preflight(origin)
            return
        self._render()

    def _render(self) -> None:
        """
        Find the request's resource and render it, as Twisted's own
        L{Request.process} does (the speed layer's L{EagerRequest} does the
        same with less work).
        """
        Request.process(self)

    def _preflight(self, origin: bytes | None) -> None:
        if origin is None:
            self._respond(
                AgentError(
                    "cross-origin requests from this origin are not allowed",
                    403,
                    ErrorKind.PERMISSION,
                    "cors_origin_not_allowed",
                )
            )
            return
        self.setResponseCode(204)
        self.setHeader(b"access-control-allow-methods", b"GET, POST, OPTIONS")
        requested = self.getHeader(b"access-control-request-headers")
        self.setHeader(
            b"access-control-allow-headers",
            requested or b"Authorization, Content-Type, X-Api-Key",
        )
        self.setHeader(b"access-control-max-age", b"600")
        self.finish()

    def errorFormat(self) -> ErrorFormat:
        """
        The error format of the API this request is for.
        """
        path = b"/" if self._canonical is None else self._canonical[0]
        chooser = getattr(cast(Any, self.channel).site, "errorFormats", openaiErrors)
        return cast(ErrorFormat, chooser(path, self.requestHeaders))

    def noteRefusal(self, error: AgentError) -> None:
        """
        Log that this request is answered with C{error} (a 4xx; see
        L{RefusalLog}): its method, its path without the query, and the
        reason, with the key the request presented (if any) taken out.
        """
        site = cast(Any, self.channel).site
        if not isinstance(site, GuardedSite):
            return
        path = b"?" if self._canonical is None else self._canonical[0]
        key = self._presentedKey()
        method = getattr(self.channel, "_command", b"") or self.method or b"?"
        site.refusals.refused(method, path, error, () if not key else (key.decode("latin-1"),))

    def _respond(self, error: AgentError) -> None:
        self.noteRefusal(error)
        errors = self.errorFormat()
        self.setResponseCode(errors.status(error))
        for name, value in self._errorHeaders(error):
            self.setHeader(name, value)
        body = errors.body(error)
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(body)
        self.finish()

    def processingFailed(self, reason: Failure) -> None:
        # A bug, not a client mistake: log it, answer without a traceback.
        log.failure("unexpected error answering {uri}", failure=reason, uri=self.uri)
        if self.finished or self._disconnected or self.startedWriting:
            if not self.finished and not self._disconnected:
                self.finish()
            return
        self._respond(AgentError("internal server error", 500, ErrorKind.SERVER, "internal_error"))


class EagerRequest(GuardedRequest):
    """
    The speed layer's request (see L{ai_agent.speed}): what
    L{Request.process} does, with the C{Date} header made once a second
    and without its per-request interface look-up.  It sets
    L{Request._encoder} itself (pinned in C{tests/test_private_api.py}).
    """

    def _render(self) -> None:
        # The path is canonical here (it never is C{*}).
        self.setHeader(b"Server", server.version)
        self.setHeader(b"Date", _httpDate(time.time()))
        self.prepath = []
        self.postpath = list(map(unquote_to_bytes, self.path[1:].split(b"/")))
        try:
            resource = cast(Site, self.site).getResourceFor(self)
            getEncoder = getattr(resource, "getEncoder", None)
            if getEncoder is not None:
                encoder = getEncoder(self)
                if encoder is not None:
                    self._encoder = encoder
            self.render(resource)
        except BaseException:
            self.processingFailed(Failure())


def principalOf(request: Any) -> Principal:
    """
    The principal a request was made by: its key's (see
    L{GuardedRequest.principal}), L{NOBODY} when it carries no valid key
    (an open path), L{IMPLICIT} for a request that did not come through the
    guard (a test calling a headend directly, on a server without keys).
    """
    if isinstance(request, GuardedRequest):
        return request.principal or NOBODY
    return IMPLICIT


def _headersTooLarge(message: str) -> AgentError:
    return AgentError(message, 431, ErrorKind.INVALID_REQUEST, "request_header_fields_too_large")


def _tooLarge(limit: int) -> AgentError:
    return AgentError(
        f"the request body is larger than the {limit}-byte limit",
        413,
        ErrorKind.REQUEST_TOO_LARGE,
        "request_too_large",
    )


class GuardedChannel(http.HTTPChannel):
    """
    An HTTP channel with a deadline for receiving each request: from the
    first byte of a request to the end of its body.  A client dripping
    bytes gets a 408 and a closed connection.  The deadline stops once a
    request is complete, so long responses (streams) are never cut.

    Its timer is made only for a request still incomplete at the end of
    the read its first bytes came in (in the same turn of the reactor, so
    the deadline is the same): most requests arrive in one read, and a timer
    made and cancelled for each of them costs a C{callLater} and a
    C{cancel}, and stays in the reactor's heap until the reactor next
    sweeps out cancelled calls.
    """

    # Slots, and the names Twisted's channel sets late set at once, for the
    # reason given on GuardedRequest: a held stream's channel then keeps
    # its attributes in its class's shared table of names.
    __slots__ = ("_deadline", "_requestBegun", "_lingerCall", "_droppingInput")

    _deadline: IDelayedCall | None
    #: Whether a request's first bytes came in and it is not complete yet.
    _requestBegun: bool
    _lingerCall: IDelayedCall | None
    #: Whether what the client sends is dropped unread (after a refusal
    #: answered before the request was read; the connection is closing).
    _droppingInput: bool
    #: The request line's target and method, which Twisted's L{HTTPChannel}
    #: sets once that line is in and deletes after the head (L{None} in
    #: between: this class's default).
    _path: bytes | None = None
    _command: bytes | None = None

    def __init__(self) -> None:
        self._deadline = None
        self._requestBegun = False
        self._lingerCall = None
        self._droppingInput = False
        super().__init__()
        # Set later by HTTPChannel (a body read, a stream's producer): the
        # defaults of its class and of LineReceiver.
        self.line_mode = 1
        self._savedTimeOut = None
        self._requestProducer = None
        self._requestProducerStreaming = None

    def dropInput(self) -> None:
        """
        Drop whatever else the client sends: it was answered and the
        connection is closing.
        """
        self._droppingInput = True

    def sendQueuedNow(self) -> None:
        """
        Send what is queued for the client now rather than on the reactor's
        next turn; Twisted's own channel leaves that to the reactor (see
        L{EagerChannel}).
        """

    def connectionMade(self) -> None:
        super().connectionMade()
        # Answers and stream frames are written whole (one send each), so
        # Nagle's algorithm could only hold a frame back until the client
        # acknowledges the previous one (its delayed ACK: up to 40 ms).
        noDelay(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self._droppingInput:
            return
        if not self._handlingRequest:
            self._requestBegun = True
        super().dataReceived(data)
        if (
            self._requestBegun
            and self._deadline is None
            and not self._droppingInput
            and self.transport is not None
        ):
            limit = getattr(getattr(self, "site", None), "policy", _DEFAULT_POLICY).requestDeadline
            self._deadline = self.callLater(limit, self._deadlinePassed)

    def allContentReceived(self) -> None:
        self._requestBegun = False
        self._stopDeadline()
        super().allContentReceived()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stopDeadline()
        if self._lingerCall is not None and self._lingerCall.active():
            self._lingerCall.cancel()
        super().connectionLost(reason)

    def _stopDeadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _deadlinePassed(self) -> None:
        self._deadline = None
        if self._handlingRequest or self.transport is None:
            return
        error = AgentError(
            "the request was not received in time",
            408,
            ErrorKind.INVALID_REQUEST,
            "request_timeout",
        )
        self._refuseAndClose(error)

    def _refuseAndClose(self, error: AgentError) -> None:
        """
        Answer C{error} in the error envelope of the API the request was
        for, outside any request, and close.
        """
        if self.transport is None:
            return
        try:
            path = canonicalPath(self._path or b"/")[0]
        except UnusablePathError:
            path = b"/"
        site = getattr(self, "site", None)
        if isinstance(site, GuardedSite):
            route = path if getattr(self, "_path", None) else b"-"
            site.refusals.refused(getattr(self, "_command", b"") or b"-", route, error)
        chooser = getattr(site, "errorFormats", openaiErrors)
        body = chooser(path, Headers()).body(error)
        reason = http.RESPONSES.get(error.status, b"Error")
        transport: Any = self.transport
        transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n"
            % (error.status, reason, len(body))
            + body
        )
        self.dropInput()
        self.loseConnection()

    def _send100Continue(self) -> None:
        # Never after a final answer: a request refused as its head arrived
        # has been (or will be) answered with its error instead.
        if self.requests and getattr(self.requests[-1], "refused", False):
            return
        super()._send100Continue()

    def _respondToBadRequestAndDisconnect(self) -> None:
        # twisted.web writes a bare "400 Bad Request" here; every refusal of
        # ours is a JSON envelope.
        if (
            self._receivedHeaderCount > self.maxHeaders
            or self._receivedHeaderSize > self.totalHeadersSize
        ):
            error = _headersTooLarge(
                f"the request has more than {self.maxHeaders} headers or"
                f" {self.totalHeadersSize} bytes of them"
            )
        else:
            error = AgentError(
                "the request is not valid HTTP/1.1 (its request line, a header, its framing"
                " or its chunked body)",
                400,
                ErrorKind.INVALID_REQUEST,
                "invalid_http",
            )
        self._refuseAndClose(error)

    def lineLengthExceeded(self, line: bytes) -> None:
        # A request line or header line past MAX_LENGTH: LineReceiver would
        # just close the connection.
        if self._HTTPChannel__first_line:  # type: ignore[attr-defined]
            error = AgentError(
                f"the request line is longer than {self.MAX_LENGTH} bytes",
                414,
                ErrorKind.INVALID_REQUEST,
                "uri_too_long",
            )
        else:
            error = _headersTooLarge(f"a request header is longer than {self.MAX_LENGTH} bytes")
        self._refuseAndClose(error)


class EagerChannel(GuardedChannel):
    """
    The speed layer's channel (see L{ai_agent.speed}): a response with a
    length goes out in one send, now, and the stream frames written while
    one upstream read is handled leave before the reactor's next turn,
    through the L{EagerWrites} it shares with the upstream client.
    """

    __slots__ = ("writes", "_host", "_peer", "_head")

    def __init__(self, writes: EagerWrites) -> None:
        self._host: Any = None
        self._peer: Any = None
        self._head: bytes | None = None
        super().__init__()
        self.writes = writes

    def sendQueuedNow(self) -> None:
        self.writes.flushNow(self.transport)

    def getHost(self) -> Any:
        # Each request asks (twisted.web's Request keeps both addresses);
        # a connection's addresses never change, and the local one costs a
        # getsockname system call.
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def getPeer(self) -> Any:
        if self._peer is None:
            self._peer = super().getPeer()
        return self._peer

    # A response with a length (an answer or an error, not a stream) goes
    # out in one send, now: its head waits for the first bytes of its body
    # and both leave through EagerWrites.sendNow, instead of being queued
    # for the reactor's next turn (see ai_agent._eager).  Streams are
    # written as Twisted writes them (frames of one turn coalesce in one
    # send).

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Headers) -> None:
        if (
            self._head is None
            and headers.hasHeader(b"content-length")
            and not headers.hasHeader(b"transfer-encoding")
        ):
            parts = [version, b" ", code, b" ", reason, b"\r\n"]
            for name, values in headers.getAllRawHeaders():
                for value in values:
                    parts += (name, b": ", value, b"\r\n")
            parts.append(b"\r\n")
            self._head = b"".join(parts)
            return
        self._flushHead()
        super().writeHeaders(version, code, reason, headers)

    def write(self, data: bytes) -> None:
        head = self._head
        if head is None:
            super().write(data)
            self.writes.markPending(self.transport)
            return
        self._head = None
        if self.transport is not None:
            self.writes.sendNow(self.transport, head + data)

    def writeSequence(self, iovec: list[bytes]) -> None:
        self._flushHead()
        super().writeSequence(iovec)
        self.writes.markPending(self.transport)

    def requestDone(self, request: http.Request) -> None:
        self._flushHead()
        super().requestDone(request)

    def _flushHead(self) -> None:
        head, self._head = self._head, None
        if head is not None and self.transport is not None:
            self.transport.write(head)


def _guardedChannelFactory(self: GuardedSite) -> Any:
    return http._GenericHTTPChannelProtocol(self.newChannel())


class GuardedSite(Site):
    """
    A L{Site} using L{GuardedRequest} and L{GuardedChannel} under an
    L{HTTPPolicy}; form parsing is off (the API takes JSON only), and
    tracebacks are never shown.  Refusals are written in the error format
    C{errorFormats} picks for the request's path and headers.

    Its request and channel classes are Twisted's own behaviour
    (L{GuardedRequest}, L{GuardedChannel}) unless the speed layer gives
    its own (L{ai_agent.speed}: C{requestFactory} and C{newChannel}).
    """

    requestFactory = GuardedRequest
    protocol = _guardedChannelFactory
    displayTracebacks = False
    noisy = False

    def __init__(
        self,
        resource: Any,
        policy: HTTPPolicy = HTTPPolicy(),
        errorFormats: ErrorFormatChooser = openaiErrors,
        *,
        requestFactory: type[GuardedRequest] = GuardedRequest,
        newChannel: Callable[[], GuardedChannel] = GuardedChannel,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(resource, requestFactory=requestFactory, **kwargs)
        self.newChannel = newChannel
        self.policy = policy
        self.errorFormats = errorFormats
        self.timeOut = policy.idleTimeout
        #: Every 4xx answered on this site is logged through it.
        self.refusals = RefusalLog(self.reactor)

    def log(self, request: Any) -> None:
        # Each run logs its own line; a per-request access log (combined
        # format) is written only to a file asked for with logPath.
        if self.logPath is not None:
            super().log(request)


__all__ = [
    "APIKeys",
    "EagerChannel",
    "EagerRequest",
    "ErrorFormatChooser",
    "GuardedChannel",
    "GuardedRequest",
    "GuardedSite",
    "HTTPPolicy",
    "UnusablePathError",
    "canonicalPath",
    "openaiErrors",
    "principalOf",
]
