"""Playbooks of the tunnel's one multiplexer with every kind of channel in one core: TCP
streams, UDP associations and ICMP echoes, their shared ids and budget, and every protocol
timer through ``next_deadline`` and ``handle_timer`` with a fake clock."""

from __future__ import annotations

import pytest

from jproxy.tunnel.mux import (
    DEAD_AFTER,
    DEFAULT_MAX_ASSOCIATIONS,
    DEFAULT_MAX_CHANNELS,
    KEEPALIVE_INTERVAL,
    LEGACY_BOUND,
    LEGACY_STALL,
    PING,
    TABLES,
    WRITE_STALL,
    Channels,
    Do,
    Ending,
    Event,
    Exhausted,
    Kind,
    Move,
    Side,
)
from schemas.fast import (
    ICMP_ECHO_REPLY,
    TCP_CONNECT_REPLY,
    TCP_DISCONNECT,
    TCP_HALF_CLOSE,
    UDP_ASSOCIATE_REPLY,
    UDP_DISSOCIATE,
    UDP_PACKET,
)
from schemas.jproxy import ConnectStatus, Dialect, DisconnectReason
from tests.mux_cores import C2S, S2C, core, kinds, messages


def test_streams_associations_and_echoes_live_side_by_side_in_one_core():
    client, server = core(C2S), core(S2C)
    stream = client.open("web.test", 80, 0.0)
    association = client.associate("dns.test", 53, 0.0)
    echo = client.echo("::1", 500, b"ping", 0.0)
    ids = {stream.channel.id, association.channel.id, echo.channel.id}
    assert len(ids) == 3 and set(client.channels) == ids
    asked = server.receive([stream.value, association.value, echo.value], 0.0)
    assert kinds(asked) == [Do.CONNECT, Do.ASSOCIATE, Do.ECHO]
    assert [event.channel.kind for event in asked] == [Kind.TCP, Kind.UDP, Kind.ICMP]
    s_stream, s_association, s_echo = (event.channel for event in asked)
    replies = (
        server.answer(s_stream, ConnectStatus.OK, 7, 1.0)
        + server.answer(s_association, ConnectStatus.OK, 40000, 1.0)
        + server.echo_reply(s_echo, ConnectStatus.OK, 2, b"ping")
    )
    answered = client.receive(messages(replies), 1.0)
    assert answered == [
        Event(Do.ANSWERED, stream.channel, (ConnectStatus.OK, 7)),
        Event(Do.ANSWERED, association.channel, (ConnectStatus.OK, 40000)),
        Event(Do.ECHOED, echo.channel, (ConnectStatus.OK, 2, b"ping")),
    ]
    assert set(client.channels) == set(server.channels) == ids - {echo.channel.id}
    # data of both kinds in one chunk, in order
    chunk = client.data(stream.channel, b"GET /", 2.0)
    chunk.append(client.packet(association.channel, b"query", 2.0))
    chunk += client.data(stream.channel, b" HTTP/1.1", 2.0)
    assert server.receive(chunk, 2.0) == [
        Event(Do.DATA, s_stream, b"GET /"),
        Event(Do.DATAGRAM, s_association, b"query"),
        Event(Do.DATA, s_stream, b" HTTP/1.1"),
    ]
    # the tunnel goes: every kind is cut
    assert sorted(e.channel.kind.value for e in server.close_all()) == ["tcp", "udp"]
    assert not server.channels


def test_a_message_of_one_kind_for_a_channel_of_another_is_an_ignored_stray():
    client, server = core(C2S), core(S2C)
    stream = client.open("h", 1, 0.0)
    [asked] = server.receive([stream.value], 0.0)
    client.receive(messages(server.answer(asked.channel, ConnectStatus.OK, 0, 0.0)), 0.0)
    cid = stream.channel.id
    strays = [
        UDP_PACKET.build(cid, b"x"),
        UDP_DISSOCIATE.build(cid, DisconnectReason.GENERAL),
    ]
    assert server.receive(strays, 0.0) == []
    assert client.receive([UDP_ASSOCIATE_REPLY.build(cid, ConnectStatus.OK, 1)], 0.0) == []
    assert client.receive([ICMP_ECHO_REPLY.build(cid, ConnectStatus.OK, 1, b"")], 0.0) == []
    assert stream.channel.ours is Side.OPEN and asked.channel.theirs is Side.OPEN


def test_the_tables_are_the_only_guard_an_illegal_move_is_not_made():
    """Every (state, move) a kind's table lacks is refused without an exception."""
    client, server = core(C2S), core(S2C)
    echo = client.echo("h", 10, b"", 0.0)
    assert (Side.CONNECTING, Move.EOF) not in TABLES[Kind.ICMP]
    assert client.finish(echo.channel) == []  # no half-close for an echo
    association = client.associate("h", 1, 0.0)
    [asked] = server.receive([association.value], 0.0)
    client.receive(messages(server.answer(asked.channel, ConnectStatus.OK, 1, 0.0)), 0.0)
    assert (Side.OPEN, Move.EOF) not in TABLES[Kind.UDP]
    assert client.finish(association.channel) == []  # no half-close for an association
    assert server.receive([TCP_HALF_CLOSE.build(asked.channel.id)], 0.0) == []
    stream = client.open("h", 1, 0.0)
    [asked] = server.receive([stream.value], 0.0)
    client.receive(messages(server.answer(asked.channel, ConnectStatus.OK, 1, 0.0)), 0.0)
    half = client.finish(stream.channel)
    assert kinds(server.receive(messages(half), 0.0)) == [Do.EOF]
    assert server.receive(messages(half), 0.0) == []  # a second half-close: a stray
    late = TCP_CONNECT_REPLY.build(stream.channel.id, ConnectStatus.OK, 0)
    assert client.receive([late], 0.0) == []  # a second answer: a stray


def test_one_budget_for_every_kind_max_one_association_then_a_connect():
    """--max-streams 1: the association holds the slot; the connect gets status 6."""
    client, server = core(C2S), core(S2C, max_channels=1)
    association = client.associate("h", 53, 0.0)
    assert kinds(server.receive([association.value], 0.0)) == [Do.ASSOCIATE]
    refused = server.receive([client.open("h", 80, 0.0).value], 0.0)
    assert kinds(refused) == [Do.WARNING, Do.SEND]
    assert TCP_CONNECT_REPLY.parse(refused[1].value)[1] is ConnectStatus.CONNECTION_LIMIT
    echo = server.receive([client.echo("h", 10, b"", 0.0).value], 0.0)
    assert kinds(echo) == [Do.INFO, Do.SEND]
    assert ICMP_ECHO_REPLY.parse(echo[1].value)[1] is ConnectStatus.CONNECTION_LIMIT
    bye = client.close(association.channel, Ending.CLOSED)
    server.receive(messages(bye), 1.0)
    assert kinds(server.receive([client.open("h", 80, 1.0).value], 1.0)) == [Do.CONNECT]


def test_one_budget_for_every_kind_900_streams_then_200_associations():
    """The defaults: 900 streams and 200 associations are more than 1024 channels; the ones
    over the budget are refused one by one, with status 6, and nothing else changes."""
    client, server = core(C2S, max_channels=2048), core(S2C)
    assert DEFAULT_MAX_CHANNELS == 1024 and DEFAULT_MAX_ASSOCIATIONS >= 200 - 76
    requests = [client.open("h", 80, 0.0).value for _ in range(900)]
    requests += [client.associate("h", 53, 0.0).value for _ in range(200)]
    events = server.receive(requests, 0.0)
    admitted = [e for e in events if e.kind in (Do.CONNECT, Do.ASSOCIATE)]
    replies = [e.value for e in events if e.kind is Do.SEND]
    assert len(admitted) == 1024 and len(server.channels) == 1024
    assert kinds(admitted).count(Do.ASSOCIATE) == 124
    assert len(replies) == 76
    statuses = {UDP_ASSOCIATE_REPLY.parse(reply)[1] for reply in replies}
    assert statuses == {ConnectStatus.CONNECTION_LIMIT}


def test_associations_have_their_own_limit_within_the_budget():
    client, server = core(C2S), core(S2C, max_associations=1)
    assert kinds(server.receive([client.associate("h", 1, 0.0).value], 0.0)) == [Do.ASSOCIATE]
    assert kinds(server.receive([client.associate("h", 1, 0.0).value], 0.0)) == [Do.INFO, Do.SEND]
    assert kinds(server.receive([client.open("h", 1, 0.0).value], 0.0)) == [Do.CONNECT]


def test_the_client_refuses_itself_past_its_budget():
    client = core(C2S, max_channels=2)
    client.open("h", 1, 0.0)
    client.echo("h", 1, b"", 0.0)
    with pytest.raises(Exhausted):
        client.associate("h", 1, 0.0)


# --- timers, with a fake clock ------------------------------------------------------------


def test_the_keepalive_deadline_is_the_next_deadline():
    client = core(C2S, keepalive=KEEPALIVE_INTERVAL)
    assert client.next_deadline() == pytest.approx(1.0)  # the idle check comes first
    client.handle_timer(1.0)
    client.handle_timer(2.0)
    client.handle_timer(3.0)
    client.handle_timer(4.0)
    assert client.next_deadline() == KEEPALIVE_INTERVAL
    assert client.handle_timer(KEEPALIVE_INTERVAL) == [Event(Do.SEND, None, PING)]
    dead_at = KEEPALIVE_INTERVAL * DEAD_AFTER
    now = KEEPALIVE_INTERVAL
    while now < dead_at:
        now = client.next_deadline()
        events = client.handle_timer(now)
    assert Do.DEAD in kinds(events) and now == dead_at


def test_the_write_stall_declares_the_peer_dead():
    server = core(S2C)
    server.write_blocked(10.0)
    server.write_blocked(20.0)  # still the first refusal counts
    assert server.next_deadline() <= 10.0 + WRITE_STALL
    assert Do.DEAD not in kinds(server.handle_timer(10.0 + WRITE_STALL - 1))
    server.wrote(30.0, blocked=True)  # some bytes went: the deadline moves
    assert Do.DEAD not in kinds(server.handle_timer(10.0 + WRITE_STALL + 1))
    (dead,) = [e for e in server.handle_timer(30.0 + WRITE_STALL) if e.kind is Do.DEAD]
    assert "took no bytes" in dead.value
    server.wrote(100.0, blocked=False)
    assert Do.DEAD not in kinds(server.handle_timer(1000.0))


def _legacy_stream(client: Channels, server: Channels):
    stream = client.open("h", 1, 0.0)
    [asked] = server.receive([stream.value], 0.0)
    client.receive(messages(server.answer(asked.channel, ConnectStatus.OK, 0, 0.0)), 0.0)
    return stream.channel, asked.channel


def test_legacy_stall_pauses_the_reading_and_cuts_a_stream_stalled_too_long():
    client, server = core(C2S, Dialect.LEGACY_3_0), core(S2C, Dialect.LEGACY_3_0)
    slow, slow_there = _legacy_stream(client, server)
    fast, fast_there = _legacy_stream(client, server)
    client.waiting(slow, 5.0)  # its socket began to refuse data at 5.0
    events = client.receive(server.data(slow_there, b"s" * (LEGACY_BOUND + 1), 6.0), 6.0)
    (pause,) = [e for e in events if e.kind is Do.PAUSE_READING]
    assert pause.channel is slow
    assert client.stalled[slow] == 5.0 + LEGACY_STALL  # counted from the first refusal
    client.handle_timer(7.5)  # the idle check's deadline passed: the stall's is next
    assert client.next_deadline() == 5.0 + LEGACY_STALL
    # a second stream over its bound joins the stall without a second pause
    events = client.receive(server.data(fast_there, b"f" * (LEGACY_BOUND + 1), 6.5), 6.5)
    assert Do.PAUSE_READING not in kinds(events)
    assert set(client.stalled) == {slow, fast}
    assert kinds(client.delivered(fast, LEGACY_BOUND, 7.0)) == []  # still one stalled
    assert list(client.stalled) == [slow]
    assert kinds(client.handle_timer(5.0 + LEGACY_STALL - 0.1)) == []
    events = client.handle_timer(5.0 + LEGACY_STALL)
    assert kinds(events) == [Do.WARNING, Do.RESUME_READING, Do.SEND_AFTER_DATA, Do.CLOSED]
    assert events[-1] == Event(Do.CLOSED, slow, Ending.CUT)
    assert TCP_DISCONNECT.parse(events[2].value) == (slow.id, DisconnectReason.RESET)
    assert not client.stalled and fast.ending is None


def test_legacy_stall_ends_when_the_stream_ends():
    client, server = core(C2S, Dialect.LEGACY_3_0), core(S2C, Dialect.LEGACY_3_0)
    slow, slow_there = _legacy_stream(client, server)
    client.receive(server.data(slow_there, b"s" * (LEGACY_BOUND + 1), 1.0), 1.0)
    assert kinds(client.close(slow, Ending.RESET)) == [Do.RESUME_READING, Do.SEND_AFTER_DATA]
    assert not client.stalled and client.next_deadline() == pytest.approx(1.0)


def test_udp_idle_deadline_is_the_servers_alone():
    client, server = core(C2S, keepalive=1e9), core(S2C, udp_idle_timeout=10.0)
    association = client.associate("h", 1, 0.0)
    [asked] = server.receive([association.value], 0.0)
    client.receive(messages(server.answer(asked.channel, ConnectStatus.OK, 1, 0.0)), 0.0)
    for now in range(1, 10):
        assert server.handle_timer(float(now)) == []
    server.receive([client.packet(association.channel, b"x", 9.0)], 9.0)
    assert server.handle_timer(15.0) == []
    events = server.handle_timer(19.5)
    assert kinds(events) == [Do.INFO, Do.SEND_AFTER_DATA, Do.CLOSED]
    assert events[-1] == Event(Do.CLOSED, asked.channel, Ending.IDLE)
    assert client.handle_timer(1e6) == []
