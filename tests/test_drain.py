"""
Tests for the shutdown drain (L{qwen_twist.pipeline.Gateway.drain} and its
use by the service): nothing in flight is cut in a way that looks complete.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.web.test_relay import DONE, STREAM, content, events
from tests.web.helpers import GatewayHarness

CHAT = {"model": "qwen3:8b", "messages": [{"role": "user", "content": "Hi"}]}
NATIVE_OK = {
    "model": "qwen3:8b", "created_at": "2025-07-07T20:22:19Z",
    "message": {"role": "assistant", "content": "Hello!"}, "done": True,
    "done_reason": "stop", "prompt_eval_count": 1, "eval_count": 1,
}


class DrainTests(SynchronousTestCase):
    """
    SIGTERM: stop taking calls, let the running ones finish, then end what
    is left honestly.
    """

    def setUp(self) -> None:
        self.harness = GatewayHarness({"streaming": {"keepalive_interval": 0}})

    def test_idle_drains_at_once(self) -> None:
        """
        With nothing in flight, draining is immediate.
        """
        self.successResultOf(self.harness.gateway.drain(30))

    def test_new_calls_refused(self) -> None:
        """
        While draining, new calls get a 503 with Retry-After and
        C{Connection: close}, and cost the upstream nothing.
        """
        _, first = self.harness.request("POST", "/v1/chat/completions", STREAM)
        self.harness.gateway.drain(30)
        _, transport = self.harness.request("POST", "/v1/chat/completions", CHAT)
        response = self.harness.response(transport)
        self.assertEqual(response.status, 503)
        self.assertEqual(response.json()["error"]["code"], "shutting_down")
        self.assertEqual(response.headers["retry-after"], "1")
        self.assertEqual(response.headers["connection"], "close")
        self.assertEqual(len(self.harness.upstream.calls), 1)

    def test_stream_finishes_within_drain(self) -> None:
        """
        A stream that completes during the drain completes normally, and the
        drain fires when it is done.
        """
        _, transport = self.harness.request("POST", "/v1/chat/completions", STREAM)
        upstream = self.harness.upstream.calls[-1].respond_streaming()
        upstream.send(content("a"))
        drained = self.harness.gateway.drain(30)
        self.assertNoResult(drained)
        upstream.send(content("b") + DONE)
        self.successResultOf(drained)
        self.assertEqual(events(self.harness.response(transport).body)[-1], "[DONE]")

    def test_stream_cut_at_timeout_is_an_error(self) -> None:
        """
        A stream still running when the drain times out ends with an error
        event, not C{[DONE]}, and its upstream is closed.
        """
        _, transport = self.harness.request("POST", "/v1/chat/completions", STREAM)
        upstream = self.harness.upstream.calls[-1].respond_streaming()
        upstream.send(content("a"))
        drained = self.harness.gateway.drain(30)
        self.harness.clock.advance(30)
        self.successResultOf(drained)
        got = events(self.harness.response(transport).body)
        self.assertEqual(got[-1]["error"]["code"], "shutting_down")
        self.assertNotIn("[DONE]", got)
        self.assertEqual(upstream.transport.state, "stopped")

    def test_pending_request_at_timeout(self) -> None:
        """
        A non-streaming request still waiting for Ollama at the timeout gets
        a 503 (not a hang, not a bare disconnect), and its upstream request
        is cancelled.
        """
        _, transport = self.harness.request("POST", "/v1/chat/completions", CHAT)
        call = self.harness.upstream.calls[-1]
        drained = self.harness.gateway.drain(30)
        self.harness.clock.advance(30)
        self.successResultOf(drained)
        self.assertTrue(call.cancelled)
        response = self.harness.response(transport)
        self.assertEqual(response.status, 503)
        self.assertEqual(response.json()["error"]["code"], "shutting_down")

    def test_finished_calls_untracked(self) -> None:
        """
        Finished calls are forgotten (the active table does not grow).
        """
        for _ in range(3):
            self.harness.request("POST", "/v1/chat/completions", CHAT)
            self.harness.upstream.calls[-1].respond(200, NATIVE_OK)
        self.assertEqual(self.harness.gateway.active, {})


class ServiceStopTests(SynchronousTestCase):
    """
    The service's stop order: listener, drain, the rest.
    """

    def test_stop_waits_for_drain(self) -> None:
        """
        Stopping closes the listening port at once but completes only when
        the calls in flight are done.
        """
        import os

        from twisted.internet.testing import MemoryReactorClock

        from qwen_twist import config as configmod
        from qwen_twist.gate import tls
        from qwen_twist.tap import GatewayService

        state = os.path.abspath(self.mktemp())
        config = configmod.build(configmod.Config, {
            "state_dir": state, "tls": {"self_signed": True},
            "auth": {"required": False}, "listen": {"address": "127.0.0.1"}})
        reactor = MemoryReactorClock()
        service = GatewayService(config, tls.certificate_options(config.tls, state), reactor)
        service.startService()
        # The API listener (the metrics listener is the second).
        (port, factory, backlog, interface) = reactor.tcpServers[0]
        from qwen_twist.context import CallContext

        ctx = CallContext("r1", "chat", "POST", "/v1/chat/completions", "127.0.0.1", 0.0)
        service.gateway.call_started(ctx)
        stopped = service.stopService()
        self.assertTrue(reactor.getDelayedCalls())  # the drain timer
        self.assertNoResult(stopped)
        self.assertFalse(service.listener.running)
        self.assertTrue(service.gateway.draining)
        reactor.advance(config.lifecycle.drain_timeout)
        self.successResultOf(stopped)
