"""SOCKS5 ports: the listener both ends share, and the client's port on top of it.

The SOCKS5 state machine (``jproxy.socks.socks5``) reads the greeting and the request. On the
client's port each accepted connection becomes one tunnel stream: the target travels to the
server unresolved (no DNS leak here), the tunnel's connect status becomes the matching SOCKS
reply, and then the socket is relayed as the stream. The server's plain port
(``jproxy.handlers.socks.plain``) connects straight out instead.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Mapping

import gevent
from gevent.pool import Pool

from jproxy.handlers.console.live import NO_CONSOLE
from jproxy.handlers.net.admission import Doorway, Evicted
from jproxy.handlers.net.descriptors import Acceptor
from jproxy.handlers.net.sockets import send_all
from jproxy.handlers.socks.udp_relay import SocksUdpRelay, TunnelRoutes, association_for
from jproxy.handlers.tunnel.link import TunnelClosed
from jproxy.handlers.tunnel.pool import TunnelPool
from jproxy.metrics import Counters
from jproxy.policy.hostnames import for_log
from jproxy.socks.socks5 import (
    ConnectRequested,
    CredentialCheck,
    Rejected,
    Send,
    Socks5Server,
    UdpAssociateRequested,
    reply_code_for,
)
from jproxy.socks.udp_association import MAX_DATAGRAM
from jproxy.tunnel.mux import Exhausted
from jproxy.tunnel.statuses import status_text
from schemas.jproxy import ConnectStatus
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
CONNECT_TIMEOUT = 20.0
"""How long a SOCKS client waits for the server's connect answer (its own timeout is 10 s)."""
READ_SIZE = 4096
LISTEN_BACKLOG = 1024


def _target_text(request: ConnectRequested) -> str:
    """The request's target for a log line (built only when a line is written)."""
    return f"{for_log(request.host)}:{request.port}"


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
        self._doorway = Doorway("SOCKS port", MAX_WAITING, MAX_WAITING_PER_ADDRESS)
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
            with self._doorway.waiting(peer[0]):
                request = self._negotiate(sock, core, peer)
                self._doorway.done_waiting()
        except (OSError, gevent.Timeout, Evicted) as error:
            log.debug("SOCKS client %s:%d gave up: %r", peer[0], peer[1], error)
            sock.close()
            return
        if request is None:
            sock.close()
            return
        if self._clients >= self.max_clients:
            log.warning(
                "SOCKS client %s:%d refused: %d connections open (the limit)",
                peer[0],
                peer[1],
                self.max_clients,
            )
            self._refuse(sock, core, ReplyCode.GENERAL_FAILURE)
            return
        self._clients += 1
        try:
            if isinstance(request, UdpAssociateRequested):
                self._associate(sock, core, request)
            else:
                self._connect(sock, core, request, peer)
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


class Socks5Listener(Socks5Port):
    """The client's SOCKS port: each CONNECT becomes one stream of the tunnel."""

    console = NO_CONSOLE

    def __init__(self, listen: tuple[str, int], tunnels: TunnelPool, **options) -> None:
        super().__init__(listen, **options)
        self.tunnels = tunnels

    def _connect(
        self, sock: socket.socket, core: Socks5Server, request: ConnectRequested, peer: tuple
    ) -> None:
        try:
            relay, answer = self.tunnels.open_stream(
                request.host, request.port, sock, CONNECT_TIMEOUT
            )
        except (TunnelClosed, Exhausted, gevent.Timeout) as error:
            why = error or "no answer from the server"
            log.info("CONNECT %s failed: %s", _target_text(request), why)
            self.console.refused(peer, _target_text(request), str(why))
            self._refuse(sock, core, ReplyCode.GENERAL_FAILURE)
            return
        status, _ = answer
        if status is not ConnectStatus.OK:
            log.info("CONNECT %s: server says %s", _target_text(request), status_text(status))
            self.console.refused(peer, _target_text(request), f"server says {status.name}", status)
            self._refuse(sock, core, reply_code_for(status))
            return
        try:
            send_all(sock, core.reply(ReplyCode.SUCCEEDED))
        except OSError:
            pass  # the relay notices the dead socket and ends the stream
        counters = self.tunnels.counters
        counters.connection_opened()
        shown = self.console.stream(relay, peer, request.host, request.port)
        try:
            relay.run(core.early_data)
        finally:
            counters.connection_closed()
            self.console.closed(shown)

    def _associate(
        self, sock: socket.socket, core: Socks5Server, request: UdpAssociateRequested
    ) -> None:
        try:
            datagrams = self.tunnels.datagrams()
        except TunnelClosed as error:
            log.info("UDP ASSOCIATE failed: %s", error)
            self._refuse(sock, core, ReplyCode.GENERAL_FAILURE)
            return
        if datagrams.udp_unsupported:
            log.info("UDP ASSOCIATE refused: the server ignores UDP (a 3.0 server, see above)")
            self._refuse(sock, core, ReplyCode.GENERAL_FAILURE)
            return
        rules = association_for(
            sock,
            request.host,
            request.port,
            MAX_DATAGRAM[datagrams.dialect],
            time.monotonic(),
        )
        relay = SocksUdpRelay(sock, TunnelRoutes(datagrams), rules, self.tunnels.counters)
        self._relay_udp(sock, core, relay, self.tunnels.counters, "tunnel")
