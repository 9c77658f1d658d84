"""
The Anthropic Messages and OpenAI Responses APIs end to end: the official
C{anthropic} and C{openai} SDKs, over real TLS on loopback, against the
Ollama emulator. Every response and event is read through the SDKs' own
types (and validated against them where the SDK only constructs).
"""

from __future__ import annotations

import json
import os
import time

from twisted.trial.unittest import TestCase

import treq

from qwen_twist.gate.keyfile import add_key

from tests.support import async_test, in_thread, sdk, start_stack

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}


def _keys_file(testcase) -> tuple:
    directory = testcase.mktemp()
    os.makedirs(directory)
    path = os.path.join(directory, "keys.yaml")
    return path, add_key(path, "alice", now=time.time())


class AnthropicMessagesTests(TestCase):
    """
    C{/v1/messages} through the C{anthropic} SDK.
    """

    @async_test
    async def test_create(self) -> None:
        """
        C{messages.create}: a C{Message} with a text block, C{end_turn},
        usage from Ollama's counts; system and max_tokens reach Ollama.
        """
        anthropic = sdk("anthropic")

        stack = await start_stack(self)
        stack.script.push(text="Hello there!", prompt_eval_count=11, thinking="")
        client = stack.anthropic_client()
        message = await in_thread(
            client.messages.create, model="qwen3:8b", max_tokens=64,
            system="Be brief.", messages=[{"role": "user", "content": "Hi"}],
            metadata={"user_id": "user-7"},
        )
        self.assertIsInstance(message, anthropic.types.Message)
        anthropic.types.Message.model_validate(message.to_dict())
        self.assertEqual([b.type for b in message.content], ["text"])
        self.assertEqual(message.content[0].text, "Hello there!")
        self.assertEqual(message.stop_reason, "end_turn")
        self.assertEqual(message.usage.input_tokens, 11)
        self.assertRegex(message.id, "^msg_")
        upstream = stack.record.last("/api/chat").body
        self.assertEqual(upstream["messages"][0], {"role": "system", "content": "Be brief."})
        self.assertEqual(upstream["options"]["num_predict"], 64)
        self.assertIs(upstream["stream"], False)

    @async_test
    async def test_stream_helper_with_thinking(self) -> None:
        """
        C{messages.stream}: thinking then text blocks, accumulated by the
        SDK's helper into the final message; usage arrives with
        C{message_delta}.
        """
        anthropic = sdk("anthropic")

        stack = await start_stack(self)
        stack.script.push(text="Four.", thinking="Two plus two.", prompt_eval_count=9)
        client = stack.anthropic_client()

        def run():
            with client.messages.stream(
                model="qwen3:8b", max_tokens=256,
                thinking={"type": "enabled", "budget_tokens": 128},
                messages=[{"role": "user", "content": "2+2?"}],
            ) as stream:
                events = [event.type for event in stream]
                return events, stream.get_final_message(), stream.get_final_text()

        events, message, text = await in_thread(run)
        anthropic.types.Message.model_validate(message.to_dict())
        self.assertEqual([b.type for b in message.content], ["thinking", "text"])
        self.assertEqual(message.content[0].thinking, "Two plus two.")
        self.assertEqual(text, "Four.")
        self.assertEqual(message.stop_reason, "end_turn")
        self.assertEqual(message.usage.output_tokens > 0, True)
        self.assertIn("message_stop", events)
        self.assertIs(stack.record.last("/api/chat").body["think"], True)

    @async_test
    async def test_tool_use_round_trip(self) -> None:
        """
        A C{tool_use} block comes back with an id and an input object; the
        C{tool_result} sent next reaches Ollama as a C{tool} message named
        after the call, and the model's answer follows.
        """
        stack = await start_stack(self)
        stack.script.push(
            text="", thinking="",
            tool_calls=[{"name": "get_weather", "arguments": {"city": "Tokyo"}}],
        )
        client = stack.anthropic_client()
        tools = [{"name": "get_weather", "description": "Weather",
                  "input_schema": WEATHER_SCHEMA}]
        history = [{"role": "user", "content": "Weather in Tokyo?"}]
        first = await in_thread(
            client.messages.create, model="qwen3:8b", max_tokens=64, tools=tools,
            messages=history,
        )
        self.assertEqual(first.stop_reason, "tool_use")
        [call] = [b for b in first.content if b.type == "tool_use"]
        self.assertEqual(call.input, {"city": "Tokyo"})
        self.assertEqual(call.name, "get_weather")
        stack.script.push(text="Sunny, 22 C.", thinking="")
        history += [
            {"role": "assistant", "content": [b.to_dict() for b in first.content]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": "sunny 22C"}]},
        ]
        second = await in_thread(
            client.messages.create, model="qwen3:8b", max_tokens=64, tools=tools,
            messages=history,
        )
        self.assertEqual(second.content[0].text, "Sunny, 22 C.")
        native = stack.record.last("/api/chat").body["messages"]
        self.assertEqual(native[-2]["tool_calls"][0]["function"],
                         {"name": "get_weather", "arguments": {"city": "Tokyo"}})
        self.assertEqual(native[-1], {"role": "tool", "content": "sunny 22C",
                                      "tool_call_id": call.id, "tool_name": "get_weather"})

    @async_test
    async def test_stream_tool_use(self) -> None:
        """
        A streamed tool call is one C{tool_use} block whose
        C{input_json_delta} the SDK parses into the input object.
        """
        stack = await start_stack(self)
        stack.script.push(
            text="Checking.", thinking="",
            tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}],
        )
        client = stack.anthropic_client()

        def run():
            with client.messages.stream(
                model="qwen3:8b", max_tokens=64,
                tools=[{"name": "get_weather", "input_schema": WEATHER_SCHEMA}],
                messages=[{"role": "user", "content": "Oslo?"}],
            ) as stream:
                return stream.get_final_message()

        message = await in_thread(run)
        self.assertEqual([b.type for b in message.content], ["text", "tool_use"])
        self.assertEqual(message.content[1].input, {"city": "Oslo"})
        self.assertEqual(message.stop_reason, "tool_use")

    @async_test
    async def test_pings_while_model_loads(self) -> None:
        """
        A slow first token (a model loading) is bridged with ping events
        before message_start, which the SDK's stream helper skips; the
        query string Claude Code adds (C{?beta=true}) is accepted.
        """
        stack = await start_stack(self, {"streaming": {"keepalive_interval": 0.1}})
        stack.script.push(text="Loaded.", thinking="", ttft=0.5)
        response = await stack.post("/v1/messages?beta=true", json={
            "model": "qwen3:8b", "max_tokens": 16, "stream": True,
            "messages": [{"role": "user", "content": "x"}]})
        body = (await response.content()).decode("ascii")
        self.assertTrue(body.startswith('event: ping\ndata: {"type":"ping"}\n\n'), body[:80])
        self.assertLess(body.index("event: ping"), body.index("event: message_start"))
        self.assertTrue(body.endswith('event: message_stop\ndata: {"type":"message_stop"}\n\n'))
        stack.script.push(text="Loaded.", thinking="", ttft=0.5)
        client = stack.anthropic_client()

        def run():
            with client.messages.stream(model="qwen3:8b", max_tokens=16,
                                        messages=[{"role": "user", "content": "x"}]) as stream:
                return stream.get_final_text()

        self.assertEqual(await in_thread(run), "Loaded.")

    @async_test
    async def test_mid_stream_failure_raises(self) -> None:
        """
        An upstream error line mid-stream is an C{error} event: the SDK
        raises, and no C{message_stop} is sent.
        """
        anthropic = sdk("anthropic")

        stack = await start_stack(self)
        stack.script.push(text="one two three four", thinking="", error_line_after=2)
        client = stack.anthropic_client()

        def run():
            seen = []
            try:
                with client.messages.stream(
                    model="qwen3:8b", max_tokens=64,
                    messages=[{"role": "user", "content": "count"}],
                ) as stream:
                    for event in stream:
                        seen.append(event.type)
            except anthropic.APIStatusError as e:
                return seen, e
            return seen, None

        seen, error = await in_thread(run)
        self.assertIsNotNone(error)
        self.assertIn("the model server failed during generation", str(error))
        self.assertNotIn("message_stop", seen)

    @async_test
    async def test_errors_in_anthropic_envelope(self) -> None:
        """
        Unknown model -> C{NotFoundError}; missing max_tokens ->
        C{BadRequestError} with Anthropic's C{invalid_request_error}.
        """
        anthropic = sdk("anthropic")

        stack = await start_stack(self)
        client = stack.anthropic_client()
        with self.assertRaises(anthropic.NotFoundError) as caught:
            await in_thread(client.messages.create, model="nope", max_tokens=8,
                            messages=[{"role": "user", "content": "x"}])
        self.assertEqual(caught.exception.body["error"]["type"], "not_found_error")
        response = await stack.post("/v1/messages", json={
            "model": "qwen3:8b", "messages": [{"role": "user", "content": "x"}]})
        self.assertEqual(response.code, 400)
        self.assertEqual(await treq.json_content(response), {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": "max_tokens: field required"},
        })
        # Only the unknown model reached Ollama (which answered the 404).
        self.assertEqual(len(stack.record.for_path("/api/chat")), 1)

    @async_test
    async def test_authentication_error(self) -> None:
        """
        A wrong x-api-key is the SDK's C{AuthenticationError} (Anthropic
        envelope, C{authentication_error}); the right key works.
        """
        anthropic = sdk("anthropic")

        path, key = _keys_file(self)
        stack = await start_stack(self, {"auth": {"required": True, "keys_file": path}})
        bad = stack.anthropic_client(api_key="qg-wrong")
        with self.assertRaises(anthropic.AuthenticationError) as caught:
            await in_thread(bad.messages.create, model="qwen3:8b", max_tokens=8,
                            messages=[{"role": "user", "content": "x"}])
        self.assertEqual(caught.exception.body["error"]["type"], "authentication_error")
        good = stack.anthropic_client(api_key=key)
        message = await in_thread(good.messages.create, model="qwen3:8b", max_tokens=8,
                                  messages=[{"role": "user", "content": "x"}])
        self.assertTrue(message.content)

    @async_test
    async def test_retry_after_429(self) -> None:
        """
        Over the per-key limit the 429 is a C{rate_limit_error}; the SDK
        waits for C{Retry-After} and its retry succeeds.
        """
        anthropic = sdk("anthropic")

        path, key = _keys_file(self)
        stack = await start_stack(self, {
            "auth": {"required": True, "keys_file": path},
            "rate_limits": {"per_key_requests": 1, "per_key_window": 1.0},
        })
        client = stack.anthropic_client(api_key=key, max_retries=2)
        request = dict(model="qwen3:8b", max_tokens=8,
                       messages=[{"role": "user", "content": "x"}])
        await in_thread(client.messages.create, **request)
        with self.assertRaises(anthropic.RateLimitError) as caught:
            await in_thread(stack.anthropic_client(api_key=key).messages.create, **request)
        self.assertEqual(caught.exception.body["error"]["type"], "rate_limit_error")
        await in_thread(time.sleep, 1.1)
        await in_thread(client.messages.create, **request)
        started = time.monotonic()
        raw = await in_thread(client.messages.with_raw_response.create, **request)
        self.assertEqual(raw.http_response.status_code, 200)
        self.assertGreaterEqual(time.monotonic() - started, 0.5)
        self.assertEqual(len(stack.record.for_path("/api/chat")), 3)

    @async_test
    async def test_count_tokens_estimate(self) -> None:
        """
        C{count_tokens} answers an estimate (labelled by a header) without
        calling Ollama.
        """
        stack = await start_stack(self)
        client = stack.anthropic_client()
        raw = await in_thread(
            client.messages.with_raw_response.count_tokens, model="qwen3:8b",
            messages=[{"role": "user", "content": "x" * 400}],
        )
        self.assertEqual(raw.parse().input_tokens, 100)
        self.assertEqual(raw.headers["x-qwengate-token-count"], "estimate")
        self.assertEqual(len(stack.record.for_path("/api/chat")), 0)


class ResponsesTests(TestCase):
    """
    C{/v1/responses} through the C{openai} SDK.
    """

    @async_test
    async def test_create(self) -> None:
        """
        C{responses.create}: reasoning and message items, C{output_text},
        usage; the raw JSON validates as the SDK's C{Response}.
        """
        sdk("openai")
        from openai.types.responses import Response

        stack = await start_stack(self)
        stack.script.push(text="Hello!", thinking="Greet back.", prompt_eval_count=7)
        client = stack.openai_client()
        raw = await in_thread(
            client.responses.with_raw_response.create, model="qwen3:8b",
            instructions="Be brief.", input="Hi", reasoning={"effort": "low"},
            max_output_tokens=50,
        )
        Response.model_validate(json.loads(raw.http_response.text))
        response = raw.parse()
        self.assertEqual(response.status, "completed")
        self.assertEqual([item.type for item in response.output], ["reasoning", "message"])
        self.assertEqual(response.output[0].summary[0].text, "Greet back.")
        self.assertEqual(response.output_text, "Hello!")
        self.assertEqual(response.usage.input_tokens, 7)
        self.assertEqual(response.instructions, "Be brief.")
        upstream = stack.record.last("/api/chat").body
        self.assertEqual(upstream["messages"], [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
        self.assertEqual(upstream["think"], "low")
        self.assertEqual(upstream["options"]["num_predict"], 50)

    @async_test
    async def test_stream(self) -> None:
        """
        C{responses.stream}: the semantic events in order with increasing
        sequence numbers; the helper's final response has the text.
        """
        stack = await start_stack(self)
        stack.script.push(text="Streamed answer.", thinking="Think first.")
        client = stack.openai_client()

        def run():
            with client.responses.stream(model="qwen3:8b", input="Go") as stream:
                events = list(stream)
                return events, stream.get_final_response()

        events, final = await in_thread(run)
        types = [event.type for event in events]
        self.assertEqual(types[:2], ["response.created", "response.in_progress"])
        self.assertEqual(types[-1], "response.completed")
        self.assertIn("response.reasoning_summary_text.delta", types)
        self.assertIn("response.output_text.delta", types)
        numbers = [event.sequence_number for event in events]
        self.assertEqual(numbers, sorted(set(numbers)))
        self.assertEqual(final.output_text, "Streamed answer.")
        self.assertEqual(final.output[0].summary[0].text, "Think first.")

    @async_test
    async def test_function_call_round_trip(self) -> None:
        """
        A C{function_call} item with C{call_id} and JSON C{arguments};
        sending it back with a C{function_call_output} reaches Ollama as a
        tool call and a named C{tool} message. Streamed too.
        """
        stack = await start_stack(self)
        stack.script.push(
            text="", thinking="",
            tool_calls=[{"name": "get_weather", "arguments": {"city": "Lima"}}],
        )
        client = stack.openai_client()
        tools = [{"type": "function", "name": "get_weather", "parameters": WEATHER_SCHEMA}]
        first = await in_thread(client.responses.create, model="qwen3:8b",
                                input="Weather in Lima?", tools=tools)
        [call] = first.output
        self.assertEqual(call.type, "function_call")
        self.assertEqual(json.loads(call.arguments), {"city": "Lima"})
        stack.script.push(text="Cloudy.", thinking="")
        history = [{"role": "user", "content": "Weather in Lima?"},
                   call.to_dict(),
                   {"type": "function_call_output", "call_id": call.call_id,
                    "output": "cloudy 18C"}]

        def run():
            with client.responses.stream(model="qwen3:8b", input=history,
                                         tools=tools) as stream:
                return stream.get_final_response()

        second = await in_thread(run)
        self.assertEqual(second.output_text, "Cloudy.")
        native = stack.record.last("/api/chat").body["messages"]
        self.assertEqual(native[1]["tool_calls"][0]["function"]["arguments"], {"city": "Lima"})
        self.assertEqual(native[2], {"role": "tool", "content": "cloudy 18C",
                                     "tool_call_id": call.call_id, "tool_name": "get_weather"})
        stack.script.push(
            text="", thinking="",
            tool_calls=[{"name": "get_weather", "arguments": {"city": "Quito"}}],
        )

        def run_tools():
            with client.responses.stream(model="qwen3:8b", input="Quito?",
                                         tools=tools) as stream:
                return stream.get_final_response()

        streamed = await in_thread(run_tools)
        self.assertEqual(streamed.output[0].type, "function_call")
        self.assertEqual(json.loads(streamed.output[0].arguments), {"city": "Quito"})

    @async_test
    async def test_parse_json_schema(self) -> None:
        """
        C{responses.parse} with a Pydantic model: C{text.format}
        json_schema reaches Ollama as C{format}; the SDK parses the answer.
        """
        pydantic = sdk("pydantic")

        class Weather(pydantic.BaseModel):
            city: str
            celsius: int

        stack = await start_stack(self)
        stack.script.push(text='{"city": "Rome", "celsius": 25}', thinking="")
        client = stack.openai_client()
        parsed = await in_thread(client.responses.parse, model="qwen3:8b",
                                 input="Rome weather as JSON", text_format=Weather)
        self.assertEqual(parsed.output_parsed, Weather(city="Rome", celsius=25))
        upstream = stack.record.last("/api/chat").body
        self.assertEqual(upstream["format"]["properties"]["celsius"]["type"], "integer")

    @async_test
    async def test_stateful_requests_refused(self) -> None:
        """
        C{previous_response_id} and C{store: true} are 400s that say the
        gateway keeps no state; built-in tools are 400s; nothing reaches
        Ollama.
        """
        openai = sdk("openai")

        stack = await start_stack(self)
        client = stack.openai_client()
        cases = [
            (dict(previous_response_id="resp_1"), "previous_response_id"),
            (dict(store=True), "store"),
            (dict(tools=[{"type": "web_search"}]), "tools"),
        ]
        for extra, param in cases:
            with self.assertRaises(openai.BadRequestError) as caught:
                await in_thread(client.responses.create, model="qwen3:8b", input="x", **extra)
            self.assertEqual(caught.exception.param, param)
            if param != "tools":
                self.assertIn("keeps no state", caught.exception.message)
        self.assertEqual(len(stack.record.for_path("/api/chat")), 0)

    @async_test
    async def test_mid_stream_failure(self) -> None:
        """
        An upstream error mid-stream ends with C{response.failed} carrying
        the message; there is no C{response.completed}.
        """
        stack = await start_stack(self)
        stack.script.push(text="one two three four", thinking="", error_line_after=2)
        client = stack.openai_client()

        def run():
            with client.responses.stream(model="qwen3:8b", input="count") as stream:
                return list(stream)

        events = await in_thread(run)
        self.assertEqual(events[-1].type, "response.failed")
        self.assertIn("the model server failed during generation",
                      events[-1].response.error.message)
        self.assertNotIn("response.completed", [e.type for e in events])
