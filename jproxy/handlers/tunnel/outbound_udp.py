"""The server's side of one UDP association: a UDP socket bound to the port the client asked
for (0: any) and connected to the association's one remote address, so the kernel delivers
only that address's datagrams.

The socket never blocks: a datagram the kernel cannot take now is dropped and counted, as a
router would. The association ends when the client dissociates, when the tunnel ends, or when
the tunnel's core finds it idle (no datagram either way for ``--udp-idle-timeout``; then the
server dissociates): each reaches ``ended``.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Iterator

import gevent
from gevent.socket import wait_read

from jproxy.handlers.net.dialer import Dialer, DialError, status_for
from jproxy.handlers.tunnel.datagrams import TunnelDatagrams
from jproxy.metrics import Counters
from jproxy.socks.udp_association import Drop
from jproxy.tunnel.mux import Channel, Ending
from schemas.jproxy import ConnectStatus

log = logging.getLogger(__name__)

RECV_SIZE = 65535
LOCAL_PORT_TAKEN = "local port not available"


def open_udp(
    dialer: Dialer, address: str, port: int, local_port: int, owner: str = ""
) -> socket.socket:
    """A non-blocking UDP socket (within the dialer's fd budget and ``owner``'s share of it)
    bound to ``local_port`` and connected to ``address:port``; ``DialError`` otherwise (a
    taken port: general failure, "local port not available")."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = dialer.open_socket(family, socket.SOCK_DGRAM, owner=owner)
    try:
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", local_port))
        sock.connect((address, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            status, reason = ConnectStatus.GENERAL_FAILURE, f"{LOCAL_PORT_TAKEN}: {local_port}"
            raise DialError(status, reason) from None
        raise DialError(status_for(error), f"UDP to {address} port {port}: {error}") from None
    sock.setblocking(False)
    return sock


def send_or_drop(sock: socket.socket, data: bytes, counters: Counters, peer: str) -> bool:
    """Send one datagram on a connected UDP socket without waiting; ``False`` when it was
    dropped: the socket's buffer was full (counted) or the kernel refused it (logged)."""
    try:
        sock.send(data)
    except BlockingIOError:
        counters.datagram_dropped(Drop.QUEUE_FULL.value)
        return False
    except OSError as error:  # e.g. ECONNREFUSED from an earlier port unreachable
        log.debug("datagram to %s: %s", peer, error)
        return False
    return True


def received(sock: socket.socket, peer: str) -> Iterator[bytes]:
    """The datagrams ``sock`` holds now, without waiting; an error (ICMP port unreachable and
    friends: not fatal for UDP) ends the batch."""
    while True:
        try:
            yield sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as error:
            log.debug("from %s: %s", peer, error)
            return


class OutboundAssociation:
    """Joins ``sock`` to ``channel`` (its sink from now on); ``run`` reads the socket until the
    association ends."""

    def __init__(
        self,
        datagrams: TunnelDatagrams,
        channel: Channel,
        sock: socket.socket,
        *,
        max_payload: int,
    ) -> None:
        self.datagrams = datagrams
        self.channel = channel
        self.sock = sock
        self.max_payload = max_payload
        self.bytes_out = 0
        self.bytes_in = 0
        self.ending: Ending | None = None
        """How the association ended, for the access log; None while it runs."""
        self._greenlet: gevent.Greenlet | None = None
        self._peer = f"{channel.host}:{channel.port}"
        datagrams.attach(channel, self)

    # --- Sink: called by the tunnel's driver in the hub, never blocks ---------------------------

    def datagram(self, channel: Channel, data: bytes) -> None:
        if send_or_drop(self.sock, data, self.datagrams.tunnel.counters, self._peer):
            self.bytes_out += len(data)

    def ended(self, channel: Channel, ending: Ending) -> None:
        self.ending = ending
        if self._greenlet is not None and self._greenlet is not gevent.getcurrent():
            self._greenlet.kill(block=False)

    # --- the association's greenlet ------------------------------------------------------------

    def run(self) -> None:
        self._greenlet = gevent.getcurrent()
        try:
            while self.ending is None:
                wait_read(self.sock.fileno())
                self._drain()
        except gevent.GreenletExit:
            if self.ending is None:  # not the end of the association: the server's own
                raise
        finally:
            self.sock.close()

    def _drain(self) -> None:
        counters = self.datagrams.tunnel.counters
        for data in received(self.sock, self._peer):
            if len(data) > self.max_payload:
                counters.datagram_dropped(Drop.TOO_LARGE.value)
                continue
            if self.datagrams.send(self.channel, data):
                self.bytes_in += len(data)
