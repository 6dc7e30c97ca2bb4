"""Host names that cannot exist, through a real tunnel: each gets a SOCKS reply, the stream id
is freed (more than the tunnel's 1,024 ids in a row), and no log line is forged."""

from __future__ import annotations

import socket
import struct

from tests.clients import recv_exactly, socks_connect
from tests.peers import echo, serve_tcp, start_client, start_server

HOST_UNREACHABLE = 0x04
BAD_NAMES = [
    b"a..b",
    b".",
    b"a" * 64,
    b"a" * 255,
    b"bad\nname.example",
    b"nul\x00name.example",
    b"cr\r\nINFO forged: alice logged in",
]
REQUESTS = 1100  # more than the 1,024 stream ids a tunnel may hold


def socks_reply_code(socks_port: int, name: bytes, port: int) -> int:
    """Send a raw SOCKS5 CONNECT for ``name`` (any bytes) and return the reply code."""
    request = b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack("!H", port)
    with socket.create_connection(("127.0.0.1", socks_port), timeout=15) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert recv_exactly(sock, 2) == b"\x05\x00"
        sock.sendall(request)
        return recv_exactly(sock, 4)[1]


def test_bad_names_get_a_status_and_free_their_stream_ids(workdir):
    target = serve_tcp(echo)
    server = start_server(workdir)
    client = start_client(workdir, server.port)
    try:
        for index in range(REQUESTS):
            name = BAD_NAMES[index % len(BAD_NAMES)]
            assert socks_reply_code(client.port, name, 80) == HOST_UNREACHABLE, (index, name)
        with socks_connect(client.port, "127.0.0.1", target.server_address[1]) as sock:
            sock.sendall(b"still works")
            assert recv_exactly(sock, 11) == b"still works"
        server.wait_for(r'"target":"bad\\nname\.example:80",.*"status":"UNKNOWN_HOST",.*character')
        server.wait_for(r'"target":"nul\\u0000name\.example:80",.*"status":"UNKNOWN_HOST"')
        server.wait_for(
            r'"target":"a\.\.b:80",.*"UNKNOWN_HOST",.*"reason":"host name has an empty label"'
        )
        client.wait_for(r"CONNECT cr\\r\\nINFO forged: alice logged in:80: server says")
    finally:
        client.stop()
        server.stop()
        target.shutdown()
    for process in (server, client):
        log = process.log()
        assert "Traceback" not in log
        assert "\x00" not in log
        for line in process.lines:  # every line is a log record, none forged by a name
            assert line.startswith("20") or line.startswith("gjproxy"), line
