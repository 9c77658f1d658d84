# -*- test-case-name: tests.web.test_embeddings -*-
"""
C{POST /v1/embeddings} -> C{POST /api/embed}, float or base64 vectors.
"""

from __future__ import annotations

from typing import Any

from qwen_twist.context import CallContext
from qwen_twist.translate import embeddings, tokens
from qwen_twist.web import respond
from qwen_twist.web.endpoint import ApiResource, note_request, parse_json_body


class EmbeddingsResource(ApiResource):
    """
    Embeddings: one upstream call, the vectors re-encoded as the client
    asked (the OpenAI SDK asks for base64 unless told otherwise).
    """

    route = "embeddings"

    async def serve(self, request: Any, ctx: CallContext) -> None:
        body = parse_json_body(request)
        note_request(ctx, body)
        plan = embeddings.embeddings_request(body, tokens.offline_decoder())
        ctx.model = plan.model
        await self.gateway.admit(request, ctx, plan)
        native = await self.upstream_json(ctx, "POST", plan.path, plan.payload)
        result = embeddings.embeddings_response(
            native, model=plan.model, encoding_format=plan.encoding_format
        )
        ctx.usage = result.get("usage")
        ctx.status = 200
        respond.json_body(request, 200, result)
