# -*- test-case-name: tests.test_bench -*-
"""
C{python -m bench.exhaustion}: connection exhaustion on loopback (issue 9,
item 2), measured against a real gateway process.

Two measurements:
  - B{slot hold times}: how long the gateway keeps a connection that does
    a bare TCP connect, stalls in the TLS handshake, or trickles its
    request body one byte every two seconds, before closing it (capped at
    C{--hold-cap} seconds: "held" means it was still open then);
  - B{lockout}: sixteen hostile addresses (127.0.0.2 to 127.0.0.17), each
    within C{max_per_ip}, hold idle and trickling connections -- the whole
    C{max_total} -- and reopen each one that is closed; a client with a
    valid key from 127.0.0.1 then sends requests, each on a new
    connection. Reported: how many were served, and their latencies.

The same script runs against an older checkout (put it in that checkout's
C{bench/} and run it there): settings that checkout does not know are
left out, so the "before" figure is the old code at its defaults.

Nothing here imports Twisted: plain sockets and threads against the
processes of L{bench.processes}.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

from bench.processes import Stack

ATTACKERS = ["127.0.0.%d" % (i,) for i in range(2, 18)]
PER_IP = 4
CHAT = json.dumps({"model": "qwen3:8b", "messages": [{"role": "user", "content": "Hi"}]})
TRICKLE_HEAD = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
#: The first bytes of a TLS ClientHello, then nothing: a stalled handshake.
PARTIAL_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


def _insecure() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _wait_closed(sock: Any, deadline: float, trickle: bool = False) -> bool:
    """
    Block until the server closes C{sock} (C{True}) or C{deadline} passes
    (C{False}); with C{trickle}, send one body byte every two seconds.
    """
    next_byte = time.monotonic() + 2.0
    while True:
        now = time.monotonic()
        if now >= deadline:
            return False
        sock.settimeout(max(0.05, min(deadline, next_byte if trickle else deadline) - now))
        try:
            if not sock.recv(4096):
                return True
        except socket.timeout:
            pass
        except (OSError, ssl.SSLError):
            return True
        if trickle and time.monotonic() >= next_byte:
            next_byte += 2.0
            try:
                sock.sendall(b" ")
            except (OSError, ssl.SSLError):
                return True


def hold_time(kind: str, port: int, cap: float, source: str = "127.0.0.2") -> Optional[float]:
    """
    Seconds until the gateway closed one connection of C{kind} (C{"bare"},
    C{"handshake"}, C{"trickle"}), or L{None} if still open after C{cap}.
    """
    started = time.monotonic()
    deadline = started + cap
    raw = socket.create_connection(("127.0.0.1", port), timeout=10,
                                   source_address=(source, 0))
    try:
        if kind == "bare":
            closed = _wait_closed(raw, deadline)
        elif kind == "handshake":
            raw.sendall(PARTIAL_HELLO)
            closed = _wait_closed(raw, deadline)
        else:
            conn = _insecure().wrap_socket(raw, server_hostname="localhost")
            conn.sendall(TRICKLE_HEAD)
            closed = _wait_closed(conn, deadline, trickle=True)
    finally:
        raw.close()
    return time.monotonic() - started if closed else None


class Attacker(threading.Thread):
    """
    One hostile connection slot from C{source}: idle or trickling, reopened
    as soon as the gateway closes it, until L{stop}.
    """

    def __init__(self, source: str, port: int, idle: bool) -> None:
        super().__init__(daemon=True)
        self.source, self.port, self.idle = source, port, idle
        self.running = True
        self.opened = 0

    def run(self) -> None:
        while self.running:
            try:
                raw = socket.create_connection(("127.0.0.1", self.port), timeout=5,
                                               source_address=(self.source, 0))
            except OSError:
                time.sleep(0.1)
                continue
            self.opened += 1
            try:
                if self.idle:
                    sock: Any = raw
                else:
                    sock = _insecure().wrap_socket(raw, server_hostname="localhost")
                    sock.sendall(TRICKLE_HEAD)
                while self.running and not _wait_closed(sock, time.monotonic() + 0.5,
                                                        trickle=not self.idle):
                    pass
            except (OSError, ssl.SSLError):
                pass
            finally:
                raw.close()
            time.sleep(0.05)

    def stop(self) -> None:
        self.running = False


def served(port: int, cafile: str, key: str, timeout: float = 10.0) -> Dict[str, Any]:
    """
    One chat request from 127.0.0.1 on a new connection.
    """
    started = time.monotonic()
    context = ssl.create_default_context(cafile=cafile)
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout,
                                             context=context)
    try:
        connection.request("POST", "/v1/chat/completions", body=CHAT, headers={
            "Authorization": "Bearer " + key, "Content-Type": "application/json"})
        response = connection.getresponse()
        body = response.read()
        status: Any = response.status
        detail = body[:120].decode("utf-8", "replace") if status != 200 else ""
    except Exception as e:
        status, detail = "error", "%s: %s" % (type(e).__name__, e)
    finally:
        connection.close()
    return {"status": status, "seconds": time.monotonic() - started, "detail": detail}


def _add_key(path: str) -> str:
    try:
        from qwen_twist.gate.keyfile import add_key
    except ImportError:
        from qwen_twist.gate.keys import add_key  # type: ignore[attr-defined,no-redef]
    return add_key(path, "bench", now=time.time())


def run(requests: int, hold_cap: float, settle: float) -> Dict[str, Any]:
    results: Dict[str, Any] = {}
    keys_file = os.path.join(tempfile.mkdtemp(prefix="qwengate-exhaustion-"), "keys.yaml")
    key = _add_key(keys_file)
    overrides = {
        "auth": {"required": True, "keys_file": keys_file},
        "connections": {"max_total": len(ATTACKERS) * PER_IP, "max_per_ip": PER_IP,
                        "rate": 10.0, "burst": 20},
    }
    with Stack(gateway_overrides=overrides) as stack:
        gateway = stack.gateway()
        port, cafile = gateway.port, gateway.cafile
        holds: Dict[str, Optional[float]] = {}

        def measure(kind: str) -> None:
            holds[kind] = hold_time(kind, port, hold_cap)

        threads = [threading.Thread(target=measure, args=(kind,), daemon=True)
                   for kind in ("bare", "handshake", "trickle")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        results["hold_seconds"] = holds
        attackers = [Attacker(source, port, i % 2 == 0)
                     for source in ATTACKERS for i in range(PER_IP)]
        for attacker in attackers:
            attacker.start()
        time.sleep(settle)
        calls = [served(port, cafile, key) for _ in range(requests)]
        for attacker in attackers:
            attacker.stop()
        ok = [c["seconds"] for c in calls if c["status"] == 200]
        results["lockout"] = {
            "requests": requests,
            "served": len(ok),
            "p50_seconds": statistics.median(ok) if ok else None,
            "max_seconds": max(ok) if ok else None,
            "failures": sorted({"%s %s" % (c["status"], c["detail"]) for c in calls
                                if c["status"] != 200})[:3],
            "attacker_connections_opened": sum(a.opened for a in attackers),
        }
    return results


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.exhaustion",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10,
                        help="requests of the client with a key (default: %(default)s)")
    parser.add_argument("--hold-cap", type=float, default=75.0,
                        help="seconds after which a held connection counts as never "
                             "closed (default: %(default)s)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds the attackers get to fill the gateway "
                             "(default: %(default)s)")
    options = parser.parse_args(argv)
    results = run(options.requests, options.hold_cap, options.settle)
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
