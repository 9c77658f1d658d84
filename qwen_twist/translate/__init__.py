"""
Pure OpenAI <-> Ollama translation: dicts and bytes in, dicts and bytes out.

Nothing in this package imports Twisted or does I/O, so every rule of
C{ollama-openai-protocol.md} can be tested as a table of plain values.
"""
