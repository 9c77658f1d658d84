# -*- test-case-name: tests.test_bench -*-
"""
The streaming benchmark: S concurrent streams of R tokens per second,
through each front, against the direct baseline; and the slow-reader
memory check.

Why this shape: the gateway's streaming targets are relative to what the
emulator offers (S x R chunks per second relayed "at full pace"), and on a
shared 2-core machine the emulator, the gateway and the load generator
compete for the same cores. So each case runs first against the emulator
directly (C{/api/chat}, NDJSON), then through each front, with the same
script; every figure is reported next to the direct one, and when the
direct run itself falls short of the offered load the report says so
instead of blaming the gateway.

What is measured per front (see L{bench.stats.analyze_streams}):
  - chunks per second relayed in the steady window vs offered (S x R);
  - gaps between consecutive chunks, and each chunk's lag behind the
    emulator's schedule (relative to the stream's most punctual chunk),
    p50/p99;
  - time to first byte, p50/p99 (the requests are spread over C{ramp}
    seconds after all connections are up, so this is per-request latency
    under load, not the queue of one burst, nor the TLS handshake);
  - relayed rates slightly above 100% happen when streams delayed at the
    start catch up inside the window; the per-stream pace shows it;
  - the front's CPU per chunk: its process CPU time (C{/proc}) over the
    steady window divided by the token chunks relayed in it (the "40 us per
    chunk" figure), and the same over the whole phase (connection set-up
    included) divided by all frames;
  - the front's RSS peak while all streams are open.

The slow-reader check opens K streams whose client does not read for T
seconds while the emulator produces megabytes per stream, samples the
gateway's RSS all along, then reads everything: the RSS must stay flat
(backpressure pauses the emulator; its pause counter shows it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from bench.fronts import Front
from bench.procfs import Sampler
from bench.processes import Stack
from bench.stats import frames_between
from bench.report import (
    diff, fmt, layer_shares, layer_table, mb, profile_table, ratio, table, top_functions,
)

PROMPT = "Say hello."

#: Below this share of the offered rate, a run did not keep up.
FULL_PACE = 0.95

#: Above this share of its one core, the load generator may be the bottleneck.
LOADGEN_BUSY = 0.8

#: py-spy's sampling rate (per second).
PY_SPY_RATE = 500

#: The issue's target for the gateway's CPU per relayed chunk.
CPU_PER_CHUNK_TARGET_US = 40.0


@dataclass(frozen=True)
class StreamCase:
    """
    C{streams} concurrent streams of C{rate} tokens per second for
    C{duration} seconds each, their requests spread over C{ramp} seconds.
    """

    streams: int
    rate: float
    duration: float
    ramp: float = 1.0

    @property
    def tokens(self) -> int:
        return max(2, int(round(self.rate * self.duration)))

    @property
    def label(self) -> str:
        return "%d streams x %g tokens/s, %gs (started over %gs)" % (
            self.streams, self.rate, self.duration, self.ramp)


@dataclass(frozen=True)
class SlowReaderCase:
    """
    C{streams} streams of C{megabytes} each in C{chunk_kib} chunks at
    C{rate} chunks per second, not read for C{hold} seconds.
    """

    streams: int = 20
    hold: float = 8.0
    megabytes: int = 8
    chunk_kib: int = 16
    rate: float = 1024.0

    @property
    def tokens(self) -> int:
        return self.megabytes * 1024 // self.chunk_kib


PROFILES: Dict[str, Tuple[Tuple[StreamCase, ...], SlowReaderCase]] = {
    "quick": ((StreamCase(100, 50, 10),), SlowReaderCase(20, 8.0, 16)),
    "full": ((StreamCase(100, 50, 10), StreamCase(1000, 20, 10, ramp=2.0)),
             SlowReaderCase(20, 15.0, 32)),
}


def token_script(rate: float, tokens: int) -> Dict[str, Any]:
    """
    The emulator script of a streaming case: C{tokens} one-word chunks at
    C{rate} per second, no thinking. The words differ (C{w0 w1 ...}):
    LiteLLM ends a stream that repeats one chunk as a degenerate model.
    """
    text = " ".join("w%d" % (i,) for i in range(tokens))
    return {"default": {"tokens_per_second": rate, "tokens": tokens, "text": text,
                        "thinking": ""}}


def bulk_script(case: SlowReaderCase) -> Dict[str, Any]:
    """
    The emulator script of the slow-reader check: C{megabytes} of text per
    answer in C{chunk_kib} chunks (words of 1 KiB, so the emulator's word
    split stays cheap).
    """
    word = "x" * 1023 + " "
    text = word * (case.megabytes * 1024)
    return {"default": {"tokens_per_second": case.rate, "tokens": case.tokens,
                        "text": text, "thinking": ""}}


def watched_pids(stack: Stack, front: Front) -> Dict[str, int]:
    pids = {"emulator": stack.emulator().pid}
    for i, pid in enumerate(front.pids):
        pids["front%d" % (i,)] = pid
    return pids


def front_cpu(sampler: Sampler, t0: Optional[float] = None,
              t1: Optional[float] = None) -> Optional[float]:
    """
    CPU seconds of all of a front's processes between two instants.
    """
    values = [sampler.cpu_between(name, t0, t1) for name in sampler.pids
              if name.startswith("front")]
    values = [v for v in values if v is not None]
    return sum(values) if values else None


def front_rss(sampler: Sampler, t0: Optional[float] = None,
              t1: Optional[float] = None) -> Dict[str, Optional[int]]:
    """
    RSS of a front's processes, summed (first, last, peak of the sums is
    approximated by the sum of the peaks).
    """
    out: Dict[str, Optional[int]] = {"first": None, "last": None, "peak": None, "hwm": None}
    for name in sampler.pids:
        if not name.startswith("front"):
            continue
        part = sampler.rss(name, t0, t1)
        for key, value in part.items():
            if value is not None:
                out[key] = (out[key] or 0) + value
    return out


def per_us(cpu: Optional[float], frames: Optional[float]) -> Optional[float]:
    return None if cpu is None or not frames else cpu / frames * 1e6


def measure(stack: Stack, front: Front, case: StreamCase) -> Dict[str, Any]:
    """
    One streaming phase through C{front}: the load generator's analysis and
    what C{/proc} says about the emulator and the front meanwhile.
    """
    emulator = stack.emulator()
    emulator.reset()
    job = front.job("stream", PROMPT, True, streams=case.streams, rate=case.rate,
                    tokens=case.tokens, timeout=case.duration * 2 + case.ramp + 60,
                    bucket=0.25, connect_concurrency=64, ramp=case.ramp)
    lg, sampler = stack.run_loadgen(job, watched_pids(stack, front), interval=0.25)
    return assemble(front, lg, sampler, emulator.counters())


def assemble(front: Front, lg: Dict[str, Any], sampler: Sampler,
             counters: Dict[str, int]) -> Dict[str, Any]:
    window = lg.get("window")
    if window:
        w0, w1 = window["start"], window["end"]
    else:
        w0, w1 = lg["t_sent"], lg["t_end"]
    open0 = lg.get("t_all_first_byte") or lg["t_sent"]
    open1 = lg.get("t_first_finished") or lg["t_end"]
    frames_w = frames_between(lg["timeline"], w0, w1)
    busy_for = lg["t_end"] - lg["t_sent"]
    out: Dict[str, Any] = {
        "front": front.name,
        "url": front.chat_url,
        "loadgen": lg,
        "emulator_counters": counters,
        "window_frames": round(frames_w, 1),
        "machine_cores_busy": sampler.machine_busy(w0, w1),
        "loadgen_cores": round(lg["loadgen_cpu_s"] / busy_for, 3) if busy_for > 0 else None,
    }
    emulator_steady = sampler.cpu_between("emulator", w0, w1)
    out["emulator"] = {
        "cpu_s": sampler.cpu_between("emulator"),
        "cores_steady": emulator_steady / (w1 - w0) if emulator_steady is not None and w1 > w0
        else None,
    }
    if front.pids:
        total = front_cpu(sampler)
        steady = front_cpu(sampler, w0, w1)
        rss_open = front_rss(sampler, open0, open1)
        rss_all = front_rss(sampler)
        out["front_process"] = {
            "cpu_s": total,
            "cpu_us_per_frame": per_us(total, lg["frames_total"]),
            "steady_cpu_s": steady,
            "steady_cpu_us_per_chunk": per_us(steady, frames_w),
            "cores_steady": steady / (w1 - w0) if steady is not None and w1 > w0 else None,
            "rss_before": rss_all["first"],
            "rss_peak_open": rss_open["peak"],
            "rss_peak": rss_all["peak"],
            "hwm": rss_all["hwm"],
        }
    return out


def compare(direct: Dict[str, Any], other: Dict[str, Any]) -> Dict[str, Any]:
    """
    A front's figures relative to the direct run of the same case.
    """
    d, o = direct["loadgen"], other["loadgen"]

    def delta(section: str, key: str) -> Optional[float]:
        return diff(o[section].get(key), d[section].get(key))

    return {
        "relayed_vs_direct": ratio(o["relayed_rate"], d["relayed_rate"]),
        "ttfb_added_p50_ms": delta("ttfb_ms", "p50"),
        "ttfb_added_p99_ms": delta("ttfb_ms", "p99"),
        "gap_added_p50_ms": delta("gap_ms", "p50"),
        "gap_added_p99_ms": delta("gap_ms", "p99"),
        "lag_added_p50_ms": delta("lag_ms", "p50"),
        "lag_added_p99_ms": delta("lag_ms", "p99"),
    }


def notes_for(case: StreamCase, runs: Dict[str, Dict[str, Any]]) -> List[str]:
    """
    The honest remarks: baseline short of the offered load, saturated
    cores, failed streams, targets missed.
    """
    notes: List[str] = []
    cores = None
    for name, run in runs.items():
        lg = run["loadgen"]
        if lg["streams_ok"] < case.streams:
            problems = "; ".join("%dx %s" % (n, p) for p, n in list(lg["problems"].items())[:3])
            errors = "; ".join("%dx %s" % (n, p) for p, n in lg["connect_errors"].items())
            notes.append("%s: only %d of %d streams succeeded (%s)" % (
                name, lg["streams_ok"], case.streams, problems or errors or "see JSON"))
        share = lg.get("relayed_ratio")
        if share is not None and share < FULL_PACE:
            if name == "direct":
                notes.append("the direct baseline itself only achieved %.0f%% of the offered %g "
                             "chunks/s: this machine cannot sustain the load (emulator, front "
                             "and load generator share its cores); compare ratios vs direct"
                             % (100 * share, lg["offered_rate"]))
            else:
                notes.append("%s relayed %.0f%% of the offered rate" % (name, 100 * share))
        if (run.get("loadgen_cores") or 0.0) > LOADGEN_BUSY:
            notes.append("%s: the load generator used %.0f%% of its one core and may be the "
                         "bottleneck" % (name, 100 * run["loadgen_cores"]))
        busy = run.get("machine_cores_busy")
        cores = busy if busy is not None and (cores is None or busy > cores) else cores
        proc = run.get("front_process")
        if proc and proc.get("steady_cpu_us_per_chunk") is not None:
            if proc["steady_cpu_us_per_chunk"] > CPU_PER_CHUNK_TARGET_US:
                notes.append("%s: %.1f us CPU per chunk, above the %.0f us target"
                             % (name, proc["steady_cpu_us_per_chunk"], CPU_PER_CHUNK_TARGET_US))
    ncpu = os.cpu_count() or 1
    if cores is not None and cores > 0.9 * ncpu:
        notes.append("CPU saturated: %.2f of %d cores busy in the steady window; figures are "
                     "bounded by the machine, not only by the front" % (cores, ncpu))
    return notes


def case_table(case: StreamCase, runs: Dict[str, Dict[str, Any]],
               comparisons: Dict[str, Dict[str, Any]]) -> str:
    names = list(runs)
    headers = ["metric"]
    for name in names:
        headers.append(name)
        if name != "direct" and "direct" in runs:
            headers.append("vs direct")
    rows: List[List[str]] = []

    def add(label: str, values: Sequence[str], deltas: Sequence[str] = ()) -> None:
        row = [label]
        di = iter(deltas)
        for name, value in zip(names, values):
            row.append(value)
            if name != "direct" and "direct" in runs:
                row.append(next(di, ""))
        rows.append(row)

    lgs = [runs[n]["loadgen"] for n in names]
    others = [n for n in names if n != "direct"]
    comp = [comparisons.get(n, {}) for n in others]
    add("streams ok", ["%d/%d" % (lg["streams_ok"], case.streams) for lg in lgs])
    add("offered chunks/s", [fmt(lg["offered_rate"], 0) for lg in lgs])
    add("relayed chunks/s (steady, % offered)",
        ["%s (%s)" % (fmt(lg["relayed_rate"], 0),
                      fmt(None if lg["relayed_ratio"] is None else 100 * lg["relayed_ratio"],
                          1, "%"))
         for lg in lgs],
        [fmt(c.get("relayed_vs_direct"), 3, "x") for c in comp])
    add("per-stream pace p50 / min",
        ["%s / %s" % (fmt(lg["pace"].get("p50"), 3), fmt(lg["pace"].get("min"), 3))
         for lg in lgs])
    add("tokens/stream min-max (of %d)" % (case.tokens,),
        ["%d-%d" % (lg["tokens_per_stream_min"], lg["tokens_per_stream_max"]) for lg in lgs])
    for key, label in (("ttfb", "time to first byte"), ("gap", "inter-chunk gap"),
                       ("lag", "lag behind schedule")):
        for q in ("p50", "p99"):
            add("%s %s ms" % (label, q), [fmt(lg[key + "_ms"].get(q), 2) for lg in lgs],
                [fmt(c.get("%s_added_%s_ms" % (key, q)), 2, "+") for c in comp])
    procs = [runs[n].get("front_process") or {} for n in names]
    add("front CPU us/chunk (steady)", [fmt(p.get("steady_cpu_us_per_chunk"), 1) for p in procs])
    add("front CPU us/frame (whole phase)", [fmt(p.get("cpu_us_per_frame"), 1) for p in procs])
    add("front cores busy (steady)", [fmt(p.get("cores_steady"), 2) for p in procs])
    add("front RSS MB before / peak open",
        ["%s / %s" % (fmt(mb(p.get("rss_before")), 1), fmt(mb(p.get("rss_peak_open")), 1))
         if p else "-" for p in procs])
    add("emulator cores busy (steady)",
        [fmt(runs[n]["emulator"].get("cores_steady"), 2) for n in names])
    add("loadgen cores busy", [fmt(runs[n].get("loadgen_cores"), 2) for n in names])
    add("machine cores busy (steady)", [fmt(runs[n].get("machine_cores_busy"), 2) for n in names])
    return table(headers, rows, "Streaming: %s" % (case.label,))


def run_case(stack: Stack, case: StreamCase, fronts: Sequence[str],
             log: Any = print) -> Dict[str, Any]:
    stack.emulator().set_script(token_script(case.rate, case.tokens))
    runs: Dict[str, Dict[str, Any]] = {}
    for name in fronts:
        log("  %s: %s ..." % (case.label, name))
        runs[name] = measure(stack, stack.front(name), case)
    comparisons = {name: compare(runs["direct"], run) for name, run in runs.items()
                   if name != "direct" and "direct" in runs}
    notes = notes_for(case, runs)
    return {"case": asdict(case), "runs": runs, "comparisons": comparisons, "notes": notes,
            "table": case_table(case, runs, comparisons)}


# -- slow reader -----------------------------------------------------------


def run_slow_reader(stack: Stack, case: SlowReaderCase, front_name: str = "qwengate",
                    log: Any = print) -> Dict[str, Any]:
    """
    K streams not read for C{hold} seconds, then read to the end; the
    front's RSS sampled every 0.1 s throughout.
    """
    log("  slow reader: %d streams x %d MB, %gs without reading ..."
        % (case.streams, case.megabytes, case.hold))
    emulator = stack.emulator()
    # A fresh front process, so that memory freed by earlier cases (which
    # Python keeps) cannot hide growth; warmed up by one small round of the
    # same streams, so that first-use allocations do not look like growth.
    stack.restart(front_name)
    front = stack.front(front_name)
    emulator.set_script(token_script(0, 50))
    stack.run_loadgen(front.job("stream", PROMPT, True, streams=case.streams, rate=0.0,
                                tokens=50, timeout=60, connect_concurrency=64),
                      watched_pids(stack, front))
    emulator.set_script(bulk_script(case))
    emulator.reset()
    job = front.job("stream", PROMPT, True, streams=case.streams, rate=case.rate,
                    tokens=case.tokens, hold=case.hold, rcvbuf=65536,
                    timeout=case.hold + 120, bucket=0.25, connect_concurrency=64)
    lg, sampler = stack.run_loadgen(job, watched_pids(stack, front), interval=0.1)
    counters = emulator.counters()
    t_sent, t_resumed, t_end = lg["t_sent"], lg["t_resumed"], lg["t_end"]
    before = front_rss(sampler, None, t_sent)
    early = front_rss(sampler, t_sent + 1.0, t_sent + 1.5)
    hold = front_rss(sampler, t_sent, t_resumed)
    after = front_rss(sampler, t_resumed, None)
    base = before["last"] if before["last"] is not None else before["first"]
    growth = diff(hold["peak"], base)
    late_growth = diff(hold["last"], early["first"])
    per_stream = growth / case.streams if growth is not None else None
    flat = per_stream is not None and per_stream < 1024 * 1024
    series = [(round(s.t - t_sent, 2), s.rss) for name in sampler.pids
              if name.startswith("front") for s in sampler.samples[name]]
    result = {
        "case": asdict(case),
        "front": front.name,
        "loadgen": lg,
        "emulator_counters": counters,
        "rss_before": base,
        "rss_hold_first_second_end": early["first"],
        "rss_hold_end": hold["last"],
        "rss_hold_peak": hold["peak"],
        "rss_after_peak": after["peak"],
        "rss_end": after["last"],
        "growth_during_hold": growth,
        "growth_after_first_second": late_growth,
        "growth_per_stream": per_stream,
        "flat": flat,
        "drain_seconds": round(t_end - t_resumed, 2) if t_resumed else None,
        "rss_series": series,
    }
    rows = [
        ("streams ok", "%d/%d" % (lg["streams_ok"], case.streams)),
        ("body per stream MB (min-max)", "%s-%s" % (fmt(mb(lg["body_bytes_min"]), 1),
                                                   fmt(mb(lg["body_bytes_max"]), 1))),
        ("not read for", fmt(case.hold, 1, " s")),
        ("%s RSS before MB" % (front.name,), fmt(mb(base), 1)),
        ("RSS 1 s into the hold MB", fmt(mb(early["first"]), 1)),
        ("RSS at the end of the hold MB", fmt(mb(hold["last"]), 1)),
        ("RSS peak during the hold MB", fmt(mb(hold["peak"]), 1)),
        ("RSS peak while draining MB", fmt(mb(after["peak"]), 1)),
        ("growth during the hold MB", fmt(mb(growth), 2)),
        ("growth per stream KB", fmt(per_stream / 1024 if per_stream is not None else None, 0)),
        ("growth 1 s in -> end of hold MB", fmt(mb(late_growth), 2)),
        ("emulator pauses (backpressure)", fmt(counters.get("pauses"))),
        ("emulator streams completed", fmt(counters.get("streams_completed"))),
        ("drain time after the hold", fmt(result["drain_seconds"], 2, " s")),
        ("verdict", "flat (< 1 MiB per stream)" if flat else "NOT flat"),
    ]
    result["table"] = table(("slow reader", front.name), rows,
                            "Slow-reader memory check: %d streams x %d MB, unread for %gs"
                            % (case.streams, case.megabytes, case.hold))
    return result


# -- CPU profile -----------------------------------------------------------


def find_py_spy(python: str) -> Optional[str]:
    beside = Path(python).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def profile_case(stack: Stack, case: Any, front_name: str = "qwengate",
                 log: Any = print, phase: Optional[Any] = None) -> Dict[str, Any]:
    """
    An extra phase of C{case} (a streaming case, or with C{phase(stack,
    front, case)} any other) through C{front_name} with py-spy sampling the
    front (its figures are not reported: py-spy stops the process briefly
    for each sample, which keeps the stacks consistent but costs time); the
    top 10 functions by own time, and qwen_twist's own by inclusive time.
    """
    py_spy = find_py_spy(stack.python)
    if py_spy is None:
        return {"error": "py-spy not found (pip install py-spy into the venv)"}
    front = stack.front(front_name)
    if not front.pids:
        return {"error": "%s has no process to profile" % (front_name,)}
    log("  CPU profile of %s with py-spy during %s ..." % (front_name, case.label))
    if phase is None:
        stack.emulator().set_script(token_script(case.rate, case.tokens))
        phase = measure
    raw = stack.workdir / "py-spy.txt"
    spy_log = stack.workdir / "py-spy.out"
    with open(spy_log, "wb") as out:
        spy = subprocess.Popen(
            [py_spy, "record", "--pid", str(front.pids[0]), "--duration",
             str(int(case.duration)), "--rate", str(PY_SPY_RATE), "--format", "raw", "--gil",
             "--output", str(raw)], stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            phase(stack, front, case)
            spy.wait(case.duration + 30)
        finally:
            if spy.poll() is None:
                spy.kill()
                spy.wait(5)
    if not raw.exists():
        return {"error": "py-spy failed: %s" % (spy_log.read_text("utf-8", "replace")[-500:],)}
    with open(raw, encoding="utf-8", errors="replace") as f:
        profile = top_functions(f, 10, focus="/qwen_twist/")
    with open(raw, encoding="utf-8", errors="replace") as f:
        profile["layers"] = layer_shares(f)["layers"]
    profile["tool"] = ("py-spy --gil at %d Hz: samples holding the GIL (Python work), not "
                       "syscalls that release it" % (PY_SPY_RATE,))
    profile["raw"] = str(raw)
    profile["table"] = "\n\n".join([
        profile_table(profile, "Where %s spends its CPU (%s): top 10 by own "
                      "time, py-spy, %d samples" % (front_name, case.label, profile["samples"])),
        profile_table(profile, "The same samples, qwen_twist's own functions by inclusive "
                      "time", key="focus_top"),
        layer_table({"layers": profile["layers"]}, "The same samples by layer (where the "
                    "floor is)"),
    ])
    return profile
