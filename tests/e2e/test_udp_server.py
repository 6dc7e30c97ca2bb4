"""A real server's UDP associations, driven by gjproxy's own tunnel code in this process (so the
test can ask for what the client never asks: a local port, a target the policy denies)."""

from __future__ import annotations

import socket

import gevent
import pytest

from jproxy.handlers.tunnel.client import open_tunnel, serve_tunnel
from jproxy.handlers.tunnel.datagrams import AssociateFailed
from jproxy.metrics import Counters
from jproxy.tunnel.keys import load_client_key
from schemas.jproxy import ConnectStatus, Dialect
from tests.datagram_sink import DatagramSink
from tests.peers import UdpEcho, start_server, wait_for_access


@pytest.fixture
def tunnel_to(workdir):
    """``connect(*server_flags, dialect=...)``: a running in-process tunnel to a new server."""
    opened = []

    def connect(*flags: str, dialect: Dialect = Dialect.SECURE_3_1, **options):
        server = start_server(workdir, *flags, **options)
        key = load_client_key(workdir / "key.dat")
        tunnel = open_tunnel(
            ("127.0.0.1", server.port), key, dialect, login_timeout=10, counters=Counters()
        )
        runner = gevent.spawn(serve_tunnel, tunnel)
        opened.append((server, tunnel, runner))
        tunnel.server = server
        return tunnel

    yield connect
    for server, tunnel, runner in opened:
        tunnel.close()
        runner.join(5)
        assert server.stop() == 0, server.log()


@pytest.mark.parametrize("dialect", list(Dialect))
def test_a_taken_local_port_is_refused(tunnel_to, dialect: Dialect) -> None:
    tunnel = tunnel_to("--allow-legacy", dialect=dialect)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("0.0.0.0", 0))
        with pytest.raises(AssociateFailed) as failed:
            tunnel.datagrams.associate(
                "127.0.0.1", 9, DatagramSink(), timeout=10, local_port=taken.getsockname()[1]
            )
    assert failed.value.status is ConnectStatus.GENERAL_FAILURE
    wait_for_access(
        tunnel.server,
        transport="udp",
        target="127.0.0.1:9",
        status="GENERAL_FAILURE",
        reason="local port not available.*",
    )
    echo = UdpEcho()
    sink = DatagramSink()
    channel = tunnel.datagrams.associate(*echo.address, sink, timeout=10)  # the tunnel goes on
    assert tunnel.datagrams.send(channel, b"ping")
    with gevent.Timeout(10):
        while not sink.received:
            gevent.sleep(0.01)
    assert sink.received == [b"ping"]
    echo.close()


def test_a_requested_free_local_port_is_bound(tunnel_to) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("0.0.0.0", 0))
        free = probe.getsockname()[1]
    tunnel = tunnel_to()
    echo = UdpEcho()
    sink = DatagramSink()
    channel = tunnel.datagrams.associate(*echo.address, sink, timeout=10, local_port=free)
    tunnel.datagrams.send(channel, b"x")
    with gevent.Timeout(10):
        while not sink.received:
            gevent.sleep(0.01)
    assert echo.sources == [("127.0.0.1", free)]
    echo.close()


def test_egress_policy_applies_to_udp(tunnel_to) -> None:
    tunnel = tunnel_to(allow_loopback=False)
    with pytest.raises(AssociateFailed) as failed:
        tunnel.datagrams.associate("127.0.0.1", 53, DatagramSink(), timeout=10)
    assert failed.value.status is ConnectStatus.NOT_ALLOWED


def test_dissociate_closes_the_servers_socket(tunnel_to) -> None:
    tunnel = tunnel_to()
    echo = UdpEcho()
    channel = tunnel.datagrams.associate(*echo.address, DatagramSink(), timeout=10)
    tunnel.datagrams.dissociate(channel)
    gevent.sleep(0.1)  # the tunnel's writer sends the dissociate (wait_for blocks gevent)
    done = wait_for_access(tunnel.server, transport="udp", status="OK", ended="closed", bytes_up=0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as reuse:
        reuse.bind(("0.0.0.0", done["local_port"]))  # the server's socket is gone
    echo.close()
