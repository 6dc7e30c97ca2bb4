"""What the live console costs: its hooks and its sampling, and the tunnel with it on and off.

1. In this process, without sockets: the hooks of one connection (listed, then closed), one
   sample (every open connection's counters read, rates and history), and one snapshot of
   the page's stream (built and encoded as JSON), for 100, 1000 and 4096 open connections;
   medians of ``--runs``.
2. End to end, fresh server and client processes with the console off, then on with a reader
   of its stream (``/api/events``) and of ``/connections`` during the whole measurement,
   interleaved ``--runs`` times: one 200 MB download, and connections per second (SOCKS
   CONNECT, one small round trip, close; 32 at once). Medians, and the ratio on / off.

The data path does no console work per chunk, so the ratios should stay near 1.
Run: ``python bench/console.py [--runs N]``. About a minute.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import threading
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from tunnel import (
    MB,
    RATE_CONCURRENCY,
    SINGLE_STREAM_BYTES,
    connection_rate,
    download_mbps,
    start_gjproxy,
    start_targets,
)

from jproxy.console import shapes
from jproxy.handlers.console.live import LiveConsole

SECRET = "bench-console-secret"
SIZES = (100, 1000, 4096)


class FakeRelay:
    """What the hooks read of a relay: its byte counts, its tunnel and its reset."""

    def __init__(self) -> None:
        self.bytes_in = self.bytes_out = 0
        self.link = None

    def abort(self, ending) -> None:
        pass


def median_seconds(work, runs: int) -> float:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        work()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def costs(size: int, runs: int) -> tuple[float, float, float]:
    """Seconds: the hooks of one connection, one sample, one snapshot; ``size`` rows open."""
    live = LiveConsole("client", "bench")
    relays = [FakeRelay() for _ in range(size)]
    assert all(live.stream(relay, ("127.0.0.1", 5000), "example.com", 443) for relay in relays)

    def hooks() -> None:
        for _ in range(1000):
            live.closed(live.stream(FakeRelay(), ("127.0.0.1", 5000), "example.com", 443))

    def sample() -> None:
        for relay in relays:
            relay.bytes_in += 4096
        live.sample()

    def snapshot() -> None:
        json.dumps(shapes.snapshot(live.board, live.clock(), "bench")).encode()

    return (
        median_seconds(hooks, runs) / 1000,
        median_seconds(sample, runs),
        median_seconds(snapshot, runs),
    )


def in_process(runs: int) -> None:
    print("in process (medians):")
    print(f"{'open':>6}  {'hooks/conn (us)':>16}  {'sample (ms)':>12}  {'snapshot (ms)':>14}")
    for size in SIZES:
        hooks, sample, snapshot = costs(size, runs)
        print(f"{size:>6}  {hooks * 1e6:>16.1f}  {sample * 1e3:>12.2f}  {snapshot * 1e3:>14.2f}")


class ConsoleReader:
    """Reads the page's stream and polls ``/connections`` until stopped, as a dashboard does."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stopped = threading.Event()
        self.messages = 0
        self.threads = [
            threading.Thread(target=self._events, daemon=True),
            threading.Thread(target=self._poll, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _events(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(f"GET /api/events?token={SECRET} HTTP/1.1\r\nHost: c\r\n\r\n".encode())
            while not self.stopped.is_set() and (data := sock.recv(65536)):
                self.messages += data.count(b"data: ")

    def _poll(self) -> None:
        url = f"http://127.0.0.1:{self.port}/connections?token={SECRET}"
        while not self.stopped.wait(1.0):
            with urllib.request.urlopen(url, timeout=10) as answer:
                answer.read()

    def stop(self) -> None:
        self.stopped.set()


def end_to_end(runs: int) -> None:
    results: dict[str, dict[str, list[float]]] = {"off": {}, "on": {}}
    for _ in range(runs):
        for mode in ("off", "on"):
            with ExitStack() as stack, tempfile.TemporaryDirectory() as folder:
                source_port, echo_port, _ = start_targets(stack)
                extra = {}
                if mode == "on":
                    flags = ["--console", "127.0.0.1:0", "--console-secret", SECRET]
                    extra = {"client": flags, "server": flags}
                (server, client), socks_port = start_gjproxy(
                    "3.1", Path(folder), stack, extra=extra
                )
                reader = None
                if mode == "on":
                    port = int(client.wait_for(r"console on http://[\d.]+:(\d+)/").group(1))
                    reader = ConsoleReader(port)
                    stack.callback(reader.stop)
                mbps = download_mbps(socks_port, source_port, 1, SINGLE_STREAM_BYTES)
                rate, _ = connection_rate(socks_port, echo_port, RATE_CONCURRENCY)
                results[mode].setdefault("download MB/s", []).append(mbps)
                results[mode].setdefault("connections/s", []).append(rate)
                if reader is not None and not reader.messages:
                    raise SystemExit("the console's stream sent nothing")
    print(
        f"\nend to end, {runs} runs each, medians ({SINGLE_STREAM_BYTES // MB} MB download; "
        f"connections {RATE_CONCURRENCY} at once):"
    )
    print(f"{'':16}{'console off':>12}{'console on':>12}{'on/off':>8}")
    for figure in ("download MB/s", "connections/s"):
        off = statistics.median(results["off"][figure])
        on = statistics.median(results["on"][figure])
        print(f"{figure:16}{off:>12.1f}{on:>12.1f}{on / off:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs, median taken (3)")
    args = parser.parse_args()
    in_process(max(args.runs, 5))
    end_to_end(args.runs)


if __name__ == "__main__":
    main()
