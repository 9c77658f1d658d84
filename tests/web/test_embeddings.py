"""
Tests for L{qwen_twist.web.embeddings}: bounded inputs, a bounded upstream
answer, and the vector-at-a-time translation through the whole pipeline.
"""

from __future__ import annotations

import base64
import json
import struct

from twisted.trial.unittest import SynchronousTestCase

from tests.web.helpers import GatewayHarness

MiB = 1024 * 1024


class EmbeddingsEndpointTests(SynchronousTestCase):
    """
    C{POST /v1/embeddings} over the in-memory harness.
    """

    def setUp(self) -> None:
        self.harness = GatewayHarness({"upstream": {"max_embeddings_bytes": MiB}})

    def embed(self, body: dict) -> tuple:
        _, transport = self.harness.request("POST", "/v1/embeddings", body)
        return transport

    def test_base64_answer(self) -> None:
        """
        The vectors come back base64-packed with the usage, as the SDK
        expects, and the call records the usage.
        """
        transport = self.embed({"model": "e", "input": ["a", "b"], "encoding_format": "base64"})
        self.harness.upstream.calls[-1].respond(
            200, {"model": "e", "embeddings": [[0.5, -1.0], [0.25, 0.5]],
                  "prompt_eval_count": 4})
        response = self.harness.response(transport)
        body = response.json()
        self.assertEqual(response.status, 200)
        self.assertEqual(body["data"][0]["embedding"], "AAAAPwAAgL8=")
        self.assertEqual(struct.unpack("<2f", base64.b64decode(body["data"][1]["embedding"])),
                         (0.25, 0.5))
        self.assertEqual(body["usage"], {"prompt_tokens": 4, "total_tokens": 4})
        self.assertEqual(self.harness.finished[-1].usage, body["usage"])

    def test_too_many_inputs(self) -> None:
        """
        More than 2,048 inputs are refused before any upstream call.
        """
        transport = self.embed({"model": "e", "input": ["x"] * 2049})
        response = self.harness.response(transport)
        self.assertEqual((response.status, response.json()["error"]["code"]),
                         (400, "too_many_inputs"))
        self.assertEqual(self.harness.upstream.calls, [])

    def test_answer_too_large(self) -> None:
        """
        An upstream answer over upstream.max_embeddings_bytes is a 502,
        not a gateway that reads without end.
        """
        transport = self.embed({"model": "e", "input": ["x"] * 100})
        vector = [0.123456789] * 1000
        self.harness.upstream.calls[-1].respond(
            200, json.dumps({"embeddings": [vector] * 100}).encode())
        response = self.harness.response(transport)
        self.assertEqual(response.status, 502)
        self.assertEqual(response.json()["error"]["code"], "upstream_invalid_response")
