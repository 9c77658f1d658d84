# -*- test-case-name: tests.translate.test_completions -*-
"""
Legacy C{/v1/completions} to C{/api/generate} and back, without streaming.

The legacy API has one text field per choice and nowhere to put reasoning,
so the request always carries C{think: false} (accepted by every model, and
it stops thinking models from spending the token budget on hidden text) and
C{raw: false}, which templates the prompt as one user turn exactly as Ollama
compat does (reference section 5.2, TV-35). Several prompts are served as
one native call each (one choice per prompt, usage summed); token-array
prompts are decoded when possible (L{qwen_twist.translate.tokens}).
C{echo} and C{best_of}/C{n} above 1 have no native equivalent and are
refused rather than half-served.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from qwen_twist.errors import invalid_request, upstream_protocol_error
from qwen_twist.translate.common import finish_reason, unix_time, usage
from qwen_twist.translate.request import UpstreamRequest
from qwen_twist.translate.tokens import TokenDecoder, decode_token_arrays, is_token_array
from qwen_twist.translate.validate import (
    keep_alive_value,
    native_options,
    optional_bool,
    optional_int,
    optional_str,
    output_cap,
    require_object,
    require_str,
    single_choice,
    stream_flags,
    type_name,
)

#: OpenAI's ceiling for the legacy integer C{logprobs}.
MAX_LOGPROBS = 5

#: Prompts served in one request, each one upstream call in turn.
MAX_PROMPTS = 32


def _prompts(body: Dict[str, Any], decoder: Optional[TokenDecoder]) -> List[str]:
    """
    The prompt texts: a string, an array of strings, or token arrays
    decoded to text (L{qwen_twist.translate.tokens}).
    """
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if prompt is None:
        raise invalid_request("Missing required parameter: 'prompt'.", "prompt")
    if is_token_array(prompt):
        prompts = decode_token_arrays(prompt, "prompt", decoder)
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = prompt
    else:
        raise invalid_request(
            "Invalid 'prompt': expected a string, an array of strings or token "
            "arrays, got %s%s."
            % (
                type_name(prompt),
                " of %d items" % len(prompt) if isinstance(prompt, list) else "",
            ),
            "prompt",
        )
    if len(prompts) > MAX_PROMPTS:
        raise invalid_request(
            "Invalid 'prompt': at most %d prompts per request, got %d."
            % (MAX_PROMPTS, len(prompts)),
            "prompt",
        )
    return prompts


def completion_request(
    body: object, decoder: Optional[TokenDecoder] = None
) -> UpstreamRequest:
    """
    Translate a C{/v1/completions} body into an C{/api/generate} request.

    Several prompts (LangChain's C{OpenAI().batch()}) become one native call
    each, in L{UpstreamRequest.batch}; streaming them is refused (OpenAI
    would interleave the choices of every prompt in one stream).

    @param body: the decoded JSON body, of any type.
    @param decoder: decodes token-array prompts; L{None} refuses them.
    @raise ApiError: a 400 naming the offending field.
    """
    body = require_object(body)
    model = require_str(body, "model")
    prompts = _prompts(body, decoder)
    prompt = prompts[0]
    suffix = optional_str(body, "suffix")
    stream, include_usage = stream_flags(body)
    if stream and len(prompts) > 1:
        raise invalid_request(
            "Invalid 'prompt': several prompts cannot be streamed; send one prompt "
            "per streaming request, or set stream to false.",
            "prompt",
        )
    single_choice(body, "n")
    single_choice(body, "best_of")
    if optional_bool(body, "echo"):
        raise invalid_request("'echo' is not supported by this server.", "echo")
    logprobs = optional_int(body, "logprobs", minimum=0, maximum=MAX_LOGPROBS)
    options = native_options(body, optional_int(body, "max_tokens", minimum=1))
    payload: Dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "stream": stream,
        "raw": False,
        "think": False,
    }
    if suffix:
        payload["suffix"] = suffix
    if options:
        payload["options"] = options
    keep_alive = body.get("keep_alive")
    if keep_alive is not None:
        payload["keep_alive"] = keep_alive_value(keep_alive)
    if logprobs:
        payload["logprobs"] = True
        payload["top_logprobs"] = logprobs
    batch: Tuple[Dict[str, Any], ...] = ()
    if len(prompts) > 1:
        batch = tuple(dict(payload, prompt=text) for text in prompts)
    cap = output_cap(options)
    return UpstreamRequest(
        path="/api/generate",
        payload=payload,
        model=model,
        stream=stream,
        include_usage=include_usage,
        prompt_chars=sum(map(len, prompts)) + (len(suffix) * len(prompts) if suffix else 0)
        + sum(map(len, options.get("stop") or ())),
        max_tokens=cap * len(prompts) if cap else cap,
        batch=batch,
    )


def legacy_logprobs(
    native_logprobs: object, offset: int = 0
) -> Optional[Dict[str, List[Any]]]:
    """
    Native C{logprobs} in the legacy completions shape (C{tokens},
    C{token_logprobs}, C{top_logprobs} as token->logprob maps,
    C{text_offset}), or L{None} when the upstream sent none. Shared with
    the streaming translator.

    @param native_logprobs: the native list of C{{token, logprob,
        top_logprobs?}}.
    @param offset: the C{text_offset} of the first token (a stream passes
        the characters its earlier chunks described).
    """
    if not isinstance(native_logprobs, list) or not native_logprobs:
        return None
    tokens: List[str] = []
    token_logprobs: List[float] = []
    top_logprobs: List[Dict[str, float]] = []
    text_offset: List[int] = []
    for item in native_logprobs:
        if not isinstance(item, dict):
            continue
        token = item.get("token")
        if not isinstance(token, str):
            token = ""
        logprob = item.get("logprob")
        if isinstance(logprob, bool) or not isinstance(logprob, (int, float)):
            logprob = 0.0
        top: Dict[str, float] = {}
        alternatives = item.get("top_logprobs")
        if isinstance(alternatives, list):
            for alternative in alternatives:
                if isinstance(alternative, dict) and isinstance(
                    alternative.get("token"), str
                ):
                    value = alternative.get("logprob")
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        top[alternative["token"]] = value
        tokens.append(token)
        token_logprobs.append(logprob)
        top_logprobs.append(top)
        text_offset.append(offset)
        offset += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": text_offset,
    }


def completion_response(native: dict, *, model: str, completion_id: str, now: int) -> dict:
    """
    Translate a non-streaming C{/api/generate} reply into a
    C{text_completion} (section 6.2); C{thinking} is discarded.

    @param model: the model string the client sent (echoed).
    @param completion_id: from L{qwen_twist.translate.common.completion_id}.
    @param now: the gateway clock, used when C{created_at} is unusable.
    @raise ApiError: 502 if C{native} is not a JSON object.
    """
    if not isinstance(native, dict):
        raise upstream_protocol_error()
    text = native.get("response")
    done_reason = native.get("done_reason")
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": unix_time(native.get("created_at"), now),
        "model": model,
        "choices": [
            {
                "text": text if isinstance(text, str) else "",
                "index": 0,
                "logprobs": legacy_logprobs(native.get("logprobs")),
                "finish_reason": finish_reason(
                    done_reason if isinstance(done_reason, str) else None, False
                ),
            }
        ],
        "usage": usage(native),
    }


def completion_batch_response(
    natives: Sequence[dict], *, model: str, completion_id: str, now: int
) -> dict:
    """
    The answers to several prompts (L{UpstreamRequest.batch}) as one
    C{text_completion}: one choice per prompt, with its C{index}, and the
    usage summed, as OpenAI answers C{prompt: [a, b]}.
    """
    results = [
        completion_response(native, model=model, completion_id=completion_id, now=now)
        for native in natives
    ]
    first = results[0]
    choices = []
    for index, result in enumerate(results):
        choice = result["choices"][0]
        choice["index"] = index
        choices.append(choice)
    first["choices"] = choices
    first["usage"] = {
        key: sum(result["usage"][key] for result in results)
        for key in ("prompt_tokens", "completion_tokens", "total_tokens")
    }
    return first
