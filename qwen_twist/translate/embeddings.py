# -*- test-case-name: tests.translate.test_embeddings -*-
"""
C{/v1/embeddings} to C{/api/embed} and back.

The official OpenAI SDK asks for C{encoding_format: "base64"} unless the
caller chose otherwise and decodes the strings as little-endian float32
(reference section 3.5), so base64 is the common case, not an oddity: each
vector is packed with one C{struct.pack} call. Token-array inputs have no
native equivalent (section 5.3): they are decoded to text when the
client's encoding is available offline, else refused with a 400 naming the
client setting that sends text (L{qwen_twist.translate.tokens}).

Why L{embeddings_response_bytes}: 1,300 inputs at 4,096 dimensions are a
58 MB upstream answer; decoding it whole makes ~5 million float objects
(hundreds of MB) and re-encoding them holds the reactor for seconds. The
bytes translator walks the vectors one at a time: each is decoded (which
validates it), packed as base64 or copied through as the validated JSON
text, and dropped, so the peak is the upstream bytes plus the output, and
the work can run in a thread without holding the GIL for long stretches.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from typing import Any, Dict, List, Optional

from qwen_twist.errors import TOO_MANY_INPUTS, invalid_request, upstream_protocol_error
from qwen_twist.translate.common import usage
from qwen_twist.translate.request import UpstreamRequest
from qwen_twist.translate.tokens import TokenDecoder, decode_token_arrays, is_token_array
from qwen_twist.translate.validate import (
    keep_alive_value,
    optional_bool,
    optional_int,
    optional_str,
    require_object,
    require_str,
    type_name,
)

ENCODING_FORMATS = ("float", "base64")


def _input(body: Dict[str, Any], decoder: Optional[TokenDecoder]) -> object:
    """
    The native C{input}: a string (C{""} becomes C{[""]}, as in Ollama
    compat), a non-empty array of strings, or token arrays decoded to text
    (L{qwen_twist.translate.tokens}).
    """
    value = body.get("input")
    if isinstance(value, str):
        return value if value else [""]
    if value is None:
        raise invalid_request("Missing required parameter: 'input'.", "input")
    if is_token_array(value):
        return decode_token_arrays(value, "input", decoder)
    if not isinstance(value, list):
        raise invalid_request(
            "Invalid type for 'input': expected a string or an array of strings, "
            "but got %s instead." % (type_name(value),),
            "input",
        )
    if not value:
        raise invalid_request("Invalid 'input': the array must not be empty.", "input")
    for item in value:
        if not isinstance(item, str):
            if isinstance(item, (int, list)) and not isinstance(item, bool):
                raise invalid_request(
                    "Invalid 'input': expected strings or token arrays "
                    "(lists of non-negative integers), not a mixture.",
                    "input",
                )
            raise invalid_request(
                "Invalid 'input': every item must be a string, got %s."
                % (type_name(item),),
                "input",
            )
    return value


def _encoding_format(body: Dict[str, Any]) -> str:
    value = optional_str(body, "encoding_format")
    if value is None:
        return "float"
    normalised = value.lower()
    if normalised not in ENCODING_FORMATS:
        raise invalid_request(
            "Invalid value for 'encoding_format'. Supported values: 'float', 'base64'.",
            "encoding_format",
        )
    return normalised


#: OpenAI's own bound on inputs per request.
MAX_INPUTS = 2048


def embeddings_request(
    body: object, decoder: Optional[TokenDecoder] = None, max_inputs: int = MAX_INPUTS
) -> UpstreamRequest:
    """
    Translate a C{/v1/embeddings} body into an C{/api/embed} request.

    Extensions forwarded: C{keep_alive}, and C{truncate} (E26: C{false}
    makes an over-long input an upstream 400 instead of silently cut).

    @param body: the decoded JSON body, of any type.
    @param decoder: decodes token-array inputs (L{tokens.offline_decoder});
        L{None} refuses them with a 400 that says how to send text.
    @raise ApiError: a 400 naming the offending field.
    """
    body = require_object(body)
    model = require_str(body, "model")
    inputs = _input(body, decoder)
    if isinstance(inputs, list) and len(inputs) > max_inputs:
        raise invalid_request(
            "Invalid 'input': at most %d inputs per request, got %d."
            % (max_inputs, len(inputs)),
            "input", TOO_MANY_INPUTS,
        )
    encoding_format = _encoding_format(body)
    dimensions = optional_int(body, "dimensions", minimum=1)
    truncate = optional_bool(body, "truncate")
    payload: Dict[str, Any] = {"model": model, "input": inputs}
    if dimensions is not None:
        payload["dimensions"] = dimensions
    if truncate is not None:
        payload["truncate"] = truncate
    keep_alive = body.get("keep_alive")
    if keep_alive is not None:
        payload["keep_alive"] = keep_alive_value(keep_alive)
    chars = len(inputs) if isinstance(inputs, str) else sum(map(len, inputs))
    return UpstreamRequest(
        path="/api/embed",
        payload=payload,
        model=model,
        stream=False,
        include_usage=False,
        prompt_chars=chars,
        max_tokens=None,
        encoding_format=encoding_format,
    )


def encode_base64(vector: List[float]) -> str:
    """
    A vector as standard base64 of little-endian float32 values, the form
    the OpenAI SDK decodes.
    """
    return base64.b64encode(struct.pack("<%df" % len(vector), *vector)).decode("ascii")


def embeddings_response(native: dict, *, model: str, encoding_format: str) -> dict:
    """
    Translate an C{/api/embed} reply into an OpenAI embeddings list
    (section 6.4).

    @param model: the model string the client sent (echoed).
    @param encoding_format: C{"float"} or C{"base64"}, from the request.
    @raise ApiError: 502 when the reply has no usable C{embeddings} array.
    """
    if not isinstance(native, dict):
        raise upstream_protocol_error()
    vectors = native.get("embeddings")
    if not isinstance(vectors, list):
        raise upstream_protocol_error("upstream reply has no embeddings")
    data = []
    for index, vector in enumerate(vectors):
        if not isinstance(vector, list):
            raise upstream_protocol_error("upstream sent a malformed embedding")
        if encoding_format == "base64":
            try:
                embedding: object = encode_base64(vector)
            except (struct.error, TypeError, OverflowError):
                raise upstream_protocol_error(
                    "upstream sent a malformed embedding"
                ) from None
        else:
            embedding = vector
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    prompt_tokens = usage(native)["prompt_tokens"]
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


_EMBEDDINGS_KEY = re.compile(rb'"embeddings"\s*:\s*\[')
_WHITESPACE = b" \t\r\n"


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _vector_spans(raw: bytes, start: int) -> tuple:
    """
    The C{(start, end)} byte spans of the vectors of the array opening at
    C{start} (just after its C{[}), and the index just past its C{]}.
    A vector holds numbers only, so its end is the next C{]}.
    """
    spans = []
    i, size = start, len(raw)
    while True:
        while i < size and raw[i] in _WHITESPACE:
            i += 1
        if i < size and raw[i] == 0x5D and not spans:  # "]" of an empty list
            return spans, i + 1
        if i >= size or raw[i] != 0x5B:  # "["
            raise upstream_protocol_error("upstream sent a malformed embedding")
        end = raw.find(b"]", i)
        if end < 0:
            raise upstream_protocol_error("upstream sent a malformed embedding")
        spans.append((i, end + 1))
        i = end + 1
        while i < size and raw[i] in _WHITESPACE:
            i += 1
        if i < size and raw[i] == 0x2C:  # ","
            i += 1
            continue
        if i < size and raw[i] == 0x5D:
            return spans, i + 1
        raise upstream_protocol_error("upstream sent a malformed embedding")


def embeddings_response_bytes(
    raw: bytes, *, model: str, encoding_format: str
) -> Optional[List[bytes]]:
    """
    The OpenAI response for the raw C{/api/embed} body C{raw}, as byte
    pieces to write in order, translating one vector at a time (see the
    module docstring). The same result as L{embeddings_response}.

    @return: L{None} when C{raw} is not in the shape this fast path
        expects (then decode it whole with L{embeddings_response}).
    @raise ApiError: 502 for a malformed vector.
    """
    found = _EMBEDDINGS_KEY.search(raw)
    if found is None:
        return None
    spans, after = _vector_spans(raw, found.end())
    # Everything but the vectors, to read the counts (and to check that
    # "embeddings" is a key of the top-level object).
    try:
        rest = json.loads(raw[:found.start()] + b'"embeddings":null' + raw[after:])
    except ValueError:
        return None
    if not isinstance(rest, dict) or "embeddings" not in rest or rest["embeddings"] is not None:
        return None
    pieces = [b'{"object":"list","data":[']
    for index, (start, end) in enumerate(spans):
        text = raw[start:end]
        try:
            vector = json.loads(text, parse_constant=_reject_constant)
        except ValueError:
            raise upstream_protocol_error("upstream sent a malformed embedding") from None
        if not all(type(x) in (float, int) for x in vector):
            raise upstream_protocol_error("upstream sent a malformed embedding")
        head = b'%s{"object":"embedding","index":%d,"embedding":' % (
            b"," if index else b"", index)
        if encoding_format == "base64":
            try:
                packed = encode_base64(vector).encode("ascii")
            except (struct.error, OverflowError):
                raise upstream_protocol_error("upstream sent a malformed embedding") from None
            pieces.append(head + b'"' + packed + b'"}')
        else:
            pieces.append(head + text + b"}")
    prompt_tokens = usage(rest)["prompt_tokens"]
    pieces.append(b'],"model":' + json.dumps(model).encode("utf-8")
                  + b',"usage":{"prompt_tokens":%d,"total_tokens":%d}}'
                  % (prompt_tokens, prompt_tokens))
    return pieces
