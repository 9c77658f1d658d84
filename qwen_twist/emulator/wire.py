# -*- test-case-name: tests.emulator.test_server -*-
"""
The bytes of Ollama's wire format that do not depend on any one endpoint:
how a request body is decoded (and how Go's C{encoding/json} words a
syntax error), what an error answer looks like, and how timestamps and JSON
are written.

The gateway parses Ollama's error texts and relays them, so the emulator
must produce them letter for letter; keeping them here, free of Twisted and
of I/O, lets a test check each text without a server.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, List, Optional

__all__ = [
    "JSON_TYPE", "NDJSON_TYPE", "TEXT_TYPE", "Refusal", "Stamp", "decode_body", "dumps",
    "error_body", "go_quote",
]

JSON_TYPE = b"application/json; charset=utf-8"
NDJSON_TYPE = b"application/x-ndjson"
TEXT_TYPE = b"text/plain; charset=utf-8"

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def dumps(value: Any) -> bytes:
    """
    Compact UTF-8 JSON, as Go's C{json.Marshal} writes it (no spaces, no
    ASCII escaping).
    """
    return _encode(value).encode("utf-8", "replace")


def error_body(message: str) -> bytes:
    """
    The body of every Ollama error answer: C{{"error":"..."}}.
    """
    return dumps({"error": message})


def go_quote(text: str) -> str:
    """
    Roughly Go's C{%q}: a double-quoted, escaped string.
    """
    return json.dumps(text, ensure_ascii=False)


class Stamp:
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


class Refusal(Exception):
    """
    An error answer: C{{"error": message}} with C{status}.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- request decoding (Go encoding/json look-alike) --------------------------


def _reject_constant(name: str) -> Any:
    # Go's JSON has no NaN or Infinity.
    if name.startswith("-"):
        raise Refusal(400, "invalid character 'I' in numeric literal")
    raise Refusal(400, "invalid character '%s' looking for beginning of value" % (name[0],))


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

    @raise Refusal: with status 400.
    """
    text = raw.decode("utf-8", "replace")
    start = len(text) - len(text.lstrip(" \t\r\n"))
    if start == len(text):
        raise Refusal(400, "missing request body")
    try:
        value, _ = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as e:
        raise Refusal(400, _syntax_error(text, e))
    except RecursionError:
        raise Refusal(400, "exceeded max depth")
    return value
