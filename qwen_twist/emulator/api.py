# -*- test-case-name: tests.emulator.test_server -*-
"""
Ollama's own endpoints (C{/}, C{/api/chat}, C{/api/generate}, C{/api/embed},
C{/api/show}, C{/api/tags}, C{/api/ps}, C{/api/version}): what each one
checks, in Ollama's order, and what it answers.

The order of the checks is part of the contract: a request with two
problems must get the same one of the two texts Ollama would send (model
missing before capability before options before format), because the
gateway's tests assert on the relayed text. Request typing lives in
L{qwen_twist.emulator.fields}, the answers' content in
L{qwen_twist.emulator.answer}, their delivery in
L{qwen_twist.emulator.stream}; this module ties them together per endpoint.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Dict

from qwen_twist.emulator.answer import compose_answer, context_tokens, embed_object
from qwen_twist.emulator.fields import (
    CHAT_FIELDS,
    EMBED_FIELDS,
    GENERATE_FIELDS,
    SHOW_FIELDS,
    check_format,
    check_options,
    check_top_logprobs,
    keep_alive_seconds,
    request_fields,
)
from qwen_twist.emulator.record import Record
from qwen_twist.emulator.script import (
    ModelName,
    ModelSpec,
    Script,
    embedding_vector,
    rough_token_count,
)
from qwen_twist.emulator.stream import Stream, early_fault, later, reply
from qwen_twist.emulator.wire import TEXT_TYPE, Refusal, Stamp, dumps, go_quote

__all__ = ["Handler", "OllamaApi"]

#: A route's handler: C{(request, decoded body)} to what C{render} returns.
Handler = Callable[[Any, Any], Any]

_KEEP_ALIVE_SECONDS = 300
_CALL_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


class OllamaApi:
    """
    The handlers of Ollama's native API over one L{Script}.

    @ivar record: the L{Record} that streams and faults are counted in.
    @ivar reactor: provides C{seconds} and C{callLater}.
    @ivar stamp: the shared timestamp writer.
    """

    def __init__(self, script: Script, record: Record, reactor: Any) -> None:
        self._script = script
        self.record = record
        self.reactor = reactor
        self.stamp = Stamp()
        self._random = random.Random(script.seed)

    @property
    def script(self) -> Script:
        return self._script

    @script.setter
    def script(self, script: Script) -> None:
        self._script = script
        self._random.seed(script.seed)

    def routes(self) -> Dict[bytes, Dict[bytes, Handler]]:
        """
        Path to method to handler, as Ollama's router has them.
        """
        return {
            b"/": {b"GET": self.root, b"HEAD": self.root},
            b"/api/chat": {b"POST": self.chat},
            b"/api/generate": {b"POST": self.generate},
            b"/api/embed": {b"POST": self.embed},
            b"/api/show": {b"POST": self.show},
            b"/api/tags": {b"GET": self.tags, b"HEAD": self.tags},
            b"/api/ps": {b"GET": self.ps},
            b"/api/version": {b"GET": self.version, b"HEAD": self.version},
        }

    # helpers

    def _now(self) -> str:
        return self.stamp(self.reactor.seconds()).decode("ascii")

    def _call_id(self) -> str:
        return "call_" + "".join(self._random.choices(_CALL_ID_ALPHABET, k=8))

    def _find(self, name: str, message: str, status: int = 404) -> ModelSpec:
        spec = self._script.find_model(name)
        if spec is None:
            raise Refusal(status, message)
        return spec

    @staticmethod
    def _thinking_enabled(spec: ModelSpec, think: Any, name: str) -> bool:
        """
        Ollama 0.12.4+: thinking models think unless told C{think: false};
        asking a model without the capability to think is a 400.
        """
        if "thinking" in spec.capabilities:
            return think is not False
        if think is not None and think is not False:
            raise Refusal(400, "%s does not support thinking" % (go_quote(name),))
        return False

    def _loaded(self, request: Any, spec: ModelSpec, model: str, reason: str,
                chat: bool) -> bytes:
        self._script.set_loaded(spec, reason == "load")
        obj: Dict[str, Any] = {"model": model, "created_at": self._now()}
        if chat:
            obj["message"] = {"role": "assistant", "content": ""}
        else:
            obj["response"] = ""
        obj["done"] = True
        obj["done_reason"] = reason
        return reply(request, 200, dumps(obj))

    # /api/chat and /api/generate

    def chat(self, request: Any, body: Any) -> Any:
        fields = request_fields(body, CHAT_FIELDS, "ChatRequest")
        check_top_logprobs(fields)
        model = fields.get("model") or ""
        if not model:
            raise Refusal(400, "model is required")
        spec = self._find(model, "model '%s' not found" % (model,))
        messages = fields.get("messages") or []
        if not messages and keep_alive_seconds(fields) == 0:
            return self._loaded(request, spec, model, "unload", chat=True)
        thinking = self._thinking_enabled(spec, fields.get("think"), model)
        if "completion" not in spec.capabilities:
            raise Refusal(400, "%s does not support chat" % (go_quote(model),))
        tools = bool(fields.get("tools"))
        if tools and "tools" not in spec.capabilities:
            raise Refusal(400, "%s does not support tools" % (spec.full_name,))
        num_predict = check_options(fields.get("options"))
        if not messages:
            return self._loaded(request, spec, model, "load", chat=True)
        check_format(fields.get("format"))

        user_text = ""
        prompt_tokens = 0
        for message in messages:
            content = message.get("content") or ""
            prompt_tokens += rough_token_count(content) + 4
            if (message.get("role") or "").lower() == "user":
                user_text = content
        return self._generation(
            request, spec, model, fields, chat=True, thinking=thinking, tools=tools,
            num_predict=num_predict, user_text=user_text, prompt_tokens=prompt_tokens,
            raw=False,
        )

    def generate(self, request: Any, body: Any) -> Any:
        fields = request_fields(body, GENERATE_FIELDS, "GenerateRequest")
        check_top_logprobs(fields)
        model = fields.get("model") or ""
        spec = self._find(model, "model '%s' not found" % (model,))
        prompt = fields.get("prompt") or ""
        if not prompt and keep_alive_seconds(fields) == 0:
            return self._loaded(request, spec, model, "unload", chat=False)
        raw = bool(fields.get("raw"))
        if raw and (fields.get("template") or fields.get("system") or fields.get("context")):
            raise Refusal(400, "raw mode does not support template, system, or context")
        thinking = self._thinking_enabled(spec, fields.get("think"), model)
        if "completion" not in spec.capabilities:
            raise Refusal(400, "%s does not support generate" % (go_quote(model),))
        if fields.get("suffix") and "insert" not in spec.capabilities:
            raise Refusal(400, "%s does not support insert" % (spec.full_name,))
        num_predict = check_options(fields.get("options"))
        if not prompt:
            return self._loaded(request, spec, model, "load", chat=False)
        check_format(fields.get("format"))
        system = fields.get("system") or ""
        prompt_tokens = rough_token_count(prompt) + 4 + (
            rough_token_count(system) if system else 0)
        return self._generation(
            request, spec, model, fields, chat=False, thinking=thinking, tools=False,
            num_predict=num_predict, user_text=prompt, prompt_tokens=prompt_tokens, raw=raw,
        )

    def _generation(self, request: Any, spec: ModelSpec, model: str, fields: Dict[str, Any],
                    chat: bool, thinking: bool, tools: bool, num_predict: int,
                    user_text: str, prompt_tokens: int, raw: bool) -> Any:
        started = self.reactor.seconds()
        behaviour = self._script.behaviour_for(spec)
        self._script.set_loaded(spec)
        early = early_fault(self, request, behaviour)
        if early is not None:
            return early
        answer = compose_answer(
            behaviour, model=model, chat=chat, thinking=thinking, tools=tools,
            num_predict=num_predict, user_text=user_text, prompt_tokens=prompt_tokens,
            json_format=bool(fields.get("format")),
            context=None if (chat or raw) else context_tokens(user_text),
            started=started, call_id=self._call_id,
        )
        stamp = self.stamp

        if fields.get("stream", True) is not False:
            def final(now: float) -> bytes:
                return dumps(answer.final_object(stamp(now).decode("ascii"), now, False)) + b"\n"

            return Stream(self, request, answer.head(), answer.tails(), final, behaviour,
                          started).start()

        def whole() -> bytes:
            now = self.reactor.seconds()
            return dumps(answer.final_object(stamp(now).decode("ascii"), now, True))

        return later(self, request, behaviour, len(answer.slots), whole)

    # /api/embed

    def embed(self, request: Any, body: Any) -> Any:
        fields = request_fields(body, EMBED_FIELDS, "EmbedRequest")
        value = fields.get("input")
        if isinstance(value, str):
            inputs = [value] if value else []
        elif isinstance(value, list):
            if not all(isinstance(item, str) for item in value):
                raise Refusal(400, "invalid input type")
            inputs = value
        elif value is None:
            inputs = []
        else:
            raise Refusal(400, "invalid input type")
        model = fields.get("model") or ""
        if not model:
            raise Refusal(400, "model is required")
        spec = self._find(model, "model %s not found, try pulling it first" % (go_quote(model),))
        check_options(fields.get("options"))
        self._script.set_loaded(spec)
        if not inputs:
            return reply(request, 200, dumps({"model": model, "embeddings": []}))
        counts = [rough_token_count(text) for text in inputs]
        if fields.get("truncate") is False and max(counts) > spec.context_length:
            raise Refusal(400, "the input length exceeds the context length")
        started = self.reactor.seconds()
        behaviour = self._script.behaviour_for(spec)
        early = early_fault(self, request, behaviour)
        if early is not None:
            return early
        dimensions = fields.get("dimensions")
        if behaviour.embeddings is not None:
            fixed = behaviour.embeddings
            vectors = [list(fixed[i % len(fixed)]) for i in range(len(inputs))]
        else:
            vectors = [embedding_vector(text, spec.embedding_length, dimensions)
                       for text in inputs]
        prompt_eval_count = (behaviour.prompt_eval_count
                             if behaviour.prompt_eval_count is not None else sum(counts))

        def whole() -> bytes:
            elapsed = int((self.reactor.seconds() - started) * 1e9)
            return dumps(embed_object(model, vectors, prompt_eval_count, elapsed))

        return later(self, request, behaviour, 1, whole)

    # listing and info

    def root(self, request: Any, body: Any) -> bytes:
        return reply(request, 200, b"Ollama is running", TEXT_TYPE)

    def version(self, request: Any, body: Any) -> bytes:
        return reply(request, 200, dumps({"version": self._script.version}))

    def tags(self, request: Any, body: Any) -> bytes:
        return reply(request, 200, dumps({"models": [
            {"name": spec.name, "model": spec.name, "modified_at": spec.modified_at,
             "size": spec.size, "digest": spec.model_digest, "details": spec.details()}
            for spec in self._script.models
        ]}))

    def ps(self, request: Any, body: Any) -> bytes:
        expires = self.stamp(self.reactor.seconds() + _KEEP_ALIVE_SECONDS).decode("ascii")
        return reply(request, 200, dumps({"models": [
            {"name": spec.name, "model": spec.name, "size": spec.size,
             "digest": spec.model_digest, "details": spec.details(), "expires_at": expires,
             "size_vram": spec.size, "context_length": spec.context_length}
            for spec in self._script.loaded_models()
        ]}))

    def show(self, request: Any, body: Any) -> bytes:
        fields = request_fields(body, SHOW_FIELDS, "ShowRequest")
        name = fields.get("model") or fields.get("name") or ""
        if not name:
            raise Refusal(400, "model is required")
        parsed = ModelName.parse(name)
        shown = parsed.display() if parsed is not None else name
        spec = self._find(name, "model '%s' not found" % (shown,))
        family = spec.family
        model_info: Dict[str, Any] = {
            "general.architecture": family,
            "general.basename": spec.parsed.model,
            "%s.context_length" % family: spec.context_length,
            "%s.embedding_length" % family: spec.embedding_length,
        }
        return reply(request, 200, dumps({
            "modelfile": "# Modelfile generated by \"ollama show\"\n"
                         "# To build a new Modelfile based on this, replace FROM with:\n"
                         "# FROM %s\n\nFROM %s\nTEMPLATE {{ .Prompt }}\n" % (spec.name, spec.name),
            "template": "{{ .Prompt }}",
            "details": spec.details(),
            "model_info": model_info,
            "capabilities": list(spec.capabilities),
            "modified_at": spec.modified_at,
        }))
