# -*- test-case-name: tests.web.test_health -*-
"""
C{GET /health} (liveness) and C{GET /ready} (readiness).

Liveness never touches the upstream: a systemd watchdog or load balancer
asking "is the process serving?" must not be answered "no" because Ollama is
loading a model. Readiness asks Ollama's C{/api/version} with a short
deadline (at most once per C{upstream.ready_cache} seconds) and says 503
when nothing answers; only a key with the C{admin} scope sees details.
"""

from __future__ import annotations

import json
from typing import Any, List, Optional, Tuple

from twisted.internet import defer

from twisted.python.failure import Failure

from qwen_twist import __version__, errors
from qwen_twist.context import CallContext
from qwen_twist.upstream.client import map_failure, read_body
from qwen_twist.web import respond
from qwen_twist.web.endpoint import ApiResource

#: Readiness must answer quickly even when Ollama hangs.
READY_TIMEOUT = 3.0


class HealthResource(ApiResource):
    """
    Always 200 while the process serves requests.
    """

    route = "health"
    methods = ("GET",)

    async def serve(self, request: Any, ctx: CallContext) -> None:
        ctx.status = 200
        respond.json_body(request, 200, {"status": "ok", "version": __version__})


class ReadyResource(ApiResource):
    """
    200 when an upstream answers, else 503.

    Why a cache and why so little detail: C{/ready} needs no key (load
    balancers poll it), so it must cost the upstream next to nothing and
    tell a stranger nothing. The upstream check runs at most once per
    C{upstream.ready_cache} seconds, and callers arriving while one runs
    share it (500 pipelined requests make one C{GET /api/version}, not
    500). Without a key holding the C{admin} scope the answer is only
    C{{"status": "ready"}} or C{{"status": "unavailable"}}; upstream
    URLs, versions, loaded models, outstanding counts and breaker states
    are for admins (and the metrics listener).
    """

    route = "ready"
    methods = ("GET",)

    #: The key scope that may see the details.
    ADMIN_SCOPE = "admin"

    def __init__(self, gateway: Any) -> None:
        super().__init__(gateway)
        self._cached: Optional[Tuple[float, Any, bool, list]] = None
        self._waiting: Optional[List[defer.Deferred]] = None

    async def serve(self, request: Any, ctx: CallContext) -> None:
        ready, states = await self._readiness()
        status = 200 if ready else 503
        ctx.status = status
        body: dict = {"status": "ready" if ready else "unavailable"}
        record = ctx.extra.get("key_record")
        if record is not None and record.has_scope(self.ADMIN_SCOPE):
            body["upstreams"] = states
        respond.json_body(request, status, body)

    def _readiness(self) -> defer.Deferred:
        """
        C{(ready, upstream states)}, from the cache while it is fresh; one
        check at a time, shared by everyone who asks meanwhile. Cancelling
        the result (the caller left) never cancels the shared check.
        """
        gateway = self.gateway
        now = gateway.now()
        cached = self._cached
        if cached is not None and cached[0] > now and cached[1] is gateway.upstream:
            return defer.succeed((cached[2], cached[3]))
        d: defer.Deferred = defer.Deferred(lambda d: self._forget(d))
        if self._waiting is not None:
            self._waiting.append(d)
            return d
        self._waiting = [d]
        upstream = gateway.upstream
        # May finish at once (a pool's state needs no I/O).
        check = defer.Deferred.fromCoroutine(self._check(upstream))
        check.addCallback(self._checked, upstream)
        check.addErrback(lambda f: self._checked((False, [{"ready": False}]), upstream))
        return d

    def _forget(self, d: defer.Deferred) -> None:
        if self._waiting is not None and d in self._waiting:
            self._waiting.remove(d)

    def _checked(self, result: tuple, upstream: Any) -> None:
        ttl = self.gateway.config.upstream.ready_cache
        self._cached = (self.gateway.now() + ttl, upstream, result[0], result[1])
        waiting, self._waiting = self._waiting or [], None
        for d in waiting:
            d.callback(result)

    async def _check(self, upstream: Any) -> tuple:
        if hasattr(upstream, "state"):
            # Several upstreams: the pool's health checks know each one.
            states = upstream.state()
            ready = any(s["healthy"] and s.get("breaker") != "open" for s in states)
            return ready, states
        state: dict = {"url": upstream.base_url, "ready": False}
        try:
            response = await upstream.send(
                "GET", "/api/version", headers_timeout=READY_TIMEOUT
            )
            body = await read_body(response, limit=64 * 1024)
            if response.code == 200:
                version = json.loads(body).get("version")
                state["ready"] = True
                state["version"] = version if isinstance(version, str) else None
            else:
                state["error"] = "HTTP %d" % (response.code,)
        except Exception:
            failure = Failure()
            err = failure.value if isinstance(failure.value, errors.ApiError) else (
                map_failure(failure, upstream.where))
            state["error"] = err.detail or err.message
        return state["ready"], [state]
