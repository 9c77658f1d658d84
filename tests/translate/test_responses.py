"""
Tests for L{qwen_twist.translate.responses}: the OpenAI Responses request
and response mapping (vectors RV-01 to RV-10 of
C{docs/anthropic-responses-protocol.md}). Response objects are validated
as the C{openai} SDK's C{Response} type.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from qwen_twist import errors
from qwen_twist.translate import responses
from qwen_twist.translate.chat import ChatOptions

from tests.translate.agent_vectors import MODEL, openai_validate

IMAGE = "iVBORw0KGgo="


def request(**fields):
    body = {"model": MODEL, "input": "Hi"}
    body.update(fields)
    return body


def pinned_ids():
    counter = iter(range(100))
    return lambda prefix: "%s_%d" % (prefix, next(counter))


class RequestTests(SynchronousTestCase):
    """
    C{/v1/responses} bodies to C{/api/chat} requests.
    """

    def refused(self, body, param):
        with self.assertRaises(errors.ApiError) as caught:
            responses.responses_request(body)
        self.assertEqual((caught.exception.status, caught.exception.param), (400, param))
        return caught.exception

    def test_string_input(self):
        """
        RV-01: instructions are the system message, a string input one
        user message; max_output_tokens, temperature, top_p to options.
        """
        plan = responses.responses_request(request(
            instructions="Be brief.", max_output_tokens=50, temperature=0.3, top_p=0.8,
            user="u-9"))
        self.assertEqual(plan.payload, {
            "model": MODEL,
            "messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Hi"}],
            "stream": False,
            "options": {"num_predict": 50, "temperature": 0.3, "top_p": 0.8},
        })
        self.assertEqual((plan.max_tokens, plan.end_user), (50, "u-9"))
        self.assertEqual(plan.echo["instructions"], "Be brief.")

    def test_items(self):
        """
        RV-02: message items with parts and images, developer as system,
        a reasoning item's summary as the next assistant turn's thinking,
        function_call items joining that turn, function_call_output as a
        named tool message.
        """
        plan = responses.responses_request(request(input=[
            {"role": "developer", "content": "Rules."},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "Weather here?"},
                {"type": "input_image", "image_url": "data:image/png;base64," + IMAGE}]},
            {"type": "reasoning", "id": "rs_1",
             "summary": [{"type": "summary_text", "text": "Use the tool."}]},
            {"type": "message", "role": "assistant", "content": [
                {"type": "output_text", "text": "Checking."}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather",
             "arguments": "{\"city\":\"Oslo\"}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "rain"},
        ]))
        self.assertEqual(plan.payload["messages"], [
            {"role": "system", "content": "Rules."},
            {"role": "user", "content": "Weather here?", "images": [IMAGE]},
            {"role": "assistant", "content": "Checking.", "thinking": "Use the tool.",
             "tool_calls": [{"id": "call_1", "function": {
                 "name": "get_weather", "arguments": {"city": "Oslo"}}}]},
            {"role": "tool", "content": "rain", "tool_call_id": "call_1",
             "tool_name": "get_weather"},
        ])

    def test_function_call_without_message(self):
        """
        RV-03: function_call items with no assistant message before them
        form their own assistant turn.
        """
        plan = responses.responses_request(request(input=[
            {"role": "user", "content": "x"},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": ""},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
        ]))
        self.assertEqual(plan.payload["messages"][1], {
            "role": "assistant", "content": "", "tool_calls": [
                {"id": "c1", "function": {"name": "f", "arguments": {}}},
                {"id": "c2", "function": {"name": "g", "arguments": {}}}]})
        self.refused(request(input=[{"type": "function_call", "call_id": "c", "name": "f",
                                     "arguments": "[1]"}]), "input")

    def test_tools_format_reasoning(self):
        """
        RV-04: function tools become native ones, tool_choice none drops
        them; text.format json_schema/json_object become format;
        reasoning.effort is think.
        """
        tools = [{"type": "function", "name": "f", "parameters": {"type": "object"},
                  "strict": True}]
        plan = responses.responses_request(request(
            tools=tools, tool_choice="required", reasoning={"effort": "minimal"},
            text={"format": {"type": "json_schema", "name": "x", "strict": True,
                             "schema": {"type": "object"}}}))
        self.assertEqual(plan.payload["tools"], [
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
        self.assertEqual(plan.payload["format"], {"type": "object"})
        self.assertEqual(plan.payload["think"], "low")
        self.assertNotIn("tools", responses.responses_request(
            request(tools=tools, tool_choice="none")).payload)
        self.assertEqual(responses.responses_request(
            request(text={"format": {"type": "json_object"}})).payload["format"], "json")
        self.assertIs(responses.responses_request(
            request(reasoning={"effort": "none"})).payload["think"], False)
        self.assertEqual(responses.responses_request(
            request(reasoning={"effort": "xhigh"}), ChatOptions(max_think_level=False)
        ).payload["think"], "high")

    def test_stateless_refusals(self):
        """
        RV-05: previous_response_id, store true, conversation, background,
        item_reference need state: 400s saying the gateway keeps none.
        store false and include are accepted.
        """
        for body, param in [
            (request(previous_response_id="resp_1"), "previous_response_id"),
            (request(store=True), "store"),
            (request(conversation="conv_1"), "conversation"),
            (request(background=True), "background"),
            (request(input=[{"type": "item_reference", "id": "msg_1"}]), "input"),
        ]:
            self.assertIn("no state", self.refused(body, param).message)
        responses.responses_request(request(store=False,
                                            include=["reasoning.encrypted_content"]))

    def test_other_refusals(self):
        """
        RV-06: built-in tools, URL images, files and unknown items are 400s.
        """
        self.assertIn("built-in", self.refused(
            request(tools=[{"type": "web_search_preview"}]), "tools").message)
        self.refused(request(input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": "https://x/y.png"}]}]), "input")
        self.refused(request(input=[{"role": "user", "content": [
            {"type": "input_file", "file_id": "f"}]}]), "input")
        self.refused(request(input=[{"type": "computer_call"}]), "input")
        self.refused(request(input=[]), "input")
        self.refused({"model": MODEL}, "input")
        self.refused(request(text={"format": {"type": "xml"}}), "text")


class ResponseTests(SynchronousTestCase):
    """
    Native replies to C{response} objects.
    """

    def translate(self, native, **fields):
        plan = responses.responses_request(request(**fields))
        result = responses.responses_response(
            native, plan=plan, response_id="resp_1", created=1735689600,
            new_id=pinned_ids())
        openai_validate(result, "response")
        return result

    def test_text_and_reasoning(self):
        """
        RV-07: a reasoning item with the thinking as summary text, a
        message with output_text, status completed, usage.
        """
        result = self.translate({
            "message": {"role": "assistant", "content": "4", "thinking": "2+2"},
            "done": True, "done_reason": "stop", "prompt_eval_count": 10, "eval_count": 3,
        }, instructions="Be brief.")
        self.assertEqual(result["output"], [
            {"id": "rs_0", "type": "reasoning",
             "summary": [{"type": "summary_text", "text": "2+2"}]},
            {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
             "content": [{"type": "output_text", "text": "4", "annotations": [],
                          "logprobs": []}]},
        ])
        self.assertEqual(result["usage"], {
            "input_tokens": 10, "input_tokens_details": {"cached_tokens": 0,
                                                         "cache_write_tokens": 0},
            "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 13})
        self.assertEqual((result["status"], result["object"], result["instructions"],
                          result["store"], result["incomplete_details"]),
                         ("completed", "response", "Be brief.", False, None))

    def test_function_calls(self):
        """
        RV-08: one function_call item per native call, call_id kept,
        arguments a compact JSON string; no empty message.
        """
        result = self.translate({
            "message": {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_a1", "function": {"name": "f", "arguments": {"x": 1}}}]},
            "done": True, "done_reason": "stop"})
        self.assertEqual(result["output"], [
            {"id": "fc_0", "type": "function_call", "status": "completed",
             "call_id": "call_a1", "name": "f", "arguments": '{"x":1}'}])

    def test_incomplete(self):
        """
        RV-09: done_reason length -> status incomplete with reason
        max_output_tokens.
        """
        result = self.translate({"message": {"role": "assistant", "content": "Once"},
                                 "done": True, "done_reason": "length"})
        self.assertEqual((result["status"], result["incomplete_details"]),
                         ("incomplete", {"reason": "max_output_tokens"}))

    def test_empty(self):
        """
        RV-10: an empty answer is one message with empty output_text.
        """
        result = self.translate({"done": True, "done_reason": "stop"})
        self.assertEqual(result["output"][0]["content"][0]["text"], "")
