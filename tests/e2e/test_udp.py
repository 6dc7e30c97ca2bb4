"""UDP through the tunnel end to end: PySocks and dnspython as SOCKS clients, real processes."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import pytest
import socks

from jproxy.socks.socks5 import build_udp_request
from jproxy.socks.udp_association import MAX_DATAGRAM
from jproxy.tunnel.handshake import ServerHandshake
from jproxy.tunnel.keys import UserDirectory
from schemas.fields import build, parse
from schemas.jproxy import Dialect
from schemas.socks5 import AddressType as SocksAddressType
from schemas.socks5 import SocksMethodRequest, SocksReply, SocksRequest
from tests.clients import DIALECT_FLAGS
from tests.peers import (
    Process,
    UdpEcho,
    Unbound,
    require_tool,
    scrape_metrics,
    start_client,
    start_server,
    wait_for_access,
)

DIALECTS = {"3.1": Dialect.SECURE_3_1, "3.0": Dialect.LEGACY_3_0}


def _tunnel(workdir: Path, dialect: str, *client_extra: str):
    """A server and a client in ``dialect``; the client, its ``server`` and ``dialect`` set."""
    server_flags, client_flags = DIALECT_FLAGS[dialect]
    server = start_server(workdir, *server_flags)
    client = start_client(workdir, server.port, *client_flags, *client_extra)
    client.server = server
    client.dialect = DIALECTS[dialect]
    yield client
    assert client.stop() == 0, client.log()
    assert server.stop() == 0, server.log()


@pytest.fixture(params=sorted(DIALECT_FLAGS))
def tunnel(request, workdir):
    yield from _tunnel(workdir, request.param)


def _socks_udp(
    socks_port: int, family: int = socket.AF_INET, proxy: str = "127.0.0.1"
) -> socks.socksocket:
    sock = socks.socksocket(family, socket.SOCK_DGRAM)
    sock.set_proxy(socks.SOCKS5, proxy, socks_port)
    sock.settimeout(10)
    return sock


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_pysocks_udp_echo(tunnel, host: str) -> None:
    echo = UdpEcho(host)
    sock = _socks_udp(tunnel.port)
    largest = MAX_DATAGRAM[tunnel.dialect]
    try:
        for size in (0, 1, 64, 1400, largest):
            payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
            sock.sendto(payload, echo.address)
            data, source = sock.recvfrom(65535)
            assert data == payload
            assert source[:2] == echo.address  # the real source in the SOCKS UDP header
        sock.sendto(bytes(largest + 1), echo.address)  # too large for one frame: dropped
        sock.sendto(b"after", echo.address)
        assert sock.recvfrom(65535)[0] == b"after"
        assert echo.received == 6
    finally:
        sock.close()
        echo.close()


def test_server_drops_and_counts_replies_too_large_for_a_frame(workdir) -> None:
    server = start_server(workdir, "--metrics", "127.0.0.1:0")
    metrics = server.wait_for(r"Prometheus metrics on (http://[\d.:]+/metrics)").group(1)
    client = start_client(workdir, server.port)
    big = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    big.bind(("127.0.0.1", 0))
    answer_big = threading.Thread(
        target=lambda: big.sendto(bytes(5000), big.recvfrom(100)[1]), daemon=True
    )
    answer_big.start()
    sock = _socks_udp(client.port)
    try:
        sock.sendto(b"x", big.getsockname())
        with pytest.raises(TimeoutError):
            sock.settimeout(1)
            sock.recvfrom(65535)
        with urllib.request.urlopen(metrics, timeout=10) as response:
            page = response.read().decode()
        assert 'gjproxy_datagrams_dropped_total{reason="too_large"} 1.0' in page
        assert "gjproxy_connections_open 1.0" in page  # the association counts as one
    finally:
        sock.close()
        big.close()
        assert client.stop() == 0, client.log()
        assert server.stop() == 0, server.log()


def test_dns_query_through_the_tunnel_to_unbound(tunnel, workdir) -> None:
    unbound = Unbound(workdir / "unbound", {"www.gjproxy.test": ("192.0.2.7", 60)})
    sock = _socks_udp(tunnel.port)
    try:
        query = dns.message.make_query("www.gjproxy.test", "A")
        answer = dns.query.udp(query, "127.0.0.1", port=unbound.dns_port, timeout=10, sock=sock)
        [rrset] = answer.answer
        assert [rdata.address for rdata in rrset] == ["192.0.2.7"]
    finally:
        sock.close()
        unbound.stop()


class RawAssociation:
    """A SOCKS5 UDP ASSOCIATE by hand: the control connection and the relay's address."""

    def __init__(
        self, socks_port: int, named: tuple[str, int] = ("0.0.0.0", 0), proxy: str = "127.0.0.1"
    ) -> None:
        self.family = socket.AF_INET6 if ":" in proxy else socket.AF_INET
        self.control = socket.create_connection((proxy, socks_port), timeout=10)
        self.control.sendall(build(SocksMethodRequest, {"methods": [0]}))
        assert self.control.recv(2) == b"\x05\x00"
        address = {"type": SocksAddressType.of(named[0]), "host": named[0]}
        request = {"command": 3, "address": address, "port": named[1]}
        self.control.sendall(build(SocksRequest, request))
        reply = parse(SocksReply, self.control.recv(22))
        assert reply.reply == 0
        self.relay = (reply.address.host, reply.port)

    def udp(self) -> socket.socket:
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        sock.bind((self.control.getsockname()[0], 0))
        sock.settimeout(2)
        return sock

    def close(self) -> None:
        self.control.close()


@pytest.fixture
def tunnel31(workdir):
    """A 3.1 tunnel whose client serves its metrics page (``metrics_port``)."""
    for client in _tunnel(workdir, "3.1", "--metrics", "127.0.0.1:0"):
        page = r"metrics: serving Prometheus metrics on http://127\.0\.0\.1:(\d+)/"
        client.metrics_port = int(client.wait_for(page).group(1))
        yield client


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
        dropped = scrape_metrics(tunnel31.metrics_port)
        assert dropped["gjproxy_datagrams_dropped_total{reason=source}"] == 1
        assert dropped["gjproxy_datagrams_dropped_total{reason=fragment}"] == 1
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


@pytest.fixture
def echoed(tunnel31):
    """An association on ``tunnel31`` that made one round trip: (association, its UDP socket,
    the echo's address)."""
    echo = UdpEcho()
    association = RawAssociation(tunnel31.port)
    sock = association.udp()
    sock.sendto(build_udp_request(*echo.address, b"x"), association.relay)
    assert sock.recvfrom(100)[0].endswith(b"x")
    yield association, sock, echo.address
    sock.close()
    association.close()
    echo.close()


def test_association_ends_with_its_tcp_connection(tunnel31, echoed) -> None:
    association, sock, echo_address = echoed
    association.close()
    wait_for_access(
        tunnel31.server, transport="udp", status="OK", ended="closed", bytes_up=1, bytes_down=1
    )
    time.sleep(0.2)
    sock.sendto(build_udp_request(*echo_address, b"y"), association.relay)
    with pytest.raises((TimeoutError, ConnectionRefusedError)):
        sock.recvfrom(100)


class UdpIgnoringServer:
    """A 3.0 server that logs clients in and then ignores every message, as the Java jProxy
    server ignores UDP (thread-based, so blocking SOCKS calls in the test do not stall it)."""

    def __init__(self, users: Path) -> None:
        self.users = UserDirectory(users)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        core = ServerHandshake(self.users, allow_legacy=True)
        with sock:
            sock.settimeout(60)
            try:
                while not core.finished:
                    data = sock.recv(core.bytes_needed)
                    if not data:
                        return
                    if reply := core.receive(data):
                        sock.sendall(reply)
                while sock.recv(65536):
                    pass
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


def test_a_30_server_that_ignores_udp_gets_a_failure_and_a_log_line(workdir) -> None:
    server = UdpIgnoringServer(workdir / "users")
    client = start_client(workdir, server.port, "--dialect", "3.0")
    echo = UdpEcho()
    try:
        sock = _socks_udp(client.port)
        sock.sendto(b"lost", echo.address)  # the associate for it is never answered
        client.wait_for(r"did not answer the associate within 10 s; a 3\.0 server", 30)
        sock.close()
        again = _socks_udp(client.port)
        with pytest.raises(socks.ProxyError):  # refused at once from now on
            again.sendto(b"x", echo.address)
        again.close()
        client.wait_for(r"UDP ASSOCIATE refused: the server ignores UDP")
        assert echo.received == 0
    finally:
        assert client.stop() == 0, client.log()
        server.close()
        echo.close()


def test_socks_port_on_ipv6_binds_its_udp_relay_on_ipv6(workdir) -> None:
    server = start_server(workdir)
    client = Process(
        *("client", "--server", f"127.0.0.1:{server.port}", "--socks", "[::1]:0"),
        cwd=workdir,
    )
    port = int(client.wait_for(r"SOCKS5 listening on ::1:(\d+)").group(1))
    client.wait_for(r"tunnel to .* up")
    echo = UdpEcho("::1")
    association = RawAssociation(port, ("::", 0), proxy="::1")
    sock = association.udp()
    try:
        assert association.relay[0] == "::1"  # bound beside the SOCKS connection
        sock.sendto(build_udp_request(*echo.address, b"six"), association.relay)
        assert sock.recvfrom(100)[0] == build_udp_request(*echo.address, b"six")
    finally:
        sock.close()
        association.close()
        echo.close()
        assert client.stop() == 0, client.log()
        assert server.stop() == 0, server.log()


def test_a_udp_flood_never_stalls_a_tcp_stream(tunnel31, web) -> None:
    """Datagrams as fast as a thread can send them, to a socket that never reads, while a
    1 MB download runs through the same tunnel: the download completes intact."""
    black_hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    black_hole.bind(("127.0.0.1", 0))
    association = RawAssociation(tunnel31.port)
    sender = association.udp()
    datagram = build_udp_request(*black_hole.getsockname(), bytes(1400))
    stop, flooding = threading.Event(), threading.Event()
    sent = [0]

    def flood() -> None:
        # Bounded by time (longer than curl's 60 s), not by count: a count ran out before a
        # download slowed by a busy machine had finished. Stopped after the download.
        deadline = time.monotonic() + 70
        while not stop.is_set() and time.monotonic() < deadline:
            sender.sendto(datagram, association.relay)
            sent[0] += 1
            if sent[0] == 2000:
                flooding.set()

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        assert flooding.wait(30)
        url = f"http://127.0.0.1:{web.server_address[1]}/f1000000"
        result = subprocess.run(
            [require_tool("curl"), "-sS", "--fail", "--max-time", "60"]
            + ["--socks5-hostname", f"127.0.0.1:{tunnel31.port}", url],
            capture_output=True,
            timeout=65,
        )
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout == (web.root / "f1000000").read_bytes()
        assert flooder.is_alive()  # the whole download ran during the flood
    finally:
        stop.set()
        flooder.join(10)
        sender.close()
        association.close()
        black_hole.close()


def test_association_ends_when_its_tunnel_ends(tunnel31, echoed) -> None:
    association, _, _ = echoed
    assert tunnel31.server.stop() == 0
    association.control.settimeout(10)
    assert association.control.recv(10) == b""  # the SOCKS client may associate anew
