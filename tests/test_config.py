"""
Tests for L{qwen_twist.config}: every key, valid and invalid, with the file
and the dotted key path in the message.

The per-key tests are driven by L{config.describe_keys}: L{SAMPLES} must
name exactly the keys the code declares, so a key added later without test
cases fails L{KeyTableTests.test_every_key_has_samples}.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import os
from typing import Any, Dict

import yaml

from twisted.trial.unittest import SynchronousTestCase

from qwen_twist import config
from qwen_twist.schema import merge_settings as merge

FILE = "qwengate.yaml"
MiB = 1024 * 1024

# What the parsed YAML must carry so that the tls section validates without
# touching the key under test.
SELF_SIGNED = {"tls": {"self_signed": True}}
WITH_FILES = {"tls": {"certificate": "/etc/qwengate/cert.pem", "private_key": "/etc/qwengate/key.pem"}}


# Per key: "valid" are accepted non-default values (value in the YAML ->
# value in the Config), "wrong_type" are values of another YAML type, "bad"
# are values of the right type that the key's check refuses. List settings
# (a tuple default) have "wrong_item_type" and "bad_item" instead of "bad":
# (list, index) pairs whose error names the item, C{access.allow[2]}.
# "context" is merged into the document first, for keys whose valid values
# need a companion key (jwt.enabled needs a secret file).
SAMPLES: Dict[str, Dict[str, Any]] = {
    "state_dir": {
        "valid": [("/srv/qwengate", "/srv/qwengate"), ("./state", "./state")],
        "wrong_type": [5, ["/srv"], None],
        "bad": ["", "   "],
    },
    "listen.address": {
        "valid": [("127.0.0.1", "127.0.0.1"), ("::", "::"), ("::1", "::1")],
        "wrong_type": [127, True, {"host": "x"}],
        "bad": ["localhost", "0.0.0.0/0", "256.1.1.1", ""],
    },
    "listen.port": {
        "valid": [(8443, 8443), (1, 1), (65535, 65535)],
        "wrong_type": ["80", 80.0, True, None],
        "bad": [0, -1, 65536],
    },
    "listen.backlog": {
        "valid": [(1, 1), (4096, 4096)],
        "wrong_type": [1.5, "511"],
        "bad": [0, 65536],
    },
    "tls.certificate": {
        "valid": [("/etc/ssl/fullchain.pem", "/etc/ssl/fullchain.pem")],
        "wrong_type": [5, True, ["a.pem"]],
        "bad": ["", "  "],
    },
    "tls.private_key": {
        "valid": [("/etc/ssl/privkey.pem", "/etc/ssl/privkey.pem")],
        "wrong_type": [5, False, {"file": "k.pem"}],
        "bad": ["", " "],
    },
    "tls.self_signed": {
        "valid": [(True, True)],
        "wrong_type": ["true", "yes", 1, None],
        "bad": [],
    },
    "tls.min_version": {
        "valid": [("1.3", "1.3")],
        # Unquoted 1.2 is a float in YAML.
        "wrong_type": [1.2, 1.3, 12],
        "bad": ["1.1", "1.0", "TLSv1.2", ""],
    },
    "tls.ciphers": {
        "valid": [("ECDHE+AESGCM", "ECDHE+AESGCM")],
        "wrong_type": [["ECDHE+AESGCM"], 1],
        "bad": ["", "  "],
    },
    "upstream.url": {
        "valid": [
            ("https://ollama.internal", "https://ollama.internal"),
            ("http://[::1]:11434", "http://[::1]:11434"),
            ("http://10.0.0.5:11434/", "http://10.0.0.5:11434/"),
        ],
        "wrong_type": [11434, {"host": "127.0.0.1"}],
        "bad": [
            "127.0.0.1:11434",
            "ftp://127.0.0.1",
            "http://",
            "http://user:secret@127.0.0.1:11434",
            "http://127.0.0.1:11434/?x=1",
            "http://127.0.0.1:11434/#frag",
            "http://127.0.0.1:99999",
            "http://127.0.0.1:port",
            "http://[::1",
        ],
    },
    "upstream.urls": {
        "valid": [(["http://10.0.0.2:11434", "http://gpu2:11434"],
                   ("http://10.0.0.2:11434", "http://gpu2:11434"))],
        "wrong_type": ["http://a:1", {"a": 1}, None],
        "wrong_item_type": [([1], 0), (["http://a:1", None], 1)],
        "bad_item": [(["ftp://x"], 0), (["http://a:1", "nope"], 1)],
    },
    "upstream.health_interval": {
        "valid": [(5, 5.0), (0.5, 0.5)],
        "wrong_type": ["10s", None],
        "bad": [0, -1],
    },
    "upstream.pool_size": {
        "valid": [(1, 1), (10000, 10000)],
        "wrong_type": [64.0, "64"],
        "bad": [0, 10001],
    },
    "upstream.max_response_bytes": {
        "valid": [(MiB, MiB), (1024 * MiB, 1024 * MiB)],
        "wrong_type": ["16MiB", 1.5e7],
        "bad": [MiB - 1, 1024 * MiB + 1],
    },
    "upstream.max_embeddings_bytes": {
        "valid": [(MiB, MiB), (4096 * MiB, 4096 * MiB)],
        "wrong_type": ["96MiB", 1.5e7],
        "bad": [MiB - 1, 4096 * MiB + 1],
    },
    "upstream.timeouts.connect": {
        # An integer is a number: stored as a float.
        "valid": [(0.5, 0.5), (5, 5.0)],
        # YAML 1.1: 1e3 (no dot) is a string.
        "wrong_type": ["1e3", "3", True, None],
        "bad": [0, -1.0, float("inf"), float("nan"), 10 ** 400],
    },
    "upstream.timeouts.headers": {
        "valid": [(60, 60.0), (1.5, 1.5)],
        "wrong_type": ["900", False, [900]],
        "bad": [0.0, -5, float("-inf")],
    },
    "upstream.timeouts.first_token": {
        "valid": [(60, 60.0), (1.5, 1.5)],
        "wrong_type": ["10m", True, None],
        "bad": [0, -1],
    },
    "upstream.timeouts.idle": {
        "valid": [(30.0, 30.0)],
        "wrong_type": [None, "300"],
        "bad": [0, -0.1],
    },
    "upstream.timeouts.total": {
        "valid": [(3600, 3600.0), (0.25, 0.25)],
        "wrong_type": [[1], "0"],
        "bad": [-1, -0.001],
    },
    "streaming.keepalive_interval": {
        "valid": [(0, 0.0), (2.5, 2.5)],
        "wrong_type": ["15", True],
        "bad": [-1],
    },
    "streaming.max_line_bytes": {
        "valid": [(8 * MiB, 8 * MiB), (256 * MiB, 256 * MiB)],
        "wrong_type": [16.5, "16MiB", 1.6e7],
        "bad": [8 * MiB - 1, 256 * MiB + 1, 0],
    },
    "streaming.slow_reader_timeout": {
        "valid": [(5, 5.0), (0.5, 0.5)],
        "wrong_type": ["30", None],
        "bad": [0, -1],
    },
    "limits.max_tokens": {
        "valid": [(1, 1), (10 ** 7, 10 ** 7)],
        "wrong_type": ["8192", 8192.0],
        "bad": [0, 10 ** 7 + 1],
    },
    "limits.max_num_ctx": {
        "valid": [(1, 1), (131072, 131072)],
        "wrong_type": ["32k", 32768.0],
        "bad": [0, 10 ** 8 + 1],
    },
    "limits.keep_alive_min": {
        "valid": [(0, 0.0), (300, 300.0)],
        "wrong_type": ["5m", None],
        "bad": [-1],
    },
    "limits.keep_alive_max": {
        "valid": [(60, 60.0), (86400, 86400.0)],
        "wrong_type": ["30m", None],
        "bad": [0, -1],
    },
    "limits.allowed_options": {
        "valid": [(["temperature"], ("temperature",)), ([], ()),
                  (["num_gpu", "seed"], ("num_gpu", "seed"))],
        "wrong_type": ["temperature", {"a": 1}, None],
        "wrong_item_type": [([1], 0), (["seed", None], 1)],
        "bad_item": [(["tempurature"], 0), (["seed", "rm_rf"], 1)],
    },
    "limits.max_embedding_inputs": {
        "valid": [(1, 1), (4096, 4096)],
        "wrong_type": ["2048", 2048.0],
        "bad": [0, 1000001],
    },
    "translation.reasoning_field": {
        "valid": [("reasoning", "reasoning"), ("both", "both"), ("none", "none")],
        "wrong_type": [False, None, 1],
        "bad": ["thinking", "Reasoning_Content", ""],
    },
    "translation.think_max": {
        "valid": [(False, False)],
        "wrong_type": ["false", 0, None],
        "bad": [],
    },
    "limits.max_body_bytes": {
        "valid": [(1024, 1024), (1024 * MiB, 1024 * MiB)],
        "wrong_type": ["8MiB", 8e6, True],
        "bad": [1023, 1024 * MiB + 1, 0],
    },
    "limits.max_prompt_chars": {
        # 32768 is the seed article's limit: one config line away.
        "valid": [(32768, 32768), (1, 1), (100 * 1000 * 1000, 100 * 1000 * 1000)],
        "wrong_type": ["96000", 9.6e4, True, None],
        "bad": [0, -1, 100 * 1000 * 1000 + 1],
    },
    "limits.max_header_bytes": {
        "valid": [(1024, 1024), (MiB, MiB)],
        "wrong_type": ["16KiB", 16384.0, [16384]],
        "bad": [1023, MiB + 1, 0],
    },
    "limits.header_timeout": {
        "valid": [(2.5, 2.5), (30, 30.0)],
        "wrong_type": ["10", None, False],
        "bad": [0, -1, float("inf")],
    },
    "auth.required": {
        "valid": [(False, False)],
        "wrong_type": ["true", "false", 1, None],
        "bad": [],
    },
    "auth.keys_file": {
        # null is allowed (API keys off) when another identity exists: see
        # AuthCrossCheckTests.
        "valid": [("./state/keys.yaml", "./state/keys.yaml"), ("/srv/keys.yaml", "/srv/keys.yaml")],
        "wrong_type": [5, True, ["/etc/qwengate/keys.yaml"]],
        "bad": ["", "  "],
    },
    "auth.jwt.enabled": {
        "context": {"auth": {"jwt": {"secret_file": "/etc/qwengate/jwt.secret"}}},
        "valid": [(True, True)],
        "wrong_type": ["yes", 1, None],
        "bad": [],
    },
    "auth.jwt.algorithm": {
        "valid": [("RS256", "RS256"), ("ES256", "ES256")],
        "wrong_type": [256, None, ["HS256"]],
        # "none" is the unsigned-token algorithm: never accepted.
        "bad": ["none", "None", "hs256", "HS512", "PS256", ""],
    },
    "auth.jwt.secret_file": {
        "valid": [("/etc/qwengate/jwt.secret", "/etc/qwengate/jwt.secret")],
        "wrong_type": [5, True, ["a"]],
        "bad": ["", " "],
    },
    "auth.jwt.public_key_file": {
        "valid": [("/etc/qwengate/jwt.pub.pem", "/etc/qwengate/jwt.pub.pem")],
        "wrong_type": [5, {"file": "k.pem"}],
        "bad": ["", "\t"],
    },
    "auth.jwt.issuer": {
        "valid": [("https://sso.example.com/", "https://sso.example.com/")],
        "wrong_type": [5, ["https://sso.example.com/"]],
        "bad": ["", " "],
    },
    "auth.jwt.audience": {
        "valid": [("qwengate", "qwengate")],
        "wrong_type": [1, {"aud": "x"}],
        "bad": ["", "  "],
    },
    "auth.jwt.max_lifetime": {
        "valid": [(60, 60.0), (3600.5, 3600.5)],
        "wrong_type": ["300", True, None],
        "bad": [0, -1, float("inf")],
    },
    "auth.jwt.leeway": {
        "valid": [(30, 30.0), (0.5, 0.5)],
        "wrong_type": ["0", None],
        "bad": [-1, -0.001],
    },
    "auth.jwt.user_claim": {
        "valid": [("email", "email"), ("preferred_username", "preferred_username")],
        "wrong_type": [1, None, ["sub"]],
        "bad": ["", " "],
    },
    "auth.mtls.mode": {
        "context": {"auth": {"mtls": {"client_ca": "/etc/qwengate/client-ca.pem"}}},
        "valid": [("optional", "optional"), ("require", "require")],
        # Unquoted off/on are YAML 1.1 booleans.
        "wrong_type": [False, True, 1, None],
        "bad": ["Off", "required", "on", ""],
    },
    "auth.mtls.client_ca": {
        "valid": [("/etc/qwengate/client-ca.pem", "/etc/qwengate/client-ca.pem")],
        "wrong_type": [5, ["ca.pem"]],
        "bad": ["", " "],
    },
    "auth.mtls.identity_from_subject": {
        "valid": [(True, True)],
        "wrong_type": ["true", 1, None],
        "bad": [],
    },
    # List settings: "wrong_type" are values that are not lists,
    # "wrong_item_type" and "bad_item" are (list, index of the bad item).
    "access.allow": {
        "valid": [
            (["10.0.0.0/8", "192.168.1.5"], ("10.0.0.0/8", "192.168.1.5")),
            (["::1/128", "2001:db8::/32"], ("::1/128", "2001:db8::/32")),
        ],
        "wrong_type": ["10.0.0.0/8", {"cidr": "10.0.0.0/8"}, 10, None],
        "wrong_item_type": [(["10.0.0.0/8", 10], 1), ([None], 0), ([["10.0.0.0/8"]], 0)],
        "bad_item": [
            (["127.0.0.1", "::1", "10.0.0.256/8"], 2),
            (["localhost"], 0),
            (["10.0.0.0/8", "10.0.0.0/33"], 1),
            ([""], 0),
        ],
    },
    "access.deny": {
        "valid": [(["203.0.113.0/24"], ("203.0.113.0/24",))],
        "wrong_type": ["203.0.113.0/24", 1],
        "wrong_item_type": [([True], 0), (["203.0.113.7", 1.5], 1)],
        "bad_item": [(["203.0.113.0/24", "*"], 1), (["example.com"], 0)],
    },
    "access.trusted_proxies": {
        "valid": [(["127.0.0.1", "::1"], ("127.0.0.1", "::1")), (["10.1.0.0/16"], ("10.1.0.0/16",))],
        "wrong_type": ["127.0.0.1", {"nginx": "127.0.0.1"}],
        "wrong_item_type": [([127], 0), (["127.0.0.1", {"ip": "::1"}], 1)],
        "bad_item": [(["127.0.0.1", "nginx.internal"], 1), (["0.0.0.0/-1"], 0)],
    },
    "connections.max_total": {
        "valid": [(1, 1), (1000000, 1000000)],
        "wrong_type": ["200", 200.0, True],
        "bad": [0, -1, 1000001],
    },
    "connections.max_per_ip": {
        "valid": [(1, 1), (8, 8)],
        "wrong_type": ["50", 50.5, None],
        "bad": [0, 1000001],
    },
    "connections.rate": {
        "valid": [(0.5, 0.5), (100, 100.0)],
        "wrong_type": ["10", None, [10]],
        "bad": [0, -1, float("inf")],
    },
    "connections.handshake_timeout": {
        "valid": [(2.5, 2.5), (30, 30.0)],
        "wrong_type": ["10", None, False],
        "bad": [0, -1, float("inf")],
    },
    "connections.evict_strangers": {
        "valid": [(False, False)],
        "wrong_type": ["yes", 1, None],
        "bad": [],
    },
    "connections.ipv6_prefix": {
        "valid": [(128, 128), (48, 48)],
        "wrong_type": ["64", 64.0],
        "bad": [0, 15, 129],
    },
    "connections.refusal_answers": {
        "valid": [(0, 0), (10, 10)],
        "wrong_type": ["3", 3.0],
        "bad": [-1, 1001],
    },
    "connections.refusal_budget": {
        "valid": [(0, 0), (600, 600)],
        "wrong_type": ["60", 1.5],
        "bad": [-1, 1000001],
    },
    "limits.body_timeout": {
        "valid": [(2.5, 2.5), (30, 30.0)],
        "wrong_type": ["10", None, False],
        "bad": [0, -1, float("inf")],
    },
    "limits.body_min_rate": {
        "valid": [(1, 1), (65536, 65536)],
        "wrong_type": ["1024", 1.5],
        "bad": [0, -1],
    },
    "connections.burst": {
        "valid": [(1, 1), (200, 200)],
        "wrong_type": [20.0, "20"],
        "bad": [0, 1000001],
    },
    "rate_limits.per_key_requests": {
        "valid": [(0, 0), (1000, 1000)],
        "wrong_type": [30.0, "30", None],
        "bad": [-1, 10000001],
    },
    "rate_limits.per_key_window": {
        "valid": [(1, 1.0), (3600.0, 3600.0)],
        "wrong_type": ["60s", True],
        "bad": [0, -60],
    },
    "rate_limits.per_ip_rate": {
        "valid": [(0, 0.0), (0.5, 0.5), (100, 100.0)],
        "wrong_type": ["5", None],
        "bad": [-0.5, float("inf")],
    },
    "rate_limits.per_ip_burst": {
        "valid": [(1, 1), (100, 100)],
        "wrong_type": [10.0, "10"],
        "bad": [0, 10000001],
    },
    "rate_limits.per_key_tokens_per_minute": {
        "valid": [(100000, 100000), (10 ** 12, 10 ** 12)],
        "wrong_type": [1.5, "0", False],
        "bad": [-1, 10 ** 12 + 1],
    },
    "bans.failures": {
        "valid": [(0, 0), (10, 10)],
        "wrong_type": ["3", 3.0, None],
        "bad": [-1, 1000001],
    },
    "bans.window": {
        "valid": [(60, 60.0), (0.5, 0.5)],
        "wrong_type": ["10m", None],
        "bad": [0, -1],
    },
    "admission.per_key": {
        "valid": [(1, 1), (100000, 100000)],
        "wrong_type": ["1", 1.0],
        "bad": [-1, 100001],
    },
    "bans.duration": {
        "valid": [(60, 60.0), (86400.5, 86400.5)],
        "wrong_type": ["600", None, "10m"],
        "bad": [0, -1],
    },
    "response.strip_fields": {
        "valid": [
            (["system_fingerprint", "usage.prompt_tokens_details"],
             ("system_fingerprint", "usage.prompt_tokens_details")),
        ],
        "wrong_type": ["system_fingerprint", {"field": "x"}, 1],
        "wrong_item_type": [([1], 0), (["model", True], 1)],
        "bad_item": [(["model", ""], 1), ([" "], 0)],
    },
    "response.cors_origins": {
        "valid": [
            (["https://chat.example.com", "http://localhost:3000"],
             ("https://chat.example.com", "http://localhost:3000")),
            (["http://[::1]:8080"], ("http://[::1]:8080",)),
        ],
        "wrong_type": ["https://chat.example.com", 1, None],
        "wrong_item_type": [([443], 0), (["https://chat.example.com", None], 1)],
        "bad_item": [
            (["*"], 0),
            (["https://chat.example.com", "*"], 1),
            (["chat.example.com"], 0),
            (["https://chat.example.com/app"], 0),
            (["ftp://files.example.com"], 0),
            (["https://"], 0),
            ([""], 0),
        ],
    },
    "response.hsts_max_age": {
        "valid": [(0, 0), (63072000, 63072000)],
        "wrong_type": ["1y", 1.5, None],
        "bad": [-1, 10 ** 9 + 1],
    },
    "upstream.breaker.threshold": {
        "valid": [(0, 0), (3, 3)],
        "wrong_type": ["5", 2.5, True, None],
        "bad": [-1],
    },
    "upstream.breaker.cooldown": {
        "valid": [(1, 1.0), (0.5, 0.5)],
        "wrong_type": ["30s", None],
        "bad": [0, -3],
    },
    "upstream.breaker.window": {
        "valid": [(1, 1.0), (0.5, 0.5)],
        "wrong_type": ["10s", None],
        "bad": [0, -3],
    },
    "upstream.breaker.min_calls": {
        "valid": [(1, 1), (50, 50)],
        "wrong_type": ["20", 2.5, None],
        "bad": [0, -1],
    },
    "upstream.breaker.failure_rate": {
        "valid": [(1, 1.0), (0.25, 0.25)],
        "wrong_type": ["50%", None],
        "bad": [0, 1.5, -0.5],
    },
    "upstream.breaker.burst": {
        "valid": [(0, 0.0), (0.25, 0.25)],
        "wrong_type": ["0.1s", None],
        "bad": [-0.1],
    },
    "admission.slots": {
        "valid": [(0, 0), (1, 1), (8, 8)],
        "wrong_type": ["4", 1.5, None],
        "bad": [-1],
    },
    "admission.max_depth": {
        "valid": [(0, 0), (1000, 1000)],
        "wrong_type": ["many", None],
        "bad": [-5],
    },
    "admission.max_wait": {
        "valid": [(1, 1.0), (600, 600.0)],
        "wrong_type": ["2m", None],
        "bad": [0, -1],
    },
    "lifecycle.drain_timeout": {
        "valid": [(0, 0.0), (120, 120.0), (2.5, 2.5)],
        "wrong_type": ["30s", True, None],
        "bad": [-1],
    },
    "metrics.enabled": {
        "valid": [(False, False)],
        "wrong_type": ["no", 0, None],
        "bad": [],
    },
    "metrics.address": {
        "valid": [("0.0.0.0", "0.0.0.0"), ("::1", "::1")],
        "wrong_type": [9189, None],
        "bad": ["localhost", ""],
    },
    "metrics.port": {
        "valid": [(9190, 9190)],
        "wrong_type": ["9189", 9189.0, None],
        "bad": [0, 65536],
    },
    "metrics.bearer_token_file": {
        "valid": [("/etc/qwengate/metrics.token", "/etc/qwengate/metrics.token")],
        "wrong_type": [5, ["x"]],
        "bad": ["", " "],
    },
    "metrics.tls": {
        "valid": [(True, True)],
        "wrong_type": ["yes", 1, None],
        "bad": [],
    },
    "audit.enabled": {
        "valid": [(False, False)],
        "wrong_type": ["yes", 1, None],
        "bad": [],
    },
    "audit.file": {
        "valid": [("/var/log/qwengate/audit.log", "/var/log/qwengate/audit.log"), ("-", "-")],
        "wrong_type": [5, ["x"]],
        "bad": ["", "  "],
    },
    "audit.retention": {
        "valid": [(1, 1), (365, 365)],
        "wrong_type": ["180", 1.5, None],
        "bad": [0, -1],
    },
    "audit.compress": {
        "valid": [(False, False)],
        "wrong_type": ["no", 0, None],
        "bad": [],
    },
    "audit.user_header": {
        "valid": [("X-User-Id", "X-User-Id")],
        "wrong_type": [5, ["X-User-Id"]],
        "bad": ["", " "],
    },
}


def key_paths() -> list:
    """
    Every dotted key the code declares.
    """
    return [row[0] for row in config.describe_keys()]


def nested(path: str, value: Any) -> dict:
    """
    C{{"a": {"b": value}}} for the path C{"a.b"}.
    """
    result: Any = value
    for part in reversed(path.split(".")):
        result = {part: result}
    return result




def lookup(conf: Any, path: str) -> Any:
    """
    The value at a dotted path of a L{config.Config}.
    """
    return functools.reduce(getattr, path.split("."), conf)


def is_list_key(path: str) -> bool:
    """
    Whether C{path} is a list setting (declared with a tuple default).
    """
    return any(isinstance(default, tuple) for key, default, _ in config.describe_keys() if key == path)


def document(path: str, value: Any) -> str:
    """
    A YAML document setting C{path} to C{value}, with a tls section that
    validates on its own (unless the key under test is in it) and the key's
    sample context.
    """
    base = WITH_FILES if path == "tls.self_signed" else SELF_SIGNED
    base = merge(base, SAMPLES.get(path, {}).get("context", {}))
    return yaml.safe_dump(merge(base, nested(path, value)))


class KeyTableTests(SynchronousTestCase):
    """
    Every declared key: its default when absent, a valid value accepted,
    a wrong type and a bad value rejected with C{<file>: <key>: }.
    """

    def assertRejected(self, text: str, path: str) -> config.ConfigError:
        """
        Parsing C{text} fails naming C{FILE} and C{path}, on one line.
        """
        error = self.assertRaises(config.ConfigError, config.parse, text, FILE)
        self.assertEqual(error.path, path)
        self.assertEqual(error.filename, FILE)
        message = str(error)
        self.assertTrue(
            message.startswith("%s: %s: " % (FILE, path)), "%r does not name the key" % (message,)
        )
        self.assertNotIn("\n", message)
        return error

    def test_every_key_has_samples(self):
        """
        The sample table covers exactly the declared keys: a new key without
        test cases, or a removed key with stale ones, fails here.
        """
        self.assertEqual(sorted(SAMPLES), sorted(key_paths()))
        self.assertEqual(len(key_paths()), len(set(key_paths())))
        for path, samples in SAMPLES.items():
            self.assertTrue(samples["valid"], path)
            self.assertTrue(samples["wrong_type"], path)
            if is_list_key(path):
                self.assertTrue(samples["wrong_item_type"], path)
                self.assertTrue(samples["bad_item"], path)
                self.assertNotIn("bad", samples, path)
                for raw, expected in samples["valid"]:
                    self.assertIsInstance(raw, list, path)
                    self.assertIsInstance(expected, tuple, path)
            else:
                self.assertIn("bad", samples, path)
                self.assertNotIn("wrong_item_type", samples, path)
                self.assertNotIn("bad_item", samples, path)

    def test_defaults_when_absent(self):
        """
        A key that is not in the file has the default C{describe_keys}
        reports, which is also the dataclass default.
        """
        checked = set()
        for base in (SELF_SIGNED, WITH_FILES):
            conf = config.parse(yaml.safe_dump(base), FILE)
            present = {".".join(("tls", k)) for k in base["tls"]}
            for path, default, doc in config.describe_keys():
                if path in present:
                    continue
                checked.add(path)
                self.assertEqual(lookup(conf, path), default, path)
                self.assertEqual(type(lookup(conf, path)), type(default), path)
                self.assertTrue(doc, "%s has no description" % (path,))
        self.assertEqual(checked, set(key_paths()))

    def test_documented_defaults(self):
        """
        The defaults are the documented ones (a changed default is a
        visible decision, not an accident).
        """
        self.assertEqual(
            {path: default for path, default, _ in config.describe_keys()},
            {
                "state_dir": "/var/lib/qwengate",
                "listen.address": "0.0.0.0",
                "listen.port": 18789,
                "listen.backlog": 511,
                "tls.certificate": None,
                "tls.private_key": None,
                "tls.self_signed": False,
                "tls.min_version": "1.2",
                "tls.ciphers": "ECDHE+AESGCM:ECDHE+CHACHA20",
                "upstream.url": "http://127.0.0.1:11434",
                "upstream.urls": (),
                "upstream.health_interval": 10.0,
                "upstream.pool_size": 64,
                "upstream.max_response_bytes": 16 * MiB,
                "upstream.max_embeddings_bytes": 96 * MiB,
                "streaming.slow_reader_timeout": 30.0,
                "limits.max_tokens": 8192,
                "limits.max_num_ctx": 32768,
                "limits.keep_alive_min": 60.0,
                "limits.keep_alive_max": 1800.0,
                "limits.allowed_options": config.DEFAULT_ALLOWED_OPTIONS,
                "limits.max_embedding_inputs": 2048,
                "bans.window": 600.0,
                "admission.per_key": 0,
                "upstream.timeouts.connect": 3.0,
                "upstream.timeouts.headers": 900.0,
                "upstream.timeouts.first_token": 600.0,
                "upstream.timeouts.idle": 300.0,
                "upstream.timeouts.total": 0.0,
                "streaming.keepalive_interval": 15.0,
                "streaming.max_line_bytes": 16 * MiB,
                "translation.reasoning_field": "reasoning_content",
                "translation.think_max": True,
                "limits.max_body_bytes": 8 * MiB,
                "limits.max_prompt_chars": 96000,
                "limits.max_header_bytes": 16384,
                "limits.header_timeout": 10.0,
                "auth.required": True,
                "auth.keys_file": "/etc/qwengate/keys.yaml",
                "auth.jwt.enabled": False,
                "auth.jwt.algorithm": "HS256",
                "auth.jwt.secret_file": None,
                "auth.jwt.public_key_file": None,
                "auth.jwt.issuer": None,
                "auth.jwt.audience": None,
                "auth.jwt.max_lifetime": 300.0,
                "auth.jwt.leeway": 0.0,
                "auth.jwt.user_claim": "sub",
                "auth.mtls.mode": "off",
                "auth.mtls.client_ca": None,
                "auth.mtls.identity_from_subject": False,
                "access.allow": (),
                "access.deny": (),
                "access.trusted_proxies": (),
                "connections.max_total": 200,
                "connections.max_per_ip": 50,
                "connections.rate": 10.0,
                "connections.burst": 20,
                "connections.handshake_timeout": 10.0,
                "connections.evict_strangers": True,
                "connections.ipv6_prefix": 64,
                "connections.refusal_answers": 3,
                "connections.refusal_budget": 60,
                "limits.body_timeout": 10.0,
                "limits.body_min_rate": 1024,
                "rate_limits.per_key_requests": 30,
                "rate_limits.per_key_window": 60.0,
                "rate_limits.per_ip_rate": 5.0,
                "rate_limits.per_ip_burst": 10,
                "rate_limits.per_key_tokens_per_minute": 0,
                "bans.failures": 3,
                "bans.duration": 600.0,
                "response.strip_fields": (),
                "response.cors_origins": (),
                "response.hsts_max_age": 31536000,
                "upstream.breaker.threshold": 5,
                "upstream.breaker.cooldown": 30.0,
                "upstream.breaker.window": 10.0,
                "upstream.breaker.min_calls": 20,
                "upstream.breaker.failure_rate": 0.5,
                "upstream.breaker.burst": 0.1,
                "admission.slots": 4,
                "admission.max_depth": 256,
                "admission.max_wait": 120.0,
                "lifecycle.drain_timeout": 30.0,
                "metrics.enabled": True,
                "metrics.address": "127.0.0.1",
                "metrics.port": 9189,
                "metrics.bearer_token_file": None,
                "metrics.tls": False,
                "audit.enabled": True,
                "audit.file": None,
                "audit.retention": 180,
                "audit.compress": True,
                "audit.user_header": None,
            },
        )

    def test_valid_values(self):
        """
        Each valid non-default value is accepted and ends up, with its
        declared type, at its key; nothing else changes.
        """
        defaults = {path: default for path, default, _ in config.describe_keys()}
        for path, samples in SAMPLES.items():
            for raw, expected in samples["valid"]:
                self.assertNotEqual(expected, defaults[path], path)
                conf = config.parse(document(path, raw), FILE)
                value = lookup(conf, path)
                self.assertEqual(value, expected, path)
                self.assertEqual(type(value), type(expected), path)

    def test_wrong_types(self):
        """
        A value of the wrong YAML type is refused (no coercion), naming the
        file and the dotted key.
        """
        for path, samples in SAMPLES.items():
            for raw in samples["wrong_type"]:
                error = self.assertRejected(document(path, raw), path)
                self.assertTrue(error.problem.startswith("must be "), (path, raw, error.problem))

    def test_bad_values(self):
        """
        A value of the right type that fails the key's check is refused,
        naming the file and the dotted key.
        """
        for path, samples in SAMPLES.items():
            for raw in samples.get("bad", []):
                self.assertRejected(document(path, raw), path)

    def test_list_item_wrong_type(self):
        """
        In a list setting, an item of the wrong YAML type is refused naming
        the item by its index (C{access.allow[1]}), not just the list.
        """
        checked = 0
        for path, samples in SAMPLES.items():
            for raw, index in samples.get("wrong_item_type", []):
                item_path = "%s[%d]" % (path, index)
                error = self.assertRejected(document(path, raw), item_path)
                self.assertTrue(error.problem.startswith("must be a string, got "), (path, raw))
                checked += 1
        self.assertTrue(checked)

    def test_list_item_bad_value(self):
        """
        In a list setting, an item that fails the key's check is refused
        naming the item by its index; the items before it were fine.
        """
        checked = 0
        for path, samples in SAMPLES.items():
            for raw, index in samples.get("bad_item", []):
                self.assertRejected(document(path, raw), "%s[%d]" % (path, index))
                checked += 1
        self.assertTrue(checked)

    def test_messages(self):
        """
        The messages say what is wrong and what was found.
        """
        cases = [
            ("listen:\n  port: \"80\"\n", "listen.port: must be an integer, got a string '80'"),
            ("listen:\n  port: 0\n", "listen.port: must be between 1 and 65535, got 0"),
            (
                "upstream:\n  timeouts:\n    connect: -1\n",
                "upstream.timeouts.connect: must be > 0, got -1.0",
            ),
            ("upstream:\n  timeouts:\n    connect: .inf\n",
             "upstream.timeouts.connect: must be a finite number"),
            ("upstream:\n  timeouts:\n    idle:\n", "upstream.timeouts.idle: must be a number, got nothing (null)"),
            ("tls:\n  min_version: 1.2\n", "tls.min_version: must be a string, got a number 1.2"),
            ("tls:\n  min_version: \"1.1\"\n", "tls.min_version: must be one of '1.2', '1.3', got '1.1'"),
            ("listen:\n  address: localhost\n",
             "listen.address: must be an IPv4 or IPv6 address, got 'localhost'"),
            ("state_dir: [a]\n", "state_dir: must be a string, got a list"),
            (
                "access:\n  allow: [127.0.0.1, '::1', 10.0.0.256/8]\n",
                "access.allow[2]: must be an IPv4 or IPv6 address or CIDR network, "
                "got '10.0.0.256/8'",
            ),
            ("access:\n  allow: 10.0.0.0/8\n",
             "access.allow: must be a list, got a string '10.0.0.0/8'"),
            ("access:\n  deny:\n", "access.deny: must be a list, got nothing (null)"),
            ("access:\n  trusted_proxies: [127.0.0.1, 8]\n",
             "access.trusted_proxies[1]: must be a string, got an integer 8"),
            ("response:\n  cors_origins: ['*']\n",
             "response.cors_origins[0]: must name origins; '*' would let any web page use "
             "the API"),
            ("auth:\n  mtls:\n    mode: off\n",
             "auth.mtls.mode: must be a string, got a boolean False"),
            ("auth:\n  jwt:\n    algorithm: none\n",
             "auth.jwt.algorithm: must be one of 'HS256', 'RS256', 'ES256', got 'none'"),
        ]
        for text, expected in cases:
            error = self.assertRaises(
                config.ConfigError, config.parse, "tls: {self_signed: true}\n" + text, FILE
            )
            self.assertEqual(str(error), "%s: %s" % (FILE, expected))


def parse_with(raw: dict) -> config.Config:
    """
    Parse C{raw} (a mapping in YAML form) on top of the self-signed base.
    """
    return config.parse(yaml.safe_dump(merge(SELF_SIGNED, raw)), FILE)


class AuthCrossCheckTests(SynchronousTestCase):
    """
    The C{_validate} checks that tie auth keys together: each failure names
    the key the operator has to add.
    """

    def assertRefused(self, raw: dict, path: str, problem: str) -> None:
        """
        Parsing C{raw} fails naming C{path} with C{problem}.
        """
        error = self.assertRaises(config.ConfigError, parse_with, raw)
        self.assertEqual(error.path, path)
        self.assertEqual(str(error), "%s: %s: %s" % (FILE, path, problem))

    def test_required_without_any_identity(self):
        """
        C{auth.required} with API keys switched off (C{keys_file: null}) and
        neither JWT nor client-certificate identities would admit nobody:
        refused, naming C{auth.keys_file}.
        """
        for raw in [
            {"auth": {"keys_file": None}},
            {"auth": {"required": True, "keys_file": None}},
            # A client certificate is verified but names nobody.
            {"auth": {"keys_file": None,
                      "mtls": {"mode": "require", "client_ca": "/ca.pem"}}},
            # The subject would name someone, but client certificates are off.
            {"auth": {"keys_file": None, "mtls": {"identity_from_subject": True}}},
        ]:
            self.assertRefused(
                raw,
                "auth.keys_file",
                "is required when auth.required is true and neither JWT nor "
                "client-certificate identities are enabled",
            )

    def test_other_identities_replace_keys(self):
        """
        Without API keys, JWTs or client-certificate subjects are enough.
        """
        conf = parse_with(
            {"auth": {"keys_file": None, "jwt": {"enabled": True, "secret_file": "/s"}}}
        )
        self.assertIsNone(conf.auth.keys_file)
        self.assertTrue(conf.auth.jwt.enabled)
        for mode in ("optional", "require"):
            conf = parse_with({"auth": {"keys_file": None, "mtls": {
                "mode": mode, "client_ca": "/ca.pem", "identity_from_subject": True}}})
            self.assertEqual(conf.auth.mtls.mode, mode)

    def test_not_required(self):
        """
        With C{auth.required: false} no identity source is needed.
        """
        conf = parse_with({"auth": {"required": False, "keys_file": None}})
        self.assertIs(conf.auth.required, False)
        self.assertIsNone(conf.auth.keys_file)

    def test_jwt_hs256_needs_secret(self):
        """
        JWT enabled with HS256 (the default algorithm) needs
        C{auth.jwt.secret_file}; a public key does not replace it.
        """
        for jwt in [{"enabled": True}, {"enabled": True, "algorithm": "HS256",
                                         "public_key_file": "/k.pem"}]:
            self.assertRefused(
                {"auth": {"jwt": jwt}}, "auth.jwt.secret_file", "is required for HS256"
            )

    def test_jwt_asymmetric_needs_public_key(self):
        """
        JWT enabled with RS256 or ES256 needs C{auth.jwt.public_key_file}; a
        shared secret does not replace it.
        """
        for algorithm in ("RS256", "ES256"):
            for extra in ({}, {"secret_file": "/s"}):
                self.assertRefused(
                    {"auth": {"jwt": dict(enabled=True, algorithm=algorithm, **extra)}},
                    "auth.jwt.public_key_file",
                    "is required for %s" % (algorithm,),
                )
            conf = parse_with({"auth": {"jwt": {
                "enabled": True, "algorithm": algorithm, "public_key_file": "/k.pem"}}})
            self.assertEqual(conf.auth.jwt.public_key_file, "/k.pem")

    def test_jwt_disabled_needs_nothing(self):
        """
        A disabled JWT section may name an algorithm without its key file.
        """
        conf = parse_with({"auth": {"jwt": {"algorithm": "RS256"}}})
        self.assertIs(conf.auth.jwt.enabled, False)

    def test_mtls_needs_client_ca(self):
        """
        Client-certificate mode C{optional} or C{require} needs
        C{auth.mtls.client_ca} (nothing to verify against otherwise); C{off}
        does not.
        """
        for mode in ("optional", "require"):
            self.assertRefused(
                {"auth": {"mtls": {"mode": mode}}},
                "auth.mtls.client_ca",
                "is required when mode is not off",
            )
        conf = parse_with({"auth": {"mtls": {"mode": "off"}}})
        self.assertEqual(conf.auth.mtls.mode, "off")

    def test_mode_off_unquoted(self):
        """
        C{mode: off} unquoted is a YAML 1.1 boolean: refused as a type
        error rather than read as a mode.
        """
        error = self.assertRaises(
            config.ConfigError, config.parse,
            "tls: {self_signed: true}\nauth:\n  mtls:\n    mode: off\n", FILE,
        )
        self.assertEqual(error.path, "auth.mtls.mode")
        conf = config.parse(
            "tls: {self_signed: true}\nauth:\n  mtls:\n    mode: \"off\"\n", FILE
        )
        self.assertEqual(conf.auth.mtls.mode, "off")


class ListSettingTests(SynchronousTestCase):
    """
    List-valued settings (YAML sequences, frozen into tuples).
    """

    def test_tuple(self):
        """
        A YAML list becomes a tuple in the order given; an empty list is
        the empty default.
        """
        conf = parse_with({"access": {"allow": ["10.0.0.0/8", "::1"], "deny": []}})
        self.assertEqual(conf.access.allow, ("10.0.0.0/8", "::1"))
        self.assertEqual(conf.access.deny, ())

    def test_first_bad_item_named(self):
        """
        With several bad items the first is named by its index.
        """
        error = self.assertRaises(
            config.ConfigError, parse_with,
            {"access": {"deny": ["192.0.2.1", "bad", "worse"]}},
        )
        self.assertEqual(error.path, "access.deny[1]")
        self.assertIn("'bad'", error.problem)

    def test_index_in_flow_and_block_lists(self):
        """
        The index counts from 0 in both YAML list styles.
        """
        for text in [
            "access:\n  trusted_proxies: [127.0.0.1, '::1', nginx]\n",
            "access:\n  trusted_proxies:\n    - 127.0.0.1\n    - '::1'\n    - nginx\n",
        ]:
            error = self.assertRaises(
                config.ConfigError, config.parse, "tls: {self_signed: true}\n" + text, FILE
            )
            self.assertEqual(error.path, "access.trusted_proxies[2]")
            self.assertTrue(str(error).startswith(FILE + ": access.trusted_proxies[2]: "))


class AddressCheckTests(SynchronousTestCase):
    """
    L{config.cidr} and L{config.http_origin}, the item checks of the access
    and CORS lists.
    """

    def test_cidr_accepts(self):
        """
        Single addresses and networks of both families are accepted,
        including host bits set under the mask (C{10.0.0.1/8} is read as
        C{10.0.0.0/8}).
        """
        for value in ("127.0.0.1", "10.0.0.0/8", "10.0.0.1/8", "::1", "2001:db8::/32",
                      "0.0.0.0/0", "::/0"):
            self.assertIsNone(config.cidr(value), value)

    def test_cidr_refuses(self):
        """
        Host names, wildcards, bad masks and bad octets are refused with
        the value in the message.
        """
        for value in ("localhost", "*", "10.0.0.0/33", "10.0.0.256", "2001:db8::/129",
                      "10.0.0.0/8 ", "", "10.0.0.0/255.0.0.1"):
            problem = config.cidr(value)
            self.assertIsNotNone(problem, value)
            self.assertIn(repr(value), problem)

    def test_origin_accepts(self):
        """
        A scheme, a host and an optional port: an origin as browsers send it.
        """
        for value in ("https://chat.example.com", "http://localhost:3000",
                      "http://[::1]:8080", "https://127.0.0.1"):
            self.assertIsNone(config.http_origin(value), value)

    def test_origin_star_refused(self):
        """
        C{'*'} is refused as a CORS origin, saying why (any web page could
        use the API with a visitor's credentials).
        """
        self.assertEqual(
            config.http_origin("*"), "must name origins; '*' would let any web page use the API"
        )
        error = self.assertRaises(
            config.ConfigError, parse_with, {"response": {"cors_origins": ["*"]}}
        )
        self.assertEqual(error.path, "response.cors_origins[0]")

    def test_origin_refuses(self):
        """
        Values that are not origins (no scheme, a path, another scheme, no
        host) are refused.
        """
        for value in ("chat.example.com", "https://chat.example.com/", "https://a.example/app",
                      "ftp://a.example", "https://", "", "null"):
            self.assertIsNotNone(config.http_origin(value), value)


class SafeDefaultsTests(SynchronousTestCase):
    """
    A file that says nothing about the gate gets a closed, rate-limited
    gateway with the seed articles' numbers.
    """

    def setUp(self) -> None:
        self.conf = config.parse("tls: {self_signed: true}\n", FILE)

    def test_auth_required(self):
        """
        Authentication is required, with API keys from the packaged keys
        file; JWT and client certificates are off; the JWT algorithm is a
        signed one.
        """
        auth = self.conf.auth
        self.assertIs(auth.required, True)
        self.assertEqual(auth.keys_file, "/etc/qwengate/keys.yaml")
        self.assertIs(auth.jwt.enabled, False)
        self.assertEqual(auth.jwt.algorithm, "HS256")
        self.assertEqual(auth.mtls.mode, "off")
        self.assertIs(auth.mtls.identity_from_subject, False)

    def test_no_trust_by_default(self):
        """
        No forwarded-for header is believed, no browser origin is allowed,
        no address list filters, nothing is stripped, HSTS is on for a
        year.
        """
        self.assertEqual(self.conf.access, config.AccessConfig((), (), ()))
        self.assertEqual(self.conf.response.cors_origins, ())
        self.assertEqual(self.conf.response.strip_fields, ())
        self.assertEqual(self.conf.response.hsts_max_age, 365 * 24 * 3600)

    def test_connections(self):
        """
        At most 200 concurrent connections.
        """
        self.assertEqual(self.conf.connections.max_total, 200)

    def test_rate_limits(self):
        """
        30 requests per 60 s per key; 5 requests per second per IP with a
        burst of 10.
        """
        limits = self.conf.rate_limits
        self.assertEqual((limits.per_key_requests, limits.per_key_window), (30, 60.0))
        self.assertEqual((limits.per_ip_rate, limits.per_ip_burst), (5.0, 10))

    def test_bans(self):
        """
        3 failed authentications ban the address for 10 minutes.
        """
        self.assertEqual((self.conf.bans.failures, self.conf.bans.duration), (3, 600.0))

    def test_prompt_limit(self):
        """
        The default prompt limit (96000 characters) refuses the seed's
        100,000-character prompt but admits an agent conversation with a
        40,000-character system prompt (which the seed's 32768 would
        refuse), counted the way the chat translation counts.
        """
        from qwen_twist.translate.chat import chat_request

        limit = self.conf.limits.max_prompt_chars
        self.assertEqual(limit, 96000)
        huge = chat_request({"model": "qwen3", "messages": [{"role": "user", "content": "x" * 100000}]})
        self.assertGreater(huge.prompt_chars, limit)
        agent = chat_request({"model": "qwen3", "messages": [
            {"role": "system", "content": "s" * 40000},
            {"role": "user", "content": "Refactor the parser."},
            {"role": "assistant", "content": "Done: " + "d" * 2000},
            {"role": "user", "content": "Now add tests."},
        ]})
        self.assertGreater(agent.prompt_chars, 32768)
        self.assertLessEqual(agent.prompt_chars, limit)

    def test_header_limits(self):
        """
        Request headers: at most 16 KiB, sent within 10 s.
        """
        self.assertEqual(self.conf.limits.max_header_bytes, 16384)
        self.assertEqual(self.conf.limits.header_timeout, 10.0)


class UnknownKeyTests(SynchronousTestCase):
    """
    A typo is an error naming the full path, never a silent default.
    """

    def test_top_level(self):
        """
        An unknown top-level key is named, with the valid choices.
        """
        error = self.assertRaises(
            config.ConfigError, config.parse, "tls: {self_signed: true}\nlisten_port: 1\n", FILE
        )
        self.assertEqual(error.path, "listen_port")
        self.assertEqual(
            str(error),
            "qwengate.yaml: listen_port: unknown key (expected one of: access, admission, audit, "
            "auth, bans, connections, lifecycle, limits, listen, metrics, rate_limits, response, "
            "state_dir, streaming, tls, "
            "translation, upstream)",
        )

    def test_nested(self):
        """
        C{upstream.timout} (a typo) and a typo two levels down are named by
        their dotted path.
        """
        for text, path in [
            ("upstream:\n  timout: 5\n", "upstream.timout"),
            ("upstream:\n  timeouts:\n    conect: 5\n", "upstream.timeouts.conect"),
            ("tls:\n  selfsigned: true\n", "tls.selfsigned"),
        ]:
            if not text.startswith("tls"):
                text = "tls: {self_signed: true}\n" + text
            error = self.assertRaises(config.ConfigError, config.parse, text, FILE)
            self.assertEqual(error.path, path)
            self.assertTrue(str(error).startswith("%s: %s: unknown key" % (FILE, path)))

    def test_nested_lists_choices(self):
        """
        The message of a nested typo lists that section's keys.
        """
        error = self.assertRaises(
            config.ConfigError, config.parse, "tls: {self_signed: true}\nupstream:\n  timout: 5\n", FILE
        )
        self.assertIn("pool_size, timeouts, url", error.problem)

    def test_non_string_key(self):
        """
        A key YAML reads as a number or boolean is unknown, named as text.
        """
        for text, path in [("1: a\n", "1"), ("listen:\n  yes: 1\n", "listen.True")]:
            error = self.assertRaises(config.ConfigError, config.parse, text, FILE)
            self.assertEqual(error.path, path)
            self.assertIn("unknown key", error.problem)


class YAMLTrapTests(SynchronousTestCase):
    """
    PyYAML reads YAML 1.1; what that means is pinned here.
    """

    def test_quoted_port(self):
        """
        C{port: "80"} is a string, refused rather than coerced.
        """
        error = self.assertRaises(
            config.ConfigError, config.parse, 'tls: {self_signed: true}\nlisten: {port: "80"}\n', FILE
        )
        self.assertEqual(error.path, "listen.port")

    def test_yes_is_a_boolean(self):
        """
        C{self_signed: yes} (and C{on}) is a YAML 1.1 boolean, accepted.
        """
        for word in ("yes", "on", "True"):
            conf = config.parse("tls:\n  self_signed: %s\n" % (word,), FILE)
            self.assertIs(conf.tls.self_signed, True)
        conf = config.parse("tls: {self_signed: true}\ntranslation:\n  think_max: no\n", FILE)
        self.assertIs(conf.translation.think_max, False)

    def test_exponent_without_dot_is_a_string(self):
        """
        C{connect: 1e3} is the string C{"1e3"} in YAML 1.1: refused;
        C{1.0e+3} is a number.
        """
        error = self.assertRaises(
            config.ConfigError,
            config.parse,
            "tls: {self_signed: true}\nupstream: {timeouts: {connect: 1e3}}\n",
            FILE,
        )
        self.assertEqual(
            str(error), "qwengate.yaml: upstream.timeouts.connect: must be a number, got a string '1e3'"
        )
        conf = config.parse(
            "tls: {self_signed: true}\nupstream: {timeouts: {connect: 1.0e+3}}\n", FILE
        )
        self.assertEqual(conf.upstream.timeouts.connect, 1000.0)

    def test_none_is_a_string(self):
        """
        C{reasoning_field: none} is the word "none" (YAML's null is
        C{null} or C{~}), a valid choice.
        """
        conf = config.parse("tls: {self_signed: true}\ntranslation: {reasoning_field: none}\n", FILE)
        self.assertEqual(conf.translation.reasoning_field, "none")
        error = self.assertRaises(
            config.ConfigError,
            config.parse,
            "tls: {self_signed: true}\ntranslation: {reasoning_field: ~}\n",
            FILE,
        )
        self.assertEqual(error.path, "translation.reasoning_field")

    def test_huge_integer_for_a_number(self):
        """
        An integer too large for a float is a config error, not an
        C{OverflowError} traceback.
        """
        error = self.assertRaises(
            config.ConfigError,
            config.parse,
            "tls: {self_signed: true}\nupstream: {timeouts: {headers: 1%s}}\n" % ("0" * 400,),
            FILE,
        )
        self.assertEqual(str(error), "qwengate.yaml: upstream.timeouts.headers: must be a finite number")

    def test_date_is_not_a_string(self):
        """
        An unquoted date is a YAML timestamp, refused where text belongs.
        """
        error = self.assertRaises(
            config.ConfigError, config.parse, "tls: {self_signed: true}\nstate_dir: 2024-01-01\n", FILE
        )
        self.assertEqual(error.path, "state_dir")
        self.assertIn("must be a string", error.problem)


class DocumentShapeTests(SynchronousTestCase):
    """
    Sections and documents that are not mappings; empty files.
    """

    def test_section_not_a_mapping(self):
        """
        A section given a scalar or a list is refused, naming the section.
        """
        for text, path, found in [
            ("listen: 8080\n", "listen", "an integer 8080"),
            ("upstream: [a, b]\n", "upstream", "a list"),
            ("upstream:\n  timeouts: 5\n", "upstream.timeouts", "an integer 5"),
            ("tls: self_signed\n", "tls", "a string 'self_signed'"),
        ]:
            if not text.startswith("tls"):
                text = "tls: {self_signed: true}\n" + text
            error = self.assertRaises(config.ConfigError, config.parse, text, FILE)
            self.assertEqual(error.path, path)
            self.assertEqual(
                str(error), "%s: %s: must be a mapping of keys, got %s" % (FILE, path, found)
            )

    def test_document_not_a_mapping(self):
        """
        A document that is a list or a scalar is refused as a whole.
        """
        for text, found in [("- a\n- b\n", "a list"), ("just text\n", "a string 'just text'")]:
            error = self.assertRaises(config.ConfigError, config.parse, text, FILE)
            self.assertEqual(error.path, "")
            self.assertEqual(str(error), "%s: must be a mapping of keys, got %s" % (FILE, found))

    def test_empty_section(self):
        """
        A section with no keys (C{upstream:}) has its defaults.
        """
        conf = config.parse("tls: {self_signed: true}\nupstream:\nlisten: {}\n", FILE)
        self.assertEqual(conf.upstream, config.UpstreamConfig())
        self.assertEqual(conf.listen, config.ListenConfig())

    def test_empty_file_requires_certificate(self):
        """
        An empty (or comment-only) file means all defaults, and then the
        TLS files are required.
        """
        for text in ("", "\n", "# nothing here\n", "---\n"):
            error = self.assertRaises(config.ConfigError, config.parse, text, FILE)
            self.assertEqual(error.path, "tls.certificate")
            self.assertEqual(
                str(error),
                "qwengate.yaml: tls.certificate: is required (or set tls.self_signed: "
                "true for development)",
            )

    def test_missing_tls_section(self):
        """
        A file that sets other keys but has no tls section at all still
        needs the certificate files (an absent section is validated too).
        """
        error = self.assertRaises(
            config.ConfigError, config.parse, "listen:\n  port: 8443\n", FILE
        )
        self.assertEqual(error.path, "tls.certificate")
        self.assertRaises(config.ConfigError, config.build, config.Config, {})

    def test_defaults_with_self_signed(self):
        """
        With C{self_signed} the smallest valid file gives the default
        configuration otherwise.
        """
        conf = config.parse("tls:\n  self_signed: true\n", FILE)
        self.assertEqual(conf, config.Config(tls=config.TLSConfig(self_signed=True)))

    def test_private_key_required(self):
        """
        A certificate without its key (and the reverse) is refused, naming
        the missing key.
        """
        error = self.assertRaises(
            config.ConfigError, config.parse, "tls: {certificate: /c.pem}\n", FILE
        )
        self.assertEqual(error.path, "tls.private_key")
        error = self.assertRaises(
            config.ConfigError, config.parse, "tls: {private_key: /k.pem}\n", FILE
        )
        self.assertEqual(error.path, "tls.certificate")

    def test_explicit_null_certificate(self):
        """
        C{certificate: null} is the same as leaving it out: required unless
        self-signed, accepted with it.
        """
        error = self.assertRaises(
            config.ConfigError, config.parse, "tls: {certificate: null, private_key: /k}\n", FILE
        )
        self.assertEqual(error.path, "tls.certificate")
        conf = config.parse("tls: {certificate: null, self_signed: true}\n", FILE)
        self.assertIsNone(conf.tls.certificate)

    def test_files_without_self_signed(self):
        """
        Both files given is a valid production TLS section.
        """
        conf = config.parse("tls: {certificate: /c.pem, private_key: /k.pem}\n", FILE)
        self.assertEqual(conf.tls.certificate, "/c.pem")
        self.assertEqual(conf.tls.private_key, "/k.pem")
        self.assertIs(conf.tls.self_signed, False)


class InvalidYAMLTests(SynchronousTestCase):
    """
    Syntax errors name the file and the line.
    """

    def test_line_reported(self):
        """
        The message carries the 1-based line of the problem.
        """
        cases = [
            ("listen:\n  port: 1\n\tbad: 2\n", 3),
            ("tls:\n  self_signed: true\n  ciphers: \"unterminated\n", 4),
            ("listen:\n  port: 1\n address: x\n", 3),
        ]
        for text, line in cases:
            error = self.assertRaises(config.ConfigError, config.parse, text, FILE)
            self.assertEqual(error.path, "")
            self.assertTrue(
                str(error).startswith("%s: invalid YAML at line %d: " % (FILE, line)), str(error)
            )
            self.assertNotIn("\n", str(error))

    def test_several_documents(self):
        """
        Two YAML documents in one file are refused.
        """
        error = self.assertRaises(
            config.ConfigError, config.parse, "tls: {self_signed: true}\n---\nlisten: {}\n", FILE
        )
        self.assertIn("invalid YAML at line 2", str(error))

    def test_no_python_objects(self):
        """
        The file is read with C{safe_load}: a Python tag is an error, not an
        object.
        """
        error = self.assertRaises(
            config.ConfigError, config.parse, "state_dir: !!python/object/apply:os.getcwd []\n", FILE
        )
        self.assertTrue(str(error).startswith("qwengate.yaml: invalid YAML at line 1"))


class LoadTests(SynchronousTestCase):
    """
    L{config.load}: reading the file.
    """

    def write(self, data: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_load(self):
        """
        A valid file is read and validated.
        """
        path = self.write(b"tls:\n  self_signed: true\nlisten:\n  port: 8443\n")
        conf = config.load(path)
        self.assertEqual(conf.listen.port, 8443)

    def test_errors_name_the_file(self):
        """
        Validation and syntax errors of a loaded file carry its path.
        """
        path = self.write(b"tls: {self_signed: true}\nlisten: {port: 0}\n")
        error = self.assertRaises(config.ConfigError, config.load, path)
        self.assertEqual(error.filename, path)
        self.assertEqual(str(error), "%s: listen.port: must be between 1 and 65535, got 0" % (path,))
        path = self.write(b"listen: [\n")
        error = self.assertRaises(config.ConfigError, config.load, path)
        self.assertTrue(str(error).startswith("%s: invalid YAML at line 2" % (path,)), str(error))

    def test_missing_file(self):
        """
        A missing file is a config error naming it.
        """
        path = self.mktemp()
        error = self.assertRaises(config.ConfigError, config.load, path)
        self.assertEqual(str(error), "%s: cannot read: No such file or directory" % (path,))

    def test_directory(self):
        """
        A directory given as the file is a config error, not a traceback.
        """
        path = self.mktemp()
        os.mkdir(path)
        error = self.assertRaises(config.ConfigError, config.load, path)
        self.assertEqual(str(error), "%s: cannot read: Is a directory" % (path,))

    def test_unreadable_file(self):
        """
        A file the daemon may not read is a config error naming it.
        """
        if os.geteuid() == 0:
            raise self.skipTest("root can read a mode 0000 file")
        path = self.write(b"tls: {self_signed: true}\n")
        os.chmod(path, 0)
        self.addCleanup(os.chmod, path, 0o600)
        error = self.assertRaises(config.ConfigError, config.load, path)
        self.assertEqual(str(error), "%s: cannot read: Permission denied" % (path,))

    def test_not_utf8(self):
        """
        A file that is not UTF-8 (e.g. Latin-1) is refused by name.
        """
        path = self.write(b"state_dir: /var/lib/qw\xe9ngate\ntls: {self_signed: true}\n")
        error = self.assertRaises(config.ConfigError, config.load, path)
        self.assertEqual(str(error), "%s: is not valid UTF-8" % (path,))

    def test_utf8_text(self):
        """
        Non-ASCII UTF-8 values are read as text.
        """
        path = self.write("state_dir: /var/lib/qwéngate\ntls: {self_signed: true}\n".encode("utf-8"))
        self.assertEqual(config.load(path).state_dir, "/var/lib/qwéngate")

    def test_parse_default_filename(self):
        """
        L{config.parse} without a file name still prefixes its errors.
        """
        error = self.assertRaises(config.ConfigError, config.parse, "listen: 1\n")
        self.assertEqual(str(error), "<config>: listen: must be a mapping of keys, got an integer 1")


class FrozenTests(SynchronousTestCase):
    """
    The validated configuration cannot be changed after start-up.
    """

    def test_assignment_raises(self):
        """
        Assigning to any section or key raises.
        """
        conf = config.parse("tls: {self_signed: true}\n", FILE)
        for obj, name, value in [
            (conf, "state_dir", "/tmp"),
            (conf, "listen", None),
            (conf.listen, "port", 1),
            (conf.tls, "self_signed", False),
            (conf.upstream.timeouts, "connect", 1.0),
            (conf.auth.jwt, "enabled", True),
            (conf.access, "allow", ()),
        ]:
            self.assertRaises(dataclasses.FrozenInstanceError, setattr, obj, name, value)

    def test_lists_are_tuples(self):
        """
        List settings are frozen into tuples: their items cannot be changed
        either.
        """
        conf = config.parse("tls: {self_signed: true}\naccess: {deny: [192.0.2.1]}\n", FILE)
        self.assertIsInstance(conf.access.deny, tuple)
        self.assertRaises(TypeError, operator.setitem, conf.access.deny, 0, "0.0.0.0/0")

    def test_no_mutable_defaults(self):
        """
        A list or dict default is refused when a key is declared.
        """
        self.assertRaises(TypeError, config.setting, [])
        self.assertRaises(TypeError, config.setting, {})


class ConfigErrorTests(SynchronousTestCase):
    """
    L{config.ConfigError} formatting.
    """

    def test_str(self):
        """
        The parts present are joined with C{": "}.
        """
        self.assertEqual(str(config.ConfigError("a.b", "bad", "f.yaml")), "f.yaml: a.b: bad")
        self.assertEqual(str(config.ConfigError("a.b", "bad")), "a.b: bad")
        self.assertEqual(str(config.ConfigError("", "bad", "f.yaml")), "f.yaml: bad")

    def test_filename_set_later(self):
        """
        Setting the file name afterwards (as L{config.parse} does) changes
        the message.
        """
        error = config.ConfigError("a", "bad")
        error.filename = "f.yaml"
        self.assertEqual(str(error), "f.yaml: a: bad")
