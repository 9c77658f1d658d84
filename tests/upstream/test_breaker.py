"""
Tests for L{qwen_twist.upstream.breaker}: every transition of the circuit breaker,
its Deferred wrapper, the failure rate over a window and bursts; time from
a L{Clock}. Which failures count is tested in L{tests.upstream.test_failures}.
"""

from __future__ import annotations

from typing import List, Tuple

from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseNeverReceived

from qwen_twist import errors
from qwen_twist.upstream.breaker import (
    PROBE_RETRY_AFTER,
    BreakerOpen,
    CircuitBreaker,
)
from qwen_twist.upstream.failures import UpstreamTimeout


def failure_of(exception: BaseException) -> Failure:
    try:
        raise exception
    except BaseException:
        return Failure()


class _BreakerTestCase(SynchronousTestCase):
    """
    A breaker that opens after 3 failures and cools down for 10 s, recording
    its transitions.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.transitions: List[Tuple[str, str, str]] = []
        self.breaker = CircuitBreaker(
            "ollama-a", 3, 10.0, self.clock,
            on_transition=lambda *args: self.transitions.append(args),
        )

    def trip(self) -> None:
        for _ in range(3):
            self.breaker.before_call()
            self.breaker.failure()

    def refused(self) -> BreakerOpen:
        return self.assertRaises(BreakerOpen, self.breaker.before_call)


class StateTests(_BreakerTestCase):
    """
    The state machine driven through before_call/success/failure/neutral.
    """

    def test_below_threshold(self) -> None:
        """
        Fewer consecutive failures than the threshold leave it closed and
        admitting.
        """
        for _ in range(2):
            self.breaker.before_call()
            self.breaker.failure()
        self.assertEqual(self.breaker.state, "closed")
        self.breaker.before_call()
        self.assertEqual(self.transitions, [])

    def test_success_resets_count(self) -> None:
        """
        Only consecutive failures count: a success in between starts over.
        """
        for outcome in ["failure", "failure", "success", "failure", "failure"]:
            self.breaker.before_call()
            getattr(self.breaker, outcome)()
        self.assertEqual(self.breaker.state, "closed")
        self.breaker.failure()
        self.assertEqual(self.breaker.state, "open")

    def test_neutral_does_not_reset_count(self) -> None:
        """
        A neutral outcome (client gone, 4xx) neither counts nor resets the
        run of failures.
        """
        self.breaker.failure()
        self.breaker.failure()
        self.breaker.neutral()
        self.assertEqual(self.breaker.state, "closed")
        self.breaker.failure()
        self.assertEqual(self.breaker.state, "open")

    def test_opens_at_threshold(self) -> None:
        """
        The threshold-th consecutive failure opens the breaker.
        """
        self.trip()
        self.assertEqual(self.breaker.state, "open")
        self.assertEqual(self.transitions, [("ollama-a", "closed", "open")])

    def test_open_refuses_with_remaining_cooldown(self) -> None:
        """
        While open, calls are refused at once, with retry_after the cool-down
        left, shrinking as time passes.
        """
        self.clock.advance(100)
        self.trip()
        self.assertEqual(self.refused().retry_after, 10.0)
        self.clock.advance(2.5)
        self.assertEqual(self.refused().retry_after, 7.5)
        self.clock.advance(7.4)
        exc = self.refused()
        self.assertAlmostEqual(exc.retry_after, 0.1)
        self.assertEqual(exc.name, "ollama-a")
        self.assertEqual(errors.retry_after(exc.retry_after), "1")

    def test_threshold_zero_never_opens(self) -> None:
        """
        A threshold of 0 disables the breaker.
        """
        breaker = CircuitBreaker("x", 0, 10.0, self.clock)
        for _ in range(1000):
            breaker.before_call()
            breaker.failure()
        self.assertEqual(breaker.state, "closed")

    def test_half_open_after_cooldown(self) -> None:
        """
        Once the cool-down has passed the breaker reports half_open, and the
        transition is reported once.
        """
        self.trip()
        self.clock.advance(9.999)
        self.assertEqual(self.breaker.state, "open")
        self.clock.advance(0.001)
        self.assertEqual(self.breaker.state, "half_open")
        self.assertEqual(self.breaker.state, "half_open")
        self.assertEqual(
            self.transitions,
            [("ollama-a", "closed", "open"), ("ollama-a", "open", "half_open")],
        )

    def test_half_open_admits_one_probe(self) -> None:
        """
        Half-open lets exactly one probe through; a concurrent call is
        refused with a short retry_after.
        """
        self.trip()
        self.clock.advance(10)
        self.breaker.before_call()
        self.assertEqual(self.refused().retry_after, PROBE_RETRY_AFTER)
        self.assertEqual(self.refused().retry_after, PROBE_RETRY_AFTER)

    def test_probe_success_closes(self) -> None:
        """
        The probe's success closes the breaker: calls flow and the failure
        count starts from zero.
        """
        self.trip()
        self.clock.advance(10)
        self.breaker.before_call()
        self.breaker.success()
        self.assertEqual(self.breaker.state, "closed")
        self.breaker.before_call()
        self.breaker.before_call()
        self.breaker.failure()
        self.breaker.failure()
        self.assertEqual(self.breaker.state, "closed")
        self.assertEqual(
            [t[1:] for t in self.transitions],
            [("closed", "open"), ("open", "half_open"), ("half_open", "closed")],
        )

    def test_probe_failure_reopens(self) -> None:
        """
        The probe's failure re-opens the breaker with a fresh, full cool-down.
        """
        self.trip()
        self.clock.advance(15)
        self.breaker.before_call()
        self.clock.advance(3)
        self.breaker.failure()
        self.assertEqual(self.breaker.state, "open")
        self.assertEqual(self.refused().retry_after, 10.0)
        self.clock.advance(10)
        self.assertEqual(self.breaker.state, "half_open")
        self.assertEqual(
            [t[1:] for t in self.transitions],
            [
                ("closed", "open"),
                ("open", "half_open"),
                ("half_open", "open"),
                ("open", "half_open"),
            ],
        )

    def test_neutral_releases_probe(self) -> None:
        """
        A probe that ends neutrally frees the slot for the next probe,
        leaving the breaker half-open.
        """
        self.trip()
        self.clock.advance(10)
        self.breaker.before_call()
        self.refused()
        self.breaker.neutral()
        self.assertEqual(self.breaker.state, "half_open")
        self.breaker.before_call()
        self.refused()

    def test_outcomes_while_open_ignored(self) -> None:
        """
        Late outcomes of calls admitted before the breaker opened neither
        close it nor extend its cool-down.
        """
        self.trip()
        self.clock.advance(4)
        for _ in range(3):
            self.breaker.failure()
            self.breaker.neutral()
        self.breaker.success()
        self.assertEqual(self.breaker.state, "open")
        self.assertEqual(self.refused().retry_after, 6.0)
        self.assertEqual(len(self.transitions), 1)

    def test_full_cycle_transitions_in_order(self) -> None:
        """
        on_transition sees every change, in order, with the breaker's name.
        """
        self.trip()
        self.clock.advance(10)
        self.breaker.before_call()
        self.breaker.failure()
        self.clock.advance(10)
        self.breaker.before_call()
        self.breaker.success()
        self.trip()
        self.assertEqual(
            self.transitions,
            [
                ("ollama-a", "closed", "open"),
                ("ollama-a", "open", "half_open"),
                ("ollama-a", "half_open", "open"),
                ("ollama-a", "open", "half_open"),
                ("ollama-a", "half_open", "closed"),
                ("ollama-a", "closed", "open"),
            ],
        )


class CallTests(_BreakerTestCase):
    """
    L{CircuitBreaker.call} wraps a Deferred-returning request.
    """

    def test_success_passes_result(self) -> None:
        """
        The request's result is passed on, and it resets the failure count.
        """
        self.breaker.failure()
        self.breaker.failure()
        d = self.breaker.call(lambda: succeed("headers"))
        self.assertEqual(self.successResultOf(d), "headers")
        self.breaker.failure()
        self.assertEqual(self.breaker.state, "closed")

    def test_failure_passes_failure_and_counts(self) -> None:
        """
        A failure that counts is passed on and counted; three open the
        breaker, after which start is not even called.
        """
        for _ in range(3):
            d = self.breaker.call(lambda: fail(ierror.ConnectionRefusedError()))
            self.failureResultOf(d, ierror.ConnectionRefusedError)
        self.assertEqual(self.breaker.state, "open")
        started = []
        d = self.breaker.call(lambda: started.append(1) or Deferred())
        self.assertEqual(self.failureResultOf(d, BreakerOpen).value.retry_after, 10.0)
        self.assertEqual(started, [])

    def test_neutral_failure(self) -> None:
        """
        A failure that does not count (here a 404 unknown model) is passed on
        and leaves the count alone.
        """
        self.breaker.failure()
        self.breaker.failure()
        for _ in range(5):
            d = self.breaker.call(lambda: fail(errors.ApiError(404, "model not found")))
            self.failureResultOf(d, errors.ApiError)
        self.assertEqual(self.breaker.state, "closed")
        self.breaker.failure()
        self.assertEqual(self.breaker.state, "open")

    def test_custom_is_failure(self) -> None:
        """
        The caller may judge failures itself.
        """
        for _ in range(3):
            d = self.breaker.call(lambda: fail(ValueError()), is_failure=lambda f: True)
            self.failureResultOf(d, ValueError)
        self.assertEqual(self.breaker.state, "open")

    def test_start_raises(self) -> None:
        """
        A start that raises instead of returning a Deferred gives a failed
        Deferred, judged like any failure.
        """

        def start() -> Deferred:
            raise ierror.DNSLookupError("ollama.invalid")

        for _ in range(3):
            self.failureResultOf(self.breaker.call(start), ierror.DNSLookupError)
        self.assertEqual(self.breaker.state, "open")

    def test_pending_then_fires(self) -> None:
        """
        The returned Deferred waits for the request and is judged when it
        fires.
        """
        inner: Deferred = Deferred()
        d = self.breaker.call(lambda: inner)
        self.assertNoResult(d)
        inner.errback(UpstreamTimeout("no headers within 30 s"))
        self.failureResultOf(d, UpstreamTimeout)

    def test_cancel_cancels_request_neutrally(self) -> None:
        """
        Cancelling the returned Deferred cancels the request's, fails with
        CancelledError (even when the request's canceller produced another
        type), and does not count as a failure.
        """
        cancelled = []

        def canceller(d: Deferred) -> None:
            cancelled.append(d)
            # What an Agent may produce when it aborts the connection; by
            # type alone it would count.
            d.errback(ResponseNeverReceived([failure_of(ierror.ConnectionAborted())]))

        for _ in range(5):
            inner: Deferred = Deferred(canceller)
            d = self.breaker.call(lambda: inner)
            d.cancel()
            self.failureResultOf(d, CancelledError)
        self.assertEqual(len(cancelled), 5)
        self.assertEqual(self.breaker.state, "closed")
        self.breaker.failure()
        self.breaker.failure()
        self.assertEqual(self.breaker.state, "closed")

    def test_cancel_when_canceller_does_not_fire(self) -> None:
        """
        A request whose Deferred does not run its callbacks on cancel cannot
        keep the caller waiting; its late result is dropped and judged
        neutral (here: the probe slot is freed only then).
        """
        self.trip()
        self.clock.advance(10)
        inner: Deferred = Deferred()
        inner.pause()  # a paused Deferred does not run callbacks when cancelled
        d = self.breaker.call(lambda: inner)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.failureResultOf(self.breaker.call(Deferred), BreakerOpen)
        inner.unpause()
        self.assertEqual(self.breaker.state, "half_open")
        self.assertNoResult(self.breaker.call(Deferred))

    def test_cancelled_probe_frees_slot(self) -> None:
        """
        A half-open probe whose client went away frees the slot for the next
        probe without closing or re-opening the breaker.
        """
        self.trip()
        self.clock.advance(10)
        d = self.breaker.call(Deferred)
        self.failureResultOf(self.breaker.call(Deferred), BreakerOpen)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.breaker.state, "half_open")
        probe: Deferred = Deferred()
        d = self.breaker.call(lambda: probe)
        probe.callback("headers")
        self.assertEqual(self.successResultOf(d), "headers")
        self.assertEqual(self.breaker.state, "closed")

    def test_probe_failure_via_call_reopens(self) -> None:
        """
        A probe made through call() that fails re-opens the breaker.
        """
        self.trip()
        self.clock.advance(10)
        self.failureResultOf(
            self.breaker.call(lambda: fail(ierror.ConnectionRefusedError())),
            ierror.ConnectionRefusedError,
        )
        self.assertEqual(self.breaker.state, "open")

    def test_straggler_does_not_settle_probe(self) -> None:
        """
        A call admitted while closed that ends after the breaker opened and
        went half-open is not taken for the probe: its failure does not
        re-open, its success does not close, and its cancellation does not
        free the probe slot.
        """
        stragglers = [Deferred() for _ in range(3)]
        results = [self.breaker.call(lambda d=d: d) for d in stragglers]
        self.trip()
        self.clock.advance(10)
        probe: Deferred = Deferred()
        probe_result = self.breaker.call(lambda: probe)
        stragglers[0].errback(UpstreamTimeout("no headers"))
        self.failureResultOf(results[0], UpstreamTimeout)
        self.assertEqual(self.breaker.state, "half_open")
        results[1].cancel()
        self.failureResultOf(results[1], CancelledError)
        self.failureResultOf(self.breaker.call(Deferred), BreakerOpen)
        stragglers[2].callback("late")
        self.assertEqual(self.successResultOf(results[2]), "late")
        self.assertEqual(self.breaker.state, "half_open")
        probe.callback("headers")
        self.successResultOf(probe_result)
        self.assertEqual(self.breaker.state, "closed")

    def test_straggler_after_recovery_not_counted(self) -> None:
        """
        A failure of a call admitted before the breaker last opened does not
        count against the recovered upstream.
        """
        stragglers = [Deferred() for _ in range(3)]
        results = [self.breaker.call(lambda d=d: d) for d in stragglers]
        self.trip()
        self.clock.advance(10)
        self.successResultOf(self.breaker.call(lambda: succeed(None)))
        self.breaker.failure()
        self.breaker.failure()
        for d in stragglers:
            d.errback(ierror.ConnectionLost())
        for d in results:
            self.failureResultOf(d, ierror.ConnectionLost)
        self.assertEqual(self.breaker.state, "closed")


class BreakerOpenTests(SynchronousTestCase):
    """
    The refusal and its client-facing error.
    """

    def test_api_error(self) -> None:
        """
        A refusal becomes a 503 with Retry-After rounded up to whole seconds.
        """
        err = BreakerOpen(7.2, "127.0.0.1:11434").api_error()
        self.assertEqual(err.status, 503)
        self.assertEqual(err.code, "upstream_unavailable")
        self.assertEqual(dict(err.headers)["Retry-After"], "8")
        self.assertNotIn("127.0.0.1:11434", err.message)
        self.assertIn("127.0.0.1:11434", err.detail)

    def test_header_at_least_one(self) -> None:
        """
        Retry-After is never 0, even when the cool-down is nearly over.
        """
        self.assertEqual(errors.retry_after(BreakerOpen(0.0).retry_after), "1")
        self.assertEqual(errors.retry_after(BreakerOpen(3.0).retry_after), "3")


class RateTests(SynchronousTestCase):
    """
    The breaker as configured by default: a failure rate over a window with
    a minimum of calls, and consecutive failures only when spread in time
    (issue 10: a burst of concurrent failures from one transient event must
    not open it; a dead Ollama must, within a second).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.transitions: List[Tuple[str, str, str]] = []
        self.breaker = CircuitBreaker(
            "ollama-a", 5, 30.0, self.clock,
            on_transition=lambda *args: self.transitions.append(args),
            window=10.0, min_calls=20, failure_rate=0.5, burst=0.1,
        )

    def concurrent(self, outcomes: List[bool]) -> None:
        """
        Admit one call per outcome at once, then settle them all at the
        same instant (failures first: the worst order).
        """
        tickets = [self.breaker.admit() for _ in outcomes]
        for ticket, ok in sorted(zip(tickets, outcomes), key=lambda t: t[1]):
            self.breaker.settle(ticket, 0 if ok else 1)

    def test_burst_of_concurrent_failures(self) -> None:
        """
        100 concurrent calls of which 10 fail at one instant (a reset of
        pooled connections) do not open it: they count once toward the
        consecutive rule, and 10 of 100 is below the rate.
        """
        self.concurrent([False] * 10 + [True] * 90)
        self.assertEqual(self.breaker.state, "closed")
        for _ in range(20):
            self.clock.advance(0.05)
            self.concurrent([False] * 10 + [True] * 90)
        self.assertEqual(self.breaker.state, "closed")
        self.assertEqual(self.transitions, [])

    def test_dead_under_load_opens_fast(self) -> None:
        """
        A dead Ollama under load (50 calls a second, all failing) opens it
        once the minimum number of calls is reached: within half a second.
        """
        for i in range(50):
            if self.breaker.state == "open":
                break
            self.breaker.settle(self.breaker.admit(), 1)
            self.clock.advance(0.02)
        self.assertEqual(self.breaker.state, "open")
        self.assertLessEqual(self.clock.seconds(), 0.5)

    def test_dead_when_quiet_opens_on_spread_failures(self) -> None:
        """
        With little traffic (far below the minimum calls) consecutive
        failures spread in time open it: 5 failures 0.2 s apart, within a
        second.
        """
        for i in range(5):
            self.assertEqual(self.breaker.state, "closed")
            self.breaker.settle(self.breaker.admit(), 1)
            self.clock.advance(0.2)
        self.assertEqual(self.breaker.state, "open")
        self.assertLess(self.clock.seconds(), 1.01)

    def test_rate_below_threshold(self) -> None:
        """
        A steady 40 % failure rate (below 50 %) with successes in between
        never opens it.
        """
        for i in range(500):
            self.breaker.settle(self.breaker.admit(), 1 if i % 5 < 2 else 0)
            self.clock.advance(0.01)
        self.assertEqual(self.breaker.state, "closed")

    def test_rate_above_threshold(self) -> None:
        """
        A steady 60 % failure rate opens it.
        """
        for i in range(500):
            if self.breaker.state == "open":
                break
            self.breaker.settle(self.breaker.admit(), 1 if i % 5 < 3 else 0)
            self.clock.advance(0.01)
        self.assertEqual(self.breaker.state, "open")

    def test_window_forgets(self) -> None:
        """
        Failures older than the window no longer count toward the rate: 15
        of 19 calls failed (too few calls to judge), 11 s later 5 of 20 fail;
        counted together (20 of 39) they would open it.
        """
        for outcome in [1] * 15 + [0] * 4:
            self.breaker.settle(self.breaker.admit(), outcome)
        self.assertEqual(self.breaker.state, "closed")
        self.clock.advance(11)
        for outcome in [0] * 15 + [1] * 5:
            self.breaker.settle(self.breaker.admit(), outcome)
        self.assertEqual(self.breaker.state, "closed")

    def test_configure(self) -> None:
        """
        New settings apply to the next outcome; the counts are kept.
        """
        self.breaker.configure(2, 30.0, window=10.0, min_calls=20, failure_rate=0.5, burst=0.1)
        self.breaker.settle(self.breaker.admit(), 1)
        self.clock.advance(0.2)
        self.breaker.settle(self.breaker.admit(), 1)
        self.assertEqual(self.breaker.state, "open")
