"""The Prometheus page, fetched over HTTP and parsed with prometheus_client's own parser."""

from __future__ import annotations

import urllib.request

import gevent
import pytest
from prometheus_client.parser import text_string_to_metric_families

from jproxy.handlers.admin.prometheus import serve_metrics
from jproxy.metrics import Counters


@pytest.fixture
def counters() -> Counters:
    counters = Counters()
    for _ in range(7):
        counters.connection_opened()
    counters.connection_closed()
    counters.transferred(5000)
    counters.tunnel_opened("alice", "3.1")
    counters.tunnel_opened("bob", "3.1")
    return counters


@pytest.fixture
def metrics(counters, tuning):
    server = serve_metrics(("127.0.0.1", 0), counters, tuning)
    yield server
    server.stop()


def fetch(server, path: str = "/metrics") -> tuple[int, str, str]:
    """``(status, content type, body)``; urllib runs in a thread so the server's loop runs."""
    url = f"http://127.0.0.1:{server.address[1]}{path}"

    def get() -> tuple[int, str, str]:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()

    return gevent.get_hub().threadpool.apply(get)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_page_reports_every_counter(metrics) -> None:
    status, content_type, body = fetch(metrics)
    assert status == 200
    assert content_type.startswith("text/plain")
    found = samples(body)
    assert found[("gjproxy_connections_total", ())] == 7
    assert found[("gjproxy_connections_open", ())] == 6
    assert found[("gjproxy_transferred_bytes_total", ())] == 5000
    assert found[("gjproxy_tunnels_open", ())] == 2
    assert found[("gjproxy_dialect_tunnels_open", (("dialect", "3.1"),))] == 2
    assert found[("gjproxy_dialect_tunnels_open", (("dialect", "3.0"),))] == 0
    assert found[("gjproxy_relay_buffer_size_bytes", ())] == 65536
    assert found[("gjproxy_datagrams_dropped_total", (("reason", "fragment"),))] == 0


def test_page_reports_drops_by_reason(metrics, counters) -> None:
    counters.datagram_dropped("queue_full")
    counters.datagram_dropped("queue_full")
    found = samples(fetch(metrics)[2])
    assert found[("gjproxy_datagrams_dropped_total", (("reason", "queue_full"),))] == 2
    assert found[("gjproxy_datagrams_dropped_total", (("reason", "source"),))] == 0


def test_metric_types(metrics) -> None:
    types = {
        family.name: family.type for family in text_string_to_metric_families(fetch(metrics)[2])
    }
    assert types == {
        "gjproxy_connections": "counter",
        "gjproxy_connections_open": "gauge",
        "gjproxy_transferred_bytes": "counter",
        "gjproxy_tunnels_open": "gauge",
        "gjproxy_dialect_tunnels_open": "gauge",
        "gjproxy_relay_buffer_size_bytes": "gauge",
        "gjproxy_service_connections": "counter",
        "gjproxy_service_connections_open": "gauge",
        "gjproxy_service_transferred_bytes": "counter",
        "gjproxy_doh_lookup_seconds": "summary",
        "gjproxy_doh_failures": "counter",
        "gjproxy_dns_cache_hits": "counter",
        "gjproxy_dns_cache_misses": "counter",
        "gjproxy_datagrams_dropped": "counter",
    }


def test_each_scrape_reads_the_live_values(metrics, counters, tuning) -> None:
    fetch(metrics)
    counters.tunnel_opened("carol", "3.0")
    counters.tunnel_closed("alice", "3.1")
    counters.transferred(1)
    tuning.set_buffer_size(4096)
    found = samples(fetch(metrics)[2])
    assert found[("gjproxy_transferred_bytes_total", ())] == 5001
    assert found[("gjproxy_dialect_tunnels_open", (("dialect", "3.0"),))] == 1
    assert found[("gjproxy_dialect_tunnels_open", (("dialect", "3.1"),))] == 1
    assert found[("gjproxy_relay_buffer_size_bytes", ())] == 4096
