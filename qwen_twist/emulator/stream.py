# -*- test-case-name: tests.emulator.test_server -*-
"""
How an answer reaches the client: at once, later, or as a paced NDJSON
stream, and how the scripted faults break each of those.

It is built to be cheap, because the gateway benchmark puts hundreds of
concurrent streams through the emulator on two shared cores: a stream is
one L{Stream} object with at most one pending timer; each tick writes every
line that is due in one C{write}; line bodies are pre-encoded (see
L{qwen_twist.emulator.answer}); the stream registers as a push producer on
the request, so when the client stops reading, generation stops too
(Ollama's writer blocks the same way) and resumes on C{resumeProducing}. A
client disconnect cancels the timer at once.

All timing goes through the injected reactor (C{seconds}, C{callLater}), so
unit tests drive it with a L{twisted.internet.task.Clock}.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Protocol

from zope.interface import implementer

from twisted.internet.interfaces import IPushProducer
from twisted.web.server import NOT_DONE_YET

from qwen_twist.emulator.record import Record
from qwen_twist.emulator.script import Behaviour
from qwen_twist.emulator.wire import JSON_TYPE, NDJSON_TYPE, Stamp, error_body

__all__ = ["GARBAGE_LINE", "Delayed", "Stream", "early_fault", "later", "reply", "respond"]

#: What C{invalid_json_after} sends instead of a line.
GARBAGE_LINE = b'{"model":"emulator","created_at":<this is not JSON\n'

#: Chunks due within this many seconds of now go out now: float sums of
#: clock steps must not push a chunk to the next tick.
_EPSILON = 1e-9


class Host(Protocol):
    """
    What answers need from the emulator: its clock, its record and its
    timestamp writer.
    """

    reactor: Any
    record: Record
    stamp: Stamp


def reply(request: Any, status: int, body: bytes, content_type: bytes = JSON_TYPE) -> bytes:
    """
    Answer from C{render}: set the status and type, return the body.
    """
    request.setResponseCode(status)
    request.setHeader(b"content-type", content_type)
    return body


def respond(request: Any, status: int, body: bytes, content_type: bytes = JSON_TYPE) -> None:
    """
    Answer a request that C{render} left open (C{NOT_DONE_YET}).
    """
    request.setResponseCode(status)
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-length", b"%d" % (len(body),))
    request.write(body)
    request.finish()


class _Pending:
    """
    An answer with at most one timer pending on the host's reactor, which
    a client disconnect must cancel at once.
    """

    def __init__(self, host: Host, request: Any) -> None:
        self._reactor = host.reactor
        self._record = host.record
        self._request = request
        self._timer: Any = None

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


_ACTIVE, _HUNG, _DONE = "active", "hung", "done"


@implementer(IPushProducer)
class Stream(_Pending):
    """
    One NDJSON response in progress.

    Chunk C{i} is due at C{t0 + i / tokens_per_second}, where C{t0} is the
    arrival time plus C{ttft} (shifted by the time spent paused). Each tick
    writes all lines due by now in one C{write} and schedules one timer for
    the next; the C{done} line follows the last chunk immediately. The
    headers go out with the first line, as Ollama's do.
    """

    def __init__(self, host: Host, request: Any, head: bytes, tails: List[bytes],
                 final: Callable[[float], bytes], behaviour: Behaviour,
                 started: float) -> None:
        super().__init__(host, request)
        self._stamp = host.stamp
        self._head = head
        self._tails = tails
        self._n = len(tails)
        self._final = final
        self._fault = behaviour.fault
        self._stop_at = self._fault.after if self._fault is not None else None
        tps = behaviour.tokens_per_second
        self._interval = 1.0 / tps if tps > 0 else 0.0
        self._t0 = started + behaviour.ttft
        self._i = 0
        self._paused_at: Optional[float] = None
        self._state = _ACTIVE

    def start(self) -> Any:
        request = self._request
        request.setHeader(b"content-type", NDJSON_TYPE)
        self._record.stream_started()
        request.notifyFinish().addErrback(self._lost)
        request.registerProducer(self, True)
        self._tick()
        return NOT_DONE_YET

    def _due(self, i: int) -> float:
        last = self._n - 1
        return self._t0 + (min(i, last) * self._interval if last > 0 else 0.0)

    def _tick(self) -> None:
        self._timer = None
        if self._state is not _ACTIVE or self._paused_at is not None:
            return
        now = self._reactor.seconds() + _EPSILON
        i, n, t0, interval, stop_at = self._i, self._n, self._t0, self._interval, self._stop_at
        tails = self._tails
        batch = []
        prefix = b""
        while i < n and i != stop_at and t0 + i * interval <= now:
            if not prefix:
                prefix = self._head + self._stamp(now)
            batch.append(prefix + tails[i])
            i += 1
        self._i = i
        if batch:
            # May pause us (transport buffer full) or find the client gone.
            self._request.write(b"".join(batch))
            if self._state is not _ACTIVE or self._paused_at is not None:
                return
        due = self._due(i)
        if due > now:
            self._timer = self._reactor.callLater(due - now, self._tick)
        elif stop_at is not None and i >= min(stop_at, n):
            self._strike()
        else:
            self._finish(now)

    def _finish(self, now: float) -> None:
        self._state = _DONE
        request = self._request
        request.write(self._final(now))
        request.unregisterProducer()
        request.finish()
        self._record.stream_completed()

    def _strike(self) -> None:
        fault = self._fault
        assert fault is not None
        request = self._request
        self._record.fault_struck()
        request.write(b"")  # the headers, if no line went out yet
        if fault.kind == "hang_after":
            # Keep the connection open and send nothing more; the client
            # leaving ends it (counted as abandoned).
            self._state = _HUNG
            return
        self._state = _DONE
        self._record.stream_faulted()
        if fault.kind == "close_after":
            # Mid-body close: no terminating chunk, no done line.
            request.channel.transport.loseConnection()
            return
        if fault.kind == "invalid_json_after":
            request.write(GARBAGE_LINE)
        else:
            request.write(error_body(fault.error) + b"\n")
        request.unregisterProducer()
        request.finish()

    def _lost(self, reason: Any = None) -> None:
        if self._state is _DONE:
            return
        self._state = _DONE
        self._stop_timer()
        self._record.stream_abandoned()

    # IPushProducer

    def pauseProducing(self) -> None:
        if self._state is not _ACTIVE or self._paused_at is not None:
            return
        self._paused_at = self._reactor.seconds()
        self._record.paused()
        self._stop_timer()

    def resumeProducing(self) -> None:
        if self._paused_at is None:
            return
        self._t0 += self._reactor.seconds() - self._paused_at
        self._paused_at = None
        self._tick()

    def stopProducing(self) -> None:
        self._lost()


class Delayed(_Pending):
    """
    A single answer due later (a non-streaming generation, a slow embedding,
    a delayed error), or never (C{hang_before_headers}). A client disconnect
    cancels it.
    """

    def __init__(self, host: Host, request: Any, delay: Optional[float],
                 deliver: Callable[[], None]) -> None:
        super().__init__(host, request)
        self._delay = delay
        self._deliver = deliver
        self._done = False

    def start(self) -> Any:
        self._request.notifyFinish().addErrback(self._lost)
        if self._delay is not None:
            self._timer = self._reactor.callLater(self._delay, self._fire)
        return NOT_DONE_YET

    def _fire(self) -> None:
        self._timer = None
        self._done = True
        self._deliver()

    def _lost(self, reason: Any) -> None:
        if self._done:
            return
        self._done = True
        self._stop_timer()
        self._record.request_abandoned()


def _never() -> None:
    pass


def early_fault(host: Host, request: Any, behaviour: Behaviour) -> Any:
    """
    Faults that strike before any generation: never answering, or an
    HTTP error (after C{ttft}).

    @return: what C{render} returns, or L{None} when no such fault is
        scripted and generation should go ahead.
    """
    fault = behaviour.fault
    if fault is None or fault.kind not in ("hang_before_headers", "http_status"):
        return None
    host.record.fault_struck()
    if fault.kind == "hang_before_headers":
        return Delayed(host, request, None, _never).start()
    body = error_body(fault.error)
    if behaviour.ttft <= 0:
        return reply(request, fault.status, body)
    return Delayed(host, request, behaviour.ttft,
                   lambda: respond(request, fault.status, body)).start()


def later(host: Host, request: Any, behaviour: Behaviour, count: int,
          body: Callable[[], bytes]) -> Any:
    """
    A one-object answer (non-streaming generation, embeddings) after the
    time generating C{count} chunks takes, or the C{*_after} fault's
    equivalent: hang, drop the connection, garbage, or a 500.

    @param body: makes the answer when it is due (its durations depend on
        when that is).
    @return: what C{render} returns.
    """
    tps = behaviour.tokens_per_second
    fault = behaviour.fault
    chunks = count
    if fault is not None:
        chunks = min(fault.after, count)
    delay = behaviour.ttft + (max(chunks - 1, 0) / tps if tps > 0 else 0.0)
    if fault is None:
        if delay <= 0:
            return reply(request, 200, body())
        return Delayed(host, request, delay, lambda: respond(request, 200, body())).start()
    if fault.kind == "hang_after":
        host.record.fault_struck()
        return Delayed(host, request, None, _never).start()

    def strike() -> None:
        host.record.fault_struck()
        if fault.kind == "close_after":
            request.channel.transport.loseConnection()
        elif fault.kind == "invalid_json_after":
            respond(request, 200, GARBAGE_LINE)
        else:
            respond(request, 500, error_body(fault.error))

    return Delayed(host, request, delay, strike).start()
