# -*- test-case-name: tests.translate.test_responses -*-
"""
OpenAI Responses (C{POST /v1/responses}) to C{/api/chat} and back, without
streaming; the stream is L{qwen_twist.translate.responses_stream}.

Codex CLI, the OpenAI Agents SDK and agent frameworks speak this API. The
gateway is stateless, so it serves the API as with C{store: false}: the
client sends the whole conversation as C{input} items every turn, and
C{previous_response_id}, C{store: true}, C{conversation}, C{background}
and C{item_reference} items, which need a server that remembers, are
refused with a 400 that says so. The mapping (C{docs/anthropic-responses-
protocol.md}):

  - C{instructions} is the leading native C{system} message; C{input} is a
    string (one user message) or items in order: C{message} (roles
    C{user}, C{system}, C{developer} -> C{system}, C{assistant}; parts
    C{input_text}, C{input_image} as a base64 data URL, C{output_text},
    C{refusal}), C{reasoning} (its summary text becomes the next
    assistant message's C{thinking}), C{function_call} (joins the
    assistant message before it, as Chat Completions' C{tool_calls}) and
    C{function_call_output} (a native C{tool} message).
  - C{tools}: function tools only; built-in tools (web search, file
    search, computer use, code interpreter, MCP, ...) are refused.
    C{tool_choice} C{none} sends no tools; C{required} and a named
    function are not enforceable upstream: the model decides.
  - C{max_output_tokens} is C{num_predict}; C{temperature}, C{top_p} go
    to C{options}; C{reasoning.effort} is C{think} (Chat Completions'
    table); C{text.format} C{json_object} is C{format: "json"},
    C{json_schema} its schema.

Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import binascii
import json
from typing import Any, Callable, Dict, List, Optional, Tuple

from qwen_twist.errors import ApiError, invalid_request
from qwen_twist.translate.chat import ChatOptions, _think as chat_think
from qwen_twist.translate.common import random_token, usage
from qwen_twist.translate.functions import (
    AgentRequest,
    call_arguments,
    chat_plan,
    compact_json,
    native_call_id,
    native_reply,
    native_tools,
    sampling_options,
)
from qwen_twist.translate.validate import (
    shown_kind,
    optional_bool,
    optional_int,
    optional_object,
    require_object,
    require_str,
)

__all__ = ["responses_request", "responses_response", "response_object", "item_id"]

#: Fields that need state this gateway does not keep.
_STATEFUL = (
    ("previous_response_id", "previous_response_id is not supported: this gateway keeps "
     "no state; send the whole conversation in 'input' (store: false)."),
    ("conversation", "conversation is not supported: this gateway keeps no state; send "
     "the whole conversation in 'input'."),
    ("prompt", "stored prompt templates are not supported: this gateway keeps no state."),
)

_TOOL_CHOICES = frozenset({"none", "auto", "required"})


def item_id(prefix: str, token: Optional[str] = None) -> str:
    """
    An id for a response (C{resp}) or an output item (C{rs}, C{msg}, C{fc}).
    """
    return "%s_%s" % (prefix, token or random_token())


def _error(index: int, problem: str) -> ApiError:
    return invalid_request("Invalid 'input[%d]': %s" % (index, problem), "input")


def _image(part: Dict[str, Any], index: int) -> str:
    url = part.get("image_url")
    if not isinstance(url, str) or not url.startswith("data:"):
        raise _error(
            index,
            "input_image needs 'image_url' as a base64 data: URL; image URLs and "
            "file ids are not supported.",
        )
    header, comma, data = url.partition(",")
    if not comma or not header.endswith(";base64") or not data:
        raise _error(index, "image data URLs must look like data:<type>;base64,<data>.")
    try:
        binascii.a2b_base64(data, strict_mode=True)
    except ValueError:
        raise _error(index, "image data is not valid base64.") from None
    return data


def _parts(content: object, index: int, images: Optional[List[str]]) -> str:
    """
    The text of a message's content (a string or parts joined with
    C{"\\n"}); image parts are collected into C{images} (user turns only).
    """
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _error(index, "content must be a string or an array of parts.")
    texts = []
    for part in content:
        if not isinstance(part, dict):
            raise _error(index, "content parts must be objects.")
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise _error(index, "a %s part needs a 'text' string." % (kind,))
            texts.append(text)
        elif kind == "refusal":
            text = part.get("refusal")
            texts.append(text if isinstance(text, str) else "")
        elif kind == "input_image":
            if images is None:
                raise _error(index, "images are only supported in user messages.")
            images.append(_image(part, index))
        else:
            raise _error(
                index,
                "content part %s is not supported."
                % (shown_kind(kind),),
            )
    return "\n".join(texts)


def _reasoning_text(item: Dict[str, Any]) -> str:
    texts = []
    for key in ("summary", "content"):
        parts = item.get(key)
        if isinstance(parts, list):
            for part in parts:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
    return "\n".join(texts)


def _call(item: Dict[str, Any], index: int) -> Tuple[Dict[str, Any], str, int]:
    call_id = item.get("call_id")
    name = item.get("name")
    if not isinstance(call_id, str) or not call_id:
        raise _error(index, "a function_call needs a 'call_id' string.")
    if not isinstance(name, str) or not name:
        raise _error(index, "a function_call needs a 'name' string.")
    arguments = item.get("arguments")
    if arguments is None:
        arguments = ""
    if not isinstance(arguments, str):
        raise _error(index, "function_call arguments must be a JSON string.")
    parsed: object = {}
    if arguments.strip():
        try:
            parsed = json.loads(arguments)
        except ValueError:
            parsed = None
    if not isinstance(parsed, dict):
        raise _error(index, "function_call arguments for '%s' are not a JSON object." % (name[:64],))
    return {"id": call_id, "function": {"name": name, "arguments": parsed}}, name, len(arguments)


def _input(body: Dict[str, Any]) -> Tuple[List[Dict[str, Any]], int]:
    native: List[Dict[str, Any]] = []
    chars = 0
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise invalid_request("instructions: expected a string.", "instructions")
        if instructions:
            native.append({"role": "system", "content": instructions})
            chars += len(instructions)
    value = body.get("input")
    if value is None:
        raise invalid_request("Missing required parameter: 'input'.", "input")
    if isinstance(value, str):
        native.append({"role": "user", "content": value})
        return native, chars + len(value)
    if not isinstance(value, list) or not value:
        raise invalid_request("input: expected a string or a non-empty array of items.", "input")
    call_names: Dict[str, str] = {}
    thinking: Optional[str] = None
    # Whether the last native message is an assistant turn that later
    # function_call items of the same turn may join.
    open_turn = False
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise _error(index, "each item must be an object.")
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role == "user":
                images: List[str] = []
                text = _parts(item.get("content"), index, images)
                out: Dict[str, Any] = {"role": "user", "content": text}
                if images:
                    out["images"] = images
            elif role in ("system", "developer"):
                text = _parts(item.get("content"), index, None)
                out = {"role": "system", "content": text}
            elif role == "assistant":
                text = _parts(item.get("content"), index, None)
                out = {"role": "assistant", "content": text}
                if thinking:
                    out["thinking"] = thinking
                    thinking = None
            else:
                raise _error(index, "role must be user, system, developer or assistant.")
            native.append(out)
            chars += len(text)
            open_turn = role == "assistant"
        elif kind == "reasoning":
            text = _reasoning_text(item)
            if text:
                thinking = text if thinking is None else thinking + "\n" + text
                chars += len(text)
        elif kind == "function_call":
            call, name, argument_chars = _call(item, index)
            call_names[call["id"]] = name
            chars += argument_chars
            if not open_turn:
                turn: Dict[str, Any] = {"role": "assistant", "content": ""}
                if thinking:
                    turn["thinking"] = thinking
                    thinking = None
                native.append(turn)
                open_turn = True
            native[-1].setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise _error(index, "a function_call_output needs a 'call_id' string.")
            images = []
            text = _parts(item.get("output", ""), index, images)
            out = {"role": "tool", "content": text, "tool_call_id": call_id}
            name = call_names.get(call_id)
            if name is not None:
                out["tool_name"] = name
            if images:
                out["images"] = images
            native.append(out)
            chars += len(text)
            open_turn = False
        elif kind == "item_reference":
            raise _error(
                index, "item_reference is not supported: this gateway keeps no state; "
                "send the item itself."
            )
        else:
            raise _error(
                index,
                "item type %s is not supported (message, reasoning, function_call and "
                "function_call_output are)."
                % (shown_kind(kind),),
            )
    return native, chars


def _tools(body: Dict[str, Any]) -> Optional[List[Dict[str, Any]]]:
    choice = body.get("tool_choice")
    if choice is not None:
        if isinstance(choice, str):
            if choice not in _TOOL_CHOICES:
                raise invalid_request(
                    "tool_choice: use 'none', 'auto', 'required' or a function.", "tool_choice"
                )
        elif not isinstance(choice, dict) or choice.get("type") not in ("function", "allowed_tools"):
            raise invalid_request(
                "tool_choice: only 'none', 'auto', 'required', a function or "
                "allowed_tools are supported.",
                "tool_choice",
            )
    tools = native_tools(
        body, ("function",), "parameters",
        "tools[%d]: built-in tool %r is not available: this gateway runs only "
        "function tools.",
    )
    return None if choice == "none" else tools


def _format(body: Dict[str, Any]) -> object:
    text = optional_object(body, "text")
    if text is None:
        return None
    spec = text.get("format")
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise invalid_request("text.format: expected an object.", "text")
    kind = spec.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = spec.get("schema")
        if not isinstance(schema, dict):
            raise invalid_request("text.format.schema: expected a JSON Schema object.", "text")
        return schema
    raise invalid_request(
        "text.format.type: use 'text', 'json_object' or 'json_schema'.", "text"
    )


def _end_user(body: Dict[str, Any]) -> Optional[str]:
    for key in ("safety_identifier", "user"):
        value = body.get(key)
        if isinstance(value, str) and value:
            return value[:256]
    return None


def _echo(body: Dict[str, Any]) -> Dict[str, Any]:
    """
    The request settings a response object repeats.
    """
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    text = body.get("text") if isinstance(body.get("text"), dict) else {}
    text = dict(text)
    text.setdefault("format", {"type": "text"})
    metadata = body.get("metadata")
    return {
        "instructions": body.get("instructions"),
        "tools": body.get("tools") or [],
        "tool_choice": body.get("tool_choice") or "auto",
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "max_output_tokens": body.get("max_output_tokens"),
        "reasoning": {"effort": effort, "summary": None},
        "text": text,
        "metadata": metadata if isinstance(metadata, dict) else {},
        "truncation": "disabled",
        "store": False,
        "background": False,
        "previous_response_id": None,
        "user": body.get("user") if isinstance(body.get("user"), str) else None,
    }


def responses_request(body: object, options: ChatOptions = ChatOptions()) -> AgentRequest:
    """
    Translate a C{/v1/responses} body into an C{/api/chat} request.

    @param body: the decoded JSON body, of any type.
    @param options: the deployment's reasoning settings (C{think: "max"}).
    @raise ApiError: a 400 naming the offending field.
    """
    body = require_object(body)
    model = require_str(body, "model")
    for key, message in _STATEFUL:
        if body.get(key) is not None:
            raise invalid_request(message, key)
    if optional_bool(body, "store"):
        raise invalid_request(
            "store: true is not supported: this gateway keeps no state; send store: "
            "false and the whole conversation in 'input'.",
            "store",
        )
    if optional_bool(body, "background"):
        raise invalid_request(
            "background responses are not supported: this gateway keeps no state.",
            "background",
        )
    messages, chars = _input(body)
    stream = bool(optional_bool(body, "stream"))
    max_output = optional_int(body, "max_output_tokens", minimum=1)
    reasoning = optional_object(body, "reasoning")
    think_body: Dict[str, Any] = {}
    if reasoning is not None:
        think_body["reasoning"] = {"effort": reasoning.get("effort")}
    if "think" in body:
        think_body["think"] = body["think"]
    return chat_plan(
        body, model=model, messages=messages, prompt_chars=chars, stream=stream,
        options=sampling_options(body, max_output),
        extras={"tools": _tools(body), "format": _format(body),
                "think": chat_think(think_body, options)},
        end_user=_end_user(body),
        echo=_echo(body),
    )


def responses_usage(native: Dict[str, Any]) -> Dict[str, Any]:
    """
    The Responses C{usage} object from a final native object's counts.
    """
    counts = usage(native)
    return {
        "input_tokens": counts["prompt_tokens"],
        "input_tokens_details": {
            "cached_tokens": counts.get("prompt_tokens_details", {}).get("cached_tokens", 0),
            "cache_write_tokens": 0,
        },
        "output_tokens": counts["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": counts["total_tokens"],
    }


def response_object(
    echo: Dict[str, Any],
    *,
    response_id: str,
    model: str,
    created: int,
    status: str,
    output: List[Dict[str, Any]],
    usage: Optional[Dict[str, Any]] = None,
    error: Optional[Dict[str, str]] = None,
) -> Dict[str, Any]:
    """
    A C{response} object: the envelope shared by the JSON answer and the
    lifecycle events of a stream.

    @param status: C{in_progress}, C{completed}, C{incomplete} (the output
        cap was hit) or C{failed}.
    """
    result: Dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "model": model,
        "output": output,
        "error": error,
        "incomplete_details": (
            {"reason": "max_output_tokens"} if status == "incomplete" else None
        ),
        "usage": usage,
    }
    result.update(echo)
    return result


def reasoning_item(item_id_: str, text: str) -> Dict[str, Any]:
    """
    A C{reasoning} output item whose summary is Qwen3's thinking (the
    whole of it: Ollama has no separate summary).
    """
    return {
        "id": item_id_,
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": text}],
    }


def message_item(item_id_: str, text: str, status: str = "completed") -> Dict[str, Any]:
    """
    An assistant C{message} output item; C{in_progress} (a stream's
    C{output_item.added}) has no content yet.
    """
    return {
        "id": item_id_,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [output_text(text)] if status == "completed" else [],
    }


def output_text(text: str) -> Dict[str, Any]:
    """
    An C{output_text} content part (no annotations, no logprobs).
    """
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(item_id_: str, native_call: Dict[str, Any],
                       status: str = "completed") -> Dict[str, Any]:
    """
    One native tool call as a C{function_call} item (C{arguments} as a
    JSON string; C{status} C{in_progress} gives the stream's empty
    C{arguments}).
    """
    function = native_call.get("function")
    if not isinstance(function, dict):
        function = {}
    name = function.get("name")
    return {
        "id": item_id_,
        "type": "function_call",
        "status": status,
        "call_id": native_call_id(native_call, "call_"),
        "name": name if isinstance(name, str) else "",
        "arguments": (
            compact_json(call_arguments(function.get("arguments")))
            if status == "completed" else ""
        ),
    }


def final_status(done_reason: object) -> str:
    """
    C{incomplete} when Ollama stopped at the output cap, else C{completed}.
    """
    return "incomplete" if done_reason == "length" else "completed"


def responses_response(
    native: object,
    *,
    plan: AgentRequest,
    response_id: str,
    created: int,
    new_id: Callable[[str], str] = item_id,
) -> Dict[str, Any]:
    """
    Translate a non-streaming C{/api/chat} reply into a C{response} object:
    a C{reasoning} item for Qwen3's thinking, a C{message} for the text
    (also when empty and nothing else came), a C{function_call} per tool
    call.

    @raise ApiError: 502 if C{native} is not a JSON object.
    """
    thinking, text, calls = native_reply(native)
    output: List[Dict[str, Any]] = []
    if thinking:
        output.append(reasoning_item(new_id("rs"), thinking))
    if text or not calls:
        output.append(message_item(new_id("msg"), text))
    for call in calls:
        output.append(function_call_item(new_id("fc"), call))
    return response_object(
        plan.echo,
        response_id=response_id,
        model=plan.model,
        created=created,
        status=final_status(native.get("done_reason")),
        output=output,
        usage=responses_usage(native),
    )
