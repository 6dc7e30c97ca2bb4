"""The server's UDP associations with a ``TunnelServer`` and a tunnel to it both in this
process: an idle association is dissociated by the server."""

from __future__ import annotations

import gevent
import pytest

from jproxy.handlers.dns.resolver import SystemResolver
from jproxy.handlers.net.dialer import Dialer
from jproxy.handlers.tunnel.client import open_tunnel, serve_tunnel
from jproxy.handlers.tunnel.server import ServerLimits, TunnelServer
from jproxy.metrics import Counters
from jproxy.policy.egress import EgressPolicy
from jproxy.tunnel.keys import UserDirectory, load_client_key
from schemas.jproxy import Dialect, DisconnectReason
from tests.datagram_sink import Sink
from tests.peers import UdpEcho


@pytest.fixture
def in_process(workdir):
    """A ``TunnelServer`` in this process (short UDP idle timeout, loopback allowed) and a
    running tunnel to it."""
    limits = ServerLimits(udp_idle_timeout=0.5)
    policy = EgressPolicy.from_rules(["127.0.0.0/8"], [])
    dialer = Dialer(SystemResolver(), policy, limits.connect_timeout)
    server = TunnelServer(
        ("127.0.0.1", 0), UserDirectory(workdir / "users"), limits=limits, dialer=dialer
    )
    server.start()
    key = load_client_key(workdir / "key.dat")
    tunnel = open_tunnel(
        server.address, key, Dialect.SECURE_3_1, login_timeout=10, counters=Counters()
    )
    runner = gevent.spawn(serve_tunnel, tunnel)
    yield server, tunnel
    tunnel.close()
    runner.join(5)
    server.stop()


def test_server_dissociates_an_idle_association(in_process) -> None:
    server, tunnel = in_process
    echo = UdpEcho()
    sink = Sink()
    channel = tunnel.datagrams.associate(*echo.address, sink, timeout=10)
    assert server.counters.connections_open == 1
    tunnel.datagrams.send(channel, b"x")
    with gevent.Timeout(10):
        while not sink.endings:
            gevent.sleep(0.05)
    assert sink.received == [b"x"]
    assert sink.endings == [DisconnectReason.GENERAL]
    assert not tunnel.datagrams.core.channels  # the id is free again on the client
    assert server.counters.connections_open == 0
    assert server.counters.connections_total == 1
    assert server.counters.bytes_transferred == 2  # one byte each way
    echo.close()
