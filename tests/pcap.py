"""A tiny pcap writer for the dissector tests: one TCP connection over Ethernet and IPv4.

The segments carry correct sequence and acknowledgement numbers (after a three-way
handshake), so Wireshark's TCP layer reassembles them as it would a real capture.
"""

from __future__ import annotations

import struct
from pathlib import Path

CLIENT = ("10.0.0.1", 40000)
SERVER = ("10.0.0.2", 16384)
SEGMENT = 1400
_SYN, _ACK, _PSH, _FIN = 0x02, 0x10, 0x08, 0x01


def _ip(text: str) -> bytes:
    return bytes(int(part) for part in text.split("."))


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _packet(source, destination, seq: int, ack: int, flags: int, payload: bytes) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", source[1], destination[1], seq, ack, 5 << 4, flags, 65535, 0, 0)
    pseudo = _ip(source[0]) + _ip(destination[0]) + struct.pack("!BBH", 0, 6, 20 + len(payload))
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp + payload)) + tcp[18:]
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        40 + len(payload),
        0,
        0x4000,
        64,
        6,
        0,
        _ip(source[0]),
        _ip(destination[0]),
    )
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    ethernet = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
    return ethernet + header + tcp + payload


def write_pcap(path: Path, chunks: list[tuple[str, bytes]], port: int = SERVER[1]) -> None:
    """A capture of one connection carrying ``chunks``: ``("c2s" | "s2c", bytes)`` in order.

    Each chunk is sent as segments of at most ``SEGMENT`` bytes, so a message split across
    segments has to be reassembled by the dissector.
    """
    client, server = CLIENT, (SERVER[0], port)
    seq = {"c2s": 1000, "s2c": 5000}
    packets = [
        _packet(client, server, seq["c2s"] - 1, 0, _SYN, b""),
        _packet(server, client, seq["s2c"] - 1, seq["c2s"], _SYN | _ACK, b""),
        _packet(client, server, seq["c2s"], seq["s2c"], _ACK, b""),
    ]
    for direction, data in chunks:
        source, destination = (client, server) if direction == "c2s" else (server, client)
        other = "s2c" if direction == "c2s" else "c2s"
        for start in range(0, len(data), SEGMENT):
            piece = data[start : start + SEGMENT]
            packets.append(
                _packet(source, destination, seq[direction], seq[other], _ACK | _PSH, piece)
            )
            seq[direction] += len(piece)
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for number, packet in enumerate(packets):
        out.append(struct.pack("<IIII", 1_700_000_000, number * 1000, len(packet), len(packet)))
        out.append(packet)
    path.write_bytes(b"".join(out))
