"""Parse + build time of one TCP data message (4 KB): the fast codec against construct.

The fast codec exists because construct interprets the schema on every call; this prints how
much that saves on the hot path. Run: ``python bench/codec.py``. Bounded: well under 20 s.
"""

from __future__ import annotations

import statistics
import timeit
from collections.abc import Callable

from schemas import fast, jproxy
from schemas.fields import build, parse

DATA_SIZE = 4096
ROUNDS = 7
TARGET_MICROSECONDS = 2.0


def _median_microseconds(operation: Callable[[], object]) -> float:
    """Median over ROUNDS of the time per call; each round runs about 0.2 s (timeit's autorange)."""
    timer = timeit.Timer(operation)
    calls, _ = timer.autorange()
    rounds = timer.repeat(repeat=ROUNDS, number=calls)
    return statistics.median(rounds) / calls * 1e6


def main() -> None:
    connection_id, data = 7, bytes(range(256)) * (DATA_SIZE // 256)
    wire = fast.TCP_PACKET.build(connection_id, data)
    fields = {"connection_id": connection_id, "data": data}

    def with_fast() -> None:
        fast.TCP_PACKET.parse(wire)
        fast.TCP_PACKET.build(connection_id, data)

    def with_construct() -> None:
        parse(jproxy.TcpPacket, wire)
        build(jproxy.TcpPacket, fields)

    fast_us = _median_microseconds(with_fast)
    construct_us = _median_microseconds(with_construct)
    verdict = "met" if fast_us < TARGET_MICROSECONDS else "MISSED"
    print(f"TCP packet with {DATA_SIZE} bytes of data, parse + build per message")
    print(f"(median of {ROUNDS} rounds)")
    print(f"  schemas.fast  {fast_us:9.2f} us")
    print(f"  construct     {construct_us:9.2f} us")
    print(f"  speed-up      {construct_us / fast_us:9.1f} x")
    print(f"  target: fast codec under {TARGET_MICROSECONDS:g} us: {verdict}")


if __name__ == "__main__":
    main()
