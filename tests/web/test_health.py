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


class FakeStore:
    """
    A shared limits store in a given state.
    """

    def __init__(self, state: str, on_failure: str) -> None:
        self.state = state
        self.on_failure = on_failure

    def status(self) -> dict:
        return {"kind": "redis", "state": self.state, "shared": self.state == "up",
                "on_failure": self.on_failure}


class ReadyStoreTests(SynchronousTestCase):
    """
    C{GET /ready} and the limits store.
    """

    def ready(self, store) -> tuple:
        harness = GatewayHarness()
        harness.gateway.store = store if store is not None else harness.gate.store
        _, transport = harness.request("GET", "/ready")
        response = harness.response(transport)
        return response.status, response.json()

    def test_memory(self) -> None:
        """
        The in-process store is always there and says so.
        """
        status, body = self.ready(None)
        self.assertEqual(status, 200)
        self.assertEqual(body["limits_store"], {"kind": "memory", "state": "memory",
                                                "shared": False})

    def test_shared_down_fail_open(self) -> None:
        """
        Redis down, fail-open: still ready (serving on local limits), and
        the state shows it.
        """
        status, body = self.ready(FakeStore("down", "open"))
        self.assertEqual(status, 200)
        self.assertEqual(body["limits_store"]["state"], "down")

    def test_shared_down_fail_closed(self) -> None:
        """
        Redis down (or not yet connected), fail-closed: every limited call
        would be refused, so the gateway is not ready.
        """
        for state in ("down", "connecting"):
            status, body = self.ready(FakeStore(state, "closed"))
            self.assertEqual((status, body["status"]), (503, "unavailable"))
        self.assertEqual(self.ready(FakeStore("up", "closed"))[0], 200)
