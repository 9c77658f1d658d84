# -*- test-case-name: tests.translate.test_ndjson -*-
"""
Cutting Ollama's NDJSON body into lines.

Ollama streams one JSON object per line, but HTTP chunk and socket read
boundaries are unrelated to line boundaries (reference section 2.1): one
read may hold many lines, a line may be spread over many reads, and a read
may end in the middle of a multi-byte UTF-8 sequence. Twisted's
C{LineReceiver} would do, except that its C{MAX_LENGTH} is 16 KiB while a
single line (a long tool call, a big final message on the E23 path) may
legitimately be 8 MiB (E21), and a body protocol is not a line receiver
anyway. So this small splitter exists.

A read that is exactly one complete line (the common case while
streaming: Ollama writes and flushes one line per token) takes a fast path
without splitting (issue 10: 4.9 -> 4.4 us per relayed chunk, translation
and SSE write included, C{python -m bench.micro relay_chunk}).

It never copies an incomplete line more than once: pieces of a line that
has not ended yet are kept in a list and joined when its newline arrives,
so an 8 MiB line read in 64 KiB pieces costs one 8 MiB join rather than a
quadratic series of concatenations. Its size is bounded by C{max_line} so
a misbehaving upstream cannot make the gateway hold an unbounded buffer.
"""

from __future__ import annotations

from typing import List, Optional

#: The shortest line limit the reference allows (E21: Ollama's own Go
#: client accepts 8 MB lines).
MIN_LINE_LIMIT = 8 * 1024 * 1024


class LineTooLong(Exception):
    """
    A line (complete or not) is longer than the splitter's C{max_line}.

    @ivar lines: the complete lines that preceded the oversized one in the
        same L{NdjsonSplitter.feed} call, so the caller can still translate
        them in order before reporting the failure.
    """

    def __init__(self, lines: Optional[List[bytes]] = None) -> None:
        super().__init__("NDJSON line exceeds the length limit")
        self.lines: List[bytes] = lines if lines is not None else []


class NdjsonSplitter:
    """
    Bytes in any chunking -> complete lines, without their line ending.

    C{\\n} ends a line and a C{\\r} right before it is dropped (CRLF);
    lines that are empty or only whitespace are skipped.

    @ivar max_line: the longest line accepted, in bytes, line ending excluded.
    """

    def __init__(self, max_line: int = 16 * 1024 * 1024) -> None:
        """
        @param max_line: the longest line accepted. Production callers pass
            at least L{MIN_LINE_LIMIT} (the configuration enforces it);
            tests may use tiny limits to reach the boundary cheaply.
        @raise ValueError: if C{max_line} is not positive.
        """
        if max_line < 1:
            raise ValueError("max_line must be positive, not %r" % (max_line,))
        self.max_line = max_line
        self._pending: List[bytes] = []
        self._size = 0

    @property
    def buffered(self) -> int:
        """
        The bytes of the incomplete line currently held.
        """
        return self._size

    def feed(self, data: bytes) -> List[bytes]:
        """
        Add C{data} and return every line it completes, in order.

        @raise LineTooLong: when a complete line, or the incomplete line
            being buffered, exceeds C{max_line}. The buffer is dropped.
        """
        newline = data.find(b"\n")
        if newline == len(data) - 1 and not self._pending:
            # The common case while streaming: one whole line per read.
            line = data[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.max_line:
                raise LineTooLong()
            return [line] if line and not line.isspace() else []
        if newline < 0:
            if data:
                self._pending.append(data)
                self._size += len(data)
                if self._size > self.max_line:
                    self._drop()
                    raise LineTooLong()
            return []
        if self._pending:
            self._pending.append(data)
            data = b"".join(self._pending)
            self._pending = []
            self._size = 0
        parts = data.split(b"\n")
        tail = parts.pop()
        max_line = self.max_line
        lines: List[bytes] = []
        for line in parts:
            if len(line) > max_line:
                self._drop()
                raise LineTooLong(lines)
            if line.endswith(b"\r"):
                line = line[:-1]
            if line and not line.isspace():
                lines.append(line)
        if tail:
            if len(tail) > max_line:
                self._drop()
                raise LineTooLong(lines)
            self._pending.append(tail)
            self._size = len(tail)
        return lines

    def flush(self) -> Optional[bytes]:
        """
        The end of the body was reached: return the final line if it had no
        newline (L{None} if there is none, or it is blank) and empty the
        buffer.
        """
        if not self._pending:
            return None
        line = b"".join(self._pending)
        self._drop()
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line or line.isspace():
            return None
        return line

    def _drop(self) -> None:
        self._pending = []
        self._size = 0
