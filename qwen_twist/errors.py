# -*- test-case-name: tests.test_errors -*-
"""
Every error a client can see, in one place, in the OpenAI envelope or (on
Ollama's native routes, C{/api/*}) in Ollama's C{{"error": "..."}}.

Clients (the OpenAI SDKs in particular) decide what to do from the HTTP status
and the C{error.code} field, so each failure is an L{ApiError} carrying both,
and the only way a response body for a failure is produced is
L{ApiError.body}. Nothing here knows about Twisted: resources catch
L{ApiError} and write C{status}, C{headers} and C{body()}.

Why two envelopes for one L{ApiError}: the gate's refusals (401, 403, 429
with C{Retry-After}, 503 while draining) are the same on every route, but a
client of Ollama's native API (the C{ollama} libraries, Open WebUI's Ollama
connection) reads only C{error} as a string and raises its C{ResponseError}
with it; an OpenAI object there would be shown as a JSON blob. So the
status and headers are shared and L{ApiError.render} picks the body shape
per route (L{OPENAI} or L{OLLAMA}).

Upstream (Ollama) failures are mapped by L{from_upstream} following section 8
of the protocol reference: the status class decides, the native text is kept
verbatim (it is Ollama's own message, not a traceback), and anything that is
not Ollama's C{{"error": "..."}} shape is reduced to trimmed text.
"""

from __future__ import annotations

import json
from typing import Iterable, Optional, Tuple

Headers = Tuple[Tuple[str, str], ...]

#: The two body shapes of L{ApiError.render}.
OPENAI = "openai"
OLLAMA = "ollama"

#: Longest upstream error text passed on to a client; the rest is cut so a
#: misbehaving upstream cannot make us echo megabytes.
MAX_UPSTREAM_MESSAGE = 2048


class ApiError(Exception):
    """
    A failure with an HTTP status and an OpenAI error envelope.

    @ivar status: HTTP status code.
    @ivar message: human-readable text; never contains secrets or tracebacks.
    @ivar type: OpenAI error type (C{invalid_request_error}, C{server_error}, ...).
    @ivar param: the request field at fault, or L{None}.
    @ivar code: machine-readable code (C{model_not_found}, ...), or L{None}.
    @ivar headers: extra response headers, e.g. C{Retry-After}.
    """

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: Optional[str] = None,
        code: Optional[str] = None,
        headers: Iterable[Tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers: Headers = tuple(headers)

    def envelope(self) -> dict:
        """
        The JSON-ready C{{"error": {...}}} object (also used, unchanged, as the
        payload of a mid-stream SSE error event).
        """
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body(self) -> bytes:
        """
        The response body: the envelope as compact UTF-8 JSON.
        """
        return json.dumps(self.envelope(), separators=(",", ":")).encode("utf-8")

    def ollama_envelope(self) -> dict:
        """
        Ollama's error object, C{{"error": "<text>"}}: what Ollama itself
        answers (and writes as the last line of a failed stream).
        """
        return {"error": self.message}

    def render(self, envelope: str = OPENAI) -> bytes:
        """
        The response body in C{envelope}'s shape (L{OPENAI} or L{OLLAMA}).
        """
        if envelope == OLLAMA:
            return json.dumps(
                self.ollama_envelope(), separators=(",", ":"), ensure_ascii=False
            ).encode("utf-8")
        return self.body()

    def __repr__(self) -> str:
        return "<ApiError %d %s param=%r code=%r: %s>" % (
            self.status,
            self.type,
            self.param,
            self.code,
            self.message,
        )


def invalid_request(
    message: str, param: Optional[str] = None, code: Optional[str] = None
) -> ApiError:
    """
    A 400 C{invalid_request_error}: the gateway refused the request itself,
    before any upstream call. C{param} names the offending field.
    """
    return ApiError(400, message, "invalid_request_error", param, code)


def not_found(message: str) -> ApiError:
    """
    A 404 for an unknown URL (not an unknown model: see L{from_upstream}).
    """
    return ApiError(404, message, "invalid_request_error")


def method_not_allowed(method: str, path: str, allowed: Iterable[str]) -> ApiError:
    """
    A 405 that lists the methods the URL does accept in C{Allow}.
    """
    allowed = sorted(allowed)
    return ApiError(
        405,
        "Method %s not allowed for %s; use %s" % (method, path, ", ".join(allowed)),
        "invalid_request_error",
        headers=(("Allow", ", ".join(allowed)),),
    )


def upstream_unavailable(where: str) -> ApiError:
    """
    502: nothing answered at the upstream address (refused, reset, DNS).
    """
    return ApiError(
        502,
        "cannot reach Ollama at %s" % (where,),
        "server_error",
        code="upstream_unavailable",
    )


def upstream_timeout(what: str) -> ApiError:
    """
    504: the upstream did not answer in time. C{what} says which deadline.
    """
    return ApiError(504, what, "server_error", code="upstream_timeout")


def upstream_protocol_error(message: str = "upstream sent an invalid response") -> ApiError:
    """
    502: the upstream answered, but not in a form we can translate.
    """
    return ApiError(502, message, "server_error", code="upstream_invalid_response")


def shutting_down() -> ApiError:
    """
    503 while the gateway drains for shutdown; another instance (or this one
    after a restart) can take the retry.
    """
    return ApiError(
        503, "gateway is shutting down", "server_error", code="shutting_down",
        headers=(("Retry-After", "1"),),
    )


def internal_error() -> ApiError:
    """
    500 for a bug in the gateway. The details go to the log, never to the
    client.
    """
    return ApiError(500, "internal gateway error", "server_error", code="internal_error")


def upstream_message(body: bytes) -> str:
    """
    The text of an Ollama error body: the C{error} string of
    C{{"error": "..."}}, otherwise the body itself as trimmed text.
    """
    text = body.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        text = parsed["error"]
    text = " ".join(text.split())
    if len(text) > MAX_UPSTREAM_MESSAGE:
        text = text[:MAX_UPSTREAM_MESSAGE] + "..."
    return text or "upstream error"


def from_upstream(status: int, body: bytes, model_endpoint: bool = True) -> ApiError:
    """
    Map a non-200 Ollama response to the client's error (reference section 8).

    @param status: the upstream HTTP status.
    @param body: the upstream body (usually C{{"error": "..."}}).
    @param model_endpoint: whether a 404 means "unknown model" (true for
        chat, generate, embed and show).
    """
    message = upstream_message(body)
    if status == 404 and model_endpoint:
        return ApiError(404, message, "invalid_request_error", code="model_not_found")
    if status == 429:
        return ApiError(429, message, "rate_limit_error", headers=(("Retry-After", "1"),))
    if status == 503:
        return ApiError(503, message, "server_error", headers=(("Retry-After", "1"),))
    if 400 <= status < 500:
        return ApiError(status, message, "invalid_request_error")
    if status == 502:
        return ApiError(502, message, "server_error")
    # Ollama's 500s are runner or load failures; retrying them only triples
    # the load on a struggling GPU, so tell the OpenAI SDK not to.
    return ApiError(500, message, "server_error", headers=(("x-should-retry", "false"),))


# Ollama's native API ---------------------------------------------------------


def from_upstream_native(status: int, body: bytes) -> ApiError:
    """
    A non-200 answer of Ollama on a native route, passed on as Ollama gave
    it: the same status (its clients branch on it: 404 unknown model, 499,
    ...) and its own text; 429 and 503 gain a C{Retry-After}.
    """
    message = upstream_message(body)
    if not 400 <= status <= 599:
        return upstream_protocol_error()
    headers: Tuple[Tuple[str, str], ...] = ()
    if status in (429, 503):
        headers = (("Retry-After", "1"),)
    kind = "invalid_request_error" if status < 500 else "server_error"
    return ApiError(status, message, kind, headers=headers)


def model_required() -> ApiError:
    """
    400 for a native call without a model (Ollama's own text).
    """
    return invalid_request("model is required", "model", "model_required")


def body_not_object() -> ApiError:
    """
    400 for a native body that is JSON but not an object.
    """
    return invalid_request("request body must be a JSON object")


def invalid_field(name: str, expected: str) -> ApiError:
    """
    400 for a native field of the wrong JSON type (the gateway reads it,
    so it must be what Ollama would accept).
    """
    return invalid_request("%s must be %s" % (name, expected), name)


def scope_required(path: str, scope: str) -> ApiError:
    """
    403 for a model-management route called without the key scope that
    grants it (C{qwengate-keys add --scope models:manage}).
    """
    return ApiError(
        403,
        "%s is locked by the gateway: it needs an API key with the %r scope"
        % (path, scope),
        "permission_error",
        code="scope_required",
    )


def route_refused(method: str, path: str) -> ApiError:
    """
    403 for an Ollama route the gateway never serves (it reaches outside
    the host: web search and fetch, ollama.com sign-in).
    """
    return ApiError(
        403,
        "%s %s is not available through the gateway" % (method, path),
        "permission_error",
        code="route_refused",
    )


def route_unknown(method: str, path: str) -> ApiError:
    """
    404 for a path under C{/api/} that is not one of Ollama's served ones.
    """
    return ApiError(
        404, "unknown API endpoint: %s %s" % (method, path), "invalid_request_error",
        code="unknown_url",
    )
