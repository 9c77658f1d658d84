"""
Tests for L{qwen_twist.translate.models}: reference sections 5.4 and 6.4,
test vectors TV-31 and TV-32.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.errors import ApiError
from qwen_twist.translate.models import model_id_from_path, model_list, model_object

NOW = 1_800_000_000


class ModelListTests(SynchronousTestCase):
    """
    C{/api/tags} to C{/v1/models}.
    """

    def test_tv31(self):
        """
        TV-31: ids, nanosecond timestamps with offsets, and namespaces.
        """
        tags = {"models": [
            {"name": "qwen3:8b", "model": "qwen3:8b",
             "modified_at": "2025-05-10T08:06:48.639712648-07:00", "size": 1, "digest": "d",
             "details": {}},
            {"name": "hf.co/bartowski/Qwen2.5-7B-GGUF:Q4_K_M",
             "model": "hf.co/bartowski/Qwen2.5-7B-GGUF:Q4_K_M",
             "modified_at": "2025-05-04T17:37:44.706015396-07:00", "size": 1, "digest": "e",
             "details": {}},
        ]}
        self.assertEqual(
            model_list(tags, NOW),
            {"object": "list", "data": [
                {"id": "qwen3:8b", "object": "model", "created": 1746889608,
                 "owned_by": "library"},
                {"id": "hf.co/bartowski/Qwen2.5-7B-GGUF:Q4_K_M", "object": "model",
                 "created": 1746405464, "owned_by": "bartowski"},
            ]},
        )

    def test_tv31_empty(self):
        """
        TV-31 variant, E27: no models is C{data: []}, also for C{null}.
        """
        for tags in ({"models": []}, {"models": None}, {}):
            self.assertEqual(model_list(tags, NOW), {"object": "list", "data": []})

    def test_name_fallback_and_skips(self):
        """
        C{name} is used when C{model} is missing; unusable entries are
        skipped; a missing date uses the clock.
        """
        tags = {"models": [{"name": "a:1"}, {"model": ""}, "junk", {"model": 5}]}
        self.assertEqual(
            model_list(tags, NOW)["data"],
            [{"id": "a:1", "object": "model", "created": NOW, "owned_by": "library"}],
        )

    def test_malformed(self):
        """
        A reply that is not the tags shape is a 502.
        """
        for tags in ([], {"models": "x"}):
            error = self.assertRaises(ApiError, model_list, tags, NOW)
            self.assertEqual(error.status, 502)


class ModelObjectTests(SynchronousTestCase):
    """
    C{/api/show} to C{/v1/models/{id}}.
    """

    def test_tv32(self):
        """
        TV-32: the id is echoed as requested, with its namespace.
        """
        self.assertEqual(
            model_object("hf.co/bartowski/Qwen2.5-7B-GGUF:Q4_K_M",
                         {"modified_at": "2025-01-01T00:00:00Z", "capabilities": ["completion"]},
                         NOW),
            {"id": "hf.co/bartowski/Qwen2.5-7B-GGUF:Q4_K_M", "object": "model",
             "created": 1735689600, "owned_by": "bartowski"},
        )

    def test_missing_date(self):
        """
        No C{modified_at} (or a non-object reply) uses the clock.
        """
        for show in ({}, None, []):
            self.assertEqual(model_object("qwen3", show, NOW)["created"], NOW)


class ModelIdFromPathTests(SynchronousTestCase):
    """
    E22: ids in the URL.
    """

    def test_table(self):
        """
        Encoded and literal slashes both work; C{:} and other escapes are
        decoded; C{+} stays a plus.
        """
        rows = [
            (b"hf.co%2Fbartowski%2FQwen2.5-7B-GGUF:Q4_K_M", "hf.co/bartowski/Qwen2.5-7B-GGUF:Q4_K_M"),
            (b"hf.co/bartowski/Qwen2.5-7B-GGUF:Q4_K_M", "hf.co/bartowski/Qwen2.5-7B-GGUF:Q4_K_M"),
            (b"qwen3%3A8b", "qwen3:8b"),
            (b"a+b", "a+b"),
            (b"caf%C3%A9", "caf\u00e9"),
        ]
        for tail, expected in rows:
            self.assertEqual(model_id_from_path(tail), expected)

    def test_errors(self):
        """
        Empty ids, invalid UTF-8 and control characters are 400s on
        C{model}.
        """
        for tail in (b"", b"%FF", b"\xff", b"a%00b", b"a%0Ab"):
            error = self.assertRaises(ApiError, model_id_from_path, tail)
            self.assertEqual((error.status, error.param), (400, "model"), tail)
