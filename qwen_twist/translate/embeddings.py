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
"""

from __future__ import annotations

import base64
import struct
from typing import Any, Dict, List, Optional

from qwen_twist.errors import invalid_request, upstream_protocol_error
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


def embeddings_request(
    body: object, decoder: Optional[TokenDecoder] = None
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
