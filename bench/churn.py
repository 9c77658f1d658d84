# -*- test-case-name: tests.test_bench -*-
"""
The churn benchmark: many clients opening short streams back to back at
full speed (issue 10).

Why this case: paced streams (L{bench.stream}) open each connection once;
a real gateway in front of a fast model sees clients opening stream after
stream. That is where a gateway that closes its upstream connection after
every stream opens hundreds of connections a second, runs into refused
connects, and (before issue 10) opened its circuit breaker on a healthy
Ollama. So the case reports, per front, against the direct baseline of the
same run: chunks per second, streams per second, failed streams by status,
the connections the emulator accepted (a pooling front opens a handful),
the front's CPU per chunk, and, for qwengate, the breaker transitions its
log shows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from bench.fronts import Front
from bench.processes import Stack
from bench.report import fmt, ratio, table
from bench.stream import PROMPT, front_cpu, per_us, token_script, watched_pids

#: Seconds a stream may still run after the end of a phase before it is
#: cut (and counted as unfinished): a slow front must not stall the run.
GRACE = 10.0

#: The issue's targets for qwengate in this case.
CHUNKS_PER_S_TARGET = 25_000
CPU_PER_CHUNK_TARGET_US = 25.0


@dataclass(frozen=True)
class ChurnCase:
    """
    C{concurrency} clients, each opening streams of C{tokens} tokens (at
    full speed) one after another for C{duration} seconds, after
    C{warmup} seconds unrecorded.
    """

    concurrency: int = 100
    tokens: int = 100
    duration: float = 8.0
    warmup: float = 1.0

    @property
    def label(self) -> str:
        return "%d clients x streams of %d tokens at full speed, %gs" % (
            self.concurrency, self.tokens, self.duration)


PROFILES: Dict[str, ChurnCase] = {
    "quick": ChurnCase(),
    "full": ChurnCase(duration=15.0),
}


def breaker_transitions(log_path: Optional[Path]) -> Optional[int]:
    """
    How many circuit breaker transitions a gateway log shows so far.
    """
    if log_path is None:
        return None
    try:
        text = log_path.read_text("utf-8", "replace")
    except OSError:
        return None
    return text.count("circuit breaker for Ollama")


def measure(stack: Stack, front: Front, case: ChurnCase) -> Dict[str, Any]:
    """
    One churn phase through C{front}.
    """
    emulator = stack.emulator()
    log_path = stack.front_log(front.name)
    transitions0 = breaker_transitions(log_path)
    emulator.reset()
    job = front.job("churn", PROMPT, True, concurrency=case.concurrency,
                    duration=case.duration, warmup=case.warmup, grace=GRACE,
                    timeout=case.duration + case.warmup + 2 * GRACE)
    lg, sampler = stack.run_loadgen(job, watched_pids(stack, front), interval=0.25)
    counters = emulator.counters()
    t0, t1 = lg["t_start"], lg["t_end"]
    cpu = front_cpu(sampler, t0, t1)
    transitions1 = breaker_transitions(log_path)
    return {
        "front": front.name,
        "loadgen": lg,
        "emulator_counters": counters,
        "front_cpu_s": cpu,
        "cpu_us_per_chunk": per_us(cpu, lg["frames"]),
        "cpu_us_per_stream": per_us(cpu, lg["streams"]),
        "front_cores": cpu / (t1 - t0) if cpu is not None and t1 > t0 else None,
        "emulator_cores": (lambda c: c / (t1 - t0) if c is not None and t1 > t0 else None)(
            sampler.cpu_between("emulator", t0, t1)),
        "machine_cores_busy": sampler.machine_busy(t0, t1),
        "breaker_transitions": None if transitions0 is None or transitions1 is None
        else transitions1 - transitions0,
    }


def notes_for(case: ChurnCase, runs: Dict[str, Dict[str, Any]]) -> List[str]:
    notes: List[str] = []
    for name, run in runs.items():
        lg = run["loadgen"]
        if lg["failed"] or lg["errors"]:
            statuses = ", ".join("%sx %s" % (n, s) for s, n in sorted(lg["statuses"].items())
                                 if s != "200")
            errors = "; ".join("%dx %s" % (n, e) for e, n in list(lg["errors"].items())[:3])
            notes.append("%s: %d of %d streams failed (%s) %s" % (
                name, lg["failed"], lg["streams"], statuses or "incomplete", errors))
        if lg.get("unfinished"):
            notes.append("%s: %d streams still running %g s after the end were cut"
                         % (name, lg["unfinished"], GRACE))
        if run.get("breaker_transitions"):
            notes.append("%s: %d circuit breaker transitions during the run"
                         % (name, run["breaker_transitions"]))
        if name == "qwengate":
            rate = lg.get("frames_per_s") or 0
            if rate < CHUNKS_PER_S_TARGET:
                notes.append("qwengate: %.0f chunks/s, below the %d target"
                             % (rate, CHUNKS_PER_S_TARGET))
            us = run.get("cpu_us_per_chunk")
            if us is not None and us > CPU_PER_CHUNK_TARGET_US:
                notes.append("qwengate: %.1f us CPU per chunk, above the %.0f us target"
                             % (us, CPU_PER_CHUNK_TARGET_US))
    return notes


def churn_table(case: ChurnCase, runs: Dict[str, Dict[str, Any]]) -> str:
    names = list(runs)
    direct = runs.get("direct")
    headers = ["metric"] + names
    rows: List[List[str]] = []

    def add(label: str, values: Sequence[str]) -> None:
        rows.append([label] + list(values))

    lgs = [runs[n]["loadgen"] for n in names]
    add("streams ok / failed", ["%d / %d" % (lg["ok"], lg["failed"]) for lg in lgs])
    add("chunks/s", [fmt(lg["frames_per_s"], 0) for lg in lgs])
    if direct is not None:
        add("chunks/s vs direct", [fmt(ratio(lg["frames_per_s"],
                                             direct["loadgen"]["frames_per_s"]), 3, "x")
                                   for lg in lgs])
    add("streams/s", [fmt(lg["streams_per_s"], 0) for lg in lgs])
    add("stream latency p50 / p99 ms",
        ["%s / %s" % (fmt(lg["latency_ms"].get("p50"), 1), fmt(lg["latency_ms"].get("p99"), 1))
         for lg in lgs])
    add("connections to the emulator",
        [fmt(runs[n]["emulator_counters"].get("connections")) for n in names])
    add("front CPU us/chunk", [fmt(runs[n].get("cpu_us_per_chunk"), 1) for n in names])
    add("front CPU us/stream", [fmt(runs[n].get("cpu_us_per_stream"), 0) for n in names])
    add("front cores busy", [fmt(runs[n].get("front_cores"), 2) for n in names])
    add("emulator cores busy", [fmt(runs[n].get("emulator_cores"), 2) for n in names])
    add("breaker transitions", [fmt(runs[n].get("breaker_transitions")) for n in names])
    return table(headers, rows, "Churn: %s" % (case.label,))


def run_churn(stack: Stack, case: ChurnCase, fronts: Sequence[str],
              log: Any = print) -> Dict[str, Any]:
    """
    The churn case through every front in C{fronts} that is available.
    """
    stack.emulator().set_script(token_script(0, case.tokens))
    runs: Dict[str, Dict[str, Any]] = {}
    skipped: List[str] = []
    for name in fronts:
        front = stack.available_front(name, skipped)
        if front is None:
            continue
        log("  %s: %s ..." % (case.label, name))
        runs[name] = measure(stack, front, case)
    notes = skipped + notes_for(case, runs)
    return {"case": asdict(case), "runs": runs, "notes": notes,
            "table": churn_table(case, runs)}
