# -*- test-case-name: tests.emulator.test_server -*-
"""
The Ollama emulator's HTTP side: Ollama's native API on a Twisted Resource.

The gateway's tests and benchmarks need an upstream that speaks the wire
format of section 2 of C{ollama-openai-protocol.md} exactly (NDJSON framing,
the final C{done} line and its omitempty metrics, Ollama's error texts and
statuses, C{stream} defaulting to true) and that fails on demand. Answers
come from a L{Script}; what arrived is kept in a L{Record}.

This module routes like Ollama's router (exact paths, C{404 page not
found}, C{405 method not allowed}), decodes and records every request,
serves the emulator's own C{/_emulator/*} control paths, and listens. The
endpoints themselves are L{qwen_twist.emulator.api}; Go's request decoding
and error texts L{qwen_twist.emulator.wire} and
L{qwen_twist.emulator.fields}; pacing, backpressure and faults
L{qwen_twist.emulator.stream}.

All timing goes through the injected reactor (C{seconds}, C{callLater}), so
unit tests drive it with a L{twisted.internet.task.Clock}.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Site

from qwen_twist.emulator.api import Handler, OllamaApi
from qwen_twist.emulator.manage import ModelManagement
from qwen_twist.emulator.record import Record, RecordedRequest
from qwen_twist.emulator.script import Script, ScriptError
from qwen_twist.emulator.stream import reply
from qwen_twist.emulator.wire import TEXT_TYPE, Refusal, decode_body, dumps, error_body


__all__ = ["Emulator", "EmulatorResource", "build_resource", "listen"]


class EmulatorResource(Resource):
    """
    Ollama's native API (plus the emulator's C{/_emulator/*} control paths)
    as one leaf resource that dispatches on the exact path, like Ollama's
    router: unknown paths get C{404 page not found}, known paths with the
    wrong method C{405 method not allowed}.

    @ivar script: the L{Script} in force; replacing it takes effect for the
        next request.
    @ivar record: the L{Record} of what arrived.
    @ivar api: the L{OllamaApi} that answers Ollama's paths.
    """

    isLeaf = True

    def __init__(self, script: Script, record: Record, reactor: Any) -> None:
        super().__init__()
        self.api = OllamaApi(script, record, reactor)
        self.manage = ModelManagement(self.api)
        self.record = record
        self.reactor = reactor
        self._routes = self.api.routes()
        self._routes.update(self.manage.routes())
        self._blobs = self.manage.blob_routes()
        self._control: Dict[bytes, Dict[bytes, Handler]] = {
            b"/_emulator/record": {b"GET": self._get_record},
            b"/_emulator/reset": {b"POST": self._reset},
            b"/_emulator/script": {b"GET": self._get_script, b"POST": self._set_script},
            b"/_emulator/queue": {b"POST": self._queue},
        }
        # Blob uploads carry the file, not JSON.
        self._bodyless = {self._reset, self._blobs[b"POST"]}

    @property
    def script(self) -> Script:
        return self.api.script

    @script.setter
    def script(self, script: Script) -> None:
        self.api.script = script

    # dispatch

    def render(self, request: Any) -> Any:
        # Ollama's Go server sends no Server header; twisted.web adds one
        # before render.
        request.responseHeaders.removeHeader(b"server")
        path = request.path
        method = request.method
        raw = request.content.read() if request.content is not None else b""
        control = self._control.get(path)
        if control is not None:
            return self._dispatch(request, control, method, raw, record=False)
        routes = self._routes.get(path)
        if routes is None and path.startswith(b"/api/blobs/"):
            routes = self._blobs
        return self._dispatch(request, routes, method, raw, record=True)

    def _dispatch(self, request: Any, routes: Optional[Dict[bytes, Handler]],
                  method: bytes, raw: bytes, record: bool) -> Any:
        body: Any = None
        problem: Optional[Refusal] = None
        if raw or method == b"POST":
            try:
                body = decode_body(raw)
            except Refusal as e:
                problem = e
        if record:
            self._record_request(request, body, raw)
        if routes is None:
            return reply(request, 404, b"404 page not found", TEXT_TYPE)
        handler = routes.get(method)
        if handler is None:
            return reply(request, 405, b"405 method not allowed", TEXT_TYPE)
        try:
            if method == b"POST" and problem is not None and handler not in self._bodyless:
                raise problem
            return handler(request, body)
        except Refusal as e:
            return reply(request, e.status, error_body(e.message))

    def _record_request(self, request: Any, body: Any, raw: bytes) -> None:
        headers = {}
        for name, values in request.requestHeaders.getAllRawHeaders():
            headers[name.decode("latin-1").lower()] = ", ".join(
                value.decode("latin-1") for value in values)
        self.record.add(RecordedRequest(
            request.method.decode("latin-1"), request.path.decode("latin-1"),
            headers, body, self.reactor.seconds(), len(raw),
        ))

    # control paths (not Ollama's)

    def _get_record(self, request: Any, body: Any) -> bytes:
        return reply(request, 200, dumps(self.record.to_dict()))

    def _reset(self, request: Any, body: Any) -> bytes:
        self.record.reset()
        return reply(request, 200, dumps({"reset": True}))

    def _get_script(self, request: Any, body: Any) -> bytes:
        return reply(request, 200, dumps(self.script.to_dict()))

    def _set_script(self, request: Any, body: Any) -> bytes:
        try:
            self.script = Script.from_dict(body)
        except ScriptError as e:
            raise Refusal(400, str(e))
        return reply(request, 200, dumps(self.script.to_dict()))

    def _queue(self, request: Any, body: Any) -> bytes:
        try:
            self.script.push(body)
        except ScriptError as e:
            raise Refusal(400, str(e))
        return reply(request, 200, dumps({"pending": self.script.pending}))


def build_resource(script: Optional[Script] = None, record: Optional[Record] = None,
                   reactor: Any = None) -> EmulatorResource:
    """
    The emulator as a resource, for tests that host it themselves
    (C{StubTreq}, a C{Site} on a C{StringTransport}).

    @param reactor: provides C{seconds} and C{callLater}; a
        L{twisted.internet.task.Clock} in unit tests. Defaults to the
        global reactor.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor
        reactor = global_reactor
    return EmulatorResource(script if script is not None else Script(),
                            record if record is not None else Record(), reactor)


# -- listening --------------------------------------------------------------


class _TrackedChannel(HTTPChannel):
    """
    An HTTP/1.1 channel that tells its site when it opens and closes, so
    L{Emulator.stop} can drop every open connection.
    """

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.channel_opened(self)

    def connectionLost(self, reason: Any) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.factory.channel_closed(self)


class _EmulatorSite(Site):
    """
    A C{Site} without an access log (it would cost more than a stream chunk)
    that tracks its connections.

    @ivar accepted: connections accepted so far (tests and the benchmark
        check that the gateway reuses its connections).
    """

    protocol = _TrackedChannel

    def __init__(self, resource: Resource, reactor: Any) -> None:
        super().__init__(resource, reactor=reactor)
        self._channels: set = set()
        self._idle: List[defer.Deferred] = []
        self.accepted = 0

    def log(self, request: Any) -> None:
        pass

    def channel_opened(self, channel: HTTPChannel) -> None:
        self.accepted += 1
        record = getattr(self.resource, "record", None)
        if record is not None:
            record.connection_opened()
        self._channels.add(channel)

    def channel_closed(self, channel: HTTPChannel) -> None:
        self._channels.discard(channel)
        if not self._channels:
            waiters, self._idle = self._idle, []
            for waiter in waiters:
                waiter.callback(None)

    def drop_connections(self) -> defer.Deferred:
        """
        Abort every open connection; fires when all are closed.
        """
        if not self._channels:
            return defer.succeed(None)
        waiter: defer.Deferred = defer.Deferred()
        self._idle.append(waiter)
        for channel in list(self._channels):
            channel.transport.abortConnection()
        return waiter


class Emulator:
    """
    A listening emulator.

    @ivar port: the C{IListeningPort}.
    @ivar url: C{http://127.0.0.1:PORT}, what the gateway's C{upstream.url}
        should be.
    @ivar resource: the L{EmulatorResource}.
    """

    def __init__(self, port: Any, site: _EmulatorSite, resource: EmulatorResource,
                 host: str) -> None:
        self.port = port
        self.resource = resource
        self._site = site
        self._stop_waiters: Optional[List[defer.Deferred]] = None
        self._stopped = False
        shown = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        if ":" in shown:
            shown = "[%s]" % (shown,)
        self.url = "http://%s:%d" % (shown, port.getHost().port)

    @property
    def script(self) -> Script:
        return self.resource.script

    @script.setter
    def script(self, script: Script) -> None:
        self.resource.script = script

    @property
    def record(self) -> Record:
        return self.resource.record

    @property
    def accepted(self) -> int:
        """
        Connections accepted since start.
        """
        return self._site.accepted

    def stop(self) -> defer.Deferred:
        """
        Stop listening and drop open connections (streams in progress count
        as abandoned). Fires when the port and every connection are closed;
        calling it again is harmless.
        """
        if self._stopped:
            return defer.succeed(None)
        waiter: defer.Deferred = defer.Deferred()
        if self._stop_waiters is None:
            self._stop_waiters = [waiter]
            stopping = defer.maybeDeferred(self.port.stopListening)
            dropping = self._site.drop_connections()
            (defer.gatherResults([stopping, dropping], consumeErrors=True)
             .addBoth(self._stop_done))
        else:
            self._stop_waiters.append(waiter)
        return waiter

    def _stop_done(self, outcome: Any) -> None:
        self._stopped = True
        waiters, self._stop_waiters = self._stop_waiters or [], []
        for waiter in waiters:
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            else:
                waiter.callback(None)


def listen(reactor: Any, script: Optional[Script] = None, host: str = "127.0.0.1",
           port: int = 0, record: Optional[Record] = None) -> defer.Deferred:
    """
    Serve the emulator on C{host:port} (port 0 picks a free one).

    @return: a Deferred firing with an L{Emulator}, or failing with
        C{CannotListenError}.
    """
    resource = build_resource(script, record, reactor)
    site = _EmulatorSite(resource, reactor)
    try:
        listening = reactor.listenTCP(port, site, interface=host)
    except Exception:
        return defer.fail()
    return defer.succeed(Emulator(listening, site, resource, host))
