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

No Twisted imports and no I/O besides reading the one file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Tuple
from urllib.parse import urlsplit

import yaml

MiB = 1024 * 1024


class ConfigError(Exception):
    """
    An invalid configuration value.

    @ivar path: the dotted key path (C{"upstream.timeouts.connect"}), or
        C{""} for the document as a whole.
    @ivar problem: what is wrong, in words.
    @ivar filename: the file, once known.
    """

    def __init__(self, path: str, problem: str, filename: str = "") -> None:
        self.path = path
        self.problem = problem
        self.filename = filename
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [p for p in (self.filename, self.path) if p]
        return ": ".join(parts + [self.problem])


Check = Callable[[Any], Optional[str]]


def setting(default: Any, check: Optional[Check] = None, doc: str = "") -> Any:
    """
    Declare a config field: its default, an optional check returning an
    error text (or None when fine), and a one-line description.
    """
    if isinstance(default, (list, dict)):
        raise TypeError("use a tuple or a section for mutable defaults")
    return field(default=default, metadata={"check": check, "doc": doc})


def section(cls: type) -> Any:
    """
    Declare a nested section whose defaults are the section's own.
    """
    return field(default_factory=cls, metadata={"check": None, "doc": ""})


# Checks -------------------------------------------------------------------


def positive(value: Any) -> Optional[str]:
    return None if value > 0 else "must be > 0, got %r" % (value,)


def non_negative(value: Any) -> Optional[str]:
    return None if value >= 0 else "must be >= 0, got %r" % (value,)


def between(low: float, high: float) -> Check:
    def check(value: Any) -> Optional[str]:
        if low <= value <= high:
            return None
        return "must be between %s and %s, got %r" % (low, high, value)

    return check


def one_of(*choices: str) -> Check:
    def check(value: Any) -> Optional[str]:
        if value in choices:
            return None
        return "must be one of %s, got %r" % (", ".join(map(repr, choices)), value)

    return check


def ip_address(value: Any) -> Optional[str]:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "must be an IPv4 or IPv6 address, got %r" % (value,)
    return None


def http_url(value: Any) -> Optional[str]:
    try:
        parts = urlsplit(value)
    except ValueError:
        # e.g. an unclosed IPv6 bracket: "http://[::1"
        return "must be an http:// or https:// URL with a host, got %r" % (value,)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host, got %r" % (value,)
    if parts.query or parts.fragment or parts.username or parts.password:
        return "must not contain credentials, a query or a fragment"
    try:
        parts.port
    except ValueError:
        return "has an invalid port: %r" % (value,)
    return None


def non_empty(value: Any) -> Optional[str]:
    return None if value.strip() else "must not be empty"


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
        "consecutive failures (refused, reset, timeout, 5xx) that open it; 0 = never",
    )
    cooldown: float = setting(
        30.0, positive,
        "seconds it stays open (fast 503s) before one probe request is let through",
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


def cidr(value: Any) -> Optional[str]:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return "must be an IPv4 or IPv6 address or CIDR network, got %r" % (value,)
    return None


def http_origin(value: Any) -> Optional[str]:
    if value == "*":
        return "must name origins; '*' would let any web page use the API"
    wrong = "must be an origin such as https://chat.example.com, got %r" % (value,)
    try:
        parts = urlsplit(value)
        parts.port
    except ValueError:
        return wrong
    if (parts.scheme not in ("http", "https") or not parts.hostname or parts.path
            or parts.query or parts.fragment or parts.username or parts.password):
        return wrong
    return None


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

    failures: int = setting(3, between(0, 1000000), "consecutive failures; 0 = never ban")
    duration: float = setting(600.0, positive, "ban length in seconds")


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
class Config:
    """
    The whole configuration file.
    """

    state_dir: str = setting("/var/lib/qwengate", non_empty, "writable state directory")
    listen: ListenConfig = section(ListenConfig)
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


# The engine ---------------------------------------------------------------

_TYPE_NAMES = {int: "an integer", float: "a number", bool: "a boolean", str: "a string"}


def _unwrap_optional(hint: Any) -> tuple:
    if typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _convert_scalar(hint: type, value: Any, path: str) -> Any:
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, "must be a number, got %s" % (_describe(value),))
        try:
            number = float(value)
        except OverflowError:
            # an integer literal too large for a float (400 digits)
            raise ConfigError(path, "must be a finite number")
        if not math.isfinite(number):
            raise ConfigError(path, "must be a finite number")
        return number
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, "must be an integer, got %s" % (_describe(value),))
        return value
    if hint in (bool, str):
        if not isinstance(value, hint):
            raise ConfigError(
                path, "must be %s, got %s" % (_TYPE_NAMES[hint], _describe(value))
            )
        return value
    raise TypeError("unsupported config type %r at %s" % (hint, path))


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)
    if isinstance(value, (dict, list)):
        return kind
    return "%s %r" % (kind, value)


def _join(prefix: str, key: str) -> str:
    return "%s.%s" % (prefix, key) if prefix else key


def build(cls: type, data: Any, path: str = "") -> Any:
    """
    Validate C{data} (a parsed YAML mapping) into the dataclass C{cls}.

    @raise ConfigError: naming the dotted key path of the first problem.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, "must be a mapping of keys, got %s" % (_describe(data),))
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if not isinstance(key, str) or key not in fields:
            raise ConfigError(
                _join(path, str(key)),
                "unknown key (expected one of: %s)" % (", ".join(sorted(fields)),),
            )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        key_path = _join(path, name)
        hint, optional = _unwrap_optional(hints[name])
        if dataclasses.is_dataclass(hint):
            # An absent section is built too, so its own _validate runs: a
            # file without a tls section still needs certificate files.
            values[name] = build(hint, data.get(name), key_path)
            continue
        if name not in data:
            continue
        raw = data[name]
        if raw is None and optional:
            values[name] = None
            continue
        check = f.metadata.get("check")
        if typing.get_origin(hint) is tuple:
            # A list setting: every item has the item type and passes the
            # check; errors name the item (allow[2]).
            (item_hint, _) = typing.get_args(hint)
            if not isinstance(raw, list):
                raise ConfigError(key_path, "must be a list, got %s" % (_describe(raw),))
            items = []
            for i, item in enumerate(raw):
                item_path = "%s[%d]" % (key_path, i)
                item = _convert_scalar(item_hint, item, item_path)
                problem = check(item) if check else None
                if problem:
                    raise ConfigError(item_path, problem)
                items.append(item)
            values[name] = tuple(items)
            continue
        value = _convert_scalar(hint, raw, key_path)
        problem = check(value) if check else None
        if problem:
            raise ConfigError(key_path, problem)
        values[name] = value
    result = cls(**values)
    validate = getattr(result, "_validate", None)
    if validate is not None:
        validate(path)
    return result


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


def merge_settings(base: dict, overrides: dict) -> dict:
    """
    Deep-merge two raw (parsed YAML) settings mappings, C{overrides}
    winning; for layering a test's or a benchmark's changes over a base.
    """
    result = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge_settings(result[key], value)
        else:
            result[key] = value
    return result


def describe_keys(cls: type = Config, path: str = "") -> list:
    """
    Every key as C{(dotted path, default, description)}, for the docs test
    that keeps the reference config and README complete.
    """
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key_path = _join(path, f.name)
        hint, _ = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(hint):
            rows.extend(describe_keys(hint, key_path))
        else:
            rows.append((key_path, f.default, f.metadata.get("doc", "")))
    return rows
