# -*- test-case-name: tests.upstream.test_client -*-
"""
The only module that talks to Ollama.

Why one module: every outbound request must have the same owner, deadlines,
cancel path and error mapping, and none may forward a client header (the
client's C{Authorization} is the gateway's secret, not Ollama's business).

Requests go through treq over one L{HTTPConnectionPool} of persistent
connections, so a busy gateway does not pay a TCP handshake per call. Bodies
are never buffered by treq (C{unbuffered=True}): streams are delivered to a
protocol with backpressure (L{qwen_twist.web.relay}), and non-streaming
bodies are read by L{read_body} with a size cap.

Cancellation is the Deferred's: cancelling the Deferred returned by
L{OllamaClient.send} (client went away, deadline) closes that upstream TCP
connection, which is how Ollama learns to stop generating.
"""

from __future__ import annotations

import json
from typing import Any, Optional
from urllib.parse import urlsplit

from twisted.internet import defer, error as ierror
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import client as wclient
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

import treq.client

from qwen_twist import errors
from qwen_twist.upstream.breaker import BreakerOpen, CircuitBreaker, counts_as_failure
from qwen_twist.config import UpstreamConfig

#: Largest non-streaming upstream body we read (embeddings of big batches
#: are the large case); beyond it the upstream connection is closed.
MAX_BODY_BYTES = 64 * 1024 * 1024

_JSON_HEADERS = Headers(
    {b"Content-Type": [b"application/json"], b"Accept": [b"application/json"]}
)

#: Failures meaning "nothing usable answered at that address".
_UNREACHABLE = (
    ierror.ConnectError,
    ierror.ConnectionLost,
    ierror.ConnectionDone,
    wclient.ResponseNeverReceived,
    wclient.RequestNotSent,
    wclient.RequestTransmissionFailed,
)


class _QuietClientFactory(wclient._HTTP11ClientFactory):
    """
    Twisted logs "Starting factory" for every new upstream connection; a
    busy gateway opens many, and the access log already says what matters.
    """

    noisy = False


class _QuietPool(wclient.HTTPConnectionPool):
    _factory = _QuietClientFactory


class _ServerError(Exception):
    """
    An upstream 5xx, carried through the breaker as a failure and handed
    back to the caller as the response it was (its body has the message).
    """

    def __init__(self, response: IResponse) -> None:
        super().__init__(response.code)
        self.response = response


class UpstreamTimeout(Exception):
    """
    A deadline on an upstream request expired; C{args[0]} says which.
    """


class BodyTooLarge(Exception):
    """
    A non-streaming upstream body exceeded L{MAX_BODY_BYTES}.
    """


class OllamaClient:
    """
    Sends native API requests to one Ollama server.

    @ivar base_url: C{http://host:port} (no trailing slash).
    @ivar where: C{host:port} for error messages (no scheme, no path).
    """

    def __init__(self, reactor: Any, config: UpstreamConfig, agent: Any = None) -> None:
        self._reactor = reactor
        self._config = config
        self.base_url = config.url.rstrip("/")
        parts = urlsplit(self.base_url)
        self.where = parts.netloc
        self._pool: Optional[wclient.HTTPConnectionPool] = None
        if agent is None:
            self._pool = _QuietPool(reactor, persistent=True)
            self._pool.maxPersistentPerHost = config.pool_size
            # Ollama's keep-alive is long; drop idle sockets well before a
            # NAT or firewall would silently.
            self._pool.cachedConnectionTimeout = 120
            agent = wclient.Agent(
                reactor, connectTimeout=config.timeouts.connect, pool=self._pool
            )
        self._http = treq.client.HTTPClient(agent)
        self.breaker: Optional[CircuitBreaker] = None
        if config.breaker.threshold > 0:
            self.breaker = CircuitBreaker(
                self.where, config.breaker.threshold, config.breaker.cooldown, reactor,
                on_transition=self._breaker_moved,
            )

    def _breaker_moved(self, name: str, old: str, new: str) -> None:
        log = self.log.warn if new == "open" else self.log.info
        log("circuit breaker for Ollama at {name}: {old} -> {new}", name=name, old=old, new=new)

    def send(
        self, method: str, path: str, payload: Optional[dict] = None,
        headers_timeout: Optional[float] = None,
    ) -> "defer.Deferred[IResponse]":
        """
        Start a request and fire with the response once its headers arrive.

        @param payload: JSON body, raw bytes (a native blob upload), or
            L{None} for none.
        @param headers_timeout: seconds until response headers; defaults to
            C{upstream.timeouts.headers}. On expiry the request is cancelled
            (its connection closed) and the Deferred fails with
            L{UpstreamTimeout}.
        @return: a cancellable Deferred; its failures are mapped by
            L{map_failure}.
        """
        if self.breaker is None:
            return self._send(method, path, payload, headers_timeout)

        def start() -> defer.Deferred:
            d = self._send(method, path, payload, headers_timeout)
            return d.addCallback(_raise_server_error)

        def is_failure(failure: Failure) -> bool:
            return bool(failure.check(_ServerError)) or counts_as_failure(failure)

        d = self.breaker.call(start, is_failure)
        d.addErrback(_unwrap_server_error)
        return d

    def _send(
        self, method: str, path: str, payload: Optional[dict], headers_timeout: Optional[float]
    ) -> "defer.Deferred[IResponse]":
        body = None
        if isinstance(payload, bytes):
            # A native blob upload: the bytes are the file.
            body = BytesBody(payload)
        elif payload is not None:
            body = BytesBody(json.dumps(payload, separators=(",", ":"),
                                        ensure_ascii=False).encode("utf-8"))
        d = self._http.request(
            method,
            self.base_url + path,
            data=body,
            headers=_JSON_HEADERS,
            unbuffered=True,
        )
        if headers_timeout is None:
            headers_timeout = self._config.timeouts.headers

        def on_timeout(result: Any, timeout: float) -> Any:
            # Whatever cancellation produced (ConnectingCancelledError,
            # ResponseNeverReceived, ...), the caller sees one type.
            raise UpstreamTimeout("Ollama did not answer within %g s" % (timeout,))

        d.addTimeout(headers_timeout, self._reactor, onTimeoutCancel=on_timeout)
        return d

    log = Logger()

    def close(self) -> "defer.Deferred[None]":
        """
        Close pooled connections (service shutdown).
        """
        if self._pool is None:
            return defer.succeed(None)
        return self._pool.closeCachedConnections()


@implementer(IBodyProducer)
class BytesBody:
    """
    A request body already in memory, written in one go.

    Why not treq's default for C{bytes} (a C{FileBodyProducer}): that one
    feeds the body through a cooperator on the global reactor, one more
    scheduled call per request for a body we already hold whole, and one
    that an injected clock or an in-memory agent never runs.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> "defer.Deferred[None]":
        consumer.write(self._data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def _raise_server_error(response: IResponse) -> IResponse:
    # 503 is Ollama's "queue full": alive and answering, not a breaker
    # failure (see qwen_twist.upstream.breaker.counts_as_failure).
    if response.code >= 500 and response.code != 503:
        raise _ServerError(response)
    return response


def _unwrap_server_error(failure: Failure) -> Any:
    if failure.check(_ServerError):
        return failure.value.response
    return failure


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
    if failure.check(wclient.ResponseFailed):
        return errors.upstream_unavailable(where)
    if failure.check(*_UNREACHABLE):
        return errors.upstream_unavailable(where)
    if failure.check(ierror.DNSLookupError):
        return errors.upstream_unavailable(where)
    return errors.internal_error()
