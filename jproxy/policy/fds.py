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

Within the streams' fds, each user (a tunnel user, a plain SOCKS user or, without
authentication, a client address) holds at most a fair share (``fair_share``): half of what
the other users leave, and never less than ``MIN_SHARE``. One user alone may take half of the
streams' fds; n users all holding as much as they may settle at 1/(n+1) each, and the last
1/(n+1) stays free, so a newcomer's connects always find fds while others hog theirs. The cap
shrinks as the others' use grows, and grows back as they close.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_RESERVE = 128
"""Kept free of streams: listeners, logs, admin connections, logins beyond the tunnels."""

MIN_SHARE = 16
"""Fds any user may hold for its streams and UDP sockets, however full the budget is."""

MAX_SOFT_LIMIT = 1 << 20
"""The soft limit asked for when the hard limit is unlimited (the kernel's default nr_open)."""


def fair_share(for_streams: int, held_by_others: int) -> int:
    """The most stream fds one user may hold: half of what the other users leave free."""
    return max(MIN_SHARE, (for_streams - held_by_others) // 2)


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
