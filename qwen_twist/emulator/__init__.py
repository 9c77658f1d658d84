"""
A scriptable emulator of Ollama's native API: the gateway's test double and
demo backend (C{python -m qwen_twist.emulator}). No production code path
imports it.

L{qwen_twist.emulator.script} holds the behaviour model (pure data),
L{qwen_twist.emulator.server} the Twisted resource and the C{listen} helper,
L{qwen_twist.emulator.api} Ollama's endpoints behind it,
L{qwen_twist.emulator.wire} and L{qwen_twist.emulator.fields} Go's request
decoding and error texts, L{qwen_twist.emulator.answer} what a generation
says, L{qwen_twist.emulator.stream} how it is paced and broken, and
L{qwen_twist.emulator.record} what the emulator received.
"""
