"""The file-descriptor budget of the server, sans I/O: how many fds streams may take.

64 tunnels of 1,024 streams each need far more fds than systemd's default soft limit of 1,024,
so the server raises its soft limit to the hard limit at start (``raised_soft_limit``) and
then keeps the top ``reserve`` fds for everything that is not a stream: listening sockets,
tunnel and login connections, admin connections, log files, the resolver's connections.

Linux hands out the lowest free fd, so a stream's socket that lands at or above
``limit - reserve`` proves that every fd below is taken: that stream is refused (status 6,
connection limit) and its socket closed at once. Streams therefore never hold an fd in the
reserve, and a login or an admin connection always finds one free (as long as the non-stream
users stay fewer than the reserve). The check is one comparison, no counting.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_RESERVE = 128
"""Kept free of streams: listeners, logs, admin connections, logins beyond the tunnels."""

MAX_SOFT_LIMIT = 1 << 20
"""The soft limit asked for when the hard limit is unlimited (the kernel's default nr_open)."""


def raised_soft_limit(soft: int, hard: int, unlimited: int) -> int:
    """The soft RLIMIT_NOFILE to ask for: the hard limit (bounded), never lower than now."""
    target = MAX_SOFT_LIMIT if hard == unlimited else hard
    if soft == unlimited:
        return soft
    return max(soft, target)


@dataclass(frozen=True)
class FdBudget:
    """``limit`` fds in all; streams may use the fds below ``limit - reserve``."""

    limit: int
    reserve: int

    @classmethod
    def for_server(cls, limit: int, max_tunnels: int) -> FdBudget:
        """The reserve covers every tunnel's own connection plus ``MIN_RESERVE``, and never
        more than half the fds (a tiny limit still leaves streams some)."""
        return cls(limit, min(max_tunnels + MIN_RESERVE, limit // 2))

    @property
    def for_streams(self) -> int:
        return self.limit - self.reserve

    def allows(self, fd: int) -> bool:
        """Whether a stream may keep the socket that got fd number ``fd``."""
        return fd < self.for_streams
