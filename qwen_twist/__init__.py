"""
qwengate: an OpenAI-compatible TLS gateway in front of Ollama.

The package is named C{qwen_twist} (the design card's name); the daemon, the
twistd plugin and the Debian package are called C{qwengate}.
"""

__version__ = "0.1.0"
