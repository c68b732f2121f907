"""
Saying that the supervisor ran out of file descriptors.

It holds pipes and sockets for each worker, two generations' during an upgrade:
many workers under a low limit (1024 is common, systemd's default) run out.  The
limit is read with C{resource}, imported here up front: an import that waits
until then fails too (it opens files).
"""

from __future__ import annotations

import errno
import resource


def describe(error: BaseException) -> str:
    """
    C{error} as one line for an operator: running out of file descriptors says
    the limit and where to raise it.
    """
    if isinstance(error, OSError) and error.errno == errno.EMFILE:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return (
            f"{error} (the limit is {soft}: raise it with ulimit -n, or systemd's"
            " LimitNOFILE=)"
        )
    return str(error)
