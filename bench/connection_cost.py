"""What one new connection costs each gjproxy process: CPU, syscalls and Python calls.

bench/tunnel.py measures connections per second, a wall-clock figure that moves with whatever
else runs on the machine. This counts instead, for a fixed number of sequential connections
(each the bench's: SOCKS5 greeting, CONNECT to 127.0.0.1, one 16-byte round trip, close):

- CPU seconds of the server and of the client process (user and system, /proc/PID/stat),
  per 1000 connections, the median of ``--runs`` fresh pairs of processes;
- syscalls per connection of each process, by name (``strace -f -c`` attached for the
  measured connections only; the Debian package ``strace``, skipped with a note without it);
- Python function calls per connection of each process (``cProfile``, switched on and off
  by signals around the measured connections), with the functions called most.

The counts barely move from run to run, so they show what a change saved even while other
programs load the machine. The traced and profiled passes run on processes of their own,
apart from the CPU runs, which they would slow down.
Run: ``python bench/connection_cost.py [--connections N] [--runs N] [--dialect 3.1|3.0]``.
About a minute.
"""

from __future__ import annotations

import argparse
import collections
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from tunnel import (
    DIALECT_FLAGS,
    RATE_PING,
    START_TIMEOUT,
    BenchError,
    round_trip,
    socks_open,
    start_gjproxy,
    start_targets,
)

WARMUP = 100
SETTLE = 0.5
"""Seconds for a process to finish the last connection before a counter is read."""
TOP = 8

_PROFILED = """\
import cProfile, signal, sys
from jproxy.cli import main
out, profile = sys.argv.pop(1), cProfile.Profile()
signal.signal(signal.SIGUSR1, lambda *_: profile.enable())
def dump(*_):
    profile.disable()
    profile.dump_stats(out)
signal.signal(signal.SIGUSR2, dump)
sys.exit(main())
"""
"""``python -c`` program: gjproxy with a profiler that SIGUSR1 starts and SIGUSR2 dumps."""


def connect_ping_close(socks_port: int, echo_port: int) -> None:
    with socks_open(socks_port, echo_port) as sock:
        round_trip(sock, RATE_PING)


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process (fields 14, 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def measured(dialect: str, connections: int, command=None, around=None) -> dict:
    """Start a fresh server and client, warm up, then make ``connections`` sequential
    connections; ``around(pids)`` is a context for the measured ones. Returns the CPU
    seconds (user, system) each process spent on them."""
    with tempfile.TemporaryDirectory(prefix="gjproxy-cost-") as folder, ExitStack() as stack:
        _, echo_port, _ = start_targets(stack)
        services, socks_port = start_gjproxy(dialect, Path(folder), stack, command)
        pids = {service.name: service.proc.pid for service in services}
        for _ in range(WARMUP):
            connect_ping_close(socks_port, echo_port)
        time.sleep(SETTLE)
        with around(pids) if around else ExitStack():
            before = {name: cpu_times(pid) for name, pid in pids.items()}
            for _ in range(connections):
                connect_ping_close(socks_port, echo_port)
            time.sleep(SETTLE)
            after = {name: cpu_times(pid) for name, pid in pids.items()}
    return {
        name: (after[name][0] - before[name][0], after[name][1] - before[name][1]) for name in pids
    }


class Traced:
    """``strace -f -c`` attached to each process for the measured connections."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.tracers: list[subprocess.Popen] = []

    def __call__(self, pids: dict[str, int]) -> Traced:
        self.pids = pids
        return self

    def __enter__(self) -> None:
        for name, pid in self.pids.items():
            argv = ["strace", "-f", "-c", "-o", str(self.folder / name), "-p", str(pid)]
            self.tracers.append(subprocess.Popen(argv, stderr=subprocess.DEVNULL))
        time.sleep(1.0)  # strace attaches to every thread

    def __exit__(self, *_) -> None:
        for tracer in self.tracers:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(START_TIMEOUT)

    def counts(self, name: str) -> dict[str, int]:
        """Calls by syscall name, from strace's summary table."""
        counts = {}
        for line in (self.folder / name).read_text().splitlines():
            fields = line.split()
            if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
                counts[fields[-1]] = int(fields[3])
        return counts


class Profiled:
    """Processes started under ``_PROFILED``; the profile covers the measured connections."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def command(self, name: str) -> list[str]:
        return [sys.executable, "-c", _PROFILED, str(self.folder / f"{name}.prof")]

    def __call__(self, pids: dict[str, int]) -> Profiled:
        self.pids = pids
        return self

    def __enter__(self) -> None:
        for pid in self.pids.values():
            os.kill(pid, signal.SIGUSR1)

    def __exit__(self, *_) -> None:
        for pid in self.pids.values():
            os.kill(pid, signal.SIGUSR2)
        deadline = time.monotonic() + START_TIMEOUT
        while not all(self.path(name).exists() for name in self.pids):
            if time.monotonic() > deadline:
                raise BenchError("a profiled process wrote no profile")
            time.sleep(0.1)
        time.sleep(SETTLE)  # the file is complete once written; give it a moment

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.prof"

    def calls(self, name: str) -> collections.Counter:
        """Calls by function: ``folder/file.py:line(name)``, or a built-in's name."""
        counts: collections.Counter = collections.Counter()
        for (file, line, function), stat in pstats.Stats(str(self.path(name))).stats.items():
            where = "/".join(Path(file).parts[-2:])
            counts[f"{where}:{line}({function})" if file != "~" else function] += stat[1]
        return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=2000, help="measured (2000)")
    parser.add_argument("--runs", type=int, default=3, help="CPU runs (median; 3)")
    parser.add_argument("--dialect", choices=sorted(DIALECT_FLAGS), default="3.1")
    args = parser.parse_args(argv)
    count = args.connections
    per_1000 = 1000 / count
    try:
        runs = [measured(args.dialect, count) for _ in range(args.runs)]
        with tempfile.TemporaryDirectory(prefix="gjproxy-cost-") as folder:
            traced = Traced(Path(folder)) if shutil.which("strace") else None
            if traced:
                measured(args.dialect, count, around=traced)
            profiled = Profiled(Path(folder))
            measured(args.dialect, count, profiled.command, around=profiled)
            report(args.dialect, count, runs, per_1000, traced, profiled)
    except (BenchError, OSError, subprocess.TimeoutExpired) as error:
        print(f"bench failed: {error!r}", file=sys.stderr)
        return 1
    return 0


def report(
    dialect: str,
    count: int,
    runs: list[dict],
    per_1000: float,
    traced: Traced | None,
    profiled: Profiled,
) -> None:
    print(
        f"gjproxy {dialect}: {count} sequential connections (SOCKS5 CONNECT to 127.0.0.1, "
        f"one {len(RATE_PING)}-byte round trip, close); CPU: median of {len(runs)} runs"
    )
    print("| process | CPU ms / 1000 conn | user | system | syscalls / conn | Python calls / conn")
    print("|---|---|---|---|---|---")
    for name in ("server", "client"):
        user = statistics.median(run[name][0] for run in runs) * 1000 * per_1000
        system = statistics.median(run[name][1] for run in runs) * 1000 * per_1000
        total = statistics.median(sum(run[name]) for run in runs) * 1000 * per_1000
        syscalls = f"{sum(traced.counts(name).values()) / count:.1f}" if traced else "-"
        calls = sum(profiled.calls(name).values()) / count
        print(f"| {name} | {total:.0f} | {user:.0f} | {system:.0f} | {syscalls} | {calls:.0f}")
    if not traced:
        print("syscalls: not counted, strace is not installed (Debian package strace)")
    for name in ("server", "client"):
        if traced:
            by_name = sorted(traced.counts(name).items(), key=lambda item: -item[1])
            by_name = [(syscall, calls) for syscall, calls in by_name if calls >= count / 20]
            each = ", ".join(f"{syscall} {calls / count:.1f}" for syscall, calls in by_name)
            print(f"\n{name} syscalls / conn: {each}")
        print(f"{name}: the Python functions called most, calls / conn:")
        python = collections.Counter(
            {function: calls for function, calls in profiled.calls(name).items() if ":" in function}
        )
        for function, calls in python.most_common(TOP):
            print(f"  {calls / count:6.1f}  {function}")


if __name__ == "__main__":
    sys.exit(main())
