# -*- test-case-name: tests.test_bench -*-
"""
qwengate's benchmark suite (C{python -m bench}, C{./qwengate-dev bench}).

Why a separate suite instead of timed unit tests: speed on a shared 2-core
machine is noisy, so every figure here is measured against a baseline taken
in the same run (the Ollama emulator accessed directly) and reported as a
ratio or a difference. The emulator, the gateway and the load generator run
as three separate processes so that the CPU time of each can be read from
C{/proc} and none of them steals the other's event loop.

Layout:
  - L{bench.fronts}: what a client talks to (direct emulator, qwengate, and
    later nginx and LiteLLM): address, TLS, request mapping, framing.
  - L{bench.processes}: start and stop the real processes (emulator,
    gateway, load generator); L{bench.procfs}: their CPU time and RSS, and
    the machine's busy cores, from C{/proc}.
  - L{bench.loadgen}: the load generator (its own process, asyncio, no JSON
    parsing per chunk); L{bench.stats}: the statistics of its records.
  - L{bench.stream}, L{bench.requests}: the two benchmarks;
    L{bench.report}: tables, JSON results, CPU profile summaries.

Nothing here imports Twisted: the harness is plain synchronous Python that
orchestrates subprocesses.
"""
