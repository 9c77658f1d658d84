# -*- test-case-name: tests.test_bench -*-
"""
The statistics of a load run: percentiles, and what a set of streams says
about the path they came through.

Why apart from the load generator: all of this runs after the measurement
(the client only stores arrival times), and it is pure (no I/O, no clock),
so it is tested on made-up arrival times in C{tests/test_bench.py}.
"""

from __future__ import annotations

import bisect
from array import array
from typing import Any, Dict, Iterable, List, Optional, Sequence


def percentile(ordered: Sequence[float], q: float) -> Optional[float]:
    """
    The C{q}-th percentile (0-100) of already sorted values, interpolating
    linearly between the closest ranks; L{None} for no values.
    """
    if not ordered:
        return None
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize_ms(values: Iterable[float]) -> Dict[str, Any]:
    """
    Count, mean, min, p50, p90, p99 and max of durations in seconds, in
    milliseconds rounded to the microsecond.
    """
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}

    def ms(value: Optional[float]) -> Optional[float]:
        return None if value is None else round(value * 1000.0, 3)

    return {
        "n": len(ordered),
        "mean": ms(sum(ordered) / len(ordered)),
        "min": ms(ordered[0]),
        "p50": ms(percentile(ordered, 50)),
        "p90": ms(percentile(ordered, 90)),
        "p99": ms(percentile(ordered, 99)),
        "max": ms(ordered[-1]),
    }


def expand_arrivals(times: Sequence[float], counts: Sequence[int]) -> List[float]:
    """
    One time stamp per frame, from (read time, frames in that read) pairs.
    """
    out: List[float] = []
    for t, n in zip(times, counts):
        if n == 1:
            out.append(t)
        else:
            out.extend([t] * n)
    return out


class StreamRecord:
    """
    What the client saw of one streamed response.

    @ivar sent: when the request was written.
    @ivar first_byte: when the first response byte arrived (0.0: never).
    @ivar status: the HTTP status (0: no response head).
    @ivar times: read times that completed at least one frame.
    @ivar counts: frames completed by each of those reads.
    @ivar ended: the body ended properly (chunked terminator).
    @ivar error: why the stream failed on the client side, if it did.
    @ivar head: the first bytes of the body; C{tail}: the last ones.
    """

    def __init__(self) -> None:
        self.sent = 0.0
        self.first_byte = 0.0
        self.status = 0
        self.times = array("d")
        self.counts = array("l")
        self.ended = False
        self.error: Optional[str] = None
        self.head = b""
        self.tail = b""
        self.bytes = 0


def token_times(record: StreamRecord, leading: int, trailing: int) -> List[float]:
    """
    Arrival times of the token frames of one stream: all frames less the
    C{leading} ones (the SSE role chunk) and the C{trailing} ones (finish
    chunk and C{[DONE]}, or Ollama's C{done} line).
    """
    frames = expand_arrivals(record.times, record.counts)
    end = len(frames) - trailing
    return frames[leading:end] if end > leading else []


def stream_problem(record: StreamRecord, done_marker: bytes) -> Optional[str]:
    """
    Why a stream does not count as a success, or L{None}: no 200, no
    proper end, or a last frame other than the expected one (an error event
    instead of C{[DONE]}).
    """
    if record.error:
        return record.error
    if record.status != 200:
        return "HTTP %d: %s" % (record.status, record.head[:160].decode("utf-8", "replace"))
    if not record.ended:
        return "body did not end"
    if done_marker and done_marker not in record.tail:
        return "no %s at the end: %s" % (
            done_marker.decode("ascii", "replace"), record.tail[-160:].decode("utf-8", "replace"))
    return None


def analyze_streams(records: Sequence[StreamRecord], rate: float, tokens: int, leading: int,
                    trailing: int, done_marker: bytes, offered_streams: int,
                    bucket: float = 0.25, origin: Optional[float] = None) -> Dict[str, Any]:
    """
    The statistics of a streaming run.

    Token frame C{i} of a stream is emitted by the emulator at C{t0 + i/rate};
    so besides the gaps between consecutive frames, each frame's I{lag} is
    how much later than the stream's most punctual frame it arrived,
    relative to the schedule: C{(arrival_i - i/rate) - min_j(arrival_j -
    j/rate)}. That is the delay variation the path adds (jitter and
    accumulated delay, whatever the emulator's own lateness), not the
    constant part, which the time to first byte shows.

    The I{steady window} runs from the moment the last stream got its first
    token to the moment the first stream got its last token: every stream is
    flowing in it, so token frames in it divided by its length is the
    relayed rate to compare with the offered C{offered_streams * rate}.

    @param origin: the instant the timeline starts at (default: the first
        request sent).
    """
    ok: List[List[float]] = []
    problems: Dict[str, int] = {}
    ttfb: List[float] = []
    ttft: List[float] = []
    frames_total = 0
    for record in records:
        frames_total += sum(record.counts)
        if record.first_byte and record.sent:
            ttfb.append(record.first_byte - record.sent)
        problem = stream_problem(record, done_marker)
        if problem is not None:
            key = problem[:200]
            problems[key] = problems.get(key, 0) + 1
            continue
        tt = token_times(record, leading, trailing)
        ok.append(tt)
        if tt:
            ttft.append(tt[0] - record.sent)
    gaps: List[float] = []
    lags: List[float] = []
    paces: List[float] = []
    token_counts: List[int] = []
    sizes = [r.bytes for r in records if stream_problem(r, done_marker) is None]
    interval = 1.0 / rate if rate > 0 else 0.0
    for tt in ok:
        token_counts.append(len(tt))
        if not tt:
            continue
        first = tt[0]
        previous = first
        offsets = [t - i * interval for i, t in enumerate(tt)]
        best = min(offsets)
        for i, t in enumerate(tt):
            if i:
                gaps.append(t - previous)
            lags.append(offsets[i] - best)
            previous = t
        span = tt[-1] - first
        if rate > 0 and len(tt) > 1 and span > 0:
            paces.append((len(tt) - 1) / span / rate)
    token_frames = sum(token_counts)
    started = [tt[0] for tt in ok if tt]
    ended = [tt[-1] for tt in ok if tt]
    window: Optional[Dict[str, Any]] = None
    if started:
        w0, w1 = max(started), min(ended)
        if w1 - w0 >= 0.5:
            # Half-open (w0, w1]: n frames for n intervals.
            inside = sum(bisect.bisect_right(tt, w1) - bisect.bisect_right(tt, w0) for tt in ok)
            window = {"start": w0, "end": w1, "seconds": round(w1 - w0, 3),
                      "token_frames": inside, "rate": round(inside / (w1 - w0), 1)}
        span = max(ended) - min(started)
        overall = token_frames / span if span > 0 else None
    else:
        overall = None
    sends = [r.sent for r in records if r.sent]
    if origin is None:
        origin = min(sends) if sends else 0.0
    timeline = token_timeline(ok, origin, bucket)
    offered = offered_streams * rate
    relayed = window["rate"] if window else overall
    return {
        "streams": len(records),
        "streams_ok": len(ok),
        "problems": problems,
        "frames_total": frames_total,
        "token_frames": token_frames,
        "token_frames_expected": offered_streams * tokens,
        "tokens_per_stream_min": min(token_counts) if token_counts else 0,
        "tokens_per_stream_max": max(token_counts) if token_counts else 0,
        "body_bytes_min": min(sizes) if sizes else 0,
        "body_bytes_max": max(sizes) if sizes else 0,
        "offered_rate": offered,
        "relayed_rate": round(relayed, 1) if relayed is not None else None,
        "relayed_ratio": round(relayed / offered, 4) if relayed is not None and offered else None,
        "overall_rate": round(overall, 1) if overall is not None else None,
        "window": window,
        "pace": summarize_ratio(paces),
        "ttfb_ms": summarize_ms(ttfb),
        "ttft_ms": summarize_ms(ttft),
        "gap_ms": summarize_ms(gaps),
        "lag_ms": summarize_ms(lags),
        "timeline": timeline,
    }


def summarize_ratio(values: Iterable[float]) -> Dict[str, Any]:
    """
    Min, p1, p50 and mean of ratios (per-stream pace over the target pace).
    """
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}
    return {
        "n": len(ordered),
        "min": round(ordered[0], 4),
        "p1": round(percentile(ordered, 1) or 0.0, 4),
        "p50": round(percentile(ordered, 50) or 0.0, 4),
        "mean": round(sum(ordered) / len(ordered), 4),
    }


def token_timeline(streams: Sequence[Sequence[float]], origin: float,
                   bucket: float) -> Dict[str, Any]:
    """
    Token frames of all streams per C{bucket} seconds from C{origin}, so the
    harness can count the frames between two of its own C{/proc} samples.
    """
    counts: List[int] = []
    for tt in streams:
        for t in tt:
            i = int((t - origin) / bucket) if t >= origin else 0
            if i >= len(counts):
                counts.extend([0] * (i + 1 - len(counts)))
            counts[i] += 1
    return {"origin": origin, "bucket": bucket, "counts": counts}


def frames_between(timeline: Dict[str, Any], start: float, end: float) -> float:
    """
    Frames of a L{token_timeline} between two instants, counting the buckets
    at either edge in proportion to their overlap.
    """
    origin, bucket, counts = timeline["origin"], timeline["bucket"], timeline["counts"]
    total = 0.0
    for i, n in enumerate(counts):
        b0 = origin + i * bucket
        b1 = b0 + bucket
        overlap = min(b1, end) - max(b0, start)
        if overlap > 0:
            total += n * overlap / bucket
    return total
