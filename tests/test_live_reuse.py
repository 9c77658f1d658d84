"""
Upstream connections over real sockets: streams return theirs to the pool,
and a request that finds its pooled connection closed is sent again.
"""

from __future__ import annotations

import treq
from twisted.trial.unittest import TestCase

from qwen_twist.upstream.client import read_body
from tests.support import async_test, settle, start_stack

CHAT = {"model": "qwen3:8b", "messages": [{"role": "user", "content": "Hi"}]}
STREAM = dict(CHAT, stream=True)


class ReuseTests(TestCase):
    """
    Issue 10: a streamed request used to close its connection to Ollama.
    """

    @async_test
    async def test_sequential_streams_reuse(self) -> None:
        """
        100 sequential streams, each read to C{[DONE]}, use a handful of
        upstream connections, not 100.
        """
        stack = await start_stack(self)
        for _ in range(100):
            response = await stack.post("/v1/chat/completions", json=STREAM)
            self.assertEqual(response.code, 200)
            body = await treq.content(response)
            self.assertTrue(body.endswith(b"data: [DONE]\n\n"))
        self.assertLessEqual(stack.emulator.accepted, 3)
        self.assertLessEqual(stack.service.upstream.members[0].client.opened, 3)

    @async_test
    async def test_cut_stream_closes(self) -> None:
        """
        A stream that ends with an error event closes its connection (it is
        not known to be at a clean boundary); the next one opens another.
        """
        stack = await start_stack(self)
        response = await stack.post("/v1/chat/completions", json=STREAM)
        await treq.content(response)
        before = stack.emulator.accepted
        stack.script.push(error_line_after=1)
        response = await stack.post("/v1/chat/completions", json=STREAM)
        body = await treq.content(response)
        self.assertNotIn(b"[DONE]", body)
        await settle()
        response = await stack.post("/v1/chat/completions", json=STREAM)
        await treq.content(response)
        self.assertEqual(stack.emulator.accepted, before + 1)

    @async_test
    async def test_stale_pooled_connection_retried(self) -> None:
        """
        Ollama dropping its idle connections (a restart, an idle timeout):
        the next POST, which finds its pooled connection closed, is sent
        again on a fresh one and succeeds; nothing counts against the
        breaker.
        """
        stack = await start_stack(self)
        response = await stack.post("/v1/chat/completions", json=CHAT)
        self.assertEqual(response.code, 200)
        await treq.content(response)
        # Close Ollama's side of the pooled connection and, in the same
        # reactor turn (before the gateway can notice), send a POST: it
        # takes the closed connection from the pool.
        self.assertEqual(len(stack.emulator._site._channels), 1)
        for channel in list(stack.emulator._site._channels):
            channel.transport.abortConnection()
        upstream = stack.service.upstream.members[0].client
        opened = upstream.opened
        response = await upstream.send("POST", "/api/chat", CHAT)
        self.assertEqual(response.code, 200)
        await read_body(response)
        self.assertEqual(upstream.opened, opened + 1)
        self.assertEqual(upstream.breaker.state, "closed")
