"""
Real-socket test fixtures: the emulator on one loopback port, the gateway
with real TLS on another, and clients (treq and the official openai SDK)
that verify the gateway's certificate.
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import Any, Optional

from twisted.internet import defer, endpoints, reactor, ssl, task, threads
from twisted.trial.unittest import SkipTest
from twisted.web import client as wclient

import treq.client

from qwen_twist import config as configmod
from qwen_twist.gate import tls
from qwen_twist.emulator import server as emulator_server
from qwen_twist.tap import GatewayService
from qwen_twist.schema import merge_settings as merge


def async_test(f: Any) -> Any:
    """
    Run an C{async def} test method as a Deferred. Trial 22.4 (Debian 12)
    does not await coroutine test methods: without this, such a test would
    pass without running.
    """

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(f(*args, **kwargs))

    return wrapper




def sdk(name: str) -> Any:
    """
    Import a client SDK the tests drive (C{openai}), or skip the test: the
    Debian package build runs the suite against Debian's libraries, and
    Debian 12 ships no OpenAI, Anthropic or Ollama SDK.
    """
    try:
        return importlib.import_module(name)
    except ImportError:
        raise SkipTest("the %s package is not installed (Debian 12 does not ship it)" % (name,))


class Stack:
    """
    A running emulator + gateway pair.

    @ivar url: the gateway's base URL (C{https://127.0.0.1:PORT}).
    @ivar cafile: the PEM file clients must trust.
    """

    def __init__(self) -> None:
        self.emulator: Any = None
        self.service: Optional[GatewayService] = None
        self.port: Any = None
        self.url = ""
        self.cafile = ""
        self.http: Any = None
        self._pool: Any = None
        self._sdk_clients: list = []

    @property
    def record(self) -> Any:
        return self.emulator.record

    @property
    def script(self) -> Any:
        return self.emulator.script

    def get(self, path: str, **kwargs: Any) -> defer.Deferred:
        return self.http.get(self.url + path, **kwargs)

    def post(self, path: str, json: Any = None, data: Any = None, **kwargs: Any) -> defer.Deferred:
        if json is not None:
            kwargs["json"] = json
        if data is not None:
            kwargs["data"] = data
        return self.http.post(self.url + path, **kwargs)

    def _http_client(self) -> Any:
        """
        An HTTP client for an SDK that trusts this gateway's certificate:
        openai 3.x and both anthropic generations are built on httpx2,
        openai 2.x (the Debian 12 venv) on httpx.
        """
        import ssl as stdlib_ssl

        try:
            import httpx2 as httpx  # type: ignore[import-not-found]
        except ImportError:
            import httpx  # type: ignore[no-redef]

        return httpx.Client(verify=stdlib_ssl.create_default_context(cafile=self.cafile))

    def openai_client(self, **kwargs: Any) -> Any:
        """
        An official OpenAI SDK client for this gateway (use it from a thread:
        L{in_thread}).
        """
        openai = sdk("openai")

        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("api_key", "sk-test-not-needed")
        kwargs.setdefault("timeout", 20)
        client = openai.OpenAI(
            base_url=self.url + "/v1", http_client=self._http_client(), **kwargs
        )
        self._sdk_clients.append(client)
        return client


    def anthropic_client(self, **kwargs: Any) -> Any:
        """
        An official Anthropic SDK client for this gateway (C{base_url} is
        the gateway's root: the SDK appends C{/v1/messages}); use it from a
        thread (L{in_thread}).
        """
        anthropic = sdk("anthropic")

        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("api_key", "sk-ant-test-not-needed")
        kwargs.setdefault("timeout", 20)
        client = anthropic.Anthropic(base_url=self.url, http_client=self._http_client(), **kwargs)
        self._sdk_clients.append(client)
        return client


def in_thread(f: Any, *args: Any, **kwargs: Any) -> defer.Deferred:
    """
    Run a blocking client (the openai SDK) off the reactor thread.
    """
    return threads.deferToThread(f, *args, **kwargs)


def _client_options(cafile: str) -> Any:
    with open(cafile, "rb") as f:
        authority = ssl.Certificate.loadPEM(f.read())
    return wclient.BrowserLikePolicyForHTTPS(trustRoot=authority)


def admin_key(testcase: Any) -> tuple:
    """
    A keys file holding one key with the C{admin} scope (which sees the
    details of C{/ready}): C{(config section, request headers)}.
    """
    import time

    from qwen_twist.gate.keyfile import add_key

    directory = os.path.abspath(testcase.mktemp())
    os.makedirs(directory)
    path = os.path.join(directory, "keys.yaml")
    key = add_key(path, "ops", scopes=("admin",), now=time.time())
    return {"auth": {"keys_file": path}}, {"Authorization": ["Bearer " + key]}


async def start_stack(testcase: Any, config: Optional[dict] = None,
                      script: Any = None, upstream_url: Optional[str] = None) -> Stack:
    """
    Start the emulator (unless C{upstream_url} is given) and the gateway on
    ephemeral loopback ports; everything is stopped by the test's cleanup.
    """
    stack = Stack()
    state_dir = os.path.abspath(testcase.mktemp())
    os.makedirs(state_dir)
    if upstream_url is None:
        stack.emulator = await emulator_server.listen(reactor, script=script)
        testcase.addCleanup(stack.emulator.stop)
        upstream_url = stack.emulator.url
    raw = merge(
        {
            "state_dir": state_dir,
            "listen": {"address": "127.0.0.1"},
            "tls": {"self_signed": True},
            "auth": {"required": False},
            "rate_limits": {"per_ip_rate": 0},
            "admission": {"slots": 0},
            "upstream": {"url": upstream_url},
        },
        config or {},
    )
    cfg = configmod.build(configmod.Config, raw)
    options = tls.certificate_options(cfg.tls, cfg.state_dir, mtls=cfg.auth.mtls)
    stack.cafile = os.path.join(state_dir, "tls", "cert.pem")
    stack.service = GatewayService(cfg, options, reactor)
    stack.port = await endpoints.TCP4ServerEndpoint(
        reactor, 0, interface="127.0.0.1"
    ).listen(stack.service.peer_filter)
    stack.url = "https://127.0.0.1:%d" % (stack.port.getHost().port,)
    stack._pool = wclient.HTTPConnectionPool(reactor, persistent=True)
    stack.http = treq.client.HTTPClient(
        wclient.Agent(reactor, contextFactory=_client_options(stack.cafile), pool=stack._pool)
    )

    async def stop() -> None:
        for client in stack._sdk_clients:
            await in_thread(client.close)
        await stack._pool.closeCachedConnections()
        await defer.maybeDeferred(stack.port.stopListening)
        await stack.service.upstream.close()
        await settle()

    testcase.addCleanup(lambda: defer.Deferred.fromCoroutine(stop()))
    return stack


async def settle(rounds: int = 20) -> None:
    """
    Give the reactor a few turns so closed connections finish closing
    (trial fails a test that leaves sockets behind).
    """
    for _ in range(rounds):
        await task.deferLater(reactor, 0.01, lambda: None)
