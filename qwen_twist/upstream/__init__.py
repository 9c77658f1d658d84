"""
The upstream side: the only code that talks to Ollama (one client per server,
a pool over them, circuit breakers, and the one failure classification).
"""
