"""
Tests for L{qwen_twist.translate.stream}: Ollama NDJSON to OpenAI SSE
(reference section 7, E1-E6, E20-E23, E28, TV-21 to TV-29 and TV-39).

Every stream is fed in several adversarial chunkings (all at once, byte by
byte, fixed small reads, every two-piece split), decoded with a small SSE
parser that also checks the framing, and where it matters compared byte
for byte with C{json.dumps} of the chunk objects the reference describes.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Callable, Dict, Iterator, List, Optional

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from qwen_twist.translate.ndjson import MIN_LINE_LIMIT
from qwen_twist.translate.stream import ChatStreamTranslator, CompletionStreamTranslator

ID = "chatcmpl-0123456789abcdef0123456789abcdef"
CMPL_ID = "cmpl-0123456789abcdef0123456789abcdef"
CREATED = 1735689600
MODEL = "qwen3:8b"
DONE = "[DONE]"

ROLE_DELTA = {"role": "assistant", "content": ""}


# Building upstream bodies --------------------------------------------------


def ndjson(*objects: Dict[str, Any], newline: bytes = b"\n") -> bytes:
    """
    An NDJSON body, non-ASCII kept as raw UTF-8 as Go's encoder writes it.
    """
    return b"".join(
        json.dumps(o, ensure_ascii=False).encode("utf-8") + newline for o in objects
    )


def chat_line(
    content: Optional[str] = "",
    thinking: Optional[str] = None,
    tool_calls: Optional[list] = None,
    done: bool = False,
    **extra: Any,
) -> Dict[str, Any]:
    message: Dict[str, Any] = {"role": "assistant"}
    if content is not None:
        message["content"] = content
    if thinking is not None:
        message["thinking"] = thinking
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    line = {"model": MODEL, "created_at": "2025-01-01T00:00:00Z", "message": message,
            "done": done}
    line.update(extra)
    return line


def final(done_reason: Optional[str] = "stop", **extra: Any) -> Dict[str, Any]:
    if done_reason is not None:
        extra["done_reason"] = done_reason
    return chat_line("", done=True, **extra)


def native_call(name: str, arguments: dict, call_id: Optional[str] = None,
                index: Optional[int] = None) -> Dict[str, Any]:
    function: Dict[str, Any] = {"name": name, "arguments": arguments}
    if index is not None:
        function["index"] = index
    call: Dict[str, Any] = {"function": function}
    if call_id is not None:
        call["id"] = call_id
    return call


# Chunkings ---------------------------------------------------------------


def fixed(size: int) -> Callable[[bytes], List[bytes]]:
    return lambda body: [body[i:i + size] for i in range(0, len(body), size)]


CHUNKINGS: Dict[str, Callable[[bytes], List[bytes]]] = {
    "whole": lambda body: [body],
    "bytes": fixed(1),
    "2": fixed(2),
    "3": fixed(3),
    "7": fixed(7),
    "64": fixed(64),
}


def two_piece_splits(body: bytes) -> Iterator[List[bytes]]:
    for cut in range(1, len(body)):
        yield [body[:cut], body[cut:]]


# Driving translators -----------------------------------------------------


def new_ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: "call_minted%d" % (next(counter),)


def chat_translator(include_usage: bool = False, **kwargs: Any) -> ChatStreamTranslator:
    kwargs.setdefault("new_call_id", new_ids())
    return ChatStreamTranslator(
        model=MODEL, completion_id=ID, created=CREATED, include_usage=include_usage, **kwargs
    )


def completion_translator(include_usage: bool = False, **kwargs: Any) -> CompletionStreamTranslator:
    return CompletionStreamTranslator(
        model=MODEL, completion_id=CMPL_ID, created=CREATED, include_usage=include_usage,
        **kwargs
    )


def run(translator: Any, pieces: List[bytes], end: bool = True) -> bytes:
    """
    The whole client byte stream: start, every read, then the end of body.
    """
    out = [translator.start()]
    out.extend(translator.feed(piece) for piece in pieces)
    if end:
        out.append(translator.end())
    return b"".join(out)


def parse_sse(testcase: SynchronousTestCase, data: bytes) -> List[Any]:
    """
    A tiny SSE parser that also enforces TV-39's hygiene: events are
    separated by blank lines; each is a C{: } comment or exactly one
    C{data: } line whose payload is one-line JSON or C{[DONE]}; no
    C{event:} or C{id:} lines; ASCII only. Returns the payloads (dicts, or
    C{"[DONE]"}), comments dropped.
    """
    data.decode("ascii")
    if data:
        testcase.assertTrue(data.endswith(b"\n\n"), data[-200:])
    events: List[Any] = []
    for block in data.split(b"\n\n")[:-1]:
        testcase.assertNotIn(b"\n", block, "multi-line event")
        testcase.assertNotIn(b"\r", block)
        if block.startswith(b": "):
            continue
        testcase.assertTrue(block.startswith(b"data: "), block[:80])
        payload = block[len(b"data: "):]
        testcase.assertTrue(payload, "empty data line")
        if payload == b"[DONE]":
            events.append(DONE)
        else:
            parsed = json.loads(payload)
            testcase.assertIsInstance(parsed, dict)
            events.append(parsed)
    return events


def check_stream(testcase: SynchronousTestCase, events: List[Any], success: bool,
                 object_name: str = "chat.completion.chunk", include_usage: bool = False) -> None:
    """
    Stream-level rules: C{[DONE]} only as the last event of a successful
    stream, an error event only as the last event of a failed one, every
    chunk repeating the stream's id/object/created/model.
    """
    expected_id = ID if object_name == "chat.completion.chunk" else CMPL_ID
    if success:
        testcase.assertEqual(events[-1], DONE)
        testcase.assertEqual(events.count(DONE), 1)
        body = events[:-1]
    else:
        testcase.assertNotIn(DONE, events)
        testcase.assertIn("error", events[-1])
        body = events[:-1]
    for chunk in body:
        testcase.assertNotIn("error", chunk)
        testcase.assertEqual(chunk["id"], expected_id)
        testcase.assertEqual(chunk["object"], object_name)
        testcase.assertEqual(chunk["created"], CREATED)
        testcase.assertEqual(chunk["model"], MODEL)
        if include_usage:
            testcase.assertIn("usage", chunk)
        else:
            testcase.assertNotIn("usage", chunk)
        if chunk["choices"]:
            testcase.assertEqual(len(chunk["choices"]), 1)
            testcase.assertEqual(chunk["choices"][0]["index"], 0)
            testcase.assertIn("logprobs", chunk["choices"][0])
            testcase.assertIn("finish_reason", chunk["choices"][0])
            if include_usage:
                testcase.assertIsNone(chunk["usage"])
        else:
            testcase.assertTrue(include_usage)
            testcase.assertIsNotNone(chunk["usage"])


def deltas(events: List[Any]) -> List[Any]:
    return [e["choices"][0]["delta"] for e in events if e != DONE and e.get("choices")]


def reasons(events: List[Any]) -> List[Any]:
    return [e["choices"][0]["finish_reason"] for e in events if e != DONE and e.get("choices")]


def chunk_bytes(choices: list, include_usage: bool = False, usage: Any = None,
                object_name: str = "chat.completion.chunk", cid: str = ID) -> bytes:
    """
    The reference rendering: C{json.dumps} of the full chunk object.
    """
    obj: Dict[str, Any] = {"id": cid, "object": object_name, "created": CREATED,
                           "model": MODEL, "choices": choices}
    if include_usage:
        obj["usage"] = usage
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode() + b"\n\n"


def choice(delta: dict, finish_reason: Optional[str] = None, logprobs: Any = None) -> dict:
    return {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}


class StreamTestCase(SynchronousTestCase):
    """
    Helpers: translate a body in every chunking and insist on one answer.
    """

    def translate(self, body: bytes, make: Callable[[], Any] = chat_translator,
                  exhaustive: bool = True) -> bytes:
        """
        Translate C{body} in every chunking (and, for bodies of up to 4 KiB,
        every two-piece split when C{exhaustive}); all must give the same
        bytes, which are returned.
        """
        results = {}
        for name, chunking in CHUNKINGS.items():
            results[name] = run(make(), chunking(body))
        if exhaustive and len(body) <= 4096:
            for pieces in two_piece_splits(body):
                results["split at %d" % len(pieces[0])] = run(make(), pieces)
        reference = results["whole"]
        for name, out in results.items():
            self.assertEqual(out, reference, "chunking %s differs" % (name,))
        return reference

    def events(self, body: bytes, success: bool = True, include_usage: bool = False,
               make: Optional[Callable[[], Any]] = None, **kwargs: Any) -> List[Any]:
        if make is None:
            def make() -> Any:
                return chat_translator(include_usage, **kwargs)
        events = parse_sse(self, self.translate(body, make))
        check_stream(self, events, success, include_usage=include_usage)
        return events


class SequenceTests(StreamTestCase):
    """
    The successful sequence of section 7: role chunk, payload chunks,
    finish chunk, optional usage chunk, C{[DONE]}.
    """

    TV21 = ndjson(
        chat_line("Hel"),
        chat_line("lo"),
        final("stop", prompt_eval_count=5, eval_count=2),
    )

    def test_tv21_basic_stream(self):
        """
        TV-21: role chunk, one content chunk per native token, a finish
        chunk with an empty delta, then C{[DONE]}; byte-identical to
        C{json.dumps} of the reference's chunk objects.
        """
        out = self.translate(self.TV21)
        self.assertEqual(
            out,
            chunk_bytes([choice(ROLE_DELTA)])
            + chunk_bytes([choice({"content": "Hel"})])
            + chunk_bytes([choice({"content": "lo"})])
            + chunk_bytes([choice({}, "stop")])
            + b"data: [DONE]\n\n",
        )
        events = parse_sse(self, out)
        check_stream(self, events, True)
        # No role after the first chunk, no empty content besides it.
        self.assertEqual([d for d in deltas(events) if "role" in d], [ROLE_DELTA])
        self.assertEqual([d for d in deltas(events)[1:] if d.get("content") == ""], [])

    def test_tv22_usage(self):
        """
        TV-22: with C{include_usage}, every earlier chunk carries
        C{"usage": null} and a C{"choices": []} usage chunk precedes
        C{[DONE]}.
        """
        out = self.translate(self.TV21, lambda: chat_translator(True))
        self.assertEqual(
            out,
            chunk_bytes([choice(ROLE_DELTA)], True)
            + chunk_bytes([choice({"content": "Hel"})], True)
            + chunk_bytes([choice({"content": "lo"})], True)
            + chunk_bytes([choice({}, "stop")], True)
            + chunk_bytes([], True, {"prompt_tokens": 5, "completion_tokens": 2,
                                     "total_tokens": 7})
            + b"data: [DONE]\n\n",
        )
        check_stream(self, parse_sse(self, out), True, include_usage=True)

    def test_cached_tokens(self):
        """
        C{prompt_eval_cached_count} becomes
        C{usage.prompt_tokens_details.cached_tokens}.
        """
        events = self.events(
            ndjson(final(prompt_eval_count=9, eval_count=1, prompt_eval_cached_count=4)),
            include_usage=True,
        )
        self.assertEqual(events[-2]["usage"], {
            "prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10,
            "prompt_tokens_details": {"cached_tokens": 4}})

    def test_tv23_tool_calls(self):
        """
        TV-23: each native tool call becomes one complete delta with a
        running index, its id, type and name, and string arguments; the
        finish reason is C{tool_calls}.
        """
        body = ndjson(
            chat_line("", tool_calls=[native_call("get_weather", {"city": "Tokyo"}, "call_a1", 0)]),
            chat_line("", tool_calls=[native_call("get_time", {"tz": "JST"}, "call_b2", 1)]),
            final("stop"),
        )
        events = self.events(body)
        got = deltas(events)
        self.assertEqual(got[0], ROLE_DELTA)
        calls = [d["tool_calls"] for d in got[1:3]]
        self.assertEqual([len(c) for c in calls], [1, 1])
        self.assertEqual(
            [(c[0]["index"], c[0]["id"], c[0]["type"], c[0]["function"]["name"])
             for c in calls],
            [(0, "call_a1", "function", "get_weather"), (1, "call_b2", "function", "get_time")],
        )
        self.assertEqual(
            [json.loads(c[0]["function"]["arguments"]) for c in calls],
            [{"city": "Tokyo"}, {"tz": "JST"}],
        )
        self.assertEqual(got[3], {})
        self.assertEqual(reasons(events), [None, None, None, "tool_calls"])
        self.assertEqual(len(events), 5)

    def test_tool_call_chunk_bytes(self):
        """
        A tool-call chunk is byte-identical to C{json.dumps} of its object.
        """
        body = ndjson(chat_line("", tool_calls=[native_call("f", {"q": "é"}, "call_x")]))
        t = chat_translator()
        t.start()
        arguments = json.dumps({"q": "é"}, ensure_ascii=False, separators=(",", ":"))
        self.assertEqual(
            t.feed(body),
            chunk_bytes([choice({"tool_calls": [{"index": 0, "id": "call_x", "type": "function",
                                                 "function": {"name": "f",
                                                              "arguments": arguments}}]})]),
        )

    def test_e20_tool_calls_without_ids(self):
        """
        E20: calls without an id get a minted one; indexes are the
        gateway's running count whatever the upstream said, also for
        several calls on one line and a call on the final line.
        """
        body = ndjson(
            chat_line("", tool_calls=[native_call("a", {}, index=7), native_call("b", {"x": 1})]),
            chat_line("", tool_calls=[native_call("c", {}, index=0)], done=True,
                      done_reason="stop"),
        )
        events = self.events(body)
        calls = [d["tool_calls"][0] for d in deltas(events) if "tool_calls" in d]
        self.assertEqual([c["index"] for c in calls], [0, 1, 2])
        self.assertEqual([c["function"]["name"] for c in calls], ["a", "b", "c"])
        self.assertEqual([c["id"] for c in calls],
                         ["call_minted1", "call_minted2", "call_minted3"])
        self.assertEqual(reasons(events)[-1], "tool_calls")

    def test_tv24_thinking(self):
        """
        TV-24: thinking becomes C{reasoning_content} deltas; a line with
        both gives the reasoning chunk first, then the content chunk.
        """
        body = ndjson(
            chat_line("", thinking="Add "),
            chat_line("4", thinking="them."),
            final("stop"),
        )
        events = self.events(body)
        self.assertEqual(deltas(events), [
            ROLE_DELTA,
            {"reasoning_content": "Add "},
            {"reasoning_content": "them."},
            {"content": "4"},
            {},
        ])
        self.assertEqual(reasons(events)[-1], "stop")

    def test_reasoning_field_choices(self):
        """
        E14: the reasoning key is configurable: C{reasoning}, both keys, or
        none at all (thinking dropped, no empty chunk left behind).
        """
        body = ndjson(chat_line("", thinking="hmm"), chat_line("ok"), final())
        self.assertEqual(deltas(self.events(body, reasoning_field="reasoning"))[1],
                         {"reasoning": "hmm"})
        self.assertEqual(deltas(self.events(body, reasoning_field="both"))[1],
                         {"reasoning_content": "hmm", "reasoning": "hmm"})
        self.assertEqual(deltas(self.events(body, reasoning_field="none")),
                         [ROLE_DELTA, {"content": "ok"}, {}])

    def test_reasoning_chunk_bytes(self):
        """
        Reasoning chunks with both keys are byte-identical to C{json.dumps}.
        """
        t = chat_translator(True, reasoning_field="both")
        t.start()
        self.assertEqual(
            t.feed(ndjson(chat_line("", thinking="\u2028 é"))),
            chunk_bytes([choice({"reasoning_content": "\u2028 é", "reasoning": "\u2028 é"})],
                        True),
        )

    def test_unknown_reasoning_field(self):
        """
        An unknown reasoning field name is refused at construction.
        """
        self.assertRaises(ValueError, chat_translator, reasoning_field="thoughts")

    def test_tv28_length_beats_tool_calls(self):
        """
        TV-28 / E5: a tool call followed by C{done_reason: length} finishes
        with C{length}.
        """
        body = ndjson(chat_line("", tool_calls=[native_call("f", {})]), final("length"))
        self.assertEqual(reasons(self.events(body))[-1], "length")

    def test_tv29_empty_completion(self):
        """
        TV-29 / E2: only a final line gives exactly role chunk, finish chunk
        (C{stop}) and C{[DONE]}.
        """
        events = self.events(ndjson(final("stop")))
        self.assertEqual(len(events), 3)
        self.assertEqual(deltas(events), [ROLE_DELTA, {}])
        self.assertEqual(reasons(events), [None, "stop"])

    def test_e1_only_reasoning_then_length(self):
        """
        E1: a thinking model cut by C{num_predict} gives reasoning chunks
        and finish C{length}, no empty content chunk.
        """
        events = self.events(ndjson(chat_line("", thinking="long"), final("length")))
        self.assertEqual(deltas(events), [ROLE_DELTA, {"reasoning_content": "long"}, {}])
        self.assertEqual(reasons(events)[-1], "length")

    def test_e3_empty_payloads(self):
        """
        E3: lines with empty content and thinking, an empty tool-call list,
        or no message at all, produce no chunk.
        """
        body = ndjson(
            chat_line("", thinking=""),
            chat_line("", tool_calls=[]),
            {"model": MODEL, "done": False},
            {"model": MODEL, "message": None, "done": False},
            {"model": MODEL, "message": "text", "done": False},
            final("stop"),
        )
        self.assertEqual(deltas(self.events(body)), [ROLE_DELTA, {}])

    def test_missing_message_on_final_line(self):
        """
        A final line without C{message} (older docs) still finishes the
        stream with its usage.
        """
        events = self.events(
            ndjson(chat_line("hi"), {"done": True, "done_reason": "stop", "eval_count": 3}),
            include_usage=True,
        )
        self.assertEqual(deltas(events), [ROLE_DELTA, {"content": "hi"}, {}])
        self.assertEqual(events[-2]["usage"]["completion_tokens"], 3)

    def test_payload_on_final_line(self):
        """
        Content on the C{done: true} line is sent before the finish chunk.
        """
        events = self.events(ndjson(chat_line("last", done=True, done_reason="stop")))
        self.assertEqual(deltas(events), [ROLE_DELTA, {"content": "last"}, {}])

    def test_e4_non_openai_done_reasons(self):
        """
        E4: C{load}, C{unload}, unknown, empty or missing C{done_reason}
        become C{stop} (or C{tool_calls} after a tool call), never
        themselves.
        """
        for reason in ["load", "unload", "weird", "", None]:
            self.assertEqual(reasons(self.events(ndjson(final(reason))))[-1], "stop")
            body = ndjson(chat_line("", tool_calls=[native_call("f", {})]), final(reason))
            self.assertEqual(reasons(self.events(body))[-1], "tool_calls")

    def test_done_must_be_true(self):
        """
        Only C{"done": true} ends the stream; a truthy non-boolean does not.
        """
        t = chat_translator()
        events = parse_sse(self, run(t, [ndjson({"message": {"content": "x"}, "done": "yes"})]))
        self.assertEqual(events[-1]["error"]["message"],
                         "upstream closed the stream before completion")

    def test_logprobs_attached(self):
        """
        Native logprobs are converted as in section 6.1 and attached to the
        content chunk of their line; chunks without them have
        C{logprobs: null}.
        """
        native = [{"token": "Hi", "logprob": -0.5,
                   "top_logprobs": [{"token": "Hi", "logprob": -0.5}]}]
        converted = {"content": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105],
                                  "top_logprobs": [{"token": "Hi", "logprob": -0.5,
                                                    "bytes": [72, 105]}]}]}
        t = chat_translator()
        t.start()
        self.assertEqual(
            t.feed(ndjson(chat_line("Hi", thinking="t", logprobs=native))),
            chunk_bytes([choice({"reasoning_content": "t"})])
            + chunk_bytes([choice({"content": "Hi"}, logprobs=converted)]),
        )
        t2 = chat_translator()
        t2.start()
        self.assertEqual(
            t2.feed(ndjson(chat_line("", thinking="t", logprobs=native))),
            chunk_bytes([choice({"reasoning_content": "t"}, logprobs=converted)]),
        )

    def test_logprobs_without_text(self):
        """
        A line that carries only logprobs (Ollama's tool-call parser
        buffering, or the done line) still delivers them, on an empty delta,
        so the stream agrees with the non-streaming answer.
        """
        native = [{"token": "<tool", "logprob": -0.1}]
        converted = {"content": [{"token": "<tool", "logprob": -0.1,
                                  "bytes": list(b"<tool"), "top_logprobs": []}]}
        t = chat_translator()
        t.start()
        self.assertEqual(
            t.feed(ndjson(chat_line("", logprobs=native))),
            chunk_bytes([choice({}, logprobs=converted)]),
        )
        events = self.events(ndjson(chat_line("", logprobs=native),
                                    dict(final("stop"), logprobs=native)))
        carried = [e["choices"][0]["logprobs"] for e in events
                   if e != DONE and e["choices"][0]["logprobs"]]
        self.assertEqual(carried, [converted, converted])

    def test_role_chunk_once(self):
        """
        C{start} gives the role chunk once; a second call gives nothing.
        """
        t = chat_translator()
        self.assertEqual(t.start(), chunk_bytes([choice(ROLE_DELTA)]))
        self.assertEqual(t.start(), b"")

    def test_lines_after_done_ignored(self):
        """
        Anything after the C{done: true} line, in the same read or later,
        is ignored, and C{end} adds nothing.
        """
        t = chat_translator()
        out = run(t, [ndjson(final("stop"), chat_line("late")) + b"garbage", b"{more\n"])
        self.assertEqual(deltas(parse_sse(self, out)), [ROLE_DELTA, {}])
        self.assertTrue(t.finished)
        self.assertEqual(t.feed(ndjson(chat_line("x"))), b"")
        self.assertEqual(t.end(), b"")
        self.assertEqual(t.fail("late"), b"")

    def test_state_after_success(self):
        """
        After C{[DONE]}: C{finished}, outcome C{complete}, the final usage,
        and a count of every data event sent.
        """
        t = chat_translator(True)
        self.assertIsNone(t.outcome)
        self.assertFalse(t.finished)
        out = run(t, [self.TV21])
        self.assertTrue(t.finished)
        self.assertEqual(t.outcome, "complete")
        self.assertIsNone(t.error_message)
        self.assertEqual(t.final_usage, {"prompt_tokens": 5, "completion_tokens": 2,
                                         "total_tokens": 7})
        self.assertEqual(t.chunks, out.count(b"data: "))
        self.assertEqual(t.chunks, 6)

    def test_non_ascii_content(self):
        """
        Non-ASCII text, emoji, U+2028 and quotes survive the round trip,
        whatever the read boundaries inside their UTF-8 bytes.
        """
        text = 'Grüße 😀 "q" \\ \u2028\u2029 \n end'
        events = self.events(ndjson(chat_line(text[:9]), chat_line(text[9:]), final()))
        self.assertEqual("".join(d.get("content", "") for d in deltas(events)), text)

    def test_crlf_stream(self):
        """
        A CRLF-terminated upstream stream translates like an LF one.
        """
        lf = self.translate(self.TV21)
        crlf = self.translate(self.TV21.replace(b"\n", b"\r\n"))
        self.assertEqual(crlf, lf)

    def test_blank_lines_ignored(self):
        """
        Empty lines between NDJSON objects are ignored.
        """
        body = b"\n" + self.TV21.replace(b"\n", b"\n\n")
        self.assertEqual(self.translate(body, exhaustive=False), self.translate(self.TV21))

    def test_large_line(self):
        """
        E21: a content line of more than 8 MiB passes intact when read in
        64 KiB pieces.
        """
        text = "x" * (MIN_LINE_LIMIT + 1000)
        body = ndjson(chat_line(text), final())
        t = chat_translator()
        events = parse_sse(self, run(t, fixed(64 * 1024)(body)))
        check_stream(self, events, True)
        self.assertEqual(deltas(events)[1], {"content": text})

    def test_e23_single_json_object(self):
        """
        E23: a body that is one JSON object without a newline (the upstream
        answered C{application/json}) is translated at the end of the body
        into the full sequence.
        """
        body = json.dumps(chat_line("Hello!", thinking="User greets me.", done=True,
                                    done_reason="stop", prompt_eval_count=26,
                                    eval_count=282)).encode()
        events = self.events(body, include_usage=True)
        self.assertEqual(deltas(events), [ROLE_DELTA, {"reasoning_content": "User greets me."},
                                          {"content": "Hello!"}, {}])
        self.assertEqual(events[-2]["usage"]["total_tokens"], 308)

    def test_final_line_without_newline(self):
        """
        A stream whose final C{done} line lacks its newline still completes.
        """
        body = self.TV21[:-1]
        self.assertEqual(self.translate(body), self.translate(self.TV21))


class FailureTests(StreamTestCase):
    """
    Every failure ends the stream with one error event and no C{[DONE]};
    nothing is sent after it.
    """

    def assertFailed(self, events: List[Any], message: str, code: Optional[str] = None) -> None:
        self.assertEqual(events[-1], {"error": {"message": message, "type": "server_error",
                                                "param": None, "code": code}})

    def test_tv25_mid_stream_error(self):
        """
        TV-25 / E6: a native C{{"error": ...}} line becomes an error event
        with a stable text (Ollama's own is kept for the log only); no
        finish chunk, no C{[DONE]}.
        """
        body = ndjson(chat_line("Par"),
                      {"error": "an error was encountered while running the model"},
                      final())
        events = self.events(body, success=False)
        self.assertEqual(deltas(events), [ROLE_DELTA, {"content": "Par"}])
        self.assertFailed(events, "the model server failed during generation", "upstream_error")

    def test_error_wins_over_payload(self):
        """
        A line with a non-empty C{error} fails even if it also has content
        or C{done: true}.
        """
        events = self.events(ndjson(chat_line("x", done=True, error="broke")), success=False)
        self.assertEqual(deltas(events), [ROLE_DELTA])
        self.assertFailed(events, "the model server failed during generation", "upstream_error")

    def test_error_object_and_empty_error(self):
        """
        An error given as an object uses its message; an empty C{error}
        is not a failure.
        """
        t = chat_translator()
        events = parse_sse(self, run(t, [ndjson({"error": {"message": "inner"}})]))
        self.assertFailed(events, "the model server failed during generation", "upstream_error")
        self.assertEqual(t.upstream_error, "inner")
        events = self.events(ndjson(chat_line("a", error=""), final()))
        self.assertEqual(deltas(events)[1], {"content": "a"})

    def test_long_error_trimmed(self):
        """
        An enormous upstream error text is never echoed, and is cut for
        the log.
        """
        t = chat_translator()
        events = parse_sse(self, run(t, [ndjson({"error": "e" * 100000})]))
        self.assertEqual(events[-1]["error"]["message"], "the model server failed during generation")
        self.assertLess(len(t.upstream_error), 3000)
        self.assertTrue(t.upstream_error.startswith("eee"))

    def test_tv27_cut_without_done(self):
        """
        TV-27: a body that ends without C{done: true} ends with the error
        C{upstream closed the stream before completion}.
        """
        events = self.events(ndjson(chat_line("Par")), success=False)
        self.assertEqual(deltas(events), [ROLE_DELTA, {"content": "Par"}])
        self.assertFailed(events, "upstream closed the stream before completion")

    def test_cut_mid_line(self):
        """
        A body cut in the middle of a line reports invalid JSON for the
        fragment.
        """
        body = ndjson(chat_line("Par"), final())[:-20]
        events = self.events(body, success=False)
        self.assertFailed(events, "upstream sent invalid JSON")

    def test_cut_after_complete_unterminated_line(self):
        """
        A final unterminated line that is valid but not C{done} is
        translated, then the stream fails as cut.
        """
        events = self.events(ndjson(chat_line("a"), chat_line("b"))[:-1], success=False)
        self.assertEqual(deltas(events), [ROLE_DELTA, {"content": "a"}, {"content": "b"}])
        self.assertFailed(events, "upstream closed the stream before completion")

    def test_invalid_json(self):
        """
        Unparseable lines, invalid UTF-8, NaN and non-object JSON values all
        fail the stream with C{upstream sent invalid JSON}, after the chunks
        of the lines before them.
        """
        for bad in [b"{nope", b"\xff\xfe{}", b'{"done": NaN}', b"[1,2]", b'"text"', b"42",
                    b"null", b"[" * 100000]:
            events = self.events(ndjson(chat_line("ok")) + bad + b"\n" + ndjson(final()),
                                 success=False)
            self.assertEqual(deltas(events), [ROLE_DELTA, {"content": "ok"}], bad[:20])
            self.assertFailed(events, "upstream sent invalid JSON")

    def test_oversized_line(self):
        """
        A line over C{max_line} fails the stream cleanly, whether its
        newline arrived or not; lines before it in the same read are still
        translated.
        """
        for tail in [b"\n", b""]:
            body = ndjson(chat_line("ok")) + b'{"x":"' + b"a" * 300 + b'"}' + tail
            t = chat_translator(max_line=200)
            events = parse_sse(self, run(t, [body]))
            check_stream(self, events, False)
            self.assertEqual(deltas(events), [ROLE_DELTA, {"content": "ok"}])
            self.assertFailed(events, "upstream sent an oversized line")
            self.assertEqual(t.feed(ndjson(final())), b"")

    def test_oversized_line_default_limit(self):
        """
        With an 8 MiB limit, a longer line arriving in pieces fails as soon
        as the limit is passed, and holds nothing afterwards.
        """
        t = chat_translator(max_line=MIN_LINE_LIMIT)
        t.start()
        piece = b"a" * (1024 * 1024)
        outs = [t.feed(b'{"x":"')] + [t.feed(piece) for _ in range(7)]
        self.assertEqual(t.buffered, 6 + 7 * len(piece))
        self.assertEqual(b"".join(outs), b"")
        outs.append(t.feed(piece))
        self.assertIn(b"oversized", outs[-1])
        self.assertEqual(t.feed(piece), b"")
        events = parse_sse(self, b"".join(outs))
        self.assertFailed(events, "upstream sent an oversized line")
        self.assertEqual(t.buffered, 0)

    def test_fail(self):
        """
        A gateway-side failure (a timeout) gives one error event with the
        given code, no C{[DONE]}, and ends the stream.
        """
        t = chat_translator()
        out = run(t, [ndjson(chat_line("a"))], end=False)
        out += t.fail("upstream timeout: no data for 300 s", code="upstream_timeout")
        events = parse_sse(self, out)
        check_stream(self, events, False)
        self.assertFailed(events, "upstream timeout: no data for 300 s", "upstream_timeout")
        self.assertEqual((t.outcome, t.error_message),
                         ("error", "upstream timeout: no data for 300 s"))
        self.assertIsNone(t.final_usage)

    def test_nothing_after_error(self):
        """
        After an error event, C{feed}, C{end} and C{fail} return nothing
        and the state stays C{error}.
        """
        t = chat_translator()
        run(t, [ndjson({"error": "x"})], end=False)
        self.assertEqual((t.finished, t.outcome, t.error_message), (True, "error", "the model server failed during generation"))
        chunks = t.chunks
        self.assertEqual(t.feed(ndjson(chat_line("more"), final())), b"")
        self.assertEqual(t.end(), b"")
        self.assertEqual(t.fail("again"), b"")
        self.assertEqual(t.start(), b"")
        self.assertEqual((t.outcome, t.error_message, t.chunks), ("error", "the model server failed during generation", chunks))


class PropertyTests(SynchronousTestCase):
    """
    For any texts and any chunking, nothing is lost, reordered or changed.
    """

    TEXT = st.text(
        st.one_of(
            st.characters(blacklist_categories=("Cs",)),
            st.sampled_from(["\u2028", "\u2029", "😀", "é", "\n", "\r", '"', "\\", "\x00"]),
        ),
        max_size=12,
    )
    LINE = st.fixed_dictionaries({
        "content": TEXT,
        "thinking": TEXT,
        "calls": st.lists(
            st.tuples(TEXT, st.dictionaries(TEXT, st.one_of(TEXT, st.integers()), max_size=3)),
            max_size=2,
        ),
    })

    @given(
        st.lists(LINE, max_size=6),
        st.sampled_from(["stop", "length", "load", "", None]),
        st.lists(st.integers(min_value=0, max_value=3000), max_size=30),
        st.booleans(),
    )
    @settings(max_examples=200, deadline=None)
    def test_roundtrip(self, lines, done_reason, cuts, include_usage):
        """
        Concatenated content deltas equal the upstream content, reasoning
        deltas the upstream thinking, tool calls keep their order with
        indexes 0..n-1, the finish reason follows section 6.3, and the
        events are identical whatever the read boundaries.
        """
        objects = []
        for line in lines:
            calls = [native_call(name, args) for name, args in line["calls"]]
            objects.append(chat_line(line["content"], thinking=line["thinking"],
                                     tool_calls=calls or None))
        objects.append(final(done_reason, eval_count=3))
        body = ndjson(*objects)
        bounds = sorted({c for c in cuts if c < len(body)} | {0, len(body)})
        pieces = [body[a:b] for a, b in zip(bounds, bounds[1:])]

        chunked = run(chat_translator(include_usage), pieces)
        whole = run(chat_translator(include_usage), [body])
        self.assertEqual(chunked, whole)

        events = parse_sse(self, chunked)
        check_stream(self, events, True, include_usage=include_usage)
        got = deltas(events)
        self.assertEqual(got[0], ROLE_DELTA)
        self.assertEqual("".join(d.get("content", "") for d in got[1:]),
                         "".join(line["content"] for line in lines))
        self.assertEqual("".join(d.get("reasoning_content", "") for d in got),
                         "".join(line["thinking"] for line in lines))
        # No empty payload chunks (E3): every middle delta carries something.
        for d in got[1:-1]:
            self.assertEqual(len(d), 1)
            self.assertTrue(list(d.values())[0])
        calls = [d["tool_calls"] for d in got if "tool_calls" in d]
        expected = [c for line in lines for c in line["calls"]]
        self.assertEqual([len(c) for c in calls], [1] * len(expected))
        self.assertEqual([c[0]["index"] for c in calls], list(range(len(expected))))
        self.assertEqual(
            [(c[0]["function"]["name"], json.loads(c[0]["function"]["arguments"]))
             for c in calls],
            expected,
        )
        want = "length" if done_reason == "length" else ("tool_calls" if expected else "stop")
        self.assertEqual(reasons(events)[-1], want)


class CompletionStreamTests(StreamTestCase):
    """
    C{/v1/completions} streams: C{text_completion} chunks, no role chunk,
    a final C{text: ""} chunk with the finish reason.
    """

    BODY = ndjson(
        {"model": MODEL, "response": "Hi", "thinking": "ignored", "done": False},
        {"model": MODEL, "response": "", "done": False},
        {"model": MODEL, "response": "!", "done": False},
        {"model": MODEL, "response": "", "done": True, "done_reason": "length",
         "prompt_eval_count": 3, "eval_count": 2},
    )

    def cchoice(self, text: str, finish_reason: Optional[str] = None, logprobs: Any = None) -> dict:
        return {"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish_reason}

    def cchunk(self, choices: list, include_usage: bool = False, usage: Any = None) -> bytes:
        return chunk_bytes(choices, include_usage, usage, "text_completion", CMPL_ID)

    def test_sequence(self):
        """
        Text deltas, then C{text: ""} with the finish reason, then C{[DONE]};
        thinking and empty responses produce nothing; byte-identical to
        C{json.dumps} of the chunk objects.
        """
        out = self.translate(self.BODY, completion_translator)
        self.assertEqual(
            out,
            self.cchunk([self.cchoice("Hi")])
            + self.cchunk([self.cchoice("!")])
            + self.cchunk([self.cchoice("", "length")])
            + b"data: [DONE]\n\n",
        )
        check_stream(self, parse_sse(self, out), True, "text_completion")

    def test_usage(self):
        """
        With C{include_usage}, chunks carry C{usage: null} and a
        C{choices: []} usage chunk precedes C{[DONE]}.
        """
        t = completion_translator(True)
        self.assertEqual(t.start(), b"")
        out = run(t, [self.BODY])
        self.assertEqual(
            out,
            self.cchunk([self.cchoice("Hi")], True)
            + self.cchunk([self.cchoice("!")], True)
            + self.cchunk([self.cchoice("", "length")], True)
            + self.cchunk([], True, {"prompt_tokens": 3, "completion_tokens": 2,
                                     "total_tokens": 5})
            + b"data: [DONE]\n\n",
        )
        self.assertEqual((t.outcome, t.chunks), ("complete", 5))
        self.assertEqual(t.final_usage["total_tokens"], 5)

    def test_logprobs(self):
        """
        Native logprobs become the legacy completions shape on their chunk.
        """
        t = completion_translator()
        out = t.feed(ndjson({"response": "Hi", "done": False,
                             "logprobs": [{"token": "Hi", "logprob": -0.25}]}))
        self.assertEqual(out, self.cchunk([self.cchoice("Hi", logprobs={
            "tokens": ["Hi"], "token_logprobs": [-0.25], "top_logprobs": [{}],
            "text_offset": [0]})]))

    def test_text_offset_keeps_counting(self):
        """
        C{text_offset} continues across chunks, as in the non-streaming
        answer, instead of restarting at 0 in every chunk.
        """
        t = completion_translator()
        out = t.feed(ndjson(
            {"response": "Hi", "done": False,
             "logprobs": [{"token": "H", "logprob": -0.25}, {"token": "i", "logprob": -0.5}]},
            {"response": " there", "done": False,
             "logprobs": [{"token": " there", "logprob": -0.1}]},
            {"response": "", "done": False, "logprobs": [{"token": "!", "logprob": -0.2}]},
        ))
        offsets = [e["choices"][0]["logprobs"]["text_offset"] for e in parse_sse(self, out)]
        self.assertEqual(offsets, [[0, 1], [2], [8]])

    def test_failures(self):
        """
        Errors and cuts end a completions stream the same way as chat.
        """
        for body, message in [
            (ndjson({"response": "a", "done": False}, {"error": "boom"}), "the model server failed during generation"),
            (ndjson({"response": "a", "done": False}),
             "upstream closed the stream before completion"),
            (b"{bad\n", "upstream sent invalid JSON"),
        ]:
            events = parse_sse(self, self.translate(body, completion_translator))
            check_stream(self, events, False, "text_completion")
            self.assertEqual(events[-1]["error"]["message"], message)


def _openai() -> Any:
    try:
        import openai
        from openai import _base_client
    except ImportError:
        raise SkipTest("the openai package is not installed")
    httpx = getattr(_base_client, "httpx", None) or getattr(_base_client, "httpx2", None)
    if httpx is None or not hasattr(httpx, "MockTransport"):
        raise SkipTest("cannot find the openai SDK's HTTP library")
    return openai, httpx


class OpenAISdkTests(SynchronousTestCase):
    """
    The official SDK, over an in-memory HTTP transport, reads our streams
    as the reference says it must (section 3.7).
    """

    def client(self, body: bytes, strict: bool = True) -> Any:
        """
        An SDK client whose every request is answered with C{body}; strict
        validation makes a missing required field fail the test.
        """
        openai, httpx = _openai()

        def handler(request: Any) -> Any:
            return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  content=body)

        return openai.OpenAI(
            api_key="k", base_url="http://gateway.invalid/v1", max_retries=0,
            http_client=httpx.Client(transport=httpx.MockTransport(handler)),
            _strict_response_validation=strict,
        )

    def test_decoder_byte_by_byte(self):
        """
        The SDK's own SSE decoder, fed our output one byte at a time, finds
        exactly the events our parser finds.
        """
        _openai()
        from openai._streaming import SSEDecoder

        out = run(chat_translator(True), [SequenceTests.TV21])
        sdk = [s.data for s in SSEDecoder().iter_bytes(out[i:i + 1] for i in range(len(out)))]
        ours = [e if e == DONE else json.loads(json.dumps(e)) for e in parse_sse(self, out)]
        self.assertEqual([d if d == DONE else json.loads(d) for d in sdk], ours)
        self.assertTrue(all(s.event is None and s.id is None
                            for s in SSEDecoder().iter_bytes([out])))

    def test_chat_stream(self):
        """
        With strict validation, the chunks parse; content and usage come
        through.
        """
        openai, _ = _openai()
        body = run(chat_translator(True), [SequenceTests.TV21])
        stream = self.client(body).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True})
        chunks = list(stream)
        self.assertEqual("".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
                         "Hello")
        self.assertEqual(chunks[-1].usage.total_tokens, 7)
        self.assertEqual(chunks[-2].choices[0].finish_reason, "stop")

    def test_tv23_stream_helper(self):
        """
        TV-23 SDK check: the stream helper's final completion has two tool
        calls with ids C{call_a1} and C{call_b2}, not concatenated, and a
        single C{assistant} role.
        """
        body = run(chat_translator(), [ndjson(
            chat_line("", tool_calls=[native_call("get_weather", {"city": "Tokyo"}, "call_a1")]),
            chat_line("", tool_calls=[native_call("get_time", {"tz": "JST"}, "call_b2")]),
            final("stop"),
        )])
        client = self.client(body)
        with client.chat.completions.stream(
                model=MODEL, messages=[{"role": "user", "content": "hi"}]) as stream:
            completion = stream.get_final_completion()
        message = completion.choices[0].message
        self.assertEqual(message.role, "assistant")
        self.assertEqual([c.id for c in message.tool_calls], ["call_a1", "call_b2"])
        self.assertEqual([c.function.name for c in message.tool_calls],
                         ["get_weather", "get_time"])
        self.assertEqual(completion.choices[0].finish_reason, "tool_calls")

    def test_tv25_error_raises(self):
        """
        TV-25 SDK check: iterating a stream with a mid-stream error raises
        C{openai.APIError} with the gateway's stable text.
        """
        openai, _ = _openai()
        body = run(chat_translator(), [ndjson(
            chat_line("Par"), {"error": "an error was encountered while running the model"})])
        stream = self.client(body).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True)
        seen = []
        with self.assertRaises(openai.APIError) as caught:
            for chunk in stream:
                seen.append(chunk.choices[0].delta.content)
        self.assertEqual(seen, ["", "Par"])
        self.assertEqual(caught.exception.message, "the model server failed during generation")

    def test_completions_stream(self):
        """
        A legacy completions stream parses as C{Completion} objects. (Not
        strictly: the SDK types C{CompletionChoice.finish_reason} as never
        null, yet it is null on every chunk but the last, as from OpenAI.)
        """
        body = run(completion_translator(True), [CompletionStreamTests.BODY])
        chunks = list(self.client(body, strict=False).completions.create(
            model=MODEL, prompt="x", stream=True, stream_options={"include_usage": True}))
        self.assertEqual("".join(c.choices[0].text for c in chunks if c.choices), "Hi!")
        self.assertEqual(chunks[-2].choices[0].finish_reason, "length")
        self.assertEqual(chunks[-1].usage.total_tokens, 5)
