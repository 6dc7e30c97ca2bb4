"""The client's local SOCKS5 port: each accepted connection becomes one tunnel stream.

The SOCKS5 state machine (``jproxy.socks5``) reads the greeting and the request; the target
travels to the server unresolved (no DNS leak here). The tunnel's connect status becomes the
matching SOCKS reply, and then the socket is relayed as the stream.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping

import gevent
from gevent.pool import Pool
from gevent.server import StreamServer

from jproxy.channels import Exhausted
from jproxy.handlers.client import TunnelClient
from jproxy.handlers.sockets import send_all
from jproxy.handlers.tunnel import TunnelClosed
from jproxy.socks5 import (
    ConnectRequested,
    Rejected,
    Send,
    Socks5Server,
    UdpAssociateRequested,
    reply_code_for,
)
from schemas.jproxy import ConnectStatus
from schemas.socks5 import ReplyCode

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
CONNECT_TIMEOUT = 20.0
"""How long a SOCKS client waits for the server's connect answer (its own timeout is 10 s)."""
READ_SIZE = 4096
LISTEN_BACKLOG = 1024


class Socks5Listener:
    def __init__(
        self,
        listen: tuple[str, int],
        tunnels: TunnelClient,
        *,
        users: Mapping[str, str] | None = None,
        max_clients: int = 1024,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self.tunnels = tunnels
        self.users = users
        self.handshake_timeout = handshake_timeout
        # A browser or a load test opens many connections at once: a listen backlog of
        # gevent's default 50 would drop SYNs and cost each late one a 1 s retransmission.
        self._server = StreamServer(
            listen, self._handle, spawn=Pool(max_clients), backlog=LISTEN_BACKLOG
        )

    @property
    def address(self) -> tuple[str, int]:
        return self._server.address[:2]

    def start(self) -> None:
        self._server.start()
        auth = "user/password" if self.users else "no authentication"
        log.info("SOCKS5 listening on %s:%d (%s)", *self.address, auth)

    def close(self) -> None:
        """Accept no more connections; the open ones go on."""
        self._server.close()

    def stop(self, timeout: float = 5.0) -> None:
        self._server.stop(timeout)

    def _handle(self, sock: socket.socket, peer: tuple) -> None:
        core = Socks5Server(self.users)
        try:
            request = self._negotiate(sock, core, peer)
        except (OSError, gevent.Timeout) as error:
            log.debug("SOCKS client %s:%d gave up: %s", peer[0], peer[1], error)
            sock.close()
            return
        if request is None:
            sock.close()
            return
        if isinstance(request, UdpAssociateRequested):
            self._refuse(sock, core, ReplyCode.COMMAND_NOT_SUPPORTED)
            return
        self._connect(sock, core, request)

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

    def _connect(self, sock: socket.socket, core: Socks5Server, request: ConnectRequested) -> None:
        target = f"{request.host}:{request.port}"
        try:
            relay, answer = self.tunnels.open_stream(
                request.host, request.port, sock, CONNECT_TIMEOUT
            )
        except (TunnelClosed, Exhausted, gevent.Timeout) as error:
            log.info("CONNECT %s failed: %s", target, error or "no answer from the server")
            self._refuse(sock, core, ReplyCode.GENERAL_FAILURE)
            return
        status, _ = answer
        if status is not ConnectStatus.OK:
            log.info("CONNECT %s: server says %s", target, status.name)
            self._refuse(sock, core, reply_code_for(status))
            return
        try:
            send_all(sock, core.reply(ReplyCode.SUCCEEDED))
        except OSError:
            pass  # the relay notices the dead socket and ends the stream
        counters = self.tunnels.counters
        counters.connection_opened()
        try:
            relay.run(core.early_data)
        finally:
            counters.connection_closed()

    @staticmethod
    def _refuse(sock: socket.socket, core: Socks5Server, code: ReplyCode) -> None:
        try:
            send_all(sock, core.reply(code))
        except OSError:
            pass
        sock.close()
