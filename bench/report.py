# -*- test-case-name: tests.test_bench -*-
"""
Tables for people, JSON for machines, and CPU profiles cut down to their
top functions.

Why here: every benchmark prints a table and writes
C{bench/results/<name>-<timestamp>.json}; keeping the formatting and the
profile summaries pure (no processes) keeps them testable.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def fmt(value: Any, digits: int = 2, unit: str = "") -> str:
    """
    A number for a table: rounded, C{-} for missing, signed when the unit
    asks for it (C{"+ms"}).
    """
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if unit.startswith("+"):
        return "%+.*f%s" % (digits, value, unit[1:])
    if isinstance(value, int) and not isinstance(value, bool):
        return "%d%s" % (value, unit)
    return "%.*f%s" % (digits, value, unit)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], title: str = "",
          left: int = 1) -> str:
    """
    A plain text table: the first C{left} columns left-aligned, the others
    right-aligned.
    """
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: List[str]) -> str:
        out = [cell.ljust(width) if i < left else cell.rjust(width)
               for i, (cell, width) in enumerate(zip(row, widths))]
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    text = [title] if title else []
    text += [line(cells[0]), rule] + [line(row) for row in cells[1:]]
    return "\n".join(text)


def mb(value: Optional[int]) -> Optional[float]:
    return None if value is None else value / (1024 * 1024)


def diff(a: Optional[float], b: Optional[float]) -> Optional[float]:
    """
    C{a - b}, or L{None} when either is missing.
    """
    return None if a is None or b is None else a - b


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or not b else a / b


def environment() -> Dict[str, Any]:
    """
    What the figures were measured on.
    """
    versions: Dict[str, str] = {}
    try:
        from importlib import metadata
        for name in ("twisted", "treq", "pyopenssl"):
            try:
                versions[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                pass
    except ImportError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": load,
        "packages": versions,
    }


def save(name: str, data: Dict[str, Any], directory: Path = RESULTS_DIR,
         now: Optional[datetime.datetime] = None) -> Path:
    """
    Write C{data} to C{directory/<name>-<timestamp>.json}; the path.
    """
    now = now or datetime.datetime.now()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ("%s-%s.json" % (name, now.strftime("%Y%m%d-%H%M%S")))
    path.write_text(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n", "utf-8")
    return path


# -- CPU profiles ----------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def frame_key(frame: str) -> str:
    """
    A py-spy frame C{"func (path/to/file.py:123)"} as C{"func (file.py)"}:
    one entry per function, not per line.
    """
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    short = "/".join(path.replace("\\", "/").split("/")[-2:])
    return "%s (%s)" % (match.group("func"), short)


def top_functions(collapsed: Iterable[str], n: int = 10,
                  focus: Optional[str] = None) -> Dict[str, Any]:
    """
    The functions with the most I{self} samples in py-spy's raw (collapsed
    stack) output, with their self and inclusive shares; with C{focus}, also
    the functions whose file path contains it (the project's own code),
    ranked by inclusive share.

    Each line is C{"frame;frame;...;frame COUNT"}, outermost first; the
    last frame is where the sample was taken.
    """
    self_counts: Dict[str, int] = {}
    total_counts: Dict[str, int] = {}
    focused = set()
    total = 0
    for line in collapsed:
        line = line.rstrip("\n")
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        raw = [f for f in stack.split(";") if f]
        frames = [frame_key(f) for f in raw]
        if not frames:
            continue
        if focus:
            focused.update(key for key, f in zip(frames, raw)
                           if focus in "/" + f.rpartition(" (")[2])
        leaf = frames[-1]
        self_counts[leaf] = self_counts.get(leaf, 0) + count
        for key in set(frames):
            total_counts[key] = total_counts.get(key, 0) + count

    def entry(key: str) -> Dict[str, Any]:
        return {"function": key,
                "self_pct": round(100.0 * self_counts.get(key, 0) / total, 1),
                "total_pct": round(100.0 * total_counts[key] / total, 1)}

    ranked = sorted(self_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    result: Dict[str, Any] = {"samples": total,
                              "top": [entry(key) for key, _ in ranked] if total else []}
    if focus:
        own = sorted(focused, key=lambda key: (-total_counts[key], key))[:n]
        result["focus"] = focus
        result["focus_top"] = [entry(key) for key in own] if total else []
    return result


def top_pstats(path: str, n: int = 10) -> Dict[str, Any]:
    """
    The functions with the most own time in a cProfile C{pstats} file.
    """
    import pstats

    stats = pstats.Stats(path)
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in entries.values()) or 1.0
    ranked = sorted(entries.items(), key=lambda kv: -kv[1][2])[:n]
    top = []
    for (filename, line, func), (cc, nc, tt, ct, callers) in ranked:
        short = "/".join(filename.split("/")[-2:])
        top.append({"function": "%s (%s:%d)" % (func, short, line), "calls": nc,
                    "self_pct": round(100.0 * tt / total, 1),
                    "self_s": round(tt, 3), "total_s": round(ct, 3)})
    return {"total_s": round(total, 3), "top": top}


def profile_table(profile: Dict[str, Any], title: str, key: str = "top") -> str:
    rows: List[Tuple[Any, ...]] = []
    for i, entry in enumerate(profile.get(key, []), 1):
        rows.append((i, entry["function"], fmt(entry["self_pct"], 1, "%"),
                     fmt(entry.get("total_pct"), 1, "%") if "total_pct" in entry
                     else fmt(entry.get("total_s"), 3, "s")))
    return table(("#", "function", "self", "incl."), rows, title, left=2)


#: Layers of the gateway's stack, by the path of the frame a sample was
#: taken in (first match wins): where the CPU floor of a request or chunk is.
LAYERS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("qwen_twist (the gateway's own code)", ("/qwen_twist/",)),
    ("TLS (pyOpenSSL, Twisted's TLS protocol)", ("/OpenSSL/", "/protocols/tls.py",
                                                 "/_tls_legacy", "/_sslverify")),
    ("logging (twisted.logger, log file)", ("/twisted/logger/", "/python/log.py",
                                             "/logfile.py", "/_tzhelper", "/string.py")),
    ("HTTP client (twisted.web._newclient)", ("/web/_newclient.py", "/web/client.py")),
    ("HTTP server (twisted.web, LineReceiver)", ("/twisted/web/", "/protocols/basic.py")),
    ("Deferreds and coroutines", ("/internet/defer.py",)),
    ("reactor and sockets (twisted.internet)", ("/twisted/internet/", "/python/util.py",
                                                "/python/context.py")),
    ("zope.interface", ("/zope/",)),
    ("json", ("/json/",)),
)


def layer_shares(collapsed: Iterable[str]) -> Dict[str, Any]:
    """
    Self samples of py-spy's raw output grouped by L{LAYERS} (the leaf
    frame's file decides; the rest is "other"), largest first.
    """
    counts: Dict[str, int] = {}
    total = 0
    for line in collapsed:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        leaf = stack.split(";")[-1]
        path = "/" + leaf.rpartition(" (")[2]
        name = "other (Python stdlib, C builtins)"
        for layer, needles in LAYERS:
            if any(n in path for n in needles):
                name = layer
                break
        counts[name] = counts.get(name, 0) + count
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return {"samples": total,
            "layers": [{"layer": k, "pct": round(100.0 * v / total, 1) if total else 0.0}
                       for k, v in ranked]}


def layer_table(shares: Dict[str, Any], title: str) -> str:
    rows = [(entry["layer"], fmt(entry["pct"], 1, "%")) for entry in shares["layers"]]
    return table(("layer", "share of samples"), rows, title)
