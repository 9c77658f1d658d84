"""
Tests for L{qwen_twist.web.respond}: every response the gateway writes
(JSON, errors, event streams, 404/405, the 500 of a crash) carries the
security headers, and configured fields are stripped from JSON answers
but never from error envelopes.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase
from twisted.web import resource

from tests.web.helpers import GatewayHarness

CHAT = {"model": "qwen3:8b", "messages": [{"role": "user", "content": "Hi"}]}
NATIVE_OK = {
    "model": "qwen3:8b",
    "created_at": "2025-07-07T20:22:19.184789Z",
    "message": {"role": "assistant", "content": "Hello!", "thinking": "Let me think."},
    "done": True,
    "done_reason": "stop",
    "prompt_eval_count": 26,
    "eval_count": 3,
}
HSTS = "max-age=31536000; includeSubDomains"


class Boom(resource.Resource):
    """
    A resource with a bug.
    """

    isLeaf = True

    def render(self, request):
        raise RuntimeError("secret internals")


class SecurityHeaderTests(SynchronousTestCase):
    """
    The security headers are on every kind of response.
    """

    def setUp(self) -> None:
        self.harness = GatewayHarness()

    def assertSecure(self, response, cache: str = "no-store") -> None:
        headers = response.headers
        self.assertEqual(headers["strict-transport-security"], HSTS)
        self.assertEqual(headers["x-content-type-options"], "nosniff")
        self.assertEqual(headers["referrer-policy"], "no-referrer")
        self.assertEqual(headers["cache-control"], cache)
        self.assertEqual(headers["server"], "qwengate")

    def test_json_success(self) -> None:
        """
        A completed chat call carries the headers, with C{no-store}.
        """
        _, transport = self.harness.request("POST", "/v1/chat/completions", CHAT)
        self.harness.upstream.calls[-1].respond(200, NATIVE_OK)
        response = self.harness.response(transport)
        self.assertEqual(response.status, 200)
        self.assertSecure(response)

    def test_errors(self) -> None:
        """
        A 400 (bad JSON), a 404 (unknown URL), a 405 (wrong method) and an
        upstream 502 all carry the headers.
        """
        cases = [
            (("POST", "/v1/chat/completions", b"{nope"), 400),
            (("GET", "/nowhere"), 404),
            (("GET", "/v1/chat/completions"), 405),
        ]
        for args, status in cases:
            _, transport = self.harness.request(*args)
            response = self.harness.response(transport)
            self.assertEqual(response.status, status)
            self.assertSecure(response)
        _, transport = self.harness.request("POST", "/v1/chat/completions", CHAT)
        self.harness.upstream.calls[-1].respond(200, b"<html>")
        response = self.harness.response(transport)
        self.assertEqual(response.status, 502)
        self.assertSecure(response)

    def test_crash(self) -> None:
        """
        The 500 written when a resource raises carries the headers and no
        traceback.
        """
        self.harness.site.resource.putChild(b"boom", Boom())
        _, transport = self.harness.request("GET", "/boom")
        response = self.harness.response(transport)
        self.assertEqual(response.status, 500)
        self.assertSecure(response)
        self.assertNotIn(b"secret", transport.value())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_stream(self) -> None:
        """
        An event stream carries the headers too, with C{no-cache} (what SSE
        needs) in place of C{no-store}.
        """
        body = dict(CHAT, stream=True)
        _, transport = self.harness.request("POST", "/v1/chat/completions", body)
        upstream = self.harness.upstream.calls[-1].respond_streaming(200)
        upstream.send(json.dumps(NATIVE_OK).encode("utf-8") + b"\n")
        upstream.finish()
        response = self.harness.response(transport)
        self.assertEqual(response.status, 200)
        self.assertTrue(response.complete)
        self.assertEqual(response.headers["content-type"], "text/event-stream; charset=utf-8")
        self.assertSecure(response, cache="no-cache")

    def test_no_server_version(self) -> None:
        """
        Nothing names Twisted or its version.
        """
        _, transport = self.harness.request("GET", "/health")
        self.assertNotIn(b"twisted", transport.value().lower())

    def test_hsts_configurable(self) -> None:
        """
        C{response.hsts_max_age} sets the max-age; 0 leaves the header out.
        """
        harness = GatewayHarness({"response": {"hsts_max_age": 300}})
        _, transport = harness.request("GET", "/health")
        self.assertEqual(
            harness.response(transport).headers["strict-transport-security"],
            "max-age=300; includeSubDomains",
        )
        harness = GatewayHarness({"response": {"hsts_max_age": 0}})
        _, transport = harness.request("GET", "/v1/nowhere")
        response = harness.response(transport)
        self.assertNotIn("strict-transport-security", response.headers)
        self.assertEqual(response.headers["x-content-type-options"], "nosniff")


class StripFieldsTests(SynchronousTestCase):
    """
    C{response.strip_fields} removes fields from JSON answers only.
    """

    def test_stripped(self) -> None:
        """
        The configured fields are gone from a chat completion; the rest is
        intact.
        """
        harness = GatewayHarness({"response": {"strip_fields": [
            "choices.message.reasoning_content", "usage.total_tokens", "created",
        ]}})
        _, transport = harness.request("POST", "/v1/chat/completions", CHAT)
        harness.upstream.calls[-1].respond(200, NATIVE_OK)
        body = harness.response(transport).json()
        self.assertEqual(body["choices"][0]["message"],
                         {"role": "assistant", "content": "Hello!"})
        self.assertEqual(body["usage"], {"prompt_tokens": 26, "completion_tokens": 3})
        self.assertNotIn("created", body)
        self.assertEqual(body["object"], "chat.completion")

    def test_default_keeps_everything(self) -> None:
        """
        Without configuration nothing is removed.
        """
        harness = GatewayHarness()
        _, transport = harness.request("POST", "/v1/chat/completions", CHAT)
        harness.upstream.calls[-1].respond(200, NATIVE_OK)
        body = harness.response(transport).json()
        self.assertEqual(body["choices"][0]["message"]["reasoning_content"], "Let me think.")
        self.assertIn("created", body)

    def test_errors_untouched(self) -> None:
        """
        Error envelopes keep every field, whatever is configured: clients
        need C{message}, C{type} and C{code}.
        """
        harness = GatewayHarness({"response": {"strip_fields": ["error", "error.message"]}})
        _, transport = harness.request("POST", "/v1/chat/completions", b"{nope")
        error = harness.response(transport).json()["error"]
        self.assertEqual(set(error), {"message", "type", "param", "code"})
