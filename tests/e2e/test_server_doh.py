"""gjproxy server resolving over DoH (unbound on loopback) and writing its JSON access log,
driven end to end by curl through the tunnel."""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.clients import socks_connect
from tests.peers import (
    Process,
    curl_socks,
    echo,
    read_json_lines,
    serve_tcp,
    start_client,
    start_server,
)


def doh_flags(unbound) -> tuple[str, ...]:
    return ("--doh", unbound.doh_url, "--doh-ca", str(unbound.cert))


@pytest.fixture
def doh_tunnel(workdir, unbound):
    server = start_server(workdir, *doh_flags(unbound), "--access-log", "access.jsonl")
    client = start_client(workdir, server.port)
    client.socks = f"127.0.0.1:{client.port}"
    client.server = server
    yield client
    assert client.stop() == 0, client.log()
    assert server.stop() == 0, server.log()


def test_a_name_only_the_doh_server_knows_works_through_the_tunnel(doh_tunnel, web, workdir):
    url = f"http://web.tunnel.test:{web.server_port}/f4080"
    result = curl_socks(doh_tunnel.socks, url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (web.root / "f4080").read_bytes()
    [line] = read_json_lines(workdir / "access.jsonl", 1)
    assert line["service"] == "tunnel"
    assert line["user"] == "alice"
    assert line["client"].startswith("127.0.0.1:")
    assert line["target"] == f"web.tunnel.test:{web.server_port}"
    assert line["connected"] == f"127.0.0.1:{web.server_port}"
    assert line["status"] == "OK"
    assert line["ended"] == "closed"
    assert line["reason"] in ("", "disconnect from the client: CLIENT_CLOSED")  # who closed first
    assert (line["transport"], line["local_port"]) == ("tcp", 0)
    assert line["bytes_down"] > 4080  # the file and the HTTP headers
    assert 0 < line["bytes_up"] < 1000  # curl's request
    assert 0 <= line["connect_ms"] <= line["duration"] * 1000 + 1
    assert line["time"].endswith("+00:00")
    assert list(line) == [
        "time",
        "service",
        "user",
        "client",
        "target",
        "connected",
        "status",
        "connect_ms",
        "bytes_up",
        "bytes_down",
        "duration",
        "ended",
        "reason",
        "transport",
        "local_port",
    ]


def test_unknown_names_and_egress_refusals_are_logged_with_why(doh_tunnel, web, workdir):
    result = curl_socks(doh_tunnel.socks, f"http://nope.tunnel.test:{web.server_port}/")
    assert result.returncode == 97, result.stderr  # curl: the proxy refused the connect
    result = curl_socks(doh_tunnel.socks, f"http://10.1.2.3:{web.server_port}/")
    assert result.returncode == 97, result.stderr
    unknown, refused = read_json_lines(workdir / "access.jsonl", 2)
    assert (unknown["status"], unknown["ended"]) == ("UNKNOWN_HOST", "failed")
    assert "nope.tunnel.test: NXDOMAIN" in unknown["reason"]
    assert unknown["connected"] == "" and unknown["bytes_up"] == unknown["bytes_down"] == 0
    assert (refused["status"], refused["ended"]) == ("NOT_ALLOWED", "refused")
    assert "10.1.2.3" in refused["reason"]


def test_the_access_log_is_reopened_on_sighup(doh_tunnel, web, workdir):
    url = f"http://web.tunnel.test:{web.server_port}/f1"
    assert curl_socks(doh_tunnel.socks, url).returncode == 0
    read_json_lines(workdir / "access.jsonl", 1)
    os.rename(workdir / "access.jsonl", workdir / "access.jsonl.1")  # what logrotate does
    doh_tunnel.server.proc.send_signal(signal.SIGHUP)
    doh_tunnel.server.wait_for("access log access.jsonl reopened")
    assert curl_socks(doh_tunnel.socks, url).returncode == 0
    assert len(read_json_lines(workdir / "access.jsonl", 1)) == 1
    assert len(read_json_lines(workdir / "access.jsonl.1", 1)) == 1


def test_a_doh_host_name_is_resolved_once_at_start(workdir, unbound, web):
    url = unbound.doh_url.replace("127.0.0.1", "localhost")
    server = start_server(workdir, "--doh", url, "--doh-ca", str(unbound.cert))
    try:
        server.wait_for(rf"DoH: resolving names over {url} \(at 127\.0\.0\.1\)")
        client = start_client(workdir, server.port)
        result = curl_socks(
            f"127.0.0.1:{client.port}", f"http://web.tunnel.test:{web.server_port}/f1"
        )
        assert result.returncode == 0, result.stderr
        assert client.stop() == 0
    finally:
        assert server.stop() == 0


def test_a_doh_host_that_does_not_resolve_stops_the_server(workdir):
    server = Process(
        "server", "--users", "users", "--doh", "https://doh.invalid/dns-query", cwd=workdir
    )
    assert server.proc.wait(30) == 1
    assert "gjproxy server: --doh: system resolver:" in server.log()


def test_access_log_dash_is_standard_output(workdir, unbound, web):
    # Without PYTHONUNBUFFERED a pipe is block-buffered: each line must be flushed by itself.
    unbuffered = {"PYTHONUNBUFFERED": ""}
    server = start_server(workdir, *doh_flags(unbound), "--access-log", "-", env=unbuffered)
    try:
        client = start_client(workdir, server.port)
        url = f"http://web.tunnel.test:{web.server_port}/f0"
        assert curl_socks(f"127.0.0.1:{client.port}", url).returncode == 0
        line = json.loads(server.wait_for(r'^\{"time":.*').group(0))
        assert (line["service"], line["status"], line["ended"]) == ("tunnel", "OK", "closed")
        assert client.stop() == 0
    finally:
        assert server.stop() == 0


def test_a_tunnel_that_goes_away_cuts_its_streams_and_the_log_says_so(workdir, unbound):
    target = serve_tcp(echo)
    server = start_server(workdir, *doh_flags(unbound), "--access-log", "access.jsonl")
    client = start_client(workdir, server.port)
    try:
        with socks_connect(client.port, "web.tunnel.test", target.server_address[1]) as sock:
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"
            client.stop(signal.SIGKILL)  # the tunnel breaks with the stream open
            [line] = read_json_lines(workdir / "access.jsonl", 1)
    finally:
        assert server.stop() == 0
    assert (line["status"], line["ended"]) == ("OK", "cut")
    assert (line["bytes_up"], line["bytes_down"]) == (4, 4)
