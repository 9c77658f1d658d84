"""
Tests for L{qwen_twist.emulator.script}: the behaviour script data model.
"""

from __future__ import annotations

import json
import math

from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.emulator.script import (
    AUTO,
    DEFAULT_MODELS,
    Behaviour,
    Fault,
    ModelName,
    ModelSpec,
    Script,
    ScriptError,
    default_answer,
    embedding_vector,
    rough_token_count,
    split_tokens,
    split_words,
    validate_layer,
)


class ModelNameTests(SynchronousTestCase):
    """
    Ollama's model-name rules.
    """

    def test_tag_defaults_to_latest(self) -> None:
        """
        A name without a tag means C{:latest} in the default registry and
        namespace.
        """
        name = ModelName.parse("qwen3")
        self.assertEqual(name.full(), "registry.ollama.ai/library/qwen3:latest")
        self.assertEqual(name.display(), "qwen3:latest")

    def test_namespace_and_host(self) -> None:
        """
        C{user/model} keeps its namespace; a host-qualified name (Hugging
        Face) is shown in full.
        """
        self.assertEqual(ModelName.parse("user/m:1b").display(), "user/m:1b")
        hf = ModelName.parse("hf.co/bartowski/Qwen2.5-7B-GGUF:Q4_K_M")
        self.assertEqual(hf.host, "hf.co")
        self.assertEqual(hf.display(), "hf.co/bartowski/Qwen2.5-7B-GGUF:Q4_K_M")

    def test_invalid_names(self) -> None:
        """
        Empty names, empty tags and too many path parts are not model names.
        """
        for bad in ("", "a:", "a/b/c/d", ":tag", "bad name"):
            self.assertIsNone(ModelName.parse(bad), bad)

    def test_lookup_is_case_insensitive(self) -> None:
        """
        Like Ollama, C{Qwen3:8B} finds C{qwen3:8b}, and C{qwen3} does not
        find C{qwen3:8b} (it means C{qwen3:latest}).
        """
        script = Script()
        self.assertEqual(script.find_model("Qwen3:8B").name, "qwen3:8b")
        self.assertIsNone(script.find_model("qwen3"))
        self.assertEqual(script.find_model("nomic-embed-text").name, "nomic-embed-text:latest")
        self.assertIsNone(script.find_model(42))


class ScriptLoadingTests(SynchronousTestCase):
    """
    L{Script.from_dict} and friends.
    """

    def test_defaults(self) -> None:
        """
        An empty script has the default models, version 0.33.0, and an empty
        default behaviour.
        """
        script = Script.from_dict({})
        self.assertEqual(script.models, list(DEFAULT_MODELS))
        self.assertEqual(script.version, "0.33.0")
        self.assertEqual(script.default, Behaviour())
        self.assertEqual([m.name for m in script.loaded_models()], ["qwen3:8b"])

    def test_models(self) -> None:
        """
        Model entries are validated, names normalised with their tag, and
        unset fields defaulted; an explicit empty list means no models.
        """
        script = Script.from_dict({"models": [
            {"name": "m", "capabilities": ["completion", "tools"], "embedding_length": 4,
             "family": "qwen3", "loaded": True},
        ]})
        (spec,) = script.models
        self.assertEqual(spec.name, "m:latest")
        self.assertEqual(spec.capabilities, ("completion", "tools"))
        self.assertEqual(spec.embedding_length, 4)
        self.assertEqual(spec.details()["families"], ["qwen3"])
        self.assertTrue(script.is_loaded(spec))
        self.assertEqual(Script.from_dict({"models": []}).models, [])

    def test_errors_name_the_key(self) -> None:
        """
        Invalid scripts raise L{ScriptError} whose path names the offending
        key.
        """
        cases = [
            ({"modles": []}, "modles"),
            ({"models": [{"capabilities": []}]}, "models[0].name"),
            ({"models": [{"name": "bad name"}]}, "models[0].name"),
            ({"models": [{"name": "m", "size": "big"}]}, "models[0].size"),
            ({"default": {"tokens": "5"}}, "default.tokens"),
            ({"default": {"tokens": True}}, "default.tokens"),
            ({"default": {"ttft": -1}}, "default.ttft"),
            ({"default": {"tokens_per_second": "fast"}}, "default.tokens_per_second"),
            ({"default": {"close_after": 1, "hang_after": 2}}, "default.close_after"),
            ({"default": {"error": "x"}}, "default.error"),
            ({"default": {"http_status": 200}}, "default.http_status"),
            ({"default": {"hang_before_headers": 1}}, "default.hang_before_headers"),
            ({"default": {"tool_calls": [{"arguments": {}}]}}, "default.tool_calls[0].name"),
            ({"default": {"tool_calls": [{"name": "f", "arguments": "{}"}]}},
             "default.tool_calls[0].arguments"),
            ({"default": {"embeddings": [[1, "x"]]}}, "default.embeddings[0][1]"),
            ({"per_model": {"bad name": {}}}, "per_model.bad name"),
            ({"queue": [{}, {"txt": "x"}]}, "queue[1].txt"),
            ({"seed": -1}, "seed"),
        ]
        for data, path in cases:
            error = self.assertRaises(ScriptError, Script.from_dict, data)
            self.assertEqual(error.path, path, data)

    def test_from_json(self) -> None:
        """
        L{Script.from_json} parses JSON text; malformed JSON is a
        L{ScriptError}.
        """
        script = Script.from_json('{"version": "0.9.0"}')
        self.assertEqual(script.version, "0.9.0")
        self.assertRaises(ScriptError, Script.from_json, "{")

    def test_round_trip(self) -> None:
        """
        L{Script.to_dict} gives data that rebuilds an equivalent script.
        """
        data = {
            "version": "0.12.0",
            "seed": 3,
            "models": [{"name": "qwen3:8b", "capabilities": ["completion", "thinking"]}],
            "default": {"text": "hi", "tokens": 2, "ttft": 0.5, "tokens_per_second": 10,
                        "tool_calls": [{"name": "f", "arguments": {"a": 1}, "id": None}],
                        "embeddings": [[0.5, -1.0]], "http_status": 503},
            "per_model": {"qwen3:8b": {"thinking": "", "error_line_after": 2, "error": "boom"}},
            "queue": [{"hang_after": 1}, {"hang_before_headers": True}],
        }
        script = Script.from_dict(data)
        again = Script.from_dict(json.loads(json.dumps(script.to_dict())))
        self.assertEqual(again.to_dict(), script.to_dict())
        self.assertEqual(again.default.fault, Fault(
            "http_status", status=503,
            error="server busy, please try again.  maximum pending requests exceeded"))


class BehaviourLayerTests(SynchronousTestCase):
    """
    Default, per-model and queued behaviour layers.
    """

    def setUp(self) -> None:
        self.script = Script.from_dict({
            "default": {"text": "default", "tokens_per_second": 5},
            "per_model": {"qwen3:8b": {"text": "model", "hang_after": 3}},
        })
        self.qwen = self.script.find_model("qwen3:8b")
        self.gemma = self.script.find_model("gemma3:4b")

    def test_per_model_override(self) -> None:
        """
        A model's layer replaces only the keys it names.
        """
        behaviour = self.script.behaviour_for(self.qwen)
        self.assertEqual(behaviour.text, "model")
        self.assertEqual(behaviour.tokens_per_second, 5)
        self.assertEqual(behaviour.fault, Fault("hang_after", after=3,
                                                error="an error was encountered while "
                                                      "running the model"))
        self.assertEqual(self.script.behaviour_for(self.gemma).text, "default")

    def test_queue_is_fifo_and_one_shot(self) -> None:
        """
        Pushed layers apply to the next requests in order, once each, on
        top of the model's layer.
        """
        self.script.push(text="first")
        self.script.push({"close_after": 1})
        self.assertEqual(self.script.pending, 2)
        first = self.script.behaviour_for(self.gemma)
        self.assertEqual(first.text, "first")
        second = self.script.behaviour_for(self.qwen)
        self.assertEqual(second.text, "model")
        self.assertEqual(second.fault.kind, "close_after")
        self.assertEqual(self.script.pending, 0)
        self.assertEqual(self.script.behaviour_for(self.gemma).text, "default")

    def test_fault_keys_replace_lower_faults(self) -> None:
        """
        A layer that mentions any fault key, even as C{null}, replaces the
        fault below it.
        """
        self.script.push(hang_after=None)
        self.assertIsNone(self.script.behaviour_for(self.qwen).fault)

    def test_invalid_push_queues_nothing(self) -> None:
        """
        An invalid layer raises and leaves the queue as it was.
        """
        self.assertRaises(ScriptError, self.script.push, tokens=-1)
        self.assertEqual(self.script.pending, 0)

    def test_tool_call_shapes(self) -> None:
        """
        Tool calls accept the short shape and the native one; C{id}/C{index}
        default to automatic, C{null} drops them.
        """
        layer = validate_layer({"tool_calls": [
            {"name": "a", "arguments": {"x": 1}},
            {"id": "call_a1", "function": {"index": 7, "name": "b", "arguments": {}}},
            {"name": "c", "id": None, "index": None},
        ]})
        a, b, c = layer["tool_calls"]
        self.assertEqual((a.id, a.index, a.arguments), (AUTO, AUTO, {"x": 1}))
        self.assertEqual((b.id, b.index, b.name), ("call_a1", 7, "b"))
        self.assertEqual((c.id, c.index), (None, None))


class TokenTests(SynchronousTestCase):
    """
    Splitting answers into chunks.
    """

    def test_words_keep_whitespace(self) -> None:
        """
        Word pieces carry the whitespace before them, and join back to the
        original text exactly.
        """
        text = "Hello  world,\nhow are you? "
        pieces = split_words(text)
        self.assertEqual(pieces, ("Hello", "  world,", "\nhow", " are", " you? "))
        self.assertEqual("".join(pieces), text)
        self.assertEqual(split_words(""), ())
        self.assertEqual(split_words("   "), ("   ",))

    def test_fewer_tokens_than_words(self) -> None:
        """
        A token count below the word count groups words evenly; the text is
        unchanged.
        """
        pieces = split_tokens("a b c d e", 2)
        self.assertEqual(len(pieces), 2)
        self.assertEqual("".join(pieces), "a b c d e")

    def test_more_tokens_than_words(self) -> None:
        """
        A token count above the word count cuts the text into slices, and
        above the character count cycles the words, a space before each
        repetition.
        """
        self.assertEqual(split_tokens("Hi there", 4), ("Hi", " t", "he", "re"))
        self.assertEqual(split_tokens("Hi there", 10),
                         ("Hi", " there", " Hi", " there", " Hi", " there", " Hi", " there",
                          " Hi", " there"))
        self.assertEqual(split_tokens("", 3), ("", "", ""))
        self.assertEqual(split_tokens("a b", 0), ())

    def test_rough_token_count(self) -> None:
        """
        About four characters per token, never zero.
        """
        self.assertEqual(rough_token_count(""), 1)
        self.assertEqual(rough_token_count("abcdefgh"), 2)


class TextAndVectorTests(SynchronousTestCase):
    """
    The default answer and the embedding vectors.
    """

    def test_default_answer_quotes_the_prompt(self) -> None:
        """
        The default answer repeats the user's message (whitespace collapsed,
        long messages cut).
        """
        self.assertEqual(default_answer("Hi\n there"),
                         "Hello from the qwengate Ollama emulator. You said: Hi there")
        self.assertEqual(default_answer(""), "Hello from the qwengate Ollama emulator.")
        self.assertTrue(default_answer("x" * 500).endswith("x..."))

    def test_vectors_are_deterministic_unit_vectors(self) -> None:
        """
        Equal texts give equal vectors of the model's dimension and unit
        length; different texts differ.
        """
        a = embedding_vector("a", 16)
        self.assertEqual(a, embedding_vector("a", 16))
        self.assertNotEqual(a, embedding_vector("b", 16))
        self.assertEqual(len(a), 16)
        self.assertAlmostEqual(math.sqrt(sum(v * v for v in a)), 1.0, places=6)

    def test_dimensions_truncate_and_renormalise(self) -> None:
        """
        C{dimensions} keeps the leading components, re-normalised; values
        outside 1..dimension change nothing.
        """
        full = embedding_vector("text", 8)
        short = embedding_vector("text", 8, dimensions=3)
        self.assertEqual(len(short), 3)
        self.assertAlmostEqual(math.sqrt(sum(v * v for v in short)), 1.0, places=6)
        scale = short[0] / full[0]
        for s, f in zip(short, full):
            self.assertAlmostEqual(s, f * scale, places=6)
        self.assertEqual(embedding_vector("text", 8, dimensions=99), full)

    def test_model_spec_round_trip(self) -> None:
        """
        L{ModelSpec.to_dict} rebuilds the same spec.
        """
        for spec in DEFAULT_MODELS:
            self.assertEqual(ModelSpec.from_dict(spec.to_dict()), spec)
