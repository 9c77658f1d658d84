# -*- test-case-name: tests.web.test_models -*-
"""
C{GET /v1/models} -> C{GET /api/tags}; C{GET /v1/models/{id}} ->
C{POST /api/show}.

Model ids may contain C{/} (C{hf.co/user/repo:Q4}); the OpenAI SDK sends
them percent-encoded (C{%2F}) and older clients literally, so the id is
taken from the raw request path, decoded once, whichever form arrives.
"""

from __future__ import annotations

from typing import Any

from qwen_twist.context import CallContext
from qwen_twist.translate import models, native
from qwen_twist.web import respond
from qwen_twist.web.endpoint import ApiResource

_PREFIX = b"/v1/models/"


class ModelsResource(ApiResource):
    """
    The model list, and (for any longer path) one model.
    """

    route = "models"
    methods = ("GET",)
    accepts_subpaths = True

    async def serve(self, request: Any, ctx: CallContext) -> None:
        path = request.path
        now = int(self.gateway.now())
        tail = path[len(_PREFIX):] if path.startswith(_PREFIX) else b""
        if tail.strip(b"/"):
            ctx.route = "model"
            model_id = models.model_id_from_path(tail)
            ctx.model = model_id
            await self.gateway.admit(request, ctx, None)
            show = await self.upstream_json(ctx, "POST", "/api/show", {"model": model_id})
            result = models.model_object(model_id, show, now)
        else:
            await self.gateway.admit(request, ctx, None)
            tags = await self.upstream_json(ctx, "GET", "/api/tags", model_endpoint=False)
            record = ctx.key_record
            if record is not None and record.models:
                # A key limited to some models sees only those, as on
                # /api/tags: the list must not advertise what it may not use.
                tags = native.allowed_listing(tags, record.allows_model)
            result = models.model_list(tags, now)
        ctx.status = 200
        respond.json_body(request, 200, result)
