# -*- test-case-name: tests.web.test_respond -*-
"""
Writing responses: the one place that sets status, common headers and JSON
bodies, so every response (success, error, 404 of an unknown URL, a crash)
carries the same headers and nothing is written to a client that has gone.

Why guard every write: C{Request.finish()} raises after the connection was
lost, and C{write()} silently drops data then; a gateway with thousands of
clients that hang up must treat that as normal, not as an error.

Why the security headers (HSTS, C{nosniff}, C{no-store}, the referrer
policy) and the CORS headers are set in L{start}: every response of the
gateway passes through it, the event streams included, so no code path can
forget them. Their values are computed once per site from the
configuration (L{qwen_twist.web.request.GatewaySite}); per response the
work is a loop over precomputed bytes, and the CORS check is skipped
entirely when no origin is configured or the request has no C{Origin}.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Tuple, Union

from twisted.web import http
from twisted.web.server import Request

from qwen_twist.config import ResponseConfig
from qwen_twist.errors import ApiError
from qwen_twist.web import hygiene

#: Sent on every response; the Twisted version is nobody's business.
SERVER = b"qwengate"

_JSON = b"application/json"

#: The security headers of a request served without a gateway site
#: (a test's bare request): the configuration's defaults.
DEFAULT_HEADERS = hygiene.security_headers(ResponseConfig().hsts_max_age)


def site_of(request: Request) -> object:
    """
    The L{GatewaySite} serving C{request} (L{None} outside one), whose
    precomputed C{response_headers}, C{cors} and C{strip_tree} apply.
    """
    site = getattr(request, "site", None)
    if site is None:
        site = getattr(getattr(request, "channel", None), "site", None)
    return site


def is_gone(request: Request) -> bool:
    """
    Whether the client connection is already closed (or the response done).
    """
    return bool(getattr(request, "_disconnected", False) or request.finished)


def start(request: Request, status: int,
          headers: Iterable[Tuple[Union[str, bytes], Union[str, bytes]]] = ()) -> None:
    """
    Set the status and the headers common to every response: server name,
    request id, gateway overhead (API calls), security headers, CORS headers for an allowed origin; then
    C{headers}, which win over the common ones (an event stream replaces
    C{Cache-Control: no-store} with C{no-cache}).
    """
    request.setResponseCode(status)
    set_header = request.setHeader
    set_header(b"server", SERVER)
    site = site_of(request)
    for name, value in getattr(site, "response_headers", DEFAULT_HEADERS):
        set_header(name, value)
    cors = getattr(site, "cors", None)
    if cors is not None and cors.origins:
        origin = request.getHeader(b"origin")
        if origin is not None:
            for name, value in cors.response_headers(origin):
                set_header(name, value)
    request_id = getattr(request, "request_id", None)
    if request_id:
        set_header(b"x-request-id", request_id.encode("ascii"))
    call = getattr(request, "call", None)
    if call is not None:
        # The gateway's own time so far (issue 11): not Ollama's, not the
        # queue's.
        overhead = call.overhead(request.call_clock.seconds())
        set_header(b"x-qwengate-overhead-ms", b"%.3f" % (overhead * 1000.0,))
    for name, value in headers:
        if isinstance(name, str):
            name = name.encode("latin-1")
        if isinstance(value, str):
            value = value.encode("latin-1")
        set_header(name, value)


def finish(request: Request) -> None:
    """
    Finish the response unless the client is gone.
    """
    if not is_gone(request):
        request.finish()


def body(request: Request, status: int, payload: bytes, content_type: bytes = _JSON,
         headers: Iterable[Tuple[Union[str, bytes], Union[str, bytes]]] = ()) -> None:
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


def pieces(request: Request, status: int, parts: list, content_type: bytes = _JSON) -> None:
    """
    Write a complete response whose body is C{parts} in order (a large
    body built piece by piece is never joined into one more copy). The
    list is emptied as it is written.
    """
    if is_gone(request):
        return
    start(request, status)
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-length", b"%d" % (sum(map(len, parts)),))
    if request.method != b"HEAD":
        parts.reverse()
        while parts:
            request.write(parts.pop())
    request.finish()


def empty(request: Request, status: int,
          headers: Iterable[Tuple[Union[str, bytes], Union[str, bytes]]] = ()) -> None:
    """
    Write a response without a body (a 204 carries no C{Content-Length}).
    """
    if is_gone(request):
        return
    start(request, status, headers)
    if status not in (204, 304):
        request.setHeader(b"content-length", b"0")
    request.finish()


def json_body(request: Request, status: int, obj: Any,
              headers: Iterable[Tuple[str, str]] = ()) -> None:
    """
    Write C{obj} as a compact JSON response, without the fields the
    operator strips (C{response.strip_fields}; C{obj} is changed in place).
    """
    tree = getattr(site_of(request), "strip_tree", None)
    if tree:
        hygiene.strip(obj, tree)
    payload = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    body(request, status, payload, _JSON, headers)


def error(request: Request, err: ApiError, style: str = "openai") -> None:
    """
    Write an L{ApiError} with its status and headers, in the OpenAI
    envelope or (C{style="anthropic"}, C{style="ollama"}) in Anthropic's or
    Ollama's.
    """
    body(request, err.status, err.body(style), _JSON, err.headers)


#: Reason phrases Twisted's table lacks or words differently.
_REASONS = {
    408: b"Request Timeout",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
}


def raw_error(err: ApiError, security_headers: Iterable[Tuple[bytes, bytes]] = DEFAULT_HEADERS,
              ) -> bytes:
    """
    A complete HTTP/1.1 response for C{err} that closes the connection, for
    the places that have no L{Request} to write through (a refused
    connection, a request head that never completed).
    """
    payload = err.body()
    reason = _REASONS.get(err.status) or http.RESPONSES.get(err.status, b"Error")
    lines = [
        b"HTTP/1.1 %d %s" % (err.status, reason),
        b"Server: " + SERVER,
        b"Date: " + http.datetimeToString(),
        b"Content-Type: application/json",
        b"Content-Length: %d" % (len(payload),),
        b"Connection: close",
    ]
    for name, value in err.headers:
        lines.append(name.encode("latin-1") + b": " + value.encode("latin-1"))
    for name, value in security_headers:
        lines.append(name + b": " + value)
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload
