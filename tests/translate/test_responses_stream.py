"""
Tests for L{qwen_twist.translate.responses_stream}: Ollama NDJSON to OpenAI
Responses events (vectors RS-01 to RS-05 of
C{docs/anthropic-responses-protocol.md}). Every event is validated as the
C{openai} SDK's own stream event type; sequence numbers count up from 0.
"""

from __future__ import annotations

from hypothesis import given, settings
from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.translate import responses
from qwen_twist.translate.responses_stream import ResponsesStreamTranslator

from tests.support import sdk
from tests.translate.agent_vectors import (
    feed_all,
    line,
    named_events,
    native_answers,
    ndjson,
    openai_validate,
)
from tests.translate.test_responses import pinned_ids, request


def translate(body: bytes, **fields):
    results = []
    for chunk in (None, 1, 5):
        plan = responses.responses_request(request(stream=True, **fields))
        translator = ResponsesStreamTranslator(plan=plan, response_id="resp_1",
                                               created=1735689600, new_id=pinned_ids())
        results.append((named_events(feed_all(translator, body, chunk)), translator))
    events, translator = results[0]
    for other, _ in results[1:]:
        assert other == events
    for number, event in enumerate(events):
        assert event["sequence_number"] == number, event
        openai_validate(event)
    return events, translator


def strip(events):
    """
    The events without sequence numbers and lifecycle response bodies.
    """
    out = []
    for event in events:
        event = dict(event)
        del event["sequence_number"]
        if "response" in event:
            event["response"] = event["response"]["status"]
        out.append(event)
    return out


TEXT_PART = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}


class ResponsesStreamTests(SynchronousTestCase):
    """
    The semantic event sequence.
    """

    def test_reasoning_then_text(self):
        """
        RS-01: created, in_progress, a reasoning item with summary deltas,
        a message item with text deltas, each closed with its done
        events, then completed carrying both items and usage.
        """
        events, translator = translate(ndjson(
            line("", thinking="Add "), line("4", thinking="them."),
            line(done=True, done_reason="stop", prompt_eval_count=4, eval_count=2)))
        where0 = {"item_id": "rs_0", "output_index": 0}
        where1 = {"item_id": "msg_1", "output_index": 1}
        done_text = dict(TEXT_PART, text="4")
        self.assertEqual(strip(events), [
            {"type": "response.created", "response": "in_progress"},
            {"type": "response.in_progress", "response": "in_progress"},
            {"type": "response.output_item.added", "output_index": 0,
             "item": {"id": "rs_0", "type": "reasoning", "summary": []}},
            dict(where0, type="response.reasoning_summary_part.added", summary_index=0,
                 part={"type": "summary_text", "text": ""}),
            dict(where0, type="response.reasoning_summary_text.delta", summary_index=0,
                 delta="Add "),
            dict(where0, type="response.reasoning_summary_text.delta", summary_index=0,
                 delta="them."),
            dict(where0, type="response.reasoning_summary_text.done", summary_index=0,
                 text="Add them."),
            dict(where0, type="response.reasoning_summary_part.done", summary_index=0,
                 part={"type": "summary_text", "text": "Add them."}),
            {"type": "response.output_item.done", "output_index": 0,
             "item": {"id": "rs_0", "type": "reasoning",
                      "summary": [{"type": "summary_text", "text": "Add them."}]}},
            {"type": "response.output_item.added", "output_index": 1,
             "item": {"id": "msg_1", "type": "message", "role": "assistant",
                      "status": "in_progress", "content": []}},
            dict(where1, type="response.content_part.added", content_index=0, part=TEXT_PART),
            dict(where1, type="response.output_text.delta", content_index=0, delta="4",
                 logprobs=[]),
            dict(where1, type="response.output_text.done", content_index=0, text="4",
                 logprobs=[]),
            dict(where1, type="response.content_part.done", content_index=0, part=done_text),
            {"type": "response.output_item.done", "output_index": 1,
             "item": {"id": "msg_1", "type": "message", "role": "assistant",
                      "status": "completed", "content": [done_text]}},
            {"type": "response.completed", "response": "completed"},
        ])
        final = events[-1]["response"]
        openai_validate(final, "response")
        self.assertEqual([item["id"] for item in final["output"]], ["rs_0", "msg_1"])
        self.assertEqual(final["usage"]["total_tokens"], 6)
        self.assertEqual(translator.final_usage["total_tokens"], 6)

    def test_function_call(self):
        """
        RS-02: a native tool call is an output item with one arguments
        delta, arguments.done (with the name) and output_item.done.
        """
        events, _ = translate(ndjson(
            line("", tool_calls=[{"id": "call_a", "function": {
                "name": "f", "arguments": {"x": 1}}}]),
            line(done=True, done_reason="stop")))
        where = {"item_id": "fc_0", "output_index": 0}
        item = {"id": "fc_0", "type": "function_call", "call_id": "call_a", "name": "f"}
        self.assertEqual(strip(events)[2:], [
            {"type": "response.output_item.added", "output_index": 0,
             "item": dict(item, status="in_progress", arguments="")},
            dict(where, type="response.function_call_arguments.delta", delta='{"x":1}'),
            dict(where, type="response.function_call_arguments.done", name="f",
                 arguments='{"x":1}'),
            {"type": "response.output_item.done", "output_index": 0,
             "item": dict(item, status="completed", arguments='{"x":1}')},
            {"type": "response.completed", "response": "completed"},
        ])

    def test_incomplete(self):
        """
        RS-03: the output cap ends with response.incomplete.
        """
        events, _ = translate(ndjson(line("Once"), line(done=True, done_reason="length")))
        self.assertEqual(events[-1]["type"], "response.incomplete")
        self.assertEqual(events[-1]["response"]["incomplete_details"],
                         {"reason": "max_output_tokens"})

    def test_empty(self):
        """
        RS-04: an empty answer still has one (empty) message item.
        """
        events, _ = translate(ndjson(line(done=True, done_reason="stop")))
        self.assertEqual(events[-1]["response"]["output"][0]["content"][0]["text"], "")
        self.assertNotIn("response.output_text.delta", [e["type"] for e in events])

    def test_failures(self):
        """
        RS-05: an upstream error line, a cut, or a gateway failure before
        anything was sent all end with response.failed (after created when
        needed), carrying the message and the finished items.
        """
        events, translator = translate(ndjson(
            line("Par"), {"error": "an error was encountered while running the model"}))
        self.assertEqual(events[-1]["type"], "response.failed")
        self.assertEqual(events[-1]["response"]["error"], {
            "code": "server_error",
            "message": "the model server failed during generation"})
        self.assertEqual(translator.outcome, "error")
        events, _ = translate(ndjson(line("Par")))
        self.assertEqual(events[-1]["response"]["error"]["message"],
                         "upstream closed the stream before completion")
        plan = responses.responses_request(request(stream=True))
        translator = ResponsesStreamTranslator(plan=plan, response_id="resp_1", created=0)
        events = named_events(translator.fail("upstream timeout", "upstream_timeout"))
        self.assertEqual([e["type"] for e in events], ["response.created",
                                                       "response.in_progress",
                                                       "response.failed"])
        self.assertEqual(translator.fail("again"), b"")


class SdkStateTests(SynchronousTestCase):
    """
    The C{openai} SDK's own stream state machine (what
    C{responses.stream} runs, strict about item order and identity in
    3.x) accepts any stream and ends with the response the non-streaming
    translator gives for the same answer.
    """

    @settings(max_examples=40, deadline=None)
    @given(native_answers())
    def test_stream_equals_response(self, answer):
        """
        Status, text, reasoning, function calls and usage agree.
        """
        sdk("openai")
        import pydantic
        from openai import omit
        from openai.lib.streaming.responses._responses import ResponseStreamState
        from openai.types.responses import ResponseStreamEvent

        body, whole = answer
        plan = responses.responses_request(request(stream=True))
        translator = ResponsesStreamTranslator(plan=plan, response_id="resp_1", created=0)
        adapter = pydantic.TypeAdapter(ResponseStreamEvent)
        state = ResponseStreamState(input_tools=omit, text_format=omit)
        for event in named_events(feed_all(translator, body)):
            [last] = state.handle_event(adapter.validate_python(event))
        # response.completed leaves the SDK's completed response;
        # response.incomplete is passed on with the whole response.
        got = state._completed_response or last.response
        expected = responses.responses_response(whole, plan=plan, response_id="resp_1",
                                                 created=0)

        def summary(response):
            items = response["output"]
            return (
                response["status"],
                "".join(s["text"] for i in items if i["type"] == "reasoning"
                        for s in i["summary"]),
                "".join(c["text"] for i in items if i["type"] == "message"
                        for c in i["content"]),
                [(i["call_id"], i["name"], i["arguments"]) for i in items
                 if i["type"] == "function_call"],
                response["usage"],
            )

        self.assertEqual(summary(got.to_dict()), summary(expected))
