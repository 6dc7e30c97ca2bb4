"""What a tunnel's UDP association delivers, kept for the test to read."""

from __future__ import annotations

from jproxy.tunnel.mux import Ending


class DatagramSink:
    """Where a tunnel delivers one UDP association's datagrams and its end, for tests."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.endings: list[Ending] = []

    def datagram(self, channel, data: bytes) -> None:
        self.received.append(data)

    def ended(self, channel, ending: Ending) -> None:
        self.endings.append(ending)
