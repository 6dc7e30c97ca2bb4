"""The access log of real processes: without a file, every connection still gets its line."""

from __future__ import annotations

import socket
import time

from tests.clients import socks_connect
from tests.peers import start_client, start_server

CONNECTIONS = 40


def test_without_a_file_every_connection_still_has_its_line(workdir) -> None:
    """Without ``--access-log`` the JSON lines go through the logger, whose flood limit (20
    lines of one kind per 10 s) must not drop records: 40 connections, 40 lines."""
    server = start_server(workdir)
    client = start_client(workdir, server.port)
    with socket.create_server(("127.0.0.1", 0)) as target:
        port = target.getsockname()[1]
        for _ in range(CONNECTIONS):
            with socks_connect(client.port, "127.0.0.1", port):
                target.accept()[0].close()
    wanted = f'"target":"127.0.0.1:{port}"'
    deadline = time.monotonic() + 10
    while sum(wanted in line for line in list(server.lines)) < CONNECTIONS:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    assert "suppressed" not in server.log()
