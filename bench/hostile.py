# -*- test-case-name: tests.test_bench -*-
"""
Loopback reproductions of issue 9's denial-of-service findings, with the
figure each one is judged by. Run from a checkout (it measures that
checkout's gateway under twistd, against the emulator):

    python -m bench.hostile body-flood     # victim /health latency, 3 x 8 MiB bodies, no key
    python -m bench.hostile body-hold      # gateway RSS, 45 connections x (8 MiB - 1) held
    python -m bench.hostile greedy         # key B's wait while key A holds 4 unread streams
    python -m bench.hostile embeddings     # RSS growth and stall of one 1,300 x 4,096 request

Each prints one JSON line. The gateway runs with the reference defaults
except: API keys required (a keys file with keys A and B), bans off and no
per-IP request limit (so what is measured is the cost of the requests, not
the limiter that would also stop them).
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

from bench.processes import Emulator, Gateway, known_settings

MiB = 1024 * 1024


def _rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open("/proc/%d/status" % (pid,)) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class Setup:
    """
    Emulator + gateway with two keys.
    """

    def __init__(self, overrides: Dict[str, Any], script: Any = None) -> None:
        from qwen_twist.gate.keyfile import add_key

        self.workdir = Path(tempfile.mkdtemp(prefix="qwengate-hostile-"))
        keys = str(self.workdir / "keys.yaml")
        self.key_a = add_key(keys, "a", now=time.time())
        self.key_b = add_key(keys, "b", now=time.time())
        self.emulator = Emulator(self.workdir, sys.executable)
        self.emulator.start()
        if script is not None:
            self.emulator.set_script(script)
        config = {"auth": {"required": True, "keys_file": keys},
                  "bans": {"failures": 0}, "rate_limits": {"per_ip_rate": 0.0}}
        for name, values in overrides.items():
            config.setdefault(name, {}).update(values)
        self.gateway = Gateway(self.workdir, self.emulator.url, sys.executable)
        # Gateway() merged the bench overrides (no auth); put ours on top.
        merged = self.gateway.config
        for name, values in config.items():
            merged.setdefault(name, {}).update(values)
        # Settings an older checkout lacks are left out (before/after runs).
        from qwen_twist.config import Config
        merged = known_settings(merged, Config)
        self.gateway.config_path.write_text(json.dumps(merged, indent=2) + "\n", "utf-8")
        self.gateway.start()
        self.context = ssl.create_default_context(cafile=self.gateway.cafile)
        self.context.check_hostname = False

    def connect(self) -> ssl.SSLSocket:
        raw = socket.create_connection((self.gateway.host, self.gateway.port), timeout=30)
        return self.context.wrap_socket(raw)

    def close(self) -> None:
        self.gateway.stop()
        self.emulator.stop()


def _request(sock: ssl.SSLSocket, method: str, path: str, body: bytes = b"",
             headers: Dict[str, str] = None) -> bytes:
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: localhost"]
    for name, value in (headers or {}).items():
        lines.append("%s: %s" % (name, value))
    if body or method == "POST":
        lines.append("Content-Length: %d" % (len(body),))
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _read_response(sock: ssl.SSLSocket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head


class Victim(threading.Thread):
    """
    C{GET /health} in a loop on one kept-alive connection; latencies in ms.
    """

    def __init__(self, setup: Setup, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.setup = setup
        self.interval = interval
        self.latencies: List[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        sock = self.setup.connect()
        while not self.stop.is_set():
            started = time.monotonic()
            sock.sendall(_request(sock, "GET", "/health"))
            _read_response(sock)
            self.latencies.append((time.monotonic() - started) * 1000.0)
            time.sleep(self.interval)
        sock.close()

    def summary(self) -> Dict[str, float]:
        values = sorted(self.latencies)
        if not values:
            return {}
        return {"n": len(values), "p50_ms": round(statistics.median(values), 1),
                "p99_ms": round(values[int(len(values) * 0.99) - 1], 1),
                "max_ms": round(values[-1], 1)}


def body_flood(seconds: float = 15.0) -> Dict[str, Any]:
    """
    Three connections sending 8 MiB bodies without a key, back to back
    (reconnecting when the gateway closes), while a victim polls /health.
    """
    setup = Setup({})
    try:
        victim = Victim(setup)
        victim.start()
        time.sleep(2.0)
        baseline = victim.summary()
        victim.latencies.clear()
        stop = threading.Event()
        sent = [0]
        body = (b'{"model":"qwen3:8b","messages":[{"role":"user","content":"'
                + b"x" * (8 * MiB - 100) + b'"}]}')

        def attack() -> None:
            while not stop.is_set():
                try:
                    sock = setup.connect()
                    while not stop.is_set():
                        sock.sendall(_request(sock, "POST", "/v1/chat/completions", body))
                        sent[0] += 1
                        if not _read_response(sock):
                            break
                    sock.close()
                except (OSError, ssl.SSLError):
                    time.sleep(0.05)

        attackers = [threading.Thread(target=attack, daemon=True) for _ in range(3)]
        for thread in attackers:
            thread.start()
        time.sleep(seconds)
        stop.set()
        victim.stop.set()
        cpu = _cpu_seconds(setup.gateway.pid)
        return {"scenario": "body-flood", "baseline": baseline, "under_attack": victim.summary(),
                "bodies_sent": sent[0], "gateway_cpu_s": cpu}
    finally:
        setup.close()


def _cpu_seconds(pid: int) -> float:
    with open("/proc/%d/stat" % (pid,)) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


def body_hold(connections: int = 45) -> Dict[str, Any]:
    """
    45 connections each sending the head of an 8 MiB request without a key
    and 8 MiB - 1 bytes of its body, then holding it.
    """
    setup = Setup({})
    try:
        pid = setup.gateway.pid
        before = _rss_kib(pid)
        socks = []
        closed = 0
        head = _request(None, "POST", "/v1/chat/completions", b"")
        head = head.replace(b"Content-Length: 0", b"Content-Length: %d" % (8 * MiB,))
        chunk = b"x" * 65536
        for _ in range(connections):
            sock = setup.connect()
            sock.settimeout(5)
            sock.sendall(head)
            left = 8 * MiB - 1
            try:
                while left > 0:
                    part = chunk[:min(left, len(chunk))]
                    sock.sendall(part)
                    left -= len(part)
            except (OSError, ssl.SSLError):
                closed += 1
            socks.append(sock)
        time.sleep(2.0)
        after = _rss_kib(pid)
        for sock in socks:
            sock.close()
        return {"scenario": "body-hold", "connections": connections,
                "rss_before_mb": round(before / 1024, 1), "rss_after_mb": round(after / 1024, 1),
                "closed_by_gateway": closed}
    finally:
        setup.close()


STREAM_SCRIPT = {
    "default": {"tokens": 2000, "tokens_per_second": 20, "text": "word " * 2000},
}


def greedy(streams: int = 4, timeout: float = 40.0) -> Dict[str, Any]:
    """
    Key A opens C{streams} streams (slots: 4) and reads nothing; how long
    does key B wait for its answer?
    """
    setup = Setup({"admission": {"slots": 4}, "streaming": {"slow_reader_timeout": 10.0}},
                  STREAM_SCRIPT)
    try:
        body = json.dumps({"model": "qwen3:8b", "stream": True,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        held = []
        for _ in range(streams):
            sock = setup.connect()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(_request(sock, "POST", "/v1/chat/completions", body,
                                  {"Authorization": "Bearer " + setup.key_a,
                                   "Content-Type": "application/json"}))
            held.append(sock)
        time.sleep(3.0)
        small = json.dumps({"model": "qwen3:8b", "max_tokens": 5,
                            "messages": [{"role": "user", "content": "hi"}]}).encode()
        sock = setup.connect()
        sock.settimeout(timeout)
        started = time.monotonic()
        sock.sendall(_request(sock, "POST", "/v1/chat/completions", small,
                              {"Authorization": "Bearer " + setup.key_b,
                               "Content-Type": "application/json"}))
        try:
            head = _read_response(sock)
            status = head.split(b" ", 2)[1].decode()
        except socket.timeout:
            status = "timeout"
        waited = time.monotonic() - started
        for s in held + [sock]:
            s.close()
        return {"scenario": "greedy", "unread_streams_of_a": streams,
                "b_status": status, "b_wait_s": round(waited, 2)}
    finally:
        setup.close()


def embeddings(inputs: int = 1300, dimension: int = 4096) -> Dict[str, Any]:
    """
    One embeddings request of C{inputs} short texts to a C{dimension}-wide
    model: the gateway's RSS growth (peak) and the longest /health stall.
    """
    script = {"models": [{"name": "qwen3:8b", "capabilities": ["completion"]},
                         {"name": "big-embed:latest", "capabilities": ["embedding"],
                          "embedding_length": dimension}]}
    setup = Setup({}, script)
    try:
        pid = setup.gateway.pid
        victim = Victim(setup, interval=0.01)
        victim.start()
        time.sleep(1.5)
        before = _rss_kib(pid)
        peak_before = _rss_kib(pid, "VmHWM")
        victim.latencies.clear()
        body = json.dumps({"model": "big-embed", "encoding_format": "base64",
                           "input": ["text %d" % (i,) for i in range(inputs)]}).encode()
        sock = setup.connect()
        sock.settimeout(120)
        started = time.monotonic()
        sock.sendall(_request(sock, "POST", "/v1/embeddings", body,
                              {"Authorization": "Bearer " + setup.key_a,
                               "Content-Type": "application/json"}))
        head = _read_response(sock)
        elapsed = time.monotonic() - started
        time.sleep(0.5)
        victim.stop.set()
        victim.join(5)
        sock.close()
        return {"scenario": "embeddings", "inputs": inputs, "dimension": dimension,
                "status": head.split(b" ", 2)[1].decode() if head else "closed",
                "request_s": round(elapsed, 2),
                "rss_before_mb": round(before / 1024, 1),
                "rss_peak_mb": round(max(peak_before, _rss_kib(pid, "VmHWM")) / 1024, 1),
                "health_during": victim.summary()}
    finally:
        setup.close()


SCENARIOS = {"body-flood": body_flood, "body-hold": body_hold, "greedy": greedy,
             "embeddings": embeddings}


def main(argv: List[str]) -> int:
    if len(argv) != 1 or argv[0] not in SCENARIOS:
        sys.stderr.write("usage: python -m bench.hostile {%s}\n" % ("|".join(SCENARIOS),))
        return 2
    print(json.dumps(SCENARIOS[argv[0]]()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
