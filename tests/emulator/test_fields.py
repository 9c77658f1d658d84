"""
Tests for L{qwen_twist.emulator.fields}: Go's typing of Ollama's request
structs, checked directly (the HTTP-level texts are in
L{tests.emulator.test_server}).
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.emulator.fields import (
    CHAT_FIELDS,
    GENERATE_FIELDS,
    base64_error_offset,
    check_options,
    parse_go_duration,
    request_fields,
)
from qwen_twist.emulator.wire import Refusal


class HelperTests(SynchronousTestCase):
    """
    Go durations and base64.
    """

    def test_go_durations(self) -> None:
        """
        Go duration strings parse to seconds.
        """
        self.assertEqual(parse_go_duration("0"), 0)
        self.assertEqual(parse_go_duration("1h30m"), 5400)
        self.assertEqual(parse_go_duration("-1s"), -1)
        self.assertAlmostEqual(parse_go_duration("1.5ms"), 0.0015)

    def test_base64(self) -> None:
        """
        Valid padded base64 passes; the first bad byte is reported.
        """
        self.assertIsNone(base64_error_offset("iVBORw0KGgo="))
        self.assertIsNone(base64_error_offset("YWJj\nZA=="))
        self.assertEqual(base64_error_offset("data:image/png;base64,iVBO"), 4)
        self.assertEqual(base64_error_offset("YWJjZA="), 7)
        self.assertEqual(base64_error_offset("YWJjZA==x"), 8)


class RequestFieldsTests(SynchronousTestCase):
    """
    L{request_fields} refuses what Go's decoder refuses, with its text.
    """

    def assertRefused(self, body: Any, table: Mapping[str, Any], struct: str,
                      message: str, status: int = 400) -> None:
        error = self.assertRaises(Refusal, request_fields, body, table, struct)
        self.assertEqual((error.status, error.message), (status, message))

    def test_arrays_and_their_elements(self) -> None:
        """
        An array field of the wrong type, or one of its elements of the
        wrong type, names the array's path and the Go type expected.
        """
        prefix = "json: cannot unmarshal "
        cases = [
            ({"tools": {}}, CHAT_FIELDS, "ChatRequest",
             "object into Go struct field ChatRequest.tools of type api.Tools"),
            ({"tools": [{}, "x"]}, CHAT_FIELDS, "ChatRequest",
             "string into Go struct field ChatRequest.tools of type api.Tool"),
            ({"messages": [1]}, CHAT_FIELDS, "ChatRequest",
             "number into Go struct field ChatRequest.messages of type api.Message"),
            ({"messages": [{"tool_calls": {}}]}, CHAT_FIELDS, "ChatRequest",
             "object into Go struct field ChatRequest.messages.tool_calls of type "
             "[]api.ToolCall"),
            ({"messages": [{"tool_calls": [{"function": []}]}]}, CHAT_FIELDS, "ChatRequest",
             "array into Go struct field ChatRequest.messages.tool_calls.function of type "
             "api.ToolCallFunction"),
            ({"messages": [{"images": [5]}]}, CHAT_FIELDS, "ChatRequest",
             "number into Go struct field ChatRequest.messages.images of type api.ImageData"),
            ({"context": [1, "2"]}, GENERATE_FIELDS, "GenerateRequest",
             "string into Go struct field GenerateRequest.context of type int"),
            ({"context": [1.5]}, GENERATE_FIELDS, "GenerateRequest",
             "number 1.5 into Go struct field GenerateRequest.context of type int"),
            ({"images": "x"}, GENERATE_FIELDS, "GenerateRequest",
             "string into Go struct field GenerateRequest.images of type []api.ImageData"),
            ({"options": []}, GENERATE_FIELDS, "GenerateRequest",
             "array into Go struct field GenerateRequest.options of type "
             "map[string]interface {}"),
        ]
        for body, table, struct, message in cases:
            self.assertRefused(body, table, struct, prefix + message)

    def test_first_problem_in_document_order(self) -> None:
        """
        With several bad fields the first one in the body is reported;
        C{null} is accepted for any field.
        """
        self.assertRefused(
            {"model": None, "stream": "no", "model2": 1, "raw": 1},
            GENERATE_FIELDS, "GenerateRequest",
            "json: cannot unmarshal string into Go struct field GenerateRequest.stream "
            "of type bool")
        body = {"model": "m", "messages": [{"role": "user", "content": "x", "images": None}]}
        self.assertIs(request_fields(body, CHAT_FIELDS, "ChatRequest"), body)
        self.assertEqual(request_fields(None, CHAT_FIELDS, "ChatRequest"), {})

    def test_options(self) -> None:
        """
        Options of the wrong JSON type are 500s; C{num_predict} is returned.
        """
        self.assertEqual(check_options({"num_predict": 7, "unknown": "x"}), 7)
        self.assertEqual(check_options(None), -1)
        error = self.assertRaises(Refusal, check_options, {"temperature": "hot"})
        self.assertEqual((error.status, error.message),
                         (500, 'option "temperature" must be of type float32'))
