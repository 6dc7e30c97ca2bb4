"""The SOCKS5 core behind the thinnest handler (tests/socks5_handler.py), against python-socks
over loopback sockets."""

from __future__ import annotations

import socket

import pytest
from python_socks import ProxyError
from python_socks.sync import Proxy

from jproxy.socks.socks5 import ConnectRequested, Rejected, Socks5Server
from tests.socks5_handler import LOGGED_IN, LOGIN_FAILED, SELECTED_PASSWORD, TIMEOUT, USERS


def _ask(sock: socket.socket, path: str) -> bytes:
    with sock:
        sock.settimeout(TIMEOUT)
        sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        response = b""
        while chunk := sock.recv(4096):
            response += chunk
    return response.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize(
    ("host", "rdns", "requested"),
    [
        ("example.test", True, "example.test"),
        ("127.0.0.1", False, "127.0.0.1"),
        ("::1", False, "::1"),
    ],
)
def test_python_socks_client(proxy_for, host, rdns, requested) -> None:
    port, served = proxy_for(Socks5Server(USERS))
    proxy = Proxy.from_url(f"socks5://alice:secret@127.0.0.1:{port}", rdns=rdns)
    assert _ask(proxy.connect(host, 8080, timeout=TIMEOUT), "/py") == b"GET /py HTTP/1.0"
    events = served.result(timeout=TIMEOUT)
    assert events == [SELECTED_PASSWORD, LOGGED_IN, ConnectRequested(requested, 8080)]


def test_python_socks_client_wrong_password(proxy_for) -> None:
    port, served = proxy_for(Socks5Server(USERS))
    proxy = Proxy.from_url(f"socks5://alice:guess@127.0.0.1:{port}")
    with pytest.raises(ProxyError):
        proxy.connect("example.test", 80, timeout=TIMEOUT)
    assert served.result(timeout=TIMEOUT)[-1] == Rejected(
        LOGIN_FAILED, "wrong user name or password"
    )
