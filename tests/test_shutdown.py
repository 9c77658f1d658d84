"""
SIGTERM end to end: a real gateway process (twistd) in front of a real
emulator process, clients on real TLS sockets, and C{kill -TERM} while
answers are on their way. Every answer must arrive whole: the last token,
the finish chunk and C{[DONE]} for a stream, the whole body otherwise.

Why processes: the defect this guards against happened after the
pipeline had finished a call, between the last C{write} and the reactor
stopping (bytes still in the TLS and transport buffers), which no
in-process test with a memory transport can see.
"""

from __future__ import annotations

import http.client
import json
import signal
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

from twisted.trial.unittest import SynchronousTestCase

from bench.processes import Emulator, Gateway

#: Tokens per answer and their pace: four seconds of streaming, SIGTERM
#: after one.
TOKENS = 40
PACE = 10


def _connection(gateway: Gateway) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=gateway.cafile)
    return http.client.HTTPSConnection(gateway.host, gateway.port, timeout=30,
                                       context=context)


def chat(gateway: Gateway, stream: bool, result: Dict[str, Any]) -> None:
    """
    One chat completion; records the status, the raw body and whether the
    body arrived complete (http.client raises IncompleteRead otherwise).
    """
    body = json.dumps({"model": "qwen3:8b", "stream": stream, "max_tokens": TOKENS,
                       "messages": [{"role": "user", "content": "count"}]})
    try:
        conn = _connection(gateway)
        conn.request("POST", "/v1/chat/completions", body,
                      {"Content-Type": "application/json", "Host": "localhost"})
        response = conn.getresponse()
        result["status"] = response.status
        result["body"] = response.read()
        result["complete"] = True
        conn.close()
    except Exception as e:  # recorded for the assertion message
        result["error"] = repr(e)


class SigtermTests(SynchronousTestCase):
    """
    C{systemctl stop} during answers cuts nothing.
    """

    def setUp(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="qwengate-shutdown-"))
        self.emulator = Emulator(self.workdir, python=sys.executable)
        self.emulator.argv += ["--tokens-per-second", str(PACE),
                               "--text", " ".join("word%d" % (i,) for i in range(200))]
        self.emulator.start()
        self.addCleanup(self.emulator.stop)
        self.gateway = Gateway(self.workdir, self.emulator.url, python=sys.executable,
                               overrides={"lifecycle": {"drain_timeout": 30}})
        self.gateway.start()
        self.addCleanup(self.gateway.stop)

    def test_answers_in_flight_arrive_whole(self) -> None:
        """
        Two streams and one non-streaming call are in flight when the
        gateway gets SIGTERM one second in: all three arrive complete (the
        stream with every token, its finish chunk and C{[DONE]}), and the
        process then exits 0.
        """
        results: List[Dict[str, Any]] = [{}, {}, {}]
        threads = [
            threading.Thread(target=chat, args=(self.gateway, True, results[0])),
            threading.Thread(target=chat, args=(self.gateway, True, results[1])),
            threading.Thread(target=chat, args=(self.gateway, False, results[2])),
        ]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        self.gateway.proc.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(60)
        # twistd re-raises the signal it stopped on, to exit "killed by
        # SIGTERM" as a shell expects; either way it stopped by itself.
        self.assertIn(self.gateway.proc.wait(60), (0, -signal.SIGTERM))
        for result in results[:2]:
            self.assertTrue(result.get("complete"), result.get("error"))
            self.assertEqual(result["status"], 200)
            events = [line[len(b"data: "):] for line in result["body"].split(b"\n")
                      if line.startswith(b"data: ")]
            self.assertEqual(events[-1], b"[DONE]")
            chunks = [json.loads(e) for e in events[:-1]]
            self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "length")
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
            self.assertTrue(text)
        final = results[2]
        self.assertTrue(final.get("complete"), final.get("error"))
        self.assertEqual(final["status"], 200)
        answer = json.loads(final["body"])
        self.assertEqual(answer["choices"][0]["finish_reason"], "length")
        self.assertEqual(answer["usage"]["completion_tokens"], TOKENS)
