# -*- test-case-name: tests.translate.test_native -*-
"""
Ollama's native API through the gate: which routes exist and what becomes
of each, the checks a native body passes before it is forwarded, the
filtering of model lists by a key's allow-list, and the NDJSON relay's
line discipline.

Why no translation: native clients (the C{ollama} libraries, Open WebUI's
Ollama connection) speak Ollama's wire format and must get it back byte
for byte. The gateway reads a body only to find what the gate needs (the
model or models it names, the prompt's size, the output cap, whether it
streams) and forwards it unchanged; a stream is passed on line by line,
whole lines only, so the gateway can add a keep-alive line between two of
Ollama's or end a failed stream with Ollama's own C{{"error": "..."}} line,
never a made-up C{done: true}.

Why management is locked: C{/api/pull}, C{/api/push}, C{/api/create},
C{/api/copy}, C{/api/delete} and C{/api/blobs/*} change what is on the
host's disk (and pulls cost bandwidth for hours); a key must carry the
L{MANAGE_SCOPE} scope for them. Routes that reach outside the host
(ollama.com web search and fetch, account sign-in) are never served.

Nothing here does I/O or imports Twisted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from qwen_twist import errors
from qwen_twist.translate.common import usage
from qwen_twist.translate.stream import _StreamTranslator

#: The key scope that unlocks model management.
MANAGE_SCOPE = "models:manage"

#: What the gateway does with a route.
SERVED = "served"
MANAGED = "managed"
REFUSED = "refused"


@dataclass(frozen=True)
class Route:
    """
    One of Ollama's native routes as the gateway serves it.

    @ivar name: the route's name in metrics and logs (C{native_chat}).
    @ivar methods: the HTTP methods Ollama accepts (C{HEAD} included where
        Ollama registers it).
    @ivar fate: L{SERVED}, L{MANAGED} (needs L{MANAGE_SCOPE}) or L{REFUSED}.
    @ivar body: whether a JSON body is read (and required).
    @ivar model_fields: the body fields that name models, in the order
        Ollama reads them; the first present one is the call's model.
    @ivar inference: whether the call uses the GPU (takes a queue slot,
        counts tokens).
    @ivar streams: whether Ollama streams the answer unless told
        C{stream: false}.
    @ivar final_key: what marks the last line of a complete stream:
        C{"done"} (C{done: true}, inference) or C{"status"}
        (C{status: "success"}, management progress).
    """

    name: str
    methods: Tuple[str, ...]
    fate: str = SERVED
    body: bool = False
    model_fields: Tuple[str, ...] = ()
    inference: bool = False
    streams: bool = False
    final_key: str = "done"


#: Ollama's native routes (C{server/routes.go}), exact paths. C{/api/blobs}
#: takes a digest below it and is matched by prefix (L{route_for}).
ROUTES: Dict[str, Route] = {
    "/": Route("native_root", ("GET", "HEAD")),
    "/api/version": Route("native_version", ("GET", "HEAD")),
    "/api/tags": Route("native_tags", ("GET", "HEAD")),
    "/api/ps": Route("native_ps", ("GET",)),
    "/api/show": Route("native_show", ("POST",), body=True, model_fields=("model", "name")),
    "/api/chat": Route("native_chat", ("POST",), body=True, model_fields=("model",),
                       inference=True, streams=True),
    "/api/generate": Route("native_generate", ("POST",), body=True, model_fields=("model",),
                           inference=True, streams=True),
    "/api/embed": Route("native_embed", ("POST",), body=True, model_fields=("model",),
                        inference=True),
    "/api/embeddings": Route("native_embeddings", ("POST",), body=True,
                             model_fields=("model",), inference=True),
    "/api/pull": Route("native_pull", ("POST",), MANAGED, body=True,
                       model_fields=("model", "name"), streams=True, final_key="status"),
    "/api/push": Route("native_push", ("POST",), MANAGED, body=True,
                       model_fields=("model", "name"), streams=True, final_key="status"),
    "/api/create": Route("native_create", ("POST",), MANAGED, body=True,
                         model_fields=("model", "name"), streams=True, final_key="status"),
    "/api/copy": Route("native_copy", ("POST",), MANAGED, body=True,
                       model_fields=("source", "destination")),
    "/api/delete": Route("native_delete", ("DELETE",), MANAGED, body=True,
                         model_fields=("model", "name")),
    "/api/blobs": Route("native_blobs", ("HEAD", "POST"), MANAGED),
    # Reach outside the host, or tell about it: never through the gateway.
    "/api/status": Route("native_refused", ("GET",), REFUSED),
    "/api/me": Route("native_refused", ("POST",), REFUSED),
    "/api/signout": Route("native_refused", ("POST",), REFUSED),
    "/api/user": Route("native_refused", ("DELETE",), REFUSED),
    "/api/experimental/web_search": Route("native_refused", ("POST",), REFUSED),
    "/api/experimental/web_fetch": Route("native_refused", ("POST",), REFUSED),
    "/api/experimental/model-recommendations": Route("native_refused", ("GET",), REFUSED),
}

#: Routes whose paths continue below them (C{/api/blobs/sha256:...},
#: C{/api/user/keys/...}); the bare paths are not routes.
_PREFIXED = ("/api/blobs", "/api/user")


#: The one path segment C{/api/blobs/} takes: a blob digest as Ollama
#: names blobs. Anything else (C{../me}, C{%2e%2e/me}) must not reach an
#: upstream URL parser that might resolve it to another route.
_DIGEST = re.compile(r"sha256[:-][0-9a-f]{64}")


def route_for(path: str) -> Optional[Route]:
    """
    The route serving C{path} (no query string), or L{None} for a path
    Ollama does not have. A trailing slash is not the same path (Ollama's
    router redirects it; the gateway does not guess); below C{/api/blobs/}
    only a digest is a path.
    """
    route = ROUTES.get(path)
    if route is not None:
        return route if path not in _PREFIXED else None
    if path.startswith("/api/blobs/"):
        return ROUTES["/api/blobs"] if _DIGEST.fullmatch(path[len("/api/blobs/"):]) else None
    if path.startswith("/api/user/"):
        return ROUTES["/api/user"]
    return None


@dataclass
class NativePlan:
    """
    What the gate needs to know of one native call (the attributes the
    admission hooks read: C{model}, C{models}, C{prompt_chars},
    C{max_tokens}, C{scope}, C{needs_slot}).

    @ivar payload: the body to forward, unchanged (L{None}: no body).
    @ivar models: every model the body names (copy names two); each must
        be allowed for the key.
    @ivar needs_slot: whether the call waits for a GPU slot.
    @ivar final_key: see L{Route.final_key}.
    """

    path: str
    payload: Any
    model: Optional[str]
    models: Tuple[str, ...]
    stream: bool
    prompt_chars: int
    max_tokens: Optional[int]
    scope: Optional[str]
    needs_slot: bool
    final_key: str = "done"


def _text(value: Any) -> int:
    return len(value) if isinstance(value, str) else 0


def _chat_chars(messages: Any) -> int:
    if messages is None:
        return 0
    if not isinstance(messages, list):
        raise errors.invalid_field("messages", "an array of message objects")
    chars = 0
    for message in messages:
        if not isinstance(message, dict):
            raise errors.invalid_field("messages", "an array of message objects")
        chars += _text(message.get("content")) + _text(message.get("thinking"))
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and function.get("arguments") is not None:
                    chars += len(json.dumps(function["arguments"]))
    return chars


def _input_chars(value: Any) -> int:
    if isinstance(value, list):
        return sum(_text(item) for item in value)
    return _text(value)


def prompt_chars(path: str, body: Dict[str, Any]) -> int:
    """
    Characters of prompt text in a native body, counted like the C{/v1}
    routes count theirs: message contents, reasoning and tool-call
    arguments (chat); prompt, suffix and system (generate); every input
    (embed, embeddings). Images and tool definitions are not counted.

    @raise errors.ApiError: 400 when C{messages} is not an array of objects.
    """
    if path == "/api/chat":
        return _chat_chars(body.get("messages"))
    if path == "/api/generate":
        return _text(body.get("prompt")) + _text(body.get("suffix")) + _text(body.get("system"))
    if path == "/api/embed":
        return _input_chars(body.get("input"))
    if path == "/api/embeddings":
        return _text(body.get("prompt"))
    return 0


def output_cap(body: Dict[str, Any]) -> Optional[int]:
    """
    A positive C{options.num_predict}, the most tokens the call may
    produce (reserved from the key's token budget up front).
    """
    options = body.get("options")
    if not isinstance(options, dict):
        return None
    value = options.get("num_predict")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    return int(value)


def native_request(path: str, route: Route, body: Any) -> NativePlan:
    """
    Check a native body and plan its call. C{body} is the parsed JSON
    (L{None} for routes without one).

    The checks are the gate's, not Ollama's: a JSON object, the model
    present and a string (every model field that is present, since each
    is checked against the key's allow-list), C{stream} a boolean when
    present, C{messages} an array. Everything else is Ollama's to judge.

    @raise errors.ApiError: 400 (Ollama's text C{model is required} for a
        missing model).
    """
    scope = MANAGE_SCOPE if route.fate == MANAGED else None
    if not route.body:
        return NativePlan(path, None, None, (), False, 0, None, scope, False, route.final_key)
    if not isinstance(body, dict):
        raise errors.body_not_object()
    models: List[str] = []
    for field in route.model_fields:
        value = body.get(field)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise errors.invalid_field(field, "a string")
        models.append(value)
    if not models:
        raise errors.model_required()
    if path == "/api/copy" and len(models) != 2:
        raise errors.invalid_request("source and destination are required", "destination")
    model = models[0]
    stream = False
    if route.streams:
        value = body.get("stream", True)
        if value is not None and not isinstance(value, bool):
            raise errors.invalid_field("stream", "true or false")
        stream = value is not False
    return NativePlan(
        path=path,
        payload=body,
        model=model,
        models=tuple(models),
        stream=stream,
        prompt_chars=prompt_chars(path, body),
        max_tokens=output_cap(body) if route.inference else None,
        scope=scope,
        needs_slot=route.inference,
        final_key=route.final_key,
    )


def allowed_listing(listing: Any, allows: Callable[[str], bool]) -> Dict[str, Any]:
    """
    An C{/api/tags} or C{/api/ps} answer with only the models C{allows}
    accepts (by C{model}, else C{name}); other fields are kept as Ollama
    sent them.

    @raise errors.ApiError: 502 when the answer is not that shape.
    """
    if not isinstance(listing, dict):
        raise errors.upstream_protocol_error()
    models = listing.get("models")
    if models is None:
        models = []
    if not isinstance(models, list):
        raise errors.upstream_protocol_error()
    kept = []
    for entry in models:
        if not isinstance(entry, dict):
            continue
        names = [entry.get(k) for k in ("model", "name")]
        if any(isinstance(n, str) and n and allows(n) for n in names):
            kept.append(entry)
    result = dict(listing)
    result["models"] = kept
    return result


def error_line(message: str) -> bytes:
    """
    Ollama's last line of a failed stream: C{{"error":"..."}} and a newline.
    """
    return json.dumps({"error": message}, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8") + b"\n"


class NativeStreamRelay(_StreamTranslator):
    """
    Ollama's NDJSON, passed on whole line by whole line.

    The state machine of the C{/v1} translators (line splitting, the
    failure paths, the end of the stream; L{_StreamTranslator}), with what
    a line becomes replaced: lines are forwarded as Ollama wrote them, each
    decoded only to see whether it is the last one (C{done: true}, or
    C{status: "success"} for management progress) or an error, and to
    read the token counts of the last one. Failures end the stream with
    Ollama's own C{{"error": "..."}} line.

    @ivar final_usage: C{prompt_tokens}, C{completion_tokens},
        C{total_tokens} of the C{done} line (inference streams).
    """

    def __init__(self, *, final_key: str = "done", max_line: int) -> None:
        # The OpenAI envelope the base renders goes unused.
        super().__init__(model="", completion_id="", created=0, include_usage=False,
                         max_line=max_line)
        self.final_key = final_key

    def _line(self, line: bytes, out: List[bytes]) -> None:
        native = self._decoded(line, out)
        if native is None:
            return
        out.append(line + b"\n")
        self.chunks += 1
        if self.final_key == "done":
            if native.get("done") is True:
                self.final_usage = usage(native)
                self._complete()
        elif native.get("status") == "success":
            self._complete()

    def _complete(self) -> None:
        self.finished = True
        self.outcome = "complete"
        self._splitter.flush()

    def _error_bytes(self, message: str, code: Optional[str]) -> bytes:
        return error_line(message)


def keepalive_line(route_path: str, model: Optional[str], created_at: str) -> Optional[bytes]:
    """
    A line the native clients read as "nothing new" (an empty chat or
    generate delta, the shape Ollama itself sends while a model thinks),
    written when the stream was silent for a keep-alive interval; L{None}
    for streams that have no such line (management progress).

    Why not a blank line: the C{ollama} Python library runs C{json.loads}
    on every line it receives, and a blank one raises.
    """
    if route_path == "/api/chat":
        obj: Dict[str, Any] = {"model": model, "created_at": created_at,
                               "message": {"role": "assistant", "content": ""},
                               "done": False}
    elif route_path == "/api/generate":
        obj = {"model": model, "created_at": created_at, "response": "", "done": False}
    else:
        return None
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"


def response_usage(native: Any) -> Optional[Dict[str, Any]]:
    """
    The token counts of a whole (non-streaming) native answer: chat and
    generate (C{prompt_eval_count}, C{eval_count}), embed
    (C{prompt_eval_count} only); L{None} when it holds none.
    """
    if not isinstance(native, dict):
        return None
    if "prompt_eval_count" not in native and "eval_count" not in native:
        return None
    return usage(native)
