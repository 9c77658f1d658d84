"""
The shipped Grafana dashboard and Prometheus rules name only metrics the
gateway exposes (a renamed metric must not silently blank a panel or an
alert), and the README lists every metric.
"""

from __future__ import annotations

import json
import os
import re

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from prometheus_client import CollectorRegistry

from qwen_twist.gate.queue import SlotQueue
from qwen_twist.observe.metrics import Metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAME = re.compile(r"\bqwengate_[a-z_]+")
SUFFIXES = ("_bucket", "_count", "_sum", "_total")


class _Filter:
    active = 0
    refused = {"address": 0}
    dropped = {"http": 0, "handshake": 0}


class _Pool:
    def __init__(self) -> None:
        client = type("Client", (), {"where": "a:1", "breaker": None})()
        member = type("Member", (), {})()
        member.client, member.healthy, member.outstanding = client, True, 0
        member.running, member.models = (("m", 1, None),), None
        self.members = [member]


def exposed() -> set:
    """
    Every metric family name a fully wired gateway exposes.
    """
    metrics = Metrics(CollectorRegistry())
    sources = metrics.sources
    sources.gateway = type("G", (), {"active": {}})()
    sources.peer_filter = _Filter()
    sources.queue = lambda: SlotQueue(1, 1, 1.0, Clock())
    sources.upstream = _Pool
    sources.certificate = lambda: 1.0
    return {family.name for family in metrics.registry.collect()}


def base(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


class ShippedNameTests(SynchronousTestCase):
    """
    Dashboard, rules and README against the exposed names.
    """

    def names_in(self, *parts: str) -> set:
        with open(os.path.join(REPO, *parts), encoding="utf-8") as f:
            return {base(n) for n in NAME.findall(f.read())}

    def test_dashboard(self):
        """
        Every metric in C{contrib/grafana/qwengate.json} exists; the file
        is JSON.
        """
        with open(os.path.join(REPO, "contrib", "grafana", "qwengate.json")) as f:
            self.assertTrue(json.load(f)["panels"])
        self.assertEqual(self.names_in("contrib", "grafana", "qwengate.json") - exposed(), set())

    def test_rules(self):
        """
        Every metric in the alert rules exists.
        """
        self.assertEqual(self.names_in("etc", "prometheus", "qwengate-alerts.yml") - exposed(),
                         set())

    def test_readme_lists_every_metric(self):
        """
        The README names every exposed metric.
        """
        self.assertEqual(exposed() - self.names_in("README.md"), set())
