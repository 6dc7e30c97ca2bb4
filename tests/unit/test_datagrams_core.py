"""UDP associations and ICMP echoes of a tunnel (jproxy.tunnel.datagrams): a client core and a
server
core exchange their messages directly, with a fake clock."""

from __future__ import annotations

import pytest

from jproxy.tunnel.datagrams import (
    AssociateAnswered,
    AssociateRequested,
    DatagramReceived,
    Datagrams,
    Dissociated,
    EchoAnswered,
    EchoRequested,
    Exhausted,
    Kind,
    RateLimit,
    Refused,
)
from jproxy.tunnel.mux import Channels, Do, ProtocolViolation
from schemas.fast import UDP_PACKET
from schemas.jproxy import ConnectStatus, Dialect, Direction, DisconnectReason

C2S, S2C = Direction.CLIENT_TO_SERVER, Direction.SERVER_TO_CLIENT


def _pair(dialect: Dialect = Dialect.SECURE_3_1, **server_options) -> tuple[Datagrams, Datagrams]:
    return Datagrams(C2S, dialect), Datagrams(S2C, dialect, **server_options)


@pytest.mark.parametrize("dialect", list(Dialect))
def test_association_carries_datagrams_both_ways_until_dissociated(dialect: Dialect) -> None:
    client, server = _pair(dialect)
    channel, request = client.associate("dns.test", 53)
    assert client.packet(channel, b"early") is None  # not answered yet
    [requested] = server.receive(request, 0.0)
    assert isinstance(requested, AssociateRequested)
    assert (requested.channel.host, requested.channel.port, requested.local_port) == (
        "dns.test",
        53,
        0,
    )
    reply = server.answer(requested.channel, ConnectStatus.OK, 40000)
    assert client.receive(reply, 0.0) == [AssociateAnswered(channel, ConnectStatus.OK, 40000)]
    assert server.receive(client.packet(channel, b"query"), 0.0) == [
        DatagramReceived(requested.channel, b"query")
    ]
    assert client.receive(server.packet(requested.channel, b"answer"), 0.0) == [
        DatagramReceived(channel, b"answer")
    ]
    bye = client.dissociate(channel, DisconnectReason.CLIENT_CLOSED)
    assert client.dissociate(channel, DisconnectReason.CLIENT_CLOSED) is None
    assert server.receive(bye, 0.0) == [
        Dissociated(requested.channel, DisconnectReason.CLIENT_CLOSED)
    ]
    assert not client.channels and not server.channels
    assert server.packet(requested.channel, b"late") is None


def test_refused_association_frees_its_id() -> None:
    client, server = _pair()
    channel, request = client.associate("127.0.0.1", 9)
    [requested] = server.receive(request, 0.0)
    reply = server.answer(requested.channel, ConnectStatus.GENERAL_FAILURE, 0)
    assert client.receive(reply, 0.0) == [
        AssociateAnswered(channel, ConnectStatus.GENERAL_FAILURE, 0)
    ]
    assert not client.channels and not server.channels


def test_server_dissociates_on_idle() -> None:
    client, server = _pair()
    channel, request = client.associate("127.0.0.1", 9)
    [requested] = server.receive(request, 0.0)
    client.receive(server.answer(requested.channel, ConnectStatus.OK, 1), 0.0)
    bye = server.dissociate(requested.channel, DisconnectReason.GENERAL)
    assert client.receive(bye, 0.0) == [Dissociated(channel, DisconnectReason.GENERAL)]


def test_association_limit_per_tunnel() -> None:
    client, server = _pair(max_associations=2)
    for _ in range(2):
        [requested] = server.receive(client.associate("127.0.0.1", 9)[1], 0.0)
        assert isinstance(requested, AssociateRequested)
    channel, request = client.associate("127.0.0.1", 9)
    [refused] = server.receive(request, 0.0)
    assert isinstance(refused, Refused) and "2 associations" in refused.why
    [answered] = client.receive(refused.message, 0.0)
    assert answered.status is ConnectStatus.CONNECTION_LIMIT


def test_ids_are_shared_with_tcp_streams() -> None:
    streams = Channels(C2S, Dialect.SECURE_3_1, max_message=4063, now=0.0)
    client = Datagrams(C2S, Dialect.SECURE_3_1, streams=streams.channels)
    streams.other_channels = client.channels
    stream = streams.open("h", 1, 0.0).channel
    channel, _ = client.associate("h", 1)
    stream2 = streams.open("h", 1, 0.0).channel
    assert len({stream.id, channel.id, stream2.id}) == 3
    server_streams = Channels(S2C, Dialect.SECURE_3_1, max_message=4063, now=0.0)
    server = Datagrams(S2C, Dialect.SECURE_3_1, streams=server_streams.channels)
    server_streams.other_channels = server.channels
    [requested] = server.receive(client.associate("h", 2)[1], 0.0)
    duplicate = Datagrams(C2S, Dialect.SECURE_3_1)  # a client that reuses a live id
    duplicate._next_id = requested.channel.id
    [refused] = server.receive(duplicate.associate("h", 3)[1], 0.0)
    assert isinstance(refused, Refused) and "in use" in refused.why
    stream_request = streams.open("h", 4, 0.0).value  # a stream asking for the held id
    stream_request = (
        stream_request[:1] + requested.channel.id.to_bytes(2, "big") + stream_request[3:]
    )
    kinds = [event.kind for event in server_streams.receive([stream_request], 0.0)]
    assert kinds == [Do.WARNING, Do.SEND]  # refused by the stream core


def test_ids_run_out() -> None:
    client = Datagrams(C2S, Dialect.SECURE_3_1, streams=range(1 << 16))
    with pytest.raises(Exhausted):
        client.associate("h", 1)


def test_ids_rotate() -> None:
    client = Datagrams(C2S, Dialect.SECURE_3_1)
    first, _ = client.associate("h", 1)
    client.dissociate(first, DisconnectReason.GENERAL)
    second, _ = client.associate("h", 1)
    assert second.id != first.id


def test_malformed_message_breaks_a_31_tunnel_but_not_a_30_one() -> None:
    bad = UDP_PACKET.build(1, b"abc")[:-1]
    with pytest.raises(ProtocolViolation):
        Datagrams(S2C, Dialect.SECURE_3_1).receive(bad, 0.0)
    assert Datagrams(S2C, Dialect.LEGACY_3_0).receive(bad, 0.0) == []


def test_echo_round_trip_restores_the_id() -> None:
    client, server = _pair()
    channel, request = client.echo("::1", 1000, b"payload")
    [requested] = server.receive(request, 0.0)
    assert isinstance(requested, EchoRequested)
    assert (requested.channel.kind, requested.channel.host) == (Kind.ICMP, "::1")
    assert (requested.timeout_ms, requested.data) == (1000, b"payload")
    reply = server.echo_reply(requested.channel, ConnectStatus.OK, 3, b"payload")
    assert requested.channel.id == channel.id
    assert client.receive(reply, 0.0) == [EchoAnswered(channel, ConnectStatus.OK, 3, b"payload")]
    assert not client.channels and not server.channels


def test_echo_is_refused_over_the_rate_limit() -> None:
    client, server = _pair(echo_rate=1.0, echo_burst=2)
    events = [server.receive(client.echo("h", 10, b"")[1], 0.0)[0] for _ in range(3)]
    assert [type(event) for event in events] == [EchoRequested, EchoRequested, Refused]
    [answered] = client.receive(events[2].message, 0.0)
    assert answered.status is ConnectStatus.CONNECTION_LIMIT
    assert isinstance(server.receive(client.echo("h", 10, b"")[1], 1.0)[0], EchoRequested)


def test_echo_needs_31_and_a_30_server_ignores_it() -> None:
    legacy = Datagrams(C2S, Dialect.LEGACY_3_0)
    with pytest.raises(ValueError):
        legacy.echo("h", 10, b"")
    _, request = Datagrams(C2S, Dialect.SECURE_3_1).echo("h", 10, b"")
    assert Datagrams(S2C, Dialect.LEGACY_3_0).receive(request, 0.0) == []


def test_rate_limit_refills_with_time() -> None:
    limit = RateLimit(rate=2.0, burst=2)
    assert [limit.allow(0.0) for _ in range(3)] == [True, True, False]
    assert limit.allow(0.5) and not limit.allow(0.5)
    assert limit.allow(10.0) and limit.allow(10.0) and not limit.allow(10.0)


def test_client_gives_up_before_the_answer() -> None:
    client, server = _pair()
    channel, request = client.associate("127.0.0.1", 9)
    [requested] = server.receive(request, 0.0)
    bye = client.dissociate(channel, DisconnectReason.GENERAL)  # its wait timed out
    assert server.receive(bye, 0.0) == [Dissociated(requested.channel, DisconnectReason.GENERAL)]
    assert server.answer(requested.channel, ConnectStatus.OK, 5000) is None  # nothing to say
    assert not server.channels and not client.channels
