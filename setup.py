"""
Packaging for qwengate (package C{qwen_twist}, twistd plugin C{qwengate}).

The dependency floors are the versions Debian 12 ships, so the same code runs
from the .deb on python3-twisted 22.4 and from a venv on current PyPI.
"""

import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version():
    with open(os.path.join(HERE, "qwen_twist", "__init__.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


setup(
    name="qwengate",
    version=read_version(),
    description="OpenAI-compatible TLS gateway for Ollama, as a twistd plugin",
    license="MIT",
    python_requires=">=3.11",
    # twisted.plugins is a namespace-style directory without __init__.py:
    # Twisted's plugin loader skips a twisted/plugins that has one.
    packages=find_packages(exclude=["tests", "tests.*", "bench", "bench.*"])
    + ["twisted.plugins"],
    package_data={"twisted.plugins": ["qwengate_plugin.py"]},
    install_requires=[
        "Twisted>=22.4.0",
        "treq>=22.2.0",
        "service-identity>=18.1.0",
        "pyOpenSSL>=23.0.0",
        "PyYAML>=6.0",
        "prometheus-client>=0.16.0",
        # JWT verification: a well-kept library beats hand-rolled crypto
        # checks, and Debian 12 ships it (python3-jwt 2.6.0).
        "PyJWT>=2.6.0",
    ],
    extras_require={
        "test": ["openai>=1.40", "hypothesis>=6.0"],
    },
    entry_points={
        "console_scripts": [
            "qwengate-emulator = qwen_twist.emulator.__main__:main",
            "qwengate-keys = qwen_twist.cli.keys:main",
            "qwengate-audit = qwen_twist.cli.audit:main",
        ],
    },
)
