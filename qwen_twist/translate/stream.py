# -*- test-case-name: tests.translate.test_stream -*-
"""
Ollama's NDJSON stream as OpenAI server-sent events (reference section 7).

Why a translator of its own, rather than forwarding or reusing Ollama's
C{/v1} layer: an NDJSON body read by the OpenAI SDK yields zero chunks and
no error (section 1, claim B), and Ollama's compat layer repeats the role,
loses mid-stream errors and emits C{finish_reason} values outside OpenAI's
enum (section 4.2). The translators here implement section 7 step by step:
a role chunk first, then per native line a reasoning chunk, a content chunk
and one complete chunk per tool call (C{id} and C{name} exactly once, so the
SDK's delta accumulator does not concatenate them), nothing for empty
payloads (E3), a separate finish chunk, the usage chunk (C{choices: []})
when asked for, and C{[DONE]} only after a C{done: true} line. Every
failure becomes one error event in the OpenAI envelope and the stream ends
without C{[DONE]}, so clients can tell a truncated answer from a complete
one.

This is the gateway's hot path: one call per upstream read, usually one
token. The fixed part of every chunk (C{id}, C{object}, C{created},
C{model}, the choice scaffolding) is rendered once per stream, so a content
chunk costs one C{json.loads} of the native line, one string escape and a
concatenation. The output is byte-identical to C{json.dumps(chunk,
separators=(",", ":"))} of the full chunk object (the tests check this).

Nothing here does I/O or imports Twisted; the I/O layer
(L{qwen_twist.web.relay}) feeds it bytes and writes what it returns.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Optional, Tuple

from qwen_twist.errors import MAX_UPSTREAM_MESSAGE, UPSTREAM_ERROR
from qwen_twist.translate.chat import REASONING_KEYS, openai_logprobs
from qwen_twist.translate.common import (
    finish_reason, ollama_timings, openai_tool_call, tool_call_id, usage,
)
from qwen_twist.translate.completions import legacy_logprobs
from qwen_twist.translate.ndjson import LineTooLong, NdjsonSplitter
from qwen_twist.translate.sse import DONE, error_event

#: JSON string literal of a str, ASCII-only: exactly what C{json.dumps}
#: with C{ensure_ascii=True} produces for a string (the C accelerator).
_quote: Callable[[str], str] = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]

_encode = json.JSONEncoder(separators=(",", ":")).encode


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; Go's encoder never writes them, and
    # passing one on would break every non-Python client's parser.
    raise ValueError("%s is not valid JSON" % (name,))


_decode = json.JSONDecoder(parse_constant=_reject_constant).decode

INVALID_JSON = "upstream sent invalid JSON"
OVERSIZED_LINE = "upstream sent an oversized line"
CLOSED_EARLY = "upstream closed the stream before completion"
#: The event text for an error line from Ollama: its own text can name blob
#: paths or addresses, so it goes to the log (L{upstream_error}) instead.
UPSTREAM_FAILED = "the model server failed during generation"


def _error_text(error: object) -> str:
    """
    The text of a native C{error} value, trimmed like
    L{qwen_twist.errors.upstream_message} trims error bodies.
    """
    if isinstance(error, dict):
        error = error.get("message")
    if not isinstance(error, str):
        return "upstream error"
    text = " ".join(error.split())
    if len(text) > MAX_UPSTREAM_MESSAGE:
        text = text[:MAX_UPSTREAM_MESSAGE] + "..."
    return text or "upstream error"


class _StreamTranslator:
    """
    The state machine shared by both endpoints: line splitting, JSON
    decoding, the failure paths and the end of the stream. Subclasses say
    what a native line's payload becomes and what the finish chunk is.

    @ivar finished: C{True} once C{[DONE]} or an error event was produced;
        from then on L{feed}, L{end} and L{fail} return C{b""}.
    @ivar outcome: L{None} while running, C{"complete"} after C{[DONE]},
        C{"error"} after an error event.
    @ivar error_message: the text of the error event, if there was one.
    @ivar final_usage: the OpenAI C{usage} object of the C{done} line.
    @ivar timings: Ollama's own timings from that line (L{ollama_timings}).
    @ivar chunks: the C{data:} events produced so far, C{[DONE]} and error
        events included.
    """

    #: The OpenAI C{object} of every chunk.
    object_name = ""

    def __init__(
        self,
        *,
        model: str,
        completion_id: str,
        created: int,
        include_usage: bool,
        max_line: int,
    ) -> None:
        self.include_usage = include_usage
        self.finished = False
        self.outcome: Optional[str] = None
        self.error_message: Optional[str] = None
        #: Ollama's own error text, for the log only.
        self.upstream_error: Optional[str] = None
        self.final_usage: Optional[Dict[str, Any]] = None
        self.timings: Optional[Dict[str, Any]] = None
        self.chunks = 0
        self._splitter = NdjsonSplitter(max_line)
        #: C{data: {"id":…,"object":…,"created":…,"model":…,} -- the part
        #: every chunk shares, rendered once.
        self._envelope = 'data: {"id":%s,"object":%s,"created":%s,"model":%s,' % (
            _quote(completion_id),
            _quote(self.object_name),
            _encode(created),
            _quote(model),
        )
        #: What follows the choices array of every chunk but the last.
        self._end_of_chunk = (',"usage":null}\n\n' if include_usage else "}\n\n")

    # Public interface ----------------------------------------------------

    @property
    def buffered(self) -> int:
        """
        Bytes of an incomplete upstream line held (for the memory bound).
        """
        return self._splitter.buffered

    def start(self) -> bytes:
        """
        The events that open the stream, sent right after the headers.
        """
        return b""

    def feed(self, data: bytes) -> bytes:
        """
        Translate the next piece of the upstream body (any chunking).

        @return: the SSE bytes to send, possibly C{b""}.
        """
        if self.finished:
            return b""
        out: List[bytes] = []
        try:
            lines = self._splitter.feed(data)
        except LineTooLong as e:
            self._lines(e.lines, out)
            if not self.finished:
                out.append(self._error(OVERSIZED_LINE))
            return b"".join(out)
        if not lines:
            return b""
        self._lines(lines, out)
        if len(out) == 1:
            return out[0]
        return b"".join(out)

    def end(self) -> bytes:
        """
        The upstream body ended cleanly. A last line without a newline is
        translated (which also covers E23: an C{application/json} answer is
        one such line); a stream that never said C{done: true} ends with an
        error event.
        """
        if self.finished:
            return b""
        out: List[bytes] = []
        line = self._splitter.flush()
        if line is not None:
            self._line(line, out)
        if not self.finished:
            out.append(self._error(CLOSED_EARLY))
        return b"".join(out)

    def fail(self, message: str, code: Optional[str] = None) -> bytes:
        """
        The gateway gives up on the stream (a timeout, ...): one error event,
        no C{[DONE]}; C{b""} if the stream already finished.
        """
        if self.finished:
            return b""
        return self._error(message, code)

    # The state machine ---------------------------------------------------

    def _lines(self, lines: List[bytes], out: List[bytes]) -> None:
        line_ = self._line
        for line in lines:
            line_(line, out)
            if self.finished:
                # Anything after done:true or an error is ignored.
                return

    def _decoded(self, line: bytes, out: List[bytes]) -> Optional[Dict[str, Any]]:
        """
        The native object of C{line}, or L{None} after appending the error
        that ends the stream (invalid JSON, or an Ollama error line).
        """
        try:
            native = _decode(line.decode("utf-8"))
        except (ValueError, RecursionError):
            out.append(self._error(INVALID_JSON))
            return None
        if not isinstance(native, dict):
            out.append(self._error(INVALID_JSON))
            return None
        error = native.get("error")
        if error:
            # Ollama's Go client treats any non-empty error as a failure,
            # whatever else the line holds (section 2.11).
            self.upstream_error = _error_text(error)
            out.append(self._error(UPSTREAM_FAILED, UPSTREAM_ERROR))
            return None
        return native

    def _line(self, line: bytes, out: List[bytes]) -> None:
        native = self._decoded(line, out)
        if native is None:
            return
        self._payload(native, out)
        if native.get("done") is True:
            self._done(native, out)

    def _payload(self, native: Dict[str, Any], out: List[bytes]) -> None:
        raise NotImplementedError()

    def _had_tool_calls(self) -> bool:
        return False

    def _finish_chunk(self, reason: str) -> str:
        raise NotImplementedError()

    def _done(self, native: Dict[str, Any], out: List[bytes]) -> None:
        done_reason = native.get("done_reason")
        reason = finish_reason(
            done_reason if isinstance(done_reason, str) else None, self._had_tool_calls()
        )
        self.final_usage = usage(native)
        self.timings = ollama_timings(native)
        pieces = [self._finish_chunk(reason)]
        if self.include_usage:
            pieces.append(
                '%s"choices":[],"usage":%s}\n\n' % (self._envelope, _encode(self.final_usage))
            )
        out.append("".join(pieces).encode("ascii"))
        out.append(DONE)
        self.chunks += len(pieces) + 1
        self.finished = True
        self.outcome = "complete"
        self._splitter.flush()

    def _error(self, message: str, code: Optional[str] = None) -> bytes:
        self.finished = True
        self.outcome = "error"
        self.error_message = message
        self.chunks += 1
        # Release whatever partial line was buffered.
        self._splitter.flush()
        return self._error_bytes(message, code)

    def _error_bytes(self, message: str, code: Optional[str]) -> bytes:
        """
        How the stream tells its failure: one OpenAI error event.
        """
        return error_event(message, "server_error", code)


class ChatStreamTranslator(_StreamTranslator):
    """
    C{/api/chat} NDJSON -> C{chat.completion.chunk} events.
    """

    object_name = "chat.completion.chunk"

    def __init__(
        self,
        *,
        model: str,
        completion_id: str,
        created: int,
        include_usage: bool,
        reasoning_field: str = "reasoning_content",
        new_call_id: Callable[[], str] = tool_call_id,
        max_line: int = 16 * 1024 * 1024,
    ) -> None:
        """
        @param model: the model string the client sent (echoed in every chunk).
        @param completion_id: the stream's C{chatcmpl-} id.
        @param created: Unix seconds, the same in every chunk.
        @param include_usage: the client's C{stream_options.include_usage}.
        @param reasoning_field: where thinking goes (E14):
            C{"reasoning_content"}, C{"reasoning"}, C{"both"} or C{"none"}.
        @param new_call_id: mints ids for tool calls that arrive without one.
        @param max_line: the longest NDJSON line accepted, in bytes.
        @raise ValueError: for an unknown C{reasoning_field}.
        """
        if reasoning_field not in REASONING_KEYS:
            raise ValueError(
                "reasoning_field must be one of %s, not %r"
                % (", ".join(sorted(REASONING_KEYS)), reasoning_field)
            )
        super().__init__(
            model=model,
            completion_id=completion_id,
            created=created,
            include_usage=include_usage,
            max_line=max_line,
        )
        self._new_call_id = new_call_id
        self._next_tool_index = 0
        self._started = False
        head = self._envelope + '"choices":[{"index":0,"delta":{'
        self._head = head
        #: Closes a delta whose choice has no logprobs and no finish reason.
        self._tail = '},"logprobs":null,"finish_reason":null}]' + self._end_of_chunk
        self._content_head = head + '"content":'
        #: The keys of a reasoning delta, each with its separator.
        self._reasoning_keys: Tuple[str, ...] = tuple(
            ("," if i else "") + _quote(key) + ":"
            for i, key in enumerate(REASONING_KEYS[reasoning_field])
        )

    def start(self) -> bytes:
        """
        The role chunk (section 7 step 2), once.
        """
        if self._started or self.finished:
            return b""
        self._started = True
        self.chunks += 1
        return (self._head + '"role":"assistant","content":""' + self._tail).encode("ascii")

    def _had_tool_calls(self) -> bool:
        return self._next_tool_index > 0

    def _chunk(self, delta: str, logprobs: Optional[str]) -> bytes:
        self.chunks += 1
        if logprobs is None:
            return (self._head + delta + self._tail).encode("ascii")
        return (
            self._head
            + delta
            + '},"logprobs":'
            + logprobs
            + ',"finish_reason":null}]'
            + self._end_of_chunk
        ).encode("ascii")

    def _payload(self, native: Dict[str, Any], out: List[bytes]) -> None:
        message = native.get("message")
        if not isinstance(message, dict):
            return
        content = message.get("content")
        thinking = message.get("thinking")
        calls = message.get("tool_calls")
        native_logprobs = native.get("logprobs")
        if not native_logprobs and not thinking and not calls:
            # The hot path: one content token, or an empty trailer (E3).
            if content and isinstance(content, str):
                self.chunks += 1
                out.append(
                    (self._content_head + _quote(content) + self._tail).encode("ascii")
                )
            return
        has_content = bool(content) and isinstance(content, str)
        has_thinking = bool(thinking) and isinstance(thinking, str) and bool(self._reasoning_keys)
        logprobs = openai_logprobs(native_logprobs) if native_logprobs else None
        pending = None if logprobs is None else _encode(logprobs)
        if has_thinking:
            quoted = _quote(thinking)
            delta = "".join([key + quoted for key in self._reasoning_keys])
            # Logprobs go with the text they describe: the content if this
            # line has some, else the first chunk the line produces.
            lp = None if has_content else pending
            out.append(self._chunk(delta, lp))
            if lp is not None:
                pending = None
        if has_content:
            out.append(self._chunk('"content":' + _quote(content), pending))
            pending = None
        if isinstance(calls, list):
            for call in calls:
                if not isinstance(call, dict):
                    continue
                converted = openai_tool_call(call, self._new_call_id)
                entry = {"index": self._next_tool_index}
                entry.update(converted)
                self._next_tool_index += 1
                out.append(self._chunk('"tool_calls":' + _encode([entry]), pending))
                pending = None
        if pending is not None:
            # Logprobs on a line with nothing else (Ollama sends these while
            # its tool-call parser buffers, and on the done line): an empty
            # delta carries them, as the non-streaming answer keeps them.
            out.append(self._chunk("", pending))

    def _finish_chunk(self, reason: str) -> str:
        return '%s},"logprobs":null,"finish_reason":%s}]%s' % (
            self._head,
            _quote(reason),
            self._end_of_chunk,
        )


class CompletionStreamTranslator(_StreamTranslator):
    """
    C{/api/generate} NDJSON -> C{text_completion} events (the last paragraph
    of section 7): no role chunk, C{text} deltas, a final chunk with
    C{text: ""} and the finish reason; C{thinking} is discarded.
    """

    object_name = "text_completion"

    def __init__(
        self,
        *,
        model: str,
        completion_id: str,
        created: int,
        include_usage: bool,
        max_line: int = 16 * 1024 * 1024,
    ) -> None:
        """
        @param model: the model string the client sent.
        @param completion_id: the stream's C{cmpl-} id.
        @param created: Unix seconds, the same in every chunk.
        @param include_usage: the client's C{stream_options.include_usage}.
        @param max_line: the longest NDJSON line accepted, in bytes.
        """
        super().__init__(
            model=model,
            completion_id=completion_id,
            created=created,
            include_usage=include_usage,
            max_line=max_line,
        )
        self._head = self._envelope + '"choices":[{"text":'
        self._tail = ',"index":0,"logprobs":null,"finish_reason":null}]' + self._end_of_chunk
        #: Characters of token text already described by logprobs.
        self._text_offset = 0

    def _payload(self, native: Dict[str, Any], out: List[bytes]) -> None:
        text = native.get("response")
        if not isinstance(text, str):
            text = ""
        native_logprobs = native.get("logprobs")
        logprobs = (
            legacy_logprobs(native_logprobs, self._text_offset) if native_logprobs else None
        )
        if not text and logprobs is None:
            return
        self.chunks += 1
        if logprobs is None:
            out.append((self._head + _quote(text) + self._tail).encode("ascii"))
            return
        # text_offset keeps counting across the stream, as in the
        # non-streaming answer.
        self._text_offset += sum(map(len, logprobs["tokens"]))
        out.append(
            (
                self._head
                + _quote(text)
                + ',"index":0,"logprobs":'
                + _encode(logprobs)
                + ',"finish_reason":null}]'
                + self._end_of_chunk
            ).encode("ascii")
        )

    def _finish_chunk(self, reason: str) -> str:
        return '%s"","index":0,"logprobs":null,"finish_reason":%s}]%s' % (
            self._head,
            _quote(reason),
            self._end_of_chunk,
        )
