# -*- test-case-name: tests.web.test_screen -*-
"""
No work before identity: the gate's head-only checks, run by the HTTP
channel before the request body is read.

Why: twisted.web reads (and the gateway parses) a whole request body before
any Resource runs, so a gate in the Resources lets a client without a key
make the gateway buffer and parse megabytes, and answers its
C{Expect: 100-continue} with C{100 Continue}. Address, per-IP rate and
identity depend on the head alone, so L{GatewayChannel
<qwen_twist.web.request.GatewayChannel>} asks L{HeadScreen} as soon as the
headers are parsed; a refusal (401/403/429) is written at once and the
connection closed without reading the body.

Which requests are screened, by path:

  - C{/health}, C{OPTIONS *} and CORS preflights (C{OPTIONS} with an
    C{Origin} under C{/v1}): not at all; they need no credentials.
  - C{/ready}: address only, identity optional (a key with the C{admin}
    scope sees details; see L{qwen_twist.web.health}).
  - everything else, unknown URLs included: address, per-IP rate, identity.
"""

from __future__ import annotations

from typing import Any, Optional

from qwen_twist.context import CallContext
from qwen_twist.errors import ApiError

#: Paths served without any credentials or rate charge.
_PUBLIC = frozenset({b"/health"})
#: Paths where an identity is optional.
_OPTIONAL = frozenset({b"/ready"})


def screen_kind(method: bytes, path: bytes, headers: Any) -> Optional[str]:
    """
    C{"api"}, C{"ready"} or L{None} (not screened) for a request head.
    """
    path = path.split(b"?", 1)[0]
    if path == b"*" or path in _PUBLIC:
        return None
    if path in _OPTIONAL:
        return "ready"
    if method == b"OPTIONS" and headers.hasHeader(b"origin"):
        # A CORS preflight never carries credentials (web.cors).
        return None
    return "api"


class HeadScreen:
    """
    The channel's entry to L{qwen_twist.pipeline.Gateway.screen}.

    @ivar gateway: the gateway whose screens run.
    """

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway

    def __call__(self, request: Any, method: bytes, path: bytes,
                 route: str = "unknown") -> Optional[ApiError]:
        """
        Screen a request whose headers have just been parsed; remember what
        was learnt on C{request.screened} for the Resource. C{route} names
        the endpoint the path leads to (for the observers).

        @return: the refusal to write, or L{None}.
        """
        gateway = self.gateway
        kind = screen_kind(method, path, request.requestHeaders)
        if kind is None or not gateway.screens:
            return None
        peer = request.getClientAddress()
        ctx = CallContext(
            request_id=getattr(request, "request_id", ""),
            route=route,
            method=method.decode("ascii", "replace"),
            path=path.split(b"?", 1)[0].decode("utf-8", "replace")[:512],
            client_ip=getattr(peer, "host", "") or "",
            started=gateway.now(),
        )
        refusal = gateway.screen(request, ctx, kind)
        if refusal is None:
            request.screened = ctx
        return refusal
