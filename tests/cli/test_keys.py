"""
Tests for L{qwen_twist.cli.keys}: C{qwengate-keys add}, C{list} and
C{revoke} end to end on a temporary keys file.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from typing import Tuple

from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.gate import keyfile, keys
from qwen_twist.cli import keys as keys_cli

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
# The checkout root (tests/<area>/this file), put on the children's PYTHONPATH.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class CommandTests(SynchronousTestCase):
    """
    The command run in-process with captured output and a fixed clock.
    """

    def setUp(self) -> None:
        self.path = self.mktemp()
        self.now = NOW

    def run_command(self, *argv: str) -> Tuple[int, str, str]:
        stdout, stderr = io.StringIO(), io.StringIO()
        status = keys_cli.main(
            ["--file", self.path] + list(argv), stdout, stderr, lambda: self.now
        )
        return status, stdout.getvalue(), stderr.getvalue()

    def add(self, *argv: str) -> str:
        status, out, err = self.run_command("add", *argv)
        self.assertEqual(status, 0, err)
        return out.strip()

    def test_add_prints_key_once(self) -> None:
        """
        C{add} prints the new key alone on standard output, a one-line
        reminder that it cannot be shown again on standard error, and the
        key then authenticates while the file holds only its hash.
        """
        status, out, err = self.run_command("add", "--id", "alice")
        self.assertEqual(status, 0)
        self.assertEqual(out.count("\n"), 1)
        key = out.strip()
        self.assertTrue(key.startswith("qg-"))
        self.assertEqual(err.count("\n"), 1)
        self.assertIn("cannot be shown again", err)
        self.assertNotIn(key, err)
        record = keyfile.load_store(self.path).authenticate(key, NOW)
        self.assertEqual(record.id, "alice")
        with open(self.path) as f:
            content = f.read()
        self.assertNotIn(key, content)
        self.assertIn(keys.hash_key(key), content)

    def test_add_options(self) -> None:
        """
        Owner, models, per-key limits and an RFC 3339 expiry are recorded.
        """
        key = self.add(
            "--id", "bob", "--owner", "team b", "--models", "qwen3:32b, qwen3:8b",
            "--rpm", "60", "--tpm", "90000", "--expires", "2027-06-01T00:00:00Z",
        )
        record = keyfile.load_store(self.path).authenticate(key, NOW)
        self.assertEqual(
            (record.owner, record.models, record.requests_per_window,
             record.tokens_per_minute, record.expires, record.created),
            ("team b", ("qwen3:32b", "qwen3:8b"), 60, 90000, 1811808000.0, NOW),
        )

    def test_add_scope(self) -> None:
        """
        C{--scope models:manage} (repeatable, alongside C{--scopes}) is
        stored in the key's record; a key added without it has none; an
        unknown scope is refused.
        """
        self.add("--id", "ops", "--scope", "models:manage", "--scopes", "admin")
        self.add("--id", "app")
        records = {r.id: r for r in keyfile.list_keys(self.path)}
        self.assertEqual(records["ops"].scopes, ("admin", "models:manage"))
        self.assertTrue(records["ops"].has_scope("models:manage"))
        self.assertEqual(records["app"].scopes, ())
        status, out, err = self.run_command("add", "--id", "x", "--scope", "models:all")
        self.assertEqual(status, 1)
        self.assertIn("unknown scope", err)

    def test_add_scopes(self) -> None:
        """
        C{--scopes} records extra rights (admin details on /ready, any
        native option).
        """
        key = self.add("--id", "ops", "--scopes", "admin, options:all")
        record = keyfile.load_store(self.path).authenticate(key, NOW)
        self.assertEqual(record.scopes, ("admin", "options:all"))

    def test_add_days(self) -> None:
        """
        C{--days N} expires the key N days after now.
        """
        key = self.add("--id", "carol", "--days", "30")
        store = keyfile.load_store(self.path)
        self.assertEqual(store.records[0].expires, NOW + 30 * 86400)
        self.assertIsNotNone(store.authenticate(key, NOW + 30 * 86400 - 1))
        self.assertIsNone(store.authenticate(key, NOW + 30 * 86400))

    def test_add_duplicate(self) -> None:
        """
        A second C{add} with the same id fails with one line on standard
        error, prints no key, and keeps the first key working.
        """
        first = self.add("--id", "alice")
        status, out, err = self.run_command("add", "--id", "alice")
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err.count("\n"), 1)
        self.assertIn("already in use", err)
        self.assertIsNotNone(keyfile.load_store(self.path).authenticate(first, NOW))
        self.assertEqual(len(keyfile.list_keys(self.path)), 1)

    def test_add_invalid_id(self) -> None:
        """
        An id outside C{[A-Za-z0-9._-]} is an error (exit 1) and writes
        nothing.
        """
        status, out, err = self.run_command("add", "--id", "a/b")
        self.assertEqual((status, out), (1, ""))
        self.assertIn("id must be", err)
        self.assertFalse(os.path.exists(self.path))

    def test_usage_errors(self) -> None:
        """
        Missing or malformed arguments exit with status 2 and write
        nothing.
        """
        for argv in (
            [],
            ["frobnicate"],
            ["add"],
            ["add", "--id", "a", "--rpm", "0"],
            ["add", "--id", "a", "--tpm", "many"],
            ["add", "--id", "a", "--days", "-1"],
            ["add", "--id", "a", "--expires", "2027-01-01"],
            ["add", "--id", "a", "--models", "a,,b"],
            ["add", "--id", "a", "--days", "1", "--expires", "2027-06-01T00:00:00Z"],
            ["revoke"],
        ):
            status, out, err = self.run_command(*argv)
            self.assertEqual((status, out), (2, ""), argv)
            self.assertIn("usage:", err, argv)
        self.assertFalse(os.path.exists(self.path))

    def test_help(self) -> None:
        """
        C{--help} prints usage on standard output and exits 0.
        """
        status, out, err = self.run_command("--help")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("add", out)

    def test_list(self) -> None:
        """
        C{list} shows id, owner, models, expiry (marking expired keys) and
        creation, and neither the key nor its full hash.
        """
        alice = self.add("--id", "alice", "--owner", "Alice", "--models", "qwen3:32b")
        bob = self.add("--id", "bob", "--days", "1")
        self.now = NOW + 2 * 86400
        status, out, err = self.run_command("list")
        self.assertEqual((status, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["ID", "OWNER", "MODELS", "EXPIRES", "CREATED", "HASH"])
        self.assertEqual(
            lines[1].split(),
            ["alice", "Alice", "qwen3:32b", "never", "2027-01-15T08:00:00Z",
             keys.hash_key(alice)[:15]],
        )
        self.assertEqual(
            lines[2].split(),
            ["bob", "-", "all", "2027-01-16T08:00:00Z", "(expired)",
             "2027-01-15T08:00:00Z", keys.hash_key(bob)[:15]],
        )
        for key in (alice, bob):
            self.assertNotIn(key, out)
            self.assertNotIn(keys.hash_key(key)[7:], out)
            self.assertNotIn(keys.hash_key(key)[7:30], out)

    def test_list_empty(self) -> None:
        """
        Listing a file that does not exist yet shows only the header.
        """
        status, out, err = self.run_command("list")
        self.assertEqual((status, len(out.splitlines()), err), (0, 1, ""))

    def test_list_invalid_file(self) -> None:
        """
        An invalid keys file is reported in one line naming the entry.
        """
        with open(self.path, "w") as f:
            f.write("keys:\n- {id: a, hash: nope}\n")
        status, out, err = self.run_command("list")
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err.count("\n"), 1)
        self.assertIn("keys[0].hash", err)

    def test_revoke(self) -> None:
        """
        C{revoke} deletes the key: it no longer authenticates, others do.
        """
        alice = self.add("--id", "alice")
        bob = self.add("--id", "bob")
        status, out, err = self.run_command("revoke", "--id", "alice")
        self.assertEqual((status, out), (0, ""))
        self.assertIn("revoked", err)
        store = keyfile.load_store(self.path)
        self.assertIsNone(store.authenticate(alice, NOW))
        self.assertEqual(store.authenticate(bob, NOW).id, "bob")

    def test_revoke_unknown(self) -> None:
        """
        Revoking an unknown id fails with status 1.
        """
        self.add("--id", "alice")
        status, out, err = self.run_command("revoke", "--id", "nobody")
        self.assertEqual((status, out), (1, ""))
        self.assertIn("no key with id 'nobody'", err)

    def test_file_after_command(self) -> None:
        """
        C{--file} is also accepted after the subcommand.
        """
        other = self.mktemp()
        stdout, stderr = io.StringIO(), io.StringIO()
        status = keys_cli.main(["add", "--id", "x", "--file", other], stdout, stderr, lambda: NOW)
        self.assertEqual(status, 0, stderr.getvalue())
        self.assertEqual([r.id for r in keyfile.list_keys(other)], ["x"])
        self.assertFalse(os.path.exists(self.path))

    def test_unwritable(self) -> None:
        """
        A keys file in a directory that does not exist is an error in one
        line naming the file.
        """
        self.path = os.path.join(self.mktemp(), "keys.yaml")
        status, out, err = self.run_command("add", "--id", "a")
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err.count("\n"), 1)
        self.assertIn(self.path, err)

    def test_default_file(self) -> None:
        """
        Without C{--file} the command manages C{/etc/qwengate/keys.yaml}.
        """
        options = keys_cli.build_parser().parse_args(["list"])
        self.assertEqual(options.file, "/etc/qwengate/keys.yaml")


class ProcessTests(SynchronousTestCase):
    """
    The command as a separate process, the way operators run it.
    """

    def run_process(self, *argv: str) -> "subprocess.CompletedProcess[str]":
        return subprocess.run(
            [sys.executable, "-m", "qwen_twist.cli.keys"] + list(argv),
            env=dict(os.environ, PYTHONPATH=REPO),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def test_end_to_end(self) -> None:
        """
        C{add}, C{list} and C{revoke} in separate processes: the printed
        key authenticates until revoked, and C{list} never shows it.
        """
        path = self.mktemp()
        added = self.run_process("--file", path, "add", "--id", "alice")
        self.assertEqual(added.returncode, 0, added.stderr)
        key = added.stdout.strip()
        self.assertIsNotNone(keyfile.load_store(path).authenticate(key, NOW))
        listed = self.run_process("--file", path, "list")
        self.assertEqual(listed.returncode, 0)
        self.assertIn("alice", listed.stdout)
        self.assertNotIn(key, listed.stdout)
        self.assertNotIn(keys.hash_key(key), listed.stdout)
        revoked = self.run_process("--file", path, "revoke", "--id", "alice")
        self.assertEqual(revoked.returncode, 0)
        self.assertIsNone(keyfile.load_store(path).authenticate(key, NOW))
        usage = self.run_process("--file", path)
        self.assertEqual(usage.returncode, 2)
