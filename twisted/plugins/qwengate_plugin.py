"""
twistd plugin: C{twistd qwengate --config FILE}. The module path is a
string, imported only when the plugin is used, so C{twistd --help} stays
cheap and importing this file never installs a reactor.
"""

from twisted.application.service import ServiceMaker

qwengate = ServiceMaker(
    "qwengate",
    "qwen_twist.tap",
    "OpenAI-compatible TLS gateway in front of Ollama",
    "qwengate",
)
