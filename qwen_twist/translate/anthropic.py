# -*- test-case-name: tests.translate.test_anthropic -*-
"""
Anthropic Messages (C{POST /v1/messages}) to C{/api/chat} and back,
without streaming; the stream is L{qwen_twist.translate.anthropic_stream}.

Claude Code, the C{anthropic} SDKs and agent frameworks speak this API;
translating it here (rather than relying on a recent Ollama's own layer)
gives the same limits, errors and behaviour on every Ollama version. The
mapping, decided in C{docs/anthropic-responses-protocol.md}:

  - C{system} (a string or text blocks) is the leading native C{system}
    message; C{messages} keep their order. A user turn's C{tool_result}
    blocks become native C{tool} messages (with C{tool_call_id} and the
    C{tool_name} of the call they answer), its text and images one native
    C{user} message, in the order they came. An assistant turn's
    C{thinking} goes to native C{thinking}, C{tool_use} to C{tool_calls}.
  - C{max_tokens} (required) is C{num_predict}; C{stop_sequences},
    C{temperature}, C{top_p}, C{top_k} go to C{options}; C{thinking}
    C{enabled}/C{adaptive} is C{think: true}, C{disabled} C{think: false},
    and without C{thinking}, C{output_config.effort} is a C{think} level.
  - C{tool_choice} C{none} sends no tools; C{any} and a named C{tool}
    cannot be enforced by Ollama: the tools are sent and the model decides
    (as for Chat Completions' C{required}).
  - What Ollama cannot do is refused with a 400 naming the field: server
    tools (web search, code execution, ...), URL and file images,
    documents, C{mcp_servers}, C{container}.

Pure: no Twisted, no I/O.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from qwen_twist.errors import ApiError, invalid_request
from qwen_twist.translate.common import random_token, usage
from qwen_twist.translate.functions import (
    AgentRequest,
    base64_image,
    call_arguments,
    chat_plan,
    compact_json,
    native_call_id,
    native_reply,
    native_tools,
    sampling_options,
)
from qwen_twist.translate.validate import (
    optional_bool,
    optional_int,
    optional_object,
    require_object,
    require_str,
    stop_list,
    type_name,
)

__all__ = ["messages_request", "messages_response", "count_tokens", "message_id"]

#: Rough characters per token of the token-count estimate (the same ratio
#: the gate reserves token budgets with).
CHARS_PER_TOKEN = 4

_TOOL_CHOICES = frozenset({"auto", "any", "tool", "none"})


def message_id(token: Optional[str] = None) -> str:
    """
    C{msg_} plus random hex: the id of a reply message.
    """
    return "msg_" + (token or random_token())


def _error(index: int, problem: str) -> ApiError:
    return invalid_request("Invalid 'messages[%d]': %s" % (index, problem), "messages")


def _kind(block: Dict[str, Any]) -> str:
    kind = block.get("type")
    return "'%s'" % (kind[:40],) if isinstance(kind, str) else type_name(kind)


def _text_blocks(value: object, where: str, param: str) -> str:
    """
    A string, or an array of C{text} blocks joined with C{"\\n"}.
    """
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise invalid_request(
            "Invalid '%s': expected a string or an array of text blocks." % (where,), param
        )
    texts = []
    for block in value:
        if not isinstance(block, dict) or block.get("type") != "text":
            raise invalid_request(
                "Invalid '%s': only text blocks are supported here." % (where,), param
            )
        text = block.get("text")
        if not isinstance(text, str):
            raise invalid_request("Invalid '%s': a text block needs 'text'." % (where,), param)
        texts.append(text)
    return "\n".join(texts)


def _image(block: Dict[str, Any], index: int) -> str:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _error(index, "an image block needs a 'source' object.")
    if source.get("type") != "base64":
        raise _error(
            index,
            "only base64 image sources are supported; send the image inline "
            "(source.type 'base64') instead of a URL or file.",
        )
    return base64_image(source.get("data"), "messages[%d]" % (index,), "messages")


def _tool_result(
    block: Dict[str, Any], index: int, call_names: Dict[str, str]
) -> Dict[str, Any]:
    """
    A C{tool_result} block as a native C{tool} message. An error result is
    marked in the text, since native messages have no flag for it.
    """
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise _error(index, "a tool_result block needs a 'tool_use_id' string.")
    content = block.get("content")
    images: List[str] = []
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict):
                raise _error(index, "tool_result content blocks must be objects.")
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif part.get("type") == "image":
                images.append(_image(part, index))
            else:
                raise _error(
                    index, "unsupported tool_result content block %s." % (_kind(part),)
                )
        text = "\n".join(texts)
    else:
        raise _error(index, "tool_result content must be a string or an array of blocks.")
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise _error(index, "tool_result is_error must be a boolean.")
    if is_error:
        text = "Error: " + text
    out: Dict[str, Any] = {"role": "tool", "content": text, "tool_call_id": call_id}
    name = call_names.get(call_id)
    if name is not None:
        out["tool_name"] = name
    if images:
        out["images"] = images
    return out


def _blocks(content: object, index: int) -> Iterator[Tuple[object, Dict[str, Any]]]:
    """
    The C{(type, block)} pairs of a turn's content array; a text block's
    C{text} is checked to be a string.
    """
    if not isinstance(content, list):
        raise _error(index, "content must be a string or an array of content blocks.")
    for block in content:
        if not isinstance(block, dict):
            raise _error(index, "content blocks must be objects.")
        kind = block.get("type")
        if kind == "text" and not isinstance(block.get("text"), str):
            raise _error(index, "a text block needs a 'text' string.")
        yield kind, block


def _user_turn(
    content: object, index: int, call_names: Dict[str, str], native: List[Dict[str, Any]]
) -> int:
    """
    Append a user turn's native messages; returns its prompt characters.
    """
    if isinstance(content, str):
        native.append({"role": "user", "content": content})
        return len(content)
    chars = 0
    texts: List[str] = []
    images: List[str] = []

    def flush() -> None:
        if texts or images:
            out: Dict[str, Any] = {"role": "user", "content": "\n".join(texts)}
            if images:
                out["images"] = list(images)
            native.append(out)
            texts.clear()
            images.clear()

    for kind, block in _blocks(content, index):
        if kind == "text":
            texts.append(block["text"])
            chars += len(block["text"])
        elif kind == "image":
            images.append(_image(block, index))
        elif kind == "tool_result":
            flush()
            result = _tool_result(block, index, call_names)
            chars += len(result["content"])
            native.append(result)
        else:
            raise _error(index, "unsupported content block %s in a user turn." % (_kind(block),))
    flush()
    return chars


def _assistant_turn(
    content: object, index: int, call_names: Dict[str, str], native: List[Dict[str, Any]]
) -> int:
    """
    Append an assistant turn as one native message; returns its characters.
    """
    if isinstance(content, str):
        native.append({"role": "assistant", "content": content})
        return len(content)
    texts: List[str] = []
    thoughts: List[str] = []
    calls: List[Dict[str, Any]] = []
    chars = 0
    for kind, block in _blocks(content, index):
        if kind == "text":
            texts.append(block["text"])
            chars += len(block["text"])
        elif kind == "thinking":
            thinking = block.get("thinking")
            if isinstance(thinking, str) and thinking:
                thoughts.append(thinking)
                chars += len(thinking)
        elif kind == "redacted_thinking":
            # Encrypted by another provider: nothing a local model can read.
            continue
        elif kind == "tool_use":
            call_id = block.get("id")
            name = block.get("name")
            if not isinstance(call_id, str) or not call_id:
                raise _error(index, "a tool_use block needs an 'id' string.")
            if not isinstance(name, str) or not name:
                raise _error(index, "a tool_use block needs a 'name' string.")
            arguments = block.get("input")
            if arguments is None:
                arguments = {}
            if not isinstance(arguments, dict):
                raise _error(index, "tool_use input must be an object.")
            call_names[call_id] = name
            calls.append({"id": call_id, "function": {"name": name, "arguments": arguments}})
        else:
            raise _error(
                index, "unsupported content block %s in an assistant turn." % (_kind(block),)
            )
    out: Dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if thoughts:
        out["thinking"] = "\n".join(thoughts)
    if calls:
        out["tool_calls"] = calls
    native.append(out)
    return chars


def _messages(body: Dict[str, Any]) -> Tuple[List[Dict[str, Any]], int]:
    native: List[Dict[str, Any]] = []
    chars = 0
    system = body.get("system")
    if system is not None:
        text = _text_blocks(system, "system", "system")
        if text:
            native.append({"role": "system", "content": text})
            chars += len(text)
    value = body.get("messages")
    if value is None:
        raise invalid_request("messages: field required", "messages")
    if not isinstance(value, list):
        raise invalid_request(
            "messages: expected an array, not %s" % (type_name(value),), "messages"
        )
    if not value:
        raise invalid_request("messages: at least one message is required", "messages")
    call_names: Dict[str, str] = {}
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise _error(index, "each message must be an object.")
        role = message.get("role")
        content = message.get("content")
        if role == "user":
            chars += _user_turn(content, index, call_names, native)
        elif role == "assistant":
            chars += _assistant_turn(content, index, call_names, native)
        else:
            raise _error(index, "role must be 'user' or 'assistant' (system goes in 'system').")
    return native, chars


def _tools(body: Dict[str, Any]) -> Optional[List[Dict[str, Any]]]:
    choice = optional_object(body, "tool_choice")
    kind = None
    if choice is not None:
        kind = choice.get("type")
        if kind not in _TOOL_CHOICES:
            raise invalid_request(
                "tool_choice.type: use 'auto', 'any', 'tool' or 'none'.", "tool_choice"
            )
        if kind == "tool" and not isinstance(choice.get("name"), str):
            raise invalid_request("tool_choice.name: required for type 'tool'.", "tool_choice")
    tools = native_tools(
        body, (None, "custom"), "input_schema",
        "tools[%d]: server tool %r is not available: this gateway runs only client "
        "tools (name, description, input_schema).",
    )
    return None if kind == "none" else tools


#: C{output_config.effort} -> native C{think} level (C{xhigh} is lowered to
#: C{high}, as Ollama's own layer does).
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "max"}


def _think(body: Dict[str, Any], max_level: bool) -> object:
    """
    The native C{think}: C{thinking.type} decides on/off; otherwise
    C{output_config.effort} gives a level; otherwise the model's default.
    """
    thinking = optional_object(body, "thinking")
    if thinking is None:
        config = optional_object(body, "output_config")
        effort = config.get("effort") if config is not None else None
        if effort is None:
            return None
        level = _EFFORTS.get(effort) if isinstance(effort, str) else None
        if level is None:
            raise invalid_request(
                "output_config.effort: use 'low', 'medium', 'high', 'xhigh' or 'max'.",
                "output_config",
            )
        return "high" if level == "max" and not max_level else level
    kind = thinking.get("type")
    if kind in ("enabled", "adaptive"):
        budget = thinking.get("budget_tokens")
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, int) or budget < 0
        ):
            raise invalid_request(
                "thinking.budget_tokens: expected a non-negative integer.", "thinking"
            )
        return True
    if kind == "disabled":
        return False
    raise invalid_request(
        "thinking.type: use 'enabled', 'adaptive' or 'disabled'.", "thinking"
    )


def _end_user(body: Dict[str, Any]) -> Optional[str]:
    metadata = optional_object(body, "metadata")
    if metadata is None:
        return None
    user = metadata.get("user_id")
    if user is None:
        return None
    if not isinstance(user, str):
        raise invalid_request("metadata.user_id: expected a string.", "metadata")
    return user[:256]


def messages_request(body: object, max_think_level: bool = True) -> AgentRequest:
    """
    Translate a C{/v1/messages} body into an C{/api/chat} request.

    @param body: the decoded JSON body, of any type.
    @param max_think_level: the upstream accepts C{think: "max"}
        (L{qwen_twist.translate.chat.ChatOptions.max_think_level}).
    @raise ApiError: a 400 naming the offending field.
    """
    body = require_object(body)
    model = require_str(body, "model")
    max_tokens = optional_int(body, "max_tokens", minimum=1)
    if max_tokens is None:
        raise invalid_request("max_tokens: field required", "max_tokens")
    messages, chars = _messages(body)
    stream = bool(optional_bool(body, "stream"))
    for refused in ("mcp_servers", "container"):
        if body.get(refused):
            raise invalid_request(
                "%s: not supported by this gateway (Ollama runs only client tools)."
                % (refused,),
                refused,
            )
    options = sampling_options(body, max_tokens)
    stop = stop_list(body, "stop_sequences")
    if stop:
        options["stop"] = stop
    return chat_plan(
        body, model=model, messages=messages, prompt_chars=chars, stream=stream,
        options=options,
        extras={"tools": _tools(body), "think": _think(body, max_think_level)},
        end_user=_end_user(body),
    )


def stop_reason(done_reason: object, had_tool_calls: bool) -> str:
    """
    Anthropic's C{stop_reason}: C{max_tokens} when Ollama hit the cap,
    C{tool_use} after tool calls, else C{end_turn}. Ollama does not say
    whether a stop sequence ended the answer, so C{stop_sequence} is never
    claimed.
    """
    if done_reason == "length":
        return "max_tokens"
    return "tool_use" if had_tool_calls else "end_turn"


def anthropic_usage(native: Dict[str, Any]) -> Dict[str, int]:
    """
    Anthropic's C{usage} from a final native object's counts (absent
    counts are 0, as Ollama omits zero metrics).
    """
    counts = usage(native)
    return {"input_tokens": counts["prompt_tokens"],
            "output_tokens": counts["completion_tokens"]}


def tool_use_block(native_call: Dict[str, Any],
                   new_call_id: Optional[Callable[[], str]] = None) -> Dict[str, Any]:
    """
    One native tool call as a C{tool_use} block (C{input} stays an object).

    @param new_call_id: mints an id for a call that came without one.
    """
    function = native_call.get("function")
    if not isinstance(function, dict):
        function = {}
    name = function.get("name")
    return {
        "type": "tool_use",
        "id": native_call_id(native_call, "toolu_", new_call_id),
        "name": name if isinstance(name, str) else "",
        "input": call_arguments(function.get("arguments")),
    }


def messages_response(native: object, *, model: str, message_id: str) -> Dict[str, Any]:
    """
    Translate a non-streaming C{/api/chat} reply into a C{message}: content
    blocks in the order the model produced them (C{thinking}, C{text},
    C{tool_use}).

    @raise ApiError: 502 if C{native} is not a JSON object.
    """
    thinking, text, native_calls = native_reply(native)
    content: List[Dict[str, Any]] = []
    if thinking:
        # No signature: nothing here is signed, and the SDK's type needs
        # the field.
        content.append({"type": "thinking", "thinking": thinking, "signature": ""})
    if text:
        content.append({"type": "text", "text": text})
    calls = [tool_use_block(c) for c in native_calls]
    content.extend(calls)
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(native.get("done_reason"), bool(calls)),
        "stop_sequence": None,
        "usage": anthropic_usage(native),
    }


def count_tokens(body: object) -> Dict[str, Any]:
    """
    C{/v1/messages/count_tokens}: an B{estimate}, labelled as one. Ollama
    has no tokenizer endpoint, and running the prompt through the model to
    count it would take a GPU slot; so the count is the characters of
    everything the model would read (system, messages, tool definitions)
    divided by L{CHARS_PER_TOKEN}, rounded up. The request is checked
    exactly as C{/v1/messages} checks it (except C{max_tokens}, which the
    API does not require here).
    """
    body = require_object(body)
    probe = dict(body)
    probe["max_tokens"] = 1
    probe.pop("stream", None)
    plan = messages_request(probe)
    chars = plan.prompt_chars
    for tool in plan.payload.get("tools", ()):
        function = tool["function"]
        chars += len(function["name"]) + len(function.get("description", ""))
        chars += len(compact_json(function.get("parameters", {})))
    return {"input_tokens": -(-chars // CHARS_PER_TOKEN)}
