"""
C{txflip check}: the verifier, proving against a running server that upgrades lose
nothing.

L{_cli} is the command; L{_stats} counts; L{_clients}, L{_echoload}, L{_httpload} and
L{_httpexchange} are the load clients; L{_http} is the HTTP check; L{_pid} follows the
serving pid and L{_control} upgrades through the control socket; L{_drive} runs the
load with upgrades spaced over it; L{_report} says what happened.
"""
