"""
The HTTP face of the gateway: one Resource per endpoint, thin, delegating
translation to L{qwen_twist.translate} and upstream I/O to
L{qwen_twist.upstream.client}.
"""
