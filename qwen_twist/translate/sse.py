# -*- test-case-name: tests.translate.test_sse -*-
"""
The few byte strings a qwengate event stream is made of.

Clients parse our streams with strict decoders: the official Python SDK
C{json.loads} every dispatched event, so an C{event:} line without data,
an empty C{data:} line or an C{id:} line makes it raise (reference
section 3.7). So every event here is exactly C{data: } plus one line of
JSON plus a blank line, comments are the only other thing we send, and the
JSON is ASCII-only: C{ensure_ascii} escapes U+2028 and U+2029, which some
JavaScript line splitters treat as line breaks.
"""

from __future__ import annotations

import json
from typing import Optional

from qwen_twist import errors

#: The end-of-stream sentinel, sent only after a successful stream.
DONE = b"data: [DONE]\n\n"

#: A comment: keeps proxies and browsers from timing out an idle stream,
#: ignored by every SSE parser (E28).
KEEPALIVE = b": keep-alive\n\n"

_encode = json.JSONEncoder(separators=(",", ":")).encode


def event(obj: dict) -> bytes:
    """
    One C{data:} event carrying C{obj} as compact, single-line ASCII JSON.
    """
    return b"data: " + _encode(obj).encode("ascii") + b"\n\n"


def error_event(message: str, type: str = "server_error", code: Optional[str] = None) -> bytes:
    """
    A mid-stream error in the OpenAI envelope (the object form, so the SDK
    raises C{APIError} with C{message}; reference section 3.7).
    """
    return event(errors.stream_error(message, type, code).envelope())
