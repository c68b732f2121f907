"""
The generation: one process's life from start to exit, the core of txflip.

A generation adopts what its parent handed over (L{_handoff}, L{_process}), says it
is ready, and on an upgrade spawns its successor (L{_spawn} and its helpers
L{_command}, L{_childpipes}, L{_detach}, L{_signals}, L{_exits}), waits for it, and
steps aside.  The machine that decides what happens when is L{_machine} (its inputs,
per-state data, rules and the public L{Upgrader} in one module; the steps it takes in
L{_steps}); who started the generation is its L{_parent}; the pid file that always
names the serving generation is L{_pidfile}; how it ended (replaced by a successor,
or stopped) is one value, L{_ending}.

Layering: this package imports only L{txflip.listen} and the top-level helpers
(errors, settings, reactor, systemd); never L{txflip.run}, L{txflip.move},
L{txflip.control} or L{txflip.check}.
"""
