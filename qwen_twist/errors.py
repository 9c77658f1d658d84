# -*- test-case-name: tests.test_errors -*-
"""
Every error a client can see, in one place: in the OpenAI envelope, or on
the Anthropic routes in Anthropic's, or on Ollama's native routes
(C{/api/*}) in Ollama's C{{"error": "..."}}.

Clients (the OpenAI SDKs in particular) decide what to do from the HTTP status
and the C{error.code} field, so each failure is an L{ApiError} carrying both,
and the only way a response body for a failure is produced is
L{ApiError.body}. Nothing here knows about Twisted: resources catch
L{ApiError} and write C{status}, C{headers} and C{body()}.

Why several envelopes for one L{ApiError}: the gate's refusals (401, 403,
429 with C{Retry-After}, 503 while draining) are the same on every route,
but each family of clients reads its own shape; a client of Ollama's
native API (the C{ollama} libraries, Open WebUI's Ollama connection) reads
only C{error} as a string and raises its C{ResponseError} with it, and an
OpenAI object there would be shown as a JSON blob. So the status and
headers are shared and L{ApiError.body} picks the body shape per route.

Upstream (Ollama) failures are mapped by L{from_upstream} following section 8
of the protocol reference: the status class decides. Ollama's own text is
never passed on: it can name blob paths, internal addresses and runner
internals. The client gets a stable message and code per case (the unknown
model and the capability refusal are rebuilt from the model name the client
sent and a fixed list of capability words), and the native text is kept in
L{ApiError.detail}, which the web layer logs with the request id and never
sends. Likewise no message names an upstream's C{host:port}.
"""

from __future__ import annotations

import json
import math
import re
from typing import Iterable, Optional, Tuple

Headers = Tuple[Tuple[str, str], ...]

# Error codes (C{error.code}): what clients and the gateway's own control
# flow compare against; never spelt out elsewhere.
INVALID_API_KEY = "invalid_api_key"
RATE_LIMIT_EXCEEDED = "rate_limit_exceeded"
REQUEST_TOO_LARGE = "request_too_large"
REQUEST_HEADERS_TOO_LARGE = "request_headers_too_large"
REQUEST_TIMEOUT = "request_timeout"
BAD_REQUEST = "bad_request"
HTTPS_REQUIRED = "https_required"
ORIGIN_NOT_ALLOWED = "origin_not_allowed"
MODEL_NOT_FOUND = "model_not_found"
UPSTREAM_UNAVAILABLE = "upstream_unavailable"
UPSTREAM_TIMEOUT = "upstream_timeout"
UPSTREAM_INVALID_RESPONSE = "upstream_invalid_response"
QUEUE_FULL = "queue_full"
QUEUE_TIMEOUT = "queue_timeout"
ADDRESS_BANNED = "address_banned"
TOO_MANY_CONNECTIONS = "too_many_connections"
TOKEN_ARRAYS_UNSUPPORTED = "token_arrays_unsupported"
SHUTTING_DOWN = "shutting_down"
INTERNAL_ERROR = "internal_error"
MODEL_NOT_ALLOWED = "model_not_allowed"
ADDRESS_NOT_ALLOWED = "address_not_allowed"
ADDRESS_BANNED = "address_banned"
UPSTREAM_REJECTED = "upstream_rejected"
UPSTREAM_BUSY = "upstream_busy"
UPSTREAM_ERROR = "upstream_error"
OPTION_NOT_ALLOWED = "option_not_allowed"
OPTION_OUT_OF_RANGE = "option_out_of_range"
TOO_MANY_INPUTS = "too_many_inputs"
PROMPT_TOO_LONG = "prompt_too_long"
SLOW_READER = "slow_reader"
MODEL_REQUIRED = "model_required"
SCOPE_REQUIRED = "scope_required"
ROUTE_REFUSED = "route_refused"
UNKNOWN_URL = "unknown_url"

#: Longest upstream error text kept for the log; the rest is cut so a
#: misbehaving upstream cannot make us log megabytes.
MAX_UPSTREAM_MESSAGE = 2048


def retry_after(seconds: float) -> str:
    """
    The C{Retry-After} value for a wait of C{seconds}: whole seconds,
    rounded up (a client that waits exactly that long is admitted), at
    least 1. The one rounding every refusal uses.
    """
    return str(max(1, math.ceil(seconds - 1e-9)))


def _retry_headers(seconds: float) -> Headers:
    return (("Retry-After", retry_after(seconds)),)


class ApiError(Exception):
    """
    A failure with an HTTP status and an OpenAI error envelope.

    @ivar status: HTTP status code.
    @ivar message: human-readable text; never contains secrets or tracebacks.
    @ivar type: OpenAI error type (C{invalid_request_error}, C{server_error}, ...).
    @ivar param: the request field at fault, or L{None}.
    @ivar code: machine-readable code (C{model_not_found}, ...), or L{None}.
    @ivar headers: extra response headers, e.g. C{Retry-After}.
    @ivar detail: text for the operator's log only (an upstream's own error
        message, its address); never part of the response.
    """

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: Optional[str] = None,
        code: Optional[str] = None,
        headers: Iterable[Tuple[str, str]] = (),
        detail: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.detail = detail
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

    def anthropic_type(self) -> str:
        """
        The Anthropic error type for this failure (L{anthropic_error_type}).
        """
        return anthropic_error_type(self.status)

    def anthropic_envelope(self) -> dict:
        """
        The same failure in Anthropic's envelope, C{{"type": "error",
        "error": {"type", "message"}}}: what C{/v1/messages} answers, so the
        C{anthropic} SDK raises the exception class its users catch (it picks
        the class from the status, and shows C{error.type}). Also the
        payload of a mid-stream C{error} event.
        """
        return anthropic_stream_error(self.message, self.anthropic_type())

    def body(self, style: str = "openai") -> bytes:
        """
        The response body: the envelope (C{style} C{"openai"},
        C{"anthropic"} or C{"ollama"}) as compact UTF-8 JSON.
        """
        if style == "anthropic":
            envelope = self.anthropic_envelope()
        elif style == "ollama":
            envelope = self.ollama_envelope()
        else:
            envelope = self.envelope()
        return json.dumps(envelope, separators=(",", ":")).encode("utf-8")

    def ollama_envelope(self) -> dict:
        """
        Ollama's error object, C{{"error": "<text>"}}: what Ollama itself
        answers (and writes as the last line of a failed stream).
        """
        return {"error": self.message}

    def __repr__(self) -> str:
        return "<ApiError %d %s param=%r code=%r: %s>" % (
            self.status,
            self.type,
            self.param,
            self.code,
            self.message,
        )


#: Anthropic error types by HTTP status (the statuses the C{anthropic} SDK
#: maps to C{BadRequestError}, C{AuthenticationError}, ...).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    """
    Anthropic's C{error.type} for one of our failures. The status decides,
    as it does for the SDK; a 503 is C{overloaded_error} (a busy or
    draining gateway, an open breaker: retry later), other 4xx are
    C{invalid_request_error}, other 5xx C{api_error}.
    """
    known = _ANTHROPIC_TYPES.get(status)
    if known is not None:
        return known
    if 400 <= status < 500:
        return "invalid_request_error"
    return "api_error"


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


def upstream_unavailable(where: str = "") -> ApiError:
    """
    502: nothing answered at the upstream address (refused, reset, DNS).
    The address goes to the log (C{detail}), not to the client.
    """
    return ApiError(
        502,
        "cannot reach the model server",
        "server_error",
        code=UPSTREAM_UNAVAILABLE,
        detail=("cannot reach Ollama at %s" % (where,)) if where else None,
    )


def upstream_timeout(what: str) -> ApiError:
    """
    504: the upstream did not answer in time. C{what} says which deadline.
    """
    return ApiError(504, what, "server_error", code=UPSTREAM_TIMEOUT)


def upstream_protocol_error(message: str = "upstream sent an invalid response") -> ApiError:
    """
    502: the upstream answered, but not in a form we can translate.
    """
    return ApiError(502, message, "server_error", code=UPSTREAM_INVALID_RESPONSE)


def shutting_down() -> ApiError:
    """
    503 while the gateway drains for shutdown; another instance (or this one
    after a restart) can take the retry.
    """
    return ApiError(
        503, "gateway is shutting down", "server_error", code=SHUTTING_DOWN,
        headers=(("Retry-After", "1"),),
    )


def limits_unavailable() -> ApiError:
    """
    503 when the shared limits store (Redis) cannot be asked and the
    operator chose C{limits.redis.on_failure: closed}: no call passes
    unmetered.
    """
    return ApiError(
        503, "rate limiter unavailable; retry later", "server_error",
        code="limits_unavailable", headers=(("Retry-After", "1"),),
    )


def internal_error() -> ApiError:
    """
    500 for a bug in the gateway. The details go to the log, never to the
    client.
    """
    return ApiError(500, "internal gateway error", "server_error", code=INTERNAL_ERROR)


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


#: Capabilities Ollama may say a model lacks (C{"x" does not support
#: thinking}); only these words are repeated to the client.
CAPABILITIES = frozenset(
    {"thinking", "tools", "insert", "vision", "completion", "embedding", "embeddings",
     "generate", "chat"}
)
_CAPABILITY = re.compile(r"does not support (\w+)")


def from_upstream(
    status: int, body: bytes, model_endpoint: bool = True, model: Optional[str] = None
) -> ApiError:
    """
    Map a non-200 Ollama response to the client's error (reference section 8).

    The client's message is stable per case; Ollama's text is kept in
    C{detail} for the log.

    @param status: the upstream HTTP status.
    @param body: the upstream body (usually C{{"error": "..."}}).
    @param model_endpoint: whether a 404 means "unknown model" (true for
        chat, generate, embed and show).
    @param model: the model name the client sent, repeated in the unknown
        model and capability messages.
    """
    detail = "Ollama HTTP %d: %s" % (status, upstream_message(body))
    name = model[:256] if isinstance(model, str) else None
    if status == 404 and model_endpoint:
        message = "model '%s' not found" % (name,) if name is not None else "model not found"
        return ApiError(404, message, "invalid_request_error", code=MODEL_NOT_FOUND,
                        detail=detail)
    if status == 429:
        return ApiError(429, "the model server is busy; retry later", "rate_limit_error",
                        code=UPSTREAM_BUSY, headers=(("Retry-After", "1"),), detail=detail)
    if status == 503:
        return ApiError(503, "the model server is unavailable; retry later", "server_error",
                        code=UPSTREAM_BUSY, headers=(("Retry-After", "1"),), detail=detail)
    if 400 <= status < 500:
        found = _CAPABILITY.search(upstream_message(body))
        if status == 400 and found and found.group(1) in CAPABILITIES and name is not None:
            # TV-37, rebuilt from what the client sent and a known word.
            return ApiError(400, '"%s" does not support %s' % (name, found.group(1)),
                            "invalid_request_error", detail=detail)
        return ApiError(status, "the model server refused the request",
                        "invalid_request_error", code=UPSTREAM_REJECTED, detail=detail)
    if status == 502:
        return ApiError(502, "the model server failed", "server_error",
                        code=UPSTREAM_ERROR, detail=detail)
    # Ollama's 500s are runner or load failures; retrying them only triples
    # the load on a struggling GPU, so tell the OpenAI SDK not to.
    return ApiError(500, "the model server failed to process the request", "server_error",
                    code=UPSTREAM_ERROR, headers=(("x-should-retry", "false"),), detail=detail)


# Ollama's native API ---------------------------------------------------------


def from_upstream_native(status: int, body: bytes, model: Optional[str] = None) -> ApiError:
    """
    A non-2xx answer of Ollama on a native route: the message and code of
    L{from_upstream} (never Ollama's own text), with Ollama's own status
    for a 4xx, which its clients branch on (404 unknown model, 499).
    """
    if not 400 <= status <= 599:
        return upstream_protocol_error()
    err = from_upstream(status, body, True, model)
    if 400 <= status < 500:
        err.status = status
    return err


def model_required() -> ApiError:
    """
    400 for a native call without a model (Ollama's own text).
    """
    return invalid_request("model is required", "model", MODEL_REQUIRED)


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
        code=SCOPE_REQUIRED,
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
        code=ROUTE_REFUSED,
    )


def route_unknown(method: str, path: str) -> ApiError:
    """
    404 for a path under C{/api/} that is not one of Ollama's served ones.
    """
    return ApiError(
        404, "unknown API endpoint: %s %s" % (method, path), "invalid_request_error",
        code=UNKNOWN_URL,
    )

# The gate's refusals ---------------------------------------------------------


def unauthorized() -> ApiError:
    """
    The seed's 401, in the OpenAI envelope (what the SDK raises as
    C{AuthenticationError}).
    """
    return ApiError(
        401, "invalid api key", "invalid_request_error", code=INVALID_API_KEY,
        headers=(("WWW-Authenticate", 'Bearer realm="qwengate"'),),
    )


def forbidden(message: str, code: str) -> ApiError:
    """
    403: the caller is known but may not do this (address, model, scope).
    """
    return ApiError(403, message, "invalid_request_error", code=code)


def rate_limited(message: str, wait: float) -> ApiError:
    """
    429 with C{Retry-After} for a wait of C{wait} seconds (the OpenAI SDK
    honours it when at most 60 s).
    """
    return ApiError(429, message, "rate_limit_error", code=RATE_LIMIT_EXCEEDED,
                    headers=_retry_headers(wait))


def queue_full(wait: float) -> ApiError:
    """
    429: too many calls already wait for the model. The OpenAI SDKs retry
    it after C{Retry-After}.
    """
    return ApiError(
        429, "too many requests are waiting for the model; retry later",
        "rate_limit_error", code=QUEUE_FULL, headers=_retry_headers(wait),
    )


def queue_timeout(wait: float) -> ApiError:
    """
    503: the call waited the longest allowed time without getting a slot.
    """
    return ApiError(
        503, "timed out waiting for a free model slot; retry later",
        "server_error", code=QUEUE_TIMEOUT, headers=_retry_headers(wait),
    )


def breaker_open(where: str, wait: float) -> ApiError:
    """
    503 while an upstream's circuit breaker is open, with C{Retry-After}
    the cool-down left (the OpenAI SDKs honour it before retrying).
    """
    # No address in the client's text: the log has it (detail).
    return ApiError(
        503, "the model server is failing; not retrying it for %s s" % (retry_after(wait),),
        "server_error", code=UPSTREAM_UNAVAILABLE, headers=_retry_headers(wait),
        detail=("Ollama at %s: breaker open" % (where,)) if where else None,
    )


def no_upstream_available(wait: float) -> ApiError:
    """
    503 when no Ollama server of the pool may take the call now.
    """
    return ApiError(
        503, "no Ollama upstream is available; retry after %s s" % (retry_after(wait),),
        "server_error", code=UPSTREAM_UNAVAILABLE, headers=_retry_headers(wait),
    )


def option_not_allowed(name: str) -> ApiError:
    """
    400 for a native option outside the operator's allow-list.
    """
    name = name[:64]
    return ApiError(
        400, "option '%s' is not allowed by this gateway" % (name,),
        "invalid_request_error", "options." + name, OPTION_NOT_ALLOWED,
    )


def option_out_of_range(name: str, maximum: int) -> ApiError:
    """
    400 for an option above the operator's cap.
    """
    return ApiError(
        400, "option '%s' may be at most %d on this gateway" % (name, maximum),
        "invalid_request_error", "options." + name, OPTION_OUT_OF_RANGE,
    )


# HTTP-level refusals ---------------------------------------------------------


def body_too_large(limit: int) -> ApiError:
    """
    413: the request body is over C{limits.max_body_bytes}.
    """
    return ApiError(413, "request body too large, max %d bytes" % (limit,),
                    "invalid_request_error", code=REQUEST_TOO_LARGE)


def head_too_large(limit: int) -> ApiError:
    """
    431: the request line and headers together exceed C{limit} bytes.
    """
    return ApiError(431, "request headers too large, max %d bytes" % (limit,),
                    "invalid_request_error", code=REQUEST_HEADERS_TOO_LARGE)


def head_too_slow(timeout: float) -> ApiError:
    """
    408: the request head did not arrive within C{timeout} seconds.
    """
    return ApiError(408, "request headers not received within %g seconds" % (timeout,),
                    "invalid_request_error", code=REQUEST_TIMEOUT)


def malformed_request() -> ApiError:
    """
    400 for a request Twisted's parser refuses (bad request line, bad
    header, bad C{Content-Length}, broken chunked framing).
    """
    return ApiError(400, "malformed HTTP request", "invalid_request_error", code=BAD_REQUEST)


def https_required() -> ApiError:
    """
    400 for plain HTTP sent to the TLS port.
    """
    return ApiError(400, "this port speaks HTTPS: use an https:// base URL",
                    code=HTTPS_REQUIRED)


def origin_refused(origin: bytes) -> ApiError:
    """
    The 403 for a preflight from an origin that is not configured.
    """
    shown = origin.decode("latin-1")[:256]
    return ApiError(
        403, "origin %s is not allowed to call this API (see response.cors_origins)" % (shown,),
        "invalid_request_error", code=ORIGIN_NOT_ALLOWED,
    )


def stream_error(message: str, type: str = "server_error",
                 code: Optional[str] = None) -> ApiError:
    """
    The error a stream ends with once it has started (sent as an SSE error
    event, never as a status).
    """
    return ApiError(500, message, type, None, code)


#: Anthropic error types of the failures a stream itself ends with (the
#: relay's deadlines, the shutdown drain); any other is C{api_error}.
_ANTHROPIC_STREAM_TYPES = {
    UPSTREAM_TIMEOUT: "timeout_error",
    SHUTTING_DOWN: "overloaded_error",
}


def anthropic_stream_error(message: str, error_type: Optional[str] = None,
                           code: Optional[str] = None) -> dict:
    """
    Anthropic's error envelope: the payload of a mid-stream C{error} event
    of C{/v1/messages} (which the C{anthropic} SDK raises), and the body of
    that route's error responses (L{ApiError.anthropic_envelope}). Without
    C{error_type}, the type follows the gateway's C{code}.
    """
    if error_type is None:
        error_type = _ANTHROPIC_STREAM_TYPES.get(code or "", "api_error")
    return {"type": "error", "error": {"type": error_type, "message": message}}


def responses_stream_error(message: str) -> dict:
    """
    The C{error} of a C{response.failed} event of C{/v1/responses}: the
    Responses API's C{server_error} code (the SDK's C{ResponseError} type
    admits only its own codes), with the gateway's message.
    """
    return {"code": "server_error", "message": message}


# Refusals at the connection level --------------------------------------------


def address_banned(seconds: float, until: str) -> ApiError:
    """
    403 for a connection from an address banned after failed
    authentications: what happened and until when, never which credential
    was tried (whoever shares the address learns nothing about it).

    @param seconds: ban time left.
    @param until: when it ends, as an RFC 3339 UTC time.
    """
    return ApiError(
        403,
        "this address is banned until %s (%s s from now) after repeated failed "
        "authentication from it; retry then with a valid API key"
        % (until, retry_after(seconds)),
        "invalid_request_error",
        code=ADDRESS_BANNED,
        headers=_retry_headers(seconds),
    )


def too_many_connections(why: str, seconds: float) -> ApiError:
    """
    429 for a connection refused at accept time (too many open connections
    from the address or in all, or too many new ones per second).

    @param why: which limit, in words.
    @param seconds: when a retry may succeed (the bucket's refill time).
    """
    return ApiError(
        429,
        "%s; close idle connections or retry later" % (why,),
        "rate_limit_error",
        code=TOO_MANY_CONNECTIONS,
        headers=_retry_headers(seconds),
    )


def body_too_slow(timeout: float, min_rate: int) -> ApiError:
    """
    408: a request body stalled (fewer than C{min_rate} bytes per second
    over C{timeout} seconds).
    """
    return ApiError(
        408,
        "request body not received: less than %d bytes arrived in %g seconds"
        % (int(min_rate * timeout), timeout),
        "invalid_request_error",
        code=REQUEST_TIMEOUT,
    )
