"""
C{qwengate-audit} over generated audit files: the current one, a plain
rotated one and a gzipped rotated one, with a torn line.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
from datetime import datetime, timezone

from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.cli import audit as cli
from qwen_twist.observe.audit import FIELDS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOW = datetime(2026, 12, 7, 9, 0, 0, tzinfo=timezone.utc)


def rec(time: str, request_id: str, ip: str, status: int, identity: str = "key:alice",
        duration: float = 100.0, prompt: int = 10, completion: int = 20) -> dict:
    record = dict.fromkeys(FIELDS)
    record.update(time=time, request_id=request_id, client_ip=ip, status=status,
                  identity=identity, duration_ms=duration, prompt_tokens=prompt,
                  completion_tokens=completion, route="chat_completions", model="qwen3:8b",
                  outcome="complete" if status < 400 else "error")
    return record


class AuditCliTests(SynchronousTestCase):
    """
    The subcommands on three days of files.
    """

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.path = os.path.join(directory, "audit.log")

        def write(path, records, opener=open, torn=False):
            with opener(path, "wb") as f:
                for r in records:
                    f.write(json.dumps(r).encode() + b"\n")
                if torn:
                    f.write(b'{"time": "2026-12-0')

        # Two days ago (gzipped): must be skipped by --since yesterday.
        write(self.path + ".2026-12-05.gz", [
            rec("2026-12-05T10:00:00.000Z", "old-1", "192.0.2.99", 401),
        ], gzip.open)
        # Yesterday (plain rotated file), with a torn last line.
        write(self.path + ".2026-12-06", [
            rec("2026-12-06T01:00:00.000Z", "r-1", "192.0.2.1", 401, identity=None),
            rec("2026-12-06T02:00:00.000Z", "r-2", "192.0.2.1", 401, identity=None),
            rec("2026-12-06T03:00:00.000Z", "r-3", "192.0.2.2", 429),
            rec("2026-12-06T04:00:00.000Z", "r-4", "192.0.2.3", 502, duration=9000.0),
            rec("2026-12-06T05:00:00.000Z", "r-5", "192.0.2.3", 200, identity="key:bob"),
        ], torn=True)
        # Today (the current file).
        write(self.path, [
            rec("2026-12-07T01:00:00.000Z", "r-6", "192.0.2.1", 401, identity=None),
            rec("2026-12-07T02:00:00.000Z", "r-7", "192.0.2.4", 200, duration=50000.0),
        ])

    def run_cli(self, *argv: str) -> str:
        out = io.StringIO()
        status = cli.main(["--file", self.path] + list(argv), out=out, now=NOW)
        self.assertEqual(status, 0)
        return out.getvalue()

    def test_top(self):
        """
        The seed's daily report: the top sources of 401, 429 and 5xx since
        yesterday, from the plain and current files; the gzipped file from
        before is not counted.
        """
        rows = [json.loads(line) for line in
                self.run_cli("--json", "top", "--status", "401,429,5xx", "--since",
                             "yesterday").splitlines()]
        self.assertEqual(rows, [
            {"client_ip": "192.0.2.1", "count": 3, "statuses": {"401": 3}},
            {"client_ip": "192.0.2.2", "count": 1, "statuses": {"429": 1}},
            {"client_ip": "192.0.2.3", "count": 1, "statuses": {"502": 1}},
        ])

    def test_top_reads_gzip(self):
        """
        Without C{--since} the gzipped rotated file is read too.
        """
        text = self.run_cli("top", "--status", "401", "-n", "10")
        self.assertIn("192.0.2.99", text)
        self.assertIn("401:3", text)

    def test_keys_for_a_period(self):
        """
        Per-identity requests, errors and tokens for yesterday only.
        """
        rows = [json.loads(line) for line in self.run_cli(
            "--json", "keys", "--since", "yesterday", "--until", "today").splitlines()]
        self.assertEqual(rows, [
            {"identity": "-", "requests": 2, "errors": 2, "prompt_tokens": 20,
             "completion_tokens": 40},
            {"identity": "key:alice", "requests": 2, "errors": 2, "prompt_tokens": 20,
             "completion_tokens": 40},
            {"identity": "key:bob", "requests": 1, "errors": 0, "prompt_tokens": 10,
             "completion_tokens": 20},
        ])

    def test_slowest(self):
        """
        The longest calls first.
        """
        rows = [json.loads(line) for line in
                self.run_cli("--json", "slowest", "-n", "2").splitlines()]
        self.assertEqual([r["request_id"] for r in rows], ["r-7", "r-4"])

    def test_request(self):
        """
        One request id's whole record.
        """
        [record] = [json.loads(line) for line in
                    self.run_cli("--json", "request", "r-3").splitlines()]
        self.assertEqual(record["status"], 429)
        self.assertEqual(list(record), list(FIELDS))

    def test_unknown_request(self):
        """
        An id that is nowhere exits 1.
        """
        self.assertEqual(cli.main(["--file", self.path, "request", "nope"], out=io.StringIO(),
                                  now=NOW), 1)

    def test_times(self):
        """
        Relative and absolute times.
        """
        self.assertEqual(cli.parse_time("24h", NOW), datetime(2026, 12, 6, 9, tzinfo=timezone.utc))
        self.assertEqual(cli.parse_time("yesterday", NOW),
                         datetime(2026, 12, 6, tzinfo=timezone.utc))
        self.assertEqual(cli.parse_time("2026-12-01", NOW),
                         datetime(2026, 12, 1, tzinfo=timezone.utc))
        self.assertRaises(cli.UsageError, cli.parse_time, "last tuesday", NOW)

    def test_module_entry_point(self):
        """
        C{python -m qwen_twist.cli.audit} runs the tool (what the
        C{qwengate-audit} console script calls).
        """
        env = dict(os.environ, PYTHONPATH=REPO)
        result = subprocess.run(
            [sys.executable, "-m", "qwen_twist.cli.audit", "--file", self.path, "request",
             "r-5"], capture_output=True, env=env, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout)["identity"], "key:bob")


class ConfiguredFileTests(SynchronousTestCase):
    """
    Without C{--file}, the audit file comes from qwengate's configuration.
    """

    def test_from_config(self):
        """
        C{audit.file} (or C{state_dir/audit/audit.log}) of C{--config}.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(directory, "audit"))
        config = os.path.join(directory, "qwengate.yaml")
        with open(config, "w") as f:
            f.write("state_dir: %s\ntls: {self_signed: true}\n" % (directory,))
        with open(os.path.join(directory, "audit", "audit.log"), "w") as f:
            f.write(json.dumps(rec("2026-12-07T01:00:00.000Z", "c-1", "192.0.2.1", 200)) + "\n")
        out = io.StringIO()
        self.assertEqual(cli.main(["--config", config, "--json", "request", "c-1"], out=out,
                                  now=NOW), 0)
        self.assertEqual(json.loads(out.getvalue())["request_id"], "c-1")

    def test_unreadable_config(self):
        """
        A configuration that cannot be read is one line and exit status 1.
        """
        self.assertEqual(cli.main(["--config", "/nonexistent/q.yaml", "keys"],
                                  out=io.StringIO(), now=NOW), 1)
