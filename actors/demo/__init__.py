"""``mtwatch demo``: the isolation show on the embedded xenstored (no Xen, no root). It starts xenstored and the
agent as child processes and plays a toolstack and guests against them; it is not part of the agent."""
