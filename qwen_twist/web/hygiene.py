# -*- test-case-name: tests.web.test_hygiene -*-
"""
Response hygiene as plain data: the security headers every response
carries and the removal of JSON fields the operator does not want to
expose (C{response.strip_fields}).

Why a separate pure module: both are decided once from the configuration
and then applied to every response, so the work per response must be a
loop over precomputed bytes or a walk over a precomputed tree, nothing that
parses configuration again. Nothing here knows about Twisted.

Stripping applies to JSON bodies written whole (C{respond.json_body}). An
SSE stream is written as byte templates by the stream translator, which
never builds the objects; L{strip_sse} can filter such a stream, at the
price of parsing and re-serialising every event, and is meant to be used
only when fields are configured.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterable, Optional, Tuple

Header = Tuple[bytes, bytes]

#: A compiled set of field paths: each key maps to L{None} (remove this
#: field) or to the tree for the fields below it.
StripTree = Dict[str, Optional["StripTree"]]


def security_headers(hsts_max_age: int) -> Tuple[Header, ...]:
    """
    The headers set on every response, as raw bytes.

    C{Cache-Control: no-store} is the default for every response because
    every API answer is private to the caller; an event stream replaces it
    with C{no-cache} (see L{qwen_twist.web.relay.SSE_HEADERS}).

    @param hsts_max_age: C{Strict-Transport-Security} max-age in seconds;
        0 leaves the header out (for a gateway behind a plain-HTTP test
        setup, or one whose operator manages HSTS elsewhere).
    """
    headers = [
        (b"X-Content-Type-Options", b"nosniff"),
        (b"Referrer-Policy", b"no-referrer"),
        (b"Cache-Control", b"no-store"),
    ]
    if hsts_max_age > 0:
        headers.insert(
            0, (b"Strict-Transport-Security", b"max-age=%d; includeSubDomains" % (hsts_max_age,))
        )
    return tuple(headers)


def compile_strip(fields: Iterable[str]) -> StripTree:
    """
    Compile dotted field paths into a tree for L{strip}.

    C{"usage.prompt_tokens_details"} removes that key of the C{usage}
    object; a list met on the way is walked element by element, so
    C{"choices.message.reasoning_content"} reaches every choice. A path that
    is a prefix of another removes the whole subtree.

    One name covers both response shapes: a path through
    C{choices.message} also strips C{choices.delta} (the same field in a
    stream chunk) and the other way round, so an operator who hides
    C{choices.message.reasoning_content} never sees it leak in a stream.
    """
    tree: StripTree = {}
    for parts in _both_shapes(fields):
        node = tree
        for part in parts[:-1]:
            child = node.get(part, {})
            if child is None:
                # An ancestor is removed whole already.
                break
            node[part] = child
            node = child
        else:
            node[parts[-1]] = None
    return tree


#: Stream chunks carry in C{delta} what whole responses carry in C{message}.
_SHAPES = {"message": "delta", "delta": "message"}


def _both_shapes(fields: Iterable[str]) -> Iterable[list]:
    """
    The dotted C{fields} as lists of parts, each C{choices.message.X} also
    as C{choices.delta.X} (and the other way round).
    """
    for field in fields:
        parts = [part for part in field.split(".") if part]
        if not parts:
            continue
        yield parts
        if len(parts) >= 3 and parts[0] == "choices" and parts[1] in _SHAPES:
            yield [parts[0], _SHAPES[parts[1]]] + parts[2:]


def strip(obj: Any, tree: StripTree) -> Any:
    """
    Remove the fields of C{tree} from C{obj}, in place, and return C{obj}.

    In place because the objects written are built fresh for each response
    by the translators; copying them would double the work for nothing.
    Values of unexpected types (a string where an object was expected) are
    left alone.
    """
    if tree:
        _strip(obj, tree)
    return obj


def _strip(node: Any, tree: StripTree) -> None:
    if isinstance(node, dict):
        for key, below in tree.items():
            if key in node:
                if below is None:
                    del node[key]
                else:
                    _strip(node[key], below)
    elif isinstance(node, list):
        for item in node:
            _strip(item, tree)


def strip_sse(data: bytes, tree: StripTree) -> bytes:
    """
    Remove the fields of C{tree} from every C{data:} event of a chunk of
    SSE text that consists of whole events.

    Comments (C{: keep-alive}), C{data: [DONE]} and events whose payload is
    not a JSON object pass through unchanged. Costs a JSON parse and dump
    per event, so call it only when C{tree} is not empty.
    """
    if not tree or b"data: {" not in data:
        return data
    out = []
    for line in data.split(b"\n"):
        if line.startswith(b"data: {"):
            try:
                event = json.loads(line[6:])
            except ValueError:
                out.append(line)
                continue
            _strip(event, tree)
            # ASCII like every event the translators write (U+2028 safety).
            line = b"data: " + json.dumps(event, separators=(",", ":")).encode("ascii")
        out.append(line)
    return b"\n".join(out)
