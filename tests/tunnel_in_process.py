"""A tunnel server and a tunnel to it, both in the test's own process, for the io tests of
what a ``TunnelServer`` does with its limits."""

from __future__ import annotations

import gevent

from jproxy.handlers.dns.resolver import SystemResolver
from jproxy.handlers.net.dialer import Dialer
from jproxy.handlers.tunnel.client import open_tunnel, serve_tunnel
from jproxy.handlers.tunnel.driver import Tunnel
from jproxy.handlers.tunnel.server import ServerLimits, TunnelServer
from jproxy.metrics import Counters
from jproxy.policy.egress import EgressPolicy
from jproxy.tunnel.keys import UserDirectory, load_client_key
from schemas.jproxy import Dialect


def serve_in_process(workdir, limits: ServerLimits) -> tuple[TunnelServer, Tunnel, gevent.Greenlet]:
    """A ``TunnelServer`` with ``limits`` in this process (loopback allowed), and a running
    tunnel to it (the greenlet that runs it)."""
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
    return server, tunnel, gevent.spawn(serve_tunnel, tunnel)
