# -*- test-case-name: tests.emulator.test_fields,tests.emulator.test_server -*-
"""
Ollama's request structs as Go's C{encoding/json} sees them: which field
must hold which JSON type, and the exact message when it does not.

Ollama never sees a Python dict: Go unmarshals the body into
C{api.ChatRequest} (or C{GenerateRequest}, ...), and a wrongly typed field
fails with C{json: cannot unmarshal string into Go struct field
ChatRequest.stream of type bool}; options are checked later, by the
scheduler, with a 500. The gateway relays those texts, so the emulator
reproduces them. Everything here is pure: values in, L{Refusal} out.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, Mapping, Optional

from qwen_twist.emulator.wire import Refusal, go_quote

__all__ = [
    "CHAT_FIELDS", "EMBED_FIELDS", "GENERATE_FIELDS", "SHOW_FIELDS", "base64_error_offset",
    "check_format", "check_options", "check_top_logprobs", "keep_alive_seconds",
    "parse_go_duration", "request_fields",
]

_Check = Callable[[Any, str], None]

_THINK_LEVELS = frozenset(("high", "medium", "low", "max"))


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


def _type_error(value: Any, path: str, go_type: str) -> Refusal:
    return Refusal(400, "json: cannot unmarshal %s into Go struct field %s of type %s" % (
        _kind(value), path, go_type))


def _check_fields(obj: Mapping[str, Any], table: Mapping[str, _Check], path: str) -> None:
    # Go reports the first problem in document order; null leaves a field
    # at its zero value.
    for key, value in obj.items():
        check = table.get(key)
        if check is not None and value is not None:
            check(value, path + "." + key)


def _of_type(kind: type, go_type: str,
             fields: Optional[Mapping[str, _Check]] = None) -> _Check:
    """
    A check that the value is a C{kind} (Go's C{go_type}) and, for a
    struct, that its own C{fields} are well typed.
    """
    def check(value: Any, path: str) -> None:
        if not isinstance(value, kind):
            raise _type_error(value, path, go_type)
        if fields is not None:
            _check_fields(value, fields, path)
    return check


def _array_of(go_type: str, item: _Check) -> _Check:
    """
    A check that the value is an array (Go's C{go_type}) of C{item}s. Go
    names the array's own path for an element's error.
    """
    def check(value: Any, path: str) -> None:
        if not isinstance(value, list):
            raise _type_error(value, path, go_type)
        for element in value:
            item(element, path)
    return check


def _c_int(value: Any, path: str) -> None:
    if isinstance(value, float):
        raise Refusal(400, "json: cannot unmarshal number %s into Go struct field %s of type int"
                      % (json.dumps(value), path))
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(value, path, "int")


def _c_any(value: Any, path: str) -> None:
    pass


def _c_think(value: Any, path: str) -> None:
    if isinstance(value, bool) or (isinstance(value, str) and value in _THINK_LEVELS):
        return
    if isinstance(value, str):
        raise Refusal(400, 'invalid think value: %s (must be "high", "medium", "low", '
                           '"max", true, or false)' % (go_quote(value),))
    raise Refusal(400, 'think must be a boolean or string ("high", "medium", "low", '
                       '"max", true, or false)')


_GO_TYPE_NAMES = {"bool": "bool", "array": "[]interface {}", "object": "map[string]interface {}"}
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3,
                   "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float:
    """
    Seconds in a Go duration string (C{"5m"}, C{"1h30m"}, C{"0"}, C{"-1s"}).

    @raise Refusal: 400 with Go's C{time: ...} message.
    """
    rest, sign = text, 1.0
    if rest[:1] in ("+", "-"):
        sign = -1.0 if rest[0] == "-" else 1.0
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise Refusal(400, "time: invalid duration %s" % (go_quote(text),))
    total = 0.0
    while rest:
        i = 0
        while i < len(rest) and (rest[i].isdigit() or rest[i] == "."):
            i += 1
        number = rest[:i]
        if not number.strip("."):
            raise Refusal(400, "time: invalid duration %s" % (go_quote(text),))
        rest = rest[i:]
        j = 0
        while j < len(rest) and not (rest[j].isdigit() or rest[j] == "."):
            j += 1
        unit, rest = rest[:j], rest[j:]
        if not unit:
            raise Refusal(400, "time: missing unit in duration %s" % (go_quote(text),))
        if unit not in _DURATION_UNITS:
            raise Refusal(400, "time: unknown unit %s in duration %s"
                          % (go_quote(unit), go_quote(text)))
        total += float(number) * _DURATION_UNITS[unit]
    return sign * total


def _c_duration(value: Any, path: str) -> None:
    if isinstance(value, str):
        parse_go_duration(value)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Refusal(400, "Unsupported type: '%s'" % (_GO_TYPE_NAMES.get(_kind(value)),))


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


def _c_image(value: Any, path: str) -> None:
    if not isinstance(value, str):
        raise _type_error(value, path, "api.ImageData")
    offset = base64_error_offset(value)
    if offset is not None:
        raise Refusal(400, "illegal base64 data at input byte %d" % (offset,))


_c_string = _of_type(str, "string")
_c_bool = _of_type(bool, "bool")
_c_map = _of_type(dict, "map[string]interface {}")
_c_images = _array_of("[]api.ImageData", _c_image)
_c_ints = _array_of("[]int", _c_int)
_c_tools = _array_of("api.Tools", _of_type(dict, "api.Tool"))

_FUNCTION_FIELDS: Dict[str, _Check] = {
    "index": _c_int, "name": _c_string,
    "arguments": _of_type(dict, "api.ToolCallFunctionArguments"),
}
_TOOL_CALL_FIELDS: Dict[str, _Check] = {
    "id": _c_string, "function": _of_type(dict, "api.ToolCallFunction", _FUNCTION_FIELDS)}
_MESSAGE_FIELDS: Dict[str, _Check] = {
    "role": _c_string, "content": _c_string, "thinking": _c_string, "images": _c_images,
    "tool_calls": _array_of("[]api.ToolCall", _of_type(dict, "api.ToolCall", _TOOL_CALL_FIELDS)),
    "tool_name": _c_string, "tool_call_id": _c_string,
}
_COMMON: Dict[str, _Check] = {
    "model": _c_string, "stream": _c_bool, "format": _c_any, "keep_alive": _c_duration,
    "options": _c_map, "think": _c_think, "logprobs": _c_bool, "top_logprobs": _c_int,
    "truncate": _c_bool, "shift": _c_bool,
}
CHAT_FIELDS = dict(
    _COMMON, messages=_array_of("[]api.Message", _of_type(dict, "api.Message", _MESSAGE_FIELDS)),
    tools=_c_tools,
)
GENERATE_FIELDS = dict(
    _COMMON, prompt=_c_string, suffix=_c_string, system=_c_string, template=_c_string,
    context=_c_ints, raw=_c_bool, images=_c_images,
)
EMBED_FIELDS: Dict[str, _Check] = {
    "model": _c_string, "input": _c_any, "truncate": _c_bool, "dimensions": _c_int,
    "keep_alive": _c_duration, "options": _c_map,
}
SHOW_FIELDS: Dict[str, _Check] = {
    "model": _c_string, "name": _c_string, "system": _c_string, "template": _c_string,
    "verbose": _c_bool, "options": _c_map,
}


def request_fields(body: Any, table: Mapping[str, _Check], struct: str) -> Dict[str, Any]:
    """
    The decoded body as the Go struct C{api.<struct>} would accept it:
    L{None} is an empty request, anything but an object or a wrongly typed
    field (per C{table}, e.g. L{CHAT_FIELDS}) is refused.

    @raise Refusal: 400 with Go's C{json: cannot unmarshal ...} text.
    """
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise Refusal(400, "json: cannot unmarshal %s into Go value of type api.%s"
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

    @raise Refusal: 500, like Ollama's scheduler, for a value of the wrong
        JSON type (C{option "stop" must be of type array}).
    """
    if not options:
        return -1
    for key, value in options.items():
        if value is None:
            continue
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key in _INT_OPTIONS and not is_number:
            raise Refusal(500, "option %s must be of type integer" % (go_quote(key),))
        if key in _FLOAT_OPTIONS and not is_number:
            raise Refusal(500, "option %s must be of type float32" % (go_quote(key),))
        if key in _BOOL_OPTIONS and not isinstance(value, bool):
            raise Refusal(500, "option %s must be of type boolean" % (go_quote(key),))
        if key == "stop":
            if not isinstance(value, list):
                raise Refusal(500, 'option "stop" must be of type array')
            if not all(isinstance(item, str) for item in value):
                raise Refusal(500, 'option "stop" must be of an array of strings')
    num_predict = options.get("num_predict")
    if isinstance(num_predict, (int, float)) and not isinstance(num_predict, bool):
        return int(num_predict)
    return -1


def check_format(fmt: Any) -> None:
    """
    C{format} must be empty, C{"json"} or a schema object.

    @raise Refusal: 500, as Ollama answers.
    """
    if fmt is None or fmt == "" or fmt == "json" or isinstance(fmt, dict):
        return
    raise Refusal(500, 'invalid format: %s; expected "json" or a valid JSON Schema object'
                  % (go_quote(json.dumps(fmt, ensure_ascii=False)),))


def check_top_logprobs(fields: Mapping[str, Any]) -> None:
    """
    @raise Refusal: 400 unless C{top_logprobs} is within 0..20.
    """
    top = fields.get("top_logprobs") or 0
    if top < 0 or top > 20:
        raise Refusal(400, "top_logprobs must be between 0 and 20")


def keep_alive_seconds(fields: Mapping[str, Any]) -> Optional[float]:
    """
    The request's C{keep_alive} in seconds (a Go duration string or a
    number), or L{None} when it is unset.
    """
    value = fields.get("keep_alive")
    if value is None:
        return None
    return parse_go_duration(value) if isinstance(value, str) else float(value)
