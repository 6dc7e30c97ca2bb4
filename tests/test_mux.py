"""The stream multiplexer core, two ends wired back to back without sockets."""

from __future__ import annotations

import pytest

from jproxy.mux import (
    DEFAULT_WINDOW,
    ConnectAnswered,
    ConnectRequested,
    DataReceived,
    EofReceived,
    Mux,
    ProtocolError,
    Send,
    StreamClosed,
    WindowOpened,
)
from schemas import build
from schemas.fast import TCP_PACKET
from schemas.jproxy import (
    ConnectStatus,
    Dialect,
    Direction,
    DisconnectReason,
    TcpConnectRequest,
    TcpWindowUpdate,
    address_for,
)

MAX_MESSAGE = {Dialect.SECURE_3_1: 4063, Dialect.LEGACY_3_0: 4079}


def pair(dialect: Dialect = Dialect.SECURE_3_1, **options) -> tuple[Mux, Mux]:
    def make(sends: Direction) -> Mux:
        return Mux(sends, dialect, max_message=MAX_MESSAGE[dialect], **options)

    return make(Direction.CLIENT_TO_SERVER), make(Direction.SERVER_TO_CLIENT)


def deliver(receiver: Mux, *messages: bytes | None) -> list:
    events = []
    for message in messages:
        if message is not None:
            events.extend(receiver.receive(message))
    return events


def open_stream(client: Mux, server: Mux, host: str = "127.0.0.1", port: int = 80):
    stream, request = client.open(host, port)
    (requested,) = deliver(server, request)
    assert isinstance(requested, ConnectRequested)
    assert (requested.host, requested.port) == (host, port)
    (answered,) = deliver(client, server.answer(requested.stream, ConnectStatus.OK, 12))
    assert answered == ConnectAnswered(stream, ConnectStatus.OK, 12)
    return stream, requested.stream


@pytest.mark.parametrize("dialect", list(Dialect))
def test_data_is_split_to_fit_one_frame(dialect):
    client, server = pair(dialect)
    mine, theirs = open_stream(client, server, "example.org", 443)
    payload = bytes(range(256)) * 40  # 10240 bytes
    messages = client.data(mine, payload)
    assert max(map(len, messages)) == MAX_MESSAGE[dialect]
    events = deliver(server, *messages)
    assert all(isinstance(event, DataReceived) and event.stream is theirs for event in events)
    assert b"".join(bytes(event.data) for event in events) == payload


def test_failed_connect_forgets_the_stream_on_both_sides():
    client, server = pair()
    stream, request = client.open("10.9.9.9", 9)
    (requested,) = deliver(server, request)
    reply = server.answer(requested.stream, ConnectStatus.REFUSED, 3)
    (answered,) = deliver(client, reply)
    assert answered.status is ConnectStatus.REFUSED
    assert not client.streams and not server.streams


def test_flow_control_stops_the_sender_until_the_receiver_consumes():
    client, server = pair(window=64 * 1024)
    mine, theirs = open_stream(client, server)
    assert client.allowance(mine) == 64 * 1024
    deliver(server, *client.data(mine, b"x" * 64 * 1024))
    assert client.allowance(mine) == 0
    with pytest.raises(ValueError):
        client.data(mine, b"y")
    assert server.consumed(theirs, 1000) is None  # below a quarter window: no update yet
    update = server.consumed(theirs, 16 * 1024 - 1000)
    (opened,) = deliver(client, update)
    assert opened == WindowOpened(mine)
    assert client.allowance(mine) == 16 * 1024


def test_a_peer_that_overruns_its_window_has_the_stream_reset():
    client, server = pair(window=8192)
    mine, theirs = open_stream(client, server)
    overrun = TCP_PACKET.build(mine.id, b"z" * 8193)
    events = deliver(server, overrun)
    assert isinstance(events[0], StreamClosed) and events[0].reason is DisconnectReason.RESET
    assert isinstance(events[1], Send)
    assert not server.streams


def test_legacy_dialect_has_no_window():
    client, server = pair(Dialect.LEGACY_3_0, window=1024)
    mine, _ = open_stream(client, server)
    assert client.allowance(mine) >= 1 << 20
    deliver(server, *client.data(mine, b"q" * 100_000))
    assert client.consumed(mine, 100_000) is None


def test_half_close_travels_and_then_both_disconnect():
    client, server = pair()
    mine, theirs = open_stream(client, server)
    (eof,) = deliver(server, client.half_close(mine))
    assert eof == EofReceived(theirs)
    assert client.allowance(mine) == 0  # nothing may follow our EOF
    deliver(server, *[])  # the server still sends its reply...
    (data,) = deliver(client, *server.data(theirs, b"reply"))
    assert data.data == b"reply"
    (closed,) = deliver(client, server.disconnect(theirs, DisconnectReason.CLIENT_CLOSED))
    assert closed == StreamClosed(mine, DisconnectReason.CLIENT_CLOSED)
    assert mine.id in client.streams  # the id stays taken until our goodbye is sent
    assert deliver(server, client.disconnect(mine, DisconnectReason.CLIENT_CLOSED))
    assert not client.streams and not server.streams


def test_legacy_half_close_is_a_disconnect():
    client, server = pair(Dialect.LEGACY_3_0)
    mine, theirs = open_stream(client, server)
    (closed,) = deliver(server, client.half_close(mine))
    assert closed == StreamClosed(theirs, DisconnectReason.CLIENT_CLOSED)
    assert not client.streams and not server.streams
    assert server.disconnect(theirs, DisconnectReason.RESET) is None  # no answer in 3.0


def test_crossing_disconnects_never_let_an_id_serve_two_live_streams():
    """Both ends close many streams at the same moment; no id is reused while alive."""
    client, server = pair()
    pairs = [open_stream(client, server) for _ in range(50)]
    from_client = [client.disconnect(mine, DisconnectReason.CLIENT_CLOSED) for mine, _ in pairs]
    from_server = [server.disconnect(theirs, DisconnectReason.RESET) for _, theirs in pairs]
    # Before the crossing messages arrive, every id is still reserved on both sides, so new
    # streams get fresh ids.
    fresh = [open_stream(client, server) for _ in range(50)]
    old_ids = {mine.id for mine, _ in pairs}
    assert old_ids.isdisjoint(mine.id for mine, _ in fresh)
    deliver(server, *from_client)
    deliver(client, *from_server)
    assert set(client.streams) == set(server.streams) == {mine.id for mine, _ in fresh}


def test_ids_rotate_so_a_released_id_is_reused_last():
    client, server = pair()
    first, first_remote = open_stream(client, server)
    deliver(client, server.disconnect(first_remote, DisconnectReason.RESET))
    deliver(server, client.disconnect(first, DisconnectReason.RESET))
    assert not client.streams
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
    deliver(server, client.disconnect(client.streams[old.id], DisconnectReason.RESET))
    (again,) = deliver(server, request)
    assert again.stream.id == old.id and again.stream is not old
    assert server.disconnect(old, DisconnectReason.RESET) is None
    assert server.answer(old, ConnectStatus.OK, 0) is None
    assert server.streams[old.id] is again.stream


def test_server_refuses_a_connect_for_an_id_in_use_and_past_its_limit():
    client, server = pair(max_streams=2)
    mine, _ = open_stream(client, server)
    duplicate = build(
        TcpConnectRequest,
        {"connection_id": mine.id, "port": 1, "address": address_for("127.0.0.1")},
    )
    (refusal,) = deliver(server, duplicate)
    assert deliver(client, refusal.message) == []  # our open stream ignores a stray reply
    assert client.is_live(mine) and server.streams[mine.id].phase.value == "open"
    open_stream(client, server)
    with pytest.raises(ProtocolError):
        client.open("127.0.0.1", 3)
    third = build(
        TcpConnectRequest, {"connection_id": 77, "port": 3, "address": address_for("::1")}
    )
    (refusal,) = deliver(server, third)
    assert refusal.message == bytes.fromhex("01004d060000")  # id 77, status 6 (limit), 0 ms


def test_client_gives_up_while_the_server_connects():
    client, server = pair()
    stream, request = client.open("127.0.0.1", 80)
    (requested,) = deliver(server, request)
    deliver(server, client.disconnect(stream, DisconnectReason.GENERAL))
    goodbye = server.answer(requested.stream, ConnectStatus.OK, 5)
    assert not server.is_live(requested.stream)
    deliver(client, goodbye)
    assert not client.streams and not server.streams


def test_unknown_and_stray_messages_are_ignored_but_malformed_ones_end_3_1():
    client, server = pair()
    assert deliver(server, b"\x07\x00\x01\x02\x03") == []
    assert deliver(server, TCP_PACKET.build(99, b"nobody home")) == []
    stray = build(TcpWindowUpdate, {"connection_id": 98, "increment": 10})
    assert deliver(server, stray) == []
    with pytest.raises(ProtocolError):
        server.receive(b"\x41\x00")
    legacy_client, legacy_server = pair(Dialect.LEGACY_3_0)
    assert deliver(legacy_server, b"\x41\x00") == []
    assert deliver(legacy_server, stray) == []  # 3.1-only message, ignored in 3.0


def test_default_window_is_a_few_hundred_kib():
    assert 128 * 1024 <= DEFAULT_WINDOW <= 1024 * 1024


def test_the_java_clients_padded_disconnect_closes_the_stream():
    client, server = pair(Dialect.LEGACY_3_0)
    mine, theirs = open_stream(client, server)
    padded = client.disconnect(mine, DisconnectReason.RESET) + b"\x00"
    assert len(padded) == 5
    (closed,) = deliver(server, padded)
    assert closed == StreamClosed(theirs, DisconnectReason.RESET)
    assert not server.streams


@pytest.mark.parametrize("dialect", list(Dialect))
def test_an_unknown_reason_or_status_ends_3_1_and_is_ignored_in_3_0(dialect):
    client, server = pair(dialect)
    mine, theirs = open_stream(client, server)
    connecting, _ = client.open("127.0.0.1", 81)
    bad_reason = bytes([0x41, 0, mine.id, 9])
    bad_status = bytes([0x01, 0, connecting.id, 9, 0, 0])
    for receiver, message, where in (
        (server, bad_reason, "TcpDisconnect.reason"),
        (client, bad_status, "TcpConnectReply.status"),
    ):
        if dialect is Dialect.SECURE_3_1:
            with pytest.raises(ProtocolError, match=where):
                receiver.receive(message)
        else:
            assert receiver.receive(message) == []
    assert server.is_live(theirs) and client.is_live(mine) and client.is_live(connecting)
