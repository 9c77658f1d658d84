# -*- test-case-name: tests.translate.test_responses_stream -*-
"""
Ollama's NDJSON chat stream as OpenAI Responses server-sent events.

The C{openai} SDK's C{responses.stream} helper rebuilds the response from
the semantic events and checks their order strictly (newer versions raise
on an event for an output item that was never added, on a changed item
identity, on a completion with unfinished items). So the sequence is the
one the API documents: C{response.created}, C{response.in_progress}; per
output item C{response.output_item.added}, its parts and deltas
(C{response.reasoning_summary_part.added} /
C{response.reasoning_summary_text.delta} for Qwen3's thinking,
C{response.content_part.added} / C{response.output_text.delta} for text,
C{response.function_call_arguments.delta} / C{.done} for a tool call,
which Ollama sends whole), their C{.done} events and
C{response.output_item.done}; finally C{response.completed} (or
C{response.incomplete} at the output cap) carrying the whole response.
Every event has the next C{sequence_number}. A failure is one
C{response.failed} event whose response carries the error and the items
finished so far, and the stream ends there.

The line splitting, decoding and failure paths are the Chat Completions
stream translator's (L{qwen_twist.translate.stream}). Pure: no Twisted,
no I/O.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Optional

from qwen_twist import errors
from qwen_twist.translate.common import usage
from qwen_twist.translate.functions import AgentRequest
from qwen_twist.translate.responses import (
    final_status,
    function_call_item,
    item_id,
    message_item,
    output_text,
    reasoning_item,
    response_object,
    responses_usage,
)
from qwen_twist.translate.stream import _StreamTranslator

_encode = json.JSONEncoder(separators=(",", ":")).encode
_quote: Callable[[str], str] = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


class ResponsesStreamTranslator(_StreamTranslator):
    """
    C{/api/chat} NDJSON -> Responses events.
    """

    def __init__(
        self,
        *,
        plan: AgentRequest,
        response_id: str,
        created: int,
        new_id: Callable[[str], str] = item_id,
        max_line: int = 16 * 1024 * 1024,
    ) -> None:
        super().__init__(
            model=plan.model, completion_id=response_id, created=created,
            include_usage=False, max_line=max_line,
        )
        self.plan = plan
        self.response_id = response_id
        self.created = created
        self._new_id = new_id
        self._sequence = 0
        self._started = False
        #: Finished output items, in output order.
        self._items: List[Dict[str, Any]] = []
        #: The open item: its kind, id and text so far.
        self._open: Optional[str] = None
        self._open_id = ""
        self._text: List[str] = []
        #: A message or function call was output (else the stream ends
        #: with an empty message, as the JSON response does).
        self._answered = False
        self._delta_head = None
        self._delta_tail = ""

    # Events --------------------------------------------------------------

    def _emit(self, obj: Dict[str, Any], out: List[bytes]) -> None:
        obj["sequence_number"] = self._sequence
        self._sequence += 1
        self.chunks += 1
        out.append(b"event: %s\ndata: %s\n\n" % (
            obj["type"].encode("ascii"), _encode(obj).encode("ascii")))

    def _response(self, status: str, **kwargs: Any) -> Dict[str, Any]:
        return response_object(
            self.plan.echo, response_id=self.response_id, model=self.plan.model,
            created=self.created, status=status, **kwargs,
        )

    def _begin(self, out: List[bytes]) -> None:
        if self._started:
            return
        self._started = True
        self._emit({"type": "response.created",
                    "response": self._response("in_progress", output=[])}, out)
        self._emit({"type": "response.in_progress",
                    "response": self._response("in_progress", output=[])}, out)

    def start(self) -> bytes:
        """
        C{response.created} and C{response.in_progress}, once.
        """
        if self.finished:
            return b""
        out: List[bytes] = []
        self._begin(out)
        return b"".join(out)

    def fail(self, message: str, code: Optional[str] = None,
             error_type: Optional[str] = None) -> bytes:
        """
        The gateway gives up on the stream: C{response.failed}.
        """
        if self.finished:
            return b""
        return self._error(message, code)

    # Output items ----------------------------------------------------------

    def _index(self) -> int:
        return len(self._items)

    def _open_item(self, kind: str, item: Dict[str, Any], out: List[bytes]) -> None:
        self._open = kind
        self._open_id = item["id"]
        self._text = []
        self._delta_head: Optional[str] = None
        self._delta_tail = ""
        self._emit({"type": "response.output_item.added",
                    "output_index": self._index(), "item": item}, out)

    def _close(self, out: List[bytes]) -> None:
        kind = self._open
        if kind is None:
            return
        text = "".join(self._text)
        where = {"item_id": self._open_id, "output_index": self._index()}
        if kind == "reasoning":
            part = {"type": "summary_text", "text": text}
            self._emit(dict({"type": "response.reasoning_summary_text.done"}, **where,
                            summary_index=0, text=text), out)
            self._emit(dict({"type": "response.reasoning_summary_part.done"}, **where,
                            summary_index=0, part=part), out)
            item = reasoning_item(self._open_id, text)
        else:
            self._emit(dict({"type": "response.output_text.done"}, **where,
                            content_index=0, text=text, logprobs=[]), out)
            self._emit(dict({"type": "response.content_part.done"}, **where,
                            content_index=0, part=output_text(text)), out)
            item = message_item(self._open_id, text)
        self._emit({"type": "response.output_item.done",
                    "output_index": self._index(), "item": item}, out)
        self._items.append(item)
        self._open = None

    def _delta(self, kind: str, text: str, out: List[bytes]) -> None:
        if self._open != kind:
            self._close(out)
            where = {"output_index": self._index()}
            if kind == "reasoning":
                item = {"id": self._new_id("rs"), "type": "reasoning", "summary": []}
                self._open_item(kind, item, out)
                self._emit(dict({"type": "response.reasoning_summary_part.added"}, **where,
                                item_id=item["id"], summary_index=0,
                                part={"type": "summary_text", "text": ""}), out)
            else:
                item = message_item(self._new_id("msg"), "", status="in_progress")
                self._open_item(kind, item, out)
                self._emit(dict({"type": "response.content_part.added"}, **where,
                                item_id=item["id"], content_index=0,
                                part=output_text("")), out)
        if kind == "message":
            self._answered = True
        if not text:
            return
        self._text.append(text)
        # The hot path (one token per line): the head of this item's deltas
        # is rendered once; the output is byte-identical to _emit's.
        if self._delta_head is None:
            event = ("response.reasoning_summary_text.delta" if kind == "reasoning"
                     else "response.output_text.delta")
            index = "summary_index" if kind == "reasoning" else "content_index"
            self._delta_head = (
                'event: %s\ndata: {"type":"%s","item_id":%s,"output_index":%d,"%s":0,"delta":'
                % (event, event, _quote(self._open_id), self._index(), index)
            )
            self._delta_tail = ',"logprobs":[],' if kind == "message" else ","
        self.chunks += 1
        out.append(("%s%s%s\"sequence_number\":%d}\n\n" % (
            self._delta_head, _quote(text), self._delta_tail, self._sequence)).encode("ascii"))
        self._sequence += 1

    def _call(self, native_call: Dict[str, Any], out: List[bytes]) -> None:
        self._close(out)
        self._answered = True
        item_id_ = self._new_id("fc")
        done = function_call_item(item_id_, native_call)
        added = dict(done, status="in_progress", arguments="")
        index = self._index()
        self._emit({"type": "response.output_item.added", "output_index": index,
                    "item": added}, out)
        where = {"item_id": item_id_, "output_index": index}
        self._emit(dict({"type": "response.function_call_arguments.delta"}, **where,
                        delta=done["arguments"]), out)
        self._emit(dict({"type": "response.function_call_arguments.done"}, **where,
                        name=done["name"], arguments=done["arguments"]), out)
        self._emit({"type": "response.output_item.done", "output_index": index,
                    "item": done}, out)
        self._items.append(done)

    def _payload(self, native: Dict[str, Any], out: List[bytes]) -> None:
        self._begin(out)
        message = native.get("message")
        if not isinstance(message, dict):
            return
        thinking = message.get("thinking")
        if thinking and isinstance(thinking, str):
            self._delta("reasoning", thinking, out)
        content = message.get("content")
        if content and isinstance(content, str):
            self._delta("message", content, out)
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if isinstance(call, dict):
                    self._call(call, out)

    def _done(self, native: Dict[str, Any], out: List[bytes]) -> None:
        if not self._answered:
            # Nothing but (maybe) reasoning: the answer is an empty message,
            # as in the JSON response.
            self._delta("message", "", out)
        self._close(out)
        self.final_usage = usage(native)
        status = final_status(native.get("done_reason"))
        self._emit({
            "type": "response.completed" if status == "completed" else "response.incomplete",
            "response": self._response(status, output=list(self._items),
                                       usage=responses_usage(native)),
        }, out)
        self.finished = True
        self.outcome = "complete"
        self._splitter.flush()

    def _error(self, message: str, code: Optional[str] = None) -> bytes:
        out: List[bytes] = []
        self._begin(out)
        self.finished = True
        self.outcome = "error"
        self.error_message = message
        self._splitter.flush()
        self._emit({
            "type": "response.failed",
            "response": self._response(
                "failed", output=list(self._items),
                error=errors.responses_stream_error(message),
            ),
        }, out)
        return b"".join(out)
