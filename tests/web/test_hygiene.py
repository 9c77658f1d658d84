"""
Tests for L{qwen_twist.web.hygiene}: the security header set and the
removal of configured response fields, as plain data.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.web import hygiene

COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "system_fingerprint": "fp_ollama",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "A", "reasoning_content": "r1"}},
        {"index": 1, "message": {"role": "assistant", "content": "B", "reasoning_content": "r2"}},
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "prompt_tokens_details": {"x": 1}},
}


def fresh() -> dict:
    return json.loads(json.dumps(COMPLETION))


class SecurityHeadersTests(SynchronousTestCase):
    """
    The headers every response carries.
    """

    def test_default_set(self) -> None:
        """
        HSTS with subdomains, C{nosniff}, no referrer and C{no-store}.
        """
        headers = dict(hygiene.security_headers(31536000))
        self.assertEqual(headers, {
            b"Strict-Transport-Security": b"max-age=31536000; includeSubDomains",
            b"X-Content-Type-Options": b"nosniff",
            b"Referrer-Policy": b"no-referrer",
            b"Cache-Control": b"no-store",
        })

    def test_hsts_off(self) -> None:
        """
        A max-age of 0 leaves C{Strict-Transport-Security} out and keeps the rest.
        """
        headers = dict(hygiene.security_headers(0))
        self.assertNotIn(b"Strict-Transport-Security", headers)
        self.assertEqual(headers[b"X-Content-Type-Options"], b"nosniff")


class StripTests(SynchronousTestCase):
    """
    Dotted paths name the fields removed from a response object.
    """

    def test_top_level(self) -> None:
        """
        A plain name removes that top-level field and nothing else.
        """
        obj = hygiene.strip(fresh(), hygiene.compile_strip(["system_fingerprint"]))
        expected = fresh()
        del expected["system_fingerprint"]
        self.assertEqual(obj, expected)

    def test_nested(self) -> None:
        """
        C{usage.prompt_tokens_details} removes the key inside C{usage}.
        """
        obj = hygiene.strip(fresh(), hygiene.compile_strip(["usage.prompt_tokens_details"]))
        self.assertEqual(obj["usage"], {"prompt_tokens": 1, "completion_tokens": 2})

    def test_lists_walked(self) -> None:
        """
        A list on the path is walked element by element: every choice loses
        its reasoning text.
        """
        obj = hygiene.strip(
            fresh(), hygiene.compile_strip(["choices.message.reasoning_content"])
        )
        self.assertEqual(
            [c["message"] for c in obj["choices"]],
            [{"role": "assistant", "content": "A"}, {"role": "assistant", "content": "B"}],
        )

    def test_one_name_both_shapes(self) -> None:
        """
        C{choices.message.X} also strips C{choices.delta.X} from stream
        chunks, and C{choices.delta.X} strips the non-streaming field.
        """
        for name in ("choices.message.reasoning_content", "choices.delta.reasoning_content"):
            tree = hygiene.compile_strip([name])
            chunk = {"choices": [{"delta": {"reasoning_content": "r", "content": "c"}}]}
            data = b"data: " + json.dumps(chunk).encode("ascii") + b"\n\n"
            self.assertEqual(
                json.loads(hygiene.strip_sse(data, tree).split(b"\n")[0][6:]),
                {"choices": [{"delta": {"content": "c"}}]},
            )
            self.assertEqual(
                [c["message"] for c in hygiene.strip(fresh(), tree)["choices"]],
                [{"role": "assistant", "content": "A"}, {"role": "assistant", "content": "B"}],
            )

    def test_prefix_wins(self) -> None:
        """
        When one path is a prefix of another, the whole subtree goes, in
        either order.
        """
        for fields in (["usage", "usage.prompt_tokens"], ["usage.prompt_tokens", "usage"]):
            tree = hygiene.compile_strip(fields)
            self.assertEqual(tree, {"usage": None})
            self.assertNotIn("usage", hygiene.strip(fresh(), tree))

    def test_missing_and_mistyped(self) -> None:
        """
        Paths that do not exist, or meet a string or number on the way,
        change nothing and raise nothing.
        """
        tree = hygiene.compile_strip(["nope.deeper", "id.x", "usage.prompt_tokens.x", "..", ""])
        self.assertEqual(hygiene.strip(fresh(), tree), fresh())
        self.assertEqual(hygiene.strip("text", tree), "text")
        self.assertEqual(hygiene.strip([1, [2, {"id": 3}]], tree), [1, [2, {"id": 3}]])

    def test_empty(self) -> None:
        """
        No configured fields is no work: the object comes back as it was.
        """
        obj = fresh()
        self.assertIs(hygiene.strip(obj, hygiene.compile_strip([])), obj)
        self.assertEqual(obj, fresh())


class StripSseTests(SynchronousTestCase):
    """
    The opt-in filter for event streams.
    """

    def test_events_filtered(self) -> None:
        """
        Every C{data:} event loses the fields; comments and C{[DONE]} pass
        unchanged; the result stays ASCII.
        """
        tree = hygiene.compile_strip(["choices.delta.reasoning_content", "system_fingerprint"])
        chunk = {"id": "c", "system_fingerprint": "fp",
                 "choices": [{"delta": {"reasoning_content": "r", "content": "\u2028é"}}]}
        data = (b": keep-alive\n\n"
                + b"data: " + json.dumps(chunk).encode("ascii") + b"\n\n"
                + b"data: [DONE]\n\n")
        out = hygiene.strip_sse(data, tree)
        blocks = out.split(b"\n\n")
        self.assertEqual(blocks[0], b": keep-alive")
        self.assertEqual(json.loads(blocks[1][6:]),
                         {"id": "c", "choices": [{"delta": {"content": "\u2028é"}}]})
        self.assertEqual(blocks[2], b"data: [DONE]")
        out.decode("ascii")

    def test_nothing_configured(self) -> None:
        """
        With no fields configured the bytes are returned untouched.
        """
        data = b'data: {"a":1}\n\n'
        self.assertIs(hygiene.strip_sse(data, {}), data)

    def test_not_json(self) -> None:
        """
        An event that is not valid JSON is passed through, not dropped.
        """
        data = b"data: {broken\n\n"
        self.assertEqual(hygiene.strip_sse(data, {"a": None}), data)
