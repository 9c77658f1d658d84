"""
Tests for L{qwen_twist.store.resp}: the RESP2 parser and encoder (pure),
the protocol over a C{StringTransport} with a C{Clock} (pipelining,
deadlines, error replies, C{NOSCRIPT} fallback), and the client against a
real C{redis-server} (AUTH, SELECT, reconnection).
"""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from qwen_twist.store import resp
from qwen_twist.store.resp import (
    ProtocolError,
    RedisClient,
    RespError,
    RespParser,
    RespProtocol,
    Script,
    StoreTimeout,
    StoreUnavailable,
    backoff_delay,
    client_endpoint,
    encode_command,
    parse_url,
)

from tests.store.server import start_redis
from tests.support import async_test
from tests.test_live import wait_for


class EncodeTests(SynchronousTestCase):
    """
    Commands are RESP arrays of bulk strings.
    """

    def test_command(self) -> None:
        """
        Bytes, text and numbers become bulk strings with exact lengths.
        """
        self.assertEqual(
            encode_command(b"SET", "k\u00e9", 3, 0.5),
            b"*4\r\n$3\r\nSET\r\n$3\r\nk\xc3\xa9\r\n$1\r\n3\r\n$3\r\n0.5\r\n",
        )

    def test_refuses_other_types(self) -> None:
        """
        Nothing is sent by accident: C{None} and booleans are refused.
        """
        self.assertRaises(TypeError, encode_command, b"GET", None)
        self.assertRaises(TypeError, encode_command, b"GET", True)


class ParserTests(SynchronousTestCase):
    """
    Replies of every RESP2 type, whole or split anywhere.
    """

    REPLIES = (
        b"+OK\r\n-NOSCRIPT No matching script\r\n:42\r\n:-1\r\n$5\r\nhel\r\n\r\n"
        b"$-1\r\n*-1\r\n*0\r\n*3\r\n:1\r\n$1\r\nx\r\n*1\r\n+y\r\n"
    )

    def check(self, replies: list) -> None:
        self.assertEqual(replies[0], "OK")
        self.assertIsInstance(replies[1], RespError)
        self.assertEqual(replies[1].kind, "NOSCRIPT")
        self.assertEqual(replies[2:], [42, -1, b"hel\r\n", None, None, [], [1, b"x", ["y"]]])

    def test_whole(self) -> None:
        """
        All types in one feed; a bulk string may contain CRLF.
        """
        self.check(RespParser().feed(self.REPLIES))

    def test_byte_by_byte(self) -> None:
        """
        Fed one byte at a time, the same replies come out, each once it is
        complete.
        """
        parser = RespParser()
        replies = []
        for i in range(len(self.REPLIES)):
            replies += parser.feed(self.REPLIES[i:i + 1])
        self.check(replies)

    def test_garbage(self) -> None:
        """
        Bytes that are not RESP (the wrong port, an HTTP server) are a
        protocol error, not a guess.
        """
        for data in (b"HTTP/1.1 400 Bad\r\n", b":12x\r\n", b"$3\r\nabcde\r\n"):
            self.assertRaises(ProtocolError, RespParser().feed, data)

    def test_bounds(self) -> None:
        """
        Oversized bulk strings and arrays, deep nesting and endless lines
        are refused before any memory is spent on them.
        """
        self.assertRaises(ProtocolError, RespParser().feed, b"$%d\r\n" % (resp.MAX_BULK + 1,))
        self.assertRaises(ProtocolError, RespParser().feed, b"*%d\r\n" % (resp.MAX_ITEMS + 1,))
        self.assertRaises(ProtocolError, RespParser().feed, b"*1\r\n" * (resp.MAX_DEPTH + 1))
        self.assertRaises(ProtocolError, RespParser().feed, b"+" + b"x" * (resp.MAX_LINE + 1))


class UrlTests(SynchronousTestCase):
    """
    C{limits.store} URLs.
    """

    def test_parse(self) -> None:
        """
        Host, port (6379 by default), database from the path, TLS from
        C{rediss}.
        """
        self.assertEqual(parse_url("redis://cache"), resp.RedisAddress(False, "cache", 6379, 0))
        self.assertEqual(parse_url("rediss://10.0.0.5:6380/3"),
                         resp.RedisAddress(True, "10.0.0.5", 6380, 3))
        self.assertEqual(str(parse_url("redis://[::1]:7000/1")), "redis://::1:7000/1")

    def test_no_credentials(self) -> None:
        """
        A password in the URL is refused (it would end up in logs).
        """
        with self.assertRaises(ValueError) as e:
            parse_url("redis://:hunter2@cache")
        self.assertNotIn("hunter2", str(e.exception))
        self.assertIn("password_file", str(e.exception))


class BackoffTests(SynchronousTestCase):
    """
    Reconnection delays.
    """

    def test_doubles_to_cap(self) -> None:
        """
        0.1, 0.2, 0.4 ... up to the cap, and never overflows.
        """
        self.assertEqual([backoff_delay(n, 0.1, 1.0) for n in range(1, 7)],
                         [0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
        self.assertEqual(backoff_delay(10 ** 6, 0.1, 5.0), 5.0)


class ProtocolTests(SynchronousTestCase):
    """
    One connection, driven byte by byte, with a C{Clock} for deadlines.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.protocol = RespProtocol(self.clock, 0.5)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def test_pipelined(self) -> None:
        """
        Commands go out at once without waiting for replies, and replies
        fire their Deferreds in order; error replies fail theirs only.
        """
        first = self.protocol.execute(b"GET", b"a")
        second = self.protocol.execute(b"BAD")
        third = self.protocol.execute(b"PING")
        self.assertEqual(self.transport.value(),
                         encode_command(b"GET", b"a") + encode_command(b"BAD")
                         + encode_command(b"PING"))
        self.protocol.dataReceived(b"$1\r\n1\r\n-ERR unknown\r")
        self.assertEqual(self.successResultOf(first), b"1")
        self.assertNoResult(second)
        self.protocol.dataReceived(b"\n+PONG\r\n")
        self.assertEqual(self.failureResultOf(second, RespError).value.kind, "ERR")
        self.assertEqual(self.successResultOf(third), "PONG")
        self.clock.advance(10)
        self.assertFalse(self.transport.disconnecting)

    def test_timeout_closes(self) -> None:
        """
        A command without a reply within its deadline fails with
        L{StoreTimeout}, with every command behind it, and the connection
        is dropped (a late reply would be taken for the next command's).
        """
        first = self.protocol.execute(b"GET", b"a")
        self.clock.advance(0.3)
        second = self.protocol.execute(b"GET", b"b")
        self.clock.advance(0.2)
        self.failureResultOf(first, StoreTimeout)
        self.failureResultOf(second, StoreTimeout)
        self.assertTrue(self.transport.disconnecting)
        self.failureResultOf(self.protocol.execute(b"PING"), StoreUnavailable)

    def test_lost(self) -> None:
        """
        Commands in flight when the connection drops fail with
        L{StoreUnavailable}, and the owner hears of it.
        """
        lost = []
        self.protocol.on_lost = lost.append
        d = self.protocol.execute(b"PING")
        self.protocol.connectionLost(None)
        self.failureResultOf(d, StoreUnavailable)
        self.assertEqual(lost, [self.protocol])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unsolicited(self) -> None:
        """
        A reply nobody asked for is a protocol error: the connection ends.
        """
        self.protocol.dataReceived(b"+OK\r\n")
        self.assertTrue(self.transport.disconnecting)


class FakeClient(RedisClient):
    """
    A client on a hand-driven protocol (no endpoint).
    """

    def __init__(self, protocol: RespProtocol) -> None:
        RedisClient.__init__(self, Clock(), None)
        self._protocol = protocol


class ScriptTests(SynchronousTestCase):
    """
    Scripts go by SHA1 and fall back to their source once.
    """

    def setUp(self) -> None:
        self.protocol = RespProtocol(Clock(), 0)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.client = FakeClient(self.protocol)
        self.script = Script("return 1")

    def test_evalsha(self) -> None:
        """
        A script the server knows costs one C{EVALSHA}.
        """
        d = self.client.run_script(self.script, [b"k"], [2])
        self.assertEqual(self.transport.value(),
                         encode_command(b"EVALSHA", self.script.sha, 1, b"k", 2))
        self.protocol.dataReceived(b":1\r\n")
        self.assertEqual(self.successResultOf(d), 1)

    def test_noscript(self) -> None:
        """
        C{NOSCRIPT} (a restarted server) is answered with C{EVAL} of the
        source, and the caller only sees the result.
        """
        d = self.client.run_script(self.script, [b"k"], [2])
        self.transport.clear()
        self.protocol.dataReceived(b"-NOSCRIPT No matching script\r\n")
        self.assertEqual(self.transport.value(),
                         encode_command(b"EVAL", b"return 1", 1, b"k", 2))
        self.protocol.dataReceived(b":1\r\n")
        self.assertEqual(self.successResultOf(d), 1)

    def test_other_errors(self) -> None:
        """
        Other error replies are not retried.
        """
        d = self.client.run_script(self.script, [], [])
        self.transport.clear()
        self.protocol.dataReceived(b"-OOM command not allowed\r\n")
        self.assertEqual(self.failureResultOf(d, RespError).value.kind, "OOM")
        self.assertEqual(self.transport.value(), b"")

    def test_not_connected(self) -> None:
        """
        Without a connection a command fails at once: nothing waits.
        """
        client = RedisClient(Clock(), None)
        self.failureResultOf(client.execute(b"PING"), StoreUnavailable)


class RefusingEndpoint:
    """
    An endpoint whose connection attempts fail, counted.
    """

    def __init__(self) -> None:
        self.attempts = 0

    def connect(self, factory):
        from twisted.internet.error import ConnectionRefusedError

        self.attempts += 1
        return defer.fail(ConnectionRefusedError())


class ReconnectTests(SynchronousTestCase):
    """
    Reconnection timing with a C{Clock}.
    """

    def test_backoff(self) -> None:
        """
        Failed attempts are retried after doubling delays (between half
        and all of each, jittered), capped; the state goes down once.
        """
        clock, endpoint, states = Clock(), RefusingEndpoint(), []
        client = RedisClient(clock, endpoint, backoff=(0.1, 0.4),
                             on_state=lambda state, why: states.append((state, why)))
        client.jitter = lambda: 1.0
        client.start()
        self.assertEqual((endpoint.attempts, client.state), (1, "down"))
        for delay, attempts in ((0.1, 2), (0.2, 3), (0.4, 4), (0.4, 5)):
            clock.advance(delay - 0.001)
            self.assertEqual(endpoint.attempts, attempts - 1)
            clock.advance(0.001)
            self.assertEqual(endpoint.attempts, attempts)
        self.assertEqual(states, [("down", "ConnectionRefusedError")])
        client.jitter = lambda: 0.0
        clock.advance(0.4)
        self.assertEqual(endpoint.attempts, 6)
        clock.advance(0.2)
        self.assertEqual(endpoint.attempts, 7)
        client.stop()
        self.assertEqual(clock.getDelayedCalls(), [])


class LiveClientTests(TestCase):
    """
    Against a real redis-server on loopback.
    """

    timeout = 30

    def client(self, server, **kwargs) -> RedisClient:
        address = parse_url(server.url + "/%d" % (kwargs.pop("db", 0),))
        states = kwargs.pop("states", None)
        client = RedisClient(
            reactor, client_endpoint(reactor, address, 2.0), db=address.db,
            backoff=(0.05, 0.2), on_state=(lambda s, why: states.append(s))
            if states is not None else None, **kwargs)
        self.addCleanup(client.stop)
        client.start()
        return client

    @async_test
    async def test_auth_select_pipeline(self) -> None:
        """
        With a password and a database, the client authenticates and
        selects on connect; pipelined commands answer in order.
        """
        server = start_redis(self, password="s3cret")
        client = self.client(server, password="s3cret", db=2)
        await wait_for(lambda: client.connected)
        replies = await defer.gatherResults([
            client.execute(b"SET", b"k", b"v"), client.execute(b"GET", b"k"),
            client.execute(b"INCR", b"n"), client.execute(b"INCR", b"n")])
        self.assertEqual(replies, ["OK", b"v", 1, 2])
        self.assertIn(b"db2:keys=2", server.command("INFO", "keyspace"))

    @async_test
    async def test_wrong_password(self) -> None:
        """
        A refused AUTH leaves the client down (and retrying), not up.
        """
        server = start_redis(self, password="s3cret")
        states = []
        client = self.client(server, password="wrong", states=states)
        await wait_for(lambda: client.failures >= 2)
        self.assertEqual(states, ["down"])
        self.assertFalse(client.connected)

    @async_test
    async def test_reconnects(self) -> None:
        """
        Redis killed and restarted: commands fail fast while it is away,
        and the client is back by itself, scripts reloaded by
        C{NOSCRIPT} fallback.
        """
        server = start_redis(self)
        states = []
        client = self.client(server, states=states)
        await wait_for(lambda: client.connected)
        script = Script("return redis.call('INCR', KEYS[1])")
        self.assertEqual(await client.run_script(script, [b"n"], []), 1)
        server.kill()
        await wait_for(lambda: not client.connected)
        with self.assertRaises(StoreUnavailable):
            await client.execute(b"PING")
        server.start()
        await wait_for(lambda: client.connected)
        self.assertEqual(await client.run_script(script, [b"n"], []), 1)
        self.assertEqual(states, ["up", "down", "up"])
