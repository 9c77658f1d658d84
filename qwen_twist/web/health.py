# -*- test-case-name: tests.web.test_health -*-
"""
C{GET /health} (liveness) and C{GET /ready} (readiness).

Liveness never touches the upstream: a systemd watchdog or load balancer
asking "is the process serving?" must not be answered "no" because Ollama is
loading a model. Readiness asks Ollama's C{/api/version} with a short
deadline and says 503 when nothing answers.
"""

from __future__ import annotations

import json
from typing import Any

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
    200 with the upstream version when Ollama answers, else 503.
    """

    route = "ready"
    methods = ("GET",)

    async def serve(self, request: Any, ctx: CallContext) -> None:
        upstream = self.gateway.upstream
        if hasattr(upstream, "state"):
            # Several upstreams: the pool's health checks know each one.
            states = upstream.state()
            ready = any(s["healthy"] and s.get("breaker") != "open" for s in states)
            self._answer(request, ctx, ready, {"upstreams": states})
            return
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
            if ctx.client_gone:
                raise
            failure = Failure()
            err = failure.value if isinstance(failure.value, errors.ApiError) else (
                map_failure(failure, upstream.where))
            state["error"] = err.message
        self._answer(request, ctx, state["ready"], {"upstreams": [state]})

    def _answer(self, request: Any, ctx: CallContext, ready: bool, body: dict) -> None:
        """
        Add the limits store's state. A shared store that is down makes the
        gateway unready only under C{on_failure: closed} (it then refuses
        every limited call); fail-open keeps serving on local limits.
        """
        store = self.gateway.store
        if store is not None:
            body["limits_store"] = store.status()
            if store.status().get("on_failure") == "closed" and store.state != "up":
                ready = False
        status = 200 if ready else 503
        ctx.status = status
        body = dict({"status": "ready" if ready else "unavailable"}, **body)
        respond.json_body(request, status, body)
