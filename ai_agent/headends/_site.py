# -*- test-case-name: tests.test_site -*-
"""
One web site for every API: requests go to the headend that owns their
path, and the HTTP guard's refusals use that API's error format.

The OpenAI headend serves every path no other API claims; each other API
is a L{Mount}: the canonical path prefix it owns (C{/v1/responses}), its Klein
app (bound to its headend; routes are absolute paths), and its
L{ErrorFormat}.

L{APIRouter} renders every request with Klein's own resource.  The speed
layer's L{DirectRouter} (see L{ai_agent.speed}) finds the routes whose path
is fixed (C{POST /v1/chat/completions}, C{GET /health}, ...) by one
dictionary look-up of the request's method and canonical path, and calls
their handler as Klein would call it (L{_renderRoute}, through Klein's
private C{_error_handlers}, pinned in C{tests/test_private_api.py}); every
other request goes through Klein's router.  Binding werkzeug's map and
matching against it cost more than the rest of the routing for the API's
hot paths.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Protocol, Sequence

import attrs
from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import HTTPException

from ai_agent.errors import AgentError, ErrorFormat
from ai_agent.headends._openai_errors import OPENAI_ERRORS


class ModelCatalog(Protocol):
    """
    An API's shape of C{GET /v1/models} and C{GET /v1/models/{id}}: the
    OpenAI routes answer in the shape of the API a request comes from (a
    L{Mount}'s C{models}, chosen as its error format is).
    """

    def listing(self, agents: Iterable[Any]) -> Any:
        """
        The served agents (L{ai_agent.registry.ServedAgent}) as a model list.
        """

    def entry(self, agent: Any) -> Any:
        """
        One served agent as a model object.
        """

    def unknown(self, model: str, served: list[str]) -> AgentError:
        """
        The 404 for a model no agent is served under.
        """


@attrs.frozen
class Mount:
    """
    An API served beside the OpenAI routes.

    @ivar prefix: the canonical path it owns, and everything below it.
    @ivar app: the Klein app answering those paths (routes are absolute),
        bound to its headend.
    @ivar errors: its error format, for the paths it owns.
    @ivar claimsErrors: also use C{errors} for other paths when this says
        so (for example, for requests carrying the API's version header).
    @ivar headend: the object C{app} is bound to, when it serves agents (it
        has C{registry} and C{runner}): a reload gives it the new ones.
    @ivar models: the API's shape of the model list, for the requests whose
        errors it claims, or L{None}.
    """

    prefix: bytes
    app: Klein
    errors: ErrorFormat
    claimsErrors: Callable[[bytes, Headers], bool] | None = None
    headend: Any = attrs.field(default=None, kw_only=True)
    models: ModelCatalog | None = attrs.field(default=None, kw_only=True)
    resource: IResource = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "resource", self.app.resource())

    def owns(self, path: bytes) -> bool:
        """
        Whether C{path} is this API's.
        """
        return path == self.prefix or path.startswith(self.prefix + b"/")


log = Logger()

#: A route path whose canonical spelling is itself: only characters the
#: guard's canonical path never escapes, no converter.
_FIXED_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)+|/")

#: Methods looked up directly; HEAD and OPTIONS keep Klein's handling.
_DIRECT_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


@attrs.frozen
class _Route:
    """
    A route with a fixed path: its app (bound to its headend), its Klein
    endpoint and how many path segments it consumes.
    """

    app: Klein
    endpoint: str
    segments: int


def _fixedRoutes(app: Klein, owns: Callable[[bytes], bool]) -> dict[tuple[bytes, bytes], _Route]:
    """
    The routes of C{app} with a fixed path that C{owns} accepts, by method
    and path.
    """
    routes: dict[tuple[bytes, bytes], _Route] = {}
    for rule in app.url_map.iter_rules():
        if (
            rule.arguments
            or rule.methods is None
            or rule.defaults
            or rule.redirect_to is not None
            or rule.build_only
            or rule.websocket
            or not _FIXED_PATH.fullmatch(rule.rule)
        ):
            continue
        path = rule.rule.encode("ascii")
        if not owns(path):
            continue
        segments = rule.rule.count("/") - rule.rule.endswith("/")
        for method in rule.methods & _DIRECT_METHODS:
            routes.setdefault((method.encode("ascii"), path), _Route(app, rule.endpoint, segments))
    return routes


def _renderRoute(route: _Route, request: Any) -> Any:
    """
    Call a route's handler and write its result as L{KleinResource} does:
    bytes (or text) are written, then the request finished; a failure goes
    through the app's error handlers in order (else werkzeug's answer for an
    HTTP exception, else the request's C{processingFailed}); the handler's
    Deferred is cancelled when the client goes away first.  Every route
    and error handler of these apps returns bytes, text or L{None}: what
    Klein also does with a returned resource or renderable is not repeated.
    """
    request.prepath.extend(request.postpath[: route.segments])
    request.postpath = request.postpath[route.segments :]
    _RouteCall(route, request).start()
    return NOT_DONE_YET


class _RouteCall:
    """
    One call of a route's handler (see L{_renderRoute}).  Methods rather
    than closures: a closure that names itself (the error handlers' loop)
    is a reference cycle, which would keep the request for the cyclic
    garbage collector.
    """

    __slots__ = ("route", "request", "d", "gone")

    def __init__(self, route: _Route, request: Any) -> None:
        self.route = route
        self.request = request
        self.gone = False
        self.d: Deferred[Any] | None = None

    def start(self) -> None:
        route = self.route
        d = self.d = maybeDeferred(route.app.execute_endpoint, route.endpoint, self.request)
        self.request.notifyFinish().addBoth(self.finished)
        d.addErrback(self.failed, route.app._error_handlers)
        d.addCallback(self.write)
        d.addErrback(self.unhandled)

    def finished(self, result: object) -> None:
        self.gone = True
        d = self.d
        if isinstance(result, Failure) and d is not None:
            d.cancel()

    def failed(self, failure: Failure, handlers: Sequence[Any]) -> Any:
        request = self.request
        if self.gone:
            if not failure.check(CancelledError):
                log.failure("Unhandled Error Processing Request.", failure)
            return None
        for index, (kinds, handler) in enumerate(handlers):
            if failure.check(*kinds):
                handled = maybeDeferred(
                    self.route.app.execute_error_handler, handler, request, failure
                )
                return handled.addErrback(self.failed, handlers[index + 1 :])
        if failure.check(HTTPException):
            he = failure.value
            request.setResponseCode(he.code)
            response = he.get_response({})
            for header, value in response.headers:
                request.setHeader(_utf8(header), _utf8(value))
            return succeed(b"".join(_utf8(part) for part in response.iter_encoded()))
        request.processingFailed(failure)
        return None

    def write(self, result: object) -> None:
        request = self.request
        if isinstance(result, str):
            result = result.encode("utf-8")
        if isinstance(result, bytes):
            request.write(result)
        if not self.gone:
            request.finish()

    def unhandled(self, failure: Failure) -> None:
        log.failure("Unhandled Error writing response", failure)


def _utf8(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


class APIRouter(Resource):
    """
    The site's root: each request is rendered by the resource of the
    L{Mount} owning its path, else by the default (the OpenAI routes).

    @param default: the OpenAI routes: their Klein app (bound to the
        headend), or any resource.
    """

    isLeaf = True

    def __init__(self, default: IResource | Klein, mounts: Sequence[Mount] = ()) -> None:
        super().__init__()
        self.mounts = tuple(mounts)
        self.default: IResource = default.resource() if isinstance(default, Klein) else default

    def render(self, request: IRequest) -> Any:
        return self._resourceFor(request.path).render(request)

    def _mountOf(self, path: bytes) -> Mount | None:
        for mount in self.mounts:
            if mount.owns(path):
                return mount
        return None

    def _resourceFor(self, path: bytes) -> IResource:
        mount = self._mountOf(path)
        return self.default if mount is None else mount.resource

    def errorFormat(self, path: bytes, headers: Headers) -> ErrorFormat:
        """
        The error format for a request (a L{GuardedSite} chooser).
        """
        for mount in self.mounts:
            if mount.owns(path):
                return mount.errors
        for mount in self.mounts:
            if mount.claimsErrors is not None and mount.claimsErrors(path, headers):
                return mount.errors
        return OPENAI_ERRORS

    def modelCatalog(self, path: bytes, headers: Headers) -> ModelCatalog | None:
        """
        The model-list shape for a request, chosen as its error format is:
        that of the API claiming the request, or L{None} for OpenAI's.
        """
        for mount in self.mounts:
            if (
                mount.models is not None
                and mount.claimsErrors is not None
                and mount.claimsErrors(path, headers)
            ):
                return mount.models
        return None


class DirectRouter(APIRouter):
    """
    The speed layer's router (see L{ai_agent.speed}): an L{APIRouter} that
    calls the routes with a fixed path directly (L{_renderRoute}), found by
    one dictionary look-up, and leaves the others to Klein.
    """

    def __init__(self, default: IResource | Klein, mounts: Sequence[Mount] = ()) -> None:
        super().__init__(default, mounts)
        routes: dict[tuple[bytes, bytes], _Route] = {}
        for mount in self.mounts:
            routes.update(_fixedRoutes(mount.app, mount.owns))
        if isinstance(default, Klein):
            routes.update(_fixedRoutes(default, lambda path: self._mountOf(path) is None))
        self._routes = routes

    def render(self, request: IRequest) -> Any:
        route = self._routes.get((request.method, request.path))
        if route is not None:
            return _renderRoute(route, request)
        return self._resourceFor(request.path).render(request)


__all__ = ["APIRouter", "DirectRouter", "ModelCatalog", "Mount"]
