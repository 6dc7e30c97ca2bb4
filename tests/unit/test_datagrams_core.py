"""UDP associations and ICMP echoes in the tunnel's one multiplexer (jproxy.tunnel.mux): a
client core and a server core exchange their messages directly, with a fake clock."""

from __future__ import annotations

import pytest

from jproxy.tunnel.mux import (
    Channels,
    Do,
    Ending,
    Event,
    Exhausted,
    Kind,
    ProtocolViolation,
    RateLimit,
)
from schemas.fast import UDP_DISSOCIATE, UDP_PACKET
from schemas.jproxy import ConnectStatus, Dialect, DisconnectReason
from tests.mux_cores import C2S, S2C, core, without_logs


def _pair(dialect: Dialect = Dialect.SECURE_3_1, **server_options) -> tuple[Channels, Channels]:
    return core(C2S, dialect), core(S2C, dialect, **server_options)


def sent(events: list[Event]) -> bytes:
    """The one message among ``events``."""
    (message,) = [e.value for e in events if e.kind in (Do.SEND, Do.SEND_AFTER_DATA)]
    return message


@pytest.mark.parametrize("dialect", list(Dialect))
def test_association_carries_datagrams_both_ways_until_dissociated(dialect: Dialect) -> None:
    client, server = _pair(dialect)
    request = client.associate("dns.test", 53, 0.0)
    channel = request.channel
    assert client.packet(channel, b"early", 0.0) is None  # not answered yet
    [requested] = server.receive([request.value], 0.0)
    assert requested.kind is Do.ASSOCIATE
    assert (requested.channel.host, requested.channel.port, requested.value) == (
        "dns.test",
        53,
        0,
    )
    reply = sent(server.answer(requested.channel, ConnectStatus.OK, 40000, 0.0))
    assert client.receive([reply], 0.0) == [Event(Do.ANSWERED, channel, (ConnectStatus.OK, 40000))]
    assert server.receive([client.packet(channel, b"query", 0.0)], 0.0) == [
        Event(Do.DATAGRAM, requested.channel, b"query")
    ]
    assert client.receive([server.packet(requested.channel, b"answer", 0.0)], 0.0) == [
        Event(Do.DATAGRAM, channel, b"answer")
    ]
    bye = sent(client.close(channel, Ending.CLOSED))
    assert UDP_DISSOCIATE.parse(bye) == (channel.id, DisconnectReason.CLIENT_CLOSED)
    assert client.close(channel, Ending.CLOSED) == []
    assert server.receive([bye], 0.0) == [Event(Do.CLOSED, requested.channel, Ending.CLOSED)]
    assert not client.channels and not server.channels
    assert server.packet(requested.channel, b"late", 0.0) is None


def test_refused_association_frees_its_id() -> None:
    client, server = _pair()
    request = client.associate("127.0.0.1", 9, 0.0)
    [requested] = server.receive([request.value], 0.0)
    reply = sent(server.answer(requested.channel, ConnectStatus.GENERAL_FAILURE, 0, 0.0))
    assert client.receive([reply], 0.0) == [
        Event(Do.ANSWERED, request.channel, (ConnectStatus.GENERAL_FAILURE, 0))
    ]
    assert not client.channels and not server.channels


def test_server_dissociates_on_idle() -> None:
    client, server = core(C2S, keepalive=1e9), core(S2C, udp_idle_timeout=120.0)
    request = client.associate("127.0.0.1", 9, 0.0)
    [requested] = server.receive([request.value], 0.0)
    client.receive([sent(server.answer(requested.channel, ConnectStatus.OK, 1, 0.0))], 0.0)
    server.receive([client.packet(request.channel, b"x", 50.0)], 50.0)
    assert without_logs(server.handle_timer(169.0)) == []  # 119 s since the last datagram
    events = server.handle_timer(171.0)
    assert without_logs(events)[1:] == [Event(Do.CLOSED, requested.channel, Ending.IDLE)]
    bye = sent(events)
    assert UDP_DISSOCIATE.parse(bye) == (requested.channel.id, DisconnectReason.GENERAL)
    assert client.receive([bye], 171.0) == [Event(Do.CLOSED, request.channel, Ending.CLOSED)]
    assert not client.channels and not server.channels
    assert without_logs(client.handle_timer(10_000.0)) == []  # a client never idles one out


def test_association_limit_per_tunnel() -> None:
    client, server = _pair(max_associations=2)
    for _ in range(2):
        [requested] = server.receive([client.associate("127.0.0.1", 9, 0.0).value], 0.0)
        assert requested.kind is Do.ASSOCIATE
    request = client.associate("127.0.0.1", 9, 0.0)
    refused = server.receive([request.value], 0.0)
    assert refused[0].kind is Do.INFO and "2 associations" in refused[0].value
    [answered] = client.receive([sent(refused)], 0.0)
    assert answered.value[0] is ConnectStatus.CONNECTION_LIMIT


def test_ids_are_shared_with_tcp_streams() -> None:
    client = core(C2S)
    stream = client.open("h", 1, 0.0).channel
    channel = client.associate("h", 1, 0.0).channel
    stream2 = client.open("h", 1, 0.0).channel
    assert len({stream.id, channel.id, stream2.id}) == 3
    server = core(S2C)
    [requested] = server.receive([client.associate("h", 2, 0.0).value], 0.0)
    duplicate = core(C2S)  # a client that reuses a live id
    duplicate._next_id = requested.channel.id
    refused = server.receive([duplicate.associate("h", 3, 0.0).value], 0.0)
    assert refused[0].kind is Do.INFO and "in use" in refused[0].value
    another = core(C2S)  # and one whose stream asks for the held id
    another._next_id = requested.channel.id
    kinds = [event.kind for event in server.receive([another.open("h", 4, 0.0).value], 0.0)]
    assert kinds == [Do.WARNING, Do.SEND]  # refused by the same core


def test_ids_run_out() -> None:
    client = core(C2S, max_channels=1 << 16)
    for _ in range(1 << 16):
        client.open("h", 1, 0.0)
    with pytest.raises(Exhausted):
        client.associate("h", 1, 0.0)


def test_ids_rotate() -> None:
    client = core(C2S)
    first = client.associate("h", 1, 0.0).channel
    client.close(first, Ending.CLOSED)
    second = client.associate("h", 1, 0.0).channel
    assert second.id != first.id


def test_malformed_message_breaks_a_31_tunnel_but_not_a_30_one() -> None:
    bad = UDP_PACKET.build(1, b"abc")[:-1]
    with pytest.raises(ProtocolViolation):
        core(S2C).receive([bad], 0.0)
    assert [e.kind for e in core(S2C, Dialect.LEGACY_3_0).receive([bad], 0.0)] == [Do.WARNING]


def test_echo_round_trip_restores_the_id() -> None:
    client, server = _pair()
    request = client.echo("::1", 1000, b"payload", 0.0)
    channel = request.channel
    [requested] = server.receive([request.value], 0.0)
    assert requested.kind is Do.ECHO
    assert (requested.channel.kind, requested.channel.host) == (Kind.ICMP, "::1")
    assert requested.value == (1000, b"payload")
    reply = sent(server.echo_reply(requested.channel, ConnectStatus.OK, 3, b"payload"))
    assert requested.channel.id == channel.id
    assert client.receive([reply], 0.0) == [
        Event(Do.ECHOED, channel, (ConnectStatus.OK, 3, b"payload"))
    ]
    assert not client.channels and not server.channels


def test_echo_is_refused_over_the_rate_limit() -> None:
    client, server = _pair(echo_rate=1.0, echo_burst=2)
    answers = [server.receive([client.echo("h", 10, b"", 0.0).value], 0.0) for _ in range(3)]
    assert [events[-1].kind for events in answers] == [Do.ECHO, Do.ECHO, Do.SEND]
    [answered] = client.receive([sent(answers[2])], 0.0)
    assert answered.value[0] is ConnectStatus.CONNECTION_LIMIT
    assert server.receive([client.echo("h", 10, b"", 1.0).value], 1.0)[0].kind is Do.ECHO


def test_echo_needs_31_and_a_30_server_ignores_it() -> None:
    legacy = core(C2S, Dialect.LEGACY_3_0)
    with pytest.raises(ValueError):
        legacy.echo("h", 10, b"", 0.0)
    request = core(C2S).echo("h", 10, b"", 0.0).value
    assert without_logs(core(S2C, Dialect.LEGACY_3_0).receive([request], 0.0)) == []


def test_rate_limit_refills_with_time() -> None:
    limit = RateLimit(rate=2.0, burst=2)
    assert [limit.allow(0.0) for _ in range(3)] == [True, True, False]
    assert limit.allow(0.5) and not limit.allow(0.5)
    assert limit.allow(10.0) and limit.allow(10.0) and not limit.allow(10.0)


def test_client_gives_up_before_the_answer() -> None:
    client, server = _pair()
    request = client.associate("127.0.0.1", 9, 0.0)
    [requested] = server.receive([request.value], 0.0)
    bye = sent(client.close(request.channel, Ending.FAILED))  # its wait timed out
    assert UDP_DISSOCIATE.parse(bye) == (request.channel.id, DisconnectReason.GENERAL)
    assert server.receive([bye], 0.0) == [Event(Do.CLOSED, requested.channel, Ending.CLOSED)]
    assert server.answer(requested.channel, ConnectStatus.OK, 5000, 0.0) == []  # nothing to say
    assert not server.channels and not client.channels
