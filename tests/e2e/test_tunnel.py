"""gjproxy client and server as real processes, driven by curl and python-socks."""

from __future__ import annotations

import hashlib
import os
import socket
import threading

import pytest

from tests.clients import DIALECT_FLAGS, curl, recv_exactly, socks_connect
from tests.conftest import FILE_SIZES
from tests.peers import (
    digest_after_eof,
    echo,
    serve_files,
    serve_tcp,
    sha256_of,
    start_client,
    start_server,
)


@pytest.fixture(params=sorted(DIALECT_FLAGS))
def tunnel(request, workdir):
    server_flags, client_flags = DIALECT_FLAGS[request.param]
    server = start_server(workdir, *server_flags)
    client = start_client(workdir, server.port, *client_flags)
    client.dialect = request.param
    yield client
    assert client.stop() == 0, client.log()
    assert server.stop() == 0, server.log()


def test_curl_gets_every_frame_boundary_size_by_name_intact(tunnel, web):
    for size in FILE_SIZES:
        body = curl(tunnel.port, f"http://localhost:{web.server_port}/f{size}")
        assert hashlib.sha256(body).hexdigest() == sha256_of(web.root / f"f{size}"), size


def test_curl_gets_100_megabytes_intact(tunnel, web):
    body = curl(tunnel.port, f"http://127.0.0.1:{web.server_port}/big")
    assert len(body) == 100 * 1024 * 1024
    assert hashlib.sha256(body).hexdigest() == sha256_of(web.root / "big")


def test_curl_reaches_an_ipv6_literal(tunnel, tmp_path):
    """curl sends SOCKS address type 4 for [::1]; the tunnel must carry it as jProxy's 2."""
    root = tmp_path / "www6"
    root.mkdir()
    page = os.urandom(100_000)
    (root / "page").write_bytes(page)
    web6 = serve_files(root, "::1")
    try:
        assert curl(tunnel.port, f"http://[::1]:{web6.server_port}/page") == page
    finally:
        web6.shutdown()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_python_socks_echo_over_ipv4_ipv6_and_names(tunnel, host):
    target = serve_tcp(echo, "::1" if host == "::1" else "127.0.0.1")
    with socks_connect(tunnel.port, host, target.server_address[1]) as sock:
        sock.sendall(b"hello jproxy\n")
        assert recv_exactly(sock, 13) == b"hello jproxy\n"
    target.shutdown()


def test_200_concurrent_streams(tunnel):
    target = serve_tcp(echo)
    port = target.server_address[1]
    errors = []

    def one(index: int) -> None:
        try:
            payload = hashlib.sha256(str(index).encode()).digest() * 512  # 16 KiB each
            with socks_connect(tunnel.port, "127.0.0.1", port) as sock:
                sock.sendall(payload)
                assert recv_exactly(sock, len(payload)) == payload
        except Exception as error:  # collected and reported below
            errors.append(f"{index}: {error!r}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors[:5]
    target.shutdown()


def test_half_close_still_gets_the_whole_reply(workdir):
    server = start_server(workdir)
    client = start_client(workdir, server.port)
    target = serve_tcp(digest_after_eof)
    request = b"request body " * 10000
    with socks_connect(client.port, "127.0.0.1", target.server_address[1]) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        reply = recv_exactly(sock, 64 * 1000)
        assert sock.recv(1) == b""
    assert reply == hashlib.sha256(request).hexdigest().encode() * 1000
    target.shutdown()
    client.stop()
    server.stop()


def greet_and_close(sock: socket.socket) -> None:
    sock.sendall(b"220 greeting from remote; closing now\r\n")


def test_a_target_that_speaks_first_is_heard_after_the_socks_reply(tunnel):
    """The server's first data may arrive with its connect reply; the SOCKS reply goes first."""
    target = serve_tcp(greet_and_close)
    for _ in range(50):
        with socks_connect(tunnel.port, "127.0.0.1", target.server_address[1]) as sock:
            assert recv_exactly(sock, 39) == b"220 greeting from remote; closing now\r\n"
            assert sock.recv(1) == b""
    target.shutdown()
