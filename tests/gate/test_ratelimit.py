"""
Tests for L{qwen_twist.gate.ratelimit}: token buckets, windows and the token
budget, with time taken from a L{Clock} (no sleeps).
"""

from __future__ import annotations

import sys

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from qwen_twist import errors
from qwen_twist.gate.ratelimit import Decision, TokenBudget, TokenBuckets, window_buckets


class TokenBucketsTests(SynchronousTestCase):
    """
    One bucket per key: burst, refill, refusal, bookkeeping.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        # The seed's per-IP limit: 5 per second, burst 10.
        self.buckets = TokenBuckets(5.0, 10)

    def take(self, key: str = "a", cost: float = 1.0) -> Decision:
        return self.buckets.take(key, self.clock.seconds(), cost)

    def test_burst(self) -> None:
        """
        A fresh key may spend the whole burst at once, and not one more.
        """
        decisions = [self.take() for _ in range(11)]
        self.assertEqual([d.allowed for d in decisions], [True] * 10 + [False])
        self.assertEqual([d.remaining for d in decisions[:10]], list(range(9, -1, -1)))
        self.assertEqual(decisions[-1].remaining, 0)
        self.assertEqual(decisions[0].limit, 10)

    def test_refill(self) -> None:
        """
        Tokens come back at the configured rate: one every 0.2 s at 5/s.
        """
        for _ in range(10):
            self.take()
        self.assertFalse(self.take().allowed)
        self.clock.advance(0.19)
        self.assertFalse(self.take().allowed)
        self.clock.advance(0.01)
        self.assertTrue(self.take().allowed)
        self.assertFalse(self.take().allowed)
        self.clock.advance(1.0)
        self.assertEqual([self.take().allowed for _ in range(6)], [True] * 5 + [False])

    def test_refill_capped_at_burst(self) -> None:
        """
        A long idle time refills the bucket to its capacity, not beyond.
        """
        self.take()
        self.clock.advance(3600)
        self.assertEqual(sum(self.take().allowed for _ in range(20)), 10)

    def test_retry_after_from_bucket(self) -> None:
        """
        A refusal says how long until a token is back, computed from the
        bucket: 0.2 s after an exhausted burst, less once time has passed;
        the Retry-After header is that time rounded up.
        """
        for _ in range(10):
            self.take()
        refused = self.take()
        self.assertFalse(refused.allowed)
        self.assertAlmostEqual(refused.retry_after, 0.2)
        self.assertAlmostEqual(refused.reset_after, 2.0)
        self.assertEqual(errors.retry_after(refused.retry_after), "1")
        self.clock.advance(0.15)
        self.assertAlmostEqual(self.take().retry_after, 0.05)

    def test_retry_after_header_rounds_up(self) -> None:
        """
        Retry-After is an integer number of seconds, never early: 2.1 s
        becomes 3, exactly 2 s stays 2, and an allowed request says 0.
        """
        self.assertEqual(errors.retry_after(Decision(False, 1, 0, 5.0, 2.1).retry_after), "3")
        self.assertEqual(errors.retry_after(Decision(False, 1, 0, 5.0, 2.0).retry_after), "2")
        self.assertEqual(errors.retry_after(Decision(False, 1, 0, 5.0, 0.01).retry_after), "1")

    def test_allowed_decision(self) -> None:
        """
        An allowed request reports no wait and the time until the bucket is
        full again.
        """
        decision = self.take()
        self.assertEqual(decision, Decision(True, 10, 9, 0.2, 0.0))

    def test_keys_independent(self) -> None:
        """
        One key's exhausted bucket does not limit another key.
        """
        for _ in range(10):
            self.take("a")
        self.assertFalse(self.take("a").allowed)
        self.assertTrue(self.take("b").allowed)

    def test_refusal_takes_nothing(self) -> None:
        """
        Refused requests do not dig the hole deeper: hammering while limited
        does not delay the next token.
        """
        for _ in range(10):
            self.take()
        for _ in range(100):
            self.take()
        self.clock.advance(0.2)
        self.assertTrue(self.take().allowed)

    def test_cost(self) -> None:
        """
        A request may cost several tokens; it is refused when fewer are
        left, with the wait for the missing ones.
        """
        self.assertTrue(self.take(cost=7).allowed)
        refused = self.take(cost=4)
        self.assertFalse(refused.allowed)
        self.assertAlmostEqual(refused.retry_after, 0.2)
        self.assertTrue(self.take(cost=3).allowed)

    def test_cost_above_capacity(self) -> None:
        """
        A cost larger than the whole bucket passes only when the bucket is
        full, and leaves it in debt; otherwise it could never pass.
        """
        decision = self.take(cost=15)
        self.assertTrue(decision.allowed)
        self.assertEqual(decision.remaining, 0)
        self.assertAlmostEqual(decision.reset_after, 3.0)
        self.clock.advance(0.5)
        self.assertFalse(self.take().allowed)
        self.assertFalse(self.take(cost=15).allowed)
        # 5 tokens of debt take 1 s to repay, the wanted token 0.2 s more.
        self.clock.advance(0.69)
        self.assertFalse(self.take().allowed)
        self.clock.advance(0.01)
        self.assertTrue(self.take().allowed)

    def test_peek(self) -> None:
        """
        Peeking reports the state without spending a token.
        """
        for _ in range(3):
            self.take()
        peeked = self.buckets.peek("a", self.clock.seconds())
        self.assertEqual((peeked.allowed, peeked.remaining), (True, 7))
        self.assertEqual(self.buckets.peek("a", self.clock.seconds()).remaining, 7)
        for _ in range(7):
            self.take()
        peeked = self.buckets.peek("a", self.clock.seconds())
        self.assertFalse(peeked.allowed)
        self.assertAlmostEqual(peeked.retry_after, 0.2)
        self.assertEqual(self.buckets.peek("new", 0.0).remaining, 10)
        self.assertEqual(len(self.buckets), 1)

    def test_refund(self) -> None:
        """
        Refunded tokens can be spent again at once, but a refund never fills
        a bucket beyond its capacity.
        """
        for _ in range(10):
            self.take()
        self.buckets.refund("a", self.clock.seconds(), 2)
        self.assertTrue(self.take().allowed)
        self.assertTrue(self.take().allowed)
        self.assertFalse(self.take().allowed)
        self.buckets.refund("a", self.clock.seconds(), 1000)
        # Full again: nothing left to remember.
        self.assertEqual(len(self.buckets), 0)
        self.assertEqual(sum(self.take().allowed for _ in range(20)), 10)
        self.buckets.refund("never-seen", self.clock.seconds(), 5)
        self.assertEqual(sum(self.take("never-seen").allowed for _ in range(20)), 10)

    def test_charge_debt(self) -> None:
        """
        A charge beyond the tokens left is debt: the key waits until it is
        paid back, and the wait is what a refusal reports.
        """
        self.buckets.charge("a", self.clock.seconds(), 15)
        refused = self.take()
        self.assertFalse(refused.allowed)
        # 5 tokens of debt plus the one wanted, at 5 per second.
        self.assertAlmostEqual(refused.retry_after, 1.2)
        self.assertEqual(refused.remaining, 0)
        self.clock.advance(1.19)
        self.assertFalse(self.take().allowed)
        self.clock.advance(0.01)
        self.assertTrue(self.take().allowed)

    def test_unlimited(self) -> None:
        """
        Rate 0 means unlimited: everything passes and no state is kept.
        """
        buckets = TokenBuckets(0, 0)
        self.assertTrue(all(buckets.take("a", 0.0).allowed for _ in range(1000)))
        buckets.charge("a", 0.0, 10 ** 6)
        self.assertTrue(buckets.take("a", 0.0).allowed)
        self.assertEqual(len(buckets), 0)

    def test_burst_below_one_rejected(self) -> None:
        """
        A limited bucket that could never hold a whole token is a
        programming error, reported at construction.
        """
        self.assertRaises(ValueError, TokenBuckets, 1.0, 0.5)

    def test_prune_drops_only_full_buckets(self) -> None:
        """
        Pruning forgets buckets that are full again (indistinguishable from
        new keys) and keeps those still refilling.
        """
        self.take("a")
        self.clock.advance(0.1)
        for _ in range(10):
            self.take("b")
        self.assertEqual(len(self.buckets), 2)
        self.clock.advance(0.1)
        self.assertEqual(self.buckets.prune(self.clock.seconds()), 1)
        self.assertEqual(len(self.buckets), 1)
        self.assertFalse(self.take("b").allowed)
        self.clock.advance(2.0)
        self.assertEqual(self.buckets.prune(self.clock.seconds()), 1)
        self.assertEqual(len(self.buckets), 0)

    def test_prune_many_addresses(self) -> None:
        """
        100,000 distinct addresses, each seen once, leave nothing behind
        once their buckets are full again: memory follows the recent
        addresses, not every address ever seen.
        """
        buckets = TokenBuckets(5.0, 10)
        take = buckets.take
        for i in range(100000):
            take("10.%d.%d.%d" % (i >> 16, (i >> 8) & 255, i & 255), i * 1e-5)
        self.assertEqual(len(buckets), 100000)
        table_size = sys.getsizeof(buckets._full_at)
        self.assertEqual(buckets.prune(0.1), 0)
        self.assertEqual(buckets.prune(1.2), 100000)
        self.assertEqual(len(buckets), 0)
        # The table itself is let go too (a dict never shrinks in place).
        self.assertLess(sys.getsizeof(buckets._full_at), table_size // 100)


class WindowBucketsTests(SynchronousTestCase):
    """
    "N requests per window" as a bucket.
    """

    def test_thirty_per_minute(self) -> None:
        """
        30 requests per 60 s: 30 at once, the 31st refused with a 2 s wait,
        then one more every 2 s.
        """
        clock = Clock()
        buckets = window_buckets(30, 60.0)
        self.assertEqual(sum(buckets.take("k", 0.0).allowed for _ in range(30)), 30)
        refused = buckets.take("k", 0.0)
        self.assertFalse(refused.allowed)
        self.assertAlmostEqual(refused.retry_after, 2.0)
        self.assertEqual(errors.retry_after(refused.retry_after), "2")
        self.assertAlmostEqual(refused.reset_after, 60.0)
        self.assertEqual(refused.limit, 30)
        clock.advance(2.0)
        self.assertTrue(buckets.take("k", clock.seconds()).allowed)
        self.assertFalse(buckets.take("k", clock.seconds()).allowed)

    def test_never_more_than_the_window_allows(self) -> None:
        """
        A client retrying every second gets the burst of 30 plus one every
        2 s (29 more) in the first minute, and 30 in every later minute.
        """
        buckets = window_buckets(30, 60.0)
        allowed = [0] * 5
        for second in range(300):
            for _ in range(10):
                if buckets.take("k", float(second)).allowed:
                    allowed[second // 60] += 1
        self.assertEqual(allowed, [59, 30, 30, 30, 30])

    def test_zero_is_unlimited(self) -> None:
        """
        0 requests per window means no per-key limit.
        """
        buckets = window_buckets(0, 60.0)
        self.assertTrue(all(buckets.take("k", 0.0).allowed for _ in range(1000)))


class TokenBudgetTests(SynchronousTestCase):
    """
    Model tokens per key per minute: reserve up front, settle on the real
    count.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.budget = TokenBudget(6000)

    def now(self) -> float:
        return self.clock.seconds()

    def test_reserve_within_budget(self) -> None:
        """
        Reservations pass while the budget covers them and report what is
        left.
        """
        decision = self.budget.reserve("k", self.now(), 4000)
        self.assertTrue(decision.allowed)
        self.assertEqual((decision.limit, decision.remaining), (6000, 2000))

    def test_reserve_refused_with_wait(self) -> None:
        """
        A reservation the budget cannot cover is refused, with the time the
        missing tokens take to come back (100 per second here).
        """
        self.budget.reserve("k", self.now(), 5000)
        refused = self.budget.reserve("k", self.now(), 1500)
        self.assertFalse(refused.allowed)
        self.assertAlmostEqual(refused.retry_after, 5.0)
        self.clock.advance(5.0)
        self.assertTrue(self.budget.reserve("k", self.now(), 1500).allowed)

    def test_settle_refunds_unused(self) -> None:
        """
        Settling a request that used less than it reserved gives the rest
        back at once.
        """
        self.budget.reserve("k", self.now(), 6000)
        self.assertFalse(self.budget.reserve("k", self.now(), 1000).allowed)
        self.budget.settle("k", self.now(), reserved=6000, actual=500)
        decision = self.budget.reserve("k", self.now(), 5500)
        self.assertTrue(decision.allowed)
        self.assertEqual(decision.remaining, 0)

    def test_settle_charges_excess(self) -> None:
        """
        Settling a request that used more than it reserved charges the
        excess, as debt if need be, and later requests wait for it.
        """
        self.budget.reserve("k", self.now(), 1000)
        self.budget.settle("k", self.now(), reserved=1000, actual=7000)
        refused = self.budget.reserve("k", self.now(), 100)
        self.assertFalse(refused.allowed)
        # 1000 tokens of debt + 100 wanted at 100/s.
        self.assertAlmostEqual(refused.retry_after, 11.0)
        self.assertEqual(self.budget.peek("k", self.now()).remaining, 0)

    def test_settle_exact(self) -> None:
        """
        A request that used exactly its reservation changes nothing more.
        """
        self.budget.reserve("k", self.now(), 1000)
        self.budget.settle("k", self.now(), 1000, 1000)
        self.assertEqual(self.budget.peek("k", self.now()).remaining, 5000)

    def test_off(self) -> None:
        """
        A budget of 0 is off: every reservation passes.
        """
        budget = TokenBudget(0)
        self.assertTrue(budget.reserve("k", 0.0, 10 ** 9).allowed)
        budget.settle("k", 0.0, 0, 10 ** 9)
        self.assertTrue(budget.reserve("k", 0.0, 10 ** 9).allowed)
        self.assertEqual(len(budget), 0)

    def test_prune(self) -> None:
        """
        Keys whose budget has refilled are forgotten.
        """
        self.budget.reserve("k", self.now(), 600)
        self.assertEqual(self.budget.prune(5.0), 0)
        self.assertEqual(self.budget.prune(6.0), 1)
        self.assertEqual(len(self.budget), 0)
