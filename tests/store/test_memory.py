"""
Tests for L{qwen_twist.store.memory.MemoryStore} (the default store) and
L{qwen_twist.store.interface}: the declared interface, receipts, bans;
time from a C{Clock}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from qwen_twist import config as configmod
from qwen_twist.store.factory import build_store
from qwen_twist.store.interface import ILimitStore, Take
from qwen_twist.store.memory import MemoryStore


def make_config(bans=None, **limits) -> configmod.Config:
    raw = {"tls": {"self_signed": True}, "bans": bans or {"failures": 2, "duration": 60.0}}
    if limits:
        raw["limits"] = limits
    return configmod.build(configmod.Config, raw)


class MemoryStoreTests(SynchronousTestCase):
    """
    In-process buckets and bans behind L{ILimitStore}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = build_store(make_config(), self.clock)

    def test_interface(self) -> None:
        """
        C{limits.store: memory} (the default) builds a L{MemoryStore} that
        provides L{ILimitStore}, answers at once and shares nothing.
        """
        self.assertIsInstance(self.store, MemoryStore)
        self.assertTrue(verifyObject(ILimitStore, self.store))
        self.assertEqual(self.store.status(), {"kind": "memory", "state": "memory",
                                               "shared": False})
        self.assertIsNone(self.store.slot_lock("http://127.0.0.1:11434"))

    def take(self, key="k", cost=1.0, family="key"):
        return self.successResultOf(self.store.take(family, 0.5, 3, key, cost))

    def test_bucket(self) -> None:
        """
        The pure bucket maths: a burst of 3, then one token every 2 s, with
        the refusal's retry time.
        """
        self.assertEqual([self.take().allowed for _ in range(4)], [True, True, True, False])
        refused = self.take()
        self.assertAlmostEqual(refused.retry_after, 2.0)
        self.clock.advance(2.0)
        self.assertTrue(self.take().allowed)

    def test_families_and_numbers_are_separate(self) -> None:
        """
        The same key in another family, or under other numbers (a changed
        limit), has its own bucket.
        """
        for _ in range(3):
            self.take()
        self.assertTrue(self.take(family="budget").allowed)
        self.assertTrue(self.successResultOf(self.store.take("key", 0.5, 4, "k")).allowed)

    def test_take_all(self) -> None:
        """
        Several buckets in one step, stopping at the first refusal, which
        gives back exactly the earlier takes that name it in C{undo}.
        """
        store = self.store
        ip = Take("ip", 1.0, 5, "192.0.2.1", undo=1)
        key = Take("key", 0.001, 1, "alice")
        budget = Take("budget", 0.001, 10, "alice", cost=20)
        first = self.successResultOf(store.take_all([ip, key]))
        self.assertEqual([d.allowed for d in first], [True, True])
        refused = self.successResultOf(store.take_all([ip, key, budget]))
        self.assertEqual([d.allowed for d in refused], [True, False])
        # The key's refusal gave the address its token back: 3 left now, not 2.
        self.assertEqual(self.successResultOf(store.take("ip", 1.0, 5, "192.0.2.1")).remaining, 3)
        # A budget refusal gives nothing back (undo -1).
        again = self.successResultOf(store.take_all(
            [ip._replace(undo=-1), Take("key", 0.001, 5, "bob"), budget._replace(cost=11)]))
        self.assertEqual([d.allowed for d in again], [True, True, True])
        last = self.successResultOf(store.take_all(
            [ip._replace(undo=-1), Take("key", 0.001, 5, "bob"), budget]))
        self.assertEqual([d.allowed for d in last], [True, True, False])
        self.assertEqual(self.successResultOf(store.take("key", 0.001, 5, "bob")).remaining, 2)

    def test_adjust(self) -> None:
        """
        A receipt gives tokens back (a cheaper call) or charges more (debt);
        C{None} and other stores' receipts do nothing.
        """
        decision = self.take(cost=3)
        self.assertFalse(self.take().allowed)
        self.store.adjust(decision.receipt, -2)
        self.assertEqual(self.take().remaining, 1)
        self.store.adjust(decision.receipt, 10)
        # One token left, 10 charged: 9 in debt, 10 to wait for.
        self.assertAlmostEqual(self.take().retry_after, 2.0 * 10)
        self.store.adjust(None, -5)
        other = MemoryStore(make_config(), self.clock)
        other.adjust(decision.receipt, -100)
        self.assertFalse(self.take().allowed)

    def test_bans(self) -> None:
        """
        Failures are counted and ban through the local view the accept-time
        filter reads; a success in between forgives nothing; C{reconfigure}
        takes new numbers.
        """
        self.assertFalse(self.successResultOf(self.store.auth_failure("192.0.2.1")))
        self.store.auth_success("192.0.2.1")
        self.assertTrue(self.successResultOf(self.store.auth_failure("192.0.2.1")))
        self.assertEqual(self.store.bans.banned_for("192.0.2.1", self.clock.seconds()), 60.0)
        self.store.reconfigure(make_config(bans={"failures": 1}))
        self.assertTrue(self.successResultOf(self.store.auth_failure("192.0.2.2")))

    def test_prune(self) -> None:
        """
        Idle buckets and ended bans are forgotten.
        """
        self.take()
        self.successResultOf(self.store.auth_failure("192.0.2.1"))
        self.successResultOf(self.store.auth_failure("192.0.2.1"))
        self.clock.advance(61)
        self.store.prune()
        self.assertEqual(len(self.store.buckets("key", 0.5, 3)), 0)
        self.assertEqual(len(self.store.bans), 0)


class BuildStoreTests(SynchronousTestCase):
    """
    C{limits.store} picks the implementation.
    """

    def test_redis(self) -> None:
        """
        A redis:// URL builds the Redis store (not connected until
        started), which provides the same interface.
        """
        from qwen_twist.store.redisstore import RedisStore

        store = build_store(make_config(store="redis://127.0.0.1:1/3"), Clock())
        self.assertIsInstance(store, RedisStore)
        self.assertTrue(verifyObject(ILimitStore, store))
        self.assertEqual(store.status()["state"], "connecting")
        self.assertEqual(str(store.address), "redis://127.0.0.1:1/3")
        self.assertNotIn("127.0.0.1", repr(store.status()))

    def test_password_file(self) -> None:
        """
        The password comes from its file; a missing or empty file is a
        config error naming the key, never showing the password.
        """
        from qwen_twist.config import ConfigError
        from qwen_twist.store.redisstore import read_password

        path = self.mktemp()
        config = make_config(store="redis://cache", redis={"password_file": path})
        self.assertRaises(ConfigError, read_password, config)
        with open(path, "w") as f:
            f.write("\n")
        self.assertRaises(ConfigError, read_password, config)
        with open(path, "w") as f:
            f.write("hunter2\n")
        self.assertEqual(read_password(config), "hunter2")
