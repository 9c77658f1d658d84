# -*- test-case-name: tests.web.test_request -*-
"""
The gateway's C{Request}, C{HTTPChannel} and C{Site}: body and header
limits while reading, JSON errors for anything twisted.web would otherwise
answer with HTML or a bare status line.

Why a Request subclass: twisted.web buffers the whole body before any
Resource runs, so a size limit checked in a Resource comes too late. Here
the declared C{Content-Length} is checked as soon as the headers are parsed
and the body is discarded (not buffered) once it passes the limit; the
Resource then answers 413.

Why a channel subclass: the request head is read before any Request or
Resource exists. Twisted caps it (C{totalHeadersSize}, set here from
C{limits.max_header_bytes}) but answers a bare C{400} with no body, and its
idle timeout restarts with every line, so a client that sends one header
line every few seconds holds a connection forever. L{GatewayChannel}
answers an oversized head with 431 and gives the whole head
C{limits.header_timeout} seconds from its first byte (408, then close).
A request body must keep arriving at C{limits.body_min_rate} bytes per
second, checked every C{limits.body_timeout} seconds (408, then close): a
body trickled one byte at a time would otherwise hold the connection,
since Twisted's idle timeout restarts with every byte.
Both are in the OpenAI envelope with the security headers. The idle
timeout (L{KEEPALIVE_TIMEOUT}) still closes silent kept-alive connections;
Twisted switches it off while a request is answered, and the head deadline
is not running then either, so a long stream is never cut by either.
"""

from __future__ import annotations

import inspect
import io
from typing import Any, Optional
from urllib.parse import unquote_to_bytes

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from zope.interface import implementer

from qwen_twist import errors
from qwen_twist.interfaces import IReconfigurable
from qwen_twist.observe.logsafe import clean
from qwen_twist.observe import ids
from qwen_twist.web import hygiene, respond
from qwen_twist.web.cors import CorsPolicy

#: Seconds a kept-alive connection may stay silent between requests (and
#: between reads of a request body) before it is closed.
KEEPALIVE_TIMEOUT = 60.0

#: Twisted 24.10+ can be told not to parse form bodies (22.4 cannot). The
#: gateway takes JSON only, and 26.10's form parsing raises out of
#: C{dataReceived} for a C{Content-Type} containing a byte such as 0x85.
_FORM_SWITCH = "parsePOSTFormSubmission" in inspect.signature(server.Site.__init__).parameters

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

    @ivar request_id: the client's well-formed C{X-Request-ID} or a random
        id; echoed in C{x-request-id}, sent to Ollama, in the logs and the
        audit line (L{qwen_twist.observe.ids}).
    @ivar body_too_large: set once more than the site's C{max_body_bytes}
        was declared or received; the body is then discarded.
    """

    _log = Logger()

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.request_id = ids.new_request_id()
        self.body_too_large = False
        self._body_received = 0
        self._hidden_content_type: Optional[list] = None

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

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not _FORM_SWITCH and command == b"POST":
            # Twisted 22.4 cannot be told not to parse form bodies: it would
            # run parse_qs over a JSON body that curl labels urlencoded, or
            # the multipart parser over one labelled multipart (a 400, or an
            # exception out of dataReceived). Hide the Content-Type from it;
            # process() puts it back before any Resource looks.
            content_type = self.requestHeaders.getRawHeaders(b"content-type")
            if content_type is not None:
                self._hidden_content_type = content_type
                self.requestHeaders.removeHeader(b"content-type")
        super().requestReceived(command, path, version)

    def process(self) -> None:
        """
        Serve the request; C{OPTIONS *} and other C{*} requests are answered
        here (twisted.web would answer them without our headers).
        """
        if self._hidden_content_type is not None:
            self.requestHeaders.setRawHeaders(b"content-type", self._hidden_content_type)
            self._hidden_content_type = None
        self.request_id = ids.request_id_from(self.getHeader(b"x-request-id"))
        if self.path != b"*":
            super().process()
            return
        self.site = self.channel.site
        self.setHeader(b"date", http.datetimeToString())
        try:
            if self.method == b"OPTIONS":
                respond.empty(self, 204, ((b"Allow", b"GET, POST, OPTIONS"),))
            else:
                method = self.method.decode("ascii", "replace")
                respond.error(self, errors.method_not_allowed(method, "*", ("OPTIONS",)))
        except Exception:
            self.processingFailed(Failure())

    def processingFailed(self, reason: object) -> None:
        """
        A Resource raised: log the traceback, tell the client nothing but
        that it failed.
        """
        self._log.failure(
            "Unhandled error serving {path}", reason,
            path=clean(self.path.decode("utf-8", "replace")),
        )
        if not respond.is_gone(self):
            # Headers may already be on the wire (a stream): then all we can
            # do is end the response.
            if self.startedWriting:
                self.finish()
            else:
                respond.error(self, errors.internal_error())


class GatewayChannel(http.HTTPChannel):
    """
    HTTP/1.1 with a head size limit answered by 431, a deadline for the
    whole head answered by 408, and JSON instead of Twisted's bare 400.

    @ivar header_timeout: seconds from the first byte of a request to the
        end of its headers (set by L{GatewaySite.buildProtocol}).
    """

    header_timeout = 10.0
    body_timeout = 10.0
    body_min_rate = 1024
    _body_timer: Optional[Any] = None
    _body_bytes = 0
    _awaiting_head = True
    _head_bytes = 0
    _head_timer: Optional[Any] = None
    _dispatched = 0
    _refused = False
    _closing = False

    # The request head ----------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._awaiting_head and self._head_timer is None and data and not self._refused:
            self._head_timer = self.callLater(self.header_timeout, self._head_too_slow)
        elif self._body_timer is not None:
            self._body_bytes += len(data)
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> Any:
        # The same count as Twisted's own (line lengths without CRLF, reset
        # when a request is dispatched), checked first to answer 431.
        self._head_bytes += len(line)
        if self._head_bytes > self.totalHeadersSize:
            self._refuse(errors.head_too_large(self.totalHeadersSize), self._dispatched == 0)
            return None
        return super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        # One line longer than the whole head may be (MAX_LENGTH is set to
        # the head limit); only reachable while reading a head.
        self._refuse(errors.head_too_large(self.totalHeadersSize), self._dispatched == 0)

    def allHeadersReceived(self) -> None:
        self._awaiting_head = False
        self._stop_head_timer()
        request = self.requests[-1]
        screen = getattr(self.site, "screen", None)
        if screen is not None:
            endpoint = self._endpoint(request)
            refusal = screen(request, self._command, self._path,
                             getattr(endpoint, "route", "unknown"))
            if refusal is not None:
                self._refuse_unread(request, refusal,
                                    getattr(endpoint, "error_style", "openai"))
                return
        # Stopped by allContentReceived, which Twisted calls at once when
        # there is no body.
        self._body_bytes = 0
        self._body_timer = self.callLater(self.body_timeout, self._check_body_rate)
        # Only now: Twisted sizes the body buffer and answers an
        # Expect: 100-continue here.
        super().allHeadersReceived()

    def _refuse_unread(self, request: Any, err: errors.ApiError, style: str) -> None:
        """
        Answer a request refused from its head alone (401/403/429) through
        the Request, so it carries every header a Resource's answer would,
        then close: the body is never read, so the connection cannot be
        reused.
        """
        self._refused = True
        self.persistent = False
        request.content = _Discard()
        request.method = self._command
        request.uri = self._path
        request.clientproto = self._version
        request.site = self.site
        request.setHeader(b"connection", b"close")
        # requestDone (when the answer finishes) counts it out again.
        self._dispatched += 1
        respond.error(request, err, style)

    def _endpoint(self, request: Any) -> Any:
        """
        The Resource that would serve C{request} (for its route name and
        error envelope: an Anthropic route's clients expect Anthropic's
        errors), found from the request line alone.
        """
        request.method = self._command
        request.path = self._path.split(b"?", 1)[0]
        request.prepath = []
        request.postpath = [unquote_to_bytes(part) for part in request.path[1:].split(b"/")]
        try:
            return self.site.getResourceFor(request)
        except Exception:
            return None

    def loseConnection(self) -> Any:
        # Twisted's own unregisters the network producer, which raises when
        # called twice: a refusal closes, then the idle timeout fires
        # before the client let go.
        if self._closing:
            transport = self.transport
            return transport.loseConnection() if transport is not None else None
        self._closing = True
        return super().loseConnection()

    def rawDataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        self._stop_body_timer()
        if self._refused:
            return
        self._head_bytes = 0
        self._dispatched += 1
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        self._dispatched -= 1
        self._awaiting_head = True
        super().requestDone(request)

    def connectionLost(self, reason: Failure) -> None:
        self._stop_head_timer()
        self._stop_body_timer()
        super().connectionLost(reason)
        site = getattr(self, "site", None)
        if site is not None:
            site.channel_closed(self)

    # The request body --------------------------------------------------------

    def _stop_body_timer(self) -> None:
        timer, self._body_timer = self._body_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _check_body_rate(self) -> None:
        """
        Every C{body_timeout} seconds while a body is being read: a body
        that got fewer than C{body_min_rate} bytes per second over the
        period is answered 408 and its connection closed, so a trickle
        cannot hold a connection (and whatever it reserved) forever.
        """
        self._body_timer = None
        if self._refused or self.transport is None or self.transport.disconnecting:
            return
        if self._body_bytes >= self.body_min_rate * self.body_timeout:
            self._body_bytes = 0
            self._body_timer = self.callLater(self.body_timeout, self._check_body_rate)
            return
        self._refused = True
        if self._dispatched == 0:
            self.transport.write(
                self._raw_error(errors.body_too_slow(self.body_timeout, self.body_min_rate))
            )
        self.timeoutConnection()

    def _stop_head_timer(self) -> None:
        timer, self._head_timer = self._head_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._refused or self.transport is None or self.transport.disconnecting:
            return
        self._refused = True
        if self._dispatched == 0:
            self.transport.write(self._raw_error(errors.head_too_slow(self.header_timeout)))
        # Twisted's idle timeout path: close, and abort if the client does
        # not let go (a client that does not read cannot hold us).
        self.timeoutConnection()

    # Refusals --------------------------------------------------------------

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted calls this (a private method in 22.4 and 26.10 alike) for
        # every request it cannot parse; it would write a bare 400.
        answer = len(self.requests) <= 1 and not any(
            request.startedWriting for request in self.requests
        )
        self._refuse(errors.malformed_request(), answer)

    def _refuse(self, err: errors.ApiError, answer: bool) -> None:
        """
        Answer C{err} (when no other response is on its way on this
        connection) and close.
        """
        if self._refused:
            return
        self._refused = True
        self._stop_head_timer()
        self._stop_body_timer()
        transport = self.transport
        if transport is None or transport.disconnecting:
            return
        if answer:
            transport.write(self._raw_error(err))
        self.loseConnection()

    def _raw_error(self, err: errors.ApiError) -> bytes:
        """
        A complete response for C{err}, written straight to the transport
        because no Request exists (or can be trusted) at this point.
        """
        site = getattr(self, "site", None)
        return respond.raw_error(
            err, getattr(site, "response_headers", respond.DEFAULT_HEADERS)
        )


@implementer(IReconfigurable)
class GatewaySite(server.Site):
    """
    The HTTP factory: gateway requests and channels, no tracebacks, no
    Twisted access log (which would record query strings; the call
    observers log instead). Everything the web layer needs from the
    configuration is computed here once.

    @ivar max_body_bytes: request body limit, read by L{GatewayRequest}.
    @ivar max_header_bytes: request head limit, given to each channel.
    @ivar header_timeout: request head deadline, given to each channel.
    @ivar body_timeout: request body check period, given to each channel.
    @ivar body_min_rate: request body bytes per second, given to each
        channel.
    @ivar response_headers: the security headers of every response.
    @ivar cors: the L{CorsPolicy} of C{response.cors_origins}.
    @ivar strip_tree: the compiled C{response.strip_fields}.
    """

    protocol = GatewayChannel
    displayTracebacks = False
    noisy = False

    #: What L{reconfigure} derives the site's limits and headers from.
    uses = ("limits.max_body_bytes", "limits.max_header_bytes", "limits.header_timeout",
            "limits.body_timeout", "limits.body_min_rate", "response")

    def __init__(self, root: object, config: Any, reactor: object = None,
                 screen: Any = None) -> None:
        kwargs: dict = {}
        if reactor is not None:
            kwargs["reactor"] = reactor
        if _FORM_SWITCH:
            kwargs["parsePOSTFormSubmission"] = False
        super().__init__(
            root, requestFactory=GatewayRequest, timeout=KEEPALIVE_TIMEOUT, **kwargs
        )
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self._clock = reactor
        #: Open client connections (to flush and close them at shutdown).
        self.channels: set = set()
        self._all_closed: list = []
        #: The head-only gate (L{qwen_twist.web.screen.HeadScreen}), or
        #: L{None}: called with C{(request, method, path)} once the headers
        #: are parsed, before any body byte is read.
        self.screen = screen
        self.reconfigure(config)

    def reconfigure(self, config: Any) -> None:
        """
        Body and head limits, security headers, CORS and field stripping
        for requests read from now on (a request being read keeps its own).
        """
        self.config = config
        limits = config.limits
        self.max_body_bytes = limits.max_body_bytes
        self.max_header_bytes = limits.max_header_bytes
        self.header_timeout = limits.header_timeout
        self.body_timeout = limits.body_timeout
        self.body_min_rate = limits.body_min_rate
        response = config.response
        self.response_headers = hygiene.security_headers(response.hsts_max_age)
        self.cors = CorsPolicy(response.cors_origins)
        self.strip_tree = hygiene.compile_strip(response.strip_fields)

    def buildProtocol(self, addr: object) -> Any:
        channel = super().buildProtocol(addr)
        self.channels.add(channel)
        channel.totalHeadersSize = self.max_header_bytes
        channel.MAX_LENGTH = self.max_header_bytes
        channel.header_timeout = self.header_timeout
        channel.body_timeout = self.body_timeout
        channel.body_min_rate = self.body_min_rate
        return channel

    def channel_closed(self, channel: Any) -> None:
        self.channels.discard(channel)
        if not self.channels:
            waiting, self._all_closed = self._all_closed, []
            for d in waiting:
                d.callback(None)

    def close_connections(self, timeout: float) -> "defer.Deferred[None]":
        """
        Shutdown, after the drain: close every client connection once what
        was written to it has left the process, and fire when all are
        closed (or after C{timeout} seconds, aborting the rest).

        Why wait for the close: a response that is complete from the
        pipeline's point of view may still sit in the TLS and transport
        buffers of a slow client; stopping the reactor then would cut the
        last tokens, the finish chunk and C{[DONE]}. C{loseConnection}
        writes everything buffered (and TLS's close_notify) before closing.
        """
        if not self.channels:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._all_closed.append(d)
        for channel in list(self.channels):
            channel.loseConnection()

        def abort() -> None:
            for channel in list(self.channels):
                transport = channel.transport
                if transport is not None:
                    transport.abortConnection()
            if not d.called:
                d.callback(None)

        timer = self._clock.callLater(timeout, abort)
        d.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
        return d

    def acceptableProtocols(self) -> list:
        """
        HTTP/1.1 only: the channel above is an HTTP/1.1 channel, so ALPN
        must never settle on h2, even where the h2 package is installed.
        """
        return [b"http/1.1"]

    def log(self, request: object) -> None:
        pass
