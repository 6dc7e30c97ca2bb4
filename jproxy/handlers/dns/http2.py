"""Requests to one HTTPS origin over one shared HTTP/2 connection, on gevent sockets.

The ``h2`` library is the protocol; this module is its I/O. All greenlets share the one
connection: each request is a stream of it, so a lookup costs no handshake once the connection
is up. The connection is opened when first needed and again after it breaks or the server
sends GOAWAY. One reader greenlet per connection reads frames and completes the requests;
senders write under one lock, so frames leave in the order ``h2`` produced them.

Nothing here sets a deadline for a request: the caller's ``gevent.Timeout`` bounds the
connect, the handshake and the wait for the answer. A request abandoned by its caller is reset;
if nothing at all arrived while it waited, the connection is taken for dead and closed.
Anything the server sends that breaks HTTP/2 (a bad ``:status``, a header that is not UTF-8,
a protocol error, any exception in the reader) ends that connection alone: its requests fail
at once with the reason, and the next request opens a new one.

Why not httpx (with HTTP/2), or dnspython's DoH, which is httpx: the server does not
monkey-patch, so httpx's blocking client would run in threads, one per request in flight, out
of reach of the caller's ``gevent.Timeout``; and it measured slower (``bench/doh.py``). See
docs/dns-and-logs.md.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

import gevent
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from gevent import socket as gsocket
from gevent import ssl as gssl
from gevent.event import AsyncResult, Event
from gevent.lock import BoundedSemaphore, Semaphore

log = logging.getLogger(__name__)

READ_SIZE = 65536
IDLE_TIMEOUT = 120.0
"""An idle connection is closed after this long; the next request opens a new one."""
MAX_HEADER_LIST_SIZE = 16384
DEFAULT_MAX_STREAMS = 64
"""Requests in flight at once (fewer when the server allows fewer); more wait for a stream."""
STALLED_AFTER = 1.0
"""A request abandoned after waiting this long, with nothing at all received on the connection
meanwhile, means the connection is dead: it is closed, and the next request opens another."""


class Http2Error(Exception):
    """A request got no usable response; the message says why."""


class BrokenServer(Http2Error):
    """The server sent something HTTP/2 allows no client to accept; its connection ends."""


class ConnectionLost(Http2Error):
    """The connection ended before the response did (the request may never have been read)."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def tls_context(ca_file: str | None) -> gssl.SSLContext:
    """Certificate and host name checked against ``ca_file``, or the system's CAs; ALPN h2."""
    context = gssl.SSLContext(gssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = gssl.TLSVersion.TLSv1_2
    if ca_file:
        context.load_verify_locations(ca_file)
    else:
        context.load_default_certs()
    context.set_alpn_protocols(["h2"])
    return context


class Exchange:
    """One request sent on a connection; ``response()`` waits for its answer."""

    def __init__(self, connection: _Connection, stream_id: int, max_body: int) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.max_body = max_body
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.sent_at = time.monotonic()
        self.reused = connection.served > 0
        """Sent on a connection that had served before: if it ends with ``ConnectionLost``,
        the server may have closed it just then, and the request is worth one more try."""
        self.result: AsyncResult = AsyncResult()

    def response(self) -> Response:
        """The response; ``Http2Error`` if there is none. The caller's deadline bounds the wait."""
        try:
            return self.result.get()
        finally:
            self.connection.forget(self)


class _Connection:
    """One TLS connection speaking HTTP/2, its reader greenlet and its requests in flight."""

    def __init__(self, sock: gssl.SSLSocket, name: str) -> None:
        self.name = name
        self.sock = sock
        self.served = 0
        self.closed: str | None = None
        self.going_away = False
        self._exchanges: dict[int, Exchange] = {}
        self._stream_closed = Event()
        self._send_lock = Semaphore()
        self._last_received = time.monotonic()
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self._h2 = h2.connection.H2Connection(config)
        self._h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
            },
        )
        self._h2.initiate_connection()
        self._reader: gevent.Greenlet | None = None
        self._flush()
        self._reader = gevent.spawn(self._read)

    @property
    def usable(self) -> bool:
        return self.closed is None and not self.going_away

    def send(self, headers: Sequence[tuple[str, str]], body: bytes, max_body: int) -> Exchange:
        self._wait_for_a_stream()
        try:
            stream_id = self._h2.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:
            self.going_away = True
            raise ConnectionLost("connection ran out of stream ids") from None
        try:
            self._h2.send_headers(stream_id, headers, end_stream=not body)
        except h2.exceptions.ProtocolError as error:  # the connection is closing
            self.going_away = True
            raise ConnectionLost(f"cannot send: {error}") from None
        if body:
            if self._h2.local_flow_control_window(stream_id) < len(body):
                self._reset(stream_id)
                raise Http2Error("the server's flow-control window is closed")
            self._h2.send_data(stream_id, body, end_stream=True)
        exchange = Exchange(self, stream_id, max_body)
        self._exchanges[stream_id] = exchange
        self.served += 1
        self._flush()
        return exchange

    def _wait_for_a_stream(self) -> None:
        """Wait (within the caller's deadline) while the server's stream limit is reached."""
        while self.usable and (
            self._h2.open_outbound_streams >= self._h2.remote_settings.max_concurrent_streams
        ):
            self._stream_closed.clear()
            self._stream_closed.wait()
        if not self.usable:
            raise ConnectionLost(f"connection closed: {self.closed or 'the server sent GOAWAY'}")

    def forget(self, exchange: Exchange) -> None:
        """The caller is done with ``exchange``: reset its stream if it is still open."""
        if self._exchanges.pop(exchange.stream_id, None) is None or self.closed:
            return
        exchange.result.set_exception(Http2Error("abandoned by its caller"))  # frees the stream
        waited = time.monotonic() - exchange.sent_at
        if self._last_received < exchange.sent_at and waited >= STALLED_AFTER:
            self.close(f"nothing received for {waited:.1f} s while a request waited")
            return
        self._reset(exchange.stream_id)  # the RST_STREAM leaves with the next frames sent

    def _reset(self, stream_id: int) -> None:
        try:
            self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        except h2.exceptions.StreamClosedError:
            pass  # it ended on its own meanwhile
        self._stream_closed.set()

    def close(self, reason: str) -> None:
        if self.closed is not None:
            return
        self.closed = reason
        log.info("%s: connection closed: %s", self.name, reason)
        for exchange in self._exchanges.values():
            exchange.result.set_exception(ConnectionLost(f"connection closed: {reason}"))
        self._exchanges.clear()
        self._stream_closed.set()  # whoever waits for a stream learns that there is none
        self.sock.close()
        if self._reader is not None and gevent.getcurrent() is not self._reader:
            self._reader.kill(block=False)

    def _flush(self) -> None:
        with self._send_lock:
            data = self._h2.data_to_send()
            if not data or self.closed:
                return
            try:
                self.sock.sendall(data)
            except OSError as error:
                self.close(f"send failed: {error}")
                raise ConnectionLost(f"send failed: {error}") from None
            except BaseException:  # a deadline cut a frame in half: the connection is unusable
                self.close("a send was interrupted")
                raise

    def _read(self) -> None:
        reason = "closed by the server"
        try:
            while self.closed is None:
                try:
                    data = self.sock.recv(READ_SIZE)
                except TimeoutError:
                    if self._exchanges:
                        continue
                    reason = f"idle for {IDLE_TIMEOUT:g} s"
                    self._h2.close_connection()
                    self._flush()
                    break
                if not data:
                    break
                self._last_received = time.monotonic()
                for event in self._h2.receive_data(data):
                    self._dispatch(event)
                self._flush()
        except ConnectionLost:
            return  # a send failed and closed the connection already
        except Exception as error:  # whatever the server sent ends only this connection:
            # a socket error, a protocol error, bytes h2 cannot decode (a header
            # that is not UTF-8), a bad :status. Its requests fail at once with the reason.
            reason = f"{type(error).__name__}: {error}"
        self.close(reason)

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
            self._stream_closed.set()  # one more may be opened (after this event is handled)
        if isinstance(event, h2.events.ConnectionTerminated):
            self._stream_closed.set()
            self.going_away = True
            for stream_id in [i for i in self._exchanges if i > (event.last_stream_id or 0)]:
                self._exchanges.pop(stream_id).result.set_exception(
                    ConnectionLost(f"the server sent GOAWAY ({event.error_code!s})")
                )
            return
        exchange = self._exchanges.get(getattr(event, "stream_id", 0))
        if isinstance(event, h2.events.DataReceived):
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if exchange is None:
                return
            if len(exchange.body) + len(event.data) > exchange.max_body:
                self._fail(exchange, f"response body larger than {exchange.max_body} bytes")
                self._reset(event.stream_id)
                return
            exchange.body += event.data
        elif exchange is None:
            return
        elif isinstance(event, h2.events.ResponseReceived):
            exchange.headers = dict(event.headers)
            exchange.status = _status(exchange.headers.get(":status", ""))
        elif isinstance(event, h2.events.StreamEnded):
            self._exchanges.pop(event.stream_id)
            exchange.result.set(Response(exchange.status, exchange.headers, bytes(exchange.body)))
        elif isinstance(event, h2.events.StreamReset):
            self._fail(exchange, f"the server reset the stream ({event.error_code!s})")

    def _fail(self, exchange: Exchange, reason: str) -> None:
        self._exchanges.pop(exchange.stream_id, None)
        exchange.result.set_exception(Http2Error(reason))


def _status(text: str) -> int:
    """The response's ``:status``; a server that sends anything but three digits is broken,
    and ``BrokenServer`` ends its connection."""
    if len(text) != 3 or not text.isascii() or not text.isdigit():
        raise BrokenServer(f"the server sent :status {text[:16]!r}, not three digits")
    return int(text)


class Http2Client:
    """Requests to the origin at ``address``; the certificate is checked for ``server_name``."""

    def __init__(
        self,
        address: tuple[str, int],
        server_name: str,
        context: gssl.SSLContext,
        *,
        max_streams: int = DEFAULT_MAX_STREAMS,
        connect_timeout: float = 10.0,
    ) -> None:
        self.address = address
        self.server_name = server_name
        self.connections_opened = 0
        self._context = context
        self._connect_timeout = connect_timeout
        self._streams = BoundedSemaphore(max_streams)
        self._opening = Semaphore()
        self._current: _Connection | None = None

    def request(self, headers: Sequence[tuple[str, str]], body: bytes, max_body: int) -> Exchange:
        """Send one request; its ``response()`` must be called (it frees the stream)."""
        self._streams.acquire()
        try:
            exchange = self._send(headers, body, max_body)
        except BaseException:
            self._streams.release()
            raise
        exchange.result.rawlink(lambda _: self._streams.release())
        return exchange

    def _send(self, headers: Sequence[tuple[str, str]], body: bytes, max_body: int) -> Exchange:
        connection = self._connection()
        reused = connection.served > 0
        try:
            return connection.send(headers, body, max_body)
        except ConnectionLost:
            if not reused:
                raise
        # The server closed an old connection just as we sent: once more, on a new one.
        return self._connection().send(headers, body, max_body)

    def close(self) -> None:
        if self._current is not None:
            self._current.close("resolver stopped")

    def _connection(self) -> _Connection:
        with self._opening:
            if self._current is None or not self._current.usable:
                if self._current is not None:
                    self._current.going_away = True  # finishes what it has, takes nothing new
                self._current = self._open()
            return self._current

    def _open(self) -> _Connection:
        where = f"{self.address[0]}:{self.address[1]}"
        sock = gsocket.create_connection(self.address, timeout=self._connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = self._context.wrap_socket(sock, server_hostname=self.server_name)
        except BaseException:
            sock.close()
            raise
        if tls.selected_alpn_protocol() != "h2":
            tls.close()
            raise Http2Error(f"{where} does not offer HTTP/2 (ALPN h2)")
        tls.settimeout(IDLE_TIMEOUT)
        self.connections_opened += 1
        connection = _Connection(tls, f"HTTP/2 to {self.server_name} ({where})")
        log.info("%s: connected", connection.name)
        return connection
