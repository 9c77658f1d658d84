"""
L{qwen_twist.observe.service.Observability} wired into the gateway
service: observers, the metrics listener, the audit file, reload.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from qwen_twist import config as configmod
from qwen_twist.context import CallContext
from qwen_twist.gate import tls
from qwen_twist.observe.audit import AuditLog
from qwen_twist.observe.metrics import Metrics
from qwen_twist.observe.audit import audit_path
from qwen_twist.observe.service import certificate_path
from qwen_twist.tap import GatewayService


class ServiceTests(SynchronousTestCase):
    """
    The gateway service with observability, on a memory reactor.
    """

    def make(self, **sections: Any) -> GatewayService:
        state = os.path.abspath(self.mktemp())
        raw = {"state_dir": state, "tls": {"self_signed": True},
               "auth": {"required": False}, "listen": {"address": "127.0.0.1"}}
        raw.update(sections)
        config = configmod.build(configmod.Config, raw)
        self.reactor = MemoryReactorClock()
        return GatewayService(config, tls.certificate_options(config.tls, state), self.reactor)

    def test_observers_and_listener(self):
        """
        The metrics and audit observers follow the access log; the metrics
        listener binds the configured loopback port; the audit file opens
        at start in C{state_dir/audit} and gets one line per call.
        """
        service = self.make(metrics={"port": 9300})
        kinds = [type(o) for o in service.gateway.observers]
        self.assertEqual(kinds[1:], [Metrics, AuditLog])
        self.assertEqual(service.gateway.chunk_gap, service.observe.metrics.chunk_gap)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual([(port, interface) for port, _, _, interface
                          in self.reactor.tcpServers[1:]], [(9300, "127.0.0.1")])
        path = audit_path(service.config)
        self.assertEqual(path, os.path.join(service.config.state_dir, "audit", "audit.log"))
        ctx = CallContext(request_id="r1", route="models", method="GET", path="/v1/models",
                          client_ip="127.0.0.1", started=self.reactor.seconds())
        service.gateway.call_started(ctx)
        service.gateway.call_finished(ctx)
        service.observe.audit.sink.flush()
        with open(path) as f:
            self.assertEqual(json.loads(f.read())["request_id"], "r1")

    def test_disabled(self):
        """
        With both off: no listener, no audit file.
        """
        service = self.make(metrics={"enabled": False}, audit={"enabled": False})
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(len(self.reactor.tcpServers), 1)
        self.assertIsNone(service.observe.audit.sink)
        self.assertFalse(os.path.exists(audit_path(service.config)))

    def test_certificate_path(self):
        """
        The configured certificate, or the generated one.
        """
        service = self.make()
        self.assertEqual(certificate_path(service.config),
                         os.path.join(service.config.state_dir, "tls", "cert.pem"))
        self.assertIsNotNone(service.observe.metrics.sources.certificate())

    def test_new_upstream_watched(self):
        """
        Replacing the upstream (reload) labels its members and counts its
        breaker transitions.
        """
        import dataclasses

        service = self.make()
        service.reconfigure(dataclasses.replace(service.config, upstream=configmod.build(
            configmod.UpstreamConfig, {"url": "http://10.0.0.9:11434"})))
        new = service.upstream
        self.assertIn(service.observe.metrics.breaker_moved,
                      new.members[0].client.breaker_listeners)
        self.assertEqual(service.observe.metrics.upstream_label("10.0.0.9:11434"),
                         "10.0.0.9:11434")
        self.assertIs(service.observe.metrics.sources.upstream(), new)
