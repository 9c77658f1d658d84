"""
Tests for L{qwen_twist.errors}: the OpenAI envelope and the upstream error
mapping of reference section 8 (TV-26, TV-36 to TV-38).
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from qwen_twist import errors


def decoded(error: errors.ApiError) -> dict:
    """
    The client-visible body of C{error}, parsed.
    """
    return json.loads(error.body())


class ApiErrorTests(SynchronousTestCase):
    """
    The envelope every failure uses.
    """

    def test_envelope(self):
        """
        All four fields are always present, null when unset.
        """
        error = errors.ApiError(400, "bad")
        self.assertEqual(decoded(error), {"error": {
            "message": "bad", "type": "invalid_request_error", "param": None, "code": None}})
        self.assertEqual(error.envelope(), decoded(error))

    def test_body_is_compact_utf8(self):
        """
        The body is compact JSON in UTF-8.
        """
        body = errors.ApiError(400, "x").body()
        self.assertIsInstance(body, bytes)
        self.assertNotIn(b", ", body)
        self.assertNotIn(b": ", body)

    def test_repr_and_message(self):
        """
        C{str()} is the message; C{repr} shows status, param and code.
        """
        error = errors.invalid_request("bad n", "n")
        self.assertEqual(str(error), "bad n")
        self.assertIn("param='n'", repr(error))
        self.assertIn("400", repr(error))

    def test_helpers(self):
        """
        Each helper builds the status, type and code that section 8 lists.
        """
        rows = [
            (errors.invalid_request("m", "temperature"), 400, "invalid_request_error",
             "temperature", None),
            (errors.not_found("Unknown request URL: POST /v1/xyz"), 404,
             "invalid_request_error", None, None),
            (errors.upstream_unavailable("127.0.0.1:11434"), 502, "server_error", None,
             "upstream_unavailable"),
            (errors.upstream_timeout("upstream timeout"), 504, "server_error", None,
             "upstream_timeout"),
            (errors.upstream_protocol_error(), 502, "server_error", None,
             "upstream_invalid_response"),
            (errors.internal_error(), 500, "server_error", None, "internal_error"),
        ]
        for error, status, type_, param, code in rows:
            self.assertEqual((error.status, error.type, error.param, error.code),
                             (status, type_, param, code), error)

    def test_tv36_unreachable(self):
        """
        TV-36: the unreachable-upstream body never names the upstream's
        address; the log detail does.
        """
        error = errors.upstream_unavailable("127.0.0.1:11434")
        self.assertEqual(
            decoded(error)["error"],
            {"message": "cannot reach the model server", "type": "server_error",
             "param": None, "code": "upstream_unavailable"},
        )
        self.assertIn("127.0.0.1:11434", error.detail)
        self.assertNotIn(b"11434", error.body())

    def test_internal_error_reveals_nothing(self):
        """
        A gateway bug is reported without details.
        """
        self.assertEqual(errors.internal_error().message, "internal gateway error")

    def test_method_not_allowed(self):
        """
        405 lists the allowed methods, sorted, in C{Allow} and the text.
        """
        error = errors.method_not_allowed("GET", "/v1/chat/completions", ["POST", "OPTIONS"])
        self.assertEqual((error.status, error.type), (405, "invalid_request_error"))
        self.assertEqual(error.headers, (("Allow", "OPTIONS, POST"),))
        self.assertIn("GET", error.message)
        self.assertIn("/v1/chat/completions", error.message)


class FromUpstreamTests(SynchronousTestCase):
    """
    Section 8: native status and body to the client's error.
    """

    def test_status_table(self):
        """
        One row per line of the section 8 table: status class decides the
        status, type, code and extra headers.
        """
        body = b'{"error":"boom"}'
        rows = [
            (400, True, 400, "invalid_request_error", "upstream_rejected", ()),
            (404, True, 404, "invalid_request_error", "model_not_found", ()),
            (404, False, 404, "invalid_request_error", "upstream_rejected", ()),
            (403, True, 403, "invalid_request_error", "upstream_rejected", ()),
            (429, True, 429, "rate_limit_error", "upstream_busy", (("Retry-After", "1"),)),
            (503, True, 503, "server_error", "upstream_busy", (("Retry-After", "1"),)),
            (500, True, 500, "server_error", "upstream_error",
             (("x-should-retry", "false"),)),
            (502, True, 502, "server_error", "upstream_error", ()),
            (504, True, 500, "server_error", "upstream_error",
             (("x-should-retry", "false"),)),
        ]
        for status, model_endpoint, want_status, type_, code, headers in rows:
            error = errors.from_upstream(status, body, model_endpoint)
            self.assertEqual(
                (error.status, error.type, error.code, error.param, error.headers),
                (want_status, type_, code, None, headers),
                status,
            )
            self.assertNotIn("boom", error.message)
            self.assertIn("boom", error.detail)

    def test_internals_never_echoed(self):
        """
        A scripted 500 naming a blob path and an internal address reaches
        the client as a stable message; the text is kept for the log.
        """
        body = (b'{"error":"llama runner process has terminated: error loading model '
                b'/usr/share/ollama/.ollama/models/blobs/sha256-abc at 10.0.0.7:11434"}')
        error = errors.from_upstream(500, body, model="qwen3:8b")
        self.assertEqual(decoded(error)["error"]["message"],
                         "the model server failed to process the request")
        self.assertNotIn(b"blobs", error.body())
        self.assertNotIn(b"10.0.0.7", error.body())
        self.assertIn("10.0.0.7:11434", error.detail)

    def test_tv26_unknown_model(self):
        """
        TV-26: the exact 404 body for an unknown model.
        """
        error = errors.from_upstream(404, b'{"error":"model \'nope\' not found"}', model="nope")
        self.assertEqual(decoded(error), {"error": {
            "message": "model 'nope' not found", "type": "invalid_request_error",
            "param": None, "code": "model_not_found"}})

    def test_tv37_capability_error(self):
        """
        TV-37: a capability 400 is rebuilt from the client's model name and
        a known capability word (the same text as Ollama's).
        """
        error = errors.from_upstream(
            400, b'{"error":"\\"qwen2.5:7b\\" does not support thinking"}', model="qwen2.5:7b")
        self.assertEqual(decoded(error), {"error": {
            "message": "\"qwen2.5:7b\" does not support thinking",
            "type": "invalid_request_error", "param": None, "code": None}})

    def test_tv38_queue_full(self):
        """
        TV-38: 503 with C{Retry-After}.
        """
        error = errors.from_upstream(
            503, b'{"error":"server busy, please try again.  maximum pending requests exceeded"}')
        self.assertEqual((error.status, error.type), (503, "server_error"))
        self.assertIn(("Retry-After", "1"), error.headers)

    def test_non_json_bodies(self):
        """
        A non-JSON or non-Ollama body becomes trimmed text with collapsed
        whitespace (for the log); an empty one a generic message.
        """
        rows = [
            (b"  bad\n gateway  \n", "bad gateway"),
            (b'{"detail":"x"}', '{"detail":"x"}'),
            (b'{"error":{"message":"nested"}}', '{"error":{"message":"nested"}}'),
            (b"", "upstream error"),
            (b"   ", "upstream error"),
            (b"\xff\xfeoops", "\ufffd\ufffdoops"),
        ]
        for body, message in rows:
            self.assertEqual(errors.upstream_message(body), message, body)

    def test_long_messages_cut(self):
        """
        Upstream text is cut at L{errors.MAX_UPSTREAM_MESSAGE} characters.
        """
        message = errors.upstream_message(b"x" * 100_000)
        self.assertEqual(len(message), errors.MAX_UPSTREAM_MESSAGE + 3)
        self.assertTrue(message.endswith("..."))


class AnthropicEnvelopeTests(SynchronousTestCase):
    """
    L{errors.ApiError} in Anthropic's envelope (AV-12 of
    C{docs/anthropic-responses-protocol.md}).
    """

    def test_types_by_status(self):
        """
        Each status maps to the type the SDK's exception expects.
        """
        rows = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                422: "invalid_request_error", 429: "rate_limit_error", 500: "api_error",
                502: "api_error", 503: "overloaded_error", 504: "timeout_error"}
        for status, kind in rows.items():
            self.assertEqual(errors.ApiError(status, "m").anthropic_type(), kind)

    def test_body(self):
        """
        The Anthropic body has only type and error{type, message}.
        """
        self.assertEqual(
            errors.ApiError(401, "invalid api key").body("anthropic"),
            b'{"type":"error","error":{"type":"authentication_error",'
            b'"message":"invalid api key"}}')

    def test_stream_errors(self):
        """
        A stream's own failures: an explicit type wins, else the gateway's
        code decides (a deadline is timeout_error, the drain
        overloaded_error, anything else api_error); the Responses failure
        carries server_error.
        """
        self.assertEqual(errors.anthropic_stream_error("m", "rate_limit_error"),
                         {"type": "error", "error": {"type": "rate_limit_error", "message": "m"}})
        rows = [(errors.UPSTREAM_TIMEOUT, "timeout_error"),
                (errors.SHUTTING_DOWN, "overloaded_error"), (None, "api_error")]
        for code, kind in rows:
            self.assertEqual(errors.anthropic_stream_error("m", code=code)["error"]["type"], kind)
        self.assertEqual(errors.responses_stream_error("m"),
                         {"code": "server_error", "message": "m"})


class ConnectionRefusalTests(SynchronousTestCase):
    """
    The answers a refused connection or a stalled request gets.
    """

    def test_address_banned(self):
        """
        403 C{address_banned}: until when, Retry-After rounded up, and
        nothing about the credential.
        """
        error = errors.address_banned(599.2, "2026-12-06T23:40:00Z")
        self.assertEqual((error.status, error.code), (403, "address_banned"))
        self.assertIn(("Retry-After", "600"), error.headers)
        self.assertIn("banned until 2026-12-06T23:40:00Z", error.message)
        self.assertNotIn("key", error.message.replace("API key", ""))

    def test_too_many_connections(self):
        """
        429 C{too_many_connections} says which limit; Retry-After is at
        least 1.
        """
        error = errors.too_many_connections("too many open connections in all", 0.2)
        self.assertEqual((error.status, error.type, error.code),
                         (429, "rate_limit_error", "too_many_connections"))
        self.assertIn(("Retry-After", "1"), error.headers)
        self.assertTrue(error.message.startswith("too many open connections in all"))

    def test_body_too_slow(self):
        """
        408 C{request_timeout} naming the bytes that were due.
        """
        error = errors.body_too_slow(10.0, 1024)
        self.assertEqual((error.status, error.code), (408, "request_timeout"))
        self.assertIn("less than 10240 bytes arrived in 10 seconds", error.message)


class OllamaStyleTests(SynchronousTestCase):
    """
    The Ollama envelope of Ollama's native routes, and how their upstream
    errors are passed on.
    """

    def test_body(self) -> None:
        """
        C{body("ollama")} is Ollama's C{{"error": "<text>"}}, compact; the
        status and headers are the error's own.
        """
        error = errors.rate_limited("rate limit exceeded for this key", 2.5)
        self.assertEqual(error.body("ollama"), b'{"error":"rate limit exceeded for this key"}')
        self.assertEqual((error.status, dict(error.headers)["Retry-After"]), (429, "3"))

    def test_native_upstream_kept(self) -> None:
        """
        A native route keeps Ollama's 4xx status (499 included) with the
        stable message, never Ollama's text; 429 and 503 gain
        C{Retry-After}; a non-error status is a 502.
        """
        error = errors.from_upstream_native(499, b'{"error":"request canceled"}')
        self.assertEqual((error.status, error.body("ollama")),
                         (499, b'{"error":"the model server refused the request"}'))
        self.assertEqual(errors.from_upstream_native(404, b"", "m:1").message,
                         "model 'm:1' not found")
        self.assertEqual(dict(errors.from_upstream_native(503, b"busy").headers),
                         {"Retry-After": "1"})
        self.assertEqual(errors.from_upstream_native(302, b"").status, 502)

    def test_refusals(self) -> None:
        """
        Locked management and refused routes are 403s naming what to do.
        """
        locked = errors.scope_required("/api/pull", "models:manage")
        self.assertEqual(locked.status, 403)
        self.assertIn("'models:manage' scope", locked.message)
        refused = errors.route_refused("POST", "/api/me")
        self.assertEqual((refused.status, refused.code), (403, errors.ROUTE_REFUSED))
        self.assertEqual(errors.route_unknown("GET", "/api/x").status, 404)
