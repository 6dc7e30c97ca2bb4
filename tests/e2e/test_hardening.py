"""Hostile peers against real processes: floods before login, replayed hashes, limits, reloads.

Short, bounded versions of the floods; bench/flood.py runs the long ones and prints numbers.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import gevent
import gevent.socket
import pytest
from python_socks import ProxyError
from python_socks.sync import Proxy

from jproxy.handlers.tunnel.handshake import client_login
from jproxy.tunnel.keys import load_client_key
from schemas.jproxy import Dialect
from tests.clients import curl
from tests.peers import (
    Flood,
    count_lines,
    echo,
    poll_until,
    require_tool,
    serve_tcp,
    start_client,
    start_server,
)

FLOOD_SOURCES = [f"127.0.0.{n}" for n in range(2, 12)]
HELLO = {Dialect.SECURE_3_1: b"jProxy\x03\x01", Dialect.LEGACY_3_0: b"jProxy\x03\x00"}
LOGIN_REPLY_SIZE = 7 + 257


class _Processes:
    """Starts gjproxy processes in ``workdir``; the fixture stops them all at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list = []

    def server(self, *flags: str, **options):
        self.started.append(start_server(self.workdir, *flags, **options))
        return self.started[-1]

    def client(self, server_port: int, *flags: str):
        self.started.append(start_client(self.workdir, server_port, *flags))
        return self.started[-1]


@pytest.fixture
def run(workdir):
    processes = _Processes(workdir)
    yield processes
    for process in reversed(processes.started):
        process.stop()


def _fetch(client, web, name: str, timeout: float) -> bytes:
    """A file of the ``web`` fixture through ``client``'s SOCKS port, with curl."""
    return curl(client.port, f"http://127.0.0.1:{web.server_port}/{name}", timeout=timeout)


def _echoes(proxy: Proxy, port: int) -> bool:
    """Whether a new connection through ``proxy`` to an echo server at ``port`` works."""
    try:
        with proxy.connect("127.0.0.1", port, timeout=5) as sock:
            sock.sendall(b"again")
            return sock.recv(5) == b"again"
    except ProxyError:
        return False


def _login(port: int, workdir: Path, dialect: Dialect = Dialect.SECURE_3_1, timeout=2.0):
    """Log in with the real key from this process; raises LoginError past ``timeout``."""
    sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        session = client_login(sock, load_client_key(workdir / "key.dat"), dialect, timeout)
    except BaseException:
        sock.close()
        raise
    return sock, session


def _replay(port: int, workdir: Path, dialect: Dialect) -> socket.socket:
    """Hello and the captured login hash, without the key: the reply comes, then nothing."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(HELLO[dialect] + load_client_key(workdir / "key.dat").login_hash)
    reply = b""
    while len(reply) < LOGIN_REPLY_SIZE:
        reply += sock.recv(4096)
    assert reply[:8] == b"jProxy\x00\x00"
    return sock


def _closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_flood_before_login_does_not_keep_a_client_out(run, workdir, web) -> None:
    """500 idle and trickling connections from 10 addresses, reopened when dropped."""
    server = run.server()
    with Flood(server.port, 500, FLOOD_SOURCES) as flood:
        poll_until(lambda: flood.opened >= 500, what="the flood")
        sock, _ = _login(server.port, workdir, timeout=2.0)  # LoginError past 2 s
        sock.close()
        client = run.client(server.port)
        assert _fetch(client, web, "f4081", timeout=5)
        assert flood.dropped > 0  # the flood paid with its own oldest connections
    assert count_lines(server, r"logged in \(dialect 3.1\)", at_least=2) == 2
    assert count_lines(server, "Traceback") == 0


def test_a_replayed_hash_never_holds_a_slot_past_the_deadline(run, workdir, web) -> None:
    server = run.server("--max-tunnels", "4", "--handshake-timeout", "1")
    replayers = [_replay(server.port, workdir, Dialect.SECURE_3_1) for _ in range(8)]
    assert _fetch(run.client(server.port), web, "f1", timeout=5)
    assert all(_closed_by_peer(sock, timeout=3) for sock in replayers)
    assert count_lines(server, "dropped: no complete proof of the key within 1 s", at_least=8) == 8
    assert count_lines(server, r"tunnel alice@.*: logged in") == 1


def test_a_replayed_legacy_hash_does_not_lock_out_the_real_user(run, workdir, web) -> None:
    """3.0 cannot prove anything before the first frame: unproven tunnels give way."""
    server = run.server("--allow-legacy", "--max-tunnels", "4")
    replayers = [_replay(server.port, workdir, Dialect.LEGACY_3_0) for _ in range(6)]
    assert _fetch(run.client(server.port, "--dialect", "3.0"), web, "f1", timeout=5)
    closed = [_closed_by_peer(sock, timeout=0.5) for sock in replayers]
    assert closed[:3] == [True] * 3 and closed[3:] == [False] * 3
    # A forged first frame (no key: garbage under ECB) is not a proof either.
    replayers[3].sendall(b"\x01" + bytes(16))
    assert _closed_by_peer(replayers[3], timeout=3)
    server.wait_for("alice logged in without the key")


def test_the_per_user_cap(run, workdir, web) -> None:
    server = run.server("--max-tunnels-per-user", "1")
    client = run.client(server.port)
    sock, _ = _login(server.port, workdir)
    with sock:
        sock.settimeout(5)
        assert sock.recv(1) == b""  # closed once the proof came: the cap is full
    server.wait_for("alice refused: alice already has 1 tunnels")
    assert _fetch(client, web, "f1", timeout=5)


def test_the_socks_connection_over_the_limit_is_answered(run) -> None:
    client = run.client(run.server().port, "--max-socks", "2")
    target = serve_tcp(echo)
    target_port = target.server_address[1]
    proxy = Proxy.from_url(f"socks5://127.0.0.1:{client.port}")
    try:
        held = [proxy.connect("127.0.0.1", target_port, timeout=5) for _ in range(2)]
        with pytest.raises(ProxyError) as refused:
            proxy.connect("127.0.0.1", target_port, timeout=5)
        assert refused.value.error_code == 1  # general SOCKS server failure
        result = subprocess.run(
            [
                require_tool("curl"),
                "-sS",
                "--socks5-hostname",
                f"127.0.0.1:{client.port}",
                f"http://127.0.0.1:{target_port}/",
            ],
            capture_output=True,
            timeout=10,
        )
        assert result.returncode == 97, result.stderr  # CURLE_PROXY: the proxy said no
        assert b"SOCKS5 connection to 127.0.0.1. (1)" in result.stderr, result.stderr
        poll_until(lambda: count_lines(client, r"refused: 2 connections open \(the limit\)") == 2)
        held.pop().close()  # its stream ends once the target closed too: a place is free
        poll_until(lambda: _echoes(proxy, target_port), what="a free place")
        for sock in held:
            sock.close()
    finally:
        target.shutdown()


def test_idle_socks_connections_do_not_delay_a_connect(run, web) -> None:
    client = run.client(run.server().port)
    slow_request = b"\x05\x01\x00\x05\x01\x00\x03\x20" + b"x" * 32 + b"\x00\x50"
    with Flood(client.port, 600, ["127.0.0.1"], trickle=slow_request) as flood:
        poll_until(lambda: flood.opened >= 600, what="the flood")
        time.sleep(1.2)  # older than the budget's grace: each newcomer may push one out
        assert _fetch(client, web, "f1", timeout=3)


def test_log_floods_are_cut(run, workdir) -> None:
    """Frames carrying an empty message and unknown login hashes: a few lines each."""
    server = run.server()
    sock, session = _login(server.port, workdir)
    with sock:
        sock.sendall(b"".join(session.seal(b"") for _ in range(5000)))
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        while sock.recv(65536):
            pass
    server.wait_for(r"tunnel alice@.*: closed")
    for _ in range(100):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as stranger:
            stranger.sendall(HELLO[Dialect.SECURE_3_1] + bytes(32))
            stranger.settimeout(5)
            while stranger.recv(4096):
                pass
    poll_until(lambda: count_lines(server, "closed the connection|unknown login hash") >= 20)
    assert count_lines(server, "ignored a tunnel message") <= 20
    assert count_lines(server, "unknown login hash") <= 20


def test_a_client_refused_after_a_server_restart_keeps_trying(run, workdir, web) -> None:
    """The users folder is briefly empty while the server restarts: the client waits it out."""
    server = run.server()
    client = run.client(server.port)
    server.stop()
    (workdir / "users").rename(workdir / "saved")
    (workdir / "users").mkdir()
    server = run.server(listen=f"127.0.0.1:{server.port}")
    client.wait_for("tunnel login at .* failed: server did not accept this key")
    for user_file in (workdir / "saved").iterdir():
        user_file.rename(workdir / "users" / user_file.name)
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for("loaded 1 user")
    poll_until(
        lambda: count_lines(client, r"tunnel to .* up") >= 2, timeout=40, what="the new tunnel"
    )
    assert client.proc.poll() is None
    assert _fetch(client, web, "f1", timeout=5)


def test_a_fifo_in_the_users_folder_does_not_freeze_a_reload(run, workdir) -> None:
    server = run.server()
    fifo = workdir / "users" / f"{'A' * 64}.dat"
    os.mkfifo(fifo)
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for(f"{re.escape(str(fifo.name))}: not a regular file")
    server.wait_for("loaded 1 user")
    sock, _ = _login(server.port, workdir)
    sock.close()
