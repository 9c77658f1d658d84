# -*- test-case-name: tests.web.test_relay -*-
"""
Relaying an Ollama NDJSON stream to a client as server-sent events, with
backpressure, keep-alives, deadlines and cancellation.

The pieces, and why each exists:

  - L{SseResponse} owns the client side: when the SSE headers are committed,
    the C{: keep-alive} comments (so Nginx's C{proxy_read_timeout}, load
    balancers and browsers do not cut a connection while a 32B model loads
    or thinks), and finishing exactly once.
  - L{UpstreamRelay} is the C{IProtocol} given to C{response.deliverBody}.
    Its transport is the upstream socket's producer, which it registers as a
    streaming producer on the client's request: when the client reads slowly
    and the client socket's buffer fills, Twisted pauses the upstream socket
    and the gateway stops reading from Ollama. So memory per stream is
    bounded (see L{UpstreamRelay}) however slowly the client reads.
  - Every byte goes through a pure translator
    (L{qwen_twist.translate.stream}), which decides the SSE events.
  - A stream that completed (C{done: true}) reads Ollama's body to its end,
    so the connection goes back to the pool; a stream that failed, was cut
    or whose client left closes it (which is also how Ollama learns to stop
    generating). Closing after every stream cost a TCP connection per
    request and, under churn, refused connections (issue 10).

Why headers are not sent at once: an upstream error before the first byte
(unknown model, a capability error) must reach the client as a normal JSON
error with its status, which is impossible once a 200 event stream has
begun. So the gateway waits for Ollama's response headers, but at most one
keep-alive interval; past that it commits to the stream (200, SSE headers, a
keep-alive comment) and any later failure becomes an SSE error event.
A stream that fails never ends with C{[DONE]}.

Why a slow-reader deadline: backpressure bounds the memory of a stream
whose client reads nothing, but not its time, and the stream holds a GPU
slot all along (Twisted turns the connection's idle timeout off while a
response is written, and the upstream idle timer is far too long to be
this bound). So while the client keeps the upstream paused, a timer runs
(C{streaming.slow_reader_timeout}); when it expires the stream is cut: the
upstream request is stopped, the client connection aborted and the call
ends with outcome C{truncated} and code C{slow_reader}, freeing the slot.
Any resume (the client read something) stops the timer.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import client as wclient

from qwen_twist.errors import SLOW_READER
from qwen_twist.translate import sse
from qwen_twist.web import hygiene, respond

#: Seconds the rest of a complete stream's upstream body (after
#: C{done: true}) may take before its connection is closed instead of
#: pooled; Ollama sends it at once.
DRAIN_TIMEOUT = 5.0

SSE_HEADERS = (
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-cache"),
    # Nginx buffers proxied responses unless told otherwise per response.
    ("X-Accel-Buffering", "no"),
)


class SseResponse:
    """
    The client half of a stream: headers, keep-alives, writes, finish.

    @ivar committed: whether the 200 and SSE headers were sent.
    @ivar written: count of writes since the last keep-alive tick.
    """

    #: The response headers of the stream.
    headers = SSE_HEADERS

    def __init__(self, request: Any, clock: Any, keepalive_interval: float,
                 keepalive: bytes = sse.KEEPALIVE) -> None:
        """
        @param keepalive: what an idle interval sends: a comment by default;
            Anthropic's streams send their C{ping} event instead.
        """
        self.request = request
        self.keepalive = keepalive
        self.clock = clock
        self.interval = keepalive_interval
        self.committed = False
        self.closed = False
        self._activity = True
        #: C{response.strip_fields}, applied to events only when configured
        #: (it costs a JSON round trip per event).
        self._strip = getattr(respond.site_of(request), "strip_tree", None) or None
        self._timer: Optional[Any] = None
        self.on_commit: Optional[Any] = None

    def start_keepalive(self) -> None:
        """
        Start the keep-alive clock (call when the upstream request starts).
        """
        if self.interval > 0:
            self._activity = False
            self._timer = self.clock.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.closed or respond.is_gone(self.request):
            return
        if not self._activity:
            self.commit()
            self.request.write(self.next_keepalive())
        self._activity = False
        self._timer = self.clock.callLater(self.interval, self._tick)

    def next_keepalive(self) -> bytes:
        """
        What this idle interval sends (C{keepalive}; a stream whose
        keep-alive carries a timestamp makes a fresh one).
        """
        return self.keepalive

    def commit(self) -> None:
        """
        Send the status and SSE headers (once).
        """
        if self.committed:
            return
        self.committed = True
        respond.start(self.request, 200, self.headers)
        if self.on_commit is not None:
            self.on_commit()

    def write(self, data: bytes) -> None:
        if data and not self.closed:
            self._activity = True
            if self._strip is not None:
                data = hygiene.strip_sse(data, self._strip)
            self.request.write(data)

    def close(self, finish: bool = True) -> None:
        """
        Stop the clock and end the response (if the client is still there;
        C{finish=False} when it is known to be gone).
        """
        if self.closed:
            return
        self.closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if finish:
            respond.finish(self.request)


class UpstreamRelay(Protocol):
    """
    Receives the upstream body and writes translated events to the client.

    Memory bound per stream: while the client is not reading, the gateway
    holds at most the client transport's write buffer up to its pause
    threshold (64 KiB) plus the translation of the one upstream read that
    was in flight when the pause came (a read is at most 64 KiB; SSE framing
    of tiny token lines at most triples it), plus one incomplete NDJSON line
    (at most C{streaming.max_line_bytes}, which only a pathological upstream
    reaches). Typical worst case: well under 1 MiB.

    @ivar done: fires (with None) when the stream is over for any reason;
        cancelling it aborts the upstream connection.
    """

    log = Logger()

    def __init__(self, response: SseResponse, translator: Any, clock: Any,
                 idle_timeout: float, total_timeout: float = 0.0,
                 first_token_timeout: float = 0.0,
                 slow_reader_timeout: float = 0.0) -> None:
        self.response = response
        self.translator = translator
        self.clock = clock
        self.idle_timeout = idle_timeout
        #: Until the first body byte (when headers came early) the deadline
        #: is the first-token one; after, the idle gap.
        self.first_token_timeout = first_token_timeout or idle_timeout
        self._got_data = False
        self.total_timeout = total_timeout
        self.done: defer.Deferred = defer.Deferred(self._cancelled)
        self._registered = False
        self._last_data = 0.0
        self._idle_call: Optional[Any] = None
        self._total_call: Optional[Any] = None
        self.slow_reader_timeout = slow_reader_timeout
        self._slow_call: Optional[Any] = None
        #: Why the gateway cut the stream (C{"slow_reader"}), or L{None}.
        self.cut: Optional[str] = None
        self._drain_call: Optional[Any] = None
        self.pauses = 0
        #: Called with the seconds since the previous upstream read, for
        #: each read after the first (the inter-token gap metric).
        self.on_gap: Optional[Any] = None
        #: The call's request id, for log lines.
        self.request_id: Optional[str] = None

    # IProtocol ----------------------------------------------------------

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        request = self.response.request
        if not respond.is_gone(request):
            request.registerProducer(_CountingProducer(transport, self), True)
            self._registered = True
        self._last_data = self.clock.seconds()
        if self.idle_timeout > 0:
            self._idle_call = self.clock.callLater(self.first_token_timeout, self._check_idle)
        if self.total_timeout > 0:
            self._total_call = self.clock.callLater(
                self.total_timeout, self._expire, "upstream exceeded the total time limit"
            )

    def dataReceived(self, data: bytes) -> None:
        translator = self.translator
        if translator.finished:
            return
        now = self.clock.seconds()
        if self._got_data and self.on_gap is not None:
            self.on_gap(now - self._last_data)
        self._last_data = now
        if not self._got_data:
            self._got_data = True
            if self._idle_call is not None and self._idle_call.active():
                # From now on the (shorter) idle deadline applies.
                self._idle_call.reset(self.idle_timeout)
        out = translator.feed(data)
        if out:
            self.response.write(out)
        if translator.finished:
            if translator.outcome == "complete":
                # done:true: the client's answer is complete; read the rest
                # of Ollama's body (the chunked terminator, usually in the
                # same read) so its connection goes back to the pool.
                self._end()
                self._drain()
            else:
                # An error event: stop reading whatever else comes.
                self._stop_upstream()
                self._end()

    def _drain(self) -> None:
        transport = getattr(self, "transport", None)
        if transport is None:
            return
        # No longer the client's producer: a pause the client's buffer
        # asked for must not hold the upstream body open.
        transport.resumeProducing()
        if self._drain_call is None and self.transport is not None:
            self._drain_call = self.clock.callLater(DRAIN_TIMEOUT, self._stop_upstream)

    def connectionLost(self, reason: Failure = None) -> None:
        if self._drain_call is not None:
            if self._drain_call.active():
                self._drain_call.cancel()
            self._drain_call = None
        self.transport = None
        if not self.translator.finished:
            # ResponseDone is a clean end of body; anything else (reset,
            # PotentialDataLoss, ResponseFailed) is a cut, which the
            # translator reports unless it already saw done:true.
            self.response.write(self.translator.end())
            if reason is not None and not reason.check(wclient.ResponseDone):
                self.log.info("upstream stream ended abnormally (request {request_id}): {why}",
                              request_id=self.request_id,
                              why=reason.getErrorMessage())
        self._end()

    # Deadlines and cancellation ------------------------------------------

    def _check_idle(self) -> None:
        self._idle_call = None
        if self.translator.finished:
            return
        limit = self.idle_timeout if self._got_data else self.first_token_timeout
        remaining = self._last_data + limit - self.clock.seconds()
        if remaining > 0:
            self._idle_call = self.clock.callLater(remaining, self._check_idle)
            return
        what = "no data for" if self._got_data else "no first token within"
        self._expire("upstream timeout: %s %g s" % (what, limit))

    def _expire(self, message: str, code: str = "upstream_timeout") -> None:
        if self.translator.finished:
            return
        self.response.write(self.translator.fail(message, code=code))
        self._stop_upstream()
        self._end()

    def paused(self) -> None:
        """
        The client stopped reading (its socket buffer is full): start the
        slow-reader deadline.
        """
        self.pauses += 1
        if self.slow_reader_timeout > 0 and self._slow_call is None and not self.done.called:
            self._slow_call = self.clock.callLater(self.slow_reader_timeout, self._slow_reader)

    def resumed(self) -> None:
        """
        The client read again: stop the deadline.
        """
        call, self._slow_call = self._slow_call, None
        if call is not None and call.active():
            call.cancel()

    def _slow_reader(self) -> None:
        # Nothing can be told to a client that reads nothing: stop Ollama,
        # end the call (freeing its slot), then drop the connection.
        self._slow_call = None
        if self.done.called:
            return
        self.cut = SLOW_READER
        self.log.info("cutting a stream whose client read nothing for {seconds} s",
                      seconds=self.slow_reader_timeout)
        self.response.close(finish=False)
        self._stop_upstream()
        self._end(notify=True)
        request = self.response.request
        channel = getattr(request, "channel", None)
        if channel is not None and not respond.is_gone(request):
            channel.forceAbortClient()

    def abort(self, message: str) -> None:
        """
        End the stream now with an error event (shutdown ran out of time):
        the client must not mistake the cut answer for a complete one.
        """
        self._expire(message, code="shutting_down")

    def _cancelled(self, d: defer.Deferred) -> None:
        # The client went away: stop Ollama generating, write nothing.
        self.response.close(finish=False)
        self._stop_upstream()
        self._end(notify=False)

    def _stop_upstream(self) -> None:
        transport = getattr(self, "transport", None)
        if transport is not None:
            self.transport = None
            transport.stopProducing()

    def _end(self, notify: bool = True) -> None:
        for name in ("_idle_call", "_total_call", "_slow_call"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)
        if self._registered:
            self._registered = False
            request = self.response.request
            if not respond.is_gone(request):
                request.unregisterProducer()
        self.response.close()
        if notify and not self.done.called:
            self.done.callback(None)


class _CountingProducer:
    """
    The upstream transport's producer as registered on the client request,
    telling the relay of pauses (a backpressure metric, and the slow-reader
    deadline) on the way through.
    """

    def __init__(self, producer: Any, relay: UpstreamRelay) -> None:
        self._producer = producer
        self._relay = relay

    def pauseProducing(self) -> None:
        self._relay.paused()
        self._producer.pauseProducing()

    def resumeProducing(self) -> None:
        self._relay.resumed()
        self._producer.resumeProducing()

    def stopProducing(self) -> None:
        self._producer.stopProducing()
