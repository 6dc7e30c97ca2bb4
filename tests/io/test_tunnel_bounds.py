"""Bounds of one tunnel's queues, on a real socket pair inside this process."""

from __future__ import annotations

import logging

from gevent import socket as gsocket

from jproxy.handlers.tunnel.driver import CONTROL_QUEUE_LIMIT, Tunnel
from jproxy.metrics import Counters
from jproxy.tunnel.mux import Channels
from jproxy.tunnel.session import Role, Session
from schemas.jproxy import ConnectStatus, Dialect, Direction


def test_a_peer_that_never_reads_our_answers_is_cut_off(caplog, tuning):
    ours, theirs = gsocket.socketpair()
    session = Session(Dialect.SECURE_3_1, bytes(16), Role.SERVER)
    channels = Channels(
        Direction.SERVER_TO_CLIENT, Dialect.SECURE_3_1, max_message=session.max_message, now=0.0
    )
    tunnel = Tunnel(ours, session, channels, counters=Counters(), tuning=tuning, name="bounded")
    with caplog.at_level(logging.WARNING):
        # No yield: once the socket buffer is full, the writer never gets to send.
        for _ in range(3 * CONTROL_QUEUE_LIMIT):
            tunnel.send_control(b"\x61\x00\x01\x00\x00\x10\x00")
    assert tunnel.closed.is_set()
    assert "does not read our answers" in caplog.text
    theirs.close()
    ours.close()


def test_a_small_message_waits_for_one_frame_of_each_busy_channel_not_a_backlog(tuning):
    """Fair sending: once the socket is full, what waits is taken one message per channel in
    turn, so a small answer leaves after at most one frame of the download ahead of it."""
    ours, theirs = gsocket.socketpair()
    key = bytes(16)
    session = Session(Dialect.SECURE_3_1, key, Role.SERVER)
    peer = Session(Dialect.SECURE_3_1, key, Role.CLIENT)
    channels = Channels(
        Direction.SERVER_TO_CLIENT,
        Dialect.SECURE_3_1,
        max_message=session.max_message,
        now=0.0,
        window=1 << 30,
    )
    client = Channels(
        Direction.CLIENT_TO_SERVER, Dialect.SECURE_3_1, max_message=session.max_message, now=0.0
    )
    streams = []
    for _ in range(2):
        [asked] = channels.receive([client.open("h", 1, 0.0).value], 0.0)
        channels.answer(asked.channel, ConnectStatus.OK, 0, 0.0)
        streams.append(asked.channel)
    bulk, small = streams
    tunnel = Tunnel(ours, session, channels, counters=Counters(), tuning=tuning, name="fair")
    frame = b"d" * channels.max_data
    while not tunnel._busy:  # until the socket refuses: the rest waits in the driver
        tunnel.send_data(bulk, channels.data(bulk, frame * 16, 0.0))
    for _ in range(16):
        tunnel.send_data(bulk, channels.data(bulk, frame * 16, 0.0))
    tunnel.send_data(small, channels.data(small, b"answer", 0.0))
    queued_bytes = 16 * 16 * len(frame)
    received = []
    theirs.settimeout(10)
    while not any(message.endswith(b"answer") for message in received):
        received += peer.feed(theirs.recv(1 << 16))
    ahead = sum(map(len, received[:-1]))
    # what the kernel and the batch in flight held before it, not the backlog queued behind
    assert ahead < queued_bytes // 2, (ahead, queued_bytes)
    tunnel.close()
    theirs.close()
    ours.close()
