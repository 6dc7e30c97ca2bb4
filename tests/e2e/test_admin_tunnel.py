"""The admin protocol and the Prometheus page of a real server after known tunnel traffic."""

from __future__ import annotations

import time

from tests.clients import ADMIN_ENV, admin, recv_exactly, socks_connect
from tests.peers import echo, scrape_metrics, serve_tcp, start_client, start_server

CONNECTIONS, BYTES_EACH = 7, 30_000


def test_counters_after_known_traffic_through_the_tunnel(workdir):
    server = start_server(
        workdir, "--admin", "127.0.0.1:0", "--metrics", "127.0.0.1:0", env=ADMIN_ENV
    )
    admin_port = int(server.wait_for(r"admin protocol over TCP on [\d.]+:(\d+)").group(1))
    metrics_port = int(server.wait_for(r"metrics on http://[\d.]+:(\d+)/").group(1))
    client = start_client(workdir, server.port)
    target = serve_tcp(echo)

    for index in range(CONNECTIONS):
        payload = bytes([index]) * BYTES_EACH
        with socks_connect(client.port, "127.0.0.1", target.server_address[1]) as sock:
            sock.sendall(payload)
            assert recv_exactly(sock, BYTES_EACH) == payload
    held_open = socks_connect(client.port, "127.0.0.1", target.server_address[1])
    deadline = time.monotonic() + 10
    while admin(admin_port, "open").stdout.strip() != "1":  # the closes travel the tunnel
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)

    assert admin(admin_port, "connections").stdout.strip() == str(CONNECTIONS + 1)
    assert admin(admin_port, "bytes").stdout.strip() == str(CONNECTIONS * BYTES_EACH * 2)
    assert admin(admin_port, "users").stdout.strip() == "alice=1"
    assert admin(admin_port, "tunnels").stdout.strip() == "1"

    scraped = scrape_metrics(metrics_port)
    assert scraped["gjproxy_connections_total"] == CONNECTIONS + 1
    assert scraped["gjproxy_connections_open"] == 1
    assert scraped["gjproxy_transferred_bytes_total"] == CONNECTIONS * BYTES_EACH * 2
    assert scraped["gjproxy_dialect_tunnels_open{dialect=3.1}"] == 1

    changed = admin(admin_port, "set-buffer", "4096")
    assert changed.returncode == 0 and changed.stdout.strip() == "4096"
    assert admin(admin_port, "get-buffer").stdout.strip() == "4096"
    assert scrape_metrics(metrics_port)["gjproxy_relay_buffer_size_bytes"] == 4096
    # The running relay reads with the new size at once: a 64 KiB burst still arrives whole.
    held_open.sendall(b"z" * 65536)
    assert recv_exactly(held_open, 65536) == b"z" * 65536
    assert admin(admin_port, "set-buffer", "12").returncode == 1  # below the documented bound

    refused = admin(admin_port, "stats", password="wrong")
    assert refused.returncode == 3
    held_open.close()
    client.stop()
    server.stop()
