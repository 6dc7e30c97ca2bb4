"""``gjproxy server``'s tunnel endpoint: log in each tunnel, then open its streams for real.

Each accepted connection runs in its own greenlet, counted first in the pre-login budget (per
source address and in total; the oldest waiting connection gives way to a newcomer) and, once
logged in, in the tunnel slots (in all and per user). A 3.1 login counts as logged in only
when its first frame proves that it holds the key; a 3.0 login holds an unproven slot, which
any other login may take, until its first well-formed frame. Each stream the client asks for
gets a greenlet that opens it through the server's one ``Dialer`` (host check, resolver,
egress policy, fd budget), answers with the wire's status and the milliseconds it took, and
relays; every failure is answered, so the stream id is freed on both ends. When a
tunnel ends, every outbound socket it owned is closed with it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import gevent
from gevent.pool import Pool

from jproxy.handlers.admin.listener import host_port_text
from jproxy.handlers.console.live import NO_CONSOLE
from jproxy.handlers.dns.resolver import SystemResolver
from jproxy.handlers.logs.access import AccessLog, AccessRecord
from jproxy.handlers.net.admission import Doorway, Evicted
from jproxy.handlers.net.descriptors import Acceptor
from jproxy.handlers.net.dialer import Dialer, DialError
from jproxy.handlers.net.sockets import set_nodelay, tune_tunnel_socket
from jproxy.handlers.tunnel.driver import Tunnel
from jproxy.handlers.tunnel.handshake import ServerLogin, prove, server_login
from jproxy.handlers.tunnel.keylog import KeyLog
from jproxy.handlers.tunnel.outbound_udp import OutboundAssociation, open_udp
from jproxy.handlers.tunnel.ping_sockets import Echo, IcmpUnavailable, ping
from jproxy.metrics import Counters
from jproxy.policy.admission import Refused, TunnelSlots
from jproxy.policy.egress import EgressPolicy
from jproxy.policy.hostnames import for_log
from jproxy.socks.udp_association import DEFAULT_IDLE_TIMEOUT as DEFAULT_UDP_IDLE_TIMEOUT
from jproxy.socks.udp_association import MAX_DATAGRAM
from jproxy.tuning import RelayTuning
from jproxy.tunnel.handshake import version_text
from jproxy.tunnel.keys import UserDirectory
from jproxy.tunnel.mux import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_ASSOCIATIONS,
    DEFAULT_MAX_CHANNELS,
    DEFAULT_WINDOW,
    Channel,
    Channels,
    Do,
    Ending,
    Event,
)
from schemas.jproxy import ConnectStatus, Direction, status_for_dialect

log = logging.getLogger(__name__)


LISTEN_BACKLOG = 1024

DEFAULT_GRACE = 5.0
_DRAIN_POLL = 0.1


def _owner(user: str) -> str:
    """Who a stream or UDP socket is for, in the dialer's fd shares and login origins."""
    return f"tunnel user {user}"


@dataclass
class ServerLimits:
    max_tunnels: int = 64
    max_tunnels_per_user: int = 8
    max_prelogin: int = 128
    max_prelogin_per_address: int = 16
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
    console = NO_CONSOLE

    def __init__(
        self,
        listen: tuple[str, int],
        users: UserDirectory,
        *,
        allow_legacy: bool = False,
        limits: ServerLimits | None = None,
        counters: Counters | None = None,
        tuning: RelayTuning | None = None,
        key_log: KeyLog | None = None,
        dialer: Dialer | None = None,
        access_log: AccessLog | None = None,
        slots: TunnelSlots | None = None,
    ) -> None:
        self.users = users
        self.key_log = key_log
        self.allow_legacy = allow_legacy
        self.limits = limits or ServerLimits()
        self.counters = counters or Counters()
        self.access_log = access_log or AccessLog(None)
        self.tuning = tuning or RelayTuning()
        self.dialer = dialer or Dialer(
            SystemResolver(), EgressPolicy(), self.limits.connect_timeout
        )
        self._tunnels: set[Tunnel] = set()
        limits = self.limits
        self._doorway = Doorway("tunnel port", limits.max_prelogin, limits.max_prelogin_per_address)
        if slots is None:
            slots = TunnelSlots(limits.max_tunnels, limits.max_tunnels_per_user)
        self._slots = slots
        # Every connection gets a greenlet at once: the pre-login budget and the tunnel slots
        # bound them, so a full pool can never leave a newcomer unanswered in the backlog.
        self._server = Acceptor(listen, self._handle, spawn=Pool(), backlog=LISTEN_BACKLOG)

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

    def set_limits(self, limits: ServerLimits) -> None:
        """New limits for what comes next (a reload): logins, tunnels and streams opened from
        now on; what is open keeps going, and a lower limit only refuses newcomers."""
        self.limits = limits
        self._doorway.budget.total = limits.max_prelogin
        self._doorway.budget.per_address = limits.max_prelogin_per_address
        self._slots.max_tunnels = limits.max_tunnels
        self._slots.max_per_user = limits.max_tunnels_per_user
        self.dialer.connect_timeout = limits.connect_timeout

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
        where = host_port_text(peer)
        try:
            with self._doorway.waiting(peer[0]):
                tune_tunnel_socket(sock)
                login = server_login(
                    sock,
                    where,
                    self.users,
                    self.allow_legacy,
                    self.limits.handshake_timeout,
                    self.key_log,
                    progressed=self._doorway.progressed,
                )
                if login is None:
                    return
                self._doorway.done_waiting()
            self._hold_slot(sock, where, login)
        except Evicted:
            log.info("%s: dropped before login: newer connections needed the room", where)
        finally:
            sock.close()

    def _hold_slot(self, sock: socket.socket, where: str, login: ServerLogin) -> None:
        """Take a tunnel slot (a 3.0 login first proves itself in it), then serve the tunnel."""
        me = gevent.getcurrent()
        decision = self._slots.claim(me, login.user, proven=login.proven)
        try:
            if isinstance(decision, Refused):
                log.warning("%s: %s refused: %s", where, login.user, decision.reason)
                return
            for victim in decision.evict:
                victim.kill(Evicted, block=False)
            if not login.proven:
                # No deadline: any login may take this unproven slot, so it locks nobody out,
                # and an idle 3.0 tunnel (a Java client sends nothing until it is used) stays.
                if not prove(sock, where, login, None):
                    return
                decision = self._slots.prove(me)
                if isinstance(decision, Refused):
                    log.warning("%s: %s refused: %s", where, login.user, decision.reason)
                    return
            self._serve_tunnel(sock, where, login)
        finally:
            self._slots.release(me)

    def _serve_tunnel(self, sock: socket.socket, where: str, login: ServerLogin) -> None:
        user, session = login.user, login.session
        dialect = version_text(session.dialect)
        # Unbounded: the core's admission (``max_streams`` channels of every kind) is the
        # bound. A bounded pool would have to wait when full, and ``on_request`` runs in the
        # hub (the tunnel reader's callback), where nothing may wait.
        requests = Pool()
        serve = {
            Do.CONNECT: self._serve_stream,
            Do.ASSOCIATE: self._serve_association,
            Do.ECHO: self._serve_echo,
        }
        channels = Channels(
            Direction.SERVER_TO_CLIENT,
            session.dialect,
            max_message=session.max_message,
            now=time.monotonic(),
            window=self.limits.window,
            max_channels=self.limits.max_streams,
            max_associations=self.limits.max_associations,
            idle_timeout=self.limits.idle_timeout,
            udp_idle_timeout=self.limits.udp_idle_timeout,
        )

        def on_request(tunnel: Tunnel, request: Event) -> None:
            requests.spawn(serve[request.kind], tunnel, user, where, request)

        tunnel = Tunnel(
            sock,
            session,
            channels,
            counters=self.counters,
            tuning=self.tuning,
            on_request=on_request,
            name=f"tunnel {user}@{where}",
        )
        log.info("%s: logged in (dialect %s)", tunnel.name, dialect)
        self._tunnels.add(tunnel)
        self.counters.tunnel_opened(user, dialect)
        shown = self.console.tunnel_opened(tunnel, where, user)
        try:
            tunnel.run(login.proof.received)
        finally:
            self.console.tunnel_closed(shown)
            requests.kill(block=True, timeout=5)
            self.counters.tunnel_closed(user, dialect)
            self._tunnels.discard(tunnel)
            log.info("%s: closed", tunnel.name)

    @contextlib.contextmanager
    def _recorded(self, record: AccessRecord) -> Iterator[float]:
        """Handle one connection (the block gets its start time); its access-log record is
        written however the handling ends, as "cut" when the tunnel ended it."""
        started = time.monotonic()
        try:
            yield started
        except BaseException:
            record.ended = record.ended or Ending.CUT
            record.reason = record.reason or "tunnel ended"
            raise
        finally:
            record.duration = time.monotonic() - started
            self.access_log.write(record)

    def _serve_stream(self, tunnel: Tunnel, user: str, client: str, request: Event) -> None:
        """Open the stream's connection and relay it; one access log record either way."""
        channel = request.channel
        record = AccessRecord(
            "tunnel", user, client, host_port_text((channel.host, channel.port)), time.time()
        )
        with self._recorded(record) as started:
            self._open_stream(tunnel, channel, record, started)

    def _open_stream(
        self, tunnel: Tunnel, channel: Channel, record: AccessRecord, started: float
    ) -> None:
        try:
            origin = _owner(record.user)
            sock, address = self.dialer.connect(channel.host, channel.port, origin=origin)
        except DialError as error:
            status = status_for_dialect(error.status, tunnel.channels.dialect)
            record.connect_ms = _ms_since(started)
            tunnel.answer(channel, status, record.connect_ms)
            record.status, record.reason = error.status.name, error.reason
            record.ended = error.ending
            return
        except BaseException:
            tunnel.answer(channel, ConnectStatus.GENERAL_FAILURE, 0)
            raise
        record.connect_ms = _ms_since(started)
        record.status, record.connected = ConnectStatus.OK.name, host_port_text(address)
        if not tunnel.answer(channel, ConnectStatus.OK, record.connect_ms):  # the client gave up
            sock.close()
            record.ended, record.reason = Ending.CLOSED, "the client gave up while we connected"
            return
        set_nodelay(sock)
        self.counters.connection_opened()
        relay = tunnel.attach(channel, sock)
        shown = self.console.stream(
            relay, record.client, channel.host, channel.port, user=record.user, toward=False
        )
        try:
            relay.run()
        finally:
            self.console.closed(shown)
            self.counters.connection_closed()
            record.bytes_up, record.bytes_down = relay.bytes_in, relay.bytes_out
            record.ended = relay.ending
            if channel.peer_reason is not None:  # the wire's reason, whatever it meant here
                record.reason = f"disconnect from the client: {channel.peer_reason.name}"

    def _serve_association(self, tunnel: Tunnel, user: str, client: str, request: Event) -> None:
        """Open one UDP association through the dialer; one access log record either way."""
        channel = request.channel
        target = host_port_text((channel.host, channel.port))
        record = AccessRecord("tunnel", user, client, target, time.time(), transport="udp")
        with self._recorded(record) as started:
            self._open_association(tunnel, channel, request.value, record, started)

    def _open_association(
        self,
        tunnel: Tunnel,
        channel: Channel,
        local_port: int,
        record: AccessRecord,
        started: float,
    ) -> None:
        try:
            address = self.dialer.addresses_for(channel.host, channel.port)[0]
            sock = open_udp(self.dialer, address, channel.port, local_port, _owner(record.user))
        except DialError as error:
            tunnel.answer(channel, status_for_dialect(error.status, tunnel.channels.dialect), 0)
            record.status, record.reason = error.status.name, error.reason
            record.ended = error.ending
            return
        record.connect_ms = _ms_since(started)
        record.status, record.connected = (
            ConnectStatus.OK.name,
            host_port_text((address, channel.port)),
        )
        record.local_port = sock.getsockname()[1]
        association = OutboundAssociation(
            tunnel.datagrams, channel, sock, max_payload=MAX_DATAGRAM[tunnel.channels.dialect]
        )
        if not tunnel.answer(channel, ConnectStatus.OK, record.local_port):
            sock.close()  # the client dissociated while we set up
            record.ended, record.reason = Ending.CLOSED, "the client dissociated while we set up"
            return
        self.counters.connection_opened()
        shown = self.console.association(
            association, record.client, channel.host, channel.port, user=record.user
        )
        try:
            association.run()
        finally:
            self.console.closed(shown)
            self.counters.connection_closed()
            record.bytes_up, record.bytes_down = association.bytes_out, association.bytes_in
            record.ended = association.ending

    def _serve_echo(self, tunnel: Tunnel, user: str, client: str, request: Event) -> None:
        """One ICMP echo, through the egress policy like every other way out (judged as
        port 0); one access log record."""
        channel, (timeout_ms, data) = request.channel, request.value
        record = AccessRecord("tunnel", user, client, channel.host, time.time(), transport="icmp")
        try:
            address = self.dialer.addresses_for(channel.host, 0)[0]
            record.connected = address
            echo = ping(address, data, timeout_ms / 1000, channel.id)
        except DialError as error:
            status = status_for_dialect(error.status, tunnel.channels.dialect)
            echo = Echo(status, 0, b"", "")
            record.ended = error.ending
            record.reason = error.reason
        except IcmpUnavailable as error:
            log.warning("echo to %s: %s", for_log(channel.host), error)
            echo = Echo(ConnectStatus.GENERAL_FAILURE, 0, b"", "")
            record.ended, record.reason = Ending.FAILED, f"ICMP unavailable: {error}"
        tunnel.perform(tunnel.channels.echo_reply(channel, echo.status, echo.elapsed_ms, echo.data))
        record.status, record.connect_ms = echo.status.name, echo.elapsed_ms
        record.bytes_up, record.bytes_down = len(data), len(echo.data)
        ok = echo.status is ConnectStatus.OK
        record.ended = record.ended or (Ending.CLOSED if ok else Ending.FAILED)
        if not ok and not record.reason:
            record.reason = f"{echo.status.name} via {echo.via}"
        record.duration = echo.elapsed_ms / 1000
        self.access_log.write(record)


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
