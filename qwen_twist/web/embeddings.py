# -*- test-case-name: tests.web.test_embeddings -*-
"""
C{POST /v1/embeddings} -> C{POST /api/embed}, float or base64 vectors.

Why this endpoint is careful with memory and the reactor: one ~10 KB
request (1,300 inputs) for a 4,096-dimension model makes Ollama answer
with ~58 MB of JSON. Decoding and re-encoding that whole on the reactor
cost +513 MB RSS and a 4 s stall for every client. So: at most
C{limits.max_embedding_inputs} inputs (and C{limits.max_prompt_chars}
characters) per request; at most C{upstream.max_embeddings_bytes} read
from Ollama (502 above); and large answers are translated one vector at a
time (L{qwen_twist.translate.embeddings.embeddings_response_bytes}) in a
thread, one such translation at a time, so the reactor keeps serving.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, threads

from qwen_twist import errors
from qwen_twist.context import CallContext
from qwen_twist.translate import embeddings, tokens
from qwen_twist.web import respond
from qwen_twist.web.endpoint import ApiResource, note_request, parse_json_body

#: Answers at least this large are translated off the reactor thread.
THREAD_THRESHOLD = 1024 * 1024


class EmbeddingsResource(ApiResource):
    """
    Embeddings: one upstream call, the vectors re-encoded as the client
    asked (the OpenAI SDK asks for base64 unless told otherwise).
    """

    route = "embeddings"

    def __init__(self, gateway: Any) -> None:
        super().__init__(gateway)
        #: One large translation at a time (each holds its answer twice).
        self._translating = defer.DeferredSemaphore(1)

    async def serve(self, request: Any, ctx: CallContext) -> None:
        config = self.gateway.config
        body = parse_json_body(request)
        note_request(ctx, body)
        plan = embeddings.embeddings_request(
            body, tokens.offline_decoder(), config.limits.max_embedding_inputs
        )
        ctx.model = plan.model
        await self.gateway.admit(request, ctx, plan)
        raw = await self.upstream_bytes(
            ctx, "POST", plan.path, plan.payload, limit=config.upstream.max_embeddings_bytes
        )
        site = respond.site_of(request)
        parts = None
        if not getattr(site, "strip_tree", None):
            parts = await self._translate(raw, plan)
        if parts is not None:
            del raw
            ctx.usage = _usage(parts[-1])
            ctx.status = 200
            respond.pieces(request, 200, parts)
            return
        try:
            native = json.loads(raw)
        except ValueError:
            raise errors.upstream_protocol_error()
        result = embeddings.embeddings_response(
            native, model=plan.model, encoding_format=plan.encoding_format
        )
        ctx.usage = result.get("usage")
        ctx.status = 200
        respond.json_body(request, 200, result)

    async def _translate(self, raw: bytes, plan: Any) -> Any:
        def translate() -> Any:
            return embeddings.embeddings_response_bytes(
                raw, model=plan.model, encoding_format=plan.encoding_format
            )

        clock = self.gateway.clock
        if len(raw) < THREAD_THRESHOLD or not hasattr(clock, "getThreadPool"):
            return translate()
        await self._translating.acquire()
        try:
            return await threads.deferToThreadPool(clock, clock.getThreadPool(), translate)
        finally:
            self._translating.release()


def _usage(tail: bytes) -> Any:
    """
    The usage object from the last piece of a translated answer.
    """
    try:
        return json.loads(tail[tail.index(b'"usage":') + 8:-1])
    except ValueError:
        return None
