"""
Tests for L{qwen_twist.upstream.client}: deadlines, error mapping and the circuit
breaker around every Ollama call, with a fake agent and a C{Clock}.
"""

from __future__ import annotations

from twisted.internet import defer, error as ierror
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from qwen_twist import config as configmod
from qwen_twist.upstream.client import OllamaClient, map_failure, read_body
from qwen_twist.upstream.failures import UpstreamTimeout

from tests.fakes import FakeResponse


class FakeAgent:
    """
    An C{IAgent} whose requests the test answers.
    """

    def __init__(self) -> None:
        self.requests = []

    def request(self, method, uri, headers=None, bodyProducer=None):
        d = defer.Deferred(lambda d: self.requests[-1].__setitem__("cancelled", True))
        self.requests.append({"method": method, "uri": uri, "deferred": d, "cancelled": False})
        return d


def client(**upstream) -> tuple:
    raw = {"tls": {"self_signed": True}, "auth": {"required": False},
           "upstream": upstream}
    config = configmod.build(configmod.Config, raw)
    clock = Clock()
    agent = FakeAgent()
    return OllamaClient(clock, config.upstream, agent=agent), agent, clock


class DeadlineTests(SynchronousTestCase):
    """
    The headers deadline, whatever cancellation produces underneath.
    """

    def test_headers_timeout(self) -> None:
        """
        No headers within C{timeouts.headers}: the request is cancelled (its
        connection closed) and the caller sees L{UpstreamTimeout}, mapped to
        504 C{upstream_timeout}.
        """
        upstream, agent, clock = client(timeouts={"headers": 5.0}, breaker={"threshold": 0})
        d = upstream.send("POST", "/api/chat", {"model": "m"})
        clock.advance(5)
        self.assertTrue(agent.requests[0]["cancelled"])
        failure = self.failureResultOf(d, UpstreamTimeout)
        err = map_failure(failure, upstream.where)
        self.assertEqual((err.status, err.code), (504, "upstream_timeout"))


class BreakerTests(SynchronousTestCase):
    """
    A dead Ollama costs clients milliseconds once the breaker is open.
    """

    def setUp(self) -> None:
        self.upstream, self.agent, self.clock = client(
            breaker={"threshold": 3, "cooldown": 30.0})

    def fail_one(self) -> Failure:
        # A refused connection is tried once more on a fresh one.
        d = self.upstream.send("POST", "/api/chat", {})
        for _ in range(2):
            self.agent.requests[-1]["deferred"].errback(Failure(ierror.ConnectionRefusedError()))
        return self.failureResultOf(d)

    def test_opens_and_fails_fast(self) -> None:
        """
        After three refused connections the breaker opens: the next call
        fails at once with a 503 whose Retry-After is the cool-down left,
        without touching the upstream.
        """
        for _ in range(3):
            self.assertEqual(map_failure(self.fail_one(), "x").status, 502)
            self.clock.advance(0.2)
        self.clock.advance(10)
        d = self.upstream.send("POST", "/api/chat", {})
        self.assertEqual(len(self.agent.requests), 6)
        err = map_failure(self.failureResultOf(d), "x")
        self.assertEqual(err.status, 503)
        self.assertEqual(dict(err.headers)["Retry-After"], "20")

    def test_refused_retried_once(self) -> None:
        """
        A refused connection (nothing was sent) is retried once, even for a
        POST; the retry's success is the answer and no failure counts.
        """
        d = self.upstream.send("POST", "/api/chat", {"model": "m"})
        self.agent.requests[-1]["deferred"].errback(Failure(ierror.ConnectionRefusedError()))
        self.assertEqual([r["method"] for r in self.agent.requests], [b"POST", b"POST"])
        self.agent.requests[-1]["deferred"].callback(FakeResponse(200, b""))
        self.assertEqual(self.successResultOf(d).code, 200)

    def test_probe_and_recovery(self) -> None:
        """
        After the cool-down one probe goes through; its success closes the
        breaker.
        """
        for _ in range(3):
            self.fail_one()
            self.clock.advance(0.2)
        self.clock.advance(30)
        probe = self.upstream.send("GET", "/api/version")
        second = self.upstream.send("GET", "/api/version")
        self.assertEqual(map_failure(self.failureResultOf(second), "x").status, 503)
        self.agent.requests[-1]["deferred"].callback(FakeResponse(200, b""))
        self.assertEqual(self.successResultOf(probe).code, 200)
        self.assertEqual(self.upstream.breaker.state, "closed")

    def test_server_errors(self) -> None:
        """
        Ollama 5xx reach the caller as the response (its body carries
        Ollama's message). Only a runner crash counts, and against that
        model's breaker alone: other models and the server stay usable. A
        500 caused by the request (memory for its num_ctx), 503 (queue full)
        and 4xx count for nothing (issue 9, item 7).
        """
        memory = b'{"error":"model requires more system memory (97 GiB) than is available"}'
        for code, body in [(503, b""), (404, b""), (400, b""), (500, memory)] * 3:
            d = self.upstream.send("POST", "/api/chat", {"model": "big"})
            self.agent.requests[-1]["deferred"].callback(FakeResponse(code, body))
            response = self.successResultOf(d)
            self.assertEqual(response.code, code)
            self.clock.advance(0.2)
        self.assertEqual(self.upstream.breaker.state, "closed")
        self.assertIsNone(self.upstream.model_breaker("big:latest"))
        crash = b'{"error":"llama runner process has terminated: exit status 2"}'
        for _ in range(3):
            d = self.upstream.send("POST", "/api/chat", {"model": "Crashy"})
            self.agent.requests[-1]["deferred"].callback(FakeResponse(500, crash))
            response = self.successResultOf(d)
            self.assertEqual(response.code, 500)
            self.assertEqual(self.successResultOf(read_body(response)), crash)
            self.clock.advance(0.2)
        self.assertEqual(self.upstream.breaker.state, "closed")
        self.assertEqual(self.upstream.model_breaker("crashy:latest").state, "open")
        seen = len(self.agent.requests)
        err = map_failure(self.failureResultOf(
            self.upstream.send("POST", "/api/chat", {"model": "crashy"})), "x")
        self.assertEqual((err.status, err.code), (503, "upstream_unavailable"))
        self.assertEqual(len(self.agent.requests), seen)
        d = self.upstream.send("POST", "/api/chat", {"model": "other"})
        self.agent.requests[-1]["deferred"].callback(FakeResponse(200, b""))
        self.assertEqual(self.successResultOf(d).code, 200)

    def test_one_tenant_cannot_open_the_server_breaker(self) -> None:
        """
        Five requests whose options make Ollama answer 500 (not a crash)
        leave every breaker closed.
        """
        for _ in range(5):
            d = self.upstream.send("POST", "/api/chat",
                                   {"model": "m", "options": {"num_ctx": 99999999}})
            self.agent.requests[-1]["deferred"].callback(
                FakeResponse(500, b'{"error":"model requires more system memory"}'))
            self.successResultOf(d)
            self.clock.advance(1)
        self.assertEqual(self.upstream.breaker.state, "closed")
        self.assertIsNone(self.upstream.model_breaker("m:latest"))

    def test_client_cancel_is_neutral(self) -> None:
        """
        Calls cancelled because the client left say nothing about Ollama.
        """
        for _ in range(5):
            d = self.upstream.send("POST", "/api/chat", {})
            d.cancel()
            self.failureResultOf(d)
        self.assertEqual(self.upstream.breaker.state, "closed")

    def test_slow_model_load_is_not_a_failure(self) -> None:
        """
        Headers arriving late but within the deadline (a model loading)
        are a success.
        """
        for _ in range(5):
            d = self.upstream.send("POST", "/api/chat", {})
            self.clock.advance(120)
            self.agent.requests[-1]["deferred"].callback(FakeResponse(200, b""))
            self.successResultOf(d)
        self.assertEqual(self.upstream.breaker.state, "closed")


class ChurnTests(SynchronousTestCase):
    """
    The breaker with its default settings under concurrency (issue 10).
    """

    def setUp(self) -> None:
        self.upstream, self.agent, self.clock = client()

    def test_burst_of_failures_among_concurrent_calls(self) -> None:
        """
        100 concurrent calls of which 10 fail at once (refused twice, reset)
        do not open the breaker.
        """
        calls = [self.upstream.send("POST", "/api/chat", {"model": "m"}) for _ in range(100)]
        pending = [r["deferred"] for r in self.agent.requests]
        for d in pending[:5]:
            d.errback(Failure(ierror.ConnectionRefusedError()))
        for r in self.agent.requests[100:]:
            r["deferred"].errback(Failure(ierror.ConnectionRefusedError()))
        for d in pending[5:10]:
            d.errback(Failure(ierror.ConnectionLost()))
        for d in pending[10:]:
            d.callback(FakeResponse(200, b""))
        for d in calls[:10]:
            self.failureResultOf(d)
        for d in calls[10:]:
            self.successResultOf(d)
        self.assertEqual(self.upstream.breaker.state, "closed")

    def test_dead_ollama_opens_within_a_second(self) -> None:
        """
        Ollama dead for real (every connection refused) at 20 calls a
        second opens the breaker within a second; the next call fails fast
        without touching the upstream.
        """
        while self.upstream.breaker.state == "closed":
            self.assertLess(self.clock.seconds(), 1.0)
            d = self.upstream.send("POST", "/api/chat", {"model": "m"})
            for _ in range(2):
                self.agent.requests[-1]["deferred"].errback(
                    Failure(ierror.ConnectionRefusedError()))
            self.failureResultOf(d)
            self.clock.advance(0.05)
        seen = len(self.agent.requests)
        err = map_failure(self.failureResultOf(self.upstream.send("POST", "/api/chat", {})), "x")
        self.assertEqual(err.status, 503)
        self.assertEqual(len(self.agent.requests), seen)
