"""Parse + build time of the tunnel messages: the fast codecs against construct.

The fast codecs exist because construct interprets the schema on every call; this prints how
much they save on the hot paths: one TCP data message (4 KB) for every chunk a stream carries,
and the control messages that every new stream costs (connect request and reply, half-close,
window update, disconnect). Run: ``python bench/codec.py``. Bounded: about 10 s.
"""

from __future__ import annotations

import statistics
import timeit
from collections.abc import Callable
from typing import Any

from schemas import fast, jproxy
from schemas.fields import build, parse

DATA_SIZE = 4096
ROUNDS = 5
TARGET_MICROSECONDS = 2.0
IPV4, DOMAIN = jproxy.AddressType.IPV4, jproxy.AddressType.DOMAIN

CONTROL_MESSAGES: list[tuple[str, Any, tuple[Any, ...], bool]] = [
    ("TcpConnectRequest, IPv4", fast.TCP_CONNECT_REQUEST, (7, 443, IPV4, "192.0.2.1"), True),
    ("TcpConnectRequest, name", fast.TCP_CONNECT_REQUEST, (7, 443, DOMAIN, "example.com"), False),
    ("TcpConnectReply", fast.TCP_CONNECT_REPLY, (7, jproxy.ConnectStatus.OK, 12), True),
    ("TcpHalfClose", fast.TCP_HALF_CLOSE, (7,), True),
    ("TcpWindowUpdate", fast.TCP_WINDOW_UPDATE, (7, 65536), True),
    ("TcpDisconnect", fast.TCP_DISCONNECT, (7, jproxy.DisconnectReason.CLIENT_CLOSED), True),
]
"""What a new stream sends besides its data. The rows marked True add up to the per-stream
total: one of each, every message built by one end and parsed by the other."""


def _median_microseconds(operation: Callable[[], object]) -> float:
    """Median over ROUNDS of the time per call; each round runs about 0.05 s."""
    timer = timeit.Timer(operation)
    calls, _ = timer.autorange()  # calls that take at least 0.2 s
    calls = max(1, calls // 4)
    rounds = timer.repeat(repeat=ROUNDS, number=calls)
    return statistics.median(rounds) / calls * 1e6


def _data_message() -> tuple[Callable[[], object], Callable[[], object]]:
    connection_id, data = 7, bytes(range(256)) * (DATA_SIZE // 256)
    wire = fast.TCP_PACKET.build(connection_id, data)
    fields = {"connection_id": connection_id, "data": data}

    def with_fast() -> None:
        fast.TCP_PACKET.parse(wire)
        fast.TCP_PACKET.build(connection_id, data)

    def with_construct() -> None:
        parse(jproxy.TcpPacket, wire)
        build(jproxy.TcpPacket, fields)

    return with_fast, with_construct


def _control_message(codec: Any, values: tuple[Any, ...]) -> tuple[Callable[[], object], ...]:
    wire, fields = codec.build(*values), codec.fields_of(values)

    def with_fast() -> None:
        codec.parse(wire)
        codec.build(*values)

    def with_construct() -> None:
        parse(codec.schema, wire)
        build(codec.schema, fields)

    return with_fast, with_construct


def _row(label: str, with_fast: Callable[[], object], with_construct: Callable[[], object]):
    fast_us, construct_us = map(_median_microseconds, (with_fast, with_construct))
    print(f"  {label:30} {fast_us:8.2f} {construct_us:11.2f} {construct_us / fast_us:9.1f} x")
    return fast_us, construct_us


def main() -> None:
    print(f"parse + build per message, microseconds (median of {ROUNDS} rounds)")
    print(f"  {'message':30} {'fast':>8} {'construct':>11} {'speed-up':>11}")
    data_fast_us, _ = _row(f"TcpPacket, {DATA_SIZE} bytes", *_data_message())
    fast_total = construct_total = 0.0
    for label, codec, values, in_one_stream in CONTROL_MESSAGES:
        fast_us, construct_us = _row(label, *_control_message(codec, values))
        if in_one_stream:
            fast_total += fast_us
            construct_total += construct_us
    print(f"  {'one of each per stream':30} {fast_total:8.2f} {construct_total:11.2f}")
    verdict = "met" if data_fast_us < TARGET_MICROSECONDS else "MISSED"
    print(f"  target: TcpPacket fast codec under {TARGET_MICROSECONDS:g} us: {verdict}")


if __name__ == "__main__":
    main()
