"""How streams and tunnels end, seen from the SOCKS application: resets, drains, keepalive.

An abnormal end must reach the application as ECONNRESET, never as a clean EOF that could pass
for a complete response; a planned end is graceful; an idle tunnel stays up.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from python_socks import ProxyError

from tests.clients import DIALECT_FLAGS, recv_exactly, socks_connect
from tests.peers import echo, serve_tcp, start_client, start_server, wait_for_access

RESET_ERRORS = (ConnectionResetError, BrokenPipeError)
CUT_FOR_STALLING = "its reader took less than the tunnel brought"
"""What the client logs when it cuts a 3.0 stream whose reader stalls the tunnel."""


def read_until_reset(sock: socket.socket, deadline: float = 20.0) -> int:
    """Read until the connection is reset; fails on a clean EOF. Returns the bytes read."""
    sock.settimeout(deadline)
    got = 0
    with pytest.raises(RESET_ERRORS):
        while True:
            data = sock.recv(1 << 16)
            assert data, f"a clean EOF after {got} bytes where a reset was due"
            got += len(data)
    return got


def reset_after_sending(sock: socket.socket) -> None:
    """A target that sends a little, then aborts the connection (RST)."""
    sock.recv(1)
    sock.sendall(b"partial answer")
    time.sleep(0.2)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.fixture(params=sorted(DIALECT_FLAGS))
def pair(request, workdir):
    server_flags, client_flags = DIALECT_FLAGS[request.param]
    server = start_server(workdir, *server_flags)
    client = start_client(workdir, server.port, *client_flags)
    client.dialect = request.param
    yield server, client
    client.stop()
    server.stop()


def test_a_targets_reset_reaches_the_socks_application_as_a_reset_in_3_1(pair):
    """3.1 passes the target's reset on. 3.0 cannot: its disconnect reason means nothing (the
    Java peers say RESET for every close), so the application gets the data, then a clean EOF;
    the server, which saw the reset itself, still logs it."""
    server, client = pair
    target = serve_tcp(reset_after_sending)
    sock = socks_connect(client.port, "127.0.0.1", target.server_address[1])
    sock.sendall(b"go")
    assert recv_exactly(sock, 14) == b"partial answer"
    if client.dialect == "3.1":
        read_until_reset(sock)
    else:
        sock.settimeout(20)
        assert sock.recv(1) == b""
    wait_for_access(server, user="alice", target=r"127\.0\.0\.1:\d+", status="OK", ended="reset")


def test_the_access_log_names_closed_and_failed_streams(pair):
    server, client = pair
    target = serve_tcp(echo)
    with socks_connect(client.port, "127.0.0.1", target.server_address[1]) as sock:
        sock.sendall(b"hello")
        assert recv_exactly(sock, 5) == b"hello"
    wait_for_access(server, user="alice", target=r"127\.0\.0\.1:\d+", status="OK", ended="closed")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nobody listens there: refused
    with pytest.raises(ProxyError, match="refused"):
        socks_connect(client.port, "127.0.0.1", port)
    wait_for_access(
        server, user="alice", target=f"127\\.0\\.0\\.1:{port}", status="REFUSED", ended="failed"
    )


def test_a_lost_tunnel_resets_every_stream(workdir):
    server = start_server(workdir)
    client = start_client(workdir, server.port)
    target = serve_tcp(echo)
    streams = [socks_connect(client.port, "127.0.0.1", target.server_address[1]) for _ in range(3)]
    for sock in streams:
        sock.sendall(b"ping")
        assert recv_exactly(sock, 4) == b"ping"
    server.stop(signal.SIGKILL)
    for sock in streams:
        read_until_reset(sock)
    client.stop()


def test_sigterm_on_the_client_drains_then_resets(workdir):
    server = start_server(workdir)
    client = start_client(workdir, server.port, "--grace", "2")
    target = serve_tcp(echo)
    sock = socks_connect(client.port, "127.0.0.1", target.server_address[1])
    client.proc.send_signal(signal.SIGTERM)
    client.wait_for("SIGTERM: shutting down")
    with pytest.raises(OSError):  # no new SOCKS connections during the drain
        socks_connect(client.port, "127.0.0.1", target.server_address[1])
    sock.sendall(b"still here")  # the open stream goes on during the grace time
    assert recv_exactly(sock, 10) == b"still here"
    started = time.monotonic()
    read_until_reset(sock)
    assert time.monotonic() - started < 5
    assert client.proc.wait(10) == 0
    assert "grace time over: resetting 1 open stream(s)" in client.log()
    server.stop()


def test_sigterm_on_the_server_lets_a_stream_finish_within_the_grace(workdir):
    server = start_server(workdir, "--grace", "3")
    client = start_client(workdir, server.port)
    target = serve_tcp(echo)
    finishing = socks_connect(client.port, "127.0.0.1", target.server_address[1])
    lingering = socks_connect(client.port, "127.0.0.1", target.server_address[1])
    server.proc.send_signal(signal.SIGTERM)
    server.wait_for("SIGTERM: shutting down")
    finishing.sendall(b"last words")
    assert recv_exactly(finishing, 10) == b"last words"
    finishing.close()
    read_until_reset(lingering)
    assert server.proc.wait(10) == 0
    assert "resetting 1 open stream(s)" in server.log()
    client.stop()


@pytest.mark.parametrize("dialect", sorted(DIALECT_FLAGS))
def test_an_idle_tunnel_stays_up_and_a_dead_one_is_rebuilt_within_seconds(workdir, dialect):
    server_flags, client_flags = DIALECT_FLAGS[dialect]
    server = start_server(workdir, *server_flags, "--idle-timeout", "1")
    client = start_client(workdir, server.port, *client_flags, "--keepalive", "0.3")
    target = serve_tcp(echo)
    time.sleep(3.0)  # ten keepalive intervals, three idle timeouts
    assert "lost" not in client.log() and "closed" not in server.log()
    with socks_connect(client.port, "127.0.0.1", target.server_address[1]) as sock:
        sock.sendall(b"awake")
        assert recv_exactly(sock, 5) == b"awake"
    if dialect == "3.1":  # 3.0 has no keepalive: a frozen peer is TCP keepalive's to find
        server.proc.send_signal(signal.SIGSTOP)
        try:
            client.wait_for(r"peer silent for \d+s, closing the tunnel", timeout=5)
        finally:
            server.proc.send_signal(signal.SIGCONT)
        client.wait_for(r"lost, reconnecting")
        deadline = time.monotonic() + 15
        while client.log().count(" up (dialect") < 2:
            assert time.monotonic() < deadline, client.log()
            time.sleep(0.1)
    client.stop()
    server.stop()


def test_data_sent_before_the_connect_reply_is_delivered(workdir):
    """A client that pipelines its first bytes behind the request, and more before the reply."""
    server = start_server(workdir)
    client = start_client(workdir, server.port)
    target = serve_tcp(echo)
    port = target.server_address[1]
    sock = socket.create_connection(("127.0.0.1", client.port), timeout=10)
    request = b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + port.to_bytes(2, "big")
    sock.sendall(b"\x05\x01\x00" + request + b"early ")
    sock.sendall(b"and eager")
    assert recv_exactly(sock, 2) == b"\x05\x00"
    assert recv_exactly(sock, 10)[:2] == b"\x05\x00"
    assert recv_exactly(sock, 15) == b"early and eager"
    sock.close()
    client.stop()
    server.stop()


ENDLESS_TARGET = """
import socketserver, sys, time
class Endless(socketserver.BaseRequestHandler):
    def handle(self):
        block, deadline = b"e" * 65536, time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                self.request.sendall(block)
        except OSError:
            pass
class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    request_queue_size = 64
server = Server(("127.0.0.1", 0), Endless)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@contextlib.contextmanager
def endless_target() -> Iterator[int]:
    """A target that sends 64 KiB blocks for 60 s to whoever connects, in a process of its own:
    senders in this process would share its GIL with every thread earlier tests left, and one
    of them could starve (a fairness test must measure the tunnel, not the GIL). Its port."""
    process = subprocess.Popen(
        [sys.executable, "-c", ENDLESS_TARGET], stdout=subprocess.PIPE, text=True
    )
    try:
        yield int(process.stdout.readline())
    finally:
        process.kill()
        process.wait(10)


def test_legacy_slow_readers_neither_stall_the_others_nor_grow_memory(workdir):
    """3.0 has no windows. Eight endless downloads through one tunnel: four readers stall,
    four close early, two keep reading; the two keep moving and memory stays bounded."""
    server_flags, client_flags = DIALECT_FLAGS["3.0"]
    server = start_server(workdir, *server_flags)
    client = start_client(workdir, server.port, *client_flags)
    with endless_target() as port:
        _slow_readers(server, client, port)


def _slow_readers(server, client, port: int) -> None:
    stalled = [socks_connect(client.port, "127.0.0.1", port) for _ in range(4)]
    for sock in stalled:
        sock.recv(1)  # started, then nobody reads

    def read_a_little_and_close(_: int) -> None:
        with socks_connect(client.port, "127.0.0.1", port) as sock:
            recv_exactly(sock, 1 << 20)

    early = [threading.Thread(target=read_a_little_and_close, args=(i,)) for i in range(4)]
    for thread in early:
        thread.start()
    moved = [0, 0]
    stop = threading.Event()

    problems: list[str] = []

    def keep_reading(index: int) -> None:
        with socks_connect(client.port, "127.0.0.1", port) as sock:
            sock.settimeout(20)
            try:
                while not stop.is_set() and (data := sock.recv(1 << 20)):
                    moved[index] += len(data)
            except OSError as error:
                problems.append(f"reader {index}: {error!r}")

    readers = [threading.Thread(target=keep_reading, args=(i,)) for i in range(2)]
    for reader in readers:
        reader.start()
    for thread in early:
        thread.join(20)
    peak = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the stalled streams are cut within seconds (each
        time.sleep(0.5)  # stall counts from when its reader stopped); then all runs freely
        peak = max(peak, server.rss_kib(), client.rss_kib())
        if client.log().count(CUT_FOR_STALLING) >= len(stalled):
            break
    before = list(moved)
    time.sleep(2)
    stop.set()
    for reader in readers:
        reader.join(25)
    assert not problems, (problems, client.log())
    assert all(after - then > 10 << 20 for after, then in zip(moved, before, strict=True)), moved
    assert peak < 150 * 1024, f"RSS peaked at {peak} KiB"
    for sock in stalled:  # each was cut: a reset, after what the buffers held
        read_until_reset(sock)
    assert client.log().count(CUT_FOR_STALLING) == len(stalled)
    client.stop()
    server.stop()
