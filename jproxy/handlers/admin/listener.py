"""The admin listener: runs ``jproxy.admin.protocol`` on SCTP where the kernel has it, TCP
otherwise.

Each connection is one short exchange, so the peer gets a fixed time budget for sending its
bytes; a request still incomplete when it runs out is answered 254. Password hashing (scrypt,
tens of milliseconds) runs in a small thread pool so it never stalls the tunnels' event loop.

Connections count in a small budget per source address and in total, the oldest giving way to
a newcomer, so idle connections cannot delay the operator. Login attempts are throttled per
(origin, user name) by ``jproxy.handlers.net.logins``: one attempt at a time, each waiting out
the doubling delay of the failures before it, so parallel connections guess no faster than
one. The origin of a connection that a tunnel user made through the server is that user and
their address (``Origins``), not the server's own address, so their guesses never delay the
operator logging in from that address.
"""

from __future__ import annotations

import logging
import socket
import time
from functools import partial

from gevent.pool import Pool

from jproxy.admin.protocol import (
    AdminServerConnection,
    ExchangeEnded,
    LoginAccepted,
    LoginRefused,
    RequestAnswered,
    ServerOutput,
    server_methods,
)
from jproxy.config import host_port_text
from jproxy.handlers.net.admission import Doorway, Evicted
from jproxy.handlers.net.descriptors import Acceptor
from jproxy.handlers.net.dialer import Origins
from jproxy.handlers.net.logins import ThrottledLogins
from jproxy.metrics import Counters
from jproxy.policy.admission import GREETED, KNOWN
from jproxy.policy.passwords import AdminCredentials, LoginThrottle
from jproxy.tuning import RelayTuning

log = logging.getLogger(__name__)

EXCHANGE_DEADLINE = 5.0
MAX_CONNECTIONS = 64
MAX_CONNECTIONS_PER_ADDRESS = 16
SEND_TIMEOUT = 5.0
RECV_SIZE = 4096
IPPROTO_SCTP = getattr(socket, "IPPROTO_SCTP", 132)


def stream_socket(family: int) -> tuple[socket.socket, str, OSError | None]:
    """A stream socket for the admin protocol: ``(socket, "SCTP" or "TCP", why not SCTP)``."""
    try:
        return socket.socket(family, socket.SOCK_STREAM, IPPROTO_SCTP), "SCTP", None
    except OSError as error:
        return socket.socket(family, socket.SOCK_STREAM), "TCP", error


class AdminServer(Acceptor):
    """Runs one exchange per connection; at most ``pool_size`` at once, the oldest giving way."""

    def __init__(
        self,
        listener: socket.socket,
        transport: str,
        credentials: AdminCredentials,
        counters: Counters,
        tuning: RelayTuning,
        *,
        pool_size: int,
        throttle: LoginThrottle,
        deadline: float,
        origins: Origins | None = None,
    ) -> None:
        super().__init__(listener, spawn=Pool())  # unbounded: the doorway bounds it
        self.transport = transport
        self._doorway = Doorway(
            "admin port", pool_size, min(pool_size, MAX_CONNECTIONS_PER_ADDRESS)
        )
        self._methods = server_methods(counters, tuning)
        self._credentials = credentials
        self._logins = ThrottledLogins("admin", self._matches, throttle, deadline)
        self._origins = origins or Origins()
        self._deadline = deadline

    def stop(self, timeout: float | None = None) -> None:
        super().stop(timeout)
        self._logins.stop()

    def _check(self, origin: str, user: bytes, password: bytes) -> bool:
        """A well-formed login request moves its connection ahead of silent ones in the
        pre-login budget, and proven credentials further still."""
        self._doorway.progressed(GREETED)
        accepted = self._logins.check(origin, user, password)
        if accepted:
            self._doorway.progressed(KNOWN)
        return accepted

    def replace_credentials(self, credentials: AdminCredentials) -> None:
        """Check logins against ``credentials`` from now on (a reload)."""
        self._credentials = credentials

    def _matches(self, user: bytes, password: bytes) -> bool:
        return self._credentials.check(user, password)

    def handle(self, sock: socket.socket, address: tuple) -> None:
        try:
            with self._doorway.waiting(address[0]):
                self._exchange(sock, address)
        except Evicted:
            log.debug("admin: dropped a connection from %s for newer ones", address[0])
        finally:
            sock.close()

    def _exchange(self, sock: socket.socket, address: tuple) -> None:
        ip = address[0]
        origin = self._origins.of(address) or ip
        exchange = AdminServerConnection(partial(self._check, origin), self._methods)
        budget = self._deadline
        try:
            while not exchange.finished:
                started = time.monotonic()
                data = self._receive(sock, budget)
                budget -= time.monotonic() - started
                for output in exchange.receive(data) if data else exchange.end_of_input():
                    self._act(sock, ip, output)
            sock.shutdown(socket.SHUT_WR)
        except OSError as error:
            log.info("admin: connection from %s failed: %s", ip, error)

    @staticmethod
    def _receive(sock: socket.socket, budget: float) -> bytes:
        """Up to RECV_SIZE bytes, or b"" once the peer half-closed or its time is up."""
        if budget <= 0:
            return b""
        sock.settimeout(budget)
        try:
            return sock.recv(RECV_SIZE)
        except TimeoutError:
            return b""

    @staticmethod
    def _act(sock: socket.socket, ip: str, output: ServerOutput) -> None:
        match output:
            case bytes():
                sock.settimeout(SEND_TIMEOUT)
                sock.sendall(output)
            case LoginAccepted(user=user):
                log.info("admin: %r logged in from %s", user, ip)
            case LoginRefused(user=user, status=status, error=None):
                log.warning("admin: login of %r from %s refused: %s", user, ip, status.name)
            case LoginRefused(user=user, error=error):
                log.error("admin: checking the login of %r from %s failed: %r", user, ip, error)
            case RequestAnswered(method=method, reply=reply, data=data):
                log.info("admin: method %s from %s -> %d %s", method, ip, reply, data)
            case ExchangeEnded(reason=reason):
                log.debug("admin: exchange with %s ended: %s", ip, reason)


def serve_admin(
    listen: tuple[str, int],
    credentials: AdminCredentials,
    counters: Counters,
    tuning: RelayTuning,
    *,
    pool_size: int = MAX_CONNECTIONS,
    throttle: LoginThrottle | None = None,
    deadline: float = EXCHANGE_DEADLINE,
    origins: Origins | None = None,
) -> AdminServer:
    """Start the admin listener on ``listen``; ``.address`` is where it is bound, ``.stop()``."""
    host, port = listen
    family, _, _, _, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    listener, transport, why_not_sctp = stream_socket(family)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(sockaddr)
        listener.listen(128)
        listener.setblocking(False)
    except OSError:
        listener.close()
        raise
    server = AdminServer(
        listener,
        transport,
        credentials,
        counters,
        tuning,
        pool_size=pool_size,
        throttle=throttle or LoginThrottle(),
        deadline=deadline,
        origins=origins,
    )
    server.start()
    where = host_port_text(listener.getsockname())
    if why_not_sctp is None:
        log.info("admin: serving the admin protocol over SCTP on %s", where)
    else:
        log.info(
            "admin: SCTP unavailable (%s), serving the admin protocol over TCP on %s",
            why_not_sctp.strerror or why_not_sctp,
            where,
        )
    log.info("admin: account %r from %s", credentials.user, credentials.source)
    return server
