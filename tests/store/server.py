"""
A real C{redis-server} for tests: started on a loopback port chosen by the
kernel, with no persistence, killed (and restartable) by the test.

Tests that need it are skipped with a clear message when the Debian
package C{redis-server} is not installed (C{./qwengate-dev} installs it
for CI).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from typing import List, Optional

from twisted.trial.unittest import SkipTest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def require_redis() -> str:
    """
    @raise SkipTest: C{redis-server} is not installed.
    """
    if not os.access(REDIS_SERVER, os.X_OK):
        raise SkipTest("redis-server not found: apt-get install redis-server "
                       "(listed in TEST_DEBIAN_PACKAGES of ./qwengate-dev)")
    return REDIS_SERVER


def free_port() -> int:
    """
    A loopback port the kernel just handed out (Redis treats port 0 as
    "no TCP listener", so it cannot pick one itself).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """
    One redis-server process.

    @ivar port: its port (kept across L{restart}).
    @ivar url: C{redis://127.0.0.1:PORT}.
    """

    def __init__(self, directory: str, password: Optional[str] = None) -> None:
        self.binary = require_redis()
        self.directory = directory
        self.password = password
        self.port = free_port()
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return "redis://127.0.0.1:%d" % (self.port,)

    def args(self) -> List[str]:
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", self.directory,
            "--daemonize", "no", "--logfile", os.path.join(self.directory, "redis.log"),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        return args

    def start(self) -> "RedisServer":
        """
        Start on L{port}. Another process (a parallel test run's Redis)
        may have been handed the same port between L{free_port} and the
        bind: then ours exits, and a PONG could come from theirs, so the
        server is ours only when C{INFO} names our process id; otherwise
        try another port.
        """
        for attempt in range(5):
            self.process = subprocess.Popen(
                self.args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._wait_ready():
                return self
            self.kill()
            self.port = free_port()
        raise RuntimeError("redis-server did not start")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                info = self.command("INFO", "server")
            except OSError:
                info = b""
            if b"process_id:" in info:
                return b"process_id:%d\r\n" % (self.process.pid,) in info
            time.sleep(0.02)
        return False

    def kill(self) -> None:
        """
        SIGKILL, like a crash: nothing is saved (nothing would be anyway).
        """
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    def restart(self) -> "RedisServer":
        self.kill()
        return self.start()

    def command(self, *args: str) -> bytes:
        """
        One command over a blocking socket (test set-up and inspection).
        """
        parts = [b"*%d\r\n" % (len(args),)]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            if self.password:
                pw = self.password.encode()
                s.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(pw), pw))
                s.recv(64)
            s.sendall(b"".join(parts))
            reply = s.recv(65536)
            if reply.startswith(b"$"):
                # A bulk string (INFO): read all of it.
                header, _, rest = reply.partition(b"\r\n")
                size = int(header[1:])
                while len(rest) < size + 2:
                    more = s.recv(65536)
                    if not more:
                        break
                    rest += more
                reply = header + b"\r\n" + rest
            return reply


def start_redis(testcase, password: Optional[str] = None) -> RedisServer:
    """
    Start a redis-server for C{testcase}, killed by its cleanup.
    """
    directory = os.path.abspath(testcase.mktemp())
    os.makedirs(directory)
    server = RedisServer(directory, password)
    testcase.addCleanup(server.kill)
    return server.start()
