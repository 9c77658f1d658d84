# -*- test-case-name: tests.observe.test_metrics -*-
"""
The gateway's Prometheus metrics, in a registry of its own.

Two kinds of numbers, two mechanisms:

  - What happens per call (requests, latencies, tokens, refusals, auth
    failures) is counted by L{Metrics.call_finished}, a pipeline observer
    reading the call's L{CallContext}, into the reactor-thread accumulators
    of L{qwen_twist.observe.accumulate} (no lock, one C{bisect} per
    observation: a call costs a few microseconds, C{python -m bench.observe}).
  - What the gateway's parts already count or hold (the peer filter's
    refusals and drops, the queue's depth and statistics, calls in flight,
    upstream health, breakers, C{/api/ps}, the certificate's expiry) is read
    at scrape time by L{_StateCollector}: it costs nothing per request and
    can never drift from the source.

Cardinality is bounded by construction (style.md section 7): a label value
comes only from a set fixed in the code (routes, methods, status codes,
reasons), from the configuration (upstreams), from the keys file (key ids:
an identity C{key:ID} exists only for a key that authenticated) or from
Ollama (model names that Ollama answered 200 for, or listed in C{/api/tags}
or C{/api/ps}, at most L{MAX_MODELS}). Anything else is C{other}; a client
IP, a path, a key or a client-supplied model string never becomes a label.
"""

from __future__ import annotations

import os
import platform
from typing import Any, Callable, Dict, Iterable, Optional, Set, Tuple

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from qwen_twist import __version__, errors
from qwen_twist.context import CallContext
from qwen_twist.observe.accumulate import CounterVec, HistogramVec

#: Distinct model label values at most (the rest are C{other}).
MAX_MODELS = 200
#: Client-supplied model strings whose label is remembered.
MODEL_LABEL_CACHE = 1024
#: Distinct upstream label values at most.
MAX_UPSTREAMS = 64

OTHER = "other"

# Buckets sized for LLM calls: a first token may take minutes (model load).
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
                    300.0, 600.0)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
GAP_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 1.0)
QUEUE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
OLLAMA_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TPS_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0, 500.0)

METHODS = frozenset(["GET", "POST", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"])
#: The status codes qwengate sends (and 499: the client left first).
CODES = frozenset(
    str(code) for code in (200, 204, 400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 429,
                           431, 499, 500, 501, 502, 503, 504)
)

#: Request-level refusals: error code -> reason label.
REQUEST_REFUSALS = {
    errors.RATE_LIMIT_EXCEEDED: "rate_limited",
    "address_banned": "banned",
    "address_not_allowed": "address_not_allowed",
    errors.REQUEST_TOO_LARGE: "body_too_large",
    "prompt_too_long": "prompt_too_large",
    errors.QUEUE_FULL: "queue_full",
    errors.QUEUE_TIMEOUT: "queue_timeout",
    "model_not_allowed": "model_not_allowed",
}
#: Connection-level refusals (the peer filter's reasons) -> reason label.
CONNECTION_REFUSALS = {
    "address": "address_not_allowed",
    "banned": "banned",
    "rate": "connection_rate",
    "per_ip": "over_per_ip_cap",
    "total": "over_total_cap",
}
AUTH_METHODS = frozenset(["api_key", "jwt", "certificate"])
AUTH_FAILURES = frozenset(["missing", "invalid", "model_not_allowed", "scope_required"])
BREAKER_STATES = ("closed", "open", "half_open")

#: Error codes that mean "Ollama did not answer in time" / "could not be
#: reached" (for the upstream outcome label).
_TIMEOUT_CODES = frozenset([errors.UPSTREAM_TIMEOUT])
_UNAVAILABLE_CODES = frozenset([errors.UPSTREAM_UNAVAILABLE])


def model_key(name: str) -> str:
    """
    The name a model is counted under: lower case with the implicit
    C{:latest} tag (as the upstream pool matches models).
    """
    name = name.lower()
    if ":" not in name[name.rfind("/") + 1:]:
        name += ":latest"
    return name


def key_label(identity: Optional[str]) -> str:
    """
    The key label of a caller: the key id (from the keys file), C{jwt},
    C{certificate} or C{anonymous}.
    """
    if identity is None:
        return "anonymous"
    kind, _, name = identity.partition(":")
    if kind == "key" and name:
        return name
    if kind == "jwt":
        return "jwt"
    if kind == "cert":
        return "certificate"
    return OTHER


def upstream_outcome(ctx: CallContext) -> Optional[str]:
    """
    How the upstream part of a call went: C{ok}, C{client_error},
    C{server_error}, C{timeout}, C{unavailable}, C{cancelled} (the client
    left first), C{truncated} (a stream that broke after Ollama's 200: a
    deadline, a cut connection, an error line); L{None} when no upstream
    request was made.
    """
    if ctx.upstream_started is None:
        return None
    status = ctx.upstream_status
    if status is not None:
        if status < 400:
            if ctx.client_gone:
                return "cancelled"
            if ctx.outcome == "truncated":
                return "truncated"
            return "ok"
        return "client_error" if status < 500 else "server_error"
    code = ctx.error_code
    if code in _TIMEOUT_CODES:
        return "timeout"
    if code in _UNAVAILABLE_CODES:
        return "unavailable"
    if ctx.client_gone:
        return "cancelled"
    return "unavailable"


class Metrics:
    """
    The registry and every metric; a call observer (L{call_finished}), a
    breaker listener (L{breaker_moved}) and a stream gap sink
    (L{chunk_gap}).

    @ivar registry: the L{CollectorRegistry} served by the metrics listener
        (never the process-global one).
    """

    uses = ("metrics",)

    def __init__(self, registry: Optional[CollectorRegistry] = None,
                 config: Any = None) -> None:
        self.config = config
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self._models: Set[str] = set()
        self._upstreams: Set[str] = set()
        #: Request-level refusals by reason; connection-level ones are read
        #: from the peer filter at scrape time.
        self.request_refusals: Dict[str, int] = dict.fromkeys(
            sorted(set(REQUEST_REFUSALS.values())), 0
        )
        self.sources = _Sources()

        C, H = CounterVec, HistogramVec
        self.requests = C("qwengate_requests",
                          "API calls by route, method, status code and model",
                          ("route", "method", "code", "model"))
        self.duration = H("qwengate_request_duration_seconds",
                          "time from arrival to the end of the response", ("route",),
                          DURATION_BUCKETS)
        self.ttft = H("qwengate_time_to_first_token_seconds",
                      "streams: time from arrival to the first event sent", ("route", "model"),
                      TTFT_BUCKETS)
        self.gap = H("qwengate_inter_token_gap_seconds",
                     "streams: time between consecutive reads from Ollama", (), GAP_BUCKETS)
        self.overhead = H("qwengate_gateway_overhead_seconds",
                          "time spent in the gateway itself (excluding Ollama and the queue)",
                          ("route",), OVERHEAD_BUCKETS)
        self.prompt_tokens = C("qwengate_prompt_tokens", "prompt tokens counted by Ollama",
                               ("model", "key"))
        self.completion_tokens = C("qwengate_completion_tokens",
                                   "completion tokens counted by Ollama", ("model", "key"))
        self.queue_wait = H("qwengate_queue_wait_seconds", "time a call waited for a GPU slot",
                            (), QUEUE_BUCKETS)
        self.upstream_requests = C("qwengate_upstream_requests",
                                   "upstream calls by upstream and outcome",
                                   ("upstream", "outcome"))
        self.breaker_transitions = C("qwengate_upstream_breaker_transitions",
                                     "circuit breaker state changes", ("upstream", "to"))
        self.auth_failures = C("qwengate_auth_failures",
                               "authentication failures by method and reason",
                               ("method", "reason"))
        self.backpressure = C("qwengate_backpressure_pauses",
                              "times a slow client paused an upstream stream")
        self.ollama_load = H("qwengate_ollama_load_duration_seconds",
                             "Ollama's model load time per call", ("model",), OLLAMA_BUCKETS)
        self.ollama_prompt_eval = H("qwengate_ollama_prompt_eval_duration_seconds",
                                    "Ollama's prompt evaluation time", ("model",),
                                    OLLAMA_BUCKETS)
        self.ollama_eval = H("qwengate_ollama_eval_duration_seconds",
                             "Ollama's generation (decode) time", ("model",), OLLAMA_BUCKETS)
        self.ollama_tps = H("qwengate_ollama_decode_tokens_per_second",
                            "Ollama's decode speed per call", ("model",), TPS_BUCKETS)
        self.families = [
            self.requests, self.duration, self.ttft, self.gap, self.overhead,
            self.prompt_tokens, self.completion_tokens, self.queue_wait,
            self.upstream_requests, self.breaker_transitions, self.auth_failures,
            self.backpressure, self.ollama_load, self.ollama_prompt_eval, self.ollama_eval,
            self.ollama_tps,
        ]
        reg.register(_StateCollector(self))
        self._model_labels: Dict[Optional[str], str] = {}

    # Configuration ---------------------------------------------------------

    def reconfigure(self, config: Any) -> None:
        """
        Take a new configuration (nothing derived: the listener reads its
        token at each scrape).
        """
        self.config = config

    def watch_upstreams(self, names: Iterable[str]) -> None:
        """
        The configured upstreams' C{host:port}s: the upstream label set.
        """
        for name in names:
            if len(self._upstreams) < MAX_UPSTREAMS:
                self._upstreams.add(name)

    def learn_models(self, names: Iterable[str]) -> None:
        """
        Model names from Ollama (C{/api/tags}, C{/api/ps}, a 200 answer):
        the model label set, up to L{MAX_MODELS}.
        """
        for name in names:
            if len(self._models) >= MAX_MODELS:
                return
            self._learn(name)

    # Labels ------------------------------------------------------------------

    def model_label(self, model: Optional[str]) -> str:
        cache = self._model_labels
        label = cache.get(model)
        if label is None:
            if not model:
                label = "none"
            else:
                name = model_key(model)
                label = name if name in self._models else OTHER
            if len(cache) < MODEL_LABEL_CACHE:
                # Cleared whenever the model set grows (L{_learn}).
                cache[model] = label
        return label

    def _learn(self, model: str) -> None:
        if len(self._models) < MAX_MODELS:
            name = model_key(model)
            if name not in self._models:
                self._models.add(name)
                self._model_labels.clear()

    def upstream_label(self, name: Optional[str]) -> str:
        if name is None:
            if len(self._upstreams) == 1:
                return next(iter(self._upstreams))
            return "unknown"
        return name if name in self._upstreams else OTHER

    # Observers ---------------------------------------------------------------

    def call_finished(self, ctx: CallContext) -> None:
        """
        Count one finished call (a L{qwen_twist.pipeline.Gateway} observer).
        """
        route = ctx.route
        model = self.model_label(ctx.model)
        if model == OTHER and ctx.upstream_status == 200:
            # Ollama answered 200: the model is in its list.
            self._learn(ctx.model)
            model = self.model_label(ctx.model)
        method = ctx.method if ctx.method in METHODS else OTHER
        status = str(ctx.status)
        code = status if status in CODES else OTHER
        self.requests.inc((route, method, code, model))
        finished = ctx.finished_at
        route_labels = (route,)
        if finished is not None:
            self.duration.observe(route_labels, finished - ctx.started)
            self.overhead.observe(route_labels, ctx.overhead(finished))
        if ctx.stream and ctx.first_byte_at is not None:
            self.ttft.observe((route, model), ctx.first_byte_at - ctx.started)
        if ctx.queue_wait_ms is not None:
            self.queue_wait.observe((), ctx.queue_wait_ms / 1000.0)
        usage = ctx.usage
        if usage:
            key = (model, key_label(ctx.identity))
            prompt = usage.get("prompt_tokens")
            if prompt:
                self.prompt_tokens.inc(key, prompt)
            completion = usage.get("completion_tokens")
            if completion:
                self.completion_tokens.inc(key, completion)
        outcome = upstream_outcome(ctx)
        if outcome is not None:
            self.upstream_requests.inc((self.upstream_label(ctx.upstream), outcome))
        if ctx.error_code is not None:
            reason = REQUEST_REFUSALS.get(ctx.error_code)
            if reason is not None:
                self.request_refusals[reason] += 1
        if ctx.auth_failure is not None:
            method_label = ctx.auth_method if ctx.auth_method in AUTH_METHODS else "none"
            reason = ctx.auth_failure if ctx.auth_failure in AUTH_FAILURES else OTHER
            self.auth_failures.inc((method_label, reason))
        if ctx.backpressure_pauses:
            self.backpressure.inc((), ctx.backpressure_pauses)
        timings = ctx.ollama_timings
        if timings:
            self._ollama((model,), timings)

    def _ollama(self, model: Tuple[str], timings: Dict[str, int]) -> None:
        load = timings.get("load_duration")
        if load is not None:
            self.ollama_load.observe(model, load / 1e9)
        prompt = timings.get("prompt_eval_duration")
        if prompt is not None:
            self.ollama_prompt_eval.observe(model, prompt / 1e9)
        decode = timings.get("eval_duration")
        if decode is not None:
            self.ollama_eval.observe(model, decode / 1e9)
            count = timings.get("eval_count")
            if count and decode > 0:
                self.ollama_tps.observe(model, count * 1e9 / decode)

    def chunk_gap(self, seconds: float) -> None:
        """
        One gap between upstream reads of a stream.
        """
        self.gap.observe((), seconds)

    def breaker_moved(self, name: str, old: str, new: str) -> None:
        """
        A circuit breaker changed state (its C{on_transition} listener).
        """
        to = new if new in BREAKER_STATES else OTHER
        self.breaker_transitions.inc((self.upstream_label(name), to))

    def series(self) -> int:
        """
        How many samples a scrape would return (the cardinality test).
        """
        return sum(len(family.samples) for family in self.registry.collect())


class _Sources:
    """
    What the scrape-time collector reads; each is optional (set by the
    service wiring, replaced on reload).

    @ivar gateway: the L{qwen_twist.pipeline.Gateway} (calls in flight).
    @ivar peer_filter: the L{qwen_twist.gate.peerfilter.PeerFilterFactory}.
    @ivar queue: a callable returning the current
        L{qwen_twist.gate.queue.SlotQueue} or L{None}.
    @ivar upstream: a callable returning the current upstream (an
        C{OllamaClient} or an C{UpstreamPool}).
    @ivar certificate: a callable returning the server certificate's
        C{notAfter} as a Unix time, or L{None}.
    @ivar audit: the L{qwen_twist.observe.audit.AuditLog}, if any.
    @ivar store: a callable returning the limits store
        (L{qwen_twist.store.interface.ILimitStore}), or L{None}.
    """

    gateway: Any = None
    peer_filter: Any = None
    queue: Optional[Callable[[], Any]] = None
    upstream: Optional[Callable[[], Any]] = None
    certificate: Optional[Callable[[], Optional[float]]] = None
    audit: Any = None
    store: Optional[Callable[[], Any]] = None


#: The limits store's states, as the C{state} label of its gauge.
STORE_STATES = ("memory", "connecting", "up", "down")


def _gauge(name: str, doc: str, labels: Tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


class _StateCollector:
    """
    Reads the gateway's parts at scrape time (see the module docstring).
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Any]:
        metrics = self.metrics
        sources = metrics.sources
        build = _gauge("qwengate_build_info", "qwengate build and runtime versions (always 1)",
                       ("version", "twisted", "python"))
        build.add_metric([__version__, _twisted_version(), platform.python_version()], 1)
        yield build
        for family in metrics.families:
            yield family.collect()
        yield from self._calls(sources.gateway)
        yield from self._refusals(sources.peer_filter)
        yield from self._queue(sources.queue() if sources.queue is not None else None)
        yield from self._upstreams(sources.upstream() if sources.upstream is not None else None)
        yield from self._store(sources.store() if sources.store is not None else None)
        expiry = _gauge("qwengate_tls_certificate_expiry_timestamp_seconds",
                        "notAfter of the server certificate in force (Unix time)")
        when = sources.certificate() if sources.certificate is not None else None
        if when is not None:
            expiry.add_metric([], when)
        yield expiry
        audit = sources.audit
        dropped = CounterMetricFamily("qwengate_audit_lines_dropped",
                                      "audit lines lost (disk full, write errors)")
        dropped.add_metric([], getattr(audit, "dropped", 0))
        yield dropped

    def _store(self, store: Any) -> Iterable[Any]:
        """
        The limits store's state (one series per state, 1 for the current
        one) and the decisions made locally because it could not be asked:
        an operator alerts on a shared store that is down, since limits
        then hold per gateway only.
        """
        state = _gauge("qwengate_limits_store_state",
                       "state of the limits store (1 for the current state)", ("state",))
        fallbacks = CounterMetricFamily(
            "qwengate_limits_store_fallbacks",
            "limit decisions made locally because the shared store could not be asked")
        current = getattr(store, "state", None)
        for name in STORE_STATES:
            state.add_metric([name], 1 if current == name else 0)
        fallbacks.add_metric([], getattr(store, "fallbacks", 0))
        yield state
        yield fallbacks

    def _calls(self, gateway: Any) -> Iterable[Any]:
        in_flight = _gauge("qwengate_requests_in_flight", "API calls being served")
        streams = _gauge("qwengate_streams_open", "event streams sending to clients")
        active = list(gateway.active.values()) if gateway is not None else []
        in_flight.add_metric([], len(active))
        streams.add_metric([], sum(1 for ctx in active
                                   if ctx.stream and ctx.first_byte_at is not None))
        yield in_flight
        yield streams

    def _refusals(self, peer_filter: Any) -> Iterable[Any]:
        metrics = self.metrics
        refusals = CounterMetricFamily("qwengate_refusals", "calls and connections refused",
                                       labels=("stage", "reason"))
        for reason, count in sorted(metrics.request_refusals.items()):
            refusals.add_metric(["request", reason], count)
        handshakes = CounterMetricFamily("qwengate_tls_handshake_failures",
                                         "connections that started TLS but did not finish "
                                         "the handshake")
        dropped = CounterMetricFamily("qwengate_connections_dropped",
                                      "connections that did not speak TLS", labels=("kind",))
        if peer_filter is not None:
            for reason, count in sorted(peer_filter.refused.items()):
                refusals.add_metric(["connection", CONNECTION_REFUSALS.get(reason, OTHER)],
                                    count)
            for kind, count in sorted(peer_filter.dropped.items()):
                if kind == "handshake":
                    handshakes.add_metric([], count)
                else:
                    dropped.add_metric([kind], count)
            answered = CounterMetricFamily(
                "qwengate_refusals_answered",
                "refused connections answered over TLS with 403/429 (within the answer budget)",
                labels=("reason",))
            for reason, count in sorted(getattr(peer_filter, "answered", {}).items()):
                answered.add_metric([reason], count)
            yield answered
            connections = _gauge("qwengate_connections_open", "client connections open")
            connections.add_metric([], peer_filter.active)
            yield connections
        yield refusals
        yield handshakes
        yield dropped

    def _queue(self, queue: Any) -> Iterable[Any]:
        if queue is None:
            return
        depth = _gauge("qwengate_queue_depth", "calls waiting for a GPU slot")
        depth.add_metric([], queue.waiting)
        busy = _gauge("qwengate_queue_slots_in_use", "GPU slots granted now")
        busy.add_metric([], queue.busy)
        slots = _gauge("qwengate_queue_slots", "GPU slots in all")
        slots.add_metric([], queue.slots)
        limit = _gauge("qwengate_queue_max_depth", "calls allowed to wait at most")
        limit.add_metric([], queue.max_depth)
        rejected = CounterMetricFamily("qwengate_queue_rejected",
                                       "calls the queue refused", labels=("reason",))
        stats = queue.stats
        rejected.add_metric(["full"], stats.rejected_full)
        rejected.add_metric(["timeout"], stats.rejected_timeout)
        yield from (depth, busy, slots, limit, rejected)

    def _upstreams(self, upstream: Any) -> Iterable[Any]:
        if upstream is None:
            return
        metrics = self.metrics
        up = _gauge("qwengate_upstream_up", "1 when the upstream is usable", ("upstream",))
        state = _gauge("qwengate_upstream_breaker_state",
                       "1 for the circuit breaker's current state", ("upstream", "state"))
        in_flight = _gauge("qwengate_upstream_requests_in_flight",
                           "requests outstanding at the upstream (slots in use)",
                           ("upstream",))
        loaded = _gauge("qwengate_upstream_model_loaded",
                        "models loaded (from /api/ps)", ("upstream", "model"))
        vram = _gauge("qwengate_upstream_model_vram_bytes",
                      "GPU memory used by a loaded model (from /api/ps)", ("upstream", "model"))
        expiry = _gauge("qwengate_upstream_model_expiry_timestamp_seconds",
                        "when Ollama unloads the model unless used (from /api/ps)",
                        ("upstream", "model"))
        members = getattr(upstream, "members", None)
        if members is None:
            clients = [(upstream, True, None, ())]
        else:
            clients = [(m.client, m.healthy, m.outstanding, m.running) for m in members]
            for m in members:
                if m.models:
                    metrics.learn_models(m.models)
        for client, healthy, outstanding, running in clients:
            name = metrics.upstream_label(client.where)
            breaker = getattr(client, "breaker", None)
            current = breaker.state if breaker is not None else "closed"
            up.add_metric([name], 1 if healthy and current != "open" else 0)
            for s in BREAKER_STATES:
                state.add_metric([name, s], 1 if s == current else 0)
            if outstanding is not None:
                in_flight.add_metric([name], outstanding)
            if running:
                metrics.learn_models(entry[0] for entry in running)
            for model, size, expires in running:
                label = metrics.model_label(model)
                loaded.add_metric([name, label], 1)
                vram.add_metric([name, label], size)
                when = _timestamp(expires)
                if when is not None:
                    expiry.add_metric([name, label], when)
        yield from (up, state, in_flight, loaded, vram, expiry)


def _timestamp(text: Optional[str]) -> Optional[float]:
    """
    Ollama's C{expires_at} (RFC 3339 with nanoseconds and an offset) as a
    Unix time, or L{None}.
    """
    if not text:
        return None
    from datetime import datetime

    head, dot, rest = text.partition(".")
    if dot:
        # Keep microseconds: Python parses at most six fraction digits.
        digits = ""
        for i, ch in enumerate(rest):
            if not ch.isdigit():
                break
            digits += ch
        else:
            i = len(rest)
        text = head + "." + (digits[:6] or "0") + rest[i:]
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def certificate_expiry(path: str) -> Optional[float]:
    """
    The C{notAfter} of the PEM certificate at C{path} as a Unix time, or
    L{None} when it cannot be read.
    """
    from calendar import timegm
    from time import strptime

    from OpenSSL import crypto

    try:
        with open(path, "rb") as f:
            cert = crypto.load_certificate(crypto.FILETYPE_PEM, f.read())
        when = cert.get_notAfter()
    except (OSError, crypto.Error, ValueError):
        return None
    if when is None:
        return None
    return float(timegm(strptime(when.decode("ascii"), "%Y%m%d%H%M%SZ")))


class CertificateExpiry:
    """
    The server certificate's expiry, re-read only when the file changes.
    """

    def __init__(self, path: Callable[[], Optional[str]]) -> None:
        self._path = path
        self._seen: Tuple[Any, ...] = ()
        self._value: Optional[float] = None

    def __call__(self) -> Optional[float]:
        path = self._path()
        if path is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        seen = (path, st.st_mtime_ns, st.st_size)
        if seen != self._seen:
            self._seen = seen
            self._value = certificate_expiry(path)
        return self._value


def _twisted_version() -> str:
    import twisted

    return twisted.__version__
