# -*- test-case-name: tests.test_bench -*-
"""
The peers qwengate is compared with, in front of the same emulator in the
same run: Debian's nginx as a pure TLS relay, and LiteLLM's proxy.

Why these two: nginx relaying TLS with C{proxy_buffering off} and upstream
keep-alive is the floor of what any TLS gateway can cost (no translation,
no authentication, C code); LiteLLM's proxy is the best-known Python
gateway translating the OpenAI API to Ollama's (C{ollama_chat/} models).
Each is started by the harness when installed and skipped with a message
when not (C{./qwengate-dev bench --install-peers} installs both: nginx with
apt, LiteLLM in its own venv, C{.venv/litellm}).

Each peer gets one worker (one process serving), as the gateway has one
process: the figures compare the cost of one core's worth of each.

L{nginx_config} and L{litellm_config} are pure (tested); the rest does I/O.
"""

from __future__ import annotations

import http.client
import os
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from bench.fronts import MODEL, Front, OLLAMA, OPENAI
from bench.processes import (
    FRONTS, LOOPBACK, REPO_ROOT, BenchError, ManagedProcess, PeerMissing, Stack, clock,
    free_port,
)

#: Where C{--install-peers} puts LiteLLM (beside the other venvs).
LITELLM_VENV = REPO_ROOT / ".venv" / "litellm"

#: What C{--install-peers} installs there: the last release before the
#: compromised 1.107.0 whose C{[proxy]} extra installs from PyPI alone
#: (later ones need a C{litellm-proxy} distribution PyPI does not have).
LITELLM_REQUIREMENT = "litellm[proxy]==1.106.12"


def nginx_config(workdir: Path, port: int, upstream_port: int, cert: Path, key: Path,
                 as_root: bool = False, host: str = LOOPBACK) -> str:
    """
    nginx as a pure TLS relay to the emulator: one worker, no access log,
    no buffering either way, keep-alive connections to the upstream.
    """
    user = "user root;\n" if as_root else ""
    return """%(user)sworker_processes 1;
daemon off;
pid %(workdir)s/nginx.pid;
error_log %(workdir)s/nginx-error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path %(workdir)s/nginx-body;
    proxy_temp_path %(workdir)s/nginx-proxy;
    upstream emulator {
        server %(upstream)s:%(upstream_port)d;
        keepalive 256;
    }
    server {
        listen %(host)s:%(port)d ssl;
        ssl_certificate %(cert)s;
        ssl_certificate_key %(key)s;
        keepalive_requests 1000000;
        location / {
            proxy_pass http://emulator;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }
    }
}
""" % {"user": user, "workdir": workdir, "host": host, "port": port, "upstream": LOOPBACK,
       "upstream_port": upstream_port, "cert": cert, "key": key}


def litellm_config(upstream_url: str, model: str = MODEL) -> str:
    """
    LiteLLM's proxy configuration: one model, C{ollama_chat/} to the
    emulator, no telemetry, no master key (as qwengate runs without API
    keys in the benchmark).
    """
    return """model_list:
  - model_name: "%(model)s"
    litellm_params:
      model: "ollama_chat/%(model)s"
      api_base: "%(url)s"
litellm_settings:
  telemetry: false
  drop_params: true
general_settings:
  # Loopback only, and qwengate runs without API keys in the benchmark too.
  dangerously_permit_weak_or_unset_master_key: true
""" % {"model": model, "url": upstream_url}


def children(pid: int) -> List[int]:
    """
    The child processes of C{pid} (nginx's worker, uvicorn's workers).
    """
    out: List[int] = []
    try:
        for task in os.listdir("/proc/%d/task" % (pid,)):
            with open("/proc/%d/task/%s/children" % (pid, task)) as f:
                out.extend(int(p) for p in f.read().split())
    except OSError:
        pass
    return out


def self_signed(workdir: Path) -> Tuple[Path, Path]:
    """
    A throw-away certificate for C{localhost} (openssl's command line).
    """
    cert, key = workdir / "peer-cert.pem", workdir / "peer-key.pem"
    if not cert.exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                        "-subj", "/CN=localhost", "-addext",
                        "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


def _wait_http(process: ManagedProcess, host: str, port: int, path: str, timeout: float,
               context: Optional[ssl.SSLContext] = None, started: float = 0.0) -> None:
    deadline = clock() + timeout
    last = "no answer"
    while clock() < deadline:
        if not process.alive():
            break
        try:
            if context is not None:
                conn: Any = http.client.HTTPSConnection(host, port, timeout=5, context=context)
            else:
                conn = http.client.HTTPConnection(host, port, timeout=5)
            conn.request("GET", path, headers={"Host": "localhost"})
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                process.startup_s = clock() - (started or clock())  # type: ignore[attr-defined]
                return
            last = "GET %s: HTTP %d" % (path, status)
        except (OSError, ssl.SSLError, http.client.HTTPException) as e:
            last = str(e)
        time.sleep(0.2)
    raise BenchError("%s did not start (%s):\n%s" % (process.name, last, process.log_tail()))


class Nginx(ManagedProcess):
    """
    Debian's nginx as a TLS relay to the emulator.
    """

    def __init__(self, workdir: Path, upstream_port: int, host: str = LOOPBACK) -> None:
        binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists(
            "/usr/sbin/nginx") else None)
        if binary is None:
            raise PeerMissing("nginx is not installed (./qwengate-dev bench --install-peers, "
                              "or apt-get install nginx)")
        self.host = host
        self.port = free_port(host)
        self.cafile, key = self_signed(workdir)
        conf = workdir / "nginx.conf"
        conf.write_text(nginx_config(workdir, self.port, upstream_port, self.cafile, key,
                                     as_root=os.geteuid() == 0, host=host), "utf-8")
        super().__init__("nginx", [binary, "-p", str(workdir), "-c", str(conf)], workdir)

    def start(self, timeout: float = 20.0) -> None:
        started = clock()
        super().start()
        context = ssl.create_default_context(cafile=str(self.cafile))
        _wait_http(self, self.host, self.port, "/api/version", timeout, context, started)

    def pids(self) -> Tuple[int, ...]:
        return (self.pid,) + tuple(children(self.pid))


class LiteLLM(ManagedProcess):
    """
    LiteLLM's proxy (one worker) translating OpenAI calls to the emulator.
    """

    def __init__(self, workdir: Path, upstream_url: str, host: str = LOOPBACK) -> None:
        binary = LITELLM_VENV / "bin" / "litellm"
        if not binary.exists():
            raise PeerMissing("LiteLLM is not installed in %s (./qwengate-dev bench "
                              "--install-peers)" % (LITELLM_VENV,))
        self.host = host
        self.port = free_port(host)
        conf = workdir / "litellm.yaml"
        conf.write_text(litellm_config(upstream_url), "utf-8")
        super().__init__("litellm", [str(binary), "--config", str(conf), "--host", host,
                                     "--port", str(self.port), "--num_workers", "1"], workdir)

    def start(self, timeout: float = 120.0) -> None:
        # No downloads at start (model cost map) and no telemetry.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        os.environ.setdefault("LITELLM_TELEMETRY", "False")
        started = clock()
        super().start()
        _wait_http(self, self.host, self.port, "/health/liveliness", timeout, started=started)

    def pids(self) -> Tuple[int, ...]:
        return (self.pid,) + tuple(children(self.pid))


def install_litellm(python: str = sys.executable) -> None:
    """
    Create L{LITELLM_VENV} and install L{LITELLM_REQUIREMENT} there.
    """
    if not (LITELLM_VENV / "bin" / "python").exists():
        subprocess.run([python, "-m", "venv", str(LITELLM_VENV)], check=True)
    subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", LITELLM_REQUIREMENT],
                   check=True)


def _nginx(stack: Stack) -> Front:
    emulator = stack.emulator()
    nginx = stack.peer("nginx", lambda: Nginx(stack.workdir, emulator.port))
    return Front("nginx", nginx.host, nginx.port, OLLAMA, tls=True, cafile=str(nginx.cafile),
                 server_hostname="localhost", pids=nginx.pids())


def _litellm(stack: Stack) -> Front:
    emulator = stack.emulator()
    litellm = stack.peer("litellm", lambda: LiteLLM(stack.workdir, emulator.url))
    return Front("litellm", litellm.host, litellm.port, OPENAI, pids=litellm.pids())


#: Every front the harness knows: the baseline, the peers, qwengate.
ALL_FRONTS: Dict[str, Callable[[Stack], Front]] = {
    "direct": FRONTS["direct"],
    "nginx": _nginx,
    "litellm": _litellm,
    "qwengate": FRONTS["qwengate"],
}
