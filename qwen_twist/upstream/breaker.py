# -*- test-case-name: tests.upstream.test_breaker -*-
"""
Circuit breakers: a dead Ollama must cost clients milliseconds, not timeouts.

Without a breaker every request to an upstream that is down or hung waits for
the connect or headers deadline (seconds each) before it fails, holding a
client, a slot and a socket the whole time. A L{CircuitBreaker} remembers
that calls have been failing and, for a C{cooldown}, refuses new ones at once
with L{BreakerOpen} (the gateway answers 503 with C{Retry-After} equal to the
cool-down left; L{BreakerOpen.api_error}) without touching the upstream:

    closed --failure rate or spread-out consecutive failures--> open
    open --cooldown elapsed--> half_open
    half_open --one probe succeeds--> closed
    half_open --the probe fails--> open (a fresh cool-down)

When it opens (issue 10: never on one transient event under load):

  - B{rate}: within the last C{window} seconds at least C{min_calls} calls
    were judged, and at least C{failure_rate} of them failed. A busy gateway
    whose Ollama died opens within C{min_calls} calls (milliseconds); ten
    failures among a hundred concurrent calls do not.
  - B{consecutive}: C{threshold} failures with no success in between, each
    at least C{burst} seconds after the previous one counted. A quiet
    gateway (too few calls for the rate) still opens on a dead Ollama within
    C{threshold * burst} seconds and a few calls, but a burst of concurrent
    calls failing at one instant (a reset of many pooled connections) counts
    once.

In C{half_open} exactly one request at a time goes through as a probe; the
others are refused (C{retry_after} L{PROBE_RETRY_AFTER}) until it settles.

What is judged is decided by L{qwen_twist.upstream.failures.health}: only
failures that say the upstream is unhealthy (transport errors, deadlines,
runner crashes) count; a client that went away, a 4xx, Ollama's 503 "queue
full" or a 500 caused by the request's own options are neutral. Model
loading is not a failure: Ollama sends its headers at once and may then take
minutes before the first token while it loads a model; the caller reports a
success as soon as headers arrive.

Concurrency: outcomes arriving late are not mistaken for the probe's. Every
state change starts a new epoch; a call admitted through L{CircuitBreaker.admit}
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
L{CircuitBreaker.call} knows about Deferreds.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from qwen_twist.upstream.failures import BreakerOpen, counts_as_failure

__all__ = [
    "CLOSED", "OPEN", "HALF_OPEN", "PROBE_RETRY_AFTER", "SUCCESS", "FAILURE", "NEUTRAL",
    "BreakerOpen", "CircuitBreaker",
]

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

#: C{retry_after} for a request refused because the half-open probe is still
#: running: the probe settles within one headers deadline, often far sooner.
PROBE_RETRY_AFTER = 1.0

#: Outcomes given to L{CircuitBreaker.settle}.
SUCCESS = 0
FAILURE = 1
NEUTRAL = 2

#: Buckets the rate window is kept in (O(1) memory and time per outcome).
_BUCKETS = 10

# (epoch, is_probe) of an admitted call.
_Ticket = Tuple[int, bool]


class CircuitBreaker:
    """
    One upstream's (or one model's) breaker; see the module docstring.

    @ivar name: which upstream (for L{BreakerOpen} and C{on_transition}).
    """

    def __init__(
        self,
        name: str,
        threshold: int,
        cooldown: float,
        clock: Any,
        on_transition: Optional[Callable[[str, str, str], Any]] = None,
        window: float = 10.0,
        min_calls: int = 20,
        failure_rate: float = 0.5,
        burst: float = 0.0,
    ) -> None:
        """
        @param threshold: consecutive failures (at least C{burst} s apart)
            that open the breaker; C{0} means it never opens.
        @param cooldown: seconds an open breaker refuses calls before it lets
            a probe through.
        @param clock: provides C{seconds()} (the reactor, or a C{Clock}).
        @param on_transition: called as C{on_transition(name, old, new)} after
            every state change, in order (metrics, logging). It must not
            raise.
        @param window: seconds over which the failure rate is measured.
        @param min_calls: judged calls within the window before the rate
            may open the breaker.
        @param failure_rate: share of failures within the window that
            opens it.
        @param burst: failures closer together than this count once toward
            C{threshold}.
        """
        self.name = name
        self._clock = clock
        self._on_transition = on_transition
        self._state = CLOSED
        self._failures = 0
        self._last_failure = -1e300
        self._reopen_at = 0.0
        self._probing = False
        self._epoch = 0
        self._calls: List[int] = [0] * _BUCKETS
        self._failed: List[int] = [0] * _BUCKETS
        self._bucket = 0  # absolute index of the newest bucket
        self.configure(threshold, cooldown, window, min_calls, failure_rate, burst)

    def configure(self, threshold: int, cooldown: float, window: float = 10.0,
                  min_calls: int = 20, failure_rate: float = 0.5,
                  burst: float = 0.0) -> None:
        """
        Take new settings (a reload); the state and counts are kept.
        """
        self._threshold = threshold
        self._cooldown = cooldown
        self._width = window / _BUCKETS
        self._min_calls = min_calls
        self._rate = failure_rate
        self._burst = burst

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
        self._forget()
        if self._on_transition is not None:
            self._on_transition(self.name, old, new)

    def _forget(self) -> None:
        self._failures = 0
        self._last_failure = -1e300
        for i in range(_BUCKETS):
            self._calls[i] = self._failed[i] = 0

    def _open(self, now: float) -> None:
        self._reopen_at = now + self._cooldown
        self._transition(OPEN)

    def _record(self, now: float, failed: bool) -> Tuple[int, int]:
        # Add one judged call to the rate window; return (calls, failures)
        # within it.
        index = int(now / self._width)
        gap = index - self._bucket
        if gap > 0:
            for i in range(min(gap, _BUCKETS)):
                slot = (self._bucket + 1 + i) % _BUCKETS
                self._calls[slot] = self._failed[slot] = 0
            self._bucket = index
        slot = self._bucket % _BUCKETS
        self._calls[slot] += 1
        if failed:
            self._failed[slot] += 1
        return sum(self._calls), sum(self._failed)

    def admit(self) -> _Ticket:
        """
        Admit a call, or refuse it fast.

        @return: the ticket to pass to L{settle} with the call's outcome.
        @raise BreakerOpen: while open (C{retry_after} is the cool-down
            left), or while half-open with the probe still out.
        """
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

    def settle(self, ticket: Optional[_Ticket], outcome: int) -> None:
        """
        Report the outcome (L{SUCCESS}, L{FAILURE} or L{NEUTRAL}) of a call
        admitted with C{ticket} (L{None}: apply to the current state).
        """
        now = self._clock.seconds()
        self._sync(now)
        if ticket is not None and ticket[0] != self._epoch:
            return  # admitted under an earlier state: stale news
        state = self._state
        if state == OPEN:
            return  # a straggler; the cool-down stands
        if outcome == SUCCESS:
            if state == HALF_OPEN:
                self._transition(CLOSED)
            else:
                self._failures = 0
                self._record(now, False)
        elif outcome == FAILURE:
            if state == HALF_OPEN:
                self._open(now)
                return
            if not self._threshold:
                return
            calls, failed = self._record(now, True)
            if now - self._last_failure >= self._burst:
                self._last_failure = now
                self._failures += 1
            if self._failures >= self._threshold or (
                calls >= self._min_calls and failed >= self._rate * calls
            ):
                self._open(now)
        elif state == HALF_OPEN:
            self._probing = False

    def before_call(self) -> None:
        """
        Admit a call or refuse it fast.

        @raise BreakerOpen: while open (C{retry_after} is the cool-down
            left), or while half-open with the probe still out.
        """
        self.admit()

    def success(self) -> None:
        """
        The upstream answered (headers below 500): reset the failure count;
        a half-open probe closes the breaker.
        """
        self.settle(None, SUCCESS)

    def failure(self) -> None:
        """
        The upstream failed (L{counts_as_failure}): count it; the
        C{threshold}th in a row, or a half-open probe's, opens the breaker.
        """
        self.settle(None, FAILURE)

    def neutral(self) -> None:
        """
        The call ended without saying anything about upstream health (client
        cancelled, a 4xx): release a half-open probe slot, nothing else.
        """
        self.settle(None, NEUTRAL)

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
            ticket = self.admit()
        except BreakerOpen:
            return fail()
        try:
            inner = start()
        except Exception:
            f = Failure()
            self.settle(ticket, FAILURE if is_failure(f) else NEUTRAL)
            return fail(f)
        cancelled = False

        def cancel(outer: Deferred) -> None:
            nonlocal cancelled
            cancelled = True
            inner.cancel()

        outer: Deferred = Deferred(cancel)

        def judge(result: Any) -> None:
            if cancelled:
                self.settle(ticket, NEUTRAL)
                # outer.cancel() fails outer with CancelledError itself.
                return None
            if isinstance(result, Failure):
                self.settle(ticket, FAILURE if is_failure(result) else NEUTRAL)
                outer.errback(result)
            else:
                self.settle(ticket, SUCCESS)
                outer.callback(result)
            return None

        inner.addBoth(judge)
        return outer
