"""
Resilience over real sockets: a hung Ollama behind the circuit breaker.
"""

from __future__ import annotations

import time

from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase

import treq

from tests.support import async_test, start_stack
from tests.test_live import wait_for

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
        self.assertEqual(stack.service.upstream.members[0].client.breaker.state, "closed")


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

        from qwen_twist.gate.keyfile import add_key

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
        await wait_for(lambda: stack.service.gate.queue.waiting >= 10)
        await call("b", key_b)
        await defer.gatherResults(flood)
        self.assertLessEqual(finished.index("b"), 3)
        self.assertEqual(len(finished), 13)


class ReloadAndDrainUnderLoadTests(TestCase):
    """
    SIGHUP and SIGTERM while streams and requests are running.
    """

    @async_test
    async def test_zero_failed_or_truncated(self) -> None:
        """
        With 8 streams and 4 plain requests in flight, a reload (adding an
        API key) and then a drain (listener closed) lose nothing: every
        stream ends with C{[DONE]}, every request is a 200, and the new key
        works on a connection opened before the drain.
        """
        import os

        import yaml

        from twisted.internet import defer

        from qwen_twist.gate.keyfile import add_key
        from tests.web.test_relay import events

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        keys = os.path.join(directory, "keys.yaml")
        key = add_key(keys, "a", now=time.time())
        settings = {"auth": {"required": True, "keys_file": keys},
                    "rate_limits": {"per_key_requests": 0}}
        stack = await start_stack(self, settings)
        # The service reloads from a file, as under twistd.
        path = os.path.join(directory, "qwengate.yaml")
        raw = {"state_dir": stack.service.config.state_dir, "tls": {"self_signed": True},
               "auth": {"required": True, "keys_file": keys},
               "rate_limits": {"per_key_requests": 0, "per_ip_rate": 0},
               "admission": {"slots": 0},
               "upstream": {"url": stack.emulator.url}}
        with open(path, "w") as f:
            yaml.safe_dump(raw, f)
        stack.service.config_path = path
        stack.script.set_model_behaviour(
            "qwen3:8b", {"tokens_per_second": 40, "tokens": 24, "thinking": ""})
        auth = {"Authorization": "Bearer " + key}

        async def stream():
            response = await stack.post(
                "/v1/chat/completions", headers=auth,
                json=dict(CHAT, stream=True))
            body = await treq.content(response)
            return response.code, events(body)

        async def plain():
            response = await stack.post("/v1/chat/completions", headers=auth, json=CHAT)
            await treq.content(response)
            return response.code

        calls = [defer.Deferred.fromCoroutine(stream()) for _ in range(8)]
        calls += [defer.Deferred.fromCoroutine(plain()) for _ in range(4)]
        await task.deferLater(reactor, 0.2, lambda: None)
        new_key = add_key(keys, "b", now=time.time())
        self.assertTrue(stack.service.reload())
        response = await stack.post("/v1/models",
                                    headers={"Authorization": "Bearer " + new_key})
        await treq.content(response)
        self.assertEqual(response.code, 405)  # authenticated; models is GET-only
        await defer.maybeDeferred(stack.port.stopListening)
        drained = stack.service.gateway.drain(10.0)
        results = await defer.gatherResults(calls)
        await drained
        for result in results[:8]:
            code, got = result
            self.assertEqual(code, 200)
            self.assertEqual(got[-1], "[DONE]")
            self.assertNotIn("error", got[-2])
        self.assertEqual(results[8:], [200] * 4)
