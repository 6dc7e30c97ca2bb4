"""The server's UDP associations with a ``TunnelServer`` and a tunnel to it both in this
process: an idle association is dissociated by the server."""

from __future__ import annotations

import gevent
import pytest

from jproxy.handlers.tunnel.server import ServerLimits
from jproxy.tunnel.mux import Ending
from tests.datagram_sink import DatagramSink
from tests.peers import UdpEcho
from tests.tunnel_in_process import serve_in_process


@pytest.fixture
def in_process(workdir):
    """A ``TunnelServer`` in this process (short UDP idle timeout, loopback allowed) and a
    running tunnel to it."""
    server, tunnel, runner = serve_in_process(workdir, ServerLimits(udp_idle_timeout=0.5))
    yield server, tunnel
    tunnel.close()
    runner.join(5)
    server.stop()


def test_server_dissociates_an_idle_association(in_process) -> None:
    server, tunnel = in_process
    echo = UdpEcho()
    sink = DatagramSink()
    channel = tunnel.datagrams.associate(*echo.address, sink, timeout=10)
    assert server.counters.connections_open == 1
    tunnel.datagrams.send(channel, b"x")
    with gevent.Timeout(10):
        while not sink.endings:
            gevent.sleep(0.05)
    assert sink.received == [b"x"]
    assert sink.endings == [Ending.CLOSED]  # the wire's reason GENERAL
    assert not tunnel.channels.channels  # the id is free again on the client
    assert server.counters.connections_open == 0
    assert server.counters.connections_total == 1
    assert server.counters.bytes_transferred == 2  # one byte each way
    echo.close()
