"""
The test suite.

tox runs it under C{python -b}, so that comparing bytes with text in our
code shows as a C{BytesWarning}.  Twisted's header-name cache
(C{twisted.web.http_headers._nameEncoder}) keeps C{str} and C{bytes} names
in one dict, and looking one up compares it with the other kind whenever
their hashes meet (C{hash(b"x") == hash("x")}): a flood of warnings that are
not ours.  The cache is given keys that carry their type, so the two kinds
are never compared; header names still encode exactly as before.
"""

from __future__ import annotations

from typing import Any


class _TypedKeys(dict[tuple[type, Any], bytes]):
    """
    A header-name cache whose keys are C{(type, name)}.
    """

    def get(self, key: Any, default: Any = None) -> Any:  # type: ignore[override]
        return super().get((type(key), key), default)

    def __setitem__(self, key: Any, value: bytes) -> None:
        super().__setitem__((type(key), key), value)


def _separateHeaderNameKinds() -> None:
    try:
        from twisted.web import http_headers
    except ImportError:
        return
    encoder = getattr(http_headers, "_nameEncoder", None)
    cache = getattr(encoder, "_canonicalHeaderCache", None)
    if isinstance(cache, dict) and not isinstance(cache, _TypedKeys):
        encoder._canonicalHeaderCache = _TypedKeys()  # type: ignore[union-attr]


_separateHeaderNameKinds()
