"""Playbooks of the channel core: two ends wired back to back, no sockets, a fake clock.

Each test feeds events (messages from the peer, local happenings, the time) and checks the
commands that come back, as h11's tests do.
"""

from __future__ import annotations

import pytest

from jproxy.tunnel.mux import (
    DEAD_AFTER,
    DEFAULT_WINDOW,
    KEEPALIVE_INTERVAL,
    LEGACY_BOUND,
    PING,
    WINDOW_UPDATE_SHARE,
    Channels,
    Do,
    Ending,
    Event,
    Exhausted,
    ProtocolViolation,
    Side,
)
from schemas import build
from schemas.fast import KEEPALIVE, TCP_DISCONNECT, TCP_PACKET
from schemas.jproxy import (
    ConnectStatus,
    Dialect,
    DisconnectReason,
    KeepAliveKind,
    TcpConnectRequest,
    TcpWindowUpdate,
    address_for,
)
from tests.mux_cores import C2S, MAX_MESSAGE, S2C, core, kinds, messages, without_logs

IDLE = 300.0


def pair(dialect: Dialect = Dialect.SECURE_3_1, **options) -> tuple[Channels, Channels]:
    return (
        core(C2S, dialect, idle_timeout=IDLE, **options),
        core(S2C, dialect, idle_timeout=IDLE, **options),
    )


def deliver(receiver: Channels, events: list[Event] | Event, now: float = 0.0) -> list[Event]:
    """What ``receiver`` makes of the messages among ``events`` (the other end's commands)."""
    if isinstance(events, Event):
        events = [events]
    return receiver.receive(messages(events), now)


def open_stream(client: Channels, server: Channels, host: str = "127.0.0.1", port: int = 80):
    request = client.open(host, port, 0.0)
    (requested,) = deliver(server, request)
    assert requested.kind is Do.CONNECT and requested.value == (host, port)
    (answered,) = deliver(client, server.answer(requested.channel, ConnectStatus.OK, 12, 0.0))
    assert answered == Event(Do.ANSWERED, request.channel, (ConnectStatus.OK, 12))
    return request.channel, requested.channel


@pytest.mark.parametrize("dialect", list(Dialect))
def test_data_is_split_to_fit_one_frame(dialect):
    client, server = pair(dialect)
    mine, theirs = open_stream(client, server, "example.org", 443)
    payload = bytes(range(256)) * 40  # 10240 bytes
    sent = client.data(mine, payload, 1.0)
    assert max(map(len, sent)) == MAX_MESSAGE[dialect]
    assert [len(message) for message in sent[:-1]] == [MAX_MESSAGE[dialect]] * (len(sent) - 1)
    assert [TCP_PACKET.parse(message)[0] for message in sent] == [mine.id] * len(sent)
    assert b"".join(bytes(TCP_PACKET.parse(message)[1]) for message in sent) == payload
    # The messages of one receive that carry one channel's data come out as one delivery.
    assert server.receive(sent, 1.0) == [Event(Do.DATA, theirs, payload)]


def test_failed_connect_forgets_the_stream_on_both_sides():
    client, server = pair()
    request = client.open("10.9.9.9", 9, 0.0)
    (requested,) = deliver(server, request)
    reply = server.answer(requested.channel, ConnectStatus.REFUSED, 3, 0.0)
    (answered,) = deliver(client, reply)
    assert answered.value[0] is ConnectStatus.REFUSED
    assert request.channel.ending is Ending.FAILED is requested.channel.ending
    assert not client.channels and not server.channels


def test_flow_control_stops_the_sender_until_the_receiver_takes_the_data():
    client, server = pair(window=64 * 1024)
    mine, theirs = open_stream(client, server)
    assert client.allowance(mine) == 64 * 1024
    server.receive(client.data(mine, b"x" * 64 * 1024, 0.0), 0.0)
    assert client.allowance(mine) == 0
    with pytest.raises(ValueError):
        client.data(mine, b"y", 0.0)
    assert server.delivered(theirs, 1000, 0.0) == []  # below the threshold: no update yet
    update = server.delivered(theirs, server.update_threshold - 1000, 0.0)
    (opened,) = deliver(client, update)
    assert opened == Event(Do.WINDOW, mine)
    assert client.allowance(mine) == server.update_threshold == 16 * 1024


def test_window_updates_leave_as_the_data_is_delivered():
    """A quarter of the window delivered grants credit: the sender never stops and waits."""
    client, server = pair()
    mine, theirs = open_stream(client, server)
    server.receive(client.data(mine, b"z" * DEFAULT_WINDOW, 0.0), 0.0)
    granted = 0
    for _ in range(WINDOW_UPDATE_SHARE):
        (update,) = server.delivered(theirs, server.update_threshold, 0.0)
        deliver(client, update)
        granted += server.update_threshold
        assert client.allowance(mine) == granted


def test_bytes_in_flight_follow_sends_grants_and_ends():
    """What the client's pool weighs tunnels by: sent and not yet granted back, summed over
    the open streams, and forgotten with a stream that ends."""
    client, server = pair()
    first, first_theirs = open_stream(client, server)
    second, second_theirs = open_stream(client, server)
    server.receive(client.data(first, b"a" * 400_000, 0.0), 0.0)
    server.receive(client.data(second, b"b" * 5_000, 0.0), 0.0)
    assert client.in_flight == 405_000
    deliver(client, server.delivered(first_theirs, server.update_threshold, 0.0))
    assert client.in_flight == 405_000 - server.update_threshold
    for mine, theirs in ((second, second_theirs), (first, first_theirs)):
        deliver(server, client.close(mine, Ending.RESET))
        deliver(client, server.close(theirs, Ending.RESET))  # the server's driver answers
        if mine is second:
            assert client.in_flight == 400_000 - server.update_threshold
    assert client.in_flight == 0 == server.in_flight
    assert not client.channels


def test_a_peer_that_overruns_its_window_has_the_stream_reset():
    client, server = pair(window=8192)
    mine, theirs = open_stream(client, server)
    overrun = TCP_PACKET.build(mine.id, b"z" * 8193)
    events = server.receive([overrun], 0.0)
    assert kinds(events) == [Do.WARNING, Do.SEND_AFTER_DATA, Do.CLOSED]
    assert events[2].value is Ending.RESET
    assert TCP_DISCONNECT.parse(events[1].value) == (theirs.id, DisconnectReason.RESET)
    (closed,) = deliver(client, events)
    assert closed == Event(Do.CLOSED, mine, Ending.RESET)
    deliver(server, client.close(mine, Ending.RESET))
    assert not server.channels and not client.channels


def test_data_of_interleaved_streams_is_delivered_in_runs_in_order():
    """A delivery joins consecutive data of one stream; anything between ends the run."""
    client, server = pair()
    (a, their_a), (b, their_b) = open_stream(client, server), open_stream(client, server)
    sent = [
        *client.data(a, b"a1", 0.0),
        *client.data(a, b"a2", 0.0),
        *client.data(b, b"b1", 0.0),
        *client.data(a, b"a3", 0.0),
        client.finish(a)[0].value,
        *client.data(b, b"b2", 0.0),
        *client.data(b, b"b3", 0.0),
    ]
    assert server.receive(sent, 0.0) == [
        Event(Do.DATA, their_a, b"a1a2"),
        Event(Do.DATA, their_b, b"b1"),
        Event(Do.DATA, their_a, b"a3"),
        Event(Do.EOF, their_a),
        Event(Do.DATA, their_b, b"b2b3"),
    ]
    assert their_a.undelivered == 6 and their_b.undelivered == 6
    assert their_a.receive_window == their_b.receive_window == DEFAULT_WINDOW - 6


def test_stray_data_in_the_middle_of_a_run_is_skipped():
    """Data for an id nobody holds (in flight after a close) between two pieces of one
    stream's data: dropped silently, the stream's data still delivered in order."""
    client, server = pair()
    mine, theirs = open_stream(client, server)
    stray = TCP_PACKET.build(mine.id + 1, b"late")
    sent = [*client.data(mine, b"one", 0.0), stray, *client.data(mine, b"two", 0.0)]
    assert server.receive(sent, 0.0) == [
        Event(Do.DATA, theirs, b"one"),
        Event(Do.DATA, theirs, b"two"),
    ]


def test_an_overrun_in_the_middle_of_a_run_delivers_what_came_before_it():
    client, server = pair(window=8192)
    mine, theirs = open_stream(client, server)
    within = TCP_PACKET.build(mine.id, b"w" * 8000)
    overrun = TCP_PACKET.build(mine.id, b"z" * 193)
    events = server.receive([within, overrun], 0.0)
    assert kinds(events) == [Do.DATA, Do.WARNING, Do.SEND_AFTER_DATA, Do.CLOSED]
    assert events[0] == Event(Do.DATA, theirs, b"w" * 8000)
    assert events[-1] == Event(Do.CLOSED, theirs, Ending.RESET)


def test_legacy_dialect_has_no_window():
    client, server = pair(Dialect.LEGACY_3_0, window=1024)
    mine, _ = open_stream(client, server)
    assert client.allowance(mine) >= 1 << 20
    server.receive(client.data(mine, b"q" * 100_000, 0.0), 0.0)
    assert client.delivered(mine, 100_000, 0.0) == []


def test_half_close_from_the_client_first():
    client, server = pair()
    mine, theirs = open_stream(client, server)
    (eof,) = deliver(server, client.finish(mine))
    assert eof == Event(Do.EOF, theirs)
    assert (mine.ours, theirs.theirs) == (Side.EOF, Side.EOF)
    assert client.allowance(mine) == 0  # nothing may follow our EOF
    (data,) = server.receive([], 0.0) + client.receive(server.data(theirs, b"reply", 0.0), 0.0)
    assert data.value == b"reply"
    (eof,) = deliver(client, server.finish(theirs))
    assert eof == Event(Do.EOF, mine)
    (closed,) = deliver(client, server.close(theirs, Ending.CLOSED))
    assert closed == Event(Do.CLOSED, mine, Ending.CLOSED)
    assert mine.id in client.channels  # the id stays taken until our goodbye is sent
    assert deliver(server, client.close(mine, Ending.CLOSED)) == []  # crossing goodbye: quiet
    assert not client.channels and not server.channels
    assert mine.ending is theirs.ending is Ending.CLOSED


def test_half_close_from_the_server_first():
    client, server = pair()
    mine, theirs = open_stream(client, server)
    (eof,) = deliver(client, server.finish(theirs))
    assert eof == Event(Do.EOF, mine)
    assert server.allowance(theirs) == 0 and client.allowance(mine) > 0
    (data,) = server.receive(client.data(mine, b"more", 0.0), 0.0)
    assert data == Event(Do.DATA, theirs, b"more")
    (eof,) = deliver(server, client.finish(mine))
    assert eof == Event(Do.EOF, theirs)
    (closed,) = deliver(server, client.close(mine, Ending.CLOSED))
    assert closed.kind is Do.CLOSED
    deliver(client, server.close(theirs, Ending.CLOSED))
    assert not client.channels and not server.channels


def test_legacy_half_close_is_a_disconnect():
    client, server = pair(Dialect.LEGACY_3_0)
    mine, theirs = open_stream(client, server)
    (closed,) = deliver(server, client.finish(mine))
    assert closed == Event(Do.CLOSED, theirs, Ending.CLOSED)
    assert not client.channels and not server.channels
    assert server.close(theirs, Ending.RESET) == []  # no answer in 3.0


def test_crossing_disconnects_never_let_an_id_serve_two_live_streams():
    """Both ends close many streams at the same moment; no id is reused while alive."""
    client, server = pair()
    pairs = [open_stream(client, server) for _ in range(50)]
    from_client = [e for mine, _ in pairs for e in client.close(mine, Ending.CLOSED)]
    from_server = [e for _, theirs in pairs for e in server.close(theirs, Ending.RESET)]
    # Before the crossing messages arrive, every id is still taken on both sides, so new
    # streams get fresh ids.
    fresh = [open_stream(client, server) for _ in range(50)]
    old_ids = {mine.id for mine, _ in pairs}
    assert old_ids.isdisjoint(mine.id for mine, _ in fresh)
    assert deliver(server, from_client) == []
    assert deliver(client, from_server) == []
    assert set(client.channels) == set(server.channels) == {mine.id for mine, _ in fresh}
    assert all(mine.ending is Ending.CLOSED for mine, _ in pairs)


def test_reset_mid_transfer_reaches_the_other_side_as_a_reset():
    client, server = pair()
    mine, theirs = open_stream(client, server)
    in_flight = server.data(theirs, b"d" * 10_000, 0.0)
    reset = server.close(theirs, Ending.RESET)
    events = client.receive(in_flight, 0.0) + deliver(client, reset)
    assert events == [Event(Do.DATA, mine, b"d" * 10_000), Event(Do.CLOSED, mine, Ending.RESET)]
    assert client.allowance(mine) == 0
    deliver(server, client.close(mine, Ending.RESET))
    assert not client.channels and not server.channels


def test_data_for_a_stream_whose_local_side_is_gone_is_dropped_and_counted():
    client, server = pair()
    mine, theirs = open_stream(client, server)
    client.close(mine, Ending.RESET)  # our SOCKS socket failed; the disconnect is on its way
    assert client.receive(server.data(theirs, b"late" * 100, 0.0), 0.0) == []
    assert client.dropped_bytes == 400


def test_ids_rotate_so_a_released_id_is_reused_last():
    client, server = pair()
    first, first_remote = open_stream(client, server)
    deliver(client, server.close(first_remote, Ending.RESET))
    deliver(server, client.close(first, Ending.RESET))
    assert not client.channels
    second, _ = open_stream(client, server)
    assert second.id != first.id


def test_operations_on_a_replaced_stream_touch_nothing():
    """3.0 peers reuse an id at once; a late call for the old stream must not hit the new."""
    client, server = pair(Dialect.LEGACY_3_0)
    _, old = open_stream(client, server)
    request = build(
        TcpConnectRequest,
        {"connection_id": old.id, "port": 80, "address": address_for("127.0.0.1")},
    )
    deliver(server, client.close(client.channels[old.id], Ending.RESET))
    (again,) = server.receive([request], 0.0)
    assert again.channel.id == old.id and again.channel is not old
    assert server.close(old, Ending.RESET) == []
    assert server.answer(old, ConnectStatus.OK, 0, 0.0) == []
    assert server.channels[old.id] is again.channel


def test_server_refuses_a_connect_for_an_id_in_use_and_past_its_limit():
    client, server = pair(max_channels=2)
    mine, _ = open_stream(client, server)
    duplicate = build(
        TcpConnectRequest,
        {"connection_id": mine.id, "port": 1, "address": address_for("127.0.0.1")},
    )
    warning, refusal = server.receive([duplicate], 0.0)
    assert warning.kind is Do.WARNING and "still in use" in warning.value
    assert deliver(client, refusal) == []  # our open stream ignores a stray reply
    assert client.is_live(mine) and server.channels[mine.id].ours is Side.OPEN
    open_stream(client, server)
    with pytest.raises(Exhausted):
        client.open("127.0.0.1", 3, 0.0)
    third = build(
        TcpConnectRequest, {"connection_id": 77, "port": 3, "address": address_for("::1")}
    )
    _, refusal = server.receive([third], 0.0)
    assert refusal.value == bytes.fromhex("01004d060000")  # id 77, status 6 (limit), 0 ms


def test_client_gives_up_while_the_server_connects():
    client, server = pair()
    request = client.open("127.0.0.1", 80, 0.0)
    (requested,) = deliver(server, request)
    (closed,) = deliver(server, client.close(request.channel, Ending.FAILED))
    assert closed.kind is Do.CLOSED  # nobody serves it yet: the handler just notes it
    goodbye = server.answer(requested.channel, ConnectStatus.OK, 5, 0.0)
    assert not server.is_live(requested.channel)
    assert deliver(client, goodbye) == []
    assert not client.channels and not server.channels


def test_client_gives_up_and_the_servers_ok_crosses_its_goodbye():
    client, server = pair()
    request = client.open("127.0.0.1", 80, 0.0)
    (requested,) = deliver(server, request)
    goodbye = client.close(request.channel, Ending.FAILED)
    ok = server.answer(requested.channel, ConnectStatus.OK, 5, 0.0)
    assert deliver(client, ok) == []  # too late for anyone: the id waits for the goodbye
    (closed,) = deliver(server, goodbye)
    deliver(client, server.close(closed.channel, Ending.CLOSED))
    assert not client.channels and not server.channels


def test_unknown_and_stray_messages_are_ignored_but_malformed_ones_end_3_1():
    client, server = pair()
    assert kinds(server.receive([b"\x07\x00\x01\x02\x03"], 0.0)) == [Do.WARNING]
    assert server.receive([TCP_PACKET.build(99, b"nobody home")], 0.0) == []
    stray = build(TcpWindowUpdate, {"connection_id": 98, "increment": 10})
    assert server.receive([stray], 0.0) == []
    with pytest.raises(ProtocolViolation):
        server.receive([b"\x41\x00"], 0.0)
    with pytest.raises(ProtocolViolation):
        server.receive([b"\x21\x00\x01\x00\x09abc"], 0.0)
    legacy_client, legacy_server = pair(Dialect.LEGACY_3_0)
    assert kinds(legacy_server.receive([b"\x41\x00"], 0.0)) == [Do.WARNING]
    assert kinds(legacy_server.receive([stray], 0.0)) == [Do.INFO]  # 3.1-only message


def test_legacy_malformed_data_resets_only_its_stream():
    client, server = pair(Dialect.LEGACY_3_0)
    mine, theirs = open_stream(client, server)
    other, _ = open_stream(client, server)
    bad = bytes([0x21, 0, theirs.id, 0, 9]) + b"abc"  # says 9 bytes, carries 3
    events = server.receive([bad], 0.0)
    assert kinds(events) == [Do.WARNING, Do.SEND_AFTER_DATA, Do.CLOSED]
    assert events[-1] == Event(Do.CLOSED, theirs, Ending.RESET)
    (closed,) = deliver(client, events)
    # The server resets its own side; a 3.0 disconnect's reason means nothing to the client.
    assert closed == Event(Do.CLOSED, mine, Ending.CLOSED)
    assert client.is_live(other) and len(server.channels) == 1


def test_an_unparseable_legacy_connect_gets_a_failure_for_its_id():
    """The Java client has no connect timeout: silence would hang its SOCKS client for good."""
    _, server = pair(Dialect.LEGACY_3_0)
    bad = bytes([0x01, 0x00, 0x2A, 0x00, 0x50, 0x09, 0x00])  # address type 9
    warning, reply = server.receive([bad], 0.0)
    assert warning.kind is Do.WARNING and "TcpConnectRequest" in warning.value
    assert reply == Event(Do.SEND, None, bytes.fromhex("01002a010000"))
    assert not server.channels


def test_default_window_is_one_mebibyte():
    assert DEFAULT_WINDOW == 1 << 20


@pytest.mark.parametrize("dialect", list(Dialect))
def test_an_unknown_reason_or_status_ends_3_1_and_is_ignored_in_3_0(dialect):
    client, server = pair(dialect)
    mine, theirs = open_stream(client, server)
    connecting = client.open("127.0.0.1", 81, 0.0).channel
    bad_reason = bytes([0x41, 0, mine.id, 9])
    bad_status = bytes([0x01, 0, connecting.id, 9, 0, 0])
    for receiver, message, where in (
        (server, bad_reason, "TcpDisconnect.reason"),
        (client, bad_status, "TcpConnectReply.status"),
    ):
        if dialect is Dialect.SECURE_3_1:
            with pytest.raises(ProtocolViolation, match=where):
                receiver.receive([message], 0.0)
        else:
            assert kinds(receiver.receive([message], 0.0)) == [Do.WARNING]
    assert server.is_live(theirs) and client.is_live(mine) and client.is_live(connecting)


# --- time -------------------------------------------------------------------------------------


QUIET = {"keepalive": IDLE * 10}  # keepalive out of the way of the idle playbooks


def test_an_idle_stream_ends_after_the_idle_timeout_and_not_before():
    client, server = pair(**QUIET)
    mine, theirs = open_stream(client, server)
    server.receive(client.data(mine, b"x", 100.0), 100.0)
    assert without_logs(client.handle_timer(100.0 + IDLE - 1)) == []
    events = client.handle_timer(100.0 + IDLE + 1)
    assert kinds(events) == [Do.INFO, Do.SEND_AFTER_DATA, Do.CLOSED]
    assert "idle" in events[0].value and events[2] == Event(Do.CLOSED, mine, Ending.IDLE)
    (closed,) = deliver(server, events)
    assert closed.value is Ending.RESET  # an abnormal end: both applications see a reset
    deliver(client, server.close(theirs, Ending.CLOSED))
    assert not client.channels and mine.ending is Ending.IDLE


def test_delivering_data_keeps_a_stream_alive():
    client, server = pair(**QUIET)
    mine, theirs = open_stream(client, server)
    for minute in range(1, 20):
        server.delivered(theirs, 10, minute * 60.0)
        assert without_logs(server.handle_timer(minute * 60.0 + 1)) == []


def test_no_window_granted_for_the_idle_timeout_ends_the_stream():
    client, server = pair(window=4096, **QUIET)
    mine, _ = open_stream(client, server)
    server.receive(client.data(mine, b"w" * 4096, 5.0), 5.0)  # the server never delivers
    events = client.handle_timer(5.0 + IDLE + 1)
    assert "no window granted" in events[0].value
    assert events[-1] == Event(Do.CLOSED, mine, Ending.IDLE)


def test_legacy_stream_over_its_bound_is_reported_once():
    client, server = pair(Dialect.LEGACY_3_0)
    mine, theirs = open_stream(client, server)
    chunk = b"b" * 65536
    events = []
    for _ in range(LEGACY_BOUND // len(chunk) + 4):
        events += client.receive(server.data(theirs, chunk, 0.0), 0.0)
    over = [event for event in events if event.kind is Do.PAUSE_READING]
    assert len(over) == 1 and over[0].channel is mine and mine in client.stalled
    largest_data = MAX_MESSAGE[Dialect.LEGACY_3_0] - TCP_PACKET.header_size
    assert LEGACY_BOUND < over[0].value <= LEGACY_BOUND + largest_data  # with the crossing one
    received = b"".join(event.value for event in events if event.kind is Do.DATA)
    assert received == chunk * (LEGACY_BOUND // len(chunk) + 4) == b"b" * mine.undelivered
    assert kinds(client.delivered(mine, mine.undelivered, 1.0)) == [Do.RESUME_READING]
    assert mine.undelivered == 0 and not client.stalled


def test_a_3_1_client_pings_a_quiet_tunnel_and_the_server_answers():
    client, server = pair()
    first = Event(Do.SEND, None, PING)  # the login sent it; the core counts it sent at 0.0
    assert KEEPALIVE.parse(first.value) == (KeepAliveKind.PING,)
    (pong,) = deliver(server, first)
    assert KEEPALIVE.parse(pong.value) == (KeepAliveKind.PONG,)
    assert client.receive([pong.value], 0.5) == []
    assert client.handle_timer(KEEPALIVE_INTERVAL - 1) == []
    (ping,) = client.handle_timer(KEEPALIVE_INTERVAL + 1)
    assert ping.value == first.value
    assert client.handle_timer(KEEPALIVE_INTERVAL + 2) == []  # one ping per interval
    assert server.handle_timer(KEEPALIVE_INTERVAL + 2) == []  # the server never pings
    (pong,) = deliver(server, ping, KEEPALIVE_INTERVAL + 1)
    client.receive([pong.value], KEEPALIVE_INTERVAL + 1.1)
    assert client.handle_timer(KEEPALIVE_INTERVAL * 2) == []


def test_a_3_1_client_pings_a_busy_tunnel_once_per_interval_while_its_pings_are_answered():
    """The round trips are the tunnel pool's health samples, so a tunnel that never goes quiet
    is measured too; an unanswered ping is not repeated while the server keeps talking."""
    client, server = pair()
    (pong,) = deliver(server, Event(Do.SEND, None, PING))  # the login's ping, sent at 0.0
    client.receive([pong.value], 0.2)
    assert client.ponged_at == 0.2 and client.rtt == pytest.approx(0.2)
    busy = KEEPALIVE_INTERVAL / 2
    client.receive([], busy)  # the server's data keeps the tunnel from being quiet
    assert client.next_deadline() <= KEEPALIVE_INTERVAL
    client.receive([], KEEPALIVE_INTERVAL)
    (ping,) = client.handle_timer(KEEPALIVE_INTERVAL)
    assert ping == Event(Do.SEND, None, PING) and client.pinged_at == KEEPALIVE_INTERVAL
    client.receive([], KEEPALIVE_INTERVAL * 2)  # busy, the ping unanswered: no second ping
    assert client.handle_timer(KEEPALIVE_INTERVAL * 2) == []
    assert client.handle_timer(KEEPALIVE_INTERVAL * 3) == [ping]  # quiet now: asked again


def test_a_silent_peer_is_declared_dead_after_several_intervals():
    client, server = pair()
    dead_at = KEEPALIVE_INTERVAL * DEAD_AFTER
    assert Do.DEAD not in kinds(client.handle_timer(dead_at - 1))
    assert Do.DEAD in kinds(client.handle_timer(dead_at + 1))
    assert server.handle_timer(dead_at * 100) == []  # the server cannot know the client's interval


def test_legacy_tunnels_never_ping_and_never_die_of_silence():
    """3.0 has no keepalive message (the Java server would not understand it)."""
    client, server = pair(Dialect.LEGACY_3_0)
    assert client.handle_timer(86400.0) == [] and server.handle_timer(86400.0) == []


# --- 3.0: the reason of a peer's disconnect carries no meaning (issue 18) ---------------------


def java_disconnect(channel_id: int, reason: DisconnectReason, padded: bool) -> bytes:
    """The Java peers' disconnect: the server's 4 bytes, the client's with a zero appended."""
    return bytes([0x41, channel_id >> 8, channel_id & 0xFF, reason]) + b"\x00" * padded


@pytest.mark.parametrize("reason", list(DisconnectReason))
def test_legacy_client_delivers_then_closes_cleanly_whatever_the_servers_reason(reason):
    """The Java server sends RESET for every close: the data before it is delivered, then
    the stream ends CLOSED (a FIN to the application), and the wire's reason is kept."""
    client, server = pair(Dialect.LEGACY_3_0)
    mine, theirs = open_stream(client, server)
    last = server.data(theirs, b"the whole body", 0.0)
    events = client.receive([*last, java_disconnect(mine.id, reason, padded=False)], 1.0)
    assert events == [
        Event(Do.DATA, mine, b"the whole body"),
        Event(Do.CLOSED, mine, Ending.CLOSED),
    ]
    assert mine.ending is Ending.CLOSED and mine.peer_reason is reason
    assert not client.channels  # the Java server never answers a disconnect


@pytest.mark.parametrize("reason", list(DisconnectReason))
def test_legacy_server_closes_the_target_cleanly_whatever_the_clients_reason(reason):
    """The Java client sends RESET (padded to 5 bytes) when its SOCKS client closes: the
    upload's last bytes reach the target, then a FIN."""
    client, server = pair(Dialect.LEGACY_3_0)
    mine, theirs = open_stream(client, server)
    last = client.data(mine, b"end of the upload", 0.0)
    events = server.receive([*last, java_disconnect(theirs.id, reason, padded=True)], 1.0)
    assert events == [
        Event(Do.DATA, theirs, b"end of the upload"),
        Event(Do.CLOSED, theirs, Ending.CLOSED),
    ]
    assert theirs.ending is Ending.CLOSED and theirs.peer_reason is reason
    assert not server.channels


@pytest.mark.parametrize(
    ("reason", "ending"),
    [
        (DisconnectReason.GENERAL, Ending.CLOSED),
        (DisconnectReason.CLIENT_CLOSED, Ending.CLOSED),
        (DisconnectReason.BROKEN_PIPE, Ending.RESET),
        (DisconnectReason.RESET, Ending.RESET),
    ],
)
def test_3_1_keeps_the_meaning_of_reasons(reason, ending):
    """Both ends of 3.1 are gjproxy: a RESET there is a real reset, passed on as one."""
    client, server = pair()
    mine, theirs = open_stream(client, server)
    events = client.receive(
        [*server.data(theirs, b"x", 0.0), java_disconnect(mine.id, reason, padded=False)], 1.0
    )
    assert events == [Event(Do.DATA, mine, b"x"), Event(Do.CLOSED, mine, ending)]
    assert mine.peer_reason is reason


def test_a_disconnect_answering_ours_records_no_reason():
    """The peer's reason is kept only when its disconnect ended the stream."""
    client, server = pair()
    mine, theirs = open_stream(client, server)
    (closed,) = deliver(server, client.close(mine, Ending.RESET))
    assert deliver(client, server.close(theirs, Ending.CLOSED)) == []
    assert mine.ending is Ending.RESET and mine.peer_reason is None
    assert theirs.peer_reason is DisconnectReason.RESET


def test_legacy_endings_this_end_detects_stay_abnormal():
    """What gjproxy finds itself is still a reset in 3.0: a local reset, an idle stream, a
    malformed stream, a lost tunnel. The disconnect it sends says RESET."""
    client, server = pair(Dialect.LEGACY_3_0, **QUIET)
    reset, _ = open_stream(client, server)
    idle, _ = open_stream(client, server)
    _, malformed = open_stream(client, server)
    cut, _ = open_stream(client, server)
    (goodbye,) = client.close(reset, Ending.RESET)
    assert TCP_DISCONNECT.parse(goodbye.value) == (reset.id, DisconnectReason.RESET)
    assert reset.ending is Ending.RESET
    server.delivered(server.channels[cut.id], 0, IDLE)  # keeps the server's side awake
    client.delivered(cut, 0, IDLE)
    swept = client.handle_timer(IDLE + 1)
    assert Event(Do.CLOSED, idle, Ending.IDLE) in swept
    bad = bytes([0x21, 0, malformed.id, 0, 9]) + b"abc"
    assert server.receive([bad], IDLE + 1)[-1] == Event(Do.CLOSED, malformed, Ending.RESET)
    assert client.close_all() == [Event(Do.CLOSED, cut, Ending.CUT)]
