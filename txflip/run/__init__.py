"""
C{txflip run}: a supervisor with a stable PID whose workers are generations.

L{_cli} is the command; L{_supervisor} its public front, L{_machine} the supervisor's
state machine and L{_core} its data; L{_workers} starts and follows one worker;
L{_channel} links a worker to its supervisor; L{_balance} spreads connections across
workers; L{_reaper} reaps orphans when the supervisor is PID 1.
"""
