# -*- test-case-name: tests.translate.test_messages -*-
"""
OpenAI chat messages to native C{/api/chat} messages (reference section
5.1.1): roles, content parts, images, tool-call history and C{tool_name}.

Ollama's compatibility layer splits a multi-part user message into several
native messages and keeps the C{data:} prefix on images, which its own
base64 decoder then rejects; the reference's mapping keeps one native
message per OpenAI message, in place, and strips the prefix. Tool results
get the C{tool_name} of the assistant call they answer, because Qwen's
chat template renders tool results by name.

This runs on every turn of a chat front end over the whole history
(typically tens of kilobytes), so it is one linear pass: message strings
and images are referenced, never copied or re-serialised; only small
envelope dicts are new. Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import binascii
import json
import re
from typing import Any, Dict, List, Optional, Tuple

from qwen_twist.errors import ApiError, invalid_request
from qwen_twist.translate.validate import shown_kind, type_name

__all__ = ["native_messages"]


def _message_error(index: int, problem: str) -> ApiError:
    # Everything inside messages reports param "messages" (TV-06, TV-08);
    # the text names the exact message.
    return invalid_request("Invalid 'messages[%d]': %s" % (index, problem), "messages")


def _reject_constant(name: str) -> object:
    raise ValueError("non-finite number %s" % (name,))


_HAS_WHITESPACE = re.compile(r"\s")


def _image_data(value: object, index: int) -> str:
    """
    The bare base64 of an C{image_url} part (E17, E18): the C{data:} URL
    prefix is stripped because native base64 decoding fails on it.
    """
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str):
        raise _message_error(index, "image_url must have a 'url' string.")
    if url.startswith("data:"):
        header, comma, data = url.partition(",")
        if not comma or not header.endswith(";base64") or not data:
            raise _message_error(
                index, "image data URLs must look like data:<type>;base64,<data>."
            )
        if _HAS_WHITESPACE.search(data):
            # Base64 wrapped at 76 columns (MIME encoders: Python's
            # encodebytes, Java, PHP chunk_split) is valid; Ollama accepts
            # it, so whitespace is removed here and nothing else is excused.
            data = "".join(data.split())
            if not data:
                raise _message_error(index, "image data is not valid base64.")
        try:
            # One C-speed pass; the decoded copy is thrown away.
            binascii.a2b_base64(data, strict_mode=True)
        except ValueError:
            raise _message_error(index, "image data is not valid base64.") from None
        return data
    if url[:8].lower().startswith(("http://", "https://")):
        raise _message_error(
            index,
            "image URLs are not supported; send the image inline as a "
            "base64 data: URL instead.",
        )
    raise _message_error(index, "image_url must be a base64 data: URL.")


def _parts_text(parts: list, index: int, images: Optional[List[str]]) -> str:
    """
    Join the text parts of a content array with C{"\\n"}; collect image
    parts into C{images} (only user messages pass a list).
    """
    texts: List[str] = []
    for part in parts:
        if not isinstance(part, dict):
            raise _message_error(index, "content parts must be objects.")
        kind = part.get("type")
        if kind == "text" or kind == "refusal":
            text = part.get(kind)
            if not isinstance(text, str):
                raise _message_error(index, "a %s part needs a '%s' string." % (kind, kind))
            texts.append(text)
        elif kind == "image_url":
            if images is None:
                raise _message_error(index, "images are only supported in user messages.")
            images.append(_image_data(part.get("image_url"), index))
        elif kind in ("input_audio", "file"):
            raise _message_error(index, "'%s' content parts are not supported." % (kind,))
        else:
            raise _message_error(
                index,
                "unsupported content part type %s."
                % (shown_kind(kind),),
            )
    return "\n".join(texts)


def _content_text(content: object, index: int, images: Optional[List[str]] = None) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return _parts_text(content, index, images)
    raise _message_error(
        index,
        "content must be a string or an array of content parts, not %s."
        % (type_name(content),),
    )


def json_chars(value: object) -> int:
    """
    Characters of C{value} serialised as compact JSON: how much of a
    prompt a schema or an argument object is.
    """
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def _tool_call(call: object, index: int) -> Tuple[Dict[str, Any], Optional[str], int]:
    """
    One OpenAI assistant tool call as a native one: C{arguments} goes from
    a JSON string to an object. Returns C{(native, id, argument chars)}.
    """
    if not isinstance(call, dict):
        raise _message_error(index, "tool_calls entries must be objects.")
    if call.get("type") not in (None, "function"):
        raise _message_error(index, "only function tool calls are supported.")
    function = call.get("function")
    if not isinstance(function, dict):
        raise _message_error(index, "a tool call needs a 'function' object.")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise _message_error(index, "a tool call needs a function name.")
    arguments = function.get("arguments")
    chars = 0
    if arguments is None:
        parsed: object = {}
    elif isinstance(arguments, dict):
        parsed = arguments
        # The model reads it serialised, just as a string would be.
        chars = json_chars(arguments)
    elif isinstance(arguments, str):
        chars = len(arguments)
        if not arguments.strip():
            # Some clients send "" for a call without arguments.
            parsed = {}
        else:
            try:
                parsed = json.loads(arguments, parse_constant=_reject_constant)
            except ValueError:
                raise _message_error(
                    index, "tool call arguments for '%s' are not valid JSON." % (name[:64],)
                ) from None
    else:
        raise _message_error(index, "tool call arguments must be a JSON string.")
    if not isinstance(parsed, dict):
        raise _message_error(
            index, "tool call arguments for '%s' must be a JSON object." % (name[:64],)
        )
    native_function = {"name": name, "arguments": parsed}
    chars += len(name)
    call_id = call.get("id")
    if call_id is None:
        return {"function": native_function}, None, chars
    if not isinstance(call_id, str):
        raise _message_error(index, "a tool call id must be a string.")
    return {"id": call_id, "function": native_function}, call_id, chars + len(call_id)


def native_messages(value: object) -> Tuple[List[Dict[str, Any]], int]:
    """
    Section 5.1.1: OpenAI messages to native ones, in place and in order.

    @param value: the request's C{messages}, of any type.
    @return: the native messages and the prompt character count (text,
        reasoning and tool-call arguments), for the prompt-size estimate.
    @raise ApiError: a 400 on C{messages} naming the message at fault.
    """
    if value is None:
        raise invalid_request("Missing required parameter: 'messages'.", "messages")
    if not isinstance(value, list):
        raise invalid_request(
            "Invalid type for 'messages': expected an array, but got %s instead."
            % (type_name(value),),
            "messages",
        )
    if not value:
        raise invalid_request(
            "Invalid 'messages': at least one message is required.", "messages"
        )
    native: List[Dict[str, Any]] = []
    chars = 0
    # id -> function name of the latest earlier assistant call with that id,
    # which is what a backwards search from each tool message would find.
    call_names: Dict[str, str] = {}
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise _message_error(index, "each message must be an object.")
        role = message.get("role")
        if role == "user":
            images: List[str] = []
            text = _content_text(message.get("content"), index, images)
            out: Dict[str, Any] = {"role": "user", "content": text}
            if images:
                out["images"] = images
        elif role == "system" or role == "developer":
            text = _content_text(message.get("content"), index)
            out = {"role": "system", "content": text}
        elif role == "assistant":
            content = message.get("content")
            text = "" if content is None else _content_text(content, index)
            out = {"role": "assistant", "content": text}
            thinking = message.get("reasoning_content")
            if thinking is None:
                thinking = message.get("reasoning")
            # Echoed reasoning is optional history; a non-string shape from
            # some other provider is dropped rather than refused.
            if isinstance(thinking, str) and thinking:
                out["thinking"] = thinking
                chars += len(thinking)
            calls = message.get("tool_calls")
            if calls is not None:
                if not isinstance(calls, list):
                    raise _message_error(index, "tool_calls must be an array.")
                native_calls = []
                for call in calls:
                    native_call, call_id, argument_chars = _tool_call(call, index)
                    native_calls.append(native_call)
                    chars += argument_chars
                    if call_id is not None:
                        call_names[call_id] = native_call["function"]["name"]
                if native_calls:
                    out["tool_calls"] = native_calls
        elif role == "tool":
            content = message.get("content")
            text = "" if content is None else _content_text(content, index)
            out = {"role": "tool", "content": text}
            call_id = message.get("tool_call_id")
            name = None
            if call_id is not None:
                if not isinstance(call_id, str):
                    raise _message_error(index, "tool_call_id must be a string.")
                out["tool_call_id"] = call_id
                name = call_names.get(call_id)
            if name is None:
                # Clients such as OpenClaw rewrite tool_call_ids, so the
                # lookup can miss; a name on the message is the next best.
                given = message.get("name")
                if isinstance(given, str) and given:
                    name = given
            if name is not None:
                out["tool_name"] = name
                chars += len(name)
            if call_id is not None:
                chars += len(call_id)
        elif role == "function":
            raise _message_error(
                index, "the deprecated 'function' role is not supported; use 'tool'."
            )
        else:
            raise _message_error(
                index,
                "unknown role %s."
                % (shown_kind(role),),
            )
        native.append(out)
        chars += len(text)
    return native, chars
