"""``gjproxy server``'s tunnel endpoint: log in each tunnel, then open its streams for real.

Each accepted tunnel runs in a greenlet of a bounded pool (the tunnel limit). Each stream the
client asks for gets a greenlet that opens it through the server's one ``Dialer`` (host check,
resolver, egress policy, fd budget), answers with the wire's status and the milliseconds it
took, and relays; every failure is answered, so the stream id is freed on both ends. When a
tunnel ends, every outbound socket it owned is closed with it.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass

import gevent
from gevent.pool import Pool

from jproxy.channels import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CHANNELS,
    DEFAULT_WINDOW,
    Channel,
    Channels,
)
from jproxy.datagrams import DEFAULT_MAX_ASSOCIATIONS, AssociateRequested, Datagrams, EchoRequested
from jproxy.egress import EgressPolicy
from jproxy.handlers.datagrams import TunnelDatagrams
from jproxy.handlers.descriptors import Acceptor
from jproxy.handlers.dialer import Dialer, DialError
from jproxy.handlers.handshake import server_login
from jproxy.handlers.icmp import Echo, IcmpUnavailable, ping
from jproxy.handlers.outbound_udp import OutboundAssociation, open_udp
from jproxy.handlers.resolver import SystemResolver
from jproxy.handlers.sockets import set_nodelay, tune_tunnel_socket
from jproxy.handlers.tunnel import Tunnel
from jproxy.handshake import version_text
from jproxy.hostnames import for_log
from jproxy.keys import UserDirectory
from jproxy.metrics import Counters
from jproxy.tuning import RelayTuning
from jproxy.udp import DEFAULT_IDLE_TIMEOUT as DEFAULT_UDP_IDLE_TIMEOUT
from jproxy.udp import MAX_DATAGRAM
from schemas.jproxy import ConnectStatus, Direction, status_for_dialect

log = logging.getLogger(__name__)
access_log = logging.getLogger("gjproxy.access")

DEFAULT_GRACE = 5.0
_DRAIN_POLL = 0.1


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
    max_associations: int = DEFAULT_MAX_ASSOCIATIONS
    """UDP associations per tunnel."""
    udp_idle_timeout: float = DEFAULT_UDP_IDLE_TIMEOUT


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
        dialer: Dialer | None = None,
    ) -> None:
        self.users = users
        self.allow_legacy = allow_legacy
        self.limits = limits or ServerLimits()
        self.counters = counters or Counters()
        self.tuning = tuning or RelayTuning()
        self.dialer = dialer or Dialer(
            SystemResolver(), EgressPolicy(), self.limits.connect_timeout
        )
        self._tunnels: set[Tunnel] = set()
        self._server = Acceptor(listen, self._handle, spawn=Pool(self.limits.max_tunnels))

    @property
    def address(self) -> tuple[str, int]:
        return self._server.address[:2]

    def start(self) -> None:
        self._server.start()
        self.dialer.policy = self.dialer.policy.listening_on([self.address])
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
        tunnel.datagrams = TunnelDatagrams(
            tunnel,
            Datagrams(
                Direction.SERVER_TO_CLIENT,
                session.dialect,
                streams=channels.channels,
                max_associations=self.limits.max_associations,
            ),
            self.counters,
            on_associate=lambda d, request: streams.spawn(
                self._serve_association, d, user, request
            ),
            on_echo=lambda d, request: streams.spawn(self._serve_echo, d, user, request),
        )
        channels.other_channels = tunnel.datagrams.core.channels
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
        target = f"{for_log(channel.host)}:{channel.port}"
        started = time.monotonic()
        try:
            sock, address = self.dialer.connect(channel.host, channel.port)
        except DialError as error:
            status = status_for_dialect(error.status, tunnel.channels.dialect)
            elapsed = _ms_since(started)
            tunnel.answer(channel, status, elapsed)
            reason = for_log(error.reason)
            access_log.info(
                "%s %s %s %dms (%s) failed", user, target, error.status.name, elapsed, reason
            )
            return
        except BaseException:
            tunnel.answer(channel, ConnectStatus.GENERAL_FAILURE, 0)
            raise
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
                "%s %s OK %dms via %s sent=%d received=%d %.1fs %s",
                user,
                target,
                elapsed,
                address[0],
                relay.bytes_in,
                relay.bytes_out,
                time.monotonic() - started,
                relay.ending.value,
            )

    def _serve_association(
        self, datagrams: TunnelDatagrams, user: str, request: AssociateRequested
    ) -> None:
        channel = request.channel
        target = f"udp {for_log(channel.host)}:{channel.port}"
        started = time.monotonic()
        try:
            address = self.dialer.addresses_for(channel.host, channel.port)[0]
            sock = open_udp(self.dialer, address, channel.port, request.local_port)
        except DialError as error:
            status = status_for_dialect(error.status, datagrams.core.dialect)
            datagrams.send_control(datagrams.core.answer(channel, status, 0))
            access_log.info("%s %s %s (%s)", user, target, error.status.name, for_log(error.reason))
            return
        bound_port = sock.getsockname()[1]
        reply = datagrams.core.answer(channel, ConnectStatus.OK, bound_port)
        if reply is None:  # the client dissociated while we set up
            sock.close()
            return
        datagrams.send_control(reply)
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
                "%s %s OK port=%d via %s sent=%d received=%d %.1fs",
                user,
                target,
                bound_port,
                address,
                association.bytes_out,
                association.bytes_in,
                time.monotonic() - started,
            )

    def _serve_echo(self, datagrams: TunnelDatagrams, user: str, request: EchoRequested) -> None:
        """One ICMP echo, through the egress policy like every other way out (judged as
        port 0)."""
        channel, timeout = request.channel, request.timeout_ms / 1000
        try:
            address = self.dialer.addresses_for(channel.host, 0)[0]
            echo = ping(address, request.data, timeout, channel.id)
        except DialError as error:
            status = status_for_dialect(error.status, datagrams.core.dialect)
            echo = Echo(status, 0, b"", for_log(error.reason))
        except IcmpUnavailable as error:
            log.warning("echo to %s: %s", for_log(channel.host), error)
            echo = Echo(ConnectStatus.GENERAL_FAILURE, 0, b"", "ICMP unavailable")
        reply = datagrams.core.echo_reply(channel, echo.status, echo.elapsed_ms, echo.data)
        datagrams.send_control(reply)
        access_log.info(
            "%s icmp %s %s %dms (%s)",
            user,
            for_log(channel.host),
            echo.status.name,
            echo.elapsed_ms,
            echo.via,
        )


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
