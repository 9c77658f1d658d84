"""
Tests for L{qwen_twist.web.agents}: C{/v1/messages},
C{/v1/messages/count_tokens} and C{/v1/responses} in the shared pipeline,
driven with a C{Clock} and an in-memory transport: Anthropic's envelope for
every error (the gate's included), C{ping} keep-alives while a model loads,
late failures as the route's own error event, cancellation, backpressure
and what the observers see.
"""

from __future__ import annotations

import json
import os

from twisted.internet import error as ierror
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.gate.keyfile import add_key

from tests.web.helpers import GatewayHarness
from tests.web.test_relay import DONE, content

MESSAGES = {"model": "qwen3:8b", "max_tokens": 32, "stream": True,
            "messages": [{"role": "user", "content": "Hi"}],
            "metadata": {"user_id": "end-user-1"}}
RESPONSES = {"model": "qwen3:8b", "input": "Hi", "stream": True}


def named(body: bytes) -> list:
    """
    The C{(event, payload)} pairs of a named-event stream.
    """
    result = []
    for frame in body.decode("utf-8").split("\n\n"):
        if frame:
            name, data = frame.split("\n")
            result.append((name[len("event: "):], json.loads(data[len("data: "):])))
    return result


class MessagesPipelineTests(SynchronousTestCase):
    """
    C{/v1/messages} through the gateway.
    """

    def setUp(self) -> None:
        self.harness = GatewayHarness({"streaming": {"keepalive_interval": 15.0},
                                       "upstream": {"timeouts": {"idle": 60.0}}})

    def start(self, body=MESSAGES, path="/v1/messages", headers=None):
        self.channel, self.transport = self.harness.request("POST", path, body, headers)
        return self.harness.upstream.calls[-1] if self.harness.upstream.calls else None

    def response(self):
        return self.harness.response(self.transport)

    def test_stream_and_context(self) -> None:
        """
        The stream is Anthropic's event sequence with the SSE headers; the
        call's context has the route, the end user, and usage in the
        OpenAI shape the token budget settles with.
        """
        call = self.start()
        self.assertEqual(call.path, "/api/chat")
        upstream = call.respond_streaming()
        upstream.send(content("Hi") + DONE)
        response = self.response()
        self.assertTrue(response.headers["content-type"].startswith("text/event-stream"))
        self.assertEqual([name for name, _ in named(response.body)], [
            "message_start", "content_block_start", "content_block_delta",
            "content_block_stop", "message_delta", "message_stop"])
        self.assertTrue(response.complete)
        [ctx] = self.harness.finished
        self.assertEqual((ctx.route, ctx.outcome, ctx.end_user),
                         ("messages", "ok", "end-user-1"))
        self.assertEqual(ctx.usage["total_tokens"], 7)

    def test_ping_while_model_loads(self) -> None:
        """
        While Ollama has not answered, the stream is committed and kept
        alive with Anthropic's ping events (not comments).
        """
        call = self.start()
        self.harness.clock.advance(15)
        self.harness.clock.advance(15)
        self.assertEqual(named(self.response().body), [("ping", {"type": "ping"})] * 2)
        call.respond_streaming().send(content("Hi") + DONE)
        names = [name for name, _ in named(self.response().body)]
        self.assertEqual(names[2], "message_start")
        self.assertEqual(names[-1], "message_stop")

    def test_late_error_is_anthropic_event(self) -> None:
        """
        Once committed, an upstream 503 becomes an error event of type
        overloaded_error, and no message_stop.
        """
        call = self.start()
        self.harness.clock.advance(15)
        call.respond(503, {"error": "server busy, please try again."})
        got = named(self.response().body)
        self.assertEqual(got[-1], ("error", {"type": "error", "error": {
            "type": "overloaded_error",
            "message": "the model server is unavailable; retry later"}}))
        self.assertTrue(self.response().complete)
        self.assertEqual(self.harness.finished[0].outcome, "truncated")

    def test_early_error_is_anthropic_json(self) -> None:
        """
        An upstream 404 before anything was sent is a JSON error in
        Anthropic's envelope with the status.
        """
        call = self.start()
        call.respond(404, {"error": "model 'qwen3:8b' not found"})
        response = self.response()
        self.assertEqual(response.status, 404)
        self.assertEqual(response.json(), {"type": "error", "error": {
            "type": "not_found_error", "message": "model 'qwen3:8b' not found"}})

    def test_non_streaming(self) -> None:
        """
        Without stream, the answer is one message object.
        """
        call = self.start(dict(MESSAGES, stream=False))
        call.respond(200, json.loads(DONE.replace(b'"content": ""', b'"content": "Yo"')))
        body = self.response().json()
        self.assertEqual((body["type"], body["content"]),
                         ("message", [{"type": "text", "text": "Yo"}]))
        self.assertEqual(self.harness.finished[0].usage["total_tokens"], 7)

    def test_client_disconnect_and_backpressure(self) -> None:
        """
        A slow client pauses the upstream; one that leaves stops it.
        """
        upstream = self.start().respond_streaming()
        upstream.send(content("a"))
        self.transport.producer.pauseProducing()
        self.assertEqual(upstream.transport.state, "paused")
        self.transport.producer.resumeProducing()
        self.channel.connectionLost(Failure(ierror.ConnectionDone()))
        self.assertEqual(upstream.transport.state, "stopped")
        self.assertEqual(self.harness.finished[0].outcome, "client_gone")

    def test_drain_aborts_with_overloaded_error(self) -> None:
        """
        A stream still running when the shutdown drain times out ends with
        an overloaded_error event, never message_stop; new calls get a 503
        in Anthropic's envelope.
        """
        upstream = self.start().respond_streaming()
        upstream.send(content("a"))
        drained = self.harness.gateway.drain(30)
        channel, transport = self.harness.request("POST", "/v1/messages", MESSAGES)
        refused = self.harness.response(transport)
        self.assertEqual((refused.status, refused.json()["error"]["type"]),
                         (503, "overloaded_error"))
        self.harness.clock.advance(30)
        self.successResultOf(drained)
        got = named(self.response().body)
        self.assertEqual(got[-1][1]["error"]["type"], "overloaded_error")
        self.assertNotIn("message_stop", [name for name, _ in got])
        self.assertEqual(upstream.transport.state, "stopped")

    def test_count_tokens(self) -> None:
        """
        count_tokens answers without an upstream call; unknown URLs below
        /v1/messages are 404s in Anthropic's envelope; a trailing slash is
        the endpoint itself.
        """
        self.assertIsNone(self.start({"model": "m", "messages": [
            {"role": "user", "content": "abcdefgh"}]}, "/v1/messages/count_tokens"))
        response = self.response()
        self.assertEqual((response.status, response.json()), (200, {"input_tokens": 2}))
        self.assertEqual(response.headers["x-qwengate-token-count"], "estimate")
        self.start({}, "/v1/messages/batches")
        response = self.response()
        self.assertEqual((response.status, response.json()["error"]["type"]),
                         (404, "not_found_error"))
        self.assertEqual(self.start(dict(MESSAGES, stream=False), "/v1/messages/").path,
                         "/api/chat")

    def test_refusals_in_anthropic_envelope(self) -> None:
        """
        A bad body, a wrong method and the gate's 401 all come in
        Anthropic's envelope.
        """
        self.start({"model": "m", "messages": []})
        self.assertEqual(self.response().json()["error"]["type"], "invalid_request_error")
        self.channel, self.transport = self.harness.request("GET", "/v1/messages")
        self.assertEqual((self.response().status, self.response().json()["type"]),
                         (405, "error"))
        directory = self.mktemp()
        os.makedirs(directory)
        keys = os.path.join(directory, "keys.yaml")
        add_key(keys, "alice", now=0)
        harness = GatewayHarness({"auth": {"required": True, "keys_file": keys}})
        _, transport = harness.request("POST", "/v1/messages", MESSAGES,
                                       {"x-api-key": "sk-ant-wrong"})
        response = harness.response(transport)
        self.assertEqual(response.status, 401)
        self.assertEqual(response.json()["error"]["type"], "authentication_error")
        self.assertEqual(harness.upstream.calls, [])


class ResponsesPipelineTests(SynchronousTestCase):
    """
    C{/v1/responses} through the gateway.
    """

    def setUp(self) -> None:
        self.harness = GatewayHarness({"streaming": {"keepalive_interval": 15.0}})
        self.channel, self.transport = self.harness.request(
            "POST", "/v1/responses", RESPONSES)
        self.call = self.harness.upstream.calls[-1]

    def test_stream(self) -> None:
        """
        The semantic events with increasing sequence numbers, ending with
        response.completed; keep-alives are comments here.
        """
        self.harness.clock.advance(15)
        self.call.respond_streaming().send(content("Hi") + DONE)
        body = self.harness.response(self.transport).body
        self.assertTrue(body.startswith(b": keep-alive\n\n"))
        got = named(body[len(b": keep-alive\n\n"):])
        self.assertEqual(got[0][0], "response.created")
        self.assertEqual(got[-1][0], "response.completed")
        self.assertEqual([p["sequence_number"] for _, p in got], list(range(len(got))))
        self.assertEqual(self.harness.finished[0].usage["total_tokens"], 7)

    def test_late_error_is_response_failed(self) -> None:
        """
        Once committed, an upstream error status is response.created then
        response.failed with the message.
        """
        self.harness.clock.advance(15)
        self.call.respond(500, {"error": "llama runner process has terminated"})
        body = self.harness.response(self.transport).body
        got = named(body[len(b": keep-alive\n\n"):])
        self.assertEqual([name for name, _ in got],
                         ["response.created", "response.in_progress", "response.failed"])
        # A stable message: Ollama's own text goes to the log only.
        self.assertEqual(got[-1][1]["response"]["error"]["message"],
                         "the model server failed to process the request")
