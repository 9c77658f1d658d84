"""
Tests for L{qwen_twist.emulator.manage}: Ollama's model management
endpoints and the legacy C{/api/embeddings}, through HTTP (C{StubTreq}).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Tuple

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.emulator.record import Record
from qwen_twist.emulator.script import Script
from qwen_twist.emulator.server import build_resource

from tests.emulator.test_server import ndjson


class ManageTests(SynchronousTestCase):
    """
    The progress streams, statuses and texts of Ollama's management routes.
    """

    def setUp(self) -> None:
        self.script = Script()
        self.stub = StubTreq(build_resource(self.script, Record(), Clock()))

    def call(self, method: str, path: str, body: Any = None,
             data: bytes = b"") -> Tuple[int, bytes, str]:
        kwargs: dict = {"json": body} if body is not None else {"data": data}
        d = self.stub.request(method, "http://emulator" + path, **kwargs)
        self.stub.flush()
        response = self.successResultOf(d)
        content = self.successResultOf(response.content())
        kind = (response.headers.getRawHeaders(b"content-type") or [b""])[0].decode()
        return response.code, content, kind

    def names(self) -> list:
        return [m["name"] for m in json.loads(self.call("GET", "/api/tags")[1])["models"]]

    def test_pull_progress(self) -> None:
        """
        A pull streams progress lines as NDJSON ending with C{success}; a
        layer line carries its digest, total and completed counts.
        """
        status, body, kind = self.call("POST", "/api/pull", {"model": "qwen3:8b"})
        lines = ndjson(body)
        self.assertEqual((status, kind), (200, "application/x-ndjson"))
        self.assertEqual(lines[0], {"status": "pulling manifest"})
        self.assertEqual(lines[-1], {"status": "success"})
        layer = lines[2]
        self.assertTrue(layer["digest"].startswith("sha256:"))
        self.assertEqual(layer["total"], layer["completed"])

    def test_pull_unknown_fails_in_stream(self) -> None:
        """
        A pull of a model the registry does not have fails after
        C{pulling manifest} with an error line (status 200, as Ollama), or
        a 500 object when not streaming.
        """
        status, body, _ = self.call("POST", "/api/pull", {"model": "nope:1b"})
        self.assertEqual(status, 200)
        self.assertEqual(ndjson(body)[-1], {"error": "pull model manifest: file does not exist"})
        status, body, _ = self.call("POST", "/api/pull", {"model": "nope:1b", "stream": False})
        self.assertEqual((status, json.loads(body)["error"][:19]), (500, "pull model manifest"))

    def test_pull_not_streaming(self) -> None:
        """
        C{stream: false} answers the last progress object alone.
        """
        status, body, _ = self.call("POST", "/api/pull", {"model": "qwen3:8b", "stream": False})
        self.assertEqual((status, json.loads(body)), (200, {"status": "success"}))

    def test_push(self) -> None:
        """
        A push streams C{retrieving manifest}, the layer, C{pushing
        manifest} and C{success}; a model the host lacks ends in an error
        line; no model is Ollama's 400.
        """
        lines = ndjson(self.call("POST", "/api/push", {"model": "qwen3:8b"})[1])
        self.assertEqual([line["status"] for line in lines][:1] + lines[-2:],
                         ["retrieving manifest", {"status": "pushing manifest"},
                          {"status": "success"}])
        lines = ndjson(self.call("POST", "/api/push", {"model": "nope:1"})[1])
        self.assertIn("error", lines[-1])
        self.assertEqual(self.call("POST", "/api/push", {})[0], 400)

    def test_copy_and_delete(self) -> None:
        """
        Copy and delete answer 200 with an empty body and change the model
        list; deleting an unknown model is Ollama's 404.
        """
        status, body, _ = self.call("POST", "/api/copy",
                                    {"source": "qwen3:8b", "destination": "mine:1"})
        self.assertEqual((status, body), (200, b""))
        self.assertIn("mine:1", self.names())
        status, body, _ = self.call("DELETE", "/api/delete", {"model": "mine:1"})
        self.assertEqual((status, body), (200, b""))
        self.assertNotIn("mine:1", self.names())
        status, body, _ = self.call("DELETE", "/api/delete", {"model": "mine:1"})
        self.assertEqual((status, json.loads(body)), (404, {"error": "model 'mine:1' not found"}))

    def test_create(self) -> None:
        """
        Create from an existing model streams progress and adds the model;
        without C{from} or C{files} it fails with Ollama's text.
        """
        status, body, _ = self.call("POST", "/api/create",
                                    {"model": "made:1", "from": "qwen3:8b"})
        self.assertEqual(ndjson(body)[-1], {"status": "success"})
        self.assertIn("made:1", self.names())
        status, body, _ = self.call("POST", "/api/create", {"model": "other:1"})
        self.assertEqual(ndjson(body), [{"error": "neither 'from' or 'files' was specified"}])

    def test_blobs(self) -> None:
        """
        A blob is unknown (404) until uploaded with its digest (201), then
        known (200); a wrong digest is a 400.
        """
        data = b"GGUF blob"
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.assertEqual(self.call("HEAD", "/api/blobs/" + digest)[0], 404)
        self.assertEqual(self.call("POST", "/api/blobs/" + digest, data=b"other")[0], 400)
        self.assertEqual(self.call("POST", "/api/blobs/" + digest, data=data)[0], 201)
        self.assertEqual(self.call("HEAD", "/api/blobs/" + digest)[0], 200)

    def test_legacy_embeddings(self) -> None:
        """
        C{/api/embeddings} answers one C{embedding} for one C{prompt}.
        """
        status, body, _ = self.call("POST", "/api/embeddings",
                                    {"model": "qwen3:8b", "prompt": "hello"})
        vector = json.loads(body)["embedding"]
        self.assertEqual(status, 200)
        self.assertTrue(vector and all(isinstance(x, float) for x in vector))
        status, body, _ = self.call("POST", "/api/embeddings", {"model": "nope:1"})
        self.assertEqual(status, 404)
