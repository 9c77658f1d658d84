"""
L{qwen_twist.observe.metrics}: per-call counting, bounded labels, the
scrape-time collector, and the metrics resource.
"""

from __future__ import annotations

import os
import random
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from qwen_twist.context import CallContext
from qwen_twist.gate.queue import SlotQueue
from qwen_twist.observe import metrics as m
from qwen_twist.observe.metrics_resource import MetricsResource, token_reader
from qwen_twist.upstream.breaker import CircuitBreaker


def call(**fields: Any) -> CallContext:
    ctx = CallContext(request_id="r", route="chat_completions", method="POST",
                      path="/v1/chat/completions", client_ip="192.0.2.1", started=100.0)
    ctx.finished_at = 101.0
    ctx.status = 200
    for name, value in fields.items():
        setattr(ctx, name, value)
    return ctx


def scrape(metrics: m.Metrics) -> dict:
    found = {}
    text = generate_latest(metrics.registry).decode("utf-8")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def series(metrics: m.Metrics) -> set:
    return {(s.name, tuple(sorted(s.labels.items())))
            for family in metrics.registry.collect() for s in family.samples}


class LabelTests(SynchronousTestCase):
    """
    Label values come from bounded sets only.
    """

    def test_model_learned_from_a_200(self):
        """
        A model is a label once Ollama answered 200 for it; before, and for
        any name Ollama refused, it is C{other}.
        """
        metrics = m.Metrics(CollectorRegistry())
        self.assertEqual(metrics.model_label("Qwen3:8b"), "other")
        metrics.call_finished(call(model="qwen3:8b", upstream_status=404, status=404,
                                   upstream_started=100.0))
        self.assertEqual(metrics.model_label("qwen3:8b"), "other")
        metrics.call_finished(call(model="qwen3:8b", upstream_status=200,
                                   upstream_started=100.0))
        self.assertEqual(metrics.model_label("Qwen3:8B"), "qwen3:8b")
        self.assertEqual(metrics.model_label("qwen3"), "other")
        metrics.learn_models(["qwen3"])
        self.assertEqual(metrics.model_label("qwen3"), "qwen3:latest")
        self.assertEqual(metrics.model_label(None), "none")

    def test_model_set_capped(self):
        """
        At most L{m.MAX_MODELS} names, whatever Ollama lists.
        """
        metrics = m.Metrics(CollectorRegistry())
        metrics.learn_models("model-%d" % (i,) for i in range(m.MAX_MODELS + 50))
        self.assertEqual(metrics.model_label("model-%d" % (m.MAX_MODELS + 10,)), "other")

    def test_keys(self):
        """
        Key ids (from the keys file), C{jwt}, C{certificate}, C{anonymous}.
        """
        self.assertEqual(m.key_label("key:alice"), "alice")
        self.assertEqual(m.key_label("jwt:bob@example.com"), "jwt")
        self.assertEqual(m.key_label("cert:svc-bot"), "certificate")
        self.assertEqual(m.key_label(None), "anonymous")
        self.assertEqual(m.key_label("weird"), "other")

    def test_ten_thousand_random_calls(self):
        """
        10,000 calls with random model names, paths, keys, methods, status
        codes and upstreams leave the series count as it was after the
        first few: nothing client-chosen becomes a label.
        """
        metrics = m.Metrics(CollectorRegistry())
        metrics.watch_upstreams(["127.0.0.1:11434"])
        rng = random.Random(11)

        def word() -> str:
            return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz:/.-") for _ in range(16))

        def random_call(i: int) -> CallContext:
            return call(
                model=word(), path="/v1/" + word(), method=rng.choice(["POST", "GET", word()]),
                status=rng.choice([200, 400, 401, 404, 429, 500, 777]),
                identity=rng.choice([None, "jwt:" + word(), "cert:" + word(), "bogus" + word()]),
                upstream_status=rng.choice([None, 404, 500]),
                upstream_started=100.0, upstream=rng.choice([None, word()]),
                usage={"prompt_tokens": 3, "completion_tokens": 4},
                error_code=rng.choice([None, "rate_limit_exceeded", word()]),
                auth_method=rng.choice([None, "api_key", word()]),
                auth_failure=rng.choice([None, "invalid", word()]),
                stream=True, first_byte_at=100.5, client_ip=word(),
                ollama_timings={"eval_duration": 10 ** 9, "eval_count": 20},
            )

        for i in range(2000):
            metrics.call_finished(random_call(i))
            metrics.chunk_gap(0.01)
            metrics.breaker_moved(word(), "closed", word())
        before = series(metrics)
        for i in range(10000):
            metrics.call_finished(random_call(i))
            metrics.breaker_moved(word(), "closed", word())
        self.assertEqual(series(metrics), before)
        text = repr(before)
        self.assertNotIn("/v1/", text)


class CallCountingTests(SynchronousTestCase):
    """
    What one call adds.
    """

    def test_stream_call(self):
        """
        A finished stream: request, duration, overhead, TTFT, tokens by
        model and key, queue wait, upstream outcome, Ollama's timings.
        """
        metrics = m.Metrics(CollectorRegistry())
        metrics.learn_models(["qwen3:8b"])
        metrics.watch_upstreams(["ollama:11434"])
        metrics.call_finished(call(
            model="qwen3:8b", stream=True, first_byte_at=100.25, identity="key:alice",
            usage={"prompt_tokens": 5, "completion_tokens": 9}, queue_wait_ms=100.0,
            upstream_started=100.1, upstream_finished=100.9, upstream="ollama:11434",
            upstream_status=200, backpressure_pauses=2,
            ollama_timings={"load_duration": 2 * 10 ** 9, "prompt_eval_duration": 10 ** 8,
                            "eval_duration": 5 * 10 ** 8, "eval_count": 10}))
        s = scrape(metrics)
        route = ("route", "chat_completions")
        self.assertEqual(s[("qwengate_requests_total", (("code", "200"), ("method", "POST"),
                                                        ("model", "qwen3:8b"), route))], 1)
        self.assertEqual(s[("qwengate_time_to_first_token_seconds_sum",
                            (("model", "qwen3:8b"), route))], 0.25)
        self.assertAlmostEqual(s[("qwengate_gateway_overhead_seconds_sum", (route,))], 0.1)
        self.assertEqual(s[("qwengate_completion_tokens_total",
                            (("key", "alice"), ("model", "qwen3:8b")))], 9)
        self.assertEqual(s[("qwengate_prompt_tokens_total",
                            (("key", "alice"), ("model", "qwen3:8b")))], 5)
        self.assertEqual(s[("qwengate_queue_wait_seconds_count", ())], 1)
        self.assertEqual(s[("qwengate_upstream_requests_total",
                            (("outcome", "ok"), ("upstream", "ollama:11434")))], 1)
        self.assertEqual(s[("qwengate_backpressure_pauses_total", ())], 2)
        self.assertEqual(s[("qwengate_ollama_load_duration_seconds_sum",
                            (("model", "qwen3:8b"),))], 2.0)
        self.assertEqual(s[("qwengate_ollama_decode_tokens_per_second_sum",
                            (("model", "qwen3:8b"),))], 20.0)

    def test_refusals_and_auth(self):
        """
        Request-level refusals by reason, auth failures by method/reason.
        """
        metrics = m.Metrics(CollectorRegistry())
        metrics.call_finished(call(status=429, error_code="rate_limit_exceeded"))
        metrics.call_finished(call(status=413, error_code="request_too_large"))
        metrics.call_finished(call(status=401, auth_method="jwt", auth_failure="invalid"))
        s = scrape(metrics)
        self.assertEqual(s[("qwengate_refusals_total",
                            (("reason", "rate_limited"), ("stage", "request")))], 1)
        self.assertEqual(s[("qwengate_refusals_total",
                            (("reason", "body_too_large"), ("stage", "request")))], 1)
        self.assertEqual(s[("qwengate_auth_failures_total",
                            (("method", "jwt"), ("reason", "invalid")))], 1)

    def test_breaker_transitions(self):
        """
        The breaker's C{on_transition} counts state changes by upstream.
        """
        metrics = m.Metrics(CollectorRegistry())
        metrics.watch_upstreams(["ollama:11434"])
        clock = Clock()
        breaker = CircuitBreaker("ollama:11434", 1, 5.0, clock,
                                 on_transition=metrics.breaker_moved)
        breaker.failure()
        clock.advance(5)
        self.assertEqual(breaker.state, "half_open")
        s = scrape(metrics)
        self.assertEqual(s[("qwengate_upstream_breaker_transitions_total",
                            (("to", "open"), ("upstream", "ollama:11434")))], 1)
        self.assertEqual(s[("qwengate_upstream_breaker_transitions_total",
                            (("to", "half_open"), ("upstream", "ollama:11434")))], 1)


class FakeClient:
    def __init__(self, where: str, breaker: Any = None) -> None:
        self.where = where
        self.breaker = breaker


class FakeMember:
    def __init__(self, client: Any, healthy: bool, outstanding: int, running: tuple,
                 models: Any = None) -> None:
        self.client, self.healthy, self.outstanding = client, healthy, outstanding
        self.running, self.models = running, models


class FakeFilter:
    active = 3
    refused = {"address": 1, "banned": 2, "rate": 0, "per_ip": 0, "total": 4}
    dropped = {"http": 5, "websocket": 0, "not_tls": 1, "handshake": 7,
               "handshake_timeout": 2, "evicted": 6}
    answered = {"banned": 3, "over_cap": 1}


class FakeStore:
    state = "down"
    fallbacks = 12


class CollectorTests(SynchronousTestCase):
    """
    What is read at scrape time.
    """

    def test_state(self):
        """
        Peer filter refusals and drops, queue state, calls in flight,
        upstream health, breaker state and C{/api/ps} models.
        """
        metrics = m.Metrics(CollectorRegistry())
        clock = Clock()
        breaker = CircuitBreaker("b:11434", 1, 30.0, clock)
        breaker.failure()
        pool = type("Pool", (), {})()
        pool.members = [
            FakeMember(FakeClient("a:11434"), True, 2,
                       (("qwen3:32b", 21 * 2 ** 30, "2026-12-06T23:30:00.123456789+01:00"),),
                       frozenset(["qwen3:32b"])),
            FakeMember(FakeClient("b:11434", breaker), True, 0, ()),
        ]
        metrics.watch_upstreams(["a:11434", "b:11434"])
        queue = SlotQueue(4, 10, 60.0, clock)
        for owner in ("a", "b", "c", "d", "e"):
            queue.acquire(owner)
        gateway = type("G", (), {})()
        gateway.active = {1: call(stream=True, first_byte_at=100.1), 2: call()}
        sources = metrics.sources
        sources.gateway = gateway
        sources.peer_filter = FakeFilter()
        sources.queue = lambda: queue
        sources.upstream = lambda: pool
        sources.certificate = lambda: 1800000000.0
        sources.store = FakeStore
        s = scrape(metrics)
        self.assertEqual(s[("qwengate_requests_in_flight", ())], 2)
        self.assertEqual(s[("qwengate_streams_open", ())], 1)
        self.assertEqual(s[("qwengate_refusals_total",
                            (("reason", "over_total_cap"), ("stage", "connection")))], 4)
        self.assertEqual(s[("qwengate_refusals_total",
                            (("reason", "banned"), ("stage", "connection")))], 2)
        self.assertEqual(s[("qwengate_tls_handshake_failures_total", ())], 7)
        self.assertEqual(s[("qwengate_connections_dropped_total", (("kind", "http"),))], 5)
        self.assertEqual(s[("qwengate_connections_dropped_total", (("kind", "evicted"),))], 6)
        self.assertEqual(s[("qwengate_connections_dropped_total",
                            (("kind", "handshake_timeout"),))], 2)
        self.assertEqual(s[("qwengate_refusals_answered_total", (("reason", "banned"),))], 3)
        self.assertEqual(s[("qwengate_limits_store_state", (("state", "down"),))], 1)
        self.assertEqual(s[("qwengate_limits_store_state", (("state", "up"),))], 0)
        self.assertEqual(s[("qwengate_limits_store_fallbacks_total", ())], 12)
        self.assertEqual(s[("qwengate_queue_depth", ())], 1)
        self.assertEqual(s[("qwengate_queue_slots_in_use", ())], 4)
        self.assertEqual(s[("qwengate_upstream_up", (("upstream", "a:11434"),))], 1)
        self.assertEqual(s[("qwengate_upstream_up", (("upstream", "b:11434"),))], 0)
        self.assertEqual(s[("qwengate_upstream_breaker_state",
                            (("state", "open"), ("upstream", "b:11434")))], 1)
        self.assertEqual(s[("qwengate_upstream_requests_in_flight",
                            (("upstream", "a:11434"),))], 2)
        labels = (("model", "qwen3:32b"), ("upstream", "a:11434"))
        self.assertEqual(s[("qwengate_upstream_model_vram_bytes", labels)], 21 * 2 ** 30)
        self.assertEqual(s[("qwengate_upstream_model_expiry_timestamp_seconds", labels)],
                         1796596200.123456)
        self.assertEqual(s[("qwengate_tls_certificate_expiry_timestamp_seconds", ())],
                         1800000000.0)

    def test_certificate_expiry(self):
        """
        The expiry is read from the PEM file, and again when it changes.
        """
        from qwen_twist.gate import tls

        state = os.path.abspath(self.mktemp())
        cert, _, _ = tls.ensure_self_signed(state)
        expiry = m.CertificateExpiry(lambda: cert)
        from OpenSSL import crypto

        with open(cert, "rb") as f:
            loaded = crypto.load_certificate(crypto.FILETYPE_PEM, f.read())
        from calendar import timegm
        from time import strptime

        expected = timegm(strptime(loaded.get_notAfter().decode(), "%Y%m%d%H%M%SZ"))
        self.assertEqual(expiry(), expected)
        self.assertIsNone(m.CertificateExpiry(lambda: cert + ".missing")())


class ResourceTests(SynchronousTestCase):
    """
    L{MetricsResource}: the exposition and its optional bearer token.
    """

    def render(self, resource: Any, path: bytes = b"metrics", auth: Any = None) -> Any:
        request = DummyRequest([path])
        if auth is not None:
            request.requestHeaders.setRawHeaders(b"authorization", [auth])
        body = resource.render_GET(request)
        return request, body

    def test_exposition(self):
        """
        C{GET /metrics} answers the registry in the text format.
        """
        registry = CollectorRegistry()
        m.Metrics(registry)
        request, body = self.render(MetricsResource(registry))
        self.assertIn(b"qwengate_build_info", body)
        self.assertTrue(request.responseHeaders.getRawHeaders(b"content-type")[0]
                        .startswith(b"text/plain"))

    def test_token(self):
        """
        With a token file, a scrape without the token is a 401; with it,
        the metrics. An empty token file refuses everything.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("s3cret\n")
        resource = MetricsResource(CollectorRegistry(), token_reader(lambda: path))
        request, body = self.render(resource)
        self.assertEqual(request.responseCode, 401)
        request, body = self.render(resource, auth=b"Bearer wrong")
        self.assertEqual(request.responseCode, 401)
        request, body = self.render(resource, auth=b"Bearer s3cret")
        self.assertNotEqual(request.responseCode, 401)
        with open(path, "w") as f:
            f.write("")
        request, body = self.render(resource, auth=b"Bearer ")
        self.assertEqual(request.responseCode, 401)

    def test_other_paths(self):
        """
        Anything but C{/metrics} (or C{/}) is a 404.
        """
        request, body = self.render(MetricsResource(CollectorRegistry()), b"admin")
        self.assertEqual(request.responseCode, 404)


class BrokenSourceTests(SynchronousTestCase):
    """
    A source that fails at scrape time.
    """

    def test_500_and_logged(self):
        """
        The scrape answers 500 without a traceback and the failure is
        logged; the next scrape works again once the source does.
        """
        metrics = m.Metrics(CollectorRegistry())

        def broken():
            raise RuntimeError("boom")

        metrics.sources.queue = broken
        resource = MetricsResource(metrics.registry)
        request = DummyRequest([b"metrics"])
        body = resource.render_GET(request)
        self.assertEqual(request.responseCode, 500)
        self.assertNotIn(b"Traceback", body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        metrics.sources.queue = None
        request = DummyRequest([b"metrics"])
        self.assertIn(b"qwengate_requests_in_flight", resource.render_GET(request))


class UpstreamOutcomeTests(SynchronousTestCase):
    """
    L{m.upstream_outcome}.
    """

    def test_outcomes(self):
        """
        Each way an upstream call can end has its label.
        """
        cases = [
            (dict(), None),
            (dict(upstream_started=1.0, upstream_status=200), "ok"),
            (dict(upstream_started=1.0, upstream_status=200, outcome="truncated"), "truncated"),
            (dict(upstream_started=1.0, upstream_status=200, client_gone=True,
                  outcome="client_gone"), "cancelled"),
            (dict(upstream_started=1.0, upstream_status=404), "client_error"),
            (dict(upstream_started=1.0, upstream_status=500), "server_error"),
            (dict(upstream_started=1.0, error_code="upstream_timeout"), "timeout"),
            (dict(upstream_started=1.0, error_code="upstream_unavailable"), "unavailable"),
            (dict(upstream_started=1.0, client_gone=True), "cancelled"),
        ]
        for fields, expected in cases:
            self.assertEqual(m.upstream_outcome(call(**fields)), expected, fields)
