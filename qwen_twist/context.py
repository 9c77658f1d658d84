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
from typing import Any, Callable, Dict, List, Optional, Tuple


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
    #: The head-only checks (address, per-IP rate, identity) already ran,
    #: before the body was read (L{qwen_twist.web.screen}).
    screened: bool = False
    #: The per-IP bucket's decision taken by the screen, shown in the
    #: C{x-ratelimit-*} headers.
    per_ip_decision: Optional[Any] = None
    #: The call's effective output cap after the option policy; what a
    #: token budget reserves for it.
    max_tokens: Optional[int] = None
    #: The client's own id for its end user (OpenAI C{user}, Anthropic
    #: C{metadata.user_id}, Responses C{user}/C{safety_identifier}, or a
    #: trusted front end's C{audit.user_header}), bounded by
    #: L{qwen_twist.observe.ids.clean_user}: for the audit log, never for
    #: admission.
    end_user: Optional[str] = None
    # What the audit log and the metrics read (issue 11). ------------------
    #: How the caller authenticated (C{api_key}, C{jwt}, C{certificate}) or
    #: tried to; with C{auth_failure} (C{missing}, C{invalid},
    #: C{model_not_allowed}, C{scope_required}) when it failed.
    auth_method: Optional[str] = None
    auth_failure: Optional[str] = None
    #: Characters of prompt text the body carried.
    prompt_chars: Optional[int] = None
    #: The C{host:port} of the Ollama server that answered.
    upstream: Optional[str] = None
    #: When the upstream request was sent and when it was over (headers
    #: and body read, or the stream ended): the gateway's overhead is the
    #: call's duration minus this span and the queue wait.
    upstream_started: Optional[float] = None
    upstream_finished: Optional[float] = None
    #: Response body bytes written to the client.
    bytes_out: int = 0
    #: Ollama's own timings from its final answer (nanoseconds, as sent):
    #: C{load_duration}, C{prompt_eval_duration}, C{eval_duration},
    #: C{eval_count}.
    ollama_timings: Optional[Dict[str, Any]] = None

    @property
    def duration(self) -> Optional[float]:
        """
        Seconds from arrival to the end of the response, once ended.
        """
        if self.finished_at is None:
            return None
        return self.finished_at - self.started

    @property
    def key_owner(self) -> Optional[str]:
        """
        The presented key's owner from the keys file (never the key).
        """
        record = self.key_record
        return getattr(record, "owner", None) if record is not None else None

    def upstream_time(self, now: float) -> float:
        """
        Seconds spent waiting for Ollama so far (or in all, once over).
        """
        began = self.upstream_started
        if began is None:
            return 0.0
        ended = self.upstream_finished
        return (now if ended is None else ended) - began

    def overhead(self, now: float) -> float:
        """
        Seconds of the call so far that were the gateway's own work: the
        time since arrival minus the time Ollama took and the queue wait.
        """
        spent = (now - self.started - self.upstream_time(now)
                 - (self.queue_wait_ms or 0.0) / 1000.0)
        return spent if spent > 0.0 else 0.0
