# -*- test-case-name: tests.web.test_endpoint -*-
"""
What the gateway knows about one request while it is served.

One L{CallContext} travels the whole pipeline (peer filter, identity,
limits, queue, translation, upstream, translation back). Each stage fills in
what it learns, and the observers that run when the call ends (access log
now; metrics and the audit log later) read it instead of re-deriving facts
from the Twisted request. It holds no secrets: an identity is recorded by
key id, never by key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Tuple


@dataclass
class CallContext:
    """
    Mutable record of one API call.

    @ivar outcome: C{"ok"}, C{"error"} (an error response was sent),
        C{"client_gone"} (the client disconnected first) or C{"truncated"}
        (a stream ended with an error event after it had started).
    @ivar cause: for a 5xx the gateway produced, what caused it: the
        exception class (and the reasons it wraps) and the upstream, e.g.
        C{ResponseNeverReceived [ConnectionLost] from 10.0.0.5:11434}, so an
        operator can tell refused from reset from timeout. Written once, on
        the access log line.
    """

    request_id: str
    route: str
    method: str
    path: str
    client_ip: str
    started: float
    model: Optional[str] = None
    stream: bool = False
    status: int = 0
    error_type: Optional[str] = None
    error_code: Optional[str] = None
    cause: Optional[str] = None
    outcome: str = "ok"
    client_gone: bool = False
    upstream_status: Optional[int] = None
    first_byte_at: Optional[float] = None
    finished_at: Optional[float] = None
    usage: Optional[dict] = None
    chunks: int = 0
    identity: Optional[str] = None
    #: The API key's record (L{qwen_twist.gate.keys.KeyRecord}) when the
    #: caller presented a key: its id, owner, models and per-key limits.
    key_record: Optional[Any] = None
    #: C{(budget, tokens)} reserved from a per-key token budget, settled
    #: when the call ends.
    token_reservation: Optional[Tuple[Any, int]] = None
    #: The GPU slot L{qwen_twist.gate.queue.Ticket} while the call holds one.
    queue_ticket: Optional[Any] = None
    #: Milliseconds the call waited in the GPU queue.
    queue_wait_ms: Optional[float] = None
    #: The client connection (L{qwen_twist.gate.peerfilter.FilteredConnection})
    #: kept from eviction while this anonymous call is answered.
    busy_connection: Optional[Any] = None
    #: The admission hooks that admitted the call (released in reverse).
    admitted_hooks: List[Any] = field(default_factory=list)
    #: Ends the call early (shutdown): C{abort(reason)}.
    abort: Optional[Callable[[str], None]] = None
    #: Refused or cut because the gateway is shutting down.
    shutting_down: bool = False
    #: Times the client's slowness paused reading from Ollama.
    backpressure_pauses: int = 0
    #: The client's own id for its end user (Anthropic C{metadata.user_id},
    #: Responses C{user}/C{safety_identifier}): for the audit log, never
    #: for admission.
    end_user: Optional[str] = None

    @property
    def duration(self) -> Optional[float]:
        """
        Seconds from arrival to the end of the response, once ended.
        """
        if self.finished_at is None:
            return None
        return self.finished_at - self.started
