"""The DoH resolver against a real DNS-over-HTTPS server (unbound on loopback), in-process."""

from __future__ import annotations

import re
import signal
import socket
import socketserver
import ssl
import struct
import threading
import time

import dns.message
import dns.query
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

from jproxy.handlers.dns.doh import DohResolver, parse_doh_url
from jproxy.handlers.dns.resolver import ResolveError
from jproxy.metrics import Counters
from tests.conftest import DNS_RECORDS
from tests.peers import Unbound, self_signed_certificate


def resolver_for(server: Unbound, ca_file: str | None = "", **options) -> DohResolver:
    ca = str(server.cert) if ca_file == "" else ca_file
    return DohResolver.start(server.doh_url, ca_file=ca, counters=Counters(), **options)


@pytest.fixture
def resolver(unbound):
    resolver = resolver_for(unbound)
    yield resolver
    resolver.close()


@pytest.fixture
def own_unbound(tmp_path):
    """An unbound of this test's own, to count its connections or to stop it."""
    server = Unbound(tmp_path / "unbound", DNS_RECORDS)
    yield server
    server.proc.send_signal(signal.SIGCONT)
    server.stop()


def test_names_only_the_doh_server_knows_resolve_and_the_second_time_come_from_the_cache(
    unbound, resolver
) -> None:
    https_before = unbound.statistics()["num.query.https"]
    assert resolver.resolve("web.tunnel.test", 5) == ["127.0.0.1"]
    assert resolver.resolve("six.tunnel.test", 5) == ["::1"]
    assert resolver.resolve("WEB.tunnel.test.", 5) == ["127.0.0.1"]  # the same name: cached
    counters = resolver.counters
    assert (counters.doh_lookups, counters.dns_cache_misses, counters.dns_cache_hits) == (2, 2, 1)
    assert counters.doh_lookup_seconds > 0
    assert unbound.statistics()["num.query.https"] - https_before == 4  # A and AAAA, twice


def test_unknown_names_fail_with_nxdomain_and_are_cached_briefly(unbound, resolver) -> None:
    for _ in range(2):
        with pytest.raises(ResolveError, match="nope.tunnel.test: NXDOMAIN"):
            resolver.resolve("nope.tunnel.test", 5)
    assert (resolver.counters.doh_lookups, resolver.counters.dns_cache_hits) == (1, 1)


def test_an_expired_answer_is_asked_again(resolver) -> None:
    assert resolver.resolve("brief.tunnel.test", 5) == ["127.0.0.1"]  # TTL 1 s
    time.sleep(1.1)
    assert resolver.resolve("brief.tunnel.test", 5) == ["127.0.0.1"]
    assert resolver.counters.doh_lookups == 2


def test_many_concurrent_lookups_share_one_connection(own_unbound) -> None:
    resolver = resolver_for(own_unbound)
    names = [name for name in DNS_RECORDS if name.startswith("n")]
    lookups = [gevent.spawn(resolver.resolve, name, 10) for name in names]
    gevent.joinall(lookups, raise_error=True, timeout=20)
    assert [lookup.value for lookup in lookups] == [[DNS_RECORDS[name][0]] for name in names]
    assert resolver.http.connections_opened == 1
    seen = own_unbound.https_connections()
    assert seen == 1, own_unbound.log()  # seen on unbound's side
    queries = own_unbound.statistics()["num.query.https"]
    assert queries == 2 * len(names), own_unbound.log()
    assert resolver.counters.doh_lookups == len(names)
    resolver.close()


def test_concurrent_lookups_of_one_name_send_one_query(unbound, resolver) -> None:
    https_before = unbound.statistics()["num.query.https"]
    lookups = [gevent.spawn(resolver.resolve, "n7.tunnel.test", 10) for _ in range(20)]
    gevent.joinall(lookups, raise_error=True, timeout=20)
    assert {tuple(lookup.value) for lookup in lookups} == {("127.0.1.7",)}
    assert resolver.counters.doh_lookups == 1
    assert unbound.statistics()["num.query.https"] - https_before == 2


def test_a_certificate_not_signed_by_the_given_ca_is_refused(unbound) -> None:
    resolver = resolver_for(unbound, ca_file=None)  # the system CAs do not know the test's
    with pytest.raises(ResolveError, match="CERTIFICATE_VERIFY_FAILED"):
        resolver.resolve("web.tunnel.test", 5)


def test_a_stalled_doh_server_fails_within_the_deadline_and_a_stopped_one_at_once(
    own_unbound,
) -> None:
    server = own_unbound
    resolver = resolver_for(server)
    try:
        assert resolver.resolve("web.tunnel.test", 5) == ["127.0.0.1"]
        server.proc.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(ResolveError, match=r"no answer from https://\S+ within 1.5 s"):
            resolver.resolve("n1.tunnel.test", 1.5)
        assert time.monotonic() - started < 2.0
        server.proc.send_signal(signal.SIGCONT)
        # The stalled connection was given up; a new one answers.
        assert resolver.resolve("n2.tunnel.test", 5) == ["127.0.1.2"]
        assert resolver.http.connections_opened == 2
        server.stop()
        started = time.monotonic()
        with pytest.raises(ResolveError, match="Connection refused"):
            resolver.resolve("n3.tunnel.test", 5)
        assert time.monotonic() - started < 1.0
        assert resolver.counters.doh_failures == 2
    finally:
        resolver.close()


def test_the_same_unbound_answers_plain_dns_over_udp(unbound) -> None:
    """For the datagram relay's tests: the same zone on a plain DNS port."""
    reply = dns.query.udp(
        dns.message.make_query("web.tunnel.test", "A"),
        "127.0.0.1",
        port=unbound.dns_port,
        timeout=5,
    )
    assert [record.address for record in reply.answer[0]] == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("url", "authority", "path"),
    [
        ("https://127.0.0.1:8443/dns-query", "127.0.0.1:8443", "/dns-query"),
        ("https://dns.example/q?x=1", "dns.example", "/q?x=1"),
        ("https://[::1]/", "[::1]", "/"),
        ("https://dns.example", "dns.example", "/dns-query"),
    ],
)
def test_doh_urls(url: str, authority: str, path: str) -> None:
    server = parse_doh_url(url)
    assert (server.authority, server.path) == (authority, path)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1/dns-query", "https:///x", "https://u:p@h/", "https://h:99999/"]
)
def test_bad_doh_urls(url: str) -> None:
    with pytest.raises(ValueError):
        parse_doh_url(url)


# --- a DoH server that misbehaves on purpose -------------------------------------------------


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
        threading.Thread(target=self.serve_forever, daemon=True).start()

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
