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

from jproxy.datagrams import DEFAULT_MAX_ASSOCIATIONS, AssociateRequested, Datagrams, EchoRequested
from jproxy.handlers.datagrams import TunnelDatagrams
from jproxy.handlers.handshake import server_login
from jproxy.handlers.icmp import IcmpUnavailable, ping
from jproxy.handlers.outbound_udp import LocalPortTaken, OutboundAssociation, open_udp
from jproxy.handlers.resolver import ResolveError, SystemResolver
from jproxy.handlers.sockets import set_nodelay, tune_tunnel_socket
from jproxy.handlers.tunnel import DEFAULT_IDLE_TIMEOUT, Tunnel
from jproxy.handshake import version_text
from jproxy.keys import UserDirectory
from jproxy.metrics import Counters
from jproxy.mux import DEFAULT_MAX_STREAMS, ConnectRequested, Mux
from jproxy.tuning import RelayTuning
from jproxy.udp import DEFAULT_IDLE_TIMEOUT as DEFAULT_UDP_IDLE_TIMEOUT
from jproxy.udp import MAX_DATAGRAM
from schemas.jproxy import ConnectStatus, Direction

log = logging.getLogger(__name__)
access_log = logging.getLogger("gjproxy.access")

_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.ENETDOWN}


@dataclass
class ServerLimits:
    max_tunnels: int = 64
    max_streams: int = DEFAULT_MAX_STREAMS
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    connect_timeout: float = 10.0
    handshake_timeout: float = 10.0
    max_associations: int = DEFAULT_MAX_ASSOCIATIONS
    """UDP associations per tunnel."""
    udp_idle_timeout: float = DEFAULT_UDP_IDLE_TIMEOUT


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
        self._server.close()
        for tunnel in list(self._tunnels):
            tunnel.close()
        self._server.stop(timeout)

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
        mux = Mux(
            Direction.SERVER_TO_CLIENT,
            session.dialect,
            max_message=session.max_message,
            max_streams=self.limits.max_streams,
        )
        tunnel = Tunnel(
            sock,
            session,
            mux,
            counters=self.counters,
            tuning=self.tuning,
            on_connect_request=lambda t, request: streams.spawn(
                self._serve_stream, t, user, request
            ),
            idle_timeout=self.limits.idle_timeout,
            name=f"tunnel {user}@{where}",
        )
        tunnel.datagrams = TunnelDatagrams(
            tunnel,
            Datagrams(
                Direction.SERVER_TO_CLIENT,
                session.dialect,
                streams=mux.streams,
                max_associations=self.limits.max_associations,
            ),
            self.counters,
            on_associate=lambda d, request: streams.spawn(
                self._serve_association, d, user, request
            ),
            on_echo=lambda d, request: streams.spawn(self._serve_echo, d, user, request),
        )
        mux.other_channels = tunnel.datagrams.core.channels
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

    def _serve_stream(self, tunnel: Tunnel, user: str, request: ConnectRequested) -> None:
        stream, target = request.stream, f"{request.host}:{request.port}"
        started = time.monotonic()
        try:
            sock = connect_outbound(request.host, request.port, self.limits.connect_timeout)
        except (OSError, gevent.Timeout) as error:
            status = status_for(error)
            elapsed = _ms_since(started)
            tunnel.send_control(tunnel.mux.answer(stream, status, elapsed))
            access_log.info("%s %s %s %dms (%s)", user, target, status.name, elapsed, error)
            return
        elapsed = _ms_since(started)
        tunnel.send_control(tunnel.mux.answer(stream, ConnectStatus.OK, elapsed))
        if not tunnel.mux.is_live(stream):  # the client gave up while we connected
            sock.close()
            return
        set_nodelay(sock)
        self.counters.connection_opened()
        relay = tunnel.attach(stream, sock)
        try:
            relay.run()
        finally:
            self.counters.connection_closed()
            access_log.info(
                "%s %s OK %dms sent=%d received=%d %.1fs",
                user,
                target,
                elapsed,
                relay.bytes_in,
                relay.bytes_out,
                time.monotonic() - started,
            )

    def _serve_association(
        self, datagrams: TunnelDatagrams, user: str, request: AssociateRequested
    ) -> None:
        channel, target = request.channel, f"udp {request.channel.host}:{request.channel.port}"
        started = time.monotonic()
        try:
            address = resolve_one(channel.host, self.limits.connect_timeout)
            sock = open_udp(address, channel.port, request.local_port)
        except (OSError, ResolveError) as error:
            status = _association_status(error)
            datagrams.send_control(datagrams.core.answer(channel, status, 0))
            access_log.info("%s %s %s (%s)", user, target, status.name, error)
            return
        bound_port = sock.getsockname()[1]
        datagrams.send_control(datagrams.core.answer(channel, ConnectStatus.OK, bound_port))
        association = OutboundAssociation(
            datagrams,
            channel,
            sock,
            max_payload=MAX_DATAGRAM[datagrams.core.dialect],
            idle_timeout=self.limits.udp_idle_timeout,
        )
        self.counters.connection_opened()
        try:
            association.run()
        finally:
            self.counters.connection_closed()
            access_log.info(
                "%s %s OK port=%d sent=%d received=%d %.1fs",
                user,
                target,
                bound_port,
                association.bytes_out,
                association.bytes_in,
                time.monotonic() - started,
            )

    def _serve_echo(self, datagrams: TunnelDatagrams, user: str, request: EchoRequested) -> None:
        channel, timeout = request.channel, request.timeout_ms / 1000
        try:
            address = resolve_one(channel.host, timeout or 1.0)
            status, elapsed, data = ping(address, request.data, timeout, channel.id)
        except ResolveError as error:
            status, elapsed, data = ConnectStatus.UNKNOWN_HOST, 0, b""
            log.info("echo to %s: %s", channel.host, error)
        except IcmpUnavailable as error:
            status, elapsed, data = ConnectStatus.GENERAL_FAILURE, 0, b""
            log.warning("echo to %s: %s", channel.host, error)
        datagrams.send_control(datagrams.core.echo_reply(channel, status, elapsed, data))
        access_log.info("%s icmp %s %s %dms", user, channel.host, status.name, elapsed)


def _association_status(error: BaseException) -> ConnectStatus:
    if isinstance(error, ResolveError):
        return ConnectStatus.UNKNOWN_HOST
    if isinstance(error, LocalPortTaken):
        return ConnectStatus.GENERAL_FAILURE
    return status_for(error)


def resolve_one(host: str, timeout: float) -> str:
    """The first address of ``host`` (an IP literal as it is), off the event loop."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return SystemResolver().resolve(host, timeout)[0]


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
