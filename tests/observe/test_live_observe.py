"""
Metrics and audit end to end: a scripted mix of calls over real TLS
sockets (success, stream, 401, 429, banned, upstream 500, timeout, client
gone), then a scrape of the metrics listener over a real socket, and the
audit file those calls wrote.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Tuple

from twisted.internet import endpoints, reactor
from twisted.trial.unittest import TestCase

import treq
import treq.client
from prometheus_client.parser import text_string_to_metric_families

from qwen_twist.gate.keyfile import add_key
from qwen_twist.observe.audit import FIELDS

from tests.support import async_test, settle, start_stack
from tests.test_live import wait_for

MODEL = "qwen3:8b"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}


def samples(text: str) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    """
    Every sample of a scrape by C{(name, sorted labels)}.
    """
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def series(stack: Any) -> set:
    return {(family.name, sample.name, tuple(sorted(sample.labels.items())))
            for family in stack.service.observe.metrics.registry.collect()
            for sample in family.samples}


def named(scrape: dict, name: str) -> Dict[Tuple[Tuple[str, str], ...], float]:
    return {labels: value for (n, labels), value in scrape.items() if n == name}


async def listen_metrics(testcase: TestCase, stack: Any) -> str:
    """
    The service's metrics site on an ephemeral loopback port (plain HTTP).
    """
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        stack.service.observe.site)
    testcase.addCleanup(port.stopListening)
    return "http://127.0.0.1:%d/metrics" % (port.getHost().port,)


async def observed_stack(testcase: TestCase, extra: Any = None) -> Tuple[Any, str, str, str]:
    directory = os.path.abspath(testcase.mktemp())
    os.makedirs(directory)
    keys = os.path.join(directory, "keys.yaml")
    key = add_key(keys, "alice", owner="team-a", now=time.time())
    audit = os.path.join(directory, "audit", "audit.log")
    config = {
        "auth": {"required": True, "keys_file": keys},
        "access": {"trusted_proxies": ["127.0.0.1/32"]},
        "bans": {"failures": 2},
        "rate_limits": {"per_ip_rate": 0.001, "per_ip_burst": 2, "per_key_requests": 0},
        "upstream": {"timeouts": {"headers": 2.0}, "breaker": {"threshold": 0}},
        "audit": {"file": audit, "compress": False, "user_header": "X-User-Id"},
    }
    stack = await start_stack(testcase, config)
    stack.service.observe.open_audit()
    testcase.addCleanup(lambda: stack.service.observe.audit.sink.close())
    url = await listen_metrics(testcase, stack)
    return stack, key, audit, url


class ScriptedMixTests(TestCase):
    """
    Exact counters, label sets and audit lines after a known mix of calls.
    """

    @async_test
    async def test_mix(self) -> None:
        """
        Each call of the mix is counted once under bounded labels, and
        written to the audit file as one JSON line with every field.
        """
        stack, key, audit, url = await observed_stack(self)
        n = [0]

        def headers(address: str = "", bearer: Any = key, **more: str) -> dict:
            # Every scenario from its own client address (the gateway
            # trusts the loopback proxy's X-Forwarded-For), so per-address
            # limits and bans do not interfere.
            n[0] += 1
            h = {"X-Forwarded-For": address or "192.0.2.%d" % (n[0],)}
            if bearer:
                h["Authorization"] = "Bearer " + bearer
            h.update(more)
            return h

        async def post(body: Any, **kw: Any) -> Any:
            response = await stack.post("/v1/chat/completions", json=body, headers=headers(**kw))
            await response.content()
            return response

        # 1. Success, with a client's X-Request-ID.
        ok = await post(CHAT, **{"X-Request-ID": "trace-0001", "X-User-Id": "end-user-7"})
        self.assertEqual(ok.code, 200)
        self.assertEqual(ok.headers.getRawHeaders("x-request-id"), ["trace-0001"])
        self.assertTrue(float(ok.headers.getRawHeaders("x-qwengate-overhead-ms")[0]) >= 0)
        self.assertEqual(stack.record.last("/api/chat").headers["x-request-id"], "trace-0001")
        # 2. A stream.
        stream = await post(dict(CHAT, stream=True, stream_options={"include_usage": True}))
        self.assertEqual(stream.code, 200)
        # 3. 401 without a key, then 401 with a wrong key (each pays its
        # per-IP token first: burst 2): the address is banned
        # (bans.failures = 2) and its next call is refused. Refused from the
        # request head, before the body (and its model) was read.
        self.assertEqual((await post(CHAT, address="198.51.100.9", bearer=None)).code, 401)
        wrong = "qg-" + "x" * 43
        self.assertEqual((await post(CHAT, address="198.51.100.9", bearer=wrong)).code, 401)
        banned = await post(CHAT, address="198.51.100.9")
        self.assertEqual(banned.code, 403)
        # 4. 429: a third call from one address (burst 2).
        self.assertEqual((await post(CHAT, address="198.51.100.10")).code, 200)
        self.assertEqual((await post(CHAT, address="198.51.100.10")).code, 200)
        self.assertEqual((await post(CHAT, address="198.51.100.10")).code, 429)
        # 5. Ollama answers 500.
        stack.script.push(http_status=500, error="boom")
        self.assertEqual((await post(CHAT)).code, 500)
        # 6. Ollama does not answer within upstream.timeouts.headers.
        stack.script.push(hang_before_headers=True)
        self.assertEqual((await post(CHAT)).code, 504)
        # 7. The client leaves before a slow answer.
        stack.script.push(ttft=30)
        d = stack.post("/v1/chat/completions", json=CHAT, headers=headers())
        await wait_for(lambda: len(stack.record.for_path("/api/chat")) == 7)
        d.cancel()
        d.addErrback(lambda f: None)
        await wait_for(lambda: not stack.service.gateway.active)
        # One health-check round: /api/ps says what is loaded, with its VRAM.
        await stack.service.upstream.check_health()

        response = await treq.get(url, persistent=False)
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith(
            "text/plain"))
        scrape = samples((await response.content()).decode("utf-8"))

        route = ("route", "chat_completions")
        post_ = ("method", "POST")
        self.assertEqual(named(scrape, "qwengate_requests_total"), {
            (("code", "200"), post_, ("model", MODEL), route): 4.0,
            (("code", "401"), post_, ("model", "none"), route): 2.0,
            (("code", "403"), post_, ("model", "none"), route): 1.0,
            (("code", "429"), post_, ("model", "none"), route): 1.0,
            (("code", "500"), post_, ("model", MODEL), route): 1.0,
            (("code", "504"), post_, ("model", MODEL), route): 1.0,
            (("code", "499"), post_, ("model", MODEL), route): 1.0,
        })
        self.assertEqual(named(scrape, "qwengate_auth_failures_total"), {
            (("method", "none"), ("reason", "missing")): 1.0,
            (("method", "api_key"), ("reason", "invalid")): 1.0,
        })
        refusals = named(scrape, "qwengate_refusals_total")
        self.assertEqual(refusals[(("reason", "banned"), ("stage", "request"))], 1.0)
        self.assertEqual(refusals[(("reason", "rate_limited"), ("stage", "request"))], 1.0)
        self.assertEqual(sum(v for labels, v in refusals.items()
                             if ("stage", "request") in labels), 2.0)
        self.assertEqual(sum(v for labels, v in refusals.items()
                             if ("stage", "connection") in labels), 0.0)
        upstream = stack.service.upstream.where
        self.assertEqual(named(scrape, "qwengate_upstream_requests_total"), {
            (("outcome", "ok"), ("upstream", upstream)): 4.0,
            (("outcome", "server_error"), ("upstream", upstream)): 1.0,
            (("outcome", "timeout"), ("upstream", upstream)): 1.0,
            (("outcome", "cancelled"), ("upstream", upstream)): 1.0,
        })
        tokens = named(scrape, "qwengate_completion_tokens_total")
        self.assertEqual(list(tokens), [(("key", "alice"), ("model", MODEL))])
        self.assertGreater(tokens[(("key", "alice"), ("model", MODEL))], 0)
        self.assertEqual(
            named(scrape, "qwengate_time_to_first_token_seconds_count"),
            {(("model", MODEL), route): 1.0})
        self.assertEqual(
            named(scrape, "qwengate_request_duration_seconds_count"), {(route,): 11.0})
        self.assertEqual(
            named(scrape, "qwengate_gateway_overhead_seconds_count"), {(route,): 11.0})
        self.assertEqual(named(scrape, "qwengate_requests_in_flight"), {(): 0.0})
        self.assertEqual(named(scrape, "qwengate_streams_open"), {(): 0.0})
        self.assertEqual(named(scrape, "qwengate_upstream_up"), {(("upstream", upstream),): 1.0})
        self.assertEqual(
            named(scrape, "qwengate_ollama_eval_duration_seconds_count"),
            {(("model", MODEL),): 4.0})
        vram = named(scrape, "qwengate_upstream_model_vram_bytes")
        self.assertEqual(list(vram), [(("model", MODEL), ("upstream", upstream))])
        self.assertGreater(vram[(("model", MODEL), ("upstream", upstream))], 0)
        self.assertGreater(named(scrape, "qwengate_upstream_model_expiry_timestamp_seconds")[
            (("model", MODEL), ("upstream", upstream))], time.time())
        expiry = named(scrape, "qwengate_tls_certificate_expiry_timestamp_seconds")[()]
        self.assertGreater(expiry, time.time())
        build = named(scrape, "qwengate_build_info")
        self.assertEqual(list(build.values()), [1.0])
        # Nothing client-chosen became a label.
        text = repr(scrape)
        for secret in (key, wrong, "198.51.100", "192.0.2", "trace-0001"):
            self.assertNotIn(secret, text)

        # The audit file: one line per call, every field, what was received.
        stack.service.observe.audit.sink.flush()
        with open(audit, "rb") as f:
            lines = [json.loads(line) for line in f]
        self.assertEqual(len(lines), 11)
        for line in lines:
            self.assertEqual(list(line), list(FIELDS))
        first = lines[0]
        self.assertEqual(first["request_id"], "trace-0001")
        self.assertEqual(first["identity"], "key:alice")
        self.assertEqual(first["key_owner"], "team-a")
        self.assertEqual(first["client_ip"], "192.0.2.1")
        self.assertEqual((first["status"], first["outcome"], first["model"]),
                         (200, "complete", MODEL))
        self.assertGreater(first["completion_tokens"], 0)
        self.assertGreater(first["bytes_out"], 0)
        self.assertEqual(first["upstream"], upstream)
        self.assertEqual(first["prompt_chars"], 2)
        # From the trusted proxy (loopback) the user header is believed.
        self.assertEqual(first["user"], "end-user-7")
        self.assertTrue(lines[1]["stream"])
        self.assertIsNotNone(lines[1]["ttft_ms"])
        self.assertEqual([line["status"] for line in lines],
                         [200, 200, 401, 401, 403, 200, 200, 429, 500, 504, 499])
        gone = lines[-1]
        self.assertEqual((gone["status"], gone["outcome"]), (499, "client_gone"))
        self.assertEqual(lines[4]["error_code"], "address_banned")
        raw = open(audit, encoding="ascii").read()
        self.assertNotIn(key, raw)
        self.assertNotIn(wrong, raw)
        self.assertNotIn("Hi", raw.replace('"chat_completions"', ""))
        await settle()

    @async_test
    async def test_refused_in_validation_keeps_model(self) -> None:
        """
        A call refused while its body is validated is recorded with the
        model the body named, and counted under C{other} (the model never
        got a 200 from Ollama).
        """
        stack, key, audit, url = await observed_stack(self)
        response = await stack.post(
            "/v1/chat/completions",
            json={"model": "some-model", "messages": "not a list", "user": "u-42"},
            headers={"Authorization": "Bearer " + key})
        await response.content()
        self.assertEqual(response.code, 400)
        stack.service.observe.audit.sink.flush()
        with open(audit, "rb") as f:
            [line] = [json.loads(line) for line in f]
        self.assertEqual((line["model"], line["status"], line["user"]), ("some-model", 400, "u-42"))
        scrape = samples((await (await treq.get(url, persistent=False)).content()).decode("utf-8"))
        self.assertEqual(list(named(scrape, "qwengate_requests_total")), [
            (("code", "400"), ("method", "POST"), ("model", "other"),
             ("route", "chat_completions"))])

    @async_test
    async def test_random_names_keep_series_count(self) -> None:
        """
        Calls with random model names, URLs and keys add no series once
        each kind of outcome has been seen.
        """
        import random

        stack, key, audit, url = await observed_stack(self)
        rng = random.Random(7)

        async def burst(start: int, count: int) -> None:
            # Each call from an address of its own (no 429s, no bans).
            for i in range(start, start + count):
                word = "".join(rng.choice("abcdefghij") for _ in range(12))
                kind = i % 3
                if kind == 0:
                    response = await stack.post(
                        "/v1/chat/completions",
                        json={"model": word, "messages": [{"role": "user", "content": "x"}]},
                        headers={"Authorization": "Bearer " + key,
                                 "X-Forwarded-For": "10.%d.%d.1" % (i // 250, i % 250)})
                elif kind == 1:
                    response = await stack.get("/v1/" + word,
                                               headers={"Authorization": "Bearer " + key})
                else:
                    response = await stack.get("/v1/models/" + word, headers={
                        "Authorization": "Bearer qg-" + word,
                        "X-Forwarded-For": "10.%d.%d.1" % (i // 250, i % 250)})
                await response.content()

        await burst(0, 30)
        before = series(stack)
        await burst(30, 150)
        self.assertEqual(series(stack), before)


class MetricsTlsTests(TestCase):
    """
    C{metrics.tls}: the metrics listener speaks TLS with the API's
    certificate, and a bearer token guards it.
    """

    @async_test
    async def test_https_scrape_with_token(self) -> None:
        """
        Over TLS, a scrape without the token is a 401 and one with it
        gets the metrics.
        """
        from twisted.web import client as wclient

        from tests.support import _client_options

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        token = os.path.join(directory, "metrics.token")
        with open(token, "w") as f:
            f.write("scrape-secret\n")
        stack = await start_stack(self, {"metrics": {"tls": True, "bearer_token_file": token}})
        port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            stack.service.observe.factory)
        self.addCleanup(port.stopListening)
        url = "https://127.0.0.1:%d/metrics" % (port.getHost().port,)
        pool = wclient.HTTPConnectionPool(reactor, persistent=False)
        http = treq.client.HTTPClient(wclient.Agent(
            reactor, contextFactory=_client_options(stack.cafile), pool=pool))
        refused = await http.get(url)
        await refused.content()
        self.assertEqual(refused.code, 401)
        response = await http.get(url, headers={"Authorization": "Bearer scrape-secret"})
        self.assertEqual(response.code, 200)
        self.assertIn(b"qwengate_build_info", await response.content())
        await settle()
