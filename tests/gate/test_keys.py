"""
Tests for L{qwen_twist.gate.keys}: minting, hashed storage, authentication,
the keys file (errors name the entry; rewrites are locked and atomic) and
reading the credential from request headers.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import stat
import subprocess
import sys
import textwrap
from typing import Any, List

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.gate import keyfile, keys
from qwen_twist.config import ConfigError

NOW = 1_800_000_000.0
# The checkout root (tests/<area>/this file), put on the children's PYTHONPATH.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
URLSAFE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def write(path: str, text: str) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write(textwrap.dedent(text))
    return path


class NewKeyTests(SynchronousTestCase):
    """
    L{keys.new_key} mints keys with 256 random bits.
    """

    def test_format(self) -> None:
        """
        A key is C{qg-} and 43 URL-safe characters that decode to 32 bytes.
        """
        key = keys.new_key()
        self.assertTrue(key.startswith("qg-"))
        body = key[3:]
        self.assertEqual(len(body), 43)
        self.assertLessEqual(set(body), URLSAFE)
        self.assertEqual(len(base64.urlsafe_b64decode(body + "=")), 32)

    def test_from_secrets(self) -> None:
        """
        The random part comes from L{secrets.token_urlsafe} with 32 bytes.
        """
        calls: List[int] = []

        def token_urlsafe(n: int) -> str:
            calls.append(n)
            return "A" * 43

        self.patch(keys.secrets, "token_urlsafe", token_urlsafe)
        self.assertEqual(keys.new_key(), "qg-" + "A" * 43)
        self.assertEqual(calls, [32])

    def test_unique(self) -> None:
        """
        Keys do not repeat.
        """
        minted = {keys.new_key() for _ in range(2000)}
        self.assertEqual(len(minted), 2000)


class HashKeyTests(SynchronousTestCase):
    """
    L{keys.hash_key} is the stored form of a key.
    """

    def test_sha256_hex(self) -> None:
        """
        The hash is C{sha256:} and the lowercase hex SHA-256 of the key.
        """
        self.assertEqual(
            keys.hash_key("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        )


class KeyStoreTests(SynchronousTestCase):
    """
    L{keys.KeyStore.authenticate} finds the record of a presented key.
    """

    def setUp(self) -> None:
        self.path = self.mktemp()
        self.clock = Clock()
        self.clock.advance(NOW)
        self.alice = keyfile.add_key(
            self.path, "alice", models=("qwen3:32b",), expires=NOW + 3600, now=NOW
        )
        self.bob = keyfile.add_key(self.path, "bob", owner="team-b", now=NOW)
        self.store = keyfile.load_store(self.path)

    def test_known_key(self) -> None:
        """
        A minted key authenticates as its record.
        """
        record = self.store.authenticate(self.bob, self.clock.seconds())
        self.assertIsNotNone(record)
        self.assertEqual((record.id, record.owner), ("bob", "team-b"))
        self.assertEqual(len(self.store), 2)

    def test_unknown_key(self) -> None:
        """
        A key that was never minted, a prefix of a real one, and the stored
        hash itself are all refused.
        """
        now = self.clock.seconds()
        self.assertIsNone(self.store.authenticate(keys.new_key(), now))
        self.assertIsNone(self.store.authenticate(self.bob[:-1], now))
        self.assertIsNone(self.store.authenticate(keys.hash_key(self.bob), now))
        self.assertIsNone(self.store.authenticate("", now))

    def test_expired(self) -> None:
        """
        A key works until its expiry and is refused from then on.
        """
        self.clock.advance(3599)
        self.assertEqual(
            self.store.authenticate(self.alice, self.clock.seconds()).id, "alice"
        )
        self.clock.advance(1)
        self.assertIsNone(self.store.authenticate(self.alice, self.clock.seconds()))
        # Keys without an expiry keep working.
        self.clock.advance(10 * 365 * 86400)
        self.assertIsNotNone(self.store.authenticate(self.bob, self.clock.seconds()))

    def test_revoked(self) -> None:
        """
        After C{revoke_key}, the reloaded store refuses the key and still
        accepts the others.
        """
        self.assertTrue(keyfile.revoke_key(self.path, "bob"))
        store = keyfile.load_store(self.path)
        now = self.clock.seconds()
        self.assertIsNone(store.authenticate(self.bob, now))
        self.assertEqual(store.authenticate(self.alice, now).id, "alice")

    def test_constant_time_comparison(self) -> None:
        """
        The digest comparison is L{hmac.compare_digest}, once per attempt
        whatever the number of keys, and its answer decides.
        """
        others = tuple(
            keys.KeyRecord("k%d" % (i,), keys.hash_key(keys.new_key())) for i in range(1000)
        )
        store = keys.KeyStore(others + self.store.records)
        calls: List[Any] = []

        def compare_digest(a: bytes, b: bytes) -> bool:
            calls.append((a, b))
            return False

        self.patch(keys.hmac, "compare_digest", compare_digest)
        self.assertIsNone(store.authenticate(self.bob, NOW))
        digest = hashlib.sha256(self.bob.encode()).digest()
        self.assertEqual(calls, [(digest, digest)])

    def test_never_holds_clear_keys(self) -> None:
        """
        Neither the file nor the loaded records contain a key.
        """
        with open(self.path, "rb") as f:
            content = f.read()
        for key in (self.alice, self.bob):
            self.assertNotIn(key.encode(), content)
            self.assertNotIn(key[3:].encode(), content)
            self.assertNotIn(key, repr(self.store.records))
        self.assertIn(keys.hash_key(self.bob).encode(), content)

    def test_models(self) -> None:
        """
        A key with a model list may use only those models; one without may
        use every model.
        """
        alice = self.store.authenticate(self.alice, NOW)
        bob = self.store.authenticate(self.bob, NOW)
        self.assertTrue(alice.allows_model("qwen3:32b"))
        self.assertFalse(alice.allows_model("qwen3:8b"))
        self.assertFalse(alice.allows_model("qwen3"))
        self.assertTrue(bob.allows_model("anything"))

    def test_model_spellings(self) -> None:
        """
        An untagged name is its C{:latest} tag, as Ollama resolves it, in
        either direction; other tags stay distinct, and a registry port
        in the host part is not a tag.
        """
        record = keys.KeyRecord("k", keys.hash_key("x"), models=("qwen3", "llama3:latest"))
        self.assertTrue(record.allows_model("qwen3:latest"))
        self.assertTrue(record.allows_model("llama3"))
        self.assertFalse(record.allows_model("qwen3:8b"))
        self.assertEqual(keys.model_spellings("host:5000/m"),
                         ("host:5000/m", "host:5000/m:latest"))

    def test_empty(self) -> None:
        """
        The empty store refuses everything.
        """
        store = keys.KeyStore.empty()
        self.assertEqual((len(store), store.records), (0, ()))
        self.assertIsNone(store.authenticate(self.bob, NOW))


class RecordTests(SynchronousTestCase):
    """
    L{keys.KeyRecord} answers expiry and model questions.
    """

    def test_expired_boundary(self) -> None:
        """
        A key is expired at its expiry time, not before; no expiry means
        never.
        """
        record = keys.KeyRecord("a", keys.hash_key("x"), expires=100.0)
        self.assertFalse(record.expired(99.999))
        self.assertTrue(record.expired(100.0))
        self.assertFalse(keys.KeyRecord("a", keys.hash_key("x")).expired(1e12))


GOOD_HASH = "sha256:" + "a" * 64


class LoadTests(SynchronousTestCase):
    """
    L{keys.KeyStore.load} reads the file format from the module docstring
    and names the entry of every problem.
    """

    def load(self, text: str) -> keys.KeyStore:
        return keyfile.load_store(write(self.mktemp(), text))

    def refused(self, text: str) -> keys.KeyFileError:
        path = write(self.mktemp(), text)
        error = self.assertRaises(keys.KeyFileError, keyfile.load_store, path)
        self.assertEqual(error.filename, path)
        self.assertTrue(str(error).startswith(path + ": "))
        return error

    def test_scopes(self) -> None:
        """
        C{scopes} lists known scopes only; a record without the field has
        none, and rewriting keeps the field out for such records (the file
        stays readable by gateways that predate scopes).
        """
        store = self.load(
            'keys:\n  - id: ops\n    hash: "%s"\n    scopes: [models:manage]\n'
            '  - id: app\n    hash: "%s"\n' % (keys.hash_key("a"), keys.hash_key("b")))
        ops, app = store.records
        self.assertTrue(ops.has_scope("models:manage"))
        self.assertFalse(app.has_scope("models:manage"))
        rendered = keys.render(list(store.records)).decode()
        self.assertEqual(rendered.count("scopes"), 1)
        error = self.refused(
            'keys:\n  - id: ops\n    hash: "%s"\n    scopes: [models:all]\n'
            % (keys.hash_key("a"),))
        self.assertIn("keys[0].scopes[0]: unknown scope 'models:all'", str(error))

    def test_missing_file(self) -> None:
        """
        A keys file that does not exist yet is an empty store.
        """
        self.assertEqual(len(keyfile.load_store(self.mktemp())), 0)

    def test_empty_documents(self) -> None:
        """
        An empty file, and an empty C{keys}, hold no key.
        """
        for text in ("", "# nothing\n", "keys:\n", "keys: []\n"):
            self.assertEqual(len(self.load(text)), 0, text)

    def test_every_field(self) -> None:
        """
        Every documented field is read, timestamps as Unix time.
        """
        store = self.load(
            """\
            keys:
              - id: alice
                hash: "%s"
                owner: alice@example.com
                models: [qwen3:32b, qwen3:8b]
                requests_per_window: 60
                tokens_per_minute: 200000
                expires: "2027-01-01T00:00:00Z"
                created: "2026-11-02T10:00:00+01:00"
            """
            % (GOOD_HASH,)
        )
        self.assertEqual(
            store.records,
            (
                keys.KeyRecord(
                    id="alice",
                    hash=GOOD_HASH,
                    owner="alice@example.com",
                    models=("qwen3:32b", "qwen3:8b"),
                    requests_per_window=60,
                    tokens_per_minute=200000,
                    expires=1798761600.0,
                    created=1793610000.0,
                ),
            ),
        )

    def test_unquoted_timestamp(self) -> None:
        """
        An unquoted timestamp with a zone (which YAML turns into a date and
        time) is read like the quoted form.
        """
        store = self.load("keys:\n- {id: a, hash: '%s', expires: 2027-01-01T00:00:00Z}\n" % (GOOD_HASH,))
        self.assertEqual(store.records[0].expires, 1798761600.0)

    def test_is_config_error(self) -> None:
        """
        L{keys.KeyFileError} is a L{ConfigError}, so start-up reports it
        like any configuration problem.
        """
        self.assertTrue(issubclass(keys.KeyFileError, ConfigError))

    def test_document_errors(self) -> None:
        """
        A document that is not a mapping with a C{keys} list is refused.
        """
        cases = [
            ("- a\n", "", "must be a mapping"),
            ("users: []\n", "users", "unknown key"),
            ("keys: {id: a}\n", "keys", "must be a list"),
            ("keys: [\n", "", "invalid YAML"),
            ("keys:\n  - just-a-string\n", "keys[0]", "must be a mapping"),
        ]
        for text, path, problem in cases:
            error = self.refused(text)
            self.assertEqual(error.path, path, text)
            self.assertIn(problem, error.problem, text)

    def test_entry_errors(self) -> None:
        """
        Every invalid entry field is refused with its indexed path, and the
        entry's id when it has a valid one.
        """
        ok = "- {id: ok, hash: '%s'}\n" % ("sha256:" + "b" * 64,)
        cases = [
            ("{hash: '%s'}" % GOOD_HASH, "keys[1].id", "is required"),
            ("{id: bad/id, hash: '%s'}" % GOOD_HASH, "keys[1].id", "A-Z"),
            ("{id: %s, hash: '%s'}" % ("x" * 65, GOOD_HASH), "keys[1].id", "1 to 64"),
            ("{id: 5, hash: '%s'}" % GOOD_HASH, "keys[1].id", "1 to 64"),
            ("{id: a}", "keys[1].hash", "is required"),
            ("{id: a, hash: 'sha256:abc'}", "keys[1].hash", "64 lowercase hex"),
            ("{id: a, hash: '%s'}" % GOOD_HASH.upper(), "keys[1].hash", "64 lowercase hex"),
            ("{id: a, hash: '%s'}" % ("md5:" + "a" * 64), "keys[1].hash", "sha256"),
            ("{id: a, hash: '%s', key: qg-x}" % GOOD_HASH, "keys[1].key", "unknown key"),
            ("{id: a, hash: '%s', owner: ''}" % GOOD_HASH, "keys[1].owner", "printable"),
            ("{id: a, hash: '%s', owner: 5}" % GOOD_HASH, "keys[1].owner", "string"),
            ("{id: a, hash: '%s', models: qwen3}" % GOOD_HASH, "keys[1].models", "list"),
            ("{id: a, hash: '%s', models: [ok, '']}" % GOOD_HASH, "keys[1].models[1]", "printable"),
            ("{id: a, hash: '%s', models: [a b]}" % GOOD_HASH, "keys[1].models[0]", "spaces"),
            ("{id: a, hash: '%s', requests_per_window: 0}" % GOOD_HASH,
             "keys[1].requests_per_window", "between"),
            ("{id: a, hash: '%s', requests_per_window: yes}" % GOOD_HASH,
             "keys[1].requests_per_window", "integer"),
            ("{id: a, hash: '%s', tokens_per_minute: '100'}" % GOOD_HASH,
             "keys[1].tokens_per_minute", "integer"),
            ("{id: a, hash: '%s', tokens_per_minute: 1.5}" % GOOD_HASH,
             "keys[1].tokens_per_minute", "integer"),
            ("{id: a, hash: '%s', expires: 2027-01-01}" % GOOD_HASH, "keys[1].expires", "RFC 3339"),
            ("{id: a, hash: '%s', expires: '2027-01-01T00:00:00'}" % GOOD_HASH,
             "keys[1].expires", "RFC 3339"),
            ("{id: a, hash: '%s', expires: 'tomorrow'}" % GOOD_HASH, "keys[1].expires", "RFC 3339"),
            ("{id: a, hash: '%s', expires: '2027-13-01T00:00:00Z'}" % GOOD_HASH,
             "keys[1].expires", "not a valid"),
            ("{id: a, hash: '%s', created: 1700000000}" % GOOD_HASH, "keys[1].created", "RFC 3339"),
            ("{id: ok, hash: '%s'}" % GOOD_HASH, "keys[1].id", "already used by keys[0]"),
            ("{id: other, hash: '%s'}" % ("sha256:" + "b" * 64,), "keys[1].hash",
             "already keys[0]"),
        ]
        for entry, path, problem in cases:
            error = self.refused("keys:\n" + ok + "- " + entry + "\n")
            self.assertEqual(error.path, path, entry)
            self.assertIn(problem, error.problem, entry)
        error = self.refused("keys:\n- {id: carol, hash: 'nope'}\n")
        self.assertIn("(id 'carol')", str(error))

    def test_not_utf8(self) -> None:
        """
        A file that is not UTF-8 is refused.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"keys: [\xff]\n")
        error = self.assertRaises(keys.KeyFileError, keyfile.load_store, path)
        self.assertIn("UTF-8", str(error))

    def test_unreadable(self) -> None:
        """
        A path that exists but cannot be read is an error, not an empty
        store.
        """
        path = self.mktemp()
        os.mkdir(path)
        error = self.assertRaises(keys.KeyFileError, keyfile.load_store, path)
        self.assertIn("cannot read", str(error))


class AddKeyTests(SynchronousTestCase):
    """
    L{keyfile.add_key} mints a key and appends its hash to the file.
    """

    def setUp(self) -> None:
        self.path = self.mktemp()

    def test_round_trip(self) -> None:
        """
        The returned key authenticates as a record with every option given.
        """
        key = keyfile.add_key(
            self.path,
            "alice",
            owner="Alice",
            models=("qwen3:32b",),
            requests_per_window=60,
            tokens_per_minute=100000,
            expires=NOW + 86400.5,
            now=NOW + 0.75,
        )
        self.assertEqual(
            keyfile.list_keys(self.path),
            [
                keys.KeyRecord(
                    id="alice",
                    hash=keys.hash_key(key),
                    owner="Alice",
                    models=("qwen3:32b",),
                    requests_per_window=60,
                    tokens_per_minute=100000,
                    expires=NOW + 86400,
                    created=NOW,
                )
            ],
        )

    def test_scopes(self) -> None:
        """
        Scopes are written, read back and answered by C{has_scope}; an
        unknown scope is refused, in the file and as an argument.
        """
        keyfile.add_key(self.path, "ops", scopes=("admin", "options:all"), now=NOW)
        record = keyfile.list_keys(self.path)[0]
        self.assertEqual(record.scopes, ("admin", "options:all"))
        self.assertTrue(record.has_scope("admin"))
        self.assertFalse(keys.KeyRecord(id="x", hash="h").has_scope("admin"))
        self.assertRaises(ValueError, keyfile.add_key, self.path, "bad",
                          scopes=("root",), now=NOW)
        with open(self.path, "a") as f:
            f.write("- id: typo\n  hash: \"sha256:%s\"\n  scopes: [admn]\n" % ("0" * 64,))
        error = self.assertRaises(ConfigError, keyfile.list_keys, self.path)
        self.assertIn("scopes[0]", str(error))

    def test_appends_in_order(self) -> None:
        """
        Keys are appended after the existing entries.
        """
        for name in ("a", "b", "c"):
            keyfile.add_key(self.path, name, now=NOW)
        self.assertEqual([r.id for r in keyfile.list_keys(self.path)], ["a", "b", "c"])

    def test_file_mode(self) -> None:
        """
        The keys file is written with mode 0640, also over a file that had
        looser permissions.
        """
        keyfile.add_key(self.path, "a", now=NOW)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o640)
        os.chmod(self.path, 0o666)
        keyfile.add_key(self.path, "b", now=NOW)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o640)

    def test_owner_and_group_kept(self) -> None:
        """
        Rewrites by root keep the file's owner and group, as the .deb
        installs it (C{root:_qwengate 0640}: the daemon reads it through
        its group), for adds and revokes alike.
        """
        if os.getuid() != 0:
            raise self.skipTest("changing a file's owner and group needs root")
        keyfile.add_key(self.path, "a", now=NOW)
        os.chown(self.path, 1, 65534)
        os.chmod(self.path, 0o640)
        keyfile.add_key(self.path, "b", now=NOW)
        keyfile.revoke_key(self.path, "a")
        info = os.stat(self.path)
        self.assertEqual((info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)), (1, 65534, 0o640))
        self.assertEqual([r.id for r in keyfile.list_keys(self.path)], ["b"])

    def test_duplicate_id(self) -> None:
        """
        An id already in the file is refused and the file is unchanged.
        """
        keyfile.add_key(self.path, "alice", now=NOW)
        with open(self.path, "rb") as f:
            before = f.read()
        error = self.assertRaises(
            keys.KeyFileError, keyfile.add_key, self.path, "alice", now=NOW
        )
        self.assertEqual(error.path, "keys[0].id")
        self.assertIn("already in use", str(error))
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), before)

    def test_invalid_arguments(self) -> None:
        """
        Invalid ids, owners, models, limits and past expiry dates are
        refused before anything is written.
        """
        cases = [
            dict(key_id="a b"),
            dict(key_id=""),
            dict(key_id="x" * 65),
            dict(key_id="ok", owner=""),
            dict(key_id="ok", owner="a\nb"),
            dict(key_id="ok", models=("",)),
            dict(key_id="ok", requests_per_window=0),
            dict(key_id="ok", tokens_per_minute=-5),
            dict(key_id="ok", expires=NOW),
            dict(key_id="ok", expires=float("nan")),
        ]
        for kwargs in cases:
            key_id = kwargs.pop("key_id")
            self.assertRaises(ValueError, keyfile.add_key, self.path, key_id, now=NOW, **kwargs)
        self.assertFalse(os.path.exists(self.path))

    def test_refuses_to_rewrite_invalid_file(self) -> None:
        """
        A broken keys file is reported, not overwritten.
        """
        write(self.path, "keys: [\n")
        self.assertRaises(keys.KeyFileError, keyfile.add_key, self.path, "a", now=NOW)
        with open(self.path) as f:
            self.assertEqual(f.read(), "keys: [\n")

    def leftovers(self) -> List[str]:
        directory = os.path.dirname(os.path.abspath(self.path))
        return [n for n in os.listdir(directory) if n.endswith(".tmp")]

    def test_no_partial_file_on_error(self) -> None:
        """
        When writing fails, the old file is intact and no temporary file is
        left behind.
        """
        keyfile.add_key(self.path, "a", now=NOW)
        with open(self.path, "rb") as f:
            before = f.read()

        def fsync(fd: int) -> None:
            raise OSError(28, "No space left on device")

        self.patch(keyfile.os, "fsync", fsync)
        self.assertRaises(OSError, keyfile.add_key, self.path, "b", now=NOW)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertEqual(self.leftovers(), [])

    def test_no_new_file_on_error(self) -> None:
        """
        When the first write of a new file fails, no file is left at all.
        """
        def fsync(fd: int) -> None:
            raise OSError(28, "No space left on device")

        self.patch(keyfile.os, "fsync", fsync)
        self.assertRaises(OSError, keyfile.add_key, self.path, "a", now=NOW)
        self.assertFalse(os.path.exists(self.path))
        self.assertEqual(self.leftovers(), [])

    def test_replaced_atomically(self) -> None:
        """
        The file is replaced by rename: a reader holding the old file keeps
        reading the old content in full.
        """
        keyfile.add_key(self.path, "a", now=NOW)
        with open(self.path, "rb") as old:
            keyfile.add_key(self.path, "b", now=NOW)
            self.assertEqual(
                [r.id for r in keys.KeyStore.parse(old.read()).records], ["a"]
            )
        self.assertEqual([r.id for r in keyfile.list_keys(self.path)], ["a", "b"])

    def test_concurrent_writer_not_lost(self) -> None:
        """
        When another writer replaces the file while we wait for the lock,
        we lock and re-read the new file, so its key is kept.
        """
        keyfile.add_key(self.path, "first", now=NOW)
        real_flock = fcntl.flock
        state = {"raced": False}

        def flock(fd: int, operation: int) -> None:
            if not state["raced"]:
                # Another qwengate-keys finishes while we wait.
                state["raced"] = True
                keyfile.add_key(self.path, "other", now=NOW)
            real_flock(fd, operation)

        self.patch(keyfile.fcntl, "flock", flock)
        keyfile.add_key(self.path, "mine", now=NOW)
        self.assertTrue(state["raced"])
        self.assertEqual(
            [r.id for r in keyfile.list_keys(self.path)], ["first", "other", "mine"]
        )

    def test_concurrent_processes(self) -> None:
        """
        Several processes adding keys at the same time lose none.
        """
        script = (
            "import sys\n"
            "from qwen_twist.gate import keyfile\n"
            "for i in range(10):\n"
            "    keyfile.add_key(sys.argv[1], '%s-%d' % (sys.argv[2], i), now=0)\n"
        )
        path = os.path.abspath(self.path)
        env = dict(os.environ, PYTHONPATH=REPO)
        processes = [
            subprocess.Popen([sys.executable, "-c", script, path, "p%d" % (n,)], env=env)
            for n in range(4)
        ]
        self.assertEqual([p.wait(timeout=60) for p in processes], [0] * 4)
        self.assertEqual(len(keyfile.list_keys(path)), 40)
        self.assertEqual(self.leftovers(), [])


class RevokeKeyTests(SynchronousTestCase):
    """
    L{keyfile.revoke_key} deletes an entry.
    """

    def test_revoke(self) -> None:
        """
        The entry is gone, the others stay.
        """
        path = self.mktemp()
        keyfile.add_key(path, "a", now=NOW)
        keyfile.add_key(path, "b", now=NOW)
        self.assertTrue(keyfile.revoke_key(path, "a"))
        self.assertEqual([r.id for r in keyfile.list_keys(path)], ["b"])
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o640)

    def test_unknown_id(self) -> None:
        """
        Revoking an id that is not there reports it and leaves the file
        untouched.
        """
        path = self.mktemp()
        keyfile.add_key(path, "a", now=NOW)
        before = os.stat(path)
        self.assertFalse(keyfile.revoke_key(path, "zzz"))
        after = os.stat(path)
        self.assertEqual((before.st_ino, before.st_mtime_ns), (after.st_ino, after.st_mtime_ns))

    def test_missing_file(self) -> None:
        """
        Revoking from a file that does not exist does not create it.
        """
        path = self.mktemp()
        self.assertFalse(keyfile.revoke_key(path, "a"))
        self.assertFalse(os.path.exists(path))


class PresentedKeyTests(SynchronousTestCase):
    """
    L{keys.presented_key} reads the credential from C{Authorization:
    Bearer} or C{X-Api-Key}.
    """

    def test_bearer(self) -> None:
        """
        C{Bearer} in any case, with surrounding whitespace, gives the key.
        """
        for header in (
            b"Bearer qg-abc",
            b"bearer qg-abc",
            b"BEARER qg-abc",
            b"  Bearer \t qg-abc  ",
        ):
            self.assertEqual(keys.presented_key(header, None), "qg-abc", header)

    def test_x_api_key(self) -> None:
        """
        C{X-Api-Key} gives the key, whitespace trimmed.
        """
        self.assertEqual(keys.presented_key(None, b" qg-abc "), "qg-abc")

    def test_neither(self) -> None:
        """
        Without either header there is no credential.
        """
        self.assertIsNone(keys.presented_key(None, None))

    def test_bearer_first(self) -> None:
        """
        A usable bearer credential wins over C{X-Api-Key}; an unusable
        C{Authorization} (another scheme, empty) falls back to it.
        """
        self.assertEqual(keys.presented_key(b"Bearer one", b"two"), "one")
        self.assertEqual(keys.presented_key(b"Basic dXNlcjpwYXNz", b"two"), "two")
        self.assertEqual(keys.presented_key(b"Bearer ", b"two"), "two")
        self.assertIsNone(keys.presented_key(b"Basic dXNlcjpwYXNz", None))

    def test_malformed(self) -> None:
        """
        Empty, non-ASCII, control characters, inner spaces and a scheme
        without a separator are not credentials.
        """
        for authorization, x_api_key in (
            (b"Bearer", None),
            (b"Bearerqg-abc", None),
            (b"Bearer qg-\xc3\xa9", None),
            (b"Bearer qg-a\x00b", None),
            (b"Bearer qg-a\x7fb", None),
            (b"Bearer qg-a b", None),
            (b"Token qg-abc", None),
            (None, b""),
            (None, b"   "),
            (None, b"qg-\xff"),
            (None, b"qg a"),
            (None, b"qg-a\x1bb"),
        ):
            self.assertIsNone(
                keys.presented_key(authorization, x_api_key), (authorization, x_api_key)
            )

    def test_size_limit(self) -> None:
        """
        Credentials up to L{keys.MAX_CREDENTIAL_CHARS} pass (an RS256 JWT
        is longer than 512 characters); longer ones do not.
        """
        longest = b"a" * keys.MAX_CREDENTIAL_CHARS
        self.assertGreaterEqual(keys.MAX_CREDENTIAL_CHARS, 4096)
        self.assertEqual(keys.presented_key(b"Bearer " + longest, None), longest.decode())
        self.assertIsNone(keys.presented_key(b"Bearer " + longest + b"a", None))
        self.assertIsNone(keys.presented_key(None, longest + b"a"))
