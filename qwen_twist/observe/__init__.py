"""
Observability: Prometheus metrics, the JSON audit log, request ids and log
redaction (issue 11). Everything here reads the L{qwen_twist.context.CallContext}
that the pipeline fills in; nothing here changes how a call is served.
"""
