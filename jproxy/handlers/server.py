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

import logging
import socket
import time
from dataclasses import dataclass

import gevent
from gevent.pool import Pool

from jproxy.admission import Refused, TunnelSlots
from jproxy.egress import EgressPolicy
from jproxy.handlers.accesslog import AccessLog, AccessRecord
from jproxy.handlers.admin import host_port_text
from jproxy.handlers.admission import Doorway, Evicted
from jproxy.handlers.descriptors import Acceptor
from jproxy.handlers.dialer import Dialer, DialError
from jproxy.handlers.handshake import ServerLogin, prove, server_login
from jproxy.handlers.keylog import KeyLog
from jproxy.handlers.resolver import SystemResolver
from jproxy.handlers.sockets import set_nodelay, tune_tunnel_socket
from jproxy.handlers.tunnel import DEFAULT_IDLE_TIMEOUT, Tunnel
from jproxy.handshake import version_text
from jproxy.keys import UserDirectory
from jproxy.metrics import Counters
from jproxy.mux import DEFAULT_MAX_STREAMS, ConnectRequested, Mux
from jproxy.tuning import RelayTuning
from schemas.jproxy import ConnectStatus, Direction, status_for_dialect

log = logging.getLogger(__name__)


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
        key_log: KeyLog | None = None,
        dialer: Dialer | None = None,
        access_log: AccessLog | None = None,
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
        self._slots = TunnelSlots(limits.max_tunnels, limits.max_tunnels_per_user)
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

    def stop(self, timeout: float = 5.0) -> None:
        self._server.close()
        for tunnel in list(self._tunnels):
            tunnel.close()
        self._server.stop(timeout)

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
                self._serve_stream, t, user, where, request
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

    def _serve_stream(
        self, tunnel: Tunnel, user: str, client: str, request: ConnectRequested
    ) -> None:
        """Open the stream's connection and relay it; one access log record either way."""
        target = host_port_text((request.host, request.port))
        record = AccessRecord("tunnel", user, client, target, time.time())
        started = time.monotonic()
        try:
            self._open_stream(tunnel, request, record, started)
        except BaseException:
            record.ended, record.reason = record.ended or "cut", record.reason or "tunnel ended"
            raise
        finally:
            record.duration = time.monotonic() - started
            self.access_log.write(record)

    def _open_stream(
        self, tunnel: Tunnel, request: ConnectRequested, record: AccessRecord, started: float
    ) -> None:
        stream = request.stream
        try:
            sock, address = self.dialer.connect(request.host, request.port)
        except DialError as error:
            status = status_for_dialect(error.status, tunnel.mux.dialect)
            record.connect_ms = _ms_since(started)
            tunnel.send_control(tunnel.mux.answer(stream, status, record.connect_ms))
            record.status, record.reason = error.status.name, error.reason
            record.ended = "refused" if error.status is ConnectStatus.NOT_ALLOWED else "failed"
            return
        except BaseException:
            tunnel.send_control(tunnel.mux.answer(stream, ConnectStatus.GENERAL_FAILURE, 0))
            raise
        record.connect_ms = _ms_since(started)
        record.status, record.connected = ConnectStatus.OK.name, host_port_text(address)
        tunnel.send_control(tunnel.mux.answer(stream, ConnectStatus.OK, record.connect_ms))
        if not tunnel.mux.is_live(stream):  # the client gave up while we connected
            sock.close()
            record.ended, record.reason = "closed", "the client gave up while we connected"
            return
        set_nodelay(sock)
        self.counters.connection_opened()
        relay = tunnel.attach(stream, sock)
        try:
            relay.run()
        finally:
            self.counters.connection_closed()
            record.bytes_up, record.bytes_down = relay.bytes_in, relay.bytes_out
            record.ended = relay.ending


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
