# -*- test-case-name: tests.upstream.test_pool -*-
"""
Several Ollama servers behind one gateway: routing, health checks, one retry.

Why: one GPU box is one point of failure and a handful of parallel
generations. L{UpstreamPool} spreads requests over several
L{qwen_twist.upstream.client.OllamaClient}s and looks like one of them to the
Resources (same C{send}, C{where}, C{base_url}, C{close}), so nothing above it
changes.

Routing (O(members) per request): a request naming a C{model} goes to a
healthy member whose breaker is not open and that has the model (a member
whose C{/api/tags} is not known yet may have any model), preferring members
where it is already loaded (a load takes minutes and evicts another model),
then the fewest requests outstanding, then round-robin. Closed breakers go
before half-open ones: a half-open member gets real traffic only as a last
resort; the health check is its probe. When no available member lists the
model, one that does not is used anyway, so Ollama's own 404 answers (and a
model pulled since the last check is found).

Retry: a request that fails before a response reached the caller is sent
once more to another member that may have the model: no response at all
(refused, reset, DNS, connect or headers deadline, L{BreakerOpen}) or a
response with status 500 or above, including 503 (Ollama's "queue full":
another member may have room; a 500 may be host-local, e.g. out of memory),
whose unread body is dropped. A 2xx-4xx response is the answer; a response
handed over is never retried, nor is a cancelled request. Without another
member the first outcome is passed on as it was. Worst case: two headers
deadlines.

Counting: C{outstanding} counts a request from dispatch until its response
B{body} ended (the body protocol's C{connectionLost}), failed, or was dropped.
Callers must read or discard every response they get (every Resource does,
through L{read_body} or C{deliverBody}); only C{deliverBody} is counted.
"""

from __future__ import annotations

import json
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse
from zope.interface import implementer

from qwen_twist import errors
from qwen_twist.interfaces import IUpstream
from qwen_twist.upstream.failures import BreakerOpen, retryable
from qwen_twist.upstream.client import model_key, read_body

#: Largest health-check body read (C{/api/tags} of a well-stocked server).
HEALTH_BODY_LIMIT = 4 * 1024 * 1024


def _model_names(document: Any) -> FrozenSet[str]:
    # /api/tags and /api/ps: {"models": [{"name": ..., "model": ...}, ...]}
    models = document.get("models") if isinstance(document, dict) else None
    if not isinstance(models, list):
        raise ValueError("no models list")
    names = set()
    for entry in models:
        if isinstance(entry, dict):
            for field in ("name", "model"):
                value = entry.get(field)
                if isinstance(value, str) and value:
                    names.add(model_key(value))
    return frozenset(names)


def _running(document: Any) -> Tuple[Tuple[str, int, Optional[str]], ...]:
    # /api/ps details for the metrics: (name, size_vram bytes, expires_at).
    running = []
    for entry in document.get("models") or ():
        if not isinstance(entry, dict):
            continue
        name = entry.get("name") or entry.get("model")
        vram = entry.get("size_vram")
        expires = entry.get("expires_at")
        if isinstance(name, str) and name:
            running.append((model_key(name), vram if isinstance(vram, int) else 0,
                            expires if isinstance(expires, str) else None))
    return tuple(running[:64])


class Member:
    """
    One upstream and what the pool knows about it. C{models}: normalised
    names from C{/api/tags}, L{None} until known; C{loaded}: from C{/api/ps};
    C{running}: C{(name, VRAM bytes, expires_at)} from C{/api/ps} (metrics);
    C{outstanding}: requests dispatched whose body has not ended yet.
    """

    __slots__ = ("client", "url", "healthy", "version", "models", "loaded", "running",
                 "outstanding")

    def __init__(self, client: Any) -> None:
        self.client = client
        self.url: str = client.base_url
        self.healthy = True
        self.version: Optional[str] = None
        self.models: Optional[FrozenSet[str]] = None
        self.loaded: FrozenSet[str] = frozenset()
        self.running: Tuple[Tuple[str, int, Optional[str]], ...] = ()
        self.outstanding = 0

    def breaker_state(self, model: Optional[str] = None) -> str:
        """
        The server breaker's state, or for C{model} the worse of the
        server's and that model's (L{OllamaClient.model_breaker}).
        """
        breaker = self.client.breaker
        state = "disabled" if breaker is None else breaker.state
        if model is not None and state != "open":
            scoped = getattr(self.client, "model_breaker", None)
            own = scoped(model) if scoped is not None else None
            if own is not None:
                own_state = own.state
                if own_state != "closed":
                    state = own_state
        return state

    def may_have(self, model: Optional[str]) -> bool:
        return model is None or self.models is None or model in self.models


class _Flight:
    # One dispatch's claim on its member's outstanding count; released once.

    __slots__ = ("member", "_open")

    def __init__(self, member: Member) -> None:
        self.member = member
        self._open = True
        member.outstanding += 1

    def release(self) -> None:
        if self._open:
            self._open = False
            self.member.outstanding -= 1


class _CountingProtocol:
    # The caller's body protocol, releasing the flight when the body ends;
    # dataReceived is the caller's own bound method: no cost per chunk.

    def __init__(self, protocol: Any, flight: _Flight) -> None:
        self._protocol = protocol
        self._flight = flight
        self.dataReceived = protocol.dataReceived

    def makeConnection(self, transport: Any) -> None:
        self._protocol.makeConnection(transport)

    def connectionLost(self, reason: Failure) -> None:
        # Release first: the caller may send its next request from here.
        self._flight.release()
        self._protocol.connectionLost(reason)


class _Discard:
    # A body nobody will read: close its connection (Ollama stops
    # generating) and release the flight.

    def __init__(self, flight: _Flight) -> None:
        self._flight = flight

    def makeConnection(self, transport: Any) -> None:
        transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        self._flight.release()


def _discard(response: Any, flight: _Flight) -> None:
    try:
        response.deliverBody(_Discard(flight))
    except Exception:
        flight.release()


@implementer(IResponse)
class _CountedResponse:
    # The response as handed over: the original's, but deliverBody counts.

    def __init__(self, original: Any, flight: _Flight) -> None:
        self._original = original
        self._flight = flight

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)

    def deliverBody(self, protocol: Any) -> None:
        try:
            self._original.deliverBody(_CountingProtocol(protocol, self._flight))
        except BaseException:
            self._flight.release()
            raise


class _Call:
    # One request through the pool: at most two dispatches, one result.

    def __init__(self, pool: "UpstreamPool", method: str, path: str,
                 payload: Optional[dict], headers_timeout: Optional[float],
                 model: Optional[str]) -> None:
        self.pool, self.method, self.path = pool, method, path
        self.payload, self.headers_timeout, self.model = payload, headers_timeout, model
        self.tried: List[Member] = []
        self.request_id: Optional[str] = None
        self.cancelled = False
        self.inner: Optional[defer.Deferred] = None
        self.result: defer.Deferred = defer.Deferred(self._cancel)

    def dispatch(self, member: Member) -> None:
        self.tried.append(member)
        flight = _Flight(member)
        extra = {"request_id": self.request_id} if self.request_id else {}
        try:
            d = member.client.send(self.method, self.path, self.payload,
                                   headers_timeout=self.headers_timeout, **extra)
        except Exception:
            d = defer.fail()
        self.inner = d
        d.addCallbacks(self._answered, self._failed,
                       callbackArgs=(flight,), errbackArgs=(flight,))

    def _alternative(self) -> Optional[Member]:
        if len(self.tried) != 1:
            return None
        first = self.tried[0]
        return self.pool.pick(self.model, exclude=first,
                              need_model=first.may_have(self.model))

    def _answered(self, response: Any, flight: _Flight) -> None:
        self.pool.answered(flight.member, response.code, self.model, self.path)
        if self.cancelled:
            _discard(response, flight)
            return None
        if response.code >= 500:
            other = self._alternative()
            if other is not None:
                self.pool.log.info("retrying {path} on {to} after HTTP {code} from {frm}",
                                   path=self.path, to=other.url, code=response.code,
                                   frm=flight.member.url)
                _discard(response, flight)
                self.dispatch(other)
                return None
        self.result.callback(_CountedResponse(response, flight))
        return None

    def _failed(self, failure: Failure, flight: _Flight) -> None:
        flight.release()
        if self.cancelled:
            return None
        if retryable(failure):
            other = self._alternative()
            if other is not None:
                self.pool.log.info("retrying {path} on {to} after {why} from {frm}",
                                   path=self.path, to=other.url, frm=flight.member.url,
                                   why=failure.getErrorMessage())
                self.dispatch(other)
                return None
        self.result.errback(failure)
        return None

    def _cancel(self, result: defer.Deferred) -> None:
        # The client went away: stop the member's request, never retry.
        self.cancelled = True
        if self.inner is not None:
            self.inner.cancel()


@implementer(IUpstream)
class UpstreamPool(service.Service):
    """
    Several L{qwen_twist.upstream.client.OllamaClient}s behind one C{send}.

    @ivar members: one L{Member} per client, in configuration order.
    @ivar where: the members' C{host:port}s, comma-separated (error texts).
    @ivar base_url: the first member's base URL (start-up log line);
        L{state} has them all.
    """

    log = Logger()

    def __init__(self, reactor: Any, clients: Sequence[Any], health_interval: float = 10.0,
                 check_timeout: float = 3.0) -> None:
        """
        @param health_interval: seconds between health-check rounds.
        @param check_timeout: deadline of each health-check request.
        """
        if not clients:
            raise ValueError("an upstream pool needs at least one upstream")
        self._reactor = reactor
        self.members = [Member(client) for client in clients]
        self.health_interval = health_interval
        self.check_timeout = check_timeout
        self.where = ", ".join(client.where for client in clients)
        self.base_url = self.members[0].url
        self._turn = 0
        self._loop: Optional[LoopingCall] = None
        self._checks: Dict[Member, defer.Deferred] = {}
        self._generation = 0
        self._next_check: Optional[float] = None
        self._last_round: Optional[float] = None

    # Routing ---------------------------------------------------------------

    def send(self, method: str, path: str, payload: Optional[dict] = None,
             headers_timeout: Optional[float] = None,
             request_id: Optional[str] = None) -> "defer.Deferred[IResponse]":
        """
        L{OllamaClient.send<qwen_twist.upstream.client.OllamaClient.send>} on the
        member chosen for C{payload["model"]}, retried once elsewhere when it
        fails before a response (see the module docstring).

        @return: a cancellable Deferred firing with the response headers;
            it fails with an L{errors.ApiError} 503 (C{Retry-After}) when no
            member is available.
        """
        model = payload.get("model") if isinstance(payload, dict) else None
        model = model_key(model) if isinstance(model, str) else None
        member = self.pick(model)
        if member is None:
            return defer.fail(self._unavailable(model))
        call = _Call(self, method, path, payload, headers_timeout, model)
        call.request_id = request_id
        call.dispatch(member)
        return call.result

    def pick(self, model: Optional[str], exclude: Optional[Member] = None,
             need_model: bool = False) -> Optional[Member]:
        """
        The member for a request for C{model} (normalised, or L{None}), or
        L{None} when none is available.

        @param need_model: refuse members known not to have the model.
        """
        members = self.members
        count = len(members)
        start = self._turn % count
        best: Optional[Member] = None
        best_key: tuple = ()
        for i in range(count):
            member = members[(start + i) % count]
            if member is exclude or not member.healthy:
                continue
            state = member.breaker_state(model)
            if state == "open":
                continue
            key = (not member.may_have(model), state == "half_open",
                   model is None or model not in member.loaded, member.outstanding)
            if best is None or key < best_key:
                best, best_key = member, key
        if best is None or (need_model and best_key[0]):
            return None
        self._turn += 1
        return best

    def answered(self, member: Member, code: int, model: Optional[str], path: str) -> None:
        """
        A member answered a request: below 500 it is alive; a 200 for a model
        says it has the model, and (except for C{/api/show}) has it loaded.
        """
        if code < 500 and not member.healthy:
            self._mark(member, True, "answered a request")
        if code == 200 and model is not None:
            if member.models is not None and model not in member.models:
                member.models = member.models | {model}
            if path != "/api/show" and model not in member.loaded:
                member.loaded = member.loaded | {model}

    def _unavailable(self, model: Optional[str] = None) -> errors.ApiError:
        # Retry-After: the soonest any member may take the call again (its
        # next health check, or its server's or this model's breaker). A
        # lone member refused by a breaker answers with that breaker's 503.
        now = self._reactor.seconds()
        waits = []
        refusals: List[BreakerOpen] = []
        for member in self.members:
            if not member.healthy:
                waits.append(self.health_interval if self._next_check is None
                             else self._next_check - now)
                continue
            scoped = getattr(member.client, "model_breaker", None)
            for breaker in (member.client.breaker,
                            scoped(model) if scoped is not None and model else None):
                if breaker is None:
                    continue
                try:
                    breaker.before_call()
                except BreakerOpen as e:
                    waits.append(e.retry_after)
                    refusals.append(e)
                    break
                else:
                    breaker.neutral()  # the cool-down just ended: undo the admission
        if len(self.members) == 1 and refusals:
            error = refusals[0].api_error()
        else:
            error = errors.no_upstream_available(min(waits) if waits else 1.0)
        # The access log's cause for this 503 (qwen_twist.context.CallContext).
        error.cause = "; ".join(
            ["%s: %s" % (type(e).__name__, e) for e in refusals]
            + ["unhealthy: %s" % (m.url,) for m in self.members if not m.healthy]
        ) or "no upstream available"
        return error

    # Health checks -----------------------------------------------------------

    def check_health(self) -> "defer.Deferred[None]":
        """
        One round: every member is asked C{/api/version} (healthy iff 200
        within C{check_timeout}), then C{/api/tags} and C{/api/ps} (what it
        has and has loaded; a failure there keeps what was known). A member
        whose breaker refuses the check keeps its health (the breaker keeps
        it out already); a half-open breaker lets the check through as its
        probe. Never fails.
        """
        self._next_check = self._reactor.seconds() + self.health_interval
        pending = []
        for member in self.members:
            d = self._checks.get(member)
            if d is None:
                d = defer.Deferred.fromCoroutine(self._check(member, self._generation))
                self._checks[member] = d
                d.addBoth(self._check_done, member)
            pending.append(d)
        return defer.DeferredList(pending, consumeErrors=True).addCallback(lambda _: None)

    def current_state(self, max_age: float) -> "defer.Deferred[List[dict]]":
        """
        L{state}, after a health-check round if the last one started more
        than C{max_age} seconds ago (or none has). Concurrent callers share
        the round in flight, so a flood of C{/ready} requests costs Ollama
        at most one round per C{max_age}.
        """
        now = self._reactor.seconds()
        last = self._last_round
        if last is not None and now - last < max_age:
            return defer.succeed(self.state())
        self._last_round = now
        return self.check_health().addCallback(lambda _: self.state())

    def _check_done(self, result: Any, member: Member) -> None:
        self._checks.pop(member, None)
        if isinstance(result, Failure) and not result.check(defer.CancelledError):
            self.log.failure("health check of {url} failed", result, url=member.url)

    async def _check(self, member: Member, generation: int) -> None:
        try:
            info = await self._fetch(member, "/api/version")
        except BreakerOpen:
            return
        except Exception as e:
            if generation == self._generation:
                self._mark(member, False, str(e) or e.__class__.__name__)
            return
        if generation != self._generation:
            return
        version = info.get("version") if isinstance(info, dict) else None
        member.version = version if isinstance(version, str) else None
        self._mark(member, True, "health check passed")
        for path in ("/api/tags", "/api/ps"):
            try:
                document = await self._fetch(member, path)
                names = _model_names(document)
            except Exception as e:
                if generation == self._generation:
                    self.log.info("{path} of {url} failed: {why}", path=path,
                                  url=member.url, why=str(e) or e.__class__.__name__)
                continue
            if generation != self._generation:
                return
            if path == "/api/tags":
                member.models = names
            else:
                member.loaded = names
                member.running = _running(document)

    def _fetch(self, member: Member, path: str) -> defer.Deferred:
        async def fetch() -> Any:
            response = await member.client.send("GET", path,
                                                headers_timeout=self.check_timeout)
            body = await read_body(response, HEALTH_BODY_LIMIT)
            if response.code != 200:
                raise ValueError("HTTP %d" % (response.code,))
            return json.loads(body)

        d = defer.Deferred.fromCoroutine(fetch())
        d.addTimeout(self.check_timeout, self._reactor)
        return d

    def _mark(self, member: Member, healthy: bool, why: str) -> None:
        if member.healthy == healthy:
            return
        member.healthy = healthy
        if healthy:
            self.log.info("Ollama at {url} is healthy again ({why})", url=member.url, why=why)
        else:
            self.log.warn("Ollama at {url} is unhealthy: {why}", url=member.url, why=why)

    def startService(self) -> None:
        """
        In the service hierarchy: health checks run while the gateway runs.
        """
        service.Service.startService(self)
        self.start()

    def stopService(self) -> "defer.Deferred[None]":
        """
        Stop the checks and close the connections (calls in flight have
        finished or been aborted by the drain before this runs).
        """
        service.Service.stopService(self)
        return self.close()

    def start(self) -> None:
        """
        Check now and every C{health_interval} seconds until L{stop}.
        """
        if self._loop is not None:
            return
        self._loop = LoopingCall(self.check_health)
        self._loop.clock = self._reactor
        self._loop.start(self.health_interval, now=True).addErrback(
            lambda f: self.log.failure("upstream health checks stopped", f))

    def stop(self) -> None:
        """
        Stop the periodic checks and cancel those in flight (their outcome
        is ignored).
        """
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        self._generation += 1
        self._next_check = None
        for d in list(self._checks.values()):
            d.cancel()

    # Reporting and shutdown ---------------------------------------------------

    def state(self) -> List[dict]:
        """
        Per-member state for C{/ready}: C{url}, C{healthy} (the last
        verdict; a check refused by an open breaker keeps it), C{version},
        C{models} (how many; L{None} until known), C{loaded} (sorted names),
        C{outstanding}, C{breaker} (C{closed}, C{open}, C{half_open} or
        C{disabled}).
        """
        return [
            {"url": m.url, "healthy": m.healthy, "version": m.version,
             "models": None if m.models is None else len(m.models),
             "loaded": sorted(m.loaded), "outstanding": m.outstanding,
             "breaker": m.breaker_state()}
            for m in self.members
        ]

    def close(self) -> "defer.Deferred[None]":
        """
        Stop the checks and close every client's connections.
        """
        self.stop()
        closing = [defer.maybeDeferred(m.client.close) for m in self.members]
        return defer.DeferredList(closing, consumeErrors=True).addCallback(lambda _: None)
