# -*- test-case-name: tests.web.test_respond -*-
"""
Writing responses: the one place that sets status, common headers and JSON
bodies, so every response (success, error, 404 of an unknown URL, a crash)
carries the same headers and nothing is written to a client that has gone.

Why guard every write: C{Request.finish()} raises after the connection was
lost, and C{write()} silently drops data then; a gateway with thousands of
clients that hang up must treat that as normal, not as an error.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Tuple

from twisted.web.server import Request

from qwen_twist.errors import ApiError

#: Sent on every response; the Twisted version is nobody's business.
SERVER = b"qwengate"

_JSON = b"application/json"


def is_gone(request: Request) -> bool:
    """
    Whether the client connection is already closed (or the response done).
    """
    return bool(getattr(request, "_disconnected", False) or request.finished)


def start(request: Request, status: int, headers: Iterable[Tuple[str, str]] = ()) -> None:
    """
    Set the status and headers common to every response.
    """
    request.setResponseCode(status)
    request.setHeader(b"server", SERVER)
    request_id = getattr(request, "request_id", None)
    if request_id:
        request.setHeader(b"x-request-id", request_id.encode("ascii"))
    for name, value in headers:
        request.setHeader(name.encode("latin-1"), value.encode("latin-1"))


def finish(request: Request) -> None:
    """
    Finish the response unless the client is gone.
    """
    if not is_gone(request):
        request.finish()


def body(request: Request, status: int, payload: bytes, content_type: bytes = _JSON,
         headers: Iterable[Tuple[str, str]] = ()) -> None:
    """
    Write a complete response with a C{Content-Length}.
    """
    if is_gone(request):
        return
    start(request, status, headers)
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-length", b"%d" % (len(payload),))
    if request.method != b"HEAD":
        request.write(payload)
    request.finish()


def json_body(request: Request, status: int, obj: Any,
              headers: Iterable[Tuple[str, str]] = ()) -> None:
    """
    Write C{obj} as a compact JSON response.
    """
    payload = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    body(request, status, payload, _JSON, headers)


def error(request: Request, err: ApiError) -> None:
    """
    Write an L{ApiError} in the OpenAI envelope with its status and headers.
    """
    body(request, err.status, err.body(), _JSON, err.headers)
