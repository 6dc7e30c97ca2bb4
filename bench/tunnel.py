"""End-to-end speed of a gjproxy tunnel: throughput, connection rate, echo latency and memory.

Unit tests say the tunnel works; this says how fast it is with real processes on loopback.
It makes keys in a temporary folder, starts ``gjproxy server`` and ``gjproxy client``, a
target process (a bulk source and an echo server, both asyncio) and drives the client's SOCKS5
port with raw blocking sockets from threads, so the load generator costs little CPU. Every
number is printed beside its target; the exit status is 0 whatever the numbers, 1 only when
something broke. Run: ``python bench/tunnel.py [--dialect 3.0]``. Bounded: about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from jproxy.keys import generate, save_client_key, save_user

LOOPBACK = "127.0.0.1"
SOCKET_TIMEOUT = 10.0
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
TARGET_LIFETIME = 300.0
"""The target process serves no connection longer than this (the whole run is far shorter)."""

LOOPBACK_EGRESS = ("--allow-egress", f"{LOOPBACK}/32")
"""The targets listen on loopback, which the server's egress policy denies unless allowed."""

DIALECT_FLAGS = {"3.1": ((), ()), "3.0": (("--allow-legacy",), ("--dialect", "3.0"))}

MB = 1_000_000
SINGLE_STREAM_BYTES = 200 * MB
MULTI_STREAMS = 8
MULTI_STREAM_BYTES = 40 * MB
DOWNLOAD_SECONDS = 30.0
RECV_BUFFER = 1 << 20
SOURCE_CHUNK = 256 * 1024

ECHO_SIZE = 64
ECHO_WARMUP = 200
ECHO_ROUND_TRIPS = 3000
ECHO_SECONDS = 10.0

RATE_PING = b"ping-0123456789."
RATE_CONCURRENCY = 32
RATE_SECONDS = 4.0
RATE_MAX_CONNECTIONS = 5000
RATE_WARMUP = 50

HELD_STREAMS = 1000
HOLD_OPENERS = 16
HOLD_SECONDS = 30.0
SETTLE_SECONDS = 1.0
FD_HEADROOM = 256

TARGET_SINGLE_STREAM_MBPS = 150.0
TARGET_SEQUENTIAL_CPS = 800.0
TARGET_ECHO_P50_US = 300.0
TARGET_HELD_RSS_MB = 120.0


class BenchError(Exception):
    """Something broke: a process did not start, a peer misbehaved, a deadline passed."""


# --- the target process: a bulk source and an echo server ----------------------------------


async def _source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads an 8-byte big-endian count, sends that many bytes, closes."""
    block = bytes(SOURCE_CHUNK)
    try:
        async with asyncio.timeout(TARGET_LIFETIME):
            remaining = int.from_bytes(await reader.readexactly(8), "big")
            while remaining > 0:
                writer.write(block[: min(remaining, SOURCE_CHUNK)])
                remaining -= SOURCE_CHUNK
                await writer.drain()
    except (OSError, asyncio.IncompleteReadError, TimeoutError):
        pass
    finally:
        writer.close()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        async with asyncio.timeout(TARGET_LIFETIME):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
    except (OSError, TimeoutError):
        pass
    finally:
        writer.close()


async def _serve_targets(ports: Connection) -> None:
    source = await asyncio.start_server(_source, LOOPBACK, 0, backlog=1024)
    echo = await asyncio.start_server(_echo, LOOPBACK, 0, backlog=1024)
    ports.send((source.sockets[0].getsockname()[1], echo.sockets[0].getsockname()[1]))
    await asyncio.sleep(TARGET_LIFETIME)


def run_targets(ports: Connection) -> None:
    """The target process: the bench stops it; Ctrl-C is the bench's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_serve_targets(ports))


def start_targets(stack: ExitStack) -> tuple[int, int, int]:
    """(source port, echo port, pid) of a fresh target process, stopped when ``stack`` closes."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=run_targets, args=(sender,), name="bench-targets")
    process.start()
    stack.callback(_stop_target, process)
    if not receiver.poll(START_TIMEOUT):
        raise BenchError("the target process did not start")
    return (*receiver.recv(), process.pid)


def _stop_target(process: multiprocessing.Process) -> None:
    process.terminate()
    process.join(STOP_TIMEOUT)
    if process.is_alive():
        process.kill()
        process.join(STOP_TIMEOUT)


# --- gjproxy processes -----------------------------------------------------------------------


class Gjproxy:
    """A ``gjproxy`` subcommand in its own process, its log in a file of the work folder."""

    def __init__(self, name: str, args: tuple[str, ...], workdir: Path) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jproxy", *args],
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_for(self, pattern: str) -> re.Match:
        """The first log line matching ``pattern``, within START_TIMEOUT."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            match = regex.search(self.log_path.read_text(errors="replace"))
            if match:
                return match
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited before {pattern!r}:\n{self.tail()}")
            time.sleep(0.05)
        raise BenchError(f"{self.name}: no log line {pattern!r} in {START_TIMEOUT:g} s")

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def rss_mb(self) -> float:
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            raise BenchError(f"{self.name} is gone:\n{self.tail()}") from None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / MB
        raise BenchError(f"{self.name}: no VmRSS in /proc")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)


def start_tunnel(dialect: str, workdir: Path, stack: ExitStack) -> tuple[Gjproxy, Gjproxy, int]:
    """(server, client, SOCKS port) of a tunnel up in ``dialect``, stopped when ``stack`` closes."""
    key, record = generate("bench")
    save_client_key(key, workdir / "key.dat")
    save_user(record, workdir / "users")
    server_flags, client_flags = DIALECT_FLAGS[dialect]
    listen = ("--listen", f"{LOOPBACK}:0", "--users", "users", *LOOPBACK_EGRESS)
    server = Gjproxy("server", ("server", *listen, *server_flags), workdir)
    stack.callback(server.stop)
    tunnel_port = server.wait_for(r"tunnel server listening on [\d.]+:(\d+)").group(1)
    socks = ("--server", f"{LOOPBACK}:{tunnel_port}", "--socks", f"{LOOPBACK}:0")
    client = Gjproxy("client", ("client", *socks, "--key", "key.dat", *client_flags), workdir)
    stack.callback(client.stop)
    socks_port = int(client.wait_for(r"SOCKS5 listening on [\d.]+:(\d+)").group(1))
    client.wait_for(r"tunnel to .* up")
    return server, client, socks_port


# --- the SOCKS5 load generator ---------------------------------------------------------------


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(size - got)
        if not chunk:
            raise BenchError(f"EOF after {got} of {size} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


_BOUND_ADDRESS_SIZES = {1: 4, 4: 16}


def socks_open(socks_port: int, target_port: int) -> socket.socket:
    """A socket through the SOCKS5 port to 127.0.0.1:``target_port`` (no auth, no DNS)."""
    sock = socket.create_connection((LOOPBACK, socks_port), timeout=SOCKET_TIMEOUT)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"\x05\x01\x00")
        if recv_exactly(sock, 2) != b"\x05\x00":
            raise BenchError("the SOCKS port refused 'no authentication'")
        address = socket.inet_aton(LOOPBACK) + target_port.to_bytes(2, "big")
        sock.sendall(b"\x05\x01\x00\x01" + address)
        version, code, _, address_type = recv_exactly(sock, 4)
        if version != 5 or code != 0:
            raise BenchError(f"SOCKS CONNECT failed with reply code {code}")
        if address_type == 3:
            recv_exactly(sock, recv_exactly(sock, 1)[0] + 2)
        else:
            recv_exactly(sock, _BOUND_ADDRESS_SIZES[address_type] + 2)
        return sock
    except BaseException:
        sock.close()
        raise


def round_trip(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(payload)
    if recv_exactly(sock, len(payload)) != payload:
        raise BenchError("the echo came back different")


def in_threads(work: Callable[[int], object], threads: int, seconds: float) -> list:
    """``work(index)`` for each index in its own thread; results in order; errors re-raised.

    On an error or Ctrl-C it returns at once: the threads end when the processes they talk to
    are stopped, or at their own deadlines.
    """
    pool = ThreadPoolExecutor(threads)
    try:
        futures = [pool.submit(work, index) for index in range(threads)]
        return [future.result(timeout=seconds + SOCKET_TIMEOUT) for future in futures]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def percentile(samples: list[float], percent: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[percent - 1]


# --- measurements -----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads (fields 14, 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_cpu_seconds() -> float:
    """CPU time the whole machine spent busy (not idle, not waiting for I/O), from /proc/stat."""
    jiffies = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle, iowait = jiffies[3], jiffies[4]
    return (sum(jiffies[:8]) - idle - iowait) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU use of each process over one measurement, as a share of one core.

    Shown so that a reader sees which process is the bottleneck, that the load generator and
    the target are not, and how much CPU other programs on the machine took meanwhile.
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.started = time.monotonic()
        self.before = self._sample()

    def _sample(self) -> dict[str, float]:
        ours = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        return {**ours, "others": busy_cpu_seconds() - sum(ours.values())}

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        after = self._sample()
        return "CPU " + ", ".join(
            f"{name} {max(0.0, seconds - self.before[name]) / elapsed:.0%}"
            for name, seconds in after.items()
        )


def download_mbps(socks_port: int, source_port: int, streams: int, size: int) -> float:
    """Aggregate MB/s of ``streams`` downloads of ``size`` bytes each, started together."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socks_open(socks_port, source_port)) for _ in range(streams)]
        start = threading.Barrier(streams)
        deadline = time.monotonic() + DOWNLOAD_SECONDS + SOCKET_TIMEOUT
        began = time.perf_counter()

        def download(index: int) -> int:
            sock, buffer, got = socks[index], bytearray(RECV_BUFFER), 0
            start.wait(SOCKET_TIMEOUT)
            sock.sendall(size.to_bytes(8, "big"))
            while got < size and time.monotonic() < deadline:
                received = sock.recv_into(buffer)
                if not received:
                    raise BenchError(f"download ended after {got} of {size} bytes")
                got += received
            return got

        received = sum(in_threads(download, streams, DOWNLOAD_SECONDS))
        return received / MB / (time.perf_counter() - began)


@dataclass
class Latencies:
    samples: list[float]

    def at(self, percent: int, unit: float) -> float:
        """The ``percent`` percentile in ``unit`` seconds (1e-3 for ms)."""
        return percentile(self.samples, percent) / unit

    def describe(self, unit_name: str, unit: float) -> str:
        p50, p99 = self.at(50, unit), self.at(99, unit)
        return f"p50 {p50:8.1f} {unit_name}   p99 {p99:8.1f} {unit_name}"


def echo_latencies(socks_port: int, echo_port: int) -> Latencies:
    """Round trips of ECHO_SIZE bytes on one established stream, after a warm-up."""
    payload = os.urandom(ECHO_SIZE)
    samples = []
    with socks_open(socks_port, echo_port) as sock:
        for _ in range(ECHO_WARMUP):
            round_trip(sock, payload)
        deadline = time.monotonic() + ECHO_SECONDS
        while len(samples) < ECHO_ROUND_TRIPS and time.monotonic() < deadline:
            began = time.perf_counter()
            round_trip(sock, payload)
            samples.append(time.perf_counter() - began)
    return Latencies(samples)


def connection_rate(socks_port: int, echo_port: int, concurrency: int) -> tuple[float, Latencies]:
    """Connections per second (SOCKS CONNECT, one small round trip, close) and their latency."""

    def connect_ping_close() -> None:
        with socks_open(socks_port, echo_port) as sock:
            round_trip(sock, RATE_PING)

    for _ in range(RATE_WARMUP):
        connect_ping_close()
    tickets = itertools.count()
    samples: list[float] = []
    deadline = time.monotonic() + RATE_SECONDS

    def connect_in_a_loop(_: int) -> None:
        while next(tickets) < RATE_MAX_CONNECTIONS and time.monotonic() < deadline:
            began = time.perf_counter()
            connect_ping_close()
            samples.append(time.perf_counter() - began)

    began = time.perf_counter()
    in_threads(connect_in_a_loop, concurrency, RATE_SECONDS)
    return len(samples) / (time.perf_counter() - began), Latencies(samples)


def hold_streams(socks_port: int, echo_port: int, stack: ExitStack) -> None:
    """HELD_STREAMS SOCKS connections to the echo target, each after one round trip, left open."""
    tickets = itertools.count()
    deadline = time.monotonic() + HOLD_SECONDS
    registering = threading.Lock()

    def open_some(_: int) -> None:
        while next(tickets) < HELD_STREAMS:
            if time.monotonic() > deadline:
                raise BenchError(f"{HELD_STREAMS} streams not open within {HOLD_SECONDS:g} s")
            sock = socks_open(socks_port, echo_port)
            with registering:
                stack.enter_context(sock)
            round_trip(sock, RATE_PING)

    in_threads(open_some, HOLD_OPENERS, HOLD_SECONDS)


# --- the report -------------------------------------------------------------------------------


class Report:
    """Prints results as they come, each target with its verdict, and counts the misses."""

    def __init__(self) -> None:
        self.targets = 0
        self.misses = 0

    def line(self, label: str, value: str, target: str = "", met: bool | None = None) -> None:
        verdict = ""
        if met is not None:
            self.targets += 1
            self.misses += not met
            verdict = f"  [{'pass' if met else 'MISS'}: target {target}]"
        print(f"  {label:<44} {value}{verdict}", flush=True)


def raise_fd_limit(needed: int) -> None:
    """Each process holds a socket per open stream; the others inherit this process's limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise BenchError(f"{needed} file descriptors needed; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def measure(dialect: str, workdir: Path, stack: ExitStack) -> Report:
    report = Report()
    source_port, echo_port, target_pid = start_targets(stack)
    server, client, socks_port = start_tunnel(dialect, workdir, stack)
    processes = (server, client)
    pids = {
        "server": server.proc.pid,
        "client": client.proc.pid,
        "load": os.getpid(),
        "target": target_pid,
    }
    print(f"gjproxy tunnel, dialect {dialect}, {os.cpu_count()} CPUs, all on {LOOPBACK}")
    time.sleep(SETTLE_SECONDS)
    idle = {process.name: process.rss_mb() for process in processes}
    report.line("RSS idle", "   ".join(f"{name} {mb:5.1f} MB" for name, mb in idle.items()))

    meter = CpuMeter(pids)
    latencies = echo_latencies(socks_port, echo_port)
    report.line(
        f"echo {ECHO_SIZE} B round trip, {len(latencies.samples)} on one stream",
        f"{latencies.describe('us', 1e-6)}   ({meter.summary()})",
        f"p50 <= {TARGET_ECHO_P50_US:g} us",
        latencies.at(50, 1e-6) <= TARGET_ECHO_P50_US,
    )

    for concurrency in (1, RATE_CONCURRENCY):
        meter = CpuMeter(pids)
        rate, latencies = connection_rate(socks_port, echo_port, concurrency)
        label = "sequential" if concurrency == 1 else f"{concurrency} at a time"
        sequential = concurrency == 1
        report.line(
            f"new connections/s, {label}",
            f"{rate:8.0f} /s   ({meter.summary()})",
            f">= {TARGET_SEQUENTIAL_CPS:g}/s" if sequential else "",
            rate >= TARGET_SEQUENTIAL_CPS if sequential else None,
        )
        report.line(f"  connect + round trip + close, {label}", latencies.describe("ms", 1e-3))

    meter = CpuMeter(pids)
    mbps = download_mbps(socks_port, source_port, 1, SINGLE_STREAM_BYTES)
    report.line(
        f"download, 1 stream, {SINGLE_STREAM_BYTES // MB} MB",
        f"{mbps:8.1f} MB/s ({meter.summary()})",
        f">= {TARGET_SINGLE_STREAM_MBPS:g} MB/s",
        mbps >= TARGET_SINGLE_STREAM_MBPS,
    )
    meter = CpuMeter(pids)
    mbps = download_mbps(socks_port, source_port, MULTI_STREAMS, MULTI_STREAM_BYTES)
    report.line(
        f"download, {MULTI_STREAMS} streams x {MULTI_STREAM_BYTES // MB} MB, aggregate",
        f"{mbps:8.1f} MB/s ({meter.summary()})",
    )

    with ExitStack() as held:
        hold_streams(socks_port, echo_port, held)
        time.sleep(SETTLE_SECONDS)
        rss = {process.name: process.rss_mb() for process in processes}
    total = sum(rss.values())
    report.line(
        f"RSS with {HELD_STREAMS} open streams",
        "   ".join(f"{name} {mb:5.1f} MB" for name, mb in rss.items()) + f"   sum {total:5.1f} MB",
        f"sum < {TARGET_HELD_RSS_MB:g} MB",
        total < TARGET_HELD_RSS_MB,
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dialect", choices=sorted(DIALECT_FLAGS), default="3.1")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        raise_fd_limit(HELD_STREAMS + FD_HEADROOM)
        with tempfile.TemporaryDirectory(prefix="gjproxy-bench-") as folder, ExitStack() as stack:
            report = measure(args.dialect, Path(folder), stack)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (BenchError, OSError, TimeoutError, threading.BrokenBarrierError) as error:
        print(f"bench failed: {error!r}", file=sys.stderr)
        return 1
    met = report.targets - report.misses
    elapsed = time.monotonic() - started
    print(f"{met} of {report.targets} targets met, in {elapsed:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
