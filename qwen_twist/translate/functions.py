# -*- test-case-name: tests.translate.test_anthropic,tests.translate.test_responses -*-
"""
What the Anthropic Messages and OpenAI Responses translators share: one
function tool definition as a native tool, the id of a call, the text of a
history image, and the plan type that carries their extra facts.

Both APIs describe a function tool as a flat object (C{name},
C{description} and a JSON Schema under C{input_schema} or C{parameters})
and both refuse differently named built-in tools, which Ollama cannot run;
native C{/api/chat} wants Chat Completions' C{{"type": "function",
"function": {...}}}. Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import binascii
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from qwen_twist.errors import invalid_request, upstream_protocol_error
from qwen_twist.translate.common import random_token
from qwen_twist.translate.request import UpstreamRequest
from qwen_twist.translate.validate import keep_alive_value, native_options, output_cap, type_name

#: The sampling fields both APIs share with Chat Completions (plus the
#: gateway's own extensions), read by L{native_options}.
_SAMPLING = ("temperature", "top_p", "top_k", "seed", "options", "num_ctx")


@dataclass(frozen=True)
class AgentRequest(UpstreamRequest):
    """
    An L{UpstreamRequest} plus what the response translators of the
    Messages and Responses APIs echo back or log.

    @ivar end_user: the client's end-user id (C{metadata.user_id},
        C{user}, C{safety_identifier}) for the audit log, or L{None}.
    @ivar echo: request settings the Responses API repeats in its response
        object (C{instructions}, C{tools}, C{tool_choice}, C{text}, ...).
    """

    end_user: Optional[str] = None
    echo: Dict[str, Any] = field(default_factory=dict)


def sampling_options(body: Dict[str, Any], num_predict: Optional[int]) -> Dict[str, Any]:
    """
    The native C{options} for the sampling fields set in C{body} and the
    output cap (only what the client set: Modelfile defaults apply
    otherwise). Chat Completions' own names (C{stop}, penalties) are not
    read: these APIs spell them differently or not at all.
    """
    return native_options({k: body[k] for k in _SAMPLING if k in body}, num_predict)


def chat_plan(
    body: Dict[str, Any],
    *,
    model: str,
    messages: Any,
    prompt_chars: int,
    stream: bool,
    options: Dict[str, Any],
    extras: Dict[str, Any],
    end_user: Optional[str],
    echo: Optional[Dict[str, Any]] = None,
) -> AgentRequest:
    """
    The C{/api/chat} plan: C{stream} always explicit, C{extras} (C{tools},
    C{format}, C{think}) only when not L{None}, C{options} only when not
    empty, the C{keep_alive} extension checked.
    """
    payload: Dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    for key, value in extras.items():
        if value is not None:
            payload[key] = value
    if options:
        payload["options"] = options
    keep_alive = body.get("keep_alive")
    if keep_alive is not None:
        payload["keep_alive"] = keep_alive_value(keep_alive)
    return AgentRequest(
        path="/api/chat",
        payload=payload,
        model=model,
        stream=stream,
        include_usage=False,
        prompt_chars=prompt_chars,
        max_tokens=output_cap(options),
        end_user=end_user,
        echo=echo if echo is not None else {},
    )


def native_tools(
    body: Dict[str, Any], allowed_types: Tuple[object, ...], schema_key: str, refusal: str
) -> Optional[List[Dict[str, Any]]]:
    """
    C{body["tools"]} as native function tools, or L{None} when there are
    none. A tool whose C{type} is not in C{allowed_types} (a built-in or
    server tool Ollama cannot run) is refused with C{refusal % (index,
    type)}.
    """
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise invalid_request("tools: expected an array, not %s" % (type_name(tools),), "tools")
    result = []
    for index, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind not in allowed_types:
            raise invalid_request(refusal % (index, str(kind)[:64]), "tools")
        result.append(native_tool(tool, index, "tools", schema_key))
    return result or None


def native_tool(
    tool: object, index: int, param: str, schema_key: str
) -> Dict[str, Any]:
    """
    One flat function tool (C{{"name", "description"?, schema_key?}}) as
    a native tool.

    @param param: the request field reported in a 400 (C{"tools"}).
    @param schema_key: C{"input_schema"} (Anthropic) or C{"parameters"}
        (Responses).
    """
    if not isinstance(tool, dict):
        raise invalid_request("Invalid '%s[%d]': expected an object." % (param, index), param)
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise invalid_request(
            "Invalid '%s[%d]': the tool needs a name." % (param, index), param
        )
    function: Dict[str, Any] = {"name": name}
    description = tool.get("description")
    if description is not None:
        if not isinstance(description, str):
            raise invalid_request(
                "Invalid '%s[%d]': description must be a string." % (param, index), param
            )
        function["description"] = description
    schema = tool.get(schema_key)
    if schema is not None:
        if not isinstance(schema, dict):
            raise invalid_request(
                "Invalid '%s[%d]': %s must be a JSON Schema object."
                % (param, index, schema_key),
                param,
            )
        # Shared, not copied: schemas can be large.
        function["parameters"] = schema
    else:
        function["parameters"] = {"type": "object", "properties": {}}
    return {"type": "function", "function": function}


def native_reply(native: object) -> Tuple[str, str, List[Dict[str, Any]]]:
    """
    The C{(thinking, content, tool calls)} of a non-streaming C{/api/chat}
    reply, each empty when absent or malformed.

    @raise ApiError: 502 if C{native} is not a JSON object.
    """
    if not isinstance(native, dict):
        raise upstream_protocol_error()
    message = native.get("message")
    if not isinstance(message, dict):
        return "", "", []
    thinking = message.get("thinking")
    content = message.get("content")
    calls = message.get("tool_calls")
    return (
        thinking if isinstance(thinking, str) else "",
        content if isinstance(content, str) else "",
        [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else [],
    )


def call_arguments(value: object) -> Dict[str, Any]:
    """
    A native tool call's C{arguments} as an object (an upstream that sent
    a JSON string is decoded; anything unusable becomes C{{}}).
    """
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.strip():
        try:
            parsed = json.loads(value)
        except ValueError:
            return {}
        if isinstance(parsed, dict):
            return parsed
    return {}


def compact_json(value: object) -> str:
    """
    C{value} as compact JSON text, non-ASCII kept (a tool call's arguments
    as the clients expect to read them).
    """
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def native_call_id(native_call: Dict[str, Any], prefix: str,
                   mint: Optional[Callable[[], str]] = None) -> str:
    """
    The id of a native tool call, or a fresh C{prefix}-id when the upstream
    sent none (Ollama before 0.12.10).

    @param mint: makes the fresh id instead (tests pin ids with it).
    """
    call_id = native_call.get("id")
    if isinstance(call_id, str) and call_id:
        return call_id
    if mint is not None:
        return mint()
    return prefix + random_token()[:24]


def base64_image(data: object, where: str, param: str) -> str:
    """
    Bare base64 image data, checked (native C{images} are base64 decoded
    upstream; a bad one would be Ollama's 400 after a queue wait).
    """
    if not isinstance(data, str) or not data:
        raise invalid_request("Invalid '%s': image data must be a base64 string." % (where,), param)
    try:
        binascii.a2b_base64(data, strict_mode=True)
    except ValueError:
        raise invalid_request("Invalid '%s': image data is not valid base64." % (where,), param) from None
    return data
