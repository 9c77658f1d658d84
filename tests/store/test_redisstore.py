"""
Tests for L{qwen_twist.store.redisstore} against a real C{redis-server} on
loopback: the Lua scripts keep the memory store's semantics, two stores
(two gateways) share one bucket, one ban and one set of GPU slots, keys
expire, and the failure policy holds when Redis is killed and restarted.
"""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from qwen_twist import config as configmod
from qwen_twist.store.interface import Take
from qwen_twist.store.redisstore import RedisStore
from qwen_twist.store.resp import StoreUnavailable

from tests.store.fleet import sleep
from tests.store.server import start_redis
from tests.support import async_test
from tests.test_live import wait_for


class RedisStoreTests(TestCase):
    """
    Two L{RedisStore}s on one redis-server stand for two gateways.
    """

    timeout = 60

    def setUp(self) -> None:
        self.server = start_redis(self)

    def store(self, **redis) -> RedisStore:
        settings = {"ban_refresh": 0.1, "lease": 0.6, "reconnect_max": 0.2,
                    "command_timeout": 1.0}
        settings.update(redis)
        config = configmod.build(configmod.Config, {
            "tls": {"self_signed": True},
            "bans": {"failures": 3, "duration": 30.0},
            "limits": {"store": self.server.url, "redis": settings},
        })
        store = RedisStore(config, reactor)
        self.addCleanup(store.stop)
        store.start()
        return store

    async def two(self, **redis) -> tuple:
        a, b = self.store(**redis), self.store(**redis)
        await wait_for(lambda: a.state == b.state == "up")
        return a, b

    @async_test
    async def test_bucket_semantics(self) -> None:
        """
        The script does the bucket maths of the memory store: a burst,
        then a refusal with the time to wait and the header numbers, and
        the key expires when the bucket would be full again.
        """
        a, _ = await self.two()
        decisions = [await a.take("key", 0.5, 3, "alice") for _ in range(4)]
        self.assertEqual([d.allowed for d in decisions], [True, True, True, False])
        self.assertEqual([d.remaining for d in decisions], [2, 1, 0, 0])
        self.assertTrue(1.8 < decisions[-1].retry_after <= 2.0, decisions[-1])
        self.assertTrue(5.8 < decisions[-1].reset_after <= 6.0, decisions[-1])
        self.assertEqual(a.fallbacks, 0)
        keys = self.server.command("KEYS", "qwengate:b:*")
        self.assertIn(b"qwengate:b:key:0.5:3.0:alice", keys)
        ttl = int(self.server.command("PTTL", "qwengate:b:key:0.5:3.0:alice")[1:-2])
        self.assertTrue(5000 < ttl <= 6000, ttl)

    @async_test
    async def test_take_all(self) -> None:
        """
        The one-round-trip take of several buckets keeps the memory store's
        rules: stop at the first refusal, give back what it undoes.
        """
        a, b = await self.two()
        ip = Take("ip", 1.0, 5, "192.0.2.1", undo=1)
        key = Take("key", 0.001, 1, "alice")
        self.assertEqual([d.allowed for d in await a.take_all([ip, key])], [True, True])
        self.assertEqual([d.allowed for d in await b.take_all([ip, key])], [True, False])
        self.assertEqual((await a.take("ip", 1.0, 5, "192.0.2.1")).remaining, 3)
        budget = Take("budget", 0.001, 10, "bob", cost=20)
        decisions = await b.take_all([ip._replace(undo=-1), Take("key", 0.001, 5, "bob"),
                                      budget._replace(cost=11), budget])
        self.assertEqual([d.allowed for d in decisions], [True, True, True, False])
        self.assertEqual((await a.take("key", 0.001, 5, "bob")).remaining, 3)
        self.assertEqual(a.fallbacks + b.fallbacks, 0)

    @async_test
    async def test_shared_bucket_under_concurrency(self) -> None:
        """
        Two gateways taking concurrently from one key's bucket: the total
        admitted is exactly the burst, never more.
        """
        a, b = await self.two()
        results = await defer.gatherResults(
            [store.take("key", 0.001, 10, "alice") for _ in range(25) for store in (a, b)])
        self.assertEqual(sum(d.allowed for d in results), 10)

    @async_test
    async def test_adjust(self) -> None:
        """
        A refund through the receipt reaches the shared bucket (the other
        gateway sees it); a charge puts it in debt.
        """
        a, b = await self.two()
        reserved = await a.take("budget", 10.0, 100, "alice", 100)
        self.assertFalse((await b.take("budget", 10.0, 100, "alice", 50)).allowed)
        await a.adjust(reserved.receipt, -60)
        self.assertTrue((await b.take("budget", 10.0, 100, "alice", 50)).allowed)
        await a.adjust(reserved.receipt, 100)
        refused = await b.take("budget", 10.0, 100, "alice", 1)
        # 10 left, 100 charged: 91 tokens short at 10 per second.
        self.assertTrue(8.9 < refused.retry_after <= 9.1, refused)

    @async_test
    async def test_ban_through_one_enforced_by_other(self) -> None:
        """
        Failures counted through both gateways add up; the ban is in the
        banning gateway's view at once and in the other's within one
        refresh (well under a second), without it asking Redis per check.
        """
        a, b = await self.two()
        self.assertFalse(await a.auth_failure("192.0.2.9"))
        self.assertFalse(await b.auth_failure("192.0.2.9"))
        self.assertTrue(await a.auth_failure("192.0.2.9"))
        self.assertGreater(a.bans.banned_for("192.0.2.9", reactor.seconds()), 29)
        started = reactor.seconds()
        await wait_for(lambda: b.bans.banned_for("192.0.2.9", reactor.seconds()) > 0, 1.0)
        self.assertLess(reactor.seconds() - started, 1.0)
        # Failures while banned neither extend nor restart anything.
        self.assertFalse(await b.auth_failure("192.0.2.9"))

    @async_test
    async def test_success_forgives_nothing(self) -> None:
        """
        Failures count within the window whatever succeeds in between
        (a guesser holding one good key cannot reset the count).
        """
        a, b = await self.two()
        await a.auth_failure("192.0.2.9")
        await a.auth_failure("192.0.2.9")
        b.auth_success("192.0.2.9")
        self.assertTrue(await b.auth_failure("192.0.2.9"))

    @async_test
    async def test_slots(self) -> None:
        """
        Two gateways share a semaphore of 2 slots: a third lease waits for
        a release by either.
        """
        a, b = await self.two()
        la, lb = a.slot_lock("ollama"), b.slot_lock("ollama")
        first = await la.acquire(2)
        second = await lb.acquire(2)
        self.assertIsNotNone(first)
        self.assertIsNotNone(second)
        self.assertIsNone(await la.acquire(2))
        self.assertIsNone(await lb.acquire(2))
        lb.release(second)
        self.assertIsNotNone(await la.acquire(2))

    @async_test
    async def test_dead_gateway_lease_expires(self) -> None:
        """
        Leases held by a gateway that stops renewing (killed) come back
        after C{lease}; a live gateway's leases are renewed past it.
        """
        a, b = await self.two()
        dead, live = a.slot_lock("ollama"), b.slot_lock("ollama")
        self.assertIsNotNone(await dead.acquire(2))
        self.assertIsNotNone(await live.acquire(2))
        a.stop()  # stops renewing and never releases: a crash
        await sleep(0.3)
        self.assertIsNone(await live.acquire(2))
        await sleep(0.5)
        # 0.8 s > 0.6 s lease: the dead gateway's slot is free again, the
        # live one's lease (renewed every 0.2 s) still counts.
        self.assertIsNotNone(await live.acquire(2))
        self.assertIsNone(await live.acquire(2))

    @async_test
    async def test_fail_open_and_recovery(self) -> None:
        """
        Redis killed: decisions come from local buckets at once (counted in
        C{fallbacks}), bans keep working locally, the state says down;
        Redis back: the store reconnects by itself and decisions are shared
        again, with nothing made locally replayed into Redis.
        """
        a, b = await self.two()
        self.server.kill()
        await wait_for(lambda: a.state == "down")
        decisions = [await a.take("key", 0.001, 2, "alice") for _ in range(3)]
        self.assertEqual([d.allowed for d in decisions], [True, True, False])
        self.assertEqual(a.fallbacks, 3)
        self.assertEqual(a.status()["state"], "down")
        for _ in range(3):
            await a.auth_failure("192.0.2.7")
        self.assertGreater(a.bans.banned_for("192.0.2.7", reactor.seconds()), 0)
        # A refund for tokens taken locally goes back to the local bucket.
        a.adjust(decisions[0].receipt, -1)
        self.assertTrue((await a.take("key", 0.001, 2, "alice")).allowed)
        self.server.start()
        await wait_for(lambda: a.state == b.state == "up", 10.0)
        self.assertEqual(self.server.command("KEYS", "qwengate:b:*"), b"*0\r\n")
        shared = [await store.take("key", 0.001, 2, "alice") for store in (a, b, a)]
        self.assertEqual([d.allowed for d in shared], [True, True, False])
        self.assertEqual(a.fallbacks, 4)

    @async_test
    async def test_connection_counts(self) -> None:
        """
        Connections from one address are counted over both gateways; a
        closed one is uncounted; a dead gateway's count disappears with its
        heartbeat (C{lease}).
        """
        a, b = await self.two()
        first = await a.connection_opened("192.0.2.5")
        second = await b.connection_opened("192.0.2.5")
        self.assertEqual((first[0], second[0]), (1, 2))
        a.connection_closed(first[1])
        await sleep(0.05)
        self.assertEqual((await a.connection_opened("192.0.2.5"))[0], 2)
        b.stop()
        await sleep(0.8)
        self.assertEqual((await a.connection_opened("192.0.2.5"))[0], 2)

    @async_test
    async def test_connection_counts_across_outage(self) -> None:
        """
        Connections counted before a Redis outage are not counted (nor
        uncounted) after it: the gateway starts a new field, so a closing
        Redis never heard of cannot leave a count behind.
        """
        a = self.store()
        await wait_for(lambda: a.state == "up")
        _, before = await a.connection_opened("192.0.2.5")
        self.server.kill()
        await wait_for(lambda: a.state == "down")
        self.assertEqual(await a.connection_opened("192.0.2.5"), (None, None))
        self.server.start()
        await wait_for(lambda: a.state == "up", 10.0)
        a.connection_closed(before)
        self.assertEqual((await a.connection_opened("192.0.2.5"))[0], 1)

    @async_test
    async def test_fail_closed(self) -> None:
        """
        With C{on_failure: closed}, a decision while Redis is down fails
        with L{StoreUnavailable} (the hook answers 503); unlimited rules
        still pass.
        """
        a = self.store(on_failure="closed")
        await wait_for(lambda: a.state == "up")
        self.server.kill()
        await wait_for(lambda: a.state == "down")
        with self.assertRaises(StoreUnavailable):
            await a.take("key", 1.0, 5, "alice")
        self.assertTrue((await a.take("ip", 0, 5, "192.0.2.1")).allowed)
        self.assertEqual(a.status()["on_failure"], "closed")

    @async_test
    async def test_state_observers(self) -> None:
        """
        The metric hook: observers hear each change of state once.
        """
        a = self.store()
        seen = []
        a.state_observers.append(seen.append)
        await wait_for(lambda: a.state == "up")
        self.server.kill()
        await wait_for(lambda: a.state == "down")
        await sleep(0.5)
        self.server.start()
        await wait_for(lambda: a.state == "up", 10.0)
        self.assertEqual(seen, ["up", "down", "up"])
