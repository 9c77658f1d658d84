"""
Several Ollama upstreams over real sockets: two emulators behind one
gateway, one of them killed mid-run.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

import treq

from qwen_twist.emulator import server as emulator_server

from tests.support import admin_key, async_test, start_stack

CHAT = {"model": "qwen3:8b", "messages": [{"role": "user", "content": "Hi"}]}


class TwoUpstreamsTests(TestCase):
    """
    Requests are spread over the upstreams and survive losing one.
    """

    @async_test
    async def test_kill_one_mid_run(self) -> None:
        """
        With two emulators, requests go to both; after one is killed every
        request still succeeds (a failure before the first byte is retried
        once on the other), and /ready reports each upstream.
        """
        first = await emulator_server.listen(reactor)
        second = await emulator_server.listen(reactor)
        self.addCleanup(second.stop)
        config, headers = admin_key(self)
        config["upstream"] = {"urls": [first.url, second.url]}
        stack = await start_stack(self, config, upstream_url=first.url)
        ready = await stack.get("/ready", headers=headers)
        body = await treq.json_content(ready)
        self.assertEqual(ready.code, 200)
        self.assertEqual([u["url"] for u in body["upstreams"]], [first.url, second.url])
        statuses = []
        for i in range(12):
            if i == 6:
                await first.stop()
            response = await stack.post("/v1/chat/completions", json=CHAT)
            await treq.content(response)
            statuses.append(response.code)
        self.assertEqual(statuses, [200] * 12)
        self.assertGreater(len(first.record.for_path("/api/chat")), 0)
        self.assertGreater(len(second.record.for_path("/api/chat")), 0)
