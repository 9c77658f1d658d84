# -*- test-case-name: tests.translate.test_common -*-
"""
Small mapping rules shared by the non-streaming and the streaming
translators, so both give the same answer for the same upstream fact.

Sections refer to C{ollama-openai-protocol.md}.
"""

from __future__ import annotations

import json
import secrets
import string
import uuid
from datetime import datetime
from typing import Any, Callable, Dict, Optional

_ALNUM = string.ascii_letters + string.digits

#: Produces a fresh random token; injectable so tests can pin ids.
IdFactory = Callable[[], str]


def random_token() -> str:
    """
    32 random hex characters (uuid4): the unique part of every id we mint.
    """
    return uuid.uuid4().hex


def chat_completion_id(token: Optional[str] = None) -> str:
    """
    C{chatcmpl-} plus at least 24 random alphanumerics (section 6.1); unlike
    Ollama compat's C{chatcmpl-<0..998>}, ids do not collide.
    """
    return "chatcmpl-" + (token or random_token())


def completion_id(token: Optional[str] = None) -> str:
    """
    C{cmpl-} plus random alphanumerics, for C{text_completion} objects.
    """
    return "cmpl-" + (token or random_token())


def tool_call_id() -> str:
    """
    An id for a tool call that the upstream sent without one (E20).
    """
    return "call_" + "".join(secrets.choice(_ALNUM) for _ in range(24))


def finish_reason(done_reason: Optional[str], had_tool_calls: bool) -> str:
    """
    Section 6.3: C{length} wins, then C{tool_calls}, else C{stop}. Never
    returns a value outside OpenAI's enum (C{load}, C{unload} and unknown
    values become C{stop}/C{tool_calls}).
    """
    if done_reason == "length":
        return "length"
    return "tool_calls" if had_tool_calls else "stop"


def _count(native: dict, key: str) -> int:
    value = native.get(key)
    # Metric fields are omitempty upstream: absent means 0 (section 2.1, E19).
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return value


def usage(native: dict) -> dict:
    """
    The OpenAI C{usage} object from a final native object's counts.
    """
    prompt = _count(native, "prompt_eval_count")
    completion = _count(native, "eval_count")
    result = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if "prompt_eval_cached_count" in native:
        result["prompt_tokens_details"] = {
            "cached_tokens": _count(native, "prompt_eval_cached_count")
        }
    return result


#: Ollama's own timing fields of a final answer (nanoseconds; C{eval_count}
#: is tokens), kept for the metrics.
TIMING_FIELDS = ("load_duration", "prompt_eval_duration", "eval_duration", "eval_count")


def ollama_timings(native: Any) -> Optional[Dict[str, int]]:
    """
    The timing fields of Ollama's final answer that are non-negative
    integers, or L{None} when there are none.
    """
    if not isinstance(native, dict):
        return None
    found = {}
    for name in TIMING_FIELDS:
        value = native.get(name)
        if type(value) is int and value >= 0:
            found[name] = value
    return found or None


def openai_tool_call(
    native_call: dict, new_id: Callable[[], str] = tool_call_id
) -> dict:
    """
    One native tool call as an OpenAI tool call: C{arguments} becomes a JSON
    B{string} (chat front ends crash on an object), a missing id is minted.

    @param native_call: C{{"id"?, "function": {"name", "arguments": {...}}}}.
    """
    function = native_call.get("function")
    if not isinstance(function, dict):
        function = {}
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        # Already a string (some backends): pass it on as is.
        arguments_text = arguments
    else:
        # Compact, as OpenAI and the reference's vectors (TV-18) write it.
        arguments_text = json.dumps(
            {} if arguments is None else arguments,
            ensure_ascii=False,
            separators=(",", ":"),
        )
    call_id = native_call.get("id")
    if not isinstance(call_id, str) or not call_id:
        call_id = new_id()
    name = function.get("name")
    return {
        "id": call_id,
        "type": "function",
        "function": {
            "name": name if isinstance(name, str) else "",
            "arguments": arguments_text,
        },
    }


def unix_time(timestamp: object, fallback: int) -> int:
    """
    Unix seconds of an RFC 3339 timestamp such as Ollama's C{created_at}
    (up to nine fractional digits, C{Z} or an offset); C{fallback} when it is
    missing or unparseable.
    """
    if not isinstance(timestamp, str) or not timestamp:
        return fallback
    text = timestamp.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # Trim nanoseconds to microseconds: fromisoformat takes at most six digits
    # on every Python we support.
    if "." in text:
        head, _, rest = text.partition(".")
        digits = ""
        while rest and rest[0].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        text = head + ("." + digits[:6].ljust(6, "0") if digits else "") + rest
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return fallback
    if parsed.tzinfo is None:
        return fallback
    return int(parsed.timestamp())


def owned_by(model_name: str) -> str:
    """
    The namespace of a model name (section 6.4): C{library} for plain names
    such as C{qwen3:8b}, C{bartowski} for C{hf.co/bartowski/X:Q4}.
    """
    path = model_name.split(":", 1)[0] if "/" not in model_name else model_name
    parts = path.split("/")
    if len(parts) >= 2:
        return parts[-2] or "library"
    return "library"
