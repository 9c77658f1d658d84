"""
Tests for L{qwen_twist.translate.validate}.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.errors import ApiError
from qwen_twist.translate import validate as v


class _ErrorAssertions:
    def assertRejected(self, call, *args, at="unset", **kwargs):
        """
        C{call(*args, **kwargs)} raises a 400 invalid_request_error naming
        C{at}; returns the error.
        """
        error = self.assertRaises(ApiError, call, *args, **kwargs)
        self.assertEqual(error.status, 400)
        self.assertEqual(error.type, "invalid_request_error")
        if at != "unset":
            self.assertEqual(error.param, at)
        return error


class RequireObjectTests(_ErrorAssertions, SynchronousTestCase):
    def test_non_objects_rejected_without_param(self):
        """
        A body that is an array, a string, a number or null is a 400 with no
        C{param} (rule R0).
        """
        for body in ([], "x", 1, None, True):
            self.assertRejected(v.require_object, body, at=None)

    def test_object_returned(self):
        """
        A JSON object passes through unchanged.
        """
        body = {"a": 1}
        self.assertIs(v.require_object(body), body)


class ScalarFieldTests(_ErrorAssertions, SynchronousTestCase):
    def test_require_str(self):
        """
        A required string must be present, a string and non-empty; the error
        names the field.
        """
        self.assertEqual(v.require_str({"model": "m"}, "model"), "m")
        for body in ({}, {"model": None}, {"model": ""}, {"model": 3}, {"model": ["m"]}):
            self.assertRejected(v.require_str, body, "model", at="model")

    def test_null_is_absent(self):
        """
        C{null} reads as "not set" for every optional getter.
        """
        body = {"x": None}
        self.assertIsNone(v.optional_str(body, "x"))
        self.assertIsNone(v.optional_number(body, "x"))
        self.assertIsNone(v.optional_int(body, "x"))
        self.assertIsNone(v.optional_bool(body, "x"))
        self.assertIsNone(v.optional_object(body, "x"))
        self.assertIsNone(v.stop_list(body, "x"))

    def test_bool_is_not_a_number(self):
        """
        C{true} is refused where a number or an integer is expected.
        """
        self.assertRejected(v.optional_number, {"temperature": True}, "temperature", at="temperature")
        self.assertRejected(v.optional_int, {"seed": False}, "seed", at="seed")

    def test_non_finite_rejected(self):
        """
        C{Infinity} and C{NaN} (which json.loads accepts) are refused.
        """
        for value in (float("inf"), float("-inf"), float("nan")):
            self.assertRejected(v.optional_number, {"t": value}, "t", at="t")

    def test_number_range(self):
        """
        Bounds are inclusive and a value outside them is a 400.
        """
        self.assertEqual(v.optional_number({"p": 1}, "p", minimum=0, maximum=1), 1)
        self.assertEqual(v.optional_number({"p": 0.0}, "p", minimum=0, maximum=1), 0.0)
        self.assertRejected(v.optional_number, {"p": 1.01}, "p", minimum=0, maximum=1, at="p")
        self.assertRejected(v.optional_number, {"p": -0.1}, "p", minimum=0, at="p")

    def test_integral_float_accepted_as_int(self):
        """
        C{64.0} becomes the integer 64; C{64.5} and C{"64"} are refused.
        """
        value = v.optional_int({"n": 64.0}, "n")
        self.assertEqual(value, 64)
        self.assertIsInstance(value, int)
        self.assertRejected(v.optional_int, {"n": 64.5}, "n", at="n")
        self.assertRejected(v.optional_int, {"n": "64"}, "n", at="n")

    def test_int_bounds(self):
        """
        C{minimum}/C{maximum} apply, and values beyond Go's int64 are refused.
        """
        self.assertRejected(v.optional_int, {"n": 0}, "n", minimum=1, at="n")
        self.assertRejected(v.optional_int, {"n": 21}, "n", maximum=20, at="n")
        self.assertRejected(v.optional_int, {"n": 2**63}, "n", at="n")
        self.assertEqual(v.optional_int({"n": -(2**63)}, "n"), -(2**63))

    def test_optional_bool(self):
        """
        Only real booleans pass; C{0}, C{1} and C{"true"} are refused.
        """
        self.assertIs(v.optional_bool({"b": False}, "b"), False)
        for value in (0, 1, "true"):
            self.assertRejected(v.optional_bool, {"b": value}, "b", at="b")

    def test_param_override(self):
        """
        C{param} replaces the key in the error, for nested fields.
        """
        error = self.assertRejected(
            v.optional_bool, {"x": 1}, "x", param="a.x", at="a.x"
        )
        self.assertIn("a.x", error.message)

    def test_optional_object(self):
        """
        Objects pass; arrays and strings are refused.
        """
        self.assertEqual(v.optional_object({"o": {}}, "o"), {})
        self.assertRejected(v.optional_object, {"o": []}, "o", at="o")

    def test_message_does_not_echo_strings(self):
        """
        A wrong-type error names the JSON type but never repeats the
        client's string.
        """
        error = self.assertRejected(v.optional_number, {"t": "secret-ish"}, "t")
        self.assertNotIn("secret-ish", error.message)
        self.assertIn("string", error.message)


class StopTests(_ErrorAssertions, SynchronousTestCase):
    def test_table(self):
        """
        A string becomes a one-element array, arrays of strings pass, empty
        strings are dropped and an empty result means "no stop".
        """
        rows = [
            ("END", ["END"]),
            (["a", "b"], ["a", "b"]),
            ([], None),
            ("", None),
            (["", "x"], ["x"]),
            ([""], None),
        ]
        for given, expected in rows:
            self.assertEqual(v.stop_list({"stop": given}), expected, given)

    def test_non_string_item_rejected(self):
        """
        A number inside the array is a 400 naming C{stop} (Ollama compat
        would silently drop it).
        """
        self.assertRejected(v.stop_list, {"stop": ["a", 1.5]}, at="stop")
        self.assertRejected(v.stop_list, {"stop": {"a": 1}}, at="stop")

    def test_too_many(self):
        """
        More than L{v.MAX_STOP_SEQUENCES} sequences is a 400.
        """
        self.assertEqual(len(v.stop_list({"stop": ["x"] * v.MAX_STOP_SEQUENCES})), v.MAX_STOP_SEQUENCES)
        self.assertRejected(
            v.stop_list, {"stop": ["x"] * (v.MAX_STOP_SEQUENCES + 1)}, at="stop"
        )


class StreamFlagsTests(_ErrorAssertions, SynchronousTestCase):
    def test_table(self):
        """
        C{stream} defaults to false; C{include_usage} only counts when
        streaming; a malformed C{stream_options} is ignored without stream
        (E24).
        """
        rows = [
            ({}, (False, False)),
            ({"stream": None}, (False, False)),
            ({"stream": True}, (True, False)),
            ({"stream": True, "stream_options": {"include_usage": True}}, (True, True)),
            ({"stream": True, "stream_options": {"include_usage": False}}, (True, False)),
            ({"stream": False, "stream_options": {"include_usage": True}}, (False, False)),
            ({"stream": False, "stream_options": "junk"}, (False, False)),
        ]
        for body, expected in rows:
            self.assertEqual(v.stream_flags(body), expected, body)

    def test_errors(self):
        """
        Wrong types name the exact field.
        """
        self.assertRejected(v.stream_flags, {"stream": "yes"}, at="stream")
        self.assertRejected(
            v.stream_flags, {"stream": True, "stream_options": []}, at="stream_options"
        )
        self.assertRejected(
            v.stream_flags,
            {"stream": True, "stream_options": {"include_usage": "yes"}},
            at="stream_options.include_usage",
        )


class SingleChoiceTests(_ErrorAssertions, SynchronousTestCase):
    def test_table(self):
        """
        Absent, null and 1 are fine; anything else is a 400 naming the field.
        """
        for body in ({}, {"n": None}, {"n": 1}):
            v.single_choice(body)
        for value in (2, 0, -1, "1", True, 1.5):
            self.assertRejected(v.single_choice, {"n": value}, at="n")
        self.assertRejected(v.single_choice, {"best_of": 3}, "best_of", at="best_of")


class KeepAliveTests(_ErrorAssertions, SynchronousTestCase):
    def test_table(self):
        """
        Durations and numbers of seconds pass; other types are refused.
        """
        for value in ("5m", 0, -1, 30.5):
            self.assertEqual(v.keep_alive_value(value), value)
        for value in (True, [], {}, "", float("inf")):
            self.assertRejected(v.keep_alive_value, value, at="keep_alive")


class NativeOptionsTests(_ErrorAssertions, SynchronousTestCase):
    def test_only_what_was_set(self):
        """
        An empty body yields no options at all (rule R3: no injected
        temperature or top_p).
        """
        self.assertEqual(v.native_options({}, None), {})

    def test_mapping(self):
        """
        Every OpenAI sampling field lands under its native name.
        """
        body = {
            "temperature": 0.2,
            "top_p": 0.5,
            "seed": 7,
            "stop": "END",
            "frequency_penalty": 0.5,
            "presence_penalty": 0.25,
            "top_k": 20,
            "num_ctx": 8192,
        }
        self.assertEqual(
            v.native_options(body, 64),
            {
                "temperature": 0.2,
                "top_p": 0.5,
                "seed": 7,
                "stop": ["END"],
                "num_predict": 64,
                "frequency_penalty": 0.5,
                "presence_penalty": 0.25,
                "top_k": 20,
                "num_ctx": 8192,
            },
        )

    def test_extension_merged_under_explicit_fields(self):
        """
        The C{options} extension is the base; explicit OpenAI fields win on
        conflicts, other extension keys are kept.
        """
        body = {
            "options": {"temperature": 1.5, "repeat_penalty": 1.1, "num_predict": 9},
            "temperature": 0.3,
        }
        self.assertEqual(
            v.native_options(body, 5),
            {"temperature": 0.3, "repeat_penalty": 1.1, "num_predict": 5},
        )

    def test_extension_not_mutated(self):
        """
        The client's C{options} dict is not modified.
        """
        extension = {"temperature": 1.5}
        v.native_options({"options": extension, "temperature": 0.1}, None)
        self.assertEqual(extension, {"temperature": 1.5})

    def test_extension_type_checks(self):
        """
        Each extension key is checked by its native type and unknown keys are
        refused; errors name C{options.<key>} (or C{options}).
        """
        rows = [
            ({"num_ctx": "big"}, "options.num_ctx"),
            ({"temperature": "hot"}, "options.temperature"),
            ({"use_mmap": 1}, "options.use_mmap"),
            ({"stop": "x"}, None),
            ({"stop": [1]}, "options.stop"),
            ({"no_such": 1}, "options"),
        ]
        for extension, param in rows:
            if param is None:
                self.assertEqual(v.native_options({"options": extension}, None), {"stop": ["x"]})
                continue
            self.assertRejected(v.native_options, {"options": extension}, None, at=param)
        self.assertRejected(v.native_options, {"options": [1]}, None, at="options")

    def test_field_errors(self):
        """
        Out-of-range or mistyped OpenAI fields are 400s naming the field.
        """
        rows = [
            ({"temperature": True}, "temperature"),
            ({"temperature": -0.5}, "temperature"),
            ({"top_p": 2}, "top_p"),
            ({"seed": 1.5}, "seed"),
            ({"frequency_penalty": "x"}, "frequency_penalty"),
            ({"presence_penalty": float("nan")}, "presence_penalty"),
            ({"top_k": -1}, "top_k"),
            ({"num_ctx": 0}, "num_ctx"),
        ]
        for body, param in rows:
            self.assertRejected(v.native_options, body, None, at=param)

    def test_output_cap(self):
        """
        Only a positive C{num_predict} is an output cap.
        """
        self.assertEqual(v.output_cap({"num_predict": 5}), 5)
        self.assertIsNone(v.output_cap({"num_predict": -1}))
        self.assertIsNone(v.output_cap({}))


class TypeNameTests(SynchronousTestCase):
    def test_table(self):
        """
        Decoded JSON values are named by their JSON type.
        """
        rows = [
            (None, "null"), (True, "boolean"), (1, "integer"), (1.5, "number"),
            ("s", "string"), ([], "array"), ({}, "object"),
        ]
        for value, name in rows:
            self.assertEqual(v.type_name(value), name)


class LoneSurrogateTests(SynchronousTestCase):
    """
    A lone UTF-16 surrogate (text cut inside an emoji) becomes U+FFFD, as
    Go's decoder in Ollama does, in every translator's request, instead of
    failing to encode for the upstream (a 500 the SDK retried).
    """

    def encodes(self, payload):
        # What the upstream client does with a translated payload.
        return json.dumps(payload, ensure_ascii=False).encode("utf-8")

    def test_replaced_everywhere(self):
        """
        Strings at any depth, keys included, lose their lone surrogates; a
        valid pair (one code point after decoding) is kept.
        """
        body = json.loads('{"a\\ud83d": ["cut \\ud83d", {"x": "\\udc00y"}], '
                          '"ok": "\\ud83d\\ude00", "n": 1}')
        fixed = v.replace_lone_surrogates(body)
        self.assertEqual(fixed, {"a\ufffd": ["cut \ufffd", {"x": "\ufffdy"}],
                                 "ok": "\U0001F600", "n": 1})

    def test_untouched_when_clean(self):
        """
        A body without surrogates comes back as the same objects.
        """
        text = "x" * 1000
        body = {"messages": [{"content": text}]}
        fixed = v.require_object(body)
        self.assertIs(fixed, body)
        self.assertIs(fixed["messages"][0]["content"], text)

    def test_every_translator(self):
        """
        Chat messages, the completions C{prompt} and the embeddings
        C{input} with a lone surrogate translate into a payload that
        encodes as UTF-8 with U+FFFD in place.
        """
        from qwen_twist.translate.chat import chat_request
        from qwen_twist.translate.completions import completion_request
        from qwen_twist.translate.embeddings import embeddings_request

        requests = [
            chat_request(json.loads(
                '{"model":"m","messages":[{"role":"user","content":"cut \\ud83d"}]}')),
            completion_request(json.loads('{"model":"m","prompt":"cut \\ud83d"}')),
            embeddings_request(json.loads('{"model":"m","input":["cut \\ud83d"]}')),
            embeddings_request(json.loads('{"model":"m","input":"cut \\ud83d"}')),
        ]
        for request in requests:
            encoded = self.encodes(request.payload)
            self.assertIn("cut \ufffd".encode("utf-8"), encoded)
