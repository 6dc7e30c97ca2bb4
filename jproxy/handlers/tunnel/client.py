"""``gjproxy client``'s side of one tunnel: dial, log in, and run it.

Which tunnels are kept up, to which servers, and which one a stream takes is the tunnel
pool's work (``jproxy.handlers.tunnel.pool``).
"""

from __future__ import annotations

import time

from gevent import socket as gsocket

from jproxy.handlers.net.sockets import tune_tunnel_socket
from jproxy.handlers.tunnel.driver import Tunnel
from jproxy.handlers.tunnel.handshake import client_login
from jproxy.handlers.tunnel.keylog import KeyLog
from jproxy.metrics import Counters
from jproxy.tuning import RelayTuning
from jproxy.tunnel.keys import ClientKey
from jproxy.tunnel.mux import DEFAULT_IDLE_TIMEOUT, DEFAULT_WINDOW, KEEPALIVE_INTERVAL, Channels
from schemas.jproxy import Dialect, Direction

DEFAULT_GRACE = 1.0
"""SIGTERM: a client stops promptly; its open streams get a second to finish."""


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
