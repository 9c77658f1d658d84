"""
In-memory fixtures for the web layer: a fake upstream whose responses the
test controls byte by byte, and a way to feed raw HTTP to the gateway's
Site over a C{StringTransport} and read the raw response back.
"""

from __future__ import annotations

import json
from typing import Any, List, Optional

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from qwen_twist import config as configmod
from qwen_twist.gate.hooks import Gate
from qwen_twist.interfaces import IUpstream
from qwen_twist.pipeline import Gateway
from qwen_twist.web.request import GatewaySite
from qwen_twist.web.root import build_root
from qwen_twist.web.screen import HeadScreen

from tests.fakes import FakeResponse


class UpstreamCall:
    def __init__(self, method: str, path: str, payload: Any, headers_timeout: Any) -> None:
        self.method = method
        self.path = path
        self.payload = payload
        self.headers_timeout = headers_timeout
        self.cancelled = False
        self.deferred: defer.Deferred = defer.Deferred(self._cancel)

    def _cancel(self, d: defer.Deferred) -> None:
        self.cancelled = True

    def respond(self, code: int, body: Any = None) -> FakeResponse:
        """
        Answer with a complete body (a dict is sent as JSON).
        """
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode("utf-8")
        response = FakeResponse(code, body)
        self.deferred.callback(response)
        return response

    def respond_streaming(self, code: int = 200) -> FakeResponse:
        """
        Answer with headers only; the test then calls C{send}/C{finish}.
        """
        response = FakeResponse(code)
        self.deferred.callback(response)
        return response


@implementer(IUpstream)
class FakeUpstream:
    """
    Records every upstream call; the test answers them.
    """

    base_url = "http://127.0.0.1:11434"
    where = "127.0.0.1:11434"

    def __init__(self) -> None:
        self.calls: List[UpstreamCall] = []

    def send(self, method: str, path: str, payload: Any = None,
             headers_timeout: Any = None, request_id: Any = None) -> defer.Deferred:
        call = UpstreamCall(method, path, payload, headers_timeout)
        call.request_id = request_id
        self.calls.append(call)
        return call.deferred

    def close(self) -> defer.Deferred:
        return defer.succeed(None)

    def state(self) -> List[dict]:
        return [{"url": self.base_url, "healthy": True, "version": None, "models": None,
                 "loaded": [], "outstanding": len(self.calls), "breaker": "closed"}]

    def current_state(self, max_age: float) -> defer.Deferred:
        return defer.succeed(self.state())


class ParsedResponse:
    def __init__(self, status: int, headers: dict, body: bytes, complete: bool) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.complete = complete

    def json(self) -> Any:
        return json.loads(self.body)


def parse_response(raw: bytes) -> Optional[ParsedResponse]:
    """
    Parse one HTTP/1.1 response (Content-Length or chunked; a chunked body
    that has not ended yet is returned with C{complete=False}).
    """
    if b"\r\n\r\n" not in raw:
        return None
    head, rest = raw.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers: dict = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode()] = value.strip().decode("latin-1")
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        complete = False
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                complete = True
                break
            body += rest[:size]
            rest = rest[size + 2:]
        return ParsedResponse(status, headers, body, complete)
    length = int(headers.get("content-length", "0"))
    return ParsedResponse(status, headers, rest[:length], len(rest) >= length)


class GatewayHarness:
    """
    A gateway Site over an in-memory transport with a fake upstream and a
    deterministic clock.
    """

    def __init__(self, config: Optional[dict] = None) -> None:
        raw = {
            "tls": {"self_signed": True},
            "auth": {"required": False, "keys_file": None},
            "rate_limits": {"per_ip_rate": 0},
            "admission": {"slots": 0},
        }
        raw.update(config or {})
        self.config = configmod.build(configmod.Config, raw)
        self.clock = Clock()
        self.upstream = FakeUpstream()
        self.finished: list = []
        self.gate = Gate(self.config, self.clock)
        self.gateway = Gateway(
            self.config, self.clock, self.upstream, hooks=self.gate.hooks, observers=[self],
            screens=self.gate.screens,
        )
        self.site = GatewaySite(
            build_root(self.gateway), self.config, reactor=self.clock,
            screen=HeadScreen(self.gateway),
        )

    def call_finished(self, ctx: Any) -> None:
        self.finished.append(ctx)

    def connect(self) -> tuple:
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "203.0.113.7", 40000))
        channel.makeConnection(transport)
        return channel, transport

    def request(self, method: str, path: str, body: Any = None,
                headers: Optional[dict] = None) -> tuple:
        """
        Send one request; return C{(channel, transport)} for inspection.
        """
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode("utf-8")
        elif isinstance(body, str):
            body = body.encode("utf-8")
        channel, transport = self.connect()
        lines = ["%s %s HTTP/1.1" % (method, path), "Host: gateway"]
        for name, value in (headers or {}).items():
            lines.append("%s: %s" % (name, value))
        if body is not None:
            lines.append("Content-Length: %d" % (len(body),))
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")
        channel.dataReceived(raw)
        return channel, transport

    def response(self, transport: StringTransport) -> Optional[ParsedResponse]:
        return parse_response(transport.value())


class EmulatorHarness(GatewayHarness):
    """
    L{GatewayHarness} with the gateway's real upstream side: an
    L{UpstreamPool} over the real L{OllamaClient} (treq, deadlines, breaker,
    error mapping), whose agent is treq's in-memory
    C{RequestTraversalAgent} over the emulator's resource. Nothing about
    the upstream is hand-written here: what Ollama says is what the
    emulator (which follows the protocol reference) says.

    @ivar emulator: the L{EmulatorResource}; C{emulator.script} and
        C{emulator.record} to script and inspect it.
    """

    def __init__(self, config: Optional[dict] = None, script: Any = None) -> None:
        from treq.testing import RequestTraversalAgent

        from qwen_twist.emulator.script import Script
        from qwen_twist.emulator.server import build_resource
        from qwen_twist.upstream.client import OllamaClient
        from qwen_twist.upstream.pool import UpstreamPool

        config = dict(config or {})
        config.setdefault("upstream", {"breaker": {"threshold": 0}})
        super().__init__(config)
        if isinstance(script, dict):
            script = Script.from_dict(script)
        self.emulator = build_resource(script, reactor=self.clock)
        self.agent = RequestTraversalAgent(self.emulator)
        client = OllamaClient(self.clock, self.config.upstream, agent=self.agent)
        self.upstream = UpstreamPool(self.clock, [client], self.config.upstream.health_interval)
        self.gateway.upstream = self.upstream

    def pump(self, rounds: int = 20) -> None:
        """
        Move bytes between the gateway and the emulator until both are idle
        (the emulator's paced chunks need the clock: advance it too).
        """
        for _ in range(rounds):
            self.agent.flush()
            self.clock.advance(0)

    def request(self, method: str, path: str, body: Any = None,
                headers: Optional[dict] = None) -> tuple:
        channel, transport = super().request(method, path, body, headers)
        self.pump()
        return channel, transport
