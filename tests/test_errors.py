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
