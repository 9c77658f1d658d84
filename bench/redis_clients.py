# -*- test-case-name: tests.test_bench -*-
"""
C{python3 -m bench.redis_clients}: why qwengate talks to Redis with its own
RESP client (L{qwen_twist.store.resp}) rather than C{redis.asyncio}.

Run it with Debian 12's own Python and packages (C{python3-twisted} 22.4,
C{python3-redis} 4.3.4, C{redis-server}): it times sequential C{PING} and
C{EVALSHA} round trips against a C{redis-server} on loopback, for the RESP
client on the default reactor (what twistd runs) and on Twisted's asyncio
reactor, and for C{redis.asyncio} through C{Deferred.fromFuture} on the
asyncio reactor (the only way twistd could use it).

Not part of C{python -m bench}: it needs C{python3-redis}, which qwengate
itself does not depend on.
"""

from __future__ import annotations

import sys
import tempfile
import time
from typing import Any, Callable

SAMPLES = 4000


def main() -> int:
    use_asyncio = len(sys.argv) > 1 and sys.argv[1] == "asyncio"
    if len(sys.argv) == 1:
        import subprocess

        for mode in ("default", "asyncio"):
            subprocess.run([sys.executable, "-m", "bench.redis_clients", mode], check=True)
        return 0
    if use_asyncio:
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    from twisted.internet import defer, reactor, task

    from bench.limiter import start_redis
    from qwen_twist.store.resp import RedisClient, Script, client_endpoint, parse_url

    directory = tempfile.TemporaryDirectory(prefix="qwengate-bench-redis-")
    process, url = start_redis(directory.name)

    async def timeit(name: str, call: Callable[[], Any]) -> None:
        for _ in range(300):
            await call()
        latencies = []
        for _ in range(SAMPLES):
            began = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - began)
        latencies.sort()
        print("%-40s median %4.0f us  p90 %4.0f us" % (
            name, latencies[SAMPLES // 2] * 1e6, latencies[int(SAMPLES * 0.9)] * 1e6))

    async def run() -> None:
        client = RedisClient(reactor, client_endpoint(reactor, parse_url(url), 2.0),
                             command_timeout=2.0)
        client.start()
        while not client.connected:
            await task.deferLater(reactor, 0.01, lambda: None)
        script = Script("return redis.call('INCR', KEYS[1])")
        where = "asyncio reactor" if use_asyncio else "default reactor"
        await timeit("resp.py PING (%s)" % (where,), lambda: client.execute(b"PING"))
        await timeit("resp.py EVALSHA (%s)" % (where,),
                     lambda: client.run_script(script, [b"k"], []))
        client.stop()
        if use_asyncio:
            import asyncio

            import redis.asyncio as aioredis

            def future(coroutine: Any) -> defer.Deferred:
                return defer.Deferred.fromFuture(asyncio.ensure_future(coroutine))

            other = aioredis.from_url(url)
            sha = await future(other.script_load(script.source))
            await timeit("redis.asyncio PING (fromFuture)", lambda: future(other.ping()))
            await timeit("redis.asyncio EVALSHA (fromFuture)",
                         lambda: future(other.evalsha(sha, 1, "k")))
            await future(other.close())

    def done(result: Any) -> None:
        if hasattr(result, "printTraceback"):
            result.printTraceback()
        reactor.stop()

    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(run()).addBoth(done))
    try:
        reactor.run()
    finally:
        process.kill()
        process.wait()
        directory.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
