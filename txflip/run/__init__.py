"""
C{txflip run}: a supervisor with a stable PID whose workers are generations.

L{_cli} is the command; L{_supervisor} the supervisor's state machine and its
public front (L{_backoff} its crash-loop delays, L{_status} its report);
L{_workers} starts and follows one worker (exec'd, or forked by a preloading
template: L{_preload} and L{_forked} on our side, L{_template} the template,
L{_runners} which commands it can run); L{_channel} links a worker to its
supervisor; L{_balance} spreads connections across workers; L{_reaper} reaps
orphans when the supervisor is PID 1.
"""
