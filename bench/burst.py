# -*- test-case-name: tests.test_bench -*-
"""
The burst benchmark: many new TLS clients at once, each with one request.

Why: a gateway restarted behind a load balancer, or a fleet of agents
starting together, meets a burst of new connections, and every one costs a
TLS handshake before its first byte. The issue's target is relative to
nginx in the same run (time to first byte p50 within 50 ms of nginx's), so
the case reports, per front, time to first byte counted from the connect
(handshake included) and to the whole answer, p50 and p99.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Sequence

from bench.processes import Stack
from bench.report import diff, fmt, table
from bench.requests import request_script
from bench.stream import PROMPT, front_cpu, watched_pids

#: The issue's target: qwengate's p50 within this of nginx's.
NGINX_MARGIN_MS = 50.0


@dataclass(frozen=True)
class BurstCase:
    """
    C{clients} new connections at once, one non-streaming request each.
    """

    clients: int = 100

    @property
    def label(self) -> str:
        return "%d new TLS clients at once, one request each" % (self.clients,)


def measure(stack: Stack, front: Any, case: BurstCase) -> Dict[str, Any]:
    stack.emulator().reset()
    job = front.job("burst", PROMPT, False, clients=case.clients, timeout=60.0,
                    connect_timeout=30.0)
    lg, sampler = stack.run_loadgen(job, watched_pids(stack, front), interval=0.1)
    return {"front": front.name, "loadgen": lg,
            "front_cpu_s": front_cpu(sampler, lg["t_start"], lg["t_end"])}


def notes_for(runs: Dict[str, Dict[str, Any]]) -> List[str]:
    notes: List[str] = []
    for name, run in runs.items():
        lg = run["loadgen"]
        if lg["ok"] < lg["clients"]:
            errors = "; ".join("%dx %s" % (n, e) for e, n in list(lg["errors"].items())[:3])
            notes.append("%s: %d of %d clients answered (%s)" % (name, lg["ok"], lg["clients"],
                                                                 errors or "see JSON"))
    if "nginx" in runs and "qwengate" in runs:
        gap = diff(runs["qwengate"]["loadgen"]["ttfb_ms"].get("p50"),
                   runs["nginx"]["loadgen"]["ttfb_ms"].get("p50"))
        if gap is not None and gap > NGINX_MARGIN_MS:
            notes.append("qwengate: first byte p50 %.1f ms after nginx's, above the %.0f ms "
                         "target" % (gap, NGINX_MARGIN_MS))
    return notes


def burst_table(case: BurstCase, runs: Dict[str, Dict[str, Any]]) -> str:
    names = list(runs)
    rows: List[List[str]] = []

    def add(label: str, values: Sequence[str]) -> None:
        rows.append([label] + list(values))

    lgs = [runs[n]["loadgen"] for n in names]
    add("answered", ["%d/%d" % (lg["ok"], lg["clients"]) for lg in lgs])
    for key, label in (("ttfb_ms", "first byte (from connect)"), ("total_ms", "whole answer")):
        for q in ("p50", "p99"):
            add("%s %s ms" % (label, q), [fmt(lg[key].get(q), 1) for lg in lgs])
    add("front CPU ms for the burst",
        [fmt(None if runs[n].get("front_cpu_s") is None else runs[n]["front_cpu_s"] * 1e3, 1)
         for n in names])
    return table(["metric"] + names, rows, "Burst: %s" % (case.label,))


def run_burst(stack: Stack, case: BurstCase, fronts: Sequence[str],
              log: Any = print) -> Dict[str, Any]:
    stack.emulator().set_script(request_script())
    runs: Dict[str, Dict[str, Any]] = {}
    for name in fronts:
        log("  %s: %s ..." % (case.label, name))
        runs[name] = measure(stack, stack.front(name), case)
    return {"case": asdict(case), "runs": runs, "notes": notes_for(runs),
            "table": burst_table(case, runs)}
