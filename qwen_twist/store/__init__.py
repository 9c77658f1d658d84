"""
Where the gate keeps its counters: in this process (L{memory}) or in a Redis
shared by several gateways (L{redisstore}, over the small RESP client in
L{resp}), behind one interface (L{interface.ILimitStore}).
"""
