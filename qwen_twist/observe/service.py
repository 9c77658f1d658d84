# -*- test-case-name: tests.observe.test_service -*-
"""
Wiring observability into the running gateway: the metrics and audit
observers on the pipeline, the metrics listener, the audit file and its
C{SIGUSR1} reopen, and log redaction.

Kept out of L{qwen_twist.tap} so the service there only says "observe this
gateway" (L{Observability}) and calls L{Observability.reconfigure} and
L{Observability.watch_upstream} on reload.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, Optional

from twisted.application import internet, service
from twisted.internet import endpoints, threads
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from qwen_twist.interfaces import IReconfigurable

from qwen_twist.observe import redact
from qwen_twist.observe.audit import AuditLog, DailyFile, StreamSink, audit_path
from qwen_twist.observe.metrics import CertificateExpiry, Metrics
from qwen_twist.observe.metrics_resource import metrics_site, token_reader


def certificate_path(config: Any) -> Optional[str]:
    """
    The server certificate file in force (the generated one when
    C{tls.self_signed} and none is configured).
    """
    if config.tls.certificate:
        return config.tls.certificate
    if config.tls.self_signed:
        return os.path.join(config.state_dir, "tls", "cert.pem")
    return None


def metrics_endpoint(reactor: Any, address: str, port: int) -> Any:
    if ":" in address:
        return endpoints.TCP6ServerEndpoint(reactor, port, interface=address)
    return endpoints.TCP4ServerEndpoint(reactor, port, interface=address)


@implementer(IReconfigurable)
class Observability(service.MultiService):
    """
    Metrics, audit log and redaction for one L{qwen_twist.tap.GatewayService}.

    @ivar metrics: the L{Metrics} (its C{registry} is what is served).
    @ivar audit: the L{AuditLog} observer; its sink is opened at start.
    @ivar site: the metrics listener's site (tests listen on it themselves).
    """

    uses = ("metrics", "audit")
    log = Logger()
    #: Wrap the global log observers at start (twistd only: under trial it
    #: would wrap the test runner's observers).
    redact_logs = False

    def __init__(self, config: Any, reactor: Any, gateway: Any, peer_filter: Any,
                 gate: Any, upstream: Any, server_tls: Any = None) -> None:
        """
        @param server_tls: the API listener's TLS options, used for the
            metrics listener too when C{metrics.tls} is set.
        """
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.metrics = Metrics(config=config)
        self.audit = AuditLog(config)
        gateway.observers.extend([self.metrics, self.audit])
        gateway.chunk_gap = self.metrics.chunk_gap
        sources = self.metrics.sources
        sources.gateway = gateway
        sources.peer_filter = peer_filter
        sources.queue = lambda: gate.queue
        sources.certificate = CertificateExpiry(lambda: certificate_path(self.config))
        sources.audit = self.audit
        sources.store = lambda: gate.store
        self._upstream = upstream
        sources.upstream = lambda: self._upstream
        self.watch_upstream(upstream)
        self.site = metrics_site(
            self.metrics.registry,
            token_reader(lambda: self.config.metrics.bearer_token_file),
            reactor=reactor,
        )
        #: What the metrics listener serves: the site, or TLS around it.
        self.factory: Any = self.site
        metrics = config.metrics
        if metrics.tls and server_tls is not None:
            self.factory = TLSMemoryBIOFactory(server_tls, False, self.site)
        if metrics.enabled:
            listener = internet.StreamServerEndpointService(
                metrics_endpoint(reactor, metrics.address, metrics.port), self.factory)
            listener.setServiceParent(self)

    def watch_upstream(self, upstream: Any) -> None:
        """
        Count the breaker transitions and label the members of (a new)
        upstream.
        """
        self._upstream = upstream
        members = getattr(upstream, "members", None)
        clients = [m.client for m in members] if members is not None else [upstream]
        self.metrics.watch_upstreams(client.where for client in clients)
        for client in clients:
            listeners = getattr(client, "breaker_listeners", None)
            if listeners is not None and self.metrics.breaker_moved not in listeners:
                listeners.append(self.metrics.breaker_moved)

    def reconfigure(self, config: Any) -> None:
        """
        New settings (the listener's address, port and the audit file and
        mode take effect at the next restart).
        """
        self.config = config
        self.metrics.reconfigure(config)
        self.audit.reconfigure(config)

    def startService(self) -> None:
        if self.redact_logs:
            redact.install()
        self.open_audit()
        install_signal("SIGUSR1", self.reactor, self.reopen)
        super().startService()
        if self.config.metrics.enabled:
            metrics = self.config.metrics
            self.log.info("metrics on {scheme}://{address}:{port}/metrics",
                          scheme="https" if self.factory is not self.site else "http",
                          address=metrics.address, port=metrics.port)

    def open_audit(self) -> None:
        audit = self.config.audit
        if not audit.enabled:
            return
        if audit.file == "-":
            self.audit.sink = StreamSink(open(1, "wb", buffering=0, closefd=False))
            return
        reactor = self.reactor
        get_pool = getattr(reactor, "getThreadPool", None)

        def in_thread(job: Any) -> Any:
            return threads.deferToThreadPool(reactor, get_pool(), job)

        path = audit_path(self.config)
        sink = DailyFile(path, reactor, audit.retention, audit.compress,
                         in_thread if get_pool is not None else None)
        try:
            sink.open()
        except OSError as e:
            self.log.error("cannot open the audit log {path}: {why}; calls are not audited",
                           path=path, why=e.strerror or str(e))
            return
        self.audit.sink = sink

    def reopen(self) -> None:
        """
        C{SIGUSR1}: reopen the audit file (after an external logrotate).
        """
        sink = self.audit.sink
        if sink is not None:
            sink.reopen()
            self.log.info("audit log reopened")

    def stopService(self) -> Any:
        d = super().stopService()
        sink = self.audit.sink
        if sink is not None:
            sink.close()
        return d


def install_signal(name: str, reactor: Any, handler: Any) -> bool:
    """
    Run C{handler} in the reactor thread on signal C{name} (where signals
    exist and this is the main thread).
    """
    number = getattr(signal, name, None)
    if number is None or threading.current_thread() is not threading.main_thread():
        return False
    call_from_thread = getattr(reactor, "callFromThread", None)
    if call_from_thread is None:
        return False
    signal.signal(number, lambda signum, frame: call_from_thread(handler))
    return True
