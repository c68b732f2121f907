"""
Moving connections to the next generation instead of closing them.

L{_movable} is the interface a protocol implements; L{_wire} is the Unix socket that
carries the connections; L{_out} sends them from the old generation and L{_in}
receives them in the new; L{_transport} is what moving needs of a Twisted transport;
L{_spawn} and L{_service} connect all this to a generation and a service.
"""
