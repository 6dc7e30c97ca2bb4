"""The console's live side: the hooks the proxy calls, and the sampler that reads its counters.

The proxy calls a hook at the start and at the end of each connection and tunnel, never per
chunk: the relays already count their bytes, and the sampler reads those counts once a second.
Each connection is listed with a handle that can reset it (SO_LINGER 0 on its local socket,
a reset to the peer), which is what ``DELETE /api/connections/{id}`` calls.

Without ``--console`` the proxy holds ``NO_CONSOLE``, whose hooks do nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import gevent
from gevent.event import Event

from jproxy.config import host_port_text
from jproxy.console.board import Board, Connection, Tunnel
from jproxy.policy.hostnames import for_log
from jproxy.tunnel.handshake import version_text
from jproxy.tunnel.mux import Ending
from schemas.jproxy import ConnectStatus

log = logging.getLogger(__name__)

SAMPLE_INTERVAL = 1.0
"""Seconds between samples and between the streams' messages (dashboards debounce 100 ms)."""


@dataclass(slots=True)
class Handle:
    """How the driver reads and ends one connection."""

    meter: Callable[[], tuple[int, int]]
    """Bytes (up, down) so far: toward the destination, and back."""
    reset: Callable[[], None]


class NullConsole:
    """The hooks when no console is asked for: nothing is kept."""

    def stream(self, *args, **kwargs) -> None:
        return None

    association = stream

    def closed(self, entry: object) -> None:
        pass

    def tunnel_opened(self, *args, **kwargs) -> None:
        return None

    def tunnel_closed(self, entry: object) -> None:
        pass

    def refused(self, *args, **kwargs) -> None:
        pass

    def access(self, record) -> None:
        pass


NO_CONSOLE = NullConsole()


class LiveConsole(NullConsole):
    """A ``Board`` fed by the proxy's hooks, sampled once a second; ``tick`` wakes the streams."""

    def __init__(
        self,
        role: str,
        version: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.clock, self.wall = clock, wall
        self.version = version
        self.board = Board(role, clock())
        self.ticks = 0
        """Samples taken so far: a stream sends when it changes."""
        self._tick = Event()
        self._sampler: gevent.Greenlet | None = None
        self._client = None
        self._notes = _NoteHandler(self)

    # --- hooks: client ----------------------------------------------------------------------

    def stream(
        self, relay, source: tuple | str, host: str, port: int, *, user: str = "", toward=True
    ) -> Connection | None:
        """A tunnel stream's relay started. ``toward``: the relay's local socket is the
        application (client), so what it reads goes up; on the server it is the target."""
        if toward:
            meter = lambda: (relay.bytes_out, relay.bytes_in)  # noqa: E731
        else:
            meter = lambda: (relay.bytes_in, relay.bytes_out)  # noqa: E731
        handle = Handle(meter, lambda: relay.abort(Ending.RESET))
        return self._open("tcp", source, host, port, relay.link, handle, user)

    def association(
        self, association, source: tuple | str, host: str, port: int, *, user: str = ""
    ) -> Connection | None:
        """The server opened a UDP association for a tunnel."""

        def reset() -> None:
            association.datagrams.dissociate(association.channel, Ending.RESET)
            association.ended(association.channel, Ending.RESET)

        handle = Handle(lambda: (association.bytes_out, association.bytes_in), reset)
        return self._open("udp", source, host, port, association.datagrams.tunnel, handle, user)

    def _open(self, network, source, host, port, link, handle, user) -> Connection | None:
        source = source if isinstance(source, str) else host_port_text(source)
        tunnel = self._tunnel_of(link)
        return self.board.open(
            network,
            source,
            host,
            port,
            tunnel=tunnel,
            now=self.clock(),
            wall=self.wall(),
            handle=handle,
            user=user,
        )

    def closed(self, entry: Connection | None) -> None:
        """The connection ended: its last counts go to the totals."""
        if entry is not None:
            up, down = entry.handle.meter()
        else:
            up = down = 0
        self.board.close(entry, up, down)

    def refused(
        self, source: tuple | str, target: str, reason: str, status: ConnectStatus | None = None
    ) -> None:
        """A connection failed before it was relayed (``status``: the server's answer; "not
        allowed" is a refusal by its egress policy)."""
        source = source if isinstance(source, str) else host_port_text(source)
        kind = "refused" if status is ConnectStatus.NOT_ALLOWED else "failed"
        self.board.note(kind, reason, self.wall(), source=source, target=target)

    def access(self, record) -> None:
        """An access log record (server): the refused and failed ones become notes."""
        if record.ended in (Ending.REFUSED, Ending.FAILED):
            self.board.note(
                record.ended.value,
                record.reason or record.status,
                record.started,
                user=record.user,
                source=record.client,
                target=record.target,
            )

    # --- hooks: tunnels ---------------------------------------------------------------------

    def tunnel_opened(self, tunnel, server: str, user: str = "") -> Tunnel | None:
        """The server logged a tunnel in (the client's tunnels are found by the sampler)."""
        return self.board.add_tunnel(
            server,
            user=user,
            dialect=version_text(tunnel.channels.dialect),
            now=self.clock(),
            wall=self.wall(),
            handle=tunnel,
        )

    def tunnel_closed(self, entry: Tunnel | None) -> None:
        self.board.remove_tunnel(entry)

    def _tunnel_of(self, link) -> Tunnel | None:
        for tunnel in self.board.tunnels.values():
            if tunnel.handle is link:
                return tunnel
        return None

    # --- the client's tunnel ----------------------------------------------------------------

    def watch_client(self, client) -> None:
        """Show ``client``'s (a ``TunnelPool``) tunnel in use: up, or down while it reconnects."""
        self._client = client
        self._follow_client()

    def _follow_client(self) -> None:
        client, board = self._client, self.board
        now, wall = self.clock(), self.wall()
        current = client.current
        shown = next(iter(board.tunnels.values()), None)
        server = host_port_text(client.server)
        if current is not None and (shown is None or shown.handle is not current):
            board.remove_tunnel(shown)
            shown = board.add_tunnel(
                server, user="", dialect=version_text(client.dialect), now=now, wall=wall
            )
            shown.handle = current
        elif current is None:
            if shown is None:
                shown = board.add_tunnel(
                    server,
                    user="",
                    dialect=version_text(client.dialect),
                    now=now,
                    wall=wall,
                    state="down",
                )
            board.set_state(shown, "down", now, wall)
            shown.server, shown.handle = server, None

    # --- sampling ---------------------------------------------------------------------------

    def start(self) -> None:
        logging.getLogger().addHandler(self._notes)
        self._sampler = gevent.spawn(self._sample_loop)

    def stop(self) -> None:
        logging.getLogger().removeHandler(self._notes)
        if self._sampler is not None:
            self._sampler.kill()

    def wait_tick(self, seen: int, timeout: float) -> int:
        """Wait for a sample newer than ``seen`` (at most ``timeout``); the current count."""
        if self.ticks == seen:
            self._tick.wait(timeout)
        return self.ticks

    def _sample_loop(self) -> None:
        while True:
            gevent.sleep(SAMPLE_INTERVAL)
            try:
                self.sample()
            except Exception:  # the console must never take the proxy down
                log.exception("console: sampling failed")

    def sample(self) -> None:
        self.refresh_tunnels()
        readings = [(row, *row.handle.meter()) for row in self.board.connections.values()]
        self.board.sample(self.clock(), self.wall(), readings)
        self.ticks += 1
        tick, self._tick = self._tick, Event()
        tick.set()

    def refresh_tunnels(self) -> None:
        """The tunnels' state, round trip and channels as of now (rates wait for a sample)."""
        if self._client is not None:
            self._follow_client()
        for tunnel in self.board.tunnels.values():
            link = tunnel.handle
            if link is not None:
                tunnel.rtt = link.channels.rtt
                tunnel.channels = len(link.channels.channels)  # every kind

    def reset(self, connection_id: str) -> bool:
        """Reset one connection (its application sees ECONNRESET); False if it is not open."""
        row = self.board.connections.get(connection_id)
        if row is None:
            return False
        log.info("console: resetting connection %s to %s:%d", row.id, for_log(row.host), row.port)
        row.handle.reset()
        return True


class _NoteHandler(logging.Handler):
    """Warnings and errors of every logger become notes (the ring bounds them)."""

    def __init__(self, console: LiveConsole) -> None:
        super().__init__(logging.WARNING)
        self._console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a broken log call must not break the caller
            return
        kind = "error" if record.levelno >= logging.ERROR else "warning"
        self._console.board.note(kind, text, record.created, source=record.name)
