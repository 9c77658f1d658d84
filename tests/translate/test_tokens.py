"""
Tests for L{qwen_twist.translate.tokens}: token arrays decoded only with
an encoding that is on this machine.
"""

from __future__ import annotations

import hashlib
import os
import sys
import types

from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.translate import tokens


class OfflineDecoderTests(SynchronousTestCase):
    """
    L{tokens.offline_decoder} never makes tiktoken download.
    """

    def setUp(self):
        tokens.offline_decoder.cache_clear()
        self.addCleanup(tokens.offline_decoder.cache_clear)
        self.cache = self.mktemp()
        os.makedirs(self.cache)
        self.patch(os, "environ", dict(os.environ, TIKTOKEN_CACHE_DIR=self.cache))
        self.loaded = []
        fake = types.ModuleType("tiktoken")

        def get_encoding(name):
            self.loaded.append(name)
            return types.SimpleNamespace(decode=lambda ids: "decoded %r" % (ids,))

        fake.get_encoding = get_encoding
        self.patch(sys, "modules", dict(sys.modules, tiktoken=fake))

    def test_not_cached(self):
        """
        Without the encoding file in tiktoken's cache there is no decoder,
        and tiktoken is not asked (it would download).
        """
        self.assertIsNone(tokens.offline_decoder())
        self.assertEqual(self.loaded, [])

    def test_cached(self):
        """
        With the file in tiktoken's cache, tiktoken's decoder is used.
        """
        url = tokens.ENCODING_FILES["cl100k_base"]
        name = hashlib.sha1(url.encode()).hexdigest()
        with open(os.path.join(self.cache, name), "wb") as f:
            f.write(b"x")
        decoder = tokens.offline_decoder()
        self.assertEqual(decoder([1, 2]), "decoded [1, 2]")
        self.assertEqual(self.loaded, ["cl100k_base"])

    def test_not_installed(self):
        """
        Without tiktoken there is no decoder.
        """
        url = tokens.ENCODING_FILES["cl100k_base"]
        with open(os.path.join(self.cache, hashlib.sha1(url.encode()).hexdigest()), "wb"):
            pass
        self.patch(sys, "modules", dict(sys.modules, tiktoken=None))
        self.assertIsNone(tokens.offline_decoder())

    def test_unknown_encoding(self):
        """
        An encoding whose file is not known is never loaded.
        """
        self.assertIsNone(tokens.offline_decoder("o200k_other"))


class ShapeTests(SynchronousTestCase):
    """
    L{tokens.is_token_array}.
    """

    def test_shapes(self):
        """
        One array or a list of arrays of non-negative ints; nothing else.
        """
        for value in ([1], [[1], [2, 3]], [0]):
            self.assertTrue(tokens.is_token_array(value), value)
        for value in ([], [[]], ["a"], [1, "a"], [[1], 2], [-1], [True], [1.0], "1"):
            self.assertFalse(tokens.is_token_array(value), value)
