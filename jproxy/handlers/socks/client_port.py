"""The client's one port: SOCKS5, SOCKS4/4a and HTTP proxy, told apart by the first byte.

0x05 is SOCKS5, 0x04 SOCKS4 or 4a, an ASCII letter an HTTP request line (``CONNECT``, ``GET``,
...; ``jproxy.handlers.http.proxy``). Anything else gets no answer, is counted
(``gjproxy_client_unrecognized_connections``) and closed. Every destination goes through the
``Router``: the routing rules, then the tunnel, a direct connection or a refusal, and one
access-log record. UDP ASSOCIATE sends each destination the way the rules say.

Deadlines: the first byte within the handshake timeout (5 s); then SOCKS has its own 5 s and
HTTP 10 s for each request head. Connections past their request count toward ``max_clients``,
whatever the protocol.
"""

from __future__ import annotations

import logging
import socket
import time

import gevent

from jproxy.handlers.http.proxy import serve_http
from jproxy.handlers.net.admission import Evicted
from jproxy.handlers.net.router import Refused, Router, RuledUdpRoutes
from jproxy.handlers.net.sockets import send_all
from jproxy.handlers.socks.port import READ_SIZE, Socks5Port
from jproxy.handlers.socks.udp_relay import SocksUdpRelay, TunnelRoutes, association_for
from jproxy.handlers.tunnel.link import TunnelClosed
from jproxy.socks.socks4 import Socks4Server
from jproxy.socks.socks5 import (
    ConnectRequested,
    Rejected,
    Socks5Server,
    UdpAssociateRequested,
    reply_code_for,
)
from jproxy.socks.udp_association import MAX_DATAGRAM
from schemas.jproxy import ConnectStatus
from schemas.socks4 import VERSION as SOCKS4
from schemas.socks5 import VERSION as SOCKS5
from schemas.socks5 import ReplyCode

log = logging.getLogger(__name__)

HTTP_HEAD_TIMEOUT = 10.0
"""Seconds an HTTP client gets to send one request head, from its first byte."""


def _is_letter(byte: int) -> bool:
    return 0x41 <= byte <= 0x5A or 0x61 <= byte <= 0x7A


class ClientPort(Socks5Port):
    """The client's port; ``pac`` gives the PAC text for the address a browser reached."""

    name = "SOCKS5"

    def __init__(self, listen: tuple[str, int], router: Router, **options) -> None:
        super().__init__(listen, **options)
        self.router = router
        self.tunnels = router.tunnels
        self.http_head_timeout = HTTP_HEAD_TIMEOUT

    def start(self) -> None:
        super().start()
        log.info("the same port speaks SOCKS4/4a and HTTP proxy; its PAC file is /proxy.pac")

    def _handle(self, sock: socket.socket, peer: tuple) -> None:
        try:
            with self.doorway.waiting(peer[0]):
                with gevent.Timeout(self.handshake_timeout):
                    first = sock.recv(1, socket.MSG_PEEK)
        except (OSError, gevent.Timeout, Evicted) as error:
            log.debug("client %s:%d sent nothing: %r", peer[0], peer[1], error)
            sock.close()
            return
        if not first:
            sock.close()
        elif first[0] == SOCKS5:
            super()._handle(sock, peer)
        elif first[0] == SOCKS4:
            self._socks4(sock, peer)
        elif _is_letter(first[0]):
            serve_http(self, sock, peer)
        else:
            self.tunnels.counters.unrecognized_connections += 1
            log.debug("client %s:%d: first byte 0x%02x is no protocol", peer[0], peer[1], first[0])
            sock.close()

    # --- SOCKS5 ---------------------------------------------------------------------------

    def _connect(
        self, sock: socket.socket, core: Socks5Server, request: ConnectRequested, peer: tuple
    ) -> None:
        router = self.router
        with router.logged("socks5", core.user or "", peer, request.host, request.port) as record:
            try:
                link = router.open(request.host, request.port, sock, record)
            except Refused as refused:
                self._refuse(sock, core, reply_code_for(refused.status))
                return
            try:
                send_all(sock, core.reply(ReplyCode.SUCCEEDED))
            except OSError:
                pass  # the relay notices the dead socket and ends
            router.serve(link, core.early_data)

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
        association = association_for(
            sock, request.host, request.port, MAX_DATAGRAM[datagrams.dialect], time.monotonic()
        )
        routes = RuledUdpRoutes(
            self.router, TunnelRoutes(datagrams), user=core.user or "", peer=sock.getpeername()
        )
        relay = SocksUdpRelay(sock, routes, association, self.tunnels.counters)
        self._relay_udp(sock, core, relay, self.tunnels.counters, "tunnel")

    # --- SOCKS4 and 4a --------------------------------------------------------------------

    def _socks4(self, sock: socket.socket, peer: tuple) -> None:
        core = Socks4Server(users_required=self.users is not None or self.check_login is not None)
        try:
            with self.doorway.waiting(peer[0]):
                with gevent.Timeout(self.handshake_timeout):
                    event = None
                    while event is None:
                        data = sock.recv(READ_SIZE)
                        if not data:
                            sock.close()
                            return
                        event = core.receive(data)
                self.doorway.done_waiting()
        except (OSError, gevent.Timeout, Evicted) as error:
            log.debug("SOCKS4 client %s:%d gave up: %r", peer[0], peer[1], error)
            sock.close()
            return
        if isinstance(event, Rejected):
            log.info("SOCKS4 client %s:%d refused: %s", peer[0], peer[1], event.reason)
            self._send_and_close(sock, event.data)
            return
        with self.client_slot(peer) as admitted:
            if not admitted:
                self._send_and_close(sock, core.reply(ConnectStatus.CONNECTION_LIMIT))
                return
            self._socks4_connect(sock, core, event, peer)

    def _socks4_connect(
        self, sock: socket.socket, core: Socks4Server, request: ConnectRequested, peer: tuple
    ) -> None:
        router = self.router
        with router.logged("socks4", "", peer, request.host, request.port) as record:
            try:
                link = router.open(request.host, request.port, sock, record)
            except Refused as refused:
                self._send_and_close(sock, core.reply(refused.status))
                return
            try:
                send_all(sock, core.reply(ConnectStatus.OK))
            except OSError:
                pass
            router.serve(link, core.early_data)

    @staticmethod
    def _send_and_close(sock: socket.socket, data: bytes) -> None:
        try:
            send_all(sock, data)
        except OSError:
            pass
        sock.close()
