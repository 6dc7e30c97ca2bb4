"""Handshake and login over real loopback sockets: ``server_login`` and ``client_login`` against
each other, a recorded Java server, a web server and slow peers (the cores alone:
tests/unit/test_handshake.py)."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import gevent
import pytest
from gevent import socket, ssl

from jproxy.handlers.tunnel.handshake import client_login, server_login
from jproxy.tunnel import handshake
from jproxy.tunnel.handshake import ClientHandshake
from jproxy.tunnel.keys import ClientKey, UserDirectory, generate
from jproxy.tunnel.session import Session
from schemas.jproxy import Dialect
from tests.keyfiles import JAVA_KEY
from tests.logins import PING, REFUSED_HELLO, java_server_replies
from tests.peers import self_signed_certificate

SHORT = 0.5  # seconds: the handshake deadline in the tests that wait for it


@pytest.fixture(scope="module")
def stranger() -> ClientKey:
    """A valid key that no server in these tests knows."""
    return generate("stranger")[0]


def _listener() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    return listener


def _echo_upper(sock: socket.socket, session: Session, pipelined: bytes) -> None:
    """Answer every message with its upper-case copy until the client closes."""
    messages = session.feed(pipelined)
    while True:
        for message in messages:
            sock.sendall(session.seal(message.upper()))
        data = sock.recv(65536)
        if not data:
            return
        messages = session.feed(data)


@contextmanager
def gjproxy_server(
    users: UserDirectory, allow_legacy: bool = False, timeout: float = 5.0
) -> Iterator[tuple[tuple[str, int], list]]:
    """One connection served by ``server_login`` (then an upper-case echo); its result."""
    listener = _listener()
    results: list = []

    def serve() -> None:
        sock, (host, port) = listener.accept()
        with sock:
            sock.settimeout(5)
            result = server_login(sock, f"{host}:{port}", users, allow_legacy, timeout)
            results.append(result)
            if result is not None:
                _echo_upper(sock, result.session, result.proof.received)

    server = gevent.spawn(serve)
    try:
        yield listener.getsockname(), results
        server.join(timeout=10)
        assert server.successful(), server.exception
    finally:
        server.kill()
        listener.close()


@contextmanager
def scripted_server(script: Callable[[socket.socket], None]) -> Iterator[tuple[str, int]]:
    """A stand-in for another server: runs ``script`` on the one connection it accepts."""
    listener = _listener()

    def serve() -> None:
        sock, _ = listener.accept()
        with sock:
            script(sock)

    server = gevent.spawn(serve)
    try:
        yield listener.getsockname()
    finally:
        server.kill()
        listener.close()


def _connect(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=5)


def _receive_all(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes (a reset counts as closing)."""
    received = b""
    try:
        while data := sock.recv(4096):
            received += data
    except ConnectionResetError:
        pass
    return received


@pytest.mark.parametrize(
    ("dialect", "allow_legacy"),
    [(Dialect.SECURE_3_1, False), (Dialect.SECURE_3_1, True), (Dialect.LEGACY_3_0, True)],
)
def test_login_over_loopback_then_frames_flow(
    users: UserDirectory, dialect: Dialect, allow_legacy: bool
) -> None:
    with gjproxy_server(users, allow_legacy) as (address, results), _connect(address) as sock:
        session = client_login(sock, JAVA_KEY, dialect, timeout=5)
        assert session.dialect is dialect
        sock.sendall(session.seal(b"ping") + session.seal(b"x" * session.max_message))
        # In 3.1 the client's first frame is its keep-alive ping: the proof of the key.
        expected = [PING] if dialect is Dialect.SECURE_3_1 else []
        expected += [b"PING", b"X" * session.max_message]
        received: list[bytes] = []
        while len(received) < len(expected):
            received += session.feed(sock.recv(65536))
        assert received == expected
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""
    [login] = results
    assert (login.user, login.session.dialect) == ("alice", dialect)
    assert login.proven is (dialect is Dialect.SECURE_3_1)
    assert len(login.proof.received) == (1 + 32 if dialect is Dialect.SECURE_3_1 else 0)


def test_pipelined_client_bytes_reach_the_session(users: UserDirectory) -> None:
    """A client that sends hello, hash and its first bytes in one write (like Java may)."""
    with gjproxy_server(users, allow_legacy=True) as (address, results), _connect(address) as sock:
        sock.sendall(b"jProxy\x03\x00" + JAVA_KEY.login_hash + b"\x00")  # + an empty 3.0 frame
        replies = b""
        while len(replies) < 7 + 257:
            replies += sock.recv(4096)
        client = ClientHandshake(JAVA_KEY, Dialect.LEGACY_3_0)
        client.start()
        client.receive(replies[:7])
        client.receive(replies[7:])
        sock.sendall(client.session.seal(b"after"))
        assert client.session.feed(sock.recv(4096)) == [b"AFTER"]
    [login] = results
    assert login.proof.received == b"\x00" and not login.proven


@pytest.mark.parametrize(
    ("sent", "reply", "log_line"),
    [
        (b"jPROXY\x03\x01", b"", "not a jProxy hello"),
        (b"GET / HTTP/1.0\r\n\r\n", b"", "not a jProxy hello"),
        (b"jProxy\x02\x01", REFUSED_HELLO, "refused major version 2"),
        (b"jProxy\x03\x09", REFUSED_HELLO, "refused unknown minor version 9"),
        (
            b"jProxy\x03\x00" + JAVA_KEY.login_hash,
            REFUSED_HELLO,
            "refused minor version 0: legacy dialect 3.0 not allowed"
            " (start the server with --allow-legacy)",
        ),
        (
            b"jProxy\x03\x01" + bytes(32),
            b"jProxy\x00\x01",
            f"unknown login hash {'0' * 64}: no users/{'0' * 64}.dat",
        ),
    ],
    ids=["bad-magic", "http", "major-2", "minor-9", "legacy-not-allowed", "unknown-hash"],
)
def test_server_refuses_over_loopback_and_logs_why(
    users: UserDirectory,
    caplog: pytest.LogCaptureFixture,
    sent: bytes,
    reply: bytes,
    log_line: str,
) -> None:
    with caplog.at_level(logging.INFO, logger="jproxy.handlers.tunnel.handshake"):
        with gjproxy_server(users) as (address, results), _connect(address) as sock:
            sock.sendall(sent)
            assert _receive_all(sock) == reply  # then the server closed
            port = sock.getsockname()[1]
        assert results == [None]
    [record] = [r for r in caplog.records if r.name == "jproxy.handlers.tunnel.handshake"]
    assert record.getMessage().startswith(f"127.0.0.1:{port}: {log_line}")


def test_legacy_client_refused_by_a_secure_only_server(users: UserDirectory) -> None:
    with gjproxy_server(users) as (address, results), _connect(address) as sock:
        with pytest.raises(handshake.VersionRefused, match="--allow-legacy") as caught:
            client_login(sock, JAVA_KEY, Dialect.LEGACY_3_0, timeout=5)
    assert caught.value.fatal
    assert results == [None]


def test_unknown_key_is_rejected_over_loopback(users: UserDirectory, stranger: ClientKey) -> None:
    with gjproxy_server(users) as (address, results), _connect(address) as sock:
        with pytest.raises(handshake.KeyRejected, match="server did not accept this key"):
            client_login(sock, stranger, Dialect.SECURE_3_1, timeout=5)
    assert results == [None]


def _java_server(sock: socket.socket) -> None:
    """Replays the captured Java 3.0 server: it accepts any minor and wraps with PKCS#1 v1.5."""
    replies = java_server_replies()
    assert sock.recv(8)[:6] == b"jProxy"
    sock.sendall(replies[:7])
    assert sock.recv(32) == JAVA_KEY.login_hash
    sock.sendall(replies[7:])
    sock.recv(1)


def test_secure_client_against_a_java_server_names_the_fix() -> None:
    with scripted_server(_java_server) as address, _connect(address) as sock:
        with pytest.raises(handshake.LegacyServer, match="use --dialect 3.0"):
            client_login(sock, JAVA_KEY, Dialect.SECURE_3_1, timeout=5)


def test_legacy_client_against_a_java_server_logs_in() -> None:
    with scripted_server(_java_server) as address, _connect(address) as sock:
        session = client_login(sock, JAVA_KEY, Dialect.LEGACY_3_0, timeout=5)
    assert session.dialect is Dialect.LEGACY_3_0


def test_client_against_a_web_server() -> None:
    def web_server(sock: socket.socket) -> None:
        sock.recv(100)
        sock.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    with scripted_server(web_server) as address, _connect(address) as sock:
        with pytest.raises(handshake.NotJProxyServer, match="it answered with an HTTP reply") as e:
            client_login(sock, JAVA_KEY, Dialect.SECURE_3_1, timeout=5)
    assert not e.value.fatal  # the client backs off and tries again


def test_client_against_a_silent_server_asks_whether_it_is_gjproxy() -> None:
    with scripted_server(lambda sock: sock.recv(8) and gevent.sleep(2)) as address:
        with _connect(address) as sock, pytest.raises(handshake.LoginError) as e:
            client_login(sock, JAVA_KEY, Dialect.SECURE_3_1, timeout=0.3)
    assert str(e.value) == (
        "no answer to the hello within 0.3 s: is this a gjproxy server? It sent nothing"
    )
    assert not e.value.fatal


def test_client_against_a_real_tls_port_says_so(tmp_path: Path) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*self_signed_certificate(tmp_path))

    def tls_server(sock: socket.socket) -> None:
        with contextlib.suppress(ssl.SSLError, OSError):
            context.wrap_socket(sock, server_side=True)

    with scripted_server(tls_server) as address, _connect(address) as sock:
        with pytest.raises(handshake.LoginError) as e:
            client_login(sock, JAVA_KEY, Dialect.SECURE_3_1, timeout=5)
    # OpenSSL resets a connection whose first record is no TLS, or answers with an alert.
    assert re.fullmatch(
        "(the server reset the connection without answering the hello: is this a gjproxy"
        " server\\? Nothing came back|.*it answered with a TLS record.*)",
        str(e.value),
    ), e.value


def test_server_closing_during_login_is_worth_a_retry() -> None:
    with scripted_server(lambda sock: sock.recv(8)) as address, _connect(address) as sock:
        with pytest.raises(handshake.LoginError) as e:
            client_login(sock, JAVA_KEY, Dialect.SECURE_3_1, timeout=5)
    assert str(e.value) == (
        "the server closed the connection without answering the hello: is this a gjproxy"
        " server? Nothing came back"
    )
    assert not e.value.fatal


def _trickle(sock: socket.socket, data: bytes, pause: float = 0.05) -> None:
    """Send ``data`` a byte at a time, so every recv of the peer gets something soon."""
    try:
        for byte in data:
            sock.sendall(bytes([byte]))
            gevent.sleep(pause)
    except OSError:
        pass  # the peer gave up on us, as it should


@pytest.mark.parametrize("behaviour", ["silent", "trickling"])
def test_server_drops_a_slow_client(
    users: UserDirectory, caplog: pytest.LogCaptureFixture, behaviour: str
) -> None:
    with caplog.at_level(logging.INFO, logger="jproxy.handlers.tunnel.handshake"):
        with gjproxy_server(users, timeout=SHORT) as (address, results), _connect(address) as sock:
            if behaviour == "trickling":
                # 40 bytes at 0.05 s: the login would complete after 2 s, well past SHORT.
                _trickle(sock, b"jProxy\x03\x01" + JAVA_KEY.login_hash)
            assert _receive_all(sock) in (b"", b"jProxy\x00")
        assert results == [None]
    assert f"dropped: no complete login within {SHORT:g} s" in caplog.text


@pytest.mark.parametrize("behaviour", ["silent", "trickling"])
def test_client_gives_up_on_a_slow_server(behaviour: str) -> None:
    def slow_server(sock: socket.socket) -> None:
        sock.recv(8)
        if behaviour == "trickling":
            _trickle(sock, b"jProxy\x00", pause=0.2)
        gevent.sleep(10)

    with scripted_server(slow_server) as address, _connect(address) as sock:
        with pytest.raises(handshake.LoginError, match=f"within {SHORT:g} s") as caught:
            with gevent.Timeout(5):
                client_login(sock, JAVA_KEY, Dialect.SECURE_3_1, timeout=SHORT)
    assert not caught.value.fatal


# --- the proof of the key (the first frame after login) ---------------------------------------


def test_replayed_hash_without_the_key_is_dropped_at_the_deadline(
    users: UserDirectory, caplog: pytest.LogCaptureFixture
) -> None:
    """Captured hello and hash sent back: status 0 comes, but no frame can follow."""
    with caplog.at_level(logging.INFO, logger="jproxy.handlers.tunnel.handshake"):
        with gjproxy_server(users, timeout=SHORT) as (address, results), _connect(address) as sock:
            sock.sendall(b"jProxy\x03\x01" + JAVA_KEY.login_hash)
            assert len(_receive_all(sock)) == 7 + 257  # the reply, then the close
        assert results == [None]
    assert f"dropped: no complete proof of the key within {SHORT:g} s" in caplog.text


def test_replayed_hash_with_a_forged_frame_is_refused(
    users: UserDirectory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="jproxy.handlers.tunnel.handshake"):
        with gjproxy_server(users) as (address, results), _connect(address) as sock:
            sock.sendall(b"jProxy\x03\x01" + JAVA_KEY.login_hash + b"\x02" + bytes(32))
            assert len(_receive_all(sock)) == 7 + 257
        assert results == [None]
    assert "alice logged in without the key: " in caplog.text
