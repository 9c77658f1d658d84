# -*- test-case-name: tests.web.test_request -*-
"""
The gateway's C{Request} and C{Site}: body limits while reading, JSON errors
for anything twisted.web would otherwise answer with HTML.

Why a Request subclass: twisted.web buffers the whole body before any
Resource runs, so a size limit checked in a Resource comes too late. Here
the declared C{Content-Length} is checked as soon as the headers are parsed
and the body is discarded (not buffered) once it passes the limit; the
Resource then answers 413.
"""

from __future__ import annotations

import io
import uuid

from twisted.logger import Logger
from twisted.web import server

from qwen_twist import errors
from qwen_twist.web import respond


class _Discard:
    """
    A write-only sink standing in for C{request.content} once the body is
    known to be too large.
    """

    def write(self, data: bytes) -> None:
        pass

    def seek(self, *args: object) -> int:
        return 0

    def tell(self) -> int:
        return 0

    def read(self, *args: object) -> bytes:
        return b""

    def close(self) -> None:
        pass


class GatewayRequest(server.Request):
    """
    A request with a body limit, a request id and JSON failure pages.

    @ivar request_id: random id echoed in C{x-request-id} and the logs.
    @ivar body_too_large: set once more than the site's C{max_body_bytes}
        was declared or received; the body is then discarded.
    """

    _log = Logger()

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.request_id = uuid.uuid4().hex
        self.body_too_large = False
        self._body_received = 0

    def _max_body(self) -> int:
        return getattr(self.channel.site, "max_body_bytes", 8 * 1024 * 1024)

    def gotLength(self, length: object) -> None:
        limit = self._max_body()
        if length is not None and length > limit:  # type: ignore[operator]
            self.body_too_large = True
            self.content = _Discard()  # type: ignore[assignment]
            return
        # Small bodies stay in memory; twisted would spill anything over
        # 100 KB to a temporary file, which costs a file per chat request.
        self.content = io.BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        self._body_received += len(data)
        if self._body_received > self._max_body():
            # A chunked body without a declared length that grows too big.
            self.body_too_large = True
            self.content = _Discard()  # type: ignore[assignment]
            return
        self.content.write(data)

    def processingFailed(self, reason: object) -> None:
        """
        A Resource raised: log the traceback, tell the client nothing but
        that it failed.
        """
        self._log.failure("Unhandled error serving {path}", reason, path=self.path)
        if not respond.is_gone(self):
            # Headers may already be on the wire (a stream): then all we can
            # do is end the response.
            if self.startedWriting:
                self.finish()
            else:
                respond.error(self, errors.internal_error())


class GatewaySite(server.Site):
    """
    The HTTP factory: gateway requests, no tracebacks, no Twisted access log
    (which would record query strings; the call observers log instead).

    @ivar max_body_bytes: request body limit, read by L{GatewayRequest}.
    """

    displayTracebacks = False
    noisy = False

    def __init__(self, root: object, max_body_bytes: int, reactor: object = None,
                 timeout: float = 60) -> None:
        kwargs = {}
        if reactor is not None:
            kwargs["reactor"] = reactor
        super().__init__(root, requestFactory=GatewayRequest, timeout=timeout, **kwargs)
        self.max_body_bytes = max_body_bytes

    def log(self, request: object) -> None:
        pass
