"""The server's plain SOCKS5 port, end to end: curl and raw SOCKS clients, DoH names from
unbound, RFC 1929 users from [socks_users], the JSON access log, admin and Prometheus."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import struct
import subprocess
import time

import pytest

from tests.clients import ADMIN_ENV, admin_output, socks_connect
from tests.conftest import DNS_RECORDS
from tests.peers import (
    SOCKS_PASSWORDS,
    Unbound,
    curl_socks,
    digest_after_eof,
    echo,
    read_json_lines,
    require_tool,
    scrape_metrics,
    serve_tcp,
    start_client,
    start_socks_server,
    write_socks_config,
)


@pytest.fixture
def socks_server(workdir, unbound):
    server = start_socks_server(workdir, unbound)
    yield server
    assert server.stop() == 0, server.log()


def login(user: str, password: str | None = None) -> tuple[str, str]:
    """curl's flags for an RFC 1929 login as ``user``."""
    return ("--proxy-user", f"{user}:{password if password is not None else SOCKS_PASSWORDS[user]}")


def test_curl_reaches_a_name_only_the_doh_server_knows(socks_server, web, workdir):
    url = f"http://web.tunnel.test:{web.server_port}/f65536"
    result = curl_socks(socks_server.socks, url, *login("carol"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == (web.root / "f65536").read_bytes()
    [line] = read_json_lines(workdir / "access.jsonl", 1)
    assert line["service"] == "socks"
    assert line["user"] == "carol"
    assert line["client"].startswith("127.0.0.1:")
    assert line["target"] == f"web.tunnel.test:{web.server_port}"
    assert line["connected"] == f"127.0.0.1:{web.server_port}"
    assert (line["status"], line["ended"], line["reason"]) == ("OK", "closed", "")
    assert line["bytes_down"] > 65536 and 0 < line["bytes_up"] < 1000
    assert line["duration"] >= line["connect_ms"] / 1000


def test_rfc1929_good_and_bad_passwords_and_no_auth_refused(socks_server, web, workdir):
    url = f"http://web.tunnel.test:{web.server_port}/f1"
    assert curl_socks(socks_server.socks, url, *login("dave")).returncode == 0
    wrong = curl_socks(socks_server.socks, url, *login("dave", "carol's"))
    assert wrong.returncode == 97, wrong.stderr  # curl: SOCKS authentication failed
    nobody = curl_socks(socks_server.socks, url, *login("mallory", "x"))
    assert nobody.returncode == 97, nobody.stderr
    anonymous = curl_socks(socks_server.socks, url)
    assert anonymous.returncode == 97, anonymous.stderr
    assert b"No authentication method was acceptable" in anonymous.stderr
    socks_server.wait_for(r"refused: wrong user name or password")
    socks_server.wait_for(r"refused: no acceptable method")
    assert len(read_json_lines(workdir / "access.jsonl", 1)) == 1  # refused logins open nothing


def test_no_auth_only_when_configured(workdir, unbound, web):
    from tests.peers import Process

    refused = Process("server", "--users", "users", "--socks", "127.0.0.1:0", cwd=workdir)
    assert refused.proc.wait(30) == 2
    assert "--socks needs users ([socks_users] in the config file) or --socks-no-auth" in (
        refused.log()
    )
    config = write_socks_config(workdir, users=False, no_auth=True)
    server = start_socks_server(workdir, unbound, config=config)
    try:
        url = f"http://web.tunnel.test:{web.server_port}/f1"
        result = curl_socks(server.socks, url)
        assert result.returncode == 0, result.stderr
        assert read_json_lines(workdir / "access.jsonl", 1)[0]["user"] == ""
    finally:
        assert server.stop() == 0


def socks_request(port: int, command: int) -> bytes:
    """No-auth greeting, then ``command`` for 127.0.0.1:80; the server's reply bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert sock.recv(2) == b"\x05\x00"
        sock.sendall(bytes([5, command, 0, 1, 127, 0, 0, 1, 0, 80]))
        return sock.recv(64)


def test_bind_answers_07(workdir, unbound):
    server = start_socks_server(
        workdir, unbound, "--socks-no-auth", config=write_socks_config(workdir, users=False)
    )
    try:
        assert socks_request(server.socks_port, 2)[:2] == b"\x05\x07"
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize(
    ("how", "why"),
    [("stopped", "Connection refused"), ("stalled", "no answer from https://127.0.0.1:")],
)
def test_a_dead_doh_server_is_host_unreachable_in_time_and_the_log_says_why(
    workdir, tmp_path, web, how, why
):
    unbound = Unbound(tmp_path / "own-unbound", DNS_RECORDS)
    server = start_socks_server(workdir, unbound, "--connect-timeout", "2")
    try:
        url = f"http://web.tunnel.test:{web.server_port}/f1"
        assert curl_socks(server.socks, url, *login("carol")).returncode == 0
        if how == "stopped":
            unbound.stop()
        else:
            unbound.proc.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        url = f"http://n2.tunnel.test:{web.server_port}/f1"
        result = curl_socks(server.socks, url, *login("carol"))
        assert time.monotonic() - started < 3  # the connect timeout, and a little
        assert result.returncode == 97
        assert b"(4)" in result.stderr  # SOCKS reply 04: host unreachable
    finally:
        unbound.proc.send_signal(signal.SIGCONT)
        unbound.stop()
        assert server.stop() == 0
    ok, failed = read_json_lines(workdir / "access.jsonl", 2)
    assert ok["status"] == "OK"
    assert (failed["status"], failed["ended"]) == ("UNKNOWN_HOST", "failed")
    assert failed["target"] == f"n2.tunnel.test:{web.server_port}"
    assert why in failed["reason"], failed["reason"]
    assert failed["connect_ms"] < 2500


def test_admin_and_prometheus_count_each_service_and_the_dns_cache(workdir, unbound, web):
    server = start_socks_server(
        workdir, unbound, "--admin", "127.0.0.1:0", "--metrics", "127.0.0.1:0", env=ADMIN_ENV
    )
    admin_port = int(server.wait_for(r"admin protocol over \w+ on 127\.0\.0\.1:(\d+)").group(1))
    metrics_port = int(server.wait_for(r"metrics: .*http://127\.0\.0\.1:(\d+)/").group(1))
    client = start_client(workdir, server.port)
    try:
        url = f"http://web.tunnel.test:{web.server_port}/f4081"
        for _ in range(3):
            assert curl_socks(server.socks, url, *login("carol")).returncode == 0
        for _ in range(2):
            assert curl_socks(f"127.0.0.1:{client.port}", url).returncode == 0
        lines = read_json_lines(workdir / "access.jsonl", 5)
        deadline = time.monotonic() + 10
        while (found := scrape_metrics(metrics_port))["gjproxy_connections_open"] and (
            time.monotonic() < deadline
        ):
            time.sleep(0.05)
        by_service = {
            service: sum(
                line["bytes_up"] + line["bytes_down"]
                for line in lines
                if line["service"] == service
            )
            for service in ("socks", "tunnel")
        }
        assert [line["service"] for line in lines] == ["socks"] * 3 + ["tunnel"] * 2
        assert found["gjproxy_service_connections_total{service=socks}"] == 3
        assert found["gjproxy_service_connections_total{service=tunnel}"] == 2
        assert found["gjproxy_service_connections_open{service=socks}"] == 0
        assert found["gjproxy_connections_total"] == 5
        assert found["gjproxy_connections_open"] == 0
        for service, total in by_service.items():
            assert found[f"gjproxy_service_transferred_bytes_total{{service={service}}}"] == total
        assert found["gjproxy_transferred_bytes_total"] == sum(by_service.values())
        assert found["gjproxy_doh_lookup_seconds_count"] == 1  # one name, then the cache
        assert found["gjproxy_doh_lookup_seconds_sum"] > 0
        assert found["gjproxy_dns_cache_misses_total"] == 1
        assert found["gjproxy_dns_cache_hits_total"] == 4
        assert found["gjproxy_doh_failures_total"] == 0
        assert admin_output(admin_port, "connections") == "5"
        assert admin_output(admin_port, "open") == "0"
        assert admin_output(admin_port, "bytes") == str(sum(by_service.values()))
        assert re.fullmatch(
            r"doh=1,failures=0,ms=\d+,hits=4,misses=1", admin_output(admin_port, "dns")
        )
    finally:
        assert client.stop() == 0
        assert server.stop() == 0


def reset_after_reading(sock: socket.socket) -> None:
    sock.recv(100)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.fixture
def open_port(workdir, unbound):
    config = write_socks_config(workdir, users=False, no_auth=True)
    server = start_socks_server(workdir, unbound, "--idle-timeout", "1", config=config)
    yield server
    assert server.stop() == 0, server.log()


def test_half_close_travels_and_the_end_is_clean(open_port, workdir):
    target = serve_tcp(digest_after_eof)
    data = os.urandom(1_000_000)
    with socks_connect(open_port.socks_port, "web.tunnel.test", target.server_address[1]) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer == hashlib.sha256(data).hexdigest().encode() * 1000
    [line] = read_json_lines(workdir / "access.jsonl", 1)
    assert (line["ended"], line["bytes_up"], line["bytes_down"]) == ("closed", 1_000_000, 64_000)


def test_a_reset_by_the_target_reaches_the_client_as_a_reset(open_port, workdir):
    target = serve_tcp(reset_after_reading)
    with socks_connect(open_port.socks_port, "web.tunnel.test", target.server_address[1]) as sock:
        sock.sendall(b"hello")
        with pytest.raises(ConnectionResetError):
            sock.recv(100)
    [line] = read_json_lines(workdir / "access.jsonl", 1)
    assert (line["ended"], line["bytes_up"]) == ("reset", 5)


def test_an_idle_connection_is_reset_after_the_idle_timeout(open_port, workdir):
    target = serve_tcp(echo)
    with socks_connect(open_port.socks_port, "web.tunnel.test", target.server_address[1]) as sock:
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
        started = time.monotonic()
        with pytest.raises(ConnectionResetError):
            sock.recv(100)
        assert 0.9 < time.monotonic() - started < 5
    [line] = read_json_lines(workdir / "access.jsonl", 1)
    assert (line["ended"], line["bytes_up"], line["bytes_down"]) == ("idle", 4, 4)


def test_concurrent_connects_share_one_doh_connection(workdir, tmp_path, web):
    unbound = Unbound(tmp_path / "own-unbound", DNS_RECORDS)
    config = write_socks_config(workdir, users=False, no_auth=True)
    server = start_socks_server(workdir, unbound, "--metrics", "127.0.0.1:0", config=config)
    metrics_port = int(server.wait_for(r"metrics: .*http://127\.0\.0\.1:(\d+)/").group(1))
    names = [f"n{index}.tunnel.test" for index in range(32)]
    try:
        curls = [
            subprocess.Popen(
                [require_tool("curl"), "-sS", "--max-time", "20", "--socks5-hostname", server.socks]
                + [f"http://{name}:{web.server_port}/"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name in names
        ]
        # Nothing listens on 127.0.1.N: each connect is refused (05), after its DoH lookup.
        assert [curl.wait(30) for curl in curls] == [97] * len(names)
        assert unbound.https_connections() == 1
        assert unbound.statistics()["num.query.https"] == 2 * len(names)
        found = scrape_metrics(metrics_port)
        assert found["gjproxy_doh_lookup_seconds_count"] == len(names)
    finally:
        unbound.stop()
        assert server.stop() == 0
    lines = read_json_lines(workdir / "access.jsonl", len(names))
    assert sorted(line["connected"] for line in lines) == [""] * len(names)
    assert {(line["status"], line["ended"]) for line in lines} == {("REFUSED", "failed")}
