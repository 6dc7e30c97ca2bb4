"""The Prometheus page: the live counters, read at scrape time, served on the gevent loop."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

from gevent.pool import Pool
from gevent.pywsgi import WSGIServer
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from jproxy.config import host_port_text
from jproxy.handlers.net.descriptors import PausesWhenOutOfFds
from jproxy.handlers.tunnel.pool import TunnelPool, tunnel_load
from jproxy.metrics import Counters
from jproxy.socks.udp_association import Drop
from jproxy.tuning import RelayTuning
from jproxy.tunnel.balance import Health
from schemas.jproxy import Dialect

log = logging.getLogger(__name__)

DIALECTS = tuple(f"3.{dialect.value}" for dialect in Dialect)
"""Label values of ``dialect``; every one is reported, 0 when no such tunnel is open."""

SCRAPE_TIMEOUT = 10.0
MAX_SCRAPES = 16


class CountersCollector:
    """Turns ``Counters`` and ``RelayTuning`` into metrics each time Prometheus scrapes."""

    def __init__(self, counters: Counters, tuning: RelayTuning) -> None:
        self._counters = counters
        self._tuning = tuning

    def collect(self) -> Iterator[Metric]:
        counters = self._counters
        yield from _traffic(counters)
        yield GaugeMetricFamily(
            "gjproxy_tunnels_open", "jProxy tunnels open now", value=counters.tunnels_open
        )
        by_dialect = GaugeMetricFamily(
            "gjproxy_dialect_tunnels_open",
            "jProxy tunnels open now, by dialect",
            labels=["dialect"],
        )
        for dialect in sorted({*DIALECTS, *counters.tunnels_by_dialect}):
            by_dialect.add_metric([dialect], counters.tunnels_by_dialect.get(dialect, 0))
        yield by_dialect
        yield from _by_service(counters)
        yield from _dns(counters)
        yield _drops(counters)
        yield GaugeMetricFamily(
            "gjproxy_relay_buffer_size_bytes",
            "Bytes a relay reads from a socket at once (admin method 3 changes it)",
            value=self._tuning.buffer_size,
        )


class ClientCollector:
    """The client's page: its SOCKS traffic, and whether its tunnel is up and to which server."""

    def __init__(self, tunnels: TunnelPool) -> None:
        self._tunnels = tunnels

    def collect(self) -> Iterator[Metric]:
        yield from _traffic(self._tunnels.counters)
        yield _drops(self._tunnels.counters)
        yield CounterMetricFamily(
            "gjproxy_client_unrecognized_connections",
            "Connections to the client's port that spoke none of SOCKS4, SOCKS5 or HTTP",
            value=self._tunnels.counters.unrecognized_connections,
        )
        yield GaugeMetricFamily(
            "gjproxy_client_tunnel_up",
            "1 while any tunnel to a server is up, else 0",
            value=int(self._tunnels.up),
        )
        server = GaugeMetricFamily(
            "gjproxy_client_server",
            "The server new streams go to (tried first while none is up), its place in the list",
            labels=["server"],
        )
        server.add_metric([host_port_text(self._tunnels.server)], self._tunnels.server_number)
        yield server
        yield from _pool(self._tunnels)


def _pool(tunnels: TunnelPool) -> Iterator[Metric]:
    """Each server's health and round trip, and each tunnel's streams (``--tunnels``)."""
    health = GaugeMetricFamily(
        "gjproxy_client_server_healthy",
        "1 while a server may take new streams (up, or not tried yet), else 0",
        labels=["server", "health"],
    )
    rtt = GaugeMetricFamily(
        "gjproxy_client_server_rtt_seconds",
        "A server's smoothed keepalive round trip (3.1; absent before the first)",
        labels=["server"],
    )
    for server in tunnels.balancer.servers:
        healthy = server.health in (Health.UP, Health.UNKNOWN)
        health.add_metric([server.name, server.health.value], int(healthy))
        if server.rtt is not None:
            rtt.add_metric([server.name], server.rtt)
    streams = GaugeMetricFamily(
        "gjproxy_client_tunnel_streams",
        "Streams and datagram channels open on each tunnel (-1 while that tunnel is down)",
        labels=["server", "tunnel"],
    )
    for server, number, tunnel in tunnels.tunnel_rows():
        streams.add_metric([server, str(number)], tunnel_load(tunnel).channels if tunnel else -1)
    yield from (health, rtt, streams)


def _traffic(counters: Counters) -> Iterator[Metric]:
    """Connections and bytes: the same three metrics on the server's page and the client's."""
    yield CounterMetricFamily(
        "gjproxy_connections",
        "Connections since start (tunnel streams, UDP associations, plain SOCKS5)",
        value=counters.connections_total,
    )
    yield GaugeMetricFamily(
        "gjproxy_connections_open", "Connections open now", value=counters.connections_open
    )
    yield CounterMetricFamily(
        "gjproxy_transferred_bytes",
        "Payload bytes relayed since start, both directions",
        value=counters.bytes_transferred,
    )


def _drops(counters: Counters) -> Metric:
    """UDP datagrams dropped, by reason (every reason listed, seen or not): both pages."""
    dropped = CounterMetricFamily(
        "gjproxy_datagrams_dropped",
        "UDP datagrams dropped since start, by reason",
        labels=["reason"],
    )
    for reason in sorted({*(drop.value for drop in Drop), *counters.datagrams_dropped}):
        dropped.add_metric([reason], counters.datagrams_dropped.get(reason, 0))
    return dropped


def _by_service(counters: Counters) -> Iterator[Metric]:
    """The connection counters again, split by service (tunnel streams, plain SOCKS5)."""
    families = (
        (
            CounterMetricFamily,
            "gjproxy_service_connections",
            "Connections since start, by service",
            "connections_total",
        ),
        (
            GaugeMetricFamily,
            "gjproxy_service_connections_open",
            "Connections open now, by service",
            "connections_open",
        ),
        (
            CounterMetricFamily,
            "gjproxy_service_transferred_bytes",
            "Payload bytes relayed since start, by service",
            "bytes_transferred",
        ),
    )
    for kind, name, text, attribute in families:
        family = kind(name, text, labels=["service"])
        for service, values in sorted(counters.by_service.items()):
            family.add_metric([service], getattr(values, attribute))
        yield family


def _dns(counters: Counters) -> Iterator[Metric]:
    yield SummaryMetricFamily(
        "gjproxy_doh_lookup_seconds",
        "Names looked up over DNS over HTTPS (A and AAAA together), and the time they took",
        count_value=counters.doh_lookups,
        sum_value=counters.doh_lookup_seconds,
    )
    yield CounterMetricFamily(
        "gjproxy_doh_failures", "DoH lookups that got no usable answer", value=counters.doh_failures
    )
    yield CounterMetricFamily(
        "gjproxy_dns_cache_hits", "Names answered from the DNS cache", value=counters.dns_cache_hits
    )
    yield CounterMetricFamily(
        "gjproxy_dns_cache_misses", "Names not in the DNS cache", value=counters.dns_cache_misses
    )


class _MetricsServer(PausesWhenOutOfFds, WSGIServer):
    def handle(self, sock: socket.socket, address: tuple) -> None:
        # A scraper that stops sending must not hold a greenlet forever.
        sock.settimeout(SCRAPE_TIMEOUT)
        super().handle(sock, address)


def serve_metrics(listen: tuple[str, int], counters: Counters, tuning: RelayTuning) -> WSGIServer:
    """Start the server's HTTP page for Prometheus on ``listen``; ``.address``, ``.stop()``."""
    return _serve(listen, CountersCollector(counters, tuning))


def serve_client_metrics(listen: tuple[str, int], tunnels: TunnelPool) -> WSGIServer:
    """Start the client's HTTP page for Prometheus on ``listen``; ``.address``, ``.stop()``."""
    return _serve(listen, ClientCollector(tunnels))


def _serve(listen: tuple[str, int], collector: CountersCollector | ClientCollector) -> WSGIServer:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    server = _MetricsServer(
        listen,
        make_wsgi_app(registry),
        spawn=Pool(MAX_SCRAPES),
        log=None,
        error_log=log,
        environ={"SERVER_NAME": "gjproxy"},
    )
    server.start()
    log.info(
        "metrics: serving Prometheus metrics on http://%s/metrics", host_port_text(server.address)
    )
    return server
