"""
The run store's JSON text of a document (C{_encode}, shared by the SQL
stores and the memory store): written by orjson, json only for what
orjson refuses, since json's encoder keeps the reactor's thread waiting
while it writes a long prompt, whatever thread calls it.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ai_agent.store import _sql
from ai_agent.store._sql import _encode


def _json(document: Any) -> str:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


_PLAIN = [
    {"input": [{"role": "user", "content": "lorem " * 1000}], "store": True},
    {"nul": "a\x00b", "astral": "\U0001f600", "sep": "\u2028", "quote": '"\\'},
    [1, -2, 2**63 - 1, -(2**63), True, False, None, "", [], {}],
    {"nested": {"deeper": [{"k": "v"}]}},
]


class EncodeTests(SynchronousTestCase):
    """
    C{_encode}: the document's JSON text and its size in UTF-8 bytes,
    without json's encoder unless orjson refuses the document.
    """

    def test_sameText(self) -> None:
        """
        Documents of text, integers, booleans, null, lists and objects are
        written as json writes them, with their size in UTF-8 bytes.
        """
        for document in _PLAIN:
            text = _json(document)
            self.assertEqual(_encode(document), (text, len(text.encode("utf-8"))))

    def test_noJSONEncoder(self) -> None:
        """
        Such a document (a long prompt among them) never reaches json's
        encoder, which holds the interpreter for 30-40 ms on an 8 MiB
        prompt.
        """
        calls: list[Any] = []

        class _NoJSON:
            @staticmethod
            def dumps(value: Any, **options: Any) -> str:
                calls.append(value)
                return _json(value)

        self.patch(_sql, "json", _NoJSON)
        for document in _PLAIN:
            _encode(document)
        self.assertEqual(calls, [])

    def test_whatJSONDecides(self) -> None:
        """
        A float is written by orjson, its text read back as the same number
        (C{1e-07} may be spelt C{1e-7}); C{NaN}, which no API's parser lets
        into a document, is written as C{null}; what orjson refuses is
        written as json writes it: a lone surrogate escaped (it has no UTF-8
        form), an integer past 64 bits, a key that is not text.
        """
        floats = {"t": 1e-7, "x": 0.5, "big": 1e16}
        text, size = _encode(floats)
        self.assertEqual(json.loads(text), floats)
        self.assertEqual(size, len(text.encode("utf-8")))
        self.assertEqual(_encode({"n": float("nan")}), ('{"n":null}', 10))
        for document in ({"big": 2**70}, {1: "a"}):
            text = _json(document)
            self.assertEqual(_encode(document), (text, len(text.encode("utf-8"))))
        self.assertEqual(_encode({"s": "\ud800"}), ('{"s":"\\ud800"}', 14))
