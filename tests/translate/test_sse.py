"""
Tests for L{qwen_twist.translate.sse}: the event framing clients parse
(reference sections 3.3, 3.7, 7, TV-39).
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.translate import sse


class EventTests(SynchronousTestCase):
    """
    Every event is C{data: } plus one line of compact ASCII JSON plus a
    blank line.
    """

    def test_framing(self):
        """
        An object becomes C{data: <compact JSON>} followed by a blank line.
        """
        self.assertEqual(
            sse.event({"a": [1, None], "b": "x"}),
            b'data: {"a":[1,null],"b":"x"}\n\n',
        )

    def test_ascii_and_single_line(self):
        """
        Newlines, U+2028/U+2029 and non-ASCII text are escaped, so the
        payload is one ASCII line that decodes back to the same text.
        """
        text = "line\nbreak \u2028\u2029 é 😀"
        out = sse.event({"t": text})
        self.assertEqual(out.count(b"\n"), 2)
        self.assertTrue(out.endswith(b"\n\n"))
        out.decode("ascii")
        self.assertIn(b"\\u2028\\u2029", out)
        self.assertEqual(json.loads(out[len(b"data: "):]), {"t": text})

    def test_constants(self):
        """
        The end sentinel and the keep-alive comment have their exact wire
        form.
        """
        self.assertEqual(sse.DONE, b"data: [DONE]\n\n")
        self.assertEqual(sse.KEEPALIVE, b": keep-alive\n\n")


class ErrorEventTests(SynchronousTestCase):
    """
    Mid-stream errors use the OpenAI envelope in its object form, which the
    SDK turns into C{APIError(message)}.
    """

    def test_default(self):
        """
        By default an error event is a C{server_error} with null C{param}
        and C{code}.
        """
        self.assertEqual(
            sse.error_event("boom"),
            b'data: {"error":{"message":"boom","type":"server_error",'
            b'"param":null,"code":null}}\n\n',
        )

    def test_type_and_code(self):
        """
        The type and code given are carried.
        """
        payload = json.loads(
            sse.error_event("slow", "server_error", "upstream_timeout")[len(b"data: "):]
        )
        self.assertEqual(
            payload,
            {"error": {"message": "slow", "type": "server_error", "param": None,
                       "code": "upstream_timeout"}},
        )
