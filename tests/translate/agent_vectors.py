"""
Shared helpers of the Anthropic Messages and OpenAI Responses translator
tests: NDJSON bodies, a strict parser for named SSE events, and the SDKs'
own types to validate every object against.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from tests.support import sdk

MODEL = "qwen3:8b"


def ndjson(*objects: Dict[str, Any]) -> bytes:
    """
    An NDJSON body, non-ASCII kept as raw UTF-8 as Go's encoder writes it.
    """
    return b"".join(json.dumps(o, ensure_ascii=False).encode("utf-8") + b"\n" for o in objects)


def line(content: str = "", thinking: Optional[str] = None,
         tool_calls: Optional[list] = None, done: bool = False, **extra: Any) -> Dict[str, Any]:
    """
    One native C{/api/chat} stream line.
    """
    message: Dict[str, Any] = {"role": "assistant", "content": content}
    if thinking is not None:
        message["thinking"] = thinking
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    result = {"model": MODEL, "created_at": "2025-01-01T00:00:00Z", "message": message,
              "done": done}
    result.update(extra)
    return result


def named_events(data: bytes) -> List[Dict[str, Any]]:
    """
    Parse C{event: <type>\\ndata: <json>\\n\\n} frames strictly: every frame
    has exactly those two lines, the event name equals the payload's
    C{type}, the JSON is one ASCII line.
    """
    text = data.decode("ascii")
    assert text.endswith("\n\n"), text[-40:]
    events = []
    for frame in text[:-2].split("\n\n"):
        name, payload = frame.split("\n")
        assert name.startswith("event: "), frame
        assert payload.startswith("data: "), frame
        obj = json.loads(payload[len("data: "):])
        assert obj["type"] == name[len("event: "):], frame
        # Byte-identical to the compact encoding of the object (the
        # translators' pre-rendered fast paths must not drift from it).
        assert payload[len("data: "):] == json.dumps(obj, separators=(",", ":")), frame
        events.append(obj)
    return events


def feed_all(translator: Any, body: bytes, chunk: Optional[int] = None) -> bytes:
    """
    Start the translator and feed it C{body} (in pieces of C{chunk} bytes),
    then end it.
    """
    out = [translator.start()]
    if chunk is None:
        out.append(translator.feed(body))
    else:
        for i in range(0, len(body), chunk):
            out.append(translator.feed(body[i:i + chunk]))
    out.append(translator.end())
    return b"".join(out)


def anthropic_validate(obj: Dict[str, Any], kind: str = "event") -> Any:
    """
    Validate C{obj} as the C{anthropic} SDK's stream event or C{Message}.
    """
    sdk("anthropic")  # skips the test where Debian has no SDK
    import pydantic
    from anthropic.types import Message, RawMessageStreamEvent

    if kind == "message":
        return Message.model_validate(obj)
    if obj["type"] in ("ping", "error"):
        return obj
    return pydantic.TypeAdapter(RawMessageStreamEvent).validate_python(obj)


def openai_validate(obj: Dict[str, Any], kind: str = "event") -> Any:
    """
    Validate C{obj} as the C{openai} SDK's Responses stream event or
    C{Response}.
    """
    sdk("openai")  # skips the test where Debian has no SDK
    import pydantic
    from openai.types.responses import Response, ResponseStreamEvent

    if kind == "response":
        return Response.model_validate(obj)
    return pydantic.TypeAdapter(ResponseStreamEvent).validate_python(obj)


def native_answers():
    """
    A hypothesis strategy: a native chat answer as stream lines (thinking,
    content, mixed and tool-call lines in any order, then a done line) and
    the same answer as one non-streaming object, as Ollama accumulates it.
    """
    from hypothesis import strategies as st

    text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8)
    step = st.one_of(
        st.tuples(st.just("thinking"), text),
        st.tuples(st.just("content"), text),
        st.tuples(st.just("mixed"), st.tuples(text, text)),
        st.tuples(st.just("tool"), st.tuples(
            st.sampled_from(["f", "get_weather"]),
            st.dictionaries(st.sampled_from(["a", "city", "n"]),
                            st.one_of(st.integers(-5, 5), text), max_size=2))),
    )

    def build(args):
        steps, reason, prompt, evals = args
        lines, thinking, content, calls = [], "", "", []
        for kind, value in steps:
            if kind == "thinking":
                lines.append(line("", thinking=value))
                thinking += value
            elif kind == "content":
                lines.append(line(value))
                content += value
            elif kind == "mixed":
                lines.append(line(value[1], thinking=value[0]))
                thinking += value[0]
                content += value[1]
            else:
                call = {"id": "call_%d" % (len(calls),),
                        "function": {"name": value[0], "arguments": value[1]}}
                lines.append(line("", tool_calls=[call]))
                calls.append(call)
        counts = {"prompt_eval_count": prompt, "eval_count": evals}
        lines.append(line(done=True, done_reason=reason, **counts))
        message: Dict[str, Any] = {"role": "assistant", "content": content}
        if thinking:
            message["thinking"] = thinking
        if calls:
            message["tool_calls"] = calls
        whole = dict(line(done=True, done_reason=reason, **counts), message=message)
        return ndjson(*lines), whole

    return st.tuples(
        st.lists(step, max_size=6), st.sampled_from(["stop", "length"]),
        st.integers(0, 50), st.integers(0, 50),
    ).map(build)
