"""What the live console knows, as a pure core: time is an argument, nothing here reads a clock,
touches a socket or logs.

- the open connections (bounded: past ``max_connections`` a connection is counted, not
  listed), each with a stable URL-safe id, its bytes each way, its age, its route and tunnel;
- the tunnels, each with its totals and rates;
- a ring of the last refusals and warnings (``max_notes``);
- the traffic of the last ``history`` seconds, one point per sample.

The data path never calls in here per chunk: the driver samples every connection's byte
counters once a second (``sample``), so the cost of the console is O(open connections) a
second, whatever the traffic. Each entry holds an opaque ``handle`` that only the driver uses
(its byte counters and its reset).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_CONNECTIONS = 4096
"""Connections listed at once; more are counted in ``unlisted`` (the proxy's own limits are
about this size, so this is a bound on a runaway, not a sampling)."""
MAX_NOTES = 200
HISTORY = 300
"""Seconds of traffic kept: one point per sample, a sample a second."""
MAX_TUNNELS = 1024
NOTE_TEXT_MAX = 500
"""A note's text is cut to this many characters (a log line may carry a long host name)."""


@dataclass(slots=True, eq=False)
class Connection:
    id: str
    network: str
    """``tcp`` or ``udp``."""
    source: str
    """Where it came from: ``HOST:PORT`` of the application (client) or the tunnel (server)."""
    host: str
    port: int
    tunnel: Tunnel | None
    route: str
    """The routing decision (``tunnel`` today; the rule's name once the client has rules)."""
    rule: str
    user: str
    opened_at: float
    started: float
    """Wall-clock time of the start (seconds since the epoch), for the clash ``start`` field."""
    handle: object
    up: int = 0
    down: int = 0
    up_rate: float = 0.0
    down_rate: float = 0.0


@dataclass(slots=True, eq=False)
class Tunnel:
    id: str
    server: str
    """The far end: the server's ``HOST:PORT`` (client), the client's address (server)."""
    user: str
    dialect: str
    state: str
    """``up`` or ``down`` (a client's tunnel while it reconnects)."""
    since: float
    """Monotonic time of the last change of state."""
    since_wall: float
    handle: object = None
    rtt: float | None = None
    """The last keepalive round trip, in seconds (the client pings; the server never does)."""
    channels: int = 0
    up: int = 0
    down: int = 0
    up_rate: float = 0.0
    down_rate: float = 0.0
    closed_up: int = 0
    closed_down: int = 0


@dataclass(slots=True, frozen=True)
class Note:
    at: float
    """Wall-clock time."""
    kind: str
    """``refused`` (the egress policy said no), ``failed`` (a connect failed), ``warning``,
    ``error``."""
    text: str
    user: str = ""
    source: str = ""
    target: str = ""


@dataclass(slots=True)
class Totals:
    up: int = 0
    down: int = 0


@dataclass
class Board:
    """Everything the console shows, for one process (``role``: ``client`` or ``server``)."""

    role: str
    now: float
    max_connections: int = MAX_CONNECTIONS
    max_notes: int = MAX_NOTES
    history_length: int = HISTORY
    connections: dict[str, Connection] = field(default_factory=dict)
    tunnels: dict[str, Tunnel] = field(default_factory=dict)
    notes: deque[Note] = field(init=False)
    history: deque[tuple[float, float, float]] = field(init=False)
    """``(wall time, bytes/s up, bytes/s down)``, oldest first."""
    closed: Totals = field(default_factory=Totals)
    """Bytes of the connections that ended (listed or not)."""
    unlisted: int = 0
    """Connections open now that the table had no room for."""
    opened_total: int = 0
    notes_total: int = 0
    up_rate: float = 0.0
    down_rate: float = 0.0
    _next_id: int = 0
    _sampled_at: float = 0.0
    _last_up: int = 0
    _last_down: int = 0

    def __post_init__(self) -> None:
        self.notes = deque(maxlen=self.max_notes)
        self.history = deque(maxlen=self.history_length)
        self._sampled_at = self.now

    # --- connections ------------------------------------------------------------------------

    def open(
        self,
        network: str,
        source: str,
        host: str,
        port: int,
        *,
        tunnel: Tunnel | None,
        now: float,
        wall: float,
        handle: object,
        route: str = "tunnel",
        rule: str = "",
        user: str = "",
    ) -> Connection | None:
        """List a new connection; None (it is only counted) when the table is full."""
        self.opened_total += 1
        if len(self.connections) >= self.max_connections:
            self.unlisted += 1
            return None
        self._next_id += 1
        connection = Connection(
            _id_text(self._next_id),
            network,
            source,
            host,
            port,
            tunnel,
            route,
            rule,
            user,
            now,
            wall,
            handle,
        )
        self.connections[connection.id] = connection
        return connection

    def close(self, connection: Connection | None, up: int, down: int) -> None:
        """A connection ended with ``up`` and ``down`` bytes in all (None: an unlisted one)."""
        self.closed.up += up
        self.closed.down += down
        if connection is None:
            self.unlisted = max(0, self.unlisted - 1)
            return
        if self.connections.pop(connection.id, None) is None:
            return
        tunnel = connection.tunnel
        if tunnel is not None:
            tunnel.closed_up += up
            tunnel.closed_down += down

    # --- tunnels ----------------------------------------------------------------------------

    def add_tunnel(
        self,
        server: str,
        *,
        user: str,
        dialect: str,
        now: float,
        wall: float,
        handle: object = None,
        state: str = "up",
    ) -> Tunnel | None:
        """A tunnel to show; None when ``MAX_TUNNELS`` are shown already."""
        if len(self.tunnels) >= MAX_TUNNELS:
            return None
        self._next_id += 1
        tunnel = Tunnel(_id_text(self._next_id), server, user, dialect, state, now, wall, handle)
        self.tunnels[tunnel.id] = tunnel
        return tunnel

    def set_state(self, tunnel: Tunnel, state: str, now: float, wall: float) -> None:
        if tunnel.state != state:
            tunnel.state, tunnel.since, tunnel.since_wall = state, now, wall
            tunnel.up_rate = tunnel.down_rate = 0.0

    def remove_tunnel(self, tunnel: Tunnel | None) -> None:
        if tunnel is not None:
            self.tunnels.pop(tunnel.id, None)

    # --- notes ------------------------------------------------------------------------------

    def note(
        self, kind: str, text: str, wall: float, *, user: str = "", source: str = "", target=""
    ) -> None:
        """Keep a refusal or a warning; the oldest note goes when the ring is full."""
        self.notes_total += 1
        self.notes.append(Note(wall, kind, text[:NOTE_TEXT_MAX], user, source, target))

    # --- sampling ---------------------------------------------------------------------------

    def sample(
        self,
        now: float,
        wall: float,
        readings: Iterable[tuple[Connection, int, int]],
    ) -> None:
        """Take the byte counts of every listed open connection (``(connection, up,
        down)``): rates per connection, per tunnel and in all, and one point of history.
        Unlisted connections count when they end."""
        elapsed = now - self._sampled_at
        if elapsed <= 0:
            return
        total_up, total_down = self.closed.up, self.closed.down
        per_tunnel: dict[str, list[int]] = {
            tunnel_id: [tunnel.closed_up, tunnel.closed_down]
            for tunnel_id, tunnel in self.tunnels.items()
        }
        for connection, up, down in readings:
            connection.up_rate = max(0, up - connection.up) / elapsed
            connection.down_rate = max(0, down - connection.down) / elapsed
            connection.up, connection.down = up, down
            total_up += up
            total_down += down
            tunnel = connection.tunnel
            if tunnel is not None and tunnel.id in per_tunnel:
                counts = per_tunnel[tunnel.id]
                counts[0] += up
                counts[1] += down
        for tunnel_id, (up, down) in per_tunnel.items():
            tunnel = self.tunnels[tunnel_id]
            tunnel.up_rate = max(0, up - tunnel.up) / elapsed
            tunnel.down_rate = max(0, down - tunnel.down) / elapsed
            tunnel.up, tunnel.down = up, down
        self.up_rate = max(0, total_up - self._last_up) / elapsed
        self.down_rate = max(0, total_down - self._last_down) / elapsed
        self._last_up, self._last_down = total_up, total_down
        self._sampled_at = now
        self.history.append((wall, self.up_rate, self.down_rate))

    @property
    def total(self) -> tuple[int, int]:
        """Bytes up and down since start, as of the last sample."""
        return self._last_up, self._last_down

    def busiest(self, limit: int) -> list[Connection]:
        """The ``limit`` connections moving the most bytes now (then the most in all)."""
        rows = list(self.connections.values())
        if len(rows) > limit:
            rows.sort(key=_busy_key, reverse=True)
            del rows[limit:]
        return rows


def _busy_key(connection: Connection) -> tuple[float, int]:
    return (connection.up_rate + connection.down_rate, connection.up + connection.down)


def _id_text(number: int) -> str:
    """A short, URL-safe id (lower-case hex): it goes unencoded into ``DELETE`` paths."""
    return f"{number:x}"
