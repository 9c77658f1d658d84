# -*- test-case-name: tests.gate.test_hooks -*-
"""
The request-level gate: who is calling, from where, and whether they may
call now. These are the admission hooks of L{qwen_twist.pipeline.Gateway},
run in this order before any upstream work:

  1. L{AddressHook}: the client address (the TCP peer, or the rightmost
     untrusted X-Forwarded-For hop when the peer is a trusted proxy), which
     must be allowed and not banned. The TCP peer itself was already checked
     at accept time by L{qwen_twist.gate.peerfilter}.
  2. L{IdentityHook}: a client certificate subject, an API key
     (C{Authorization: Bearer} or C{X-Api-Key}) or a JWT. Failures are 401
     C{invalid api key} and count toward the address's ban; a known identity
     that may not use the model is 403.
  3. L{PromptLimitHook}: the prompt's total characters.
  4. L{RateLimitHook}: per-IP and per-key request buckets and the per-key
     token budget (reserved from C{max_tokens} up front, settled with
     Ollama's own counts when the call ends), with OpenAI-style
     C{x-ratelimit-*} headers on every response.

Why hooks and not code in the Resources: the endpoints do not change when a
rule is added, and an unauthenticated call provably costs the upstream
nothing (the hooks run before the first upstream byte).

No work before identity: the address, per-IP rate and identity checks
depend on the request head only, so they also run as I{screens}
(C{screen(request, ctx, kind)}), called by the HTTP channel as soon as the
headers are parsed and before a single body byte is read or a
C{100 Continue} is sent (L{qwen_twist.web.screen}). A refused request
costs neither body memory nor JSON parsing, and every request, however
malformed its body, has paid its per-IP token first. The admission hooks
then take the screened results (C{ctx.screened}) instead of
checking twice. C{kind} is C{"api"} (identity required, per-IP rate
charged) or C{"ready"} (identity optional, only used to show details).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from twisted.logger import Logger
from zope.interface import implementer

from qwen_twist import errors
from qwen_twist.gate.addresses import AddressRules, parse_address
from qwen_twist.gate.queue import AdmissionHook, SlotQueue
from qwen_twist.gate.bans import BanList
from qwen_twist.gate.peerfilter import TrustedConnectionHook
from qwen_twist.config import Config
from qwen_twist.context import CallContext
from qwen_twist.interfaces import IAdmissionHook, IReconfigurable
from qwen_twist.gate.keyfile import load_store
from qwen_twist.gate.keys import KeyStore, presented_key
from qwen_twist.gate.options import OptionsHook
from qwen_twist.logsafe import clean
from qwen_twist.observe.ids import clean_user
from qwen_twist.gate.ratelimit import Decision, TokenBudget, TokenBuckets, window_buckets

#: Rough characters per token, to reserve a prompt's share of a token
#: budget before Ollama has counted it (settled on the real count later).
CHARS_PER_TOKEN = 4


def _header(request: Any, name: bytes) -> Optional[bytes]:
    values = request.requestHeaders.getRawHeaders(name)
    if not values:
        return None
    return b",".join(values)


def _header_name(name: Optional[str]) -> Optional[bytes]:
    return name.lower().encode("ascii", "replace") if name else None


def _text(value: Optional[bytes]) -> Optional[str]:
    if value is None:
        return None
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return None


@implementer(IAdmissionHook)
class AddressHook:
    """
    Resolves and checks the client address of each request.
    """

    def __init__(self, rules: AddressRules, bans: BanList, clock: Any,
                 user_header: Optional[str] = None) -> None:
        self.rules = rules
        self.bans = bans
        self.clock = clock
        #: C{audit.user_header}: believed only from a trusted proxy.
        self.user_header = _header_name(user_header)

    def release(self, ctx: CallContext) -> None:
        """
        Nothing to undo: this hook reserves nothing.
        """

    def screen(self, request: Any, ctx: CallContext, kind: str) -> None:
        self.check(request, ctx)

    def admit(self, request: Any, ctx: CallContext, plan: Any) -> None:
        if ctx.screened:
            return
        self.check(request, ctx)

    def check(self, request: Any, ctx: CallContext) -> None:
        """
        Resolve C{ctx.client_ip} and refuse addresses that are denied (the
        rules in force now: a SIGHUP's C{access.deny} applies to requests
        on connections opened before it) or banned.
        """
        peer = ctx.client_ip
        if not self.rules.permits(peer):
            raise errors.forbidden("address not allowed", errors.ADDRESS_NOT_ALLOWED)
        if self.user_header is not None and self.rules.trusted_proxies:
            address = parse_address(peer)
            if address is not None and address in self.rules.trusted_proxies:
                ctx.end_user = clean_user(_header(request, self.user_header)) or ctx.end_user
        ctx.client_ip = self.rules.client_ip(
            peer,
            _text(_header(request, b"x-forwarded-for")),
            _text(_header(request, b"x-real-ip")),
        )
        if ctx.client_ip != peer:
            # A forwarded client: the accept-time checks saw only the proxy.
            if not self.rules.permits(ctx.client_ip):
                raise errors.forbidden("address not allowed", errors.ADDRESS_NOT_ALLOWED)
        if self.bans.banned_for(ctx.client_ip, self.clock.seconds()) > 0:
            raise errors.forbidden("address temporarily banned", errors.ADDRESS_BANNED)


@implementer(IAdmissionHook)
class IdentityHook:
    """
    Authenticates each request; see the module docstring for the order.

    @ivar keys: the L{qwen_twist.gate.keys.KeyStore} in force (replaced on
        reload).
    """

    log = Logger()

    def __init__(self, config: Config, keys: Any, jwt: Any, bans: BanList, clock: Any) -> None:
        self.bans = bans
        self.clock = clock
        self.configure(config, keys, jwt)

    def configure(self, config: Config, keys: Any, jwt: Any) -> None:
        """
        Take (new) settings, key store and JWT verifier.
        """
        self.required = config.auth.required
        self.use_keys = config.auth.keys_file is not None
        self.cert_identity = (
            config.auth.mtls.mode != "off" and config.auth.mtls.identity_from_subject
        )
        self.keys = keys
        self.jwt = jwt

    def release(self, ctx: CallContext) -> None:
        """
        Nothing to undo: this hook reserves nothing.
        """

    def screen(self, request: Any, ctx: CallContext, kind: str) -> None:
        """
        Authenticate from the head alone. For C{/ready} (C{kind} C{"ready"})
        an identity is optional: none, or a bad one, is simply anonymous.
        """
        if kind == "api":
            self.authenticate(request, ctx)
            return
        try:
            self.authenticate(request, ctx, count_failure=False)
        except errors.ApiError:
            ctx.identity = None

    def admit(self, request: Any, ctx: CallContext, plan: Any) -> None:
        if not ctx.screened:
            self.authenticate(request, ctx)
        record = ctx.key_record
        scope = getattr(plan, "scope", None)
        if scope is not None and (record is None or not record.has_scope(scope)):
            # Granted only to a key that names it: never to anonymous
            # callers, JWT or certificate identities.
            ctx.auth_failure = "scope_required"
            raise errors.scope_required(ctx.path, scope)
        models = getattr(plan, "models", None) or (getattr(plan, "model", None) or ctx.model,)
        for model in models:
            if record is not None and model and not record.allows_model(model):
                ctx.auth_failure = "model_not_allowed"
                raise errors.forbidden(
                    "this API key may not use model %r" % (model,), errors.MODEL_NOT_ALLOWED
                )

    def authenticate(self, request: Any, ctx: CallContext, count_failure: bool = True) -> None:
        """
        Set C{ctx.identity} and C{ctx.key_record} from the credentials
        presented, or refuse with 401.
        """
        now = self.clock.seconds()
        identity = None
        record = None
        presented = presented_key(
            _header(request, b"authorization"), _header(request, b"x-api-key")
        )
        if presented is not None:
            if self.jwt is not None and self.jwt.looks_like_jwt(presented):
                ctx.auth_method = "jwt"
                identity = self._verify_jwt(presented, now)
            elif self.use_keys:
                ctx.auth_method = "api_key"
                record = self.keys.authenticate(presented, now)
                if record is not None:
                    identity = "key:" + record.id
        if identity is None and self.cert_identity:
            identity = _certificate_identity(request)
            if identity is not None:
                ctx.auth_method = "certificate"
        if identity is None:
            if not self.required:
                # Anonymous access is allowed; SDKs always send some key,
                # so an unknown one is simply not an identity.
                ctx.auth_method = None
                return
            ctx.auth_failure = "invalid" if presented is not None else "missing"
            if count_failure:
                self._failed(ctx, now)
            raise errors.unauthorized()
        self.bans.success(ctx.client_ip, now)
        ctx.identity = identity
        ctx.key_record = record

    def _verify_jwt(self, token: str, now: float) -> Optional[str]:
        from qwen_twist.gate.jwtauth import JwtError

        try:
            return "jwt:" + self.jwt.verify(token, now).user
        except JwtError as e:
            self.log.info("JWT refused: {why}", why=clean(str(e)))
            return None

    def _failed(self, ctx: CallContext, now: float) -> None:
        if self.bans.failure(ctx.client_ip, now):
            self.log.warn(
                "banning {ip} after repeated authentication failures", ip=ctx.client_ip
            )


def _certificate_identity(request: Any) -> Optional[str]:
    """
    C{cert:<CN>} of a client certificate that OpenSSL verified during the
    handshake (with C{auth.mtls.mode} optional or require, an unverifiable
    certificate fails the handshake, so any certificate here is verified).
    """
    transport = getattr(request.channel, "transport", None)
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    cert = get()
    if cert is None:
        return None
    cn = cert.get_subject().commonName
    return "cert:" + cn if cn else None


@implementer(IAdmissionHook)
class PromptLimitHook:
    """
    Refuses prompts longer than C{limits.max_prompt_chars} with the seed's
    message, before they cost a GPU anything.
    """

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars

    def release(self, ctx: CallContext) -> None:
        """
        Nothing to undo: this hook reserves nothing.
        """

    def admit(self, request: Any, ctx: CallContext, plan: Any) -> None:
        chars = getattr(plan, "prompt_chars", 0)
        if chars > self.max_chars:
            raise errors.invalid_request(
                "prompt too long, max %d chars" % (self.max_chars,), "messages",
                errors.PROMPT_TOO_LONG,
            )


@implementer(IAdmissionHook)
class RateLimitHook:
    """
    Request buckets per client IP and per identity, and the per-identity
    token budget.
    """

    def __init__(self, config: Config, clock: Any) -> None:
        self.clock = clock
        self.per_ip = TokenBuckets(0, 1)
        self.window = 0.0
        self._per_key: Dict[int, TokenBuckets] = {}
        self._budgets: Dict[int, TokenBudget] = {}
        self.configure(config)

    def configure(self, config: Config) -> None:
        """
        Take (new) limits. Buckets whose limits did not change are kept, so
        a reload does not hand every client a fresh burst.
        """
        limits = config.rate_limits
        if (self.per_ip.rate, self.per_ip.burst) != (limits.per_ip_rate, limits.per_ip_burst):
            self.per_ip = TokenBuckets(limits.per_ip_rate, limits.per_ip_burst)
        if self.window != limits.per_key_window:
            self._per_key = {}
        self.window = limits.per_key_window
        self.default_requests = limits.per_key_requests
        self.default_tokens = limits.per_key_tokens_per_minute
        self.default_max_tokens = config.limits.max_tokens

    def _key_buckets(self, requests: int) -> TokenBuckets:
        buckets = self._per_key.get(requests)
        if buckets is None:
            buckets = self._per_key[requests] = window_buckets(requests, self.window)
        return buckets

    def _budget(self, tokens: int) -> TokenBudget:
        budget = self._budgets.get(tokens)
        if budget is None:
            budget = self._budgets[tokens] = TokenBudget(tokens)
        return budget

    def screen(self, request: Any, ctx: CallContext, kind: str) -> None:
        """
        Charge the per-IP bucket from the head alone, before the identity
        is checked: unauthenticated and malformed requests pay too.
        """
        if kind == "api":
            ctx.per_ip_decision = self._take_ip(request, ctx, self.clock.seconds())

    def _take_ip(self, request: Any, ctx: CallContext, now: float) -> Decision:
        decision = self.per_ip.take(ctx.client_ip, now)
        if not decision.allowed:
            _rate_headers(request, decision, "requests")
            raise errors.rate_limited("rate limit exceeded for this address", decision.retry_after)
        return decision

    def admit(self, request: Any, ctx: CallContext, plan: Any) -> None:
        now = self.clock.seconds()
        decision = ctx.per_ip_decision
        if decision is None:
            decision = self._take_ip(request, ctx, now)
        # Headers describe only a limit that applies: an unlimited per-IP
        # bucket would advertise its unused burst, and clients that pace
        # themselves from x-ratelimit-* would slow down for nothing.
        shown: Optional[Decision] = decision if self.per_ip.rate > 0 else None
        if ctx.identity is not None:
            record = ctx.key_record
            requests = self.default_requests
            tokens = self.default_tokens
            if record is not None:
                if record.requests_per_window is not None:
                    requests = record.requests_per_window
                if record.tokens_per_minute is not None:
                    tokens = record.tokens_per_minute
            if requests > 0:
                shown = self._key_buckets(requests).take(ctx.identity, now)
                if not shown.allowed:
                    self.per_ip.refund(ctx.client_ip, now, 1)
                    _rate_headers(request, shown, "requests")
                    raise errors.rate_limited("rate limit exceeded for this key", shown.retry_after)
            if tokens > 0:
                # A call that names no output cap may generate up to the
                # operator's cap: reserve that, not nothing (concurrent calls
                # without max_tokens overran budgets ~50x when it was 0).
                max_tokens = ctx.max_tokens
                if max_tokens is None and getattr(plan, "path", "/api/embed") != "/api/embed":
                    max_tokens = getattr(plan, "max_tokens", None) or self.default_max_tokens
                max_tokens = max_tokens or 0
                reserve = getattr(plan, "prompt_chars", 0) // CHARS_PER_TOKEN + max_tokens
                budget = self._budget(tokens)
                spent = budget.reserve(ctx.identity, now, reserve)
                _rate_headers(request, spent, "tokens")
                if not spent.allowed:
                    raise errors.rate_limited("token budget exceeded for this key", spent.retry_after)
                ctx.token_reservation = (budget, reserve)
        if shown is not None:
            _rate_headers(request, shown, "requests")

    def release(self, ctx: CallContext) -> None:
        reservation, ctx.token_reservation = ctx.token_reservation, None
        if reservation is None:
            return
        budget, reserved = reservation
        actual = (ctx.usage or {}).get("total_tokens", 0)
        if ctx.usage is None and ctx.outcome != "ok":
            # Nothing was generated (or we cannot know): give it back.
            actual = 0
        budget.settle(ctx.identity, self.clock.seconds(), reserved, actual)

    def prune(self) -> None:
        now = self.clock.seconds()
        self.per_ip.prune(now)
        for table in list(self._per_key.values()) + list(self._budgets.values()):
            table.prune(now)


def _rate_headers(request: Any, decision: Decision, kind: str) -> None:
    """
    OpenAI's C{x-ratelimit-*} headers (reset as a duration such as C{1.5s}).
    """
    request.setHeader(b"x-ratelimit-limit-" + kind.encode(), b"%d" % (decision.limit,))
    request.setHeader(b"x-ratelimit-remaining-" + kind.encode(), b"%d" % (decision.remaining,))
    request.setHeader(
        b"x-ratelimit-reset-" + kind.encode(),
        ("%gs" % (round(decision.reset_after, 3),)).encode("ascii"),
    )


def total_slots(config: Config) -> int:
    """
    C{admission.slots} is per Ollama server (its C{OLLAMA_NUM_PARALLEL});
    with several servers the queue admits that many per server, and the
    pool's least-busy routing spreads them.
    """
    return config.admission.slots * max(1, len(config.upstream.urls))


def per_owner_slots(config: Config) -> int:
    """
    C{admission.per_key}, or by default one slot fewer than all (at least
    one): whatever one key does, another can still be served.
    """
    return config.admission.per_key or max(1, total_slots(config) - 1)


def load_identities(config: Config) -> tuple:
    """
    Read the key store and the JWT verification key named by the config.

    Called at start-up (so a broken keys file stops the daemon with one
    line naming it) and on reload.

    @return: C{(KeyStore, JwtVerifier or None)}.
    @raise qwen_twist.config.ConfigError: an unreadable or invalid file.
    """

    from qwen_twist.gate.jwtauth import JwtVerifier

    auth = config.auth
    keys = load_store(auth.keys_file) if auth.keys_file else KeyStore.empty()
    jwt = JwtVerifier(auth.jwt) if auth.jwt.enabled else None
    return keys, jwt


@implementer(IReconfigurable)
class Gate:
    """
    The gate's state for one process: the hooks in pipeline order and what
    they share (the ban list, the address rules). Reconfigured in place on
    reload, so counters and bans survive a SIGHUP.

    @ivar hooks: admission hooks for L{qwen_twist.pipeline.Gateway}; the
        same list object for the gateway's whole life (reconfiguring
        changes its contents in place).
    @ivar queue: the GPU slot queue, or L{None} when C{admission.slots} is 0.
    @ivar identities: the key store and JWT verifier in force; replaced by
        L{set_identities}, independently of the configuration file.
    """

    log = Logger()

    uses = ("auth", "access", "limits.max_prompt_chars", "limits.max_tokens",
            "rate_limits", "admission", "bans", "upstream.urls",
            "audit.user_header") + OptionsHook.uses

    def __init__(self, config: Config, clock: Any, identities: Optional[tuple] = None) -> None:
        self.identities = identities if identities is not None else load_identities(config)
        keys, jwt = self.identities
        self.config = config
        self.clock = clock
        self.bans = BanList(config.bans.failures, config.bans.duration, config.bans.window)
        self.rules = AddressRules.from_config(config.access)
        self.address = AddressHook(self.rules, self.bans, clock, config.audit.user_header)
        self.identity = IdentityHook(config, keys, jwt, self.bans, clock)
        self.prompt = PromptLimitHook(config.limits.max_prompt_chars)
        self.options = OptionsHook(config)
        self.rates = RateLimitHook(config, clock)
        # Right after identity: a request with one protects its connection
        # from eviction at connections.max_total before it waits anywhere.
        self.trust = TrustedConnectionHook()
        self.hooks: List[Any] = []
        #: What can be decided from the request head, in order (see the
        #: module docstring): address, per-IP rate, identity. The same list
        #: object for the gateway's whole life.
        self.screens: List[Any] = [self.address, self.rates, self.identity]
        self.queue: Optional[SlotQueue] = None
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """
        Apply address rules, ban thresholds, limits and the queue's size to
        new requests; calls in flight keep what admitted them. Keys and the
        JWT key are L{set_identities}'s (they come from other files).
        """
        self.config = config
        keys, jwt = self.identities
        self.rules = AddressRules.from_config(config.access)
        self.address.rules = self.rules
        self.address.user_header = _header_name(config.audit.user_header)
        self.bans.threshold = config.bans.failures
        self.bans.duration = float(config.bans.duration)
        self.bans.window = float(config.bans.window)
        self.identity.configure(config, keys, jwt)
        self.prompt.max_chars = config.limits.max_prompt_chars
        self.options.reconfigure(config)
        self.rates.configure(config)
        admission = config.admission
        hooks: List[Any] = [self.address, self.identity, self.trust, self.prompt,
                            self.options, self.rates]
        if admission.slots > 0:
            if self.queue is None:
                self.queue = SlotQueue(
                    total_slots(config), admission.max_depth, admission.max_wait, self.clock,
                    per_owner=per_owner_slots(config),
                )
                self._admission = AdmissionHook(self.queue)
            else:
                self.queue.configure(total_slots(config), admission.max_depth,
                                     admission.max_wait, self.queue.weights,
                                     per_owner_slots(config))
            # Last: only callers that passed every other check wait for the
            # GPU, and a queued caller who leaves is never dispatched.
            hooks.append(self._admission)
        else:
            # Calls holding a slot release it through the hook list they
            # were admitted with; new calls no longer queue.
            self.queue = None
        self.hooks[:] = hooks

    def set_identities(self, identities: tuple) -> None:
        """
        Use a freshly read key store and JWT verifier (SIGHUP): a revoked
        key stops working for the next request, whatever else the reload
        did.
        """
        self.identities = identities
        keys, jwt = identities
        self.identity.configure(self.config, keys, jwt)

    def prune(self) -> None:
        """
        Drop idle buckets and expired bans (called periodically).
        """
        self.bans.prune(self.clock.seconds())
        self.rates.prune()
