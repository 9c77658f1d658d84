"""
Tests for L{qwen_twist.translate.chat} and L{qwen_twist.translate.request}:
reference sections 5.1 and 6.1, test vectors TV-01 to TV-20. The row-by-row
message rules of section 5.1.1 are in L{tests.translate.test_messages}.
"""

from __future__ import annotations

import json
import re

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.errors import ApiError
from qwen_twist.translate.messages import json_chars
from qwen_twist.translate.chat import (
    ChatOptions,
    chat_request,
    chat_response,
    openai_logprobs,
)
from qwen_twist.translate.request import UpstreamRequest
from qwen_twist.translate.validate import ALLOWED_OPTIONS

USER_HI = [{"role": "user", "content": "Hi"}]
CALL_ID = re.compile(r"^call_[A-Za-z0-9]+$")
NOW = 1_800_000_000

#: Every top-level key chat_request may put in a native body.
NATIVE_CHAT_KEYS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "tools",
        "format",
        "think",
        "options",
        "keep_alive",
        "logprobs",
        "top_logprobs",
    }
)


def upstream(**fields) -> dict:
    """
    The native payload for a chat body made of C{fields}, with a default
    model and a single user message.
    """
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    body.update(fields)
    return chat_request(body).payload


def all_keys(value) -> set:
    """
    Every dict key anywhere inside C{value}.
    """
    keys = set()
    if isinstance(value, dict):
        for key, item in value.items():
            keys.add(key)
            keys |= all_keys(item)
    elif isinstance(value, list):
        for item in value:
            keys |= all_keys(item)
    return keys


class _Rejects:
    def assertRejected(self, body, param, options=ChatOptions()):
        """
        C{chat_request(body)} is a 400 invalid_request_error naming C{param}.
        """
        error = self.assertRaises(ApiError, chat_request, body, options)
        self.assertEqual(
            (error.status, error.type, error.param, error.code),
            (400, "invalid_request_error", param, None),
            (body, error.message),
        )
        return error


class ChatRequestVectorTests(_Rejects, SynchronousTestCase):
    """
    TV-01 to TV-15, one test per vector.
    """

    def test_tv01_minimal(self):
        """
        TV-01: a minimal body becomes a native body with an explicit
        C{stream: false} and no injected options or think.
        """
        request = chat_request({"model": "qwen3:8b", "messages": USER_HI})
        self.assertEqual(
            request.payload,
            {"model": "qwen3:8b", "messages": USER_HI, "stream": False},
        )
        self.assertEqual(request.path, "/api/chat")

    def test_tv02_sampling(self):
        """
        TV-02: sampling fields land in native options, C{stop} as an array.
        """
        request = chat_request(
            {
                "model": "qwen3:8b",
                "messages": USER_HI,
                "temperature": 0.2,
                "top_p": 0.5,
                "seed": 7,
                "stop": "END",
                "max_tokens": 64,
                "frequency_penalty": 0.5,
                "presence_penalty": 0.25,
            }
        )
        self.assertEqual(
            request.payload,
            {
                "model": "qwen3:8b",
                "messages": USER_HI,
                "stream": False,
                "options": {
                    "temperature": 0.2,
                    "top_p": 0.5,
                    "seed": 7,
                    "stop": ["END"],
                    "num_predict": 64,
                    "frequency_penalty": 0.5,
                    "presence_penalty": 0.25,
                },
            },
        )

    def test_tv03_max_completion_tokens_wins(self):
        """
        TV-03: C{max_completion_tokens} beats C{max_tokens}.
        """
        request = chat_request(
            {"model": "m", "messages": [{"role": "user", "content": "x"}],
             "max_tokens": 10, "max_completion_tokens": 20}
        )
        self.assertEqual(request.payload["options"], {"num_predict": 20})
        self.assertEqual(request.max_tokens, 20)

    def test_tv04_developer_and_system_in_place(self):
        """
        TV-04: C{developer} becomes C{system}; system messages keep their
        positions.
        """
        payload = chat_request(
            {
                "model": "m",
                "messages": [
                    {"role": "developer", "content": "Be terse."},
                    {"role": "user", "content": "Hi"},
                    {"role": "system", "content": "Answer in French."},
                ],
            }
        ).payload
        self.assertEqual(
            payload["messages"],
            [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": "Hi"},
                {"role": "system", "content": "Answer in French."},
            ],
        )

    def test_tv05_multipart_user_with_data_url(self):
        """
        TV-05: text parts are joined with a newline into one message and the
        data-URL prefix is stripped from the image.
        """
        payload = chat_request(
            {
                "model": "qwen2.5vl",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is this?"},
                            {"type": "image_url", "image_url": {
                                "url": "data:image/png;base64,iVBORw0KGgo=",
                                "detail": "low"}},
                            {"type": "text", "text": "Be brief."},
                        ],
                    }
                ],
            }
        ).payload
        self.assertEqual(
            payload["messages"],
            [{"role": "user", "content": "What is this?\nBe brief.",
              "images": ["iVBORw0KGgo="]}],
        )

    def test_tv06_remote_image_rejected(self):
        """
        TV-06: an https image URL is a 400 on C{messages} that says image
        URLs are not supported.
        """
        error = self.assertRejected(
            {"model": "m", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]},
            "messages",
        )
        self.assertIn("image URLs are not supported", error.message)

    def test_tv07_tool_history(self):
        """
        TV-07: assistant tool calls get object arguments and C{content:""};
        the tool result gets C{tool_call_id} and the looked-up C{tool_name}.
        """
        payload = chat_request(
            {
                "model": "qwen3:8b",
                "messages": [
                    {"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "content": None, "tool_calls": [
                        {"id": "call_abc", "type": "function", "function": {
                            "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                    {"role": "tool", "tool_call_id": "call_abc", "content": "20C"},
                ],
            }
        ).payload
        self.assertEqual(
            payload["messages"],
            [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "call_abc", "function": {
                        "name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "content": "20C", "tool_call_id": "call_abc",
                 "tool_name": "get_weather"},
            ],
        )

    def test_tv08_invalid_tool_arguments(self):
        """
        TV-08: arguments that are not JSON are a 400 on C{messages}.
        """
        self.assertRejected(
            {"model": "m", "messages": [
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c", "type": "function",
                     "function": {"name": "f", "arguments": "{city:Paris"}}]}]},
            "messages",
        )

    def test_tv09_tool_choice_none(self):
        """
        TV-09: C{tool_choice:"none"} sends no tools; C{"auto"} forwards them
        with C{strict} removed.
        """
        tools = [{"type": "function", "function": {
            "name": "f", "parameters": {"type": "object", "properties": {}}}}]
        self.assertNotIn("tools", upstream(tool_choice="none", tools=tools))
        strict = [{"type": "function", "function": {
            "name": "f", "strict": True, "parameters": {"type": "object", "properties": {}}}}]
        self.assertEqual(upstream(tool_choice="auto", tools=strict)["tools"], tools)

    def test_tv10_json_mode(self):
        """
        TV-10: C{json_object} becomes C{format:"json"}.
        """
        self.assertEqual(
            upstream(response_format={"type": "json_object"})["format"], "json"
        )

    def test_tv11_json_schema(self):
        """
        TV-11: a JSON schema is forwarded as the native C{format} object.
        """
        schema = {"type": "object", "properties": {"age": {"type": "integer"}},
                  "required": ["age"]}
        payload = upstream(response_format={"type": "json_schema", "json_schema": {
            "name": "age", "strict": True, "schema": schema}})
        self.assertEqual(payload["format"], schema)

    def test_tv12_reasoning_table(self):
        """
        TV-12: each row of the reasoning table.
        """
        rows = [
            ({"reasoning_effort": "none"}, False),
            ({"reasoning_effort": "minimal"}, "low"),
            ({"reasoning_effort": "high"}, "high"),
            ({"reasoning": {"effort": "low"}, "reasoning_effort": "high"}, "low"),
        ]
        for fields, think in rows:
            self.assertIs(upstream(**fields)["think"], think, fields)
        self.assertNotIn("think", upstream())
        self.assertRejected(
            {"model": "m", "messages": USER_HI, "reasoning_effort": "extreme"},
            "reasoning_effort",
        )

    def test_tv13_n(self):
        """
        TV-13: C{n:2} is a 400 on C{n}; C{n:1} is accepted and not forwarded.
        """
        self.assertRejected({"model": "m", "messages": USER_HI, "n": 2}, "n")
        self.assertNotIn("n", all_keys(upstream(n=1)))

    def test_tv14_logprobs(self):
        """
        TV-14: logprobs go top-level, not into options; C{top_logprobs} above
        20 is a 400.
        """
        payload = upstream(logprobs=True, top_logprobs=3)
        self.assertEqual((payload["logprobs"], payload["top_logprobs"]), (True, 3))
        self.assertNotIn("options", payload)
        self.assertRejected(
            {"model": "m", "messages": USER_HI, "logprobs": True, "top_logprobs": 21},
            "top_logprobs",
        )

    def test_tv15_dropped_params(self):
        """
        TV-15: unsupported OpenAI parameters appear nowhere upstream.
        """
        payload = upstream(
            user="u1", metadata={"k": "v"}, logit_bias={"50256": -100}, store=True,
            parallel_tool_calls=False, service_tier="auto", prediction={"type": "content"},
            modalities=["text"], verbosity="low", prompt_cache_key="k",
            safety_identifier="s",
        )
        keys = all_keys(payload)
        for name in ("user", "metadata", "logit_bias", "store", "parallel_tool_calls",
                     "service_tier", "prediction", "modalities", "verbosity",
                     "prompt_cache_key", "safety_identifier", "50256", "k"):
            self.assertNotIn(name, keys)


class ChatRequestFieldTests(_Rejects, SynchronousTestCase):
    """
    Top-level field checks and the extensions of section 5.1.
    """

    def test_body_must_be_object(self):
        """
        A non-object body is a 400 with no C{param} (rule R0).
        """
        for body in ([], "x", 3, None):
            self.assertRejected(body, None)

    def test_field_errors(self):
        """
        Every wrongly typed field is a 400 naming that field.
        """
        rows = [
            ({"model": None}, "model"),
            ({"model": ""}, "model"),
            ({"model": 5}, "model"),
            ({"messages": None}, "messages"),
            ({"messages": []}, "messages"),
            ({"messages": {"role": "user"}}, "messages"),
            ({"stream": "true"}, "stream"),
            ({"stream": True, "stream_options": {"include_usage": 1}},
             "stream_options.include_usage"),
            ({"temperature": True}, "temperature"),
            ({"temperature": float("inf")}, "temperature"),
            ({"top_p": "0.5"}, "top_p"),
            ({"seed": 1.5}, "seed"),
            ({"stop": ["a", 1]}, "stop"),
            ({"max_tokens": 0}, "max_tokens"),
            ({"max_completion_tokens": -5}, "max_completion_tokens"),
            ({"max_completion_tokens": "10"}, "max_completion_tokens"),
            ({"n": 0}, "n"),
            ({"n": "2"}, "n"),
            ({"logprobs": "yes"}, "logprobs"),
            ({"top_logprobs": -1}, "top_logprobs"),
            ({"keep_alive": True}, "keep_alive"),
            ({"options": []}, "options"),
            ({"options": {"num_ctx": "big"}}, "options.num_ctx"),
            ({"num_ctx": 0}, "num_ctx"),
            ({"top_k": "5"}, "top_k"),
            ({"tool_choice": "sometimes"}, "tool_choice"),
            ({"tool_choice": 3}, "tool_choice"),
        ]
        for fields, param in rows:
            body = {"model": "m", "messages": USER_HI}
            body.update(fields)
            self.assertRejected(body, param)

    def test_null_means_absent(self):
        """
        Optional fields sent as C{null} are treated as not set.
        """
        payload = upstream(
            temperature=None, top_p=None, max_tokens=None, stop=None, n=None,
            response_format=None, tools=None, tool_choice=None, reasoning_effort=None,
            stream=None, seed=None, logprobs=None, keep_alive=None, options=None,
        )
        self.assertEqual(set(payload), {"model", "messages", "stream"})

    def test_model_echoed_verbatim(self):
        """
        The model string reaches upstream and the request value unchanged.
        """
        request = chat_request({"model": "hf.co/u/r:Q4_K_M", "messages": USER_HI})
        self.assertEqual(request.model, "hf.co/u/r:Q4_K_M")
        self.assertEqual(request.payload["model"], "hf.co/u/r:Q4_K_M")

    def test_extensions_forwarded(self):
        """
        C{keep_alive}, C{options}, C{num_ctx} and C{top_k} are forwarded;
        explicit OpenAI fields win over the same key in C{options}.
        """
        payload = upstream(
            keep_alive="10m", num_ctx=32768, top_k=20,
            options={"repeat_penalty": 1.05, "temperature": 1.5, "num_ctx": 1024},
            temperature=0.7,
        )
        self.assertEqual(payload["keep_alive"], "10m")
        self.assertEqual(
            payload["options"],
            {"repeat_penalty": 1.05, "temperature": 0.7, "num_ctx": 32768, "top_k": 20},
        )

    def test_options_num_predict_is_the_cap(self):
        """
        Without OpenAI caps, a positive C{options.num_predict} is the
        reported output cap; C{-1} (unlimited) is no cap.
        """
        body = {"model": "m", "messages": USER_HI, "options": {"num_predict": 300}}
        self.assertEqual(chat_request(body).max_tokens, 300)
        body["options"] = {"num_predict": -1}
        self.assertIsNone(chat_request(body).max_tokens)
        body["max_tokens"] = 50
        self.assertEqual(chat_request(body).payload["options"], {"num_predict": 50})

    def test_top_logprobs_without_logprobs_not_forwarded(self):
        """
        C{top_logprobs} is only meaningful with C{logprobs:true}; otherwise
        it is checked but not sent.
        """
        payload = upstream(top_logprobs=3)
        self.assertNotIn("top_logprobs", payload)
        self.assertNotIn("logprobs", payload)

    def test_stream_and_usage_flags(self):
        """
        C{stream} is always explicit upstream; C{include_usage} is reported
        only for streams.
        """
        rows = [
            ({}, False, False),
            ({"stream": True}, True, False),
            ({"stream": True, "stream_options": {"include_usage": True}}, True, True),
            ({"stream": False, "stream_options": {"include_usage": True}}, False, False),
        ]
        for fields, stream, include_usage in rows:
            body = {"model": "m", "messages": USER_HI}
            body.update(fields)
            request = chat_request(body)
            self.assertIs(request.payload["stream"], stream)
            self.assertEqual((request.stream, request.include_usage), (stream, include_usage))
            self.assertNotIn("stream_options", request.payload)

    def test_prompt_chars(self):
        """
        C{prompt_chars} counts the text of every message, reasoning, tool
        arguments, tool call ids and names, but not images.
        """
        request = chat_request({"model": "m", "messages": [
            {"role": "system", "content": "abcd"},
            {"role": "user", "content": [
                {"type": "text", "text": "ab"}, {"type": "text", "text": "cd"},
                {"type": "image_url", "image_url": "data:image/png;base64,AAAA"}]},
            {"role": "assistant", "content": "xyz", "reasoning_content": "rr",
             "tool_calls": [{"id": "c", "type": "function",
                             "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "12345"},
        ]})
        # ids and names: "c" and "f" on the call, "c" and "f" on the result.
        self.assertEqual(request.prompt_chars, 4 + 5 + 3 + 2 + 2 + 5 + 4)

    def test_prompt_chars_everything_the_model_reads(self):
        """
        Tool definitions, object arguments, the response schema and stop
        strings count: 200,000 characters hidden there are no longer
        invisible to the prompt limit.
        """
        big = "d" * 50000
        request = chat_request({
            "model": "m",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "id1", "type": "function",
                     "function": {"name": "f", "arguments": {"x": big}}}]},
                {"role": "tool", "tool_call_id": "id1", "content": "ok"},
            ],
            "tools": [{"type": "function", "function": {"name": "f", "description": big}}],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "s", "schema": {"description": big}}},
            "stop": [big[:10000]] * 4,
        })
        self.assertGreater(request.prompt_chars, 190000)

    def test_frozen(self):
        """
        L{UpstreamRequest} is immutable.
        """
        request = chat_request({"model": "m", "messages": USER_HI})
        self.assertIsInstance(request, UpstreamRequest)
        self.assertEqual(request.encoding_format, "float")
        with self.assertRaises(AttributeError):
            request.stream = True


class ChatReasoningTests(_Rejects, SynchronousTestCase):
    """
    C{think} selection beyond the TV-12 table.
    """

    def test_effort_table(self):
        """
        Every OpenAI effort maps as section 5.1 says.
        """
        rows = [
            ("none", False), ("minimal", "low"), ("low", "low"), ("medium", "medium"),
            ("high", "high"), ("xhigh", "max"), ("max", "max"), ("HIGH", "high"),
            ("ultra", "max"),
        ]
        for effort, think in rows:
            self.assertIs(upstream(reasoning_effort=effort)["think"], think, effort)
            self.assertIs(upstream(reasoning={"effort": effort})["think"], think, effort)

    def test_old_upstream_has_no_max(self):
        """
        With C{max_think_level} off, C{xhigh}, C{max} and an explicit
        C{think:"max"} become C{"high"}.
        """
        options = ChatOptions(max_think_level=False)
        for fields in ({"reasoning_effort": "xhigh"}, {"reasoning_effort": "max"},
                       {"reasoning_effort": "ultra"}, {"think": "max"}):
            body = {"model": "m", "messages": USER_HI}
            body.update(fields)
            self.assertEqual(chat_request(body, options).payload["think"], "high")

    def test_precedence(self):
        """
        Explicit C{think} > C{reasoning.effort} > C{reasoning_effort} >
        C{chat_template_kwargs.enable_thinking} > C{enable_thinking}.
        """
        full = {
            "think": "medium",
            "reasoning": {"effort": "low"},
            "reasoning_effort": "high",
            "chat_template_kwargs": {"enable_thinking": False},
            "enable_thinking": True,
        }
        order = ["think", "reasoning", "reasoning_effort", "chat_template_kwargs",
                 "enable_thinking"]
        expected = ["medium", "low", "high", False, True]
        for start in range(len(order)):
            fields = {key: full[key] for key in order[start:]}
            self.assertIs(upstream(**fields)["think"], expected[start], fields)

    def test_explicit_think_values(self):
        """
        The C{think} extension accepts booleans and native levels only.
        """
        for value in (True, False, "low", "medium", "high", "max"):
            self.assertIs(upstream(think=value)["think"], value)
        for value in ("none", "HIGH", 1, [], {}):
            self.assertRejected({"model": "m", "messages": USER_HI, "think": value}, "think")

    def test_empty_effort_is_unset(self):
        """
        An empty effort string is "not set" (as in Ollama compat).
        """
        self.assertNotIn("think", upstream(reasoning_effort=""))

    def test_errors(self):
        """
        Bad reasoning inputs name the exact field, even when a higher-ranked
        field already decided.
        """
        rows = [
            ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
            ({"reasoning": {"effort": 3}}, "reasoning.effort"),
            ({"reasoning": "high"}, "reasoning"),
            ({"reasoning_effort": True}, "reasoning_effort"),
            ({"think": True, "reasoning_effort": "extreme"}, "reasoning_effort"),
            ({"chat_template_kwargs": {"enable_thinking": "no"}},
             "chat_template_kwargs.enable_thinking"),
            ({"chat_template_kwargs": []}, "chat_template_kwargs"),
            ({"enable_thinking": 0}, "enable_thinking"),
        ]
        for fields, param in rows:
            body = {"model": "m", "messages": USER_HI}
            body.update(fields)
            self.assertRejected(body, param)

    def test_template_kwargs_not_forwarded(self):
        """
        Qwen-style switches become C{think} and nothing else.
        """
        payload = upstream(chat_template_kwargs={"enable_thinking": False, "other": 1})
        self.assertIs(payload["think"], False)
        self.assertNotIn("chat_template_kwargs", payload)


class ChatToolsAndFormatTests(_Rejects, SynchronousTestCase):
    """
    C{tools}, C{tool_choice} and C{response_format}.
    """

    def test_tool_choice_values_keep_tools(self):
        """
        C{auto}, C{required} and a named choice all forward the tools
        (the latter two cannot be enforced upstream).
        """
        tools = [{"type": "function", "function": {"name": "f"}}]
        for choice in ("auto", "required", {"type": "function", "function": {"name": "f"}}, None):
            self.assertEqual(upstream(tools=tools, tool_choice=choice)["tools"], tools)

    def test_empty_tools_omitted(self):
        """
        An empty tools array sends no C{tools}.
        """
        self.assertNotIn("tools", upstream(tools=[]))

    def test_tools_share_schemas(self):
        """
        Tool schemas are referenced, not copied, even when C{strict} is
        removed; the client's dict is not modified.
        """
        parameters = {"type": "object", "properties": {"a": {"type": "string"}}}
        function = {"name": "f", "strict": True, "parameters": parameters}
        payload = upstream(tools=[{"type": "function", "function": function}])
        self.assertIs(payload["tools"][0]["function"]["parameters"], parameters)
        self.assertIn("strict", function)

    def test_tool_errors(self):
        """
        Anything but a list of named function tools is a 400 on C{tools}.
        """
        for tools in (
            {"type": "function"},
            ["f"],
            [{"type": "custom", "custom": {"name": "f"}}],
            [{"type": "function"}],
            [{"type": "function", "function": {"description": "no name"}}],
            [{"type": "function", "function": {"name": 3}}],
            [{"type": "function", "function": {"name": "f", "description": 1}}],
            [{"type": "function", "function": {"name": "f", "parameters": "{}"}}],
        ):
            self.assertRejected({"model": "m", "messages": USER_HI, "tools": tools}, "tools")

    def test_tools_checked_even_with_choice_none(self):
        """
        C{tool_choice:"none"} does not hide malformed tools.
        """
        self.assertRejected(
            {"model": "m", "messages": USER_HI, "tools": ["f"], "tool_choice": "none"}, "tools"
        )

    def test_response_format_table(self):
        """
        C{text} sends nothing; C{json_schema} without a schema falls back to
        C{"json"}; the type is case-insensitive.
        """
        rows = [
            ({"type": "text"}, None),
            ({"type": " JSON_OBJECT "}, "json"),
            ({"type": "json_schema"}, "json"),
            ({"type": "json_schema", "json_schema": {"name": "x"}}, "json"),
        ]
        for spec, expected in rows:
            self.assertEqual(upstream(response_format=spec).get("format"), expected, spec)

    def test_response_format_errors(self):
        """
        Unknown types and malformed schemas are 400s on C{response_format}.
        """
        for spec in (
            "json",
            {"type": "xml"},
            {},
            {"type": "json_schema", "json_schema": "s"},
            {"type": "json_schema", "json_schema": {"schema": True}},
        ):
            self.assertRejected(
                {"model": "m", "messages": USER_HI, "response_format": spec},
                "response_format",
            )


def _openclaw_tools():
    names = ["read", "write", "edit", "exec", "process", "browser", "canvas",
             "nodes", "cron", "message", "gateway", "sessions_spawn"]
    tools = []
    for index, name in enumerate(names):
        function = {
            "name": name,
            "description": "Tool %s: %s" % (name, "does a thing. " * 20),
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "Target path"},
                    "timeout": {"type": "number"},
                },
                "required": ["path"],
                "additionalProperties": False,
            },
        }
        if index % 3 == 0:
            function["strict"] = True
        tools.append({"type": "function", "function": function})
    return tools


class OpenClawRequestTests(SynchronousTestCase):
    """
    A realistic chat front-end turn (OpenClaw): ~53 KB, every turn.
    """

    def setUp(self):
        self.system = ("You are a personal assistant running inside OpenClaw. "
                       * 800)[:40000]
        self.tools = _openclaw_tools()
        self.body = {
            "model": "qwen3:32b",
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_completion_tokens": 8192,
            "tool_choice": "auto",
            "tools": self.tools,
            "store": False,
            "messages": [
                {"role": "system", "content": self.system},
                {"role": "user", "content": "What is in my home directory?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_Ab12Cd34", "type": "function", "function": {
                        "name": "exec", "arguments": "{\"command\":\"ls ~\"}"}},
                    {"id": "call_Ef56Gh78", "type": "function", "function": {
                        "name": "read", "arguments": "{\"path\":\"~/notes.md\"}"}},
                ]},
                # OpenClaw sanitises ids: the first no longer matches.
                {"role": "tool", "tool_call_id": "callAb12Cd34", "content": "notes.md\nsrc"},
                {"role": "tool", "tool_call_id": "call_Ef56Gh78", "content": "# Notes"},
                {"role": "assistant", "content": "You have notes.md and src."},
                {"role": "user", "content": [
                    {"type": "text", "text": "Summarise notes.md"},
                    {"type": "text", "text": "[OpenClaw: channel=webchat]"},
                ]},
            ],
        }

    def test_full_payload(self):
        """
        The whole upstream body is exactly the native translation.
        """
        request = chat_request(self.body)
        expected_tools = []
        for tool in self.tools:
            function = {k: v for k, v in tool["function"].items() if k != "strict"}
            expected_tools.append({"type": "function", "function": function})
        self.assertEqual(
            request.payload,
            {
                "model": "qwen3:32b",
                "messages": [
                    {"role": "system", "content": self.system},
                    {"role": "user", "content": "What is in my home directory?"},
                    {"role": "assistant", "content": "", "tool_calls": [
                        {"id": "call_Ab12Cd34", "function": {
                            "name": "exec", "arguments": {"command": "ls ~"}}},
                        {"id": "call_Ef56Gh78", "function": {
                            "name": "read", "arguments": {"path": "~/notes.md"}}},
                    ]},
                    {"role": "tool", "content": "notes.md\nsrc",
                     "tool_call_id": "callAb12Cd34"},
                    {"role": "tool", "content": "# Notes", "tool_call_id": "call_Ef56Gh78",
                     "tool_name": "read"},
                    {"role": "assistant", "content": "You have notes.md and src."},
                    {"role": "user",
                     "content": "Summarise notes.md\n[OpenClaw: channel=webchat]"},
                ],
                "stream": True,
                "tools": expected_tools,
                "options": {"num_predict": 8192},
            },
        )
        self.assertEqual(
            (request.path, request.model, request.stream, request.include_usage,
             request.max_tokens),
            ("/api/chat", "qwen3:32b", True, True, 8192),
        )
        # Tool definitions, call ids and names are read by the model too.
        messages = request.payload["messages"]
        names_and_ids = sum(
            len(call["id"]) + len(call["function"]["name"])
            for m in messages for call in m.get("tool_calls", ())
        ) + sum(len(m.get("tool_call_id", "")) + len(m.get("tool_name", "")) for m in messages)
        self.assertEqual(
            request.prompt_chars,
            40000 + 29 + len('{"command":"ls ~"}') + len('{"path":"~/notes.md"}')
            + 12 + 7 + 26 + len("Summarise notes.md\n[OpenClaw: channel=webchat]")
            + json_chars(expected_tools) + names_and_ids,
        )

    def test_no_copies_of_large_values(self):
        """
        The system prompt and tool schemas are passed by reference, and the
        client's body is left untouched.
        """
        snapshot = json.dumps(self.body, sort_keys=True)
        payload = chat_request(self.body).payload
        self.assertIs(payload["messages"][0]["content"], self.system)
        for sent, original in zip(payload["tools"], self.tools):
            self.assertIs(sent["function"]["parameters"], original["function"]["parameters"])
        self.assertEqual(json.dumps(self.body, sort_keys=True), snapshot)

    def test_body_size_is_realistic(self):
        """
        The fixture is the size the performance budget was set for.
        """
        size = len(json.dumps(self.body))
        self.assertTrue(45_000 < size < 60_000, size)


# Hypothesis strategies. Arbitrary JSON finds crashes; valid bodies (and
# valid bodies with one field corrupted) reach the deep mapping paths that
# arbitrary JSON almost never gets past "model".
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=12)
)
_json = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
_text = st.text(max_size=12)
_finite = lambda low, high: st.floats(min_value=low, max_value=high)  # noqa: E731
_ids = st.sampled_from(["c1", "c2", "c3"])
_text_part = st.builds(lambda t: {"type": "text", "text": t}, _text)
_image_part = st.sampled_from(
    [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
     {"type": "image_url", "image_url": "data:;base64,AAAA"}]
)
_valid_call = st.builds(
    lambda call_id, name, args: {"id": call_id, "type": "function",
                                 "function": {"name": name, "arguments": json.dumps(args)}},
    _ids,
    st.sampled_from(["f", "g"]),
    st.dictionaries(st.text(max_size=4), st.integers() | _text, max_size=3),
)
_valid_message = st.one_of(
    st.builds(lambda role, c: {"role": role, "content": c},
              st.sampled_from(["system", "developer"]),
              _text | st.lists(_text_part, max_size=3)),
    st.builds(lambda c, name: {"role": "user", "content": c, "name": name},
              _text | st.lists(_text_part | _image_part, max_size=4), _text),
    st.builds(lambda c, calls, r: {"role": "assistant", "content": c, "tool_calls": calls,
                                   "reasoning_content": r},
              st.none() | _text, st.lists(_valid_call, max_size=3), _text),
    st.builds(lambda i, c: {"role": "tool", "tool_call_id": i, "content": c},
              _ids | st.just("rewritten"), _text),
)
_valid_options = st.fixed_dictionaries(
    {},
    optional={
        **{key: st.integers(min_value=-1, max_value=10**6) for key in ("num_ctx", "num_keep", "top_k")},
        **{key: _finite(0, 2) for key in ("min_p", "repeat_penalty", "temperature")},
        "use_mmap": st.booleans(),
        "stop": st.lists(_text, max_size=3),
    },
)
_effort_values = st.sampled_from(
    ["none", "minimal", "low", "medium", "high", "xhigh", "max", "ultra"]
)
_valid_fields = {
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "max_tokens": st.integers(min_value=1, max_value=10**6),
    "max_completion_tokens": st.integers(min_value=1, max_value=10**6),
    "temperature": _finite(0, 2),
    "top_p": _finite(0, 1),
    "seed": st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "stop": _text | st.lists(_text, max_size=4),
    "frequency_penalty": _finite(-2, 2),
    "presence_penalty": _finite(-2, 2),
    "response_format": st.sampled_from(
        [{"type": "text"}, {"type": "json_object"},
         {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}]),
    "tools": st.lists(st.builds(
        lambda name, strict: {"type": "function", "function": {
            "name": name, "strict": strict, "parameters": {"type": "object"}}},
        st.text(min_size=1, max_size=5), st.booleans()), max_size=3),
    "tool_choice": st.sampled_from(["none", "auto", "required"]),
    "reasoning": st.fixed_dictionaries({}, optional={"effort": _effort_values}),
    "reasoning_effort": _effort_values,
    "think": st.sampled_from([True, False, "low", "medium", "high", "max"]),
    "chat_template_kwargs": st.fixed_dictionaries({}, optional={"enable_thinking": st.booleans()}),
    "enable_thinking": st.booleans(),
    "logprobs": st.booleans(),
    "top_logprobs": st.integers(min_value=0, max_value=20),
    "n": st.just(1),
    "keep_alive": st.sampled_from(["5m", "0", -1, 300]),
    "options": _valid_options,
    "num_ctx": st.integers(min_value=1, max_value=10**6),
    "top_k": st.integers(min_value=0, max_value=100),
    "user": _json,
    "metadata": _json,
}
_valid_bodies = st.fixed_dictionaries(
    {"model": st.text(min_size=1, max_size=10),
     "messages": st.lists(_valid_message, min_size=1, max_size=5)},
    optional=_valid_fields,
)
#: Fields whose every value is accepted (dropped ones) cannot be corrupted.
_CHECKED_FIELDS = sorted(set(_valid_fields) - {"user", "metadata"} | {"model", "messages"})


def _check_payload(test, request):
    """
    The invariants every successful translation keeps.
    """
    payload = request.payload
    test.assertLessEqual(set(payload), NATIVE_CHAT_KEYS)
    test.assertIsInstance(payload["stream"], bool)
    test.assertIs(payload["stream"], request.stream)
    test.assertLessEqual(set(payload.get("options", {"temperature": 0})), ALLOWED_OPTIONS)
    test.assertNotEqual(payload.get("options"), {})
    if "stop" in payload.get("options", {}):
        test.assertIsInstance(payload["options"]["stop"], list)
    for message in payload["messages"]:
        test.assertIn(message["role"], ("system", "user", "assistant", "tool"))
        test.assertIsInstance(message["content"], str)
        for call in message.get("tool_calls", ()):
            test.assertIsInstance(call["function"]["arguments"], dict)
    test.assertIsInstance(request.prompt_chars, int)
    json.dumps(payload)


class ChatRequestPropertyTests(SynchronousTestCase):
    """
    Properties over generated bodies.
    """

    @settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @given(_json | st.fixed_dictionaries({"model": st.just("m")}, optional={
        "messages": st.lists(_json, max_size=3) | _json, **{
            key: _json for key in _valid_fields}}))
    def test_arbitrary_json_only_api_errors(self, body):
        """
        Whatever JSON arrives, L{chat_request} either raises a 400
        L{ApiError} or returns a clean payload; nothing else escapes.
        """
        try:
            request = chat_request(body)
        except ApiError as error:
            self.assertEqual(error.status, 400)
            self.assertTrue(error.param is None or isinstance(error.param, str))
            return
        _check_payload(self, request)

    @settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @given(_valid_bodies)
    def test_valid_bodies_translate_cleanly(self, body):
        """
        A body made only of valid values always translates, every option
        key is a native one, C{stream} is explicit and no dropped OpenAI
        field reaches the payload.
        """
        request = chat_request(body)
        _check_payload(self, request)
        self.assertNotIn("user", request.payload)
        self.assertNotIn("n", request.payload)
        self.assertNotIn("stream_options", request.payload)

    @settings(max_examples=400, deadline=None, derandomize=True, database=None)
    @given(_valid_bodies, st.sampled_from(_CHECKED_FIELDS), _json)
    def test_one_bad_field_is_named(self, body, field, value):
        """
        Corrupting one field of a valid body either still translates (the
        value happened to be acceptable) or fails with C{param} naming that
        field (or a part of it).
        """
        body = dict(body, **{field: value})
        try:
            request = chat_request(body)
        except ApiError as error:
            self.assertEqual(error.status, 400)
            self.assertTrue(
                error.param == field or (error.param or "").startswith(field + "."),
                (field, value, error.param, error.message),
            )
            return
        _check_payload(self, request)


class ChatResponseTests(SynchronousTestCase):
    """
    Section 6.1, TV-16 to TV-20.
    """

    def respond(self, native, **kwargs):
        kwargs.setdefault("model", "qwen3:8b")
        kwargs.setdefault("completion_id", "chatcmpl-0123456789abcdef0123456789abcdef")
        kwargs.setdefault("now", NOW)
        return chat_response(native, **kwargs)

    def test_tv16_basic(self):
        """
        TV-16: the complete response object.
        """
        native = {"model": "qwen3:8b", "created_at": "2025-07-07T20:22:19.184789Z",
                  "message": {"role": "assistant", "content": "Hello!"}, "done": True,
                  "done_reason": "stop", "total_duration": 5000000,
                  "prompt_eval_count": 26, "eval_count": 3}
        self.assertEqual(
            self.respond(native),
            {"id": "chatcmpl-0123456789abcdef0123456789abcdef",
             "object": "chat.completion", "created": 1751919739, "model": "qwen3:8b",
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"},
                          "logprobs": None, "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 26, "completion_tokens": 3, "total_tokens": 29}},
        )

    def test_tv17_length(self):
        """
        TV-17: C{done_reason:"length"} is C{finish_reason:"length"}.
        """
        choice = self.respond({"message": {"content": "Once upon"},
                               "done_reason": "length"})["choices"][0]
        self.assertEqual((choice["finish_reason"], choice["message"]["content"]),
                         ("length", "Once upon"))

    def test_tv18_tool_call(self):
        """
        TV-18: tool calls with null content, string arguments and
        C{finish_reason:"tool_calls"}.
        """
        native = {"model": "qwen3:8b", "created_at": "2025-01-01T00:00:00Z",
                  "message": {"role": "assistant", "content": "", "tool_calls": [
                      {"id": "call_k3x9a1b2", "function": {
                          "index": 0, "name": "get_weather", "arguments": {"city": "Tokyo"}}}]},
                  "done": True, "done_reason": "stop", "prompt_eval_count": 169,
                  "eval_count": 18}
        response = self.respond(native)
        self.assertEqual(response["created"], 1735689600)
        self.assertEqual(
            response["choices"],
            [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_k3x9a1b2", "type": "function", "function": {
                    "name": "get_weather", "arguments": "{\"city\":\"Tokyo\"}"}}]},
              "logprobs": None, "finish_reason": "tool_calls"}],
        )
        self.assertEqual(
            json.loads(response["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]),
            {"city": "Tokyo"},
        )
        self.assertEqual(response["usage"],
                         {"prompt_tokens": 169, "completion_tokens": 18, "total_tokens": 187})

    def test_tv18_missing_id(self):
        """
        TV-18 variant: a call without an id gets a minted C{call_} id, from
        the injected factory.
        """
        native = {"message": {"content": "", "tool_calls": [
            {"function": {"name": "f", "arguments": {}}}]}, "done_reason": "stop"}
        call = self.respond(native)["choices"][0]["message"]["tool_calls"][0]
        self.assertRegex(call["id"], CALL_ID)
        pinned = self.respond(native, new_call_id=lambda: "call_fixed")
        self.assertEqual(pinned["choices"][0]["message"]["tool_calls"][0]["id"], "call_fixed")

    def test_tv19_thinking(self):
        """
        TV-19: native thinking is C{reasoning_content}.
        """
        message = self.respond({"message": {"role": "assistant", "content": "4",
                                            "thinking": "2+2=4"}})["choices"][0]["message"]
        self.assertEqual(message,
                         {"role": "assistant", "content": "4", "reasoning_content": "2+2=4"})

    def test_tv20_missing_counts(self):
        """
        TV-20: a missing C{prompt_eval_count} is 0.
        """
        self.assertEqual(self.respond({"message": {"content": "x"}, "eval_count": 5})["usage"],
                         {"prompt_tokens": 0, "completion_tokens": 5, "total_tokens": 5})

    def test_reasoning_field_choices(self):
        """
        E14: the reasoning key is configurable, including both and none;
        empty thinking adds no key at all.
        """
        native = {"message": {"content": "4", "thinking": "t"}}
        rows = [
            ("reasoning_content", {"reasoning_content": "t"}),
            ("reasoning", {"reasoning": "t"}),
            ("both", {"reasoning_content": "t", "reasoning": "t"}),
            ("none", {}),
        ]
        for field, extra in rows:
            message = self.respond(native, options=ChatOptions(reasoning_field=field))[
                "choices"][0]["message"]
            expected = {"role": "assistant", "content": "4"}
            expected.update(extra)
            self.assertEqual(message, expected, field)
        message = self.respond({"message": {"content": "4", "thinking": ""}})["choices"][0]["message"]
        self.assertEqual(message, {"role": "assistant", "content": "4"})

    def test_reasoning_field_validated(self):
        """
        An unknown reasoning field name is a configuration error.
        """
        self.assertRaises(ValueError, ChatOptions, reasoning_field="thoughts")

    def test_finish_reasons_stay_in_enum(self):
        """
        E4: C{load}, C{unload}, empty, missing and odd values never leak.
        """
        for reason in ("load", "unload", "", None, 7, "weird"):
            choice = self.respond({"message": {"content": ""}, "done_reason": reason})["choices"][0]
            self.assertEqual(choice["finish_reason"], "stop", reason)
        choice = self.respond({"message": {"content": "", "tool_calls": [
            {"function": {"name": "f"}}]}, "done_reason": "length"})["choices"][0]
        self.assertEqual(choice["finish_reason"], "length")

    def test_content_with_tool_calls_kept(self):
        """
        Non-empty content next to tool calls stays a string.
        """
        message = self.respond({"message": {"content": "Let me check.", "tool_calls": [
            {"id": "c", "function": {"name": "f", "arguments": {}}}]}})["choices"][0]["message"]
        self.assertEqual(message["content"], "Let me check.")

    def test_missing_message_and_empty_content(self):
        """
        A final object without C{message} gives C{content:""} (E1), never null.
        """
        message = self.respond({"done": True})["choices"][0]["message"]
        self.assertEqual(message, {"role": "assistant", "content": ""})

    def test_created_fallback_and_model_echo(self):
        """
        An unparseable C{created_at} uses the gateway clock; C{model} is the
        client's string even if upstream reports another.
        """
        response = self.respond({"model": "qwen3:8b-q4", "created_at": "yesterday",
                                 "message": {"content": "x"}}, model="alias")
        self.assertEqual((response["created"], response["model"]), (NOW, "alias"))
        self.assertNotIn("system_fingerprint", response)

    def test_cached_tokens(self):
        """
        C{prompt_eval_cached_count} becomes C{prompt_tokens_details}.
        """
        usage = self.respond({"prompt_eval_count": 10, "eval_count": 1,
                              "prompt_eval_cached_count": 8})["usage"]
        self.assertEqual(usage["prompt_tokens_details"], {"cached_tokens": 8})

    def test_logprobs(self):
        """
        Native logprobs become OpenAI's C{logprobs.content}, with
        C{top_logprobs: []} and UTF-8 C{bytes} filled in when missing.
        """
        native = {"message": {"content": "Hé"}, "logprobs": [
            {"token": "H", "logprob": -0.1, "bytes": [72],
             "top_logprobs": [{"token": "H", "logprob": -0.1, "bytes": [72]},
                              {"token": "h", "logprob": -2.5}]},
            {"token": "é", "logprob": -0.3},
        ]}
        self.assertEqual(
            self.respond(native)["choices"][0]["logprobs"],
            {"content": [
                {"token": "H", "logprob": -0.1, "bytes": [72], "top_logprobs": [
                    {"token": "H", "logprob": -0.1, "bytes": [72]},
                    {"token": "h", "logprob": -2.5, "bytes": [104]}]},
                {"token": "é", "logprob": -0.3, "bytes": [195, 169], "top_logprobs": []},
            ]},
        )

    def test_logprobs_absent(self):
        """
        E11: no or empty native logprobs is C{logprobs: null}.
        """
        for value in (None, [], "junk", {}):
            self.assertIsNone(openai_logprobs(value))

    def test_non_object_reply(self):
        """
        A reply that is not a JSON object is a 502 upstream protocol error.
        """
        error = self.assertRaises(ApiError, self.respond, ["not", "an", "object"])
        self.assertEqual((error.status, error.code), (502, "upstream_invalid_response"))

    def test_ignores_odd_native_shapes(self):
        """
        Non-string content/thinking and non-list tool calls are treated as
        absent rather than crashing.
        """
        message = self.respond({"message": {"content": 5, "thinking": [],
                                            "tool_calls": "x"}})["choices"][0]["message"]
        self.assertEqual(message, {"role": "assistant", "content": ""})
