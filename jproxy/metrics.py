"""Live counters of a server process, read by the admin protocol and the Prometheus page.

What counts as a connection (docs/admin.md says the same): every tunnel stream (a TCP connect
the server accepted), every UDP association and every plain SOCKS5 connection or UDP
association the server itself serves. Tunnels are counted separately. Bytes are payload bytes
relayed (for UDP, the datagrams' payloads), both directions summed. Datagrams dropped (a full
queue, a fragment, a stranger's source address, ...) are counted by reason. gevent runs one
greenlet at a time, so plain integers need no lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SERVICES = ("tunnel", "socks")
"""What a connection belongs to: a tunnel stream, or the server's plain SOCKS5 port."""


@dataclass
class ServiceCounters:
    connections_total: int = 0
    connections_open: int = 0
    bytes_transferred: int = 0


@dataclass
class Counters:
    connections_total: int = 0
    connections_open: int = 0
    bytes_transferred: int = 0
    tunnels_open: int = 0
    tunnels_by_dialect: dict[str, int] = field(default_factory=dict)
    users_connected: dict[str, int] = field(default_factory=dict)
    doh_lookups: int = 0
    """Names looked up over DNS over HTTPS (A and AAAA together count once)."""
    doh_failures: int = 0
    doh_lookup_seconds: float = 0.0
    """Time spent in those lookups, summed."""
    dns_cache_hits: int = 0
    dns_cache_misses: int = 0
    datagrams_dropped: dict[str, int] = field(default_factory=dict)
    unrecognized_connections: int = 0
    """The client's port: connections whose first byte was none of SOCKS4, SOCKS5 or HTTP."""

    by_service: dict[str, ServiceCounters] = field(
        default_factory=lambda: {service: ServiceCounters() for service in SERVICES}
    )

    def connection_opened(self, service: str = "tunnel") -> None:
        self.connections_total += 1
        self.connections_open += 1
        self.by_service[service].connections_total += 1
        self.by_service[service].connections_open += 1

    def connection_closed(self, service: str = "tunnel") -> None:
        self.connections_open -= 1
        self.by_service[service].connections_open -= 1

    def transferred(self, count: int, service: str = "tunnel") -> None:
        self.bytes_transferred += count
        self.by_service[service].bytes_transferred += count

    def datagram_dropped(self, reason: str) -> None:
        self.datagrams_dropped[reason] = self.datagrams_dropped.get(reason, 0) + 1

    def tunnel_opened(self, user: str, dialect: str) -> None:
        self.tunnels_open += 1
        self.tunnels_by_dialect[dialect] = self.tunnels_by_dialect.get(dialect, 0) + 1
        self.users_connected[user] = self.users_connected.get(user, 0) + 1

    def tunnel_closed(self, user: str, dialect: str) -> None:
        self.tunnels_open -= 1
        self.tunnels_by_dialect[dialect] -= 1
        self.users_connected[user] -= 1
        if not self.users_connected[user]:
            del self.users_connected[user]
