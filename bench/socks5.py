"""Time of one whole SOCKS5 handshake in the sans-I/O core, against parsing it with construct.

Every new SOCKS connection on the client runs one handshake through ``jproxy.socks.socks5``: the
greeting, the request (and the user/password login) and the success reply. This prints the
microseconds ``Socks5Server`` spends on it, beside the same packets sized, parsed and answered
with construct alone (``packet_size`` + ``parse`` + ``build``: the construct work the core did
before it read packets with the readers derived from the schemas). Run:
``python bench/socks5.py``. Bounded: about 12 s.
"""

from __future__ import annotations

import statistics
import timeit
from collections.abc import Callable

from jproxy.socks.socks5 import Socks5Server
from schemas import build, parse
from schemas.socks5 import (
    AddressType,
    Method,
    PasswordStatus,
    ReplyCode,
    SocksMethodReply,
    SocksMethodRequest,
    SocksPasswordReply,
    SocksPasswordRequest,
    SocksReply,
    SocksRequest,
    packet_size,
)

ROUNDS = 7
ROUND_SECONDS = 0.15
TARGET_MICROSECONDS = 10.0
USERS = {"alice": "secret"}
NO_AUTH = bytes.fromhex("050100")
PASSWORD_AUTH = bytes.fromhex("050102")
LOGIN = bytes.fromhex("0105616c69636506736563726574")
REQUESTS = {
    "IPv4 127.0.0.1:80": bytes.fromhex("050100017f0000010050"),
    "IPv6 [2001:880::1]:22": bytes.fromhex("05010004200108800000000000000000000000010016"),
    "name example.com:443": bytes.fromhex("050100030b6578616d706c652e636f6d01bb"),
}
SUCCESS = {
    "reply": ReplyCode.SUCCEEDED,
    "address": {"type": AddressType.IPV4, "host": "0.0.0.0"},
    "port": 0,
}


def _median_microseconds(operation: Callable[[], object]) -> float:
    """Median over ROUNDS of the time per call, each round about ROUND_SECONDS long."""
    timer = timeit.Timer(operation)
    calls, seconds = timer.autorange()
    calls = max(1, round(calls * ROUND_SECONDS / seconds))
    rounds = timer.repeat(repeat=ROUNDS, number=calls)
    return statistics.median(rounds) / calls * 1e6


def _with_core(users: dict[str, str] | None, packets: tuple[bytes, ...]) -> Callable[[], bytes]:
    """A handshake as the handler drives it: one ``receive`` per packet, then the reply."""

    def handshake() -> bytes:
        server = Socks5Server(users)
        for data in packets:
            server.receive(data)
        return server.reply(ReplyCode.SUCCEEDED)

    return handshake


def _construct_only(steps: tuple[tuple, ...]) -> Callable[[], None]:
    """The same packets with construct alone: size and parse each, build each answer."""

    def handshake() -> None:
        for schema, data, answer_schema, answer in steps:
            size = packet_size(schema, data)
            parse(schema, data[:size])
            build(answer_schema, answer)

    return handshake


def _row(label: str, core_us: float, construct_us: float) -> str:
    return f"  {label:24} {core_us:8.2f} us {construct_us:11.2f} us {construct_us / core_us:7.1f} x"


def main() -> None:
    print(f"one whole SOCKS5 handshake, up to the success reply (median of {ROUNDS} rounds)")
    print(f"  {'':24} {'Socks5Server':>11} {'construct only':>14} {'speed-up':>9}")
    print("  no authentication: greeting, request")
    no_auth_us = []
    for label, request in REQUESTS.items():
        core_us = _median_microseconds(_with_core(None, (NO_AUTH, request)))
        steps = (
            (SocksMethodRequest, NO_AUTH, SocksMethodReply, {"method": Method.NO_AUTH}),
            (SocksRequest, request, SocksReply, SUCCESS),
        )
        print(_row(label, core_us, _median_microseconds(_construct_only(steps))))
        no_auth_us.append(core_us)

    print("  user/password: greeting, login, request")
    request = REQUESTS["IPv4 127.0.0.1:80"]
    core_us = _median_microseconds(_with_core(USERS, (PASSWORD_AUTH, LOGIN, request)))
    steps = (
        (SocksMethodRequest, PASSWORD_AUTH, SocksMethodReply, {"method": Method.USERNAME_PASSWORD}),
        (SocksPasswordRequest, LOGIN, SocksPasswordReply, {"status": PasswordStatus.SUCCESS}),
        (SocksRequest, request, SocksReply, SUCCESS),
    )
    print(_row("IPv4 127.0.0.1:80", core_us, _median_microseconds(_construct_only(steps))))
    verdict = "met" if max(no_auth_us) < TARGET_MICROSECONDS else "MISSED"
    print(f"  target: no-auth CONNECT handshake under {TARGET_MICROSECONDS:g} us: {verdict}")


if __name__ == "__main__":
    main()
