"""UDP through a gjproxy tunnel, beside TCP on the same tunnel: round trips and datagrams/s.

Starts ``gjproxy server`` and ``gjproxy client`` with bench/tunnel.py's helpers, a target
process (a UDP echo, a UDP sink that counts, and the TCP echo of bench/tunnel.py), and one
SOCKS5 UDP association made by hand on the client's SOCKS port. It prints, per dialect:

- 64-byte round trips, p50/p99 in µs: UDP straight to the echo (no tunnel), UDP through the
  tunnel, and TCP through the same tunnel (one SOCKS CONNECT stream);
- datagrams/s one way: 64-byte datagrams sent as fast as one thread can for a few seconds,
  how many the sink got per second, and the share lost (UDP drops rather than queue).

Run: ``python bench/udp.py [--dialect 3.1|3.0|both]``. Bounded: about half a minute per
dialect. Exit status 0 whatever the numbers, 1 when something broke.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import tempfile
import time
from contextlib import ExitStack
from multiprocessing.connection import Connection
from pathlib import Path

from tunnel import (
    LOOPBACK,
    BenchError,
    Latencies,
    echo_latencies,
    start_gjproxy,
    start_target_process,
    start_targets,
)

from jproxy.socks.socks5 import build_udp_request
from schemas.fields import build, parse
from schemas.socks5 import SocksMethodRequest, SocksReply, SocksRequest

SIZE = 64
WARMUP = 200
ROUND_TRIPS = 3000
ROUND_TRIP_SECONDS = 10.0
BLAST_SECONDS = 3.0
BLAST_MAX = 500_000
SETTLE_SECONDS = 1.0
RECV_TIMEOUT = 2.0


# --- the UDP target process --------------------------------------------------------------------


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, source) -> None:
        self.transport.sendto(data, source)


class _Sink(asyncio.DatagramProtocol):
    """Counts datagrams; a datagram b"count?" is answered with the count so far."""

    def __init__(self) -> None:
        self.count = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, source) -> None:
        if data == b"count?":
            self.transport.sendto(str(self.count).encode(), source)
        else:
            self.count += 1


async def _serve_udp(ports: Connection) -> None:
    loop = asyncio.get_running_loop()
    echo, _ = await loop.create_datagram_endpoint(_Echo, local_addr=(LOOPBACK, 0))
    sink, _ = await loop.create_datagram_endpoint(_Sink, local_addr=(LOOPBACK, 0))
    ports.send((echo.get_extra_info("sockname")[1], sink.get_extra_info("sockname")[1]))
    await asyncio.sleep(300)


def run_udp_targets(ports: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_serve_udp(ports))


def start_udp_targets(stack: ExitStack) -> tuple[int, int]:
    """(echo port, sink port) of a fresh UDP target process, stopped when ``stack`` closes."""
    ports, _ = start_target_process(stack, run_udp_targets, "bench-udp")
    return ports


# --- the tunnel and one SOCKS5 UDP association ---------------------------------------------------


def associate(socks_port: int, stack: ExitStack) -> tuple[socket.socket, tuple[str, int]]:
    """A UDP socket and the relay address of a new association on the SOCKS port."""
    control = socket.create_connection((LOOPBACK, socks_port), timeout=RECV_TIMEOUT)
    stack.callback(control.close)
    control.sendall(build(SocksMethodRequest, {"methods": [0]}))
    control.recv(2)
    request = {"command": 3, "address": {"type": 1, "host": "0.0.0.0"}, "port": 0}
    control.sendall(build(SocksRequest, request))
    reply = parse(SocksReply, control.recv(10))
    if reply.reply != 0:
        raise BenchError(f"UDP ASSOCIATE failed with reply code {reply.reply}")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stack.callback(sock.close)
    sock.bind((LOOPBACK, 0))
    sock.settimeout(RECV_TIMEOUT)
    return sock, (reply.address.host, reply.port)


# --- measurements ----------------------------------------------------------------------------


def udp_round_trips(sock: socket.socket, send_to: tuple[str, int], wrap) -> Latencies:
    """ROUND_TRIPS sequential round trips of SIZE bytes; ``wrap`` adds any SOCKS header."""
    payload = os.urandom(SIZE)
    datagram = wrap(payload)
    samples: list[float] = []
    deadline = time.monotonic() + ROUND_TRIP_SECONDS
    for index in range(WARMUP + ROUND_TRIPS):
        if time.monotonic() > deadline:
            break
        began = time.perf_counter()
        sock.sendto(datagram, send_to)
        answer = sock.recv(65535)
        if not answer.endswith(payload):
            raise BenchError("the UDP echo came back different")
        if index >= WARMUP:
            samples.append(time.perf_counter() - began)
    return Latencies(samples)


def one_way(sock: socket.socket, relay: tuple[str, int], sink_port: int) -> tuple[float, float]:
    """(datagrams sent per second, datagrams received per second) of a blast to the sink."""
    datagram = build_udp_request(LOOPBACK, sink_port, bytes(SIZE))
    sent = 0
    began = time.monotonic()
    deadline = began + BLAST_SECONDS
    while sent < BLAST_MAX and time.monotonic() < deadline:
        for _ in range(100):
            try:
                sock.sendto(datagram, relay)
            except BlockingIOError:
                continue
            sent += 1
    elapsed = time.monotonic() - began
    time.sleep(SETTLE_SECONDS)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ask:
        ask.settimeout(RECV_TIMEOUT)
        ask.sendto(b"count?", (LOOPBACK, sink_port))
        received = int(ask.recv(64))
    return sent / elapsed, received / elapsed


def measure(dialect: str) -> None:
    with tempfile.TemporaryDirectory(prefix="gjproxy-bench-udp-") as folder, ExitStack() as stack:
        echo_port, sink_port = start_udp_targets(stack)
        _, tcp_echo_port, _ = start_targets(stack)
        _, socks_port = start_gjproxy(dialect, Path(folder), stack)
        sock, relay = associate(socks_port, stack)
        target = (LOOPBACK, echo_port)
        direct = udp_round_trips(sock, target, lambda payload: payload)
        tunnelled = udp_round_trips(
            sock, relay, lambda payload: build_udp_request(*target, payload)
        )
        tcp = echo_latencies(socks_port, tcp_echo_port)
        sent, received = one_way(sock, relay, sink_port)
    print(f"dialect {dialect}")
    print(f"  {SIZE}-byte round trips   UDP direct     {direct.describe('µs', 1e-6)}")
    print(f"                         UDP tunnelled  {tunnelled.describe('µs', 1e-6)}")
    print(f"                         TCP tunnelled  {tcp.describe('µs', 1e-6)}")
    loss = 100 * (1 - received / sent) if sent else 0.0
    print(
        f"  one way, {SIZE}-byte datagrams: sent {sent:9.0f}/s   received {received:9.0f}/s"
        f"   lost {loss:4.1f}%"
    )
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialect", choices=("3.1", "3.0", "both"), default="both")
    args = parser.parse_args(argv)
    dialects = ("3.1", "3.0") if args.dialect == "both" else (args.dialect,)
    try:
        for dialect in dialects:
            measure(dialect)
    except (BenchError, OSError) as error:
        print(f"bench/udp.py: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
