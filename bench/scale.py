"""Scale figures: several tunnels per client, and a server on several cores, beside peers.

(a) **A per-flow-capped path.** Every TCP connection between client and server passes a relay
    that caps it at ``--cap`` MB/s (``bench/relay.py``; this kernel has no netem, and a
    userspace relay caps each flow without a network namespace). 8 downloads at once through
    gjproxy ``--tunnels 1`` and ``--tunnels 4``, and through ``ssh -D`` over the same relay.
(b) **Echo under load.** 64-byte echo round trips (p50, p99) while 4 downloads run, through
    gjproxy ``--tunnels 1`` and ``--tunnels 4``, ``ssh -D`` and shadowsocks-libev (no cap).
(c) **Connections per second on several cores.** 32 connections at a time (connect, one small
    round trip, close) spread over 4 gjproxy client processes, against ``gjproxy server
    --workers 1`` and ``--workers 2``; then 8 downloads through them. The server's CPU time
    (parent and workers) per 1000 connections and per GB.

Each configuration runs ``--runs`` times (3) on fresh processes, the configurations of a part
interleaved; the tables show medians. The machine these figures come from is shared and busy:
compare the columns of one run, not figures of different days. Helpers and peers come from
``bench/tunnel.py``. Run: ``PYTHONPATH=$PWD python bench/scale.py [--runs N] [--only PART]``.
About 6 minutes.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from bench.relay import Relay
from bench.tunnel import (
    ECHO_SIZE,
    LOOPBACK,
    LOOPBACK_EGRESS,
    MB,
    PROXIES,
    RATE_PING,
    RECV_BUFFER,
    SOCKET_TIMEOUT,
    BenchError,
    Service,
    cpu_seconds,
    download_mbps,
    in_threads,
    installed,
    percentile,
    raise_fd_limit,
    round_trip,
    socks_open,
    start_shadowsocks,
    start_ssh,
    start_targets,
)
from jproxy.tunnel.keys import generate, save_client_key, save_user

CAPPED_STREAMS = 8
CAPPED_BYTES = 1_500_000
LOADED_DOWNLOADS = 4
LOADED_ECHOES = 1000
LOADED_SECONDS = 8.0
RATE_CLIENTS = 4
RATE_CONCURRENCY = 32
RATE_SECONDS = 5.0
BULK_STREAMS = 8
BULK_BYTES = 40 * MB

Started = tuple[list[Service], list[int]]
"""The processes of a proxy under test and its SOCKS ports."""


def start_gjproxy(
    workdir: Path,
    stack: ExitStack,
    *,
    server_flags: tuple[str, ...] = (),
    tunnels: int = 1,
    clients: int = 1,
    cap: float = 0.0,
) -> Started:
    """A gjproxy server and ``clients`` clients, each tunnel through a relay capping every
    connection at ``cap`` bytes/s when ``cap`` is set; returns once every tunnel is up."""
    key, record = generate("bench")
    save_client_key(key, workdir / "key.dat")
    save_user(record, workdir / "users")
    listen = ["--listen", f"{LOOPBACK}:0", "--users", "users", *LOOPBACK_EGRESS]
    server = Service("server", [*_gjproxy(), "server", *listen, *server_flags], workdir)
    stack.callback(server.stop)
    port = int(server.wait_for(r"tunnel server listening on [\d.]+:(\d+)").group(1))
    if cap:
        relay = Relay((LOOPBACK, port), rate=cap)
        stack.callback(relay.close)
        port = relay.port
    services, ports = [server], []
    for number in range(clients):
        flags = ["--server", f"{LOOPBACK}:{port}", "--socks", f"{LOOPBACK}:0", "--key", "key.dat"]
        flags += ["--tunnels", str(tunnels)]
        client = Service(f"client{number}", [*_gjproxy(), "client", *flags], workdir)
        stack.callback(client.stop)
        ports.append(int(client.wait_for(r"SOCKS5 listening on [\d.]+:(\d+)").group(1)))
        _wait_count(client, ": up (dialect", tunnels)
        services.append(client)
    return services, ports


def _gjproxy() -> list[str]:
    return [sys.executable, "-m", "jproxy"]


def _wait_count(service: Service, text: str, count: int) -> None:
    deadline = time.monotonic() + SOCKET_TIMEOUT
    while service.log_path.read_text(errors="replace").count(text) < count:
        if time.monotonic() > deadline:
            raise BenchError(f"{service.name}: fewer than {count} x {text!r}:\n{service.tail()}")
        time.sleep(0.05)


def ssh_over(cap: float) -> Callable[[Path, ExitStack], Started]:
    def start(workdir: Path, stack: ExitStack) -> Started:
        def via(port: int) -> int:
            if not cap:
                return port
            relay = Relay((LOOPBACK, port), rate=cap)
            stack.callback(relay.close)
            return relay.port

        services, port = start_ssh(workdir, stack, via)
        return services, [port]

    return start


def shadowsocks(workdir: Path, stack: ExitStack) -> Started:
    services, port = start_shadowsocks(workdir, stack)
    return services, [port]


def gjproxy_with(**options) -> Callable[[Path, ExitStack], Started]:
    return lambda workdir, stack: start_gjproxy(workdir, stack, **options)


# --- the measurements -------------------------------------------------------------------------


def capped_downloads(started: Started, targets: tuple[int, int, int]) -> dict[str, float]:
    _, ports = started
    return {"MB/s": download_mbps(ports[0], targets[0], CAPPED_STREAMS, CAPPED_BYTES)}


def loaded_echo(started: Started, targets: tuple[int, int, int]) -> dict[str, float]:
    """Echo round trips on one stream while ``LOADED_DOWNLOADS`` endless downloads run."""
    _, ports = started
    source_port, echo_port, _ = targets
    stop = threading.Event()
    with ExitStack() as stack:
        downloads = [
            stack.enter_context(socks_open(ports[0], source_port)) for _ in range(LOADED_DOWNLOADS)
        ]

        def download(sock) -> None:
            buffer = bytearray(RECV_BUFFER)
            try:
                sock.sendall((1 << 40).to_bytes(8, "big"))
                while not stop.is_set() and sock.recv_into(buffer):
                    pass
            except OSError:
                pass

        threads = [threading.Thread(target=download, args=(s,), daemon=True) for s in downloads]
        for thread in threads:
            thread.start()
        time.sleep(1.0)  # the downloads reach full speed
        payload, samples = bytes(ECHO_SIZE), []
        deadline = time.monotonic() + LOADED_SECONDS
        with socks_open(ports[0], echo_port) as sock:
            while len(samples) < LOADED_ECHOES and time.monotonic() < deadline:
                began = time.perf_counter()
                round_trip(sock, payload)
                samples.append(time.perf_counter() - began)
        stop.set()
    for thread in threads:
        thread.join(SOCKET_TIMEOUT)
    return {
        "p50 ms": percentile(samples, 50) * 1e3,
        "p99 ms": percentile(samples, 99) * 1e3,
        "echoes": len(samples),
    }


def connections_and_bulk(started: Started, targets: tuple[int, int, int]) -> dict[str, float]:
    """Connections per second, 32 at a time over the clients' ports, then 8 downloads; the
    server's CPU (its process tree: the parent and the workers) for each."""
    services, ports = started
    server = services[0].proc.pid
    source_port, echo_port, _ = targets

    def connect_ping_close(port: int) -> None:
        with socks_open(port, echo_port) as sock:
            round_trip(sock, RATE_PING)

    for port in ports:
        for _ in range(10):
            connect_ping_close(port)  # warm-up
    deadline = time.monotonic() + RATE_SECONDS
    cpu, began = cpu_seconds(server), time.perf_counter()

    def loop(index: int) -> int:
        done = 0
        while time.monotonic() < deadline:
            connect_ping_close(ports[index % len(ports)])
            done += 1
        return done

    done = sum(in_threads(loop, RATE_CONCURRENCY, RATE_SECONDS))
    elapsed = time.perf_counter() - began
    connection_cpu = cpu_seconds(server) - cpu
    cpu = cpu_seconds(server)
    per_client = BULK_STREAMS // len(ports)
    results = in_threads(
        lambda index: download_mbps(ports[index], source_port, per_client, BULK_BYTES),
        len(ports),
        60,
    )
    bulk_cpu = cpu_seconds(server) - cpu
    gigabytes = BULK_STREAMS * BULK_BYTES / 1e9
    log = services[0].log_path.read_text(errors="replace")
    logins = re.findall(r"(?:worker (\d+) )?\S+: tunnel \S+: logged in", log)
    return {
        "tunnels in busiest worker": max(logins.count(n) for n in set(logins)),
        "conn/s": done / elapsed,
        "server CPU ms/1000 conn": connection_cpu / done * 1e6,
        "MB/s (8 downloads)": sum(results),
        "server CPU s/GB": bulk_cpu / gigabytes,
    }


PARTS = {
    "capped": (
        "(a) 8 downloads, every TCP connection capped at {cap:g} MB/s",
        capped_downloads,
        lambda cap: {
            "gjproxy --tunnels 1": gjproxy_with(tunnels=1, cap=cap),
            "gjproxy --tunnels 4": gjproxy_with(tunnels=4, cap=cap),
            "ssh -D": ssh_over(cap),
        },
    ),
    "echo": (
        "(b) echo 64 B round trip while 4 downloads run (no cap)",
        loaded_echo,
        lambda cap: {
            "gjproxy --tunnels 1": gjproxy_with(tunnels=1),
            "gjproxy --tunnels 4": gjproxy_with(tunnels=4),
            "ssh -D": ssh_over(0.0),
            "ss-libev": shadowsocks,
        },
    ),
    "workers": (
        "(c) 32 connections at a time from 4 clients, then 8 x 40 MB downloads",
        connections_and_bulk,
        lambda cap: {
            f"--workers {n}": gjproxy_with(server_flags=("--workers", str(n)), clients=RATE_CLIENTS)
            for n in (1, 2)
        },
    ),
}
NEEDS = {"ssh -D": ("ssh", "sshd", "ssh-keygen"), "ss-libev": ("ss-server", "ss-local")}


def run_part(name: str, runs: int, cap: float, targets: tuple[int, int, int]) -> None:
    title, measure, configurations = PARTS[name]
    chosen = {
        label: start
        for label, start in configurations(cap * MB).items()
        if label not in NEEDS or installed(next(p for p in PROXIES if p.name == label))
    }
    samples: dict[str, dict[str, list[float]]] = {label: {} for label in chosen}
    for run in range(runs):
        for label, start in chosen.items():
            with tempfile.TemporaryDirectory(prefix="gjproxy-scale-") as folder, ExitStack() as s:
                figures = measure(start(Path(folder), s), targets)
            for key, value in figures.items():
                samples[label].setdefault(key, []).append(value)
            shown = ", ".join(f"{key} {value:.1f}" for key, value in figures.items())
            print(f"{name} run {run + 1}, {label}: {shown}", flush=True)
    print(f"\n{title.format(cap=cap)}: medians of {runs} runs")
    keys = list(next(iter(samples.values())))
    print(f"| {'':<22} |" + "".join(f" {key:>24} |" for key in keys))
    print("|" + "-" * 24 + "|" + "".join("-" * 26 + "|" for _ in keys))
    for label, figures in samples.items():
        cells = "".join(f" {statistics.median(figures[key]):>24.1f} |" for key in keys)
        print(f"| {label:<22} |{cells}")
    print(flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per configuration (3)")
    parser.add_argument("--cap", type=float, default=2.0, help="(a): MB/s per connection (2)")
    parser.add_argument("--only", action="append", choices=list(PARTS), help="(repeatable)")
    args = parser.parse_args(argv)
    raise_fd_limit(4096)
    try:
        with ExitStack() as stack:
            targets = start_targets(stack)
            for name in args.only or PARTS:
                run_part(name, args.runs, args.cap, targets)
    except BenchError as error:
        print(f"bench failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
