# -*- test-case-name: tests.test_bench -*-
"""
The load generator: a lean HTTP/1.1 client in a process of its own.

Why its own process and why this lean: the gateway's figures are CPU time
per streamed chunk and latency added per request, on a 2-core machine that
the emulator, the gateway and the client share. A client that parsed every
chunk's JSON, or ran in the gateway's event loop, would be the bottleneck
and would blur what is measured. So this client:

  - runs as C{python -m bench.loadgen JOB.json RESULT.json}, started by the
    harness, which reads the gateway's and the emulator's CPU from C{/proc};
  - uses asyncio protocols (no streams layer, no HTTP library), writes
    pre-built request bytes, undoes chunked transfer coding and only splits
    the body on C{b"\\n\\n"} (SSE) or C{b"\\n"} (NDJSON) to time-stamp frame
    arrivals; one time stamp per read, shared by the frames of that read;
  - keeps arrival times in C{array("d")} and does all statistics after the
    measurement, in L{bench.stats}.

The HTTP framing helpers here (response head, chunked decoding, frame
counting) are pure and tested in C{tests/test_bench.py}.

Time is C{time.monotonic()}, which on Linux is C{CLOCK_MONOTONIC}, the same
clock in every process: the harness places the instants this process
reports (all streams open, first stream done) on its own C{/proc} samples.

TLS: when the job names a C{cafile}, the server certificate is verified
against it (the gateway's self-signed development certificate) with
C{server_hostname}; without one, verification is off (loopback only).
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import ssl
import sys
import time
from array import array
from typing import Any, Dict, List, Optional, Tuple

from bench.stats import StreamRecord, analyze_streams, summarize_ms

clock = time.monotonic

#: Separators of the two streaming framings.
SEPARATORS = {"sse": b"\n\n", "ndjson": b"\n"}

#: How much of a body's beginning and end a record keeps, to check the first
#: and last frames (role chunk, C{[DONE]}, C{"done":true}) after the run.
SAMPLE_BYTES = 512


class ProtocolError(Exception):
    """
    The server sent something that is not HTTP/1.1 as this client knows it.
    """


# -- pure parts: framing ---------------------------------------------------


def parse_response_head(head: bytes) -> Tuple[int, Dict[str, str]]:
    """
    Parse a response head (status line and header lines, without the blank
    line that ends it).

    @return: the status code and the headers, names lower-cased; a repeated
        header keeps its last value.
    @raise ProtocolError: when the status line is not C{HTTP/1.x NNN ...}.
    """
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ProtocolError("bad status line %r" % (lines[0][:80],))
    try:
        status = int(parts[1])
    except ValueError:
        raise ProtocolError("bad status line %r" % (lines[0][:80],))
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return status, headers


class ChunkedDecoder:
    """
    Undo HTTP/1.1 chunked transfer coding incrementally: feed it whatever
    the socket delivered, get the body bytes back.

    @ivar done: the last chunk and the (empty) trailer were seen.
    """

    def __init__(self) -> None:
        self._pending = b""
        self._left = 0
        self._crlf = 0
        self._trailer = False
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """
        @return: the body bytes contained in C{data} (possibly empty).
        @raise ProtocolError: on a malformed chunk size line.
        """
        if self._pending:
            data = self._pending + data
            self._pending = b""
        out: List[bytes] = []
        pos = 0
        end = len(data)
        while pos < end and not self.done:
            if self._left:
                take = self._left if self._left < end - pos else end - pos
                out.append(data[pos:pos + take])
                pos += take
                self._left -= take
                if not self._left:
                    self._crlf = 2
                continue
            if self._crlf:
                skip = self._crlf if self._crlf < end - pos else end - pos
                pos += skip
                self._crlf -= skip
                continue
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                self._pending = data[pos:]
                if len(self._pending) > 4096:
                    raise ProtocolError("chunk size line too long")
                break
            line = data[pos:eol]
            pos = eol + 2
            if self._trailer:
                if not line:
                    self.done = True
                continue
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError("bad chunk size line %r" % (line[:40],))
            if size:
                self._left = size
            else:
                self._trailer = True
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)


class IdentityDecoder:
    """
    A body with a C{Content-Length} (or, with L{None}, one that ends when
    the connection closes); same interface as L{ChunkedDecoder}.
    """

    def __init__(self, length: Optional[int]) -> None:
        self._left = length
        self.done = length == 0

    def feed(self, data: bytes) -> bytes:
        if self._left is None:
            return data
        if len(data) >= self._left:
            data = data[:self._left]
            self._left = 0
            self.done = True
            return data
        self._left -= len(data)
        return data


def body_decoder(headers: Dict[str, str]) -> Any:
    """
    The decoder a response's headers call for.
    """
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return ChunkedDecoder()
    length = headers.get("content-length")
    return IdentityDecoder(int(length) if length is not None else None)


class FrameCounter:
    """
    Count frames (SSE events, NDJSON lines) in a body delivered in pieces,
    without parsing them: a frame ends at each separator, including one
    split across two pieces.

    @ivar frames: frames completed so far.
    @ivar head: the first L{SAMPLE_BYTES} of the body.
    """

    def __init__(self, separator: bytes) -> None:
        self._sep = separator
        self._keep = len(separator) - 1
        self._carry = b""
        self._tail = b""
        self.frames = 0
        self.head = b""

    def feed(self, payload: bytes) -> int:
        """
        @return: how many frames C{payload} completed.
        """
        if len(self.head) < SAMPLE_BYTES:
            self.head = (self.head + payload)[:SAMPLE_BYTES]
        if len(payload) >= SAMPLE_BYTES:
            self._tail = payload
        else:
            self._tail = (self._tail + payload)[-SAMPLE_BYTES:]
        sep = self._sep
        if self._keep:
            joined = self._carry + payload if self._carry else payload
            n = joined.count(sep)
            after = joined[joined.rfind(sep) + len(sep):] if n else joined
            self._carry = after[-self._keep:]
        else:
            n = payload.count(sep)
        self.frames += n
        return n

    @property
    def tail(self) -> bytes:
        """
        The last L{SAMPLE_BYTES} of the body.
        """
        return self._tail[-SAMPLE_BYTES:]


# -- the client ------------------------------------------------------------


def make_ssl_context(tls: Optional[Dict[str, Any]]) -> Optional[ssl.SSLContext]:
    """
    The client TLS context for a job's C{tls} section (L{None}: plain TCP).
    """
    if not tls:
        return None
    cafile = tls.get("cafile")
    if cafile:
        ctx = ssl.create_default_context(cafile=cafile)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def open_connection(loop: Any, factory: Any, job: Dict[str, Any],
                          ctx: Optional[ssl.SSLContext], rcvbuf: int = 0) -> Any:
    """
    Connect one client protocol (TCP, then TLS when C{ctx} is set).
    C{rcvbuf} shrinks the socket's receive buffer (set before connecting so
    the TCP window follows) for the slow-reader check.
    """
    host, port = job["host"], job["port"]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        timeout = job.get("connect_timeout", 20.0)
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
        kwargs: Dict[str, Any] = {"sock": sock}
        if ctx is not None:
            kwargs.update(ssl=ctx, server_hostname=(job.get("tls") or {}).get("server_hostname"),
                          ssl_handshake_timeout=timeout)
        _, protocol = await asyncio.wait_for(loop.create_connection(factory, **kwargs), timeout)
    except BaseException:
        sock.close()
        raise
    return protocol


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class StreamClient(asyncio.Protocol):
    """
    One streamed request on its own connection.
    """

    def __init__(self, separator: bytes, loop: Any) -> None:
        self.record = StreamRecord()
        self.finished = loop.create_future()
        self._counter = FrameCounter(separator)
        self._buffer = b""
        self._decoder: Any = None
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def send(self, request: bytes) -> None:
        self.record.sent = clock()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        now = clock()
        record = self.record
        if self._decoder is None:
            if not record.first_byte:
                record.first_byte = now
            data = self._buffer + data if self._buffer else data
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self._buffer = data
                if len(data) > 65536:
                    self._fail("response head too long")
                return
            self._buffer = b""
            try:
                record.status, headers = parse_response_head(data[:end])
            except ProtocolError as e:
                self._fail(str(e))
                return
            self._decoder = body_decoder(headers)
            data = data[end + 4:]
            if not data and not self._decoder.done:
                return
        try:
            payload = self._decoder.feed(data)
        except ProtocolError as e:
            self._fail(str(e))
            return
        if payload:
            record.bytes += len(payload)
            n = self._counter.feed(payload)
            if n:
                record.times.append(now)
                record.counts.append(n)
        if self._decoder.done:
            record.ended = True
            self._close()

    def _fail(self, why: str) -> None:
        if self.record.error is None:
            self.record.error = why
        self._close()

    def _close(self) -> None:
        self.record.head = self._counter.head
        self.record.tail = self._counter.tail
        if self.transport is not None:
            self.transport.close()
        if not self.finished.done():
            self.finished.set_result(None)

    def abort(self, why: str) -> None:
        """
        Give up on this stream (the run's deadline passed).
        """
        if not self.finished.done():
            self.record.error = why
            self.record.head = self._counter.head
            self.record.tail = self._counter.tail
            if self.transport is not None:
                self.transport.abort()
            self.finished.set_result(None)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if isinstance(self._decoder, IdentityDecoder) and self._decoder._left is None:
            self.record.ended = True
        if not self.record.ended and self.record.error is None:
            self.record.error = "connection closed before the end of the body"
        self.record.head = self._counter.head
        self.record.tail = self._counter.tail
        if not self.finished.done():
            self.finished.set_result(None)


async def run_stream_job(job: Dict[str, Any]) -> Dict[str, Any]:
    """
    Open C{streams} connections, send one streamed request on each (after
    every connection is up; spread evenly over C{ramp} seconds, or all at
    once without one), optionally stop reading for
    C{hold} seconds, and collect every frame until all streams end or
    C{timeout} passes.
    """
    loop = asyncio.get_running_loop()
    separator = SEPARATORS[job["framing"]]
    request = job["request"].encode("latin-1")
    ctx = make_ssl_context(job.get("tls"))
    count = job["streams"]
    limit = asyncio.Semaphore(job.get("connect_concurrency", 64))
    rcvbuf = job.get("rcvbuf", 0)
    hold = job.get("hold", 0.0)
    connect_errors: Dict[str, int] = {}

    async def connect_one() -> Optional[StreamClient]:
        async with limit:
            try:
                return await open_connection(
                    loop, lambda: StreamClient(separator, loop), job, ctx, rcvbuf)
            except Exception as e:
                key = "%s: %s" % (type(e).__name__, e)
                connect_errors[key[:200]] = connect_errors.get(key[:200], 0) + 1
                return None

    t_connect = clock()
    opened = await asyncio.gather(*(connect_one() for _ in range(count)))
    clients = [c for c in opened if c is not None]
    t_connected = clock()
    cpu0 = cpu_seconds()
    ramp = job.get("ramp", 0.0)
    if ramp > 0 and len(clients) > 1:
        # Spread the requests evenly over the ramp, as independent users
        # would arrive, rather than one burst that measures queueing.
        step = ramp / len(clients)
        start = clock()
        for i, client in enumerate(clients):
            delay = start + i * step - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            client.send(request)
    else:
        for client in clients:
            client.send(request)
    t_sent = clock()
    t_resumed = None
    if hold > 0:
        for client in clients:
            if not client.finished.done():
                client.transport.pause_reading()
        await asyncio.sleep(hold)
        t_resumed = clock()
        for client in clients:
            if not client.finished.done():
                client.transport.resume_reading()
    pending = [c.finished for c in clients if not c.finished.done()]
    if pending:
        await asyncio.wait(pending, timeout=max(1.0, job["timeout"] - (clock() - t_sent)))
    timed_out = 0
    for client in clients:
        if not client.finished.done():
            timed_out += 1
            client.abort("timed out after %.0f s" % (job["timeout"],))
    t_end = clock()
    cpu1 = cpu_seconds()
    await asyncio.sleep(0)
    records = [c.record for c in clients]
    done_marker = job.get("done_marker", "").encode("utf-8")
    analysis = analyze_streams(
        records, job["rate"], job["tokens"], job["leading"], job["trailing"], done_marker,
        count, bucket=job.get("bucket", 0.25), origin=t_connected)
    firsts = [r.first_byte for r in records if r.first_byte]
    finishes = [r.times[-1] for r in records if len(r.times)]
    analysis.update({
        "connect_errors": connect_errors,
        "timed_out": timed_out,
        "t_connect": t_connect,
        "t_connected": t_connected,
        "t_sent": t_sent,
        "t_all_first_byte": max(firsts) if len(firsts) == len(records) and firsts else None,
        "t_first_finished": min(finishes) if finishes else None,
        "t_resumed": t_resumed,
        "t_end": t_end,
        "connect_seconds": round(t_connected - t_connect, 3),
        "loadgen_cpu_s": round(cpu1 - cpu0, 3),
    })
    return analysis


class RequestClient(asyncio.Protocol):
    """
    One keep-alive connection sending requests back to back.
    """

    def __init__(self, run: "RequestRun") -> None:
        self._run = run
        self.transport: Any = None
        self.idle = run.loop.create_future()
        self.dead = False
        self._buffer = b""
        self._decoder: Any = None
        self._status = 0
        self._sent = 0.0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def send(self) -> None:
        if self.idle.done():
            self.idle = self._run.loop.create_future()
        self._buffer = b""
        self._decoder = None
        self._sent = clock()
        self.transport.write(self._run.request)

    def data_received(self, data: bytes) -> None:
        if self._decoder is None:
            data = self._buffer + data if self._buffer else data
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self._buffer = data
                return
            self._buffer = b""
            try:
                self._status, headers = parse_response_head(data[:end])
            except ProtocolError as e:
                self._die(str(e))
                return
            self._decoder = body_decoder(headers)
            if headers.get("connection", "").lower() == "close":
                self._run.error("server closed the keep-alive connection")
            data = data[end + 4:]
        try:
            self._decoder.feed(data)
        except ProtocolError as e:
            self._die(str(e))
            return
        if self._decoder.done:
            now = clock()
            self._decoder = None
            if self._run.completed(self, now - self._sent, self._status):
                self.send()
            elif not self.idle.done():
                self.idle.set_result(None)

    def _die(self, why: str) -> None:
        self._run.error(why)
        self.dead = True
        if self.transport is not None:
            self.transport.abort()
        if not self.idle.done():
            self.idle.set_result(None)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if not self.dead:
            self.dead = True
            if self._decoder is not None or not self.idle.done():
                self._run.error("connection lost: %s" % (exc or "closed by the server"))
        if not self.idle.done():
            self.idle.set_result(None)


class RequestRun:
    """
    The shared state of a request run: the deadline, the budget and what
    was recorded.
    """

    def __init__(self, loop: Any, request: bytes, max_requests: int) -> None:
        self.loop = loop
        self.request = request
        self.recording = False
        self.deadline = 0.0
        self.budget = max_requests
        self.latencies = array("d")
        self.statuses: Dict[str, int] = {}
        self.errors: Dict[str, int] = {}

    def completed(self, client: RequestClient, latency: float, status: int) -> bool:
        """
        Record one response; C{True} when the client should send again.
        """
        if self.recording:
            self.latencies.append(latency)
            key = str(status)
            self.statuses[key] = self.statuses.get(key, 0) + 1
        if clock() >= self.deadline or self.budget <= 0 or client.dead:
            return False
        self.budget -= 1
        return True

    def error(self, why: str) -> None:
        key = why[:200]
        self.errors[key] = self.errors.get(key, 0) + 1


async def run_requests_job(job: Dict[str, Any]) -> Dict[str, Any]:
    """
    C{concurrency} keep-alive connections, each sending the request back to
    back: C{warmup} seconds unrecorded, then C{duration} seconds recorded
    (or C{max_requests}, whichever ends first).
    """
    loop = asyncio.get_running_loop()
    run = RequestRun(loop, job["request"].encode("latin-1"), job.get("max_requests", 200_000))
    ctx = make_ssl_context(job.get("tls"))
    clients: List[RequestClient] = []
    for _ in range(job["concurrency"]):
        try:
            clients.append(await open_connection(loop, lambda: RequestClient(run), job, ctx))
        except Exception as e:
            run.error("connect: %s: %s" % (type(e).__name__, e))
    guard = job["duration"] + job.get("warmup", 0.0) + 30.0

    async def phase(seconds: float) -> None:
        run.deadline = clock() + seconds
        live = [c for c in clients if not c.dead]
        for client in live:
            client.send()
        idle = [c.idle for c in live]
        if idle:
            await asyncio.wait(idle, timeout=seconds + 30.0)

    if job.get("warmup", 0.0) > 0:
        await phase(job["warmup"])
    for client in clients:
        if not client.idle.done():
            client._die("no answer within %.0f s" % (guard,))
    run.recording = True
    cpu0 = cpu_seconds()
    t0 = clock()
    await phase(job["duration"])
    t1 = clock()
    cpu1 = cpu_seconds()
    for client in clients:
        if not client.idle.done():
            client._die("no answer within %.0f s" % (guard,))
        elif client.transport is not None:
            client.transport.close()
    done = len(run.latencies)
    elapsed = t1 - t0
    ok = run.statuses.get("200", 0)
    return {
        "tool": "python",
        "concurrency": job["concurrency"],
        "connections": len(clients),
        "completed": done,
        "ok": ok,
        "statuses": run.statuses,
        "errors": run.errors,
        "elapsed_s": round(elapsed, 3),
        "rps": round(done / elapsed, 1) if elapsed > 0 else None,
        "latency_ms": summarize_ms(run.latencies),
        "t_start": t0,
        "t_end": t1,
        "loadgen_cpu_s": round(cpu1 - cpu0, 3),
    }


class ChurnClient(RequestClient):
    """
    One keep-alive connection opening stream after stream: each streamed
    response is read to its end, its frames counted, and it is complete
    only with status 200 and the done marker at its end.
    """

    def __init__(self, run: "ChurnRun") -> None:
        super().__init__(run)
        self._counter: Optional[FrameCounter] = None

    def send(self) -> None:
        self._counter = FrameCounter(self._run.separator)
        super().send()

    def data_received(self, data: bytes) -> None:
        run = self._run
        if self._decoder is None:
            data = self._buffer + data if self._buffer else data
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self._buffer = data
                return
            self._buffer = b""
            try:
                self._status, headers = parse_response_head(data[:end])
            except ProtocolError as e:
                self._die(str(e))
                return
            self._decoder = body_decoder(headers)
            self._closing = headers.get("connection", "").lower() == "close"
            data = data[end + 4:]
        try:
            payload = self._decoder.feed(data)
        except ProtocolError as e:
            self._die(str(e))
            return
        counter = self._counter
        if payload and counter is not None:
            n = counter.feed(payload)
            if n and run.recording:
                run.frames += n
        if self._decoder.done:
            now = clock()
            self._decoder = None
            complete = self._status == 200 and counter is not None and \
                run.done_marker in counter.tail
            if run.recording and self._status == 200 and not complete:
                run.incomplete += 1
            again = run.completed(self, now - self._sent, self._status)
            if getattr(self, "_closing", False):
                self.dead = True
                if self.transport is not None:
                    self.transport.close()
                if not self.idle.done():
                    self.idle.set_result(None)
            elif again:
                self.send()
            elif not self.idle.done():
                self.idle.set_result(None)


class ChurnRun(RequestRun):
    """
    A churn run: a request run whose responses are streams.
    """

    def __init__(self, loop: Any, request: bytes, separator: bytes,
                 done_marker: bytes) -> None:
        super().__init__(loop, request, 10 ** 9)
        self.separator = separator
        self.done_marker = done_marker
        self.frames = 0
        self.incomplete = 0
        self.connections = 0


async def run_churn_job(job: Dict[str, Any]) -> Dict[str, Any]:
    """
    C{concurrency} clients, each opening stream after stream on a
    keep-alive connection (a new connection when the server closes one):
    C{warmup} seconds unrecorded, then C{duration} seconds recorded. The
    frames of every stream are counted (a stream still running at the end
    of the window is not waited for).
    """
    loop = asyncio.get_running_loop()
    run = ChurnRun(loop, job["request"].encode("latin-1"), SEPARATORS[job["framing"]],
                   job.get("done_marker", "").encode("utf-8"))
    ctx = make_ssl_context(job.get("tls"))
    live: List[ChurnClient] = []

    async def slot() -> None:
        while clock() < run.deadline:
            try:
                client = await open_connection(loop, lambda: ChurnClient(run), job, ctx)
            except Exception as e:
                run.error("connect: %s: %s" % (type(e).__name__, e))
                await asyncio.sleep(0.05)
                continue
            run.connections += 1
            live.append(client)
            client.send()
            await client.idle
            if not client.dead:
                return

    grace = job.get("grace", 10.0)

    async def phase(seconds: float) -> int:
        # Streams still running `grace` seconds after the deadline (a slow
        # front) are cut and counted as unfinished.
        run.deadline = clock() + seconds
        tasks = [asyncio.ensure_future(slot()) for _ in range(job["concurrency"])]
        await asyncio.wait(tasks, timeout=seconds + grace)
        unfinished = 0
        for client in live:
            if not client.idle.done():
                unfinished += 1
                client.dead = True
                if client.transport is not None:
                    client.transport.abort()
                client.idle.set_result(None)
        for task in tasks:
            task.cancel()
        return unfinished

    if job.get("warmup", 0.0) > 0:
        await phase(job["warmup"])
    for client in live:
        if client.transport is not None:
            client.transport.close()
    live.clear()
    run.recording = True
    run.connections = 0
    cpu0 = cpu_seconds()
    t0 = clock()
    unfinished = await phase(job["duration"])
    t1 = clock()
    cpu1 = cpu_seconds()
    for client in live:
        if client.transport is not None:
            client.transport.close()
    elapsed = t1 - t0
    done = len(run.latencies)
    ok = run.statuses.get("200", 0) - run.incomplete
    failed = done - ok
    return {
        "tool": "python",
        "concurrency": job["concurrency"],
        "streams": done,
        "ok": ok,
        "failed": failed,
        "incomplete": run.incomplete,
        "unfinished": unfinished,
        "statuses": run.statuses,
        "errors": run.errors,
        "frames": run.frames,
        "connections": run.connections,
        "elapsed_s": round(elapsed, 3),
        "frames_per_s": round(run.frames / elapsed, 1) if elapsed > 0 else None,
        "streams_per_s": round(done / elapsed, 1) if elapsed > 0 else None,
        "latency_ms": summarize_ms(run.latencies),
        "t_start": t0,
        "t_end": t1,
        "loadgen_cpu_s": round(cpu1 - cpu0, 3),
    }


async def run_burst_job(job: Dict[str, Any]) -> Dict[str, Any]:
    """
    C{clients} new clients at once, each opening its own connection (TCP
    and TLS) and sending one request: time to first byte counted from the
    connect, so the handshake is included, and the time to the whole answer.
    """
    loop = asyncio.get_running_loop()
    request = job["request"].encode("latin-1")
    ctx = make_ssl_context(job.get("tls"))
    separator = SEPARATORS[job["framing"]]
    ttfb = array("d")
    total = array("d")
    errors: Dict[str, int] = {}
    statuses: Dict[str, int] = {}

    async def one() -> None:
        t0 = clock()
        try:
            client = await open_connection(loop, lambda: StreamClient(separator, loop), job, ctx)
        except Exception as e:
            key = ("connect: %s: %s" % (type(e).__name__, e))[:200]
            errors[key] = errors.get(key, 0) + 1
            return
        client.send(request)
        try:
            await asyncio.wait_for(client.finished, job.get("timeout", 60.0))
        except asyncio.TimeoutError:
            client.abort("timed out")
        record = client.record
        key = str(record.status)
        statuses[key] = statuses.get(key, 0) + 1
        if record.error:
            errors[record.error[:200]] = errors.get(record.error[:200], 0) + 1
        elif record.first_byte:
            ttfb.append(record.first_byte - t0)
            total.append((record.times[-1] if len(record.times) else record.first_byte) - t0)

    t_start = clock()
    await asyncio.gather(*(one() for _ in range(job["clients"])))
    t_end = clock()
    return {
        "clients": job["clients"],
        "ok": len(ttfb),
        "statuses": statuses,
        "errors": errors,
        "ttfb_ms": summarize_ms(ttfb),
        "total_ms": summarize_ms(total),
        "t_start": t_start,
        "t_end": t_end,
    }


def raise_fd_limit() -> None:
    """
    Lift the soft open-files limit to the hard one (a thousand streams).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def main(argv: Optional[List[str]] = None) -> int:
    """
    C{python -m bench.loadgen JOB.json RESULT.json}: run one job, write its
    result; exit status 0 even when requests failed (the result says so).
    """
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m bench.loadgen JOB.json RESULT.json", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        job = json.load(f)
    raise_fd_limit()
    runner = {"stream": run_stream_job, "requests": run_requests_job,
              "churn": run_churn_job, "burst": run_burst_job}[job["kind"]]
    result = asyncio.run(runner(job))
    with open(argv[1], "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
