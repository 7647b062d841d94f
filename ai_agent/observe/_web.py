# -*- test-case-name: tests.test_observe -*-
"""
Serving metrics: C{GET /metrics} beside a headend's routes, and a separate
metrics-only site for C{--metrics-port}; and the decorator that gives a
headend route its L{RequestScope}.
"""

from __future__ import annotations

import functools
from typing import Any, Awaitable, Callable, TypeVar, cast

from twisted.internet.defer import CancelledError
from twisted.internet.threads import deferToThreadPool
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Site

from ai_agent.errors import AgentError, ErrorKind
from ai_agent.observe._metrics import Metrics

#: The path metrics are served at.
METRICS_PATH = b"metrics"

_F = TypeVar("_F", bound=Callable[..., Awaitable[Any]])


def observedRoute(headend: str, route: str) -> Callable[[_F], _F]:
    """
    Give a headend's route (an C{async} method of an object with an
    C{observer}) a L{RequestScope}: counted and timed with its final status
    (499 when the client went away), its span made current while it runs
    (so that the agent runs it starts are its children).
    """

    def decorate(f: _F) -> _F:
        @functools.wraps(f)
        async def observed(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            scope = self.observer.request(headend, route, request)
            # Every step of a coroutine driven by Twisted runs in the one
            # copy of the context it started with: the span made current
            # here stays current for the route, and only for it.
            activation = scope.activate()
            activation.__enter__()
            try:
                result = await f(self, request, *args, **kwargs)
            except CancelledError:
                scope.end(499)
                raise
            except AgentError as error:
                scope.end(error.status)
                raise
            except BaseException:
                scope.end(500)
                raise
            finally:
                activation.__exit__(None, None, None)
            scope.end(200)
            return result

        return cast(_F, observed)

    return decorate


class MetricsResource(Resource):
    """
    C{GET /metrics}: the Prometheus exposition text, rendered on a thread
    of C{threadPool} (reading every worker's files is not for the reactor).
    """

    isLeaf = True

    def __init__(self, metrics: Metrics, reactor: Any, threadPool: Any = None) -> None:
        super().__init__()
        self.metrics = metrics
        self.reactor = reactor
        self.threadPool = threadPool

    def render(self, request: Any) -> Any:
        if request.method not in (b"GET", b"HEAD"):
            from ai_agent.headends._openai_errors import OPENAI_ERRORS

            error = AgentError("use GET", 405, ErrorKind.INVALID_REQUEST, "method_not_allowed")
            request.setResponseCode(OPENAI_ERRORS.status(error))
            request.setHeader(b"allow", b"GET, HEAD")
            request.setHeader(b"content-type", b"application/json")
            return OPENAI_ERRORS.body(error)
        pool = self.threadPool or self.reactor.getThreadPool()
        rendering = deferToThreadPool(self.reactor, pool, self.metrics.render)

        def done(result: tuple[bytes, str]) -> None:
            body, contentType = result
            if request._disconnected:
                return
            request.setHeader(b"content-type", contentType.encode("ascii"))
            request.setHeader(b"content-length", b"%d" % len(body))
            if request.method != b"HEAD":
                request.write(body)
            request.finish()

        def failed(reason: Any) -> None:
            request.processingFailed(reason)

        rendering.addCallbacks(done, failed)
        request.notifyFinish().addErrback(lambda _: rendering.cancel())
        return NOT_DONE_YET


class WithMetrics(Resource):
    """
    A headend's resource with C{/metrics} beside it: every other path goes
    to the headend untouched.
    """

    def __init__(self, inner: IResource, metrics: MetricsResource) -> None:
        super().__init__()
        self.inner = inner
        self.metricsResource = metrics

    def getChildWithDefault(self, name: bytes, request: Any) -> Any:
        if name == METRICS_PATH and not request.postpath:
            return self.metricsResource
        # Give the path segment back: the headend routes on the whole path.
        request.postpath.insert(0, request.prepath.pop())
        return self.inner

    def render(self, request: Any) -> Any:
        return self.inner.render(request)


def metricsSite(resource: MetricsResource) -> Site:
    """
    The site of C{--metrics-port}: C{/metrics} only, no keys, under the
    HTTP layer's default limits.
    """
    from ai_agent.headends._http import GuardedSite

    root = Resource()
    root.putChild(METRICS_PATH, resource)
    return GuardedSite(root)


__all__ = ["METRICS_PATH", "MetricsResource", "WithMetrics", "metricsSite", "observedRoute"]
