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
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import implementer

from qwen_twist.gate.addresses import AddressRules, parse_address
from qwen_twist.gate.bans import BanList
from qwen_twist.config import ConnectionsConfig
from qwen_twist import errors
from qwen_twist.gate.ratelimit import TokenBuckets
from qwen_twist.interfaces import IReconfigurable

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
}

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


def _https_required() -> bytes:
    body = errors.https_required().body()
    head = (
        "HTTP/1.1 400 Bad Request\r\n"
        "Content-Type: application/json\r\n"
        "Content-Length: %d\r\n"
        "Connection: close\r\n"
        "\r\n" % (len(body),)
    )
    return head.encode("ascii") + body


_HTTPS_REQUIRED = _https_required()


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
    One admitted connection: holds its place in the counts until it ends
    and checks that it starts with TLS.

    @ivar peer: the normalised peer address the counts are keyed by.
    """

    def __init__(self, factory: "PeerFilterFactory", wrappedProtocol: Any, peer: str) -> None:
        ProtocolWrapper.__init__(self, factory, wrappedProtocol)
        self.peer = peer
        self._state = _SNIFFING
        self._counted = True

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
                self.factory.not_tls(self, data)

    def connectionLost(self, reason: Any = None) -> None:
        factory = self.factory
        if self._counted:
            self._counted = False
            factory.release(self.peer)
        # TLSMemoryBIOProtocol documents _handshakeDone as an ivar (22.4 to
        # 26.10); another wrapped protocol counts as "no handshake to fail".
        if self._state == _PASSING and not getattr(self.wrappedProtocol, "_handshakeDone", True):
            factory.handshake_failed(self.peer)
        ProtocolWrapper.connectionLost(self, reason)


@implementer(IReconfigurable)
class PeerFilterFactory(WrappingFactory):
    """
    Wraps the TLS factory from outside and refuses before any handshake.

    @ivar refused: refusals by reason (keys of L{REFUSALS}).
    @ivar dropped: non-TLS or failed-handshake connections by kind (keys of
        L{DROPS}).
    @ivar active: connections open now.
    @ivar per_ip: connections open now by address (absent when zero).
    @ivar buckets: the new-connection L{TokenBuckets}, by address.
    """

    protocol = FilteredConnection  # type: ignore[assignment]
    noisy = False
    log = Logger()

    #: What L{reconfigure} reads (bans are the shared L{BanList}'s).
    uses = ("connections", "access")

    def __init__(
        self,
        wrapped_factory: Any,
        rules: AddressRules,
        bans: BanList,
        connections: ConnectionsConfig,
        clock: Any,
        log_window: float = LOG_WINDOW,
        log_lines: int = LOG_LINES,
    ) -> None:
        """
        @param wrapped_factory: the TLS factory (C{TLSMemoryBIOFactory}).
        @param rules: the address rules; replaced by L{set_rules}.
        @param bans: the ban list shared with the request pipeline.
        @param connections: limits: C{max_total}, C{max_per_ip}, C{rate},
            C{burst}.
        @param clock: an C{IReactorTime} (C{seconds()} is used).
        @param log_window: seconds during which one peer's refusals for one
            reason are logged once.
        @param log_lines: lines logged per window at most, over all peers.
        """
        WrappingFactory.__init__(self, wrapped_factory)
        self.rules = rules
        self.bans = bans
        self.connections = connections
        self.clock = clock
        self.buckets = TokenBuckets(connections.rate, connections.burst)
        self.active = 0
        self.per_ip: Dict[str, int] = {}
        self.refused: Dict[str, int] = dict.fromkeys(REFUSALS, 0)
        self.dropped: Dict[str, int] = dict.fromkeys(DROPS, 0)
        self._log_window = log_window
        self._logged: Dict[Tuple[str, str], float] = {}
        self._log_lines = TokenBuckets(log_lines / log_window, log_lines)
        self._suppressed = 0

    # Accepting ------------------------------------------------------------

    def buildProtocol(self, addr: Any) -> Optional[FilteredConnection]:
        """
        Admit or refuse a new connection from C{addr}; L{None} refuses (the
        port closes the socket without reading from it).
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
        count = self.per_ip.get(peer, 0)
        if not (rules.trusted_proxies and address in rules.trusted_proxies):
            if self.bans.banned_for(peer, now) > 0.0:
                return self._refuse(peer, "banned", now)
            if not self.buckets.take(peer, now).allowed:
                return self._refuse(peer, "rate", now)
            if count >= self.connections.max_per_ip:
                return self._refuse(peer, "per_ip", now)
        if self.active >= self.connections.max_total:
            return self._refuse(peer, "total", now)
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None:
            return None
        self.active += 1
        self.per_ip[peer] = count + 1
        return self.protocol(self, inner, peer)

    def _refuse(self, peer: str, reason: str, now: float) -> None:
        self.refused[reason] += 1
        self._log_once(peer, reason, now, "refused connection from {peer}: {why}{more}",
                       REFUSALS[reason])
        return None

    def release(self, peer: str) -> None:
        """
        A connection from C{peer} ended: free its places in the counts.
        """
        self.active -= 1
        count = self.per_ip.get(peer, 0) - 1
        if count > 0:
            self.per_ip[peer] = count
        else:
            self.per_ip.pop(peer, None)

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
            transport.write(_HTTPS_REQUIRED)
            transport.loseConnection()

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

    def reconfigure(self, config: Any) -> None:
        """
        New caps, connection rate and address rules for connections
        accepted from now on; open connections are not dropped (the
        request-level address hook re-checks the rules per request).
        """
        self.config = config
        connections = config.connections
        if (connections.rate, connections.burst) != (self.connections.rate,
                                                     self.connections.burst):
            self.buckets = TokenBuckets(connections.rate, connections.burst)
        self.connections = connections
        self.rules = AddressRules.from_config(config.access)

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
        dropped = self.buckets.prune(now)
        stale = [key for key, last in self._logged.items() if now - last >= self._log_window]
        for key in stale:
            del self._logged[key]
        self._log_lines.prune(now)
        return dropped + len(stale)

    def connections_from(self, peer: str) -> int:
        """
        Connections open now from C{peer} (a normalised address).
        """
        return self.per_ip.get(peer, 0)

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
