"""
Tests for L{qwen_twist.web.screen} and the channel side of it: no work
before identity. Address, per-IP rate and identity are decided from the
request head; a refused body is never read or buffered, and no
C{100 Continue} is sent before the gate said yes.
"""

from __future__ import annotations

import os
import time

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from qwen_twist.gate.keyfile import add_key
from qwen_twist.web.screen import screen_kind

from tests.web.helpers import GatewayHarness, parse_response

MiB = 1024 * 1024
NATIVE_OK = {
    "model": "qwen3:8b", "created_at": "2025-07-07T20:22:19Z",
    "message": {"role": "assistant", "content": "Hello!"}, "done": True,
    "done_reason": "stop", "prompt_eval_count": 10, "eval_count": 5,
}


class ScreenKindTests(SynchronousTestCase):
    """
    Which requests are screened, from method, path and headers.
    """

    def test_kinds(self) -> None:
        """
        Health, C{OPTIONS *} and preflights are not screened; C{/ready}
        takes an optional identity; everything else needs one.
        """
        plain = Headers()
        origin = Headers({b"origin": [b"https://a.example"]})
        rows = [
            (b"GET", b"/health", plain, None),
            (b"GET", b"/health?x=1", plain, None),
            (b"OPTIONS", b"*", plain, None),
            (b"OPTIONS", b"/v1/chat/completions", origin, None),
            (b"GET", b"/ready", plain, "ready"),
            (b"POST", b"/v1/chat/completions", plain, "api"),
            (b"OPTIONS", b"/v1/chat/completions", plain, "api"),
            (b"GET", b"/nope", plain, "api"),
        ]
        for method, path, headers, kind in rows:
            self.assertEqual(screen_kind(method, path, headers), kind, (method, path))


class HeadScreenTests(SynchronousTestCase):
    """
    The gate runs on the head, before the body.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.keys_file = os.path.join(directory, "keys.yaml")
        self.key = add_key(self.keys_file, "alice", now=time.time())
        self.harness = GatewayHarness({
            "auth": {"required": True, "keys_file": self.keys_file},
            "rate_limits": {"per_ip_rate": 1, "per_ip_burst": 2},
        })

    def send_head(self, headers: dict, length: int) -> tuple:
        channel, transport = self.harness.connect()
        lines = ["POST /v1/chat/completions HTTP/1.1", "Host: gateway",
                 "Content-Length: %d" % (length,)]
        lines += ["%s: %s" % item for item in headers.items()]
        channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        return channel, transport

    def test_large_body_without_key_not_read(self) -> None:
        """
        An 8 MiB body without a key gets 401 as soon as the head is in; the
        connection closes and the body is neither buffered nor parsed.
        """
        channel, transport = self.send_head({}, 8 * MiB)
        response = parse_response(transport.value())
        self.assertEqual(response.status, 401)
        self.assertEqual(response.json()["error"]["code"], "invalid_api_key")
        self.assertEqual(response.headers["connection"], "close")
        self.assertIn("www-authenticate", response.headers)
        self.assertTrue(transport.disconnecting)
        request = channel.requests[0] if channel.requests else None
        before = len(transport.value())
        channel.dataReceived(b"x" * MiB)
        self.assertEqual(len(transport.value()), before)
        if request is not None:
            self.assertEqual(request.content.read(), b"")
        self.assertEqual(self.harness.upstream.calls, [])
        self.assertEqual([c.status for c in self.harness.finished], [401])

    def test_expect_continue_without_key(self) -> None:
        """
        C{Expect: 100-continue} without a key gets the 401, never a
        C{100 Continue}.
        """
        _, transport = self.send_head({"Expect": "100-continue"}, 1000)
        self.assertNotIn(b"100 Continue", transport.value())
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 401 "))

    def test_expect_continue_with_key(self) -> None:
        """
        With a valid key the client is told to continue, and the call is
        served.
        """
        body = b'{"model":"qwen3:8b","messages":[{"role":"user","content":"Hi"}]}'
        channel, transport = self.send_head(
            {"Expect": "100-continue", "Authorization": "Bearer " + self.key}, len(body))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 100 Continue"))
        transport.clear()
        channel.dataReceived(body)
        self.harness.upstream.calls[-1].respond(200, NATIVE_OK)
        self.assertEqual(parse_response(transport.value()).status, 200)

    def test_unauthenticated_requests_charge_per_ip(self) -> None:
        """
        Requests without a key pay their per-IP token before the identity
        check: after the burst is spent on 401s, even a valid key from the
        same address gets 429 with Retry-After, and nothing was read.
        """
        for _ in range(2):
            _, transport = self.send_head({}, 100)
            self.assertEqual(parse_response(transport.value()).status, 401)
        _, transport = self.send_head({"Authorization": "Bearer " + self.key}, 100)
        response = parse_response(transport.value())
        self.assertEqual(response.status, 429)
        self.assertEqual(response.headers["retry-after"], "1")
        self.assertTrue(transport.disconnecting)

    def test_bad_bodies_charge_per_ip(self) -> None:
        """
        Malformed bodies with a valid key count toward the per-IP limit.
        """
        headers = {"Authorization": "Bearer " + self.key}
        for _ in range(2):
            _, transport = self.harness.request(
                "POST", "/v1/chat/completions", "{broken", headers)
            self.assertEqual(parse_response(transport.value()).status, 400)
        _, transport = self.harness.request("POST", "/v1/chat/completions", "{broken", headers)
        self.assertEqual(parse_response(transport.value()).status, 429)

    def test_health_needs_nothing(self) -> None:
        """
        C{/health} is not screened: no key, no rate charge.
        """
        for _ in range(5):
            _, transport = self.harness.request("GET", "/health")
            self.assertEqual(parse_response(transport.value()).status, 200)

    def test_screened_once(self) -> None:
        """
        A request that passed the screen is not charged again by the
        admission hooks: the burst of 2 serves 2 calls.
        """
        headers = {"Authorization": "Bearer " + self.key}
        body = {"model": "qwen3:8b", "messages": [{"role": "user", "content": "Hi"}]}
        for _ in range(2):
            _, transport = self.harness.request("POST", "/v1/chat/completions", body, headers)
            self.harness.upstream.calls[-1].respond(200, NATIVE_OK)
            response = parse_response(transport.value())
            self.assertEqual(response.status, 200)
        self.assertEqual(self.harness.finished[-1].identity, "key:alice")
