"""The one exception every schema and codec raises for bad bytes."""

from __future__ import annotations


class WireError(ValueError):
    """Bytes that do not form the named packet.

    ``packet`` names the schema (``"TcpConnectRequest"``), ``field`` the field where parsing
    or building stopped (``"address.length"``), or ``""`` when the packet as a whole is wrong.
    """

    def __init__(self, packet: str, field: str, reason: str) -> None:
        self.packet = packet
        self.field = field
        self.reason = reason
        where = f"{packet}.{field}" if field else packet
        super().__init__(f"{where}: {reason}")
