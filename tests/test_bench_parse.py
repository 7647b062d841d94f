"""
C{bench/parse.py}, the measurement of how long a request body holds the
reactor: the bodies it sends are what its table says they are.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from bench.parse import API_NAMES, SHAPES, build, gaps, parserCPU

LIMIT = 1024 * 1024


class BodyTests(SynchronousTestCase):
    """
    The bodies of every API and shape.
    """

    def test_withinTheLimit(self) -> None:
        """
        Every body is JSON, at most the limit and more than nine tenths of
        it (the worst shape is the one as large as the server accepts).
        """
        for api in API_NAMES:
            for shape in SHAPES:
                path, body = build(api, shape, "bench", LIMIT)
                self.assertTrue(path.startswith("/"))
                self.assertLessEqual(len(body), LIMIT, (api, shape))
                # MCP's and A2A's prompt goes out and comes back: half each.
                least = LIMIT * (0.4 if shape == "prompt" and api in ("mcp", "a2a") else 0.9)
                self.assertGreater(len(body), least, (api, shape))
                json.loads(body)

    def test_outcomes(self) -> None:
        """
        In the API's own parser, the valid prompt and the one long string
        are accepted; the shapes of many values are refused for their
        count, never reaching a run.
        """
        for api in API_NAMES:
            for shape in ("prompt", "string", "escapes"):
                self.assertEqual(
                    parserCPU(api, build(api, shape, "bench", LIMIT)[1])[1], "ok", (api, shape)
                )
            for shape in ("numbers", "strings", "nested", "keys", "items"):
                outcome = parserCPU(api, build(api, shape, "bench", LIMIT)[1])[1]
                self.assertIn(outcome, ("request_too_complex", "JSON-RPC -32600"), (api, shape))


class GapTests(SynchronousTestCase):
    """
    Reading the probe's file.
    """

    def test_window(self) -> None:
        """
        The longest gap overlapping the window, the most CPU in one gap and
        the most of the reactor thread's, from the gaps that overlap it
        only (one ending in it, one starting in it).
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("9.000 500.0 400.0 300.0\n")  # 8.5-9.0: before the window
            f.write("10.020 30.0 12.0 2.0\n")  # 9.99-10.02: ends in it
            f.write("10.500 20.0 15.0 9.0\n")  # inside
            f.write("11.010 40.0 5.0 1.0\n")  # 10.97-11.01: starts in it
            f.write("12.500 900.0 900.0 900.0\n")  # after
        self.assertEqual(gaps(path, 10.0, 11.0), (40.0, 15.0, 9.0))
