# -*- test-case-name: tests.translate.test_chat -*-
"""
C{/v1/chat/completions} to C{/api/chat} and back, without streaming.

Ollama's own compatibility layer gets several things wrong that chat front
ends trip over (reference section 4.2): it injects C{temperature: 1.0} over
the Modelfile's tuned value, ignores C{max_completion_tokens} and C{n},
splits a multi-part user message into several native messages, and answers
with C{content: ""} next to tool calls. This module implements the
reference's own mapping of the request fields (section 5.1) and of the
response (section 6.1) as plain functions so every rule is a row in a
table-driven test; the messages themselves (section 5.1.1) are converted by
L{qwen_twist.translate.messages}.

Request translation runs on every turn of a chat front end, whose bodies are
typically ~50 KB (a 40,000-character system prompt and a dozen tools), so it
is one linear pass: message strings, tool schemas and images are referenced,
never copied or re-serialised; only small envelope dicts are new.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from qwen_twist.errors import invalid_request, upstream_protocol_error
from qwen_twist.translate.common import (
    finish_reason,
    openai_tool_call,
    tool_call_id,
    unix_time,
    usage,
)
from qwen_twist.translate.messages import json_chars, native_messages
from qwen_twist.translate.request import UpstreamRequest
from qwen_twist.translate.validate import (
    keep_alive_value,
    native_options,
    optional_bool,
    optional_int,
    optional_object,
    optional_str,
    output_cap,
    require_object,
    require_str,
    single_choice,
    stream_flags,
    type_name,
)

#: Where assistant reasoning goes in a response (E14), by configured name.
REASONING_KEYS: Dict[str, Tuple[str, ...]] = {
    "reasoning_content": ("reasoning_content",),
    "reasoning": ("reasoning",),
    "both": ("reasoning_content", "reasoning"),
    "none": (),
}

#: OpenAI reasoning effort -> native C{think} (TV-12). C{xhigh}/C{max}/C{ultra}
#: are lowered to C{"high"} for upstreams older than 0.22.0. C{ultra} is not an
#: OpenAI value but Ollama compat maps it to its highest level, and clients
#: written against Ollama send it.
_EFFORT_TO_THINK: Dict[str, object] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "max",
    "max": "max",
    "ultra": "max",
}

#: Native C{think} levels a client may send directly (reference 2.5).
_THINK_LEVELS = frozenset({"low", "medium", "high", "max"})

_TOOL_CHOICES = frozenset({"none", "auto", "required"})


@dataclass(frozen=True)
class ChatOptions:
    """
    Deployment choices that change the chat mapping.

    @ivar reasoning_field: the response field that carries the model's
        reasoning: C{"reasoning_content"} (DeepSeek, LiteLLM, LangChain),
        C{"reasoning"} (Ollama compat), C{"both"}, or C{"none"} to drop it.
    @ivar max_think_level: the upstream accepts C{think: "max"} (Ollama
        0.22.0 and later). When false, C{xhigh}/C{max} become C{"high"}.
    """

    reasoning_field: str = "reasoning_content"
    max_think_level: bool = True

    def __post_init__(self) -> None:
        if self.reasoning_field not in REASONING_KEYS:
            raise ValueError(
                "reasoning_field must be one of %s, not %r"
                % (", ".join(sorted(REASONING_KEYS)), self.reasoning_field)
            )

    @property
    def reasoning_keys(self) -> Tuple[str, ...]:
        """
        The response keys that receive reasoning text (maybe none).
        """
        return REASONING_KEYS[self.reasoning_field]


def _tools(body: Dict[str, Any]) -> Optional[List[Dict[str, Any]]]:
    """
    Function tools with C{strict} removed, or L{None} when there are none or
    C{tool_choice} is C{"none"}. C{"required"} and a named choice cannot be
    enforced upstream; the tools are still sent and the model decides.
    """
    choice = body.get("tool_choice")
    if choice is not None and not isinstance(choice, dict):
        if not isinstance(choice, str):
            raise invalid_request(
                "Invalid type for 'tool_choice': expected a string or an object.",
                "tool_choice",
            )
        if choice not in _TOOL_CHOICES:
            raise invalid_request(
                "Invalid value for 'tool_choice': use 'none', 'auto', 'required' "
                "or a function object.",
                "tool_choice",
            )
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise invalid_request(
            "Invalid type for 'tools': expected an array, but got %s instead."
            % (type_name(tools),),
            "tools",
        )
    result = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise invalid_request(
                "Invalid 'tools[%d]': only {\"type\": \"function\", ...} tools are "
                "supported." % (index,),
                "tools",
            )
        function = tool.get("function")
        if not isinstance(function, dict):
            raise invalid_request(
                "Invalid 'tools[%d]': missing 'function' object." % (index,), "tools"
            )
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise invalid_request(
                "Invalid 'tools[%d]': the function needs a name." % (index,), "tools"
            )
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise invalid_request(
                "Invalid 'tools[%d]': description must be a string." % (index,), "tools"
            )
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise invalid_request(
                "Invalid 'tools[%d]': parameters must be a JSON Schema object." % (index,),
                "tools",
            )
        if "strict" in function:
            # Shallow: the (possibly large) schema is shared, not copied.
            function = {k: v for k, v in function.items() if k != "strict"}
        result.append({"type": "function", "function": function})
    if choice == "none" or not result:
        return None
    return result


def _format(body: Dict[str, Any]) -> object:
    """
    C{response_format} as native C{format}, or L{None} for plain text.
    """
    spec = body.get("response_format")
    if spec is None:
        return None
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise invalid_request(
            "Invalid 'response_format': expected an object with a 'type' string.",
            "response_format",
        )
    kind = spec["type"].strip().lower()
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        wrapper = spec.get("json_schema")
        if wrapper is None:
            return "json"
        if not isinstance(wrapper, dict):
            raise invalid_request(
                "Invalid 'response_format.json_schema': expected an object.",
                "response_format",
            )
        schema = wrapper.get("schema")
        if schema is None:
            return "json"
        if not isinstance(schema, dict):
            raise invalid_request(
                "Invalid 'response_format.json_schema.schema': expected an object.",
                "response_format",
            )
        return schema
    raise invalid_request(
        "Invalid 'response_format.type': use 'text', 'json_object' or 'json_schema'.",
        "response_format",
    )


def _effort(body: Dict[str, Any], key: str, param: str) -> object:
    """
    The native C{think} for the effort string in C{body[key]}, or L{None}
    when it is absent or empty.
    """
    value = optional_str(body, key, param)
    if value is None:
        return None
    effort = value.strip().lower()
    if not effort:
        # Ollama compat treats an empty effort as unset.
        return None
    if effort not in _EFFORT_TO_THINK:
        raise invalid_request(
            "Invalid value for '%s': use one of none, minimal, low, medium, high, "
            "xhigh, max, ultra." % (param,),
            param,
        )
    return _EFFORT_TO_THINK[effort]


def _think(body: Dict[str, Any], options: ChatOptions) -> object:
    """
    The native C{think} value, or L{None} to leave the model's default.

    Precedence (every present field is still type-checked): extension
    C{think} > C{reasoning.effort} > C{reasoning_effort} >
    C{chat_template_kwargs.enable_thinking} > C{enable_thinking}.
    """
    candidates: List[object] = []
    explicit = body.get("think")
    if explicit is not None and not isinstance(explicit, bool):
        if not isinstance(explicit, str) or explicit not in _THINK_LEVELS:
            raise invalid_request(
                "Invalid value for 'think': use true, false, 'low', 'medium', "
                "'high' or 'max'.",
                "think",
            )
    candidates.append(explicit)
    reasoning = optional_object(body, "reasoning")
    if reasoning is not None:
        candidates.append(_effort(reasoning, "effort", "reasoning.effort"))
    candidates.append(_effort(body, "reasoning_effort", "reasoning_effort"))
    kwargs = optional_object(body, "chat_template_kwargs")
    if kwargs is not None:
        candidates.append(
            optional_bool(
                kwargs, "enable_thinking", param="chat_template_kwargs.enable_thinking"
            )
        )
    candidates.append(optional_bool(body, "enable_thinking"))
    for think in candidates:
        if think is not None:
            if think == "max" and not options.max_think_level:
                return "high"
            return think
    return None


def chat_request(body: object, options: ChatOptions = ChatOptions()) -> UpstreamRequest:
    """
    Translate a C{/v1/chat/completions} body into an C{/api/chat} request.

    Unsupported OpenAI fields (C{user}, C{metadata}, C{logit_bias}, C{store},
    C{parallel_tool_calls}, ...) are dropped (TV-15); the extensions
    C{keep_alive}, C{think}, C{options}, C{num_ctx} and C{top_k} are
    forwarded.

    @param body: the decoded JSON body, of any type.
    @raise ApiError: a 400 naming the offending field.
    """
    body = require_object(body)
    model = require_str(body, "model")
    messages, prompt_chars = native_messages(body.get("messages"))
    # Everything else the model reads counts too (tool definitions, the
    # response schema, stop strings): the limit is on the prompt, not on
    # the message text alone.
    stream, include_usage = stream_flags(body)
    single_choice(body)
    max_completion_tokens = optional_int(body, "max_completion_tokens", minimum=1)
    max_tokens = optional_int(body, "max_tokens", minimum=1)
    options_ = native_options(
        body,
        max_completion_tokens if max_completion_tokens is not None else max_tokens,
    )
    payload: Dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    tools = _tools(body)
    if tools is not None:
        payload["tools"] = tools
        prompt_chars += json_chars(tools)
    format_ = _format(body)
    if format_ is not None:
        payload["format"] = format_
        if isinstance(format_, dict):
            prompt_chars += json_chars(format_)
    prompt_chars += sum(map(len, options_.get("stop") or ()))
    think = _think(body, options)
    if think is not None:
        payload["think"] = think
    if options_:
        payload["options"] = options_
    keep_alive = body.get("keep_alive")
    if keep_alive is not None:
        payload["keep_alive"] = keep_alive_value(keep_alive)
    logprobs = optional_bool(body, "logprobs")
    top_logprobs = optional_int(body, "top_logprobs", minimum=0, maximum=20)
    if logprobs:
        payload["logprobs"] = True
        if top_logprobs is not None:
            payload["top_logprobs"] = top_logprobs
    return UpstreamRequest(
        path="/api/chat",
        payload=payload,
        model=model,
        stream=stream,
        include_usage=include_usage,
        prompt_chars=prompt_chars,
        max_tokens=output_cap(options_),
    )


def _token_logprob(item: Dict[str, Any]) -> Dict[str, Any]:
    token = item.get("token")
    if not isinstance(token, str):
        token = ""
    logprob = item.get("logprob")
    if isinstance(logprob, bool) or not isinstance(logprob, (int, float)):
        logprob = 0.0
    raw = item.get("bytes")
    return {
        "token": token,
        "logprob": logprob,
        "bytes": raw if isinstance(raw, list) else list(token.encode("utf-8")),
    }


def openai_logprobs(native_logprobs: object) -> Optional[Dict[str, Any]]:
    """
    Native C{logprobs} (a list of C{{token, logprob, bytes?,
    top_logprobs?}}) as OpenAI's C{{"content": [...]}}, with
    C{top_logprobs: []} added where the upstream left it out; L{None} when
    the upstream sent none (E11). Shared with the streaming translator.
    """
    if not isinstance(native_logprobs, list) or not native_logprobs:
        return None
    content = []
    for item in native_logprobs:
        if not isinstance(item, dict):
            continue
        entry = _token_logprob(item)
        top = item.get("top_logprobs")
        entry["top_logprobs"] = (
            [_token_logprob(t) for t in top if isinstance(t, dict)]
            if isinstance(top, list)
            else []
        )
        content.append(entry)
    return {"content": content}


def chat_response(
    native: dict,
    *,
    model: str,
    completion_id: str,
    now: int,
    options: ChatOptions = ChatOptions(),
    new_call_id: Callable[[], str] = tool_call_id,
) -> dict:
    """
    Translate a non-streaming C{/api/chat} reply into a C{chat.completion}
    (section 6.1). No C{system_fingerprint} is sent: it would be a constant
    that fingerprints nothing.

    @param native: the decoded upstream object.
    @param model: the model string the client sent (echoed).
    @param completion_id: from L{qwen_twist.translate.common.chat_completion_id}.
    @param now: the gateway clock, used when C{created_at} is unusable.
    @param new_call_id: mints ids for tool calls that arrive without one.
    @raise ApiError: 502 if C{native} is not a JSON object.
    """
    if not isinstance(native, dict):
        raise upstream_protocol_error()
    message = native.get("message")
    if not isinstance(message, dict):
        message = {}
    content = message.get("content")
    if not isinstance(content, str):
        content = ""
    raw_calls = message.get("tool_calls")
    calls = (
        [openai_tool_call(call, new_call_id) for call in raw_calls if isinstance(call, dict)]
        if isinstance(raw_calls, list)
        else []
    )
    out: Dict[str, Any] = {
        "role": "assistant",
        "content": None if (not content and calls) else content,
    }
    if calls:
        out["tool_calls"] = calls
    thinking = message.get("thinking")
    if isinstance(thinking, str) and thinking:
        for key in options.reasoning_keys:
            out[key] = thinking
    done_reason = native.get("done_reason")
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": unix_time(native.get("created_at"), now),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": out,
                "logprobs": openai_logprobs(native.get("logprobs")),
                "finish_reason": finish_reason(
                    done_reason if isinstance(done_reason, str) else None, bool(calls)
                ),
            }
        ],
        "usage": usage(native),
    }
