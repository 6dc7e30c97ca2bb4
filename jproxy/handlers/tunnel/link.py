"""What a channel's adapter (a stream's relay, the tunnel's datagram channels) needs of its
tunnel's driver: one typed interface, so the adapters do not import the driver."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from jproxy.metrics import Counters
from jproxy.tuning import RelayTuning
from jproxy.tunnel.mux import Channel, Channels, Event


class TunnelClosed(ConnectionError):
    """The tunnel ended; the channel that waited on it cannot go on."""


class Link(Protocol):
    """The driver of one tunnel, as its channels' adapters see it."""

    channels: Channels
    """The tunnel's one multiplexer: every call to it goes through here."""
    counters: Counters
    tuning: RelayTuning
    clock: Callable[[], float]
    name: str

    def request(self, request: Event, timeout: float) -> tuple:
        """Send a request of the core's and wait for its answer (client side)."""

    def perform(self, events: list[Event]) -> None:
        """Carry out the core's commands (never waits)."""

    def send_control(self, message: bytes) -> None:
        """Send a control message now, ahead of queued data (never waits)."""

    def send_data(self, channel: Channel, messages: list[bytes]) -> None:
        """Send one read's worth of a stream's data messages (the caller asked ``has_room``)."""

    def send_datagram(self, channel: Channel, message: bytes) -> bool:
        """Send one datagram's message, or drop it (False) while the data queue is full."""

    def has_room(self) -> bool:
        """Whether a stream may send data now; when not, ``wake_when_room`` tells it later."""

    def wake_when_room(self, resume: Callable[[], None]) -> None: ...

    @property
    def is_closed(self) -> bool: ...
