# -*- test-case-name: tests.observe.test_ids -*-
"""
Request ids and client-supplied user names: what may be taken from a
client and put into logs, audit lines and upstream headers.

Why bounded: an id or user name is copied into every log line about a call,
into the audit file and into a header sent to Ollama; a client must not be
able to inject newlines, quotes, megabytes, or anything shaped like a
secret there. Anything that does not match is replaced (ids) or dropped
(user names), never "cleaned" into something that looks client-chosen.
"""

from __future__ import annotations

import random
import re
from typing import Any, Optional

from qwen_twist.observe.redact import redact, suspect

_random = random.Random().getrandbits

#: Longest accepted incoming X-Request-ID.
MAX_REQUEST_ID = 128
#: Longest OpenAI C{user} value recorded.
MAX_USER = 256

_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,%d}\Z" % (MAX_REQUEST_ID - 1,))
_USER = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._:@+-]{0,%d}\Z" % (MAX_USER - 1,))


def new_request_id() -> str:
    """
    A fresh id: 32 hex digits. An id names a call, it guards nothing, so
    it comes from the fast PRNG (seeded from the OS at start) rather than a
    system call per request as C{uuid4} would make.
    """
    return "%032x" % (_random(128),)


def request_id_from(value: Optional[bytes]) -> str:
    """
    The incoming C{X-Request-ID} when it is well formed (1-128 characters
    of letters, digits and C{._:@/+=-}, starting with a letter or digit),
    otherwise a fresh id.
    """
    if value:
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            return new_request_id()
        if _ID.match(text) and not (suspect(text) and redact(text) != text):
            # (An id shaped like a key would be copied into the audit
            # file and sent to Ollama: replaced instead.)
            return text
    return new_request_id()


def clean_user(value: Any) -> Optional[str]:
    """
    The OpenAI C{user} field (or a trusted front end's user header) as
    recorded: a string of at most 256 letters, digits and C{._:@+-}, or
    L{None} for anything else.
    """
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str) and _USER.match(value) and not (
            suspect(value) and redact(value) != value):
        return value
    return None


def clean_model(value: Any) -> Optional[str]:
    """
    The model a request body named, for the audit record of a call
    refused before translation: a string, cut to 256 characters.
    """
    if isinstance(value, str) and value:
        return value[:256]
    return None
