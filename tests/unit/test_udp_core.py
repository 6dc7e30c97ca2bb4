"""The client's SOCKS5 UDP association rules (jproxy.socks.udp_association), fed datagrams
with a fake clock."""

from __future__ import annotations

import pytest

from jproxy.socks.socks5 import build_udp_request
from jproxy.socks.udp_association import MAX_DATAGRAM, Drop, Dropped, Forward, SocksUdpAssociation
from schemas.jproxy import Dialect

CLIENT = ("127.0.0.1", 40000)


def _association(host: str = "0.0.0.0", port: int = 0, **extra) -> SocksUdpAssociation:
    return SocksUdpAssociation("127.0.0.1", host, port, max_payload=100, now=0.0, **extra)


def test_max_datagram_is_the_frame_limit_minus_the_udp_packet_header() -> None:
    assert MAX_DATAGRAM == {Dialect.LEGACY_3_0: 4074, Dialect.SECURE_3_1: 4058}


def test_first_datagram_makes_a_route_and_fixes_the_client_port() -> None:
    association = _association()
    first = association.from_client(CLIENT, build_udp_request("10.0.0.1", 53, b"q"), 1.0)
    assert isinstance(first, Forward) and first.new and first.payload == b"q"
    assert (first.route.host, first.route.port) == ("10.0.0.1", 53)
    again = association.from_client(CLIENT, build_udp_request("10.0.0.1", 53, b"r"), 2.0)
    assert isinstance(again, Forward) and not again.new and again.route is first.route
    other_port = association.from_client(
        ("127.0.0.1", 40001), build_udp_request("10.0.0.1", 53, b"x"), 3.0
    )
    assert isinstance(other_port, Dropped) and other_port.reason is Drop.SOURCE
    assert association.client_address == CLIENT


def test_only_the_socks_clients_ip_may_send() -> None:
    association = _association()
    dropped = association.from_client(("127.0.0.2", 40000), build_udp_request("h", 1, b"x"), 1.0)
    assert isinstance(dropped, Dropped) and dropped.reason is Drop.SOURCE
    assert association.drops == {Drop.SOURCE: 1}
    assert association.client_address is None


def test_a_named_port_is_the_only_one_accepted() -> None:
    association = _association("127.0.0.1", 5555)
    assert association.client_address == ("127.0.0.1", 5555)
    wrong = association.from_client(CLIENT, build_udp_request("h", 1, b"x"), 1.0)
    assert isinstance(wrong, Dropped) and wrong.reason is Drop.SOURCE
    right = association.from_client(("127.0.0.1", 5555), build_udp_request("h", 1, b"x"), 1.0)
    assert isinstance(right, Forward)


def test_ipv6_client() -> None:
    association = SocksUdpAssociation("::1", "::", 0, max_payload=100, now=0.0)
    forward = association.from_client(("::1", 7, 0, 0), build_udp_request("::1", 53, b"x"), 1.0)
    assert isinstance(forward, Forward) and forward.route.host == "::1"
    assert association.to_client(forward.route, b"y", 2.0) == build_udp_request("::1", 53, b"y")


def test_fragments_malformed_and_too_large_datagrams_are_dropped_and_counted() -> None:
    association = _association()
    fragment = bytearray(build_udp_request("10.0.0.1", 53, b"x"))
    fragment[2] = 1
    results = [
        association.from_client(CLIENT, bytes(fragment), 1.0),
        association.from_client(CLIENT, b"\x00\x00\x00\x09", 1.0),
        association.from_client(CLIENT, build_udp_request("10.0.0.1", 53, bytes(101)), 1.0),
    ]
    assert [r.reason for r in results] == [Drop.FRAGMENT, Drop.MALFORMED, Drop.TOO_LARGE]
    assert association.drops == {Drop.FRAGMENT: 1, Drop.MALFORMED: 1, Drop.TOO_LARGE: 1}
    assert not association.routes and association.client_address is None
    fits = association.from_client(CLIENT, build_udp_request("10.0.0.1", 53, bytes(100)), 1.0)
    assert isinstance(fits, Forward)


def test_replies_carry_the_destination_as_named() -> None:
    association = _association()
    forward = association.from_client(CLIENT, build_udp_request("dns.test", 53, b"q"), 1.0)
    assert association.to_client(forward.route, b"answer", 2.0) == build_udp_request(
        "dns.test", 53, b"answer"
    )


def test_route_limit() -> None:
    association = _association(max_routes=2)
    for port in (1, 2):
        assert isinstance(
            association.from_client(CLIENT, build_udp_request("h", port, b""), 1), Forward
        )
    third = association.from_client(CLIENT, build_udp_request("h", 3, b""), 1.0)
    assert isinstance(third, Dropped) and third.reason is Drop.ROUTES


def test_idle_routes_are_evicted_and_the_association_ends_when_idle() -> None:
    association = _association(idle_timeout=10.0)
    old = association.from_client(CLIENT, build_udp_request("h", 1, b""), 1.0).route
    new = association.from_client(CLIENT, build_udp_request("h", 2, b""), 6.0).route
    assert association.next_deadline() == 11.0  # the older route
    assert association.expired(10.9) == []
    assert association.expired(11.0) == [old]
    assert association.to_client(old, b"late", 11.0) is None  # evicted: nowhere to go
    assert association.to_client(new, b"reply", 12.0) is not None  # a reply keeps it alive
    assert not association.idle(21.9)
    assert association.idle(22.0)
    assert association.expired(22.0) == [new]


def test_a_forgotten_route_is_made_again() -> None:
    association = _association()
    route = association.from_client(CLIENT, build_udp_request("h", 1, b""), 1.0).route
    association.forget(route)
    again = association.from_client(CLIENT, build_udp_request("h", 1, b""), 2.0)
    assert again.new and again.route is not route


def test_a_refused_route_drops_its_datagrams_until_it_idles_out() -> None:
    association = _association(idle_timeout=10.0)
    route = association.from_client(CLIENT, build_udp_request("h", 1, b"a"), 1.0).route
    association.refuse(route)
    again = association.from_client(CLIENT, build_udp_request("h", 1, b"b"), 5.0)
    assert isinstance(again, Dropped) and again.reason is Drop.REFUSED
    assert association.drops == {Drop.REFUSED: 1}
    assert association.expired(14.9) == []  # the dropped datagram kept it refused
    assert association.expired(15.0) == [route]
    fresh = association.from_client(CLIENT, build_udp_request("h", 1, b"c"), 16.0)
    assert isinstance(fresh, Forward) and fresh.new and fresh.route is not route


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "name.test"])
def test_unnamed_source_learns_the_first_port(host: str) -> None:
    association = _association(host, 0)
    assert association.client_address is None
    association.from_client(CLIENT, build_udp_request("h", 1, b""), 1.0)
    assert association.client_address == CLIENT
