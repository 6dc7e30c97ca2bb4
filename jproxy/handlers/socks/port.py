"""The SOCKS5 listener both ends share: admission, the handshake deadline, the client limit.

The SOCKS5 state machine (``jproxy.socks.socks5``) reads the greeting and the request;
subclasses say what CONNECT and UDP ASSOCIATE do. The client's port
(``jproxy.handlers.socks.client_port``) carries them through the tunnel or its routing rules
and also speaks SOCKS4 and HTTP; the server's plain port (``jproxy.handlers.socks.plain``)
connects straight out.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator, Mapping

import gevent
from gevent.pool import Pool

from jproxy.handlers.net.admission import Doorway, Evicted
from jproxy.handlers.net.descriptors import Acceptor
from jproxy.handlers.net.sockets import send_all
from jproxy.handlers.socks.udp_relay import SocksUdpRelay
from jproxy.metrics import Counters
from jproxy.socks.socks5 import (
    ConnectRequested,
    CredentialCheck,
    Rejected,
    Send,
    Socks5Server,
    UdpAssociateRequested,
)
from schemas.socks5 import ReplyCode

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 5.0
"""Seconds a SOCKS client gets for its greeting, login and request (local apps need ms)."""
MAX_CLIENTS = 1024
"""Connections past their SOCKS request served at once; the next one is refused (0x01)."""
MAX_WAITING = 512
MAX_WAITING_PER_ADDRESS = 256
"""Connections still in their SOCKS handshake, in all and from one address: the oldest gives
way to a newcomer, so idle connections cannot delay a real one. Generous, because a browser
opens a hundred connections at once from one address."""
READ_SIZE = 4096
LISTEN_BACKLOG = 1024


class Socks5Port:
    """A SOCKS5 listener: accepts clients (at most ``max_clients`` at once) and runs the
    SOCKS5 core on each under the handshake deadline. Subclasses say what CONNECT does;
    UDP ASSOCIATE is answered 07 (command not supported) unless a subclass serves it (both
    count toward ``max_clients``).

    ``users`` (clear-text passwords) or ``check_login`` turn on RFC 1929; without either, the
    port offers "no authentication".
    """

    name = "SOCKS5"

    def __init__(
        self,
        listen: tuple[str, int],
        *,
        users: Mapping[str, str] | None = None,
        check_login: CredentialCheck | None = None,
        max_clients: int = MAX_CLIENTS,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self.users = users
        self.check_login = check_login
        self.max_clients = max_clients
        self.handshake_timeout = handshake_timeout
        self._clients = 0
        self.doorway = Doorway("SOCKS port", MAX_WAITING, MAX_WAITING_PER_ADDRESS)
        # A browser or a load test opens many connections at once: a listen backlog of
        # gevent's default 50 would drop SYNs and cost each late one a 1 s retransmission.
        # Every connection gets its greenlet at once (bounded by the handshake budget and
        # max_clients), so none waits unanswered in the backlog for a pool slot.
        self._server = Acceptor(listen, self._handle, spawn=Pool(), backlog=LISTEN_BACKLOG)

    @property
    def address(self) -> tuple[str, int]:
        return self._server.address[:2]

    def start(self) -> None:
        self._server.start()
        auth = "no authentication"
        if self.users is not None or self.check_login is not None:
            auth = "user/password"
        log.info("%s listening on %s:%d (%s)", self.name, *self.address, auth)

    def close(self) -> None:
        """Accept no more connections; the open ones go on."""
        self._server.close()

    def stop(self, timeout: float = 5.0) -> None:
        self._server.stop(timeout)

    def _credential_check(self, peer: tuple) -> CredentialCheck | None:
        """The login check for a connection from ``peer`` (a subclass may throttle by it)."""
        return self.check_login

    def _handle(self, sock: socket.socket, peer: tuple) -> None:
        core = Socks5Server(self.users, check_login=self._credential_check(peer))
        try:
            with self.doorway.waiting(peer[0]):
                request = self._negotiate(sock, core, peer)
                self.doorway.done_waiting()
        except (OSError, gevent.Timeout, Evicted) as error:
            log.debug("SOCKS client %s:%d gave up: %r", peer[0], peer[1], error)
            sock.close()
            return
        if request is None:
            sock.close()
            return
        with self.client_slot(peer) as admitted:
            if not admitted:
                self._refuse(sock, core, ReplyCode.GENERAL_FAILURE)
            elif isinstance(request, UdpAssociateRequested):
                self._associate(sock, core, request)
            else:
                self._connect(sock, core, request, peer)

    @contextlib.contextmanager
    def client_slot(self, peer: tuple) -> Iterator[bool]:
        """One of the ``max_clients`` connections served at once; False (logged) when all
        are taken: the caller refuses the client."""
        if self._clients >= self.max_clients:
            log.warning(
                "%s client %s:%d refused: %d connections open (the limit)",
                self.name,
                peer[0],
                peer[1],
                self.max_clients,
            )
            yield False
            return
        self._clients += 1
        try:
            yield True
        finally:
            self._clients -= 1

    def _negotiate(
        self, sock: socket.socket, core: Socks5Server, peer: tuple
    ) -> ConnectRequested | UdpAssociateRequested | None:
        with gevent.Timeout(self.handshake_timeout):
            while True:
                data = sock.recv(READ_SIZE)
                if not data:
                    return None
                for event in core.receive(data):
                    if isinstance(event, Send):
                        send_all(sock, event.data)
                    elif isinstance(event, Rejected):
                        log.info("SOCKS client %s:%d refused: %s", peer[0], peer[1], event.reason)
                        send_all(sock, event.data)
                        return None
                    else:
                        return event

    def _connect(
        self, sock: socket.socket, core: Socks5Server, request: ConnectRequested, peer: tuple
    ) -> None:
        raise NotImplementedError

    def _associate(
        self, sock: socket.socket, core: Socks5Server, request: UdpAssociateRequested
    ) -> None:
        """A port without a UDP relay answers 07, "command not supported"."""
        self._refuse(sock, core, ReplyCode.COMMAND_NOT_SUPPORTED)

    @staticmethod
    def _relay_udp(
        sock: socket.socket,
        core: Socks5Server,
        relay: SocksUdpRelay,
        counters: Counters,
        service: str,
    ) -> None:
        """Answer a UDP ASSOCIATE with the relay's address and serve it; it counts as one
        connection of ``service``."""
        try:
            send_all(sock, core.reply(ReplyCode.SUCCEEDED, *relay.address))
        except OSError:
            relay.udp.close()
            sock.close()
            return
        counters.connection_opened(service)
        try:
            relay.run()
        finally:
            counters.connection_closed(service)
            sock.close()

    @staticmethod
    def _refuse(sock: socket.socket, core: Socks5Server, code: ReplyCode) -> None:
        try:
            send_all(sock, core.reply(code))
        except OSError:
            pass
        sock.close()
