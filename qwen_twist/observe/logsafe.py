# -*- test-case-name: tests.observe.test_logsafe -*-
"""
Text from clients, made safe to put in a log line.

Why: the access log records fields a client chooses (the JSON C{model}, the
path, a forwarded address). Raw, a CR or LF forges a second log line, an
ESC sequence rewrites an operator's terminal, and a lone surrogate (valid
in JSON, not encodable as UTF-8) makes the log file observer fail on the
whole event, so that request's line silently disappears. Every logged
field that a client can influence goes through L{clean}: control
characters (C0, DEL, C1), the Unicode line and paragraph separators and
lone surrogates become visible C{\\xNN}/C{\\uNNNN} escapes, and over-long
values are cut, so one request is always exactly one readable line.
"""

from __future__ import annotations

import re
from typing import Any

#: Longest logged value; a model name or path longer than this is cut.
MAX_FIELD = 256

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _escape(match: "re.Match[str]") -> str:
    code = ord(match.group())
    if code < 0x100:
        return "\\x%02x" % (code,)
    return "\\u%04x" % (code,)


def clean(value: Any, limit: int = MAX_FIELD) -> Any:
    """
    C{value} with every unsafe character escaped and cut to C{limit}
    characters (with C{...}); anything but a string is returned as is.
    """
    if not isinstance(value, str):
        return value
    if len(value) > limit:
        value = value[:limit] + "..."
    return _UNSAFE.sub(_escape, value)
