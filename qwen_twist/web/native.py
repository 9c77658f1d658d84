# -*- test-case-name: tests.web.test_native -*-
"""
Ollama's native API (C{/}, C{/api/*}) on the gateway's port, through the
same pipeline as C{/v1}: peer filter, TLS, identity, address rules, model
allow-lists, prompt limit, rate limits and token budgets, the GPU queue,
breaker, deadlines, metrics and audit.

Nothing is translated: a body is checked (L{qwen_twist.translate.native})
and forwarded as it came, an answer is passed on as Ollama gave it, and a
stream is relayed line by line with the relay of the C{/v1} routes
(backpressure, keep-alive lines, deadlines, cancellation when the client
leaves). Two things differ from Ollama itself: C{/api/tags} and
C{/api/ps} list only the models the caller's key may use, and every error
the gateway makes is in Ollama's shape, C{{"error": "..."}}, with the
status Ollama would use, so its clients raise their usual
C{ResponseError}.

Why one leaf for all of C{/api}: Ollama's paths are exact (and one takes a
digest below it), so the whole path is looked up in
L{qwen_twist.translate.native.ROUTES}; a path that is not there is a 404
and never reaches Ollama, whatever the key may do.
"""

from __future__ import annotations

import datetime
import json
from typing import Any, Optional

from twisted.web import resource

from qwen_twist import errors
from qwen_twist.context import CallContext
from qwen_twist.translate import native
from qwen_twist.translate.native import MANAGED, REFUSED, Route, route_for
from qwen_twist.web import respond
from qwen_twist.web.completions import GenerationResource
from qwen_twist.web.cors import PreflightResource, is_preflight
from qwen_twist.web.endpoint import check_body_size, note_request, parse_json_body
from qwen_twist.web.relay import SseResponse

NDJSON_HEADERS = (
    ("Content-Type", "application/x-ndjson"),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),
)

#: The route of a path Ollama does not have (refused before anything).
_UNKNOWN = Route("native_unknown", ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"),
                 REFUSED)

#: Every timestamp in a keep-alive line: RFC 3339 UTC with nanoseconds,
#: like Ollama's C{created_at}.
_STAMP = "%Y-%m-%dT%H:%M:%S"


def _created_at(now: float) -> str:
    moment = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    return moment.strftime(_STAMP) + ".%09dZ" % (moment.microsecond * 1000,)


class NdjsonResponse(SseResponse):
    """
    The client half of a native stream: NDJSON headers, and as keep-alive
    an empty delta in the route's own shape (none for management
    progress, which has no such line).
    """

    headers = NDJSON_HEADERS

    def __init__(self, request: Any, clock: Any, keepalive_interval: float,
                 path: str, model: Optional[str]) -> None:
        if native.keepalive_line(path, model, "") is None:
            keepalive_interval = 0.0
        super().__init__(request, clock, keepalive_interval)
        self.path = path
        self.model = model
        # response.strip_fields names fields of OpenAI objects; native
        # lines are passed on as Ollama wrote them.
        self._strip = None

    def next_keepalive(self) -> bytes:
        line = native.keepalive_line(self.path, self.model,
                                     _created_at(self.clock.seconds()))
        return line or b""


class NativeEndpoint(GenerationResource):
    """
    One of Ollama's native routes (L{Route}); see the module docstring.
    """

    error_style = "ollama"
    accepts_subpaths = True

    def __init__(self, gateway: Any, native_route: Route, path: str) -> None:
        super().__init__(gateway)
        self.native = native_route
        self.native_path = path
        self.route = native_route.name
        self.methods = native_route.methods

    # Refusals by URL -------------------------------------------------------

    def refusal(self, ctx: CallContext) -> Optional[errors.ApiError]:
        if self.native is _UNKNOWN:
            return errors.route_unknown(ctx.method, ctx.path)
        if self.native.fate == REFUSED:
            return errors.route_refused(ctx.method, ctx.path)
        return None

    def upstream_error(self, status: int, body: bytes, model_endpoint: bool = True,
                       model: Optional[str] = None) -> errors.ApiError:
        return errors.from_upstream_native(status, body, model)

    # The call --------------------------------------------------------------

    def plan_request(self, request: Any, ctx: CallContext) -> Any:
        route = self.native
        body = parse_json_body(request) if route.body else None
        if isinstance(body, dict):
            note_request(ctx, body)
            # Ollama streams unless told not to (note_request reads the
            # OpenAI default).
            ctx.stream = route.streams and body.get("stream") is not False
        plan = native.native_request(self.native_path, route, body)
        if self.native_path.startswith("/api/blobs/") and request.method == b"POST":
            # A blob upload: the body is the file's bytes, forwarded as is.
            check_body_size(request)
            request.content.seek(0)
            plan.payload = request.content.read()
        return plan

    async def serve_whole(self, request: Any, ctx: CallContext, plan: Any) -> None:
        """
        A call answered in one piece: Ollama's status, type and body passed
        on (model lists filtered by the key; token counts read for the
        budget and the observers).
        """
        method = "GET" if ctx.method == "HEAD" and "GET" in self.methods else ctx.method
        response, raw = await self.upstream_body(ctx, method, self.native_path, plan.payload)
        if not 200 <= response.code < 300:
            self.upstream_cause(ctx, response)
            raise self.upstream_error(response.code, raw, model=plan.model)
        content_type = _content_type(response)
        if self.native_path in ("/api/tags", "/api/ps"):
            raw = self._filtered(ctx, raw)
        elif self.native.inference:
            ctx.usage = native.response_usage(_json_or_none(raw))
        ctx.status = response.code
        respond.body(request, response.code, raw, content_type)

    def _filtered(self, ctx: CallContext, raw: bytes) -> bytes:
        record = ctx.key_record
        if record is None or not record.models:
            return raw
        listing = native.allowed_listing(_json_or_none(raw), record.allows_model)
        return json.dumps(listing, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    # Streams (GenerationResource.serve_stream runs them) -------------------

    def stream_translator(self, plan: Any, now: int) -> Any:
        return native.NativeStreamRelay(
            final_key=plan.final_key, max_line=self.gateway.config.streaming.max_line_bytes
        )

    def stream_response(self, request: Any, plan: Any) -> SseResponse:
        return NdjsonResponse(
            request, self.gateway.clock, self.gateway.config.streaming.keepalive_interval,
            plan.path, plan.model,
        )

    def stream_failure(self, translator: Any, err: errors.ApiError) -> bytes:
        return native.error_line(err.message)

    def total_timeout(self, plan: Any) -> float:
        if self.native.fate == MANAGED:
            # A pull runs for hours; it is cut when its progress stops
            # (the idle deadline), not by the inference deadline.
            return 0.0
        return super().total_timeout(plan)


def _content_type(response: Any) -> bytes:
    values = response.headers.getRawHeaders(b"content-type") if hasattr(
        response, "headers") else None
    return values[0] if values else b"application/json; charset=utf-8"


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


class NativeBranch(resource.Resource):
    """
    C{/api}: every path below it is looked up whole (L{route_for}); CORS
    preflights are answered as under C{/v1}.
    """

    preflight = PreflightResource()

    def __init__(self, gateway: Any) -> None:
        super().__init__()
        self.gateway = gateway

    def getChildWithDefault(self, path: bytes, request: Any) -> resource.Resource:
        if is_preflight(request):
            return self.preflight
        full = request.path.decode("utf-8", "replace")
        found = route_for(full)
        return NativeEndpoint(self.gateway, found or _UNKNOWN, full)

    def render(self, request: Any) -> Any:
        if is_preflight(request):
            return self.preflight.render(request)
        return NativeEndpoint(self.gateway, _UNKNOWN, "/api").render(request)


class _Slash(resource.Resource):
    """
    The root's empty segment: C{/} itself is Ollama's probe, anything
    below it (C{//x}) is no URL of Ollama's and gets the tree's 404.
    """

    def __init__(self, endpoint: resource.Resource, unknown: resource.Resource) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.unknown = unknown
        # What the head screen reads to answer a refusal of C{/} as the
        # endpoint would (Ollama's envelope, its route name).
        self.error_style = endpoint.error_style
        self.route = endpoint.route

    def getChild(self, path: bytes, request: Any) -> resource.Resource:
        return self.unknown

    def render(self, request: Any) -> Any:
        return self.endpoint.render(request)


def mount(root: resource.Resource, gateway: Any, unknown: resource.Resource) -> None:
    """
    Put Ollama's native API on the gateway's root: C{/} (Ollama's
    "is running" probe) and C{/api}.

    @param unknown: what answers URLs of neither API (C{//x}).
    """
    root.putChild(b"", _Slash(NativeEndpoint(gateway, native.ROUTES["/"], "/"), unknown))
    root.putChild(b"api", NativeBranch(gateway))
