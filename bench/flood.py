"""Floods against real gjproxy processes on 127.0.0.1, and what real users see meanwhile.

Starts ``gjproxy server`` (with its admin port) and ``gjproxy client`` from the ``jproxy`` on
PYTHONPATH, so the same script measures any tree: ``PYTHONPATH=. python bench/flood.py``.
Prints, each beside the same measurement without a flood:

- logins to the tunnel port (hello, login, key unwrap) while 2,000 connections from 10 other
  loopback addresses sit idle or trickle a hello and are reopened when dropped;
- SOCKS connects through the tunnel (greeting to reply) while 2,100 idle connections sit on
  the client's SOCKS port;
- admin logins (login and one request) while 200 idle connections sit on the admin port;
- password guesses answered, and really checked (from the server's log), in 15 s by 32
  parallel connections from one address;
- log lines the server writes for 10 s of frames carrying an empty message, and for 10 s of
  unknown login hashes.

Bounded: about 3 minutes. Exits 0 whatever the numbers.
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import gevent.socket

from jproxy.admin.protocol import login_bytes, request_bytes
from jproxy.handlers.tunnel.handshake import client_login
from jproxy.tunnel.keys import generate, load_client_key, save_client_key, save_user
from schemas.jproxy import Dialect
from tests.peers import Flood, Process, echo, serve_tcp, start_client, start_server

FLOOD_SOURCES = [f"127.0.0.{n}" for n in range(2, 12)]
ADMIN_USER, ADMIN_PASSWORD = "operator", "bench-password-1"
SAMPLES = 15
PHASES = ("tunnel", "socks", "admin", "guesses", "logs")


def _table(title: str, rows: list[tuple[str, list[float]]]) -> None:
    print(f"\n{title}")
    print(f"  {'':28} {'median':>9} {'p90':>9} {'max':>9} {'failed':>7}")
    for name, samples in rows:
        ok = [s for s in samples if s == s]  # NaN marks a failure
        failed = len(samples) - len(ok)
        if not ok:
            print(f"  {name:28} {'-':>9} {'-':>9} {'-':>9} {failed:>7}")
            continue
        ok.sort()
        p90 = ok[min(len(ok) - 1, int(len(ok) * 0.9))]
        print(
            f"  {name:28} {statistics.median(ok) * 1000:8.1f}ms {p90 * 1000:8.1f}ms"
            f" {ok[-1] * 1000:8.1f}ms {failed:>7}"
        )


def _timed(action: Callable[[], None], count: int = SAMPLES, pause: float = 0.2) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.monotonic()
        try:
            action()
            samples.append(time.monotonic() - started)
        except Exception:
            samples.append(float("nan"))
        time.sleep(pause)
    return samples


def _login(port: int, key) -> None:
    sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=20)
    with sock:
        client_login(sock, key, Dialect.SECURE_3_1, timeout=20)


def _socks_connect(socks_port: int, target_port: int) -> None:
    with socket.create_connection(("127.0.0.1", socks_port), timeout=20) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert sock.recv(2) == b"\x05\x00"
        sock.sendall(b"\x05\x01\x00\x01\x7f\x00\x00\x01" + target_port.to_bytes(2, "big"))
        reply = sock.recv(10)
        assert reply[:2] == b"\x05\x00", reply


def _admin(port: int, password: str = ADMIN_PASSWORD) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(login_bytes(ADMIN_USER, password) + request_bytes(6))
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while data := sock.recv(4096):
            received += data
    return received


def _admin_ok(port: int) -> None:
    assert _admin(port)[:2] == b"\x01\x00"


def _idle(port: int, count: int, source: str = "127.0.0.1") -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind((source, 0))
        sock.settimeout(5)
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        socks.append(sock)
    return socks


def _guesses(port: int, seconds: float, parallel: int = 32) -> int:
    """Password guesses answered in ``seconds`` by ``parallel`` connections looping."""
    answered = [0]
    stop = time.monotonic() + seconds

    def guess(n: int) -> None:
        while time.monotonic() < stop:
            try:
                if _admin(port, f"guess-{n}-{answered[0]}")[:2] == b"\x01\x01":
                    answered[0] += 1
            except OSError:
                pass

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(parallel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answered[0]


def _logged(lines: list[str], text: str, template: str) -> int:
    """Lines containing ``text``, plus those a "suppressed N similar lines" line counted."""
    shown = sum(text in line for line in lines)
    hidden = 0
    for line in lines:
        match = re.search(r"suppressed (\d+) similar lines in [\d.]+ s: (.*)$", line)
        if match and template in match.group(2):
            hidden += int(match.group(1))
    return shown + hidden


def _checked_guesses(server: Process, admin_port: int, seconds: float) -> tuple[int, int]:
    """(guesses answered, guesses whose password was really checked), from the server's log."""
    before = len(server.lines)
    answered = _guesses(admin_port, seconds)
    time.sleep(11)  # let the log limiter's window end, and make it report
    _admin_ok(admin_port)
    time.sleep(1)
    lines = server.lines[before:]
    refused = _logged(lines, "refused: BAD_CREDENTIALS", "refused: %s")
    turned_away = _logged(lines, "too many parallel logins", "too many parallel logins")
    return answered, refused - turned_away


def _log_lines(server: Process, flood: Callable[[float], None], seconds: float) -> int:
    before = len(server.lines)
    flood(seconds)
    time.sleep(1)
    return len(server.lines) - before


def _empty_frames(port: int, key) -> Callable[[float], None]:
    def run(seconds: float) -> None:
        sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=20)
        with sock:
            session = client_login(sock, key, Dialect.SECURE_3_1, timeout=20)
            stop = time.monotonic() + seconds
            try:
                while time.monotonic() < stop:  # fresh frames: each nonce is used once
                    sock.sendall(b"".join(session.seal(b"") for _ in range(1000)))
            except OSError:
                pass  # a server that closes on them ends the flood early: fine

    return run


def _unknown_hashes(port: int) -> Callable[[float], None]:
    def run(seconds: float) -> None:
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"jProxy\x03\x01" + bytes(32))
                while sock.recv(4096):
                    pass

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tunnel-flood", type=int, default=2000)
    parser.add_argument("--socks-flood", type=int, default=2100)
    parser.add_argument("--admin-flood", type=int, default=200)
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated, of {','.join(PHASES)} (default: all)",
    )
    args = parser.parse_args()
    phases = set(args.phases.split(","))
    workdir = Path(tempfile.mkdtemp(prefix="gjproxy-flood-"))
    key, record = generate("alice")
    save_client_key(key, workdir / "key.dat")
    save_user(record, workdir / "users")
    key = load_client_key(workdir / "key.dat")
    env = {"GJPROXY_ADMIN_USER": ADMIN_USER, "GJPROXY_ADMIN_PASSWORD": ADMIN_PASSWORD}
    server = start_server(workdir, "--admin", "127.0.0.1:0", env=env)
    admin_port = int(server.wait_for(r"admin protocol over \w+ on [\d.]+:(\d+)").group(1))
    client = start_client(workdir, server.port)
    target = serve_tcp(echo)
    target_port = target.server_address[1]
    print(f"jproxy from {sys.modules['jproxy'].__file__}")
    try:
        if "tunnel" in phases:
            _tunnel_phase(server, key, args.tunnel_flood)
        if "socks" in phases:
            _socks_phase(client, target_port, args.socks_flood)
        if "admin" in phases:
            _admin_phase(admin_port, args.admin_flood)
        if "guesses" in phases:
            answered, checked = _checked_guesses(server, admin_port, 15)
            print(
                f"\nadmin guesses in 15 s by 32 parallel connections: {answered} answered,"
                f" {checked} checked"
            )
        if "logs" in phases:
            print(
                "server log lines in 10 s of frames with an empty message:",
                _log_lines(server, _empty_frames(server.port, key), 10),
            )
            print(
                "server log lines in 10 s of unknown login hashes:",
                _log_lines(server, _unknown_hashes(server.port), 10),
            )
    finally:
        target.shutdown()
        client.stop()
        server.stop()
    return 0


def _tunnel_phase(server: Process, key, connections: int) -> None:
    quiet = _timed(lambda: _login(server.port, key))
    with Flood(server.port, connections, FLOOD_SOURCES) as flood:
        time.sleep(3)
        flooded = _timed(lambda: _login(server.port, key))
    _table(
        f"tunnel logins ({connections} idle/trickling, {flood.opened} opened,"
        f" {flood.dropped} dropped by the server)",
        [("no flood", quiet), ("flood", flooded)],
    )


def _socks_phase(client: Process, target_port: int, connections: int) -> None:
    quiet = _timed(lambda: _socks_connect(client.port, target_port))
    idle = _idle(client.port, connections)
    time.sleep(1.5)
    flooded = _timed(lambda: _socks_connect(client.port, target_port))
    for sock in idle:
        sock.close()
    _table(
        f"SOCKS connects ({len(idle)} idle on the SOCKS port)",
        [("no flood", quiet), ("flood", flooded)],
    )


def _admin_phase(admin_port: int, connections: int) -> None:
    quiet = _timed(lambda: _admin_ok(admin_port), count=8)
    idle = _idle(admin_port, connections)
    time.sleep(1.5)
    flooded = _timed(lambda: _admin_ok(admin_port), count=8)
    for sock in idle:
        sock.close()
    _table(
        f"admin logins ({len(idle)} idle on the admin port, same address)",
        [("no flood", quiet), ("flood", flooded)],
    )


if __name__ == "__main__":
    sys.exit(main())
