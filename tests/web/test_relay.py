"""
Tests for L{qwen_twist.web.relay}: the SSE relay between a (fake) upstream
body and a client connection, driven with a C{Clock} and a
C{StringTransport}: headers, keep-alives, deadlines, backpressure and
cancellation.
"""

from __future__ import annotations

import json

from twisted.internet import error as ierror
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import client as wclient

from qwen_twist.web import relay
from tests.web.helpers import GatewayHarness

STREAM = {
    "model": "qwen3:8b",
    "messages": [{"role": "user", "content": "Hi"}],
    "stream": True,
    "stream_options": {"include_usage": True},
}


def line(obj: dict) -> bytes:
    return json.dumps(obj).encode("utf-8") + b"\n"


def content(text: str) -> bytes:
    return line({"model": "qwen3:8b", "created_at": "2025-01-01T00:00:00Z",
                 "message": {"role": "assistant", "content": text}, "done": False})


DONE = line({"model": "qwen3:8b", "created_at": "2025-01-01T00:00:02Z",
             "message": {"role": "assistant", "content": ""}, "done": True,
             "done_reason": "stop", "prompt_eval_count": 5, "eval_count": 2})


def stream_timers(clock) -> list:
    """
    Pending timers of the streaming code (the HTTP channel's own idle timer
    is not ours).
    """
    return [c for c in clock.getDelayedCalls()
            if "SseResponse" in repr(c.func) or "UpstreamRelay" in repr(c.func)]


def events(body: bytes) -> list:
    """
    The SSE events of a body: parsed JSON payloads, C{"[DONE]"}, or
    C{":comment"} strings.
    """
    result = []
    for block in body.decode("utf-8").split("\n\n"):
        if not block:
            continue
        for text in block.split("\n"):
            if text.startswith(":"):
                result.append(text)
            elif text.startswith("data: "):
                data = text[len("data: "):]
                result.append(data if data == "[DONE]" else json.loads(data))
            else:
                raise AssertionError("not an SSE line: %r" % (text,))
    return result


class StreamTests(SynchronousTestCase):
    """
    A streaming chat request relayed through the gateway.
    """

    def setUp(self) -> None:
        self.harness = GatewayHarness(
            {"streaming": {"keepalive_interval": 15.0},
             "upstream": {"timeouts": {"idle": 60.0}}}
        )
        self.channel, self.transport = self.harness.request(
            "POST", "/v1/chat/completions", STREAM
        )
        self.call = self.harness.upstream.calls[-1]

    def response(self):
        return self.harness.response(self.transport)

    def test_translated_stream(self) -> None:
        """
        The upstream NDJSON comes out as the section 7 event sequence with
        the SSE headers, and the response ends after C{[DONE]}.
        """
        self.assertEqual(self.call.payload["stream"], True)
        upstream = self.call.respond_streaming()
        upstream.send(content("Hel") + content("lo"))
        upstream.send(DONE)
        response = self.response()
        self.assertEqual(response.status, 200)
        self.assertTrue(response.headers["content-type"].startswith("text/event-stream"))
        self.assertEqual(response.headers["cache-control"], "no-cache")
        self.assertEqual(response.headers["x-accel-buffering"], "no")
        got = events(response.body)
        self.assertEqual(got[0]["choices"][0]["delta"], {"role": "assistant", "content": ""})
        self.assertEqual(
            [e["choices"][0]["delta"].get("content") for e in got[1:3]], ["Hel", "lo"]
        )
        self.assertEqual(got[3]["choices"][0]["finish_reason"], "stop")
        self.assertEqual(got[4]["choices"], [])
        self.assertEqual(got[4]["usage"]["total_tokens"], 7)
        self.assertEqual(got[5], "[DONE]")
        self.assertTrue(response.complete)
        # The upstream body is read to its end (its connection goes back to
        # the pool), not cut.
        self.assertEqual(upstream.transport.state, "producing")
        upstream.finish()
        self.assertEqual(upstream.transport.state, "producing")
        [ctx] = self.harness.finished
        self.assertEqual((ctx.outcome, ctx.usage["total_tokens"]), ("ok", 7))

    def test_complete_stream_drained_despite_pause(self) -> None:
        """
        A client whose buffer paused the upstream when C{[DONE]} came does
        not hold Ollama's body open: the upstream is resumed to read its
        end, and closed if the end does not come within DRAIN_TIMEOUT.
        """
        upstream = self.call.respond_streaming()
        upstream.send(content("Hel"))
        upstream.transport.pauseProducing()
        upstream.send(DONE)
        self.assertTrue(self.response().complete)
        self.assertEqual(upstream.transport.state, "producing")
        self.harness.clock.advance(relay.DRAIN_TIMEOUT)
        self.assertEqual(upstream.transport.state, "stopped")

    def test_error_before_headers_is_json(self) -> None:
        """
        An upstream error status before any byte is a normal JSON error with
        that status, not an event stream.
        """
        self.call.respond(404, {"error": "model 'qwen3:8b' not found"})
        response = self.response()
        self.assertEqual(response.status, 404)
        self.assertEqual(response.headers["content-type"], "application/json")
        self.assertEqual(response.json()["error"]["code"], "model_not_found")

    def test_keepalive_while_waiting(self) -> None:
        """
        While Ollama has not answered (a model loading), the stream is
        committed after one interval and kept alive with comments.
        """
        self.assertIsNone(self.response())
        self.harness.clock.advance(15)
        self.harness.clock.advance(15)
        response = self.response()
        self.assertEqual(response.status, 200)
        self.assertEqual(events(response.body), [": keep-alive", ": keep-alive"])
        upstream = self.call.respond_streaming()
        upstream.send(content("Hi") + DONE)
        got = events(self.response().body)
        self.assertEqual(got[2]["choices"][0]["delta"], {"role": "assistant", "content": ""})
        self.assertEqual(got[-1], "[DONE]")

    def test_late_error_is_event(self) -> None:
        """
        Once committed, an upstream error status becomes an SSE error event,
        and the stream ends without C{[DONE]}.
        """
        self.harness.clock.advance(15)
        self.call.respond(500, {"error": "llama runner process has terminated"})
        response = self.response()
        got = events(response.body)
        self.assertEqual(got[-1]["error"]["message"],
                         "the model server failed to process the request")
        self.assertNotIn("[DONE]", got)
        self.assertTrue(response.complete)

    def test_keepalive_between_chunks(self) -> None:
        """
        A long pause between tokens gets keep-alive comments; busy periods
        do not.
        """
        upstream = self.call.respond_streaming()
        upstream.send(content("a"))
        self.harness.clock.advance(15)  # a chunk was written in this interval
        self.harness.clock.advance(15)  # nothing in this one
        upstream.send(DONE)
        got = events(self.response().body)
        self.assertEqual(got.count(": keep-alive"), 1)
        self.assertEqual(got[-1], "[DONE]")

    def test_idle_timeout(self) -> None:
        """
        An upstream silent for longer than the idle timeout ends the stream
        with an C{upstream_timeout} error event and its connection is closed.
        """
        upstream = self.call.respond_streaming()
        upstream.send(content("a"))
        self.harness.clock.advance(59)
        upstream.send(content("b"))
        self.harness.clock.advance(59)
        self.assertEqual(upstream.transport.state, "producing")
        self.harness.clock.advance(2)
        self.assertEqual(upstream.transport.state, "stopped")
        got = events(self.response().body)
        self.assertEqual(got[-1]["error"]["code"], "upstream_timeout")
        self.assertNotIn("[DONE]", got)
        self.assertTrue(self.response().complete)
        self.assertEqual(stream_timers(self.harness.clock), [])

    def test_first_token_timeout(self) -> None:
        """
        Before the first chunk the (long) first-token deadline applies, not
        the idle one: a model loading for longer than the idle gap is fine,
        one that never produces a token is ended with an error event.
        """
        harness = GatewayHarness({"streaming": {"keepalive_interval": 15.0},
                                  "upstream": {"timeouts": {"idle": 60.0, "first_token": 600.0}}})
        _, transport = harness.request("POST", "/v1/chat/completions", STREAM)
        call = harness.upstream.calls[-1]
        self.assertEqual(call.headers_timeout, 600.0)
        upstream = call.respond_streaming()
        harness.clock.advance(300)
        self.assertEqual(upstream.transport.state, "producing")
        harness.clock.advance(301)
        self.assertEqual(upstream.transport.state, "stopped")
        got = events(harness.response(transport).body)
        self.assertEqual(got[-1]["error"]["code"], "upstream_timeout")
        self.assertIn("first token", got[-1]["error"]["message"])

    def test_upstream_cut(self) -> None:
        """
        An upstream connection that dies mid-stream is reported as an error
        event; no C{[DONE]}.
        """
        upstream = self.call.respond_streaming()
        upstream.send(content("Par"))
        upstream.finish(wclient.ResponseFailed([Failure(ierror.ConnectionLost())]))
        got = events(self.response().body)
        self.assertEqual(
            got[-1]["error"]["message"], "upstream closed the stream before completion"
        )
        self.assertNotIn("[DONE]", got)
        self.assertEqual(self.harness.finished[0].outcome, "truncated")

    def test_backpressure(self) -> None:
        """
        When the client connection cannot take more data, the upstream
        socket is paused, and resumed when it can.
        """
        upstream = self.call.respond_streaming()
        upstream.send(content("a"))
        self.assertIsNotNone(self.transport.producer)
        self.transport.producer.pauseProducing()
        self.assertEqual(upstream.transport.state, "paused")
        self.transport.producer.resumeProducing()
        self.assertEqual(upstream.transport.state, "producing")
        upstream.send(DONE)
        self.assertEqual(self.harness.finished[0].backpressure_pauses, 1)

    def test_slow_reader_cut(self) -> None:
        """
        A client that reads nothing for C{streaming.slow_reader_timeout}
        while the upstream is paused is cut: Ollama is stopped, the client
        connection aborted and the GPU slot freed; a resume in time stops
        the deadline.
        """
        harness = GatewayHarness({"streaming": {"slow_reader_timeout": 30.0},
                                  "admission": {"slots": 1}})
        channel, transport = harness.request("POST", "/v1/chat/completions", STREAM)
        upstream = harness.upstream.calls[-1].respond_streaming()
        upstream.send(content("a"))
        transport.producer.pauseProducing()
        harness.clock.advance(29)
        transport.producer.resumeProducing()
        transport.producer.pauseProducing()
        harness.clock.advance(29)
        self.assertEqual(upstream.transport.state, "paused")
        self.assertEqual(harness.gate.queue.busy, 1)
        harness.clock.advance(1)
        self.assertEqual(upstream.transport.state, "stopped")
        self.assertEqual(harness.gate.queue.busy, 0)
        ctx = harness.finished[0]
        self.assertEqual((ctx.outcome, ctx.error_code), ("truncated", "slow_reader"))
        self.assertTrue(transport.disconnecting or getattr(transport, "disconnected", False))

    def test_client_disconnect(self) -> None:
        """
        A client that disconnects mid-stream stops the upstream at once and
        nothing more is written.
        """
        upstream = self.call.respond_streaming()
        upstream.send(content("a"))
        self.transport.clear()
        self.channel.connectionLost(Failure(ierror.ConnectionDone()))
        self.assertEqual(upstream.transport.state, "stopped")
        upstream.send(content("b"))
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.harness.finished[0].outcome, "client_gone")
        self.assertEqual(stream_timers(self.harness.clock), [])

    def test_client_disconnect_while_waiting(self) -> None:
        """
        A client that leaves before Ollama answered cancels the upstream
        request and the keep-alive timer.
        """
        self.channel.connectionLost(Failure(ierror.ConnectionDone()))
        self.assertTrue(self.call.cancelled)
        self.assertEqual(stream_timers(self.harness.clock), [])


class StripStreamTests(SynchronousTestCase):
    """
    C{response.strip_fields} also applies to stream events.
    """

    def test_reasoning_stripped(self) -> None:
        """
        An operator who strips C{choices.delta.reasoning_content} gets
        streams without it, content intact.
        """
        harness = GatewayHarness(
            {"response": {"strip_fields": ["choices.delta.reasoning_content"]}})
        _, transport = harness.request("POST", "/v1/chat/completions", STREAM)
        upstream = harness.upstream.calls[-1].respond_streaming()
        upstream.send(line({"model": "qwen3:8b", "created_at": "2025-01-01T00:00:00Z",
                            "message": {"role": "assistant", "content": "",
                                        "thinking": "secret plan"}, "done": False}))
        upstream.send(content("Hi") + DONE)
        body = harness.response(transport).body
        self.assertNotIn(b"secret plan", body)
        got = events(body)
        self.assertEqual(got[-1], "[DONE]")
        self.assertIn("Hi", [e["choices"][0]["delta"].get("content") for e in got[:-1]
                             if e["choices"]])
