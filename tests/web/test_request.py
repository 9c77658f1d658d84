"""
Tests for L{qwen_twist.web.request}: the request head limits (size and
time), JSON answers where twisted.web would write a bare status line, and
the site's wiring from the configuration.
"""

from __future__ import annotations

import json

from twisted.internet import error as ierror
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.web import request as requestmod

from tests.web.helpers import GatewayHarness, parse_response

HEAD = b"GET /health HTTP/1.1\r\nHost: gateway\r\n"
STREAM = {"model": "qwen3:8b", "messages": [{"role": "user", "content": "Hi"}], "stream": True}


def chunk_line(text: str) -> bytes:
    return json.dumps({"model": "qwen3:8b", "created_at": "2025-01-01T00:00:00Z",
                       "message": {"role": "assistant", "content": text},
                       "done": False}).encode("utf-8") + b"\n"


class RawErrorMixin:
    def assertRawError(self, transport, status: int, code: str) -> dict:
        response = parse_response(transport.value())
        self.assertEqual(response.status, status)
        self.assertEqual(response.headers["content-type"], "application/json")
        self.assertEqual(response.headers["connection"], "close")
        self.assertEqual(response.headers["x-content-type-options"], "nosniff")
        self.assertIn("strict-transport-security", response.headers)
        self.assertEqual(response.headers["server"], "qwengate")
        error = response.json()["error"]
        self.assertEqual(set(error), {"message", "type", "param", "code"})
        self.assertEqual(error["code"], code)
        self.assertTrue(transport.disconnecting)
        return error


class HeaderSizeTests(RawErrorMixin, SynchronousTestCase):
    """
    Request heads over C{limits.max_header_bytes} are refused with 431.
    """

    def setUp(self) -> None:
        self.harness = GatewayHarness({"limits": {"max_header_bytes": 2048}})

    def test_limit_from_config(self) -> None:
        """
        Each connection gets the configured limit, for the whole head and
        for any one line.
        """
        channel, _ = self.harness.connect()
        self.assertEqual(channel.totalHeadersSize, 2048)
        self.assertEqual(channel.MAX_LENGTH, 2048)

    def test_within_limit(self) -> None:
        """
        A head just under the limit is served.
        """
        channel, transport = self.harness.connect()
        filler = b"X-Filler: " + b"a" * (2048 - len(HEAD) - 20) + b"\r\n"
        channel.dataReceived(HEAD + filler + b"\r\n")
        self.assertEqual(parse_response(transport.value()).status, 200)

    def test_many_lines(self) -> None:
        """
        Many header lines adding up to more than the limit get a 431 in the
        OpenAI envelope, and the connection is closed.
        """
        channel, transport = self.harness.connect()
        channel.dataReceived(HEAD + b"X-Filler: " + b"a" * 100 + b"\r\n" * 1)
        for i in range(30):
            channel.dataReceived(b"X-Filler-%d: %s\r\n" % (i, b"b" * 100))
        error = self.assertRawError(transport, 431, "request_headers_too_large")
        self.assertEqual(error["message"], "request headers too large, max 2048 bytes")
        self.assertEqual(self.harness.finished, [])

    def test_one_long_line(self) -> None:
        """
        One header line longer than the limit, even before its end arrives,
        gets a 431 too.
        """
        channel, transport = self.harness.connect()
        channel.dataReceived(HEAD + b"Cookie: " + b"c" * 4000)
        self.assertRawError(transport, 431, "request_headers_too_large")

    def test_long_url(self) -> None:
        """
        The request line counts: a huge URL is refused the same way.
        """
        channel, transport = self.harness.connect()
        channel.dataReceived(b"GET /" + b"u" * 3000 + b" HTTP/1.1\r\n\r\n")
        self.assertRawError(transport, 431, "request_headers_too_large")

    def test_per_request(self) -> None:
        """
        The count starts again for each request on a kept-alive connection.
        """
        channel, transport = self.harness.connect()
        filler = b"X-Filler: " + b"a" * 1500 + b"\r\n"
        for _ in range(3):
            transport.clear()
            channel.dataReceived(HEAD + filler + b"\r\n")
            self.assertEqual(parse_response(transport.value()).status, 200)
        self.assertFalse(transport.disconnecting)


class MalformedRequestTests(RawErrorMixin, SynchronousTestCase):
    """
    What twisted.web's parser refuses is answered in JSON, not with a bare
    status line.
    """

    def setUp(self) -> None:
        self.harness = GatewayHarness()

    def test_bad_content_length(self) -> None:
        """
        A non-numeric C{Content-Length} is a JSON 400.
        """
        channel, transport = self.harness.connect()
        channel.dataReceived(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: abc\r\n\r\n")
        self.assertRawError(transport, 400, "bad_request")
        self.assertEqual(self.harness.upstream.calls, [])

    def test_bad_request_line(self) -> None:
        """
        A request line that is not three parts is a JSON 400.
        """
        channel, transport = self.harness.connect()
        channel.dataReceived(b"HELLO\r\n\r\n")
        self.assertRawError(transport, 400, "bad_request")

    def test_bad_chunked_body(self) -> None:
        """
        Broken chunked framing in a body is a JSON 400.
        """
        channel, transport = self.harness.connect()
        channel.dataReceived(b"POST /v1/chat/completions HTTP/1.1\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\nzz\r\n")
        self.assertRawError(transport, 400, "bad_request")

    def test_only_once(self) -> None:
        """
        More garbage after a refusal writes nothing more.
        """
        channel, transport = self.harness.connect()
        channel.dataReceived(b"HELLO\r\n")
        value = transport.value()
        channel.dataReceived(b"MORE GARBAGE\r\nX\r\n\r\n")
        self.assertEqual(transport.value(), value)


class FormBodyTests(SynchronousTestCase):
    """
    Bodies are JSON whatever the C{Content-Type} says; twisted.web's form
    parsing is off where it can be switched off.
    """

    def test_odd_content_type(self) -> None:
        """
        A C{Content-Type} holding a byte that Python's e-mail parser takes
        for a line break (0x85) does not blow up the connection (it raises
        out of Twisted 26.10's form parsing): the body is read as JSON.
        """
        harness = GatewayHarness()
        channel, transport = harness.connect()
        body = b'{"model": 1}'
        channel.dataReceived(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\n"
            b"Content-Type: multipart/form-data; boundary=\x85\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        response = parse_response(transport.value())
        self.assertEqual(response.status, 400)
        self.assertEqual(response.json()["error"]["param"], "model")

    def test_form_content_type(self) -> None:
        """
        A JSON body sent as C{application/x-www-form-urlencoded} (what
        C{curl -d} says) is served as JSON, without being parsed as a form
        first, and the resource still sees the header.
        """
        harness = GatewayHarness()
        channel, transport = harness.connect()
        body = b'{"model": "qwen3:8b", "messages": [{"role": "user", "content": "a=b&c"}]}'
        channel.dataReceived(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        [call] = harness.upstream.calls
        self.assertEqual(call.payload["messages"], [{"role": "user", "content": "a=b&c"}])
        [request] = channel.requests
        self.assertEqual(request.args, {})
        self.assertEqual(request.getHeader(b"content-type"),
                         b"application/x-www-form-urlencoded")


class StarRequestTests(SynchronousTestCase):
    """
    Requests for C{*} get the gateway's answers, not Twisted's.
    """

    def test_options_star(self) -> None:
        """
        C{OPTIONS *} is a 204 listing the methods, with the security headers.
        """
        harness = GatewayHarness()
        _, transport = harness.request("OPTIONS", "*")
        response = harness.response(transport)
        self.assertEqual(response.status, 204)
        self.assertEqual(response.headers["allow"], "GET, POST, OPTIONS")
        self.assertEqual(response.headers["x-content-type-options"], "nosniff")
        self.assertEqual(response.headers["server"], "qwengate")

    def test_other_star(self) -> None:
        """
        Any other method on C{*} is a JSON 405.
        """
        harness = GatewayHarness()
        _, transport = harness.request("GET", "*")
        response = harness.response(transport)
        self.assertEqual(response.status, 405)
        self.assertEqual(response.headers["allow"], "OPTIONS")
        self.assertEqual(response.json()["error"]["type"], "invalid_request_error")
        self.assertEqual(response.headers["server"], "qwengate")


class HeaderTimeoutTests(RawErrorMixin, SynchronousTestCase):
    """
    A client gets C{limits.header_timeout} seconds for a whole request head,
    however it spreads the bytes, while long streams and kept-alive
    connections are governed by other timers.
    """

    def setUp(self) -> None:
        self.harness = GatewayHarness({
            "limits": {"header_timeout": 10.0},
            "streaming": {"keepalive_interval": 15.0},
        })
        self.clock = self.harness.clock

    def test_dribbling_client_cut(self) -> None:
        """
        A client sending one header line every 3 s (which keeps restarting
        Twisted's own idle timer) is answered 408 and closed once 10 s have
        passed since its first byte.
        """
        channel, transport = self.harness.connect()
        channel.dataReceived(b"GET /health HTTP/1.1\r\n")
        for i in range(3):
            self.clock.advance(3)
            channel.dataReceived(b"X-Slow-%d: 1\r\n" % (i,))
            self.assertFalse(transport.disconnecting)
        self.clock.advance(1.5)
        error = self.assertRawError(transport, 408, "request_timeout")
        self.assertEqual(error["message"], "request headers not received within 10 seconds")
        channel.connectionLost(Failure(ierror.ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_abort_if_client_holds_on(self) -> None:
        """
        A client that does not let go after the 408 is aborted.
        """
        channel, transport = self.harness.connect()
        channel.dataReceived(b"GET /health HTTP/1.1\r\n")
        self.clock.advance(10)
        self.assertTrue(transport.disconnecting)
        self.clock.advance(channel.abortTimeout)
        self.assertTrue(transport.disconnected)

    def test_prompt_client_served(self) -> None:
        """
        A head completed in time is served and its deadline is cancelled.
        """
        channel, transport = self.harness.connect()
        channel.dataReceived(b"GET /health HTTP/1.1\r\n")
        self.clock.advance(9)
        channel.dataReceived(b"Host: gateway\r\n\r\n")
        self.assertEqual(parse_response(transport.value()).status, 200)
        self.clock.advance(5)
        self.assertFalse(transport.disconnecting)

    def test_slow_body_not_cut_by_head_deadline(self) -> None:
        """
        The head deadline covers the head only: a body arriving slowly but
        above C{limits.body_min_rate}, for longer than the head deadline,
        is still read and answered.
        """
        harness = GatewayHarness({"limits": {"header_timeout": 10.0, "body_min_rate": 1}})
        channel, transport = harness.connect()
        body = json.dumps({"model": "m", "messages": "wrong"}).encode("utf-8")
        channel.dataReceived(b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\n"
                             b"Content-Length: %d\r\n\r\n" % (len(body),))
        for byte in range(len(body)):
            harness.clock.advance(0.5)
            channel.dataReceived(body[byte:byte + 1])
        self.assertGreater(harness.clock.seconds(), 10)
        self.assertEqual(parse_response(transport.value()).status, 400)
        self.assertFalse(transport.disconnecting)

    def test_trickled_body_cut(self) -> None:
        """
        A body trickled one byte every 5 s (which keeps restarting Twisted's
        idle timer, so it was never cut) gets 408 and the connection closes
        once a C{body_timeout} period passes below C{body_min_rate}.
        """
        channel, transport = self.harness.connect()
        channel.dataReceived(b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\n"
                             b"Content-Length: 1000\r\n\r\n")
        self.clock.advance(5)
        channel.dataReceived(b"{")
        self.assertFalse(transport.disconnecting)
        self.clock.advance(5)
        response = parse_response(transport.value())
        self.assertEqual(response.status, 408)
        self.assertEqual(response.json()["error"]["code"], "request_timeout")
        self.assertTrue(transport.disconnecting)

    def test_steady_body_kept(self) -> None:
        """
        A large body arriving steadily above the minimum rate is checked
        period after period and never cut; no timer is left behind.
        """
        harness = GatewayHarness({"limits": {"body_timeout": 1.0, "body_min_rate": 100}})
        channel, transport = harness.connect()
        body = json.dumps({"model": "m", "messages": "x" * 2000}).encode("utf-8")
        channel.dataReceived(b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\n"
                             b"Content-Length: %d\r\n\r\n" % (len(body),))
        for start in range(0, len(body), 60):
            harness.clock.advance(0.25)
            channel.dataReceived(body[start:start + 60])
        self.assertEqual(parse_response(transport.value()).status, 400)
        self.assertFalse(transport.disconnecting)
        self.assertIsNone(channel._body_timer)

    def test_long_stream_not_cut(self) -> None:
        """
        A stream that runs for many times the head deadline and the idle
        timeout is not cut by either.
        """
        channel, transport = self.harness.request("POST", "/v1/chat/completions", STREAM)
        upstream = self.harness.upstream.calls[-1].respond_streaming(200)
        for i in range(40):
            self.clock.advance(5)
            upstream.send(chunk_line("tok%d " % (i,)))
        self.assertFalse(transport.disconnecting)
        upstream.send(json.dumps({"model": "qwen3:8b", "created_at": "x",
                                  "message": {"role": "assistant", "content": ""},
                                  "done": True, "done_reason": "stop"}).encode() + b"\n")
        response = parse_response(transport.value())
        self.assertEqual(response.status, 200)
        self.assertTrue(response.complete)
        self.assertIn(b"tok39", response.body)
        self.assertFalse(transport.disconnecting)

    def test_keepalive_idle(self) -> None:
        """
        A kept-alive connection with nothing sent is not on the head
        deadline; the idle timeout closes it after
        L{requestmod.KEEPALIVE_TIMEOUT} seconds.
        """
        channel, transport = self.harness.request("GET", "/health")
        self.clock.advance(30)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(requestmod.KEEPALIVE_TIMEOUT - 30 + 0.1)
        self.assertTrue(transport.disconnecting)
        self.assertNotIn(b"408", transport.value())

    def test_deadline_per_request(self) -> None:
        """
        Each request on a kept-alive connection gets its own deadline, from
        its own first byte.
        """
        channel, transport = self.harness.request("GET", "/health")
        self.clock.advance(25)
        transport.clear()
        channel.dataReceived(b"GET /health HTTP/1.1\r\n")
        self.clock.advance(9)
        self.assertFalse(transport.disconnecting)
        channel.dataReceived(b"\r\n")
        self.assertEqual(parse_response(transport.value()).status, 200)
        transport.clear()
        channel.dataReceived(b"GET /health HTTP/1.1\r\n")
        self.clock.advance(10)
        self.assertRawError(transport, 408, "request_timeout")


class SiteTests(SynchronousTestCase):
    """
    L{requestmod.GatewaySite} takes what it needs from the configuration.
    """

    def test_from_config(self) -> None:
        """
        Limits, security headers, CORS origins and stripped fields come from
        the C{Config}.
        """
        harness = GatewayHarness({
            "limits": {"max_body_bytes": 5000, "max_header_bytes": 3000,
                       "header_timeout": 4.5},
            "response": {"hsts_max_age": 0, "cors_origins": ["https://a.example"],
                         "strip_fields": ["usage"]},
        })
        site = harness.site
        self.assertEqual((site.max_body_bytes, site.max_header_bytes, site.header_timeout),
                         (5000, 3000, 4.5))
        self.assertEqual(site.cors.origins, {b"https://a.example"})
        self.assertEqual(site.strip_tree, {"usage": None})
        self.assertNotIn(b"Strict-Transport-Security", dict(site.response_headers))
        channel, _ = harness.connect()
        self.assertEqual(channel.header_timeout, 4.5)
        self.assertIsInstance(channel, requestmod.GatewayChannel)

    def test_http11_only(self) -> None:
        """
        ALPN is offered HTTP/1.1 only, since the channel speaks nothing else.
        """
        self.assertEqual(GatewayHarness().site.acceptableProtocols(), [b"http/1.1"])
