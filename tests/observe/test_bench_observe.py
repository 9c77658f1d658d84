"""
C{bench.observe}: the harness runs and reports every figure (speed itself
is measured by running it, not here).
"""

from __future__ import annotations

import io
import json

from twisted.trial.unittest import SynchronousTestCase

from bench import observe as bench


class BenchObserveTests(SynchronousTestCase):
    """
    A tiny run of the micro-benchmark.
    """

    def test_figures(self):
        """
        Every figure is reported as a number of microseconds.
        """
        out = io.StringIO()
        self.assertEqual(bench.main(["-n", "50", "--rounds", "1", "--json"], out=out), 0)
        figures = json.loads(out.getvalue())
        self.assertEqual(sorted(figures), sorted([
            "wiring_us_per_request", "metrics_us_per_request", "audit_us_per_request",
            "metrics_us_per_chunk", "total_us_per_request", "total_us_per_chunk"]))
        for value in figures.values():
            self.assertIsInstance(value, float)

    def test_sample_call_line(self):
        """
        The fast audit encoder writes exactly the record of the sample call.
        """
        from qwen_twist.observe.audit import encode_call, record

        ctx = bench.sample_call(3)
        self.assertEqual(json.loads(encode_call(ctx)), record(ctx))
