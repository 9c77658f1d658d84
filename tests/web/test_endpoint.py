"""
Tests for L{qwen_twist.web.endpoint}, L{qwen_twist.web.request},
L{qwen_twist.web.root} and L{qwen_twist.pipeline}: the pipeline every
endpoint shares, driven over an in-memory transport.
"""

from __future__ import annotations

import json

from twisted.internet import defer, error as ierror
from twisted.python.failure import Failure
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseNeverReceived

from qwen_twist import errors
from qwen_twist.pipeline import AccessLog
from qwen_twist.upstream.failures import UpstreamTimeout

from tests.web.helpers import EmulatorHarness, GatewayHarness

CHAT = {"model": "qwen3:8b", "messages": [{"role": "user", "content": "Hi"}]}
NATIVE_OK = {
    "model": "qwen3:8b",
    "created_at": "2025-07-07T20:22:19.184789Z",
    "message": {"role": "assistant", "content": "Hello!"},
    "done": True,
    "done_reason": "stop",
    "prompt_eval_count": 26,
    "eval_count": 3,
}


class BodyParsingTests(SynchronousTestCase):
    """
    Bad request bodies get a clear 400 (or 413) and cost the upstream nothing.
    """

    def setUp(self) -> None:
        self.harness = GatewayHarness({"limits": {"max_body_bytes": 4096}})

    def assertRefused(self, transport: object, status: int, needle: str) -> dict:
        response = self.harness.response(transport)
        self.assertEqual(response.status, status)
        self.assertEqual(response.headers["content-type"], "application/json")
        error = response.json()["error"]
        self.assertIn(needle, error["message"])
        self.assertEqual(set(error), {"message", "type", "param", "code"})
        self.assertEqual(self.harness.upstream.calls, [])
        return error

    def test_malformed_json(self) -> None:
        """
        A body that is not JSON is a 400 saying so.
        """
        _, transport = self.harness.request("POST", "/v1/chat/completions", b"{not json")
        error = self.assertRefused(transport, 400, "not valid JSON")
        self.assertEqual(error["type"], "invalid_request_error")

    def test_invalid_utf8(self) -> None:
        """
        A body that is not UTF-8 is a 400, not a crash.
        """
        _, transport = self.harness.request(
            "POST", "/v1/chat/completions", b'{"model": "\xff\xfe"}'
        )
        self.assertRefused(transport, 400, "UTF-8")

    def test_nan_rejected(self) -> None:
        """
        C{NaN} and C{Infinity} are not JSON, whatever Python's parser accepts.
        """
        _, transport = self.harness.request(
            "POST", "/v1/chat/completions",
            b'{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":NaN}',
        )
        self.assertRefused(transport, 400, "NaN")

    def test_deep_nesting(self) -> None:
        """
        Nesting deep enough to exhaust the parser's recursion is a 400.
        """
        self.harness = GatewayHarness({"limits": {"max_body_bytes": 1 << 20}})
        body = b"[" * 100000 + b"]" * 100000
        _, transport = self.harness.request("POST", "/v1/chat/completions", body)
        self.assertRefused(transport, 400, "nested too deeply")

    def test_empty_body(self) -> None:
        """
        An empty body is a 400 that says a JSON object was expected.
        """
        _, transport = self.harness.request("POST", "/v1/chat/completions", b"")
        self.assertRefused(transport, 400, "empty")

    def test_declared_length_too_large(self) -> None:
        """
        A declared C{Content-Length} over the limit is answered 413 and the
        body is not kept.
        """
        channel, transport = self.harness.connect()
        channel.dataReceived(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 10000\r\n\r\n"
        )
        request = channel.requests[-1] if hasattr(channel, "requests") else None
        channel.dataReceived(b"x" * 10000)
        error = self.assertRefused(transport, 413, "too large")
        self.assertEqual(error["code"], "request_too_large")
        del request

    def test_chunked_body_too_large(self) -> None:
        """
        A chunked body (no declared length) that grows past the limit is
        answered 413 too.
        """
        channel, transport = self.harness.connect()
        channel.dataReceived(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(3):
            channel.dataReceived(b"800\r\n" + b"y" * 0x800 + b"\r\n")
        channel.dataReceived(b"0\r\n\r\n")
        self.assertRefused(transport, 413, "too large")


class RoutingTests(SynchronousTestCase):
    """
    Unknown URLs and methods are JSON errors; every response carries the
    gateway's own headers.
    """

    def setUp(self) -> None:
        self.harness = GatewayHarness()

    def test_unknown_url(self) -> None:
        """
        An unknown URL is a JSON 404 naming the method and path.
        """
        # (C{/} and C{/api/...} are Ollama's native API: tests.web.test_native.)
        for path in ("/nope", "/v1", "/v1/nope", "/v1/chat", "/v1/chat/completions/x",
                     "/apix/chat"):
            _, transport = self.harness.request("POST", path, CHAT)
            response = self.harness.response(transport)
            self.assertEqual(response.status, 404, path)
            self.assertEqual(
                response.json()["error"]["message"], "Unknown request URL: POST %s" % (path,)
            )

    def test_wrong_method(self) -> None:
        """
        A known URL with the wrong method is a 405 listing the allowed one.
        """
        _, transport = self.harness.request("GET", "/v1/chat/completions")
        response = self.harness.response(transport)
        self.assertEqual(response.status, 405)
        self.assertEqual(response.headers["allow"], "POST")
        _, transport = self.harness.request("POST", "/v1/models", CHAT)
        self.assertEqual(self.harness.response(transport).status, 405)

    def test_common_headers(self) -> None:
        """
        Every response names the server as qwengate (no Twisted version) and
        carries a request id.
        """
        _, transport = self.harness.request("GET", "/health")
        response = self.harness.response(transport)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["server"], "qwengate")
        self.assertRegex(response.headers["x-request-id"], "^[0-9a-f]{32}$")
        self.assertEqual(response.json()["status"], "ok")
        self.assertEqual(self.harness.upstream.calls, [])


class UpstreamFailureTests(SynchronousTestCase):
    """
    Upstream failures become the section 8 errors.
    """

    def setUp(self) -> None:
        self.harness = GatewayHarness()

    def chat(self) -> tuple:
        _, transport = self.harness.request("POST", "/v1/chat/completions", CHAT)
        return transport, self.harness.upstream.calls[-1]

    def test_success(self) -> None:
        """
        A plain chat call is translated both ways (TV-16) and observed once.
        """
        transport, call = self.chat()
        self.assertEqual((call.method, call.path), ("POST", "/api/chat"))
        self.assertEqual(call.payload["stream"], False)
        call.respond(200, NATIVE_OK)
        body = self.harness.response(transport).json()
        self.assertEqual(body["choices"][0]["message"]["content"], "Hello!")
        self.assertEqual(body["usage"]["total_tokens"], 29)
        [ctx] = self.harness.finished
        self.assertEqual((ctx.status, ctx.outcome, ctx.model), (200, "ok", "qwen3:8b"))

    def test_unreachable(self) -> None:
        """
        Connection refused is a 502 C{upstream_unavailable} that does not
        name the upstream address.
        """
        transport, call = self.chat()
        call.deferred.errback(Failure(ierror.ConnectionRefusedError()))
        response = self.harness.response(transport)
        self.assertEqual(response.status, 502)
        error = response.json()["error"]
        self.assertEqual(error["code"], "upstream_unavailable")
        self.assertEqual(error["message"], "cannot reach the model server")

    def test_cause_recorded(self) -> None:
        """
        Every 5xx records its cause once: the exception class with the
        reasons it wraps, and the upstream it came from; the access log
        line carries it (issue 10: refused, reset and timeout must be told
        apart).
        """
        transport, call = self.chat()
        lost = Failure(ierror.ConnectionLost())
        error = ResponseNeverReceived([lost])
        error.upstream_where = "10.0.0.7:11434"
        call.deferred.errback(Failure(error))
        self.assertEqual(self.harness.response(transport).status, 502)
        [ctx] = self.harness.finished
        self.assertEqual(ctx.cause, "ResponseNeverReceived [ConnectionLost] from 10.0.0.7:11434")
        events: list = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        AccessLog().call_finished(ctx)
        [line] = [formatEvent(e) for e in events if e.get("log_namespace") == "qwengate.access"]
        self.assertIn(" 502 error ", line)
        self.assertTrue(line.endswith(
            " cause=ResponseNeverReceived [ConnectionLost] from 10.0.0.7:11434"), line)

    def test_upstream_5xx_cause(self) -> None:
        """
        An Ollama 5xx passed on records the upstream status as the cause.
        """
        transport, call = self.chat()
        call.respond(500, {"error": "boom"})
        self.assertEqual(self.harness.response(transport).status, 500)
        [ctx] = self.harness.finished
        self.assertEqual(ctx.cause, "Ollama HTTP 500 from 127.0.0.1:11434")

    def test_no_cause_below_500(self) -> None:
        """
        A 4xx has no cause line.
        """
        transport, call = self.chat()
        call.respond(404, {"error": "model 'x' not found"})
        self.assertEqual(self.harness.response(transport).status, 404)
        [ctx] = self.harness.finished
        self.assertIsNone(ctx.cause)

    def test_timeout(self) -> None:
        """
        An expired deadline is a 504 C{upstream_timeout}.
        """
        transport, call = self.chat()
        call.deferred.errback(Failure(UpstreamTimeout("Ollama did not answer within 3 s")))
        response = self.harness.response(transport)
        self.assertEqual(response.status, 504)
        self.assertEqual(response.json()["error"]["code"], "upstream_timeout")

    def test_model_not_found(self) -> None:
        """
        Ollama's 404 is a 404 C{model_not_found} naming the model the
        client asked for.
        """
        transport, call = self.chat()
        call.respond(404, {"error": "model 'nope' not found"})
        error = self.harness.response(transport).json()["error"]
        self.assertEqual(error["code"], "model_not_found")
        self.assertEqual(error["message"], "model 'qwen3:8b' not found")

    def test_upstream_internals_not_echoed(self) -> None:
        """
        A 500 whose text names a blob path and an internal address reaches
        the client as a stable message and code; the text goes to the log
        with the request id.
        """
        from twisted.logger import globalLogPublisher

        logged: list = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        transport, call = self.chat()
        call.respond(500, {"error": "error loading model "
                                    "/usr/share/ollama/.ollama/models/blobs/sha256-ab "
                                    "from 10.1.2.3:11434"})
        response = self.harness.response(transport)
        self.assertEqual(response.status, 500)
        self.assertNotIn(b"blobs", response.body)
        self.assertNotIn(b"10.1.2.3", response.body)
        self.assertEqual(response.json()["error"]["code"], "upstream_error")
        request_id = response.headers["x-request-id"]
        details = [e for e in logged if "10.1.2.3:11434" in str(e.get("detail", ""))]
        self.assertEqual([e["request_id"] for e in details], [request_id])

    def test_garbage_body(self) -> None:
        """
        A 200 that is not JSON is a 502, not a crash.
        """
        transport, call = self.chat()
        call.respond(200, b"<html>proxy error</html>")
        response = self.harness.response(transport)
        self.assertEqual(response.status, 502)
        self.assertEqual(response.json()["error"]["code"], "upstream_invalid_response")

    def test_bug_is_500_without_traceback(self) -> None:
        """
        A bug in the gateway is logged and answered with a bare 500.
        """
        transport, call = self.chat()
        call.deferred.errback(Failure(ZeroDivisionError("secret internals")))
        response = self.harness.response(transport)
        self.assertEqual(response.status, 500)
        self.assertNotIn(b"secret", response.body)
        self.assertNotIn(b"Traceback", response.body)
        self.assertEqual(response.json()["error"]["code"], "internal_error")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_client_disconnect_cancels_upstream(self) -> None:
        """
        A client that gives up on a non-streaming completion frees the
        upstream request (its Deferred is cancelled, closing the connection).
        """
        channel, transport = self.harness.request("POST", "/v1/chat/completions", CHAT)
        call = self.harness.upstream.calls[-1]
        transport.clear()
        channel.connectionLost(Failure(ierror.ConnectionDone()))
        self.assertTrue(call.cancelled)
        self.assertEqual(transport.value(), b"")
        [ctx] = self.harness.finished
        self.assertEqual(ctx.outcome, "client_gone")


class HookTests(SynchronousTestCase):
    """
    Admission hooks run before any upstream call and can refuse it.
    """

    def test_refusal_costs_upstream_nothing(self) -> None:
        """
        A hook that refuses stops the call before Ollama is contacted, and
        hooks admitted earlier are released.
        """
        harness = GatewayHarness()
        released = []

        class Allow:
            def admit(self, request, ctx, plan):
                return defer.succeed(None)

            def release(self, ctx):
                released.append(ctx)

        class Refuse:
            def admit(self, request, ctx, plan):
                raise errors.ApiError(429, "slow down", "rate_limit_error")

        harness.gateway.hooks = [Allow(), Refuse()]
        _, transport = harness.request("POST", "/v1/chat/completions", CHAT)
        self.assertEqual(harness.response(transport).status, 429)
        self.assertEqual(harness.upstream.calls, [])
        self.assertEqual(len(released), 1)

    def test_release_after_call(self) -> None:
        """
        What a hook reserved is released when the call ends.
        """
        harness = GatewayHarness()
        events = []

        class Track:
            def admit(self, request, ctx, plan):
                events.append(("admit", plan.model))

            def release(self, ctx):
                events.append(("release", ctx.status))

        harness.gateway.hooks = [Track()]
        _, transport = harness.request("POST", "/v1/chat/completions", CHAT)
        harness.upstream.calls[-1].respond(200, NATIVE_OK)
        self.assertEqual(events, [("admit", "qwen3:8b"), ("release", 200)])
        self.assertEqual(json.loads(harness.response(transport).body)["object"], "chat.completion")


class RealUpstreamTests(SynchronousTestCase):
    """
    The whole pipeline with the real upstream client (treq over an
    in-memory agent) against the emulator: translation out, the native
    call, translation back, and Ollama's errors mapped on the way.
    """

    def setUp(self) -> None:
        self.harness = EmulatorHarness(
            script={"default": {"text": "Hello there!"}})

    def test_chat(self) -> None:
        """
        A chat completion reaches the emulator as a native C{/api/chat}
        call and comes back in the OpenAI shape with Ollama's counts.
        """
        _, transport = self.harness.request("POST", "/v1/chat/completions", CHAT)
        response = self.harness.response(transport)
        self.assertEqual(response.status, 200)
        body = response.json()
        self.assertEqual(body["object"], "chat.completion")
        self.assertEqual(body["choices"][0]["message"]["content"], "Hello there!")
        self.assertEqual(body["choices"][0]["finish_reason"], "stop")
        self.assertGreater(body["usage"]["completion_tokens"], 0)
        [received] = self.harness.emulator.record.requests
        self.assertEqual(received.path, "/api/chat")
        self.assertEqual(received.body["stream"], False)

    def test_stream(self) -> None:
        """
        A streamed chat completion relays the emulator's NDJSON lines as
        SSE chunks ending in C{[DONE]}.
        """
        body = dict(CHAT, stream=True)
        _, transport = self.harness.request("POST", "/v1/chat/completions", body)
        response = self.harness.response(transport)
        self.assertEqual(response.status, 200)
        self.assertTrue(response.headers["content-type"].startswith("text/event-stream"))
        events = [line[6:] for line in response.body.split(b"\n")
                  if line.startswith(b"data: ")]
        self.assertEqual(events[-1], b"[DONE]")
        text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                       for e in events[:-1] if json.loads(e)["choices"])
        self.assertEqual(text, "Hello there!")

    def test_unknown_model(self) -> None:
        """
        The emulator's 404 for an unknown model is a 404
        C{model_not_found}.
        """
        _, transport = self.harness.request(
            "POST", "/v1/chat/completions", dict(CHAT, model="nope:1b"))
        response = self.harness.response(transport)
        self.assertEqual(response.status, 404)
        self.assertEqual(response.json()["error"]["code"], errors.MODEL_NOT_FOUND)

    def test_upstream_500(self) -> None:
        """
        An Ollama 500 is a 500 the OpenAI SDK is told not to retry.
        """
        self.harness.emulator.script.push({"http_status": 500})
        _, transport = self.harness.request("POST", "/v1/chat/completions", CHAT)
        response = self.harness.response(transport)
        self.assertEqual(response.status, 500)
        self.assertEqual(response.headers["x-should-retry"], "false")
