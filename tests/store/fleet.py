"""
Several gateway processes in front of one emulator, sharing one real
redis-server: the set-up of the "several gateways" tests.

Each gateway is a real process (so one can be killed mid-generation) built
exactly as C{twistd qwengate} builds it (L{qwen_twist.tap.makeService}),
without twistd's plugin discovery, which could find an installed copy of
the plugin instead of this checkout's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any, List, Optional

from twisted.internet import defer, reactor, task
from twisted.web import client as wclient

import treq.client

from qwen_twist.schema import merge_settings as merge

from tests.store.server import free_port

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RUNNER = """
import sys
from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
from qwen_twist.tap import Options, makeService
options = Options()
options.parseOptions(["--config", sys.argv[1]])
service = makeService(options, reactor)
service.startService()
reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
reactor.run()
"""


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


class GatewayProcess:
    """
    One gateway process.

    @ivar url: its base URL.
    @ivar http: a treq client trusting its self-signed certificate, one
        connection per request (so each one passes the accept-time filter).
    """

    def __init__(self, directory: str, config: dict) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = "https://127.0.0.1:%d" % (self.port,)
        state_dir = os.path.join(directory, "state")
        os.makedirs(state_dir)
        self.cafile = os.path.join(state_dir, "tls", "cert.pem")
        config = merge(config, {
            "state_dir": state_dir,
            "listen": {"address": "127.0.0.1", "port": self.port},
            "tls": {"self_signed": True},
        })
        self.config_path = os.path.join(directory, "qwengate.yaml")
        with open(self.config_path, "w") as f:
            json.dump(config, f)  # JSON is YAML
        self.log_path = os.path.join(directory, "gateway.log")
        self.process: Optional[subprocess.Popen] = None
        self.http: Any = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=REPO)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", RUNNER, self.config_path],
                cwd=self.directory, env=env, stdout=log, stderr=subprocess.STDOUT)

    async def ready(self, timeout: float = 30.0) -> None:
        """
        Wait until it answers C{/health}.
        """
        deadline = reactor.seconds() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError("gateway exited:\n" + self.log())
            if self.http is None and os.path.exists(self.cafile):
                from tests.support import _client_options

                try:
                    agent = wclient.Agent(
                        reactor, contextFactory=_client_options(self.cafile),
                        pool=wclient.HTTPConnectionPool(reactor, persistent=False))
                    self.http = treq.client.HTTPClient(agent)
                except Exception:
                    pass  # the file is still being written
            if self.http is not None:
                try:
                    response = await self.http.get(self.url + "/health")
                    await response.content()
                    if response.code == 200:
                        return
                except Exception:
                    pass
            if reactor.seconds() > deadline:
                raise AssertionError("gateway did not start:\n" + self.log())
            await sleep(0.1)

    def kill(self) -> None:
        """
        SIGKILL: a crash, nothing released.
        """
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        try:
            with open(self.log_path, "r", errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def post(self, path: str, body: Any, headers: Optional[dict] = None) -> defer.Deferred:
        return self.http.post(self.url + path, json=body, headers=headers)

    def get(self, path: str, headers: Optional[dict] = None) -> defer.Deferred:
        return self.http.get(self.url + path, headers=headers)


async def start_gateways(testcase: Any, count: int, config: dict) -> List[GatewayProcess]:
    """
    Start C{count} gateway processes with C{config}; stopped by the test's
    cleanup.
    """
    gateways = []
    for i in range(count):
        directory = os.path.abspath(testcase.mktemp())
        os.makedirs(directory)
        gateway = GatewayProcess(directory, config)
        testcase.addCleanup(gateway.stop)
        gateway.start()
        gateways.append(gateway)
    for gateway in gateways:
        await gateway.ready()
    return gateways
