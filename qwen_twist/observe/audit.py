# -*- test-case-name: tests.observe.test_audit -*-
"""
The audit log: one JSON object per line per API call.

The seeds want every call recorded (time, source, user, model, sizes,
tokens, timings, status, a request id to follow one conversation), shipped
to ELK and kept 180 days, and queried daily for abnormal requests
(L{qwen_twist.cli.audit}). L{AuditLog} is a call observer that turns the
call's L{CallContext} into that line (L{record}: never a key, never prompt
or completion text) and hands it to a sink:

  - L{DailyFile}: C{audit.file}, rotated at midnight UTC to
    C{FILE.YYYY-MM-DD} (gzipped in a thread when C{audit.compress}), the
    newest C{audit.retention} rotated files kept. The day is read from the
    injected clock, so rotation is tested with a C{Clock}. C{SIGUSR1}
    reopens the file, for an external logrotate instead.
  - L{StreamSink}: standard output (C{audit.file: "-"}), for journald or a
    container runtime.

Why writes never block the reactor for long: lines are buffered and
written with one C{os.write} per flush (at 64 KiB, or a second after the
first buffered line), to a local file opened C{O_APPEND}. A write that
fails (a full disk, an I/O error) drops what was buffered, counts the lost
lines (the C{qwengate_audit_lines_dropped_total} metric) and logs once per
minute; the gateway keeps serving. The buffer is capped, so a disk that
stays full cannot grow memory.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional

from twisted.logger import Logger

from qwen_twist.context import CallContext

#: Bytes buffered before a write.
FLUSH_BYTES = 64 * 1024
#: Seconds a buffered line waits at most before it is written.
FLUSH_DELAY = 1.0
#: Bytes buffered at most while writes fail; beyond, lines are dropped.
MAX_BUFFER = 8 * 1024 * 1024
#: Seconds between two log lines about failed audit writes.
ERROR_LOG_INTERVAL = 60.0

DAY = 86400.0

#: The fields of every line, in order (all present; L{None} when unknown).
FIELDS = (
    "time", "request_id", "client_ip", "identity", "key_owner", "user", "method", "route",
    "model", "stream", "status", "error_code", "outcome", "prompt_chars", "prompt_tokens",
    "completion_tokens", "ttft_ms", "duration_ms", "queue_wait_ms", "upstream", "bytes_out",
)

_OUTCOMES = {"ok": "complete"}


def audit_path(config: Any) -> str:
    """
    The audit file: C{audit.file}, or C{state_dir/audit/audit.log}.
    """
    return config.audit.file or os.path.join(config.state_dir, "audit", "audit.log")


_second = [-1, ""]


def iso_time(when: float) -> str:
    """
    C{when} as ISO 8601 UTC with milliseconds (C{2026-12-06T23:05:48.123Z}).
    The date and time of the current second are formatted once (calls
    arrive in time order, many per second).
    """
    second = int(when)
    if second != _second[0]:
        _second[0] = second
        _second[1] = datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.")
    return "%s%03dZ" % (_second[1], int((when - second) * 1000.0))


def _ms(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _rounded(ms: Optional[float]) -> Optional[float]:
    return None if ms is None else round(ms, 3)


def _count(value: Any) -> Optional[int]:
    return value if type(value) is int else None


def record(ctx: CallContext) -> Dict[str, Any]:
    """
    The audit record of one finished call (see L{FIELDS}).

    C{status} is what the client received: a call whose client left before
    any response is C{499} with outcome C{client_gone}, never the 200 it
    would have got. C{model} is what the body named, even for a call
    refused before translation.
    """
    usage = ctx.usage or {}
    ttft = None
    if ctx.first_byte_at is not None and ctx.stream:
        ttft = ctx.first_byte_at - ctx.started
    return {
        "time": iso_time(ctx.started),
        "request_id": ctx.request_id,
        "client_ip": ctx.client_ip,
        "identity": ctx.identity,
        "key_owner": ctx.key_owner,
        "user": ctx.end_user,
        "method": ctx.method,
        "route": ctx.route,
        "model": ctx.model,
        "stream": ctx.stream,
        "status": ctx.status or None,
        "error_code": ctx.error_code,
        "outcome": _OUTCOMES.get(ctx.outcome, ctx.outcome),
        "prompt_chars": _count(ctx.prompt_chars),
        "prompt_tokens": _count(usage.get("prompt_tokens")),
        "completion_tokens": _count(usage.get("completion_tokens")),
        "ttft_ms": _ms(ttft),
        "duration_ms": _ms(ctx.duration),
        "queue_wait_ms": _rounded(ctx.queue_wait_ms),
        "upstream": ctx.upstream,
        "bytes_out": _count(ctx.bytes_out),
    }


def encode(rec: Dict[str, Any]) -> bytes:
    """
    One line: compact JSON, ASCII only (a client-named model cannot break
    the line or the encoding), newline-terminated.
    """
    return _ENCODER.encode(rec).encode("ascii") + b"\n"


#: One encoder for every line (C{json.dumps} with options builds a new one
#: per call, which costs more than the encoding).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)


_escape = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def _str(value: Optional[str]) -> str:
    return "null" if value is None else _escape(value)


_LINE = ('{"time":"%s","request_id":%s,"client_ip":%s,"identity":%s,"key_owner":%s,'
         '"user":%s,"method":%s,"route":%s,"model":%s,"stream":%s,"status":%s,'
         '"error_code":%s,"outcome":%s,"prompt_chars":%s,"prompt_tokens":%s,'
         '"completion_tokens":%s,"ttft_ms":%s,"duration_ms":%s,"queue_wait_ms":%s,'
         '"upstream":%s,"bytes_out":%s}\n')


def encode_call(ctx: CallContext) -> bytes:
    """
    C{encode(record(ctx))}, built directly: one format and a C-escaped
    string per text field, about a third of the cost of building the
    dict and running the JSON encoder over it (C{python -m bench.observe}).
    """
    # Inlined on purpose (a helper call per field costs as much as the
    # field): strings through the C escaper, counts as integers only,
    # timings (internal, finite floats) to the microsecond.
    e = _escape
    usage = ctx.usage or _EMPTY
    started = ctx.started
    first = ctx.first_byte_at
    finished = ctx.finished_at
    queue = ctx.queue_wait_ms
    status = ctx.status
    prompt_chars = ctx.prompt_chars
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    out = ctx.bytes_out
    values = (
        iso_time(started),
        e(ctx.request_id),
        e(ctx.client_ip),
        "null" if ctx.identity is None else e(ctx.identity),
        _str(ctx.key_owner),
        "null" if ctx.end_user is None else e(ctx.end_user),
        e(ctx.method),
        e(ctx.route),
        "null" if ctx.model is None else e(ctx.model),
        "true" if ctx.stream else "false",
        "%d" % status if type(status) is int and status else "null",
        "null" if ctx.error_code is None else e(ctx.error_code),
        e(_OUTCOMES.get(ctx.outcome, ctx.outcome)),
        "%d" % prompt_chars if type(prompt_chars) is int else "null",
        "%d" % prompt if type(prompt) is int else "null",
        "%d" % completion if type(completion) is int else "null",
        "%.3f" % ((first - started) * 1000.0,) if first is not None and ctx.stream else "null",
        "null" if finished is None else "%.3f" % ((finished - started) * 1000.0,),
        "null" if queue is None else "%.3f" % (queue,),
        "null" if ctx.upstream is None else e(ctx.upstream),
        "%d" % out if type(out) is int else "null",
    )
    return (_LINE % values).encode("ascii")


_EMPTY: Dict[str, Any] = {}


class AuditLog:
    """
    The call observer: one line per finished API call, to C{sink}.

    @ivar sink: a L{DailyFile} or L{StreamSink} (or anything with
        C{write(bytes)}), or L{None} while not started.
    """

    uses = ("audit",)

    def __init__(self, config: Any = None, sink: Any = None) -> None:
        self.config = config
        self.sink = sink

    def reconfigure(self, config: Any) -> None:
        """
        New settings: the retention applies at the next rotation; the file
        and its mode need a restart.
        """
        self.config = config
        if config is not None and isinstance(self.sink, DailyFile):
            self.sink.retention = config.audit.retention
            self.sink.compress = config.audit.compress

    @property
    def dropped(self) -> int:
        return getattr(self.sink, "dropped", 0)

    def call_finished(self, ctx: CallContext) -> None:
        sink = self.sink
        if sink is not None:
            sink.write(encode_call(ctx))


class StreamSink:
    """
    Lines to a binary stream (standard output), flushed per line: journald
    and container runtimes read line by line.
    """

    log = Logger()

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.dropped = 0

    def write(self, line: bytes) -> None:
        try:
            self.stream.write(line)
            self.stream.flush()
        except (OSError, ValueError):
            self.dropped += 1

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass


def _day(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%d")


def _next_midnight(when: float) -> float:
    return (int(when // DAY) + 1) * DAY


def gzip_file(path: str) -> None:
    """
    Compress C{path} to C{path.gz} and remove it (run in a thread).
    """
    with open(path, "rb") as src, gzip.open(path + ".gz.tmp", "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.replace(path + ".gz.tmp", path + ".gz")
    os.unlink(path)


class DailyFile:
    """
    C{path}, rotated daily (UTC) to C{path.YYYY-MM-DD[.gz]}; see the module
    docstring.

    @ivar dropped: lines lost to failed writes.
    @ivar retention: rotated files kept.
    """

    log = Logger()

    def __init__(self, path: str, clock: Any, retention: int = 180, compress: bool = True,
                 in_thread: Optional[Callable[[Callable[[], None]], Any]] = None) -> None:
        """
        @param clock: C{seconds()} and C{callLater} (the reactor or a C{Clock}).
        @param in_thread: runs a blocking job (compression) off the reactor
            thread; L{None} runs it at once (tests).
        """
        self.path = path
        self.clock = clock
        self.retention = retention
        self.compress = compress
        self.in_thread = in_thread
        self.dropped = 0
        self._fd: Optional[int] = None
        self._buffer: List[bytes] = []
        self._buffered = 0
        self._timer: Optional[Any] = None
        self._rotate_at = 0.0
        self._day = ""
        self._last_error_log: Optional[float] = None

    # Opening and closing ----------------------------------------------------

    def open(self) -> None:
        """
        Open (create) the file for appending; its day is the day of its
        last change, so a file left from yesterday is rotated first.
        """
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        now = self.clock.seconds()
        try:
            changed = os.stat(self.path).st_mtime
        except OSError:
            changed = now
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._day = _day(min(changed, now))
        self._rotate_at = _next_midnight(min(changed, now))
        if now >= self._rotate_at:
            self._rotate(now)

    def reopen(self) -> None:
        """
        SIGUSR1: write what is buffered, close the file and open C{path}
        again (an external logrotate has moved it away).
        """
        self.flush()
        self._close_fd()
        try:
            self.open()
        except OSError as e:
            self._error(e, 0)

    def close(self) -> None:
        self.flush()
        self._close_fd()

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    # Writing -----------------------------------------------------------------

    def write(self, line: bytes) -> None:
        """
        Buffer one line; written within L{FLUSH_DELAY} seconds.
        """
        if self._fd is None:
            return
        if self._buffered + len(line) > MAX_BUFFER:
            self.dropped += 1
            return
        now = self.clock.seconds()
        if now >= self._rotate_at:
            self.flush()
            self._rotate(now)
        self._buffer.append(line)
        self._buffered += len(line)
        if self._buffered >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = self.clock.callLater(FLUSH_DELAY, self._flush_later)

    def _flush_later(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """
        Write everything buffered; on failure count the lines as dropped.
        """
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if not self._buffer:
            return
        lines, self._buffer = self._buffer, []
        self._buffered = 0
        data = b"".join(lines)
        fd = self._fd
        if fd is None:
            self.dropped += len(lines)
            return
        try:
            written = os.write(fd, data)
            while written < len(data):
                written += os.write(fd, data[written:])
        except OSError as e:
            # Lines partly written are lost too: a torn line is skipped by
            # readers (qwengate-audit ignores lines that are not JSON).
            self._error(e, len(lines))

    def _error(self, error: OSError, lost: int) -> None:
        self.dropped += lost
        now = self.clock.seconds()
        last = self._last_error_log
        if last is None or now - last >= ERROR_LOG_INTERVAL:
            self._last_error_log = now
            why = "disk full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
            self.log.error("audit log {path}: {why}; {dropped} lines dropped so far",
                           path=self.path, why=why, dropped=self.dropped)

    # Rotation ----------------------------------------------------------------

    def _rotate(self, now: float) -> None:
        """
        Move the current file to C{path.DAY}, start a new one, compress
        the old one and delete rotated files beyond the retention.
        """
        old_day = self._day
        self._close_fd()
        target = "%s.%s" % (self.path, old_day)
        try:
            if os.path.exists(self.path) and not os.path.exists(target):
                os.rename(self.path, target)
            else:
                target = ""
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as e:
            self._error(e, 0)
            target = ""
        self._day = _day(now)
        self._rotate_at = _next_midnight(now)
        compress = bool(target) and self.compress

        def housekeeping() -> None:
            # One job, so pruning never races the compression.
            if compress:
                gzip_file(target)
            self.prune()

        self._run(housekeeping)

    def _run(self, job: Callable[[], None]) -> None:
        if self.in_thread is None:
            try:
                job()
            except OSError as e:
                self._error(e, 0)
            return
        d = self.in_thread(job)
        if d is not None and hasattr(d, "addErrback"):
            d.addErrback(lambda f: self.log.failure("audit log housekeeping failed", f))

    def rotated(self) -> List[str]:
        """
        The rotated files, oldest first.
        """
        directory = os.path.dirname(self.path) or "."
        prefix = os.path.basename(self.path) + "."
        names = []
        for name in os.listdir(directory):
            if name.startswith(prefix) and not name.endswith(".tmp"):
                rest = name[len(prefix):]
                if len(rest) >= 10 and rest[:4].isdigit() and rest[4] == "-":
                    names.append(name)
        return [os.path.join(directory, name) for name in sorted(names)]

    def prune(self) -> None:
        """
        Delete the oldest rotated files beyond C{retention}.
        """
        files = self.rotated()
        # A day may briefly exist twice (plain and .gz while compressing).
        days: Dict[str, List[str]] = {}
        for path in files:
            days.setdefault(os.path.basename(path)[len(os.path.basename(self.path)) + 1:][:10],
                            []).append(path)
        for day in sorted(days)[:max(0, len(days) - self.retention)]:
            for path in days[day]:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
