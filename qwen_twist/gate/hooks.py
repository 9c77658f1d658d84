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

from typing import Any, List, Optional

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from qwen_twist import errors
from qwen_twist.gate.addresses import AddressRules, parse_address
from qwen_twist.gate.queue import AdmissionHook, SlotQueue
from qwen_twist.gate.peerfilter import TrustedConnectionHook
from qwen_twist.config import Config
from qwen_twist.context import CallContext
from qwen_twist.interfaces import IAdmissionHook, IReconfigurable
from qwen_twist.gate.keyfile import load_store
from qwen_twist.gate.keys import KeyStore, presented_key
from qwen_twist.gate.options import OptionsHook
from qwen_twist.observe.logsafe import clean
from qwen_twist.observe.ids import clean_user
from qwen_twist.gate.ratelimit import Decision
from qwen_twist.store.factory import build_store
from qwen_twist.store.interface import StoreUnavailable, Take

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

    def __init__(self, rules: AddressRules, bans: Any, clock: Any,
                 user_header: Optional[str] = None) -> None:
        """
        @param bans: the store's local ban view (C{banned_for(ip, now)}).
        """
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

    def __init__(self, config: Config, keys: Any, jwt: Any, store: Any, clock: Any) -> None:
        """
        @param store: the L{qwen_twist.store.interface.ILimitStore} that
            counts failures and bans.
        """
        self.store = store
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
        self.store.auth_success(ctx.client_ip)
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
        # The 401 does not wait for the count: it is the same answer either way.
        d = self.store.auth_failure(ctx.client_ip)
        d.addCallback(self._cbCounted, ctx.client_ip)
        d.addErrback(lambda f: self.log.failure("counting an authentication failure", f))

    def _cbCounted(self, banned: bool, ip: str) -> None:
        if banned:
            self.log.warn("banning {ip} after repeated authentication failures", ip=ip)


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
    token budget, all kept in the L{qwen_twist.store.interface.ILimitStore}
    (this process's memory, or a Redis shared by several gateways).

    Buckets are named by their numbers, so a reload that keeps a limit
    keeps its buckets (no fresh burst for everyone) and one that changes
    it starts new ones.
    """

    uses = ("rate_limits",)

    def __init__(self, config: Config, clock: Any, store: Any) -> None:
        self.clock = clock
        self.store = store
        self.configure(config)

    def configure(self, config: Config) -> None:
        """
        Take (new) limits.
        """
        self.config = config

    reconfigure = configure

    def admit(self, request: Any, ctx: CallContext, plan: Any) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._admit(request, ctx, plan))

    def screen(self, request: Any, ctx: CallContext, kind: str) -> None:
        """
        Charge the per-IP bucket from the head alone, before the identity
        is checked: unauthenticated and malformed requests pay too. The
        in-process store answers at once; a shared store's answer is
        awaited by L{admit} (the head is never held for the network).
        """
        limits = self.config.rate_limits
        if kind != "api" or limits.per_ip_rate <= 0:
            return
        d = self.store.take("ip", limits.per_ip_rate, limits.per_ip_burst, ctx.client_ip)
        # Under on_failure: closed an unreachable store fails the take: keep
        # the exception as the answer (it is read by _checked_ip).
        d.addErrback(lambda f: f.trap(StoreUnavailable) and f.value)
        answered: List[Any] = []
        d.addCallback(lambda result: answered.append(result) or result)
        ctx.per_ip_decision = self._checked_ip(request, answered[0]) if answered else d

    def _checked_ip(self, request: Any, decision: Any) -> Decision:
        if isinstance(decision, StoreUnavailable):
            raise errors.limits_unavailable()
        if not decision.allowed:
            _rate_headers(request, decision, "requests")
            raise errors.rate_limited("rate limit exceeded for this address",
                                      decision.retry_after)
        return decision

    async def _admit(self, request: Any, ctx: CallContext, plan: Any) -> None:
        limits = self.config.rate_limits
        ip = ctx.per_ip_decision
        if isinstance(ip, defer.Deferred):
            ip = self._checked_ip(request, await ip)
        takes: List[Take] = []
        if ip is None and limits.per_ip_rate > 0:
            # Not screened (a route without a head screen): take it here.
            takes.append(Take("ip", limits.per_ip_rate, limits.per_ip_burst, ctx.client_ip))
        reserve = 0
        if ctx.identity is not None:
            record = ctx.key_record
            requests = limits.per_key_requests
            tokens = limits.per_key_tokens_per_minute
            if record is not None:
                if record.requests_per_window is not None:
                    requests = record.requests_per_window
                if record.tokens_per_minute is not None:
                    tokens = record.tokens_per_minute
            if requests > 0:
                if takes:
                    # Refused by the key's bucket: the address's token back.
                    takes[0] = takes[0]._replace(undo=len(takes))
                takes.append(Take("key", requests / limits.per_key_window, requests,
                                  ctx.identity))
            if tokens > 0:
                # A call that names no output cap may generate up to the
                # operator's cap: reserve that, not nothing (concurrent calls
                # without max_tokens overran budgets ~50x when it was 0).
                max_tokens = ctx.max_tokens
                if max_tokens is None and getattr(plan, "path", "/api/embed") != "/api/embed":
                    max_tokens = (getattr(plan, "max_tokens", None)
                                  or self.config.limits.max_tokens)
                max_tokens = max_tokens or 0
                reserve = getattr(plan, "prompt_chars", 0) // CHARS_PER_TOKEN + max_tokens
                takes.append(Take("budget", tokens / 60.0, tokens, ctx.identity, reserve))
        try:
            # One step (one round trip to a shared store) for all of them.
            decisions = await self.store.take_all(takes) if takes else []
        except StoreUnavailable:
            # limits.redis.on_failure: closed, and Redis cannot be asked.
            raise errors.limits_unavailable()
        # Headers describe only a limit that applies: an unlimited per-IP
        # bucket would advertise its unused burst, and clients that pace
        # themselves from x-ratelimit-* would slow down for nothing.
        shown: Optional[Decision] = ip if limits.per_ip_rate > 0 else None
        for take, decision in zip(takes, decisions):
            if take.family == "budget":
                _rate_headers(request, decision, "tokens")
                if not decision.allowed:
                    raise errors.rate_limited("token budget exceeded for this key",
                                              decision.retry_after)
                ctx.token_reservation = (decision.receipt, reserve)
                continue
            shown = decision
            if not decision.allowed:
                if take.family == "key" and ip is not None:
                    # Screened from the head: the address's token back.
                    self.store.adjust(ip.receipt, -1)
                _rate_headers(request, decision, "requests")
                raise errors.rate_limited(
                    "rate limit exceeded for this %s"
                    % ("address" if take.family == "ip" else "key",), decision.retry_after)
        if shown is not None:
            _rate_headers(request, shown, "requests")

    def release(self, ctx: CallContext) -> None:
        reservation, ctx.token_reservation = ctx.token_reservation, None
        if reservation is None:
            return
        receipt, reserved = reservation
        actual = (ctx.usage or {}).get("total_tokens", 0)
        if ctx.usage is None and ctx.outcome != "ok":
            # Nothing was generated (or we cannot know): give it back.
            actual = 0
        self.store.adjust(receipt, actual - reserved)

    def prune(self) -> None:
        self.store.prune()


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


def slot_name(config: Config) -> str:
    """
    The name under which gateways share GPU slots: the upstream URL(s),
    so gateways in front of the same Ollama servers share one semaphore
    and those in front of different ones do not.
    """
    urls = sorted(config.upstream.urls) or [config.upstream.url]
    return ",".join(url.rstrip("/") for url in urls)


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
            "limits.redis", "rate_limits", "admission", "bans", "upstream.urls",
            "audit.user_header") + OptionsHook.uses

    def __init__(self, config: Config, clock: Any, identities: Optional[tuple] = None,
                 store: Any = None) -> None:
        """
        @param store: the L{qwen_twist.store.interface.ILimitStore}; by
            default the one C{limits.store} names.
        """
        self.identities = identities if identities is not None else load_identities(config)
        keys, jwt = self.identities
        self.config = config
        self.clock = clock
        self.store = store if store is not None else build_store(config, clock)
        self.bans = self.store.bans
        self.rules = AddressRules.from_config(config.access)
        self.address = AddressHook(self.rules, self.bans, clock, config.audit.user_header)
        self.identity = IdentityHook(config, keys, jwt, self.store, clock)
        self.prompt = PromptLimitHook(config.limits.max_prompt_chars)
        self.options = OptionsHook(config)
        self.rates = RateLimitHook(config, clock, self.store)
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
        self.store.reconfigure(config)
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
            # Several gateways in front of the same Ollama share its slots
            # (None with the in-process store).
            self.queue.share(self.store.slot_lock(slot_name(config)))
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
        self.store.prune()
