# -*- test-case-name: tests.translate.test_anthropic_stream -*-
"""
Ollama's NDJSON chat stream as Anthropic Messages server-sent events.

The C{anthropic} SDK dispatches on the C{event:} line (an event without
one is skipped) and its C{messages.stream} helper rebuilds the message
from the exact sequence the API documents: C{message_start}; per content
block C{content_block_start}, C{content_block_delta}s (C{thinking_delta},
C{text_delta}, C{input_json_delta}) and C{content_block_stop}; then
C{message_delta} with the C{stop_reason} and usage, and C{message_stop}.
So a block is opened when the kind of output changes (Qwen3 thinks, then
answers, then calls tools) and closed before the next one opens; a native
tool call, which arrives whole, is one C{tool_use} block with one
C{input_json_delta} carrying all of its input. A failure at any point is
one C{error} event, which the SDK raises, and the stream ends without
C{message_stop}, so a cut answer is never mistaken for a complete one.
Idle intervals are filled with C{ping} events by the relay (L{PING}).

The line splitting, decoding and failure paths are the Chat Completions
stream translator's (L{qwen_twist.translate.stream}); only what each
native line becomes differs. Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Optional

from qwen_twist import errors
from qwen_twist.translate.anthropic import anthropic_usage, stop_reason, tool_use_block
from qwen_twist.translate.common import usage
from qwen_twist.translate.functions import compact_json
from qwen_twist.translate.stream import _StreamTranslator

_encode = json.JSONEncoder(separators=(",", ":")).encode
_quote: Callable[[str], str] = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]

def anthropic_event(obj: Dict[str, Any]) -> bytes:
    """
    One named event: C{event: <type>}, then the object as one line of
    compact ASCII JSON.
    """
    return b"event: %s\ndata: %s\n\n" % (
        obj["type"].encode("ascii"),
        _encode(obj).encode("ascii"),
    )


#: What an idle stream sends (model loads, long prompt evaluation).
PING = anthropic_event({"type": "ping"})


def error_event(message: str, error_type: Optional[str] = None,
                code: Optional[str] = None) -> bytes:
    """
    A mid-stream failure (L{errors.anthropic_stream_error}): the SDK raises
    it as an C{APIStatusError}.
    """
    return anthropic_event(errors.anthropic_stream_error(message, error_type, code))


class MessagesStreamTranslator(_StreamTranslator):
    """
    C{/api/chat} NDJSON -> Anthropic Messages events.
    """

    def __init__(self, *, model: str, message_id: str,
                 new_call_id: Optional[Callable[[], str]] = None,
                 max_line: int = 16 * 1024 * 1024) -> None:
        """
        @param model: the model string the client sent (echoed).
        @param message_id: the C{msg_} id of the streamed message.
        @param new_call_id: mints ids for tool calls that arrive without one.
        @param max_line: the longest NDJSON line accepted, in bytes.
        """
        super().__init__(
            model=model, completion_id=message_id, created=0, include_usage=False,
            max_line=max_line,
        )
        self.model = model
        self.message_id = message_id
        self._started = False
        #: Index of the next content block; the open block's kind, if any.
        self._index = 0
        self._open: Optional[str] = None
        self._tool_calls = 0
        self._new_call_id = new_call_id
        self._delta_head = ""

    def start(self) -> bytes:
        """
        C{message_start}, once. Ollama counts the prompt only at the end,
        so the input tokens come with C{message_delta}.
        """
        if self._started or self.finished:
            return b""
        self._started = True
        self.chunks += 1
        return anthropic_event({
            "type": "message_start",
            "message": {
                "id": self.message_id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            },
        })

    def fail(self, message: str, code: Optional[str] = None,
             error_type: Optional[str] = None) -> bytes:
        """
        The gateway gives up on the stream: one C{error} event (its type
        from C{error_type}, else from the relay's C{code}).
        """
        if self.finished:
            return b""
        return self._error(message, code, error_type)

    # Blocks ------------------------------------------------------------

    def _emit(self, obj: Dict[str, Any], out: List[bytes]) -> None:
        self.chunks += 1
        out.append(anthropic_event(obj))

    def _close_block(self, out: List[bytes]) -> None:
        if self._open is not None:
            self._emit({"type": "content_block_stop", "index": self._index}, out)
            self._index += 1
            self._open = None

    def _delta(self, kind: str, field: str, text: str, out: List[bytes]) -> None:
        if self._open != kind:
            self._close_block(out)
            block = {"type": kind, kind: ""}
            if kind == "thinking":
                block["signature"] = ""
            self._emit(
                {"type": "content_block_start", "index": self._index, "content_block": block}, out
            )
            self._open = kind
            # The hot path (one token per line): every delta of this block
            # shares its head, rendered once; byte-identical to _encode.
            self._delta_head = (
                'event: content_block_delta\ndata: {"type":"content_block_delta",'
                '"index":%d,"delta":{"type":"%s","%s":' % (self._index, field, kind)
            )
        self.chunks += 1
        out.append((self._delta_head + _quote(text) + "}}\n\n").encode("ascii"))

    def _payload(self, native: Dict[str, Any], out: List[bytes]) -> None:
        if not self._started:
            out.append(self.start())
        message = native.get("message")
        if not isinstance(message, dict):
            return
        thinking = message.get("thinking")
        if thinking and isinstance(thinking, str):
            self._delta("thinking", "thinking_delta", thinking, out)
        content = message.get("content")
        if content and isinstance(content, str):
            self._delta("text", "text_delta", content, out)
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if not isinstance(call, dict):
                    continue
                self._close_block(out)
                block = tool_use_block(call, self._new_call_id)
                arguments = block["input"]
                block["input"] = {}
                self._emit(
                    {"type": "content_block_start", "index": self._index, "content_block": block},
                    out,
                )
                self._emit(
                    {"type": "content_block_delta", "index": self._index,
                     "delta": {"type": "input_json_delta", "partial_json": compact_json(arguments)}},
                    out,
                )
                self._open = "tool_use"
                self._tool_calls += 1
        self._close_if_tool(out)

    def _close_if_tool(self, out: List[bytes]) -> None:
        if self._open == "tool_use":
            self._close_block(out)

    def _done(self, native: Dict[str, Any], out: List[bytes]) -> None:
        self._close_block(out)
        self.final_usage = usage(native)
        self._emit(
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": stop_reason(native.get("done_reason"), self._tool_calls > 0),
                    "stop_sequence": None,
                },
                "usage": anthropic_usage(native),
            },
            out,
        )
        self._emit({"type": "message_stop"}, out)
        self.finished = True
        self.outcome = "complete"
        self._splitter.flush()

    def _error(self, message: str, code: Optional[str] = None,
               error_type: Optional[str] = None) -> bytes:
        self.finished = True
        self.outcome = "error"
        self.error_message = message
        self.chunks += 1
        self._splitter.flush()
        return error_event(message, error_type, code)

