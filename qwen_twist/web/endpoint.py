# -*- test-case-name: tests.web.test_endpoint -*-
"""
The base of every API Resource: one coroutine per call, cancelled when the
client goes away, every failure turned into an OpenAI error.

Why C{notifyFinish} first: a Deferred obtained after the connection already
closed never fires (Synapse's C{finish_request} notes this), and the
cancellation of upstream work hangs on it. Cancelling the call's Deferred
cancels whatever it awaits: a queued admission, a treq request (closing the
Ollama connection so generation stops), or a body read.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Optional, Tuple
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource
from twisted.web.server import NOT_DONE_YET

from qwen_twist import errors
from qwen_twist.context import CallContext
from qwen_twist.observe.logsafe import clean
from qwen_twist.observe import ids
from qwen_twist.pipeline import Gateway
from qwen_twist.upstream import failures
from qwen_twist.upstream.client import map_failure, read_body
from qwen_twist.web import respond


#: The status recorded for a call whose client left before any response
#: was sent (nginx's convention); never sent to anyone.
CLIENT_CLOSED = 499


def upstream_of(response: Any) -> Any:
    """
    The C{host:port} of the Ollama server that sent C{response} (which of a
    pool answered), or L{None}.
    """
    where = getattr(response, "upstream_where", None)
    if isinstance(where, str):
        return where
    uri = getattr(getattr(response, "request", None), "absoluteURI", None)
    if not isinstance(uri, bytes):
        return None
    return _netloc(uri)


@functools.lru_cache(maxsize=256)
def _netloc(uri: bytes) -> Any:
    # A handful of upstreams times a handful of paths: parse each once.
    return urlsplit(uri.decode("ascii", "replace")).netloc or None


def note_request(ctx: CallContext, body: Any) -> None:
    """
    Record what a parsed body asks for (model, streaming, the OpenAI
    C{user}) before it is validated, so a call refused in validation is
    audited with the model it named.
    """
    if isinstance(body, dict):
        ctx.model = ids.clean_model(body.get("model"))
        ctx.stream = body.get("stream") is True
        ctx.end_user = ids.clean_user(body.get("user")) or ctx.end_user


def client_ip(request: Any) -> str:
    """
    The TCP peer's address (trusted-proxy handling is the gate's job).
    """
    peer = request.getClientAddress()
    return getattr(peer, "host", "") or ""


def _reject_constant(name: str) -> Any:
    raise ValueError("%s is not valid JSON" % (name,))


def check_body_size(request: Any) -> None:
    """
    @raise errors.ApiError: 413 for a body over C{limits.max_body_bytes}
        (which L{qwen_twist.web.request} discarded as it arrived).
    """
    if getattr(request, "body_too_large", False):
        limit = getattr(request.channel.site, "max_body_bytes", 0)
        raise errors.body_too_large(limit)


def parse_json_body(request: Any) -> Any:
    """
    The request body as JSON.

    @raise errors.ApiError: 413 for a body over the limit; 400 for an empty
        body, invalid UTF-8, invalid JSON (including C{NaN}/C{Infinity}) or
        nesting too deep to parse.
    """
    check_body_size(request)
    request.content.seek(0)
    raw = request.content.read()
    if not raw.strip():
        raise errors.invalid_request("request body is empty; expected a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.invalid_request("request body is not valid UTF-8")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise errors.invalid_request("request body is nested too deeply")
    except ValueError as e:
        raise errors.invalid_request("request body is not valid JSON: %s" % (e,))


class ApiResource(resource.Resource):
    """
    An endpoint. Subclasses set C{route} and C{methods} and implement
    C{serve(request, ctx)} as a coroutine that writes the response (through
    L{respond}) or raises L{errors.ApiError}.
    """

    isLeaf = True
    route = "unknown"
    methods: Tuple[str, ...] = ("POST",)
    #: Whether URLs below this one (C{/v1/models/{id}}) are served here.
    accepts_subpaths = False
    #: The envelope of this route's error responses (L{errors.ApiError.body}):
    #: C{"anthropic"} for the Anthropic Messages routes, whose SDK would
    #: otherwise not recognise the refusals of the gate (401, 429, ...).
    #: (C{"ollama"} on Ollama's native routes.)
    error_style = "openai"
    log = Logger()

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self.gateway = gateway

    def render(self, request: Any) -> Any:
        ctx = CallContext(
            request_id=getattr(request, "request_id", ""),
            route=self.route,
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("utf-8", "replace")[:512],
            client_ip=client_ip(request),
            started=self.gateway.now(),
        )
        screened = getattr(request, "screened", None)
        if screened is not None:
            # The channel ran the head-only checks before reading the body
            # (web.screen): take what they learnt, do not check twice.
            ctx.client_ip = screened.client_ip
            ctx.identity = screened.identity
            ctx.key_record = screened.key_record
            ctx.per_ip_decision = screened.per_ip_decision
            ctx.screened = True
            ctx.end_user = screened.end_user
            ctx.auth_method = screened.auth_method
        request.call = ctx
        request.call_clock = self.gateway.clock
        finished = request.notifyFinish()
        method = ctx.method
        if method == "HEAD" and "GET" in self.methods:
            method = "GET"
        refusal = None
        if self.gateway.draining:
            refusal = errors.shutting_down()
            request.setHeader(b"connection", b"close")
        elif self.refusal(ctx) is not None:
            refusal = self.refusal(ctx)
        elif not self.accepts_subpaths and request.postpath not in ([], [b""]):
            refusal = errors.not_found("Unknown request URL: %s %s" % (ctx.method, ctx.path))
        elif method not in self.methods:
            refusal = errors.method_not_allowed(ctx.method, ctx.path, self.methods)
        if refusal is not None:
            self._fail(request, ctx, refusal)
            ctx.bytes_out = getattr(request, "sentLength", 0)
            self.gateway.call_finished(ctx)
            return NOT_DONE_YET
        self.gateway.call_started(ctx)
        call = defer.Deferred.fromCoroutine(self._run(request, ctx))

        def abort(message: str) -> None:
            # Shutdown ran out of time: the streaming code replaces this with
            # an error event once a stream has begun.
            ctx.shutting_down = True
            call.cancel()

        ctx.abort = abort

        def client_gone(reason: Failure) -> None:
            if not ctx.finished_at:
                ctx.client_gone = True
                ctx.outcome = "client_gone"
                call.cancel()

        finished.addErrback(client_gone)
        return NOT_DONE_YET

    async def _run(self, request: Any, ctx: CallContext) -> None:
        try:
            await self.serve(request, ctx)
        except GeneratorExit:
            # The call was garbage-collected mid-flight; nothing to answer.
            raise
        except BaseException as e:
            if ctx.client_gone:
                pass
            elif ctx.shutting_down and not request.startedWriting:
                self._fail(request, ctx, errors.shutting_down())
            elif isinstance(e, errors.ApiError):
                self._fail(request, ctx, e)
            elif request.startedWriting:
                # A stream broke in a way the streaming code did not handle:
                # cut the response rather than finish it, so the client cannot
                # mistake it for a complete answer.
                self.log.failure("stream failed (request {request_id})", Failure(),
                                 request_id=ctx.request_id)
                ctx.outcome = "truncated"
                if request.channel is not None:
                    request.channel.forceAbortClient()
            else:
                self._fail(request, ctx, self.api_error(Failure(), ctx))
        finally:
            if ctx.client_gone and not request.startedWriting:
                # Nothing reached the client: not the 200 it would have got
                # (nginx's 499, "client closed request").
                ctx.status = CLIENT_CLOSED
            elif not ctx.status:
                ctx.status = request.code
            ctx.bytes_out = getattr(request, "sentLength", 0)
            self.gateway.call_finished(ctx)

    def api_error(self, failure: Failure, ctx: Optional[CallContext] = None) -> errors.ApiError:
        """
        The client-facing error for any failure; one that is not a known
        upstream failure is a gateway bug, logged with its traceback (and
        the call's request id) here and answered with a bare 500. For a
        5xx, C{ctx.cause} records what caused it (the access log line shows
        it).
        """
        where = self.gateway.upstream.where
        mapped = map_failure(failure, where)
        if mapped.code == errors.INTERNAL_ERROR:
            self.log.failure("Unhandled error in {route} (request {request_id})", failure,
                             route=self.route, request_id=getattr(ctx, "request_id", None))
        if ctx is not None and mapped.status >= 500 and ctx.cause is None:
            ctx.cause = "%s from %s" % (failures.describe(failure),
                                        failures.where(failure) or where)
        return mapped

    def upstream_cause(self, ctx: CallContext, response: Any) -> None:
        """
        Record an upstream 5xx answer as the cause of the call's 5xx.
        """
        if response.code >= 500 and ctx.cause is None:
            where = getattr(response, "upstream_where", None) or self.gateway.upstream.where
            ctx.cause = "Ollama HTTP %d from %s" % (response.code, where)

    def _fail(self, request: Any, ctx: CallContext, err: errors.ApiError) -> None:
        if err.detail:
            # What the client is not told (Ollama's own text, an address).
            self.log.info("{route} {request_id} answered {status}: {detail}",
                          route=self.route, request_id=ctx.request_id,
                          status=err.status, detail=clean(err.detail, 2048))
        if err.status >= 500 and ctx.cause is None:
            ctx.cause = getattr(err, "cause", None) or err.code or err.type
        ctx.status = err.status
        ctx.outcome = "error"
        ctx.error_type = err.type
        ctx.error_code = err.code
        respond.error(request, err, self.error_style)

    async def serve(self, request: Any, ctx: CallContext) -> None:
        raise NotImplementedError()

    async def upstream_json(
        self, ctx: CallContext, method: str, path: str, payload: Any = None,
        model_endpoint: bool = True,
    ) -> Any:
        """
        Make a non-streaming upstream call and return its parsed JSON body.

        @raise errors.ApiError: mapped from the upstream status (section 8)
            or from the transport failure.
        """
        body = await self.upstream_bytes(ctx, method, path, payload, model_endpoint)
        try:
            native = json.loads(body)
        except ValueError:
            raise errors.upstream_protocol_error()
        if not isinstance(native, dict):
            raise errors.upstream_protocol_error()
        return native

    def refusal(self, ctx: CallContext) -> Optional[errors.ApiError]:
        """
        A refusal decided by the URL alone, before any admission (an
        endpoint serving a family of paths refuses some of them).
        """
        return None

    def upstream_error(self, status: int, body: bytes, model_endpoint: bool = True,
                       model: Optional[str] = None) -> errors.ApiError:
        """
        The client's error for a non-200 upstream answer (section 8 here;
        Ollama's native routes keep Ollama's 4xx status).
        """
        return errors.from_upstream(status, body, model_endpoint, model)

    async def upstream_body(
        self, ctx: CallContext, method: str, path: str, payload: Any = None,
        limit: int = 0,
    ) -> Tuple[Any, bytes]:
        """
        Make a non-streaming upstream call: the response and its body, read
        up to C{limit} bytes (default C{upstream.max_response_bytes}; more
        is a 502, so one answer cannot take the gateway's memory), whatever
        the status.

        @raise errors.ApiError: mapped from the transport failure.
        """
        gateway = self.gateway
        limit = limit or gateway.config.upstream.max_response_bytes
        if ctx.upstream_started is None:
            # (A batch makes several calls: the span runs from the first.)
            ctx.upstream_started = gateway.now()
        try:
            response = await gateway.upstream.send(method, path, payload,
                                                   request_id=ctx.request_id)
            ctx.upstream_status = response.code
            ctx.upstream = upstream_of(response)
            body = await read_body(response, limit=limit)
        except errors.ApiError:
            raise
        except defer.CancelledError:
            raise
        except Exception:
            if ctx.client_gone:
                raise
            raise self.api_error(Failure(), ctx)
        finally:
            ctx.upstream_finished = gateway.now()
        return response, body

    async def upstream_bytes(
        self, ctx: CallContext, method: str, path: str, payload: Any = None,
        model_endpoint: bool = True, limit: int = 0,
    ) -> bytes:
        """
        Make a non-streaming upstream call and return its body (see
        L{upstream_body}).

        @raise errors.ApiError: mapped from the upstream status (section 8)
            or from the transport failure.
        """
        response, body = await self.upstream_body(ctx, method, path, payload, limit)
        if response.code != 200:
            self.upstream_cause(ctx, response)
            raise self.upstream_error(response.code, body, model_endpoint, ctx.model)
        return body
