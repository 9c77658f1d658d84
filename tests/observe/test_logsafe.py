"""
Tests for L{qwen_twist.observe.logsafe} and the access log that uses it: a client
cannot forge, garble or hide a log line.
"""

from __future__ import annotations

import io

from twisted.logger import Logger, LogPublisher, textFileLogObserver
from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.context import CallContext
from qwen_twist.observe.logsafe import clean
from qwen_twist.pipeline import AccessLog


class CleanTests(SynchronousTestCase):
    """
    L{clean} escapes what a terminal or a log parser would act on.
    """

    def test_control_characters(self) -> None:
        """
        CR, LF, ESC, DEL and C1 controls become visible escapes.
        """
        self.assertEqual(
            clean("a\r\nb\x1b[2Jc\x7f\x9b"), "a\\x0d\\x0ab\\x1b[2Jc\\x7f\\x9b"
        )

    def test_separators_and_surrogates(self) -> None:
        """
        U+2028 and a lone surrogate are escaped, so the text encodes as UTF-8.
        """
        out = clean("x\u2028y\ud800z")
        self.assertEqual(out, "x\\u2028y\\ud800z")
        out.encode("utf-8")

    def test_cut(self) -> None:
        """
        Over-long values are cut; other types pass unchanged.
        """
        self.assertEqual(clean("m" * 300), "m" * 256 + "...")
        self.assertIsNone(clean(None))
        self.assertEqual(clean(200), 200)


class AccessLogTests(SynchronousTestCase):
    """
    The access log writes exactly one readable line per call.
    """

    def render(self, model: str) -> str:
        raw = io.BytesIO()
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        publisher = LogPublisher(textFileLogObserver(text))
        log = AccessLog()
        log.log = Logger(namespace="qwengate.access", observer=publisher)
        ctx = CallContext(
            request_id="r1", route="chat_completions", method="POST",
            path="/v1/chat/completions", client_ip="192.0.2.1", started=0.0,
        )
        ctx.model = model
        ctx.finished_at = 0.5
        log.call_finished(ctx)
        text.flush()
        return raw.getvalue().decode("utf-8")

    def test_forged_line(self) -> None:
        """
        A model name with CR/LF and an ANSI escape stays on one line, with
        no raw control character.
        """
        out = self.render("x\r\n2026-01-01 fake line\x1b[2J")
        self.assertEqual(out.count("\n"), 1)
        self.assertNotIn("\x1b", out)
        self.assertNotIn("\r", out)
        self.assertIn("model=x\\x0d\\x0a2026-01-01 fake line\\x1b[2J", out)

    def test_lone_surrogate_logged(self) -> None:
        """
        A lone surrogate in the model does not make the line disappear.
        """
        out = self.render("qwen\ud83d")
        self.assertIn("model=qwen\\ud83d stream=False request_id=r1", out)
