# -*- test-case-name: tests.observe.test_metrics -*-
"""
Counters and histograms for the reactor thread, exposed through
prometheus-client at scrape time.

Why not C{prometheus_client.Counter}/C{Histogram} per call: they take a
lock per update and a histogram walks its buckets in Python; measured on
the 2-core development machine that is about 1 microsecond per counter
increment and 3 per histogram observation, and a call updates a dozen of
them (C{python -m bench.observe}). Every update here happens in the
reactor thread, so a dict of floats and one C{bisect} per observation
suffice (about 0.2 microseconds); the scrape builds the metric families
from them. The exposition format, names and label rules stay
prometheus-client's (L{Family.collect} yields its C{*MetricFamily}).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Dict, Iterable, List, Sequence, Tuple

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

INF = float("inf")

Labels = Tuple[str, ...]


class CounterVec:
    """
    A counter family: C{values[label values] = total}.
    """

    def __init__(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = tuple(labelnames)
        self.values: Dict[Labels, float] = {}

    def inc(self, labels: Labels = (), amount: float = 1.0) -> None:
        values = self.values
        values[labels] = values.get(labels, 0.0) + amount

    def collect(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labelnames)
        for labels, value in sorted(self.values.items()):
            family.add_metric(list(labels), value)
        return family


class HistogramVec:
    """
    A histogram family: per label values, the count in each bucket (not
    cumulative; the last is C{+Inf}) and, last, the sum.
    """

    def __init__(self, name: str, doc: str, labelnames: Sequence[str] = (),
                 buckets: Sequence[float] = ()) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = tuple(labelnames)
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[-1] != INF:
            bounds.append(INF)
        self.bounds = bounds
        self._size = len(bounds) + 1
        self.rows: Dict[Labels, List[float]] = {}

    def observe(self, labels: Labels, value: float) -> None:
        row = self.rows.get(labels)
        if row is None:
            row = self.rows[labels] = [0.0] * self._size
        # Buckets are "less than or equal": the first bound >= value.
        row[bisect_left(self.bounds, value)] += 1.0
        row[-1] += value

    def collect(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        bounds = [floatToGoString(b) for b in self.bounds]
        for labels, row in sorted(self.rows.items()):
            total = 0.0
            buckets = []
            for bound, count in zip(bounds, row):
                total += count
                buckets.append((bound, total))
            family.add_metric(list(labels), buckets, sum_value=row[-1])
        return family


def collect_all(families: Iterable[Any]) -> Iterable[Any]:
    for family in families:
        yield family.collect()
