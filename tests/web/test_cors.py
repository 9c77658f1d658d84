"""
Tests for L{qwen_twist.web.cors} and its place in the resource tree: CORS
headers for configured origins only, preflights answered without
authentication and without reaching the API.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from qwen_twist import errors
from qwen_twist.web import cors

from tests.web.helpers import GatewayHarness

ORIGIN = "https://chat.example.com"
CHAT = {"model": "qwen3:8b", "messages": [{"role": "user", "content": "Hi"}]}
NATIVE_OK = {
    "model": "qwen3:8b", "created_at": "2025-07-07T20:22:19Z",
    "message": {"role": "assistant", "content": "Hello!"}, "done": True,
    "done_reason": "stop", "prompt_eval_count": 2, "eval_count": 1,
}
CORS_HEADERS = {
    "access-control-allow-origin", "access-control-allow-methods",
    "access-control-allow-headers", "access-control-max-age",
    "access-control-expose-headers", "vary",
}


class RefuseAll:
    """
    An admission hook standing in for the gate: refuses every call, and
    records that it was asked.
    """

    def __init__(self) -> None:
        self.asked = 0

    def admit(self, request, ctx, plan):
        self.asked += 1
        raise errors.ApiError(401, "invalid api key", "invalid_request_error",
                              code="invalid_api_key")


class PolicyTests(SynchronousTestCase):
    """
    L{cors.CorsPolicy} on its own.
    """

    def test_normalized_origins(self) -> None:
        """
        Configured origins match what browsers send: lower case, no default
        port; a non-default port and IPv6 hosts are kept.
        """
        policy = cors.CorsPolicy(["HTTPS://Chat.Example.com:443", "http://[::1]:8080",
                                  "http://localhost:80"])
        self.assertEqual(policy.origins, {b"https://chat.example.com", b"http://[::1]:8080",
                                          b"http://localhost"})
        self.assertEqual(policy.allowed(b"https://chat.example.com"), b"https://chat.example.com")
        self.assertEqual(policy.allowed(b"http://[::1]:8080"), b"http://[::1]:8080")
        self.assertIsNone(policy.allowed(b"http://[::1]"))
        self.assertIsNone(policy.allowed(b"https://chat.example.com.evil.net"))
        self.assertIsNone(policy.allowed(b"null"))
        self.assertIsNone(policy.allowed(None))

    def test_no_origins(self) -> None:
        """
        With nothing configured no origin is allowed.
        """
        self.assertIsNone(cors.CorsPolicy().allowed(ORIGIN.encode()))
        self.assertEqual(cors.CorsPolicy().response_headers(ORIGIN.encode()), ())

    def test_allow_headers_echo(self) -> None:
        """
        A preflight asking only for allowed headers (the OpenAI JS SDK's
        set) gets them echoed back.
        """
        requested = (b"Authorization, content-type, X-Stainless-OS, "
                     b"x-stainless-retry-count, openai-organization")
        self.assertEqual(
            cors.allow_headers(requested),
            b"authorization, content-type, x-stainless-os, x-stainless-retry-count, "
            b"openai-organization",
        )

    def test_allow_headers_anthropic(self) -> None:
        """
        The Anthropic JS SDK's preflight (x-api-key, anthropic-version,
        anthropic-beta, the direct-browser-access opt-in) is allowed.
        """
        requested = (b"x-api-key, anthropic-version, anthropic-beta, "
                     b"anthropic-dangerous-direct-browser-access, content-type")
        self.assertEqual(cors.allow_headers(requested), requested)

    def test_allow_headers_refused(self) -> None:
        """
        A preflight asking for a header outside the set gets the default
        list plus the allowed ones it asked for, never the unknown one.
        """
        value = cors.allow_headers(b"x-stainless-arch, cookie, x-evil\r\nSet-Cookie: a")
        self.assertEqual(
            value, b"authorization, content-type, x-api-key, openai-beta, x-stainless-arch"
        )
        self.assertEqual(cors.allow_headers(None), cors.DEFAULT_ALLOW_HEADERS)
        self.assertEqual(cors.allow_headers(b" , "), cors.DEFAULT_ALLOW_HEADERS)
        self.assertNotIn(b"x-stainless-", cors.allow_headers(b"x-stainless-"))


class ResponseHeaderTests(SynchronousTestCase):
    """
    Actual responses carry CORS headers for an allowed origin only.
    """

    def setUp(self) -> None:
        self.harness = GatewayHarness({"response": {"cors_origins": [ORIGIN]}})

    def test_allowed_origin(self) -> None:
        """
        A call from an allowed origin names that origin, varies on
        C{Origin} and exposes the request id and rate-limit headers.
        """
        _, transport = self.harness.request(
            "POST", "/v1/chat/completions", CHAT, headers={"Origin": ORIGIN})
        self.harness.upstream.calls[-1].respond(200, NATIVE_OK)
        headers = self.harness.response(transport).headers
        self.assertEqual(headers["access-control-allow-origin"], ORIGIN)
        self.assertEqual(headers["vary"], "Origin")
        exposed = headers["access-control-expose-headers"].split(", ")
        for name in ("x-request-id", "retry-after", "x-ratelimit-remaining-requests",
                     "x-ratelimit-reset-tokens"):
            self.assertIn(name, exposed)

    def test_errors_too(self) -> None:
        """
        Error responses carry them as well, so a page can read the error.
        """
        _, transport = self.harness.request("GET", "/v1/nowhere", headers={"Origin": ORIGIN})
        response = self.harness.response(transport)
        self.assertEqual(response.status, 404)
        self.assertEqual(response.headers["access-control-allow-origin"], ORIGIN)

    def test_other_origin(self) -> None:
        """
        A call from another origin, or from no browser, gets no CORS
        headers at all.
        """
        for headers in ({"Origin": "https://evil.example.com"}, {}):
            _, transport = self.harness.request("GET", "/health", headers=headers)
            response = self.harness.response(transport)
            self.assertEqual(response.status, 200)
            self.assertFalse(CORS_HEADERS & set(response.headers), headers)

    def test_not_configured(self) -> None:
        """
        By default no origin gets CORS headers.
        """
        harness = GatewayHarness()
        _, transport = harness.request("GET", "/health", headers={"Origin": ORIGIN})
        self.assertFalse(CORS_HEADERS & set(harness.response(transport).headers))


class PreflightTests(SynchronousTestCase):
    """
    C{OPTIONS} preflights below C{/v1} are answered before authentication
    and never reach the API.
    """

    def setUp(self) -> None:
        self.harness = GatewayHarness({"response": {"cors_origins": [ORIGIN]}})
        self.gate = RefuseAll()
        self.harness.gateway.hooks = [self.gate]

    def preflight(self, path: str, origin: str = ORIGIN, **extra: str):
        headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
        headers.update(extra)
        _, transport = self.harness.request("OPTIONS", path, headers=headers)
        return self.harness.response(transport)

    def test_allowed(self) -> None:
        """
        A preflight from an allowed origin is a 204 with the methods, the
        requested headers, a max-age and the origin, on every C{/v1} URL,
        without the gate being asked and without any upstream call.
        """
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                     "/v1/models", "/v1/models/qwen3:8b", "/v1", "/v1/", "/v1/nope/deeper"):
            response = self.preflight(
                path, **{"Access-Control-Request-Headers": "authorization,content-type"})
            self.assertEqual(response.status, 204, path)
            headers = response.headers
            self.assertEqual(headers["access-control-allow-origin"], ORIGIN)
            self.assertEqual(headers["access-control-allow-methods"], "GET, POST, OPTIONS")
            self.assertEqual(headers["access-control-allow-headers"],
                             "authorization, content-type")
            self.assertEqual(headers["access-control-max-age"], "600")
            self.assertEqual(headers["vary"], "Origin")
            self.assertNotIn("content-length", headers)
            self.assertEqual(response.body, b"")
            self.assertEqual(headers["x-content-type-options"], "nosniff")
        self.assertEqual(self.gate.asked, 0)
        self.assertEqual(self.harness.upstream.calls, [])
        self.assertEqual(self.harness.finished, [])

    def test_authenticated_call_still_gated(self) -> None:
        """
        The real call that follows a preflight does meet the gate.
        """
        _, transport = self.harness.request(
            "POST", "/v1/chat/completions", CHAT, headers={"Origin": ORIGIN})
        response = self.harness.response(transport)
        self.assertEqual(response.status, 401)
        self.assertEqual(response.headers["access-control-allow-origin"], ORIGIN)
        self.assertEqual(self.gate.asked, 1)

    def test_other_origin(self) -> None:
        """
        A preflight from an origin that is not configured is a 403 in the
        OpenAI envelope, with no CORS headers, still without the gate.
        """
        response = self.preflight("/v1/chat/completions", origin="https://evil.example.com")
        self.assertEqual(response.status, 403)
        self.assertFalse(CORS_HEADERS & set(response.headers))
        error = response.json()["error"]
        self.assertEqual(error["code"], "origin_not_allowed")
        self.assertEqual(set(error), {"message", "type", "param", "code"})
        self.assertEqual(self.gate.asked, 0)
        self.assertEqual(self.harness.upstream.calls, [])

    def test_not_configured(self) -> None:
        """
        Without configured origins every preflight is refused.
        """
        self.harness = GatewayHarness()
        self.assertEqual(self.preflight("/v1/chat/completions").status, 403)

    def test_options_without_origin(self) -> None:
        """
        An C{OPTIONS} without C{Origin} is not a preflight: the endpoint
        answers it as a method it does not serve.
        """
        _, transport = self.harness.request("OPTIONS", "/v1/chat/completions")
        response = self.harness.response(transport)
        self.assertEqual(response.status, 405)
        self.assertEqual(self.gate.asked, 0)

    def test_outside_v1(self) -> None:
        """
        Only the API is open to browsers: a preflight for C{/health} is not
        answered as one.
        """
        response = self.preflight("/health")
        self.assertEqual(response.status, 405)
        self.assertNotIn("access-control-allow-methods", response.headers)
