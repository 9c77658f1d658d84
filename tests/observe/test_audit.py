"""
The audit log: records, the daily file (rotation by a C{Clock}, retention,
compression, reopen on SIGUSR1, a full disk) and standard output.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from qwen_twist.context import CallContext
from qwen_twist.gate.keys import KeyRecord
from qwen_twist.observe import audit
from qwen_twist.observe.service import install_signal

DAY = 86400.0
#: 2026-12-06 00:00:00 UTC.
MIDNIGHT = 1796515200.0


def finished_call(**fields: Any) -> CallContext:
    ctx = CallContext(request_id="r1", route="chat_completions", method="POST",
                      path="/v1/chat/completions", client_ip="192.0.2.1", started=MIDNIGHT + 1)
    ctx.finished_at = MIDNIGHT + 3.5
    for name, value in fields.items():
        setattr(ctx, name, value)
    return ctx


class RecordTests(SynchronousTestCase):
    """
    L{audit.record} and L{audit.encode}.
    """

    def test_every_field(self):
        """
        Every field is present, in order, with what the call recorded; the
        line is one line of ASCII JSON.
        """
        ctx = finished_call(
            identity="key:alice", key_record=KeyRecord("alice", "sha256:00", owner="team-a"),
            end_user="u-1", model="qwen3:8b",
            stream=True, status=200, first_byte_at=MIDNIGHT + 1.25, prompt_chars=12,
            usage={"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
            queue_wait_ms=500.0, upstream="127.0.0.1:11434", bytes_out=900)
        line = audit.encode(audit.record(ctx))
        self.assertTrue(line.endswith(b"\n"))
        self.assertEqual(line.count(b"\n"), 1)
        parsed = json.loads(line)
        self.assertEqual(list(parsed), list(audit.FIELDS))
        self.assertEqual(parsed, {
            "time": "2026-12-06T00:00:01.000Z", "request_id": "r1", "client_ip": "192.0.2.1",
            "identity": "key:alice", "key_owner": "team-a", "user": "u-1", "method": "POST",
            "route": "chat_completions", "model": "qwen3:8b", "stream": True, "status": 200,
            "error_code": None, "outcome": "complete", "prompt_chars": 12, "prompt_tokens": 5,
            "completion_tokens": 7, "ttft_ms": 250.0, "duration_ms": 2500.0,
            "queue_wait_ms": 500.0, "upstream": "127.0.0.1:11434", "bytes_out": 900,
        })

    def test_hostile_model_name(self):
        """
        A model name with a newline and non-ASCII stays inside one line.
        """
        line = audit.encode(audit.record(finished_call(model="a\nb\u2028c\xe9")))
        self.assertEqual(line.count(b"\n"), 1)
        self.assertEqual(json.loads(line)["model"], "a\nb\u2028c\xe9")

    def test_observer(self):
        """
        L{audit.AuditLog} writes one line per call to its sink, nothing
        before it has one.
        """
        log = audit.AuditLog()
        log.call_finished(finished_call())
        stream = io.BytesIO()
        log.sink = audit.StreamSink(stream)
        log.call_finished(finished_call(status=401, outcome="error",
                                        error_code="invalid_api_key"))
        [line] = stream.getvalue().splitlines()
        self.assertEqual(json.loads(line)["error_code"], "invalid_api_key")


class DailyFileTests(SynchronousTestCase):
    """
    L{audit.DailyFile} driven by a C{Clock}.
    """

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        self.path = os.path.join(self.dir, "audit.log")
        self.clock = Clock()
        self.clock.advance(MIDNIGHT + 3600)

    def make(self, **kw: Any) -> audit.DailyFile:
        sink = audit.DailyFile(self.path, self.clock, **kw)
        sink.open()
        self.addCleanup(sink.close)
        return sink

    def read(self, path: str) -> list:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            return f.read().splitlines()

    def test_buffered_then_flushed(self):
        """
        A line is written at most L{audit.FLUSH_DELAY} seconds later (one
        write per flush, not one per line).
        """
        sink = self.make()
        sink.write(b"one\n")
        sink.write(b"two\n")
        self.assertEqual(self.read(self.path), [])
        self.clock.advance(audit.FLUSH_DELAY)
        self.assertEqual(self.read(self.path), [b"one", b"two"])

    def test_rotation_at_midnight(self):
        """
        The first line after midnight UTC moves the day's file to
        C{FILE.YYYY-MM-DD}, gzipped, and starts a new one.
        """
        sink = self.make()
        sink.write(b"monday\n")
        self.clock.advance(DAY)
        sink.write(b"tuesday\n")
        sink.flush()
        self.assertEqual(self.read(self.path + ".2026-12-06.gz"), [b"monday"])
        self.assertFalse(os.path.exists(self.path + ".2026-12-06"))
        self.assertEqual(self.read(self.path), [b"tuesday"])

    def test_retention(self):
        """
        Only the newest C{retention} rotated files are kept.
        """
        sink = self.make(retention=2, compress=False)
        for day in range(5):
            sink.write(b"day %d\n" % (day,))
            self.clock.advance(DAY)
        sink.write(b"today\n")
        sink.flush()
        self.assertEqual(sorted(os.listdir(self.dir)),
                         ["audit.log", "audit.log.2026-12-09", "audit.log.2026-12-10"])
        self.assertEqual(self.read(self.path + ".2026-12-10"), [b"day 4"])

    def test_stale_file_rotated_at_open(self):
        """
        A file last written on an earlier day is rotated when opened.
        """
        os.makedirs(self.dir)
        with open(self.path, "wb") as f:
            f.write(b"old\n")
        os.utime(self.path, (MIDNIGHT - DAY + 5, MIDNIGHT - DAY + 5))
        sink = self.make(compress=False)
        sink.write(b"new\n")
        sink.flush()
        self.assertEqual(self.read(self.path + ".2026-12-05"), [b"old"])
        self.assertEqual(self.read(self.path), [b"new"])

    def test_reopen(self):
        """
        After an external logrotate moved the file, L{reopen} writes what
        was buffered to the old file and starts a new one at C{path}.
        """
        sink = self.make()
        sink.write(b"before\n")
        os.rename(self.path, self.path + ".1")
        sink.reopen()
        sink.write(b"after\n")
        sink.flush()
        self.assertEqual(self.read(self.path + ".1"), [b"before"])
        self.assertEqual(self.read(self.path), [b"after"])

    def test_disk_full(self):
        """
        A write that fails (ENOSPC from C{/dev/full}) drops and counts the
        buffered lines, logs once, and the file keeps working afterwards.
        """
        sink = self.make()
        real_fd = sink._fd
        sink._fd = os.open("/dev/full", os.O_WRONLY)
        logged = []
        sink.log = type(sink.log)(observer=logged.append)
        for i in range(3):
            sink.write(b"line %d\n" % (i,))
        sink.flush()
        sink.write(b"again\n")
        sink.flush()
        self.assertEqual(sink.dropped, 4)
        self.assertEqual(len(logged), 1)
        self.assertIn("disk full", logged[0]["why"])
        os.close(sink._fd)
        sink._fd = real_fd
        sink.write(b"fine\n")
        sink.flush()
        self.assertEqual(self.read(self.path), [b"fine"])

    def test_buffer_capped(self):
        """
        Past L{audit.MAX_BUFFER} bytes waiting, new lines are dropped and
        counted rather than held.
        """
        sink = self.make()
        sink._buffered = audit.MAX_BUFFER - 10
        sink.write(b"x" * 100 + b"\n")
        self.assertEqual(sink.dropped, 1)


class SignalTests(TestCase):
    """
    SIGUSR1 reopens the audit file through the reactor.
    """

    def test_sigusr1_reopens(self):
        """
        A real SIGUSR1 makes the handler run in the reactor thread; the
        file moved away is closed and a new one is started.
        """
        directory = os.path.abspath(self.mktemp())
        path = os.path.join(directory, "audit.log")
        sink = audit.DailyFile(path, reactor)
        sink.open()
        self.addCleanup(sink.close)
        previous = signal.getsignal(signal.SIGUSR1)
        self.addCleanup(signal.signal, signal.SIGUSR1, previous)
        reopened = defer.Deferred()

        def reopen() -> None:
            sink.reopen()
            reopened.callback(None)

        self.assertTrue(install_signal("SIGUSR1", reactor, reopen))
        sink.write(b"before\n")
        os.rename(path, path + ".1")
        os.kill(os.getpid(), signal.SIGUSR1)

        def check(_: Any) -> None:
            sink.write(b"after\n")
            sink.flush()
            with open(path + ".1", "rb") as f:
                self.assertEqual(f.read(), b"before\n")
            with open(path, "rb") as f:
                self.assertEqual(f.read(), b"after\n")

        reopened.addCallback(check)
        return reopened.addTimeout(10, reactor)


class CompressionThreadTests(TestCase):
    """
    Rotation hands compression to a thread, not the reactor.
    """

    def test_in_thread(self):
        """
        The housekeeping job runs through C{in_thread}; the gzipped file
        appears when it is done.
        """
        from twisted.internet import threads

        directory = os.path.abspath(self.mktemp())
        path = os.path.join(directory, "audit.log")
        clock = Clock()
        clock.advance(MIDNIGHT + 10)
        jobs = []

        def in_thread(job):
            d = threads.deferToThread(job)
            jobs.append(d)
            return d

        sink = audit.DailyFile(path, clock, in_thread=in_thread)
        sink.open()
        self.addCleanup(sink.close)
        sink.write(b"x\n")
        clock.advance(DAY)
        sink.write(b"y\n")
        self.assertEqual(len(jobs), 1)

        def check(_: Any) -> None:
            self.assertTrue(os.path.exists(path + ".2026-12-06.gz"))

        return jobs[0].addCallback(check)



class FastEncoderTests(SynchronousTestCase):
    """
    L{audit.encode_call} writes exactly L{audit.record}'s JSON.
    """

    def test_same_as_record(self):
        """
        Full, empty, hostile and odd contexts encode to the record.
        """
        cases = [
            finished_call(),
            finished_call(identity="key:a", model="q\"\n\u2028\xe9", end_user="u", stream=True,
                          first_byte_at=MIDNIGHT + 1.5, status=200, queue_wait_ms=0.1,
                          usage={"prompt_tokens": 1, "completion_tokens": 2}, bytes_out=7,
                          prompt_chars=3, upstream="h:1", error_code="x", outcome="truncated"),
            finished_call(status=0, finished_at=None, usage={"prompt_tokens": "lots"}),
            finished_call(outcome="client_gone", status=499),
        ]
        for ctx in cases:
            line = audit.encode_call(ctx)
            self.assertTrue(line.endswith(b"\n"))
            self.assertEqual(line.count(b"\n"), 1)
            self.assertEqual(json.loads(line), json.loads(audit.encode(audit.record(ctx))))
