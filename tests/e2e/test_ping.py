"""``gjproxy ping`` through a real server: ping sockets (net.ipv4.ping_group_range opened by
the test, as root, and restored), raw sockets, the egress policy, and dialect 3.0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers import start_server, wait_for_access

PING_GROUP_RANGE = Path("/proc/sys/net/ipv4/ping_group_range")


def gjproxy_ping(workdir: Path, server_port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jproxy", "ping", *args, "--server", f"127.0.0.1:{server_port}"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def ping_group_range():
    """``set(text)`` writes net.ipv4.ping_group_range (needs root); restored afterwards."""
    if os.geteuid() != 0:
        message = "setting net.ipv4.ping_group_range needs root (README's test command is root)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    saved = PING_GROUP_RANGE.read_text()
    yield PING_GROUP_RANGE.write_text
    PING_GROUP_RANGE.write_text(saved)


ALL_GROUPS, NO_GROUP = "0 2147483647\n", "1 0\n"


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_ping_through_ping_sockets(workdir, ping_group_range, host: str) -> None:
    ping_group_range(ALL_GROUPS)
    server = start_server(workdir)
    result = gjproxy_ping(workdir, server.port, host, "-c", "3", "-i", "0.2")
    assert result.returncode == 0, result.stdout + result.stderr + server.log()
    lines = result.stdout.splitlines()
    for sequence in (1, 2, 3):
        assert any(f"56 bytes from {host}: seq={sequence} time=" in line for line in lines)
    assert "3 packets transmitted, 3 received, 0% packet loss" in result.stdout
    assert "rtt min/avg/max = " in result.stdout
    server.wait_for(r"ICMP echo over IPv[46] through a ping socket")
    wait_for_access(server, user="alice", transport="icmp", target=re.escape(host), status="OK")
    assert server.stop() == 0


def test_ping_through_raw_sockets_as_root(workdir, ping_group_range) -> None:
    ping_group_range(NO_GROUP)
    server = start_server(workdir)
    result = gjproxy_ping(workdir, server.port, "127.0.0.1", "-c", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    server.wait_for(r"ICMP echo over IPv4 through a raw socket")
    wait_for_access(server, user="alice", transport="icmp", target=r"127\.0\.0\.1", status="OK")
    named = gjproxy_ping(workdir, server.port, "localhost", "-c", "1")  # the server resolves
    assert named.returncode == 0, named.stdout + named.stderr
    assert "56 bytes from localhost: seq=1 time=" in named.stdout
    assert server.stop() == 0


def test_ping_obeys_the_egress_policy(workdir) -> None:
    server = start_server(workdir, allow_loopback=False)
    result = gjproxy_ping(workdir, server.port, "127.0.0.1", "-c", "2", "-i", "0")
    assert result.returncode == 1
    assert result.stdout.count("not allowed by the server's egress policy") == 2
    assert "2 packets transmitted, 0 received, 100% packet loss" in result.stdout
    assert server.stop() == 0


def test_ping_needs_dialect_31(workdir) -> None:
    server = start_server(workdir, "--allow-legacy")
    result = gjproxy_ping(workdir, server.port, "127.0.0.1", "--dialect", "3.0")
    assert result.returncode == 1
    assert "dialect 3.1" in result.stderr
    assert server.stop() == 0


AS_NOBODY = """
import os, sys
from jproxy.handlers.tunnel.ping_sockets import IcmpUnavailable, ping
os.setgroups([])
os.setgid(65534)
os.setuid(65534)  # no root, no CAP_NET_RAW from here on
try:
    echo = ping("127.0.0.1", b"nobody", 2.0, 1)
except IcmpUnavailable as error:
    print(error)
else:
    print(echo.status.name, echo.via, echo.data == b"nobody")
"""


@pytest.mark.parametrize(
    ("groups", "outcome"),
    [(ALL_GROUPS, "OK ping socket True"), (NO_GROUP, "ICMP unavailable: no ping socket")],
)
def test_an_unprivileged_server_pings_only_where_ping_sockets_are_allowed(
    ping_group_range, groups: str, outcome: str
) -> None:
    ping_group_range(groups)
    result = subprocess.run(
        [sys.executable, "-c", AS_NOBODY], capture_output=True, text=True, timeout=30
    )
    assert result.stdout.startswith(outcome), result.stdout + result.stderr
