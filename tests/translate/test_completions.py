"""
Tests for L{qwen_twist.translate.completions}: reference sections 5.2 and
6.2, test vector TV-35.
"""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.errors import ApiError
from qwen_twist.translate.completions import (
    MAX_PROMPTS,
    completion_batch_response,
    completion_request,
    completion_response,
    legacy_logprobs,
)
from qwen_twist.translate.validate import ALLOWED_OPTIONS

NOW = 1_800_000_000


def upstream(**fields) -> dict:
    """
    The native payload for a completions body made of C{fields}.
    """
    body = {"model": "m", "prompt": "p"}
    body.update(fields)
    return completion_request(body).payload


class CompletionRequestTests(SynchronousTestCase):
    """
    Section 5.2.
    """

    def assertRejected(self, body, param):
        """
        C{completion_request(body)} is a 400 naming C{param}.
        """
        error = self.assertRaises(ApiError, completion_request, body)
        self.assertEqual((error.status, error.type, error.param), (400, "invalid_request_error", param),
                         (body, error.message))

    def test_tv35_exact_body(self):
        """
        TV-35: the exact upstream body, with C{raw:false} and C{think:false}.
        """
        request = completion_request({"model": "qwen2.5:7b", "prompt": "Say hi", "max_tokens": 5})
        self.assertEqual(
            request.payload,
            {"model": "qwen2.5:7b", "prompt": "Say hi", "stream": False, "raw": False,
             "think": False, "options": {"num_predict": 5}},
        )
        self.assertEqual(
            (request.path, request.model, request.stream, request.include_usage,
             request.prompt_chars, request.max_tokens),
            ("/api/generate", "qwen2.5:7b", False, False, 6, 5),
        )

    def test_minimal_has_no_options(self):
        """
        Without sampling fields nothing is injected (rule R3), yet C{think}
        and C{raw} are always false.
        """
        self.assertEqual(
            upstream(),
            {"model": "m", "prompt": "p", "stream": False, "raw": False, "think": False},
        )

    def test_client_think_ignored(self):
        """
        The legacy API has no place for reasoning: C{think} stays false even
        if the client asks for it.
        """
        self.assertIs(upstream(think=True)["think"], False)

    def test_prompt_forms(self):
        """
        A string or a one-string array is the prompt; an empty prompt is
        allowed (Ollama answers it as a load).
        """
        self.assertEqual(upstream(prompt=["only"])["prompt"], "only")
        self.assertEqual(upstream(prompt="")["prompt"], "")

    def test_prompt_errors(self):
        """
        Missing prompts, mixtures, token arrays without a decoder and
        too many prompts are 400s on C{prompt}.
        """
        for prompt in (None, [1, 2, 3], [[1, 2]], [], 5, {"text": "x"}, ["a", 1],
                       [[1], "a"], [-1], [True], ["a"] * (MAX_PROMPTS + 1)):
            self.assertRejected({"model": "m", "prompt": prompt}, "prompt")

    def test_several_prompts(self):
        """
        Several prompts (LangChain's C{OpenAI().batch([a, b])}) become one
        native payload each, the same but for C{prompt}; the counts cover
        them all; streaming several is a 400.
        """
        request = completion_request({"model": "m", "prompt": ["a", "bb"], "max_tokens": 4})
        self.assertEqual([p["prompt"] for p in request.batch], ["a", "bb"])
        self.assertEqual(request.batch[1], dict(request.payload, prompt="bb"))
        self.assertEqual((request.prompt_chars, request.max_tokens), (3, 8))
        self.assertEqual(completion_request({"model": "m", "prompt": ["a"]}).batch, ())
        self.assertRejected({"model": "m", "prompt": ["a", "b"], "stream": True}, "prompt")

    def test_token_prompts(self):
        """
        Token-array prompts are decoded with the decoder given; without
        one the 400 says to send text.
        """
        def decoder(ids):
            return "".join(chr(96 + i) for i in ids)

        request = completion_request({"model": "m", "prompt": [1, 2]}, decoder)
        self.assertEqual((request.payload["prompt"], request.batch), ("ab", ()))
        request = completion_request({"model": "m", "prompt": [[1], [2, 3]]}, decoder)
        self.assertEqual([p["prompt"] for p in request.batch], ["a", "bc"])
        error = self.assertRaises(ApiError, completion_request, {"model": "m", "prompt": [1]})
        self.assertIn("send the prompt as text", error.message)

    def test_sampling_and_suffix(self):
        """
        Sampling fields go into options as for chat; C{suffix} is forwarded
        and counted in C{prompt_chars}.
        """
        request = completion_request({
            "model": "m", "prompt": "def f(", "suffix": "\n    return x", "temperature": 0,
            "top_p": 0.9, "seed": 1, "stop": ["\n\n"], "frequency_penalty": 0.1,
            "presence_penalty": -0.1, "stream": True,
            "stream_options": {"include_usage": True}, "user": "u",
        })
        self.assertEqual(
            request.payload,
            {"model": "m", "prompt": "def f(", "stream": True, "raw": False, "think": False,
             "suffix": "\n    return x",
             "options": {"temperature": 0, "top_p": 0.9, "seed": 1, "stop": ["\n\n"],
                         "frequency_penalty": 0.1, "presence_penalty": -0.1}},
        )
        self.assertEqual((request.stream, request.include_usage, request.prompt_chars),
                         (True, True, 6 + 13 + 2))

    def test_logprobs(self):
        """
        An integer C{logprobs} N>0 becomes C{logprobs:true, top_logprobs:N};
        0 sends nothing; above 5 or a boolean is a 400.
        """
        payload = upstream(logprobs=3)
        self.assertEqual((payload["logprobs"], payload["top_logprobs"]), (True, 3))
        self.assertNotIn("logprobs", upstream(logprobs=0))
        for value in (6, -1, True, "3"):
            self.assertRejected({"model": "m", "prompt": "p", "logprobs": value}, "logprobs")

    def test_unsupported_features(self):
        """
        C{echo:true}, C{best_of>1} and C{n>1} are 400s naming the field;
        their neutral values are accepted and not forwarded.
        """
        rows = [({"echo": True}, "echo"), ({"best_of": 2}, "best_of"), ({"n": 3}, "n"),
                ({"echo": "yes"}, "echo")]
        for fields, param in rows:
            body = {"model": "m", "prompt": "p"}
            body.update(fields)
            self.assertRejected(body, param)
        payload = upstream(echo=False, best_of=1, n=1)
        for key in ("echo", "best_of", "n"):
            self.assertNotIn(key, payload)

    def test_field_errors(self):
        """
        Wrong types are 400s naming the field.
        """
        rows = [
            ([], None),
            ({"prompt": "p"}, "model"),
            ({"model": "m", "prompt": "p", "max_tokens": 0}, "max_tokens"),
            ({"model": "m", "prompt": "p", "suffix": 1}, "suffix"),
            ({"model": "m", "prompt": "p", "stop": [1]}, "stop"),
            ({"model": "m", "prompt": "p", "temperature": "1"}, "temperature"),
            ({"model": "m", "prompt": "p", "keep_alive": []}, "keep_alive"),
        ]
        for body, param in rows:
            self.assertRejected(body, param)

    def test_extensions(self):
        """
        C{keep_alive}, C{options}, C{num_ctx} and C{top_k} are forwarded as
        for chat.
        """
        payload = upstream(keep_alive=0, options={"repeat_penalty": 1.1}, num_ctx=4096, top_k=5)
        self.assertEqual(payload["keep_alive"], 0)
        self.assertEqual(payload["options"], {"repeat_penalty": 1.1, "num_ctx": 4096, "top_k": 5})

    @settings(max_examples=200, deadline=None, derandomize=True, database=None)
    @given(st.dictionaries(
        st.sampled_from(["model", "prompt", "suffix", "max_tokens", "stop", "logprobs",
                         "echo", "best_of", "n", "stream", "stream_options", "options",
                         "temperature", "keep_alive"]),
        st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                     max_leaves=6),
    ))
    def test_only_api_errors(self, body):
        """
        Arbitrary bodies either fail with a 400 L{ApiError} or produce a
        payload with explicit C{stream}, C{raw:false}, C{think:false} and
        only native option keys.
        """
        body.setdefault("model", "m")
        try:
            request = completion_request(body)
        except ApiError as error:
            self.assertEqual(error.status, 400)
            return
        payload = request.payload
        self.assertIsInstance(payload["stream"], bool)
        self.assertEqual((payload["raw"], payload["think"]), (False, False))
        self.assertLessEqual(set(payload.get("options", {})), ALLOWED_OPTIONS)


class CompletionResponseTests(SynchronousTestCase):
    """
    Section 6.2.
    """

    def respond(self, native):
        return completion_response(native, model="qwen2.5:7b", completion_id="cmpl-abc", now=NOW)

    def test_tv35_response(self):
        """
        TV-35: the complete C{text_completion} object.
        """
        native = {"model": "qwen2.5:7b", "created_at": "2025-01-01T00:00:00Z", "response": "Hi!",
                  "done": True, "done_reason": "stop", "prompt_eval_count": 3, "eval_count": 2}
        self.assertEqual(
            self.respond(native),
            {"id": "cmpl-abc", "object": "text_completion", "created": 1735689600,
             "model": "qwen2.5:7b",
             "choices": [{"text": "Hi!", "index": 0, "logprobs": None, "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}},
        )

    def test_thinking_discarded_and_length(self):
        """
        C{thinking} never reaches the text; C{length} is kept; C{load} is
        C{stop}.
        """
        choice = self.respond({"response": "Once", "thinking": "hmm",
                               "done_reason": "length"})["choices"][0]
        self.assertEqual((choice["text"], choice["finish_reason"]), ("Once", "length"))
        self.assertEqual(self.respond({"response": "", "done_reason": "load"})["choices"][0]
                         ["finish_reason"], "stop")

    def test_missing_fields(self):
        """
        A reply without C{response} or counts gives empty text, zero usage
        and the gateway clock.
        """
        response = self.respond({"done": True})
        self.assertEqual((response["choices"][0]["text"], response["created"]), ("", NOW))
        self.assertEqual(response["usage"],
                         {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})

    def test_logprobs(self):
        """
        Native logprobs become the legacy shape with text offsets.
        """
        native = {"response": "Hi!", "logprobs": [
            {"token": "Hi", "logprob": -0.5,
             "top_logprobs": [{"token": "Hi", "logprob": -0.5}, {"token": "Hey", "logprob": -1.5}]},
            {"token": "!", "logprob": -0.1},
        ]}
        self.assertEqual(
            self.respond(native)["choices"][0]["logprobs"],
            {"tokens": ["Hi", "!"], "token_logprobs": [-0.5, -0.1],
             "top_logprobs": [{"Hi": -0.5, "Hey": -1.5}, {}], "text_offset": [0, 2]},
        )
        self.assertIsNone(legacy_logprobs([]))
        self.assertIsNone(legacy_logprobs(None))

    def test_non_object_reply(self):
        """
        A non-object reply is a 502.
        """
        error = self.assertRaises(ApiError, self.respond, "text")
        self.assertEqual(error.status, 502)


class CompletionBatchResponseTests(SynchronousTestCase):
    """
    Several prompts answered as one C{text_completion}.
    """

    def test_one_choice_per_prompt(self):
        """
        One choice per prompt with its C{index}, in order; usage summed.
        """
        natives = [
            {"response": "A", "done": True, "done_reason": "stop",
             "prompt_eval_count": 2, "eval_count": 1},
            {"response": "B", "done": True, "done_reason": "length",
             "prompt_eval_count": 3, "eval_count": 4},
        ]
        result = completion_batch_response(natives, model="m", completion_id="cmpl-1", now=7)
        self.assertEqual(
            [(c["index"], c["text"], c["finish_reason"]) for c in result["choices"]],
            [(0, "A", "stop"), (1, "B", "length")],
        )
        self.assertEqual(result["usage"],
                         {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10})
        self.assertEqual((result["id"], result["model"]), ("cmpl-1", "m"))
