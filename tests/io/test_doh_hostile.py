"""The DoH resolver in this process against a DoH server that misbehaves on purpose (HTTP/2
over TLS on loopback, in a thread): each fault is a resolve error, the connection lives on."""

from __future__ import annotations

import re
import socketserver
import ssl

import dns.message
import dns.rrset
import gevent
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import pytest

from jproxy.handlers.dns.doh import DohResolver
from jproxy.handlers.dns.resolver import ResolveError
from jproxy.metrics import Counters
from tests.peers import self_signed_certificate, serve_in_a_thread


class HostileDoh(socketserver.ThreadingTCPServer):
    """HTTP/2 over TLS on loopback; what it does depends on the first label of the name asked:
    ``status`` HTTP 503, ``type`` text/html, ``huge`` a 70000-byte body, ``wrong`` an answer
    to another question, ``reset`` RST_STREAM, ``goaway`` GOAWAY, ``ok`` 127.0.0.9."""

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
        try:
            while data := sock.recv(65536):
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
                sock.sendall(conn.data_to_send())
        except (OSError, h2.exceptions.ProtocolError):
            pass

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
