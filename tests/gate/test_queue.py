"""
Tests for L{qwen_twist.gate.queue}: the fair slot queue in front of the GPU
and its pipeline hook, driven by a C{Clock} (no sleeps).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, List, Optional

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet import defer, error as ierror
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from qwen_twist import errors
from qwen_twist.gate import queue as admission
from qwen_twist.gate.queue import (
    AdmissionHook,
    QueueFull,
    QueueTimeout,
    SlotQueue,
    Ticket,
)
from qwen_twist.context import CallContext

from tests.web.helpers import GatewayHarness

CHAT = {"model": "qwen3:8b", "messages": [{"role": "user", "content": "Hi"}]}
NATIVE_OK = {
    "model": "qwen3:8b", "created_at": "2025-07-07T20:22:19Z",
    "message": {"role": "assistant", "content": "Hello!"}, "done": True,
    "done_reason": "stop", "prompt_eval_count": 10, "eval_count": 5,
}


def queue(slots: int = 1, max_depth: int = 1000, max_wait: Optional[float] = 60.0,
          weights: Optional[Dict[str, float]] = None) -> SlotQueue:
    return SlotQueue(slots, max_depth, max_wait, Clock(), weights)


class Grants:
    """
    Records, in order, which waiters a queue granted.
    """

    def __init__(self) -> None:
        self.order: List[str] = []
        self.tickets: List[Ticket] = []

    def wait(self, q: SlotQueue, owner: str, tag: Optional[str] = None) -> defer.Deferred:
        d = q.acquire(owner)
        d.addCallback(self._granted, tag or owner)
        return d

    def _granted(self, ticket: Ticket, tag: str) -> Ticket:
        self.order.append(tag)
        self.tickets.append(ticket)
        return ticket

    def release_oldest(self, q: SlotQueue) -> None:
        q.release(self.tickets.pop(0))


class SlotQueueTests(SynchronousTestCase):
    """
    Granting, waiting and releasing slots.
    """

    def test_immediate_grant(self) -> None:
        """
        With a slot free and nobody waiting, a call gets its slot at once
        and has waited zero seconds.
        """
        q = queue(slots=2)
        q.clock.advance(10)
        ticket = self.successResultOf(q.acquire("key:a"))
        self.assertEqual((ticket.owner, ticket.queued_at, ticket.wait), ("key:a", 10, 0))
        self.assertEqual((q.busy, q.free, q.waiting), (1, 1, 0))
        self.assertEqual(q.stats.granted, 1)

    def test_per_owner_cap(self) -> None:
        """
        One owner holds at most C{per_owner} slots: its extra call waits
        while another owner is granted the free slot at once, and it gets
        its turn when one of its own calls ends.
        """
        q = SlotQueue(4, 100, 60.0, Clock(), per_owner=3)
        grants = Grants()
        for i in range(4):
            grants.wait(q, "key:a", "a%d" % (i,))
        self.assertEqual(grants.order, ["a0", "a1", "a2"])
        self.assertEqual((q.busy, q.waiting), (3, 1))
        grants.wait(q, "key:b", "b0")
        self.assertEqual(grants.order, ["a0", "a1", "a2", "b0"])
        grants.wait(q, "key:b", "b1")
        self.assertEqual((q.busy, q.waiting), (4, 2))
        grants.release_oldest(q)  # a0 ends: a3 waited longest and may run
        self.assertEqual(grants.order[-1], "a3")
        self.assertEqual(q.running, {"key:a": 3, "key:b": 1})

    def test_per_owner_default_below_slots(self) -> None:
        """
        Through the gateway, with 4 slots one key opening 4 calls leaves a
        slot for a second key, which is sent upstream at once.
        """
        import os
        import time

        from qwen_twist.gate.keyfile import add_key

        directory = self.mktemp()
        os.makedirs(directory)
        keys_file = os.path.join(directory, "keys.yaml")
        a = add_key(keys_file, "a", now=time.time())
        b = add_key(keys_file, "b", now=time.time())
        harness = GatewayHarness({
            "auth": {"required": True, "keys_file": keys_file},
            "admission": {"slots": 4},
        })
        for _ in range(4):
            harness.request("POST", "/v1/chat/completions", CHAT,
                            {"Authorization": "Bearer " + a})
        self.assertEqual(len(harness.upstream.calls), 3)
        harness.request("POST", "/v1/chat/completions", CHAT, {"Authorization": "Bearer " + b})
        self.assertEqual(len(harness.upstream.calls), 4)
        self.assertEqual(harness.gate.queue.running, {"key:a": 3, "key:b": 1})
        # Finish every call (A's fourth is granted on the way), so no call
        # is left in flight for the garbage collector to tear down.
        for call in harness.upstream.calls[:4]:
            call.respond(200, NATIVE_OK)
        self.assertEqual(len(harness.upstream.calls), 5)
        harness.upstream.calls[4].respond(200, NATIVE_OK)
        self.assertEqual((harness.gate.queue.busy, harness.gate.queue.waiting), (0, 0))

    def test_waits_when_full(self) -> None:
        """
        Once every slot is busy, further calls wait.
        """
        q = queue(slots=2)
        q.acquire("key:a")
        q.acquire("key:b")
        d = q.acquire("key:c")
        self.assertNoResult(d)
        self.assertEqual((q.busy, q.free, q.waiting), (2, 0, 1))

    def test_release_grants_next(self) -> None:
        """
        Releasing a slot hands it to the next waiter, whose ticket tells how
        long it waited; the slot count is unchanged.
        """
        q = queue(slots=1)
        first = self.successResultOf(q.acquire("key:a"))
        d = q.acquire("key:b")
        q.clock.advance(2.5)
        q.release(first)
        second = self.successResultOf(d)
        self.assertEqual((second.owner, second.wait, second.granted_at), ("key:b", 2.5, 2.5))
        self.assertEqual((q.busy, q.waiting), (1, 0))
        q.release(second)
        self.assertEqual((q.busy, q.free), (0, 1))
        self.assertEqual(q.stats.released, 2)

    def test_fifo_within_owner(self) -> None:
        """
        One owner's calls are served in the order they arrived.
        """
        q = queue(slots=1)
        g = Grants()
        g.wait(q, "key:a", "a0")
        for i in range(1, 5):
            g.wait(q, "key:a", "a%d" % (i,))
        for _ in range(4):
            g.release_oldest(q)
        self.assertEqual(g.order, ["a0", "a1", "a2", "a3", "a4"])

    def test_flood_does_not_starve(self) -> None:
        """
        Key A queues 100 calls, then key B queues one: B is granted within
        two slot turns, not after A's hundred; A's calls all complete later.
        """
        q = queue(slots=1)
        g = Grants()
        for _ in range(101):
            g.wait(q, "key:a", "a")
        g.wait(q, "key:b", "b")
        turns = 0
        while "b" not in g.order:
            g.release_oldest(q)
            turns += 1
        self.assertLessEqual(turns, 2)
        while g.tickets:
            g.release_oldest(q)
        self.assertEqual(Counter(g.order), {"a": 101, "b": 1})
        self.assertEqual((q.busy, q.waiting), (0, 0))

    def test_round_robin(self) -> None:
        """
        Owners with calls waiting take turns, one slot each per round.
        """
        q = queue(slots=1)
        g = Grants()
        g.wait(q, "key:hold", "hold")
        for owner in "aaaabbc":
            g.wait(q, "key:" + owner, owner)
        for _ in range(7):
            g.release_oldest(q)
        self.assertEqual(g.order, ["hold", "a", "b", "c", "a", "b", "a", "a"])

    def test_weights(self) -> None:
        """
        An owner of weight 3 gets three slots for each one of an owner of
        default weight 1 while both have calls waiting.
        """
        q = queue(slots=1, weights={"key:gold": 3})
        g = Grants()
        g.wait(q, "key:hold", "hold")
        for _ in range(40):
            g.wait(q, "key:gold", "gold")
            g.wait(q, "key:std", "std")
        for _ in range(40):
            g.release_oldest(q)
        served = g.order[1:]
        self.assertEqual(Counter(served), {"gold": 30, "std": 10})
        self.assertEqual(served[:8], ["gold"] * 3 + ["std"] + ["gold"] * 3 + ["std"])

    def test_fractional_weight(self) -> None:
        """
        An owner of weight 0.5 gets one slot for every two of a default
        owner.
        """
        q = queue(slots=1, weights={"key:low": 0.5})
        g = Grants()
        g.wait(q, "key:hold", "hold")
        for _ in range(30):
            g.wait(q, "key:low", "low")
            g.wait(q, "key:std", "std")
        for _ in range(30):
            g.release_oldest(q)
        self.assertEqual(Counter(g.order[1:]), {"std": 20, "low": 10})

    def test_queue_full(self) -> None:
        """
        With C{max_depth} calls waiting the next is refused at once with
        L{QueueFull}, whose C{retry_after} is (waiting + 1) divided by the
        observed service rate: 2 slots, calls taking 4 s, so 0.5 calls per
        second and (2 + 1) / 0.5 = 6 s.
        """
        q = queue(slots=2, max_depth=2)
        tickets = [self.successResultOf(q.acquire("key:a")) for _ in range(2)]
        q.clock.advance(4)
        for t in tickets:
            q.release(t)
        self.assertEqual(q.service_rate(), 0.5)
        q.acquire("key:a")
        q.acquire("key:a")
        waiting = [q.acquire("key:b"), q.acquire("key:c")]
        failure = self.failureResultOf(q.acquire("key:d"), QueueFull)
        self.assertEqual(failure.value.retry_after, 6.0)
        self.assertEqual((q.waiting, q.stats.rejected_full), (2, 1))
        for d in waiting:
            self.assertNoResult(d)

    def test_retry_after_bounds(self) -> None:
        """
        Without recent completions the estimate is 1 s; it is never below
        1 s nor above 60 s (what the OpenAI SDKs honour), and completions
        older than the rate window no longer count.
        """
        q = queue(slots=1, max_depth=100, max_wait=None)
        self.assertEqual(q.retry_after(), admission.DEFAULT_RETRY_AFTER)
        t = self.successResultOf(q.acquire("key:a"))
        q.clock.advance(0.1)
        q.release(t)
        self.assertEqual(q.retry_after(), 1.0)
        t = self.successResultOf(q.acquire("key:a"))
        for _ in range(50):
            q.acquire("key:a")
        q.clock.advance(30)
        q.release(t)
        # Mean service (0.1 + 30) / 2 s for one slot, 50 waiting: far past 60.
        self.assertEqual(q.retry_after(), admission.MAX_RETRY_AFTER)
        q.clock.advance(admission.RATE_WINDOW + 1)
        self.assertIsNone(q.service_rate())
        self.assertEqual(q.retry_after(), admission.DEFAULT_RETRY_AFTER)

    def test_max_depth_zero(self) -> None:
        """
        C{max_depth} 0 means no line at all: a call finding every slot busy
        is refused at once.
        """
        q = queue(slots=1, max_depth=0)
        q.acquire("key:a")
        self.failureResultOf(q.acquire("key:b"), QueueFull)
        self.assertEqual(q.waiting, 0)

    def test_timeout(self) -> None:
        """
        A call waiting C{max_wait} seconds fails with L{QueueTimeout}, leaves
        the line and is never granted the slot later.
        """
        q = queue(slots=1, max_wait=5)
        first = self.successResultOf(q.acquire("key:a"))
        d = q.acquire("key:b")
        later = q.acquire("key:c")
        q.clock.advance(4.9)
        self.assertNoResult(d)
        q.clock.advance(0.1)
        failure = self.failureResultOf(d, QueueTimeout)
        self.assertGreaterEqual(failure.value.retry_after, 1)
        self.assertEqual(failure.value.waited, 5)
        self.failureResultOf(later, QueueTimeout)
        self.assertEqual((q.waiting, q.stats.rejected_timeout), (0, 2))
        q.release(first)
        self.assertEqual((q.busy, q.free, q.stats.granted), (0, 1, 1))

    def test_no_timeout(self) -> None:
        """
        With C{max_wait} None a call waits as long as it takes.
        """
        q = queue(slots=1, max_wait=None)
        first = self.successResultOf(q.acquire("key:a"))
        d = q.acquire("key:b")
        self.assertEqual(q.clock.getDelayedCalls(), [])
        q.clock.advance(10 ** 6)
        q.release(first)
        self.assertEqual(self.successResultOf(d).wait, 10 ** 6)

    def test_grant_stops_timer(self) -> None:
        """
        A waiter that gets its slot leaves no timeout behind.
        """
        q = queue(slots=1, max_wait=5)
        first = self.successResultOf(q.acquire("key:a"))
        d = q.acquire("key:b")
        self.assertEqual(len(q.clock.getDelayedCalls()), 1)
        q.release(first)
        self.successResultOf(d)
        self.assertEqual(q.clock.getDelayedCalls(), [])
        q.clock.advance(10)
        self.assertEqual(q.stats.rejected_timeout, 0)

    def test_cancelled_waiter_dropped(self) -> None:
        """
        A waiter whose client went away (its Deferred cancelled) leaves the
        line at once, with its timer, and the freed slot goes to the next
        one: the cancelled call is never dispatched.
        """
        q = queue(slots=1, max_wait=5)
        first = self.successResultOf(q.acquire("key:a"))
        gone = q.acquire("key:b")
        nxt = q.acquire("key:c")
        gone.cancel()
        self.failureResultOf(gone, defer.CancelledError)
        self.assertEqual((q.waiting, q.stats.cancelled), (1, 1))
        self.assertEqual(len(q.clock.getDelayedCalls()), 1)
        q.release(first)
        self.assertEqual(self.successResultOf(nxt).owner, "key:c")
        self.assertEqual((q.busy, q.stats.granted), (1, 2))

    def test_cancel_last_waiter_of_owner(self) -> None:
        """
        Cancelling an owner's only waiter takes the owner out of the
        rotation; the next slot goes to whoever still waits.
        """
        q = queue(slots=1)
        g = Grants()
        g.wait(q, "key:hold", "hold")
        gone = g.wait(q, "key:a", "a")
        g.wait(q, "key:b", "b")
        gone.cancel()
        self.failureResultOf(gone, defer.CancelledError)
        g.release_oldest(q)
        self.assertEqual(g.order, ["hold", "b"])
        g.release_oldest(q)
        self.assertEqual((q.busy, q.waiting), (0, 0))

    def test_cancel_after_grant(self) -> None:
        """
        Cancelling a call that already has its slot changes nothing: the
        slot is freed exactly once, by its release.
        """
        q = queue(slots=1)
        d = q.acquire("key:a")
        ticket = self.successResultOf(d)
        d.cancel()
        self.assertEqual((q.busy, q.stats.cancelled), (1, 0))
        q.release(ticket)
        self.assertEqual((q.busy, q.free), (0, 1))

    def test_double_release(self) -> None:
        """
        Releasing a ticket twice frees one slot, not two.
        """
        q = queue(slots=1)
        first = self.successResultOf(q.acquire("key:a"))
        second = q.acquire("key:b")
        third = q.acquire("key:c")
        q.release(first)
        q.release(first)
        self.successResultOf(second)
        self.assertNoResult(third)
        self.assertEqual((q.busy, q.waiting, q.stats.released), (1, 1, 1))

    def test_foreign_ticket(self) -> None:
        """
        A ticket can only be given back to the queue that granted it.
        """
        q, other = queue(), queue()
        ticket = self.successResultOf(other.acquire("key:a"))
        self.assertRaises(ValueError, q.release, ticket)
        self.assertEqual((q.busy, other.busy), (0, 1))

    def test_release_from_grant_callback(self) -> None:
        """
        A grantee that gives its slot back from its own callback passes it
        on to the next waiter, and the count stays exact.
        """
        q = queue(slots=1)
        first = self.successResultOf(q.acquire("key:a"))
        bounced = q.acquire("key:b")
        bounced.addCallback(q.release)
        after = q.acquire("key:c")
        q.release(first)
        self.successResultOf(bounced)
        self.assertEqual(self.successResultOf(after).owner, "key:c")
        self.assertEqual((q.busy, q.waiting, q.stats.granted), (1, 0, 3))

    def test_configure(self) -> None:
        """
        A reload that adds slots grants them to waiters at once; one that
        removes slots lets running calls finish and grants nothing until
        the count is below the new limit.
        """
        q = queue(slots=1)
        held = [self.successResultOf(q.acquire("key:a"))]
        waiting = [q.acquire("key:b"), q.acquire("key:c"), q.acquire("key:d")]
        q.configure(3, 1000, 60.0)
        held += [self.successResultOf(d) for d in waiting[:2]]
        self.assertNoResult(waiting[2])
        q.configure(1, 1000, 60.0)
        self.assertEqual((q.busy, q.free), (3, -2))
        q.release(held.pop())
        q.release(held.pop())
        self.assertNoResult(waiting[2])
        q.release(held.pop())
        self.assertEqual(self.successResultOf(waiting[2]).owner, "key:d")
        self.assertEqual(q.busy, 1)

    def test_invalid_limits(self) -> None:
        """
        Limits that make no sense are refused when the queue is built.
        """
        clock = Clock()
        for args in [(0, 1, 1.0), (1, -1, 1.0), (1, 1, 0.0), (1.5, 1, 1.0)]:
            self.assertRaises(ValueError, SlotQueue, *args, clock)
        self.assertRaises(ValueError, SlotQueue, 1, 1, 1.0, clock, {"key:a": 0})


# The property test ------------------------------------------------------------

PROPERTY = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)

# Acquire twice as likely as the rest, so lines actually form.
_ACQUIRE = st.tuples(st.just("acquire"), st.integers(0, 3))
OPERATIONS = st.lists(
    st.one_of(
        _ACQUIRE,
        _ACQUIRE,
        st.tuples(st.just("release"), st.integers(0, 100)),
        st.tuples(st.just("release_again"), st.integers(0, 100)),
        st.tuples(st.just("cancel"), st.integers(0, 100)),
        st.tuples(st.just("advance"), st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0])),
        st.tuples(st.just("resize"), st.integers(1, 4)),
    ),
    min_size=40,
    max_size=120,
)


class _Call:
    def __init__(self, owner: str, seq: int, queued_at: float) -> None:
        self.owner = owner
        self.seq = seq
        self.queued_at = queued_at
        self.outcome: Optional[str] = None
        self.ticket: Optional[Ticket] = None
        self.released = False


class _Model:
    """
    What the queue should be doing, checked after every operation.
    """

    def __init__(self, test: SynchronousTestCase, q: SlotQueue, fair: bool) -> None:
        self.test = test
        self.q = q
        self.fair = fair
        self.calls: List[_Call] = []
        self.deferreds: List[defer.Deferred] = []
        self.last_seq: Dict[str, int] = {}
        # For each owner that has calls waiting: grants to each other owner
        # since it last got one (or started waiting).
        self.others_since: Dict[str, Counter] = {}
        self.shrunk = False
        self.problems: List[Failure] = []

    def acquire(self, owner: str) -> None:
        call = _Call(owner, len(self.calls), self.q.clock.seconds())
        self.calls.append(call)
        d = self.q.acquire(owner)
        self.deferreds.append(d)
        d.addCallbacks(self._granted, self._failed, callbackArgs=(call,), errbackArgs=(call,))
        # An assertion failing inside a callback would only fail the
        # Deferred: collect it for check() to raise.
        d.addErrback(self.problems.append)
        if call.outcome is None and owner not in self.others_since:
            self.others_since[owner] = Counter()

    def _granted(self, ticket: Ticket, call: _Call) -> None:
        t = self.test
        t.assertIsNone(call.outcome, "a call was answered twice")
        call.outcome = "granted"
        call.ticket = ticket
        t.assertEqual(ticket.owner, call.owner)
        t.assertLessEqual(self.q.busy, self.q.slots, "a grant oversubscribed the slots")
        # FIFO within an owner.
        t.assertGreater(call.seq, self.last_seq.get(call.owner, -1))
        self.last_seq[call.owner] = call.seq
        if self.fair:
            for other, counts in self.others_since.items():
                if other != call.owner:
                    counts[call.owner] += 1
                    t.assertLessEqual(
                        counts[call.owner], 1,
                        "%s was served twice while %s waited" % (call.owner, other),
                    )
            self.others_since.pop(call.owner, None)
        self._refresh_waiting(call.owner)

    def _failed(self, failure: Failure, call: _Call) -> None:
        t = self.test
        t.assertIsNone(call.outcome, "a call was answered twice")
        if failure.check(QueueFull):
            call.outcome = "full"
        elif failure.check(QueueTimeout):
            call.outcome = "timeout"
            t.assertGreaterEqual(self.q.clock.seconds() - call.queued_at, self.q.max_wait)
        elif failure.check(defer.CancelledError):
            call.outcome = "cancelled"
        else:
            failure.raiseException()
        self._refresh_waiting(call.owner)

    def _refresh_waiting(self, owner: str) -> None:
        pending = any(c.outcome is None for c in self.calls if c.owner == owner)
        if not pending:
            self.others_since.pop(owner, None)
        elif owner not in self.others_since:
            self.others_since[owner] = Counter()

    def held(self) -> List[_Call]:
        return [c for c in self.calls if c.outcome == "granted" and not c.released]

    def release(self, index: int) -> None:
        held = self.held()
        if held:
            call = held[index % len(held)]
            call.released = True
            self.q.release(call.ticket)

    def release_again(self, index: int) -> None:
        done = [c for c in self.calls if c.released]
        if done:
            before = (self.q.busy, self.q.waiting, self.q.stats.granted)
            self.q.release(done[index % len(done)].ticket)
            self.test.assertEqual((self.q.busy, self.q.waiting, self.q.stats.granted), before)

    def cancel(self, index: int) -> None:
        if self.deferreds:
            self.deferreds[index % len(self.deferreds)].cancel()

    def resize(self, slots: int) -> None:
        if slots < self.q.busy:
            self.shrunk = True
        self.q.configure(slots, self.q.max_depth, self.q.max_wait, self.q.weights)

    def check(self) -> None:
        t, q = self.test, self.q
        for problem in self.problems:
            problem.raiseException()
        outcomes = Counter(c.outcome for c in self.calls)
        t.assertEqual(q.busy, len(self.held()))
        t.assertEqual(q.busy + q.free, q.slots)
        if not self.shrunk:
            t.assertLessEqual(q.busy, q.slots)
        t.assertEqual(q.waiting, outcomes[None])
        if q.max_wait is not None:
            # Nobody waits past max_wait (they get QueueTimeout).
            now = q.clock.seconds()
            for c in self.calls:
                if c.outcome is None:
                    t.assertLess(now - c.queued_at, q.max_wait)
        t.assertLessEqual(q.waiting, q.max_depth)
        if q.waiting:
            # Nobody waits while a slot is free.
            t.assertGreaterEqual(q.busy, q.slots)
        t.assertEqual(q.stats.granted, outcomes["granted"])
        t.assertEqual(q.stats.released, sum(c.released for c in self.calls))
        t.assertEqual(q.stats.rejected_full, outcomes["full"])
        t.assertEqual(q.stats.rejected_timeout, outcomes["timeout"])
        t.assertEqual(q.stats.cancelled, outcomes["cancelled"])
        timers = q.waiting if q.max_wait is not None else 0
        t.assertEqual(len(q.clock.getDelayedCalls()), timers)

    def drain(self) -> None:
        """
        Release every slot until nothing is held: everyone still waiting
        is eventually served.
        """
        while self.held():
            self.release(0)
            self.check()
        t = self.test
        t.assertEqual((self.q.busy, self.q.waiting), (0, 0))
        t.assertNotIn(None, [c.outcome for c in self.calls])


class SlotQueuePropertyTests(SynchronousTestCase):
    """
    Slot accounting holds under every interleaving of grants, releases,
    double releases, cancellations, timeouts and reloads.
    """

    @PROPERTY
    @given(
        slots=st.integers(1, 3),
        max_depth=st.integers(0, 6),
        max_wait=st.sampled_from([None, 2.0, 5.0]),
        weights=st.sampled_from([None, {"o0": 3.0, "o1": 0.5}]),
        operations=OPERATIONS,
    )
    def test_accounting_invariants(self, slots: int, max_depth: int,
                                   max_wait: Optional[float], weights: Any,
                                   operations: list) -> None:
        """
        After every operation: busy counts exactly the granted, unreleased
        tickets (so busy + free == slots and busy <= slots), a slot is never
        free while someone waits, each call is answered once (granted,
        refused, timed out after exactly max_wait, or cancelled and then
        never granted), one owner's calls are granted in order, with equal
        weights no owner is served twice while another waits, and releasing
        everything in the end serves every waiter.
        """
        q = SlotQueue(slots, max_depth, max_wait, Clock(), weights)
        model = _Model(self, q, fair=weights is None)
        for name, arg in operations:
            if name == "acquire":
                model.acquire("o%d" % (arg,))
            elif name == "advance":
                q.clock.advance(arg)
            else:
                getattr(model, name)(arg)
            model.check()
        model.drain()


# The pipeline hook --------------------------------------------------------------


class FakeRequest:
    def __init__(self) -> None:
        self.headers: Dict[bytes, bytes] = {}

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.headers[name] = value


def context(identity: Optional[str] = "key:alice", ip: str = "192.0.2.1") -> CallContext:
    ctx = CallContext("req", "chat", "POST", "/v1/chat/completions", ip, 0.0)
    ctx.identity = identity
    return ctx


PLAN = object()


class AdmissionHookTests(SynchronousTestCase):
    """
    The queue as a step of the request pipeline.
    """

    def setUp(self) -> None:
        self.queue = SlotQueue(1, 1, 10.0, Clock())
        self.hook = AdmissionHook(self.queue)

    def admit(self, ctx: CallContext, request: Optional[FakeRequest] = None) -> defer.Deferred:
        return defer.maybeDeferred(self.hook.admit, request or FakeRequest(), ctx, PLAN)

    def test_granted_at_once(self) -> None:
        """
        A call that finds a free slot proceeds, reports C{x-queue-wait-ms: 0}
        and holds the slot until released.
        """
        request, ctx = FakeRequest(), context()
        self.successResultOf(self.admit(ctx, request))
        self.assertEqual(request.headers[b"x-queue-wait-ms"], b"0")
        self.assertEqual(ctx.queue_wait_ms, 0)
        self.assertEqual(self.queue.busy, 1)
        self.hook.release(ctx)
        self.assertEqual(self.queue.busy, 0)

    def test_waited(self) -> None:
        """
        A call that waited reports how long in C{x-queue-wait-ms} and in
        C{ctx.queue_wait_ms}.
        """
        first = context()
        self.admit(first)
        request, ctx = FakeRequest(), context("key:bob")
        d = self.admit(ctx, request)
        self.queue.clock.advance(1.5)
        self.hook.release(first)
        self.successResultOf(d)
        self.assertEqual(request.headers[b"x-queue-wait-ms"], b"1500")
        self.assertEqual(ctx.queue_wait_ms, 1500.0)

    def test_owner(self) -> None:
        """
        Calls queue under their identity, anonymous ones under their
        client address.
        """
        keyed, anonymous = context("key:alice"), context(None, "198.51.100.4")
        self.admit(keyed)
        self.assertEqual(keyed.queue_ticket.owner, "key:alice")
        self.hook.release(keyed)
        self.admit(anonymous)
        self.assertEqual(anonymous.queue_ticket.owner, "ip:198.51.100.4")

    def test_queue_full_is_429(self) -> None:
        """
        A full line answers 429 C{queue_full} with C{Retry-After}.
        """
        self.admit(context())
        self.admit(context())
        request = FakeRequest()
        failure = self.failureResultOf(self.admit(context(), request), errors.ApiError)
        error = failure.value
        self.assertEqual((error.status, error.type, error.code),
                         (429, "rate_limit_error", "queue_full"))
        self.assertEqual(dict(error.headers), {"Retry-After": "1"})
        self.assertEqual(request.headers[b"x-queue-wait-ms"], b"0")

    def test_queue_timeout_is_503(self) -> None:
        """
        A call that waited C{max_wait} answers 503 C{queue_timeout} with
        C{Retry-After} from the observed service rate.
        """
        first = context()
        self.admit(first)
        self.queue.clock.advance(8)
        self.hook.release(first)  # one call of 8 s on one slot
        self.admit(context())
        request = FakeRequest()
        d = self.admit(context(), request)
        self.queue.clock.advance(10)
        error = self.failureResultOf(d, errors.ApiError).value
        self.assertEqual((error.status, error.type, error.code),
                         (503, "server_error", "queue_timeout"))
        self.assertEqual(dict(error.headers), {"Retry-After": "8"})
        self.assertEqual(request.headers[b"x-queue-wait-ms"], b"10000")

    def test_cancel_while_waiting(self) -> None:
        """
        When the client goes away while its call waits, the pipeline
        cancels admission: the call fails with C{CancelledError} (not an
        API error), is never granted, and releasing it frees nothing.
        """
        first = context()
        self.admit(first)
        ctx = context("key:bob")
        d = self.admit(ctx)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.hook.release(ctx)
        self.assertEqual((self.queue.busy, self.queue.waiting), (1, 0))
        self.hook.release(first)
        self.assertEqual((self.queue.busy, self.queue.stats.granted), (0, 1))

    def test_release_twice(self) -> None:
        """
        Releasing a call twice (or one that never got a slot) does not free
        a second slot.
        """
        first = context()
        self.admit(first)
        waiting = context("key:bob")
        self.admit(waiting)
        self.hook.release(first)
        self.hook.release(first)
        self.assertEqual((self.queue.busy, self.queue.waiting), (1, 0))
        self.hook.release(context())
        self.assertEqual(self.queue.busy, 1)

    def test_no_plan_no_slot(self) -> None:
        """
        Calls that do no model work (listing models) pass without taking
        or waiting for a slot.
        """
        self.admit(context())
        self.admit(context())
        request, ctx = FakeRequest(), context()
        self.successResultOf(defer.maybeDeferred(self.hook.admit, request, ctx, None))
        self.assertEqual(request.headers[b"x-queue-wait-ms"], b"0")
        self.assertEqual((self.queue.busy, self.queue.waiting), (1, 1))

    def test_queue_replaced(self) -> None:
        """
        After the hook's queue is replaced, a call admitted earlier gives
        its slot back to the queue that granted it.
        """
        ctx = context()
        self.admit(ctx)
        old, self.hook.queue = self.queue, SlotQueue(2, 1, 10.0, Clock())
        self.hook.release(ctx)
        self.assertEqual((old.busy, self.hook.queue.busy), (0, 0))

    def test_header_failure_releases(self) -> None:
        """
        If admission fails after the slot was granted, the slot is given
        back (the pipeline does not release a hook that did not admit).
        """

        class Broken(FakeRequest):
            def setHeader(self, name: bytes, value: bytes) -> None:
                raise RuntimeError("boom")

        self.failureResultOf(self.admit(context(), Broken()), RuntimeError)
        self.assertEqual(self.queue.busy, 0)


class PipelineTests(SynchronousTestCase):
    """
    The hook in the real request pipeline, over the in-memory harness.
    """

    def test_disconnected_waiter_never_reaches_ollama(self) -> None:
        """
        With one slot busy, a second call waits; its client hangs up, and
        when the slot frees up Ollama is not called for it. The first
        answer carries C{x-queue-wait-ms}.
        """
        harness = GatewayHarness()
        q = SlotQueue(1, 10, 60.0, harness.clock)
        harness.gateway.hooks.append(AdmissionHook(q))
        _, first = harness.request("POST", "/v1/chat/completions", CHAT)
        channel, second = harness.request("POST", "/v1/chat/completions", CHAT)
        self.assertEqual((len(harness.upstream.calls), q.waiting), (1, 1))
        channel.connectionLost(Failure(ierror.ConnectionDone()))
        self.assertEqual((q.waiting, q.stats.cancelled), (1 - 1, 1))
        harness.upstream.calls[0].respond(200, NATIVE_OK)
        response = harness.response(first)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["x-queue-wait-ms"], "0")
        self.assertEqual(len(harness.upstream.calls), 1)
        self.assertEqual((q.busy, q.free), (0, 1))
        self.assertEqual(second.value(), b"")
