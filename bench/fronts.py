# -*- test-case-name: tests.test_bench -*-
"""
What a benchmark client talks to: a I{front}.

Every benchmark compares fronts over the same Ollama emulator: C{direct}
(the emulator's native API itself: the baseline), C{qwengate}, and later
C{nginx} and C{litellm} in front of the same emulator. A front is only an
address, the TLS settings to reach it, the processes whose CPU and memory
are its cost, and a I{request mapping}: which API it speaks (Ollama's
native C{/api/chat} with NDJSON streams, or OpenAI's
C{/v1/chat/completions} with SSE) and how many non-token frames a stream
carries before and after the tokens. Adding a front is adding a
constructor here and a starter in L{bench.processes}; the benchmarks do
not change.

Pure: no I/O, no processes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional, Tuple

#: The model every benchmark asks for (the emulator's default list has it).
MODEL = "qwen3:8b"


@dataclass(frozen=True)
class Api:
    """
    A request mapping: the chat path, the framing of its streams, and the
    frames around the tokens.

    @ivar leading: frames before the first token (OpenAI: the role chunk).
    @ivar trailing: frames after the last token (OpenAI: the finish chunk
        and C{[DONE]}; Ollama: the C{done} line).
    @ivar done_marker: bytes the last frames of a complete stream contain.
    """

    name: str
    chat_path: str
    framing: str
    leading: int
    trailing: int
    done_marker: str

    def chat_body(self, prompt: str, stream: bool, model: str = MODEL) -> bytes:
        """
        The JSON body of a one-message chat request.
        """
        body = {"model": model, "messages": [{"role": "user", "content": prompt}],
                "stream": stream}
        return json.dumps(body, separators=(",", ":")).encode("utf-8")


OLLAMA = Api("ollama", "/api/chat", "ndjson", 0, 1, '"done":true')
OPENAI = Api("openai", "/v1/chat/completions", "sse", 1, 2, "data: [DONE]")


@dataclass(frozen=True)
class Front:
    """
    One way in to the emulator.

    @ivar name: C{direct}, C{qwengate}, C{nginx}, C{litellm}, ...
    @ivar host: loopback address to connect to.
    @ivar api: the L{Api} it speaks.
    @ivar tls: whether it speaks TLS.
    @ivar cafile: PEM file to verify its certificate with (L{None} with
        C{tls}: not verified).
    @ivar server_hostname: the name to verify (and send as SNI).
    @ivar pids: the processes that are this front's own cost (empty for
        C{direct}: the emulator is not a front's cost).
    @ivar headers: extra request headers (an API key, later).
    """

    name: str
    host: str
    port: int
    api: Api
    tls: bool = False
    cafile: Optional[str] = None
    server_hostname: Optional[str] = None
    pids: Tuple[int, ...] = ()
    headers: Tuple[Tuple[str, str], ...] = ()

    @property
    def base_url(self) -> str:
        host = "[%s]" % (self.host,) if ":" in self.host else self.host
        return "%s://%s:%d" % ("https" if self.tls else "http", host, self.port)

    @property
    def chat_url(self) -> str:
        return self.base_url + self.api.chat_path

    def chat_request(self, prompt: str, stream: bool, model: str = MODEL) -> bytes:
        """
        The whole HTTP/1.1 request (keep-alive) for one chat call.
        """
        body = self.api.chat_body(prompt, stream, model)
        lines = [
            "POST %s HTTP/1.1" % (self.api.chat_path,),
            "Host: %s:%d" % (self.server_hostname or self.host, self.port),
            "Content-Type: application/json",
            "Accept: %s" % ("text/event-stream" if stream and self.api.framing == "sse"
                            else "application/json",),
            "Content-Length: %d" % (len(body),),
        ]
        lines.extend("%s: %s" % pair for pair in self.headers)
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    def tls_job(self) -> Optional[dict]:
        """
        The C{tls} section of a load generator job.
        """
        if not self.tls:
            return None
        return {"cafile": self.cafile, "server_hostname": self.server_hostname or self.host}

    def job(self, kind: str, prompt: str, stream: bool, **fields: object) -> dict:
        """
        A load generator job against this front.
        """
        job = {
            "kind": kind,
            "front": self.name,
            "host": self.host,
            "port": self.port,
            "tls": self.tls_job(),
            "request": self.chat_request(prompt, stream).decode("latin-1"),
            "framing": self.api.framing,
            "leading": self.api.leading,
            "trailing": self.api.trailing,
            "done_marker": self.api.done_marker,
        }
        job.update(fields)
        return job


def direct_front(host: str, port: int) -> Front:
    """
    The emulator's native API, the baseline.
    """
    return Front("direct", host, port, OLLAMA)


def qwengate_front(host: str, port: int, cafile: Optional[str], pid: int) -> Front:
    """
    qwengate over TLS, verifying its self-signed development certificate.
    """
    return Front("qwengate", host, port, OPENAI, tls=True, cafile=cafile,
                 server_hostname="localhost", pids=(pid,))
