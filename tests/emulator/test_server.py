"""
Tests for L{qwen_twist.emulator.server}, L{qwen_twist.emulator.record} and
the command line in L{qwen_twist.emulator.__main__}; through HTTP, also for
the modules behind the server (C{api}, C{answer}, C{stream}, C{wire}).

Wire-format tests run over real loopback sockets with treq (the way the
gateway talks to it); timing, backpressure and disconnect tests drive the
resource with a L{Clock}, through C{StubTreq} or a C{Site} on a
C{StringTransport}.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import re
import subprocess
import sys
from typing import Any, Callable, Dict, List, Optional

import treq
from treq.client import HTTPClient
from treq.testing import StubTreq

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError, ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed
from twisted.web.server import Site

from qwen_twist.emulator import __main__ as cli
from qwen_twist.emulator.record import Record, RecordedRequest
from qwen_twist.emulator.script import Script, default_answer
from qwen_twist.emulator.server import Emulator, build_resource, listen
from qwen_twist.emulator.stream import GARBAGE_LINE

RFC3339_NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
CALL_ID = re.compile(r"^call_[a-z0-9]{8}$")
METRIC_FIELDS = ("total_duration", "load_duration", "prompt_eval_count",
                 "prompt_eval_duration", "eval_count", "eval_duration")
HI = [{"role": "user", "content": "Hi there"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def deferred_test(f: Callable[..., Any]) -> Callable[..., defer.Deferred]:
    """
    Let an C{async def} test method run under trial on Twisted 22.4 too.
    """
    @functools.wraps(f)
    def wrapper(self: Any) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(f(self))
    return wrapper


def ndjson(body: bytes) -> List[Dict[str, Any]]:
    """
    Parse an NDJSON body, checking its framing: every line ends with a
    newline and is one JSON object.
    """
    assert body.endswith(b"\n"), body[-80:]
    return [json.loads(line) for line in body[:-1].split(b"\n")]


def chat(model: str = "qwen3:8b", **fields: Any) -> Dict[str, Any]:
    body: Dict[str, Any] = {"model": model, "messages": HI}
    body.update(fields)
    return body


class _LineCatcher(Protocol):
    """
    Receives a streamed body; C{first} fires with the first data.
    """

    def __init__(self) -> None:
        self.data = b""
        self.first: defer.Deferred = defer.Deferred()
        self.ended: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if not self.first.called:
            self.first.callback(None)

    def connectionLost(self, reason: Any) -> None:
        self.reason = reason
        self.ended.callback(None)


class _SocketTestCase(TestCase):
    """
    Runs the emulator on a loopback port and talks to it with treq.
    """

    def setUp(self) -> None:
        from twisted.internet import reactor
        self.reactor = reactor
        self.addCleanup(self._settle)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, pool=self.pool))

    async def _settle_async(self) -> None:
        for _ in range(3):
            await task.deferLater(self.reactor, 0.005, lambda: None)

    def _settle(self) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._settle_async())

    async def start(self, script: Optional[Script] = None) -> Emulator:
        self.emulator = await listen(self.reactor, script)
        self.addCleanup(self.emulator.stop)
        return self.emulator

    async def post(self, path: str, body: Any = None, data: Optional[bytes] = None,
                   **kwargs: Any) -> Any:
        if data is not None:
            kwargs["data"] = data
        else:
            kwargs["json"] = body
        response = await self.http.post(self.emulator.url + path, **kwargs)
        response.body = await treq.content(response)
        return response

    async def get(self, path: str, method: str = "GET") -> Any:
        response = await self.http.request(method, self.emulator.url + path)
        response.body = await treq.content(response)
        return response

    async def until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = self.reactor.seconds() + timeout
        while not predicate():
            if self.reactor.seconds() > deadline:
                self.fail("condition not reached within %s s" % (timeout,))
            await task.deferLater(self.reactor, 0.01, lambda: None)

    def assertError(self, response: Any, status: int, message: str) -> None:
        self.assertEqual(response.code, status, response.body)
        self.assertEqual(response.headers.getRawHeaders("content-type"),
                         ["application/json; charset=utf-8"])
        self.assertEqual(json.loads(response.body), {"error": message})


class InfoEndpointTests(_SocketTestCase):
    """
    C{/}, C{/api/version}, C{/api/tags}, C{/api/show}, C{/api/ps} and
    unknown paths.
    """

    @deferred_test
    async def test_root(self) -> None:
        """
        C{GET /} and C{HEAD /} answer 200 C{Ollama is running}, like Ollama.
        """
        await self.start()
        response = await self.get("/")
        self.assertEqual((response.code, response.body), (200, b"Ollama is running"))
        head = await self.get("/", method="HEAD")
        self.assertEqual((head.code, head.body), (200, b""))

    @deferred_test
    async def test_unknown_path_and_method(self) -> None:
        """
        Unknown paths get Go's C{404 page not found}; a known path with the
        wrong method gets C{405 method not allowed}.
        """
        await self.start()
        missing = await self.get("/api/nope")
        self.assertEqual((missing.code, missing.body), (404, b"404 page not found"))
        wrong = await self.get("/api/chat")
        self.assertEqual((wrong.code, wrong.body), (405, b"405 method not allowed"))

    @deferred_test
    async def test_version(self) -> None:
        """
        C{/api/version} reports 0.33.0 unless the script says otherwise.
        """
        await self.start()
        response = await self.get("/api/version")
        self.assertEqual(json.loads(response.body), {"version": "0.33.0"})
        self.emulator.script = Script(version="0.11.4")
        response = await self.get("/api/version")
        self.assertEqual(json.loads(response.body), {"version": "0.11.4"})

    @deferred_test
    async def test_tags(self) -> None:
        """
        C{/api/tags} lists every scripted model in Ollama's shape.
        """
        await self.start(Script.from_dict({"models": [
            {"name": "qwen3:8b", "family": "qwen3", "size": 7, "digest": "d",
             "modified_at": "2025-01-01T00:00:00Z"},
            {"name": "hf.co/bartowski/Qwen2.5-7B-GGUF:Q4_K_M"},
        ]}))
        response = await self.get("/api/tags")
        self.assertEqual(response.headers.getRawHeaders("content-type"),
                         ["application/json; charset=utf-8"])
        models = json.loads(response.body)["models"]
        self.assertEqual(models[0], {
            "name": "qwen3:8b", "model": "qwen3:8b", "modified_at": "2025-01-01T00:00:00Z",
            "size": 7, "digest": "d",
            "details": {"parent_model": "", "format": "gguf", "family": "qwen3",
                        "families": ["qwen3"], "parameter_size": "7B",
                        "quantization_level": "Q4_K_M"},
        })
        self.assertEqual(models[1]["name"], "hf.co/bartowski/Qwen2.5-7B-GGUF:Q4_K_M")

    @deferred_test
    async def test_show(self) -> None:
        """
        C{/api/show} accepts C{model} or the legacy C{name}; without either
        it is 400 C{model is required}; an unknown model is 404 with the tag
        filled in.
        """
        await self.start()
        response = await self.post("/api/show", {"model": "qwen3:8b"})
        shown = json.loads(response.body)
        self.assertEqual(shown["capabilities"], ["completion", "tools", "thinking"])
        self.assertEqual(shown["details"]["family"], "qwen3")
        self.assertEqual(shown["model_info"]["qwen3.context_length"], 40960)
        self.assertIn("modified_at", shown)
        legacy = await self.post("/api/show", {"name": "qwen3:8b"})
        self.assertEqual(json.loads(legacy.body), shown)
        self.assertError(await self.post("/api/show", {}), 400, "model is required")
        self.assertError(await self.post("/api/show", {"model": "nope"}), 404,
                         "model 'nope:latest' not found")

    @deferred_test
    async def test_ps(self) -> None:
        """
        C{/api/ps} lists loaded models; a request loads its model and
        C{keep_alive: 0} with no messages unloads it.
        """
        await self.start()
        names = lambda r: [m["name"] for m in json.loads(r.body)["models"]]  # noqa: E731
        first = await self.get("/api/ps")
        self.assertEqual(names(first), ["qwen3:8b"])
        entry = json.loads(first.body)["models"][0]
        self.assertTrue(RFC3339_NANO.match(entry["expires_at"]))
        self.assertEqual(entry["context_length"], 40960)
        self.assertIn("size_vram", entry)
        await self.post("/api/chat", chat("qwen2.5:7b", stream=False))
        self.assertEqual(names(await self.get("/api/ps")), ["qwen3:8b", "qwen2.5:7b"])
        unload = await self.post("/api/chat", {"model": "qwen3:8b", "messages": [],
                                               "keep_alive": 0})
        self.assertEqual(json.loads(unload.body)["done_reason"], "unload")
        self.assertEqual(names(await self.get("/api/ps")), ["qwen2.5:7b"])


class ChatTests(_SocketTestCase):
    """
    C{POST /api/chat} success shapes.
    """

    @deferred_test
    async def test_stream_is_the_default(self) -> None:
        """
        Without C{stream}, the answer is an NDJSON stream: one JSON object a
        line, C{done: false} chunks, then one C{done: true} line with the
        reason and metric fields.
        """
        await self.start()
        response = await self.post("/api/chat", chat("qwen2.5:7b"))
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"),
                         ["application/x-ndjson"])
        lines = ndjson(response.body)
        *chunks, final = lines
        self.assertTrue(chunks)
        for line in chunks:
            self.assertEqual(set(line), {"model", "created_at", "message", "done"})
            self.assertEqual(line["model"], "qwen2.5:7b")
            self.assertIs(line["done"], False)
            self.assertEqual(line["message"]["role"], "assistant")
            self.assertTrue(RFC3339_NANO.match(line["created_at"]), line["created_at"])
        text = "".join(line["message"]["content"] for line in chunks)
        self.assertEqual(text, default_answer("Hi there"))
        self.assertIs(final["done"], True)
        self.assertEqual(final["done_reason"], "stop")
        self.assertEqual(final["message"], {"role": "assistant", "content": ""})
        for key in METRIC_FIELDS:
            self.assertIsInstance(final[key], int, key)
        self.assertEqual(final["eval_count"], len(chunks))

    @deferred_test
    async def test_non_stream(self) -> None:
        """
        C{stream: false} gives one JSON object with the accumulated content
        and thinking.
        """
        await self.start()
        response = await self.post("/api/chat", chat(stream=False))
        self.assertEqual(response.headers.getRawHeaders("content-type"),
                         ["application/json; charset=utf-8"])
        answer = json.loads(response.body)
        self.assertEqual(answer["message"]["content"], default_answer("Hi there"))
        self.assertTrue(answer["message"]["thinking"])
        self.assertIs(answer["done"], True)
        self.assertEqual(answer["done_reason"], "stop")
        for key in METRIC_FIELDS:
            self.assertIn(key, answer)

    @deferred_test
    async def test_thinking_on_by_default(self) -> None:
        """
        A thinking-capable model streams C{thinking} chunks first (content
        empty) when C{think} is omitted or a level, and none with
        C{think: false}.
        """
        await self.start()
        self.emulator.script.default = self.emulator.script.default.merged(
            {"thinking": "Let me think.", "text": "Hi"})
        for think in (None, True, "low"):
            fields = {} if think is None else {"think": think}
            lines = ndjson((await self.post("/api/chat", chat(**fields))).body)
            self.assertEqual(lines[0]["message"], {"role": "assistant", "content": "",
                                                   "thinking": "Let"})
            self.assertEqual([line["message"].get("thinking") for line in lines[1:3]],
                             [" me", " think."])
            self.assertEqual(lines[3]["message"], {"role": "assistant", "content": "Hi"})
            self.assertEqual(lines[-1]["eval_count"], 4)
        lines = ndjson((await self.post("/api/chat", chat(think=False))).body)
        self.assertFalse(any("thinking" in line["message"] for line in lines))
        answer = json.loads((await self.post("/api/chat", chat(stream=False,
                                                                think=False))).body)
        self.assertNotIn("thinking", answer["message"])

    @deferred_test
    async def test_tool_calls_stream(self) -> None:
        """
        Scripted tool calls stream whole, one line each, with a
        C{call_xxxxxxxx} id and a running C{function.index}, only when the
        request has C{tools}.
        """
        await self.start()
        calls = [{"name": "get_weather", "arguments": {"city": "Tokyo"}},
                 {"name": "get_time", "arguments": {"tz": "JST"}}]
        self.emulator.script.push(tool_calls=calls)
        lines = ndjson((await self.post("/api/chat", chat("qwen2.5:7b", tools=TOOLS))).body)
        self.assertEqual(len(lines), 3)
        for i, (line, call) in enumerate(zip(lines, calls)):
            message = line["message"]
            self.assertEqual(message["content"], "")
            (emitted,) = message["tool_calls"]
            self.assertTrue(CALL_ID.match(emitted["id"]), emitted["id"])
            self.assertEqual(emitted["function"], {"index": i, "name": call["name"],
                                                   "arguments": call["arguments"]})
        self.assertEqual(lines[-1]["done_reason"], "stop")

        self.emulator.script.push(tool_calls=calls)
        lines = ndjson((await self.post("/api/chat", chat("qwen2.5:7b"))).body)
        self.assertFalse(any("tool_calls" in line["message"] for line in lines))
        self.assertEqual("".join(line["message"]["content"] for line in lines),
                         default_answer("Hi there"))

    @deferred_test
    async def test_tool_calls_non_stream(self) -> None:
        """
        Non-streaming, the calls are collected in C{message.tool_calls};
        scripted ids are used as given and C{id: null} leaves the key out.
        """
        await self.start()
        self.emulator.script.push(tool_calls=[
            {"id": "call_k3x9a1b2", "name": "get_weather", "arguments": {"city": "Tokyo"}},
            {"id": None, "name": "f"},
        ])
        answer = json.loads((await self.post(
            "/api/chat", chat("qwen2.5:7b", tools=TOOLS, stream=False))).body)
        self.assertEqual(answer["message"], {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_k3x9a1b2", "function": {"index": 0, "name": "get_weather",
                                                 "arguments": {"city": "Tokyo"}}},
            {"function": {"index": 1, "name": "f", "arguments": {}}},
        ]})

    @deferred_test
    async def test_num_predict_caps_tokens(self) -> None:
        """
        C{options.num_predict} cuts the chunks and ends with
        C{done_reason: "length"}.
        """
        await self.start()
        self.emulator.script.push(text="one two three four five")
        lines = ndjson((await self.post("/api/chat", chat(
            think=False, options={"num_predict": 3}))).body)
        self.assertEqual([line["message"]["content"] for line in lines[:-1]],
                         ["one", " two", " three"])
        self.assertEqual(lines[-1]["done_reason"], "length")
        self.assertEqual(lines[-1]["eval_count"], 3)

    @deferred_test
    async def test_scripted_text_tokens_and_counts(self) -> None:
        """
        The scripted text is split into the scripted number of chunks, and
        scripted C{prompt_eval_count} and C{done_reason} are reported.
        """
        await self.start()
        self.emulator.script.push(text="abcdef", tokens=3, prompt_eval_count=26,
                                  done_reason="load")
        lines = ndjson((await self.post("/api/chat", chat(think=False))).body)
        self.assertEqual([line["message"]["content"] for line in lines[:-1]],
                         ["ab", "cd", "ef"])
        self.assertEqual(lines[-1]["done_reason"], "load")
        self.emulator.script.push(text="a b c d e f", tokens=3, prompt_eval_count=26,
                                  done_reason="")
        lines = ndjson((await self.post("/api/chat", chat(think=False))).body)
        self.assertEqual([line["message"]["content"] for line in lines[:-1]],
                         ["a b", " c d", " e f"])
        self.assertEqual(lines[-1]["prompt_eval_count"], 26)
        self.assertNotIn("done_reason", lines[-1])

    @deferred_test
    async def test_json_format(self) -> None:
        """
        With C{format} set and no scripted text, the default answer is a
        JSON document, so JSON-mode demos parse it.
        """
        await self.start()
        for fmt in ("json", {"type": "object"}):
            answer = json.loads((await self.post("/api/chat", chat(
                stream=False, think=False, format=fmt))).body)
            self.assertEqual(json.loads(answer["message"]["content"]),
                             {"answer": default_answer("Hi there")})

    @deferred_test
    async def test_load_only(self) -> None:
        """
        An empty C{messages} list only loads the model: one JSON object with
        C{done_reason: "load"}, even when streaming was asked for.
        """
        await self.start()
        response = await self.post("/api/chat", {"model": "qwen3:8b", "messages": []})
        self.assertEqual(response.headers.getRawHeaders("content-type"),
                         ["application/json; charset=utf-8"])
        answer = json.loads(response.body)
        self.assertEqual(answer["done_reason"], "load")
        self.assertEqual(answer["message"], {"role": "assistant", "content": ""})


class GenerateTests(_SocketTestCase):
    """
    C{POST /api/generate}.
    """

    @deferred_test
    async def test_stream(self) -> None:
        """
        Generate streams C{response} (and C{thinking}) instead of
        C{message}; its final line carries a short C{context}.
        """
        await self.start()
        self.emulator.script.default = self.emulator.script.default.merged(
            {"text": "Hi!", "thinking": "Hmm."})
        lines = ndjson((await self.post("/api/generate", {"model": "qwen3:8b",
                                                          "prompt": "Say hi"})).body)
        self.assertEqual(lines[0]["thinking"], "Hmm.")
        self.assertEqual(lines[0]["response"], "")
        self.assertEqual(lines[1]["response"], "Hi!")
        self.assertNotIn("message", lines[1])
        final = lines[-1]
        self.assertEqual(final["response"], "")
        self.assertTrue(all(isinstance(t, int) for t in final["context"]))
        self.assertTrue(0 < len(final["context"]) <= 16)
        raw = ndjson((await self.post("/api/generate", {
            "model": "qwen3:8b", "prompt": "Say hi", "raw": True, "think": False})).body)
        self.assertNotIn("context", raw[-1])
        self.assertEqual([line["response"] for line in raw[:-1]], ["Hi!"])

    @deferred_test
    async def test_non_stream(self) -> None:
        """
        Non-streaming generate returns the whole response in one object.
        """
        await self.start()
        answer = json.loads((await self.post("/api/generate", {
            "model": "qwen2.5:7b", "prompt": "Say hi", "stream": False})).body)
        self.assertEqual(answer["response"], default_answer("Say hi"))
        self.assertNotIn("thinking", answer)
        self.assertEqual(answer["done_reason"], "stop")
        self.assertIn("context", answer)

    @deferred_test
    async def test_errors(self) -> None:
        """
        Generate's own error texts: empty model is a 404, C{raw} refuses
        C{system}, C{suffix} needs the insert capability.
        """
        await self.start()
        self.assertError(await self.post("/api/generate", {"prompt": "x"}), 404,
                         "model '' not found")
        self.assertError(await self.post("/api/generate", {
            "model": "qwen2.5:7b", "prompt": "x", "raw": True, "system": "s"}), 400,
            "raw mode does not support template, system, or context")
        self.assertError(await self.post("/api/generate", {
            "model": "gemma3:4b", "prompt": "x", "suffix": "y"}), 400,
            "registry.ollama.ai/library/gemma3:4b does not support insert")
        load = await self.post("/api/generate", {"model": "qwen2.5:7b"})
        self.assertEqual(json.loads(load.body)["done_reason"], "load")


class RequestErrorTests(_SocketTestCase):
    """
    The exact error statuses and texts of Ollama's handlers.
    """

    @deferred_test
    async def test_body_errors(self) -> None:
        """
        Empty bodies, bad JSON and wrongly typed fields get Go's texts.
        """
        await self.start()
        cases = [
            (b"", "missing request body"),
            (b"  \n", "missing request body"),
            (b'{"model": x}', "invalid character 'x' looking for beginning of value"),
            (b'{"model":', "unexpected EOF"),
            (b'{"model":"m",}', "invalid character '}' looking for beginning of object "
                                "key string"),
            (b'{"model" "m"}', "invalid character '\"' after object key"),
            (b'{"a":[1 2]}', "invalid character '2' after array element"),
            (b'{"a":1 "b":2}', "invalid character '\"' after object key:value pair"),
            (b"[]", "json: cannot unmarshal array into Go value of type api.ChatRequest"),
            (b'{"model":5}', "json: cannot unmarshal number into Go struct field "
                             "ChatRequest.model of type string"),
            (b'{"model":"m","messages":[{"role":"user","content":[]}]}',
             "json: cannot unmarshal array into Go struct field "
             "ChatRequest.messages.content of type string"),
            (b'{"model":"m","stream":"yes"}', "json: cannot unmarshal string into Go struct "
                                              "field ChatRequest.stream of type bool"),
            (b'{"model":"m","messages":[{"role":"assistant","content":"","tool_calls":'
             b'[{"function":{"name":"f","arguments":"{}"}}]}]}',
             "json: cannot unmarshal string into Go struct field "
             "ChatRequest.messages.tool_calls.function.arguments of type "
             "api.ToolCallFunctionArguments"),
            (b'{"model":"m","messages":[{"role":"user","content":"x","images":'
             b'["data:image/png;base64,iVBORw0KGgo="]}]}',
             "illegal base64 data at input byte 4"),
            (b'{"model":"m","think":"extreme"}',
             'invalid think value: "extreme" (must be "high", "medium", "low", "max", '
             'true, or false)'),
            (b'{"model":"m","keep_alive":"5"}', 'time: missing unit in duration "5"'),
        ]
        for data, message in cases:
            response = await self.post("/api/chat", data=data)
            self.assertError(response, 400, message)

    @deferred_test
    async def test_chat_errors(self) -> None:
        """
        Model and capability errors of C{/api/chat}, with their statuses.
        """
        await self.start()
        cases = [
            ({"messages": HI}, 400, "model is required"),
            (chat("nope"), 404, "model 'nope' not found"),
            (chat("Nope:Latest", stream=True), 404, "model 'Nope:Latest' not found"),
            (chat("gemma3:4b", tools=TOOLS), 400,
             "registry.ollama.ai/library/gemma3:4b does not support tools"),
            (chat("gemma3:4b", think=True), 400, '"gemma3:4b" does not support thinking'),
            (chat("gemma3:4b", think="high"), 400, '"gemma3:4b" does not support thinking'),
            (chat("nomic-embed-text"), 400, '"nomic-embed-text" does not support chat'),
            (chat(options={"stop": "END"}), 500, 'option "stop" must be of type array'),
            (chat(options={"num_predict": "5"}), 500,
             'option "num_predict" must be of type integer'),
            (chat(top_logprobs=21), 400, "top_logprobs must be between 0 and 20"),
            (chat(format="yaml"), 500,
             'invalid format: "\\"yaml\\""; expected "json" or a valid JSON Schema object'),
        ]
        for body, status, message in cases:
            self.assertError(await self.post("/api/chat", body), status, message)
        ok = await self.post("/api/chat", chat("gemma3:4b", think=False, stream=False,
                                               options={"stop": ["END"]}, top_logprobs=20))
        self.assertEqual(ok.code, 200)


class EmbedTests(_SocketTestCase):
    """
    C{POST /api/embed}.
    """

    @deferred_test
    async def test_vectors(self) -> None:
        """
        Each input gets a deterministic unit vector of the model's
        dimension (8 by default); C{dimensions} cuts and re-normalises.
        """
        await self.start()
        response = await self.post("/api/embed", {"model": "nomic-embed-text",
                                                  "input": ["a", "b", "a"]})
        answer = json.loads(response.body)
        self.assertEqual(answer["model"], "nomic-embed-text")
        a, b, again = answer["embeddings"]
        self.assertEqual(len(a), 8)
        self.assertEqual(a, again)
        self.assertNotEqual(a, b)
        self.assertAlmostEqual(math.sqrt(sum(v * v for v in a)), 1.0, places=6)
        self.assertEqual(answer["prompt_eval_count"], 3)
        self.assertIn("total_duration", answer)
        short = json.loads((await self.post("/api/embed", {
            "model": "nomic-embed-text", "input": "a", "dimensions": 3})).body)
        self.assertEqual(len(short["embeddings"][0]), 3)
        empty = json.loads((await self.post("/api/embed", {
            "model": "nomic-embed-text", "input": []})).body)
        self.assertEqual(empty, {"model": "nomic-embed-text", "embeddings": []})

    @deferred_test
    async def test_fixed_vectors(self) -> None:
        """
        A scripted behaviour can fix the exact vectors and count (TV-33).
        """
        await self.start()
        self.emulator.script.push(embeddings=[[0.5, -1.0], [0.25, 0.5]], prompt_eval_count=4)
        answer = json.loads((await self.post("/api/embed", {
            "model": "nomic-embed-text", "input": ["a", "b"]})).body)
        self.assertEqual(answer["embeddings"], [[0.5, -1.0], [0.25, 0.5]])
        self.assertEqual(answer["prompt_eval_count"], 4)

    @deferred_test
    async def test_errors(self) -> None:
        """
        Non-string inputs and unknown models get Ollama's embed texts.
        """
        await self.start()
        self.assertError(await self.post("/api/embed", {"model": "nomic-embed-text",
                                                        "input": ["a", 1]}),
                         400, "invalid input type")
        self.assertError(await self.post("/api/embed", {"model": "nomic-embed-text",
                                                        "input": 5}),
                         400, "invalid input type")
        self.assertError(await self.post("/api/embed", {"model": "nope", "input": "a"}),
                         404, 'model "nope" not found, try pulling it first')
        self.assertError(await self.post("/api/embed", {"input": "a"}),
                         400, "model is required")
        self.assertError(await self.post("/api/embed", {
            "model": "nomic-embed-text", "input": "x" * 9000, "truncate": False}),
            400, "the input length exceeds the context length")
        ok = await self.post("/api/embed", {"model": "nomic-embed-text", "input": "x" * 9000})
        self.assertEqual(ok.code, 200)


class FaultTests(_SocketTestCase):
    """
    Scripted failures, each as the gateway would see it.
    """

    @deferred_test
    async def test_http_status(self) -> None:
        """
        C{http_status} answers that status with C{{"error": ...}} before any
        body, even for a streaming request.
        """
        await self.start()
        self.emulator.script.push(http_status=503)
        self.assertError(await self.post("/api/chat", chat()), 503,
                         "server busy, please try again.  maximum pending requests exceeded")
        self.emulator.script.push(http_status=500, error="boom")
        self.assertError(await self.post("/api/chat", chat(stream=False)), 500, "boom")
        self.assertEqual(self.emulator.record.faults, 2)

    @deferred_test
    async def test_error_line(self) -> None:
        """
        C{error_line_after} sends N chunks, then an C{{"error": ...}} line,
        and ends the 200 response without a done line.
        """
        await self.start()
        self.emulator.script.push(text="Paris is nice", error_line_after=1)
        response = await self.post("/api/chat", chat(think=False))
        self.assertEqual(response.code, 200)
        lines = ndjson(response.body)
        self.assertEqual(lines[0]["message"]["content"], "Paris")
        self.assertEqual(lines[1], {"error": "an error was encountered while running the model"})
        self.assertEqual(len(lines), 2)
        self.assertEqual(self.emulator.record.streams_faulted, 1)
        self.assertEqual(self.emulator.record.streams_active, 0)

    @deferred_test
    async def test_invalid_json(self) -> None:
        """
        C{invalid_json_after} sends N chunks and then a line that is not
        JSON.
        """
        await self.start()
        self.emulator.script.push(text="a b c", invalid_json_after=2)
        response = await self.post("/api/chat", chat(think=False))
        good, bad = response.body.rsplit(b"\n", 2)[0], response.body.split(b"\n")[2]
        self.assertEqual(len(ndjson(good + b"\n")), 2)
        self.assertEqual(bad + b"\n", GARBAGE_LINE)
        self.assertRaises(ValueError, json.loads, bad)

    @deferred_test
    async def test_close_mid_stream(self) -> None:
        """
        C{close_after} closes the connection after N chunks: the client gets
        them, then a failed body, and no done line.
        """
        await self.start()
        self.emulator.script.push(text="a b c", close_after=1)
        response = await self.http.post(self.emulator.url + "/api/chat", json=chat(think=False),
                                        unbuffered=True)
        catcher = _LineCatcher()
        response.deliverBody(catcher)
        await catcher.ended
        self.assertIsInstance(catcher.reason.value, ResponseFailed)
        self.assertEqual([line["message"]["content"] for line in ndjson(catcher.data)], ["a"])
        self.assertEqual(self.emulator.record.streams_faulted, 1)

    @deferred_test
    async def test_hang_after(self) -> None:
        """
        C{hang_after} sends N chunks and then nothing, keeping the
        connection open; when the client gives up the stream counts as
        abandoned.
        """
        await self.start()
        self.emulator.script.push(text="a b c", hang_after=1)
        response = await self.http.post(self.emulator.url + "/api/chat", json=chat(think=False),
                                        unbuffered=True)
        catcher = _LineCatcher()
        response.deliverBody(catcher)
        await self.until(lambda: catcher.data.endswith(b"\n"))
        self.assertEqual([line["message"]["content"] for line in ndjson(catcher.data)], ["a"])
        self.assertEqual(self.emulator.record.faults, 1)
        self.assertEqual(self.emulator.record.streams_active, 1)
        self.assertFalse(catcher.ended.called)
        self.assertEqual([call for call in self.reactor.getDelayedCalls()
                          if getattr(call.func, "__name__", "") == "_tick"], [])
        catcher.transport.stopProducing()
        await self.until(lambda: self.emulator.record.streams_abandoned == 1)
        self.assertEqual(self.emulator.record.streams_active, 0)

    @deferred_test
    async def test_hang_before_headers(self) -> None:
        """
        C{hang_before_headers} never answers; a client that gives up is
        counted in C{requests_abandoned}.
        """
        await self.start()
        self.emulator.script.push(hang_before_headers=True)
        outcomes: List[Any] = []
        d = self.http.post(self.emulator.url + "/api/chat", json=chat())
        d.addBoth(outcomes.append)
        await self.until(lambda: self.emulator.record.faults == 1)
        self.assertEqual(outcomes, [])
        self.assertEqual(len(self.emulator.record.requests), 1)
        d.cancel()
        await self.until(lambda: bool(outcomes))
        self.assertIsInstance(outcomes[0], Failure)
        await self.until(lambda: self.emulator.record.requests_abandoned == 1)

    @deferred_test
    async def test_stop_drops_open_connections(self) -> None:
        """
        L{Emulator.stop} closes the port and drops connections in progress,
        so the client sees a failure instead of waiting forever.
        """
        await self.start()
        self.emulator.script.push(hang_before_headers=True)
        outcomes: List[Any] = []
        self.http.post(self.emulator.url + "/api/chat", json=chat()).addBoth(outcomes.append)
        await self.until(lambda: self.emulator.record.faults == 1)
        await self.emulator.stop()
        await self.until(lambda: bool(outcomes))
        self.assertIsInstance(outcomes[0], Failure)
        self.assertEqual(self.emulator.record.requests_abandoned, 1)
        await self.emulator.stop()


class RecordTests(_SocketTestCase):
    """
    What the emulator records, and the control paths.
    """

    @deferred_test
    async def test_requests_are_recorded(self) -> None:
        """
        Each request is recorded with method, path, lower-cased headers and
        the parsed body (L{None} when it is not JSON); control paths are not.
        """
        await self.start()
        body = chat(stream=False, options={"temperature": 0.2})
        await self.post("/api/chat", body, headers={"X-Trace": ["abc"]})
        await self.post("/api/chat", data=b"{bad")
        await self.get("/api/tags")
        await self.get("/_emulator/record")
        record = self.emulator.record
        self.assertEqual([(r.method, r.path) for r in record.requests],
                         [("POST", "/api/chat"), ("POST", "/api/chat"), ("GET", "/api/tags")])
        first = record.requests[0]
        self.assertEqual(first.body, body)
        self.assertEqual(first.headers["x-trace"], "abc")
        self.assertEqual(first.headers["content-type"], "application/json; charset=UTF-8")
        self.assertIsNone(record.requests[1].body)
        self.assertEqual(record.bodies("/api/chat"), [body, None])
        self.assertEqual(record.last("/api/tags").method, "GET")
        self.assertEqual(record.request_count, 3)

    @deferred_test
    async def test_abandoned_stream(self) -> None:
        """
        A client that closes the connection mid-stream is counted as
        abandoned, and the emulator stops generating for it.
        """
        await self.start()
        self.emulator.script.push(text="a b c", tokens=400, tokens_per_second=100)
        response = await self.http.post(self.emulator.url + "/api/chat", json=chat(think=False),
                                        unbuffered=True)
        catcher = _LineCatcher()
        response.deliverBody(catcher)
        await catcher.first
        record = self.emulator.record
        self.assertEqual((record.streams_started, record.streams_active), (1, 1))
        catcher.transport.stopProducing()
        await self.until(lambda: record.streams_abandoned == 1)
        self.assertEqual((record.streams_active, record.streams_completed), (0, 0))
        pending = [call for call in self.reactor.getDelayedCalls()
                   if getattr(call.func, "__name__", "") == "_tick"]
        self.assertEqual(pending, [])

    @deferred_test
    async def test_control_paths(self) -> None:
        """
        C{/_emulator/record}, C{/_emulator/reset}, C{/_emulator/script} and
        C{/_emulator/queue} let another process read the record, clear it,
        replace the script and queue behaviours.
        """
        await self.start()
        await self.post("/api/chat", chat(stream=False))
        recorded = json.loads((await self.get("/_emulator/record")).body)
        self.assertEqual(recorded["requests"][0]["path"], "/api/chat")
        self.assertEqual(recorded["counters"]["request_count"], 1)
        reset = await self.post("/_emulator/reset", data=b"")
        self.assertEqual(reset.code, 200)
        self.assertEqual(self.emulator.record.request_count, 0)

        replaced = await self.post("/_emulator/script", {"version": "0.5.0",
                                                         "models": [{"name": "m"}]})
        self.assertEqual(json.loads(replaced.body)["version"], "0.5.0")
        self.assertEqual(json.loads((await self.get("/api/version")).body)["version"], "0.5.0")
        self.assertEqual([m.name for m in self.emulator.script.models], ["m:latest"])
        self.assertError(await self.post("/_emulator/script", {"default": {"ttft": "x"}}),
                         400, "default.ttft: must be a number, not \"x\"")
        script = json.loads((await self.get("/_emulator/script")).body)
        self.assertEqual(script["models"][0]["name"], "m:latest")

        queued = await self.post("/_emulator/queue", {"text": "queued"})
        self.assertEqual(json.loads(queued.body), {"pending": 1})
        answer = json.loads((await self.post("/api/chat", chat("m", stream=False))).body)
        self.assertEqual(answer["message"]["content"], "queued")
        self.assertError(await self.post("/_emulator/queue", {"nope": 1}), 400,
                         "queue.nope: unknown key")


class RecordBoundTests(SynchronousTestCase):
    """
    The record is bounded by body bytes as well as by count: 10,000 large
    bodies held 8 GB when only the count was bounded.
    """

    def recorded(self, size, n=0):
        return RecordedRequest("POST", "/api/chat", {}, {"n": n}, 0.0, size)

    def test_bytes_bound(self):
        """
        Older requests are dropped once the kept bodies exceed C{max_bytes};
        the counters keep counting.
        """
        record = Record(max_requests=100, max_bytes=1000)
        for n in range(10):
            record.add(self.recorded(300, n))
        self.assertEqual([r.body["n"] for r in record.requests], [7, 8, 9])
        self.assertEqual((record.bytes_kept, record.request_count), (900, 10))

    def test_count_bound_and_newest_kept(self):
        """
        The count bound still holds, and the newest request is kept even
        when it alone is over the byte bound.
        """
        record = Record(max_requests=2, max_bytes=1000)
        for n in range(5):
            record.add(self.recorded(1, n))
        self.assertEqual([r.body["n"] for r in record.requests], [3, 4])
        record.add(self.recorded(5000, 9))
        self.assertEqual([r.body["n"] for r in record.requests], [9])
        self.assertEqual(record.bytes_kept, 5000)

    def test_command_line(self):
        """
        C{--record-bytes} and C{--record-requests} reach the record.
        """
        reactor = MemoryReactorClock()
        cli.main(["--port", "11501", "--record-bytes", "10", "--record-requests", "3"],
                 reactor=reactor, stdout=io.StringIO())
        (_, site, _, _), = reactor.tcpServers
        record = site.resource.record
        for n in range(4):
            record.add(self.recorded(4, n))
        self.assertEqual([r.body["n"] for r in record.requests], [2, 3])


class ClockTimingTests(SynchronousTestCase):
    """
    Pacing with a L{Clock}, through C{StubTreq}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.record = Record()
        self.script = Script()
        self.stub = StubTreq(build_resource(self.script, self.record, self.clock))

    def post(self, body: Any) -> defer.Deferred:
        d = self.stub.post("http://emulator/api/chat", json=body, unbuffered=True)
        self.stub.flush()
        return d

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.stub.flush()

    def test_time_to_first_token(self) -> None:
        """
        Nothing, not even the headers, arrives before C{ttft}.
        """
        self.script.push(ttft=2.0)
        d = self.post(chat(think=False))
        self.assertNoResult(d)
        self.advance(1.9)
        self.assertNoResult(d)
        self.advance(0.1)
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        lines = ndjson(self.successResultOf(self.stub.content(response)))
        self.assertEqual(lines[-1]["prompt_eval_duration"], 2_000_000_000)

    def test_tokens_per_second(self) -> None:
        """
        Chunks arrive at the scripted pace, the done line right after the
        last one; C{eval_duration} matches the pace.
        """
        self.script.push(text="a b c d e", tokens_per_second=10)
        response = self.successResultOf(self.post(chat(think=False)))
        chunks: List[bytes] = []
        done = self.stub.collect(response, chunks.append)
        self.stub.flush()
        count = lambda: b"".join(chunks).count(b"\n")  # noqa: E731
        self.assertEqual(count(), 1)
        self.advance(0.09)
        self.assertEqual(count(), 1)
        self.advance(0.01)
        self.assertEqual(count(), 2)
        self.advance(0.25)
        self.assertEqual(count(), 4)
        self.assertNoResult(done)
        self.advance(0.05)
        self.successResultOf(done)
        final = ndjson(b"".join(chunks))[-1]
        self.assertEqual(final["eval_count"], 5)
        self.assertEqual(final["eval_duration"], 500_000_000)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_non_stream_waits_for_the_whole_answer(self) -> None:
        """
        A non-streaming answer arrives when the last chunk would have.
        """
        self.script.push(text="a b c d e", tokens_per_second=10, ttft=1)
        d = self.post(chat(think=False, stream=False))
        self.advance(1.39)
        self.assertNoResult(d)
        self.advance(0.01)
        answer = json.loads(self.successResultOf(self.stub.content(self.successResultOf(d))))
        self.assertEqual(answer["message"]["content"], "a b c d e")

    def test_hang_before_headers_never_answers(self) -> None:
        """
        C{hang_before_headers} leaves the request unanswered and schedules
        nothing.
        """
        self.script.push(hang_before_headers=True)
        d = self.post(chat())
        self.advance(3600)
        self.assertNoResult(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.record.faults, 1)

    def test_delayed_error_status(self) -> None:
        """
        C{http_status} with C{ttft} answers the error after the delay.
        """
        self.script.push(http_status=429, ttft=1)
        d = self.post(chat())
        self.advance(0.5)
        self.assertNoResult(d)
        self.advance(0.5)
        response = self.successResultOf(d)
        self.assertEqual(response.code, 429)
        self.assertEqual(json.loads(self.successResultOf(self.stub.content(response))),
                         {"error": "too many requests"})


class StreamProducerTests(SynchronousTestCase):
    """
    Backpressure and disconnects, with the emulator's resource in a C{Site}
    on a C{StringTransport}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.record = Record()
        self.script = Script()
        site = Site(build_resource(self.script, self.record, self.clock),
                    timeout=None, reactor=self.clock)
        self.channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def request(self, body: Dict[str, Any]) -> None:
        data = json.dumps(body).encode("utf-8")
        self.channel.dataReceived(
            b"POST /api/chat HTTP/1.1\r\nHost: emulator\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(data), data))

    def lines(self) -> int:
        return self.transport.value().count(b'"done":false')

    def test_pause_stops_generation(self) -> None:
        """
        When the transport pauses the response, no chunk timer is left and
        nothing is written until it resumes; the pause is counted, and the
        pace continues from where it stopped.
        """
        self.script.push(text="a b c d e", tokens_per_second=10)
        self.request(chat(think=False))
        self.assertEqual(self.lines(), 1)
        self.transport.producer.pauseProducing()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.record.pauses, 1)
        self.clock.advance(10)
        self.assertEqual(self.lines(), 1)
        self.transport.producer.resumeProducing()
        self.assertEqual(self.lines(), 1)
        self.clock.advance(0.1)
        self.assertEqual(self.lines(), 2)
        self.clock.advance(0.3)
        self.assertEqual(self.lines(), 5)
        self.assertIn(b'"done":true', self.transport.value())
        self.assertEqual(self.record.streams_completed, 1)

    def test_disconnect_cancels_timers(self) -> None:
        """
        A client disconnect mid-stream cancels the chunk timer at once and
        counts the stream as abandoned.
        """
        self.script.push(text="a b c d e", tokens_per_second=10)
        self.request(chat(think=False))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.channel.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual((self.record.streams_abandoned, self.record.streams_active), (1, 0))
        self.clock.advance(10)
        self.assertEqual(self.lines(), 1)

    def test_stop_producing(self) -> None:
        """
        C{stopProducing} from the transport ends generation the same way.
        """
        self.script.push(text="a b c d e", tokens_per_second=10)
        self.request(chat(think=False))
        self.transport.producer.stopProducing()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.record.streams_abandoned, 1)
        self.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.record.streams_abandoned, 1)

    def test_close_after(self) -> None:
        """
        C{close_after} writes N lines and closes the connection: no done
        line, no terminating chunk.
        """
        self.script.push(text="a b c d e", close_after=2)
        self.request(chat(think=False))
        self.assertEqual(self.lines(), 2)
        self.assertTrue(self.transport.disconnecting)
        self.assertNotIn(b'"done":true', self.transport.value())
        self.assertFalse(self.transport.value().endswith(b"0\r\n\r\n"))
        self.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((self.record.streams_faulted, self.record.streams_abandoned), (1, 0))

    def test_hang_after_headers(self) -> None:
        """
        C{hang_after: 0} sends the 200 headers and then nothing.
        """
        self.script.push(hang_after=0)
        self.request(chat(think=False))
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertEqual(self.lines(), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.channel.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.record.streams_abandoned, 1)


class ServerHeaderTests(SynchronousTestCase):
    """
    Responses carry no C{Server} header, as Ollama's Go server sends none.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.site = Site(build_resource(Script(), Record(), self.clock),
                         timeout=None, reactor=self.clock)

    def raw_response(self, request: bytes) -> bytes:
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50001))
        transport = StringTransport()
        channel.makeConnection(transport)
        self.addCleanup(channel.connectionLost, Failure(ConnectionDone()))
        channel.dataReceived(request)
        return transport.value()

    def assertNoServerHeader(self, response: bytes) -> None:
        head = response.split(b"\r\n\r\n", 1)[0].lower()
        self.assertIn(b"\r\ndate: ", head)
        self.assertNotIn(b"\r\nserver:", head)

    def test_json_answer(self) -> None:
        """
        A plain JSON answer has a C{Date} header but no C{Server} header.
        """
        response = self.raw_response(b"GET /api/version HTTP/1.1\r\nHost: e\r\n\r\n")
        self.assertTrue(response.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertNoServerHeader(response)

    def test_not_found(self) -> None:
        """
        The router's C{404 page not found} has no C{Server} header either.
        """
        response = self.raw_response(b"GET /nope HTTP/1.1\r\nHost: e\r\n\r\n")
        self.assertTrue(response.startswith(b"HTTP/1.1 404 Not Found\r\n"))
        self.assertNoServerHeader(response)

    def test_stream(self) -> None:
        """
        A streamed NDJSON answer has no C{Server} header.
        """
        data = json.dumps(chat(think=False)).encode("utf-8")
        response = self.raw_response(
            b"POST /api/chat HTTP/1.1\r\nHost: e\r\nContent-Length: %d\r\n\r\n%s"
            % (len(data), data))
        self.assertIn(b"application/x-ndjson", response)
        self.assertIn(b'"done":true', response)
        self.assertNoServerHeader(response)


class ExportTests(SynchronousTestCase):
    """
    The server module keeps the names it exported before it was split.
    """

    def test_public_names(self) -> None:
        """
        Every name the server module declares public exists.
        """
        from qwen_twist.emulator import server
        for name in server.__all__:
            self.assertTrue(hasattr(server, name), name)


class _FailingReactor(MemoryReactorClock):
    def listenTCP(self, port: int, factory: Any, backlog: int = 50,
                  interface: str = "") -> Any:
        raise CannotListenError(interface, port, OSError("address in use"))


class CommandLineTests(SynchronousTestCase):
    """
    C{python -m qwen_twist.emulator}.
    """

    def test_help(self) -> None:
        """
        C{--help} prints the usage with every flag and exits 0.
        """
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        error = self.assertRaises(SystemExit, cli.main, ["--help"])
        self.assertEqual(error.code, 0)
        for flag in ("--host", "--port", "--script", "--tokens-per-second", "--ttft",
                     "--text", "--record-requests", "--record-bytes"):
            self.assertIn(flag, out.getvalue())
        self.assertIn("bounded", " ".join(out.getvalue().split()))

    def test_module_help_runs(self) -> None:
        """
        C{python -m qwen_twist.emulator --help} works as a process.
        """
        env = dict(os.environ, PYTHONPATH=REPO)
        result = subprocess.run([sys.executable, "-m", "qwen_twist.emulator", "--help"],
                                cwd=REPO, env=env, capture_output=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(b"--tokens-per-second", result.stdout)

    def test_listens_and_logs_one_line(self) -> None:
        """
        The emulator binds 127.0.0.1 by default, prints one startup line
        and applies the pacing flags to the default behaviour.
        """
        reactor = MemoryReactorClock()
        out = io.StringIO()
        code = cli.main(["--port", "11500", "--tokens-per-second", "5", "--ttft", "0.5",
                         "--text", "hi", "--ollama-version", "0.12.0"],
                        reactor=reactor, stdout=out)
        self.assertEqual(code, 0)
        self.assertEqual(out.getvalue(),
                         "qwengate ollama emulator listening on http://127.0.0.1:11500\n")
        (port, site, _, interface), = reactor.tcpServers
        self.assertEqual((port, interface), (11500, "127.0.0.1"))
        script = site.resource.script
        self.assertEqual((script.default.tokens_per_second, script.default.ttft,
                          script.default.text, script.version), (5.0, 0.5, "hi", "0.12.0"))
        self.assertIn("shutdown", reactor.triggers["before"])

    def test_script_file(self) -> None:
        """
        C{--script} loads a JSON script; an invalid one exits 2 with the
        key at fault.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump({"models": [{"name": "m"}], "default": {"text": "from file"}}, f)
        reactor = MemoryReactorClock()
        self.assertEqual(cli.main(["--script", path], reactor=reactor,
                                  stdout=io.StringIO()), 0)
        script = reactor.tcpServers[0][1].resource.script
        self.assertEqual(([m.name for m in script.models], script.default.text),
                         (["m:latest"], "from file"))
        with open(path, "w") as f:
            json.dump({"default": {"tokens": "many"}}, f)
        err = io.StringIO()
        self.assertEqual(cli.main(["--script", path], reactor=MemoryReactorClock(),
                                  stderr=err), 2)
        self.assertIn("default.tokens", err.getvalue())
        err = io.StringIO()
        self.assertEqual(cli.main(["--script", path + ".missing"], stderr=err), 2)
        self.assertIn("No such file", err.getvalue())

    def test_port_in_use(self) -> None:
        """
        A port that cannot be bound exits 1 with a message.
        """
        err = io.StringIO()
        self.assertEqual(cli.main(["--port", "1"], reactor=_FailingReactor(), stderr=err), 1)
        self.assertIn("cannot listen", err.getvalue())
