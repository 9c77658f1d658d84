# -*- test-case-name: tests.web.test_completions -*-
"""
C{POST /v1/chat/completions} and C{POST /v1/completions}.

Both endpoints are the same pipeline with different translators: parse,
translate (pure), admit (the gate's hooks), call Ollama, translate back,
either as one JSON object or as a stream of events.
"""

from __future__ import annotations

from typing import Any

from twisted.python.failure import Failure

from qwen_twist import errors
from qwen_twist.context import CallContext
from qwen_twist.observe.logsafe import clean
from qwen_twist.observe import ids
from qwen_twist.web.relay import SseResponse, UpstreamRelay
from qwen_twist.translate import chat, completions, sse, tokens
from qwen_twist.translate.common import chat_completion_id, completion_id, ollama_timings, usage
from qwen_twist.translate.stream import ChatStreamTranslator, CompletionStreamTranslator
from qwen_twist.upstream.client import read_body
from qwen_twist.web import respond
from qwen_twist.web.endpoint import ApiResource, note_request, parse_json_body, upstream_of


class GenerationResource(ApiResource):
    """
    The shared pipeline of the text-generation endpoints (these two, and
    the Anthropic Messages and Responses ones in L{qwen_twist.web.agents}).
    Subclasses give the translators, and may change the keep-alive bytes
    and the event that ends a failed stream.
    """

    #: What an idle stream sends to keep proxies from cutting it.
    keepalive = sse.KEEPALIVE

    def translate_request(self, body: Any) -> Any:
        raise NotImplementedError()

    def stream_failure(self, translator: Any, err: errors.ApiError) -> bytes:
        """
        The event that ends a stream which failed after its headers were
        sent: an error event in the route's envelope, never a success end.
        """
        return sse.error_event(err.message, err.type, err.code)

    def translate_response(self, native: dict, plan: Any, now: int) -> dict:
        raise NotImplementedError()

    def stream_translator(self, plan: Any, now: int) -> Any:
        raise NotImplementedError()

    def translate_batch(self, natives: list, plan: Any, now: int) -> dict:
        raise NotImplementedError()

    def stream_response(self, request: Any, plan: Any) -> SseResponse:
        """
        The client half of a stream: SSE here; Ollama's native routes
        relay NDJSON through the same pipeline with their own framing.
        """
        return SseResponse(
            request, self.gateway.clock, self.gateway.config.streaming.keepalive_interval,
            self.keepalive,
        )

    def total_timeout(self, plan: Any) -> float:
        """
        The deadline of a whole stream (0: none, only the idle one).
        """
        return self.gateway.config.upstream.timeouts.total

    def plan_request(self, request: Any, ctx: CallContext) -> Any:
        """
        The call's plan from the request (its C{model}, C{stream}, upstream
        C{path} and C{payload}, and what the gate's hooks read).
        """
        body = parse_json_body(request)
        note_request(ctx, body)
        return self.translate_request(body)

    async def serve(self, request: Any, ctx: CallContext) -> None:
        plan = self.plan_request(request, ctx)
        ctx.model = plan.model
        ctx.stream = plan.stream
        ctx.end_user = ids.clean_user(getattr(plan, "end_user", None)) or ctx.end_user
        ctx.prompt_chars = getattr(plan, "prompt_chars", None)
        await self.gateway.admit(request, ctx, plan)
        if plan.stream:
            await self.serve_stream(request, ctx, plan)
            return
        await self.serve_whole(request, ctx, plan)

    async def serve_whole(self, request: Any, ctx: CallContext, plan: Any) -> None:
        """
        A call answered in one piece.
        """
        if plan.batch:
            # Several prompts: one upstream call each, in turn, inside the
            # one admission this request got.
            natives = []
            for payload in plan.batch:
                natives.append(await self.upstream_json(ctx, "POST", plan.path, payload))
            result = self.translate_batch(natives, plan, int(self.gateway.now()))
            ctx.usage = result.get("usage")
        else:
            native = await self.upstream_json(ctx, "POST", plan.path, plan.payload)
            ctx.ollama_timings = ollama_timings(native)
            result = self.translate_response(native, plan, int(self.gateway.now()))
            # The OpenAI usage shape whatever the route's, for the token
            # budget and the observers.
            ctx.usage = usage(native)
        ctx.status = 200
        respond.json_body(request, 200, result)

    async def serve_stream(self, request: Any, ctx: CallContext, plan: Any) -> None:
        gateway = self.gateway
        config = gateway.config
        translator = self.stream_translator(plan, int(gateway.now()))
        response = self.stream_response(request, plan)

        def committed() -> None:
            ctx.status = 200
            ctx.first_byte_at = gateway.now()

        response.on_commit = committed
        response.start_keepalive()
        ctx.upstream_started = gateway.now()
        try:
            # Ollama sends a stream's headers with its first chunk, so the
            # deadline for them is the first-token one (model loads).
            upstream = await gateway.upstream.send(
                "POST", plan.path, plan.payload,
                headers_timeout=config.upstream.timeouts.first_token,
                request_id=ctx.request_id,
            )
            ctx.upstream_status = upstream.code
            ctx.upstream = upstream_of(upstream)
            if upstream.code != 200:
                self.upstream_cause(ctx, upstream)
                raise self.upstream_error(
                    upstream.code, await read_body(upstream), model=plan.model)
        except Exception as e:
            ctx.upstream_finished = gateway.now()
            if ctx.client_gone:
                response.close(finish=False)
                raise
            if ctx.shutting_down:
                # Cancelled by the shutdown drain (whatever the cancellation
                # surfaced as: CancelledError, ResponseNeverReceived, ...).
                err = errors.shutting_down()
            elif isinstance(e, errors.ApiError):
                err = e
            else:
                err = self.api_error(Failure(), ctx)
            if not response.committed:
                response.close(finish=False)
                raise err
            # Already streaming keep-alives: the failure must be an event.
            ctx.outcome = "truncated"
            ctx.error_code = err.code
            if err.detail:
                self.log.info("{route} {request_id} stream failed: {detail}",
                              route=self.route, request_id=ctx.request_id,
                              detail=clean(err.detail, 2048))
            response.write(self.stream_failure(translator, err))
            response.close()
            return
        response.commit()
        response.write(translator.start())
        relay = UpstreamRelay(
            response,
            translator,
            gateway.clock,
            idle_timeout=config.upstream.timeouts.idle,
            total_timeout=self.total_timeout(plan),
            first_token_timeout=config.upstream.timeouts.first_token,
            slow_reader_timeout=config.streaming.slow_reader_timeout,
        )
        relay.on_gap = gateway.chunk_gap
        relay.request_id = ctx.request_id
        upstream.deliverBody(relay)
        ctx.abort = relay.abort
        try:
            await relay.done
        finally:
            ctx.upstream_finished = gateway.now()
            ctx.chunks = translator.chunks
            ctx.usage = translator.final_usage
            ctx.ollama_timings = translator.timings
            if relay.cut is not None:
                ctx.outcome = "truncated"
                ctx.error_code = relay.cut
            elif translator.outcome == "error":
                ctx.outcome = "truncated"
                ctx.error_code = "stream_error"
                if translator.upstream_error:
                    self.log.info("{route} {request_id} Ollama stream error: {detail}",
                                  route=self.route, request_id=ctx.request_id,
                                  detail=clean(translator.upstream_error, 2048))
            ctx.backpressure_pauses = relay.pauses


class ChatCompletionsResource(GenerationResource):
    """
    C{POST /v1/chat/completions} -> C{POST /api/chat}.
    """

    route = "chat_completions"

    def translate_request(self, body: Any) -> Any:
        return chat.chat_request(body, self.gateway.chat_options)

    def translate_response(self, native: dict, plan: Any, now: int) -> dict:
        return chat.chat_response(
            native,
            model=plan.model,
            completion_id=chat_completion_id(),
            now=now,
            options=self.gateway.chat_options,
        )

    def stream_translator(self, plan: Any, now: int) -> Any:
        return ChatStreamTranslator(
            model=plan.model,
            completion_id=chat_completion_id(),
            created=now,
            include_usage=plan.include_usage,
            reasoning_field=self.gateway.chat_options.reasoning_field,
            max_line=self.gateway.config.streaming.max_line_bytes,
        )


class CompletionsResource(GenerationResource):
    """
    C{POST /v1/completions} -> C{POST /api/generate}.
    """

    route = "completions"

    def translate_request(self, body: Any) -> Any:
        return completions.completion_request(body, tokens.offline_decoder())

    def translate_response(self, native: dict, plan: Any, now: int) -> dict:
        return completions.completion_response(
            native, model=plan.model, completion_id=completion_id(), now=now
        )

    def translate_batch(self, natives: list, plan: Any, now: int) -> dict:
        return completions.completion_batch_response(
            natives, model=plan.model, completion_id=completion_id(), now=now
        )

    def stream_translator(self, plan: Any, now: int) -> Any:
        return CompletionStreamTranslator(
            model=plan.model,
            completion_id=completion_id(),
            created=now,
            include_usage=plan.include_usage,
            max_line=self.gateway.config.streaming.max_line_bytes,
        )
