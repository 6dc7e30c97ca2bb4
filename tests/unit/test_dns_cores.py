"""The DNS cores without I/O: what an answer means (jproxy.dns.message) and the TTL cache
(jproxy.dns.cache), driven with answers built by dnspython and a fake clock."""

from __future__ import annotations

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from jproxy.dns.cache import DnsCache
from jproxy.dns.message import Answer, DnsError, combine, query, read_answer

A, AAAA = dns.rdatatype.A, dns.rdatatype.AAAA


def reply_to(sent: dns.message.Message, *records: str, rcode=dns.rcode.NOERROR, soa: str = ""):
    """The server's reply to ``sent``: answer records as zone-file text, an optional SOA."""
    reply = dns.message.make_response(sent)
    reply.set_rcode(rcode)
    for text in records:
        reply.answer.append(dns.rrset.from_text(*text.split()))
    if soa:
        reply.authority.append(dns.rrset.from_text(*soa.split(maxsplit=4)))
    return reply.to_wire()


SOA = "tunnel.test. 900 IN SOA ns.tunnel.test. admin.tunnel.test. 1 3600 600 86400 60"


def test_query_has_id_0_one_question_and_recursion_desired() -> None:
    message = query("Web.Tunnel.Test", A)
    parsed = dns.message.from_wire(message.to_wire())
    assert parsed.id == 0
    assert [(str(q.name), q.rdtype) for q in parsed.question] == [("Web.Tunnel.Test.", A)]
    assert parsed.flags & dns.flags.RD


@pytest.mark.parametrize("bad", ["a..b", "x" * 64 + ".test", "é" * 80])
def test_a_name_dns_cannot_carry_is_a_dns_error(bad: str) -> None:
    with pytest.raises(DnsError, match="not a valid DNS name"):
        query(bad, A)


def test_addresses_and_the_smallest_ttl_of_the_cname_chain() -> None:
    sent = query("www.tunnel.test", A)
    wire = reply_to(
        sent,
        "www.tunnel.test. 600 IN CNAME web.tunnel.test.",
        "web.tunnel.test. 120 IN A 127.0.0.1",
        "web.tunnel.test. 120 IN A 127.0.0.2",
    )
    assert read_answer(sent, wire) == Answer(("127.0.0.1", "127.0.0.2"), 120)


def test_nxdomain_and_nodata_are_negative_for_the_soa_minimum() -> None:
    sent = query("nope.tunnel.test", A)
    nx = read_answer(sent, reply_to(sent, rcode=dns.rcode.NXDOMAIN, soa=SOA))
    assert nx == Answer((), 60, "NXDOMAIN")
    sent = query("web.tunnel.test", AAAA)
    assert read_answer(sent, reply_to(sent, soa=SOA)) == Answer((), 60, "no address records")


@pytest.mark.parametrize(
    ("rcode", "message"), [(dns.rcode.SERVFAIL, "SERVFAIL"), (dns.rcode.REFUSED, "REFUSED")]
)
def test_server_failures_are_errors_not_answers(rcode, message) -> None:
    sent = query("web.tunnel.test", A)
    with pytest.raises(DnsError, match=message):
        read_answer(sent, reply_to(sent, rcode=rcode))


def test_an_answer_to_another_question_or_garbage_is_refused() -> None:
    sent = query("web.tunnel.test", A)
    other = query("evil.tunnel.test", A)
    with pytest.raises(DnsError, match="not for the question asked"):
        read_answer(sent, reply_to(other, "evil.tunnel.test. 60 IN A 10.0.0.1"))
    with pytest.raises(DnsError, match="malformed"):
        read_answer(sent, b"\x00\x00\x81")
    with pytest.raises(DnsError, match="more than a DNS message"):
        read_answer(sent, bytes(70000))


def test_combine_keeps_every_address_a_first_and_the_shortest_ttl() -> None:
    a, aaaa = Answer(("127.0.0.1",), 300), Answer(("::1",), 100)
    assert combine([a, aaaa]) == Answer(("127.0.0.1", "::1"), 100)
    nodata = Answer((), 60, "no address records")
    assert combine([a, nodata]) == Answer(("127.0.0.1",), 60)
    nx = Answer((), 30, "NXDOMAIN")
    assert combine([nx, Answer((), 30, "NXDOMAIN")]) == nx


# --- the cache, with time passed in ---------------------------------------------------------


def test_an_answer_lives_for_its_ttl_and_every_spelling_shares_it() -> None:
    cache = DnsCache()
    cache.put("Web.Tunnel.Test.", Answer(("127.0.0.1",), 10), now=100.0)
    assert cache.get("web.tunnel.test", now=109.9) == Answer(("127.0.0.1",), 10)
    assert cache.get("WEB.tunnel.test.", now=110.0) is None
    assert len(cache) == 0  # the expired entry went at once


def test_ttls_are_capped_and_negative_answers_kept_briefly() -> None:
    cache = DnsCache(max_ttl=3600, max_negative_ttl=30)
    cache.put("long.test", Answer(("10.0.0.1",), 86400), now=0.0)
    cache.put("gone.test", Answer((), 86400, "NXDOMAIN"), now=0.0)
    assert cache.get("gone.test", now=29.9) == Answer((), 86400, "NXDOMAIN")
    assert cache.get("gone.test", now=30.0) is None
    assert cache.get("long.test", now=3599.0) is not None
    assert cache.get("long.test", now=3600.0) is None


def test_ttl_zero_is_not_kept_and_replaces_an_older_answer() -> None:
    cache = DnsCache()
    cache.put("web.test", Answer(("10.0.0.1",), 60), now=0.0)
    cache.put("web.test", Answer(("10.0.0.2",), 0), now=1.0)
    assert cache.get("web.test", now=1.0) is None


def test_the_cache_is_bounded_and_evicts_the_least_recently_used() -> None:
    cache = DnsCache(max_entries=3)
    for index in range(3):
        cache.put(f"n{index}.test", Answer((f"10.0.0.{index}",), 60), now=0.0)
    assert cache.get("n0.test", now=1.0) is not None  # n0 used: n1 is now the oldest
    cache.put("n3.test", Answer(("10.0.0.3",), 60), now=1.0)
    assert len(cache) == 3
    assert cache.get("n1.test", now=1.0) is None
    assert all(cache.get(f"n{i}.test", now=1.0) for i in (0, 2, 3))
    for index in range(1000):
        cache.put(f"flood{index}.test", Answer(("10.0.0.9",), 60), now=2.0)
    assert len(cache) == 3
