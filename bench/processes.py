# -*- test-case-name: tests.test_bench -*-
"""
The real processes of a benchmark run: start them, watch them, stop them.

Why real processes: the gateway's cost is measured as its own CPU time and
resident memory, read from C{/proc} (L{bench.procfs}), so it must not share
a process with the emulator or the load generator.
The emulator runs as C{python -m qwen_twist.emulator --port 0}; the gateway
as C{twistd --nodaemon --pidfile= --logfile=FILE qwengate --config FILE}
with a temporary configuration (loopback, a free port, a self-signed
certificate in a temporary state directory, C{upstream.url} pointing at the
emulator); the load generator as C{python -m bench.loadgen}.

Every child runs in its own session (so a Ctrl-C reaches only the harness,
which then stops them in order) and gets C{PR_SET_PDEATHSIG} (so they die
with the harness even when it is killed). L{Stack} owns them and stops them
on exit, error or Ctrl-C.

L{known_settings} and L{merge}, which build the gateway's configuration,
are pure (tested); the rest does I/O.
"""

from __future__ import annotations

import ctypes
import dataclasses
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from bench.fronts import Front, direct_front, qwengate_front
from bench.procfs import Sampler
from qwen_twist.schema import merge_settings as merge

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"

clock = time.monotonic


class BenchError(Exception):
    """
    A benchmark could not run (a process did not start, a control call
    failed); the message says which and shows the end of its log.
    """


class PeerMissing(Exception):
    """
    A peer front is not installed; the message says how to install it.
    """


# -- children --------------------------------------------------------------


def _child_setup() -> None:
    """
    In each child before exec: many open files allowed, and die with the
    harness (PR_SET_PDEATHSIG = 1).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    except Exception:
        pass


def child_env() -> Dict[str, str]:
    """
    The environment of every child: the checkout first on C{sys.path} (so
    twistd finds C{twisted/plugins/qwengate_plugin.py} and the load
    generator finds C{bench}).
    """
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port(host: str = LOOPBACK) -> int:
    """
    A TCP port nobody listens on right now.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ManagedProcess:
    """
    A child process with its output in a log file.
    """

    def __init__(self, name: str, argv: List[str], workdir: Path) -> None:
        self.name = name
        self.argv = argv
        self.workdir = workdir
        self.log_path = workdir / ("%s.out" % (name,))
        self.proc: Optional[subprocess.Popen] = None
        self._log: Any = None

    def start(self) -> None:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            cwd=str(REPO_ROOT), env=child_env(), start_new_session=True,
            preexec_fn=_child_setup)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """
        SIGTERM, then SIGKILL after C{timeout} seconds; the exit status.
        """
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def log_tail(self, lines: int = 15, path: Optional[Path] = None) -> str:
        try:
            text = (path or self.log_path).read_text("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Emulator(ManagedProcess):
    """
    The Ollama emulator on a free loopback port, with its control paths.
    """

    STARTUP = "listening on http://"

    def __init__(self, workdir: Path, python: str = sys.executable, host: str = LOOPBACK) -> None:
        super().__init__("emulator", [python, "-m", "qwen_twist.emulator", "--host", host,
                                      "--port", "0"], workdir)
        self.host = host
        self.port = 0

    def start(self, timeout: float = 30.0) -> None:
        super().start()
        deadline = clock() + timeout
        while clock() < deadline:
            text = self.log_path.read_text("utf-8", "replace")
            at = text.find(self.STARTUP)
            if at >= 0 and "\n" in text[at:]:
                address = text[at + len(self.STARTUP):].split()[0]
                self.port = int(address.rsplit(":", 1)[1].rstrip("/"))
                return
            if not self.alive():
                break
            time.sleep(0.05)
        raise BenchError("the emulator did not start:\n%s" % (self.log_tail(),))

    @property
    def url(self) -> str:
        return "http://%s:%d" % (self.host, self.port)

    def call(self, method: str, path: str, body: Any = None, timeout: float = 60.0) -> Any:
        """
        One control call; the decoded JSON answer.
        """
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            data = json.dumps(body).encode("utf-8") if body is not None else None
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            payload = response.read()
        except OSError as e:
            raise BenchError("emulator %s %s failed: %s" % (method, path, e))
        finally:
            conn.close()
        if response.status >= 400:
            raise BenchError("emulator %s %s: HTTP %d %s"
                             % (method, path, response.status, payload[:300]))
        return json.loads(payload) if payload else None

    def set_script(self, script: Dict[str, Any]) -> None:
        self.call("POST", "/_emulator/script", script)

    def reset(self) -> None:
        self.call("POST", "/_emulator/reset", {})

    def counters(self) -> Dict[str, int]:
        return self.call("GET", "/_emulator/record")["counters"]


#: Settings that would throttle or refuse a benchmark's load rather than
#: measure it: one client address opening 1,000 connections at once and
#: sending thousands of requests per second, without an API key. Applied
#: only where the gateway's configuration schema has them (it grows).
BENCH_OVERRIDES: Dict[str, Any] = {
    "auth": {"required": False},
    "connections": {"max_total": 1000000, "max_per_ip": 1000000, "rate": 1000000.0,
                    "burst": 1000000},
    "rate_limits": {"per_key_requests": 0, "per_ip_rate": 0.0},
    "bans": {"failures": 0},
    # The relay is measured, not the GPU queue (a real deployment sets
    # admission.slots to Ollama's parallelism).
    "admission": {"slots": 0},
}


def known_settings(data: Dict[str, Any], schema: Any) -> Dict[str, Any]:
    """
    The part of C{data} that the config dataclass C{schema} knows: sections
    are fields whose default factory is itself a dataclass; unknown keys
    (a setting this version does not have yet) are dropped.
    """
    fields = {f.name: f for f in dataclasses.fields(schema)}
    out: Dict[str, Any] = {}
    for key, value in data.items():
        f = fields.get(key)
        if f is None:
            continue
        section = f.default_factory  # type: ignore[misc]
        if isinstance(value, dict) and dataclasses.is_dataclass(section):
            inner = known_settings(value, section)
            if inner:
                out[key] = inner
        else:
            out[key] = value
    return out


def bench_overrides() -> Dict[str, Any]:
    """
    L{BENCH_OVERRIDES} reduced to what this checkout's config accepts.
    """
    try:
        from qwen_twist.config import Config
    except ImportError:
        return {}
    return known_settings(BENCH_OVERRIDES, Config)




def twistd_command(python: str) -> List[str]:
    """
    The venv's C{twistd} script beside C{python} (C{python -m twisted} fails
    in a venv on Twisted 22.4), or Debian's C{/usr/bin/twistd3} beside
    C{/usr/bin/python3} (the package build's tests), else C{python -m
    twisted}.
    """
    for name in ("twistd", "twistd3"):  # twistd3: Debian's python3-twisted
        script = Path(python).parent / name
        if script.exists():
            return [str(script)]
    return [python, "-m", "twisted"]


class Gateway(ManagedProcess):
    """
    qwengate under twistd with a temporary configuration: loopback, a free
    port, a self-signed certificate, the emulator upstream, and
    L{BENCH_OVERRIDES} (no API key, no connection or rate limits), so that
    what is measured is the relay, not the throttles.

    @ivar cprofile: when set, twistd's own C{--profile} hook writes
        C{pstats} there at shutdown (slows the gateway down: the figures of
        such a run are not comparable).
    """

    def __init__(self, workdir: Path, upstream_url: str, python: str = sys.executable,
                 host: str = LOOPBACK, overrides: Optional[Dict[str, Any]] = None,
                 cprofile: Optional[Path] = None) -> None:
        self.host = host
        self.port = free_port(host)
        self.state_dir = workdir / "gateway-state"
        self.config_path = workdir / "gateway.yaml"
        self.gateway_log = workdir / "gateway.log"
        self.cprofile = cprofile
        config: Dict[str, Any] = {
            "state_dir": str(self.state_dir),
            "listen": {"address": host, "port": self.port},
            "tls": {"self_signed": True},
            "upstream": {"url": upstream_url},
        }
        config = merge(merge(config, bench_overrides()), overrides or {})
        self.config = config
        # JSON is YAML: no quoting surprises.
        self.config_path.write_text(json.dumps(config, indent=2) + "\n", "utf-8")
        argv = twistd_command(python) + ["--nodaemon", "--pidfile=",
                                         "--logfile=%s" % (self.gateway_log,)]
        if cprofile is not None:
            argv += ["--profile=%s" % (cprofile,), "--profiler=cprofile", "--savestats"]
        argv += ["qwengate", "--config", str(self.config_path)]
        super().__init__("gateway", argv, workdir)

    @property
    def cafile(self) -> str:
        return str(self.state_dir / "tls" / "cert.pem")

    def start(self, timeout: float = 60.0) -> None:
        started = clock()
        super().start()
        deadline = clock() + timeout
        last = "no answer"
        while clock() < deadline:
            if not self.alive():
                break
            if os.path.exists(self.cafile):
                try:
                    ctx = ssl.create_default_context(cafile=self.cafile)
                    conn = http.client.HTTPSConnection(self.host, self.port, timeout=5,
                                                       context=ctx)
                    conn.request("GET", "/health", headers={"Host": "localhost"})
                    status = conn.getresponse().status
                    conn.close()
                    if status == 200:
                        self.startup_s = clock() - started
                        return
                    last = "GET /health: HTTP %d" % (status,)
                except (OSError, ssl.SSLError, http.client.HTTPException) as e:
                    last = str(e)
            time.sleep(0.1)
        raise BenchError("the gateway did not start (%s):\n%s\n%s" % (
            last, self.log_tail(), self.log_tail(path=self.gateway_log)))


# -- the stack -------------------------------------------------------------


class Stack:
    """
    The processes of one benchmark run, started on first use, stopped (in
    reverse order) by L{close}, which the context manager calls on exit,
    error and Ctrl-C; SIGTERM and SIGHUP are turned into Ctrl-C meanwhile.

    @ivar workdir: temporary directory for configs, logs, jobs and results.
    """

    def __init__(self, python: str = sys.executable, keep: bool = False,
                 gateway_overrides: Optional[Dict[str, Any]] = None,
                 cprofile: bool = False,
                 fronts: Optional[Dict[str, Callable[["Stack"], Front]]] = None) -> None:
        self.python = python
        self.fronts = dict(FRONTS if fronts is None else fronts)
        self._peers: Dict[str, Any] = {}
        self.keep = keep
        self.workdir = Path(tempfile.mkdtemp(prefix="qwengate-bench-"))
        self._emulator: Optional[Emulator] = None
        self._gateway: Optional[Gateway] = None
        self._gateway_overrides = gateway_overrides
        self.cprofile_path = self.workdir / "gateway.pstats" if cprofile else None
        self._started: List[ManagedProcess] = []
        self._saved_handlers: Dict[int, Any] = {}
        self._jobs = 0

    def __enter__(self) -> "Stack":
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._saved_handlers[sig] = signal.signal(sig, self._interrupt)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
        for sig, handler in self._saved_handlers.items():
            signal.signal(sig, handler)

    @staticmethod
    def _interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("signal %d" % (signum,))

    def emulator(self) -> Emulator:
        if self._emulator is None:
            emulator = Emulator(self.workdir, self.python)
            self._started.append(emulator)
            emulator.start()
            self._emulator = emulator
        return self._emulator

    def gateway(self) -> Gateway:
        if self._gateway is None:
            gateway = Gateway(self.workdir, self.emulator().url, self.python,
                              overrides=self._gateway_overrides, cprofile=self.cprofile_path)
            self._started.append(gateway)
            gateway.start()
            self._gateway = gateway
        return self._gateway

    def restart(self, front_name: str) -> None:
        """
        Stop the processes of C{front_name} so that its next use starts
        fresh ones (a clean memory baseline); the emulator is kept.
        """
        if front_name == "qwengate" and self._gateway is not None:
            self._gateway.stop()
            self._started.remove(self._gateway)
            self._gateway = None

    def stop_gateway(self) -> None:
        """
        Stop the gateway now (twistd writes the cProfile stats on exit).
        """
        if self._gateway is not None:
            self._gateway.stop()

    def front(self, name: str) -> Front:
        """
        The running front called C{name} (see L{FRONTS}).

        @raise PeerMissing: a peer that is not installed.
        """
        try:
            build = self.fronts[name]
        except KeyError:
            raise BenchError("unknown front %r (known: %s)" % (name, ", ".join(self.fronts)))
        return build(self)

    def available_front(self, name: str, skipped: List[str]) -> Optional[Front]:
        """
        L{front}, or L{None} for a peer that is not installed or does not
        start (with a message appended to C{skipped}); C{direct} and
        C{qwengate} must start.
        """
        try:
            return self.front(name)
        except PeerMissing as e:
            skipped.append("%s skipped: %s" % (name, e))
        except BenchError as e:
            if name in ("direct", "qwengate"):
                raise
            skipped.append("%s skipped: %s" % (name, str(e).splitlines()[0]))
        return None

    def peer(self, name: str, factory: Callable[[], ManagedProcess]) -> Any:
        """
        The running peer process C{name}, started with C{factory()} on
        first use and stopped with the stack.
        """
        process = self._peers.get(name)
        if process is None:
            process = factory()
            self._started.append(process)
            process.start()
            self._peers[name] = process
        return process

    def startup(self) -> Dict[str, float]:
        """
        Seconds from process start to the first answer, per started front
        (qwengate and the peers).
        """
        out: Dict[str, float] = {}
        for process in [self._gateway] + list(self._peers.values()):
            seconds = getattr(process, "startup_s", None)
            if seconds is not None:
                out["qwengate" if process is self._gateway else process.name] = seconds
        return out

    def front_log(self, name: str) -> Optional[Path]:
        """
        The log file of front C{name}'s service (qwengate's twistd log),
        if it has one.
        """
        if name == "qwengate" and self._gateway is not None:
            return self._gateway.gateway_log
        return None

    def close(self) -> None:
        for process in reversed(self._started):
            try:
                process.stop()
            except Exception:
                pass
        self._started = []
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # running watched children

    def watch(self, argv: List[str], pids: Dict[str, int], timeout: float,
              interval: float = 0.2, name: str = "loadgen") -> Tuple[int, str, Sampler, float]:
        """
        Run C{argv} to completion (killed after C{timeout} seconds) while
        sampling C{pids} every C{interval} seconds.

        @return: exit status, output, the samples, and the child's CPU
            seconds (from C{RUSAGE_CHILDREN}).
        """
        self._jobs += 1
        out_path = self.workdir / ("%s-%d.out" % (name, self._jobs))
        sampler = Sampler(pids)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(out_path, "wb") as out:
            sampler.sample()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, cwd=str(REPO_ROOT),
                                    env=child_env(), start_new_session=True,
                                    preexec_fn=_child_setup)
            deadline = clock() + timeout
            try:
                while True:
                    try:
                        proc.wait(interval)
                        break
                    except subprocess.TimeoutExpired:
                        sampler.sample()
                        if clock() > deadline:
                            proc.kill()
                            proc.wait(5)
                            raise BenchError("%s did not finish within %.0f s" % (name, timeout))
            except BaseException:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(5)
                raise
            sampler.sample()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        output = out_path.read_text("utf-8", "replace")
        return proc.returncode, output, sampler, cpu

    def run_loadgen(self, job: Dict[str, Any], pids: Dict[str, int],
                    interval: float = 0.2) -> Tuple[Dict[str, Any], Sampler]:
        """
        Run one load generator job (its C{timeout} plus a margin bounds it).
        """
        self._jobs += 1
        job_path = self.workdir / ("job-%d.json" % (self._jobs,))
        result_path = self.workdir / ("result-%d.json" % (self._jobs,))
        job_path.write_text(json.dumps(job), "utf-8")
        limit = job.get("timeout", job.get("duration", 0) + job.get("warmup", 0)) + 60
        status, output, sampler, cpu = self.watch(
            [self.python, "-m", "bench.loadgen", str(job_path), str(result_path)],
            pids, limit, interval)
        if status != 0 or not result_path.exists():
            raise BenchError("the load generator failed (exit %s):\n%s"
                             % (status, "\n".join(output.splitlines()[-15:])))
        result = json.loads(result_path.read_text("utf-8"))
        result["loadgen_process_cpu_s"] = round(cpu, 3)
        return result, sampler


def _direct(stack: Stack) -> Front:
    emulator = stack.emulator()
    return direct_front(emulator.host, emulator.port)


def _qwengate(stack: Stack) -> Front:
    gateway = stack.gateway()
    return qwengate_front(gateway.host, gateway.port, gateway.cafile, gateway.pid)


#: How to start each front; later issues add C{nginx} and C{litellm}, each
#: in front of C{stack.emulator()}.
FRONTS: Dict[str, Callable[[Stack], Front]] = {
    "direct": _direct,
    "qwengate": _qwengate,
}
