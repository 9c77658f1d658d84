# -*- test-case-name: tests.gate.test_keys -*-
"""
The keys file on disk: read it, and rewrite it safely while the gateway and
other runs of C{qwengate-keys} use it.

Why a module of its own: L{qwen_twist.gate.keys} says what a keys file I{means}
(records, hashes, its YAML) and can be reasoned about without a file
system; this module is the part that touches one. Rewrites (L{add_key},
L{revoke_key}) hold an exclusive C{flock} on the file, re-read it under the
lock, and replace it atomically (temporary file, C{fsync}, C{rename}, mode
0640, owner and group kept), so concurrent runs of the command lose nothing
and the daemon never reads half a file.

No Twisted imports; the only I/O is reading and writing the keys file.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import tempfile
from typing import Callable, List, Optional, Tuple

from qwen_twist.gate.keys import (
    KeyFileError,
    KeyRecord,
    KeyStore,
    _check_id,
    _check_limit,
    _check_model,
    _check_text,
    _parse_records,
    check_scope,
    hash_key,
    new_key,
    render,
)

FILE_MODE = 0o640


def read_file(path: str) -> Optional[bytes]:
    """
    The bytes of the keys file at C{path}, or C{None} when it is missing.

    @raise KeyFileError: the file cannot be read.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise KeyFileError("", "cannot read: %s" % (e.strerror or e,), path)


# Rewriting ------------------------------------------------------------------


def load_store(path: str) -> KeyStore:
    """
    Read the keys file at C{path}; a missing file is an empty store.

    @raise KeyFileError: the file cannot be read or is invalid.
    """
    raw = read_file(path)
    if raw is None:
        return KeyStore.empty()
    return KeyStore.parse(raw, path)


def _open_locked(path: str) -> Tuple[int, bool]:
    """
    Open C{path} (creating it empty if missing) and hold an exclusive
    C{flock} on the inode that is I{still} at C{path}: another writer may
    have renamed a new file over the one we opened while we waited.

    @return: the descriptor and whether this call created the file.
    """
    while True:
        created = False
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            try:
                fd = os.open(
                    path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE
                )
            except FileExistsError:
                continue
            created = True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
        except BaseException:
            os.close(fd)
            raise
        if current is not None and (current.st_dev, current.st_ino) == (
            held.st_dev,
            held.st_ino,
        ):
            return fd, created
        os.close(fd)


def _read_fd(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _write_atomically(path: str, data: bytes, like: os.stat_result) -> None:
    """
    Replace C{path} by a file holding C{data}, mode 0640 and the owner and
    group of C{like}, so that a reader sees the old file or the new one,
    never part of one.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(
        prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), FILE_MODE)
            mine = os.fstat(f.fileno())
            if (mine.st_uid, mine.st_gid) != (like.st_uid, like.st_gid):
                # Keep the group the daemon reads the file through.
                try:
                    os.fchown(f.fileno(), like.st_uid, like.st_gid)
                except PermissionError:
                    os.fchown(f.fileno(), -1, like.st_gid)
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError as e:  # pragma: no cover - file systems without directory fsync
        if e.errno not in (errno.EINVAL, errno.EROFS):
            raise
    finally:
        os.close(dir_fd)


def _update(path: str, change: Callable[[List[KeyRecord]], Optional[List[KeyRecord]]]) -> None:
    """
    Re-read C{path} under its lock, apply C{change} and write the result
    (unless C{change} returns C{None}).
    """
    fd, created = _open_locked(path)
    try:
        records = list(_parse_records(_read_fd(fd), path))
        changed = change(records)
        if changed is not None:
            _write_atomically(path, render(changed), os.fstat(fd))
            created = False
    finally:
        if created:
            # Leave no empty file behind when nothing was written.
            os.unlink(path)
        os.close(fd)


def add_key(
    path: str,
    key_id: str,
    *,
    owner: Optional[str] = None,
    models: Tuple[str, ...] = (),
    requests_per_window: Optional[int] = None,
    tokens_per_minute: Optional[int] = None,
    expires: Optional[float] = None,
    scopes: Tuple[str, ...] = (),
    now: float,
) -> str:
    """
    Mint a key, append its hash and metadata to the keys file at C{path}
    and return the key: the only time it exists in clear.

    @param now: the current Unix time, recorded as C{created}.
    @raise ValueError: an invalid argument (the message names it).
    @raise KeyFileError: the file is invalid, or C{key_id} is taken.
    @raise OSError: the file cannot be written.
    """
    for name, value, check in (
        ("id", key_id, _check_id),
        ("owner", owner, _check_text),
        ("requests_per_window", requests_per_window, _check_limit),
        ("tokens_per_minute", tokens_per_minute, _check_limit),
    ):
        if value is not None or name == "id":
            problem = check(value)
            if problem:
                raise ValueError("%s %s" % (name, problem))
    models = tuple(models)
    for model in models:
        problem = _check_model(model)
        if problem:
            raise ValueError("model %s" % (problem,))
    scopes = tuple(scopes)
    for scope in scopes:
        problem = check_scope(scope)
        if problem:
            raise ValueError("scope %s" % (problem,))
    if expires is not None and not (math.isfinite(expires) and expires > now):
        raise ValueError("expires must be in the future")
    key = new_key()
    record = KeyRecord(
        id=key_id,
        hash=hash_key(key),
        owner=owner,
        models=models,
        requests_per_window=requests_per_window,
        tokens_per_minute=tokens_per_minute,
        scopes=scopes,
        expires=None if expires is None else float(math.floor(expires)),
        created=float(math.floor(now)),
    )

    def append(records: List[KeyRecord]) -> List[KeyRecord]:
        for index, existing in enumerate(records):
            if existing.id == key_id:
                raise KeyFileError(
                    "keys[%d].id" % (index,), "id %r is already in use" % (key_id,), path
                )
        return records + [record]

    _update(path, append)
    return key


def revoke_key(path: str, key_id: str) -> bool:
    """
    Delete the entry C{key_id} from the keys file at C{path}.

    @return: whether there was such an entry.
    @raise KeyFileError: the file is invalid.
    @raise OSError: the file cannot be written.
    """
    if not os.path.exists(path):
        return False
    found = []

    def remove(records: List[KeyRecord]) -> Optional[List[KeyRecord]]:
        kept = [r for r in records if r.id != key_id]
        if len(kept) == len(records):
            return None
        found.append(True)
        return kept

    _update(path, remove)
    return bool(found)


def list_keys(path: str) -> List[KeyRecord]:
    """
    The records of the keys file at C{path}, in file order.

    @raise KeyFileError: the file cannot be read or is invalid.
    """
    return list(load_store(path).records)
