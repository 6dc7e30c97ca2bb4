"""The UDP associations and ICMP echoes of one tunnel: their adapter between the driver and
the sockets that use them.

The tunnel's one multiplexer (``jproxy.tunnel.mux``) decides everything about these channels
(ids, the budget, answers, idle associations); the driver hands this adapter the events of
the datagram kinds, and each channel's ``Sink`` (the client's SOCKS UDP relay, the server's
outbound socket) gets its datagrams and its end. Datagrams go out through
``Link.send_datagram``, which never waits: when the tunnel's queue is full the datagram is
dropped and counted, so UDP never stalls the tunnel's TCP streams.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from jproxy.handlers.tunnel.link import Link, TunnelClosed
from jproxy.socks.udp_association import Drop
from jproxy.tunnel.mux import Channel, Ending
from jproxy.tunnel.statuses import status_text
from schemas.jproxy import ConnectStatus


class Sink(Protocol):
    def datagram(self, channel: Channel, data: bytes) -> None:
        """One datagram arrived for ``channel``; must not block (it runs in the hub)."""

    def ended(self, channel: Channel, ending: Ending) -> None:
        """The peer, the core (idle) or the tunnel's end ended ``channel``; must not block."""


class AssociateFailed(Exception):
    """The server refused a UDP association; ``status`` is its answer."""

    def __init__(self, status: ConnectStatus) -> None:
        super().__init__(f"server says {status_text(status)}")
        self.status = status


class EchoAnswer(NamedTuple):
    """The server's answer to one ICMP echo."""

    status: ConnectStatus
    elapsed_ms: int
    data: bytes


class TunnelDatagrams:
    """The datagram channels of the tunnel ``link``; the driver creates it."""

    def __init__(self, link: Link) -> None:
        self.tunnel = link
        self.udp_unsupported = False
        """Client: an associate went unanswered on this 3.0 tunnel (the Java server)."""

    @property
    def dialect(self):
        return self.tunnel.channels.dialect

    # --- client side ----------------------------------------------------------------------------

    def associate(
        self, host: str, port: int, sink: Sink, timeout: float, local_port: int = 0
    ) -> Channel:
        """A UDP association with ``host:port`` whose datagrams go to ``sink``; the server binds
        ``local_port`` (0: any).

        Raises ``AssociateFailed``, ``Exhausted``, ``gevent.Timeout`` (no answer: a 3.0 Java
        server ignores UDP) or ``TunnelClosed``.
        """
        tunnel = self.tunnel
        if tunnel.is_closed:
            raise TunnelClosed("the tunnel is closed")
        request = tunnel.channels.associate(host, port, tunnel.clock(), local_port)
        request.channel.handler = sink
        status, _ = tunnel.request(request, timeout)
        if status is not ConnectStatus.OK:
            raise AssociateFailed(status)
        return request.channel

    def echo(self, host: str, timeout_ms: int, data: bytes, wait: float) -> EchoAnswer:
        """One ICMP echo from the server's side; ``gevent.Timeout`` after ``wait`` seconds."""
        tunnel = self.tunnel
        if tunnel.is_closed:
            raise TunnelClosed("the tunnel is closed")
        request = tunnel.channels.echo(host, timeout_ms, data, tunnel.clock())
        return EchoAnswer(*tunnel.request(request, wait))

    # --- either side ----------------------------------------------------------------------------

    def attach(self, channel: Channel, sink: Sink) -> None:
        channel.handler = sink

    def send(self, channel: Channel, data: bytes) -> bool:
        """Queue one datagram; ``False`` when it was dropped (counted)."""
        tunnel = self.tunnel
        message = tunnel.channels.packet(channel, data, tunnel.clock())
        if message is None:
            return False
        if not tunnel.send_datagram(channel, message):
            tunnel.counters.datagram_dropped(Drop.QUEUE_FULL.value)
            return False
        tunnel.counters.transferred(len(data))
        return True

    def dissociate(self, channel: Channel, ending: Ending = Ending.CLOSED) -> None:
        """End an association from this side (its sink hears no more)."""
        channel.handler = None
        self.tunnel.perform(self.tunnel.channels.close(channel, ending))

    # --- from the driver (in the hub: nothing here waits) ----------------------------------------

    def datagram(self, channel: Channel, data: bytes) -> None:
        sink = channel.handler
        if sink is not None:
            self.tunnel.counters.transferred(len(data))
            sink.datagram(channel, data)

    def ended(self, channel: Channel, ending: Ending) -> None:
        """The channel ended: its sink hears of it."""
        sink, channel.handler = channel.handler, None
        if sink is not None:
            sink.ended(channel, ending)
