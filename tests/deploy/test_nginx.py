"""
The Nginx front of C{etc/nginx/sites-available/qwengate}, tested with a real
Debian nginx started by the test on loopback ports with a throwaway
certificate, in front of a real gateway (TLS, keys, bans, trusted proxy)
and the emulator.

The site file is used as shipped; only its ports, certificate paths and
static root are rewritten to the test's (each rewrite must match, so a
change to the site that these tests no longer exercise fails loudly).
Clients connect to nginx from other loopback addresses (127.0.0.2,
127.0.0.3) than nginx's own to the gateway (127.0.0.1), so "the gateway
sees the client's address" is a real observation, not a coincidence.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import defer, reactor, ssl as tssl
from twisted.python import log
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web import client as wclient
from twisted.web.http_headers import Headers

import treq
import treq.client
import yaml

from qwen_twist import config as configmod
from qwen_twist.gate import keyfile, tls
from tests.support import async_test, settle, start_stack

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SITE = os.path.join(REPO, "etc", "nginx", "sites-available", "qwengate")
#: The example gateway settings for running behind that site.
BEHIND_NGINX = os.path.join(REPO, "etc", "nginx", "qwengate.yaml")
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)

CLIENT = "127.0.0.2"
ATTACKER = "127.0.0.3"
MODEL = "qwen3:8b"
MESSAGES = [{"role": "user", "content": "Hello"}]


def free_port() -> int:
    """
    A TCP port free on 127.0.0.1 now (nginx binds it a moment later).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rewrite(text: str, pattern: str, replacement: str, count: int = 1) -> str:
    """
    C{re.sub} that insists on exactly C{count} matches.
    """
    new, n = re.subn(pattern, replacement, text, flags=re.M)
    if n != count:
        raise AssertionError("site file: %r matched %d times, expected %d" % (pattern, n, count))
    return new


def site_for_test(gateway_port: int, http_port: int, https_port: int, cert: str, key: str,
              gateway_ca: str, www: str) -> str:
    """
    The shipped site with the test's ports, certificates and static root.
    """
    text = open(SITE).read()
    text = rewrite(text, r"^\s*listen \[::\]:(80|443)[^;]*;\n", "", 2)
    text = rewrite(text, r"listen 80;", "listen 127.0.0.1:%d;" % (http_port,))
    text = rewrite(text, r"listen 443 ssl http2;", "listen 127.0.0.1:%d ssl http2;" % (https_port,))
    text = rewrite(text, r"server 127\.0\.0\.1:18789;", "server 127.0.0.1:%d;" % (gateway_port,))
    text = rewrite(text, r"ssl_certificate /\S+;", "ssl_certificate %s;" % (cert,))
    text = rewrite(text, r"ssl_certificate_key /\S+;", "ssl_certificate_key %s;" % (key,))
    text = rewrite(text, r"proxy_ssl_trusted_certificate /\S+;",
                   "proxy_ssl_trusted_certificate %s;" % (gateway_ca,))
    text = rewrite(text, r"root /var/www/qwengate;", "root %s;" % (www,), 2)
    return text


MAIN_CONF = """
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log notice;
{user}
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/site.conf;
}}
"""


class Nginx:
    """
    A real nginx process running the shipped site for one test.
    """

    def __init__(self, testcase: TestCase, gateway_port: int, gateway_ca: str) -> None:
        self.tmp = os.path.abspath(testcase.mktemp())
        os.makedirs(self.tmp)
        # Workers of a root nginx run as nobody: let them read the root.
        os.chmod(self.tmp, 0o755)
        cert, key, _ = tls.ensure_self_signed(self.tmp)
        self.cafile = cert
        www = os.path.join(self.tmp, "www")
        os.makedirs(www)
        with open(os.path.join(www, "index.html"), "w") as f:
            f.write("<!doctype html><title>chat</title>front end\n")
        os.chmod(www, 0o755)
        self.http_port = free_port()
        self.https_port = free_port()
        with open(os.path.join(self.tmp, "site.conf"), "w") as f:
            f.write(site_for_test(gateway_port, self.http_port, self.https_port, cert, key,
                              gateway_ca, www))
        conf = os.path.join(self.tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(MAIN_CONF.format(tmp=self.tmp, user="user root;" if os.getuid() == 0 else ""))
        check = subprocess.run([NGINX, "-t", "-q", "-p", self.tmp, "-c", conf],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               universal_newlines=True)
        if check.returncode != 0:
            raise AssertionError("nginx -t refused the site:\n" + check.stdout)
        self.process = subprocess.Popen(
            [NGINX, "-p", self.tmp, "-c", conf],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        testcase.addCleanup(self.stop)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # fast shutdown, our own child only
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stderr.close()

    async def ready(self) -> None:
        """
        Wait until nginx accepts connections on its HTTPS port.
        """
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError("nginx exited: " + self.process.stderr.read().decode())
            try:
                with socket.create_connection(("127.0.0.1", self.https_port), timeout=0.2):
                    return
            except OSError:
                await deferLater(0.05)
        raise AssertionError("nginx did not listen within 15 s")

    @property
    def url(self) -> str:
        return "https://127.0.0.1:%d" % (self.https_port,)

    def error_log(self) -> str:
        try:
            with open(os.path.join(self.tmp, "error.log")) as f:
                return f.read()
        except OSError:
            return ""


def deferLater(seconds: float) -> defer.Deferred:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


class ClientAddresses:
    """
    A pipeline observer that records the client address the gateway
    resolved for every finished call.
    """

    def __init__(self) -> None:
        self.seen: List[str] = []

    def call_finished(self, ctx: Any) -> None:
        self.seen.append(ctx.client_ip)


def http_client(testcase: TestCase, cafile: str, source: str) -> Any:
    """
    A treq client that trusts C{cafile} and connects from C{source}.
    """
    with open(cafile, "rb") as f:
        authority = tssl.Certificate.loadPEM(f.read())
    pool = wclient.HTTPConnectionPool(reactor, persistent=True)
    testcase.addCleanup(pool.closeCachedConnections)
    agent = wclient.Agent(
        reactor, contextFactory=wclient.BrowserLikePolicyForHTTPS(trustRoot=authority),
        pool=pool, bindAddress=(source, 0),
    )
    return treq.client.HTTPClient(agent)


async def timed_stream(http: Any, url: str, key: str, headers: Optional[Dict[str, str]] = None
                       ) -> Tuple[int, List[Tuple[float, bytes]]]:
    """
    POST a streaming chat request; return the status and the arrival time
    (seconds after the request was sent) of every piece of the body.
    """
    pieces: List[Tuple[float, bytes]] = []
    all_headers = {"Authorization": "Bearer " + key}
    all_headers.update(headers or {})
    started = time.monotonic()
    response = await http.post(
        url + "/v1/chat/completions",
        json={"model": MODEL, "messages": MESSAGES, "stream": True},
        headers=Headers({k: [v] for k, v in all_headers.items()}),
    )
    await treq.collect(response, lambda data: pieces.append((time.monotonic() - started, data)))
    return response.code, pieces


def first_content(pieces: List[Tuple[float, bytes]]) -> float:
    """
    Arrival time of the first piece that carries generated text.
    """
    for at, data in pieces:
        if b'"content": "' in data or b'"content":"' in data:
            return at
    raise AssertionError("no content chunk in %r" % (pieces,))


class NginxFrontTests(TestCase):
    """
    The shipped nginx site in front of a real gateway.
    """

    timeout = 60

    async def start(self) -> None:
        if NGINX is None:
            raise SkipTest("nginx is not installed (apt-get install nginx): "
                           "the Nginx front cannot be tested")
        self.keys = os.path.abspath(self.mktemp())
        self.key = keyfile.add_key(self.keys, "nginx-test", now=time.time())
        with open(BEHIND_NGINX) as f:
            example = yaml.safe_load(f)
        self.stack = await start_stack(self, {
            "auth": {"required": True, "keys_file": self.keys},
            "access": example["access"],
            "bans": {"failures": 3, "duration": 600.0},
        })
        self.addresses = ClientAddresses()
        self.stack.service.gateway.observers.append(self.addresses)
        self.nginx = Nginx(self, self.stack.port.getHost().port, self.stack.cafile)
        await self.nginx.ready()
        self.client = http_client(self, self.nginx.cafile, CLIENT)
        self.addCleanup(settle)

    def auth(self, key: Optional[str] = None, **extra: str) -> Headers:
        values = {"Authorization": "Bearer " + (key or self.key)}
        values.update(extra)
        return Headers({k: [v] for k, v in values.items()})

    async def chat(self, http: Any, key: Optional[str] = None, **headers: str) -> Tuple[int, Any]:
        response = await http.post(
            self.nginx.url + "/v1/chat/completions",
            json={"model": MODEL, "messages": MESSAGES}, headers=self.auth(key, **headers),
        )
        body = await response.content()
        return response.code, body

    def test_example_config_valid(self) -> None:
        """
        The example gateway settings for running behind nginx are a valid
        configuration that binds loopback and trusts nginx's address.
        """
        config = configmod.load(BEHIND_NGINX)
        self.assertEqual(config.listen.address, "127.0.0.1")
        self.assertEqual(config.listen.port, 18789)
        self.assertIn("127.0.0.1", [str(p) for p in config.access.trusted_proxies])

    @async_test
    async def test_stream_chunk_by_chunk(self) -> None:
        """
        A streamed answer arrives through nginx piece by piece as the model
        produces it (not after the whole answer), and its first content
        chunk comes within 100 ms of the figure measured directly against
        the gateway in the same run.
        """
        await self.start()
        direct_client = http_client(self, self.stack.cafile, CLIENT)
        # 8 tokens at 10 per second: the answer takes about 0.8 s to make.
        pace = {"text": "one two three four five six seven eight", "tokens": 8,
                "tokens_per_second": 10.0}
        firsts = {"direct": [], "nginx": []}
        for _ in range(3):
            for name, http, url in (("direct", direct_client, self.stack.url),
                                    ("nginx", self.client, self.nginx.url)):
                self.stack.script.push(pace)
                code, pieces = await timed_stream(http, url, self.key)
                self.assertEqual(code, 200, pieces)
                firsts[name].append(first_content(pieces))
                if name == "nginx":
                    body = b"".join(data for _, data in pieces)
                    self.assertTrue(body.rstrip().endswith(b"data: [DONE]"), body[-200:])
                    content_times = [at for at, data in pieces if b'"content"' in data]
                    # Spread over the generation, not one lump at the end.
                    self.assertGreaterEqual(len(content_times), 6, pieces)
                    self.assertGreater(content_times[-1] - content_times[0], 0.4, content_times)
        direct, via_nginx = min(firsts["direct"]), min(firsts["nginx"])
        # The figures, in _trial_temp/test.log.
        log.msg("first content chunk: direct %.1f ms, through nginx %.1f ms"
                % (direct * 1000, via_nginx * 1000))
        self.assertLess(via_nginx - direct, 0.1, firsts)

    @async_test
    async def test_gateway_sees_client_address(self) -> None:
        """
        Behind nginx the gateway's client address is the client's
        (127.0.0.2), not nginx's (127.0.0.1), whatever X-Forwarded-For or
        X-Real-IP the client sends itself.
        """
        await self.start()
        code, body = await self.chat(self.client)
        self.assertEqual(code, 200, body)
        code, body = await self.chat(self.client, **{
            "X-Forwarded-For": "203.0.113.7", "X-Real-IP": "203.0.113.8"})
        self.assertEqual(code, 200, body)
        self.assertEqual(self.addresses.seen, [CLIENT, CLIENT])

    @async_test
    async def test_ban_behind_nginx_is_403(self) -> None:
        """
        Three bad keys from one client ban that client: its next request
        (with a good key) is answered 403 C{address_banned} through nginx,
        not a reset (nginx is the TCP peer, and is not banned); another
        client is still served, and a spoofed X-Forwarded-For does not
        dodge the ban.
        """
        await self.start()
        attacker = http_client(self, self.nginx.cafile, ATTACKER)
        for _ in range(3):
            code, body = await self.chat(attacker, key="qg-wrong")
            self.assertEqual(code, 401, body)
        for headers in ({}, {"X-Forwarded-For": "198.51.100.1"}):
            code, body = await self.chat(attacker, **headers)
            self.assertEqual(code, 403, body)
            self.assertEqual(json.loads(body)["error"]["code"], "address_banned")
        code, body = await self.chat(self.client)
        self.assertEqual(code, 200, body)

    @async_test
    async def test_http_redirects_to_https(self) -> None:
        """
        Plain HTTP on the site's port 80 answers 301 to the same path over
        HTTPS.
        """
        await self.start()
        plain = treq.client.HTTPClient(
            wclient.Agent(reactor, pool=wclient.HTTPConnectionPool(reactor, persistent=False)))
        response = await plain.get(
            "http://127.0.0.1:%d/v1/models?x=1" % (self.nginx.http_port,),
            allow_redirects=False,
        )
        await response.content()
        self.assertEqual(response.code, 301)
        self.assertEqual(response.headers.getRawHeaders(b"location"),
                         [b"https://127.0.0.1/v1/models?x=1"])

    @async_test
    async def test_https_front(self) -> None:
        """
        The HTTPS server offers HTTP/2, serves the front end's static files,
        and sends the security headers on static and API answers alike.
        """
        await self.start()

        def alpn() -> Optional[str]:
            context = ssl.create_default_context(cafile=self.nginx.cafile)
            context.set_alpn_protocols(["h2", "http/1.1"])
            with socket.create_connection(("127.0.0.1", self.nginx.https_port), timeout=5) as raw:
                with context.wrap_socket(raw, server_hostname="localhost") as tls_socket:
                    return tls_socket.selected_alpn_protocol()

        from twisted.internet import threads

        self.assertEqual(await threads.deferToThread(alpn), "h2")
        page = await self.client.get(self.nginx.url + "/")
        self.assertIn(b"front end", await page.content())
        models = await self.client.get(self.nginx.url + "/v1/models", headers=self.auth())
        self.assertEqual(models.code, 200)
        await models.content()
        for response in (page, models):
            headers = response.headers
            self.assertEqual(headers.getRawHeaders(b"x-frame-options"), [b"DENY"])
            # One of each: the gateway's own copies are hidden by the site.
            self.assertEqual(headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])
            self.assertEqual(headers.getRawHeaders(b"strict-transport-security"),
                             [b"max-age=31536000"])
            self.assertTrue(headers.getRawHeaders(b"content-security-policy"))
            self.assertTrue(headers.getRawHeaders(b"referrer-policy"))
