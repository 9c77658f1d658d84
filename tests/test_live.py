"""
End-to-end tests over real loopback sockets: the Ollama emulator on one
port, the gateway with real TLS on another, and real clients: treq and the
official C{openai} Python SDK (run in a thread, as a user's program would).
"""

from __future__ import annotations

import json
import socket
import time

from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase

import treq

from tests.support import admin_key, async_test, in_thread, sdk, start_stack

CHAT = {"model": "qwen3:8b", "messages": [{"role": "user", "content": "Hi"}]}


def free_port() -> int:
    """
    A loopback port with nothing listening on it (for "Ollama is down").
    """
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class ChatTests(TestCase):
    """
    C{/v1/chat/completions} end to end.
    """

    @async_test
    async def test_treq_chat(self) -> None:
        """
        A chat completion through treq: the emulator receives the native
        request and the client gets the OpenAI object.
        """
        stack = await start_stack(self)
        stack.script.push(text="Hello there!", prompt_eval_count=11)
        response = await stack.post("/v1/chat/completions", json=CHAT)
        self.assertEqual(response.code, 200)
        body = await treq.json_content(response)
        self.assertEqual(body["object"], "chat.completion")
        self.assertRegex(body["id"], "^chatcmpl-[A-Za-z0-9]{24,}$")
        self.assertEqual(body["choices"][0]["message"]["content"], "Hello there!")
        self.assertEqual(body["choices"][0]["finish_reason"], "stop")
        self.assertEqual(body["usage"]["prompt_tokens"], 11)
        upstream = stack.record.last("/api/chat")
        self.assertEqual(upstream.body["messages"], CHAT["messages"])
        self.assertIs(upstream.body["stream"], False)
        self.assertNotIn("authorization", {k.lower() for k in upstream.headers})

    @async_test
    async def test_sdk_chat_with_thinking_and_tools(self) -> None:
        """
        The official SDK reads content, Qwen3 reasoning and tool calls (with
        C{arguments} as a JSON string).
        """
        stack = await start_stack(self)
        stack.script.push(
            text="", thinking="Need the weather tool.",
            tool_calls=[{"name": "get_weather", "arguments": {"city": "Tokyo"}}],
        )
        client = stack.openai_client()
        tools = [{"type": "function", "function": {
            "name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]
        completion = await in_thread(
            client.chat.completions.create, model="qwen3:8b",
            messages=[{"role": "user", "content": "Weather in Tokyo?"}], tools=tools,
        )
        message = completion.choices[0].message
        self.assertEqual(completion.choices[0].finish_reason, "tool_calls")
        self.assertIsNone(message.content)
        self.assertEqual(message.model_extra.get("reasoning_content"), "Need the weather tool.")
        [call] = message.tool_calls
        self.assertEqual(call.function.name, "get_weather")
        self.assertEqual(json.loads(call.function.arguments), {"city": "Tokyo"})
        self.assertRegex(call.id, "^call_")

    @async_test
    async def test_sdk_unknown_model(self) -> None:
        """
        An unknown model raises C{openai.NotFoundError} with
        C{code == "model_not_found"}.
        """
        openai = sdk("openai")

        stack = await start_stack(self)
        client = stack.openai_client()
        try:
            await in_thread(
                client.chat.completions.create, model="nope",
                messages=[{"role": "user", "content": "x"}],
            )
        except openai.NotFoundError as e:
            self.assertEqual(e.code, "model_not_found")
            self.assertIn("nope", e.message)
        else:
            self.fail("no NotFoundError")

    @async_test
    async def test_sdk_bad_requests(self) -> None:
        """
        Malformed JSON, wrong types, empty messages and C{n: 2} are 400s
        with C{param}, and none reaches Ollama.
        """
        openai = sdk("openai")

        stack = await start_stack(self)
        client = stack.openai_client()
        cases = [
            ({"messages": []}, "messages"),
            ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
            ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
             "temperature"),
        ]
        for extra, param in cases:
            kwargs = {"model": "qwen3:8b"}
            kwargs.update(extra)
            try:
                await in_thread(client.chat.completions.create, **kwargs)
            except openai.BadRequestError as e:
                self.assertEqual(e.param, param)
            else:
                self.fail("no 400 for %r" % (extra,))
        response = await stack.post(
            "/v1/chat/completions", data=b'{"model": "m", "messages": [',
            headers={"Content-Type": "application/json"},
        )
        self.assertEqual(response.code, 400)
        body = await treq.json_content(response)
        self.assertEqual(body["error"]["type"], "invalid_request_error")
        self.assertEqual(stack.record.for_path("/api/chat"), [])

    @async_test
    async def test_ollama_down(self) -> None:
        """
        With nothing listening upstream, chat is a 502 in the OpenAI envelope
        and C{/ready} says 503 while C{/health} stays 200.
        """
        stack = await start_stack(self, upstream_url="http://127.0.0.1:%d" % free_port())
        response = await stack.post("/v1/chat/completions", json=CHAT)
        self.assertEqual(response.code, 502)
        body = await treq.json_content(response)
        self.assertEqual(body["error"]["code"], "upstream_unavailable")
        self.assertEqual(body["error"]["type"], "server_error")
        ready = await stack.get("/ready")
        self.assertEqual(ready.code, 503)
        self.assertEqual((await treq.json_content(ready))["status"], "unavailable")
        health = await stack.get("/health")
        self.assertEqual(health.code, 200)
        self.assertEqual((await treq.json_content(health))["status"], "ok")

    @async_test
    async def test_ready(self) -> None:
        """
        C{/ready} reports the upstream version when Ollama answers (to a
        key with the admin scope).
        """
        config, headers = admin_key(self)
        stack = await start_stack(self, config)
        response = await stack.get("/ready", headers=headers)
        self.assertEqual(response.code, 200)
        body = await treq.json_content(response)
        self.assertEqual(body["upstreams"][0]["version"], "0.33.0")

    @async_test
    async def test_non_streaming_disconnect_frees_upstream(self) -> None:
        """
        A client that gives up on a slow non-streaming completion makes the
        gateway close the upstream request, which the emulator records as
        abandoned.
        """
        stack = await start_stack(self)
        stack.script.push(ttft=30)
        d = stack.post("/v1/chat/completions", json=CHAT)
        await wait_for(lambda: stack.record.for_path("/api/chat"))
        d.cancel()
        d.addErrback(lambda f: None)
        await wait_for(lambda: stack.record.counters()["requests_abandoned"]
                       + stack.record.counters()["streams_abandoned"] >= 1)


class OtherEndpointTests(TestCase):
    """
    Completions, embeddings and models end to end.
    """

    @async_test
    async def test_sdk_completions(self) -> None:
        """
        The legacy completions endpoint through the SDK.
        """
        stack = await start_stack(self)
        stack.script.push(text="Hi!")
        client = stack.openai_client()
        completion = await in_thread(
            client.completions.create, model="qwen2.5:7b", prompt="Say hi", max_tokens=5
        )
        self.assertEqual(completion.choices[0].text, "Hi!")
        self.assertTrue(completion.id.startswith("cmpl-"))
        upstream = stack.record.last("/api/generate").body
        self.assertEqual(upstream["options"], {"num_predict": 5})
        self.assertIs(upstream["think"], False)

    @async_test
    async def test_sdk_completions_several_prompts(self) -> None:
        """
        Several prompts (LangChain's legacy C{OpenAI().batch()}): one
        upstream call per prompt, one choice per prompt with its index,
        usage summed, as the SDK's C{Completion} type reads it.
        """
        stack = await start_stack(self)
        stack.script.push(text="A", prompt_eval_count=2)
        stack.script.push(text="B", prompt_eval_count=3)
        client = stack.openai_client()
        completion = await in_thread(
            client.completions.create, model="qwen2.5:7b", prompt=["a", "b"], max_tokens=5
        )
        self.assertEqual([(c.index, c.text) for c in completion.choices], [(0, "A"), (1, "B")])
        self.assertEqual(completion.usage.prompt_tokens, 5)
        self.assertEqual([b["prompt"] for b in stack.record.bodies("/api/generate")],
                         ["a", "b"])

    @async_test
    async def test_sdk_lone_surrogate(self) -> None:
        """
        A lone UTF-16 surrogate in a message is served (U+FFFD upstream, as
        Ollama's Go decoder does), not a 500.
        """
        stack = await start_stack(self)
        stack.script.push(text="ok")
        response = await stack.post(
            "/v1/chat/completions",
            data=b'{"model":"qwen3:8b","messages":[{"role":"user","content":"cut \\ud83d"}]}',
            headers={"Content-Type": "application/json"},
        )
        body = await treq.content(response)
        self.assertEqual(response.code, 200, body)
        self.assertEqual(stack.record.last("/api/chat").body["messages"][0]["content"],
                         "cut \ufffd")

    @async_test
    async def test_sdk_embeddings_base64_and_float(self) -> None:
        """
        The SDK's default base64 encoding decodes back to the same vector as
        the float encoding.
        """
        stack = await start_stack(self)
        client = stack.openai_client()
        stack.script.push(embeddings=[[0.5, -1.0]])
        b64 = await in_thread(client.embeddings.create, model="nomic-embed-text", input="a")
        stack.script.push(embeddings=[[0.5, -1.0]])
        floats = await in_thread(
            client.embeddings.create, model="nomic-embed-text", input="a",
            encoding_format="float",
        )
        self.assertEqual(list(b64.data[0].embedding), [0.5, -1.0])
        self.assertEqual(floats.data[0].embedding, [0.5, -1.0])
        self.assertEqual(stack.record.last("/api/embed").body["input"], "a")

    @async_test
    async def test_sdk_models(self) -> None:
        """
        List and retrieve, with an id containing slashes (sent as C{%2F} by
        the SDK, and literally by older clients).
        """
        stack = await start_stack(self, script=None)
        client = stack.openai_client()
        listed = await in_thread(client.models.list)
        ids = [m.id for m in listed.data]
        self.assertIn("qwen3:8b", ids)
        model = await in_thread(client.models.retrieve, "qwen3:8b")
        self.assertEqual((model.id, model.owned_by), ("qwen3:8b", "library"))
        response = await stack.get("/v1/models/hf.co/bartowski/Missing-GGUF:Q4_K_M")
        self.assertEqual(response.code, 404)
        self.assertEqual(
            stack.record.last("/api/show").body, {"model": "hf.co/bartowski/Missing-GGUF:Q4_K_M"}
        )
        response = await stack.get("/v1/models/hf.co%2Fbartowski%2FMissing-GGUF:Q4_K_M")
        self.assertEqual(response.code, 404)
        self.assertEqual((await treq.json_content(response))["error"]["code"], "model_not_found")
        self.assertEqual(
            stack.record.last("/api/show").body, {"model": "hf.co/bartowski/Missing-GGUF:Q4_K_M"}
        )


async def wait_for(predicate, timeout: float = 5.0, step: float = 0.01) -> None:
    """
    Poll C{predicate} on the reactor until true (for facts that arrive over
    real sockets); fail after C{timeout} seconds of wall-clock time.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError("condition not met within %s s" % (timeout,))
        await task.deferLater(reactor, step, lambda: None)
