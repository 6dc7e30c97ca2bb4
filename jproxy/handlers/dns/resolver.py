"""Names to addresses for outbound connections, never blocking the event loop.

Every resolver (the system one here, DNS over HTTPS elsewhere) has the same shape, so the one
dialer can use any of them: ``resolve(host, timeout)`` returns the addresses in the order to
try, or raises ``ResolveError`` saying why (the wire status is then "unknown host").
"""

from __future__ import annotations

import socket
from typing import Protocol

import gevent
from gevent import socket as gsocket


class ResolveError(Exception):
    """A name did not resolve; the message says why, for the log."""


class Resolver(Protocol):
    def resolve(self, host: str, timeout: float) -> list[str]:
        """The IP addresses of ``host`` in the order to try; ``ResolveError`` otherwise."""
        ...


class SystemResolver:
    """getaddrinfo in gevent's resolver (a thread pool), under a deadline."""

    def resolve(self, host: str, timeout: float) -> list[str]:
        expired = ResolveError(f"no answer from the system resolver within {timeout:g} s")
        try:
            with gevent.Timeout(timeout, expired):
                infos = gsocket.getaddrinfo(host, None, 0, socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as error:
            raise ResolveError(f"system resolver: {error}") from None
        return list(dict.fromkeys(info[4][0] for info in infos))
