"""What users live through: a server that dies, a stalled stream, mass closes, shutdowns."""

from __future__ import annotations

import hashlib
import signal
import socket
import threading
import time

import pytest
from python_socks import ProxyError
from python_socks.sync import Proxy

from tests.clients import curl, recv_exactly, socks_connect
from tests.peers import Process, echo, serve_tcp, start_client, start_server

FIFTY_MB = 50 * 1024 * 1024


def test_killed_server_then_restarted_serves_new_requests(workdir, web):
    server = start_server(workdir)
    port = server.port
    client = start_client(workdir, port)
    url = f"http://127.0.0.1:{web.server_port}/big"
    result: dict = {}

    def slow_download() -> None:
        try:
            result["body"] = curl(client.port, url, "--limit-rate", "5M")
        except AssertionError as error:
            result["error"] = str(error)

    downloader = threading.Thread(target=slow_download)
    downloader.start()
    time.sleep(1.0)
    server.stop(signal.SIGKILL)
    downloader.join(30)
    assert "error" in result, "the transfer cannot have finished through a killed server"
    client.wait_for(r"tunnel to .* lost, reconnecting")

    proxy = Proxy.from_url(f"socks5://127.0.0.1:{client.port}")
    with pytest.raises(ProxyError):  # during the outage a request fails after a wait
        proxy.connect("127.0.0.1", web.server_port, timeout=30)

    restarted = start_server(workdir, listen=f"127.0.0.1:{port}")
    deadline = time.monotonic() + 40
    while "tunnel to" not in "".join(client.lines[-1:]) or True:
        try:
            body = curl(client.port, f"http://127.0.0.1:{web.server_port}/f65536", timeout=10)
            break
        except AssertionError:
            assert time.monotonic() < deadline, client.log()
            time.sleep(0.5)
    assert body == (web.root / "f65536").read_bytes()
    assert client.stop() == 0
    restarted.stop()


def endless_sender(sock: socket.socket) -> None:
    block = b"s" * 65536
    for _ in range(4096):  # up to 256 MB, far more than any window or buffer
        sock.sendall(block)


def fifty_mb_sender(sock: socket.socket) -> None:
    block = bytes(range(256)) * 256
    for _ in range(FIFTY_MB // len(block)):
        sock.sendall(block)


def test_a_stalled_stream_does_not_slow_the_others_and_memory_stays_bounded(workdir):
    server = start_server(workdir)
    client = start_client(workdir, server.port)
    stalled_target = serve_tcp(endless_sender)
    bulk_target = serve_tcp(fifty_mb_sender)
    stalled = socks_connect(client.port, "127.0.0.1", stalled_target.server_address[1])
    stalled.recv(1)  # the stream runs, then nobody reads it any more
    time.sleep(1.0)
    started = time.monotonic()
    with socks_connect(client.port, "127.0.0.1", bulk_target.server_address[1]) as bulk:
        digest, got = hashlib.sha256(), 0
        while got < FIFTY_MB:
            chunk = bulk.recv(1 << 20)
            assert chunk
            digest.update(chunk)
            got += len(chunk)
    elapsed = time.monotonic() - started
    expected = hashlib.sha256((bytes(range(256)) * 256) * (FIFTY_MB // 65536)).hexdigest()
    assert digest.hexdigest() == expected
    assert elapsed < 30, f"50 MB beside a stalled stream took {elapsed:.1f}s"
    # The stalled stream holds at most a window in each process, not the 256 MB on offer.
    assert server.rss_kib() < 150 * 1024 and client.rss_kib() < 150 * 1024
    stalled.close()
    client.stop()
    server.stop()


def test_closing_both_ends_at_once_never_reuses_a_live_id(workdir):
    """Target and SOCKS client close each stream at the same moment, 300 times over.

    If the client handed out an id whose old stream was still alive on the server, the server
    would refuse that connect ("connection id ... still in use") and the echo check of the
    next streams would fail.
    """
    server = start_server(workdir)
    client = start_client(workdir, server.port)

    def close_at_once(sock: socket.socket) -> None:
        sock.recv(1)
        sock.close()

    closer = serve_tcp(close_at_once)
    echoer = serve_tcp(echo)
    for round_number in range(3):
        sockets = [
            socks_connect(client.port, "127.0.0.1", closer.server_address[1]) for _ in range(100)
        ]
        for sock in sockets:
            sock.sendall(b"x")
            sock.close()
        for index in range(20):
            payload = f"round {round_number} stream {index}".encode()
            with socks_connect(client.port, "127.0.0.1", echoer.server_address[1]) as sock:
                sock.sendall(payload)
                assert recv_exactly(sock, len(payload)) == payload
    assert "still in use" not in server.log()
    client.stop()
    server.stop()


def test_sigterm_closes_open_streams_and_exits_cleanly(workdir):
    server = start_server(workdir)
    client = start_client(workdir, server.port)
    target = serve_tcp(echo)
    sock = socks_connect(client.port, "127.0.0.1", target.server_address[1])
    sock.sendall(b"ping")
    assert recv_exactly(sock, 4) == b"ping"
    assert client.stop(signal.SIGTERM, timeout=10) == 0
    # The SOCKS connection was closed, not left hanging: after the grace time, with a reset
    # (a clean EOF would pass for the end of the response).
    with pytest.raises(ConnectionResetError):
        sock.recv(10)
    assert server.stop(signal.SIGTERM, timeout=10) == 0
    assert "Traceback" not in client.log() + server.log()


def test_client_stops_with_a_clear_message_when_the_server_refuses_its_dialect(workdir):
    server = start_server(workdir)  # no --allow-legacy
    client = Process(
        "client",
        "--server",
        f"127.0.0.1:{server.port}",
        "--socks",
        "127.0.0.1:0",
        "--key",
        "key.dat",
        "--dialect",
        "3.0",
        cwd=workdir,
    )
    assert client.proc.wait(30) == 1
    assert "server refused protocol version 3.0" in client.log()
    server.wait_for(r"legacy dialect 3\.0 not allowed .*--allow-legacy")
    server.stop()


def test_a_bulk_transfer_does_not_starve_a_small_stream(workdir):
    """Round trips on one stream complete while another stream is busy with a bulk download."""
    server = start_server(workdir)
    client = start_client(workdir, server.port)
    bulk_target = serve_tcp(endless_sender)
    echo_target = serve_tcp(echo)
    stop = threading.Event()
    received = [0]

    def download() -> None:
        with socks_connect(client.port, "127.0.0.1", bulk_target.server_address[1]) as bulk:
            while not stop.is_set() and (chunk := bulk.recv(1 << 16)):
                received[0] += len(chunk)
                time.sleep(0.0005)  # a steady reader, so the 256 MB last for seconds

    downloader = threading.Thread(target=download)
    downloader.start()
    while received[0] < 4 * 1024 * 1024:  # the bulk stream is in full swing
        time.sleep(0.01)
    with socks_connect(client.port, "127.0.0.1", echo_target.server_address[1]) as small:
        for index in range(50):
            small.sendall(b"ping %d" % index)
            assert recv_exactly(small, len(b"ping %d" % index)) == b"ping %d" % index
    assert downloader.is_alive(), "the round trips waited until the bulk transfer was over"
    stop.set()
    downloader.join(30)
    client.stop()
    server.stop()
