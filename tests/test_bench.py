"""
Tests for the pure parts of the benchmark suite (C{bench/}): HTTP framing
in the load generator, frame counting, the statistics, C{/proc} parsing,
the request mapping of fronts, the wrk glue, profile summaries and the
command line. Nothing here starts a process or measures time.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from bench import __main__ as cli, loadgen, processes, procfs, report, requests as reqbench
from bench import stats
from bench import stream as streambench
from bench import churn as churnbench, peers
from bench.fronts import OLLAMA, OPENAI, Front, direct_front, qwengate_front


def chunked(*pieces: bytes) -> bytes:
    """
    C{pieces} in HTTP/1.1 chunked transfer coding, terminated.
    """
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def sse_body(tokens: int) -> bytes:
    """
    A gateway-like SSE body: role chunk, tokens, finish chunk, [DONE].
    """
    events = [b'data: {"role":"assistant"}\n\n']
    events += [b'data: {"content":"t%d"}\n\n' % (i,) for i in range(tokens)]
    events += [b'data: {"finish_reason":"stop"}\n\n', b"data: [DONE]\n\n"]
    return b"".join(events)


def record_at(times, tokens_per_read=1, sent=0.0, status=200, tail=b"data: [DONE]\n\n",
              leading=1, trailing=2):
    """
    A L{stats.StreamRecord} whose token frames arrived at C{times}, with
    one leading and two trailing frames around them.
    """
    record = stats.StreamRecord()
    record.sent = sent
    record.first_byte = times[0] if times else sent
    record.status = status
    record.ended = True
    record.tail = tail
    arrivals = [times[0]] * leading + list(times) + [times[-1]] * trailing
    for t in arrivals:
        record.times.append(t)
        record.counts.append(tokens_per_read)
    return record


class ChunkedDecoderTests(SynchronousTestCase):
    """
    The load generator undoes chunked transfer coding however the bytes
    are cut by the socket.
    """

    def test_every_split_point(self):
        """
        Fed in two pieces cut anywhere, the body comes out whole and the end
        is recognised.
        """
        body = [b"data: a\n\n", b"data: bb\n\n", b"x" * 20]
        wire = chunked(*body)
        for cut in range(len(wire) + 1):
            decoder = loadgen.ChunkedDecoder()
            out = decoder.feed(wire[:cut]) + decoder.feed(wire[cut:])
            self.assertEqual(out, b"".join(body), cut)
            self.assertTrue(decoder.done, cut)

    def test_byte_by_byte(self):
        """
        One byte at a time works too, and the end is seen only at the
        final blank line.
        """
        wire = chunked(b"hello", b" world")
        decoder = loadgen.ChunkedDecoder()
        out = b""
        for i in range(len(wire)):
            self.assertFalse(decoder.done)
            out += decoder.feed(wire[i:i + 1])
        self.assertEqual(out, b"hello world")
        self.assertTrue(decoder.done)

    def test_extensions_ignored(self):
        """
        Chunk extensions after C{;} do not disturb the size.
        """
        decoder = loadgen.ChunkedDecoder()
        self.assertEqual(decoder.feed(b"3;name=value\r\nabc\r\n0\r\n\r\n"), b"abc")
        self.assertTrue(decoder.done)

    def test_bad_size(self):
        """
        A size line that is not hexadecimal is a protocol error.
        """
        self.assertRaises(loadgen.ProtocolError, loadgen.ChunkedDecoder().feed, b"zz\r\n")

    def test_identity(self):
        """
        A body with a Content-Length ends after that many bytes.
        """
        decoder = loadgen.body_decoder({"content-length": "5"})
        self.assertEqual(decoder.feed(b"abc"), b"abc")
        self.assertFalse(decoder.done)
        self.assertEqual(decoder.feed(b"de"), b"de")
        self.assertTrue(decoder.done)

    def test_chooses_chunked(self):
        """
        C{Transfer-Encoding: chunked} selects the chunked decoder.
        """
        decoder = loadgen.body_decoder({"transfer-encoding": "chunked"})
        self.assertIsInstance(decoder, loadgen.ChunkedDecoder)


class ResponseHeadTests(SynchronousTestCase):
    """
    Status line and headers.
    """

    def test_parse(self):
        """
        The status is an int, header names are lower-cased.
        """
        status, headers = loadgen.parse_response_head(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-Y:  z ")
        self.assertEqual(status, 200)
        self.assertEqual(headers, {"content-type": "text/event-stream", "x-y": "z"})

    def test_not_http(self):
        """
        Something that is not an HTTP/1.x status line is refused.
        """
        self.assertRaises(loadgen.ProtocolError, loadgen.parse_response_head, b"SSH-2.0 hi")


class FrameCounterTests(SynchronousTestCase):
    """
    Frames are counted by their separator only, including separators cut in
    two by the network.
    """

    def test_sse_any_split(self):
        """
        However an SSE body is cut, each event counts once.
        """
        body = sse_body(5)
        for cut in range(len(body) + 1):
            counter = loadgen.FrameCounter(b"\n\n")
            n = counter.feed(body[:cut]) + counter.feed(body[cut:])
            self.assertEqual(n, 8, cut)
            self.assertEqual(counter.frames, 8)

    def test_sse_byte_by_byte(self):
        """
        One byte at a time, still one count per event.
        """
        body = sse_body(3)
        counter = loadgen.FrameCounter(b"\n\n")
        for i in range(len(body)):
            counter.feed(body[i:i + 1])
        self.assertEqual(counter.frames, 6)

    def test_separator_not_reused(self):
        """
        The second newline of a complete event does not pair with a newline
        at the start of the next piece.
        """
        counter = loadgen.FrameCounter(b"\n\n")
        self.assertEqual(counter.feed(b"data: a\n\n"), 1)
        self.assertEqual(counter.feed(b"\ndata: b"), 0)

    def test_ndjson(self):
        """
        NDJSON lines end at each newline.
        """
        counter = loadgen.FrameCounter(b"\n")
        self.assertEqual(counter.feed(b'{"a":1}\n{"b"'), 1)
        self.assertEqual(counter.feed(b':2}\n{"done":true}\n'), 2)

    def test_head_and_tail(self):
        """
        The first and last bytes are kept to check the first and last
        frames afterwards.
        """
        counter = loadgen.FrameCounter(b"\n\n")
        body = sse_body(200)
        for i in range(0, len(body), 7):
            counter.feed(body[i:i + 7])
        self.assertTrue(counter.head.startswith(b'data: {"role"'))
        self.assertTrue(counter.tail.endswith(b"data: [DONE]\n\n"))
        self.assertEqual(len(counter.tail), loadgen.SAMPLE_BYTES)
        self.assertLessEqual(len(counter.head), loadgen.SAMPLE_BYTES)


class StatisticsTests(SynchronousTestCase):
    """
    Percentiles, summaries and the streaming analysis.
    """

    def test_percentile(self):
        """
        Linear interpolation between closest ranks; the ends are min and
        max; nothing gives None.
        """
        values = [1.0, 2.0, 3.0, 4.0, 5.0]
        self.assertEqual(stats.percentile(values, 50), 3.0)
        self.assertEqual(stats.percentile(values, 0), 1.0)
        self.assertEqual(stats.percentile(values, 100), 5.0)
        self.assertAlmostEqual(stats.percentile(values, 90), 4.6)
        self.assertIsNone(stats.percentile([], 50))

    def test_summary_in_ms(self):
        """
        Durations in seconds are summarised in milliseconds.
        """
        summary = stats.summarize_ms([0.001, 0.002, 0.003])
        self.assertEqual(summary["n"], 3)
        self.assertEqual(summary["p50"], 2.0)
        self.assertEqual(summary["max"], 3.0)
        self.assertEqual(stats.summarize_ms([]), {"n": 0})

    def test_expand_arrivals(self):
        """
        A read that completed three frames stands for three arrivals.
        """
        self.assertEqual(stats.expand_arrivals([1.0, 2.0], [1, 3]), [1.0, 2.0, 2.0, 2.0])

    def test_on_schedule(self):
        """
        Streams whose tokens arrive exactly on the emulator's schedule are
        relayed at the offered rate, with gaps of 1/R and no lag.
        """
        rate, tokens = 10.0, 21
        records = [record_at([s * 0.1 + 1.0 + i / rate for i in range(tokens)], sent=s * 0.1)
                   for s in range(4)]
        result = stats.analyze_streams(records, rate, tokens, 1, 2, b"[DONE]", 4)
        self.assertEqual(result["streams_ok"], 4)
        self.assertEqual(result["token_frames"], 4 * tokens)
        self.assertEqual(result["tokens_per_stream_min"], tokens)
        self.assertEqual(result["relayed_ratio"], 1.0)
        self.assertAlmostEqual(result["gap_ms"]["p50"], 100.0, places=3)
        self.assertAlmostEqual(result["lag_ms"]["max"], 0.0, places=3)
        self.assertAlmostEqual(result["pace"]["min"], 1.0, places=3)
        self.assertAlmostEqual(result["ttft_ms"]["p50"], 1000.0, places=3)

    def test_lag_measures_delay_variation(self):
        """
        A token that arrives 50 ms behind the schedule shows as 50 ms of
        lag, the others as none.
        """
        rate = 10.0
        times = [i / rate for i in range(10)]
        times[5] += 0.05
        result = stats.analyze_streams([record_at(times)], rate, 10, 1, 2, b"[DONE]", 1)
        self.assertAlmostEqual(result["lag_ms"]["max"], 50.0, places=3)
        self.assertAlmostEqual(result["lag_ms"]["p50"], 0.0, places=3)

    def test_slow_relay_is_reported(self):
        """
        Streams relayed at half the pace show half the offered rate.
        """
        rate = 10.0
        records = [record_at([i / 5.0 for i in range(20)]) for _ in range(3)]
        result = stats.analyze_streams(records, rate, 20, 1, 2, b"[DONE]", 3)
        self.assertAlmostEqual(result["relayed_ratio"], 0.5, places=2)
        self.assertAlmostEqual(result["pace"]["p50"], 0.5, places=3)

    def test_failed_streams(self):
        """
        A non-200 answer and a stream ending without [DONE] (an error event)
        do not count as successes, and say why.
        """
        good = record_at([0.1, 0.2, 0.3])
        refused = record_at([0.1], status=503)
        refused.head = b'{"error":{"message":"busy"}}'
        truncated = record_at([0.1, 0.2], tail=b'data: {"error":{"message":"x"}}\n\n')
        result = stats.analyze_streams([good, refused, truncated], 10.0, 3, 1, 2,
                                         b"data: [DONE]", 3)
        self.assertEqual(result["streams_ok"], 1)
        reasons = " ".join(result["problems"])
        self.assertIn("HTTP 503", reasons)
        self.assertIn("no data: [DONE] at the end", reasons)

    def test_token_times_strip_framing(self):
        """
        The role chunk before and the finish chunk and [DONE] after the
        tokens are not token frames.
        """
        record = stats.StreamRecord()
        for t in (1.0, 2.0, 3.0, 4.0, 5.0):
            record.times.append(t)
            record.counts.append(1)
        self.assertEqual(stats.token_times(record, 1, 2), [2.0, 3.0])
        self.assertEqual(stats.token_times(record, 0, 1), [1.0, 2.0, 3.0, 4.0])

    def test_timeline(self):
        """
        The timeline counts frames per bucket, and frames between two
        instants prorate the edge buckets.
        """
        timeline = stats.token_timeline([[0.1, 0.2, 0.6], [0.7]], 0.0, 0.5)
        self.assertEqual(timeline["counts"], [2, 2])
        self.assertEqual(stats.frames_between(timeline, 0.0, 1.0), 4.0)
        self.assertEqual(stats.frames_between(timeline, 0.25, 0.5), 1.0)


class ProcTests(SynchronousTestCase):
    """
    What C{/proc} says, parsed.
    """

    STAT = ("1234 (twistd (x) y) S 1 1234 1234 0 -1 4194560 5000 0 0 0 "
            "250 50 0 0 20 0 3 0 100 200000000 12000 18446744073709551615")

    def test_stat(self):
        """
        CPU seconds are utime plus stime, counted after the command name,
        which may contain spaces and parentheses.
        """
        self.assertEqual(procfs.parse_proc_stat(self.STAT, ticks=100), 3.0)

    def test_status(self):
        """
        VmRSS and VmHWM are read in bytes.
        """
        text = "Name:\ttwistd\nVmHWM:\t  65000 kB\nVmRSS:\t  60000 kB\nThreads:\t3\n"
        self.assertEqual(procfs.parse_proc_status(text),
                         {"rss": 60000 * 1024, "hwm": 65000 * 1024})

    def test_machine(self):
        """
        The machine is busy for everything but idle and iowait.
        """
        text = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n"
        self.assertEqual(procfs.parse_machine_stat(text, ticks=100), (1.5, 10.0))

    def test_interpolate(self):
        """
        Values between samples are interpolated, outside clamped.
        """
        points = [(0.0, 0.0), (1.0, 10.0), (3.0, 10.0)]
        self.assertEqual(procfs.interpolate(points, 0.5), 5.0)
        self.assertEqual(procfs.interpolate(points, -1.0), 0.0)
        self.assertEqual(procfs.interpolate(points, 9.0), 10.0)
        self.assertIsNone(procfs.interpolate([], 1.0))

    def test_sampler_windows(self):
        """
        CPU between two instants and the RSS peak within a window come from
        the samples.
        """
        sampler = procfs.Sampler({"front0": 1})
        for t, cpu, rss in ((0.0, 0.0, 10), (1.0, 0.5, 30), (2.0, 1.5, 20)):
            sampler.samples["front0"].append(procfs.ProcSample(t, cpu, rss, 30))
        self.assertEqual(sampler.cpu_between("front0"), 1.5)
        self.assertEqual(sampler.cpu_between("front0", 1.0, 1.5), 0.5)
        self.assertEqual(sampler.rss("front0", 1.5, None)["peak"], 20)
        self.assertEqual(sampler.rss("front0")["peak"], 30)
        self.assertIsNone(sampler.cpu_between("missing"))


@dataclasses.dataclass(frozen=True)
class _Inner:
    a: int = 1


@dataclasses.dataclass(frozen=True)
class _Outer:
    x: int = 0
    inner: _Inner = dataclasses.field(default_factory=_Inner)


class GatewayConfigTests(SynchronousTestCase):
    """
    The benchmark's gateway configuration.
    """

    def test_unknown_settings_dropped(self):
        """
        Overrides the config schema does not have (yet) are left out, in
        sections too, so the gateway still starts.
        """
        data = {"x": 5, "y": 6, "inner": {"a": 2, "b": 3}, "gone": {"a": 1}}
        self.assertEqual(processes.known_settings(data, _Outer), {"x": 5, "inner": {"a": 2}})

    def test_real_schema_accepts_overrides(self):
        """
        What survives the filter is a valid configuration for this checkout.
        """
        from qwen_twist import config

        data = processes.merge({"tls": {"self_signed": True}}, processes.bench_overrides())
        text = json.dumps(data)
        config.parse(text, "bench.yaml")

    def test_merge(self):
        """
        Nested sections merge key by key.
        """
        self.assertEqual(processes.merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}, "d": 4}),
                         {"a": {"b": 1, "c": 3}, "d": 4})


class FrontTests(SynchronousTestCase):
    """
    A front is an address and a request mapping.
    """

    def test_direct_request(self):
        """
        The direct front speaks Ollama's native chat API, streaming NDJSON.
        """
        front = direct_front("127.0.0.1", 11434)
        raw = front.chat_request("hi", True)
        head, _, body = raw.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"POST /api/chat HTTP/1.1\r\n"))
        self.assertIn(b"Content-Length: %d" % (len(body),), head)
        self.assertEqual(json.loads(body), {
            "model": "qwen3:8b", "messages": [{"role": "user", "content": "hi"}],
            "stream": True})
        self.assertEqual(front.api, OLLAMA)
        self.assertEqual(front.base_url, "http://127.0.0.1:11434")

    def test_qwengate_job(self):
        """
        The qwengate front speaks OpenAI over verified TLS, and its jobs
        carry the SSE framing around the tokens.
        """
        front = qwengate_front("127.0.0.1", 18789, "/tmp/cert.pem", 42)
        job = front.job("stream", "hi", True, streams=3)
        self.assertEqual(job["tls"], {"cafile": "/tmp/cert.pem", "server_hostname": "localhost"})
        self.assertEqual((job["framing"], job["leading"], job["trailing"]), ("sse", 1, 2))
        self.assertEqual(job["streams"], 3)
        self.assertTrue(job["request"].startswith("POST /v1/chat/completions HTTP/1.1"))
        self.assertIn("Accept: text/event-stream", job["request"])
        self.assertEqual(front.pids, (42,))
        self.assertEqual(front.chat_url, "https://127.0.0.1:18789/v1/chat/completions")

    def test_extra_headers(self):
        """
        A front's extra headers (an API key) go into every request.
        """
        front = Front("x", "::1", 8080, OPENAI, headers=(("Authorization", "Bearer k"),))
        self.assertIn(b"Authorization: Bearer k\r\n", front.chat_request("hi", False))
        self.assertEqual(front.base_url, "http://[::1]:8080")

    def test_registry(self):
        """
        The direct baseline and qwengate can be started by name.
        """
        self.assertIn("direct", processes.FRONTS)
        self.assertIn("qwengate", processes.FRONTS)


class WrkTests(SynchronousTestCase):
    """
    The glue to wrk.
    """

    def test_lua_string(self):
        """
        Quotes, backslashes and newlines are escaped for Lua.
        """
        self.assertEqual(reqbench.lua_string('a"b\\c\n'), '"a\\"b\\\\c\\n"')

    def test_script_has_body(self):
        """
        The Lua script posts the front's non-streaming body.
        """
        front = qwengate_front("127.0.0.1", 1, None, 1)
        script = reqbench.wrk_script(front)
        self.assertIn('wrk.method = "POST"', script)
        self.assertIn('\\"stream\\":false', script)
        self.assertIn("latency:percentile(99)", script)

    def test_parse(self):
        """
        wrk's result line becomes the load generator's result shape, in
        milliseconds, with non-2xx answers as errors.
        """
        line = ('WRKJSON {"requests":1000,"duration_us":2000000,"bytes":5,"connect":0,'
                '"read":0,"write":0,"status":3,"timeout":1,"mean":900.0,"min":100.0,'
                '"max":9000.0,"p50":800.0,"p90":1500.0,"p99":4000.0}')
        result = reqbench.parse_wrk("Running 2s test\n" + line + "\n", 1)
        self.assertEqual(result["rps"], 500.0)
        self.assertTrue(result["latency_consistent"])
        self.assertEqual(result["ok"], 997)
        self.assertEqual(result["latency_ms"]["p99"], 4.0)
        self.assertEqual(result["errors"], {"timeout": 1, "non-2xx/3xx": 3})

    def test_inconsistent_latency(self):
        """
        Latencies that add up to more than the connections could have
        waited are flagged.
        """
        line = ('WRKJSON {"requests":19801,"duration_us":4100000,"bytes":5,"connect":0,'
                '"read":0,"write":0,"status":0,"timeout":0,"mean":430.0,"min":100.0,'
                '"max":36000.0,"p50":196.0,"p90":228.0,"p99":8850.0}')
        self.assertFalse(reqbench.parse_wrk(line, 1)["latency_consistent"])
        self.assertTrue(reqbench.parse_wrk(line, 4)["latency_consistent"])

    def test_parse_missing(self):
        """
        No result line is an error that shows wrk's output.
        """
        self.assertRaises(processes.BenchError, reqbench.parse_wrk, "unable to connect")


class ReportTests(SynchronousTestCase):
    """
    Tables, numbers and profile summaries.
    """

    def test_table(self):
        """
        Columns are as wide as their widest cell; numbers align right.
        """
        text = report.table(("name", "n"), [("a", "1"), ("long", "100")])
        self.assertEqual(text.splitlines(), ["name    n", "----  ---", "a       1",
                                             "long  100"])

    def test_fmt(self):
        """
        Missing values show as a dash, deltas carry their sign.
        """
        self.assertEqual(report.fmt(None), "-")
        self.assertEqual(report.fmt(1.234, 1), "1.2")
        self.assertEqual(report.fmt(0.5, 2, "+ms"), "+0.50ms")
        self.assertEqual(report.fmt(-0.5, 2, "+"), "-0.50")

    def test_top_functions(self):
        """
        Own time counts the leaf frame, inclusive time every frame once;
        lines of one function are merged; the project's own functions are
        listed by inclusive share.
        """
        lines = [
            "main (a/loop.py:1);relay (qwen_twist/streaming.py:10);dumps (json/enc.py:5) 6\n",
            "main (a/loop.py:1);relay (qwen_twist/streaming.py:12) 3\n",
            "main (a/loop.py:2) 1\n",
            "garbage\n",
        ]
        result = report.top_functions(lines, 2, focus="/qwen_twist/")
        self.assertEqual(result["samples"], 10)
        self.assertEqual([e["function"] for e in result["top"]],
                         ["dumps (json/enc.py)", "relay (qwen_twist/streaming.py)"])
        self.assertEqual(result["top"][1]["self_pct"], 30.0)
        self.assertEqual(result["top"][1]["total_pct"], 90.0)
        self.assertEqual([e["function"] for e in result["focus_top"]],
                         ["relay (qwen_twist/streaming.py)"])

    def test_save(self):
        """
        Results are written as JSON named after the command and the time.
        """
        import datetime

        directory = Path(self.mktemp())
        path = report.save("stream", {"a": 1}, directory,
                           now=datetime.datetime(2026, 1, 2, 3, 4, 5))
        self.assertEqual(path.name, "stream-20260102-030405.json")
        self.assertEqual(json.loads(path.read_text()), {"a": 1})


class StreamBenchTests(SynchronousTestCase):
    """
    Scripts and verdicts of the streaming benchmark.
    """

    def test_token_script(self):
        """
        A case's script asks for exactly rate x duration one-word chunks,
        without thinking.
        """
        case = streambench.StreamCase(100, 50, 10)
        script = streambench.token_script(case.rate, case.tokens)["default"]
        self.assertEqual(case.tokens, 500)
        self.assertEqual(len(script["text"].split()), 500)
        self.assertEqual(script["thinking"], "")
        self.assertEqual(script["tokens_per_second"], 50)

    def test_bulk_script(self):
        """
        The slow-reader script produces the asked megabytes in chunks of
        the asked size.
        """
        case = streambench.SlowReaderCase(streams=2, hold=1.0, megabytes=2, chunk_kib=16)
        script = streambench.bulk_script(case)["default"]
        self.assertEqual(len(script["text"]), 2 * 1024 * 1024)
        self.assertEqual(script["tokens"], 128)

    def test_baseline_short_is_said(self):
        """
        When the direct run itself falls short of the offered load, the
        notes say the machine cannot sustain it rather than blaming a front.
        """
        case = streambench.StreamCase(10, 10, 1)
        lg = {"streams_ok": 10, "problems": {}, "connect_errors": {}, "relayed_ratio": 0.6,
              "offered_rate": 100.0}
        notes = streambench.notes_for(case, {"direct": {"loadgen": lg}})
        self.assertIn("direct baseline itself only achieved 60%", notes[0])


class CommandLineTests(SynchronousTestCase):
    """
    C{python -m bench}'s arguments.
    """

    def test_default_is_all_quick(self):
        """
        No arguments means everything, quick profile, every front (peers
        not installed are skipped at run time).
        """
        options = cli.parse_args([])
        self.assertEqual((options.command, options.profile), ("all", "quick"))
        self.assertEqual(options.fronts, ["direct", "nginx", "litellm", "qwengate"])

    def test_churn_options(self):
        """
        The churn case's clients, tokens and duration can be changed.
        """
        options = cli.parse_args(["churn", "--churn-clients", "10", "--churn-duration", "2",
                                  "--fronts", "direct,nginx"])
        self.assertEqual((options.command, options.churn_clients, options.churn_duration),
                         ("churn", 10, 2.0))
        self.assertEqual(options.fronts, ["direct", "nginx"])

    def test_options_without_command(self):
        """
        Options without a command apply to C{all}.
        """
        options = cli.parse_args(["--profile", "full"])
        self.assertEqual((options.command, options.profile), ("all", "full"))

    def test_requests_options(self):
        """
        Concurrencies are a comma-separated list.
        """
        options = cli.parse_args(["requests", "--concurrency", "1,8", "--tool", "python"])
        self.assertEqual(options.concurrency, (1, 8))
        self.assertEqual(options.tool, "python")

    def test_unknown_front(self):
        """
        An unknown front is a usage error.
        """
        self.patch(sys, "stderr", io.StringIO())
        self.assertRaises(SystemExit, cli.parse_args, ["stream", "--fronts", "direct,nope"])

    def test_single_case(self):
        """
        C{--streams/--rate/--duration} replace the profile's cases with one.
        """
        options = cli.parse_args(["stream", "--streams", "7", "--rate", "3"])
        cases, slow = cli.stream_cases(options)
        self.assertEqual([(c.streams, c.rate, c.duration) for c in cases], [(7, 3.0, 10)])


class ChurnTests(SynchronousTestCase):
    """
    The churn case: its load generator client and its report.
    """

    def run_of(self):
        return loadgen.ChurnRun(None, b"GET / HTTP/1.1\r\n\r\n", b"\n\n", b"data: [DONE]")

    def test_client_counts_frames_and_completes(self):
        """
        A chunked SSE stream is counted frame by frame; a complete one (200
        and [DONE]) is ok, and the client sends its next request.
        """
        run = self.run_of()
        run.recording = True
        run.deadline = float("inf")
        client = loadgen.ChurnClient.__new__(loadgen.ChurnClient)
        sent = []
        client._run = run
        client.dead = False
        client._buffer = b""
        client._decoder = None
        client._status = 0
        client._sent = 0.0
        client._counter = None

        class Transport:
            def write(self, data):
                sent.append(data)

        client.transport = Transport()

        class Idle:
            def done(self):
                return False

            def set_result(self, value):
                pass

        client.idle = Idle()
        client.send()
        body = b"data: {}\n\n" * 3 + b"data: [DONE]\n\n"
        client.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        client.data_received(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        self.assertEqual(run.frames, 4)
        self.assertEqual(run.statuses, {"200": 1})
        self.assertEqual(run.incomplete, 0)
        self.assertEqual(len(sent), 2)

    def test_breaker_transitions(self):
        """
        Breaker transitions are counted from the gateway's log.
        """
        path = Path(self.mktemp())
        path.write_text("x\ncircuit breaker for Ollama at 'a': closed -> open\n"
                        "circuit breaker for Ollama at 'a': open -> half_open\n", "utf-8")
        self.assertEqual(churnbench.breaker_transitions(path), 2)
        self.assertIsNone(churnbench.breaker_transitions(None))

    def test_table_and_notes(self):
        """
        The table shows every front with the ratio to direct; the notes
        name failed streams and breaker transitions.
        """
        def run(frames_per_s, failed, transitions=None, statuses=None):
            return {"loadgen": {"ok": 100 - failed, "failed": failed, "frames_per_s": frames_per_s,
                                "streams_per_s": 10.0, "latency_ms": {"p50": 1.0, "p99": 2.0},
                                "statuses": statuses or {"200": 100}, "errors": {},
                                "streams": 100},
                    "emulator_counters": {"connections": 3}, "cpu_us_per_chunk": 30.0,
                    "breaker_transitions": transitions}

        runs = {"direct": run(80000.0, 0), "qwengate": run(20000.0, 10, 1, {"200": 90,
                                                                              "503": 10})}
        case = churnbench.ChurnCase()
        text = churnbench.churn_table(case, runs)
        self.assertIn("0.250x", text)
        notes = churnbench.notes_for(case, runs)
        self.assertTrue(any("10 of 100 streams failed (10x 503)" in n for n in notes), notes)
        self.assertTrue(any("1 circuit breaker transitions" in n for n in notes), notes)
        self.assertTrue(any("below the 25000 target" in n for n in notes), notes)


class PeerTests(SynchronousTestCase):
    """
    The peers' configurations.
    """

    def test_nginx_config(self):
        """
        nginx relays TLS to the emulator: one worker, no buffering, upstream
        keep-alive over HTTP/1.1.
        """
        text = peers.nginx_config(Path("/w"), 8443, 11434, Path("/w/c.pem"), Path("/w/k.pem"))
        for needle in ("worker_processes 1;", "proxy_buffering off;", "keepalive 256;",
                       "proxy_http_version 1.1;", 'proxy_set_header Connection "";',
                       "listen 127.0.0.1:8443 ssl;", "server 127.0.0.1:11434;"):
            self.assertIn(needle, text)
        self.assertNotIn("user root", text)
        self.assertIn("user root;", peers.nginx_config(Path("/w"), 1, 2, Path("c"), Path("k"),
                                                        as_root=True))

    def test_litellm_config(self):
        """
        LiteLLM serves the benchmark model through ollama_chat/.
        """
        text = peers.litellm_config("http://127.0.0.1:9")
        self.assertIn('model: "ollama_chat/qwen3:8b"', text)
        self.assertIn('api_base: "http://127.0.0.1:9"', text)

    def test_missing_peer_skipped(self):
        """
        A peer that is not installed is skipped with a message; the
        baseline and qwengate are never skipped.
        """
        def missing(stack):
            raise processes.PeerMissing("not installed")

        stack = processes.Stack(fronts={"litellm": missing})
        self.addCleanup(stack.close)
        skipped = []
        self.assertIsNone(stack.available_front("litellm", skipped))
        self.assertEqual(skipped, ["litellm skipped: not installed"])


class MicroTests(SynchronousTestCase):
    """
    C{python -m bench.micro}: the in-process hot-path measurements run.
    """

    def test_in_process_cases(self):
        """
        The access log and relay cases measure a positive CPU time per
        iteration (the upstream case needs a running reactor: it is left to
        the command line).
        """
        from bench import micro

        self.assertGreater(micro.best_of(lambda n: None, 10, rounds=2), -1.0)
        self.assertGreater(micro.relay_chunk(50), 0.0)
        self.assertGreater(micro.access_log(50), 0.0)
        self.assertEqual(set(micro.CASES), {"access_log", "relay_chunk", "upstream_call"})


class LayerTests(SynchronousTestCase):
    """
    py-spy samples grouped by layer of the stack.
    """

    def test_layers(self):
        """
        The leaf frame's file decides the layer; unknown files are other.
        """
        raw = [
            "run (twisted/internet/base.py:1);dataReceived (qwen_twist/web/relay.py:9) 3\n",
            "run (twisted/internet/base.py:1);send (OpenSSL/SSL.py:2050) 1\n",
            "run (twisted/internet/base.py:1);untilConcludes (twisted/python/util.py:760) 4\n",
            "run (twisted/internet/base.py:1);x (somewhere/else.py:1) 2\n",
            "garbage\n",
        ]
        shares = report.layer_shares(raw)
        self.assertEqual(shares["samples"], 10)
        got = {e["layer"].split(" (")[0]: e["pct"] for e in shares["layers"]}
        self.assertEqual(got, {"reactor and sockets": 40.0, "qwen_twist": 30.0,
                               "other": 20.0, "TLS": 10.0})
        self.assertIn("share of samples", report.layer_table(shares, "t"))


class BurstTests(SynchronousTestCase):
    """
    The burst case's report.
    """

    def test_table_and_notes(self):
        """
        Every front gets a column; qwengate's first byte more than 50 ms
        after nginx's is noted, and so are clients left unanswered.
        """
        from bench import burst

        def run(p50, ok=100):
            return {"loadgen": {"clients": 100, "ok": ok, "errors": {"reset": 100 - ok} if ok < 100
                                else {}, "ttfb_ms": {"p50": p50, "p99": p50 * 2},
                                "total_ms": {"p50": p50, "p99": p50 * 2}},
                    "front_cpu_s": 0.05}

        runs = {"nginx": run(300.0), "qwengate": run(400.0, ok=99)}
        text = burst.burst_table(burst.BurstCase(), runs)
        self.assertIn("99/100", text)
        self.assertIn("400.0", text)
        notes = burst.notes_for(runs)
        self.assertTrue(any("100.0 ms after nginx's" in n for n in notes), notes)
        self.assertTrue(any("99 of 100 clients answered (1x reset)" in n for n in notes), notes)
        self.assertEqual(burst.notes_for({"nginx": run(300.0), "qwengate": run(320.0)}), [])


class HostileTests(SynchronousTestCase):
    """
    L{bench.hostile}: the issue 9 reproductions' command line.
    """

    def test_usage(self) -> None:
        """
        An unknown scenario prints the usage and exits 2; every scenario
        named there exists.
        """
        from bench import hostile

        err = io.StringIO()
        self.patch(sys, "stderr", err)
        self.assertEqual(hostile.main(["nope"]), 2)
        self.assertIn("body-flood", err.getvalue())
        self.assertEqual(sorted(hostile.SCENARIOS),
                         ["body-flood", "body-hold", "embeddings", "greedy"])

    def test_read_response(self) -> None:
        """
        The raw reader returns the head and consumes a Content-Length body.
        """
        from bench import hostile

        class Sock:
            def __init__(self, data: bytes) -> None:
                self.data = [data[:10], data[10:]]

            def recv(self, n: int) -> bytes:
                return self.data.pop(0) if self.data else b""

        sock = Sock(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\n{}")
        self.assertEqual(hostile._read_response(sock),
                         b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2")
