"""
Talking to a running service: the control socket it serves (L{_server}), the
C{txflip upgrade} and C{txflip status} commands that use it (L{_client}), and what a
generation reports about itself to operators and systemd (L{_reports}).
"""
