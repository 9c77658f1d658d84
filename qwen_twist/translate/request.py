# -*- test-case-name: tests.translate.test_chat -*-
"""
The one value every request translator produces.

The web layer needs more than the native body: which upstream path to call,
whether the client wants SSE, whether to add a usage chunk, and the numbers
the admission limits look at (prompt size, output cap). Bundling them in a
frozen L{UpstreamRequest} means the body is parsed and checked exactly once,
by the pure translators, and nothing downstream re-reads the client's JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple


@dataclass(frozen=True)
class UpstreamRequest:
    """
    A translated client request, ready to send to Ollama.

    @ivar path: the native endpoint: C{/api/chat}, C{/api/generate} or
        C{/api/embed}.
    @ivar payload: the native JSON body (C{stream} always explicit for chat
        and generate, C{options} omitted when empty). Serialise it once, with
        C{separators=(",", ":")}.
    @ivar model: the model string exactly as the client sent it; responses
        echo it.
    @ivar stream: the client asked for C{stream: true}.
    @ivar include_usage: C{stream_options.include_usage} was true (always
        false when not streaming).
    @ivar prompt_chars: characters of everything the model reads: for chat,
        message contents (every role), assistant reasoning, tool-call
        arguments (strings, or objects as compact JSON), tool call ids and
        names, tool definitions and the C{response_format} schema as
        compact JSON, and stop strings; prompt, suffix and stop strings for
        completions; all inputs for embeddings. Images are not counted.
    @ivar max_tokens: the effective positive output cap
        (C{max_completion_tokens}, else C{max_tokens}, else a positive
        C{options.num_predict}), or L{None}.
    @ivar encoding_format: embeddings only: C{"float"} or C{"base64"}.
    @ivar batch: legacy completions with several prompts: one native
        payload per prompt, in order (C{payload} is the first); empty
        otherwise.
    """

    path: str
    payload: Dict[str, Any]
    model: str
    stream: bool
    include_usage: bool
    prompt_chars: int
    max_tokens: Optional[int]
    encoding_format: str = "float"
    batch: Tuple[Dict[str, Any], ...] = ()
