"""
Tests for L{qwen_twist.translate.messages}: reference section 5.1.1, one
test per row (TV-04 to TV-08 run through the whole request in
L{tests.translate.test_chat}).
"""

from __future__ import annotations

import base64

from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.errors import ApiError
from qwen_twist.translate.messages import native_messages

USER_HI = [{"role": "user", "content": "Hi"}]


class NativeMessagesTests(SynchronousTestCase):
    """
    Section 5.1.1, one test per row.
    """

    def messages(self, *messages):
        """
        The native messages for C{messages}.
        """
        return native_messages(list(messages))[0]

    def assertRejected(self, messages):
        """
        C{native_messages(messages)} is a 400 invalid_request_error on
        C{messages}.
        """
        error = self.assertRaises(ApiError, native_messages, messages)
        self.assertEqual(
            (error.status, error.type, error.param, error.code),
            (400, "invalid_request_error", "messages", None),
            (messages, error.message),
        )
        return error

    def test_system_text_parts_joined(self):
        """
        System and developer text-part arrays are joined with a newline.
        """
        self.assertEqual(
            self.messages({"role": "developer", "content": [
                {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}),
            [{"role": "system", "content": "a\nb"}],
        )

    def test_user_name_dropped(self):
        """
        A user message's C{name} is not forwarded.
        """
        self.assertEqual(
            self.messages({"role": "user", "content": "x", "name": "bob"}),
            [{"role": "user", "content": "x"}],
        )

    def test_user_parts_without_images(self):
        """
        A text-only part array has no C{images} key.
        """
        self.assertEqual(
            self.messages({"role": "user", "content": [{"type": "text", "text": "x"}]}),
            [{"role": "user", "content": "x"}],
        )

    def test_images_in_order_bare_string_url(self):
        """
        Several images keep their order; C{image_url} may be a bare string.
        """
        self.assertEqual(
            self.messages({"role": "user", "content": [
                {"type": "image_url", "image_url": "data:image/jpeg;base64,AAAA"},
                {"type": "image_url", "image_url": {"url": "data:;base64,BBBB"}}]}),
            [{"role": "user", "content": "", "images": ["AAAA", "BBBB"]}],
        )

    def test_image_base64_with_line_breaks(self):
        """
        Base64 wrapped at 76 columns (C{base64.encodebytes}, Java's MIME
        encoder, PHP C{chunk_split}) is accepted and forwarded without the
        whitespace; whitespace does not excuse anything else.
        """
        raw = bytes(range(256)) * 2
        wrapped = base64.encodebytes(raw).decode("ascii")
        self.assertIn("\n", wrapped)
        for data in (wrapped, wrapped.replace("\n", "\r\n"), " " + wrapped + "\t"):
            messages = self.messages({"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + data}}]})
            self.assertEqual(messages[0]["images"], [base64.b64encode(raw).decode("ascii")])
        for data in ("AA\nA", "AA\nA!==", "\n \r\n"):
            self.assertRejected([{"role": "user", "content": [
                {"type": "image_url", "image_url": "data:image/png;base64," + data}]}])

    def test_image_errors(self):
        """
        Remote URLs, non-base64 data URLs, malformed base64 and images
        outside user messages are 400s on C{messages}.
        """
        bad_urls = [
            "http://example.com/a.png",
            "HTTPS://example.com/a.png",
            "data:image/png,rawbytes",
            "data:image/png;base64,",
            "data:image/png;base64,not base64!",
            "data:image/png;base64,AAA",
            "ftp://example.com/a.png",
            "iVBORw0KGgo=",
        ]
        for url in bad_urls:
            self.assertRejected([{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}]}])
        self.assertRejected([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"detail": "low"}}]}])
        self.assertRejected([{"role": "system", "content": [
            {"type": "image_url", "image_url": "data:image/png;base64,AAAA"}]}])

    def test_unsupported_parts(self):
        """
        C{input_audio}, C{file} and unknown part types are 400s.
        """
        for part in (
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
            {"type": "file", "file": {"file_id": "f"}},
            {"type": "video"},
            {"type": "text", "text": 5},
            "just a string",
        ):
            self.assertRejected([{"role": "user", "content": [part]}])

    def test_assistant_content_forms(self):
        """
        Assistant content may be a string, text parts, null or missing.
        """
        self.assertEqual(
            self.messages(
                {"role": "assistant", "content": "a"},
                {"role": "assistant", "content": [{"type": "text", "text": "b"},
                                                  {"type": "refusal", "refusal": "no"}]},
                {"role": "assistant", "content": None},
                {"role": "assistant"},
            ),
            [{"role": "assistant", "content": c} for c in ("a", "b\nno", "", "")],
        )

    def test_assistant_reasoning_to_thinking(self):
        """
        C{reasoning_content} (or C{reasoning}) becomes native C{thinking};
        empty or non-string reasoning is dropped.
        """
        self.assertEqual(
            self.messages(
                {"role": "assistant", "content": "a", "reasoning_content": "r1"},
                {"role": "assistant", "content": "b", "reasoning": "r2"},
                {"role": "assistant", "content": "c", "reasoning_content": ""},
                {"role": "assistant", "content": "d", "reasoning": {"summary": []}},
            ),
            [
                {"role": "assistant", "content": "a", "thinking": "r1"},
                {"role": "assistant", "content": "b", "thinking": "r2"},
                {"role": "assistant", "content": "c"},
                {"role": "assistant", "content": "d"},
            ],
        )

    def test_tool_call_arguments(self):
        """
        Arguments may be a JSON string, an object, empty or absent; a
        non-object JSON value is a 400.
        """
        calls = [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}},
            {"id": "b", "type": "function", "function": {"name": "g", "arguments": {"y": 2}}},
            {"id": "c", "type": "function", "function": {"name": "h", "arguments": ""}},
            {"type": "function", "function": {"name": "i"}},
        ]
        self.assertEqual(
            self.messages({"role": "assistant", "content": None, "tool_calls": calls}),
            [{"role": "assistant", "content": "", "tool_calls": [
                {"id": "a", "function": {"name": "f", "arguments": {"x": 1}}},
                {"id": "b", "function": {"name": "g", "arguments": {"y": 2}}},
                {"id": "c", "function": {"name": "h", "arguments": {}}},
                {"function": {"name": "i", "arguments": {}}},
            ]}],
        )
        for arguments in ("[1, 2]", "\"s\"", "3", "NaN", 5, ["x"]):
            self.assertRejected([{"role": "assistant", "tool_calls": [
                {"id": "a", "type": "function",
                 "function": {"name": "f", "arguments": arguments}}]}])

    def test_tool_call_shape_errors(self):
        """
        Malformed tool calls are 400s on C{messages}.
        """
        for calls in (
            "call",
            ["call"],
            [{"id": "a", "type": "custom", "function": {"name": "f"}}],
            [{"id": "a", "type": "function"}],
            [{"id": "a", "type": "function", "function": {"name": ""}}],
            [{"id": 7, "type": "function", "function": {"name": "f"}}],
        ):
            self.assertRejected([{"role": "assistant", "tool_calls": calls}])

    def test_tool_name_lookup(self):
        """
        A tool result's name comes from the latest earlier assistant call
        with its id; an unknown (rewritten) id is sent without a name unless
        the message names the tool itself.
        """
        call = lambda call_id, name: {"id": call_id, "type": "function",
                                      "function": {"name": name, "arguments": "{}"}}
        result = self.messages(
            {"role": "assistant", "content": None, "tool_calls": [call("1", "a"), call("2", "b")]},
            {"role": "tool", "tool_call_id": "2", "content": "B"},
            {"role": "tool", "tool_call_id": "1", "content": "A"},
            {"role": "assistant", "content": None, "tool_calls": [call("1", "c")]},
            {"role": "tool", "tool_call_id": "1", "content": "C"},
            {"role": "tool", "tool_call_id": "zz", "content": "?"},
            {"role": "tool", "tool_call_id": "yy", "name": "d", "content": "D"},
            {"role": "tool", "content": "no id"},
        )
        self.assertEqual(
            result[1:3] + result[4:],
            [
                {"role": "tool", "content": "B", "tool_call_id": "2", "tool_name": "b"},
                {"role": "tool", "content": "A", "tool_call_id": "1", "tool_name": "a"},
                {"role": "tool", "content": "C", "tool_call_id": "1", "tool_name": "c"},
                {"role": "tool", "content": "?", "tool_call_id": "zz"},
                {"role": "tool", "content": "D", "tool_call_id": "yy", "tool_name": "d"},
                {"role": "tool", "content": "no id"},
            ],
        )

    def test_tool_result_call_is_not_looked_up_forwards(self):
        """
        A call made after the tool message does not name it.
        """
        result = self.messages(
            {"role": "tool", "tool_call_id": "1", "content": "early"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        )
        self.assertNotIn("tool_name", result[0])

    def test_tool_content_parts(self):
        """
        Tool results given as text parts are joined; C{null} is empty.
        """
        self.assertEqual(
            self.messages(
                {"role": "tool", "tool_call_id": "x", "content": [
                    {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "tool", "tool_call_id": "x", "content": None},
            ),
            [{"role": "tool", "content": "a\nb", "tool_call_id": "x"},
             {"role": "tool", "content": "", "tool_call_id": "x"}],
        )

    def test_message_errors(self):
        """
        Unknown roles, the C{function} role, non-object messages and
        missing user/system content are 400s on C{messages}.
        """
        for message in (
            {"role": "function", "name": "f", "content": "x"},
            {"role": "wizard", "content": "x"},
            {"role": "User", "content": "x"},
            {"content": "x"},
            {"role": 1, "content": "x"},
            "hello",
            None,
            {"role": "user"},
            {"role": "user", "content": 5},
            {"role": "system", "content": None},
            {"role": "tool", "tool_call_id": 5, "content": "x"},
            {"role": "assistant", "content": {"text": "x"}},
        ):
            self.assertRejected([message])

    def test_error_names_message_index(self):
        """
        The error message says which message is at fault.
        """
        error = self.assertRejected(USER_HI + [{"role": "wizard", "content": "x"}])
        self.assertIn("messages[1]", error.message)
