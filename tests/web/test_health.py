"""
Tests for L{qwen_twist.web.health}: liveness, and readiness that is cheap
and tells strangers nothing.
"""

from __future__ import annotations

import os
import time

from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.gate.keys import add_key

from tests.web.helpers import GatewayHarness


class ReadyTests(SynchronousTestCase):
    """
    C{GET /ready}: cached, coalesced, details for admins only.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        keys_file = os.path.join(directory, "keys.yaml")
        self.admin = add_key(keys_file, "ops", scopes=("admin",), now=time.time())
        self.user = add_key(keys_file, "user", now=time.time())
        self.harness = GatewayHarness({
            "auth": {"required": True, "keys_file": keys_file},
            "upstream": {"ready_cache": 2.0},
        })

    def ready(self, key: str = None) -> object:
        headers = {"Authorization": "Bearer " + key} if key else {}
        _, transport = self.harness.request("GET", "/ready", headers=headers)
        return transport

    def answer(self) -> None:
        self.harness.upstream.calls[-1].respond(200, {"version": "0.33.0"})

    def test_anonymous_sees_status_only(self) -> None:
        """
        Without a key the answer is the status and nothing else: no URL,
        no version.
        """
        transport = self.ready()
        self.answer()
        response = self.harness.response(transport)
        self.assertEqual((response.status, response.json()), (200, {"status": "ready"}))
        self.assertNotIn(b"11434", transport.value())

    def test_not_ready(self) -> None:
        """
        An upstream that fails is a bare 503 unavailable.
        """
        transport = self.ready()
        self.harness.upstream.calls[-1].respond(500, {"error": "boom at 10.0.0.1:11434"})
        response = self.harness.response(transport)
        self.assertEqual((response.status, response.json()), (503, {"status": "unavailable"}))

    def test_admin_sees_details(self) -> None:
        """
        A key with the admin scope sees each upstream; a plain key does not.
        """
        transport = self.ready(self.admin)
        self.answer()
        body = self.harness.response(transport).json()
        self.assertEqual(body["upstreams"][0]["version"], "0.33.0")
        self.assertEqual(body["upstreams"][0]["url"], "http://127.0.0.1:11434")
        transport = self.ready(self.user)
        self.assertEqual(self.harness.response(transport).json(), {"status": "ready"})

    def test_checks_coalesced_and_cached(self) -> None:
        """
        Fifty requests while a check runs make one upstream call; within
        the cache time none more; after it, one more.
        """
        transports = [self.ready() for _ in range(50)]
        self.assertEqual(len(self.harness.upstream.calls), 1)
        self.answer()
        statuses = [self.harness.response(t).status for t in transports]
        self.assertEqual(statuses, [200] * 50)
        self.harness.clock.advance(1.9)
        self.assertEqual(self.harness.response(self.ready()).status, 200)
        self.assertEqual(len(self.harness.upstream.calls), 1)
        self.harness.clock.advance(0.2)
        self.ready()
        self.assertEqual(len(self.harness.upstream.calls), 2)

    def test_bad_key_is_anonymous(self) -> None:
        """
        A wrong key on /ready is not a 401 (probes carry none): it is
        simply not an admin.
        """
        transport = self.ready("sk-wrong")
        self.answer()
        response = self.harness.response(transport)
        self.assertEqual((response.status, response.json()), (200, {"status": "ready"}))
