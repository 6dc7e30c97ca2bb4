"""How long to wait before trying again after failures in a row (pure: the randomness is an
argument). The client's tunnels and the server's worker processes use it."""

from __future__ import annotations

RETRY_START = 0.2
RETRY_CAP = 30.0


def retry_delay(failures: int, rand: float) -> float:
    """Exponential backoff with jitter: the n-th failure waits in [d/2, d], d = start * 2^n."""
    delay = min(RETRY_CAP, RETRY_START * 2 ** max(0, failures - 1))
    return delay / 2 + rand * delay / 2
