"""
Tests for L{qwen_twist.upstream.pool}: routing over several Ollama upstreams,
the single retry, outstanding-request counting, health checks and the pool's
reporting, with fake clients whose answers the tests drive and a L{Clock}.
"""

from __future__ import annotations

import json
from typing import Any, List, Optional

from hypothesis import given, settings, strategies as st

from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone, ResponseFailed, ResponseNeverReceived

from qwen_twist import errors
from qwen_twist.upstream.breaker import BreakerOpen
from qwen_twist.upstream.client import read_body
from qwen_twist.upstream.failures import UpstreamTimeout

from tests.fakes import FakeResponse
from qwen_twist.upstream.pool import UpstreamPool, model_key


class FakeBreaker:
    """
    A breaker whose state the test sets; refuses while C{"open"}.
    """

    def __init__(self) -> None:
        self.state = "closed"
        self.retry_after = 7.0
        self.neutrals = 0

    def before_call(self) -> None:
        if self.state == "open":
            raise BreakerOpen(self.retry_after, "fake")

    def neutral(self) -> None:
        self.neutrals += 1


class FakeCall:
    def __init__(self, client: "FakeClient", method: str, path: str, payload: Any,
                 headers_timeout: Optional[float]) -> None:
        self.client = client
        self.method = method
        self.path = path
        self.payload = payload
        self.headers_timeout = headers_timeout
        self.cancelled = False
        self.response: Optional[FakeResponse] = None
        self.d: Deferred = Deferred(self._cancel)

    def _cancel(self, d: Deferred) -> None:
        self.cancelled = True
        if self.client.cancel_with is not None:
            d.errback(Failure(self.client.cancel_with))

    def answer(self, code: int = 200, body: bytes = b"", auto: bool = False) -> FakeResponse:
        self.response = FakeResponse(code, body, auto, lose_on_stop=True)
        self.d.callback(self.response)
        return self.response

    def answer_json(self, document: Any, code: int = 200) -> FakeResponse:
        return self.answer(code, json.dumps(document).encode(), auto=True)

    def fail(self, exception: BaseException) -> None:
        self.d.errback(Failure(exception))

    @property
    def live(self) -> bool:
        """
        Whether the pool should count this call as outstanding.
        """
        if not self.d.called:
            return True
        return self.response is not None and not self.response.lost


class FakeClient:
    """
    Stands in for an L{OllamaClient}: records calls, answers nothing itself.
    """

    def __init__(self, host: str) -> None:
        self.where = host
        self.base_url = "http://" + host
        self.breaker = FakeBreaker()
        self.calls: List[FakeCall] = []
        self.closed = False
        self.refuse: Optional[BaseException] = None
        #: What a cancelled call fails with (default: CancelledError).
        self.cancel_with: Optional[BaseException] = None

    def send(self, method: str, path: str, payload: Any = None,
             headers_timeout: Optional[float] = None) -> Deferred:
        if self.refuse is not None:
            raise self.refuse
        call = FakeCall(self, method, path, payload, headers_timeout)
        self.calls.append(call)
        return call.d

    def pending(self) -> List[FakeCall]:
        return [c for c in self.calls if not c.d.called]

    def close(self) -> Deferred:
        self.closed = True
        return succeed(None)


CHAT = {"model": "qwen3", "messages": []}


class _PoolTestCase(SynchronousTestCase):
    members = 3

    def setUp(self) -> None:
        self.clock = Clock()
        self.clients = [FakeClient("h%d:11434" % (i,)) for i in range(self.members)]
        self.pool = UpstreamPool(self.clock, self.clients, health_interval=10.0,
                                 check_timeout=3.0)

    def send(self, payload: Any = CHAT, path: str = "/api/chat") -> Deferred:
        return self.pool.send("POST", path, payload, headers_timeout=60.0)

    def only_call(self) -> FakeCall:
        pending = [c for client in self.clients for c in client.pending()]
        self.assertEqual(len(pending), 1)
        return pending[0]

    def outstanding(self) -> List[int]:
        return [m.outstanding for m in self.pool.members]

    def complete(self, d: Deferred) -> None:
        """
        Answer the one pending call 200 and read its body to the end.
        """
        self.only_call().answer(200, b"{}")
        read = read_body(self.successResultOf(d))
        self.only_response().finish()
        self.successResultOf(read)

    def only_response(self) -> FakeResponse:
        open_ = [c.response for client in self.clients for c in client.calls
                 if c.response is not None and not c.response.lost]
        self.assertEqual(len(open_), 1)
        return open_[0]


class ModelKeyTests(SynchronousTestCase):
    def test_implicit_latest(self) -> None:
        """
        A name without a tag means its C{:latest}, so both spellings match.
        """
        self.assertEqual(model_key("qwen3"), "qwen3:latest")
        self.assertEqual(model_key("qwen3:latest"), "qwen3:latest")
        self.assertEqual(model_key("Qwen3:8B"), "qwen3:8b")

    def test_tag_after_last_slash(self) -> None:
        """
        A registry host's port is not a tag; a namespaced tag is kept.
        """
        self.assertEqual(model_key("localhost:5000/m"), "localhost:5000/m:latest")
        self.assertEqual(model_key("hf.co/u/repo:Q4_K_M"), "hf.co/u/repo:q4_k_m")


class RoutingTests(_PoolTestCase):
    def test_least_outstanding(self) -> None:
        """
        Each request goes to the member with the fewest requests in flight.
        """
        sent = [self.pool.send("GET", "/api/tags") for _ in range(3)]
        self.assertEqual([len(c.calls) for c in self.clients], [1, 1, 1])
        call = self.clients[1].calls[0]
        call.answer(200)
        self.pool.send("GET", "/api/tags")
        # Headers alone do not free the member: its body is still coming.
        self.assertEqual([len(c.calls) for c in self.clients], [2, 1, 1])
        self.assertEqual(self.outstanding(), [2, 1, 1])
        self.successResultOf(sent[1]).deliverBody(_Sink())
        call.response.finish()
        self.pool.send("GET", "/api/tags")
        self.assertEqual([len(c.calls) for c in self.clients], [2, 2, 1])

    def test_ties_round_robin(self) -> None:
        """
        Among equally good idle members, successive requests take turns.
        """
        chosen = []
        for _ in range(6):
            d = self.pool.send("GET", "/api/tags")
            chosen.append(self.clients.index(self.only_call().client))
            self.complete(d)
        self.assertEqual(sorted(chosen[:3]), [0, 1, 2])
        self.assertEqual(chosen[3:], chosen[:3])

    def test_loaded_preferred(self) -> None:
        """
        A member with the model already loaded is preferred even when busier.
        """
        self.pool.members[2].loaded = frozenset(["qwen3:latest"])
        self.pool.members[2].outstanding = 5
        self.send()
        self.assertEqual(len(self.clients[2].calls), 1)

    def test_model_filter(self) -> None:
        """
        A member known not to have the model is passed over for one that has it.
        """
        self.pool.members[0].models = frozenset(["llama3:latest"])
        self.pool.members[1].models = frozenset(["llama3:latest"])
        self.pool.members[2].models = frozenset(["qwen3:latest"])
        self.pool.members[2].outstanding = 9
        self.send()
        self.assertEqual(len(self.clients[2].calls), 1)

    def test_unknown_tags_may_have(self) -> None:
        """
        A member whose tags are not known yet counts as having the model.
        """
        self.pool.members[0].models = frozenset(["llama3:latest"])
        self.pool.members[2].models = frozenset(["llama3:latest"])
        self.send()
        self.assertEqual(len(self.clients[1].calls), 1)

    def test_nobody_has_model(self) -> None:
        """
        When no member lists the model the request still goes out, so
        Ollama's own answer (404) reaches the client.
        """
        for member in self.pool.members:
            member.models = frozenset(["llama3:latest"])
        d = self.send()
        self.only_call().answer(404)
        self.assertEqual(self.successResultOf(d).code, 404)

    def test_no_model(self) -> None:
        """
        A request without a model (C{/api/tags}) goes to any member.
        """
        for member in self.pool.members:
            member.models = frozenset()
        self.pool.send("GET", "/api/tags")
        self.assertEqual(self.only_call().path, "/api/tags")

    def test_unhealthy_skipped(self) -> None:
        """
        Unhealthy members get no requests.
        """
        self.pool.members[0].healthy = False
        self.pool.members[1].healthy = False
        for _ in range(3):
            self.send()
        self.assertEqual([len(c.calls) for c in self.clients], [0, 0, 3])

    def test_breaker_open_skipped(self) -> None:
        """
        Members whose breaker is open get no requests.
        """
        self.clients[0].breaker.state = "open"
        self.clients[2].breaker.state = "open"
        for _ in range(3):
            self.send()
        self.assertEqual([len(c.calls) for c in self.clients], [0, 3, 0])

    def test_half_open_last_resort(self) -> None:
        """
        A half-open member gets real traffic only when no closed one is left.
        """
        self.clients[0].breaker.state = "half_open"
        self.pool.members[1].outstanding = 4
        self.pool.members[2].outstanding = 4
        self.send()
        self.assertEqual(len(self.clients[0].calls), 0)
        self.pool.members[1].healthy = self.pool.members[2].healthy = False
        self.send()
        self.assertEqual(len(self.clients[0].calls), 1)

    def test_answer_teaches_model(self) -> None:
        """
        A 200 for a model means the member has it and has it loaded, so the
        next request for it goes there too.
        """
        self.pool.members[1].models = frozenset()
        d = self.pool.send("POST", "/api/chat", {"model": "new:1b"})
        call = self.only_call()
        member = self.pool.members[self.clients.index(call.client)]
        self.complete(d)
        self.assertIn("new:1b", member.loaded)
        self.pool.send("POST", "/api/chat", {"model": "new:1b"})
        self.assertIs(self.only_call().client, call.client)


class _Sink:
    def __init__(self) -> None:
        self.data = b""
        self.reason: Optional[Failure] = None
        self.transport: Any = None

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure) -> None:
        self.reason = reason


def _failures() -> List[Any]:
    return [
        ierror.ConnectionRefusedError(),
        ierror.ConnectionLost(),
        ierror.TCPTimedOutError(),
        UpstreamTimeout("Ollama did not answer within 60 s"),
        TimeoutError(),
        ResponseNeverReceived([Failure(ierror.ConnectionDone())]),
        BreakerOpen(1.0, "h0"),
    ]


class RetryTests(_PoolTestCase):
    members = 2

    def test_retry_each_failure_kind(self) -> None:
        """
        A failure before any response is retried once on the other member,
        with the same request, and its answer is the caller's.
        """
        for exception in _failures():
            self.setUp()
            d = self.send()
            first = self.only_call()
            first.fail(exception)
            second = self.only_call()
            self.assertIsNot(second.client, first.client, exception)
            self.assertEqual((second.method, second.path, second.payload, second.headers_timeout),
                             ("POST", "/api/chat", CHAT, 60.0))
            second.answer(200)
            self.assertEqual(self.successResultOf(d).code, 200, exception)

    def test_retry_refused_synchronously(self) -> None:
        """
        A client whose C{send} raises (breaker refusal) is retried too.
        """
        self.pool.members[1].outstanding = 1
        self.clients[0].refuse = BreakerOpen(2.0, "h0")
        d = self.send()
        self.only_call().answer(200)
        self.assertEqual(self.successResultOf(d).code, 200)
        self.assertEqual(self.outstanding(), [0, 2])

    def test_retry_5xx(self) -> None:
        """
        A 500/502/503/504 status is retried; the first body is dropped
        (connection closed, count released).
        """
        for code in (500, 502, 503, 504):
            self.setUp()
            d = self.send()
            first = self.only_call()
            first.answer(code)
            self.assertTrue(first.response.transport.stopped)
            second = self.only_call()
            self.assertIsNot(second.client, first.client)
            second.answer(200)
            self.assertEqual(self.successResultOf(d).code, 200)
            self.assertEqual(sorted(self.outstanding()), [0, 1])

    def test_never_twice(self) -> None:
        """
        When the retry fails too, the caller gets that failure; no third try
        even with a third member available.
        """
        self.clients.append(FakeClient("h9:11434"))
        self.pool = UpstreamPool(self.clock, self.clients)
        d = self.send()
        self.only_call().fail(ierror.ConnectionRefusedError())
        self.only_call().answer(502)
        self.assertEqual(self.successResultOf(d).code, 502)
        self.assertEqual(sum(len(c.calls) for c in self.clients), 2)
        d = self.send()
        self.only_call().fail(ierror.ConnectionRefusedError())
        self.only_call().fail(ierror.ConnectionLost())
        self.failureResultOf(d, ierror.ConnectionLost)
        self.assertEqual(sum(len(c.calls) for c in self.clients), 4)

    def test_no_retry_after_response(self) -> None:
        """
        A response below 500 is the answer: a 4xx is not retried, nor is a
        body that breaks after the response was handed over.
        """
        d = self.send()
        self.only_call().answer(404, auto=True)
        response = self.successResultOf(d)
        self.assertEqual(response.code, 404)
        self.successResultOf(read_body(response))
        d = self.send()
        call = self.only_call()
        response = call.answer(200)
        body = read_body(self.successResultOf(d))
        response.lose(Failure(ResponseFailed([Failure(ierror.ConnectionLost())])))
        self.failureResultOf(body, ResponseFailed)
        self.assertEqual(sum(len(c.calls) for c in self.clients), 2)
        self.assertEqual(self.outstanding(), [0, 0])

    def test_other_failures_not_retried(self) -> None:
        """
        A cancellation from below and a gateway bug say nothing about the
        member: passed on, not retried.
        """
        for exception in (ValueError("bug"),
                          ResponseNeverReceived([Failure(CancelledError())])):
            self.setUp()
            d = self.send()
            self.only_call().fail(exception)
            self.failureResultOf(d, type(exception))
            self.assertEqual(sum(len(c.calls) for c in self.clients), 1)

    def test_no_alternative(self) -> None:
        """
        With no other available member the first outcome is passed on as it
        was: the 5xx response with its body unread, or the failure.
        """
        self.pool.members[1].healthy = False
        d = self.send()
        response = self.only_call().answer(500, b'{"error":"boom"}')
        self.assertFalse(response.transport.stopped)
        got = self.successResultOf(d)
        self.assertEqual(got.code, 500)
        body = read_body(got)
        response.finish()
        self.assertEqual(self.successResultOf(body), b'{"error":"boom"}')
        d = self.send()
        self.only_call().fail(ierror.ConnectionRefusedError())
        self.failureResultOf(d, ierror.ConnectionRefusedError)
        self.assertEqual(self.outstanding(), [0, 0])

    def test_retry_needs_model(self) -> None:
        """
        The retry never goes to a member known not to have the model (its
        404 would hide the real failure).
        """
        self.pool.members[0].models = frozenset(["qwen3:latest"])
        self.pool.members[1].models = frozenset(["other:latest"])
        d = self.send()
        self.only_call().fail(ierror.ConnectionRefusedError())
        self.failureResultOf(d, ierror.ConnectionRefusedError)
        self.assertEqual(len(self.clients[1].calls), 0)


class CancelTests(_PoolTestCase):
    members = 2

    def test_cancel_pending(self) -> None:
        """
        Cancelling the caller's Deferred cancels the member's request, does
        not retry, and frees the count.
        """
        d = self.send()
        call = self.only_call()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(call.cancelled)
        self.assertEqual(sum(len(c.calls) for c in self.clients), 1)
        self.assertEqual(self.outstanding(), [0, 0])

    def test_cancel_surfacing_as_connection_error(self) -> None:
        """
        A cancelled request is not retried even when the member's request
        reports the cancel as a lost connection.
        """
        for client in self.clients:
            client.cancel_with = ResponseFailed([Failure(ierror.ConnectionLost())])
        d = self.send()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(sum(len(c.calls) for c in self.clients), 1)
        self.assertEqual(self.outstanding(), [0, 0])

    def test_cancel_during_retry(self) -> None:
        """
        Cancelling while the retry is in flight cancels the retry.
        """
        d = self.send()
        self.only_call().fail(ierror.ConnectionRefusedError())
        retry = self.only_call()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(retry.cancelled)
        self.assertEqual(self.outstanding(), [0, 0])

    def test_late_response_dropped(self) -> None:
        """
        A response that arrives after the caller gave up is closed unread
        and its count freed.
        """
        d = self.send()
        call = self.only_call()
        call.d.pause()
        response = call.answer(200)
        d.cancel()
        call.d.unpause()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(response.transport.stopped)
        self.assertEqual(self.outstanding(), [0, 0])

    def test_cancel_after_response(self) -> None:
        """
        Once the response was handed over, cancelling changes nothing; the
        count is freed when its body ends.
        """
        d = self.send()
        self.only_call().answer(200)
        d.cancel()
        response = self.successResultOf(d)
        self.assertEqual(sorted(self.outstanding()), [0, 1])
        response.deliverBody(_Sink())
        self.only_response().finish()
        self.assertEqual(self.outstanding(), [0, 0])


class CountingTests(_PoolTestCase):
    members = 2

    def test_counts_until_body_end(self) -> None:
        """
        A request counts from dispatch through its headers until its body
        ends, and the caller's protocol sees the body unchanged.
        """
        d = self.send()
        self.assertEqual(sorted(self.outstanding()), [0, 1])
        response = self.only_call().answer(200, b"abc")
        sink = _Sink()
        self.successResultOf(d).deliverBody(sink)
        self.assertEqual(sorted(self.outstanding()), [0, 1])
        response.finish()
        self.assertEqual(self.outstanding(), [0, 0])
        self.assertEqual(sink.data, b"abc")
        self.assertIs(sink.transport, response.transport)
        self.assertTrue(sink.reason.check(ResponseDone))

    def test_released_before_caller_sees_end(self) -> None:
        """
        The count is already freed when the caller learns the body ended, so
        a request sent from there sees the member idle.
        """
        d = self.send()
        response = self.only_call().answer(200)
        seen = []
        sink = _Sink()
        sink.connectionLost = lambda reason: seen.append(self.outstanding())
        self.successResultOf(d).deliverBody(sink)
        response.finish()
        self.assertEqual(seen, [[0, 0]])

    def test_counts_until_abort(self) -> None:
        """
        A body the caller stops (client gone) frees the count.
        """
        d = self.send()
        self.only_call().answer(200)
        sink = _Sink()
        self.successResultOf(d).deliverBody(sink)
        sink.transport.stopProducing()
        self.assertEqual(self.outstanding(), [0, 0])

    @settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @given(st.lists(st.tuples(st.sampled_from(
        ["send", "answer", "answer5xx", "fail", "cancel", "read", "end", "abort"]),
        st.integers(0, 1000)), max_size=40))
    def test_counts_exact(self, steps: List[Any]) -> None:
        """
        Under any interleaving of requests, answers, failures, retries,
        cancellations and body ends, each member's count is exactly its
        calls still in flight, every request settles, none is tried more
        than twice, and all counts return to zero.
        """
        self.setUp()
        requests: List[Deferred] = []
        read: List[Any] = []
        sinks: List[_Sink] = []
        kinds = _failures()
        for op, n in steps:
            pending = [c for client in self.clients for c in client.pending()]
            if op == "send":
                requests.append(self.send({"model": "qwen3", "id": len(requests)}))
            elif op in ("answer", "answer5xx", "fail") and pending:
                call = pending[n % len(pending)]
                if op == "fail":
                    call.fail(kinds[n % len(kinds)])
                else:
                    call.answer(503 if op == "answer5xx" else 200)
            elif op == "cancel" and requests:
                requests[n % len(requests)].cancel()
            elif op == "read" and requests:
                d = requests[n % len(requests)]
                if d.called and d.result not in read and not isinstance(d.result, Failure):
                    read.append(d.result)
                    sink = _Sink()
                    sinks.append(sink)
                    d.result.deliverBody(sink)
            elif op in ("end", "abort"):
                bodies = [c.response for client in self.clients for c in client.calls
                          if c.response is not None and c.response.protocol is not None
                          and not c.response.lost]
                if bodies:
                    body = bodies[n % len(bodies)]
                    if op == "end":
                        body.finish()
                    else:
                        body.transport.stopProducing()
            self.assertEqual(self.outstanding(),
                             [sum(c.live for c in client.calls) for client in self.clients])
        # Settle everything: fail what is pending, read what is unread.
        for client in self.clients:
            for call in client.pending():
                call.fail(ierror.ConnectionLost())
        for client in self.clients:
            for call in client.pending():
                call.fail(ierror.ConnectionLost())
        for d in requests:
            self.assertTrue(d.called)
            if not isinstance(d.result, Failure) and d.result not in read:
                d.result.deliverBody(_Sink())
            d.addErrback(lambda f: None)
        for client in self.clients:
            for call in client.calls:
                if call.response is not None:
                    call.response.finish()
        self.assertEqual(self.outstanding(), [0, 0])
        ids = [c.payload["id"] for client in self.clients for c in client.calls]
        self.assertTrue(all(ids.count(i) <= 2 for i in set(ids)))


class UnavailableTests(_PoolTestCase):
    members = 2

    def test_all_breakers_open(self) -> None:
        """
        No member available: 503 C{upstream_unavailable} with C{Retry-After}
        from the soonest breaker probe, and no upstream touched.
        """
        self.clients[0].breaker.state = "open"
        self.clients[0].breaker.retry_after = 12.5
        self.clients[1].breaker.state = "open"
        self.clients[1].breaker.retry_after = 4.2
        error = self.failureResultOf(self.send(), errors.ApiError).value
        self.assertEqual((error.status, error.code), (503, "upstream_unavailable"))
        self.assertEqual(dict(error.headers)["Retry-After"], "5")
        self.assertEqual(sum(len(c.calls) for c in self.clients), 0)

    def test_all_unhealthy(self) -> None:
        """
        All members unhealthy: C{Retry-After} is the time to the next health
        check (at least 1).
        """
        self.pool.check_health()
        self.clock.advance(3.0)  # every check times out
        self.assertEqual([m.healthy for m in self.pool.members], [False, False])
        self.clock.advance(4.5)
        error = self.failureResultOf(self.send(), errors.ApiError).value
        self.assertEqual(dict(error.headers)["Retry-After"], "3")
        self.clock.advance(10)
        error = self.failureResultOf(self.send(), errors.ApiError).value
        self.assertEqual(dict(error.headers)["Retry-After"], "1")


TAGS = {"models": [
    {"name": "qwen3:8b", "model": "qwen3:8b", "size": 1, "digest": "x", "details": {}},
    {"name": "nomic-embed-text:latest", "model": "nomic-embed-text:latest"},
]}
PS = {"models": [{"name": "qwen3:8b", "model": "qwen3:8b", "size_vram": 5,
                  "expires_at": "2025-01-01T00:00:00Z", "context_length": 4096}]}


class HealthTests(_PoolTestCase):
    members = 2

    def answer_all(self, client: FakeClient, version: Any = None, tags: Any = TAGS,
                   ps: Any = PS) -> None:
        call = client.pending()[0]
        self.assertEqual((call.method, call.path, call.headers_timeout),
                         ("GET", "/api/version", 3.0))
        call.answer_json(version or {"version": "0.9.0"})
        for path, document in (("/api/tags", tags), ("/api/ps", ps)):
            call = client.pending()[0]
            self.assertEqual(call.path, path)
            if isinstance(document, BaseException):
                call.fail(document)
            else:
                call.answer_json(document)

    def test_learns_models(self) -> None:
        """
        A check learns the version, the models and the loaded ones.
        """
        d = self.pool.check_health()
        self.answer_all(self.clients[0])
        self.answer_all(self.clients[1], tags={"models": []}, ps={"models": []})
        self.successResultOf(d)
        member = self.pool.members[0]
        self.assertEqual(member.version, "0.9.0")
        self.assertEqual(member.models, frozenset(["qwen3:8b", "nomic-embed-text:latest"]))
        self.assertEqual(member.loaded, frozenset(["qwen3:8b"]))
        self.assertEqual(self.pool.members[1].models, frozenset())
        self.pool.send("POST", "/api/embed", {"model": "nomic-embed-text"})
        self.assertIs(self.only_call().client, self.clients[0])

    def test_marks_down(self) -> None:
        """
        A refused, non-200, or late C{/api/version} marks the member
        unhealthy; the other stays healthy.
        """
        for fail in ("refused", "500", "late"):
            self.setUp()
            d = self.pool.check_health()
            call = self.clients[0].pending()[0]
            if fail == "refused":
                call.fail(ierror.ConnectionRefusedError())
            elif fail == "500":
                call.answer_json({"error": "x"}, code=500)
            self.answer_all(self.clients[1])
            self.clock.advance(3.0)
            self.successResultOf(d)
            self.assertEqual([m.healthy for m in self.pool.members], [False, True], fail)

    def test_marks_up(self) -> None:
        """
        An unhealthy member becomes healthy again after a passing check, or
        when a request it was already serving gets an answer.
        """
        self.pool.members[0].healthy = False
        d = self.pool.check_health()
        self.answer_all(self.clients[0])
        self.answer_all(self.clients[1])
        self.successResultOf(d)
        self.assertTrue(self.pool.members[0].healthy)
        self.send()
        call = self.only_call()
        self.pool.members[self.clients.index(call.client)].healthy = False
        call.answer(200)
        self.assertEqual([m.healthy for m in self.pool.members], [True, True])

    def test_tags_failure_keeps_knowledge(self) -> None:
        """
        A failing C{/api/tags} or bad C{/api/ps} keeps what was known and
        leaves the member healthy.
        """
        self.pool.members[0].models = frozenset(["a:latest"])
        self.pool.members[0].loaded = frozenset(["a:latest"])
        d = self.pool.check_health()
        self.answer_all(self.clients[0], tags=ierror.ConnectionLost(), ps={"models": 3})
        self.answer_all(self.clients[1])
        self.successResultOf(d)
        member = self.pool.members[0]
        self.assertTrue(member.healthy)
        self.assertEqual((member.models, member.loaded),
                         (frozenset(["a:latest"]), frozenset(["a:latest"])))

    def test_breaker_refusal_keeps_health(self) -> None:
        """
        A check refused by the member's open breaker changes nothing.
        """
        self.clients[0].refuse = BreakerOpen(5.0, "h0")
        d = self.pool.check_health()
        self.answer_all(self.clients[1])
        self.successResultOf(d)
        self.assertTrue(self.pool.members[0].healthy)

    def test_periodic(self) -> None:
        """
        C{start} checks at once and every interval, also after failures;
        C{stop} cancels the checks in flight and ends the cycle.
        """
        self.pool.start()
        self.assertEqual([len(c.calls) for c in self.clients], [1, 1])
        self.clients[0].pending()[0].fail(ierror.ConnectionRefusedError())
        self.answer_all(self.clients[1])
        self.clock.advance(10.0)
        self.assertEqual([len(c.calls) for c in self.clients], [2, 4])
        self.pool.stop()
        self.assertTrue(all(c.cancelled for c in self.clients[0].calls[1:]))
        self.assertEqual([m.healthy for m in self.pool.members], [False, True])
        self.clock.advance(100.0)
        self.assertEqual([len(c.calls) for c in self.clients], [2, 4])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_state(self) -> None:
        """
        C{state()} reports each member for C{/ready}.
        """
        d = self.pool.check_health()
        self.answer_all(self.clients[0])
        self.clients[1].pending()[0].fail(ierror.ConnectionRefusedError())
        self.successResultOf(d)
        self.clients[1].breaker.state = "open"
        self.send()
        self.assertEqual(self.pool.state(), [
            {"url": "http://h0:11434", "healthy": True, "version": "0.9.0", "models": 2,
             "loaded": ["qwen3:8b"], "outstanding": 1, "breaker": "closed"},
            {"url": "http://h1:11434", "healthy": False, "version": None, "models": None,
             "loaded": [], "outstanding": 0, "breaker": "open"},
        ])


class PoolTests(_PoolTestCase):
    members = 2

    def test_names(self) -> None:
        """
        C{where} lists every member; C{base_url} is the first one's.
        """
        self.assertEqual(self.pool.where, "h0:11434, h1:11434")
        self.assertEqual(self.pool.base_url, "http://h0:11434")

    def test_close(self) -> None:
        """
        C{close} closes every client and stops the checks.
        """
        self.pool.start()
        self.successResultOf(self.pool.close())
        self.assertEqual([c.closed for c in self.clients], [True, True])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_empty(self) -> None:
        """
        A pool needs at least one upstream.
        """
        self.assertRaises(ValueError, UpstreamPool, self.clock, [])
