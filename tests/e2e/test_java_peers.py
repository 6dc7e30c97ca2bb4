"""Dialect 3.0 against peers that behave as the Java programs do (issue 18).

The Java server and client send a disconnect with reason 4 (RESET) for every close, a clean
one included, right behind the stream's last data. ``tests/java_peer.py`` does the same on the
wire (the Java programs cannot run in CI). A gjproxy that took the reason for a reset threw
away the bytes still in its socket's buffers: downloads and uploads came out short, at random.
Every body here is checked by sha256, through curl on the client's SOCKS port.
"""

from __future__ import annotations

import hashlib
import os
import queue
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.clients import socks_connect
from tests.peers import (
    curl_socks,
    serve_files,
    serve_tcp,
    start_client,
    start_java_peer,
    start_server,
    wait_for_access,
)

SIZES = (0, 1, 4079, 4080, 4081, 65536, 1 << 20, 20 << 20)
"""Around a 3.0 frame's largest message (4079 bytes of plaintext), and large ones."""
MIB = 1 << 20
AT_ONCE = 20


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """Files of ``SIZES`` over HTTP on 127.0.0.1 and ::1; ``targets`` names each three ways."""
    root = tmp_path_factory.mktemp("java-www")
    digests = {}
    for size in SIZES:
        body = os.urandom(size)
        (root / f"f{size}").write_bytes(body)
        digests[size] = hashlib.sha256(body).hexdigest()
    four, six = serve_files(root, "127.0.0.1"), serve_files(root, "::1")
    four_port, six_port = four.server_address[1], six.server_address[1]
    targets = {
        "ipv4": f"127.0.0.1:{four_port}",
        "ipv6": f"[::1]:{six_port}",
        "name": f"localhost:{four_port}",  # resolved by the server (curl --socks5-hostname)
    }
    yield targets, digests
    four.shutdown()
    six.shutdown()


def fetch(socks_port: int, target: str, size: int, digests: dict) -> str | None:
    """None when the body came whole; otherwise what went wrong."""
    result = curl_socks(f"127.0.0.1:{socks_port}", f"http://{target}/f{size}", timeout=60)
    got = hashlib.sha256(result.stdout).hexdigest()
    if result.returncode == 0 and got == digests[size]:
        return None
    error = result.stderr.decode(errors="replace").strip()
    return f"{target} {size} B: got {len(result.stdout)} B, curl {result.returncode} {error}"


def test_downloads_from_a_java_shaped_server_come_whole(workdir, web):
    targets, digests = web
    java = start_java_peer(workdir, "server", "--users", "users")
    client = start_client(workdir, java.port, "--dialect", "3.0")

    one_at_a_time = [
        fetch(client.port, target, size, digests) for target in targets.values() for size in SIZES
    ]
    assert [problem for problem in one_at_a_time if problem] == [], client.log()

    with ThreadPoolExecutor(AT_ONCE) as pool:
        names = list(targets.values())
        at_once = pool.map(
            lambda index: fetch(client.port, names[index % len(names)], MIB, digests),
            range(AT_ONCE),
        )
        assert [problem for problem in at_once if problem] == [], client.log()

    # A restart of the server: the client builds a new tunnel, and the next download is whole.
    assert java.stop() in (0, -15)
    java = start_java_peer(
        workdir, "server", "--users", "users", "--listen", f"127.0.0.1:{java.port}"
    )
    deadline = time.monotonic() + 15
    while client.log().count("up (dialect 3.0)") < 2:
        assert time.monotonic() < deadline, client.log()
        time.sleep(0.05)
    assert fetch(client.port, targets["ipv4"], MIB, digests) is None, client.log()
    assert client.stop() == 0, client.log()
    java.stop()
    assert "Traceback" not in client.log() + java.log()


def slow_digest(results: queue.Queue):
    """A target that starts reading only after a while, so that the upload's end still waits
    in the server's socket buffers when the client's disconnect arrives."""

    def handle(sock: socket.socket) -> None:
        time.sleep(0.5)
        digest, count = hashlib.sha256(), 0
        try:
            while data := sock.recv(65536):
                digest.update(data)
                count += len(data)
        except OSError as error:
            results.put((count, f"{error!r}"))
            return
        results.put((count, digest.hexdigest()))

    return handle


def test_an_upload_from_a_java_shaped_client_reaches_the_target_whole(workdir):
    results: queue.Queue = queue.Queue()
    target = serve_tcp(slow_digest(results))
    server = start_server(workdir, "--allow-legacy")
    java = start_java_peer(
        workdir, "client", "--key", "key.dat", "--server", f"127.0.0.1:{server.port}"
    )
    body = os.urandom(MIB)
    with socks_connect(java.port, "127.0.0.1", target.server_address[1]) as sock:
        sock.sendall(body)
    assert results.get(timeout=30) == (MIB, hashlib.sha256(body).hexdigest()), server.log()
    record = wait_for_access(server, status="OK", bytes_up=MIB)
    assert (record["ended"], record["reason"]) == ("closed", "disconnect from the client: RESET")
    target.shutdown()
    java.stop()
    assert server.stop() == 0, server.log()
    assert "Traceback" not in server.log() + java.log()
