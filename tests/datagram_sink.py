"""What a tunnel's UDP association delivers, kept for the test to read."""

from __future__ import annotations

from schemas.jproxy import DisconnectReason


class Sink:
    """The datagrams and the endings of the associations it was given to."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.endings: list[DisconnectReason] = []

    def datagram(self, channel, data: bytes) -> None:
        self.received.append(data)

    def ended(self, channel, reason: DisconnectReason) -> None:
        self.endings.append(reason)
