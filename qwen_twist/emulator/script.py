# -*- test-case-name: tests.emulator.test_script -*-
"""
What the Ollama emulator does, as validated data.

Tests and benchmarks need an upstream that misbehaves on demand: slow first
token, a stall after three lines, a dropped connection, an error line. A
L{Script} says all of that in plain data (a dict, or a JSON file for the
command line) so the same description drives in-process tests, the
benchmark harness and the demo.

A script has the model list (what C{/api/tags}, C{/api/show} and C{/api/ps}
report, and which capabilities decide the 400 errors), a default
L{Behaviour}, optional per-model overrides and a FIFO queue of one-shot
overrides. Overrides are I{layers}: partial dicts whose keys replace the
ones below them (default, then the model's layer, then the queued one), so
a test pushes C{{"close_after": 2}} without restating the text.

Also here, because they are pure and the behaviour depends on them: Ollama's
model-name rules (C{name[:tag]}, default host and namespace), the
whitespace-preserving token split, the deterministic embedding vectors and
the default answer. Nothing in this module imports Twisted or does I/O.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import deque
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Deque, Dict, Iterable, List, Mapping, Optional, Tuple

DEFAULT_VERSION = "0.33.0"
DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
DEFAULT_MODIFIED_AT = "2025-05-10T08:06:48.639712648-07:00"

#: The fault keys of a behaviour layer; at most one per layer.
FAULT_KINDS = (
    "hang_before_headers",
    "hang_after",
    "close_after",
    "invalid_json_after",
    "error_line_after",
    "http_status",
)

#: Error text used when a layer asks for an error without giving one.
DEFAULT_ERROR_LINE = "an error was encountered while running the model"
_DEFAULT_STATUS_ERRORS = {
    429: "too many requests",
    499: "request canceled",
    503: "server busy, please try again.  maximum pending requests exceeded",
}

#: Marks a tool call whose C{id}/C{index} the emulator fills in itself.
AUTO = "auto"

_MODEL_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,79}$")
_WORD = re.compile(r"\s*\S+")


class ScriptError(ValueError):
    """
    A script that cannot be used, with the dotted path of the offending key.

    @ivar path: where in the script the problem is (C{default.ttft}).
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__("%s: %s" % (path, message) if path else message)
        self.path = path


# -- model names ------------------------------------------------------------


@dataclass(frozen=True)
class ModelName:
    """
    An Ollama model reference, C{[host/][namespace/]model[:tag]}, with the
    defaults filled in the way Ollama's C{types/model} package does.
    """

    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, name: str) -> Optional["ModelName"]:
        """
        Parse C{name}; L{None} when it is not a valid model reference.
        """
        if not isinstance(name, str) or not name:
            return None
        rest, _, _digest = name.partition("@")
        tag = DEFAULT_TAG
        if rest.rfind(":") > rest.rfind("/"):
            rest, _, tag = rest.rpartition(":")
        parts = rest.split("/")
        if len(parts) > 3 or not tag:
            return None
        model = parts[-1]
        namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
        host = parts[-3] if len(parts) == 3 else DEFAULT_HOST
        if not (_MODEL_PART.match(model) and _MODEL_PART.match(tag)):
            return None
        if not namespace or not host:
            return None
        return cls(host, namespace, model, tag)

    def full(self) -> str:
        """
        The fully qualified name (C{registry.ollama.ai/library/qwen3:8b}),
        as Ollama prints it in capability errors.
        """
        return "%s/%s/%s:%s" % (self.host, self.namespace, self.model, self.tag)

    def display(self) -> str:
        """
        The shortest unambiguous form (C{qwen3:8b}), as C{/api/tags} shows.
        """
        if self.host.lower() == DEFAULT_HOST:
            if self.namespace.lower() == DEFAULT_NAMESPACE:
                return "%s:%s" % (self.model, self.tag)
            return "%s/%s:%s" % (self.namespace, self.model, self.tag)
        return self.full()

    def key(self) -> str:
        """
        The lookup key: Ollama matches names case-insensitively.
        """
        return self.full().lower()


def model_key(name: str) -> Optional[str]:
    """
    The lookup key for C{name}, or L{None} when it is not a model reference.
    """
    parsed = ModelName.parse(name)
    return parsed.key() if parsed is not None else None


# -- validation helpers -----------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: Any, path: str, minimum: int = 0) -> int:
    if not _is_int(value):
        raise ScriptError(path, "must be an integer, not %s" % (json.dumps(value),))
    if value < minimum:
        raise ScriptError(path, "must be at least %d" % (minimum,))
    return value


def _number(value: Any, path: str) -> float:
    if not (_is_int(value) or isinstance(value, float)) or not math.isfinite(value):
        raise ScriptError(path, "must be a number, not %s" % (json.dumps(value),))
    if value < 0:
        raise ScriptError(path, "must not be negative")
    return float(value)


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ScriptError(path, "must be a string, not %s" % (json.dumps(value),))
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ScriptError(path, "must be true or false, not %s" % (json.dumps(value),))
    return value


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ScriptError(path, "must be an object")
    return value


def _unknown(data: Mapping[str, Any], known: Iterable[str], path: str) -> None:
    known = set(known)
    for key in data:
        if key not in known:
            raise ScriptError(_join(path, key), "unknown key")


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return "%s[%d]" % (path, key)
    return "%s.%s" % (path, key) if path else str(key)


# -- models -----------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """
    One model the emulator pretends to have.

    @ivar name: the display name with its tag (C{qwen3:8b}).
    @ivar capabilities: what C{/api/show} reports and the capability checks
        use: C{completion}, C{tools}, C{thinking}, C{insert}, C{embedding},
        C{vision}, ...
    @ivar embedding_length: dimension of the vectors C{/api/embed} returns.
    @ivar loaded: whether C{/api/ps} lists it before any request.
    """

    name: str
    capabilities: Tuple[str, ...] = ("completion",)
    family: str = "llama"
    families: Optional[Tuple[str, ...]] = None
    format: str = "gguf"
    parameter_size: str = "7B"
    quantization_level: str = "Q4_K_M"
    size: int = 4_683_087_332
    digest: str = ""
    modified_at: str = DEFAULT_MODIFIED_AT
    context_length: int = 4096
    embedding_length: int = 8
    loaded: bool = False

    @property
    def parsed(self) -> ModelName:
        parsed = ModelName.parse(self.name)
        assert parsed is not None
        return parsed

    @property
    def full_name(self) -> str:
        return self.parsed.full()

    @property
    def model_digest(self) -> str:
        return self.digest or hashlib.sha256(self.name.encode("utf-8")).hexdigest()

    def details(self) -> Dict[str, Any]:
        """
        The C{details} object of C{/api/tags}, C{/api/show} and C{/api/ps}.
        """
        return {
            "parent_model": "",
            "format": self.format,
            "family": self.family,
            "families": list(self.families if self.families is not None else (self.family,)),
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }

    _KEYS = (
        "name", "capabilities", "family", "families", "format", "parameter_size",
        "quantization_level", "size", "digest", "modified_at", "context_length",
        "embedding_length", "loaded",
    )

    @classmethod
    def from_dict(cls, data: Any, path: str = "model") -> "ModelSpec":
        """
        Validate one model entry; C{name} is required, the rest defaults.
        """
        data = _mapping(data, path)
        _unknown(data, cls._KEYS, path)
        if "name" not in data:
            raise ScriptError(_join(path, "name"), "is required")
        parsed = ModelName.parse(_str(data["name"], _join(path, "name")))
        if parsed is None:
            raise ScriptError(_join(path, "name"), "is not a valid model name")
        kwargs: Dict[str, Any] = {"name": parsed.display()}
        for key in ("family", "format", "parameter_size", "quantization_level",
                    "digest", "modified_at"):
            if key in data:
                kwargs[key] = _str(data[key], _join(path, key))
        for key in ("size", "context_length"):
            if key in data:
                kwargs[key] = _int(data[key], _join(path, key))
        if "embedding_length" in data:
            kwargs["embedding_length"] = _int(
                data["embedding_length"], _join(path, "embedding_length"), minimum=1
            )
        if "loaded" in data:
            kwargs["loaded"] = _bool(data["loaded"], _join(path, "loaded"))
        for key in ("capabilities", "families"):
            if key in data:
                items = data[key]
                if not isinstance(items, list):
                    raise ScriptError(_join(path, key), "must be a list of strings")
                kwargs[key] = tuple(
                    _str(item, _join(_join(path, key), i)) for i, item in enumerate(items)
                )
        return cls(**kwargs)

    def to_dict(self) -> Dict[str, Any]:
        result = {key: getattr(self, key) for key in self._KEYS}
        result["capabilities"] = list(self.capabilities)
        if self.families is None:
            del result["families"]
        else:
            result["families"] = list(self.families)
        return result


#: The models of a script that does not list any: one of each kind, so every
#: capability error can be provoked out of the box.
DEFAULT_MODELS: Tuple[ModelSpec, ...] = (
    ModelSpec(
        name="qwen3:8b", capabilities=("completion", "tools", "thinking"),
        family="qwen3", parameter_size="8.2B", size=5_225_387_923,
        context_length=40960, loaded=True,
    ),
    ModelSpec(
        name="qwen2.5:7b", capabilities=("completion", "tools", "insert"),
        family="qwen2", parameter_size="7.6B", size=4_683_087_332,
        context_length=32768,
    ),
    ModelSpec(
        name="gemma3:4b", capabilities=("completion", "vision"),
        family="gemma3", parameter_size="4.3B", size=3_338_801_804,
        context_length=131072,
    ),
    ModelSpec(
        name="nomic-embed-text:latest", capabilities=("embedding",),
        family="nomic-bert", parameter_size="137M", quantization_level="F16",
        size=274_302_450, context_length=2048,
    ),
)


# -- behaviours -------------------------------------------------------------


@dataclass(frozen=True)
class ToolCallSpec:
    """
    A tool call the emulator emits (only when the request carried C{tools}).

    @ivar id: the call id; L{AUTO} means C{call_} plus 8 random
        C{[a-z0-9]}, L{None} means the key is left out (pre-0.12.10 servers).
    @ivar index: C{function.index}; L{AUTO} is a running counter, L{None}
        leaves it out.
    """

    name: str
    arguments: Dict[str, Any] = field(default_factory=dict)
    id: Any = AUTO
    index: Any = AUTO

    @classmethod
    def from_dict(cls, data: Any, path: str) -> "ToolCallSpec":
        """
        Accept C{{"name", "arguments", "id"?, "index"?}} or the native
        C{{"id"?, "function": {"index"?, "name", "arguments"}}} shape.
        """
        data = _mapping(data, path)
        if "function" in data:
            _unknown(data, ("id", "function"), path)
            function = _mapping(data["function"], _join(path, "function"))
            fpath = _join(path, "function")
            _unknown(function, ("name", "arguments", "index"), fpath)
        else:
            _unknown(data, ("id", "name", "arguments", "index"), path)
            function, fpath = data, path
        if "name" not in function:
            raise ScriptError(_join(fpath, "name"), "is required")
        name = _str(function["name"], _join(fpath, "name"))
        arguments = function.get("arguments", {})
        if not isinstance(arguments, Mapping):
            raise ScriptError(_join(fpath, "arguments"), "must be an object")
        call_id = data.get("id", AUTO)
        if call_id is not None and call_id is not AUTO:
            call_id = _str(call_id, _join(path, "id"))
        index = function.get("index", AUTO)
        if index is not None and index is not AUTO:
            index = _int(index, _join(fpath, "index"))
        return cls(name, dict(arguments), call_id, index)

    def to_dict(self) -> Dict[str, Any]:
        result: Dict[str, Any] = {"name": self.name, "arguments": self.arguments}
        if self.id is not AUTO:
            result["id"] = self.id
        if self.index is not AUTO:
            result["index"] = self.index
        return result


@dataclass(frozen=True)
class Fault:
    """
    A scripted failure.

    @ivar kind: one of L{FAULT_KINDS}.
    @ivar after: for the C{*_after} kinds, how many chunks go out first.
    @ivar status: for C{http_status}, the status code.
    @ivar error: the error text of C{http_status} and C{error_line_after}.
    """

    kind: str
    after: int = 0
    status: int = 500
    error: str = ""


@dataclass(frozen=True)
class Behaviour:
    """
    How one generation (or embedding) request is answered.

    @ivar text: the answer; L{None} means the default friendly answer that
        quotes the last user message.
    @ivar tokens: how many content chunks; L{None} splits the text into
        words (whitespace kept with the following word).
    @ivar tokens_per_second: pace of the chunks; 0 means as fast as possible.
    @ivar ttft: seconds before the first chunk (and the response headers).
    @ivar thinking: reasoning text for thinking requests; L{None} means a
        default sentence, C{""} none.
    @ivar tool_calls: calls emitted after the content, only when the request
        had C{tools}.
    @ivar done_reason: overrides the computed C{stop}/C{length}; C{""} leaves
        the key out like old servers.
    @ivar prompt_eval_count: overrides the rough prompt token count.
    @ivar embeddings: fixed vectors for C{/api/embed}, returned verbatim
        (cycled over the inputs).
    @ivar fault: the scripted failure, if any.
    """

    text: Optional[str] = None
    tokens: Optional[int] = None
    tokens_per_second: float = 0.0
    ttft: float = 0.0
    thinking: Optional[str] = None
    tool_calls: Tuple[ToolCallSpec, ...] = ()
    done_reason: Optional[str] = None
    prompt_eval_count: Optional[int] = None
    embeddings: Optional[Tuple[Tuple[float, ...], ...]] = None
    fault: Optional[Fault] = None

    def merged(self, layer: Mapping[str, Any]) -> "Behaviour":
        """
        This behaviour with a validated layer (see L{validate_layer}) on top.
        """
        return replace(self, **layer) if layer else self

    def to_dict(self) -> Dict[str, Any]:
        """
        The layer that rebuilds this behaviour from an empty one.
        """
        result: Dict[str, Any] = {}
        for key in ("text", "tokens", "thinking", "done_reason", "prompt_eval_count"):
            value = getattr(self, key)
            if value is not None:
                result[key] = value
        if self.tokens_per_second:
            result["tokens_per_second"] = self.tokens_per_second
        if self.ttft:
            result["ttft"] = self.ttft
        if self.tool_calls:
            result["tool_calls"] = [call.to_dict() for call in self.tool_calls]
        if self.embeddings is not None:
            result["embeddings"] = [list(vector) for vector in self.embeddings]
        fault = self.fault
        if fault is not None:
            if fault.kind == "hang_before_headers":
                result[fault.kind] = True
            elif fault.kind == "http_status":
                result[fault.kind] = fault.status
            else:
                result[fault.kind] = fault.after
            if fault.kind in ("http_status", "error_line_after"):
                result["error"] = fault.error
        return result


_LAYER_KEYS = (
    "text", "tokens", "tokens_per_second", "ttft", "thinking", "tool_calls",
    "done_reason", "prompt_eval_count", "embeddings", "error",
) + FAULT_KINDS


def _optional(value: Any, check: Any, path: str) -> Any:
    return None if value is None else check(value, path)


def validate_layer(data: Any, path: str = "behaviour") -> Dict[str, Any]:
    """
    Check a behaviour layer and return it as L{Behaviour} field values.

    A layer that mentions any fault key (even as C{null}) replaces the fault
    of the layers below it; C{error} needs C{http_status} or
    C{error_line_after} in the same layer.

    @raise ScriptError: naming the offending key.
    """
    data = _mapping(data, path)
    _unknown(data, _LAYER_KEYS, path)
    out: Dict[str, Any] = {}
    p = lambda key: _join(path, key)  # noqa: E731
    if "text" in data:
        out["text"] = _optional(data["text"], _str, p("text"))
    if "thinking" in data:
        out["thinking"] = _optional(data["thinking"], _str, p("thinking"))
    if "done_reason" in data:
        out["done_reason"] = _optional(data["done_reason"], _str, p("done_reason"))
    if "tokens" in data:
        out["tokens"] = _optional(data["tokens"], _int, p("tokens"))
    if "prompt_eval_count" in data:
        out["prompt_eval_count"] = _optional(
            data["prompt_eval_count"], _int, p("prompt_eval_count")
        )
    for key in ("tokens_per_second", "ttft"):
        if key in data:
            out[key] = _number(data[key], p(key))
    if "tool_calls" in data:
        calls = data["tool_calls"]
        if not isinstance(calls, list):
            raise ScriptError(p("tool_calls"), "must be a list")
        out["tool_calls"] = tuple(
            ToolCallSpec.from_dict(call, _join(p("tool_calls"), i))
            for i, call in enumerate(calls)
        )
    if "embeddings" in data:
        out["embeddings"] = _optional(data["embeddings"], _vectors, p("embeddings"))

    faults = [key for key in FAULT_KINDS if key in data]
    if "error" in data and not ({"http_status", "error_line_after"} & set(faults)):
        raise ScriptError(p("error"), "needs http_status or error_line_after in the same layer")
    if faults:
        active = [key for key in faults if data[key] is not None and data[key] is not False]
        if len(active) > 1:
            raise ScriptError(p(active[1]), "only one fault per behaviour (also %s)" % active[0])
        out["fault"] = _fault(active[0], data, path) if active else None
    return out


def _fault(kind: str, data: Mapping[str, Any], path: str) -> Fault:
    value = data[kind]
    error = data.get("error")
    if error is not None:
        error = _str(error, _join(path, "error"))
    if kind == "hang_before_headers":
        if value is not True:
            raise ScriptError(_join(path, kind), "must be true, false or null")
        return Fault(kind)
    if kind == "http_status":
        status = _int(value, _join(path, kind), minimum=400)
        if status > 599:
            raise ScriptError(_join(path, kind), "must be an HTTP error status (400-599)")
        if error is None:
            error = _DEFAULT_STATUS_ERRORS.get(status, DEFAULT_ERROR_LINE)
        return Fault(kind, status=status, error=error)
    after = _int(value, _join(path, kind))
    return Fault(kind, after=after, error=error if error is not None else DEFAULT_ERROR_LINE)


def _vectors(value: Any, path: str) -> Tuple[Tuple[float, ...], ...]:
    if not isinstance(value, list) or not value:
        raise ScriptError(path, "must be a non-empty list of vectors")
    vectors = []
    for i, vector in enumerate(value):
        vpath = _join(path, i)
        if not isinstance(vector, list) or not vector:
            raise ScriptError(vpath, "must be a non-empty list of numbers")
        for j, item in enumerate(vector):
            if not (_is_int(item) or isinstance(item, float)) or not math.isfinite(item):
                raise ScriptError(_join(vpath, j), "must be a number")
        vectors.append(tuple(float(item) for item in vector))
    return tuple(vectors)


# -- the script -------------------------------------------------------------


class Script:
    """
    The emulator's models and behaviours. Mutable on purpose: tests push
    one-shot behaviours with L{push}, the emulator pops them with
    L{behaviour_for} and tracks which models are loaded.

    @ivar models: the models, in the order C{/api/tags} lists them.
    @ivar default: the behaviour when nothing more specific applies.
    @ivar version: what C{/api/version} reports.
    @ivar seed: seeds the random tool-call ids, so runs are repeatable.
    """

    _KEYS = ("version", "seed", "models", "default", "per_model", "queue")

    def __init__(
        self,
        models: Optional[Iterable[ModelSpec]] = None,
        default: Optional[Behaviour] = None,
        per_model: Optional[Mapping[str, Mapping[str, Any]]] = None,
        queue: Iterable[Mapping[str, Any]] = (),
        version: str = DEFAULT_VERSION,
        seed: int = 0,
    ) -> None:
        self.models: List[ModelSpec] = list(DEFAULT_MODELS if models is None else models)
        self._by_key: Dict[str, ModelSpec] = {}
        for spec in self.models:
            self._by_key.setdefault(spec.parsed.key(), spec)
        self.default = default if default is not None else Behaviour()
        self._per_model: Dict[str, Tuple[str, Dict[str, Any]]] = {}
        for name, layer in (per_model or {}).items():
            self.set_model_behaviour(name, layer)
        self._queue: Deque[Dict[str, Any]] = deque()
        for layer in queue:
            self.push(layer)
        self.version = version
        self.seed = seed
        self._loaded = {spec.parsed.key() for spec in self.models if spec.loaded}

    # construction

    @classmethod
    def from_dict(cls, data: Any) -> "Script":
        """
        Build a script from plain data (the C{--script} JSON file's content).

        @raise ScriptError: naming the first offending key.
        """
        data = _mapping(data, "")
        _unknown(data, cls._KEYS, "")
        models = None
        if "models" in data:
            if not isinstance(data["models"], list):
                raise ScriptError("models", "must be a list")
            models = [
                ModelSpec.from_dict(entry, _join("models", i))
                for i, entry in enumerate(data["models"])
            ]
        default = Behaviour().merged(validate_layer(data.get("default", {}), "default"))
        per_model = _mapping(data.get("per_model", {}), "per_model")
        queue = data.get("queue", [])
        if not isinstance(queue, list):
            raise ScriptError("queue", "must be a list")
        script = cls(
            models=models,
            default=default,
            version=_str(data.get("version", DEFAULT_VERSION), "version"),
            seed=_int(data.get("seed", 0), "seed"),
        )
        for name, layer in per_model.items():
            script.set_model_behaviour(name, layer, path=_join("per_model", name))
        for i, layer in enumerate(queue):
            script.push(layer, path=_join("queue", i))
        return script

    @classmethod
    def from_json(cls, text: str) -> "Script":
        """
        L{from_dict} on JSON text.
        """
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ScriptError("", "not valid JSON: %s" % (e,))
        return cls.from_dict(data)

    def to_dict(self) -> Dict[str, Any]:
        """
        Plain data that L{from_dict} turns back into an equivalent script.
        """
        return {
            "version": self.version,
            "seed": self.seed,
            "models": [spec.to_dict() for spec in self.models],
            "default": self.default.to_dict(),
            "per_model": {
                name: Behaviour().merged(layer).to_dict()
                for name, layer in self._per_model.values()
            },
            "queue": [Behaviour().merged(layer).to_dict() for layer in self._queue],
        }

    # behaviours

    def set_model_behaviour(
        self, name: str, layer: Mapping[str, Any], path: Optional[str] = None
    ) -> None:
        """
        Set the override layer applied to every request for model C{name}.
        """
        path = path if path is not None else _join("per_model", name)
        key = model_key(name)
        if key is None:
            raise ScriptError(path, "is not a valid model name")
        self._per_model[key] = (name, validate_layer(layer, path))

    def push(self, layer: Optional[Mapping[str, Any]] = None, path: str = "queue",
             **fields: Any) -> None:
        """
        Queue a one-shot layer for the next generation or embedding request
        that passes validation (FIFO). Keyword arguments are merged into
        C{layer}: C{script.push(close_after=2)}.

        @raise ScriptError: when the layer is invalid (nothing is queued).
        """
        data = dict(layer or {})
        data.update(fields)
        self._queue.append(validate_layer(data, path))

    @property
    def pending(self) -> int:
        """
        How many queued one-shot behaviours are left.
        """
        return len(self._queue)

    def clear_queue(self) -> None:
        self._queue.clear()

    def behaviour_for(self, model: Optional[ModelSpec]) -> Behaviour:
        """
        The behaviour for one request: default, then the model's layer, then
        the next queued layer (which this call consumes).
        """
        behaviour = self.default
        if model is not None and self._per_model:
            override = self._per_model.get(model.parsed.key())
            if override is not None:
                behaviour = behaviour.merged(override[1])
        if self._queue:
            behaviour = behaviour.merged(self._queue.popleft())
        return behaviour

    # models

    def find_model(self, name: Any) -> Optional[ModelSpec]:
        """
        The model C{name} refers to (C{qwen3} means C{qwen3:latest}), or
        L{None}.
        """
        key = model_key(name)
        return self._by_key.get(key) if key is not None else None

    def add_model(self, spec: ModelSpec) -> None:
        """
        A model appears (an emulated pull, create or copy).
        """
        self.models.append(spec)
        self._by_key.setdefault(spec.parsed.key(), spec)

    def remove_model(self, spec: ModelSpec) -> None:
        """
        A model disappears (an emulated delete).
        """
        self.models = [m for m in self.models if m is not spec]
        self._by_key.pop(spec.parsed.key(), None)
        self._loaded.discard(spec.parsed.key())

    def is_loaded(self, model: ModelSpec) -> bool:
        return model.parsed.key() in self._loaded

    def set_loaded(self, model: ModelSpec, loaded: bool = True) -> None:
        """
        Record that a request loaded (or unloaded, C{keep_alive: 0}) a model.
        """
        if loaded:
            self._loaded.add(model.parsed.key())
        else:
            self._loaded.discard(model.parsed.key())

    def loaded_models(self) -> List[ModelSpec]:
        return [spec for spec in self.models if spec.parsed.key() in self._loaded]


# -- generation helpers -----------------------------------------------------


def split_words(text: str) -> Tuple[str, ...]:
    """
    Cut C{text} into word pieces, each carrying the whitespace before it,
    so that joining the pieces gives C{text} back exactly.
    """
    pieces = _WORD.findall(text)
    if not pieces:
        return (text,) if text else ()
    consumed = sum(len(piece) for piece in pieces)
    if consumed < len(text):
        pieces[-1] += text[consumed:]
    return tuple(pieces)


@lru_cache(maxsize=1024)
def split_tokens(text: str, count: Optional[int] = None) -> Tuple[str, ...]:
    """
    The content chunks of a generation.

    Without C{count}, the word pieces of L{split_words}. Otherwise exactly
    C{count} chunks: up to the number of words, the words grouped evenly;
    up to the number of characters, the text cut into near-equal slices
    (joined, the chunks are still C{text}); beyond that the words are
    cycled, a space in front of each repetition, so a benchmark can ask for
    any length. An empty text gives C{count} empty chunks.
    """
    words = split_words(text)
    if count is None:
        return words
    if count <= 0:
        return ()
    total = len(words)
    if total == 0:
        return ("",) * count
    if count <= total:
        return tuple(
            "".join(words[(i * total) // count:((i + 1) * total) // count])
            for i in range(count)
        )
    size = len(text)
    if count <= size:
        return tuple(text[(i * size) // count:((i + 1) * size) // count] for i in range(count))
    pieces = list(words)
    first = words[0] if words[0][:1].isspace() else " " + words[0]
    i = 0
    while len(pieces) < count:
        pieces.append(first if i % total == 0 else words[i % total])
        i += 1
    return tuple(pieces)


def rough_token_count(text: str) -> int:
    """
    About four characters per token, at least one: good enough for
    C{prompt_eval_count}.
    """
    return max(1, (len(text) + 3) // 4)


def default_answer(user_text: str) -> str:
    """
    The answer when nothing is scripted: friendly, deterministic, and it
    quotes the prompt so a demo shows a real round trip.
    """
    snippet = " ".join(user_text.split())
    if len(snippet) > 200:
        snippet = snippet[:197] + "..."
    if not snippet:
        return "Hello from the qwengate Ollama emulator."
    return "Hello from the qwengate Ollama emulator. You said: " + snippet


def default_thinking(user_text: str) -> str:
    """
    The reasoning text of thinking models when nothing is scripted.
    """
    return (
        "The user sent %d characters. A short, friendly reply that repeats "
        "them back will do." % (len(user_text),)
    )


def normalise(vector: Iterable[float]) -> List[float]:
    """
    Scale to unit L2 length, as Ollama does to every embedding.
    """
    values = list(vector)
    norm = math.sqrt(sum(v * v for v in values))
    scale = 1.0 / max(norm, 1e-12)
    return [round(v * scale, 8) for v in values]


@lru_cache(maxsize=2048)
def _raw_vector(text: str, dimension: int) -> Tuple[float, ...]:
    values: List[float] = []
    counter = 0
    data = text.encode("utf-8")
    while len(values) < dimension:
        digest = hashlib.sha256(b"%d\0%s" % (counter, data)).digest()
        for i in range(0, 32, 4):
            values.append(int.from_bytes(digest[i:i + 4], "big") / 2147483648.0 - 1.0)
        counter += 1
    return tuple(values[:dimension])


def embedding_vector(text: str, dimension: int, dimensions: Optional[int] = None) -> List[float]:
    """
    A deterministic unit vector for C{text}: equal texts give equal vectors.
    C{dimensions} (the request field) cuts the vector and re-normalises it
    when it is between 1 and C{dimension}, as Ollama does.
    """
    vector = normalise(_raw_vector(text, dimension))
    if dimensions is not None and 0 < dimensions < dimension:
        vector = normalise(vector[:dimensions])
    return vector
