# -*- test-case-name: tests.observe.test_metrics_resource -*-
"""
Serving the metrics: a small Resource and its own listener.

Why not C{prometheus_client.twisted.MetricsResource}: it is a
C{WSGIResource} on the global reactor and its thread pool (style.md
section 7): a scrape would run in a thread and tests could not inject a
reactor. C{generate_latest} over our registry is a few hundred
microseconds, done in the reactor thread.

Why a separate listener: the public port is TLS with client limits, bans and
API keys; Prometheus scrapes over loopback (C{127.0.0.1:9189} by default)
without any of that. An optional bearer token (C{metrics.bearer_token_file})
guards it when it must listen elsewhere.
"""

from __future__ import annotations

import hmac
from typing import Any, Callable, Optional

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.logger import Logger
from twisted.web import resource, server

from qwen_twist.web import respond


class MetricsResource(resource.Resource):
    """
    C{GET /metrics}: the registry in the Prometheus text format.

    @ivar token: a callable returning the bearer token scrapers must send,
        or L{None} when none is needed (read at each scrape, so a reload or
        a rotated token file applies at once).
    """

    isLeaf = True
    log = Logger()

    def __init__(self, registry: Any, token: Optional[Callable[[], Optional[bytes]]] = None) -> None:
        super().__init__()
        self.registry = registry
        self.token = token

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"server", respond.SERVER)
        request.setHeader(b"cache-control", b"no-store")
        if request.postpath not in ([], [b""], [b"metrics"]):
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"not found; metrics are at /metrics\n"
        expected = self.token() if self.token is not None else None
        if expected:
            given = request.getHeader(b"authorization") or b""
            if not hmac.compare_digest(given, b"Bearer " + expected):
                request.setResponseCode(401)
                request.setHeader(b"www-authenticate", b'Bearer realm="qwengate-metrics"')
                request.setHeader(b"content-type", b"text/plain; charset=utf-8")
                return b"bearer token required\n"
        try:
            body = generate_latest(self.registry)
        except Exception:
            # A broken source must not take the listener down, nor show a
            # traceback to the scraper (whose "up" then says it failed).
            self.log.failure("collecting metrics failed")
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"collecting metrics failed\n"
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return body

    render_HEAD = render_GET


def token_reader(path: Callable[[], Optional[str]]) -> Callable[[], Optional[bytes]]:
    """
    A token callable reading the file named by C{path()} (stripped); a
    named file that cannot be read refuses every scrape rather than
    opening the endpoint.
    """
    def token() -> Optional[bytes]:
        name = path()
        if not name:
            return None
        try:
            with open(name, "rb") as f:
                value = f.read().strip()
        except OSError:
            value = b""
        # An empty or unreadable token file must not mean "no token".
        return value or b"\0unreadable"

    return token


class MetricsSite(server.Site):
    """
    The metrics listener's site: no access log, no tracebacks.
    """

    displayTracebacks = False
    noisy = False

    def log(self, request: object) -> None:
        pass


def metrics_site(registry: Any, token: Optional[Callable[[], Optional[bytes]]] = None,
                 reactor: Any = None) -> MetricsSite:
    """
    The site served on C{metrics.address}:C{metrics.port}.
    """
    kwargs = {"reactor": reactor} if reactor is not None else {}
    return MetricsSite(MetricsResource(registry, token), **kwargs)
