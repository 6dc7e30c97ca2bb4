"""``gjproxy server``'s tunnel endpoint: log in each tunnel, then open its streams for real.

Each accepted connection runs in its own greenlet, counted first in the pre-login budget (per
source address and in total; the oldest waiting connection gives way to a newcomer) and, once
logged in, in the tunnel slots (in all and per user). A 3.1 login counts as logged in only
when its first frame proves that it holds the key; a 3.0 login holds an unproven slot, which
any other login may take, until its first well-formed frame. Each stream the client asks for
gets a greenlet that resolves and connects without blocking the others (gevent's resolver),
answers with the wire's status and the milliseconds it took, and relays. When a
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

from jproxy.admission import Refused, TunnelSlots
from jproxy.handlers.admission import Doorway, Evicted
from jproxy.handlers.handshake import ServerLogin, prove, server_login
from jproxy.handlers.sockets import set_nodelay, tune_tunnel_socket
from jproxy.handlers.tunnel import DEFAULT_IDLE_TIMEOUT, Tunnel
from jproxy.handshake import version_text
from jproxy.keys import UserDirectory
from jproxy.metrics import Counters
from jproxy.mux import DEFAULT_MAX_STREAMS, ConnectRequested, Mux
from jproxy.tuning import RelayTuning
from schemas.jproxy import ConnectStatus, Direction

log = logging.getLogger(__name__)
access_log = logging.getLogger("gjproxy.access")

_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.ENETDOWN}


LISTEN_BACKLOG = 1024


@dataclass
class ServerLimits:
    max_tunnels: int = 64
    max_tunnels_per_user: int = 8
    max_prelogin: int = 128
    max_prelogin_per_address: int = 16
    max_streams: int = DEFAULT_MAX_STREAMS
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
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
        limits = self.limits
        self._doorway = Doorway("tunnel port", limits.max_prelogin, limits.max_prelogin_per_address)
        self._slots = TunnelSlots(limits.max_tunnels, limits.max_tunnels_per_user)
        # Every connection gets a greenlet at once: the pre-login budget and the tunnel slots
        # bound them, so a full pool can never leave a newcomer unanswered in the backlog.
        self._server = StreamServer(listen, self._handle, spawn=Pool(), backlog=LISTEN_BACKLOG)

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
        try:
            with self._doorway.waiting(peer[0]):
                tune_tunnel_socket(sock)
                login = server_login(
                    sock, where, self.users, self.allow_legacy, self.limits.handshake_timeout
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
                if not prove(sock, where, login, self.limits.idle_timeout):
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
        log.info("%s: logged in (dialect %s)", tunnel.name, dialect)
        self._tunnels.add(tunnel)
        self.counters.tunnel_opened(user, dialect)
        try:
            tunnel.run(login.proof.received)
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
