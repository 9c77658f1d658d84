# -*- test-case-name: tests.gate.test_peerfilter -*-
"""
The connection filter in front of TLS: address rules, bans, a token bucket
of new connections per address, and concurrency caps, all decided in
C{buildProtocol} before a byte is read.

Why it wraps the TLS factory from the outside (style.md section 1.3): the
listening port asks this factory for a protocol with only the peer address
in hand; returning L{None} makes the port close the socket at once, so a
refused peer costs one C{accept()} and no handshake. Placed inside
C{TLSMemoryBIOFactory} instead, a L{None} would be wrapped by TLS and crash
in C{makeConnection}, and every refused peer would first cost a handshake.
C{policies.LimitConnectionsByPeer} is not used: it indexes C{addr[0]},
which C{IPv4Address} does not support; this keys by C{addr.host}.

Trusted proxies (C{access.trusted_proxies}) carry many clients on one
address, so the per-address measures (bans, the connection bucket, the
per-address cap) do not apply to them; their clients are told apart at the
request level from X-Forwarded-For. The allow/deny lists and the total cap
still apply.

The first bytes of every connection are checked before they reach OpenSSL:
a TLS connection starts with a handshake record (C{0x16}). Plain HTTP (a
client configured with C{http://}, or a WebSocket upgrade from a chat front
end whose own gateway defaults to this port) gets a short plain-text
C{400} saying the port speaks HTTPS, then the connection is closed; other
bytes are dropped. Bytes that do start like TLS but fail the handshake are
noticed when the connection ends. Twisted itself logs nothing for any of
these (checked on 22.4 and 26.10), so each is logged here, once per peer
and kind per window, with a global cap on lines per window so that a flood
from many addresses cannot flood the log either. Nothing of this touches
other connections.

Refusals that explain themselves: a refused peer (banned, over a cap, over
the connection rate) would see only a reset, and an SDK reports that as a
network error and retries. So, within a small budget
(C{connections.refusal_answers} per peer and minute,
C{connections.refusal_budget} per minute in all), a refused connection is
handed to a separate TLS protocol whose inner L{RefusalAnswer} reads the
request, writes one 403 C{address_banned} or 429 C{too_many_connections}
with C{Retry-After}, and closes; it never reaches the HTTP site and holds no
place in the counts. Past the budget the peer is dropped at accept as
before, so a flood costs no TLS work beyond the budget.

Connection exhaustion: every connection gets C{connections.handshake_timeout}
seconds from accept to a completed handshake (a bare connect or a stalled
handshake no longer holds a slot for the 60 s idle timeout), and when the
total cap is reached a new connection closes the oldest connection that has
not yet made an authenticated request (L{TrustedConnectionHook} marks the
others), so a few addresses each within C{max_per_ip} cannot lock out the
clients that have a key. IPv6 peers are counted per C{/64}
(C{connections.ipv6_prefix}) for the per-address cap and connection rate:
one host owns a whole prefix.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections import OrderedDict
from typing import Any, Callable, Dict, Optional, Tuple

from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import implementer

from qwen_twist import errors
from qwen_twist.config import Config
from qwen_twist.gate.addresses import AddressRules, parse_address
from qwen_twist.gate.bans import BanList
from qwen_twist.gate.ratelimit import TokenBuckets
from qwen_twist.interfaces import IAdmissionHook, IReconfigurable
from qwen_twist.web import hygiene, respond

#: Why a connection was refused at accept time, as counted in
#: L{PeerFilterFactory.refused} and logged.
REFUSALS = {
    "address": "address not allowed",
    "banned": "address banned after failed authentication",
    "rate": "too many new connections from this address",
    "per_ip": "too many open connections from this address",
    "total": "too many open connections in all",
}

#: What a connection sent instead of a TLS handshake, as counted in
#: L{PeerFilterFactory.dropped} and logged.
DROPS = {
    "http": "plain HTTP sent to the TLS port",
    "websocket": "a plain-HTTP WebSocket upgrade sent to the TLS port",
    "not_tls": "bytes that are not TLS sent to the TLS port",
    "handshake": "TLS handshake not completed",
    "handshake_timeout": "TLS handshake not completed in time",
    "evicted": "closed to admit a new connection at max_total (no authenticated request yet)",
}

#: Refusals answered over TLS (within the budget); the rest are only closed.
ANSWERED = frozenset(["banned", "rate", "per_ip", "total"])

#: Seconds over which C{refusal_answers} and C{refusal_budget} are counted.
ANSWER_WINDOW = 60.0

#: Bytes of a refused peer's request read before answering anyway.
_ANSWER_READ = 65536
_CONTENT_LENGTH = re.compile(rb"(?im)^content-length:[ \t]*([0-9]{1,12})[ \t]*\r?$")

#: Seconds during which a peer's refusals for one reason are logged once.
LOG_WINDOW = 60.0
#: Refusal and drop lines logged per window at most, over all peers.
LOG_LINES = 100

_TLS_HANDSHAKE_RECORD = 0x16
_HTTP_METHODS = frozenset(
    [b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"CONNECT",
     b"TRACE", b"PRI"]
)
_SNIFF = 8192




def classify(data: bytes) -> str:
    """
    What a connection that did not start with a TLS handshake record sent:
    C{"http"}, C{"websocket"} or C{"not_tls"} (keys of L{DROPS}).
    """
    method = data[:8].split(b" ", 1)
    if len(method) == 2 and method[0] in _HTTP_METHODS:
        head = data[:_SNIFF].lower()
        if b"upgrade:" in head and b"websocket" in head:
            return "websocket"
        return "http"
    return "not_tls"


_SNIFFING, _PASSING, _DROPPED = 0, 1, 2


class FilteredConnection(ProtocolWrapper):
    """
    One admitted connection: holds its place in the counts until it ends,
    checks that it starts with TLS and that its handshake completes in
    time.

    @ivar peer: the normalised peer address (bans and logs use it).
    @ivar group: what the per-address counts are keyed by: the address, or
        its IPv6 prefix.
    @ivar trusted: it carried an authenticated request, so it is never
        evicted to make room.
    """

    def __init__(self, factory: "PeerFilterFactory", wrappedProtocol: Any, peer: str,
                 group: str) -> None:
        ProtocolWrapper.__init__(self, factory, wrappedProtocol)
        self.peer = peer
        self.group = group
        self.trusted = False
        self._busy = 0
        self._state = _SNIFFING
        self._counted = True
        self._deadline: Optional[Any] = None

    def makeConnection(self, transport: Any) -> None:
        factory = self.factory
        self._deadline = factory.clock.callLater(
            factory.config.connections.handshake_timeout, self._handshake_too_slow
        )
        ProtocolWrapper.makeConnection(self, transport)

    def dataReceived(self, data: bytes) -> None:
        state = self._state
        if state == _PASSING:
            self.wrappedProtocol.dataReceived(data)
        elif state == _SNIFFING and data:
            if data[0] == _TLS_HANDSHAKE_RECORD:
                self._state = _PASSING
                self.wrappedProtocol.dataReceived(data)
            else:
                self._state = _DROPPED
                self._stop_deadline()
                self.factory.not_tls(self, data)
                return
        if self._deadline is not None and self._handshake_done():
            self._stop_deadline()

    def _handshake_done(self) -> bool:
        # TLSMemoryBIOProtocol documents _handshakeDone as an ivar (22.4 to
        # 26.10); another wrapped protocol counts as done once it has data.
        return bool(getattr(self.wrappedProtocol, "_handshakeDone", True))

    def _stop_deadline(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _handshake_too_slow(self) -> None:
        self._deadline = None
        self.factory.handshake_timed_out(self)
        self.transport.abortConnection()

    def trust(self) -> None:
        """
        An authenticated request arrived on this connection: it is no
        longer a candidate for eviction.
        """
        if not self.trusted:
            self.trusted = True
            self.factory.strangers.pop(self, None)

    def busy(self, delta: int) -> None:
        """
        A request without an identity (C{auth.required: false}) was admitted
        on this connection (C{+1}) or ended (C{-1}): while one is being
        answered, the connection is not evicted, so a flood cannot cut an
        anonymous client's stream.
        """
        self._busy += delta
        if self.trusted or not self._counted:
            return
        if self._busy > 0:
            self.factory.strangers.pop(self, None)
        else:
            self.factory.strangers[self] = None

    def release(self) -> None:
        """
        Free this connection's places in the counts (once).
        """
        if self._counted:
            self._counted = False
            self.factory.release(self)

    def connectionLost(self, reason: Any = None) -> None:
        factory = self.factory
        self._stop_deadline()
        self.release()
        if self._state == _PASSING and not self._handshake_done():
            factory.handshake_failed(self.peer)
        ProtocolWrapper.connectionLost(self, reason)


class RefusalAnswer(Protocol):
    """
    The inner protocol (inside TLS) of a refused connection: reads the
    request (up to 64 KiB, so the client is not reset while still
    sending), writes one prepared answer and closes. A deadline bounds the
    whole exchange, handshake included.
    """

    def __init__(self, answer: bytes, clock: Any, timeout: float) -> None:
        self.answer = answer
        self.clock = clock
        self.timeout = timeout
        self._buffer = b""
        self._answered = False
        self._deadline: Optional[Any] = None

    def connectionMade(self) -> None:
        self._deadline = self.clock.callLater(self.timeout, self._expire)

    def dataReceived(self, data: bytes) -> None:
        if self._answered:
            return
        self._buffer += data
        buffered = self._buffer
        end = buffered.find(b"\r\n\r\n")
        if end >= 0:
            match = _CONTENT_LENGTH.search(buffered[:end + 2])
            length = int(match.group(1)) if match else 0
            if len(buffered) - end - 4 < min(length, _ANSWER_READ):
                return
        elif len(buffered) < _ANSWER_READ:
            return
        self._answered = True
        self._buffer = b""
        self.transport.write(self.answer)
        self.transport.loseConnection()

    def _expire(self) -> None:
        self._deadline = None
        self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()


def _rfc3339(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(int(seconds) + 1, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@implementer(IReconfigurable)
class PeerFilterFactory(WrappingFactory):
    """
    Wraps the TLS factory from outside and refuses before any handshake.

    @ivar config: the whole configuration; C{connections} is read at call
        time.
    @ivar refused: refusals by reason (keys of L{REFUSALS}).
    @ivar answered: refusals answered over TLS, by reason.
    @ivar dropped: non-TLS, failed or timed-out handshakes and evicted
        connections, by kind (keys of L{DROPS}).
    @ivar active: connections open now.
    @ivar per_ip: connections open now by address group (absent when
        zero).
    @ivar strangers: connections open now that have not made an
        authenticated request, oldest first (eviction candidates).
    @ivar buckets: the new-connection L{TokenBuckets}, by address group.
    """

    protocol = FilteredConnection  # type: ignore[assignment]
    noisy = False
    log = Logger()
    #: What L{reconfigure} reads (bans are the shared L{BanList}'s).
    uses = ("connections", "access", "response.hsts_max_age")

    def __init__(
        self,
        wrapped_factory: Any,
        rules: AddressRules,
        bans: BanList,
        config: Config,
        clock: Any,
        log_window: float = LOG_WINDOW,
        log_lines: int = LOG_LINES,
        answer_tls: Optional[Callable[[Protocol], Any]] = None,
    ) -> None:
        """
        @param wrapped_factory: the TLS factory (C{TLSMemoryBIOFactory}).
        @param rules: the address rules; replaced by L{set_rules}.
        @param bans: the ban list shared with the request pipeline.
        @param config: the configuration (limits in C{connections}).
        @param clock: an C{IReactorTime}.
        @param log_window: seconds during which one peer's refusals for one
            reason are logged once.
        @param log_lines: lines logged per window at most, over all peers.
        @param answer_tls: wraps a L{RefusalAnswer} in a server TLS protocol
            (the same certificate as the listener); L{None} drops every
            refused connection silently.
        """
        WrappingFactory.__init__(self, wrapped_factory)
        self.rules = rules
        self.bans = bans
        self.clock = clock
        self.answer_tls = answer_tls
        self.response_headers = respond.DEFAULT_HEADERS
        self.active = 0
        self.per_ip: Dict[str, int] = {}
        self.strangers: "OrderedDict[FilteredConnection, None]" = OrderedDict()
        self.refused: Dict[str, int] = dict.fromkeys(REFUSALS, 0)
        self.answered: Dict[str, int] = dict.fromkeys(ANSWERED, 0)
        self.dropped: Dict[str, int] = dict.fromkeys(DROPS, 0)
        self._log_window = log_window
        self._logged: Dict[Tuple[str, str], float] = {}
        self._log_lines = TokenBuckets(log_lines / log_window, log_lines)
        self._suppressed = 0
        self.buckets = TokenBuckets(0, 1)
        self._answers_per_peer = TokenBuckets(0, 1)
        self._answers = TokenBuckets(0, 1)
        self.config: Optional[Config] = None
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """
        New caps, connection rate, answer budgets and address rules for
        connections accepted from now on; open connections are not dropped
        (the request-level address hook re-checks the rules per request).
        Buckets whose limits did not change are kept, so a reload does not
        hand every peer a fresh burst.
        """
        if self.config is not None:
            self.rules = AddressRules.from_config(config.access)
        self.config = config
        # The security headers of the answers, as the site sends them.
        self.response_headers = hygiene.security_headers(config.response.hsts_max_age)
        connections = config.connections
        if (self.buckets.rate, self.buckets.burst) != (connections.rate, connections.burst):
            self.buckets = TokenBuckets(connections.rate, connections.burst)
        for name, count in (("_answers_per_peer", connections.refusal_answers),
                            ("_answers", connections.refusal_budget)):
            # A zero count is never asked (see _may_answer).
            wanted = (count / ANSWER_WINDOW, float(max(count, 1)))
            current = getattr(self, name)
            if (current.rate, current.burst) != wanted:
                setattr(self, name, TokenBuckets(*wanted))

    # Accepting ------------------------------------------------------------

    def group_of(self, address: Any) -> str:
        """
        The key of the per-address counts: the address, or for IPv6 its
        C{connections.ipv6_prefix} network.
        """
        prefix = self.config.connections.ipv6_prefix
        if address.version == 6 and prefix < 128:
            return str(ipaddress.ip_network((address, prefix), strict=False))
        return str(address)

    def buildProtocol(self, addr: Any) -> Any:
        """
        Admit or refuse a new connection from C{addr}; L{None} refuses (the
        port closes the socket without reading from it); a refusal within
        the answer budget gets a TLS protocol that answers it.
        """
        now = self.clock.seconds()
        host = getattr(addr, "host", None)
        address = parse_address(host) if isinstance(host, str) else None
        if address is None:
            return self._refuse(str(host), "address", now)
        peer = str(address)
        rules = self.rules
        if not rules.permits_address(address):
            return self._refuse(peer, "address", now)
        limits = self.config.connections
        group = self.group_of(address)
        count = self.per_ip.get(group, 0)
        if not (rules.trusted_proxies and address in rules.trusted_proxies):
            banned = self.bans.banned_for(peer, now)
            if banned > 0.0:
                return self._refuse(peer, "banned", now, addr, banned)
            decision = self.buckets.take(group, now)
            if not decision.allowed:
                return self._refuse(peer, "rate", now, addr, decision.retry_after)
            if count >= limits.max_per_ip:
                return self._refuse(peer, "per_ip", now, addr, 1.0)
        if self.active >= limits.max_total and not (
            limits.evict_strangers and self._evict_stranger(now)
        ):
            return self._refuse(peer, "total", now, addr, 1.0)
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None:
            return None
        self.active += 1
        self.per_ip[group] = count + 1
        connection = self.protocol(self, inner, peer, group)
        self.strangers[connection] = None
        return connection

    def _evict_stranger(self, now: float) -> bool:
        """
        Close the oldest connection that has not made an authenticated
        request, freeing its place at once.

        @return: whether one was closed.
        """
        while self.strangers:
            connection, _ = self.strangers.popitem(last=False)
            if connection.transport is None:
                continue
            connection.release()
            self.dropped["evicted"] += 1
            self._log_once(connection.peer, "evicted", now,
                           "dropped connection from {peer}: {why}{more}", DROPS["evicted"])
            connection.transport.abortConnection()
            return True
        return False

    def _refuse(self, peer: str, reason: str, now: float, addr: Any = None,
                retry_after: float = 0.0) -> Any:
        self.refused[reason] += 1
        self._log_once(peer, reason, now, "refused connection from {peer}: {why}{more}",
                       REFUSALS[reason])
        if addr is None or reason not in ANSWERED or not self._may_answer(peer, now):
            return None
        return self._answer(reason, now, retry_after)

    def _may_answer(self, peer: str, now: float) -> bool:
        """
        Whether this refusal is within the per-peer and global answer
        budgets (and takes from both if so).
        """
        limits = self.config.connections
        if self.answer_tls is None or not limits.refusal_answers or not limits.refusal_budget:
            return False
        if not self._answers.peek(None, now).allowed:
            return False
        address = parse_address(peer)
        # Per address group: a host rotating through its IPv6 /64 gets no
        # more answers than one address.
        key = peer if address is None else self.group_of(address)
        if not self._answers_per_peer.take(key, now).allowed:
            return False
        self._answers.take(None, now)
        return True

    def _answer(self, reason: str, now: float, retry_after: float) -> Any:
        """
        A TLS protocol that answers this refusal in the OpenAI envelope.
        """
        if reason == "banned":
            err = errors.address_banned(retry_after, _rfc3339(now + retry_after))
        else:
            err = errors.too_many_connections(REFUSALS[reason], retry_after)
        self.answered[reason] += 1
        inner = RefusalAnswer(
            respond.raw_error(err, self.response_headers),
            self.clock,
            self.config.connections.handshake_timeout,
        )
        return self.answer_tls(inner)

    def release(self, connection: FilteredConnection) -> None:
        """
        A connection ended (or was evicted): free its places in the counts.
        """
        self.active -= 1
        self.strangers.pop(connection, None)
        group = connection.group
        count = self.per_ip.get(group, 0) - 1
        if count > 0:
            self.per_ip[group] = count
        else:
            self.per_ip.pop(group, None)

    # Connections that are not TLS -----------------------------------------

    def not_tls(self, connection: FilteredConnection, data: bytes) -> None:
        """
        C{connection} started with bytes that are not a TLS handshake:
        answer plain HTTP with a plain 400, drop anything else, log once.
        """
        kind = classify(data)
        self.dropped[kind] += 1
        self._log_once(connection.peer, kind, self.clock.seconds(),
                       "dropped connection from {peer}: {why}{more}", DROPS[kind])
        transport = connection.transport
        if kind == "not_tls":
            transport.abortConnection()
        else:
            transport.write(respond.raw_error(errors.https_required(), self.response_headers))
            transport.loseConnection()

    def handshake_timed_out(self, connection: FilteredConnection) -> None:
        """
        C{connection} did not complete its TLS handshake within
        C{connections.handshake_timeout} (a bare connect, a stalled
        handshake); it is being closed.
        """
        connection._state = _DROPPED
        self.dropped["handshake_timeout"] += 1
        self._log_once(connection.peer, "handshake_timeout", self.clock.seconds(),
                       "dropped connection from {peer}: {why}{more}",
                       DROPS["handshake_timeout"])

    def handshake_failed(self, peer: str) -> None:
        """
        A connection from C{peer} that started like TLS ended before its
        handshake completed (garbage, a client that does not trust the
        certificate, a scanner).
        """
        self.dropped["handshake"] += 1
        self._log_once(peer, "handshake", self.clock.seconds(),
                       "dropped connection from {peer}: {why}{more}", DROPS["handshake"])

    # Logging ----------------------------------------------------------------

    def _log_once(self, peer: str, reason: str, now: float, fmt: str, why: str) -> None:
        last = self._logged.get((peer, reason))
        if last is not None and now - last < self._log_window:
            return
        if not self._log_lines.take(None, now).allowed:
            self._suppressed += 1
            return
        self._logged[(peer, reason)] = now
        suppressed, self._suppressed = self._suppressed, 0
        more = " (%d similar lines suppressed)" % (suppressed,) if suppressed else ""
        self.log.info(fmt, peer=peer, reason=reason, why=why, more=more)

    # Operations -------------------------------------------------------------

    def set_rules(self, rules: AddressRules) -> None:
        """
        Use new address rules (SIGHUP): they apply to new connections;
        open ones are not dropped.
        """
        self.rules = rules

    def prune(self) -> int:
        """
        Forget full connection buckets and expired log windows, so memory
        follows the addresses active recently, not every address ever seen.
        Call it from a timer.

        @return: how many entries were dropped.
        """
        now = self.clock.seconds()
        dropped = self.buckets.prune(now) + self._answers_per_peer.prune(now)
        stale = [key for key, last in self._logged.items() if now - last >= self._log_window]
        for key in stale:
            del self._logged[key]
        self._log_lines.prune(now)
        return dropped + len(stale)

    def connections_from(self, peer: str) -> int:
        """
        Connections open now from C{peer}'s address group (C{peer} is a
        normalised address).
        """
        address = parse_address(peer)
        return 0 if address is None else self.per_ip.get(self.group_of(address), 0)

    def close_all(self, abort: bool = False) -> int:
        """
        Close every open connection: gracefully through the protocol
        stack (TLS close_notify), or at once with C{abort}.

        @return: how many were closed.
        """
        connections = list(self.protocols)
        for connection in connections:
            if abort:
                connection.transport.abortConnection()
            else:
                inner = connection.wrappedProtocol
                closer = getattr(inner, "loseConnection", None)
                if closer is not None:
                    closer()
                else:
                    connection.transport.loseConnection()
        return len(connections)


def connection_of(request: Any) -> Optional[FilteredConnection]:
    """
    The L{FilteredConnection} a request arrived on, found by walking down
    its transports (channel -> TLS -> filter); L{None} outside a listener.
    """
    transport = getattr(getattr(request, "channel", None), "transport", None)
    for _ in range(4):
        if transport is None:
            return None
        if isinstance(transport, FilteredConnection):
            return transport
        transport = getattr(transport, "transport", None)
    return None


@implementer(IAdmissionHook)
class TrustedConnectionHook:
    """
    An admission hook, placed right after the identity hook: a request
    that has an identity marks its connection as trusted, so it is never
    evicted to make room at C{max_total}; an admitted request without one
    protects its connection while it is answered.
    """

    def admit(self, request: Any, ctx: Any, plan: Any) -> None:
        connection = connection_of(request)
        if connection is None:
            return
        if ctx.identity is not None:
            connection.trust()
        else:
            connection.busy(1)
            ctx.busy_connection = connection

    def release(self, ctx: Any) -> None:
        """
        An anonymous call ended: its connection may be evicted again.
        """
        connection, ctx.busy_connection = ctx.busy_connection, None
        if connection is not None:
            connection.busy(-1)
