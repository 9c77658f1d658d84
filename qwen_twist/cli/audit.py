# -*- test-case-name: tests.cli.test_audit -*-
"""
C{qwengate-audit}: questions about the JSON audit log, answered from the
files (the current one and the rotated ones, gzipped or not).

    qwengate-audit top --status 401,429,5xx --since yesterday
    qwengate-audit keys --since 2026-12-01 --until 2026-12-08
    qwengate-audit slowest -n 20 --since 24h
    qwengate-audit request 5f0c...e1

What the seed does with C{zgrep | awk | sort | uniq -c}, done on JSON:
a line that is not a JSON object (a torn last line after a crash) is
skipped, never fatal. Times are UTC, as in the files.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import sys
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, TextIO, Tuple

DEFAULT_CONFIG = "/etc/qwengate/qwengate.yaml"

_RELATIVE = re.compile(r"\A(\d+)([smhdw])\Z")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DATED = re.compile(r"\.(\d{4}-\d{2}-\d{2})(?:\.gz)?\Z")


class UsageError(Exception):
    pass


def parse_time(text: str, now: datetime) -> datetime:
    """
    C{today}, C{yesterday}, C{now}, a duration ago (C{30m}, C{24h},
    C{7d}), or an ISO date or date-time (UTC unless it has an offset).
    """
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if text == "now":
        return now
    if text == "today":
        return midnight
    if text == "yesterday":
        return midnight - timedelta(days=1)
    match = _RELATIVE.match(text)
    if match:
        return now - timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError("cannot read the time %r (try today, yesterday, 24h, 2026-12-01)"
                         % (text,))
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when


def record_time(record: Dict[str, Any]) -> Optional[datetime]:
    text = record.get("time")
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def files_for(path: str) -> List[str]:
    """
    C{path} and its rotated siblings (C{path.YYYY-MM-DD[.gz]}), oldest
    first; or, for a directory, every C{*.log*} file in it.
    """
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if ".log" in n)
        return [os.path.join(path, n) for n in names]
    directory = os.path.dirname(path) or "."
    base = os.path.basename(path)
    rotated = []
    try:
        names = os.listdir(directory)
    except OSError:
        names = []
    for name in names:
        if name.startswith(base + ".") and _DATED.search(name):
            rotated.append(os.path.join(directory, name))
    rotated.sort()
    if os.path.exists(path):
        rotated.append(path)
    return rotated


def configured_file(config_path: str) -> str:
    """
    The audit file named by qwengate's configuration file.

    @raise ValueError: the configuration cannot be read, or names no file.
    """
    from qwen_twist import config as configmod
    from qwen_twist.observe.audit import audit_path

    try:
        config = configmod.load(config_path)
    except configmod.ConfigError as e:
        raise ValueError(str(e))
    if config.audit.file == "-":
        raise ValueError("%s: the audit log goes to standard output (journald)"
                         % (config_path,))
    return audit_path(config)


def _file_day(path: str) -> Optional[str]:
    match = _DATED.search(path)
    return match.group(1) if match else None


def read_records(paths: Iterable[str], since: Optional[datetime] = None,
                 until: Optional[datetime] = None) -> Iterator[Dict[str, Any]]:
    """
    The records of C{paths} whose time is in C{[since, until)}; rotated
    files entirely before C{since} are not opened.
    """
    for path in paths:
        day = _file_day(path)
        if day is not None and since is not None and day < since.strftime("%Y-%m-%d"):
            continue
        opener = gzip.open if path.endswith(".gz") else open
        try:
            with opener(path, "rb") as f:
                for raw in f:
                    try:
                        record = json.loads(raw)
                    except ValueError:
                        continue
                    if not isinstance(record, dict):
                        continue
                    if since is not None or until is not None:
                        when = record_time(record)
                        if when is None:
                            continue
                        if since is not None and when < since:
                            continue
                        if until is not None and when >= until:
                            continue
                    yield record
        except (OSError, EOFError) as e:
            sys.stderr.write("qwengate-audit: %s: %s\n" % (path, getattr(e, "strerror", None)
                                                            or e))


def status_matcher(spec: str) -> Any:
    """
    C{401,429,5xx}: exact codes and classes.
    """
    exact = set()
    classes = set()
    for part in spec.split(","):
        part = part.strip().lower()
        if not part:
            continue
        if re.match(r"\A[1-5]xx\Z", part):
            classes.add(part[0])
        elif part.isdigit():
            exact.add(int(part))
        else:
            raise UsageError("bad status %r (use codes and classes: 401,429,5xx)" % (part,))

    def matches(status: Any) -> bool:
        if not isinstance(status, int):
            return False
        return status in exact or str(status)[0] in classes

    return matches


def top(records: Iterable[Dict[str, Any]], statuses: Any, by: str,
        limit: int) -> List[Tuple[Any, int, Dict[int, int]]]:
    """
    The C{limit} most frequent values of C{by} among records whose status
    matches, with their count and counts per status.
    """
    counts: Dict[Any, int] = {}
    per_status: Dict[Any, Dict[int, int]] = {}
    for record in records:
        status = record.get("status")
        if not statuses(status):
            continue
        value = record.get(by)
        counts[value] = counts.get(value, 0) + 1
        codes = per_status.setdefault(value, {})
        codes[status] = codes.get(status, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: (-item[1], str(item[0])))
    return [(value, count, per_status[value]) for value, count in ranked[:limit]]


def key_totals(records: Iterable[Dict[str, Any]]) -> List[Tuple[str, Dict[str, int]]]:
    """
    Requests, errors and tokens per identity (anonymous calls as C{-}).
    """
    totals: Dict[str, Dict[str, int]] = {}
    for record in records:
        identity = record.get("identity") or "-"
        row = totals.setdefault(identity, {"requests": 0, "errors": 0, "prompt_tokens": 0,
                                           "completion_tokens": 0})
        row["requests"] += 1
        status = record.get("status")
        if not isinstance(status, int) or status >= 400:
            row["errors"] += 1
        for field in ("prompt_tokens", "completion_tokens"):
            value = record.get(field)
            if isinstance(value, int):
                row[field] += value
    return sorted(totals.items(), key=lambda item: (-item[1]["requests"], item[0]))


def slowest(records: Iterable[Dict[str, Any]], limit: int) -> List[Dict[str, Any]]:
    """
    The C{limit} records with the longest C{duration_ms}.
    """
    import heapq

    timed = ((r.get("duration_ms"), i, r) for i, r in enumerate(records)
             if isinstance(r.get("duration_ms"), (int, float)))
    return [r for _, _, r in heapq.nlargest(limit, timed, key=lambda t: (t[0], -t[1]))]


# Output ------------------------------------------------------------------------


def _print_table(out: TextIO, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    rows = [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    out.write("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip() + "\n")
    for row in rows:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() + "\n")


def main(argv: Optional[Sequence[str]] = None, out: TextIO = sys.stdout,
         now: Optional[datetime] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="qwengate-audit", description="Query qwengate's JSON audit log.")
    parser.add_argument("--file", "-f", action="append",
                        help="audit file (its rotated FILE.YYYY-MM-DD[.gz] siblings are "
                             "read too) or directory; default: the audit.file of --config")
    parser.add_argument("--config", "-c", default=DEFAULT_CONFIG,
                        help="qwengate's configuration, for the audit file (default %s)"
                             % (DEFAULT_CONFIG,))
    parser.add_argument("--json", action="store_true", help="print JSON lines")
    sub = parser.add_subparsers(dest="command", required=True)

    def period(p: argparse.ArgumentParser) -> None:
        p.add_argument("--since", help="today, yesterday, 24h, 7d, 2026-12-01, ...")
        p.add_argument("--until", help="end of the period (exclusive); default now")

    p_top = sub.add_parser("top", help="most frequent sources of the given statuses")
    p_top.add_argument("--status", default="4xx,5xx", help="e.g. 401,429,5xx")
    p_top.add_argument("--by", default="client_ip",
                       choices=("client_ip", "identity", "key_owner", "user", "model", "route",
                                "error_code"))
    p_top.add_argument("-n", type=int, default=5, help="how many (default 5)")
    period(p_top)
    p_keys = sub.add_parser("keys", help="requests and tokens per key/identity")
    period(p_keys)
    p_slow = sub.add_parser("slowest", help="the longest calls")
    p_slow.add_argument("-n", type=int, default=10)
    period(p_slow)
    p_req = sub.add_parser("request", help="the record(s) of one request id")
    p_req.add_argument("request_id")
    period(p_req)
    args = parser.parse_args(argv)

    now = now or datetime.now(timezone.utc)
    try:
        since = parse_time(args.since, now) if args.since else None
        until = parse_time(args.until, now) if args.until else None
        if args.command == "top":
            statuses = status_matcher(args.status)
    except UsageError as e:
        parser.error(str(e))
    names = args.file
    if not names:
        try:
            names = [configured_file(args.config)]
        except ValueError as e:
            sys.stderr.write("qwengate-audit: %s (or give --file)\n" % (e,))
            return 1
    paths: List[str] = []
    for name in names:
        paths.extend(files_for(name))
    if not paths:
        sys.stderr.write("qwengate-audit: no audit files at %s\n" % (", ".join(names),))
        return 1
    records = read_records(paths, since, until)

    if args.command == "top":
        rows = top(records, statuses, args.by, args.n)
        if args.json:
            for value, count, codes in rows:
                out.write(json.dumps({args.by: value, "count": count,
                                      "statuses": {str(k): v for k, v in sorted(codes.items())}})
                          + "\n")
        else:
            _print_table(out, ("count", args.by, "statuses"), [
                (count, value, " ".join("%s:%d" % (k, v) for k, v in sorted(codes.items())))
                for value, count, codes in rows])
    elif args.command == "keys":
        totals = key_totals(records)
        if args.json:
            for identity, row in totals:
                out.write(json.dumps(dict(identity=identity, **row)) + "\n")
        else:
            _print_table(out, ("identity", "requests", "errors", "prompt_tokens",
                               "completion_tokens"),
                         [(identity, row["requests"], row["errors"], row["prompt_tokens"],
                           row["completion_tokens"]) for identity, row in totals])
    elif args.command == "slowest":
        found = slowest(records, args.n)
        if args.json:
            for record in found:
                out.write(json.dumps(record) + "\n")
        else:
            _print_table(out, ("duration_ms", "time", "request_id", "identity", "route",
                               "model", "status", "outcome"),
                         [(r.get("duration_ms"), r.get("time"), r.get("request_id"),
                           r.get("identity"), r.get("route"), r.get("model"), r.get("status"),
                           r.get("outcome")) for r in found])
    else:
        found = [r for r in records if r.get("request_id") == args.request_id]
        for record in found:
            out.write(json.dumps(record, indent=None if args.json else 2) + "\n")
        if not found:
            sys.stderr.write("qwengate-audit: no record of request %s\n" % (args.request_id,))
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
