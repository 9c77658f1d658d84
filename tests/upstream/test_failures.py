"""
Tests for L{qwen_twist.upstream.failures}: the one classification of upstream
failures shared by the client, the breaker and the pool.
"""

from __future__ import annotations

from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, TimeoutError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import (
    RequestNotSent, RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived,
)

from qwen_twist import errors
from qwen_twist.upstream import failures
from qwen_twist.upstream.failures import (
    MODEL, SERVER, BreakerOpen, ServerError, UpstreamTimeout, counts_as_failure,
)


def failure_of(exception: BaseException) -> Failure:
    try:
        raise exception
    except BaseException:
        return Failure()


class CountsAsFailureTests(SynchronousTestCase):
    """
    Which failures trip a breaker.
    """

    def assertCounts(self, exception: BaseException, expected: bool) -> None:
        self.assertIs(counts_as_failure(failure_of(exception)), expected, repr(exception))

    def test_connection_failures(self) -> None:
        """
        Refused, generic connect errors, DNS, connect timeouts and lost
        connections count.
        """
        for exception in [
            ierror.ConnectionRefusedError(),
            ierror.ConnectError(),
            ierror.DNSLookupError("ollama.invalid"),
            ierror.TimeoutError(),
            ierror.TCPTimedOutError(),
            ierror.ConnectionLost(),
            ConnectionResetError(),
        ]:
            self.assertCounts(exception, True)

    def test_timeouts(self) -> None:
        """
        The headers deadline (UpstreamTimeout) and a bare Deferred timeout
        count.
        """
        self.assertCounts(UpstreamTimeout("headers"), True)
        self.assertCounts(TimeoutError(), True)

    def test_response_failures(self) -> None:
        """
        An upstream that accepted the connection but never answered, or
        answered garbage, counts.
        """
        self.assertCounts(ResponseNeverReceived([failure_of(ierror.ConnectionDone())]), True)
        self.assertCounts(ResponseFailed([failure_of(ierror.ConnectionLost())]), True)

    def test_cancellation_is_not_failure(self) -> None:
        """
        A cancelled request, bare or wrapped by the Agent, does not count.
        """
        self.assertCounts(CancelledError(), False)
        self.assertCounts(ResponseNeverReceived([failure_of(CancelledError())]), False)
        self.assertCounts(ierror.ConnectingCancelledError(None), False)

    def test_api_errors(self) -> None:
        """
        Of the gateway's mapped errors only the transport ones count
        (unreachable, timeout); an Ollama 500 passed on as an ApiError was
        already judged by its body, and 4xx, 503 and internal errors never
        count (issue 9, item 7).
        """
        self.assertCounts(errors.upstream_unavailable("127.0.0.1:11434"), True)
        self.assertCounts(errors.upstream_timeout("headers"), True)
        for status in (500, 502, 504, 404, 400, 429, 503):
            self.assertCounts(errors.ApiError(status, "x"), False)
        self.assertCounts(errors.from_upstream(500, b'{"error":"runner failed"}'), False)
        self.assertCounts(errors.internal_error(), False)

    def test_other_exceptions(self) -> None:
        """
        BreakerOpen itself and unrelated exceptions (gateway bugs) do not
        count.
        """
        self.assertCounts(BreakerOpen(5.0), False)
        self.assertCounts(ValueError("bug"), False)


class HealthTests(SynchronousTestCase):
    """
    Whose health a failure speaks of: the server's, a model's, or nobody's.
    """

    def test_transport_is_server(self) -> None:
        """
        Transport failures are the server's, whatever model was asked for.
        """
        for exception in [ierror.ConnectionRefusedError(), ierror.DNSLookupError("x"),
                          ResponseNeverReceived([failure_of(ierror.ConnectionLost())])]:
            self.assertEqual(failures.health(failure_of(exception), "m:latest"), SERVER)

    def test_deadline_is_the_models(self) -> None:
        """
        A headers deadline on a request naming a model is that model's
        (its runner hung or is loading forever); without a model, the
        server's.
        """
        f = failure_of(UpstreamTimeout("x"))
        self.assertEqual(failures.health(f, "m:latest"), MODEL)
        self.assertEqual(failures.health(f, None), SERVER)

    def test_server_error_scope(self) -> None:
        """
        A ServerError carries the scope its body decided.
        """
        self.assertEqual(failures.health(failure_of(ServerError(object(), MODEL))), MODEL)

    def test_status_health(self) -> None:
        """
        A 500 counts only when it names a runner crash, against the model;
        502/504 (a proxy before Ollama) against the server; a 500 caused by
        the request's options (too much memory for num_ctx) and 503 never.
        """
        crash = b'{"error":"llama runner process has terminated: exit status 2"}'
        memory = (b'{"error":"model requires more system memory (97.5 GiB) than is '
                  b'available (12.1 GiB)"}')
        self.assertEqual(failures.status_health(500, crash, "m"), MODEL)
        self.assertEqual(failures.status_health(500, crash, None), SERVER)
        self.assertIsNone(failures.status_health(500, memory, "m"))
        self.assertIsNone(failures.status_health(503, crash, "m"))
        self.assertEqual(failures.status_health(502, b"", "m"), SERVER)
        self.assertEqual(failures.status_health(504, b"", "m"), SERVER)
        self.assertIsNone(failures.status_health(404, b"", "m"))


class RetryTests(SynchronousTestCase):
    """
    What may be sent again, and where.
    """

    def test_never_sent(self) -> None:
        """
        Refused connections and requests Twisted did not send may go again on
        a fresh connection; a connect timeout (the host may be swamped) and
        a reset after sending may not.
        """
        self.assertTrue(failures.never_sent(failure_of(ierror.ConnectionRefusedError())))
        self.assertTrue(failures.never_sent(failure_of(RequestNotSent())))
        self.assertFalse(failures.never_sent(failure_of(ierror.TCPTimedOutError())))
        self.assertFalse(failures.never_sent(failure_of(ierror.TimeoutError())))
        self.assertFalse(failures.never_sent(failure_of(
            ResponseNeverReceived([failure_of(ierror.ConnectionLost())]))))

    def test_stale_connection(self) -> None:
        """
        A pooled connection found closed (ended before any response) is
        stale; a cancelled request is not.
        """
        done = failure_of(ierror.ConnectionDone())
        self.assertTrue(failures.stale_connection(ResponseNeverReceived([done])))
        self.assertTrue(failures.stale_connection(RequestTransmissionFailed([done])))
        self.assertTrue(failures.stale_connection(RequestNotSent()))
        self.assertFalse(failures.stale_connection(
            ResponseNeverReceived([failure_of(CancelledError())])))
        self.assertFalse(failures.stale_connection(ResponseFailed([done])))
        self.assertFalse(failures.stale_connection(ValueError()))

    def test_retryable(self) -> None:
        """
        The pool retries elsewhere on a refusal by a breaker or an unhealthy
        member, never on a cancellation or a bug.
        """
        self.assertTrue(failures.retryable(failure_of(BreakerOpen(1.0))))
        self.assertTrue(failures.retryable(failure_of(ierror.ConnectionRefusedError())))
        self.assertFalse(failures.retryable(failure_of(CancelledError())))
        self.assertFalse(failures.retryable(failure_of(KeyError())))


class DescribeTests(SynchronousTestCase):
    """
    The cause written to the log for a 5xx.
    """

    def test_wrapped(self) -> None:
        """
        Agent wrappers name the wrapped reasons: refused, reset and timeout
        can be told apart.
        """
        f = failure_of(ResponseNeverReceived([failure_of(ierror.ConnectionLost())]))
        self.assertEqual(failures.describe(f), "ResponseNeverReceived [ConnectionLost]")
        self.assertEqual(failures.describe(failure_of(UpstreamTimeout("late"))),
                         "UpstreamTimeout: late")

    def test_tag(self) -> None:
        """
        A failure tagged with its upstream keeps the first tag.
        """
        f = failure_of(ierror.ConnectionRefusedError())
        failures.tag(f, "10.0.0.1:11434")
        failures.tag(f, "10.0.0.2:11434")
        self.assertEqual(failures.where(f), "10.0.0.1:11434")
