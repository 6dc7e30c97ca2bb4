"""``gjproxy server``'s tunnel endpoint: log in each tunnel, then open its streams for real.

Each accepted tunnel runs in a greenlet of a bounded pool (the tunnel limit). Each stream the
client asks for gets a greenlet that resolves and connects without blocking the others (gevent's
resolver), answers with the wire's status and the milliseconds it took, and relays. When a
tunnel ends, every outbound socket it owned is closed with it.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass

import gevent
from gevent import socket as gsocket
from gevent.pool import Pool
from gevent.server import StreamServer

from jproxy.channels import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CHANNELS,
    DEFAULT_WINDOW,
    Channel,
    Channels,
)
from jproxy.handlers.handshake import server_login
from jproxy.handlers.sockets import set_nodelay, tune_tunnel_socket
from jproxy.handlers.tunnel import Tunnel
from jproxy.handshake import version_text
from jproxy.keys import UserDirectory
from jproxy.metrics import Counters
from jproxy.tuning import RelayTuning
from schemas.jproxy import ConnectStatus, Direction

log = logging.getLogger(__name__)
access_log = logging.getLogger("gjproxy.access")

DEFAULT_GRACE = 5.0
_DRAIN_POLL = 0.1

_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.ENETDOWN}


@dataclass
class ServerLimits:
    max_tunnels: int = 64
    max_streams: int = DEFAULT_MAX_CHANNELS
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    window: int = DEFAULT_WINDOW
    grace: float = DEFAULT_GRACE
    """SIGTERM: how long open streams may finish before the rest are reset."""
    connect_timeout: float = 10.0
    handshake_timeout: float = 10.0


def status_for(error: BaseException) -> ConnectStatus:
    """The wire's connect status for an outbound connect failure."""
    if isinstance(error, socket.gaierror):
        return ConnectStatus.UNKNOWN_HOST
    if isinstance(error, (TimeoutError, gevent.Timeout)):
        return ConnectStatus.TIMED_OUT
    if isinstance(error, ConnectionRefusedError):
        return ConnectStatus.REFUSED
    if isinstance(error, OSError) and error.errno in _UNREACHABLE:
        return ConnectStatus.UNREACHABLE
    return ConnectStatus.GENERAL_FAILURE


class TunnelServer:
    def __init__(
        self,
        listen: tuple[str, int],
        users: UserDirectory,
        *,
        allow_legacy: bool = False,
        limits: ServerLimits | None = None,
        counters: Counters | None = None,
        tuning: RelayTuning | None = None,
    ) -> None:
        self.users = users
        self.allow_legacy = allow_legacy
        self.limits = limits or ServerLimits()
        self.counters = counters or Counters()
        self.tuning = tuning or RelayTuning()
        self._tunnels: set[Tunnel] = set()
        self._server = StreamServer(listen, self._handle, spawn=Pool(self.limits.max_tunnels))

    @property
    def address(self) -> tuple[str, int]:
        return self._server.address[:2]

    def start(self) -> None:
        self._server.start()
        log.info(
            "tunnel server listening on %s:%d (dialect 3.1%s)",
            *self.address,
            ", legacy 3.0 allowed" if self.allow_legacy else "",
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Drain: accept no more tunnels, let open streams finish within the grace time, then
        close every tunnel (which resets the streams still open)."""
        self._server.close()
        deadline = time.monotonic() + self.limits.grace
        while self.open_streams() and time.monotonic() < deadline:
            gevent.sleep(_DRAIN_POLL)
        left = self.open_streams()
        if left:
            log.info("grace time over: resetting %d open stream(s)", left)
        for tunnel in list(self._tunnels):
            tunnel.close()
        self._server.stop(timeout)

    def open_streams(self) -> int:
        return sum(len(tunnel.channels.channels) for tunnel in self._tunnels)

    def _handle(self, sock: socket.socket, peer: tuple) -> None:
        where = f"{peer[0]}:{peer[1]}"
        tune_tunnel_socket(sock)
        login = server_login(
            sock, where, self.users, self.allow_legacy, self.limits.handshake_timeout
        )
        if login is None:
            sock.close()
            return
        user, session, pipelined = login
        dialect = version_text(session.dialect)
        streams = Pool(self.limits.max_streams)
        channels = Channels(
            Direction.SERVER_TO_CLIENT,
            session.dialect,
            max_message=session.max_message,
            now=time.monotonic(),
            window=self.limits.window,
            max_channels=self.limits.max_streams,
            idle_timeout=self.limits.idle_timeout,
        )
        tunnel = Tunnel(
            sock,
            session,
            channels,
            counters=self.counters,
            tuning=self.tuning,
            on_connect_request=lambda t, channel: streams.spawn(
                self._serve_stream, t, user, channel
            ),
            name=f"tunnel {user}@{where}",
        )
        log.info("%s: logged in (dialect %s)", tunnel.name, dialect)
        self._tunnels.add(tunnel)
        self.counters.tunnel_opened(user, dialect)
        try:
            tunnel.run(pipelined)
        finally:
            streams.kill(block=True, timeout=5)
            self.counters.tunnel_closed(user, dialect)
            self._tunnels.discard(tunnel)
            log.info("%s: closed", tunnel.name)

    def _serve_stream(self, tunnel: Tunnel, user: str, channel: Channel) -> None:
        target = f"{channel.host}:{channel.port}"
        started = time.monotonic()
        try:
            sock = connect_outbound(channel.host, channel.port, self.limits.connect_timeout)
        except (OSError, gevent.Timeout) as error:
            status = status_for(error)
            elapsed = _ms_since(started)
            tunnel.answer(channel, status, elapsed)
            access_log.info("%s %s %s %dms failed (%s)", user, target, status.name, elapsed, error)
            return
        elapsed = _ms_since(started)
        if not tunnel.answer(channel, ConnectStatus.OK, elapsed):  # the client gave up
            sock.close()
            return
        set_nodelay(sock)
        self.counters.connection_opened()
        relay = tunnel.attach(channel, sock)
        try:
            relay.run()
        finally:
            self.counters.connection_closed()
            access_log.info(
                "%s %s OK %dms sent=%d received=%d %.1fs %s",
                user,
                target,
                elapsed,
                relay.bytes_in,
                relay.bytes_out,
                time.monotonic() - started,
                relay.ending.value,
            )


def connect_outbound(host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to ``host``; IP literals skip the resolver and its thread hop."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return gsocket.create_connection((host, port), timeout=timeout)
    sock = gsocket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
