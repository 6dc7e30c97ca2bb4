"""The server's plain SOCKS5 port: CONNECT and UDP ASSOCIATE straight out, through the
server's one ``Dialer``.

The same resolver (DoH or the system's), egress policy, connect deadline, counters and access
log as tunnel streams; the dialer's status becomes the SOCKS reply (RFC 1928 section 6).
UDP ASSOCIATE runs the client's relay (``jproxy.handlers.socks.udp_relay``) with routes that leave
through sockets of the server's own (``jproxy.handlers.socks.plain_udp``). RFC 1929 logins are
checked against ``[socks_users]`` hashes in a small thread pool, since scrypt takes tens of
milliseconds. BIND is answered 07.
"""

from __future__ import annotations

import socket
import time

from gevent.threadpool import ThreadPool

from jproxy.handlers.admin.listener import host_port_text
from jproxy.handlers.logs.access import AccessLog, AccessRecord
from jproxy.handlers.net.dialer import Dialer, DialError
from jproxy.handlers.net.sockets import set_nodelay
from jproxy.handlers.socks.plain_udp import DirectRoutes
from jproxy.handlers.socks.port import Socks5Port
from jproxy.handlers.socks.splice import Splice
from jproxy.handlers.socks.udp_relay import SocksUdpRelay, association_for
from jproxy.metrics import Counters
from jproxy.policy.passwords import PasswordTable
from jproxy.socks.socks5 import (
    ConnectRequested,
    Socks5Server,
    UdpAssociateRequested,
    reply_code_for,
)
from jproxy.socks.udp_association import MAX_UDP_PAYLOAD
from jproxy.tuning import RelayTuning
from jproxy.tunnel.mux import Ending
from schemas.jproxy import ConnectStatus
from schemas.socks5 import ReplyCode

HASHING_THREADS = 2
SERVICE = "socks"


class PlainSocks5Port(Socks5Port):
    """``users`` None serves without authentication (only when configured so)."""

    name = "plain SOCKS5"

    def __init__(
        self,
        listen: tuple[str, int],
        dialer: Dialer,
        *,
        users: PasswordTable | None,
        counters: Counters,
        tuning: RelayTuning,
        access_log: AccessLog,
        idle_timeout: float,
    ) -> None:
        self._users = users
        self._hashing = ThreadPool(HASHING_THREADS)
        super().__init__(listen, check_login=None if users is None else self._check_login)
        self.dialer = dialer
        self.counters = counters
        self.tuning = tuning
        self.access_log = access_log
        self.idle_timeout = idle_timeout

    def replace_users(self, users: PasswordTable | None) -> None:
        """Check logins against ``users`` from now on (a reload); ``ValueError`` when that
        would switch between authentication and none (the handshake is chosen at start)."""
        if self._users is None or users is None:
            raise ValueError("this port serves without authentication")
        self._users = users

    def _check_login(self, user: bytes, password: bytes) -> bool:
        """scrypt off the event loop; the handshake deadline still bounds the wait."""
        return self._hashing.apply(self._users.check, (user, password))

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        self._hashing.kill()

    def _associate(
        self, sock: socket.socket, core: Socks5Server, request: UdpAssociateRequested
    ) -> None:
        """Each destination is checked by the dialer when its first datagram comes: a refused
        one is dropped (counted, one access-log record), the association goes on."""
        rules = association_for(sock, request.host, request.port, MAX_UDP_PAYLOAD, time.monotonic())
        routes = DirectRoutes(
            self.dialer,
            self.counters,
            self.access_log,
            user=core.user or "",
            client=host_port_text(sock.getpeername()),
            service=SERVICE,
        )
        relay = SocksUdpRelay(sock, routes, rules, self.counters)
        self._relay_udp(sock, core, relay, self.counters, SERVICE)

    def _connect(
        self, sock: socket.socket, core: Socks5Server, request: ConnectRequested, peer: tuple
    ) -> None:
        target = host_port_text((request.host, request.port))
        record = AccessRecord(SERVICE, core.user or "", host_port_text(peer), target, time.time())
        started = time.monotonic()
        try:
            self._serve(sock, core, request, record, started)
        finally:
            record.duration = time.monotonic() - started
            self.access_log.write(record)

    def _serve(
        self,
        sock: socket.socket,
        core: Socks5Server,
        request: ConnectRequested,
        record: AccessRecord,
        started: float,
    ) -> None:
        try:
            out, address = self.dialer.connect(request.host, request.port)
        except DialError as error:
            record.connect_ms = int((time.monotonic() - started) * 1000)
            record.status, record.reason = error.status.name, error.reason
            record.ended = (
                Ending.REFUSED if error.status is ConnectStatus.NOT_ALLOWED else Ending.FAILED
            )
            self._refuse(sock, core, reply_code_for(error.status))
            return
        record.connect_ms = int((time.monotonic() - started) * 1000)
        record.status, record.connected = ConnectStatus.OK.name, host_port_text(address)
        set_nodelay(out)
        try:
            sock.sendall(core.reply(ReplyCode.SUCCEEDED, *out.getsockname()[:2]))
        except OSError as error:
            out.close()
            sock.close()
            record.ended, record.reason = Ending.RESET, f"the SOCKS client went away: {error}"
            return
        splice = Splice(
            sock,
            out,
            counters=self.counters,
            service=SERVICE,
            tuning=self.tuning,
            idle_timeout=self.idle_timeout,
        )
        self.counters.connection_opened(SERVICE)
        try:
            splice.run(core.early_data)
        finally:
            self.counters.connection_closed(SERVICE)
            record.bytes_up, record.bytes_down = splice.bytes_up, splice.bytes_down
            record.ended = splice.ending
