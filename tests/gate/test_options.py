"""
Tests for L{qwen_twist.gate.options}: the option policy, over the
in-memory harness.
"""

from __future__ import annotations

import os
import time

from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.gate.keyfile import add_key
from qwen_twist.gate.options import duration_seconds

from tests.web.helpers import GatewayHarness

CHAT = {"model": "qwen3:8b", "messages": [{"role": "user", "content": "Hi"}]}


class DurationTests(SynchronousTestCase):
    """
    C{keep_alive} values as Ollama reads them.
    """

    def test_values(self) -> None:
        """
        Numbers are seconds; Go durations are parsed; nonsense is L{None}.
        """
        rows = [(30, 30.0), (-1, -1.0), ("5m", 300.0), ("1h30m", 5400.0), ("0", 0.0),
                ("-1s", -1.0), ("1.5s", 1.5), ("500ms", 0.5), ("10", None), ("", None),
                ("5x", None), (True, None), (None, None)]
        for value, seconds in rows:
            self.assertEqual(duration_seconds(value), seconds, value)


class OptionPolicyTests(SynchronousTestCase):
    """
    Only sampling options reach Ollama by default; caps hold for everyone.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        keys_file = os.path.join(directory, "keys.yaml")
        self.plain = add_key(keys_file, "plain", now=time.time())
        self.trusted = add_key(keys_file, "trusted", scopes=("options:all",), now=time.time())
        self.harness = GatewayHarness({
            "auth": {"required": True, "keys_file": keys_file},
            "limits": {"max_num_ctx": 8192, "max_tokens": 1000,
                       "keep_alive_min": 60, "keep_alive_max": 600},
        })

    def call(self, extra: dict, key: str = None) -> tuple:
        body = dict(CHAT, **extra)
        headers = {"Authorization": "Bearer " + (key or self.plain)}
        _, transport = self.harness.request("POST", "/v1/chat/completions", body, headers)
        calls = self.harness.upstream.calls
        payload = calls[-1].payload if calls else None
        return self.harness.response(transport), payload

    def test_server_options_refused(self) -> None:
        """
        num_gpu, use_mlock, num_thread and vocab_only are refused with 400
        naming the option; nothing reaches Ollama.
        """
        for name, value in (("num_gpu", 0), ("use_mlock", True), ("num_thread", 1),
                            ("vocab_only", True)):
            response, payload = self.call({"options": {"temperature": 0.1, name: value}})
            error = response.json()["error"]
            self.assertEqual((response.status, error["code"], error["param"]),
                             (400, "option_not_allowed", "options." + name))
            self.assertIn(name, error["message"])
        self.assertEqual(self.harness.upstream.calls, [])

    def test_scope_lifts_allow_list(self) -> None:
        """
        A key with the options:all scope may send them.
        """
        response, payload = self.call({"options": {"num_gpu": 0}}, self.trusted)
        self.assertIsNone(response)
        self.assertEqual(payload["options"], {"num_gpu": 0})

    def test_num_ctx_capped(self) -> None:
        """
        num_ctx above limits.max_num_ctx is refused, scope or not.
        """
        for key in (self.plain, self.trusted):
            response, _ = self.call({"num_ctx": 99999999}, key)
            self.assertEqual(response.status, 400)
            self.assertEqual(response.json()["error"]["param"], "options.num_ctx")
        _, payload = self.call({"num_ctx": 8192})
        self.assertEqual(payload["options"]["num_ctx"], 8192)

    def test_output_cap(self) -> None:
        """
        num_predict -1, and a max_tokens above the cap, are lowered to
        limits.max_tokens; smaller values pass.
        """
        _, payload = self.call({"options": {"num_predict": -1}})
        self.assertEqual(payload["options"]["num_predict"], 1000)
        _, payload = self.call({"max_tokens": 50000})
        self.assertEqual(payload["options"]["num_predict"], 1000)
        _, payload = self.call({"max_tokens": 20})
        self.assertEqual(payload["options"]["num_predict"], 20)

    def test_keep_alive_bounded(self) -> None:
        """
        keep_alive 0 (unload now) and -1 (forever) are clamped into the
        configured bounds.
        """
        rows = [(0, 60), (-1, 600), ("24h", 600), ("5m", 300), (120, 120)]
        for value, expected in rows:
            _, payload = self.call({"keep_alive": value})
            self.assertEqual(payload["keep_alive"], expected, value)
