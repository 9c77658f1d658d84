# -*- test-case-name: tests.translate.test_tokens -*-
"""
Token-array inputs (C{input: [[104, 101, ...]]}, C{prompt: [15339, 1917]}):
decoded back to text where that can be done honestly, refused with a
message naming the client setting that avoids them otherwise.

Why: popular clients send token ids by default. LangChain's
C{OpenAIEmbeddings()} tokenises with tiktoken's C{cl100k_base} to split
long texts and sends the ids; Ollama takes text only. The ids mean
something only in the encoding the client used, so they are decoded with
that encoding (tiktoken's C{cl100k_base}, LangChain's default) when the
C{tiktoken} package is importable B{and} its encoding file is already on
this machine: tiktoken would otherwise try to download it on the first
request, which a gateway must not do. Without it the client gets a 400
that says how to make it send text.

Nothing here does I/O besides that one-time look for the encoding file.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from typing import Callable, List, Optional

from qwen_twist import errors
from qwen_twist.errors import invalid_request
from qwen_twist.translate.validate import type_name

#: Turns a list of token ids into text; raises on an id it does not know.
TokenDecoder = Callable[[List[int]], str]

#: The encoding LangChain and the OpenAI cookbook default to.
DEFAULT_ENCODING = "cl100k_base"

#: Where tiktoken fetches each encoding from (tiktoken_ext/openai_public.py);
#: the cached copy is named after this URL.
ENCODING_FILES = {
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
}

#: What each client can change to send text instead of token ids.
AVOID = {
    "input": (
        "send text instead (LangChain: OpenAIEmbeddings(..., "
        "check_embedding_ctx_length=False))"
    ),
    "prompt": "send the prompt as text instead",
}


def _cached_file(url: str) -> Optional[str]:
    # tiktoken's own cache layout (tiktoken/load.py, 0.4 to 0.12): the file
    # is named by the SHA-1 of its URL in TIKTOKEN_CACHE_DIR, else
    # DATA_GYM_CACHE_DIR, else <tmp>/data-gym-cache.
    directory = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get(
        "DATA_GYM_CACHE_DIR"
    ) or os.path.join(tempfile.gettempdir(), "data-gym-cache")
    path = os.path.join(directory, hashlib.sha1(url.encode("utf-8")).hexdigest())
    return path if os.path.isfile(path) else None


@functools.lru_cache(maxsize=None)
def offline_decoder(name: str = DEFAULT_ENCODING) -> Optional[TokenDecoder]:
    """
    tiktoken's decoder for encoding C{name}, or L{None} when tiktoken is not
    installed or would have to download the encoding (never done here).
    """
    url = ENCODING_FILES.get(name)
    if url is None or _cached_file(url) is None:
        return None
    try:
        import tiktoken

        encoding = tiktoken.get_encoding(name)
    except Exception:
        # Not installed, or a cached file it refuses (hash mismatch).
        return None
    return encoding.decode


def _token_list(value: list) -> bool:
    """
    Whether C{value} is a non-empty list of token ids (non-negative ints).
    """
    return bool(value) and all(
        isinstance(item, int) and not isinstance(item, bool) and item >= 0 for item in value
    )


def is_token_array(value: object) -> bool:
    """
    Whether C{value} is one token array or a list of them (the two shapes
    OpenAI accepts for C{input} and C{prompt}).
    """
    if not isinstance(value, list) or not value:
        return False
    if isinstance(value[0], list):
        return all(isinstance(item, list) and _token_list(item) for item in value)
    return _token_list(value)


def decode_token_arrays(
    value: list, param: str, decoder: Optional[TokenDecoder]
) -> List[str]:
    """
    The texts of one token array (C{[1, 2]}) or several (C{[[1], [2]]}).

    @param param: C{"input"} or C{"prompt"}, for the error message.
    @param decoder: from L{offline_decoder}; L{None} refuses with a 400
        naming the client setting that avoids token arrays.
    @raise ApiError: 400 when the arrays cannot be decoded.
    """
    arrays = value if isinstance(value[0], list) else [value]
    if decoder is None:
        raise invalid_request(
            "Invalid '%s': token arrays are not supported by this server (no "
            "offline %s encoding); %s." % (param, DEFAULT_ENCODING, AVOID[param]),
            param,
            errors.TOKEN_ARRAYS_UNSUPPORTED,
        )
    texts = []
    for array in arrays:
        try:
            text = decoder(array)
        except Exception:
            raise invalid_request(
                "Invalid '%s': token ids not in the %s encoding." % (param, DEFAULT_ENCODING),
                param,
            ) from None
        if not isinstance(text, str):
            raise invalid_request(
                "Invalid '%s': token arrays decode to %s." % (param, type_name(text)), param
            )
        texts.append(text)
    return texts
