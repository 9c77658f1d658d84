# -*- test-case-name: tests.test_bench -*-
"""
C{python -m bench limiter}: what the rate limiter costs per request, with
the counters in this process (C{limits.store: memory}) and in a Redis on
loopback (C{limits.store: redis://...}).

Why a focused bench rather than a gateway front: the limiter's cost is a
few microseconds in memory and one network round trip per bucket with
Redis, far below the noise of a whole HTTPS request through the gateway;
measured alone it is a stable figure to compare. It drives the real
L{qwen_twist.gate.hooks.RateLimitHook} (per-IP bucket, per-key bucket and
token budget: three takes, then the budget's settle on release), exactly
as a request does, on a real reactor; Redis is a C{redis-server} started
here on a free loopback port with no persistence (Debian package
C{redis-server}).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any, Dict, List

from bench.report import environment

DEFAULT_REQUESTS = 3000
CONCURRENCY = 32


class _Request:
    """
    Just enough of a twisted.web request for the hook (headers).
    """

    def setHeader(self, name: bytes, value: bytes) -> None:
        pass


class _Plan:
    max_tokens = 100
    prompt_chars = 400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(directory: str) -> tuple:
    """
    A redis-server on loopback; C{(process, url)}.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found: apt-get install redis-server")
    port = _free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", directory],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, "redis://127.0.0.1:%d" % (port,)
        except OSError:
            time.sleep(0.02)
    process.kill()
    raise RuntimeError("redis-server did not start")


def _config(store: str) -> Any:
    from qwen_twist import config as configmod

    return configmod.build(configmod.Config, {
        "tls": {"self_signed": True},
        "limits": {"store": store, "redis": {"command_timeout": 2.0}},
        "rate_limits": {"per_ip_rate": 1e6, "per_ip_burst": 10 ** 6,
                        "per_key_requests": 10 ** 7, "per_key_window": 1.0,
                        "per_key_tokens_per_minute": 10 ** 12},
    })


async def _measure(reactor: Any, store_url: str, requests: int) -> Dict[str, Any]:
    from twisted.internet import defer, task

    from qwen_twist.context import CallContext
    from qwen_twist.gate.hooks import RateLimitHook
    from qwen_twist.store.factory import build_store

    config = _config(store_url)
    store = build_store(config, reactor)
    store.start()
    try:
        while store.state not in ("memory", "up"):
            await task.deferLater(reactor, 0.01, lambda: None)
        hook = RateLimitHook(config, reactor, store)
        request, plan = _Request(), _Plan()

        async def one(i: int) -> float:
            ctx = CallContext("r%d" % (i,), "chat", "POST", "/v1/chat/completions",
                              "192.0.2.%d" % (i % 200,), 0.0)
            ctx.identity = "key:user%d" % (i % 50,)
            began = time.perf_counter()
            await hook.admit(request, ctx, plan)
            ctx.usage = {"total_tokens": 150}
            hook.release(ctx)
            return time.perf_counter() - began

        for i in range(min(500, requests)):
            await one(i)
        latencies = [await one(i) for i in range(requests)]
        began = time.perf_counter()
        for start in range(0, requests, CONCURRENCY):
            await defer.gatherResults([defer.Deferred.fromCoroutine(one(i))
                                       for i in range(start, min(requests, start + CONCURRENCY))])
        throughput = requests / (time.perf_counter() - began)
    finally:
        await defer.maybeDeferred(store.stop)
    latencies.sort()
    return {
        "store": "memory" if store_url == "memory" else "redis (loopback)",
        "median_us": latencies[len(latencies) // 2] * 1e6,
        "p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
        "per_second_c%d" % (CONCURRENCY,): throughput,
        "fallbacks": getattr(store, "fallbacks", 0),
    }


def table(rows: List[Dict[str, Any]]) -> str:
    key = "per_second_c%d" % (CONCURRENCY,)
    lines = ["Limiter per request (3 bucket takes + budget settle, real RateLimitHook)",
             "%-18s %12s %12s %16s" % ("store", "median c=1", "p99 c=1", "decisions/s c=%d"
                                       % (CONCURRENCY,))]
    for row in rows:
        lines.append("%-18s %10.0fus %10.0fus %16.0f" % (
            row["store"], row["median_us"], row["p99_us"], row[key]))
    return "\n".join(lines)


def run(requests: int = DEFAULT_REQUESTS, log: Any = print) -> Dict[str, Any]:
    """
    Measure both stores in a fresh reactor; returns the figures and the
    table.
    """
    from twisted.internet import defer, reactor

    directory = tempfile.mkdtemp(prefix="qwengate-bench-redis-")
    process, url = start_redis(directory)
    rows: List[Dict[str, Any]] = []
    errors: List[Any] = []

    async def main() -> None:
        for store in ("memory", url):
            log("limiter: measuring %s ..." % ("memory" if store == "memory" else store,))
            rows.append(await _measure(reactor, store, requests))

    def done(result: Any) -> None:
        if hasattr(result, "value"):
            errors.append(result)
        reactor.stop()

    try:
        reactor.callWhenRunning(
            lambda: defer.Deferred.fromCoroutine(main()).addBoth(done))
        reactor.run(installSignalHandlers=False)
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(directory, ignore_errors=True)
    if errors:
        errors[0].raiseException()
    return {"command": "limiter", "requests": requests, "environment": environment(),
            "limiter": rows, "report": table(rows)}


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.limiter")
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS)
    options = parser.parse_args()
    results = run(options.requests)
    print(results["report"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
