"""The datagram channels of one tunnel: UDP associations and ICMP echoes beside its streams.

The tunnel reader hands every UDP and ICMP message here; the ``Datagrams`` core turns them
into events, and each channel's ``Sink`` (the client's SOCKS UDP relay, the server's outbound
socket) gets its datagrams and its end. Datagrams go out through ``Tunnel.send_datagram``,
which never waits: when the tunnel's queue is full the datagram is dropped and counted, so
UDP never stalls the tunnel's TCP streams.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from gevent.event import AsyncResult

from jproxy.handlers.tunnel.driver import Tunnel, TunnelClosed
from jproxy.metrics import Counters
from jproxy.socks.udp_association import Drop
from jproxy.tunnel.datagrams import (
    AssociateAnswered,
    AssociateRequested,
    Channel,
    DatagramReceived,
    Datagrams,
    Dissociated,
    EchoAnswered,
    EchoRequested,
    Refused,
)
from jproxy.tunnel.statuses import status_text
from schemas.jproxy import ConnectStatus, DisconnectReason

log = logging.getLogger(__name__)


class Sink(Protocol):
    def datagram(self, channel: Channel, data: bytes) -> None:
        """One datagram arrived for ``channel``; must not block."""

    def ended(self, channel: Channel, reason: DisconnectReason) -> None:
        """The peer (or the tunnel's end) ended ``channel``."""


class AssociateFailed(Exception):
    """The server refused a UDP association; ``status`` is its answer."""

    def __init__(self, status: ConnectStatus) -> None:
        super().__init__(f"server says {status_text(status)}")
        self.status = status


class TunnelDatagrams:
    def __init__(
        self,
        tunnel: Tunnel,
        core: Datagrams,
        counters: Counters,
        *,
        on_associate: Callable[[TunnelDatagrams, AssociateRequested], None] | None = None,
        on_echo: Callable[[TunnelDatagrams, EchoRequested], None] | None = None,
    ) -> None:
        self.tunnel = tunnel
        self.core = core
        self.counters = counters
        self._on_associate = on_associate
        self._on_echo = on_echo
        self._sinks: dict[Channel, Sink] = {}
        self._answers: dict[Channel, AsyncResult] = {}
        self.udp_unsupported = False
        """Client: an associate went unanswered on this 3.0 tunnel (the Java server)."""

    # --- client side ----------------------------------------------------------------------------

    def associate(
        self, host: str, port: int, sink: Sink, timeout: float, local_port: int = 0
    ) -> Channel:
        """A UDP association with ``host:port`` whose datagrams go to ``sink``; the server binds
        ``local_port`` (0: any).

        Raises ``AssociateFailed``, ``gevent.Timeout`` (no answer: a 3.0 Java server ignores
        UDP) or ``TunnelClosed``.
        """
        channel, request = self.core.associate(host, port, local_port)
        self._sinks[channel] = sink
        answer = self._answers[channel] = AsyncResult()
        self.tunnel.send_control(request)
        try:
            answered: AssociateAnswered = answer.get(timeout=timeout)
        except BaseException:
            self._sinks.pop(channel, None)
            self.send_control(self.core.dissociate(channel, DisconnectReason.GENERAL))
            raise
        finally:
            self._answers.pop(channel, None)
        if answered.status is not ConnectStatus.OK:
            self._sinks.pop(channel, None)
            raise AssociateFailed(answered.status)
        return channel

    def echo(self, host: str, timeout_ms: int, data: bytes, wait: float) -> EchoAnswered:
        """One ICMP echo from the server's side; ``gevent.Timeout`` after ``wait`` seconds."""
        channel, request = self.core.echo(host, timeout_ms, data)
        answer = self._answers[channel] = AsyncResult()
        self.tunnel.send_control(request)
        try:
            return answer.get(timeout=wait)
        finally:
            self._answers.pop(channel, None)
            self.core.forget(channel)

    # --- either side ----------------------------------------------------------------------------

    def attach(self, channel: Channel, sink: Sink) -> None:
        self._sinks[channel] = sink

    def send(self, channel: Channel, data: bytes) -> bool:
        """Queue one datagram; ``False`` when it was dropped (counted)."""
        message = self.core.packet(channel, data)
        if message is None:
            return False
        if not self.tunnel.send_datagram(message):
            self.counters.datagram_dropped(Drop.QUEUE_FULL.value)
            return False
        self.counters.transferred(len(data))
        return True

    def dissociate(self, channel: Channel, reason: DisconnectReason) -> None:
        self._sinks.pop(channel, None)
        self.send_control(self.core.dissociate(channel, reason))

    def send_control(self, message: bytes | None) -> None:
        """Send a control message of the core's; ``None`` (nothing to say) is skipped."""
        if message is not None:
            self.tunnel.send_control(message)

    def close(self) -> None:
        """The tunnel ended: every channel ends, every waiting request fails."""
        self.core.close_all()
        for answer in self._answers.values():
            answer.set_exception(TunnelClosed("the tunnel closed"))
        sinks, self._sinks = self._sinks, {}
        for channel, sink in sinks.items():
            sink.ended(channel, DisconnectReason.GENERAL)

    # --- from the tunnel reader -----------------------------------------------------------------

    def receive(self, message: bytes) -> None:
        for event in self.core.receive(message, time.monotonic()):
            if isinstance(event, DatagramReceived):
                sink = self._sinks.get(event.channel)
                if sink is not None:
                    self.counters.transferred(len(event.data))
                    sink.datagram(event.channel, event.data)
            elif isinstance(event, (AssociateAnswered, EchoAnswered)):
                answer = self._answers.get(event.channel)
                if answer is not None:
                    answer.set(event)
                elif isinstance(event, AssociateAnswered):  # nobody waits: end it
                    self.send_control(self.core.dissociate(event.channel, DisconnectReason.GENERAL))
            elif isinstance(event, Dissociated):
                sink = self._sinks.pop(event.channel, None)
                if sink is not None:
                    sink.ended(event.channel, event.reason)
            elif isinstance(event, Refused):
                log.info("%s: refused a datagram channel: %s", self.tunnel.name, event.why)
                self.send_control(event.message)
            elif isinstance(event, AssociateRequested):
                if self._on_associate is not None:
                    self._on_associate(self, event)
            elif isinstance(event, EchoRequested) and self._on_echo is not None:
                self._on_echo(self, event)
