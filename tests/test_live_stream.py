"""
Streaming end to end over real sockets: the emulator streams NDJSON, the
gateway relays SSE over TLS, and the official C{openai} SDK (or a raw TLS
socket, for the slow-reader test) consumes it.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time

from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase

from tests.support import async_test, in_thread, sdk, start_stack
from tests.test_live import wait_for
from tests.web.test_relay import events
from tests.web.helpers import parse_response

TOOLS = [
    {"type": "function", "function": {"name": "get_weather",
                                      "parameters": {"type": "object", "properties": {}}}},
    {"type": "function", "function": {"name": "get_time",
                                      "parameters": {"type": "object", "properties": {}}}},
]
MESSAGES = [{"role": "user", "content": "Weather and time in Tokyo?"}]


def gateway_buffered_bytes(stack) -> int:
    """
    Bytes the gateway process holds for its clients in user space: the
    write buffers of the TCP transports under its TLS connections (private
    attributes of Twisted's FileDescriptor, read only by this test).
    """
    total = 0
    for protocol in list(stack.service.factory.protocols):
        tcp = protocol.transport
        total += len(getattr(tcp, "dataBuffer", b"")) + getattr(tcp, "_tempDataLen", 0)
    return total


async def paused_peak(stack) -> int:
    """
    Once the emulator was paused, the most bytes the gateway buffered for
    its clients over half a second.
    """
    await wait_for(lambda: stack.record.counters()["pauses"] >= 1, timeout=20)
    peak = 0
    for _ in range(50):
        peak = max(peak, gateway_buffered_bytes(stack))
        await task.deferLater(reactor, 0.01, lambda: None)
    return peak


#: What a slow reader's answer may make the gateway hold at most (the bound
#: stated in qwen_twist/web/relay.py is "well under 1 MiB" per stream).
SLOW_READER_BOUND = 1024 * 1024


async def slow_read(testcase, stack, path: bytes, body: bytes, headers: bytes = b"") -> tuple:
    """
    Script a ~16 MB answer, POST C{body} to C{path} from a client that
    reads nothing at first; check the emulator got paused with the
    gateway's buffers under L{SLOW_READER_BOUND} and nothing completed;
    then read it all.

    @return: the parsed response and the answer text it should carry.
    """
    word = "x" * 190 + " "
    tokens = 80000
    stack.script.push(text=word * tokens, tokens=tokens)
    request = (b"POST %s HTTP/1.1\r\nHost: x\r\n%s"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n"
               b"Connection: close\r\n\r\n" % (path, headers, len(body)) + body)
    release = threading.Event()
    result: dict = {}
    reading = in_thread(stalled_reader, stack, request, release, result)
    testcase.assertLess(await paused_peak(stack), SLOW_READER_BOUND)
    testcase.assertEqual(stack.record.counters()["streams_completed"], 0)
    release.set()
    await reading
    return parse_response(result["raw"]), word * tokens


def stalled_reader(stack, request: bytes, release: threading.Event, result: dict) -> None:
    """
    A client that sends C{request} over TLS with a small receive buffer,
    reads nothing until C{release} is set, then reads the whole response
    into C{result["raw"]} (run it in a thread).
    """
    port = int(stack.url.rsplit(":", 1)[1])
    context = ssl.create_default_context(cafile=stack.cafile)
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    raw.connect(("127.0.0.1", port))
    sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
    sock.sendall(request)
    release.wait(30)
    chunks = []
    while True:
        data = sock.recv(1 << 16)
        if not data:
            break
        chunks.append(data)
    sock.close()
    result["raw"] = b"".join(chunks)


class SdkStreamTests(TestCase):
    """
    The SDK's two streaming interfaces reassemble what Ollama produced.
    """

    @async_test
    async def test_create_stream(self) -> None:
        """
        C{chat.completions.create(stream=True)} yields reasoning, content,
        two tool calls (indices 0 and 1) and the usage chunk.
        """
        stack = await start_stack(self)
        stack.script.push(
            text="Sunny and noon.", thinking="Two tools needed.", prompt_eval_count=9,
            tool_calls=[{"name": "get_weather", "arguments": {"city": "Tokyo"}},
                        {"name": "get_time", "arguments": {"tz": "JST"}}],
        )
        client = stack.openai_client()

        def consume():
            stream = client.chat.completions.create(
                model="qwen3:8b", messages=MESSAGES, tools=TOOLS, stream=True,
                stream_options={"include_usage": True},
            )
            content, reasoning, calls, usage, finish = "", "", {}, None, None
            for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices:
                    delta = choice.delta
                    content += delta.content or ""
                    reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
                    for call in delta.tool_calls or []:
                        calls[call.index] = (call.id, call.function.name,
                                             json.loads(call.function.arguments))
                    finish = choice.finish_reason or finish
            return content, reasoning, calls, usage, finish

        content, reasoning, calls, usage, finish = await in_thread(consume)
        self.assertEqual(content, "Sunny and noon.")
        self.assertEqual(reasoning, "Two tools needed.")
        self.assertEqual(sorted(calls), [0, 1])
        self.assertEqual(calls[0][1:], ("get_weather", {"city": "Tokyo"}))
        self.assertEqual(calls[1][1:], ("get_time", {"tz": "JST"}))
        self.assertEqual(finish, "tool_calls")
        self.assertEqual(usage.prompt_tokens, 9)
        self.assertGreater(usage.completion_tokens, 0)
        self.assertIs(stack.record.last("/api/chat").body["stream"], True)

    @async_test
    async def test_stream_helper(self) -> None:
        """
        The SDK's C{.stream()} helper accumulates the deltas into a final
        completion with distinct tool calls and the reasoning text.
        """
        stack = await start_stack(self)
        stack.script.push(
            text="", thinking="Let me think.",
            tool_calls=[{"name": "get_weather", "arguments": {"city": "Tokyo"}},
                        {"name": "get_time", "arguments": {"tz": "JST"}}],
        )
        client = stack.openai_client()

        def consume():
            with client.chat.completions.stream(
                model="qwen3:8b", messages=MESSAGES, tools=TOOLS,
                stream_options={"include_usage": True},
            ) as stream:
                for _ in stream:
                    pass
                return stream.get_final_completion()

        final = await in_thread(consume)
        message = final.choices[0].message
        self.assertEqual([c.function.name for c in message.tool_calls],
                         ["get_weather", "get_time"])
        self.assertEqual(len({c.id for c in message.tool_calls}), 2)
        self.assertEqual(message.role, "assistant")
        self.assertEqual(final.choices[0].finish_reason, "tool_calls")
        self.assertIsNotNone(final.usage)

    @async_test
    async def test_midstream_death_raises(self) -> None:
        """
        Ollama dying mid-stream makes the SDK raise C{openai.APIError}
        (not a silently shorter answer).
        """
        openai = sdk("openai")

        stack = await start_stack(self)
        stack.script.push(text="one two three four five six", thinking="", close_after=2)
        client = stack.openai_client()

        def consume():
            received = ""
            try:
                for chunk in client.chat.completions.create(
                        model="qwen3:8b", messages=MESSAGES, stream=True):
                    for choice in chunk.choices:
                        received += choice.delta.content or ""
            except openai.APIError as e:
                return received, e
            return received, None

        received, error = await in_thread(consume)
        self.assertIsNotNone(error, "the truncated stream ended without an error")
        self.assertIn("closed the stream before completion", error.message)
        self.assertTrue(received)

    @async_test
    async def test_error_line_raises(self) -> None:
        """
        An Ollama C{{"error": ...}} line mid-stream becomes an SDK
        C{APIError} with Ollama's message.
        """
        openai = sdk("openai")

        stack = await start_stack(self)
        stack.script.push(text="a b c d", error_line_after=1, error="model runner crashed")
        client = stack.openai_client()

        def consume():
            try:
                for _ in client.chat.completions.create(
                        model="qwen3:8b", messages=MESSAGES, stream=True):
                    pass
            except openai.APIError as e:
                return e
            return None

        error = await in_thread(consume)
        self.assertIsNotNone(error)
        self.assertEqual(error.message, "the model server failed during generation")

    @async_test
    async def test_legacy_completion_stream(self) -> None:
        """
        C{/v1/completions} streams C{text_completion} chunks the SDK reads.
        """
        stack = await start_stack(self)
        stack.script.push(text="Hi there!")
        client = stack.openai_client()

        def consume():
            return "".join(
                choice.text for chunk in client.completions.create(
                    model="qwen2.5:7b", prompt="Say hi", stream=True)
                for choice in chunk.choices)

        self.assertEqual(await in_thread(consume), "Hi there!")


class DisconnectTests(TestCase):
    """
    A client leaving mid-stream stops Ollama's generation.
    """

    @async_test
    async def test_disconnect_abandons_upstream(self) -> None:
        """
        TV-30: the client closes after two events; within 1 s the emulator
        sees its stream abandoned (connection closed before completion).
        """
        stack = await start_stack(self)
        stack.script.push(text=" ".join(["word"] * 100), tokens_per_second=10)
        client = stack.openai_client()
        done = threading.Event()

        def consume():
            stream = client.chat.completions.create(
                model="qwen3:8b", messages=MESSAGES, stream=True)
            for i, _ in enumerate(stream):
                if i == 1:
                    break
            stream.close()
            done.set()

        await in_thread(consume)
        closed_at = time.monotonic()
        await wait_for(lambda: stack.record.counters()["streams_abandoned"] >= 1, timeout=1.0)
        self.assertLess(time.monotonic() - closed_at, 1.0)
        self.assertEqual(stack.record.counters()["streams_completed"], 0)


class SlowReaderTests(TestCase):
    """
    Backpressure: a client that stops reading makes the gateway stop
    reading from Ollama, and the gateway's buffers stay bounded.
    """

    @async_test
    async def test_slow_reader_bounded(self) -> None:
        """
        While a client reads nothing, the emulator produces ~16 MB; the
        emulator gets paused, the gateway's buffered bytes stay under the
        bound, and once the client reads the whole answer arrives intact.
        """
        stack = await start_stack(self)
        body = json.dumps({"model": "qwen3:8b", "messages": MESSAGES,
                           "stream": True}).encode()
        response, expected = await slow_read(self, stack, b"/v1/chat/completions", body)
        self.assertTrue(response.complete)
        got = events(response.body)
        self.assertEqual(got[-1], "[DONE]")
        text = "".join(e["choices"][0]["delta"].get("content", "")
                       for e in got[:-1] if e["choices"])
        self.assertEqual(text, expected)
