# -*- test-case-name: tests.upstream.test_breaker -*-
"""
Circuit breakers: a dead Ollama must cost clients milliseconds, not timeouts.

Without a breaker every request to an upstream that is down or hung waits for
the connect or headers deadline (seconds each) before it fails, holding a
client, a slot and a socket the whole time. A L{CircuitBreaker} remembers that
the last C{threshold} calls failed and, for a C{cooldown}, refuses new ones at
once with L{BreakerOpen} (the gateway answers 503 with C{Retry-After} equal to
the cool-down left; L{BreakerOpen.api_error}) without touching the upstream:

    closed --threshold consecutive failures--> open
    open --cooldown elapsed--> half_open
    half_open --one probe succeeds--> closed
    half_open --the probe fails--> open (a fresh cool-down)

In C{half_open} exactly one request at a time goes through as a probe; the
others are refused (C{retry_after} L{PROBE_RETRY_AFTER}) until it settles.

What is judged: connection errors and the time to response B{headers}
(L{counts_as_failure}). Model loading is not a failure: Ollama sends its
headers at once and may then take minutes before the first token while it
loads a model. That wait is judged by the first-token deadline elsewhere; the
caller reports L{CircuitBreaker.success} as soon as headers with a status
below 500 arrive (L{CircuitBreaker.call} does exactly that when its C{start}
Deferred is the one that fires with the response headers). A client that went
away (cancellation) or a 4xx (unknown model, bad request) says nothing about
Ollama's health and is L{neutral<CircuitBreaker.neutral>}.

Concurrency: outcomes arriving late are not mistaken for the probe's. Every
state change starts a new epoch; a call admitted through L{CircuitBreaker.call}
carries the epoch it was admitted in, and its outcome is ignored once the
breaker has moved on (say a request admitted while closed that times out 30 s
later, after the breaker opened and went half-open: it must neither re-open
the breaker nor free the probe slot). The token-less L{before_call},
L{success}, L{failure} and L{neutral} cannot tell, and apply to the current
state.

The state machine is pure: time comes from an injected clock (anything with
C{seconds()}, e.g. the reactor or L{twisted.internet.task.Clock}), no timers
are scheduled, and C{open} becomes C{half_open} when the breaker is next
looked at after the cool-down (so C{on_transition} reports it then). Only
L{CircuitBreaker.call} and L{counts_as_failure} know about Deferreds and
Twisted's failure types.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.python.failure import Failure

from qwen_twist import errors

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

#: C{retry_after} for a request refused because the half-open probe is still
#: running: the probe settles within one headers deadline, often far sooner.
PROBE_RETRY_AFTER = 1.0

_SUCCESS = 0
_FAILURE = 1
_NEUTRAL = 2

# (epoch, is_probe) of an admitted call.
_Ticket = Tuple[int, bool]


class BreakerOpen(Exception):
    """
    A call was refused without trying because the breaker is open (or its
    half-open probe is still out).

    @ivar retry_after: seconds until a call may be admitted again.
    @ivar name: the breaker's name (which upstream).
    """

    def __init__(self, retry_after: float, name: str = "") -> None:
        super().__init__(retry_after, name)
        self.retry_after = retry_after
        self.name = name

    def __str__(self) -> str:
        return "circuit breaker %s open; retry after %.3f s" % (self.name, self.retry_after)

    def api_error(self) -> errors.ApiError:
        """
        The client's answer: 503 with C{Retry-After}.
        """
        return errors.breaker_open(self.name, self.retry_after)


_failure_types: Optional[Tuple[type, ...]] = None
_wrapper_types: Optional[Tuple[type, ...]] = None


def _load_failure_types() -> None:
    """
    Import the failure types lazily: L{qwen_twist.upstream.client} may import this
    module to wrap its requests, and importing it back at module level would
    be a cycle.
    """
    global _failure_types, _wrapper_types
    from twisted.internet import defer, error
    from twisted.web import client

    from qwen_twist.upstream.client import UpstreamTimeout

    # ResponseFailed (and ResponseNeverReceived, its subclass) and
    # RequestTransmissionFailed wrap the real reasons; cancelling an Agent
    # request produces them wrapping CancelledError (style guide 1.7).
    _wrapper_types = (client.ResponseFailed, client.RequestTransmissionFailed)
    _failure_types = (
        UpstreamTimeout,
        defer.TimeoutError,
        error.ConnectError,  # refused, connect timeout, no route, ...
        error.DNSLookupError,
        error.ConnectionClosed,  # lost, reset, closed before answering
        client.RequestNotSent,
        ConnectionError,
        TimeoutError,
    ) + _wrapper_types


def counts_as_failure(failure: Failure) -> bool:
    """
    Whether a failed upstream call says the upstream is unhealthy.

    Yes: connection refused/reset/lost, DNS, connect timeout,
    L{qwen_twist.upstream.client.UpstreamTimeout} (headers deadline),
    C{ResponseNeverReceived}/C{ResponseFailed}, and an
    L{errors.ApiError} of status 500, 502, 504 or above (an upstream 5xx or
    the gateway's mapping of one of the above).

    No: C{CancelledError} and Agent failures that only wrap one (the client
    went away), 4xx (unknown model, bad request), L{BreakerOpen}, anything
    else (a gateway bug says nothing about Ollama), and two 5xx that do not
    mean "down": 503, which is Ollama's "queue full" (alive and answering in
    milliseconds; opening would turn a saturated upstream into a refusing
    one), and the gateway's own C{internal_error}.
    """
    value = failure.value
    if isinstance(value, errors.ApiError):
        return (
            value.status >= 500
            and value.status != 503
            and value.code != errors.INTERNAL_ERROR
        )
    if _failure_types is None:
        _load_failure_types()
    if not isinstance(value, _failure_types):
        return False
    if isinstance(value, _wrapper_types):
        reasons = getattr(value, "reasons", None) or ()
        return not reasons or not all(r.check(CancelledError) for r in reasons)
    return True


class CircuitBreaker:
    """
    One upstream's breaker: closed -> open after C{threshold} consecutive
    failures -> half_open after C{cooldown} s, letting ONE probe through ->
    closed on its success / open again (fresh cool-down) on its failure.

    @ivar name: which upstream (for L{BreakerOpen} and C{on_transition}).
    """

    def __init__(
        self,
        name: str,
        threshold: int,
        cooldown: float,
        clock: Any,
        on_transition: Optional[Callable[[str, str, str], Any]] = None,
    ) -> None:
        """
        @param threshold: consecutive failures that open the breaker; C{0}
            means it never opens.
        @param cooldown: seconds an open breaker refuses calls before it lets
            a probe through.
        @param clock: provides C{seconds()} (the reactor, or a C{Clock}).
        @param on_transition: called as C{on_transition(name, old, new)} after
            every state change, in order (metrics, logging). It must not
            raise.
        """
        self.name = name
        self._threshold = threshold
        self._cooldown = cooldown
        self._clock = clock
        self._on_transition = on_transition
        self._state = CLOSED
        self._failures = 0
        self._reopen_at = 0.0
        self._probing = False
        self._epoch = 0

    @property
    def state(self) -> str:
        """
        C{"closed"}, C{"open"} or C{"half_open"}; an open breaker whose
        cool-down has passed is C{"half_open"}.
        """
        self._sync(self._clock.seconds())
        return self._state

    def _sync(self, now: float) -> None:
        if self._state == OPEN and now >= self._reopen_at:
            self._transition(HALF_OPEN)

    def _transition(self, new: str) -> None:
        old = self._state
        self._state = new
        self._epoch += 1
        self._probing = False
        self._failures = 0
        if self._on_transition is not None:
            self._on_transition(self.name, old, new)

    def _open(self, now: float) -> None:
        self._reopen_at = now + self._cooldown
        self._transition(OPEN)

    def _admit(self) -> _Ticket:
        now = self._clock.seconds()
        self._sync(now)
        state = self._state
        if state == CLOSED:
            return (self._epoch, False)
        if state == OPEN:
            raise BreakerOpen(self._reopen_at - now, self.name)
        if self._probing:
            raise BreakerOpen(PROBE_RETRY_AFTER, self.name)
        self._probing = True
        return (self._epoch, True)

    def _settle(self, ticket: Optional[_Ticket], outcome: int) -> None:
        now = self._clock.seconds()
        self._sync(now)
        if ticket is not None and ticket[0] != self._epoch:
            return  # admitted under an earlier state: stale news
        state = self._state
        if state == OPEN:
            return  # a straggler; the cool-down stands
        if outcome == _SUCCESS:
            if state == HALF_OPEN:
                self._transition(CLOSED)
            else:
                self._failures = 0
        elif outcome == _FAILURE:
            if state == HALF_OPEN:
                self._open(now)
            else:
                self._failures += 1
                if self._threshold and self._failures >= self._threshold:
                    self._open(now)
        elif state == HALF_OPEN:
            self._probing = False

    def before_call(self) -> None:
        """
        Admit a call or refuse it fast.

        @raise BreakerOpen: while open (C{retry_after} is the cool-down
            left), or while half-open with the probe still out.
        """
        self._admit()

    def success(self) -> None:
        """
        The upstream answered (headers below 500): reset the failure count;
        a half-open probe closes the breaker.
        """
        self._settle(None, _SUCCESS)

    def failure(self) -> None:
        """
        The upstream failed (L{counts_as_failure}): count it; the
        C{threshold}th in a row, or a half-open probe's, opens the breaker.
        """
        self._settle(None, _FAILURE)

    def neutral(self) -> None:
        """
        The call ended without saying anything about upstream health (client
        cancelled, a 4xx): release a half-open probe slot, nothing else.
        """
        self._settle(None, _NEUTRAL)

    def call(
        self,
        start: Callable[[], Deferred],
        is_failure: Callable[[Failure], bool] = counts_as_failure,
    ) -> Deferred:
        """
        Run C{start()} through the breaker.

        Refused calls fail at once with L{BreakerOpen} and C{start} is not
        called. Otherwise the result of C{start()}'s Deferred is passed on and
        judged: a result is a success, a failure is one when C{is_failure}
        says so and neutral otherwise. C{start}'s Deferred should fire when
        the response B{headers} arrive (L{qwen_twist.upstream.client.OllamaClient.send}),
        and errback for a status of 500 or more, since a response is a
        success whatever its status.

        Cancelling the returned Deferred cancels C{start}'s, counts as
        neutral (a client that went away says nothing about Ollama), and
        fails the returned Deferred with C{CancelledError} whatever C{start}'s
        canceller produced. A result that arrives after cancellation is
        dropped.
        """
        try:
            ticket = self._admit()
        except BreakerOpen:
            return fail()
        try:
            inner = start()
        except Exception:
            f = Failure()
            self._settle(ticket, _FAILURE if is_failure(f) else _NEUTRAL)
            return fail(f)
        cancelled = False

        def cancel(outer: Deferred) -> None:
            nonlocal cancelled
            cancelled = True
            inner.cancel()

        outer: Deferred = Deferred(cancel)

        def settle(result: Any) -> None:
            if cancelled:
                self._settle(ticket, _NEUTRAL)
                # outer.cancel() fails outer with CancelledError itself.
                return None
            if isinstance(result, Failure):
                self._settle(ticket, _FAILURE if is_failure(result) else _NEUTRAL)
                outer.errback(result)
            else:
                self._settle(ticket, _SUCCESS)
                outer.callback(result)
            return None

        inner.addBoth(settle)
        return outer
