"""The client port's HTTP proxy beside its SOCKS5 path, and pproxy's HTTP inbound, in one run.

Three ways to fetch a small response (64 bytes) from a keep-alive HTTP/1.1 target on loopback,
each from ``--threads`` threads for ``--seconds`` seconds:

- ``CONNECT``: a new connection to the proxy, ``CONNECT host:port``, one GET, close;
- ``SOCKS5``: a new connection, SOCKS5 CONNECT, one GET, close (the same work as CONNECT);
- ``absolute``: one kept-alive connection per thread sending ``GET http://host:port/`` again
  and again (the proxy keeps its upstream connection to the target).

gjproxy runs as server and client (the tunnel, dialect 3.1, encrypted); pproxy
(``-l http+socks5://``, pure-Python asyncio, no tunnel, no encryption) is the peer. The table
shows requests per second and the p50/p99 latency of one request (CONNECT and SOCKS5: the
connect, handshake and request together), the median of ``--runs`` runs, then gjproxy's
ratios to pproxy. Run: ``python bench/http_proxy.py [--runs N] [--seconds S] [--threads N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from tunnel import (
    LOOPBACK,
    SOCKET_TIMEOUT,
    BenchError,
    Service,
    free_port,
    in_threads,
    percentile,
    socks_open,
    start_gjproxy,
    start_target_process,
    wait_listening,
)

BODY = b"x" * 64
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
MODES = ("CONNECT", "SOCKS5", "absolute")


# --- the target: answers every request head with RESPONSE, keeping the connection ------------


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(RESPONSE)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def _serve(ports) -> None:
    server = await asyncio.start_server(_answer, LOOPBACK, 0, backlog=1024)
    ports.send(server.sockets[0].getsockname()[1])
    await asyncio.sleep(3600)


def run_target(ports) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_serve(ports))


# --- one request each way -------------------------------------------------------------------


def read_response(sock: socket.socket, buffer: bytearray) -> None:
    """One response of the target's: a 200 head (proxies may respell its headers), then the
    64-byte body; what follows stays in ``buffer``."""
    while (end := buffer.find(b"\r\n\r\n")) < 0 or len(buffer) < end + 4 + len(BODY):
        chunk = sock.recv(65536)
        if not chunk:
            raise BenchError("the proxy closed during a response")
        buffer += chunk
    if not buffer.startswith(b"HTTP/1.1 200") or buffer[end + 4 : end + 4 + len(BODY)] != BODY:
        raise BenchError(f"unexpected response: {bytes(buffer[:80])!r}")
    del buffer[: end + 4 + len(BODY)]


def request_line(port: int, absolute: bool) -> bytes:
    target = f"http://{LOOPBACK}:{port}/" if absolute else "/"
    return f"GET {target} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n\r\n".encode()


def http_connect(proxy: int, target: int) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, proxy), timeout=SOCKET_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(
        f"CONNECT {LOOPBACK}:{target} HTTP/1.1\r\nHost: {LOOPBACK}:{target}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise BenchError("the proxy closed after CONNECT")
        head += chunk
    if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
        raise BenchError(f"CONNECT refused: {head[:80]!r}")
    return sock


def fetch_once(mode: str, proxy: int, target: int) -> None:
    sock = http_connect(proxy, target) if mode == "CONNECT" else socks_open(proxy, target)
    with sock:
        sock.sendall(request_line(target, absolute=False))
        read_response(sock, bytearray())


def measure(mode: str, proxy: int, target: int, threads: int, seconds: float) -> dict:
    def work(_: int) -> list[float]:
        latencies = []
        deadline = time.monotonic() + seconds
        if mode == "absolute":
            sock = socket.create_connection((LOOPBACK, proxy), timeout=SOCKET_TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buffer, line = bytearray(), request_line(target, absolute=True)
            with sock:
                while time.monotonic() < deadline:
                    started = time.perf_counter()
                    sock.sendall(line)
                    read_response(sock, buffer)
                    latencies.append(time.perf_counter() - started)
            return latencies
        while time.monotonic() < deadline:
            started = time.perf_counter()
            fetch_once(mode, proxy, target)
            latencies.append(time.perf_counter() - started)
        return latencies

    started = time.monotonic()
    latencies = [one for thread in in_threads(work, threads, seconds) for one in thread]
    elapsed = time.monotonic() - started
    return {
        "rate": len(latencies) / elapsed,
        "p50": percentile(latencies, 50) * 1000,
        "p99": percentile(latencies, 99) * 1000,
    }


def start_pproxy_http(workdir: Path, stack: ExitStack) -> int:
    port = free_port()
    proxy = Service("pproxy", ["pproxy", "-l", f"http+socks5://{LOOPBACK}:{port}"], workdir)
    stack.callback(proxy.stop)
    wait_listening(port, proxy)
    return port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    results: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.runs):
        with ExitStack() as stack, tempfile.TemporaryDirectory() as folder:
            workdir = Path(folder)
            target, _ = start_target_process(stack, run_target, "bench-http-target")
            _, gjproxy = start_gjproxy("3.1", workdir, stack)
            pproxy = start_pproxy_http(workdir, stack)
            for name, port in (("gjproxy", gjproxy), ("pproxy", pproxy)):
                for mode in MODES:
                    fetch_once("SOCKS5", port, target)  # warm up
                    result = measure(mode, port, target, args.threads, args.seconds)
                    results.setdefault((name, mode), []).append(result)
    print(
        f"HTTP proxy bench: {args.runs} runs x {args.seconds:g} s, {args.threads} threads,"
        f" 64-byte responses (a shared, loaded machine: compare ratios, not absolutes)\n"
    )
    print(f"{'proxy':8} {'path':9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    medians = {}
    for (name, mode), runs in results.items():
        medians[name, mode] = {
            key: statistics.median(run[key] for run in runs) for key in ("rate", "p50", "p99")
        }
        row = medians[name, mode]
        print(f"{name:8} {mode:9} {row['rate']:8.0f} {row['p50']:8.2f} {row['p99']:8.2f}")
    print("\ngjproxy / pproxy (req/s, higher is better; p50, lower is better):")
    for mode in MODES:
        ours, theirs = medians["gjproxy", mode], medians["pproxy", mode]
        rate, p50 = ours["rate"] / theirs["rate"], ours["p50"] / theirs["p50"]
        print(f"  {mode:9} {rate:5.2f}x  p50 {p50:5.2f}x")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as error:
        sys.stderr.write(f"bench: {error}\n")
        sys.exit(1)
