# -*- test-case-name: tests.web.test_endpoint -*-
"""
The Resource tree: which URL is served by which endpoint.

    /health                  HealthResource
    /ready                   ReadyResource
    /v1/chat/completions     ChatCompletionsResource
    /v1/completions          CompletionsResource
    /v1/embeddings           EmbeddingsResource
    /v1/models[/{id}]        ModelsResource
    /v1/messages             MessagesResource (Anthropic Messages)
    /v1/messages/count_tokens  CountTokensResource (an estimate)
    /v1/responses            ResponsesResource (OpenAI Responses)
    OPTIONS /v1/... with an Origin   PreflightResource (CORS)
    /, /api/...              Ollama's native API (L{qwen_twist.web.native})

Everything else is a JSON 404 in the OpenAI envelope, never Twisted's HTML.

Why preflights are routed at C{/v1} rather than in each endpoint: a
browser's preflight carries no credentials, so it must be answered before
anything that asks for them, and it must never reach an API resource or
the admission hooks (which would charge rate limits or call Ollama). The
API resources stay unaware of CORS.
"""

from __future__ import annotations

from typing import Any

from twisted.web import resource
from twisted.web.server import NOT_DONE_YET

from qwen_twist import errors
from qwen_twist.pipeline import Gateway
from qwen_twist.web import respond
from qwen_twist.web.agents import MessagesResource, ResponsesResource
from qwen_twist.web.completions import ChatCompletionsResource, CompletionsResource
from qwen_twist.web.cors import PreflightResource, is_preflight
from qwen_twist.web.embeddings import EmbeddingsResource
from qwen_twist.web.health import HealthResource, ReadyResource
from qwen_twist.web.models import ModelsResource
from qwen_twist.web import native


class UnknownURL(resource.Resource):
    """
    JSON 404 for any URL that no endpoint serves.
    """

    isLeaf = True

    def render(self, request: Any) -> Any:
        method = request.method.decode("ascii", "replace")
        path = request.path.decode("utf-8", "replace")[:256]
        respond.error(request, errors.not_found("Unknown request URL: %s %s" % (method, path)))
        return NOT_DONE_YET


class Branch(resource.Resource):
    """
    An inner node whose unknown children (and itself) are JSON 404s.
    """

    def getChild(self, path: bytes, request: Any) -> resource.Resource:
        return UnknownURL()

    def render(self, request: Any) -> Any:
        return UnknownURL().render(request)


class ApiBranch(Branch):
    """
    The C{/v1} node: CORS preflights for any URL below it are answered by
    L{PreflightResource}; everything else is routed as usual.
    """

    preflight = PreflightResource()

    def getChildWithDefault(self, path: bytes, request: Any) -> resource.Resource:
        if is_preflight(request):
            return self.preflight
        return super().getChildWithDefault(path, request)

    def render(self, request: Any) -> Any:
        if is_preflight(request):
            return self.preflight.render(request)
        return super().render(request)


def build_root(gateway: Gateway) -> resource.Resource:
    """
    The gateway's root Resource.
    """
    root = Branch()
    root.putChild(b"health", HealthResource(gateway))
    root.putChild(b"ready", ReadyResource(gateway))
    v1 = ApiBranch()
    root.putChild(b"v1", v1)
    chat = Branch()
    v1.putChild(b"chat", chat)
    chat.putChild(b"completions", ChatCompletionsResource(gateway))
    v1.putChild(b"completions", CompletionsResource(gateway))
    v1.putChild(b"embeddings", EmbeddingsResource(gateway))
    v1.putChild(b"models", ModelsResource(gateway))
    v1.putChild(b"messages", MessagesResource(gateway))
    v1.putChild(b"responses", ResponsesResource(gateway))
    native.mount(root, gateway, UnknownURL())
    return root
