# -*- test-case-name: tests.store.test_memory -*-
"""
The in-process L{ILimitStore}: what one gateway alone needs, no service
to run. It wraps the pure maths (L{qwen_twist.gate.ratelimit},
L{qwen_twist.gate.bans}) with an injected clock; every Deferred it returns
has already fired, so a request never waits for it.

The Redis store also keeps one of these: it is the "local limits" it falls
back to while Redis is unreachable.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Sequence, Tuple

from twisted.internet import defer
from zope.interface import implementer

from qwen_twist.gate.bans import BanList
from qwen_twist.gate.ratelimit import TokenBuckets
from qwen_twist.store.interface import ILimitStore, Take

BucketId = Tuple[str, float, float]


@implementer(ILimitStore)
class MemoryStore:
    """
    Buckets by C{(family, rate, burst)}: a rule whose numbers change gets
    fresh buckets, one whose numbers stay keeps them across a reload.
    """

    uses = ("bans",)
    shared = False
    state = "memory"

    def __init__(self, config: Any, clock: Any) -> None:
        self.config = config
        self.clock = clock
        self.bans = BanList(config.bans.failures, config.bans.duration, config.bans.window)
        self._buckets: Dict[BucketId, TokenBuckets] = {}

    def reconfigure(self, config: Any) -> None:
        self.config = config
        self.bans.threshold = config.bans.failures
        self.bans.duration = float(config.bans.duration)
        self.bans.window = float(config.bans.window)

    def buckets(self, family: str, rate: float, burst: float) -> TokenBuckets:
        ident = (family, float(rate), float(burst))
        table = self._buckets.get(ident)
        if table is None:
            table = self._buckets[ident] = TokenBuckets(rate, burst)
        return table

    def take_now(self, family: str, rate: float, burst: float, key: str,
                 cost: float = 1.0) -> Any:
        """
        L{take} without the Deferred (the Redis store's fallback uses it).
        """
        decision = self.buckets(family, rate, burst).take(key, self.clock.seconds(), cost)
        return dataclasses.replace(decision, receipt=(self, family, rate, burst, key))

    def take(self, family: str, rate: float, burst: float, key: str, cost: float = 1.0) -> Any:
        return defer.succeed(self.take_now(family, rate, burst, key, cost))

    def take_all_now(self, takes: Sequence[Take]) -> List[Any]:
        """
        L{take_all} without the Deferred (the Redis store's fallback).
        """
        decisions: List[Any] = []
        for i, take in enumerate(takes):
            decision = self.take_now(take.family, take.rate, take.burst, take.key, take.cost)
            decisions.append(decision)
            if not decision.allowed:
                for j in range(i):
                    if takes[j].undo >= i:
                        self.adjust(decisions[j].receipt, -takes[j].cost)
                break
        return decisions

    def take_all(self, takes: Sequence[Take]) -> Any:
        return defer.succeed(self.take_all_now(takes))

    def adjust(self, receipt: Any, amount: float) -> None:
        if receipt is None or receipt[0] is not self:
            return
        _, family, rate, burst, key = receipt
        table = self.buckets(family, rate, burst)
        if amount < 0:
            table.refund(key, self.clock.seconds(), -amount)
        elif amount > 0:
            table.charge(key, self.clock.seconds(), amount)

    def failure_now(self, ip: str) -> bool:
        return self.bans.failure(ip, self.clock.seconds())

    def auth_failure(self, ip: str) -> Any:
        return defer.succeed(self.failure_now(ip))

    def auth_success(self, ip: str) -> None:
        self.bans.success(ip, self.clock.seconds())

    def connection_opened(self, ip: str) -> Any:
        # The connection filter's own count is the only one.
        return defer.succeed((None, None))

    def connection_closed(self, ticket: Any) -> None:
        pass

    def slot_lock(self, name: str) -> None:
        return None

    def status(self) -> dict:
        return {"kind": "memory", "state": self.state, "shared": False}

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def prune(self) -> None:
        now = self.clock.seconds()
        self.bans.prune(now)
        for table in list(self._buckets.values()):
            table.prune(now)
