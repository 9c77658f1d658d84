"""
Tests for L{qwen_twist.translate.anthropic_stream}: Ollama NDJSON to
Anthropic Messages events (vectors AS-01 to AS-06 of
C{docs/anthropic-responses-protocol.md}). Every event is validated as the
C{anthropic} SDK's own stream event type, and each stream is fed whole and
byte by byte with the same result.
"""

from __future__ import annotations

from hypothesis import given, settings
from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.translate import anthropic
from qwen_twist.translate.anthropic_stream import PING, MessagesStreamTranslator

from tests.support import sdk
from tests.translate.agent_vectors import (
    MODEL,
    anthropic_validate,
    feed_all,
    line,
    named_events,
    native_answers,
    ndjson,
)

START = {"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "model": MODEL, "content": [],
    "stop_reason": None, "stop_sequence": None,
    "usage": {"input_tokens": 0, "output_tokens": 0}}}


def translate(body: bytes):
    """
    The events for C{body}, checked to be the same whatever the chunking
    and to validate as the SDK's types.
    """
    results = []
    for chunk in (None, 1, 7):
        translator = MessagesStreamTranslator(model=MODEL, message_id="msg_1",
                                              new_call_id=lambda: "toolu_minted")
        results.append((named_events(feed_all(translator, body, chunk)), translator))
    events, translator = results[0]
    for other, _ in results[1:]:
        assert other == events
    for event in events:
        anthropic_validate(event)
    return events, translator


def block_start(index, block):
    return {"type": "content_block_start", "index": index, "content_block": block}


def delta(index, kind, **fields):
    return {"type": "content_block_delta", "index": index, "delta": dict(type=kind, **fields)}


def stop(index):
    return {"type": "content_block_stop", "index": index}


def message_delta(reason, input_tokens=0, output_tokens=0):
    return {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": None},
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}}


class MessagesStreamTests(SynchronousTestCase):
    """
    The event sequence of the Messages API.
    """

    def test_text(self):
        """
        AS-01: message_start, one text block, message_delta with the
        stop reason and usage, message_stop.
        """
        events, translator = translate(ndjson(
            line("Hel"), line("lo"),
            line("", done=True, done_reason="stop", prompt_eval_count=5, eval_count=2)))
        self.assertEqual(events, [
            START,
            block_start(0, {"type": "text", "text": ""}),
            delta(0, "text_delta", text="Hel"),
            delta(0, "text_delta", text="lo"),
            stop(0),
            message_delta("end_turn", 5, 2),
            {"type": "message_stop"},
        ])
        self.assertEqual(translator.outcome, "complete")
        self.assertEqual(translator.final_usage["total_tokens"], 7)

    def test_thinking_text_and_tools(self):
        """
        AS-02: thinking block, text block, then one tool_use block per
        native call with its whole input in one input_json_delta;
        stop_reason tool_use.
        """
        events, _ = translate(ndjson(
            line("", thinking="Add "), line("4", thinking="them."),
            line("", tool_calls=[{"id": "call_a", "function": {
                "name": "f", "arguments": {"x": "é"}}}]),
            line("", tool_calls=[{"function": {"name": "g", "arguments": {}}}]),
            line("", done=True, done_reason="stop")))
        self.assertEqual(events, [
            START,
            block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
            delta(0, "thinking_delta", thinking="Add "),
            delta(0, "thinking_delta", thinking="them."),
            stop(0),
            block_start(1, {"type": "text", "text": ""}),
            delta(1, "text_delta", text="4"),
            stop(1),
            block_start(2, {"type": "tool_use", "id": "call_a", "name": "f", "input": {}}),
            delta(2, "input_json_delta", partial_json='{"x":"é"}'),
            stop(2),
            block_start(3, {"type": "tool_use", "id": "toolu_minted", "name": "g", "input": {}}),
            delta(3, "input_json_delta", partial_json="{}"),
            stop(3),
            message_delta("tool_use"),
            {"type": "message_stop"},
        ])

    def test_length(self):
        """
        AS-03: done_reason length -> stop_reason max_tokens.
        """
        events, _ = translate(ndjson(line("Once upon"),
                                     line(done=True, done_reason="length", eval_count=2)))
        self.assertEqual(events[-2], message_delta("max_tokens", 0, 2))

    def test_empty(self):
        """
        AS-04: an empty answer has no content block at all.
        """
        events, _ = translate(ndjson(line(done=True, done_reason="stop")))
        self.assertEqual([e["type"] for e in events],
                         ["message_start", "message_delta", "message_stop"])

    def test_mid_stream_error(self):
        """
        AS-05: an upstream error line is one error event (api_error) and
        nothing after it; no message_stop.
        """
        events, translator = translate(ndjson(
            line("Par"), {"error": "an error was encountered while running the model"},
            line("more")))
        self.assertEqual(events[-1], {"type": "error", "error": {
            "type": "api_error",
            "message": "the model server failed during generation"}})
        self.assertNotIn("message_stop", [e["type"] for e in events])
        self.assertEqual(translator.outcome, "error")

    def test_cut_and_gateway_failures(self):
        """
        AS-06: a stream cut before done is an error event; a gateway
        timeout is a timeout_error, a drain an overloaded_error, an explicit
        type wins.
        """
        events, _ = translate(ndjson(line("Par")))
        self.assertEqual(events[-1]["error"]["message"],
                         "upstream closed the stream before completion")
        rows = [({"code": "upstream_timeout"}, "timeout_error"),
                ({"code": "shutting_down"}, "overloaded_error"),
                ({"error_type": "rate_limit_error"}, "rate_limit_error"),
                ({}, "api_error")]
        for kwargs, kind in rows:
            translator = MessagesStreamTranslator(model=MODEL, message_id="msg_1")
            translator.start()
            [event] = named_events(translator.fail("gave up", **kwargs))
            self.assertEqual(event["error"], {"type": kind, "message": "gave up"})
            self.assertEqual(translator.fail("again"), b"")

    def test_ping(self):
        """
        The keep-alive is Anthropic's ping event.
        """
        self.assertEqual(named_events(PING), [{"type": "ping"}])


class SdkAccumulatorTests(SynchronousTestCase):
    """
    The C{anthropic} SDK's own stream accumulator (what C{messages.stream}
    runs) rebuilds, from any stream, the message the non-streaming
    translator gives for the same answer.
    """

    @settings(max_examples=40, deadline=None)
    @given(native_answers())
    def test_stream_equals_message(self, answer):
        """
        Thinking, text, tool inputs, stop reason and usage agree.
        """
        sdk("anthropic")
        import pydantic
        from anthropic.lib.streaming._messages import accumulate_event
        from anthropic.types import RawMessageStreamEvent

        body, whole = answer
        translator = MessagesStreamTranslator(model=MODEL, message_id="msg_1")
        adapter = pydantic.TypeAdapter(RawMessageStreamEvent)
        snapshot = None
        for event in named_events(feed_all(translator, body)):
            snapshot = accumulate_event(event=adapter.validate_python(event),
                                        current_snapshot=snapshot, json_bufs={})
        expected = anthropic.messages_response(whole, model=MODEL, message_id="msg_1")

        def summary(blocks):
            return (
                "".join(b["thinking"] for b in blocks if b["type"] == "thinking"),
                "".join(b["text"] for b in blocks if b["type"] == "text"),
                [(b["id"], b["name"], b["input"]) for b in blocks if b["type"] == "tool_use"],
            )

        got = snapshot.to_dict()
        self.assertEqual(summary(got["content"]), summary(expected["content"]))
        self.assertEqual(got["stop_reason"], expected["stop_reason"])
        self.assertEqual(
            (got["usage"]["input_tokens"], got["usage"]["output_tokens"]),
            (expected["usage"]["input_tokens"], expected["usage"]["output_tokens"]))
