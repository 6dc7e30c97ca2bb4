"""File descriptors of a real server under a low RLIMIT_NOFILE: streams are refused with
status 6 before fds run out, logins and the admin port keep working, and an accept that fails
with EMFILE costs one log line, not a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import socks
from python_socks import ProxyError
from python_socks.sync import Proxy

from jproxy.policy.passwords import hash_password
from jproxy.tunnel.keys import generate, save_client_key, save_user
from tests.clients import ADMIN_ENV, admin, recv_exactly, socks_connect
from tests.peers import UdpEcho, echo, require_tool, serve_tcp, start_client, start_server

FD_LIMIT = 256
MAX_ATTEMPTS = 400
NOT_ALLOWED = 0x02  # the client's SOCKS reply for status 6 (connection limit)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def prlimit(*args: str) -> None:
    subprocess.run([require_tool("prlimit"), *args], check=True, timeout=10)


@pytest.fixture
def target():
    server = serve_tcp(echo)
    yield server
    server.shutdown()


def test_streams_are_refused_before_the_fds_run_out_and_logins_still_work(workdir, target):
    limited = (require_tool("prlimit"), f"--nofile={FD_LIMIT}:{FD_LIMIT}", "--")
    server = start_server(
        workdir, "--admin", "127.0.0.1:0", "--max-tunnels", "8", env=ADMIN_ENV, prefix=limited
    )
    budget = server.wait_for(r"file descriptors: limit (\d+) \(hard (\d+)\); streams may use (\d+)")
    assert budget.groups() == (str(FD_LIMIT), str(FD_LIMIT), str(FD_LIMIT // 2))
    admin_port = int(server.wait_for(r"admin protocol over TCP on [\d.]+:(\d+)").group(1))
    client = start_client(workdir, server.port)
    held, refused = [], None
    try:
        for _ in range(MAX_ATTEMPTS):
            try:
                sock = socks_connect(client.port, "127.0.0.1", target.server_address[1])
            except ProxyError as error:
                refused = error
                break
            held.append(sock)
        assert refused is not None and refused.error_code == NOT_ALLOWED, len(held)
        assert len(held) == FD_LIMIT // 4  # alone, a user may hold half the 128 for streams
        assert open_fds(server.proc.pid) < FD_LIMIT - 64  # the reserve is still free
        server.wait_for(r'"CONNECTION_LIMIT",.*"reason":"tunnel user alice holds its fair share')

        second = start_client(workdir, server.port)  # a login still finds an fd
        assert admin(admin_port, "tunnels").stdout.strip() == "2"
        second.stop()

        held.pop().close()  # one stream ends: the next one fits again
        deadline = time.monotonic() + 10
        while True:
            try:
                with socks_connect(client.port, "127.0.0.1", target.server_address[1]) as sock:
                    sock.sendall(b"fits")
                    assert recv_exactly(sock, 4) == b"fits"
                break
            except ProxyError:
                assert time.monotonic() < deadline, "no stream fits after one closed"
                time.sleep(0.1)
    finally:
        for sock in held:
            sock.close()
        client.stop()
        server.stop()
    assert "Traceback" not in server.log()


def test_accept_survives_emfile_and_resumes(workdir):
    server = start_server(workdir)
    pid = server.proc.pid
    try:
        prlimit("--pid", str(pid), f"--nofile={open_fds(pid)}:")  # soft: not one fd more
        waiting = subprocess.Popen(
            [sys.executable, "-m", "jproxy", "client", "--server", f"127.0.0.1:{server.port}"]
            + ["--socks", "127.0.0.1:0", "--key", "key.dat"],
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        server.wait_for(r"cannot accept \(\[Errno 24\] Too many open files\), retrying")
        time.sleep(1)  # several retries, each one silent
        prlimit("--pid", str(pid), "--nofile=4096:")
        server.wait_for(r"accepting again after \d+ failed attempts")
        server.wait_for(r"tunnel alice@127\.0\.0\.1:\d+: logged in")
        waiting.terminate()
        waiting.wait(10)
    finally:
        server.stop()
    assert "Traceback" not in server.log()
    assert len([line for line in server.lines if "cannot accept" in line]) == 1


FAIR_LIMIT = 1024
FAIR_USERS = {"carol": "carol's password", "dave": "dave's password"}


def _hold_until_refused(connect, limit: int) -> tuple[list, Exception | None]:
    held: list = []
    for _ in range(limit):
        try:
            held.append(connect())
        except (ProxyError, OSError) as error:
            return held, error
    return held, None


def _echoes(sock) -> bool:
    with sock:
        sock.sendall(b"mine")
        return recv_exactly(sock, 4) == b"mine"


def test_one_user_cannot_take_every_fd_from_the_others(workdir, target):
    """Under a 1,024 fd limit, a tunnel user holds streams and a plain SOCKS user UDP
    destinations until refused: each stops at its fair share, and other users' connects still
    work."""
    bob = workdir / "bob"
    bob.mkdir()
    key, record = generate("bob")
    save_client_key(key, bob / "key.dat")
    save_user(record, workdir / "users")
    lines = ["[socks_users]"] + [
        f'{name} = "{hash_password(password, n=1024)}"' for name, password in FAIR_USERS.items()
    ]
    (workdir / "fair.toml").write_text("\n".join(lines) + "\n")
    limited = (require_tool("prlimit"), f"--nofile={FAIR_LIMIT}:{FAIR_LIMIT}", "--")
    server = start_server(
        workdir, "--config", "fair.toml", "--socks", "127.0.0.1:0", prefix=limited
    )
    socks_port = int(server.wait_for(r"plain SOCKS5 listening on [\d.]+:(\d+)").group(1))
    alice = start_client(workdir, server.port)
    second = start_client(workdir, server.port, "--key", str(bob / "key.dat"))
    echo_port = target.server_address[1]

    def plain(user: str):
        proxy = Proxy.from_url(f"socks5://{user}:{FAIR_USERS[user]}@127.0.0.1:{socks_port}")
        sock = proxy.connect("127.0.0.1", echo_port, timeout=10)
        sock.settimeout(10)
        return sock

    held: list = []
    udp_echo = UdpEcho("0.0.0.0")
    try:
        hog, refused = _hold_until_refused(
            lambda: socks_connect(alice.port, "127.0.0.1", echo_port), FAIR_LIMIT
        )
        held += hog
        assert isinstance(refused, ProxyError) and refused.error_code == NOT_ALLOWED, len(hog)
        server.wait_for(r'"reason":"tunnel user alice holds its fair share of file descriptors')
        assert _echoes(socks_connect(second.port, "127.0.0.1", echo_port))  # bob gets in
        assert _echoes(plain("dave"))

        # carol: UDP associations of 64 destinations each (a socket each on the server)
        for association in range(4):
            carol = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
            carol.set_proxy(
                socks.SOCKS5, "127.0.0.1", socks_port, True, "carol", FAIR_USERS["carol"]
            )
            held.append(carol)
            for n in range(64):
                carol.sendto(b"hog", (f"127.0.{2 + association}.{1 + n}", udp_echo.address[1]))
        server.wait_for(r'"reason":"SOCKS user carol holds its fair share of file descriptors')
        with pytest.raises(ProxyError):
            plain("carol")  # at its share: TCP is refused too
        assert _echoes(socks_connect(second.port, "127.0.0.1", echo_port))
        assert _echoes(plain("dave"))
        assert open_fds(server.proc.pid) < FAIR_LIMIT - 64
        assert "Traceback" not in server.log()
    finally:
        for sock in held:
            sock.close()
        udp_echo.close()
        second.stop()
        alice.stop()
        server.stop()
