"""
Protocol families that drain or move without knowing txflip: one module each.

Importing L{txflip} registers their adapters.  Today: twisted.web's HTTP/1.x channel
(L{_web} drains it, L{_webmove} moves it).
"""
