"""Dialect 3.0 against the recorded Java client: its own messages, sent to a gjproxy server.

The Java client's plaintext messages of tests/vectors/java-3.0 (the shared capture) go, in 3.0
frames, to ``gjproxy server --allow-legacy`` logged in with the capture's own key. The answers
must have the shape the Java server gave: a 6-byte connect reply with status 0 per stream, the
data echoed on the right stream, and no answer at all to a disconnect.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

from jproxy.tunnel.handshake import ClientHandshake
from jproxy.tunnel.keys import load_client_key
from schemas import build, parse
from schemas.fast import TCP_PACKET
from schemas.jproxy import Dialect, MessageType, TcpConnectRequest
from tests.peers import echo, serve_tcp, start_server

JAVA = Path(__file__).parents[1] / "vectors" / "java-3.0"
V6_LOOPBACK = bytes(15) + b"\x01"


def java_messages() -> list[dict]:
    return json.loads((JAVA / "vectors.json").read_text())["tunnel"]["messages"]


def login(port: int) -> tuple[socket.socket, object]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    core = ClientHandshake(load_client_key(JAVA / "client-key.dat"), Dialect.LEGACY_3_0)
    sock.sendall(core.start())
    while not core.finished:
        data = sock.recv(core.bytes_needed)
        assert data, "the server closed the connection during login"
        reply = core.receive(data)
        if reply:
            sock.sendall(reply)
    return sock, core.session


def start_legacy_server_knowing_the_java_user(workdir: Path):
    keys = json.loads((JAVA / "vectors.json").read_text())["keys"]
    (workdir / "users").mkdir()
    shutil.copy(
        JAVA / "server-user.dat", workdir / "users" / keys["server_user_file_original_name"]
    )
    return start_server(workdir, "--allow-legacy")


def test_java_client_messages_get_java_shaped_answers(tmp_path):
    server = start_legacy_server_knowing_the_java_user(tmp_path)
    target = serve_tcp(echo)
    sock, session = login(server.port)

    replies: list[bytes] = []
    sent: dict[int, bytes] = {0: b"", 1: b""}
    echoed: dict[int, bytes] = {0: b"", 1: b""}

    def receive_until(done) -> None:
        """Read answers until ``done()``, or until the server has been silent for 1 s."""
        sock.settimeout(1.0)
        while not done():
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return
            assert chunk, "the server closed the tunnel"
            for message in session.feed(chunk):
                if message[0] == MessageType.TCP_PACKET:
                    stream_id, data = TCP_PACKET.parse(message)
                    echoed[stream_id] += bytes(data)
                else:
                    replies.append(message)

    # Like the Java client: each connect waits for its reply, data waits for the streams,
    # the disconnects wait for the echoes.
    for message in java_messages()[4:20]:
        if message["dir"] != "c2s":
            continue
        plaintext = bytes.fromhex(message["plaintext_hex"])
        if plaintext[0] == MessageType.TCP_CONNECT:  # aim the recorded connect at our echo
            fields = parse(TcpConnectRequest, plaintext)
            fields.port = target.server_address[1]
            plaintext = build(TcpConnectRequest, fields)
            expected = len(replies) + 1
            sock.sendall(session.seal(plaintext))
            receive_until(lambda expected=expected: len(replies) == expected)
            continue
        if plaintext[0] == MessageType.TCP_DISCONNECT:
            receive_until(lambda: echoed == sent)
        else:
            stream_id, data = TCP_PACKET.parse(plaintext)
            sent[stream_id] += bytes(data)
        sock.sendall(session.seal(plaintext))
    answered = len(replies)
    receive_until(lambda: False)  # the Java server answered the disconnects with silence
    sock.close()
    server.stop()

    assert len(replies) == answered
    java_replies = [bytes.fromhex(m["plaintext_hex"]) for m in java_messages()[5:8:2]]
    # Same type, connection id and status byte for byte; only the milliseconds may differ.
    assert [reply[:4] for reply in replies] == [reply[:4] for reply in java_replies], server.log()
    assert all(len(reply) == 6 for reply in replies)
    assert echoed == sent
    assert len(sent[1]) == 20 + 2048 + 2048 + 904


def test_java_client_ipv6_connect_is_answered_and_carries_data(tmp_path):
    """The Java client names IPv6 with address type 2 (issue 9: gjproxy dropped it unanswered)."""
    server = start_legacy_server_knowing_the_java_user(tmp_path)
    target = serve_tcp(echo, "::1")
    sock, session = login(server.port)
    sock.settimeout(10)
    port = target.server_address[1].to_bytes(2, "big")
    sock.sendall(
        session.seal(bytes.fromhex("01 0000") + port + bytes.fromhex("02 10") + V6_LOOPBACK)
    )

    received: list[bytes] = []

    def next_message() -> bytes:
        while not received:
            chunk = sock.recv(65536)
            assert chunk, "the server closed the tunnel:\n" + server.log()
            received.extend(session.feed(chunk))
        return received.pop(0)

    assert next_message()[:4] == bytes.fromhex("01 0000 00"), server.log()
    sock.sendall(session.seal(TCP_PACKET.build(0, b"hello over IPv6")))
    assert TCP_PACKET.parse(next_message()) == (0, b"hello over IPv6")
    sock.close()
    target.shutdown()
    server.stop()


def test_a_connect_the_server_cannot_parse_is_answered_for_its_id(tmp_path):
    """Issue 9: the Java server left such a connect unanswered, so its id stayed taken."""
    server = start_legacy_server_knowing_the_java_user(tmp_path)
    target = serve_tcp(echo)
    sock, session = login(server.port)
    sock.settimeout(10)
    # Type and id readable; address type 9 exists in no dialect.
    sock.sendall(session.seal(bytes.fromhex("01 0007 1f90 09 04 7f000001")))
    received: list[bytes] = []
    while not received:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the tunnel:\n" + server.log()
        received.extend(session.feed(chunk))
    assert received[0][:4] == bytes.fromhex("01 0007 01"), server.log()  # general failure
    server.wait_for(r"WARNING .*malformed message .*TcpConnectRequest")
    port = target.server_address[1].to_bytes(2, "big")  # the id is free: it connects again
    sock.sendall(session.seal(bytes.fromhex("01 0007") + port + bytes.fromhex("01 04 7f000001")))
    received.clear()
    while not received:
        received.extend(session.feed(sock.recv(65536)))
    assert received[0][:4] == bytes.fromhex("01 0007 00"), server.log()
    sock.close()
    target.shutdown()
    server.stop()
