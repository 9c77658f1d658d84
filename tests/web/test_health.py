"""
Tests for L{qwen_twist.web.health}: liveness, and readiness that is cheap
and tells strangers nothing.
"""

from __future__ import annotations

import os
import time

from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.gate.keyfile import add_key

from tests.web.helpers import GatewayHarness


class ReadyTests(SynchronousTestCase):
    """
    C{GET /ready}: details for admins only (the pool caches the checks).
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        keys_file = os.path.join(directory, "keys.yaml")
        self.admin = add_key(keys_file, "ops", scopes=("admin",), now=time.time())
        self.user = add_key(keys_file, "user", now=time.time())
        self.harness = GatewayHarness({
            "auth": {"required": True, "keys_file": keys_file},
        })

    def ready(self, key: str = None) -> object:
        headers = {"Authorization": "Bearer " + key} if key else {}
        _, transport = self.harness.request("GET", "/ready", headers=headers)
        return self.harness.response(transport)

    def test_anonymous_sees_status_only(self) -> None:
        """
        Without a key the answer is the status and nothing else: no URL,
        no version, no counts.
        """
        response = self.ready()
        self.assertEqual((response.status, response.json()), (200, {"status": "ready"}))
        self.assertNotIn(b"11434", response.body)

    def test_not_ready(self) -> None:
        """
        No healthy upstream is a bare 503 unavailable.
        """
        upstream = self.harness.upstream
        self.patch(upstream, "state", lambda: [{"url": upstream.base_url, "healthy": False,
                                                 "breaker": "open"}])
        response = self.ready()
        self.assertEqual((response.status, response.json()), (503, {"status": "unavailable"}))

    def test_admin_sees_details(self) -> None:
        """
        A key with the admin scope sees each upstream; a plain key does not.
        """
        body = self.ready(self.admin).json()
        self.assertEqual(body["upstreams"][0]["url"], "http://127.0.0.1:11434")
        self.assertEqual(body["upstreams"][0]["breaker"], "closed")
        self.assertEqual(self.ready(self.user).json(), {"status": "ready"})

    def test_bad_key_is_anonymous(self) -> None:
        """
        A wrong key on /ready is not a 401 (probes carry none): it is
        simply not an admin, and it does not count toward a ban.
        """
        for _ in range(5):
            response = self.ready("sk-wrong")
            self.assertEqual((response.status, response.json()), (200, {"status": "ready"}))
        self.assertEqual(self.harness.gate.bans.banned(self.harness.clock.seconds()), [])
