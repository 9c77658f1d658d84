# -*- test-case-name: tests.web.test_root -*-
"""
The Resource tree: which URL is served by which endpoint.

    /health                  HealthResource
    /ready                   ReadyResource
    /v1/chat/completions     ChatCompletionsResource
    /v1/completions          CompletionsResource
    /v1/embeddings           EmbeddingsResource
    /v1/models[/{id}]        ModelsResource

Everything else is a JSON 404 in the OpenAI envelope, never Twisted's HTML.
"""

from __future__ import annotations

from typing import Any

from twisted.web import resource
from twisted.web.server import NOT_DONE_YET

from qwen_twist import errors
from qwen_twist.gateway import Gateway
from qwen_twist.web import respond
from qwen_twist.web.completions import ChatCompletionsResource, CompletionsResource
from qwen_twist.web.embeddings import EmbeddingsResource
from qwen_twist.web.health import HealthResource, ReadyResource
from qwen_twist.web.models import ModelsResource


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



def build_root(gateway: Gateway) -> resource.Resource:
    """
    The gateway's root Resource.
    """
    root = Branch()
    root.putChild(b"health", HealthResource(gateway))
    root.putChild(b"ready", ReadyResource(gateway))
    v1 = Branch()
    root.putChild(b"v1", v1)
    chat = Branch()
    v1.putChild(b"chat", chat)
    chat.putChild(b"completions", ChatCompletionsResource(gateway))
    v1.putChild(b"completions", CompletionsResource(gateway))
    v1.putChild(b"embeddings", EmbeddingsResource(gateway))
    v1.putChild(b"models", ModelsResource(gateway))
    return root
