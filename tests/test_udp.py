"""UDP through the tunnel end to end: PySocks and dnspython as SOCKS clients, real processes."""

from __future__ import annotations

import socket
import struct
import time

import dns.message
import dns.query
import pytest
import socks

from jproxy.socks5 import build_udp_request
from schemas.fields import parse
from schemas.socks5 import SocksReply
from tests.peers import (
    UNBOUND_ANSWER,
    UNBOUND_ZONE,
    UdpEcho,
    start_client,
    start_server,
    start_unbound,
)

DIALECT_FLAGS = {"3.1": ((), ()), "3.0": (("--allow-legacy",), ("--dialect", "3.0"))}


@pytest.fixture(params=sorted(DIALECT_FLAGS))
def tunnel(request, workdir):
    server_flags, client_flags = DIALECT_FLAGS[request.param]
    server = start_server(workdir, *server_flags)
    client = start_client(workdir, server.port, *client_flags)
    client.server = server
    yield client
    assert client.stop() == 0, client.log()
    assert server.stop() == 0, server.log()


def _socks_udp(socks_port: int, family: int = socket.AF_INET) -> socks.socksocket:
    sock = socks.socksocket(family, socket.SOCK_DGRAM)
    sock.set_proxy(socks.SOCKS5, "127.0.0.1", socks_port)
    sock.settimeout(10)
    return sock


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_pysocks_udp_echo(tunnel, host: str) -> None:
    echo = UdpEcho(host)
    sock = _socks_udp(tunnel.port)
    try:
        for size in (0, 1, 64, 1400, 4058):
            payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
            sock.sendto(payload, echo.address)
            data, source = sock.recvfrom(65535)
            assert data == payload
            assert source[:2] == echo.address  # the real source in the SOCKS UDP header
    finally:
        sock.close()
        echo.close()


def test_dns_query_through_the_tunnel_to_unbound(tunnel, workdir) -> None:
    unbound, port = start_unbound(workdir)
    sock = _socks_udp(tunnel.port)
    try:
        query = dns.message.make_query(f"www.{UNBOUND_ZONE}", "A")
        answer = dns.query.udp(query, "127.0.0.1", port=port, timeout=10, sock=sock)
        [rrset] = answer.answer
        assert [rdata.address for rdata in rrset] == [UNBOUND_ANSWER]
    finally:
        sock.close()
        unbound.terminate()
        unbound.wait(10)


class RawAssociation:
    """A SOCKS5 UDP ASSOCIATE by hand: the control connection and the relay's address."""

    def __init__(self, socks_port: int, named: tuple[str, int] = ("0.0.0.0", 0)) -> None:
        self.control = socket.create_connection(("127.0.0.1", socks_port), timeout=10)
        self.control.sendall(b"\x05\x01\x00")
        assert self.control.recv(2) == b"\x05\x00"
        host = socket.inet_aton(named[0])
        self.control.sendall(b"\x05\x03\x00\x01" + host + struct.pack(">H", named[1]))
        reply = parse(SocksReply, self.control.recv(10))
        assert reply.reply == 0
        self.relay = (reply.address.host, reply.port)

    def udp(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2)
        return sock

    def close(self) -> None:
        self.control.close()


def _metric(lines: list[str], pattern: str) -> str:
    return next(line for line in lines if pattern in line)


@pytest.fixture
def tunnel31(workdir):
    server = start_server(workdir)
    client = start_client(workdir, server.port)
    client.server = server
    yield client
    assert client.stop() == 0, client.log()
    assert server.stop() == 0, server.log()


def test_datagrams_from_another_socket_and_fragments_are_dropped(tunnel31) -> None:
    echo = UdpEcho()
    association = RawAssociation(tunnel31.port)
    owner, stranger = association.udp(), association.udp()
    try:
        owner.sendto(build_udp_request(*echo.address, b"first"), association.relay)
        assert owner.recvfrom(100)[0].endswith(b"first")
        stranger.sendto(build_udp_request(*echo.address, b"stranger"), association.relay)
        fragment = bytearray(build_udp_request(*echo.address, b"fragment"))
        fragment[2] = 1
        owner.sendto(bytes(fragment), association.relay)
        owner.sendto(build_udp_request(*echo.address, b"after"), association.relay)
        assert owner.recvfrom(100)[0].endswith(b"after")
        with pytest.raises(TimeoutError):
            stranger.recvfrom(100)
        assert echo.received == 2  # neither the stranger's datagram nor the fragment went on
    finally:
        for sock in (owner, stranger):
            sock.close()
        association.close()
        echo.close()


def test_a_named_source_port_is_the_only_one_accepted(tunnel31) -> None:
    echo = UdpEcho()
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    probe.settimeout(2)
    association = RawAssociation(tunnel31.port, probe.getsockname())
    first_comer = association.udp()
    try:
        first_comer.sendto(build_udp_request(*echo.address, b"no"), association.relay)
        probe.sendto(build_udp_request(*echo.address, b"yes"), association.relay)
        assert probe.recvfrom(100)[0].endswith(b"yes")
        assert echo.received == 1
    finally:
        for sock in (probe, first_comer):
            sock.close()
        association.close()
        echo.close()


def test_thousand_datagrams_arrive_complete(tunnel) -> None:
    echo = UdpEcho()
    sock = _socks_udp(tunnel.port)
    try:
        sock.sendto(b"open", echo.address)  # the destination's association is set up first
        assert sock.recvfrom(100)[0] == b"open"
        received = set()
        for number in range(1000):
            sock.sendto(b"%04d" % number + bytes(60), echo.address)
            if number % 50 == 49:  # a modest rate: let the echoes catch up every 50
                while len(received) < number + 1:
                    received.add(sock.recvfrom(100)[0][:4])
        assert received == {b"%04d" % number for number in range(1000)}
    finally:
        sock.close()
        echo.close()


def test_association_ends_with_its_tcp_connection(tunnel31) -> None:
    echo = UdpEcho()
    association = RawAssociation(tunnel31.port)
    sock = association.udp()
    try:
        sock.sendto(build_udp_request(*echo.address, b"x"), association.relay)
        assert sock.recvfrom(100)[0].endswith(b"x")
        association.close()
        tunnel31.server.wait_for(r"alice udp 127\.0\.0\.1:\d+ OK .* sent=1 received=1")
        time.sleep(0.2)
        sock.sendto(build_udp_request(*echo.address, b"y"), association.relay)
        with pytest.raises((TimeoutError, ConnectionRefusedError)):
            sock.recvfrom(100)
    finally:
        sock.close()
        echo.close()
