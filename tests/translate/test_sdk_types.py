"""
Every response and chunk the translators produce for the reference's test
vectors (TV-16 to TV-35, and the edge cases of issue 13) parses in the
official C{openai} SDK's own types: C{ChatCompletion},
C{ChatCompletionChunk}, C{Completion}, C{CreateEmbeddingResponse}.

Why: the SDK validates what it reads into these types; a field of the
wrong type or a value outside a literal (a C{finish_reason}, an
C{object}) breaks typed clients even when a JSON diff looks harmless.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any, List

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from qwen_twist.translate.chat import chat_response
from qwen_twist.translate.completions import completion_batch_response, completion_response
from qwen_twist.translate.embeddings import embeddings_response
from tests.translate.test_stream import (
    DONE,
    chat_translator,
    completion_translator,
    ndjson,
    parse_sse,
    run,
)

NOW = 1735689600


def _types() -> Any:
    try:
        from openai.types import Completion, CreateEmbeddingResponse
        from openai.types.chat import ChatCompletion, ChatCompletionChunk
    except ImportError:
        raise SkipTest("the openai package is not installed")
    return ChatCompletion, ChatCompletionChunk, Completion, CreateEmbeddingResponse


def _line(content: str = "", done: bool = False, **extra: Any) -> dict:
    message = {"role": "assistant", "content": content}
    for key in ("thinking", "tool_calls"):
        if key in extra:
            message[key] = extra.pop(key)
    line = {"model": "qwen3:8b", "created_at": "2025-01-01T00:00:00Z", "message": message,
            "done": done}
    line.update(extra)
    return line


_CALL = {"id": "call_k3x9a1b2",
         "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Tokyo"}}}
_LOGPROBS = [{"token": "Hi", "logprob": -0.5,
              "top_logprobs": [{"token": "Hi", "logprob": -0.5}]}]

#: Native non-streaming chat answers (TV-16 to TV-20, logprobs).
CHAT_ANSWERS = [
    _line("Hello!", True, done_reason="stop", prompt_eval_count=26, eval_count=3),
    _line("Once upon", True, done_reason="length"),
    _line("", True, done_reason="stop", tool_calls=[_CALL], prompt_eval_count=169,
          eval_count=18),
    _line("4", True, done_reason="stop", thinking="2+2=4"),
    _line("x", True, eval_count=5),
    _line("Hi", True, done_reason="stop", logprobs=_LOGPROBS),
]

#: Native chat streams (TV-21 to TV-24, TV-28, TV-29, logprobs-only lines).
CHAT_STREAMS = [
    [_line("Hel"), _line("lo"), _line("", True, done_reason="stop", prompt_eval_count=5,
                                      eval_count=2)],
    [_line("", tool_calls=[_CALL]), _line("", True, done_reason="stop")],
    [_line("", thinking="Add "), _line("4", thinking="them."), _line("", True)],
    [_line("", tool_calls=[_CALL]), _line("", True, done_reason="length")],
    [_line("", True, done_reason="stop")],
    [_line("", logprobs=_LOGPROBS), _line("Hi", logprobs=_LOGPROBS),
     _line("", True, done_reason="stop", logprobs=_LOGPROBS)],
]

#: Native generate answers and streams (TV-35, logprobs, text_offset).
GENERATE_ANSWERS = [
    {"model": "qwen2.5:7b", "created_at": "2025-01-01T00:00:00Z", "response": "Hi!",
     "done": True, "done_reason": "stop", "prompt_eval_count": 3, "eval_count": 2},
    {"response": "Hi", "done": True, "logprobs": _LOGPROBS},
]
GENERATE_STREAM = [
    {"response": "Hi", "done": False, "logprobs": _LOGPROBS},
    {"response": "", "done": False, "logprobs": _LOGPROBS},
    {"response": "!", "done": True, "done_reason": "length", "prompt_eval_count": 3,
     "eval_count": 2},
]

#: Native embed answers (TV-33, TV-34).
EMBEDDINGS = [
    {"model": "nomic-embed-text", "embeddings": [[0.5, -1.0], [0.25, 0.5]],
     "prompt_eval_count": 4},
    {"model": "e", "embeddings": [[0.5, -1.0]]},
]


class SdkTypeTests(SynchronousTestCase):
    """
    The SDK's pydantic types validate every translated object.
    """

    def chunks(self, out: bytes) -> List[dict]:
        return [event for event in parse_sse(self, out) if event != DONE]

    def test_chat_completion(self):
        """
        Non-streaming chat answers validate as C{ChatCompletion}.
        """
        ChatCompletion, _, _, _ = _types()
        for native in CHAT_ANSWERS:
            result = chat_response(native, model="qwen3:8b", completion_id="chatcmpl-1",
                                   now=NOW)
            ChatCompletion.model_validate(json.loads(json.dumps(result)))

    def test_chat_chunks(self):
        """
        Every chunk of every chat stream validates as C{ChatCompletionChunk},
        with and without the usage chunk.
        """
        _, ChatCompletionChunk, _, _ = _types()
        for lines in CHAT_STREAMS:
            for include_usage in (False, True):
                out = run(chat_translator(include_usage), [ndjson(*lines)])
                chunks = self.chunks(out)
                self.assertTrue(chunks)
                for chunk in chunks:
                    ChatCompletionChunk.model_validate(chunk)

    def test_completion(self):
        """
        Legacy completions, streamed or not, one prompt or several,
        validate as C{Completion}.
        """
        _, _, Completion, _ = _types()
        for native in GENERATE_ANSWERS:
            Completion.model_validate(json.loads(json.dumps(completion_response(
                native, model="m", completion_id="cmpl-1", now=NOW))))
        Completion.model_validate(json.loads(json.dumps(completion_batch_response(
            GENERATE_ANSWERS, model="m", completion_id="cmpl-1", now=NOW))))
        for include_usage in (False, True):
            out = run(completion_translator(include_usage), [ndjson(*GENERATE_STREAM)])
            chunks = [chunk for chunk in self.chunks(out) if chunk["choices"]]
            self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "length")
            for chunk in chunks:
                # OpenAI's own legacy stream sends finish_reason null before
                # the last chunk, which the SDK's Completion type (written
                # for the whole answer) does not list; everything else must
                # validate as is.
                choice = chunk["choices"][0]
                if choice["finish_reason"] is None:
                    choice["finish_reason"] = "stop"
                Completion.model_validate(chunk)

    def test_embeddings(self):
        """
        Float and base64 embeddings validate as C{CreateEmbeddingResponse}.
        """
        _, _, _, CreateEmbeddingResponse = _types()
        for native in EMBEDDINGS:
            for encoding_format in ("float", "base64"):
                result = json.loads(json.dumps(
                    embeddings_response(native, model="e", encoding_format=encoding_format)))
                if encoding_format == "base64":
                    # What the SDK does before handing the object out.
                    for item in result["data"]:
                        raw = base64.b64decode(item["embedding"])
                        item["embedding"] = list(struct.unpack("<%df" % (len(raw) // 4), raw))
                parsed = CreateEmbeddingResponse.model_validate(result)
                self.assertEqual(parsed.data[0].embedding, [0.5, -1.0])
