"""docs/admin.md keeps in step with the code it describes."""

from __future__ import annotations

import re
from pathlib import Path

from jproxy import metrics
from jproxy.commands.admin import METHODS, QUERIES, ExitStatus
from jproxy.commands.docs import admin_parts
from jproxy.gen import admin_docs
from jproxy.handlers.admin.prometheus import ClientCollector, CountersCollector
from jproxy.handlers.tunnel.pool import TunnelPool
from jproxy.metrics import Counters
from jproxy.tuning import RelayTuning
from jproxy.tunnel.keys import generate
from schemas.admin import METHOD_DOCS, Method
from schemas.jproxy import Dialect

DOCS = (Path(__file__).parents[2] / "docs" / "admin.md").read_text(encoding="utf-8")


def flat(text: str) -> str:
    return " ".join(text.split())


def test_connection_definition_matches_jproxy_metrics() -> None:
    docstring = flat(metrics.__doc__)
    definition = re.search(r"every tunnel stream .*? both directions summed\.", docstring)
    assert definition, "jproxy/metrics.py no longer defines a connection"
    assert f"What counts as a connection: {definition.group()}" in flat(DOCS)


def test_every_method_code_has_a_row() -> None:
    for method in Method:
        assert re.search(rf"^\| {method.value} \| ", DOCS, re.MULTILINE), method


def test_every_command_line_method_is_documented() -> None:
    for name in METHODS:
        assert re.search(rf"^\| `{name}( N)?` \|", DOCS, re.MULTILINE), name


def test_every_exit_status_has_a_row() -> None:
    for status in ExitStatus:
        assert re.search(rf"^\| {status.value} \| ", DOCS, re.MULTILINE), status


def test_every_prometheus_metric_is_documented() -> None:
    collector = CountersCollector(Counters(), RelayTuning())
    names = {sample.name for family in collector.collect() for sample in family.samples}
    assert names == {
        "gjproxy_connections_total",
        "gjproxy_connections_open",
        "gjproxy_transferred_bytes_total",
        "gjproxy_tunnels_open",
        "gjproxy_dialect_tunnels_open",
        "gjproxy_relay_buffer_size_bytes",
        "gjproxy_service_connections_total",
        "gjproxy_service_connections_open",
        "gjproxy_service_transferred_bytes_total",
        "gjproxy_doh_lookup_seconds_count",
        "gjproxy_doh_lookup_seconds_sum",
        "gjproxy_doh_failures_total",
        "gjproxy_dns_cache_hits_total",
        "gjproxy_dns_cache_misses_total",
        "gjproxy_datagrams_dropped_total",
    }
    for name in names:
        assert f"| `{name}" in DOCS, name


def test_every_client_metric_is_documented() -> None:
    key, _ = generate("alice")
    collector = ClientCollector(TunnelPool([("127.0.0.1", 1)], key, Dialect.SECURE_3_1))
    client_docs = DOCS.split("### The client's page", 1)[1]
    names = {sample.name for family in collector.collect() for sample in family.samples}
    assert names >= {"gjproxy_client_tunnel_up", "gjproxy_client_server"}
    for name in names:
        assert f"| `{name}" in client_docs, name


def test_generated_tables_are_fresh() -> None:
    assert admin_docs.fill(DOCS, admin_parts()) == DOCS, (
        "docs/admin.md's tables are out of date with the code: run `gjproxy docs` and commit it"
    )


def test_the_method_range_names_the_last_method() -> None:
    last = max(code for code in Method if code < Method.INVALID_PARAM)
    assert f"gjproxy defines 4-{int(last)}." in DOCS
    assert f"(any code other than 0-{int(last)})" in DOCS


def test_stats_asks_every_query() -> None:
    codes = ", ".join(str(int(method)) for method, _ in QUERIES.values())
    assert f"| `stats` | methods {codes} in turn |" in DOCS


def test_every_method_has_its_words() -> None:
    assert set(METHOD_DOCS) == set(Method)
