"""No peer or application behaviour makes either process print a traceback.

Streams end in every way an application or a target can end them, in both dialects: a close
with or without a half-close first, a reset from either side, and the loss of the whole tunnel
(the server killed, the client shut down with streams open). A traceback in either process's
output is a defect (gevent's hub used to print one per closed stream).
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

from tests.clients import DIALECT_FLAGS, recv_exactly, socks_connect
from tests.peers import echo, serve_tcp, start_client, start_server, wait_for_access

ROUNDS = 8
"""Streams ended in each way per dialect: enough for a per-stream traceback to show."""


def _linger_zero(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _reset_by_target(sock: socket.socket) -> None:
    sock.recv(1)
    sock.sendall(b"x")
    _linger_zero(sock)
    sock.close()


def _close_by_target(sock: socket.socket) -> None:
    sock.recv(1)
    sock.sendall(b"x")
    sock.close()


def _read_to_end(sock: socket.socket) -> bytes:
    got = b""
    while chunk := sock.recv(1 << 16):
        got += chunk
    return got


def _endings(
    client_port: int, echo_port: int, reset_port: int, close_port: int, half_close: bool
) -> None:
    """One stream ended in each way, from the SOCKS application's side and the target's."""
    # the application closes without a half-close first
    sock = socks_connect(client_port, "127.0.0.1", echo_port)
    sock.sendall(b"hello")
    assert recv_exactly(sock, 5) == b"hello"
    sock.close()
    # a half-close first, then the rest of the answer, then the close
    sock = socks_connect(client_port, "127.0.0.1", echo_port)
    sock.sendall(b"hello")
    sock.shutdown(socket.SHUT_WR)
    answer = _read_to_end(sock)
    assert answer == b"hello" or not half_close, answer  # 3.0: the EOF is the goodbye
    sock.close()
    # the application resets
    sock = socks_connect(client_port, "127.0.0.1", echo_port)
    sock.sendall(b"hello")
    assert recv_exactly(sock, 5) == b"hello"
    _linger_zero(sock)
    sock.close()
    # the application closes with data still on its way to it
    sock = socks_connect(client_port, "127.0.0.1", echo_port)
    sock.sendall(b"z" * 200_000)
    sock.close()
    # the target resets, and the target closes
    for port in (reset_port, close_port):
        sock = socks_connect(client_port, "127.0.0.1", port)
        sock.sendall(b"g")
        try:
            sock.recv(10)
            sock.recv(10)
        except OSError:
            pass
        sock.close()


@pytest.mark.parametrize("dialect", sorted(DIALECT_FLAGS))
def test_no_traceback_however_streams_and_tunnels_end(workdir, dialect):
    server_flags, client_flags = DIALECT_FLAGS[dialect]
    echo_target = serve_tcp(echo)
    reset_target = serve_tcp(_reset_by_target)
    close_target = serve_tcp(_close_by_target)
    ports = (
        echo_target.server_address[1],
        reset_target.server_address[1],
        close_target.server_address[1],
    )
    (workdir / "server.toml").write_text("[server]\ngrace = 0.2\n")  # streams held: no wait
    server = start_server(workdir, "--config", "server.toml", *server_flags)
    client = start_client(workdir, server.port, *client_flags)
    for _ in range(ROUNDS):
        _endings(client.port, *ports, half_close=dialect == "3.1")
    wait_for_access(server, ended="reset")
    # streams open when the tunnel is lost: the server killed, then the client shut down
    held = [socks_connect(client.port, "127.0.0.1", ports[0]) for _ in range(4)]
    for sock in held:
        sock.sendall(b"hi")
        assert recv_exactly(sock, 2) == b"hi"
    time.sleep(0.5)
    assert server.stop() == 0
    for sock in held:
        sock.settimeout(10)
        try:
            while sock.recv(1 << 16):
                pass
        except OSError:
            pass
        sock.close()
    client.wait_for(r"lost, reconnecting")
    first_server = server
    server = start_server(
        workdir, "--config", "server.toml", *server_flags, listen=f"127.0.0.1:{server.port}"
    )
    deadline = time.monotonic() + 30
    while sum(" up (dialect" in line for line in client.lines) < 2:
        assert time.monotonic() < deadline, client.log()
        time.sleep(0.1)
    held = [socks_connect(client.port, "127.0.0.1", ports[0]) for _ in range(4)]
    for sock in held:
        sock.sendall(b"hi")
        assert recv_exactly(sock, 2) == b"hi"
    assert client.stop() == 0
    for sock in held:
        sock.close()
    assert server.stop() == 0
    for process in (first_server, server, client):
        assert "Traceback" not in process.log(), process.log()
