# -*- test-case-name: tests.upstream.test_failures -*-
"""
What an upstream outcome means: the one classification of Ollama failures.

Why one leaf module: the client (error mapping), the circuit breaker (is
Ollama unhealthy?) and the pool (may another member be tried?) must agree on
what a failure is, and they used to carry three lists that drifted apart.
This module imports nothing from the rest of L{qwen_twist.upstream}, so every
one of them can import it without a cycle.

The questions, and who asks them:

  - L{health}: does this failure say the upstream is unhealthy, and for whom?
    L{SERVER} (transport errors: refused, reset, DNS, connect timeout; the
    whole server is in trouble), L{MODEL} (a headers deadline or a runner
    crash on a request naming a model: that model's runner is in trouble,
    other models on the same server may be fine), or L{None} (says nothing:
    the client went away, a 4xx, Ollama's 503 "queue full", a 500 caused by
    the request itself such as an option Ollama cannot satisfy, a gateway
    bug). The breaker counts only the first two (issue 9, item 7: one
    tenant's bad options must not open the breaker for everyone).
  - L{retryable}: may the pool send the request to another member?
  - L{never_sent}: did the request fail before any byte reached Ollama, so
    that sending it again on a fresh connection cannot run it twice?
  - L{cancelled}: is this only the client going away?
"""

from __future__ import annotations

from typing import Optional

from twisted.internet import defer, error
from twisted.python.failure import Failure
from twisted.web import client

from qwen_twist import errors

#: L{health} verdicts.
SERVER = "server"
MODEL = "model"

#: Ollama's texts for a runner that died or cannot start (ollama:
#: llm/server.go, server/sched.go). A 500 carrying one says the model's
#: runner is unhealthy; any other 500 is taken as caused by the request.
RUNNER_CRASH_MARKERS = (
    b"llama runner process has terminated",
    b"llama runner process no longer running",
    b"runner process has terminated",
    b"timed out waiting for llama runner to start",
    b"llama runner exited",
)

#: How much of a 5xx body is read to classify it (Ollama's errors are one
#: short JSON object).
ERROR_BODY_LIMIT = 64 * 1024


class UpstreamTimeout(Exception):
    """
    A deadline on an upstream request expired; C{args[0]} says which.
    """


class BodyTooLarge(Exception):
    """
    A non-streaming upstream body exceeded its cap.
    """


class ServerError(Exception):
    """
    An upstream 5xx whose body says the upstream is unhealthy, carried
    through the breaker as a failure and handed back to the caller as the
    response it was.

    @ivar response: the response, its body still readable.
    @ivar scope: L{SERVER} or L{MODEL}.
    """

    def __init__(self, response: object, scope: str) -> None:
        super().__init__(getattr(response, "code", 500))
        self.response = response
        self.scope = scope


class BreakerOpen(Exception):
    """
    A call was refused without trying because the breaker is open (or its
    half-open probe is still out).

    @ivar retry_after: seconds until a call may be admitted again.
    @ivar name: the breaker's name (which upstream, and model if scoped).
    """

    def __init__(self, retry_after: float, name: str = "") -> None:
        super().__init__(retry_after, name)
        self.retry_after = retry_after
        self.name = name

    def __str__(self) -> str:
        return "circuit breaker %s open; retry after %.3f s" % (self.name, self.retry_after)

    def api_error(self) -> errors.ApiError:
        """
        The client's answer: 503 with C{Retry-After} (the OpenAI SDKs honour
        it before retrying).
        """
        return errors.breaker_open(self.name, self.retry_after)


# Agent failures that wrap the real reasons (in C{reasons}); cancelling an
# Agent request produces them wrapping CancelledError (style guide 1.7).
_WRAPPERS = (client.ResponseFailed, client.RequestTransmissionFailed)

# Failures that say the server is unreachable or broke the connection.
_TRANSPORT = (
    error.ConnectError,  # refused, connect timeout, no route, ...
    error.DNSLookupError,
    error.ConnectionClosed,  # lost, reset, closed before answering
    client.RequestNotSent,
    ConnectionError,
) + _WRAPPERS

# Deadlines: the server (or the model's runner) did not answer in time.
_DEADLINES = (UpstreamTimeout, defer.TimeoutError, TimeoutError)


def cancelled(failure: Failure) -> bool:
    """
    Whether C{failure} only says the caller cancelled (the client went
    away): a C{CancelledError}, or an Agent failure wrapping only those.
    """
    value = failure.value
    if isinstance(value, defer.CancelledError):
        return True
    if isinstance(value, _WRAPPERS):
        reasons = getattr(value, "reasons", None) or ()
        return bool(reasons) and all(r.check(defer.CancelledError) for r in reasons)
    return False


def runner_crashed(body: bytes) -> bool:
    """
    Whether an Ollama 5xx body names a runner that died or cannot start.
    """
    lowered = body.lower()
    return any(marker in lowered for marker in RUNNER_CRASH_MARKERS)


def status_health(status: int, body: bytes, model: Optional[str]) -> Optional[str]:
    """
    L{health} of an upstream response with C{status} and (the start of)
    C{body}: 502 and 504 (a proxy in front of Ollama that cannot reach it)
    are L{SERVER}; a 500 naming a runner crash is L{MODEL} (L{SERVER} when
    the request names no model); anything else says nothing. 503 is
    Ollama's "queue full": alive and answering in milliseconds.
    """
    if status in (502, 504):
        return SERVER
    if status >= 500 and status != 503 and runner_crashed(body):
        return MODEL if model else SERVER
    return None


def health(failure: Failure, model: Optional[str] = None) -> Optional[str]:
    """
    Whether a failed upstream call says the upstream is unhealthy, and
    whose health: L{SERVER}, L{MODEL} or L{None} (see the module docstring).

    @param model: the model the request named, if any.
    """
    value = failure.value
    if isinstance(value, ServerError):
        return value.scope
    if isinstance(value, errors.ApiError):
        # The gateway's mapping of one of the failures below.
        if value.code == "upstream_timeout":
            return MODEL if model else SERVER
        if value.code == "upstream_unavailable" and value.status == 502:
            return SERVER
        return None
    if isinstance(value, _DEADLINES):
        return MODEL if model else SERVER
    if isinstance(value, _TRANSPORT):
        return None if cancelled(failure) else SERVER
    return None


def counts_as_failure(failure: Failure) -> bool:
    """
    Whether C{failure} says the upstream (server or model) is unhealthy.
    """
    return health(failure, "m") is not None


def retryable(failure: Failure) -> bool:
    """
    Whether the pool may send a request that failed with C{failure} to
    another member: the breaker refused it, or the member is unhealthy.
    Never a cancellation or a gateway bug.
    """
    return isinstance(failure.value, BreakerOpen) or counts_as_failure(failure)


def never_sent(failure: Failure) -> bool:
    """
    Whether the request failed before any byte of it reached Ollama, so
    that it may be sent once more on a fresh connection even if it is a
    C{POST}: the connection was refused (or never made), or Twisted says
    the request was not sent.
    """
    value = failure.value
    if isinstance(value, error.ConnectError) and not isinstance(
        value, (error.TimeoutError, error.TCPTimedOutError)
    ):
        return True
    return isinstance(value, client.RequestNotSent)


def stale_connection(exception: BaseException) -> bool:
    """
    Whether a request on a B{pooled} connection failed because the
    connection turned out to be closed before any response: Twisted says it
    was not sent, or the connection ended (cleanly or not) before a byte of
    response came back. That is the keep-alive race (Ollama closed the idle
    connection as it was reused), and the request is sent once more on a
    fresh connection; a cancellation never is.
    """
    if isinstance(exception, client.RequestNotSent):
        return True
    if not isinstance(exception, (client.ResponseNeverReceived,
                                  client.RequestTransmissionFailed)):
        return False
    reasons = getattr(exception, "reasons", None) or ()
    return bool(reasons) and all(
        r.check(error.ConnectionDone, error.ConnectionLost) for r in reasons)


def unreachable(failure: Failure) -> bool:
    """
    Whether nothing usable answered at the upstream address: refused, reset,
    DNS, a connection lost before or during the response.
    """
    return isinstance(failure.value, _TRANSPORT)


def tag(failure: Failure, where: str) -> None:
    """
    Remember which upstream (C{host:port}) C{failure} came from, for the
    error message and the log line (see L{where}).
    """
    if getattr(failure.value, "upstream_where", None) is None:
        try:
            failure.value.upstream_where = where
        except AttributeError:
            pass


def where(failure: Failure) -> Optional[str]:
    """
    The upstream C{failure} was L{tag}ged with, or L{None}.
    """
    return getattr(failure.value, "upstream_where", None)


def describe(failure: Failure) -> str:
    """
    A one-line cause for the log: the exception class, and the wrapped
    reasons' classes for Agent failures (C{ResponseNeverReceived
    [ConnectionLost]}), so refused, reset and timeout are told apart.
    """
    value = failure.value
    name = type(value).__name__
    reasons = getattr(value, "reasons", None)
    if isinstance(value, _WRAPPERS) and reasons:
        inner = ", ".join(type(r.value).__name__ for r in reasons)
        return "%s [%s]" % (name, inner)
    text = str(value)
    return "%s: %s" % (name, text) if text else name
