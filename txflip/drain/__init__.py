"""
Draining: ending each open connection at a clean application boundary.

L{_tracker} tracks a server's connections and ends them when the generation steps
aside; L{_cork} sends a last reply and the FIN in one segment; L{_served} is one
served listener with its tracker (the record the service, the mover and a worker's
balancer share).  Connections that can move are handed to a mover (L{txflip.move})
through a small Protocol defined here, so that draining never imports moving.
"""
