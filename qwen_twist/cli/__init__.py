"""
The command-line tools installed beside the daemon (C{qwengate-keys}, ...).
"""
