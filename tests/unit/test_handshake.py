"""Handshake and login: the sans-I/O cores fed byte by byte, against the recorded Java 3.0 bytes
(the same over loopback sockets: tests/io/test_handshake.py)."""

from __future__ import annotations

import json

import pytest

from jproxy.tunnel import handshake
from jproxy.tunnel.handshake import ClientHandshake, Phase, ServerHandshake
from jproxy.tunnel.keys import UserDirectory
from jproxy.tunnel.session import Session
from schemas import WireError, build
from schemas.jproxy import Dialect, TcpDisconnect
from tests.keyfiles import JAVA, JAVA_KEY
from tests.logins import PING, REFUSED_HELLO, java_server_replies

VECTORS = json.loads((JAVA / "vectors.json").read_text())


def _java_probe(name: str) -> list[dict]:
    return next(probe for probe in VECTORS["probes"] if probe["name"] == name)["exchanges"]


def _feed_bytewise(core: ClientHandshake | ServerHandshake, data: bytes) -> bytes:
    replies = b""
    for index in range(len(data)):
        replies += core.receive(data[index : index + 1])
    return replies


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


def test_secure_client_says_when_the_server_looks_like_java() -> None:
    client = ClientHandshake(JAVA_KEY, Dialect.SECURE_3_1)
    client.start()
    with pytest.raises(handshake.LegacyServer) as caught:
        _feed_bytewise(client, java_server_replies())
    assert str(caught.value) == (
        "this server looks like a jProxy 3.0 server: for the Java server, use --dialect 3.0;"
        " for a gjproxy server, start it with --allow-legacy and use --dialect 3.0"
    )
    assert caught.value.fatal


def test_legacy_client_logs_in_to_the_recorded_java_server() -> None:
    client = ClientHandshake(JAVA_KEY, Dialect.LEGACY_3_0)
    client.start()
    _feed_bytewise(client, java_server_replies())
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
