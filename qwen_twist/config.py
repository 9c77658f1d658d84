# -*- test-case-name: tests.test_config -*-
"""
The configuration file, validated once at start-up into frozen objects.

Why a small schema engine instead of hand-written parsing per key: every
section is a frozen dataclass whose fields carry their type, default and
check, so adding a key (later issues add auth, limits, queues) is one line,
and every error names the file and the dotted key path the operator has to
fix, e.g. C{qwengate.yaml: upstream.timeouts.connect: must be > 0, got -1}.

Rules:
  - YAML is read with C{safe_load}; nothing is coerced: PyYAML implements
    YAML 1.1, so C{yes} is a boolean and C{1e3} a string, and a string where a
    number belongs is an error, not a guess.
  - Unknown keys are errors (a typo must not silently fall back to a
    default, least of all for a security setting).
  - Relative paths are taken relative to the directory the daemon starts in.

The generic engine (L{setting}, the checks, L{build}) lives in
L{qwen_twist.schema}; its names are re-exported here so callers keep
importing them from one place.

No Twisted imports and no I/O besides reading the one file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import yaml

from qwen_twist import schema
from qwen_twist.translate.validate import ALLOWED_OPTIONS
from qwen_twist.schema import (
    ConfigError,
    _join,
    between,
    build,
    cidr,
    http_origin,
    http_url,
    ip_address,
    non_empty,
    non_negative,
    one_of,
    positive,
    section,
    setting,
)

MiB = 1024 * 1024

#: Every native option Ollama knows (L{qwen_twist.translate.validate}).
ALL_OPTIONS = frozenset(ALLOWED_OPTIONS)

#: The sampling options forwarded by default: they change what one answer
#: looks like, not how the server loads or runs the model for everyone
#: (num_gpu, num_thread, use_mlock, vocab_only, ... are left out).
DEFAULT_ALLOWED_OPTIONS = (
    "temperature", "top_p", "top_k", "min_p", "typical_p", "repeat_penalty",
    "repeat_last_n", "presence_penalty", "frequency_penalty", "seed", "stop",
    "num_predict", "num_ctx", "mirostat", "mirostat_tau", "mirostat_eta", "tfs_z",
)


# Sections -----------------------------------------------------------------


@dataclass(frozen=True)
class ListenConfig:
    """
    Where the public TLS listener binds.
    """

    address: str = setting("0.0.0.0", ip_address, "interface address; '::' for IPv6")
    port: int = setting(18789, between(1, 65535), "TCP port")
    backlog: int = setting(511, between(1, 65535), "listen(2) backlog")


@dataclass(frozen=True)
class TLSConfig:
    """
    The server certificate and protocol floor.
    """

    certificate: Optional[str] = setting(
        None, non_empty, "PEM file: the certificate followed by its chain"
    )
    private_key: Optional[str] = setting(None, non_empty, "PEM file: the private key")
    self_signed: bool = setting(
        False,
        None,
        "development only: create a self-signed localhost certificate in "
        "state_dir/tls when none exists",
    )
    min_version: str = setting("1.2", one_of("1.2", "1.3"), "lowest TLS version")
    ciphers: str = setting(
        "ECDHE+AESGCM:ECDHE+CHACHA20",
        non_empty,
        "OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are OpenSSL's)",
    )

    def _validate(self, path: str) -> None:
        """
        A real deployment needs both PEM files; only development may
        generate a certificate.
        """
        if self.self_signed:
            return
        for name in ("certificate", "private_key"):
            if getattr(self, name) is None:
                raise ConfigError(
                    _join(path, name),
                    "is required (or set tls.self_signed: true for development)",
                )


@dataclass(frozen=True)
class TimeoutsConfig:
    """
    Upstream deadlines in seconds; 0 disables the optional ones.
    """

    connect: float = setting(3.0, positive, "TCP connect to Ollama")
    headers: float = setting(
        900.0,
        positive,
        "until Ollama's response headers; a non-streaming answer only gets "
        "headers once generation ends, so this is also the non-stream cap",
    )
    first_token: float = setting(
        600.0,
        positive,
        "streams: until Ollama's first chunk (a 32B model can take minutes to load)",
    )
    idle: float = setting(300.0, positive, "longest silence between stream chunks")
    total: float = setting(0.0, non_negative, "absolute cap per request; 0 = none")


@dataclass(frozen=True)
class BreakerConfig:
    """
    The circuit breaker in front of Ollama.
    """

    threshold: int = setting(
        5, between(0, 1000000),
        "consecutive failures (refused, reset, timeout, runner crash), at least "
        "'burst' seconds apart, that open it; 0 = never (nor on the rate)",
    )
    cooldown: float = setting(
        30.0, positive,
        "seconds it stays open (fast 503s) before one probe request is let through",
    )
    window: float = setting(
        10.0, positive, "seconds over which the failure rate is measured"
    )
    min_calls: int = setting(
        20, between(1, 1000000),
        "calls within the window before the failure rate may open it",
    )
    failure_rate: float = setting(
        0.5, between(0.01, 1.0),
        "share of failed calls within the window that opens it",
    )
    burst: float = setting(
        0.1, non_negative,
        "failures closer together than this count once toward 'threshold' "
        "(many concurrent calls failing at one instant are one event)",
    )


@dataclass(frozen=True)
class UpstreamConfig:
    """
    The Ollama server behind the gateway.
    """

    url: str = setting("http://127.0.0.1:11434", http_url, "Ollama base URL")
    urls: Tuple[str, ...] = setting(
        (), http_url,
        "several Ollama base URLs (routing, health checks, retry once); "
        "empty = just url",
    )
    health_interval: float = setting(
        10.0, positive, "seconds between health checks of several upstreams"
    )
    pool_size: int = setting(
        64, between(1, 10000), "persistent connections kept open to Ollama"
    )
    max_response_bytes: int = setting(
        16 * MiB, between(MiB, 1024 * MiB),
        "largest non-streaming Ollama answer read for chat, completions and models",
    )
    max_embeddings_bytes: int = setting(
        96 * MiB, between(MiB, 4096 * MiB),
        "largest Ollama embeddings answer read (4096 dimensions take ~20 KB per input)",
    )
    timeouts: TimeoutsConfig = section(TimeoutsConfig)
    breaker: BreakerConfig = section(BreakerConfig)


@dataclass(frozen=True)
class StreamingConfig:
    """
    Server-sent events to clients.
    """

    keepalive_interval: float = setting(
        15.0,
        non_negative,
        "seconds between ': keep-alive' comments while waiting; 0 = never",
    )
    max_line_bytes: int = setting(
        16 * MiB, between(8 * MiB, 256 * MiB), "longest NDJSON line accepted from Ollama"
    )
    slow_reader_timeout: float = setting(
        30.0, positive,
        "seconds a stream may stay blocked on a client that reads nothing; then "
        "it is cut and its GPU slot freed",
    )


@dataclass(frozen=True)
class TranslationConfig:
    """
    Choices in the OpenAI <-> Ollama mapping.
    """

    reasoning_field: str = setting(
        "reasoning_content",
        one_of("reasoning_content", "reasoning", "both", "none"),
        "where Qwen3 'thinking' goes in responses",
    )
    think_max: bool = setting(
        True,
        None,
        "send think:'max' for reasoning effort xhigh/max (Ollama >= 0.22); "
        "false sends 'high'",
    )


@dataclass(frozen=True)
class LimitsConfig:
    """
    Input limits applied before any upstream call.
    """

    max_body_bytes: int = setting(
        8 * MiB, between(1024, 1024 * MiB), "largest request body; 413 above"
    )
    max_prompt_chars: int = setting(
        96000,
        between(1, 100 * 1000 * 1000),
        "most characters of text in one request's prompt (all messages); 400 "
        "'prompt too long, max N chars' above",
    )
    max_header_bytes: int = setting(
        16384, between(1024, 1024 * 1024), "total size of a request's headers"
    )
    header_timeout: float = setting(
        10.0, positive, "seconds a client may take to send a request's headers"
    )
    max_tokens: int = setting(
        8192, between(1, 10 ** 7),
        "largest output cap a request may ask for (max_tokens, "
        "max_completion_tokens, options.num_predict); larger or unbounded (-1) "
        "values are lowered to it, and a request that names none reserves this "
        "many tokens of a key's token budget",
    )
    max_num_ctx: int = setting(
        32768, between(1, 10 ** 8),
        "largest context window (num_ctx) a request may ask for; 400 above "
        "(a larger one forces a model reload with more memory for everyone)",
    )
    keep_alive_min: float = setting(
        60.0, non_negative,
        "shortest keep_alive (seconds) a request may ask for; shorter, and 0 "
        "(unload now), are raised to it",
    )
    keep_alive_max: float = setting(
        1800.0, positive,
        "longest keep_alive (seconds) a request may ask for; longer, and "
        "negative (forever), are lowered to it",
    )
    allowed_options: Tuple[str, ...] = setting(
        DEFAULT_ALLOWED_OPTIONS, one_of(*sorted(ALL_OPTIONS)),
        "native options a request may send; others are refused with 400 naming "
        "the option unless the key has the options:all scope",
    )
    max_embedding_inputs: int = setting(
        2048, between(1, 1000000), "most inputs in one embeddings request (OpenAI's 2048)"
    )
    body_timeout: float = setting(
        10.0,
        positive,
        "a request body is checked every this many seconds: unfinished and "
        "below body_min_rate over the last period, it gets 408 and the "
        "connection closes (a small body must arrive within this time)",
    )
    body_min_rate: int = setting(
        1024, between(1, 1024 * MiB), "bytes per second a request body must keep up"
    )

    def _validate(self, path: str) -> None:
        if self.keep_alive_min > self.keep_alive_max:
            raise ConfigError(_join(path, "keep_alive_min"), "must be <= keep_alive_max")


@dataclass(frozen=True)
class JWTConfig:
    """
    JSON Web Tokens as an alternative to API keys.
    """

    enabled: bool = setting(False, None, "accept JWT bearer tokens")
    algorithm: str = setting(
        "HS256", one_of("HS256", "RS256", "ES256"), "the one algorithm accepted"
    )
    secret_file: Optional[str] = setting(None, non_empty, "HS256 shared secret file")
    public_key_file: Optional[str] = setting(
        None, non_empty, "PEM public key file for RS256/ES256"
    )
    issuer: Optional[str] = setting(None, non_empty, "required 'iss' claim, if set")
    audience: Optional[str] = setting(None, non_empty, "required 'aud' claim, if set")
    max_lifetime: float = setting(
        300.0, positive, "longest accepted exp - iat in seconds (tokens need iat)"
    )
    leeway: float = setting(0.0, non_negative, "clock skew allowed on exp/nbf/iat")
    user_claim: str = setting("sub", non_empty, "claim that names the user")

    def _validate(self, path: str) -> None:
        if not self.enabled:
            return
        if self.algorithm == "HS256" and self.secret_file is None:
            raise ConfigError(_join(path, "secret_file"), "is required for HS256")
        if self.algorithm != "HS256" and self.public_key_file is None:
            raise ConfigError(
                _join(path, "public_key_file"), "is required for %s" % (self.algorithm,)
            )


@dataclass(frozen=True)
class MutualTLSConfig:
    """
    Client certificates.
    """

    mode: str = setting(
        "off", one_of("off", "optional", "require"),
        "off; optional (verify when sent); require (handshake fails without one)",
    )
    client_ca: Optional[str] = setting(None, non_empty, "PEM bundle of client CAs")
    identity_from_subject: bool = setting(
        False, None, "a verified client certificate's subject CN is an identity"
    )

    def _validate(self, path: str) -> None:
        if self.mode != "off" and self.client_ca is None:
            raise ConfigError(_join(path, "client_ca"), "is required when mode is not off")


@dataclass(frozen=True)
class AuthConfig:
    """
    Who may call the API.
    """

    required: bool = setting(
        True, None, "every /v1 request needs an API key, a JWT or a client certificate"
    )
    keys_file: Optional[str] = setting(
        "/etc/qwengate/keys.yaml",
        non_empty,
        "YAML file of hashed API keys (qwengate-keys manages it); a missing "
        "file means no keys; null disables API keys",
    )
    jwt: JWTConfig = section(JWTConfig)
    mtls: MutualTLSConfig = section(MutualTLSConfig)

    def _validate(self, path: str) -> None:
        if not self.required:
            return
        if self.keys_file is None and not self.jwt.enabled and not (
            self.mtls.mode != "off" and self.mtls.identity_from_subject
        ):
            raise ConfigError(
                _join(path, "keys_file"),
                "is required when auth.required is true and neither JWT nor "
                "client-certificate identities are enabled",
            )


@dataclass(frozen=True)
class AccessConfig:
    """
    Address rules, applied to the TCP peer before any TLS work.
    """

    allow: Tuple[str, ...] = setting(
        (), cidr, "CIDRs allowed to connect; empty = every address"
    )
    deny: Tuple[str, ...] = setting((), cidr, "CIDRs refused even when allowed")
    trusted_proxies: Tuple[str, ...] = setting(
        (), cidr, "proxies whose X-Forwarded-For / X-Real-IP is believed"
    )


@dataclass(frozen=True)
class ConnectionsConfig:
    """
    The per-IP connection filter in front of TLS.
    """

    max_total: int = setting(200, between(1, 1000000), "concurrent connections in all")
    max_per_ip: int = setting(50, between(1, 1000000), "concurrent connections per IP")
    rate: float = setting(10.0, positive, "new connections per second per IP")
    burst: int = setting(20, between(1, 1000000), "new connections per IP in a burst")
    handshake_timeout: float = setting(
        10.0,
        positive,
        "seconds from accept to a completed TLS handshake; a bare TCP connect "
        "or a stalled handshake is closed then",
    )
    evict_strangers: bool = setting(
        True,
        None,
        "at max_total, close the oldest connection that has not made an "
        "authenticated request to admit a new one, so a few addresses cannot "
        "fill the gateway",
    )
    ipv6_prefix: int = setting(
        64,
        between(16, 128),
        "IPv6 peers in one prefix of this length count as one address for "
        "max_per_ip and the connection rate (a host usually owns a /64)",
    )
    refusal_answers: int = setting(
        3,
        between(0, 1000),
        "refused connections (banned, over a cap or the rate) per address and "
        "minute answered over TLS with 403/429 and Retry-After; beyond this "
        "they are dropped at accept; 0 = always drop",
    )
    refusal_budget: int = setting(
        60,
        between(0, 1000000),
        "refused connections answered per minute over all addresses (the TLS "
        "work a flood can cost at most)",
    )


@dataclass(frozen=True)
class RateLimitsConfig:
    """
    Request and token budgets (429 with Retry-After above them).
    """

    per_key_requests: int = setting(
        30, between(0, 10000000), "requests per key per window; 0 = unlimited"
    )
    per_key_window: float = setting(60.0, positive, "the per-key window in seconds")
    per_ip_rate: float = setting(
        5.0, non_negative, "requests per second per client IP; 0 = unlimited"
    )
    per_ip_burst: int = setting(10, between(1, 10000000), "per-IP burst")
    per_key_tokens_per_minute: int = setting(
        0, between(0, 10 ** 12), "prompt+completion tokens per key per minute; 0 = off"
    )


@dataclass(frozen=True)
class BansConfig:
    """
    Addresses that keep failing authentication.
    """

    failures: int = setting(
        3, between(0, 1000000), "authentication failures within window; 0 = never ban"
    )
    duration: float = setting(600.0, positive, "ban length in seconds")
    window: float = setting(
        600.0, positive,
        "seconds a failure counts towards a ban (successes in between do not reset it)",
    )


@dataclass(frozen=True)
class AdmissionConfig:
    """
    The gateway's own queue in front of the GPU's parallel slots.
    """

    slots: int = setting(
        4, between(0, 100000),
        "generations sent to each Ollama server at once; match its "
        "OLLAMA_NUM_PARALLEL; 0 = no queue",
    )
    max_depth: int = setting(256, between(0, 10000000), "requests waiting at most")
    max_wait: float = setting(120.0, positive, "seconds a request may wait for a slot")
    per_key: int = setting(
        0, between(0, 100000),
        "generations one key (or anonymous address) may hold at once; 0 = "
        "slots - 1 (at least 1), so one tenant never holds every slot",
    )


@dataclass(frozen=True)
class LifecycleConfig:
    """
    Stopping and reloading.
    """

    drain_timeout: float = setting(
        30.0,
        non_negative,
        "on SIGTERM, seconds in-flight requests and streams may take to finish "
        "after the listener closed; then streams end with an error event",
    )


@dataclass(frozen=True)
class ResponseConfig:
    """
    Response hygiene.
    """

    strip_fields: Tuple[str, ...] = setting(
        (), non_empty, "dotted JSON fields removed from API responses"
    )
    cors_origins: Tuple[str, ...] = setting(
        (), http_origin, "browser origins allowed by CORS; empty = none"
    )
    hsts_max_age: int = setting(
        31536000, between(0, 10 ** 9), "Strict-Transport-Security max-age; 0 = omit"
    )


@dataclass(frozen=True)
class MetricsConfig:
    """
    The Prometheus metrics listener (plain HTTP, separate from the API port).
    """

    enabled: bool = setting(True, None, "serve /metrics on its own listener", restart=True)
    address: str = setting(
        "127.0.0.1", ip_address, "interface of the metrics listener (loopback by default)",
        restart=True,
    )
    port: int = setting(9189, between(1, 65535), "TCP port of the metrics listener",
                        restart=True)
    bearer_token_file: Optional[str] = setting(
        None, non_empty,
        "file holding a token scrapers must send as 'Authorization: Bearer'; "
        "null = no token (fine on loopback)",
    )
    tls: bool = setting(
        False, None, "serve the metrics over TLS with the API's certificate", restart=True
    )


@dataclass(frozen=True)
class AuditConfig:
    """
    The JSON-lines audit log: one line per API call.
    """

    enabled: bool = setting(True, None, "write the audit log", restart=True)
    file: Optional[str] = setting(
        None, non_empty,
        "the audit file, rotated daily (UTC) to FILE.YYYY-MM-DD[.gz]; null = "
        "state_dir/audit/audit.log; '-' = standard output (journald), no rotation",
        restart=True,
    )
    retention: int = setting(180, between(1, 100000), "rotated daily files kept")
    compress: bool = setting(True, None, "gzip rotated files")
    user_header: Optional[str] = setting(
        None, non_empty,
        "request header naming the end user (e.g. X-User-Id), believed only "
        "from access.trusted_proxies; recorded as 'user'",
    )


@dataclass(frozen=True)
class Config:
    """
    The whole configuration file.
    """

    state_dir: str = setting("/var/lib/qwengate", non_empty, "writable state directory",
                             restart=True)
    listen: ListenConfig = section(ListenConfig, restart=True)
    tls: TLSConfig = section(TLSConfig)
    upstream: UpstreamConfig = section(UpstreamConfig)
    streaming: StreamingConfig = section(StreamingConfig)
    translation: TranslationConfig = section(TranslationConfig)
    limits: LimitsConfig = section(LimitsConfig)
    auth: AuthConfig = section(AuthConfig)
    access: AccessConfig = section(AccessConfig)
    connections: ConnectionsConfig = section(ConnectionsConfig)
    rate_limits: RateLimitsConfig = section(RateLimitsConfig)
    bans: BansConfig = section(BansConfig)
    response: ResponseConfig = section(ResponseConfig)
    admission: AdmissionConfig = section(AdmissionConfig)
    lifecycle: LifecycleConfig = section(LifecycleConfig)
    metrics: MetricsConfig = section(MetricsConfig)
    audit: AuditConfig = section(AuditConfig)


def parse(text: str, filename: str = "<config>") -> Config:
    """
    Parse and validate a YAML document.

    @raise ConfigError: with C{filename} set.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = " at line %d" % (mark.line + 1,) if mark is not None else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError("", "invalid YAML%s: %s" % (where, problem), filename)
    try:
        return build(Config, data)
    except ConfigError as e:
        e.filename = filename
        raise


def load(filename: str) -> Config:
    """
    Read and validate the configuration file C{filename}.

    @raise ConfigError: when it cannot be read or is invalid.
    """
    try:
        with open(filename, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError("", "cannot read: %s" % (e.strerror or e,), filename)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("", "is not valid UTF-8", filename)
    return parse(text, filename)


def describe_keys(cls: type = Config, path: str = "") -> list:
    """
    Every key as C{(dotted path, default, description)}, for the docs test
    that keeps the reference config and README complete; by default those
    of the whole L{Config}.
    """
    return schema.describe_keys(cls, path)
