# -*- test-case-name: tests.gate.test_keys -*-
"""
API keys: minted once, stored only as SHA-256 hashes, checked in constant
time.

Why hashes: the keys file is read by the daemon and backed up with C{/etc};
a copy of it must not let anyone call the API. A key carries 256 bits from
L{secrets}, so a plain SHA-256 is enough (a slow password hash protects
low-entropy secrets and would cost milliseconds per request for nothing).

Why a separate file: C{qwengate-keys} (L{qwen_twist.cli.keys}) rewrites it
while the gateway runs, and the gateway re-reads it on SIGHUP; the main
configuration stays a hand-edited conffile.

The file (C{auth.keys_file}, by default C{/etc/qwengate/keys.yaml})::

    keys:
      - id: alice                   # public name: logs, metrics, audit
        hash: "sha256:9f86d0...c2a" # of the whole key string, lowercase hex
        owner: alice@example.com    # optional user or team
        models: [qwen3:32b]         # optional allow-list; absent = all models
        requests_per_window: 60     # optional, overrides rate_limits.per_key_requests
        tokens_per_minute: 200000   # optional, overrides rate_limits.per_key_tokens_per_minute
        scopes: [admin]             # optional extra rights (see SCOPES)
        expires: "2027-01-01T00:00:00Z"   # optional RFC 3339; absent = never
        created: "2026-11-02T10:00:00Z"   # optional, informational

Key ids match C{[A-Za-z0-9._-]{1,64}}. A missing file is an empty store (a
fresh install has no keys yet, so every key is refused); anything else that
is wrong is a L{KeyFileError} naming the file and the entry, e.g.
C{keys.yaml: keys[2].hash: must be 'sha256:' and 64 lowercase hex digits
(id 'bob')}. Revoking a key deletes its entry. Comments are not kept by
rewrites.

This module is the model: records, hashing, the file's YAML and the
in-memory L{KeyStore}. Reading the file and rewriting it under its lock
(C{add_key}, C{revoke_key}, C{list_keys}, C{load_store}) is
L{qwen_twist.gate.keyfile}'s, which imports this module and never the other
way round.

No Twisted imports; the only I/O (in L{qwen_twist.gate.keyfile}) is reading and
writing the keys file.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import yaml

from qwen_twist.config import ConfigError

KEY_PREFIX = "qg-"

HASH_PREFIX = "sha256:"

#: Longest credential L{presented_key} accepts. An API key is 46
#: characters, but the same headers carry JWTs: an RS256 token is 600+
#: characters and identity providers' tokens reach a few kilobytes.
MAX_CREDENTIAL_CHARS = 8192


_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HASH = re.compile(r"sha256:[0-9a-f]{64}")
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})"
)
_MAX_TEXT = 256
_MAX_LIMIT = 10 ** 12
_FIELDS = (
    "id", "hash", "owner", "models", "requests_per_window", "tokens_per_minute",
    "scopes", "expires", "created",
)

#: Extra rights a key may hold, beyond calling the API. Other components
#: add theirs here; an unknown scope in the file is an error (a typo must
#: not silently grant nothing, or something else).
SCOPES = {
    "admin": "see operational details (GET /ready lists upstreams and breakers)",
    "options:all": "send any native option, not just the sampling allow-list "
                   "(limits.allowed_options); the caps still apply",
    "models:manage": "manage models through Ollama's native API (/api/pull, /api/push, "
                     "/api/create, /api/copy, /api/delete, /api/blobs)",
}
_SCOPE = re.compile(r"[a-z][a-z0-9_.-]*(:[a-z0-9_.*-]+)?")

# libyaml when present (Debian's python3-yaml has it): the file is re-read
# on SIGHUP in the reactor thread and the pure-Python parser is ~10 times
# slower. Both are the safe loader: plain YAML types only.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

_HEADER = """\
# qwengate API keys: SHA-256 hashes only, never the keys themselves.
# Managed with qwengate-keys (add, list, revoke); the gateway re-reads this
# file on SIGHUP. Hand edits are fine, but rewrites do not keep comments.
"""


class KeyFileError(ConfigError):
    """
    An invalid keys file: C{filename}, the indexed path of the problem
    (C{keys[2].hash}) and what is wrong. Never contains a key.
    """


@dataclass(frozen=True)
class KeyRecord:
    """
    One API key as stored: its public id, the hash of the key and what the
    key may do.

    @ivar id: the key's public name, used in logs, metrics and audit.
    @ivar hash: C{"sha256:"} and the lowercase hex digest of the key.
    @ivar owner: the user or team, if recorded.
    @ivar models: the models the key may use; empty means all.
    @ivar requests_per_window: per-key override of
        C{rate_limits.per_key_requests}.
    @ivar tokens_per_minute: per-key override of
        C{rate_limits.per_key_tokens_per_minute}.
    @ivar scopes: extra rights (L{SCOPES}), e.g. C{("admin",)}.
    @ivar expires: Unix time after which the key is refused; C{None} = never.
    @ivar created: Unix time the key was minted, if recorded.
    """

    id: str
    hash: str
    owner: Optional[str] = None
    models: Tuple[str, ...] = ()
    requests_per_window: Optional[int] = None
    tokens_per_minute: Optional[int] = None
    expires: Optional[float] = None
    created: Optional[float] = None
    scopes: Tuple[str, ...] = ()

    def has_scope(self, scope: str) -> bool:
        """
        Whether this key holds C{scope}.
        """
        return scope in self.scopes

    def allows_model(self, model: str) -> bool:
        """
        Whether this key may call C{model}; C{name} and C{name:latest}
        are the same model (as Ollama resolves them).
        """
        if not self.models:
            return True
        allowed = self.models
        return any(name in allowed for name in model_spellings(model))

    def expired(self, now: float) -> bool:
        """
        Whether the key is past its expiry at Unix time C{now}.
        """
        return self.expires is not None and now >= self.expires


class KeyStore:
    """
    The keys of one keys file, indexed by hash.

    @ivar records: every record, in file order.
    """

    def __init__(self, records: Tuple[KeyRecord, ...] = ()) -> None:
        self.records = tuple(records)
        # raw digest -> (the record's own digest, record)
        self._by_digest: Dict[bytes, Tuple[bytes, KeyRecord]] = {}
        for record in self.records:
            digest = bytes.fromhex(record.hash[len(HASH_PREFIX):])
            self._by_digest[digest] = (digest, record)

    @classmethod
    def empty(cls) -> "KeyStore":
        """
        A store that knows no key.
        """
        return cls(())
    @classmethod
    def parse(cls, raw: bytes, filename: str = "<keys>") -> "KeyStore":
        """
        Validate the bytes of a keys file.

        @raise KeyFileError: naming C{filename} and the entry.
        """
        return cls(_parse_records(raw, filename))

    def authenticate(self, presented: str, now: float) -> Optional[KeyRecord]:
        """
        The record of the key C{presented} by a client, or C{None} when the
        key is unknown, revoked or expired at Unix time C{now}.

        One SHA-256 and one dictionary lookup whatever the store's size; the
        digests are compared with L{hmac.compare_digest}.
        """
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        found = self._by_digest.get(digest)
        if found is None:
            return None
        stored, record = found
        if not hmac.compare_digest(stored, digest):
            return None
        if record.expired(now):
            return None
        return record

    def __len__(self) -> int:
        return len(self.records)


def model_spellings(model: str) -> Tuple[str, ...]:
    """
    The names Ollama resolves to one model: an untagged name is its
    C{:latest} tag (C{qwen3} is C{qwen3:latest}); a host or namespace part
    may itself contain a colon (C{host:5000/m}), so only the last path
    segment is looked at.
    """
    last = model.rsplit("/", 1)[-1]
    if ":" not in last:
        return (model, model + ":latest")
    if last.endswith(":latest"):
        return (model, model[: -len(":latest")])
    return (model,)


def new_key() -> str:
    """
    A fresh API key: C{"qg-"} and 43 URL-safe characters, 256 random bits.
    """
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """
    The stored form of C{key}: C{"sha256:<64 lowercase hex digits>"}.
    """
    return HASH_PREFIX + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def presented_key(
    authorization: Optional[bytes], x_api_key: Optional[bytes]
) -> Optional[str]:
    """
    The credential a request presents: C{Authorization: Bearer <key>} (the
    scheme in any case, what the OpenAI SDKs send) or else
    C{X-Api-Key: <key>}.

    Whether the credential is an API key or a JWT is the caller's choice.

    @return: the credential, or C{None} when there is none, or it is empty,
        longer than L{MAX_CREDENTIAL_CHARS}, not printable ASCII, or
        contains a space.
    """
    if authorization is not None:
        parts = authorization.split(None, 1)
        if len(parts) == 2 and parts[0].lower() == b"bearer":
            key = _credential(parts[1].strip())
            if key is not None:
                return key
    if x_api_key is not None:
        return _credential(x_api_key.strip())
    return None


def _credential(value: bytes) -> Optional[str]:
    if not value or len(value) > MAX_CREDENTIAL_CHARS or not value.isascii():
        return None
    text = value.decode("ascii")
    if not text.isprintable() or " " in text:
        return None
    return text


# Validation -----------------------------------------------------------------


def _check_id(value: Any) -> Optional[str]:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        return "must be 1 to 64 of A-Z a-z 0-9 . _ -, got %s" % (_describe(value),)
    return None


def _check_text(value: Any) -> Optional[str]:
    if not isinstance(value, str):
        return "must be a string, got %s" % (_describe(value),)
    if not value.strip() or len(value) > _MAX_TEXT or not value.isprintable():
        return "must be 1 to %d printable characters" % (_MAX_TEXT,)
    return None


def _check_model(value: Any) -> Optional[str]:
    problem = _check_text(value)
    if problem is None and value.split() != [value]:
        problem = "must not contain spaces, got %r" % (value,)
    return problem


def check_scope(value: Any) -> Optional[str]:
    """
    What is wrong with a scope name, or L{None}.
    """
    if not isinstance(value, str) or not _SCOPE.fullmatch(value):
        return "must be a scope name such as 'admin', got %s" % (_describe(value),)
    if value not in SCOPES:
        return "unknown scope %r (known: %s)" % (value, ", ".join(sorted(SCOPES)))
    return None


def _check_limit(value: Any) -> Optional[str]:
    if isinstance(value, bool) or not isinstance(value, int):
        return "must be an integer, got %s" % (_describe(value),)
    if not 1 <= value <= _MAX_LIMIT:
        return "must be between 1 and %d, got %r" % (_MAX_LIMIT, value)
    return None


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    return repr(value)


def parse_time(value: Any) -> float:
    """
    Unix time from an RFC 3339 timestamp with a zone
    (C{2027-01-01T00:00:00Z}), given as text or as the datetime PyYAML
    makes of an unquoted one.

    @raise ValueError: anything else (dates without a time or a zone are
        refused rather than guessed).
    """
    if isinstance(value, str) and _RFC3339.fullmatch(value):
        text = value.upper().replace("Z", "+00:00").replace(" ", "T")
        try:
            value = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError("%r is not a valid date and time" % (value,))
    if isinstance(value, datetime.datetime) and value.tzinfo is not None:
        return value.timestamp()
    raise ValueError(
        "must be an RFC 3339 timestamp with a zone such as "
        "2027-01-01T00:00:00Z, got %s" % (_describe(value),)
    )


def format_time(when: float) -> str:
    """
    Unix time as RFC 3339 UTC, whole seconds.
    """
    return datetime.datetime.fromtimestamp(
        math.floor(when), datetime.timezone.utc
    ).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_records(raw: bytes, filename: str) -> Tuple[KeyRecord, ...]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFileError("", "is not valid UTF-8", filename)
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = " at line %d" % (mark.line + 1,) if mark is not None else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise KeyFileError("", "invalid YAML%s: %s" % (where, problem), filename)
    if data is None:
        return ()
    if not isinstance(data, dict):
        raise KeyFileError("", "must be a mapping with a 'keys' list", filename)
    for name in data:
        if name != "keys":
            raise KeyFileError(str(name), "unknown key (expected: keys)", filename)
    entries = data.get("keys")
    if entries is None:
        return ()
    if not isinstance(entries, list):
        raise KeyFileError("keys", "must be a list, got %s" % (_describe(entries),), filename)
    records = []
    seen_ids: Dict[str, int] = {}
    seen_hashes: Dict[str, int] = {}
    for index, entry in enumerate(entries):
        path = "keys[%d]" % (index,)
        try:
            record = _record(entry, path)
        except KeyFileError as e:
            e.filename = filename
            raise
        if record.id in seen_ids:
            raise KeyFileError(
                path + ".id",
                "id %r is already used by keys[%d]" % (record.id, seen_ids[record.id]),
                filename,
            )
        if record.hash in seen_hashes:
            raise KeyFileError(
                path + ".hash",
                "the same key is already keys[%d] (id %r)"
                % (seen_hashes[record.hash], records[seen_hashes[record.hash]].id),
                filename,
            )
        seen_ids[record.id] = index
        seen_hashes[record.hash] = index
        records.append(record)
    return tuple(records)


def _record(entry: Any, path: str) -> KeyRecord:
    """
    One entry of the C{keys} list as a L{KeyRecord}.
    """
    if not isinstance(entry, dict):
        raise KeyFileError(path, "must be a mapping, got %s" % (_describe(entry),))
    key_id = entry.get("id")
    # Name the entry by its id when it has a valid one.
    named = " (id %r)" % (key_id,) if _check_id(key_id) is None else ""

    def fail(field: str, problem: str) -> KeyFileError:
        return KeyFileError("%s.%s" % (path, field) if field else path, problem + named)

    for name in entry:
        if name not in _FIELDS:
            raise fail(str(name), "unknown key (expected one of: %s)" % (", ".join(_FIELDS),))
    for name in ("id", "hash"):
        if name not in entry:
            raise fail(name, "is required")
    problem = _check_id(key_id)
    if problem:
        raise fail("id", problem)
    digest = entry["hash"]
    if not isinstance(digest, str) or not _HASH.fullmatch(digest):
        raise fail("hash", "must be 'sha256:' and 64 lowercase hex digits")
    values: Dict[str, Any] = {"id": key_id, "hash": digest}
    owner = entry.get("owner")
    if owner is not None:
        problem = _check_text(owner)
        if problem:
            raise fail("owner", problem)
        values["owner"] = owner
    for name, check in (("models", _check_model), ("scopes", check_scope)):
        items = entry.get(name)
        if items is not None:
            if not isinstance(items, list):
                raise fail(name, "must be a list, got %s" % (_describe(items),))
            for i, item in enumerate(items):
                problem = check(item)
                if problem:
                    raise fail("%s[%d]" % (name, i), problem)
            values[name] = tuple(items)
    for name in ("requests_per_window", "tokens_per_minute"):
        value = entry.get(name)
        if value is not None:
            problem = _check_limit(value)
            if problem:
                raise fail(name, problem)
            values[name] = value
    for name in ("expires", "created"):
        value = entry.get(name)
        if value is not None:
            try:
                values[name] = parse_time(value)
            except ValueError as e:
                raise fail(name, str(e))
    return KeyRecord(**values)


def _entry(record: KeyRecord) -> Dict[str, Any]:
    """
    The YAML mapping of C{record}; unset fields are left out.
    """
    entry: Dict[str, Any] = {"id": record.id, "hash": record.hash}
    if record.owner is not None:
        entry["owner"] = record.owner
    if record.models:
        entry["models"] = list(record.models)
    if record.requests_per_window is not None:
        entry["requests_per_window"] = record.requests_per_window
    if record.tokens_per_minute is not None:
        entry["tokens_per_minute"] = record.tokens_per_minute
    if record.scopes:
        entry["scopes"] = list(record.scopes)
    if record.expires is not None:
        entry["expires"] = format_time(record.expires)
    if record.created is not None:
        entry["created"] = format_time(record.created)
    return entry


def render(records: List[KeyRecord]) -> bytes:
    """
    The bytes of a keys file holding C{records}.
    """
    body = yaml.dump(
        {"keys": [_entry(r) for r in records]},
        Dumper=_Dumper,
        default_flow_style=False,
        sort_keys=False,
        allow_unicode=True,
    )
    return (_HEADER + body).encode("utf-8")
