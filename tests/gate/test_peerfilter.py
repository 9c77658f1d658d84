"""
Tests for L{qwen_twist.gate.peerfilter}: the connection filter in front of TLS.

L{PeerFilterFactoryTests} and L{NotTLSTests} drive C{buildProtocol} and the
wrapped connections in memory with a L{Clock}. L{BeforeHandshakeTests}
listen on loopback with the production stack (the filter around
C{TLSMemoryBIOFactory} on a plain TCP port) and connect with Python's own
C{ssl} module from threads, counting TLS protocol instances and completed
handshakes: a refused peer must cost neither.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import ssl as stdlib_ssl
import threading
from typing import Any, List, Optional

from zope.interface import implementer

from twisted.internet import defer, threads
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from qwen_twist.gate import tls
from qwen_twist.gate.addresses import AddressRules
from qwen_twist.gate.bans import BanList
from qwen_twist.config import Config, ConnectionsConfig, TLSConfig
from qwen_twist.gate.peerfilter import (
    FilteredConnection,
    PeerFilterFactory,
    RefusalAnswer,
    TrustedConnectionHook,
    classify,
)
from qwen_twist.tap import answer_tls

GREETING = b"hello\n"
HTTP_REQUEST = b"GET /v1/models HTTP/1.1\r\nHost: localhost:18789\r\n\r\n"
WEBSOCKET_UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: localhost:18789\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
CLIENT_HELLO_START = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


def connections_config(**settings: Any) -> Config:
    """
    A whole configuration with these C{connections} settings.
    """
    return dataclasses.replace(Config(), connections=ConnectionsConfig(**settings))


def addr(host: str, port: int = 40000) -> Any:
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


def lost() -> Failure:
    return Failure(ConnectionDone())


class Recorder(Protocol):
    """
    An inner protocol that records what reaches it.
    """

    def __init__(self) -> None:
        self.received: List[bytes] = []
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


class RecorderFactory(Factory):
    """
    Builds L{Recorder}s (or refuses, with C{refuse}) and keeps them.
    """

    def __init__(self, handshake_done: Optional[bool] = None) -> None:
        self.built: List[Recorder] = []
        self.refuse = False
        self.handshake_done = handshake_done

    def buildProtocol(self, addr: Any) -> Optional[Recorder]:
        if self.refuse:
            return None
        p = Recorder()
        if self.handshake_done is not None:
            # What TLSMemoryBIOProtocol exposes about its handshake.
            p._handshakeDone = self.handshake_done  # type: ignore[attr-defined]
        p.factory = self
        self.built.append(p)
        return p


class FilterFixture:
    """
    A filter around a L{RecorderFactory}, with a clock and captured log.
    """

    def make(
        self,
        allow: tuple = (),
        deny: tuple = (),
        trusted: tuple = (),
        bans: Optional[BanList] = None,
        handshake_done: Optional[bool] = None,
        **limits: Any,
    ) -> PeerFilterFactory:
        self.clock = Clock()
        self.inner = RecorderFactory(handshake_done)
        self.bans = bans if bans is not None else BanList(3, 600.0)
        settings = dict(max_total=1000, max_per_ip=1000, rate=1000.0, burst=1000,
                        evict_strangers=False)
        settings.update(limits)
        log_lines = settings.pop("log_lines", 100)
        answer_tls = settings.pop("answer_tls", None)
        self.factory = PeerFilterFactory(
            self.inner,
            AddressRules(allow, deny, trusted),
            self.bans,
            connections_config(**settings),
            self.clock,
            log_lines=log_lines,
            answer_tls=answer_tls,
        )
        self.events: List[dict] = []
        self.factory.log = Logger(namespace="test", observer=self.events.append)
        return self.factory

    def connect(self, host: str = "192.0.2.1") -> Optional[FilteredConnection]:
        """
        What the port does on accept: build, then connect a transport.
        """
        p = self.factory.buildProtocol(addr(host))
        if p is not None:
            p.makeConnection(StringTransport())
        return p

    def lines(self) -> List[str]:
        return [formatEvent(e) for e in self.events]


class PeerFilterFactoryTests(FilterFixture, SynchronousTestCase):
    """
    Admission and refusal in C{buildProtocol}.
    """

    def test_admits_and_counts(self) -> None:
        """
        An admitted connection wraps the inner protocol and is counted
        until it ends; the per-address entry goes away at zero.
        """
        self.make()
        p = self.connect()
        self.assertIsInstance(p, FilteredConnection)
        self.assertIs(p.wrappedProtocol, self.inner.built[0])
        self.assertEqual((self.factory.active, self.factory.per_ip), (1, {"192.0.2.1": 1}))
        self.assertEqual(self.factory.connections_from("192.0.2.1"), 1)
        p.connectionLost(lost())
        self.assertTrue(self.inner.built[0].lost)
        self.assertEqual((self.factory.active, self.factory.per_ip), (0, {}))
        self.assertEqual(self.factory.protocols, {})

    def test_denied_address(self) -> None:
        """
        A denied address is refused without building the inner (TLS)
        protocol.
        """
        self.make(deny=("192.0.2.0/24",))
        self.assertIsNone(self.connect("192.0.2.1"))
        self.assertEqual(self.inner.built, [])
        self.assertEqual(self.factory.refused["address"], 1)
        self.assertIsNotNone(self.connect("198.51.100.1"))

    def test_not_allowed_address(self) -> None:
        """
        With an allow list, an address outside it is refused.
        """
        self.make(allow=("198.51.100.0/24",))
        self.assertIsNone(self.connect("192.0.2.1"))
        self.assertEqual(self.factory.refused["address"], 1)
        self.assertIsNotNone(self.connect("198.51.100.1"))

    def test_keyed_by_host(self) -> None:
        """
        Connections are counted by C{addr.host}, normalised: an IPv4 client
        seen as IPv4-mapped IPv6 counts as its IPv4 address, and is refused
        by IPv4 rules.
        """
        self.make(deny=("203.0.113.0/24",))
        self.connect("192.0.2.1")
        self.connect("::ffff:192.0.2.1")
        self.connect("2001:DB8::1")
        self.assertEqual(self.factory.per_ip, {"192.0.2.1": 2, "2001:db8::/64": 1})
        self.assertIsNone(self.connect("::ffff:203.0.113.1"))

    def test_not_an_ip_address(self) -> None:
        """
        A peer without an IP address (a UNIX socket) is refused.
        """
        self.make()
        self.assertIsNone(self.factory.buildProtocol(UNIXAddress(b"/tmp/sock")))
        self.assertEqual(self.factory.refused["address"], 1)

    def test_banned(self) -> None:
        """
        A banned address is refused until its ban ends.
        """
        self.make(bans=BanList(1, 600.0))
        self.bans.failure("192.0.2.1", self.clock.seconds())
        self.assertIsNone(self.connect())
        self.assertEqual(self.factory.refused["banned"], 1)
        self.assertEqual(self.inner.built, [])
        self.assertIsNotNone(self.connect("192.0.2.2"))
        self.clock.advance(600.0)
        self.assertIsNotNone(self.connect())

    def test_new_connection_rate(self) -> None:
        """
        New connections from one address are limited by its bucket: the
        burst passes, the next is refused, and a token comes back at the
        configured rate.
        """
        self.make(rate=2.0, burst=3)
        for _ in range(3):
            self.connect().connectionLost(lost())
        self.assertIsNone(self.connect())
        self.assertEqual(self.factory.refused["rate"], 1)
        self.assertIsNotNone(self.connect("192.0.2.2"))
        self.clock.advance(0.5)
        self.assertIsNotNone(self.connect())
        self.assertIsNone(self.connect())

    def test_per_ip_cap(self) -> None:
        """
        One address may hold at most max_per_ip connections at once; a slot
        frees when one of them ends.
        """
        self.make(max_per_ip=2)
        first = self.connect()
        self.connect()
        self.assertIsNone(self.connect())
        self.assertEqual(self.factory.refused["per_ip"], 1)
        self.assertIsNotNone(self.connect("192.0.2.2"))
        first.connectionLost(lost())
        self.assertIsNotNone(self.connect())

    def test_total_cap(self) -> None:
        """
        At most max_total connections are open in all, whatever their
        addresses.
        """
        self.make(max_total=2)
        first = self.connect("192.0.2.1")
        self.connect("192.0.2.2")
        self.assertIsNone(self.connect("192.0.2.3"))
        self.assertEqual(self.factory.refused["total"], 1)
        first.connectionLost(lost())
        self.assertIsNotNone(self.connect("192.0.2.3"))

    def test_trusted_proxy_exempt_from_per_address_limits(self) -> None:
        """
        A trusted proxy carries many clients: it is not limited per address
        (rate, per-address cap, bans), only by the total cap.
        """
        bans = BanList(1, 600.0)
        self.make(trusted=("10.0.0.1",), bans=bans, max_per_ip=1, rate=0.001, burst=1,
                  max_total=5)
        bans.failure("10.0.0.1", 0.0)
        for _ in range(5):
            self.assertIsNotNone(self.connect("10.0.0.1"))
        self.assertIsNone(self.connect("10.0.0.1"))
        self.assertEqual(self.factory.refused["total"], 1)

    def test_inner_factory_refuses(self) -> None:
        """
        If the wrapped factory refuses, so does the filter, and nothing is
        counted.
        """
        self.make()
        self.inner.refuse = True
        self.assertIsNone(self.connect())
        self.assertEqual((self.factory.active, self.factory.per_ip), (0, {}))

    def test_set_rules(self) -> None:
        """
        New rules (SIGHUP) apply to new connections; open ones stay.
        """
        self.make()
        p = self.connect()
        self.factory.set_rules(AddressRules([], ["192.0.2.1"], []))
        self.assertIsNone(self.connect())
        self.assertFalse(p.transport.disconnecting)
        self.assertEqual(self.factory.active, 1)

    def test_prune(self) -> None:
        """
        After 100,000 distinct addresses connected and left, pruning leaves
        no per-address state behind.
        """
        self.make(rate=10.0, burst=20)
        for i in range(100000):
            p = self.connect("10.%d.%d.%d" % (i >> 16, (i >> 8) & 255, i & 255))
            p.connectionLost(lost())
        self.assertEqual(len(self.factory.buckets), 100000)
        self.assertEqual(self.factory.per_ip, {})
        self.clock.advance(0.1)
        self.assertEqual(self.factory.prune(), 100000)
        self.assertEqual(len(self.factory.buckets), 0)

    def test_close_all(self) -> None:
        """
        Every open connection can be closed, gracefully or at once.
        """
        self.make()
        first, second = self.connect("192.0.2.1"), self.connect("192.0.2.2")
        self.assertEqual(self.factory.close_all(abort=True), 2)
        self.assertTrue(first.transport.disconnected)
        self.assertTrue(second.transport.disconnected)


class RefusalLogTests(FilterFixture, SynchronousTestCase):
    """
    Refusals are logged once per peer and reason per window, with a global
    cap, so a flood does not flood the log.
    """

    def test_once_per_window(self) -> None:
        """
        A thousand refusals of one peer for one reason give one line per
        window; another reason or another peer gets its own line.
        """
        self.make(deny=("192.0.2.0/24",), max_total=1, handshake_timeout=1000.0)
        for _ in range(1000):
            self.connect("192.0.2.1")
        self.assertEqual(self.lines(), ["refused connection from 192.0.2.1: address not allowed"])
        self.connect("192.0.2.2")
        self.connect("198.51.100.1")
        self.connect("198.51.100.2")
        self.assertEqual(len(self.events), 3)
        self.assertEqual(
            self.lines()[2], "refused connection from 198.51.100.2: too many open connections in all"
        )
        self.clock.advance(59.0)
        self.connect("192.0.2.1")
        self.assertEqual(len(self.events), 3)
        self.clock.advance(1.0)
        self.connect("192.0.2.1")
        self.assertEqual(len(self.events), 4)
        self.assertEqual(self.factory.refused["address"], 1003)

    def test_global_cap(self) -> None:
        """
        Distinct peers beyond the cap per window are counted, not logged,
        and the next line says how many were left out.
        """
        self.make(deny=("0.0.0.0/0",), log_lines=3)
        for i in range(10):
            self.connect("192.0.2.%d" % (i,))
        self.assertEqual(len(self.events), 3)
        self.clock.advance(60.0)
        self.connect("198.51.100.1")
        self.assertEqual(
            self.lines()[-1],
            "refused connection from 198.51.100.1: address not allowed"
            " (7 similar lines suppressed)",
        )
        self.assertEqual(self.factory.refused["address"], 11)

    def test_prune_log_windows(self) -> None:
        """
        The per-peer log windows are forgotten once they have passed.
        """
        self.make(deny=("0.0.0.0/0",))
        for i in range(50):
            self.connect("192.0.2.%d" % (i,))
        self.clock.advance(30.0)
        self.assertEqual(self.factory.prune(), 0)
        self.clock.advance(30.0)
        self.assertEqual(self.factory.prune(), 50)


class FakeAnswerTLS:
    """
    Stands in for the listener's TLS factory: records the inner
    L{RefusalAnswer}s it is asked to wrap and returns them unwrapped.
    """

    def __init__(self) -> None:
        self.inners: List[RefusalAnswer] = []

    def __call__(self, inner: RefusalAnswer) -> RefusalAnswer:
        self.inners.append(inner)
        return inner


def answer_of(inner: RefusalAnswer) -> Any:
    """
    What a refused client reads: the parsed HTTP answer of C{inner}.
    """
    from tests.web.helpers import parse_response

    transport = StringTransport()
    inner.makeConnection(transport)
    inner.dataReceived(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.disconnecting
    return parse_response(transport.value())


class RefusalAnswerTests(FilterFixture, SynchronousTestCase):
    """
    Refused peers get one readable answer (403/429 with Retry-After) within
    a per-peer and a global budget, and are dropped at accept beyond it.
    """

    def test_banned_answer(self) -> None:
        """
        A banned peer's connection is handed to the answering protocol
        (not to the site's TLS factory), whose answer is a 403
        C{address_banned} saying until when, with the ban's remaining time
        in C{Retry-After}; it is not counted as an open connection.
        """
        fake = FakeAnswerTLS()
        self.make(bans=BanList(1, 600.0), answer_tls=fake)
        self.clock.advance(1000)
        self.bans.failure("192.0.2.1", self.clock.seconds())
        self.clock.advance(100)
        inner = self.factory.buildProtocol(addr("192.0.2.1"))
        self.assertIsInstance(inner, RefusalAnswer)
        self.assertEqual((self.inner.built, self.factory.active), ([], 0))
        response = answer_of(inner)
        self.assertEqual(response.status, 403)
        self.assertEqual(response.headers["retry-after"], "500")
        error = response.json()["error"]
        self.assertEqual(error["code"], "address_banned")
        self.assertIn("banned until 1970-01-01T00:26:41Z", error["message"])
        self.assertEqual(response.headers["connection"], "close")
        self.assertIn("strict-transport-security", response.headers)
        self.assertEqual(response.headers["x-content-type-options"], "nosniff")
        self.assertEqual(self.factory.answered["banned"], 1)

    def test_rate_and_caps_answered(self) -> None:
        """
        Over the connection rate, the per-address cap or the total cap the
        answer is a 429 C{too_many_connections}; for the rate,
        C{Retry-After} is the bucket's refill time.
        """
        fake = FakeAnswerTLS()
        self.make(answer_tls=fake, rate=0.25, burst=1, max_per_ip=1, max_total=2)
        self.connect("192.0.2.1")
        response = answer_of(self.factory.buildProtocol(addr("192.0.2.1")))
        self.assertEqual((response.status, response.headers["retry-after"]), (429, "4"))
        self.assertEqual(response.json()["error"]["code"], "too_many_connections")
        self.clock.advance(4)
        response = answer_of(self.factory.buildProtocol(addr("192.0.2.1")))
        self.assertIn("from this address", response.json()["error"]["message"])
        self.connect("192.0.2.2")
        response = answer_of(self.factory.buildProtocol(addr("192.0.2.3")))
        self.assertIn("in all", response.json()["error"]["message"])
        self.assertEqual(self.factory.answered, {"banned": 0, "rate": 1, "per_ip": 1,
                                                 "total": 1})

    def test_per_peer_budget(self) -> None:
        """
        A peer gets C{refusal_answers} answers per minute; beyond that it is
        dropped at accept (no TLS protocol at all), and a token comes back
        after a third of a minute with the default 3.
        """
        fake = FakeAnswerTLS()
        self.make(bans=BanList(1, 600.0), answer_tls=fake)
        self.bans.failure("192.0.2.1", 0.0)
        results = [self.factory.buildProtocol(addr("192.0.2.1")) for _ in range(50)]
        self.assertEqual(len([r for r in results if r is not None]), 3)
        self.assertEqual(results[3:], [None] * 47)
        self.assertEqual((len(fake.inners), self.factory.refused["banned"]), (3, 50))
        self.clock.advance(20)
        self.assertIsNotNone(self.factory.buildProtocol(addr("192.0.2.1")))
        self.assertIsNone(self.factory.buildProtocol(addr("192.0.2.1")))

    def test_global_budget(self) -> None:
        """
        Over all peers only C{refusal_budget} answers are given per minute.
        """
        fake = FakeAnswerTLS()
        self.make(max_total=1, answer_tls=fake, refusal_budget=5)
        self.connect("198.51.100.1")
        results = [self.factory.buildProtocol(addr("192.0.2.%d" % (i,))) for i in range(1, 21)]
        self.assertEqual(len([r for r in results if r is not None]), 5)
        self.assertEqual(len(fake.inners), 5)

    def test_zero_answers(self) -> None:
        """
        With C{refusal_answers: 0} every refusal is dropped at accept.
        """
        fake = FakeAnswerTLS()
        self.make(bans=BanList(1, 600.0), answer_tls=fake, refusal_answers=0)
        self.bans.failure("192.0.2.1", 0.0)
        self.assertIsNone(self.factory.buildProtocol(addr("192.0.2.1")))
        self.assertEqual(fake.inners, [])

    def test_denied_address_not_answered(self) -> None:
        """
        An address outside the access rules is still only closed.
        """
        fake = FakeAnswerTLS()
        self.make(deny=("192.0.2.0/24",), answer_tls=fake)
        self.assertIsNone(self.factory.buildProtocol(addr("192.0.2.1")))
        self.assertEqual(fake.inners, [])

    def test_answer_reads_request_first(self) -> None:
        """
        The answer waits for the request head and a small declared body
        (so the client is not reset while sending), then closes; a peer
        that sends nothing is aborted at the handshake deadline.
        """
        clock = Clock()
        inner = RefusalAnswer(b"ANSWER", clock, 10.0)
        transport = StringTransport()
        inner.makeConnection(transport)
        inner.dataReceived(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 4\r\n")
        inner.dataReceived(b"\r\nab")
        self.assertEqual(transport.value(), b"")
        inner.dataReceived(b"cd")
        self.assertEqual(transport.value(), b"ANSWER")
        self.assertTrue(transport.disconnecting)
        inner.connectionLost(lost())
        self.assertEqual(clock.getDelayedCalls(), [])
        silent = RefusalAnswer(b"ANSWER", clock, 10.0)
        transport = StringTransport()
        silent.makeConnection(transport)
        clock.advance(10)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnected)


class ExhaustionTests(FilterFixture, SynchronousTestCase):
    """
    Connections cannot hold slots without a handshake, and a few addresses
    cannot fill the total cap.
    """

    def test_handshake_deadline(self) -> None:
        """
        A bare connect, or a handshake that does not complete, is aborted
        C{handshake_timeout} seconds after accept and logged; a completed
        handshake stops the deadline.
        """
        self.make(handshake_done=False, handshake_timeout=5.0)
        bare = self.connect("192.0.2.1")
        stalled = self.connect("192.0.2.2")
        stalled.dataReceived(CLIENT_HELLO_START)
        self.clock.advance(4.9)
        self.assertFalse(bare.transport.disconnected)
        self.clock.advance(0.1)
        self.assertTrue(bare.transport.disconnected)
        self.assertTrue(stalled.transport.disconnected)
        self.assertEqual(self.factory.dropped["handshake_timeout"], 2)
        stalled.connectionLost(lost())
        self.assertEqual(self.factory.dropped["handshake"], 0)
        self.assertIn("dropped connection from 192.0.2.1: TLS handshake not completed in time",
                      self.lines())
        self.make(handshake_done=True, handshake_timeout=5.0)
        done = self.connect()
        done.dataReceived(CLIENT_HELLO_START)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertFalse(done.transport.disconnected)

    def test_evicts_oldest_stranger(self) -> None:
        """
        At C{max_total}, a new connection closes the oldest connection that
        has not made an authenticated request and takes its place; trusted
        connections are never evicted; with nothing to evict it is refused.
        """
        self.make(max_total=3, evict_strangers=True)
        first, second, third = (self.connect("192.0.2.%d" % (i,)) for i in (1, 2, 3))
        second.trust()
        fourth = self.connect("192.0.2.4")
        self.assertIsNotNone(fourth)
        self.assertTrue(first.transport.disconnected)
        self.assertEqual((self.factory.active, self.factory.dropped["evicted"]), (3, 1))
        first.connectionLost(lost())
        self.assertEqual(self.factory.active, 3)
        self.assertIsNotNone(self.connect("192.0.2.5"))
        self.assertTrue(third.transport.disconnected)
        self.assertFalse(second.transport.disconnected)
        fourth.trust()
        self.factory.strangers.popitem()[0].trust()
        self.assertIsNone(self.connect("192.0.2.6"))
        self.assertEqual(self.factory.refused["total"], 1)

    def test_answered_anonymous_call_not_evicted(self) -> None:
        """
        Without authentication, a connection whose request is being
        answered (a stream) is not evicted; once the call ends it is again.
        """
        import types

        self.make(max_total=2, evict_strangers=True)
        streaming = self.connect("192.0.2.1")
        idle = self.connect("192.0.2.2")
        request = types.SimpleNamespace(channel=types.SimpleNamespace(
            transport=types.SimpleNamespace(transport=streaming)))
        ctx = types.SimpleNamespace(identity=None, busy_connection=None)
        TrustedConnectionHook().admit(request, ctx, None)
        self.connect("192.0.2.3")
        self.assertTrue(idle.transport.disconnected)
        self.assertFalse(streaming.transport.disconnected)
        TrustedConnectionHook().release(ctx)
        self.assertIn(streaming, self.factory.strangers)
        self.connect("192.0.2.4")
        self.connect("192.0.2.5")
        self.assertTrue(streaming.transport.disconnected)

    def test_no_eviction_when_off(self) -> None:
        """
        With C{evict_strangers: false} the total cap refuses as before.
        """
        self.make(max_total=1, evict_strangers=False)
        first = self.connect("192.0.2.1")
        self.assertIsNone(self.connect("192.0.2.2"))
        self.assertFalse(first.transport.disconnected)

    def test_ipv6_prefix_groups(self) -> None:
        """
        IPv6 peers in one /64 share the per-address cap and bucket; another
        /64 does not; C{ipv6_prefix: 128} counts each address.
        """
        self.make(max_per_ip=2)
        self.connect("2001:db8::1")
        self.connect("2001:db8::2")
        self.assertIsNone(self.connect("2001:db8::ffff:3"))
        self.assertEqual(self.factory.refused["per_ip"], 1)
        self.assertIsNotNone(self.connect("2001:db8:0:1::1"))
        self.assertEqual(self.factory.connections_from("2001:db8::77"), 2)
        self.make(max_per_ip=2, ipv6_prefix=128)
        for i in range(3):
            self.assertIsNotNone(self.connect("2001:db8::%d" % (i + 1,)))

    def test_trust_hook(self) -> None:
        """
        L{TrustedConnectionHook} finds the connection under a request
        (channel -> TLS -> filter) and marks it when the request has an
        identity, not otherwise.
        """
        import types

        self.make()
        connection = self.connect()
        tls_layer = types.SimpleNamespace(transport=connection)
        request = types.SimpleNamespace(channel=types.SimpleNamespace(transport=tls_layer))
        hook = TrustedConnectionHook()
        anonymous = types.SimpleNamespace(identity=None, busy_connection=None)
        hook.admit(request, anonymous, None)
        self.assertFalse(connection.trusted)
        self.assertNotIn(connection, self.factory.strangers)
        hook.release(anonymous)
        self.assertIn(connection, self.factory.strangers)
        hook.admit(request, types.SimpleNamespace(identity="key:alice"), None)
        self.assertTrue(connection.trusted)
        self.assertNotIn(connection, self.factory.strangers)
        hook.admit(types.SimpleNamespace(), types.SimpleNamespace(identity="key:a"), None)


class NotTLSTests(FilterFixture, SynchronousTestCase):
    """
    What happens to connections that do not start with a TLS handshake.
    """

    def test_classify(self) -> None:
        """
        Plain HTTP, a WebSocket upgrade and other bytes are told apart.
        """
        self.assertEqual(classify(HTTP_REQUEST), "http")
        self.assertEqual(classify(b"POST /v1/chat/completions HTTP/1.1\r\n"), "http")
        self.assertEqual(classify(WEBSOCKET_UPGRADE), "websocket")
        self.assertEqual(classify(b"GET"), "not_tls")
        self.assertEqual(classify(b"SSH-2.0-OpenSSH_9.2\r\n"), "not_tls")
        self.assertEqual(classify(b"\x00\xff\x10"), "not_tls")

    def test_tls_passes(self) -> None:
        """
        Bytes that start with a TLS handshake record reach the inner
        protocol, and so does everything after them.
        """
        self.make()
        p = self.connect()
        p.dataReceived(CLIENT_HELLO_START)
        p.dataReceived(b"GET more")
        self.assertEqual(self.inner.built[0].received, [CLIENT_HELLO_START, b"GET more"])
        self.assertEqual(self.events, [])

    def test_plain_http(self) -> None:
        """
        Plain HTTP on the TLS port gets a plain 400 saying to use HTTPS and
        the connection is closed; nothing reaches the TLS layer; one line is
        logged for any number of such connections from the peer.
        """
        self.make()
        for _ in range(5):
            p = self.connect()
            p.dataReceived(HTTP_REQUEST)
            p.dataReceived(b"more")
            response = p.transport.value()
            self.assertTrue(response.startswith(b"HTTP/1.1 400 Bad Request\r\n"), response)
            self.assertIn(b"Connection: close\r\n", response)
            self.assertIn(b'"code":"https_required"', response)
            self.assertTrue(p.transport.disconnecting)
            p.connectionLost(lost())
        self.assertEqual([r.received for r in self.inner.built], [[]] * 5)
        self.assertEqual(self.factory.dropped["http"], 5)
        self.assertEqual(
            self.lines(), ["dropped connection from 192.0.2.1: plain HTTP sent to the TLS port"]
        )
        self.assertEqual(self.factory.active, 0)

    def test_websocket(self) -> None:
        """
        A plain WebSocket upgrade gets the same 400 and is counted apart.
        """
        self.make()
        p = self.connect()
        p.dataReceived(WEBSOCKET_UPGRADE)
        self.assertTrue(p.transport.value().startswith(b"HTTP/1.1 400 "))
        self.assertEqual(self.factory.dropped["websocket"], 1)
        self.assertIn("WebSocket", self.lines()[0])

    def test_random_bytes(self) -> None:
        """
        Other bytes are dropped at once, with no reply.
        """
        self.make()
        p = self.connect()
        p.dataReceived(b"\x00" + os.urandom(64))
        self.assertEqual(p.transport.value(), b"")
        self.assertTrue(p.transport.disconnected)
        self.assertEqual(self.inner.built[0].received, [])
        self.assertEqual(self.factory.dropped["not_tls"], 1)

    def test_failed_handshake_logged(self) -> None:
        """
        A connection that started like TLS but ended before its handshake
        completed is counted and logged once per window.
        """
        self.make(handshake_done=False)
        for _ in range(3):
            p = self.connect()
            p.dataReceived(CLIENT_HELLO_START)
            p.connectionLost(lost())
        self.assertEqual(self.factory.dropped["handshake"], 3)
        self.assertEqual(
            self.lines(), ["dropped connection from 192.0.2.1: TLS handshake not completed"]
        )

    def test_completed_handshake_not_logged(self) -> None:
        """
        A connection whose handshake completed ends without a line.
        """
        self.make(handshake_done=True)
        p = self.connect()
        p.dataReceived(CLIENT_HELLO_START)
        p.connectionLost(lost())
        self.assertEqual((self.factory.dropped["handshake"], self.events), (0, []))

    def test_silent_probe_not_logged(self) -> None:
        """
        A connection that sent nothing (a load balancer's TCP health check)
        ends without a line.
        """
        self.make(handshake_done=False)
        self.connect().connectionLost(lost())
        self.assertEqual((self.factory.dropped["handshake"], self.events), (0, []))


# Real sockets ----------------------------------------------------------------


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@implementer(IHandshakeListener)
class Echo(Protocol):
    """
    Greets after connecting and echoes; counts completed handshakes.
    """

    def connectionMade(self) -> None:
        self.transport.write(GREETING)

    def handshakeCompleted(self) -> None:
        self.factory.handshakes += 1

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class EchoFactory(Factory):
    protocol = Echo

    def __init__(self) -> None:
        self.handshakes = 0
        self.connections: List[Echo] = []

    def buildProtocol(self, addr: Any) -> Any:
        p = Factory.buildProtocol(self, addr)
        p.lost = defer.Deferred()
        self.connections.append(p)
        return p


class CountingTLSFactory(TLSMemoryBIOFactory):
    """
    The production TLS factory, counting the TLS protocols it builds.
    """

    built = 0

    def buildProtocol(self, addr: Any) -> Any:
        self.built += 1
        return TLSMemoryBIOFactory.buildProtocol(self, addr)


def tls_client() -> stdlib_ssl.SSLContext:
    context = stdlib_ssl.SSLContext(stdlib_ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = stdlib_ssl.CERT_NONE
    return context


def tls_exchange(port: int, message: Optional[bytes] = None,
                 wait: Optional[threading.Event] = None) -> bytes:
    """
    Blocking: handshake, read the greeting, optionally wait for C{wait},
    send C{message} and read its echo. Returns what was read, or a
    C{b"refused: ..."} marker if the connection or handshake failed.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with tls_client().wrap_socket(raw, server_hostname="localhost") as conn:
                data = _read_line(conn)
                if wait is not None:
                    wait.wait(10)
                if message is not None:
                    conn.sendall(message)
                    data += _read_line(conn)
                return data
    except (OSError, stdlib_ssl.SSLError) as e:
        return b"refused: " + type(e).__name__.encode()


def tls_request(port: int) -> bytes:
    """
    Blocking: handshake, send one HTTP request, read until the server
    closes. Returns the bytes read, or a C{b"refused: ..."} marker.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with tls_client().wrap_socket(raw, server_hostname="localhost") as conn:
                conn.sendall(b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n\r\n")
                data = b""
                while True:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return data
                    data += chunk
    except (OSError, stdlib_ssl.SSLError) as e:
        return b"refused: " + type(e).__name__.encode()


def raw_exchange(port: int, payload: bytes) -> bytes:
    """
    Blocking: send C{payload} as is and read until the server closes.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(payload)
        data = b""
        try:
            while True:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            data += b"<reset>"
        return data


def _read_line(conn: Any) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(64)
        if not chunk:
            break
        data += chunk
    return data


class BeforeHandshakeTests(TestCase):
    """
    On a real loopback socket, refused peers cost no TLS work, and garbage
    on the TLS port is dropped quietly without disturbing other clients.
    """

    def setUp(self) -> None:
        state_dir = os.path.abspath(self.mktemp())
        self.options = tls.certificate_options(TLSConfig(self_signed=True), state_dir)
        self.events: List[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    @defer.inlineCallbacks
    def listen(self, rules: Optional[AddressRules] = None, bans: Optional[BanList] = None,
               **limits: Any) -> Any:
        """
        Serve the filter around a counting TLS factory around L{Echo} on
        an ephemeral loopback port; at cleanup stop listening and wait for
        every connection to end.
        """
        reactor = _reactor()
        self.app = EchoFactory()
        self.tls = CountingTLSFactory(self.options, False, self.app)
        settings = dict(max_total=200, max_per_ip=50, rate=10.0, burst=20,
                        evict_strangers=False)
        settings.update(limits)
        answer = settings.pop("answer", False)
        self.filter = PeerFilterFactory(
            self.tls,
            rules or AddressRules([], [], []),
            bans or BanList(3, 600.0),
            connections_config(**settings),
            reactor,
            answer_tls=answer_tls(self.tls) if answer else None,
        )
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.filter)

        def close() -> defer.Deferred:
            d = defer.maybeDeferred(port.stopListening)
            d.addCallback(lambda _: self.filter.close_all(abort=True))
            d.addCallback(
                lambda _: defer.gatherResults([c.lost for c in self.app.connections])
            )
            d.addTimeout(10, reactor)
            return d

        self.addCleanup(close)
        return port.getHost().port

    def filter_lines(self) -> List[str]:
        return [
            formatEvent(e) for e in self.events
            if e.get("log_namespace", "").startswith("qwen_twist.gate.peerfilter")
        ]

    def assert_quiet(self) -> None:
        """
        Nothing but the filter's own lines: no failure, no traceback, no
        error-level event from Twisted or OpenSSL.
        """
        noisy = [
            e for e in self.events
            if "log_failure" in e or getattr(e.get("log_level"), "name", "") in ("error", "critical")
        ]
        self.assertEqual(noisy, [])
        self.assertEqual(self.flushLoggedErrors(), [])

    @defer.inlineCallbacks
    def test_admitted_peer_handshakes(self) -> None:
        """
        Control: an admitted client completes a real handshake through the
        filter (so the refusals below prove the filter, not a broken
        server).
        """
        port = yield self.listen()
        result = yield threads.deferToThread(tls_exchange, port, b"ping\n")
        self.assertEqual(result, GREETING + b"ping\n")
        self.assertEqual((self.tls.built, self.app.handshakes), (1, 1))
        self.assert_quiet()

    @defer.inlineCallbacks
    def test_banned_flood_costs_no_tls_past_budget(self) -> None:
        """
        A banned address opening 40 connections gets its 3 readable 403
        answers (3 TLS handshakes, none reaching the application); the
        other 37 are closed at accept without any TLS work.
        """
        bans = BanList(1, 600.0)
        bans.failure("127.0.0.1", _reactor().seconds())
        port = yield self.listen(bans=bans, answer=True)
        wrapped = []
        wrap = self.filter.answer_tls

        def counting(inner: Any) -> Any:
            wrapped.append(inner)
            return wrap(inner)

        self.filter.answer_tls = counting
        results = []
        for _ in range(40):
            result = yield threads.deferToThread(tls_request, port)
            results.append(result)
        answers = [r for r in results if r.startswith(b"HTTP/1.1 403")]
        self.assertEqual(len(answers), 3)
        self.assertIn(b"address_banned", answers[0])
        self.assertIn(b"Retry-After: 60", answers[0])
        self.assertEqual(len(wrapped), 3)
        self.assertEqual((self.tls.built, self.app.handshakes), (0, 0))
        self.assertEqual(self.filter.refused["banned"], 40)
        self.assertTrue(all(r.startswith(b"refused") for r in results
                            if not r.startswith(b"HTTP/")))

    @defer.inlineCallbacks
    def test_denied_address_no_tls(self) -> None:
        """
        A denied address is closed without a TLS protocol being built or a
        handshake done.
        """
        port = yield self.listen(rules=AddressRules([], ["127.0.0.0/8"], []))
        result = yield threads.deferToThread(tls_exchange, port)
        self.assertTrue(result.startswith(b"refused: "), result)
        self.assertEqual((self.tls.built, self.app.handshakes), (0, 0))
        self.assertEqual(self.filter.refused["address"], 1)
        self.assertEqual(
            self.filter_lines(), ["refused connection from 127.0.0.1: address not allowed"]
        )
        self.assert_quiet()

    @defer.inlineCallbacks
    def test_banned_no_tls(self) -> None:
        """
        A banned address is closed without TLS work.
        """
        bans = BanList(1, 600.0)
        bans.failure("127.0.0.1", _reactor().seconds())
        port = yield self.listen(bans=bans)
        result = yield threads.deferToThread(tls_exchange, port)
        self.assertTrue(result.startswith(b"refused: "), result)
        self.assertEqual((self.tls.built, self.app.handshakes), (0, 0))
        self.assertEqual(self.filter.refused["banned"], 1)
        self.assert_quiet()

    @defer.inlineCallbacks
    def test_over_rate_no_tls(self) -> None:
        """
        Past its burst of new connections, a peer is closed without TLS
        work: one handshake for two connection attempts.
        """
        port = yield self.listen(rate=0.001, burst=1)
        first = yield threads.deferToThread(tls_exchange, port)
        second = yield threads.deferToThread(tls_exchange, port)
        self.assertEqual(first, GREETING)
        self.assertTrue(second.startswith(b"refused: "), second)
        self.assertEqual((self.tls.built, self.app.handshakes), (1, 1))
        self.assertEqual(self.filter.refused["rate"], 1)
        self.assert_quiet()

    @defer.inlineCallbacks
    def test_over_concurrency_no_tls(self) -> None:
        """
        While a peer holds its maximum of open connections, another one is
        closed without TLS work, and the held connection still works.
        """
        port = yield self.listen(max_per_ip=1)
        go = threading.Event()
        held = threads.deferToThread(tls_exchange, port, b"still here\n", go)
        yield wait_for(lambda: self.app.handshakes >= 1)
        second = yield threads.deferToThread(tls_exchange, port)
        go.set()
        first = yield held
        self.assertTrue(second.startswith(b"refused: "), second)
        self.assertEqual(first, GREETING + b"still here\n")
        self.assertEqual((self.tls.built, self.app.handshakes), (1, 1))
        self.assertEqual(self.filter.refused["per_ip"], 1)
        self.assert_quiet()

    @defer.inlineCallbacks
    def test_garbage_dropped_quietly(self) -> None:
        """
        Plain HTTP (twice), a WebSocket upgrade, random bytes and a broken
        TLS record sent to the TLS port are each closed, plain HTTP with a
        400 saying to use HTTPS; the log has one line per peer and kind and
        nothing else; a TLS client connected all along still works.
        """
        port = yield self.listen()
        go = threading.Event()
        good = threads.deferToThread(tls_exchange, port, b"ping\n", go)
        yield wait_for(lambda: self.app.handshakes >= 1)
        http = yield threads.deferToThread(raw_exchange, port, HTTP_REQUEST)
        http2 = yield threads.deferToThread(raw_exchange, port, HTTP_REQUEST)
        ws = yield threads.deferToThread(raw_exchange, port, WEBSOCKET_UPGRADE)
        noise = yield threads.deferToThread(raw_exchange, port, b"\x00" + os.urandom(300))
        broken = yield threads.deferToThread(
            raw_exchange, port, b"\x16\x03\x01\x00\x05" + os.urandom(300)
        )
        go.set()
        result = yield good
        self.assertEqual(result, GREETING + b"ping\n")
        for response in (http, http2, ws):
            self.assertTrue(response.startswith(b"HTTP/1.1 400 Bad Request\r\n"), response)
            self.assertIn(b"https_required", response)
        self.assertNotIn(b"HTTP", noise)
        # OpenSSL answers the broken record with an alert, then closes.
        self.assertFalse(broken.startswith(b"HTTP"))
        # Wait for the server side of every connection to end.
        yield defer.gatherResults([c.lost for c in self.app.connections[1:]])
        self.assertEqual(
            sorted(self.filter_lines()),
            [
                "dropped connection from 127.0.0.1: TLS handshake not completed",
                "dropped connection from 127.0.0.1: a plain-HTTP WebSocket upgrade sent to "
                "the TLS port",
                "dropped connection from 127.0.0.1: bytes that are not TLS sent to the TLS port",
                "dropped connection from 127.0.0.1: plain HTTP sent to the TLS port",
            ],
        )
        self.assertEqual(
            self.filter.dropped, {"http": 2, "websocket": 1, "not_tls": 1, "handshake": 1,
                                  "handshake_timeout": 0, "evicted": 0}
        )
        self.assertEqual(self.app.handshakes, 1)
        self.assert_quiet()


@defer.inlineCallbacks
def wait_for(condition: Any, limit: float = 10.0) -> Any:
    """
    Poll C{condition} on the real reactor every 10 ms until it holds, for
    at most C{limit} seconds (something a thread does, so no event to wait
    on).
    """
    from twisted.internet import task

    for _ in range(int(limit / 0.01)):
        if condition():
            return
        yield task.deferLater(_reactor(), 0.01, lambda: None)
    raise AssertionError("condition not met within %s s" % (limit,))
