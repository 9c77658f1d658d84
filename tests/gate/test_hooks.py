"""
Tests for L{qwen_twist.gate.hooks}: identity, address, prompt and rate-limit
hooks in the request pipeline, driven over the in-memory harness with a
C{Clock}.
"""

from __future__ import annotations

import os
import time

from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.gate.keyfile import add_key

from tests.web.helpers import GatewayHarness

CHAT = {"model": "qwen3:8b", "messages": [{"role": "user", "content": "Hi"}]}
NATIVE_OK = {
    "model": "qwen3:8b", "created_at": "2025-07-07T20:22:19Z",
    "message": {"role": "assistant", "content": "Hello!"}, "done": True,
    "done_reason": "stop", "prompt_eval_count": 10, "eval_count": 5,
}


class GateTestsMixin:
    """
    A harness with a keys file holding one key, C{alice}.
    """

    def make(self, **sections) -> GatewayHarness:
        directory = self.mktemp()
        os.makedirs(directory)
        self.keys_file = os.path.join(directory, "keys.yaml")
        self.key = add_key(self.keys_file, "alice", now=time.time())
        config = {
            "auth": {"required": True, "keys_file": self.keys_file},
            "rate_limits": {"per_ip_rate": 0},
        }
        for name, values in sections.items():
            merged = dict(config.get(name, {}))
            merged.update(values)
            config[name] = merged
        self.harness = GatewayHarness(config)
        return self.harness

    def chat(self, headers=None, body=CHAT, answer=True):
        _, transport = self.harness.request("POST", "/v1/chat/completions", body, headers)
        calls = self.harness.upstream.calls
        if answer and calls and not calls[-1].deferred.called:
            calls[-1].respond(200, NATIVE_OK)
        return self.harness.response(transport)

    def bearer(self, key=None):
        return {"Authorization": "Bearer %s" % (key or self.key,)}


class IdentityTests(GateTestsMixin, SynchronousTestCase):
    """
    API keys: who may call, and what a refusal looks like.
    """

    def test_no_key(self) -> None:
        """
        Without a key: 401 C{invalid api key}, and Ollama is never called.
        """
        self.make()
        response = self.chat()
        self.assertEqual(response.status, 401)
        error = response.json()["error"]
        self.assertEqual((error["message"], error["code"]), ("invalid api key", "invalid_api_key"))
        self.assertEqual(self.harness.upstream.calls, [])

    def test_bearer_and_x_api_key(self) -> None:
        """
        The key works as C{Authorization: Bearer} (the SDKs) and as
        C{X-Api-Key}; the call is recorded under the key's id, not the key.
        """
        self.make()
        self.assertEqual(self.chat(self.bearer()).status, 200)
        self.assertEqual(self.chat({"X-Api-Key": self.key}).status, 200)
        self.assertEqual([c.identity for c in self.harness.finished], ["key:alice"] * 2)
        self.assertNotIn(self.key, repr(self.harness.finished))

    def test_wrong_key(self) -> None:
        """
        A wrong key is the same 401 as none.
        """
        self.make()
        response = self.chat(self.bearer("qg-" + "x" * 43))
        self.assertEqual(response.status, 401)
        self.assertNotIn(b"qg-xxx", response.body)

    def test_models_endpoint_needs_key(self) -> None:
        """
        The model list is behind the gate too; health is not.
        """
        self.make()
        _, transport = self.harness.request("GET", "/v1/models")
        self.assertEqual(self.harness.response(transport).status, 401)
        _, transport = self.harness.request("GET", "/health")
        self.assertEqual(self.harness.response(transport).status, 200)

    def test_expired_key(self) -> None:
        """
        A key past its expiry is refused (time from the injected clock).
        """
        self.make()
        add_key(self.keys_file, "old", now=0)
        expiring = add_key(self.keys_file, "short", expires=100.0, now=0)
        harness = GatewayHarness({"auth": {"required": True, "keys_file": self.keys_file},
                                  "rate_limits": {"per_ip_rate": 0}})
        self.harness = harness
        harness.clock.advance(50)
        self.assertEqual(self.chat(self.bearer(expiring)).status, 200)
        harness.clock.advance(100)
        self.assertEqual(self.chat(self.bearer(expiring)).status, 401)

    def test_model_allow_list(self) -> None:
        """
        A key limited to some models gets 403 for others.
        """
        self.make()
        limited = add_key(self.keys_file, "bob", models=("qwen2.5:7b",), now=0)
        self.harness = GatewayHarness({"auth": {"required": True, "keys_file": self.keys_file},
                                       "rate_limits": {"per_ip_rate": 0}})
        response = self.chat(self.bearer(limited))
        self.assertEqual(response.status, 403)
        self.assertEqual(response.json()["error"]["code"], "model_not_allowed")
        self.assertEqual(self.harness.upstream.calls, [])


class BanTests(GateTestsMixin, SynchronousTestCase):
    """
    Repeated authentication failures ban the address for a while.
    """

    def test_ban_after_three_failures(self) -> None:
        """
        The third consecutive failure bans the address for 10 minutes: even
        the right key is then refused, until the ban expires.
        """
        self.make()
        for _ in range(3):
            self.assertEqual(self.chat(self.bearer("nope")).status, 401)
        response = self.chat(self.bearer())
        self.assertEqual(response.status, 403)
        self.assertEqual(response.json()["error"]["code"], "address_banned")
        self.harness.clock.advance(599)
        self.assertEqual(self.chat(self.bearer()).status, 403)
        self.harness.clock.advance(2)
        self.assertEqual(self.chat(self.bearer()).status, 200)

    def test_success_does_not_reset_count(self) -> None:
        """
        Failures are counted in a window: alternating bad, bad, good does
        not escape the ban (it did when failures had to be consecutive).
        """
        self.make()
        for _ in range(2):
            self.chat(self.bearer("nope"))
        self.assertEqual(self.chat(self.bearer()).status, 200)
        self.assertEqual(self.chat(self.bearer("nope")).status, 401)
        response = self.chat(self.bearer())
        self.assertEqual(response.status, 403)
        self.assertEqual(response.json()["error"]["code"], "address_banned")


class AddressTests(GateTestsMixin, SynchronousTestCase):
    """
    X-Forwarded-For is believed only from trusted proxies.
    """

    def test_deny_applies_to_open_connections(self) -> None:
        """
        A reload that denies the peer's network refuses the next request on
        an already open keep-alive connection (the accept-time filter never
        sees it again).
        """
        import json

        from qwen_twist import config as configmod
        from tests.web.helpers import parse_response

        self.make()
        channel, transport = self.harness.connect()
        body = json.dumps(CHAT).encode()
        raw = ("POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer %s"
               "\r\nContent-Length: %d\r\n\r\n" % (self.key, len(body))).encode() + body
        channel.dataReceived(raw)
        self.harness.upstream.calls[-1].respond(200, NATIVE_OK)
        self.assertEqual(parse_response(transport.value()).status, 200)
        self.assertFalse(transport.disconnecting)
        raw_config = {
            "tls": {"self_signed": True},
            "auth": {"required": True, "keys_file": self.keys_file},
            "rate_limits": {"per_ip_rate": 0},
            "admission": {"slots": 0},
            "access": {"deny": ["203.0.113.0/24"]},
        }
        config = configmod.build(configmod.Config, raw_config)
        self.harness.gate.reconfigure(config)
        transport.clear()
        channel.dataReceived(raw)
        response = parse_response(transport.value())
        self.assertEqual(response.status, 403)
        self.assertEqual(response.json()["error"]["code"], "address_not_allowed")
        self.assertEqual(len(self.harness.upstream.calls), 1)

    def test_spoofed_forwarded_for_ignored(self) -> None:
        """
        From an untrusted peer, X-Forwarded-For does not change the client
        address (so nobody escapes a ban or a limit by inventing one).
        """
        self.make()
        headers = dict(self.bearer(), **{"X-Forwarded-For": "198.51.100.9"})
        self.chat(headers)
        self.assertEqual(self.harness.finished[-1].client_ip, "203.0.113.7")

    def test_trusted_proxy(self) -> None:
        """
        From a trusted proxy the rightmost untrusted hop is the client, and
        the allow-list applies to it.
        """
        self.make(access={"trusted_proxies": ["203.0.113.0/24"], "allow": ["203.0.113.0/24",
                                                                           "198.51.100.0/24"]})
        headers = dict(self.bearer(), **{"X-Forwarded-For": "10.9.9.9, 198.51.100.9"})
        self.assertEqual(self.chat(headers).status, 200)
        self.assertEqual(self.harness.finished[-1].client_ip, "198.51.100.9")
        headers["X-Forwarded-For"] = "192.0.2.1"
        response = self.chat(headers)
        self.assertEqual(response.status, 403)
        self.assertEqual(response.json()["error"]["code"], "address_not_allowed")


class PromptLimitTests(GateTestsMixin, SynchronousTestCase):
    """
    The prompt length limit over all message text.
    """

    def test_seed_prompt_refused(self) -> None:
        """
        The seed's 100,000-character prompt is refused with its message by
        default, while a 40,000-character system prompt conversation passes.
        """
        self.make()
        big = {"model": "qwen3:8b", "messages": [{"role": "user", "content": "x" * 100000}]}
        response = self.chat(self.bearer(), big)
        self.assertEqual(response.status, 400)
        self.assertEqual(response.json()["error"]["message"], "prompt too long, max 96000 chars")
        agent = {"model": "qwen3:8b", "messages": [
            {"role": "system", "content": "s" * 40000},
            {"role": "user", "content": [{"type": "text", "text": "hello " * 100}]}]}
        self.assertEqual(self.chat(self.bearer(), agent).status, 200)

    def test_tools_count(self) -> None:
        """
        200,000 characters in tool definitions, a response schema and stop
        strings, next to a short message, are refused under the default
        96,000-character limit; nothing reaches Ollama.
        """
        self.make()
        big = "d" * 70000
        body = dict(CHAT, tools=[{"type": "function", "function": {"name": "f",
                                                                    "description": big}}],
                    response_format={"type": "json_schema", "json_schema": {
                        "name": "s", "schema": {"description": big}}},
                    stop=["s" * 15000] * 4)
        response = self.chat(self.bearer(), body)
        self.assertEqual(response.status, 400)
        self.assertEqual(response.json()["error"]["code"], "prompt_too_long")
        self.assertEqual(self.harness.upstream.calls, [])

    def test_configured_limit(self) -> None:
        """
        The seed's 32768 is one config line away, counted over all messages.
        """
        self.make(limits={"max_prompt_chars": 32768})
        body = {"model": "qwen3:8b", "messages": [
            {"role": "system", "content": "s" * 20000}, {"role": "user", "content": "u" * 13000}]}
        response = self.chat(self.bearer(), body)
        self.assertEqual(response.json()["error"]["message"], "prompt too long, max 32768 chars")


class RateLimitTests(GateTestsMixin, SynchronousTestCase):
    """
    Request buckets and token budgets, with headers and Retry-After.
    """

    def test_per_key_window(self) -> None:
        """
        30 requests per 60 s per key: the 31st is a 429 whose Retry-After
        comes from the bucket (one token per 2 s), then it refills.
        """
        self.make()
        for i in range(30):
            response = self.chat(self.bearer())
            self.assertEqual(response.status, 200, i)
        self.assertEqual(response.headers["x-ratelimit-limit-requests"], "30")
        self.assertEqual(response.headers["x-ratelimit-remaining-requests"], "0")
        refused = self.chat(self.bearer())
        self.assertEqual(refused.status, 429)
        self.assertEqual(refused.headers["retry-after"], "2")
        self.assertEqual(refused.json()["error"]["type"], "rate_limit_error")
        self.harness.clock.advance(2)
        self.assertEqual(self.chat(self.bearer()).status, 200)

    def test_per_ip_burst(self) -> None:
        """
        5 requests/s per IP with a burst of 10: the 11th at once is refused,
        and one more is allowed 0.2 s later.
        """
        self.make(rate_limits={"per_ip_rate": 5.0, "per_ip_burst": 10})
        statuses = [self.chat(self.bearer()).status for _ in range(11)]
        self.assertEqual(statuses, [200] * 10 + [429])
        self.harness.clock.advance(0.2)
        self.assertEqual(self.chat(self.bearer()).status, 200)

    def test_headers_on_every_response(self) -> None:
        """
        Successful responses carry the OpenAI-style rate-limit headers.
        """
        self.make()
        response = self.chat(self.bearer())
        self.assertEqual(response.headers["x-ratelimit-limit-requests"], "30")
        self.assertEqual(response.headers["x-ratelimit-remaining-requests"], "29")
        self.assertTrue(response.headers["x-ratelimit-reset-requests"].endswith("s"))

    def test_headers_only_for_limits_that_apply(self) -> None:
        """
        With no per-IP rate and no per-key window nothing advertises a
        request limit (the unused per-IP burst misled self-pacing clients);
        with only the per-IP rate, its bucket is shown.
        """
        self.make(rate_limits={"per_ip_rate": 0, "per_key_requests": 0})
        response = self.chat(self.bearer())
        self.assertEqual(response.status, 200)
        for name in ("limit", "remaining", "reset"):
            self.assertNotIn("x-ratelimit-%s-requests" % (name,), response.headers)
        self.make(rate_limits={"per_ip_rate": 5.0, "per_ip_burst": 10, "per_key_requests": 0})
        response = self.chat(self.bearer())
        self.assertEqual(response.headers["x-ratelimit-limit-requests"], "10")
        self.assertEqual(response.headers["x-ratelimit-remaining-requests"], "9")

    def test_token_budget(self) -> None:
        """
        The per-key token budget reserves max_tokens up front and settles on
        Ollama's counts: a request whose reservation cannot be covered is
        refused, and the unused part of a reservation is given back.
        """
        self.make(rate_limits={"per_ip_rate": 0, "per_key_tokens_per_minute": 100})
        body = dict(CHAT, max_tokens=80)
        first = self.chat(self.bearer(), body)  # reserves ~80, uses 15
        self.assertEqual(first.status, 200)
        self.assertEqual(first.headers["x-ratelimit-limit-tokens"], "100")
        second = self.chat(self.bearer(), body)  # 85 left after settling: fits
        self.assertEqual(second.status, 200)
        third = self.chat(self.bearer(), body)  # 70 left: does not
        self.assertEqual(third.status, 429)
        self.assertIn("token", third.json()["error"]["message"])
        self.assertEqual(len(self.harness.upstream.calls), 2)

    def test_reservation_without_max_tokens(self) -> None:
        """
        Concurrent calls that name no max_tokens reserve limits.max_tokens
        each, so the budget cannot be overrun many times over: with a
        budget of 1,000 and a cap of 400, the third concurrent call is
        refused (before, each reserved only its prompt and all went through).
        """
        self.make(rate_limits={"per_ip_rate": 0, "per_key_tokens_per_minute": 1000},
                  limits={"max_tokens": 400})
        statuses = []
        for _ in range(3):
            response = self.chat(self.bearer(), answer=False)
            statuses.append(response.status if response is not None else "pending")
        self.assertEqual(statuses, ["pending", "pending", 429])
        self.assertEqual(len(self.harness.upstream.calls), 2)
        for call in self.harness.upstream.calls:
            call.respond(200, NATIVE_OK)


class JwtTests(SynchronousTestCase):
    """
    JWT bearer tokens as identities, expiry driven by the clock.
    """

    def setUp(self) -> None:
        import jwt as pyjwt

        self.pyjwt = pyjwt
        directory = self.mktemp()
        os.makedirs(directory)
        self.secret = "s" * 48
        secret_file = os.path.join(directory, "secret")
        with open(secret_file, "w") as f:
            f.write(self.secret)
        self.harness = GatewayHarness({
            "auth": {"required": True, "keys_file": None,
                     "jwt": {"enabled": True, "secret_file": secret_file}},
            "rate_limits": {"per_ip_rate": 0},
        })
        self.harness.clock.advance(1_800_000_000)

    def token(self, **claims) -> str:
        now = int(self.harness.clock.seconds())
        payload = {"sub": "carol", "iat": now, "exp": now + 300}
        payload.update(claims)
        return self.pyjwt.encode(payload, self.secret, algorithm="HS256")

    def chat(self, token: str) -> object:
        _, transport = self.harness.request(
            "POST", "/v1/chat/completions", CHAT, {"Authorization": "Bearer " + token})
        calls = self.harness.upstream.calls
        if calls and not calls[-1].deferred.called:
            calls[-1].respond(200, NATIVE_OK)
        return self.harness.response(transport)

    def test_valid_then_expired(self) -> None:
        """
        A valid token identifies its subject; five minutes later the same
        token is refused.
        """
        token = self.token()
        self.assertEqual(self.chat(token).status, 200)
        self.assertEqual(self.harness.finished[-1].identity, "jwt:carol")
        self.harness.clock.advance(301)
        self.assertEqual(self.chat(token).status, 401)

    def test_refused_tokens(self) -> None:
        """
        A wrong signature, C{alg: none} and an over-long lifetime are 401s.
        """
        now = int(self.harness.clock.seconds())
        forged = self.pyjwt.encode({"sub": "x", "iat": now, "exp": now + 60}, "t" * 48,
                                   algorithm="HS256")
        unsigned = self.pyjwt.encode({"sub": "x", "iat": now, "exp": now + 60}, None,
                                     algorithm="none")
        for token in (forged, unsigned, self.token(exp=now + 3600)):
            self.assertEqual(self.chat(token).status, 401)
        self.assertEqual(self.harness.upstream.calls, [])
