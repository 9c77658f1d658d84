# -*- test-case-name: tests.web.test_endpoint -*-
"""
The request pipeline's shared state and its extension points.

Every API call runs the same stages, in this order:

    peer filter -> TLS -> identity -> limits -> queue -> translate
        -> upstream (treq) -> translate back, with observers at the end

The connection-level stages (peer filter, TLS) live in the listening
factories; the request-level ones are the C{admit} hooks of L{Gateway}: each
is an object with C{admit(request, ctx, plan)} returning a value or a
Deferred that fails with an L{qwen_twist.errors.ApiError} to refuse the call
(a later C{release(ctx)} undoes what C{admit} reserved). Identity, rate
limits and the fair queue are such hooks; the Resources do not change when
one is added. Observers (C{call_finished(ctx)}) see every finished call:
the access log now, Prometheus metrics and the audit log later.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from qwen_twist.config import Config
from qwen_twist.context import CallContext
from qwen_twist.interfaces import ICallObserver, IReconfigurable
from qwen_twist.observe.logsafe import clean
from qwen_twist.translate.chat import ChatOptions
from qwen_twist.upstream.client import OllamaClient


@implementer(ICallObserver)
class AccessLog:
    """
    One log line per finished call: no query strings, no headers, no body,
    so nothing secret can end up in it. Every field a client can influence
    is escaped (L{qwen_twist.observe.logsafe}), so it cannot forge or hide a line.

    Why the line is formatted here with C{%}: it is written for every call,
    and Twisted's C{{field}} formatting of ten fields (C{string.Formatter}
    in Python) was most of its cost (issue 10: 56 -> 31 us CPU per line,
    C{python -m bench.micro}). The fields stay in the event for structured
    observers; the text observers format one field.
    """

    def __init__(self, observer: Any = None) -> None:
        # Bound once: Logger.__get__ builds a new Logger on every access
        # (and would name the class, not qwengate.access).
        self.log = Logger(namespace="qwengate.access", source=self, observer=observer)

    def call_finished(self, ctx: CallContext) -> None:
        duration_ms = (ctx.duration or 0.0) * 1000.0
        client_ip, method, path = clean(ctx.client_ip), clean(ctx.method), clean(ctx.path)
        model, request_id, cause = clean(ctx.model), clean(ctx.request_id), clean(ctx.cause)
        line = "%s %s %s %s %s %.1fms model=%s stream=%s request_id=%s" % (
            client_ip, method, path, ctx.status, ctx.outcome, duration_ms,
            model, ctx.stream, request_id)
        if cause is not None:
            line += " cause=%s" % (cause,)
        self.log.info(
            "{line}",
            line=line,
            cause=cause,
            client_ip=client_ip,
            method=method,
            path=path,
            status=ctx.status,
            outcome=ctx.outcome,
            duration_ms=duration_ms,
            model=model,
            stream=ctx.stream,
            request_id=request_id,
        )


@implementer(IReconfigurable)
class Gateway:
    """
    What every Resource needs: configuration, clock, the upstream client,
    the admission hooks and the observers.

    @ivar clock: the reactor (an C{IReactorTime}); tests pass a C{Clock}.
    @ivar config: the L{Config} in force; Resources read the streaming,
        deadline and translation settings from it when a call starts, so a
        call in flight keeps the settings it started with.
    """

    log = Logger()

    #: The settings the Resources read through the gateway.
    uses = ("streaming", "translation", "upstream.timeouts", "lifecycle",
            "upstream.max_response_bytes", "upstream.max_embeddings_bytes",
            "limits.max_embedding_inputs")

    def __init__(
        self,
        config: Config,
        reactor: Any,
        upstream: OllamaClient,
        hooks: Optional[List[Any]] = None,
        observers: Optional[List[Any]] = None,
        screens: Optional[List[Any]] = None,
    ) -> None:
        self.clock = reactor
        self.upstream = upstream
        # The gate's own lists: it changes the contents on reload.
        self.hooks: List[Any] = hooks if hooks is not None else []
        #: Checks decided from the request head alone (C{screen(request,
        #: ctx, kind)}), run before the body is read.
        self.screens: List[Any] = screens if screens is not None else []
        self.observers: List[Any] = list(observers if observers is not None else [AccessLog()])
        #: The limits store (L{qwen_twist.store.interface.ILimitStore}),
        #: shown by C{/ready}; L{None} when the gate is not wired.
        self.store: Any = None
        self.reconfigure(config)
        #: Calls in flight: the call's context by its identity (a client
        #: may send the same X-Request-ID twice).
        self.active: Dict[int, CallContext] = {}
        #: Called with each inter-chunk gap of a stream (seconds); the
        #: metrics replace it.
        self.chunk_gap: Any = None
        self.draining = False
        self._drained: List[defer.Deferred] = []

    def reconfigure(self, config: Config) -> None:
        """
        New calls use C{config}; the translation options derived from it are
        rebuilt here and nowhere else.
        """
        self.config = config
        self.chat_options = ChatOptions(
            reasoning_field=config.translation.reasoning_field,
            max_think_level=config.translation.think_max,
        )

    def now(self) -> float:
        return self.clock.seconds()

    def call_started(self, ctx: CallContext) -> None:
        """
        Track a call until L{call_finished}, so shutdown can wait for it.
        """
        self.active[id(ctx)] = ctx

    def drain(self, timeout: float) -> "defer.Deferred[None]":
        """
        Shutdown: refuse new calls (503) and fire once every call in flight
        has finished, or after C{timeout} seconds, when what is left is
        aborted: a stream ends with an error event (never C{[DONE]}), a
        pending request gets a 503.
        """
        self.draining = True
        d: defer.Deferred = defer.Deferred()
        if not self.active:
            d.callback(None)
            return d
        self._drained.append(d)
        timer = self.clock.callLater(timeout, self._abort_all)
        d.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
        return d

    def _abort_all(self) -> None:
        for ctx in list(self.active.values()):
            abort = ctx.abort
            if abort is not None:
                self.log.info("shutting down: aborting {route} call {request_id}",
                              route=ctx.route, request_id=ctx.request_id)
                abort("gateway shutting down")
        # The deadline is the deadline: stop waiting even for a call that
        # could not be aborted.
        waiting, self._drained = self._drained, []
        for d in waiting:
            d.callback(None)

    def screen(self, request: Any, ctx: CallContext, kind: str) -> Optional[Any]:
        """
        Run the screens on a request whose head has arrived and whose body
        has not been read.

        @return: L{None} when every screen passed (C{ctx} then holds what
            they learnt and is marked C{screened}); otherwise the refusal
            (an L{qwen_twist.errors.ApiError}), already recorded as a
            finished call for the observers.
        """
        from qwen_twist.errors import ApiError

        try:
            for check in self.screens:
                check.screen(request, ctx, kind)
        except ApiError as e:
            ctx.status = e.status
            ctx.outcome = "error"
            ctx.error_type = e.type
            ctx.error_code = e.code
            self.call_finished(ctx)
            return e
        ctx.screened = True
        return None

    async def admit(self, request: Any, ctx: CallContext, plan: Any) -> None:
        """
        Run the admission hooks in order; the first refusal wins and what the
        earlier hooks reserved is released.
        """
        admitted = []
        try:
            for hook in self.hooks:
                await defer.maybeDeferred(hook.admit, request, ctx, plan)
                admitted.append(hook)
        except BaseException:
            self.release(ctx, admitted)
            raise
        ctx.admitted_hooks = admitted

    def release(self, ctx: CallContext, hooks: Optional[List[Any]] = None) -> None:
        """
        Undo admission (the call ended, however it ended).
        """
        if hooks is None:
            hooks, ctx.admitted_hooks = ctx.admitted_hooks, []
        for hook in reversed(hooks):
            try:
                hook.release(ctx)
            except Exception:
                self.log.failure("releasing {hook}", hook=hook)

    def call_finished(self, ctx: CallContext) -> None:
        """
        The response is over: release admission, tell the observers.
        """
        ctx.finished_at = self.now()
        self.active.pop(id(ctx), None)
        self.release(ctx)
        for observer in self.observers:
            try:
                observer.call_finished(ctx)
            except Exception:
                self.log.failure("observer {observer} failed", observer=observer)
        if self.draining and not self.active:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)
