# -*- test-case-name: tests.emulator.test_manage -*-
"""
Ollama's model management endpoints (C{/api/pull}, C{/api/push},
C{/api/create}, C{/api/copy}, C{/api/delete}, C{/api/blobs/:digest}) and
the legacy C{/api/embeddings}, as the gateway's tests need them.

What is exact, from Ollama's C{server/routes.go}, C{server/images.go} and
C{server/create.go}: the methods, the progress lines (C{{"status": ...}},
a layer's with C{digest}, C{total} and C{completed}) ending with
C{{"status":"success"}} or an C{{"error": ...}} line, C{stream: false}
answering the last progress object alone, C{delete} and C{copy}
answering 200 with an empty body, blob uploads 201, and the error texts.
What is not: nothing is downloaded or written; a pull succeeds for a
model the script has and fails (after C{pulling manifest}, as Ollama's
registry lookup would) for any other, and C{create} and C{copy} add a
model to the script (C{delete} removes it), so C{/api/tags} shows the
change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any, Dict, List

from qwen_twist.emulator.fields import check_options
from qwen_twist.emulator.script import ModelName, Script, embedding_vector
from qwen_twist.emulator.stream import reply
from qwen_twist.emulator.wire import NDJSON_TYPE, Refusal, dumps, go_quote

__all__ = ["ModelManagement"]

_DIGEST = re.compile(r"sha256[:-][0-9a-f]{64}")


def _progress(lines: List[Dict[str, Any]]) -> bytes:
    return b"".join(dumps(line) + b"\n" for line in lines)


class ModelManagement:
    """
    The management handlers over one L{Script} (shared with
    L{qwen_twist.emulator.api.OllamaApi}, whose C{script} may be replaced).
    """

    def __init__(self, api: Any) -> None:
        self._api = api
        #: Digests of blobs uploaded with C{POST /api/blobs/:digest}.
        self.blobs: set = set()

    @property
    def script(self) -> Script:
        return self._api.script

    def routes(self) -> Dict[bytes, Dict[bytes, Any]]:
        return {
            b"/api/pull": {b"POST": self.pull},
            b"/api/push": {b"POST": self.push},
            b"/api/create": {b"POST": self.create},
            b"/api/copy": {b"POST": self.copy},
            b"/api/delete": {b"DELETE": self.delete},
            b"/api/embeddings": {b"POST": self.embeddings},
        }

    def blob_routes(self) -> Dict[bytes, Any]:
        """
        C{/api/blobs/:digest}, by method (the path is matched by prefix).
        """
        return {b"HEAD": self.head_blob, b"POST": self.create_blob}

    # helpers

    @staticmethod
    def _name(body: Any) -> str:
        if body is None:
            raise Refusal(400, "missing request body")
        if not isinstance(body, dict):
            raise Refusal(400, "json: cannot unmarshal array into Go value of type api.PullRequest")
        name = body.get("model") or body.get("name") or ""
        if not isinstance(name, str):
            raise Refusal(400, "json: cannot unmarshal number into Go struct field "
                               "PullRequest.model of type string")
        return name

    @staticmethod
    def _answer(request: Any, body: Any, lines: List[Dict[str, Any]]) -> bytes:
        """
        A progress stream, or (C{stream: false}) the last progress object
        alone; a trailing error is the stream's last line, or the whole
        answer with status 500 when not streaming.
        """
        if body.get("stream") is False:
            last = lines[-1]
            if "error" in last:
                return reply(request, 500, dumps(last))
            return reply(request, 200, dumps(last))
        return reply(request, 200, _progress(lines), NDJSON_TYPE)

    @staticmethod
    def _layer(verb: str, digest: str, size: int) -> List[Dict[str, Any]]:
        full = "sha256:" + digest
        return [
            {"status": "%s %s" % (verb, digest[:12]), "digest": full, "total": size},
            {"status": "%s %s" % (verb, digest[:12]), "digest": full, "total": size,
             "completed": size},
        ]

    # endpoints

    def pull(self, request: Any, body: Any) -> bytes:
        name = self._name(body)
        if ModelName.parse(name) is None:
            raise Refusal(400, "invalid model name")
        return self._transfer(
            request, body, name, "pulling", "pulling manifest",
            "pull model manifest: file does not exist",
            ["verifying sha256 digest", "writing manifest"])

    def push(self, request: Any, body: Any) -> bytes:
        name = self._name(body)
        if not name:
            raise Refusal(400, "model is required")
        return self._transfer(
            request, body, name, "pushing", "retrieving manifest",
            "open manifest: no such file or directory", ["pushing manifest"])

    def _transfer(self, request: Any, body: Any, name: str, verb: str, first: str,
                  missing: str, closing: List[str]) -> bytes:
        """
        A pull's or push's progress: the manifest step, the model's layer
        (or the error for a model there is none of), the closing steps and
        C{success}.
        """
        lines: List[Dict[str, Any]] = [{"status": first}]
        spec = self.script.find_model(name)
        if spec is None:
            lines.append({"error": missing})
        else:
            lines += self._layer(verb, spec.model_digest, spec.size)
            lines += [{"status": status} for status in closing + ["success"]]
        return self._answer(request, body, lines)

    def create(self, request: Any, body: Any) -> bytes:
        name = self._name(body)
        parsed = ModelName.parse(name)
        if parsed is None:
            raise Refusal(400, "invalid model name")
        base = body.get("from")
        files = body.get("files")
        if not base and not files:
            return self._answer(request, body, [
                {"error": "neither 'from' or 'files' was specified"}])
        lines: List[Dict[str, Any]] = [{"status": "gathering model components"}]
        template = self.script.find_model(base) if isinstance(base, str) and base else None
        if base and template is None:
            lines.append({"error": "model %s not found" % (go_quote(base),)})
            return self._answer(request, body, lines)
        if template is not None:
            lines.append({"status": "using existing layer sha256:" + template.model_digest})
        lines += [{"status": "writing manifest"}, {"status": "success"}]
        self._add(name, template)
        return self._answer(request, body, lines)

    def copy(self, request: Any, body: Any) -> bytes:
        if body is None:
            raise Refusal(400, "missing request body")
        source = body.get("source") or ""
        destination = body.get("destination") or ""
        if ModelName.parse(source) is None:
            raise Refusal(400, "source %s is invalid" % (go_quote(source),))
        if ModelName.parse(destination) is None:
            raise Refusal(400, "destination %s is invalid" % (go_quote(destination),))
        spec = self.script.find_model(source)
        if spec is None:
            raise Refusal(404, "model %s not found" % (go_quote(source),))
        self._add(destination, spec)
        return reply(request, 200, b"")

    def delete(self, request: Any, body: Any) -> bytes:
        name = self._name(body)
        if ModelName.parse(name) is None:
            raise Refusal(400, "name %s is invalid" % (go_quote(name),))
        spec = self.script.find_model(name)
        if spec is None:
            raise Refusal(404, "model '%s' not found" % (name,))
        self.script.remove_model(spec)
        return reply(request, 200, b"")

    def embeddings(self, request: Any, body: Any) -> bytes:
        """
        The legacy C{/api/embeddings}: one C{prompt}, one C{embedding}.
        """
        if body is None:
            raise Refusal(400, "missing request body")
        model = body.get("model") or ""
        if not isinstance(model, str) or not model:
            raise Refusal(400, "model is required")
        spec = self.script.find_model(model)
        if spec is None:
            raise Refusal(404, "model %s not found, try pulling it first" % (go_quote(model),))
        check_options(body.get("options"))
        self.script.set_loaded(spec)
        prompt = body.get("prompt") or ""
        if not prompt:
            return reply(request, 200, dumps({"embedding": []}))
        return reply(request, 200, dumps({
            "embedding": embedding_vector(prompt, spec.embedding_length)}))

    def head_blob(self, request: Any, body: Any) -> bytes:
        digest = self._digest(request)
        if digest not in self.blobs:
            raise Refusal(404, "blob %s not found" % (go_quote(digest),))
        return reply(request, 200, b"")

    def create_blob(self, request: Any, body: Any) -> bytes:
        digest = self._digest(request)
        if digest in self.blobs:
            return reply(request, 200, b"")
        request.content.seek(0)
        data = request.content.read()
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest.replace("-", ":", 1):
            raise Refusal(400, "digest mismatch, expected %s, got %s" % (
                go_quote(digest), go_quote("sha256:" + hashlib.sha256(data).hexdigest())))
        self.blobs.add(digest)
        return reply(request, 201, b"")

    @staticmethod
    def _digest(request: Any) -> str:
        digest = request.path[len(b"/api/blobs/"):].decode("utf-8", "replace")
        if not _DIGEST.fullmatch(digest):
            raise Refusal(400, "invalid digest format")
        return digest

    def _add(self, name: str, template: Any) -> None:
        parsed = ModelName.parse(name)
        assert parsed is not None
        if self.script.find_model(name) is not None:
            return
        base = template if template is not None else self.script.models[0]
        self.script.add_model(dataclasses.replace(
            base, name=parsed.display(), loaded=False,
            digest=hashlib.sha256(name.encode("utf-8")).hexdigest()))
