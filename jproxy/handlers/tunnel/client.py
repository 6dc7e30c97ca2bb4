"""``gjproxy client``'s side of the tunnel: keep one tunnel up, reconnecting when it breaks.

The tunnel is (re)built in one greenlet with exponential backoff and jitter. With several
servers, each failed attempt moves on to the next one in the list (wrapping around); a tunnel
that was up is rebuilt to the same server first. Streams of a dead tunnel end with it (their
SOCKS sockets are closed); a stream asked for during an outage waits up to ``outage_timeout``
for the next tunnel and then fails.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from collections.abc import Sequence

import gevent
from gevent import socket as gsocket
from gevent.event import Event

from jproxy.handlers.net.sockets import tune_tunnel_socket
from jproxy.handlers.tunnel.datagrams import TunnelDatagrams
from jproxy.handlers.tunnel.driver import Tunnel
from jproxy.handlers.tunnel.handshake import client_login
from jproxy.handlers.tunnel.keylog import KeyLog
from jproxy.handlers.tunnel.link import TunnelClosed
from jproxy.handlers.tunnel.relay import StreamRelay
from jproxy.metrics import Counters
from jproxy.tuning import RelayTuning
from jproxy.tunnel.handshake import LoginError, version_text
from jproxy.tunnel.keys import ClientKey
from jproxy.tunnel.mux import DEFAULT_IDLE_TIMEOUT, DEFAULT_WINDOW, KEEPALIVE_INTERVAL, Channels
from schemas.jproxy import ConnectStatus, Dialect, Direction

log = logging.getLogger(__name__)

BACKOFF_START = 0.2
BACKOFF_CAP = 30.0
DEFAULT_GRACE = 1.0
"""SIGTERM: a client stops promptly; its open streams get a second to finish."""
_DRAIN_POLL = 0.1


def backoff_delays(start: float = BACKOFF_START, cap: float = BACKOFF_CAP):
    """Exponential backoff with full jitter: each delay is uniform in [d/2, d], d doubling."""
    delay = start
    while True:
        yield random.uniform(delay / 2, delay)
        delay = min(cap, delay * 2)


class TunnelClient:
    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        key: ClientKey,
        dialect: Dialect,
        *,
        counters: Counters | None = None,
        tuning: RelayTuning | None = None,
        login_timeout: float = 10.0,
        outage_timeout: float = 10.0,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        key_log: KeyLog | None = None,
        window: int = DEFAULT_WINDOW,
        keepalive: float = KEEPALIVE_INTERVAL,
    ) -> None:
        if not servers:
            raise ValueError("a tunnel client needs at least one server")
        self.servers = list(servers)
        self._server_index = 0
        self.key_log = key_log
        self.key = key
        self.dialect = dialect
        self.counters = counters or Counters()
        self.tuning = tuning or RelayTuning()
        self.login_timeout = login_timeout
        self.outage_timeout = outage_timeout
        self.idle_timeout = idle_timeout
        self.window = window
        self.keepalive = keepalive
        self.fatal: LoginError | None = None
        self.stopped = Event()
        self._tunnel: Tunnel | None = None
        self._up = Event()
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._maintain)

    def stop(self) -> None:
        self.stopped.set()
        if self._tunnel is not None:
            self._tunnel.close()
        if self._greenlet is not None:
            self._greenlet.join(timeout=5)
            self._greenlet.kill()

    @property
    def server(self) -> tuple[str, int]:
        """The server in use, or tried next while no tunnel is up."""
        return self.servers[self._server_index]

    @property
    def server_number(self) -> int:
        """``server``'s place in the list, from 1."""
        return self._server_index + 1

    @property
    def current(self) -> Tunnel | None:
        """The tunnel up now, if any."""
        return self._tunnel

    @property
    def up(self) -> bool:
        return self._up.is_set()

    def drain(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for the open streams to finish by themselves."""
        deadline = time.monotonic() + grace
        while self.open_streams() and time.monotonic() < deadline:
            gevent.sleep(_DRAIN_POLL)
        left = self.open_streams()
        if left:
            log.info("grace time over: resetting %d open stream(s)", left)

    def open_streams(self) -> int:
        tunnel = self._tunnel
        return len(tunnel.channels.channels) if tunnel is not None else 0

    def wait_until_up(self, timeout: float) -> bool:
        return self._up.wait(timeout)

    def open_stream(
        self, host: str, port: int, sock: socket.socket, timeout: float
    ) -> tuple[StreamRelay, tuple[ConnectStatus, int]]:
        """A stream through the current tunnel; waits out an outage up to ``outage_timeout``."""
        if not self._up.wait(self.outage_timeout) or self._tunnel is None:
            raise TunnelClosed("no tunnel to the server")
        return self._tunnel.open_stream(host, port, sock, timeout)

    def datagrams(self) -> TunnelDatagrams:
        """The current tunnel's datagram channels; waits out an outage like ``open_stream``."""
        if not self._up.wait(self.outage_timeout) or self._tunnel is None:
            raise TunnelClosed("no tunnel to the server")
        return self._tunnel.datagrams

    def _maintain(self) -> None:
        delays = backoff_delays()
        logged_in_before = False
        said = None
        while not self.stopped.is_set():
            try:
                tunnel = self._connect()
            except LoginError as error:
                # A refusal on the first login is a setup error; after a login that worked it
                # is a server restarting (its users folder briefly empty): keep trying.
                if error.fatal and not logged_in_before:
                    log.error("giving up: %s", error)
                    self.fatal = error
                    self.stopped.set()
                    return
                # Said once (the same failure at the same server again: debug), then backoff.
                level = logging.DEBUG if said == (self.server, str(error)) else logging.WARNING
                said = (self.server, str(error))
                log.log(level, "tunnel login at %s:%d failed: %s", *self.server, error)
                self._next_server()
            except (OSError, gevent.Timeout) as error:
                log.warning("cannot reach the server %s:%d: %s", *self.server, error)
                self._next_server()
            else:
                delays = backoff_delays()
                logged_in_before, said = True, None
                self._serve(tunnel)
            if self.stopped.wait(next(delays)):
                return

    def _next_server(self) -> None:
        if len(self.servers) > 1:
            self._server_index = (self._server_index + 1) % len(self.servers)
            log.info("next attempt: server %s:%d", *self.server)

    def _connect(self) -> Tunnel:
        return open_tunnel(
            self.server,
            self.key,
            self.dialect,
            login_timeout=self.login_timeout,
            key_log=self.key_log,
            counters=self.counters,
            tuning=self.tuning,
            window=self.window,
            idle_timeout=self.idle_timeout,
            keepalive=self.keepalive,
        )

    def _serve(self, tunnel: Tunnel) -> None:
        log.info("%s: up (dialect %s)", tunnel.name, version_text(self.dialect))
        self._tunnel = tunnel
        self._up.set()
        try:
            serve_tunnel(tunnel)
        finally:
            self._up.clear()
            self._tunnel = None
            if not self.stopped.is_set():
                level = logging.INFO if tunnel.planned else logging.WARNING
                log.log(level, "%s: lost, reconnecting", tunnel.name)


def open_tunnel(
    server: tuple[str, int],
    key: ClientKey,
    dialect: Dialect,
    *,
    login_timeout: float,
    counters: Counters,
    tuning: RelayTuning | None = None,
    window: int = DEFAULT_WINDOW,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    keepalive: float = KEEPALIVE_INTERVAL,
    key_log: KeyLog | None = None,
) -> Tunnel:
    """A logged-in tunnel to ``server``, with its streams and datagram channels; not running
    yet (``serve_tunnel`` runs it)."""
    sock = gsocket.create_connection(server, timeout=login_timeout)
    try:
        tune_tunnel_socket(sock)
        session = client_login(sock, key, dialect, login_timeout, key_log)
    except BaseException:
        sock.close()
        raise
    channels = Channels(
        Direction.CLIENT_TO_SERVER,
        session.dialect,
        max_message=session.max_message,
        now=time.monotonic(),
        window=window,
        idle_timeout=idle_timeout,
        keepalive=keepalive,
    )
    tunnel = Tunnel(
        sock,
        session,
        channels,
        counters=counters,
        tuning=tuning or RelayTuning(),
        name=f"tunnel to {server[0]}:{server[1]}",
    )
    return tunnel


def serve_tunnel(tunnel: Tunnel) -> None:
    """Run a client's tunnel until it ends (3.1: the login sent its first ping)."""
    tunnel.run()
