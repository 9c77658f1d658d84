"""
Tests for L{qwen_twist.web.health}: C{/ready} reports the limits store
next to the upstreams, and a shared store that is down makes the gateway
unready only under the fail-closed policy.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.web.helpers import GatewayHarness


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


class ReadyTests(SynchronousTestCase):
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
