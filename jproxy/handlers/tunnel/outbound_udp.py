"""The server's side of one UDP association: a UDP socket bound to the port the client asked
for (0: any) and connected to the association's one remote address, so the kernel delivers
only that address's datagrams.

The socket never blocks: a datagram the kernel cannot take now is dropped and counted, as a
router would. The association ends when the client dissociates, when the tunnel ends, or
after ``idle_timeout`` seconds with no datagram either way (then the server dissociates).
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Iterator

import gevent
from gevent.socket import wait_read

from jproxy.handlers.net.dialer import Dialer, DialError, status_for
from jproxy.handlers.tunnel.datagrams import TunnelDatagrams
from jproxy.metrics import Counters
from jproxy.socks.udp_association import Drop
from jproxy.tunnel.datagrams import Channel
from schemas.jproxy import ConnectStatus, DisconnectReason

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
    """Joins ``sock`` to ``channel``; ``run`` reads the socket until the association ends."""

    def __init__(
        self,
        datagrams: TunnelDatagrams,
        channel: Channel,
        sock: socket.socket,
        *,
        max_payload: int,
        idle_timeout: float,
    ) -> None:
        self.datagrams = datagrams
        self.channel = channel
        self.sock = sock
        self.max_payload = max_payload
        self.idle_timeout = idle_timeout
        self.bytes_out = 0
        self.bytes_in = 0
        self.ending = ""
        """How the association ended, for the access log: closed (the client dissociated) or
        idle; empty while it runs or when its tunnel cut it."""
        self._last_activity = time.monotonic()
        self._greenlet: gevent.Greenlet | None = None
        self._peer = f"{channel.host}:{channel.port}"

    # --- Sink: called by the tunnel reader, never blocks -----------------------------------------

    def datagram(self, channel: Channel, data: bytes) -> None:
        if not send_or_drop(self.sock, data, self.datagrams.counters, self._peer):
            return
        self.bytes_out += len(data)
        self._last_activity = time.monotonic()

    def ended(self, channel: Channel, reason: DisconnectReason) -> None:
        self.ending = "reset" if reason is DisconnectReason.RESET else "closed"
        if self._greenlet is not None and self._greenlet is not gevent.getcurrent():
            self._greenlet.kill(block=False)

    # --- the association's greenlet ------------------------------------------------------------

    def run(self) -> None:
        self._greenlet = gevent.getcurrent()
        self.datagrams.attach(self.channel, self)
        try:
            while True:
                remaining = self._last_activity + self.idle_timeout - time.monotonic()
                if remaining <= 0:
                    self.ending = "idle"
                    self.datagrams.dissociate(self.channel, DisconnectReason.GENERAL)
                    return
                try:
                    wait_read(self.sock.fileno(), timeout=remaining)
                except TimeoutError:
                    continue
                self._drain()
        except gevent.GreenletExit:
            if not self.ending:  # not the client's dissociate: the tunnel ended
                raise
        finally:
            self.sock.close()

    def _drain(self) -> None:
        for data in received(self.sock, self._peer):
            self._last_activity = time.monotonic()
            if len(data) > self.max_payload:
                self.datagrams.counters.datagram_dropped(Drop.TOO_LARGE.value)
                continue
            if self.datagrams.send(self.channel, data):
                self.bytes_in += len(data)
