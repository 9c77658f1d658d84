# -*- test-case-name: tests.translate.test_validate -*-
"""
Typed-field checks shared by every request translator.

Ollama answers a wrongly typed option with an HTTP 500 from deep inside its
scheduler (reference section 2.4, E15, E16), and silently ignores unknown
top-level fields, so a client's mistake either looks like a server fault or
vanishes. Rule R4 of the reference moves all of that checking into the
gateway: every helper here either returns a value of the promised type or
raises L{qwen_twist.errors.invalid_request} naming the field in C{param}.

Conventions used throughout:

  - JSON C{null} is the same as an absent field (OpenAI's SDKs and many
    front ends send C{null} for "not set").
  - C{bool} is never a number, although Python says C{True == 1}.
  - Non-finite floats (C{json.loads} turns C{Infinity} and C{NaN} into
    floats) are rejected: Go's JSON decoder cannot read them back.
  - An integral float such as C{64.0} is accepted where an integer is
    expected and becomes C{64}; C{64.5} is rejected.
  - Messages echo the field name and, for numbers, the offending value, but
    never a client string (it could be megabytes long).
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Optional, Tuple, Union

from qwen_twist.errors import invalid_request

Number = Union[int, float]

#: Go's C{int} on the upstream is 64-bit; larger values overflow there.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

#: OpenAI allows 4 stop sequences; Ollama has no limit. We allow a few more
#: than OpenAI so that front ends that add their own are not refused, but not
#: an unbounded list scanned on every generated token.
MAX_STOP_SEQUENCES = 16

#: Keys accepted inside the C{options} extension object, by JSON type (the
#: current C{api.Options}/C{Runner} fields plus older ones that newer servers
#: only warn about; reference section 2.4). Anything else is refused so a
#: typo is reported instead of being ignored upstream.
INT_OPTIONS = frozenset(
    {
        "num_predict",
        "top_k",
        "seed",
        "num_keep",
        "repeat_last_n",
        "num_ctx",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "num_thread",
        "draft_num_predict",
        "mirostat",
    }
)
FLOAT_OPTIONS = frozenset(
    {
        "temperature",
        "top_p",
        "min_p",
        "typical_p",
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
        "tfs_z",
        "mirostat_tau",
        "mirostat_eta",
    }
)
BOOL_OPTIONS = frozenset(
    {
        "use_mmap",
        "use_mlock",
        "numa",
        "low_vram",
        "f16_kv",
        "vocab_only",
        "penalize_newline",
        "logits_all",
    }
)
#: Every key the gateway may ever put in a native C{options} object.
ALLOWED_OPTIONS = INT_OPTIONS | FLOAT_OPTIONS | BOOL_OPTIONS | {"stop"}


def shown_kind(kind: object) -> str:
    """
    A client-supplied C{type} value as error messages quote it: a string
    quoted and cut at 40 characters, anything else by its JSON type name.
    """
    return "'%s'" % kind[:40] if isinstance(kind, str) else type_name(kind)


def type_name(value: object) -> str:
    """
    The JSON name of a decoded value's type, for error messages.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _wrong_type(param: str, expected: str, value: object):
    return invalid_request(
        "Invalid type for '%s': expected %s, but got %s instead."
        % (param, expected, type_name(value)),
        param,
    )


def _out_of_range(param: str, value: Number, minimum, maximum):
    if minimum is not None and maximum is not None:
        bounds = "between %s and %s" % (minimum, maximum)
    elif minimum is not None:
        bounds = "at least %s" % (minimum,)
    else:
        bounds = "at most %s" % (maximum,)
    return invalid_request(
        "Invalid value for '%s': %r; it must be %s." % (param, value, bounds), param
    )


#: A UTF-16 surrogate code point. C{json.loads} joins a valid C{\\ud83d\\ude00}
#: pair into one code point, so any surrogate left in a decoded string is a
#: lone one, which cannot be encoded as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")


def replace_lone_surrogates(value: Any) -> Any:
    """
    C{value} with every lone UTF-16 surrogate in its strings (keys
    included) replaced by U+FFFD, as Go's decoder in Ollama does; the same
    objects come back when there is none, so nothing is copied in the
    common case.

    Why: a client that cuts text in the middle of an emoji (C{"cut \\ud83d"})
    sends valid JSON that Python decodes but cannot encode as UTF-8 for the
    upstream: without this the client got a 500 and its SDK retried.
    """
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value) if _SURROGATE.search(value) else value
    if isinstance(value, list):
        for index, item in enumerate(value):
            fixed = replace_lone_surrogates(item)
            if fixed is not item:
                value[index] = fixed
        return value
    if isinstance(value, dict):
        for key in [k for k in value if _SURROGATE.search(k)]:
            value[_SURROGATE.sub("\ufffd", key)] = value.pop(key)
        for key, item in value.items():
            if isinstance(item, (str, list, dict)):
                fixed = replace_lone_surrogates(item)
                if fixed is not item:
                    value[key] = fixed
        return value
    return value


def require_object(body: object) -> Dict[str, Any]:
    """
    The request body itself must be a JSON object (rule R0; C{param} null).
    Lone surrogates in it are replaced (L{replace_lone_surrogates}), so
    every translator gets text it can encode.
    """
    if not isinstance(body, dict):
        raise invalid_request(
            "The request body must be a JSON object, got %s." % (type_name(body),)
        )
    return replace_lone_surrogates(body)


def number_value(
    value: object,
    param: str,
    minimum: Optional[Number] = None,
    maximum: Optional[Number] = None,
) -> Number:
    """
    C{value} as a finite JSON number within the optional bounds.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _wrong_type(param, "a number", value)
    if isinstance(value, float) and not math.isfinite(value):
        raise invalid_request(
            "Invalid value for '%s': numbers must be finite." % (param,), param
        )
    if (minimum is not None and value < minimum) or (
        maximum is not None and value > maximum
    ):
        raise _out_of_range(param, value, minimum, maximum)
    return value


def int_value(
    value: object,
    param: str,
    minimum: Optional[int] = None,
    maximum: Optional[int] = None,
) -> int:
    """
    C{value} as an integer (an integral float is accepted and converted)
    within the bounds and within Go's 64-bit range.
    """
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(param, "an integer", value)
    low = INT64_MIN if minimum is None else minimum
    high = INT64_MAX if maximum is None else maximum
    if value < low or value > high:
        raise _out_of_range(param, value, low, high)
    return value


def bool_value(value: object, param: str) -> bool:
    """
    C{value} as a boolean; C{0}/C{1} and C{"true"} are refused.
    """
    if not isinstance(value, bool):
        raise _wrong_type(param, "a boolean", value)
    return value


def require_str(body: Dict[str, Any], key: str, param: Optional[str] = None) -> str:
    """
    A required, non-empty string field.
    """
    param = param or key
    value = body.get(key)
    if value is None:
        raise invalid_request("Missing required parameter: '%s'." % (param,), param)
    if not isinstance(value, str):
        raise _wrong_type(param, "a string", value)
    if not value:
        raise invalid_request(
            "Invalid value for '%s': it must not be empty." % (param,), param
        )
    return value


def optional_str(
    body: Dict[str, Any], key: str, param: Optional[str] = None
) -> Optional[str]:
    """
    A string field, or L{None} when absent or null.
    """
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _wrong_type(param or key, "a string", value)
    return value


def optional_number(
    body: Dict[str, Any],
    key: str,
    minimum: Optional[Number] = None,
    maximum: Optional[Number] = None,
    param: Optional[str] = None,
) -> Optional[Number]:
    """
    A finite number field, or L{None} when absent or null.
    """
    value = body.get(key)
    if value is None:
        return None
    return number_value(value, param or key, minimum, maximum)


def optional_int(
    body: Dict[str, Any],
    key: str,
    minimum: Optional[int] = None,
    maximum: Optional[int] = None,
    param: Optional[str] = None,
) -> Optional[int]:
    """
    An integer field, or L{None} when absent or null.
    """
    value = body.get(key)
    if value is None:
        return None
    return int_value(value, param or key, minimum, maximum)


def optional_bool(
    body: Dict[str, Any], key: str, param: Optional[str] = None
) -> Optional[bool]:
    """
    A boolean field, or L{None} when absent or null.
    """
    value = body.get(key)
    if value is None:
        return None
    return bool_value(value, param or key)


def optional_object(
    body: Dict[str, Any], key: str, param: Optional[str] = None
) -> Optional[Dict[str, Any]]:
    """
    A JSON-object field, or L{None} when absent or null.
    """
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _wrong_type(param or key, "an object", value)
    return value


def stop_value(value: object, param: str = "stop") -> Optional[List[str]]:
    """
    OpenAI's C{stop} (a string or an array of strings) as the array native
    C{options.stop} requires (E15). Empty strings are dropped: upstream, an
    empty stop sequence matches at once and ends every answer before it
    starts. L{None} when nothing is left.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return [value] if value else None
    if not isinstance(value, list):
        raise _wrong_type(param, "a string or an array of strings", value)
    if len(value) > MAX_STOP_SEQUENCES:
        raise invalid_request(
            "Invalid value for '%s': at most %d stop sequences are allowed."
            % (param, MAX_STOP_SEQUENCES),
            param,
        )
    for item in value:
        if not isinstance(item, str):
            raise _wrong_type(param, "an array of strings", item)
    result = [item for item in value if item]
    return result or None


def stop_list(body: Dict[str, Any], key: str = "stop") -> Optional[List[str]]:
    """
    L{stop_value} of C{body[key]}.
    """
    return stop_value(body.get(key), key)


def keep_alive_value(value: object, param: str = "keep_alive") -> object:
    """
    The C{keep_alive} extension: a Go duration string or a number of seconds
    (reference section 2.8). The string's syntax is left to Ollama, which
    answers a bad one with a 400 of its own.
    """
    if isinstance(value, str):
        if not value:
            raise invalid_request(
                "Invalid value for '%s': it must not be empty." % (param,), param
            )
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _wrong_type(param, "a duration string or a number of seconds", value)
    return number_value(value, param)


def stream_flags(body: Dict[str, Any]) -> Tuple[bool, bool]:
    """
    C{(stream, include_usage)}. C{stream} defaults to false (the OpenAI
    default, the opposite of Ollama's). C{stream_options} only matters, and
    is only checked, when streaming (E24).
    """
    stream = bool(optional_bool(body, "stream"))
    if not stream:
        return False, False
    options = optional_object(body, "stream_options")
    if options is None:
        return True, False
    include = optional_bool(
        options, "include_usage", param="stream_options.include_usage"
    )
    return True, bool(include)


def single_choice(body: Dict[str, Any], key: str = "n") -> None:
    """
    Refuse C{n} (or C{best_of}) other than 1: Ollama produces exactly one
    choice per request and silently ignores C{n} (E10).
    """
    n = optional_int(body, key, minimum=1)
    if n is not None and n != 1:
        raise invalid_request(
            "Invalid value for '%s': only 1 is supported by this server." % (key,),
            key,
        )


def extension_options(value: object) -> Dict[str, Any]:
    """
    The native C{options} extension object, type-checked key by key against
    Ollama's option table. Returns a new dict (the caller merges into it).
    """
    if not isinstance(value, dict):
        raise _wrong_type("options", "an object", value)
    result: Dict[str, Any] = {}
    for key, item in value.items():
        param = "options." + key
        if item is None:
            continue
        if key in INT_OPTIONS:
            result[key] = int_value(item, param)
        elif key in FLOAT_OPTIONS:
            result[key] = number_value(item, param)
        elif key in BOOL_OPTIONS:
            result[key] = bool_value(item, param)
        elif key == "stop":
            stop = stop_value(item, param)
            if stop is not None:
                result[key] = stop
        else:
            raise invalid_request(
                "Unknown option '%s' in 'options'." % (key[:64],), "options"
            )
    return result


def native_options(body: Dict[str, Any], num_predict: Optional[int]) -> Dict[str, Any]:
    """
    The native C{options} for the sampling fields chat and completions share.

    Only what the client set is forwarded (rule R3), so Modelfile defaults
    such as Qwen's tuned temperature keep applying. The C{options} extension
    object is the base; explicit OpenAI fields and the C{top_k}/C{num_ctx}
    extensions override the same keys in it, because a client that sets
    both most likely put the OpenAI field there on purpose.

    @param num_predict: the already chosen output cap, or L{None}.
    @return: a possibly empty dict; callers omit an empty one (rule R2).
    """
    extension = body.get("options")
    options = {} if extension is None else extension_options(extension)
    temperature = optional_number(body, "temperature", minimum=0)
    if temperature is not None:
        options["temperature"] = temperature
    top_p = optional_number(body, "top_p", minimum=0, maximum=1)
    if top_p is not None:
        options["top_p"] = top_p
    seed = optional_int(body, "seed")
    if seed is not None:
        options["seed"] = seed
    stop = stop_list(body)
    if stop is not None:
        options["stop"] = stop
    if num_predict is not None:
        options["num_predict"] = num_predict
    for key in ("frequency_penalty", "presence_penalty"):
        penalty = optional_number(body, key)
        if penalty is not None:
            options[key] = penalty
    top_k = optional_int(body, "top_k", minimum=0)
    if top_k is not None:
        options["top_k"] = top_k
    num_ctx = optional_int(body, "num_ctx", minimum=1)
    if num_ctx is not None:
        options["num_ctx"] = num_ctx
    return options


def output_cap(options: Dict[str, Any]) -> Optional[int]:
    """
    The effective positive output-token cap in built native C{options}, or
    L{None} (no cap, or C{-1}/C{-2} meaning "unlimited"/"fill the context").
    """
    cap = options.get("num_predict")
    return cap if isinstance(cap, int) and cap > 0 else None
