"""
Tests for L{qwen_twist.web.native}: Ollama's native API through the gate,
over an in-memory transport with a fake upstream and a L{Clock}.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Dict, Optional, Tuple

from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.gate.keyfile import add_key

from tests.web.helpers import GatewayHarness

#: Ollama's native routes as its router registers them
#: (ollama/ollama C{server/routes.go}, C{GenerateRoutes}, v0.33.0-rc2),
#: written out here, with what the gateway must do with each:
#: C{served} for any valid key, C{managed} only for a key with the
#: C{models:manage} scope, C{refused} for every key.
OLLAMA_ROUTES = (
    ("HEAD", "/", "served"),
    ("GET", "/", "served"),
    ("HEAD", "/api/version", "served"),
    ("GET", "/api/version", "served"),
    ("GET", "/api/status", "refused"),
    ("POST", "/api/pull", "managed"),
    ("POST", "/api/push", "managed"),
    ("HEAD", "/api/tags", "served"),
    ("GET", "/api/tags", "served"),
    ("POST", "/api/show", "served"),
    ("DELETE", "/api/delete", "managed"),
    ("POST", "/api/me", "refused"),
    ("POST", "/api/signout", "refused"),
    ("DELETE", "/api/user/keys/:encodedKey", "refused"),
    ("POST", "/api/create", "managed"),
    ("POST", "/api/blobs/:digest", "managed"),
    ("HEAD", "/api/blobs/:digest", "managed"),
    ("POST", "/api/copy", "managed"),
    ("POST", "/api/experimental/web_search", "refused"),
    ("POST", "/api/experimental/web_fetch", "refused"),
    ("GET", "/api/experimental/model-recommendations", "refused"),
    ("GET", "/api/ps", "served"),
    ("POST", "/api/generate", "served"),
    ("POST", "/api/chat", "served"),
    ("POST", "/api/embed", "served"),
    ("POST", "/api/embeddings", "served"),
)

BLOB = b"a GGUF file"
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()

#: A body each POST/DELETE route accepts.
BODIES: Dict[str, Any] = {
    "/api/pull": {"model": "qwen3:8b"},
    "/api/push": {"model": "qwen3:8b"},
    "/api/show": {"model": "qwen3:8b"},
    "/api/delete": {"model": "qwen3:8b"},
    "/api/create": {"model": "mine:1", "from": "qwen3:8b"},
    "/api/copy": {"source": "qwen3:8b", "destination": "mine:1"},
    "/api/generate": {"model": "qwen3:8b", "prompt": "hi"},
    "/api/chat": {"model": "qwen3:8b", "messages": [{"role": "user", "content": "hi"}]},
    "/api/embed": {"model": "qwen3:8b", "input": "hi"},
    "/api/embeddings": {"model": "qwen3:8b", "prompt": "hi"},
}

#: Any stream's last line and any JSON answer's body, for the fake upstream.
FINAL = b'{"done":true,"status":"success","prompt_eval_count":3,"eval_count":4}\n'

CHAT = BODIES["/api/chat"]


class NativeGateMixin:
    """
    A gateway requiring keys: C{plain} (no scope), C{manager} (scope
    C{models:manage}) and C{narrow} (only C{qwen3:8b}).
    """

    def make(self, **sections: Any) -> GatewayHarness:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "keys.yaml")
        now = time.time()
        self.plain = add_key(path, "plain", now=now)
        self.manager = add_key(path, "manager", scopes=("models:manage",), now=now)
        self.narrow = add_key(path, "narrow", models=("qwen3:8b",), now=now)
        self.narrow_manager = add_key(path, "narrow-manager", models=("qwen3:8b",),
                                      scopes=("models:manage",), now=now)
        config: Dict[str, Any] = {"auth": {"required": True, "keys_file": path},
                                  "rate_limits": {"per_ip_rate": 0}}
        config.update(sections)
        self.harness = GatewayHarness(config)
        return self.harness

    def call(self, method: str, path: str, body: Any = None, key: Optional[str] = None,
             headers: Optional[dict] = None) -> Tuple[Any, Any]:
        headers = dict(headers or {})
        if key is not None:
            headers["Authorization"] = "Bearer " + key
        channel, transport = self.harness.request(method, path, body, headers)
        return channel, transport

    def response(self, transport: Any) -> Any:
        return self.harness.response(transport)

    def last_upstream(self) -> Any:
        calls = self.harness.upstream.calls
        return calls[-1] if calls else None


class RouteWalkTests(NativeGateMixin, SynchronousTestCase):
    """
    Every route of Ollama's router meets its fate, and nothing else under
    C{/api} reaches Ollama.
    """

    def request_for(self, method: str, template: str) -> Tuple[str, Any]:
        path = template.replace(":digest", DIGEST).replace(":encodedKey", "abc")
        if method == "POST" and path.startswith("/api/blobs/"):
            return path, BLOB
        if method in ("POST", "DELETE"):
            return path, BODIES.get(path, {"model": "qwen3:8b"})
        return path, None

    def attempt(self, method: str, template: str, key: str) -> Tuple[Any, Any]:
        path, body = self.request_for(method, template)
        before = len(self.harness.upstream.calls)
        _, transport = self.call(method, path, body, key)
        calls = self.harness.upstream.calls[before:]
        for call in calls:
            call.respond(200, FINAL)
        return self.response(transport), calls

    def test_walk(self) -> None:
        """
        Served routes reach Ollama (same path, body unchanged) for a plain
        key; managed routes are an Ollama-style 403 for it and reach
        Ollama for a key with the scope; refused routes are a 403 for
        both and never reach Ollama.
        """
        self.make()
        for method, template, fate in OLLAMA_ROUTES:
            where = "%s %s" % (method, template)
            path, body = self.request_for(method, template)
            plain, plain_calls = self.attempt(method, template, self.plain)
            managed, managed_calls = self.attempt(method, template, self.manager)
            if fate == "served":
                self.assertEqual(plain.status, 200, where)
                self.assertEqual(len(plain_calls), 1, where)
                self.assertEqual(plain_calls[0].path, path, where)
                upstream_method = "GET" if method == "HEAD" else method
                self.assertEqual(plain_calls[0].method, upstream_method, where)
                if isinstance(body, dict):
                    self.assertEqual(plain_calls[0].payload, body, where)
            elif fate == "managed":
                self.assertEqual((plain.status, plain_calls), (403, []), where)
                if method != "HEAD":
                    self.assertIn("models:manage", plain.json()["error"], where)
                self.assertIn(managed.status, (200, 201), where)
                self.assertEqual([(c.method, c.path) for c in managed_calls],
                                 [(method, path)], where)
                if method == "POST" and path.startswith("/api/blobs/"):
                    self.assertEqual(managed_calls[0].payload, BLOB)
            else:
                for response, calls in ((plain, plain_calls), (managed, managed_calls)):
                    self.assertEqual((response.status, calls), (403, []), where)
                    self.assertEqual(list(response.json()), ["error"], where)
                    self.assertIn("not available through the gateway",
                                  response.json()["error"], where)

    def test_unknown_paths(self) -> None:
        """
        Any other path under C{/api} (a typo, a trailing slash, a wrong
        method) is refused in Ollama's shape without reaching Ollama.
        """
        self.make()
        for method, path, status in (
                ("POST", "/api/nope", 404), ("GET", "/api/chat/", 404),
                ("GET", "/api", 404), ("POST", "/api/blobs", 404),
                ("GET", "/api/chat", 405), ("POST", "/api/tags", 405),
                ("PUT", "/api/experimental/x", 404),
                ("GET", "//api/tags", 404), ("GET", "//", 404),
                ("POST", "/api/blobs/../me", 404), ("POST", "/api/blobs/%2e%2e%2fme", 404),
                ("POST", "/api/blobs/" + DIGEST + "/../../me", 404)):
            response, calls = self.attempt(method, path, self.manager)
            self.assertEqual((response.status, calls), (status, []), (method, path))
            self.assertEqual(list(response.json()), ["error"])


class ErrorShapeTests(NativeGateMixin, SynchronousTestCase):
    """
    Every refusal on a native route is C{{"error": "..."}} with Ollama's
    status; the gate's headers stay.
    """

    def test_no_key(self) -> None:
        """
        No key, or a wrong one: 401 with C{WWW-Authenticate}; never
        reaches Ollama.
        """
        self.make()
        for headers in ({}, {"Authorization": "Bearer qg-wrong"}):
            _, transport = self.call("POST", "/api/chat", CHAT, headers=headers)
            response = self.response(transport)
            self.assertEqual((response.status, response.json()),
                             (401, {"error": "invalid api key"}))
            self.assertIn("Bearer", response.headers["www-authenticate"])
        self.assertEqual(self.harness.upstream.calls, [])

    def test_no_key_on_probe(self) -> None:
        """
        Ollama's probe C{/} needs a key too, refused in Ollama's shape.
        """
        self.make()
        _, transport = self.call("GET", "/")
        response = self.response(transport)
        self.assertEqual((response.status, response.json()), (401, {"error": "invalid api key"}))

    def test_x_api_key(self) -> None:
        """
        C{X-Api-Key} is accepted like C{Authorization: Bearer}.
        """
        self.make()
        _, transport = self.call("GET", "/api/version", headers={"X-Api-Key": self.plain})
        self.last_upstream().respond(200, {"version": "0.33.0"})
        self.assertEqual(self.response(transport).json(), {"version": "0.33.0"})

    def test_model_not_allowed(self) -> None:
        """
        A key limited to one model gets a 403 for another, for chat and
        for show alike; C{qwen3:8b} may also be spelt as it was listed.
        """
        self.make()
        for path, body in (("/api/chat", dict(CHAT, model="llama3")),
                           ("/api/show", {"model": "llama3"}),
                           ("/api/show", {"name": "llama3"})):
            _, transport = self.call("POST", path, body, self.narrow)
            response = self.response(transport)
            self.assertEqual(response.status, 403)
            self.assertIn("may not use model 'llama3'", response.json()["error"])
        self.assertEqual(self.harness.upstream.calls, [])

    def test_management_within_allow_list(self) -> None:
        """
        A scoped key with a model list may manage only its models: every
        model a call names (both of a copy) must be on the list.
        """
        self.make()
        for path, body in (("/api/pull", {"model": "llama3"}),
                           ("/api/copy", {"source": "qwen3:8b", "destination": "llama3"}),
                           ("/api/copy", {"source": "llama3", "destination": "qwen3:8b"})):
            _, transport = self.call("POST", path, body, self.narrow_manager)
            self.assertEqual(self.response(transport).status, 403, body)
        self.assertEqual(self.harness.upstream.calls, [])
        self.call("POST", "/api/pull", {"model": "qwen3:8b"}, self.narrow_manager)
        self.assertEqual(self.last_upstream().path, "/api/pull")

    def test_anonymous_never_manages(self) -> None:
        """
        With C{auth.required: false}, anonymous callers may infer but
        never manage models.
        """
        self.harness = GatewayHarness()
        _, transport = self.call("POST", "/api/pull", {"model": "qwen3:8b"})
        self.assertEqual(self.response(transport).status, 403)
        self.assertEqual(self.harness.upstream.calls, [])

    def test_rate_limited(self) -> None:
        """
        A key over its request limit gets Ollama's 429 shape with
        C{Retry-After} (what Ollama's clients and proxies wait on).
        """
        self.make(rate_limits={"per_ip_rate": 0, "per_key_requests": 1,
                               "per_key_window": 60})
        self.call("GET", "/api/version", key=self.plain)
        self.last_upstream().respond(200, {"version": "1"})
        _, transport = self.call("GET", "/api/version", key=self.plain)
        response = self.response(transport)
        self.assertEqual(response.status, 429)
        self.assertEqual(list(response.json()), ["error"])
        self.assertGreaterEqual(int(response.headers["retry-after"]), 1)

    def test_prompt_limit(self) -> None:
        """
        A native prompt over C{limits.max_prompt_chars} is a 400 before
        Ollama sees it.
        """
        self.make(limits={"max_prompt_chars": 10})
        body = {"model": "qwen3:8b", "prompt": "x" * 11}
        _, transport = self.call("POST", "/api/generate", body, self.plain)
        response = self.response(transport)
        self.assertEqual(response.status, 400)
        self.assertIn("prompt too long", response.json()["error"])
        self.assertEqual(self.harness.upstream.calls, [])

    def test_body_too_large(self) -> None:
        """
        A body over C{limits.max_body_bytes} is a 413 in Ollama's shape, a
        blob upload included.
        """
        self.make(limits={"max_body_bytes": 1024})
        big = dict(CHAT, messages=[{"role": "user", "content": "x" * 2000}])
        for path, body, key in (("/api/chat", big, self.plain),
                                ("/api/blobs/" + DIGEST, b"x" * 2000, self.manager)):
            _, transport = self.call("POST", path, body, key)
            response = self.response(transport)
            self.assertEqual(response.status, 413, path)
            self.assertIn("too large", response.json()["error"])
        self.assertEqual(self.harness.upstream.calls, [])

    def test_option_policy(self) -> None:
        """
        The option policy guards native bodies too: an option outside the
        allow-list is a 400 in Ollama's shape before Ollama sees it, and
        C{keep_alive} is clamped in the forwarded body.
        """
        self.make()
        body = dict(CHAT, options={"num_gpu": 0})
        _, transport = self.call("POST", "/api/chat", body, self.plain)
        response = self.response(transport)
        self.assertEqual(response.status, 400)
        self.assertIn("num_gpu", response.json()["error"])
        self.assertEqual(self.harness.upstream.calls, [])
        self.call("POST", "/api/chat", dict(CHAT, keep_alive=0), self.plain)
        self.assertGreater(self.last_upstream().payload["keep_alive"], 0)

    def test_invalid_bodies(self) -> None:
        """
        Invalid JSON, a non-object and a missing model are 400s in
        Ollama's shape.
        """
        self.make()
        for body, text in ((b"{nope", "not valid JSON"), (b"[1]", "JSON object"),
                           (b"{}", "model is required")):
            _, transport = self.call("POST", "/api/chat", body, self.plain)
            response = self.response(transport)
            self.assertEqual(response.status, 400)
            self.assertIn(text, response.json()["error"])

    def test_upstream_error_passed_on(self) -> None:
        """
        Ollama's own errors keep their status on native routes (a 404
        unknown model, a 499), with the gateway's stable message: Ollama's
        text never reaches clients (it can name paths and addresses).
        """
        self.make()
        for status, text, shown in (
                (404, "model 'x' not found", "model 'x' not found"),
                (499, "request canceled at /var/lib/ollama",
                 "the model server refused the request")):
            _, transport = self.call("POST", "/api/show", {"model": "x"}, self.plain)
            self.last_upstream().respond(status, {"error": text})
            response = self.response(transport)
            self.assertEqual((response.status, response.json()), (status, {"error": shown}))

    def test_v1_keeps_openai_shape(self) -> None:
        """
        The OpenAI routes still answer in the OpenAI envelope.
        """
        self.make()
        _, transport = self.call("POST", "/v1/chat/completions", {"model": "m"})
        self.assertIn("message", self.response(transport).json()["error"])


class ListingTests(NativeGateMixin, SynchronousTestCase):
    """
    C{/api/tags} and C{/api/ps} show only what the key may use.
    """

    LISTING = {"models": [{"name": "qwen3:8b", "model": "qwen3:8b"},
                          {"name": "llama3:latest", "model": "llama3:latest"}]}

    def test_filtered(self) -> None:
        """
        A narrow key sees its one model; a key without a list sees all.
        """
        self.make()
        for path in ("/api/tags", "/api/ps"):
            _, transport = self.call("GET", path, key=self.narrow)
            self.last_upstream().respond(200, self.LISTING)
            names = [m["name"] for m in self.response(transport).json()["models"]]
            self.assertEqual(names, ["qwen3:8b"], path)
            _, transport = self.call("GET", path, key=self.plain)
            self.last_upstream().respond(200, self.LISTING)
            self.assertEqual(self.response(transport).json(), self.LISTING)

    def test_head(self) -> None:
        """
        C{HEAD /api/tags} answers the headers only.
        """
        self.make()
        _, transport = self.call("HEAD", "/api/tags", key=self.plain)
        self.last_upstream().respond(200, self.LISTING)
        raw = transport.value()
        self.assertTrue(raw.startswith(b"HTTP/1.1 200"))
        self.assertTrue(raw.endswith(b"\r\n\r\n"))


class StreamTests(NativeGateMixin, SynchronousTestCase):
    """
    NDJSON relayed with the C{/v1} relay's behaviour.
    """

    def finished(self) -> Any:
        return self.harness.finished[-1]

    def test_relay_and_usage(self) -> None:
        """
        Lines arrive unchanged as C{application/x-ndjson}; the C{done}
        line's counts become the call's usage.
        """
        self.make()
        _, transport = self.call("POST", "/api/chat", CHAT, self.plain)
        upstream = self.last_upstream().respond_streaming()
        upstream.send(b'{"message":{"content":"Hi"},"done":false}\n{"done":tr')
        upstream.send(b'ue,"prompt_eval_count":3,"eval_count":4}\n')
        upstream.finish()
        response = self.response(transport)
        self.assertEqual(response.headers["content-type"], "application/x-ndjson")
        self.assertEqual(response.body, b'{"message":{"content":"Hi"},"done":false}\n'
                                        b'{"done":true,"prompt_eval_count":3,"eval_count":4}\n')
        self.assertEqual(self.finished().usage["total_tokens"], 7)
        self.assertEqual(self.finished().route, "native_chat")

    def test_keepalive_while_loading(self) -> None:
        """
        While Ollama loads the model (no headers yet), the client gets
        empty chat deltas every keep-alive interval, valid NDJSON.
        """
        self.make(streaming={"keepalive_interval": 5})
        _, transport = self.call("POST", "/api/chat", CHAT, self.plain)
        self.harness.clock.advance(5)
        self.harness.clock.advance(5)
        response = self.response(transport)
        self.assertEqual(response.status, 200)
        lines = [json.loads(line) for line in response.body.splitlines()]
        self.assertEqual(len(lines), 2)
        self.assertEqual(lines[0]["message"], {"role": "assistant", "content": ""})
        self.assertEqual((lines[0]["done"], lines[0]["model"]), (False, "qwen3:8b"))
        self.assertTrue(lines[0]["created_at"].endswith("Z"))

    def test_failure_after_keepalive_is_error_line(self) -> None:
        """
        Once keep-alives committed a 200, an upstream refusal becomes the
        stream's last line: Ollama's C{{"error": ...}}, never C{done}.
        """
        self.make(streaming={"keepalive_interval": 5})
        _, transport = self.call("POST", "/api/chat", CHAT, self.plain)
        self.harness.clock.advance(5)
        self.last_upstream().respond(404, {"error": "model 'qwen3:8b' not found"})
        response = self.response(transport)
        self.assertTrue(response.complete)
        last = json.loads(response.body.splitlines()[-1])
        self.assertEqual(last, {"error": "model 'qwen3:8b' not found"})

    def test_refusal_before_stream(self) -> None:
        """
        An upstream refusal before any byte keeps its status and shape.
        """
        self.make()
        _, transport = self.call("POST", "/api/generate", BODIES["/api/generate"], self.plain)
        self.last_upstream().respond(400, {"error": "\"m\" does not support generate"})
        response = self.response(transport)
        self.assertEqual((response.status, response.json()),
                         (400, {"error": "\"qwen3:8b\" does not support generate"}))

    def test_cut_midway(self) -> None:
        """
        A stream Ollama cuts before C{done} ends with an error line.
        """
        self.make()
        _, transport = self.call("POST", "/api/chat", CHAT, self.plain)
        upstream = self.last_upstream().respond_streaming()
        upstream.send(b'{"message":{"content":"Hi"},"done":false}\n')
        upstream.finish()
        response = self.response(transport)
        lines = response.body.splitlines()
        self.assertEqual(json.loads(lines[-1]),
                         {"error": "upstream closed the stream before completion"})
        self.assertNotIn(b'"done":true', response.body)
        self.assertEqual(self.finished().outcome, "truncated")

    def test_idle_deadline(self) -> None:
        """
        Silence past C{upstream.timeouts.idle} ends the stream with an
        error line and closes the upstream.
        """
        self.make(upstream={"timeouts": {"idle": 30}},
                  streaming={"keepalive_interval": 0})
        _, transport = self.call("POST", "/api/chat", CHAT, self.plain)
        upstream = self.last_upstream().respond_streaming()
        upstream.send(b'{"done":false}\n')
        self.harness.clock.advance(31)
        last = json.loads(self.response(transport).body.splitlines()[-1])
        self.assertIn("upstream timeout", last["error"])
        self.assertEqual(upstream.transport.state, "stopped")

    def test_client_gone_cancels_upstream(self) -> None:
        """
        A client that disconnects mid-stream stops the upstream read.
        """
        self.make()
        channel, transport = self.call("POST", "/api/chat", CHAT, self.plain)
        upstream = self.last_upstream().respond_streaming()
        upstream.send(b'{"done":false}\n')
        channel.connectionLost(Exception("gone"))
        self.assertEqual(upstream.transport.state, "stopped")
        self.assertEqual(self.finished().outcome, "client_gone")

    def test_not_streaming(self) -> None:
        """
        C{stream: false}: one JSON answer, passed on with its usage.
        """
        self.make()
        body = dict(CHAT, stream=False)
        _, transport = self.call("POST", "/api/chat", body, self.plain)
        self.last_upstream().respond(200, {"message": {"content": "Hi"}, "done": True,
                                           "prompt_eval_count": 2, "eval_count": 1})
        response = self.response(transport)
        self.assertEqual(response.json()["message"], {"content": "Hi"})
        self.assertEqual(self.finished().usage["total_tokens"], 3)

    def test_pull_progress(self) -> None:
        """
        An allowed pull streams Ollama's progress lines through, with no
        total deadline (a pull runs for hours), ending at C{success}.
        """
        self.make(upstream={"timeouts": {"total": 10}})
        _, transport = self.call("POST", "/api/pull", {"model": "qwen3:8b"}, self.manager)
        upstream = self.last_upstream().respond_streaming()
        upstream.send(b'{"status":"pulling manifest"}\n')
        self.harness.clock.advance(20)
        upstream.send(b'{"status":"success"}\n')
        response = self.response(transport)
        self.assertTrue(response.complete)
        self.assertEqual(response.body,
                         b'{"status":"pulling manifest"}\n{"status":"success"}\n')

    def test_gpu_queue(self) -> None:
        """
        Inference waits for a GPU slot; listing does not.
        """
        self.make(admission={"slots": 1, "max_depth": 4, "max_wait": 60})
        self.call("POST", "/api/chat", CHAT, self.plain)
        first = self.last_upstream()
        self.call("POST", "/api/chat", CHAT, self.plain)
        self.assertEqual(len(self.harness.upstream.calls), 1)
        self.call("GET", "/api/tags", key=self.plain)
        self.assertEqual(self.last_upstream().path, "/api/tags")
        self.assertIsNot(first, self.last_upstream())


class PreflightTests(SynchronousTestCase):
    """
    Browser preflights under C{/api} are answered like those under C{/v1}.
    """

    def test_preflight(self) -> None:
        """
        A preflight from a configured origin is a 204 with the CORS
        headers, without the gate or Ollama being asked.
        """
        origin = "https://chat.example.com"
        keys_file = os.path.join(self.mktemp() + "-keys.yaml")
        harness = GatewayHarness({"response": {"cors_origins": [origin]},
                                  "auth": {"required": True, "keys_file": keys_file}})
        for path in ("/api/chat", "/api/tags", "/api/nope"):
            _, transport = harness.request("OPTIONS", path, headers={
                "Origin": origin, "Access-Control-Request-Method": "POST"})
            response = harness.response(transport)
            self.assertEqual(response.status, 204, path)
            self.assertEqual(response.headers["access-control-allow-origin"], origin)
        self.assertEqual(harness.upstream.calls, [])
