"""
Redaction of secrets from log events: the patterns, the observer wrapper,
its installation, and real keys pushed through the gateway's error paths.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, List

from twisted.logger import LogPublisher, Logger, formatEventAsClassicLogText, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from qwen_twist.gate.keyfile import add_key
from qwen_twist.observe import ids, redact

from tests.support import async_test, start_stack

KEY = "qg-" + "A1b2C3d4" * 5
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSJ9."
       "c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU")


class PatternTests(SynchronousTestCase):
    """
    L{redact.redact}.
    """

    def test_shapes(self):
        """
        Bearer values, JWTs, prefixed keys and secret-named fields go;
        ordinary text stays.
        """
        cases = [
            "Authorization: Bearer " + KEY,
            "bearer " + JWT,
            "token " + JWT,
            "key was " + KEY + ".",
            "sk-proj-" + "x" * 40,
            '{"api_key": "hunter2hunter2"}',
            "x-api-key: abcdef123456",
            "password=opensesame&x=1",
        ]
        for text in cases:
            cleaned = redact.redact(text)
            self.assertIn(redact.MASK, cleaned, text)
            for secret in (KEY, JWT, "x" * 40, "hunter2hunter2", "abcdef123456", "opensesame"):
                self.assertNotIn(secret, cleaned)
        for text in ("GET /v1/models 200", "model=qwen3:8b stream=True", "API keys file"):
            self.assertEqual(redact.redact(text), text)


class ObserverTests(SynchronousTestCase):
    """
    L{redact.RedactingObserver} and L{redact.install}.
    """

    def test_fields_format_and_failure(self):
        """
        The format string, string fields, objects formatted with str() and
        a failure's traceback are all redacted; the original event is not
        changed.
        """
        seen: List[dict] = []
        observer = redact.RedactingObserver(seen.append)
        try:
            raise ValueError("upstream said: Authorization: Bearer " + KEY)
        except ValueError:
            failure = Failure()
        event = {"log_format": "key " + KEY + " {why} {err}", "why": "token " + JWT,
                 "err": ValueError(KEY), "log_failure": failure, "n": 5}
        observer(event)
        text = formatEventAsClassicLogText(seen[0])
        self.assertNotIn(KEY, text)
        self.assertNotIn(JWT, text)
        self.assertIn(redact.MASK, text)
        self.assertIs(event["log_failure"], failure)
        self.assertIn(KEY, event["log_format"])

    def test_clean_event_passes_unchanged(self):
        """
        An event without secrets is handed over as it is (no copy).
        """
        seen: List[dict] = []
        event = {"log_format": "{a}", "a": "hello"}
        redact.RedactingObserver(seen.append)(event)
        self.assertIs(seen[0], event)

    def test_install(self):
        """
        L{redact.install} wraps every observer of a publisher, once.
        """
        publisher = LogPublisher()
        seen: List[dict] = []
        publisher.addObserver(seen.append)
        self.assertEqual(redact.install(publisher), 1)
        self.assertEqual(redact.install(publisher), 0)
        Logger(observer=publisher).info("presented {key}", key=KEY)
        self.assertNotIn(KEY, formatEventAsClassicLogText(seen[0]))


class IdTests(SynchronousTestCase):
    """
    L{ids}: what a client may supply.
    """

    def test_request_id(self):
        """
        A well-formed X-Request-ID is kept; anything else (too long, bad
        characters, shaped like a key) is replaced by a fresh id.
        """
        self.assertEqual(ids.request_id_from(b"trace-01.a:b"), "trace-01.a:b")
        for bad in (b"", b"x" * 129, b"a b", b"a\nb", b"-leading", "\xe9".encode("utf-8"),
                    KEY.encode("ascii"), None):
            fresh = ids.request_id_from(bad)
            self.assertEqual(len(fresh), 32)
            self.assertNotEqual(fresh.encode("ascii"), bad)

    def test_user(self):
        """
        The OpenAI C{user} field: bounded, plain, not secret-shaped.
        """
        self.assertEqual(ids.clean_user("user-42@example.com"), "user-42@example.com")
        for bad in (5, "", "x" * 257, "a b", KEY, None):
            self.assertIsNone(ids.clean_user(bad))


class LiveRedactionTests(TestCase):
    """
    Real keys through the gateway's error paths; all log output grepped.
    """

    @async_test
    async def test_error_paths(self) -> None:
        """
        A valid key in a wrong place, a wrong key, malformed headers, bad
        JWTs and an upstream error echoing the request: no key or token
        reaches the (redacted) log output, the audit file or a label. The
        raw events did carry one (the request path), so the filter is what
        kept it out.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        keys = os.path.join(directory, "keys.yaml")
        real = add_key(keys, "alice", now=time.time())
        secret = os.path.join(directory, "jwt.secret")
        with open(secret, "w") as f:
            f.write("s" * 40)
        audit = os.path.join(directory, "audit.log")
        stack = await start_stack(self, {
            "auth": {"required": True, "keys_file": keys,
                     "jwt": {"enabled": True, "secret_file": secret}},
            "bans": {"failures": 0},
            "audit": {"file": audit, "compress": False},
        })
        stack.service.observe.open_audit()
        self.addCleanup(lambda: stack.service.observe.audit.sink.close())
        raw: List[str] = []
        clean: List[str] = []

        def collect_raw(event: dict) -> None:
            raw.append(formatEventAsClassicLogText(event) or "")

        cleaner = redact.RedactingObserver(
            lambda event: clean.append(formatEventAsClassicLogText(event) or ""))
        globalLogPublisher.addObserver(collect_raw)
        globalLogPublisher.addObserver(cleaner)
        self.addCleanup(globalLogPublisher.removeObserver, collect_raw)
        self.addCleanup(globalLogPublisher.removeObserver, cleaner)
        chat = {"model": "qwen3:8b", "messages": [{"role": "user", "content": "Hi"}]}
        secrets = [real, real[:-1] + ("A" if real[-1] != "A" else "B"), JWT]
        bodies = []

        async def post(path: str, headers: dict, body: Any = chat) -> None:
            response = await stack.post(path, json=body, headers=headers)
            bodies.append(await response.content())

        # A real key where it does not belong: in the URL path.
        await post("/v1/chat/completions/" + real, {"Authorization": "Bearer " + real})
        # Wrong key, malformed headers, the key as a request id.
        await post("/v1/chat/completions", {"Authorization": "Bearer " + secrets[1]})
        await post("/v1/chat/completions", {"Authorization": "Bearer " + real + " extra"})
        await post("/v1/chat/completions", {"Authorization": "Basic " + real})
        await post("/v1/chat/completions", {"X-Api-Key": real + "\t"})
        await post("/v1/chat/completions", {"Authorization": "Bearer " + real,
                                            "X-Request-ID": real})
        # JWT errors: a bad signature, garbage after a JWT header.
        await post("/v1/chat/completions", {"Authorization": "Bearer " + JWT})
        await post("/v1/chat/completions", {"Authorization": "Bearer eyJ" + real})
        # Ollama fails with a message that echoes the request.
        stack.script.push(http_status=500,
                          error="cannot parse request: Authorization: Bearer " + real)
        await post("/v1/chat/completions", {"Authorization": "Bearer " + real})
        stack.service.observe.audit.sink.flush()

        self.assertTrue(any(real in line for line in raw),
                        "no raw event carried the key: the test proves nothing")
        everything = "\n".join(clean)
        with open(audit, encoding="ascii") as f:
            audit_text = f.read()
        for value in secrets:
            self.assertNotIn(value, everything)
            self.assertNotIn(value, audit_text)
        records = [json.loads(line) for line in audit_text.splitlines()]
        self.assertEqual(len(records), 9)
        self.assertNotEqual(records[5]["request_id"], real)
        scrape = stack.service.observe.metrics.registry.collect()
        text = repr([s for family in scrape for s in family.samples])
        for value in secrets:
            self.assertNotIn(value, text)
