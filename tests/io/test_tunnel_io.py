"""Playbooks of the tunnel I/O layer: two tunnel ends in this process over a loopback TCP
connection, real local sockets on both sides, and a fake clock for every deadline."""

from __future__ import annotations

import time

import gevent
import pytest
from gevent import socket as gsocket

from jproxy.handlers.tunnel.driver import Tunnel
from jproxy.metrics import Counters
from jproxy.tuning import RelayTuning
from jproxy.tunnel import mux as mux_module
from jproxy.tunnel.mux import Channels
from jproxy.tunnel.session import Role, Session
from schemas.jproxy import ConnectStatus, Dialect, Direction

KEY = bytes(range(16))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tcp_pair() -> tuple[gsocket.socket, gsocket.socket]:
    with gsocket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        near = gsocket.create_connection(listener.getsockname())
        far, _ = listener.accept()
    return near, far


class Pair:
    """A client and a server tunnel end; each stream the client opens gets a 'target' socket."""

    def __init__(self, dialect: Dialect, clock, **options) -> None:
        self.targets: list[gsocket.socket] = []
        client_sock, server_sock = tcp_pair()

        def end(sock, role, sends, **extra) -> Tunnel:
            session = Session(dialect, KEY, role)
            channels = Channels(
                sends, dialect, max_message=session.max_message, now=clock(), **options
            )
            return Tunnel(
                sock,
                session,
                channels,
                counters=Counters(),
                tuning=RelayTuning(),
                clock=clock,
                name=role.value,
                **extra,
            )

        self.client = end(client_sock, Role.CLIENT, Direction.CLIENT_TO_SERVER)
        self.server = end(
            server_sock,
            Role.SERVER,
            Direction.SERVER_TO_CLIENT,
            on_request=lambda tunnel, request: gevent.spawn(self._serve, tunnel, request.channel),
        )
        self.greenlets = [gevent.spawn(self.client.run), gevent.spawn(self.server.run)]

    def _serve(self, tunnel: Tunnel, channel) -> None:
        target, ours = tcp_pair()
        self.targets.append(target)
        if tunnel.answer(channel, ConnectStatus.OK, 0):
            tunnel.attach(channel, ours).run()

    def open(self) -> tuple[gsocket.socket, gsocket.socket]:
        """(the application's socket, the target's socket) of a new stream."""
        app, ours = tcp_pair()
        relay, (status, _) = self.client.open_stream("127.0.0.1", 9, ours, 5)
        assert status is ConnectStatus.OK
        gevent.spawn(relay.run)
        with gevent.Timeout(5):
            while len(self.targets) < len(self.client.channels.channels):
                gevent.sleep(0.01)
        return app, self.targets[-1]

    def close(self) -> None:
        self.client.close()
        self.server.close()
        gevent.joinall(self.greenlets, timeout=5)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def recv_exactly(sock: gsocket.socket, size: int) -> bytes:
    data = b""
    with gevent.Timeout(10):
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            assert chunk, f"EOF after {len(data)} of {size}"
            data += chunk
    return data


def assert_reset(sock: gsocket.socket) -> None:
    with gevent.Timeout(10), pytest.raises(ConnectionResetError):
        while sock.recv(65536):
            pass


def wait_until(condition) -> None:
    with gevent.Timeout(5):
        while not condition():
            gevent.sleep(0.01)


@pytest.mark.parametrize("dialect", list(Dialect))
def test_bytes_flow_both_ways_and_ends_free_the_ids(dialect, clock):
    pair = Pair(dialect, clock)
    app, target = pair.open()
    app.sendall(b"request")
    assert recv_exactly(target, 7) == b"request"
    target.sendall(b"answer")
    assert recv_exactly(app, 6) == b"answer"
    if dialect is Dialect.SECURE_3_1:  # half-close: the other direction goes on
        app.shutdown(gsocket.SHUT_WR)
        with gevent.Timeout(5):
            assert target.recv(10) == b""
        target.sendall(b"after eof")
        assert recv_exactly(app, 9) == b"after eof"
    target.close()
    with gevent.Timeout(5):
        assert app.recv(10) == b""  # a clean end is a clean EOF
    app.close()
    wait_until(lambda: not pair.client.channels.channels and not pair.server.channels.channels)
    pair.close()


def test_a_small_window_is_granted_again_as_the_data_is_delivered(clock):
    """5 MB through a 64 KiB window completes only if every delivery grants credit back."""
    pair = Pair(Dialect.SECURE_3_1, clock, window=64 * 1024)
    app, target = pair.open()
    payload = bytes(range(256)) * 20_000
    gevent.spawn(target.sendall, payload)
    assert recv_exactly(app, len(payload)) == payload
    pair.close()


def test_the_sweep_resets_an_idle_stream_on_both_sides(clock):
    pair = Pair(Dialect.SECURE_3_1, clock, idle_timeout=300.0, keepalive=1e6)
    app, target = pair.open()
    clock.now += 299
    pair.client.sweep(clock.now)
    app.sendall(b"still alive")
    assert recv_exactly(target, 11) == b"still alive"
    clock.now += 301
    pair.client.sweep(clock.now)
    assert_reset(app)
    assert_reset(target)
    wait_until(lambda: not pair.client.channels.channels and not pair.server.channels.channels)
    pair.close()


def test_a_lost_tunnel_resets_every_stream(clock):
    pair = Pair(Dialect.SECURE_3_1, clock)
    streams = [pair.open() for _ in range(3)]
    pair.server.close(planned=False)
    for app, target in streams:
        assert_reset(app)
        assert_reset(target)
    pair.close()


def test_a_client_hears_nothing_for_three_intervals_and_drops_the_tunnel(clock):
    pair = Pair(Dialect.SECURE_3_1, clock, keepalive=5.0)
    app, _ = pair.open()
    clock.now += 16  # the server answered nothing (no sweep ran on its side: it never pings)
    pair.client.sweep(clock.now)
    assert_reset(app)
    assert pair.client.closed.is_set() and not pair.client.planned
    pair.close()


def test_legacy_a_stalled_reader_is_cut_and_the_others_go_on(monkeypatch):
    monkeypatch.setattr(mux_module, "LEGACY_STALL", 0.5)
    pair = Pair(Dialect.LEGACY_3_0, time.monotonic)
    stalled_app, stalled_target = pair.open()
    moving_app, moving_target = pair.open()

    def flood() -> None:
        block = b"f" * 65536
        try:
            while True:
                stalled_target.sendall(block)
        except OSError:
            pass  # cut: the server reset the target side

    flooder = gevent.spawn(flood)
    with gevent.Timeout(10):
        while len(pair.client.channels.channels) > 1:  # nobody reads: cut within the stall
            gevent.sleep(0.05)
    assert_reset(stalled_app)  # after what the buffers held
    flooder.join(10)
    moving_target.sendall(b"next")
    assert recv_exactly(moving_app, 4) == b"next"
    pair.close()
