"""
Ollama's native API end to end over real sockets: the official C{ollama}
Python client talks to the gateway over TLS with an API key, the gateway
relays to the emulator.
"""

from __future__ import annotations

import json
import os
import ssl
import time

from twisted.trial.unittest import TestCase

from qwen_twist.gate.keyfile import add_key

from tests.support import async_test, in_thread, sdk, start_stack
from tests.test_live import wait_for
from tests.test_live_stream import slow_read

MESSAGES = [{"role": "user", "content": "Hi"}]


async def native_stack(testcase, config=None):
    """
    The emulator and the gateway with three keys: C{plain}, C{manager}
    (scope C{models:manage}) and C{narrow} (only C{qwen3:8b}).
    """
    directory = testcase.mktemp()
    os.makedirs(directory)
    path = os.path.join(directory, "keys.yaml")
    now = time.time()
    keys = {
        "plain": add_key(path, "plain", now=now),
        "manager": add_key(path, "manager", scopes=("models:manage",), now=now),
        "narrow": add_key(path, "narrow", models=("qwen3:8b",), now=now),
    }
    raw = {"auth": {"required": True, "keys_file": path}}
    raw.update(config or {})
    stack = await start_stack(testcase, raw)
    return stack, keys


def ollama_client(testcase, stack, key, header="Authorization"):
    """
    The official client, verifying the gateway's certificate with its CA
    (the keyword arguments go to C{httpx.Client}).
    """
    ollama = sdk("ollama")

    value = "Bearer " + key if header == "Authorization" else key
    context = ssl.create_default_context(cafile=stack.cafile)
    client = ollama.Client(host=stack.url, headers={header: value}, verify=context,
                           timeout=20)
    testcase.addCleanup(client._client.close)
    return client


class OllamaClientTests(TestCase):
    """
    The C{ollama} library's calls work through the gateway unchanged.
    """

    @async_test
    async def test_inference_and_listing(self) -> None:
        """
        chat (streamed and not), generate, embed, list, show and ps.
        """
        stack, keys = await native_stack(self)
        client = ollama_client(self, stack, keys["plain"])

        def run():
            whole = client.chat(model="qwen3:8b", messages=MESSAGES, stream=False, think=False)
            parts = list(client.chat(model="qwen3:8b", messages=MESSAGES, stream=True,
                                     think=False))
            generated = client.generate(model="qwen2.5:7b", prompt="Say hi")
            embedded = client.embed(model="nomic-embed-text", input=["a", "b"])
            listed = client.list()
            shown = client.show("qwen3:8b")
            running = client.ps()
            return whole, parts, generated, embedded, listed, shown, running

        whole, parts, generated, embedded, listed, shown, running = await in_thread(run)
        self.assertTrue(whole.message.content)
        self.assertTrue(whole.done)
        self.assertGreater(len(parts), 1)
        self.assertTrue(parts[-1].done)
        self.assertEqual("".join(p.message.content for p in parts), whole.message.content)
        self.assertTrue(generated.response)
        self.assertEqual(len(embedded.embeddings), 2)
        self.assertEqual([m.model for m in listed.models],
                         ["qwen3:8b", "qwen2.5:7b", "gemma3:4b", "nomic-embed-text:latest"])
        self.assertIn("thinking", shown.capabilities)
        self.assertIn("qwen3:8b", [m.model for m in running.models])
        # Ollama got the bodies the client sent, not a translation.
        self.assertEqual(stack.record.last("/api/chat").body["messages"], MESSAGES)
        self.assertNotIn("authorization", stack.record.last("/api/chat").headers)

    @async_test
    async def test_x_api_key_and_version(self) -> None:
        """
        A key in C{X-Api-Key} works too; C{/} and C{/api/version} answer
        as Ollama does.
        """
        stack, keys = await native_stack(self)
        response = await stack.get("/api/version", headers={"X-Api-Key": keys["plain"]})
        self.assertEqual(response.code, 200)
        self.assertIn("version", json.loads(await response.content()))
        response = await stack.get("/", headers={"X-Api-Key": keys["plain"]})
        self.assertEqual(await response.content(), b"Ollama is running")

    @async_test
    async def test_management_locked(self) -> None:
        """
        Without the scope, pull, delete and create raise C{ResponseError}
        403 and never reach Ollama; with it, a pull streams its progress.
        """
        ollama = sdk("ollama")

        stack, keys = await native_stack(self)
        plain = ollama_client(self, stack, keys["plain"])
        manager = ollama_client(self, stack, keys["manager"])

        def refused():
            statuses = []
            for call in (lambda: plain.pull("qwen3:8b"),
                         lambda: plain.delete("qwen3:8b"),
                         lambda: plain.create(model="mine", from_="qwen3:8b")):
                try:
                    call()
                except ollama.ResponseError as e:
                    statuses.append((e.status_code, "models:manage" in e.error))
            return statuses

        self.assertEqual(await in_thread(refused), [(403, True)] * 3)
        for path in ("/api/pull", "/api/delete", "/api/create"):
            self.assertEqual(stack.record.for_path(path), [])

        def pull():
            return [p.status for p in manager.pull("qwen3:8b", stream=True)]

        statuses = await in_thread(pull)
        self.assertEqual((statuses[0], statuses[-1]), ("pulling manifest", "success"))

    @async_test
    async def test_narrow_key(self) -> None:
        """
        A key limited to one model sees only it in C{list()} and gets a
        403 for another model.
        """
        ollama = sdk("ollama")

        stack, keys = await native_stack(self)
        client = ollama_client(self, stack, keys["narrow"])

        def run():
            listed = [m.model for m in client.list().models]
            try:
                client.chat(model="gemma3:4b", messages=MESSAGES)
            except ollama.ResponseError as e:
                return listed, e.status_code
            return listed, None

        self.assertEqual(await in_thread(run), (["qwen3:8b"], 403))

    @async_test
    async def test_narrow_key_openai_models(self) -> None:
        """
        The OpenAI model list (C{GET /v1/models}) is filtered by the key's
        models too: a narrow key sees the same one model on both APIs.
        """
        stack, keys = await native_stack(self)
        client = stack.openai_client(api_key=keys["narrow"])
        listed = await in_thread(lambda: [m.id for m in client.models.list()])
        self.assertEqual(listed, ["qwen3:8b"])
        wide = stack.openai_client(api_key=keys["plain"])
        self.assertGreater(len(await in_thread(lambda: list(wide.models.list()))), 1)

    @async_test
    async def test_rate_limit(self) -> None:
        """
        Over the key's request limit, the client raises C{ResponseError}
        429 and the response carries C{Retry-After}.
        """
        ollama = sdk("ollama")

        stack, keys = await native_stack(
            self, {"rate_limits": {"per_ip_rate": 0, "per_key_requests": 1,
                                   "per_key_window": 60}})
        client = ollama_client(self, stack, keys["plain"])
        await in_thread(client.list)

        def second():
            try:
                client.list()
            except ollama.ResponseError as e:
                return e.status_code
            return None

        self.assertEqual(await in_thread(second), 429)
        response = await stack.get("/api/tags",
                                   headers={"Authorization": "Bearer " + keys["plain"]})
        self.assertEqual(response.code, 429)
        self.assertGreaterEqual(int(response.headers.getRawHeaders("retry-after")[0]), 1)
        self.assertEqual(list(json.loads(await response.content())), ["error"])

    @async_test
    async def test_keepalive_while_loading(self) -> None:
        """
        While Ollama takes its time before the first chunk (a model
        loading), the gateway's keep-alive lines reach the library as
        empty deltas it reads without complaint, and the answer follows.
        """
        stack, keys = await native_stack(self, {"streaming": {"keepalive_interval": 0.1}})
        stack.script.push(text="Hello there", ttft=0.5, thinking="")
        client = ollama_client(self, stack, keys["plain"])

        def run():
            return list(client.chat(model="qwen3:8b", messages=MESSAGES, stream=True,
                                    think=False))

        parts = await in_thread(run)
        empty = [p for p in parts if not p.done and not p.message.content]
        self.assertGreaterEqual(len(empty), 2)
        self.assertEqual("".join(p.message.content for p in parts), "Hello there")
        self.assertTrue(parts[-1].done)

    @async_test
    async def test_midstream_error_raises(self) -> None:
        """
        Ollama failing mid-stream reaches the client as an Ollama-style
        error line, which the library raises.
        """
        ollama = sdk("ollama")

        stack, keys = await native_stack(self)
        stack.script.push(text="a b c d", error_line_after=1, error="model runner crashed")
        client = ollama_client(self, stack, keys["plain"])

        def run():
            try:
                for _ in client.chat(model="qwen3:8b", messages=MESSAGES, stream=True):
                    pass
            except ollama.ResponseError as e:
                return e.error
            return None

        # The library raises with the gateway's stable text; Ollama's own
        # (which can name paths) goes to the gateway's log only.
        self.assertEqual(await in_thread(run), "the model server failed during generation")


class NativeDisconnectTests(TestCase):
    """
    A native client leaving mid-stream stops Ollama's generation.
    """

    @async_test
    async def test_disconnect_abandons_upstream(self) -> None:
        """
        The client closes its stream after two parts; the emulator sees
        its stream abandoned, never completed.
        """
        stack, keys = await native_stack(self)
        stack.script.push(text=" ".join(["word"] * 100), tokens_per_second=10)
        client = ollama_client(self, stack, keys["plain"])

        def consume():
            stream = client.chat(model="qwen3:8b", messages=MESSAGES, stream=True)
            for i, _ in enumerate(stream):
                if i == 1:
                    break
            stream.close()
            client._client.close()

        await in_thread(consume)
        await wait_for(lambda: stack.record.counters()["streams_abandoned"] >= 1, timeout=2.0)
        self.assertEqual(stack.record.counters()["streams_completed"], 0)


class NativeSlowReaderTests(TestCase):
    """
    Backpressure on the native relay: memory stays flat for a client that
    does not read.
    """

    @async_test
    async def test_slow_reader_bounded(self) -> None:
        """
        While a native client reads nothing, the emulator is paused and
        the gateway's buffers stay under the bound; then every line
        arrives intact, ending with C{done}.
        """
        stack, keys = await native_stack(self)
        body = json.dumps({"model": "qwen3:8b", "messages": MESSAGES,
                           "think": False}).encode()
        response, expected = await slow_read(
            self, stack, b"/api/chat", body,
            b"Authorization: Bearer %s\r\n" % (keys["plain"].encode(),))
        self.assertTrue(response.complete)
        lines = [json.loads(line) for line in response.body.splitlines()]
        self.assertIs(lines[-1]["done"], True)
        text = "".join(line["message"]["content"] for line in lines)
        self.assertEqual(text, expected)
