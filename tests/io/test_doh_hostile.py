"""The DoH resolver in this process against a DoH server that misbehaves on purpose (HTTP/2
over TLS on loopback, in a thread): each fault is a resolve error, the connection lives on."""

from __future__ import annotations

import re
import socket
import socketserver
import ssl
import struct
import time

import dns.message
import dns.rrset
import gevent
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hpack
import pytest

from jproxy.handlers.dns.doh import DohResolver
from jproxy.handlers.dns.resolver import ResolveError
from jproxy.metrics import Counters
from tests.peers import self_signed_certificate, serve_in_a_thread


class HostileDoh(socketserver.ThreadingTCPServer):
    """HTTP/2 over TLS on loopback; what it does depends on the first label of the name asked:
    ``status`` HTTP 503, ``type`` text/html, ``huge`` a 70000-byte body, ``wrong`` an answer
    to another question, ``reset`` RST_STREAM, ``goaway`` GOAWAY, ``ok`` 127.0.0.9; and, each
    ending the connection for a client that follows HTTP/2: ``digits`` a :status that is not
    a number, ``latin`` a header that is not UTF-8, ``cut`` half a frame and then the end of
    the connection, ``midway`` a HEADERS frame without its CONTINUATION and then RST_STREAM,
    ``abort`` the same frame and then a TCP reset."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, cert, key, max_streams: int = 100) -> None:
        super().__init__(("127.0.0.1", 0), HostileHandler)
        self.max_streams = max_streams
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.context.set_alpn_protocols(["h2"])
        self.connections = 0
        serve_in_a_thread(self)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server_address[1]}/dns-query"


class HostileHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.connections += 1
        sock = self.server.context.wrap_socket(self.request, server_side=True)
        sock.settimeout(10)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.server.max_streams
            },
        )
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        bodies: dict[int, bytes] = {}
        self.unsent: dict[int, bytes] = {}
        self.raw, self.hang_up = b"", ""
        try:
            while not self.hang_up and (data := sock.recv(65536)):
                if conn.state_machine.state is h2.connection.ConnectionState.CLOSED:
                    continue  # after our GOAWAY: ignore the client until it leaves
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        bodies[event.stream_id] = bodies.get(event.stream_id, b"") + event.data
                        conn.acknowledge_received_data(len(event.data), event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        self.answer(conn, event.stream_id, bodies.pop(event.stream_id))
                    elif isinstance(event, h2.events.StreamReset):
                        self.unsent.pop(event.stream_id, None)
                    elif isinstance(event, h2.events.WindowUpdated):
                        for stream_id in list(self.unsent):
                            self.send_more(conn, stream_id)
                sock.sendall(conn.data_to_send() + self.raw)
                self.raw = b""
        except (OSError, h2.exceptions.ProtocolError):
            pass
        if self.hang_up == "abort":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif self.hang_up == "close":
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    @staticmethod
    def frame(kind: int, flags: int, stream_id: int, payload: bytes, length: int = -1) -> bytes:
        """One HTTP/2 frame as raw bytes (RFC 9113 section 4.1); ``length`` may lie."""
        size = len(payload) if length < 0 else length
        return struct.pack(">I", size)[1:] + struct.pack(">BBI", kind, flags, stream_id) + payload

    def send_more(self, conn, stream_id: int) -> None:
        """As much of the stream's body as the client's windows allow; the end once it is out."""
        wire = self.unsent.pop(stream_id)
        while wire and (window := conn.local_flow_control_window(stream_id)):
            size = min(len(wire), window, 16384)
            conn.send_data(stream_id, wire[:size])
            wire = wire[size:]
        if wire:
            self.unsent[stream_id] = wire
        else:
            conn.end_stream(stream_id)

    def answer(self, conn, stream_id: int, body: bytes) -> None:
        if conn.state_machine.state is h2.connection.ConnectionState.CLOSED:
            return  # our GOAWAY went out for an earlier stream of the same read
        asked = dns.message.from_wire(body)
        how = asked.question[0].name.labels[0].decode()
        reply = dns.message.make_response(asked)
        reply.answer.append(dns.rrset.from_text(asked.question[0].name, 60, "IN", "A", "127.0.0.9"))
        status, media, wire = "200", "application/dns-message", reply.to_wire()
        if how == "status":
            status = "503"
        elif how == "type":
            media = "text/html"
        elif how == "huge":
            wire = bytes(70000)
        elif how == "wrong":
            wire = dns.message.make_response(dns.message.make_query("other.test", "A")).to_wire()
        elif how == "reset":
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        elif how == "goaway":
            conn.close_connection(last_stream_id=0)
            return
        elif how in ("digits", "latin"):
            value = b"ok" if how == "digits" else b"caf\xe9"
            block = hpack.Encoder().encode(
                [(b":status", b"2xx" if how == "digits" else b"200"), (b"x-name", value)]
            )
            self.raw = self.frame(0x1, 0x4, stream_id, block)  # HEADERS, END_HEADERS
            return
        elif how in ("cut", "midway", "abort"):
            block = hpack.Encoder().encode([(":status", "200"), ("content-type", media)])
            if how == "cut":  # the frame says 100 bytes, half of them come, then the end
                self.raw = self.frame(0x1, 0x4, stream_id, block, length=100)[:30]
                self.hang_up = "close"
                return
            self.raw = self.frame(0x1, 0x0, stream_id, block)  # no END_HEADERS: more to come
            if how == "midway":
                self.raw += self.frame(0x3, 0x0, stream_id, struct.pack(">I", 8))  # RST_STREAM
            else:
                self.hang_up = "abort"
            return
        conn.send_headers(stream_id, [(":status", status), ("content-type", media)])
        self.unsent[stream_id] = wire
        self.send_more(conn, stream_id)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    cert, key = self_signed_certificate(tmp_path_factory.mktemp("hostile"))
    server = HostileDoh(cert, key)
    server.cert = cert
    yield server
    server.shutdown()


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("status.bad.test", "the DoH server answered HTTP 503"),
        ("type.bad.test", "answered with text/html content type"),
        ("huge.bad.test", "response body larger than 65535 bytes"),
        ("wrong.bad.test", "the answer is not for the question asked"),
        ("reset.bad.test", "the server reset the stream"),
        ("goaway.bad.test", "GOAWAY"),
    ],
)
def test_a_misbehaving_doh_server_is_a_resolve_error_and_the_connection_lives_on(
    hostile, name, why
) -> None:
    resolver = DohResolver.start(hostile.url, ca_file=str(hostile.cert), counters=Counters())
    try:
        with pytest.raises(ResolveError, match=re.escape(why)):
            resolver.resolve(name, 5)
        assert resolver.resolve("ok.bad.test", 5) == ["127.0.0.9"]  # its AAAA answer has none
        assert resolver.counters.doh_failures == 1
        assert resolver.http.connections_opened == (2 if name.startswith("goaway") else 1)
    finally:
        resolver.close()


def test_lookups_wait_for_a_free_stream_under_the_servers_stream_limit(tmp_path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    server = HostileDoh(cert, key, max_streams=3)
    resolver = DohResolver.start(server.url, ca_file=str(cert), counters=Counters())
    try:
        resolver.resolve("ok.bad.test", 5)  # the server's settings are known from here on
        lookups = [gevent.spawn(resolver.resolve, f"ok{i}.bad.test", 10) for i in range(20)]
        gevent.joinall(lookups, raise_error=True, timeout=20)
        assert [lookup.value for lookup in lookups] == [["127.0.0.9"]] * 20
        assert resolver.http.connections_opened == 1
        assert resolver.counters.doh_failures == 0
    finally:
        resolver.close()
        server.shutdown()


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("digits.bad.test", "BrokenServer: the server sent :status '2xx', not three digits"),
        ("latin.bad.test", "UnicodeDecodeError"),
        ("cut.bad.test", "connection closed: "),
        ("midway.bad.test", "ProtocolError"),
        ("abort.bad.test", "connection closed: "),
    ],
)
def test_a_broken_doh_server_ends_its_connection_and_the_next_lookup_opens_another(
    hostile, name, why, caplog
) -> None:
    """Whatever the server breaks ends that connection alone: the lookup on it fails at once
    with the reason, and the next one works on a new connection, well within 2 s."""
    resolver = DohResolver.start(hostile.url, ca_file=str(hostile.cert), counters=Counters())
    try:
        started = time.monotonic()
        with pytest.raises(ResolveError, match=re.escape(why)):
            resolver.resolve(name, 10)
        assert time.monotonic() - started < 2.0
        assert why in caplog.text  # the log says why the connection ended
        started = time.monotonic()
        assert resolver.resolve("ok.bad.test", 10) == ["127.0.0.9"]
        assert time.monotonic() - started < 2.0
        assert resolver.http.connections_opened >= 2  # the broken one was given up
        assert resolver.counters.doh_failures == 1
    finally:
        resolver.close()
