"""
The test doubles of an upstream HTTP response, shared by every test module
that needs one (the upstream client, the pool, the web relay).

Why hand-made responses at all, beside the emulator: these tests control the
body byte by byte and in time (half a stream, then the upstream dies; a
pause requested by a slow client), which an emulator behind a real or an
in-memory connection does not let a test step through. Pipeline tests that
need only what Ollama says use the emulator (L{tests.web.helpers.EmulatorHarness}).
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import error as ierror
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers


class FakeBodyTransport:
    """
    Stands in for the upstream socket's producer (Twisted's
    C{TransportProxyProducer}): records pauses, resumes and the stop.

    @ivar state: C{"producing"}, C{"paused"} or C{"stopped"}.
    @ivar pauses: how often it was paused.
    """

    def __init__(self, response: "FakeResponse") -> None:
        self.response = response
        self.state = "producing"
        self.pauses = 0

    @property
    def stopped(self) -> bool:
        return self.state == "stopped"

    def pauseProducing(self) -> None:
        self.pauses += 1
        self.state = "paused"

    def resumeProducing(self) -> None:
        self.state = "producing"

    def stopProducing(self) -> None:
        self.state = "stopped"
        if self.response.lose_on_stop:
            # What Twisted's client does: stopping the body's transport
            # ends the body with ResponseFailed.
            self.response.lose(Failure(ResponseFailed([Failure(ierror.ConnectionAborted())])))


class FakeResponse:
    """
    An C{IResponse} whose body the test delivers: whole at once when
    C{auto} (the default when a body is given), or piece by piece with
    L{send}, then L{finish} (or L{lose} for a cut).

    @ivar protocol: the body protocol, once delivered.
    """

    def __init__(self, code: int, body: Optional[bytes] = None, auto: Optional[bool] = None,
                 lose_on_stop: bool = False) -> None:
        self.code = code
        self.phrase = b"X"
        self.version = (b"HTTP", 1, 1)
        self.headers = Headers()
        self.length = len(body or b"")
        self.request = None
        self.previousResponse = None
        self.body = body or b""
        self.auto = (body is not None) if auto is None else auto
        self.lose_on_stop = lose_on_stop
        self.protocol: Any = None
        self.lost = False
        self._pending = self.body
        self.transport = FakeBodyTransport(self)

    def deliverBody(self, protocol: Any) -> None:
        assert self.protocol is None, "body delivered twice"
        self.protocol = protocol
        protocol.makeConnection(self.transport)
        if self.auto:
            self.finish()

    def send(self, data: bytes) -> None:
        """
        Deliver part of the body (nothing once the reader stopped it).
        """
        if not self.transport.stopped and not self.lost:
            self.protocol.dataReceived(data)

    def finish(self, reason: Any = None) -> None:
        """
        Deliver what is left of the initial body, then end it: cleanly, or
        with C{reason} (an exception instance).
        """
        if self.lost:
            return
        pending, self._pending = self._pending, b""
        if pending:
            self.send(pending)
        self.lose(Failure(reason if reason is not None else ResponseDone()))

    def lose(self, reason: Failure) -> None:
        if not self.lost:
            self.lost = True
            self.protocol.connectionLost(reason)
