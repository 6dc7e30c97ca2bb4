"""The DoH resolver in this process against a real DNS-over-HTTPS server (unbound on loopback);
a server that misbehaves on purpose: tests/io/test_doh_hostile.py."""

from __future__ import annotations

import signal
import time

import dns.message
import dns.query
import gevent
import pytest

from jproxy.handlers.dns.doh import DohResolver
from jproxy.handlers.dns.resolver import ResolveError
from jproxy.metrics import Counters
from tests.conftest import DNS_RECORDS
from tests.peers import Unbound


def resolver_for(server: Unbound, ca_file: str | None = "", **options) -> DohResolver:
    ca = str(server.cert) if ca_file == "" else ca_file
    return DohResolver.start(server.doh_url, ca_file=ca, counters=Counters(), **options)


@pytest.fixture
def resolver(unbound):
    resolver = resolver_for(unbound)
    yield resolver
    resolver.close()


@pytest.fixture
def own_unbound(tmp_path):
    """An unbound of this test's own, to count its connections or to stop it."""
    server = Unbound(tmp_path / "unbound", DNS_RECORDS)
    yield server
    server.proc.send_signal(signal.SIGCONT)
    server.stop()


def test_names_only_the_doh_server_knows_resolve_and_the_second_time_come_from_the_cache(
    unbound, resolver
) -> None:
    https_before = unbound.statistics()["num.query.https"]
    assert resolver.resolve("web.tunnel.test", 5) == ["127.0.0.1"]
    assert resolver.resolve("six.tunnel.test", 5) == ["::1"]
    assert resolver.resolve("WEB.tunnel.test.", 5) == ["127.0.0.1"]  # the same name: cached
    counters = resolver.counters
    assert (counters.doh_lookups, counters.dns_cache_misses, counters.dns_cache_hits) == (2, 2, 1)
    assert counters.doh_lookup_seconds > 0
    assert unbound.statistics()["num.query.https"] - https_before == 4  # A and AAAA, twice


def test_unknown_names_fail_with_nxdomain_and_are_cached_briefly(unbound, resolver) -> None:
    for _ in range(2):
        with pytest.raises(ResolveError, match="nope.tunnel.test: NXDOMAIN"):
            resolver.resolve("nope.tunnel.test", 5)
    assert (resolver.counters.doh_lookups, resolver.counters.dns_cache_hits) == (1, 1)


def test_an_expired_answer_is_asked_again(resolver) -> None:
    assert resolver.resolve("brief.tunnel.test", 5) == ["127.0.0.1"]  # TTL 1 s
    time.sleep(1.1)
    assert resolver.resolve("brief.tunnel.test", 5) == ["127.0.0.1"]
    assert resolver.counters.doh_lookups == 2


def test_many_concurrent_lookups_share_one_connection(own_unbound) -> None:
    resolver = resolver_for(own_unbound)
    names = [name for name in DNS_RECORDS if name.startswith("n")]
    lookups = [gevent.spawn(resolver.resolve, name, 10) for name in names]
    gevent.joinall(lookups, raise_error=True, timeout=20)
    assert [lookup.value for lookup in lookups] == [[DNS_RECORDS[name][0]] for name in names]
    assert resolver.http.connections_opened == 1
    seen = own_unbound.https_connections()
    assert seen == 1, own_unbound.log()  # seen on unbound's side
    queries = own_unbound.statistics()["num.query.https"]
    assert queries == 2 * len(names), own_unbound.log()
    assert resolver.counters.doh_lookups == len(names)
    resolver.close()


def test_concurrent_lookups_of_one_name_send_one_query(unbound, resolver) -> None:
    https_before = unbound.statistics()["num.query.https"]
    lookups = [gevent.spawn(resolver.resolve, "n7.tunnel.test", 10) for _ in range(20)]
    gevent.joinall(lookups, raise_error=True, timeout=20)
    assert {tuple(lookup.value) for lookup in lookups} == {("127.0.1.7",)}
    assert resolver.counters.doh_lookups == 1
    assert unbound.statistics()["num.query.https"] - https_before == 2


def test_a_certificate_not_signed_by_the_given_ca_is_refused(unbound) -> None:
    resolver = resolver_for(unbound, ca_file=None)  # the system CAs do not know the test's
    with pytest.raises(ResolveError, match="CERTIFICATE_VERIFY_FAILED"):
        resolver.resolve("web.tunnel.test", 5)


def test_a_stalled_doh_server_fails_within_the_deadline_and_a_stopped_one_at_once(
    own_unbound,
) -> None:
    server = own_unbound
    resolver = resolver_for(server)
    try:
        assert resolver.resolve("web.tunnel.test", 5) == ["127.0.0.1"]
        server.proc.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(ResolveError, match=r"no answer from https://\S+ within 1.5 s"):
            resolver.resolve("n1.tunnel.test", 1.5)
        assert time.monotonic() - started < 2.0
        server.proc.send_signal(signal.SIGCONT)
        # The stalled connection was given up; a new one answers.
        assert resolver.resolve("n2.tunnel.test", 5) == ["127.0.1.2"]
        assert resolver.http.connections_opened == 2
        server.stop()
        started = time.monotonic()
        with pytest.raises(ResolveError, match="Connection refused"):
            resolver.resolve("n3.tunnel.test", 5)
        assert time.monotonic() - started < 1.0
        assert resolver.counters.doh_failures == 2
    finally:
        resolver.close()


def test_the_same_unbound_answers_plain_dns_over_udp(unbound) -> None:
    """For the datagram relay's tests: the same zone on a plain DNS port."""
    reply = dns.query.udp(
        dns.message.make_query("web.tunnel.test", "A"),
        "127.0.0.1",
        port=unbound.dns_port,
        timeout=5,
    )
    assert [record.address for record in reply.answer[0]] == ["127.0.0.1"]
