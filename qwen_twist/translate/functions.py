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
from typing import Any, Callable, Dict, Optional

from qwen_twist.errors import invalid_request
from qwen_twist.translate.common import random_token
from qwen_twist.translate.request import UpstreamRequest


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
