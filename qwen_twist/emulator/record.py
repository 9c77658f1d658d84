# -*- test-case-name: tests.emulator.test_server -*-
"""
What the Ollama emulator received and how its streams ended.

Gateway tests assert on the upstream side of a call: the exact body the
gateway sent (TV-01..TV-15), that a client disconnect reached the upstream
as a closed connection (TV-30), that backpressure paused generation. The
L{Record} keeps that evidence: every request (method, path, headers, parsed
JSON body) and counters for streams started, completed, abandoned by the
client, cut by a scripted fault, currently active, and producer pauses.

In-process tests read the object directly; out-of-process users (the
benchmarks, the demo) get L{Record.to_dict} from C{GET /_emulator/record}.
The emulator's own control paths (C{/_emulator/...}) are not recorded.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, List, Optional

#: Requests kept by default; older ones are dropped so a long benchmark does
#: not grow without bound (the counters keep counting).
DEFAULT_MAX_REQUESTS = 10_000

#: Request body bytes kept by default. A count alone does not bound memory:
#: 10,000 large chat bodies held 8 GB. The newest request is always kept.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class RecordedRequest:
    """
    One request as the emulator saw it.

    @ivar method: C{"POST"}, C{"GET"}, ...
    @ivar path: the URL path without the query (C{"/api/chat"}).
    @ivar headers: lower-cased names; repeated headers joined with C{", "}.
    @ivar body: the parsed JSON body, or L{None} when there was none or it
        was not JSON.
    @ivar at: the emulator's clock when it arrived.
    @ivar size: bytes of the request body as received (what the byte bound
        of L{Record} counts).
    """

    method: str
    path: str
    headers: Dict[str, str]
    body: Any
    at: float
    size: int = 0

    def to_dict(self) -> Dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "headers": dict(self.headers),
            "body": self.body,
            "at": self.at,
        }


class Record:
    """
    Requests received and stream outcomes.

    A stream is a C{stream: true} chat or generate response that passed
    validation. Each one ends exactly one way: C{completed} (the C{done}
    line went out), C{abandoned} (the client closed the connection first,
    including while a scripted hang was holding it), or C{faulted} (a
    scripted C{close_after}, C{invalid_json_after} or C{error_line_after}
    ended it). C{requests_abandoned} counts the non-streaming responses
    (and C{hang_before_headers}) whose client left before the answer.

    @ivar requests: the last L{RecordedRequest}s, oldest first: at most
        C{max_requests} of them, and no more than C{max_bytes} of bodies in
        all (the newest one is kept whatever its size).
    @ivar request_count: all requests ever recorded (since L{reset}).
    @ivar streams_active: streams not yet ended; a gauge, so L{reset} keeps
        it.
    @ivar pauses: how often the transport paused a stream (backpressure).
    @ivar connections: connections accepted (a gateway that pools its
        upstream connections opens few).
    @ivar faults: scripted faults that struck.
    """

    def __init__(self, max_requests: int = DEFAULT_MAX_REQUESTS,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._max_requests = max_requests
        self._max_bytes = max_bytes
        self.streams_active = 0
        self.reset()

    def reset(self) -> None:
        """
        Forget the requests and zero the counters (not L{streams_active}).
        """
        self.requests: Deque[RecordedRequest] = deque()
        #: Body bytes of the requests kept.
        self.bytes_kept = 0
        self.request_count = 0
        self.streams_started = 0
        self.streams_completed = 0
        self.streams_abandoned = 0
        self.streams_faulted = 0
        self.requests_abandoned = 0
        self.pauses = 0
        self.faults = 0
        self.connections = 0

    # recording

    def add(self, request: RecordedRequest) -> None:
        requests = self.requests
        requests.append(request)
        self.bytes_kept += request.size
        self.request_count += 1
        while len(requests) > 1 and (
            len(requests) > self._max_requests or self.bytes_kept > self._max_bytes
        ):
            self.bytes_kept -= requests.popleft().size

    def stream_started(self) -> None:
        self.streams_started += 1
        self.streams_active += 1

    def stream_completed(self) -> None:
        self.streams_completed += 1
        self.streams_active -= 1

    def stream_abandoned(self) -> None:
        self.streams_abandoned += 1
        self.streams_active -= 1

    def stream_faulted(self) -> None:
        self.streams_faulted += 1
        self.streams_active -= 1

    def request_abandoned(self) -> None:
        self.requests_abandoned += 1

    def paused(self) -> None:
        self.pauses += 1

    def connection_opened(self) -> None:
        self.connections += 1

    def fault_struck(self) -> None:
        self.faults += 1

    # reading

    def for_path(self, path: str) -> List[RecordedRequest]:
        """
        The recorded requests to C{path}, oldest first.
        """
        return [request for request in self.requests if request.path == path]

    def bodies(self, path: str) -> List[Any]:
        """
        The parsed bodies of the requests to C{path}, oldest first.
        """
        return [request.body for request in self.requests if request.path == path]

    def last(self, path: Optional[str] = None) -> Optional[RecordedRequest]:
        """
        The latest request (to C{path}, if given), or L{None}.
        """
        for request in reversed(self.requests):
            if path is None or request.path == path:
                return request
        return None

    def counters(self) -> Dict[str, int]:
        return {
            "request_count": self.request_count,
            "streams_started": self.streams_started,
            "streams_completed": self.streams_completed,
            "streams_abandoned": self.streams_abandoned,
            "streams_faulted": self.streams_faulted,
            "streams_active": self.streams_active,
            "requests_abandoned": self.requests_abandoned,
            "pauses": self.pauses,
            "faults": self.faults,
            "connections": self.connections,
        }

    def to_dict(self) -> Dict[str, Any]:
        """
        JSON-ready: C{{"requests": [...], "counters": {...}}}.
        """
        return {
            "requests": [request.to_dict() for request in self.requests],
            "counters": self.counters(),
        }
