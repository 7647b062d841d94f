# -*- test-case-name: tests.test_site -*-
"""
One web site for every API: requests go to the headend that owns their
path, and the HTTP guard's refusals use that API's error format.

The OpenAI headend serves every path no other API claims; each other API
is a L{Mount}: the canonical path prefix it owns (C{/v1/responses}), its Klein
app (bound to its headend; routes are absolute paths), and its
L{ErrorFormat}.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import attrs
from klein import Klein
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from ai_agent.errors import OPENAI_ERRORS, ErrorFormat


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
    """

    prefix: bytes
    app: Klein
    errors: ErrorFormat
    claimsErrors: Callable[[bytes, Headers], bool] | None = None
    headend: Any = attrs.field(default=None, kw_only=True)
    resource: IResource = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "resource", self.app.resource())

    def owns(self, path: bytes) -> bool:
        """
        Whether C{path} is this API's.
        """
        return path == self.prefix or path.startswith(self.prefix + b"/")


class APIRouter(Resource):
    """
    The site's root: each request is rendered by the resource of the
    L{Mount} owning its path, else by the default (the OpenAI routes).
    """

    isLeaf = True

    def __init__(self, default: IResource, mounts: Sequence[Mount] = ()) -> None:
        super().__init__()
        self.default = default
        self.mounts = tuple(mounts)

    def render(self, request: IRequest) -> Any:
        return self._resourceFor(request.path).render(request)

    def _resourceFor(self, path: bytes) -> IResource:
        for mount in self.mounts:
            if mount.owns(path):
                return mount.resource
        return self.default

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


__all__ = ["APIRouter", "Mount"]
