"""The console's HTTP port: the page, its JSON API and stream, and a clash-compatible API.

HTTP/1.1 is parsed by h11 and WebSocket framed by wsproto (both sans-I/O): this module only
moves bytes and routes. Every request is answered and the connection closed (``Connection:
close``), except the streams: the page's Server-Sent Events (``/api/events``), and clash's
``/traffic`` and ``/connections`` as WebSocket or, over plain HTTP, ``/traffic`` as one JSON
line a second.

Bounds: at most ``MAX_CLIENTS`` console connections (the next one gets 503 at once), a
request head of ``MAX_HEAD`` bytes (431), ``HEAD_TIMEOUT`` seconds to send it, ``SEND_TIMEOUT``
for any write (a client that stops reading is dropped). A stream sends the latest sample
each time, built once per sample for every client: nothing queues up for a slow reader,
which simply misses samples. The proxy's data path never waits for the console.

Every data request needs the secret: ``Authorization: Bearer SECRET`` or ``?token=SECRET``
(compared in constant time); the page's files, ``GET /`` and CORS preflights do not.
"""

from __future__ import annotations

import hmac
import json
import logging
import mimetypes
import socket
from collections.abc import Callable, Iterator
from http import HTTPStatus
from importlib import resources
from urllib.parse import parse_qs, unquote, urlsplit

import gevent
import h11
from gevent.lock import Semaphore
from gevent.pool import Pool
from wsproto.connection import Connection as WebSocket
from wsproto.connection import ConnectionType
from wsproto.events import CloseConnection, Ping, TextMessage
from wsproto.utilities import RemoteProtocolError, generate_accept_token

from jproxy.config import host_port_text
from jproxy.console import shapes
from jproxy.handlers.console.live import SAMPLE_INTERVAL, LiveConsole
from jproxy.handlers.net.descriptors import Acceptor
from jproxy.handlers.net.sockets import set_nodelay

log = logging.getLogger(__name__)

MAX_CLIENTS = 32
MAX_HEAD = 8192
HEAD_TIMEOUT = 5.0
SEND_TIMEOUT = 10.0
READ_SIZE = 4096
LINGER = 1.0
MAX_LINGER_BYTES = 64 * 1024
BUSY_LINGER = 0.25
"""The most time a connection past the cap costs us: its 503, and its request read and dropped."""
MAX_WS_INPUT = 64 * 1024
"""Bytes a WebSocket client may send us in all (it has nothing to say but pings and close)."""
STATIC = "jproxy.handlers.console"
PAGE_FILES = ("index.html", "console.js", "console.css")
CORS = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-allow-headers", b"Authorization, Content-Type"),
    (b"access-control-allow-methods", b"GET, DELETE, OPTIONS"),
    (b"access-control-max-age", b"600"),
]
PAGE_POLICY = (
    b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self';"
    b" connect-src 'self'; frame-ancestors 'none'"
)


class Answer(Exception):
    """Stop handling the request and answer with this status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ConsoleServer:
    """Serves a ``LiveConsole`` on ``listen``; ``secret`` guards the data."""

    def __init__(
        self,
        listen: tuple[str, int],
        live: LiveConsole,
        secret: str,
        *,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        if not secret:
            raise ValueError("the console needs a secret")
        self.live = live
        self._secret = secret.encode()
        self.max_clients = max_clients
        self.clients = 0
        self._cache: dict[str, tuple[int, bytes]] = {}
        self._server = Acceptor(listen, self._handle, spawn=Pool(), backlog=128)

    @property
    def address(self) -> tuple[str, int]:
        return self._server.address[:2]

    def start(self) -> None:
        self._server.start()
        log.info("console on http://%s/ui/", host_port_text(self.address))

    def stop(self, timeout: float = 0.2) -> None:
        """Stop now: the streams are cut, nothing of the console needs a graceful end."""
        self.live.stop()
        self._server.stop(timeout)

    # --- one connection ---------------------------------------------------------------------

    def _handle(self, sock: socket.socket, peer: tuple) -> None:
        if self.clients >= self.max_clients:
            _refuse_busy(sock)
            return
        self.clients += 1
        try:
            set_nodelay(sock)
            self._serve(sock, h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD))
        except (OSError, gevent.Timeout):
            pass
        except Exception:  # a bug here must cost one console answer, never the proxy
            log.exception("console: a request failed")
        finally:
            self.clients -= 1
            sock.close()

    def _serve(self, sock: socket.socket, conn: h11.Connection) -> None:
        try:
            with gevent.Timeout(HEAD_TIMEOUT):
                request = _read_request(sock, conn)
        except h11.RemoteProtocolError as error:
            _send_simple(sock, conn, error.error_status_hint, f"bad request: {error}")
            _linger(sock)
            return
        if request is None:
            return
        try:
            self._route(sock, conn, request)
        except Answer as answer:
            _send_simple(sock, conn, answer.status, str(answer))

    def _route(self, sock: socket.socket, conn: h11.Connection, request: h11.Request) -> None:
        method = request.method.decode("ascii", "replace")
        parts = urlsplit(request.target.decode("ascii", "replace"))
        path, query = parts.path, parse_qs(parts.query)
        headers = {name.decode("latin-1"): value for name, value in request.headers}
        if method == "OPTIONS":  # a CORS preflight carries no credentials
            _send(sock, conn, 204, b"", [])
            return
        if path == "/" and method == "GET":
            if b"text/html" in headers.get("accept", b""):
                location = "/ui/" + (f"?{parts.query}" if parts.query else "")
                _send(sock, conn, 302, b"", [(b"location", location.encode())])
            else:
                _send_json(sock, conn, {"hello": "gjproxy"})
            return
        if path in ("/ui", "/ui/") or path.startswith("/ui/"):
            self._page_file(sock, conn, method, path)
            return
        routes = self._routes()
        deleted = next(
            (p for p in ("/api/connections/", "/connections/") if path.startswith(p)), ""
        )
        if not deleted and not any(path == known for _, known in routes):
            raise Answer(404, "no such page")
        self._authorize(headers, query)
        if deleted and method == "DELETE":
            self._delete(sock, conn, unquote(path[len(deleted) :]))
            return
        route = routes.get((method, path))
        if route is None:
            raise Answer(405, "method not allowed")
        route(sock, conn, headers)

    def _routes(self) -> dict[tuple[str, str], Callable]:
        return {
            ("GET", "/version"): self._version,
            ("GET", "/api/tunnels"): self._json(lambda now: shapes.tunnels(self.live.board, now)),
            ("GET", "/api/connections"): self._json(
                lambda now: shapes.connections(self.live.board, now)
            ),
            ("GET", "/api/refusals"): self._json(lambda now: shapes.notes(self.live.board)),
            ("GET", "/api/traffic"): self._json(
                lambda now: {"history": shapes.history(self.live.board)}
            ),
            ("GET", "/api/events"): self._events,
            ("GET", "/connections"): self._clash_connections,
            ("GET", "/traffic"): self._clash_traffic,
            ("DELETE", "/connections"): self._delete_all,
        }

    def _authorize(self, headers: dict[str, bytes], query: dict[str, list[str]]) -> None:
        given = b""
        scheme, _, credential = headers.get("authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer":
            given = credential.strip()
        elif query.get("token"):
            given = query["token"][0].encode("utf-8", "replace")
        if not hmac.compare_digest(given, self._secret):
            raise Answer(401, "the console's secret is needed (Bearer or ?token=)")

    # --- answers ----------------------------------------------------------------------------

    def _version(self, sock, conn, headers) -> None:
        _send_json(sock, conn, shapes.clash_version(self.live.version))

    def _json(self, build: Callable[[float], dict]) -> Callable:
        def answer(sock, conn, headers) -> None:
            self.live.refresh_tunnels()
            _send_json(sock, conn, build(self.live.clock()))

        return answer

    def _delete(self, sock, conn, connection_id: str) -> None:
        if not self.live.reset(connection_id):
            raise Answer(404, "no such connection")
        _send(sock, conn, 204, b"", [])

    def _delete_all(self, sock, conn, headers) -> None:
        for connection_id in list(self.live.board.connections):
            self.live.reset(connection_id)
        _send(sock, conn, 204, b"", [])

    def _page_file(self, sock, conn, method: str, path: str) -> None:
        if method != "GET":
            raise Answer(405, "method not allowed")
        name = path[len("/ui/") :] or "index.html"
        if name not in PAGE_FILES:
            raise Answer(404, "no such page")
        body = resources.files(STATIC).joinpath("static", name).read_bytes()
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        extra = [
            (b"content-type", f"{kind}; charset=utf-8".encode()),
            (b"content-security-policy", PAGE_POLICY),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
        ]
        _send(sock, conn, 200, body, extra)

    # --- streams ----------------------------------------------------------------------------

    def _latest(self, name: str, build: Callable[[], dict]) -> bytes:
        """The document ``name`` of the latest sample, built once for every client."""
        cached = self._cache.get(name)
        if cached is not None and cached[0] == self.live.ticks:
            return cached[1]
        data = json.dumps(build(), separators=(",", ":")).encode()
        self._cache[name] = (self.live.ticks, data)
        return data

    def _samples(self, name: str, build: Callable[[], dict]) -> Iterator[bytes]:
        """The latest document after each sample, forever (a slow reader skips samples)."""
        seen = self.live.ticks
        while True:
            yield self._latest(name, build)
            seen = self.live.wait_tick(seen, SAMPLE_INTERVAL * 5)

    def _snapshot(self) -> dict:
        return shapes.snapshot(self.live.board, self.live.clock(), self.live.version)

    def _events(self, sock, conn, headers) -> None:
        """The page's stream: Server-Sent Events, one snapshot a second."""
        _start_stream(sock, conn, b"text/event-stream")
        for data in self._samples("snapshot", self._snapshot):
            _send_data(sock, conn, b"data: " + data + b"\n\n")

    def _clash_connections(self, sock, conn, headers) -> None:
        build = lambda: shapes.clash_connections(self.live.board)  # noqa: E731
        if _is_websocket(headers):
            _serve_websocket(sock, conn, headers, self._samples("clash-connections", build))
        else:
            _send_json(sock, conn, build())

    def _clash_traffic(self, sock, conn, headers) -> None:
        build = lambda: shapes.clash_traffic(self.live.board)  # noqa: E731
        samples = self._samples("clash-traffic", build)
        if _is_websocket(headers):
            _serve_websocket(sock, conn, headers, samples)
            return
        _start_stream(sock, conn, b"application/json")
        for data in samples:
            _send_data(sock, conn, data + b"\n")


# --- HTTP helpers -----------------------------------------------------------------------------


def _read_request(sock: socket.socket, conn: h11.Connection) -> h11.Request | None:
    """The request's head (its body, if any, is never read: no route takes one)."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = sock.recv(READ_SIZE)
            conn.receive_data(data)
            if not data and conn.their_state is h11.IDLE:
                return None
            continue
        if isinstance(event, h11.Request):
            return event
        if isinstance(event, h11.ConnectionClosed):
            return None


def _headers(extra: list[tuple[bytes, bytes]], length: int | None) -> list[tuple[bytes, bytes]]:
    headers = [*CORS, (b"cache-control", b"no-store"), (b"connection", b"close"), *extra]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return headers


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _write(sock: socket.socket, data: bytes) -> None:
    with gevent.Timeout(SEND_TIMEOUT):
        sock.sendall(data)


def _send(
    sock: socket.socket,
    conn: h11.Connection,
    status: int,
    body: bytes,
    extra: list[tuple[bytes, bytes]],
) -> None:
    response = h11.Response(
        status_code=status, headers=_headers(extra, len(body)), reason=_reason(status)
    )
    wire = conn.send(response)
    if body:
        wire += conn.send(h11.Data(data=body))
    wire += conn.send(h11.EndOfMessage())
    _write(sock, wire)


def _send_json(sock: socket.socket, conn: h11.Connection, document: dict) -> None:
    body = json.dumps(document, separators=(",", ":")).encode()
    _send(sock, conn, 200, body, [(b"content-type", b"application/json")])


def _send_simple(sock: socket.socket, conn: h11.Connection, status: int, message: str) -> None:
    """An error answer, as JSON ``{"message": ...}`` like clash's."""
    body = json.dumps({"message": message}).encode()
    try:
        _send(sock, conn, status, body, [(b"content-type", b"application/json")])
    except h11.LocalProtocolError:  # h11 cannot answer in this state: close without a word
        pass


def _linger(sock: socket.socket, seconds: float = LINGER) -> None:
    """After an answer to a request we did not read whole: read (and drop) what the client
    still sends, a little while, so that closing does not reset the connection and destroy
    the answer before the client reads it."""
    try:
        sock.shutdown(socket.SHUT_WR)
        with gevent.Timeout(seconds):
            taken = 0
            while taken < MAX_LINGER_BYTES and (data := sock.recv(READ_SIZE)):
                taken += len(data)
    except (OSError, gevent.Timeout):
        pass


def _refuse_busy(sock: socket.socket) -> None:
    """503 without reading the request: the console is at its limit of connections."""
    body = b'{"message":"too many console connections"}'
    head = (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        b"access-control-allow-origin: *\r\nconnection: close\r\n"
        b"content-length: %d\r\n\r\n" % len(body)
    )
    try:
        with gevent.Timeout(BUSY_LINGER):
            sock.sendall(head + body)
        _linger(sock, BUSY_LINGER)
    except (OSError, gevent.Timeout):
        pass
    finally:
        sock.close()


def _start_stream(sock: socket.socket, conn: h11.Connection, kind: bytes) -> None:
    """A response without a length: chunked (HTTP/1.1) or ended by the close (HTTP/1.0)."""
    headers = _headers([(b"content-type", kind), (b"x-accel-buffering", b"no")], None)
    _write(sock, conn.send(h11.Response(status_code=200, headers=headers, reason=b"OK")))


def _send_data(sock: socket.socket, conn: h11.Connection, data: bytes) -> None:
    _write(sock, conn.send(h11.Data(data=data)))


# --- WebSocket --------------------------------------------------------------------------------


def _is_websocket(headers: dict[str, bytes]) -> bool:
    return headers.get("upgrade", b"").lower() == b"websocket"


def _serve_websocket(
    sock: socket.socket, conn: h11.Connection, headers: dict[str, bytes], messages: Iterator[bytes]
) -> None:
    """Upgrade, then send each message as a text frame until the client leaves; a foreign
    Origin is accepted (dashboards run elsewhere; the secret is what guards)."""
    key = headers.get("sec-websocket-key")
    if not key or headers.get("sec-websocket-version") != b"13":
        raise Answer(400, "a WebSocket upgrade needs Sec-WebSocket-Key and version 13")
    upgrade = h11.InformationalResponse(
        status_code=101,
        headers=[
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
            (b"sec-websocket-accept", generate_accept_token(key)),
        ],
    )
    _write(sock, conn.send(upgrade))
    socket_ = WebSocket(ConnectionType.SERVER, trailing_data=conn.trailing_data[0])
    lock = Semaphore()

    def send(event) -> None:
        with lock:
            _write(sock, socket_.send(event))

    listener = gevent.spawn(_listen_websocket, sock, socket_, send)
    try:
        for message in messages:
            if listener.ready():
                return
            send(TextMessage(data=message.decode()))
    finally:
        listener.kill()


def _listen_websocket(sock: socket.socket, socket_: WebSocket, send: Callable) -> None:
    """Answer pings and the close; drop anything else; end at EOF or past ``MAX_WS_INPUT``."""
    taken = 0
    try:
        while taken < MAX_WS_INPUT:
            data = sock.recv(READ_SIZE)
            if not data:
                return
            taken += len(data)
            socket_.receive_data(data)
            for event in socket_.events():
                if isinstance(event, Ping):
                    send(event.response())
                elif isinstance(event, CloseConnection):
                    send(event.response())
                    return
    except (OSError, gevent.Timeout, RemoteProtocolError):  # a bad frame ends the stream
        return
