# -*- test-case-name: tests.test_bench -*-
"""
C{python -m bench.micro}: CPU micro-benchmarks of the gateway's hot paths,
in one process, measured with C{time.process_time} (best of five rounds).

Why next to the end-to-end benchmarks: on a shared 2-core machine the
end-to-end figures move by tens of percent from one run to the next, while
an optimisation of one hot path changes the total by a few percent. These
run the code of one path alone, so its before/after (C{git stash}, run,
C{git stash pop}, run) is readable; the end-to-end ratios say whether it
mattered.

  - C{access_log}: one access log line through Twisted's text file observer;
  - C{upstream_call}: one non-streaming C{POST /api/chat} through
    L{qwen_twist.upstream.client.OllamaClient} to the in-process emulator
    and its body read (the emulator's CPU is included: compare differences);
  - C{relay_chunk}: one streamed token through the translator and
    L{qwen_twist.web.relay.SseResponse} into a Twisted request (no
    network).
"""

from __future__ import annotations

import io
import sys
import time
from typing import Any, Callable, Dict, List

ROUNDS = 5


def best_of(fn: Callable[[int], None], n: int, rounds: int = ROUNDS) -> float:
    """
    Microseconds of CPU per iteration of C{fn(n)}, best of C{rounds}.
    """
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        fn(n)
        best = min(best, (time.process_time() - t0) / n * 1e6)
    return best


def access_log(n: int = 20000) -> float:
    from twisted.logger import LogPublisher, textFileLogObserver

    from qwen_twist.context import CallContext
    from qwen_twist.pipeline import AccessLog

    publisher = LogPublisher(textFileLogObserver(io.StringIO()))
    log = AccessLog(publisher)
    ctx = CallContext("8971114428ef43b383f2b175788c5989", "chat_completions", "POST",
                      "/v1/chat/completions", "127.0.0.1", 1.0)
    ctx.finished_at, ctx.status, ctx.model = 1.0123, 200, "qwen3:8b"

    def run(count: int) -> None:
        for _ in range(count):
            log.call_finished(ctx)

    return best_of(run, n)


def upstream_call(n: int = 500) -> float:
    from twisted.internet import defer, reactor

    from qwen_twist import config as configmod
    from qwen_twist.emulator import server as emulator_server
    from qwen_twist.upstream.client import OllamaClient, read_body

    result: Dict[str, Any] = {}

    async def main() -> None:
        emulator = await emulator_server.listen(reactor)
        cfg = configmod.build(configmod.Config, {
            "tls": {"self_signed": True}, "auth": {"required": False},
            "upstream": {"url": emulator.url}})
        client = OllamaClient(reactor, cfg.upstream)
        body = {"model": "qwen3:8b", "messages": [{"role": "user", "content": "hi"}],
                "stream": False}
        best = float("inf")
        for _ in range(ROUNDS):
            t0 = time.process_time()
            for _ in range(n):
                response = await client.send("POST", "/api/chat", body)
                await read_body(response)
            best = min(best, (time.process_time() - t0) / n * 1e6)
        result["us"] = best
        await client.close()
        await emulator.stop()

    d = defer.ensureDeferred(main())
    d.addErrback(lambda f: result.setdefault("error", f))
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    if "error" in result:
        result["error"].raiseException()
    return result["us"]


def relay_chunk(n: int = 20000) -> float:
    from twisted.internet.task import Clock
    from twisted.web.test.requesthelper import DummyRequest

    from qwen_twist.translate.stream import ChatStreamTranslator
    from qwen_twist.web.relay import SseResponse

    line = (b'{"model":"qwen3:8b","created_at":"2025-07-07T20:22:19.184789Z",'
            b'"message":{"role":"assistant","content":"token "},"done":false}\n')

    def run(count: int) -> None:
        request = DummyRequest([b""])
        response = SseResponse(request, Clock(), 0)
        translator = ChatStreamTranslator(model="qwen3:8b", completion_id="chatcmpl-1",
                                          created=1, include_usage=False,
                                          reasoning_field="reasoning_content",
                                          max_line=1 << 20)
        response.commit()
        feed, write = translator.feed, response.write
        for _ in range(count):
            write(feed(line))

    return best_of(run, n)


CASES: Dict[str, Callable[[], float]] = {
    "access_log": access_log,
    "relay_chunk": relay_chunk,
    "upstream_call": upstream_call,
}


def main(argv: List[str]) -> int:
    names = argv or list(CASES)
    for name in names:
        print("%-14s %8.1f us CPU per iteration" % (name, CASES[name]()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
