"""
Tests for L{qwen_twist.gate.bans}: authentication failures within a window lead to a
temporary ban; time from a L{Clock}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.gate.bans import BanList


class BanListTests(SynchronousTestCase):
    """
    The seed's rule: 3 consecutive failures, 10-minute ban.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.bans = BanList(3, 600.0)

    def fail(self, ip: str = "192.0.2.1") -> bool:
        return self.bans.failure(ip, self.clock.seconds())

    def banned_for(self, ip: str = "192.0.2.1") -> float:
        return self.bans.banned_for(ip, self.clock.seconds())

    def test_third_failure_bans(self) -> None:
        """
        The third consecutive failure starts a ban, and only that one
        reports it.
        """
        self.assertEqual([self.fail(), self.fail()], [False, False])
        self.assertEqual(self.banned_for(), 0.0)
        self.assertTrue(self.fail())
        self.assertEqual(self.banned_for(), 600.0)

    def test_ban_expires(self) -> None:
        """
        The ban counts down and ends after its duration.
        """
        for _ in range(3):
            self.fail()
        self.clock.advance(599.5)
        self.assertEqual(self.banned_for(), 0.5)
        self.clock.advance(0.5)
        self.assertEqual(self.banned_for(), 0.0)

    def test_success_does_not_forgive(self) -> None:
        """
        Alternating bad, bad, good is still banned: failures are counted in
        a window, and a success in between does not reset them.
        """
        self.fail()
        self.fail()
        self.bans.success("192.0.2.1", self.clock.seconds())
        self.assertTrue(self.fail())

    def test_window_slides(self) -> None:
        """
        Only failures within the window count: three failures spread over
        more than the window do not ban, three within it do.
        """
        bans = BanList(3, 600.0, window=60.0)
        self.assertFalse(bans.failure("192.0.2.1", 0.0))
        self.assertFalse(bans.failure("192.0.2.1", 40.0))
        self.assertFalse(bans.failure("192.0.2.1", 70.0))
        self.assertTrue(bans.failure("192.0.2.1", 90.0))

    def test_addresses_independent(self) -> None:
        """
        Failures from one address do not count against another.
        """
        self.fail("192.0.2.1")
        self.fail("192.0.2.1")
        self.assertFalse(self.fail("192.0.2.2"))
        self.assertEqual(self.banned_for("192.0.2.2"), 0.0)
        self.assertTrue(self.fail("192.0.2.1"))
        self.assertEqual(self.banned_for("192.0.2.2"), 0.0)

    def test_streak_forgotten_after_quiet(self) -> None:
        """
        Failures spread further apart than the ban duration never add up to
        a ban (one typo a day does not ban a client eventually).
        """
        for _ in range(10):
            self.assertFalse(self.fail())
            self.clock.advance(600.0)
        self.assertFalse(self.fail())
        self.clock.advance(599.0)
        self.assertFalse(self.fail())
        self.assertTrue(self.fail())

    def test_failures_while_banned(self) -> None:
        """
        Failures during a ban (on a connection opened before it) neither
        extend it nor count towards the next one.
        """
        for _ in range(3):
            self.fail()
        self.clock.advance(300.0)
        self.assertFalse(self.fail())
        self.assertFalse(self.fail())
        self.assertFalse(self.fail())
        self.assertEqual(self.banned_for(), 300.0)
        self.clock.advance(300.0)
        self.assertEqual(self.banned_for(), 0.0)
        self.assertFalse(self.fail())

    def test_threshold_zero_never_bans(self) -> None:
        """
        A threshold of 0 turns bans off and keeps no state.
        """
        bans = BanList(0, 600.0)
        self.assertFalse(any(bans.failure("192.0.2.1", 0.0) for _ in range(100)))
        self.assertEqual(bans.banned_for("192.0.2.1", 0.0), 0.0)
        self.assertEqual(len(bans), 0)

    def test_threshold_one(self) -> None:
        """
        A threshold of 1 bans on the first failure.
        """
        bans = BanList(1, 60.0)
        self.assertTrue(bans.failure("192.0.2.1", 0.0))
        self.assertEqual(bans.banned_for("192.0.2.1", 0.0), 60.0)

    def test_banned_listing(self) -> None:
        """
        The active bans can be listed with the time left; expired ones are
        not listed.
        """
        for _ in range(3):
            self.fail("192.0.2.1")
        self.clock.advance(100.0)
        for _ in range(3):
            self.fail("192.0.2.2")
        self.assertEqual(
            sorted(self.bans.banned(self.clock.seconds())),
            [("192.0.2.1", 500.0), ("192.0.2.2", 600.0)],
        )
        self.clock.advance(500.0)
        self.assertEqual(self.bans.banned(self.clock.seconds()), [("192.0.2.2", 100.0)])

    def test_prune(self) -> None:
        """
        Pruning forgets expired bans and quiet streaks and keeps the rest.
        """
        for _ in range(3):
            self.fail("192.0.2.1")
        self.fail("192.0.2.2")
        self.clock.advance(300.0)
        self.fail("192.0.2.3")
        self.assertEqual(len(self.bans), 3)
        self.clock.advance(300.0)
        self.assertEqual(self.bans.prune(self.clock.seconds()), 2)
        self.assertEqual(len(self.bans), 1)
        self.fail("192.0.2.3")
        self.assertTrue(self.fail("192.0.2.3"))

    def test_prune_many_addresses(self) -> None:
        """
        100,000 addresses that each failed once are all forgotten after the
        quiet period: memory does not grow with every address ever seen.
        """
        failure = self.bans.failure
        for i in range(100000):
            failure("10.%d.%d.%d" % (i >> 16, (i >> 8) & 255, i & 255), 0.0)
        self.assertEqual(len(self.bans), 100000)
        self.assertEqual(self.bans.prune(599.0), 0)
        self.assertEqual(self.bans.prune(600.0), 100000)
        self.assertEqual(len(self.bans), 0)
