"""
C{txflip run}: a supervisor with a stable PID whose workers are generations.

L{_cli} is the command; L{_supervisor} the supervisor's state machine and its
public front (L{_backoff} its crash-loop delays, L{_status} its report);
L{_workers} starts and follows one worker; L{_channel} links a worker to its
supervisor; L{_balance} spreads connections across workers; L{_reaper} reaps
orphans when the supervisor is PID 1.
"""
