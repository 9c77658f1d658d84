# -*- test-case-name: tests.emulator.test_server -*-
"""
The Ollama emulator's HTTP side: Ollama's native API on a Twisted Resource.

The gateway's tests and benchmarks need an upstream that speaks the wire
format of section 2 of C{ollama-openai-protocol.md} exactly (NDJSON framing,
the final C{done} line and its omitempty metrics, Ollama's error texts and
statuses, C{stream} defaulting to true) and that fails on demand. Answers
come from a L{Script}; what arrived is kept in a L{Record}.

It is built to be cheap, because the gateway benchmark puts hundreds of
concurrent streams through it on two shared cores: a stream is one
L{_Stream} object with at most one pending timer; each tick writes every
line that is due in one C{write}; line bodies are pre-encoded and cached
per word; the stream registers as a push producer on the request, so when
the client stops reading, generation stops too (Ollama's writer blocks the
same way) and resumes on C{resumeProducing}. A client disconnect cancels the
timer at once.

All timing goes through the injected reactor (C{seconds}, C{callLater}), so
unit tests drive it with a L{twisted.internet.task.Clock}.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from functools import lru_cache
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from zope.interface import implementer

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from qwen_twist.emulator.record import Record, RecordedRequest
from qwen_twist.emulator.script import (
    AUTO,
    Behaviour,
    ModelName,
    ModelSpec,
    Script,
    ScriptError,
    default_answer,
    default_thinking,
    embedding_vector,
    rough_token_count,
    split_tokens,
)

__all__ = ["Emulator", "EmulatorResource", "build_resource", "listen"]

_JSON_TYPE = b"application/json; charset=utf-8"
_NDJSON_TYPE = b"application/x-ndjson"
_TEXT_TYPE = b"text/plain; charset=utf-8"

#: Reported durations when the script gives no timing (nanoseconds).
_LOAD_NS = 1_250_000
_PROMPT_NS_PER_TOKEN = 50_000
_EVAL_NS_PER_TOKEN = 10_000
_KEEP_ALIVE_SECONDS = 300
#: Chunks due within this many seconds of now go out now: float sums of
#: clock steps must not push a chunk to the next tick.
_EPSILON = 1e-9

#: What C{invalid_json_after} sends instead of a line.
GARBAGE_LINE = b'{"model":"emulator","created_at":<this is not JSON\n'

_CALL_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_THINK_LEVELS = frozenset(("high", "medium", "low", "max"))
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _dumps(value: Any) -> bytes:
    return _encode(value).encode("utf-8", "replace")


def _go_quote(text: str) -> str:
    """
    Roughly Go's C{%q}: a double-quoted, escaped string.
    """
    return json.dumps(text, ensure_ascii=False)


class _Stamp:
    """
    RFC 3339 UTC timestamps with 9 fractional digits, the date part cached
    per second (one C{strftime} a second instead of one a line).
    """

    __slots__ = ("_second", "_prefix")

    def __init__(self) -> None:
        self._second: Optional[int] = None
        self._prefix = b""

    def __call__(self, seconds: float) -> bytes:
        whole = math.floor(seconds)
        if whole != self._second:
            self._second = whole
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)).encode("ascii")
        nanos = min(int((seconds - whole) * 1e9), 999_999_999)
        return b"%s.%09dZ" % (self._prefix, nanos)


# -- request decoding (Go encoding/json look-alike) --------------------------


class _Refusal(Exception):
    """
    An error answer: C{{"error": message}} with C{status}.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _reject_constant(name: str) -> Any:
    # Go's JSON has no NaN or Infinity.
    if name.startswith("-"):
        raise _Refusal(400, "invalid character 'I' in numeric literal")
    raise _Refusal(400, "invalid character '%s' looking for beginning of value" % (name[0],))


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _quote_char(char: str) -> str:
    if char == "'":
        return "'\\''"
    if char == '"':
        return "'\"'"
    return "'%s'" % (json.dumps(char, ensure_ascii=False)[1:-1],)


def _container_at(text: str, pos: int) -> str:
    """
    Whether position C{pos} of C{text} is inside an object or an array.
    """
    stack: List[str] = []
    in_string = escaped = False
    for char in text[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            stack.append(char)
        elif char in "}]" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _syntax_error(text: str, error: json.JSONDecodeError) -> str:
    """
    Go's decoder message for the syntax error Python found.
    """
    pos, msg = error.pos, error.msg
    if pos >= len(text) or msg.startswith("Unterminated string"):
        return "unexpected EOF"
    char = _quote_char(text[pos])
    if msg.startswith("Expecting property name"):
        return "invalid character %s looking for beginning of object key string" % char
    if msg.startswith("Expecting ':'"):
        return "invalid character %s after object key" % char
    if msg.startswith("Expecting ','"):
        where = "object key:value pair" if _container_at(text, pos) == "{" else "array element"
        return "invalid character %s after %s" % (char, where)
    if msg.startswith("Invalid control character"):
        return "invalid character %s in string literal" % char
    if "escape" in msg:
        return "invalid character %s in string escape code" % char
    return "invalid character %s looking for beginning of value" % char


def decode_body(raw: bytes) -> Any:
    """
    Parse a request body the way Ollama's handlers see it: empty means
    C{missing request body}, bad JSON gets the Go decoder's message, and
    anything after the first JSON value is ignored (Go's C{Decoder}).

    @raise _Refusal: with status 400.
    """
    text = raw.decode("utf-8", "replace")
    start = len(text) - len(text.lstrip(" \t\r\n"))
    if start == len(text):
        raise _Refusal(400, "missing request body")
    try:
        value, _ = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as e:
        raise _Refusal(400, _syntax_error(text, e))
    except RecursionError:
        raise _Refusal(400, "exceeded max depth")
    return value


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _type_error(value: Any, path: str, go_type: str) -> _Refusal:
    return _Refusal(400, "json: cannot unmarshal %s into Go struct field %s of type %s" % (
        _kind(value), path, go_type))


def _c_string(value: Any, path: str) -> None:
    if not isinstance(value, str):
        raise _type_error(value, path, "string")


def _c_bool(value: Any, path: str) -> None:
    if not isinstance(value, bool):
        raise _type_error(value, path, "bool")


def _c_int(value: Any, path: str) -> None:
    if isinstance(value, float):
        raise _Refusal(400, "json: cannot unmarshal number %s into Go struct field %s of type int"
                       % (json.dumps(value), path))
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(value, path, "int")


def _c_map(value: Any, path: str) -> None:
    if not isinstance(value, dict):
        raise _type_error(value, path, "map[string]interface {}")


def _c_any(value: Any, path: str) -> None:
    pass


def _c_think(value: Any, path: str) -> None:
    if isinstance(value, bool) or (isinstance(value, str) and value in _THINK_LEVELS):
        return
    if isinstance(value, str):
        raise _Refusal(400, 'invalid think value: %s (must be "high", "medium", "low", '
                            '"max", true, or false)' % (_go_quote(value),))
    raise _Refusal(400, 'think must be a boolean or string ("high", "medium", "low", '
                        '"max", true, or false)')


_GO_TYPE_NAMES = {"bool": "bool", "array": "[]interface {}", "object": "map[string]interface {}"}
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3,
                   "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float:
    """
    Seconds in a Go duration string (C{"5m"}, C{"1h30m"}, C{"0"}, C{"-1s"}).

    @raise _Refusal: 400 with Go's C{time: ...} message.
    """
    rest, sign = text, 1.0
    if rest[:1] in ("+", "-"):
        sign = -1.0 if rest[0] == "-" else 1.0
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise _Refusal(400, "time: invalid duration %s" % (_go_quote(text),))
    total = 0.0
    while rest:
        i = 0
        while i < len(rest) and (rest[i].isdigit() or rest[i] == "."):
            i += 1
        number = rest[:i]
        if not number.strip("."):
            raise _Refusal(400, "time: invalid duration %s" % (_go_quote(text),))
        rest = rest[i:]
        j = 0
        while j < len(rest) and not (rest[j].isdigit() or rest[j] == "."):
            j += 1
        unit, rest = rest[:j], rest[j:]
        if not unit:
            raise _Refusal(400, "time: missing unit in duration %s" % (_go_quote(text),))
        if unit not in _DURATION_UNITS:
            raise _Refusal(400, "time: unknown unit %s in duration %s"
                           % (_go_quote(unit), _go_quote(text)))
        total += float(number) * _DURATION_UNITS[unit]
    return sign * total


def _c_duration(value: Any, path: str) -> None:
    if isinstance(value, str):
        parse_go_duration(value)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Refusal(400, "Unsupported type: '%s'" % (_GO_TYPE_NAMES.get(_kind(value)),))


_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def base64_error_offset(text: str) -> Optional[int]:
    """
    Where Go's padded standard base64 decoder gives up on C{text}, or
    L{None} when it decodes (CR and LF are skipped, as in Go).
    """
    data = text.encode("utf-8", "replace")
    n, i, j = len(data), 0, 0
    while i < n:
        byte = data[i]
        if byte in (10, 13):
            i += 1
            continue
        if byte == 61:  # "=": padding ends the data
            if j < 2:
                return i
            k = i + 1
            if j == 2:
                while k < n and data[k] in (10, 13):
                    k += 1
                if k >= n:
                    return n
                if data[k] != 61:
                    return k
                k += 1
            while k < n and data[k] in (10, 13):
                k += 1
            return k if k < n else None
        if byte not in _B64:
            return i
        j = (j + 1) % 4
        i += 1
    return n - j if j else None


def _c_images(value: Any, path: str) -> None:
    if not isinstance(value, list):
        raise _type_error(value, path, "[]api.ImageData")
    for item in value:
        if not isinstance(item, str):
            raise _type_error(item, path, "api.ImageData")
        offset = base64_error_offset(item)
        if offset is not None:
            raise _Refusal(400, "illegal base64 data at input byte %d" % (offset,))


def _c_ints(value: Any, path: str) -> None:
    if not isinstance(value, list):
        raise _type_error(value, path, "[]int")
    for item in value:
        _c_int(item, path)


def _c_tools(value: Any, path: str) -> None:
    if not isinstance(value, list):
        raise _type_error(value, path, "api.Tools")
    for item in value:
        if not isinstance(item, dict):
            raise _type_error(item, path, "api.Tool")


def _c_arguments(value: Any, path: str) -> None:
    if not isinstance(value, dict):
        raise _type_error(value, path, "api.ToolCallFunctionArguments")


def _c_function(value: Any, path: str) -> None:
    if not isinstance(value, dict):
        raise _type_error(value, path, "api.ToolCallFunction")
    _check_fields(value, _FUNCTION_FIELDS, path)


def _c_tool_calls(value: Any, path: str) -> None:
    if not isinstance(value, list):
        raise _type_error(value, path, "[]api.ToolCall")
    for item in value:
        if not isinstance(item, dict):
            raise _type_error(item, path, "api.ToolCall")
        _check_fields(item, _TOOL_CALL_FIELDS, path)


def _c_messages(value: Any, path: str) -> None:
    if not isinstance(value, list):
        raise _type_error(value, path, "[]api.Message")
    for item in value:
        if not isinstance(item, dict):
            raise _type_error(item, path, "api.Message")
        _check_fields(item, _MESSAGE_FIELDS, path)


_Check = Callable[[Any, str], None]
_FUNCTION_FIELDS: Dict[str, _Check] = {
    "index": _c_int, "name": _c_string, "arguments": _c_arguments}
_TOOL_CALL_FIELDS: Dict[str, _Check] = {"id": _c_string, "function": _c_function}
_MESSAGE_FIELDS: Dict[str, _Check] = {
    "role": _c_string, "content": _c_string, "thinking": _c_string, "images": _c_images,
    "tool_calls": _c_tool_calls, "tool_name": _c_string, "tool_call_id": _c_string,
}
_COMMON: Dict[str, _Check] = {
    "model": _c_string, "stream": _c_bool, "format": _c_any, "keep_alive": _c_duration,
    "options": _c_map, "think": _c_think, "logprobs": _c_bool, "top_logprobs": _c_int,
    "truncate": _c_bool, "shift": _c_bool,
}
_CHAT_FIELDS = dict(_COMMON, messages=_c_messages, tools=_c_tools)
_GENERATE_FIELDS = dict(
    _COMMON, prompt=_c_string, suffix=_c_string, system=_c_string, template=_c_string,
    context=_c_ints, raw=_c_bool, images=_c_images,
)
_EMBED_FIELDS: Dict[str, _Check] = {
    "model": _c_string, "input": _c_any, "truncate": _c_bool, "dimensions": _c_int,
    "keep_alive": _c_duration, "options": _c_map,
}
_SHOW_FIELDS: Dict[str, _Check] = {
    "model": _c_string, "name": _c_string, "system": _c_string, "template": _c_string,
    "verbose": _c_bool, "options": _c_map,
}


def _check_fields(obj: Mapping[str, Any], table: Mapping[str, _Check], path: str) -> None:
    # Go reports the first problem in document order; null leaves a field
    # at its zero value.
    for key, value in obj.items():
        check = table.get(key)
        if check is not None and value is not None:
            check(value, path + "." + key)


def _request_fields(body: Any, table: Mapping[str, _Check], struct: str) -> Dict[str, Any]:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise _Refusal(400, "json: cannot unmarshal %s into Go value of type api.%s"
                       % (_kind(body), struct))
    _check_fields(body, table, struct)
    return body


_INT_OPTIONS = frozenset((
    "num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "mirostat", "num_ctx",
    "num_batch", "num_gpu", "main_gpu", "num_thread", "draft_num_predict",
))
_FLOAT_OPTIONS = frozenset((
    "temperature", "top_p", "min_p", "typical_p", "tfs_z", "repeat_penalty",
    "presence_penalty", "frequency_penalty", "mirostat_tau", "mirostat_eta",
))
_BOOL_OPTIONS = frozenset((
    "numa", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mmap", "use_mlock",
    "penalize_newline",
))


def check_options(options: Optional[Mapping[str, Any]]) -> int:
    """
    Apply Ollama's C{Options.FromMap} type rules and return C{num_predict}
    (-1 when unset). Unknown keys are ignored, as Ollama only logs them.

    @raise _Refusal: 500, like Ollama's scheduler, for a value of the wrong
        JSON type (C{option "stop" must be of type array}).
    """
    if not options:
        return -1
    for key, value in options.items():
        if value is None:
            continue
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key in _INT_OPTIONS and not is_number:
            raise _Refusal(500, "option %s must be of type integer" % (_go_quote(key),))
        if key in _FLOAT_OPTIONS and not is_number:
            raise _Refusal(500, "option %s must be of type float32" % (_go_quote(key),))
        if key in _BOOL_OPTIONS and not isinstance(value, bool):
            raise _Refusal(500, "option %s must be of type boolean" % (_go_quote(key),))
        if key == "stop":
            if not isinstance(value, list):
                raise _Refusal(500, 'option "stop" must be of type array')
            if not all(isinstance(item, str) for item in value):
                raise _Refusal(500, 'option "stop" must be of an array of strings')
    num_predict = options.get("num_predict")
    if isinstance(num_predict, (int, float)) and not isinstance(num_predict, bool):
        return int(num_predict)
    return -1


# -- encoded line pieces ----------------------------------------------------


@lru_cache(maxsize=8192)
def _chat_content(text: str) -> bytes:
    return b'","message":{"role":"assistant","content":%s},"done":false}\n' % _dumps(text)


@lru_cache(maxsize=8192)
def _chat_thinking(text: str) -> bytes:
    return (b'","message":{"role":"assistant","content":"","thinking":%s},"done":false}\n'
            % _dumps(text))


def _chat_tool(call: Dict[str, Any]) -> bytes:
    return (b'","message":{"role":"assistant","content":"","tool_calls":[%s]},"done":false}\n'
            % _dumps(call))


@lru_cache(maxsize=8192)
def _generate_content(text: str) -> bytes:
    return b'","response":%s,"done":false}\n' % _dumps(text)


@lru_cache(maxsize=8192)
def _generate_thinking(text: str) -> bytes:
    return b'","response":"","thinking":%s,"done":false}\n' % _dumps(text)


_THINKING, _CONTENT, _TOOL = 0, 1, 2


class _Answer:
    """
    Everything one generation emits, decided up front: the chunks in order
    (thinking, content, tool calls), cut by C{num_predict}.
    """

    __slots__ = ("slots", "done_reason", "prompt_eval_count", "behaviour")

    def __init__(self, slots: List[Tuple[int, Any]], done_reason: str,
                 prompt_eval_count: int, behaviour: Behaviour) -> None:
        self.slots = slots
        self.done_reason = done_reason
        self.prompt_eval_count = prompt_eval_count
        self.behaviour = behaviour

    def joined(self, kind: int) -> str:
        return "".join(value for k, value in self.slots if k == kind)

    def tool_calls(self) -> List[Dict[str, Any]]:
        return [value for k, value in self.slots if k == _TOOL]

    def metrics(self, started: float, now: float) -> Dict[str, int]:
        """
        The final object's timing and counts; zero values are left out
        (Go's omitempty).
        """
        behaviour = self.behaviour
        eval_count = len(self.slots)
        prompt_ns = (int(behaviour.ttft * 1e9) if behaviour.ttft > 0
                     else self.prompt_eval_count * _PROMPT_NS_PER_TOKEN)
        if behaviour.tokens_per_second > 0:
            eval_ns = int(eval_count / behaviour.tokens_per_second * 1e9)
        else:
            eval_ns = eval_count * _EVAL_NS_PER_TOKEN
        total = max(int((now - started) * 1e9), _LOAD_NS + prompt_ns + eval_ns)
        result = {}
        for key, value in (
            ("total_duration", total), ("load_duration", _LOAD_NS),
            ("prompt_eval_count", self.prompt_eval_count),
            ("prompt_eval_duration", prompt_ns), ("eval_count", eval_count),
            ("eval_duration", eval_ns),
        ):
            if value:
                result[key] = value
        return result


# -- streaming --------------------------------------------------------------

_ACTIVE, _HUNG, _DONE = "active", "hung", "done"


@implementer(IPushProducer)
class _Stream:
    """
    One NDJSON response in progress.

    Chunk C{i} is due at C{t0 + i / tokens_per_second}, where C{t0} is the
    arrival time plus C{ttft} (shifted by the time spent paused). Each tick
    writes all lines due by now in one C{write} and schedules one timer for
    the next; the C{done} line follows the last chunk immediately. The
    headers go out with the first line, as Ollama's do.
    """

    def __init__(self, emulator: "EmulatorResource", request: Any, head: bytes,
                 tails: List[bytes], final: Callable[[float], bytes],
                 behaviour: Behaviour, started: float) -> None:
        self._reactor = emulator.reactor
        self._record = emulator.record
        self._stamp = emulator.stamp
        self._request = request
        self._head = head
        self._tails = tails
        self._n = len(tails)
        self._final = final
        self._fault = behaviour.fault
        self._stop_at = self._fault.after if self._fault is not None else None
        tps = behaviour.tokens_per_second
        self._interval = 1.0 / tps if tps > 0 else 0.0
        self._t0 = started + behaviour.ttft
        self._i = 0
        self._timer: Any = None
        self._paused_at: Optional[float] = None
        self._state = _ACTIVE

    def start(self) -> None:
        request = self._request
        request.setHeader(b"content-type", _NDJSON_TYPE)
        self._record.stream_started()
        request.notifyFinish().addErrback(self._lost)
        request.registerProducer(self, True)
        self._tick()

    def _due(self, i: int) -> float:
        last = self._n - 1
        return self._t0 + (min(i, last) * self._interval if last > 0 else 0.0)

    def _tick(self) -> None:
        self._timer = None
        if self._state is not _ACTIVE or self._paused_at is not None:
            return
        now = self._reactor.seconds() + _EPSILON
        i, n, t0, interval, stop_at = self._i, self._n, self._t0, self._interval, self._stop_at
        tails = self._tails
        batch = []
        prefix = b""
        while i < n and i != stop_at and t0 + i * interval <= now:
            if not prefix:
                prefix = self._head + self._stamp(now)
            batch.append(prefix + tails[i])
            i += 1
        self._i = i
        if batch:
            # May pause us (transport buffer full) or find the client gone.
            self._request.write(b"".join(batch))
            if self._state is not _ACTIVE or self._paused_at is not None:
                return
        due = self._due(i)
        if due > now:
            self._timer = self._reactor.callLater(due - now, self._tick)
        elif stop_at is not None and i >= min(stop_at, n):
            self._strike()
        else:
            self._finish(now)

    def _finish(self, now: float) -> None:
        self._state = _DONE
        request = self._request
        request.write(self._final(now))
        request.unregisterProducer()
        request.finish()
        self._record.stream_completed()

    def _strike(self) -> None:
        fault = self._fault
        assert fault is not None
        request = self._request
        self._record.fault_struck()
        request.write(b"")  # the headers, if no line went out yet
        if fault.kind == "hang_after":
            # Keep the connection open and send nothing more; the client
            # leaving ends it (counted as abandoned).
            self._state = _HUNG
            return
        self._state = _DONE
        self._record.stream_faulted()
        if fault.kind == "close_after":
            # Mid-body close: no terminating chunk, no done line.
            request.channel.transport.loseConnection()
            return
        if fault.kind == "invalid_json_after":
            request.write(GARBAGE_LINE)
        else:
            request.write(_dumps({"error": fault.error}) + b"\n")
        request.unregisterProducer()
        request.finish()

    def _lost(self, reason: Any = None) -> None:
        if self._state is _DONE:
            return
        self._state = _DONE
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._record.stream_abandoned()

    # IPushProducer

    def pauseProducing(self) -> None:
        if self._state is not _ACTIVE or self._paused_at is not None:
            return
        self._paused_at = self._reactor.seconds()
        self._record.paused()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def resumeProducing(self) -> None:
        if self._paused_at is None:
            return
        self._t0 += self._reactor.seconds() - self._paused_at
        self._paused_at = None
        self._tick()

    def stopProducing(self) -> None:
        self._lost()


class _Delayed:
    """
    A single answer due later (a non-streaming generation, a slow embedding,
    a delayed error), or never (C{hang_before_headers}). A client disconnect
    cancels it.
    """

    def __init__(self, emulator: "EmulatorResource", request: Any,
                 delay: Optional[float], deliver: Callable[[], None]) -> None:
        self._reactor = emulator.reactor
        self._record = emulator.record
        self._request = request
        self._delay = delay
        self._deliver = deliver
        self._timer: Any = None
        self._done = False

    def start(self) -> Any:
        self._request.notifyFinish().addErrback(self._lost)
        if self._delay is not None:
            self._timer = self._reactor.callLater(self._delay, self._fire)
        return NOT_DONE_YET

    def _fire(self) -> None:
        self._timer = None
        self._done = True
        self._deliver()

    def _lost(self, reason: Any) -> None:
        if self._done:
            return
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._record.request_abandoned()


def _respond(request: Any, status: int, body: bytes, content_type: bytes = _JSON_TYPE) -> None:
    request.setResponseCode(status)
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-length", b"%d" % (len(body),))
    request.write(body)
    request.finish()


# -- the resource -----------------------------------------------------------

_Handler = Callable[[Any, Any], Any]


class EmulatorResource(Resource):
    """
    Ollama's native API (plus the emulator's C{/_emulator/*} control paths)
    as one leaf resource that dispatches on the exact path, like Ollama's
    router: unknown paths get C{404 page not found}, known paths with the
    wrong method C{405 method not allowed}.

    @ivar script: the L{Script} in force; replacing it takes effect for the
        next request.
    @ivar record: the L{Record} of what arrived.
    """

    isLeaf = True

    def __init__(self, script: Script, record: Record, reactor: Any) -> None:
        super().__init__()
        self._script = script
        self.record = record
        self.reactor = reactor
        self.stamp = _Stamp()
        self._random = random.Random(script.seed)
        self._routes: Dict[bytes, Dict[bytes, _Handler]] = {
            b"/": {b"GET": self._root, b"HEAD": self._root},
            b"/api/chat": {b"POST": self._chat},
            b"/api/generate": {b"POST": self._generate},
            b"/api/embed": {b"POST": self._embed},
            b"/api/show": {b"POST": self._show},
            b"/api/tags": {b"GET": self._tags, b"HEAD": self._tags},
            b"/api/ps": {b"GET": self._ps},
            b"/api/version": {b"GET": self._version, b"HEAD": self._version},
        }
        self._control: Dict[bytes, Dict[bytes, _Handler]] = {
            b"/_emulator/record": {b"GET": self._get_record},
            b"/_emulator/reset": {b"POST": self._reset},
            b"/_emulator/script": {b"GET": self._get_script, b"POST": self._set_script},
            b"/_emulator/queue": {b"POST": self._queue},
        }
        self._bodyless = {self._reset}

    @property
    def script(self) -> Script:
        return self._script

    @script.setter
    def script(self, script: Script) -> None:
        self._script = script
        self._random.seed(script.seed)

    # dispatch

    def render(self, request: Any) -> Any:
        path = request.path
        method = request.method
        raw = request.content.read() if request.content is not None else b""
        control = self._control.get(path)
        if control is not None:
            return self._dispatch(request, control, method, raw, record=False)
        return self._dispatch(request, self._routes.get(path), method, raw, record=True)

    def _dispatch(self, request: Any, routes: Optional[Dict[bytes, _Handler]],
                  method: bytes, raw: bytes, record: bool) -> Any:
        body: Any = None
        problem: Optional[_Refusal] = None
        if raw or method == b"POST":
            try:
                body = decode_body(raw)
            except _Refusal as e:
                problem = e
        if record:
            self._record_request(request, body)
        if routes is None:
            return self._text(request, 404, b"404 page not found")
        handler = routes.get(method)
        if handler is None:
            return self._text(request, 405, b"405 method not allowed")
        try:
            if method == b"POST" and problem is not None and handler not in self._bodyless:
                raise problem
            return handler(request, body)
        except _Refusal as e:
            return self._error(request, e.status, e.message)

    def _record_request(self, request: Any, body: Any) -> None:
        headers = {}
        for name, values in request.requestHeaders.getAllRawHeaders():
            headers[name.decode("latin-1").lower()] = ", ".join(
                value.decode("latin-1") for value in values)
        self.record.add(RecordedRequest(
            request.method.decode("latin-1"), request.path.decode("latin-1"),
            headers, body, self.reactor.seconds(),
        ))

    # helpers

    def _json(self, request: Any, obj: Any, status: int = 200) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", _JSON_TYPE)
        return _dumps(obj)

    def _error(self, request: Any, status: int, message: str) -> bytes:
        return self._json(request, {"error": message}, status)

    def _text(self, request: Any, status: int, body: bytes) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", _TEXT_TYPE)
        return body

    def _now(self) -> str:
        return self.stamp(self.reactor.seconds()).decode("ascii")

    def _call_id(self) -> str:
        return "call_" + "".join(self._random.choices(_CALL_ID_ALPHABET, k=8))

    def _find(self, name: str, message: str, status: int = 404) -> ModelSpec:
        spec = self._script.find_model(name)
        if spec is None:
            raise _Refusal(status, message)
        return spec

    def _thinking_enabled(self, spec: ModelSpec, think: Any, name: str) -> bool:
        """
        Ollama 0.12.4+: thinking models think unless told C{think: false};
        asking a model without the capability to think is a 400.
        """
        if "thinking" in spec.capabilities:
            return think is not False
        if think is not None and think is not False:
            raise _Refusal(400, "%s does not support thinking" % (_go_quote(name),))
        return False

    @staticmethod
    def _keep_alive(fields: Mapping[str, Any]) -> Optional[float]:
        value = fields.get("keep_alive")
        if value is None:
            return None
        return parse_go_duration(value) if isinstance(value, str) else float(value)

    @staticmethod
    def _check_format(fmt: Any) -> None:
        if fmt is None or fmt == "" or fmt == "json" or isinstance(fmt, dict):
            return
        raise _Refusal(500, 'invalid format: %s; expected "json" or a valid JSON Schema object'
                       % (_go_quote(json.dumps(fmt, ensure_ascii=False)),))

    def _loaded(self, request: Any, spec: ModelSpec, model: str, reason: str,
                chat: bool) -> bytes:
        self._script.set_loaded(spec, reason == "load")
        obj: Dict[str, Any] = {"model": model, "created_at": self._now()}
        if chat:
            obj["message"] = {"role": "assistant", "content": ""}
        else:
            obj["response"] = ""
        obj["done"] = True
        obj["done_reason"] = reason
        return self._json(request, obj)

    # /api/chat and /api/generate

    def _chat(self, request: Any, body: Any) -> Any:
        fields = _request_fields(body, _CHAT_FIELDS, "ChatRequest")
        self._check_top_logprobs(fields)
        model = fields.get("model") or ""
        if not model:
            raise _Refusal(400, "model is required")
        spec = self._find(model, "model '%s' not found" % (model,))
        messages = fields.get("messages") or []
        if not messages and self._keep_alive(fields) == 0:
            return self._loaded(request, spec, model, "unload", chat=True)
        thinking = self._thinking_enabled(spec, fields.get("think"), model)
        if "completion" not in spec.capabilities:
            raise _Refusal(400, "%s does not support chat" % (_go_quote(model),))
        tools = bool(fields.get("tools"))
        if tools and "tools" not in spec.capabilities:
            raise _Refusal(400, "%s does not support tools" % (spec.full_name,))
        num_predict = check_options(fields.get("options"))
        if not messages:
            return self._loaded(request, spec, model, "load", chat=True)
        self._check_format(fields.get("format"))

        user_text = ""
        prompt_tokens = 0
        for message in messages:
            content = message.get("content") or ""
            prompt_tokens += rough_token_count(content) + 4
            if (message.get("role") or "").lower() == "user":
                user_text = content
        return self._generation(
            request, spec, model, fields, chat=True, thinking=thinking, tools=tools,
            num_predict=num_predict, user_text=user_text, prompt_tokens=prompt_tokens,
            raw=False,
        )

    def _generate(self, request: Any, body: Any) -> Any:
        fields = _request_fields(body, _GENERATE_FIELDS, "GenerateRequest")
        self._check_top_logprobs(fields)
        model = fields.get("model") or ""
        spec = self._find(model, "model '%s' not found" % (model,))
        prompt = fields.get("prompt") or ""
        if not prompt and self._keep_alive(fields) == 0:
            return self._loaded(request, spec, model, "unload", chat=False)
        raw = bool(fields.get("raw"))
        if raw and (fields.get("template") or fields.get("system") or fields.get("context")):
            raise _Refusal(400, "raw mode does not support template, system, or context")
        thinking = self._thinking_enabled(spec, fields.get("think"), model)
        if "completion" not in spec.capabilities:
            raise _Refusal(400, "%s does not support generate" % (_go_quote(model),))
        if fields.get("suffix") and "insert" not in spec.capabilities:
            raise _Refusal(400, "%s does not support insert" % (spec.full_name,))
        num_predict = check_options(fields.get("options"))
        if not prompt:
            return self._loaded(request, spec, model, "load", chat=False)
        self._check_format(fields.get("format"))
        system = fields.get("system") or ""
        prompt_tokens = rough_token_count(prompt) + 4 + (
            rough_token_count(system) if system else 0)
        return self._generation(
            request, spec, model, fields, chat=False, thinking=thinking, tools=False,
            num_predict=num_predict, user_text=prompt, prompt_tokens=prompt_tokens, raw=raw,
        )

    @staticmethod
    def _check_top_logprobs(fields: Mapping[str, Any]) -> None:
        top = fields.get("top_logprobs") or 0
        if top < 0 or top > 20:
            raise _Refusal(400, "top_logprobs must be between 0 and 20")

    def _answer(self, behaviour: Behaviour, thinking: bool, tools: bool, num_predict: int,
                user_text: str, prompt_tokens: int, json_format: bool) -> _Answer:
        text = behaviour.text
        if text is None:
            if tools and behaviour.tool_calls:
                text = ""
            else:
                text = default_answer(user_text)
                if json_format:
                    text = json.dumps({"answer": text}, ensure_ascii=False)
        slots: List[Tuple[int, Any]] = []
        if thinking:
            reasoning = behaviour.thinking
            if reasoning is None:
                reasoning = default_thinking(user_text)
            slots.extend((_THINKING, piece) for piece in split_tokens(reasoning, None))
        slots.extend((_CONTENT, piece) for piece in split_tokens(text, behaviour.tokens))
        if tools:
            for index, call in enumerate(behaviour.tool_calls):
                function: Dict[str, Any] = {}
                if call.index is AUTO:
                    function["index"] = index
                elif call.index is not None:
                    function["index"] = call.index
                function["name"] = call.name
                function["arguments"] = call.arguments
                emitted: Dict[str, Any] = {}
                if call.id is AUTO:
                    emitted["id"] = self._call_id()
                elif call.id is not None:
                    emitted["id"] = call.id
                emitted["function"] = function
                slots.append((_TOOL, emitted))
        done_reason = "stop"
        if 0 < num_predict < len(slots):
            del slots[num_predict:]
            done_reason = "length"
        if behaviour.done_reason is not None:
            done_reason = behaviour.done_reason
        if behaviour.prompt_eval_count is not None:
            prompt_tokens = behaviour.prompt_eval_count
        return _Answer(slots, done_reason, prompt_tokens, behaviour)

    def _generation(self, request: Any, spec: ModelSpec, model: str, fields: Mapping[str, Any],
                    chat: bool, thinking: bool, tools: bool, num_predict: int,
                    user_text: str, prompt_tokens: int, raw: bool) -> Any:
        started = self.reactor.seconds()
        behaviour = self._script.behaviour_for(spec)
        self._script.set_loaded(spec)
        early = self._early_fault(request, behaviour)
        if early is not None:
            return early
        fmt = fields.get("format")
        answer = self._answer(behaviour, thinking, tools, num_predict, user_text, prompt_tokens,
                              json_format=bool(fmt))
        context = None if (chat or raw) else _context_tokens(user_text)
        stamp = self.stamp

        def final_object(now: float, content: str, reasoning: str,
                         calls: List[Dict[str, Any]]) -> Dict[str, Any]:
            obj: Dict[str, Any] = {"model": model, "created_at": stamp(now).decode("ascii")}
            if chat:
                message: Dict[str, Any] = {"role": "assistant", "content": content}
                if reasoning:
                    message["thinking"] = reasoning
                if calls:
                    message["tool_calls"] = calls
                obj["message"] = message
            else:
                obj["response"] = content
                if reasoning:
                    obj["thinking"] = reasoning
            obj["done"] = True
            if answer.done_reason:
                obj["done_reason"] = answer.done_reason
            if context is not None:
                obj["context"] = context
            obj.update(answer.metrics(started, now))
            return obj

        if fields.get("stream", True) is not False:
            head = b'{"model":%s,"created_at":"' % (_dumps(model),)
            if chat:
                encoders = {_THINKING: _chat_thinking, _CONTENT: _chat_content, _TOOL: _chat_tool}
            else:
                encoders = {_THINKING: _generate_thinking, _CONTENT: _generate_content}
            tails = [encoders[kind](value) for kind, value in answer.slots]

            def final(now: float) -> bytes:
                return _dumps(final_object(now, "", "", [])) + b"\n"

            _Stream(self, request, head, tails, final, behaviour, started).start()
            return NOT_DONE_YET

        def body() -> bytes:
            now = self.reactor.seconds()
            return _dumps(final_object(
                now, answer.joined(_CONTENT), answer.joined(_THINKING), answer.tool_calls()))

        count = len(answer.slots)
        return self._later(request, behaviour, count, body)

    def _early_fault(self, request: Any, behaviour: Behaviour) -> Any:
        """
        Faults that strike before any generation: never answering, or an
        HTTP error (after C{ttft}).
        """
        fault = behaviour.fault
        if fault is None or fault.kind not in ("hang_before_headers", "http_status"):
            return None
        self.record.fault_struck()
        if fault.kind == "hang_before_headers":
            return _Delayed(self, request, None, lambda: None).start()
        body = _dumps({"error": fault.error})
        if behaviour.ttft <= 0:
            return self._json_bytes(request, fault.status, body)
        return _Delayed(self, request, behaviour.ttft,
                        lambda: _respond(request, fault.status, body)).start()

    @staticmethod
    def _json_bytes(request: Any, status: int, body: bytes) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", _JSON_TYPE)
        return body

    def _later(self, request: Any, behaviour: Behaviour, count: int,
               body: Callable[[], bytes]) -> Any:
        """
        A one-object answer (non-streaming generation, embeddings) after the
        time generating C{count} chunks takes, or the C{*_after} fault's
        equivalent: hang, drop the connection, garbage, or a 500.
        """
        tps = behaviour.tokens_per_second
        fault = behaviour.fault
        chunks = count
        if fault is not None:
            chunks = min(fault.after, count)
        delay = behaviour.ttft + (max(chunks - 1, 0) / tps if tps > 0 else 0.0)
        deliver: Callable[[], None]
        if fault is None:
            if delay <= 0:
                return self._json_bytes(request, 200, body())
            deliver = lambda: _respond(request, 200, body())  # noqa: E731
            return _Delayed(self, request, delay, deliver).start()

        def strike() -> None:
            self.record.fault_struck()
            if fault.kind == "close_after":
                request.channel.transport.loseConnection()
            elif fault.kind == "invalid_json_after":
                _respond(request, 200, GARBAGE_LINE)
            else:
                _respond(request, 500, _dumps({"error": fault.error}))

        if fault.kind == "hang_after":
            self.record.fault_struck()
            return _Delayed(self, request, None, lambda: None).start()
        return _Delayed(self, request, delay, strike).start()

    # /api/embed

    def _embed(self, request: Any, body: Any) -> Any:
        fields = _request_fields(body, _EMBED_FIELDS, "EmbedRequest")
        value = fields.get("input")
        if isinstance(value, str):
            inputs = [value] if value else []
        elif isinstance(value, list):
            if not all(isinstance(item, str) for item in value):
                raise _Refusal(400, "invalid input type")
            inputs = value
        elif value is None:
            inputs = []
        else:
            raise _Refusal(400, "invalid input type")
        model = fields.get("model") or ""
        if not model:
            raise _Refusal(400, "model is required")
        spec = self._find(model, "model %s not found, try pulling it first" % (_go_quote(model),))
        check_options(fields.get("options"))
        self._script.set_loaded(spec)
        if not inputs:
            return self._json(request, {"model": model, "embeddings": []})
        counts = [rough_token_count(text) for text in inputs]
        if fields.get("truncate") is False and max(counts) > spec.context_length:
            raise _Refusal(400, "the input length exceeds the context length")
        started = self.reactor.seconds()
        behaviour = self._script.behaviour_for(spec)
        early = self._early_fault(request, behaviour)
        if early is not None:
            return early
        dimensions = fields.get("dimensions")
        if behaviour.embeddings is not None:
            fixed = behaviour.embeddings
            vectors = [list(fixed[i % len(fixed)]) for i in range(len(inputs))]
        else:
            vectors = [embedding_vector(text, spec.embedding_length, dimensions)
                       for text in inputs]
        prompt_eval_count = (behaviour.prompt_eval_count
                             if behaviour.prompt_eval_count is not None else sum(counts))

        def body() -> bytes:
            elapsed = int((self.reactor.seconds() - started) * 1e9)
            total = max(elapsed, _LOAD_NS + prompt_eval_count * _PROMPT_NS_PER_TOKEN)
            obj: Dict[str, Any] = {"model": model, "embeddings": vectors,
                                   "total_duration": total, "load_duration": _LOAD_NS}
            if prompt_eval_count:
                obj["prompt_eval_count"] = prompt_eval_count
            return _dumps(obj)

        return self._later(request, behaviour, 1, body)

    # listing and info

    def _root(self, request: Any, body: Any) -> bytes:
        return self._text(request, 200, b"Ollama is running")

    def _version(self, request: Any, body: Any) -> bytes:
        return self._json(request, {"version": self._script.version})

    def _tags(self, request: Any, body: Any) -> bytes:
        return self._json(request, {"models": [
            {"name": spec.name, "model": spec.name, "modified_at": spec.modified_at,
             "size": spec.size, "digest": spec.model_digest, "details": spec.details()}
            for spec in self._script.models
        ]})

    def _ps(self, request: Any, body: Any) -> bytes:
        expires = self.stamp(self.reactor.seconds() + _KEEP_ALIVE_SECONDS).decode("ascii")
        return self._json(request, {"models": [
            {"name": spec.name, "model": spec.name, "size": spec.size,
             "digest": spec.model_digest, "details": spec.details(), "expires_at": expires,
             "size_vram": spec.size, "context_length": spec.context_length}
            for spec in self._script.loaded_models()
        ]})

    def _show(self, request: Any, body: Any) -> bytes:
        fields = _request_fields(body, _SHOW_FIELDS, "ShowRequest")
        name = fields.get("model") or fields.get("name") or ""
        if not name:
            raise _Refusal(400, "model is required")
        parsed = ModelName.parse(name)
        shown = parsed.display() if parsed is not None else name
        spec = self._find(name, "model '%s' not found" % (shown,))
        family = spec.family
        model_info: Dict[str, Any] = {
            "general.architecture": family,
            "general.basename": spec.parsed.model,
            "%s.context_length" % family: spec.context_length,
            "%s.embedding_length" % family: spec.embedding_length,
        }
        return self._json(request, {
            "modelfile": "# Modelfile generated by \"ollama show\"\n"
                         "# To build a new Modelfile based on this, replace FROM with:\n"
                         "# FROM %s\n\nFROM %s\nTEMPLATE {{ .Prompt }}\n" % (spec.name, spec.name),
            "template": "{{ .Prompt }}",
            "details": spec.details(),
            "model_info": model_info,
            "capabilities": list(spec.capabilities),
            "modified_at": spec.modified_at,
        })

    # control paths (not Ollama's)

    def _get_record(self, request: Any, body: Any) -> bytes:
        return self._json(request, self.record.to_dict())

    def _reset(self, request: Any, body: Any) -> bytes:
        self.record.reset()
        return self._json(request, {"reset": True})

    def _get_script(self, request: Any, body: Any) -> bytes:
        return self._json(request, self._script.to_dict())

    def _set_script(self, request: Any, body: Any) -> bytes:
        try:
            self.script = Script.from_dict(body)
        except ScriptError as e:
            raise _Refusal(400, str(e))
        return self._json(request, self._script.to_dict())

    def _queue(self, request: Any, body: Any) -> bytes:
        try:
            self._script.push(body)
        except ScriptError as e:
            raise _Refusal(400, str(e))
        return self._json(request, {"pending": self._script.pending})


def _context_tokens(prompt: str) -> List[int]:
    """
    The deprecated C{context} of C{/api/generate}: a short, stable int list.
    """
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return [int.from_bytes(digest[i:i + 2], "big") % 32000 for i in range(0, 12, 2)]


def build_resource(script: Optional[Script] = None, record: Optional[Record] = None,
                   reactor: Any = None) -> EmulatorResource:
    """
    The emulator as a resource, for tests that host it themselves
    (C{StubTreq}, a C{Site} on a C{StringTransport}).

    @param reactor: provides C{seconds} and C{callLater}; a
        L{twisted.internet.task.Clock} in unit tests. Defaults to the
        global reactor.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor
        reactor = global_reactor
    return EmulatorResource(script if script is not None else Script(),
                            record if record is not None else Record(), reactor)


# -- listening --------------------------------------------------------------


class _TrackedChannel(HTTPChannel):
    """
    An HTTP/1.1 channel that tells its site when it opens and closes, so
    L{Emulator.stop} can drop every open connection.
    """

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.channel_opened(self)

    def connectionLost(self, reason: Any) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.factory.channel_closed(self)


class _EmulatorSite(Site):
    """
    A C{Site} without an access log (it would cost more than a stream chunk)
    that tracks its connections.
    """

    protocol = _TrackedChannel

    def __init__(self, resource: Resource, reactor: Any) -> None:
        super().__init__(resource, reactor=reactor)
        self._channels: set = set()
        self._idle: List[defer.Deferred] = []

    def log(self, request: Any) -> None:
        pass

    def channel_opened(self, channel: HTTPChannel) -> None:
        self._channels.add(channel)

    def channel_closed(self, channel: HTTPChannel) -> None:
        self._channels.discard(channel)
        if not self._channels:
            waiters, self._idle = self._idle, []
            for waiter in waiters:
                waiter.callback(None)

    def drop_connections(self) -> defer.Deferred:
        """
        Abort every open connection; fires when all are closed.
        """
        if not self._channels:
            return defer.succeed(None)
        waiter: defer.Deferred = defer.Deferred()
        self._idle.append(waiter)
        for channel in list(self._channels):
            channel.transport.abortConnection()
        return waiter


class Emulator:
    """
    A listening emulator.

    @ivar port: the C{IListeningPort}.
    @ivar url: C{http://127.0.0.1:PORT}, what the gateway's C{upstream.url}
        should be.
    @ivar resource: the L{EmulatorResource}.
    """

    def __init__(self, port: Any, site: _EmulatorSite, resource: EmulatorResource,
                 host: str) -> None:
        self.port = port
        self.resource = resource
        self._site = site
        self._stop_waiters: Optional[List[defer.Deferred]] = None
        self._stopped = False
        shown = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        if ":" in shown:
            shown = "[%s]" % (shown,)
        self.url = "http://%s:%d" % (shown, port.getHost().port)

    @property
    def script(self) -> Script:
        return self.resource.script

    @script.setter
    def script(self, script: Script) -> None:
        self.resource.script = script

    @property
    def record(self) -> Record:
        return self.resource.record

    def stop(self) -> defer.Deferred:
        """
        Stop listening and drop open connections (streams in progress count
        as abandoned). Fires when the port and every connection are closed;
        calling it again is harmless.
        """
        if self._stopped:
            return defer.succeed(None)
        waiter: defer.Deferred = defer.Deferred()
        if self._stop_waiters is None:
            self._stop_waiters = [waiter]
            stopping = defer.maybeDeferred(self.port.stopListening)
            dropping = self._site.drop_connections()
            (defer.gatherResults([stopping, dropping], consumeErrors=True)
             .addBoth(self._stop_done))
        else:
            self._stop_waiters.append(waiter)
        return waiter

    def _stop_done(self, outcome: Any) -> None:
        self._stopped = True
        waiters, self._stop_waiters = self._stop_waiters or [], []
        for waiter in waiters:
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            else:
                waiter.callback(None)


def listen(reactor: Any, script: Optional[Script] = None, host: str = "127.0.0.1",
           port: int = 0, record: Optional[Record] = None) -> defer.Deferred:
    """
    Serve the emulator on C{host:port} (port 0 picks a free one).

    @return: a Deferred firing with an L{Emulator}, or failing with
        C{CannotListenError}.
    """
    resource = build_resource(script, record, reactor)
    site = _EmulatorSite(resource, reactor)
    try:
        listening = reactor.listenTCP(port, site, interface=host)
    except Exception:
        return defer.fail()
    return defer.succeed(Emulator(listening, site, resource, host))
