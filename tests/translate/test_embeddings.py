"""
Tests for L{qwen_twist.translate.embeddings}: reference sections 5.3 and
6.4, test vectors TV-33 and TV-34.
"""

from __future__ import annotations

import base64
import json
import random
import struct

from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.errors import ApiError
from qwen_twist.translate.embeddings import (
    embeddings_request,
    embeddings_response,
    embeddings_response_bytes,
    encode_base64,
)


class EmbeddingsRequestTests(SynchronousTestCase):
    """
    Section 5.3.
    """

    def assertRejected(self, body, param):
        """
        C{embeddings_request(body)} is a 400 naming C{param}.
        """
        error = self.assertRaises(ApiError, embeddings_request, body)
        self.assertEqual((error.status, error.type, error.param),
                         (400, "invalid_request_error", param), (body, error.message))

    def test_tv33_request(self):
        """
        TV-33: an array input is forwarded as is, with no C{stream} key.
        """
        request = embeddings_request({"model": "nomic-embed-text", "input": ["a", "b"]})
        self.assertEqual(request.payload, {"model": "nomic-embed-text", "input": ["a", "b"]})
        self.assertEqual(
            (request.path, request.model, request.stream, request.prompt_chars,
             request.max_tokens, request.encoding_format),
            ("/api/embed", "nomic-embed-text", False, 2, None, "float"),
        )

    def test_tv34_request(self):
        """
        TV-34: a string input and C{base64} encoding.
        """
        request = embeddings_request({"model": "e", "input": "a", "encoding_format": "base64"})
        self.assertEqual(request.payload, {"model": "e", "input": "a"})
        self.assertEqual(request.encoding_format, "base64")

    def test_tv34_errors(self):
        """
        TV-34: unknown encodings, empty arrays and token arrays are 400s.
        """
        self.assertRejected({"model": "e", "input": "a", "encoding_format": "int8"},
                            "encoding_format")
        self.assertRejected({"model": "e", "input": []}, "input")
        self.assertRejected({"model": "e", "input": [[1, 2, 3]]}, "input")
        self.assertRejected({"model": "e", "input": [[1, 2], "a"]}, "input")

    def test_token_arrays(self):
        """
        Token arrays (LangChain's C{OpenAIEmbeddings()} default) are decoded
        with the decoder given, one text per array; without a decoder the
        400 names LangChain's C{check_embedding_ctx_length=False}.
        """
        def decoder(ids):
            return "".join(chr(96 + i) for i in ids)

        request = embeddings_request({"model": "e", "input": [[1, 2], [3]]}, decoder)
        self.assertEqual(request.payload["input"], ["ab", "c"])
        request = embeddings_request({"model": "e", "input": [8, 9]}, decoder)
        self.assertEqual(request.payload["input"], ["hi"])
        error = self.assertRaises(ApiError, embeddings_request, {"model": "e", "input": [[1]]})
        self.assertEqual((error.status, error.param, error.code),
                         (400, "input", "token_arrays_unsupported"))
        self.assertIn("check_embedding_ctx_length=False", error.message)

        def failing(ids):
            raise KeyError(ids[0])

        error = self.assertRaises(ApiError, embeddings_request,
                                  {"model": "e", "input": [[99999999]]}, failing)
        self.assertEqual((error.status, error.param), (400, "input"))

    def test_empty_string(self):
        """
        C{input:""} becomes C{[""]}, as in Ollama compat.
        """
        self.assertEqual(embeddings_request({"model": "e", "input": ""}).payload["input"], [""])

    def test_encoding_case_insensitive(self):
        """
        C{BASE64} and C{Float} are accepted and normalised.
        """
        for given, expected in (("BASE64", "base64"), ("Float", "float"), (None, "float")):
            body = {"model": "e", "input": "a", "encoding_format": given}
            self.assertEqual(embeddings_request(body).encoding_format, expected)

    def test_input_errors(self):
        """
        Token ids, missing input, mixed arrays and other types are 400s on
        C{input}.
        """
        for value in (None, [1, 2], ["a", 1], ["a", None], 5, {"text": "a"}, [True]):
            self.assertRejected({"model": "e", "input": value}, "input")

    def test_dimensions_and_extensions(self):
        """
        C{dimensions}, C{truncate} and C{keep_alive} are forwarded; C{user}
        is dropped.
        """
        payload = embeddings_request({"model": "e", "input": "a", "dimensions": 256,
                                      "truncate": False, "keep_alive": "1m",
                                      "user": "u"}).payload
        self.assertEqual(payload, {"model": "e", "input": "a", "dimensions": 256,
                                   "truncate": False, "keep_alive": "1m"})

    def test_field_errors(self):
        """
        Wrong types are 400s naming the field.
        """
        rows = [
            ("x", None),
            ({"input": "a"}, "model"),
            ({"model": "e", "input": "a", "dimensions": 0}, "dimensions"),
            ({"model": "e", "input": "a", "dimensions": "256"}, "dimensions"),
            ({"model": "e", "input": "a", "encoding_format": 1}, "encoding_format"),
            ({"model": "e", "input": "a", "truncate": "no"}, "truncate"),
        ]
        for body, param in rows:
            self.assertRejected(body, param)

    def test_prompt_chars(self):
        """
        Every input's characters count.
        """
        self.assertEqual(embeddings_request({"model": "e", "input": ["ab", "cde"]}).prompt_chars, 5)
        self.assertEqual(embeddings_request({"model": "e", "input": "abcd"}).prompt_chars, 4)


class EmbeddingsResponseTests(SynchronousTestCase):
    """
    Section 6.4.
    """

    native = {"model": "nomic-embed-text", "embeddings": [[0.5, -1.0], [0.25, 0.5]],
              "prompt_eval_count": 4}

    def test_tv33_float(self):
        """
        TV-33: the complete float response.
        """
        self.assertEqual(
            embeddings_response(self.native, model="nomic-embed-text", encoding_format="float"),
            {"object": "list",
             "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -1.0]},
                      {"object": "embedding", "index": 1, "embedding": [0.25, 0.5]}],
             "model": "nomic-embed-text",
             "usage": {"prompt_tokens": 4, "total_tokens": 4}},
        )

    def test_tv34_base64(self):
        """
        TV-34: C{[0.5, -1.0]} is C{"AAAAPwAAgL8="} (little-endian float32).
        """
        response = embeddings_response({"embeddings": [[0.5, -1.0]]}, model="e",
                                       encoding_format="base64")
        self.assertEqual(response["data"][0]["embedding"], "AAAAPwAAgL8=")
        self.assertEqual(response["usage"], {"prompt_tokens": 0, "total_tokens": 0})

    def test_base64_round_trip(self):
        """
        The SDK's decoding (little-endian float32) gives the vector back.
        """
        vector = [0.1 * i for i in range(-5, 6)]
        decoded = struct.unpack("<%df" % len(vector), base64.b64decode(encode_base64(vector)))
        for got, want in zip(decoded, vector):
            self.assertAlmostEqual(got, want, places=6)

    def test_model_echoed(self):
        """
        C{model} is the client's string.
        """
        self.assertEqual(
            embeddings_response(self.native, model="alias", encoding_format="float")["model"],
            "alias",
        )

    def test_malformed_replies(self):
        """
        Missing or malformed embeddings are 502 protocol errors.
        """
        for native in ("x", {}, {"embeddings": None}, {"embeddings": [1.0]},
                       {"embeddings": [["a"]]}, {"embeddings": [[1e300]]}):
            error = self.assertRaises(ApiError, embeddings_response, native, model="e",
                                      encoding_format="base64")
            self.assertEqual(error.status, 502, native)


class InputBoundTests(SynchronousTestCase):
    """
    At most 2,048 inputs per request (OpenAI's bound), or as configured.
    """

    def test_bound(self):
        """
        2,049 inputs are a 400 naming C{input}; 2,048 pass; a smaller
        configured bound applies.
        """
        body = {"model": "e", "input": ["x"] * 2049}
        error = self.assertRaises(ApiError, embeddings_request, body)
        self.assertEqual((error.status, error.param, error.code), (400, "input", "too_many_inputs"))
        body["input"] = ["x"] * 2048
        embeddings_request(body)
        self.assertRaises(ApiError, embeddings_request, body, max_inputs=10)


class ResponseBytesTests(SynchronousTestCase):
    """
    The vector-at-a-time translator gives the same answer as the whole one.
    """

    def translate(self, raw, encoding_format):
        pieces = embeddings_response_bytes(raw, model="e", encoding_format=encoding_format)
        self.assertIsNotNone(pieces)
        return json.loads(b"".join(pieces))

    def test_same_as_whole(self):
        """
        For float and base64, with spacing and counts, the result equals
        L{embeddings_response} of the decoded body.
        """
        rng = random.Random(7)
        native = {"model": "e", "embeddings": [[rng.uniform(-1, 1) for _ in range(64)]
                                               for _ in range(5)],
                  "total_duration": 1, "prompt_eval_count": 12}
        for raw in (json.dumps(native).encode(), json.dumps(native, indent=2).encode(),
                    json.dumps(native, separators=(",", ":")).encode()):
            for fmt in ("float", "base64"):
                self.assertEqual(self.translate(raw, fmt),
                                 embeddings_response(native, model="e", encoding_format=fmt))

    def test_empty_and_odd_shapes(self):
        """
        No vectors is an empty list; a body without the key, or with it
        nested, is left to the whole decoder (L{None}).
        """
        self.assertEqual(self.translate(b'{"embeddings":[]}', "float")["data"], [])
        for raw in (b'{"x":1}', b'{"a":{"embeddings":[[1]]}}', b'{"model":"embeddings"}'):
            self.assertIsNone(embeddings_response_bytes(raw, model="e", encoding_format="float"))

    def test_malformed(self):
        """
        Vectors that are not lists of numbers are 502s.
        """
        for raw in (b'{"embeddings":[["a"]]}', b'{"embeddings":[[NaN]]}',
                    b'{"embeddings":[[1,true]]}', b'{"embeddings":[1.0]}',
                    b'{"embeddings":[[1e300]]}', b'{"embeddings":[[1]'):
            fmt = "base64" if b"1e300" in raw else "float"
            error = self.assertRaises(ApiError, embeddings_response_bytes, raw,
                                      model="e", encoding_format=fmt)
            self.assertEqual(error.status, 502, raw)
