"""
Tests for L{qwen_twist.translate.common}: ids, C{finish_reason} (section
6.3), usage, tool calls, timestamps and namespaces.
"""

from __future__ import annotations

import json
import re

from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.translate import common

CHATCMPL = re.compile(r"^chatcmpl-[A-Za-z0-9]{24,}$")
CMPL = re.compile(r"^cmpl-[A-Za-z0-9]{24,}$")
CALL = re.compile(r"^call_[A-Za-z0-9]{24}$")


class IdTests(SynchronousTestCase):
    """
    Ids are OpenAI-shaped and do not collide (unlike compat's 0..998).
    """

    def test_chat_completion_id(self):
        """
        C{chatcmpl-} plus at least 24 alphanumerics, fresh each time.
        """
        ids = {common.chat_completion_id() for _ in range(200)}
        self.assertEqual(len(ids), 200)
        for value in ids:
            self.assertRegex(value, CHATCMPL)

    def test_completion_id(self):
        """
        C{cmpl-} plus at least 24 alphanumerics.
        """
        self.assertRegex(common.completion_id(), CMPL)
        self.assertNotEqual(common.completion_id(), common.completion_id())

    def test_pinned_tokens(self):
        """
        Tests and callers may pin the random part.
        """
        self.assertEqual(common.chat_completion_id("abc"), "chatcmpl-abc")
        self.assertEqual(common.completion_id("abc"), "cmpl-abc")

    def test_random_token(self):
        """
        The random part is 32 hex characters.
        """
        self.assertRegex(common.random_token(), re.compile(r"^[0-9a-f]{32}$"))

    def test_tool_call_id(self):
        """
        Minted tool-call ids are C{call_} plus 24 alphanumerics (E20).
        """
        ids = {common.tool_call_id() for _ in range(100)}
        self.assertEqual(len(ids), 100)
        for value in ids:
            self.assertRegex(value, CALL)


class FinishReasonTests(SynchronousTestCase):
    """
    Section 6.3, one row per line of the table.
    """

    def test_table(self):
        """
        C{length} wins, then tool calls, else C{stop}; non-OpenAI values
        never leak.
        """
        rows = [
            ("length", True, "length"),
            ("length", False, "length"),
            ("stop", True, "tool_calls"),
            ("", True, "tool_calls"),
            (None, True, "tool_calls"),
            ("stop", False, "stop"),
            ("", False, "stop"),
            (None, False, "stop"),
            ("load", False, "stop"),
            ("unload", True, "tool_calls"),
            ("mystery", False, "stop"),
        ]
        for done_reason, had_calls, expected in rows:
            self.assertEqual(common.finish_reason(done_reason, had_calls), expected,
                             (done_reason, had_calls))


class UsageTests(SynchronousTestCase):
    """
    Native counts to OpenAI usage.
    """

    def test_counts(self):
        """
        Prompt and completion counts and their sum.
        """
        self.assertEqual(common.usage({"prompt_eval_count": 26, "eval_count": 3}),
                         {"prompt_tokens": 26, "completion_tokens": 3, "total_tokens": 29})

    def test_missing_and_bad_counts_are_zero(self):
        """
        E19: absent counts are 0, and so are negative, boolean or
        non-integer ones.
        """
        for value in (None, -1, True, 2.5, "7"):
            native = {"eval_count": 4}
            if value is not None:
                native["prompt_eval_count"] = value
            self.assertEqual(common.usage(native),
                             {"prompt_tokens": 0, "completion_tokens": 4, "total_tokens": 4},
                             value)

    def test_cached_tokens(self):
        """
        C{prompt_eval_cached_count} adds C{prompt_tokens_details} only when
        present.
        """
        self.assertEqual(
            common.usage({"prompt_eval_count": 10, "prompt_eval_cached_count": 6})[
                "prompt_tokens_details"],
            {"cached_tokens": 6},
        )
        self.assertNotIn("prompt_tokens_details", common.usage({}))


class OpenAIToolCallTests(SynchronousTestCase):
    """
    Native tool calls to OpenAI ones.
    """

    def test_object_arguments_become_string(self):
        """
        Object arguments become a JSON string, non-ASCII kept readable.
        """
        call = common.openai_tool_call(
            {"id": "call_1", "function": {"index": 0, "name": "f",
                                          "arguments": {"city": "Zürich", "n": 2}}})
        self.assertEqual(call["id"], "call_1")
        self.assertEqual(call["type"], "function")
        self.assertEqual(call["function"]["name"], "f")
        self.assertIn("Zürich", call["function"]["arguments"])
        self.assertEqual(json.loads(call["function"]["arguments"]), {"city": "Zürich", "n": 2})
        self.assertEqual(set(call["function"]), {"name", "arguments"})

    def test_string_and_missing_arguments(self):
        """
        String arguments pass as is; missing arguments are C{"{}"}.
        """
        self.assertEqual(
            common.openai_tool_call({"id": "c", "function": {"name": "f", "arguments": "{\"a\":1}"}})
            ["function"]["arguments"], "{\"a\":1}")
        self.assertEqual(
            common.openai_tool_call({"id": "c", "function": {"name": "f"}})["function"]["arguments"],
            "{}")

    def test_missing_id_minted(self):
        """
        A call without a (non-empty string) id gets one from the factory.
        """
        for native in ({"function": {"name": "f"}}, {"id": "", "function": {"name": "f"}},
                       {"id": 5, "function": {"name": "f"}}):
            self.assertEqual(common.openai_tool_call(native, lambda: "call_new")["id"], "call_new")
        self.assertRegex(common.openai_tool_call({"function": {"name": "f"}})["id"], CALL)

    def test_malformed_function(self):
        """
        A missing function or non-string name still yields the required
        fields.
        """
        call = common.openai_tool_call({"id": "c", "function": "x"})
        self.assertEqual(call["function"], {"name": "", "arguments": "{}"})
        call = common.openai_tool_call({"id": "c", "function": {"name": 3}})
        self.assertEqual(call["function"]["name"], "")


class UnixTimeTests(SynchronousTestCase):
    """
    RFC 3339 timestamps (E29).
    """

    def test_table(self):
        """
        C{Z}, offsets, nanoseconds and no fraction all parse; anything
        unusable gives the fallback.
        """
        rows = [
            ("2025-07-07T20:22:19.184789Z", 1751919739),
            ("2025-01-01T00:00:00Z", 1735689600),
            ("2025-01-01T00:00:00z", 1735689600),
            ("2025-01-01T00:00:00.5Z", 1735689600),
            ("2025-05-10T08:06:48.639712648-07:00", 1746889608),
            ("2023-08-04T08:52:19.385406455-07:00", 1691164339),
            ("2025-01-01T02:00:00+02:00", 1735689600),
            ("2025-01-01T00:00:00", -1),
            ("2025-01-01", -1),
            ("yesterday", -1),
            ("", -1),
            (None, -1),
            (1735689600, -1),
        ]
        for value, expected in rows:
            self.assertEqual(common.unix_time(value, -1), expected, value)


class OwnedByTests(SynchronousTestCase):
    """
    Section 6.4 namespaces.
    """

    def test_table(self):
        """
        Plain names are C{library}; otherwise the path part before the name.
        """
        rows = [
            ("qwen3:8b", "library"),
            ("qwen3", "library"),
            ("hf.co/bartowski/Qwen2.5-7B-GGUF:Q4_K_M", "bartowski"),
            ("registry.ollama.ai/library/qwen3:8b", "library"),
            ("someone/model:tag", "someone"),
            ("/model", "library"),
        ]
        for name, expected in rows:
            self.assertEqual(common.owned_by(name), expected, name)
