# -*- test-case-name: tests.web.test_cors -*-
"""
Cross-origin access for the browser origins the operator configured
(C{response.cors_origins}), and for no others.

Why this matters at the security boundary: without CORS headers a web page
on another origin cannot read the gateway's answers, which is the safe
default; with C{Access-Control-Allow-Origin: *} any page a user visits
could spend the user's key or probe an internal gateway. So the allowed
origins are listed, the response names the one origin that asked (never
C{*}), and C{Vary: Origin} keeps caches from mixing them up.

A preflight (C{OPTIONS} with an C{Origin}) is answered here, before any
API resource or admission hook: browsers send it without credentials, so
it must not need any, and it must cost the upstream nothing. An origin that
is not allowed gets a 403 in the OpenAI envelope.

L{CorsPolicy} is plain data over bytes; L{PreflightResource} is the thin
Resource the tree (L{qwen_twist.web.root}) routes preflights to.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Tuple
from urllib.parse import urlsplit

from twisted.web import resource
from twisted.web.server import NOT_DONE_YET

from qwen_twist import errors
from qwen_twist.web import respond

Header = Tuple[bytes, bytes]

#: What a browser may call; the API has no other methods.
ALLOW_METHODS = b"GET, POST, OPTIONS"

#: How long (seconds) a browser may cache a preflight answer.
MAX_AGE = b"600"

#: Response headers a page may read: the request id for bug reports, the
#: rate-limit state and C{Retry-After} for client-side backoff.
EXPOSE_HEADERS = (
    b"x-request-id, retry-after, x-ratelimit-limit-requests, "
    b"x-ratelimit-remaining-requests, x-ratelimit-reset-requests, "
    b"x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, "
    b"x-ratelimit-reset-tokens"
)

#: Request headers a page may send. The OpenAI and Anthropic JS SDKs add
#: their own C{x-stainless-*} family (OS, runtime, retry count), allowed by
#: prefix.
ALLOWED_REQUEST_HEADERS = frozenset(
    {
        b"authorization",
        b"content-type",
        b"x-api-key",
        b"accept",
        b"openai-beta",
        b"openai-organization",
        b"openai-project",
        b"idempotency-key",
        # The Anthropic JS SDK's headers (browser use needs the last one).
        b"anthropic-version",
        b"anthropic-beta",
        b"anthropic-dangerous-direct-browser-access",
    }
)
_STAINLESS = b"x-stainless-"

#: Sent when a preflight asks for a header outside the allowed set, so the
#: browser refuses that header and nothing else.
DEFAULT_ALLOW_HEADERS = b"authorization, content-type, x-api-key, openai-beta"

_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


def normalize_origin(origin: str) -> bytes:
    """
    An origin as browsers serialise it: lower-case scheme and host, the
    port only when it is not the scheme's default, no path.

    @raise ValueError: not an C{http(s)://host[:port]} origin.
    """
    parts = urlsplit(origin.strip())
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in ("http", "https") or not host:
        raise ValueError("not an origin: %r" % (origin,))
    if ":" in host:
        host = "[%s]" % (host,)
    port = parts.port
    if port is None or (scheme, port) in (("http", 80), ("https", 443)):
        return ("%s://%s" % (scheme, host)).encode("ascii")
    return ("%s://%s:%d" % (scheme, host, port)).encode("ascii")


class CorsPolicy:
    """
    Which origins may use the API from a browser, and the headers that say
    so.

    @ivar origins: the allowed origins, normalised (see L{normalize_origin}).
    """

    def __init__(self, origins: Iterable[str] = ()) -> None:
        self.origins = frozenset(normalize_origin(origin) for origin in origins)

    def allowed(self, origin: Optional[bytes]) -> Optional[bytes]:
        """
        The configured origin matching the request's C{Origin} header, or
        L{None} when there is none or it is not allowed. The returned value
        is our own, never the client's bytes, so it is safe to send back.
        """
        if origin is None or not self.origins:
            return None
        origin = origin.strip().lower()
        for candidate in self.origins:
            if candidate == origin:
                return candidate
        return None

    def response_headers(self, origin: Optional[bytes]) -> Tuple[Header, ...]:
        """
        CORS headers for an actual (non-preflight) response; empty for a
        request from an origin that is not allowed or from no browser.
        """
        allowed = self.allowed(origin)
        if allowed is None:
            return ()
        return (
            (b"Access-Control-Allow-Origin", allowed),
            (b"Vary", b"Origin"),
            (b"Access-Control-Expose-Headers", EXPOSE_HEADERS),
        )

    def preflight_headers(self, requested: Optional[bytes]) -> Tuple[Header, ...]:
        """
        The headers that answer an allowed preflight (on top of
        L{response_headers}).

        @param requested: the C{Access-Control-Request-Headers} value. When
            every name in it is allowed, the list is echoed back (normalised);
            otherwise the default list plus the allowed names asked for is
            sent, and the browser refuses the rest.
        """
        return (
            (b"Access-Control-Allow-Methods", ALLOW_METHODS),
            (b"Access-Control-Allow-Headers", allow_headers(requested)),
            (b"Access-Control-Max-Age", MAX_AGE),
        )


def _allowed_name(name: bytes) -> bool:
    if name in ALLOWED_REQUEST_HEADERS:
        return True
    return (
        name.startswith(_STAINLESS)
        and len(name) > len(_STAINLESS)
        and all(c in _TOKEN for c in name)
    )


def allow_headers(requested: Optional[bytes]) -> bytes:
    """
    The C{Access-Control-Allow-Headers} value for a preflight that asked for
    C{requested} (a comma-separated list, or L{None}).
    """
    if not requested:
        return DEFAULT_ALLOW_HEADERS
    names = []
    refused = False
    for raw in requested.split(b","):
        name = raw.strip().lower()
        if not name:
            continue
        if _allowed_name(name):
            if name not in names:
                names.append(name)
        else:
            refused = True
    if not refused:
        return b", ".join(names) if names else DEFAULT_ALLOW_HEADERS
    defaults = DEFAULT_ALLOW_HEADERS.split(b", ")
    return b", ".join(defaults + [name for name in names if name not in defaults])


def is_preflight(request: Any) -> bool:
    """
    Whether a request is a browser's CORS preflight: C{OPTIONS} with an
    C{Origin} header.
    """
    return request.method == b"OPTIONS" and request.getHeader(b"origin") is not None


class PreflightResource(resource.Resource):
    """
    Answers every CORS preflight: 204 with the allowed methods and headers
    for a configured origin, 403 for any other. No identity is asked for
    and nothing upstream is called.
    """

    isLeaf = True

    def render(self, request: Any) -> Any:
        site = getattr(request, "site", None)
        policy = getattr(site, "cors", None) or _NO_CORS
        origin = request.getHeader(b"origin") or b""
        if policy.allowed(origin) is None:
            respond.error(request, errors.origin_refused(origin))
        else:
            requested = request.getHeader(b"access-control-request-headers")
            respond.empty(request, 204, policy.preflight_headers(requested))
        return NOT_DONE_YET


_NO_CORS = CorsPolicy()
