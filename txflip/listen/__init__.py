"""
Listening sockets: what users write (L{_addresses}), the sockets this generation
owns, inherited or bound (L{_fds}), and serving a shared Unix socket without Twisted's
Unix port (L{_unix}).  Part of the core: imports nothing but the top-level helpers.
"""
