# -*- test-case-name: tests.store.test_resp -*-
"""
A small Redis client on Twisted's own protocols: RESP2 framing, pipelined
commands, Lua scripts by SHA1 with a fallback to C{EVAL} on C{NOSCRIPT},
C{AUTH} and C{SELECT} on every connect, a deadline per command
(C{callLater}, so tests use a C{Clock}), and reconnection with backoff.

Why not a library: Debian 12 ships no Twisted-native Redis client
(C{txredisapi} is only on PyPI), and C{redis.asyncio} (in C{python3-redis})
would put twistd on the asyncio reactor and every call through
C{Deferred.fromFuture}. The gate needs six commands, all answered with
integers, strings or flat arrays; a RESP2 client for them is a parser and a
FIFO of Deferreds, and the C{.deb} gains no dependency.

Why a timed-out command closes the connection: RESP has no request ids;
replies come back in order. Once a reply is late, the next reply read might
be its answer, not the next command's, so the only safe state is a new
connection.

Nothing here logs the password or the replies.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, List, Optional, Tuple
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

#: Largest bulk string accepted in a reply. The gate's replies are a few
#: numbers; a bigger one means a confused server or the wrong port.
MAX_BULK = 16 * 1024 * 1024
#: Most elements in one array reply, and deepest nesting of arrays.
MAX_ITEMS = 1000000
MAX_DEPTH = 8
#: Longest header line (C{+OK}, C{-ERR ...}, C{:12}, C{$5}, C{*3}).
MAX_LINE = 64 * 1024

DEFAULT_PORT = 6379


class StoreUnavailable(Exception):
    """
    Redis could not be asked: not connected, the connection was lost, or
    the command timed out.
    """


class StoreTimeout(StoreUnavailable):
    """
    A command got no reply within its deadline.
    """


class ProtocolError(StoreUnavailable):
    """
    The server sent bytes that are not RESP2 (or exceed the bounds above).
    """


class RespError(Exception):
    """
    An error reply (C{-ERR ...}, C{-NOSCRIPT ...}, C{-WRONGPASS ...}).

    @ivar kind: its first word, e.g. C{NOSCRIPT}.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.kind = message.split(" ", 1)[0]


class _Incomplete(Exception):
    pass


def encode_command(*args: Any) -> bytes:
    """
    One command as a RESP array of bulk strings. Numbers are sent in their
    shortest exact text (C{repr} of a float), which Lua's C{tonumber} reads.
    """
    parts = [b"*%d\r\n" % (len(args),)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode("utf-8")
        elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
            data = repr(arg).encode("ascii")
        else:
            raise TypeError("cannot send %r to Redis" % (type(arg),))
        parts.append(b"$%d\r\n" % (len(data),))
        parts.append(data)
        parts.append(b"\r\n")
    return b"".join(parts)


def _integer(line: bytes) -> int:
    try:
        return int(line)
    except ValueError:
        raise ProtocolError("invalid integer in reply")


def _parse(buf: bytearray, pos: int, depth: int) -> Tuple[Any, int]:
    end = buf.find(b"\r\n", pos)
    if end < 0:
        if len(buf) - pos > MAX_LINE:
            raise ProtocolError("reply line too long")
        raise _Incomplete()
    if end - pos > MAX_LINE:
        raise ProtocolError("reply line too long")
    kind = buf[pos]
    line = bytes(buf[pos + 1:end])
    after = end + 2
    if kind == 0x2B:  # +
        return line.decode("utf-8", "replace"), after
    if kind == 0x2D:  # -
        return RespError(line.decode("utf-8", "replace")), after
    if kind == 0x3A:  # :
        return _integer(line), after
    if kind == 0x24:  # $
        size = _integer(line)
        if size == -1:
            return None, after
        if size < 0 or size > MAX_BULK:
            raise ProtocolError("bulk string of %d bytes refused" % (size,))
        if len(buf) < after + size + 2:
            raise _Incomplete()
        if buf[after + size:after + size + 2] != b"\r\n":
            raise ProtocolError("bulk string not terminated")
        return bytes(buf[after:after + size]), after + size + 2
    if kind == 0x2A:  # *
        count = _integer(line)
        if count == -1:
            return None, after
        if count < 0 or count > MAX_ITEMS:
            raise ProtocolError("array of %d elements refused" % (count,))
        if depth >= MAX_DEPTH:
            raise ProtocolError("arrays nested too deep")
        items = []
        for _ in range(count):
            item, after = _parse(buf, after, depth + 1)
            items.append(item)
        return items, after
    raise ProtocolError("unknown reply type %r" % (bytes([kind]),))


class RespParser:
    """
    Incremental RESP2 reply parser: feed it bytes as they arrive, get back
    the replies completed by them. Simple strings become C{str}, errors
    L{RespError} instances (returned, not raised), integers C{int}, bulk
    strings C{bytes}, arrays C{list}, nulls L{None}.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> List[Any]:
        """
        @raise ProtocolError: the bytes are not RESP2 or exceed the bounds;
            the connection must be closed.
        """
        buf = self._buffer
        buf += data
        replies = []
        pos = 0
        while pos < len(buf):
            try:
                reply, pos = _parse(buf, pos, 0)
            except _Incomplete:
                break
            replies.append(reply)
        del buf[:pos]
        return replies


class RespProtocol(Protocol):
    """
    One connection: commands are written at once (pipelined) and their
    Deferreds fire in order as the replies come in.

    @ivar on_lost: called with this protocol when the connection ends.
    """

    def __init__(self, clock: Any, timeout: float) -> None:
        self.clock = clock
        self.timeout = timeout
        self.on_lost: Optional[Callable[["RespProtocol"], None]] = None
        self._parser = RespParser()
        self._pending: Deque[Tuple[defer.Deferred, Any]] = deque()
        self._closed = False

    def execute(self, *args: Any) -> defer.Deferred:
        """
        Send one command.

        @return: a Deferred firing with the reply, failing with
            L{RespError} (an error reply) or L{StoreUnavailable}.
        """
        if self._closed or self.transport is None:
            return defer.fail(StoreUnavailable("not connected to Redis"))
        d: defer.Deferred = defer.Deferred()
        timer = self.clock.callLater(self.timeout, self._timed_out) if self.timeout > 0 else None
        self._pending.append((d, timer))
        self.transport.write(encode_command(*args))
        return d

    def dataReceived(self, data: bytes) -> None:
        try:
            replies = self._parser.feed(data)
        except ProtocolError as e:
            self._abort(e)
            return
        for reply in replies:
            if not self._pending:
                self._abort(ProtocolError("reply without a command"))
                return
            d, timer = self._pending.popleft()
            if timer is not None and timer.active():
                timer.cancel()
            if isinstance(reply, RespError):
                d.errback(reply)
            else:
                d.callback(reply)

    def _timed_out(self) -> None:
        self._abort(StoreTimeout("Redis did not answer within %gs" % (self.timeout,)))

    def _abort(self, why: Exception) -> None:
        self._fail_all(why)
        if self.transport is not None:
            self.transport.abortConnection()

    def _fail_all(self, why: Exception) -> None:
        self._closed = True
        pending, self._pending = self._pending, deque()
        for d, timer in pending:
            if timer is not None and timer.active():
                timer.cancel()
            d.errback(why)

    def connectionLost(self, reason: Any = None) -> None:
        self._fail_all(StoreUnavailable("connection to Redis lost"))
        if self.on_lost is not None:
            self.on_lost(self)


class Script:
    """
    A Lua script, sent by SHA1 (C{EVALSHA}) and by source only when the
    server does not know it yet (after a restart or C{SCRIPT FLUSH}).
    """

    def __init__(self, source: str) -> None:
        self.source = source.encode("utf-8")
        self.sha = hashlib.sha1(self.source).hexdigest()


@dataclass(frozen=True)
class RedisAddress:
    """
    Where Redis is, from a C{redis://host:port/db} or C{rediss://} (TLS) URL.
    """

    tls: bool
    host: str
    port: int
    db: int

    def __str__(self) -> str:
        return "%s://%s:%d/%d" % ("rediss" if self.tls else "redis", self.host, self.port, self.db)


def parse_url(url: str) -> RedisAddress:
    """
    @raise ValueError: with a text fit for a config error. A password in the
        URL is refused: URLs end up in logs and process listings, so it
        belongs in its own file.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("must be memory, redis://HOST[:PORT][/DB] or rediss://..., got %r"
                         % (url,))
    if parts.password is not None or parts.username:
        raise ValueError("must not contain credentials: use limits.redis.username "
                         "and limits.redis.password_file")
    if not parts.hostname:
        raise ValueError("has no host: %r" % (url,))
    if parts.query or parts.fragment:
        raise ValueError("takes no query or fragment: %r" % (url,))
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError("has an invalid port: %r" % (url,))
    path = parts.path.strip("/")
    if path and not (path.isdigit() and int(path) < 1 << 16):
        raise ValueError("database must be a number, got %r" % (path,))
    return RedisAddress(parts.scheme == "rediss", parts.hostname, port, int(path or 0))


def backoff_delay(failures: int, initial: float, maximum: float) -> float:
    """
    Seconds before reconnection attempt number C{failures} (1-based):
    doubling from C{initial}, at most C{maximum}.
    """
    return min(maximum, initial * (2.0 ** min(max(failures - 1, 0), 60)))


def client_endpoint(reactor: Any, address: RedisAddress, connect_timeout: float,
                    ca_file: Optional[str] = None) -> Any:
    """
    A TCP endpoint for C{address}, wrapped in TLS for C{rediss://}
    (verifying the server's certificate for its host name against
    C{ca_file}, or the system's trust store).
    """
    from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

    endpoint = HostnameEndpoint(reactor, address.host, address.port, timeout=connect_timeout)
    if not address.tls:
        return endpoint
    from twisted.internet import ssl

    if ca_file:
        with open(ca_file, "rb") as f:
            trust = ssl.Certificate.loadPEM(f.read())
    else:
        trust = ssl.platformTrust()
    return wrapClientTLS(ssl.optionsForClientTLS(address.host, trustRoot=trust), endpoint)


class RedisClient:
    """
    A connection to one Redis that comes back by itself.

    Commands are never queued while disconnected: they fail at once with
    L{StoreUnavailable}, so the caller applies its failure policy now
    instead of holding a request for an unknown time.

    @ivar state: C{"connecting"} (no connection yet), C{"up"} or C{"down"}.
    @ivar failures: connection attempts failed since the last success.
    """

    log = Logger()
    #: A number in [0, 1) that scales each reconnection delay between half
    #: and all of it (replaced in tests).
    jitter = staticmethod(random.random)

    def __init__(
        self,
        clock: Any,
        endpoint: Any,
        db: int = 0,
        password: Optional[str] = None,
        username: Optional[str] = None,
        command_timeout: float = 0.5,
        backoff: Tuple[float, float] = (0.1, 5.0),
        on_state: Optional[Callable[[str, str], None]] = None,
    ) -> None:
        """
        @param endpoint: an C{IStreamClientEndpoint} (L{client_endpoint}).
        @param on_state: called with C{(state, why)} on each change of
            L{state}.
        """
        self.clock = clock
        self.endpoint = endpoint
        self.db = db
        self.password = password
        self.username = username
        self.command_timeout = command_timeout
        self.backoff = backoff
        self.on_state = on_state
        self.state = "connecting"
        self.failures = 0
        self._protocol: Optional[RespProtocol] = None
        self._attempt: Optional[defer.Deferred] = None
        self._retry: Any = None
        self._stopped = True

    # Life cycle -----------------------------------------------------------

    def start(self) -> None:
        if not self._stopped:
            return
        self._stopped = False
        self._connect()

    def stop(self) -> None:
        """
        Stop reconnecting and close the connection.
        """
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._attempt is not None:
            attempt, self._attempt = self._attempt, None
            attempt.cancel()
        if self._protocol is not None:
            protocol, self._protocol = self._protocol, None
            protocol.transport.loseConnection()

    def _connect(self) -> None:
        self._retry = None
        factory = Factory.forProtocol(lambda: RespProtocol(self.clock, self.command_timeout))
        d = self._attempt = self.endpoint.connect(factory)
        d.addCallback(self._handshake)
        d.addCallbacks(self._connected, self._connect_failed)
        d.addErrback(lambda f: self.log.failure("Redis connection bookkeeping", f))

    def _handshake(self, protocol: RespProtocol) -> defer.Deferred:
        steps = []
        if self.password is not None:
            if self.username:
                steps.append(protocol.execute(b"AUTH", self.username, self.password))
            else:
                steps.append(protocol.execute(b"AUTH", self.password))
        if self.db:
            steps.append(protocol.execute(b"SELECT", self.db))
        if not steps:
            return defer.succeed(protocol)

        def failed(failure: Any) -> Any:
            if protocol.transport is not None:
                protocol.transport.abortConnection()
            return failure

        d = defer.gatherResults(steps, consumeErrors=True)
        d.addCallbacks(lambda _: protocol, lambda f: failed(f.value.subFailure))
        return d

    def _connected(self, protocol: RespProtocol) -> None:
        self._attempt = None
        if self._stopped:
            protocol.transport.loseConnection()
            return
        self._protocol = protocol
        protocol.on_lost = self._lost
        self.failures = 0
        self._set_state("up", "connected")

    def _connect_failed(self, failure: Any) -> None:
        self._attempt = None
        if self._stopped:
            return
        self.failures += 1
        why = failure.value
        if isinstance(why, RespError):
            reason = "refused: %s" % (why.kind,)
        else:
            reason = type(why).__name__
        self._set_state("down", reason)
        self._schedule()

    def _lost(self, protocol: RespProtocol) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        if self._stopped:
            return
        self.failures = 1
        self._set_state("down", "connection lost")
        self._schedule()

    def _schedule(self) -> None:
        # Jittered, so a fleet of gateways does not reconnect in lockstep.
        delay = backoff_delay(self.failures, *self.backoff) * (0.5 + 0.5 * self.jitter())
        self._retry = self.clock.callLater(delay, self._connect)

    def _set_state(self, state: str, why: str) -> None:
        if state == self.state:
            return
        self.state = state
        if self.on_state is not None:
            self.on_state(state, why)

    # Commands -------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._protocol is not None

    def execute(self, *args: Any) -> defer.Deferred:
        """
        Send one command (pipelined behind any in flight).
        """
        if self._protocol is None:
            return defer.fail(StoreUnavailable("not connected to Redis"))
        return self._protocol.execute(*args)

    def run_script(self, script: Script, keys: List[Any], args: List[Any]) -> defer.Deferred:
        """
        C{EVALSHA}, then C{EVAL} (which also caches it) if the server
        answers C{NOSCRIPT}.
        """
        d = self.execute(b"EVALSHA", script.sha, len(keys), *keys, *args)

        def missing(failure: Any) -> Any:
            failure.trap(RespError)
            if failure.value.kind != "NOSCRIPT":
                return failure
            return self.execute(b"EVAL", script.source, len(keys), *keys, *args)

        d.addErrback(missing)
        return d
