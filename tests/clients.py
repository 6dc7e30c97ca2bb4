"""The client side of the end-to-end tests: SOCKS5 connects through a running client or
server (python-socks), curl, ``gjproxy admin``, and the flags and environments they share."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from python_socks import ProxyError
from python_socks.sync import Proxy

from tests.peers import curl_socks

DIALECT_FLAGS = {"3.1": ((), ()), "3.0": (("--allow-legacy",), ("--dialect", "3.0"))}
"""Per dialect, the server's flags and the client's flags that make a tunnel of it."""
NOT_ALLOWED, HOST_UNREACHABLE, GENERAL_FAILURE = 0x02, 0x04, 0x01
"""SOCKS5 reply codes a refused CONNECT gets."""
ADMIN_ENV = {"GJPROXY_ADMIN_USER": "ops", "GJPROXY_ADMIN_PASSWORD": "correct horse"}
"""A server's admin login, for ``start_server(..., env=ADMIN_ENV)`` and :func:`admin`."""
CLEAN_ENV = {key: value for key, value in os.environ.items() if not key.startswith("GJPROXY_")}
"""This process's environment without any GJPROXY_ variable, for commands run in a known one."""


def curl(socks_port: int, url: str, *extra: str, timeout: float = 60) -> bytes:
    """``url`` fetched with curl through the SOCKS5 port (names resolved by the proxy); the
    body, after asserting curl succeeded."""
    result = curl_socks(f"127.0.0.1:{socks_port}", url, "--fail", *extra, timeout=timeout)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def _socks5(socks_port: int) -> Proxy:
    """python-socks' no-auth SOCKS5 proxy at the loopback port, names sent as names."""
    return Proxy.from_url(f"socks5://127.0.0.1:{socks_port}", rdns=True)


def socks_connect(socks_port: int, host: str, port: int) -> socket.socket:
    """A no-auth SOCKS5 CONNECT to ``host``:``port`` (a name is sent as a name); the ready
    socket, with a 10 s timeout."""
    sock = _socks5(socks_port).connect(host, port, timeout=10)
    sock.settimeout(10)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes from ``sock``; an EOF before them fails the test."""
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(min(65536, size - got))
        assert chunk, f"EOF after {got} of {size} bytes"
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def socks_error(socks_port: int, host: str, port: int) -> int:
    """The SOCKS reply code of a CONNECT that must fail."""
    with pytest.raises(ProxyError) as refused:
        _socks5(socks_port).connect(host, port, timeout=15).close()
    return refused.value.error_code


def echoes(socks_port: int, host: str, port: int) -> bool:
    """Whether a CONNECT to the echo server at ``host``:``port`` carries "ping" there and back."""
    with _socks5(socks_port).connect(host, port, timeout=15) as sock:
        sock.settimeout(10)
        sock.sendall(b"ping")
        return recv_exactly(sock, 4) == b"ping"


def admin(port: int, *args: str, password: str = "correct horse") -> subprocess.CompletedProcess:
    """``gjproxy admin --port port --user ops *args`` with ``password``; its result."""
    return subprocess.run(
        [sys.executable, "-m", "jproxy", "admin", "--port", str(port), "--user", "ops", *args],
        env={**os.environ, "GJPROXY_ADMIN_PASSWORD": password},
        capture_output=True,
        text=True,
        timeout=30,
    )


def admin_output(port: int, *args: str) -> str:
    """What :func:`admin` prints (stripped), after asserting it succeeded."""
    result = admin(port, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()
