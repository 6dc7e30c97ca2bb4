"""``gjproxy server --workers 2``: one port, two processes, one set of counters and limits."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time

from tests.clients import ADMIN_ENV, admin, recv_exactly
from tests.peers import (
    Process,
    echo,
    read_json_lines,
    require_tool,
    scrape_metrics,
    serve_tcp,
    start_client,
    start_server,
)

PAYLOAD = b"w" * 1000


def workers_server(workdir, *extra: str) -> Process:
    server = start_server(
        workdir, "--workers", "2", "--admin", "127.0.0.1:0", *extra, env=ADMIN_ENV
    )
    server.admin_port = int(server.wait_for(r"admin protocol over TCP on [\d.]+:(\d+)").group(1))
    server.wait_for(r"worker 2 .*tunnel server listening on")
    return server


def plain_socks_echo(socks_port: int, target_port: int) -> socket.socket:
    """A connection through the plain SOCKS5 port (no authentication) to the echo server,
    after one echo."""
    sock = socket.create_connection(("127.0.0.1", socks_port), timeout=10)
    sock.sendall(b"\x05\x01\x00")
    assert recv_exactly(sock, 2) == b"\x05\x00"
    request = b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1")
    sock.sendall(request + target_port.to_bytes(2, "big"))
    assert recv_exactly(sock, 10)[:2] == b"\x05\x00"
    sock.sendall(PAYLOAD)
    assert recv_exactly(sock, len(PAYLOAD)) == PAYLOAD
    return sock


def serving_pids(port: int) -> set[str]:
    """The processes holding established connections on local ``port``."""
    lines = subprocess.run(
        [require_tool("ss"), "-Htnp", "state", "established", f"sport = :{port}"],
        capture_output=True,
        text=True,
    ).stdout
    return set(re.findall(r"pid=(\d+)", lines))


def count(process: Process, text: str) -> int:
    return sum(text in line for line in process.lines)


def wait_until(check, timeout: float = 10.0, process: Process | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, process.log() if process else "timed out"
        time.sleep(0.1)


def test_two_workers_serve_one_port_with_summed_counters_and_shared_limits(workdir):
    server = workers_server(
        workdir,
        *("--socks", "127.0.0.1:0", "--socks-no-auth", "--metrics", "127.0.0.1:0"),
        *("--access-log", "access.jsonl", "--max-tunnels-per-user", "2"),
    )
    metrics_port = int(server.wait_for(r"metrics on http://[\d.]+:(\d+)/").group(1))
    socks_port = int(server.wait_for(r"worker 1 .*SOCKS5 listening on [\d.]+:(\d+)").group(1))
    server.wait_for(rf"worker 2 .*SOCKS5 listening on [\d.]+:{socks_port}")
    listeners = subprocess.run(
        [require_tool("ss"), "-Hltn", f"sport = :{server.port}"], capture_output=True, text=True
    ).stdout.splitlines()
    assert len(listeners) == 2
    target = serve_tcp(echo).server_address[1]

    held = [plain_socks_echo(socks_port, target) for _ in range(20)]
    assert len(serving_pids(socks_port)) == 2  # both workers serve
    for sock in held:
        sock.close()  # 20 access lines, from both workers at once
    records = read_json_lines(workdir / "access.jsonl", 20)  # whole lines, never interleaved
    assert len(records) == 20 and all(record["bytes_up"] == len(PAYLOAD) for record in records)
    client = start_client(workdir, server.port)
    with socket.create_connection(("127.0.0.1", client.port), timeout=10):
        pass  # a tunnel is up: one more counted below
    wait_until(lambda: admin(server.admin_port, "connections").stdout.strip() == "20")
    assert admin(server.admin_port, "bytes").stdout.strip() == str(20 * 2 * len(PAYLOAD))
    assert admin(server.admin_port, "tunnels").stdout.strip() == "1"
    scraped = scrape_metrics(metrics_port)
    assert scraped["gjproxy_connections_total"] == 20
    assert scraped["gjproxy_service_connections_total{service=socks}"] == 20
    assert scraped["gjproxy_tunnels_open"] == 1

    greedy = start_client(workdir, server.port, "--tunnels", "4")  # alice's 2nd to 5th tunnel
    refused = "already has 2 tunnels (all workers)"
    wait_until(lambda: count(server, refused) >= 3, 20, server)
    wait_until(lambda: admin(server.admin_port, "tunnels").stdout.strip() == "2")
    time.sleep(1.0)  # more refused tries meanwhile, on either worker
    assert admin(server.admin_port, "users").stdout.strip() == "alice=2"
    greedy.stop()

    assert admin(server.admin_port, "set-buffer", "4096").stdout.strip() == "4096"
    for number in (1, 2):
        server.wait_for(rf"worker {number} .*relay buffer size now 4096")

    loaded = [count(server, f"worker {n} gjproxy.server: loaded") for n in (1, 2)]
    server.proc.send_signal(signal.SIGHUP)
    for number, before in zip((1, 2), loaded, strict=True):
        text = f"worker {number} gjproxy.server: loaded"
        wait_until(lambda: count(server, text) > before, process=server)  # noqa: B023

    first = int(server.wait_for(r"worker 1 started \(pid (\d+)\)").group(1))
    os.kill(first, signal.SIGKILL)
    server.wait_for(rf"worker 1 \(pid {first}\) ended with status -9")
    for _ in range(5):
        plain_socks_echo(socks_port, target).close()  # the other worker serves meanwhile
    wait_until(lambda: count(server, "worker 1 jproxy.handlers.socks.port") >= 2, 20)
    wait_until(lambda: admin(server.admin_port, "connections").stdout.strip() == "25")

    client.stop()
    assert server.stop() == 0
    for number in (1, 2):
        assert count(server, f"worker {number} gjproxy.server: SIGTERM: shutting down") == 1
        assert f"worker {number} (pid" in server.log()
    assert "Traceback" not in server.log()
