# -*- test-case-name: tests.web.test_agents,tests.test_live_agents -*-
"""
C{POST /v1/messages} (Anthropic Messages), C{POST /v1/messages/count_tokens}
and C{POST /v1/responses} (OpenAI Responses).

The two API families coding agents speak besides Chat Completions run the
very same pipeline as C{/v1/chat/completions} (L{GenerationResource}:
parse, translate, admit through the gate's hooks, call Ollama's
C{/api/chat}, relay the stream with its backpressure, deadlines and
cancellation, observers at the end); only the pure translators differ, and
for the Anthropic routes the envelope of every error, so that the
C{anthropic} SDK raises C{AuthenticationError}, C{RateLimitError}, ... for
the gate's refusals too.
"""

from __future__ import annotations

from typing import Any

from twisted.web import resource
from twisted.web.server import NOT_DONE_YET

from qwen_twist import errors
from qwen_twist.context import CallContext
from qwen_twist.translate import anthropic, responses
from qwen_twist.translate.anthropic_stream import PING, MessagesStreamTranslator
from qwen_twist.translate.responses_stream import ResponsesStreamTranslator
from qwen_twist.web import respond
from qwen_twist.web.completions import GenerationResource
from qwen_twist.web.endpoint import ApiResource, parse_json_body


class _UnknownMessagesURL(resource.Resource):
    """
    A 404 in Anthropic's envelope for any other URL below C{/v1/messages}.
    """

    isLeaf = True

    def render(self, request: Any) -> Any:
        path = request.path.decode("utf-8", "replace")[:256]
        method = request.method.decode("ascii", "replace")
        respond.error(
            request, errors.not_found("Unknown request URL: %s %s" % (method, path)), "anthropic"
        )
        return NOT_DONE_YET


class MessagesResource(GenerationResource):
    """
    C{POST /v1/messages} -> C{POST /api/chat}; C{count_tokens} below it.
    """

    route = "messages"
    error_style = "anthropic"
    keepalive = PING
    # Not a leaf, so that Twisted routes count_tokens below it.
    isLeaf = False

    def __init__(self, gateway: Any) -> None:
        super().__init__(gateway)
        self.putChild(b"count_tokens", CountTokensResource(gateway))

    def getChild(self, path: bytes, request: Any) -> resource.Resource:
        if path == b"":
            # /v1/messages/ is /v1/messages, as for every other endpoint.
            return self
        return _UnknownMessagesURL()

    def translate_request(self, body: Any) -> Any:
        return anthropic.messages_request(body, self.gateway.chat_options.max_think_level)

    def translate_response(self, native: dict, plan: Any, now: int) -> dict:
        return anthropic.messages_response(
            native, model=plan.model, message_id=anthropic.message_id()
        )

    def stream_translator(self, plan: Any, now: int) -> Any:
        return MessagesStreamTranslator(
            model=plan.model,
            message_id=anthropic.message_id(),
            max_line=self.gateway.config.streaming.max_line_bytes,
        )

    def stream_failure(self, translator: Any, err: errors.ApiError) -> bytes:
        return translator.fail(err.message, err.code, err.anthropic_type())


class CountTokensResource(ApiResource):
    """
    C{POST /v1/messages/count_tokens}: an estimate, computed here without
    a model call (see L{anthropic.count_tokens}); the gate still
    authenticates and rate-limits it, but it takes no GPU slot.
    """

    route = "count_tokens"
    error_style = "anthropic"

    async def serve(self, request: Any, ctx: CallContext) -> None:
        body = parse_json_body(request)
        result = anthropic.count_tokens(body)
        ctx.model = body.get("model") if isinstance(body, dict) else None
        await self.gateway.admit(request, ctx, None)
        ctx.status = 200
        respond.json_body(
            request, 200, result, headers=(("x-qwengate-token-count", "estimate"),)
        )


class ResponsesResource(GenerationResource):
    """
    C{POST /v1/responses} -> C{POST /api/chat}.
    """

    route = "responses"

    def translate_request(self, body: Any) -> Any:
        return responses.responses_request(body, self.gateway.chat_options)

    def translate_response(self, native: dict, plan: Any, now: int) -> dict:
        return responses.responses_response(
            native, plan=plan, response_id=responses.item_id("resp"), created=now
        )

    def stream_translator(self, plan: Any, now: int) -> Any:
        return ResponsesStreamTranslator(
            plan=plan,
            response_id=responses.item_id("resp"),
            created=now,
            max_line=self.gateway.config.streaming.max_line_bytes,
        )

    def stream_failure(self, translator: Any, err: errors.ApiError) -> bytes:
        return translator.fail(err.message, err.code)
