"""
Checking the durations every entry point takes, in one place: twistd options
(C{--drain-timeout}), C{flip:} settings (C{drainTimeout=}), the constructors
(C{UpgradeService(drainTimeout=...)}) and the C{txflip} command (C{--timeout}).

A duration is a finite number of seconds above zero: NaN would compare false with
everything (a timeout that never fires), infinity never ends, zero or less makes
no sense for a grace or a deadline.  The error names the setting, so that the
user knows which of several to fix.
"""

from __future__ import annotations

import math

from txflip._errors import TxflipError

#: Each default duration, defined once for every entry point.  How long a new
#: generation has to say it is ready before it is killed and the upgrade fails:
DEFAULT_UPGRADE_TIMEOUT = 60.0
#: How long an exiting generation waits for its own connections before aborting
#: the rest:
DEFAULT_DRAIN_TIMEOUT = 30.0
#: How long an idle connection is kept while draining, to close with the reply to
#: its next request:
DEFAULT_IDLE_GRACE = 1.0
#: How long a control socket client has to send its request (and to read an
#: error reply) before it is cut off (here, not with the control server, so that
#: a server started without --control does not import it):
DEFAULT_REQUEST_TIMEOUT = 5.0


class SettingError(TxflipError, ValueError):
    """
    A setting has a value it cannot have.
    """


#: The smallest duration accepted, in seconds.
MINIMUM = 1e-3
EXPECTED = f"a finite number of seconds >= {MINIMUM:g}"


def seconds(name: str, value: object) -> float:
    """
    C{value} (a number, or its text) as a duration.

    @raise SettingError: naming C{name}, when it is not a finite number of
        seconds of at least L{MINIMUM}.
    """
    number: float | None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, (int, float)):
        number = float(value)
    else:
        try:
            number = float(str(value))
        except ValueError:
            number = None
    if number is None or not MINIMUM <= number < math.inf:
        raise SettingError(f"{name} must be {EXPECTED}, not {value!r}")
    return number
