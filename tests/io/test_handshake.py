"""Handshake and login: the sans-I/O cores byte by byte, then real loopback sockets."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import gevent
import pytest
from gevent import socket, ssl

from jproxy.handlers.tunnel.handshake import client_login, server_login
from jproxy.tunnel import handshake
from jproxy.tunnel.handshake import ClientHandshake, Phase, ServerHandshake
from jproxy.tunnel.keys import ClientKey, UserDirectory, generate, load_client_key
from jproxy.tunnel.session import Session
from schemas import WireError, build
from schemas.jproxy import Dialect, KeepAlive, KeepAliveKind, TcpDisconnect
from tests.peers import self_signed_certificate

JAVA = Path(__file__).parents[1] / "vectors" / "java-3.0"
VECTORS = json.loads((JAVA / "vectors.json").read_text())
TRANSCRIPT = json.loads((JAVA / "transcript.json").read_text())
JAVA_KEY = load_client_key(JAVA / "client-key.dat")
REFUSED_HELLO = b"jProxy\x01"
PING = build(KeepAlive, {"kind": KeepAliveKind.PING})
SHORT = 0.5  # seconds: the handshake deadline in the tests that wait for it


def _java_probe(name: str) -> list[dict]:
    return next(probe for probe in VECTORS["probes"] if probe["name"] == name)["exchanges"]


@pytest.fixture
def users(tmp_path: Path) -> UserDirectory:
    directory = tmp_path / "users"
    directory.mkdir()
    shutil.copy(
        JAVA / "server-user.dat", directory / VECTORS["keys"]["server_user_file_original_name"]
    )
    return UserDirectory(directory)


@pytest.fixture(scope="module")
def stranger() -> ClientKey:
    """A valid key that no server in these tests knows."""
    return generate("stranger")[0]


def _feed_bytewise(core: ClientHandshake | ServerHandshake, data: bytes) -> bytes:
    replies = b""
    for index in range(len(data)):
        replies += core.receive(data[index : index + 1])
    return replies


# --- the cores --------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", list(Dialect))
def test_cores_log_in_byte_by_byte(users: UserDirectory, dialect: Dialect) -> None:
    client = ClientHandshake(JAVA_KEY, dialect)
    server = ServerHandshake(users, allow_legacy=True)
    hello = client.start()
    assert server.bytes_needed == len(hello) == 8
    hello_reply = _feed_bytewise(server, hello)
    assert hello_reply == b"jProxy\x00"
    assert client.bytes_needed == 7
    login_request = _feed_bytewise(client, hello_reply)
    assert login_request == JAVA_KEY.login_hash
    assert server.bytes_needed == 32
    login_reply = _feed_bytewise(server, login_request)
    assert login_reply[0] == 0 and len(login_reply) == 257
    assert _feed_bytewise(client, login_reply) == b""
    assert client.phase is server.phase is Phase.DONE
    assert client.bytes_needed == server.bytes_needed == 0
    assert server.user.user == "alice"
    assert server.dialect is client.session.dialect is server.session.dialect is dialect
    assert server.session.feed(client.session.seal(b"up")) == [b"up"]
    assert client.session.feed(server.session.seal(b"down")) == [b"down"]


def test_client_hello_and_login_match_the_java_client() -> None:
    client = ClientHandshake(JAVA_KEY, Dialect.LEGACY_3_0)
    assert client.start().hex() == VECTORS["tunnel"]["messages"][0]["wire_hex"]
    assert client.receive(b"jProxy\x00").hex() == VECTORS["tunnel"]["messages"][2]["wire_hex"]


def test_server_keeps_what_follows_the_login_hash(users: UserDirectory) -> None:
    pipelined = b"\x01" + bytes(16) + b"\x02"
    server = ServerHandshake(users, allow_legacy=False)
    replies = server.receive(b"jProxy\x03\x01" + JAVA_KEY.login_hash + pipelined)
    assert replies[:7] == b"jProxy\x00" and len(replies) == 7 + 257
    assert server.phase is Phase.DONE
    assert server.leftover == pipelined
    with pytest.raises(RuntimeError):
        server.receive(b"more")


@pytest.mark.parametrize(
    ("hello", "allow_legacy", "refusal"),
    [
        (b"jProxy\x02\x00", True, "refused major version 2"),
        (b"jProxy\x04\x00", True, "refused major version 4"),
        (b"jProxy\x03\x09", True, "refused unknown minor version 9"),
        (b"jProxy\x03\x02", False, "refused unknown minor version 2"),
        (
            b"jProxy\x03\x00",
            False,
            "refused minor version 0: legacy dialect 3.0 not allowed"
            " (start the server with --allow-legacy)",
        ),
    ],
)
def test_server_core_refuses_bad_hellos(
    users: UserDirectory, hello: bytes, allow_legacy: bool, refusal: str
) -> None:
    server = ServerHandshake(users, allow_legacy)
    assert _feed_bytewise(server, hello) == REFUSED_HELLO
    assert server.phase is Phase.REFUSED
    assert server.refusal == refusal
    assert server.session is None


@pytest.mark.parametrize(
    "hello", [b"jPROXY\x03\x00", b"GET / HT", b"\x16\x03\x01\x02\x00\x01\x00\x01"]
)
def test_server_core_says_nothing_without_the_magic(users: UserDirectory, hello: bytes) -> None:
    """Unlike Java (which answers "jProxy\\x01" to anything), a scanner learns nothing."""
    server = ServerHandshake(users, allow_legacy=True)
    assert _feed_bytewise(server, hello) == b""
    assert server.phase is Phase.REFUSED
    assert server.refusal == f"not a jProxy hello: {hello!r}"


def test_server_core_refuses_a_wrong_major_like_java(users: UserDirectory) -> None:
    for name in ("wrong_major", "wrong_major_4"):
        hello, reply, closed = _java_probe(name)
        server = ServerHandshake(users, allow_legacy=True)
        assert server.receive(bytes.fromhex(hello["hex"])).hex() == reply["hex"]
        assert server.phase is Phase.REFUSED and closed["connection_closed_by_server"]


def test_server_core_refuses_an_unknown_hash_like_java(users: UserDirectory) -> None:
    hello, hello_reply, login, login_reply, _ = _java_probe("unknown_hash")
    server = ServerHandshake(users, allow_legacy=True)
    assert server.receive(bytes.fromhex(hello["hex"])).hex() == hello_reply["hex"]
    assert _feed_bytewise(server, bytes.fromhex(login["hex"])).hex() == login_reply["hex"]
    assert server.phase is Phase.REFUSED
    name = bytes.fromhex(login["hex"])[-32:].hex().upper()
    assert name.startswith("6382B3CC881412B7")
    assert server.refusal == f"unknown login hash {name}: no users/{name}.dat"


def _java_server_replies() -> bytes:
    """What the Java 3.0 server sent in the captured tunnel before its first frame."""
    [connection] = TRANSCRIPT["connections"]
    chunks = [
        bytes.fromhex(e["hex"])
        for e in connection["events"]
        if e.get("dir") == "s2c" and "hex" in e
    ]
    return chunks[0] + chunks[1]


def test_secure_client_says_when_the_server_looks_like_java() -> None:
    client = ClientHandshake(JAVA_KEY, Dialect.SECURE_3_1)
    client.start()
    with pytest.raises(handshake.LegacyServer) as caught:
        _feed_bytewise(client, _java_server_replies())
    assert str(caught.value) == (
        "this server looks like a jProxy 3.0 server: for the Java server, use --dialect 3.0;"
        " for a gjproxy server, start it with --allow-legacy and use --dialect 3.0"
    )
    assert caught.value.fatal


def test_legacy_client_logs_in_to_the_recorded_java_server() -> None:
    client = ClientHandshake(JAVA_KEY, Dialect.LEGACY_3_0)
    client.start()
    _feed_bytewise(client, _java_server_replies())
    assert client.phase is Phase.DONE
    assert client.session.dialect is Dialect.LEGACY_3_0


@pytest.mark.parametrize(
    ("dialect", "replies", "error", "message"),
    [
        (
            Dialect.SECURE_3_1,
            b"HTTP/1.0 400",
            handshake.NotJProxyServer,
            "this is not a gjproxy server: it answered with an HTTP reply",
        ),
        (
            Dialect.SECURE_3_1,
            b"\x15\x03\x01\x00\x02\x02\x46",  # OpenSSL's alert to bytes that are no TLS
            handshake.NotJProxyServer,
            "this is not a gjproxy server: it answered with a TLS record",
        ),
        (
            Dialect.SECURE_3_1,
            b"SSH-2.0-OpenSSH_9.2p1\r\n",
            handshake.NotJProxyServer,
            "it answered with an SSH banner",
        ),
        (
            Dialect.SECURE_3_1,
            b"garbage",
            handshake.NotJProxyServer,
            "it answered with 7 byte(s) of something else: b'garbage'",
        ),
        (
            Dialect.SECURE_3_1,
            b"jProxy\x07",
            handshake.FatalLoginError,
            "the server's hello has an unknown status",
        ),
        (
            Dialect.SECURE_3_1,
            REFUSED_HELLO,
            handshake.VersionRefused,
            "server refused protocol version 3.1",
        ),
        (
            Dialect.LEGACY_3_0,
            REFUSED_HELLO,
            handshake.VersionRefused,
            "server refused protocol version 3.0 (a gjproxy server needs --allow-legacy for it)",
        ),
        (
            Dialect.SECURE_3_1,
            b"jProxy\x00\x01",
            handshake.KeyRejected,
            "server did not accept this key",
        ),
        (
            Dialect.SECURE_3_1,
            b"jProxy\x00\x07",
            handshake.FatalLoginError,
            "the server sent an invalid login reply",
        ),
        (
            Dialect.SECURE_3_1,
            b"jProxy\x00\x00" + (2).to_bytes(256, "big"),
            handshake.KeyUnwrapFailed,
            "cannot decrypt the session key the server sent",
        ),
        (
            Dialect.LEGACY_3_0,
            b"jProxy\x00\x00" + (2).to_bytes(256, "big"),
            handshake.KeyUnwrapFailed,
            "cannot decrypt the session key the server sent",
        ),
    ],
    ids=[
        "http",
        "tls",
        "ssh",
        "other",
        "bad-status",
        "refused-3.1",
        "refused-3.0",
        "key-rejected",
        "bad-login-status",
        "garbage-key-3.1",
        "garbage-key-3.0",
    ],
)
def test_client_core_errors(dialect: Dialect, replies: bytes, error: type, message: str) -> None:
    client = ClientHandshake(JAVA_KEY, dialect)
    client.start()
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        _feed_bytewise(client, replies)
    # Another kind of server may stand at that address for now: the client backs off and tries.
    assert caught.value.fatal is not isinstance(caught.value, handshake.NotJProxyServer)


# --- real sockets -----------------------------------------------------------------------------


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
    replies = _java_server_replies()
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


def _logged_in(users: UserDirectory, dialect: Dialect) -> tuple[ServerHandshake, Session]:
    """A server core that answered a login, and the client's session for it."""
    server = ServerHandshake(users, allow_legacy=True)
    client = ClientHandshake(JAVA_KEY, dialect)
    client.receive(server.receive(client.start()))
    client.receive(server.receive(JAVA_KEY.login_hash))
    assert server.phase is client.phase is Phase.DONE
    return server, client.session


@pytest.mark.parametrize("dialect", list(Dialect))
def test_proof_opens_the_first_frame_and_keeps_every_byte(
    users: UserDirectory, dialect: Dialect
) -> None:
    server, client = _logged_in(users, dialect)
    first = client.seal(build(TcpDisconnect, {"connection_id": 7, "reason": 1, "legacy_pad": None}))
    sent = first + client.seal(b"next")
    assert not any(server.proof.receive(bytes([byte])) for byte in sent[: len(first) - 1])
    assert server.proof.receive(sent[len(first) - 1 :]) is True
    assert server.proof.received == sent
    # The real session opens the same bytes again, in order: nothing was consumed.
    assert server.session.feed(server.proof.received)[1] == b"next"


@pytest.mark.parametrize(
    ("dialect", "frame", "reason"),
    [
        (Dialect.SECURE_3_1, b"\x02" + bytes(32), "authentication failed"),
        (Dialect.SECURE_3_1, b"\x00", "empty frame"),
        (Dialect.LEGACY_3_0, b"\x01" + bytes(16), "padding"),
    ],
    ids=["replayed-hash-3.1", "empty-frame-3.1", "garbage-3.0"],
)
def test_proof_refuses_frames_not_sealed_with_the_key(
    users: UserDirectory, dialect: Dialect, frame: bytes, reason: str
) -> None:
    server, _ = _logged_in(users, dialect)
    with pytest.raises(WireError, match=reason):
        server.proof.receive(frame)
    assert not server.proof.proven


@pytest.mark.parametrize(
    ("message", "reason"),
    [(b"", "empty message"), (b"\x99", "unknown message type"), (PING, "3.1 message")],
)
def test_legacy_proof_needs_a_30_message_type(
    users: UserDirectory, message: bytes, reason: str
) -> None:
    """ECB has no MAC: valid padding and a known type are all a 3.0 frame can show."""
    server, client = _logged_in(users, Dialect.LEGACY_3_0)
    with pytest.raises(WireError, match=reason):
        server.proof.receive(client.seal(message))


def test_legacy_proof_leaves_a_malformed_connect_to_the_tunnel(users: UserDirectory) -> None:
    """A connect whose address cannot be parsed proves the key all the same: the tunnel then
    answers it with a failure for its id (issue 9), instead of closing as if forged."""
    server, client = _logged_in(users, Dialect.LEGACY_3_0)
    assert server.proof.receive(client.seal(bytes.fromhex("01 0007 1f90 09 04 7f000001")))


def test_legacy_proof_bounds_empty_frames(users: UserDirectory) -> None:
    server, _ = _logged_in(users, Dialect.LEGACY_3_0)
    assert server.proof.receive(b"\x00" * handshake.MAX_PROOF_BYTES) is False
    with pytest.raises(WireError, match="no message in the first"):
        server.proof.receive(b"\x00")


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
