"""
Tests for L{qwen_twist.tap.GatewayService.reload}: SIGHUP applies new keys
and address rules without a restart, and refuses an invalid configuration.
"""

from __future__ import annotations

import os
import signal
import time

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from qwen_twist import config as configmod
from qwen_twist.gate import tls
from qwen_twist.gate.keyfile import add_key
from qwen_twist.tap import GatewayService, install_reload_signal

CONFIG = """
state_dir: {state}
tls: {{self_signed: true}}
auth: {{keys_file: {keys}}}
access: {{allow: [{allow}]}}
"""


class ReloadTests(SynchronousTestCase):
    """
    Reloading keys and allow-lists in a running service.
    """

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.keys = os.path.join(directory, "keys.yaml")
        self.path = os.path.join(directory, "qwengate.yaml")
        self.state = directory
        self.alice = add_key(self.keys, "alice", now=time.time())
        self.write("127.0.0.0/8")
        config = configmod.load(self.path)
        options = tls.certificate_options(config.tls, config.state_dir)
        self.reactor = MemoryReactorClock()
        self.service = GatewayService(config, options, self.reactor, config_path=self.path)

    def write(self, allow: str, extra: str = "") -> None:
        with open(self.path, "w") as f:
            f.write(CONFIG.format(state=self.state, keys=self.keys, allow=allow) + extra)

    def authenticates(self, key: str) -> bool:
        return self.service.gate.identity.keys.authenticate(key, time.time()) is not None

    def test_new_key_and_rules(self) -> None:
        """
        A key added to the keys file and an address added to the allow-list
        take effect on reload, for the request hooks and the connection
        filter alike.
        """
        bob = add_key(self.keys, "bob", now=time.time())
        self.assertFalse(self.authenticates(bob))
        self.assertFalse(self.service.peer_filter.rules.permits("192.0.2.1"))
        self.write("127.0.0.0/8, 192.0.2.0/24")
        self.assertTrue(self.service.reload())
        self.assertTrue(self.authenticates(bob))
        self.assertTrue(self.authenticates(self.alice))
        self.assertTrue(self.service.peer_filter.rules.permits("192.0.2.1"))
        self.assertTrue(self.service.gate.address.rules.permits("192.0.2.1"))

    def test_revoked_key(self) -> None:
        """
        A revoked key stops working at the next reload.
        """
        from qwen_twist.gate.keyfile import revoke_key

        revoke_key(self.keys, "alice")
        self.assertTrue(self.authenticates(self.alice))
        self.service.reload()
        self.assertFalse(self.authenticates(self.alice))

    def test_invalid_config_keeps_old(self) -> None:
        """
        An invalid new configuration is logged and refused; the running one
        stays in force.
        """
        self.write("not-an-address")
        self.assertFalse(self.service.reload())
        self.assertTrue(self.authenticates(self.alice))
        self.assertTrue(self.service.peer_filter.rules.permits("127.0.0.1"))

    def test_bans_survive_reload(self) -> None:
        """
        A reload does not pardon banned addresses.
        """
        now = self.reactor.seconds()
        for _ in range(3):
            self.service.gate.bans.failure("198.51.100.7", now)
        self.service.reload()
        self.assertGreater(self.service.gate.bans.banned_for("198.51.100.7", now), 0)

    def test_sighup_handler(self) -> None:
        """
        SIGHUP schedules the reload on the reactor thread.
        """
        calls = []

        class Reactor:
            def callFromThread(self, f, *args):
                calls.append(f)

        previous = signal.getsignal(signal.SIGHUP)
        self.addCleanup(signal.signal, signal.SIGHUP, previous)
        install_reload_signal(Reactor(), self.service.reload)
        os.kill(os.getpid(), signal.SIGHUP)
        self.assertEqual(calls, [self.service.reload])


class ReloadMoreTests(SynchronousTestCase):
    """
    Reloading the certificate and the upstreams.
    """

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.directory = directory
        self.keys = os.path.join(directory, "keys.yaml")
        add_key(self.keys, "alice", now=time.time())
        self.path = os.path.join(directory, "qwengate.yaml")
        self.cert, self.key, _ = tls.ensure_self_signed(os.path.join(directory, "one"))
        self.write(self.cert, self.key, "http://127.0.0.1:11434")
        config = configmod.load(self.path)
        options = tls.certificate_options(config.tls, config.state_dir)
        self.service = GatewayService(config, options, MemoryReactorClock(),
                                      config_path=self.path)

    def write(self, cert: str, key: str, url: str, extra: str = "") -> None:
        with open(self.path, "w") as f:
            f.write(
                "state_dir: %s\ntls: {certificate: %s, private_key: %s}\n"
                "auth: {keys_file: %s}\nupstream: {url: '%s'}\n%s"
                % (self.directory, cert, key, self.keys, url, extra))

    def served_fingerprint(self) -> str:
        connection = self.service.server_tls.serverConnectionForTLS(None)
        return connection.get_certificate().digest("sha256").decode()

    def test_certificate(self) -> None:
        """
        A renewed certificate is served to new connections after a reload.
        """
        before = self.served_fingerprint()
        cert, key, _ = tls.ensure_self_signed(os.path.join(self.directory, "two"))
        self.write(cert, key, "http://127.0.0.1:11434")
        self.assertTrue(self.service.reload())
        after = self.served_fingerprint()
        self.assertNotEqual(before, after)
        self.assertEqual(after, tls.fingerprint(tls.load_chain(cert)[0]))

    def test_bad_certificate_kept(self) -> None:
        """
        A reload whose certificate does not load keeps the old certificate,
        and only that: the rest of the new file still applies.
        """
        before = self.service.gateway.config.upstream.url
        fingerprint = self.served_fingerprint()
        self.write("/nonexistent.pem", self.key, "http://127.0.0.1:11499")
        self.assertTrue(self.service.reload())
        self.assertEqual(self.served_fingerprint(), fingerprint)
        self.assertNotEqual(self.service.gateway.config.upstream.url, before)
        self.assertEqual(self.service.gateway.upstream.base_url, "http://127.0.0.1:11499")

    def test_upstreams(self) -> None:
        """
        New upstream settings apply to new calls; several URLs make a pool
        and the GPU queue admits the slots of every server.
        """
        from qwen_twist.upstream.pool import UpstreamPool

        old = self.service.gateway.upstream
        with open(self.path, "w") as f:
            f.write(
                "state_dir: %s\ntls: {certificate: %s, private_key: %s}\n"
                "auth: {keys_file: %s}\n"
                "upstream: {urls: ['http://127.0.0.1:11500', 'http://127.0.0.1:11501']}\n"
                % (self.directory, self.cert, self.key, self.keys))
        self.assertTrue(self.service.reload())
        new = self.service.gateway.upstream
        self.assertIsNot(new, old)
        self.assertIsInstance(new, UpstreamPool)
        self.assertEqual([m.url for m in new.members],
                         ["http://127.0.0.1:11500", "http://127.0.0.1:11501"])
        self.assertIs(self.service.upstream, new)
        self.assertEqual(self.service.gate.queue.free, 8)
