"""End-to-end speed of gjproxy beside real peers: throughput, connection rate, echo, memory.

Unit tests say the tunnel works; this says how fast it is with real processes on loopback, in
the same run as the peers it is compared with: gjproxy 3.1 and 3.0 (``gjproxy server`` and
``gjproxy client``, keys in a temporary folder), a minimal gevent relay of the same wire
(bench/minimal_relay.py), pproxy (plain SOCKS5, pure-Python asyncio),
``ssh -D`` (our own sshd on a loopback port, throwaway keys, aes128-gcm) and shadowsocks-libev
(ss-server + ss-local, chacha20-ietf-poly1305). A peer that is not installed is skipped with a
note. One target process (a bulk source and an echo server, asyncio) serves them all, and raw
blocking sockets from threads drive each SOCKS5 port, so the load generator costs little CPU.
Each proxy runs ``--runs`` times (3) on fresh processes, the runs of the proxies interleaved;
the table shows medians, then the ratios to pproxy with the issue's targets. A 64-byte echo
is also timed while 4 endless downloads run through the same proxy (issue 19: a small request
must not wait behind bulk traffic), and ``--baseline DIR`` runs a second checkout's gjproxy
beside this one, so that before and after come from the same run on the same machine. Exit
status 0 whatever the numbers, 1 only when something broke.
Run: ``python bench/tunnel.py [--runs N] [--only NAME] [--baseline DIR]``. About 7 minutes,
2 more with a baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import itertools
import multiprocessing
import os
import re
import resource
import shutil
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
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import SynchronizedArray
from pathlib import Path

from jproxy.tunnel.keys import generate, save_client_key, save_user

ROOT = Path(__file__).resolve().parents[1]
"""This checkout: its gjproxy is the one measured (not whichever one is installed)."""
LOOPBACK = "127.0.0.1"
SOCKET_TIMEOUT = 10.0
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
TARGET_LIFETIME = 1800.0
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

LOADED_DOWNLOADS = 4
LOADED_RAMP_SECONDS = 1.0
"""The downloads run this long before the echo starts, so that every queue on the way is full."""
LOADED_ROUND_TRIPS = 2000
LOADED_SECONDS = 8.0
ENDLESS = (1 << 63) - 1
"""The byte count an endless download asks the source for."""

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


def start_target_process(stack: ExitStack, run, name: str) -> tuple[tuple, int]:
    """What a fresh process running ``run(sender)`` sends once it is ready, and its pid; the
    process is stopped when ``stack`` closes."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=run, args=(sender,), name=name)
    process.start()
    stack.callback(_stop_target, process)
    if not receiver.poll(START_TIMEOUT):
        raise BenchError(f"the {name} process did not start")
    return receiver.recv(), process.pid


def start_targets(stack: ExitStack) -> tuple[int, int, int]:
    """(source port, echo port, pid) of a fresh target process, stopped when ``stack`` closes."""
    ports, pid = start_target_process(stack, run_targets, "bench-targets")
    return (*ports, pid)


def _stop_target(process: multiprocessing.Process) -> None:
    process.terminate()
    process.join(STOP_TIMEOUT)
    if process.is_alive():
        process.kill()
        process.join(STOP_TIMEOUT)


# --- the proxies under test: gjproxy and its peers ------------------------------------------


class Service:
    """A process of a proxy under test, its output in a file of the work folder."""

    def __init__(
        self, name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
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
        """VmRSS of the process and its children, in MB."""
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} is gone:\n{self.tail()}")
        total = 0
        for pid in process_tree(self.proc.pid):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        return total / MB

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)


def free_port() -> int:
    """A loopback port nobody listens on now (for peers that cannot be told to pick one)."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def wait_listening(port: int, service: Service) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            socket.create_connection((LOOPBACK, port), timeout=1).close()
            return
        except OSError:
            if service.proc.poll() is not None:
                raise BenchError(f"{service.name} exited:\n{service.tail()}") from None
            time.sleep(0.05)
    raise BenchError(f"{service.name}: port {port} not listening in {START_TIMEOUT:g} s")


def keys_and_environment(workdir: Path, tree: Path) -> dict[str, str]:
    """Writes a key pair into ``workdir`` (key.dat, users/); the environment of a process that
    imports the gjproxy package of the checkout ``tree``."""
    key, record = generate("bench")
    save_client_key(key, workdir / "key.dat")
    save_user(record, workdir / "users")
    search_path = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": search_path}


def start_gjproxy(
    dialect: str,
    workdir: Path,
    stack: ExitStack,
    command: Callable[[str], list[str]] | None = None,
    extra: dict[str, list[str]] | None = None,
    tree: Path = ROOT,
) -> tuple[list[Service], int]:
    """(server and client, SOCKS port) of a gjproxy tunnel up in ``dialect``; ``command(name)``
    is what runs the ``gjproxy`` command for the process ``name`` (default ``python -m jproxy``);
    ``extra[name]`` are more flags for it; the package of the checkout ``tree`` comes first on
    PYTHONPATH (default: this one)."""
    extra = extra or {}
    env = keys_and_environment(workdir, tree)
    server_flags, client_flags = DIALECT_FLAGS[dialect]
    gjproxy = command or (lambda name: [sys.executable, "-m", "jproxy"])
    listen = ["--listen", f"{LOOPBACK}:0", "--users", "users", *LOOPBACK_EGRESS]
    server_argv = [*gjproxy("server"), "server", *listen, *server_flags, *extra.get("server", [])]
    server = Service("server", server_argv, workdir, env)
    stack.callback(server.stop)
    tunnel_port = server.wait_for(r"tunnel server listening on [\d.]+:(\d+)").group(1)
    socks = ["--server", f"{LOOPBACK}:{tunnel_port}", "--socks", f"{LOOPBACK}:0"]
    client_argv = [*gjproxy("client"), "client", *socks, "--key", "key.dat", *client_flags]
    client = Service("client", [*client_argv, *extra.get("client", [])], workdir, env)
    stack.callback(client.stop)
    socks_port = int(client.wait_for(r"SOCKS5 listening on [\d.]+:(\d+)").group(1))
    client.wait_for(r"tunnel to .* up")
    return [server, client], socks_port


def start_minimal_relay(workdir: Path, stack: ExitStack) -> tuple[list[Service], int]:
    """bench/minimal_relay.py: gjproxy 3.1's wire on gevent without gjproxy's machinery."""
    env = keys_and_environment(workdir, ROOT)
    relay = [sys.executable, str(ROOT / "bench" / "minimal_relay.py")]
    listen = ["--listen", f"{LOOPBACK}:0", "--users", "users"]
    server = Service("relay-server", [*relay, "server", *listen], workdir, env)
    stack.callback(server.stop)
    tunnel_port = server.wait_for(r"server listening on [\d.]+:(\d+)").group(1)
    socks = ["--server", f"{LOOPBACK}:{tunnel_port}", "--socks", f"{LOOPBACK}:0"]
    client = Service("relay-client", [*relay, "client", *socks, "--key", "key.dat"], workdir, env)
    stack.callback(client.stop)
    socks_port = int(client.wait_for(r"SOCKS5 listening on [\d.]+:(\d+)").group(1))
    return [server, client], socks_port


def start_pproxy(workdir: Path, stack: ExitStack) -> tuple[list[Service], int]:
    """pproxy (pure-Python asyncio), plain SOCKS5, no encryption: one process."""
    port = free_port()
    proxy = Service("pproxy", ["pproxy", "-l", f"socks5://{LOOPBACK}:{port}"], workdir)
    stack.callback(proxy.stop)
    wait_listening(port, proxy)
    return [proxy], port


def start_ssh(
    workdir: Path, stack: ExitStack, via: Callable[[int], int] = lambda port: port
) -> tuple[list[Service], int]:
    """``ssh -D`` through our own sshd on a loopback port: throwaway keys, aes128-gcm; ssh
    connects to ``via(sshd's port)`` (a relay in front of sshd, for bench/scale.py)."""
    keys = workdir / "ssh"
    keys.mkdir(mode=0o700)
    for name in ("host", "user"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True
        )
    (keys / "authorized_keys").write_bytes((keys / "user.pub").read_bytes())
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation
    sshd_port, socks_port = free_port(), free_port()
    sshd_options = {
        "ListenAddress": f"{LOOPBACK}:{sshd_port}",
        "HostKey": str(keys / "host"),
        "AuthorizedKeysFile": str(keys / "authorized_keys"),
        "PidFile": str(keys / "sshd.pid"),
        "StrictModes": "no",
        "UsePAM": "no",
        "PasswordAuthentication": "no",
        "PermitRootLogin": "prohibit-password",
        "AllowTcpForwarding": "yes",
    }
    sshd_argv = [shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-e", "-f", "/dev/null"]
    for option, value in sshd_options.items():
        sshd_argv += ["-o", f"{option}={value}"]
    sshd = Service("sshd", sshd_argv, workdir)
    stack.callback(sshd.stop)
    wait_listening(sshd_port, sshd)
    client_options = {
        "Ciphers": "aes128-gcm@openssh.com",
        "StrictHostKeyChecking": "no",
        "UserKnownHostsFile": "/dev/null",
        "BatchMode": "yes",
        "ExitOnForwardFailure": "yes",
        "LogLevel": "ERROR",
    }
    ssh_argv = ["ssh", "-N", "-i", str(keys / "user"), "-p", str(via(sshd_port))]
    for option, value in client_options.items():
        ssh_argv += ["-o", f"{option}={value}"]
    ssh_argv += ["-D", f"{LOOPBACK}:{socks_port}", f"{getpass.getuser()}@{LOOPBACK}"]
    ssh = Service("ssh", ssh_argv, workdir)
    stack.callback(ssh.stop)
    wait_listening(socks_port, ssh)
    return [sshd, ssh], socks_port


def start_shadowsocks(workdir: Path, stack: ExitStack) -> tuple[list[Service], int]:
    """shadowsocks-libev: ss-server and ss-local, chacha20-ietf-poly1305, on loopback."""
    server_port, socks_port = free_port(), free_port()
    common = ["-k", "bench-password", "-m", "chacha20-ietf-poly1305"]
    server = Service(
        "ss-server", ["ss-server", "-s", LOOPBACK, "-p", str(server_port), *common], workdir
    )
    stack.callback(server.stop)
    wait_listening(server_port, server)
    local_argv = ["ss-local", "-s", LOOPBACK, "-p", str(server_port), "-b", LOOPBACK]
    local = Service("ss-local", [*local_argv, "-l", str(socks_port), *common], workdir)
    stack.callback(local.stop)
    wait_listening(socks_port, local)
    return [server, local], socks_port


@dataclass
class Proxy:
    name: str
    tools: tuple[str, ...]
    """Programs it needs; when one is missing the proxy is skipped with a note."""
    start: Callable[[Path, ExitStack], tuple[list[Service], int]]


RELAY = "minimal relay"
"""bench/minimal_relay.py, named short for the table's columns."""
PROXIES = [
    Proxy("gjproxy 3.1", (), lambda d, s: start_gjproxy("3.1", d, s)),
    Proxy("gjproxy 3.0", (), lambda d, s: start_gjproxy("3.0", d, s)),
    Proxy(RELAY, (), start_minimal_relay),
    Proxy("pproxy", ("pproxy",), start_pproxy),
    Proxy("ssh -D", ("ssh", "sshd", "ssh-keygen"), start_ssh),
    Proxy("ss-libev", ("ss-server", "ss-local"), start_shadowsocks),
]
PEER = "pproxy"
"""The peer the ratios compare with (the issue's targets are ratios to pproxy)."""
LATENCY_PEER = "ssh -D"
"""The peer of issue 19's target: gjproxy's loaded echo p50 and p99 each <= its own."""
BASELINE = " (baseline)"


def baseline_proxies(tree: Path) -> list[Proxy]:
    """gjproxy 3.1 and 3.0 of another checkout (``--baseline``), named "... (baseline)"."""
    if not (tree / "jproxy" / "__main__.py").is_file():
        raise BenchError(f"--baseline {tree}: not a gjproxy checkout (no jproxy/__main__.py)")
    return [
        Proxy(
            f"gjproxy {dialect}{BASELINE}",
            (),
            lambda d, s, dialect=dialect: start_gjproxy(dialect, d, s, tree=tree),
        )
        for dialect in ("3.1", "3.0")
    ]


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


def _stat_fields(pid: int) -> list[str]:
    """Fields 3.. of /proc/PID/stat (after the command name); [] when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (sshd serves each connection in forked children)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """User + system CPU time of a process, and with ``tree`` of its descendants too
    (fields 14, 15 of /proc/PID/stat)."""
    total = 0
    for member in process_tree(pid) if tree else [pid]:
        fields = _stat_fields(member)
        total += int(fields[11]) + int(fields[12]) if fields else 0
    return total / os.sysconf("SC_CLK_TCK")


def busy_cpu_seconds() -> float:
    """CPU time the whole machine spent busy (not idle, not waiting for I/O), from /proc/stat."""
    jiffies = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle, iowait = jiffies[3], jiffies[4]
    return (sum(jiffies[:8]) - idle - iowait) / os.sysconf("SC_CLK_TCK")


_ALONE = frozenset({"load", "target"})


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
        # The load generator's children are the proxies and the target: count it alone.
        ours = {name: cpu_seconds(pid, name not in _ALONE) for name, pid in self.pids.items()}
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


def run_downloads(
    socks_port: int,
    source_port: int,
    received: SynchronizedArray,
    cut: SynchronizedArray,
    ready: Connection,
) -> None:
    """The downloads' process: LOADED_DOWNLOADS endless downloads through the SOCKS port, each
    read as fast as it comes in its own thread, counting bytes into ``received[index]`` and
    setting ``cut[index]`` if the proxy ends it (closed or reset); ready once every one has
    received data. It runs until stopped, at most as long as the whole measurement may last
    (a process of its own, so that its reading never holds up the echo's thread)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    socks = [socks_open(socks_port, source_port) for _ in range(LOADED_DOWNLOADS)]
    began = time.monotonic()
    deadline = began + START_TIMEOUT + LOADED_RAMP_SECONDS + LOADED_SECONDS

    def download(index: int) -> None:
        sock, buffer = socks[index], bytearray(RECV_BUFFER)
        try:
            sock.sendall(ENDLESS.to_bytes(8, "big"))
            while time.monotonic() < deadline:
                if not (got := sock.recv_into(buffer)):
                    cut[index] = 1
                    return
                received[index] += got
        except OSError:
            cut[index] = 1

    for index in range(LOADED_DOWNLOADS):
        threading.Thread(target=download, args=(index,), daemon=True).start()
    # Never stop reading while waiting for the others: a proxy without flow control would
    # hold their data behind the data of a download nobody reads.
    while not all(received) and time.monotonic() < began + START_TIMEOUT:
        time.sleep(0.01)
    if all(received):
        ready.send(True)
    time.sleep(max(0.0, deadline - time.monotonic()))


def loaded_echo_latencies(
    socks_port: int, source_port: int, echo_port: int
) -> tuple[Latencies, float, int, float]:
    """Round trips of ECHO_SIZE bytes on one established stream while LOADED_DOWNLOADS endless
    downloads run through the same proxy; the downloads' MB/s meanwhile (proof of load), how
    many the proxy cut short, and the CPU their process used (a share of one core, its start
    included)."""
    payload = os.urandom(ECHO_SIZE)
    samples: list[float] = []
    context = multiprocessing.get_context("spawn")
    received = context.Array("q", LOADED_DOWNLOADS)
    cut = context.Array("b", LOADED_DOWNLOADS)
    with socks_open(socks_port, echo_port) as sock, ExitStack() as downloads:
        for _ in range(ECHO_WARMUP):
            round_trip(sock, payload)
        spawned = time.monotonic()
        _, pid = start_target_process(
            downloads,
            partial(run_downloads, socks_port, source_port, received, cut),
            "bench-downloads",
        )
        time.sleep(LOADED_RAMP_SECONDS)
        before, began = sum(received), time.perf_counter()
        deadline = time.monotonic() + LOADED_SECONDS
        while len(samples) < LOADED_ROUND_TRIPS and time.monotonic() < deadline:
            sent = time.perf_counter()
            round_trip(sock, payload)
            samples.append(time.perf_counter() - sent)
        mbps = (sum(received) - before) / MB / (time.perf_counter() - began)
        cpu = cpu_seconds(pid, tree=False) / (time.monotonic() - spawned)
        ended = sum(cut)
    return Latencies(samples), mbps, ended, cpu


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


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    higher_is_better: bool


FIGURES = [
    Figure("mbps_1", f"download, 1 stream, {SINGLE_STREAM_BYTES // MB} MB", "MB/s", True),
    Figure(
        "mbps_8",
        f"download, {MULTI_STREAMS} streams x {MULTI_STREAM_BYTES // MB} MB",
        "MB/s",
        True,
    ),
    Figure("cps_1", "new connections/s, sequential", "/s", True),
    Figure("cps_1_p50", "  connect+round trip+close p50", "ms", False),
    Figure("cps_1_p99", "  connect+round trip+close p99", "ms", False),
    Figure("cps_32", f"new connections/s, {RATE_CONCURRENCY} at a time", "/s", True),
    Figure("cps_32_p50", "  connect+round trip+close p50", "ms", False),
    Figure("cps_32_p99", "  connect+round trip+close p99", "ms", False),
    Figure("echo_p50", f"echo {ECHO_SIZE} B round trip p50", "us", False),
    Figure("echo_p99", f"echo {ECHO_SIZE} B round trip p99", "us", False),
    Figure("loaded_p50", f"  the same behind {LOADED_DOWNLOADS} downloads, p50", "ms", False),
    Figure("loaded_p99", f"  the same behind {LOADED_DOWNLOADS} downloads, p99", "ms", False),
    Figure("loaded_mbps", f"  the {LOADED_DOWNLOADS} downloads meanwhile", "MB/s", True),
    Figure("loaded_cut", "  downloads cut short meanwhile", "count", False),
    Figure("rss_idle", "RSS idle, all processes", "MB", False),
    Figure("rss_held", f"RSS with {HELD_STREAMS} streams, all processes", "MB", False),
]

TARGETS = {
    "mbps_1": (">=", 1.0),
    "mbps_8": (">=", 1.0),
    "cps_1": (">=", 1.5),
    "echo_p50": ("<=", 1.0),
}
"""The issue's targets for gjproxy 3.1, as ratios to the peer (pproxy)."""
LOADED_KEYS = ("loaded_p50", "loaded_p99")
"""Issue 19's target: gjproxy 3.1's loaded echo p50 and p99 each <= LATENCY_PEER's."""
WORSE_BY = 0.05
"""Issue 19: no figure of the tree may be more than 5% worse than its baseline's."""


def raise_fd_limit(needed: int) -> None:
    """Each process holds a socket per open stream; the others inherit this process's limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise BenchError(f"{needed} file descriptors needed; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def measure(
    services: list[Service], socks_port: int, targets: tuple[int, int, int]
) -> tuple[dict[str, float], dict[str, str]]:
    """One run of every figure against one started proxy: (figures, CPU use per figure)."""
    source_port, echo_port, target_pid = targets
    pids = {service.name: service.proc.pid for service in services}
    pids |= {"load": os.getpid(), "target": target_pid}
    figures: dict[str, float] = {}
    cpu: dict[str, str] = {}
    time.sleep(SETTLE_SECONDS)
    figures["rss_idle"] = sum(service.rss_mb() for service in services)

    meter = CpuMeter(pids)
    latencies = echo_latencies(socks_port, echo_port)
    figures["echo_p50"], figures["echo_p99"] = latencies.at(50, 1e-6), latencies.at(99, 1e-6)
    cpu["echo_p50"] = meter.summary()

    meter = CpuMeter(pids)
    latencies, figures["loaded_mbps"], figures["loaded_cut"], downloads_cpu = loaded_echo_latencies(
        socks_port, source_port, echo_port
    )
    figures["loaded_p50"], figures["loaded_p99"] = latencies.at(50, 1e-3), latencies.at(99, 1e-3)
    cpu["loaded_p50"] = f"{meter.summary()} (downloads {downloads_cpu:.0%} of them)"

    for concurrency in (1, RATE_CONCURRENCY):
        meter = CpuMeter(pids)
        rate, latencies = connection_rate(socks_port, echo_port, concurrency)
        key = f"cps_{concurrency}"
        figures[key] = rate
        figures[f"{key}_p50"], figures[f"{key}_p99"] = (
            latencies.at(50, 1e-3),
            latencies.at(99, 1e-3),
        )
        cpu[key] = meter.summary()

    for key, streams, size in (
        ("mbps_1", 1, SINGLE_STREAM_BYTES),
        ("mbps_8", MULTI_STREAMS, MULTI_STREAM_BYTES),
    ):
        meter = CpuMeter(pids)
        figures[key] = download_mbps(socks_port, source_port, streams, size)
        cpu[key] = meter.summary()

    with ExitStack() as held:
        hold_streams(socks_port, echo_port, held)
        time.sleep(SETTLE_SECONDS)
        figures["rss_held"] = sum(service.rss_mb() for service in services)
    return figures, cpu


def installed(proxy: Proxy) -> bool:
    missing = [tool for tool in proxy.tools if shutil.which(tool) is None]
    if missing:
        print(f"{proxy.name}: skipped, not installed: {', '.join(missing)}", flush=True)
    return not missing


def run_once(
    proxy: Proxy, run: int, targets: tuple[int, int, int]
) -> tuple[dict[str, float], dict[str, str]]:
    """Every figure of one run of ``proxy`` on freshly started processes."""
    with tempfile.TemporaryDirectory(prefix="gjproxy-bench-") as folder, ExitStack() as stack:
        services, socks_port = proxy.start(Path(folder), stack)
        figures, cpu = measure(services, socks_port, targets)
    print(
        f"{proxy.name} run {run + 1}: "
        f"1 stream {figures['mbps_1']:.0f} MB/s, 8 streams {figures['mbps_8']:.0f} MB/s, "
        f"{figures['cps_1']:.0f} conn/s, echo p50 {figures['echo_p50']:.0f} us, "
        f"behind downloads p50 {figures['loaded_p50']:.2f} ms p99 {figures['loaded_p99']:.2f} ms"
        + (f" ({figures['loaded_cut']:.0f} downloads cut)" if figures["loaded_cut"] else ""),
        flush=True,
    )
    return figures, cpu


def print_table(results: dict[str, dict[str, float]], runs: int) -> None:
    names = list(results)
    print(f"\nmedians of {runs} runs, {os.cpu_count()} CPUs, everything on {LOOPBACK}")
    widths = [max(11, len(name)) for name in names]
    header = f"| {'figure':<42} |" + "".join(
        f" {name:>{width}} |" for name, width in zip(names, widths, strict=True)
    )
    print(header)
    print("|" + "-" * 44 + "|" + "".join("-" * (width + 2) + "|" for width in widths))
    for figure in FIGURES:
        cells = "".join(
            f" {results[name][figure.key]:>{width}.1f} |"
            for name, width in zip(names, widths, strict=True)
        )
        print(f"| {figure.label + ' (' + figure.unit + ')':<42} |{cells}")


def print_ratios(results: dict[str, dict[str, float]]) -> None:
    if PEER not in results:
        print(f"\nno ratios: {PEER} was not measured")
        return
    peer = results[PEER]
    for name in results:
        if not name.startswith("gjproxy"):
            continue
        print(f"\n{name} / {PEER}:")
        for figure in FIGURES:
            if figure.unit == "count":
                continue  # the table shows the counts; a ratio of them says nothing
            ratio = results[name][figure.key] / peer[figure.key] if peer[figure.key] else 0.0
            verdict = ""
            if name == "gjproxy 3.1" and figure.key in TARGETS:
                sign, bound = TARGETS[figure.key]
                met = ratio >= bound if sign == ">=" else ratio <= bound
                verdict = f"  [{'pass' if met else 'MISS'}: target {sign} {bound:g}x]"
            print(f"  {figure.label:<44} {ratio:6.2f}x{verdict}")
    for name in ("gjproxy 3.1", "gjproxy 3.0"):
        if name in results:
            held = results[name]["rss_held"]
            met = held < TARGET_HELD_RSS_MB
            print(
                f"\n{name}: RSS of server + client with {HELD_STREAMS} streams {held:.1f} MB"
                f"  [{'pass' if met else 'MISS'}: target < {TARGET_HELD_RSS_MB:g} MB]"
            )
    if "gjproxy 3.0" in results and "gjproxy 3.1" in results:
        legacy, secure = results["gjproxy 3.0"], results["gjproxy 3.1"]
        print(
            f"\ngjproxy 3.0 / 3.1: 1 stream {legacy['mbps_1'] / secure['mbps_1']:.2f}x, "
            f"8 streams {legacy['mbps_8'] / secure['mbps_8']:.2f}x  [target >= 1x]"
        )


def _spread(values: list[float]) -> str:
    """The median and, with several runs, the range in brackets."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def print_latency_behind_bulk(samples: dict[str, dict[str, list[float]]], runs: int) -> None:
    """Issue 19's table: the echo behind downloads on the same proxy, and without them."""
    print(
        f"\n{ECHO_SIZE}-byte echo on one stream while {LOADED_DOWNLOADS} endless downloads run"
        f" through the same proxy (ms; median of {runs} runs [range]):"
    )
    print("| proxy | loaded echo p50 | loaded echo p99 | unloaded echo p50 | downloads MB/s |")
    print("|---|---|---|---|---|")
    for name, values in samples.items():
        unloaded = [micros / 1000 for micros in values["echo_p50"]]
        print(
            f"| {name} | {_spread(values['loaded_p50'])} | {_spread(values['loaded_p99'])} |"
            f" {_spread(unloaded)} | {statistics.median(values['loaded_mbps']):.0f} |"
        )
    if LATENCY_PEER not in samples:
        return
    peer = {key: statistics.median(samples[LATENCY_PEER][key]) for key in LOADED_KEYS}
    for name in samples:
        if name.startswith("gjproxy"):
            verdicts = []
            for key in LOADED_KEYS:
                ours = statistics.median(samples[name][key])
                met = "pass" if ours <= peer[key] else "MISS"
                verdicts.append(f"{key[-3:]} {ours / peer[key]:.2f}x [{met}]")
            print(
                f"{name} / {LATENCY_PEER} behind downloads: {', '.join(verdicts)}  [target <= 1x]"
            )


def print_against_baseline(results: dict[str, dict[str, float]]) -> None:
    """Each figure of this tree's gjproxy against the baseline checkout's, same run."""
    for name in [name for name in results if name.endswith(BASELINE)]:
        current = name.removesuffix(BASELINE)
        if current not in results:
            continue
        print(f"\n{current} / {name} (> {WORSE_BY:.0%} worse is flagged):")
        for figure in FIGURES:
            if figure.unit == "count":
                continue
            ours, theirs = results[current][figure.key], results[name][figure.key]
            ratio = ours / theirs if theirs else 0.0
            worse = ratio < 1 - WORSE_BY if figure.higher_is_better else ratio > 1 + WORSE_BY
            print(f"  {figure.label:<44} {ratio:6.2f}x{'  [WORSE]' if worse else ''}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per proxy (median; 3)")
    parser.add_argument(
        "--only",
        action="append",
        help="measure only this proxy (repeatable; a name of the table); default: all",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="another gjproxy checkout (e.g. a worktree of main) whose gjproxy 3.1 and 3.0 run"
        " beside this one's, as 'gjproxy 3.1 (baseline)' and 'gjproxy 3.0 (baseline)'",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    results: dict[str, dict[str, float]] = {}
    samples: dict[str, dict[str, list[float]]] = {}
    cpu_of: dict[str, dict[str, str]] = {}
    try:
        proxies = [*PROXIES, *(baseline_proxies(args.baseline.resolve()) if args.baseline else [])]
        unknown = set(args.only or ()) - {proxy.name for proxy in proxies}
        if unknown:
            parser.error(f"--only: no proxy named {', '.join(sorted(unknown))}")
        raise_fd_limit(2 * HELD_STREAMS + FD_HEADROOM)
        with ExitStack() as stack:
            targets = start_targets(stack)
            chosen = [p for p in proxies if (not args.only or p.name in args.only) and installed(p)]
            samples = {proxy.name: {} for proxy in chosen}
            # Runs interleave the proxies, so load from elsewhere on the machine falls on all
            # of them alike rather than on whichever ran while it lasted.
            for run in range(args.runs):
                for proxy in chosen:
                    figures, cpu_of[proxy.name] = run_once(proxy, run, targets)
                    for key, value in figures.items():
                        samples[proxy.name].setdefault(key, []).append(value)
            for name, figures_of in samples.items():
                results[name] = {key: statistics.median(v) for key, v in figures_of.items()}
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (BenchError, OSError, TimeoutError, threading.BrokenBarrierError) as error:
        print(f"bench failed: {error!r}", file=sys.stderr)
        return 1
    print_table(results, args.runs)
    print_ratios(results)
    print_latency_behind_bulk(samples, args.runs)
    print_against_baseline(results)
    print("\nCPU (share of one core) during the last run of each figure:")
    for name, cpu in cpu_of.items():
        for key in ("mbps_1", "mbps_8", "cps_1", "echo_p50", "loaded_p50"):
            print(f"  {name:<22} {key:<10} {cpu[key]}")
    print(f"\nin {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
