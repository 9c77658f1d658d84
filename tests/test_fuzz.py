"""
A fuzz run of the whole request pipeline: generated methods, paths,
headers and bodies are fed as raw bytes to the gateway's Site over an
in-memory transport (L{tests.web.helpers.GatewayHarness}), any upstream
call is answered with a valid canned Ollama reply, a failure, or left
pending while the client hangs up, and every outcome is checked:

  - the gateway never answers 5xx on its own (only when the fake upstream
    was told to fail);
  - every error (status >= 400) is JSON in the OpenAI envelope;
  - every response carries the security headers;
  - nothing is logged as an unhandled error, no exception escapes, and no
    timer is left behind once the connection is gone.

Hypothesis runs derandomized and without an example database, so every run
(CI included) tries the same examples and a failure is reproducible.
"""

from __future__ import annotations

import json
from typing import Any, List, Optional, Tuple

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet import error as ierror
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.web.helpers import GatewayHarness, parse_response

ORIGIN = "https://chat.example.com"
MODEL = "qwen3:8b"

FUZZ = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)

# Canned upstream replies ------------------------------------------------------

_CHAT = {
    "model": MODEL, "created_at": "2025-07-07T20:22:19.184789Z",
    "message": {"role": "assistant", "content": "Hello!", "thinking": "hm"},
    "done": True, "done_reason": "stop", "prompt_eval_count": 26, "eval_count": 3,
}
_GENERATE = {
    "model": MODEL, "created_at": "2025-07-07T20:22:19.184789Z", "response": "Hello!",
    "done": True, "done_reason": "stop", "prompt_eval_count": 4, "eval_count": 2,
}
_TAGS = {"models": [{"name": MODEL, "model": MODEL, "modified_at": "2025-07-07T20:22:19Z",
                     "size": 1, "digest": "abc", "details": {"family": "qwen3"}}]}
_SHOW = {"modified_at": "2025-07-07T20:22:19Z", "details": {"family": "qwen3"},
         "model_info": {"qwen3.context_length": 40960}, "capabilities": ["completion"]}


def _ndjson(objects: List[dict]) -> bytes:
    return b"".join(json.dumps(o).encode("utf-8") + b"\n" for o in objects)


def canned(call: Any) -> Tuple[bytes, bool]:
    """
    A valid Ollama reply for C{call}, and whether it is a stream.
    """
    payload = call.payload if isinstance(call.payload, dict) else {}
    stream = payload.get("stream") is True
    if call.path == "/api/chat":
        if stream:
            first = dict(_CHAT, done=False, message={"role": "assistant", "content": "Hel"})
            del first["done_reason"]
            last = dict(_CHAT, message={"role": "assistant", "content": "lo"})
            return _ndjson([first, last]), True
        return _ndjson([_CHAT]), False
    if call.path == "/api/generate":
        if stream:
            first = dict(_GENERATE, done=False, response="Hel")
            del first["done_reason"]
            return _ndjson([first, dict(_GENERATE, response="lo")]), True
        return _ndjson([_GENERATE]), False
    if call.path == "/api/embed":
        inputs = payload.get("input")
        count = len(inputs) if isinstance(inputs, list) else 1
        return _ndjson([{"model": MODEL, "embeddings": [[0.25, -0.5, 1.0]] * count,
                         "prompt_eval_count": count}]), False
    if call.path in ("/api/tags", "/api/ps"):
        return _ndjson([_TAGS]), False
    if call.path == "/":
        return b"Ollama is running", False
    if call.path == "/api/embeddings":
        return _ndjson([{"embedding": [0.25, -0.5, 1.0]}]), False
    if call.path in ("/api/pull", "/api/push", "/api/create"):
        return _ndjson([{"status": "pulling manifest"}, {"status": "success"}]), stream
    if call.path in ("/api/copy", "/api/delete") or call.path.startswith("/api/blobs/"):
        return b"", False
    if call.path == "/api/show":
        return _ndjson([_SHOW]), False
    if call.path == "/api/version":
        return _ndjson([{"version": "0.12.0"}]), False
    raise AssertionError("unexpected upstream call %s %s" % (call.method, call.path))


# Strategies ---------------------------------------------------------------------

_TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_VCHAR = "".join(chr(c) for c in range(0x21, 0x7F))
#: Placeholders replaced in the serialised body by JSON that Python cannot
#: build (or would build slowly): out-of-range numbers, deep nesting.
_RAW = {
    '"@huge-float@"': "1e400",
    '"@neg-huge-float@"': "-1e999",
    '"@huge-int@"': "1" + "0" * 400,
    '"@deep-50@"': "[" * 50 + "]" * 50,
    '"@deep-600@"': "[" * 600 + "]" * 600,
    '"@deep-obj@"': '{"a":' * 300 + "1" + "}" * 300,
    '"@deep-2000@"': "[" * 2000 + "]" * 2000,
}

tokens = st.text(alphabet=_TCHAR, min_size=1, max_size=16)

scalars = (
    st.none() | st.booleans()
    | st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(sorted(s[1:-1] for s in _RAW))
    | st.sampled_from([0, -1, 1, 2 ** 31, 2 ** 63, -(2 ** 63), 1e308, -1e308, 0.5, "",
                       MODEL, "user", "assistant", "system", "tool", "text", "image_url",
                       "data:image/png;base64,iVBORw0KGgo=", "data:,", "json_object",
                       "json_schema", "function", "auto", "none", "required", "high", "max"])
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)

_TEXT_PART = st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=30)})
_IMAGE_PART = st.fixed_dictionaries({
    "type": st.just("image_url"),
    "image_url": st.fixed_dictionaries({"url": st.sampled_from([
        "data:image/png;base64,iVBORw0KGgo=", "data:image/png;base64,!!!",
        "https://example.com/cat.png", "data:", ""])}),
})
_TOOL_CALLS = [{"id": "c1", "type": "function",
                "function": {"name": "f", "arguments": "{\"a\":1}"}}]
messages = st.lists(
    st.one_of(
        st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "user"]),
                               "content": st.text(max_size=40)}),
        st.fixed_dictionaries({"role": st.just("user"),
                               "content": st.lists(_TEXT_PART | _IMAGE_PART, max_size=3)}),
        st.fixed_dictionaries({"role": st.just("assistant"), "content": st.text(max_size=20)},
                              optional={"tool_calls": st.just(_TOOL_CALLS),
                                        "reasoning_content": st.text(max_size=20)}),
        st.fixed_dictionaries({"role": st.just("tool"), "content": st.text(max_size=20),
                               "tool_call_id": st.just("c1")}),
    ),
    min_size=1,
    max_size=4,
)

#: Well-formed values for each endpoint's fields: a body built from them
#: reaches the upstream, so the response paths are fuzzed too.
_CHAT_FIELDS = {
    "model": st.just(MODEL),
    "messages": messages,
    "stream": st.booleans(),
    "stream_options": st.just({"include_usage": True}),
    "temperature": st.floats(min_value=0, max_value=2),
    "top_p": st.floats(min_value=0, max_value=1),
    "max_tokens": st.integers(min_value=1, max_value=100),
    "max_completion_tokens": st.integers(min_value=1, max_value=100),
    "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=2),
    "seed": st.integers(min_value=0, max_value=2 ** 31),
    "tools": st.just([{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object"}}}]),
    "tool_choice": st.sampled_from(["auto", "none"]),
    "response_format": st.sampled_from([{"type": "json_object"}, {"type": "text"}]),
    "reasoning_effort": st.sampled_from(["low", "medium", "high"]),
    "logprobs": st.booleans(),
    "user": st.text(max_size=10),
}
_COMPLETION_FIELDS = {
    "model": st.just(MODEL),
    "prompt": st.text(max_size=40),
    "stream": st.booleans(),
    "max_tokens": st.integers(min_value=1, max_value=100),
    "temperature": st.floats(min_value=0, max_value=2),
    "stop": st.text(max_size=5),
    "suffix": st.text(max_size=5),
}
_EMBEDDING_FIELDS = {
    "model": st.just(MODEL),
    "input": st.text(min_size=1, max_size=20) | st.lists(st.text(min_size=1, max_size=10),
                                                         min_size=1, max_size=3),
    "encoding_format": st.sampled_from(["float", "base64"]),
    "user": st.text(max_size=10),
}


def _encode(obj: Any) -> bytes:
    text = json.dumps(obj)
    for placeholder, raw in _RAW.items():
        text = text.replace(placeholder, raw)
    return text.encode("utf-8")


def _schema(fields: dict, required: Tuple[str, ...]) -> st.SearchStrategy:
    """
    Bodies for one endpoint: well-formed, then with up to three fields
    (known or not) replaced by arbitrary JSON or removed.
    """
    valid = st.fixed_dictionaries(
        {k: fields[k] for k in required},
        optional={k: v for k, v in fields.items() if k not in required},
    )
    names = st.sampled_from(sorted(fields) + ["x_unknown", ""])
    edits = st.dictionaries(names, json_values | st.just(_DELETE), max_size=3)

    def apply(body: dict, changes: dict) -> dict:
        for key, value in changes.items():
            if value is _DELETE:
                body.pop(key, None)
            else:
                body[key] = value
        return body

    return st.one_of(valid, st.builds(apply, valid, edits))


_DELETE = object()

json_bodies = st.one_of(
    _schema(_CHAT_FIELDS, ("model", "messages")),
    _schema(_COMPLETION_FIELDS, ("model", "prompt")),
    _schema(_EMBEDDING_FIELDS, ("model", "input")),
    json_values,
).map(_encode)

bodies = st.one_of(
    json_bodies,
    json_bodies,
    json_bodies,
    json_bodies.map(lambda b: b[:-1] + b"\xff\xfe" + b[-1:]),
    json_bodies.map(lambda b: b[: len(b) // 2]),
    st.binary(max_size=64),
    st.sampled_from([b"", b"   ", b"NaN", b"[]", b"null", b'{"model":' + b"9" * 5000 + b"}",
                     b"x" * 70000, b'"\\ud800"', b'{"a":"\\u0000"}']),
    st.none(),
)

_ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models",
           "/v1/models/qwen3:8b", "/v1/models/hf.co%2Fuser%2Frepo:Q4", "/v1/models/%ff%00",
           "/health", "/ready", "/", "/v1", "/v1/", "/v1/chat/completions/", "*",
           "/v1/chat/completions?x=1&y", "//v1//chat", "/v1/%2e%2e/health", "/api/chat"]
paths = st.sampled_from(_ROUTES) | st.builds(
    lambda a, b: "/" + a + ("/" + b if b else ""),
    st.text(alphabet=_VCHAR, max_size=20), st.text(alphabet=_VCHAR, max_size=10))

methods = st.sampled_from(["POST", "GET", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH",
                          "TRACE", "CONNECT"]) | tokens

#: Sensible pairs most of the time, anything otherwise.
targets = st.one_of(
    st.tuples(st.sampled_from(["GET", "HEAD"]),
              st.sampled_from(["/health", "/ready", "/v1/models", "/v1/models/qwen3:8b",
                               "/v1/models/hf.co%2Fuser%2Frepo:Q4"])),
    st.tuples(st.just("POST"),
              st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])),
    st.tuples(st.just("OPTIONS"),
              st.sampled_from(["/v1/chat/completions", "/v1/models", "/v1", "*"])),
    st.tuples(methods, paths),
)

_CONTENT_TYPES = ["application/json", "application/json; charset=utf-8",
                  "application/json; charset=latin-1", "text/plain", "",
                  "application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz",
                  "multipart/form-data", "*/*", "application/json;;;",
                  "application/json; x=\x85", "multipart/form-data; boundary=\x1c"]
header_values = st.text(alphabet=_VCHAR + " \t", max_size=40).map(str.strip) | st.text(
    alphabet="".join(chr(c) for c in range(0x20, 0x100) if c != 0x7F), max_size=20
).map(str.strip)
_FRAMING = {"content-length", "transfer-encoding"}
headers = st.lists(
    st.one_of(
        st.tuples(tokens.filter(lambda n: n.lower() not in _FRAMING), header_values),
        st.tuples(st.just("Content-Type"), st.sampled_from(_CONTENT_TYPES) | header_values),
        st.tuples(st.sampled_from(["Authorization", "X-Api-Key"]),
                  st.sampled_from(["Bearer ", "Bearer", "Basic dXNlcjpwYXNz", "bearer x" * 50,
                                   "Bearer eyJhbGciOiJub25lIn0.e30."]) | header_values
                  | header_values.map(lambda v: "Bearer " + v)),
        st.tuples(st.just("Origin"),
                  st.sampled_from([ORIGIN, "https://evil.example.com", "null"]) | header_values),
        st.tuples(st.sampled_from(["Access-Control-Request-Method",
                                   "Access-Control-Request-Headers"]), header_values),
        st.tuples(st.sampled_from(["Expect", "Connection", "Upgrade", "Accept-Encoding",
                                   "X-Forwarded-For", "X-Real-IP", "Accept", "Cookie",
                                   "Host"]),
                  st.sampled_from(["100-continue", "close", "keep-alive", "upgrade",
                                   "websocket", "gzip", "1.2.3.4, ::1", "text/event-stream"])
                  | header_values),
    ),
    max_size=6,
)

#: What the fake upstream does with each call: answer properly, fail
#: (an Ollama error status or a refused connection), never answer while
#: the client hangs up; for streams also: the client hangs up half-way
#: (C{leave}) or Ollama's connection drops half-way (C{cut}).
plans = st.sampled_from(["ok", "ok", "ok", "error", "refused", "disconnect", "leave", "cut"])


def build_request(method: str, path: str, header_list: List[Tuple[str, str]],
                  body: Optional[bytes], auth: dict) -> bytes:
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: gateway"]
    for name, value in auth.items():
        lines.append("%s: %s" % (name, value))
    for name, value in header_list:
        lines.append("%s: %s" % (name, value))
    head = "\r\n".join(lines).encode("latin-1")
    if body is not None:
        head += b"\r\nContent-Length: %d" % (len(body),)
    return head + b"\r\n\r\n" + (body or b"")


def is_native(path: str) -> bool:
    """
    Whether C{path} is served by Ollama's native API (C{/}, C{/api/...}).
    """
    path = path.split("?", 1)[0]
    return path == "/" or path == "/api" or path.startswith("/api/")


def leftover_timers(harness: GatewayHarness) -> list:
    """
    Timers of a connection or a stream still pending (the gate's own
    housekeeping timers, if any, are not a connection's).
    """
    owners = ("Channel", "SseResponse", "NdjsonResponse", "UpstreamRelay")
    return [call for call in harness.clock.getDelayedCalls()
            if any(owner in repr(call.func) for owner in owners)]


def final_response(raw: bytes) -> Any:
    """
    The response after any C{100 Continue}.
    """
    while raw.startswith(b"HTTP/1.1 100 "):
        raw = raw.split(b"\r\n\r\n", 1)[1]
    return parse_response(raw)


class PipelineFuzzTests(SynchronousTestCase):
    """
    Generated requests never make the gateway fail on its own.
    """

    def make_harness(self) -> GatewayHarness:
        return GatewayHarness({
            "auth": {"required": False},
            "limits": {"max_body_bytes": 65536, "max_header_bytes": 4096},
            "rate_limits": {"per_key_requests": 0, "per_ip_rate": 0},
            "bans": {"failures": 0},
            "response": {"cors_origins": [ORIGIN],
                         "strip_fields": ["system_fingerprint",
                                          "choices.message.reasoning_content"]},
        })

    def exercise(self, harness: GatewayHarness, method: str, path: str,
                 header_list: list, body: Optional[bytes], plan: str,
                 with_auth: bool = True) -> None:
        auth = dict(getattr(harness, "auth_headers", None) or {}) if with_auth else {}
        upstream = harness.upstream
        seen = len(upstream.calls)
        channel, transport = harness.connect()
        channel.dataReceived(build_request(method, path, header_list, body, auth))
        calls = upstream.calls[seen:]
        self.assertLessEqual(len(calls), 1)
        told_to_fail = False
        gone = False
        cut = False
        for call in calls:
            if plan == "disconnect":
                channel.connectionLost(Failure(ierror.ConnectionDone()))
                self.assertTrue(call.cancelled)
                gone = True
            elif plan == "refused":
                told_to_fail = True
                call.deferred.errback(Failure(ierror.ConnectionRefusedError()))
            elif plan == "error":
                told_to_fail = True
                call.respond(500, {"error": "model runner has unexpectedly stopped"})
            else:
                reply, stream = canned(call)
                if not stream:
                    call.respond(200, reply)
                    continue
                response = call.respond_streaming(200)
                half = len(reply) // 2
                response.send(reply[:half])
                if plan == "leave":
                    # The client hangs up mid-stream: Ollama must be stopped.
                    channel.connectionLost(Failure(ierror.ConnectionLost()))
                    self.assertEqual(response.transport.state, "stopped")
                    gone = True
                elif plan == "cut":
                    # Ollama dies mid-stream: an error event, no [DONE].
                    response.finish(ierror.ConnectionLost())
                    cut = True
                else:
                    response.send(reply[half:])
                    response.finish()
        if not gone:
            self.check_response(transport.value(), method, told_to_fail, path)
            if cut and is_native(path):
                # A native stream cut midway ends with Ollama's error line.
                self.assertNotIn(b'"done":true', transport.value())
                self.assertIn(b'\n{"error":', transport.value())
            elif cut:
                self.assertNotIn(b"data: [DONE]", transport.value())
                self.assertIn(b'data: {"error":', transport.value())
            channel.connectionLost(Failure(ierror.ConnectionDone()))
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(leftover_timers(harness), [])

    def check_response(self, raw: bytes, method: str, told_to_fail: bool,
                       path: str = "") -> None:
        response = final_response(raw)
        self.assertIsNotNone(response, raw[:500])
        if response.status >= 500:
            self.assertTrue(told_to_fail, raw[:2000])
        self.assertEqual(response.headers.get("x-content-type-options"), "nosniff", raw[:500])
        self.assertEqual(response.headers.get("server"), "qwengate")
        if response.status >= 400 and method != "HEAD":
            self.assertTrue(response.complete, raw[:500])
            self.assertEqual(response.headers.get("content-type"), "application/json")
            if response.status == 503 and path.startswith("/ready"):
                # Readiness answers with its own document, not an API error.
                self.assertEqual(response.json()["status"], "unavailable")
                return
            error = response.json()["error"]
            if is_native(path):
                # Ollama's native API: Ollama's own error shape.
                self.assertIsInstance(error, str)
                return
            self.assertEqual(set(error), {"message", "type", "param", "code"})
            self.assertIsInstance(error["message"], str)
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            self.assertTrue(response.complete)
            self.assertTrue(response.body.endswith(b"\n\n"))
        if response.headers.get("content-type", "").startswith("application/x-ndjson"):
            self.assertTrue(response.complete)
            self.assertTrue(response.body.endswith(b"\n"))

    @FUZZ
    @given(body=bodies, plan=plans, header_list=headers,
           path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]))
    def test_api_bodies(self, body, plan, header_list, path) -> None:
        """
        Any body sent to the generation and embedding endpoints gets a
        proper answer: a success, a 4xx in the OpenAI envelope, or a 5xx
        only when Ollama failed.
        """
        self.exercise(self.harness, "POST", path, header_list, body, plan)

    @FUZZ
    @given(body=st.one_of(_schema(_CHAT_FIELDS, ("model", "messages")),
                          _schema(_COMPLETION_FIELDS, ("model", "prompt"))),
           plan=plans, header_list=headers)
    def test_streams(self, body, plan, header_list) -> None:
        """
        Streaming requests (well-formed or edited) under every upstream
        behaviour: complete streams, failures before the first byte,
        clients that leave and upstreams that die half-way.
        """
        path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        body["stream"] = True
        self.exercise(self.harness, "POST", path, header_list, _encode(body), plan)

    @FUZZ
    @given(target=targets, header_list=headers, body=bodies, plan=plans,
           with_auth=st.booleans())
    def test_requests(self, target, header_list, body, plan, with_auth) -> None:
        """
        Any method, path, header set and body together: the same guarantees.
        """
        method, path = target
        self.exercise(self.harness, method, path, header_list, body, plan, with_auth)

    @settings(FUZZ, max_examples=150)
    @given(raw=st.binary(max_size=300) | st.builds(
        lambda a, b: a + b"\r\n" + b, st.sampled_from([
            b"POST /v1/chat/completions HTTP/1.1", b"GET / HTTP/1.0", b"GET /health HTTP/9.9",
            b"GET  HTTP/1.1", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6",
            b"POST /v1/embeddings HTTP/1.1\r\nTransfer-Encoding: chunked\r\n",
        ]), st.binary(max_size=200)))
    def test_raw_bytes(self, raw) -> None:
        """
        Arbitrary bytes on the connection (TLS records sent to plain HTTP,
        broken framing) never raise or log an unhandled error; whatever is
        answered is well-formed.
        """
        harness = self.harness
        channel, transport = harness.connect()
        channel.dataReceived(raw)
        for call in list(harness.upstream.calls):
            if not call.deferred.called:
                call.respond(400, {"error": "bad"})
        value = transport.value()
        if value:
            self.check_response(value, "GET", False)
        channel.connectionLost(Failure(ierror.ConnectionDone()))
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(leftover_timers(harness), [])

    def setUp(self) -> None:
        self.harness = self.make_harness()
