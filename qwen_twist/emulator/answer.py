# -*- test-case-name: tests.emulator.test_server -*-
"""
What one generation says, decided before the first byte goes out.

A scripted L{Behaviour} and the request (thinking on or off, tools offered,
C{num_predict}) fix the whole answer up front: its chunks in order
(thinking, content, tool calls), why it stopped, and the metrics of the
final C{done} object with Go's omitempty. Deciding it up front keeps the
streaming side (L{qwen_twist.emulator.stream}) a loop over pre-encoded
lines, and keeps this part pure: no Twisted, no clock, no I/O.

Chunk lines are built as a per-request head (C{{"model":...,"created_at":"})
plus the timestamp plus a tail cached per word, because the benchmark
pushes hundreds of streams through the emulator and encoding each line from
a dict would cost more than the gateway's own work on it.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from typing import Any, Callable, Dict, List, Optional, Tuple

from qwen_twist.emulator.script import (
    AUTO,
    Behaviour,
    default_answer,
    default_thinking,
    split_tokens,
)
from qwen_twist.emulator.wire import dumps

__all__ = ["Answer", "compose_answer", "context_tokens", "embed_object"]

#: Reported durations when the script gives no timing (nanoseconds).
LOAD_NS = 1_250_000
PROMPT_NS_PER_TOKEN = 50_000
EVAL_NS_PER_TOKEN = 10_000

THINKING, CONTENT, TOOL = 0, 1, 2


@lru_cache(maxsize=8192)
def _chat_content(text: str) -> bytes:
    return b'","message":{"role":"assistant","content":%s},"done":false}\n' % dumps(text)


@lru_cache(maxsize=8192)
def _chat_thinking(text: str) -> bytes:
    return (b'","message":{"role":"assistant","content":"","thinking":%s},"done":false}\n'
            % dumps(text))


def _chat_tool(call: Dict[str, Any]) -> bytes:
    return (b'","message":{"role":"assistant","content":"","tool_calls":[%s]},"done":false}\n'
            % dumps(call))


@lru_cache(maxsize=8192)
def _generate_content(text: str) -> bytes:
    return b'","response":%s,"done":false}\n' % dumps(text)


@lru_cache(maxsize=8192)
def _generate_thinking(text: str) -> bytes:
    return b'","response":"","thinking":%s,"done":false}\n' % dumps(text)


_CHAT_TAILS: Dict[int, Callable[[Any], bytes]] = {
    THINKING: _chat_thinking, CONTENT: _chat_content, TOOL: _chat_tool}
_GENERATE_TAILS: Dict[int, Callable[[Any], bytes]] = {
    THINKING: _generate_thinking, CONTENT: _generate_content}


class Answer:
    """
    Everything one generation emits, decided up front: the chunks in order
    (thinking, content, tool calls), cut by C{num_predict}.

    @ivar chat: C{/api/chat} (C{message} objects) rather than
        C{/api/generate} (C{response} strings).
    @ivar context: the deprecated C{context} of C{/api/generate}, or
        L{None} to leave it out.
    @ivar started: when the request arrived (reactor seconds).
    """

    __slots__ = ("model", "chat", "slots", "done_reason", "prompt_eval_count", "behaviour",
                 "context", "started")

    def __init__(self, model: str, chat: bool, slots: List[Tuple[int, Any]],
                 done_reason: str, prompt_eval_count: int, behaviour: Behaviour,
                 context: Optional[List[int]], started: float) -> None:
        self.model = model
        self.chat = chat
        self.slots = slots
        self.done_reason = done_reason
        self.prompt_eval_count = prompt_eval_count
        self.behaviour = behaviour
        self.context = context
        self.started = started

    def joined(self, kind: int) -> str:
        return "".join(value for k, value in self.slots if k == kind)

    def tool_calls(self) -> List[Dict[str, Any]]:
        return [value for k, value in self.slots if k == TOOL]

    def head(self) -> bytes:
        """
        What every streamed chunk line starts with, up to its timestamp.
        """
        return b'{"model":%s,"created_at":"' % (dumps(self.model),)

    def tails(self) -> List[bytes]:
        """
        Each chunk line after its timestamp, newline included.
        """
        encoders = _CHAT_TAILS if self.chat else _GENERATE_TAILS
        return [encoders[kind](value) for kind, value in self.slots]

    def metrics(self, now: float) -> Dict[str, int]:
        """
        The final object's timing and counts; zero values are left out
        (Go's omitempty).
        """
        behaviour = self.behaviour
        eval_count = len(self.slots)
        prompt_ns = (int(behaviour.ttft * 1e9) if behaviour.ttft > 0
                     else self.prompt_eval_count * PROMPT_NS_PER_TOKEN)
        if behaviour.tokens_per_second > 0:
            eval_ns = int(eval_count / behaviour.tokens_per_second * 1e9)
        else:
            eval_ns = eval_count * EVAL_NS_PER_TOKEN
        total = max(int((now - self.started) * 1e9), LOAD_NS + prompt_ns + eval_ns)
        result = {}
        for key, value in (
            ("total_duration", total), ("load_duration", LOAD_NS),
            ("prompt_eval_count", self.prompt_eval_count),
            ("prompt_eval_duration", prompt_ns), ("eval_count", eval_count),
            ("eval_duration", eval_ns),
        ):
            if value:
                result[key] = value
        return result

    def final_object(self, created_at: str, now: float, whole: bool) -> Dict[str, Any]:
        """
        The C{done: true} object: the last line of a stream (C{whole}
        false: empty content, the text went out in the chunks), or the
        whole answer of a non-streaming request.
        """
        content = self.joined(CONTENT) if whole else ""
        reasoning = self.joined(THINKING) if whole else ""
        calls = self.tool_calls() if whole else []
        obj: Dict[str, Any] = {"model": self.model, "created_at": created_at}
        if self.chat:
            message: Dict[str, Any] = {"role": "assistant", "content": content}
            if reasoning:
                message["thinking"] = reasoning
            if calls:
                message["tool_calls"] = calls
            obj["message"] = message
        else:
            obj["response"] = content
            if reasoning:
                obj["thinking"] = reasoning
        obj["done"] = True
        if self.done_reason:
            obj["done_reason"] = self.done_reason
        if self.context is not None:
            obj["context"] = self.context
        obj.update(self.metrics(now))
        return obj


def _tool_slot(call: Any, index: int, call_id: Callable[[], str]) -> Dict[str, Any]:
    function: Dict[str, Any] = {}
    if call.index is AUTO:
        function["index"] = index
    elif call.index is not None:
        function["index"] = call.index
    function["name"] = call.name
    function["arguments"] = call.arguments
    emitted: Dict[str, Any] = {}
    if call.id is AUTO:
        emitted["id"] = call_id()
    elif call.id is not None:
        emitted["id"] = call.id
    emitted["function"] = function
    return emitted


def compose_answer(behaviour: Behaviour, *, model: str, chat: bool, thinking: bool,
                   tools: bool, num_predict: int, user_text: str, prompt_tokens: int,
                   json_format: bool, context: Optional[List[int]], started: float,
                   call_id: Callable[[], str]) -> Answer:
    """
    Decide the answer to one generation request.

    @param behaviour: the script's behaviour for this request; its text,
        thinking and tool calls win over the defaults derived from
        C{user_text}.
    @param num_predict: the chunk limit (C{done_reason: "length"}), or a
        value below 1 for none.
    @param json_format: the request asked for C{format}; a default answer is
        then a JSON object.
    @param call_id: mints C{call_...} ids for tool calls scripted with an
        automatic id.
    """
    text = behaviour.text
    if text is None:
        if tools and behaviour.tool_calls:
            text = ""
        else:
            text = default_answer(user_text)
            if json_format:
                text = json.dumps({"answer": text}, ensure_ascii=False)
    slots: List[Tuple[int, Any]] = []
    if thinking:
        reasoning = behaviour.thinking
        if reasoning is None:
            reasoning = default_thinking(user_text)
        slots.extend((THINKING, piece) for piece in split_tokens(reasoning, None))
    slots.extend((CONTENT, piece) for piece in split_tokens(text, behaviour.tokens))
    if tools:
        slots.extend((TOOL, _tool_slot(call, index, call_id))
                     for index, call in enumerate(behaviour.tool_calls))
    done_reason = "stop"
    if 0 < num_predict < len(slots):
        del slots[num_predict:]
        done_reason = "length"
    if behaviour.done_reason is not None:
        done_reason = behaviour.done_reason
    if behaviour.prompt_eval_count is not None:
        prompt_tokens = behaviour.prompt_eval_count
    return Answer(model, chat, slots, done_reason, prompt_tokens, behaviour, context, started)


def context_tokens(prompt: str) -> List[int]:
    """
    The deprecated C{context} of C{/api/generate}: a short, stable int list.
    """
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return [int.from_bytes(digest[i:i + 2], "big") % 32000 for i in range(0, 12, 2)]


def embed_object(model: str, vectors: List[List[float]], prompt_eval_count: int,
                 elapsed_ns: int) -> Dict[str, Any]:
    """
    The C{/api/embed} answer, its durations at least what the token count
    would take.
    """
    total = max(elapsed_ns, LOAD_NS + prompt_eval_count * PROMPT_NS_PER_TOKEN)
    obj: Dict[str, Any] = {"model": model, "embeddings": vectors,
                           "total_duration": total, "load_duration": LOAD_NS}
    if prompt_eval_count:
        obj["prompt_eval_count"] = prompt_eval_count
    return obj
