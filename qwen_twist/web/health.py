# -*- test-case-name: tests.web.test_health -*-
"""
C{GET /health} (liveness) and C{GET /ready} (readiness).

Liveness never touches the upstream: a systemd watchdog or load balancer
asking "is the process serving?" must not be answered "no" because Ollama is
loading a model. Readiness reports the upstream pool's health checks
(C{/api/version} with a short deadline) and says 503 when nothing answers;
only a key with the C{admin} scope sees the details.
"""

from __future__ import annotations

from typing import Any

from qwen_twist import __version__
from qwen_twist.context import CallContext
from qwen_twist.web import respond
from qwen_twist.web.endpoint import ApiResource

#: Seconds a readiness verdict is reused: C{/ready} is unauthenticated,
#: so it must not turn a flood of requests into a flood of upstream checks.
READY_MAX_AGE = 1.0


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
    200 when at least one Ollama server answers (and its breaker is not
    open), else 503. The upstream pool's state is refreshed at most once
    per L{READY_MAX_AGE} seconds however often this is asked.

    Why so little detail: C{/ready} needs no key (load balancers poll it),
    so it must tell a stranger nothing. Without a key holding the C{admin}
    scope the answer is only C{{"status": "ready"}} or
    C{{"status": "unavailable"}}; upstream URLs, versions, loaded models,
    outstanding counts and breaker states are for admins (and the metrics
    listener).
    """

    #: The key scope that may see the details.
    ADMIN_SCOPE = "admin"

    route = "ready"
    methods = ("GET",)

    async def serve(self, request: Any, ctx: CallContext) -> None:
        states = await self.gateway.upstream.current_state(READY_MAX_AGE)
        ready = any(s["healthy"] and s.get("breaker") != "open" for s in states)
        status = 200 if ready else 503
        ctx.status = status
        body: dict = {"status": "ready" if ready else "unavailable"}
        record = ctx.key_record
        if record is not None and record.has_scope(self.ADMIN_SCOPE):
            body["upstreams"] = states
        respond.json_body(request, status, body)
