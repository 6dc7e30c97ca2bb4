"""SOCKS5 UDP ASSOCIATE (RFC 1928 section 7): a UDP port for one SOCKS client, and its relay.

The UDP socket is bound on the local address the SOCKS client reached us on (IPv4 or IPv6),
and its address and port go in the reply. ``jproxy.socks.udp_association`` decides which
datagrams are relayed;
each new destination is opened by the relay's ``Routes`` in a greenlet of its own, while its
first datagrams wait in a short queue. The association ends when the SOCKS client closes its
TCP connection, or after its idle timeout.

Two kinds of routes: the client's port sends each destination through the tunnel as one jProxy
UDP association (``TunnelRoutes``, here); the server's plain SOCKS port sends it straight out
through a UDP socket of its own (``jproxy.handlers.socks.plain_udp``).

The Java jProxy server ignores UDP. When an associate gets no answer on a 3.0 tunnel the
client says so in its log, ends this SOCKS association, and answers later UDP ASSOCIATE
requests on that tunnel with a general failure.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections import deque
from typing import Protocol

import gevent
from gevent.pool import Group
from gevent.socket import wait_read

from jproxy.handlers.tunnel.datagrams import AssociateFailed, TunnelDatagrams
from jproxy.handlers.tunnel.link import TunnelClosed
from jproxy.metrics import Counters
from jproxy.socks.udp_association import Drop, Dropped, Route, SocksUdpAssociation
from jproxy.tunnel.mux import Channel, Ending, Exhausted
from schemas.jproxy import Dialect

log = logging.getLogger(__name__)

ASSOCIATE_TIMEOUT = 10.0
PENDING_LIMIT = 16
"""Datagrams to one destination that wait for its route to open; more are dropped."""
RECV_SIZE = 65535
CHECK_INTERVAL = 1.0
"""How often an association looks whether its routes can still be used (its tunnel is up)."""


class RouteFailed(Exception):
    """A route could not be opened: its waiting datagrams are dropped for ``drop``; a
    ``lasting`` failure keeps the destination refused until it idles out."""

    def __init__(self, drop: Drop, lasting: bool) -> None:
        super().__init__(drop.value)
        self.drop = drop
        self.lasting = lasting


class Routes(Protocol):
    """How a relay's destinations leave: through the tunnel, or straight out."""

    def usable(self) -> bool:
        """Whether the relay may go on (the tunnel is still up)."""

    def open(self, route: Route, relay: SocksUdpRelay) -> None:
        """Open ``route`` (its ``channel``), in a greenlet of its own; its replies go to
        ``relay.to_client``. Raises ``RouteFailed`` (having logged why)."""

    def send(self, route: Route, payload: bytes) -> None:
        """Send one datagram on an open route; never blocks (drops and counts instead)."""

    def close(self, route: Route, ending: Ending) -> None:
        """The route ends: ``closed`` (the association ended) or ``idle``."""


class SocksUdpRelay:
    """One SOCKS UDP association: ``run`` serves it until the control connection closes."""

    def __init__(
        self,
        control: socket.socket,
        routes: Routes,
        core: SocksUdpAssociation,
        counters: Counters,
    ) -> None:
        self.control = control
        self.routes = routes
        self.core = core
        self.counters = counters
        self.udp = bind_udp_beside(control)
        self._pending: dict[Route, deque[bytes]] = {}
        self._greenlets = Group()

    @property
    def address(self) -> tuple[str, int]:
        return self.udp.getsockname()[:2]

    def run(self) -> None:
        self._greenlets.spawn(self._read_udp)
        try:
            self._watch_control()
        finally:
            self._greenlets.kill()
            for route in list(self.core.routes.values()):
                self._end_route(route, Ending.CLOSED)
            self.udp.close()

    # --- the control connection and the idle clock -----------------------------------------------

    def _watch_control(self) -> None:
        """Until the SOCKS client closes (or sends anything: RFC 1928 gives it no meaning),
        the association idles out, or its routes become unusable (its tunnel ended: the SOCKS
        client may associate again on the next one, or a 3.0 server proved to ignore UDP)."""
        while self.routes.usable():
            now = time.monotonic()
            for route in self.core.expired(now):
                self._end_route(route, Ending.IDLE)
            if self.core.idle(now):
                log.info("UDP association from %s: idle, closing", self.core.client_ip)
                return
            try:
                wait = min(max(self.core.next_deadline() - now, 0.05), CHECK_INTERVAL)
                wait_read(self.control.fileno(), timeout=wait)
            except TimeoutError:
                continue
            try:
                if not self.control.recv(1):
                    return
            except OSError:
                return

    # --- SOCKS client -> routes -----------------------------------------------------------------

    def _read_udp(self) -> None:
        udp = self.udp
        while True:
            wait_read(udp.fileno())
            while True:
                try:
                    datagram, source = udp.recvfrom(RECV_SIZE)
                except BlockingIOError:
                    break
                except OSError:
                    continue
                self._from_client(source, datagram)

    def _from_client(self, source: tuple, datagram: bytes) -> None:
        action = self.core.from_client(source, datagram, time.monotonic())
        if isinstance(action, Dropped):
            self.counters.datagram_dropped(action.reason.value)
            log.debug("dropped a datagram: %s (%s)", action.reason.value, action.detail)
            return
        route = action.route
        if action.new:
            self._pending[route] = deque()
            self._greenlets.spawn(self._open_route, route)
        pending = self._pending.get(route)
        if pending is not None:
            if len(pending) >= PENDING_LIMIT:
                self.counters.datagram_dropped(Drop.QUEUE_FULL.value)
            else:
                pending.append(action.payload)
        else:
            self.routes.send(route, action.payload)

    def _open_route(self, route: Route) -> None:
        try:
            self.routes.open(route, self)
        except RouteFailed as failure:
            if failure.lasting:
                self.core.refuse(route)
            else:
                self.core.forget(route)
            for _ in self._pending.pop(route, ()):
                self.counters.datagram_dropped(failure.drop.value)
            return
        for payload in self._pending.pop(route, ()):
            self.routes.send(route, payload)

    def _end_route(self, route: Route, ending: Ending) -> None:
        self.core.forget(route)
        self._pending.pop(route, None)
        if route.channel is not None:
            self.routes.close(route, ending)

    # --- routes -> SOCKS client -----------------------------------------------------------------

    def to_client(self, route: Route, data: bytes) -> None:
        datagram = self.core.to_client(route, data, time.monotonic())
        if datagram is None:
            return
        try:
            self.udp.sendto(datagram, self.core.client_address)
        except BlockingIOError:
            self.counters.datagram_dropped(Drop.QUEUE_FULL.value)
        except OSError as error:
            if error.errno == errno.EMSGSIZE:  # a reply too large once its header is in front
                self.counters.datagram_dropped(Drop.TOO_LARGE.value)
            log.debug("datagram to the SOCKS client: %s", error)


class TunnelRoutes:
    """The client's routes: each destination is one jProxy UDP association of the tunnel."""

    def __init__(
        self, datagrams: TunnelDatagrams, *, associate_timeout: float = ASSOCIATE_TIMEOUT
    ) -> None:
        self.datagrams = datagrams
        self.associate_timeout = associate_timeout

    def usable(self) -> bool:
        return not self.datagrams.udp_unsupported and not self.datagrams.tunnel.closed.is_set()

    def open(self, route: Route, relay: SocksUdpRelay) -> None:
        try:
            route.channel = self.datagrams.associate(
                route.host, route.port, _RouteSink(relay, route), self.associate_timeout
            )
        except (AssociateFailed, TunnelClosed, Exhausted, gevent.Timeout) as error:
            self._failed(route, relay, error)
            raise RouteFailed(Drop.UNANSWERED, lasting=False) from None

    def send(self, route: Route, payload: bytes) -> None:
        self.datagrams.send(route.channel, payload)

    def close(self, route: Route, ending: Ending) -> None:
        self.datagrams.dissociate(route.channel)

    def _failed(self, route: Route, relay: SocksUdpRelay, error: BaseException) -> None:
        target = f"{route.host}:{route.port}"
        if isinstance(error, gevent.Timeout):
            if self.datagrams.dialect is Dialect.LEGACY_3_0:
                self.datagrams.udp_unsupported = True  # before the log line says so
                log.warning(
                    "UDP %s: the server did not answer the associate within %g s; a 3.0 server"
                    " (the Java jProxy) ignores UDP, so UDP ASSOCIATE fails on this tunnel",
                    target,
                    self.associate_timeout,
                )
                relay.control.shutdown(socket.SHUT_RDWR)  # wakes _watch_control: end
            else:
                log.warning("UDP %s: no answer from the server", target)
        else:
            log.info("UDP %s failed: %s", target, error or "no answer")


class _RouteSink:
    """Where the tunnel delivers one route's datagrams."""

    def __init__(self, relay: SocksUdpRelay, route: Route) -> None:
        self.relay = relay
        self.route = route

    def datagram(self, channel: Channel, data: bytes) -> None:
        self.relay.to_client(self.route, data)

    def ended(self, channel: Channel, ending: Ending) -> None:
        self.relay.core.forget(self.route)


def bind_udp_beside(control: socket.socket) -> socket.socket:
    """A non-blocking UDP socket on the local address of ``control`` (the SOCKS connection)."""
    local = control.getsockname()
    sock = socket.socket(control.family, socket.SOCK_DGRAM)
    try:
        sock.bind((local[0], 0))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def association_for(
    control: socket.socket, host: str, port: int, max_payload: int, now: float
) -> SocksUdpAssociation:
    """The rules for the association a SOCKS client asked for on ``control``."""
    client_ip = control.getpeername()[0]
    return SocksUdpAssociation(client_ip, host, port, max_payload, now)
