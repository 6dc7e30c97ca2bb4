"""1,100 channels of every kind on one tunnel to a real server: over ``--max-streams`` each
request is refused with the protocol's status (6, connection limit), one by one, while the
tunnel and the channels it holds go on.

The client side is gjproxy's own tunnel code in this process (the SOCKS port cannot ask for
ICMP echoes); the server is a real ``gjproxy server`` process with its defaults (1,024
channels, 256 UDP associations per tunnel).
"""

from __future__ import annotations

import gevent
import pytest
from gevent import socket as gsocket
from gevent.server import StreamServer

from jproxy.handlers.tunnel.client import open_tunnel, serve_tunnel
from jproxy.handlers.tunnel.datagrams import AssociateFailed
from jproxy.metrics import Counters
from jproxy.tunnel.keys import load_client_key
from jproxy.tunnel.mux import DEFAULT_MAX_CHANNELS
from schemas.jproxy import ConnectStatus, Dialect
from tests.datagram_sink import DatagramSink
from tests.peers import UdpEcho, start_server

STREAMS = 900
ASSOCIATIONS = DEFAULT_MAX_CHANNELS - STREAMS
OVER = 76
"""Requests past the budget: a third streams, a third associations, a third echoes."""


def _echo(sock, _address) -> None:
    try:
        while data := sock.recv(65536):
            sock.sendall(data)
    except OSError:
        pass  # the tunnel's end resets what it holds


@pytest.fixture
def target():
    server = StreamServer(("127.0.0.1", 0), _echo)
    server.start()
    yield server
    server.stop(timeout=1)


def test_requests_of_every_kind_past_the_budget_are_refused_one_by_one(workdir, target):
    server = start_server(workdir)
    key = load_client_key(workdir / "key.dat")
    tunnel = open_tunnel(
        ("127.0.0.1", server.port), key, Dialect.SECURE_3_1, login_timeout=10, counters=Counters()
    )
    tunnel.channels.max_channels = 2 * DEFAULT_MAX_CHANNELS  # the server's refusals are tested
    runner = gevent.spawn(serve_tunnel, tunnel)
    udp_echo = UdpEcho()
    held: list[tuple] = []
    try:
        for _ in range(STREAMS):
            app, ours = gsocket.socketpair()
            relay, (status, _) = tunnel.open_stream("127.0.0.1", target.server_port, ours, 10)
            assert status is ConnectStatus.OK
            gevent.spawn(relay.run)
            held.append((app, relay))
        sink = DatagramSink()
        associations = [
            tunnel.datagrams.associate(*udp_echo.address, sink, timeout=10)
            for _ in range(ASSOCIATIONS)
        ]
        refusals = []
        for number in range(OVER):
            kind = number % 3
            if kind == 0:
                app, ours = gsocket.socketpair()
                _, (status, _) = tunnel.open_stream("127.0.0.1", target.server_port, ours, 10)
                app.close()
            elif kind == 1:
                with pytest.raises(AssociateFailed) as failed:
                    tunnel.datagrams.associate(*udp_echo.address, DatagramSink(), timeout=10)
                status = failed.value.status
            else:
                status = tunnel.datagrams.echo("127.0.0.1", 1000, b"ping", 10).status
            refusals.append(status)
        assert refusals == [ConnectStatus.CONNECTION_LIMIT] * OVER
        assert not tunnel.closed.is_set()
        # the channels it holds live on: streams echo, associations carry datagrams
        for app, _ in held[:: STREAMS // 10]:
            app.sendall(b"still here")
            with gevent.Timeout(10):
                got = b""
                while len(got) < 10:
                    got += app.recv(64)
            assert got == b"still here"
        assert tunnel.datagrams.send(associations[-1], b"and here")
        with gevent.Timeout(10):
            while b"and here" not in sink.received:
                gevent.sleep(0.01)
        # one freed slot is taken by the next request
        app, relay = held.pop()
        app.close()
        with gevent.Timeout(10):
            while len(tunnel.channels.channels) >= DEFAULT_MAX_CHANNELS:
                gevent.sleep(0.01)
        gevent.sleep(0.2)  # the server's end of it leaves too
        answer = tunnel.datagrams.echo("127.0.0.1", 1000, b"ping", 10)
        assert answer.status is not ConnectStatus.CONNECTION_LIMIT
    finally:
        for app, _ in held:
            app.close()
        tunnel.close()
        runner.join(10)
        udp_echo.close()
        assert server.stop() == 0, server.log()
    assert "Traceback" not in server.log()
    assert "internal error" not in server.log()
