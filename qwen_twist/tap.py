# -*- test-case-name: tests.test_tap -*-
"""
C{twistd qwengate}: command-line options and service wiring.

Configuration is loaded and validated in L{Options.postOptions}, before
twistd daemonizes or starts the reactor, so a bad file stops the daemon with
one line (file, dotted key, problem) and a non-zero exit status instead of a
traceback in a log nobody reads. TLS files are checked there too.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
from typing import Any, List, Optional, Tuple

from twisted.application import internet, service
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from zope.interface import implementer

from qwen_twist import __version__, config as configmod
from qwen_twist.gate import hooks as gate, tls
from qwen_twist.interfaces import IReconfigurable
from qwen_twist.gate.peerfilter import PeerFilterFactory
from qwen_twist.observe.service import Observability
from qwen_twist.pipeline import Gateway
from qwen_twist.upstream.client import OllamaClient
from qwen_twist.upstream.pool import UpstreamPool
from qwen_twist.reconfigure import Reconfigurer
from qwen_twist.web.request import GatewaySite
from qwen_twist.web.root import build_root
from qwen_twist.web.screen import HeadScreen

DEFAULT_CONFIG = "/etc/qwengate/qwengate.yaml"

#: Seconds between sweeps of idle buckets and expired bans.
PRUNE_INTERVAL = 60.0


class Options(usage.Options):
    """
    Options of C{twistd qwengate}.

    @ivar config: the validated L{configmod.Config}, after parsing.
    @ivar certificate_options: the server TLS options built from it.
    """

    synopsis = "[--config FILE] [--check-config]"
    longdesc = (
        "Serve the OpenAI API over TLS and translate it to Ollama's native API. "
        "All settings live in the YAML file; see etc/qwengate/qwengate.yaml."
    )
    optParameters = [["config", "c", DEFAULT_CONFIG, "YAML configuration file"]]
    optFlags = [["check-config", None, "validate the configuration and TLS files, then exit"]]

    def postOptions(self) -> None:
        filename = self["config"]
        notices: List[Tuple[str, dict]] = []
        try:
            self.config = configmod.load(filename)
            self.certificate_options = tls.certificate_options(
                self.config.tls,
                self.config.state_dir,
                lambda fmt, **kw: notices.append((fmt, kw)),
                self.config.auth.mtls,
            )
            self.identities = gate.load_identities(self.config)
            keys_file = self.config.auth.keys_file
            if keys_file and not os.path.exists(keys_file):
                notices.append((
                    "API keys file {path} does not exist: no API key is accepted "
                    "(create one with qwengate-keys add --file {path} --id NAME)",
                    {"path": keys_file},
                ))
        except configmod.ConfigError as e:
            if not e.filename:
                e.filename = filename
            # One line, exit status 1 (SystemExit with a message prints it
            # to stderr); twistd would otherwise print its whole usage text.
            raise SystemExit(str(e))
        self.notices = notices
        if self["check-config"]:
            sys.stdout.write("%s: configuration OK\n" % (filename,))
            raise SystemExit(0)


@implementer(IReconfigurable)
class GatewayService(service.MultiService):
    """
    The running gateway: the TLS listener, the upstream pool and the one
    configuration path (L{settings}) every component is registered with.

    @ivar settings: the L{Reconfigurer}; C{settings.config} is the
        configuration in force.
    """

    log = Logger()

    #: The service itself owns the upstream pool (rebuilt when it changes).
    uses = ("upstream",)

    def __init__(self, config: configmod.Config, certificate_options: Any, reactor: Any,
                 notices: Optional[list] = None, identities: Optional[tuple] = None,
                 config_path: Optional[str] = None) -> None:
        super().__init__()
        self.config = config
        self.config_path = config_path
        self.reactor = reactor
        self._notices = notices or []
        self.settings = Reconfigurer(config)
        self.upstream = build_upstream(reactor, config.upstream)
        self.upstream.setServiceParent(self)
        self.gate = gate.Gate(config, reactor, identities)
        self.gateway = Gateway(config, reactor, self.upstream, hooks=self.gate.hooks,
                               screens=self.gate.screens)
        self.site = GatewaySite(
            build_root(self.gateway), config, reactor=reactor,
            screen=HeadScreen(self.gateway),
        )
        self.server_tls = tls.ReloadableServerTLS(certificate_options, config)
        self.factory = build_listener_factory(self.server_tls, self.site)
        self.peer_filter = PeerFilterFactory(
            self.factory, self.gate.rules, self.gate.bans, config, reactor,
            answer_tls=answer_tls(self.factory),
        )
        # The order a request meets them: the connection filter and TLS,
        # then the HTTP limits, the gate's hooks, the pipeline, upstream.
        # Metrics and audit log: observers on the pipeline, their own
        # listener and file.
        self.observe = Observability(config, reactor, self.gateway, self.peer_filter,
                                     self.gate, self.upstream, self.server_tls)
        for component in (self.peer_filter, self.server_tls, self.site, self.gate,
                          self.gateway, self.observe, self):
            self.settings.register(component)
        endpoint = listen_endpoint(reactor, config.listen)
        self.listener = internet.StreamServerEndpointService(endpoint, self.peer_filter)
        self.listener.setServiceParent(self)
        self.observe.setServiceParent(self)
        pruning = internet.TimerService(PRUNE_INTERVAL, self.prune)
        pruning.clock = reactor
        pruning.setServiceParent(self)

    def prune(self) -> None:
        """
        Forget idle rate-limit buckets and expired bans, so memory does not
        grow with the number of addresses ever seen. One failing step must
        not stop the timer.
        """
        for step in (self.gate.prune, self.peer_filter.prune):
            try:
                step()
            except Exception:
                self.log.failure("pruning failed")

    def reload(self) -> bool:
        """
        SIGHUP: re-read the configuration file and hand it to every
        registered component (L{Reconfigurer.apply}, which logs each changed
        key and whether it applied), and re-read the keys file and the JWT
        key on their own.

        Why the keys are separate: revoking a key must never wait on an
        unrelated file. An invalid configuration file keeps the running
        configuration (and says why), but the keys file named by the
        configuration in force is still re-read; a bad certificate keeps
        the running certificate and nothing else.

        @return: True when the configuration file was valid and applied.
        """
        if self.config_path is None:
            return False
        try:
            config: Optional[configmod.Config] = configmod.load(self.config_path)
        except configmod.ConfigError as e:
            self.log.error("reload refused, keeping the running configuration: {error}",
                           error=str(e))
            config = None
        try:
            identities = gate.load_identities(config or self.settings.config)
        except configmod.ConfigError as e:
            self.log.error("keys not reloaded, keeping the running keys: {error}",
                           error=str(e))
            identities = None
        if config is not None:
            changes = self.settings.apply(config)
        if identities is not None:
            self.gate.set_identities(identities)
        if config is None:
            return False
        self.log.info("reloaded {path}: {changed} settings changed, {keys} API keys",
                      path=self.config_path, changed=len(changes),
                      keys=len(identities[0]) if identities else "unchanged")
        return True

    def reconfigure(self, config: configmod.Config) -> None:
        """
        A changed C{upstream} section gets a new pool: new calls go there,
        calls in flight finish on the old one, which is then closed.
        """
        old_config, self.config = self.config, config
        if config.upstream == old_config.upstream:
            return
        old, self.upstream = self.upstream, build_upstream(self.reactor, config.upstream)
        self.gateway.upstream = self.upstream
        self.observe.watch_upstream(self.upstream)
        old.disownServiceParent()
        self.upstream.setServiceParent(self)

    def startService(self) -> None:
        install_reload_signal(self.reactor, self.reload)
        for fmt, fields in self._notices:
            self.log.info(fmt, **fields)
        listen = self.config.listen
        self.log.info(
            "qwengate {version} serving https://{address}:{port}/v1 -> {upstream}",
            version=__version__,
            address=listen.address,
            port=listen.port,
            upstream=self.upstream.base_url,
        )
        super().startService()

    def stopService(self) -> Any:
        """
        SIGTERM / C{systemctl stop}: close the listener first, let calls in
        flight finish for up to C{lifecycle.drain_timeout} seconds (then
        streams end with an error event), wait until what was written to
        each client has left the process (TLS included), then stop the rest
        and close the upstream pool.
        """
        service.Service.stopService(self)
        timeout = self.config.lifecycle.drain_timeout
        d = defer.maybeDeferred(self.listener.stopService) if self.listener.running \
            else defer.succeed(None)
        d.addCallback(lambda _: self.gateway.drain(timeout))
        d.addBoth(lambda _: self.site.close_connections(timeout))
        d.addBoth(lambda _: self._stop_others())
        return d

    def _stop_others(self) -> Any:
        # Like MultiService.stopService, minus the listener already stopped
        # (stopping it twice would chain its Deferred onto itself).
        return defer.DeferredList([
            defer.maybeDeferred(child.stopService)
            for child in reversed(list(self)) if child is not self.listener
        ])


def build_upstream(reactor: Any, config: configmod.UpstreamConfig) -> UpstreamPool:
    """
    An L{UpstreamPool} over one L{OllamaClient} per server: C{upstream.url}
    is a pool of one, C{upstream.urls} several (routing, health checks,
    retry once).
    """
    urls = config.urls or (config.url,)
    clients = [OllamaClient(reactor, dataclasses.replace(config, url=url)) for url in urls]
    return UpstreamPool(reactor, clients, config.health_interval)


def install_reload_signal(reactor: Any, reload: Any) -> None:
    """
    Run C{reload} in the reactor thread on SIGHUP (where signals exist and
    this is the main thread, i.e. under twistd, not in tests).
    """
    if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
        return
    call_from_thread = getattr(reactor, "callFromThread", None)
    if call_from_thread is None:
        return
    signal.signal(signal.SIGHUP, lambda signum, frame: call_from_thread(reload))


def build_listener_factory(certificate_options: Any, site: Any) -> Any:
    """
    The protocol factory stack of the public port: TLS around HTTP. The
    per-IP peer filter wraps this from the outside (it must refuse before
    any handshake work; see style.md section 1.3).
    """
    return TLSMemoryBIOFactory(certificate_options, False, site)


def answer_tls(tls_factory: Any) -> Any:
    """
    How the peer filter wraps the inner protocol that answers a refused
    connection: in a server TLS protocol of the listener's own TLS factory
    (same certificate and settings), which never reaches the HTTP site.
    """
    def wrap(inner: Any) -> Any:
        return tls_factory.protocol(tls_factory, inner)

    return wrap


def listen_endpoint(reactor: Any, listen: configmod.ListenConfig) -> Any:
    """
    A plain TCP endpoint (TLS is in the factory stack, not the endpoint).
    """
    if ":" in listen.address:
        return endpoints.TCP6ServerEndpoint(
            reactor, listen.port, backlog=listen.backlog, interface=listen.address
        )
    return endpoints.TCP4ServerEndpoint(
        reactor, listen.port, backlog=listen.backlog, interface=listen.address
    )


def makeService(options: Options, reactor: Any = None) -> service.IService:
    """
    Build the service twistd runs.
    """
    under_twistd = reactor is None
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    gateway = GatewayService(
        options.config,
        options.certificate_options,
        reactor,
        getattr(options, "notices", []),
        getattr(options, "identities", None),
        options["config"],
    )
    # Under twistd: redact secrets from every log observer (not the test
    # runner's).
    gateway.observe.redact_logs = under_twistd
    return gateway
