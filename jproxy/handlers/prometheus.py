"""The Prometheus page: the live counters, read at scrape time, served on the gevent loop."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

from gevent.pool import Pool
from gevent.pywsgi import WSGIServer
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from jproxy.handlers.admin import host_port_text
from jproxy.handlers.descriptors import PausesWhenOutOfFds
from jproxy.metrics import Counters
from jproxy.tuning import RelayTuning
from jproxy.udp import Drop
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
        dropped = CounterMetricFamily(
            "gjproxy_datagrams_dropped",
            "UDP datagrams dropped since start, by reason",
            labels=["reason"],
        )
        for reason in sorted({*(drop.value for drop in Drop), *counters.datagrams_dropped}):
            dropped.add_metric([reason], counters.datagrams_dropped.get(reason, 0))
        yield dropped
        yield GaugeMetricFamily(
            "gjproxy_relay_buffer_size_bytes",
            "Bytes a relay reads from a socket at once (admin method 3 changes it)",
            value=self._tuning.buffer_size,
        )


class _MetricsServer(PausesWhenOutOfFds, WSGIServer):
    def handle(self, sock: socket.socket, address: tuple) -> None:
        # A scraper that stops sending must not hold a greenlet forever.
        sock.settimeout(SCRAPE_TIMEOUT)
        super().handle(sock, address)


def serve_metrics(listen: tuple[str, int], counters: Counters, tuning: RelayTuning) -> WSGIServer:
    """Start the HTTP page for Prometheus on ``listen``; ``.address`` is where, ``.stop()``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CountersCollector(counters, tuning))
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
