# -*- test-case-name: tests.observe.test_redact -*-
"""
Redaction of secrets from every log event, whoever emits it.

The gateway's own code never logs a key, but other text does end up in
logs: an exception message that quotes a request, an upstream error that
echoes what it was sent, a library's failure, a misbehaving client's
header in a parse error. L{RedactingObserver} wraps a log observer and
replaces anything shaped like a secret (L{redact}) in the event's format
string, its fields and its failure's traceback before the observer sees it.

L{install} wraps the observers already on the global log publisher (twistd
has added its file or stdout observer by the time services start), and
L{logger} is a twistd C{--logger} factory that does the same from the
first line on.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Dict

from twisted.logger import ILogObserver, globalLogPublisher, textFileLogObserver
from twisted.python.failure import Failure
from zope.interface import implementer

MASK = "[REDACTED]"

_PATTERNS = [
    # "Bearer <anything>" in a header value or a message.
    (re.compile(r"(?i)\b(bearer|basic)\s+[^\s\"',;]+"), r"\1 " + MASK),
    # A JWT (three base64url parts, the first a JSON object).
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), MASK),
    # qwengate keys (qg-), OpenAI-style keys (sk-, sk-proj-...), and other
    # long prefixed tokens.
    (re.compile(r"\b(?:qg|sk|pk|rk|ak)-[A-Za-z0-9_-]{8,}"), MASK),
    # name=value / "name": "value" for secret-looking names.
    (re.compile(
        r"(?i)((?:api[_-]?key|x-api-key|authorization|access[_-]?token|auth[_-]?token|"
        r"secret|password|passwd)[\"']?\s*[:=]\s*[\"']?)[^\s\"',;}&]+"),
     r"\1" + MASK),
]

#: Lower-case pieces of which every secret pattern contains one: text
#: without any of them cannot match (the fast path for most log lines).
_TRIGGERS = ("bearer", "basic", "eyj", "qg-", "sk-", "pk-", "rk-", "ak-", "key",
             "authorization", "token", "secret", "passw")


def suspect(text: str) -> bool:
    """
    Whether C{text} may contain a secret (cheap; L{redact} decides).
    """
    low = text.lower()
    for trigger in _TRIGGERS:
        if trigger in low:
            return True
    return False


def redact(text: str) -> str:
    """
    C{text} with every secret-shaped part replaced by L{MASK}.
    """
    if not suspect(text):
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactedTraceback(Exception):
    """
    Stands in for a failure whose text contained a secret: its message is
    the original traceback, redacted.
    """


def _clean_failure(failure: Any) -> Any:
    try:
        text = failure.getTraceback()
    except Exception:
        return failure
    cleaned = redact(text)
    if cleaned == text:
        return failure
    return Failure(RedactedTraceback(cleaned))


_SAFE = (int, float, bool, type(None))


_SKIP = frozenset(["log_logger", "log_source", "log_level", "log_observer", "log_time",
                   "log_trace", "log_namespace"])


def redact_event(event: Dict[str, Any]) -> Dict[str, Any]:
    """
    A copy of C{event} with secrets removed (C{event} itself when there
    was nothing to remove; it is never modified).
    """
    # Fast path: an event of plain strings and numbers (the access log
    # line) with nothing suspect in any string is passed on as it is.
    texts = []
    for name, value in event.items():
        if isinstance(value, str):
            if name not in _SKIP:
                texts.append(value)
        elif not isinstance(value, _SAFE) and name not in _SKIP:
            break
    else:
        if not suspect("\n".join(texts)):
            return event
    changed: Dict[str, Any] = {}
    for name, value in event.items():
        if isinstance(value, _SAFE):
            continue
        if name == "log_failure":
            cleaned = _clean_failure(value)
            if cleaned is not value:
                changed[name] = cleaned
            continue
        if name in _SKIP:
            continue
        if isinstance(value, str):
            cleaned = redact(value)
            if cleaned != value:
                changed[name] = cleaned
            continue
        try:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        except Exception:
            continue
        cleaned = redact(text)
        if cleaned != text:
            # The value is formatted with str() anyway; hand over the
            # redacted text instead of the object.
            changed[name] = cleaned
    if not changed:
        return event
    copy = dict(event)
    copy.update(changed)
    return copy


@implementer(ILogObserver)
class RedactingObserver:
    """
    Passes redacted events to C{observer}.
    """

    def __init__(self, observer: Any) -> None:
        self.observer = observer

    def __call__(self, event: Dict[str, Any]) -> None:
        self.observer(redact_event(event))


def install(publisher: Any = globalLogPublisher) -> int:
    """
    Wrap every observer on C{publisher} (not yet wrapped) in a
    L{RedactingObserver}.

    @return: how many were wrapped.
    """
    observers = list(getattr(publisher, "_observers", ()))
    wrapped = 0
    for observer in observers:
        if isinstance(observer, RedactingObserver):
            continue
        publisher.removeObserver(observer)
        publisher.addObserver(RedactingObserver(observer))
        wrapped += 1
    return wrapped


def logger() -> RedactingObserver:
    """
    For C{twistd --logger qwen_twist.observe.redact.logger}: text to
    standard output (journald), redacted from the first line.
    """
    return RedactingObserver(textFileLogObserver(sys.stdout))
