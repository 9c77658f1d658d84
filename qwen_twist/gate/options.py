# -*- test-case-name: tests.gate.test_options -*-
"""
The option policy: which native options and C{keep_alive} values a request
may send to the shared Ollama server.

Why: Ollama applies many options to the loaded model itself, not just to
one answer. A C{num_ctx} of 99,999,999 or a different C{num_gpu} forces a
reload (every tenant waits), C{num_gpu: 0} runs on the CPU, C{use_mlock}
pins memory, C{keep_alive: 0} unloads the model for everyone and C{-1}
keeps it forever, C{num_predict: -1} generates until the context is full.
So by default only sampling options pass (C{limits.allowed_options}); any
other is refused with a 400 naming it, unless the key holds the
C{options:all} scope. Whatever the key, C{num_ctx} is capped by
C{limits.max_num_ctx} (400 above: lowering it silently would change the
answer), the output cap by C{limits.max_tokens} (lowered: a shorter answer
is still an answer, and C{finish_reason} says C{length}), and
C{keep_alive} is clamped into C{[keep_alive_min, keep_alive_max]}.

L{OptionsHook} is an admission hook (see L{qwen_twist.pipeline}); it edits
the translated request's native payload in place (built fresh per call)
and records the effective output cap in C{ctx.max_tokens}, which the token
budget reserves.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from zope.interface import implementer

from qwen_twist import errors
from qwen_twist.config import Config
from qwen_twist.context import CallContext
from qwen_twist.interfaces import IAdmissionHook, IReconfigurable

#: The key scope that lifts the allow-list (not the caps).
ALL_OPTIONS_SCOPE = "options:all"

_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3,
          "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def duration_seconds(value: object) -> Optional[float]:
    """
    Seconds in a C{keep_alive} value as Ollama reads it: a number of
    seconds, or a Go duration string (C{"5m"}, C{"1h30m"}, C{"-1"} is not
    one, C{"0"} is). L{None} when it is neither (Ollama answers those with
    its own 400).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    sign = 1.0
    if text[:1] in ("+", "-"):
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if text == "0":
        return 0.0
    total, position = 0.0, 0
    for match in _PART.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if position == 0 or position != len(text):
        return None
    return sign * total


@implementer(IAdmissionHook, IReconfigurable)
class OptionsHook:
    """
    Applies the option policy to each generation or embedding call.

    @ivar config: the whole configuration in force (read at call time).
    """

    uses = ("limits.allowed_options", "limits.max_num_ctx", "limits.max_tokens",
            "limits.keep_alive_min", "limits.keep_alive_max")

    def __init__(self, config: Config) -> None:
        self.config = config

    def reconfigure(self, config: Config) -> None:
        self.config = config

    def release(self, ctx: CallContext) -> None:
        """
        Nothing to undo: this hook reserves nothing.
        """

    def admit(self, request: Any, ctx: CallContext, plan: Any) -> None:
        if plan is None or not getattr(plan, "needs_slot", True):
            # Listing, showing, managing models: nothing is generated.
            return
        limits = self.config.limits
        payload = plan.payload
        if not isinstance(payload, dict):
            return
        options = payload.get("options")
        cap = limits.max_tokens
        if options:
            record = ctx.key_record
            if record is None or not record.has_scope(ALL_OPTIONS_SCOPE):
                allowed = limits.allowed_options
                for name in options:
                    if name not in allowed:
                        raise errors.option_not_allowed(name)
            num_ctx = options.get("num_ctx")
            if isinstance(num_ctx, int) and num_ctx > limits.max_num_ctx:
                raise errors.option_out_of_range("num_ctx", limits.max_num_ctx)
            num_predict = options.get("num_predict")
            if isinstance(num_predict, int) and not isinstance(num_predict, bool):
                if num_predict < 0 or num_predict > limits.max_tokens:
                    options["num_predict"] = limits.max_tokens
                elif num_predict > 0:
                    cap = num_predict
        if getattr(plan, "path", None) not in ("/api/embed", "/api/embeddings"):
            # Embeddings generate nothing: their reservation is the prompt.
            ctx.max_tokens = cap
        if "keep_alive" in payload:
            seconds = duration_seconds(payload["keep_alive"])
            if seconds is not None:
                if seconds < 0:
                    seconds = limits.keep_alive_max
                seconds = min(max(seconds, limits.keep_alive_min), limits.keep_alive_max)
                payload["keep_alive"] = int(seconds) if seconds == int(seconds) else seconds
