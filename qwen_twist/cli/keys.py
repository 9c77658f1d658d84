# -*- test-case-name: tests.cli.test_keys -*-
"""
C{qwengate-keys}: mint, list and revoke API keys in the keys file.

Why a command rather than hand edits: a key must come from a strong random
source, only its hash may reach the file, and the clear key must be shown
exactly once, to the operator who asked for it. So C{add} prints the key on
standard output (and nothing else there, so C{KEY=$(qwengate-keys add ...)}
works) and a one-line reminder on standard error; C{list} never prints a
key or a whole hash. The running gateway picks changes up on SIGHUP
(C{systemctl reload qwengate}).

Usage::

    qwengate-keys [--file PATH] add --id ID [--owner O] [--models a,b]
                  [--rpm N] [--tpm N] [--expires 2027-01-01T00:00:00Z | --days N]
                  [--scopes a,b] [--scope models:manage]
    qwengate-keys [--file PATH] list
    qwengate-keys [--file PATH] revoke --id ID

Exit status: 0 done, 1 error (one line on standard error), 2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Any, Callable, List, Optional, TextIO

from qwen_twist.gate import keyfile, keys

DEFAULT_FILE = "/etc/qwengate/keys.yaml"

PROG = "qwengate-keys"

_DAY = 86400.0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a whole number, got %r" % (text,))
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1, got %d" % (value,))
    return value


def _positive_days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number of days, got %r" % (text,))
    if not 0 < value < 36500:
        raise argparse.ArgumentTypeError("must be more than 0 and under 36500 days")
    return value


def _timestamp(text: str) -> float:
    try:
        return keys.parse_time(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def _models(text: str) -> List[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError("must be model names separated by commas")
    return names


def build_parser() -> argparse.ArgumentParser:
    """
    The command line: a global C{--file} (also accepted after the
    subcommand) and the subcommands C{add}, C{list} and C{revoke}.
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Manage the qwengate API keys file (hashes only).",
    )
    parser.add_argument(
        "--file", default=DEFAULT_FILE, help="keys file (default: %(default)s)"
    )
    file_again = argparse.ArgumentParser(add_help=False)
    file_again.add_argument("--file", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    add = commands.add_parser(
        "add", parents=[file_again], help="mint a key and print it once"
    )
    add.add_argument("--id", required=True, help="public name of the key: [A-Za-z0-9._-]{1,64}")
    add.add_argument("--owner", help="user or team the key belongs to")
    add.add_argument(
        "--models", type=_models, default=[], help="allowed models, comma-separated (default: all)"
    )
    add.add_argument(
        "--rpm", type=_positive_int, help="requests per rate-limit window for this key"
    )
    add.add_argument("--tpm", type=_positive_int, help="tokens per minute for this key")
    add.add_argument(
        "--scopes", type=_models, default=[],
        help="extra rights, comma-separated: %s (default: none)"
             % (", ".join(sorted(keys.SCOPES)),),
    )
    add.add_argument(
        "--scope", action="append", default=[], dest="scope",
        help="one extra right (repeatable), e.g. --scope models:manage to unlock "
             "Ollama's model management routes (/api/pull, /api/delete, ...)",
    )
    expiry = add.add_mutually_exclusive_group()
    expiry.add_argument(
        "--expires", type=_timestamp, help="expiry as RFC 3339, e.g. 2027-01-01T00:00:00Z"
    )
    expiry.add_argument("--days", type=_positive_days, help="expiry this many days from now")

    commands.add_parser("list", parents=[file_again], help="show the keys (never the keys themselves)")

    revoke = commands.add_parser("revoke", parents=[file_again], help="delete a key")
    revoke.add_argument("--id", required=True, help="the key to delete")
    return parser


def _add(options: argparse.Namespace, stdout: TextIO, stderr: TextIO, now: float) -> int:
    expires = options.expires
    if options.days is not None:
        expires = now + options.days * _DAY
    key = keyfile.add_key(
        options.file,
        options.id,
        owner=options.owner,
        models=tuple(options.models),
        requests_per_window=options.rpm,
        tokens_per_minute=options.tpm,
        scopes=tuple(dict.fromkeys(options.scopes + options.scope)),
        expires=expires,
        now=now,
    )
    stdout.write(key + "\n")
    stdout.flush()
    stderr.write(
        "%s: added key %r to %s; it cannot be shown again, store it now "
        "(reload qwengate to use it)\n" % (PROG, options.id, options.file)
    )
    return 0


def _list(options: argparse.Namespace, stdout: TextIO, now: float) -> int:
    rows = [("ID", "OWNER", "MODELS", "EXPIRES", "CREATED", "HASH")]
    for record in keyfile.list_keys(options.file):
        if record.expires is None:
            expires = "never"
        else:
            expires = keys.format_time(record.expires)
            if record.expired(now):
                expires += " (expired)"
        rows.append(
            (
                record.id,
                record.owner or "-",
                ",".join(record.models) or "all",
                expires,
                "-" if record.created is None else keys.format_time(record.created),
                # Enough to tell keys apart, too little to be the hash.
                record.hash[: len(keys.HASH_PREFIX) + 8],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths))
        stdout.write(line.rstrip() + "\n")
    return 0


def _revoke(options: argparse.Namespace, stderr: TextIO) -> int:
    if not keyfile.revoke_key(options.file, options.id):
        stderr.write("%s: no key with id %r in %s\n" % (PROG, options.id, options.file))
        return 1
    stderr.write(
        "%s: revoked key %r (reload qwengate to apply)\n" % (PROG, options.id)
    )
    return 0


def main(
    argv: Optional[List[str]] = None,
    stdout: Optional[TextIO] = None,
    stderr: Optional[TextIO] = None,
    now: Callable[[], float] = time.time,
) -> int:
    """
    Run the command with C{argv} (default: C{sys.argv[1:]}).

    @param stdout: where the key and the listing go (default: C{sys.stdout}
        at call time).
    @param stderr: where messages go (default: C{sys.stderr} at call time).

    @param now: the clock, for C{created}, C{--days} and expiry in C{list}.
    @return: the exit status.
    """
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    parser = build_parser()
    # argparse writes help and usage errors to sys.stdout / sys.stderr and
    # exits; point those at our streams and turn the exit into a status.
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            options = parser.parse_args(argv)
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else 2
    try:
        if options.command == "add":
            return _add(options, stdout, stderr, now())
        if options.command == "list":
            return _list(options, stdout, now())
        return _revoke(options, stderr)
    except keys.KeyFileError as e:
        stderr.write("%s: %s\n" % (PROG, _one_line(e)))
    except ValueError as e:
        stderr.write("%s: %s\n" % (PROG, _one_line(e)))
    except OSError as e:
        stderr.write(
            "%s: %s: %s\n" % (PROG, e.filename or options.file, e.strerror or e)
        )
    return 1


def _one_line(error: Any) -> str:
    return " ".join(str(error).split())


if __name__ == "__main__":
    sys.exit(main())
