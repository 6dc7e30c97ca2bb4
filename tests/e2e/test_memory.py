"""Memory returns after a burst: a real server's RSS after 64 tunnels x 16 streams (each
echoing 64 KiB) opened and closed comes back within 15 MB of its idle RSS.

The tunnels are 64 ``TunnelPool``s in this process (one tunnel each), against a real
``gjproxy server``. Bounded: about 15 s.
"""

from __future__ import annotations

import time

import gevent
from gevent import socket as gsocket

from jproxy.handlers.net.heap import TRIM_INTERVAL
from jproxy.handlers.tunnel.pool import TunnelPool
from jproxy.tunnel.keys import load_client_key
from schemas.jproxy import ConnectStatus, Dialect
from tests.peers import echo, serve_tcp, start_server

TUNNELS = 64
STREAMS = 16
PAYLOAD = 64 * 1024
ALLOWED_GROWTH_KIB = 15 * 1024


def _echo_through(tunnel: TunnelPool, port: int) -> None:
    mine, relayed = gsocket.socketpair()
    relay, (status, _) = tunnel.open_stream("127.0.0.1", port, relayed, 10)
    assert status is ConnectStatus.OK
    runner = gevent.spawn(relay.run)
    with mine:
        mine.sendall(bytes(PAYLOAD))
        got = 0
        while got < PAYLOAD:
            data = mine.recv(65536)
            assert data
            got += len(data)
    runner.join(timeout=10)


def _settled_rss(server, seconds: float) -> int:
    """The server's RSS once it stopped falling (or after ``seconds``)."""
    deadline = time.monotonic() + seconds
    last = server.rss_kib()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = server.rss_kib()
        if abs(now - last) < 256 and time.monotonic() > deadline - seconds + 2:
            return now
        last = now
    return last


def test_the_servers_memory_comes_back_after_a_burst(workdir) -> None:
    target = serve_tcp(echo)
    server = start_server(workdir, "--max-tunnels-per-user", str(TUNNELS))
    key = load_client_key(workdir / "key.dat")
    tunnels = [
        TunnelPool([("127.0.0.1", server.port)], key, Dialect.SECURE_3_1) for _ in range(TUNNELS)
    ]
    try:
        idle = _settled_rss(server, 3)
        for tunnel in tunnels:
            tunnel.start()
        assert all(tunnel.wait_until_up(20) for tunnel in tunnels)
        streams = [
            gevent.spawn(_echo_through, tunnel, target.server_address[1])
            for tunnel in tunnels
            for _ in range(STREAMS)
        ]
        gevent.joinall(streams, timeout=60, raise_error=True)
        peak = server.rss_kib()
        for tunnel in tunnels:
            tunnel.stop()
        server.wait_for(r"tunnel alice@\S+: closed", timeout=10)
        time.sleep(TRIM_INTERVAL + 1)  # the server's next look at its load comes within that
        after = _settled_rss(server, 3)
        print(f"server RSS: idle {idle} KiB, peak {peak} KiB, after the burst {after} KiB")
        assert after - idle < ALLOWED_GROWTH_KIB, (idle, peak, after)
        assert "Traceback" not in server.log()
    finally:
        for tunnel in tunnels:
            tunnel.stop()
        server.stop()
        target.shutdown()
