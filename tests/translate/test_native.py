"""
Tests for L{qwen_twist.translate.native}: the route table, the checks of a
native body, model-list filtering and the NDJSON line relay.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from qwen_twist import errors
from qwen_twist.gate import keys
from qwen_twist.translate import native
from qwen_twist.translate.native import MANAGED, REFUSED, SERVED, route_for


def plan(path: str, body: object) -> native.NativePlan:
    return native.native_request(path, route_for(path), body)


class RouteTests(SynchronousTestCase):
    """
    Paths are matched exactly, C{/api/blobs/:digest} and
    C{/api/user/...} by prefix.
    """

    def test_exact(self) -> None:
        """
        Known paths have their fate; a trailing slash or a longer path is
        not the same route.
        """
        self.assertEqual(route_for("/api/chat").fate, SERVED)
        self.assertEqual(route_for("/api/pull").fate, MANAGED)
        self.assertEqual(route_for("/api/me").fate, REFUSED)
        for path in ("/api/chat/", "/api/chat/x", "/api", "/api/", "/api/blobs",
                     "/api/blobs/", "/api/user", "/v1/chat/completions"):
            self.assertIsNone(route_for(path), path)

    def test_prefixed(self) -> None:
        """
        A blob digest and a user key path land on their routes.
        """
        digest = "sha256:" + "0" * 64
        self.assertEqual(route_for("/api/blobs/" + digest).name, "native_blobs")
        self.assertEqual(route_for("/api/blobs/sha256-" + "a" * 64).name, "native_blobs")
        self.assertEqual(route_for("/api/user/keys/abc").fate, REFUSED)

    def test_blob_path_is_a_digest(self) -> None:
        """
        Below C{/api/blobs/} only a digest is a route: dot segments (raw or
        percent-encoded) and extra segments could be resolved by an URL
        library into another route (C{/api/me}), so they are unknown.
        """
        digest = "sha256:" + "0" * 64
        for tail in ("../me", "%2e%2e/me", "sha256:ab", digest + "/x", digest + "/../../me",
                     digest.upper()):
            self.assertIsNone(route_for("/api/blobs/" + tail), tail)


class RequestTests(SynchronousTestCase):
    """
    L{native.native_request}: what the gate reads of a native body.
    """

    def test_chat(self) -> None:
        """
        Chat: the model, the prompt's characters (content, thinking,
        tool-call arguments), the output cap, streaming by default; the
        payload is the body unchanged.
        """
        body = {"model": "qwen3", "options": {"num_predict": 50},
                "messages": [{"role": "user", "content": "hello"},
                             {"role": "assistant", "content": "", "thinking": "hm",
                              "tool_calls": [{"function": {"name": "f",
                                                           "arguments": {"a": 1}}}]}]}
        got = plan("/api/chat", body)
        self.assertIs(got.payload, body)
        self.assertEqual((got.model, got.stream, got.max_tokens, got.needs_slot, got.scope),
                         ("qwen3", True, 50, True, None))
        self.assertEqual(got.prompt_chars, 5 + 2 + len('{"a": 1}'))

    def test_stream_false(self) -> None:
        """
        C{stream: false} is honoured; a non-boolean is refused.
        """
        self.assertFalse(plan("/api/generate", {"model": "m", "stream": False}).stream)
        e = self.assertRaises(errors.ApiError, plan, "/api/generate",
                              {"model": "m", "stream": "no"})
        self.assertEqual(e.status, 400)

    def test_prompt_chars(self) -> None:
        """
        Generate counts prompt, suffix and system; embed every input;
        embeddings its prompt.
        """
        self.assertEqual(plan("/api/generate", {"model": "m", "prompt": "abc",
                                                "suffix": "de", "system": "f"}).prompt_chars, 6)
        self.assertEqual(plan("/api/embed", {"model": "m", "input": ["ab", "c"]}).prompt_chars, 3)
        self.assertEqual(plan("/api/embed", {"model": "m", "input": "abcd"}).prompt_chars, 4)
        self.assertEqual(plan("/api/embeddings", {"model": "m", "prompt": "ab"}).prompt_chars, 2)

    def test_model_required(self) -> None:
        """
        A body without a model is Ollama's 400 C{model is required}; a
        non-string model and a non-object body are 400s too.
        """
        for body in ({}, {"model": ""}, {"messages": []}):
            e = self.assertRaises(errors.ApiError, plan, "/api/chat", body)
            self.assertEqual((e.status, e.ollama_envelope()),
                             (400, {"error": "model is required"}))
        e = self.assertRaises(errors.ApiError, plan, "/api/chat", {"model": 3})
        self.assertEqual(e.status, 400)
        e = self.assertRaises(errors.ApiError, plan, "/api/chat", [1])
        self.assertEqual(e.status, 400)
        e = self.assertRaises(errors.ApiError, plan, "/api/chat",
                              {"model": "m", "messages": "hi"})
        self.assertEqual(e.param, "messages")

    def test_legacy_name(self) -> None:
        """
        Show, pull and delete accept Ollama's legacy C{name}.
        """
        self.assertEqual(plan("/api/show", {"name": "qwen3"}).model, "qwen3")
        self.assertEqual(plan("/api/delete", {"name": "qwen3"}).models, ("qwen3",))

    def test_management(self) -> None:
        """
        Management routes need the scope and no GPU slot; copy names both
        of its models, and needs both.
        """
        got = plan("/api/copy", {"source": "a", "destination": "b"})
        self.assertEqual((got.scope, got.models, got.needs_slot),
                         (native.MANAGE_SCOPE, ("a", "b"), False))
        self.assertRaises(errors.ApiError, plan, "/api/copy", {"source": "a"})
        pull = plan("/api/pull", {"model": "a"})
        self.assertEqual((pull.stream, pull.final_key), (True, "status"))
        # The scope asked for is one a keys file can grant.
        self.assertIn(native.MANAGE_SCOPE, keys.SCOPES)

    def test_no_body(self) -> None:
        """
        Listing routes read no body and take no slot.
        """
        got = plan("/api/tags", None)
        self.assertEqual((got.payload, got.model, got.needs_slot), (None, None, False))


class ListingTests(SynchronousTestCase):
    """
    L{native.allowed_listing}.
    """

    def test_filtered(self) -> None:
        """
        Only allowed models are kept, by C{model} or C{name}; the other
        fields stay as Ollama sent them.
        """
        listing = {"models": [{"name": "a:1", "model": "a:1", "size": 1},
                              {"name": "b:1", "model": "b:1"}, "junk"], "extra": 1}
        got = native.allowed_listing(listing, lambda m: m == "a:1")
        self.assertEqual(got, {"models": [{"name": "a:1", "model": "a:1", "size": 1}],
                               "extra": 1})

    def test_not_a_listing(self) -> None:
        """
        Anything but the listing shape is a 502.
        """
        for bad in (None, [], {"models": 3}):
            e = self.assertRaises(errors.ApiError, native.allowed_listing, bad, bool)
            self.assertEqual(e.status, 502)


class StreamRelayTests(SynchronousTestCase):
    """
    L{native.NativeStreamRelay}: whole lines out, Ollama's error line at a
    failure, never a made-up C{done}.
    """

    def relay(self, **kwargs: object) -> native.NativeStreamRelay:
        kwargs.setdefault("max_line", 1 << 20)
        return native.NativeStreamRelay(**kwargs)

    def test_lines_verbatim(self) -> None:
        """
        Lines are passed on byte for byte once complete, whatever the
        chunking; the C{done} line's counts become the usage.
        """
        relay = self.relay()
        line1 = b'{"model":"m","message":{"content":"Hi \\u00e9"},"done":false}'
        line2 = b'{"done":true,"prompt_eval_count":3,"eval_count":4}'
        self.assertEqual(relay.feed(line1[:10]), b"")
        self.assertEqual(relay.feed(line1[10:] + b"\n" + line2[:5]), line1 + b"\n")
        self.assertEqual(relay.feed(line2[5:] + b"\n"), line2 + b"\n")
        self.assertEqual((relay.finished, relay.outcome, relay.chunks), (True, "complete", 2))
        self.assertEqual(relay.final_usage,
                         {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
        self.assertEqual(relay.feed(b'{"late":1}\n'), b"")
        self.assertEqual(relay.end(), b"")

    def test_cut_stream(self) -> None:
        """
        A body that ends before C{done} ends with an error line.
        """
        relay = self.relay()
        relay.feed(b'{"done":false}\n')
        out = relay.end()
        self.assertEqual(json.loads(out), {"error": "upstream closed the stream before completion"})
        self.assertEqual(relay.outcome, "error")
        self.assertNotIn(b'"done":true', out)

    def test_upstream_error_line(self) -> None:
        """
        Ollama's own error line ends the stream, in its shape but with
        the gateway's stable text (Ollama's is kept for the log).
        """
        relay = self.relay()
        out = relay.feed(b'{"done":false}\n{"error":"runner   crashed"}\n{"done":true}\n')
        self.assertEqual(out, b'{"done":false}\n{"error":"the model server failed during '
                              b'generation"}\n')
        self.assertEqual((relay.outcome, relay.upstream_error), ("error", "runner crashed"))

    def test_invalid_and_oversized(self) -> None:
        """
        Invalid JSON and an oversized line end the stream with an error.
        """
        relay = self.relay()
        self.assertEqual(json.loads(relay.feed(b"not json\n"))["error"],
                         "upstream sent invalid JSON")
        relay = self.relay(max_line=8)
        self.assertEqual(json.loads(relay.feed(b"x" * 20))["error"],
                         "upstream sent an oversized line")

    def test_fail(self) -> None:
        """
        A deadline ends the stream with one error line, once.
        """
        relay = self.relay()
        self.assertEqual(json.loads(relay.fail("upstream timeout")),
                         {"error": "upstream timeout"})
        self.assertEqual(relay.fail("again"), b"")

    def test_progress_stream(self) -> None:
        """
        Management progress ends at C{status: success}; without it the
        stream is cut.
        """
        relay = self.relay(final_key="status")
        relay.feed(b'{"status":"pulling manifest"}\n{"status":"success"}\n')
        self.assertEqual(relay.outcome, "complete")
        self.assertIsNone(relay.final_usage)
        relay = self.relay(final_key="status")
        relay.feed(b'{"status":"pulling manifest"}\n')
        self.assertIn(b"error", relay.end())


class KeepaliveTests(SynchronousTestCase):
    """
    L{native.keepalive_line}.
    """

    def test_shapes(self) -> None:
        """
        Chat and generate get an empty delta in their own shape (valid
        JSON: the ollama library parses every line); progress has none.
        """
        chat = json.loads(native.keepalive_line("/api/chat", "m", "T"))
        self.assertEqual(chat, {"model": "m", "created_at": "T", "done": False,
                                "message": {"role": "assistant", "content": ""}})
        generate = json.loads(native.keepalive_line("/api/generate", "m", "T"))
        self.assertEqual(generate["response"], "")
        self.assertIsNone(native.keepalive_line("/api/pull", "m", "T"))

    def test_response_usage(self) -> None:
        """
        Whole answers give their counts; answers without any give none.
        """
        self.assertEqual(native.response_usage({"prompt_eval_count": 2})["total_tokens"], 2)
        self.assertIsNone(native.response_usage({"embeddings": []}))
        self.assertIsNone(native.response_usage(None))
