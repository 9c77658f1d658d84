# -*- test-case-name: tests.emulator.test_server -*-
"""
C{python -m qwen_twist.emulator} (also C{qwengate-emulator}): run the Ollama
emulator in the foreground until Ctrl-C.

The demo starts it when no Ollama answers on 127.0.0.1:11434, and the
benchmarks start it as a separate process so its CPU is not charged to the
gateway; both need nothing more than a port, an optional script file and the
common pacing knobs, which the flags override on top of the script's
default behaviour. It binds to loopback unless told otherwise: it is a test
double, not a service.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, List, Optional, TextIO

from qwen_twist.emulator.record import DEFAULT_MAX_BYTES, DEFAULT_MAX_REQUESTS, Record
from qwen_twist.emulator.script import Script, ScriptError, validate_layer

STARTUP_LINE = "qwengate ollama emulator listening on %s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwengate-emulator",
        description="Emulate Ollama's native API (/api/chat, /api/generate, "
                    "/api/embed, /api/tags, /api/show, /api/ps, /api/version) for "
                    "tests, benchmarks and demos. Control paths: GET /_emulator/record, "
                    "POST /_emulator/reset, GET|POST /_emulator/script, "
                    "POST /_emulator/queue.",
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=11434,
                        help="port to listen on, 0 for any free one (default: %(default)s)")
    parser.add_argument("--script", metavar="FILE",
                        help="JSON behaviour script (models, default, per_model, queue)")
    parser.add_argument("--tokens-per-second", type=float, metavar="N",
                        help="pace of streamed chunks; 0 = as fast as possible")
    parser.add_argument("--ttft", type=float, metavar="SECONDS",
                        help="delay before the first chunk")
    parser.add_argument("--text", help="fixed answer text instead of the default greeting")
    parser.add_argument("--ollama-version", metavar="VERSION",
                        help="what GET /api/version reports")
    parser.add_argument("--record-requests", type=int, default=DEFAULT_MAX_REQUESTS,
                        metavar="N",
                        help="requests kept in GET /_emulator/record, newest first to "
                             "stay (default: %(default)s)")
    parser.add_argument("--record-bytes", type=int, default=DEFAULT_MAX_BYTES,
                        metavar="BYTES",
                        help="request body bytes kept in the record: older requests "
                             "are dropped beyond this, so memory stays bounded "
                             "whatever the request sizes (default: %(default)s)")
    parser.add_argument("--verbose", action="store_true",
                        help="log Twisted events to stderr")
    return parser


def load_script(options: argparse.Namespace) -> Script:
    """
    The script file (or the built-in default) with the command-line knobs
    layered on its default behaviour.

    @raise ScriptError: unreadable or invalid script, or an invalid flag value.
    """
    if options.script:
        try:
            with open(options.script, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ScriptError(options.script, e.strerror or str(e))
        script = Script.from_json(text)
    else:
        script = Script()
    layer = {}
    for key in ("tokens_per_second", "ttft", "text"):
        value = getattr(options, key)
        if value is not None:
            layer[key] = value
    script.default = script.default.merged(validate_layer(layer, "command line"))
    if options.ollama_version is not None:
        script.version = options.ollama_version
    return script


def main(argv: Optional[List[str]] = None, reactor: Any = None,
         stdout: Optional[TextIO] = None, stderr: Optional[TextIO] = None) -> int:
    """
    Parse C{argv}, listen, print one startup line, run the reactor.

    @return: the process exit code (0 after Ctrl-C, 1 when the port cannot
        be bound, 2 for a bad script).
    """
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    options = build_parser().parse_args(argv)
    try:
        script = load_script(options)
    except ScriptError as e:
        print("qwengate-emulator: %s" % (e,), file=stderr)
        return 2
    if reactor is None:
        from twisted.internet import reactor
    if options.verbose:
        from twisted.logger import globalLogBeginner, textFileLogObserver
        globalLogBeginner.beginLoggingTo([textFileLogObserver(stderr)])

    from qwen_twist.emulator.server import listen

    outcome = {"code": 0}

    def started(emulator: Any) -> None:
        print(STARTUP_LINE % (emulator.url,), file=stdout, flush=True)
        reactor.addSystemEventTrigger("before", "shutdown", emulator.stop)

    def failed(failure: Any) -> None:
        print("qwengate-emulator: cannot listen on %s port %d: %s"
              % (options.host, options.port, failure.getErrorMessage()), file=stderr)
        outcome["code"] = 1
        reactor.stop()

    def start() -> None:
        record = Record(options.record_requests, options.record_bytes)
        listen(reactor, script, host=options.host, port=options.port,
               record=record).addCallbacks(
            started, failed)

    reactor.callWhenRunning(start)
    reactor.run()
    return outcome["code"]


if __name__ == "__main__":
    sys.exit(main())
