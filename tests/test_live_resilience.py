"""
Resilience over real sockets: a hung Ollama behind the circuit breaker.
"""

from __future__ import annotations

import time

from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase

import treq

from tests.support import async_test, start_stack

CHAT = {"model": "qwen3:8b", "messages": [{"role": "user", "content": "Hi"}]}


class HungUpstreamTests(TestCase):
    """
    One emulator hung: fast 503s once the breaker opens, recovery after.
    """

    @async_test
    async def test_breaker_opens_and_recovers(self) -> None:
        """
        Two requests time out waiting for headers (504); the breaker opens
        and the next request is a 503 with Retry-After in milliseconds,
        without reaching Ollama; after the cool-down a probe succeeds and
        traffic flows again.
        """
        stack = await start_stack(self, {"upstream": {
            "timeouts": {"headers": 0.3}, "breaker": {"threshold": 2, "cooldown": 0.6}}})
        stack.script.push(hang_before_headers=True)
        stack.script.push(hang_before_headers=True)
        for _ in range(2):
            response = await stack.post("/v1/chat/completions", json=CHAT)
            self.assertEqual(response.code, 504)
            await treq.content(response)
        seen = len(stack.record.for_path("/api/chat"))
        started = time.monotonic()
        response = await stack.post("/v1/chat/completions", json=CHAT)
        elapsed = time.monotonic() - started
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"1"])
        body = await treq.json_content(response)
        self.assertEqual(body["error"]["code"], "upstream_unavailable")
        self.assertLess(elapsed, 0.25)
        self.assertEqual(len(stack.record.for_path("/api/chat")), seen)
        await task.deferLater(reactor, 0.7, lambda: None)
        response = await stack.post("/v1/chat/completions", json=CHAT)
        self.assertEqual(response.code, 200)
        await treq.content(response)
        self.assertEqual(stack.service.upstream.breaker.state, "closed")


class FairnessTests(TestCase):
    """
    The GPU queue is fair across API keys.
    """

    @async_test
    async def test_flood_does_not_starve(self) -> None:
        """
        With one slot, key A queues 12 slow requests; key B's single request
        sent afterwards completes after at most two of A's, not after all of
        them. Every response says how long it waited in x-queue-wait-ms.
        """
        import os

        from qwen_twist.keys import add_key

        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "keys.yaml")
        key_a = add_key(path, "a", now=time.time())
        key_b = add_key(path, "b", now=time.time())
        stack = await start_stack(self, {
            "auth": {"required": True, "keys_file": path},
            "rate_limits": {"per_key_requests": 0},
            "admission": {"slots": 1, "max_wait": 30.0},
        })
        stack.script.set_model_behaviour("qwen3:8b", {"ttft": 0.05})
        finished = []

        async def call(name, key):
            response = await stack.post("/v1/chat/completions", json=CHAT,
                                        headers={"Authorization": "Bearer " + key})
            await treq.content(response)
            self.assertEqual(response.code, 200)
            self.assertTrue(response.headers.getRawHeaders(b"x-queue-wait-ms"))
            finished.append(name)

        from twisted.internet import defer

        flood = [defer.Deferred.fromCoroutine(call("a", key_a)) for _ in range(12)]
        await wait_until(lambda: stack.service.gate.queue.waiting >= 10)
        await call("b", key_b)
        await defer.gatherResults(flood)
        self.assertLessEqual(finished.index("b"), 3)
        self.assertEqual(len(finished), 13)


async def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met")
        await task.deferLater(reactor, 0.005, lambda: None)
