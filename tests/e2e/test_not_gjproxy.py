"""A client pointed at a port that is not a gjproxy server says so once and keeps trying."""

from __future__ import annotations

import re
import socket
import time

from tests.peers import Process, serve_tcp


def test_a_client_at_a_web_server_says_so_once_and_backs_off(workdir) -> None:
    attempts: list[float] = []

    def web_server(sock: socket.socket) -> None:
        attempts.append(time.monotonic())
        sock.recv(100)
        sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    web = serve_tcp(web_server)
    port = web.server_address[1]
    client = Process(
        "client",
        "--server",
        f"127.0.0.1:{port}",
        "--socks",
        "127.0.0.1:0",
        "--key",
        "key.dat",
        cwd=workdir,
    )
    try:
        client.wait_for(
            rf"WARNING .*tunnel login at 127\.0\.0\.1:{port} failed: this is not a gjproxy"
            r" server: it answered with an HTTP reply \(a web server's port\)"
        )
        deadline = time.monotonic() + 20
        while len(attempts) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(attempts) >= 4, "the client stopped trying"
        # Backing off: the third wait is at least 0.4 s (0.2 s doubled twice, jitter halves it).
        assert attempts[3] - attempts[2] >= 0.35, attempts
        assert client.proc.poll() is None
        assert len(re.findall("not a gjproxy server", client.log())) == 1, client.log()
        assert "Traceback" not in client.log()
    finally:
        client.stop()
        web.shutdown()
        web.server_close()
