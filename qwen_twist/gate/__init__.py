"""
The gate: everything between the network and the pipeline that decides whether
a caller may call now (peer filter, TLS, identity, address rules, rate limits,
bans, the fair GPU queue).
"""
