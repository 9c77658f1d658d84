# -*- test-case-name: tests.gate.test_ratelimit -*-
"""
Token buckets: how many requests (or connections, or model tokens) a key may
spend, and how long it must wait when it has spent them.

Why this shape (after Synapse's C{Ratelimiter}, "leaky bucket as a meter"):
a bucket of capacity C{burst} refills at C{rate} tokens per second. Nothing
leaks on a timer; each bucket is a single float, the instant at which it will
be full again (C{full_at}, the "theoretical arrival time" of the generic cell
rate algorithm). The number of tokens at C{now} is derived from it:

    tokens(now) = burst - (full_at - now) * rate      (capped at burst)

so taking C{n} tokens is C{full_at = max(full_at, now) + n / rate}, one
dictionary lookup and a few float operations. A bucket whose C{full_at} is in
the past is full, which is exactly the state of a key never seen: L{prune}
drops such buckets and nothing changes for anyone, so memory is bounded by
the keys active within the last C{burst / rate} seconds, not by every
address ever seen.

Time is passed in as a float from an injected clock (C{reactor.seconds()});
this module does no I/O and imports nothing from Twisted.

A C{charge} beyond the tokens left puts a bucket in debt (C{full_at} further
than C{burst / rate} ahead): the key's next requests wait until the debt is
paid back. That is how the token budget settles a request that used more
model tokens than it reserved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Hashable

# Float slack, so that 30 requests per 60 s admits exactly 30 in a burst and
# the 31st after exactly 2 s, whatever the rounding of 30 / 0.5.
_EPSILON = 1e-9


@dataclass
class Decision:
    """
    The outcome of asking a bucket for tokens; enough to answer a request and
    fill in OpenAI's C{x-ratelimit-*} headers.

    @ivar allowed: whether the tokens were granted.
    @ivar limit: the bucket capacity (its burst), for C{x-ratelimit-limit-*}.
    @ivar remaining: whole tokens left after this decision, never negative.
    @ivar reset_after: seconds until the bucket is full again
        (C{x-ratelimit-reset-*}).
    @ivar retry_after: seconds until this request would be granted; C{0.0}
        when allowed. C{Retry-After} is its ceiling (L{qwen_twist.errors.retry_after}).
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float


class TokenBuckets:
    """
    One token bucket per key, created lazily, pruned when idle (full again).

    A cost larger than the whole capacity is granted only when the bucket is
    full, and leaves it in debt: otherwise such a request could never pass.

    @ivar rate: tokens added per second; C{0} means unlimited.
    @ivar burst: the capacity.
    """

    def __init__(self, rate: float, burst: float) -> None:
        """
        @param rate: tokens per second; C{0} (or less) means unlimited, every
            request is allowed and no state is kept.
        @param burst: the capacity, at least 1 when limited.
        """
        if rate > 0 and burst < 1:
            raise ValueError("burst must be at least 1, got %r" % (burst,))
        self.rate = float(rate)
        self.burst = float(burst)
        self._unlimited = rate <= 0
        self._limit = int(burst)
        # Seconds one token takes to come back, and to refill the whole bucket.
        self._period = 1.0 / rate if rate > 0 else 0.0
        self._horizon = self.burst * self._period
        self._full_at: Dict[Hashable, float] = {}

    def __len__(self) -> int:
        """
        The number of buckets held (keys not known to be full).
        """
        return len(self._full_at)

    def _decision(self, allowed: bool, full_at: float, now: float, retry_after: float) -> Decision:
        ahead = full_at - now
        if ahead <= 0.0:
            return Decision(allowed, self._limit, self._limit, 0.0, retry_after)
        remaining = int(math.floor(self.burst - ahead * self.rate + _EPSILON))
        return Decision(allowed, self._limit, max(remaining, 0), ahead, retry_after)

    def take(self, key: Hashable, now: float, cost: float = 1.0) -> Decision:
        """
        Take C{cost} tokens from C{key}'s bucket if it holds them.

        @return: the L{Decision}; a refusal takes nothing.
        """
        if self._unlimited:
            return Decision(True, self._limit, self._limit, 0.0, 0.0)
        full_at = self._full_at.get(key, now)
        if full_at < now:
            full_at = now
        needed = cost if cost < self.burst else self.burst
        # Tokens left >= needed  <=>  full_at - now <= (burst - needed) / rate
        wait = full_at - now - (self.burst - needed) * self._period
        if wait > _EPSILON:
            return self._decision(False, full_at, now, wait)
        full_at += cost * self._period
        if full_at > now:
            self._full_at[key] = full_at
        return self._decision(True, full_at, now, 0.0)

    def peek(self, key: Hashable, now: float) -> Decision:
        """
        What L{take} of one token would decide, without taking it; the
        remaining count is the tokens held now.
        """
        if self._unlimited:
            return Decision(True, self._limit, self._limit, 0.0, 0.0)
        full_at = self._full_at.get(key, now)
        if full_at < now:
            full_at = now
        wait = full_at - now - (self.burst - 1.0) * self._period
        if wait > _EPSILON:
            return self._decision(False, full_at, now, wait)
        return self._decision(True, full_at, now, 0.0)

    def refund(self, key: Hashable, now: float, amount: float) -> None:
        """
        Give C{amount} tokens back (a request that turned out cheaper than
        reserved); never above the capacity.
        """
        full_at = self._full_at.get(key)
        if full_at is None:
            return
        full_at -= amount * self._period
        if full_at <= now:
            del self._full_at[key]
        else:
            self._full_at[key] = full_at

    def charge(self, key: Hashable, now: float, amount: float) -> None:
        """
        Take C{amount} tokens unconditionally. Below zero the bucket is in
        debt and the key's next requests wait until it is paid back.
        """
        if self._unlimited or amount <= 0:
            return
        full_at = self._full_at.get(key, now)
        if full_at < now:
            full_at = now
        self._full_at[key] = full_at + amount * self._period

    def prune(self, now: float) -> int:
        """
        Drop every bucket that is full again; they are indistinguishable
        from keys never seen. Linear in the buckets held: call it from a
        timer, not per request.

        @return: how many were dropped.
        """
        before = len(self._full_at)
        # A new table rather than deletions: a dict never gives back the
        # memory of deleted entries, and a flood of addresses would keep it.
        self._full_at = {key: full_at for key, full_at in self._full_at.items() if full_at > now}
        return before - len(self._full_at)


def window_buckets(requests: int, window: float) -> TokenBuckets:
    """
    Buckets for "C{requests} per C{window} seconds": capacity C{requests},
    refilled at C{requests / window} per second, so a key may spend the
    whole allowance at once and then one more every C{window / requests}
    seconds, never more than C{requests} in any C{window}-long span after a
    full bucket. C{requests} 0 means unlimited.
    """
    if requests <= 0:
        return TokenBuckets(0.0, 0.0)
    return TokenBuckets(requests / window, requests)


class TokenBudget:
    """
    A budget of model tokens (prompt + completion) per key per minute.

    A request reserves what it may cost before it is sent upstream (the
    prompt estimate plus C{max_tokens}) and is refused when the budget cannot
    cover it; when Ollama reports C{prompt_eval_count} + C{eval_count},
    L{settle} refunds the difference, or charges the excess as debt.
    A reservation larger than the whole budget passes only when the budget
    is untouched.
    """

    def __init__(self, tokens_per_minute: int) -> None:
        """
        @param tokens_per_minute: the budget; C{0} turns it off.
        """
        self.tokens_per_minute = tokens_per_minute
        self.buckets = TokenBuckets(tokens_per_minute / 60.0, tokens_per_minute)

    def __len__(self) -> int:
        return len(self.buckets)

    def reserve(self, key: Hashable, now: float, amount: int) -> Decision:
        """
        Reserve C{amount} tokens for a request about to be sent.
        """
        return self.buckets.take(key, now, amount)

    def settle(self, key: Hashable, now: float, reserved: int, actual: int) -> None:
        """
        Replace a reservation by what the request really used.
        """
        difference = reserved - actual
        if difference > 0:
            self.buckets.refund(key, now, difference)
        elif difference < 0:
            self.buckets.charge(key, now, -difference)

    def peek(self, key: Hashable, now: float) -> Decision:
        """
        The budget's state for the C{x-ratelimit-*-tokens} headers.
        """
        return self.buckets.peek(key, now)

    def prune(self, now: float) -> int:
        return self.buckets.prune(now)
