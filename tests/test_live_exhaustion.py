"""
Connection exhaustion end to end (issue 9, item 2): sixteen hostile
loopback addresses (127.0.0.2 to 127.0.0.17), each within
C{connections.max_per_ip}, hold idle and trickling connections -- together
the whole C{max_total} -- and keep reconnecting, while a client with a
valid key from 127.0.0.1 is still served within a second.
"""

from __future__ import annotations

import os
import time
from typing import Any, List

from twisted.internet import defer, endpoints, protocol, reactor, ssl, task
from twisted.trial.unittest import TestCase

from qwen_twist.gate.keyfile import add_key

from tests.support import async_test, in_thread, settle, start_stack

ATTACKERS = ["127.0.0.%d" % (i,) for i in range(2, 18)]
PER_IP = 4
TOTAL = len(ATTACKERS) * PER_IP


class Idle(protocol.Protocol):
    """
    A bare TCP connection that sends nothing.
    """


class Trickle(protocol.Protocol):
    """
    Completes the TLS handshake, sends the start of a request head, then
    one more header byte every half second. (A complete head without a key
    is refused at once, before any body is read, so a connection-holding
    attacker without a key trickles the head, until limits.header_timeout.)
    """

    def connectionMade(self) -> None:
        self.transport.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Type: application/json\r\nX-Pad: ")
        self.loop = task.LoopingCall(self.transport.write, b"x")
        self.loop.start(0.5, now=False).addErrback(lambda _: None)

    def connectionLost(self, reason: Any = None) -> None:
        if self.loop.running:
            self.loop.stop()


class Attacker:
    """
    Holds C{PER_IP} connections from one source address (half idle, half
    trickling) and reopens each one that the gateway closes.
    """

    def __init__(self, source: str, port: int) -> None:
        self.source = source
        self.port = port
        self.running = True
        self.opened = 0
        self.connections: List[Any] = []

    def start(self) -> None:
        for i in range(PER_IP):
            self.open(i % 2 == 0)

    def open(self, idle: bool) -> None:
        if not self.running:
            return
        tcp = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, timeout=5,
                                           bindAddress=(self.source, 0))
        endpoint = tcp if idle else endpoints.wrapClientTLS(
            ssl.CertificateOptions(verify=False), tcp)
        proto = Idle() if idle else Trickle()
        attacker = self

        def closed(_: Any) -> None:
            if proto in attacker.connections:
                attacker.connections.remove(proto)
            reactor.callLater(0.05, attacker.open, idle)

        def connected(p: Any) -> None:
            if not attacker.running:
                p.transport.abortConnection()
                return
            self.opened += 1
            self.connections.append(p)
            lost = p.connectionLost

            def connectionLost(reason: Any = None) -> None:
                lost(reason)
                closed(reason)

            p.connectionLost = connectionLost

        d = endpoints.connectProtocol(endpoint, proto)
        d.addCallbacks(connected, lambda _: reactor.callLater(0.1, attacker.open, idle))

    def stop(self) -> None:
        self.running = False
        for p in list(self.connections):
            if p.transport is not None:
                p.transport.abortConnection()


class ExhaustionTests(TestCase):
    """
    A few strangers cannot lock out a client with a key.
    """

    timeout = 60

    @async_test
    async def test_key_holder_served_under_sixteen_hostile_addresses(self) -> None:
        """
        With the total cap held by sixteen addresses' idle and trickling
        connections (reopened as soon as they are closed), a client with a
        valid key from 127.0.0.1 still gets its answers, each within a
        second.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "keys.yaml")
        key = add_key(path, "alice", now=time.time())
        stack = await start_stack(self, {
            "auth": {"required": True, "keys_file": path},
            "connections": {"max_total": TOTAL, "max_per_ip": PER_IP, "rate": 20.0,
                            "burst": 20},
        })
        port = stack.port.getHost().port
        attackers = [Attacker(source, port) for source in ATTACKERS]

        async def stop_attack() -> None:
            for attacker in attackers:
                attacker.stop()
            # Until the gateway has seen every connection go (answers to
            # refused reconnections included).
            deadline = time.monotonic() + 10
            while (stack.service.peer_filter.active or stack.service.factory.protocols) \
                    and time.monotonic() < deadline:
                await settle(5)
            await settle(20)

        self.addCleanup(lambda: defer.Deferred.fromCoroutine(stop_attack()))
        for attacker in attackers:
            attacker.start()
        peer_filter = stack.service.peer_filter
        deadline = time.monotonic() + 10
        while peer_filter.active < TOTAL and time.monotonic() < deadline:
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(peer_filter.active, TOTAL)
        self.assertEqual(set(peer_filter.per_ip), set(ATTACKERS))
        # Warm the SDK up (imports, TLS context) on its own client, so the
        # timings measure the gateway; then every timed request comes on a
        # new client, so a new connection, that must find room.
        warm = stack.openai_client(api_key=key, timeout=5)
        await in_thread(warm.models.list)
        await in_thread(warm.close)
        await task.deferLater(reactor, 1.0, lambda: None)
        timings = []
        clients = []
        for _ in range(3):
            client = stack.openai_client(api_key=key, timeout=5)
            clients.append(client)
            started = time.monotonic()
            reply = await in_thread(client.chat.completions.create, model="qwen3:8b",
                                    messages=[{"role": "user", "content": "Hi"}])
            timings.append(time.monotonic() - started)
            self.assertTrue(reply.choices[0].message.content)
        self.assertGreaterEqual(peer_filter.per_ip.get("127.0.0.1", 0), 1)
        for client in clients:
            await in_thread(client.close)
        self.assertLess(max(timings), 1.0, timings)
        self.assertGreater(peer_filter.dropped["evicted"], 0)
