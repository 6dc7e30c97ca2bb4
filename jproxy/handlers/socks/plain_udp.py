"""The plain SOCKS port's UDP routes: each destination straight out through a socket of its own.

The server's plain SOCKS port runs the same relay as the client's port
(``jproxy.handlers.socks.udp_relay``); only the way out differs. Each destination of an association
is checked, resolved (DoH when configured) and judged by the egress policy through the one
``Dialer``, then gets a UDP socket connected to the address allowed, so the kernel delivers only
that address's datagrams: replies from anyone else never reach the SOCKS client. A destination
the dialer refuses stays refused until it idles out (its datagrams dropped and counted), so a
flood of datagrams to it costs one lookup and one access-log record, not one each.

One access-log record per destination (service ``socks``, transport ``udp``), as the tunnel's
server side writes one per jProxy association.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass

import gevent
from gevent.socket import wait_read

from jproxy.handlers.admin.listener import host_port_text
from jproxy.handlers.logs.access import AccessLog, AccessRecord
from jproxy.handlers.net.dialer import Dialer, DialError
from jproxy.handlers.socks.udp_relay import RouteFailed, SocksUdpRelay
from jproxy.handlers.tunnel.outbound_udp import open_udp, received, send_or_drop
from jproxy.metrics import Counters
from jproxy.policy.hostnames import for_log
from jproxy.socks.udp_association import Drop, Route
from jproxy.tunnel.mux import Ending
from schemas.jproxy import ConnectStatus

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Outbound:
    """One destination's socket, the greenlet that reads it, and its access-log record."""

    sock: socket.socket
    record: AccessRecord
    started: float
    reader: gevent.Greenlet | None = None


def owner_of(user: str, client: str) -> str:
    """Who a plain SOCKS connection or datagram is for, in the dialer's fd shares and login
    origins: the user, or without authentication the client's address (``client``: host:port)."""
    return f"SOCKS user {user}" if user else f"SOCKS client {client.rpartition(':')[0]}"


@dataclass
class DirectRoutes:
    """Routes of one association on the plain port; ``service`` names it in counters and logs."""

    dialer: Dialer
    counters: Counters
    access_log: AccessLog
    user: str
    client: str
    service: str
    route: str = ""
    """the client's routing, for its records (DIRECT and the rule)"""
    rule: str = ""

    @property
    def owner(self) -> str:
        return owner_of(self.user, self.client)

    def usable(self) -> bool:
        return True

    def open(self, route: Route, relay: SocksUdpRelay) -> None:
        target = host_port_text((route.host, route.port))
        record = AccessRecord(
            self.service,
            self.user,
            self.client,
            target,
            time.time(),
            transport="udp",
            route=self.route,
            rule=self.rule,
        )
        started = time.monotonic()
        try:
            address = self.dialer.addresses_for(route.host, route.port)[0]
            sock = open_udp(self.dialer, address, route.port, 0, self.owner)
        except DialError as error:
            record.connect_ms = int((time.monotonic() - started) * 1000)
            record.status, record.reason = error.status.name, error.reason
            record.ended = (
                Ending.REFUSED if error.status is ConnectStatus.NOT_ALLOWED else Ending.FAILED
            )
            record.duration = time.monotonic() - started
            self.access_log.write(record)
            log.info("UDP %s:%d refused: %s", for_log(route.host), route.port, error.reason)
            raise RouteFailed(Drop.REFUSED, lasting=True) from None
        except BaseException:  # the association ended during the lookup: one record still
            record.ended, record.reason = Ending.CLOSED, "the association ended during the lookup"
            record.duration = time.monotonic() - started
            self.access_log.write(record)
            raise
        record.connect_ms = int((time.monotonic() - started) * 1000)
        record.status, record.connected = (
            ConnectStatus.OK.name,
            host_port_text((address, route.port)),
        )
        record.local_port = sock.getsockname()[1]
        outbound = route.channel = _Outbound(sock, record, started)
        outbound.reader = gevent.spawn(self._read, route, outbound, relay)

    def send(self, route: Route, payload: bytes) -> None:
        outbound: _Outbound = route.channel
        if send_or_drop(outbound.sock, payload, self.counters, outbound.record.connected):
            outbound.record.bytes_up += len(payload)
            self.counters.transferred(len(payload), self.service)

    def close(self, route: Route, ending: Ending) -> None:
        outbound: _Outbound = route.channel
        if outbound.reader is not None:
            outbound.reader.kill()
        outbound.sock.close()
        record = outbound.record
        record.ended, record.duration = ending, time.monotonic() - outbound.started
        self.access_log.write(record)

    def _read(self, route: Route, outbound: _Outbound, relay: SocksUdpRelay) -> None:
        """Replies, until ``close``: the relay's idle clock covers this socket too."""
        while True:
            wait_read(outbound.sock.fileno())
            for data in received(outbound.sock, outbound.record.connected):
                outbound.record.bytes_down += len(data)
                self.counters.transferred(len(data), self.service)
                relay.to_client(route, data)
