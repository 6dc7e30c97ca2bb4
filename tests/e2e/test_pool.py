"""The client's tunnel pool: several tunnels per server, failover in seconds, fail-back,
the fastest server, stickiness (real servers and clients, relays in front of servers)."""

from __future__ import annotations

import signal
import socket
import struct
import time

from bench.relay import Relay
from tests.clients import ADMIN_ENV, admin, recv_exactly, socks_connect
from tests.peers import client_of, echo, refusing_address, scrape_metrics, serve_tcp, start_server

METRICS = ("--metrics", "127.0.0.1:0")


def metrics_port(process) -> int:
    return int(process.wait_for(r"metrics on http://[\d.]+:(\d+)/").group(1))


def echoes(sock: socket.socket, payload: bytes = b"ping" * 1000) -> bool:
    sock.sendall(payload)
    return recv_exactly(sock, len(payload)) == payload


def socks_reply(socks_port: int, host: str, port: int, timeout: float) -> int:
    """The reply code of a raw SOCKS5 CONNECT (no authentication)."""
    with socket.create_connection(("127.0.0.1", socks_port), timeout=timeout) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert sock.recv(2) == b"\x05\x00"
        name = host.encode()
        sock.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack("!H", port))
        reply = sock.recv(10)
        assert reply[:1] == b"\x05", reply
        return reply[1]


def test_streams_spread_over_three_tunnels(workdir):
    server = start_server(workdir, "--admin", "127.0.0.1:0", env=ADMIN_ENV)
    admin_port = int(server.wait_for(r"admin protocol over TCP on [\d.]+:(\d+)").group(1))
    client = client_of(workdir, f"127.0.0.1:{server.port}", extra=("--tunnels", "3", *METRICS))
    for number in (1, 2, 3):
        client.wait_for(rf"tunnel to 127.0.0.1:{server.port} #{number}: up")
    target = serve_tcp(echo)
    streams = [socks_connect(client.port, "127.0.0.1", target.server_address[1]) for _ in range(6)]
    assert all(echoes(sock) for sock in streams)
    assert admin(admin_port, "tunnels").stdout.strip() == "3"
    found = scrape_metrics(metrics_port(client))
    per_tunnel = [
        found[f"gjproxy_client_tunnel_streams{{server=127.0.0.1:{server.port}}}{{tunnel={n}}}"]
        for n in (1, 2, 3)
    ]
    assert per_tunnel == [2, 2, 2]
    for sock in streams:
        sock.close()
    assert client.stop() == 0
    server.stop()


def test_one_tunnel_killed_while_the_others_carry_on(workdir):
    server = start_server(workdir)
    relay = Relay(("127.0.0.1", server.port))
    client = client_of(workdir, relay.address, extra=("--tunnels", "3"))
    for number in (1, 2, 3):
        client.wait_for(rf"tunnel to {relay.address} #{number}: up")
    target = serve_tcp(echo)
    streams = [socks_connect(client.port, "127.0.0.1", target.server_address[1]) for _ in range(3)]
    assert all(echoes(sock) for sock in streams)
    relay.cut(0)
    broken = client.wait_for(rf"tunnel to {relay.address} #(\d): (lost|read failed)")
    lost = int(broken.group(1))
    survivors = 0
    for sock in streams:
        try:
            survivors += echoes(sock)
        except (OSError, AssertionError):
            pass
    assert survivors == 2
    rebuilt = f"tunnel to {relay.address} #{lost}: up"
    deadline = time.monotonic() + 15
    while sum(rebuilt in line for line in client.lines) < 2:
        assert time.monotonic() < deadline, client.log()
        time.sleep(0.1)
    fresh = socks_connect(client.port, "127.0.0.1", target.server_address[1])
    assert echoes(fresh)
    assert client.stop() == 0
    relay.close()
    server.stop()
    assert "Traceback" not in client.log() + server.log()


def test_a_stopped_server_is_left_for_the_next_within_eight_seconds(workdir, web):
    first, second = start_server(workdir), start_server(workdir)
    servers = f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"
    client = client_of(workdir, *servers, extra=("--keepalive", "5"))
    client.wait_for(f"tunnel to {servers[0]}: up")
    target = serve_tcp(echo)
    with socks_connect(client.port, "127.0.0.1", target.server_address[1]) as sock:
        assert echoes(sock)
    first.proc.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        # Asked in the gap: it waits on the stuck tunnel, then is asked again on the second.
        with socks_connect(client.port, "127.0.0.1", target.server_address[1]) as sock:
            assert echoes(sock)
        client.wait_for(f"now using server {servers[1]}", timeout=12)
        assert "no answer yet; asking for 127.0.0.1 again" in client.log()
        took = time.monotonic() - stopped
        assert took < 8.0, client.log()
        assert "keepalive unanswered" in client.log()
    finally:
        first.stop(signal.SIGKILL)  # stopped: it cannot take a SIGTERM now
    assert client.stop() == 0
    second.stop()
    assert "Traceback" not in client.log()


def test_with_no_tunnel_a_request_fails_with_0x01_after_the_connect_timeout(workdir):
    dead_sock, dead = refusing_address()
    with dead_sock:
        client = client_of(workdir, dead, extra=("--connect-timeout", "1.5"))
        started = time.monotonic()
        assert socks_reply(client.port, "127.0.0.1", 9, timeout=10) == 0x01
        assert 1.0 < time.monotonic() - started < 6
        assert client.proc.poll() is None  # refused connects are retried, never fatal
    assert client.stop() == 0


def test_a_garbled_first_login_is_retried(workdir):
    server = start_server(workdir)
    relay = Relay(("127.0.0.1", server.port), garble_first=True)
    client = client_of(workdir, relay.address)
    client.wait_for(f"tunnel login at {relay.address} failed: this is not a gjproxy server")
    client.wait_for(f"tunnel to {relay.address}: up")
    assert client.stop() == 0
    relay.close()
    server.stop()
    assert "Traceback" not in client.log() + server.log()


def test_fail_back_to_the_first_server_after_it_is_healthy_again(workdir):
    first, second = start_server(workdir), start_server(workdir)
    servers = f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"
    client = client_of(workdir, *servers, extra=("--failback-after", "1", *METRICS))
    port = metrics_port(client)
    client.wait_for(f"using server {servers[0]}")
    first.stop(signal.SIGKILL)
    client.wait_for(f"now using server {servers[1]}", timeout=20)
    target = serve_tcp(echo)
    held = socks_connect(client.port, "127.0.0.1", target.server_address[1])  # on the second
    first = start_server(workdir, listen=servers[0])
    client.wait_for(f"server {servers[0]} healthy again for 1s", timeout=40)
    client.wait_for(f"now using server {servers[0]}")
    assert scrape_metrics(port)[f"gjproxy_client_server{{server={servers[0]}}}"] == 1
    assert echoes(held)  # the stream on the second server goes on
    held.close()
    client.wait_for(f"tunnel to {servers[1]}: no longer in use, closing")
    with socks_connect(client.port, "127.0.0.1", target.server_address[1]) as sock:
        assert echoes(sock)
    assert client.stop() == 0
    first.stop()
    second.stop()


def test_fastest_chooses_the_nearer_server(workdir):
    far, near = start_server(workdir), start_server(workdir)
    relay = Relay(("127.0.0.1", far.port), delay=0.05)
    nearby = f"127.0.0.1:{near.port}"
    client = client_of(
        workdir, relay.address, nearby, extra=("--strategy", "fastest", "--keepalive", "1")
    )
    client.wait_for(rf"fastest: (now )?using server {nearby}, round trip", timeout=20)
    client.wait_for(f"tunnel to {relay.address}: up")
    time.sleep(1.5)  # more keepalives later it still holds
    assert f"now using server {relay.address}" not in client.log()
    assert client.stop() == 0
    relay.close()
    far.stop()
    near.stop()


def test_a_destination_host_sticks_to_one_server(workdir):
    servers = [start_server(workdir, *METRICS) for _ in range(2)]
    ports = [metrics_port(server) for server in servers]
    names = [f"127.0.0.1:{server.port}" for server in servers]
    client = client_of(workdir, *names, extra=("--strategy", "round-robin"))
    for name in names:
        client.wait_for(f"tunnel to {name}: up")
    target = serve_tcp(echo, host="0.0.0.0")
    for host in ("127.0.0.1", "127.0.0.2", "127.0.0.1", "127.0.0.1", "127.0.0.2"):
        with socks_connect(client.port, host, target.server_address[1]) as sock:
            assert echoes(sock)
    counts = sorted(scrape_metrics(port)["gjproxy_connections_total"] for port in ports)
    assert counts == [2, 3]  # each host on its own server, every time
    assert client.stop() == 0
    for server in servers:
        server.stop()
