"""The console's HTTP port in this process, on real loopback sockets: the secret, CORS, the
clash API over HTTP and WebSocket, resets, and hostile clients (slow, many, odd paths)."""

from __future__ import annotations

import json
import logging
import time
from types import SimpleNamespace

import gevent
import gevent.socket
import pytest
from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, Ping, Pong, Request, TextMessage

from jproxy.console import shapes
from jproxy.handlers.console import web
from jproxy.handlers.console.live import Handle, LiveConsole
from jproxy.handlers.console.web import ConsoleServer
from jproxy.handlers.logs.access import AccessRecord
from jproxy.tunnel.mux import Ending
from schemas.jproxy import ConnectStatus, Dialect

SECRET = "tops3cret"


class FakeStream:
    """A connection's counters and its reset, as a relay would give them."""

    def __init__(self) -> None:
        self.up, self.down, self.reset_count = 0, 0, 0

    def handle(self) -> Handle:
        def reset() -> None:
            self.reset_count += 1

        return Handle(lambda: (self.up, self.down), reset)


@pytest.fixture
def console():
    live = LiveConsole("client", "9.9.9")
    server = ConsoleServer(("127.0.0.1", 0), live, SECRET, max_clients=8)
    server.start()
    yield server
    server.stop()


def exchange(server: ConsoleServer, head: bytes, timeout: float = 5.0) -> bytes:
    """Send ``head``, read the answer until the server closes."""
    sock = gevent.socket.create_connection(server.address, timeout=timeout)
    try:
        sock.sendall(head)
        answer = b""
        while data := sock.recv(65536):
            answer += data
        return answer
    finally:
        sock.close()


def get(server, path: str, *headers: str, method: str = "GET") -> tuple[int, dict, bytes]:
    lines = [f"{method} {path} HTTP/1.1", "Host: console", *headers, "", ""]
    answer = exchange(server, "\r\n".join(lines).encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *fields = head.decode().split("\r\n")
    table = {name.lower(): value.strip() for name, _, value in (f.partition(":") for f in fields)}
    return int(status_line.split()[1]), table, body


def test_data_needs_the_secret_as_bearer_or_token(console):
    assert get(console, "/api/tunnels")[0] == 401
    assert get(console, "/api/tunnels?token=wrong")[0] == 401
    assert get(console, "/api/tunnels", "Authorization: Bearer wrong")[0] == 401
    assert get(console, "/version", f"Authorization: Basic {SECRET}")[0] == 401
    status, headers, body = get(console, "/version", f"Authorization: Bearer {SECRET}")
    assert status == 200 and json.loads(body) == {"version": "gjproxy 9.9.9", "meta": False}
    assert headers["access-control-allow-origin"] == "*"
    assert get(console, f"/api/connections?token={SECRET}")[0] == 200


def test_a_preflight_needs_no_secret_and_allows_delete_with_authorization(console):
    status, headers, _ = get(
        console,
        "/connections/1",
        "Origin: http://dashboard.example",
        "Access-Control-Request-Method: DELETE",
        method="OPTIONS",
    )
    assert status == 204
    assert headers["access-control-allow-origin"] == "*"
    assert "Authorization" in headers["access-control-allow-headers"]
    assert "DELETE" in headers["access-control-allow-methods"]


def test_the_root_is_json_for_tools_and_the_page_for_a_browser(console):
    status, _, body = get(console, "/")
    assert status == 200 and json.loads(body) == {"hello": "gjproxy"}
    status, headers, _ = get(console, "/?token=abc", "Accept: text/html,*/*")
    assert status == 302 and headers["location"] == "/ui/?token=abc"
    status, headers, body = get(console, "/ui/")
    assert status == 200 and b"<canvas" in body
    assert "script-src 'self'" in headers["content-security-policy"]
    assert get(console, "/ui/console.js")[0] == 200


@pytest.mark.parametrize(
    "path",
    ["/ui/../web.py", "/ui/%2e%2e/web.py", "/../../etc/passwd", "/api/nothing", "/favicon.ico"],
)
def test_odd_paths_get_404(console, path):
    assert get(console, path, f"Authorization: Bearer {SECRET}")[0] == 404


def test_an_oversized_head_gets_431_and_garbage_400(console):
    answer = exchange(console, b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert exchange(console, b"\x16\x03\x01\x02\x00garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")


def test_delete_resets_the_connection_and_answers_204(console):
    live, stream = console.live, FakeStream()
    row = live.board.open(
        "tcp", "127.0.0.1:1", "h", 80, tunnel=None, now=0, wall=0, handle=stream.handle()
    )
    auth = f"Authorization: Bearer {SECRET}"
    assert get(console, f"/connections/{row.id}", auth, method="DELETE")[0] == 204
    assert stream.reset_count == 1
    assert get(console, f"/api/connections/{row.id}", auth, method="DELETE")[0] == 204
    assert get(console, "/api/connections/zzz", auth, method="DELETE")[0] == 404
    assert get(console, "/api/tunnels", auth, method="DELETE")[0] == 405
    assert stream.reset_count == 2


def test_clash_connections_and_traffic_over_plain_http(console):
    live, stream = console.live, FakeStream()
    row = live.board.open(
        "tcp", "127.0.0.1:5555", "example.com", 443, tunnel=None, now=0, wall=0,
        handle=stream.handle(),
    )  # fmt: skip
    stream.up, stream.down = 10, 20
    live.sample()
    status, _, body = get(console, f"/connections?token={SECRET}")
    document = json.loads(body)
    assert status == 200 and document["connections"][0]["id"] == row.id
    assert document["connections"][0]["metadata"]["sourcePort"] == "5555"
    # /traffic over HTTP: an endless stream, one JSON object per line
    sock = gevent.socket.create_connection(console.address, timeout=5)
    sock.sendall(f"GET /traffic?token={SECRET} HTTP/1.0\r\n\r\n".encode())
    received = b""
    while received.count(b"\n}") < 2 and received.count(b"}\n") < 2:
        received += sock.recv(4096)
        live.sample()
    sock.close()
    lines = received.partition(b"\r\n\r\n")[2].split(b"\n")
    assert json.loads(lines[0]).keys() == {"up", "down"}


def websocket(server: ConsoleServer, target: str, origin: str = "http://yacd.example"):
    sock = gevent.socket.create_connection(server.address, timeout=5)
    client = WSConnection(ConnectionType.CLIENT)
    extra = [("Origin", origin)]
    sock.sendall(client.send(Request(host="console", target=target, extra_headers=extra)))
    return sock, client


def messages(sock, client, count: int, pump=lambda: None) -> list:
    seen = []
    while len(seen) < count:
        client.receive_data(sock.recv(65536))
        for event in client.events():
            if isinstance(event, AcceptConnection | TextMessage | Pong):
                seen.append(event)
        pump()
    return seen


def test_websocket_streams_with_a_token_and_a_foreign_origin(console):
    live = console.live
    sock, client = websocket(console, f"/traffic?token={SECRET}")
    seen = messages(sock, client, 3, live.sample)
    assert isinstance(seen[0], AcceptConnection)
    assert json.loads(seen[1].data) == {"up": 0, "down": 0}
    sock.sendall(client.send(Ping(payload=b"hi")))
    assert any(isinstance(event, Pong) for event in messages(sock, client, 2, live.sample))
    sock.close()
    sock, client = websocket(console, f"/connections?token={SECRET}")
    seen = messages(sock, client, 2, live.sample)
    assert json.loads(seen[1].data)["connections"] == []
    sock.close()
    sock, client = websocket(console, "/traffic?token=wrong")
    assert sock.recv(4096).startswith(b"HTTP/1.1 401 ")
    sock.close()


def test_a_client_that_sends_nothing_is_dropped_at_the_head_deadline(console, monkeypatch):
    monkeypatch.setattr(web, "HEAD_TIMEOUT", 0.5)
    sock = gevent.socket.create_connection(console.address, timeout=5)
    sock.sendall(b"GET /api/tun")  # and never the rest
    started = time.monotonic()
    assert sock.recv(4096) == b""
    assert time.monotonic() - started < 3
    sock.close()


def test_past_the_cap_a_console_connection_gets_503_and_the_cap_frees(console):
    idle = [gevent.socket.create_connection(console.address) for _ in range(console.max_clients)]
    gevent.sleep(0.2)
    assert console.clients == console.max_clients
    assert exchange(console, b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 503 ")
    for sock in idle:
        sock.close()
    deadline = time.monotonic() + 5
    while console.clients and time.monotonic() < deadline:
        gevent.sleep(0.05)
    assert get(console, "/")[0] == 200


def test_a_stream_reader_that_stops_reading_is_dropped_and_nothing_queues(
    console, monkeypatch, caplog
):
    monkeypatch.setattr(web, "SEND_TIMEOUT", 0.5)
    live = console.live
    for number in range(600):  # a snapshot of some 150 KB
        live.board.open(
            "tcp", "127.0.0.1:1", f"host-{number}.example", 443, tunnel=None, now=0, wall=0,
            handle=FakeStream().handle(),
        )  # fmt: skip
    sock = gevent.socket.socket()
    sock.setsockopt(gevent.socket.SOL_SOCKET, gevent.socket.SO_RCVBUF, 4096)
    sock.connect(console.address)
    sock.sendall(f"GET /api/events?token={SECRET} HTTP/1.1\r\nHost: c\r\n\r\n".encode())
    deadline = time.monotonic() + 20
    while console.clients and time.monotonic() < deadline:
        live.sample()  # each sample is one more message the reader does not take
        gevent.sleep(0.05)
    assert console.clients == 0, "the stream still holds its slot"
    assert len(console._cache) <= 3  # one document per kind, shared: nothing per reader
    assert not [record for record in caplog.records if record.levelname == "ERROR"]
    sock.close()


class FakeClient:
    """What the console reads of a ``TunnelPool``."""

    def __init__(self) -> None:
        self.current = None
        self.server = ("203.0.113.9", 16384)
        self.dialect = Dialect.SECURE_3_1


class FakeTunnel:
    def __init__(self) -> None:
        self.channels = SimpleNamespace(rtt=0.012, channels={1: None, 5: None})
        self.datagrams = None


def test_the_client_s_tunnel_row_follows_its_ups_and_downs():
    now = [100.0]
    live = LiveConsole("client", "1", clock=lambda: now[0], wall=lambda: 1e9 + now[0])
    client = FakeClient()
    live.watch_client(client)
    [row] = shapes.tunnels(live.board, now[0])["tunnels"]
    assert (row["state"], row["server"]) == ("down", "203.0.113.9:16384")
    client.current = FakeTunnel()
    now[0] = 105.0
    live.refresh_tunnels()
    [row] = shapes.tunnels(live.board, 107.0)["tunnels"]
    assert (row["state"], row["for"], row["rtt_ms"], row["channels"]) == ("up", 2.0, 12.0, 2)
    client.current = None
    live.refresh_tunnels()
    [row] = shapes.tunnels(live.board, 107.0)["tunnels"]
    assert row["state"] == "down"


def test_refusals_failures_and_warnings_become_notes():
    live = LiveConsole("server", "1")
    live.refused(("127.0.0.1", 4000), "10.0.0.1:80", "server says NOT_ALLOWED",
                 ConnectStatus.NOT_ALLOWED)  # fmt: skip
    live.refused(("127.0.0.1", 4001), "127.0.0.1:1", "server says REFUSED", ConnectStatus.REFUSED)
    record = AccessRecord("tunnel", "alice", "127.0.0.1:9", "10.0.0.2:22", 1e9)
    record.ended, record.reason = Ending.REFUSED, "10.0.0.2 is in a denied range"
    live.access(record)
    closed = AccessRecord("tunnel", "alice", "127.0.0.1:9", "127.0.0.1:80", 1e9)
    closed.ended = Ending.CLOSED
    live.access(closed)  # a connection that ended well is no note
    live.start()
    try:
        logging.getLogger("jproxy.test").warning("a warning for %s", "the console")
    finally:
        live.stop()
    notes = shapes.notes(live.board)["notes"]
    assert [(n["kind"], n["target"]) for n in notes] == [
        ("warning", ""),
        ("refused", "10.0.0.2:22"),
        ("failed", "127.0.0.1:1"),
        ("refused", "10.0.0.1:80"),
    ]
    assert notes[0]["text"] == "a warning for the console" and notes[1]["user"] == "alice"
