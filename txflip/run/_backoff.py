"""
How long the supervisor waits before it replaces workers that keep failing.
"""

#: A worker that served this long before it died is no crash loop.
STABLE = 10.0
MAX_BACKOFF = 30.0


def backoff(failures: int) -> float:
    """
    Seconds before the next replacement after C{failures} quick failures in a row:
    0, then 0.5, 1, 2, ... up to L{MAX_BACKOFF}.
    """
    return 0.0 if failures <= 0 else min(MAX_BACKOFF, 0.5 * 2 ** (failures - 1))
