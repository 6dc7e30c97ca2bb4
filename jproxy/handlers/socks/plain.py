"""The server's plain SOCKS5 port: CONNECT and UDP ASSOCIATE straight out, through the
server's one ``Dialer``.

The same resolver (DoH or the system's), egress policy, connect deadline, counters and access
log as tunnel streams; the dialer's status becomes the SOCKS reply (RFC 1928 section 6).
UDP ASSOCIATE runs the client's relay (``jproxy.handlers.socks.udp_relay``) with routes that leave
through sockets of the server's own (``jproxy.handlers.socks.plain_udp``). RFC 1929 logins are
checked against ``[socks_users]`` hashes with the admin port's throttle
(``jproxy.handlers.net.logins``: per origin and user name, one attempt at a time, doubling
delays after failures, scrypt in a small thread pool). BIND is answered 07.
"""

from __future__ import annotations

import socket
import time
from functools import partial

from jproxy.handlers.admin.listener import host_port_text
from jproxy.handlers.logs.access import AccessLog, AccessRecord
from jproxy.handlers.net.dialer import Dialer, DialError
from jproxy.handlers.net.logins import ThrottledLogins
from jproxy.handlers.net.sockets import set_nodelay
from jproxy.handlers.socks.plain_udp import DirectRoutes, owner_of
from jproxy.handlers.socks.port import HANDSHAKE_TIMEOUT, Socks5Port
from jproxy.handlers.socks.splice import Splice
from jproxy.handlers.socks.udp_relay import SocksUdpRelay, association_for
from jproxy.metrics import Counters
from jproxy.policy.passwords import LoginThrottle, PasswordTable
from jproxy.socks.socks5 import (
    ConnectRequested,
    CredentialCheck,
    Socks5Server,
    UdpAssociateRequested,
    reply_code_for,
)
from jproxy.socks.udp_association import MAX_UDP_PAYLOAD
from jproxy.tuning import RelayTuning
from jproxy.tunnel.mux import Ending
from schemas.jproxy import ConnectStatus
from schemas.socks5 import ReplyCode

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
        self._logins = None
        if users is not None:
            self._logins = ThrottledLogins(
                "plain SOCKS5",
                lambda user, password: self._users.check(user, password),
                LoginThrottle(),
                HANDSHAKE_TIMEOUT,
                remembered=lambda user, password: self._users.remembered(user, password),
            )
        super().__init__(listen, check_login=None if users is None else users.check)
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

    def _credential_check(self, peer: tuple) -> CredentialCheck | None:
        """Throttled by origin: the peer's address, or the tunnel or SOCKS user who had the
        server connect here; the handshake deadline bounds the wait."""
        if self._logins is None:
            return None
        return partial(self._logins.check, self.dialer.origins.of(peer) or peer[0])

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        if self._logins is not None:
            self._logins.stop()

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
        self.dialer.holds(routes.owner, sock)  # the client's fds count in its share too
        self.dialer.holds(routes.owner, relay.udp)
        self._relay_udp(sock, core, relay, self.counters, SERVICE)

    def _connect(
        self, sock: socket.socket, core: Socks5Server, request: ConnectRequested, peer: tuple
    ) -> None:
        target = host_port_text((request.host, request.port))
        record = AccessRecord(SERVICE, core.user or "", host_port_text(peer), target, time.time())
        self.dialer.holds(owner_of(record.user, record.client), sock)  # its share counts both
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
            origin = owner_of(record.user, record.client)
            out, address = self.dialer.connect(request.host, request.port, origin=origin)
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
