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

from gevent.pool import Pool

from jproxy.egress import EgressPolicy
from jproxy.handlers.accesslog import AccessLog, AccessRecord
from jproxy.handlers.admin import host_port_text
from jproxy.handlers.descriptors import Acceptor
from jproxy.handlers.dialer import Dialer, DialError
from jproxy.handlers.handshake import server_login
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


@dataclass
class ServerLimits:
    max_tunnels: int = 64
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
        self._server.close()
        for tunnel in list(self._tunnels):
            tunnel.close()
        self._server.stop(timeout)

    def _handle(self, sock: socket.socket, peer: tuple) -> None:
        where = host_port_text(peer)
        tune_tunnel_socket(sock)
        login = server_login(
            sock, where, self.users, self.allow_legacy, self.limits.handshake_timeout, self.key_log
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
                self._serve_stream, t, user, where, request
            ),
            idle_timeout=self.limits.idle_timeout,
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
