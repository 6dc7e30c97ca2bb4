"""One admission budget for every kind of channel of a tunnel, on a real server in this process.

Streams, UDP associations and ICMP echoes share the server's ``--max-streams``: over it, a
request of any kind is refused with the protocol's status (6, connection limit) and the tunnel
and its other channels go on.
"""

from __future__ import annotations

import gevent
import pytest
from gevent import socket as gsocket

from jproxy.handlers.tunnel.datagrams import AssociateFailed
from jproxy.handlers.tunnel.server import ServerLimits
from schemas.jproxy import ConnectStatus
from tests.datagram_sink import DatagramSink
from tests.peers import UdpEcho, echo, serve_tcp
from tests.tunnel_in_process import serve_in_process


@pytest.fixture
def tunnel_with_limit(workdir):
    """``open(max_streams)``: a ``TunnelServer`` in this process and a running tunnel to it."""
    opened = []

    def open_(max_streams: int):
        server, tunnel, runner = serve_in_process(workdir, ServerLimits(max_streams=max_streams))
        opened.append((server, tunnel, runner))
        return tunnel

    yield open_
    for server, tunnel, runner in opened:
        tunnel.close()
        runner.join(5)
        server.stop()


def _echoed(tunnel, channel, sink: DatagramSink, data: bytes) -> None:
    assert tunnel.datagrams.send(channel, data)
    with gevent.Timeout(10):
        while data not in sink.received:
            gevent.sleep(0.01)


def test_a_connect_over_the_limit_that_an_association_holds_is_refused(tunnel_with_limit):
    """--max-streams 1: an association holds the one slot; a CONNECT gets status 6 and the
    tunnel lives (this used to spawn into a full pool in the hub and end the tunnel)."""
    tunnel = tunnel_with_limit(1)
    udp_echo, sink = UdpEcho(), DatagramSink()
    target = serve_tcp(echo)
    try:
        channel = tunnel.datagrams.associate(*udp_echo.address, sink, timeout=10)
        local, _ = gsocket.socketpair()
        _, (status, _) = tunnel.open_stream(
            "127.0.0.1", target.server_address[1], local, timeout=10
        )
        assert status is ConnectStatus.CONNECTION_LIMIT
        assert not tunnel.closed.is_set()
        _echoed(tunnel, channel, sink, b"still here")
        tunnel.datagrams.dissociate(channel)
        with gevent.Timeout(10):  # the slot comes back once the server's association ended
            while True:
                local, _ = gsocket.socketpair()
                _, (status, _) = tunnel.open_stream(
                    "127.0.0.1", target.server_address[1], local, timeout=10
                )
                if status is ConnectStatus.OK:
                    break
                assert status is ConnectStatus.CONNECTION_LIMIT
                gevent.sleep(0.05)
    finally:
        target.shutdown()
        udp_echo.close()


def test_an_association_over_the_limit_that_a_stream_holds_is_refused(tunnel_with_limit):
    tunnel = tunnel_with_limit(1)
    udp_echo = UdpEcho()
    target = serve_tcp(echo)
    try:
        local, _ = gsocket.socketpair()
        _, (status, _) = tunnel.open_stream(
            "127.0.0.1", target.server_address[1], local, timeout=10
        )
        assert status is ConnectStatus.OK
        with pytest.raises(AssociateFailed) as failed:
            tunnel.datagrams.associate(*udp_echo.address, DatagramSink(), timeout=10)
        assert failed.value.status is ConnectStatus.CONNECTION_LIMIT
        assert not tunnel.closed.is_set()
    finally:
        target.shutdown()
        udp_echo.close()
