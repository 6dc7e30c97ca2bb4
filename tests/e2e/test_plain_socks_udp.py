"""UDP ASSOCIATE on the server's plain SOCKS5 port, end to end, and DNS over UDP to a name only
the test's DoH server knows, through the tunnel's relay and through the plain port: PySocks and
dnspython as the SOCKS client, unbound as DoH and DNS server, the JSON access log checked."""

from __future__ import annotations

import socket

import dns.message
import pytest
import socks

from jproxy.config import host_port_text
from tests.peers import (
    SOCKS_PASSWORDS,
    UdpEcho,
    read_json_lines,
    scrape_metrics,
    start_client,
    start_server,
    start_socks_server,
)

DNS_NAME = "web.tunnel.test"
"""Where the DNS query is sent: a name that only the test's unbound knows (127.0.0.1)."""
ASKED = ("n5.tunnel.test", "127.0.1.5")
"""What the query asks: another name of unbound's."""


def pysocks_udp(port: int, user: str | None = None) -> socks.socksocket:
    """A PySocks UDP socket through the SOCKS port ``port`` (as ``user`` when given); names
    travel unresolved."""
    sock = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
    password = SOCKS_PASSWORDS[user] if user else None
    sock.set_proxy(socks.SOCKS5, "127.0.0.1", port, username=user, password=password)
    sock.settimeout(10)
    return sock


@pytest.fixture
def plain_socks(workdir, unbound):
    server = start_socks_server(workdir, unbound, "--metrics", "127.0.0.1:0")
    server.metrics_port = int(server.wait_for(r"metrics: .*http://127\.0\.0\.1:(\d+)/").group(1))
    yield server
    assert server.stop() == 0, server.log()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_pysocks_udp_echo_straight_out_and_its_access_record(plain_socks, workdir, host) -> None:
    echo = UdpEcho(host)
    sock = pysocks_udp(plain_socks.socks_port, "carol")
    sizes = (0, 1, 512, 4096, 60000)  # beyond a tunnel frame: the plain port has no frames
    try:
        for size in sizes:
            payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
            sock.sendto(payload, echo.address)
            data, source = sock.recvfrom(65535)
            assert data == payload
            assert source[:2] == echo.address  # the real source in the SOCKS UDP header
        found = scrape_metrics(plain_socks.metrics_port)
        assert found["gjproxy_service_connections_open{service=socks}"] == 1
    finally:
        sock.close()  # closes the control connection too: the association ends
    [record] = read_json_lines(workdir / "access.jsonl", 1)
    echo.close()
    assert [source[0] for source in echo.sources] == [host] * len(sizes)
    [server_port] = {source[1] for source in echo.sources}  # one socket for the destination
    target = host_port_text(echo.address)
    assert (record["service"], record["transport"], record["user"]) == ("socks", "udp", "carol")
    assert record["client"].startswith("127.0.0.1:")
    assert (record["target"], record["connected"]) == (target, target)
    assert record["local_port"] == server_port
    assert (record["status"], record["ended"], record["reason"]) == ("OK", "closed", "")
    assert record["bytes_up"] == record["bytes_down"] == sum(sizes)
    assert 0 <= record["connect_ms"] <= record["duration"] * 1000 + 1
    found = scrape_metrics(plain_socks.metrics_port)
    assert found["gjproxy_service_connections_total{service=socks}"] == 1
    assert found["gjproxy_service_connections_open{service=socks}"] == 0
    assert found["gjproxy_service_transferred_bytes_total{service=socks}"] == 2 * sum(sizes)


def test_a_stranger_cannot_answer_through_the_destination_socket(plain_socks, workdir) -> None:
    echo = UdpEcho()
    sock = pysocks_udp(plain_socks.socks_port, "dave")
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.sendto(b"hello", echo.address)
        assert sock.recvfrom(100)[0] == b"hello"
        [server_side] = set(echo.sources)
        stranger.sendto(b"spoofed", server_side)  # to the server's socket for the echo
        sock.sendto(b"again", echo.address)
        assert sock.recvfrom(100) == (b"again", echo.address)  # the stranger's never came
    finally:
        sock.close()
        stranger.close()
        echo.close()


def test_egress_denied_destination_is_dropped_counted_and_logged_once(workdir, unbound) -> None:
    server = start_socks_server(workdir, unbound, "--metrics", "127.0.0.1:0", allow_loopback=False)
    metrics_port = int(server.wait_for(r"metrics: .*http://127\.0\.0\.1:(\d+)/").group(1))
    echo = UdpEcho()
    sock = pysocks_udp(server.socks_port, "carol")
    try:
        sock.sendto(b"first", echo.address)
        server.wait_for(r"UDP 127\.0\.0\.1:\d+ refused: not allowed")
        sock.sendto(b"second", echo.address)  # the destination stays refused: no new lookup
        sock.settimeout(1)
        with pytest.raises(TimeoutError):
            sock.recvfrom(100)
        found = scrape_metrics(metrics_port)
        assert found["gjproxy_datagrams_dropped_total{reason=refused}"] == 2
        assert echo.received == 0
    finally:
        sock.close()
        echo.close()
        assert server.stop() == 0, server.log()
    [record] = read_json_lines(workdir / "access.jsonl", 1)
    target = f"127.0.0.1:{echo.address[1]}"
    assert (record["service"], record["transport"], record["user"]) == ("socks", "udp", "carol")
    assert (record["target"], record["connected"], record["local_port"]) == (target, "", 0)
    assert (record["status"], record["ended"]) == ("NOT_ALLOWED", "refused")
    assert "not allowed" in record["reason"]
    assert record["bytes_up"] == record["bytes_down"] == 0


def ask_over_socks_udp(sock: socks.socksocket, dns_port: int) -> list[str]:
    """Ask unbound for ``ASKED`` at ``DNS_NAME:dns_port`` (resolved by the server, over DoH)."""
    query = dns.message.make_query(ASKED[0], "A")
    sock.sendto(query.to_wire(), (DNS_NAME, dns_port))
    data, source = sock.recvfrom(65535)
    assert source[:2] == (DNS_NAME.encode(), dns_port)  # as the client named it (PySocks: bytes)
    answer = dns.message.from_wire(data)
    assert answer.id == query.id
    return [rdata.address for rrset in answer.answer for rdata in rrset]


def check_dns_record(record: dict, service: str, user: str, dns_port: int) -> None:
    assert (record["service"], record["transport"], record["user"]) == (service, "udp", user)
    assert record["target"] == f"{DNS_NAME}:{dns_port}"  # a name stays a name
    assert record["connected"] == f"127.0.0.1:{dns_port}"  # so DoH answered it
    assert (record["status"], record["ended"], record["reason"]) == ("OK", "closed", "")
    assert record["local_port"] > 0
    assert 0 < record["bytes_up"] < record["bytes_down"]


def test_dns_over_udp_to_a_doh_only_name_through_the_tunnel(workdir, unbound) -> None:
    doh = ("--doh", unbound.doh_url, "--doh-ca", str(unbound.cert))
    server = start_server(workdir, *doh, "--access-log", "access.jsonl")
    client = start_client(workdir, server.port)
    sock = pysocks_udp(client.port)
    try:
        assert ask_over_socks_udp(sock, unbound.dns_port) == [ASKED[1]]
    finally:
        sock.close()
        assert client.stop() == 0, client.log()
        assert server.stop() == 0, server.log()
    [record] = read_json_lines(workdir / "access.jsonl", 1)
    check_dns_record(record, "tunnel", "alice", unbound.dns_port)


def test_dns_over_udp_to_a_doh_only_name_through_the_plain_port(
    plain_socks, workdir, unbound
) -> None:
    sock = pysocks_udp(plain_socks.socks_port, "dave")
    try:
        assert ask_over_socks_udp(sock, unbound.dns_port) == [ASKED[1]]
    finally:
        sock.close()
    [record] = read_json_lines(workdir / "access.jsonl", 1)
    check_dns_record(record, "socks", "dave", unbound.dns_port)
