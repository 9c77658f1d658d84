# -*- test-case-name: tests.translate.test_models -*-
"""
C{/v1/models} and C{/v1/models/{id}} from C{/api/tags} and C{/api/show}.

Two details break real clients if copied from Ollama compat: an empty model
list must be C{"data": []} (compat sends C{null}, E27), and a model id with
a namespace arrives percent-encoded (C{hf.co%2Fuser%2Frepo:Q4}, E22) from
current SDKs but with literal slashes from older ones, so the id is
everything after C{/v1/models/}, decoded, and echoed exactly as requested.
"""

from __future__ import annotations

from typing import Any, Dict, List
from urllib.parse import unquote_to_bytes

from qwen_twist.errors import invalid_request, upstream_protocol_error
from qwen_twist.translate.common import owned_by, unix_time


def _model(model_id: str, modified_at: object, now: int) -> Dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": unix_time(modified_at, now),
        "owned_by": owned_by(model_id),
    }


def model_list(tags: dict, now: int) -> dict:
    """
    An C{/api/tags} reply as OpenAI's model list (section 6.4); entries
    without a usable name are skipped.

    @param now: the gateway clock, for entries without C{modified_at}.
    @raise ApiError: 502 when the reply is not the C{/api/tags} shape.
    """
    if not isinstance(tags, dict):
        raise upstream_protocol_error()
    models = tags.get("models")
    if models is None:
        models = []
    if not isinstance(models, list):
        raise upstream_protocol_error()
    data: List[Dict[str, Any]] = []
    for entry in models:
        if not isinstance(entry, dict):
            continue
        model_id = entry.get("model")
        if not isinstance(model_id, str) or not model_id:
            model_id = entry.get("name")
            if not isinstance(model_id, str) or not model_id:
                continue
        data.append(_model(model_id, entry.get("modified_at"), now))
    return {"object": "list", "data": data}


def model_object(model_id: str, show: dict, now: int) -> dict:
    """
    An C{/api/show} reply as one OpenAI model object, with the id as the
    client asked for it (not Ollama's normalised C{name:tag}).
    """
    modified_at = show.get("modified_at") if isinstance(show, dict) else None
    return _model(model_id, modified_at, now)


def model_id_from_path(path_tail: bytes) -> str:
    """
    The model id from the URL path after C{/v1/models/}: percent-decoded
    (C{%2F} and a literal C{/} both work), UTF-8.

    @raise ApiError: 400 with C{param} C{model} for an empty id, invalid
        UTF-8, or control characters (which no model name contains and
        which would otherwise reach logs).
    """
    try:
        model_id = unquote_to_bytes(path_tail).decode("utf-8")
    except UnicodeDecodeError:
        raise invalid_request(
            "Invalid model id: it is not valid UTF-8.", "model"
        ) from None
    if not model_id:
        raise invalid_request("Missing model id in the URL.", "model")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in model_id):
        raise invalid_request(
            "Invalid model id: it contains control characters.", "model"
        )
    return model_id
