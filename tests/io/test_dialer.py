"""The one dialer on real loopback sockets: order of addresses, the policy before any connect,
one failure type with the wire status, the fd budget, and check+resolve without connecting."""

from __future__ import annotations

import socket

import pytest

from jproxy.handlers.dns.resolver import ResolveError, SystemResolver
from jproxy.handlers.net.dialer import Dialer, DialError, is_this_host
from jproxy.policy.egress import EgressPolicy
from jproxy.policy.fds import FdBudget
from schemas.jproxy import ConnectStatus
from tests.peers import echo, free_port, serve_tcp

LOOPBACK = EgressPolicy.from_rules(["127.0.0.0/8", "::1/128"], [])


class TableResolver:
    """A resolver answering from a fixed table, like /etc/hosts; records what it was asked."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    def resolve(self, host: str, timeout: float) -> list[str]:
        self.asked.append(host)
        if host not in self.table:
            raise ResolveError(f"{host}: not in the table")
        return self.table[host]


@pytest.fixture
def target():
    server = serve_tcp(echo)
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_connects_to_the_first_address_that_answers(target):
    resolver = TableResolver({"svc.test": ["127.0.0.2", "127.0.0.1"]})
    dialer = Dialer(resolver, LOOPBACK, 5.0)
    sock, address = dialer.connect("svc.test", target)  # 127.0.0.2 refuses: next one
    with sock:
        sock.sendall(b"hi")
        assert sock.recv(2) == b"hi"
    assert address == ("127.0.0.1", target)


def test_ip_literals_and_the_system_resolver(target):
    resolver = TableResolver({})
    for host in ("127.0.0.1", "::ffff:127.0.0.1"):
        sock, address = Dialer(resolver, LOOPBACK, 5.0).connect(host, target)
        sock.close()
        assert address == (host, target)
    assert resolver.asked == []  # literals never reach a resolver
    sock, address = Dialer(SystemResolver(), LOOPBACK, 5.0).connect("localhost", target)
    sock.close()
    assert address[0] in ("127.0.0.1", "::1")


def test_the_policy_judges_every_resolved_address_before_connecting(target):
    resolver = TableResolver({"mixed.test": ["10.0.0.1", "127.0.0.1"], "inside.test": ["10.1.1.1"]})
    dialer = Dialer(resolver, LOOPBACK, 5.0)
    assert dialer.addresses_for("mixed.test", target) == ["127.0.0.1"]
    with pytest.raises(DialError) as denied:
        dialer.connect("inside.test", 22)
    assert denied.value.status is ConnectStatus.NOT_ALLOWED
    assert denied.value.reason == (
        "not allowed: 10.1.1.1 port 22: in 10.0.0.0/8, denied by default;"
        " open it with --allow-egress 10.1.1.1:22 (or 10.0.0.0/8, or [egress] allow)"
    )
    default = Dialer(resolver, EgressPolicy(), 5.0)
    with pytest.raises(DialError) as loopback:
        default.addresses_for("127.0.0.1", target)
    assert loopback.value.status is ConnectStatus.NOT_ALLOWED


def test_the_servers_own_port_is_judged_as_that_listener(target):
    dialer = Dialer(TableResolver({}), LOOPBACK, 5.0)
    dialer.policy = dialer.policy.listening_on([("0.0.0.0", target)])
    with pytest.raises(DialError, match=f"own listening port {target}"):
        dialer.connect("127.0.0.1", target)
    assert is_this_host("127.0.0.1", target) and is_this_host("::1", target)
    assert not is_this_host("192.0.2.123", target)  # documentation range: not this host


@pytest.mark.parametrize(
    ("host", "status", "reason"),
    [
        ("a..b", ConnectStatus.UNKNOWN_HOST, "empty label"),
        ("bad\nname", ConnectStatus.UNKNOWN_HOST, "character"),
        ("127.1", ConnectStatus.UNKNOWN_HOST, "all-digit"),
        ("missing.test", ConnectStatus.UNKNOWN_HOST, "not in the table"),
        ("empty.test", ConnectStatus.UNKNOWN_HOST, "no address"),
    ],
)
def test_names_fail_as_unknown_host(host, status, reason):
    resolver = TableResolver({"empty.test": []})
    with pytest.raises(DialError, match=reason) as failed:
        Dialer(resolver, LOOPBACK, 5.0).connect(host, 80)
    assert failed.value.status is status
    assert ("missing.test" in resolver.asked) == (host == "missing.test")


def test_a_refused_connect_is_refused():
    with pytest.raises(DialError) as refused:
        Dialer(TableResolver({}), LOOPBACK, 5.0).connect("127.0.0.1", free_port())
    assert refused.value.status is ConnectStatus.REFUSED


def test_a_socket_in_the_fd_reserve_is_refused_and_closed(target):
    with socket.socket() as probe:
        lowest_free = probe.fileno()
    budget = FdBudget(limit=lowest_free + 10, reserve=10)  # streams: fds below lowest_free
    dialer = Dialer(TableResolver({}), LOOPBACK, 5.0, budget)
    with pytest.raises(DialError) as short:
        dialer.connect("127.0.0.1", target)
    assert short.value.status is ConnectStatus.CONNECTION_LIMIT
    with socket.socket() as again:
        assert again.fileno() == lowest_free  # the refused socket was closed at once


def test_one_deadline_covers_the_connects():
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = []
        for _ in range(4):  # fill the accept queue: the kernel then drops further SYNs
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        resolver = TableResolver({"slow.test": ["127.0.0.1", "127.0.0.1"]})
        try:
            with pytest.raises(DialError) as late:
                Dialer(resolver, LOOPBACK, 0.5).connect("slow.test", port)
        finally:
            for filler in fillers:
                filler.close()
    assert late.value.status is ConnectStatus.TIMED_OUT
