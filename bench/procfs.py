# -*- test-case-name: tests.test_bench -*-
"""
What C{/proc} says about a process and about the machine.

Why: the gateway's cost is its own CPU time and resident memory, read from
C{/proc/<pid>/stat} (user + system ticks) and C{/proc/<pid>/status}
(C{VmRSS}, C{VmHWM}) every few hundred milliseconds while a load runs, and
the machine's busy cores from C{/proc/stat}, to tell a slow front from a
saturated machine. The parsing and the interpolation between samples are
pure functions (tested); L{sample_pid} and L{machine_cpu} read the files.

Time is C{time.monotonic()}, the clock the load generator reports in.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

CLK_TCK = os.sysconf("SC_CLK_TCK")

clock = time.monotonic


def parse_proc_stat(text: str, ticks: int = CLK_TCK) -> float:
    """
    User plus system CPU seconds from the text of C{/proc/<pid>/stat}.
    The command name (field 2) may contain spaces and parentheses, so the
    fields are counted from the last C{")"}.
    """
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / ticks


def parse_proc_status(text: str) -> Dict[str, int]:
    """
    C{VmRSS} (resident now) and C{VmHWM} (resident peak) in bytes from the
    text of C{/proc/<pid>/status}; missing ones are 0.
    """
    out = {"rss": 0, "hwm": 0}
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            out["rss"] = int(line.split()[1]) * 1024
        elif line.startswith("VmHWM:"):
            out["hwm"] = int(line.split()[1]) * 1024
    return out


def parse_machine_stat(text: str, ticks: int = CLK_TCK) -> Tuple[float, float]:
    """
    Busy and total CPU seconds of the whole machine (all cores) from the
    first line of C{/proc/stat}; idle and iowait count as not busy.
    """
    line = text.split("\n", 1)[0].split()
    values = [int(v) for v in line[1:9]]
    total = sum(values)
    idle = values[3] + values[4]
    return (total - idle) / ticks, total / ticks


@dataclass(frozen=True)
class ProcSample:
    """
    One reading of a process: when, CPU seconds so far, RSS and peak RSS.
    """

    t: float
    cpu: float
    rss: int
    hwm: int


def interpolate(points: Sequence[Tuple[float, float]], t: float) -> Optional[float]:
    """
    The value at C{t} of a series of C{(time, value)} points, linear
    between the two around it, clamped to the first and last; L{None} for
    no points.
    """
    if not points:
        return None
    if t <= points[0][0]:
        return points[0][1]
    for (t0, v0), (t1, v1) in zip(points, points[1:]):
        if t <= t1:
            if t1 == t0:
                return v1
            return v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return points[-1][1]


def sample_pid(pid: int) -> Optional[ProcSample]:
    """
    Read one process's CPU and memory now; L{None} when it is gone.
    """
    now = clock()
    try:
        with open("/proc/%d/stat" % (pid,)) as f:
            cpu = parse_proc_stat(f.read())
        with open("/proc/%d/status" % (pid,)) as f:
            mem = parse_proc_status(f.read())
    except (OSError, ValueError, IndexError):
        return None
    return ProcSample(now, cpu, mem["rss"], mem["hwm"])


def machine_cpu() -> Tuple[float, float]:
    with open("/proc/stat") as f:
        return parse_machine_stat(f.read())


class Sampler:
    """
    Samples of some processes (and of the whole machine's CPU) taken over a
    phase, and what can be read from them.
    """

    def __init__(self, pids: Dict[str, int]) -> None:
        self.pids = dict(pids)
        self.samples: Dict[str, List[ProcSample]] = {name: [] for name in pids}
        self.machine: List[Tuple[float, float, float]] = []

    def sample(self) -> None:
        for name, pid in self.pids.items():
            s = sample_pid(pid)
            if s is not None:
                self.samples[name].append(s)
        busy, total = machine_cpu()
        self.machine.append((clock(), busy, total))

    def cpu_between(self, name: str, t0: Optional[float] = None,
                    t1: Optional[float] = None) -> Optional[float]:
        """
        CPU seconds C{name} used between two instants (default: the whole
        sampled span), interpolated between samples.
        """
        points = [(s.t, s.cpu) for s in self.samples.get(name, [])]
        if len(points) < 2:
            return None
        t0 = points[0][0] if t0 is None else t0
        t1 = points[-1][0] if t1 is None else t1
        a, b = interpolate(points, t0), interpolate(points, t1)
        return None if a is None or b is None else b - a

    def rss(self, name: str, t0: Optional[float] = None,
            t1: Optional[float] = None) -> Dict[str, Optional[int]]:
        """
        First, last and peak RSS of C{name} among the samples between two
        instants, and its C{VmHWM} at the end.
        """
        chosen = [s for s in self.samples.get(name, [])
                  if (t0 is None or s.t >= t0) and (t1 is None or s.t <= t1)]
        if not chosen:
            return {"first": None, "last": None, "peak": None, "hwm": None}
        return {"first": chosen[0].rss, "last": chosen[-1].rss,
                "peak": max(s.rss for s in chosen), "hwm": chosen[-1].hwm}

    def machine_busy(self, t0: Optional[float] = None,
                     t1: Optional[float] = None) -> Optional[float]:
        """
        Cores busy on average between two instants (0 to the core count).
        """
        if len(self.machine) < 2:
            return None
        busy = [(t, b) for t, b, _ in self.machine]
        total = [(t, tot) for t, _, tot in self.machine]
        t0 = busy[0][0] if t0 is None else t0
        t1 = busy[-1][0] if t1 is None else t1
        if t1 <= t0:
            return None
        db = (interpolate(busy, t1) or 0.0) - (interpolate(busy, t0) or 0.0)
        dt = (interpolate(total, t1) or 0.0) - (interpolate(total, t0) or 0.0)
        cores = os.cpu_count() or 1
        return round(cores * db / dt, 2) if dt > 0 else None
