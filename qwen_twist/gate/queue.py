# -*- test-case-name: tests.gate.test_queue -*-
"""
Fair admission to the GPU: a fixed number of model slots shared between
callers, with a bounded, fair waiting line in front of them.

Why: Ollama serves C{OLLAMA_NUM_PARALLEL} generations at once and queues the
rest internally, first come first served, with no notion of who is asking.
One client sending a hundred requests would then make everyone else wait
behind all hundred. So the gateway keeps its own line in front of Ollama,
sized to the upstream's parallelism, and chooses who goes next itself:

  - L{SlotQueue} grants at most C{slots} concurrent calls. Beyond that a call
    waits, at most C{max_wait} seconds, in a line at most C{max_depth} long;
    past either bound it is refused with a C{Retry-After} estimated from the
    observed service rate (L{SlotQueue.retry_after}).
  - The line is fair between owners (API keys, or client addresses for
    anonymous calls): deficit round-robin, each owner served in proportion
    to its weight (default 1.0), first in first out within one owner. A key
    with a hundred calls waiting and a key with one both get a turn per
    round, so the single call is granted within about one slot turn.
  - A waiter whose client hung up is cancelled (the pipeline cancels the
    admission Deferred) and leaves the line at once: it is never granted a
    slot, so it never reaches Ollama.
  - No owner holds more than C{per_owner} slots at once (by default one
    fewer than all of them): a tenant that opens as many streams as there
    are slots, and reads none, cannot lock every other tenant out. Its
    extra calls wait in line, skipped by the round-robin until one of its
    own calls ends; meanwhile a slot may stay free for other owners.

Every operation is O(1), or O(owners) when picking the next owner with
fractional weights: owners sit in an insertion-ordered ring and each
owner's waiters in an insertion-ordered dict, so nothing ever scans the
waiters, and a cancelled waiter is removed, not left behind as a corpse.

Several gateways in front of the same Ollama (L{SlotQueue.share}): the
line stays local to each gateway, but a waiter is granted only once a
lease on one of the upstream's slots is taken from a semaphore shared
through the limits store (L{qwen_twist.store.interface.ISlotLock}), so
the gateways together never send more than C{slots} generations. While
every shared slot is taken the queue asks again every C{poll_interval}
and whenever one of its own calls ends.

L{AdmissionHook} is the request pipeline's side (see
L{qwen_twist.pipeline}): it waits for a slot, reports the wait in
C{x-queue-wait-ms}, maps refusals to 429/503 L{qwen_twist.errors.ApiError}s
and frees the slot when the call ends. Time comes from an injected clock
(an C{IReactorTime}, a C{Clock} in tests).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass
from functools import partial
from typing import Any, Deque, Dict, Mapping, Optional, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from qwen_twist import errors
from qwen_twist.context import CallContext
from qwen_twist.interfaces import IAdmissionHook

#: C{Retry-After} (seconds) when no call has finished recently, so the
#: service rate is unknown.
DEFAULT_RETRY_AFTER = 1.0

#: Upper bound for C{Retry-After}: the OpenAI SDKs honour it only up to
#: 60 s and fall back to their own backoff beyond.
MAX_RETRY_AFTER = 60.0

#: How many recent service times the rate estimate averages, and how old
#: (seconds) a sample may be before it no longer counts.
RATE_SAMPLES = 64
RATE_WINDOW = 300.0

# Float slack for deficit arithmetic (ten weights of 0.1 make one turn).
_EPSILON = 1e-9


class QueueRefused(Exception):
    """
    The queue did not grant a slot.

    @ivar retry_after: seconds after which trying again is likely to work.
    """

    def __init__(self, retry_after: float) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


class QueueFull(QueueRefused):
    """
    C{max_depth} calls were already waiting.
    """


class QueueTimeout(QueueRefused):
    """
    The call waited C{max_wait} seconds without being granted a slot.

    @ivar waited: how long it waited (seconds).
    """

    def __init__(self, retry_after: float, waited: float = 0.0) -> None:
        super().__init__(retry_after)
        self.waited = waited


@dataclass
class QueueStats:
    """
    Counters since start (for metrics).

    @ivar granted: slots granted, at once or after waiting.
    @ivar released: granted slots given back.
    @ivar rejected_full: calls refused because the line was full.
    @ivar rejected_timeout: waiters refused after C{max_wait}.
    @ivar cancelled: waiters whose client went away before their turn.
    """

    granted: int = 0
    released: int = 0
    rejected_full: int = 0
    rejected_timeout: int = 0
    cancelled: int = 0


class Ticket:
    """
    One granted slot; give it back with L{SlotQueue.release} (doing so
    twice is harmless).

    @ivar owner: who asked (C{key:alice}, C{ip:192.0.2.1}, ...).
    @ivar queued_at: when the slot was asked for.
    @ivar granted_at: when it was granted.
    @ivar queue: the L{SlotQueue} that granted it.
    @ivar released: whether it was given back.
    @ivar lease: C{(lock, lease)} for a shared slot, or L{None} (slots not
        shared, or granted on the local count while the shared store was
        unreachable).
    """

    __slots__ = ("owner", "queued_at", "granted_at", "queue", "released", "lease")

    def __init__(self, owner: str, queued_at: float, granted_at: float, queue: SlotQueue,
                 lease: Any = None) -> None:
        self.owner = owner
        self.queued_at = queued_at
        self.granted_at = granted_at
        self.queue = queue
        self.released = False
        self.lease = lease

    @property
    def wait(self) -> float:
        """
        Seconds spent waiting for the slot.
        """
        return self.granted_at - self.queued_at

    def __repr__(self) -> str:
        return "<Ticket %s wait=%.3fs released=%s>" % (self.owner, self.wait, self.released)


class _Waiter:
    __slots__ = ("owner", "queued_at", "deferred", "timer")

    def __init__(self, owner: str, queued_at: float) -> None:
        self.owner = owner
        self.queued_at = queued_at
        self.deferred: Optional[Deferred] = None
        self.timer: Any = None


class _Backlog:
    """
    One owner's waiters, oldest first, and its deficit-round-robin credit.
    """

    __slots__ = ("waiters", "deficit", "weight")

    def __init__(self, weight: float) -> None:
        self.waiters: OrderedDict[_Waiter, None] = OrderedDict()
        self.deficit = 0.0
        self.weight = weight


class SlotQueue:
    """
    N slots (Ollama's C{OLLAMA_NUM_PARALLEL}) shared fairly between
    identities.

    Invariants, whatever the interleaving of grants, releases, cancellations
    and timeouts: C{busy} counts granted, unreleased tickets; C{busy <= slots}
    (except right after L{configure} shrank C{slots}, until enough calls
    end); no owner holds more than C{per_owner} tickets (same exception); a
    slot is never free while someone who may take it waits; a waiter that
    was cancelled or timed out is never granted.

    @ivar busy: slots granted and not yet released.
    @ivar waiting: calls waiting for a slot.
    @ivar stats: a L{QueueStats}.
    """

    #: The C{ISlotLock} shared with other gateways, or L{None}.
    shared: Any = None

    def __init__(
        self,
        slots: int,
        max_depth: int,
        max_wait: Optional[float],
        clock: Any,
        weights: Optional[Mapping[str, float]] = None,
        per_owner: int = 0,
    ) -> None:
        """
        @param slots: calls served at once (at least 1).
        @param per_owner: slots one owner may hold at once; C{0} = all.
        @param max_depth: calls allowed to wait; C{0} refuses at once when
            every slot is busy.
        @param max_wait: seconds a call may wait, or L{None} for no limit.
        @param clock: an C{IReactorTime} (C{seconds}, C{callLater}).
        @param weights: owner -> share of the slots relative to the others
            (positive; owners not named weigh 1.0).
        """
        self.clock = clock
        self.busy = 0
        self.waiting = 0
        self.stats = QueueStats()
        # The round-robin ring: owners with waiters, the next one first.
        self._ring: OrderedDict[str, _Backlog] = OrderedDict()
        self._dispatching = False
        # (released_at, service seconds) of recent calls, and their sum.
        self._samples: Deque[Tuple[float, float]] = deque()
        self._sample_total = 0.0
        #: owner -> tickets it holds now.
        self.running: Dict[str, int] = {}
        # Shared slots: an ask in flight, and the timer of the next one.
        self._asking = False
        self._poll: Any = None
        self.configure(slots, max_depth, max_wait, weights, per_owner)

    def share(self, lock: Any) -> None:
        """
        Grant only with a lease from C{lock} (an C{ISlotLock}), or grant
        on the local count alone when C{lock} is L{None}.
        """
        self.shared = lock

    def configure(
        self,
        slots: int,
        max_depth: int,
        max_wait: Optional[float],
        weights: Optional[Mapping[str, float]] = None,
        per_owner: int = 0,
    ) -> None:
        """
        Take new limits (a configuration reload) without forgetting the
        calls in flight or in line. More slots are granted to waiters at
        once; fewer slots take effect as running calls end. A new
        C{max_wait} applies to calls that queue from now on.

        @raise ValueError: a limit out of range.
        """
        if int(slots) != slots or slots < 1:
            raise ValueError("slots must be a whole number >= 1, not %r" % (slots,))
        if int(max_depth) != max_depth or max_depth < 0:
            raise ValueError("max_depth must be a whole number >= 0, not %r" % (max_depth,))
        if max_wait is not None and not max_wait > 0:
            raise ValueError("max_wait must be > 0 or None, not %r" % (max_wait,))
        weights = dict(weights or {})
        for owner, weight in weights.items():
            if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
                raise ValueError("weight of %r must be a positive number, not %r" % (owner, weight))
        if int(per_owner) != per_owner or per_owner < 0:
            raise ValueError("per_owner must be a whole number >= 0, not %r" % (per_owner,))
        self.slots = int(slots)
        self.per_owner = int(per_owner) or self.slots
        self.max_depth = int(max_depth)
        self.max_wait = max_wait
        self.weights = weights
        for owner, backlog in self._ring.items():
            backlog.weight = weights.get(owner, 1.0)
        self._dispatch()

    @property
    def free(self) -> int:
        """
        Slots not granted (negative only after a shrinking L{configure}).
        """
        return self.slots - self.busy

    def acquire(self, owner: str) -> Deferred:
        """
        Ask for a slot for C{owner}.

        @return: a Deferred that fires with a L{Ticket} when a slot is
            granted (at once if one is free and nobody waits), or fails with
            L{QueueFull} (at once) or L{QueueTimeout} (after C{max_wait}).
            Cancelling it takes the call out of the line for good.
        """
        now = self.clock.seconds()
        free = self.busy < self.slots and not self.waiting and self._may_run(owner)
        if free and self.shared is None:
            return succeed(self._grant(owner, now, now))
        if self.waiting >= self.max_depth and not free:
            self.stats.rejected_full += 1
            return fail(QueueFull(self.retry_after()))
        waiter = _Waiter(owner, now)
        waiter.deferred = d = Deferred(partial(self._cancelled, waiter))
        if self.max_wait is not None:
            waiter.timer = self.clock.callLater(self.max_wait, self._timed_out, waiter)
        backlog = self._ring.get(owner)
        if backlog is None:
            backlog = self._ring[owner] = _Backlog(self.weights.get(owner, 1.0))
        backlog.waiters[waiter] = None
        self.waiting += 1
        if self.busy < self.slots:
            # Slots are free but held back from capped owners: this one
            # may be able to take one now (fairly, through the ring).
            self._dispatch()
        return d

    def _may_run(self, owner: str) -> bool:
        return self.running.get(owner, 0) < self.per_owner

    def _grant(self, owner: str, queued_at: float, now: float, lease: Any = None) -> Ticket:
        self.busy += 1
        self.stats.granted += 1
        self.running[owner] = self.running.get(owner, 0) + 1
        return Ticket(owner, queued_at, now, self, lease)

    def release(self, ticket: Ticket) -> None:
        """
        Give a slot back and grant it to the next waiter. Releasing a ticket
        again does nothing.

        @raise ValueError: C{ticket} was granted by another queue.
        """
        if ticket.queue is not self:
            raise ValueError("%r was not granted by this queue" % (ticket,))
        if ticket.released:
            return
        ticket.released = True
        if ticket.lease is not None:
            lock, lease = ticket.lease
            lock.release(lease)
        if self._poll is not None:
            # Our own slot just came back: ask now rather than at the poll.
            if self._poll.active():
                self._poll.cancel()
            self._poll = None
        self.busy -= 1
        held = self.running.get(ticket.owner, 0) - 1
        if held > 0:
            self.running[ticket.owner] = held
        else:
            self.running.pop(ticket.owner, None)
        self.stats.released += 1
        now = self.clock.seconds()
        self._record(now, now - ticket.granted_at)
        self._dispatch()

    def retry_after(self) -> float:
        """
        Seconds until a call arriving now would probably get a slot:
        C{(waiting + 1) / rate}, where the rate is C{slots} divided by the
        mean service time of recent calls, i.e. the completions per second
        while every slot is busy (which is the case whenever this is
        asked). Wall-clock throughput would undercount it right after an
        idle spell, just when a burst fills the line. Between 1 and
        L{MAX_RETRY_AFTER}; L{DEFAULT_RETRY_AFTER} without recent samples.
        """
        rate = self.service_rate()
        estimate = DEFAULT_RETRY_AFTER if rate is None else (self.waiting + 1) / rate
        return min(MAX_RETRY_AFTER, max(1.0, estimate))

    def service_rate(self) -> Optional[float]:
        """
        Calls completed per second with every slot busy, from the last
        L{RATE_SAMPLES} calls of the last L{RATE_WINDOW} seconds; L{None}
        when there are none (or they took no time at all).
        """
        samples = self._samples
        horizon = self.clock.seconds() - RATE_WINDOW
        while samples and samples[0][0] < horizon:
            self._sample_total -= samples.popleft()[1]
        if not samples:
            self._sample_total = 0.0
            return None
        mean = self._sample_total / len(samples)
        if mean <= _EPSILON:
            return None
        return self.slots / mean

    def _record(self, now: float, service: float) -> None:
        samples = self._samples
        samples.append((now, service))
        self._sample_total += service
        if len(samples) > RATE_SAMPLES:
            self._sample_total -= samples.popleft()[1]

    def _remove(self, waiter: _Waiter) -> bool:
        """
        Take a waiter out of the line (and stop its timer).

        @return: whether it was still in line.
        """
        backlog = self._ring.get(waiter.owner)
        if backlog is None or waiter not in backlog.waiters:
            return False
        del backlog.waiters[waiter]
        if not backlog.waiters:
            del self._ring[waiter.owner]
        self.waiting -= 1
        if waiter.timer is not None:
            if waiter.timer.active():
                waiter.timer.cancel()
            waiter.timer = None
        return True

    def _cancelled(self, waiter: _Waiter, deferred: Deferred) -> None:
        # The Deferred's canceller: its client is gone. Twisted fails the
        # Deferred with CancelledError once this returns.
        if self._remove(waiter):
            self.stats.cancelled += 1

    def _timed_out(self, waiter: _Waiter) -> None:
        waiter.timer = None
        if self._remove(waiter):
            self.stats.rejected_timeout += 1
            assert waiter.deferred is not None
            waited = self.clock.seconds() - waiter.queued_at
            waiter.deferred.errback(QueueTimeout(self.retry_after(), waited))

    def _dispatch(self) -> None:
        """
        Grant free slots to waiters, fairly. Granting runs the waiter's
        callbacks, which may release or acquire re-entrantly; those calls
        only change the counts and leave the granting to this loop.
        """
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self.waiting and self.busy < self.slots:
                if self.shared is not None:
                    # A lease first; the answer grants (or not) and comes
                    # back here. It may come at once (store unreachable).
                    if self._asking or self._poll is not None:
                        break
                    if not any(self._may_run(owner) for owner in self._ring):
                        break
                    self._ask_shared()
                    if self._asking or self._poll is not None:
                        break
                    continue
                if not self._grant_next(None):
                    # Everyone waiting already holds their share.
                    break
        finally:
            self._dispatching = False

    def _grant_next(self, lease: Any) -> bool:
        """
        Grant the next waiter (fairly), with C{lease} if shared.

        @return: whether one could be granted.
        """
        waiter = self._next_waiter()
        if waiter is None:
            return False
        if waiter.timer is not None:
            if waiter.timer.active():
                waiter.timer.cancel()
            waiter.timer = None
        ticket = self._grant(waiter.owner, waiter.queued_at, self.clock.seconds(), lease)
        assert waiter.deferred is not None
        waiter.deferred.callback(ticket)
        return True

    def _ask_shared(self) -> None:
        self._asking = True
        lock = self.shared
        d = lock.acquire(self.slots)
        d.addCallbacks(self._cbLease, self._ebLease, callbackArgs=(lock,), errbackArgs=(lock,))

    def _cbLease(self, lease: Any, lock: Any) -> None:
        self._asking = False
        if lease is None:
            # Every shared slot is taken: ask again soon (a release by
            # another gateway is not announced).
            self._poll = self.clock.callLater(lock.poll_interval, self._poll_again)
            return
        if not (self.waiting and self.busy < self.slots and lock is self.shared
                and self._grant_next((lock, lease))):
            lock.release(lease)
        self._dispatch()

    def _ebLease(self, failure: Failure, lock: Any) -> None:
        self._asking = False
        if lock.fail_open and self.waiting and self.busy < self.slots \
                and self._grant_next(None):
            # Unreachable store, fail-open: this gateway's own count rules.
            self._dispatch()
        else:
            self._poll = self.clock.callLater(lock.poll_interval, self._poll_again)

    def _poll_again(self) -> None:
        self._poll = None
        self._dispatch()

    def _next_waiter(self) -> Optional[_Waiter]:
        """
        Deficit round-robin: the owner at the head of the ring is credited
        its weight when it has less than one turn of credit, serves one
        waiter per turn, and goes to the back once its credit is spent. An
        owner whose line empties leaves the ring and loses its credit. An
        owner at its C{per_owner} share is passed over without credit;
        L{None} when every waiting owner is.
        """
        ring = self._ring
        if not any(self._may_run(owner) for owner in ring):
            return None
        while True:
            owner = next(iter(ring))
            backlog = ring[owner]
            if not self._may_run(owner):
                ring.move_to_end(owner)
                continue
            if backlog.deficit < 1.0 - _EPSILON:
                backlog.deficit += backlog.weight
                if backlog.deficit < 1.0 - _EPSILON:
                    ring.move_to_end(owner)
                    continue
            backlog.deficit -= 1.0
            waiter = backlog.waiters.popitem(last=False)[0]
            self.waiting -= 1
            if not backlog.waiters:
                del ring[owner]
            elif backlog.deficit < 1.0 - _EPSILON:
                ring.move_to_end(owner)
            return waiter



@implementer(IAdmissionHook)
class AdmissionHook:
    """
    The pipeline hook: admit() waits for a slot (owner = C{ctx.identity},
    or C{"ip:" + ctx.client_ip} for anonymous calls), sets
    C{ctx.queue_wait_ms} and the response header C{x-queue-wait-ms}
    when granted; refusals become L{errors.ApiError} 429 (queue full, code
    C{queue_full}) or 503 (waited too long, code C{queue_timeout}), both
    with C{Retry-After}; release(ctx) frees the ticket if one was granted.

    Calls without a plan (the model list, one model's details), or whose
    plan says C{needs_slot = False} (Ollama's native listing and management
    routes), cost the GPU nothing and pass without a slot.

    @ivar queue: the L{SlotQueue} for new calls; may be replaced (a
        ticket is always given back to the queue that granted it).
    """

    def __init__(self, queue: SlotQueue) -> None:
        self.queue = queue

    def admit(self, request: Any, ctx: CallContext, plan: Any) -> Any:
        if plan is None or not getattr(plan, "needs_slot", True):
            request.setHeader(b"x-queue-wait-ms", b"0")
            return None
        owner = ctx.identity or "ip:" + ctx.client_ip
        d = self.queue.acquire(owner)
        d.addCallbacks(
            self._granted, self._refused,
            callbackArgs=(request, ctx), errbackArgs=(request, ctx),
        )
        return d

    def _granted(self, ticket: Ticket, request: Any, ctx: CallContext) -> None:
        ctx.queue_ticket = ticket
        wait_ms = ticket.wait * 1000.0
        ctx.queue_wait_ms = wait_ms
        try:
            request.setHeader(b"x-queue-wait-ms", b"%d" % (round(wait_ms),))
        except BaseException:
            # Admission fails, and the pipeline releases only hooks that
            # admitted: give the slot back here.
            self.release(ctx)
            raise

    def _refused(self, failure: Failure, request: Any, ctx: CallContext) -> None:
        failure.trap(QueueFull, QueueTimeout)
        refusal = failure.value
        waited_ms = 0.0
        if isinstance(refusal, QueueTimeout):
            waited_ms = refusal.waited * 1000.0
            error = errors.queue_timeout(refusal.retry_after)
        else:
            error = errors.queue_full(refusal.retry_after)
        ctx.queue_wait_ms = waited_ms
        request.setHeader(b"x-queue-wait-ms", b"%d" % (round(waited_ms),))
        raise error

    def release(self, ctx: CallContext) -> None:
        ticket, ctx.queue_ticket = ctx.queue_ticket, None
        if ticket is not None:
            ticket.queue.release(ticket)
