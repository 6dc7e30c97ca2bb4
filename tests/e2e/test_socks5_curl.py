"""The SOCKS5 core behind the thinnest handler (tests/socks5_handler.py), against curl."""

from __future__ import annotations

import subprocess

import pytest

from jproxy.socks.socks5 import ConnectRequested, Rejected, Socks5Server
from tests.peers import require_tool
from tests.socks5_handler import LOGIN_FAILED, TIMEOUT, USERS


def _run_curl(proxy: str, url: str) -> subprocess.CompletedProcess:
    command = [require_tool("curl"), "-sS", "--max-time", str(TIMEOUT), "--proxy", proxy, url]
    return subprocess.run(command, capture_output=True, timeout=2 * TIMEOUT, check=False)


@pytest.mark.parametrize(
    ("scheme", "credentials", "users"),
    [("socks5h", "", None), ("socks5h", "alice:secret@", USERS), ("socks5", "", None)],
    ids=["remote-names", "password", "local-names"],
)
def test_curl(proxy_for, scheme, credentials, users) -> None:
    port, served = proxy_for(Socks5Server(users))
    target = "example.test" if scheme == "socks5h" else "127.0.0.1"
    result = _run_curl(f"{scheme}://{credentials}127.0.0.1:{port}", f"http://{target}:8080/curl")
    assert (result.returncode, result.stdout) == (0, b"GET /curl HTTP/1.1"), result.stderr
    assert served.result(timeout=TIMEOUT)[-1] == ConnectRequested(target, 8080)


def test_curl_wrong_password(proxy_for) -> None:
    port, served = proxy_for(Socks5Server(USERS))
    result = _run_curl(f"socks5h://alice:nope@127.0.0.1:{port}", "http://example.test/")
    assert result.returncode != 0
    assert served.result(timeout=TIMEOUT)[-1] == Rejected(
        LOGIN_FAILED, "wrong user name or password"
    )
