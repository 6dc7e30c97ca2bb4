"""The client's SOCKS5 port against real clients: every refusal, auth, and hostile input."""

from __future__ import annotations

import hashlib
import socket
import threading

import pytest
from python_socks import ProxyError
from python_socks.sync import Proxy

from tests.clients import curl
from tests.peers import echo, free_port, serve_tcp, start_client, start_server


@pytest.fixture
def client(workdir):
    server = start_server(workdir)
    client = start_client(workdir, server.port)
    yield client
    client.stop()
    server.stop()


def exchange(port: int, *messages: bytes, reply_size: int = 10) -> bytes:
    """Send each message, reading what comes back after the last one."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        replies = b""
        for message in messages:
            sock.sendall(message)
            replies += sock.recv(2)  # method selection reply
        return replies + _recv_until_closed(sock, reply_size)


def _recv_until_closed(sock: socket.socket, limit: int) -> bytes:
    data = b""
    while len(data) < limit:
        chunk = sock.recv(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data


GREETING = b"\x05\x01\x00"


def test_no_acceptable_method_gets_05_ff(client):
    with socket.create_connection(("127.0.0.1", client.port), timeout=10) as sock:
        sock.sendall(b"\x05\x01\x02")  # only user/password offered; the port wants none
        assert sock.recv(2) == b"\x05\xff"
        assert sock.recv(1) == b""


def test_bind_gets_07_and_unknown_address_type_gets_08(client):
    bind = b"\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50"
    assert exchange(client.port, GREETING, bind)[2:4] == b"\x05\x07"
    bad_type = b"\x05\x01\x00\x07\x7f\x00\x00\x01\x00\x50"
    assert exchange(client.port, GREETING, bad_type)[2:4] == b"\x05\x08"


@pytest.mark.parametrize(
    ("host", "code"),
    [("127.0.0.1", 0x05), ("nonexistent.invalid", 0x04)],
    ids=["refused", "unknown-host"],
)
def test_tunnel_connect_status_becomes_the_socks_reply(client, host, code):
    proxy = Proxy.from_url(f"socks5://127.0.0.1:{client.port}", rdns=True)
    with pytest.raises(ProxyError) as refused:
        proxy.connect(host, free_port(), timeout=15)
    assert refused.value.error_code == code


def test_user_password_on_the_socks_port(workdir):
    server = start_server(workdir)
    client = start_client(
        workdir, server.port, "--socks-user", "bob", env={"GJPROXY_SOCKS_PASSWORD": "s3cret"}
    )
    target = serve_tcp(echo)  # not the server's own port: the egress policy denies that
    target_port = target.server_address[1]
    try:
        good = Proxy.from_url(f"socks5://bob:s3cret@127.0.0.1:{client.port}")
        good.connect("127.0.0.1", target_port, timeout=10).close()
        bad = Proxy.from_url(f"socks5://bob:wrong@127.0.0.1:{client.port}")
        with pytest.raises(ProxyError):
            bad.connect("127.0.0.1", target_port, timeout=10)
        with socket.create_connection(("127.0.0.1", client.port), timeout=10) as sock:
            sock.sendall(b"\x05\x01\x02\x01\x03bob\x05wrong")
            assert (
                _recv_until_closed(sock, 4) == b"\x05\x02\x01\x01"
            )  # method 2 chosen, then auth failure
    finally:
        target.shutdown()
        client.stop()
        server.stop()


def hostile_clients(port: int, stop: threading.Event) -> list[str]:
    """Garbage, truncated greetings, oversized names and early hang-ups, until told to stop."""
    attacks = [
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00",
        b"\x05\xff" + bytes(255),
        b"\x05\x01\x00\x05\x01\x00\x03\xff" + b"a" * 255 + b"\x00\x50" + b"x" * 70000,
        b"\x05",
        b"\x05\x01\x00\x05\x01\x00\x01\x7f",
        bytes(range(256)) * 10,
    ]
    problems = []
    while not stop.is_set():
        for attack in attacks:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    sock.sendall(attack)
                    sock.settimeout(0.2)
                    sock.recv(100)
            except TimeoutError:
                pass  # a half greeting waits for more, as it should
            except OSError as error:
                if not isinstance(error, (ConnectionResetError, BrokenPipeError)):
                    problems.append(repr(error))
    return problems


def test_hostile_socks_clients_never_disturb_a_transfer(client, web):
    stop = threading.Event()
    problems: list[str] = []
    attackers = [
        threading.Thread(target=lambda: problems.extend(hostile_clients(client.port, stop)))
        for _ in range(4)
    ]
    for attacker in attackers:
        attacker.start()
    try:
        for _ in range(3):
            body = curl(client.port, f"http://127.0.0.1:{web.server_port}/f1000000")
            assert (
                hashlib.sha256(body).digest()
                == hashlib.sha256((web.root / "f1000000").read_bytes()).digest()
            )
    finally:
        stop.set()
        for attacker in attackers:
            attacker.join(30)
    assert not problems, problems[:5]
    assert client.proc.poll() is None
    assert "Traceback" not in client.log()
