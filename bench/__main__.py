# -*- test-case-name: tests.test_bench -*-
"""
C{python -m bench [all|stream|churn|burst|requests] [options]} (C{./qwengate-dev bench}).

Why one entry point with a quick default: developers run C{./qwengate-dev
bench} before and after a change and compare; the default (C{all} with the
quick profile) finishes in about two minutes and prints readable tables,
and every run also writes its full figures to
C{bench/results/<name>-<timestamp>.json} (git-ignored) for later
comparison. C{--profile full} adds the 1,000-stream case and longer runs.

Fronts: C{direct} (the baseline), C{nginx} (a pure TLS relay), C{litellm}
(LiteLLM's proxy) and C{qwengate}, all in front of the same emulator in the
same run; a peer that is not installed is skipped with a message
(C{./qwengate-dev bench --install-peers} installs nginx and LiteLLM).

CPU profiles: C{--cpu-profile py-spy} (or C{QWENGATE_BENCH_CPU_PROFILE=py-spy})
adds one streaming phase with py-spy attached to the gateway and prints
its top 10 functions; C{cprofile} runs the whole gateway under twistd's
C{--profile} hook instead (slower: its figures are not comparable).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Dict, List, Optional

from bench import burst as burst_bench, churn as churn_bench, requests as requests_bench
from bench import stream as stream_bench
from bench.peers import ALL_FRONTS as FRONTS
from bench.processes import BenchError, Stack
from bench.report import environment, fmt, profile_table, save, table, top_pstats


def _concurrency(text: str) -> tuple:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("expected comma-separated integers, got %r" % (text,))
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrencies must be >= 1")
    return values


def _fronts(text: str) -> List[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FRONTS]
    if unknown:
        raise argparse.ArgumentTypeError("unknown front(s) %s; known: %s"
                                         % (", ".join(unknown), ", ".join(FRONTS)))
    if not names:
        raise argparse.ArgumentTypeError("no front given")
    return names


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--profile", choices=("quick", "full"), default="quick",
                        help="quick (default: 100 streams, 5 s per request point) or full "
                             "(adds 1,000 streams x 20 tokens/s, longer runs)")
    common.add_argument("--fronts", type=_fronts, default=list(FRONTS),
                        help="comma-separated fronts, the baseline first (default: all "
                             "of %s; peers not installed are skipped)" % (", ".join(FRONTS),))
    common.add_argument("--python", default=sys.executable,
                        help="interpreter for the emulator, the gateway (its twistd beside "
                             "it) and the load generator (default: this one)")
    common.add_argument("--cpu-profile", choices=("none", "py-spy", "cprofile"),
                        default=os.environ.get("QWENGATE_BENCH_CPU_PROFILE", "none"),
                        help="profile the gateway (default: $QWENGATE_BENCH_CPU_PROFILE or none)")
    common.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (configs, logs, jobs)")
    common.add_argument("--no-save", action="store_true", help="do not write the JSON results")

    stream_opts = argparse.ArgumentParser(add_help=False)
    stream_opts.add_argument("--streams", type=int, help="one case: S concurrent streams")
    stream_opts.add_argument("--rate", type=float, help="one case: tokens/s per stream")
    stream_opts.add_argument("--duration", type=float, help="one case: seconds per stream")
    stream_opts.add_argument("--ramp", type=float,
                             help="one case: seconds over which the requests are spread")
    stream_opts.add_argument("--no-slow-reader", action="store_true",
                             help="skip the slow-reader memory check")
    stream_opts.add_argument("--slow-streams", type=int, help="slow reader: streams")
    stream_opts.add_argument("--hold", type=float, help="slow reader: seconds without reading")
    stream_opts.add_argument("--slow-mb", type=int, help="slow reader: MB per stream")

    churn_opts = argparse.ArgumentParser(add_help=False)
    churn_opts.add_argument("--churn-clients", type=int, help="churn: concurrent clients")
    churn_opts.add_argument("--churn-tokens", type=int, help="churn: tokens per stream")
    churn_opts.add_argument("--churn-duration", type=float, help="churn: seconds measured")

    request_opts = argparse.ArgumentParser(add_help=False)
    request_opts.add_argument("--concurrency", type=_concurrency,
                              help="comma-separated concurrencies (default 1,16,64)")
    request_opts.add_argument("--request-duration", type=float,
                              help="seconds per measured point")
    request_opts.add_argument("--tool", choices=("python", "wrk"), default="python",
                              help="request client: the Python load generator (default) or "
                                   "wrk (apt-get installed when missing, as root)")

    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="qwengate benchmarks, reported against the Ollama emulator accessed "
                    "directly in the same run.")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("all", parents=[common, stream_opts, churn_opts, request_opts],
                   help="streaming, slow reader, churn and requests (default)")
    sub.add_parser("stream", parents=[common, stream_opts],
                   help="S streams x R tokens/s, direct vs fronts; slow-reader check")
    sub.add_parser("churn", parents=[common, churn_opts],
                   help="100 clients opening full-speed streams of 100 tokens back to back")
    sub.add_parser("burst", parents=[common],
                   help="100 new TLS clients at once, one request each")
    sub.add_parser("requests", parents=[common, request_opts],
                   help="non-streaming requests/s and added latency at c=1,16,64")
    return parser


def parse_args(argv: List[str]) -> argparse.Namespace:
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["all"] + list(argv)
    return build_parser().parse_args(argv)


def stream_cases(options: argparse.Namespace) -> tuple:
    cases, slow = stream_bench.PROFILES[options.profile]
    if options.streams or options.rate or options.duration or options.ramp is not None:
        base = cases[0]
        cases = (stream_bench.StreamCase(options.streams or base.streams,
                                         options.rate or base.rate,
                                         options.duration or base.duration,
                                         base.ramp if options.ramp is None else options.ramp),)
    if options.slow_streams or options.hold or options.slow_mb:
        slow = stream_bench.SlowReaderCase(options.slow_streams or slow.streams,
                                           options.hold or slow.hold,
                                           options.slow_mb or slow.megabytes)
    return cases, slow


def with_notes(text: str, notes: List[str]) -> str:
    return "\n".join([text] + ["  note: " + n for n in notes])


def run(options: argparse.Namespace, log: Any = print) -> Dict[str, Any]:
    command = options.command
    results: Dict[str, Any] = {"command": command, "profile": options.profile,
                               "fronts": options.fronts, "environment": environment(),
                               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    outputs: List[str] = []
    cprofile = options.cpu_profile == "cprofile"
    if cprofile:
        log("note: the gateway runs under cProfile: its figures are not comparable")
    started = time.monotonic()
    with Stack(python=options.python, keep=options.keep, cprofile=cprofile,
               fronts=FRONTS) as stack:
        if options.keep:
            log("temporary directory: %s" % (stack.workdir,))
        skipped: List[str] = []
        fronts = [name for name in options.fronts
                  if stack.available_front(name, skipped) is not None]
        for message in skipped:
            log("note: " + message)
        options.fronts = fronts
        results["fronts"] = fronts
        results["skipped"] = skipped
        if skipped:
            outputs.append("\n".join("note: " + m for m in skipped))
        if command in ("all", "stream"):
            cases, slow = stream_cases(options)
            results["stream"] = []
            for case in cases:
                result = stream_bench.run_case(stack, case, options.fronts, log)
                results["stream"].append(result)
                outputs.append(with_notes(result["table"], result["notes"]))
            if not options.no_slow_reader and "qwengate" in options.fronts:
                result = stream_bench.run_slow_reader(stack, slow, "qwengate", log)
                results["slow_reader"] = result
                outputs.append(result["table"])
            if options.cpu_profile == "py-spy":
                result = stream_bench.profile_case(stack, cases[0], "qwengate", log)
                results["cpu_profile"] = result
                text = result.get("table") or "CPU profile: %s" % (result.get("error"),)
                outputs.append(text)
        if command in ("all", "churn"):
            case = churn_bench.PROFILES[options.profile]
            case = churn_bench.ChurnCase(options.churn_clients or case.concurrency,
                                         options.churn_tokens or case.tokens,
                                         options.churn_duration or case.duration,
                                         case.warmup)
            result = churn_bench.run_churn(stack, case, options.fronts, log)
            results["churn"] = result
            outputs.append(with_notes(result["table"], result["notes"]))
            if options.cpu_profile == "py-spy" and "qwengate" in options.fronts:
                stack.emulator().set_script(stream_bench.token_script(0, case.tokens))
                result = stream_bench.profile_case(stack, case, "qwengate", log,
                                                   phase=churn_bench.measure)
                results["churn_cpu_profile"] = result
                outputs.append(result.get("table") or "CPU profile: %s" % (result.get("error"),))
        if command in ("all", "burst"):
            result = burst_bench.run_burst(stack, burst_bench.BurstCase(), options.fronts, log)
            results["burst"] = result
            outputs.append(with_notes(result["table"], result["notes"]))
        if command in ("all", "requests"):
            profile = requests_bench.PROFILES[options.profile]
            if options.concurrency or options.request_duration:
                profile = requests_bench.RequestsProfile(
                    options.concurrency or profile.concurrency,
                    options.request_duration or profile.duration, profile.warmup)
            result = requests_bench.run_requests(stack, profile, options.fronts,
                                                 options.tool, log)
            results["requests"] = result
            outputs.append(with_notes(result["table"], result["notes"]))
            if options.cpu_profile == "py-spy" and "qwengate" in options.fronts:
                case = requests_bench.ProfiledPoint(max(profile.concurrency),
                                                    profile.duration)
                result = stream_bench.profile_case(stack, case, "qwengate", log,
                                                   phase=requests_bench.profiled_phase)
                results["requests_cpu_profile"] = result
                outputs.append(result.get("table") or "CPU profile: %s" % (result.get("error"),))
        if cprofile and stack.cprofile_path is not None:
            stack.stop_gateway()
            if stack.cprofile_path.exists():
                profile_result = top_pstats(str(stack.cprofile_path), 10)
                results["cpu_profile"] = profile_result
                text = profile_table(profile_result, "Gateway CPU by function (cProfile, "
                                                     "whole run, own time)")
                outputs.append(text)
        startup = stack.startup()
        results["startup_s"] = startup
        if startup:
            outputs.append(table(("front", "start to first answer s"),
                                 [(name, fmt(seconds, 2)) for name, seconds in startup.items()],
                                 "Cold start (process start to its first HTTP answer)"))
    results["seconds"] = round(time.monotonic() - started, 1)
    results["report"] = "\n\n".join(outputs)
    return results


def main(argv: Optional[List[str]] = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    print("qwengate benchmarks: %s, %s profile, fronts %s (python %s)"
          % (options.command, options.profile, ",".join(options.fronts), options.python))
    try:
        results = run(options)
    except BenchError as e:
        print("bench: error: %s" % (e,), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; processes stopped", file=sys.stderr)
        return 130
    print("\n==== summary (%.0f s) ====\n" % (results["seconds"],))
    print(results["report"])
    if not options.no_save:
        path = save(options.command, results)
        print("\nresults: %s" % (path,))
    return 0


if __name__ == "__main__":
    sys.exit(main())
