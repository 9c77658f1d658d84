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
