"""The client's side of one SOCKS5 UDP association (RFC 1928 section 7), sans-I/O.

The SOCKS client sends datagrams, each behind a SOCKS UDP header naming its destination, to
the UDP port the client's handler bound for it. This core decides which of them go on:
only the SOCKS client's IP may send (the address a request names is not trusted over it),
from the port its request named or, when it named none (0.0.0.0:0 or ::), from the first
port seen; fragments, malformed headers and datagrams too
large for one tunnel frame (or one UDP datagram) are dropped and counted. Each destination
becomes one ``Route``, which the handler joins to one jProxy UDP association (names travel
unresolved) or, on the server's plain SOCKS port, to a UDP socket of its own; a destination the
handler could not open may stay refused, its datagrams dropped, until it idles out. Routes idle
for ``idle_timeout`` are evicted, and the association itself ends after that long with no
datagram either way. Replies get the destination as the SOCKS client named it in front.

Time is an argument (``now``): the handler reads the clock and enforces the deadlines.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from jproxy.socks.socks5 import build_udp_request
from jproxy.tunnel.crypto import MAX_MESSAGE
from schemas.errors import WireError
from schemas.fast import UDP_PACKET
from schemas.jproxy import Dialect
from schemas.socks5 import UDP_DATAGRAM_READER

DEFAULT_IDLE_TIMEOUT = 120.0
DEFAULT_MAX_ROUTES = 64

MAX_DATAGRAM: dict[Dialect, int] = {
    dialect: size - UDP_PACKET.header_size for dialect, size in MAX_MESSAGE.items()
}
"""The largest datagram payload one tunnel frame carries: 4074 bytes (3.0), 4058 bytes (3.1)."""

MAX_UDP_PAYLOAD = 65507
"""The largest payload of one IPv4 UDP datagram: the plain SOCKS port's limit."""


class Drop(enum.Enum):
    """Why a datagram was not relayed; the handler counts each reason."""

    SOURCE = "source"
    """Not from the SOCKS client (another IP, or another port than the association's)."""
    FRAGMENT = "fragment"
    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    ROUTES = "routes"
    """The association already has ``max_routes`` destinations."""
    QUEUE_FULL = "queue_full"
    """The tunnel's queue was full (counted by the handlers, never by this core)."""
    UNANSWERED = "unanswered"
    """The server did not set up (or refused) the jProxy association (handlers too)."""
    REFUSED = "refused"
    """The destination was refused (the plain SOCKS port: egress policy, unknown name); its
    datagrams are dropped until it idles out."""


@dataclass(eq=False, slots=True)
class Route:
    """One destination of the association, carried by one jProxy UDP association."""

    host: str
    port: int
    reply_header: bytes
    last_used: float
    channel: Any = None
    """The handler's way out for this route (a jProxy association, a UDP socket)."""
    refused: bool = False


@dataclass(frozen=True, slots=True)
class Forward:
    """Send ``payload`` on ``route``; ``new``: the route was just made (open its association)."""

    route: Route
    payload: bytes
    new: bool


@dataclass(frozen=True, slots=True)
class Dropped:
    reason: Drop
    detail: str


@dataclass
class SocksUdpAssociation:
    """The rules of one association; ``client_ip`` is the SOCKS client's TCP peer address."""

    client_ip: str
    requested_host: str
    requested_port: int
    max_payload: int
    now: float
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_routes: int = DEFAULT_MAX_ROUTES
    client_port: int | None = None
    """The port datagrams are accepted from (and replies go to); ``None`` until the first."""
    routes: dict[tuple[str, int], Route] = field(default_factory=dict)
    drops: dict[Drop, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.client_ip = str(ipaddress.ip_address(self.client_ip))
        if self.requested_port:
            self.client_port = self.requested_port
        self.last_active = self.now

    @property
    def client_address(self) -> tuple[str, int] | None:
        """Where replies go, once known."""
        return None if self.client_port is None else (self.client_ip, self.client_port)

    def from_client(self, source: tuple, datagram: bytes, now: float) -> Forward | Dropped:
        """What to do with a datagram that arrived on the association's UDP socket."""
        host, port = source[0], source[1]
        if host != self.client_ip or self.client_port not in (None, port):
            return self._drop(Drop.SOURCE, f"from {host} port {port}")
        try:
            fields = UDP_DATAGRAM_READER.read(datagram)
        except WireError as error:
            return self._drop(Drop.MALFORMED, str(error))
        if fields.fragment:
            return self._drop(Drop.FRAGMENT, f"fragment {fields.fragment}")
        if len(fields.data) > self.max_payload:
            return self._drop(
                Drop.TOO_LARGE, f"{len(fields.data)} bytes, at most {self.max_payload} fit a frame"
            )
        self.client_port = port
        self.last_active = now
        route = self.routes.get((fields.host, fields.port))
        new = route is None
        if route is None:
            if len(self.routes) >= self.max_routes:
                return self._drop(Drop.ROUTES, f"{self.max_routes} destinations already")
            reply_header = build_udp_request(fields.host, fields.port, b"")
            route = Route(fields.host, fields.port, reply_header, now)
            self.routes[(route.host, route.port)] = route
        route.last_used = now
        if route.refused:
            return self._drop(Drop.REFUSED, f"{route.host} port {route.port} was refused")
        return Forward(route, fields.data, new)

    def to_client(self, route: Route, payload: bytes, now: float) -> bytes | None:
        """The datagram for the SOCKS client carrying a reply on ``route``; ``None`` when the
        route was evicted meanwhile or the client never sent (nowhere to reply to)."""
        if self.routes.get((route.host, route.port)) is not route or self.client_port is None:
            return None
        route.last_used = self.last_active = now
        return route.reply_header + payload

    def forget(self, route: Route) -> None:
        """The route's jProxy association ended (refused, dissociated by the server)."""
        if self.routes.get((route.host, route.port)) is route:
            del self.routes[(route.host, route.port)]

    def refuse(self, route: Route) -> None:
        """The route could not be opened: its datagrams are dropped until it idles out."""
        route.refused = True

    def expired(self, now: float) -> list[Route]:
        """Routes idle for ``idle_timeout``, removed; the handler dissociates each."""
        idle = [r for r in self.routes.values() if now - r.last_used >= self.idle_timeout]
        for route in idle:
            del self.routes[(route.host, route.port)]
        return idle

    def idle(self, now: float) -> bool:
        """No datagram went either way for ``idle_timeout``: the association ends."""
        return now - self.last_active >= self.idle_timeout

    def next_deadline(self) -> float:
        """When ``expired`` or ``idle`` may next have something to say."""
        return min([self.last_active, *(r.last_used for r in self.routes.values())]) + (
            self.idle_timeout
        )

    def _drop(self, reason: Drop, detail: str) -> Dropped:
        self.drops[reason] = self.drops.get(reason, 0) + 1
        return Dropped(reason, detail)
