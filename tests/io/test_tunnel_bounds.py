"""Bounds of one tunnel's queues, on a real socket pair inside this process."""

from __future__ import annotations

import logging

from gevent import socket as gsocket

from jproxy.handlers.tunnel.driver import CONTROL_QUEUE_LIMIT, Tunnel
from jproxy.metrics import Counters
from jproxy.tunnel.mux import Channels
from jproxy.tunnel.session import Role, Session
from schemas.jproxy import Dialect, Direction


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
