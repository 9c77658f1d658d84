# -*- test-case-name: tests.store.test_redisstore -*-
"""
The L{ILimitStore} shared by several gateways through one Redis.

Why one Lua script per operation: a script runs atomically on the server,
so two gateways can never both take the last token, both count the third
failure, or both take the last GPU slot; and each operation is one round
trip. Time inside the scripts is the server's (C{TIME}), so the gateways'
clocks need not agree. Every key expires when its state would be the same
as no key at all (a full bucket, a forgotten streak, an ended ban, a lease
nobody renews), so idle state disappears by itself.

Redis unreachable (C{limits.redis.on_failure}):
  - C{open} (default): decisions fall back to this gateway's own counters
    (the L{MemoryStore} inside, L{RedisStore.local}); the change is logged
    once each way. Nothing made locally is replayed when Redis returns, and
    a refund is only given back to the store that took the tokens, so
    nothing is charged twice.
  - C{closed}: limited calls are refused (503 C{limits_unavailable}) and
    no GPU slot is granted until Redis answers again.
Bans are read from a local copy refreshed every C{ban_refresh} seconds, so
the accept-time filter never waits on the network; while Redis is down the
copy keeps the bans it had until they end, plus any made locally.

Metric hook: L{RedisStore.state} (C{connecting}, C{up}, C{down}),
L{RedisStore.fallbacks} (decisions made locally because Redis could not be
asked) and L{RedisStore.state_observers} (callables given the new state on
every change).
"""

from __future__ import annotations

import itertools
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Set

from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from qwen_twist.config import ConfigError
from qwen_twist.gate.ratelimit import decision_at
from qwen_twist.store.interface import ILimitStore, ISlotLock, Take
from qwen_twist.store.memory import MemoryStore
from qwen_twist.store.resp import (
    RedisClient,
    RespError,
    Script,
    StoreUnavailable,
    client_endpoint,
    parse_url,
)

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

_NOW_MS = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

#: KEYS: buckets. ARGV: per bucket rate, burst, cost, undo (see
#: L{qwen_twist.store.interface.Take}). Takes in order, stops at the first
#: refusal and gives back the earlier takes it undoes. Returns {allowed,
#: ahead, wait} per bucket up to the refusal: the arithmetic of
#: L{qwen_twist.gate.ratelimit.TokenBuckets.take}.
TAKE = Script(_NOW + """
local out = {}
local taken = {}
for i = 1, #KEYS do
  local base = (i - 1) * 4
  local rate = tonumber(ARGV[base + 1])
  local burst = tonumber(ARGV[base + 2])
  local cost = tonumber(ARGV[base + 3])
  if rate <= 0 then
    out[#out + 1] = 1; out[#out + 1] = '0'; out[#out + 1] = '0'
  else
    local period = 1 / rate
    local full_at = tonumber(redis.call('GET', KEYS[i]) or now)
    if full_at < now then full_at = now end
    local needed = cost
    if needed > burst then needed = burst end
    local wait = full_at - now - (burst - needed) * period
    if wait > 1e-9 then
      out[#out + 1] = 0
      out[#out + 1] = string.format('%.17g', full_at - now)
      out[#out + 1] = string.format('%.17g', wait)
      for j = 1, i - 1 do
        if taken[j] and tonumber(ARGV[(j - 1) * 4 + 4]) >= i - 1 then
          local back = taken[j] - tonumber(ARGV[(j - 1) * 4 + 3]) / tonumber(ARGV[(j - 1) * 4 + 1])
          if back <= now then
            redis.call('DEL', KEYS[j])
          else
            redis.call('SET', KEYS[j], string.format('%.17g', back), 'PX',
                       math.ceil((back - now) * 1000))
          end
        end
      end
      return out
    end
    full_at = full_at + cost * period
    local ahead = full_at - now
    if ahead > 0 then
      redis.call('SET', KEYS[i], string.format('%.17g', full_at), 'PX', math.ceil(ahead * 1000))
    end
    taken[i] = full_at
    out[#out + 1] = 1; out[#out + 1] = string.format('%.17g', ahead); out[#out + 1] = '0'
  end
end
return out
""")

#: KEYS: bucket. ARGV: rate, amount (negative refunds, positive charges).
ADJUST = Script(_NOW + """
local rate = tonumber(ARGV[1])
local amount = tonumber(ARGV[2])
local current = redis.call('GET', KEYS[1])
if amount < 0 and not current then return 0 end
local full_at = tonumber(current or now)
if full_at < now and amount > 0 then full_at = now end
full_at = full_at + amount / rate
local ahead = full_at - now
if ahead <= 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], string.format('%.17g', full_at), 'PX', math.ceil(ahead * 1000))
end
return 1
""")

#: KEYS: recent failures (sorted set of unique ids by time in ms), bans
#: (sorted set ip -> end in ms), bans version. ARGV: threshold, ban
#: duration ms, ip, window ms, a unique id. Counts failures within the
#: window (a success forgives nothing, see L{qwen_twist.gate.bans});
#: returns 1 when this failure banned.
FAILURE = Script(_NOW_MS + """
local threshold = tonumber(ARGV[1])
local duration = tonumber(ARGV[2])
local window = tonumber(ARGV[4])
local ends = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[3]))
if ends and ends > now_ms then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - window)
redis.call('ZADD', KEYS[1], now_ms, ARGV[5])
if redis.call('ZCARD', KEYS[1]) < threshold then
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('ZADD', KEYS[2], now_ms + duration, ARGV[3])
if redis.call('PTTL', KEYS[2]) < duration then redis.call('PEXPIRE', KEYS[2], duration) end
redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], duration)
return 1
""")

#: KEYS: bans, bans version. ARGV: the version the caller holds. Returns
#: {version, now in ms, [ip, end, ...] or {} when the version is the same}.
BANS = Script(_NOW_MS + """
local version = redis.call('GET', KEYS[2]) or '0'
if version == ARGV[1] then return {version, tostring(now_ms), {}} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
return {version, tostring(now_ms), redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')}
""")

#: KEYS: leases (sorted set token -> expiry in ms). ARGV: limit, lease ms,
#: token. Returns 1 when the lease was granted.
SLOT_ACQUIRE = Script(_NOW_MS + """
local lease = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now_ms + lease, ARGV[3])
if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
return 1
""")

#: KEYS: leases. ARGV: lease ms, tokens... Extends (or, after a Redis
#: restart, re-adds) this gateway's leases: a generation still running
#: still counts.
SLOT_RENEW = Script(_NOW_MS + """
local lease = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now_ms + lease, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], lease)
return #ARGV - 1
""")


#: KEYS: the address's connection counts (hash: gateway field -> count).
#: ARGV: this gateway's field, the prefix of the gateways' heartbeat keys,
#: ttl ms. Counts one more connection for this gateway and returns the
#: total over the gateways still alive (a dead one's field is dropped).
CONN_OPEN = Script("""
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
local total = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if fields[i] == ARGV[1] or redis.call('EXISTS', ARGV[2] .. fields[i]) == 1 then
    total = total + tonumber(fields[i + 1])
  else
    redis.call('HDEL', KEYS[1], fields[i])
  end
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return total
""")

#: KEYS: the connection counts. ARGV: this gateway's field.
CONN_CLOSE = Script("""
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 1
""")

#: KEYS: this gateway's heartbeat, then the connection counts it holds.
#: ARGV: ttl ms. Keeps them alive while this gateway is.
HEARTBEAT = Script("""
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
for i = 2, #KEYS do
  redis.call('PEXPIRE', KEYS[i], ARGV[1])
end
return 1
""")


class BanView:
    """
    The bans the accept-time filter and the address hook read: the shared
    ones (copied from Redis by L{RedisStore}) and the local L{BanList}'s
    (used while Redis is down). Answers from memory only.
    """

    def __init__(self, local: Any) -> None:
        self.local = local
        #: ip -> local clock time the shared ban ends.
        self.shared: Dict[str, float] = {}

    def banned_for(self, ip: str, now: float) -> float:
        left = self.local.banned_for(ip, now)
        ends = self.shared.get(ip)
        if ends is not None and ends - now > left:
            left = ends - now
        return left

    def banned(self, now: float) -> List[Any]:
        ends = {ip: now + left for ip, left in self.local.banned(now)}
        for ip, end in self.shared.items():
            if end > ends.get(ip, now):
                ends[ip] = end
        return [(ip, end - now) for ip, end in ends.items() if end > now]

    # What test and operator code used to call on the BanList itself.
    def failure(self, ip: str, now: float) -> bool:
        return self.local.failure(ip, now)

    def success(self, ip: str, now: float) -> None:
        self.local.success(ip, now)

    def prune(self, now: float) -> int:
        before = len(self.shared)
        self.shared = {ip: end for ip, end in self.shared.items() if end > now}
        return self.local.prune(now) + before - len(self.shared)

    def __len__(self) -> int:
        return len(self.local) + len(self.shared)


def read_password(config: Any) -> Optional[str]:
    """
    The Redis password from C{limits.redis.password_file} (first line).

    @raise ConfigError: the file cannot be read.
    """
    path = config.limits.redis.password_file
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("limits.redis.password_file",
                          "cannot read %s: %s" % (path, getattr(e, "strerror", None) or e))
    lines = text.splitlines()
    password = lines[0].strip() if lines else ""
    if not password:
        raise ConfigError("limits.redis.password_file", "%s is empty" % (path,))
    return password


@implementer(ILimitStore)
class RedisStore:
    """
    Counters in Redis, with this process's own as the fallback.

    @ivar local: the L{MemoryStore} used while Redis cannot be asked.
    @ivar client: the L{RedisClient}.
    @ivar fallbacks: decisions made locally because Redis could not be
        asked (a counter for metrics).
    @ivar state_observers: callables given the new L{state} on each change.
    """

    uses = ("bans", "limits.redis")
    shared = True
    log = Logger()

    def __init__(self, config: Any, clock: Any, endpoint: Any = None) -> None:
        self.config = config
        self.clock = clock
        self.address = parse_url(config.limits.store)
        redis = config.limits.redis
        if endpoint is None:
            endpoint = client_endpoint(clock, self.address, redis.connect_timeout, redis.ca_file)
        self.local = MemoryStore(config, clock)
        self.bans = BanView(self.local.bans)
        self.fallbacks = 0
        self.state_observers: List[Callable[[str], None]] = []
        self.gateway_id = os.urandom(8).hex()
        self._tokens = itertools.count(1)
        self._ban_version = ""
        self._locks: Dict[str, RedisSlotLock] = {}
        # Connection counts: a new field (gateway id + epoch) after each
        # reconnection, so what was counted before an outage (whose
        # closings Redis never heard of) dies with the old heartbeat.
        self._epoch = 0
        self._connections: Dict[str, int] = {}
        self.client = RedisClient(
            clock, endpoint, db=self.address.db, password=read_password(config),
            username=redis.username, command_timeout=redis.command_timeout,
            backoff=(min(0.1, redis.reconnect_max), redis.reconnect_max),
            on_state=self._state_changed,
        )
        self._refresh = task.LoopingCall(self._refresh_bans)
        self._refresh.clock = clock
        self._renew = task.LoopingCall(self._renew_leases)
        self._renew.clock = clock

    # Settings ---------------------------------------------------------------

    @property
    def state(self) -> str:
        return self.client.state

    @property
    def fail_open(self) -> bool:
        return self.config.limits.redis.on_failure == "open"

    def reconfigure(self, config: Any) -> None:
        """
        New bans, timeouts and policy apply at once; the address and the
        credentials need a restart.
        """
        self.config = config
        self.local.reconfigure(config)
        redis = config.limits.redis
        self.client.command_timeout = redis.command_timeout
        self.client.backoff = (min(0.1, redis.reconnect_max), redis.reconnect_max)
        # Loops take a new interval from their next run.
        self._refresh.interval = redis.ban_refresh
        self._renew.interval = redis.lease / 3.0

    def _key(self, *parts: Any) -> str:
        return self.config.limits.redis.prefix + ":".join(str(p) for p in parts)

    # Life cycle -------------------------------------------------------------

    def start(self) -> None:
        self.client.start()
        redis = self.config.limits.redis
        if not self._refresh.running:
            self._refresh.start(redis.ban_refresh, now=False)
        if not self._renew.running:
            self._renew.start(redis.lease / 3.0, now=False)

    def stop(self) -> None:
        for loop in (self._refresh, self._renew):
            if loop.running:
                loop.stop()
        self.client.stop()

    def _state_changed(self, state: str, why: str) -> None:
        if state == "up":
            self.log.info("limits store {address} is up", address=str(self.address))
            self._epoch += 1
            self._connections = {}
            self._renew_leases()
            self._refresh_bans()
        else:
            self.log.warn(
                "limits store {address} is unreachable ({why}): {policy} until it is back",
                address=str(self.address), why=why,
                policy="using this gateway's own limits" if self.fail_open
                else "refusing limited calls",
            )
        for observer in list(self.state_observers):
            try:
                observer(state)
            except Exception:
                self.log.failure("limits store state observer failed")

    def status(self) -> dict:
        # Not the address: /ready answers anyone, and where Redis lives is
        # the operator's business (it is in the log).
        return {
            "kind": "redis",
            "state": self.state,
            "shared": self.state == "up",
            "on_failure": self.config.limits.redis.on_failure,
        }

    def prune(self) -> None:
        self.local.prune()
        self.bans.prune(self.clock.seconds())

    # Buckets ----------------------------------------------------------------

    def _unavailable(self, failure: Any) -> Any:
        """
        An errback: log an error reply (a script bug or a full Redis) and
        let L{StoreUnavailable} through; anything else propagates.
        """
        failure.trap(StoreUnavailable, RespError)
        if isinstance(failure.value, RespError):
            self.log.warn("limits store error: {error}", error=failure.value.message)
        return None

    def take(self, family: str, rate: float, burst: float, key: str, cost: float = 1.0) -> Any:
        d = self.take_all([Take(family, rate, burst, key, cost)])
        d.addCallback(lambda decisions: decisions[0])
        return d

    def take_all(self, takes: Sequence[Take]) -> Any:
        if not self.client.connected:
            return defer.maybeDeferred(self._take_locally, takes)
        names = [self._key("b", t.family, repr(float(t.rate)), repr(float(t.burst)), t.key)
                 for t in takes]
        args: List[Any] = []
        for t in takes:
            args += [float(t.rate), float(t.burst), float(t.cost), t.undo]
        d = self.client.run_script(TAKE, names, args)

        def taken(reply: Any) -> List[Any]:
            decisions = []
            for i in range(0, len(reply), 3):
                t, name = takes[i // 3], names[i // 3]
                decision = decision_at(bool(reply[i]), float(reply[i + 1]),
                                       float(reply[i + 2]), t.rate, t.burst)
                decision.receipt = (self, name, t.rate)
                decisions.append(decision)
            return decisions

        def failed(failure: Any) -> Any:
            self._unavailable(failure)
            return self._take_locally(takes)

        d.addCallbacks(taken, failed)
        return d

    def _take_locally(self, takes: Sequence[Take]) -> List[Any]:
        if any(t.rate > 0 for t in takes):
            if not self.fail_open:
                raise StoreUnavailable("limits store unavailable")
            self.fallbacks += 1
        return self.local.take_all_now(takes)

    def adjust(self, receipt: Any, amount: float) -> Any:
        """
        @return: a Deferred that fires when Redis has applied it (nobody
            needs to wait for it but tests).
        """
        if receipt is None or amount == 0:
            return defer.succeed(None)
        if receipt[0] is not self:
            self.local.adjust(receipt, amount)
            return defer.succeed(None)
        _, name, rate = receipt
        d = self.client.run_script(ADJUST, [name], [float(rate), float(amount)])
        d.addErrback(self._unavailable)
        return d

    # Bans -------------------------------------------------------------------

    def auth_failure(self, ip: str) -> Any:
        bans = self.config.bans
        if bans.failures <= 0:
            return defer.succeed(False)
        if not self.client.connected:
            return defer.succeed(self.local.failure_now(ip))
        d = self.client.run_script(
            FAILURE,
            [self._key("f", ip), self._key("bans"), self._key("bans", "v")],
            [bans.failures, int(bans.duration * 1000), ip, int(bans.window * 1000),
             self.new_token()],
        )

        def counted(banned: Any) -> bool:
            if banned == 1:
                # Enforced here at once, before the next refresh.
                self.bans.shared[ip] = self.clock.seconds() + bans.duration
                return True
            return False

        def failed(failure: Any) -> bool:
            self._unavailable(failure)
            return self.local.failure_now(ip)

        d.addCallbacks(counted, failed)
        return d

    def auth_success(self, ip: str) -> None:
        # A success forgives no failure (bans count failures in a window).
        self.local.auth_success(ip)

    def _refresh_bans(self) -> Any:
        """
        Copy the shared bans into L{bans} when they changed (one round trip
        that returns only a version number when nothing did).
        """
        if not self.client.connected:
            return None
        d = self.client.run_script(
            BANS, [self._key("bans"), self._key("bans", "v")], [self._ban_version])
        d.addCallbacks(self._got_bans, self._unavailable)
        return d

    def _got_bans(self, reply: Any) -> None:
        version, now_ms, pairs = reply
        version = version.decode("ascii") if isinstance(version, bytes) else str(version)
        if version == self._ban_version:
            return
        now = self.clock.seconds()
        server_ms = float(now_ms)
        shared = {}
        for i in range(0, len(pairs) - 1, 2):
            ip = pairs[i].decode("utf-8", "replace")
            shared[ip] = now + (float(pairs[i + 1]) - server_ms) / 1000.0
        self.bans.shared = shared
        self._ban_version = version

    # GPU slots ----------------------------------------------------------------

    def slot_lock(self, name: str) -> "RedisSlotLock":
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = RedisSlotLock(self, self._key("slots", name))
        return lock

    def new_token(self) -> str:
        return "%s:%d" % (self.gateway_id, next(self._tokens))

    def _renew_leases(self) -> None:
        if not self.client.connected:
            return
        keys = [self._key("gw", self._field())]
        keys += [self._key("conn", ip) for ip in self._connections]
        d = self.client.run_script(HEARTBEAT, keys, [self._lease_ms()])
        d.addErrback(self._unavailable)
        for lock in list(self._locks.values()):
            lock.renew()

    def _lease_ms(self) -> int:
        return int(self.config.limits.redis.lease * 1000)

    # Connection counts -------------------------------------------------------

    def _field(self) -> str:
        return "%s:%d" % (self.gateway_id, self._epoch)

    def connection_opened(self, ip: str) -> Any:
        if not self.client.connected:
            return defer.succeed((None, None))
        field, epoch = self._field(), self._epoch
        d = self.client.run_script(
            CONN_OPEN, [self._key("conn", ip)], [field, self._key("gw", ""), self._lease_ms()])

        def counted(total: Any) -> tuple:
            if epoch != self._epoch:
                return (None, None)
            self._connections[ip] = self._connections.get(ip, 0) + 1
            return (int(total), (ip, epoch))

        def failed(failure: Any) -> tuple:
            self._unavailable(failure)
            return (None, None)

        d.addCallbacks(counted, failed)
        return d

    def connection_closed(self, ticket: Any) -> None:
        if ticket is None:
            return
        ip, epoch = ticket
        if epoch != self._epoch:
            return
        left = self._connections.get(ip, 0) - 1
        if left > 0:
            self._connections[ip] = left
        else:
            self._connections.pop(ip, None)
        if self.client.connected:
            d = self.client.run_script(CONN_CLOSE, [self._key("conn", ip)], [self._field()])
            d.addErrback(self._unavailable)


@implementer(ISlotLock)
class RedisSlotLock:
    """
    Leases on one upstream's GPU slots: a sorted set of tokens scored by
    when each lease ends. This gateway renews its own every third of
    C{limits.redis.lease}; a gateway that dies stops renewing, and its
    slots come back to the others when the lease ends.

    @ivar leases: tokens held by this gateway.
    """

    def __init__(self, store: RedisStore, key: str) -> None:
        self.store = store
        self.key = key
        self.leases: Set[str] = set()

    @property
    def fail_open(self) -> bool:
        return self.store.fail_open

    @property
    def poll_interval(self) -> float:
        return self.store.config.limits.redis.slot_poll

    def _lease_ms(self) -> int:
        return self.store._lease_ms()

    def acquire(self, limit: int) -> Any:
        token = self.store.new_token()
        d = self.store.client.run_script(SLOT_ACQUIRE, [self.key], [limit, self._lease_ms(), token])

        def answered(granted: Any) -> Optional[str]:
            if granted == 1:
                self.leases.add(token)
                return token
            return None

        def failed(failure: Any) -> Any:
            failure.trap(StoreUnavailable, RespError)
            if isinstance(failure.value, RespError):
                self.store.log.warn("limits store error: {error}", error=failure.value.message)
                raise StoreUnavailable(failure.value.message)
            return failure

        d.addCallbacks(answered, failed)
        return d

    def release(self, lease: Any) -> None:
        if lease not in self.leases:
            return
        self.leases.discard(lease)
        if self.store.client.connected:
            d = self.store.client.execute(b"ZREM", self.key, lease)
            d.addErrback(self.store._unavailable)

    def renew(self) -> None:
        if not self.leases or not self.store.client.connected:
            return
        d = self.store.client.run_script(
            SLOT_RENEW, [self.key], [self._lease_ms()] + sorted(self.leases))
        d.addErrback(self.store._unavailable)
