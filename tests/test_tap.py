"""
Tests for L{qwen_twist.tap}: C{twistd qwengate} options (configuration
checked before twistd daemonizes, one-line errors) and the service wiring.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase

from qwen_twist import config as configmod, tap
from qwen_twist.gate.peerfilter import PeerFilterFactory
from qwen_twist.web.request import GatewaySite


class ConfigFileMixin:
    """
    Writes config files into the test's temporary directory.
    """

    def write_config(self, text: str = "") -> str:
        """
        A config file: C{text} after a loopback, self-signed base whose
        state directory is private to the test.
        """
        directory = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        os.makedirs(directory)
        path = os.path.join(directory, "qwengate.yaml")
        with open(path, "w") as f:
            f.write(text)
        return path

    def valid_config(self, extra: str = "") -> str:
        """
        A valid config file (self-signed TLS, state in the test directory,
        authentication required with an (empty) keys file in the test
        directory, so the host's C{/etc/qwengate/keys.yaml} is never read).
        """
        path = self.write_config()
        directory = os.path.dirname(path)
        with open(os.path.join(directory, "keys.yaml"), "w") as f:
            f.write("keys: []\n")
        with open(path, "w") as f:
            f.write(
                "state_dir: %s\nlisten:\n  address: 127.0.0.1\n  port: 18790\n"
                "  backlog: 77\ntls:\n  self_signed: true\nauth:\n  keys_file: %s\n%s"
                % (os.path.join(directory, "state"), os.path.join(directory, "keys.yaml"), extra)
            )
        return path


class OptionsTests(ConfigFileMixin, SynchronousTestCase):
    """
    L{tap.Options}: parsing C{twistd qwengate ...}.
    """

    def setUp(self) -> None:
        self.stdout = io.StringIO()
        self.patch(sys, "stdout", self.stdout)

    def test_default_config_path(self):
        """
        Without C{--config} the packaged path is used.
        """
        self.assertEqual(tap.Options()["config"], "/etc/qwengate/qwengate.yaml")
        self.assertEqual(tap.DEFAULT_CONFIG, "/etc/qwengate/qwengate.yaml")

    def test_loads_config(self):
        """
        C{--config FILE} loads and validates the file and builds the TLS
        options; nothing is printed.
        """
        path = self.valid_config()
        options = tap.Options()
        options.parseOptions(["--config", path])
        self.assertIsInstance(options.config, configmod.Config)
        self.assertEqual(options.config.listen.port, 18790)
        self.assertIsNotNone(options.certificate_options.getContext())
        self.assertEqual(self.stdout.getvalue(), "")

    def test_short_option(self):
        """
        C{-c FILE} is the same as C{--config FILE}.
        """
        path = self.valid_config()
        options = tap.Options()
        options.parseOptions(["-c", path])
        self.assertEqual(options.config.listen.backlog, 77)

    def test_self_signed_notice(self):
        """
        The development certificate's fingerprint is kept for the service to
        log once it starts (not printed while parsing).
        """
        path = self.valid_config()
        options = tap.Options()
        options.parseOptions(["--config", path])
        self.assertEqual(len(options.notices), 1)
        fmt, fields = options.notices[0]
        self.assertEqual(
            fields["path"],
            os.path.join(os.path.dirname(path), "state", "tls", "cert.pem"),
        )
        self.assertEqual(len(fields["fingerprint"].split(":")), 32)

    def test_missing_keys_file_notice(self):
        """
        A keys file that does not exist is not an error (a fresh install has
        no keys yet) but is announced: no API key will be accepted.
        """
        path = self.valid_config()
        os.remove(os.path.join(os.path.dirname(path), "keys.yaml"))
        options = tap.Options()
        options.parseOptions(["--config", path])
        self.assertEqual(len(options.notices), 2)
        self.assertIn("does not exist", options.notices[1][0])

    def test_check_config(self):
        """
        C{--check-config} prints C{<file>: configuration OK} and exits with
        status 0.
        """
        path = self.valid_config()
        error = self.assertRaises(
            SystemExit, tap.Options().parseOptions, ["--config", path, "--check-config"]
        )
        self.assertEqual(error.code, 0)
        self.assertEqual(self.stdout.getvalue(), "%s: configuration OK\n" % (path,))

    def test_invalid_config(self):
        """
        An invalid file stops with a one-line message C{<file>: <key>:
        <problem>} and a non-zero status (a string code exits with 1).
        """
        path = self.valid_config("upstream:\n  timeouts:\n    connect: -1\n")
        for argv in (["--config", path], ["--config", path, "--check-config"]):
            error = self.assertRaises(SystemExit, tap.Options().parseOptions, argv)
            self.assertEqual(
                error.code, "%s: upstream.timeouts.connect: must be > 0, got -1.0" % (path,)
            )
        self.assertEqual(self.stdout.getvalue(), "")

    def test_auth_without_identities(self):
        """
        Requiring authentication while switching API keys off, with no JWT
        or client-certificate identity, stops the daemon naming
        C{auth.keys_file} on one line.
        """
        path = self.write_config("tls: {self_signed: true}\nauth:\n  keys_file: null\n")
        error = self.assertRaises(SystemExit, tap.Options().parseOptions, ["--config", path])
        self.assertTrue(error.code.startswith("%s: auth.keys_file: is required" % (path,)), error.code)
        self.assertNotIn("\n", error.code)

    def test_unknown_key(self):
        """
        A typo stops the daemon naming the dotted path.
        """
        path = self.valid_config("upstream:\n  timout: 5\n")
        error = self.assertRaises(SystemExit, tap.Options().parseOptions, ["--config", path])
        self.assertTrue(error.code.startswith("%s: upstream.timout: unknown key" % (path,)))
        self.assertNotIn("\n", error.code)

    def test_missing_config_file(self):
        """
        A missing file is one line naming it.
        """
        path = os.path.abspath(self.mktemp())
        error = self.assertRaises(SystemExit, tap.Options().parseOptions, ["--config", path])
        self.assertEqual(error.code, "%s: cannot read: No such file or directory" % (path,))

    def test_invalid_yaml(self):
        """
        A syntax error is one line with the file and line number.
        """
        path = self.write_config("listen:\n  port: [\n")
        error = self.assertRaises(SystemExit, tap.Options().parseOptions, ["--config", path])
        self.assertTrue(error.code.startswith("%s: invalid YAML at line 3: " % (path,)), error.code)
        self.assertNotIn("\n", error.code)

    def test_missing_tls_file(self):
        """
        A TLS file that does not exist is found at start-up (not at the
        first handshake): one line naming the file and C{tls.certificate}.
        """
        missing = os.path.abspath(self.mktemp())
        path = self.write_config(
            "tls:\n  certificate: %s\n  private_key: %s\n" % (missing, missing)
        )
        for argv in (["--config", path], ["--config", path, "--check-config"]):
            error = self.assertRaises(SystemExit, tap.Options().parseOptions, argv)
            self.assertEqual(
                error.code,
                "%s: tls.certificate: cannot read %s: No such file or directory" % (path, missing),
            )
        self.assertEqual(self.stdout.getvalue(), "")

    def test_missing_tls_section(self):
        """
        A file without a tls section stops naming C{tls.certificate}
        instead of failing later with a traceback.
        """
        path = self.write_config("listen:\n  port: 8443\n")
        error = self.assertRaises(SystemExit, tap.Options().parseOptions, ["--config", path])
        self.assertTrue(error.code.startswith("%s: tls.certificate: is required" % (path,)))


class MakeServiceTests(ConfigFileMixin, SynchronousTestCase):
    """
    L{tap.makeService}: the listener and its factory stack.
    """

    def make(self, extra: str = "") -> Any:
        """
        Parse a valid config and build the service on a memory reactor.
        """
        options = tap.Options()
        options.parseOptions(["--config", self.valid_config(extra)])
        self.reactor = MemoryReactorClock()
        return tap.makeService(options, reactor=self.reactor)

    def listener(self, svc: Any) -> StreamServerEndpointService:
        listeners = [s for s in svc if isinstance(s, StreamServerEndpointService)]
        self.assertEqual(len(listeners), 1)
        return listeners[0]

    def test_service(self):
        """
        The service is a C{MultiService} whose one listener serves the
        connection filter (configured by the C{connections} section), which
        wraps a C{TLSMemoryBIOFactory} wrapping the gateway's site: peers
        are refused before any TLS work.
        """
        svc = self.make()
        self.assertIsInstance(svc, service.MultiService)
        listener = self.listener(svc)
        self.assertIsInstance(listener.endpoint, endpoints.TCP4ServerEndpoint)
        self.assertIsInstance(listener.factory, PeerFilterFactory)
        self.assertIs(listener.factory, svc.peer_filter)
        self.assertEqual(listener.factory.config.connections, configmod.ConnectionsConfig())
        self.assertIsInstance(svc.factory, TLSMemoryBIOFactory)
        self.assertIs(listener.factory.wrappedFactory, svc.factory)
        self.assertIsInstance(svc.factory.wrappedFactory, GatewaySite)
        self.assertIs(svc.factory.wrappedFactory, svc.site)
        self.assertEqual(svc.site.max_body_bytes, configmod.LimitsConfig().max_body_bytes)

    def test_listens_on_configured_port(self):
        """
        Starting the service listens on the configured port, interface and
        backlog with the connection filter in front of TLS; stopping it
        stops listening.
        """
        svc = self.make()
        svc.startService()
        self.assertEqual(len(self.reactor.tcpServers), 2)
        port, factory, backlog, interface = self.reactor.tcpServers[0]
        self.assertEqual((port, backlog, interface), (18790, 77, "127.0.0.1"))
        self.assertIs(factory, svc.peer_filter)
        # The metrics listener: loopback, plain HTTP.
        port, factory, backlog, interface = self.reactor.tcpServers[1]
        self.assertEqual((port, interface), (9189, "127.0.0.1"))
        self.assertIs(factory, svc.observe.site)
        self.successResultOf(svc.stopService())
        self.assertFalse(svc.running)
        self.assertFalse(self.listener(svc).running)

    def test_ipv6(self):
        """
        An IPv6 address gets an IPv6 endpoint.
        """
        svc = self.make("listen:\n  address: '::1'\n  port: 18791\n")
        self.assertIsInstance(self.listener(svc).endpoint, endpoints.TCP6ServerEndpoint)
        svc.startService()
        port, factory, backlog, interface = self.reactor.tcpServers[0]
        self.assertEqual((port, backlog, interface), (18791, 511, "::1"))
        self.successResultOf(svc.stopService())

    def test_max_body_bytes(self):
        """
        The site gets C{limits.max_body_bytes}.
        """
        svc = self.make("limits:\n  max_body_bytes: 4096\n")
        self.assertEqual(svc.site.max_body_bytes, 4096)

    def test_start_logs(self):
        """
        Starting logs the self-signed certificate notice and the serving
        line with the address and the upstream.
        """
        svc = self.make()
        events: list = []
        svc.log = Logger(observer=events.append)
        svc.startService()
        self.addCleanup(svc.stopService)
        formats = [e["log_format"] for e in events]
        self.assertEqual(len(events), 2, formats)
        self.assertIn("fingerprint", events[0])
        self.assertEqual(events[1]["port"], 18790)
        self.assertEqual(events[1]["address"], "127.0.0.1")
        self.assertEqual(events[1]["upstream"], "http://127.0.0.1:11434")
