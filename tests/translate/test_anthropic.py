"""
Tests for L{qwen_twist.translate.anthropic}: the Anthropic Messages request
and response mapping (vectors AV-01 to AV-11 of
C{docs/anthropic-responses-protocol.md}).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from qwen_twist import errors
from qwen_twist.translate import anthropic

from tests.translate.agent_vectors import MODEL, anthropic_validate

IMAGE = "iVBORw0KGgo="


def request(**fields):
    body = {"model": MODEL, "max_tokens": 100,
            "messages": [{"role": "user", "content": "Hi"}]}
    body.update(fields)
    return body


class RequestTests(SynchronousTestCase):
    """
    C{/v1/messages} bodies to C{/api/chat} requests.
    """

    def refused(self, body, param):
        with self.assertRaises(errors.ApiError) as caught:
            anthropic.messages_request(body)
        self.assertEqual(caught.exception.status, 400)
        self.assertEqual(caught.exception.param, param)
        self.assertEqual(caught.exception.anthropic_type(), "invalid_request_error")
        return caught.exception

    def test_basic(self):
        """
        AV-01: system string first, max_tokens as num_predict, stream an
        explicit false, the plan carries model and limits.
        """
        plan = anthropic.messages_request(request(system="Be brief."))
        self.assertEqual(plan.payload, {
            "model": MODEL,
            "messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Hi"}],
            "stream": False,
            "options": {"num_predict": 100},
        })
        self.assertEqual((plan.path, plan.model, plan.stream, plan.max_tokens),
                         ("/api/chat", MODEL, False, 100))
        self.assertEqual(plan.prompt_chars, len("Be brief.Hi"))

    def test_system_blocks_and_sampling(self):
        """
        AV-02: system text blocks are joined; stop_sequences, temperature,
        top_p and top_k go to options; metadata.user_id is the end user.
        """
        plan = anthropic.messages_request(request(
            system=[{"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}},
                    {"type": "text", "text": "B"}],
            stop_sequences=["\n\nHuman:"], temperature=0.2, top_p=0.9, top_k=20,
            metadata={"user_id": "u-1"}, stream=True,
        ))
        self.assertEqual(plan.payload["messages"][0], {"role": "system", "content": "A\nB"})
        self.assertEqual(plan.payload["options"], {
            "num_predict": 100, "stop": ["\n\nHuman:"], "temperature": 0.2, "top_p": 0.9,
            "top_k": 20})
        self.assertEqual(plan.end_user, "u-1")
        self.assertIs(plan.payload["stream"], True)

    def test_tool_history(self):
        """
        AV-03: an assistant turn's thinking, text and tool_use become one
        native message; the next user turn's tool_result (with an error
        flag) becomes a named tool message, then the user's text.
        """
        plan = anthropic.messages_request(request(messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Use the tool.", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Oslo"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1",
                 "content": [{"type": "text", "text": "timeout"}], "is_error": True},
                {"type": "text", "text": "Try again?"},
            ]},
        ]))
        self.assertEqual(plan.payload["messages"][1:], [
            {"role": "assistant", "content": "Checking.", "thinking": "Use the tool.",
             "tool_calls": [{"id": "toolu_1", "function": {
                 "name": "get_weather", "arguments": {"city": "Oslo"}}}]},
            {"role": "tool", "content": "Error: timeout", "tool_call_id": "toolu_1",
             "tool_name": "get_weather"},
            {"role": "user", "content": "Try again?"},
        ])

    def test_images(self):
        """
        AV-04: base64 image blocks become bare native images; URL images
        are refused.
        """
        plan = anthropic.messages_request(request(messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": IMAGE}},
            {"type": "text", "text": "What is this?"}]}]))
        self.assertEqual(plan.payload["messages"],
                         [{"role": "user", "content": "What is this?", "images": [IMAGE]}])
        self.refused(request(messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}]),
            "messages")

    def test_tools_and_choice(self):
        """
        AV-05: client tools become native function tools; tool_choice
        none sends none; any and tool still send them (not enforceable);
        server tools are refused.
        """
        tools = [{"name": "f", "description": "d",
                  "input_schema": {"type": "object", "properties": {}}}]
        native = [{"type": "function", "function": {
            "name": "f", "description": "d",
            "parameters": {"type": "object", "properties": {}}}}]
        self.assertEqual(anthropic.messages_request(request(tools=tools)).payload["tools"],
                         native)
        for choice in ({"type": "any"}, {"type": "tool", "name": "f"}, {"type": "auto"}):
            self.assertEqual(
                anthropic.messages_request(request(tools=tools, tool_choice=choice))
                .payload["tools"], native)
        self.assertNotIn("tools", anthropic.messages_request(
            request(tools=tools, tool_choice={"type": "none"})).payload)
        error = self.refused(request(tools=[{"type": "web_search_20250305",
                                             "name": "web_search"}]), "tools")
        self.assertIn("server tool", error.message)

    def test_thinking(self):
        """
        AV-06: thinking enabled/adaptive -> think true, disabled -> false,
        absent -> the model's default; output_config.effort -> a level.
        """
        def think(**fields):
            return anthropic.messages_request(request(**fields)).payload.get("think")

        self.assertIs(think(thinking={"type": "enabled", "budget_tokens": 1024}), True)
        self.assertIs(think(thinking={"type": "adaptive"}), True)
        self.assertIs(think(thinking={"type": "disabled"}), False)
        self.assertIsNone(think())
        self.assertEqual(think(output_config={"effort": "xhigh"}), "high")
        self.assertEqual(think(output_config={"effort": "max"}), "max")
        self.assertEqual(anthropic.messages_request(
            request(output_config={"effort": "max"}), max_think_level=False
        ).payload["think"], "high")
        self.refused(request(thinking={"type": "sometimes"}), "thinking")

    def test_refusals(self):
        """
        AV-07: max_tokens is required; a system role inside messages, an
        unknown block, mcp_servers are 400s naming the field.
        """
        body = request()
        del body["max_tokens"]
        self.assertEqual(self.refused(body, "max_tokens").message, "max_tokens: field required")
        self.refused(request(max_tokens=0), "max_tokens")
        self.refused(request(messages=[{"role": "system", "content": "x"}]), "messages")
        self.refused(request(messages=[]), "messages")
        self.refused(request(messages=[{"role": "user", "content": [
            {"type": "document", "source": {}}]}]), "messages")
        self.refused(request(mcp_servers=[{"url": "https://x"}]), "mcp_servers")
        self.refused(request(metadata={"user_id": 5}), "metadata")


class ResponseTests(SynchronousTestCase):
    """
    Native replies to C{message} objects, validated as the SDK's type.
    """

    def translate(self, native):
        result = anthropic.messages_response(native, model=MODEL, message_id="msg_1")
        anthropic_validate(result, "message")
        return result

    def test_text(self):
        """
        AV-08: text block, end_turn, usage from the counts.
        """
        self.assertEqual(self.translate({
            "message": {"role": "assistant", "content": "Hello!"}, "done": True,
            "done_reason": "stop", "prompt_eval_count": 26, "eval_count": 3,
        }), {
            "id": "msg_1", "type": "message", "role": "assistant", "model": MODEL,
            "content": [{"type": "text", "text": "Hello!"}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 26, "output_tokens": 3},
        })

    def test_thinking_and_tool_use(self):
        """
        AV-09: thinking block first (empty signature), then tool_use with
        the native id and the input object; stop_reason tool_use.
        """
        result = self.translate({
            "message": {"role": "assistant", "content": "", "thinking": "Need data.",
                        "tool_calls": [{"id": "call_a1", "function": {
                            "name": "get_weather", "arguments": {"city": "Tokyo"}}}]},
            "done": True, "done_reason": "stop"})
        self.assertEqual(result["content"], [
            {"type": "thinking", "thinking": "Need data.", "signature": ""},
            {"type": "tool_use", "id": "call_a1", "name": "get_weather",
             "input": {"city": "Tokyo"}},
        ])
        self.assertEqual(result["stop_reason"], "tool_use")
        self.assertEqual(result["usage"], {"input_tokens": 0, "output_tokens": 0})

    def test_max_tokens_and_minted_id(self):
        """
        AV-10: done_reason length -> max_tokens (it wins over tool_use); a
        call without an id gets a toolu_ id.
        """
        result = self.translate({
            "message": {"role": "assistant", "content": "",
                        "tool_calls": [{"function": {"name": "f", "arguments": {}}}]},
            "done": True, "done_reason": "length"})
        self.assertEqual(result["stop_reason"], "max_tokens")
        self.assertRegex(result["content"][0]["id"], "^toolu_[0-9a-f]{24}$")

    def test_not_an_object(self):
        """
        A non-object upstream reply is a 502.
        """
        with self.assertRaises(errors.ApiError) as caught:
            anthropic.messages_response([], model=MODEL, message_id="m")
        self.assertEqual(caught.exception.status, 502)


class CountTokensTests(SynchronousTestCase):
    """
    The labelled estimate of C{/v1/messages/count_tokens}.
    """

    def test_estimate(self):
        """
        AV-11: ceil(characters / 4) over system, messages and tools; no
        max_tokens needed; a bad body is refused as /v1/messages would.
        """
        self.assertEqual(anthropic.count_tokens({
            "model": MODEL, "system": "abcd",
            "messages": [{"role": "user", "content": "x" * 9}]}), {"input_tokens": 4})
        with_tool = anthropic.count_tokens({
            "model": MODEL, "messages": [{"role": "user", "content": "x"}],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}]})
        self.assertEqual(with_tool, {"input_tokens": -(-(1 + 1 + len('{"type":"object"}')) // 4)})
        with self.assertRaises(errors.ApiError):
            anthropic.count_tokens({"model": MODEL, "messages": "x"})
