# -*- test-case-name: tests.upstream.test_client -*-
"""
The only module that talks to Ollama.

Why one module: every outbound request must have the same owner, deadlines,
cancel path and error mapping, and none may forward a client header (the
client's C{Authorization} is the gateway's secret, not Ollama's business).

Requests go through treq's C{HTTPClient} (the design card's client), over
an agent of our own that talks to the one upstream through one
L{HTTPConnectionPool} of persistent connections, so a busy gateway does not
pay a TCP handshake per call. Why the agent: C{Agent.request} parses the
URL and builds an endpoint and pool key for every request, a measurable
share of the gateway's CPU per call (issue 10); the upstream is fixed, so
those are built once, the parsed URL of each native path is cached, and the
body is written together with the request head. Redirects are never
followed: an answer from Ollama is relayed or refused, never chased to
another address. Bodies are never buffered: streams are delivered to a
protocol with backpressure (L{qwen_twist.web.relay}), and non-streaming
bodies are read by L{read_body} with a size cap.

Connections: a response whose body was read to its end puts its connection
back in the pool (streams included); one cut or not fully read closes it. A
request that fails before any byte of it reached Ollama (refused, or a
pooled connection found closed when it was used) is sent once more on a
fresh connection, even a C{POST} (L{qwen_twist.upstream.failures.never_sent},
L{qwen_twist.upstream.failures.stale_connection}): generations have no side
effects, and the keep-alive race is otherwise a client-visible 502.

Cancellation is the Deferred's: cancelling the Deferred returned by
L{OllamaClient.send} (client went away, deadline) closes that upstream TCP
connection, which is how Ollama learns to stop generating.

Circuit breakers: one for the server and, created on a model's first
runner failure, one per model (L{qwen_twist.upstream.failures.health}
decides which, if any, a failure counts against).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Optional
from urllib.parse import urlsplit

from twisted.internet import defer, endpoints, error as ierror
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import client as wclient
from twisted.web._newclient import Request
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

import treq.client
from hyperlink import EncodedURL

from qwen_twist import errors
from qwen_twist.config import UpstreamConfig
from qwen_twist.upstream import failures
from qwen_twist.upstream.breaker import (
    FAILURE, NEUTRAL, SUCCESS, CircuitBreaker,
)
from qwen_twist.upstream.failures import BodyTooLarge, BreakerOpen, UpstreamTimeout

#: Largest non-streaming upstream body we read (embeddings of big batches
#: are the large case); beyond it the upstream connection is closed.
MAX_BODY_BYTES = 64 * 1024 * 1024

#: Model breakers kept per upstream at most (a client may name any model;
#: closed ones are dropped first).
MAX_MODEL_BREAKERS = 256

_IDEMPOTENT = (b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"TRACE")



class _QuietClientFactory(wclient._HTTP11ClientFactory):
    """
    Twisted logs "Starting factory" for every new upstream connection; a
    busy gateway opens many, and the access log already says what matters.
    """

    noisy = False


class _NoTransport:
    """
    Nothing to pause or stop: the transport of a body already read, and
    the producer side of a body already in memory.
    """

    __slots__ = ()

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@implementer(IBodyProducer)
class _BytesProducer(_NoTransport):
    """
    A request body in memory: produced whole, and again on a retry (which
    Twisted refuses for producers it cannot rewind).
    """

    __slots__ = ("body", "length")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> "defer.Deferred[None]":
        consumer.write(self.body)
        return defer.succeed(None)


class _Request(Request):
    """
    An upstream request: a body in memory goes out with the headers in
    the same reactor turn (one TCP segment), without Twisted's producer
    machinery for bodies of unknown pace (a consumer, a Deferred and its
    callbacks per request: issue 10).
    """

    def writeTo(self, transport: Any) -> "defer.Deferred[None]":
        producer = self.bodyProducer
        if not isinstance(producer, _BytesProducer):
            return super().writeTo(transport)
        self._writeHeaders(transport, b"Content-Length: %d\r\n" % (producer.length,))
        transport.write(producer.body)
        return defer.succeed(None)


class _RetryingProtocol(wclient._RetryingHTTP11ClientProtocol):
    """
    A pooled connection: a request that finds it closed is retried once on
    a fresh one, whatever its method, when its body can be sent again.
    """

    def _shouldRetry(self, method: bytes, exception: Exception, bodyProducer: Any) -> bool:
        if bodyProducer is not None and not isinstance(bodyProducer, _BytesProducer):
            return False
        if method in _IDEMPOTENT and bodyProducer is None:
            return super()._shouldRetry(method, exception, None)
        return failures.stale_connection(exception)


class _QuietPool(wclient.HTTPConnectionPool):
    """
    The upstream connection pool: quiet, counting the connections it opens
    (L{opened}, a test and benchmark figure), retrying stale ones.
    """

    _factory = _QuietClientFactory
    opened = 0

    def getConnection(self, key: Any, endpoint: Any) -> defer.Deferred:
        # HTTPConnectionPool.getConnection, with our retrying wrapper.
        connections = self._connections.get(key)
        while connections:
            connection = connections.pop(0)
            self._timeouts.pop(connection).cancel()
            if connection.state == "QUIESCENT":
                return defer.succeed(_RetryingProtocol(
                    connection, lambda: self._newConnection(key, endpoint)))
        return self._newConnection(key, endpoint)

    def _newConnection(self, key: Any, endpoint: Any) -> defer.Deferred:
        self.opened += 1
        return super()._newConnection(key, endpoint)


class _DirectAgent:
    """
    C{request()} to the one upstream: endpoint, pool key and C{Host} are
    computed once (see the module docstring).
    """

    def __init__(self, reactor: Any, base_url: str, connect_timeout: float,
                 pool: wclient.HTTPConnectionPool) -> None:
        parts = urlsplit(base_url)
        scheme = parts.scheme.encode("ascii")
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if scheme == b"https" else 80)
        if isIPAddress(host):
            endpoint: Any = endpoints.TCP4ClientEndpoint(
                reactor, host, port, timeout=connect_timeout)
        elif isIPv6Address(host):
            endpoint = endpoints.TCP6ClientEndpoint(
                reactor, host, port, timeout=connect_timeout)
        else:
            endpoint = endpoints.HostnameEndpoint(
                reactor, host, port, timeout=connect_timeout)
        if scheme == b"https":
            policy = wclient.BrowserLikePolicyForHTTPS()
            endpoint = endpoints.wrapClientTLS(
                policy.creatorForNetloc(host.encode("idna"), port), endpoint)
        self._endpoint = endpoint
        self._key = (scheme, host.encode("idna"), port)
        self._prefix = len(base_url.rstrip("/").encode("ascii"))
        self._pool = pool
        self.host = parts.netloc.encode("idna")

    def request(self, method: bytes, uri: bytes, headers: Headers,
                bodyProducer: Any = None) -> defer.Deferred:
        path = uri[self._prefix:] or b"/"
        d = self._pool.getConnection(self._key, self._endpoint)

        def connected(proto: Any) -> defer.Deferred:
            return proto.request(_Request(method, path, headers, bodyProducer,
                                          persistent=True))

        return d.addCallback(connected)


def _headers(host: Optional[bytes]) -> Headers:
    raw = {b"Content-Type": [b"application/json"], b"Accept": [b"application/json"]}
    if host is not None:
        raw[b"Host"] = [host]
    return Headers(raw)


class _BufferedResponse:
    """
    A 5xx response whose (small) body was read to classify it, handed on
    with its body replayed to whoever reads it.
    """

    def __init__(self, original: Any, body: bytes) -> None:
        self.code = original.code
        self.phrase = original.phrase
        self.headers = original.headers
        self.version = original.version
        self.length = len(body)
        self.request = getattr(original, "request", None)
        self.previousResponse = None
        self.upstream_where = getattr(original, "upstream_where", None)
        self._body = body

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(_NoTransport())
        if self._body:
            protocol.dataReceived(self._body)
        protocol.connectionLost(Failure(wclient.ResponseDone()))

    def setPreviousResponse(self, response: Any) -> None:
        self.previousResponse = response


class OllamaClient:
    """
    Sends native API requests to one Ollama server.

    @ivar base_url: C{http://host:port} (no trailing slash).
    @ivar where: C{host:port} for error messages (no scheme, no path).
    @ivar breaker: the server's breaker, or L{None} when disabled.
    """

    log = Logger()

    def __init__(self, reactor: Any, config: UpstreamConfig, agent: Any = None) -> None:
        self._reactor = reactor
        self._config = config
        self.base_url = config.url.rstrip("/")
        self._base = self.base_url.encode("ascii")
        parts = urlsplit(self.base_url)
        self.where = parts.netloc
        self._pool: Optional[_QuietPool] = None
        host = None
        if agent is None:
            self._pool = _QuietPool(reactor, persistent=True)
            self._pool.maxPersistentPerHost = config.pool_size
            # Ollama's keep-alive is long; drop idle sockets well before a
            # NAT or firewall would silently.
            self._pool.cachedConnectionTimeout = 120
            agent = _DirectAgent(reactor, self.base_url, config.timeouts.connect, self._pool)
            host = agent.host
        self._agent = agent
        # treq is the HTTP client API (the design card's); the agent under
        # it is what makes it cheap: endpoint and pool key built once.
        self._http = treq.client.HTTPClient(agent)
        self._urls: Dict[str, EncodedURL] = {}
        self._headers = _headers(host)
        #: Called as C{listener(name, old, new)} after each breaker state
        #: change (the metrics); must not raise.
        self.breaker_listeners: List[Callable[[str, str, str], Any]] = []
        self.breaker: Optional[CircuitBreaker] = None
        self._models: Dict[str, CircuitBreaker] = {}
        if config.breaker.threshold > 0:
            self.breaker = self._new_breaker(self.where)

    @property
    def opened(self) -> int:
        """
        Connections opened to Ollama so far (0 with an injected agent).
        """
        return 0 if self._pool is None else self._pool.opened

    def _new_breaker(self, name: str) -> CircuitBreaker:
        b = self._config.breaker
        return CircuitBreaker(
            name, b.threshold, b.cooldown, self._reactor,
            on_transition=self._breaker_moved, window=b.window,
            min_calls=b.min_calls, failure_rate=b.failure_rate, burst=b.burst,
        )

    def _breaker_moved(self, name: str, old: str, new: str) -> None:
        log = self.log.warn if new == "open" else self.log.info
        log("circuit breaker for Ollama at {name!r}: {old} -> {new}",
            name=name, old=old, new=new)
        for listener in self.breaker_listeners:
            listener(name, old, new)

    def model_breaker(self, model: str) -> Optional[CircuitBreaker]:
        """
        The breaker scoped to C{model} (a L{qwen_twist.upstream.pool.model_key}
        name) if one of its calls ever failed, else L{None}.
        """
        return self._models.get(model)

    def _model_breaker_for_failure(self, model: str) -> CircuitBreaker:
        breaker = self._models.get(model)
        if breaker is None:
            if len(self._models) >= MAX_MODEL_BREAKERS:
                for name, old in list(self._models.items()):
                    if old.state == "closed":
                        del self._models[name]
                if len(self._models) >= MAX_MODEL_BREAKERS:
                    del self._models[next(iter(self._models))]
            breaker = self._models[model] = self._new_breaker(
                "%s model %s" % (self.where, model))
        return breaker

    def send(
        self, method: str, path: str, payload: Optional[dict] = None,
        headers_timeout: Optional[float] = None, request_id: Optional[str] = None,
    ) -> "defer.Deferred[IResponse]":
        """
        Start a request and fire with the response once its headers arrive.

        @param payload: JSON body, raw bytes (a native blob upload), or
            L{None} for none.
        @param headers_timeout: seconds until response headers; defaults to
            C{upstream.timeouts.headers}. On expiry the request is cancelled
            (its connection closed) and the Deferred fails with
            L{UpstreamTimeout}.
        @param request_id: sent as C{X-Request-ID} (already validated), so
            Ollama's side of a call can be traced too.
        @return: a cancellable Deferred; its failures are mapped by
            L{map_failure}.
        """
        if self.breaker is None:
            return self._send(method, path, payload, headers_timeout, request_id)
        model = payload.get("model") if isinstance(payload, dict) else None
        if not isinstance(model, str) or not model:
            model = None
        else:
            model = model_key(model)
        server = self.breaker
        scoped = self._models.get(model) if model is not None else None
        try:
            ticket = server.admit()
        except BreakerOpen:
            return defer.fail()
        scoped_ticket = None
        if scoped is not None:
            try:
                scoped_ticket = scoped.admit()
            except BreakerOpen:
                server.settle(ticket, NEUTRAL)
                return defer.fail()
        inner = self._send(method, path, payload, headers_timeout, request_id)
        inner.addCallback(self._judge_response, model)
        cancelled = False

        def cancel(outer: defer.Deferred) -> None:
            nonlocal cancelled
            cancelled = True
            inner.cancel()

        outer: defer.Deferred = defer.Deferred(cancel)

        def settle(server_outcome: int, model_outcome: int) -> None:
            server.settle(ticket, server_outcome)
            breaker = scoped
            if model_outcome == FAILURE and breaker is None:
                breaker = self._model_breaker_for_failure(model)
            if breaker is not None:
                breaker.settle(scoped_ticket if breaker is scoped else None, model_outcome)

        def judge(result: Any) -> None:
            if cancelled:
                settle(NEUTRAL, NEUTRAL)
                return None
            if not isinstance(result, Failure):
                settle(SUCCESS, SUCCESS)
                outer.callback(result)
                return None
            scope = failures.health(result, model)
            if scope == failures.SERVER:
                settle(FAILURE, NEUTRAL)
            elif scope == failures.MODEL:
                # The server answered (or its runner for this model hung):
                # only the model's breaker counts it.
                settle(NEUTRAL, FAILURE)
            else:
                settle(NEUTRAL, NEUTRAL)
            if isinstance(result.value, failures.ServerError):
                outer.callback(result.value.response)
            else:
                outer.errback(result)
            return None

        inner.addBoth(judge)
        return outer

    def _judge_response(self, response: Any, model: Optional[str]) -> Any:
        # A 5xx: read its (small) body to tell a runner crash from a
        # request Ollama refused; only the former counts against a breaker.
        if response.code < 500 or response.code == 503:
            return response
        response.upstream_where = self.where

        def classify(body: bytes) -> Any:
            buffered = _BufferedResponse(response, body)
            scope = failures.status_health(response.code, body, model)
            if scope is not None:
                raise failures.ServerError(buffered, scope)
            return buffered

        d = read_body(response, failures.ERROR_BODY_LIMIT)
        d.addTimeout(self._config.timeouts.idle, self._reactor)
        return d.addCallback(classify)

    def _send(
        self, method: str, path: str, payload: Optional[dict], headers_timeout: Optional[float],
        request_id: Optional[str] = None,
    ) -> "defer.Deferred[IResponse]":
        producer = None
        if isinstance(payload, bytes):
            # A native blob upload: the bytes are the file.
            producer = _BytesProducer(payload)
        elif payload is not None:
            producer = _BytesProducer(json.dumps(
                payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
        url = self._url(path)
        headers = self._headers
        if request_id:
            headers = headers.copy()
            headers.setRawHeaders(b"X-Request-ID", [request_id.encode("ascii")])
        d = self._http.request(method, url, data=producer, headers=headers,
                               unbuffered=True, allow_redirects=False)
        d.addErrback(self._retry_unsent, method, url, producer, headers)
        d.addCallback(self._answered_by)
        if headers_timeout is None:
            headers_timeout = self._config.timeouts.headers

        def on_timeout(result: Any, timeout: float) -> Any:
            # Whatever cancellation produced (ConnectingCancelledError,
            # ResponseNeverReceived, ...), the caller sees one type.
            raise UpstreamTimeout("Ollama did not answer within %g s" % (timeout,))

        d.addTimeout(headers_timeout, self._reactor, onTimeoutCancel=on_timeout)
        d.addErrback(self._tag, self.where)
        return d

    def _url(self, path: str) -> EncodedURL:
        """
        The parsed URL of C{path} on this server, parsed once per path (the
        few native paths the gateway uses), not once per request.
        """
        url = self._urls.get(path)
        if url is None:
            url = EncodedURL.from_text(self.base_url + path)
            if len(self._urls) < 64:
                self._urls[path] = url
        return url

    def _answered_by(self, response: Any) -> Any:
        # Which server answered, for the call's audit record and metrics
        # (a pool hands on its members' responses).
        response.upstream_where = self.where
        return response

    def _retry_unsent(self, failure: Failure, method: str, url: EncodedURL,
                      producer: Any, headers: Headers) -> Any:
        # Nothing reached Ollama (refused, not sent): once more, on a fresh
        # connection. A stale pooled connection is retried by the pool.
        if not failures.never_sent(failure):
            return failure
        self.log.debug("retrying {url} once after {why}", url=url,
                       why=failures.describe(failure))
        return self._http.request(method, url, data=producer, headers=headers,
                                  unbuffered=True, allow_redirects=False)

    @staticmethod
    def _tag(failure: Failure, where: str) -> Failure:
        failures.tag(failure, where)
        return failure

    def close(self) -> "defer.Deferred[None]":
        """
        Close pooled connections (service shutdown).
        """
        if self._pool is None:
            return defer.succeed(None)
        return self._pool.closeCachedConnections()


def model_key(name: str) -> str:
    """
    The name under which a model is matched: lower case, with the implicit
    C{:latest} tag (C{"qwen3"} and C{"qwen3:latest"} are one model; the
    tag is after the last C{/}, so C{"host:5000/m"} has none).
    """
    name = name.lower()
    if ":" not in name[name.rfind("/") + 1:]:
        name += ":latest"
    return name


class _Collector(Protocol):
    """
    Reads a whole (non-streaming) body into memory, up to a cap.
    """

    def __init__(self, finished: defer.Deferred, limit: int) -> None:
        self._finished = finished
        self._limit = limit
        self._parts: list = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        if self._finished is None:
            return
        self._size += len(data)
        if self._size > self._limit:
            finished, self._finished = self._finished, None
            self.transport.stopProducing()
            finished.errback(BodyTooLarge())
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = None) -> None:
        if self._finished is None:
            return
        finished, self._finished = self._finished, None
        if reason.check(wclient.ResponseDone, wclient.PotentialDataLoss):
            # PotentialDataLoss: a body delimited by connection close; Ollama
            # never sends one, but it is not an error for HTTP/1.0 peers.
            finished.callback(b"".join(self._parts))
        else:
            finished.errback(reason)

    def cancel(self) -> None:
        """
        The reader went away: close the upstream connection.
        """
        if self._finished is not None and self.transport is not None:
            self._finished = None
            self.transport.stopProducing()


def read_body(response: IResponse, limit: int = MAX_BODY_BYTES) -> "defer.Deferred[bytes]":
    """
    Read C{response}'s body; cancelling the result closes the connection.
    """
    collector: _Collector

    def cancel(d: defer.Deferred) -> None:
        collector.cancel()

    finished: defer.Deferred = defer.Deferred(cancel)
    collector = _Collector(finished, limit)
    response.deliverBody(collector)
    return finished


def map_failure(failure: Failure, where: str) -> errors.ApiError:
    """
    The client-facing error for a failed upstream request.
    """
    if failure.check(errors.ApiError):
        return failure.value
    if failure.check(BreakerOpen):
        return failure.value.api_error()
    if failure.check(UpstreamTimeout):
        return errors.upstream_timeout(str(failure.value.args[0]))
    if failure.check(BodyTooLarge):
        return errors.upstream_protocol_error("upstream response too large")
    if failure.check(ierror.TimeoutError, ierror.TCPTimedOutError):
        return errors.upstream_timeout("connecting to Ollama timed out")
    if failures.unreachable(failure):
        return errors.upstream_unavailable(failures.where(failure) or where)
    return errors.internal_error()
