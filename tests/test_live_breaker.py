"""
The circuit breaker over real sockets, with its default settings: one
tenant's bad requests open nothing; a model whose runner crashes is fenced
off alone (issue 9, item 7); a dead Ollama is fenced off fast (issue 10).
"""

from __future__ import annotations

import time

import treq
from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase

from tests.support import async_test, start_stack

CRASH = "llama runner process has terminated: exit status 2"
MEMORY = "model requires more system memory (97.5 GiB) than is available (12.1 GiB)"


def chat(model: str, **extra) -> dict:
    return dict({"model": model, "messages": [{"role": "user", "content": "Hi"}]}, **extra)


class TenantTests(TestCase):
    """
    One tenant cannot open the breaker for everyone.
    """

    @async_test
    async def test_request_caused_500s_open_nothing(self) -> None:
        """
        Ten requests whose options make Ollama answer 500 (not enough
        memory for num_ctx), spread in time, each get their 500; the next
        request of any tenant is served.
        """
        stack = await start_stack(self)
        for _ in range(10):
            stack.script.push(http_status=500, error=MEMORY)
            # (A num_ctx above limits.max_num_ctx never reaches Ollama: the
            # option policy refuses it. The largest allowed one still can
            # be too much for a small GPU.)
            response = await stack.post("/v1/chat/completions",
                                        json=chat("qwen3:8b", num_ctx=32768))
            self.assertEqual(response.code, 500)
            await treq.content(response)
            await task.deferLater(reactor, 0.12, lambda: None)
        response = await stack.post("/v1/chat/completions", json=chat("qwen3:8b"))
        self.assertEqual(response.code, 200)
        await treq.content(response)
        client = stack.service.upstream.members[0].client
        self.assertEqual(client.breaker.state, "closed")
        self.assertIsNone(client.model_breaker("qwen3:8b"))

    @async_test
    async def test_runner_crash_fences_one_model(self) -> None:
        """
        A model whose runner keeps crashing gets fast 503s with Retry-After
        after five crashes spread in time, without reaching Ollama; another
        model on the same server is still served.
        """
        stack = await start_stack(self)
        for _ in range(5):
            stack.script.push(http_status=500, error=CRASH)
            response = await stack.post("/v1/chat/completions", json=chat("qwen2.5:7b"))
            self.assertEqual(response.code, 500)
            await treq.content(response)
            await task.deferLater(reactor, 0.12, lambda: None)
        seen = len(stack.record.for_path("/api/chat"))
        started = time.monotonic()
        response = await stack.post("/v1/chat/completions", json=chat("qwen2.5:7b"))
        self.assertLess(time.monotonic() - started, 0.5)
        self.assertEqual(response.code, 503)
        self.assertTrue(response.headers.getRawHeaders(b"retry-after"))
        body = await treq.json_content(response)
        self.assertEqual(body["error"]["code"], "upstream_unavailable")
        self.assertEqual(len(stack.record.for_path("/api/chat")), seen)
        error = stack.service.upstream.send("POST", "/api/chat", chat("qwen2.5:7b"))
        cause = self.failureResultOf(error).value.cause
        self.assertTrue(cause.startswith("BreakerOpen: circuit breaker "), cause)
        self.assertIn("model qwen2.5:7b", cause)
        response = await stack.post("/v1/chat/completions", json=chat("qwen3:8b"))
        self.assertEqual(response.code, 200)
        await treq.content(response)
